//! The JobManager process of a Weir cluster (DESIGN §1, §5, §6, §7): the **Dispatcher**
//! (accepts jobs over gRPC, serves the REST API), the **ResourceManager** (TaskManagers, their
//! slots and heartbeats) and one **JobMaster** per job (scheduling, deployment, the checkpoint
//! coordinator, failover).
//!
//! Must not depend on `weir-runtime`, `weir-taskmanager`, `weir-state-rocksdb` or `weir-cli`:
//! the JobManager and the TaskManagers talk only through `weir-proto`, and the checkpoint
//! logic comes from `weir-checkpoint` / `weir-coordination`, shared with the embedded
//! executor. Configuration keys are parsed by the caller ([`JobSettingsResolver`]).
//!
//! Key types: [`JobManager::start`] → [`JobManagerHandle`]; [`JobManagerOptions`];
//! [`JobSettingsResolver`] / [`JobSettings`]; the JSON views in [`view`]; [`RecoveryRecord`];
//! the pure slot decision [`assign_slots`].
//!
//! # Runtime
//!
//! [`JobManager::start`] builds its own tokio runtime (2 worker threads named `weir-jm`) for
//! the gRPC server, the REST server, the heartbeat checker and the JobMasters' storage calls,
//! so it may be called from any thread, inside another runtime or not. Each JobMaster runs on
//! its own std thread. [`JobManagerHandle::shutdown`] (and dropping the handle) blocks for a
//! bounded time: from async code call it through `spawn_blocking`.
//!
//! # Flow of a job
//!
//! 1. **Submit** — `DispatcherService.SubmitJob` (module `dispatcher`): the plan is decoded and
//!    checked, the settings resolved, with `resume` the latest intact checkpoint loaded from
//!    storage. Bad plan or settings → `INVALID_ARGUMENT`; a job id that is still running →
//!    `ALREADY_EXISTS`; nothing to resume → `FAILED_PRECONDITION`. The job is CREATED and its
//!    JobMaster thread starts.
//! 2. **Schedule** — the JobMaster asks the ResourceManager for `slots_needed` slots
//!    ([`assign_slots`]). Not enough → it waits for TaskManagers up to
//!    `slot.request.timeout`; then the job FAILS with "job needs N slots but the cluster has M
//!    free (…); waited …".
//! 3. **Deploy** — `DeployTask` for every subtask to its TaskManager's control stream, with
//!    the locations of all subtasks and, when restoring, its `restore_json`. Job RUNNING.
//! 4. **Running** — tasks report their states; when all are RUNNING the attempt counts as
//!    running (restart backoff, recovery record).
//! 5. **Checkpoints** — with checkpointing, the coordinator triggers sources
//!    (`TriggerCheckpoint`), collects `CheckpointAck`s, writes `_metadata` last, then
//!    `NotifyCheckpointComplete`s every TaskManager of the attempt; declines and timeouts
//!    abort (`NotifyCheckpointAborted`); too many failures in a row fail the attempt.
//! 6. **Failover** — a task FAILED, a TaskManager lost (stream broken: at once; silent:
//!    after `heartbeat.timeout`) while holding live tasks, or too many failed checkpoints:
//!    RESTARTING, `CancelAttempt`, wait for the tasks (bounded by `cancel_timeout`), abort
//!    pending checkpoints, ask the restart strategy, wait its delay, schedule again (tasks
//!    whose TaskManager survived stay there), deploy attempt + 1 from the latest completed
//!    checkpoint. A damaged checkpoint falls back to the previous one without consuming a
//!    restart. Every failover leaves a [`RecoveryRecord`]. Restarts exhausted → FAILED with
//!    the cause and the strategy's reason.
//! 7. **End** — all tasks FINISHED → FINISHED (after the final checkpoint and `StopTasks`,
//!    with checkpointing). A client cancel → CANCELING → CANCELED. JobManager shutdown →
//!    every job CANCELED, then `Shutdown` to every TaskManager.

//!
//! # REST API
//!
//! JSON over HTTP on `rest_bind`; the shapes are the types of [`view`], shared with the
//! Dispatcher's `ListJobs`/`GetJob`:
//!
//! - `GET /overview` → [`view::Overview`]
//! - `GET /taskmanagers` → [`view::TaskManagersView`]
//! - `GET /jobs` → [`view::JobsView`]
//! - `GET /jobs/{id}` → [`view::JobDetails`]; `PATCH /jobs/{id}` cancels it (202)
//! - `GET /jobs/{id}/checkpoints` → [`view::CheckpointsView`]
//! - `GET /jobs/{id}/recoveries` → [`view::RecoveriesView`]
//!
//! Errors are [`view::ErrorBody`] `{"error": "…"}`: 404 for an unknown job (naming it) or
//! path, 409 for cancelling a job that already ended.

