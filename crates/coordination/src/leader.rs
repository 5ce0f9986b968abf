//! JobManager high availability on object storage (DESIGN §6): leadership as numbered epoch
//! leases, and what a new leader needs to take over, all under `high-availability.storageDir`.
//!
//! ```text
//! leader/lease-<epoch>     who leads (a [`LeaseRecord`]), written create-only
//! leader/address.json      where the leader of that epoch listens ([`LeaderAddress`])
//! jobs/<job-id>.request    the job as submitted (the SubmitJobRequest's protobuf bytes)
//! jobs/<job-id>.state      its state as the leaders saw it ([`JobRecord`], JSON)
//! jobs/<job-id>.checkpoints  its checkpoint id counter and latest completed checkpoint
//!                          ([`CheckpointPointer`], JSON)
//! ```
//!
//! 1. **Elect** — a JobManager reads the newest leader lease and takes the next epoch when the
//!    rule of [`decide`] lets it (released, expired, or its process seen dead on this host),
//!    writing `leader/lease-<n+1>` create-only: of two JobManagers racing, exactly one wins.
//!    A loser stands by and tries again every renew interval.
//! 2. **Renew** — the leader rewrites its lease with a new timestamp. A newer lease means it
//!    was deposed ([`HaError::Lost`]). [`Leadership::valid_for`] says how much longer it may act
//!    without a renewal: nothing it writes after that counts, so a leader that was paused
//!    (SIGSTOP, a long GC-like stall) stops acting when it wakes instead of acting stale.
//! 3. **Take over** — the new leader resumes every job whose record is `running`; a job whose
//!    record is terminal is not run again.
//!
//! Must not depend on the JobManager: it is pure storage bookkeeping plus the pure [`decide`].

use crate::lease::{decide, local_process_alive, LeaseDecision, LeaseRecord};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};
use weir_storage::{Bytes, ObjectPath, StorageError, Store};
use weir_types::JobId;

/// Largest object read from the HA folder: a job request holds the plan (at most a few MiB).
const MAX_OBJECT_BYTES: usize = 16 << 20;

const LEASE_PREFIX: &str = "lease-";

/// Why a high-availability call failed.
#[derive(Debug, thiserror::Error)]
pub enum HaError {
    /// A newer leader took over.
    #[error("leadership lost to {} (epoch {})", .by.owner, .by.epoch)]
    Lost {
        /// The new leader.
        by: LeaseRecord,
    },
    /// The HA folder could not be read or written, or holds something unreadable.
    #[error("high-availability.storageDir: {0}")]
    Storage(String),
}

fn storage(what: impl std::fmt::Display, e: impl std::fmt::Display) -> HaError {
    HaError::Storage(format!("{what}: {e}"))
}

fn lease_dir() -> ObjectPath {
    ObjectPath::from("leader")
}

fn lease_path(epoch: u64) -> ObjectPath {
    lease_dir().join(format!("{LEASE_PREFIX}{epoch}"))
}

/// The epoch of `leader/lease-<n>` (canonical digits only), or `None`.
fn lease_epoch(path: &ObjectPath) -> Option<u64> {
    let rest: Vec<_> = path.prefix_match(&lease_dir())?.collect();
    let [name] = rest.as_slice() else {
        return None;
    };
    let digits = name.as_ref().strip_prefix(LEASE_PREFIX)?;
    let canonical = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'));
    canonical.then(|| digits.parse().ok()).flatten()
}

fn address_path() -> ObjectPath {
    ObjectPath::from("leader/address.json")
}

fn checkpoints_path(job: JobId) -> ObjectPath {
    ObjectPath::from(format!("jobs/{job}.checkpoints"))
}

fn request_path(job: JobId) -> ObjectPath {
    ObjectPath::from(format!("jobs/{job}.request"))
}

fn state_path(job: JobId) -> ObjectPath {
    ObjectPath::from(format!("jobs/{job}.state"))
}

