//! [`LocalStateCache`]: task-local copies of a job's checkpoint files, so that a TaskManager that
//! survives a failure restores its subtasks from its own disk instead of downloading them (what
//! Flink calls task-local recovery).
//!
//! # Layout and index
//!
//! A cache is rooted at one directory per TaskManager per job (for example
//! `<state-dir>/local-recovery/<job-id>/`). Every file is keyed by its
//! [`FileHandle`] path — the object-store path relative to the job's checkpoint directory — and
//! stored once at `<root>/files/<handle path>`, however many checkpoints reference it:
//!
//! ```text
//! <root>/files/shared/<uid>/<subtask>/<n>-<name>    a shareable file first uploaded for checkpoint n
//! <root>/files/chk-<n>/<uid>/<subtask>/<name>       a private file of checkpoint n
//! <root>/staging/<number>                           a file on its way in (never read)
//! ```
//!
//! An in-memory index records each cached file's size and CRC32 and which checkpoint ids
//! reference which handle paths. The index is not persisted: a TaskManager process that restarts
//! starts with an empty cache, and [`LocalStateCache::open`] deletes whatever an earlier process
//! left under the root (without the index nobody knows which of those files are complete).
//!
//! # Flow
//!
//! 1. **Record.** An [`Uploader`](crate::Uploader) built
//!    [`with_local_cache`](crate::Uploader::with_local_cache) puts every file of a keyed
//!    snapshot it uploaded — new and reused from the base alike — under the checkpoint being
//!    uploaded, before the snapshot's local directory is removed: hard-linked (RocksDB's
//!    checkpoint files are immutable hard links already), copied when a link is impossible
//!    (another filesystem), written when the backend held the file in memory. A path the cache
//!    already holds with the same size and CRC32 only gains a reference. A restore records the
//!    files it downloaded under the restored checkpoint the same way.
//! 2. **Restore.** For each handle, a cached file with the handle's size is hard-linked (or
//!    copied) into the restore directory, and the linked file's CRC32 is checked against the
//!    handle. Local bytes are never trusted: a file that fails the check is removed from the
//!    cache with a warning naming it, and the caller downloads it instead.
//! 3. **Prune.** [`LocalStateCache::retain_from`] (checkpoint `n` completed) forgets every
//!    checkpoint before `n`; [`LocalStateCache::discard`] forgets one aborted checkpoint. Files
//!    no remaining checkpoint references are deleted.
//!
//! # Concurrency
//!
//! One cache is shared by all subtasks of the job on the TaskManager, whose uploads and restores
//! run concurrently. Every operation runs on tokio's blocking pool. The index is behind a mutex;
//! copies, links into `staging/` and CRC reads happen outside it, while the two metadata steps
//! that make a file appear or disappear (the rename into `files/` and the unlink) happen under
//! it, so the index and the directory never disagree.
//!
//! # Failures
//!
//! The cache only saves downloads, so none of its failures fail an upload or a restore: a file
//! that cannot be cached is logged and left out, a cached file that cannot be read or linked is
//! downloaded, and a file that cannot be deleted is logged and stays on disk until the cache's
//! root is deleted.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use weir_checkpoint::FileHandle;
use weir_state::SnapshotContent;
use weir_storage::crc32;
use weir_types::CheckpointId;

/// The directory under the root holding the cached files, by handle path.
const FILES_DIR: &str = "files";
/// The directory under the root where files are prepared before they are renamed into place.
const STAGING_DIR: &str = "staging";

/// Why a [`LocalStateCache`] could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum LocalCacheError {
    /// The root could not be emptied or its directories created. Local recovery is unavailable;
    /// the job can still run without a cache (every restore then downloads).
    #[error("cannot prepare the local state cache at '{}': {source}", .root.display())]
    Open {
        /// The cache's root directory.
        root: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
}

/// Task-local copies of one job's checkpoint files on one TaskManager, keyed by handle path.
/// See the module doc for the layout, the flow and what happens on failure.
///
/// Share it between the job's [`Uploader`](crate::Uploader)s as an `Arc`.
#[derive(Debug)]
pub struct LocalStateCache {
    root: PathBuf,
    files_dir: PathBuf,
    staging_dir: PathBuf,
    next_staging: AtomicU64,
    index: Mutex<Index>,
}

