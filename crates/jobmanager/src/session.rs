//! `JobManagerService.Session`: one TaskManager's long-lived control stream, and the
//! heartbeat checker.
//!
//! 1. The handler waits (bounded) for the first message. Not a valid `Register` →
//!    `INVALID_ARGUMENT`, nothing registered, the server goes on serving.
//! 2. A live id → the stream answers `Refused { reason }` and ends. Otherwise the
//!    [`ResourceManager`](crate::resource_manager::ResourceManager) registers it and queues
//!    `Registered { heartbeat_interval_ms, heartbeat_timeout_ms }` as its first message.
//! 3. A reader task takes every further message: any message proves the TaskManager alive;
//!    messages about a job go to its JobMaster ([`Shared::route`]).
//! 4. The stream ends or breaks → the TaskManager is lost at once. The heartbeat checker
//!    (every `heartbeat.interval / 2`) declares lost those silent for over `heartbeat.timeout`
//!    and stops their reader; dropping their outbox ends the response stream.

use crate::cluster::Shared;
use crate::ids::TaskManagerId;
use crate::resource_manager::Registration;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Notify};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use weir_coordination::driver::now_ms;
use weir_proto::v1::job_manager_service_server::JobManagerService;
use weir_proto::v1::task_manager_message::Kind;
use weir_proto::v1::{
    job_manager_message, JobManagerMessage, Refused, Register, Registered, TaskManagerMessage,
};

/// How long a new stream may take to send `Register`.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);

/// Most slots one TaskManager may offer: a peer-controlled count, bounded before the slot
/// table is sized by it.
pub const MAX_SLOTS_PER_TASKMANAGER: u32 = 4096;

/// Longest `data_address` a TaskManager may register (a host:port fits many times over).
const MAX_DATA_ADDRESS_LEN: usize = 512;

/// The gRPC service TaskManagers connect to.
pub(crate) struct SessionService {
    pub shared: Arc<Shared>,
}

type SessionStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<JobManagerMessage, Status>> + Send>>;

fn registration(r: Register, max_slots: u32) -> Result<Registration, Status> {
    let id = TaskManagerId::new(r.taskmanager_id)
        .map_err(|e| Status::invalid_argument(format!("Register: {e}")))?;
    if r.slots == 0 {
        return Err(Status::invalid_argument(format!(
            "Register: TaskManager '{id}' offers 0 slots (taskmanager.numberOfTaskSlots must be at least 1)"
        )));
    }
    if r.slots > max_slots {
        return Err(Status::invalid_argument(format!(
            "Register: TaskManager '{id}' offers {} slots; at most {max_slots} per TaskManager",
            r.slots
        )));
    }
    if r.data_address.len() > MAX_DATA_ADDRESS_LEN {
        return Err(Status::invalid_argument(format!(
            "Register: TaskManager '{id}' has a data_address of {} bytes; at most {MAX_DATA_ADDRESS_LEN}",
            r.data_address.len()
        )));
    }
    let ours = weir_proto::build_identity();
    if r.build_id != ours {
        return Err(Status::failed_precondition(format!(
            "Register: TaskManager '{id}' runs build '{}', this JobManager runs build '{ours}': \
             every process of a cluster must run the same binary",
            r.build_id
        )));
    }
    if r.data_address.is_empty() {
        return Err(Status::invalid_argument(format!(
            "Register: TaskManager '{id}' has no data_address"
        )));
    }
    // Shown in the UI and /taskmanagers: only an IP address and port, never a URL or text.
    let metrics_address = match r.metrics_address.as_str() {
        "" => None,
        a => Some(a.parse::<std::net::SocketAddr>().map_err(|_| {
            Status::invalid_argument(format!(
                "Register: TaskManager '{id}' has a metrics_address that is not ip:port ({} bytes)",
                a.len()
            ))
        })?),
    };
    Ok(Registration {
        id,
        slots: r.slots,
        data_address: r.data_address,
        pid: r.pid,
        metrics_address,
    })
}

