//! A [`Link`] is one step of a task's chain: an operator wrapping the next step, a fan-out, a
//! sink, or a network writer. Records are pushed through links by plain (virtual) calls.

use crate::snapshot::ChainSnapshot;
use crate::TaskError;
use std::any::Any;
use weir_types::{Barrier, CheckpointId, Watermark, WatermarkStatus};

/// A type-erased value at a factory boundary (a `Box<dyn Link<T>>`, a channel end, …).
pub(crate) type AnyBox = Box<dyn Any + Send>;

/// One step of a chain that consumes records of type `T` and the in-band events.
pub(crate) trait Link<T>: Send {
    /// Handles one record.
    fn push(&mut self, record: T) -> Result<(), TaskError>;

    /// Handles a batch, in order.
    fn push_batch(&mut self, batch: Vec<T>) -> Result<(), TaskError> {
        for r in batch {
            self.push(r)?;
        }
        Ok(())
    }

    /// Handles a watermark (the minimum over the task's inputs).
    fn watermark(&mut self, wm: Watermark) -> Result<(), TaskError>;

    /// The task's inputs went idle (every one of them) or one became active again.
    fn watermark_status(&mut self, status: WatermarkStatus) -> Result<(), TaskError>;

    /// Every input has ended: finish, then pass the end downstream.
    fn end_of_input(&mut self) -> Result<(), TaskError>;

    /// Sends buffered output: everything when `force`, else only buffers whose timeout passed.
    fn flush(&mut self, force: bool) -> Result<(), TaskError>;

    /// The synchronous part of checkpoint `barrier.checkpoint`: add this step's state to
    /// `snapshot`, then pass the barrier on (a network writer flushes its buffers and sends it
    /// on every channel, unless its channels already ended).
    fn barrier(&mut self, barrier: Barrier, snapshot: &mut ChainSnapshot) -> Result<(), TaskError>;

    /// Checkpoint `id` is complete: commit what it covers (exactly-once sinks publish), then
    /// pass the notification on.
    fn checkpoint_complete(&mut self, id: CheckpointId) -> Result<(), TaskError>;
}

/// Sends every record to several links (a stream consumed more than once).
struct Fanout<T> {
    outputs: Vec<Box<dyn Link<T>>>,
}

impl<T: Clone + Send> Link<T> for Fanout<T> {
    fn push(&mut self, record: T) -> Result<(), TaskError> {
        let (last, rest) = self.outputs.split_last_mut().expect("a fanout has outputs");
        for o in rest {
            o.push(record.clone())?;
        }
        last.push(record)
    }

    fn watermark(&mut self, wm: Watermark) -> Result<(), TaskError> {
        self.outputs.iter_mut().try_for_each(|o| o.watermark(wm))
    }

    fn watermark_status(&mut self, status: WatermarkStatus) -> Result<(), TaskError> {
        self.outputs
            .iter_mut()
            .try_for_each(|o| o.watermark_status(status))
    }

    fn end_of_input(&mut self) -> Result<(), TaskError> {
        self.outputs.iter_mut().try_for_each(|o| o.end_of_input())
    }

    fn flush(&mut self, force: bool) -> Result<(), TaskError> {
        self.outputs.iter_mut().try_for_each(|o| o.flush(force))
    }

    fn barrier(&mut self, barrier: Barrier, snapshot: &mut ChainSnapshot) -> Result<(), TaskError> {
        self.outputs
            .iter_mut()
            .try_for_each(|o| o.barrier(barrier, snapshot))
    }

    fn checkpoint_complete(&mut self, id: CheckpointId) -> Result<(), TaskError> {
        self.outputs
            .iter_mut()
            .try_for_each(|o| o.checkpoint_complete(id))
    }
}

/// Drops everything: the output of an operator nobody consumes.
struct Discard;

impl<T> Link<T> for Discard {
    fn push(&mut self, _record: T) -> Result<(), TaskError> {
        Ok(())
    }
    fn push_batch(&mut self, _batch: Vec<T>) -> Result<(), TaskError> {
        Ok(())
    }
    fn watermark(&mut self, _wm: Watermark) -> Result<(), TaskError> {
        Ok(())
    }
    fn watermark_status(&mut self, _status: WatermarkStatus) -> Result<(), TaskError> {
        Ok(())
    }
    fn end_of_input(&mut self) -> Result<(), TaskError> {
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

/// Turns a node's type-erased outputs (each a `Box<dyn Link<T>>`) into one link.
pub(crate) fn combine<T: Clone + Send + 'static>(outputs: Vec<AnyBox>) -> Box<dyn Link<T>> {
    let mut links: Vec<Box<dyn Link<T>>> = outputs
        .into_iter()
        .map(|o| {
            *o.downcast::<Box<dyn Link<T>>>()
                .expect("output link has the node's output type")
        })
        .collect();
    match links.len() {
        0 => Box::new(Discard),
        1 => links.pop().expect("one link"),
        _ => Box::new(Fanout { outputs: links }),
    }
}
