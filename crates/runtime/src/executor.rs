//! The in-process executor behind `weir local`: plans a [`JobDefinition`] and runs every
//! subtask on its own thread.

use crate::api::NodeRuntime;
use crate::function::SourceContext;
use crate::link::AnyBox;
use crate::metrics::JobMetrics;
use crate::operators::OpIdent;
use crate::snapshot::{Control, TaskCheckpointing, TaskEvent, TaskRestore, Transfer};
use crate::{JobDefinition, JobError, TaskError};
use crossbeam_channel::{Receiver, Sender};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use weir_checkpoint::{Action, CheckpointConfig, CheckpointMetadata, Coordinator, TaskId};
use weir_coordination::driver::{now_ms, spawn_deletions, CheckpointRecord, Driver, TaskGateway};
use weir_coordination::restart::{RestartDecision, RestartStrategy, RestartTracker};
use weir_graph::{NodeKind, ParallelismSettings, Partitioning};
use weir_state::{BackendScope, StateBackendFactory};
use weir_state_transfer::Uploader;
use weir_storage::{CheckpointPaths, Store};
use weir_types::{CheckpointId, JobId, KeyGroupRange, NodeId, OperatorUid, SubtaskIndex, VertexId};

/// Tunables of the data plane.
#[derive(Clone, Debug)]
pub struct RuntimeOptions {
    /// Records per batch between tasks (`taskmanager.network.batch-size`).
    pub batch_size: usize,
    /// Batches a channel holds before its producer blocks
    /// (`taskmanager.network.channel-capacity`).
    pub channel_capacity: usize,
    /// Longest time a record waits in an output buffer (`execution.buffer-timeout.interval`).
    pub buffer_timeout: Duration,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        Self {
            batch_size: 1024,
            channel_capacity: 8,
            buffer_timeout: Duration::from_millis(100),
        }
    }
}

pub use weir_graph::Plan;

impl JobDefinition {
    /// Resolves the job's graph layers; uid and parallelism errors name the operator.
    pub fn plan(&self, settings: ParallelismSettings) -> Result<Plan, weir_graph::GraphError> {
        Plan::resolve(self.graph.clone(), settings)
    }
}

/// What a finished job reports.
#[derive(Clone, Debug)]
pub struct JobReport {
    /// Wall time from the first task start to the last task end.
    pub duration: Duration,
    /// Records emitted by the sources.
    pub source_records: u64,
    /// Records written by the sinks.
    pub sink_records: u64,
    /// Keyed state at end of input, in bytes, over all keyed subtasks.
    pub state_bytes: u64,
    /// Number of tasks (subtasks of all vertices) that ran.
    pub tasks: usize,
}

/// What one subtask's operators are built with.
pub(crate) struct SubtaskCtx {
    pub uid: OperatorUid,
    pub subtask: SubtaskIndex,
    pub parallelism: u32,
    pub max_parallelism: u32,
    pub key_groups: KeyGroupRange,
    pub state_backend: Arc<dyn StateBackendFactory>,
    pub keyed_subtasks_in_process: u32,
    pub metrics: Arc<JobMetrics>,
    pub cancelled: Arc<AtomicBool>,
    pub options: RuntimeOptions,
    pub attempt: u32,
    pub checkpointing: Option<Arc<TaskCheckpointing>>,
    pub restore: Option<Arc<TaskRestore>>,
}

impl SubtaskCtx {
    pub(crate) fn ident(&self) -> OpIdent {
        OpIdent {
            uid: self.uid.to_string(),
            subtask: self.subtask,
            parallelism: self.parallelism,
        }
    }

    pub(crate) fn source_context(&self) -> SourceContext {
        SourceContext {
            uid: self.uid.clone(),
            subtask: self.subtask,
            parallelism: self.parallelism,
            cancelled: self.cancelled.clone(),
            attempt: self.attempt,
            checkpointing: self.checkpointing.is_some(),
        }
    }

    pub(crate) fn backend_scope(&self) -> BackendScope {
        BackendScope {
            operator_uid: self.uid.clone(),
            subtask: self.subtask,
            parallelism: self.parallelism,
            max_parallelism: self.max_parallelism,
            key_group_range: self.key_groups,
            keyed_subtasks_in_process: self.keyed_subtasks_in_process,
        }
    }
}

