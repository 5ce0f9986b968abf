//! [`Store`]: the operations Weir performs on object storage, with typed errors, CRC checks
//! and retries.
//!
//! What every backend guarantees through this wrapper (`file://`, `memory://`, `s3://`):
//!
//! - **Atomic puts.** A reader sees all of an object's bytes or none of them.
//! - **Create-only puts never overwrite.** [`Store::put_create`] fails with
//!   [`StorageError::AlreadyExists`] when the path is taken (memory and file stores check it
//!   locally, S3 with `If-None-Match: *`). A create that is retried after an ambiguous failure
//!   (the first attempt may have landed before its answer was lost) succeeds when the object
//!   holds exactly the bytes being written.
//! - **Idempotent deletes.** Deleting a missing object succeeds.
//! - **Verified reads.** [`Store::get_verified`] returns bytes only when their CRC32 is the one
//!   recorded at write time; otherwise [`StorageError::CrcMismatch`] names the object.
//! - **Bounded retries.** Transient failures are retried per the store's [`RetryPolicy`];
//!   permanent ones are returned at once.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use weir_types::CheckpointId;

use crate::error::{StorageError, StorageOp};
use crate::paths::{CheckpointPaths, SavepointId, SavepointPaths};
use crate::retry::{retry, RetryPolicy};

/// The CRC32 (crc32fast, IEEE) Weir records for every file it writes.
pub fn crc32(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

/// A handle on one object store, rooted at its storage URL. Cheap to clone; clones share the
/// connection pool.
#[derive(Clone)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    name: Arc<str>,
    retry: RetryPolicy,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("name", &self.name)
            .field("retry", &self.retry)
            .finish()
    }
}

impl fmt::Display for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl Store {
    /// Wraps any object store (for example a [`FaultyStore`](crate::FaultyStore)); `name`
    /// appears in logs. Paths are used as given: apply a prefix with
    /// [`object_store::prefix::PrefixStore`] first if needed.
    pub fn from_object_store(inner: Arc<dyn ObjectStore>, name: impl Into<String>) -> Self {
        Self {
            inner,
            name: Arc::from(name.into()),
            retry: RetryPolicy::default(),
        }
    }

    /// A fresh, private in-memory store (unlike `memory://name`, shared with no one).
    pub fn in_memory() -> Self {
        Self::from_object_store(Arc::new(InMemory::new()), "memory (private)")
    }

