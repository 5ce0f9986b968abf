//! The traits user code implements: sources, sinks and keyed process functions, with the
//! contexts the runtime hands them.

use crate::link::Link;
use crate::side::{OutputTag, SideOutputs};
use crate::timers::{now_ms, TimeDomain, Timer, TimerService};
use crate::{TaskError, UserError};
use serde::de::DeserializeOwned;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;
use weir_state::{KeyedScope, KeyedStateBackend, StateError, StateRegistry, ValueState};
use weir_types::{CheckpointId, JobId, OperatorUid, SubtaskIndex};

/// Where a source or sink instance runs.
#[derive(Clone, Debug)]
pub struct SourceContext {
    /// The job's id: the same in every attempt and in a resumed run, another for another job.
    pub job: JobId,
    /// The operator's uid.
    pub uid: OperatorUid,
    /// Which subtask.
    pub subtask: SubtaskIndex,
    /// Of how many.
    pub parallelism: u32,
    /// Set when the job is cancelled; a reader that blocks should check it.
    pub cancelled: Arc<AtomicBool>,
    /// Which attempt of the job this is: 0 for the first run, +1 for every restart.
    pub attempt: u32,
    /// Whether the job takes checkpoints. An exactly-once sink publishes only on
    /// [`SinkWriter::commit`] then; without checkpoints it publishes in [`SinkWriter::finish`].
    pub checkpointing: bool,
}

/// Where a sink instance runs (same facts as a source's).
pub type SinkContext = SourceContext;

/// What a [`SourceReader::poll`] call found.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum SourcePoll {
    /// More records may follow at once.
    More,
    /// Nothing to read now; poll again after about this long (rate limit, idle socket).
    Idle(Duration),
    /// The input is exhausted; no record follows.
    Finished,
}

/// A source: creates one reader per subtask.
pub trait Source<T>: Send + Sync + 'static {
    /// Display name (`generator`, `file`, `socket`).
    fn name(&self) -> String;
    /// Whether the source can run with parallelism above 1 (a socket cannot).
    fn parallel(&self) -> bool {
        true
    }
    /// Opens the reader of one subtask, at the start of its input or — after a failure — at
    /// `restored`, the bytes its reader returned from [`SourceReader::snapshot_position`] for
    /// the checkpoint being restored. Errors name the input that cannot be read, or the
    /// position that does not fit it.
    fn create_reader(
        &self,
        ctx: &SourceContext,
        restored: Option<&[u8]>,
    ) -> Result<Box<dyn SourceReader<T>>, UserError>;

    /// Opens the reader of one subtask when the job restores at another parallelism than
    /// `old_parallelism`, the one `positions` were taken at: `positions` holds every old
    /// subtask's position (its index and bytes). Over all new subtasks, every record the old
    /// readers had not returned must be read exactly once. The default refuses: the source
    /// cannot be rescaled.
    fn create_rescaled_reader(
        &self,
        ctx: &SourceContext,
        old_parallelism: u32,
        positions: &[(u32, Vec<u8>)],
    ) -> Result<Box<dyn SourceReader<T>>, UserError> {
        let _ = positions;
        Err(format!(
            "the {} source cannot restore positions taken at parallelism {old_parallelism} \
             at parallelism {}; restore it at {old_parallelism}",
            self.name(),
            ctx.parallelism
        )
        .into())
    }
}

/// One subtask's reader. Called from the task thread only; it may block briefly (bounded),
/// never indefinitely.
pub trait SourceReader<T>: Send {
    /// Appends up to `max` records to `out` and says whether more follow.
    fn poll(&mut self, out: &mut Vec<T>, max: usize) -> Result<SourcePoll, UserError>;

    /// The reader's position after the last record it returned, for a checkpoint: the bytes
    /// [`Source::create_reader`] resumes from. Called between polls, on the task thread.
    /// `None` means the source cannot replay (a socket): after a restore it starts afresh and
    /// records read since the last checkpoint are lost, so such a source is not exactly-once.
    fn snapshot_position(&mut self) -> Result<Option<Vec<u8>>, UserError> {
        Ok(None)
    }
}

