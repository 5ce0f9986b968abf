//! What every part of the JobManager shares: the ResourceManager, the job table, the runtime.
//!
//! Locks: `resources` and `jobs` are never held together; a job's status lock is taken under
//! `jobs` or alone, never the other way round. No lock is held across I/O or a wait.

use crate::error::DispatchError;
use crate::ids::TaskManagerId;
use crate::job_master::JobMasterMsg;
use crate::options::JobManagerOptions;
use crate::recovery::RecoveryRecord;
use crate::resource_manager::{LostTaskManager, ResourceManager};
use crate::settings::JobSettingsResolver;
use crate::view::{
    CheckpointCounts, CheckpointsView, JobDetails, JobState, JobSummary, JobsView, Overview,
    RecoveriesView,
};
use crossbeam_channel::Sender;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use weir_coordination::driver::{now_ms, CheckpointRecord};
use weir_proto::v1::task_manager_message::Kind;
use weir_types::{CheckpointId, JobId};

/// What the JobMaster publishes for the REST API and `GetJob`.
#[derive(Clone, Debug)]
pub(crate) struct JobStatus {
    pub details: JobDetails,
    pub tasks_total: u32,
    pub tasks_running: u32,
    pub checkpoints: Vec<CheckpointRecord>,
    pub latest_completed: Option<CheckpointId>,
    pub recoveries: Vec<RecoveryRecord>,
    /// Every synchronous snapshot pause of every attempt, in microseconds (benchmarks).
    pub sync_pauses_us: Vec<u64>,
    /// Every savepoint request, oldest first.
    pub savepoints: Vec<crate::view::SavepointOperation>,
}

impl JobStatus {
    fn duration(&self, now: u64) -> u64 {
        self.details
            .end_ms
            .unwrap_or(now)
            .saturating_sub(self.details.start_ms)
    }

    pub fn summary(&self, now: u64) -> JobSummary {
        let d = &self.details;
        JobSummary {
            id: d.id.clone(),
            name: d.name.clone(),
            state: d.state,
            start_ms: d.start_ms,
            end_ms: d.end_ms,
            duration_ms: self.duration(now),
            attempt: d.attempt,
            restarts: d.restarts,
            tasks_total: self.tasks_total,
            tasks_running: self.tasks_running,
            records_per_s: if d.state == JobState::Running {
                d.records_per_s
            } else {
                0
            },
            last_checkpoint_age_ms: self.last_checkpoint_age_ms(now),
        }
    }

    /// How long ago the latest completed checkpoint (this JobManager knows of) was triggered.
    pub fn last_checkpoint_age_ms(&self, now: u64) -> Option<u64> {
        let latest = self.latest_completed?;
        self.checkpoints
            .iter()
            .rev()
            .find(|c| c.id == latest)
            .map(|c| now.saturating_sub(c.trigger_ms))
    }

    pub fn details(&self, now: u64) -> JobDetails {
        let mut d = self.details.clone();
        d.duration_ms = self.duration(now);
        d
    }

    pub fn checkpoints(&self) -> CheckpointsView {
        CheckpointsView {
            job: self.details.id.clone(),
            checkpointing: self.details.checkpointing,
            counts: CheckpointCounts::of(&self.checkpoints),
            latest_completed: self.latest_completed,
            history: self.checkpoints.clone(),
        }
    }

    pub fn recoveries(&self) -> RecoveriesView {
        RecoveriesView {
            job: self.details.id.clone(),
            recoveries: self.recoveries.clone(),
        }
    }
}

/// One job of the Dispatcher's table.
pub(crate) struct JobEntry {
    pub status: Arc<Mutex<JobStatus>>,
    pub inbox: Sender<JobMasterMsg>,
    pub thread: Option<std::thread::JoinHandle<()>>,
    /// Submission order (for `/jobs`).
    pub order: u64,
}

/// See the module doc.
pub(crate) struct Shared {
    pub options: JobManagerOptions,
    pub resources: Mutex<ResourceManager>,
    pub jobs: Mutex<BTreeMap<JobId, JobEntry>>,
    /// The JobManager's runtime: servers, and the storage calls of the JobMasters.
    pub runtime: tokio::runtime::Handle,
    pub resolver: Arc<dyn JobSettingsResolver>,
    pub shutting_down: AtomicBool,
    /// Storage probes of submissions waiting for their TaskManagers' answers, by probe id.
    pub probes: Mutex<BTreeMap<u64, ProbeWait>>,
    /// Leadership, with high availability on.
    pub ha: Option<Arc<crate::ha::HaState>>,
    /// `/metrics`.
    pub metrics: crate::metrics::JobManagerMetrics,
}

