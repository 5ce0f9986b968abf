//! Sources and sinks: the edges of a Weir job.
//!
//! This crate owns the connectors that ship with Weir. Each implements the runtime's
//! [`Source`](weir_runtime::Source) / [`Sink`](weir_runtime::Sink) traits and nothing more; it
//! must not depend on state backends (RocksDB above all), on tokio or the network crates, or on
//! the job manager.
//!
//! Exactly-once output needs replayable sources and a transactional sink (DESIGN §5): the
//! generator and file sources save their read position as small versioned bytes
//! ([`SourceReader::snapshot_position`](weir_runtime::SourceReader::snapshot_position)) and
//! resume exactly after the last record they returned; the file sink stages each checkpoint's
//! records and publishes them only when the checkpoint completes.
//!
//! Key types:
//! - [`GeneratorSource`]: deterministic records ([`GeneratedRecord`], see [`record_at`]) whose
//!   total output does not depend on the parallelism; optionally bounded and rate limited;
//!   replayable.
//! - [`FileLinesSource`]: the lines of a file or a directory, split into byte ranges so that
//!   every line is read exactly once whatever the parallelism; replayable.
//! - [`SocketTextSource`]: lines from a TCP socket; parallelism 1 and **not replayable**
//!   (at-most-once across a failure).
//! - [`FileSink`]: part files, published on `finish` without checkpointing or, with it, by a
//!   two-phase commit per checkpoint (see [`read_part_files`]).
//! - [`PrintSink`], [`BlackholeSink`] and [`CollectSink`] (for tests): no transactions.
//! - [`ConnectorError`]: every failure, naming the path, address, sink or position involved.

#![warn(missing_docs)]

/// The longest line a text source reads (files and sockets): a longer one fails the source
/// with [`ConnectorError::LineTooLong`] instead of growing without bound.
pub const MAX_LINE_BYTES: usize = 4 << 20;

