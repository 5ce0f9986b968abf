//! Event time: where a record's timestamp comes from, how watermarks are generated from those
//! timestamps ([`WatermarkStrategy`]), and the chained operator that generates them.
//!
//! A timestamp is a function of the record (`Fn(&T) -> i64`, milliseconds), declared on the
//! stream with [`crate::DataStream::assign_timestamps_and_watermarks`] (which also generates
//! watermarks) or [`crate::DataStream::with_timestamps`] (which only names the timestamp).
//! Records carry no timestamp of their own: operators that keep the record type (`filter`,
//! `key_by`, `union`, repartitioning) keep the stream's timestamps, and operators that change it
//! (`map`, `process`, windows) produce a stream whose timestamps the job declares again if it
//! needs them. Window results carry their window, so `with_timestamps(|w| w.end - 1)` gives
//! them Flink's result timestamp.
//!
//! Watermarks are generated per subtask of the operator the strategy is assigned at (usually
//! chained to a source, so per source split: one reader per subtask). The generator's state is
//! part of every checkpoint, so a restored run generates the same watermarks from the same
//! records as a run that never failed.

use crate::link::Link;
use crate::operators::OpIdent;
use crate::snapshot::{ChainSnapshot, OperatorPart};
use crate::TaskError;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir_types::{Barrier, CheckpointId, OperatorUid, Watermark, WatermarkStatus};

/// A record's event time in milliseconds.
pub type TimestampFn<T> = Arc<dyn Fn(&T) -> i64 + Send + Sync>;

/// Generates watermarks from the timestamps a subtask sees, as Flink's `WatermarkGenerator`.
pub trait WatermarkGenerator<T>: Send {
    /// Sees one record and its timestamp.
    fn on_event(&mut self, record: &T, timestamp: i64);

    /// The watermark the records seen so far allow: no record with a timestamp at or below
    /// it is expected any more. `None` until there is one. Asked periodically.
    fn current(&self) -> Option<i64>;

    /// What to checkpoint so that a restored generator continues where this one was
    /// (`None`: it starts afresh after a restore).
    fn snapshot(&self) -> Option<Vec<u8>> {
        None
    }

    /// Continues from bytes [`snapshot`](Self::snapshot) returned. The error says why the
    /// bytes do not fit.
    fn restore(&mut self, bytes: &[u8]) -> Result<(), String> {
        let _ = bytes;
        Ok(())
    }
}

/// Watermarks that trail the largest timestamp seen by a fixed bound: records may arrive out
/// of order by at most `bound` (Flink's `forBoundedOutOfOrderness`). The watermark is
/// `max_timestamp - bound - 1`.
#[derive(Clone, Debug)]
pub struct BoundedOutOfOrderness {
    bound_ms: i64,
    max_timestamp: Option<i64>,
}

impl BoundedOutOfOrderness {
    /// Records arrive out of order by at most `bound`.
    pub fn new(bound: Duration) -> Self {
        Self {
            bound_ms: i64::try_from(bound.as_millis()).unwrap_or(i64::MAX),
            max_timestamp: None,
        }
    }
}

impl<T> WatermarkGenerator<T> for BoundedOutOfOrderness {
    fn on_event(&mut self, _record: &T, timestamp: i64) {
        self.max_timestamp = Some(self.max_timestamp.map_or(timestamp, |m| m.max(timestamp)));
    }

    fn current(&self) -> Option<i64> {
        self.max_timestamp
            .map(|m| m.saturating_sub(self.bound_ms).saturating_sub(1))
    }

    fn snapshot(&self) -> Option<Vec<u8>> {
        self.max_timestamp.map(|m| m.to_be_bytes().to_vec())
    }

    fn restore(&mut self, bytes: &[u8]) -> Result<(), String> {
        let b: [u8; 8] = bytes
            .try_into()
            .map_err(|_| format!("expected 8 bytes of a timestamp, found {}", bytes.len()))?;
        self.max_timestamp = Some(i64::from_be_bytes(b));
        Ok(())
    }
}

/// Makes one generator per subtask.
pub type MakeGenerator<T> = Arc<dyn Fn() -> Box<dyn WatermarkGenerator<T>> + Send + Sync>;