/// Checkpointing for a local job: where checkpoints go, how often, and how to restart.
pub struct CheckpointSettings {
    /// Interval, timeout, pauses, retention, mode.
    pub config: CheckpointConfig,
    /// The checkpoint root (`state.checkpoints.dir`).
    pub store: Store,
    /// The job's id: its checkpoints live under `<root>/<job-id>/`.
    pub job_id: JobId,
    /// What to do when a task fails.
    pub restart: RestartStrategy,
    /// Resume: restore the latest intact checkpoint that `job_id` already has in storage.
    pub resume: bool,
    /// Local scratch space (restore downloads).
    pub local_dir: PathBuf,
}

/// What a checkpointed job did besides its records.
#[derive(Clone, Debug, Default)]
pub struct CheckpointReport {
    /// Every checkpoint triggered, in order.
    pub history: Vec<CheckpointRecord>,
    /// Restarts after task failures.
    pub restarts: u32,
    /// The checkpoint the job started from when resuming, or the last restore.
    pub restored_from: Option<CheckpointId>,
    /// Every synchronous snapshot pause of every task, in microseconds.
    pub sync_pauses_us: Vec<u64>,
    /// The retained completed checkpoints at the end, oldest first.
    pub retained: Vec<CheckpointId>,
}

/// Runs jobs inside this process, one thread per subtask.
pub struct LocalExecutor {
    options: RuntimeOptions,
    state_backend: Arc<dyn StateBackendFactory>,
    metrics: Arc<JobMetrics>,
    cancelled: Arc<AtomicBool>,
    checkpointing: Option<CheckpointSettings>,
    history: Arc<Mutex<CheckpointReport>>,
}

pub(crate) struct TaskSpec {
    pub(crate) name: String,
    pub(crate) vertex: VertexId,
    pub(crate) subtask: SubtaskIndex,
    pub(crate) key_groups: KeyGroupRange,
    /// Senders of this subtask per outgoing job edge index.
    pub(crate) senders: HashMap<usize, AnyBox>,
    /// Receivers of this subtask, over all incoming job edges.
    pub(crate) receivers: Vec<AnyBox>,
    pub(crate) checkpointing: Option<Arc<TaskCheckpointing>>,
    pub(crate) restore: Option<Arc<TaskRestore>>,
    /// Called once the chain is assembled (state restored), before the first record.
    pub(crate) on_running: Option<Box<dyn FnOnce() + Send>>,
}

/// Why one attempt of a job ended without finishing.
enum AttemptError {
    Task(TaskError),
    Thread(JobError),
    Checkpoints(String),
}

/// The checkpointing machinery shared by every attempt of one job.
struct JobCheckpointing<'a> {
    settings: &'a CheckpointSettings,
    coordinator: Coordinator,
    paths: CheckpointPaths,
    transfer: Arc<Transfer>,
    deletions: Vec<tokio::task::JoinHandle<()>>,
    sync_pauses: Arc<Mutex<Vec<u64>>>,
    /// Acks, declines and finishes of every attempt: late acks of an earlier attempt are
    /// still classified (discarded) so their files are deleted.
    events: (Sender<TaskEvent>, Receiver<TaskEvent>),
    in_flight: Arc<AtomicUsize>,
}

impl LocalExecutor {
    /// An executor whose keyed operators keep state in backends from `state_backend`.
    pub fn new(options: RuntimeOptions, state_backend: Arc<dyn StateBackendFactory>) -> Self {
        Self {
            options,
            state_backend,
            metrics: Arc::new(JobMetrics::default()),
            cancelled: Arc::new(AtomicBool::new(false)),
            checkpointing: None,
            history: Arc::new(Mutex::new(CheckpointReport::default())),
        }
    }

    /// Takes checkpoints as `settings` say, and restarts failed jobs from them.
    pub fn with_checkpointing(mut self, settings: CheckpointSettings) -> Self {
        self.checkpointing = Some(settings);
        self
    }

    /// The job's live counters (readable while it runs, e.g. by a progress reporter).
    pub fn metrics(&self) -> Arc<JobMetrics> {
        self.metrics.clone()
    }

