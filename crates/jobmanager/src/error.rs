//! The JobManager's errors: starting the process, and the Dispatcher's answers to clients.

use std::net::SocketAddr;
use weir_types::JobId;

/// The JobManager could not start. None of these is helped by retrying unchanged, except
/// [`JobManagerError::Bind`] once the address is free.
#[derive(Debug, thiserror::Error)]
pub enum JobManagerError {
    /// An option is out of range.
    #[error("invalid value {value} for {key}: expected {expected}")]
    InvalidOption {
        /// The option's key, e.g. `heartbeat.timeout`.
        key: &'static str,
        /// The rejected value.
        value: String,
        /// What would be accepted.
        expected: &'static str,
    },
    /// A listening address could not be bound.
    #[error("cannot listen for {what} on {addr}: {source}")]
    Bind {
        /// `gRPC` or `REST`.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The TLS configuration (`security.ssl.*`) cannot serve.
    #[error("TLS (security.ssl.*): {0}")]
    Tls(String),
    /// The JobManager's tokio runtime could not start.
    #[error("cannot start the JobManager runtime: {0}")]
    Runtime(std::io::Error),
    /// An in-process TaskManager session was refused (a bad `Register`, a stopped runtime).
    #[error("the in-process TaskManager session was refused: {0}")]
    InProcess(String),
}

/// Why the Dispatcher refused a job or a request about one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DispatchError {
    /// The submission is malformed (bad plan JSON, bad job id, bad settings). Fix the request.
    #[error("{0}")]
    InvalidArgument(String),
    /// A job with this id is not finished yet.
    #[error("job {0} is already running; cancel it first or submit under another id")]
    AlreadyRunning(JobId),
    /// No such job on this JobManager.
    #[error("no job {0} on this JobManager")]
    UnknownJob(String),
    /// The request cannot be served in the job's state (resume without a checkpoint, cancel
    /// of a finished job).
    #[error("{0}")]
    FailedPrecondition(String),
    /// A resume found no intact completed checkpoint of the job (the message names where it
    /// looked): a new leader starts such a job afresh from its recorded request.
    #[error("{0}")]
    NothingToResume(String),
    /// Another JobMaster holds the job's checkpoint folder lease (the message names it): the
    /// folder frees once that lease runs out.
    #[error("{0}")]
    FolderInUse(String),
    /// The JobManager is shutting down; submit to another one.
    #[error("the JobManager is shutting down")]
    ShuttingDown,
    /// This JobManager does not lead (high availability): the message names the leader.
    #[error("{0}")]
    Unavailable(String),
    /// Something on this side broke (a thread that could not start). A retry may help.
    #[error("{0}")]
    Internal(String),
}

impl From<DispatchError> for tonic::Status {
    fn from(e: DispatchError) -> Self {
        let message = e.to_string();
        match e {
            DispatchError::InvalidArgument(_) => tonic::Status::invalid_argument(message),
            DispatchError::AlreadyRunning(_) => tonic::Status::already_exists(message),
            DispatchError::UnknownJob(_) => tonic::Status::not_found(message),
            DispatchError::FailedPrecondition(_)
            | DispatchError::NothingToResume(_)
            | DispatchError::FolderInUse(_) => tonic::Status::failed_precondition(message),
            DispatchError::ShuttingDown | DispatchError::Unavailable(_) => {
                tonic::Status::unavailable(message)
            }
            DispatchError::Internal(_) => tonic::Status::internal(message),
        }
    }
}
