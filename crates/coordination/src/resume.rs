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
    let stale = stale_epochs(
        &completed
            .iter()
            .map(|c| (c.id(), c.metadata().leader_epoch))
            .collect::<Vec<_>>(),
    );
    completed.retain(|c| {
        let keep = !stale.contains(&c.id());
        if !keep {
            tracing::error!(
                checkpoint = %c.id(),
                epoch = c.metadata().leader_epoch,
                "_metadata was written by a deposed JobManager after a newer leader had \
                 completed a checkpoint; skipped"
            );
        }
        keep
    });
    Ok((completed, ids.last().copied()))
}

/// The checkpoints a deposed leader completed after a newer one had taken over: in id order,
/// a `_metadata` whose leader epoch is lower than one an earlier checkpoint already carried.
/// Leaders' epochs only rise, and so do the checkpoint ids each leader issues past the ones it
/// found; a lower epoch above a higher one can only come from a JobManager that was paused
/// through its deposition and wrote on waking. Checkpoints without an epoch (no high
/// availability, or written before format version 4) are never stale.
pub fn stale_epochs(checkpoints: &[(CheckpointId, Option<u64>)]) -> BTreeSet<CheckpointId> {
    let mut sorted = checkpoints.to_vec();
    sorted.sort_by_key(|(id, _)| *id);
    let mut highest: Option<u64> = None;
    let mut stale = BTreeSet::new();
    for (id, epoch) in sorted {
        let Some(epoch) = epoch else { continue };
        if highest.is_some_and(|h| epoch < h) {
            stale.insert(id);
        } else {
            highest = Some(epoch);
        }
    }
    stale
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

/// The files of a job's folder that no intact `_metadata` names: given every file's path
/// relative to the folder and the paths every intact `_metadata` there references, the files
/// under `chk-<n>/` and `shared/` that are neither a `_metadata` nor referenced. They are what
/// aborted or never-completed checkpoints left (a straggling upload after its checkpoint was
/// aborted, the checkpoint in flight when a JobManager died, a delete that failed): no
/// completed checkpoint can need them. Leases and probes (`_lease/`, `_probe…`) are not
/// checkpoint files and stay.
pub fn unreferenced_files(listed: &[String], referenced: &BTreeSet<String>) -> Vec<String> {
    listed
        .iter()
        .filter(|p| {
            let top = p.split('/').next().unwrap_or_default();
            let checkpoint_file = top.starts_with("chk-") || top == "shared";
            let name = p.rsplit('/').next().unwrap_or_default();
            checkpoint_file
                && name != weir_checkpoint::METADATA_FILE_NAME
                && !referenced.contains(p.as_str())
        })
        .cloned()
        .collect()
}

/// What a sweep of a job folder did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// Files deleted.
    pub deleted: usize,
    /// The highest checkpoint id the folder showed before the sweep (a `chk-<n>` folder or a
    /// shared file first uploaded by `n`), so the id counter can move past ids whose traces
    /// the sweep removed.
    pub highest_id_seen: Option<CheckpointId>,
}