/// How a stream's timestamps are read and its watermarks generated, as Flink's
/// `WatermarkStrategy`.
pub struct WatermarkStrategy<T> {
    pub(crate) timestamps: TimestampFn<T>,
    pub(crate) generator: MakeGenerator<T>,
    pub(crate) idleness: Option<Duration>,
    pub(crate) interval: Duration,
    pub(crate) description: String,
}

impl<T> Clone for WatermarkStrategy<T> {
    fn clone(&self) -> Self {
        Self {
            timestamps: self.timestamps.clone(),
            generator: self.generator.clone(),
            idleness: self.idleness,
            interval: self.interval,
            description: self.description.clone(),
        }
    }
}

/// How often a watermark is generated unless a strategy says otherwise (Flink's
/// `pipeline.auto-watermark-interval`).
pub const DEFAULT_WATERMARK_INTERVAL: Duration = Duration::from_millis(200);

impl<T: 'static> WatermarkStrategy<T> {
    /// Records arrive out of order by at most `bound`; `timestamp` reads a record's event
    /// time (ms).
    pub fn bounded_out_of_orderness(
        bound: Duration,
        timestamp: impl Fn(&T) -> i64 + Send + Sync + 'static,
    ) -> Self {
        Self::custom(
            &format!("bounded out-of-orderness {}", crate::time::show(bound)),
            timestamp,
            move || Box::new(BoundedOutOfOrderness::new(bound)),
        )
    }

    /// Timestamps only ever rise (a bound of 0).
    pub fn ascending(timestamp: impl Fn(&T) -> i64 + Send + Sync + 'static) -> Self {
        Self::custom("ascending", timestamp, || {
            Box::new(BoundedOutOfOrderness::new(Duration::ZERO))
        })
    }

    /// Watermarks from a generator of the job's own; `name` shows in `weir plan`.
    pub fn custom(
        name: &str,
        timestamp: impl Fn(&T) -> i64 + Send + Sync + 'static,
        generator: impl Fn() -> Box<dyn WatermarkGenerator<T>> + Send + Sync + 'static,
    ) -> Self {
        Self {
            timestamps: Arc::new(timestamp),
            generator: Arc::new(generator),
            idleness: None,
            interval: DEFAULT_WATERMARK_INTERVAL,
            description: name.to_string(),
        }
    }

    /// A subtask that sees no record for `timeout` is idle: downstream operators leave it out
    /// of their minimum watermark until it sees a record again (a split with no data does not
    /// hold event time back).
    pub fn with_idleness(mut self, timeout: Duration) -> Self {
        self.idleness = Some(timeout);
        self
    }

    /// Generates a watermark at most once per `interval` (default 200 ms); zero means after
    /// every batch the subtask reads.
    pub fn with_interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// What `weir plan` shows for this strategy.
    pub(crate) fn describe(&self) -> String {
        let mut s = format!("Watermarks: {}", self.description);
        if let Some(idle) = self.idleness {
            s.push_str(&format!(", idle after {}", show(idle)));
        }
        s
    }
}

/// A duration as people write it (`5s`, `250ms`).
pub(crate) fn show(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) && ms > 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// What the watermark operator checkpoints: the last watermark it emitted and its generator's
/// own bytes.
#[derive(Serialize, Deserialize)]
struct GeneratorState {
    emitted: Option<i64>,
    generator: Option<Vec<u8>>,
}

/// Generates watermarks from the records passing through; swallows watermarks from upstream
/// (this operator's strategy replaces them, as in Flink).
pub(crate) struct WatermarksOp<T> {
    pub ident: OpIdent,
    pub uid: OperatorUid,
    pub timestamps: TimestampFn<T>,
    pub generator: Box<dyn WatermarkGenerator<T>>,
    pub idleness: Option<Duration>,
    pub interval: Duration,
    pub next: Box<dyn Link<T>>,
    emitted: Option<i64>,
    /// A watermark restored from a checkpoint, sent downstream (whose operators start afresh)
    /// before the first record or watermark of this attempt.
    resend: Option<i64>,
    last_emit: Option<Instant>,
    last_record: Instant,
    idle: bool,
}

