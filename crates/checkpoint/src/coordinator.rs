//! The checkpoint coordinator as a pure state machine: facts in (with the time passed in),
//! [`Action`]s out. A driver (the JobMaster; [`crate::context::drive`] in tests) performs them.
//!
//! # Checkpoint flow
//!
//! 1. **Trigger** — [`Coordinator::on_tick`] (periodic) or [`Coordinator::trigger`] (manual,
//!    savepoints) checks `max-concurrent-checkpoints` and `min-pause`, takes the next id from the
//!    [`CheckpointIdCounter`] (ids strictly increase), creates a [`PendingCheckpoint`] over every
//!    task, makes it hold the current incremental base in the [`SharedStateRegistry`], and emits
//!    [`Action::TriggerSources`].
//! 2. **Acknowledge** — [`Coordinator::on_ack`] classifies each ack ([`AckResult`]): the first ack
//!    of a task is recorded and its files held in the registry; a duplicate's or a late ack's
//!    files that nothing references are deleted ([`Action::DeleteFiles`]); an ack for an id never
//!    seen is ignored (its files are left alone — we cannot know who owns them).
//! 3. **Write metadata** — when the last task acks, the checkpoint moves to *completing* and the
//!    coordinator emits [`Action::WriteMetadata`]. Nobody is told anything yet.
//! 4. **Complete** — only [`Coordinator::on_metadata_written`] (the driver saw `_metadata` become
//!    durable) makes it complete: [`Action::NotifyComplete`], then the [`CompletedCheckpointStore`]
//!    subsumes old checkpoints (never savepoints), older pending checkpoints are aborted as
//!    subsumed, and files nothing references any more are deleted.
//!
//! # Error paths
//!
//! - A timeout ([`Coordinator::on_tick`], also checked on every ack), a decline
//!   ([`Coordinator::on_decline`]), a failover ([`Coordinator::on_failover`]) or shutdown aborts
//!   a pending checkpoint: [`Action::NotifyAborted`] and [`Action::DeleteFiles`] for every file
//!   only it referenced (cleanup on every failure path).
//! - A checkpoint whose metadata write is in flight is never aborted by time or failover: the
//!   write may already be durable, and then the checkpoint exists (invariant 1). Only
//!   [`Coordinator::on_metadata_failed`] — the driver knows nothing was written — aborts it.
//! - Failures that count ([`CheckpointFailureReason::counts_as_failure`]) raise a consecutive
//!   counter; one beyond `tolerable-failed-checkpoints` emits [`Action::FailJob`]. A completion
//!   resets it.
//! - Protocol misuse by the driver (confirming a write that was never requested) is a
//!   [`CoordinatorError`], not an ack classification.

use crate::completed::{CompletedCheckpoint, CompletedCheckpointStore};
use crate::config::{CheckpointConfig, ConfigError};
use crate::failure::CheckpointFailureReason;
use crate::handle::{TaskAckMetrics, TaskId, TaskStateSnapshot};
use crate::id_counter::CheckpointIdCounter;
use crate::kind::CheckpointKind;
use crate::metadata::CheckpointMetadata;
use crate::pending::{AckResult, PendingCheckpoint};
use crate::registry::SharedStateRegistry;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use weir_types::{CheckpointId, JobId};

/// The path of checkpoint `id`'s `_metadata`, relative to the job's checkpoint directory.
fn metadata_path(id: CheckpointId) -> String {
    format!("{id}/{}", crate::metadata::METADATA_FILE_NAME)
}

/// How many recently finished checkpoint ids are remembered, so a late ack is recognised as
/// [`AckResult::Discarded`] rather than [`AckResult::Unknown`] (Flink keeps 16 too).
pub const RECENT_CHECKPOINT_IDS: usize = 16;

/// Something the driver must do. Emitted in the order it must be done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Tell every source subtask to snapshot checkpoint `id` and emit its barrier.
    TriggerSources {
        /// The new checkpoint.
        id: CheckpointId,
        /// Its trigger time (ms), recorded in its metadata.
        timestamp: u64,
        /// Checkpoint or savepoint.
        kind: CheckpointKind,
        /// The incremental base the checkpoint holds: tasks may reuse shareable files they
        /// uploaded for exactly this completed checkpoint.
        base: Option<CheckpointId>,
    },
    /// Write `_metadata` for `id` (create-only, last of its files), then report the outcome with
    /// [`Coordinator::on_metadata_written`] or [`Coordinator::on_metadata_failed`].
    WriteMetadata {
        /// The checkpoint.
        id: CheckpointId,
        /// What to encode into `_metadata`.
        metadata: Box<CheckpointMetadata>,
    },
    /// Tell every task that checkpoint `id` is complete (exactly-once sinks commit now).
    NotifyComplete {
        /// The completed checkpoint.
        id: CheckpointId,
    },
    /// Tell every task that checkpoint `id` was aborted, so they drop its in-flight work.
    NotifyAborted {
        /// The aborted checkpoint.
        id: CheckpointId,
        /// Why.
        reason: CheckpointFailureReason,
    },
    /// Delete these paths (relative to the job's checkpoint directory); nothing references them.
    DeleteFiles {
        /// Sorted, unique paths.
        paths: Vec<String>,
    },
    /// Fail the job: too many consecutive checkpoint failures.
    FailJob {
        /// How many counted failures happened in a row.
        consecutive_failures: u32,
        /// The last of them.
        last: CheckpointFailureReason,
    },
}

/// What an acknowledgement was classified as, and what to do about it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use = "the actions must be performed by the driver"]
pub struct AckOutcome {
    /// The classification.
    pub result: AckResult,
    /// Actions that follow (metadata write on the last ack, cleanup of unused files, expiry).
    pub actions: Vec<Action>,
}