/// Deletes the files of `paths`'s job folder that no intact `_metadata` references (see
/// [`unreferenced_files`]). Only for a JobMaster that holds the folder's lease and has no
/// checkpoint in flight: when it resumes the job, and when the job has ended. If a `_metadata`
/// cannot be read or decoded, nothing is deleted (what it references is unknown). A file that
/// cannot be deleted is logged and left.
pub async fn sweep_unreferenced(store: &Store, paths: &CheckpointPaths) -> Result<Swept, String> {
    let listed: Vec<String> = store
        .list(paths.job_dir())
        .await
        .map_err(|e| format!("cannot list {}: {e}", paths.job_dir()))?
        .iter()
        .filter_map(|m| paths.relative_to_job(&m.location))
        .collect();
    let mut referenced = BTreeSet::new();
    let mut highest: Option<u64> = None;
    for relative in &listed {
        if let Some(n) = first_checkpoint_of(relative) {
            highest = highest.max(Some(n));
        }
        let Some(dir) = relative.strip_suffix(&format!("/{}", weir_checkpoint::METADATA_FILE_NAME))
        else {
            continue;
        };
        let Some(id) = weir_storage::parse_checkpoint_dir_name(dir) else {
            continue;
        };
        let path = paths.metadata(id);
        let bytes = store
            .get(&path)
            .await
            .map_err(|e| format!("cannot read {path}, so nothing was swept: {e}"))?;
        let m = CheckpointMetadata::decode(&bytes)
            .map_err(|e| format!("{path} is damaged, so nothing was swept: {e}"))?;
        referenced.extend(m.files().map(|f| f.path().to_string()));
    }
    let mut swept = Swept {
        deleted: 0,
        highest_id_seen: highest.map(CheckpointId),
    };
    let leftovers = unreferenced_files(&listed, &referenced);
    for relative in &leftovers {
        let Ok(path) = paths.handle_path(relative) else {
            continue;
        };
        match store.delete(&path).await {
            Ok(()) => swept.deleted += 1,
            Err(e) => {
                tracing::warn!(file = %path, error = %e, "an unreferenced checkpoint file was not deleted")
            }
        }
    }
    if !leftovers.is_empty() {
        tracing::info!(job = %paths.job(), files = swept.deleted, "unreferenced checkpoint files deleted");
    }
    Ok(swept)
}

/// The checkpoint a file of the job folder belongs to, or was first uploaded by:
/// `chk-<n>/…` or `shared/<uid>/<subtask>/<n>-<name>`.
fn first_checkpoint_of(relative: &str) -> Option<u64> {
    let top = relative.split('/').next()?;
    if let Some(id) = weir_storage::parse_checkpoint_dir_name(top) {
        return Some(id.0);
    }
    if top != "shared" {
        return None;
    }
    let (n, _) = relative.rsplit('/').next()?.split_once('-')?;
    n.parse().ok()
}

#[cfg(test)]
mod sweep_tests {
    use super::*;

    #[test]
    fn only_checkpoint_files_no_intact_metadata_references_are_unreferenced() {
        let listed: Vec<String> = [
            "chk-5/_metadata",
            "chk-5/agg/0/MANIFEST-1",
            "chk-6/agg/0/MANIFEST-2",
            "chk-6/sink/0/sink-manifest",
            "chk-9/_metadata",
            "chk-9/agg/0/MANIFEST-3",
            "shared/agg/0/5-000010.sst",
            "shared/agg/0/6-000028.sst",
            "shared/agg/1/3-000030.sst",
            "_lease/lease-3",
            "_probe-1",
        ]
        .map(String::from)
        .to_vec();
        // chk-9 still uses a file chk-3 (long subsumed, its folder gone) first uploaded.
        let referenced: BTreeSet<String> = [
            "chk-5/agg/0/MANIFEST-1",
            "shared/agg/0/5-000010.sst",
            "chk-9/agg/0/MANIFEST-3",
            "shared/agg/1/3-000030.sst",
        ]
        .map(String::from)
        .into();
        assert_eq!(
            unreferenced_files(&listed, &referenced),
            vec![
                "chk-6/agg/0/MANIFEST-2".to_string(),
                "chk-6/sink/0/sink-manifest".to_string(),
                "shared/agg/0/6-000028.sst".to_string(),
            ],
            "referenced files, _metadata, leases and probes stay"
        );
    }

    #[test]
    fn a_checkpoint_of_a_lower_epoch_above_a_higher_one_is_stale() {
        let c = |id, e| (CheckpointId(id), e);
        assert!(
            stale_epochs(&[c(1, Some(1)), c(2, Some(1)), c(3, Some(2)), c(4, None)]).is_empty()
        );
        assert_eq!(
            stale_epochs(&[c(5, Some(3)), c(3, Some(2)), c(6, Some(2)), c(7, Some(3))]),
            [CheckpointId(6)].into(),
            "chk-6 of epoch 2 came after chk-5 of epoch 3: a paused old leader wrote it"
        );
    }

