//! The checkpoint protocol as **pure logic**: which tasks must acknowledge, how acks are
//! classified, when a checkpoint is complete, what is retained and subsumed, which files may be
//! reused or deleted, and the `_metadata` format with its CRC.
//!
//! This crate does no I/O: no threads, no tokio, no object_store, no RocksDB, no clocks (time is
//! passed in as milliseconds). It must not depend on any Weir crate but `weir-types`. Inputs are
//! facts; outputs are [`Action`]s that a driver performs (the JobMaster later; [`drive`] with
//! [`InMemoryContext`] in tests), so every ordering and crash path is testable without a cluster.
//!
//! Key types:
//! - [`Coordinator`] — the state machine; its module doc tells the flow step by step.
//! - [`PendingCheckpoint`] → [`CheckpointMetadata`] (to write) or [`AbortedCheckpoint`] (to clean
//!   up); acks classified as [`AckResult`].
//! - [`CompletedCheckpointStore`] — retention; never subsumes a savepoint.
//! - [`SharedStateRegistry`] — reference counts over retained and pending checkpoints; the
//!   incremental base is only ever a completed checkpoint's files.
//! - [`CheckpointIdCounter`] — ids only rise.
//! - [`CheckpointMetadata::encode`] / [`CheckpointMetadata::decode`] — magic, version, CRC32.
//! - [`CheckpointContext`] — the side effects, with what each implementation must guarantee.

#![warn(missing_docs)]

pub mod completed;
pub mod config;
pub mod context;
pub mod coordinator;
pub mod failure;
pub mod handle;
pub mod id_counter;
pub mod kind;
pub mod metadata;
pub mod pending;
pub mod registry;

pub use completed::{CompletedCheckpoint, CompletedCheckpointStore, ZeroRetention};
pub use config::{CheckpointConfig, CheckpointingMode, ConfigError};
pub use context::{
    drive, CheckpointContext, ContextError, ContextEvent, DriverError, InMemoryContext,
};
pub use coordinator::{AckOutcome, Action, Coordinator, CoordinatorError, RECENT_CHECKPOINT_IDS};
pub use failure::CheckpointFailureReason;
pub use handle::{
    FileHandle, HandleError, OperatorSubtaskState, RescaledOperator, TaskAckMetrics, TaskId,
    TaskRestoreSpec, TaskStateSnapshot,
};
pub use id_counter::CheckpointIdCounter;
pub use kind::{CheckpointKind, SavepointFormat};
pub use metadata::{
    CheckpointMetadata, MetadataError, OperatorState, METADATA_FILE_NAME, METADATA_MAGIC,
    METADATA_OLDEST_READABLE_VERSION, METADATA_VERSION,
};
pub use pending::{AbortedCheckpoint, AckResult, NotFullyAcknowledged, PendingCheckpoint, TaskAck};
pub use registry::SharedStateRegistry;

/// Fuzz targets run in this binary: no single allocation may exceed 1 GiB.
#[cfg(test)]
#[global_allocator]
static ALLOC: weir_fuzz::Bounded = weir_fuzz::Bounded::new(1 << 30);
