//! [`Uploader`]: moves one task's snapshots to object storage and back.
//!
//! # Upload flow ([`Uploader::upload_keyed`])
//!
//! 1. **Guard the local snapshot.** [`LocalSnapshot::cleanup_dir`] is removed when the call ends,
//!    whatever the outcome — also when the caller drops the future (the checkpoint was
//!    aborted), so a failed or abandoned upload never leaks a RocksDB native checkpoint.
//! 2. **Plan** (no I/O): every file name must be usable as a file name and unique in the
//!    snapshot, or the upload fails before anything is written ([`TransferError::BadFileName`]).
//!    A *shareable* file whose name is in the incremental base reuses the base's
//!    [`FileHandle`]; any other shareable file gets a fresh path
//!    `shared/<uid>/<subtask>/<checkpoint-number>-<name>`; a private file gets
//!    `chk-<n>/<uid>/<subtask>/<name>`. Private files are never reused. The
//!    [`KeyedStateMeta`] is built and encoded here too, so nothing can fail after the uploads.
//! 3. **Check reused files**: a reused file's local size must equal its base handle's size
//!    ([`TransferError::BaseMismatch`] otherwise) — equal names must mean equal bytes.
//! 4. **Upload** the other files, at most [`MAX_CONCURRENT_TRANSFERS`] at a time: read into
//!    memory, CRC32 computed, written create-only ([`Store::put_with_crc`]: an upload never
//!    overwrites an object; the store retries transient failures).
//! 5. **On the first failure**, start no further upload, wait for the running ones, then delete
//!    (best effort) every object this call wrote or may have written — never a reused base file,
//!    never an object that was already there — and return the error, which names the file.
//! 6. **On success**, with a [`LocalStateCache`] ([`Uploader::with_local_cache`]), put every
//!    file of the snapshot — uploaded and reused alike — into it under the checkpoint, while
//!    the local snapshot directory still exists (a file that cannot be cached is logged and
//!    left out). Return the handles in snapshot order (new and reused), the inline
//!    [`KeyedStateMeta`], the shareable files as the next base, and byte counts. Step 1's guard
//!    then removes the local directory.
//!
//! # Download flow ([`Uploader::download_keyed`])
//!
//! 1. Decode and validate the inline [`KeyedStateMeta`] (version, names, paths) and find the
//!    handle of every file it lists.
//! 2. Create the target directory, then restore at most [`MAX_CONCURRENT_TRANSFERS`] files at a
//!    time. With a [`LocalStateCache`], a cached copy with the handle's size is hard-linked (or
//!    copied) to `<dir>/<name>` and its CRC32 checked; a damaged one is removed from the cache
//!    (logged) and the file downloaded instead. Otherwise the file is read with CRC32
//!    verification ([`Store::get_verified`]), its size checked, written to `<dir>/<name>`, and
//!    put into the cache under the restored checkpoint. Damaged bytes are never written.
//! 3. On the first failure, start no further download, wait for the running ones, remove the
//!    local files this call wrote and return the error naming the checkpoint and file path.
//! 4. On success, return the [`RestoredSnapshot`], the shareable files (the restored task's
//!    incremental base) and byte counts, downloaded and local apart ([`DownloadStats`]).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use tokio::task::JoinSet;
use tracing::Instrument;
use weir_checkpoint::{FileHandle, OperatorSubtaskState};
use weir_state::{LocalSnapshot, RestoredSnapshot, SnapshotFile};
use weir_storage::{CheckpointPaths, ObjectPath, PathError, Store};
use weir_types::{CheckpointId, OperatorUid, SubtaskIndex};

use crate::error::TransferError;
use crate::local::{LocalBytes, LocalStateCache};
use crate::meta::{check_file_names, KeyedFileMeta, KeyedStateMeta, MetaError};

/// Shareable files a task uploaded for one checkpoint: file name → handle. The incremental base.
pub type SharedFiles = BTreeMap<String, FileHandle>;

/// How many files of one snapshot are uploaded or downloaded at the same time. Each holds its
/// file in memory while it runs.
pub const MAX_CONCURRENT_TRANSFERS: usize = 4;