/// What the cache holds, and for which checkpoints.
#[derive(Debug, Default)]
struct Index {
    /// Handle path → the cached file's size and CRC32. A path is here exactly when its file is
    /// in `files/`.
    files: HashMap<String, Entry>,
    /// Checkpoint → the handle paths it references. May name a path that is not (or no longer)
    /// cached, e.g. after a damaged file was removed.
    checkpoints: BTreeMap<CheckpointId, BTreeSet<String>>,
}

/// A cached file's identity, as its handle records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    size: u64,
    crc32: u32,
}

impl Entry {
    fn of(handle: &FileHandle) -> Self {
        Self {
            size: handle.size(),
            crc32: handle.crc32(),
        }
    }
}

impl Index {
    fn reference(&mut self, checkpoint: CheckpointId, path: &str) {
        self.checkpoints
            .entry(checkpoint)
            .or_default()
            .insert(path.to_owned());
    }
}

/// Where the bytes of a file to cache (or to upload) are.
#[derive(Clone, Debug)]
pub(crate) enum LocalBytes {
    /// A file on local disk, immutable while it is being used.
    File(PathBuf),
    /// Bytes in memory.
    Bytes(Bytes),
}

impl From<SnapshotContent> for LocalBytes {
    fn from(content: SnapshotContent) -> Self {
        match content {
            SnapshotContent::Path(path) => LocalBytes::File(path),
            SnapshotContent::Bytes(bytes) => LocalBytes::Bytes(Bytes::from(bytes)),
            SnapshotContent::Shared(bytes) => LocalBytes::Bytes(Bytes::from_owner(bytes)),
        }
    }
}

impl LocalStateCache {
    /// Opens an empty cache at `root`, deleting whatever an earlier process left there (the
    /// index lives in memory only, so leftovers cannot be trusted or pruned). Open one cache per
    /// root: two caches on the same root would delete each other's files.
    ///
    /// Blocks on file I/O: call it while deploying the job, or from `spawn_blocking`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, LocalCacheError> {
        let root = root.into();
        let fail = |source| LocalCacheError::Open {
            root: root.clone(),
            source,
        };
        match std::fs::remove_dir_all(&root) {
            Ok(()) => tracing::debug!(root = %root.display(),
                "removed an earlier process's local state cache"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(fail(e)),
        }
        let files_dir = root.join(FILES_DIR);
        let staging_dir = root.join(STAGING_DIR);
        std::fs::create_dir_all(&files_dir).map_err(fail)?;
        std::fs::create_dir_all(&staging_dir).map_err(fail)?;
        Ok(Self {
            root,
            files_dir,
            staging_dir,
            next_staging: AtomicU64::new(0),
            index: Mutex::new(Index::default()),
        })
    }

    /// The cache's root directory. Delete it after dropping the cache when the job leaves the
    /// TaskManager (the next [`open`](Self::open) of the same root would, too).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The checkpoints the cache holds files for, oldest first.
    pub fn checkpoints(&self) -> Vec<CheckpointId> {
        self.index().checkpoints.keys().copied().collect()
    }

    /// The handle paths cached for `checkpoint`, sorted.
    pub fn files_of(&self, checkpoint: CheckpointId) -> Vec<String> {
        let index = self.index();
        index
            .checkpoints
            .get(&checkpoint)
            .into_iter()
            .flatten()
            .filter(|path| index.files.contains_key(*path))
            .cloned()
            .collect()
    }

    /// Where the cached copy of the file at `handle_path` is, if the cache holds it. For
    /// diagnostics and tests; restores go through the [`Uploader`](crate::Uploader).
    pub fn cached_path(&self, handle_path: &str) -> Option<PathBuf> {
        self.index()
            .files
            .contains_key(handle_path)
            .then(|| self.local_path(handle_path))
    }

    /// The bytes the cached files take, each counted once.
    pub fn cached_bytes(&self) -> u64 {
        self.index().files.values().map(|e| e.size).sum()
    }

    /// Checkpoint `checkpoint` completed: forgets every earlier checkpoint and deletes the files
    /// that no remaining checkpoint (`checkpoint` and any later one still in flight)
    /// references. Deletion errors are logged.
    pub async fn retain_from(self: &Arc<Self>, checkpoint: CheckpointId) {
        self.blocking("pruning", move |cache| {
            cache.forget(|id| id < checkpoint);
        })
        .await;
    }

