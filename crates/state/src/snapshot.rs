//! What a keyed backend hands over for a checkpoint, and what it is rebuilt from on restore.
//!
//! A snapshot has two parts (DESIGN.md §5):
//! - **synchronous** — [`KeyedStateBackend::snapshot`](crate::KeyedStateBackend::snapshot) runs
//!   on the task thread while records wait: it makes the backend's current state immutable
//!   (RocksDB: freeze the write-back cache; heap: freeze each segment written since the last
//!   snapshot), leaves the writing of files to a background part, and returns a
//!   [`LocalSnapshot`];
//! - **asynchronous** — an uploader (not this crate: it knows no storage) writes the snapshot's
//!   [`SnapshotFile`]s to object storage, reusing *shareable* files already uploaded for the
//!   last completed checkpoint, then removes [`LocalSnapshot::cleanup_dir`].
//!
//! Restore is the reverse: the uploader downloads and CRC-verifies every file into a local
//! directory and hands a [`RestoredSnapshot`] to
//! [`StateBackendFactory::restore`](crate::StateBackendFactory::restore).

use crate::backend::StateDescriptor;
use crate::StateError;
use std::path::{Path, PathBuf};
use weir_types::{CheckpointId, KeyGroupRange};

/// Where a snapshot file's bytes are now.
#[derive(Debug)]
pub enum SnapshotContent {
    /// A file on local disk (a hard link into a RocksDB native checkpoint). Immutable until
    /// the snapshot's cleanup directory is removed.
    Path(PathBuf),
    /// Bytes in memory (a heap backend's manifest, an operator's state).
    Bytes(Vec<u8>),
    /// Bytes in memory that the backend keeps too (a heap backend's segment file, handed over
    /// again by later snapshots that reuse it).
    Shared(std::sync::Arc<[u8]>),
}

/// One file of a snapshot.
#[derive(Debug)]
pub struct SnapshotFile {
    /// The file's name within the snapshot (`000012.sst`, `MANIFEST-000005`, `heap-state`):
    /// unique within one snapshot; for a shareable file, unique over the backend's whole life
    /// (and across restores), so equal names mean equal bytes.
    pub name: String,
    /// The bytes.
    pub content: SnapshotContent,
    /// Whether later snapshots may reference this file instead of uploading it again (an
    /// immutable RocksDB SST file). Private files belong to one checkpoint.
    pub shareable: bool,
}

/// The synchronous part's result: everything needed to rebuild the backend's state.
#[derive(Debug)]
pub struct LocalSnapshot {
    /// The checkpoint it was taken for.
    pub checkpoint: CheckpointId,
    /// The backend that took it (`rocksdb`, `heap`); restore refuses another backend.
    pub backend: &'static str,
    /// That backend's snapshot format version; restore refuses versions it cannot read.
    pub format: u32,
    /// The key groups the state covers.
    pub key_groups: KeyGroupRange,
    /// The declared states, in registration order.
    pub descriptors: Vec<StateDescriptor>,
    /// The files, in the order the backend wants them restored.
    pub files: Vec<SnapshotFile>,
    /// A local directory to remove once the files are uploaded (or the checkpoint aborted).
    pub cleanup_dir: Option<PathBuf>,
    /// Files the backend is still producing in the background when `snapshot` returned
    /// (RocksDB ingests the snapshot's dirty entries and creates its native checkpoint off the
    /// task thread; the heap backend serialises its frozen segments);
    /// [`LocalSnapshot::resolve`] waits for them. `None` when `files` is complete.
    pub pending: Option<PendingFiles>,
}

/// The background part of a synchronous snapshot: a blocking call that returns the rest of
/// the snapshot's files once they exist.
pub struct PendingFiles(Box<dyn FnOnce() -> Result<Vec<SnapshotFile>, StateError> + Send>);

impl PendingFiles {
    /// Wraps the blocking call that finishes the snapshot.
    pub fn new(f: impl FnOnce() -> Result<Vec<SnapshotFile>, StateError> + Send + 'static) -> Self {
        Self(Box::new(f))
    }
}

impl std::fmt::Debug for PendingFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PendingFiles(..)")
    }
}

impl LocalSnapshot {
    /// Waits (blocking) for files still being produced and adds them: afterwards `files` is
    /// the whole snapshot. Call it off the task thread (the upload does).
    pub fn resolve(mut self) -> Result<Self, StateError> {
        if let Some(PendingFiles(finish)) = self.pending.take() {
            self.files.extend(finish()?);
        }
        Ok(self)
    }

    /// The total size of the snapshot's files in bytes (files on disk are `stat`ed). Files
    /// still [`pending`](Self::pending) are not counted: [`resolve`](Self::resolve) first.
    pub fn size_bytes(&self) -> u64 {
        self.files
            .iter()
            .map(|f| match &f.content {
                SnapshotContent::Bytes(b) => b.len() as u64,
                SnapshotContent::Shared(b) => b.len() as u64,
                SnapshotContent::Path(p) => std::fs::metadata(p).map(|m| m.len()).unwrap_or(0),
            })
            .sum()
    }

