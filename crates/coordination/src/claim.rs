//! Claim mode (`weir run -s PATH --claim-mode claim`): a job that starts from a savepoint takes
//! it over as its first checkpoint, and deletes it once the job's own checkpoints subsume it.
//!
//! The claim is a marker `_claim` in the savepoint's folder (versioned JSON naming the job and
//! where its checkpoints live), written create-only when the job is submitted:
//!
//! 1. **Claim** — no marker: write it. A marker of a job whose checkpoint folder still has a
//!    live lease: refuse, naming that job (one savepoint is claimed by one running job at a
//!    time). A marker of a job that is gone: replace it.
//! 2. **Dispose** — `weir savepoint dispose` refuses a folder whose claiming job still holds a
//!    live lease, naming it.
//! 3. **Subsume** — once `state.checkpoints.num-retained` checkpoints of the job completed after
//!    the savepoint, the JobMaster deletes the folder: `_metadata` first (from then on it is no
//!    savepoint), then its files, the marker last.
//!
//! The claiming job never references the savepoint's files: its first checkpoint is a full
//! one, so subsuming the savepoint deletes nothing the job needs.

use crate::lease::{JobLease, LeaseError, LeaseRecord};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use weir_storage::{Bytes, CheckpointPaths, ObjectPath, S3Options, StorageUrl, Store};
use weir_types::JobId;

/// The marker's name in the savepoint folder.
pub const CLAIM_FILE_NAME: &str = "_claim";

/// The marker format this build writes and reads.
pub const CLAIM_VERSION: u32 = 1;

/// What `_claim` says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimMarker {
    /// [`CLAIM_VERSION`].
    pub version: u32,
    /// The claiming job.
    pub job: JobId,
    /// The URL of the claiming job's checkpoint root (its folder is `<root>/<job>/`).
    pub checkpoints: String,
}

/// Why a savepoint cannot be claimed or disposed.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// A running job claimed it.
    #[error(
        "the savepoint is claimed by running job {job} (its checkpoints are under {checkpoints}, \
         held by {holder})"
    )]
    ClaimedByRunningJob {
        /// The claiming job.
        job: JobId,
        /// Its checkpoint root.
        checkpoints: String,
        /// Who holds that job's folder.
        holder: String,
    },
    /// The marker or the store could not be read or written.
    #[error("claim marker {path}: {detail}")]
    Storage {
        /// The marker's URL.
        path: String,
        /// What failed.
        detail: String,
    },
}

/// Reads the marker of the folder `store` is rooted at, if there is one.
pub async fn read(store: &Store) -> Result<Option<ClaimMarker>, ClaimError> {
    let path = ObjectPath::from(CLAIM_FILE_NAME);
    let err = |detail: String| ClaimError::Storage {
        path: format!("{store}/{CLAIM_FILE_NAME}"),
        detail,
    };
    match store.get(&path).await {
        Ok(bytes) => {
            let marker: ClaimMarker =
                serde_json::from_slice(&bytes).map_err(|e| err(format!("unreadable: {e}")))?;
            if marker.version != CLAIM_VERSION {
                return Err(err(format!(
                    "version {} is not the supported {CLAIM_VERSION}",
                    marker.version
                )));
            }
            Ok(Some(marker))
        }
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(err(e.to_string())),
    }
}

/// The live holder of `marker`'s job folder, if any (step 1 and 2's test).
pub async fn live_holder(
    marker: &ClaimMarker,
    s3: &S3Options,
    lease_duration: Duration,
    now_ms: u64,
) -> Result<Option<LeaseRecord>, ClaimError> {
    let err = |detail: String| ClaimError::Storage {
        path: marker.checkpoints.clone(),
        detail,
    };
    let url = StorageUrl::parse(&marker.checkpoints).map_err(|e| err(e.to_string()))?;
    let store = weir_storage::open_store(&url, s3).map_err(|e| err(e.to_string()))?;
    JobLease::live_holder(
        &store,
        &CheckpointPaths::new(marker.job),
        now_ms,
        lease_duration,
    )
    .await
    .map_err(|e: LeaseError| err(e.to_string()))
}

