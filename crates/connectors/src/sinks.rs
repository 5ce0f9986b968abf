//! Sinks: print, blackhole, and an in-memory collector for tests. The file sink has its own
//! module, `file_sink`.

use crate::ConnectorError;
use std::fmt::{self, Display, Write as _};
use std::io::{self, Write};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use weir_runtime::{Sink, SinkContext, SinkWriter, UserError};

/// Appends one line per record to `buf`, each prefixed by `prefix`.
pub(crate) fn format_lines<T: Display>(prefix: &str, batch: &[T], buf: &mut String) {
    for record in batch {
        // Writing into a String cannot fail.
        let _ = writeln!(buf, "{prefix}{record}");
    }
}

// ---------------------------------------------------------------------------------------------

/// Prints every record as a line on standard output. With parallelism above 1 each line starts
/// with `"{subtask + 1}> "`, as in Flink.
pub struct PrintSink<T> {
    _records: PhantomData<fn(T)>,
}

impl<T> PrintSink<T> {
    /// A print sink.
    pub fn new() -> Self {
        Self {
            _records: PhantomData,
        }
    }
}

impl<T> Default for PrintSink<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Clone for PrintSink<T> {
    fn clone(&self) -> Self {
        Self::new()
    }
}

impl<T> fmt::Debug for PrintSink<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrintSink")
    }
}

impl<T: Display + Send + 'static> Sink<T> for PrintSink<T> {
    fn name(&self) -> String {
        "print".to_string()
    }

    fn create_writer(
        &self,
        ctx: &SinkContext,
        _restored: Option<&[u8]>,
    ) -> Result<Box<dyn SinkWriter<T>>, UserError> {
        let prefix = if ctx.parallelism > 1 {
            format!("{}> ", u64::from(ctx.subtask.get()) + 1)
        } else {
            String::new()
        };
        Ok(Box::new(PrintWriter {
            prefix,
            buf: String::new(),
            _records: PhantomData,
        }))
    }
}

/// One subtask's print writer: formats a batch, then writes it under one stdout lock.
struct PrintWriter<T> {
    prefix: String,
    buf: String,
    _records: PhantomData<fn(T)>,
}

impl<T: Display + Send> SinkWriter<T> for PrintWriter<T> {
    fn write_batch(&mut self, batch: Vec<T>) -> Result<(), UserError> {
        self.buf.clear();
        format_lines(&self.prefix, &batch, &mut self.buf);
        let mut out = io::stdout().lock();
        out.write_all(self.buf.as_bytes())
            .and_then(|()| out.flush())
            .map_err(|cause| ConnectorError::Stdout { cause })?;
        Ok(())
    }

    fn finish(&mut self) -> Result<(), UserError> {
        io::stdout()
            .lock()
            .flush()
            .map_err(|cause| ConnectorError::Stdout { cause })?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------

/// Discards every record, counting them; clones share the count.
pub struct BlackholeSink<T> {
    count: Arc<AtomicU64>,
    _records: PhantomData<fn(T)>,
}

impl<T> BlackholeSink<T> {
    /// A blackhole with a count of 0.
    pub fn new() -> Self {
        Self {
            count: Arc::new(AtomicU64::new(0)),
            _records: PhantomData,
        }
    }

    /// The shared count of records received by all subtasks.
    pub fn counter(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.count)
    }
}

impl<T> Default for BlackholeSink<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Clone for BlackholeSink<T> {
    fn clone(&self) -> Self {
        Self {
            count: Arc::clone(&self.count),
            _records: PhantomData,
        }
    }
}

impl<T> fmt::Debug for BlackholeSink<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlackholeSink")
            .field("count", &self.count.load(Ordering::Relaxed))
            .finish()
    }
}

