//! Finding a job's completed checkpoints in storage (resuming a previous run; later, a
//! restarted JobManager) and checking that one fits the job about to restore it.
//!
//! A checkpoint counts only if its `_metadata` exists and verifies (magic, version, CRC):
//! invariant 1. A `chk-<n>` directory without valid metadata is reported by name and skipped,
//! but its id still moves the id counter, so no id is ever reused.

use std::collections::BTreeSet;
use weir_checkpoint::{CheckpointMetadata, CompletedCheckpoint};
use weir_graph::Plan;
use weir_storage::{CheckpointPaths, Store};
use weir_types::CheckpointId;

/// The intact completed checkpoints of the job under `paths`, oldest first, and the highest
/// checkpoint id seen at all (valid or not).
pub async fn load_completed(
    store: &Store,
    paths: &CheckpointPaths,
) -> Result<(Vec<CompletedCheckpoint>, Option<CheckpointId>), String> {
    let ids = store
        .checkpoint_ids(paths)
        .await
        .map_err(|e| format!("cannot list the checkpoints of job {}: {e}", paths.job()))?;
    let mut completed = Vec::new();
    for &id in &ids {
        let path = paths.metadata(id);
        let bytes = match store.get(&path).await {
            Ok(b) => b,
            Err(e) if e.is_not_found() => {
                tracing::warn!(checkpoint = %id, file = %path, "no _metadata: the checkpoint never completed; skipped");
                continue;
            }
            Err(e) => return Err(format!("cannot read {path}: {e}")),
        };
        match CheckpointMetadata::decode(&bytes) {
            Ok(m) if m.checkpoint_id == id && m.job_id == paths.job() => {
                completed.push(CompletedCheckpoint::from_metadata(m));
            }
            Ok(m) => tracing::error!(
                checkpoint = %id,
                file = %path,
                found = %m.checkpoint_id,
                "_metadata belongs to another checkpoint or job; skipped"
            ),
            Err(e) => tracing::error!(
                checkpoint = %id,
                file = %path,
                error = %e,
                "_metadata is damaged; skipped (the previous checkpoint is used)"
            ),
        }
    }
    Ok((completed, ids.last().copied()))
}

/// Whether `metadata` can be restored by `plan`: every operator with state exists in the job
/// (by uid). Another parallelism is fine: the tasks rescale the state (key groups, source
/// positions, sink transactions) as they restore it.
pub fn check_compatible(metadata: &CheckpointMetadata, plan: &Plan) -> Result<(), String> {
    let id = metadata.checkpoint_id;
    for uid in metadata.operators.keys() {
        if plan.parallelism_of(uid).is_none() {
            return Err(format!(
                "{id} has state for operator '{uid}', which this job does not have"
            ));
        }
    }
    Ok(())
}

/// What checkpoints that never completed left in a job's folder: given every file's path
/// relative to the folder, those under `chk-<n>/` and the shared files first uploaded by
/// checkpoint `n` (`shared/<uid>/<subtask>/<n>-<name>`), for every `n` in `incomplete` — the
/// checkpoints whose folder has no `_metadata` at all. No completed checkpoint can reference
/// them: a snapshot never reuses a file that only a pending or aborted checkpoint uploaded
/// (DESIGN §8, invariant 4).
pub fn incomplete_leftovers(listed: &[String], incomplete: &BTreeSet<u64>) -> Vec<String> {
    let of_incomplete = |n: &str| n.parse::<u64>().is_ok_and(|n| incomplete.contains(&n));
    listed
        .iter()
        .filter(|p| {
            let mut parts = p.split('/');
            match parts.next() {
                Some(dir) if dir.starts_with("chk-") => of_incomplete(&dir["chk-".len()..]),
                Some("shared") => p
                    .rsplit('/')
                    .next()
                    .and_then(|file| file.split_once('-'))
                    .is_some_and(|(n, _)| of_incomplete(n)),
                _ => false,
            }
        })
        .cloned()
        .collect()
}

/// Deletes what the checkpoints of `paths`'s job that never wrote a `_metadata` left behind
/// (see [`incomplete_leftovers`]): called by a JobMaster that resumes the job, after its lease
/// on the folder is taken, so no earlier owner writes there any more. Returns how many files
/// went; a file that cannot be deleted is logged and left.
pub async fn sweep_incomplete(store: &Store, paths: &CheckpointPaths) -> Result<usize, String> {
    let ids = store
        .checkpoint_ids(paths)
        .await
        .map_err(|e| format!("cannot list the checkpoints of job {}: {e}", paths.job()))?;
    let mut incomplete = BTreeSet::new();
    for id in ids {
        let exists = store
            .exists(&paths.metadata(id))
            .await
            .map_err(|e| format!("cannot check {}: {e}", paths.metadata(id)))?;
        if !exists {
            incomplete.insert(id.0);
        }
    }
    if incomplete.is_empty() {
        return Ok(0);
    }
    let listed: Vec<String> = store
        .list(paths.job_dir())
        .await
        .map_err(|e| format!("cannot list {}: {e}", paths.job_dir()))?
        .iter()
        .filter_map(|m| paths.relative_to_job(&m.location))
        .collect();
    let mut deleted = 0;
    for relative in incomplete_leftovers(&listed, &incomplete) {
        let Ok(path) = paths.handle_path(&relative) else {
            continue;
        };
        match store.delete(&path).await {
            Ok(()) => deleted += 1,
            Err(e) => {
                tracing::warn!(file = %path, error = %e, "a leftover of an incomplete checkpoint was not deleted")
            }
        }
    }
    tracing::info!(job = %paths.job(), checkpoints = ?incomplete, files = deleted, "leftovers of incomplete checkpoints deleted");
    Ok(deleted)
}

#[cfg(test)]
mod sweep_tests {
    use super::*;

    #[test]
    fn only_the_files_of_checkpoints_without_metadata_are_leftovers() {
        let listed: Vec<String> = [
            "chk-5/_metadata",
            "chk-5/agg/0/MANIFEST-1",
            "chk-6/agg/0/MANIFEST-2",
            "chk-6/sink/0/sink-manifest",
            "chk-16/agg/0/CURRENT",
            "shared/agg/0/5-000010.sst",
            "shared/agg/0/6-000028.sst",
            "shared/agg/1/16-000030.sst",
            "_lease/lease-3",
        ]
        .map(String::from)
        .to_vec();
        let incomplete: BTreeSet<u64> = [6].into();
        assert_eq!(
            incomplete_leftovers(&listed, &incomplete),
            vec![
                "chk-6/agg/0/MANIFEST-2".to_string(),
                "chk-6/sink/0/sink-manifest".to_string(),
                "shared/agg/0/6-000028.sst".to_string(),
            ],
            "chk-16 and 16-… are another checkpoint's, 5 completed, leases stay"
        );
    }
}
