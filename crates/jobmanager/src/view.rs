//! The JSON the REST API and the Dispatcher's `ListJobs`/`GetJob` answer with: one definition,
//! serialised with serde, so `weir list --json` and `curl /jobs` agree.
//!
//! Times are milliseconds since the Unix epoch (`*_ms`), durations milliseconds; states are
//! Flink's upper-case names.

use crate::recovery::RecoveryRecord;
use serde::{Deserialize, Serialize};
use weir_coordination::driver::{CheckpointRecord, CheckpointStatus};
use weir_proto::v1::ExecutionState;
use weir_types::CheckpointId;

/// A job's state, as Flink names them.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobState {
    /// Submitted; waiting for slots for its first attempt.
    Created,
    /// An attempt is deployed (its tasks deploying or running).
    Running,
    /// A failure is being recovered: the old attempt is cancelled, the restart delay waited,
    /// slots requested.
    Restarting,
    /// Every task finished.
    Finished,
    /// The job failed: the restart strategy gave up, or it could not be scheduled or
    /// restored. The cause is kept.
    Failed,
    /// A client cancelled it; its tasks are being cancelled.
    Canceling,
    /// Cancelled (by a client, or because the JobManager shut down).
    Canceled,
}

impl JobState {
    /// Whether the job will never change state again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Finished | JobState::Failed | JobState::Canceled
        )
    }
}

/// The name of a task state, without the proto prefix: `RUNNING`.
pub fn execution_state_name(state: ExecutionState) -> &'static str {
    match state {
        ExecutionState::Unspecified => "UNSPECIFIED",
        ExecutionState::Created => "CREATED",
        ExecutionState::Scheduled => "SCHEDULED",
        ExecutionState::Deploying => "DEPLOYING",
        ExecutionState::Running => "RUNNING",
        ExecutionState::Finished => "FINISHED",
        ExecutionState::Canceling => "CANCELING",
        ExecutionState::Canceled => "CANCELED",
        ExecutionState::Failed => "FAILED",
    }
}

/// `GET /overview`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Overview {
    /// Live TaskManagers.
    pub taskmanagers: u32,
    /// Their slots.
    pub slots_total: u32,
    /// Of which free.
    pub slots_free: u32,
    /// Jobs not in a terminal state (CREATED, RUNNING, RESTARTING, CANCELING).
    pub jobs_running: u32,
    /// FINISHED jobs.
    pub jobs_finished: u32,
    /// FAILED jobs.
    pub jobs_failed: u32,
    /// CANCELED jobs.
    pub jobs_canceled: u32,
}

/// `GET /taskmanagers`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskManagersView {
    /// Live TaskManagers, by id.
    pub taskmanagers: Vec<TaskManagerInfo>,
    /// The latest TaskManagers declared lost, newest first (at most 64).
    pub lost: Vec<LostTaskManagerInfo>,
}

/// One live TaskManager.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskManagerInfo {
    /// Its id.
    pub id: String,
    /// `host:port` of its data exchange service.
    pub data_address: String,
    /// `ip:port` of its Prometheus `/metrics` endpoint, when it serves one.
    #[serde(default)]
    pub metrics_address: Option<String>,
    /// Its process id.
    pub pid: u32,
    /// When it registered.
    pub registered_ms: u64,
    /// How long since it registered.
    pub uptime_ms: u64,
    /// How long since its last message (heartbeat or other).
    pub last_heartbeat_age_ms: u64,
    /// Its slots.
    pub slots_total: u32,
    /// Of which free.
    pub slots_free: u32,
    /// The used ones.
    pub slots_used: Vec<SlotUse>,
}

/// A used slot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotUse {
    /// The slot's index on its TaskManager.
    pub slot: u32,
    /// The job holding it.
    pub job: String,
    /// The job's slot index (subtask `job_slot` of every vertex runs here).
    pub job_slot: u32,
}

/// A TaskManager declared lost.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LostTaskManagerInfo {
    /// Its id.
    pub id: String,
    /// Its data address.
    pub data_address: String,
    /// Its process id.
    pub pid: u32,
    /// When it was declared lost.
    pub detected_ms: u64,
    /// Its last message before.
    pub last_heartbeat_ms: u64,
    /// Why: its stream broke or closed, or its heartbeats stopped.
    pub reason: String,
}