impl<T: Send + 'static> Sink<T> for BlackholeSink<T> {
    fn name(&self) -> String {
        "blackhole".to_string()
    }

    fn create_writer(
        &self,
        _ctx: &SinkContext,
        _restored: Option<&[u8]>,
    ) -> Result<Box<dyn SinkWriter<T>>, UserError> {
        Ok(Box::new(BlackholeWriter {
            count: Arc::clone(&self.count),
            _records: PhantomData,
        }))
    }
}

struct BlackholeWriter<T> {
    count: Arc<AtomicU64>,
    _records: PhantomData<fn(T)>,
}

impl<T: Send> SinkWriter<T> for BlackholeWriter<T> {
    fn write_batch(&mut self, batch: Vec<T>) -> Result<(), UserError> {
        self.count.fetch_add(batch.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    fn finish(&mut self) -> Result<(), UserError> {
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------

/// Collects every record into a shared vector, for tests. Clones share the vector; records of
/// different subtasks interleave in arrival order.
pub struct CollectSink<T> {
    records: Arc<Mutex<Vec<T>>>,
}

impl<T> CollectSink<T> {
    /// An empty collector.
    pub fn new() -> Self {
        Self {
            records: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// The shared vector.
    pub fn handle(&self) -> Arc<Mutex<Vec<T>>> {
        Arc::clone(&self.records)
    }

    /// Takes the records collected so far.
    pub fn take(&self) -> Vec<T> {
        std::mem::take(&mut *lock(&self.records))
    }
}

/// Locks `m`, ignoring poisoning: a panicking writer leaves a valid (if partial) vector.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<T> Default for CollectSink<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Clone for CollectSink<T> {
    fn clone(&self) -> Self {
        Self {
            records: Arc::clone(&self.records),
        }
    }
}

impl<T> fmt::Debug for CollectSink<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CollectSink")
            .field("records", &lock(&self.records).len())
            .finish()
    }
}

impl<T: Send + 'static> Sink<T> for CollectSink<T> {
    fn name(&self) -> String {
        "collect".to_string()
    }

    fn create_writer(
        &self,
        _ctx: &SinkContext,
        _restored: Option<&[u8]>,
    ) -> Result<Box<dyn SinkWriter<T>>, UserError> {
        Ok(Box::new(CollectSink {
            records: Arc::clone(&self.records),
        }))
    }
}

impl<T: Send> SinkWriter<T> for CollectSink<T> {
    fn write_batch(&mut self, batch: Vec<T>) -> Result<(), UserError> {
        lock(&self.records).extend(batch);
        Ok(())
    }

    fn finish(&mut self) -> Result<(), UserError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::ctx;

    #[test]
    fn print_lines_carry_the_subtask_prefix_only_when_parallel() {
        let mut buf = String::new();
        format_lines("2> ", &[1, 2], &mut buf);
        assert_eq!(buf, "2> 1\n2> 2\n");
        let sink = PrintSink::<u32>::new();
        let mut writer = sink
            .create_writer(&ctx("print", 0, 1), None)
            .expect("writer");
        writer.write_batch(Vec::new()).expect("print");
        writer.finish().expect("finish");
    }

    #[test]
    fn the_blackhole_counts_records_of_all_subtasks() {
        let sink = BlackholeSink::<u64>::new();
        let counter = sink.counter();
        for s in 0..3 {
            let mut w = sink.create_writer(&ctx("bh", s, 3), None).expect("writer");
            w.write_batch(vec![1, 2, 3]).expect("write");
            w.finish().expect("finish");
        }
        assert_eq!(counter.load(Ordering::Relaxed), 9);
    }

    #[test]
    fn the_collect_sink_gathers_every_batch() {
        let sink = CollectSink::<u8>::new();
        let mut w = sink.create_writer(&ctx("c", 0, 1), None).expect("writer");
        w.write_batch(vec![1, 2]).expect("write");
        w.write_batch(vec![3]).expect("write");
        assert_eq!(sink.take(), vec![1, 2, 3]);
        assert!(sink.take().is_empty());
    }
}
