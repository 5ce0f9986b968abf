//! The JobMaster's checkpoint driver: performs the pure [`Coordinator`]'s actions — triggers
//! go to the source tasks through a [`TaskGateway`], acks come back as [`TaskEvent`]s,
//! `_metadata` is written create-only and last, completions are sent to every task,
//! unreferenced files are deleted — and keeps the checkpoint history. No storage call runs on
//! the caller's thread: `_metadata` writes ([`spawn_metadata_write`]) and deletions
//! ([`spawn_deletions`]) run on the runtime, and a write's outcome comes back as a
//! [`MetadataWritten`] event for [`Driver::on_metadata_written`].
//!
//! End of a bounded job: once every task reported [`TaskEvent::Finished`], the next checkpoint
//! (triggered at once, min-pause aside) is the final one; when it completes, every task is
//! told, then shut down. Tasks that finish while a checkpoint is pending are triggered
//! directly, so no checkpoint waits for a barrier that can no longer come.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{SystemTime, UNIX_EPOCH};
use weir_checkpoint::{
    AckResult, Action, CheckpointKind, Coordinator, SavepointFormat, TaskAckMetrics, TaskId,
    TaskStateSnapshot,
};
use weir_storage::{CheckpointPaths, Store};
use weir_types::{Barrier, CheckpointId, SavepointBarrier};

/// What a task tells the checkpoint driver.
#[derive(Debug)]
pub enum TaskEvent {
    /// The task's part of a checkpoint is durable.
    Ack {
        /// The task.
        task: TaskId,
        /// The checkpoint.
        id: CheckpointId,
        /// Its state handles.
        snapshot: TaskStateSnapshot,
        /// Its sync/async/alignment times and sizes.
        metrics: TaskAckMetrics,
    },
    /// The task could not take its part of a checkpoint.
    Decline {
        /// The task.
        task: TaskId,
        /// The checkpoint.
        id: CheckpointId,
        /// Why.
        reason: String,
    },
    /// Every input of the task ended and its chain finished; it waits for the final
    /// checkpoint. Only the attempt that sent it counts it.
    Finished {
        /// The task.
        task: TaskId,
        /// The attempt it belongs to.
        attempt: u32,
    },
}

/// How the driver reaches the tasks of the current attempt: in-process channels for the
/// embedded executor, the TaskManagers' control streams for the JobMaster.
///
/// Implementors must deliver messages to one task in the order they are given and must not
/// block for long (queue them). A task that is gone is not an error: the attempt is ending.
pub trait TaskGateway {
    /// Take checkpoint `barrier.checkpoint` now (a source, or a task whose inputs all ended).
    fn trigger(&mut self, task: TaskId, barrier: Barrier);
    /// Checkpoint `id` completed: tell every task (exactly-once sinks publish).
    fn complete(&mut self, id: CheckpointId);
    /// The job's final checkpoint completed: every task stops.
    fn shutdown(&mut self);
}

/// What became of one checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "status", content = "reason")]
pub enum CheckpointStatus {
    /// Triggered, not finished yet.
    InProgress,
    /// `_metadata` is durable.
    Completed,
    /// Aborted, with the reason.
    Aborted(String),
}

/// One checkpoint's history entry (`weir checkpoints`, benchmarks, logs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointRecord {
    /// The checkpoint.
    pub id: CheckpointId,
    /// Which attempt of the job took it (0: before any restart).
    pub attempt: u32,
    /// Its status.
    #[serde(flatten)]
    pub status: CheckpointStatus,
    /// Trigger time, milliseconds since the Unix epoch.
    pub trigger_ms: u64,
    /// Trigger to completion (or abort), in milliseconds.
    pub duration_ms: u64,
    /// The longest synchronous part over the tasks, in milliseconds.
    pub sync_ms: u64,
    /// The longest asynchronous part (upload) over the tasks, in milliseconds.
    pub async_ms: u64,
    /// The longest barrier alignment over the tasks, in milliseconds.
    pub alignment_ms: u64,
    /// Bytes uploaded for this checkpoint (new files only), over all tasks.
    pub bytes_uploaded: u64,
    /// The full size of the state it references, including reused files, in bytes.
    pub full_size: u64,
    /// Tasks that acknowledged.
    pub acknowledged: usize,
}

