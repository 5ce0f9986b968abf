//! One live owner per job checkpoint folder (DESIGN §8, invariant 8): numbered lease objects
//! `<job>/_lease/lease-<n>`, each written create-only, so of two JobMasters that race for the
//! same folder exactly one wins.
//!
//! 1. **Acquire** — read the newest lease. It blocks the newcomer when it is live: not
//!    released, renewed within the lease duration, and (when it was written on this host) its
//!    process still exists. Otherwise write `lease-<n+1>` create-only; losing that race is a
//!    refusal too. Older lease objects are deleted.
//! 2. **Renew** — rewrite the own lease with a new timestamp, every third of the duration.
//!    A newer lease object means another owner took the folder over: the renewal fails with
//!    [`LeaseError::Lost`] and the owner must stop writing at once.
//! 3. **Release** — at the job's end the own lease is rewritten as released, so a resume can
//!    start immediately; a crashed owner's lease expires (or, on the same host, is seen dead).
//!
//! [`decide`] is the pure rule; [`JobLease`] does the storage calls.

use serde::{Deserialize, Serialize};
use std::time::Duration;
use weir_storage::{Bytes, CheckpointPaths, StorageError, Store};
use weir_types::JobId;

/// Who holds a job's checkpoint folder, as stored in its lease object (JSON).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// The lease's number; the newest lease object is the current one.
    pub epoch: u64,
    /// The owner, for people: e.g. `jobmanager 127.0.0.1:6123`.
    pub owner: String,
    /// The owner's host name.
    pub host: String,
    /// The owner's process id.
    pub pid: u32,
    /// Last renewal, milliseconds since the Unix epoch.
    pub renewed_ms: u64,
    /// The owner ended and gave the folder up.
    pub released: bool,
}

impl LeaseRecord {
    /// A fresh, unreleased lease `epoch` held by this process (`owner` is for people), renewed
    /// at `now_ms`.
    pub fn of_this_process(epoch: u64, owner: &str, now_ms: u64) -> Self {
        Self {
            epoch,
            owner: owner.to_string(),
            host: host_name(),
            pid: std::process::id(),
            renewed_ms: now_ms,
            released: false,
        }
    }
}

/// What a newcomer may do about the current lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseDecision {
    /// Take the folder with lease `epoch`.
    Take {
        /// The new lease's number.
        epoch: u64,
    },
    /// Another owner is alive: refuse, naming it.
    Held(LeaseRecord),
}

/// The rule of step 1: `current` is the newest lease (if any); `alive(host, pid)` tells
/// whether that process still runs (`None`: cannot tell, e.g. another host).
pub fn decide(
    current: Option<&LeaseRecord>,
    now_ms: u64,
    duration: Duration,
    alive: impl Fn(&str, u32) -> Option<bool>,
) -> LeaseDecision {
    let Some(c) = current else {
        return LeaseDecision::Take { epoch: 1 };
    };
    let expired = now_ms.saturating_sub(c.renewed_ms) > duration.as_millis() as u64;
    let dead = alive(&c.host, c.pid) == Some(false);
    if c.released || expired || dead {
        LeaseDecision::Take { epoch: c.epoch + 1 }
    } else {
        LeaseDecision::Held(c.clone())
    }
}

/// Why a lease could not be taken or kept.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// A live owner holds the folder.
    #[error(
        "the checkpoints of job {job} are in use by {} (host {}, pid {}, lease {}, renewed {} ms ago); \
         stop that run first, or wait {} ms for its lease to expire",
        .holder.owner, .holder.host, .holder.pid, .holder.epoch, .age_ms, .expires_in_ms
    )]
    Held {
        /// The job.
        job: JobId,
        /// The current owner.
        holder: LeaseRecord,
        /// Since its last renewal.
        age_ms: u64,
        /// Until it expires.
        expires_in_ms: u64,
    },
    /// Another owner took the folder over (a newer lease exists).
    #[error("the checkpoints of job {job} were taken over by {} (lease {})", .by.owner, .by.epoch)]
    Lost {
        /// The job.
        job: JobId,
        /// The new owner.
        by: LeaseRecord,
    },
    /// A lease object could not be read, written or parsed.
    #[error("the lease of job {job}: {detail}")]
    Storage {
        /// The job.
        job: JobId,
        /// What failed, naming the object.
        detail: String,
    },
}

/// This process's host name (for liveness checks of leases written here).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "unknown".into())
}

/// Whether process `pid` on `host` still runs, when that can be told from here.
pub fn local_process_alive(host: &str, pid: u32) -> Option<bool> {
    if host != host_name() || !std::path::Path::new("/proc/self").exists() {
        return None;
    }
    if pid == std::process::id() {
        return Some(true);
    }
    Some(std::path::Path::new(&format!("/proc/{pid}")).exists())
}

/// A held lease of one job's checkpoint folder.
#[derive(Debug)]
pub struct JobLease {
    store: Store,
    paths: CheckpointPaths,
    record: LeaseRecord,
}