    /// Like [`copy_to_dir`](Self::copy_to_dir), but a file on disk is hard-linked when the file
    /// system allows (its bytes never change), copied otherwise.
    pub fn link_to_dir(&self, dir: &Path) -> Result<RestoredSnapshot, StateError> {
        self.materialize(dir, true)
    }

    /// Writes every file into `dir` (created if missing) and describes the copy as a
    /// [`RestoredSnapshot`]: what an upload followed by a download yields, without the object
    /// store. For tests, benchmarks and local recovery; the snapshot itself is left as it is.
    pub fn copy_to_dir(&self, dir: &Path) -> Result<RestoredSnapshot, StateError> {
        self.materialize(dir, false)
    }

    fn materialize(&self, dir: &Path, link: bool) -> Result<RestoredSnapshot, StateError> {
        let failed = |op: String, e: std::io::Error| StateError::Snapshot {
            checkpoint: self.checkpoint,
            backend: self.backend,
            op,
            detail: e.to_string(),
        };
        if self.pending.is_some() {
            return Err(failed(
                "copy a snapshot".into(),
                std::io::Error::other("its background part is pending: resolve it first"),
            ));
        }
        std::fs::create_dir_all(dir)
            .map_err(|e| failed(format!("create directory {}", dir.display()), e))?;
        let mut files = Vec::with_capacity(self.files.len());
        for file in &self.files {
            let to = dir.join(&file.name);
            match &file.content {
                SnapshotContent::Path(from) => (if link {
                    std::fs::hard_link(from, &to).or_else(|_| std::fs::copy(from, &to).map(drop))
                } else {
                    std::fs::copy(from, &to).map(drop)
                })
                .map_err(|e| failed(format!("copy {} to {}", from.display(), to.display()), e)),
                SnapshotContent::Bytes(bytes) => std::fs::write(&to, bytes)
                    .map_err(|e| failed(format!("write {}", to.display()), e)),
                SnapshotContent::Shared(bytes) => std::fs::write(&to, &bytes[..])
                    .map_err(|e| failed(format!("write {}", to.display()), e)),
            }?;
            files.push((file.name.clone(), to));
        }
        Ok(RestoredSnapshot {
            checkpoint: self.checkpoint,
            backend: self.backend.to_string(),
            format: self.format,
            key_groups: self.key_groups,
            descriptors: self.descriptors.clone(),
            files,
            dir: dir.to_path_buf(),
        })
    }
}

/// What a backend is restored from: the description stored with the checkpoint and the
/// snapshot's files, downloaded and verified, on local disk.
#[derive(Debug, Clone)]
pub struct RestoredSnapshot {
    /// The checkpoint being restored (for error messages).
    pub checkpoint: CheckpointId,
    /// The backend that wrote it.
    pub backend: String,
    /// That backend's snapshot format version.
    pub format: u32,
    /// The key groups it covers; must equal the new backend's range (rescaling from a
    /// checkpoint is not supported; savepoints will do it).
    pub key_groups: KeyGroupRange,
    /// The declared states.
    pub descriptors: Vec<StateDescriptor>,
    /// `(name, local path)` of every file, in the snapshot's order. The backend may move or
    /// hard-link them; the caller removes [`RestoredSnapshot::dir`] afterwards.
    pub files: Vec<(String, PathBuf)>,
    /// The directory holding the downloaded files.
    pub dir: PathBuf,
}

impl RestoredSnapshot {
    /// A [`StateError::Restore`] naming this snapshot's checkpoint.
    pub fn error(&self, backend: &'static str, detail: impl std::fmt::Display) -> StateError {
        StateError::Restore {
            checkpoint: self.checkpoint,
            backend,
            detail: detail.to_string(),
        }
    }

    /// A [`StateError::Incompatible`] naming this snapshot's checkpoint.
    pub fn incompatible(
        &self,
        backend: &'static str,
        detail: impl std::fmt::Display,
    ) -> StateError {
        StateError::Incompatible {
            checkpoint: self.checkpoint,
            backend,
            detail: detail.to_string(),
        }
    }

    /// Checks what every backend checks before reading a file: the snapshot was written by
    /// `backend` in `format`, and covers exactly `range` (rescaling from a checkpoint is not
    /// supported).
    pub fn check_compatible(
        &self,
        backend: &'static str,
        format: u32,
        range: KeyGroupRange,
    ) -> Result<(), StateError> {
        if self.backend != backend {
            return Err(self.incompatible(
                backend,
                format!("the snapshot was taken by the {} backend", self.backend),
            ));
        }
        if self.format != format {
            return Err(self.incompatible(
                backend,
                format!(
                    "snapshot format {} is not the supported format {format}",
                    self.format
                ),
            ));
        }
        if self.key_groups != range {
            return Err(self.incompatible(
                backend,
                format!(
                    "the snapshot covers key groups {} but this subtask owns {range}; \
                     rescaling from a checkpoint is not supported",
                    self.key_groups
                ),
            ));
        }
        Ok(())
    }

    /// The local path of the file named `name`, if the snapshot has one.
    pub fn file(&self, name: &str) -> Option<&Path> {
        self.files
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| p.as_path())
    }
}
