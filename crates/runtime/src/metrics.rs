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