/// The driver or the caller used the coordinator wrongly; retrying the same call cannot help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoordinatorError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A job must have at least one task to acknowledge checkpoints.
    #[error("job {job_id} has no tasks to acknowledge checkpoints")]
    NoTasks {
        /// The job.
        job_id: JobId,
    },
    /// A metadata write outcome was reported for a checkpoint that was not waiting for one.
    #[error("metadata write reported for {id}, which is not waiting for its metadata")]
    UnexpectedMetadataOutcome {
        /// The checkpoint named by the driver.
        id: CheckpointId,
    },
    /// Restore was called on a coordinator that already holds checkpoints.
    #[error("restore must be the first call on a new coordinator")]
    NotFresh,
    /// A restored snapshot was taken with a different number of key groups.
    #[error(
        "{id} was taken with max parallelism {found}, but the job uses {expected}; \
         key groups cannot be remapped"
    )]
    MaxParallelismMismatch {
        /// The restored snapshot.
        id: CheckpointId,
        /// Its max parallelism.
        found: u32,
        /// The job's.
        expected: u32,
    },
}

#[derive(Clone, Debug)]
struct Completing {
    metadata: CheckpointMetadata,
    acked: BTreeSet<TaskId>,
}

#[derive(Clone, Debug, Default)]
struct RecentIds(VecDeque<CheckpointId>);

impl RecentIds {
    fn push(&mut self, id: CheckpointId) {
        if self.0.contains(&id) {
            return;
        }
        if self.0.len() == RECENT_CHECKPOINT_IDS {
            self.0.pop_front();
        }
        self.0.push_back(id);
    }

    fn contains(&self, id: CheckpointId) -> bool {
        self.0.contains(&id)
    }
}

/// The checkpoint coordinator of one job. See the module doc for the flow.
#[derive(Clone, Debug)]
pub struct Coordinator {
    job_id: JobId,
    max_parallelism: u32,
    config: CheckpointConfig,
    tasks: BTreeSet<TaskId>,
    counter: CheckpointIdCounter,
    pending: BTreeMap<CheckpointId, PendingCheckpoint>,
    completing: BTreeMap<CheckpointId, Completing>,
    store: CompletedCheckpointStore,
    registry: SharedStateRegistry,
    recent: RecentIds,
    consecutive_failures: u32,
    last_completion_ms: Option<u64>,
    next_periodic_ms: Option<u64>,
    /// No periodic checkpoint is triggered while set ([`Coordinator::suspend_periodic`]).
    periodic_suspended: bool,
    /// Recorded in every `_metadata` ([`Coordinator::set_job_name`]).
    job_name: Option<String>,
    /// Recorded in every `_metadata` ([`Coordinator::set_leader_epoch`]).
    leader_epoch: Option<u64>,
}

impl Coordinator {
    /// A coordinator for `job_id` whose checkpoints every task in `tasks` acknowledges.
    pub fn new(
        job_id: JobId,
        max_parallelism: u32,
        config: CheckpointConfig,
        tasks: impl IntoIterator<Item = TaskId>,
    ) -> Result<Self, CoordinatorError> {
        config.validate()?;
        let tasks: BTreeSet<TaskId> = tasks.into_iter().collect();
        if tasks.is_empty() {
            return Err(CoordinatorError::NoTasks { job_id });
        }
        let store =
            CompletedCheckpointStore::new(config.num_retained).map_err(|e| ConfigError {
                key: crate::config::keys::NUM_RETAINED,
                value: e.0.to_string(),
                expected: "at least 1",
            })?;
        Ok(Self {
            job_id,
            max_parallelism,
            config,
            tasks,
            counter: CheckpointIdCounter::new(),
            pending: BTreeMap::new(),
            completing: BTreeMap::new(),
            store,
            registry: SharedStateRegistry::new(),
            recent: RecentIds::default(),
            consecutive_failures: 0,
            last_completion_ms: None,
            next_periodic_ms: None,
            periodic_suspended: false,
            job_name: None,
            leader_epoch: None,
        })
    }

    /// Loads the completed checkpoints and savepoints found in storage (each `_metadata` already
    /// read and verified) into a fresh coordinator, with a fresh registry. The id counter moves
    /// past every restored id and past `highest_id_seen` (e.g. a `chk-<n>` directory without
    /// valid metadata), so no id is reused. Every loaded checkpoint stays retained, even beyond
    /// the retention count, until a checkpoint of the resumed job completes; the returned
    /// deletions are only files the loaded checkpoints' registry entries release.
    pub fn restore(
        &mut self,
        completed: impl IntoIterator<Item = CompletedCheckpoint>,
        highest_id_seen: Option<CheckpointId>,
    ) -> Result<Vec<Action>, CoordinatorError> {
        if !self.pending.is_empty() || !self.completing.is_empty() || self.store.latest().is_some()
        {
            return Err(CoordinatorError::NotFresh);
        }
        let mut completed: Vec<_> = completed.into_iter().collect();
        completed.sort_by_key(|c| c.id());
        for c in &completed {
            if c.metadata().max_parallelism != self.max_parallelism {
                return Err(CoordinatorError::MaxParallelismMismatch {
                    id: c.id(),
                    found: c.metadata().max_parallelism,
                    expected: self.max_parallelism,
                });
            }
        }
        // Every loaded checkpoint stays retained, whatever the retention count: none is
        // deleted before the resumed job has verified a newer one (DESIGN §8, invariant 8).
        let mut deletions = BTreeSet::new();
        for c in completed {
            let id = c.id();
            self.counter.restore_from(id);
            deletions.extend(
                self.registry
                    .register_completed(id, c.kind(), c.metadata().files()),
            );
            self.store.add_retaining(c);
            self.recent.push(id);
        }
        if let Some(id) = highest_id_seen {
            self.counter.restore_from(id);
        }
        Ok(delete_action(deletions).into_iter().collect())
    }