/// `GET /jobs` (and `ListJobs`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobsView {
    /// Every job this JobManager knows, oldest submission first.
    pub jobs: Vec<JobSummary>,
}

/// One line of `/jobs`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSummary {
    /// 32 hex digits.
    pub id: String,
    /// The job's name.
    pub name: String,
    /// Its state.
    pub state: JobState,
    /// Submission time.
    pub start_ms: u64,
    /// When it reached a terminal state.
    pub end_ms: Option<u64>,
    /// Start to end (or to now).
    pub duration_ms: u64,
    /// The current (or last) attempt, from 0.
    pub attempt: u32,
    /// Attempts deployed after the first (restarts).
    pub restarts: u32,
    /// Tasks of the current attempt, and how many of them are RUNNING.
    pub tasks_total: u32,
    /// See `tasks_total`.
    pub tasks_running: u32,
    /// Records per second its sources emit, over the last seconds of reports.
    #[serde(default)]
    pub records_per_s: u64,
    /// How long ago its latest completed checkpoint was triggered.
    #[serde(default)]
    pub last_checkpoint_age_ms: Option<u64>,
}

/// `GET /jobs/{id}` (and `GetJob.job_json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobDetails {
    /// 32 hex digits.
    pub id: String,
    /// The job's name.
    pub name: String,
    /// Its state.
    pub state: JobState,
    /// Submission time.
    pub start_ms: u64,
    /// When it reached a terminal state.
    pub end_ms: Option<u64>,
    /// Start to end (or to now).
    pub duration_ms: u64,
    /// The current (or last) attempt, from 0.
    pub attempt: u32,
    /// Attempts deployed after the first.
    pub restarts: u32,
    /// The root cause of the last failure (kept when the job failed).
    pub failure_cause: Option<String>,
    /// Slots the job needs (its largest parallelism).
    pub slots_needed: u32,
    /// Whether checkpointing is on.
    pub checkpointing: bool,
    /// The restart strategy (`restart-strategy.type`).
    pub restart_strategy: String,
    /// The checkpoint the current attempt restored, if any.
    pub restored_from: Option<CheckpointId>,
    /// Vertices in topological order.
    pub vertices: Vec<VertexDetails>,
    /// State per operator uid in the latest completed checkpoint: bytes of its files and inline
    /// state over its subtasks.
    #[serde(default)]
    pub operator_state_bytes: std::collections::BTreeMap<String, u64>,
    /// The JobGraph's edges, between vertex ids.
    #[serde(default)]
    pub edges: Vec<EdgeDetails>,
    /// Records per second its sources emit, over the last seconds of reports.
    #[serde(default)]
    pub records_per_s: u64,
    /// What the job's tasks did, as their TaskManagers reported it when each attempt's tasks
    /// there ended (zero while the first attempt runs).
    #[serde(default)]
    pub metrics: JobIoMetrics,
    /// The job ended and its JobMaster is done with its checkpoint folder: deletions settled,
    /// leftovers swept, the folder's lease released (a new run of the id may start).
    #[serde(default)]
    pub cleaned_up: bool,
}

/// Records and state of a job, over its attempts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobIoMetrics {
    /// Records the sources emitted, over every attempt (replayed records count again).
    pub source_records: u64,
    /// Records the sinks wrote, over every attempt.
    pub sink_records: u64,
    /// Keyed state at end of input of the last attempt, in bytes.
    pub state_bytes: u64,
}

/// A JobGraph vertex of `/jobs/{id}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VertexDetails {
    /// The vertex id.
    pub id: u32,
    /// The chained operators' names.
    pub name: String,
    /// Its parallelism.
    pub parallelism: u32,
    /// Whether it holds keyed state.
    pub keyed: bool,
    /// Whether it starts with a source.
    pub source: bool,
    /// One entry per subtask.
    pub subtasks: Vec<SubtaskDetails>,
    /// What its subtasks of the current attempt reported (zeros with `metrics.enabled: false`).
    #[serde(default)]
    pub metrics: VertexMetrics,
}

