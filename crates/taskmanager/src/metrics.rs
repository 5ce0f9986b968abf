//! What this TaskManager exports on `/metrics` and reports to the JobMaster: the data-plane
//! counters of every subtask it runs (records, bytes, backpressured time), its slots and its
//! uptime.
//!
//! A subtask's counters live from its deployment until the last task of its attempt here
//! ended and the attempt's final report went out; a scrape reads whatever lives then.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;
use weir_metrics::Exposition;
use weir_proto::v1;
use weir_runtime::remote::{EncodedElement, NextEncoded, PushEncoded};
use weir_runtime::SubtaskIo;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct SubtaskKey {
    job: String,
    attempt: u32,
    vertex: u32,
    subtask: u32,
}

struct Entry {
    vertex_name: String,
    io: Arc<SubtaskIo>,
    /// The last report's reading of the backpressured time, and when it was taken.
    last: (Instant, u64),
    /// Backpressured share of the time between the last two reports.
    backpressured_ratio: f64,
}

/// The live subtasks' counters and the process's figures.
pub struct TaskManagerMetrics {
    started: Instant,
    slots: u32,
    subtasks: Mutex<BTreeMap<SubtaskKey, Entry>>,
}

impl TaskManagerMetrics {
    /// No subtasks yet; `slots` is what the TaskManager offers.
    pub fn new(slots: u32) -> Arc<Self> {
        Arc::new(Self {
            started: Instant::now(),
            slots,
            subtasks: Mutex::default(),
        })
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, BTreeMap<SubtaskKey, Entry>> {
        self.subtasks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The counters of a subtask being deployed (fresh: a redeployment starts from 0).
    pub(crate) fn register(
        &self,
        job: &str,
        attempt: u32,
        vertex: u32,
        subtask: u32,
        vertex_name: &str,
    ) -> Arc<SubtaskIo> {
        let io = Arc::new(SubtaskIo::default());
        self.entries().insert(
            SubtaskKey {
                job: job.to_string(),
                attempt,
                vertex,
                subtask,
            },
            Entry {
                vertex_name: vertex_name.to_string(),
                io: io.clone(),
                last: (Instant::now(), 0),
                backpressured_ratio: 0.0,
            },
        );
        io
    }

    /// The counters of `job`'s `attempt` here, for a report to the JobMaster; each subtask's
    /// backpressured share since the previous report is kept for `/metrics`.
    pub(crate) fn reports(&self, job: &str, attempt: u32) -> Vec<v1::SubtaskIoReport> {
        let now = Instant::now();
        self.entries()
            .iter_mut()
            .filter(|(k, _)| k.job == job && k.attempt == attempt)
            .map(|(k, e)| {
                let s = e.io.sample();
                let elapsed = now.duration_since(e.last.0).as_nanos() as f64;
                if elapsed > 0.0 {
                    let blocked = s.backpressured_ns.saturating_sub(e.last.1) as f64;
                    e.backpressured_ratio = (blocked / elapsed).clamp(0.0, 1.0);
                }
                e.last = (now, s.backpressured_ns);
                v1::SubtaskIoReport {
                    vertex: k.vertex,
                    subtask: k.subtask,
                    records_in: s.records_in,
                    records_out: s.records_out,
                    bytes_in: s.bytes_in,
                    bytes_out: s.bytes_out,
                    backpressured_ms: s.backpressured_ns / 1_000_000,
                }
            })
            .collect()
    }

    /// Drops the counters of `job`'s `attempt` (its last task here ended and was reported).
    pub(crate) fn forget(&self, job: &str, attempt: u32) {
        self.entries()
            .retain(|k, _| !(k.job == job && k.attempt == attempt));
    }

    /// The Prometheus text of everything live now.
    pub fn render(&self) -> String {
        let e = Exposition::new();
        e.gauge(
            &weir_metrics::UPTIME,
            &["taskmanager"],
            self.started.elapsed().as_secs_f64(),
        );
        e.gauge(&weir_metrics::TASKMANAGER_SLOTS, &[], f64::from(self.slots));
        let entries = self.entries();
        e.gauge(
            &weir_metrics::TASKMANAGER_SUBTASKS,
            &[],
            entries.len() as f64,
        );
        for (k, entry) in entries.iter() {
            let s = entry.io.sample();
            let (attempt, vertex, subtask) = (
                k.attempt.to_string(),
                k.vertex.to_string(),
                k.subtask.to_string(),
            );
            let labels = [
                k.job.as_str(),
                attempt.as_str(),
                vertex.as_str(),
                entry.vertex_name.as_str(),
                subtask.as_str(),
            ];
            e.counter(&weir_metrics::TASK_RECORDS_IN, &labels, s.records_in);
            e.counter(&weir_metrics::TASK_RECORDS_OUT, &labels, s.records_out);
            e.counter(&weir_metrics::TASK_BYTES_IN, &labels, s.bytes_in);
            e.counter(&weir_metrics::TASK_BYTES_OUT, &labels, s.bytes_out);
            e.gauge(
                &weir_metrics::TASK_BACKPRESSURED,
                &labels,
                entry.backpressured_ratio,
            );
        }
        e.render()
    }
}

/// Wraps a network pump's `next` so every encoded batch it takes adds its bytes to `io`.
pub(crate) fn count_sent(mut next: NextEncoded, io: Arc<SubtaskIo>) -> NextEncoded {
    Box::new(move || {
        let element = next()?;
        if let EncodedElement::Batch(bytes) = &element {
            SubtaskIo::add(&io.bytes_out, bytes.len() as u64);
        }
        Some(element)
    })
}

/// Wraps a network pump's `push` so every encoded batch it hands over adds its bytes to `io`.
pub(crate) fn count_received(mut push: PushEncoded, io: Arc<SubtaskIo>) -> PushEncoded {
    Box::new(move |element| {
        if let EncodedElement::Batch(bytes) = &element {
            SubtaskIo::add(&io.bytes_in, bytes.len() as u64);
        }
        push(element)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_hold_one_attempts_subtasks_and_forget_drops_them() {
        let m = TaskManagerMetrics::new(2);
        let a = m.register("j", 0, 1, 0, "Map");
        let _b = m.register("j", 1, 1, 0, "Map");
        SubtaskIo::add(&a.records_in, 7);
        SubtaskIo::add(&a.backpressured_ns, 3_500_000);
        let r = m.reports("j", 0);
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].records_in, r[0].backpressured_ms), (7, 3));
        m.forget("j", 0);
        assert!(m.reports("j", 0).is_empty());
        assert_eq!(m.reports("j", 1).len(), 1);
    }

    #[test]
    fn the_pump_wrappers_count_batch_bytes_and_nothing_else() {
        let io = Arc::new(SubtaskIo::default());
        let mut items = vec![
            EncodedElement::Batch(vec![0; 10]),
            EncodedElement::Watermark(3),
            EncodedElement::Batch(vec![0; 5]),
        ]
        .into_iter();
        let mut next = count_sent(Box::new(move || items.next()), io.clone());
        while next().is_some() {}
        assert_eq!(io.sample().bytes_out, 15);
        let mut push = count_received(Box::new(|_| Ok(())), io.clone());
        push(EncodedElement::Batch(vec![0; 4])).unwrap();
        push(EncodedElement::EndOfInput).unwrap();
        assert_eq!(io.sample().bytes_in, 4);
    }

    #[test]
    fn the_rendered_text_names_each_subtask_with_its_vertex() {
        let m = TaskManagerMetrics::new(3);
        let a = m.register("abc", 2, 1, 0, "Keyed Aggregation");
        SubtaskIo::add(&a.records_out, 11);
        let text = m.render();
        assert!(text.contains("weir_taskmanager_slots 3"), "{text}");
        assert!(
            text.contains(r#"weir_task_records_out_total{job_id="abc",attempt="2",vertex="1",vertex_name="Keyed Aggregation",subtask="0"} 11"#),
            "{text}"
        );
    }
}
