//! The TaskManager's process loop: the data-exchange server, the session with the JobManager
//! (register, heartbeats, messages), and reconnecting with backoff when it breaks.

use crate::tasks::{now_ms, Outbox, TaskContext, Tasks};
use crate::{JobFactory, TaskManagerError, TaskManagerOptions};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_stream::wrappers::{TcpListenerStream, UnboundedReceiverStream};
use weir_exchange::{ConnectOptions, Connections, ExchangeOptions, ExchangeService};
use weir_proto::v1::job_manager_service_client::JobManagerServiceClient;
use weir_proto::v1::{self, job_manager_message::Kind as Down, task_manager_message::Kind as Up};

/// How one session ended.
enum SessionEnd {
    /// Could not connect or the stream broke: try again after a backoff.
    Retry(String),
}

/// Runs a TaskManager until `stop` is set or the JobManager refuses it. Blocks the caller.
pub fn run(
    options: TaskManagerOptions,
    factory: Arc<dyn JobFactory>,
    stop: Arc<AtomicBool>,
) -> Result<(), TaskManagerError> {
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
    let exchange = ExchangeService::new(ExchangeOptions::default());
    let listener = runtime
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
    let server = exchange.server();
    runtime.spawn(async move {
        let served = tonic::transport::Server::builder()
            .add_service(server)
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "the data-exchange server stopped");
        }
    });
    tracing::info!(id = %options.id, slots = options.slots, %data_address, jobmanager = %options.jobmanager, "TaskManager started");
    let outbox = Outbox::default();
    let (control_tx, control_rx) = crossbeam_channel::unbounded::<Down>();
    let tasks = Tasks::new(TaskContext {
        id: options.id.clone(),
        runtime: runtime.handle().clone(),
        exchange,
        connections: Connections::new(ConnectOptions::default()),
        factory,
        state_dir: options.state_dir.clone(),
        outbox: outbox.clone(),
    });
    let control = std::thread::Builder::new()
        .name("tm-control".into())
        .spawn(move || tasks.run(control_rx))
        .map_err(|e| TaskManagerError::Setup(format!("cannot start the control thread: {e}")))?;
    let mut backoff = options.initial_backoff;
    let result = loop {
        if stop.load(Ordering::SeqCst) {
            break Ok(());
        }
        let outcome = runtime.block_on(session(
            &options,
            &data_address,
            &outbox,
            &control_tx,
            &stop,
            &mut backoff,
        ));
        outbox.set(None);
        match outcome {
            Ok(SessionEnd::Retry(reason)) => {
                // Whatever ran belongs to a JobMaster that has given up on it.
                let _ = control_tx.send(Down::Shutdown(v1::Shutdown {
                    reason: format!("lost the JobManager: {reason}"),
                }));
                if stop.load(Ordering::SeqCst) {
                    break Ok(());
                }
                tracing::warn!(jobmanager = %options.jobmanager, %reason, retry_in_ms = backoff.as_millis() as u64, "no session with the JobManager; retrying");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(options.max_backoff);
            }
            Err(e) => break Err(e),
        }
    };
    drop(control_tx);
    let _ = control.join();
    runtime.shutdown_timeout(Duration::from_secs(2));
    result
}

async fn session(
    options: &TaskManagerOptions,
    data_address: &str,
    outbox: &Outbox,
    control: &crossbeam_channel::Sender<Down>,
    stop: &Arc<AtomicBool>,
    backoff: &mut Duration,
) -> Result<SessionEnd, TaskManagerError> {
    let endpoint = match tonic::transport::Endpoint::from_shared(options.jobmanager.clone()) {
        Ok(e) => e.connect_timeout(Duration::from_secs(1)).tcp_nodelay(true),
        Err(e) => {
            return Err(TaskManagerError::Setup(format!(
                "--jobmanager '{}' is not a URL: {e}",
                options.jobmanager
            )))
        }
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
    let mut client = JobManagerServiceClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let _ = tx.send(v1::TaskManagerMessage {
        kind: Some(Up::Register(v1::Register {
            taskmanager_id: options.id.clone(),
            slots: options.slots,
            data_address: data_address.to_string(),
            pid: std::process::id(),
        })),
    });
    let mut inbound = match client.session(UnboundedReceiverStream::new(rx)).await {
        Ok(r) => r.into_inner(),
        Err(status) => {
            return Ok(SessionEnd::Retry(format!(
                "the session was refused: {}",
                status.message()
            )))
        }
    };
    let answer = match tokio::time::timeout(Duration::from_secs(10), inbound.message()).await {
        Ok(answer) => answer,
        Err(_) => {
            return Ok(SessionEnd::Retry(
                "no answer to Register within 10 s".into(),
            ))
        }
    };
    let (interval, timeout) = match answer {
        Ok(Some(v1::JobManagerMessage {
            kind: Some(Down::Registered(r)),
        })) => (r.heartbeat_interval_ms, r.heartbeat_timeout_ms),
        Ok(Some(v1::JobManagerMessage {
            kind: Some(Down::Refused(r)),
        })) => {
            return Err(TaskManagerError::Refused {
                id: options.id.clone(),
                reason: r.reason,
            })
        }
        Ok(other) => {
            return Ok(SessionEnd::Retry(format!(
                "expected Registered, got {other:?}"
            )))
        }
        Err(status) => {
            return Ok(SessionEnd::Retry(format!(
                "the session broke while registering: {}",
                status.message()
            )))
        }
    };
    tracing::info!(
        id = %options.id,
        heartbeat_interval_ms = interval,
        heartbeat_timeout_ms = timeout,
        "registered with the JobManager"
    );
    *backoff = options.initial_backoff;
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
    let end = loop {
        if stop.load(Ordering::SeqCst) {
            break SessionEnd::Retry("stopping".into());
        }
        let next = tokio::time::timeout(Duration::from_millis(200), inbound.message()).await;
        match next {
            Err(_) => continue,
            Ok(Ok(Some(v1::JobManagerMessage { kind: Some(kind) }))) => {
                let _ = control.send(kind);
            }
            Ok(Ok(Some(_))) => tracing::warn!("an empty JobManager message is ignored"),
            Ok(Ok(None)) => break SessionEnd::Retry("the JobManager closed the session".into()),
            Ok(Err(status)) => {
                break SessionEnd::Retry(format!("the session broke: {}", status.message()))
            }
        }
    };
    heartbeat.abort();
    Ok(end)
}