impl CheckpointRecord {
    fn new(id: CheckpointId, attempt: u32, trigger_ms: u64) -> Self {
        Self {
            id,
            attempt,
            status: CheckpointStatus::InProgress,
            trigger_ms,
            duration_ms: 0,
            sync_ms: 0,
            async_ms: 0,
            alignment_ms: 0,
            bytes_uploaded: 0,
            full_size: 0,
            acknowledged: 0,
        }
    }

    fn add(&mut self, m: &TaskAckMetrics) {
        self.sync_ms = self.sync_ms.max(m.sync_ms);
        self.async_ms = self.async_ms.max(m.async_ms);
        self.alignment_ms = self.alignment_ms.max(m.alignment_ms);
        self.bytes_uploaded += m.bytes_uploaded;
        self.full_size += m.full_size;
        self.acknowledged += 1;
    }
}

/// What became of one `_metadata` write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetadataOutcome {
    /// It is durable (or a failed write turned out to have landed): the checkpoint completed.
    Written,
    /// It failed and is not there: the checkpoint is aborted, its files deleted.
    Failed(String),
    /// It failed and whether it exists cannot be told: the checkpoint is aborted but every
    /// file is kept (a `_metadata` might verify and point at them).
    Unknown {
        /// The write's error.
        detail: String,
        /// Why the check afterwards could not tell.
        check: String,
    },
}

/// The outcome of the `_metadata` write of checkpoint `id`, reported to the JobMaster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetadataWritten {
    /// The checkpoint.
    pub id: CheckpointId,
    /// What happened.
    pub outcome: MetadataOutcome,
}

/// Where `_metadata` write outcomes are reported (the JobMaster's inbox). Called from the
/// runtime's threads; must not block.
pub type MetadataSink = std::sync::Arc<dyn Fn(MetadataWritten) + Send + Sync>;

/// Whether the JobMaster may still write (`Err`: why not — its JobManager no longer leads);
/// checked right before every `_metadata` write, so a deposed or stalled leader's checkpoint
/// never completes. Must not block.
pub type Fence = std::sync::Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// A [`Fence`] that always lets the write through (no high availability).
pub fn no_fence() -> Fence {
    std::sync::Arc::new(|| Ok(()))
}

/// Where a savepoint is written: the store opened at its own folder, and the folder's URL
/// (what `weir savepoint` prints and `-s` takes).
#[derive(Clone, Debug)]
pub struct SavepointTarget {
    /// The store rooted at the savepoint's folder.
    pub store: Store,
    /// The folder's URL.
    pub url: String,
}

/// Writes `bytes` as `_metadata` of `id` at `path` of `store`, create-only, on `runtime`; after
/// a failed write, reads it back to tell whether it landed. Reports through `sink`. Nothing is
/// written when `fence` refuses.
pub fn spawn_metadata_write(
    runtime: &tokio::runtime::Handle,
    store: &Store,
    path: weir_storage::ObjectPath,
    id: CheckpointId,
    bytes: Vec<u8>,
    sink: MetadataSink,
    fence: Fence,
) {
    let store = store.clone();
    runtime.spawn(async move {
        if let Err(why) = fence() {
            tracing::warn!(checkpoint = %id, %why, "_metadata not written");
            sink(MetadataWritten {
                id,
                outcome: MetadataOutcome::Failed(format!("not written: {why}")),
            });
            return;
        }
        let outcome = match store.put_create(&path, bytes.into()).await {
            Ok(()) => MetadataOutcome::Written,
            Err(e) => {
                let detail = e.to_string();
                match store.get(&path).await {
                    Ok(bytes) => match weir_checkpoint::CheckpointMetadata::decode(&bytes) {
                        Ok(m) if m.checkpoint_id == id => {
                            tracing::warn!(checkpoint = %id, %detail, "writing _metadata reported an error, but it is there: complete");
                            MetadataOutcome::Written
                        }
                        Ok(_) | Err(_) => MetadataOutcome::Unknown {
                            detail,
                            check: format!("{path} does not verify"),
                        },
                    },
                    Err(e) if e.is_not_found() => MetadataOutcome::Failed(detail),
                    Err(e) => MetadataOutcome::Unknown {
                        detail,
                        check: e.to_string(),
                    },
                }
            }
        };
        sink(MetadataWritten { id, outcome });
    });
}