    /// Periodic work at time `now`: abort expired checkpoints, and trigger a periodic checkpoint
    /// when one is due and allowed. The first tick schedules the first checkpoint one interval
    /// later; a due checkpoint that is not allowed yet is retried on the next tick.
    #[must_use = "the actions must be performed by the driver"]
    pub fn on_tick(&mut self, now: u64) -> Vec<Action> {
        let mut actions = self.expire(now);
        let interval = self.config.interval_ms;
        if interval == 0 || self.periodic_suspended {
            return actions;
        }
        match self.next_periodic_ms {
            None => self.next_periodic_ms = Some(now.saturating_add(interval)),
            Some(due) if now >= due => match self.trigger(now, CheckpointKind::Checkpoint) {
                Ok(more) => {
                    actions.extend(more);
                    self.next_periodic_ms = Some(now.saturating_add(interval));
                }
                Err(reason) => {
                    tracing::debug!(job = %self.job_id, %reason, "periodic checkpoint postponed");
                }
            },
            Some(_) => {}
        }
        actions
    }

    /// Triggers a checkpoint or savepoint at `now`. A checkpoint is refused (nothing changes)
    /// with [`CheckpointFailureReason::TooManyConcurrent`] when `max_concurrent` checkpoints
    /// or savepoints are in progress, and with
    /// [`CheckpointFailureReason::MinPauseNotElapsed`]; a savepoint only with
    /// [`CheckpointFailureReason::SavepointInProgress`]. Refusals do not count as failures.
    pub fn trigger(
        &mut self,
        now: u64,
        kind: CheckpointKind,
    ) -> Result<Vec<Action>, CheckpointFailureReason> {
        self.trigger_checked(now, kind, true)
    }

    /// Triggers the final checkpoint of a bounded job at `now`, after every task has finished:
    /// like [`Self::trigger`], but `min-pause` does not apply (the job waits for nothing else).
    pub fn trigger_final(&mut self, now: u64) -> Result<Vec<Action>, CheckpointFailureReason> {
        self.trigger_checked(now, CheckpointKind::Checkpoint, false)
    }

    /// Like [`Self::trigger_final`], taking the final snapshot as `kind` (a savepoint when the
    /// job stops with `weir stop --drain`).
    pub fn trigger_final_as(
        &mut self,
        now: u64,
        kind: CheckpointKind,
    ) -> Result<Vec<Action>, CheckpointFailureReason> {
        self.trigger_checked(now, kind, false)
    }

    fn trigger_checked(
        &mut self,
        now: u64,
        kind: CheckpointKind,
        min_pause_applies: bool,
    ) -> Result<Vec<Action>, CheckpointFailureReason> {
        // As in Flink, a savepoint does not wait for checkpoints in flight (a user waits for
        // it), but only one savepoint runs at a time.
        let max = self.config.max_concurrent;
        if kind.is_savepoint() {
            let running = self
                .pending
                .values()
                .map(|p| (p.id(), p.kind()))
                .chain(self.completing.iter().map(|(id, c)| (*id, c.metadata.kind)))
                .find(|(_, k)| k.is_savepoint());
            if let Some((id, _)) = running {
                return Err(CheckpointFailureReason::SavepointInProgress { id });
            }
        } else if self.num_in_progress() >= max as usize {
            return Err(CheckpointFailureReason::TooManyConcurrent { max });
        }
        if !kind.is_savepoint() && min_pause_applies {
            if let Some(last) = self.last_completion_ms {
                let earliest = last.saturating_add(self.config.min_pause_ms);
                if now < earliest {
                    return Err(CheckpointFailureReason::MinPauseNotElapsed {
                        remaining_ms: earliest - now,
                    });
                }
            }
        }
        let id = self.counter.next_id()?;
        self.pending.insert(
            id,
            PendingCheckpoint::new(id, kind, now, self.tasks.iter().copied()),
        );
        let base = self.registry.hold_base(id);
        tracing::info!(job = %self.job_id, checkpoint = %id, %kind, ?base, "triggering");
        Ok(vec![Action::TriggerSources {
            id,
            timestamp: now,
            kind,
            base,
        }])
    }

