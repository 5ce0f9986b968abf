//! The task mailbox loop: one thread per subtask, handling one message at a time, so operator
//! state is never touched concurrently and never behind a lock.
//!
//! Source task ([`run_source`]):
//! 1. Check the cancel flag; a cancelled task stops with [`TaskError::Cancelled`].
//! 2. Poll the reader for up to `batch_size` records and push them through the chain.
//! 3. On [`SourcePoll::More`], flush output buffers whose timeout passed; on
//!    [`SourcePoll::Idle`], flush everything and wait (at most 50 ms, so cancellation is seen);
//!    on [`SourcePoll::Finished`], pass end of input down the chain and stop.
//!
//! Input task ([`run_inputs`]):
//! 1. Select over the input channels that have not ended, waiting at most the buffer timeout.
//! 2. A batch goes through the chain; then buffers whose timeout passed are flushed.
//! 3. A watermark updates that channel's watermark; when the minimum over all channels rises,
//!    the chain sees the new minimum (an ended channel counts as [`Watermark::MAX`]).
//! 4. End of input closes that channel; when every channel has ended, the chain gets end of
//!    input (operators finish, sinks commit) and the task stops.
//! 5. A select timeout flushes every buffer (latency bound when input is slow) and checks the
//!    cancel flag.
//! 6. Error path: a channel that disconnects without end of input means its producer failed:
//!    the task stops with [`TaskError::UpstreamLost`] (or `Cancelled` when the job was
//!    cancelled), so failures spread along the graph and no task waits forever.
//!
//! With checkpointing ([`crate::snapshot`] tells the protocol):
//! - A source checks its control channel between polls: [`Control::Trigger`] snapshots the
//!   reader's position and the chain, and emits the barrier; [`Control::Complete`] reaches
//!   the chain (sinks commit).
//! - An input task aligns barriers. Exactly-once: a channel that delivered barrier *n* is not
//!   read again until every channel that has not ended delivered it; then the chain snapshots,
//!   the barrier goes downstream and every channel is read again. At-least-once: channels are
//!   not blocked, so records that overtook the barrier are in the snapshot (replayed again
//!   after a restore); only a channel that already brings barrier *n+1* waits.
//! - Invariants checked on the message path: barrier ids strictly increase per channel and
//!   per task, and no channel skips the barrier being aligned.
//! - After end of input the task reports [`TaskEvent::Finished`] and stays, answering direct
//!   triggers (its state no longer changes) and completions, until [`Control::Shutdown`]
//!   after the job's final checkpoint.

use crate::align::Aligner;
use crate::function::{SourcePoll, SourceReader};
use crate::link::Link;
use crate::metrics::{JobMetrics, SubtaskIo};
use crate::operators::OpIdent;
use crate::snapshot::{
    BarrierOrder, ChainSnapshot, Control, OperatorPart, TaskCheckpointing, TaskEvent,
};
use crate::TaskError;
use crossbeam_channel::{Receiver, RecvTimeoutError, Select};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use weir_checkpoint::CheckpointingMode;
use weir_types::{Barrier, OperatorUid, StreamElement, Watermark, WatermarkStatus};

/// What every task loop needs besides its chain.
pub(crate) struct LoopEnv<'a> {
    pub ident: &'a OpIdent,
    pub cancelled: &'a AtomicBool,
    pub batch_size: usize,
    pub buffer_timeout: Duration,
    pub metrics: &'a JobMetrics,
    pub io: Option<&'a SubtaskIo>,
    pub checkpointing: Option<&'a TaskCheckpointing>,
}

/// How long a waiting task sleeps at most before it looks at the cancel flag again.
const CANCEL_CHECK: Duration = Duration::from_millis(50);