/// Reads `path`, refusing objects over [`MAX_OBJECT_BYTES`]; `None` when it does not exist.
async fn read(store: &Store, path: &ObjectPath) -> Result<Option<Bytes>, HaError> {
    match store.get(path).await {
        Ok(bytes) if bytes.len() > MAX_OBJECT_BYTES => Err(HaError::Storage(format!(
            "{path} has {} bytes; at most {MAX_OBJECT_BYTES}",
            bytes.len()
        ))),
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(storage(format!("cannot read {path}"), e)),
    }
}

/// The newest leader lease (parsed) and the epochs of older lease objects.
async fn newest(store: &Store) -> Result<(Option<LeaseRecord>, Vec<u64>), HaError> {
    let listed = store
        .list(&lease_dir())
        .await
        .map_err(|e| storage(format!("cannot list {}", lease_dir()), e))?;
    let mut epochs: Vec<u64> = listed
        .iter()
        .filter_map(|m| lease_epoch(&m.location))
        .collect();
    epochs.sort_unstable();
    let Some(latest) = epochs.pop() else {
        return Ok((None, Vec::new()));
    };
    let path = lease_path(latest);
    let Some(bytes) = read(store, &path).await? else {
        // Deleted between the listing and the read: a newer one replaced it; look again later.
        return Ok((None, epochs));
    };
    let record: LeaseRecord = serde_json::from_slice(&bytes)
        .map_err(|e| storage(format!("{path} is not a lease record"), e))?;
    if record.epoch != latest {
        return Err(HaError::Storage(format!(
            "{path} holds epoch {}, not {latest}",
            record.epoch
        )));
    }
    Ok((Some(record), epochs))
}

/// Where the leader of an epoch listens (`leader/address.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderAddress {
    /// The leader's epoch.
    pub epoch: u64,
    /// Its gRPC address (`http://host:port`), for TaskManagers and clients.
    pub rpc: String,
    /// Its REST address (`http://host:port`).
    pub rest: String,
}

/// A job's checkpoint counter and latest completed checkpoint, as a leader recorded them after
/// a checkpoint completed: a new leader's ids continue above `next_id` even if the folder
/// listing lost every trace of the ids below it, and it can tell when the newest intact
/// checkpoint it finds is older than the one that completed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointPointer {
    /// The epoch of the leader that wrote it.
    pub epoch: u64,
    /// The next checkpoint id the leader would have issued.
    pub next_id: u64,
    /// The latest completed checkpoint.
    pub latest_completed: Option<u64>,
}

/// A job's state as recorded for the next leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordedState {
    /// Accepted and not ended: a new leader resumes it.
    Running,
    /// Ended for good (finished, cancelled or failed): never run again.
    Ended,
}

/// `jobs/<job-id>.state`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    /// The job.
    pub job_id: String,
    /// Its state.
    pub state: RecordedState,
    /// The epoch of the leader that wrote this record.
    pub epoch: u64,
}

/// A job a new leader finds in the HA folder.
#[derive(Clone, Debug)]
pub struct RecoveredJob {
    /// The job.
    pub job: JobId,
    /// Its record.
    pub record: JobRecord,
    /// The SubmitJobRequest as first submitted (protobuf bytes).
    pub request: Bytes,
}

/// Leadership of epoch [`epoch`](Self::epoch), held until lost.
#[derive(Debug)]
pub struct Leadership {
    store: Store,
    record: LeaseRecord,
    duration: Duration,
    /// When the last successful write of the lease started: the lease is ours until
    /// `renewed_at + duration` by the local monotonic clock.
    renewed_at: Instant,
}

/// The outcome of one election attempt.
#[derive(Debug)]
pub enum Election {
    /// This JobManager leads now.
    Won(Leadership),
    /// Another leads (or won the race): stand by.
    Standby(LeaseRecord),
}