/// Moves keyed snapshots and small private files of one job between local disk and the job's
/// checkpoint directory in object storage, optionally keeping local copies for task-local
/// recovery ([`Uploader::with_local_cache`]). Cheap to clone.
#[derive(Clone, Debug)]
pub struct Uploader {
    store: Store,
    paths: CheckpointPaths,
    cache: Option<Arc<LocalStateCache>>,
    /// A savepoint's uploader: every file is private and lives at `<uid>/<subtask>/<name>`
    /// under the store's root (the savepoint folder); nothing is reused or shared.
    self_contained: bool,
    /// The local directory the store writes to, when it is a `file://` store: a snapshot file
    /// already on disk is hard-linked there (its bytes never change) instead of copied.
    link_root: Option<PathBuf>,
}

/// What [`Uploader::upload_keyed`] stored for one keyed operator of one subtask.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadedKeyed {
    /// To acknowledge: every handle the snapshot references (new and reused), in snapshot
    /// order, and the [`KeyedStateMeta`] JSON inline.
    pub state: OperatorSubtaskState,
    /// Every shareable file the snapshot references now: the next incremental base once this
    /// checkpoint completes (never before: DESIGN §8 invariant 4).
    pub shared: SharedFiles,
    /// Bytes written by this upload (new files only).
    pub bytes_uploaded: u64,
    /// Bytes of every referenced file, reused ones included.
    pub full_size: u64,
    /// Files reused from the base.
    pub reused_files: usize,
    /// Files written by this upload.
    pub uploaded_files: usize,
}

/// What [`Uploader::download_keyed`] restored, and from where.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct DownloadStats {
    /// Bytes downloaded from the object store.
    pub bytes: u64,
    /// Files downloaded from the object store.
    pub files: usize,
    /// Bytes restored from the [`LocalStateCache`] instead (CRC32-verified).
    pub bytes_local: u64,
    /// Files restored from the [`LocalStateCache`] instead.
    pub files_local: usize,
}

impl DownloadStats {
    /// Bytes restored, downloaded and local.
    pub fn total_bytes(&self) -> u64 {
        self.bytes + self.bytes_local
    }

    /// Files restored, downloaded and local.
    pub fn total_files(&self) -> usize {
        self.files + self.files_local
    }
}

/// Where [`Uploader::download_keyed`] got one file from.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Origin {
    /// The object store.
    Downloaded,
    /// The local cache.
    Local,
}

/// What one file of the plan does.
#[derive(Debug)]
enum Action {
    /// Reference the base's file instead of uploading.
    Reuse(FileHandle),
    /// Upload to a fresh path.
    Upload {
        object: ObjectPath,
        handle_path: String,
        shared: bool,
    },
}

impl Action {
    fn handle_path(&self) -> &str {
        match self {
            Action::Reuse(handle) => handle.path(),
            Action::Upload { handle_path, .. } => handle_path,
        }
    }
}

/// One file of a snapshot and what to do with it.
#[derive(Debug)]
struct PlannedFile {
    name: String,
    content: LocalBytes,
    action: Action,
}

impl Uploader {
    /// An uploader writing to `store` under `paths`' job directory.
    pub fn new(store: Store, paths: CheckpointPaths) -> Self {
        Self {
            store,
            paths,
            cache: None,
            self_contained: false,
            link_root: None,
        }
    }

    /// An uploader for a self-contained snapshot (a savepoint) in `store`, which is opened at
    /// the snapshot's own folder: every file goes to `<uid>/<subtask>/<name>` relative to that
    /// folder, as a private file; no base is reused and no local copy is kept, so the folder
    /// references nothing outside itself and can be moved or copied whole.
    pub fn self_contained(store: Store, job: weir_types::JobId) -> Self {
        Self {
            store,
            paths: CheckpointPaths::rooted(job),
            cache: None,
            self_contained: true,
            link_root: None,
        }
    }

    /// This uploader, hard-linking files already on local disk into `root` — the directory a
    /// `file://` store writes to — rather than copying them (a native savepoint of local
    /// RocksDB files costs no copy then). A file that cannot be linked (another file system)
    /// is copied as usual.
    pub fn with_link_root(mut self, root: PathBuf) -> Self {
        self.link_root = Some(root);
        self
    }

    /// This uploader, keeping local copies in `cache` for task-local recovery: every file of an
    /// uploaded keyed snapshot (and every private file) is put into it under its checkpoint, and
    /// restores take verified files from it before downloading. The owner of `cache` prunes it
    /// ([`LocalStateCache::retain_from`], [`LocalStateCache::discard`]).
    pub fn with_local_cache(mut self, cache: Arc<LocalStateCache>) -> Self {
        self.cache = Some(cache);
        self
    }

    /// The local cache, if this uploader keeps one.
    pub fn local_cache(&self) -> Option<&Arc<LocalStateCache>> {
        self.cache.as_ref()
    }