    /// The checkpoint history so far (readable while the job runs and after it ended).
    pub fn checkpoint_report(&self) -> CheckpointReport {
        self.history
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// A flag that cancels the running job when set (Ctrl-C).
    pub fn cancel_flag(&self) -> Arc<AtomicBool> {
        self.cancelled.clone()
    }

    /// Runs `job` as planned until every task has finished. On failure, returns the root
    /// cause: the first error that is not a consequence of another task's failure. With
    /// checkpointing, a failed attempt is restarted from the latest completed checkpoint as
    /// the restart strategy allows.
    pub fn execute(&self, job: &JobDefinition, plan: &Plan) -> Result<JobReport, JobError> {
        let start = Instant::now();
        let tasks = plan.execution.subtasks.len();
        match &self.checkpointing {
            None => match self.run_attempt(job, plan, 0, None, None) {
                Ok(()) => {}
                Err(AttemptError::Task(e)) => return Err(e.into()),
                Err(AttemptError::Thread(e)) => return Err(e),
                Err(AttemptError::Checkpoints(detail)) => {
                    return Err(JobError::Checkpointing { detail })
                }
            },
            Some(settings) => self.execute_checkpointed(job, plan, settings)?,
        }
        Ok(JobReport {
            duration: start.elapsed(),
            source_records: JobMetrics::get(&self.metrics.source_records),
            sink_records: JobMetrics::get(&self.metrics.sink_records),
            state_bytes: JobMetrics::get(&self.metrics.state_bytes),
            tasks,
        })
    }

    fn execute_checkpointed(
        &self,
        job: &JobDefinition,
        plan: &Plan,
        settings: &CheckpointSettings,
    ) -> Result<(), JobError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("weir-upload")
            .enable_all()
            .build()
            .map_err(|e| JobError::Checkpointing {
                detail: format!("cannot start the upload runtime: {e}"),
            })?;
        let task_ids = plan
            .execution
            .subtasks
            .iter()
            .map(|s| TaskId::new(s.vertex, s.subtask));
        let coordinator = Coordinator::new(
            settings.job_id,
            plan.job.max_parallelism,
            settings.config,
            task_ids,
        )
        .map_err(|e| JobError::Checkpointing {
            detail: e.to_string(),
        })?;
        let paths = CheckpointPaths::new(settings.job_id);
        let mut cp = JobCheckpointing {
            settings,
            coordinator,
            transfer: Arc::new(Transfer {
                uploader: Uploader::new(settings.store.clone(), paths.clone()),
                runtime: runtime.handle().clone(),
            }),
            paths,
            deletions: Vec::new(),
            sync_pauses: Arc::new(Mutex::new(Vec::new())),
            events: crossbeam_channel::unbounded(),
            in_flight: Arc::new(AtomicUsize::new(0)),
        };
        if settings.resume {
            let found = runtime.block_on(weir_coordination::resume::load_completed(
                &settings.store,
                &cp.paths,
            ));
            let (completed, highest) =
                found.map_err(|detail| JobError::Checkpointing { detail })?;
            if completed.is_empty() {
                return Err(JobError::Restore {
                    detail: format!(
                        "job {} has no intact completed checkpoint in {} to resume from",
                        settings.job_id, settings.store
                    ),
                });
            }
            let actions =
                cp.coordinator
                    .restore(completed, highest)
                    .map_err(|e| JobError::Restore {
                        detail: e.to_string(),
                    })?;
            perform_deletions(&mut cp, actions);
        }
        let result = self.attempts(job, plan, &mut cp);
        let shutdown = cp.coordinator.shutdown();
        perform_deletions(&mut cp, shutdown);
        // Uploads of the last attempt still running (a failed or cancelled job): wait for
        // them (bounded), then let the coordinator discard their acks and delete the files.
        let until = Instant::now() + Duration::from_secs(30);
        while cp.in_flight.load(Ordering::SeqCst) > 0 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        while let Ok(event) = cp.events.1.try_recv() {
            if let TaskEvent::Ack {
                task,
                id,
                snapshot,
                metrics,
            } = event
            {
                let outcome = cp.coordinator.on_ack(now_ms(), id, task, snapshot, metrics);
                perform_deletions(&mut cp, outcome.actions);
            }
        }
        for d in cp.deletions.drain(..) {
            let _ = runtime.block_on(d);
        }
        {
            let mut report = self.history.lock().unwrap_or_else(PoisonError::into_inner);
            report.sync_pauses_us = cp
                .sync_pauses
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            report.retained = cp
                .coordinator
                .store()
                .all()
                .iter()
                .map(|c| c.id())
                .collect();
        }
        runtime.shutdown_timeout(Duration::from_secs(5));
        result
    }

