//! The side effects of the protocol behind one small trait ([`CheckpointContext`]), an in-memory
//! fake ([`InMemoryContext`]) that can fail or "crash" on cue, and a tiny synchronous driver
//! ([`drive`]) that applies [`Action`]s to a context and feeds outcomes back to the
//! [`Coordinator`].
//!
//! The real driver (the JobMaster) does the same asynchronously: RPCs to tasks, object-store
//! writes and deletes. This one exists so crash paths are unit-tested: a crash between the
//! metadata write and the notifications never leads to a notification before the metadata is
//! durable, and the checkpoint still counts as complete after a restart because its
//! `_metadata` exists.

use crate::completed::CompletedCheckpoint;
use crate::coordinator::{Action, Coordinator, CoordinatorError};
use crate::failure::CheckpointFailureReason;
use crate::kind::CheckpointKind;
use crate::metadata::{CheckpointMetadata, MetadataError};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use weir_types::CheckpointId;

/// Why a side effect did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContextError {
    /// The operation failed and had no effect; the protocol carries on (a retry may help).
    #[error("{operation} failed with no effect: {detail}")]
    Failed {
        /// Which operation.
        operation: &'static str,
        /// What went wrong, with the path where known.
        detail: String,
    },
    /// The coordinator process stopped during the operation; its outcome is unknown. The
    /// driver stops at once and recovery reads storage.
    #[error("the coordinator stopped during {operation}")]
    Crashed {
        /// Which operation.
        operation: &'static str,
    },
}

/// The side effects the coordinator's [`Action`]s need. What each implementation must
/// guarantee is stated per method.
pub trait CheckpointContext {
    /// Asks every source subtask to take checkpoint `id`. Best effort: a lost trigger ends as a
    /// timeout.
    fn trigger_sources(
        &mut self,
        id: CheckpointId,
        timestamp: u64,
        kind: CheckpointKind,
    ) -> Result<(), ContextError>;

    /// Writes `bytes` as the `_metadata` of `id`, create-only. `Ok` means the bytes are durable
    /// and readable in full; [`ContextError::Failed`] means nothing is visible at the path. An
    /// unknown outcome must be reported as [`ContextError::Crashed`] (or retried until known).
    fn write_metadata(
        &mut self,
        id: CheckpointId,
        kind: CheckpointKind,
        bytes: &[u8],
    ) -> Result<(), ContextError>;

    /// Tells every task that `id` is complete. Tasks must tolerate a repeat (commits are
    /// idempotent) and a notification for a checkpoint they did not take part in.
    fn notify_complete(&mut self, id: CheckpointId) -> Result<(), ContextError>;

    /// Tells every task that `id` was aborted. Best effort.
    fn notify_aborted(
        &mut self,
        id: CheckpointId,
        reason: &CheckpointFailureReason,
    ) -> Result<(), ContextError>;

    /// Deletes `paths` (relative to the job's checkpoint directory). Idempotent: a missing file
    /// is not an error. A failure leaks files but never breaks a checkpoint.
    fn delete_files(&mut self, paths: &[String]) -> Result<(), ContextError>;

    /// Fails the job for too many consecutive checkpoint failures.
    fn fail_job(
        &mut self,
        consecutive_failures: u32,
        last: &CheckpointFailureReason,
    ) -> Result<(), ContextError>;
}

/// Why [`drive`] stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DriverError {
    /// The context reported a crash; nothing after it was done.
    #[error(transparent)]
    Crashed(ContextError),
    /// The coordinator refused an outcome (a driver bug).
    #[error(transparent)]
    Protocol(#[from] CoordinatorError),
}