    /// The store written to.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The job's checkpoint paths.
    pub fn paths(&self) -> &CheckpointPaths {
        &self.paths
    }

    /// Uploads a keyed snapshot of (`uid`, `subtask`) for `snapshot.checkpoint`, reusing the
    /// shareable files of `base` (the last *completed* checkpoint's [`UploadedKeyed::shared`],
    /// or the [`SharedFiles`] of the restored checkpoint) whose names the snapshot still has.
    ///
    /// Removes `snapshot.cleanup_dir` at the end, success or failure. On failure, best-effort
    /// deletes what this call uploaded (never a reused base file) and returns an error naming
    /// the file. On success, with a local cache, every file of the snapshot is cached under
    /// `snapshot.checkpoint` first. See the module doc for the steps.
    pub async fn upload_keyed(
        &self,
        uid: &OperatorUid,
        subtask: SubtaskIndex,
        snapshot: LocalSnapshot,
        base: Option<&SharedFiles>,
    ) -> Result<UploadedKeyed, TransferError> {
        let span = tracing::debug_span!("upload_keyed", job = %self.paths.job(), operator = %uid,
            subtask = subtask.get(), checkpoint = snapshot.checkpoint.get());
        async {
            // Step 1: the guard removes the directory on every path out, drops included.
            let mut snapshot = snapshot;
            let cleanup = CleanupDir(snapshot.cleanup_dir.take());
            let result = match resolve(snapshot).await {
                Ok(snapshot) => self.upload_keyed_files(uid, subtask, snapshot, base).await,
                Err(e) => Err(e),
            };
            cleanup.remove().await;
            result
        }
        .instrument(span)
        .await
    }

    async fn upload_keyed_files(
        &self,
        uid: &OperatorUid,
        subtask: SubtaskIndex,
        snapshot: LocalSnapshot,
        base: Option<&SharedFiles>,
    ) -> Result<UploadedKeyed, TransferError> {
        let LocalSnapshot {
            checkpoint,
            backend,
            format,
            key_groups,
            descriptors,
            files,
            cleanup_dir: _,
            pending: _,
        } = snapshot;
        // Step 2: plan and describe.
        let plan = self.plan_keyed(checkpoint, uid, subtask, files, base)?;
        let meta = KeyedStateMeta::new(
            backend,
            format,
            key_groups,
            descriptors,
            plan.iter()
                .map(|f| KeyedFileMeta {
                    name: f.name.clone(),
                    path: f.action.handle_path().to_owned(),
                })
                .collect(),
        );
        let inline = meta
            .encode()
            .map_err(|source| TransferError::Meta { checkpoint, source })?;

        // Step 3: reused files must still be what their base handles describe.
        for file in &plan {
            if let Action::Reuse(handle) = &file.action {
                let local_size = local_size(checkpoint, &file.name, &file.content).await?;
                if local_size != handle.size() {
                    return Err(TransferError::BaseMismatch {
                        checkpoint,
                        name: file.name.clone(),
                        base_path: handle.path().to_owned(),
                        base_size: handle.size(),
                        local_size,
                    });
                }
            }
        }

        // Step 4: upload the rest.
        let mut handles: Vec<Option<FileHandle>> = Vec::with_capacity(plan.len());
        let mut names = Vec::with_capacity(plan.len());
        let mut jobs = Vec::new();
        let mut job_objects = Vec::new();
        let mut to_cache = Vec::new();
        for (index, file) in plan.into_iter().enumerate() {
            names.push(file.name.clone());
            if self.cache.is_some() {
                to_cache.push((index, file.content.clone()));
            }
            match file.action {
                Action::Reuse(handle) => handles.push(Some(handle)),
                Action::Upload {
                    object,
                    handle_path,
                    shared,
                } => {
                    handles.push(None);
                    job_objects.push((index, object.clone()));
                    let job = upload_one(
                        self.store.clone(),
                        checkpoint,
                        file.name.clone(),
                        file.content,
                        object,
                        handle_path,
                        shared,
                        self.link_root.clone(),
                    );
                    jobs.push((file.name, job));
                }
            }
        }
        let batch = run_bounded(checkpoint, jobs).await;

        // Step 5: on failure, take back what this call wrote.
        if let Some(error) = batch.error {
            let written = batch
                .touched
                .iter()
                .zip(&job_objects)
                .filter(|(touched, _)| **touched)
                .map(|(_, (_, object))| object);
            for object in written {
                if let Err(e) = self.store.delete(object).await {
                    tracing::warn!(%object, error = %e,
                        "cannot delete an object of a failed upload; it stays as garbage");
                }
            }
            tracing::warn!(error = %error, "keyed snapshot upload failed");
            return Err(error);
        }

        // Step 6: assemble.
        let mut bytes_uploaded = 0;
        let uploaded_files = job_objects.len();
        for (value, (index, _)) in batch.values.into_iter().zip(job_objects) {
            if let Some(handle) = value {
                bytes_uploaded += handle.size();
                handles[index] = Some(handle);
            }
        }
        let files: Vec<FileHandle> = handles.into_iter().flatten().collect();
        debug_assert_eq!(files.len(), names.len(), "every planned file has a handle");
        let full_size = files.iter().map(FileHandle::size).sum();
        if let Some(cache) = &self.cache {
            let entries = to_cache
                .into_iter()
                .map(|(index, content)| (files[index].clone(), content))
                .collect();
            cache.put_all(checkpoint, entries).await;
        }
        let shared: SharedFiles = names
            .into_iter()
            .zip(&files)
            .filter(|(_, handle)| handle.is_shared())
            .map(|(name, handle)| (name, handle.clone()))
            .collect();
        tracing::debug!(
            bytes_uploaded,
            full_size,
            uploaded_files,
            reused_files = files.len() - uploaded_files,
            "keyed snapshot uploaded"
        );
        Ok(UploadedKeyed {
            reused_files: files.len() - uploaded_files,
            uploaded_files,
            bytes_uploaded,
            full_size,
            shared,
            state: OperatorSubtaskState {
                files,
                inline: Some(inline),
                finished: false,
            },
        })
    }

