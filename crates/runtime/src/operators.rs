//! The built-in operators, each a [`Link`] that wraps the next link of its chain.

use crate::error::chain;
use crate::function::TimeState;
use crate::function::{
    Collector, EndOfInputContext, KeyedContext, KeyedProcessFunction, SinkWriter,
};
use crate::link::Link;
use crate::metrics::JobMetrics;
use crate::side::{Event as SideEvent, SideOutputs};
use crate::snapshot::{
    CanonicalSource, ChainSnapshot, KeyedUploads, OperatorPart, SINK_MANIFEST_FILE,
};
use crate::time::TimestampFn;
use crate::timers::{now_ms, TimeDomain, Timer};
use crate::{TaskError, UserError};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::marker::PhantomData;
use std::sync::Arc;
use weir_state::{KeyedScope, KeyedStateBackend};
use weir_types::{
    key_group_for_key_bytes, Barrier, CheckpointId, KeyGroupRange, OperatorUid, SubtaskIndex,
    Watermark, WatermarkStatus,
};

/// Who an operator is, for error messages.
#[derive(Clone, Debug)]
pub(crate) struct OpIdent {
    pub uid: String,
    pub subtask: SubtaskIndex,
    pub parallelism: u32,
}

impl OpIdent {
    pub(crate) fn fail(&self, message: String) -> TaskError {
        TaskError::Operator {
            uid: self.uid.clone(),
            subtask: self.subtask,
            parallelism: self.parallelism,
            message,
        }
    }

    pub(crate) fn user(&self, err: UserError) -> TaskError {
        // A state declared with another kind than the restored one: no restart helps.
        if let Some(e @ weir_state::StateError::KindMismatch { .. }) =
            err.downcast_ref::<weir_state::StateError>()
        {
            return self.incompatible(e);
        }
        self.fail(chain(&*err))
    }

    /// The restored state does not fit this operator.
    pub(crate) fn incompatible(&self, e: &weir_state::StateError) -> TaskError {
        TaskError::IncompatibleState {
            uid: self.uid.clone(),
            subtask: self.subtask,
            detail: chain(e),
        }
    }
}

/// Serialises a key as state and partitioning see it (postcard).
pub(crate) fn encode_key<K: Serialize>(key: &K, buf: &mut Vec<u8>) -> Result<(), String> {
    let taken = std::mem::take(buf);
    *buf = postcard::to_extend(key, taken).map_err(|e| e.to_string())?;
    Ok(())
}

macro_rules! forward_events {
    () => {
        fn watermark(&mut self, wm: Watermark) -> Result<(), TaskError> {
            self.next.watermark(wm)
        }
        fn watermark_status(
            &mut self,
            status: weir_types::WatermarkStatus,
        ) -> Result<(), TaskError> {
            self.next.watermark_status(status)
        }
        fn end_of_input(&mut self) -> Result<(), TaskError> {
            self.next.end_of_input()
        }
        fn flush(&mut self, force: bool) -> Result<(), TaskError> {
            self.next.flush(force)
        }
        fn barrier(
            &mut self,
            barrier: weir_types::Barrier,
            snapshot: &mut crate::snapshot::ChainSnapshot,
        ) -> Result<(), TaskError> {
            self.next.barrier(barrier, snapshot)
        }
        fn checkpoint_complete(&mut self, id: weir_types::CheckpointId) -> Result<(), TaskError> {
            self.next.checkpoint_complete(id)
        }
    };
}

/// `map`.
pub(crate) struct MapOp<IN, OUT, F> {
    pub f: Arc<F>,
    pub next: Box<dyn Link<OUT>>,
    pub _t: PhantomData<fn(IN)>,
}

impl<IN, OUT, F> Link<IN> for MapOp<IN, OUT, F>
where
    F: Fn(IN) -> OUT + Send + Sync,
    OUT: Send,
{
    fn push(&mut self, record: IN) -> Result<(), TaskError> {
        self.next.push((self.f)(record))
    }
    fn push_batch(&mut self, batch: Vec<IN>) -> Result<(), TaskError> {
        let f = &self.f;
        self.next
            .push_batch(batch.into_iter().map(|r| f(r)).collect())
    }
    forward_events!();
}

/// `try_map`: an error fails the task, naming the operator.
pub(crate) struct TryMapOp<IN, OUT, F> {
    pub ident: OpIdent,
    pub f: Arc<F>,
    pub next: Box<dyn Link<OUT>>,
    pub _t: PhantomData<fn(IN)>,
}