/// Applies `actions` in order, feeding metadata-write outcomes back to `coordinator` at time
/// `now` and applying the actions that follow. Stops at the first crash. Failures of
/// best-effort operations are logged and skipped.
pub fn drive<C: CheckpointContext>(
    coordinator: &mut Coordinator,
    ctx: &mut C,
    now: u64,
    actions: Vec<Action>,
) -> Result<(), DriverError> {
    let mut queue: VecDeque<Action> = actions.into();
    while let Some(action) = queue.pop_front() {
        match action {
            Action::TriggerSources {
                id,
                timestamp,
                kind,
                ..
            } => best_effort(ctx.trigger_sources(id, timestamp, kind))?,
            Action::WriteMetadata { id, metadata } => {
                let written = match metadata.encode() {
                    Ok(bytes) => ctx.write_metadata(id, metadata.kind, &bytes),
                    Err(err) => Err(ContextError::Failed {
                        operation: "encode metadata",
                        detail: err.to_string(),
                    }),
                };
                let next = match written {
                    Ok(()) => coordinator.on_metadata_written(now, id)?,
                    Err(ContextError::Failed { detail, .. }) => {
                        coordinator.on_metadata_failed(id, detail)?
                    }
                    Err(crash @ ContextError::Crashed { .. }) => {
                        return Err(DriverError::Crashed(crash))
                    }
                };
                queue.extend(next);
            }
            Action::NotifyComplete { id } => best_effort(ctx.notify_complete(id))?,
            Action::NotifyAborted { id, reason } => best_effort(ctx.notify_aborted(id, &reason))?,
            Action::DeleteFiles { paths } => best_effort(ctx.delete_files(&paths))?,
            Action::FailJob {
                consecutive_failures,
                last,
            } => best_effort(ctx.fail_job(consecutive_failures, &last))?,
        }
    }
    Ok(())
}

fn best_effort(result: Result<(), ContextError>) -> Result<(), DriverError> {
    match result {
        Ok(()) => Ok(()),
        Err(crash @ ContextError::Crashed { .. }) => Err(DriverError::Crashed(crash)),
        Err(err) => {
            tracing::warn!(%err, "checkpoint side effect failed; continuing");
            Ok(())
        }
    }
}

/// One side effect, as recorded by [`InMemoryContext`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContextEvent {
    /// Sources were asked to take a checkpoint.
    Triggered(CheckpointId),
    /// `_metadata` became durable.
    MetadataWritten(CheckpointId),
    /// Tasks were told the checkpoint completed.
    NotifiedComplete(CheckpointId),
    /// Tasks were told the checkpoint was aborted.
    NotifiedAborted(CheckpointId, CheckpointFailureReason),
    /// Files were deleted.
    Deleted(Vec<String>),
    /// The job was failed.
    JobFailed(u32),
}

/// An in-memory [`CheckpointContext`]: `metadata` plays durable storage (it survives a
/// "crash"), `events` records every side effect in order.
#[derive(Clone, Debug, Default)]
pub struct InMemoryContext {
    /// Durable `_metadata` files by checkpoint id.
    pub metadata: BTreeMap<CheckpointId, Vec<u8>>,
    /// Every side effect, in order.
    pub events: Vec<ContextEvent>,
    /// Every path ever deleted.
    pub deleted: BTreeSet<String>,
    /// Make the metadata write of this id fail cleanly (nothing written).
    pub fail_metadata_write: Option<CheckpointId>,
    /// Crash right after the metadata of this id became durable (before anyone is told).
    pub crash_after_metadata_write: Option<CheckpointId>,
}

impl InMemoryContext {
    /// Reads and verifies every stored `_metadata`, as a restarting JobMaster would.
    pub fn recover(&self) -> Result<Vec<CompletedCheckpoint>, MetadataError> {
        self.metadata
            .values()
            .map(|bytes| CheckpointMetadata::decode(bytes).map(CompletedCheckpoint::from_metadata))
            .collect()
    }
}

impl CheckpointContext for InMemoryContext {
    fn trigger_sources(
        &mut self,
        id: CheckpointId,
        _timestamp: u64,
        _kind: CheckpointKind,
    ) -> Result<(), ContextError> {
        self.events.push(ContextEvent::Triggered(id));
        Ok(())
    }

    fn write_metadata(
        &mut self,
        id: CheckpointId,
        _kind: CheckpointKind,
        bytes: &[u8],
    ) -> Result<(), ContextError> {
        if self.fail_metadata_write == Some(id) {
            return Err(ContextError::Failed {
                operation: "write _metadata",
                detail: format!("injected failure for {id}"),
            });
        }
        if self.metadata.contains_key(&id) {
            return Err(ContextError::Failed {
                operation: "write _metadata",
                detail: format!("{id}/_metadata already exists"),
            });
        }
        self.metadata.insert(id, bytes.to_vec());
        self.events.push(ContextEvent::MetadataWritten(id));
        if self.crash_after_metadata_write == Some(id) {
            return Err(ContextError::Crashed {
                operation: "write _metadata",
            });
        }
        Ok(())
    }

