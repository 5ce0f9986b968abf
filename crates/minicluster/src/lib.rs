//! Flink's MiniCluster for Weir: a JobManager (its own Dispatcher, ResourceManager and
//! JobMaster) and one TaskManager, both inside this process. `weir local --taskmanagers 0`,
//! `weir bench` and the in-process tests run jobs here, so every job in every mode is driven
//! by the one JobMaster.
//!
//! The TaskManager is [`weir_taskmanager::session::InProcessTaskManager`]: the same control
//! thread and task code as `weir taskmanager`, registered through
//! [`JobManagerHandle::connect_in_process`] — a session over in-memory channels that the
//! JobManager treats exactly like a gRPC one (registration checks, heartbeats, routing, the
//! sender checks of every message). Its jobs' channels are all in memory; it serves no
//! data-exchange port. The JobManager still binds its gRPC and REST ports, on loopback with
//! OS-chosen ports, so a running local job can be watched like a cluster's.
//!
//! Must not be a dependency of `weir-jobmanager`, `weir-taskmanager` or `weir-runtime`: it sits
//! above all three. Key types: [`MiniCluster`], [`MiniClusterOptions`], [`LocalJob`] (a job
//! built in this process, not from a catalog), [`JobOutcome`].

#![warn(missing_docs)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use weir_checkpoint::CheckpointConfig;
use weir_coordination::driver::CheckpointStatus;
use weir_coordination::restart::RestartStrategy;
use weir_graph::ParallelismSettings;
use weir_jobmanager::view::{CheckpointsView, JobDetails, JobState, RecoveriesView};
use weir_jobmanager::{
    FixedSettings, JobManager, JobManagerHandle, JobManagerOptions, JobSettings,
    JobSettingsResolver,
};
use weir_proto::v1;
use weir_runtime::{JobDefinition, RuntimeOptions};
use weir_state::StateBackendFactory;
use weir_storage::Store;
use weir_taskmanager::session::{
    register_message, Advertised, InProcessLink, InProcessTaskManager, IN_PROCESS_DATA_ADDRESS,
};
use weir_taskmanager::{BuiltJob, JobFactory, TaskManagerOptions};
use weir_types::JobId;

