//! High availability on object storage (`high-availability.type: storage`, DESIGN §6): the
//! JobManager's side of [`weir_coordination::leader`].
//!
//! - **Standby**: until it leads, a JobManager serves nothing but the leader's address: the
//!   TaskManager session and every Dispatcher RPC answer `UNAVAILABLE` naming the leader, REST
//!   answers 503 with it.
//! - **Leading**: it publishes its addresses, records every accepted job (its request and its
//!   state) and resumes the jobs the previous leader recorded as running — from their latest
//!   completed checkpoint, or from the start (or the savepoint they were submitted with) when
//!   they have none. A job recorded as ended is never run again.
//! - **Fencing**: it may act only within `high-availability.lease.duration` of its last
//!   renewal ([`HaState::may_act`]). Every `_metadata` write and every deployment asks first,
//!   so a leader that was paused past its lease commits and deploys nothing when it wakes. When
//!   a renewal finds a newer leader, or none succeeded for a whole lease, the JobManager calls
//!   [`HaOptions::on_lost`] (the `weir jobmanager` binary exits) and never acts again.
//! - A clean shutdown releases the lease (a standby takes over at once) and leaves the jobs
//!   recorded as running: the next leader resumes them.

use crate::cluster::{lock, Shared};
use crate::error::DispatchError;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use weir_coordination::driver::now_ms;
use weir_coordination::leader::{
    self, Election, HaError, LeaderAddress, Leadership, RecordedState,
};
use weir_proto::v1::SubmitJobRequest;
use weir_storage::{Bytes, Store};
use weir_types::JobId;

/// How a JobManager takes part in leader election.
#[derive(Clone)]
pub struct HaOptions {
    /// The store rooted at `high-availability.storageDir`.
    pub store: Store,
    /// `high-availability.lease.duration`: a leader that has not renewed for this long is
    /// replaced, and stops acting itself.
    pub lease_duration: Duration,
    /// `high-availability.lease.renew-interval`: how often the leader renews and a standby
    /// tries to take over.
    pub renew_interval: Duration,
    /// Called once when this JobManager lost leadership, with the reason; it must stop the
    /// process (or at least never let this JobManager act again).
    pub on_lost: Arc<dyn Fn(String) + Send + Sync>,
}

impl std::fmt::Debug for HaOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HaOptions")
            .field("store", &self.store)
            .field("lease_duration", &self.lease_duration)
            .field("renew_interval", &self.renew_interval)
            .finish_non_exhaustive()
    }
}

/// How long a job's takeover may wait for the previous leader's lease on its checkpoint folder
/// (a paused leader's lease runs out; a killed one's is seen dead at once on the same host).
const TAKEOVER_WAIT: Duration = Duration::from_secs(30);

/// The JobManager's leadership as its threads see it.
pub(crate) struct HaState {
    pub options: HaOptions,
    /// The epoch this JobManager leads with; 0 while it stands by.
    epoch: AtomicU64,
    /// Until when it may act (the last renewal plus the lease duration).
    valid_until: Mutex<Option<Instant>>,
    /// Leadership was lost: never act again.
    lost: AtomicBool,
    /// The leader's address as last read (for standby answers).
    leader: Mutex<Option<LeaderAddress>>,
}

impl HaState {
    pub fn new(options: HaOptions) -> Self {
        Self {
            options,
            epoch: AtomicU64::new(0),
            valid_until: Mutex::new(None),
            lost: AtomicBool::new(false),
            leader: Mutex::new(None),
        }
    }

    /// The epoch this JobManager leads with, if it leads.
    pub fn epoch(&self) -> Option<u64> {
        match self.epoch.load(Ordering::SeqCst) {
            0 => None,
            e => Some(e),
        }
    }

    /// Whether this JobManager may act now; `Err` says why not.
    pub fn may_act(&self) -> Result<(), String> {
        if self.lost.load(Ordering::SeqCst) {
            return Err("this JobManager lost its leadership".into());
        }
        let Some(epoch) = self.epoch() else {
            return Err(self.standby_message());
        };
        match *lock(&self.valid_until) {
            Some(until) if Instant::now() < until => Ok(()),
            _ => Err(format!(
                "this JobManager's leadership (epoch {epoch}) was not renewed within \
                 high-availability.lease.duration ({:?})",
                self.options.lease_duration
            )),
        }
    }

    /// What a standby answers: where the leader is, when known.
    pub fn standby_message(&self) -> String {
        match &*lock(&self.leader) {
            Some(l) => format!(
                "this JobManager stands by; the leader (epoch {}) is at {} (REST {})",
                l.epoch, l.rpc, l.rest
            ),
            None => "this JobManager stands by; no leader has published its address yet".into(),
        }
    }

