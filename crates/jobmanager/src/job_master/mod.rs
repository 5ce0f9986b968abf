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
    execution_state_name, EdgeDetails, JobDetails, JobIoMetrics, JobState, SubtaskDetails,
    VertexDetails, VertexMetrics,
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
    now_ms, settle_metadata, spawn_deletions, CheckpointRecord, CheckpointStatus, Driver,
    MetadataSink, MetadataWritten, TaskEvent, TaskGateway,
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
use weir_types::{AttemptId, Barrier, CheckpointId, JobId, SubtaskIndex, VertexId};

mod adaptive;
pub(crate) mod checkpoints;
mod gateway;
mod messages;
mod phase;
mod recoveries;
mod savepoints;
mod status;
#[cfg(test)]
mod tests;

pub(crate) use checkpoints::Checkpointing;
use checkpoints::{apply_outside, restore_json, with_driver, AttemptDriver, LeaseKeeper};
use gateway::ClusterGateway;
pub(crate) use gateway::TaskManagers;
use phase::JobPhase;
pub(crate) use savepoints::{RestorePoint, SavepointRequest};
pub(crate) use status::initial_status;

/// The loop's tick: checkpoint timers, slot polling, timeouts.
const TICK: Duration = Duration::from_millis(10);

/// After a job ended other than FINISHED, how long its late acks are still taken (so the
/// coordinator deletes their files).
pub(crate) const LATE_ACK_GRACE: Duration = Duration::from_secs(1);

/// Longest wait for in-flight `_metadata` writes before an attempt picks its checkpoint.
pub(crate) const METADATA_SETTLE_TIMEOUT: Duration = Duration::from_secs(60);

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
    /// The `_metadata` write of a checkpoint settled (off the JobMaster's thread).
    MetadataWritten(MetadataWritten),
    /// A client cancels the job.
    Cancel,
    /// The job's checkpoint folder was taken over by another owner, or its lease could not be
    /// renewed in time: stop writing at once and fail the job.
    LeaseLost(String),
    /// The JobManager shuts down.
    Shutdown,
    /// A client asks for a savepoint; the answer is its request id or why not.
    TriggerSavepoint {
        request: SavepointRequest,
        reply: Sender<Result<u64, String>>,
    },
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
    /// The cluster (the ResourceManager in production).
    pub cluster: Arc<dyn TaskManagers>,
    /// The JobManager's runtime.
    pub runtime: tokio::runtime::Handle,
    /// `slot.request.timeout`.
    pub slot_request_timeout: Duration,
    /// `jobmanager.cancel.timeout`.
    pub cancel_timeout: Duration,
    /// The savepoint or retained checkpoint the job starts from (`-s`), if any.
    pub external: Option<RestorePoint>,
    /// `jobmanager.scheduler: adaptive`: the resource-stabilization timeout.
    pub adaptive: Option<Duration>,
}

/// The fingerprint every `DeployTask` of `plan` carries: its JSON and this build.
pub(crate) fn fingerprint_of(plan: &Plan) -> String {
    let json = serde_json::to_vec(plan).unwrap_or_default();
    weir_proto::plan_fingerprint(&json, weir_proto::build_identity())
}