impl<T> WatermarksOp<T> {
    pub(crate) fn new(
        ident: OpIdent,
        uid: OperatorUid,
        strategy: &WatermarkStrategy<T>,
        next: Box<dyn Link<T>>,
        restored: Option<&[u8]>,
    ) -> Result<Self, TaskError> {
        let mut generator = (strategy.generator)();
        let mut emitted = None;
        if let Some(bytes) = restored {
            let state: GeneratorState = postcard::from_bytes(bytes).map_err(|e| {
                ident.fail(format!("the restored watermark state does not decode: {e}"))
            })?;
            if let Some(g) = &state.generator {
                generator.restore(g).map_err(|e| {
                    ident.fail(format!(
                        "the watermark generator refused its restored state: {e}"
                    ))
                })?;
            }
            emitted = state.emitted;
        }
        Ok(Self {
            ident,
            uid,
            timestamps: strategy.timestamps.clone(),
            generator,
            idleness: strategy.idleness,
            interval: strategy.interval,
            next,
            emitted,
            resend: emitted,
            last_emit: None,
            last_record: Instant::now(),
            idle: false,
        })
    }

    /// Sends the restored watermark, once.
    fn resend(&mut self) -> Result<(), TaskError> {
        match self.resend.take() {
            Some(wm) => self.next.watermark(Watermark(wm)),
            None => Ok(()),
        }
    }

    fn seen(&mut self, record: &T) {
        let ts = (self.timestamps)(record);
        self.generator.on_event(record, ts);
    }

    fn active(&mut self) -> Result<(), TaskError> {
        self.last_record = Instant::now();
        if self.idle {
            self.idle = false;
            self.next.watermark_status(WatermarkStatus::Active)?;
        }
        Ok(())
    }

    /// Emits the generator's watermark when the interval passed and it rose; marks the
    /// subtask idle when no record came for the idle timeout.
    fn maybe_emit(&mut self) -> Result<(), TaskError> {
        let now = Instant::now();
        let due = self
            .last_emit
            .is_none_or(|t| now.duration_since(t) >= self.interval);
        if due {
            self.last_emit = Some(now);
            if let Some(wm) = self.generator.current() {
                if self.emitted.is_none_or(|e| wm > e) {
                    self.emitted = Some(wm);
                    self.next.watermark(Watermark(wm))?;
                }
            }
        }
        if let Some(timeout) = self.idleness {
            if !self.idle && now.duration_since(self.last_record) >= timeout {
                self.idle = true;
                self.next.watermark_status(WatermarkStatus::Idle)?;
            }
        }
        Ok(())
    }
}

impl<T: Send> Link<T> for WatermarksOp<T> {
    fn push(&mut self, record: T) -> Result<(), TaskError> {
        self.resend()?;
        self.seen(&record);
        self.active()?;
        self.next.push(record)
    }