    /// The leader's address as last read, if any.
    pub fn leader(&self) -> Option<LeaderAddress> {
        lock(&self.leader).clone()
    }

    fn lose(&self, reason: String) {
        if !self.lost.swap(true, Ordering::SeqCst) {
            tracing::error!(%reason, "leadership lost; this JobManager stops acting");
            (self.options.on_lost)(reason);
        }
    }
}

/// Runs the election, then the leadership, of this JobManager until the runtime stops or
/// leadership is lost. `rpc` and `rest` are the addresses it publishes when it leads.
pub(crate) async fn run(shared: Arc<Shared>, rpc: String, rest: String) {
    let Some(ha) = shared.ha.clone() else {
        return;
    };
    let owner = format!("the JobManager at {rpc}");
    let store = ha.options.store.clone();
    let mut leadership = loop {
        if shared.is_shutting_down() {
            return;
        }
        match Leadership::try_acquire(&store, &owner, now_ms(), ha.options.lease_duration).await {
            Ok(Election::Won(l)) => break l,
            Ok(Election::Standby(holder)) => {
                tracing::debug!(leader = %holder.owner, epoch = holder.epoch, "standing by");
                match leader::leader_address(&store).await {
                    Ok(address) => *lock(&ha.leader) = address,
                    Err(e) => tracing::debug!(error = %e, "the leader's address is unreadable"),
                }
            }
            Err(e) => tracing::warn!(error = %e, "leader election failed; retrying"),
        }
        tokio::time::sleep(ha.options.renew_interval).await;
    };
    let epoch = leadership.epoch();
    *lock(&ha.valid_until) =
        Some(Instant::now() + leadership.valid_for().min(ha.options.lease_duration));
    ha.epoch.store(epoch, Ordering::SeqCst);
    if let Err(e) = leader::publish_address(&store, epoch, &rpc, &rest).await {
        tracing::warn!(error = %e, "the leader's address was not published");
    }
    *lock(&ha.leader) = Some(LeaderAddress {
        epoch,
        rpc: rpc.clone(),
        rest,
    });
    tracing::info!(epoch, %rpc, "this JobManager leads");
    let taking_over = shared.clone();
    let _ = std::thread::Builder::new()
        .name("jm-takeover".into())
        .spawn(move || take_over(&taking_over));
    loop {
        tokio::time::sleep(ha.options.renew_interval).await;
        if shared.is_shutting_down() {
            if let Err(e) = leadership.release().await {
                tracing::warn!(error = %e, "leadership was not released");
            }
            return;
        }
        match leadership.renew(now_ms()).await {
            Ok(()) => *lock(&ha.valid_until) = Some(Instant::now() + leadership.valid_for()),
            Err(e @ HaError::Lost { .. }) => {
                ha.lose(e.to_string());
                return;
            }
            Err(e) if leadership.valid_for().is_zero() => {
                ha.lose(format!(
                    "the leadership lease could not be renewed for {:?}: {e}",
                    ha.options.lease_duration
                ));
                return;
            }
            Err(e) => tracing::warn!(error = %e, "leadership renewal failed; retrying"),
        }
    }
}

/// Resumes every job the HA folder records as running (see the module doc). Blocks.
fn take_over(shared: &Arc<Shared>) {
    let Some(ha) = shared.ha.clone() else {
        return;
    };
    // The listing is retried while this JobManager leads: acting on part of the jobs would
    // drop the others, and a storage hiccup is no reason to give leadership up.
    let jobs = loop {
        if ha.may_act().is_err() || shared.is_shutting_down() {
            return;
        }
        let store = ha.options.store.clone();
        match crate::dispatcher::run_on(&shared.runtime, async move {
            leader::recorded_jobs(&store).await
        }) {
            Ok(Ok(jobs)) => break jobs,
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot list the jobs to take over; retrying"),
            Err(e) => tracing::warn!(error = %e, "cannot list the jobs to take over; retrying"),
        }
        std::thread::sleep(ha.options.renew_interval);
    };
    for recovered in jobs {
        let recovered = match recovered {
            Ok(r) => r,
            Err(e) => {
                // A damaged record names its object; the other jobs are still taken over.
                tracing::error!(error = %e, "a job record is unreadable; that job is not resumed");
                continue;
            }
        };
        if recovered.record.state != RecordedState::Running {
            continue;
        }
        let job = recovered.job;
        let original: SubmitJobRequest = match prost::Message::decode(recovered.request.clone()) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(%job, error = %e, "the recorded request does not decode; job not resumed");
                continue;
            }
        };
        let started = Instant::now();
        loop {
            if ha.may_act().is_err() || shared.is_shutting_down() {
                return;
            }
            let mut resumed = original.clone();
            resumed.resume = true;
            resumed.restore_path.clear();
            let outcome = match crate::dispatcher::submit(shared, resumed) {
                Err(DispatchError::NothingToResume(_)) => {
                    crate::dispatcher::submit(shared, original.clone())
                }
                other => other,
            };
            match outcome {
                Ok(_) => {
                    tracing::info!(%job, takeover_ms = started.elapsed().as_millis() as u64, "job taken over");
                    break;
                }
                Err(DispatchError::AlreadyRunning(_)) => break,
                // The previous leader's lease on the job's checkpoint folder: wait it out.
                Err(DispatchError::FolderInUse(_)) if started.elapsed() < TAKEOVER_WAIT => {
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => {
                    tracing::error!(%job, error = %e, "the job could not be taken over");
                    break;
                }
            }
        }
    }
}