    /// Step 2 of the upload flow: what to do with each file. Pure: builds paths, touches nothing.
    fn plan_keyed(
        &self,
        checkpoint: CheckpointId,
        uid: &OperatorUid,
        subtask: SubtaskIndex,
        files: Vec<SnapshotFile>,
        base: Option<&SharedFiles>,
    ) -> Result<Vec<PlannedFile>, TransferError> {
        check_file_names(files.iter().map(|f| f.name.as_str())).map_err(|(name, reason)| {
            TransferError::BadFileName {
                checkpoint,
                name,
                reason,
            }
        })?;
        files
            .into_iter()
            .map(|file| {
                let reused = base
                    .filter(|_| file.shareable && !self.self_contained)
                    .and_then(|base| base.get(&file.name))
                    .filter(|handle| handle.is_shared());
                let action = match reused {
                    Some(handle) => Action::Reuse(handle.clone()),
                    None if self.self_contained => {
                        let object = self
                            .paths
                            .handle_path(&format!("{uid}/{subtask}/{}", file.name));
                        let (object, handle_path) = self.locate(checkpoint, &file.name, object)?;
                        Action::Upload {
                            object,
                            handle_path,
                            shared: false,
                        }
                    }
                    None => {
                        let object = if file.shareable {
                            self.paths.shared_file(&format!(
                                "{uid}/{subtask}/{}-{}",
                                checkpoint.get(),
                                file.name
                            ))
                        } else {
                            self.paths.checkpoint_file(
                                checkpoint,
                                &format!("{uid}/{subtask}/{}", file.name),
                            )
                        };
                        let (object, handle_path) = self.locate(checkpoint, &file.name, object)?;
                        Action::Upload {
                            object,
                            handle_path,
                            shared: file.shareable,
                        }
                    }
                };
                Ok(PlannedFile {
                    name: file.name,
                    content: LocalBytes::from(file.content),
                    action,
                })
            })
            .collect()
    }

    /// The object path and its [`FileHandle`] path (relative to the job directory), validated.
    fn locate(
        &self,
        checkpoint: CheckpointId,
        name: &str,
        object: Result<ObjectPath, PathError>,
    ) -> Result<(ObjectPath, String), TransferError> {
        let path_err = |source| TransferError::ObjectPath {
            checkpoint,
            name: name.to_owned(),
            source,
        };
        let object = object.map_err(path_err)?;
        let relative = self.paths.relative_to_job(&object).ok_or_else(|| {
            path_err(PathError::Invalid {
                name: object.to_string(),
                reason: "not under the job's checkpoint directory".into(),
            })
        })?;
        // Validate now, so that no handle can be refused after its upload.
        FileHandle::new(relative.clone(), 0, 0, false).map_err(|source| TransferError::Handle {
            checkpoint,
            name: name.to_owned(),
            source,
        })?;
        Ok((object, relative))
    }