    /// `task` acknowledged checkpoint `id` with `snapshot` at `now`. Expired checkpoints are
    /// aborted first, so an ack that arrives after the timeout is [`AckResult::Discarded`] even
    /// if no tick ran in between.
    pub fn on_ack(
        &mut self,
        now: u64,
        id: CheckpointId,
        task: TaskId,
        snapshot: TaskStateSnapshot,
        metrics: TaskAckMetrics,
    ) -> AckOutcome {
        let mut actions = self.expire(now);
        let kind = self
            .pending
            .get(&id)
            .map(|p| p.kind())
            .or_else(|| self.completing.get(&id).map(|c| c.metadata.kind));
        if let Err(reason) = check_handle_paths(id, kind, &snapshot) {
            // Never used, never deleted: a handle outside the checkpoint's own folder could
            // name another checkpoint's files (its `_metadata`, say).
            tracing::error!(checkpoint = %id, %task, %reason, "ack with a forbidden file handle rejected");
            actions.extend(self.on_decline(id, task, reason));
            return AckOutcome {
                result: AckResult::Unknown,
                actions,
            };
        }
        let paths: Vec<String> = snapshot.files().map(|f| f.path().to_owned()).collect();
        let result = if let Some(pending) = self.pending.get_mut(&id) {
            let result = pending.acknowledge(task, snapshot, metrics);
            let full = pending.is_fully_acknowledged();
            match result {
                // A savepoint's files live in its own folder and belong to the user: the
                // registry (which frees files of the job's folder) never sees them.
                AckResult::Success if pending.kind().is_savepoint() => {
                    if full {
                        actions.extend(self.begin_completion(id));
                    }
                }
                AckResult::Success => {
                    self.registry.hold(id, paths);
                    if full {
                        actions.extend(self.begin_completion(id));
                    }
                }
                AckResult::Duplicate => actions.extend(self.delete_unreferenced(paths)),
                AckResult::Unknown | AckResult::Discarded => {}
            }
            result
        } else if let Some(completing) = self.completing.get(&id) {
            if completing.acked.contains(&task) {
                actions.extend(self.delete_unreferenced(paths));
                AckResult::Duplicate
            } else {
                AckResult::Unknown
            }
        } else if self.recent.contains(id) {
            actions.extend(self.delete_unreferenced(paths));
            AckResult::Discarded
        } else {
            AckResult::Unknown
        };
        match result {
            AckResult::Success => {
                tracing::debug!(checkpoint = %id, %task, ?metrics, "ack");
            }
            other => {
                tracing::warn!(checkpoint = %id, %task, result = ?other, "ack not used");
            }
        }
        AckOutcome { result, actions }
    }

    /// `task` declined checkpoint `id`: the checkpoint is aborted. A decline for a checkpoint
    /// that is not pending (finished, completing, unknown) changes nothing.
    #[must_use = "the actions must be performed by the driver"]
    pub fn on_decline(&mut self, id: CheckpointId, task: TaskId, reason: String) -> Vec<Action> {
        match self.pending.get(&id) {
            Some(p) if p.involves(task) => {
                self.abort(id, CheckpointFailureReason::TaskDeclined { task, reason })
            }
            _ => {
                tracing::debug!(checkpoint = %id, %task, "decline for a checkpoint not pending");
                Vec::new()
            }
        }
    }

    /// The job is failing over: every checkpoint still collecting acks is aborted. Checkpoints
    /// whose metadata write is in flight are left to its outcome; the driver should wait for it
    /// before choosing the checkpoint to restore from ([`Self::metadata_writes_in_flight`]).
    #[must_use = "the actions must be performed by the driver"]
    pub fn on_failover(&mut self) -> Vec<Action> {
        self.abort_all(CheckpointFailureReason::JobFailover)
    }

    /// The job is cancelled or the coordinator stops: every pending checkpoint is aborted.
    #[must_use = "the actions must be performed by the driver"]
    pub fn shutdown(&mut self) -> Vec<Action> {
        self.abort_all(CheckpointFailureReason::Cancelled)
    }

    /// Aborts pending checkpoint `id` for `reason` (e.g. a task failure reported by the
    /// scheduler). Nothing happens if `id` is not collecting acks.
    #[must_use = "the actions must be performed by the driver"]
    pub fn abort(&mut self, id: CheckpointId, reason: CheckpointFailureReason) -> Vec<Action> {
        match self.pending.remove(&id) {
            Some(p) => self.finish_abort(p, reason),
            None => Vec::new(),
        }
    }

    /// The driver saw `_metadata` of `id` become durable at `now`: the checkpoint is complete.
    pub fn on_metadata_written(
        &mut self,
        now: u64,
        id: CheckpointId,
    ) -> Result<Vec<Action>, CoordinatorError> {
        let completing = self
            .completing
            .remove(&id)
            .ok_or(CoordinatorError::UnexpectedMetadataOutcome { id })?;
        let kind = completing.metadata.kind;
        let mut deletions: BTreeSet<String> = if kind.is_savepoint() {
            BTreeSet::new()
        } else {
            self.registry
                .register_completed(id, kind, completing.metadata.files())
                .into_iter()
                .collect()
        };
        let mut actions = vec![Action::NotifyComplete { id }];
        let mut metadata_files = Vec::new();
        for subsumed in self
            .store
            .add(CompletedCheckpoint::from_metadata(completing.metadata))
        {
            tracing::info!(checkpoint = %subsumed.id(), by = %id, "subsumed");
            metadata_files.push(metadata_path(subsumed.id()));
            deletions.extend(self.registry.unregister_checkpoint(subsumed.id()));
        }
        // A subsumed checkpoint stops existing first (its `_metadata` goes), then its files.
        actions.extend(delete_action(metadata_files.into_iter().collect()));
        self.recent.push(id);
        self.consecutive_failures = 0;
        self.last_completion_ms = Some(self.last_completion_ms.map_or(now, |t| t.max(now)));
        tracing::info!(job = %self.job_id, checkpoint = %id, %kind, "completed");
        if !kind.is_savepoint() {
            let older: Vec<CheckpointId> = self
                .pending
                .iter()
                .filter(|(pid, p)| **pid < id && !p.kind().is_savepoint())
                .map(|(pid, _)| *pid)
                .collect();
            for pid in older {
                actions.extend(self.abort(pid, CheckpointFailureReason::Subsumed { by: id }));
            }
            // Tasks of newer checkpoints may learn of this completion before they snapshot and
            // reuse its files: keep them alive until those checkpoints finish.
            let newer: Vec<CheckpointId> = self.pending.range(id..).map(|(pid, _)| *pid).collect();
            for pid in newer {
                self.registry.hold_base(pid);
            }
        }
        actions.extend(delete_action(deletions));
        Ok(actions)
    }