/// A vertex's live figures (current attempt).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VertexMetrics {
    /// Records its subtasks read from their input channels.
    pub records_in: u64,
    /// Records its subtasks wrote to their output channels.
    pub records_out: u64,
    /// Encoded bytes received from other TaskManagers.
    pub bytes_in: u64,
    /// Encoded bytes sent to other TaskManagers.
    pub bytes_out: u64,
    /// Records read per second over the last seconds.
    pub records_in_per_s: u64,
    /// Records written per second over the last seconds.
    pub records_out_per_s: u64,
    /// The busiest subtask's share of time waiting for room in its output, in percent.
    pub backpressured_pct: u32,
}

/// A JobGraph edge of `/jobs/{id}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeDetails {
    /// The upstream vertex.
    pub source: u32,
    /// The downstream vertex.
    pub target: u32,
    /// FORWARD, HASH, REBALANCE, RESCALE or BROADCAST.
    pub partitioner: String,
}

/// A subtask of `/jobs/{id}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubtaskDetails {
    /// The subtask index.
    pub subtask: u32,
    /// CREATED, SCHEDULED, DEPLOYING, RUNNING, FINISHED, CANCELING, CANCELED or FAILED.
    pub state: String,
    /// Where it runs (or ran).
    pub taskmanager: Option<String>,
    /// The slot index on that TaskManager.
    pub slot: Option<u32>,
    /// That TaskManager's process id, while it is registered.
    #[serde(default)]
    pub taskmanager_pid: Option<u32>,
    /// The attempt it belongs to.
    pub attempt: u32,
    /// FAILED only: the error.
    pub failure: Option<String>,
    /// Records it read (current attempt, as last reported).
    #[serde(default)]
    pub records_in: u64,
    /// Records it wrote.
    #[serde(default)]
    pub records_out: u64,
    /// Its share of time waiting for room in its output, in percent.
    #[serde(default)]
    pub backpressured_pct: u32,
}

/// `GET /jobs/{id}/checkpoints` (and `GetJob.checkpoints_json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointsView {
    /// The job.
    pub job: String,
    /// Whether checkpointing is on.
    pub checkpointing: bool,
    /// Completed, aborted and in-progress checkpoints in `history`.
    pub counts: CheckpointCounts,
    /// The latest completed checkpoint this JobManager knows (also one restored on resume).
    pub latest_completed: Option<CheckpointId>,
    /// Every checkpoint triggered, oldest first (the last 10 000).
    pub history: Vec<CheckpointRecord>,
}

/// Counts of `/jobs/{id}/checkpoints`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointCounts {
    /// Completed.
    pub completed: u32,
    /// Aborted.
    pub aborted: u32,
    /// In progress.
    pub in_progress: u32,
}

impl CheckpointCounts {
    /// Counts `history`.
    pub fn of(history: &[CheckpointRecord]) -> Self {
        let mut c = Self::default();
        for r in history {
            match r.status {
                CheckpointStatus::Completed => c.completed += 1,
                CheckpointStatus::Aborted(_) => c.aborted += 1,
                CheckpointStatus::InProgress => c.in_progress += 1,
            }
        }
        c
    }
}

/// `GET /jobs/{id}/recoveries` (and `GetJob.recoveries_json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveriesView {
    /// The job.
    pub job: String,
    /// One record per failover, oldest first.
    pub recoveries: Vec<RecoveryRecord>,
}

/// The body of every REST error.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What is wrong, naming the job or path.
    pub error: String,
}

/// Where a savepoint request stands (`GET /jobs/{id}/savepoints/{request}`, `GetSavepoint`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SavepointState {
    /// Triggered; tasks are writing it.
    InProgress,
    /// Its `_metadata` is durable at `location`.
    Completed,
    /// Aborted or refused; `failure_cause` says why (its folder was removed).
    Failed,
}

/// One savepoint request of a job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavepointOperation {
    /// Names the request (the savepoint's checkpoint id).
    pub request_id: u64,
    /// `canonical` or `native`.
    pub format: String,
    /// The job stops with it.
    pub stop: bool,
    /// Where it stands.
    pub status: SavepointState,
    /// The savepoint's folder URL (what `-s` takes), once completed.
    pub location: Option<String>,
    /// Why it failed.
    pub failure_cause: Option<String>,
    /// Trigger time, ms since the Unix epoch.
    pub trigger_ms: u64,
    /// Completion or failure time.
    pub end_ms: Option<u64>,
}
