//! Whether a snapshot is a periodic checkpoint or a user-triggered savepoint.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The on-storage layout of a savepoint.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SavepointFormat {
    /// Backend-independent key/value stream ordered by key group: supports a new parallelism, a
    /// different backend, and offline reading.
    Canonical,
    /// The backend's own files (RocksDB SSTs), copied so the savepoint is self-contained: fastest.
    Native,
}

/// What kind of snapshot a checkpoint id names.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CheckpointKind {
    /// A periodic checkpoint: owned by Weir, subsumed beyond the retention count, and the base
    /// for the next incremental checkpoint.
    Checkpoint,
    /// A user-triggered savepoint: owned by the user, never subsumed, never an incremental base.
    Savepoint {
        /// The savepoint's layout.
        format: SavepointFormat,
    },
}

impl CheckpointKind {
    /// Whether this is a savepoint (of either format).
    pub fn is_savepoint(self) -> bool {
        matches!(self, Self::Savepoint { .. })
    }
}

impl fmt::Display for CheckpointKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Checkpoint => f.write_str("checkpoint"),
            Self::Savepoint {
                format: SavepointFormat::Canonical,
            } => f.write_str("savepoint (canonical)"),
            Self::Savepoint {
                format: SavepointFormat::Native,
            } => f.write_str("savepoint (native)"),
        }
    }
}
