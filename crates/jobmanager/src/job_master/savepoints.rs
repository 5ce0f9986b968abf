//! Savepoints of a running job (`weir savepoint`, `weir stop`, REST `POST
//! /jobs/{id}/savepoints` and `/stop`), and where an attempt restores from.
//!
//! Flow of one savepoint:
//! 1. **Request** — refused (with the reason) unless the job runs with checkpointing, every
//!    task reached RUNNING and no stop is in flight. The target is the request's, else
//!    `execution.checkpointing.savepoint-dir`; the savepoint's own folder is
//!    `<target>/savepoint-<job prefix>-<id>`, which must not hold anything yet.
//! 2. **Announce** — every TaskManager of the attempt learns the folder (`PrepareSavepoint`)
//!    before the sources are triggered; each task writes its files there, self-contained.
//! 3. **Trigger** — the coordinator triggers it like a checkpoint (min pause aside). With
//!    `stop`, periodic checkpoints are suspended and the barrier tells every task to stop
//!    once it completes.
//! 4. **Complete** — all acks in, `_metadata` goes to the folder's root, last. Only a stop
//!    savepoint's completion reaches the tasks (sinks commit it, then every task ends and the
//!    job FINISHES); any other savepoint commits nothing, so a failover to an older
//!    checkpoint can never publish its output twice.
//! 5. **Abort** (timeout, decline, failover) — the request FAILS with the reason, the folder is
//!    removed, and a stopping job goes on running (periodic checkpoints resume).

use super::*;
use crate::view::{SavepointOperation, SavepointState};
use weir_checkpoint::{CheckpointKind, SavepointFormat};
use weir_coordination::driver::SavepointTarget;
use weir_storage::{open_store, SavepointId, StorageUrl};

/// How long a savepoint request may take to check its target folder.
const TARGET_CHECK_TIMEOUT: Duration = Duration::from_secs(15);

/// A client's savepoint request.
#[derive(Clone, Debug)]
pub(crate) struct SavepointRequest {
    /// The folder the savepoint's own folder goes under; `None`: the configured default.
    pub target: Option<String>,
    /// Canonical or native.
    pub format: SavepointFormat,
    /// Stop the job with it.
    pub stop: bool,
    /// With `stop`: the sources end their input first; the job's final snapshot is the
    /// savepoint.
    pub drain: bool,
}

/// What an attempt restores: a completed checkpoint or savepoint and, when its files are not
/// in the job's checkpoint folder, the URL of the folder its handles are relative to.
#[derive(Clone, Debug)]
pub(crate) struct RestorePoint {
    pub metadata: CheckpointMetadata,
    /// `None`: the job's own checkpoint folder.
    pub location: Option<String>,
    /// The job claimed it (`--claim-mode claim`): it deletes the folder once its own
    /// checkpoints subsume it.
    pub claimed: bool,
}

/// `<target>/savepoint-<job prefix>-<id>`.
pub(crate) fn folder_url(target: &str, job: JobId, id: CheckpointId) -> String {
    format!(
        "{}/savepoint-{}",
        target.trim_end_matches('/'),
        SavepointId::for_checkpoint(job, id)
    )
}

fn format_name(format: SavepointFormat) -> &'static str {
    match format {
        SavepointFormat::Canonical => "canonical",
        SavepointFormat::Native => "native",
    }
}

