//! Prometheus exposition for Weir's processes: every name a JobManager or TaskManager exports,
//! with its unit and help, a builder that renders a process's figures in Prometheus' text format
//! (0.0.4), and the loopback HTTP endpoint a TaskManager serves them on.
//!
//! Figures are not kept here. A process keeps them where they arise (a task's counters are
//! atomics it adds to per batch; checkpoint and recovery records live in the JobMaster's job
//! status) and fills an [`Exposition`] from them when scraped, so the hot path never touches
//! a registry and nothing is global: a JobManager and a TaskManager in one process export
//! separately.
//!
//! Names carry their unit (`_seconds`, `_bytes`, `_records`, `_ratio`; counters end in `_total`),
//! as Prometheus' naming rules ask; [`METRICS`] lists them all (the README's table is this
//! list).
//!
//! Must not depend on any other Weir crate: it knows names, not jobs.

#![warn(missing_docs)]

use metrics::{Key, KeyName, Label, Metadata, Recorder, SharedString};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusRecorder};
use std::sync::Arc;

/// The kind of a metric.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only rises (resets when its process or task restarts).
    Counter,
    /// Goes up and down.
    Gauge,
    /// Observations in buckets, with their sum and count.
    Histogram,
}

/// One exported metric.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Metric {
    /// The full name, unit included.
    pub name: &'static str,
    /// Counter, gauge or histogram.
    pub kind: Kind,
    /// Its labels, in order.
    pub labels: &'static [&'static str],
    /// What it measures.
    pub help: &'static str,
}

const fn metric(
    name: &'static str,
    kind: Kind,
    labels: &'static [&'static str],
    help: &'static str,
) -> Metric {
    Metric {
        name,
        kind,
        labels,
        help,
    }
}

/// A job's id is `job_id`, never `job`: Prometheus gives every scraped series a `job` label
/// of its own (the scrape job), which would rename ours to `exported_job`.
const SUBTASK: &[&str] = &["job_id", "attempt", "vertex", "vertex_name", "subtask"];