fn kind_name(kind: &Option<Kind>) -> &'static str {
    match kind {
        None => "an empty message",
        Some(Kind::Register(_)) => "Register",
        Some(Kind::Heartbeat(_)) => "Heartbeat",
        Some(Kind::TaskState(_)) => "TaskStateUpdate",
        Some(Kind::Ack(_)) => "CheckpointAck",
        Some(Kind::Decline(_)) => "CheckpointDecline",
        Some(Kind::EndOfInput(_)) => "TaskEndOfInput",
        Some(Kind::Restored(_)) => "TaskRestored",
        Some(Kind::FirstRecord(_)) => "FirstRecord",
        Some(Kind::AttemptMetrics(_)) => "AttemptMetrics",
        Some(Kind::StorageProbed(_)) => "StorageProbed",
    }
}

#[tonic::async_trait]
impl JobManagerService for SessionService {
    type SessionStream = SessionStream;

    async fn session(
        &self,
        request: Request<Streaming<TaskManagerMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        // A standby (or deposed) JobManager takes no TaskManager: it must go to the leader.
        self.shared.may_act()?;
        let mut inbound = request.into_inner();
        let register = first_register(&mut inbound).await?;
        let rx = accept(&self.shared, register, inbound)?;
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(rx))))
    }
}

/// The stream of messages to one TaskManager.
pub(crate) type Downstream = mpsc::UnboundedReceiver<Result<JobManagerMessage, Status>>;

/// Registers the TaskManager of `register` and starts reading `inbound` (the rest of its
/// session, gRPC or in-memory alike); returns the stream of messages to it, which starts with
/// `Registered` (or is `Refused` and ends).
pub(crate) fn accept<S>(
    shared: &Arc<Shared>,
    register: Register,
    inbound: S,
) -> Result<Downstream, Status>
where
    S: Stream<Item = Result<TaskManagerMessage, Status>> + Send + Unpin + 'static,
{
    let registration = registration(register, MAX_SLOTS_PER_TASKMANAGER)?;
    let id = registration.id.clone();
    let (tx, rx) = mpsc::unbounded_channel();
    let kill = Arc::new(Notify::new());
    let options = &shared.options;
    let registered = JobManagerMessage {
        kind: Some(job_manager_message::Kind::Registered(Registered {
            heartbeat_interval_ms: options.heartbeat_interval.as_millis() as u64,
            heartbeat_timeout_ms: options.heartbeat_timeout.as_millis() as u64,
        })),
    };
    let (slots, data_address, pid) = (
        registration.slots,
        registration.data_address.clone(),
        registration.pid,
    );
    let outcome =
        shared
            .resources()
            .register(registration, tx.clone(), kill.clone(), registered, now_ms());
    match outcome {
        Err(reason) => {
            tracing::warn!(taskmanager = %id, %reason, "TaskManager refused");
            let _ = tx.send(Ok(JobManagerMessage {
                kind: Some(job_manager_message::Kind::Refused(Refused { reason })),
            }));
        }
        Ok(session) => {
            tracing::info!(taskmanager = %id, slots, %data_address, pid, "TaskManager registered");
            tokio::spawn(read_session(shared.clone(), id, session, inbound, kill));
        }
    }
    // The registry holds the only other sender: dropping ours lets the stream end when the
    // TaskManager is lost (or right after `Refused`).
    drop(tx);
    Ok(rx)
}

/// Waits (bounded) for a session's first message, which must be `Register`.
pub(crate) async fn first_register<S>(inbound: &mut S) -> Result<Register, Status>
where
    S: Stream<Item = Result<TaskManagerMessage, Status>> + Unpin,
{
    let first = match tokio::time::timeout(REGISTER_TIMEOUT, inbound.next()).await {
        Err(_) => {
            return Err(Status::deadline_exceeded(format!(
                "no Register within {REGISTER_TIMEOUT:?}"
            )))
        }
        Ok(Some(Err(status))) => return Err(status),
        Ok(None) => {
            return Err(Status::invalid_argument(
                "the stream ended before its first message (Register)",
            ))
        }
        Ok(Some(Ok(m))) => m,
    };
    match first.kind {
        Some(Kind::Register(r)) => Ok(r),
        other => {
            tracing::warn!(
                got = kind_name(&other),
                "a session did not start with Register; rejected"
            );
            Err(Status::invalid_argument(format!(
                "the first message of a Session must be Register, got {}",
                kind_name(&other)
            )))
        }
    }
}

