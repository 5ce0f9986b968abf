//! The TaskManager's process loop: the data-exchange server, the session with the JobManager
//! (register, heartbeats, messages), and reconnecting with backoff when it breaks.

use crate::metrics::TaskManagerMetrics;
use crate::tasks::{now_ms, Outbox, TaskContext, Tasks};
use crate::{JobFactory, TaskManagerError, TaskManagerOptions};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tokio_stream::wrappers::{TcpListenerStream, UnboundedReceiverStream};
use tokio_stream::{Stream, StreamExt};
use weir_exchange::{ConnectOptions, Connections, ExchangeOptions, ExchangeService};
use weir_proto::v1::job_manager_service_client::JobManagerServiceClient;
use weir_proto::v1::{self, job_manager_message::Kind as Down, task_manager_message::Kind as Up};

/// How long a new session waits for `Registered`.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long opening a session may take: a live JobManager answers in milliseconds.
const SESSION_OPEN_TIMEOUT: Duration = Duration::from_secs(3);

/// How one session ended.
enum SessionEnd {
    /// Could not connect or the stream broke: try again after a backoff.
    Retry(String),
    /// The JobManager went silent (no heartbeat answer, or no answer to the session request):
    /// it hangs, is paused, or no longer leads. With several JobManagers, the others are tried
    /// first for a while ([`SILENT_SKIP`]) — a standby about to take over is the one to ask.
    Silent(String),
    /// A standby refused (it names the leader): try again soon, without a growing backoff,
    /// since it may lead any moment.
    Standby(String),
    /// The JobManager announced its shutdown, then closed the session: try again (quietly).
    JobManagerStopped,
}

/// How long a TaskManager passes over a JobManager that went silent while another one
/// answers (as a standby): a paused leader would otherwise hold each attempt for the whole
/// session-open timeout while a standby takes over.
const SILENT_SKIP: Duration = Duration::from_secs(30);

/// What every TaskManager runs whatever its session: the I/O runtime, the control thread
/// ([`Tasks`]) and the outbox its reports leave through.
struct Core {
    runtime: tokio::runtime::Runtime,
    outbox: Outbox,
    control_tx: crossbeam_channel::Sender<Down>,
    control: std::thread::JoinHandle<()>,
    exchange: ExchangeService,
    metrics: Arc<TaskManagerMetrics>,
}

impl Core {
    fn start(
        options: &TaskManagerOptions,
        factory: Arc<dyn JobFactory>,
    ) -> Result<Self, TaskManagerError> {
        std::fs::create_dir_all(&options.state_dir).map_err(|e| {
            TaskManagerError::Setup(format!(
                "state dir '{}' cannot be created: {e}",
                options.state_dir.display()
            ))
        })?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("weir-tm-io")
            .enable_all()
            .build()
            .map_err(|e| TaskManagerError::Setup(format!("cannot start the I/O runtime: {e}")))?;
        let exchange = ExchangeService::new(ExchangeOptions {
            auth: options.auth.clone(),
            ..ExchangeOptions::default()
        });
        let outbox = Outbox::default();
        let (control_tx, control_rx) = crossbeam_channel::unbounded::<Down>();
        let metrics = TaskManagerMetrics::new(options.slots);
        let tasks = Tasks::new(TaskContext {
            metrics: metrics.clone(),
            id: options.id.clone(),
            runtime: runtime.handle().clone(),
            exchange: exchange.clone(),
            connections: Connections::new(ConnectOptions {
                auth: options.auth.clone(),
                tls: options.tls.clone(),
                ..ConnectOptions::default()
            }),
            factory,
            state_dir: options.state_dir.clone(),
            outbox: outbox.clone(),
        });
        let control = std::thread::Builder::new()
            .name("tm-control".into())
            .spawn(move || tasks.run(control_rx))
            .map_err(|e| {
                TaskManagerError::Setup(format!("cannot start the control thread: {e}"))
            })?;
        Ok(Self {
            runtime,
            outbox,
            control_tx,
            control,
            exchange,
            metrics,
        })
    }

    /// Cancels every task, stops the control thread, then the runtime.
    fn stop(self, reason: &str) {
        self.outbox.set(None);
        let _ = self.control_tx.send(Down::Shutdown(v1::Shutdown {
            reason: reason.to_string(),
        }));
        drop(self.control_tx);
        let _ = self.control.join();
        self.runtime.shutdown_timeout(Duration::from_secs(2));
    }
}

