//! [`TransferError`]: every failure of an upload or download, naming the checkpoint and the file
//! (its snapshot name, its handle path, or both), and saying whether a retry can help.

use std::path::PathBuf;
use weir_checkpoint::HandleError;
use weir_storage::{PathError, RetryHint, StorageError};
use weir_types::CheckpointId;

use crate::meta::MetaError;

/// Why moving state between local disk and object storage failed.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// A snapshot file's name cannot be stored or restored (empty, `.`/`..`, several segments,
    /// or used twice in one snapshot). Nothing was uploaded.
    #[error("{checkpoint}: snapshot file name '{name}' {reason}")]
    BadFileName {
        /// The checkpoint.
        checkpoint: CheckpointId,
        /// The offending name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// No object path could be built for a file (a name or operator uid that is not a valid
    /// object path segment).
    #[error("{checkpoint}: no object path for file '{name}': {source}")]
    ObjectPath {
        /// The checkpoint.
        checkpoint: CheckpointId,
        /// The file's name.
        name: String,
        /// Why the path was refused.
        source: PathError,
    },
    /// A path is not a valid [`FileHandle`](weir_checkpoint::FileHandle) path.
    #[error("{checkpoint}: file '{name}': {source}")]
    Handle {
        /// The checkpoint.
        checkpoint: CheckpointId,
        /// The file's name.
        name: String,
        /// Why the path was refused (names the path).
        source: HandleError,
    },
    /// A snapshot file on local disk could not be read (or `stat`ed).
    #[error("{checkpoint}: cannot read snapshot file '{name}' at '{}': {source}", .path.display())]
    ReadLocal {
        /// The checkpoint.
        checkpoint: CheckpointId,
        /// The file's name in the snapshot.
        name: String,
        /// Its local path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A shareable file named in the incremental base has another size locally than its base
    /// handle records: the backend broke "equal names mean equal bytes", and reusing the base
    /// file would restore wrong state.
    #[error(
        "{checkpoint}: shareable file '{name}' has {local_size} bytes locally, but the \
         base file '{base_path}' with the same name has {base_size}; equal names must mean equal bytes"
    )]
    BaseMismatch {
        /// The checkpoint.
        checkpoint: CheckpointId,
        /// The file's name.
        name: String,
        /// The base handle's path.
        base_path: String,
        /// The size the base handle records.
        base_size: u64,
        /// The size of the local file.
        local_size: u64,
    },
    /// Writing a file to object storage failed (after the store's retries).
    #[error("{checkpoint}: uploading '{name}' to '{path}' failed: {source}")]
    Upload {
        /// The checkpoint.
        checkpoint: CheckpointId,
        /// The file's name.
        name: String,
        /// The handle path it was to be stored at.
        path: String,
        /// What the store reported (names the object).
        source: Box<StorageError>,
    },
    /// Reading a file from object storage failed: missing object, damaged bytes
    /// ([`StorageError::CrcMismatch`]), or a store failure that outlasted the retries.
    #[error("{checkpoint}: downloading '{path}' failed: {source}")]
    Download {
        /// The checkpoint.
        checkpoint: CheckpointId,
        /// The handle path.
        path: String,
        /// What the store reported (names the object).
        source: Box<StorageError>,
    },
    /// An object's length differs from what its handle records.
    #[error("{checkpoint}: '{path}' has {actual} bytes, its handle records {expected}")]
    SizeMismatch {
        /// The checkpoint.
        checkpoint: CheckpointId,
        /// The handle path.
        path: String,
        /// The size the handle records.
        expected: u64,
        /// The size read.
        actual: u64,
    },
    /// The local restore directory could not be created.
    #[error("{checkpoint}: cannot create the restore directory '{}': {source}", .dir.display())]
    CreateDir {
        /// The checkpoint.
        checkpoint: CheckpointId,
        /// The directory.
        dir: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A downloaded file could not be written to local disk.
    #[error("{checkpoint}: cannot write '{path}' to '{}': {source}", .local.display())]
    WriteLocal {
        /// The checkpoint.
        checkpoint: CheckpointId,
        /// The handle path it was downloaded from.
        path: String,
        /// The local file.
        local: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The inline keyed-state description is missing, undecodable, or of an unknown version.
    #[error("{checkpoint}: {source}")]
    Meta {
        /// The checkpoint.
        checkpoint: CheckpointId,
        /// What is wrong with the description.
        source: MetaError,
    },
    /// The keyed-state description names a file path the operator's state has no handle for.
    #[error(
        "{checkpoint}: file '{name}' is stored at '{path}', but the operator's state \
         has no handle for that path"
    )]
    MissingHandle {
        /// The checkpoint.
        checkpoint: CheckpointId,
        /// The file's name.
        name: String,
        /// The path the description names.
        path: String,
    },
    /// The backend could not finish the snapshot's background part (e.g. RocksDB's native
    /// checkpoint failed).
    #[error("{checkpoint}: the snapshot could not be finished: {source}")]
    Snapshot {
        /// The checkpoint.
        checkpoint: CheckpointId,
        /// What the backend reported.
        source: weir_state::StateError,
    },
    /// The task transferring a file panicked or was cancelled.
    #[error("{checkpoint}: the transfer of '{name}' did not finish: {source}")]
    Task {
        /// The checkpoint.
        checkpoint: CheckpointId,
        /// The file's name or path.
        name: String,
        /// What tokio reported.
        source: tokio::task::JoinError,
    },
}