    /// Checkpoint `checkpoint` was aborted: forgets it and deletes the files no other
    /// checkpoint references. Deletion errors are logged. An abandoned upload that was already
    /// caching may still record files under `checkpoint` after this; the next
    /// [`retain_from`](Self::retain_from) past it removes them.
    pub async fn discard(self: &Arc<Self>, checkpoint: CheckpointId) {
        self.blocking("discarding a checkpoint", move |cache| {
            cache.forget(|id| id == checkpoint);
        })
        .await;
    }

    /// Puts each file under `checkpoint` (step 1 of the module doc's flow) and returns how many
    /// are cached now. A file that cannot be cached is logged and left out.
    pub(crate) async fn put_all(
        self: &Arc<Self>,
        checkpoint: CheckpointId,
        files: Vec<(FileHandle, LocalBytes)>,
    ) -> usize {
        let count = files.len();
        let cached = self
            .blocking("caching files", move |cache| {
                files
                    .into_iter()
                    .filter(
                        |(handle, source)| match cache.put(checkpoint, handle, source) {
                            Ok(()) => true,
                            Err(e) => {
                                tracing::warn!(%checkpoint, file = handle.path(), error = %e,
                                "cannot keep a local copy of a checkpoint file; \
                                 a restore will download it");
                                false
                            }
                        },
                    )
                    .count()
            })
            .await
            .unwrap_or(0);
        tracing::debug!(%checkpoint, cached, files = count, "checkpoint files cached locally");
        cached
    }

    /// Step 2 of the module doc's flow for one file: brings the cached copy of `handle` to
    /// `target` (replacing any file there) if the cache holds it with the handle's size and its
    /// CRC32 matches, and records it under `checkpoint`. `false` when the caller must download
    /// instead; then nothing is left at `target`.
    pub(crate) async fn restore_into(
        self: &Arc<Self>,
        checkpoint: CheckpointId,
        handle: FileHandle,
        target: PathBuf,
    ) -> bool {
        self.blocking("restoring a file", move |cache| {
            cache.restore(checkpoint, &handle, &target)
        })
        .await
        .unwrap_or(false)
    }

    /// The cached bytes of `handle` if the cache holds them intact (size and CRC32 checked),
    /// recorded under `checkpoint`; `None` when the caller must download instead.
    pub(crate) async fn read(
        self: &Arc<Self>,
        checkpoint: CheckpointId,
        handle: FileHandle,
    ) -> Option<Vec<u8>> {
        self.blocking("reading a file", move |cache| {
            cache.read_verified(checkpoint, &handle)
        })
        .await
        .flatten()
    }