/// Runs a TaskManager until `stop` is set or the JobManager refuses it. Blocks the caller.
pub fn run(
    options: TaskManagerOptions,
    factory: Arc<dyn JobFactory>,
    stop: Arc<AtomicBool>,
) -> Result<(), TaskManagerError> {
    let core = Core::start(&options, factory)?;
    let listener = core
        .runtime
        .block_on(tokio::net::TcpListener::bind(options.data_bind))
        .map_err(|e| {
            TaskManagerError::Setup(format!(
                "cannot bind the data-exchange port {}: {e}",
                options.data_bind
            ))
        })?;
    let data_address = listener
        .local_addr()
        .map_err(|e| TaskManagerError::Setup(e.to_string()))?
        .to_string();
    let server = core.exchange.server();
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &options.tls {
        builder = builder.tls_config(tls.grpc_server()).map_err(|e| {
            TaskManagerError::Setup(format!("the data plane's TLS configuration: {e}"))
        })?;
    }
    core.runtime.spawn(async move {
        let served = builder
            .add_service(server)
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "the data-exchange server stopped");
        }
    });
    let metrics_address = match options.metrics_bind {
        Some(bind) => {
            let listener = core
                .runtime
                .block_on(tokio::net::TcpListener::bind(bind))
                .map_err(|e| {
                    TaskManagerError::Setup(format!(
                        "cannot bind the metrics port {bind} (metrics.bind-host, metrics.port): {e}"
                    ))
                })?;
            let address = listener
                .local_addr()
                .map_err(|e| TaskManagerError::Setup(e.to_string()))?;
            let metrics = core.metrics.clone();
            let token = options.auth.clone();
            let render: Arc<dyn Fn() -> String + Send + Sync> = Arc::new(move || metrics.render());
            let allow: weir_metrics::Allow = Arc::new(move |authorization| {
                token.as_ref().is_none_or(|t| t.allows(authorization))
            });
            // With TLS on, /metrics is HTTPS too: a scrape carries the token.
            match &options.tls {
                Some(tls) => {
                    let config = tls.rustls_server().map_err(TaskManagerError::Setup)?;
                    let listener = {
                        let _entered = core.runtime.enter();
                        weir_security::TlsListener::new(listener, config)
                            .map_err(|e| TaskManagerError::Setup(e.to_string()))?
                    };
                    core.runtime
                        .spawn(weir_metrics::serve(listener, render, allow));
                }
                None => {
                    core.runtime
                        .spawn(weir_metrics::serve(listener, render, allow));
                }
            }
            address.to_string()
        }
        None => String::new(),
    };
    let advertised = Advertised {
        data: data_address,
        metrics: metrics_address,
    };
    tracing::info!(id = %options.id, slots = options.slots, data_address = %advertised.data, metrics = %advertised.metrics, jobmanager = %options.jobmanager, "TaskManager started");
    let mut backoff = options.initial_backoff;
    let jobmanagers: Vec<String> = options
        .jobmanager
        .split(',')
        .map(|u| u.trim().to_string())
        .filter(|u| !u.is_empty())
        .collect();
    if jobmanagers.is_empty() && options.leader_store.is_none() {
        return Err(TaskManagerError::Setup(format!(
            "--jobmanager '{}' names no JobManager",
            options.jobmanager
        )));
    }
    let mut next = 0usize;
    // The JobManager this TaskManager left because it went silent, and when.
    let mut silent: Option<(String, Instant)> = None;
    let skip_silent = |url: &str, silent: &Option<(String, Instant)>| {
        silent
            .as_ref()
            .is_some_and(|(s, since)| s == url && since.elapsed() < SILENT_SKIP)
    };
    let result = loop {
        if stop.load(Ordering::SeqCst) {
            break Ok(());
        }
        let (jobmanager, cycle_done) = match &options.leader_store {
            Some(store) => {
                match core
                    .runtime
                    .block_on(weir_coordination::leader::leader_address(store))
                {
                    Ok(Some(address)) if skip_silent(&address.rpc, &silent) => {
                        // The leader recorded there went silent: wait for the next one's address.
                        std::thread::sleep(options.initial_backoff);
                        continue;
                    }
                    Ok(Some(address)) => (address.rpc, true),
                    found => {
                        let reason = match found {
                            Err(e) => e.to_string(),
                            _ => "no leader has written its address yet".to_string(),
                        };
                        tracing::warn!(ha = %options.jobmanager, %reason, retry_in_ms = backoff.as_millis() as u64, "no JobManager address in the high-availability folder; retrying");
                        std::thread::sleep(backoff);
                        backoff = (backoff * 2).min(options.max_backoff);
                        continue;
                    }
                }
            }
            None => {
                let mut jobmanager = jobmanagers[next % jobmanagers.len()].clone();
                if jobmanagers.len() > 1 && skip_silent(&jobmanager, &silent) {
                    next += 1;
                    jobmanager = jobmanagers[next % jobmanagers.len()].clone();
                }
                next += 1;
                // Wait only after every JobManager was tried: a standby refuses at once.
                (jobmanager, next % jobmanagers.len() == 0)
            }
        };
        let jobmanager = &jobmanager;
        let outcome = core.runtime.block_on(session(
            &options,
            jobmanager,
            &advertised,
            &core.outbox,
            &core.control_tx,
            &stop,
            &mut backoff,
        ));
        core.outbox.set(None);
        if matches!(outcome, Ok(SessionEnd::Silent(_))) {
            silent = Some((jobmanager.clone(), Instant::now()));
        } else if matches!(
            outcome,
            Ok(SessionEnd::Retry(_) | SessionEnd::JobManagerStopped)
        ) {
            // Registered and then lost, or unreachable: no longer the silent one to pass over.
            if silent.as_ref().is_some_and(|(s, _)| s == jobmanager) {
                silent = None;
            }
        }
        match outcome {
            Ok(SessionEnd::Standby(reason)) => {
                if stop.load(Ordering::SeqCst) {
                    break Ok(());
                }
                tracing::info!(%jobmanager, %reason, "a standby refused; asking again soon");
                if cycle_done {
                    std::thread::sleep(options.initial_backoff);
                }
            }
            Ok(SessionEnd::Retry(reason) | SessionEnd::Silent(reason)) => {
                // Whatever ran belongs to a JobMaster that has given up on it.
                let _ = core.control_tx.send(Down::Shutdown(v1::Shutdown {
                    reason: format!("lost the JobManager: {reason}"),
                }));
                if stop.load(Ordering::SeqCst) {
                    break Ok(());
                }
                tracing::warn!(%jobmanager, %reason, retry_in_ms = backoff.as_millis() as u64, "no session with the JobManager; retrying");
                if cycle_done {
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(options.max_backoff);
                }
            }
            Ok(SessionEnd::JobManagerStopped) => {
                if stop.load(Ordering::SeqCst) {
                    break Ok(());
                }
                tracing::info!(%jobmanager, retry_in_ms = backoff.as_millis() as u64, "the JobManager shut down; waiting for it (or another) to lead");
                if cycle_done {
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(options.max_backoff);
                }
            }
            Err(e) => break Err(e),
        }
    };
    core.stop("the TaskManager is stopping");
    result
}