    /// Uploads a small private file of checkpoint `id` (e.g. an exactly-once sink's staging
    /// manifest) to `chk-<n>/<uid>/<subtask>/<name>`, create-only, and returns its handle.
    /// `name` may have several `/`-separated segments.
    pub async fn upload_private(
        &self,
        id: CheckpointId,
        uid: &OperatorUid,
        subtask: SubtaskIndex,
        name: &str,
        bytes: Vec<u8>,
    ) -> Result<FileHandle, TransferError> {
        let relative = format!("{uid}/{subtask}/{name}");
        let object = if self.self_contained {
            self.paths.handle_path(&relative)
        } else {
            self.paths.checkpoint_file(id, &relative)
        };
        let (object, handle_path) = self.locate(id, name, object)?;
        let bytes = Bytes::from(bytes);
        let size = bytes.len() as u64;
        let crc = self
            .store
            .put_with_crc(&object, bytes.clone())
            .await
            .map_err(|source| TransferError::Upload {
                checkpoint: id,
                name: name.to_owned(),
                path: handle_path.clone(),
                source: Box::new(source),
            })?;
        let handle = FileHandle::new(handle_path, size, crc, false).map_err(|source| {
            TransferError::Handle {
                checkpoint: id,
                name: name.to_owned(),
                source,
            }
        })?;
        if let Some(cache) = &self.cache {
            cache
                .put_all(id, vec![(handle.clone(), LocalBytes::Bytes(bytes))])
                .await;
        }
        Ok(handle)
    }

    /// Brings every file of a keyed operator's state of checkpoint `id` into `dir` (created if
    /// missing) — from the local cache when it holds an intact copy, else downloaded — verifying
    /// each file's size and CRC32, and returns the [`RestoredSnapshot`] for
    /// `StateBackendFactory::restore`, the restored checkpoint's shareable files (the restored
    /// task's incremental base), and byte counts, downloaded and local apart. Downloaded files
    /// are cached under `id`. A damaged or missing object is an error naming the checkpoint and
    /// the file path; on any error the files this call wrote to `dir` are removed again.
    ///
    /// Files in `dir` may be hard links to cached files: the backend may move, link or read
    /// them, never write to them.
    pub async fn download_keyed(
        &self,
        id: CheckpointId,
        state: &OperatorSubtaskState,
        dir: &Path,
    ) -> Result<(RestoredSnapshot, SharedFiles, DownloadStats), TransferError> {
        let span = tracing::debug_span!("download_keyed", job = %self.paths.job(),
            checkpoint = id.get(), dir = %dir.display());
        self.download_keyed_files(id, state, dir)
            .instrument(span)
            .await
    }

    async fn download_keyed_files(
        &self,
        id: CheckpointId,
        state: &OperatorSubtaskState,
        dir: &Path,
    ) -> Result<(RestoredSnapshot, SharedFiles, DownloadStats), TransferError> {
        // Step 1: the description and the handle of every file it lists.
        let meta_err = |source| TransferError::Meta {
            checkpoint: id,
            source,
        };
        let inline = state
            .inline
            .as_deref()
            .ok_or(MetaError::Missing)
            .map_err(meta_err)?;
        let meta = KeyedStateMeta::decode(inline).map_err(meta_err)?;
        let by_path: HashMap<&str, &FileHandle> =
            state.files.iter().map(|h| (h.path(), h)).collect();
        let mut handles = Vec::with_capacity(meta.files.len());
        for file in &meta.files {
            let handle =
                by_path
                    .get(file.path.as_str())
                    .ok_or_else(|| TransferError::MissingHandle {
                        checkpoint: id,
                        name: file.name.clone(),
                        path: file.path.clone(),
                    })?;
            let object = self.paths.handle_path(handle.path()).map_err(|source| {
                TransferError::ObjectPath {
                    checkpoint: id,
                    name: file.name.clone(),
                    source,
                }
            })?;
            handles.push(((*handle).clone(), object));
        }

        // Step 2: fetch, verify, write.
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|source| TransferError::CreateDir {
                checkpoint: id,
                dir: dir.to_owned(),
                source,
            })?;
        let locals: Vec<PathBuf> = meta.files.iter().map(|f| dir.join(&f.name)).collect();
        let jobs = handles
            .iter()
            .zip(&locals)
            .map(|((handle, object), local)| {
                let job = restore_one(
                    self.store.clone(),
                    self.cache.clone(),
                    id,
                    handle.clone(),
                    object.clone(),
                    local.clone(),
                );
                (handle.path().to_owned(), job)
            })
            .collect();
        let batch = run_bounded(id, jobs).await;

