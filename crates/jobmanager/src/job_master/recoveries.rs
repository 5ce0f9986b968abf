//! Recovery records: opened when an attempt fails, given the root cause as it becomes known,
//! timed phase by phase until the new attempt runs and processes its first record.

use super::*;

impl JobMaster {
    /// A failure reported while an attempt is being cancelled replaces the recorded cause
    /// when it is more of a root cause (a lost TaskManager over a task that lost its peer).
    pub(super) fn upgrade_failure(&mut self, current: &mut Option<Failure>, new: Failure) {
        let Some(old) = current.as_mut() else {
            return;
        };
        if new.rank() <= old.rank() {
            return;
        }
        tracing::info!(was = %old.cause, cause = %new.cause, "root cause found");
        *old = Failure {
            detected_ms: old.detected_ms,
            ..new
        };
        self.failure_cause = Some(old.cause.clone());
        if let Some(r) = self.recoveries.last_mut() {
            r.cause = old.cause.clone();
            r.counts_as_restart = !matches!(old.kind, FailureKind::Damaged(_));
            if let FailureKind::TaskManagerLost {
                taskmanager,
                last_heartbeat_ms,
            } = &old.kind
            {
                r.lost_taskmanager = Some(taskmanager.to_string());
                r.last_heartbeat_ms = Some(*last_heartbeat_ms);
            }
            r.refresh();
        }
        self.dirty = true;
    }

    pub(super) fn on_all_running(&mut self) {
        if self.all_running {
            return;
        }
        self.all_running = true;
        let now = now_ms();
        self.tracker.on_running(now);
        tracing::info!(tasks = self.tasks.len(), "every task is running");
        if let Some(r) = self.open_recovery() {
            r.running_ms = Some(now);
            r.status = RecoveryStatus::Completed;
            r.refresh();
            tracing::info!(phase = "running", recovery = r.id, deploy_ms = ?r.durations.deploy_ms, "recovery: every task running");
            if r.first_record_ms.is_some() {
                log_summary(r);
            }
        }
    }

    pub(super) fn on_first_record(&mut self, at_ms: u64) {
        let attempt = self.attempt.get();
        let Some(r) = self
            .recoveries
            .last_mut()
            .filter(|r| r.attempt == Some(attempt) && r.first_record_ms.is_none())
        else {
            return;
        };
        r.first_record_ms = Some(at_ms);
        r.refresh();
        self.dirty = true;
        tracing::info!(phase = "first_record", recovery = r.id, first_record_ms = ?r.durations.first_record_ms, "recovery: first record processed");
        if r.status == RecoveryStatus::Completed {
            log_summary(r);
        }
    }

    /// The recovery still waiting for its attempt to run, if any.
    pub(super) fn open_recovery(&mut self) -> Option<&mut RecoveryRecord> {
        self.dirty = true;
        self.recoveries
            .last_mut()
            .filter(|r| r.status == RecoveryStatus::InProgress)
    }

    /// A recovery that began from a task that lost its peer (the data plane noticed the dead
    /// TaskManager before its session broke) gets the lost TaskManager as its root cause, when
    /// that TaskManager held tasks of the failed attempt.
    pub(super) fn attribute_open_recovery(&mut self, lost: &LostTaskManager) {
        let held_tasks = self.tasks.values().any(|t| t.taskmanager == lost.id);
        let cause = format!(
            "TaskManager {} ({}) lost: {}",
            lost.id, lost.data_address, lost.reason
        );
        let Some(r) = self.open_recovery() else {
            return;
        };
        let moved_from = r
            .moves
            .iter()
            .any(|m| m.from_taskmanager == lost.id.to_string());
        if r.lost_taskmanager.is_some() || !(held_tasks || moved_from) {
            return;
        }
        tracing::info!(was = %r.cause, %cause, "root cause found");
        r.cause = cause.clone();
        r.lost_taskmanager = Some(lost.id.to_string());
        r.last_heartbeat_ms = Some(lost.last_heartbeat_ms);
        r.refresh();
        self.failure_cause = Some(cause);
    }

    /// Opens the recovery record of failure `f` (superseding one still in progress).
    pub(super) fn begin_recovery(&mut self, f: &Failure) {
        if let Some(r) = self.open_recovery() {
            r.status = RecoveryStatus::Superseded;
            tracing::warn!(recovery = r.id, "recovery superseded by a new failure");
        }
        let mut r = RecoveryRecord::new(
            self.recoveries.len() as u32 + 1,
            f.cause.clone(),
            f.detected_ms,
        );
        if let FailureKind::TaskManagerLost {
            taskmanager,
            last_heartbeat_ms,
        } = &f.kind
        {
            r.lost_taskmanager = Some(taskmanager.to_string());
            r.last_heartbeat_ms = Some(*last_heartbeat_ms);
        }
        r.counts_as_restart = !matches!(
            f.kind,
            FailureKind::Damaged(_) | FailureKind::Rescale { .. }
        );
        r.refresh();
        tracing::warn!(
            phase = "detected",
            recovery = r.id,
            attempt = %self.attempt,
            taskmanager = ?r.lost_taskmanager,
            cause = %f.cause,
            detection_ms = ?r.durations.detection_ms,
            "recovery: failure detected"
        );
        if !matches!(f.kind, FailureKind::Rescale { .. }) {
            self.failure_cause = Some(f.cause.clone());
        }
        self.recoveries.push(r);
        self.dirty = true;
    }

    /// Records that the old attempt is gone.
    pub(super) fn phase_canceled(&mut self) {
        if let Some(r) = self.open_recovery() {
            if r.canceled_ms.is_none() {
                r.canceled_ms = Some(now_ms());
                r.refresh();
                tracing::info!(phase = "canceled", recovery = r.id, cancel_ms = ?r.durations.cancel_ms, "recovery: old attempt cancelled");
            }
        }
    }
}

pub(super) fn log_summary(r: &RecoveryRecord) {
    tracing::info!(
        recovery = r.id,
        attempt = ?r.attempt,
        cause = %r.cause,
        taskmanager = ?r.lost_taskmanager,
        checkpoint = ?r.restored_checkpoint.map(|c| c.0),
        moves = r.moves.len(),
        bytes_downloaded = r.bytes_downloaded,
        bytes_local = r.bytes_local,
        detection_ms = ?r.durations.detection_ms,
        cancel_ms = ?r.durations.cancel_ms,
        schedule_ms = ?r.durations.schedule_ms,
        deploy_ms = ?r.durations.deploy_ms,
        first_record_ms = ?r.durations.first_record_ms,
        total_ms = ?r.durations.total_ms,
        "recovery complete"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_taskmanager_outranks_a_task_that_lost_its_peer() {
        let secondary = Failure {
            cause: "a".into(),
            kind: FailureKind::Task { primary: false },
            detected_ms: 0,
        };
        let lost = Failure {
            cause: "b".into(),
            kind: FailureKind::TaskManagerLost {
                taskmanager: TaskManagerId::new("tm").unwrap(),
                last_heartbeat_ms: 0,
            },
            detected_ms: 0,
        };
        assert!(lost.rank() > secondary.rank());
    }
}