async fn session(
    options: &TaskManagerOptions,
    jobmanager: &str,
    advertised: &Advertised,
    outbox: &Outbox,
    control: &crossbeam_channel::Sender<Down>,
    stop: &Arc<AtomicBool>,
    backoff: &mut Duration,
) -> Result<SessionEnd, TaskManagerError> {
    let url = match &options.tls {
        Some(_) => weir_security::Tls::url(jobmanager),
        None => jobmanager.to_string(),
    };
    let endpoint = match tonic::transport::Endpoint::from_shared(url) {
        Ok(e) => e.connect_timeout(Duration::from_secs(1)).tcp_nodelay(true),
        Err(e) => {
            return Err(TaskManagerError::Setup(format!(
                "--jobmanager '{jobmanager}' is not a URL: {e}"
            )))
        }
    };
    let endpoint = match &options.tls {
        Some(tls) => endpoint.tls_config(tls.grpc_client()).map_err(|e| {
            TaskManagerError::Setup(format!("the JobManager session's TLS configuration: {e}"))
        })?,
        None => endpoint,
    };
    let channel = match endpoint.connect().await {
        Ok(c) => c,
        Err(e) => {
            return Ok(SessionEnd::Retry(format!(
                "cannot connect: {}",
                weir_runtime::error_chain(&e)
            )))
        }
    };
    let mut client = JobManagerServiceClient::with_interceptor(
        channel,
        weir_security::ClientAuth::new(options.auth.as_ref()),
    );
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let _ = tx.send(register_message(options, advertised));
    // Bounded: a JobManager that is paused (SIGSTOP) still completes TCP handshakes in the
    // kernel, but never answers; the next one must get its turn.
    let opened = tokio::time::timeout(
        SESSION_OPEN_TIMEOUT,
        client.session(UnboundedReceiverStream::new(rx)),
    )
    .await;
    let inbound = match opened {
        Ok(Ok(r)) => r.into_inner(),
        Ok(Err(status)) if status.code() == tonic::Code::Unauthenticated => {
            // Retrying cannot help: this TaskManager's token is not the cluster's.
            return Err(TaskManagerError::Refused {
                id: options.id.clone(),
                reason: format!(
                    "{} (this TaskManager's token is not the JobManager's: check \
                     security.auth.token or security.auth.token-file)",
                    status.message()
                ),
            });
        }
        Ok(Err(status)) if status.code() == tonic::Code::Unavailable => {
            return Ok(SessionEnd::Standby(format!(
                "the session was refused: {}",
                status.message()
            )))
        }
        Ok(Err(status)) => {
            return Ok(SessionEnd::Retry(format!(
                "the session was refused: {}",
                status.message()
            )))
        }
        Err(_) => {
            return Ok(SessionEnd::Silent(format!(
                "no answer to the session request within {SESSION_OPEN_TIMEOUT:?}"
            )))
        }
    };
    let end = drive(&options.id, inbound, tx, outbox, control, stop).await?;
    *backoff = options.initial_backoff;
    Ok(end)
}