/// Runs a source subtask until its reader finishes (and, with checkpointing, until the job's
/// final checkpoint completed).
pub(crate) fn run_source<T: Send>(
    env: &LoopEnv<'_>,
    uid: &OperatorUid,
    reader: &mut dyn SourceReader<T>,
    chain: &mut dyn Link<T>,
) -> Result<(), TaskError> {
    let mut order = BarrierOrder::default();
    let mut draining = false;
    loop {
        if env.cancelled.load(Ordering::Relaxed) {
            return Err(TaskError::Cancelled);
        }
        if let Some(cp) = env.checkpointing {
            while let Ok(msg) = cp.control.try_recv() {
                if matches!(msg, Control::Drain) {
                    draining = true;
                    continue;
                }
                if source_control(env, cp, &mut order, uid, reader, chain, msg)? {
                    return Ok(());
                }
            }
        }
        let mut batch = Vec::with_capacity(env.batch_size);
        // Drained (`weir stop --drain`): the input ends here, as a bounded source's would.
        let status = if draining {
            SourcePoll::Finished
        } else {
            reader
                .poll(&mut batch, env.batch_size)
                .map_err(|e| env.ident.user(e))?
        };
        if !batch.is_empty() {
            JobMetrics::add(&env.metrics.source_records, batch.len() as u64);
            chain.push_batch(batch)?;
        }
        match status {
            SourcePoll::More => chain.flush(false)?,
            SourcePoll::Idle(wait) => {
                chain.flush(true)?;
                let wait = wait.min(CANCEL_CHECK);
                match env.checkpointing {
                    Some(cp) => match cp.control.recv_timeout(wait) {
                        Ok(Control::Drain) => draining = true,
                        Ok(msg) => {
                            if source_control(env, cp, &mut order, uid, reader, chain, msg)? {
                                return Ok(());
                            }
                        }
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => return Err(TaskError::Cancelled),
                    },
                    None => std::thread::sleep(wait),
                }
            }
            SourcePoll::Finished => {
                tracing::debug!(uid = %env.ident.uid, subtask = %env.ident.subtask, "source finished");
                chain.end_of_input()?;
                let Some(cp) = env.checkpointing else {
                    return Ok(());
                };
                return run_finished(env, cp, &mut order, chain, &mut |snapshot| {
                    add_position(env, uid, reader, snapshot)
                });
            }
        }
    }
}

fn source_control<T: Send>(
    env: &LoopEnv<'_>,
    cp: &TaskCheckpointing,
    order: &mut BarrierOrder,
    uid: &OperatorUid,
    reader: &mut dyn SourceReader<T>,
    chain: &mut dyn Link<T>,
    msg: Control,
) -> Result<bool, TaskError> {
    match msg {
        Control::Trigger(barrier) => {
            order
                .accept(barrier.checkpoint)
                .map_err(|d| invariant(env, d))?;
            take_snapshot(
                env,
                cp,
                barrier,
                Duration::ZERO,
                false,
                chain,
                &mut |snapshot| add_position(env, uid, reader, snapshot),
            )?;
            // A stop savepoint: nothing is read after its barrier.
            if barrier.stops() {
                return await_stop(env, cp, barrier, chain);
            }
            Ok(false)
        }
        Control::Complete(id) => chain.checkpoint_complete(id).map(|()| false),
        Control::Aborted(_) | Control::Drain => Ok(false),
        Control::Shutdown => Err(TaskError::Cancelled),
    }
}

/// After its snapshot of a stop savepoint (`weir stop`), a task reads only its control channel:
/// the savepoint's completion is passed down the chain (sinks commit it) and ends the task
/// (`Ok(true)`), without end of input — nothing follows the barrier; its abort lets the task
/// go on (`Ok(false)`).
fn await_stop<T>(
    env: &LoopEnv<'_>,
    cp: &TaskCheckpointing,
    barrier: Barrier,
    chain: &mut dyn Link<T>,
) -> Result<bool, TaskError> {
    let id = barrier.checkpoint;
    tracing::debug!(uid = %env.ident.uid, subtask = %env.ident.subtask, savepoint = %id, "waiting for the stop savepoint");
    loop {
        if env.cancelled.load(Ordering::Relaxed) {
            return Err(TaskError::Cancelled);
        }
        match cp.control.recv_timeout(CANCEL_CHECK) {
            Ok(Control::Complete(done)) => {
                chain.checkpoint_complete(done)?;
                if done == id {
                    tracing::info!(uid = %env.ident.uid, subtask = %env.ident.subtask, savepoint = %id, "stopped with the savepoint");
                    return Ok(true);
                }
            }
            Ok(Control::Aborted(aborted)) if aborted == id => {
                tracing::warn!(uid = %env.ident.uid, subtask = %env.ident.subtask, savepoint = %id, "the stop savepoint was aborted; going on");
                return Ok(false);
            }
            Ok(Control::Aborted(_)) | Ok(Control::Trigger(_)) | Ok(Control::Drain) => {}
            Ok(Control::Shutdown) | Err(RecvTimeoutError::Disconnected) => {
                return Err(TaskError::Cancelled)
            }
            Err(RecvTimeoutError::Timeout) => {}
        }
    }
}

