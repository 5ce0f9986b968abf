//! Keyed state: the [`KeyedStateBackend`] trait every backend implements, the key layout, the
//! typed state handles user functions hold ([`ValueState`], [`ListState`], [`MapState`],
//! [`ReducingState`]), the in-memory [`HeapStateBackend`], what a backend hands over for a
//! checkpoint and is restored from ([`snapshot`]), and the [`conformance`] suite every backend
//! must pass.
//!
//! This crate must not depend on RocksDB (only `weir-state-rocksdb` links it: `cargo tree -p
//! weir-state` shows no rocksdb), nor on the runtime, tokio or any network crate.
//!
//! Layering: the backend trait speaks bytes — a [`StateKey`] is `key group ‖ key ‖ namespace ‖
//! user key` — and the typed handles in [`handles`] turn user values into those bytes with
//! postcard. Backends therefore never see user types, and one conformance suite covers them all.

#![warn(missing_docs)]

pub mod backend;
pub mod canonical;
pub mod conformance;
pub mod encoding;
pub mod error;
pub mod handles;
pub mod heap;
pub mod snapshot;
pub mod ttl;

pub use backend::{
    lookup_descriptor, BackendScope, KeyedStateBackend, Registration, StateBackendFactory,
    StateDescriptor, StateEntry, StateId, StateKey, StateKind, UserKeyVisitor,
};
pub use error::StateError;
pub use handles::{KeyedScope, ListState, MapState, ReducingState, StateRegistry, ValueState};
pub use heap::{
    HeapStateBackend, HeapStateBackendFactory, HEAP_SNAPSHOT_FILE, HEAP_SNAPSHOT_FORMAT,
};
pub use snapshot::{LocalSnapshot, PendingFiles, RestoredSnapshot, SnapshotContent, SnapshotFile};
pub use ttl::{StateTtl, TtlUpdate};

/// Fuzz targets run in this binary: no single allocation may exceed 1 GiB.
#[cfg(test)]
#[global_allocator]
static ALLOC: weir_fuzz::Bounded = weir_fuzz::Bounded::new(1 << 30);
