//! Sources and sinks: the edges of a Weir job.
//!
//! This crate owns the connectors that ship with Weir. Each implements the runtime's
//! [`Source`](weir_runtime::Source) / [`Sink`](weir_runtime::Sink) traits and nothing more; it
//! must not depend on state backends (RocksDB above all), on tokio or the network crates, or on
//! the job manager. Sources keep their read position in plain fields so that a later checkpoint
//! can snapshot it.
//!
//! Key types:
//! - [`GeneratorSource`]: deterministic records ([`GeneratedRecord`], see [`record_at`]) whose
//!   total output does not depend on the parallelism; optionally bounded and rate limited.
//! - [`FileLinesSource`]: the lines of a file or a directory, split into byte ranges so that
//!   every line is read exactly once whatever the parallelism.
//! - [`SocketTextSource`]: lines from a TCP socket; parallelism 1 and **not replayable**.
//! - [`PrintSink`], [`FileSink`] (visible only after `finish`, see [`read_part_files`]),
//!   [`BlackholeSink`] and [`CollectSink`] (for tests).
//! - [`ConnectorError`]: every failure, naming the path or address involved.

#![warn(missing_docs)]

mod error;
mod file;
mod generator;
mod sinks;
mod socket;

pub use error::ConnectorError;
pub use file::{plan_splits, FileLinesReader, FileLinesSource, FileSplit, DEFAULT_MIN_SPLIT_BYTES};
pub use generator::{record_at, GeneratedRecord, GeneratorReader, GeneratorSource};
pub use sinks::{read_part_files, BlackholeSink, CollectSink, FileSink, PrintSink};
pub use socket::{SocketTextReader, SocketTextSource};

use weir_runtime::SourceContext;

/// The `(subtask, parallelism)` of a context, checked: parallelism is at least 1 and the
/// subtask index is below it.
pub(crate) fn subtask_of(ctx: &SourceContext) -> Result<(u32, u32), ConnectorError> {
    let (subtask, parallelism) = (ctx.subtask.get(), ctx.parallelism);
    if parallelism == 0 || subtask >= parallelism {
        return Err(ConnectorError::BadSubtask {
            subtask,
            parallelism,
        });
    }
    Ok((subtask, parallelism))
}

#[cfg(test)]
pub(crate) mod test_util {
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    use weir_runtime::{SourceContext, SourcePoll, SourceReader};
    use weir_types::{OperatorUid, SubtaskIndex};

    /// A context for subtask `subtask` of `parallelism`.
    pub fn ctx(uid: &str, subtask: u32, parallelism: u32) -> SourceContext {
        SourceContext {
            uid: OperatorUid::new(uid).expect("valid uid"),
            subtask: SubtaskIndex(subtask),
            parallelism,
            cancelled: Arc::new(AtomicBool::new(false)),
            attempt: 0,
            checkpointing: false,
        }
    }

    /// Polls `reader` until it finishes (sleeping through `Idle`), returning every record.
    pub fn drain<T>(reader: &mut dyn SourceReader<T>, max: usize) -> Vec<T> {
        let mut out = Vec::new();
        loop {
            let before = out.len();
            match reader.poll(&mut out, max).expect("poll") {
                SourcePoll::Finished => return out,
                SourcePoll::More => {}
                SourcePoll::Idle(d) => {
                    std::thread::sleep(d.min(std::time::Duration::from_millis(5)))
                }
            }
            assert!(
                out.len() - before <= max,
                "a poll returned more than max records"
            );
        }
    }
}