/// Why a mini cluster could not start or run a job.
#[derive(Debug, thiserror::Error)]
pub enum MiniClusterError {
    /// The JobManager did not start (ports, options, runtime).
    #[error(transparent)]
    JobManager(#[from] weir_jobmanager::JobManagerError),
    /// The TaskManager did not start (state directory, threads).
    #[error(transparent)]
    TaskManager(#[from] weir_taskmanager::TaskManagerError),
    /// The Dispatcher refused the job (bad plan or settings, nothing to resume).
    #[error(transparent)]
    Submit(#[from] weir_jobmanager::DispatchError),
    /// The job's graph is invalid (uids, parallelism).
    #[error(transparent)]
    Graph(#[from] weir_graph::GraphError),
    /// The plan could not be encoded for submission.
    #[error("cannot encode the plan: {0}")]
    Plan(String),
    /// The job vanished from the JobManager while it was followed.
    #[error("job {0} vanished from the JobManager")]
    Vanished(JobId),
}

/// How the mini cluster is set up.
#[derive(Clone, Debug)]
pub struct MiniClusterOptions {
    /// The JobManager's options; its addresses should stay on loopback with port 0.
    pub jobmanager: JobManagerOptions,
    /// The in-process TaskManager's slots.
    pub slots: u32,
    /// The TaskManager's local state (local recovery copies, restore downloads).
    pub state_dir: PathBuf,
}

impl MiniClusterOptions {
    /// Defaults with `slots` slots and state under `state_dir`: loopback ports chosen by the
    /// OS, the JobManager's default timeouts.
    pub fn new(slots: u32, state_dir: PathBuf) -> Self {
        let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        Self {
            jobmanager: JobManagerOptions {
                rpc_bind: loopback,
                rest_bind: loopback,
                ..JobManagerOptions::default()
            },
            slots,
            state_dir,
        }
    }
}

/// A JobManager and an in-process TaskManager (see the crate doc). Dropping it stops both:
/// the TaskManager first (its tasks are cancelled), then the JobManager.
pub struct MiniCluster {
    taskmanager: Option<InProcessTaskManager>,
    jobmanager: Option<JobManagerHandle>,
}

/// The id of the in-process TaskManager.
pub const TASKMANAGER_ID: &str = "local-tm";

impl MiniCluster {
    /// Starts the JobManager with `resolver` for job settings, then the TaskManager with
    /// `factory` to rebuild jobs, registered before this returns.
    pub fn start(
        options: MiniClusterOptions,
        resolver: Arc<dyn JobSettingsResolver>,
        factory: Arc<dyn JobFactory>,
    ) -> Result<Self, MiniClusterError> {
        let jobmanager = JobManager::start(options.jobmanager.clone(), resolver)?;
        let tm_options = TaskManagerOptions {
            leader_store: None,
            jobmanager: "in-process".into(),
            id: TASKMANAGER_ID.into(),
            slots: options.slots,
            state_dir: options.state_dir.clone(),
            data_bind: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
            // Its subtasks' figures reach the JobManager in its reports; no endpoint of its own.
            metrics_bind: None,
            // Its session and channels are in memory: no port of its own to guard.
            auth: None,
            tls: None,
        };
        let (up, inbound) = tokio::sync::mpsc::unbounded_channel();
        // The channel is open and unbounded: the first message cannot fail to queue.
        let _ = up.send(register_message(
            &tm_options,
            &Advertised {
                data: IN_PROCESS_DATA_ADDRESS.into(),
                metrics: String::new(),
            },
        ));
        let down = jobmanager.connect_in_process(inbound)?;
        let taskmanager =
            InProcessTaskManager::start(tm_options, factory, InProcessLink { up, down })?;
        let cluster = Self {
            taskmanager: Some(taskmanager),
            jobmanager: Some(jobmanager),
        };
        cluster.await_registration()?;
        Ok(cluster)
    }

    /// Waits (bounded) until the TaskManager's slots are known to the ResourceManager.
    fn await_registration(&self) -> Result<(), MiniClusterError> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.jobmanager().overview().taskmanagers > 0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(MiniClusterError::JobManager(
                    weir_jobmanager::JobManagerError::InProcess(
                        "the in-process TaskManager did not register within 10 s".into(),
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// The JobManager (submit, cancel, views).
    pub fn jobmanager(&self) -> &JobManagerHandle {
        self.jobmanager
            .as_ref()
            .expect("the JobManager lives as long as the cluster")
    }

    /// Submits `request` and follows the job to its end. Setting `cancel` cancels it.
    pub fn run(
        &self,
        request: v1::SubmitJobRequest,
        cancel: &AtomicBool,
    ) -> Result<JobOutcome, MiniClusterError> {
        let id = self.jobmanager().submit(request)?;
        self.wait(id, cancel)
    }

    /// Follows job `id` to its end, cancelling it once `cancel` is set.
    pub fn wait(&self, id: JobId, cancel: &AtomicBool) -> Result<JobOutcome, MiniClusterError> {
        let jm = self.jobmanager();
        let mut cancel_sent = false;
        loop {
            if cancel.load(Ordering::SeqCst) && !cancel_sent {
                let _ = jm.cancel(id);
                cancel_sent = true;
            }
            let details = jm.job(id).ok_or(MiniClusterError::Vanished(id))?;
            if details.state.is_terminal() {
                return Ok(JobOutcome {
                    id,
                    checkpoints: jm.checkpoints(id).ok_or(MiniClusterError::Vanished(id))?,
                    recoveries: jm.recoveries(id).ok_or(MiniClusterError::Vanished(id))?,
                    sync_pauses_us: jm.sync_pauses_us(id).unwrap_or_default(),
                    details,
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Runs a job built in this process (not from a catalog) to its end.
    pub fn run_local(
        options: MiniClusterOptions,
        job: LocalJob,
        cancel: &AtomicBool,
    ) -> Result<JobOutcome, MiniClusterError> {
        let plan = job.job.plan(job.parallelism)?;
        let name = plan.stream.job_name.clone();
        let (settings, mode_store) = match &job.checkpointing {
            Some(c) => (
                JobSettings {
                    checkpoint: Some(c.config),
                    store: Some(c.store.clone()),
                    restart: job.restart,
                    savepoint_dir: None,
                    s3: weir_storage::S3Options::default(),
                },
                Some((c.config.mode, c.store.clone())),
            ),
            None => (
                JobSettings {
                    checkpoint: None,
                    store: None,
                    restart: job.restart,
                    savepoint_dir: None,
                    s3: weir_storage::S3Options::default(),
                },
                None,
            ),
        };
        let plan_json =
            serde_json::to_vec(&plan).map_err(|e| MiniClusterError::Plan(e.to_string()))?;
        let slots = plan.slots_needed();
        let request = v1::SubmitJobRequest {
            job: Some(v1::JobSpec {
                job_id: job
                    .checkpointing
                    .as_ref()
                    .and_then(|c| c.job_id)
                    .map(|id| id.to_string())
                    .unwrap_or_default(),
                job_name: name,
                params: Default::default(),
                config: Default::default(),
                parallelism: job.parallelism.cli.unwrap_or(0),
            }),
            plan_json,
            resume: job.checkpointing.as_ref().is_some_and(|c| c.resume),
            ..Default::default()
        };
        let probe_store = job.checkpointing.as_ref().map(|c| c.store.clone());
        let factory = Arc::new(OneJob(
            Mutex::new(Some(BuiltJob {
                job: job.job,
                plan,
                options: job.options,
                state_backend: job.state_backend,
                checkpointing: mode_store,
            })),
            probe_store,
        ));
        let options = MiniClusterOptions {
            slots: options.slots.max(slots),
            ..options
        };
        let cluster = Self::start(options, Arc::new(FixedSettings(settings)), factory)?;
        cluster.run(request, cancel)
    }

    /// Stops the TaskManager, then the JobManager.
    pub fn stop(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        if let Some(jm) = self.jobmanager.take() {
            // The JobManager first tells the TaskManager to cancel everything, then closes
            // the session, which ends the TaskManager's loop.
            jm.shutdown();
        }
        if let Some(tm) = self.taskmanager.take() {
            tm.stop();
        }
    }
}

impl Drop for MiniCluster {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// A job built in this process, with everything the JobMaster and the TaskManager need.
pub struct LocalJob {
    /// The operators.
    pub job: JobDefinition,
    /// How its parallelism resolves.
    pub parallelism: ParallelismSettings,
    /// Data-plane tunables.
    pub options: RuntimeOptions,
    /// Keyed state backends.
    pub state_backend: Arc<dyn StateBackendFactory>,
    /// Checkpointing, when on.
    pub checkpointing: Option<LocalCheckpointing>,
    /// What to do when the job fails.
    pub restart: RestartStrategy,
}

/// Checkpointing of a [`LocalJob`].
#[derive(Clone)]
pub struct LocalCheckpointing {
    /// Interval, timeout, pauses, retention, mode.
    pub config: CheckpointConfig,
    /// The checkpoint root; the job's checkpoints live under `<root>/<job-id>/`.
    pub store: Store,
    /// The job's id (a new one when `None`).
    pub job_id: Option<JobId>,
    /// Resume `job_id` from its latest intact checkpoint.
    pub resume: bool,
}

/// Hands the one job of [`MiniCluster::run_local`] to the TaskManager.
struct OneJob(Mutex<Option<BuiltJob>>, Option<Store>);

impl JobFactory for OneJob {
    fn checkpoint_store(&self, _spec: &v1::JobSpec) -> Result<Option<Store>, String> {
        Ok(self.1.clone())
    }

    fn build(&self, spec: &v1::JobSpec) -> Result<BuiltJob, String> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .ok_or_else(|| {
                format!(
                    "job '{}' was already built once on this TaskManager",
                    spec.job_name
                )
            })
    }
}

/// How a job ended, as its JobMaster recorded it.
#[derive(Clone, Debug)]
pub struct JobOutcome {
    /// The job's id.
    pub id: JobId,
    /// State, timing, restarts, failure cause, records and state size.
    pub details: JobDetails,
    /// Every checkpoint triggered.
    pub checkpoints: CheckpointsView,
    /// Every recovery.
    pub recoveries: RecoveriesView,
    /// Every synchronous snapshot pause, in microseconds.
    pub sync_pauses_us: Vec<u64>,
}

impl JobOutcome {
    /// Whether every task finished.
    pub fn finished(&self) -> bool {
        self.details.state == JobState::Finished
    }

    /// The failure cause, when the job did not finish.
    pub fn failure(&self) -> Option<&str> {
        match self.details.state {
            JobState::Finished => None,
            _ => Some(self.details.failure_cause.as_deref().unwrap_or("cancelled")),
        }
    }

    /// Checkpoints that completed.
    pub fn completed_checkpoints(&self) -> usize {
        self.checkpoints
            .history
            .iter()
            .filter(|r| r.status == CheckpointStatus::Completed)
            .count()
    }

    /// The job's duration.
    pub fn duration(&self) -> Duration {
        Duration::from_millis(self.details.duration_ms)
    }

    /// Its plan's task count.
    pub fn tasks(&self) -> usize {
        self.details
            .vertices
            .iter()
            .map(|v| v.parallelism as usize)
            .sum()
    }
}
