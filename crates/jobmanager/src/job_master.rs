//! The JobMaster: one per job, on its own thread, driving the job through its attempts.
//!
//! It runs a crossbeam select loop with a 10 ms tick (like the embedded executor's
//! `run_attempt`), so the checkpoint [`Driver`] may `block_on` storage calls without ever
//! blocking a tokio worker. Everything it learns comes through its inbox ([`JobMasterMsg`]):
//! task messages routed by the session handlers, TaskManager losses from the ResourceManager,
//! and cancel/shutdown requests.
//!
//! # Flow of one job
//!
//! 1. **Restore point** — the latest retained completed checkpoint (loaded from storage at
//!    submission when resuming), checked with [`check_compatible`]; incompatible → FAILED.
//! 2. **Schedule** — [`ResourceManager::allocate`](crate::resource_manager::ResourceManager)
//!    assigns `slots_needed` slots (survivors keep their TaskManager). Not enough → wait,
//!    bounded by `slot.request.timeout`; on the first deployment the job then FAILS naming
//!    slots needed and free; on a redeployment the timeout is one more failure for the restart
//!    strategy.
//! 3. **Deploy** — a `DeployTask` per subtask to its TaskManager, with every subtask's
//!    location and, when restoring, its `restore_json`. Job RUNNING; tasks DEPLOYING.
//! 4. **Run** — task states come back; when every task reached RUNNING the restart tracker and
//!    the recovery record hear of it, and checkpointing starts (as in Flink, no checkpoint is
//!    triggered while a task is still deploying). The [`Driver`] triggers checkpoints
//!    through the [`ClusterGateway`], feeds acks/declines/end-of-input to the coordinator and
//!    writes `_metadata`.
//! 5. **End** — every task FINISHED → job FINISHED. With checkpointing, tasks report
//!    end-of-input, the final checkpoint completes, `StopTasks` goes out, then they finish;
//!    without, `StopTasks` goes out once every task reported end-of-input (or tasks finish on
//!    their own).
//! 6. **Failover** (DESIGN §6) — a task FAILED, a TaskManager holding live tasks lost, a
//!    deployment to a vanished TaskManager, or too many failed checkpoints: a recovery record
//!    opens, job RESTARTING, `CancelAttempt` to every TaskManager of the attempt, wait until
//!    every task is terminal or its TaskManager lost (bounded by `cancel_timeout`), then
//!    `coordinator.on_failover()`. A damaged checkpoint is discarded and recovery falls back
//!    to the previous one without consuming a restart; otherwise the [`RestartTracker`]
//!    decides: wait the delay and go to 2 with attempt + 1, or FAILED with the reason kept.
//!    A failure during a recovery supersedes it and starts a new one.
//! 7. **Cancel / shutdown** — CANCELING, cancel the attempt as in 6, CANCELED. Finally the
//!    coordinator shuts down (pending checkpoints aborted, their files deleted), late acks
//!    are taken for [`LATE_ACK_GRACE`] so their files are deleted too, and the slots are
//!    released.

use crate::cluster::{lock, JobStatus, Shared};
use crate::ids::TaskManagerId;
use crate::options::keys;
use crate::recovery::{self, RecoveryRecord, RecoveryStatus};
use crate::resource_manager::LostTaskManager;
use crate::slots::Assignment;
use crate::view::{
    execution_state_name, JobDetails, JobIoMetrics, JobState, SubtaskDetails, VertexDetails,
};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use weir_checkpoint::{
    Action, CheckpointMetadata, Coordinator, TaskAckMetrics, TaskId, TaskRestoreSpec,
    TaskStateSnapshot,
};
use weir_coordination::driver::{
    now_ms, spawn_deletions, CheckpointRecord, CheckpointStatus, Driver, TaskEvent, TaskGateway,
};
use weir_coordination::lease::{JobLease, LeaseError};
use weir_coordination::restart::{RestartDecision, RestartStrategy, RestartTracker};
use weir_coordination::resume::check_compatible;
use weir_graph::Plan;
use weir_proto::v1::job_manager_message::Kind as Down;
use weir_proto::v1::task_manager_message::Kind as Up;
use weir_proto::v1::{
    AttemptMetrics, CancelAttempt, CheckpointAck, DeployTask, ExecutionState, JobSpec,
    NotifyCheckpointAborted, NotifyCheckpointComplete, StopTasks, SubtaskLocation, TaskKey,
    TaskStateUpdate, TriggerCheckpoint,
};
use weir_storage::{CheckpointPaths, Store};
use weir_types::{Barrier, CheckpointId, JobId, SubtaskIndex, VertexId};

/// The loop's tick: checkpoint timers, slot polling, timeouts.
const TICK: Duration = Duration::from_millis(10);

/// After a job ended other than FINISHED, how long its late acks are still taken (so the
/// coordinator deletes their files).
pub(crate) const LATE_ACK_GRACE: Duration = Duration::from_secs(1);

/// Checkpoint records kept per job (the oldest go first).
const MAX_HISTORY: usize = 10_000;

/// Most sync pauses one `AttemptMetrics` may carry.
const MAX_SYNC_PAUSES: usize = 100_000;

/// What reaches a JobMaster.
#[derive(Debug)]
pub(crate) enum JobMasterMsg {
    /// A message of a TaskManager about this job.
    FromTaskManager { from: TaskManagerId, kind: Up },
    /// A TaskManager where this job held slots was declared lost.
    TaskManagerLost(Arc<LostTaskManager>),
    /// A client cancels the job.
    Cancel,
    /// The job's checkpoint folder was taken over by another owner, or its lease could not be
    /// renewed in time: stop writing at once and fail the job.
    LeaseLost(String),
    /// The JobManager shuts down.
    Shutdown,
}

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
}