    /// The driver knows `_metadata` of `id` was **not** written (the create-only put failed
    /// cleanly, or the driver removed a partial file). Never call this when the outcome is
    /// unknown: a written metadata makes the checkpoint exist.
    pub fn on_metadata_failed(
        &mut self,
        id: CheckpointId,
        detail: String,
    ) -> Result<Vec<Action>, CoordinatorError> {
        if self.completing.remove(&id).is_none() {
            return Err(CoordinatorError::UnexpectedMetadataOutcome { id });
        }
        let deletions = self.registry.unregister_checkpoint(id);
        let reason = CheckpointFailureReason::IoError { detail };
        Ok(self.after_abort(id, reason, deletions.into_iter().collect()))
    }

    /// Restoring from completed checkpoint `id` failed because its files are damaged or
    /// missing: forget it, so recovery falls back to the previous one. Its files are not
    /// deleted (they are evidence, and may be shared); they become orphans for the operator
    /// to inspect. Returns whether `id` was retained.
    pub fn discard_damaged(&mut self, id: CheckpointId) -> bool {
        let removed = self.store.remove(id);
        if removed {
            let _ = self.registry.unregister_checkpoint(id);
            tracing::warn!(job = %self.job_id, checkpoint = %id, "damaged checkpoint discarded");
        }
        removed
    }

    /// The user disposed of savepoint `id`: forget it and delete what only it referenced.
    #[must_use = "the actions must be performed by the driver"]
    pub fn dispose_savepoint(&mut self, id: CheckpointId) -> Vec<Action> {
        if self.store.remove_savepoint(id).is_none() {
            return Vec::new();
        }
        delete_action(
            self.registry
                .unregister_checkpoint(id)
                .into_iter()
                .collect(),
        )
        .into_iter()
        .collect()
    }

    /// The job now runs `tasks` (the adaptive scheduler changed its parallelism): every
    /// checkpoint from now on is acknowledged by them. Refused while a checkpoint is pending or
    /// completing (they belong to the old tasks).
    pub fn set_tasks(&mut self, tasks: impl IntoIterator<Item = TaskId>) -> Result<(), String> {
        if self.num_in_progress() > 0 {
            return Err(format!(
                "{} checkpoint(s) still in progress",
                self.num_in_progress()
            ));
        }
        let tasks: BTreeSet<TaskId> = tasks.into_iter().collect();
        if tasks.is_empty() {
            return Err("no tasks".into());
        }
        self.tasks = tasks;
        Ok(())
    }

    /// Names the job (its catalog name) in every `_metadata` written from now on.
    pub fn set_job_name(&mut self, name: impl Into<String>) {
        self.job_name = Some(name.into());
    }

    /// Records the leader epoch of this JobManager (high availability) in every `_metadata`
    /// written from now on.
    pub fn set_leader_epoch(&mut self, epoch: u64) {
        self.leader_epoch = Some(epoch);
    }

    /// Suspends (or resumes) periodic checkpoints: while the job stops with a savepoint, no
    /// checkpoint may follow the savepoint's barrier.
    pub fn suspend_periodic(&mut self, suspended: bool) {
        self.periodic_suspended = suspended;
    }

    /// Moves the id counter past `id` (a restored savepoint's): the job's ids continue above
    /// it and never reuse it.
    pub fn continue_after(&mut self, id: CheckpointId) {
        self.counter.restore_from(id);
    }

    /// The configuration.
    pub fn config(&self) -> &CheckpointConfig {
        &self.config
    }

    /// The job.
    pub fn job_id(&self) -> JobId {
        self.job_id
    }

    /// The retained completed checkpoints and savepoints.
    pub fn store(&self) -> &CompletedCheckpointStore {
        &self.store
    }

    /// The shared-file registry (e.g. for the incremental base to send to tasks).
    pub fn registry(&self) -> &SharedStateRegistry {
        &self.registry
    }

    /// Checkpoints collecting acks, oldest first.
    pub fn pending(&self) -> impl Iterator<Item = &PendingCheckpoint> {
        self.pending.values()
    }

