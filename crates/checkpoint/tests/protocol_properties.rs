//! Property tests over orderings: acks (with duplicates and late ones), and random sequences of
//! triggers, acks, declines, timeouts, metadata outcomes and failovers. Plus damage to encoded
//! metadata.

use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use weir_checkpoint::{
    AckResult, Action, CheckpointConfig, CheckpointFailureReason, CheckpointKind,
    CheckpointMetadata, Coordinator, FileHandle, OperatorState, OperatorSubtaskState,
    PendingCheckpoint, SavepointFormat, TaskAckMetrics, TaskId, TaskStateSnapshot,
};
use weir_types::{CheckpointId, JobId, OperatorUid, SubtaskIndex, VertexId};

fn task(i: usize) -> TaskId {
    TaskId::new(VertexId((i % 2) as u32), SubtaskIndex((i / 2) as u32))
}

fn snapshot(files: Vec<FileHandle>) -> TaskStateSnapshot {
    let mut s = TaskStateSnapshot::default();
    s.operators.insert(
        OperatorUid::new("op").expect("valid uid"),
        OperatorSubtaskState {
            files,
            inline: Some(vec![1]),
            finished: false,
        },
    );
    s
}

fn file(path: String, shared: bool) -> FileHandle {
    FileHandle::new(path, 10, 0, shared).expect("valid path")
}

// ---------------------------------------------------------------------------------------------
// Ack orderings on one pending checkpoint, and late acks at the coordinator.
// ---------------------------------------------------------------------------------------------

/// Task indices `0..n` each at least once, some repeated, some foreign (`>= n`), shuffled.
fn ack_orders() -> impl Strategy<Value = (usize, Vec<usize>)> {
    (1usize..6)
        .prop_flat_map(|n| {
            (
                Just(n),
                prop::collection::vec(0..n, 0..6),
                prop::collection::vec(n..n + 3, 0..3),
            )
        })
        .prop_flat_map(|(n, dups, foreign)| {
            let mut all: Vec<usize> = (0..n).collect();
            all.extend(dups);
            all.extend(foreign);
            (Just(n), Just(all).prop_shuffle())
        })
}

