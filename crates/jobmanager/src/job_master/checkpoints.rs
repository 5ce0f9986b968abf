//! The job's checkpointing across attempts: the coordinator and its storage, the folder lease
//! and its keeper, the per-attempt [`Driver`] state, the restore spec of a deployment, and
//! what the JobMaster does with checkpoint messages.

use super::*;

/// The checkpointing machinery of one job, alive across its attempts.
pub(crate) struct Checkpointing {
    pub coordinator: Coordinator,
    pub store: Store,
    pub paths: CheckpointPaths,
    pub history: Vec<CheckpointRecord>,
    pub deletions: Vec<tokio::task::JoinHandle<()>>,
    /// The job's checkpoint folder lease, until the keeper takes it.
    pub lease: Option<JobLease>,
    /// Renews the lease off this thread while the job runs; releases it at the end.
    pub lease_keeper: Option<LeaseKeeper>,
    /// Where `_metadata` write outcomes go: the JobMaster's inbox (set when it starts).
    pub metadata_sink: MetadataSink,
    /// Checked before every `_metadata` write: refuses once this JobManager no longer leads.
    pub fence: weir_coordination::driver::Fence,
    /// How long the job folder's lease lives without renewal.
    pub lease_duration: Duration,
    /// Checkpoints whose `_metadata` write is in flight.
    pub writing: BTreeSet<CheckpointId>,
    /// Where each savepoint in flight is written.
    pub savepoints: BTreeMap<CheckpointId, weir_coordination::driver::SavepointTarget>,
    /// The savepoint the job stops with, while it is in flight.
    pub stop: Option<CheckpointId>,
    /// The final snapshot's kind: the savepoint of `weir stop --drain` while one is asked for.
    pub final_kind: weir_checkpoint::CheckpointKind,
    /// `execution.checkpointing.savepoint-dir`.
    pub savepoint_dir: Option<String>,
    /// How savepoint targets on `s3://` are reached.
    pub s3: weir_storage::S3Options,
    /// With high availability: where the checkpoint counter and the latest completed
    /// checkpoint go after each completion (the HA folder's `jobs/<id>.checkpoints`).
    pub pointer: Option<PointerSink>,
    /// The last `(next id, latest completed)` handed to `pointer`.
    pub pointer_sent: Option<(u64, Option<u64>)>,
}

/// Takes `(next checkpoint id, latest completed checkpoint)` to record for the next leader.
pub(crate) type PointerSink = Arc<dyn Fn(u64, Option<u64>) + Send + Sync>;

impl Checkpointing {
    /// Hands the counter and the latest completed checkpoint to the pointer sink when they
    /// changed since the last time.
    pub(crate) fn record_pointer(&mut self) {
        let Some(sink) = &self.pointer else {
            return;
        };
        let now = (
            self.coordinator.next_checkpoint_id().0,
            self.coordinator.store().latest().map(|c| c.id().0),
        );
        if self.pointer_sent != Some(now) {
            sink(now.0, now.1);
            self.pointer_sent = Some(now);
        }
    }
}

impl Checkpointing {
    /// A sink for `_metadata` write outcomes that drops them (replaced by the JobMaster's).
    pub(crate) fn no_sink() -> MetadataSink {
        Arc::new(|m: MetadataWritten| {
            tracing::warn!(checkpoint = %m.id, "a _metadata outcome arrived before its JobMaster started");
        })
    }
}

/// Renews a [`JobLease`] on the JobManager's runtime every third of its duration; tells the
/// JobMaster ([`JobMasterMsg::LeaseLost`]) when it was taken over or could not be renewed
/// within its duration.
pub(crate) struct LeaseKeeper {
    pub(super) stop: tokio::sync::oneshot::Sender<()>,
    pub(super) task: tokio::task::JoinHandle<()>,
}