impl JobLease {
    /// Step 1: takes the folder of `paths`'s job for `owner`, or says who holds it.
    pub async fn acquire(
        store: &Store,
        paths: &CheckpointPaths,
        owner: &str,
        now_ms: u64,
        duration: Duration,
    ) -> Result<Self, LeaseError> {
        let job = paths.job();
        let storage = |detail: String| LeaseError::Storage { job, detail };
        let (current, older) = newest(store, paths).await?;
        let epoch = match decide(current.as_ref(), now_ms, duration, local_process_alive) {
            LeaseDecision::Take { epoch } => epoch,
            LeaseDecision::Held(holder) => {
                let age_ms = now_ms.saturating_sub(holder.renewed_ms);
                return Err(LeaseError::Held {
                    job,
                    expires_in_ms: (duration.as_millis() as u64).saturating_sub(age_ms),
                    age_ms,
                    holder,
                });
            }
        };
        let record = LeaseRecord::of_this_process(epoch, owner, now_ms);
        let path = paths.lease(epoch);
        let bytes = Bytes::from(serde_json::to_vec(&record).map_err(|e| storage(e.to_string()))?);
        match store.put_create(&path, bytes).await {
            Ok(()) => {}
            Err(StorageError::AlreadyExists { .. }) => {
                // Someone else took this epoch first: they hold the folder now.
                let (winner, _) = newest(store, paths).await?;
                return Err(match winner {
                    Some(holder) => LeaseError::Held {
                        job,
                        age_ms: 0,
                        expires_in_ms: duration.as_millis() as u64,
                        holder,
                    },
                    None => storage(format!(
                        "{path} was created by another owner, then vanished"
                    )),
                });
            }
            Err(e) => return Err(storage(format!("cannot write {path}: {e}"))),
        }
        // The leases before ours are history now.
        for old in older.into_iter().chain(current.map(|c| c.epoch)) {
            if let Err(e) = store.delete(&paths.lease(old)).await {
                tracing::debug!(lease = %paths.lease(old), error = %e, "old lease not deleted");
            }
        }
        tracing::info!(%job, epoch, owner, "checkpoint folder leased");
        Ok(Self {
            store: store.clone(),
            paths: paths.clone(),
            record,
        })
    }

    /// Who holds `paths`'s folder now, when its newest lease is live (the rule of
    /// [`decide`]); `None` when a newcomer could take it.
    pub async fn live_holder(
        store: &Store,
        paths: &CheckpointPaths,
        now_ms: u64,
        duration: Duration,
    ) -> Result<Option<LeaseRecord>, LeaseError> {
        let (current, _) = newest(store, paths).await?;
        Ok(
            match decide(current.as_ref(), now_ms, duration, local_process_alive) {
                LeaseDecision::Held(holder) => Some(holder),
                LeaseDecision::Take { .. } => None,
            },
        )
    }

    /// This lease.
    pub fn record(&self) -> &LeaseRecord {
        &self.record
    }

    /// Step 2: renews the lease at `now_ms`; [`LeaseError::Lost`] when a newer one exists.
    pub async fn renew(&mut self, now_ms: u64) -> Result<(), LeaseError> {
        self.check_not_superseded().await?;
        self.record.renewed_ms = now_ms;
        self.write().await
    }

    /// Step 3: gives the folder up.
    pub async fn release(mut self) -> Result<(), LeaseError> {
        self.check_not_superseded().await?;
        self.record.released = true;
        self.write().await
    }

    async fn check_not_superseded(&self) -> Result<(), LeaseError> {
        let (current, _) = newest(&self.store, &self.paths).await?;
        match current {
            Some(c) if c.epoch > self.record.epoch => Err(LeaseError::Lost {
                job: self.paths.job(),
                by: c,
            }),
            _ => Ok(()),
        }
    }

    async fn write(&self) -> Result<(), LeaseError> {
        let path = self.paths.lease(self.record.epoch);
        let job = self.paths.job();
        let bytes = serde_json::to_vec(&self.record).map_err(|e| LeaseError::Storage {
            job,
            detail: e.to_string(),
        })?;
        self.store
            .put(&path, Bytes::from(bytes))
            .await
            .map_err(|e| LeaseError::Storage {
                job,
                detail: format!("cannot write {path}: {e}"),
            })
    }
}

