//! The record of one failover (DESIGN §6: "every recovery is measured"): what failed, what
//! moved where, how much state came from where, and when each phase ended.
//!
//! Phases, each a timestamp in ms since the epoch, in order:
//!
//! 1. `detected_ms` — the failure was noticed (a task reported FAILED, a TaskManager's stream
//!    broke or its heartbeats stopped, too many checkpoints failed, slots did not come);
//! 2. `canceled_ms` — every task of the old attempt is gone (or `cancel_timeout` passed);
//! 3. `scheduled_ms` — slots for the new attempt are assigned (after the restart delay);
//! 4. `running_ms` — every task of the new attempt reported RUNNING;
//! 5. `first_record_ms` — a TaskManager reported the first record of the new attempt.

use crate::ids::TaskManagerId;
use crate::slots::Assignment;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use weir_graph::Plan;
use weir_types::CheckpointId;

/// Where a recovery is.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecoveryStatus {
    /// Not every task of the new attempt is RUNNING yet.
    InProgress,
    /// Every task of the new attempt reached RUNNING.
    Completed,
    /// Another failure came before this recovery completed; the next record takes over.
    Superseded,
    /// The job failed or was cancelled instead of recovering.
    Abandoned,
}

/// A subtask that runs on another TaskManager after the recovery.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubtaskMove {
    /// The vertex.
    pub vertex: u32,
    /// The subtask.
    pub subtask: u32,
    /// Where it ran.
    pub from_taskmanager: String,
    /// Where it runs now.
    pub to_taskmanager: String,
}

/// Phase durations derived from the timestamps (ms); `None` until both ends are known.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryDurations {
    /// Last sign of life of the lost TaskManager → detection (TaskManager losses only).
    pub detection_ms: Option<u64>,
    /// Detection → every old task gone.
    pub cancel_ms: Option<u64>,
    /// Cancelled → slots assigned (the restart delay and any wait for slots).
    pub schedule_ms: Option<u64>,
    /// Slots assigned → every new task RUNNING (deployment and state restore).
    pub deploy_ms: Option<u64>,
    /// Every task RUNNING → the first record processed.
    pub first_record_ms: Option<u64>,
    /// Detection → first record (or → RUNNING while no record came yet).
    pub total_ms: Option<u64>,
}

/// One failover of a job. See the module doc for the phases.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryRecord {
    /// 1 for the job's first failover.
    pub id: u32,
    /// The root cause.
    pub cause: String,
    /// The TaskManager whose loss caused it.
    pub lost_taskmanager: Option<String>,
    /// Where it is.
    pub status: RecoveryStatus,
    /// Whether the restart strategy counted it (a damaged-checkpoint fallback does not).
    pub counts_as_restart: bool,
    /// The attempt it deploys (known from `scheduled_ms` on).
    pub attempt: Option<u32>,
    /// The checkpoint the new attempt restores.
    pub restored_checkpoint: Option<CheckpointId>,
    /// The lost TaskManager's last message.
    pub last_heartbeat_ms: Option<u64>,
    /// Phase 1.
    pub detected_ms: u64,
    /// Phase 2.
    pub canceled_ms: Option<u64>,
    /// Phase 3.
    pub scheduled_ms: Option<u64>,
    /// Phase 4.
    pub running_ms: Option<u64>,
    /// Phase 5.
    pub first_record_ms: Option<u64>,
    /// Derived from the phases.
    pub durations: RecoveryDurations,
    /// Subtasks whose TaskManager changed.
    pub moves: Vec<SubtaskMove>,
    /// Restored state downloaded from checkpoint storage, over all tasks.
    pub bytes_downloaded: u64,
    /// Restored state read from TaskManagers' local copies, over all tasks.
    pub bytes_local: u64,
    /// Tasks that reported their restore.
    pub tasks_restored: u32,
    /// The slowest task restore, in ms.
    pub restore_ms: u64,
    /// The adaptive scheduler changed the job's parallelism with this recovery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rescale: Option<Rescale>,
}

/// A parallelism change of the adaptive scheduler.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rescale {
    /// The parallelism before.
    pub from: u32,
    /// The parallelism after.
    pub to: u32,
    /// Why.
    pub reason: String,
}

impl RecoveryRecord {
    /// A recovery whose failure was detected at `detected_ms`.
    pub fn new(id: u32, cause: String, detected_ms: u64) -> Self {
        Self {
            id,
            cause,
            lost_taskmanager: None,
            status: RecoveryStatus::InProgress,
            counts_as_restart: true,
            attempt: None,
            restored_checkpoint: None,
            last_heartbeat_ms: None,
            detected_ms,
            canceled_ms: None,
            scheduled_ms: None,
            running_ms: None,
            first_record_ms: None,
            durations: RecoveryDurations::default(),
            moves: Vec::new(),
            bytes_downloaded: 0,
            bytes_local: 0,
            tasks_restored: 0,
            restore_ms: 0,
            rescale: None,
        }
    }