    /// Runs `f` on the blocking pool; `None` (logged) if it panicked.
    async fn blocking<T, F>(self: &Arc<Self>, what: &'static str, f: F) -> Option<T>
    where
        T: Send + 'static,
        F: FnOnce(&LocalStateCache) -> T + Send + 'static,
    {
        let cache = Arc::clone(self);
        match tokio::task::spawn_blocking(move || f(&cache)).await {
            Ok(value) => Some(value),
            Err(e) => {
                tracing::warn!(root = %self.root.display(), error = %e,
                    "the local state cache failed while {what}");
                None
            }
        }
    }

    fn index(&self) -> MutexGuard<'_, Index> {
        // Every update leaves the index consistent before it can panic, so a poisoned lock
        // still guards a usable index.
        self.index.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn local_path(&self, handle_path: &str) -> PathBuf {
        self.files_dir.join(handle_path)
    }

    /// Caches one file under `checkpoint`, unless it already is.
    fn put(
        &self,
        checkpoint: CheckpointId,
        handle: &FileHandle,
        source: &LocalBytes,
    ) -> io::Result<()> {
        let path = handle.path();
        let entry = Entry::of(handle);
        {
            let mut index = self.index();
            if index.files.get(path) == Some(&entry) {
                index.reference(checkpoint, path);
                return Ok(());
            }
        }
        let staged = self.stage(source)?;
        let result = self.stage_size_matches(&staged, handle).and_then(|()| {
            let mut index = self.index();
            match index.files.get(path) {
                Some(cached) if *cached == entry => {
                    // Another task cached it meanwhile.
                    index.reference(checkpoint, path);
                    return Ok(false);
                }
                Some(cached) => tracing::warn!(
                    file = path,
                    cached_size = cached.size,
                    size = entry.size,
                    "a cached file differs from its handle; replacing it"
                ),
                None => {}
            }
            let target = self.local_path(path);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::rename(&staged, &target)?;
            index.files.insert(path.to_owned(), entry);
            index.reference(checkpoint, path);
            Ok(true)
        });
        if !matches!(result, Ok(true)) {
            remove_quietly(&staged);
        }
        result.map(drop)
    }

    /// Prepares a file's bytes in `staging/` under a fresh name, outside the lock.
    fn stage(&self, source: &LocalBytes) -> io::Result<PathBuf> {
        let staged = self.staging_dir.join(
            self.next_staging
                .fetch_add(1, Ordering::Relaxed)
                .to_string(),
        );
        let result = match source {
            LocalBytes::File(path) => link_or_copy(path, &staged),
            LocalBytes::Bytes(bytes) => std::fs::write(&staged, bytes),
        };
        match result {
            Ok(()) => Ok(staged),
            Err(e) => {
                remove_quietly(&staged);
                Err(e)
            }
        }
    }

    /// A cheap guard against caching the wrong file: its length must be the handle's size.
    fn stage_size_matches(&self, staged: &Path, handle: &FileHandle) -> io::Result<()> {
        let len = std::fs::metadata(staged)?.len();
        if len == handle.size() {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the local file has {len} bytes, its handle records {}",
                    handle.size()
                ),
            ))
        }
    }

    /// The cached copy of `handle`'s path, if the cache holds it with the handle's size.
    fn lookup(&self, handle: &FileHandle) -> Option<PathBuf> {
        let index = self.index();
        let entry = index.files.get(handle.path())?;
        (entry.size == handle.size()).then(|| self.local_path(handle.path()))
    }

    fn restore(&self, checkpoint: CheckpointId, handle: &FileHandle, target: &Path) -> bool {
        let Some(cached) = self.lookup(handle) else {
            return false;
        };
        // Never link onto an existing file: if it were a link to a cached file, a copy would
        // write through it.
        remove_quietly(target);
        if let Err(e) = link_or_copy(&cached, target) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(file = handle.path(), local = %cached.display(), error = %e,
                    "cannot bring a cached file into the restore directory; downloading it");
            }
            remove_quietly(target);
            return false;
        }
        // Check what was linked, not the cache's path, which may change meanwhile.
        match std::fs::read(target) {
            Ok(bytes) if is_intact(&bytes, handle) => {
                self.index().reference(checkpoint, handle.path());
                true
            }
            Ok(_) => {
                remove_quietly(target);
                self.evict_damaged(handle, &cached);
                false
            }
            Err(e) => {
                tracing::warn!(file = handle.path(), local = %target.display(), error = %e,
                    "cannot read a cached file; downloading it");
                remove_quietly(target);
                false
            }
        }
    }

    fn read_verified(&self, checkpoint: CheckpointId, handle: &FileHandle) -> Option<Vec<u8>> {
        let cached = self.lookup(handle)?;
        match std::fs::read(&cached) {
            Ok(bytes) if is_intact(&bytes, handle) => {
                self.index().reference(checkpoint, handle.path());
                Some(bytes)
            }
            Ok(_) => {
                self.evict_damaged(handle, &cached);
                None
            }
            Err(e) => {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(file = handle.path(), local = %cached.display(), error = %e,
                        "cannot read a cached file; downloading it");
                }
                None
            }
        }
    }

    /// Removes a cached file whose bytes do not match its handle.
    fn evict_damaged(&self, handle: &FileHandle, cached: &Path) {
        tracing::warn!(file = handle.path(), local = %cached.display(),
            "a cached checkpoint file is damaged (its size or CRC32 differs from its handle); \
             removing it from the local cache and downloading it instead");
        let mut index = self.index();
        if index.files.remove(handle.path()).is_some() {
            self.delete(handle.path());
        }
    }

    /// Forgets every checkpoint `doomed` selects and deletes the files no other checkpoint
    /// references.
    fn forget(&self, doomed: impl Fn(CheckpointId) -> bool) {
        let mut index = self.index();
        let dropped: Vec<CheckpointId> = index
            .checkpoints
            .keys()
            .copied()
            .filter(|id| doomed(*id))
            .collect();
        let mut candidates = BTreeSet::new();
        for id in &dropped {
            candidates.extend(index.checkpoints.remove(id).unwrap_or_default());
        }
        let kept: HashSet<&String> = index.checkpoints.values().flatten().collect();
        let unreferenced: Vec<String> = candidates
            .into_iter()
            .filter(|path| !kept.contains(path))
            .collect();
        let mut deleted = 0;
        for path in unreferenced {
            if index.files.remove(&path).is_some() {
                self.delete(&path);
                deleted += 1;
            }
        }
        if !dropped.is_empty() {
            tracing::debug!(checkpoints = ?dropped, deleted,
                "forgot checkpoints in the local state cache");
        }
    }

    /// Deletes a cached file and the directories it leaves empty. Call with the index locked,
    /// after removing the file's entry.
    fn delete(&self, handle_path: &str) {
        let file = self.local_path(handle_path);
        if let Err(e) = std::fs::remove_file(&file) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(local = %file.display(), error = %e,
                    "cannot delete a file of the local state cache; it stays on disk");
            }
            return;
        }
        let mut dir = file.parent();
        while let Some(d) = dir.filter(|d| *d != self.files_dir) {
            // Fails, and ends the walk, at the first directory that is not empty.
            if std::fs::remove_dir(d).is_err() {
                break;
            }
            dir = d.parent();
        }
    }
}