fn add_position<T>(
    env: &LoopEnv<'_>,
    uid: &OperatorUid,
    reader: &mut dyn SourceReader<T>,
    snapshot: &mut ChainSnapshot,
) -> Result<(), TaskError> {
    if let Some(position) = reader.snapshot_position().map_err(|e| env.ident.user(e))? {
        snapshot.add(uid, OperatorPart::Inline(position));
    }
    Ok(())
}

/// The synchronous part of a checkpoint: `before` adds what precedes the chain (a source's
/// position), the chain snapshots and forwards the barrier, and the upload starts.
#[allow(clippy::too_many_arguments)]
fn take_snapshot<T>(
    env: &LoopEnv<'_>,
    cp: &TaskCheckpointing,
    barrier: Barrier,
    alignment: Duration,
    finished: bool,
    chain: &mut dyn Link<T>,
    before: &mut dyn FnMut(&mut ChainSnapshot) -> Result<(), TaskError>,
) -> Result<(), TaskError> {
    let started = Instant::now();
    let mut snapshot = ChainSnapshot::new(barrier, finished);
    before(&mut snapshot)?;
    chain.barrier(barrier, &mut snapshot)?;
    let sync = started.elapsed();
    tracing::debug!(
        uid = %env.ident.uid,
        subtask = %env.ident.subtask,
        checkpoint = %barrier.checkpoint,
        sync_us = sync.as_micros() as u64,
        alignment_ms = alignment.as_millis() as u64,
        "snapshot taken"
    );
    cp.start_async(snapshot, sync, alignment);
    Ok(())
}

/// A task whose chain has finished: report it, then answer direct triggers and completions
/// until the job's final checkpoint completed ([`Control::Shutdown`]).
fn run_finished<T>(
    env: &LoopEnv<'_>,
    cp: &TaskCheckpointing,
    order: &mut BarrierOrder,
    chain: &mut dyn Link<T>,
    before: &mut dyn FnMut(&mut ChainSnapshot) -> Result<(), TaskError>,
) -> Result<(), TaskError> {
    // The driver outlives every task of the attempt; a failed send means the attempt ended.
    cp.events
        .send(TaskEvent::Finished {
            task: cp.task,
            attempt: cp.attempt,
        })
        .map_err(|_| TaskError::Cancelled)?;
    loop {
        if env.cancelled.load(Ordering::Relaxed) {
            return Err(TaskError::Cancelled);
        }
        match cp.control.recv_timeout(CANCEL_CHECK) {
            Ok(Control::Trigger(barrier)) => {
                if order.is_new(barrier.checkpoint) {
                    order
                        .accept(barrier.checkpoint)
                        .map_err(|d| invariant(env, d))?;
                    take_snapshot(env, cp, barrier, Duration::ZERO, true, chain, before)?;
                    if barrier.stops() && await_stop(env, cp, barrier, chain)? {
                        return Ok(());
                    }
                }
            }
            Ok(Control::Complete(id)) => chain.checkpoint_complete(id)?,
            Ok(Control::Aborted(_)) | Ok(Control::Drain) => {}
            Ok(Control::Shutdown) => return Ok(()),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return Err(TaskError::Cancelled),
        }
    }
}