/// The newest lease of the job (parsed) and the epochs of older lease objects.
async fn newest(
    store: &Store,
    paths: &CheckpointPaths,
) -> Result<(Option<LeaseRecord>, Vec<u64>), LeaseError> {
    let job = paths.job();
    let listed = store
        .list(&paths.lease_dir())
        .await
        .map_err(|e| LeaseError::Storage {
            job,
            detail: format!("cannot list {}: {e}", paths.lease_dir()),
        })?;
    let mut epochs: Vec<u64> = listed
        .iter()
        .filter_map(|m| paths.lease_epoch(&m.location))
        .collect();
    epochs.sort_unstable();
    let Some(latest) = epochs.pop() else {
        return Ok((None, Vec::new()));
    };
    let path = paths.lease(latest);
    let bytes = match store.get(&path).await {
        Ok(b) => b,
        // Deleted between the listing and the read: the listing is stale, nobody holds it.
        Err(e) if e.is_not_found() => return Ok((None, epochs)),
        Err(e) => {
            return Err(LeaseError::Storage {
                job,
                detail: format!("cannot read {path}: {e}"),
            })
        }
    };
    let record: LeaseRecord = serde_json::from_slice(&bytes).map_err(|e| LeaseError::Storage {
        job,
        detail: format!("{path} is not a lease record: {e}"),
    })?;
    if record.epoch != latest {
        return Err(LeaseError::Storage {
            job,
            detail: format!("{path} holds epoch {}, not {latest}", record.epoch),
        });
    }
    Ok((Some(record), epochs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(epoch: u64, renewed_ms: u64, released: bool) -> LeaseRecord {
        LeaseRecord {
            epoch,
            owner: "jobmanager a".into(),
            host: "h".into(),
            pid: 7,
            renewed_ms,
            released,
        }
    }

    const D: Duration = Duration::from_secs(10);

    #[test]
    fn a_folder_without_a_lease_is_taken_with_epoch_one() {
        assert_eq!(
            decide(None, 0, D, |_, _| None),
            LeaseDecision::Take { epoch: 1 }
        );
    }

    #[test]
    fn a_live_renewed_lease_is_held() {
        let c = record(3, 1_000, false);
        assert_eq!(
            decide(Some(&c), 5_000, D, |_, _| Some(true)),
            LeaseDecision::Held(c.clone())
        );
        assert_eq!(
            decide(Some(&c), 5_000, D, |_, _| None),
            LeaseDecision::Held(c)
        );
    }

    #[test]
    fn an_expired_a_released_or_a_dead_owners_lease_is_taken_over_with_the_next_epoch() {
        let take = LeaseDecision::Take { epoch: 4 };
        assert_eq!(
            decide(Some(&record(3, 1_000, false)), 11_001, D, |_, _| None),
            take
        );
        assert_eq!(
            decide(Some(&record(3, 1_000, true)), 1_001, D, |_, _| Some(true)),
            take
        );
        assert_eq!(
            decide(Some(&record(3, 1_000, false)), 1_001, D, |_, _| Some(false)),
            take
        );
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn a_second_owner_is_refused_naming_the_first_until_it_releases() {
        block_on(async {
            let store = Store::in_memory();
            let paths = CheckpointPaths::new(JobId(9));
            let first = JobLease::acquire(&store, &paths, "jobmanager one", 1_000, D)
                .await
                .unwrap();
            let err = JobLease::acquire(&store, &paths, "jobmanager two", 2_000, D)
                .await
                .unwrap_err();
            assert!(err.to_string().contains("jobmanager one"), "{err}");
            first.release().await.unwrap();
            let second = JobLease::acquire(&store, &paths, "jobmanager two", 3_000, D)
                .await
                .unwrap();
            assert_eq!(second.record().epoch, 2);
        });
    }

    #[test]
    fn an_owner_whose_folder_was_taken_over_cannot_renew() {
        block_on(async {
            let store = Store::in_memory();
            let paths = CheckpointPaths::new(JobId(9));
            let mut old = JobLease::acquire(&store, &paths, "old", 1_000, D)
                .await
                .unwrap();
            // The old owner pauses past its lease; a newcomer takes over.
            let _new = JobLease::acquire(&store, &paths, "new", 20_000, D)
                .await
                .unwrap();
            let err = old.renew(20_001).await.unwrap_err();
            assert!(
                matches!(&err, LeaseError::Lost { by, .. } if by.owner == "new"),
                "{err}"
            );
        });
    }

    #[test]
    fn a_damaged_lease_blocks_the_folder_with_an_error_naming_it_and_is_left_alone() {
        block_on(async {
            let store = Store::in_memory();
            let paths = CheckpointPaths::new(JobId(9));
            let first = JobLease::acquire(&store, &paths, "one", 1_000, D)
                .await
                .unwrap();
            first.release().await.unwrap();
            // A flipped byte: the record no longer parses.
            let path = paths.lease(1);
            let mut bytes = store.get(&path).await.unwrap().to_vec();
            bytes[0] ^= 0x20;
            store.put(&path, bytes.clone().into()).await.unwrap();
            let err = JobLease::acquire(&store, &paths, "two", 2_000, D)
                .await
                .unwrap_err();
            assert!(
                matches!(err, LeaseError::Storage { .. }) && err.to_string().contains("lease-1"),
                "{err}"
            );
            assert_eq!(
                store.get(&path).await.unwrap().to_vec(),
                bytes,
                "left as found"
            );
        });
    }
}
