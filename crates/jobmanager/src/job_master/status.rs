//! What the JobMaster publishes for the REST API and `GetJob`.

use super::*;

/// The status of a job that was just submitted.
pub(crate) fn initial_status(
    job: JobId,
    spec: &JobSpec,
    plan: &Plan,
    checkpointing: Option<&Checkpointing>,
    restart: &RestartStrategy,
) -> JobStatus {
    let latest = checkpointing.and_then(|c| c.coordinator.store().latest().map(|c| c.id()));
    let name = if spec.job_name.is_empty() {
        plan.job.job_name.clone()
    } else {
        spec.job_name.clone()
    };
    JobStatus {
        details: JobDetails {
            id: job.to_string(),
            name,
            state: JobState::Created,
            start_ms: now_ms(),
            end_ms: None,
            duration_ms: 0,
            attempt: 0,
            restarts: 0,
            failure_cause: None,
            slots_needed: plan.slots_needed(),
            checkpointing: checkpointing.is_some(),
            restart_strategy: restart.name().to_string(),
            restored_from: None,
            vertices: vertex_details(plan, &BTreeMap::new(), 0),
            edges: plan
                .job
                .edges
                .iter()
                .map(|e| EdgeDetails {
                    source: e.source.0,
                    target: e.target.0,
                    partitioner: e.partitioning.as_str().to_ascii_uppercase(),
                })
                .collect(),
            records_per_s: 0,
            operator_state_bytes: BTreeMap::new(),
            metrics: JobIoMetrics::default(),
            cleaned_up: false,
        },
        tasks_total: plan.execution.subtasks.len() as u32,
        tasks_running: 0,
        checkpoints: Vec::new(),
        latest_completed: latest,
        recoveries: Vec::new(),
        sync_pauses_us: Vec::new(),
        savepoints: Vec::new(),
    }
}

/// The vertices of `/jobs/{id}`, with the subtasks of `tasks` (CREATED when absent).
pub(super) fn vertex_details(
    plan: &Plan,
    tasks: &BTreeMap<TaskId, TaskStatus>,
    attempt: u32,
) -> Vec<VertexDetails> {
    plan.job
        .vertices
        .iter()
        .map(|v| VertexDetails {
            id: v.id.0,
            name: v.name.clone(),
            parallelism: v.parallelism,
            keyed: v.keyed,
            source: plan.is_source_vertex(v.id),
            subtasks: (0..v.parallelism)
                .map(|i| {
                    let t = tasks.get(&TaskId::new(v.id, SubtaskIndex(i)));
                    SubtaskDetails {
                        subtask: i,
                        state: execution_state_name(t.map_or(ExecutionState::Created, |t| t.state))
                            .to_string(),
                        taskmanager: t.map(|t| t.taskmanager.to_string()),
                        slot: t.map(|t| t.slot),
                        taskmanager_pid: None,
                        attempt,
                        failure: t.and_then(|t| t.failure.clone()),
                        records_in: 0,
                        records_out: 0,
                        backpressured_pct: 0,
                    }
                })
                .collect(),
            metrics: VertexMetrics::default(),
        })
        .collect()
}

impl JobMaster {
    /// Copies the live figures of the current attempt into `vertices`.
    pub(super) fn live_figures_into(&self, vertices: &mut [VertexDetails]) {
        for v in vertices {
            v.metrics = self.live.vertex(v.id);
            for s in &mut v.subtasks {
                if let Some((records_in, records_out, pct)) = self.live.subtask(v.id, s.subtask) {
                    (s.records_in, s.records_out, s.backpressured_pct) =
                        (records_in, records_out, pct);
                }
            }
        }
    }

    pub(super) fn publish(&mut self) {
        self.dirty = false;
        let attempt = self.attempt.get();
        let mut vertices = vertex_details(&self.plan, &self.tasks, attempt);
        for v in &mut vertices {
            for s in &mut v.subtasks {
                s.taskmanager_pid = self
                    .tasks
                    .get(&TaskId::new(VertexId(v.id), SubtaskIndex(s.subtask)))
                    .and_then(|t| self.cluster.pid(&t.taskmanager));
            }
        }
        self.live_figures_into(&mut vertices);
        let running = self
            .tasks
            .values()
            .filter(|t| t.state == ExecutionState::Running)
            .count() as u32;
        let mut s = lock(&self.status);
        let d = &mut s.details;
        let deployed_before = match self.phase {
            JobPhase::Deploying => self.attempt > AttemptId(0),
            _ => self.deployed_any,
        };
        d.state = self.phase.state(deployed_before);
        d.end_ms = self.end_ms;
        d.attempt = attempt;
        d.restarts = attempt;
        d.failure_cause = self.failure_cause.clone();
        d.restored_from = self.restored_from;
        d.cleaned_up = self.cleaned_up;
        d.vertices = vertices;
        d.records_per_s = self.live.records_per_s();
        s.tasks_running = running;
        s.recoveries = self.recoveries.clone();
        s.savepoints = self.savepoint_ops.values().cloned().collect();
    }

    /// Moves the job to phase `to` (see [`super::phase::TRANSITIONS`]) and publishes it.
    pub(super) fn enter(&mut self, to: JobPhase) {
        if !self.phase.can_go_to(to) {
            tracing::error!(
                from = ?self.phase,
                to = ?to,
                from_terminal = self.phase.is_terminal(),
                "illegal job phase transition"
            );
            debug_assert!(
                false,
                "illegal job phase transition {:?} -> {:?}",
                self.phase, to
            );
        }
        if self.phase != to {
            tracing::debug!(from = ?self.phase, to = ?to, "job phase");
        }
        self.phase = to;
        self.publish();
    }
}