impl TransferError {
    /// The checkpoint the failed transfer belonged to.
    pub fn checkpoint(&self) -> CheckpointId {
        match self {
            TransferError::BadFileName { checkpoint, .. }
            | TransferError::ObjectPath { checkpoint, .. }
            | TransferError::Handle { checkpoint, .. }
            | TransferError::ReadLocal { checkpoint, .. }
            | TransferError::BaseMismatch { checkpoint, .. }
            | TransferError::Upload { checkpoint, .. }
            | TransferError::Download { checkpoint, .. }
            | TransferError::SizeMismatch { checkpoint, .. }
            | TransferError::CreateDir { checkpoint, .. }
            | TransferError::WriteLocal { checkpoint, .. }
            | TransferError::Meta { checkpoint, .. }
            | TransferError::MissingHandle { checkpoint, .. }
            | TransferError::Snapshot { checkpoint, .. }
            | TransferError::Task { checkpoint, .. } => *checkpoint,
        }
    }

    /// The storage failure behind an [`Upload`](Self::Upload) or [`Download`](Self::Download)
    /// error: [`StorageError::CrcMismatch`] for damaged bytes, [`StorageError::NotFound`] for a
    /// missing object.
    pub fn storage_error(&self) -> Option<&StorageError> {
        match self {
            TransferError::Upload { source, .. } | TransferError::Download { source, .. } => {
                Some(source)
            }
            _ => None,
        }
    }

    /// Whether doing the same transfer again later may succeed. Storage failures say so
    /// themselves (after the store's own retries); damaged, missing or inconsistent state does
    /// not heal, so a restore should fall back to an earlier checkpoint instead.
    pub fn retry_hint(&self) -> RetryHint {
        match self {
            TransferError::Upload { source, .. } | TransferError::Download { source, .. } => {
                source.retry_hint()
            }
            TransferError::CreateDir { .. }
            | TransferError::WriteLocal { .. }
            | TransferError::Snapshot { .. }
            | TransferError::Task { .. } => RetryHint::Transient,
            TransferError::BadFileName { .. }
            | TransferError::ObjectPath { .. }
            | TransferError::Handle { .. }
            | TransferError::ReadLocal { .. }
            | TransferError::BaseMismatch { .. }
            | TransferError::SizeMismatch { .. }
            | TransferError::Meta { .. }
            | TransferError::MissingHandle { .. } => RetryHint::Permanent,
        }
    }
}