    /// The same store with another retry policy.
    pub fn with_retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// How transient failures are retried.
    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.retry
    }

    /// The underlying object store, for what this wrapper does not offer (multipart uploads of
    /// large files).
    pub fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.inner
    }

    /// Writes `bytes` to `path` only if nothing is there yet.
    ///
    /// Fails with [`StorageError::AlreadyExists`] when another object holds the path, so two
    /// writers can never both believe they wrote it.
    pub async fn put_create(&self, path: &Path, bytes: Bytes) -> Result<(), StorageError> {
        let p = path.as_ref();
        let payload = PutPayload::from(bytes.clone());
        // Set once an attempt failed in a way that may have hidden a success.
        let ambiguous = AtomicBool::new(false);
        retry(&self.retry, StorageOp::PutCreate, p, || async {
            let opts = PutOptions::from(PutMode::Create);
            let err = match self.inner.put_opts(path, payload.clone(), opts).await {
                Ok(_) => return Ok(()),
                Err(e) => StorageError::from_store(StorageOp::PutCreate, p, e),
            };
            if err.is_already_exists() && ambiguous.load(Ordering::Relaxed) {
                // Our earlier attempt may have landed; it did if the object is ours byte for byte.
                if let Ok(existing) = self.get_once(path).await {
                    if existing == bytes {
                        tracing::debug!(path = p, "create-only put found its own earlier write");
                        return Ok(());
                    }
                }
            } else if !err.is_already_exists() {
                ambiguous.store(true, Ordering::Relaxed);
            }
            Err(err)
        })
        .await
    }

    /// Writes `bytes` to `path`, replacing what is there.
    pub async fn put(&self, path: &Path, bytes: Bytes) -> Result<(), StorageError> {
        let p = path.as_ref();
        let payload = PutPayload::from(bytes);
        retry(&self.retry, StorageOp::Put, p, || async {
            self.inner
                .put(path, payload.clone())
                .await
                .map(|_| ())
                .map_err(|e| StorageError::from_store(StorageOp::Put, p, e))
        })
        .await
    }

    /// Writes `bytes` create-only (as [`put_create`](Self::put_create)) and returns their
    /// CRC32, to be recorded in the file's handle and checked by
    /// [`get_verified`](Self::get_verified).
    pub async fn put_with_crc(&self, path: &Path, bytes: Bytes) -> Result<u32, StorageError> {
        let crc = crc32(&bytes);
        self.put_create(path, bytes).await?;
        Ok(crc)
    }

    /// Reads the whole object at `path`; [`StorageError::NotFound`] when there is none.
    pub async fn get(&self, path: &Path) -> Result<Bytes, StorageError> {
        retry(&self.retry, StorageOp::Get, path.as_ref(), || {
            self.get_once(path)
        })
        .await
    }

    /// Reads `path` and checks its CRC32 against `expected`; damaged bytes are never returned.
    pub async fn get_verified(&self, path: &Path, expected: u32) -> Result<Bytes, StorageError> {
        let bytes = self.get(path).await?;
        let actual = crc32(&bytes);
        if actual != expected {
            return Err(StorageError::CrcMismatch {
                path: path.to_string(),
                expected,
                actual,
            });
        }
        Ok(bytes)
    }

    async fn get_once(&self, path: &Path) -> Result<Bytes, StorageError> {
        let p = path.as_ref();
        let to_err = |e| StorageError::from_store(StorageOp::Get, p, e);
        self.inner
            .get(path)
            .await
            .map_err(to_err)?
            .bytes()
            .await
            .map_err(to_err)
    }

    /// True when an object exists at `path`.
    pub async fn exists(&self, path: &Path) -> Result<bool, StorageError> {
        let p = path.as_ref();
        let head = retry(&self.retry, StorageOp::Head, p, || async {
            self.inner
                .head(path)
                .await
                .map_err(|e| StorageError::from_store(StorageOp::Head, p, e))
        })
        .await;
        match head {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Deletes the object at `path`; deleting a missing object succeeds (idempotent), so a
    /// cleanup replayed after a crash is harmless.
    pub async fn delete(&self, path: &Path) -> Result<(), StorageError> {
        let p = path.as_ref();
        let result = retry(&self.retry, StorageOp::Delete, p, || async {
            self.inner
                .delete(path)
                .await
                .map_err(|e| StorageError::from_store(StorageOp::Delete, p, e))
        })
        .await;
        match result {
            Err(e) if e.is_not_found() => Ok(()),
            other => other,
        }
    }

    /// Deletes every object under `prefix` (an incomplete checkpoint's directory, say) and
    /// returns how many there were. Idempotent; stops at the first delete that fails.
    pub async fn delete_prefix(&self, prefix: &Path) -> Result<usize, StorageError> {
        let objects = self.list(prefix).await?;
        for meta in &objects {
            self.delete(&meta.location).await?;
        }
        Ok(objects.len())
    }

    /// Every object under `prefix`, recursively, sorted by path. A missing prefix lists empty.
    pub async fn list(&self, prefix: &Path) -> Result<Vec<ObjectMeta>, StorageError> {
        let p = prefix.as_ref();
        let prefix_opt = (!prefix.is_root()).then_some(prefix);
        let listed = retry(&self.retry, StorageOp::List, p, || async {
            self.inner
                .list(prefix_opt)
                .try_collect::<Vec<_>>()
                .await
                .map_err(|e| StorageError::from_store(StorageOp::List, p, e))
        })
        .await;
        let mut objects = match listed {
            Err(e) if e.is_not_found() => Vec::new(),
            other => other?,
        };
        objects.sort_by(|a, b| a.location.cmp(&b.location));
        Ok(objects)
    }

    /// The "directories" directly under `prefix` (common prefixes up to the next `/`), sorted.
    /// A missing prefix lists empty.
    pub async fn list_dirs(&self, prefix: &Path) -> Result<Vec<Path>, StorageError> {
        let p = prefix.as_ref();
        let prefix_opt = (!prefix.is_root()).then_some(prefix);
        let listed = retry(&self.retry, StorageOp::List, p, || async {
            self.inner
                .list_with_delimiter(prefix_opt)
                .await
                .map_err(|e| StorageError::from_store(StorageOp::List, p, e))
        })
        .await;
        let mut dirs = match listed {
            Err(e) if e.is_not_found() => Vec::new(),
            other => other?.common_prefixes,
        };
        dirs.sort();
        Ok(dirs)
    }

    /// The ids of the `chk-<n>` directories of a job, ascending. A directory is listed
    /// whether or not its `_metadata` exists: deciding which checkpoints are complete is the
    /// caller's business.
    pub async fn checkpoint_ids(
        &self,
        paths: &CheckpointPaths,
    ) -> Result<Vec<CheckpointId>, StorageError> {
        let dirs = self.list_dirs(paths.job_dir()).await?;
        Ok(paths.checkpoint_ids(&dirs))
    }

    /// The ids of the `savepoint-<id>` directories at this store's root, sorted.
    pub async fn savepoint_ids(&self) -> Result<Vec<SavepointId>, StorageError> {
        let dirs = self.list_dirs(&Path::ROOT).await?;
        Ok(SavepointPaths::savepoint_ids(&dirs))
    }
}
