//! What travels on a stream channel: record batches and in-band control events.
//!
//! Barriers and watermarks travel in the same channel as records, so a consumer sees them in
//! exactly the order the producer emitted them; a producer flushes its record buffer before
//! emitting either.

use crate::CheckpointId;
use serde::{Deserialize, Serialize};

/// An event-time watermark: no record with a timestamp `<=` this value follows on the channel.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Watermark(pub i64);

impl Watermark {
    /// The watermark a finished input holds: nothing can follow it.
    pub const MAX: Watermark = Watermark(i64::MAX);
}

/// Whether a channel's producer is generating watermarks or is idle (Flink's watermark
/// status). A consumer leaves idle channels out of its minimum watermark, so an input with
/// no data does not hold event time back; a channel is active again with its next record or
/// status.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WatermarkStatus {
    /// The producer saw no record for its idle timeout.
    Idle,
    /// The producer generates watermarks again.
    Active,
}

/// A checkpoint barrier, injected at the sources by the checkpoint coordinator.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Barrier {
    /// The checkpoint the barrier belongs to.
    pub checkpoint: CheckpointId,
    /// The incremental base: the latest *completed* checkpoint when this one was triggered,
    /// whose files the coordinator keeps alive until this checkpoint completes or aborts. A
    /// task may reuse shareable files it uploaded for exactly that checkpoint, nothing else
    /// (an aborted or pending checkpoint's uploads are never reused).
    pub base: Option<CheckpointId>,
    /// `Some` for a savepoint (self-contained, never subsumed, written to its own folder),
    /// `None` for a checkpoint.
    pub savepoint: Option<SavepointBarrier>,
}

impl Barrier {
    /// Whether this barrier belongs to a savepoint.
    pub fn is_savepoint(&self) -> bool {
        self.savepoint.is_some()
    }

    /// Whether the job stops once this barrier's savepoint completes (`weir stop`): sources
    /// emit nothing after it, and every task ends when it learns the savepoint completed.
    pub fn stops(&self) -> bool {
        self.savepoint.is_some_and(|s| s.stop)
    }
}

/// What a savepoint barrier asks of every task besides a snapshot.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavepointBarrier {
    /// Write keyed state in the backend-neutral canonical format (else the backend's own
    /// files).
    pub canonical: bool,
    /// Stop with this savepoint: sources emit nothing after the barrier, and every task ends
    /// once the savepoint completed (its sinks committed it); an aborted one resumes the job.
    pub stop: bool,
}

/// One message on a channel between two tasks.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamElement<T> {
    /// A batch of records, in order.
    Batch(Vec<T>),
    /// An event-time watermark.
    Watermark(Watermark),
    /// The producer went idle or became active again.
    Status(WatermarkStatus),
    /// A checkpoint barrier.
    Barrier(Barrier),
    /// The producer has finished; it sends nothing after this.
    EndOfInput,
}

/// A [`StreamElement`] with its records encoded (one batch = one opaque byte string): what
/// crosses a process boundary. The runtime encodes and decodes the records; the data plane
/// moves these as they are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EncodedElement {
    /// A batch of records, encoded by the edge's serializer.
    Batch(Vec<u8>),
    /// An event-time watermark (ms).
    Watermark(i64),
    /// The producer went idle or became active again.
    Status(WatermarkStatus),
    /// A checkpoint barrier.
    Barrier(Barrier),
    /// The producer finished; nothing follows.
    EndOfInput,
}

impl EncodedElement {
    /// The element's kind, for messages and logs (a batch's bytes are not printed).
    pub fn kind(&self) -> &'static str {
        match self {
            EncodedElement::Batch(_) => "batch",
            EncodedElement::Watermark(_) => "watermark",
            EncodedElement::Status(_) => "watermark_status",
            EncodedElement::Barrier(_) => "barrier",
            EncodedElement::EndOfInput => "end_of_input",
        }
    }
}
