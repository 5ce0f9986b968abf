//! A checkpoint that is collecting acknowledgements ([`PendingCheckpoint`]), and the two ways it
//! leaves that phase: [`PendingCheckpoint::finalize`] into metadata to be written, or
//! [`PendingCheckpoint::abort`] into an [`AbortedCheckpoint`] that lists what to clean up.

use crate::failure::CheckpointFailureReason;
use crate::handle::{TaskAckMetrics, TaskId, TaskStateSnapshot};
use crate::kind::CheckpointKind;
use crate::metadata::{CheckpointMetadata, OperatorState};
use std::collections::{BTreeMap, BTreeSet};
use weir_types::{CheckpointId, JobId};

/// How an acknowledgement was received (Flink's `TaskAcknowledgeResult`). None of these is an
/// error: the caller decides what to do with the state the ack carried.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum AckResult {
    /// The first ack of an expected task; its state is now part of the checkpoint.
    Success,
    /// The task already acknowledged this checkpoint; the second ack's state is not used.
    Duplicate,
    /// The checkpoint or the task is not known; the state is not used.
    Unknown,
    /// The checkpoint finished (aborted, completed or subsumed) recently; the late ack's state
    /// is not used and may be deleted.
    Discarded,
}

/// One task's accepted acknowledgement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskAck {
    /// What the task wrote.
    pub snapshot: TaskStateSnapshot,
    /// How long it took.
    pub metrics: TaskAckMetrics,
}

/// A triggered checkpoint waiting for every task to acknowledge.
#[derive(Clone, Debug)]
pub struct PendingCheckpoint {
    id: CheckpointId,
    kind: CheckpointKind,
    trigger_timestamp: u64,
    not_yet_acknowledged: BTreeSet<TaskId>,
    acknowledged: BTreeMap<TaskId, TaskAck>,
}

/// A pending checkpoint that was given up, and the files its tasks uploaded that nothing else
/// references, which must now be deleted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AbortedCheckpoint {
    /// The aborted checkpoint.
    pub id: CheckpointId,
    /// Its kind.
    pub kind: CheckpointKind,
    /// Why it was aborted.
    pub reason: CheckpointFailureReason,
    /// Paths (relative to the job's checkpoint directory) to delete, sorted and unique.
    pub files_to_delete: Vec<String>,
}

/// Asked to finalize a checkpoint that still waits for acks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("checkpoint {id} is not fully acknowledged: {missing} task(s) missing")]
pub struct NotFullyAcknowledged {
    /// The checkpoint.
    pub id: CheckpointId,
    /// How many tasks have not acknowledged.
    pub missing: usize,
}

impl PendingCheckpoint {
    /// A checkpoint `id` of `kind`, triggered at `trigger_timestamp` (ms), that every task in
    /// `tasks` must acknowledge.
    pub fn new(
        id: CheckpointId,
        kind: CheckpointKind,
        trigger_timestamp: u64,
        tasks: impl IntoIterator<Item = TaskId>,
    ) -> Self {
        Self {
            id,
            kind,
            trigger_timestamp,
            not_yet_acknowledged: tasks.into_iter().collect(),
            acknowledged: BTreeMap::new(),
        }
    }

    /// The checkpoint id.
    pub fn id(&self) -> CheckpointId {
        self.id
    }

    /// Checkpoint or savepoint.
    pub fn kind(&self) -> CheckpointKind {
        self.kind
    }

    /// When it was triggered (ms).
    pub fn trigger_timestamp(&self) -> u64 {
        self.trigger_timestamp
    }

    /// Whether `task` is one of the tasks this checkpoint waits for or has heard from.
    pub fn involves(&self, task: TaskId) -> bool {
        self.not_yet_acknowledged.contains(&task) || self.acknowledged.contains_key(&task)
    }

    /// The tasks that have not acknowledged yet.
    pub fn missing_tasks(&self) -> impl Iterator<Item = &TaskId> {
        self.not_yet_acknowledged.iter()
    }

    /// The accepted acks so far.
    pub fn acknowledged(&self) -> &BTreeMap<TaskId, TaskAck> {
        &self.acknowledged
    }

    /// Records `task`'s ack. Only the first ack of an expected task is kept ([`AckResult::Success`]);
    /// a second is a [`AckResult::Duplicate`], a task outside the checkpoint is
    /// [`AckResult::Unknown`]. (A finished checkpoint no longer exists as a `PendingCheckpoint`;
    /// the coordinator classifies acks for it as [`AckResult::Discarded`].)
    pub fn acknowledge(
        &mut self,
        task: TaskId,
        snapshot: TaskStateSnapshot,
        metrics: TaskAckMetrics,
    ) -> AckResult {
        if self.not_yet_acknowledged.remove(&task) {
            self.acknowledged
                .insert(task, TaskAck { snapshot, metrics });
            AckResult::Success
        } else if self.acknowledged.contains_key(&task) {
            AckResult::Duplicate
        } else {
            AckResult::Unknown
        }
    }

    /// Whether every task has acknowledged.
    pub fn is_fully_acknowledged(&self) -> bool {
        self.not_yet_acknowledged.is_empty()
    }