impl Leadership {
    /// Step 1: one attempt to lead, as `owner` (for people: addresses), with leases lasting
    /// `duration`.
    pub async fn try_acquire(
        store: &Store,
        owner: &str,
        now_ms: u64,
        duration: Duration,
    ) -> Result<Election, HaError> {
        let started = Instant::now();
        let (current, older) = newest(store).await?;
        let epoch = match decide(current.as_ref(), now_ms, duration, local_process_alive) {
            LeaseDecision::Take { epoch } => epoch,
            LeaseDecision::Held(holder) => return Ok(Election::Standby(holder)),
        };
        let record = LeaseRecord::of_this_process(epoch, owner, now_ms);
        let path = lease_path(epoch);
        let bytes = serde_json::to_vec(&record).map_err(|e| storage(&path, e))?;
        match store.put_create(&path, Bytes::from(bytes)).await {
            Ok(()) => {}
            Err(StorageError::AlreadyExists { .. }) => {
                return match newest(store).await?.0 {
                    Some(winner) => Ok(Election::Standby(winner)),
                    None => Err(HaError::Storage(format!(
                        "{path} was created by another JobManager, then vanished"
                    ))),
                };
            }
            Err(e) => return Err(storage(format!("cannot write {path}"), e)),
        }
        for old in older.into_iter().chain(current.map(|c| c.epoch)) {
            if let Err(e) = store.delete(&lease_path(old)).await {
                tracing::debug!(lease = %lease_path(old), error = %e, "old leader lease not deleted");
            }
        }
        tracing::info!(epoch, owner, "leadership acquired");
        Ok(Election::Won(Self {
            store: store.clone(),
            record,
            duration,
            renewed_at: started,
        }))
    }

    /// This leadership's epoch.
    pub fn epoch(&self) -> u64 {
        self.record.epoch
    }

    /// How much longer this JobManager may act without another renewal (zero: it must not).
    pub fn valid_for(&self) -> Duration {
        self.duration.saturating_sub(self.renewed_at.elapsed())
    }

    /// Step 2: renews the lease at `now_ms`; [`HaError::Lost`] when a newer leader exists.
    pub async fn renew(&mut self, now_ms: u64) -> Result<(), HaError> {
        let started = Instant::now();
        let (current, _) = newest(&self.store).await?;
        if let Some(c) = current.filter(|c| c.epoch > self.record.epoch) {
            return Err(HaError::Lost { by: c });
        }
        self.record.renewed_ms = now_ms;
        self.write().await?;
        self.renewed_at = started;
        Ok(())
    }

    /// Gives leadership up (a clean shutdown), so a standby takes over at once.
    pub async fn release(mut self) -> Result<(), HaError> {
        let (current, _) = newest(&self.store).await?;
        if let Some(c) = current.filter(|c| c.epoch > self.record.epoch) {
            return Err(HaError::Lost { by: c });
        }
        self.record.released = true;
        self.write().await
    }

    async fn write(&self) -> Result<(), HaError> {
        let path = lease_path(self.record.epoch);
        let bytes = serde_json::to_vec(&self.record).map_err(|e| storage(&path, e))?;
        self.store
            .put(&path, Bytes::from(bytes))
            .await
            .map_err(|e| storage(format!("cannot write {path}"), e))
    }
}

/// Publishes where the leader of `epoch` listens.
pub async fn publish_address(
    store: &Store,
    epoch: u64,
    rpc: &str,
    rest: &str,
) -> Result<(), HaError> {
    let address = LeaderAddress {
        epoch,
        rpc: rpc.to_string(),
        rest: rest.to_string(),
    };
    let bytes = serde_json::to_vec(&address).map_err(|e| storage(address_path(), e))?;
    store
        .put(&address_path(), Bytes::from(bytes))
        .await
        .map_err(|e| storage(format!("cannot write {}", address_path()), e))
}