/// Records a subtask read from its input channels (its attempt's, from 0).
pub const TASK_RECORDS_IN: Metric = metric(
    "weir_task_records_in_total",
    Kind::Counter,
    SUBTASK,
    "Records a subtask read from its input channels since its attempt started.",
);
/// Records a subtask wrote to its output channels.
pub const TASK_RECORDS_OUT: Metric = metric(
    "weir_task_records_out_total",
    Kind::Counter,
    SUBTASK,
    "Records a subtask wrote to its output channels since its attempt started (a broadcast counts once per target).",
);
/// Encoded bytes a subtask received from other TaskManagers.
pub const TASK_BYTES_IN: Metric = metric(
    "weir_task_received_bytes_total",
    Kind::Counter,
    SUBTASK,
    "Encoded bytes a subtask received from other TaskManagers (in-process channels carry no bytes).",
);
/// Encoded bytes a subtask sent to other TaskManagers.
pub const TASK_BYTES_OUT: Metric = metric(
    "weir_task_sent_bytes_total",
    Kind::Counter,
    SUBTASK,
    "Encoded bytes a subtask sent to other TaskManagers.",
);
/// Share of time a subtask waited for room in a full output channel.
pub const TASK_BACKPRESSURED: Metric = metric(
    "weir_task_backpressured_ratio",
    Kind::Gauge,
    SUBTASK,
    "Share of time a subtask waited for room in a full output channel (backpressure), over the interval between its TaskManager's last two reports (about 200 ms), 0 to 1.",
);
/// Slots of a TaskManager.
pub const TASKMANAGER_SLOTS: Metric = metric(
    "weir_taskmanager_slots",
    Kind::Gauge,
    &[],
    "Slots this TaskManager offers.",
);
/// Subtasks running on a TaskManager.
pub const TASKMANAGER_SUBTASKS: Metric = metric(
    "weir_taskmanager_subtasks",
    Kind::Gauge,
    &[],
    "Subtasks this TaskManager runs now.",
);
/// A process's uptime.
pub const UPTIME: Metric = metric(
    "weir_process_uptime_seconds",
    Kind::Gauge,
    &["role"],
    "Time since this process started (role: jobmanager or taskmanager).",
);
/// Live TaskManagers a JobManager knows.
pub const CLUSTER_TASKMANAGERS: Metric = metric(
    "weir_cluster_taskmanagers",
    Kind::Gauge,
    &[],
    "Registered TaskManagers.",
);
/// Slots of the cluster by state.
pub const CLUSTER_SLOTS: Metric = metric(
    "weir_cluster_slots",
    Kind::Gauge,
    &["taskmanager", "state"],
    "Slots per TaskManager, free or used.",
);
/// Jobs by state.
pub const JOBS: Metric = metric(
    "weir_jobs",
    Kind::Gauge,
    &["state"],
    "Jobs this JobManager knows, by state.",
);
/// Restarts of a job.
pub const JOB_RESTARTS: Metric = metric(
    "weir_job_restarts_total",
    Kind::Counter,
    &["job_id", "job_name"],
    "Attempts a job deployed after its first (failovers and rescales).",
);
/// Records a job's sources emitted over all attempts.
pub const JOB_SOURCE_RECORDS: Metric = metric(
    "weir_job_source_records_total",
    Kind::Counter,
    &["job_id", "job_name"],
    "Records a job's sources emitted, over every attempt (replayed records count again).",
);
/// Records a job's sinks wrote over all attempts.
pub const JOB_SINK_RECORDS: Metric = metric(
    "weir_job_sink_records_total",
    Kind::Counter,
    &["job_id", "job_name"],
    "Records a job's sinks wrote, over every attempt.",
);
/// Records per second through a vertex.
pub const VERTEX_RECORDS_IN_RATE: Metric = metric(
    "weir_vertex_records_in_per_second",
    Kind::Gauge,
    &["job_id", "vertex", "vertex_name"],
    "Records per second a vertex's subtasks read, over the last reports (current attempt).",
);
/// Share of time a vertex's subtasks were backpressured.
pub const VERTEX_BACKPRESSURED: Metric = metric(
    "weir_vertex_backpressured_ratio",
    Kind::Gauge,
    &["job_id", "vertex", "vertex_name"],
    "Share of the last reports' time a vertex's busiest subtask waited for room in its output (0 to 1).",
);
/// Age of a job's last completed checkpoint.
pub const CHECKPOINT_AGE: Metric = metric(
    "weir_job_last_checkpoint_age_seconds",
    Kind::Gauge,
    &["job_id", "job_name"],
    "Time since a job's latest completed checkpoint was triggered.",
);
/// Checkpoints by outcome.
pub const CHECKPOINTS: Metric = metric(
    "weir_checkpoints_total",
    Kind::Counter,
    &["job_id", "status"],
    "Checkpoints of a job by outcome (completed, aborted).",
);
/// Checkpoint duration.
pub const CHECKPOINT_DURATION: Metric = metric(
    "weir_checkpoint_duration_seconds",
    Kind::Histogram,
    &["job_id"],
    "Completed checkpoints: trigger to completion.",
);
/// Checkpoint size.
pub const CHECKPOINT_SIZE: Metric = metric(
    "weir_checkpoint_size_bytes",
    Kind::Histogram,
    &["job_id"],
    "Completed checkpoints: the full size of the state each references.",
);
/// Checkpoint upload.
pub const CHECKPOINT_UPLOADED: Metric = metric(
    "weir_checkpoint_uploaded_bytes",
    Kind::Histogram,
    &["job_id"],
    "Completed checkpoints: bytes uploaded (new files only).",
);
/// Checkpoint alignment.
pub const CHECKPOINT_ALIGNMENT: Metric = metric(
    "weir_checkpoint_alignment_seconds",
    Kind::Histogram,
    &["job_id"],
    "Completed checkpoints: the longest barrier alignment over the tasks.",
);
/// Task pause.
pub const CHECKPOINT_PAUSE: Metric = metric(
    "weir_checkpoint_task_pause_seconds",
    Kind::Histogram,
    &["job_id"],
    "Completed checkpoints: the longest synchronous snapshot pause over the tasks.",
);
/// State size per operator.
pub const OPERATOR_STATE: Metric = metric(
    "weir_operator_state_bytes",
    Kind::Gauge,
    &["job_id", "operator"],
    "Keyed and operator state per operator in the latest completed checkpoint (full size over its subtasks).",
);
/// Recovery phases.
pub const RECOVERY_PHASE: Metric = metric(
    "weir_recovery_phase_seconds",
    Kind::Histogram,
    &["job_id", "phase"],
    "Finished recoveries by phase: detect, cancel, schedule, deploy (to every task running, restores included), restore (the slowest task's), first_record, total.",
);

