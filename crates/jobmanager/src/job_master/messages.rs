//! Every message that reaches a JobMaster, checked before it touches state: a TaskManager's
//! message about a task counts only when that TaskManager runs the task in the current attempt
//! (DESIGN §8, invariant 7); anything else is dropped and logged.

use super::*;

impl JobMaster {
    /// Handles one inbox message; returns a failure of the current attempt, if it is one.
    pub(super) fn handle(
        &mut self,
        msg: JobMasterMsg,
        drv: &mut Option<AttemptDriver>,
        mode: Mode,
    ) -> Option<Failure> {
        match msg {
            JobMasterMsg::Cancel => {
                tracing::info!("cancel requested");
                self.stop.get_or_insert(Stop::Cancel);
                None
            }
            JobMasterMsg::Shutdown => {
                self.stop.get_or_insert(Stop::Shutdown);
                None
            }
            JobMasterMsg::TriggerSavepoint { request, reply } => {
                let answer = self.trigger_savepoint(request, drv, mode);
                if let Err(reason) = &answer {
                    tracing::warn!(%reason, "savepoint refused");
                }
                let _ = reply.send(answer);
                None
            }
            JobMasterMsg::MetadataWritten(m) => {
                self.on_metadata_written(m, drv);
                None
            }
            JobMasterMsg::LeaseLost(reason) => {
                tracing::error!(%reason, "stopping: the checkpoint folder is no longer this JobMaster's");
                self.lease_lost.get_or_insert(reason);
                self.stop.get_or_insert(Stop::Cancel);
                None
            }
            JobMasterMsg::TaskManagerLost(lost) => self.on_taskmanager_lost(&lost),
            JobMasterMsg::FromTaskManager { from, kind } => match kind {
                Up::TaskState(u) => self.on_task_state(&from, u, mode),
                Up::Ack(ack) => {
                    self.on_ack(&from, ack, drv);
                    None
                }
                Up::Decline(d) => {
                    let key = d.task?;
                    if !self.sent_by_host(&from, &key, true, "CheckpointDecline") {
                        return None;
                    }
                    let task = TaskId::new(key.vertex_id(), key.subtask_index());
                    tracing::info!(checkpoint = d.checkpoint_id, vertex = key.vertex, subtask = key.subtask, taskmanager = %from, reason = %d.reason, "checkpoint declined");
                    self.checkpoint_event(
                        TaskEvent::Decline {
                            task,
                            id: CheckpointId(d.checkpoint_id),
                            reason: d.reason,
                        },
                        drv,
                    );
                    None
                }
                Up::EndOfInput(e) => {
                    let key = e.task?;
                    if !self.sent_by_host(&from, &key, false, "TaskEndOfInput")
                        || mode != Mode::Active
                    {
                        return None;
                    }
                    let task = TaskId::new(key.vertex_id(), key.subtask_index());
                    tracing::debug!(vertex = key.vertex, subtask = key.subtask, "end of input");
                    if self.cp.is_some() {
                        self.checkpoint_event(
                            TaskEvent::Finished {
                                task,
                                attempt: key.attempt,
                            },
                            drv,
                        );
                    } else if self.tasks.contains_key(&task) {
                        self.ended_input.insert(task);
                        self.stop_ended_tasks();
                    }
                    None
                }
                Up::Restored(r) => {
                    let key = r.task?;
                    if !self.sent_by_host(&from, &key, false, "TaskRestored") {
                        return None;
                    }
                    tracing::info!(
                        vertex = key.vertex,
                        subtask = key.subtask,
                        taskmanager = %from,
                        checkpoint = r.checkpoint_id,
                        bytes_downloaded = r.bytes_downloaded,
                        bytes_local = r.bytes_local,
                        duration_ms = r.duration_ms,
                        "task restored"
                    );
                    if key.attempt_id() == self.attempt {
                        let attempt = self.attempt.get();
                        if let Some(rec) = self
                            .recoveries
                            .last_mut()
                            .filter(|rec| rec.attempt == Some(attempt))
                        {
                            rec.bytes_downloaded += r.bytes_downloaded;
                            rec.bytes_local += r.bytes_local;
                            rec.tasks_restored += 1;
                            rec.restore_ms = rec.restore_ms.max(r.duration_ms);
                            self.dirty = true;
                        }
                    }
                    None
                }
                Up::FirstRecord(f) => {
                    let hosts_any = self.tasks.values().any(|t| t.taskmanager == from);
                    if AttemptId(f.attempt) == self.attempt && hosts_any {
                        self.on_first_record(f.at_ms);
                    }
                    None
                }
                Up::AttemptMetrics(m) => {
                    self.on_attempt_metrics(&from, m);
                    None
                }
                Up::Register(_) | Up::Heartbeat(_) | Up::StorageProbed(_) => None,
            },
        }
    }