/// Runs a task that reads channels until every one of them has ended (and, with
/// checkpointing, until the job's final checkpoint completed).
pub(crate) fn run_inputs<T: Send>(
    env: &LoopEnv<'_>,
    inputs: Vec<Receiver<StreamElement<T>>>,
    chain: &mut dyn Link<T>,
) -> Result<(), TaskError> {
    let n = inputs.len();
    let exactly_once = env
        .checkpointing
        .is_none_or(|cp| cp.mode == CheckpointingMode::ExactlyOnce);
    let never = crossbeam_channel::never::<Control>();
    let control = env.checkpointing.map_or(&never, |cp| &cp.control);
    let mut aligner = Aligner::new(n, exactly_once);
    let mut open = n;
    let mut clock = InputClock::new(n);
    while open > 0 {
        // Select over readable channels (rebuilt only when that set changes) and control.
        let active: Vec<usize> = (0..n).filter(|&i| aligner.readable(i)).collect();
        let mut select = Select::new();
        for &i in &active {
            select.recv(&inputs[i]);
        }
        let control_index = select.recv(control);
        loop {
            let op = match select.select_timeout(env.buffer_timeout) {
                Ok(op) => op,
                Err(_) => {
                    if env.cancelled.load(Ordering::Relaxed) {
                        return Err(TaskError::Cancelled);
                    }
                    chain.flush(true)?;
                    continue;
                }
            };
            let slot = op.index();
            if slot == control_index {
                match op.recv(control) {
                    Ok(Control::Complete(id)) => chain.checkpoint_complete(id)?,
                    Ok(Control::Aborted(_)) | Ok(Control::Drain) => {}
                    Ok(Control::Trigger(b)) => {
                        // Only sources and finished tasks are triggered directly.
                        return Err(invariant(
                            env,
                            format!("direct trigger of {} while inputs are open", b.checkpoint),
                        ));
                    }
                    Ok(Control::Shutdown) | Err(_) => return Err(TaskError::Cancelled),
                }
                continue;
            }
            let index = active[slot];
            let due = match op.recv(&inputs[index]) {
                Ok(StreamElement::Batch(batch)) => {
                    if let Some(io) = env.io {
                        SubtaskIo::add(&io.records_in, batch.len() as u64);
                    }
                    chain.push_batch(batch)?;
                    chain.flush(false)?;
                    continue;
                }
                Ok(StreamElement::Watermark(wm)) => {
                    if wm < clock.watermarks[index] {
                        return Err(invariant(
                            env,
                            format!(
                                "watermark went back on input {index}: {wm:?} after {:?}",
                                clock.watermarks[index]
                            ),
                        ));
                    }
                    clock.watermarks[index] = wm;
                    clock.advance(chain)?;
                    // Processing-time timers and timed-out buffers are served here too: a
                    // stream of watermarks alone must not starve them.
                    chain.flush(false)?;
                    continue;
                }
                Ok(StreamElement::Status(status)) => {
                    clock.idle[index] = status == WatermarkStatus::Idle;
                    clock.advance(chain)?;
                    chain.flush(false)?;
                    continue;
                }
                Ok(StreamElement::Barrier(b)) => {
                    if env.checkpointing.is_none() {
                        return Err(invariant(
                            env,
                            format!(
                                "barrier of {} arrived, but this job runs without checkpoints",
                                b.checkpoint
                            ),
                        ));
                    }
                    aligner
                        .on_barrier(index, b, Instant::now())
                        .map_err(|d| invariant(env, d))?
                }
                Ok(StreamElement::EndOfInput) => {
                    clock.watermarks[index] = Watermark::MAX;
                    clock.idle[index] = false;
                    clock.advance(chain)?;
                    open -= 1;
                    aligner
                        .on_end(index, Instant::now())
                        .map_err(|d| invariant(env, d))?
                }
                Err(_) => {
                    if env.cancelled.load(Ordering::Relaxed) {
                        return Err(TaskError::Cancelled);
                    }
                    return Err(TaskError::UpstreamLost {
                        uid: env.ident.uid.clone(),
                        subtask: env.ident.subtask,
                    });
                }
            };
            if let Some(cp) = env.checkpointing {
                for d in due {
                    take_snapshot(env, cp, d.barrier, d.alignment, false, chain, &mut |_| {
                        Ok(())
                    })?;
                    if d.barrier.stops() && await_stop(env, cp, d.barrier, chain)? {
                        return Ok(());
                    }
                }
            }
            // The readable set may have changed: rebuild the select.
            break;
        }
    }
    chain.end_of_input()?;
    match env.checkpointing {
        None => Ok(()),
        Some(cp) => run_finished(env, cp, &mut aligner.into_order(), chain, &mut |_| Ok(())),
    }
}

/// The event time of a task with several inputs: each channel's watermark and whether it is
/// idle. The task's watermark is the minimum over the channels that are not idle (an ended
/// channel holds [`Watermark::MAX`]); it only ever rises. When every open channel is idle the
/// task is idle downstream too, until one becomes active.
struct InputClock {
    watermarks: Vec<Watermark>,
    idle: Vec<bool>,
    emitted: Watermark,
    idle_downstream: bool,
}

