//! Failover orderings against a fake cluster that implements the production [`TaskManagers`]
//! trait: the real JobMaster runs on its own thread; the test plays the TaskManagers by reading
//! what the JobMaster sent and answering through its inbox.

use super::*;
use crate::recovery::tests::two_vertex_plan;
use crate::slots::{assign_slots, NotEnoughSlots, TaskManagerSlots};
use std::sync::MutexGuard;
use weir_proto::v1::{TaskKey, TaskStateUpdate};

const WAIT: Duration = Duration::from_secs(10);

#[derive(Default)]
struct FakeState {
    /// Live TaskManagers: id → (slots, the job slots each of its slots holds).
    taskmanagers: BTreeMap<TaskManagerId, Vec<Option<u32>>>,
    /// Every message sent, in order.
    sent: Vec<(TaskManagerId, Down)>,
}

#[derive(Default)]
struct FakeCluster(Mutex<FakeState>);

impl FakeCluster {
    fn with(tms: &[(&str, u32)]) -> Arc<Self> {
        let fake = Self::default();
        for (id, slots) in tms {
            fake.state()
                .taskmanagers
                .insert(tm(id), vec![None; *slots as usize]);
        }
        Arc::new(fake)
    }

    fn state(&self) -> MutexGuard<'_, FakeState> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn remove(&self, id: &str) {
        self.state().taskmanagers.remove(&tm(id));
    }

    /// `DeployTask`s of `attempt`: (TaskManager, task).
    fn deploys(&self, attempt: u32) -> Vec<(TaskManagerId, TaskKey)> {
        self.state()
            .sent
            .iter()
            .filter_map(|(to, m)| match m {
                Down::Deploy(d) => d
                    .task
                    .clone()
                    .filter(|k| k.attempt == attempt)
                    .map(|k| (to.clone(), k)),
                _ => None,
            })
            .collect()
    }

    fn cancels(&self, attempt: u32) -> Vec<TaskManagerId> {
        self.state()
            .sent
            .iter()
            .filter_map(|(to, m)| match m {
                Down::Cancel(c) if c.attempt == attempt => Some(to.clone()),
                _ => None,
            })
            .collect()
    }
}

impl TaskManagers for FakeCluster {
    fn allocate(
        &self,
        _job: JobId,
        previous: &BTreeMap<u32, TaskManagerId>,
        needed: u32,
    ) -> Result<Assignment, NotEnoughSlots> {
        let mut s = self.state();
        let alive: Vec<TaskManagerSlots> = s
            .taskmanagers
            .iter()
            .map(|(id, slots)| TaskManagerSlots {
                id: id.clone(),
                total: slots.len() as u32,
                free: (0..slots.len() as u32)
                    .filter(|i| slots[*i as usize].is_none())
                    .collect(),
            })
            .collect();
        let a = assign_slots(previous, &alive, needed)?;
        for (job_slot, slot) in a.slots.iter().enumerate() {
            s.taskmanagers.get_mut(&slot.taskmanager).expect("alive")[slot.slot as usize] =
                Some(job_slot as u32);
        }
        Ok(a)
    }

    fn release_job(&self, _job: JobId) {
        for slots in self.state().taskmanagers.values_mut() {
            slots.iter_mut().for_each(|s| *s = None);
        }
    }

    fn available_slots(&self, _job: JobId) -> u32 {
        // One job per fake cluster: every live slot is available to it.
        self.state()
            .taskmanagers
            .values()
            .map(|s| s.len() as u32)
            .sum()
    }

    fn send(&self, to: &TaskManagerId, message: Down) -> bool {
        let mut s = self.state();
        if !s.taskmanagers.contains_key(to) {
            return false;
        }
        s.sent.push((to.clone(), message));
        true
    }

    fn data_address(&self, to: &TaskManagerId) -> Option<String> {
        self.state()
            .taskmanagers
            .contains_key(to)
            .then(|| format!("{to}:1"))
    }

    fn is_shutting_down(&self) -> bool {
        false
    }
}

fn tm(id: &str) -> TaskManagerId {
    TaskManagerId::new(id).expect("valid id")
}