/// What TaskManagers reported of the job's attempts: the current attempt's reports by
/// TaskManager (the latest wins), and the earlier attempts folded into totals.
#[derive(Default)]
struct IoReports {
    attempt: AttemptId,
    current: BTreeMap<TaskManagerId, AttemptMetrics>,
    /// Records read and written by earlier attempts.
    earlier_records: (u64, u64),
    /// Sync pauses of earlier attempts, at most [`MAX_SYNC_PAUSES`].
    earlier_pauses: Vec<u64>,
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
    /// The job cannot run on the state it restores: no restart can help.
    Incompatible,
    /// Not a failure: the adaptive scheduler ends the attempt to run at parallelism `to`.
    Rescale { to: u32 },
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

/// See the module doc.
pub(crate) struct JobMaster {
    job: JobId,
    job_str: String,
    spec: JobSpec,
    plan: Plan,
    /// The cluster: slots and TaskManager sessions.
    cluster: Arc<dyn TaskManagers>,
    /// The plan's fingerprint, sent with every deployment.
    fingerprint: String,
    /// The JobManager's runtime: the checkpoint driver's storage calls, the lease keeper.
    runtime: tokio::runtime::Handle,
    /// `slot.request.timeout`.
    slot_request_timeout: Duration,
    /// `jobmanager.cancel.timeout`.
    cancel_timeout: Duration,
    inbox: Receiver<JobMasterMsg>,
    status: Arc<Mutex<JobStatus>>,
    cp: Option<Checkpointing>,
    tracker: RestartTracker,
    /// Where the job is in its life ([`JobPhase`]: every move goes through [`Self::enter`]).
    phase: JobPhase,
    /// The current (or last) attempt.
    attempt: AttemptId,
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
    /// The job ended and [`JobMaster::finish`] is done with its checkpoint folder.
    cleaned_up: bool,
    /// Checkpoint records before this index are settled and published.
    history_cursor: usize,
    aborted_notified: BTreeSet<CheckpointId>,
    /// The attempt before the current one and where its tasks ran: its late acks are still
    /// classified (so their files are deleted), but only from the TaskManager that ran them.
    previous_hosts: Option<(AttemptId, BTreeMap<TaskId, TaskManagerId>)>,
    /// What the job's tasks did, as their TaskManagers reported it.
    io: IoReports,
    /// Live figures of the current attempt (records/s, backpressure).
    live: crate::live::LiveFigures,
    /// Why the job's checkpoint folder is no longer this JobMaster's, if it was lost.
    lease_lost: Option<String>,
    /// Every savepoint request, by request id.
    savepoint_ops: BTreeMap<u64, crate::view::SavepointOperation>,
    /// A restore point outside the job's folder: the savepoint it started from, or the one it
    /// stopped with.
    external: Option<RestorePoint>,
    /// The adaptive scheduler, when the JobManager runs it.
    adaptive: Option<adaptive::Adaptive>,
}

impl JobMaster {
    pub(crate) fn new(mut s: JobMasterSetup) -> Self {
        let fingerprint = fingerprint_of(&s.plan);
        if let Some(cp) = s.checkpointing.as_mut() {
            let inbox = s.to_self.clone();
            cp.metadata_sink = Arc::new(move |m| {
                let _ = inbox.send(JobMasterMsg::MetadataWritten(m));
            });
            if let Some(lease) = cp.lease.take() {
                cp.lease_keeper = Some(LeaseKeeper::spawn(
                    &s.runtime,
                    lease,
                    cp.lease_duration,
                    s.to_self.clone(),
                ));
            }
        }
        let adaptive = s.adaptive.and_then(|d| adaptive::Adaptive::new(d, &s.plan));
        let ever_completed = s
            .checkpointing
            .as_ref()
            .is_some_and(|c| c.coordinator.store().latest().is_some());
        Self {
            job: s.job,
            job_str: s.job.to_string(),
            spec: s.spec,
            plan: s.plan,
            fingerprint,
            cluster: s.cluster,
            runtime: s.runtime,
            slot_request_timeout: s.slot_request_timeout,
            cancel_timeout: s.cancel_timeout,
            inbox: s.inbox,
            status: s.status,
            cp: s.checkpointing,
            tracker: RestartTracker::new(s.restart),
            phase: JobPhase::Created,
            attempt: AttemptId(0),
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
            cleaned_up: false,
            history_cursor: 0,
            aborted_notified: BTreeSet::new(),
            previous_hosts: None,
            io: IoReports::default(),
            live: crate::live::LiveFigures::default(),
            lease_lost: None,
            savepoint_ops: BTreeMap::new(),
            external: s.external,
            adaptive,
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
            if let Err(end) = self.settle_metadata_writes() {
                return end;
            }
            let restore = match self.restore_point() {
                Ok(r) => r,
                Err(detail) => return End::Failed(detail),
            };
            let assignment = match self.schedule() {
                Ok(a) => a,
                Err(Interrupted::Stop(stop)) => return End::Canceled(stop),
                Err(Interrupted::Timeout(message, free)) => {
                    if !self.deployed_any {
                        return End::Failed(message);
                    }
                    // Adaptive: run at what the free slots allow rather than fail.
                    if self.scale_down(free) {
                        continue;
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
                    if let FailureKind::Rescale { to } = f.kind {
                        let plan = self
                            .adaptive
                            .as_ref()
                            .and_then(|a| a.submitted.at_parallelism(to))
                            .and_then(Result::ok);
                        if let Some(plan) = plan {
                            self.switch_plan(to, plan, f.cause.clone());
                        }
                        continue;
                    }
                    if matches!(f.kind, FailureKind::Incompatible) {
                        return End::Failed(format!(
                            "{}; not restarted: the job cannot run on this state",
                            f.cause
                        ));
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
        match self
            .tracker
            .on_failure(now_ms(), u64::from(self.attempt.get()))
        {
            RestartDecision::Restart { delay_ms, attempt } => {
                tracing::warn!(attempt = %self.attempt, restart = attempt, delay_ms, cause = %f.cause, "job failed; restarting");
                self.enter(JobPhase::Restarting);
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
        self.enter(JobPhase::WaitingForSlots);
        let needed = self.plan.slots_needed();
        let timeout = self.slot_request_timeout;
        let deadline = Instant::now() + timeout;
        let mut logged = false;
        loop {
            if let Some(stop) = self.stop {
                return Err(Interrupted::Stop(stop));
            }
            let allocated = self.cluster.allocate(self.job, &self.previous, needed);
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
                        return Err(Interrupted::Timeout(
                            format!("{e}; waited {timeout:?} ({})", keys::SLOT_REQUEST_TIMEOUT),
                            e.free,
                        ));
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
    fn run_attempt(&mut self, assignment: Assignment, restore: Option<RestorePoint>) -> AttemptEnd {
        let attempt = if self.deployed_any {
            self.attempt.next()
        } else {
            AttemptId(0)
        };
        self.deployed_any = true;
        let previous_attempt = self.attempt;
        self.attempt = attempt;
        self.all_running = false;
        self.ended_input.clear();
        self.stop_sent = false;
        self.restored_from = restore.as_ref().map(|r| r.metadata.checkpoint_id);
        if !self.tasks.is_empty() {
            let hosts = self
                .tasks
                .iter()
                .map(|(t, s)| (*t, s.taskmanager.clone()))
                .collect();
            self.previous_hosts = Some((previous_attempt, hosts));
        }
        let span = tracing::info_span!("attempt", attempt = attempt.get());
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
            r.attempt = Some(attempt.get());
            r.scheduled_ms = Some(now_ms());
            r.restored_checkpoint = restore.as_ref().map(|r| r.metadata.checkpoint_id);
            r.moves = moves;
            r.refresh();
            tracing::info!(
                phase = "scheduled",
                recovery = r.id,
                attempt = attempt.get(),
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
            cluster: self.cluster.clone(),
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
        self.enter(JobPhase::Deploying);
        let mut failure = self.deploy(&assignment, restore.as_ref());
        if self.stop.is_none() && failure.is_none() {
            self.enter(JobPhase::Running);
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
                    with_driver(cp, &self.runtime, g, d, |d| d.on_tick());
                }
                self.sync_history();
                if failure.is_none() {
                    failure = self.watch_for_scale_up(&mut drv);
                }
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
                self.enter(JobPhase::Restarting);
            }
            None => self.enter(JobPhase::Cancelling),
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
        self.cluster.release_job(self.job);
        self.gateway = None;
        match failure {
            Some(f) => {
                if let Some(cp) = self.cp.as_mut() {
                    let actions = cp.coordinator.on_failover();
                    apply_outside(cp, &self.runtime, actions);
                }
                self.abandon_untriggered_savepoints(&format!("the job failed over: {}", f.cause));
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
        restore: Option<&RestorePoint>,
    ) -> Option<Failure> {
        // A JobManager that no longer leads deploys nothing: the leader runs the job now.
        if let Err(why) = self.cluster.may_act() {
            return Some(Failure {
                cause: format!("not deployed: {why}"),
                kind: FailureKind::Task { primary: true },
                detected_ms: now_ms(),
            });
        }
        let attempt = self.attempt;
        let mut locations = Vec::with_capacity(self.plan.execution.subtasks.len());
        for ev in &self.plan.execution.subtasks {
            let tm = &assignment.slots[ev.slot as usize].taskmanager;
            let Some(address) = self.cluster.data_address(tm) else {
                return Some(vanished(tm, "before deployment"));
            };
            locations.push(SubtaskLocation {
                vertex: ev.vertex.0,
                subtask: ev.subtask.0,
                taskmanager_id: tm.to_string(),
                data_address: address,
            });
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
            let sent = self.cluster.send(
                &tm,
                Down::Deploy(DeployTask {
                    task: Some(TaskKey::new(&self.job_str, attempt, ev.vertex, ev.subtask)),
                    job: Some(self.spec.clone()),
                    locations: locations.clone(),
                    restore_json,
                    plan_fingerprint: self.fingerprint.clone(),
                    build_id: weir_proto::build_identity().to_string(),
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
            checkpoint = ?restore.map(|r| r.metadata.checkpoint_id.0),
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
        for tm in &live {
            let sent = self.cluster.send(
                tm,
                Down::Cancel(CancelAttempt {
                    job_id: self.job_str.clone(),
                    attempt: self.attempt.get(),
                    reason: reason.clone(),
                }),
            );
            if !sent {
                gone.push(tm.clone());
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
        // Its subtasks' rates stop here: nothing shows records flowing while the job is down.
        self.live.stop_rates();
        self.publish();
        let timeout = self.cancel_timeout;
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

    /// Periodic bookkeeping of every loop: finished deletions dropped, status published.
    fn housekeeping(&mut self) {
        if let Some(cp) = self.cp.as_mut() {
            cp.deletions.retain(|d| !d.is_finished());
        }
        if self.dirty {
            self.publish();
        }
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
            apply_outside(cp, &self.runtime, actions);
        }
        self.sync_history();
        self.cluster.release_job(self.job);
        self.end_ms = Some(now_ms());
        self.enter(match state {
            JobState::Finished => JobPhase::Finished,
            JobState::Failed => JobPhase::Failed,
            _ => JobPhase::Canceled,
        });
        self.publish();
        match state {
            JobState::Failed => tracing::error!(
                attempt = %self.attempt,
                cause = self.failure_cause.as_deref().unwrap_or(""),
                "job failed"
            ),
            _ => tracing::info!(attempt = %self.attempt, state = ?state, "job ended"),
        }
        // Late acks of the last attempt: classified (discarded), so their files are deleted.
        if state != JobState::Finished && self.cp.is_some() && !self.cluster.is_shutting_down() {
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
        // `_metadata` writes still in flight settle before the lease goes (bounded).
        let until = Instant::now() + METADATA_SETTLE_TIMEOUT;
        while self.cp.as_ref().is_some_and(|cp| !cp.writing.is_empty()) {
            let now = Instant::now();
            if now >= until {
                tracing::warn!("_metadata writes did not settle in time; their checkpoints stay as the store left them");
                break;
            }
            match self.inbox.recv_timeout((until - now).min(TICK)) {
                Ok(msg) => {
                    self.handle(msg, &mut None, Mode::Between);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        if let Some(cp) = self.cp.as_mut() {
            for d in cp.deletions.drain(..) {
                let done = self
                    .runtime
                    .block_on(async { tokio::time::timeout(Duration::from_secs(30), d).await });
                if done.is_err() {
                    tracing::warn!("checkpoint file deletions did not end within 30 s");
                }
            }
            // The job is over and the folder still ours: what aborted checkpoints left (an
            // upload that landed after its checkpoint was aborted, a delete that failed) goes.
            let ended_here = self.lease_lost.is_none() && !self.cluster.is_shutting_down();
            if ended_here {
                let (store, paths) = (cp.store.clone(), cp.paths.clone());
                let swept = self.runtime.block_on(async {
                    tokio::time::timeout(
                        Duration::from_secs(30),
                        weir_coordination::resume::sweep_unreferenced(&store, &paths),
                    )
                    .await
                });
                match swept {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "the job's checkpoint folder was not swept")
                    }
                    Err(_) => tracing::warn!(
                        "the sweep of the job's checkpoint folder did not end within 30 s"
                    ),
                }
            }
            // Last: the folder is free for a resume once every write of this job is done.
            if let Some(keeper) = cp.lease_keeper.take() {
                keeper.release(&self.runtime);
            }
        }
        self.cleaned_up = true;
        self.publish();
    }
}

/// Why scheduling stopped without slots.
enum Interrupted {
    Stop(Stop),
    /// The message, and how many slots were free.
    Timeout(String, u32),
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