/// The addresses a TaskManager registers with.
#[derive(Clone, Debug, Default)]
pub struct Advertised {
    /// `host:port` of its data-exchange service ([`IN_PROCESS_DATA_ADDRESS`] for none).
    pub data: String,
    /// `host:port` of its `/metrics` endpoint; empty when it serves none.
    pub metrics: String,
}

/// The first message of every session.
pub fn register_message(options: &TaskManagerOptions, at: &Advertised) -> v1::TaskManagerMessage {
    v1::TaskManagerMessage {
        kind: Some(Up::Register(v1::Register {
            taskmanager_id: options.id.clone(),
            slots: options.slots,
            data_address: at.data.clone(),
            pid: std::process::id(),
            build_id: weir_proto::build_identity().to_string(),
            metrics_address: at.metrics.clone(),
        })),
    }
}

/// One session after `Register` went out, whatever carries it (gRPC or in-memory channels):
/// waits for `Registered` (bounded), then sends heartbeats and hands every JobManager message
/// to the control thread until the stream ends, breaks or `stop` is set.
async fn drive<S>(
    id: &str,
    mut inbound: S,
    tx: UnboundedSender<v1::TaskManagerMessage>,
    outbox: &Outbox,
    control: &crossbeam_channel::Sender<Down>,
    stop: &Arc<AtomicBool>,
) -> Result<SessionEnd, TaskManagerError>
where
    S: Stream<Item = Result<v1::JobManagerMessage, tonic::Status>> + Unpin,
{
    let answer = match tokio::time::timeout(REGISTER_TIMEOUT, inbound.next()).await {
        Ok(answer) => answer,
        Err(_) => {
            return Ok(SessionEnd::Retry(format!(
                "no answer to Register within {REGISTER_TIMEOUT:?}"
            )))
        }
    };
    let (interval, timeout) = match answer {
        Some(Ok(v1::JobManagerMessage {
            kind: Some(Down::Registered(r)),
        })) => (r.heartbeat_interval_ms, r.heartbeat_timeout_ms),
        Some(Ok(v1::JobManagerMessage {
            kind: Some(Down::Refused(r)),
        })) => {
            return Err(TaskManagerError::Refused {
                id: id.to_string(),
                reason: r.reason,
            })
        }
        Some(Ok(other)) => {
            return Ok(SessionEnd::Retry(format!(
                "expected Registered, got {other:?}"
            )))
        }
        None => {
            return Ok(SessionEnd::Retry(
                "the session ended before Registered".into(),
            ))
        }
        Some(Err(status)) => {
            return Ok(SessionEnd::Retry(format!(
                "the session broke while registering: {}",
                status.message()
            )))
        }
    };
    tracing::info!(
        id,
        heartbeat_interval_ms = interval,
        heartbeat_timeout_ms = timeout,
        "registered with the JobManager"
    );
    outbox.set(Some(tx.clone()));
    let heartbeat = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(interval.max(10)));
        for sequence in 0u64.. {
            tick.tick().await;
            let beat = v1::TaskManagerMessage {
                kind: Some(Up::Heartbeat(v1::Heartbeat {
                    sequence,
                    sent_ms: now_ms(),
                })),
            };
            if tx.send(beat).is_err() {
                return;
            }
        }
    });
    let mut announced_stop = false;
    // The JobManager answers every heartbeat while it may act: silence for the heartbeat
    // timeout means it died, hangs, or no longer leads.
    let silence_limit = Duration::from_millis(timeout.max(interval.saturating_mul(2)).max(20));
    let mut last_heard = tokio::time::Instant::now();
    let end = loop {
        if stop.load(Ordering::SeqCst) {
            break SessionEnd::Retry("stopping".into());
        }
        let next = tokio::time::timeout(Duration::from_millis(200), inbound.next()).await;
        if next.is_ok() {
            last_heard = tokio::time::Instant::now();
        } else if last_heard.elapsed() > silence_limit {
            break SessionEnd::Silent(format!("the JobManager sent nothing for {silence_limit:?}"));
        }
        match next {
            Err(_) => continue,
            Ok(Some(Ok(v1::JobManagerMessage {
                kind: Some(Down::Heartbeat(_)),
            }))) => {}
            Ok(Some(Ok(v1::JobManagerMessage { kind: Some(kind) }))) => {
                announced_stop |= matches!(kind, Down::Shutdown(_));
                let _ = control.send(kind);
            }
            Ok(Some(Ok(_))) => tracing::warn!("an empty JobManager message is ignored"),
            Ok(None) if announced_stop => break SessionEnd::JobManagerStopped,
            Ok(None) => break SessionEnd::Retry("the JobManager closed the session".into()),
            Ok(Some(Err(status))) if announced_stop => {
                tracing::debug!(reason = %status.message(), "the session of a stopped JobManager ended");
                break SessionEnd::JobManagerStopped;
            }
            Ok(Some(Err(status))) => {
                break SessionEnd::Retry(format!("the session broke: {}", status.message()))
            }
        }
    };
    heartbeat.abort();
    Ok(end)
}