        // Step 3: on failure, remove what was written.
        if let Some(error) = batch.error {
            for (touched, local) in batch.touched.iter().zip(&locals) {
                if *touched {
                    if let Err(e) = tokio::fs::remove_file(local).await {
                        if e.kind() != io::ErrorKind::NotFound {
                            tracing::warn!(local = %local.display(), error = %e,
                                "cannot remove a file of a failed download");
                        }
                    }
                }
            }
            tracing::warn!(error = %error, "keyed snapshot download failed");
            return Err(error);
        }

        // Step 4: assemble.
        let mut stats = DownloadStats::default();
        for (origin, (handle, _)) in batch.values.iter().zip(&handles) {
            match origin {
                Some(Origin::Downloaded) => {
                    stats.bytes += handle.size();
                    stats.files += 1;
                }
                Some(Origin::Local) => {
                    stats.bytes_local += handle.size();
                    stats.files_local += 1;
                }
                None => debug_assert!(false, "every file of a successful restore has an origin"),
            }
        }
        let shared: SharedFiles = meta
            .files
            .iter()
            .zip(&handles)
            .filter(|(_, (handle, _))| handle.is_shared())
            .map(|(file, (handle, _))| (file.name.clone(), handle.clone()))
            .collect();
        let files = meta.files.into_iter().map(|f| f.name).zip(locals).collect();
        tracing::debug!(
            bytes_downloaded = stats.bytes,
            files_downloaded = stats.files,
            bytes_local = stats.bytes_local,
            files_local = stats.files_local,
            "keyed snapshot restored"
        );
        let restored = RestoredSnapshot {
            checkpoint: id,
            backend: meta.backend,
            format: meta.format,
            key_groups: meta.key_groups,
            descriptors: meta.descriptors,
            files,
            dir: dir.to_owned(),
        };
        Ok((restored, shared, stats))
    }

    /// Downloads one private file of checkpoint `id` and verifies its size and CRC32. With a
    /// local cache, an intact cached copy is returned instead, and a downloaded file is cached
    /// under `id`.
    pub async fn download_private(
        &self,
        id: CheckpointId,
        handle: &FileHandle,
    ) -> Result<Vec<u8>, TransferError> {
        let object =
            self.paths
                .handle_path(handle.path())
                .map_err(|source| TransferError::ObjectPath {
                    checkpoint: id,
                    name: handle.path().to_owned(),
                    source,
                })?;
        if let Some(cache) = &self.cache {
            if let Some(bytes) = cache.read(id, handle.clone()).await {
                return Ok(bytes);
            }
        }
        let bytes = fetch_verified(&self.store, id, handle, &object).await?;
        if let Some(cache) = &self.cache {
            cache
                .put_all(id, vec![(handle.clone(), LocalBytes::Bytes(bytes.clone()))])
                .await;
        }
        Ok(bytes.to_vec())
    }
}

/// Reads one object, verifying CRC32 and size against `handle`.
async fn fetch_verified(
    store: &Store,
    checkpoint: CheckpointId,
    handle: &FileHandle,
    object: &ObjectPath,
) -> Result<Bytes, TransferError> {
    let bytes = store
        .get_verified(object, handle.crc32())
        .await
        .map_err(|source| TransferError::Download {
            checkpoint,
            path: handle.path().to_owned(),
            source: Box::new(source),
        })?;
    if bytes.len() as u64 != handle.size() {
        return Err(TransferError::SizeMismatch {
            checkpoint,
            path: handle.path().to_owned(),
            expected: handle.size(),
            actual: bytes.len() as u64,
        });
    }
    Ok(bytes)
}

/// The outcome of one spawned transfer, and whether it may have left something behind that
/// cleanup must remove (an object for an upload, a local file for a download).
struct Attempt<T> {
    result: Result<T, TransferError>,
    touched: bool,
}

/// Upload step 4 for one file: read, CRC32, create-only put.
/// Hard-links `from` to `to` (create-only; parents created), syncs both, and returns the
/// file's size and CRC32 (read back from disk).
fn link_and_crc(from: &Path, to: &Path) -> io::Result<(u64, u32)> {
    use std::io::Read;
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::hard_link(from, to)?;
    let mut file = std::fs::File::open(to)?;
    file.sync_all()?;
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    if let Some(dir) = to.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok((size, hasher.finalize()))
}