impl LeaseKeeper {
    pub(super) fn spawn(
        runtime: &tokio::runtime::Handle,
        mut lease: JobLease,
        duration: Duration,
        to_master: Sender<JobMasterMsg>,
    ) -> Self {
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let task = runtime.spawn(async move {
            let mut last_ok = Instant::now();
            loop {
                tokio::select! {
                    _ = &mut stopped => {
                        if let Err(e) = lease.release().await {
                            tracing::warn!(error = %e, "the checkpoint folder lease was not released");
                        }
                        return;
                    }
                    _ = tokio::time::sleep(duration / 3) => {}
                }
                match lease.renew(now_ms()).await {
                    Ok(()) => last_ok = Instant::now(),
                    Err(e @ LeaseError::Lost { .. }) => {
                        tracing::error!(error = %e, "checkpoint folder lease lost");
                        let _ = to_master.send(JobMasterMsg::LeaseLost(e.to_string()));
                        return;
                    }
                    Err(e) if last_ok.elapsed() >= duration => {
                        tracing::error!(error = %e, "checkpoint folder lease not renewed in time");
                        let _ = to_master.send(JobMasterMsg::LeaseLost(format!(
                            "the checkpoint folder lease could not be renewed for {duration:?}: {e}"
                        )));
                        return;
                    }
                    Err(e) => tracing::warn!(error = %e, "lease renewal failed; retrying"),
                }
            }
        });
        Self { stop, task }
    }

    /// Releases the lease (bounded wait).
    pub(super) fn release(self, runtime: &tokio::runtime::Handle) {
        let _ = self.stop.send(());
        let task = self.task;
        let _ =
            runtime.block_on(async { tokio::time::timeout(Duration::from_secs(5), task).await });
    }
}

/// The [`Driver`]'s per-attempt state, kept between calls.
pub(super) struct AttemptDriver {
    pub(super) tasks: BTreeSet<TaskId>,
    pub(super) sources: BTreeSet<TaskId>,
    pub(super) finished: BTreeSet<TaskId>,
    pub(super) barriers: BTreeMap<CheckpointId, Barrier>,
    pub(super) final_from: Option<CheckpointId>,
    pub(super) done: bool,
    pub(super) failed: Option<String>,
}