/// The in-memory ends of a session with a JobManager in this process.
pub struct InProcessLink {
    /// Messages to the JobManager; the caller has already sent [`register_message`] on it.
    pub up: UnboundedSender<v1::TaskManagerMessage>,
    /// Messages from the JobManager, starting with `Registered` or `Refused`.
    pub down: UnboundedReceiver<Result<v1::JobManagerMessage, tonic::Status>>,
}

/// A TaskManager inside the JobManager's process (Flink's MiniCluster; `weir local
/// --taskmanagers 0`): the same control thread, task code and session logic as `weir
/// taskmanager`, but its session is a pair of in-memory channels (no gRPC) and it serves no
/// data-exchange port, since every channel of its jobs is in memory. It does not reconnect: when
/// the session ends its tasks are cancelled and it stops.
pub struct InProcessTaskManager {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The `data_address` an in-process TaskManager registers with: no data-exchange server.
pub const IN_PROCESS_DATA_ADDRESS: &str = "in-process";

impl InProcessTaskManager {
    /// Starts it on `link` (whose `Register` went out already).
    pub fn start(
        options: TaskManagerOptions,
        factory: Arc<dyn JobFactory>,
        link: InProcessLink,
    ) -> Result<Self, TaskManagerError> {
        let core = Core::start(&options, factory)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("tm-session".into())
            .spawn(move || {
                let InProcessLink { up, down } = link;
                let ended = core.runtime.block_on(drive(
                    &options.id,
                    UnboundedReceiverStream::new(down),
                    up,
                    &core.outbox,
                    &core.control_tx,
                    &flag,
                ));
                match ended {
                    Ok(
                        SessionEnd::Retry(reason)
                        | SessionEnd::Silent(reason)
                        | SessionEnd::Standby(reason),
                    ) => {
                        tracing::debug!(id = %options.id, %reason, "in-process session ended")
                    }
                    Ok(SessionEnd::JobManagerStopped) => {
                        tracing::debug!(id = %options.id, "in-process session ended with the JobManager")
                    }
                    Err(e) => tracing::error!(id = %options.id, error = %e, "in-process TaskManager stopped"),
                }
                core.stop("the in-process session ended");
            })
            .map_err(|e| TaskManagerError::Setup(format!("cannot start the session thread: {e}")))?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops it (its tasks are cancelled) and waits for its threads.
    pub fn stop(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for InProcessTaskManager {
    fn drop(&mut self) {
        self.stop_now();
    }
}