/// The coordinator's transition for a settled `_metadata` write, with or without a live
/// attempt (a write that outlived its attempt still completes or aborts its checkpoint).
pub fn settle_metadata(
    coordinator: &mut Coordinator,
    m: MetadataWritten,
) -> Result<Vec<Action>, weir_checkpoint::CoordinatorError> {
    let id = m.id;
    match m.outcome {
        MetadataOutcome::Written => coordinator.on_metadata_written(now_ms(), id),
        MetadataOutcome::Failed(detail) => {
            tracing::warn!(checkpoint = %id, %detail, "writing _metadata failed");
            coordinator.on_metadata_failed(id, detail)
        }
        MetadataOutcome::Unknown { detail, check } => {
            // It may exist: deleting its files could leave a `_metadata` that verifies but
            // points at nothing. Keep every file.
            tracing::error!(checkpoint = %id, %detail, %check, "cannot tell whether _metadata was written; its files are kept");
            coordinator.on_metadata_failed(id, detail).map(|actions| {
                actions
                    .into_iter()
                    .filter(|a| !matches!(a, Action::DeleteFiles { .. }))
                    .collect()
            })
        }
    }
}

/// Milliseconds since the Unix epoch: the coordinator's clock.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The driver's state for one attempt of the job.
#[allow(missing_docs)]
pub struct Driver<'a, G: TaskGateway> {
    pub coordinator: &'a mut Coordinator,
    pub store: &'a Store,
    pub paths: &'a CheckpointPaths,
    pub runtime: &'a tokio::runtime::Handle,
    pub gateway: G,
    /// Every task of the attempt.
    pub tasks: BTreeSet<TaskId>,
    pub sources: BTreeSet<TaskId>,
    pub history: &'a mut Vec<CheckpointRecord>,
    pub deletions: &'a mut Vec<tokio::task::JoinHandle<()>>,
    pub attempt: u32,
    pub finished: BTreeSet<TaskId>,
    pub barriers: BTreeMap<CheckpointId, Barrier>,
    /// Set once every task finished: checkpoints from this id on are final.
    pub final_from: Option<CheckpointId>,
    /// The final checkpoint completed and every task was told to stop.
    pub done: bool,
    /// Too many checkpoint failures in a row: the job must fail (restart strategy applies).
    pub failed: Option<String>,
    /// Where `_metadata` write outcomes go.
    pub metadata_sink: &'a MetadataSink,
    /// Checked before every `_metadata` write.
    pub fence: &'a Fence,
    /// Checkpoints whose `_metadata` write is in flight (across attempts).
    pub writing: &'a mut BTreeSet<CheckpointId>,
    /// Where each savepoint in flight is written.
    pub savepoints: &'a BTreeMap<CheckpointId, SavepointTarget>,
    /// The savepoint the job stops with (`weir stop`), if one is in flight.
    pub stop: Option<CheckpointId>,
    /// What the final snapshot of a bounded (or drained) job is: a checkpoint, or the
    /// savepoint of `weir stop --drain`.
    pub final_kind: CheckpointKind,
}