#![warn(missing_docs)]

mod cluster;
mod dispatcher;
mod error;
mod ha;
mod ids;
mod job_master;
mod live;
mod metrics;
mod options;
pub mod recovery;
mod resource_manager;
mod rest;
mod session;
mod settings;
mod slots;
mod ui;
pub mod view;

pub use dispatcher::LEASE_DURATION;
pub use error::{DispatchError, JobManagerError};
pub use ha::HaOptions;
pub use ids::TaskManagerId;
pub use options::{keys, JobManagerOptions};
pub use recovery::{RecoveryDurations, RecoveryRecord, RecoveryStatus, Rescale, SubtaskMove};
pub use settings::{FixedSettings, JobSettings, JobSettingsResolver};
pub use slots::{assign_slots, Assignment, NotEnoughSlots, SlotRef, TaskManagerSlots};

use cluster::{lock, Shared};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_stream::StreamExt;
use view::{CheckpointsView, JobDetails, JobsView, Overview, RecoveriesView, TaskManagersView};
use weir_proto::v1::dispatcher_service_server::DispatcherServiceServer;
use weir_proto::v1::job_manager_service_server::JobManagerServiceServer;
use weir_proto::v1::SubmitJobRequest;
use weir_types::JobId;

/// How long the servers get to stop after the JobManager closed every stream.
const SERVER_STOP_TIMEOUT: Duration = Duration::from_secs(2);

/// Starts JobManagers.
pub struct JobManager;

impl JobManager {
    /// Binds the gRPC (`rpc_bind`) and REST (`rest_bind`) listeners and starts serving on a
    /// runtime of the JobManager's own (see the crate doc).
    pub fn start(
        options: JobManagerOptions,
        resolver: Arc<dyn JobSettingsResolver>,
    ) -> Result<JobManagerHandle, JobManagerError> {
        Self::start_with_ha(options, resolver, None)
    }

    /// [`start`](Self::start), taking part in leader election when `ha` is given (see
    /// [`HaOptions`]): the JobManager stands by until it leads.
    pub fn start_with_ha(
        options: JobManagerOptions,
        resolver: Arc<dyn JobSettingsResolver>,
        ha: Option<HaOptions>,
    ) -> Result<JobManagerHandle, JobManagerError> {
        options.validate()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("weir-jm")
            .enable_all()
            .build()
            .map_err(JobManagerError::Runtime)?;
        let bind = |what: &'static str, addr: SocketAddr| {
            let err = |source| JobManagerError::Bind { what, addr, source };
            let l = std::net::TcpListener::bind(addr).map_err(err)?;
            l.set_nonblocking(true).map_err(err)?;
            let local = l.local_addr().map_err(err)?;
            Ok::<_, JobManagerError>((l, local))
        };
        let (rpc, rpc_addr) = bind("gRPC", options.rpc_bind)?;
        let (rest, rest_addr) = bind("REST", options.rest_bind)?;
        let shared = Arc::new(Shared::new(options, runtime.handle().clone(), resolver, ha));
        let _entered = runtime.enter();
        let rpc =
            tokio::net::TcpListener::from_std(rpc).map_err(|source| JobManagerError::Bind {
                what: "gRPC",
                addr: rpc_addr,
                source,
            })?;
        let rest =
            tokio::net::TcpListener::from_std(rest).map_err(|source| JobManagerError::Bind {
                what: "REST",
                addr: rest_addr,
                source,
            })?;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        use tonic::service::interceptor::InterceptedService;
        let grpc = {
            let mut stop = stop_rx.clone();
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(rpc).map(|s| {
                s.inspect(|s| {
                    let _ = s.set_nodelay(true);
                })
            });
            let auth = weir_security::ServerAuth::new(shared.options.auth.clone());
            let mut builder = tonic::transport::Server::builder();
            if let Some(tls) = &shared.options.tls {
                builder = builder
                    .tls_config(tls.grpc_server())
                    .map_err(|e| JobManagerError::Tls(e.to_string()))?;
            }
            let server = builder
                .add_service(InterceptedService::new(
                    JobManagerServiceServer::new(session::SessionService {
                        shared: shared.clone(),
                    }),
                    auth.clone(),
                ))
                .add_service(InterceptedService::new(
                    DispatcherServiceServer::new(dispatcher::DispatcherRpc {
                        shared: shared.clone(),
                    }),
                    auth,
                ))
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = stop.changed().await;
                });
            runtime.spawn(async move {
                if let Err(e) = server.await {
                    tracing::error!(error = %e, "the gRPC server stopped");
                }
            })
        };
        let rest_server = {
            let mut stop = stop_rx.clone();
            let app = rest::router(shared.clone());
            let stopped = async move {
                let _ = stop.changed().await;
            };
            match &shared.options.tls {
                Some(tls) => {
                    let config = tls.rustls_server().map_err(JobManagerError::Tls)?;
                    let listener =
                        weir_security::TlsListener::new(rest, config).map_err(|source| {
                            JobManagerError::Bind {
                                what: "REST",
                                addr: rest_addr,
                                source,
                            }
                        })?;
                    runtime.spawn(async move {
                        let served = axum::serve(listener, app)
                            .with_graceful_shutdown(stopped)
                            .await;
                        if let Err(e) = served {
                            tracing::error!(error = %e, "the REST server stopped");
                        }
                    })
                }
                None => runtime.spawn(async move {
                    let served = axum::serve(rest, app).with_graceful_shutdown(stopped).await;
                    if let Err(e) = served {
                        tracing::error!(error = %e, "the REST server stopped");
                    }
                }),
            }
        };
        let heartbeats = runtime.spawn(session::check_heartbeats(shared.clone(), stop_rx));
        let mut tasks = vec![grpc, rest_server, heartbeats];
        if shared.ha.is_some() {
            tasks.push(runtime.spawn(ha::run(
                shared.clone(),
                format!("http://{rpc_addr}"),
                format!("http://{rest_addr}"),
            )));
        }
        tracing::info!(%rpc_addr, %rest_addr, ha = shared.ha.is_some(), "JobManager started");
        drop(_entered);
        Ok(JobManagerHandle {
            shared,
            rpc_addr,
            rest_addr,
            runtime: Some(runtime),
            stop: stop_tx,
            tasks,
        })
    }
}

