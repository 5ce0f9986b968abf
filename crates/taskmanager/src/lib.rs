//! The TaskManager process (`weir taskmanager`): N slots that run the subtasks a JobMaster
//! deploys, the data plane to other TaskManagers, snapshot uploads, and task-local copies of
//! checkpointed state for fast local recovery.
//!
//! Must not depend on `weir-jobmanager`: the two talk only through `weir-proto`. Jobs are Rust
//! code compiled into the binary, so the process that embeds this crate supplies a
//! [`JobFactory`] that rebuilds a job from its [`JobSpec`] (name, parameters, configuration).
//!
//! The life of a TaskManager (see [`session`] and [`tasks`]):
//! 1. Bind the `DataExchangeService` (loopback by default) and connect to the JobManager,
//!    retrying with backoff and logging why each try failed.
//! 2. Open the `Session` stream, send `Register`; `Refused` (a live TaskManager has the same
//!    id) is a fatal error naming the id. Then send a heartbeat every interval the JobManager
//!    named.
//! 3. `DeployTask`: rebuild the job (once per job), wire the subtask's channels — in memory to
//!    subtasks in this process, over the data plane to the others — and start its thread. It
//!    reports DEPLOYING, then RUNNING once its state is restored (with the bytes read locally
//!    and downloaded), then FINISHED, FAILED (with the root cause) or CANCELED.
//! 4. Checkpoint messages go to the tasks' control channels; acks and declines come back on
//!    the session. A completed checkpoint prunes the local state copies older than it.
//! 5. `CancelAttempt` cancels the tasks of that attempt and older; `Shutdown`, or a broken
//!    session, cancels everything, then the TaskManager reconnects (step 1).
//!
//! [`session::InProcessTaskManager`] is the same TaskManager inside the JobManager's process
//! (`weir local --taskmanagers 0`): its session is a pair of in-memory channels and it serves
//! no data-exchange port; everything from step 2 on is the same code.

#![warn(missing_docs)]

pub mod metrics;
pub mod session;
pub mod tasks;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use weir_checkpoint::CheckpointingMode;
use weir_graph::Plan;
use weir_runtime::{JobDefinition, RuntimeOptions};
use weir_state::StateBackendFactory;
use weir_storage::Store;

pub use weir_proto::v1::JobSpec;

/// How a TaskManager runs.
#[derive(Clone, Debug)]
pub struct TaskManagerOptions {
    /// The JobManager's RPC address (`http://127.0.0.1:6123`), or with high availability
    /// every JobManager's, comma-separated: the TaskManager registers with whichever leads
    /// and moves to the next when its session breaks or a standby refuses it.
    pub jobmanager: String,
    /// With high availability and no JobManager address given: the `high-availability.storageDir`
    /// folder where the leader writes its address; read before every connection attempt, so
    /// the TaskManager follows the leader across takeovers (`jobmanager` then only names the
    /// folder in logs).
    pub leader_store: Option<Store>,
    /// This TaskManager's id, unique in the cluster.
    pub id: String,
    /// Slots (`taskmanager.numberOfTaskSlots`).
    pub slots: u32,
    /// Local state: RocksDB instances, restore downloads, local state copies.
    pub state_dir: PathBuf,
    /// Where the data-exchange server listens (port 0: any free port).
    pub data_bind: SocketAddr,
    /// First wait after a failed connection attempt; doubles up to `max_backoff`.
    pub initial_backoff: Duration,
    /// Longest wait between connection attempts.
    pub max_backoff: Duration,
    /// Where to serve Prometheus' `/metrics` (`metrics.bind-host`, `metrics.port`; port 0:
    /// any free port, registered with the JobManager); `None`: no endpoint.
    pub metrics_bind: Option<SocketAddr>,
    /// The cluster's token: presented to the JobManager and to other TaskManagers, and required
    /// from every data-plane stream and `/metrics` call. `None`: neither sent nor checked.
    pub auth: Option<weir_security::Token>,
    /// TLS on the data plane, `/metrics` and the JobManager session (`security.ssl.*`).
    pub tls: Option<weir_security::Tls>,
}

/// A job rebuilt on this TaskManager: the same builder, parameters and configuration as on
/// the client give the same graph.
pub struct BuiltJob {
    /// The operators.
    pub job: JobDefinition,
    /// The resolved plan (must equal the JobMaster's).
    pub plan: Plan,
    /// Data-plane tunables.
    pub options: RuntimeOptions,
    /// Keyed state backends.
    pub state_backend: Arc<dyn StateBackendFactory>,
    /// Checkpointing: the alignment mode and the checkpoint root.
    pub checkpointing: Option<(CheckpointingMode, Store)>,
}

/// Rebuilds jobs from their specs (the binary's job catalog and config parser).
pub trait JobFactory: Send + Sync {
    /// Builds `spec`'s job; an error names what is wrong (unknown job, bad parameter or key).
    fn build(&self, spec: &JobSpec) -> Result<BuiltJob, String>;

    /// The checkpoint storage `spec`'s configuration names on this TaskManager (`None`
    /// without checkpointing), without building the job: what a storage probe reads.
    fn checkpoint_store(&self, spec: &JobSpec) -> Result<Option<Store>, String>;

    /// Opens the store at `url` (a savepoint's folder) with `spec`'s storage settings (S3
    /// endpoint and credentials). The default knows no S3 settings beyond the defaults.
    fn open_storage(&self, _spec: &JobSpec, url: &str) -> Result<Store, String> {
        let parsed = weir_storage::StorageUrl::parse(url).map_err(|e| e.to_string())?;
        weir_storage::open_store(&parsed, &weir_storage::S3Options::default())
            .map_err(|e| e.to_string())
    }
}

/// Why a TaskManager stopped.
#[derive(Debug, thiserror::Error)]
pub enum TaskManagerError {
    /// The JobManager refused the registration.
    #[error("the JobManager refused TaskManager '{id}': {reason}")]
    Refused {
        /// This TaskManager's id.
        id: String,
        /// The JobManager's reason.
        reason: String,
    },
    /// Local setup failed (state directory, data-exchange port, runtime).
    #[error("{0}")]
    Setup(String),
}