/// A sink: creates one writer per subtask.
pub trait Sink<T>: Send + Sync + 'static {
    /// Display name (`print`, `file`, `blackhole`).
    fn name(&self) -> String;
    /// Opens the writer of one subtask. After a failure, `restored` is what the writer's
    /// [`SinkWriter::prepare_commit`] returned for the checkpoint being restored: the writer
    /// commits the transactions it lists (their checkpoint completed; committing is
    /// idempotent) and aborts whatever else this subtask had staged.
    fn create_writer(
        &self,
        ctx: &SinkContext,
        restored: Option<&[u8]>,
    ) -> Result<Box<dyn SinkWriter<T>>, UserError>;

    /// Opens the writer of one subtask when the job restores at another parallelism than
    /// `old_parallelism`: `manifests` holds what every old subtask's
    /// [`SinkWriter::prepare_commit`] returned (its index and bytes). Over all new subtasks,
    /// every transaction the manifests list must be committed exactly once and everything
    /// else the old subtasks staged aborted. The default refuses: the sink cannot be
    /// rescaled.
    fn create_rescaled_writer(
        &self,
        ctx: &SinkContext,
        old_parallelism: u32,
        manifests: &[(u32, Vec<u8>)],
    ) -> Result<Box<dyn SinkWriter<T>>, UserError> {
        let _ = manifests;
        Err(format!(
            "the {} sink cannot restore transactions staged at parallelism {old_parallelism} \
             at parallelism {}; restore it at {old_parallelism}",
            self.name(),
            ctx.parallelism
        )
        .into())
    }
}

/// One subtask's writer.
///
/// With checkpointing on, an exactly-once writer is a two-phase commit: records written
/// since the last barrier form an open transaction; [`prepare_commit`](Self::prepare_commit)
/// (the synchronous part of checkpoint *n*) stages it as transaction *n* and returns the
/// writer's state; [`commit`](Self::commit) (checkpoint *n* complete) publishes every staged
/// transaction up to *n*. A writer dropped between the two (the job failed) leaves its staged
/// work invisible; the restored writer aborts it.
pub trait SinkWriter<T>: Send {
    /// Writes one batch of records, in order.
    fn write_batch(&mut self, batch: Vec<T>) -> Result<(), UserError>;

    /// Checkpoint `checkpoint`'s barrier arrived: stage the open transaction (durably) and
    /// return the state to store with the checkpoint — the staged, uncommitted transactions —
    /// or `None` when the writer has nothing to commit (print, blackhole).
    fn prepare_commit(&mut self, _checkpoint: CheckpointId) -> Result<Option<Vec<u8>>, UserError> {
        Ok(None)
    }

    /// Checkpoint `checkpoint` is complete: publish every staged transaction up to it.
    /// Idempotent: a commit replayed after a crash is harmless.
    fn commit(&mut self, _checkpoint: CheckpointId) -> Result<(), UserError> {
        Ok(())
    }

    /// Called once at end of input. Without checkpointing: make everything written visible.
    /// With checkpointing: close the open transaction so the final checkpoint stages it;
    /// publishing waits for that checkpoint's [`commit`](Self::commit). A writer dropped
    /// without publishing (the job failed) must not make partial output look complete.
    fn finish(&mut self) -> Result<(), UserError>;
}

/// Output of a user function. Records go downstream in batches: when the function returns,
/// and whenever [`COLLECTOR_BATCH`] records have piled up during one call, so a function that
/// emits a lot in one call (a whole state scan at end of input) never holds it all in memory.
pub struct Collector<T> {
    buf: Vec<T>,
    next: Box<dyn Link<T>>,
    failed: Option<TaskError>,
}

/// Records a [`Collector`] buffers before it passes them downstream within one call.
pub const COLLECTOR_BATCH: usize = 1024;

impl<T> Collector<T> {
    pub(crate) fn new(next: Box<dyn Link<T>>) -> Self {
        Self {
            buf: Vec::new(),
            next,
            failed: None,
        }
    }

    /// Emits one record.
    pub fn collect(&mut self, record: T) {
        if self.failed.is_some() {
            return; // downstream failed: the task is about to stop with that error
        }
        self.buf.push(record);
        if self.buf.len() >= COLLECTOR_BATCH {
            self.pass_on();
        }
    }

    fn pass_on(&mut self) {
        let result = match self.buf.len() {
            0 => Ok(()),
            1 => {
                let r = self.buf.pop().expect("one record");
                self.next.push(r)
            }
            _ => self.next.push_batch(std::mem::take(&mut self.buf)),
        };
        if let Err(e) = result {
            self.buf.clear();
            self.failed = Some(e);
        }
    }