/// A running JobManager. Dropping it shuts it down (as [`JobManagerHandle::shutdown`]).
pub struct JobManagerHandle {
    shared: Arc<Shared>,
    rpc_addr: SocketAddr,
    rest_addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl JobManagerHandle {
    /// Where the gRPC services (TaskManager sessions, the Dispatcher) listen.
    pub fn rpc_addr(&self) -> SocketAddr {
        self.rpc_addr
    }

    /// Where the REST API listens.
    pub fn rest_addr(&self) -> SocketAddr {
        self.rest_addr
    }

    /// The epoch this JobManager leads with (high availability); `None` while it stands by
    /// (or without high availability).
    pub fn leader_epoch(&self) -> Option<u64> {
        self.shared.ha.as_ref().and_then(|ha| ha.epoch())
    }

    /// Submits a job as `DispatcherService.SubmitJob` does. Blocks while storage is read for
    /// `resume`; do not call from async code.
    pub fn submit(&self, request: SubmitJobRequest) -> Result<JobId, DispatchError> {
        dispatcher::submit(&self.shared, request)
    }

    /// Cancels a job as `DispatcherService.CancelJob` does.
    pub fn cancel(&self, job: JobId) -> Result<(), DispatchError> {
        self.shared.cancel(&job.to_string())
    }

    /// Triggers a savepoint as `DispatcherService.TriggerSavepoint` does (`format`:
    /// `canonical` or `native`); returns its request id. Blocks (bounded) for the JobMaster's
    /// answer.
    pub fn trigger_savepoint(
        &self,
        job: JobId,
        target: Option<&str>,
        format: &str,
        stop: bool,
    ) -> Result<u64, DispatchError> {
        let request =
            dispatcher::savepoint_request(target.unwrap_or_default(), format, stop, false)?;
        self.shared.trigger_savepoint(&job.to_string(), request)
    }

    /// `GET /jobs/{id}/savepoints/{request}`.
    pub fn savepoint(
        &self,
        job: JobId,
        request: u64,
    ) -> Result<view::SavepointOperation, DispatchError> {
        self.shared.savepoint_status(&job.to_string(), request)
    }

    /// `GET /overview`.
    pub fn overview(&self) -> Overview {
        self.shared.overview()
    }

    /// `GET /taskmanagers`.
    pub fn taskmanagers(&self) -> TaskManagersView {
        self.shared
            .resources()
            .view(weir_coordination::driver::now_ms())
    }

    /// `GET /jobs`.
    pub fn jobs(&self) -> JobsView {
        self.shared.jobs_view()
    }

    /// `GET /jobs/{id}`.
    pub fn job(&self, job: JobId) -> Option<JobDetails> {
        let status = self.shared.job_status(&job.to_string()).ok()?;
        Some(status.details(weir_coordination::driver::now_ms()))
    }

    /// `GET /jobs/{id}/checkpoints`.
    pub fn checkpoints(&self, job: JobId) -> Option<CheckpointsView> {
        Some(self.shared.job_status(&job.to_string()).ok()?.checkpoints())
    }

    /// `GET /jobs/{id}/recoveries`.
    pub fn recoveries(&self, job: JobId) -> Option<RecoveriesView> {
        Some(self.shared.job_status(&job.to_string()).ok()?.recoveries())
    }

    /// Every synchronous snapshot pause of `job`'s tasks so far, in microseconds (reported by
    /// the TaskManagers as each attempt's tasks there end; for benchmarks).
    pub fn sync_pauses_us(&self, job: JobId) -> Option<Vec<u64>> {
        Some(
            self.shared
                .job_status(&job.to_string())
                .ok()?
                .sync_pauses_us,
        )
    }

    /// Opens a TaskManager session over in-memory channels instead of gRPC: `inbound` carries
    /// the TaskManager's messages, starting with `Register`; the answer carries the
    /// JobManager's, starting with `Registered` (or `Refused`). From then on the session is
    /// the same as a remote one: same registration checks, heartbeats, routing and loss
    /// detection (the channel closing is a broken stream). Blocks until `Register` arrived
    /// (bounded); do not call from async code.
    pub fn connect_in_process(
        &self,
        inbound: tokio::sync::mpsc::UnboundedReceiver<weir_proto::v1::TaskManagerMessage>,
    ) -> Result<
        tokio::sync::mpsc::UnboundedReceiver<
            Result<weir_proto::v1::JobManagerMessage, tonic::Status>,
        >,
        JobManagerError,
    > {
        let shared = self.shared.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        self.shared.runtime.spawn(async move {
            let mut inbound = tokio_stream::wrappers::UnboundedReceiverStream::new(inbound)
                .map(Ok::<_, tonic::Status>);
            let accepted = match session::first_register(&mut inbound).await {
                Ok(register) => session::accept(&shared, register, inbound),
                Err(status) => Err(status),
            };
            let _ = tx.send(accepted);
        });
        rx.recv()
            .map_err(|_| JobManagerError::InProcess("the JobManager runtime stopped".into()))?
            .map_err(|status| JobManagerError::InProcess(status.message().to_string()))
    }

    /// Stops the JobManager, in this order (each wait bounded):
    ///
    /// 1. new submissions and registrations are refused;
    /// 2. every JobMaster cancels its job (`CancelAttempt`, up to `cancel_timeout`) and ends
    ///    it CANCELED;
    /// 3. every TaskManager gets `Shutdown` and its control stream is closed;
    /// 4. the gRPC and REST servers stop, then the runtime.
    pub fn shutdown(mut self) {
        self.stop_everything();
    }

    fn stop_everything(&mut self) {
        let Some(runtime) = self.runtime.take() else {
            return;
        };
        tracing::info!("JobManager shutting down");
        self.shared.shutting_down.store(true, Ordering::SeqCst);
        // 2. Jobs.
        let threads: Vec<std::thread::JoinHandle<()>> = {
            let mut jobs = lock(&self.shared.jobs);
            jobs.values_mut()
                .filter_map(|e| {
                    let _ = e.inbox.send(job_master::JobMasterMsg::Shutdown);
                    e.thread.take()
                })
                .collect()
        };
        let deadline = Instant::now()
            + self.shared.options.cancel_timeout
            + job_master::LATE_ACK_GRACE
            + Duration::from_secs(2);
        for t in threads {
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if t.is_finished() {
                let _ = t.join();
            } else {
                tracing::warn!("a JobMaster did not stop in time; left behind");
            }
        }
        // 3. TaskManagers.
        self.shared
            .resources()
            .close_all(weir_proto::v1::job_manager_message::Kind::Shutdown(
                weir_proto::v1::Shutdown {
                    reason: "the JobManager shuts down".into(),
                },
            ));
        // 4. Servers, then the runtime.
        let _ = self.stop.send(true);
        let deadline = Instant::now() + SERVER_STOP_TIMEOUT;
        for t in &self.tasks {
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            t.abort();
        }
        if tokio::runtime::Handle::try_current().is_ok() {
            runtime.shutdown_background();
        } else {
            runtime.shutdown_timeout(Duration::from_secs(1));
        }
        tracing::info!("JobManager stopped");
    }
}

impl Drop for JobManagerHandle {
    fn drop(&mut self) {
        self.stop_everything();
    }
}

/// Fuzz targets run in this binary: no single allocation may exceed 1 GiB.
#[cfg(test)]
#[global_allocator]
static ALLOC: weir_fuzz::Bounded = weir_fuzz::Bounded::new(1 << 30);
