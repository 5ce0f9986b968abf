//! The state layer's error type.

use weir_types::CheckpointId;

/// Why a state operation failed. Every variant names the state or path involved.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The store underneath (RocksDB, the file system) failed.
    #[error("state backend {backend}: {op} failed: {detail}")]
    Backend {
        /// Which backend (`rocksdb`, `heap`).
        backend: &'static str,
        /// What was being done, with the state name or path.
        op: String,
        /// The store's own message.
        detail: String,
    },
    /// A value or key could not be (de)serialised.
    #[error("state '{state}': cannot {op} a value: {detail}")]
    Codec {
        /// The state's name.
        state: String,
        /// `encode` or `decode`.
        op: &'static str,
        /// The codec's message.
        detail: String,
    },
    /// A state was used with an id this backend never handed out.
    #[error("unknown state id {0}")]
    UnknownState(u32),
    /// A state name was registered twice with different kinds.
    #[error("state '{name}' is declared as {existing:?} and again as {requested:?}")]
    KindMismatch {
        /// The state's name.
        name: String,
        /// The kind it was first declared with.
        existing: crate::StateKind,
        /// The kind asked for now.
        requested: crate::StateKind,
    },
    /// A key that does not belong to this backend's key-group range.
    #[error("key group {key_group} is outside this backend's range {range}")]
    KeyGroupOutOfRange {
        /// The offending key group.
        key_group: weir_types::KeyGroup,
        /// The range the backend owns.
        range: weir_types::KeyGroupRange,
    },
    /// A stored key that does not follow the key layout (damaged or foreign data).
    #[error("malformed state key in state '{state}': {detail}")]
    MalformedKey {
        /// The state's name.
        state: String,
        /// What is wrong with it.
        detail: String,
    },
    /// The synchronous part of a snapshot failed; whatever it had written locally is removed.
    #[error("state backend {backend}: snapshot for {checkpoint}: {op} failed: {detail}")]
    Snapshot {
        /// The checkpoint the snapshot was for.
        checkpoint: CheckpointId,
        /// Which backend.
        backend: &'static str,
        /// What was being done, with the path involved.
        op: String,
        /// The underlying message.
        detail: String,
    },
    /// A snapshot that cannot be restored by any retry: it comes from another backend, another
    /// format version or another key-group range.
    #[error("cannot restore {backend} state from {checkpoint}: {detail}")]
    Incompatible {
        /// The checkpoint being restored.
        checkpoint: CheckpointId,
        /// The backend asked to restore it.
        backend: &'static str,
        /// What differs, naming both values.
        detail: String,
    },
    /// A snapshot could not be restored this time: its files are missing or damaged, or the
    /// local disk refused them (full, unwritable).
    #[error("cannot restore {backend} state from {checkpoint}: {detail}")]
    Restore {
        /// The checkpoint being restored.
        checkpoint: CheckpointId,
        /// The backend asked to restore it.
        backend: &'static str,
        /// What is wrong, naming the file or the mismatching values.
        detail: String,
    },
}
