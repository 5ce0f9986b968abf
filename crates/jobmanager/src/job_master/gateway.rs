//! How the JobMaster reaches the TaskManagers of one attempt: the checkpoint [`TaskGateway`]
//! over their control streams.

use super::*;

/// The [`TaskGateway`] of one attempt: the TaskManagers' control streams.
#[derive(Clone)]
pub(crate) struct ClusterGateway {
    pub(super) shared: Arc<Shared>,
    pub(super) job: String,
    pub(super) attempt: u32,
    pub(super) task_tm: Arc<BTreeMap<TaskId, TaskManagerId>>,
    pub(super) taskmanagers: Arc<BTreeSet<TaskManagerId>>,
}

impl ClusterGateway {
    pub(super) fn to_all(&self, kind: Down) {
        let rm = self.shared.resources();
        for tm in self.taskmanagers.iter() {
            rm.send(tm, kind.clone());
        }
    }

    pub(super) fn aborted(&self, id: CheckpointId, reason: &str) {
        self.to_all(Down::Aborted(NotifyCheckpointAborted {
            job_id: self.job.clone(),
            attempt: self.attempt,
            checkpoint_id: id.0,
            reason: reason.to_string(),
        }));
    }
}

impl TaskGateway for ClusterGateway {
    fn trigger(&mut self, task: TaskId, barrier: Barrier) {
        let Some(tm) = self.task_tm.get(&task) else {
            return;
        };
        tracing::debug!(checkpoint = %barrier.checkpoint, vertex = %task.vertex, subtask = %task.subtask, taskmanager = %tm, "trigger");
        self.shared.resources().send(
            tm,
            Down::Trigger(TriggerCheckpoint {
                task: Some(TaskKey::new(
                    &self.job,
                    self.attempt,
                    task.vertex,
                    task.subtask,
                )),
                checkpoint_id: barrier.checkpoint.0,
                base: barrier.base.map(|b| b.0),
                savepoint: barrier.savepoint,
            }),
        );
    }

    fn complete(&mut self, id: CheckpointId) {
        self.to_all(Down::Complete(NotifyCheckpointComplete {
            job_id: self.job.clone(),
            attempt: self.attempt,
            checkpoint_id: id.0,
        }));
    }

    fn shutdown(&mut self) {
        self.to_all(Down::Stop(StopTasks {
            job_id: self.job.clone(),
            attempt: self.attempt,
        }));
    }
}