impl JobMaster {
    /// Step 1–3 of the module flow; returns the request id (the savepoint's checkpoint id).
    pub(super) fn trigger_savepoint(
        &mut self,
        request: SavepointRequest,
        drv: &mut Option<AttemptDriver>,
        mode: Mode,
    ) -> Result<u64, String> {
        let job = self.job;
        let Some(cp) = self.cp.as_mut() else {
            return Err(format!(
                "job {job} runs without checkpointing: a savepoint needs \
                 execution.checkpointing.interval and state.checkpoints.dir"
            ));
        };
        let (Some(d), Some(g)) = (drv.as_mut(), self.gateway.as_ref()) else {
            return Err(format!("job {job} is not running (it is {:?})", self.phase));
        };
        if mode != Mode::Active || !self.all_running {
            return Err(format!(
                "job {job} is not running yet (its tasks are still deploying)"
            ));
        }
        if let Some(id) = cp.stop {
            return Err(format!("job {job} is already stopping with savepoint {id}"));
        }
        let target = request
            .target
            .clone()
            .or_else(|| cp.savepoint_dir.clone())
            .ok_or_else(|| {
                "no savepoint target: name one, or set execution.checkpointing.savepoint-dir"
                    .to_string()
            })?;
        let id = cp.coordinator.next_checkpoint_id();
        let url = folder_url(&target, job, id);
        let parsed =
            StorageUrl::parse(&url).map_err(|e| format!("savepoint target '{target}': {e}"))?;
        let store =
            open_store(&parsed, &cp.s3).map_err(|e| format!("savepoint target '{target}': {e}"))?;
        let listed = {
            let store = store.clone();
            self.runtime.block_on(async move {
                tokio::time::timeout(
                    TARGET_CHECK_TIMEOUT,
                    store.list(&weir_storage::ObjectPath::default()),
                )
                .await
            })
        };
        match listed {
            Ok(Ok(objects)) if objects.is_empty() => {}
            Ok(Ok(objects)) => {
                return Err(format!(
                    "savepoint folder {url} already holds {} object(s); a savepoint never \
                     overwrites one",
                    objects.len()
                ))
            }
            Ok(Err(e)) => return Err(format!("cannot read savepoint folder {url}: {e}")),
            Err(_) => {
                return Err(format!(
                    "reading savepoint folder {url} took over {TARGET_CHECK_TIMEOUT:?}"
                ))
            }
        }
        let kind = CheckpointKind::Savepoint {
            format: request.format,
        };
        let now = now_ms();
        cp.savepoints.insert(
            id,
            SavepointTarget {
                store,
                url: url.clone(),
            },
        );
        for tm in g.taskmanagers.iter() {
            self.cluster.send(
                tm,
                Down::Savepoint(weir_proto::v1::PrepareSavepoint {
                    job_id: self.job_str.clone(),
                    attempt: self.attempt.get(),
                    checkpoint_id: id.0,
                    folder_url: url.clone(),
                }),
            );
        }
        if request.stop {
            cp.stop = Some(id);
            cp.coordinator.suspend_periodic(true);
        }
        if request.drain {
            // The sources end their input; once every task finished, the final snapshot —
            // the next id, as no periodic checkpoint is triggered meanwhile — is this
            // savepoint.
            cp.final_kind = kind;
            for tm in g.taskmanagers.iter() {
                self.cluster.send(
                    tm,
                    Down::Drain(weir_proto::v1::DrainSources {
                        job_id: self.job_str.clone(),
                        attempt: self.attempt.get(),
                    }),
                );
            }
        } else {
            match cp.coordinator.trigger(now, kind) {
                Ok(actions) => {
                    debug_assert!(matches!(
                        actions.first(),
                        Some(Action::TriggerSources { id: t, .. }) if *t == id
                    ));
                    with_driver(cp, &self.runtime, g, d, |d| d.perform(actions));
                }
                Err(reason) => {
                    cp.savepoints.remove(&id);
                    if request.stop {
                        cp.stop = None;
                        cp.coordinator.suspend_periodic(false);
                    }
                    return Err(format!("savepoint not triggered: {reason}"));
                }
            }
        }
        tracing::info!(savepoint = %id, folder = %url, format = format_name(request.format), stop = request.stop, drain = request.drain, "savepoint triggered");
        self.savepoint_ops.insert(
            id.0,
            SavepointOperation {
                request_id: id.0,
                format: format_name(request.format).to_string(),
                stop: request.stop,
                status: SavepointState::InProgress,
                location: None,
                failure_cause: None,
                trigger_ms: now,
                end_ms: None,
            },
        );
        // Published before the answer, so a client may poll the request at once.
        self.publish();
        Ok(id.0)
    }

    /// Steps 4–5: settles savepoint requests whose checkpoint completed or aborted.
    pub(super) fn settle_savepoints(&mut self) {
        let Some(cp) = self.cp.as_mut() else {
            return;
        };
        for op in self.savepoint_ops.values_mut() {
            if op.status != SavepointState::InProgress {
                continue;
            }
            let id = CheckpointId(op.request_id);
            let Some(record) = cp.history.iter().rev().find(|r| r.id == id) else {
                continue;
            };
            match &record.status {
                CheckpointStatus::InProgress => continue,
                CheckpointStatus::Completed => {
                    let url = cp.savepoints.remove(&id).map(|t| t.url);
                    op.status = SavepointState::Completed;
                    op.location = url.clone();
                    tracing::info!(savepoint = %id, folder = ?url, "savepoint complete");
                    if op.stop {
                        // Should anything fail before every task ended, the job restores
                        // from here: its sinks have committed it.
                        let metadata = cp
                            .coordinator
                            .store()
                            .all()
                            .into_iter()
                            .find(|c| c.id() == id)
                            .map(|c| c.metadata().clone());
                        if let (Some(metadata), Some(location)) = (metadata, url) {
                            self.external = Some(RestorePoint {
                                metadata,
                                location: Some(location),
                                claimed: false,
                            });
                        }
                    }
                }
                CheckpointStatus::Aborted(reason) => {
                    cp.savepoints.remove(&id);
                    op.status = SavepointState::Failed;
                    op.failure_cause = Some(reason.clone());
                    tracing::warn!(savepoint = %id, %reason, "savepoint failed");
                    if op.stop && cp.stop == Some(id) {
                        cp.stop = None;
                        cp.coordinator.suspend_periodic(false);
                    }
                }
            }
            op.end_ms = Some(now_ms());
            self.dirty = true;
        }
    }

