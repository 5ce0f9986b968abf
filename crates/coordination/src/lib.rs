//! What the JobMaster (`weir-jobmanager`, the one orchestrator of every mode) decides and
//! drives, kept apart from it because the TaskManager side shares its vocabulary (task events,
//! checkpoint records, the clock):
//!
//! - [`driver`]: performs the pure checkpoint [`weir_checkpoint::Coordinator`]'s actions —
//!   triggers through a [`driver::TaskGateway`], `_metadata` written create-only and last,
//!   completions, deletions — and keeps the checkpoint history;
//! - [`restart`]: restart strategies as pure decisions;
//! - [`resume`]: finding a job's intact completed checkpoints in storage;
//! - [`lease`]: one live owner per job checkpoint folder (numbered create-only leases);
//! - [`leader`]: JobManager leadership and the jobs a new leader takes over (HA on storage);
//! - [`claim`]: a savepoint claimed by the job started from it (`--claim-mode claim`).
//!
//! Must not depend on the runtime, the TaskManager, the JobManager, RocksDB or tonic: both
//! sides of the cluster use it, so it knows neither.

#![warn(missing_docs)]

pub mod claim;
pub mod driver;
pub mod leader;
pub mod lease;
pub mod restart;
pub mod resume;

/// Fuzz targets run in this binary: no single allocation may exceed 1 GiB.
#[cfg(test)]
#[global_allocator]
static ALLOC: weir_fuzz::Bounded = weir_fuzz::Bounded::new(1 << 30);
