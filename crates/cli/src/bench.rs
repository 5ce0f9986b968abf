//! `weir bench … --checkpoint-interval`: throughput with and without checkpoints, and the
//! checkpoints' pauses, durations and sizes. `weir bench … --savepoint FORMAT`: a savepoint
//! taken while the job runs flat out (its duration, rate, task pause and the throughput lost
//! meanwhile), then a restore of it at one more subtask (the time until every task runs).

use weir_runtime::{CheckpointRecord, CheckpointStatus};

/// The figures of one checkpointed benchmark run.
pub(crate) struct CheckpointSummary {
    rate_without: f64,
    rate_with: f64,
    completed: usize,
    aborted: usize,
    sync_p50_us: u64,
    sync_p99_us: u64,
    sync_max_us: u64,
    duration_p50_ms: u64,
    duration_max_ms: u64,
    uploaded_mean: u64,
    full_size_last: u64,
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

impl CheckpointSummary {
    pub(crate) fn new(
        history: &[CheckpointRecord],
        sync_pauses_us: &[u64],
        rate_without: f64,
        rate_with: f64,
    ) -> Self {
        let mut pauses = sync_pauses_us.to_vec();
        pauses.sort_unstable();
        let done: Vec<_> = history
            .iter()
            .filter(|r| r.status == CheckpointStatus::Completed)
            .collect();
        let mut durations: Vec<u64> = done.iter().map(|r| r.duration_ms).collect();
        durations.sort_unstable();
        let uploaded: u64 = done.iter().map(|r| r.bytes_uploaded).sum();
        Self {
            rate_without,
            rate_with,
            completed: done.len(),
            aborted: history
                .iter()
                .filter(|r| matches!(r.status, CheckpointStatus::Aborted(_)))
                .count(),
            sync_p50_us: percentile(&pauses, 0.5),
            sync_p99_us: percentile(&pauses, 0.99),
            sync_max_us: pauses.last().copied().unwrap_or(0),
            duration_p50_ms: percentile(&durations, 0.5),
            duration_max_ms: durations.last().copied().unwrap_or(0),
            uploaded_mean: if done.is_empty() {
                0
            } else {
                uploaded / done.len() as u64
            },
            full_size_last: done.last().map(|r| r.full_size).unwrap_or(0),
        }
    }

    fn loss_percent(&self) -> f64 {
        if self.rate_without <= 0.0 {
            return 0.0;
        }
        (1.0 - self.rate_with / self.rate_without) * 100.0
    }

    pub(crate) fn json(&self, interval: &str) -> serde_json::Value {
        serde_json::json!({
            "checkpoint_interval": interval,
            "records_per_s_without_checkpoints": self.rate_without,
            "records_per_s_with_checkpoints": self.rate_with,
            "throughput_loss_percent": self.loss_percent(),
            "checkpoints_completed": self.completed,
            "checkpoints_aborted": self.aborted,
            "sync_pause_p50_us": self.sync_p50_us,
            "sync_pause_p99_us": self.sync_p99_us,
            "sync_pause_max_us": self.sync_max_us,
            "checkpoint_duration_p50_ms": self.duration_p50_ms,
            "checkpoint_duration_max_ms": self.duration_max_ms,
            "bytes_uploaded_per_checkpoint_mean": self.uploaded_mean,
            "checkpoint_full_size_bytes_last": self.full_size_last,
        })
    }

    pub(crate) fn text(&self, interval: &str) -> String {
        use crate::commands::human_bytes;
        format!(
            "with checkpoints every {interval}:\n\
             throughput      {:.0} records/s ({:.0} without; {:.1} % loss)\n\
             checkpoints     {} completed, {} aborted\n\
             sync pause      p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (per task snapshot)\n\
             duration        p50 {} ms, max {} ms (trigger to complete)\n\
             size            {} uploaded per checkpoint on average; full state {}\n",
            self.rate_with,
            self.rate_without,
            self.loss_percent(),
            self.completed,
            self.aborted,
            self.sync_p50_us as f64 / 1000.0,
            self.sync_p99_us as f64 / 1000.0,
            self.sync_max_us as f64 / 1000.0,
            self.duration_p50_ms,
            self.duration_max_ms,
            human_bytes(self.uploaded_mean),
            human_bytes(self.full_size_last),
        )
    }
}

/// What `weir bench --savepoint` measured.
#[derive(Debug, serde::Serialize)]
pub(crate) struct SavepointFigures {
    pub format: String,
    /// The job's duration without a savepoint, and with one taken half-way.
    pub run_s: f64,
    pub run_with_savepoint_s: f64,
    /// Trigger to `_metadata` durable.
    pub savepoint_s: f64,
    pub savepoint_bytes: u64,
    pub savepoint_mb_per_s: f64,
    /// The same per subtask writing it (each writes its share on its own thread).
    pub savepoint_mb_per_s_per_subtask: f64,
    /// The longest synchronous pause of a task for the savepoint.
    pub task_pause_ms: u64,
    /// The share of the records the job did not process while the savepoint was written,
    /// from the extra run time: (with − without) / savepoint duration.
    pub throughput_loss_during_savepoint_percent: f64,
    /// The live record rate over the savepoint's duration (at least 2 s) before it was
    /// triggered, and from its trigger to its completion (TaskManagers report every 200 ms).
    pub records_per_s_before: f64,
    pub records_per_s_during: f64,
    pub restore_parallelism: u32,
    /// Submission of the job started from the savepoint (at one more subtask) until every task
    /// runs: download, rescale and restore included.
    pub restore_to_running_s: f64,
    pub restore_mb_per_s: f64,
}

impl SavepointFigures {
    /// How much lower the live rate was while the savepoint was written; `None` without a rate
    /// before it (no two progress reports in that window).
    pub(crate) fn live_rate_drop_percent(&self) -> Option<f64> {
        (self.records_per_s_before > 0.0)
            .then(|| (1.0 - self.records_per_s_during / self.records_per_s_before) * 100.0)
    }

