//! Sinks: print, exactly-visible-once files, blackhole, and an in-memory collector for tests.

use crate::ConnectorError;
use std::fmt::{self, Display, Write as _};
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use weir_runtime::{Sink, SinkContext, SinkWriter, UserError};

/// The write buffer of each file sink writer.
const WRITE_BUFFER_BYTES: usize = 256 * 1024;

/// Appends one line per record to `buf`, each prefixed by `prefix`.
fn format_lines<T: Display>(prefix: &str, batch: &[T], buf: &mut String) {
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

/// Writes records as lines to files in a directory, one file per subtask, made visible only
/// when the subtask finishes.
///
/// Each writer writes `<dir>/.part-<uid>-<subtask>.inprogress`; [`SinkWriter::finish`] flushes,
/// fsyncs and renames it to `<dir>/part-<uid>-<subtask>` (then fsyncs the directory). A job that
/// fails leaves only the hidden in-progress file, so readers of `part-*` (such as
/// [`read_part_files`]) never see partial output. A rerun overwrites the part files of the same
/// uid and subtask; it does not remove those of subtasks that no longer exist.
pub struct FileSink<T> {
    dir: PathBuf,
    _records: PhantomData<fn(T)>,
}

impl<T> FileSink<T> {
    /// A sink writing into `dir`, which is created when the first writer opens if needed.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            _records: PhantomData,
        }
    }

    /// [`new`](Self::new), then [`check`](Self::check): fails before any job starts when the
    /// directory cannot be created or written.
    pub fn prepare(dir: impl Into<PathBuf>) -> Result<Self, ConnectorError> {
        let sink = Self::new(dir);
        sink.check()?;
        Ok(sink)
    }

    /// Creates the directory if needed and verifies that a file can be written in it. The
    /// error names the directory.
    pub fn check(&self) -> Result<(), ConnectorError> {
        let unwritable = |cause| ConnectorError::OutputUnwritable {
            path: self.dir.clone(),
            cause,
        };
        fs::create_dir_all(&self.dir).map_err(unwritable)?;
        let probe = self
            .dir
            .join(format!(".weir-write-check-{}", std::process::id()));
        File::create(&probe)
            .and_then(|mut f| f.write_all(b"ok"))
            .map_err(unwritable)?;
        fs::remove_file(&probe).map_err(unwritable)?;
        Ok(())
    }

    /// The output directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl<T> Clone for FileSink<T> {
    fn clone(&self) -> Self {
        Self::new(self.dir.clone())
    }
}

impl<T> fmt::Debug for FileSink<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileSink").field("dir", &self.dir).finish()
    }
}

impl<T: Display + Send + 'static> Sink<T> for FileSink<T> {
    fn name(&self) -> String {
        "file".to_string()
    }

    fn create_writer(
        &self,
        ctx: &SinkContext,
        _restored: Option<&[u8]>,
    ) -> Result<Box<dyn SinkWriter<T>>, UserError> {
        fs::create_dir_all(&self.dir).map_err(|cause| ConnectorError::OutputUnwritable {
            path: self.dir.clone(),
            cause,
        })?;
        let name = format!("part-{}-{}", ctx.uid, ctx.subtask.get());
        let in_progress = self.dir.join(format!(".{name}.inprogress"));
        let file =
            File::create(&in_progress).map_err(|cause| ConnectorError::OutputUnwritable {
                path: in_progress.clone(),
                cause,
            })?;
        Ok(Box::new(FileWriter {
            out: Some(BufWriter::with_capacity(WRITE_BUFFER_BYTES, file)),
            dir: self.dir.clone(),
            in_progress,
            committed: self.dir.join(name),
            buf: String::new(),
            _records: PhantomData,
        }))
    }
}

/// One subtask's file writer. `out` is `None` once finished.
struct FileWriter<T> {
    out: Option<BufWriter<File>>,
    dir: PathBuf,
    in_progress: PathBuf,
    committed: PathBuf,
    buf: String,
    _records: PhantomData<fn(T)>,
}

impl<T> FileWriter<T> {
    fn unwritable(&self, path: &Path, cause: io::Error) -> ConnectorError {
        ConnectorError::OutputUnwritable {
            path: path.to_path_buf(),
            cause,
        }
    }
}