/// One submission's storage probe: who must answer, and where answers go.
pub(crate) struct ProbeWait {
    pub expected: std::collections::BTreeSet<TaskManagerId>,
    pub answers: std::sync::mpsc::Sender<(TaskManagerId, String)>,
}

/// Locks `m`, ignoring poisoning: every critical section leaves the data consistent.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    pub fn new(
        options: JobManagerOptions,
        runtime: tokio::runtime::Handle,
        resolver: Arc<dyn JobSettingsResolver>,
        ha: Option<crate::ha::HaOptions>,
    ) -> Self {
        Self {
            ha: ha.map(|o| Arc::new(crate::ha::HaState::new(o))),
            options,
            resources: Mutex::new(ResourceManager::default()),
            jobs: Mutex::new(BTreeMap::new()),
            runtime,
            resolver,
            shutting_down: AtomicBool::new(false),
            probes: Mutex::new(BTreeMap::new()),
            metrics: crate::metrics::JobManagerMetrics::default(),
        }
    }

    /// The Prometheus text of `/metrics`.
    pub fn metrics_text(&self) -> String {
        let statuses: Vec<JobStatus> = {
            let jobs = lock(&self.jobs);
            jobs.values().map(|e| lock(&e.status).clone()).collect()
        };
        let taskmanagers = self.resources().view(now_ms());
        self.metrics.render(&statuses, &taskmanagers, now_ms())
    }

    /// A TaskManager answered storage probe `probe_id`; an answer from one that was not asked
    /// is dropped.
    pub fn on_probe_answer(&self, from: &TaskManagerId, probe_id: u64, error: String) {
        let probes = lock(&self.probes);
        match probes.get(&probe_id) {
            Some(w) if w.expected.contains(from) => {
                let _ = w.answers.send((from.clone(), error));
            }
            _ => {
                tracing::warn!(taskmanager = %from, probe_id, "an unexpected storage probe answer dropped")
            }
        }
    }

    pub fn resources(&self) -> MutexGuard<'_, ResourceManager> {
        lock(&self.resources)
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Whether this JobManager may act (always, without high availability; while it leads
    /// within its lease, with it); `Err` names the leader or why not.
    pub fn may_act(&self) -> Result<(), DispatchError> {
        match &self.ha {
            None => Ok(()),
            Some(ha) => ha.may_act().map_err(DispatchError::Unavailable),
        }
    }

    /// The [`may_act`](Self::may_act) check for `_metadata` writes.
    pub fn fence(&self) -> weir_coordination::driver::Fence {
        match &self.ha {
            None => weir_coordination::driver::no_fence(),
            Some(ha) => {
                let ha = ha.clone();
                Arc::new(move || ha.may_act())
            }
        }
    }

    /// Hands a TaskManager's message about job `job_id` to that job's JobMaster; messages
    /// for jobs this JobManager does not know are logged and dropped.
    pub fn route(&self, from: &TaskManagerId, job_id: &str, kind: Kind) {
        let job = match JobId::parse(job_id) {
            Ok(j) => j,
            Err(e) => {
                tracing::warn!(taskmanager = %from, error = %e, "message with a bad job id dropped");
                return;
            }
        };
        let inbox = lock(&self.jobs).get(&job).map(|e| e.inbox.clone());
        match inbox {
            Some(inbox) => {
                if inbox
                    .send(JobMasterMsg::FromTaskManager {
                        from: from.clone(),
                        kind,
                    })
                    .is_err()
                {
                    tracing::debug!(%job, taskmanager = %from, "message for an ended job dropped");
                }
            }
            None => {
                tracing::warn!(%job, taskmanager = %from, "message for an unknown job dropped")
            }
        }
    }

    /// Declares `id` lost (its session `session` only, when given) and tells the JobMasters
    /// that held slots there.
    pub fn taskmanager_lost(&self, id: &TaskManagerId, session: Option<u64>, reason: String) {
        let Some(lost) = self.resources().mark_lost(id, session, reason, now_ms()) else {
            return;
        };
        if lost.jobs.is_empty() || self.is_shutting_down() {
            // Nothing ran there: a TaskManager that stops while idle is no failure.
            tracing::info!(
                taskmanager = %lost.id,
                reason = %lost.reason,
                "TaskManager left (it held no slots)"
            );
        } else {
            tracing::warn!(
                taskmanager = %lost.id,
                reason = %lost.reason,
                silent_ms = lost.detected_ms.saturating_sub(lost.last_heartbeat_ms),
                jobs = lost.jobs.len(),
                "TaskManager lost"
            );
        }
        let lost: Arc<LostTaskManager> = Arc::new(lost);
        let jobs = lock(&self.jobs);
        for job in &lost.jobs {
            if let Some(e) = jobs.get(job) {
                let _ = e.inbox.send(JobMasterMsg::TaskManagerLost(lost.clone()));
            }
        }
    }

    pub fn overview(&self) -> Overview {
        let (taskmanagers, slots_total, slots_free) = self.resources().slot_counts();
        let mut o = Overview {
            taskmanagers,
            slots_total,
            slots_free,
            jobs_running: 0,
            jobs_finished: 0,
            jobs_failed: 0,
            jobs_canceled: 0,
        };
        for e in lock(&self.jobs).values() {
            match lock(&e.status).details.state {
                JobState::Finished => o.jobs_finished += 1,
                JobState::Failed => o.jobs_failed += 1,
                JobState::Canceled => o.jobs_canceled += 1,
                _ => o.jobs_running += 1,
            }
        }
        o
    }

    pub fn jobs_view(&self) -> JobsView {
        let now = now_ms();
        let jobs = lock(&self.jobs);
        let mut entries: Vec<&JobEntry> = jobs.values().collect();
        entries.sort_by_key(|e| e.order);
        JobsView {
            jobs: entries
                .into_iter()
                .map(|e| lock(&e.status).summary(now))
                .collect(),
        }
    }

    /// The status of job `id` (as text, from a URL or a request).
    pub fn job_status(&self, id: &str) -> Result<JobStatus, DispatchError> {
        let job = JobId::parse(id).map_err(|_| DispatchError::UnknownJob(id.to_string()))?;
        let jobs = lock(&self.jobs);
        let entry = jobs
            .get(&job)
            .ok_or_else(|| DispatchError::UnknownJob(id.to_string()))?;
        let status = lock(&entry.status).clone();
        Ok(status)
    }

    /// Asks job `id`'s JobMaster to cancel it.
    pub fn cancel(&self, id: &str) -> Result<(), DispatchError> {
        let job = JobId::parse(id).map_err(|_| DispatchError::UnknownJob(id.to_string()))?;
        let jobs = lock(&self.jobs);
        let entry = jobs
            .get(&job)
            .ok_or_else(|| DispatchError::UnknownJob(id.to_string()))?;
        let state = lock(&entry.status).details.state;
        if state.is_terminal() {
            return Err(DispatchError::FailedPrecondition(format!(
                "job {job} is already {}",
                serde_json::to_value(state)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default()
            )));
        }
        entry
            .inbox
            .send(JobMasterMsg::Cancel)
            .map_err(|_| DispatchError::Internal(format!("the JobMaster of job {job} is gone")))
    }

    /// Asks job `id`'s JobMaster for a savepoint; returns the request id. Blocks (bounded)
    /// for the JobMaster's answer: call it from a blocking thread.
    pub(crate) fn trigger_savepoint(
        &self,
        id: &str,
        request: crate::job_master::SavepointRequest,
    ) -> Result<u64, DispatchError> {
        let job = JobId::parse(id).map_err(|_| DispatchError::UnknownJob(id.to_string()))?;
        let (reply, answer) = crossbeam_channel::bounded(1);
        {
            let jobs = lock(&self.jobs);
            let entry = jobs
                .get(&job)
                .ok_or_else(|| DispatchError::UnknownJob(id.to_string()))?;
            if lock(&entry.status).details.state.is_terminal() {
                return Err(DispatchError::FailedPrecondition(format!(
                    "job {job} has ended: no savepoint can be taken"
                )));
            }
            entry
                .inbox
                .send(JobMasterMsg::TriggerSavepoint { request, reply })
                .map_err(|_| {
                    DispatchError::Internal(format!("the JobMaster of job {job} is gone"))
                })?;
        }
        match answer.recv_timeout(SAVEPOINT_ANSWER_TIMEOUT) {
            Ok(Ok(request_id)) => Ok(request_id),
            Ok(Err(reason)) => Err(DispatchError::FailedPrecondition(reason)),
            Err(_) => Err(DispatchError::Internal(format!(
                "the JobMaster of job {job} did not answer the savepoint request within \
                 {SAVEPOINT_ANSWER_TIMEOUT:?}"
            ))),
        }
    }

    /// Savepoint request `request` of job `id`.
    pub fn savepoint_status(
        &self,
        id: &str,
        request: u64,
    ) -> Result<crate::view::SavepointOperation, DispatchError> {
        let status = self.job_status(id)?;
        status
            .savepoints
            .iter()
            .find(|s| s.request_id == request)
            .cloned()
            .ok_or_else(|| {
                DispatchError::InvalidArgument(format!(
                    "job {id} has no savepoint request {request}"
                ))
            })
    }
}

/// How long a savepoint request waits for its JobMaster's answer (it checks the target folder).
const SAVEPOINT_ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
