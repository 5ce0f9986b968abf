//! Counters a running job keeps, updated per batch (never per record) so they cost nothing on
//! the hot path.

use std::sync::atomic::{AtomicU64, Ordering};

/// Job-wide counters, shared by every task of the job.
#[derive(Debug, Default)]
pub struct JobMetrics {
    /// Records emitted by all source subtasks.
    pub source_records: AtomicU64,
    /// Records written by all sink subtasks.
    pub sink_records: AtomicU64,
    /// Bytes of keyed state at end of input, summed over keyed subtasks.
    pub state_bytes: AtomicU64,
}

impl JobMetrics {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// One subtask's data-plane counters: what crossed its input and output channels and how long
/// its writers waited for room. Updated per batch by the task thread; read by whoever exports
/// them (a TaskManager's progress reports and its `/metrics` endpoint).
///
/// Records count at the task's edges: a chained operator's records are not counted between
/// its operators, a source vertex has no records in and a sink vertex no records out. Bytes
/// count only on channels to or from another process (an in-memory channel is never
/// encoded); the TaskManager's exchange pump adds them.
#[derive(Debug, Default)]
pub struct SubtaskIo {
    /// Records read from input channels.
    pub records_in: AtomicU64,
    /// Records written to output channels (a broadcast counts once per target).
    pub records_out: AtomicU64,
    /// Encoded bytes received from other processes.
    pub bytes_in: AtomicU64,
    /// Encoded bytes sent to other processes.
    pub bytes_out: AtomicU64,
    /// Nanoseconds the task waited for room in a full output channel (backpressure).
    pub backpressured_ns: AtomicU64,
}

/// A reading of [`SubtaskIo`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SubtaskIoSample {
    /// See [`SubtaskIo::records_in`].
    pub records_in: u64,
    /// See [`SubtaskIo::records_out`].
    pub records_out: u64,
    /// See [`SubtaskIo::bytes_in`].
    pub bytes_in: u64,
    /// See [`SubtaskIo::bytes_out`].
    pub bytes_out: u64,
    /// See [`SubtaskIo::backpressured_ns`].
    pub backpressured_ns: u64,
}

impl SubtaskIo {
    /// Reads every counter (each one atomically; together they are a close, not exact, cut).
    pub fn sample(&self) -> SubtaskIoSample {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        SubtaskIoSample {
            records_in: get(&self.records_in),
            records_out: get(&self.records_out),
            bytes_in: get(&self.bytes_in),
            bytes_out: get(&self.bytes_out),
            backpressured_ns: get(&self.backpressured_ns),
        }
    }

    /// Adds `n` to `counter`.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}