#[allow(clippy::too_many_arguments)]
async fn upload_one(
    store: Store,
    checkpoint: CheckpointId,
    name: String,
    content: LocalBytes,
    object: ObjectPath,
    handle_path: String,
    shared: bool,
    link_root: Option<PathBuf>,
) -> Attempt<FileHandle> {
    if let (Some(root), LocalBytes::File(path)) = (&link_root, &content) {
        let (from, to) = (path.clone(), root.join(object.as_ref()));
        let linked = tokio::task::spawn_blocking(move || link_and_crc(&from, &to)).await;
        match linked {
            Ok(Ok((size, crc))) => {
                return Attempt {
                    result: FileHandle::new(handle_path, size, crc, shared).map_err(|source| {
                        TransferError::Handle {
                            checkpoint,
                            name,
                            source,
                        }
                    }),
                    touched: true,
                }
            }
            Ok(Err(e)) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Attempt {
                    result: Err(TransferError::Upload {
                        checkpoint,
                        name,
                        path: handle_path,
                        source: Box::new(weir_storage::StorageError::AlreadyExists {
                            path: object.to_string(),
                        }),
                    }),
                    touched: false,
                }
            }
            // Another file system, or no hard links: copy as usual.
            Ok(Err(e)) => {
                tracing::debug!(file = %name, error = %e, "cannot hard-link; copying")
            }
            Err(e) => tracing::debug!(file = %name, error = %e, "link task failed; copying"),
        }
    }
    let bytes = match content {
        LocalBytes::Bytes(bytes) => bytes,
        LocalBytes::File(path) => match tokio::fs::read(&path).await {
            Ok(bytes) => Bytes::from(bytes),
            Err(source) => {
                return Attempt {
                    result: Err(TransferError::ReadLocal {
                        checkpoint,
                        name,
                        path,
                        source,
                    }),
                    touched: false,
                }
            }
        },
    };
    let size = bytes.len() as u64;
    match store.put_with_crc(&object, bytes).await {
        Ok(crc) => Attempt {
            result: FileHandle::new(handle_path, size, crc, shared).map_err(|source| {
                TransferError::Handle {
                    checkpoint,
                    name,
                    source,
                }
            }),
            touched: true,
        },
        Err(source) => Attempt {
            // An object already there is not ours to delete. After any other failure our put
            // may have landed (a lost answer): the path is fresh and ours, so clean it up.
            touched: !source.is_already_exists(),
            result: Err(TransferError::Upload {
                checkpoint,
                name,
                path: handle_path,
                source: Box::new(source),
            }),
        },
    }
}

/// Download step 2 for one file: from the cache if it holds an intact copy, else downloaded
/// (and then cached).
async fn restore_one(
    store: Store,
    cache: Option<Arc<LocalStateCache>>,
    checkpoint: CheckpointId,
    handle: FileHandle,
    object: ObjectPath,
    local: PathBuf,
) -> Attempt<Origin> {
    if let Some(cache) = &cache {
        if cache
            .restore_into(checkpoint, handle.clone(), local.clone())
            .await
        {
            return Attempt {
                result: Ok(Origin::Local),
                touched: true,
            };
        }
    }
    let Attempt { result, touched } =
        download_one(store, checkpoint, handle.clone(), object, local.clone()).await;
    if result.is_ok() {
        if let Some(cache) = &cache {
            // The written file holds verified bytes: link it rather than write them twice.
            cache
                .put_all(checkpoint, vec![(handle, LocalBytes::File(local))])
                .await;
        }
    }
    Attempt {
        result: result.map(|()| Origin::Downloaded),
        touched,
    }
}

/// Download step 2 for one file: verified read, then write to `local`.
async fn download_one(
    store: Store,
    checkpoint: CheckpointId,
    handle: FileHandle,
    object: ObjectPath,
    local: PathBuf,
) -> Attempt<()> {
    let bytes = match fetch_verified(&store, checkpoint, &handle, &object).await {
        Ok(bytes) => bytes,
        Err(e) => {
            return Attempt {
                result: Err(e),
                touched: false,
            }
        }
    };
    let result =
        tokio::fs::write(&local, &bytes)
            .await
            .map_err(|source| TransferError::WriteLocal {
                checkpoint,
                path: handle.path().to_owned(),
                local,
                source,
            });
    Attempt {
        result,
        touched: true,
    }
}

/// What a batch of transfers did, per job in the order given.
struct Batch<T> {
    /// Each job's value, if it ran and succeeded.
    values: Vec<Option<T>>,
    /// Whether each job may have left something behind (it ran, failed or not).
    touched: Vec<bool>,
    /// The first failure in job order, if any job failed.
    error: Option<TransferError>,
}