    /// Checkpoints whose metadata write is in flight.
    pub fn metadata_writes_in_flight(&self) -> impl Iterator<Item = CheckpointId> + '_ {
        self.completing.keys().copied()
    }

    /// Checkpoints in progress: collecting acks or writing metadata.
    pub fn num_in_progress(&self) -> usize {
        self.pending.len() + self.completing.len()
    }

    /// Counted failures since the last completion (or the last [`Action::FailJob`]).
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// The id the next trigger will use.
    pub fn next_checkpoint_id(&self) -> CheckpointId {
        self.counter.peek()
    }

    fn expire(&mut self, now: u64) -> Vec<Action> {
        let timeout_ms = self.config.timeout_ms;
        let expired: Vec<CheckpointId> = self
            .pending
            .values()
            .filter(|p| now.saturating_sub(p.trigger_timestamp()) >= timeout_ms)
            .map(|p| p.id())
            .collect();
        let mut actions = Vec::new();
        for id in expired {
            actions.extend(self.abort(id, CheckpointFailureReason::Timeout { timeout_ms }));
        }
        actions
    }

    fn abort_all(&mut self, reason: CheckpointFailureReason) -> Vec<Action> {
        let ids: Vec<CheckpointId> = self.pending.keys().copied().collect();
        let mut actions = Vec::new();
        for id in ids {
            actions.extend(self.abort(id, reason.clone()));
        }
        actions
    }

    fn begin_completion(&mut self, id: CheckpointId) -> Vec<Action> {
        let Some(pending) = self.pending.remove(&id) else {
            return Vec::new();
        };
        match pending.finalize(self.job_id, self.max_parallelism) {
            Ok(mut metadata) => {
                metadata.job_name = self.job_name.clone();
                metadata.leader_epoch = self.leader_epoch;
                let acked = pending.acknowledged().keys().copied().collect();
                self.completing.insert(
                    id,
                    Completing {
                        metadata: metadata.clone(),
                        acked,
                    },
                );
                vec![Action::WriteMetadata {
                    id,
                    metadata: Box::new(metadata),
                }]
            }
            Err(err) => {
                tracing::error!(%err, "asked to complete a checkpoint that is not fully acked");
                self.pending.insert(id, pending);
                Vec::new()
            }
        }
    }

    fn finish_abort(
        &mut self,
        pending: PendingCheckpoint,
        reason: CheckpointFailureReason,
    ) -> Vec<Action> {
        let id = pending.id();
        let savepoint = pending.kind().is_savepoint();
        let mut deletions: BTreeSet<String> = self
            .registry
            .unregister_checkpoint(id)
            .into_iter()
            .collect();
        let aborted = pending.abort(reason, |path| self.registry.is_referenced(path));
        // An aborted savepoint's folder is removed whole by the driver.
        if !savepoint {
            deletions.extend(aborted.files_to_delete);
        }
        self.after_abort(id, aborted.reason, deletions)
    }

    fn after_abort(
        &mut self,
        id: CheckpointId,
        reason: CheckpointFailureReason,
        deletions: BTreeSet<String>,
    ) -> Vec<Action> {
        tracing::info!(job = %self.job_id, checkpoint = %id, %reason, "aborted");
        self.recent.push(id);
        let mut actions = vec![Action::NotifyAborted {
            id,
            reason: reason.clone(),
        }];
        actions.extend(delete_action(deletions));
        if reason.counts_as_failure() {
            self.consecutive_failures += 1;
            if self.consecutive_failures > self.config.tolerable_failures {
                tracing::error!(
                    job = %self.job_id,
                    failures = self.consecutive_failures,
                    "too many consecutive checkpoint failures; failing the job"
                );
                actions.push(Action::FailJob {
                    consecutive_failures: self.consecutive_failures,
                    last: reason,
                });
                self.consecutive_failures = 0;
            }
        }
        actions
    }

    fn delete_unreferenced(&self, paths: Vec<String>) -> Option<Action> {
        // Only files of the job's own folder: a savepoint's late files are in its folder.
        let unreferenced: BTreeSet<String> = paths
            .into_iter()
            .filter(|p| p.starts_with("chk-") || p.starts_with("shared/"))
            .filter(|p| !self.registry.is_referenced(p))
            .collect();
        delete_action(unreferenced)
    }
}

/// The folders a task's ack may name, relative to the job's folder: the checkpoint's own
/// `chk-<id>/` and the job's `shared/` (a savepoint's files live in its own folder, whatever its
/// name, but never in another checkpoint's). `_metadata` and files directly in the job folder
/// are never a task's. `kind` is `None` when the checkpoint is no longer pending.
pub fn check_handle_paths(
    id: CheckpointId,
    kind: Option<CheckpointKind>,
    snapshot: &TaskStateSnapshot,
) -> Result<(), String> {
    let own = format!("chk-{}", id.get());
    for f in snapshot.files() {
        let path = f.path();
        let mut segments = path.split('/');
        let first = segments.next().unwrap_or_default();
        let last = path.rsplit('/').next().unwrap_or_default();
        let savepoint = kind.is_some_and(|k| k.is_savepoint());
        let allowed = path.contains('/')
            && last != "_metadata"
            && if savepoint {
                // In the savepoint's own folder, never a name of the job's folder.
                first != "shared" && !first.starts_with("chk-")
            } else {
                first == "shared" || first == own
            };
        if !allowed {
            return Err(format!(
                "the handle '{path}' of {id} is outside {own}/ and shared/ (or names _metadata)"
            ));
        }
    }
    Ok(())
}