    pub(crate) fn text(&self) -> String {
        format!(
            "savepoint ({})   {:.2} s for {} ({:.0} MB/s, {:.0} MB/s per subtask), task pause {} ms\n\
             throughput      run {:.2} s, with the savepoint {:.2} s: ~{:.1} % of the records \
             lost while it was written\n\
             live rate       {:.0} records/s before, {:.0} while it was written ({})\n\
             restore         at p={} from the savepoint: running after {:.2} s ({:.0} MB/s)\n",
            self.format,
            self.savepoint_s,
            crate::commands::human_bytes(self.savepoint_bytes),
            self.savepoint_mb_per_s,
            self.savepoint_mb_per_s_per_subtask,
            self.task_pause_ms,
            self.run_s,
            self.run_with_savepoint_s,
            self.throughput_loss_during_savepoint_percent,
            self.records_per_s_before,
            self.records_per_s_during,
            match self.live_rate_drop_percent() {
                Some(p) => format!("{p:.1} % lower"),
                None => "no progress reported before it: no drop measured".into(),
            },
            self.restore_parallelism,
            self.restore_to_running_s,
            self.restore_mb_per_s,
        )
    }
}

/// The record rate between `from` and `to`, from `(time, count)` samples: the counts at the
/// last samples at or before each end, over the time between those samples (0 without two).
pub(crate) fn rate_between(
    samples: &[(std::time::Instant, u64)],
    from: std::time::Instant,
    to: std::time::Instant,
) -> f64 {
    let at = |t: std::time::Instant| samples.iter().rev().find(|(s, _)| *s <= t).copied();
    match (at(from), at(to)) {
        (Some((t0, c0)), Some((t1, c1))) if t1 > t0 => {
            c1.saturating_sub(c0) as f64 / (t1 - t0).as_secs_f64()
        }
        _ => 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_is_measured_between_the_samples_at_the_window_ends() {
        let t = std::time::Instant::now();
        let ms = |n: u64| t + std::time::Duration::from_millis(n);
        let samples = [
            (ms(0), 0),
            (ms(500), 500),
            (ms(1000), 1500),
            (ms(1500), 1600),
        ];
        assert_eq!(rate_between(&samples, ms(0), ms(1000)), 1500.0);
        // The ends fall between samples: the last sample at or before each is used.
        assert_eq!(rate_between(&samples, ms(600), ms(1400)), 2000.0);
        assert_eq!(rate_between(&samples, ms(1000), ms(1000)), 0.0);
        assert_eq!(rate_between(&[], ms(0), ms(9)), 0.0);
    }

    #[test]
    fn a_live_rate_drop_needs_a_rate_before_the_savepoint() {
        let figures = |before: f64, during: f64| SavepointFigures {
            format: "native".into(),
            run_s: 1.0,
            run_with_savepoint_s: 1.0,
            savepoint_s: 1.0,
            savepoint_bytes: 1,
            savepoint_mb_per_s: 1.0,
            savepoint_mb_per_s_per_subtask: 1.0,
            task_pause_ms: 1,
            throughput_loss_during_savepoint_percent: 0.0,
            records_per_s_before: before,
            records_per_s_during: during,
            restore_parallelism: 3,
            restore_to_running_s: 1.0,
            restore_mb_per_s: 1.0,
        };
        assert_eq!(figures(1000.0, 750.0).live_rate_drop_percent(), Some(25.0));
        assert_eq!(figures(0.0, 750.0).live_rate_drop_percent(), None);
        assert!(figures(0.0, 750.0).text().contains("no drop measured"));
    }

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), 51);
        assert_eq!(percentile(&v, 0.99), 99);
        assert_eq!(percentile(&[], 0.99), 0);
    }
}