/// Runs `f` on a [`Driver`] assembled from the job's and the attempt's state.
pub(super) fn with_driver<R>(
    cp: &mut Checkpointing,
    runtime: &tokio::runtime::Handle,
    gateway: &ClusterGateway,
    a: &mut AttemptDriver,
    f: impl FnOnce(&mut Driver<'_, ClusterGateway>) -> R,
) -> R {
    let mut d = Driver {
        coordinator: &mut cp.coordinator,
        store: &cp.store,
        paths: &cp.paths,
        runtime,
        gateway: gateway.clone(),
        tasks: std::mem::take(&mut a.tasks),
        sources: std::mem::take(&mut a.sources),
        history: &mut cp.history,
        deletions: &mut cp.deletions,
        attempt: gateway.attempt.get(),
        finished: std::mem::take(&mut a.finished),
        barriers: std::mem::take(&mut a.barriers),
        final_from: a.final_from,
        done: a.done,
        failed: a.failed.take(),
        metadata_sink: &cp.metadata_sink,
        fence: &cp.fence,
        writing: &mut cp.writing,
        savepoints: &cp.savepoints,
        stop: cp.stop,
        final_kind: cp.final_kind,
    };
    let r = f(&mut d);
    a.tasks = d.tasks;
    a.sources = d.sources;
    a.finished = d.finished;
    a.barriers = d.barriers;
    a.final_from = d.final_from;
    a.done = d.done;
    a.failed = d.failed;
    r
}

/// `restore_json` of a `DeployTask`: a [`TaskRestoreSpec`] as JSON,
/// `{"checkpoint": n, "operators": {uid: state}, "location": url?}`, for the operators of
/// `vertex`'s chain and subtask `subtask`. A chain without state gets an empty map: the task
/// still learns which checkpoint it restores. `location` is set when the handles are relative
/// to a folder other than the job's checkpoint folder (a savepoint's).
pub(crate) fn restore_json(
    plan: &Plan,
    vertex: VertexId,
    subtask: SubtaskIndex,
    point: &RestorePoint,
) -> Result<Vec<u8>, serde_json::Error> {
    let v = &plan.job.vertices[vertex.0 as usize];
    let metadata = &point.metadata;
    let mut operators = BTreeMap::new();
    let mut rescaled = BTreeMap::new();
    for n in &v.nodes {
        let uid = &plan.uids[n.0 as usize];
        let Some(op) = metadata.operators.get(uid) else {
            continue;
        };
        if op.parallelism == v.parallelism {
            if let Some(state) = op.subtasks.get(&subtask) {
                let mut state = state.clone();
                // A job started from a savepoint is a new run: an operator that had finished
                // (a drained `weir stop`) runs its input — and its end — again.
                state.finished &= point.location.is_none();
                operators.insert(uid.clone(), state);
            }
        } else {
            rescaled.insert(
                uid.clone(),
                weir_checkpoint::RescaledOperator {
                    old_parallelism: op.parallelism,
                    subtasks: op.subtasks.clone(),
                },
            );
        }
    }
    serde_json::to_vec(&TaskRestoreSpec {
        checkpoint: metadata.checkpoint_id,
        operators,
        location: point.location.clone(),
        rescaled,
    })
}

/// Performs what the coordinator asks outside a live attempt: deletions, and aborted
/// checkpoints marked in the history (no task is left to tell).
pub(super) fn apply_outside(
    cp: &mut Checkpointing,
    runtime: &tokio::runtime::Handle,
    actions: Vec<Action>,
) {
    let mut deletions = Vec::new();
    for action in actions {
        match action {
            Action::DeleteFiles { paths } => deletions.extend(paths),
            Action::NotifyAborted { id, reason } => {
                if let Some(t) = cp.savepoints.get(&id) {
                    cp.deletions
                        .push(weir_coordination::driver::spawn_folder_deletion(runtime, t));
                }
                let now = now_ms();
                if let Some(r) = cp.history.iter_mut().rev().find(|r| r.id == id) {
                    if r.status == CheckpointStatus::InProgress {
                        r.status = CheckpointStatus::Aborted(reason.to_string());
                        r.duration_ms = now.saturating_sub(r.trigger_ms);
                    }
                }
                tracing::info!(checkpoint = %id, %reason, "checkpoint aborted");
            }
            Action::NotifyComplete { id } => {
                // Its attempt ended while `_metadata` was written: durable all the same, and
                // restoring it commits what its sinks staged.
                let now = now_ms();
                if let Some(r) = cp.history.iter_mut().rev().find(|r| r.id == id) {
                    r.status = CheckpointStatus::Completed;
                    r.duration_ms = now.saturating_sub(r.trigger_ms);
                }
                tracing::info!(checkpoint = %id, "checkpoint complete (after its attempt ended)");
            }
            other => {
                tracing::debug!(action = ?other, "coordinator action outside an attempt ignored")
            }
        }
    }
    if !deletions.is_empty() {
        cp.deletions
            .push(spawn_deletions(runtime, &cp.store, &cp.paths, deletions));
    }
}

impl JobMaster {
    /// A `_metadata` write settled: in an attempt the driver completes (and notifies) or
    /// aborts the checkpoint; between attempts the coordinator does, with no task to tell.
    pub(super) fn on_metadata_written(
        &mut self,
        m: MetadataWritten,
        drv: &mut Option<AttemptDriver>,
    ) {
        let Some(cp) = self.cp.as_mut() else {
            return;
        };
        match (drv.as_mut(), self.gateway.as_ref()) {
            (Some(d), Some(g)) => {
                with_driver(cp, &self.runtime, g, d, |d| d.on_metadata_written(m));
            }
            _ => {
                cp.writing.remove(&m.id);
                match settle_metadata(&mut cp.coordinator, m) {
                    Ok(actions) => apply_outside(cp, &self.runtime, actions),
                    Err(e) => {
                        tracing::error!(error = %e, "a _metadata outcome the coordinator did not expect")
                    }
                }
            }
        }
        if let Some(cp) = self.cp.as_mut() {
            cp.record_pointer();
        }
        self.sync_history();
    }

    /// Before the next attempt picks its checkpoint: waits until every `_metadata` write in
    /// flight settled (serving the inbox meanwhile), so a checkpoint completing late can never
    /// be newer than the one restored. A stop request ends the wait; a store that does not
    /// answer within [`METADATA_SETTLE_TIMEOUT`] fails the job, naming the checkpoints.
    pub(super) fn settle_metadata_writes(&mut self) -> Result<(), End> {
        let deadline = Instant::now() + METADATA_SETTLE_TIMEOUT;
        loop {
            let pending: Vec<CheckpointId> = match &self.cp {
                Some(cp) if !cp.writing.is_empty() => cp.writing.iter().copied().collect(),
                _ => return Ok(()),
            };
            if let Some(stop) = self.stop {
                return Err(End::Canceled(stop));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(End::Failed(format!(
                    "the checkpoint store did not settle the _metadata of {} within {:?}; no \
                     checkpoint can safely be chosen to restore",
                    pending
                        .iter()
                        .map(|id| id.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    METADATA_SETTLE_TIMEOUT
                )));
            }
            if let Some(msg) = self.next_message((deadline - now).min(TICK)) {
                self.handle(msg, &mut None, Mode::Between);
            }
            self.housekeeping();
        }
    }

    pub(super) fn on_ack(
        &mut self,
        from: &TaskManagerId,
        ack: CheckpointAck,
        drv: &mut Option<AttemptDriver>,
    ) {
        let Some(key) = ack.task else {
            tracing::warn!(taskmanager = %from, "checkpoint ack without a task key dropped");
            return;
        };
        if !self.sent_by_host(from, &key, true, "CheckpointAck") {
            return;
        }
        let task = TaskId::new(key.vertex_id(), key.subtask_index());
        let id = CheckpointId(ack.checkpoint_id);
        if self.cp.is_none() {
            tracing::warn!(taskmanager = %from, checkpoint = %id, "checkpoint ack for a job without checkpointing dropped");
            return;
        }
        let event = match serde_json::from_slice::<TaskStateSnapshot>(&ack.snapshot_json) {
            Ok(snapshot) => {
                let m = ack.metrics.unwrap_or_default();
                TaskEvent::Ack {
                    task,
                    id,
                    snapshot,
                    metrics: TaskAckMetrics {
                        sync_ms: m.sync_ms,
                        async_ms: m.async_ms,
                        alignment_ms: m.alignment_ms,
                        bytes_uploaded: m.bytes_uploaded,
                        full_size: m.full_size,
                    },
                }
            }
            Err(e) => {
                tracing::error!(taskmanager = %from, %task, checkpoint = %id, error = %e, "unreadable snapshot_json; counted as a decline");
                TaskEvent::Decline {
                    task,
                    id,
                    reason: format!(
                        "{task} acknowledged {id} with an unreadable snapshot_json: {e}"
                    ),
                }
            }
        };
        self.checkpoint_event(event, drv);
    }

    /// Gives a task's checkpoint event to the driver (in an attempt) or straight to the
    /// coordinator (between attempts: only classification and cleanup are left to do).
    pub(super) fn checkpoint_event(&mut self, event: TaskEvent, drv: &mut Option<AttemptDriver>) {
        let Some(cp) = self.cp.as_mut() else {
            return;
        };
        match (drv.as_mut(), self.gateway.as_ref()) {
            (Some(d), Some(g)) => {
                with_driver(cp, &self.runtime, g, d, |d| d.on_event(event));
            }
            _ => {
                let actions = match event {
                    TaskEvent::Ack {
                        task,
                        id,
                        snapshot,
                        metrics,
                    } => {
                        cp.coordinator
                            .on_ack(now_ms(), id, task, snapshot, metrics)
                            .actions
                    }
                    TaskEvent::Decline { task, id, reason } => {
                        cp.coordinator.on_decline(id, task, reason)
                    }
                    TaskEvent::Finished { .. } => Vec::new(),
                };
                apply_outside(cp, &self.runtime, actions);
            }
        }
        self.sync_history();
    }

    /// Publishes new and changed checkpoint records, tells the attempt's TaskManagers about
    /// aborted checkpoints, and trims the history.
    pub(super) fn sync_history(&mut self) {
        let Some(cp) = self.cp.as_mut() else {
            return;
        };
        self.ever_completed |= cp.coordinator.store().latest().is_some();
        let from = self.history_cursor.min(cp.history.len());
        if let Some(g) = self.gateway.as_ref() {
            for r in &cp.history[from..] {
                if let CheckpointStatus::Aborted(reason) = &r.status {
                    if r.attempt == g.attempt.get() && self.aborted_notified.insert(r.id) {
                        g.aborted(r.id, reason);
                    }
                }
            }
        }
        let mut cursor = from;
        while cursor < cp.history.len() && cp.history[cursor].status != CheckpointStatus::InProgress
        {
            cursor += 1;
        }
        let mut status = lock(&self.status);
        status.checkpoints.truncate(from);
        status.checkpoints.extend_from_slice(&cp.history[from..]);
        let latest = cp.coordinator.store().latest();
        if latest.map(|c| c.id()) != status.latest_completed {
            status.details.operator_state_bytes = latest
                .map(|c| {
                    c.metadata()
                        .operators
                        .iter()
                        .map(|(uid, op)| {
                            let bytes = op
                                .subtasks
                                .values()
                                .map(|s| {
                                    s.files.iter().map(|f| f.size()).sum::<u64>()
                                        + s.inline.as_ref().map_or(0, |i| i.len() as u64)
                                })
                                .sum();
                            (uid.to_string(), bytes)
                        })
                        .collect()
                })
                .unwrap_or_default();
        }
        status.latest_completed = latest.map(|c| c.id());
        if cp.history.len() > MAX_HISTORY + MAX_HISTORY / 10 {
            let n = (cp.history.len() - MAX_HISTORY).min(cursor);
            cp.history.drain(..n);
            status.checkpoints.drain(..n);
            cursor -= n;
        }
        drop(status);
        if let Some(first_open) = cp.history.get(cursor) {
            let floor = first_open.id;
            self.aborted_notified.retain(|id| *id >= floor);
        } else {
            self.aborted_notified.clear();
        }
        self.history_cursor = cursor;
        self.settle_savepoints();
        self.settle_claim();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_checkpoint::{CheckpointKind, FileHandle, OperatorState, OperatorSubtaskState};
    use weir_types::{JobId, OperatorUid};

    #[test]
    fn restore_json_holds_only_the_chain_operators_of_the_subtask() {
        let plan = crate::recovery::tests::two_vertex_plan(2);
        let count = OperatorUid::new("count").unwrap();
        let source = OperatorUid::new("source").unwrap();
        let state = |n: u8| OperatorSubtaskState {
            files: vec![FileHandle::new(format!("chk-3/f{n}"), 10, 1, false).unwrap()],
            inline: None,
            finished: false,
        };
        let metadata = CheckpointMetadata {
            job_id: JobId(1),
            checkpoint_id: CheckpointId(3),
            kind: CheckpointKind::Checkpoint,
            timestamp: 0,
            max_parallelism: plan.job.max_parallelism,
            key_group_hash_version: 1,
            operators: BTreeMap::from([
                (
                    count.clone(),
                    OperatorState {
                        vertex: VertexId(1),
                        parallelism: 2,
                        subtasks: BTreeMap::from([
                            (SubtaskIndex(0), state(0)),
                            (SubtaskIndex(1), state(1)),
                        ]),
                    },
                ),
                (
                    source,
                    OperatorState {
                        vertex: VertexId(0),
                        parallelism: 2,
                        subtasks: BTreeMap::from([(SubtaskIndex(1), state(9))]),
                    },
                ),
            ]),
            self_contained: true,
            job_name: None,
            leader_epoch: None,
        };
        let point = RestorePoint {
            metadata,
            location: None,
            claimed: false,
        };
        let bytes = restore_json(&plan, VertexId(1), SubtaskIndex(1), &point).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["checkpoint"], 3);
        let ops = v["operators"].as_object().unwrap();
        assert_eq!(ops.len(), 1);
        let decoded: TaskRestoreSpec = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(decoded.checkpoint, CheckpointId(3));
        assert_eq!(decoded.operators, BTreeMap::from([(count, state(1))]));
        // A stateless subtask still learns which checkpoint it restores.
        let bytes = restore_json(&plan, VertexId(0), SubtaskIndex(0), &point).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["checkpoint"], 3);
        assert!(v["operators"].as_object().unwrap().is_empty());
    }
}
