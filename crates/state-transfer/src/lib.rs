//! Moving a task's state between its local disk and object storage (DESIGN §5 steps 3–4, §6):
//! the asynchronous part of a keyed snapshot (upload, incremental), its restore (download,
//! CRC32-verified), and small private operator files such as an exactly-once sink's staging
//! manifest.
//!
//! This crate owns:
//!
//! - [`Uploader`] — uploads a [`LocalSnapshot`](weir_state::LocalSnapshot) reusing the shareable
//!   files of the incremental base ([`SharedFiles`]), writes every new file to a fresh path with
//!   a create-only put (an upload never overwrites), records each file's size and CRC32 in its
//!   [`FileHandle`](weir_checkpoint::FileHandle), cleans up after itself on failure, and
//!   downloads and verifies a keyed operator's files for
//!   [`StateBackendFactory::restore`](weir_state::StateBackendFactory::restore). Its module doc
//!   tells both flows step by step.
//! - [`LocalStateCache`] — task-local copies of the checkpoint files a TaskManager uploaded or
//!   downloaded, keyed by handle path, so a TaskManager that survives a failure restores its
//!   subtasks from local disk (CRC32-verified) instead of downloading. In memory only: a
//!   restarted TaskManager starts with an empty cache. Its owner prunes it when checkpoints
//!   complete or abort.
//! - [`KeyedStateMeta`] — the versioned JSON a keyed operator stores inline in its
//!   [`OperatorSubtaskState`](weir_checkpoint::OperatorSubtaskState): backend, format, key
//!   groups, declared states, and each file's name and stored path, in restore order.
//! - [`TransferError`] — every failure names the checkpoint and the file, and says whether a
//!   retry can help.
//!
//! Object layout under the job's checkpoint directory `<root>/<job-id>/` (paths built by
//! [`weir_storage::CheckpointPaths`]):
//!
//! ```text
//! shared/<uid>/<subtask>/<n>-<name>    a shareable file first uploaded for checkpoint n
//! chk-<n>/<uid>/<subtask>/<name>       a private file of checkpoint n
//! ```
//!
//! Which files may be reused (only a *completed* checkpoint's, DESIGN §8 invariant 4) and when
//! shared files are deleted (invariant 3) is decided elsewhere: the caller passes the base, and
//! `weir-checkpoint`'s registry frees files.
//!
//! This crate must not depend on RocksDB (`weir-state-rocksdb`) or on the runtime
//! (`weir-runtime`): it sees snapshots only as named files and bytes, so every backend and the
//! TaskManager can use it.

#![warn(missing_docs)]

pub mod error;
pub mod local;
pub mod meta;
pub mod uploader;

pub use error::TransferError;
pub use local::{LocalCacheError, LocalStateCache};
pub use meta::{KeyedFileMeta, KeyedStateMeta, MetaError, KEYED_STATE_META_VERSION};
pub use uploader::{DownloadStats, SharedFiles, UploadedKeyed, Uploader, MAX_CONCURRENT_TRANSFERS};

/// Fuzz targets run in this binary: no single allocation may exceed 1 GiB.
#[cfg(test)]
#[global_allocator]
static ALLOC: weir_fuzz::Bounded = weir_fuzz::Bounded::new(1 << 30);
