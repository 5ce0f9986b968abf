//! The JobManager's Prometheus `/metrics` (on its REST port): the cluster (TaskManagers, slots
//! free and used, jobs by state, uptime), each job's records, restarts and last checkpoint age,
//! each vertex's records per second and backpressure, state per operator, and histograms of
//! checkpoints and recovery phases.
//!
//! Histograms are folded from the records the JobMasters publish (checkpoint history,
//! recoveries) when scraped: each completed checkpoint and each finished recovery is observed
//! once, whenever the scrape comes after it, so no JobMaster code path observes anything.
//! Everything else is read off the job table per scrape.

use crate::cluster::{lock, JobStatus};
use crate::recovery::{RecoveryRecord, RecoveryStatus};
use crate::view::{JobState, TaskManagersView};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Instant;
use weir_coordination::driver::{CheckpointRecord, CheckpointStatus};
use weir_metrics::Exposition;
use weir_types::CheckpointId;

/// What one job's histograms have taken in so far.
#[derive(Default)]
struct Folded {
    /// Checkpoints counted (completed or aborted), from the oldest still in the history.
    checkpoints: BTreeSet<CheckpointId>,
    completed: u64,
    aborted: u64,
    /// Recoveries observed, by id.
    recoveries: BTreeSet<u32>,
}

/// See the module doc.
pub(crate) struct JobManagerMetrics {
    started: Instant,
    /// Histograms live across scrapes.
    histograms: Mutex<(Exposition, BTreeMap<String, Folded>)>,
}

impl Default for JobManagerMetrics {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            histograms: Mutex::new((Exposition::new(), BTreeMap::new())),
        }
    }
}

/// Observes `history`'s checkpoints that ended since the last fold into `e`.
fn fold_checkpoints(e: &Exposition, job: &str, f: &mut Folded, history: &[CheckpointRecord]) {
    let Some(first) = history.first() else {
        return;
    };
    // Ids below the history's oldest can never come back: forget them.
    f.checkpoints = f.checkpoints.split_off(&first.id);
    let labels = [job];
    let secs = |ms: u64| ms as f64 / 1000.0;
    for r in history {
        if r.status == CheckpointStatus::InProgress || !f.checkpoints.insert(r.id) {
            continue;
        }
        if r.status != CheckpointStatus::Completed {
            f.aborted += 1;
            continue;
        }
        f.completed += 1;
        e.observe(
            &weir_metrics::CHECKPOINT_DURATION,
            &labels,
            secs(r.duration_ms),
        );
        e.observe(&weir_metrics::CHECKPOINT_SIZE, &labels, r.full_size as f64);
        e.observe(
            &weir_metrics::CHECKPOINT_UPLOADED,
            &labels,
            r.bytes_uploaded as f64,
        );
        e.observe(
            &weir_metrics::CHECKPOINT_ALIGNMENT,
            &labels,
            secs(r.alignment_ms),
        );
        e.observe(&weir_metrics::CHECKPOINT_PAUSE, &labels, secs(r.sync_ms));
    }
}

/// Observes the phases of `recoveries` that finished since the last fold into `e`.
fn fold_recoveries(e: &Exposition, job: &str, f: &mut Folded, recoveries: &[RecoveryRecord]) {
    for r in recoveries {
        if r.status == RecoveryStatus::InProgress || !f.recoveries.insert(r.id) {
            continue;
        }
        let d = &r.durations;
        let restore = (r.tasks_restored > 0).then_some(r.restore_ms);
        for (phase, ms) in [
            ("detect", d.detection_ms),
            ("cancel", d.cancel_ms),
            ("schedule", d.schedule_ms),
            ("deploy", d.deploy_ms),
            ("restore", restore),
            ("first_record", d.first_record_ms),
            ("total", d.total_ms),
        ] {
            if let Some(ms) = ms {
                e.observe(
                    &weir_metrics::RECOVERY_PHASE,
                    &[job, phase],
                    ms as f64 / 1000.0,
                );
            }
        }
    }
}