/// Runs `jobs` (each labelled with the file it transfers) at most
/// [`MAX_CONCURRENT_TRANSFERS`] at a time. After the first failure no further job starts, but
/// the running ones are awaited, so the caller learns everything that was touched.
async fn run_bounded<T, F>(checkpoint: CheckpointId, jobs: Vec<(String, F)>) -> Batch<T>
where
    T: Send + 'static,
    F: Future<Output = Attempt<T>> + Send + 'static,
{
    let mut outcomes: Vec<Option<Attempt<T>>> = (0..jobs.len()).map(|_| None).collect();
    let mut queue = jobs.into_iter().enumerate();
    let mut running = JoinSet::new();
    let mut started = HashMap::new();
    let mut failed = false;
    loop {
        while !failed && running.len() < MAX_CONCURRENT_TRANSFERS {
            let Some((index, (label, job))) = queue.next() else {
                break;
            };
            let task = running.spawn(job);
            started.insert(task.id(), (index, label));
        }
        let Some(joined) = running.join_next_with_id().await else {
            break;
        };
        let (id, attempt) = match joined {
            Ok((id, attempt)) => (id, Ok(attempt)),
            Err(e) => (e.id(), Err(e)),
        };
        let Some((index, label)) = started.remove(&id) else {
            continue;
        };
        let attempt = attempt.unwrap_or_else(|source| Attempt {
            // A task that panicked may have written before it died.
            result: Err(TransferError::Task {
                checkpoint,
                name: label,
                source,
            }),
            touched: true,
        });
        failed |= attempt.result.is_err();
        outcomes[index] = Some(attempt);
    }

    let mut batch = Batch {
        values: Vec::with_capacity(outcomes.len()),
        touched: Vec::with_capacity(outcomes.len()),
        error: None,
    };
    for outcome in outcomes {
        let (value, touched) = match outcome {
            None => (None, false),
            Some(Attempt { result, touched }) => match result {
                Ok(value) => (Some(value), touched),
                Err(e) => {
                    batch.error.get_or_insert(e);
                    (None, touched)
                }
            },
        };
        batch.values.push(value);
        batch.touched.push(touched);
    }
    batch
}

/// The local size of a snapshot file (reused files are compared with their base handle).
async fn local_size(
    checkpoint: CheckpointId,
    name: &str,
    content: &LocalBytes,
) -> Result<u64, TransferError> {
    match content {
        LocalBytes::Bytes(bytes) => Ok(bytes.len() as u64),
        LocalBytes::File(path) => {
            tokio::fs::metadata(path)
                .await
                .map(|m| m.len())
                .map_err(|source| TransferError::ReadLocal {
                    checkpoint,
                    name: name.to_owned(),
                    path: path.clone(),
                    source,
                })
        }
    }
}

/// Removes a snapshot's cleanup directory: explicitly with [`CleanupDir::remove`], or on drop
/// when the upload future was dropped before it finished.
struct CleanupDir(Option<PathBuf>);

impl CleanupDir {
    async fn remove(mut self) {
        if let Some(dir) = self.0.take() {
            let result = tokio::fs::remove_dir_all(&dir).await;
            log_cleanup(&dir, result);
        }
    }
}

impl Drop for CleanupDir {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            // Only reached when the upload was abandoned; blocking briefly beats leaking a
            // native checkpoint's directory.
            let result = std::fs::remove_dir_all(&dir);
            log_cleanup(&dir, result);
        }
    }
}

fn log_cleanup(dir: &Path, result: io::Result<()>) {
    match result {
        Ok(()) => tracing::debug!(dir = %dir.display(), "removed the snapshot's local directory"),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(dir = %dir.display(), error = %e,
            "cannot remove the snapshot's local directory; it stays on disk"),
    }
}

/// Waits, off the runtime's worker threads, for files the backend still produces.
async fn resolve(snapshot: LocalSnapshot) -> Result<LocalSnapshot, TransferError> {
    if snapshot.pending.is_none() {
        return Ok(snapshot);
    }
    let checkpoint = snapshot.checkpoint;
    match tokio::task::spawn_blocking(move || snapshot.resolve()).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(source)) => Err(TransferError::Snapshot { checkpoint, source }),
        Err(source) => Err(TransferError::Task {
            checkpoint,
            name: "the background part of the snapshot".into(),
            source,
        }),
    }
}