fn delete_action(paths: BTreeSet<String>) -> Option<Action> {
    if paths.is_empty() {
        None
    } else {
        Some(Action::DeleteFiles {
            paths: paths.into_iter().collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::keys;
    use crate::handle::{FileHandle, OperatorSubtaskState};
    use crate::kind::SavepointFormat;
    use weir_types::{OperatorUid, SubtaskIndex, VertexId};

    fn task(s: u32) -> TaskId {
        TaskId::new(VertexId(1), SubtaskIndex(s))
    }

    fn config() -> CheckpointConfig {
        CheckpointConfig {
            interval_ms: 100,
            timeout_ms: 1_000,
            min_pause_ms: 0,
            max_concurrent: 2,
            tolerable_failures: 0,
            num_retained: 1,
            ..CheckpointConfig::default()
        }
    }

    fn coordinator(cfg: CheckpointConfig) -> Coordinator {
        Coordinator::new(JobId(7), 128, cfg, [task(0), task(1)]).unwrap()
    }

    fn snap(files: &[(&str, bool)]) -> TaskStateSnapshot {
        let mut s = TaskStateSnapshot::default();
        s.operators.insert(
            OperatorUid::new("op").unwrap(),
            OperatorSubtaskState {
                files: files
                    .iter()
                    .map(|(p, shared)| FileHandle::new(*p, 1, 0, *shared).unwrap())
                    .collect(),
                inline: None,
                finished: false,
            },
        );
        s
    }

    fn ack(c: &mut Coordinator, id: u64, t: u32, files: &[(&str, bool)]) -> AckOutcome {
        c.on_ack(
            0,
            CheckpointId(id),
            task(t),
            snap(files),
            TaskAckMetrics::default(),
        )
    }

    fn deleted(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .flat_map(|a| match a {
                Action::DeleteFiles { paths } => paths.clone(),
                _ => Vec::new(),
            })
            .collect()
    }

    #[test]
    fn a_coordinator_refuses_a_bad_config_naming_the_key() {
        let cfg = CheckpointConfig {
            max_concurrent: 0,
            ..config()
        };
        let err = Coordinator::new(JobId(1), 128, cfg, [task(0)]).unwrap_err();
        assert!(err.to_string().contains(keys::MAX_CONCURRENT), "{err}");
    }

    #[test]
    fn tasks_are_notified_only_after_the_metadata_is_confirmed() {
        let mut c = coordinator(config());
        let actions = c.trigger(0, CheckpointKind::Checkpoint).unwrap();
        assert!(matches!(actions[..], [Action::TriggerSources { .. }]));
        assert_eq!(
            ack(&mut c, 1, 0, &[("shared/a", true)]).result,
            AckResult::Success
        );
        let last = ack(&mut c, 1, 1, &[("shared/b", true)]);
        assert!(matches!(last.actions[..], [Action::WriteMetadata { .. }]));
        assert!(
            c.store().latest().is_none(),
            "not complete before the write"
        );
        let done = c.on_metadata_written(5, CheckpointId(1)).unwrap();
        assert_eq!(
            done[0],
            Action::NotifyComplete {
                id: CheckpointId(1)
            }
        );
        assert_eq!(c.store().latest().map(|c| c.id()), Some(CheckpointId(1)));
        assert_eq!(
            c.on_metadata_written(5, CheckpointId(1)),
            Err(CoordinatorError::UnexpectedMetadataOutcome {
                id: CheckpointId(1)
            })
        );
    }

    #[test]
    fn a_timed_out_checkpoint_is_aborted_and_its_uploads_deleted() {
        let mut c = coordinator(CheckpointConfig {
            tolerable_failures: 5,
            ..config()
        });
        c.trigger(0, CheckpointKind::Checkpoint).unwrap();
        let _ = ack(&mut c, 1, 0, &[("chk-1/a", false)]);
        let actions = c.on_tick(1_000);
        assert!(actions.contains(&Action::NotifyAborted {
            id: CheckpointId(1),
            reason: CheckpointFailureReason::Timeout { timeout_ms: 1_000 },
        }));
        assert_eq!(deleted(&actions), vec!["chk-1/a"]);
        assert_eq!(
            ack(&mut c, 1, 1, &[("chk-1/b", false)]).result,
            AckResult::Discarded
        );
        assert_eq!(c.consecutive_failures(), 1);
    }

    #[test]
    fn an_ack_naming_another_checkpoints_metadata_deletes_nothing_and_aborts_the_checkpoint() {
        let mut c = coordinator(CheckpointConfig {
            tolerable_failures: 5,
            ..config()
        });
        c.trigger(0, CheckpointKind::Checkpoint).unwrap();
        let _ = ack(&mut c, 1, 0, &[("shared/a", true)]);
        let last = ack(&mut c, 1, 1, &[("shared/b", true)]);
        assert!(matches!(last.actions[..], [Action::WriteMetadata { .. }]));
        c.on_metadata_written(5, CheckpointId(1)).unwrap();
        c.trigger(10, CheckpointKind::Checkpoint).unwrap();
        for forged in ["chk-1/_metadata", "chk-2/_metadata", "chk-1/x", "_owner"] {
            let out = ack(&mut c, 2, 0, &[(forged, false)]);
            assert_eq!(out.result, AckResult::Unknown, "{forged}");
            assert!(
                deleted(&out.actions).is_empty(),
                "{forged}: {:?}",
                out.actions
            );
        }
        // The late ack of a finished checkpoint is checked the same way.
        let late = ack(&mut c, 1, 0, &[("chk-1/_metadata", false)]);
        assert!(deleted(&late.actions).is_empty(), "{:?}", late.actions);
        assert_eq!(c.store().latest().map(|c| c.id()), Some(CheckpointId(1)));
    }

    #[test]
    fn an_ack_for_an_id_never_triggered_is_unknown_and_its_files_untouched() {
        let mut c = coordinator(config());
        let out = ack(&mut c, 42, 0, &[("chk-42/x", false)]);
        assert_eq!(out.result, AckResult::Unknown);
        assert!(out.actions.is_empty());
    }

    #[test]
    fn a_decline_beyond_the_tolerable_failures_fails_the_job() {
        let mut c = coordinator(config());
        c.trigger(0, CheckpointKind::Checkpoint).unwrap();
        let actions = c.on_decline(CheckpointId(1), task(0), "disk full".into());
        assert!(matches!(
            actions.last(),
            Some(Action::FailJob {
                consecutive_failures: 1,
                ..
            })
        ));
    }

    #[test]
    fn more_than_max_concurrent_triggers_are_refused() {
        let mut c = coordinator(config());
        c.trigger(0, CheckpointKind::Checkpoint).unwrap();
        c.trigger(0, CheckpointKind::Checkpoint).unwrap();
        assert_eq!(
            c.trigger(0, CheckpointKind::Checkpoint),
            Err(CheckpointFailureReason::TooManyConcurrent { max: 2 })
        );
        assert_eq!(c.next_checkpoint_id(), CheckpointId(3));
    }

    #[test]
    fn a_savepoint_does_not_wait_for_checkpoints_in_flight_but_for_another_savepoint() {
        let mut c = coordinator(config());
        c.trigger(0, CheckpointKind::Checkpoint).unwrap();
        c.trigger(0, CheckpointKind::Checkpoint).unwrap();
        let sp = CheckpointKind::Savepoint {
            format: SavepointFormat::Native,
        };
        assert!(
            c.trigger(0, sp).is_ok(),
            "a savepoint beyond max-concurrent"
        );
        assert_eq!(
            c.trigger(0, sp),
            Err(CheckpointFailureReason::SavepointInProgress {
                id: CheckpointId(3)
            })
        );
        assert_eq!(
            c.trigger(0, CheckpointKind::Checkpoint),
            Err(CheckpointFailureReason::TooManyConcurrent { max: 2 })
        );
    }

    #[test]
    fn the_min_pause_counts_from_the_last_completion() {
        let mut c = coordinator(CheckpointConfig {
            min_pause_ms: 50,
            ..config()
        });
        c.trigger(0, CheckpointKind::Checkpoint).unwrap();
        let _ = ack(&mut c, 1, 0, &[]);
        let _ = ack(&mut c, 1, 1, &[]);
        c.on_metadata_written(10, CheckpointId(1)).unwrap();
        assert_eq!(
            c.trigger(40, CheckpointKind::Checkpoint),
            Err(CheckpointFailureReason::MinPauseNotElapsed { remaining_ms: 20 })
        );
        let sp = CheckpointKind::Savepoint {
            format: SavepointFormat::Canonical,
        };
        assert!(c.trigger(40, sp).is_ok(), "savepoints ignore the min pause");
        assert!(c.trigger(60, CheckpointKind::Checkpoint).is_ok());
    }

    #[test]
    fn periodic_checkpoints_start_one_interval_after_the_first_tick() {
        let mut c = coordinator(config());
        assert!(c.on_tick(0).is_empty());
        assert!(c.on_tick(99).is_empty());
        assert!(matches!(
            c.on_tick(100)[..],
            [Action::TriggerSources {
                id: CheckpointId(1),
                ..
            }]
        ));
    }

    #[test]
    fn a_failover_leaves_a_checkpoint_whose_metadata_is_being_written() {
        let mut c = coordinator(config());
        c.trigger(0, CheckpointKind::Checkpoint).unwrap();
        c.trigger(1, CheckpointKind::Checkpoint).unwrap();
        let _ = ack(&mut c, 1, 0, &[]);
        let _ = ack(&mut c, 1, 1, &[]);
        let actions = c.on_failover();
        assert_eq!(
            actions,
            vec![Action::NotifyAborted {
                id: CheckpointId(2),
                reason: CheckpointFailureReason::JobFailover
            }]
        );
        assert_eq!(
            c.metadata_writes_in_flight().collect::<Vec<_>>(),
            [CheckpointId(1)]
        );
        assert_eq!(c.consecutive_failures(), 0);
        c.on_metadata_written(2, CheckpointId(1)).unwrap();
    }

    #[test]
    fn an_incremental_base_subsumed_while_a_checkpoint_runs_is_kept_until_it_finishes() {
        let mut c = coordinator(config());
        // Checkpoint 1 completes with shared/a.
        c.trigger(0, CheckpointKind::Checkpoint).unwrap();
        let _ = ack(&mut c, 1, 0, &[("shared/a", true)]);
        let _ = ack(&mut c, 1, 1, &[]);
        c.on_metadata_written(1, CheckpointId(1)).unwrap();
        // 2 and 3 start with base 1; 3 reuses shared/a, 2 uploads shared/b.
        c.trigger(2, CheckpointKind::Checkpoint).unwrap();
        c.trigger(3, CheckpointKind::Checkpoint).unwrap();
        let _ = ack(&mut c, 3, 0, &[("shared/a", true)]);
        let _ = ack(&mut c, 2, 0, &[("shared/b", true)]);
        let _ = ack(&mut c, 2, 1, &[]);
        let actions = c.on_metadata_written(4, CheckpointId(2)).unwrap();
        // 1 is subsumed (its _metadata goes first), but shared/a is still held by 3.
        assert_eq!(deleted(&actions), vec!["chk-1/_metadata"], "{actions:?}");
        let _ = ack(&mut c, 3, 1, &[]);
        let actions = c.on_metadata_written(5, CheckpointId(3)).unwrap();
        assert_eq!(deleted(&actions), vec!["chk-2/_metadata", "shared/b"]);
        assert!(c.registry().is_referenced("shared/a"));
    }

    #[test]
    fn restoring_moves_the_id_counter_past_everything_seen() {
        let mut c = coordinator(config());
        c.trigger(0, CheckpointKind::Checkpoint).unwrap();
        let _ = ack(&mut c, 1, 0, &[("shared/a", true)]);
        let out = ack(&mut c, 1, 1, &[]);
        let Some(Action::WriteMetadata { metadata, .. }) = out.actions.first() else {
            panic!("expected a metadata write: {out:?}");
        };
        let mut fresh = coordinator(config());
        let restored = CompletedCheckpoint::from_metadata((**metadata).clone());
        fresh.restore([restored], Some(CheckpointId(9))).unwrap();
        assert_eq!(fresh.next_checkpoint_id(), CheckpointId(10));
        assert_eq!(
            fresh.store().latest().map(|c| c.id()),
            Some(CheckpointId(1))
        );
        assert_eq!(
            fresh.registry().reusable_base().map(|(id, _)| id),
            Some(CheckpointId(1))
        );
        assert_eq!(fresh.restore([], None), Err(CoordinatorError::NotFresh));
    }
}
