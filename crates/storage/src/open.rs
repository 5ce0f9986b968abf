//! [`open_store`]: from a [`StorageUrl`] and [`S3Options`] to a [`Store`], without touching the
//! network (S3 requests start with the first operation).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};

use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::ObjectStore;

use crate::error::StorageError;
use crate::faulty::FaultyStore;
use crate::store::Store;
use crate::url::{StorageUrl, UrlError};

/// How to reach an S3 bucket or an S3-compatible server; ignored for `file://` and `memory://`.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Options {
    /// The server, e.g. `http://127.0.0.1:9000`; `None` for AWS itself (derived from the region).
    pub endpoint: Option<String>,
    /// The region, e.g. `us-east-1` (S3-compatible servers usually accept any).
    pub region: String,
    /// The access key id; `None` leaves credentials to object_store's fallbacks (web identity,
    /// container or instance credentials), resolved at the first request.
    pub access_key_id: Option<String>,
    /// The secret access key; never printed by `Debug`.
    pub secret_access_key: Option<String>,
    /// Allow plain `http://` endpoints (test servers on loopback).
    pub allow_http: bool,
    /// Path-style requests (`endpoint/bucket/key`, what most S3-compatible servers want) rather
    /// than virtual-hosted ones (`bucket.endpoint/key`; then `endpoint` must include the bucket).
    pub path_style: bool,
}

impl Default for S3Options {
    /// AWS in `us-east-1`, HTTPS only, virtual-hosted requests, no explicit credentials.
    fn default() -> Self {
        Self {
            endpoint: None,
            region: "us-east-1".to_owned(),
            access_key_id: None,
            secret_access_key: None,
            allow_http: false,
            path_style: false,
        }
    }
}

impl fmt::Debug for S3Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Options")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "<redacted>"),
            )
            .field("allow_http", &self.allow_http)
            .field("path_style", &self.path_style)
            .finish()
    }
}

/// Opens the store `url` names, rooted at its prefix.
///
/// - `file://`: creates the directory (and its parents) if missing; deletes remove directories
///   left empty; writes are fsynced, so a completed `_metadata` survives a power cut.
/// - `memory://name`: the process-wide in-memory store called `name` (created on first use and
///   kept for the life of the process).
/// - `s3://bucket/prefix`: an S3 client configured from `s3`; no request is made here.
///
/// Inside the scope of an installed fault control ([`crate::control`]) the store fails or
/// slows down requests while the control file says so.
pub fn open_store(url: &StorageUrl, s3: &S3Options) -> Result<Store, StorageError> {
    let name = url.to_string();
    let open_err = |source| StorageError::Open {
        url: name.clone(),
        source,
    };
    let base: Arc<dyn ObjectStore> = match url {
        StorageUrl::File { root } => {
            std::fs::create_dir_all(root).map_err(|source| StorageError::CreateRoot {
                url: name.clone(),
                dir: root.display().to_string(),
                source,
            })?;
            let fs = LocalFileSystem::new_with_prefix(root)
                .map_err(open_err)?
                .with_automatic_cleanup(true)
                .with_fsync(true);
            Arc::new(fs)
        }
        StorageUrl::Memory { name: mem, .. } => named_memory_store(mem),
        StorageUrl::S3 { bucket, .. } => {
            let mut b = AmazonS3Builder::new()
                .with_bucket_name(bucket)
                .with_region(&s3.region)
                .with_allow_http(s3.allow_http)
                .with_virtual_hosted_style_request(!s3.path_style);
            if let Some(endpoint) = &s3.endpoint {
                b = b.with_endpoint(endpoint);
            }
            if let Some(key) = &s3.access_key_id {
                b = b.with_access_key_id(key);
            }
            if let Some(secret) = &s3.secret_access_key {
                b = b.with_secret_access_key(secret);
            }
            Arc::new(b.build().map_err(open_err)?)
        }
    };
    let store: Arc<dyn ObjectStore> = match url.prefix() {
        "" => base,
        prefix => {
            let prefix = Path::parse(prefix).map_err(|e| UrlError::Malformed {
                url: name.clone(),
                reason: e.to_string(),
            })?;
            Arc::new(PrefixStore::new(base, prefix))
        }
    };
    let store: Arc<dyn ObjectStore> = match crate::control::for_url(url) {
        Some(control) => Arc::new(FaultyStore::controlled(store, control)),
        None => store,
    };
    tracing::debug!(url = %name, "opened object store");
    Ok(Store::from_object_store(store, name))
}

/// The process-wide in-memory store called `name`.
fn named_memory_store(name: &str) -> Arc<dyn ObjectStore> {
    static STORES: OnceLock<Mutex<HashMap<String, Arc<InMemory>>>> = OnceLock::new();
    let stores = STORES.get_or_init(Default::default);
    // A panic while holding the lock cannot leave the map half-updated; ignore the poison.
    let mut stores = stores
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let store = stores
        .entry(name.to_owned())
        .or_insert_with(|| Arc::new(InMemory::new()));
    Arc::clone(store) as Arc<dyn ObjectStore>
}