    /// Whether `from` runs the task of `key` in the current attempt (or, with
    /// `previous_too`, ran it in the previous one). A message that fails this is dropped and
    /// logged: it changes no state (DESIGN §8, invariant 7).
    pub(super) fn sent_by_host(
        &self,
        from: &TaskManagerId,
        key: &weir_proto::v1::TaskKey,
        previous_too: bool,
        what: &str,
    ) -> bool {
        let task = TaskId::new(key.vertex_id(), key.subtask_index());
        let current = key.attempt_id() == self.attempt
            && self
                .tasks
                .get(&task)
                .is_some_and(|t| &t.taskmanager == from);
        let previous = previous_too
            && self
                .previous_hosts
                .as_ref()
                .is_some_and(|(attempt, hosts)| {
                    key.attempt_id() == *attempt && hosts.get(&task) == Some(from)
                });
        if !(current || previous) {
            tracing::warn!(
                taskmanager = %from,
                message = what,
                attempt = key.attempt,
                current_attempt = %self.attempt,
                vertex = key.vertex,
                subtask = key.subtask,
                "message about a task this TaskManager does not run in this attempt dropped"
            );
        }
        current || previous
    }

    /// Keeps what one TaskManager reported of one attempt (records, state size, pauses).
    pub(super) fn on_attempt_metrics(&mut self, from: &TaskManagerId, m: AttemptMetrics) {
        let hosts_any = self.tasks.values().any(|t| &t.taskmanager == from);
        if AttemptId(m.attempt) != self.attempt || !hosts_any {
            tracing::warn!(taskmanager = %from, attempt = m.attempt, "attempt metrics from a TaskManager without tasks of this attempt dropped");
            return;
        }
        if m.sync_pauses_us.len() > MAX_SYNC_PAUSES {
            tracing::warn!(taskmanager = %from, pauses = m.sync_pauses_us.len(), "attempt metrics with too many pauses dropped");
            return;
        }
        // Every subtask reported must be one this TaskManager runs in this attempt, once.
        let mut seen = std::collections::BTreeSet::new();
        if let Some(r) = m.subtasks.iter().find(|r| {
            !seen.insert((r.vertex, r.subtask))
                || self
                    .plan
                    .job
                    .vertices
                    .get(r.vertex as usize)
                    .is_none_or(|v| r.subtask >= v.parallelism)
                || self
                    .tasks
                    .get(&TaskId::new(VertexId(r.vertex), SubtaskIndex(r.subtask)))
                    .is_none_or(|t| &t.taskmanager != from)
        }) {
            tracing::warn!(taskmanager = %from, attempt = m.attempt, vertex = r.vertex, subtask = r.subtask, "attempt metrics naming a subtask this TaskManager does not run (or twice) dropped");
            return;
        }
        let at = now_ms();
        self.live.record(m.attempt, at, &m.subtasks);
        if self.io.attempt != self.attempt {
            // The first report of a new attempt: the earlier one's figures become totals, so
            // what is kept does not grow with the number of restarts.
            let done = std::mem::take(&mut self.io.current);
            for m in done.values() {
                self.io.earlier_records.0 += m.source_records;
                self.io.earlier_records.1 += m.sink_records;
                let room = MAX_SYNC_PAUSES.saturating_sub(self.io.earlier_pauses.len());
                self.io
                    .earlier_pauses
                    .extend(m.sync_pauses_us.iter().take(room));
            }
            self.io.attempt = self.attempt;
        }
        // Progress reports come while the attempt runs (no pauses), the final one at its end:
        // counts only rise, and pauses a report lacks are kept.
        let m = match self.io.current.remove(from) {
            Some(old) => AttemptMetrics {
                source_records: m.source_records.max(old.source_records),
                sink_records: m.sink_records.max(old.sink_records),
                state_bytes: if m.state_bytes > 0 {
                    m.state_bytes
                } else {
                    old.state_bytes
                },
                sync_pauses_us: if m.sync_pauses_us.is_empty() {
                    old.sync_pauses_us
                } else {
                    m.sync_pauses_us
                },
                ..m
            },
            None => m,
        };
        self.io.current.insert(from.clone(), m);
        let mut metrics = JobIoMetrics {
            source_records: self.io.earlier_records.0,
            sink_records: self.io.earlier_records.1,
            state_bytes: 0,
        };
        let mut pauses = self.io.earlier_pauses.clone();
        for m in self.io.current.values() {
            metrics.source_records += m.source_records;
            metrics.sink_records += m.sink_records;
            metrics.state_bytes += m.state_bytes;
            let room = MAX_SYNC_PAUSES.saturating_sub(pauses.len());
            pauses.extend(m.sync_pauses_us.iter().take(room));
        }
        self.live.source_records(at, metrics.source_records);
        let mut vertices = lock(&self.status).details.vertices.clone();
        self.live_figures_into(&mut vertices);
        let mut status = lock(&self.status);
        status.details.metrics = metrics;
        status.details.records_per_s = self.live.records_per_s();
        status.details.vertices = vertices;
        status.sync_pauses_us = pauses;
    }

