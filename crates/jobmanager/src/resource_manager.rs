//! The ResourceManager: every live TaskManager, its slots and its control stream.
//!
//! Plain data behind one mutex in [`crate::cluster::Shared`]; every method is short and never
//! blocks (messages to a TaskManager go into its unbounded outbox, which its session task
//! drains). Who calls what:
//!
//! - the session handler ([`crate::session`]) registers a TaskManager, refreshes its
//!   liveness on every message, and marks it lost when its stream breaks;
//! - the heartbeat checker marks lost the TaskManagers silent for longer than
//!   `heartbeat.timeout`;
//! - JobMasters allocate and release slots and send messages through it.
//!
//! A lost TaskManager is removed at once: its slots are freed, its outbox dropped (which ends
//! its response stream) and its session task told to stop reading; the caller tells the
//! JobMasters that held slots there ([`LostTaskManager::jobs`]).

use crate::ids::TaskManagerId;
use crate::slots::{assign_slots, Assignment, NotEnoughSlots, TaskManagerSlots};
use crate::view::{LostTaskManagerInfo, SlotUse, TaskManagerInfo, TaskManagersView};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Notify};
use weir_proto::v1::{job_manager_message::Kind, JobManagerMessage};
use weir_types::JobId;

/// What the JobManager sends down one TaskManager's control stream.
pub(crate) type Outbox = mpsc::UnboundedSender<Result<JobManagerMessage, tonic::Status>>;

/// How many lost TaskManagers `/taskmanagers` remembers.
const LOST_HISTORY: usize = 64;

/// A job's claim on one TaskManager slot.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct SlotHolder {
    pub job: JobId,
    /// The job's slot index (subtask `job_slot` of every vertex runs here).
    pub job_slot: u32,
}

/// What a TaskManager said in `Register`, validated.
#[derive(Clone, Debug)]
pub(crate) struct Registration {
    pub id: TaskManagerId,
    pub slots: u32,
    pub data_address: String,
    pub pid: u32,
    /// Its `/metrics` endpoint, when it serves one.
    pub metrics_address: Option<std::net::SocketAddr>,
}

struct TaskManagerEntry {
    registration: Registration,
    /// Tells a message of this connection from one of an earlier connection with the same id.
    session: u64,
    slots: Vec<Option<SlotHolder>>,
    outbox: Outbox,
    /// Tells the session task to stop reading (the TaskManager was declared lost).
    kill: Arc<Notify>,
    registered_ms: u64,
    last_heartbeat_ms: u64,
    last_seen: Instant,
}

/// A TaskManager that was declared lost, and the jobs that held slots on it.
#[derive(Clone, Debug)]
pub(crate) struct LostTaskManager {
    pub id: TaskManagerId,
    pub data_address: String,
    pub pid: u32,
    /// When it was declared lost, ms since the epoch.
    pub detected_ms: u64,
    /// Its last message, ms since the epoch.
    pub last_heartbeat_ms: u64,
    pub reason: String,
    pub jobs: BTreeSet<JobId>,
}

/// See the module doc.
#[derive(Default)]
pub(crate) struct ResourceManager {
    taskmanagers: BTreeMap<TaskManagerId, TaskManagerEntry>,
    lost: VecDeque<LostTaskManager>,
    next_session: u64,
    /// Shutting down: registrations are refused.
    closed: bool,
}

impl ResourceManager {
    /// Registers a TaskManager: queues `Registered` (`first`) as the first message of its
    /// outbox and returns its session number, or the reason it is refused.
    pub fn register(
        &mut self,
        registration: Registration,
        outbox: Outbox,
        kill: Arc<Notify>,
        first: JobManagerMessage,
        now_ms: u64,
    ) -> Result<u64, String> {
        if self.closed {
            return Err("the JobManager is shutting down".into());
        }
        if let Some(live) = self.taskmanagers.get(&registration.id) {
            return Err(format!(
                "a TaskManager with id '{}' is already registered (data address {}, pid {}); \
                 use another id, or wait until the old one is declared lost",
                registration.id, live.registration.data_address, live.registration.pid
            ));
        }
        if outbox.send(Ok(first)).is_err() {
            return Err("the control stream closed during registration".into());
        }
        self.next_session += 1;
        let session = self.next_session;
        self.taskmanagers.insert(
            registration.id.clone(),
            TaskManagerEntry {
                slots: vec![None; registration.slots as usize],
                registration,
                session,
                outbox,
                kill,
                registered_ms: now_ms,
                last_heartbeat_ms: now_ms,
                last_seen: Instant::now(),
            },
        );
        Ok(session)
    }

    /// A message arrived from `id`'s session `session`: it is alive. Returns false when that
    /// session is not the live one (a stale connection), whose messages must be dropped.
    pub fn touch(&mut self, id: &TaskManagerId, session: u64, now_ms: u64) -> bool {
        match self.taskmanagers.get_mut(id) {
            Some(e) if e.session == session => {
                e.last_seen = Instant::now();
                e.last_heartbeat_ms = now_ms;
                true
            }
            _ => false,
        }
    }