    fn notify_complete(&mut self, id: CheckpointId) -> Result<(), ContextError> {
        self.events.push(ContextEvent::NotifiedComplete(id));
        Ok(())
    }

    fn notify_aborted(
        &mut self,
        id: CheckpointId,
        reason: &CheckpointFailureReason,
    ) -> Result<(), ContextError> {
        self.events
            .push(ContextEvent::NotifiedAborted(id, reason.clone()));
        Ok(())
    }

    fn delete_files(&mut self, paths: &[String]) -> Result<(), ContextError> {
        self.deleted.extend(paths.iter().cloned());
        self.events.push(ContextEvent::Deleted(paths.to_vec()));
        Ok(())
    }

    fn fail_job(
        &mut self,
        consecutive_failures: u32,
        _last: &CheckpointFailureReason,
    ) -> Result<(), ContextError> {
        self.events
            .push(ContextEvent::JobFailed(consecutive_failures));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CheckpointConfig;
    use crate::handle::{TaskAckMetrics, TaskId, TaskStateSnapshot};
    use weir_types::{JobId, SubtaskIndex, VertexId};

    fn setup() -> (Coordinator, InMemoryContext, TaskId) {
        let t = TaskId::new(VertexId(0), SubtaskIndex(0));
        let c = Coordinator::new(JobId(3), 128, CheckpointConfig::default(), [t]).unwrap();
        (c, InMemoryContext::default(), t)
    }

    fn run_one(
        c: &mut Coordinator,
        ctx: &mut InMemoryContext,
        t: TaskId,
    ) -> Result<(), DriverError> {
        let actions = c.trigger(0, CheckpointKind::Checkpoint).unwrap();
        drive(c, ctx, 0, actions)?;
        let id = c.pending().next().map(|p| p.id()).unwrap();
        let out = c.on_ack(
            1,
            id,
            t,
            TaskStateSnapshot::default(),
            TaskAckMetrics::default(),
        );
        drive(c, ctx, 1, out.actions)
    }

    #[test]
    fn a_crash_after_the_metadata_write_never_notifies_and_the_checkpoint_survives_restart() {
        let (mut c, mut ctx, t) = setup();
        ctx.crash_after_metadata_write = Some(CheckpointId(1));
        let err = run_one(&mut c, &mut ctx, t).unwrap_err();
        assert!(matches!(err, DriverError::Crashed(_)));
        assert!(!ctx
            .events
            .iter()
            .any(|e| matches!(e, ContextEvent::NotifiedComplete(_))));

        // Restart: a new coordinator reads storage; checkpoint 1 exists because its metadata does.
        let (mut restarted, _, _) = setup();
        restarted.restore(ctx.recover().unwrap(), None).unwrap();
        assert_eq!(
            restarted.store().latest().map(|c| c.id()),
            Some(CheckpointId(1))
        );
        assert_eq!(restarted.next_checkpoint_id(), CheckpointId(2));
    }

    #[test]
    fn notify_complete_always_follows_the_durable_metadata_write() {
        let (mut c, mut ctx, t) = setup();
        run_one(&mut c, &mut ctx, t).unwrap();
        let written = ctx
            .events
            .iter()
            .position(|e| *e == ContextEvent::MetadataWritten(CheckpointId(1)));
        let notified = ctx
            .events
            .iter()
            .position(|e| *e == ContextEvent::NotifiedComplete(CheckpointId(1)));
        assert!(written.is_some() && written < notified, "{:?}", ctx.events);
    }

    #[test]
    fn a_failed_metadata_write_aborts_the_checkpoint_without_notifying_completion() {
        let (mut c, mut ctx, t) = setup();
        ctx.fail_metadata_write = Some(CheckpointId(1));
        run_one(&mut c, &mut ctx, t).unwrap();
        assert!(ctx.metadata.is_empty());
        assert!(ctx.events.iter().any(|e| matches!(
            e,
            ContextEvent::NotifiedAborted(CheckpointId(1), CheckpointFailureReason::IoError { .. })
        )));
        assert!(c.store().latest().is_none());
        // Default tolerable failures is 0: the job fails.
        assert!(ctx.events.contains(&ContextEvent::JobFailed(1)));
    }
}