    fn attempts(
        &self,
        job: &JobDefinition,
        plan: &Plan,
        cp: &mut JobCheckpointing<'_>,
    ) -> Result<(), JobError> {
        let mut tracker = RestartTracker::new(cp.settings.restart);
        let mut ever_completed = cp.coordinator.store().latest().is_some();
        for attempt in 0u32.. {
            let restore = cp
                .coordinator
                .store()
                .latest()
                .map(|c| c.metadata().clone());
            if let Some(m) = &restore {
                weir_coordination::resume::check_compatible(m, plan)
                    .map_err(|detail| JobError::Restore { detail })?;
                self.history
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .restored_from = Some(m.checkpoint_id);
                tracing::info!(attempt, checkpoint = %m.checkpoint_id, "restoring");
            }
            let result = self.run_attempt(job, plan, attempt, Some(cp), restore.as_ref());
            ever_completed |= cp.coordinator.store().latest().is_some();
            let failover = cp.coordinator.on_failover();
            perform_deletions(cp, failover);
            let error = match result {
                Ok(()) => return Ok(()),
                Err(AttemptError::Thread(e)) => return Err(e),
                Err(AttemptError::Task(TaskError::Cancelled))
                    if self.cancelled.load(Ordering::Relaxed) =>
                {
                    return Err(TaskError::Cancelled.into())
                }
                Err(AttemptError::Task(TaskError::CheckpointDamaged {
                    uid,
                    subtask,
                    checkpoint,
                    detail,
                })) => {
                    tracing::error!(%checkpoint, %uid, %subtask, %detail, "checkpoint damaged; falling back to the previous one");
                    cp.coordinator.discard_damaged(checkpoint);
                    if cp.coordinator.store().latest().is_none() && ever_completed {
                        return Err(JobError::Restore {
                            detail: format!(
                                "{checkpoint} is damaged ({detail}) and no older intact checkpoint is retained; \
                                 restarting from scratch would publish output twice"
                            ),
                        });
                    }
                    continue;
                }
                Err(AttemptError::Task(e)) => e.to_string(),
                Err(AttemptError::Checkpoints(detail)) => detail,
            };
            match tracker.on_failure(now_ms(), u64::from(attempt)) {
                RestartDecision::Restart { delay_ms, .. } => {
                    tracing::warn!(attempt, delay_ms, error = %error, "job failed; restarting");
                    self.history
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .restarts += 1;
                    if !self.sleep_unless_cancelled(Duration::from_millis(delay_ms)) {
                        return Err(TaskError::Cancelled.into());
                    }
                    self.metrics.reset_for_restart();
                }
                RestartDecision::Fail { reason } => {
                    return Err(JobError::RestartsExhausted {
                        reason,
                        last: error,
                    })
                }
            }
        }
        unreachable!("the attempt loop returns")
    }

    fn sleep_unless_cancelled(&self, delay: Duration) -> bool {
        let until = Instant::now() + delay;
        while Instant::now() < until {
            if self.cancelled.load(Ordering::Relaxed) {
                return false;
            }
            std::thread::sleep((until - Instant::now()).min(Duration::from_millis(20)));
        }
        !self.cancelled.load(Ordering::Relaxed)
    }