    /// Passes what is buffered downstream; reports a downstream failure seen meanwhile.
    pub(crate) fn drain(&mut self) -> Result<(), TaskError> {
        self.pass_on();
        self.failed.take().map_or(Ok(()), Err)
    }

    /// The downstream link, for events (watermarks, flushes, end of input).
    pub(crate) fn next(&mut self) -> &mut dyn Link<T> {
        &mut *self.next
    }
}

/// A keyed operator's event time and timers.
#[derive(Default)]
pub(crate) struct TimeState {
    pub timers: TimerService,
    /// The operator's current watermark (`i64::MIN` before the first).
    pub watermark: i64,
}

impl TimeState {
    pub(crate) fn new(timers: TimerService) -> Self {
        Self {
            timers,
            watermark: i64::MIN,
        }
    }
}

/// What a keyed process function sees for one record or timer: the current key, its event
/// time, timers, side outputs, and (through `Deref`) the [`KeyedScope`] that state handles
/// read and write.
pub struct KeyedContext<'a, K> {
    pub(crate) key: &'a K,
    pub(crate) scope: KeyedScope<'a>,
    pub(crate) timestamp: Option<i64>,
    pub(crate) time: &'a mut TimeState,
    pub(crate) side: &'a mut SideOutputs,
}

impl<K> KeyedContext<'_, K> {
    /// The current record's key (in `on_timer`: the timer's key).
    pub fn key(&self) -> &K {
        self.key
    }

    /// The current record's event time, when the stream has timestamps (see
    /// [`crate::DataStream::assign_timestamps_and_watermarks`]); in `on_timer`, an event-time
    /// timer's timestamp.
    pub fn timestamp(&self) -> Option<i64> {
        self.timestamp
    }

    /// The operator's current watermark: `i64::MIN` before the first one arrived.
    pub fn current_watermark(&self) -> i64 {
        self.time.watermark
    }

    /// The wall clock, in ms since the Unix epoch.
    pub fn current_processing_time(&self) -> i64 {
        now_ms()
    }

    /// Calls `on_timer` for the current key once the watermark reaches `timestamp`.
    pub fn register_event_time_timer(&mut self, timestamp: i64) -> Result<(), StateError> {
        self.register_timer(TimeDomain::EventTime, timestamp, &[])
    }

    /// Calls `on_timer` for the current key once the wall clock reaches `timestamp`.
    pub fn register_processing_time_timer(&mut self, timestamp: i64) -> Result<(), StateError> {
        self.register_timer(TimeDomain::ProcessingTime, timestamp, &[])
    }

    /// Deletes the current key's event-time timer at `timestamp` (if any).
    pub fn delete_event_time_timer(&mut self, timestamp: i64) -> Result<(), StateError> {
        self.delete_timer(TimeDomain::EventTime, timestamp, &[])
    }

    /// Deletes the current key's processing-time timer at `timestamp` (if any).
    pub fn delete_processing_time_timer(&mut self, timestamp: i64) -> Result<(), StateError> {
        self.delete_timer(TimeDomain::ProcessingTime, timestamp, &[])
    }

    /// Registers a timer of the current key in `namespace` (windows register one per
    /// window). A timer that exists already is not registered twice.
    pub fn register_timer(
        &mut self,
        domain: TimeDomain,
        timestamp: i64,
        namespace: &[u8],
    ) -> Result<(), StateError> {
        let (backend, kg, key) = self.scope.parts();
        self.time
            .timers
            .register(backend, domain, kg, key, namespace, timestamp)
    }

    /// Deletes a timer of the current key in `namespace` (if any).
    pub fn delete_timer(
        &mut self,
        domain: TimeDomain,
        timestamp: i64,
        namespace: &[u8],
    ) -> Result<(), StateError> {
        let (backend, kg, key) = self.scope.parts();
        self.time
            .timers
            .delete(backend, domain, kg, key, namespace, timestamp)
    }

    /// Emits `record` to the side output `tag` (read with [`crate::DataStream::side_output`];
    /// dropped when nothing reads it).
    pub fn output<X: Send + 'static>(
        &mut self,
        tag: &OutputTag<X>,
        record: X,
    ) -> Result<(), UserError> {
        self.side.emit(tag, record)
    }
}