impl<IN, OUT, F> Link<IN> for TryMapOp<IN, OUT, F>
where
    F: Fn(IN) -> Result<OUT, UserError> + Send + Sync,
    OUT: Send,
{
    fn push(&mut self, record: IN) -> Result<(), TaskError> {
        let out = (self.f)(record).map_err(|e| self.ident.user(e))?;
        self.next.push(out)
    }
    fn push_batch(&mut self, batch: Vec<IN>) -> Result<(), TaskError> {
        let f = &self.f;
        let out = batch
            .into_iter()
            .map(|r| f(r))
            .collect::<Result<Vec<OUT>, UserError>>()
            .map_err(|e| self.ident.user(e))?;
        self.next.push_batch(out)
    }
    forward_events!();
}

/// `filter`.
pub(crate) struct FilterOp<T, F> {
    pub f: Arc<F>,
    pub next: Box<dyn Link<T>>,
}

impl<T, F> Link<T> for FilterOp<T, F>
where
    F: Fn(&T) -> bool + Send + Sync,
    T: Send,
{
    fn push(&mut self, record: T) -> Result<(), TaskError> {
        if (self.f)(&record) {
            self.next.push(record)?;
        }
        Ok(())
    }
    fn push_batch(&mut self, mut batch: Vec<T>) -> Result<(), TaskError> {
        let f = &self.f;
        batch.retain(|r| f(r));
        self.next.push_batch(batch)
    }
    forward_events!();
}

/// `flat_map`.
pub(crate) struct FlatMapOp<IN, OUT, F> {
    pub f: Arc<F>,
    pub next: Box<dyn Link<OUT>>,
    pub _t: PhantomData<fn(IN)>,
}

impl<IN, OUT, I, F> Link<IN> for FlatMapOp<IN, OUT, F>
where
    F: Fn(IN) -> I + Send + Sync,
    I: IntoIterator<Item = OUT>,
    OUT: Send,
{
    fn push(&mut self, record: IN) -> Result<(), TaskError> {
        for o in (self.f)(record) {
            self.next.push(o)?;
        }
        Ok(())
    }
    fn push_batch(&mut self, batch: Vec<IN>) -> Result<(), TaskError> {
        let f = &self.f;
        let out: Vec<OUT> = batch.into_iter().flat_map(|r| f(r)).collect();
        self.next.push_batch(out)
    }
    forward_events!();
}

/// A keyed process function over its subtask's state backend.
pub(crate) struct KeyedProcessOp<K, IN, OUT, F> {
    pub ident: OpIdent,
    pub key_fn: Arc<dyn Fn(&IN) -> K + Send + Sync>,
    pub f: F,
    pub backend: Box<dyn KeyedStateBackend>,
    pub max_parallelism: u32,
    pub key_groups: KeyGroupRange,
    pub key_buf: Vec<u8>,
    pub scratch: Vec<u8>,
    /// The function's output; owns the next link of the chain.
    pub out: Collector<OUT>,
    pub metrics: Arc<JobMetrics>,
    /// The operator's uid, as snapshots record it.
    pub uid: OperatorUid,
    /// What this operator uploaded per checkpoint (its incremental bases).
    pub uploads: KeyedUploads,
    /// Restored from a checkpoint taken after this subtask's end of input: the function's
    /// end-of-input output was already emitted (and staged by the sinks); do not repeat it.
    pub restored_finished: bool,
    /// How a canonical savepoint reads this operator's snapshot back.
    pub canonical: CanonicalSource,
    /// The input's event time, when the stream has timestamps.
    pub timestamps: Option<TimestampFn<IN>>,
    /// The watermark and the timers.
    pub time: TimeState,
    /// Side outputs the job reads.
    pub side: SideOutputs,
}