impl<G: TaskGateway> Driver<'_, G> {
    /// Periodic work: expiry, periodic triggers, and the final checkpoint when it is due.
    pub fn on_tick(&mut self) {
        let now = now_ms();
        let mut actions = self.coordinator.on_tick(now);
        if self.final_from.is_some() && !self.done && self.coordinator.num_in_progress() == 0 {
            match self.coordinator.trigger_final_as(now, self.final_kind) {
                Ok(more) => actions.extend(more),
                Err(reason) => tracing::debug!(%reason, "final checkpoint postponed"),
            }
        }
        self.perform(actions);
    }

    /// Acts on one task event (of any attempt: late acks are classified too).
    pub fn on_event(&mut self, event: TaskEvent) {
        let now = now_ms();
        match event {
            TaskEvent::Ack {
                task,
                id,
                snapshot,
                metrics,
            } => {
                let outcome = self.coordinator.on_ack(now, id, task, snapshot, metrics);
                if outcome.result == AckResult::Success {
                    if let Some(r) = self.record(id) {
                        r.add(&metrics);
                    }
                }
                self.perform(outcome.actions);
            }
            TaskEvent::Decline { task, id, reason } => {
                let actions = self.coordinator.on_decline(id, task, reason);
                self.perform(actions);
            }
            TaskEvent::Finished { task, attempt } if attempt != self.attempt => {
                tracing::debug!(%task, attempt, "finish of an earlier attempt ignored");
            }
            TaskEvent::Finished { task, .. } => {
                self.finished.insert(task);
                // Pending checkpoints whose barrier this task may never see: trigger directly
                // (the task ignores ids it already snapshotted in-band).
                let pending: Vec<Barrier> = self
                    .coordinator
                    .pending()
                    .filter(|p| p.missing_tasks().any(|t| *t == task))
                    .filter_map(|p| self.barriers.get(&p.id()).copied())
                    .collect();
                for b in pending {
                    self.gateway.trigger(task, b);
                }
                if self.finished.len() == self.tasks.len() && self.final_from.is_none() {
                    let next = self.coordinator.next_checkpoint_id();
                    tracing::info!(final_checkpoint_from = %next, "every task finished; taking the final checkpoint");
                    self.final_from = Some(next);
                    self.on_tick();
                }
            }
        }
    }

    fn record(&mut self, id: CheckpointId) -> Option<&mut CheckpointRecord> {
        self.history.iter_mut().rev().find(|r| r.id == id)
    }

    /// Performs the coordinator's `actions` in order (what every entry point above does).
    pub fn perform(&mut self, actions: Vec<Action>) {
        let mut queue: std::collections::VecDeque<Action> = actions.into();
        // Deletions run in one task, in the order the coordinator gave them: a subsumed
        // checkpoint's `_metadata` goes before the files it references.
        let mut deletions: Vec<String> = Vec::new();
        while let Some(action) = queue.pop_front() {
            match action {
                Action::TriggerSources {
                    id,
                    timestamp,
                    kind,
                    base,
                } => {
                    let savepoint = match kind {
                        CheckpointKind::Checkpoint => None,
                        CheckpointKind::Savepoint { format } => Some(SavepointBarrier {
                            canonical: format == SavepointFormat::Canonical,
                            stop: self.stop == Some(id),
                        }),
                    };
                    let barrier = Barrier {
                        checkpoint: id,
                        base,
                        savepoint,
                    };
                    self.barriers.insert(id, barrier);
                    self.history
                        .push(CheckpointRecord::new(id, self.attempt, timestamp));
                    let targets: BTreeSet<TaskId> =
                        self.sources.union(&self.finished).copied().collect();
                    for t in targets {
                        self.gateway.trigger(t, barrier);
                    }
                }
                Action::WriteMetadata { id, metadata } => match metadata.encode() {
                    Ok(bytes) => {
                        // Off this thread: a slow or hung store never stalls the JobMaster;
                        // the outcome comes back through `metadata_sink`. A savepoint's
                        // `_metadata` goes to the root of its own folder.
                        let (store, path) = match self.savepoints.get(&id) {
                            Some(t) if metadata.kind.is_savepoint() => (
                                &t.store,
                                weir_storage::ObjectPath::from(weir_checkpoint::METADATA_FILE_NAME),
                            ),
                            _ => (self.store, self.paths.metadata(id)),
                        };
                        self.writing.insert(id);
                        spawn_metadata_write(
                            self.runtime,
                            store,
                            path,
                            id,
                            bytes,
                            self.metadata_sink.clone(),
                            self.fence.clone(),
                        );
                    }
                    Err(e) => match self.coordinator.on_metadata_failed(id, e.to_string()) {
                        Ok(more) => queue.extend(more),
                        Err(e) => self.failed = Some(format!("checkpoint coordinator: {e}")),
                    },
                },
                Action::NotifyComplete { id } => {
                    let now = now_ms();
                    if let Some(r) = self.record(id) {
                        r.status = CheckpointStatus::Completed;
                        r.duration_ms = now.saturating_sub(r.trigger_ms);
                        tracing::info!(
                            checkpoint = %id,
                            duration_ms = r.duration_ms,
                            sync_ms = r.sync_ms,
                            async_ms = r.async_ms,
                            alignment_ms = r.alignment_ms,
                            bytes_uploaded = r.bytes_uploaded,
                            full_size_bytes = r.full_size,
                            "checkpoint complete"
                        );
                    }
                    let savepoint = self.barriers.remove(&id).and_then(|b| b.savepoint);
                    // As in Flink, only a savepoint the job stops with commits side effects:
                    // a sink's transaction staged by any other savepoint is published by the
                    // next checkpoint's completion (or by a job restored from the savepoint),
                    // so a failover to an older checkpoint never publishes it twice.
                    if savepoint.is_none_or(|s| s.stop) {
                        self.gateway.complete(id);
                    }
                    if self.final_from.is_some_and(|f| id >= f) {
                        self.gateway.shutdown();
                        self.done = true;
                    }
                }
                Action::NotifyAborted { id, reason } => {
                    let now = now_ms();
                    if let Some(r) = self.record(id) {
                        r.status = CheckpointStatus::Aborted(reason.to_string());
                        r.duration_ms = now.saturating_sub(r.trigger_ms);
                    }
                    self.barriers.remove(&id);
                    tracing::warn!(checkpoint = %id, %reason, "checkpoint aborted");
                    if let Some(t) = self.savepoints.get(&id) {
                        // The folder is this savepoint's alone: nothing of it may stay.
                        self.deletions.push(spawn_folder_deletion(self.runtime, t));
                    }
                }
                Action::DeleteFiles { paths } => deletions.extend(paths),
                Action::FailJob {
                    consecutive_failures,
                    last,
                } => {
                    self.failed = Some(format!(
                        "{consecutive_failures} checkpoints failed in a row (more than \
                         execution.checkpointing.tolerable-failed-checkpoints); the last: {last}"
                    ));
                }
            }
        }
        if !deletions.is_empty() {
            self.delete(deletions);
        }
    }

    /// Settles the write of `_metadata` of `m.id` (from [`spawn_metadata_write`]) and performs
    /// what follows: completion and subsumption, or the abort.
    pub fn on_metadata_written(&mut self, m: MetadataWritten) {
        self.writing.remove(&m.id);
        match settle_metadata(self.coordinator, m) {
            Ok(actions) => self.perform(actions),
            Err(e) => self.failed = Some(format!("checkpoint coordinator: {e}")),
        }
    }

    fn delete(&mut self, paths: Vec<String>) {
        self.deletions
            .push(spawn_deletions(self.runtime, self.store, self.paths, paths));
    }
}