    /// Every file path the accepted acks reference, sorted and unique.
    pub fn file_paths(&self) -> BTreeSet<String> {
        self.acknowledged
            .values()
            .flat_map(|ack| ack.snapshot.files())
            .map(|f| f.path().to_owned())
            .collect()
    }

    /// Builds the `_metadata` contents from a fully acknowledged checkpoint. The parallelism of
    /// each vertex is the number of its tasks in this checkpoint.
    pub fn finalize(
        &self,
        job_id: JobId,
        max_parallelism: u32,
    ) -> Result<CheckpointMetadata, NotFullyAcknowledged> {
        if !self.is_fully_acknowledged() {
            return Err(NotFullyAcknowledged {
                id: self.id,
                missing: self.not_yet_acknowledged.len(),
            });
        }
        let mut parallelism: BTreeMap<_, u32> = BTreeMap::new();
        for task in self.acknowledged.keys() {
            *parallelism.entry(task.vertex).or_default() += 1;
        }
        let mut operators = BTreeMap::new();
        for (task, ack) in &self.acknowledged {
            for (uid, state) in &ack.snapshot.operators {
                let op = operators
                    .entry(uid.clone())
                    .or_insert_with(|| OperatorState {
                        vertex: task.vertex,
                        parallelism: parallelism.get(&task.vertex).copied().unwrap_or(0),
                        subtasks: BTreeMap::new(),
                    });
                op.subtasks.insert(task.subtask, state.clone());
            }
        }
        let mut metadata = CheckpointMetadata {
            job_id,
            checkpoint_id: self.id,
            kind: self.kind,
            timestamp: self.trigger_timestamp,
            max_parallelism,
            key_group_hash_version: weir_types::KEY_GROUP_HASH_VERSION,
            operators,
            self_contained: false,
            job_name: None,
            leader_epoch: None,
        };
        metadata.self_contained = metadata.computes_self_contained();
        Ok(metadata)
    }

    /// Gives the checkpoint up. Every file its acks reference is deleted unless
    /// `still_referenced(path)` says something else (a retained checkpoint, another pending
    /// checkpoint) still needs it.
    pub fn abort(
        self,
        reason: CheckpointFailureReason,
        still_referenced: impl Fn(&str) -> bool,
    ) -> AbortedCheckpoint {
        let files_to_delete = self
            .file_paths()
            .into_iter()
            .filter(|p| !still_referenced(p))
            .collect();
        AbortedCheckpoint {
            id: self.id,
            kind: self.kind,
            reason,
            files_to_delete,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handle::{FileHandle, OperatorSubtaskState};
    use weir_types::{OperatorUid, SubtaskIndex, VertexId};

    fn task(v: u32, s: u32) -> TaskId {
        TaskId::new(VertexId(v), SubtaskIndex(s))
    }

    fn snapshot(path: &str, shared: bool) -> TaskStateSnapshot {
        let mut s = TaskStateSnapshot::default();
        s.operators.insert(
            OperatorUid::new("op").unwrap(),
            OperatorSubtaskState {
                files: vec![FileHandle::new(path, 1, 1, shared).unwrap()],
                inline: None,
                finished: false,
            },
        );
        s
    }

    #[test]
    fn a_checkpoint_completes_when_every_task_acked_once() {
        let mut p = PendingCheckpoint::new(
            CheckpointId(1),
            CheckpointKind::Checkpoint,
            0,
            [task(1, 0), task(1, 1)],
        );
        let m = TaskAckMetrics::default();
        assert_eq!(
            p.acknowledge(task(1, 0), snapshot("chk-1/a", false), m),
            AckResult::Success
        );
        assert!(!p.is_fully_acknowledged());
        assert_eq!(
            p.acknowledge(task(1, 0), snapshot("chk-1/a2", false), m),
            AckResult::Duplicate
        );
        assert_eq!(
            p.acknowledge(task(9, 0), snapshot("chk-1/x", false), m),
            AckResult::Unknown
        );
        assert!(p.finalize(JobId(1), 128).is_err());
        assert_eq!(
            p.acknowledge(task(1, 1), snapshot("chk-1/b", false), m),
            AckResult::Success
        );
        assert!(p.is_fully_acknowledged());
        let meta = p.finalize(JobId(1), 128).unwrap();
        let op = &meta.operators[&OperatorUid::new("op").unwrap()];
        assert_eq!(op.parallelism, 2);
        assert_eq!(op.subtasks.len(), 2);
        assert!(meta.self_contained);
    }

    #[test]
    fn aborting_deletes_uploads_that_nothing_else_references() {
        let mut p = PendingCheckpoint::new(
            CheckpointId(2),
            CheckpointKind::Checkpoint,
            0,
            [task(1, 0), task(1, 1), task(1, 2)],
        );
        let m = TaskAckMetrics::default();
        p.acknowledge(task(1, 0), snapshot("shared/old.sst", true), m);
        p.acknowledge(task(1, 1), snapshot("shared/new.sst", true), m);
        let aborted = p.abort(CheckpointFailureReason::JobFailover, |path| {
            path == "shared/old.sst"
        });
        assert_eq!(aborted.files_to_delete, vec!["shared/new.sst".to_owned()]);
        assert_eq!(aborted.reason, CheckpointFailureReason::JobFailover);
    }
}