impl InputClock {
    fn new(n: usize) -> Self {
        Self {
            watermarks: vec![Watermark(i64::MIN); n],
            idle: vec![false; n],
            emitted: Watermark(i64::MIN),
            idle_downstream: false,
        }
    }

    /// Recomputes the task's watermark and status and tells the chain what changed.
    fn advance<T>(&mut self, chain: &mut dyn Link<T>) -> Result<(), TaskError> {
        let active: Vec<Watermark> = self
            .watermarks
            .iter()
            .zip(&self.idle)
            .filter(|(_, idle)| !**idle)
            .map(|(w, _)| *w)
            .collect();
        let Some(min) = active.into_iter().min() else {
            if !self.idle_downstream {
                // The last active channel went idle: as Flink's watermark valve does, event
                // time moves to the largest watermark any channel reached (else a channel
                // that went idle last would leave the others' progress behind for good).
                let max = *self.watermarks.iter().max().expect("at least one input");
                if max > self.emitted && max < Watermark::MAX {
                    self.emitted = max;
                    chain.watermark(max)?;
                }
                self.idle_downstream = true;
                chain.watermark_status(WatermarkStatus::Idle)?;
            }
            return Ok(());
        };
        if self.idle_downstream {
            self.idle_downstream = false;
            chain.watermark_status(WatermarkStatus::Active)?;
        }
        // Every channel ended: end of input follows, and stands for the final watermark. The
        // final watermark is passed on when the only channels left open are idle.
        let idle_open = self.idle.iter().any(|i| *i);
        if min > self.emitted && (min < Watermark::MAX || idle_open) {
            self.emitted = min;
            chain.watermark(min)?;
        }
        Ok(())
    }
}

fn invariant(env: &LoopEnv<'_>, detail: String) -> TaskError {
    TaskError::Invariant {
        uid: env.ident.uid.clone(),
        subtask: env.ident.subtask,
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::tests::Recorder;
    use std::sync::{Arc, Mutex};

    #[test]
    fn the_minimum_skips_idle_channels_and_the_final_watermark_passes_when_the_rest_is_idle() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut chain: Box<dyn Link<u8>> = Box::new(Recorder(seen.clone()));
        let mut clock = InputClock::new(3);
        clock.watermarks = vec![Watermark(10), Watermark(5), Watermark(7)];
        clock.advance(&mut *chain).unwrap();
        clock.idle[1] = true;
        clock.advance(&mut *chain).unwrap();
        clock.idle[2] = true;
        clock.advance(&mut *chain).unwrap();
        clock.watermarks[0] = Watermark::MAX; // the active channel ended
        clock.advance(&mut *chain).unwrap();
        assert_eq!(
            *seen.lock().unwrap(),
            vec!["wm 5", "wm 7", "wm 10", &format!("wm {}", i64::MAX)]
        );
        clock.idle = vec![true; 3];
        clock.watermarks[0] = Watermark(20);
        // Every channel idle: event time moves to the largest watermark reached, then idle.
        let mut quiet = InputClock::new(2);
        quiet.watermarks = vec![Watermark(40), Watermark(3)];
        quiet.advance(&mut *chain).unwrap();
        quiet.idle = vec![false, true];
        quiet.advance(&mut *chain).unwrap();
        quiet.idle = vec![true, true];
        let before = seen.lock().unwrap().len();
        quiet.advance(&mut *chain).unwrap();
        assert_eq!(seen.lock().unwrap()[before..], ["Idle".to_string()]);
        let mut late_idle = InputClock::new(2);
        late_idle.watermarks = vec![Watermark(989), Watermark(i64::MIN)];
        late_idle.idle = vec![true, false];
        late_idle.advance(&mut *chain).unwrap();
        late_idle.idle = vec![true, true];
        let before = seen.lock().unwrap().len();
        late_idle.advance(&mut *chain).unwrap();
        assert_eq!(
            seen.lock().unwrap()[before..],
            ["wm 989".to_string(), "Idle".to_string()],
            "the channel that went idle first left its progress behind"
        );
    }
}