/// Appends to `line` up to and including the next `\n`, reading at most what keeps `line`
/// within `max + 1` bytes; returns the bytes read. A `line` longer than `max` without its
/// `\n` means the line is too long.
pub(crate) fn read_line_bounded(
    reader: &mut impl std::io::BufRead,
    line: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<usize> {
    use std::io::{BufRead as _, Read as _};
    let room = (max + 1).saturating_sub(line.len()) as u64;
    reader.by_ref().take(room).read_until(b'\n', line)
}

/// Whether `line`, read by [`read_line_bounded`], overran `max` without ending.
pub(crate) fn overran(line: &[u8], max: usize) -> bool {
    line.len() > max && line.last() != Some(&b'\n')
}

mod error;
mod file;
mod file_sink;
mod generator;
mod lanes;
pub mod nexmark;
mod sinks;
mod socket;
mod zipf;

pub use error::ConnectorError;
pub use file::{plan_splits, FileLinesReader, FileLinesSource, FileSplit, DEFAULT_MIN_SPLIT_BYTES};
pub use file_sink::{read_part_files, FileSink};
pub use generator::{record_at, GeneratedRecord, GeneratorReader, GeneratorSource};
pub use nexmark::{
    event_at, Auction, Bid, NexmarkConfig, NexmarkEvent, NexmarkReader, NexmarkSource, Person,
};
pub use sinks::{BlackholeSink, CollectSink, PrintSink};
pub use socket::{SocketTextReader, SocketTextSource};
pub use zipf::{KeyDistribution, Zipf};

use weir_runtime::SourceContext;

/// The versioned byte encoding of source positions: one version byte, then the position as
/// postcard. Each source keeps its own version number and a reader for every old one.
pub(crate) mod position {
    use crate::ConnectorError;
    use serde::de::DeserializeOwned;
    use serde::Serialize;

    /// `[version] ++ postcard(position)`.
    pub fn encode<P: Serialize>(version: u8, position: &P) -> Vec<u8> {
        let mut bytes = vec![version];
        // Serializing plain structs into a Vec cannot fail.
        bytes.extend(postcard::to_stdvec(position).expect("a position serializes"));
        bytes
    }

    /// Checks the old subtasks' positions handed to a source restored at another parallelism:
    /// each index below `old_parallelism`, none twice, none missing (a missing one's input
    /// would be lost). The error names the `connector` and the problem.
    pub fn check_rescaled(
        connector: &'static str,
        old_parallelism: u32,
        positions: &[(u32, Vec<u8>)],
    ) -> Result<(), ConnectorError> {
        let bad = |reason: String| ConnectorError::BadPosition { connector, reason };
        let mut seen = std::collections::BTreeSet::new();
        for (old, _) in positions {
            if !seen.insert(*old) || *old >= old_parallelism {
                return Err(bad(format!(
                    "old subtask {old} of {old_parallelism} appears twice or is out of range"
                )));
            }
        }
        if seen.len() != old_parallelism as usize {
            return Err(bad(format!(
                "positions of {} old subtasks of {old_parallelism}: the input of the others \
                 would be lost",
                seen.len()
            )));
        }
        Ok(())
    }

    /// The inverse of [`encode`]: refuses an unknown version, undecodable bytes and trailing
    /// garbage, naming the `connector`.
    pub fn decode<P: DeserializeOwned>(
        connector: &'static str,
        version: u8,
        bytes: &[u8],
    ) -> Result<P, ConnectorError> {
        let bad = |reason: String| ConnectorError::BadPosition { connector, reason };
        let Some((&found, rest)) = bytes.split_first() else {
            return Err(bad("the saved position is empty".to_string()));
        };
        if found != version {
            return Err(bad(format!(
                "the saved position has format version {found}; this build reads version {version}"
            )));
        }
        match postcard::take_from_bytes::<P>(rest) {
            Ok((position, [])) => Ok(position),
            Ok((_, trailing)) => Err(bad(format!(
                "the saved position has {} unexpected trailing bytes",
                trailing.len()
            ))),
            Err(e) => Err(bad(format!("the saved position cannot be decoded: {e}"))),
        }
    }
}

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
            job: weir_types::JobId(1),
            uid: OperatorUid::new(uid).expect("valid uid"),
            subtask: SubtaskIndex(subtask),
            parallelism,
            cancelled: Arc::new(AtomicBool::new(false)),
            attempt: 0,
            checkpointing: false,
        }
    }

    /// Polls `reader` up to `polls` times with batch sizes from `sizes`, appending to `out`,
    /// until it finishes (true) or `out` holds `limit` records.
    pub fn poll_some<T>(
        reader: &mut dyn SourceReader<T>,
        sizes: &mut impl Iterator<Item = usize>,
        polls: usize,
        out: &mut Vec<T>,
        limit: usize,
    ) -> bool {
        for _ in 0..polls {
            if out.len() >= limit {
                return false;
            }
            let max = sizes.next().expect("batch sizes never run out");
            let before = out.len();
            match reader.poll(out, max).expect("poll") {
                SourcePoll::Finished => return true,
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
        false
    }

    /// Reads a source through simulated failures. `open(None)` opens a fresh reader,
    /// `open(Some(position))` restores one. For each `(polls, lost)` of `failures`: poll
    /// `polls` times, snapshot, poll `lost` more times into records the failure loses, then
    /// restore from the snapshot. Finally read to the end (or `limit` records). Batch sizes
    /// cycle through `sizes`. Returns the records kept, truncated to `limit`.
    pub fn read_with_restores<T>(
        open: impl Fn(Option<&[u8]>) -> Box<dyn SourceReader<T>>,
        sizes: &[usize],
        failures: &[(usize, usize)],
        limit: usize,
    ) -> Vec<T> {
        let mut sizes = sizes.iter().copied().cycle();
        let mut kept = Vec::new();
        let mut reader = open(None);
        for &(polls, lost) in failures {
            poll_some(reader.as_mut(), &mut sizes, polls, &mut kept, limit);
            let position = reader
                .snapshot_position()
                .expect("snapshot")
                .expect("a replayable source returns a position");
            poll_some(reader.as_mut(), &mut sizes, lost, &mut Vec::new(), limit);
            reader = open(Some(&position));
        }
        poll_some(reader.as_mut(), &mut sizes, usize::MAX, &mut kept, limit);
        kept.truncate(limit);
        kept
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

#[cfg(test)]
mod bounded_line_tests {
    use super::*;

    #[test]
    fn a_line_within_the_bound_is_read_whole_and_a_longer_one_is_cut_at_the_bound() {
        let mut input = std::io::Cursor::new(b"short\nxxxxxxxxxx\n".to_vec());
        let mut line = Vec::new();
        read_line_bounded(&mut input, &mut line, 8).unwrap();
        assert_eq!(line, b"short\n");
        assert!(!overran(&line, 8));
        line.clear();
        read_line_bounded(&mut input, &mut line, 8).unwrap();
        assert_eq!(line.len(), 9, "max + 1 bytes, no more");
        assert!(overran(&line, 8));
    }
}

/// Fuzz targets run in this binary: no single allocation may exceed 1 GiB.
#[cfg(test)]
#[global_allocator]
static ALLOC: weir_fuzz::Bounded = weir_fuzz::Bounded::new(1 << 30);
