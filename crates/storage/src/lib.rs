//! Weir's object-storage facade: the only durable truth for checkpoints and savepoints
//! (DESIGN §1, §5).
//!
//! This crate owns:
//!
//! - **Where**: [`StorageUrl`] parses `file:///abs/dir` (or a bare absolute path), `memory://`
//!   / `memory://name` and `s3://bucket/prefix`, with a typed [`UrlError`] for anything else.
//!   [`open_store`] turns a URL and [`S3Options`] into a [`Store`] without touching the network.
//! - **Which path**: [`CheckpointPaths`] and [`SavepointPaths`] are the one place object paths
//!   are built (`<job-id>/chk-<n>/_metadata`, `<job-id>/chk-<n>/<file>`, `<job-id>/shared/<file>`,
//!   `savepoint-<id>/_metadata`) and parsed back into ids. They are pure.
//! - **How**: [`Store`] offers create-only puts that never overwrite, overwriting puts, reads,
//!   idempotent deletes, sorted listings, CRC32-verified reads ([`StorageError::CrcMismatch`]
//!   names the damaged object) and bounded retries with exponential backoff ([`RetryPolicy`])
//!   for failures whose [`RetryHint`] says a retry may help.
//! - **Failure on demand**: [`FaultyStore`] wraps any object store and fails puts, gets and
//!   deletes or flips bytes when a test asks it to ([`Faults`]), or when a control file
//!   outside the process says so ([`control`], for recovery drills).
//!
//! Deciding what to write, when a checkpoint is complete, and what to delete is the
//! `weir-checkpoint` crate's pure logic; the JobMaster's driver calls into this crate to do it.
//!
//! This crate must not depend on RocksDB, on the runtime (`weir-runtime`), on tonic, or on any
//! Weir crate other than `weir-types`: TaskManagers (uploads), the JobMaster (metadata,
//! cleanup) and the savepoint CLI all use it.

#![warn(missing_docs)]

pub mod control;
pub mod error;
pub mod faulty;
pub mod open;
pub mod paths;
pub mod retry;
pub mod store;
pub mod url;

pub use bytes::Bytes;
pub use control::StorageFaults;
pub use error::{PathError, RetryHint, StorageError, StorageOp};
pub use faulty::{Faults, FaultyStore, InjectedFault};
pub use object_store::path::Path as ObjectPath;
pub use object_store::ObjectMeta;
pub use open::{open_store, S3Options};
pub use paths::{
    checkpoint_dir_name, parse_checkpoint_dir_name, parse_savepoint_dir_name, CheckpointPaths,
    SavepointId, SavepointPaths, METADATA_FILE_NAME, SHARED_DIR_NAME,
};
pub use retry::{retry, RetryPolicy};
pub use store::{crc32, Store};
pub use url::{StorageUrl, UrlError};