    /// The attempt ended (failover): a requested savepoint that was never triggered (a drain
    /// waiting for the final snapshot) fails, and the job runs on as before the request.
    pub(super) fn abandon_untriggered_savepoints(&mut self, reason: &str) {
        let Some(cp) = self.cp.as_mut() else {
            return;
        };
        for op in self.savepoint_ops.values_mut() {
            let id = CheckpointId(op.request_id);
            if op.status != SavepointState::InProgress || cp.history.iter().any(|r| r.id == id) {
                continue;
            }
            op.status = SavepointState::Failed;
            op.failure_cause = Some(reason.to_string());
            op.end_ms = Some(now_ms());
            cp.savepoints.remove(&id);
            if cp.stop == Some(id) {
                cp.stop = None;
                cp.final_kind = CheckpointKind::Checkpoint;
                cp.coordinator.suspend_periodic(false);
            }
            tracing::warn!(savepoint = %id, %reason, "savepoint abandoned");
            self.dirty = true;
        }
    }

    /// A claimed savepoint the job's own checkpoints subsumed (as many completed after it as
    /// `state.checkpoints.num-retained`) is deleted, `_metadata` first, and forgotten.
    pub(super) fn settle_claim(&mut self) {
        let (Some(cp), Some(ext)) = (self.cp.as_mut(), self.external.as_ref()) else {
            return;
        };
        let (Some(location), true) = (ext.location.clone(), ext.claimed) else {
            return;
        };
        let id = ext.metadata.checkpoint_id;
        let newer = cp
            .coordinator
            .store()
            .all()
            .iter()
            .filter(|c| !c.kind().is_savepoint() && c.id() > id)
            .count();
        if newer < cp.coordinator.config().num_retained as usize {
            return;
        }
        self.external = None;
        let store = StorageUrl::parse(&location)
            .map_err(|e| e.to_string())
            .and_then(|url| open_store(&url, &cp.s3).map_err(|e| e.to_string()));
        let store = match store {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(folder = %location, error = %e, "cannot open the claimed savepoint to delete it");
                return;
            }
        };
        tracing::info!(savepoint = %id, folder = %location, "claimed savepoint subsumed; deleting it");
        cp.deletions.push(self.runtime.spawn(async move {
            match weir_coordination::claim::delete_subsumed(&store).await {
                Ok(n) => tracing::info!(folder = %location, objects = n, "claimed savepoint deleted"),
                Err(e) => tracing::warn!(folder = %location, error = %e, "claimed savepoint not fully deleted"),
            }
        }));
    }

    /// The checkpoint the next attempt restores: the newest of the job's latest retained
    /// checkpoint and the restore point from outside its folder (the savepoint it started from,
    /// or the savepoint it is stopping with).
    pub(super) fn restore_point(&self) -> Result<Option<RestorePoint>, String> {
        let own = self
            .cp
            .as_ref()
            .and_then(|cp| cp.coordinator.store().latest_checkpoint())
            .map(|c| RestorePoint {
                metadata: c.metadata().clone(),
                location: None,
                claimed: false,
            });
        let point = match (own, self.external.clone()) {
            (Some(own), Some(ext)) if ext.metadata.checkpoint_id > own.metadata.checkpoint_id => {
                Some(ext)
            }
            (Some(own), _) => Some(own),
            (None, ext) => ext,
        };
        if let Some(p) = &point {
            if p.location.is_none() {
                check_compatible(&p.metadata, &self.plan)?;
            }
        }
        Ok(point)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_savepoint_folder_is_named_after_the_job_and_the_id() {
        let job = JobId(0x3fa2_c1d0_0000_0000_0000_0000_0000_00ab);
        let url = folder_url("file:///sp/", job, CheckpointId(7));
        assert!(url.starts_with("file:///sp/savepoint-3fa2c1"), "{url}");
        assert!(url.ends_with("-7"), "{url}");
    }
}
