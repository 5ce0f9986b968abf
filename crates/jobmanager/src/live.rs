//! Live figures of a job's current attempt, from its TaskManagers' progress reports (every
//! 200 ms while tasks run): each subtask's counters and, over the last [`WINDOW_MS`] of reports,
//! its records per second and the share of time it was backpressured; and the job's source
//! records per second over every attempt.
//!
//! Pure bookkeeping: the JobMaster validates a report (sender and attempt) before it lands here,
//! and publishes what [`LiveFigures::vertex`] answers.

use crate::view::VertexMetrics;
use std::collections::{BTreeMap, VecDeque};
use weir_proto::v1::SubtaskIoReport;

/// How far back rates look.
pub(crate) const WINDOW_MS: u64 = 3_000;

/// The shortest span of readings a rate is computed over.
pub(crate) const MIN_SPAN_MS: u64 = 400;

/// A counter's recent readings, for its rate.
#[derive(Clone, Debug, Default)]
pub(crate) struct Rate {
    samples: VecDeque<(u64, u64)>,
}

impl Rate {
    /// Adds a reading of the counter at `at_ms`. A reading below the last one (a counter that
    /// restarted) starts over; readings older than the window are dropped, but the newest of
    /// them stays so the window is always spanned.
    pub fn push(&mut self, at_ms: u64, value: u64) {
        if let Some(&(t, v)) = self.samples.back() {
            if value < v || at_ms < t {
                self.samples.clear();
            }
        }
        self.samples.push_back((at_ms, value));
        while self.samples.len() > 2 && self.samples[1].0 + WINDOW_MS <= at_ms {
            self.samples.pop_front();
        }
    }

    /// Increase per second over the readings kept; 0 until they span [`MIN_SPAN_MS`] (two
    /// readings a few milliseconds apart say nothing about a rate).
    pub fn per_second(&self) -> f64 {
        match (self.samples.front(), self.samples.back()) {
            (Some(&(t0, v0)), Some(&(t1, v1))) if t1 >= t0 + MIN_SPAN_MS => {
                (v1 - v0) as f64 * 1000.0 / (t1 - t0) as f64
            }
            _ => 0.0,
        }
    }
}

#[derive(Clone, Debug, Default)]
struct SubtaskLive {
    last: SubtaskIoReport,
    records_in: Rate,
    records_out: Rate,
    backpressured_ms: Rate,
}

/// See the module doc.
#[derive(Clone, Debug, Default)]
pub(crate) struct LiveFigures {
    attempt: u32,
    subtasks: BTreeMap<(u32, u32), SubtaskLive>,
    source_records: Rate,
}

impl LiveFigures {
    /// Takes one TaskManager's reports of `attempt` at `at_ms`; a newer attempt drops the
    /// older one's subtasks (their counters started over).
    pub fn record(&mut self, attempt: u32, at_ms: u64, reports: &[SubtaskIoReport]) {
        if attempt != self.attempt {
            self.subtasks.clear();
            self.attempt = attempt;
        }
        for r in reports {
            let s = self.subtasks.entry((r.vertex, r.subtask)).or_default();
            s.records_in.push(at_ms, r.records_in);
            s.records_out.push(at_ms, r.records_out);
            s.backpressured_ms.push(at_ms, r.backpressured_ms);
            s.last = *r;
        }
    }

    /// The attempt stopped (cancelled, failed over): every rate reads 0 until reports come
    /// again; the counters are kept.
    pub fn stop_rates(&mut self) {
        for s in self.subtasks.values_mut() {
            s.records_in = Rate::default();
            s.records_out = Rate::default();
            s.backpressured_ms = Rate::default();
        }
        self.source_records = Rate::default();
    }

    /// Takes the job's source records over every attempt at `at_ms`.
    pub fn source_records(&mut self, at_ms: u64, total: u64) {
        self.source_records.push(at_ms, total);
    }

    /// Source records per second, rounded.
    pub fn records_per_s(&self) -> u64 {
        self.source_records.per_second().round() as u64
    }

    /// One subtask's records in and out and backpressured share (percent), if reported.
    pub fn subtask(&self, vertex: u32, subtask: u32) -> Option<(u64, u64, u32)> {
        self.subtasks.get(&(vertex, subtask)).map(|s| {
            (
                s.last.records_in,
                s.last.records_out,
                backpressured_pct(&s.backpressured_ms),
            )
        })
    }