/// Records a job as accepted by the leader of `epoch`: its request, then its `running` state.
pub async fn record_job(
    store: &Store,
    epoch: u64,
    job: JobId,
    request: Bytes,
) -> Result<(), HaError> {
    let path = request_path(job);
    store
        .put(&path, request)
        .await
        .map_err(|e| storage(format!("cannot write {path}"), e))?;
    record_state(store, epoch, job, RecordedState::Running).await
}

/// Records a job's state, as the leader of `epoch`.
pub async fn record_state(
    store: &Store,
    epoch: u64,
    job: JobId,
    state: RecordedState,
) -> Result<(), HaError> {
    let record = JobRecord {
        job_id: job.to_string(),
        state,
        epoch,
    };
    let path = state_path(job);
    let bytes = serde_json::to_vec(&record).map_err(|e| storage(&path, e))?;
    store
        .put(&path, Bytes::from(bytes))
        .await
        .map_err(|e| storage(format!("cannot write {path}"), e))
}

/// Records `job`'s checkpoint counter and latest completed checkpoint (overwriting the last).
pub async fn record_checkpoints(
    store: &Store,
    job: JobId,
    pointer: CheckpointPointer,
) -> Result<(), HaError> {
    let path = checkpoints_path(job);
    let bytes = serde_json::to_vec(&pointer).map_err(|e| storage(&path, e))?;
    store
        .put(&path, Bytes::from(bytes))
        .await
        .map_err(|e| storage(format!("cannot write {path}"), e))
}

/// `job`'s recorded checkpoint counter and latest completed checkpoint, if any was recorded.
pub async fn recorded_checkpoints(
    store: &Store,
    job: JobId,
) -> Result<Option<CheckpointPointer>, HaError> {
    let path = checkpoints_path(job);
    let Some(bytes) = read(store, &path).await? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| storage(format!("{path} is not a checkpoint record"), e))
}

/// Where the current leader listens, when one has published its address.
pub async fn leader_address(store: &Store) -> Result<Option<LeaderAddress>, HaError> {
    let Some(bytes) = read(store, &address_path()).await? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| storage(format!("{} is not a leader address", address_path()), e))
}

/// Every job recorded in the HA folder: each record read, or the error that names its object
/// (damaged, or its request missing) — one bad record must neither hide the others nor be
/// skipped silently. `Err` only when the folder cannot be listed.
pub async fn recorded_jobs(store: &Store) -> Result<Vec<Result<RecoveredJob, HaError>>, HaError> {
    let dir = ObjectPath::from("jobs");
    let listed = store
        .list(&dir)
        .await
        .map_err(|e| storage(format!("cannot list {dir}"), e))?;
    let mut jobs = Vec::new();
    for meta in listed {
        let Some(id) = meta
            .location
            .filename()
            .and_then(|n| n.strip_suffix(".state"))
        else {
            continue;
        };
        jobs.push(recorded_job(store, &meta.location, id).await.transpose());
    }
    let mut jobs: Vec<Result<RecoveredJob, HaError>> = jobs.into_iter().flatten().collect();
    jobs.sort_by_key(|j| j.as_ref().map(|j| j.job.to_string()).unwrap_or_default());
    Ok(jobs)
}