    fn push_batch(&mut self, batch: Vec<T>) -> Result<(), TaskError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.resend()?;
        for r in &batch {
            self.seen(r);
        }
        self.active()?;
        self.next.push_batch(batch)
    }

    fn watermark(&mut self, _wm: Watermark) -> Result<(), TaskError> {
        Ok(())
    }

    fn watermark_status(&mut self, _status: WatermarkStatus) -> Result<(), TaskError> {
        Ok(())
    }

    fn end_of_input(&mut self) -> Result<(), TaskError> {
        // Downstream treats an ended input as the final watermark.
        self.next.end_of_input()
    }

    fn flush(&mut self, force: bool) -> Result<(), TaskError> {
        self.resend()?;
        self.maybe_emit()?;
        self.next.flush(force)
    }

    fn barrier(&mut self, barrier: Barrier, snapshot: &mut ChainSnapshot) -> Result<(), TaskError> {
        let state = GeneratorState {
            emitted: self.emitted,
            generator: self.generator.snapshot(),
        };
        let bytes = postcard::to_allocvec(&state).map_err(|e| {
            self.ident
                .fail(format!("cannot encode the watermark state: {e}"))
        })?;
        snapshot.add(&self.uid, OperatorPart::Inline(bytes));
        self.next.barrier(barrier, snapshot)
    }

    fn checkpoint_complete(&mut self, id: CheckpointId) -> Result<(), TaskError> {
        self.next.checkpoint_complete(id)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A chain end that records the events it sees, for the event-time tests.
    pub(crate) struct Recorder(pub Arc<Mutex<Vec<String>>>);

    impl<T: std::fmt::Debug + Send> Link<T> for Recorder {
        fn push(&mut self, record: T) -> Result<(), TaskError> {
            self.0.lock().unwrap().push(format!("{record:?}"));
            Ok(())
        }
        fn watermark(&mut self, wm: Watermark) -> Result<(), TaskError> {
            self.0.lock().unwrap().push(format!("wm {}", wm.0));
            Ok(())
        }
        fn watermark_status(&mut self, status: WatermarkStatus) -> Result<(), TaskError> {
            self.0.lock().unwrap().push(format!("{status:?}"));
            Ok(())
        }
        fn end_of_input(&mut self) -> Result<(), TaskError> {
            self.0.lock().unwrap().push("end".into());
            Ok(())
        }
        fn flush(&mut self, _force: bool) -> Result<(), TaskError> {
            Ok(())
        }
        fn barrier(&mut self, _b: Barrier, _s: &mut ChainSnapshot) -> Result<(), TaskError> {
            Ok(())
        }
        fn checkpoint_complete(&mut self, _id: CheckpointId) -> Result<(), TaskError> {
            Ok(())
        }
    }

    #[test]
    fn a_restored_watermark_operator_sends_its_watermark_before_any_record() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let strategy = WatermarkStrategy::ascending(|t: &i64| *t);
        let restored = postcard::to_allocvec(&GeneratorState {
            emitted: Some(499),
            generator: Some(500i64.to_be_bytes().to_vec()),
        })
        .unwrap();
        let mut op = WatermarksOp::new(
            OpIdent {
                uid: "wm".into(),
                subtask: weir_types::SubtaskIndex(0),
                parallelism: 1,
            },
            OperatorUid::new("wm").unwrap(),
            &strategy,
            Box::new(Recorder(seen.clone())),
            Some(&restored),
        )
        .unwrap();
        op.push_batch(vec![501]).unwrap();
        op.flush(false).unwrap();
        assert_eq!(
            *seen.lock().unwrap(),
            vec!["wm 499".to_string(), "501".into(), "wm 500".into()],
            "downstream operators start afresh: they must get the restored watermark first"
        );
    }

    #[test]
    fn a_bounded_generator_trails_the_largest_timestamp_by_its_bound_and_one() {
        let mut g = BoundedOutOfOrderness::new(Duration::from_millis(100));
        assert_eq!(WatermarkGenerator::<()>::current(&g), None);
        g.on_event(&(), 1_000);
        g.on_event(&(), 900);
        assert_eq!(WatermarkGenerator::<()>::current(&g), Some(899));
        g.on_event(&(), 1_500);
        assert_eq!(WatermarkGenerator::<()>::current(&g), Some(1_399));
    }

    #[test]
    fn a_restored_generator_continues_from_its_largest_timestamp() {
        let mut g = BoundedOutOfOrderness::new(Duration::from_millis(10));
        g.on_event(&(), 77);
        let bytes = WatermarkGenerator::<()>::snapshot(&g).expect("a timestamp was seen");
        let mut h = BoundedOutOfOrderness::new(Duration::from_millis(10));
        WatermarkGenerator::<()>::restore(&mut h, &bytes).unwrap();
        assert_eq!(WatermarkGenerator::<()>::current(&h), Some(66));
        let err = WatermarkGenerator::<()>::restore(&mut h, &[1, 2]).unwrap_err();
        assert!(err.contains("8 bytes"), "{err}");
    }

    #[test]
    fn extreme_timestamps_saturate_instead_of_wrapping() {
        let mut g = BoundedOutOfOrderness::new(Duration::from_secs(5));
        g.on_event(&(), i64::MIN);
        assert_eq!(WatermarkGenerator::<()>::current(&g), Some(i64::MIN));
    }
}