/// Every metric a Weir process exports.
pub const METRICS: &[Metric] = &[
    TASK_RECORDS_IN,
    TASK_RECORDS_OUT,
    TASK_BYTES_IN,
    TASK_BYTES_OUT,
    TASK_BACKPRESSURED,
    TASKMANAGER_SLOTS,
    TASKMANAGER_SUBTASKS,
    UPTIME,
    CLUSTER_TASKMANAGERS,
    CLUSTER_SLOTS,
    JOBS,
    JOB_RESTARTS,
    JOB_SOURCE_RECORDS,
    JOB_SINK_RECORDS,
    VERTEX_RECORDS_IN_RATE,
    VERTEX_BACKPRESSURED,
    CHECKPOINT_AGE,
    CHECKPOINTS,
    CHECKPOINT_DURATION,
    CHECKPOINT_SIZE,
    CHECKPOINT_UPLOADED,
    CHECKPOINT_ALIGNMENT,
    CHECKPOINT_PAUSE,
    OPERATOR_STATE,
    RECOVERY_PHASE,
];

/// Buckets of every `_seconds` histogram: 1 ms to 5 min.
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0,
];

/// Buckets of every `_bytes` histogram: 1 KiB to 64 GiB, by fours.
const BYTES_BUCKETS: &[f64] = &[
    1024.0,
    4096.0,
    16384.0,
    65536.0,
    262144.0,
    1048576.0,
    4194304.0,
    16777216.0,
    67108864.0,
    268435456.0,
    1073741824.0,
    4294967296.0,
    17179869184.0,
    68719476736.0,
];

/// The `Content-Type` of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Figures to render: fill it, then [`Exposition::render`]. Cheap to make; a process makes one
/// per scrape for what it reads off its state (gauges, counters it keeps itself) and may keep
/// one across scrapes for histograms it folds records into.
pub struct Exposition {
    recorder: PrometheusRecorder,
}

impl Default for Exposition {
    fn default() -> Self {
        Self::new()
    }
}

fn labels_of(metric: &Metric, values: &[&str]) -> Vec<Label> {
    debug_assert_eq!(
        metric.labels.len(),
        values.len(),
        "{} takes labels {:?}",
        metric.name,
        metric.labels
    );
    metric
        .labels
        .iter()
        .zip(values)
        .map(|(k, v)| Label::new(*k, v.to_string()))
        .collect()
}

const META: Metadata<'static> =
    Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

impl Exposition {
    /// Empty, with every metric's help and histogram buckets declared.
    pub fn new() -> Self {
        let with_buckets = |b: PrometheusBuilder, suffix: &str, buckets: &[f64]| {
            b.set_buckets_for_metric(Matcher::Suffix(suffix.to_string()), buckets)
                .expect("buckets are not empty")
        };
        let builder = with_buckets(PrometheusBuilder::new(), "_seconds", SECONDS_BUCKETS);
        let recorder = with_buckets(builder, "_bytes", BYTES_BUCKETS).build_recorder();
        for m in METRICS {
            let name = KeyName::from_const_str(m.name);
            let help = SharedString::const_str(m.help);
            match m.kind {
                Kind::Counter => recorder.describe_counter(name, None, help),
                Kind::Gauge => recorder.describe_gauge(name, None, help),
                Kind::Histogram => recorder.describe_histogram(name, None, help),
            }
        }
        Self { recorder }
    }

    fn key(metric: &Metric, labels: &[&str]) -> Key {
        Key::from_parts(metric.name, labels_of(metric, labels))
    }

    /// Sets counter `metric` with `labels` (values in [`Metric::labels`] order) to `value`.
    pub fn counter(&self, metric: &Metric, labels: &[&str], value: u64) {
        debug_assert_eq!(metric.kind, Kind::Counter, "{}", metric.name);
        self.recorder
            .register_counter(&Self::key(metric, labels), &META)
            .absolute(value);
    }