/// Records an accepted job for the next leader; refused when this JobManager does not lead.
pub(crate) fn record_job(
    shared: &Shared,
    job: JobId,
    request: &SubmitJobRequest,
) -> Result<(), DispatchError> {
    let Some(ha) = &shared.ha else {
        return Ok(());
    };
    ha.may_act().map_err(DispatchError::Unavailable)?;
    let epoch = ha.epoch().unwrap_or(0);
    let store = ha.options.store.clone();
    let bytes = Bytes::from(prost::Message::encode_to_vec(request));
    crate::dispatcher::run_on(&shared.runtime, async move {
        leader::record_job(&store, epoch, job, bytes).await
    })?
    .map_err(|e| DispatchError::Internal(format!("job {job} was not recorded: {e}")))
}

/// With high availability: a sink that records `job`'s checkpoint counter and latest
/// completed checkpoint in the HA folder, newest value last (one writer task; a value that
/// arrives while a write is in flight replaces any older one still waiting). Nothing is
/// written once this JobManager may no longer act.
pub(crate) fn pointer_sink(
    shared: &Shared,
    job: JobId,
) -> Option<crate::job_master::checkpoints::PointerSink> {
    let ha = shared.ha.clone()?;
    let (tx, mut rx) = tokio::sync::watch::channel::<Option<(u64, Option<u64>)>>(None);
    let writer = Arc::clone(&ha);
    shared.runtime.spawn(async move {
        while rx.changed().await.is_ok() {
            let Some((next_id, latest_completed)) = *rx.borrow_and_update() else {
                continue;
            };
            if writer.may_act().is_err() {
                return;
            }
            let pointer = leader::CheckpointPointer {
                epoch: writer.epoch().unwrap_or(0),
                next_id,
                latest_completed,
            };
            if let Err(e) = leader::record_checkpoints(&writer.options.store, job, pointer).await {
                tracing::warn!(%job, error = %e, "the checkpoint record for the next leader was not written");
            }
        }
    });
    Some(Arc::new(move |next_id, latest| {
        let _ = tx.send(Some((next_id, latest)));
    }))
}

/// `job`'s checkpoint record in the HA folder, if high availability is on and one is readable
/// (an unreadable one is logged: the folder listing still guards the ids).
pub(crate) fn recorded_checkpoints(
    shared: &Shared,
    job: JobId,
) -> Option<leader::CheckpointPointer> {
    let ha = shared.ha.as_ref()?;
    let store = ha.options.store.clone();
    match crate::dispatcher::run_on(&shared.runtime, async move {
        leader::recorded_checkpoints(&store, job).await
    }) {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => {
            tracing::warn!(%job, error = %e, "the job's checkpoint record is unreadable");
            None
        }
        Err(e) => {
            tracing::warn!(%job, error = %e, "the job's checkpoint record is unreadable");
            None
        }
    }
}

/// Records that a job ended for good (not when this JobManager is shutting down or no longer
/// leads: then the next leader resumes it).
pub(crate) fn record_ended(shared: &Shared, job: JobId) {
    let Some(ha) = &shared.ha else {
        return;
    };
    if shared.is_shutting_down() || ha.may_act().is_err() {
        return;
    }
    let epoch = ha.epoch().unwrap_or(0);
    let store = ha.options.store.clone();
    let written = crate::dispatcher::run_on(&shared.runtime, async move {
        leader::record_state(&store, epoch, job, RecordedState::Ended).await
    })
    .and_then(|r| r.map_err(|e| DispatchError::Internal(e.to_string())));
    if let Err(e) = written {
        tracing::warn!(%job, error = %e, "the job's end was not recorded; a new leader would resume it");
    }
}