/// Reads one registered TaskManager's messages until its stream ends or it is declared lost.
async fn read_session<S>(
    shared: Arc<Shared>,
    id: TaskManagerId,
    session: u64,
    mut inbound: S,
    kill: Arc<Notify>,
) where
    S: Stream<Item = Result<TaskManagerMessage, Status>> + Unpin,
{
    loop {
        let message = tokio::select! {
            _ = kill.notified() => return,
            m = inbound.next() => m.transpose(),
        };
        match message {
            Ok(Some(m)) => {
                if !shared.resources().touch(&id, session, now_ms()) {
                    return;
                }
                dispatch(&shared, &id, m.kind);
            }
            Ok(None) => {
                shared.taskmanager_lost(&id, Some(session), "its control stream closed".into());
                return;
            }
            Err(status) => {
                shared.taskmanager_lost(
                    &id,
                    Some(session),
                    format!("its control stream broke: {}", status.message()),
                );
                return;
            }
        }
    }
}

fn dispatch(shared: &Shared, from: &TaskManagerId, kind: Option<Kind>) {
    let Some(kind) = kind else {
        tracing::warn!(taskmanager = %from, "empty message ignored");
        return;
    };
    let job = match &kind {
        Kind::Heartbeat(beat) => {
            if shared.may_act().is_ok() {
                use crate::job_master::TaskManagers;
                shared.send(from, job_manager_message::Kind::Heartbeat(*beat));
            }
            return;
        }
        Kind::StorageProbed(p) => {
            shared.on_probe_answer(from, p.probe_id, p.error.clone());
            return;
        }
        Kind::Register(_) => {
            tracing::warn!(taskmanager = %from, "Register on a registered session ignored");
            return;
        }
        Kind::TaskState(m) => m.task.as_ref().map(|t| t.job_id.clone()),
        Kind::Ack(m) => m.task.as_ref().map(|t| t.job_id.clone()),
        Kind::Decline(m) => m.task.as_ref().map(|t| t.job_id.clone()),
        Kind::EndOfInput(m) => m.task.as_ref().map(|t| t.job_id.clone()),
        Kind::Restored(m) => m.task.as_ref().map(|t| t.job_id.clone()),
        Kind::FirstRecord(m) => Some(m.job_id.clone()),
        Kind::AttemptMetrics(m) => Some(m.job_id.clone()),
    };
    match job {
        Some(job) => shared.route(from, &job, kind),
        None => tracing::warn!(
            taskmanager = %from,
            message = kind_name(&Some(kind)),
            "message without a task key dropped"
        ),
    }
}

/// Declares lost every TaskManager silent for longer than `heartbeat.timeout`, every
/// `heartbeat.interval / 2`, until `stop` turns true.
pub(crate) async fn check_heartbeats(
    shared: Arc<Shared>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let period = shared.options.heartbeat_check_period();
    let timeout = shared.options.heartbeat_timeout;
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return,
        }
        let silent = shared.resources().silent(Instant::now(), timeout);
        for (id, session, silent_for) in silent {
            shared.taskmanager_lost(
                &id,
                Some(session),
                format!(
                    "no heartbeat for {} ms (heartbeat.timeout is {} ms)",
                    silent_for.as_millis(),
                    timeout.as_millis()
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn register(slots: u32, build_id: &str) -> Register {
        Register {
            taskmanager_id: "tm-x".into(),
            slots,
            data_address: "127.0.0.1:1".into(),
            pid: 1,
            build_id: build_id.into(),
            metrics_address: String::new(),
        }
    }

    #[test]
    fn a_register_of_another_build_is_refused_naming_both_builds() {
        let err =
            registration(register(2, "0.0.9+feedface"), MAX_SLOTS_PER_TASKMANAGER).unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        assert!(
            err.message().contains("0.0.9+feedface")
                && err.message().contains(weir_proto::build_identity()),
            "{}",
            err.message()
        );
    }

    #[test]
    fn a_register_beyond_the_slot_bound_is_refused_naming_the_count() {
        let err = registration(
            register(u32::MAX, weir_proto::build_identity()),
            MAX_SLOTS_PER_TASKMANAGER,
        )
        .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("4294967295"), "{}", err.message());
        assert!(registration(register(4, weir_proto::build_identity()), 4096).is_ok());
    }
}