    /// Declares `id` lost (only its session `session`, when given). Returns what was lost, or
    /// `None` when it was not live (already lost, or another session).
    pub fn mark_lost(
        &mut self,
        id: &TaskManagerId,
        session: Option<u64>,
        reason: String,
        now_ms: u64,
    ) -> Option<LostTaskManager> {
        let entry = self.taskmanagers.get(id)?;
        if session.is_some_and(|s| s != entry.session) {
            return None;
        }
        let entry = self.taskmanagers.remove(id)?;
        entry.kill.notify_one();
        let lost = LostTaskManager {
            id: id.clone(),
            data_address: entry.registration.data_address.clone(),
            pid: entry.registration.pid,
            detected_ms: now_ms,
            last_heartbeat_ms: entry.last_heartbeat_ms,
            reason,
            jobs: entry.slots.iter().flatten().map(|h| h.job).collect(),
        };
        if self.lost.len() == LOST_HISTORY {
            self.lost.pop_front();
        }
        self.lost.push_back(lost.clone());
        Some(lost)
    }

    /// The live TaskManagers silent for longer than `timeout`, with their session and how
    /// long they have been silent.
    pub fn silent(&self, now: Instant, timeout: Duration) -> Vec<(TaskManagerId, u64, Duration)> {
        self.taskmanagers
            .values()
            .filter_map(|e| {
                let silent = now.saturating_duration_since(e.last_seen);
                (silent > timeout).then(|| (e.registration.id.clone(), e.session, silent))
            })
            .collect()
    }