    /// Runs one attempt: every task from the start (or from `restore`) to its end.
    fn run_attempt(
        &self,
        job: &JobDefinition,
        plan: &Plan,
        attempt: u32,
        mut cp: Option<&mut JobCheckpointing<'_>>,
        restore: Option<&CheckpointMetadata>,
    ) -> Result<(), AttemptError> {
        let def = job;
        let cancelled = Arc::new(AtomicBool::new(false));
        let (events_tx, events_rx) = match cp.as_ref() {
            Some(cp) => (cp.events.0.clone(), cp.events.1.clone()),
            None => crossbeam_channel::unbounded::<TaskEvent>(),
        };
        let mut controls: BTreeMap<TaskId, Sender<Control>> = BTreeMap::new();
        let mut sources: BTreeSet<TaskId> = BTreeSet::new();
        // 1. Channels: for every job edge, one per (upstream, downstream) subtask pair.
        let mut specs: Vec<TaskSpec> = Vec::new();
        let mut index: HashMap<(VertexId, u32), usize> = HashMap::new();
        for ev in &plan.execution.subtasks {
            let v = &plan.job.vertices[ev.vertex.0 as usize];
            let task = TaskId::new(ev.vertex, ev.subtask);
            let checkpointing = cp.as_ref().map(|cp| {
                let (tx, rx) = crossbeam_channel::unbounded();
                controls.insert(task, tx);
                Arc::new(TaskCheckpointing {
                    task,
                    subtask: ev.subtask,
                    mode: cp.settings.config.mode,
                    control: rx,
                    events: events_tx.clone(),
                    transfer: cp.transfer.clone(),
                    sync_pauses: cp.sync_pauses.clone(),
                    attempt,
                    in_flight: cp.in_flight.clone(),
                })
            });
            if matches!(def.nodes[v.head.0 as usize], NodeRuntime::Source(_)) {
                sources.insert(task);
            }
            let restore = match (restore, cp.as_ref()) {
                (Some(m), Some(cp)) => Some(Arc::new(TaskRestore {
                    checkpoint: m.checkpoint_id,
                    operators: v
                        .nodes
                        .iter()
                        .filter_map(|n| {
                            let uid = &plan.uids[n.0 as usize];
                            let state = m.operators.get(uid)?.subtasks.get(&ev.subtask)?;
                            Some((uid.clone(), state.clone()))
                        })
                        .collect(),
                    transfer: cp.transfer.clone(),
                    local_dir: cp.settings.local_dir.clone(),
                    stats: Arc::default(),
                })),
                _ => None,
            };
            index.insert((ev.vertex, ev.subtask.0), specs.len());
            specs.push(TaskSpec {
                name: format!("{} ({}/{})", v.name, ev.subtask.0 + 1, ev.parallelism),
                vertex: ev.vertex,
                subtask: ev.subtask,
                key_groups: ev.key_groups,
                senders: HashMap::new(),
                receivers: Vec::new(),
                checkpointing,
                restore,
                on_running: None,
            });
        }
        drop(events_tx);
        for (e, edge) in plan.job.edges.iter().enumerate() {
            let n_up = plan.job.vertices[edge.source.0 as usize].parallelism as usize;
            let n_down = plan.job.vertices[edge.target.0 as usize].parallelism as usize;
            let forward = edge.partitioning == Partitioning::Forward;
            let (senders, receivers) = def
                .edge_runtime(edge.source_node, edge.target_node)
                .channels(n_up, n_down, forward, self.options.channel_capacity);
            for (up, s) in senders.into_iter().enumerate() {
                specs[index[&(edge.source, up as u32)]].senders.insert(e, s);
            }
            for (down, rs) in receivers.into_iter().enumerate() {
                specs[index[&(edge.target, down as u32)]]
                    .receivers
                    .extend(rs);
            }
        }
        let keyed_subtasks: u32 = plan
            .stream
            .nodes
            .iter()
            .filter(|n| n.kind == NodeKind::KeyedOperator)
            .map(|n| n.resolved_parallelism)
            .sum();
        // 2. One (scoped) thread per subtask; each reports its end on `done`.
        let (done_tx, done_rx) = crossbeam_channel::unbounded::<(String, Result<(), TaskError>)>();
        let tasks = specs.len();
        let base = BaseCtx {
            state_backend: self.state_backend.clone(),
            keyed_subtasks_in_process: keyed_subtasks,
            metrics: self.metrics.clone(),
            cancelled: cancelled.clone(),
            options: self.options.clone(),
            attempt,
        };
        let mut history = std::mem::take(
            &mut self
                .history
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .history,
        );
        let mut primary: Option<TaskError> = None;
        let mut secondary: Option<TaskError> = None;
        let mut checkpoint_failure: Option<String> = None;
        let scoped = std::thread::scope(|scope| -> Result<(), JobError> {
            for spec in specs {
                let (base, done) = (&base, done_tx.clone());
                let name = spec.name.clone();
                std::thread::Builder::new()
                    .name(thread_name(&spec.name))
                    .spawn_scoped(scope, move || {
                        let name = spec.name.clone();
                        let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
                            run_task(job, plan, base, spec)
                        }))
                        .unwrap_or_else(|panic| Err(panic_error(&name, panic)));
                        let _ = done.send((name, result));
                    })
                    .map_err(|e| {
                        cancelled.store(true, Ordering::Relaxed);
                        JobError::Thread {
                            task: name,
                            detail: format!("could not start: {e}"),
                        }
                    })?;
            }
            drop(done_tx);
            let mut driver = cp.as_mut().map(|cp| Driver {
                coordinator: &mut cp.coordinator,
                store: &cp.settings.store,
                paths: &cp.paths,
                runtime: &cp.transfer.runtime,
                tasks: controls.keys().copied().collect(),
                gateway: ChannelGateway(std::mem::take(&mut controls)),
                sources: std::mem::take(&mut sources),
                history: &mut history,
                deletions: &mut cp.deletions,
                attempt,
                finished: BTreeSet::new(),
                barriers: BTreeMap::new(),
                final_from: None,
                done: false,
                failed: None,
            });
            // 3. Collect task ends and drive checkpoints; the first primary error (or too
            //    many checkpoint failures, or Ctrl-C) cancels the rest.
            let tick = Duration::from_millis(10);
            let mut remaining = tasks;
            let never = crossbeam_channel::never::<TaskEvent>();
            let events = if driver.is_some() { &events_rx } else { &never };
            while remaining > 0 {
                if self.cancelled.load(Ordering::Relaxed) {
                    cancelled.store(true, Ordering::Relaxed);
                }
                crossbeam_channel::select! {
                    recv(done_rx) -> msg => {
                        let Ok((name, result)) = msg else { break };
                        remaining -= 1;
                        match result {
                            Ok(()) => tracing::debug!(task = %name, "task finished"),
                            Err(e) if e.is_secondary() => {
                                tracing::debug!(task = %name, error = %e, "task stopped");
                                cancelled.store(true, Ordering::Relaxed);
                                secondary.get_or_insert(e);
                            }
                            Err(e) => {
                                tracing::error!(task = %name, error = %e, "task failed");
                                cancelled.store(true, Ordering::Relaxed);
                                primary.get_or_insert(e);
                            }
                        }
                    }
                    recv(events) -> msg => {
                        // Also while the attempt is stopping: an ack is classified either way, so
                        // the files of an unused one are deleted.
                        if let (Ok(event), Some(d)) = (msg, driver.as_mut()) {
                            d.on_event(event);
                        }
                    }
                    default(tick) => {}
                }
                if let Some(d) = driver.as_mut() {
                    if !cancelled.load(Ordering::Relaxed) {
                        d.on_tick();
                    }
                    if let Some(reason) = d.failed.take() {
                        tracing::error!(%reason, "failing the job");
                        cancelled.store(true, Ordering::Relaxed);
                        checkpoint_failure.get_or_insert(reason);
                    }
                }
            }
            Ok(())
        });
        self.history
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .history = history;
        scoped.map_err(AttemptError::Thread)?;
        if let Some(e) = primary {
            return Err(AttemptError::Task(e));
        }
        if let Some(detail) = checkpoint_failure {
            return Err(AttemptError::Checkpoints(detail));
        }
        if let Some(e) = secondary {
            return Err(AttemptError::Task(e));
        }
        Ok(())
    }
}