/// Step 2: refuses when a running job claimed the folder `store` is rooted at.
pub async fn check_disposable(
    store: &Store,
    s3: &S3Options,
    lease_duration: Duration,
    now_ms: u64,
) -> Result<(), ClaimError> {
    let Some(marker) = read(store).await? else {
        return Ok(());
    };
    match live_holder(&marker, s3, lease_duration, now_ms).await? {
        Some(holder) => Err(ClaimError::ClaimedByRunningJob {
            job: marker.job,
            checkpoints: marker.checkpoints,
            holder: holder.owner,
        }),
        None => Ok(()),
    }
}

/// Step 1: claims the folder `store` is rooted at for `marker.job`.
pub async fn claim(
    store: &Store,
    marker: &ClaimMarker,
    s3: &S3Options,
    lease_duration: Duration,
    now_ms: u64,
) -> Result<(), ClaimError> {
    let path = ObjectPath::from(CLAIM_FILE_NAME);
    let err = |detail: String| ClaimError::Storage {
        path: format!("{store}/{CLAIM_FILE_NAME}"),
        detail,
    };
    if let Some(old) = read(store).await? {
        if old.job != marker.job {
            if let Some(holder) = live_holder(&old, s3, lease_duration, now_ms).await? {
                return Err(ClaimError::ClaimedByRunningJob {
                    job: old.job,
                    checkpoints: old.checkpoints,
                    holder: holder.owner,
                });
            }
        }
    }
    let bytes = serde_json::to_vec(marker).map_err(|e| err(e.to_string()))?;
    store
        .put(&path, Bytes::from(bytes))
        .await
        .map_err(|e| err(e.to_string()))
}

/// Step 3: deletes the claimed savepoint's folder, `_metadata` first, the marker last.
pub async fn delete_subsumed(store: &Store) -> Result<usize, String> {
    store
        .delete(&ObjectPath::from(weir_checkpoint::METADATA_FILE_NAME))
        .await
        .map_err(|e| e.to_string())?;
    let listed = store
        .list(&ObjectPath::default())
        .await
        .map_err(|e| e.to_string())?;
    let mut deleted = 1;
    for object in listed {
        if object.location.as_ref() == CLAIM_FILE_NAME {
            continue;
        }
        store
            .delete(&object.location)
            .await
            .map_err(|e| e.to_string())?;
        deleted += 1;
    }
    store
        .delete(&ObjectPath::from(CLAIM_FILE_NAME))
        .await
        .map_err(|e| e.to_string())?;
    Ok(deleted + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_marker_round_trips_with_its_version() {
        let m = ClaimMarker {
            version: CLAIM_VERSION,
            job: JobId(5),
            checkpoints: "file:///tmp/cp".into(),
        };
        let json = serde_json::to_string(&m).unwrap();
        assert!(json.contains("\"version\":1"), "{json}");
        assert_eq!(serde_json::from_str::<ClaimMarker>(&json).unwrap(), m);
    }

    #[tokio::test]
    async fn an_unclaimed_or_abandoned_savepoint_may_be_disposed_and_a_live_claim_may_not() {
        let checkpoints = Store::in_memory();
        let root = "memory://claims-test";
        let sp = weir_storage::open_store(
            &StorageUrl::parse("memory://claims-test-sp").unwrap(),
            &S3Options::default(),
        )
        .unwrap();
        let s3 = S3Options::default();
        let d = Duration::from_secs(10);
        assert!(check_disposable(&sp, &s3, d, 1_000).await.is_ok());
        let marker = ClaimMarker {
            version: CLAIM_VERSION,
            job: JobId(9),
            checkpoints: root.into(),
        };
        claim(&sp, &marker, &s3, d, 1_000).await.unwrap();
        // No lease in the job's folder: the claimer is gone.
        assert!(check_disposable(&sp, &s3, d, 1_000).await.is_ok());
        let store = weir_storage::open_store(&StorageUrl::parse(root).unwrap(), &s3).unwrap();
        let _lease = JobLease::acquire(&store, &CheckpointPaths::new(JobId(9)), "jm", 1_000, d)
            .await
            .unwrap();
        let err = check_disposable(&sp, &s3, d, 2_000).await.unwrap_err();
        assert!(err.to_string().contains("running job"), "{err}");
        // Another job cannot claim it meanwhile.
        let other = ClaimMarker {
            job: JobId(10),
            ..marker.clone()
        };
        assert!(claim(&sp, &other, &s3, d, 2_000).await.is_err());
        drop(checkpoints);
    }
}