    /// Recomputes [`Self::durations`] from the timestamps.
    pub fn refresh(&mut self) {
        let span = |a: Option<u64>, b: Option<u64>| Some(b?.saturating_sub(a?));
        self.durations = RecoveryDurations {
            detection_ms: span(self.last_heartbeat_ms, Some(self.detected_ms)),
            cancel_ms: span(Some(self.detected_ms), self.canceled_ms),
            schedule_ms: span(self.canceled_ms, self.scheduled_ms),
            deploy_ms: span(self.scheduled_ms, self.running_ms),
            first_record_ms: span(self.running_ms, self.first_record_ms),
            total_ms: span(
                Some(self.detected_ms),
                self.first_record_ms.or(self.running_ms),
            ),
        };
    }
}

/// The subtasks whose TaskManager differs between `previous` (job slot → TaskManager of the
/// failed attempt) and `next`; subtask `i` of every vertex lives in job slot `i`.
pub fn moves(
    plan: &Plan,
    previous: &BTreeMap<u32, TaskManagerId>,
    next: &Assignment,
) -> Vec<SubtaskMove> {
    plan.execution
        .subtasks
        .iter()
        .filter_map(|ev| {
            let from = previous.get(&ev.slot)?;
            let to = &next.slots.get(ev.slot as usize)?.taskmanager;
            (from != to).then(|| SubtaskMove {
                vertex: ev.vertex.0,
                subtask: ev.subtask.0,
                from_taskmanager: from.to_string(),
                to_taskmanager: to.to_string(),
            })
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::slots::SlotRef;
    use weir_graph::*;
    use weir_types::NodeId;

    pub(crate) fn two_vertex_plan(parallelism: u32) -> Plan {
        let node = |id: u32, uid: &str, kind: NodeKind| StreamNode {
            id: NodeId(id),
            uid: Some(uid.into()),
            name: uid.into(),
            kind,
            parallelism: None,
            resolved_parallelism: 0,
        };
        let graph = StreamGraph {
            job_name: "t".into(),
            nodes: vec![
                node(0, "source", NodeKind::Source { parallel: true }),
                node(1, "count", NodeKind::KeyedOperator),
            ],
            edges: vec![StreamEdge {
                source: NodeId(0),
                target: NodeId(1),
                partitioning: Some(Partitioning::Hash),
                side_output: None,
            }],
            job_parallelism: None,
            max_parallelism: None,
            resolved_max_parallelism: 0,
        };
        Plan::resolve(
            graph,
            ParallelismSettings {
                config_default: parallelism,
                cli: None,
                config_max_parallelism: None,
            },
        )
        .unwrap()
    }

    fn tm(s: &str) -> TaskManagerId {
        TaskManagerId::new(s).unwrap()
    }

    #[test]
    fn only_the_subtasks_of_a_moved_slot_are_moves() {
        let plan = two_vertex_plan(2);
        let previous = BTreeMap::from([(0, tm("a")), (1, tm("b"))]);
        let next = Assignment {
            slots: vec![
                SlotRef {
                    taskmanager: tm("a"),
                    slot: 0,
                },
                SlotRef {
                    taskmanager: tm("a"),
                    slot: 1,
                },
            ],
        };
        let m = moves(&plan, &previous, &next);
        assert_eq!(m.len(), 2, "{m:?}");
        assert!(m
            .iter()
            .all(|m| m.subtask == 1 && m.from_taskmanager == "b" && m.to_taskmanager == "a"));
    }

    #[test]
    fn durations_follow_the_phases() {
        let mut r = RecoveryRecord::new(1, "x".into(), 1_000);
        r.last_heartbeat_ms = Some(900);
        r.canceled_ms = Some(1_050);
        r.scheduled_ms = Some(1_100);
        r.running_ms = Some(1_300);
        r.refresh();
        assert_eq!(r.durations.detection_ms, Some(100));
        assert_eq!(r.durations.cancel_ms, Some(50));
        assert_eq!(r.durations.schedule_ms, Some(50));
        assert_eq!(r.durations.deploy_ms, Some(200));
        assert_eq!(r.durations.first_record_ms, None);
        assert_eq!(r.durations.total_ms, Some(300));
        r.first_record_ms = Some(1_400);
        r.refresh();
        assert_eq!(r.durations.total_ms, Some(400));
    }
}