/// The in-process [`TaskGateway`]: one control channel per task.
struct ChannelGateway(BTreeMap<TaskId, Sender<Control>>);

impl TaskGateway for ChannelGateway {
    fn trigger(&mut self, task: TaskId, barrier: weir_types::Barrier) {
        if let Some(tx) = self.0.get(&task) {
            // A task that already stopped (failed) no longer listens; the attempt is ending.
            let _ = tx.send(Control::Trigger(barrier));
        }
    }

    fn complete(&mut self, id: CheckpointId) {
        for tx in self.0.values() {
            let _ = tx.send(Control::Complete(id));
        }
    }

    fn shutdown(&mut self) {
        for tx in self.0.values() {
            let _ = tx.send(Control::Shutdown);
        }
    }
}

/// Starts the deletions among `actions` (the rest needs no tasks: they are stopped).
fn perform_deletions(cp: &mut JobCheckpointing<'_>, actions: Vec<Action>) {
    // One task, in the coordinator's order (`_metadata` before the files it references).
    let paths: Vec<String> = actions
        .into_iter()
        .flat_map(|a| match a {
            Action::DeleteFiles { paths } => paths,
            _ => Vec::new(),
        })
        .collect();
    if !paths.is_empty() {
        let handle = spawn_deletions(&cp.transfer.runtime, &cp.settings.store, &cp.paths, paths);
        cp.deletions.push(handle);
    }
}