/// Renews a [`JobLease`] on the JobManager's runtime every third of its duration; tells the
/// JobMaster ([`JobMasterMsg::LeaseLost`]) when it was taken over or could not be renewed
/// within its duration.
pub(crate) struct LeaseKeeper {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl LeaseKeeper {
    fn spawn(
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
    fn release(self, runtime: &tokio::runtime::Handle) {
        let _ = self.stop.send(());
        let task = self.task;
        let _ =
            runtime.block_on(async { tokio::time::timeout(Duration::from_secs(5), task).await });
    }
}

/// Everything a JobMaster starts with.
pub(crate) struct JobMasterSetup {
    pub job: JobId,
    pub spec: JobSpec,
    pub plan: Plan,
    pub restart: RestartStrategy,
    pub checkpointing: Option<Checkpointing>,
    pub status: Arc<Mutex<JobStatus>>,
    pub inbox: Receiver<JobMasterMsg>,
    /// The JobMaster's own inbox, for the lease keeper.
    pub to_self: Sender<JobMasterMsg>,
    pub shared: Arc<Shared>,
}

/// The status of a job that was just submitted.
pub(crate) fn initial_status(
    job: JobId,
    spec: &JobSpec,
    plan: &Plan,
    checkpointing: Option<&Checkpointing>,
    restart: &RestartStrategy,
) -> JobStatus {
    let latest = checkpointing.and_then(|c| c.coordinator.store().latest().map(|c| c.id()));
    let name = if spec.job_name.is_empty() {
        plan.job.job_name.clone()
    } else {
        spec.job_name.clone()
    };
    JobStatus {
        details: JobDetails {
            id: job.to_string(),
            name,
            state: JobState::Created,
            start_ms: now_ms(),
            end_ms: None,
            duration_ms: 0,
            attempt: 0,
            restarts: 0,
            failure_cause: None,
            slots_needed: plan.slots_needed(),
            checkpointing: checkpointing.is_some(),
            restart_strategy: restart.name().to_string(),
            restored_from: None,
            vertices: vertex_details(plan, &BTreeMap::new(), 0),
            metrics: JobIoMetrics::default(),
        },
        tasks_total: plan.execution.subtasks.len() as u32,
        tasks_running: 0,
        checkpoints: Vec::new(),
        latest_completed: latest,
        recoveries: Vec::new(),
        sync_pauses_us: Vec::new(),
    }
}

/// Why the job is stopping on request.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Stop {
    Cancel,
    Shutdown,
}

#[derive(Clone, Debug)]
enum FailureKind {
    /// A task failed; `primary: false` when it only followed another's failure.
    Task { primary: bool },
    /// A task could not restore checkpoint `.0`: its files are damaged.
    Damaged(CheckpointId),
    TaskManagerLost {
        taskmanager: TaskManagerId,
        last_heartbeat_ms: u64,
    },
    /// Too many checkpoint failures in a row.
    Checkpoints,
    /// No slots within `slot.request.timeout` (on a redeployment).
    Slots,
}

/// One failure of an attempt.
#[derive(Clone, Debug)]
struct Failure {
    cause: String,
    kind: FailureKind,
    detected_ms: u64,
}

impl Failure {
    /// How much of a root cause it is: a later failure of higher rank replaces the cause.
    fn rank(&self) -> u8 {
        match self.kind {
            FailureKind::Task { primary: false } => 0,
            FailureKind::Checkpoints | FailureKind::Slots => 1,
            _ => 2,
        }
    }
}

enum AttemptEnd {
    Finished,
    Stopped,
    Failed(Failure),
}

enum End {
    Finished,
    Canceled(Stop),
    Failed(String),
}

/// How a message is handled: in a live attempt, while it is cancelled, or between attempts.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Mode {
    Active,
    Canceling,
    Between,
}

struct TaskStatus {
    state: ExecutionState,
    taskmanager: TaskManagerId,
    slot: u32,
    reached_running: bool,
    failure: Option<String>,
}

/// The [`TaskGateway`] of one attempt: the TaskManagers' control streams.
#[derive(Clone)]
pub(crate) struct ClusterGateway {
    shared: Arc<Shared>,
    job: String,
    attempt: u32,
    task_tm: Arc<BTreeMap<TaskId, TaskManagerId>>,
    taskmanagers: Arc<BTreeSet<TaskManagerId>>,
}

impl ClusterGateway {
    fn to_all(&self, kind: Down) {
        let rm = self.shared.resources();
        for tm in self.taskmanagers.iter() {
            rm.send(tm, kind.clone());
        }
    }

    fn aborted(&self, id: CheckpointId, reason: &str) {
        self.to_all(Down::Aborted(NotifyCheckpointAborted {
            job_id: self.job.clone(),
            attempt: self.attempt,
            checkpoint_id: id.0,
            reason: reason.to_string(),
        }));
    }
}

impl TaskGateway for ClusterGateway {
    fn trigger(&mut self, task: TaskId, barrier: Barrier) {
        let Some(tm) = self.task_tm.get(&task) else {
            return;
        };
        tracing::debug!(checkpoint = %barrier.checkpoint, vertex = %task.vertex, subtask = %task.subtask, taskmanager = %tm, "trigger");
        self.shared.resources().send(
            tm,
            Down::Trigger(TriggerCheckpoint {
                task: Some(TaskKey::new(
                    &self.job,
                    self.attempt,
                    task.vertex,
                    task.subtask,
                )),
                checkpoint_id: barrier.checkpoint.0,
                base: barrier.base.map(|b| b.0),
                savepoint: barrier.savepoint,
            }),
        );
    }

    fn complete(&mut self, id: CheckpointId) {
        self.to_all(Down::Complete(NotifyCheckpointComplete {
            job_id: self.job.clone(),
            attempt: self.attempt,
            checkpoint_id: id.0,
        }));
    }

    fn shutdown(&mut self) {
        self.to_all(Down::Stop(StopTasks {
            job_id: self.job.clone(),
            attempt: self.attempt,
        }));
    }
}

/// The [`Driver`]'s per-attempt state, kept between calls.
struct AttemptDriver {
    tasks: BTreeSet<TaskId>,
    sources: BTreeSet<TaskId>,
    finished: BTreeSet<TaskId>,
    barriers: BTreeMap<CheckpointId, Barrier>,
    final_from: Option<CheckpointId>,
    done: bool,
    failed: Option<String>,
}