/// The job whose state record is at `location` (`None`: deleted meanwhile).
async fn recorded_job(
    store: &Store,
    location: &ObjectPath,
    id: &str,
) -> Result<Option<RecoveredJob>, HaError> {
    let job =
        JobId::parse(id).map_err(|e| HaError::Storage(format!("{location} names no job: {e}")))?;
    let Some(bytes) = read(store, location).await? else {
        return Ok(None);
    };
    let record: JobRecord = serde_json::from_slice(&bytes)
        .map_err(|e| storage(format!("{location} is not a job record"), e))?;
    if record.job_id != job.to_string() {
        return Err(HaError::Storage(format!(
            "{location} records job {}",
            record.job_id
        )));
    }
    let path = request_path(job);
    let request = read(store, &path)
        .await?
        .ok_or_else(|| HaError::Storage(format!("{path} is missing")))?;
    Ok(Some(RecoveredJob {
        job,
        record,
        request,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fuzzed_ha_records_are_refused_or_read_never_a_panic_a_hang_or_a_huge_allocation() {
        let records: Vec<Vec<u8>> = vec![
            serde_json::to_vec(&LeaderAddress {
                epoch: 7,
                rpc: "http://127.0.0.1:6123".into(),
                rest: "http://127.0.0.1:8081".into(),
            })
            .unwrap(),
            serde_json::to_vec(&CheckpointPointer {
                epoch: 7,
                next_id: 12,
                latest_completed: Some(11),
            })
            .unwrap(),
            serde_json::to_vec(&JobRecord {
                job_id: "0123456789abcdef0123456789abcdef".into(),
                state: RecordedState::Running,
                epoch: 7,
            })
            .unwrap(),
            serde_json::to_vec(&crate::lease::LeaseRecord::of_this_process(
                7,
                "jobmanager",
                1,
            ))
            .unwrap(),
        ];
        // The HA folder is shared storage: every record may come from another process.
        weir_fuzz::run("HA records", &records, |bytes| {
            let _ = serde_json::from_slice::<LeaderAddress>(bytes);
            let _ = serde_json::from_slice::<CheckpointPointer>(bytes);
            let _ = serde_json::from_slice::<JobRecord>(bytes);
            let _ = serde_json::from_slice::<crate::lease::LeaseRecord>(bytes);
        });
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    const D: Duration = Duration::from_secs(10);

    #[test]
    fn of_two_jobmanagers_one_leads_and_the_other_stands_by() {
        rt().block_on(async {
            let store = Store::in_memory();
            let Election::Won(first) = Leadership::try_acquire(&store, "a", 1_000, D)
                .await
                .expect("elect")
            else {
                panic!("the first JobManager did not lead");
            };
            assert_eq!(first.epoch(), 1);
            match Leadership::try_acquire(&store, "b", 2_000, D)
                .await
                .expect("elect")
            {
                Election::Standby(holder) => assert_eq!(holder.owner, "a"),
                Election::Won(_) => panic!("two leaders"),
            }
        });
    }

    #[test]
    fn an_expired_leader_is_replaced_with_the_next_epoch_and_is_told_it_lost() {
        rt().block_on(async {
            let store = Store::in_memory();
            let Election::Won(mut old) = Leadership::try_acquire(&store, "a", 1_000, D)
                .await
                .expect("elect")
            else {
                panic!("no leader");
            };
            // The lease was last renewed at 1 s; at 12 s it has expired (another host's pid
            // cannot be checked, so only time counts).
            let Election::Won(new) = Leadership::try_acquire(&store, "b", 12_000, D)
                .await
                .expect("elect")
            else {
                panic!("the expired lease blocked the standby");
            };
            assert_eq!(new.epoch(), 2);
            match old.renew(12_500).await {
                Err(HaError::Lost { by }) => assert_eq!(by.epoch, 2),
                other => panic!("the old leader renewed: {other:?}"),
            }
        });
    }

    #[test]
    fn a_released_leadership_is_taken_at_once() {
        rt().block_on(async {
            let store = Store::in_memory();
            let Election::Won(old) = Leadership::try_acquire(&store, "a", 1_000, D)
                .await
                .expect("elect")
            else {
                panic!("no leader");
            };
            old.release().await.expect("release");
            assert!(matches!(
                Leadership::try_acquire(&store, "b", 1_001, D).await,
                Ok(Election::Won(l)) if l.epoch() == 2
            ));
        });
    }

    #[test]
    fn a_leader_may_act_only_within_its_lease_duration_since_the_last_renewal() {
        rt().block_on(async {
            let store = Store::in_memory();
            let Election::Won(mut l) =
                Leadership::try_acquire(&store, "a", 1_000, Duration::from_millis(50))
                    .await
                    .expect("elect")
            else {
                panic!("no leader");
            };
            assert!(l.valid_for() > Duration::ZERO);
            std::thread::sleep(Duration::from_millis(60));
            assert_eq!(l.valid_for(), Duration::ZERO, "a stale leader must not act");
            l.renew(2_000).await.expect("renew");
            assert!(l.valid_for() > Duration::ZERO);
        });
    }

    #[test]
    fn jobs_are_recorded_with_their_request_and_state_for_the_next_leader() {
        rt().block_on(async {
            let store = Store::in_memory();
            let Election::Won(l) = Leadership::try_acquire(&store, "a", 1_000, D)
                .await
                .expect("elect")
            else {
                panic!("no leader");
            };
            let (running, ended) = (JobId::generate(), JobId::generate());
            let e = l.epoch();
            record_job(&store, e, running, Bytes::from_static(b"req-1"))
                .await
                .expect("record");
            record_job(&store, e, ended, Bytes::from_static(b"req-2"))
                .await
                .expect("record");
            record_state(&store, e, ended, RecordedState::Ended)
                .await
                .expect("record");
            publish_address(&store, e, "http://127.0.0.1:1", "http://127.0.0.1:2")
                .await
                .expect("publish");
            let jobs: Vec<RecoveredJob> = recorded_jobs(&store)
                .await
                .expect("list")
                .into_iter()
                .map(|j| j.expect("readable"))
                .collect();
            assert_eq!(jobs.len(), 2);
            let find = |id: JobId| jobs.iter().find(|j| j.job == id).expect("recorded");
            assert_eq!(find(running).record.state, RecordedState::Running);
            assert_eq!(&find(running).request[..], b"req-1");
            assert_eq!(find(ended).record.state, RecordedState::Ended);
            assert_eq!(find(ended).record.epoch, 1);
            assert_eq!(
                recorded_checkpoints(&store, running).await.expect("read"),
                None
            );
            let pointer = CheckpointPointer {
                epoch: e,
                next_id: 8,
                latest_completed: Some(7),
            };
            record_checkpoints(&store, running, pointer)
                .await
                .expect("record");
            assert_eq!(
                recorded_checkpoints(&store, running).await.expect("read"),
                Some(pointer)
            );
            assert_eq!(
                recorded_jobs(&store).await.expect("list").len(),
                2,
                "a checkpoint record is not a job"
            );
            let address = leader_address(&store)
                .await
                .expect("read")
                .expect("published");
            assert_eq!(address.epoch, 1);
        });
    }

    #[test]
    fn a_damaged_job_record_is_an_error_naming_its_object_and_hides_no_other_job() {
        rt().block_on(async {
            let store = Store::in_memory();
            let (damaged, intact) = (JobId::generate(), JobId::generate());
            store
                .put(&state_path(damaged), Bytes::from_static(b"{not json"))
                .await
                .expect("put");
            record_job(&store, 1, intact, Bytes::from_static(b"req"))
                .await
                .expect("record");
            let jobs = recorded_jobs(&store).await.expect("listed");
            assert_eq!(jobs.len(), 2);
            let err = jobs
                .iter()
                .find_map(|j| j.as_ref().err())
                .expect("the damaged record is an error");
            assert!(
                err.to_string().contains(&format!("jobs/{damaged}.state")),
                "{err}"
            );
            assert!(jobs
                .iter()
                .any(|j| j.as_ref().is_ok_and(|j| j.job == intact)));
        });
    }

    #[test]
    fn only_canonical_lease_names_count_as_epochs() {
        assert_eq!(lease_epoch(&lease_path(12)), Some(12));
        assert_eq!(lease_epoch(&ObjectPath::from("leader/lease-012")), None);
        assert_eq!(lease_epoch(&ObjectPath::from("leader/lease-")), None);
        assert_eq!(lease_epoch(&ObjectPath::from("leader/address.json")), None);
    }
}
