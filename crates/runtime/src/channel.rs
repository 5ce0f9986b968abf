//! Channels between tasks and the writer that partitions a task's output over them.
//!
//! Every (upstream subtask, downstream subtask) pair of an edge has its own bounded channel of
//! [`StreamElement`] batches (forward edges: only pairs `i → i`). A full channel blocks the
//! writer: that is how backpressure reaches the sources. A writer buffers records per target
//! and sends a batch when it holds `batch_size` records, when the buffer timeout has passed,
//! and always before a watermark or end of input, so in-band events never overtake records.

use crate::link::Link;
use crate::metrics::SubtaskIo;
use crate::snapshot::ChainSnapshot;
use crate::TaskError;
use crossbeam_channel::{Sender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir_types::{
    key_group_for_key_bytes, subtask_for_key_group, Barrier, CheckpointId, StreamElement,
    SubtaskIndex, Watermark,
};

/// Serialises a record's key into the buffer (the bytes the key group is computed from).
pub(crate) type KeyBytesFn<T> = Arc<dyn Fn(&T, &mut Vec<u8>) -> Result<(), String> + Send + Sync>;

/// How a writer picks targets.
pub(crate) enum Router<T> {
    /// One target.
    Forward,
    /// By key group of the record's key.
    Hash {
        /// Key serialiser.
        key_bytes: KeyBytesFn<T>,
        /// Number of key groups.
        max_parallelism: u32,
    },
    /// Round robin over all targets.
    Rebalance,
    /// Round robin over this upstream subtask's share of the targets.
    Rescale,
    /// Every record to every target.
    Broadcast,
}

/// Makes the channels of one edge: `(senders per upstream subtask, receivers per downstream
/// subtask)` (the tests' wiring; a TaskManager makes them pair by pair).
#[cfg(test)]
#[allow(clippy::type_complexity)]
pub(crate) fn make_channels<T>(
    n_up: usize,
    n_down: usize,
    forward: bool,
    capacity: usize,
) -> (
    Vec<Vec<Sender<StreamElement<T>>>>,
    Vec<Vec<crossbeam_channel::Receiver<StreamElement<T>>>>,
) {
    let mut senders: Vec<Vec<Sender<StreamElement<T>>>> = (0..n_up).map(|_| Vec::new()).collect();
    let mut receivers: Vec<Vec<crossbeam_channel::Receiver<StreamElement<T>>>> =
        (0..n_down).map(|_| Vec::new()).collect();
    for (up, s) in senders.iter_mut().enumerate() {
        for (down, r) in receivers.iter_mut().enumerate() {
            if forward && up != down {
                continue;
            }
            let (tx, rx) = crossbeam_channel::bounded(capacity);
            s.push(tx);
            r.push(rx);
        }
    }
    (senders, receivers)
}

/// The tail of a chain that feeds an edge.
pub(crate) struct RecordWriter<T> {
    uid: String,
    subtask: SubtaskIndex,
    senders: Vec<Sender<StreamElement<T>>>,
    buffers: Vec<Vec<T>>,
    router: Router<T>,
    batch_size: usize,
    timeout: Duration,
    last_flush: Instant,
    next_target: usize,
    rescale_range: (usize, usize),
    key_buf: Vec<u8>,
    /// End of input was sent; nothing follows on these channels.
    ended: bool,
    /// Records out and time blocked on full channels, when the job counts them.
    io: Option<Arc<SubtaskIo>>,
}

/// Sends `element`, adding the time spent waiting for room to `io`'s backpressure (a channel
/// with room costs one `try_send`, no clock read).
fn send_counted<T>(
    sender: &Sender<StreamElement<T>>,
    element: StreamElement<T>,
    io: Option<&SubtaskIo>,
) -> Result<(), ()> {
    let Some(io) = io else {
        return sender.send(element).map_err(drop);
    };
    match sender.try_send(element) {
        Ok(()) => Ok(()),
        Err(TrySendError::Disconnected(_)) => Err(()),
        Err(TrySendError::Full(element)) => {
            let blocked = Instant::now();
            let sent = sender.send(element).map_err(drop);
            SubtaskIo::add(&io.backpressured_ns, blocked.elapsed().as_nanos() as u64);
            sent
        }
    }
}

impl<T: Clone + Send> RecordWriter<T> {
    pub(crate) fn new(
        uid: String,
        subtask: SubtaskIndex,
        up_parallelism: u32,
        senders: Vec<Sender<StreamElement<T>>>,
        router: Router<T>,
        batch_size: usize,
        timeout: Duration,
    ) -> Self {
        let n = senders.len();
        // Rescale: upstream subtask i feeds the downstream subtasks [i*n/up, (i+1)*n/up), or
        // one subtask when there are fewer downstream than upstream subtasks.
        let up = up_parallelism.max(1) as usize;
        let i = subtask.0 as usize;
        let lo = i * n / up;
        let hi = ((i + 1) * n / up).max(lo + 1).min(n);
        Self {
            uid,
            subtask,
            buffers: (0..n).map(|_| Vec::with_capacity(batch_size)).collect(),
            senders,
            router,
            batch_size: batch_size.max(1),
            timeout,
            last_flush: Instant::now(),
            next_target: i % n.max(1),
            rescale_range: (lo, hi),
            key_buf: Vec::with_capacity(64),
            ended: false,
            io: None,
        }
    }

    /// Counts this writer's records and backpressure into `io`.
    pub(crate) fn counting(mut self, io: Option<Arc<SubtaskIo>>) -> Self {
        self.io = io;
        self
    }

    fn send(&mut self, target: usize) -> Result<(), TaskError> {
        let batch = std::mem::replace(
            &mut self.buffers[target],
            Vec::with_capacity(self.batch_size),
        );
        if let Some(io) = &self.io {
            SubtaskIo::add(&io.records_out, batch.len() as u64);
        }
        send_counted(
            &self.senders[target],
            StreamElement::Batch(batch),
            self.io.as_deref(),
        )
        .map_err(|()| self.lost())
    }

    fn lost(&self) -> TaskError {
        TaskError::DownstreamLost {
            uid: self.uid.clone(),
            subtask: self.subtask,
        }
    }

    fn buffer(&mut self, target: usize, record: T) -> Result<(), TaskError> {
        self.buffers[target].push(record);
        if self.buffers[target].len() >= self.batch_size {
            self.send(target)?;
        }
        Ok(())
    }

    fn flush_all(&mut self) -> Result<(), TaskError> {
        for t in 0..self.buffers.len() {
            if !self.buffers[t].is_empty() {
                self.send(t)?;
            }
        }
        self.last_flush = Instant::now();
        Ok(())
    }

    fn broadcast_event(&mut self, event: StreamElement<T>) -> Result<(), TaskError> {
        self.flush_all()?;
        for s in &self.senders {
            send_counted(s, event.clone(), self.io.as_deref()).map_err(|()| self.lost())?;
        }
        Ok(())
    }
}

impl<T: Clone + Send> Link<T> for RecordWriter<T> {
    fn push(&mut self, record: T) -> Result<(), TaskError> {
        let n = self.senders.len();
        let target = match &self.router {
            Router::Forward => 0,
            Router::Hash {
                key_bytes,
                max_parallelism,
            } => {
                self.key_buf.clear();
                key_bytes(&record, &mut self.key_buf).map_err(|message| TaskError::Operator {
                    uid: self.uid.clone(),
                    subtask: self.subtask,
                    parallelism: 0,
                    message: format!("cannot serialise the key: {message}"),
                })?;
                let kg = key_group_for_key_bytes(&self.key_buf, *max_parallelism);
                subtask_for_key_group(kg, *max_parallelism, n as u32) as usize
            }
            Router::Rebalance => {
                let t = self.next_target;
                self.next_target = (t + 1) % n;
                t
            }
            Router::Rescale => {
                let (lo, hi) = self.rescale_range;
                let t = lo + self.next_target % (hi - lo);
                self.next_target = self.next_target.wrapping_add(1);
                t
            }
            Router::Broadcast => {
                for t in 1..n {
                    self.buffer(t, record.clone())?;
                }
                0
            }
        };
        self.buffer(target, record)
    }

    fn watermark(&mut self, wm: Watermark) -> Result<(), TaskError> {
        self.broadcast_event(StreamElement::Watermark(wm))
    }

    fn watermark_status(&mut self, status: weir_types::WatermarkStatus) -> Result<(), TaskError> {
        self.broadcast_event(StreamElement::Status(status))
    }

    fn end_of_input(&mut self) -> Result<(), TaskError> {
        self.ended = true;
        self.broadcast_event(StreamElement::EndOfInput)
    }

    fn flush(&mut self, force: bool) -> Result<(), TaskError> {
        if force || self.last_flush.elapsed() >= self.timeout {
            self.flush_all()?;
        }
        Ok(())
    }

    fn barrier(
        &mut self,
        barrier: Barrier,
        _snapshot: &mut ChainSnapshot,
    ) -> Result<(), TaskError> {
        if self.ended {
            // The channels carried end of input already: downstream tasks count them as
            // aligned, and a finished downstream task is triggered directly.
            return Ok(());
        }
        self.broadcast_event(StreamElement::Barrier(barrier))
    }

    fn checkpoint_complete(&mut self, _id: CheckpointId) -> Result<(), TaskError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(rx: &crossbeam_channel::Receiver<StreamElement<u32>>) -> Vec<StreamElement<u32>> {
        rx.try_iter().collect()
    }

    #[test]
    fn a_watermark_never_overtakes_buffered_records() {
        let (mut tx, rx) = make_channels::<u32>(1, 1, true, 16);
        let mut w = RecordWriter::new(
            "u".into(),
            SubtaskIndex(0),
            1,
            tx.remove(0),
            Router::Forward,
            100,
            Duration::from_secs(60),
        );
        w.push(1).unwrap();
        w.push(2).unwrap();
        w.watermark(Watermark(5)).unwrap();
        w.end_of_input().unwrap();
        assert_eq!(
            drain(&rx[0][0]),
            vec![
                StreamElement::Batch(vec![1, 2]),
                StreamElement::Watermark(Watermark(5)),
                StreamElement::EndOfInput
            ]
        );
    }

    #[test]
    fn hash_routing_sends_every_key_to_the_subtask_that_owns_its_key_group() {
        let (mut tx, rx) = make_channels::<u32>(1, 3, false, 512);
        let key_bytes: KeyBytesFn<u32> = Arc::new(|r, buf| {
            buf.extend_from_slice(&r.to_le_bytes());
            Ok(())
        });
        let mut w = RecordWriter::new(
            "u".into(),
            SubtaskIndex(0),
            1,
            tx.remove(0),
            Router::Hash {
                key_bytes,
                max_parallelism: 128,
            },
            1,
            Duration::from_secs(60),
        );
        for r in 0..300u32 {
            w.push(r).unwrap();
        }
        for (down, chans) in rx.iter().enumerate() {
            for el in drain(&chans[0]) {
                let StreamElement::Batch(b) = el else {
                    panic!("only batches")
                };
                for r in b {
                    let kg = key_group_for_key_bytes(&r.to_le_bytes(), 128);
                    let range = weir_types::key_group_range_for_subtask(128, 3, down as u32);
                    assert!(
                        range.contains(kg),
                        "record {r} in {kg} reached subtask {down}"
                    );
                }
            }
        }
    }

    #[test]
    fn broadcast_delivers_every_record_to_every_subtask() {
        let (mut tx, rx) = make_channels::<u32>(1, 2, false, 64);
        let mut w = RecordWriter::new(
            "u".into(),
            SubtaskIndex(0),
            1,
            tx.remove(0),
            Router::Broadcast,
            10,
            Duration::from_secs(60),
        );
        for r in 0..5 {
            w.push(r).unwrap();
        }
        w.end_of_input().unwrap();
        for chans in &rx {
            assert_eq!(
                drain(&chans[0])[0],
                StreamElement::Batch(vec![0, 1, 2, 3, 4])
            );
        }
    }

    #[test]
    fn a_full_channel_blocks_until_the_consumer_reads() {
        let (mut tx, rx) = make_channels::<u32>(1, 1, true, 1);
        let mut w = RecordWriter::new(
            "u".into(),
            SubtaskIndex(0),
            1,
            tx.remove(0),
            Router::Forward,
            1,
            Duration::from_secs(60),
        );
        let rx = rx.into_iter().next().unwrap().remove(0);
        let t = std::thread::spawn(move || {
            for r in 0..3 {
                w.push(r).unwrap();
            }
        });
        std::thread::sleep(Duration::from_millis(100));
        // Capacity 1: the writer holds one batch in the channel and blocks on the second.
        assert!(!t.is_finished());
        let got: Vec<_> = (0..3).map(|_| rx.recv().unwrap()).collect();
        t.join().unwrap();
        assert_eq!(got.len(), 3);
    }
}