    /// Sets gauge `metric` with `labels` to `value`.
    pub fn gauge(&self, metric: &Metric, labels: &[&str], value: f64) {
        debug_assert_eq!(metric.kind, Kind::Gauge, "{}", metric.name);
        self.recorder
            .register_gauge(&Self::key(metric, labels), &META)
            .set(value);
    }

    /// Adds `value` to histogram `metric` with `labels`.
    pub fn observe(&self, metric: &Metric, labels: &[&str], value: f64) {
        debug_assert_eq!(metric.kind, Kind::Histogram, "{}", metric.name);
        self.recorder
            .register_histogram(&Self::key(metric, labels), &META)
            .record(value);
    }

    /// The text format of everything set so far.
    pub fn render(&self) -> String {
        self.recorder.handle().render()
    }
}

/// Who may scrape: given a request's `Authorization` header (if any), whether to answer.
pub type Allow = Arc<dyn Fn(Option<&[u8]>) -> bool + Send + Sync>;

/// Serves `GET /metrics` with what `render` returns, on `listener`, until the runtime stops,
/// to requests `allow` lets through (401 to the others). Any other path is 404.
pub async fn serve<L>(listener: L, render: Arc<dyn Fn() -> String + Send + Sync>, allow: Allow)
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    use axum::response::IntoResponse;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move |headers: axum::http::HeaderMap| {
            let (render, allow) = (render.clone(), allow.clone());
            async move {
                let authorization = headers
                    .get(axum::http::header::AUTHORIZATION)
                    .map(|v| v.as_bytes());
                if !allow(authorization) {
                    return (
                        axum::http::StatusCode::UNAUTHORIZED,
                        [(axum::http::header::WWW_AUTHENTICATE, "Bearer")],
                        "missing or wrong token: send Authorization: Bearer <security.auth.token>\n",
                    )
                        .into_response();
                }
                ([(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)], render()).into_response()
            }
        }),
    );
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "the /metrics endpoint stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_carries_a_unit_and_counters_end_in_total() {
        let units = ["_seconds", "_bytes", "_records", "_ratio", "_per_second"];
        for m in METRICS {
            let base = m.name.strip_suffix("_total").unwrap_or(m.name);
            assert_eq!(
                m.kind == Kind::Counter,
                m.name.ends_with("_total"),
                "{}",
                m.name
            );
            assert!(m.name.starts_with("weir_"), "{}", m.name);
            let counted = matches!(m.kind, Kind::Gauge | Kind::Counter)
                && [
                    "slots",
                    "subtasks",
                    "taskmanagers",
                    "jobs",
                    "restarts",
                    "checkpoints",
                ]
                .iter()
                .chain(["records_in", "records_out", "records"].iter())
                .any(|u| base.ends_with(u));
            assert!(
                counted || units.iter().any(|u| base.ends_with(u)),
                "{} names no unit",
                m.name
            );
        }
        let mut names: Vec<_> = METRICS.iter().map(|m| m.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), METRICS.len(), "a name is listed twice");
    }

    #[test]
    fn a_rendered_counter_gauge_and_histogram_carry_help_type_labels_and_buckets() {
        let e = Exposition::new();
        e.counter(&TASK_RECORDS_IN, &["j1", "0", "1", "Map \"x\"", "0"], 42);
        e.gauge(&TASKMANAGER_SLOTS, &[], 4.0);
        e.observe(&CHECKPOINT_DURATION, &["j1"], 0.2);
        e.observe(&CHECKPOINT_DURATION, &["j1"], 3.0);
        let text = e.render();
        assert!(
            text.contains("# TYPE weir_task_records_in_total counter"),
            "{text}"
        );
        assert!(
            text.contains("# HELP weir_task_records_in_total Records"),
            "{text}"
        );
        assert!(
            text.contains(r#"vertex_name="Map \"x\"""#),
            "a quote in a label is escaped: {text}"
        );
        assert!(text.contains("} 42\n"), "{text}");
        assert!(text.contains("weir_taskmanager_slots 4\n"), "{text}");
        assert!(
            text.contains("# TYPE weir_checkpoint_duration_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains(r#"weir_checkpoint_duration_seconds_bucket{job_id="j1",le="0.25"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"weir_checkpoint_duration_seconds_count{job_id="j1"} 2"#),
            "{text}"
        );
    }
}