impl<T: Display + Send> SinkWriter<T> for FileWriter<T> {
    fn write_batch(&mut self, batch: Vec<T>) -> Result<(), UserError> {
        self.buf.clear();
        format_lines("", &batch, &mut self.buf);
        let Some(out) = &mut self.out else {
            return Err(ConnectorError::WriterFinished {
                path: self.committed.clone(),
            }
            .into());
        };
        if let Err(cause) = out.write_all(self.buf.as_bytes()) {
            return Err(self.unwritable(&self.in_progress, cause).into());
        }
        Ok(())
    }

    /// Flush, fsync, rename to the visible name, fsync the directory. A second call does nothing.
    fn finish(&mut self) -> Result<(), UserError> {
        let Some(out) = self.out.take() else {
            return Ok(());
        };
        let file = out
            .into_inner()
            .map_err(|e| self.unwritable(&self.in_progress, e.into_error()))?;
        file.sync_all()
            .map_err(|cause| self.unwritable(&self.in_progress, cause))?;
        drop(file);
        fs::rename(&self.in_progress, &self.committed)
            .map_err(|cause| self.unwritable(&self.committed, cause))?;
        sync_dir(&self.dir).map_err(|cause| self.unwritable(&self.dir, cause))?;
        tracing::debug!(file = %self.committed.display(), "file sink part committed");
        Ok(())
    }
}

/// Makes a rename in `dir` durable (a no-op where directories cannot be opened, as on Windows).
fn sync_dir(dir: &Path) -> io::Result<()> {
    if cfg!(unix) {
        File::open(dir)?.sync_all()
    } else {
        Ok(())
    }
}

/// Every line of every visible part file (`part-*`) in `dir`, files in name order. Hidden
/// in-progress files are ignored.
pub fn read_part_files(dir: impl AsRef<Path>) -> io::Result<Vec<String>> {
    let mut parts = Vec::new();
    for entry in fs::read_dir(dir.as_ref())? {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with("part-") && entry.file_type()?.is_file() {
            parts.push((name, entry.path()));
        }
    }
    parts.sort();
    let mut lines = Vec::new();
    for (_, path) in parts {
        lines.extend(fs::read_to_string(&path)?.lines().map(str::to_string));
    }
    Ok(lines)
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

    fn visible_files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .expect("read dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_finished_file_sink_makes_its_part_files_visible() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("out");
        let sink = FileSink::<u32>::prepare(&out).expect("prepare");
        let mut writers: Vec<_> = (0..2)
            .map(|s| {
                sink.create_writer(&ctx("counts", s, 2), None)
                    .expect("writer")
            })
            .collect();
        writers[1].write_batch(vec![3, 4]).expect("write");
        writers[0].write_batch(vec![1]).expect("write");
        writers[0].write_batch(vec![2]).expect("write");
        assert!(
            read_part_files(&out).expect("read").is_empty(),
            "nothing visible before finish"
        );
        for w in &mut writers {
            w.finish().expect("finish");
        }
        assert_eq!(visible_files(&out), vec!["part-counts-0", "part-counts-1"]);
        assert_eq!(
            read_part_files(&out).expect("read"),
            vec!["1", "2", "3", "4"]
        );
        // A second finish is harmless; writing after finish is an error.
        writers[0].finish().expect("finish again");
        assert!(writers[0].write_batch(vec![5]).is_err());
    }

    #[test]
    fn a_file_sink_dropped_without_finish_leaves_no_visible_part_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sink = FileSink::<String>::new(dir.path());
        let mut writer = sink
            .create_writer(&ctx("words", 3, 4), None)
            .expect("writer");
        writer
            .write_batch(vec!["partial".to_string()])
            .expect("write");
        drop(writer);
        assert_eq!(visible_files(dir.path()), vec![".part-words-3.inprogress"]);
        assert!(read_part_files(dir.path()).expect("read").is_empty());
    }

    #[test]
    fn a_file_sink_that_cannot_create_its_directory_names_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blocker = dir.path().join("a-file");
        fs::write(&blocker, "x").expect("write");
        let target = blocker.join("out");
        let err = FileSink::<u32>::prepare(&target).expect_err("not a directory");
        assert!(
            err.to_string().contains(&format!("'{}'", target.display())),
            "{err}"
        );
        let err = FileSink::<u32>::new(&target)
            .create_writer(&ctx("x", 0, 1), None)
            .err()
            .expect("not a directory");
        assert!(err.to_string().contains("a-file"), "{err}");
    }

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
