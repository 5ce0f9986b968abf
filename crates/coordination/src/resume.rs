//! Finding a job's completed checkpoints in storage (resuming a previous run; later, a
//! restarted JobManager) and checking that one fits the job about to restore it.
//!
//! A checkpoint counts only if its `_metadata` exists and verifies (magic, version, CRC):
//! invariant 1. A `chk-<n>` directory without valid metadata is reported by name and skipped,
//! but its id still moves the id counter, so no id is ever reused.

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