impl<'a, K> Deref for KeyedContext<'a, K> {
    type Target = KeyedScope<'a>;
    fn deref(&self) -> &Self::Target {
        &self.scope
    }
}

impl<'a, K> DerefMut for KeyedContext<'a, K> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.scope
    }
}

/// What a keyed process function sees at end of input: the whole state of its subtask.
pub struct EndOfInputContext<'a> {
    pub(crate) backend: &'a mut dyn KeyedStateBackend,
}

impl EndOfInputContext<'_> {
    /// Visits every key that has a value in `state`, in key-group order.
    pub fn for_each_key<K: DeserializeOwned, T: serde::Serialize + DeserializeOwned>(
        &mut self,
        state: &ValueState<T>,
        mut f: impl FnMut(K, T) -> Result<(), UserError>,
    ) -> Result<(), UserError> {
        let mut failure: Option<UserError> = None;
        let name = state.name().to_string();
        let result = state.for_each_key(self.backend, &mut |key_bytes, value| {
            let key: K =
                postcard::from_bytes(key_bytes).map_err(|e| weir_state::StateError::Codec {
                    state: name.clone(),
                    op: "decode",
                    detail: format!("key: {e}"),
                })?;
            if let Err(e) = f(key, value) {
                failure = Some(e);
                return Err(weir_state::StateError::Backend {
                    backend: "scan",
                    op: "visit".into(),
                    detail: "stopped by the visitor".into(),
                });
            }
            Ok(())
        });
        match (failure, result) {
            (Some(e), _) => Err(e),
            (None, r) => Ok(r?),
        }
    }

    /// The backend itself, for scans beyond value states.
    pub fn backend(&mut self) -> &mut dyn KeyedStateBackend {
        self.backend
    }
}

/// What a keyed process function sees in [`KeyedProcessFunction::open`]: the state registry
/// (through `Deref`), and where and in which attempt it runs.
pub struct OpenContext<'a> {
    pub(crate) states: StateRegistry<'a>,
    pub(crate) subtask: SubtaskIndex,
    pub(crate) parallelism: u32,
    pub(crate) attempt: u32,
}

impl OpenContext<'_> {
    /// Which subtask this instance is.
    pub fn subtask(&self) -> SubtaskIndex {
        self.subtask
    }

    /// The operator's parallelism.
    pub fn parallelism(&self) -> u32 {
        self.parallelism
    }

    /// Which attempt of the job: 0 for the first run, +1 for every restart.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
}

impl<'a> Deref for OpenContext<'a> {
    type Target = StateRegistry<'a>;
    fn deref(&self) -> &Self::Target {
        &self.states
    }
}

impl<'a> DerefMut for OpenContext<'a> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.states
    }
}

/// A function over a keyed stream with access to the current key's state, as Flink's
/// `KeyedProcessFunction`. One clone runs per subtask.
///
/// States are declared in [`open`](Self::open) and used per record through the context.
pub trait KeyedProcessFunction<K, IN, OUT>: Clone + Send + 'static {
    /// Declares the function's states. Called once per subtask before the first record.
    fn open(&mut self, ctx: &mut OpenContext<'_>) -> Result<(), UserError>;

    /// Handles one record of the current key.
    fn process_element(
        &mut self,
        value: IN,
        ctx: &mut KeyedContext<'_, K>,
        out: &mut Collector<OUT>,
    ) -> Result<(), UserError>;

    /// A timer of the current key fired (registered through the context). Event-time timers
    /// fire when the watermark reaches them and, at end of input, all that remain;
    /// processing-time timers when the wall clock does, including after a restore whose time
    /// has passed. Each fires once, across failures too.
    fn on_timer(
        &mut self,
        _timer: &Timer,
        _ctx: &mut KeyedContext<'_, K>,
        _out: &mut Collector<OUT>,
    ) -> Result<(), UserError> {
        Ok(())
    }

    /// Called once when every input has ended, before the end of input is passed downstream.
    fn end_of_input(
        &mut self,
        _ctx: &mut EndOfInputContext<'_>,
        _out: &mut Collector<OUT>,
    ) -> Result<(), UserError> {
        Ok(())
    }
}