    /// A vertex's figures: counters summed over its reported subtasks, rates summed, and the
    /// busiest subtask's backpressured share.
    pub fn vertex(&self, vertex: u32) -> VertexMetrics {
        let mut m = VertexMetrics::default();
        let (mut rate_in, mut rate_out) = (0.0, 0.0);
        for (_, s) in self.subtasks.range((vertex, 0)..=(vertex, u32::MAX)) {
            m.records_in += s.last.records_in;
            m.records_out += s.last.records_out;
            m.bytes_in += s.last.bytes_in;
            m.bytes_out += s.last.bytes_out;
            rate_in += s.records_in.per_second();
            rate_out += s.records_out.per_second();
            m.backpressured_pct = m
                .backpressured_pct
                .max(backpressured_pct(&s.backpressured_ms));
        }
        m.records_in_per_s = rate_in.round() as u64;
        m.records_out_per_s = rate_out.round() as u64;
        m
    }
}

fn backpressured_pct(ms: &Rate) -> u32 {
    // Milliseconds blocked per second of reports, as a share.
    (ms.per_second() / 10.0).round().clamp(0.0, 100.0) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(
        vertex: u32,
        subtask: u32,
        records_in: u64,
        backpressured_ms: u64,
    ) -> SubtaskIoReport {
        SubtaskIoReport {
            vertex,
            subtask,
            records_in,
            records_out: records_in * 2,
            bytes_in: 10,
            bytes_out: 0,
            backpressured_ms,
        }
    }

    #[test]
    fn a_rate_is_the_rise_over_the_window_and_starts_over_when_the_counter_does() {
        let mut r = Rate::default();
        assert_eq!(r.per_second(), 0.0);
        r.push(0, 0);
        r.push(5, 1000);
        assert_eq!(r.per_second(), 0.0, "5 ms of readings make no rate");
        r.samples.clear();
        for i in 0..=50u64 {
            r.push(i * 200, i * 1000);
        }
        assert_eq!(r.per_second(), 5000.0);
        // The window keeps the last 3 s and one reading before.
        assert!(r.samples.len() <= 17, "{}", r.samples.len());
        r.push(10_200, 10);
        assert_eq!(r.per_second(), 0.0, "a restarted counter has no rate yet");
    }

    #[test]
    fn a_vertex_sums_its_subtasks_and_shows_its_busiest_ones_backpressure() {
        let mut live = LiveFigures::default();
        live.record(
            0,
            0,
            &[report(1, 0, 0, 0), report(1, 1, 0, 0), report(2, 0, 0, 0)],
        );
        live.record(
            0,
            1000,
            &[
                report(1, 0, 100, 250),
                report(1, 1, 300, 0),
                report(2, 0, 7, 0),
            ],
        );
        let v = live.vertex(1);
        assert_eq!((v.records_in, v.records_out, v.bytes_in), (400, 800, 20));
        assert_eq!((v.records_in_per_s, v.records_out_per_s), (400, 800));
        assert_eq!(v.backpressured_pct, 25);
        assert_eq!(live.vertex(2).records_in, 7);
        assert_eq!(live.subtask(1, 0), Some((100, 200, 25)));
    }

    #[test]
    fn a_stopped_attempt_shows_no_rate_but_keeps_its_counters() {
        let mut live = LiveFigures::default();
        live.record(0, 0, &[report(1, 0, 0, 0)]);
        live.record(0, 1000, &[report(1, 0, 500, 100)]);
        live.source_records(0, 0);
        live.source_records(1000, 500);
        assert_eq!(live.vertex(1).records_in_per_s, 500);
        live.stop_rates();
        let v = live.vertex(1);
        assert_eq!(
            (v.records_in, v.records_in_per_s, v.backpressured_pct),
            (500, 0, 0)
        );
        assert_eq!(live.records_per_s(), 0);
    }

    #[test]
    fn a_new_attempt_forgets_the_old_attempts_subtasks() {
        let mut live = LiveFigures::default();
        live.record(0, 0, &[report(1, 0, 50, 0), report(1, 1, 50, 0)]);
        live.record(1, 100, &[report(1, 0, 5, 0)]);
        assert_eq!(live.vertex(1).records_in, 5);
        assert_eq!(live.subtask(1, 1), None);
    }
}