    pub(super) fn on_taskmanager_lost(&mut self, lost: &LostTaskManager) -> Option<Failure> {
        let why = format!("TaskManager {} lost: {}", lost.id, lost.reason);
        let mut affected = 0;
        for t in self.tasks.values_mut() {
            if t.taskmanager == lost.id && !t.state.is_terminal() {
                t.state = ExecutionState::Failed;
                t.failure = Some(why.clone());
                affected += 1;
            }
        }
        if affected == 0 {
            self.attribute_open_recovery(lost);
            tracing::debug!(taskmanager = %lost.id, "a TaskManager without live tasks of this job was lost");
            return None;
        }
        self.dirty = true;
        tracing::warn!(taskmanager = %lost.id, tasks = affected, reason = %lost.reason, "TaskManager with live tasks lost");
        Some(Failure {
            cause: format!(
                "TaskManager {} ({}) lost: {}",
                lost.id, lost.data_address, lost.reason
            ),
            kind: FailureKind::TaskManagerLost {
                taskmanager: lost.id.clone(),
                last_heartbeat_ms: lost.last_heartbeat_ms,
            },
            detected_ms: lost.detected_ms,
        })
    }

    pub(super) fn on_task_state(
        &mut self,
        from: &TaskManagerId,
        u: TaskStateUpdate,
        mode: Mode,
    ) -> Option<Failure> {
        let state = u.state();
        let Some(key) = u.task else {
            tracing::warn!(taskmanager = %from, "task state without a task key dropped");
            return None;
        };
        if key.attempt_id() != self.attempt {
            tracing::debug!(taskmanager = %from, attempt = key.attempt, "state of another attempt ignored");
            return None;
        }
        let task = TaskId::new(key.vertex_id(), key.subtask_index());
        // Looked up before anything is indexed by it: a peer may name any vertex.
        if !self.tasks.contains_key(&task) {
            tracing::warn!(taskmanager = %from, %task, "state of an unknown task dropped");
            return None;
        }
        let name = self.task_name(task);
        let t = self.tasks.get_mut(&task).expect("checked above");
        if &t.taskmanager != from {
            tracing::warn!(taskmanager = %from, runs_on = %t.taskmanager, %task, "state from a TaskManager that does not run the task dropped");
            return None;
        }
        if t.state.is_terminal() || state == ExecutionState::Unspecified {
            return None;
        }
        t.state = state;
        self.dirty = true;
        tracing::debug!(vertex = key.vertex, subtask = key.subtask, taskmanager = %from, state = execution_state_name(state), "task state");
        match state {
            ExecutionState::Running | ExecutionState::Finished => {
                t.reached_running = true;
                if mode == Mode::Active && self.tasks.values().all(|t| t.reached_running) {
                    self.on_all_running();
                }
                if mode == Mode::Active && state == ExecutionState::Finished {
                    self.stop_ended_tasks();
                }
                None
            }
            ExecutionState::Failed => {
                t.failure = Some(u.error.clone());
                let kind = match (u.damaged_checkpoint, u.incompatible_state) {
                    (_, true) => FailureKind::Incompatible,
                    (Some(id), false) => FailureKind::Damaged(CheckpointId(id)),
                    (None, false) => FailureKind::Task {
                        primary: !u.secondary,
                    },
                };
                if u.secondary {
                    tracing::info!(task = %name, taskmanager = %from, error = %u.error, "task stopped after another failure");
                } else {
                    tracing::error!(task = %name, taskmanager = %from, error = %u.error, "task failed");
                }
                Some(Failure {
                    cause: format!("{name} failed on TaskManager {from}: {}", u.error),
                    kind,
                    detected_ms: now_ms(),
                })
            }
            ExecutionState::Canceled if mode == Mode::Active => {
                tracing::error!(task = %name, taskmanager = %from, "task cancelled by its TaskManager");
                Some(Failure {
                    cause: format!("{name} was cancelled by TaskManager {from}"),
                    kind: FailureKind::Task { primary: true },
                    detected_ms: now_ms(),
                })
            }
            _ => None,
        }
    }

    /// Without checkpointing: once every task's input ended (or it finished on its own),
    /// `StopTasks` lets them finish. Sent once per attempt.
    pub(super) fn stop_ended_tasks(&mut self) {
        if self.cp.is_some() || self.stop_sent {
            return;
        }
        let all_ended = self
            .tasks
            .iter()
            .all(|(id, t)| self.ended_input.contains(id) || t.state == ExecutionState::Finished);
        if all_ended {
            tracing::info!("every task's input ended; stopping the tasks");
            if let Some(g) = self.gateway.as_mut() {
                g.shutdown();
                self.stop_sent = true;
            }
        }
    }

    pub(super) fn task_name(&self, task: TaskId) -> String {
        match self.plan.job.vertices.get(task.vertex.0 as usize) {
            Some(v) => format!("{} ({}/{})", v.name, task.subtask.0 + 1, v.parallelism),
            None => task.to_string(),
        }
    }
}