proptest! {
    #[test]
    fn any_ack_order_completes_exactly_when_every_task_acked_once((n, order) in ack_orders()) {
        let mut p = PendingCheckpoint::new(
            CheckpointId(1),
            CheckpointKind::Checkpoint,
            0,
            (0..n).map(task),
        );
        let mut seen = BTreeSet::new();
        for t in order {
            let expected = if t >= n {
                AckResult::Unknown
            } else if seen.insert(t) {
                AckResult::Success
            } else {
                AckResult::Duplicate
            };
            let got = p.acknowledge(task(t), snapshot(vec![]), TaskAckMetrics::default());
            prop_assert_eq!(got, expected);
            prop_assert_eq!(p.is_fully_acknowledged(), seen.len() == n);
        }
        prop_assert!(p.is_fully_acknowledged());
    }

    #[test]
    fn late_acks_after_abort_or_completion_are_discarded(
        (n, order) in ack_orders(),
        abort_after in prop::option::of(0usize..8),
    ) {
        let cfg = CheckpointConfig { tolerable_failures: 100, ..CheckpointConfig::default() };
        let mut c = Coordinator::new(JobId(1), 128, cfg, (0..n).map(task)).expect("coordinator");
        c.trigger(0, CheckpointKind::Checkpoint).expect("trigger");
        let id = CheckpointId(1);
        let mut seen = BTreeSet::new();
        let mut aborted = false;
        let mut writes = 0;
        for (i, t) in order.into_iter().enumerate() {
            if abort_after == Some(i) && writes == 0 {
                let _ = c.on_decline(id, task(0), "test".into());
                aborted = true;
            }
            let fresh = format!("chk-1/{i}");
            let out = c.on_ack(1, id, task(t), snapshot(vec![file(fresh.clone(), false)]),
                TaskAckMetrics::default());
            let expected = if aborted {
                AckResult::Discarded
            } else if t >= n {
                AckResult::Unknown
            } else if seen.insert(t) {
                AckResult::Success
            } else {
                AckResult::Duplicate
            };
            prop_assert_eq!(out.result, expected);
            writes += out.actions.iter()
                .filter(|a| matches!(a, Action::WriteMetadata { .. }))
                .count();
            // An unused ack's fresh upload is deleted, except for an unknown sender.
            let deleted = out.actions.iter().any(|a| matches!(a,
                Action::DeleteFiles { paths } if paths.contains(&fresh)));
            prop_assert_eq!(deleted, matches!(expected, AckResult::Duplicate | AckResult::Discarded));
        }
        prop_assert_eq!(writes, usize::from(!aborted));
        if !aborted {
            c.on_metadata_written(2, id).expect("write confirmed");
            let late = c.on_ack(3, id, task(0), snapshot(vec![]), TaskAckMetrics::default());
            prop_assert_eq!(late.result, AckResult::Discarded);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Random event sequences against the coordinator.
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Event {
    Advance(u64),
    TriggerCheckpoint,
    TriggerSavepoint,
    /// A task takes its snapshot (chooses its incremental base) now and acks later.
    Snapshot {
        pick: usize,
        task: usize,
    },
    Ack {
        pick: usize,
        task: usize,
    },
    LateAck {
        pick: usize,
        task: usize,
    },
    Decline {
        pick: usize,
        task: usize,
    },
    ConfirmWrite(usize),
    FailWrite(usize),
    Failover,
}

fn events() -> impl Strategy<Value = Event> {
    prop_oneof![
        3 => (1u64..40).prop_map(Event::Advance),
        3 => Just(Event::TriggerCheckpoint),
        1 => Just(Event::TriggerSavepoint),
        4 => (0usize..8, 0usize..4).prop_map(|(pick, task)| Event::Snapshot { pick, task }),
        8 => (0usize..8, 0usize..4).prop_map(|(pick, task)| Event::Ack { pick, task }),
        1 => (0usize..32, 0usize..4).prop_map(|(pick, task)| Event::LateAck { pick, task }),
        1 => (0usize..8, 0usize..4).prop_map(|(pick, task)| Event::Decline { pick, task }),
        4 => (0usize..8).prop_map(Event::ConfirmWrite),
        1 => (0usize..8).prop_map(Event::FailWrite),
        1 => Just(Event::Failover),
    ]
}

fn configs() -> impl Strategy<Value = CheckpointConfig> {
    (10u64..60, 20u64..200, 0u64..30, 1u32..4, 0u32..4, 1u32..4).prop_map(
        |(
            interval_ms,
            timeout_ms,
            min_pause_ms,
            max_concurrent,
            tolerable_failures,
            num_retained,
        )| {
            CheckpointConfig {
                interval_ms,
                timeout_ms,
                min_pause_ms,
                max_concurrent,
                tolerable_failures,
                num_retained,
                ..CheckpointConfig::default()
            }
        },
    )
}

/// Everything the harness has observed; checks every invariant on each batch of actions.
#[derive(Default)]
struct Observer {
    last_triggered: Option<CheckpointId>,
    kinds: BTreeMap<CheckpointId, CheckpointKind>,
    writes_requested: BTreeSet<CheckpointId>,
    notified_complete: BTreeSet<CheckpointId>,
    aborted: BTreeSet<CheckpointId>,
    deleted_ever: BTreeSet<String>,
    completed_savepoints: BTreeSet<CheckpointId>,
}

fn retained_paths(c: &Coordinator) -> BTreeSet<String> {
    c.store()
        .all()
        .into_iter()
        .flat_map(|cp| {
            cp.metadata()
                .files()
                .map(|f| f.path().to_owned())
                .collect::<Vec<_>>()
        })
        .collect()
}

impl Observer {
    fn observe(
        &mut self,
        c: &Coordinator,
        actions: &[Action],
        confirming: Option<CheckpointId>,
    ) -> Result<(), TestCaseError> {
        let retained = retained_paths(c);
        for action in actions {
            match action {
                Action::TriggerSources { id, kind, .. } => {
                    prop_assert!(
                        self.last_triggered < Some(*id),
                        "ids must strictly increase"
                    );
                    self.last_triggered = Some(*id);
                    self.kinds.insert(*id, *kind);
                }
                Action::WriteMetadata { id, metadata } => {
                    prop_assert!(
                        self.writes_requested.insert(*id),
                        "one write per checkpoint"
                    );
                    prop_assert_eq!(metadata.checkpoint_id, *id);
                }
                Action::NotifyComplete { id } => {
                    prop_assert_eq!(confirming, Some(*id), "notify only on its confirmed write");
                    prop_assert!(self.writes_requested.contains(id));
                    prop_assert!(self.notified_complete.insert(*id));
                    prop_assert!(!self.aborted.contains(id));
                    if self.kinds.get(id).is_some_and(|k| k.is_savepoint()) {
                        self.completed_savepoints.insert(*id);
                    }
                }
                Action::NotifyAborted { id, .. } => {
                    prop_assert!(!self.notified_complete.contains(id));
                    prop_assert!(self.aborted.insert(*id));
                }
                Action::DeleteFiles { paths } => {
                    for p in paths {
                        prop_assert!(!retained.contains(p), "deleted {} while retained", p);
                        self.deleted_ever.insert(p.clone());
                    }
                }
                Action::FailJob { .. } => {}
            }
        }
        // At most max-concurrent checkpoints, plus one savepoint (a savepoint does not wait).
        prop_assert!(c.pending().filter(|p| p.kind().is_savepoint()).count() <= 1);
        prop_assert!(c.num_in_progress() <= c.config().max_concurrent as usize + 1);
        let retained_now = retained_paths(c);
        let lost: Vec<_> = retained_now.intersection(&self.deleted_ever).collect();
        prop_assert!(
            lost.is_empty(),
            "retained checkpoints reference deleted files {:?}",
            lost
        );
        for sp in &self.completed_savepoints {
            prop_assert!(c.store().contains(*sp), "savepoint {} was subsumed", sp);
        }
        Ok(())
    }
}

/// What task `t` uploads and reuses for checkpoint `id`: a savepoint copies everything (one
/// exclusive file); a checkpoint reuses its own shared files from the newest completed
/// checkpoint (the only allowed base) and uploads one new shared and one exclusive file.
fn take_snapshot(
    c: &Coordinator,
    obs: &Observer,
    id: CheckpointId,
    t: TaskId,
    upload: u64,
) -> Vec<FileHandle> {
    let kind = obs
        .kinds
        .get(&id)
        .copied()
        .unwrap_or(CheckpointKind::Checkpoint);
    if kind.is_savepoint() {
        return vec![file(format!("sp-{}/{t}-u{upload}", id.get()), false)];
    }
    let mut files = Vec::new();
    if let Some((base, shared)) = c.registry().reusable_base() {
        if base < id {
            let mine = format!("shared/{t}-");
            files.extend(
                shared
                    .iter()
                    .filter(|p| p.starts_with(&mine))
                    .map(|p| file(p.clone(), true)),
            );
        }
    }
    files.push(file(format!("shared/{t}-u{upload}"), true));
    files.push(file(format!("chk-{}/{t}-u{upload}", id.get()), false));
    files
}

const SAVEPOINT: CheckpointKind = CheckpointKind::Savepoint {
    format: SavepointFormat::Native,
};

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_protocol_runs_never_break_the_invariants(
        cfg in configs(),
        num_tasks in 1usize..4,
        script in prop::collection::vec(events(), 1..120),
    ) {
        let tasks: Vec<TaskId> = (0..num_tasks).map(task).collect();
        let mut c = Coordinator::new(JobId(9), 128, cfg, tasks.clone()).expect("coordinator");
        let mut obs = Observer::default();
        let mut now = 0u64;
        let mut uploads = 0u64;
        let mut taken: BTreeMap<(CheckpointId, TaskId), Vec<FileHandle>> = BTreeMap::new();
        for event in script {
            match event {
                Event::Advance(ms) => {
                    now += ms;
                    let actions = c.on_tick(now);
                    obs.observe(&c, &actions, None)?;
                }
                Event::TriggerCheckpoint | Event::TriggerSavepoint => {
                    let kind = if matches!(event, Event::TriggerSavepoint) {
                        SAVEPOINT
                    } else {
                        CheckpointKind::Checkpoint
                    };
                    match c.trigger(now, kind) {
                        Ok(actions) => obs.observe(&c, &actions, None)?,
                        Err(reason) => {
                            let refusal = matches!(reason,
                                CheckpointFailureReason::TooManyConcurrent { .. }
                                | CheckpointFailureReason::MinPauseNotElapsed { .. }
                                | CheckpointFailureReason::SavepointInProgress { .. });
                            prop_assert!(refusal, "unexpected refusal {}", reason);
                        }
                    }
                }
                Event::Snapshot { pick, task: t } => {
                    let ids: Vec<_> = c.pending().map(|p| p.id()).collect();
                    if ids.is_empty() { continue; }
                    let id = ids[pick % ids.len()];
                    let t = tasks[t % tasks.len()];
                    uploads += 1;
                    let files = take_snapshot(&c, &obs, id, t, uploads);
                    taken.entry((id, t)).or_insert(files);
                }
                Event::Ack { pick, task: t } | Event::LateAck { pick, task: t } => {
                    let id = match event {
                        Event::Ack { .. } => {
                            let ids: Vec<_> = c.pending().map(|p| p.id()).collect();
                            if ids.is_empty() { continue; }
                            ids[pick % ids.len()]
                        }
                        _ => CheckpointId(pick as u64 + 1),
                    };
                    let t = tasks[t % tasks.len()];
                    uploads += 1;
                    let files = match taken.remove(&(id, t)) {
                        Some(files) => files,
                        None => take_snapshot(&c, &obs, id, t, uploads),
                    };
                    let paths: Vec<String> = files.iter().map(|f| f.path().to_owned()).collect();
                    let out = c.on_ack(now, id, t, snapshot(files), TaskAckMetrics::default());
                    if out.result == AckResult::Success {
                        // The task followed the rules (reuse only the newest completed
                        // checkpoint's files), so nothing it references may be gone.
                        for p in &paths {
                            prop_assert!(!obs.deleted_ever.contains(p),
                                "{} acked {} referencing deleted {}", t, id, p);
                        }
                    }
                    obs.observe(&c, &out.actions, None)?;
                }
                Event::Decline { pick, task: t } => {
                    let ids: Vec<_> = c.pending().map(|p| p.id()).collect();
                    if ids.is_empty() { continue; }
                    let actions = c.on_decline(ids[pick % ids.len()], tasks[t % tasks.len()],
                        "injected".into());
                    obs.observe(&c, &actions, None)?;
                }
                Event::ConfirmWrite(pick) | Event::FailWrite(pick) => {
                    let ids: Vec<_> = c.metadata_writes_in_flight().collect();
                    if ids.is_empty() { continue; }
                    let id = ids[pick % ids.len()];
                    if matches!(event, Event::ConfirmWrite(_)) {
                        let actions = c.on_metadata_written(now, id).expect("in flight");
                        obs.observe(&c, &actions, Some(id))?;
                    } else {
                        let actions = c.on_metadata_failed(id, "injected".into())
                            .expect("in flight");
                        obs.observe(&c, &actions, None)?;
                    }
                }
                Event::Failover => {
                    let actions = c.on_failover();
                    obs.observe(&c, &actions, None)?;
                    prop_assert_eq!(c.pending().count(), 0);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Metadata encoding.
// ---------------------------------------------------------------------------------------------

fn metadata() -> impl Strategy<Value = CheckpointMetadata> {
    let subtask_state = (
        prop::collection::vec(
            ("[a-z]{1,8}", any::<u64>(), any::<u32>(), any::<bool>()),
            0..4,
        ),
        prop::option::of(prop::collection::vec(any::<u8>(), 0..16)),
    )
        .prop_map(|(files, inline)| OperatorSubtaskState {
            files: files
                .into_iter()
                .map(|(p, size, crc, shared)| {
                    FileHandle::new(format!("shared/{p}"), size, crc, shared).expect("valid")
                })
                .collect(),
            inline,
            finished: false,
        });
    let operator = (
        0u32..4,
        prop::collection::btree_map(0u32..8, subtask_state, 0..3),
    );
    (
        any::<u128>(),
        1u64..u64::MAX,
        any::<bool>(),
        any::<u64>(),
        1u32..32768,
        prop::collection::btree_map("[a-z][a-z0-9_.-]{0,10}", operator, 0..3),
    )
        .prop_map(|(job, id, savepoint, timestamp, max_parallelism, ops)| {
            let mut m = CheckpointMetadata {
                job_id: JobId(job),
                checkpoint_id: CheckpointId(id),
                kind: if savepoint {
                    SAVEPOINT
                } else {
                    CheckpointKind::Checkpoint
                },
                timestamp,
                max_parallelism,
                key_group_hash_version: 1,
                operators: ops
                    .into_iter()
                    .map(|(uid, (vertex, subtasks))| {
                        (
                            OperatorUid::new(uid).expect("valid uid"),
                            OperatorState {
                                vertex: VertexId(vertex),
                                parallelism: subtasks.len() as u32,
                                subtasks: subtasks
                                    .into_iter()
                                    .map(|(s, st)| (SubtaskIndex(s), st))
                                    .collect(),
                            },
                        )
                    })
                    .collect(),
                self_contained: false,
                job_name: None,
                leader_epoch: None,
            };
            m.self_contained = m.computes_self_contained();
            m
        })
}

proptest! {
    #[test]
    fn metadata_round_trips(m in metadata()) {
        let bytes = m.encode().expect("encode");
        prop_assert_eq!(CheckpointMetadata::decode(&bytes), Ok(m));
    }

    #[test]
    fn flipping_any_single_byte_of_metadata_is_detected(
        m in metadata(),
        at in any::<prop::sample::Index>(),
        mask in 1u8..=255,
    ) {
        let mut bytes = m.encode().expect("encode");
        let i = at.index(bytes.len());
        bytes[i] ^= mask;
        prop_assert!(CheckpointMetadata::decode(&bytes).is_err(), "flip at {} undetected", i);
    }
}

/// The gap the registry's base holds close: a task of checkpoint 3 learns that checkpoint 1
/// completed and reuses its files; checkpoint 2 then completes and subsumes 1. The files must
/// survive until 3 finishes.
#[test]
fn a_base_learned_after_trigger_survives_its_subsumption_until_the_user_finishes() {
    let cfg = CheckpointConfig {
        max_concurrent: 3,
        num_retained: 1,
        ..CheckpointConfig::default()
    };
    let t = task(0);
    let mut c = Coordinator::new(JobId(1), 128, cfg, [t]).expect("coordinator");
    let mut obs = Observer::default();
    for _ in 0..3 {
        let actions = c.trigger(0, CheckpointKind::Checkpoint).expect("trigger");
        obs.observe(&c, &actions, None).expect("invariants");
    }
    let (one, two, three) = (CheckpointId(1), CheckpointId(2), CheckpointId(3));
    let ack = |c: &mut Coordinator, id: CheckpointId, files: Vec<FileHandle>| {
        c.on_ack(0, id, t, snapshot(files), TaskAckMetrics::default())
    };
    let out = ack(&mut c, two, vec![file("shared/two".into(), true)]);
    obs.observe(&c, &out.actions, None).expect("invariants");
    let out = ack(&mut c, one, vec![file("shared/one".into(), true)]);
    obs.observe(&c, &out.actions, None).expect("invariants");
    let actions = c.on_metadata_written(1, one).expect("in flight");
    obs.observe(&c, &actions, Some(one)).expect("invariants");
    // The task snapshots 3 now, reusing checkpoint 1 (the newest completed).
    let (base, _) = c.registry().reusable_base().expect("a base");
    assert_eq!(base, one);
    let actions = c.on_metadata_written(2, two).expect("in flight");
    obs.observe(&c, &actions, Some(two)).expect("invariants");
    assert!(!obs.deleted_ever.contains("shared/one"), "{actions:?}");
    let out = ack(&mut c, three, vec![file("shared/one".into(), true)]);
    assert_eq!(out.result, AckResult::Success);
    obs.observe(&c, &out.actions, None).expect("invariants");
    let actions = c.on_metadata_written(3, three).expect("in flight");
    obs.observe(&c, &actions, Some(three)).expect("invariants");
    assert!(c.registry().is_referenced("shared/one"));
}