    #[test]
    fn a_file_belongs_to_the_checkpoint_of_its_folder_or_its_shared_prefix() {
        assert_eq!(first_checkpoint_of("chk-12/agg/0/CURRENT"), Some(12));
        assert_eq!(first_checkpoint_of("shared/agg/0/13-000029.sst"), Some(13));
        assert_eq!(first_checkpoint_of("_lease/lease-3"), None);
        assert_eq!(first_checkpoint_of("shared/agg/0/x-1.sst"), None);
    }

    #[tokio::test]
    async fn a_sweep_keeps_what_a_completed_checkpoint_needs_and_reports_the_highest_id() {
        use weir_checkpoint::{CheckpointKind, FileHandle, OperatorState, OperatorSubtaskState};
        let store = Store::in_memory();
        let job = weir_types::JobId::generate();
        let paths = CheckpointPaths::new(job);
        let put = |rel: &str, bytes: Vec<u8>| {
            let store = store.clone();
            let path = paths.handle_path(rel).unwrap();
            async move {
                store
                    .put(&path, weir_storage::Bytes::from(bytes))
                    .await
                    .unwrap()
            }
        };
        // chk-5 completed using a file chk-4 first uploaded; chk-6 was aborted after it
        // uploaded; chk-4's folder is partly deleted (subsumed, its _metadata gone first).
        let kept = ["chk-5/agg/0/MANIFEST-2", "shared/agg/0/4-000010.sst"];
        let gone = [
            "chk-4/agg/0/MANIFEST-1",
            "chk-6/agg/0/MANIFEST-3",
            "shared/agg/0/6-000012.sst",
        ];
        for rel in kept.iter().chain(&gone) {
            put(rel, b"x".to_vec()).await;
        }
        let files = kept
            .iter()
            .map(|p| FileHandle::new(*p, 1, 0, p.starts_with("shared")).unwrap())
            .collect();
        let uid = weir_types::OperatorUid::new("agg").unwrap();
        let metadata = CheckpointMetadata {
            job_id: job,
            checkpoint_id: CheckpointId(5),
            kind: CheckpointKind::Checkpoint,
            timestamp: 0,
            max_parallelism: 128,
            key_group_hash_version: 1,
            operators: [(
                uid,
                OperatorState {
                    vertex: weir_types::VertexId(1),
                    parallelism: 1,
                    subtasks: [(
                        weir_types::SubtaskIndex(0),
                        OperatorSubtaskState {
                            files,
                            ..Default::default()
                        },
                    )]
                    .into(),
                },
            )]
            .into(),
            self_contained: false,
            job_name: None,
            leader_epoch: None,
        };
        put("chk-5/_metadata", metadata.encode().unwrap()).await;
        let swept = sweep_unreferenced(&store, &paths).await.unwrap();
        assert_eq!(swept.highest_id_seen, Some(CheckpointId(6)));
        assert_eq!(swept.deleted, gone.len());
        let mut left: Vec<String> = store
            .list(paths.job_dir())
            .await
            .unwrap()
            .iter()
            .filter_map(|m| paths.relative_to_job(&m.location))
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "chk-5/_metadata",
                "chk-5/agg/0/MANIFEST-2",
                "shared/agg/0/4-000010.sst"
            ]
        );
    }

    #[tokio::test]
    async fn a_damaged_metadata_stops_the_sweep_before_anything_is_deleted() {
        let store = Store::in_memory();
        let paths = CheckpointPaths::new(weir_types::JobId::generate());
        for (rel, bytes) in [
            ("chk-3/_metadata", &b"WEIRgarbage"[..]),
            ("chk-3/agg/0/CURRENT", b"x"),
        ] {
            store
                .put(
                    &paths.handle_path(rel).unwrap(),
                    weir_storage::Bytes::copy_from_slice(bytes),
                )
                .await
                .unwrap();
        }
        let err = sweep_unreferenced(&store, &paths).await.unwrap_err();
        assert!(
            err.contains("chk-3/_metadata") && err.contains("nothing was swept"),
            "{err}"
        );
        assert_eq!(store.list(paths.job_dir()).await.unwrap().len(), 2);
    }
}