/// Runs `f` on a [`Driver`] assembled from the job's and the attempt's state.
fn with_driver<R>(
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
        attempt: gateway.attempt,
        finished: std::mem::take(&mut a.finished),
        barriers: std::mem::take(&mut a.barriers),
        final_from: a.final_from,
        done: a.done,
        failed: a.failed.take(),
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
/// `{"checkpoint": n, "operators": {uid: state}}`, for the operators of `vertex`'s chain and
/// subtask `subtask`. A chain without state gets an empty map: the task still learns which
/// checkpoint it restores.
pub(crate) fn restore_json(
    plan: &Plan,
    vertex: VertexId,
    subtask: SubtaskIndex,
    metadata: &CheckpointMetadata,
) -> Result<Vec<u8>, serde_json::Error> {
    let v = &plan.job.vertices[vertex.0 as usize];
    let operators = v
        .nodes
        .iter()
        .filter_map(|n| {
            let uid = &plan.uids[n.0 as usize];
            let state = metadata.operators.get(uid)?.subtasks.get(&subtask)?;
            Some((uid.clone(), state.clone()))
        })
        .collect();
    serde_json::to_vec(&TaskRestoreSpec {
        checkpoint: metadata.checkpoint_id,
        operators,
    })
}

/// See the module doc.
pub(crate) struct JobMaster {
    job: JobId,
    job_str: String,
    spec: JobSpec,
    plan: Plan,
    shared: Arc<Shared>,
    inbox: Receiver<JobMasterMsg>,
    status: Arc<Mutex<JobStatus>>,
    cp: Option<Checkpointing>,
    tracker: RestartTracker,
    state: JobState,
    attempt: u32,
    deployed_any: bool,
    /// The current attempt's TaskManagers.
    gateway: Option<ClusterGateway>,
    /// Job slot → TaskManager of the last attempt (local recovery preference).
    previous: BTreeMap<u32, TaskManagerId>,
    tasks: BTreeMap<TaskId, TaskStatus>,
    all_running: bool,
    /// Without checkpointing: tasks of this attempt whose input ended.
    ended_input: BTreeSet<TaskId>,
    /// Without checkpointing: `StopTasks` went out for the current attempt.
    stop_sent: bool,
    failure_cause: Option<String>,
    restored_from: Option<CheckpointId>,
    ever_completed: bool,
    recoveries: Vec<RecoveryRecord>,
    stop: Option<Stop>,
    end_ms: Option<u64>,
    dirty: bool,
    /// Checkpoint records before this index are settled and published.
    history_cursor: usize,
    aborted_notified: BTreeSet<CheckpointId>,
    /// The attempt before the current one and where its tasks ran: its late acks are still
    /// classified (so their files are deleted), but only from the TaskManager that ran them.
    previous_hosts: Option<(u32, BTreeMap<TaskId, TaskManagerId>)>,
    /// What each attempt did on each TaskManager (the latest report wins).
    io: BTreeMap<(u32, TaskManagerId), AttemptMetrics>,
    /// Why the job's checkpoint folder is no longer this JobMaster's, if it was lost.
    lease_lost: Option<String>,
}

impl JobMaster {
    pub(crate) fn new(mut s: JobMasterSetup) -> Self {
        if let Some(cp) = s.checkpointing.as_mut() {
            if let Some(lease) = cp.lease.take() {
                cp.lease_keeper = Some(LeaseKeeper::spawn(
                    &s.shared.runtime,
                    lease,
                    crate::dispatcher::LEASE_DURATION,
                    s.to_self.clone(),
                ));
            }
        }
        let ever_completed = s
            .checkpointing
            .as_ref()
            .is_some_and(|c| c.coordinator.store().latest().is_some());
        Self {
            job: s.job,
            job_str: s.job.to_string(),
            spec: s.spec,
            plan: s.plan,
            shared: s.shared,
            inbox: s.inbox,
            status: s.status,
            cp: s.checkpointing,
            tracker: RestartTracker::new(s.restart),
            state: JobState::Created,
            attempt: 0,
            deployed_any: false,
            gateway: None,
            previous: BTreeMap::new(),
            tasks: BTreeMap::new(),
            all_running: false,
            ended_input: BTreeSet::new(),
            stop_sent: false,
            failure_cause: None,
            restored_from: None,
            ever_completed,
            recoveries: Vec::new(),
            stop: None,
            end_ms: None,
            dirty: true,
            history_cursor: 0,
            aborted_notified: BTreeSet::new(),
            previous_hosts: None,
            io: BTreeMap::new(),
            lease_lost: None,
        }
    }

    /// Runs the job to its end (see the module doc).
    pub(crate) fn run(mut self) {
        let span = tracing::info_span!("jobmaster", job = %self.job);
        let _entered = span.enter();
        tracing::info!(
            name = %self.plan.job.job_name,
            slots_needed = self.plan.slots_needed(),
            tasks = self.plan.execution.subtasks.len(),
            checkpointing = self.cp.is_some(),
            "job submitted"
        );
        self.publish();
        let end = self.lifecycle();
        self.finish(end);
    }

    fn lifecycle(&mut self) -> End {
        loop {
            if let Some(stop) = self.stop {
                return End::Canceled(stop);
            }
            let restore = match self.restore_point() {
                Ok(r) => r,
                Err(detail) => return End::Failed(detail),
            };
            let assignment = match self.schedule() {
                Ok(a) => a,
                Err(Interrupted::Stop(stop)) => return End::Canceled(stop),
                Err(Interrupted::Timeout(message)) => {
                    if !self.deployed_any {
                        return End::Failed(message);
                    }
                    let f = Failure {
                        cause: message,
                        kind: FailureKind::Slots,
                        detected_ms: now_ms(),
                    };
                    self.begin_recovery(&f);
                    self.phase_canceled();
                    if let Err(end) = self.decide_restart(&f) {
                        return end;
                    }
                    continue;
                }
            };
            match self.run_attempt(assignment, restore) {
                AttemptEnd::Finished => return End::Finished,
                AttemptEnd::Stopped => {
                    return End::Canceled(self.stop.unwrap_or(Stop::Cancel));
                }
                AttemptEnd::Failed(f) => {
                    if let Some(stop) = self.stop {
                        return End::Canceled(stop);
                    }
                    if let FailureKind::Damaged(id) = f.kind {
                        match self.fall_back_from_damaged(id, &f) {
                            Err(end) => return end,
                            Ok(true) => continue,
                            // Not a retained checkpoint: an ordinary failure.
                            Ok(false) => {}
                        }
                    }
                    if let Err(end) = self.decide_restart(&f) {
                        return end;
                    }
                }
            }
        }
    }

    /// The checkpoint the next attempt restores: the latest retained completed one.
    fn restore_point(&self) -> Result<Option<CheckpointMetadata>, String> {
        let Some(cp) = &self.cp else {
            return Ok(None);
        };
        let Some(latest) = cp.coordinator.store().latest() else {
            return Ok(None);
        };
        let m = latest.metadata().clone();
        check_compatible(&m, &self.plan)?;
        Ok(Some(m))
    }

    /// Forgets damaged checkpoint `id`, so the next attempt restores the previous one.
    /// Returns false when `id` is not a retained checkpoint (nothing to fall back from).
    fn fall_back_from_damaged(&mut self, id: CheckpointId, f: &Failure) -> Result<bool, End> {
        let Some(cp) = self.cp.as_mut() else {
            return Ok(false);
        };
        if !cp.coordinator.discard_damaged(id) {
            tracing::warn!(checkpoint = %id, "a task reports a damaged checkpoint that is not retained");
            if let Some(r) = self.recoveries.last_mut() {
                r.counts_as_restart = true;
            }
            return Ok(false);
        }
        tracing::error!(checkpoint = %id, cause = %f.cause, "checkpoint damaged; falling back to the previous one");
        if cp.coordinator.store().latest().is_none() && self.ever_completed {
            return Err(End::Failed(format!(
                "{id} is damaged ({}) and no older intact checkpoint is retained; restarting \
                 from scratch would publish output twice",
                f.cause
            )));
        }
        Ok(true)
    }

    /// Consults the restart strategy about `f` and waits its delay.
    fn decide_restart(&mut self, f: &Failure) -> Result<(), End> {
        match self.tracker.on_failure(now_ms(), u64::from(self.attempt)) {
            RestartDecision::Restart { delay_ms, attempt } => {
                tracing::warn!(attempt = self.attempt, restart = attempt, delay_ms, cause = %f.cause, "job failed; restarting");
                self.state = JobState::Restarting;
                self.publish();
                if !self.wait(Duration::from_millis(delay_ms)) {
                    return Err(End::Canceled(self.stop.unwrap_or(Stop::Cancel)));
                }
                Ok(())
            }
            RestartDecision::Fail { reason } => {
                Err(End::Failed(format!("{}; not restarted: {reason}", f.cause)))
            }
        }
    }

    /// Waits `delay` while serving the inbox; false when a stop was requested.
    fn wait(&mut self, delay: Duration) -> bool {
        let until = Instant::now() + delay;
        loop {
            if self.stop.is_some() {
                return false;
            }
            let now = Instant::now();
            if now >= until {
                return true;
            }
            if let Some(msg) = self.next_message((until - now).min(TICK)) {
                self.handle(msg, &mut None, Mode::Between);
            }
            self.housekeeping();
        }
    }

    fn next_message(&self, timeout: Duration) -> Option<JobMasterMsg> {
        match self.inbox.recv_timeout(timeout) {
            Ok(m) => Some(m),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => Some(JobMasterMsg::Shutdown),
        }
    }

    /// Assigns slots, waiting for TaskManagers up to `slot.request.timeout`.
    fn schedule(&mut self) -> Result<Assignment, Interrupted> {
        let needed = self.plan.slots_needed();
        let timeout = self.shared.options.slot_request_timeout;
        let deadline = Instant::now() + timeout;
        let mut logged = false;
        loop {
            if let Some(stop) = self.stop {
                return Err(Interrupted::Stop(stop));
            }
            let allocated = self
                .shared
                .resources()
                .allocate(self.job, &self.previous, needed);
            match allocated {
                Ok(a) => {
                    tracing::info!(
                        slots = needed,
                        placement = %a.slots.iter().map(|s| format!("{}#{}", s.taskmanager, s.slot)).collect::<Vec<_>>().join(", "),
                        "slots assigned"
                    );
                    return Ok(a);
                }
                Err(e) => {
                    if Instant::now() >= deadline {
                        return Err(Interrupted::Timeout(format!(
                            "{e}; waited {timeout:?} ({})",
                            keys::SLOT_REQUEST_TIMEOUT
                        )));
                    }
                    if !logged {
                        tracing::info!(reason = %e, timeout = ?timeout, "waiting for slots");
                        logged = true;
                    }
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if let Some(msg) = self.next_message(left.min(TICK)) {
                self.handle(msg, &mut None, Mode::Between);
            }
            self.housekeeping();
        }
    }

    /// Deploys one attempt on `assignment` and runs it until it finishes, fails or is stopped;
    /// a failed or stopped attempt is cancelled before this returns.
    fn run_attempt(
        &mut self,
        assignment: Assignment,
        restore: Option<CheckpointMetadata>,
    ) -> AttemptEnd {
        let attempt = if self.deployed_any {
            self.attempt + 1
        } else {
            0
        };
        self.deployed_any = true;
        let previous_attempt = self.attempt;
        self.attempt = attempt;
        self.all_running = false;
        self.ended_input.clear();
        self.stop_sent = false;
        self.restored_from = restore.as_ref().map(|m| m.checkpoint_id);
        if !self.tasks.is_empty() {
            let hosts = self
                .tasks
                .iter()
                .map(|(t, s)| (*t, s.taskmanager.clone()))
                .collect();
            self.previous_hosts = Some((previous_attempt, hosts));
        }
        let span = tracing::info_span!("attempt", attempt);
        let _entered = span.enter();
        self.tasks = self
            .plan
            .execution
            .subtasks
            .iter()
            .map(|ev| {
                let s = &assignment.slots[ev.slot as usize];
                (
                    TaskId::new(ev.vertex, ev.subtask),
                    TaskStatus {
                        state: ExecutionState::Scheduled,
                        taskmanager: s.taskmanager.clone(),
                        slot: s.slot,
                        reached_running: false,
                        failure: None,
                    },
                )
            })
            .collect();
        let moves = recovery::moves(&self.plan, &self.previous, &assignment);
        if let Some(r) = self.open_recovery() {
            r.attempt = Some(attempt);
            r.scheduled_ms = Some(now_ms());
            r.restored_checkpoint = restore.as_ref().map(|m| m.checkpoint_id);
            r.moves = moves;
            r.refresh();
            tracing::info!(
                phase = "scheduled",
                recovery = r.id,
                attempt,
                checkpoint = ?r.restored_checkpoint.map(|c| c.0),
                moves = r.moves.len(),
                schedule_ms = ?r.durations.schedule_ms,
                "recovery: slots assigned"
            );
        }
        let task_tm: BTreeMap<TaskId, TaskManagerId> = self
            .tasks
            .iter()
            .map(|(t, s)| (*t, s.taskmanager.clone()))
            .collect();
        let gateway = ClusterGateway {
            shared: self.shared.clone(),
            job: self.job_str.clone(),
            attempt,
            taskmanagers: Arc::new(task_tm.values().cloned().collect()),
            task_tm: Arc::new(task_tm),
        };
        self.gateway = Some(gateway);
        let mut drv = self.cp.as_ref().map(|_| AttemptDriver {
            tasks: self.tasks.keys().copied().collect(),
            sources: self
                .tasks
                .keys()
                .filter(|t| self.plan.is_source_vertex(t.vertex))
                .copied()
                .collect(),
            finished: BTreeSet::new(),
            barriers: BTreeMap::new(),
            final_from: None,
            done: false,
            failed: None,
        });
        let mut failure = self.deploy(&assignment, restore.as_ref());
        if self.stop.is_none() {
            self.state = JobState::Running;
        }
        self.publish();
        let mut next_tick = Instant::now() + TICK;
        loop {
            if failure.is_some() || self.stop.is_some() {
                break;
            }
            if self
                .tasks
                .values()
                .all(|t| t.state == ExecutionState::Finished)
            {
                self.gateway = None;
                return AttemptEnd::Finished;
            }
            let wait = next_tick.saturating_duration_since(Instant::now());
            if let Some(msg) = self.next_message(wait) {
                failure = self.handle(msg, &mut drv, Mode::Active);
            }
            if Instant::now() >= next_tick {
                // As in Flink, checkpoints start once every task of the attempt has run.
                if let (true, Some(cp), Some(d), Some(g)) = (
                    self.all_running,
                    self.cp.as_mut(),
                    drv.as_mut(),
                    self.gateway.as_ref(),
                ) {
                    with_driver(cp, &self.shared.runtime, g, d, |d| d.on_tick());
                }
                self.sync_history();
                next_tick = Instant::now() + TICK;
            }
            if let Some(reason) = drv.as_mut().and_then(|d| d.failed.take()) {
                tracing::error!(%reason, "checkpointing fails the job");
                failure.get_or_insert(Failure {
                    cause: reason,
                    kind: FailureKind::Checkpoints,
                    detected_ms: now_ms(),
                });
            }
            self.housekeeping();
        }
        match &failure {
            Some(f) => {
                self.begin_recovery(f);
                self.state = JobState::Restarting;
            }
            None => self.state = JobState::Canceling,
        }
        self.publish();
        self.cancel_attempt(&mut drv, &mut failure);
        self.phase_canceled();
        self.previous = assignment
            .slots
            .iter()
            .enumerate()
            .map(|(i, s)| (i as u32, s.taskmanager.clone()))
            .collect();
        self.shared.resources().release_job(self.job);
        self.gateway = None;
        match failure {
            Some(f) => {
                if let Some(cp) = self.cp.as_mut() {
                    let actions = cp.coordinator.on_failover();
                    apply_outside(cp, &self.shared.runtime, actions);
                }
                self.sync_history();
                AttemptEnd::Failed(f)
            }
            None => AttemptEnd::Stopped,
        }
    }

    /// Sends every `DeployTask`. Returns a failure when a TaskManager vanished meanwhile.
    fn deploy(
        &mut self,
        assignment: &Assignment,
        restore: Option<&CheckpointMetadata>,
    ) -> Option<Failure> {
        let attempt = self.attempt;
        let mut locations = Vec::with_capacity(self.plan.execution.subtasks.len());
        {
            let rm = self.shared.resources();
            for ev in &self.plan.execution.subtasks {
                let tm = &assignment.slots[ev.slot as usize].taskmanager;
                let Some(address) = rm.data_address(tm) else {
                    return Some(vanished(tm, "before deployment"));
                };
                locations.push(SubtaskLocation {
                    vertex: ev.vertex.0,
                    subtask: ev.subtask.0,
                    taskmanager_id: tm.to_string(),
                    data_address: address.to_string(),
                });
            }
        }
        for ev in &self.plan.execution.subtasks {
            let task = TaskId::new(ev.vertex, ev.subtask);
            let restore_json =
                match restore.map(|m| restore_json(&self.plan, ev.vertex, ev.subtask, m)) {
                    None => Vec::new(),
                    Some(Ok(bytes)) => bytes,
                    Some(Err(e)) => {
                        return Some(Failure {
                            cause: format!("cannot encode the restore state of {task}: {e}"),
                            kind: FailureKind::Task { primary: true },
                            detected_ms: now_ms(),
                        })
                    }
                };
            let tm = assignment.slots[ev.slot as usize].taskmanager.clone();
            let sent = self.shared.resources().send(
                &tm,
                Down::Deploy(DeployTask {
                    task: Some(TaskKey::new(&self.job_str, attempt, ev.vertex, ev.subtask)),
                    job: Some(self.spec.clone()),
                    locations: locations.clone(),
                    restore_json,
                }),
            );
            if !sent {
                return Some(vanished(&tm, "during deployment"));
            }
            if let Some(t) = self.tasks.get_mut(&task) {
                t.state = ExecutionState::Deploying;
            }
            tracing::debug!(vertex = %ev.vertex, subtask = %ev.subtask, taskmanager = %tm, "task deployed");
        }
        tracing::info!(
            tasks = self.tasks.len(),
            taskmanagers = self.gateway.as_ref().map_or(0, |g| g.taskmanagers.len()),
            checkpoint = ?restore.map(|m| m.checkpoint_id.0),
            "attempt deployed"
        );
        None
    }

    /// Cancels the current attempt: `CancelAttempt` to its TaskManagers, then waits until
    /// every task is terminal (or its TaskManager lost), at most `cancel_timeout`. A failure
    /// reported meanwhile replaces a less root one in `failure`.
    fn cancel_attempt(&mut self, drv: &mut Option<AttemptDriver>, failure: &mut Option<Failure>) {
        let reason = match (&failure, self.stop) {
            (Some(f), _) => format!("failover: {}", f.cause),
            (None, Some(Stop::Shutdown)) => "the JobManager shuts down".to_string(),
            (None, _) => "the job was cancelled".to_string(),
        };
        // Tasks never sent are gone already.
        for t in self.tasks.values_mut() {
            if matches!(t.state, ExecutionState::Created | ExecutionState::Scheduled) {
                t.state = ExecutionState::Canceled;
            }
        }
        let live: BTreeSet<TaskManagerId> = self
            .tasks
            .values()
            .filter(|t| !t.state.is_terminal())
            .map(|t| t.taskmanager.clone())
            .collect();
        let mut gone = Vec::new();
        {
            let rm = self.shared.resources();
            for tm in &live {
                let sent = rm.send(
                    tm,
                    Down::Cancel(CancelAttempt {
                        job_id: self.job_str.clone(),
                        attempt: self.attempt,
                        reason: reason.clone(),
                    }),
                );
                if !sent {
                    gone.push(tm.clone());
                }
            }
        }
        for t in self.tasks.values_mut() {
            if t.state.is_terminal() {
                continue;
            }
            if gone.contains(&t.taskmanager) {
                t.state = ExecutionState::Failed;
                t.failure
                    .get_or_insert_with(|| format!("TaskManager {} is gone", t.taskmanager));
            } else {
                t.state = ExecutionState::Canceling;
            }
        }
        tracing::info!(taskmanagers = live.len(), %reason, "cancelling the attempt");
        self.publish();
        let timeout = self.shared.options.cancel_timeout;
        let deadline = Instant::now() + timeout;
        while !self.tasks.values().all(|t| t.state.is_terminal()) {
            let now = Instant::now();
            if now >= deadline {
                let left: Vec<String> = self
                    .tasks
                    .iter()
                    .filter(|(_, t)| !t.state.is_terminal())
                    .map(|(id, t)| format!("{id} on {}", t.taskmanager))
                    .collect();
                tracing::warn!(
                    tasks = %left.join(", "),
                    timeout = ?timeout,
                    "tasks did not confirm their cancellation within {}; going on without them",
                    keys::CANCEL_TIMEOUT
                );
                break;
            }
            if let Some(msg) = self.next_message((deadline - now).min(TICK)) {
                if let Some(f) = self.handle(msg, drv, Mode::Canceling) {
                    self.upgrade_failure(failure, f);
                }
            }
            self.housekeeping();
        }
    }

    /// A failure reported while an attempt is being cancelled replaces the recorded cause
    /// when it is more of a root cause (a lost TaskManager over a task that lost its peer).
    fn upgrade_failure(&mut self, current: &mut Option<Failure>, new: Failure) {
        let Some(old) = current.as_mut() else {
            return;
        };
        if new.rank() <= old.rank() {
            return;
        }
        tracing::info!(was = %old.cause, cause = %new.cause, "root cause found");
        *old = Failure {
            detected_ms: old.detected_ms,
            ..new
        };
        self.failure_cause = Some(old.cause.clone());
        if let Some(r) = self.recoveries.last_mut() {
            r.cause = old.cause.clone();
            r.counts_as_restart = !matches!(old.kind, FailureKind::Damaged(_));
            if let FailureKind::TaskManagerLost {
                taskmanager,
                last_heartbeat_ms,
            } = &old.kind
            {
                r.lost_taskmanager = Some(taskmanager.to_string());
                r.last_heartbeat_ms = Some(*last_heartbeat_ms);
            }
            r.refresh();
        }
        self.dirty = true;
    }

    /// Handles one inbox message; returns a failure of the current attempt, if it is one.
    fn handle(
        &mut self,
        msg: JobMasterMsg,
        drv: &mut Option<AttemptDriver>,
        mode: Mode,
    ) -> Option<Failure> {
        match msg {
            JobMasterMsg::Cancel => {
                tracing::info!("cancel requested");
                self.stop.get_or_insert(Stop::Cancel);
                None
            }
            JobMasterMsg::Shutdown => {
                self.stop.get_or_insert(Stop::Shutdown);
                None
            }
            JobMasterMsg::LeaseLost(reason) => {
                tracing::error!(%reason, "stopping: the checkpoint folder is no longer this JobMaster's");
                self.lease_lost.get_or_insert(reason);
                self.stop.get_or_insert(Stop::Cancel);
                None
            }
            JobMasterMsg::TaskManagerLost(lost) => self.on_taskmanager_lost(&lost),
            JobMasterMsg::FromTaskManager { from, kind } => match kind {
                Up::TaskState(u) => self.on_task_state(&from, u, mode),
                Up::Ack(ack) => {
                    self.on_ack(&from, ack, drv);
                    None
                }
                Up::Decline(d) => {
                    let key = d.task?;
                    if !self.sent_by_host(&from, &key, true, "CheckpointDecline") {
                        return None;
                    }
                    let task = TaskId::new(key.vertex_id(), key.subtask_index());
                    tracing::info!(checkpoint = d.checkpoint_id, vertex = key.vertex, subtask = key.subtask, taskmanager = %from, reason = %d.reason, "checkpoint declined");
                    self.checkpoint_event(
                        TaskEvent::Decline {
                            task,
                            id: CheckpointId(d.checkpoint_id),
                            reason: d.reason,
                        },
                        drv,
                    );
                    None
                }
                Up::EndOfInput(e) => {
                    let key = e.task?;
                    if !self.sent_by_host(&from, &key, false, "TaskEndOfInput")
                        || mode != Mode::Active
                    {
                        return None;
                    }
                    let task = TaskId::new(key.vertex_id(), key.subtask_index());
                    tracing::debug!(vertex = key.vertex, subtask = key.subtask, "end of input");
                    if self.cp.is_some() {
                        self.checkpoint_event(
                            TaskEvent::Finished {
                                task,
                                attempt: key.attempt,
                            },
                            drv,
                        );
                    } else if self.tasks.contains_key(&task) {
                        self.ended_input.insert(task);
                        self.stop_ended_tasks();
                    }
                    None
                }
                Up::Restored(r) => {
                    let key = r.task?;
                    if !self.sent_by_host(&from, &key, false, "TaskRestored") {
                        return None;
                    }
                    tracing::info!(
                        vertex = key.vertex,
                        subtask = key.subtask,
                        taskmanager = %from,
                        checkpoint = r.checkpoint_id,
                        bytes_downloaded = r.bytes_downloaded,
                        bytes_local = r.bytes_local,
                        duration_ms = r.duration_ms,
                        "task restored"
                    );
                    if key.attempt == self.attempt {
                        let attempt = self.attempt;
                        if let Some(rec) = self
                            .recoveries
                            .last_mut()
                            .filter(|rec| rec.attempt == Some(attempt))
                        {
                            rec.bytes_downloaded += r.bytes_downloaded;
                            rec.bytes_local += r.bytes_local;
                            rec.tasks_restored += 1;
                            rec.restore_ms = rec.restore_ms.max(r.duration_ms);
                            self.dirty = true;
                        }
                    }
                    None
                }
                Up::FirstRecord(f) => {
                    let hosts_any = self.tasks.values().any(|t| t.taskmanager == from);
                    if f.attempt == self.attempt && hosts_any {
                        self.on_first_record(f.at_ms);
                    }
                    None
                }
                Up::AttemptMetrics(m) => {
                    self.on_attempt_metrics(&from, m);
                    None
                }
                Up::Register(_) | Up::Heartbeat(_) => None,
            },
        }
    }

    /// Whether `from` runs the task of `key` in the current attempt (or, with
    /// `previous_too`, ran it in the previous one). A message that fails this is dropped and
    /// logged: it changes no state (DESIGN §8, invariant 7).
    fn sent_by_host(
        &self,
        from: &TaskManagerId,
        key: &weir_proto::v1::TaskKey,
        previous_too: bool,
        what: &str,
    ) -> bool {
        let task = TaskId::new(key.vertex_id(), key.subtask_index());
        let current = key.attempt == self.attempt
            && self
                .tasks
                .get(&task)
                .is_some_and(|t| &t.taskmanager == from);
        let previous = previous_too
            && self
                .previous_hosts
                .as_ref()
                .is_some_and(|(attempt, hosts)| {
                    key.attempt == *attempt && hosts.get(&task) == Some(from)
                });
        if !(current || previous) {
            tracing::warn!(
                taskmanager = %from,
                message = what,
                attempt = key.attempt,
                current_attempt = self.attempt,
                vertex = key.vertex,
                subtask = key.subtask,
                "message about a task this TaskManager does not run in this attempt dropped"
            );
        }
        current || previous
    }

    /// Keeps what one TaskManager reported of one attempt (records, state size, pauses).
    fn on_attempt_metrics(&mut self, from: &TaskManagerId, m: AttemptMetrics) {
        let hosts_any = self.tasks.values().any(|t| &t.taskmanager == from);
        if m.attempt != self.attempt || !hosts_any {
            tracing::warn!(taskmanager = %from, attempt = m.attempt, "attempt metrics from a TaskManager without tasks of this attempt dropped");
            return;
        }
        if m.sync_pauses_us.len() > MAX_SYNC_PAUSES {
            tracing::warn!(taskmanager = %from, pauses = m.sync_pauses_us.len(), "attempt metrics with too many pauses dropped");
            return;
        }
        self.io.insert((m.attempt, from.clone()), m);
        let latest = self.io.keys().map(|(a, _)| *a).max().unwrap_or(0);
        let mut metrics = JobIoMetrics::default();
        let mut pauses = Vec::new();
        for ((attempt, _), m) in &self.io {
            metrics.source_records += m.source_records;
            metrics.sink_records += m.sink_records;
            if *attempt == latest {
                metrics.state_bytes += m.state_bytes;
            }
            pauses.extend_from_slice(&m.sync_pauses_us);
        }
        let mut status = lock(&self.status);
        status.details.metrics = metrics;
        status.sync_pauses_us = pauses;
    }

    fn on_taskmanager_lost(&mut self, lost: &LostTaskManager) -> Option<Failure> {
        let why = format!("TaskManager {} lost: {}", lost.id, lost.reason);
        let mut affected = 0;
        for t in self.tasks.values_mut() {
            if t.taskmanager == lost.id && !t.state.is_terminal() {
                t.state = ExecutionState::Failed;
                t.failure = Some(why.clone());
                affected += 1;
            }
        }
        if affected == 0 {
            self.attribute_open_recovery(lost);
            tracing::debug!(taskmanager = %lost.id, "a TaskManager without live tasks of this job was lost");
            return None;
        }
        self.dirty = true;
        tracing::warn!(taskmanager = %lost.id, tasks = affected, reason = %lost.reason, "TaskManager with live tasks lost");
        Some(Failure {
            cause: format!(
                "TaskManager {} ({}) lost: {}",
                lost.id, lost.data_address, lost.reason
            ),
            kind: FailureKind::TaskManagerLost {
                taskmanager: lost.id.clone(),
                last_heartbeat_ms: lost.last_heartbeat_ms,
            },
            detected_ms: lost.detected_ms,
        })
    }

    fn on_task_state(
        &mut self,
        from: &TaskManagerId,
        u: TaskStateUpdate,
        mode: Mode,
    ) -> Option<Failure> {
        let state = u.state();
        let Some(key) = u.task else {
            tracing::warn!(taskmanager = %from, "task state without a task key dropped");
            return None;
        };
        if key.attempt != self.attempt {
            tracing::debug!(taskmanager = %from, attempt = key.attempt, "state of another attempt ignored");
            return None;
        }
        let task = TaskId::new(key.vertex_id(), key.subtask_index());
        let name = self.task_name(task);
        let Some(t) = self.tasks.get_mut(&task) else {
            tracing::warn!(taskmanager = %from, %task, "state of an unknown task dropped");
            return None;
        };
        if &t.taskmanager != from {
            tracing::warn!(taskmanager = %from, runs_on = %t.taskmanager, %task, "state from a TaskManager that does not run the task dropped");
            return None;
        }
        if t.state.is_terminal() || state == ExecutionState::Unspecified {
            return None;
        }
        t.state = state;
        self.dirty = true;
        tracing::debug!(vertex = key.vertex, subtask = key.subtask, taskmanager = %from, state = execution_state_name(state), "task state");
        match state {
            ExecutionState::Running | ExecutionState::Finished => {
                t.reached_running = true;
                if mode == Mode::Active && self.tasks.values().all(|t| t.reached_running) {
                    self.on_all_running();
                }
                if mode == Mode::Active && state == ExecutionState::Finished {
                    self.stop_ended_tasks();
                }
                None
            }
            ExecutionState::Failed => {
                t.failure = Some(u.error.clone());
                let kind = match u.damaged_checkpoint {
                    Some(id) => FailureKind::Damaged(CheckpointId(id)),
                    None => FailureKind::Task {
                        primary: !u.secondary,
                    },
                };
                if u.secondary {
                    tracing::info!(task = %name, taskmanager = %from, error = %u.error, "task stopped after another failure");
                } else {
                    tracing::error!(task = %name, taskmanager = %from, error = %u.error, "task failed");
                }
                Some(Failure {
                    cause: format!("{name} failed on TaskManager {from}: {}", u.error),
                    kind,
                    detected_ms: now_ms(),
                })
            }
            ExecutionState::Canceled if mode == Mode::Active => {
                tracing::error!(task = %name, taskmanager = %from, "task cancelled by its TaskManager");
                Some(Failure {
                    cause: format!("{name} was cancelled by TaskManager {from}"),
                    kind: FailureKind::Task { primary: true },
                    detected_ms: now_ms(),
                })
            }
            _ => None,
        }
    }

    /// Without checkpointing: once every task's input ended (or it finished on its own),
    /// `StopTasks` lets them finish. Sent once per attempt.
    fn stop_ended_tasks(&mut self) {
        if self.cp.is_some() || self.stop_sent {
            return;
        }
        let all_ended = self
            .tasks
            .iter()
            .all(|(id, t)| self.ended_input.contains(id) || t.state == ExecutionState::Finished);
        if all_ended {
            tracing::info!("every task's input ended; stopping the tasks");
            if let Some(g) = self.gateway.as_mut() {
                g.shutdown();
                self.stop_sent = true;
            }
        }
    }

    fn task_name(&self, task: TaskId) -> String {
        let v = &self.plan.job.vertices[task.vertex.0 as usize];
        format!("{} ({}/{})", v.name, task.subtask.0 + 1, v.parallelism)
    }

    fn on_all_running(&mut self) {
        if self.all_running {
            return;
        }
        self.all_running = true;
        let now = now_ms();
        self.tracker.on_running(now);
        tracing::info!(tasks = self.tasks.len(), "every task is running");
        if let Some(r) = self.open_recovery() {
            r.running_ms = Some(now);
            r.status = RecoveryStatus::Completed;
            r.refresh();
            tracing::info!(phase = "running", recovery = r.id, deploy_ms = ?r.durations.deploy_ms, "recovery: every task running");
            if r.first_record_ms.is_some() {
                log_summary(r);
            }
        }
    }

    fn on_first_record(&mut self, at_ms: u64) {
        let attempt = self.attempt;
        let Some(r) = self
            .recoveries
            .last_mut()
            .filter(|r| r.attempt == Some(attempt) && r.first_record_ms.is_none())
        else {
            return;
        };
        r.first_record_ms = Some(at_ms);
        r.refresh();
        self.dirty = true;
        tracing::info!(phase = "first_record", recovery = r.id, first_record_ms = ?r.durations.first_record_ms, "recovery: first record processed");
        if r.status == RecoveryStatus::Completed {
            log_summary(r);
        }
    }

    /// The recovery still waiting for its attempt to run, if any.
    fn open_recovery(&mut self) -> Option<&mut RecoveryRecord> {
        self.dirty = true;
        self.recoveries
            .last_mut()
            .filter(|r| r.status == RecoveryStatus::InProgress)
    }

    /// A recovery that began from a task that lost its peer (the data plane noticed the dead
    /// TaskManager before its session broke) gets the lost TaskManager as its root cause, when
    /// that TaskManager held tasks of the failed attempt.
    fn attribute_open_recovery(&mut self, lost: &LostTaskManager) {
        let held_tasks = self.tasks.values().any(|t| t.taskmanager == lost.id);
        let cause = format!(
            "TaskManager {} ({}) lost: {}",
            lost.id, lost.data_address, lost.reason
        );
        let Some(r) = self.open_recovery() else {
            return;
        };
        let moved_from = r
            .moves
            .iter()
            .any(|m| m.from_taskmanager == lost.id.to_string());
        if r.lost_taskmanager.is_some() || !(held_tasks || moved_from) {
            return;
        }
        tracing::info!(was = %r.cause, %cause, "root cause found");
        r.cause = cause.clone();
        r.lost_taskmanager = Some(lost.id.to_string());
        r.last_heartbeat_ms = Some(lost.last_heartbeat_ms);
        r.refresh();
        self.failure_cause = Some(cause);
    }

    /// Opens the recovery record of failure `f` (superseding one still in progress).
    fn begin_recovery(&mut self, f: &Failure) {
        if let Some(r) = self.open_recovery() {
            r.status = RecoveryStatus::Superseded;
            tracing::warn!(recovery = r.id, "recovery superseded by a new failure");
        }
        let mut r = RecoveryRecord::new(
            self.recoveries.len() as u32 + 1,
            f.cause.clone(),
            f.detected_ms,
        );
        if let FailureKind::TaskManagerLost {
            taskmanager,
            last_heartbeat_ms,
        } = &f.kind
        {
            r.lost_taskmanager = Some(taskmanager.to_string());
            r.last_heartbeat_ms = Some(*last_heartbeat_ms);
        }
        r.counts_as_restart = !matches!(f.kind, FailureKind::Damaged(_));
        r.refresh();
        tracing::warn!(
            phase = "detected",
            recovery = r.id,
            attempt = self.attempt,
            taskmanager = ?r.lost_taskmanager,
            cause = %f.cause,
            detection_ms = ?r.durations.detection_ms,
            "recovery: failure detected"
        );
        self.failure_cause = Some(f.cause.clone());
        self.recoveries.push(r);
        self.dirty = true;
    }

    /// Records that the old attempt is gone.
    fn phase_canceled(&mut self) {
        if let Some(r) = self.open_recovery() {
            if r.canceled_ms.is_none() {
                r.canceled_ms = Some(now_ms());
                r.refresh();
                tracing::info!(phase = "canceled", recovery = r.id, cancel_ms = ?r.durations.cancel_ms, "recovery: old attempt cancelled");
            }
        }
    }

    fn on_ack(
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
    fn checkpoint_event(&mut self, event: TaskEvent, drv: &mut Option<AttemptDriver>) {
        let Some(cp) = self.cp.as_mut() else {
            return;
        };
        match (drv.as_mut(), self.gateway.as_ref()) {
            (Some(d), Some(g)) => {
                with_driver(cp, &self.shared.runtime, g, d, |d| d.on_event(event));
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
                apply_outside(cp, &self.shared.runtime, actions);
            }
        }
        self.sync_history();
    }

    /// Publishes new and changed checkpoint records, tells the attempt's TaskManagers about
    /// aborted checkpoints, and trims the history.
    fn sync_history(&mut self) {
        let Some(cp) = self.cp.as_mut() else {
            return;
        };
        self.ever_completed |= cp.coordinator.store().latest().is_some();
        let from = self.history_cursor.min(cp.history.len());
        if let Some(g) = self.gateway.as_ref() {
            for r in &cp.history[from..] {
                if let CheckpointStatus::Aborted(reason) = &r.status {
                    if r.attempt == g.attempt && self.aborted_notified.insert(r.id) {
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
        status.latest_completed = cp.coordinator.store().latest().map(|c| c.id());
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
    }

    /// Periodic bookkeeping of every loop: finished deletions dropped, status published.
    fn housekeeping(&mut self) {
        if let Some(cp) = self.cp.as_mut() {
            cp.deletions.retain(|d| !d.is_finished());
        }
        if self.dirty {
            self.publish();
        }
    }

    fn publish(&mut self) {
        self.dirty = false;
        let attempt = self.attempt;
        let vertices = vertex_details(&self.plan, &self.tasks, attempt);
        let running = self
            .tasks
            .values()
            .filter(|t| t.state == ExecutionState::Running)
            .count() as u32;
        let mut s = lock(&self.status);
        let d = &mut s.details;
        d.state = self.state;
        d.end_ms = self.end_ms;
        d.attempt = attempt;
        d.restarts = attempt;
        d.failure_cause = self.failure_cause.clone();
        d.restored_from = self.restored_from;
        d.vertices = vertices;
        s.tasks_running = running;
        s.recoveries = self.recoveries.clone();
    }

    /// The job reached its end: final state, checkpoint cleanup, late acks, slots released.
    fn finish(&mut self, end: End) {
        let end = match (self.lease_lost.clone(), end) {
            (Some(reason), End::Canceled(Stop::Cancel)) => End::Failed(reason),
            (_, end) => end,
        };
        let (state, cause) = match end {
            End::Finished => (JobState::Finished, None),
            End::Canceled(Stop::Cancel) => (JobState::Canceled, None),
            End::Canceled(Stop::Shutdown) => (
                JobState::Canceled,
                Some("the JobManager shut down".to_string()),
            ),
            End::Failed(cause) => (JobState::Failed, Some(cause)),
        };
        if let Some(r) = self.open_recovery() {
            r.status = RecoveryStatus::Abandoned;
        }
        if let Some(cause) = cause {
            self.failure_cause = Some(cause);
        }
        if let Some(cp) = self.cp.as_mut() {
            let actions = cp.coordinator.shutdown();
            apply_outside(cp, &self.shared.runtime, actions);
        }
        self.sync_history();
        self.shared.resources().release_job(self.job);
        self.state = state;
        self.end_ms = Some(now_ms());
        self.publish();
        match state {
            JobState::Failed => tracing::error!(
                attempt = self.attempt,
                cause = self.failure_cause.as_deref().unwrap_or(""),
                "job failed"
            ),
            _ => tracing::info!(attempt = self.attempt, state = ?state, "job ended"),
        }
        // Late acks of the last attempt: classified (discarded), so their files are deleted.
        if state != JobState::Finished && self.cp.is_some() && !self.shared.is_shutting_down() {
            let until = Instant::now() + LATE_ACK_GRACE;
            loop {
                let now = Instant::now();
                if now >= until {
                    break;
                }
                match self.inbox.recv_timeout(until - now) {
                    Ok(msg) => {
                        self.handle(msg, &mut None, Mode::Between);
                    }
                    Err(_) => break,
                }
            }
        }
        if let Some(cp) = self.cp.as_mut() {
            for d in cp.deletions.drain(..) {
                let done = self
                    .shared
                    .runtime
                    .block_on(async { tokio::time::timeout(Duration::from_secs(30), d).await });
                if done.is_err() {
                    tracing::warn!("checkpoint file deletions did not end within 30 s");
                }
            }
            // Last: the folder is free for a resume once every write of this job is done.
            if let Some(keeper) = cp.lease_keeper.take() {
                keeper.release(&self.shared.runtime);
            }
        }
        self.publish();
    }
}

/// The vertices of `/jobs/{id}`, with the subtasks of `tasks` (CREATED when absent).
fn vertex_details(
    plan: &Plan,
    tasks: &BTreeMap<TaskId, TaskStatus>,
    attempt: u32,
) -> Vec<VertexDetails> {
    plan.job
        .vertices
        .iter()
        .map(|v| VertexDetails {
            id: v.id.0,
            name: v.name.clone(),
            parallelism: v.parallelism,
            keyed: v.keyed,
            source: plan.is_source_vertex(v.id),
            subtasks: (0..v.parallelism)
                .map(|i| {
                    let t = tasks.get(&TaskId::new(v.id, SubtaskIndex(i)));
                    SubtaskDetails {
                        subtask: i,
                        state: execution_state_name(t.map_or(ExecutionState::Created, |t| t.state))
                            .to_string(),
                        taskmanager: t.map(|t| t.taskmanager.to_string()),
                        slot: t.map(|t| t.slot),
                        attempt,
                        failure: t.and_then(|t| t.failure.clone()),
                    }
                })
                .collect(),
        })
        .collect()
}

/// Why scheduling stopped without slots.
enum Interrupted {
    Stop(Stop),
    Timeout(String),
}

fn vanished(tm: &TaskManagerId, when: &str) -> Failure {
    Failure {
        cause: format!("TaskManager {tm} vanished {when}"),
        kind: FailureKind::TaskManagerLost {
            taskmanager: tm.clone(),
            last_heartbeat_ms: now_ms(),
        },
        detected_ms: now_ms(),
    }
}

/// Performs what the coordinator asks outside a live attempt: deletions, and aborted
/// checkpoints marked in the history (no task is left to tell).
fn apply_outside(cp: &mut Checkpointing, runtime: &tokio::runtime::Handle, actions: Vec<Action>) {
    let mut deletions = Vec::new();
    for action in actions {
        match action {
            Action::DeleteFiles { paths } => deletions.extend(paths),
            Action::NotifyAborted { id, reason } => {
                let now = now_ms();
                if let Some(r) = cp.history.iter_mut().rev().find(|r| r.id == id) {
                    if r.status == CheckpointStatus::InProgress {
                        r.status = CheckpointStatus::Aborted(reason.to_string());
                        r.duration_ms = now.saturating_sub(r.trigger_ms);
                    }
                }
                tracing::info!(checkpoint = %id, %reason, "checkpoint aborted");
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

fn log_summary(r: &RecoveryRecord) {
    tracing::info!(
        recovery = r.id,
        attempt = ?r.attempt,
        cause = %r.cause,
        taskmanager = ?r.lost_taskmanager,
        checkpoint = ?r.restored_checkpoint.map(|c| c.0),
        moves = r.moves.len(),
        bytes_downloaded = r.bytes_downloaded,
        bytes_local = r.bytes_local,
        detection_ms = ?r.durations.detection_ms,
        cancel_ms = ?r.durations.cancel_ms,
        schedule_ms = ?r.durations.schedule_ms,
        deploy_ms = ?r.durations.deploy_ms,
        first_record_ms = ?r.durations.first_record_ms,
        total_ms = ?r.durations.total_ms,
        "recovery complete"
    );
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
        };
        let bytes = restore_json(&plan, VertexId(1), SubtaskIndex(1), &metadata).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["checkpoint"], 3);
        let ops = v["operators"].as_object().unwrap();
        assert_eq!(ops.len(), 1);
        let decoded: TaskRestoreSpec = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(decoded.checkpoint, CheckpointId(3));
        assert_eq!(decoded.operators, BTreeMap::from([(count, state(1))]));
        // A stateless subtask still learns which checkpoint it restores.
        let bytes = restore_json(&plan, VertexId(0), SubtaskIndex(0), &metadata).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["checkpoint"], 3);
        assert!(v["operators"].as_object().unwrap().is_empty());
    }

    #[test]
    fn a_lost_taskmanager_outranks_a_task_that_lost_its_peer() {
        let secondary = Failure {
            cause: "a".into(),
            kind: FailureKind::Task { primary: false },
            detected_ms: 0,
        };
        let lost = Failure {
            cause: "b".into(),
            kind: FailureKind::TaskManagerLost {
                taskmanager: TaskManagerId::new("tm").unwrap(),
                last_heartbeat_ms: 0,
            },
            detected_ms: 0,
        };
        assert!(lost.rank() > secondary.rank());
    }
}