impl JobManagerMetrics {
    /// The text of everything now: `jobs` are copies of the job table's statuses (taken one
    /// lock at a time by the caller), `taskmanagers` the ResourceManager's view.
    pub fn render(
        &self,
        jobs: &[JobStatus],
        taskmanagers: &TaskManagersView,
        now_ms: u64,
    ) -> String {
        let e = Exposition::new();
        e.gauge(
            &weir_metrics::UPTIME,
            &["jobmanager"],
            self.started.elapsed().as_secs_f64(),
        );
        e.gauge(
            &weir_metrics::CLUSTER_TASKMANAGERS,
            &[],
            taskmanagers.taskmanagers.len() as f64,
        );
        for tm in &taskmanagers.taskmanagers {
            let used = tm.slots_total.saturating_sub(tm.slots_free);
            e.gauge(
                &weir_metrics::CLUSTER_SLOTS,
                &[&tm.id, "free"],
                f64::from(tm.slots_free),
            );
            e.gauge(
                &weir_metrics::CLUSTER_SLOTS,
                &[&tm.id, "used"],
                f64::from(used),
            );
        }
        let mut by_state: BTreeMap<&str, u32> = [
            "CREATED",
            "RUNNING",
            "RESTARTING",
            "FINISHED",
            "FAILED",
            "CANCELING",
            "CANCELED",
        ]
        .into_iter()
        .map(|s| (s, 0))
        .collect();
        let mut folded = lock(&self.histograms);
        let (histograms, per_job) = &mut *folded;
        for s in jobs {
            let d = &s.details;
            *by_state.entry(state_name(d.state)).or_default() += 1;
            let job = [d.id.as_str(), d.name.as_str()];
            e.counter(&weir_metrics::JOB_RESTARTS, &job, u64::from(d.restarts));
            e.counter(
                &weir_metrics::JOB_SOURCE_RECORDS,
                &job,
                d.metrics.source_records,
            );
            e.counter(
                &weir_metrics::JOB_SINK_RECORDS,
                &job,
                d.metrics.sink_records,
            );
            if let Some(age) = s.last_checkpoint_age_ms(now_ms) {
                e.gauge(&weir_metrics::CHECKPOINT_AGE, &job, age as f64 / 1000.0);
            }
            if !d.state.is_terminal() {
                for v in &d.vertices {
                    let id = v.id.to_string();
                    let labels = [d.id.as_str(), id.as_str(), v.name.as_str()];
                    e.gauge(
                        &weir_metrics::VERTEX_RECORDS_IN_RATE,
                        &labels,
                        v.metrics.records_in_per_s as f64,
                    );
                    e.gauge(
                        &weir_metrics::VERTEX_BACKPRESSURED,
                        &labels,
                        f64::from(v.metrics.backpressured_pct) / 100.0,
                    );
                }
            }
            for (op, bytes) in &d.operator_state_bytes {
                e.gauge(&weir_metrics::OPERATOR_STATE, &[&d.id, op], *bytes as f64);
            }
            let f = per_job.entry(d.id.clone()).or_default();
            fold_checkpoints(histograms, &d.id, f, &s.checkpoints);
            fold_recoveries(histograms, &d.id, f, &s.recoveries);
            if d.checkpointing {
                e.counter(
                    &weir_metrics::CHECKPOINTS,
                    &[&d.id, "completed"],
                    f.completed,
                );
                e.counter(&weir_metrics::CHECKPOINTS, &[&d.id, "aborted"], f.aborted);
            }
        }
        for (state, n) in by_state {
            e.gauge(&weir_metrics::JOBS, &[state], f64::from(n));
        }
        let mut text = e.render();
        text.push_str(&histograms.render());
        text
    }
}

fn state_name(s: JobState) -> &'static str {
    match s {
        JobState::Created => "CREATED",
        JobState::Running => "RUNNING",
        JobState::Restarting => "RESTARTING",
        JobState::Finished => "FINISHED",
        JobState::Failed => "FAILED",
        JobState::Canceling => "CANCELING",
        JobState::Canceled => "CANCELED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: u64, status: CheckpointStatus, duration_ms: u64) -> CheckpointRecord {
        let mut r: CheckpointRecord = serde_json::from_value(serde_json::json!({
            "id": id, "attempt": 0, "status": "completed", "trigger_ms": 0, "duration_ms": duration_ms,
            "sync_ms": 2, "async_ms": 5, "alignment_ms": 1, "bytes_uploaded": 2048,
            "full_size": 4096, "acknowledged": 2
        }))
        .expect("a checkpoint record");
        r.status = status;
        r
    }

    #[test]
    fn each_ended_checkpoint_is_observed_once_however_often_it_is_scraped() {
        let e = Exposition::new();
        let mut f = Folded::default();
        let mut history = vec![
            record(1, CheckpointStatus::Completed, 300),
            record(2, CheckpointStatus::Aborted("timeout".into()), 0),
            record(3, CheckpointStatus::InProgress, 0),
        ];
        fold_checkpoints(&e, "j", &mut f, &history);
        fold_checkpoints(&e, "j", &mut f, &history);
        assert_eq!((f.completed, f.aborted), (1, 1));
        history[2].status = CheckpointStatus::Completed;
        history.remove(0);
        fold_checkpoints(&e, "j", &mut f, &history);
        assert_eq!((f.completed, f.aborted), (2, 1));
        assert!(
            !f.checkpoints.contains(&CheckpointId(1)),
            "ids below the history are forgotten"
        );
        let text = e.render();
        assert!(
            text.contains(r#"weir_checkpoint_duration_seconds_count{job_id="j"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"weir_checkpoint_size_bytes_bucket{job_id="j",le="4096"} 2"#),
            "{text}"
        );
    }
}