impl<K, IN, OUT, F> KeyedProcessOp<K, IN, OUT, F>
where
    K: Serialize + DeserializeOwned + Send,
    IN: Send,
    OUT: Send,
    F: KeyedProcessFunction<K, IN, OUT>,
{
    fn process(&mut self, record: IN) -> Result<(), TaskError> {
        let key = (self.key_fn)(&record);
        self.key_buf.clear();
        encode_key(&key, &mut self.key_buf)
            .map_err(|e| self.ident.fail(format!("cannot serialise the key: {e}")))?;
        let kg = key_group_for_key_bytes(&self.key_buf, self.max_parallelism);
        if !self.key_groups.contains(kg) {
            // The partitioner routes by the same function: a foreign key group is a bug.
            return Err(TaskError::Invariant {
                uid: self.ident.uid.clone(),
                subtask: self.ident.subtask,
                detail: format!(
                    "received a record of {kg}, outside the owned range {}",
                    self.key_groups
                ),
            });
        }
        let timestamp = self.timestamps.as_ref().map(|f| f(&record));
        let scope = KeyedScope::new(&mut *self.backend, kg, &self.key_buf, &mut self.scratch);
        let mut ctx = KeyedContext {
            key: &key,
            scope,
            timestamp,
            time: &mut self.time,
            side: &mut self.side,
        };
        self.f
            .process_element(record, &mut ctx, &mut self.out)
            .map_err(|e| self.ident.user(e))
    }

    /// Fires every timer of `domain` due at `now`, earliest first (timers registered while
    /// firing fire too when due).
    fn fire(&mut self, domain: TimeDomain, now: i64) -> Result<(), TaskError> {
        while self.time.timers.next_due(domain).is_some_and(|t| t <= now) {
            let entry = self
                .time
                .timers
                .pop_due(&mut *self.backend, domain, now)
                .map_err(|e| self.ident.fail(chain(&e)))?
                .expect("a due timer");
            let key: K = postcard::from_bytes(&entry.key).map_err(|e| {
                self.ident
                    .fail(format!("a timer's key does not decode: {e}"))
            })?;
            let timer = Timer {
                domain,
                timestamp: entry.timestamp,
                namespace: entry.namespace.into_vec(),
            };
            let scope = KeyedScope::new(
                &mut *self.backend,
                entry.key_group,
                &entry.key,
                &mut self.scratch,
            );
            let mut ctx = KeyedContext {
                key: &key,
                scope,
                timestamp: (domain == TimeDomain::EventTime).then_some(timer.timestamp),
                time: &mut self.time,
                side: &mut self.side,
            };
            self.f
                .on_timer(&timer, &mut ctx, &mut self.out)
                .map_err(|e| self.ident.user(e))?;
        }
        Ok(())
    }

    /// Passes buffered output on, to the main and every side output.
    fn drain(&mut self) -> Result<(), TaskError> {
        self.out.drain()?;
        self.side.drain()
    }
}

impl<K, IN, OUT, F> Link<IN> for KeyedProcessOp<K, IN, OUT, F>
where
    K: Serialize + DeserializeOwned + Send,
    IN: Send,
    OUT: Send,
    F: KeyedProcessFunction<K, IN, OUT>,
{
    fn push(&mut self, record: IN) -> Result<(), TaskError> {
        self.process(record)?;
        self.drain()
    }

    fn push_batch(&mut self, batch: Vec<IN>) -> Result<(), TaskError> {
        for r in batch {
            self.process(r)?;
        }
        self.drain()
    }

    fn watermark(&mut self, wm: Watermark) -> Result<(), TaskError> {
        self.time.watermark = wm.0;
        self.fire(TimeDomain::EventTime, wm.0)?;
        self.drain()?;
        self.side.event(SideEvent::Watermark(wm))?;
        self.out.next().watermark(wm)
    }

    fn watermark_status(&mut self, status: WatermarkStatus) -> Result<(), TaskError> {
        self.side.event(SideEvent::Status(status))?;
        self.out.next().watermark_status(status)
    }

    fn end_of_input(&mut self) -> Result<(), TaskError> {
        if !self.restored_finished {
            // An ended input is the final watermark: every event-time timer fires.
            self.time.watermark = i64::MAX;
            self.fire(TimeDomain::EventTime, i64::MAX)?;
            let mut ctx = EndOfInputContext {
                backend: &mut *self.backend,
            };
            self.f
                .end_of_input(&mut ctx, &mut self.out)
                .map_err(|e| self.ident.user(e))?;
        }
        self.drain()?;
        self.backend
            .flush()
            .map_err(|e| self.ident.fail(chain(&e)))?;
        let bytes = self
            .backend
            .size_bytes()
            .map_err(|e| self.ident.fail(chain(&e)))?;
        JobMetrics::add(&self.metrics.state_bytes, bytes);
        self.side.event(SideEvent::EndOfInput)?;
        self.out.next().end_of_input()
    }

    fn flush(&mut self, force: bool) -> Result<(), TaskError> {
        if self
            .time
            .timers
            .next_due(TimeDomain::ProcessingTime)
            .is_some()
        {
            self.fire(TimeDomain::ProcessingTime, now_ms())?;
            self.drain()?;
        }
        self.side.event(SideEvent::Flush(force))?;
        self.out.next().flush(force)
    }

    fn barrier(&mut self, barrier: Barrier, snapshot: &mut ChainSnapshot) -> Result<(), TaskError> {
        self.drain()?;
        let local = self
            .backend
            .snapshot(barrier.checkpoint)
            .map_err(|e| self.ident.fail(chain(&e)))?;
        snapshot.add(
            &self.uid,
            OperatorPart::Keyed {
                snapshot: local,
                // A savepoint is self-contained: it reuses nothing.
                base: match barrier.savepoint {
                    None => self.uploads.base_for(barrier.base),
                    Some(_) => None,
                },
                uploads: self.uploads.clone(),
                canonical: barrier
                    .savepoint
                    .filter(|s| s.canonical)
                    .map(|_| self.canonical.clone()),
            },
        );
        self.side.event(SideEvent::Barrier(barrier, snapshot))?;
        self.out.next().barrier(barrier, snapshot)
    }

    fn checkpoint_complete(&mut self, id: CheckpointId) -> Result<(), TaskError> {
        self.uploads.completed(id);
        self.side.event(SideEvent::Complete(id))?;
        self.out.next().checkpoint_complete(id)
    }
}