struct Harness {
    job: JobId,
    cluster: Arc<FakeCluster>,
    inbox: Sender<JobMasterMsg>,
    status: Arc<Mutex<JobStatus>>,
    thread: Option<std::thread::JoinHandle<()>>,
    _runtime: tokio::runtime::Runtime,
}

impl Harness {
    fn start(cluster: Arc<FakeCluster>, restart: RestartStrategy) -> Self {
        Self::start_with(cluster, restart, None)
    }

    /// With checkpoints every 50 ms on `store`.
    fn checkpointed(cluster: Arc<FakeCluster>, restart: RestartStrategy, store: Store) -> Self {
        Self::start_with(cluster, restart, Some(store))
    }

    fn start_with(
        cluster: Arc<FakeCluster>,
        restart: RestartStrategy,
        store: Option<Store>,
    ) -> Self {
        // Multi-threaded, as the JobManager's: spawned storage calls run on their own.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let job = JobId(0xfa11);
        let plan = two_vertex_plan(2);
        let spec = JobSpec {
            job_id: job.to_string(),
            job_name: "t".into(),
            ..Default::default()
        };
        let checkpointing = store.map(|store| {
            let config = weir_checkpoint::CheckpointConfig {
                interval_ms: 50,
                ..Default::default()
            };
            let tasks = plan
                .execution
                .subtasks
                .iter()
                .map(|s| TaskId::new(s.vertex, s.subtask));
            Checkpointing {
                coordinator: Coordinator::new(job, plan.job.max_parallelism, config, tasks)
                    .expect("coordinator"),
                store,
                paths: CheckpointPaths::new(job),
                history: Vec::new(),
                deletions: Vec::new(),
                lease: None,
                lease_keeper: None,
                metadata_sink: Checkpointing::no_sink(),
                fence: weir_coordination::driver::no_fence(),
                lease_duration: crate::dispatcher::LEASE_DURATION,
                writing: BTreeSet::new(),
                savepoints: BTreeMap::new(),
                stop: None,
                final_kind: weir_checkpoint::CheckpointKind::Checkpoint,
                savepoint_dir: None,
                s3: weir_storage::S3Options::default(),
                pointer: None,
                pointer_sent: None,
            }
        });
        let status = Arc::new(Mutex::new(initial_status(
            job,
            &spec,
            &plan,
            checkpointing.as_ref(),
            &restart,
        )));
        let (tx, rx) = crossbeam_channel::unbounded();
        let master = JobMaster::new(JobMasterSetup {
            job,
            spec,
            plan,
            restart,
            checkpointing,
            status: status.clone(),
            inbox: rx,
            to_self: tx.clone(),
            cluster: cluster.clone(),
            runtime: runtime.handle().clone(),
            slot_request_timeout: Duration::from_secs(2),
            cancel_timeout: Duration::from_secs(2),
            external: None,
            adaptive: None,
        });
        let thread = std::thread::spawn(move || master.run());
        Self {
            job,
            cluster,
            inbox: tx,
            status,
            thread: Some(thread),
            _runtime: runtime,
        }
    }

    fn status(&self) -> JobStatus {
        lock(&self.status).clone()
    }