/// Deletes everything in an aborted savepoint's folder, on the runtime; a failure is logged
/// (the folder has no `_metadata`, so it is no savepoint; `weir savepoint dispose` removes it).
pub fn spawn_folder_deletion(
    runtime: &tokio::runtime::Handle,
    target: &SavepointTarget,
) -> tokio::task::JoinHandle<()> {
    let target = target.clone();
    runtime.spawn(async move {
        match target.store.delete_prefix(&weir_storage::ObjectPath::default()).await {
            Ok(n) => tracing::info!(folder = %target.url, objects = n, "aborted savepoint's folder removed"),
            Err(e) => tracing::warn!(folder = %target.url, error = %e, "could not remove an aborted savepoint's folder"),
        }
    })
}

/// Deletes `files` (paths relative to the job's checkpoint directory) on the upload runtime,
/// one by one, in order; failures are logged (the file stays an orphan, never a dangling
/// reference). The caller awaits the handle before the job ends.
pub fn spawn_deletions(
    runtime: &tokio::runtime::Handle,
    store: &Store,
    paths: &CheckpointPaths,
    files: Vec<String>,
) -> tokio::task::JoinHandle<()> {
    let (store, job) = (store.clone(), paths.clone());
    runtime.spawn(async move {
        for f in files {
            let result = match job.handle_path(&f) {
                Ok(path) => store.delete(&path).await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            if let Err(detail) = result {
                tracing::warn!(path = %f, %detail, "could not delete an unreferenced checkpoint file");
            }
        }
    })
}