/// Whether `bytes` are what `handle` describes.
fn is_intact(bytes: &[u8], handle: &FileHandle) -> bool {
    bytes.len() as u64 == handle.size() && crc32(bytes) == handle.crc32()
}

/// Hard-links `from` to `to`, or copies it when a link is impossible (another filesystem, a
/// filesystem without links).
fn link_or_copy(from: &Path, to: &Path) -> io::Result<()> {
    std::fs::hard_link(from, to).or_else(|link_err| {
        std::fs::copy(from, to).map(drop).map_err(|copy_err| {
            if copy_err.kind() == io::ErrorKind::NotFound {
                copy_err
            } else {
                io::Error::new(
                    copy_err.kind(),
                    format!("cannot link ({link_err}) nor copy ({copy_err})"),
                )
            }
        })
    })
}

fn remove_quietly(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!(local = %path.display(), error = %e, "cannot remove a local file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle(path: &str, bytes: &[u8]) -> FileHandle {
        FileHandle::new(
            path,
            bytes.len() as u64,
            crc32(bytes),
            path.starts_with("shared/"),
        )
        .unwrap()
    }

    fn cache(root: &Path) -> Arc<LocalStateCache> {
        Arc::new(LocalStateCache::open(root.join("cache")).unwrap())
    }

    async fn put(cache: &Arc<LocalStateCache>, id: u64, files: &[(&str, &[u8])]) {
        let files: Vec<_> = files
            .iter()
            .map(|(path, bytes)| {
                (
                    handle(path, bytes),
                    LocalBytes::Bytes(Bytes::copy_from_slice(bytes)),
                )
            })
            .collect();
        let n = files.len();
        assert_eq!(cache.put_all(CheckpointId(id), files).await, n);
    }

    #[tokio::test]
    async fn pruning_keeps_files_a_newer_checkpoint_still_references() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = cache(tmp.path());
        put(
            &cache,
            1,
            &[("shared/op/0/1-a.sst", b"a"), ("chk-1/op/0/M", b"m1")],
        )
        .await;
        put(
            &cache,
            2,
            &[
                ("shared/op/0/1-a.sst", b"a"),
                ("shared/op/0/2-b.sst", b"b"),
                ("chk-2/op/0/M", b"m2"),
            ],
        )
        .await;
        let kept = cache.cached_path("shared/op/0/1-a.sst").unwrap();
        let old = cache.cached_path("chk-1/op/0/M").unwrap();

        cache.retain_from(CheckpointId(2)).await;
        assert_eq!(cache.checkpoints(), [CheckpointId(2)]);
        assert_eq!(
            cache.files_of(CheckpointId(2)),
            ["chk-2/op/0/M", "shared/op/0/1-a.sst", "shared/op/0/2-b.sst"]
        );
        assert_eq!(std::fs::read(&kept).unwrap(), b"a");
        assert!(!old.exists(), "checkpoint 1's own file is deleted");
        assert!(
            !old.parent().unwrap().exists(),
            "and so is its emptied directory"
        );
        assert_eq!(cache.cached_bytes(), 4);
    }

    #[tokio::test]
    async fn discarding_an_aborted_checkpoint_deletes_only_its_own_files() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = cache(tmp.path());
        put(&cache, 4, &[("shared/op/0/4-a.sst", b"a")]).await;
        put(
            &cache,
            5,
            &[("shared/op/0/4-a.sst", b"a"), ("shared/op/0/5-b.sst", b"b")],
        )
        .await;
        let aborted = cache.cached_path("shared/op/0/5-b.sst").unwrap();

        cache.discard(CheckpointId(5)).await;
        assert_eq!(cache.checkpoints(), [CheckpointId(4)]);
        assert_eq!(cache.files_of(CheckpointId(4)), ["shared/op/0/4-a.sst"]);
        assert!(cache.cached_path("shared/op/0/4-a.sst").unwrap().exists());
        assert!(!aborted.exists());
    }

    #[tokio::test]
    async fn a_file_referenced_by_several_checkpoints_is_stored_once() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = cache(tmp.path());
        for id in 1..=3 {
            put(&cache, id, &[("shared/op/0/1-a.sst", b"abc")]).await;
        }
        assert_eq!(cache.cached_bytes(), 3);
        let stored = std::fs::read_dir(tmp.path().join("cache/files/shared/op/0"))
            .unwrap()
            .count();
        assert_eq!(stored, 1);
        assert_eq!(
            std::fs::read_dir(tmp.path().join("cache/staging"))
                .unwrap()
                .count(),
            0,
            "nothing is left in staging"
        );
    }

    #[tokio::test]
    async fn a_damaged_cached_file_is_not_restored_and_is_removed_from_the_cache() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = cache(tmp.path());
        let bytes = b"sst bytes".as_slice();
        put(&cache, 1, &[("shared/op/0/1-a.sst", bytes)]).await;
        let cached = cache.cached_path("shared/op/0/1-a.sst").unwrap();
        std::fs::write(&cached, b"sst bytez").unwrap();

        let target = tmp.path().join("restore-a.sst");
        let h = handle("shared/op/0/1-a.sst", bytes);
        assert!(
            !cache
                .restore_into(CheckpointId(1), h.clone(), target.clone())
                .await
        );
        assert!(
            !target.exists(),
            "damaged bytes never reach the restore directory"
        );
        assert_eq!(cache.cached_path(h.path()), None);
        assert!(!cached.exists());
        assert_eq!(cache.read(CheckpointId(1), h).await, None);
    }

    #[tokio::test]
    async fn a_cached_file_with_another_size_than_the_handle_is_a_miss() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = cache(tmp.path());
        put(&cache, 1, &[("chk-1/op/0/M", b"manifest")]).await;
        let other = FileHandle::new("chk-1/op/0/M", 3, crc32(b"man"), false).unwrap();
        assert_eq!(cache.read(CheckpointId(1), other).await, None);
        assert_eq!(
            cache
                .read(CheckpointId(1), handle("chk-1/op/0/M", b"manifest"))
                .await,
            Some(b"manifest".to_vec())
        );
    }

    #[tokio::test]
    async fn opening_a_cache_deletes_what_an_earlier_process_left() {
        let tmp = tempfile::tempdir().unwrap();
        let leftover = tmp.path().join("cache/files/shared/op/0/1-a.sst");
        std::fs::create_dir_all(leftover.parent().unwrap()).unwrap();
        std::fs::write(&leftover, b"a").unwrap();
        let cache = cache(tmp.path());
        assert!(!leftover.exists());
        assert!(cache.checkpoints().is_empty());
        assert_eq!(cache.cached_bytes(), 0);
    }

    #[tokio::test]
    async fn concurrent_puts_of_the_same_file_store_it_once_under_every_checkpoint() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = cache(tmp.path());
        let puts = (1..=8).map(|id| {
            let cache = Arc::clone(&cache);
            tokio::spawn(async move { put(&cache, id, &[("shared/op/0/1-a.sst", b"abc")]).await })
        });
        for p in puts.collect::<Vec<_>>() {
            p.await.unwrap();
        }
        assert_eq!(cache.checkpoints().len(), 8);
        assert_eq!(cache.cached_bytes(), 3);
        cache.retain_from(CheckpointId(8)).await;
        assert_eq!(
            std::fs::read(cache.cached_path("shared/op/0/1-a.sst").unwrap()).unwrap(),
            b"abc"
        );
        cache.discard(CheckpointId(8)).await;
        assert_eq!(cache.cached_path("shared/op/0/1-a.sst"), None);
        assert_eq!(cache.cached_bytes(), 0);
    }
}
