//! How the JobMaster reaches the cluster: [`TaskManagers`], the one side-effect context it
//! drives (slots, control messages), which the JobManager's ResourceManager implements and the
//! failover tests fake; and the checkpoint [`TaskGateway`] of one attempt over it.

use super::*;
use crate::slots::NotEnoughSlots;

/// Everything a JobMaster asks of the cluster. Implementors guarantee:
/// - [`allocate`](Self::allocate) claims the slots it returns for `job` until
///   [`release_job`](Self::release_job), and keeps a job slot on its `previous` TaskManager
///   when that one still has it free;
/// - [`send`](Self::send) queues `message` on the TaskManager's session in order, and is false
///   only when that TaskManager is not (any more) registered;
/// - none of them blocks on I/O: the JobMaster calls them on its own thread between messages.
pub(crate) trait TaskManagers: Send + Sync {
    /// Claims `needed` slots for `job`.
    fn allocate(
        &self,
        job: JobId,
        previous: &BTreeMap<u32, TaskManagerId>,
        needed: u32,
    ) -> Result<Assignment, NotEnoughSlots>;
    /// Frees every slot of `job`.
    fn release_job(&self, job: JobId);
    /// Slots `job` could hold now: the free ones and its own.
    fn available_slots(&self, job: JobId) -> u32;
    /// Queues `message` for TaskManager `tm`; false when it is gone.
    fn send(&self, tm: &TaskManagerId, message: Down) -> bool;
    /// Where `tm` serves its data plane, if it is registered.
    fn data_address(&self, tm: &TaskManagerId) -> Option<String>;
    /// The JobManager is stopping (late acks are not waited for).
    fn is_shutting_down(&self) -> bool;
    /// The process id `tm` registered with, if it is registered (shown with its subtasks, so a
    /// recovery drill on the same host can find the process).
    fn pid(&self, _tm: &TaskManagerId) -> Option<u32> {
        None
    }
    /// Whether the JobManager may act (deploy); `Err` says why not (it no longer leads).
    fn may_act(&self) -> Result<(), String> {
        Ok(())
    }
}

impl TaskManagers for Shared {
    fn allocate(
        &self,
        job: JobId,
        previous: &BTreeMap<u32, TaskManagerId>,
        needed: u32,
    ) -> Result<Assignment, NotEnoughSlots> {
        self.resources().allocate(job, previous, needed)
    }

    fn release_job(&self, job: JobId) {
        self.resources().release_job(job)
    }

    fn available_slots(&self, job: JobId) -> u32 {
        self.resources().available_slots(job)
    }

    fn send(&self, tm: &TaskManagerId, message: Down) -> bool {
        self.resources().send(tm, message)
    }

    fn data_address(&self, tm: &TaskManagerId) -> Option<String> {
        self.resources().data_address(tm).map(str::to_string)
    }

    fn is_shutting_down(&self) -> bool {
        Shared::is_shutting_down(self)
    }

    fn pid(&self, tm: &TaskManagerId) -> Option<u32> {
        self.resources().pid(tm)
    }

    fn may_act(&self) -> Result<(), String> {
        Shared::may_act(self).map_err(|e| e.to_string())
    }
}

/// The [`TaskGateway`] of one attempt: the TaskManagers' control streams.
#[derive(Clone)]
pub(crate) struct ClusterGateway {
    pub(super) cluster: Arc<dyn TaskManagers>,
    pub(super) job: String,
    pub(super) attempt: AttemptId,
    pub(super) task_tm: Arc<BTreeMap<TaskId, TaskManagerId>>,
    pub(super) taskmanagers: Arc<BTreeSet<TaskManagerId>>,
}

impl ClusterGateway {
    pub(super) fn to_all(&self, kind: Down) {
        for tm in self.taskmanagers.iter() {
            self.cluster.send(tm, kind.clone());
        }
    }

    pub(super) fn aborted(&self, id: CheckpointId, reason: &str) {
        self.to_all(Down::Aborted(NotifyCheckpointAborted {
            job_id: self.job.clone(),
            attempt: self.attempt.get(),
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
        self.cluster.send(
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
                savepoint: barrier.is_savepoint(),
                canonical: barrier.savepoint.is_some_and(|s| s.canonical),
                stop: barrier.stops(),
            }),
        );
    }

    fn complete(&mut self, id: CheckpointId) {
        self.to_all(Down::Complete(NotifyCheckpointComplete {
            job_id: self.job.clone(),
            attempt: self.attempt.get(),
            checkpoint_id: id.0,
        }));
    }

    fn shutdown(&mut self) {
        self.to_all(Down::Stop(StopTasks {
            job_id: self.job.clone(),
            attempt: self.attempt.get(),
        }));
    }
}
