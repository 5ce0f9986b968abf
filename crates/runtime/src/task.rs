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

use crate::function::{SourcePoll, SourceReader};
use crate::link::Link;
use crate::metrics::JobMetrics;
use crate::operators::OpIdent;
use crate::TaskError;
use crossbeam_channel::{Receiver, Select};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use weir_types::{StreamElement, Watermark};

/// What every task loop needs besides its chain.
pub(crate) struct LoopEnv<'a> {
    pub ident: &'a OpIdent,
    pub cancelled: &'a AtomicBool,
    pub batch_size: usize,
    pub buffer_timeout: Duration,
    pub metrics: &'a JobMetrics,
}

/// Runs a source subtask until its reader finishes.
pub(crate) fn run_source<T: Send>(
    env: &LoopEnv<'_>,
    reader: &mut dyn SourceReader<T>,
    chain: &mut dyn Link<T>,
) -> Result<(), TaskError> {
    loop {
        if env.cancelled.load(Ordering::Relaxed) {
            return Err(TaskError::Cancelled);
        }
        let mut batch = Vec::with_capacity(env.batch_size);
        let status = reader
            .poll(&mut batch, env.batch_size)
            .map_err(|e| env.ident.user(e))?;
        if !batch.is_empty() {
            JobMetrics::add(&env.metrics.source_records, batch.len() as u64);
            chain.push_batch(batch)?;
        }
        match status {
            SourcePoll::More => chain.flush(false)?,
            SourcePoll::Idle(wait) => {
                chain.flush(true)?;
                std::thread::sleep(wait.min(Duration::from_millis(50)));
            }
            SourcePoll::Finished => {
                tracing::debug!(uid = %env.ident.uid, subtask = %env.ident.subtask, "source finished");
                return chain.end_of_input();
            }
        }
    }
}

/// Runs a task that reads channels until every one of them has ended.
pub(crate) fn run_inputs<T: Send>(
    env: &LoopEnv<'_>,
    inputs: Vec<Receiver<StreamElement<T>>>,
    chain: &mut dyn Link<T>,
) -> Result<(), TaskError> {
    let mut select = Select::new();
    for rx in &inputs {
        select.recv(rx);
    }
    let mut open = inputs.len();
    let mut watermarks = vec![Watermark(i64::MIN); inputs.len()];
    let mut emitted = Watermark(i64::MIN);
    while open > 0 {
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
        let index = op.index();
        match op.recv(&inputs[index]) {
            Ok(StreamElement::Batch(batch)) => {
                chain.push_batch(batch)?;
                chain.flush(false)?;
            }
            Ok(StreamElement::Watermark(wm)) => {
                if wm < watermarks[index] {
                    return Err(invariant(
                        env,
                        format!(
                            "watermark went back on input {index}: {wm:?} after {:?}",
                            watermarks[index]
                        ),
                    ));
                }
                watermarks[index] = wm;
                let min = *watermarks.iter().min().expect("at least one input");
                if min > emitted {
                    emitted = min;
                    chain.watermark(min)?;
                }
            }
            Ok(StreamElement::Barrier(b)) => {
                return Err(invariant(
                    env,
                    format!(
                        "barrier of {} arrived, but this job runs without checkpoints",
                        b.checkpoint
                    ),
                ));
            }
            Ok(StreamElement::EndOfInput) => {
                select.remove(index);
                watermarks[index] = Watermark::MAX;
                open -= 1;
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
        }
    }
    chain.end_of_input()
}

fn invariant(env: &LoopEnv<'_>, detail: String) -> TaskError {
    TaskError::Invariant {
        uid: env.ident.uid.clone(),
        subtask: env.ident.subtask,
        detail,
    }
}
