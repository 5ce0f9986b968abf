//! The RocksDB keyed state backend: state larger than memory, bounded by a per-process memory
//! budget.
//!
//! **This is the only crate that links RocksDB.** Everything else speaks to it through
//! [`weir_state::KeyedStateBackend`] and [`weir_state::StateBackendFactory`]; it must not
//! depend on the runtime, tokio or any network crate.
//!
//! Key types: [`RocksDbStateBackendFactory`] (one per process: owns the state directory and the
//! shared block cache) and [`RocksDbStateBackend`] (one per keyed operator subtask).
//!
//! # Layout
//! - One RocksDB instance per keyed operator subtask, in
//!   `<state_dir>/<operator_uid>/subtask-<i>-<pid>-<n>`, removed when the backend is dropped.
//! - One column family per declared state, named after the state.
//! - Keys are [`weir_state::encoding::encode_state_key`]: `key group (u16 BE) ‖ key ‖
//!   namespace ‖ user key`, so one key group is one contiguous key range.
//! - The WAL is off on every write: durability comes from checkpoints.
//!
//! # Snapshots
//! A snapshot is a RocksDB native checkpoint in `<instance dir>.chk-<id>`: the SST files,
//! hard-linked and shareable between snapshots (an incremental upload sends only new ones),
//! plus the small private metadata files (steps in [`RocksDbStateBackend`]'s docs).
//! Restore ([`RocksDbStateBackendFactory::open_restored`]) brings those files into a new
//! instance directory and opens RocksDB on them.
//!
//! # Memory
//! The factory gets the process's managed memory budget. Half goes to RocksDB: one LRU block
//! cache shared by every instance, which also holds index and filter blocks and is charged for
//! the memtables (through a `WriteBufferManager`). The other half is split equally among the
//! process's keyed subtasks as each backend's write-back cache (see [`RocksDbStateBackend`]).

#![warn(missing_docs)]

mod backend;
mod factory;

pub use backend::RocksDbStateBackend;
pub use factory::{MemoryPlan, RocksDbStateBackendFactory};

use weir_state::StateError;

/// The backend's name in messages and metrics.
pub const BACKEND_NAME: &str = "rocksdb";

/// The version of this backend's snapshot format: the files of a RocksDB native checkpoint,
/// with the column family of each state named after it.
pub const SNAPSHOT_FORMAT: u32 = 1;

/// A [`StateError::Backend`] for this backend: `op` says what was done, on which state or path.
fn backend_error(op: String, detail: impl std::fmt::Display) -> StateError {
    StateError::Backend {
        backend: BACKEND_NAME,
        op,
        detail: detail.to_string(),
    }
}
