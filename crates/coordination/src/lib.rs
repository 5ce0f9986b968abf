//! What the job master role decides and drives, shared by the embedded executor
//! (`weir_runtime::LocalExecutor`) and the cluster's JobMaster (`weir-jobmanager`):
//!
//! - [`driver`]: performs the pure checkpoint [`weir_checkpoint::Coordinator`]'s actions —
//!   triggers through a [`driver::TaskGateway`], `_metadata` written create-only and last,
//!   completions, deletions — and keeps the checkpoint history;
//! - [`restart`]: restart strategies as pure decisions;
//! - [`resume`]: finding a job's intact completed checkpoints in storage.
//!
//! Must not depend on the runtime, the TaskManager, the JobManager, RocksDB or tonic: both
//! sides of the cluster use it, so it knows neither.

#![warn(missing_docs)]

pub mod driver;
pub mod restart;
pub mod resume;