/// Opens a sink's writer (and with it settles what the restored checkpoint staged).
pub(crate) type OpenWriter<T> =
    Box<dyn FnOnce() -> Result<Box<dyn SinkWriter<T>>, TaskError> + Send>;

/// A sink's writer, opened at the first record, barrier, completion or end of input — never
/// while the chain is assembled: a restored writer publishes and rolls back output, which
/// must not happen when another operator of the job then cannot restore its state.
pub(crate) enum SinkWriterSlot<T> {
    /// Not opened yet.
    Closed(Option<OpenWriter<T>>),
    /// Open.
    Open(Box<dyn SinkWriter<T>>),
}

/// The end of a chain that writes to a sink.
pub(crate) struct SinkOp<T> {
    pub ident: OpIdent,
    pub writer: SinkWriterSlot<T>,
    pub pending: Vec<T>,
    pub batch_size: usize,
    pub metrics: Arc<JobMetrics>,
    /// The operator's uid, as snapshots record it.
    pub uid: OperatorUid,
}

impl<T: Send> SinkOp<T> {
    /// The writer, opened now if it is not yet.
    fn writer(&mut self) -> Result<&mut Box<dyn SinkWriter<T>>, TaskError> {
        if let SinkWriterSlot::Closed(open) = &mut self.writer {
            let open = open.take().ok_or_else(|| {
                self.ident
                    .fail("the sink's writer failed to open before".to_string())
            })?;
            self.writer = SinkWriterSlot::Open(open()?);
        }
        match &mut self.writer {
            SinkWriterSlot::Open(w) => Ok(w),
            SinkWriterSlot::Closed(_) => unreachable!("opened above"),
        }
    }

    fn write(&mut self, batch: Vec<T>) -> Result<(), TaskError> {
        JobMetrics::add(&self.metrics.sink_records, batch.len() as u64);
        let ident = self.ident.clone();
        self.writer()?.write_batch(batch).map_err(|e| ident.user(e))
    }

    fn write_pending(&mut self) -> Result<(), TaskError> {
        if !self.pending.is_empty() {
            let batch = std::mem::take(&mut self.pending);
            self.write(batch)?;
        }
        Ok(())
    }
}

impl<T: Send> Link<T> for SinkOp<T> {
    fn push(&mut self, record: T) -> Result<(), TaskError> {
        self.pending.push(record);
        if self.pending.len() >= self.batch_size {
            self.write_pending()?;
        }
        Ok(())
    }

    fn push_batch(&mut self, batch: Vec<T>) -> Result<(), TaskError> {
        self.write_pending()?;
        self.write(batch)
    }

    fn watermark(&mut self, _wm: Watermark) -> Result<(), TaskError> {
        Ok(())
    }

    fn watermark_status(&mut self, _status: weir_types::WatermarkStatus) -> Result<(), TaskError> {
        Ok(())
    }

    fn end_of_input(&mut self) -> Result<(), TaskError> {
        self.write_pending()?;
        let ident = self.ident.clone();
        self.writer()?.finish().map_err(|e| ident.user(e))
    }

    fn flush(&mut self, _force: bool) -> Result<(), TaskError> {
        self.write_pending()
    }

    fn barrier(&mut self, barrier: Barrier, snapshot: &mut ChainSnapshot) -> Result<(), TaskError> {
        self.write_pending()?;
        let ident = self.ident.clone();
        let manifest = self
            .writer()?
            .prepare_commit(barrier.checkpoint)
            .map_err(|e| ident.user(e))?;
        if let Some(bytes) = manifest {
            snapshot.add(
                &self.uid,
                OperatorPart::PrivateFile {
                    name: SINK_MANIFEST_FILE,
                    bytes,
                },
            );
        }
        Ok(())
    }

    fn checkpoint_complete(&mut self, id: CheckpointId) -> Result<(), TaskError> {
        let ident = self.ident.clone();
        self.writer()?.commit(id).map_err(|e| ident.user(e))
    }
}