    fn until<T>(&self, what: &str, mut f: impl FnMut(&Self) -> Option<T>) -> T {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(t) = f(self) {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; status {:?}",
                self.status().details
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Waits for every `DeployTask` of `attempt` (4 tasks).
    fn deployed(&self, attempt: u32) -> Vec<(TaskManagerId, TaskKey)> {
        self.until(&format!("attempt {attempt} deployed"), |h| {
            let d = h.cluster.deploys(attempt);
            (d.len() == 4).then_some(d)
        })
    }

    fn report(&self, from: &TaskManagerId, key: &TaskKey, state: ExecutionState, error: &str) {
        let _ = self.inbox.send(JobMasterMsg::FromTaskManager {
            from: from.clone(),
            kind: Up::TaskState(TaskStateUpdate {
                task: Some(key.clone()),
                state: state as i32,
                error: error.into(),
                secondary: false,
                damaged_checkpoint: None,
                incompatible_state: false,
            }),
        });
    }

    fn all(&self, tasks: &[(TaskManagerId, TaskKey)], state: ExecutionState) {
        for (from, key) in tasks {
            self.report(from, key, state, "");
        }
    }

    /// Acknowledges checkpoint `id` for every task (stateless snapshots).
    fn ack_all(&self, tasks: &[(TaskManagerId, TaskKey)], id: u64) {
        for (from, key) in tasks {
            let _ = self.inbox.send(JobMasterMsg::FromTaskManager {
                from: from.clone(),
                kind: Up::Ack(CheckpointAck {
                    task: Some(key.clone()),
                    checkpoint_id: id,
                    snapshot_json: br#"{"operators":{}}"#.to_vec(),
                    metrics: None,
                }),
            });
        }
    }

    /// The first checkpoint id triggered in `attempt`.
    fn triggered(&self, attempt: u32) -> u64 {
        self.until("a checkpoint trigger", |h| {
            h.cluster.state().sent.iter().find_map(|(_, m)| match m {
                Down::Trigger(t) if t.task.as_ref().is_some_and(|k| k.attempt == attempt) => {
                    Some(t.checkpoint_id)
                }
                _ => None,
            })
        })
    }

    fn lose(&self, id: &str) {
        self.cluster.remove(id);
        let _ = self
            .inbox
            .send(JobMasterMsg::TaskManagerLost(Arc::new(LostTaskManager {
                id: tm(id),
                data_address: format!("{id}:1"),
                pid: 1,
                detected_ms: now_ms(),
                last_heartbeat_ms: now_ms(),
                reason: "killed by the test".into(),
                jobs: BTreeSet::from([self.job]),
            })));
    }

    /// Waits until recovery `n` (from 1) is `status`.
    fn recovery_is(&self, n: usize, status: RecoveryStatus) {
        self.until(&format!("recovery {n} {status:?}"), |h| {
            (h.status().recoveries.get(n - 1).map(|r| r.status) == Some(status)).then_some(())
        });
    }

    fn state_is(&self, state: JobState) {
        self.until(&format!("{state:?}"), |h| {
            (h.status().details.state == state).then_some(())
        });
    }

    fn end(mut self) -> JobStatus {
        let _ = self.inbox.send(JobMasterMsg::Cancel);
        let thread = self.thread.take().expect("running");
        let deadline = Instant::now() + WAIT;
        while !thread.is_finished() {
            // Whatever is still live confirms its cancellation.
            let attempt = self.status().details.attempt;
            let live = self.cluster.deploys(attempt);
            self.all(&live, ExecutionState::Canceled);
            assert!(Instant::now() < deadline, "the JobMaster did not end");
            std::thread::sleep(Duration::from_millis(20));
        }
        thread.join().expect("the JobMaster did not panic");
        self.status()
    }
}

fn on(tasks: &[(TaskManagerId, TaskKey)], id: &str) -> Vec<(TaskManagerId, TaskKey)> {
    tasks
        .iter()
        .filter(|(t, _)| *t == tm(id))
        .cloned()
        .collect()
}

fn restarts(n: u32) -> RestartStrategy {
    RestartStrategy::FixedDelay {
        attempts: n,
        delay_ms: 0,
    }
}

#[test]
fn a_loss_during_deploy_cancels_the_attempt_and_redeploys_everything_on_the_survivor() {
    let h = Harness::start(FakeCluster::with(&[("tm-a", 2), ("tm-b", 2)]), restarts(3));
    let first = h.deployed(0);
    let lost = first[0].0.to_string();
    let survivor = if lost == "tm-a" { "tm-b" } else { "tm-a" };
    // Before any task runs, the TaskManager of the first deployment dies.
    h.lose(&lost);
    h.until("CancelAttempt to the survivor", |h| {
        h.cluster.cancels(0).contains(&tm(survivor)).then_some(())
    });
    h.all(&on(&first, survivor), ExecutionState::Canceled);
    let second = h.deployed(1);
    assert!(second.iter().all(|(t, _)| *t == tm(survivor)), "{second:?}");
    h.all(&second, ExecutionState::Running);
    h.recovery_is(1, RecoveryStatus::Completed);
    let s = h.status();
    assert_eq!(s.details.state, JobState::Running);
    assert_eq!(s.recoveries.len(), 1);
    assert!(
        s.recoveries[0].cause.contains(&lost),
        "{}",
        s.recoveries[0].cause
    );
    assert_eq!(s.recoveries[0].status, RecoveryStatus::Completed);
    h.end();
}

#[test]
fn a_loss_while_cancelling_ends_the_job_cancelled_without_a_restart() {
    let h = Harness::start(FakeCluster::with(&[("tm-a", 1), ("tm-b", 1)]), restarts(3));
    let first = h.deployed(0);
    h.all(&first, ExecutionState::Running);
    h.state_is(JobState::Running);
    let _ = h.inbox.send(JobMasterMsg::Cancel);
    h.state_is(JobState::Canceling);
    h.lose("tm-a");
    h.all(&on(&first, "tm-b"), ExecutionState::Canceled);
    h.state_is(JobState::Canceled);
    assert!(h.cluster.deploys(1).is_empty(), "no second attempt");
    let s = h.end();
    assert_eq!(s.details.restarts, 0);
    assert!(s.recoveries.is_empty(), "{:?}", s.recoveries);
}

#[test]
fn a_second_loss_during_recovery_supersedes_the_first_recovery() {
    let h = Harness::start(
        FakeCluster::with(&[("tm-a", 2), ("tm-b", 2), ("tm-c", 2)]),
        restarts(5),
    );
    let first = h.deployed(0);
    h.all(&first, ExecutionState::Running);
    h.state_is(JobState::Running);
    let lost = first[0].0.to_string();
    h.lose(&lost);
    for (t, k) in first.iter().filter(|(t, _)| t.to_string() != lost) {
        h.report(t, k, ExecutionState::Canceled, "");
    }
    let second = h.deployed(1);
    // Recovering (nothing runs yet), and another TaskManager of the new attempt dies.
    let lost_again = second[0].0.to_string();
    h.lose(&lost_again);
    for (t, k) in second.iter().filter(|(t, _)| t.to_string() != lost_again) {
        h.report(t, k, ExecutionState::Canceled, "");
    }
    let third = h.deployed(2);
    h.all(&third, ExecutionState::Running);
    h.recovery_is(2, RecoveryStatus::Completed);
    let s = h.status();
    assert_eq!(s.recoveries.len(), 2, "{:?}", s.recoveries);
    assert_eq!(s.recoveries[0].status, RecoveryStatus::Superseded);
    assert_eq!(s.recoveries[1].status, RecoveryStatus::Completed);
    assert!(
        s.recoveries[1].cause.contains(&lost_again),
        "{}",
        s.recoveries[1].cause
    );
    h.end();
}

#[test]
fn late_reports_from_an_old_attempt_or_from_a_taskmanager_without_the_task_change_nothing() {
    let h = Harness::start(FakeCluster::with(&[("tm-a", 1), ("tm-b", 1)]), restarts(3));
    let first = h.deployed(0);
    h.all(&first, ExecutionState::Running);
    let (t, k) = first[0].clone();
    h.report(&t, &k, ExecutionState::Failed, "boom");
    h.all(&first[1..], ExecutionState::Canceled);
    let second = h.deployed(1);
    h.all(&second, ExecutionState::Running);
    h.state_is(JobState::Running);
    // Attempt 0 speaks again: a failure, an end of input.
    for (t, k) in &first {
        h.report(t, k, ExecutionState::Failed, "late failure of attempt 0");
        let _ = h.inbox.send(JobMasterMsg::FromTaskManager {
            from: t.clone(),
            kind: Up::EndOfInput(weir_proto::v1::TaskEndOfInput {
                task: Some(k.clone()),
            }),
        });
    }
    // A TaskManager reports a failure of a task that runs elsewhere, and of an unknown vertex.
    let (runs_on, key) = second[0].clone();
    let other = if runs_on == tm("tm-a") {
        tm("tm-b")
    } else {
        tm("tm-a")
    };
    h.report(&other, &key, ExecutionState::Failed, "forged");
    let unknown = TaskKey {
        vertex: 99,
        ..key.clone()
    };
    h.report(&runs_on, &unknown, ExecutionState::Failed, "unknown vertex");
    std::thread::sleep(Duration::from_millis(200));
    let s = h.status();
    assert_eq!(s.details.state, JobState::Running);
    assert_eq!(s.details.attempt, 1);
    assert_eq!(s.recoveries.len(), 1, "{:?}", s.recoveries);
    assert!(h.cluster.deploys(2).is_empty(), "no third attempt");
    h.end();
}

/// A store whose `_metadata` puts hang for `delay`.
fn slow_metadata_store(delay: Duration) -> Store {
    let (store, faults) = weir_storage::FaultyStore::wrap(&Store::in_memory());
    faults.delay_puts_matching(|p| p.as_ref().ends_with("_metadata"), delay);
    store
}

/// A running job on one TaskManager whose first checkpoint every task acknowledged, its
/// `_metadata` write now hanging for `delay`: the harness, the tasks and the checkpoint id.
fn acked_while_metadata_hangs(delay: Duration) -> (Harness, Vec<(TaskManagerId, TaskKey)>, u64) {
    let h = Harness::checkpointed(
        FakeCluster::with(&[("tm-a", 2)]),
        restarts(3),
        slow_metadata_store(delay),
    );
    let first = h.deployed(0);
    h.all(&first, ExecutionState::Running);
    let id = h.triggered(0);
    h.ack_all(&first, id);
    (h, first, id)
}

#[test]
fn a_hung_metadata_write_stalls_neither_failover_nor_the_choice_of_the_checkpoint_restored() {
    let delay = Duration::from_millis(1500);
    let (h, first, id) = acked_while_metadata_hangs(delay);
    // Every ack is in: `_metadata` is being written, slowly. A task fails meanwhile.
    std::thread::sleep(Duration::from_millis(100));
    let failed_at = Instant::now();
    h.report(&first[0].0, &first[0].1, ExecutionState::Failed, "boom");
    h.until("CancelAttempt while _metadata hangs", |h| {
        (!h.cluster.cancels(0).is_empty()).then_some(())
    });
    assert!(
        failed_at.elapsed() < delay / 2,
        "the cancel waited for the store: {:?}",
        failed_at.elapsed()
    );
    h.all(&first[1..], ExecutionState::Canceled);
    // The next attempt restores the checkpoint whose `_metadata` landed late.
    let second = h.deployed(1);
    let restored: Vec<u64> = h
        .cluster
        .state()
        .sent
        .iter()
        .filter_map(|(_, m)| match m {
            Down::Deploy(d) if d.task.as_ref().is_some_and(|k| k.attempt == 1) => {
                serde_json::from_slice::<serde_json::Value>(&d.restore_json)
                    .ok()
                    .and_then(|v| v["checkpoint"].as_u64())
            }
            _ => None,
        })
        .collect();
    assert_eq!(restored, vec![id; second.len()], "attempt 1 restores {id}");
    h.end();
}

#[test]
fn a_cancel_while_metadata_is_written_ends_the_job_at_once() {
    let delay = Duration::from_millis(1500);
    let (h, first, id) = acked_while_metadata_hangs(delay);
    std::thread::sleep(Duration::from_millis(100));
    let asked = Instant::now();
    let _ = h.inbox.send(JobMasterMsg::Cancel);
    h.state_is(JobState::Canceling);
    h.all(&first, ExecutionState::Canceled);
    h.state_is(JobState::Canceled);
    assert!(
        asked.elapsed() < delay / 2,
        "the cancel waited for the store: {:?}",
        asked.elapsed()
    );
    // The write still settles before the JobMaster lets go of the folder.
    let s = h.end();
    assert!(
        s.checkpoints
            .iter()
            .any(|r| r.id.0 == id && r.status == CheckpointStatus::Completed),
        "{:?}",
        s.checkpoints
    );
}

#[test]
fn attempt_metrics_add_records_over_restarts_keep_the_last_state_size_and_ignore_strangers() {
    let h = Harness::start(FakeCluster::with(&[("tm-a", 2)]), restarts(3));
    let metrics = |attempt: u32, records: u64, state: u64| JobMasterMsg::FromTaskManager {
        from: tm("tm-a"),
        kind: Up::AttemptMetrics(AttemptMetrics {
            job_id: h.job.to_string(),
            attempt,
            source_records: records,
            sink_records: records / 2,
            state_bytes: state,
            sync_pauses_us: vec![7; 3],
            subtasks: vec![],
        }),
    };
    let first = h.deployed(0);
    h.all(&first, ExecutionState::Running);
    let _ = h.inbox.send(metrics(0, 100, 10));
    // A TaskManager without tasks of this job reports too: dropped.
    let _ = h.inbox.send(JobMasterMsg::FromTaskManager {
        from: tm("tm-x"),
        kind: Up::AttemptMetrics(AttemptMetrics {
            job_id: h.job.to_string(),
            attempt: 0,
            source_records: 1_000_000,
            ..Default::default()
        }),
    });
    h.report(&first[0].0, &first[0].1, ExecutionState::Failed, "boom");
    h.all(&first[1..], ExecutionState::Canceled);
    let second = h.deployed(1);
    h.all(&second, ExecutionState::Running);
    let _ = h.inbox.send(metrics(1, 40, 30));
    // A late report of attempt 0 changes nothing.
    let _ = h.inbox.send(metrics(0, 5_000, 99));
    let m = h.until("both attempts' metrics", |h| {
        let s = h.status();
        (s.details.metrics.source_records >= 140).then_some(s)
    });
    std::thread::sleep(Duration::from_millis(100));
    let s = h.status();
    assert_eq!(
        s.details.metrics.source_records, 140,
        "{:?}",
        m.details.metrics
    );
    assert_eq!(s.details.metrics.sink_records, 70);
    assert_eq!(
        s.details.metrics.state_bytes, 30,
        "the last attempt's state"
    );
    assert_eq!(s.sync_pauses_us, vec![7; 6]);
    h.end();
}

#[test]
fn subtask_reports_reach_the_vertex_figures_and_ones_naming_a_subtask_not_run_there_are_dropped() {
    let h = Harness::start(FakeCluster::with(&[("tm-a", 2)]), restarts(3));
    let report = |from: &str, subtasks: Vec<weir_proto::v1::SubtaskIoReport>| {
        JobMasterMsg::FromTaskManager {
            from: tm(from),
            kind: Up::AttemptMetrics(AttemptMetrics {
                job_id: h.job.to_string(),
                attempt: 0,
                subtasks,
                ..Default::default()
            }),
        }
    };
    let io = |vertex: u32, subtask: u32, records_out: u64| weir_proto::v1::SubtaskIoReport {
        vertex,
        subtask,
        records_out,
        ..Default::default()
    };
    let first = h.deployed(0);
    h.all(&first, ExecutionState::Running);
    let _ = h.inbox.send(report("tm-a", vec![io(0, 0, 10)]));
    h.until("the vertex's records", |h| {
        (h.status().details.vertices[0].metrics.records_out == 10).then_some(())
    });
    // A vertex the job lacks, a subtask twice, a TaskManager that runs none: all dropped.
    let _ = h
        .inbox
        .send(report("tm-a", vec![io(0, 0, 50), io(99, 0, 50)]));
    let _ = h
        .inbox
        .send(report("tm-a", vec![io(0, 0, 70), io(0, 0, 70)]));
    let _ = h.inbox.send(report("tm-x", vec![io(0, 0, 90)]));
    let _ = h.inbox.send(report("tm-a", vec![io(0, 0, 20)]));
    let s = h.until("the next good report", |h| {
        let s = h.status();
        (s.details.vertices[0].metrics.records_out != 10).then_some(s)
    });
    assert_eq!(s.details.vertices[0].metrics.records_out, 20);
    assert_eq!(s.details.vertices[0].subtasks[0].records_out, 20);
    h.end();
}