pub(crate) fn thread_name(name: &str) -> String {
    // Linux shows 15 bytes of a thread name; keep the subtask suffix visible.
    name.chars().filter(|c| c.is_ascii()).collect()
}

pub(crate) fn panic_error(task: &str, panic: Box<dyn std::any::Any + Send>) -> TaskError {
    let detail = panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into());
    TaskError::Panicked {
        task: task.to_string(),
        detail,
    }
}

pub(crate) struct BaseCtx {
    pub(crate) state_backend: Arc<dyn StateBackendFactory>,
    pub(crate) keyed_subtasks_in_process: u32,
    pub(crate) metrics: Arc<JobMetrics>,
    pub(crate) cancelled: Arc<AtomicBool>,
    pub(crate) options: RuntimeOptions,
    pub(crate) attempt: u32,
}

/// Assembles one subtask's chain tail-first, then runs its loop.
pub(crate) fn run_task(
    job: &JobDefinition,
    plan: &Plan,
    base: &BaseCtx,
    mut spec: TaskSpec,
) -> Result<(), TaskError> {
    let vertex = &plan.job.vertices[spec.vertex.0 as usize];
    let ctx_for = |node: NodeId| SubtaskCtx {
        uid: plan.uids[node.0 as usize].clone(),
        subtask: spec.subtask,
        parallelism: vertex.parallelism,
        max_parallelism: plan.job.max_parallelism,
        key_groups: spec.key_groups,
        state_backend: base.state_backend.clone(),
        keyed_subtasks_in_process: base.keyed_subtasks_in_process,
        metrics: base.metrics.clone(),
        cancelled: base.cancelled.clone(),
        options: base.options.clone(),
        attempt: base.attempt,
        checkpointing: spec.checkpointing.clone(),
        restore: spec.restore.clone(),
    };
    let mut built: HashMap<NodeId, AnyBox> = HashMap::new();
    for &node in vertex.nodes.iter().rev() {
        let ctx = ctx_for(node);
        let mut outputs = Vec::new();
        for edge in plan.stream.outputs(node) {
            if let Some(link) = built.remove(&edge.target) {
                outputs.push(link);
                continue;
            }
            let (e, je) = plan
                .job
                .edges
                .iter()
                .enumerate()
                .find(|(_, je)| je.source_node == node && je.target_node == edge.target)
                .expect("an edge leaving the chain is a job edge");
            let senders = spec
                .senders
                .remove(&e)
                .expect("senders for every outgoing edge");
            outputs.push(job.edge_runtime(node, edge.target).writer(
                &ctx,
                senders,
                je.partitioning,
            ));
        }
        match &job.nodes[node.0 as usize] {
            NodeRuntime::Source(src) => {
                debug_assert_eq!(node, vertex.head);
                tracing::debug!(task = %spec.name, "source task starting");
                if let Some(running) = spec.on_running.take() {
                    running();
                }
                return src.run(&ctx, outputs);
            }
            NodeRuntime::Operator(op) => {
                let link = op.build(&ctx, outputs)?;
                built.insert(node, link);
            }
        }
    }
    let head = built.remove(&vertex.head).expect("the head was built");
    let NodeRuntime::Operator(op) = &job.nodes[vertex.head.0 as usize] else {
        unreachable!("a source head returns above")
    };
    tracing::debug!(task = %spec.name, inputs = spec.receivers.len(), "task starting");
    if let Some(running) = spec.on_running.take() {
        running();
    }
    op.run_inputs(
        &ctx_for(vertex.head),
        std::mem::take(&mut spec.receivers),
        head,
    )
}