    /// Assigns `needed` free slots to `job` (see [`assign_slots`]) and claims them.
    pub fn allocate(
        &mut self,
        job: JobId,
        previous: &BTreeMap<u32, TaskManagerId>,
        needed: u32,
    ) -> Result<Assignment, NotEnoughSlots> {
        let alive: Vec<TaskManagerSlots> = self
            .taskmanagers
            .values()
            .map(|e| TaskManagerSlots {
                id: e.registration.id.clone(),
                total: e.registration.slots,
                free: e
                    .slots
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| s.is_none())
                    .map(|(i, _)| i as u32)
                    .collect(),
            })
            .collect();
        let assignment = assign_slots(previous, &alive, needed)?;
        for (job_slot, s) in assignment.slots.iter().enumerate() {
            let entry = self
                .taskmanagers
                .get_mut(&s.taskmanager)
                .expect("assigned from the live TaskManagers");
            entry.slots[s.slot as usize] = Some(SlotHolder {
                job,
                job_slot: job_slot as u32,
            });
        }
        Ok(assignment)
    }

    /// Frees every slot `job` holds.
    /// Slots `job` could hold now: free ones and its own, over the live TaskManagers.
    pub fn available_slots(&self, job: JobId) -> u32 {
        self.taskmanagers
            .values()
            .flat_map(|e| e.slots.iter())
            .filter(|s| s.is_none_or(|h| h.job == job))
            .count() as u32
    }

    /// Frees every slot `job` holds.
    pub fn release_job(&mut self, job: JobId) {
        for e in self.taskmanagers.values_mut() {
            for s in &mut e.slots {
                if s.is_some_and(|h| h.job == job) {
                    *s = None;
                }
            }
        }
    }

    /// Queues `message` for `id`. False when `id` is not live (its loss is reported apart).
    pub fn send(&self, id: &TaskManagerId, message: Kind) -> bool {
        match self.taskmanagers.get(id) {
            Some(e) => e
                .outbox
                .send(Ok(JobManagerMessage {
                    kind: Some(message),
                }))
                .is_ok(),
            None => false,
        }
    }

    /// The data address of live TaskManager `id`.
    /// The process id `id` registered with, if it is registered.
    pub fn pid(&self, id: &TaskManagerId) -> Option<u32> {
        self.taskmanagers.get(id).map(|e| e.registration.pid)
    }

    pub fn data_address(&self, id: &TaskManagerId) -> Option<&str> {
        self.taskmanagers
            .get(id)
            .map(|e| e.registration.data_address.as_str())
    }

    /// Sends `message` to every live TaskManager (e.g. a `CancelAttempt` for a job whose
    /// JobMaster died).
    pub fn broadcast(&self, message: Kind) {
        for e in self.taskmanagers.values() {
            let _ = e.outbox.send(Ok(JobManagerMessage {
                kind: Some(message.clone()),
            }));
        }
    }

    /// Shutting down: refuses registrations from now on, sends `message` (a `Shutdown`) to
    /// every TaskManager and closes every control stream.
    pub fn close_all(&mut self, message: Kind) {
        self.closed = true;
        for (_, e) in std::mem::take(&mut self.taskmanagers) {
            let _ = e.outbox.send(Ok(JobManagerMessage {
                kind: Some(message.clone()),
            }));
            e.kill.notify_one();
        }
    }

    /// The live TaskManagers.
    pub fn ids(&self) -> Vec<TaskManagerId> {
        self.taskmanagers.keys().cloned().collect()
    }

    /// Live TaskManagers, their slots total and free.
    pub fn slot_counts(&self) -> (u32, u32, u32) {
        let tms = self.taskmanagers.len() as u32;
        let total = self
            .taskmanagers
            .values()
            .map(|e| e.slots.len() as u32)
            .sum();
        let free = self
            .taskmanagers
            .values()
            .map(|e| e.slots.iter().filter(|s| s.is_none()).count() as u32)
            .sum();
        (tms, total, free)
    }

    /// `/taskmanagers`.
    pub fn view(&self, now_ms: u64) -> TaskManagersView {
        let now = Instant::now();
        TaskManagersView {
            taskmanagers: self
                .taskmanagers
                .values()
                .map(|e| TaskManagerInfo {
                    id: e.registration.id.to_string(),
                    data_address: e.registration.data_address.clone(),
                    metrics_address: e.registration.metrics_address.map(|a| a.to_string()),
                    pid: e.registration.pid,
                    registered_ms: e.registered_ms,
                    uptime_ms: now_ms.saturating_sub(e.registered_ms),
                    last_heartbeat_age_ms: now.saturating_duration_since(e.last_seen).as_millis()
                        as u64,
                    slots_total: e.slots.len() as u32,
                    slots_free: e.slots.iter().filter(|s| s.is_none()).count() as u32,
                    slots_used: e
                        .slots
                        .iter()
                        .enumerate()
                        .filter_map(|(i, s)| {
                            s.map(|h| SlotUse {
                                slot: i as u32,
                                job: h.job.to_string(),
                                job_slot: h.job_slot,
                            })
                        })
                        .collect(),
                })
                .collect(),
            lost: self
                .lost
                .iter()
                .rev()
                .map(|l| LostTaskManagerInfo {
                    id: l.id.to_string(),
                    data_address: l.data_address.clone(),
                    pid: l.pid,
                    detected_ms: l.detected_ms,
                    last_heartbeat_ms: l.last_heartbeat_ms,
                    reason: l.reason.clone(),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_proto::v1::Registered;

    fn registration(id: &str, slots: u32) -> Registration {
        Registration {
            id: TaskManagerId::new(id).unwrap(),
            slots,
            data_address: format!("127.0.0.1:{}", 7000 + slots),
            pid: 1,
            metrics_address: None,
        }
    }

    fn register(
        rm: &mut ResourceManager,
        id: &str,
        slots: u32,
    ) -> (
        u64,
        mpsc::UnboundedReceiver<Result<JobManagerMessage, tonic::Status>>,
    ) {
        let (tx, rx) = mpsc::unbounded_channel();
        let first = JobManagerMessage {
            kind: Some(Kind::Registered(Registered::default())),
        };
        let s = rm
            .register(
                registration(id, slots),
                tx,
                Arc::new(Notify::new()),
                first,
                0,
            )
            .unwrap();
        (s, rx)
    }

    #[test]
    fn a_live_id_is_refused_and_the_reason_names_it() {
        let mut rm = ResourceManager::default();
        let (_s, _rx) = register(&mut rm, "tm-1", 2);
        let (tx, _rx2) = mpsc::unbounded_channel();
        let e = rm
            .register(
                registration("tm-1", 2),
                tx,
                Arc::new(Notify::new()),
                JobManagerMessage::default(),
                0,
            )
            .unwrap_err();
        assert!(e.contains("'tm-1'"), "{e}");
    }

    #[test]
    fn losing_a_taskmanager_frees_its_slots_and_names_the_jobs_there() {
        let mut rm = ResourceManager::default();
        let (s1, _rx1) = register(&mut rm, "tm-1", 1);
        let (_s2, _rx2) = register(&mut rm, "tm-2", 1);
        let job = JobId(7);
        let a = rm.allocate(job, &BTreeMap::new(), 2).unwrap();
        assert_eq!(a.slots.len(), 2);
        assert_eq!(rm.slot_counts(), (2, 2, 0));
        // A stale session does not count.
        let id = TaskManagerId::new("tm-1").unwrap();
        assert!(rm.mark_lost(&id, Some(s1 + 100), "x".into(), 5).is_none());
        let lost = rm.mark_lost(&id, Some(s1), "gone".into(), 5).unwrap();
        assert_eq!(lost.jobs, BTreeSet::from([job]));
        assert_eq!(rm.slot_counts(), (1, 1, 0));
        rm.release_job(job);
        assert_eq!(rm.slot_counts(), (1, 1, 1));
        assert_eq!(rm.view(10).lost.len(), 1);
    }

    #[test]
    fn registered_is_the_first_message_of_the_outbox() {
        let mut rm = ResourceManager::default();
        let (_s, mut rx) = register(&mut rm, "tm-1", 1);
        let m = rx.try_recv().unwrap().unwrap();
        assert!(matches!(m.kind, Some(Kind::Registered(_))));
    }
}
