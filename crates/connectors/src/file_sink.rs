//! The file sink: records as lines in part files of one directory, made visible either when a
//! subtask finishes (no checkpoints) or exactly once per completed checkpoint (two-phase
//! commit).
//!
//! [`FileSink`]'s docs describe the file names and the two-phase commit step by step; this
//! module keeps the pure decisions (naming, [`commit_step`], [`plan_abort`]) apart from the
//! writers that do the I/O.

use crate::sinks::format_lines;
use crate::ConnectorError;
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::collections::HashSet;
use std::fmt::{self, Display};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use weir_runtime::{Sink, SinkContext, SinkWriter, UserError};
use weir_types::CheckpointId;

/// The write buffer of each file sink writer.
const WRITE_BUFFER_BYTES: usize = 256 * 1024;

/// The manifest format this build writes (2: with `next_seq`).
const MANIFEST_VERSION: u32 = 2;

/// The oldest manifest format this build reads (1: without `next_seq`).
const MANIFEST_OLDEST_READABLE_VERSION: u32 = 1;

/// Writes records as lines to part files in a directory, each published exactly once.
///
/// - **Without checkpointing** each subtask writes `<dir>/.part-<uid>-<subtask>.inprogress`;
///   [`SinkWriter::finish`] flushes, fsyncs and renames it to `<dir>/part-<uid>-<subtask>`
///   (then fsyncs the directory). A job that fails leaves only the hidden file. A rerun
///   overwrites the part files of the same uid and subtask; it does not remove those of
///   subtasks that no longer exist.
/// - **With checkpointing** the writer is a two-phase commit: the records between two barriers
///   become one part file `<dir>/part-<uid>-<subtask>-<seq>`, visible only once their
///   checkpoint completes, and a restore publishes what the restored checkpoint staged and
///   deletes what was staged after it (steps below). A rerun adds part files next to those
///   of an earlier run; start with an empty directory.
///
/// Readers of `part-*` (such as [`read_part_files`]) never see partial output: a writer
/// dropped at any point (the job failed) leaves only hidden files behind.
///
/// # File names
///
/// All names of one subtask start with `part-<uid>-<subtask>`. Hidden files (a leading `.`)
/// are never output; [`read_part_files`] and every reader of `part-*` ignore them.
///
/// | file                                                | checkpointing | holds                  |
/// |-----------------------------------------------------|---------------|------------------------|
/// | `.part-<uid>-<subtask>.inprogress`                  | off           | what is being written  |
/// | `part-<uid>-<subtask>`                              | off           | all, after `finish`    |
/// | `.part-<uid>-<subtask>-a<attempt>-<seq>.inprogress` | on            | the open transaction   |
/// | `.part-<uid>-<subtask>-a<attempt>-<seq>.pending`    | on            | a staged transaction   |
/// | `part-<uid>-<subtask>-<seq>`                        | on            | a committed one        |
///
/// `seq` numbers the transactions of one subtask; a writer starts above every `seq` already in
/// the directory for its uid and subtask (and in its manifest), and the attempt is part of
/// every hidden name, so no file that may already exist is ever reused or overwritten.
///
/// # Two-phase commit (with checkpointing)
///
/// 1. [`write_batch`](SinkWriter::write_batch): the first record after a barrier opens a new
///    transaction file (`….inprogress`); records are appended, counting bytes and CRC32.
/// 2. [`prepare_commit(n)`](SinkWriter::prepare_commit): flush, fsync and close the open file,
///    rename it to `….pending`, fsync the directory, and add `(n, seq, pending name, final name,
///    size, crc32)` to the staged list; return the whole staged list as the manifest, with
///    `next_seq` (always a manifest, even with nothing staged). A checkpoint without records
///    stages no file.
/// 3. [`commit(n)`](SinkWriter::commit): rename every staged transaction with checkpoint ≤ `n`
///    from pending to final, fsync the directory, drop them from the list. Idempotent.
/// 4. [`finish`](SinkWriter::finish) (end of input): close the open file; the final checkpoint's
///    `prepare_commit` stages it and its `commit` publishes it. Writing after `finish` fails.
/// 5. Restore ([`Sink::create_writer`] with the manifest of the restored checkpoint, which
///    completed): publish every listed transaction, checking size and CRC32 — already
///    published with the right size is fine, but a transaction whose files are both missing or
///    damaged is an error ([`ConnectorError::CommitLost`]): committed output never silently
///    vanishes. Then abort: delete every hidden file of this uid and subtask (staged or written
///    after that checkpoint, by any attempt); other subtasks' files are never touched. Files
///    this subtask *published* with a number at or above the manifest's `next_seq` came from
///    checkpoints after the restored one (recovery fell back past a damaged checkpoint): they
///    are unpublished (deleted), since their records are replayed. A start without a manifest
///    aborts hidden files the same way and deletes no visible file.
///
/// # The manifest
///
/// What `prepare_commit` returns and a restore reads: versioned JSON, file names relative to
/// the directory, e.g.
/// `{"version":2,"uid":"sink","subtask":0,"next_seq":8,"transactions":[{"checkpoint":3,"seq":7,
/// "pending":".part-sink-0-a0-7.pending","final":"part-sink-0-7","size":120,"crc32":305419896}]}`.
/// Version 1 (without `next_seq`) is still read; it rolls nothing back. A manifest of another
/// version, of another uid or subtask, or naming files that are not this
/// subtask's is refused ([`ConnectorError::BadManifest`]).
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

    /// Without checkpointing and without a manifest: the publish-on-finish writer. Otherwise
    /// the two-phase writer, after committing `restored`'s transactions and aborting the rest.
    /// (A manifest handed to a job without checkpointing is still committed first.)
    fn create_writer(
        &self,
        ctx: &SinkContext,
        restored: Option<&[u8]>,
    ) -> Result<Box<dyn SinkWriter<T>>, UserError> {
        fs::create_dir_all(&self.dir).map_err(|cause| unwritable(&self.dir, cause))?;
        let names = PartNames::new(ctx);
        if ctx.checkpointing || restored.is_some() {
            let writer = TwoPhaseWriter::open(&self.dir, names.clone(), ctx.attempt, restored)?;
            if ctx.checkpointing {
                return Ok(Box::new(writer));
            }
        }
        let in_progress = self.dir.join(names.unversioned_in_progress());
        let file = File::create(&in_progress).map_err(|cause| unwritable(&in_progress, cause))?;
        Ok(Box::new(OnFinishWriter {
            out: Some(BufWriter::with_capacity(WRITE_BUFFER_BYTES, file)),
            dir: self.dir.clone(),
            in_progress,
            committed: self.dir.join(names.unversioned_final()),
            buf: String::new(),
            _records: PhantomData,
        }))
    }
}

fn unwritable(path: &Path, cause: io::Error) -> ConnectorError {
    ConnectorError::OutputUnwritable {
        path: path.to_path_buf(),
        cause,
    }
}

// ---------------------------------------------------------------------------------------------
// File names

/// The file names of one sink subtask: built here and recognised here, nowhere else.
#[derive(Clone, Debug, PartialEq, Eq)]
struct PartNames {
    uid: String,
    subtask: u32,
    /// `part-<uid>-<subtask>`.
    stem: String,
}

/// A file of this uid and subtask, recognised by its name.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum OwnFile {
    /// `.part-<uid>-<subtask>.inprogress`: the file of a run without checkpoints.
    UnversionedInProgress,
    /// `part-<uid>-<subtask>`: the output of a run without checkpoints.
    UnversionedFinal,
    /// An open transaction's file.
    InProgress { attempt: u32, seq: u64 },
    /// A staged transaction's file.
    Pending { attempt: u32, seq: u64 },
    /// A committed transaction's file.
    Final { seq: u64 },
}

impl OwnFile {
    /// Hidden files are never output: an abort may delete them.
    fn hidden(self) -> bool {
        matches!(
            self,
            Self::UnversionedInProgress | Self::InProgress { .. } | Self::Pending { .. }
        )
    }

    fn seq(self) -> Option<u64> {
        match self {
            Self::InProgress { seq, .. } | Self::Pending { seq, .. } | Self::Final { seq } => {
                Some(seq)
            }
            Self::UnversionedInProgress | Self::UnversionedFinal => None,
        }
    }
}

impl PartNames {
    fn new(ctx: &SinkContext) -> Self {
        let (uid, subtask) = (ctx.uid.to_string(), ctx.subtask.get());
        Self {
            stem: format!("part-{uid}-{subtask}"),
            uid,
            subtask,
        }
    }

    fn unversioned_in_progress(&self) -> String {
        format!(".{}.inprogress", self.stem)
    }

    fn unversioned_final(&self) -> String {
        self.stem.clone()
    }

    fn in_progress(&self, attempt: u32, seq: u64) -> String {
        format!(".{}-a{attempt}-{seq}.inprogress", self.stem)
    }

    fn pending(&self, attempt: u32, seq: u64) -> String {
        format!(".{}-a{attempt}-{seq}.pending", self.stem)
    }

    fn committed(&self, seq: u64) -> String {
        format!("{}-{seq}", self.stem)
    }

    /// Which file of this uid and subtask `name` is, if any. Exact: the name must be one that
    /// [`PartNames`] builds, so a file of another uid or subtask (even `uid-1` next to `uid`)
    /// is never taken for ours.
    fn classify(&self, name: &str) -> Option<OwnFile> {
        if name == self.unversioned_in_progress() {
            return Some(OwnFile::UnversionedInProgress);
        }
        if name == self.stem {
            return Some(OwnFile::UnversionedFinal);
        }
        if let Some(seq) = name
            .strip_prefix(self.stem.as_str())
            .and_then(|rest| rest.strip_prefix('-'))
            .and_then(number)
        {
            return Some(OwnFile::Final { seq });
        }
        let hidden = |suffix: &str| -> Option<(u32, u64)> {
            let body = name.strip_suffix(suffix)?;
            let (head, seq) = body.rsplit_once('-')?;
            let (head, attempt) = head.rsplit_once('-')?;
            let attempt = u32::try_from(number(attempt.strip_prefix('a')?)?).ok()?;
            let own = head.strip_prefix('.')? == self.stem;
            own.then_some((attempt, number(seq)?))
        };
        if let Some((attempt, seq)) = hidden(".inprogress") {
            return Some(OwnFile::InProgress { attempt, seq });
        }
        if let Some((attempt, seq)) = hidden(".pending") {
            return Some(OwnFile::Pending { attempt, seq });
        }
        None
    }
}

/// A decimal number of ASCII digits only (no sign, no spaces).
fn number(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

// ---------------------------------------------------------------------------------------------
// The manifest: the writer's state in a checkpoint

/// What a two-phase writer stores with a checkpoint: its staged, uncommitted transactions.
///
/// JSON, so that an operator can read it:
/// `{"version":1,"uid":"sink","subtask":0,"transactions":[{"checkpoint":3,"seq":7,
/// "pending":".part-sink-0-a0-7.pending","final":"part-sink-0-7","size":120,"crc32":305419896}]}`.
/// File names are relative to the sink's directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Manifest {
    version: u32,
    uid: String,
    subtask: u32,
    /// Every transaction numbered below this was staged or committed when the manifest was
    /// written; a restore rolls back published files numbered from here on (they belong to
    /// checkpoints after the restored one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    next_seq: Option<u64>,
    transactions: Vec<StagedTransaction>,
}

/// One staged transaction: the records of one checkpoint interval, in a pending file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct StagedTransaction {
    checkpoint: CheckpointId,
    seq: u64,
    pending: String,
    #[serde(rename = "final")]
    committed: String,
    size: u64,
    crc32: u32,
}

impl Manifest {
    fn encode(names: &PartNames, next_seq: u64, transactions: &[StagedTransaction]) -> Vec<u8> {
        let manifest = Self {
            version: MANIFEST_VERSION,
            uid: names.uid.clone(),
            subtask: names.subtask,
            next_seq: Some(next_seq),
            transactions: transactions.to_vec(),
        };
        serde_json::to_vec(&manifest).expect("a manifest serializes")
    }

    /// Decodes and checks `bytes`: the version, that it is this subtask's, and that every file
    /// it names is one of this subtask's (a manifest never makes the writer rename a file it
    /// does not own). Errors name the sink and subtask.
    fn decode(names: &PartNames, bytes: &[u8]) -> Result<Self, ConnectorError> {
        let bad = |reason: String| ConnectorError::BadManifest {
            uid: names.uid.clone(),
            subtask: names.subtask,
            reason,
        };
        #[derive(Deserialize)]
        struct Version {
            version: u32,
        }
        let Version { version } = serde_json::from_slice(bytes)
            .map_err(|e| bad(format!("it is not a file sink manifest: {e}")))?;
        if !(MANIFEST_OLDEST_READABLE_VERSION..=MANIFEST_VERSION).contains(&version) {
            return Err(bad(format!(
                "manifest version {version} is not supported (this build reads versions \
                 {MANIFEST_OLDEST_READABLE_VERSION} to {MANIFEST_VERSION})"
            )));
        }
        let manifest: Self =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("it cannot be decoded: {e}")))?;
        if manifest.uid != names.uid || manifest.subtask != names.subtask {
            return Err(bad(format!(
                "it belongs to sink '{}' subtask {}",
                manifest.uid, manifest.subtask
            )));
        }
        for txn in &manifest.transactions {
            let pending_ok = matches!(
                names.classify(&txn.pending),
                Some(OwnFile::Pending { seq, .. }) if seq == txn.seq
            );
            if !pending_ok || txn.committed != names.committed(txn.seq) {
                return Err(bad(format!(
                    "its transaction for {} names '{}' and '{}', which are not this \
                     subtask's files for transaction {}",
                    txn.checkpoint, txn.pending, txn.committed, txn.seq
                )));
            }
        }
        Ok(manifest)
    }
}

// ---------------------------------------------------------------------------------------------
// Decisions (pure)

/// What committing one staged transaction takes, given the sizes of its two files on disk.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum CommitStep {
    /// The pending file is there with the recorded size: rename it to the final name.
    Publish,
    /// Only the final file is there, with the recorded size: an earlier commit published it.
    AlreadyPublished,
    /// Neither file is there: the transaction's records are lost. Refuse.
    Lost,
    /// The pending file (`pending: true`) or, with no pending file, the final file has `found`
    /// bytes instead of the recorded size. Refuse.
    WrongSize { pending: bool, found: u64 },
}

fn commit_step(size: u64, pending_len: Option<u64>, final_len: Option<u64>) -> CommitStep {
    match (pending_len, final_len) {
        (Some(len), _) if len == size => CommitStep::Publish,
        (Some(found), _) => CommitStep::WrongSize {
            pending: true,
            found,
        },
        (None, Some(len)) if len == size => CommitStep::AlreadyPublished,
        (None, Some(found)) => CommitStep::WrongSize {
            pending: false,
            found,
        },
        (None, None) => CommitStep::Lost,
    }
}

/// What a restoring writer does once the manifest's transactions are published.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Abort {
    /// Hidden files of this uid and subtask that the manifest does not list: delete them.
    stale: Vec<String>,
    /// The first transaction number above every one in the directory and the manifest.
    next_seq: u64,
}

fn plan_abort(names: &PartNames, listed: &[StagedTransaction], directory: &[String]) -> Abort {
    let keep: HashSet<&str> = listed.iter().map(|t| t.pending.as_str()).collect();
    let mut stale = Vec::new();
    let mut max_seq = listed.iter().map(|t| t.seq).max();
    for name in directory {
        let Some(file) = names.classify(name) else {
            continue;
        };
        max_seq = max_seq.max(file.seq());
        if file.hidden() && !keep.contains(name.as_str()) {
            stale.push(name.clone());
        }
    }
    stale.sort();
    Abort {
        stale,
        next_seq: max_seq.map_or(0, |seq| seq + 1),
    }
}

// ---------------------------------------------------------------------------------------------
// The writer without checkpointing

/// One subtask's writer without checkpointing: publishes on finish. `out` is `None` once
/// finished.
struct OnFinishWriter<T> {
    out: Option<BufWriter<File>>,
    dir: PathBuf,
    in_progress: PathBuf,
    committed: PathBuf,
    buf: String,
    _records: PhantomData<fn(T)>,
}

impl<T: Display + Send> SinkWriter<T> for OnFinishWriter<T> {
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
            return Err(unwritable(&self.in_progress, cause).into());
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
            .map_err(|e| unwritable(&self.in_progress, e.into_error()))?;
        file.sync_all()
            .map_err(|cause| unwritable(&self.in_progress, cause))?;
        drop(file);
        fs::rename(&self.in_progress, &self.committed)
            .map_err(|cause| unwritable(&self.committed, cause))?;
        sync_dir(&self.dir).map_err(|cause| unwritable(&self.dir, cause))?;
        tracing::debug!(file = %self.committed.display(), "file sink part committed");
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The two-phase writer

/// The open transaction: its in-progress file and what has been written to it.
struct OpenTransaction {
    seq: u64,
    path: PathBuf,
    /// `None` once closed (by `finish`).
    out: Option<BufWriter<File>>,
    size: u64,
    crc: crc32fast::Hasher,
}

impl OpenTransaction {
    /// Flushes, fsyncs and closes the file. A second call does nothing.
    fn close(&mut self) -> Result<(), ConnectorError> {
        let Some(out) = self.out.take() else {
            return Ok(());
        };
        let file = out
            .into_inner()
            .map_err(|e| unwritable(&self.path, e.into_error()))?;
        file.sync_all()
            .map_err(|cause| unwritable(&self.path, cause))
    }
}

/// One subtask's two-phase writer (see the [module docs](self) for the steps).
struct TwoPhaseWriter<T> {
    dir: PathBuf,
    names: PartNames,
    attempt: u32,
    /// The number of the next transaction to open.
    next_seq: u64,
    open: Option<OpenTransaction>,
    /// Prepared, not yet committed; in checkpoint order.
    staged: Vec<StagedTransaction>,
    /// The last checkpoint prepared (or restored): the next must be above it.
    last_prepared: Option<CheckpointId>,
    finished: bool,
    buf: String,
    _records: PhantomData<fn(T)>,
}

impl<T> TwoPhaseWriter<T> {
    /// Opens the writer of `names`' subtask in `dir`: publishes the transactions `restored`
    /// lists, then aborts everything else this subtask had staged or written (step 5).
    fn open(
        dir: &Path,
        names: PartNames,
        attempt: u32,
        restored: Option<&[u8]>,
    ) -> Result<Self, ConnectorError> {
        let (listed, rollback_from) = match restored {
            Some(bytes) => {
                let m = Manifest::decode(&names, bytes)?;
                (m.transactions, m.next_seq)
            }
            None => (Vec::new(), None),
        };
        for txn in &listed {
            publish(dir, &names, txn, Verify::SizeAndCrc)?;
        }
        // Files published after the restored checkpoint (recovery fell back past a damaged
        // newer one): their records are replayed, so unpublish them rather than duplicate.
        if let Some(from) = rollback_from {
            for name in list_dir(dir)? {
                let Some(file) = names.classify(&name) else {
                    continue;
                };
                if !file.hidden() && file.seq().is_some_and(|seq| seq >= from) {
                    let path = dir.join(&name);
                    tracing::warn!(uid = %names.uid, subtask = names.subtask, file = %name, "rolling back output published after the restored checkpoint");
                    match fs::remove_file(&path) {
                        Err(cause) if cause.kind() != io::ErrorKind::NotFound => {
                            return Err(unwritable(&path, cause))
                        }
                        _ => {}
                    }
                }
            }
        }
        let directory = list_dir(dir)?;
        let abort = plan_abort(&names, &listed, &directory);
        for name in &abort.stale {
            let path = dir.join(name);
            match fs::remove_file(&path) {
                Err(cause) if cause.kind() != io::ErrorKind::NotFound => {
                    return Err(unwritable(&path, cause))
                }
                _ => {}
            }
        }
        sync_dir(dir).map_err(|cause| unwritable(dir, cause))?;
        tracing::info!(
            uid = %names.uid,
            subtask = names.subtask,
            attempt,
            committed = listed.len(),
            aborted = abort.stale.len(),
            next_seq = abort.next_seq,
            "file sink writer opened"
        );
        Ok(Self {
            dir: dir.to_path_buf(),
            last_prepared: listed.iter().map(|t| t.checkpoint).max(),
            names,
            attempt,
            next_seq: abort.next_seq,
            open: None,
            staged: Vec::new(),
            finished: false,
            buf: String::new(),
            _records: PhantomData,
        })
    }

    /// The open transaction, opening a new in-progress file if there is none.
    fn open_transaction(&mut self) -> Result<&mut OpenTransaction, ConnectorError> {
        if self.open.is_none() {
            let seq = self.next_seq;
            let path = self.dir.join(self.names.in_progress(self.attempt, seq));
            // `create_new`: an existing file means another writer uses our names; fail loudly.
            let file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(|cause| unwritable(&path, cause))?;
            self.next_seq += 1;
            self.open = Some(OpenTransaction {
                seq,
                path,
                out: Some(BufWriter::with_capacity(WRITE_BUFFER_BYTES, file)),
                size: 0,
                crc: crc32fast::Hasher::new(),
            });
        }
        Ok(self.open.as_mut().expect("opened above"))
    }
}

impl<T: Display + Send> SinkWriter<T> for TwoPhaseWriter<T> {
    fn write_batch(&mut self, batch: Vec<T>) -> Result<(), UserError> {
        if self.finished {
            return Err(ConnectorError::WriterFinished {
                path: self.dir.clone(),
            }
            .into());
        }
        if batch.is_empty() {
            return Ok(());
        }
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        format_lines("", &batch, &mut buf);
        let txn = self.open_transaction()?;
        let out = txn
            .out
            .as_mut()
            .expect("only finish closes, and it forbids writes");
        out.write_all(buf.as_bytes())
            .map_err(|cause| unwritable(&txn.path, cause))?;
        txn.size += buf.len() as u64;
        txn.crc.update(buf.as_bytes());
        self.buf = buf;
        Ok(())
    }

    fn prepare_commit(&mut self, checkpoint: CheckpointId) -> Result<Option<Vec<u8>>, UserError> {
        if let Some(previous) = self.last_prepared.filter(|&p| checkpoint <= p) {
            return Err(ConnectorError::CheckpointOutOfOrder {
                uid: self.names.uid.clone(),
                subtask: self.names.subtask,
                previous,
                got: checkpoint,
            }
            .into());
        }
        self.last_prepared = Some(checkpoint);
        if let Some(mut txn) = self.open.take() {
            txn.close()?;
            let pending = self.names.pending(self.attempt, txn.seq);
            let pending_path = self.dir.join(&pending);
            fs::rename(&txn.path, &pending_path)
                .map_err(|cause| unwritable(&pending_path, cause))?;
            sync_dir(&self.dir).map_err(|cause| unwritable(&self.dir, cause))?;
            tracing::debug!(
                uid = %self.names.uid,
                subtask = self.names.subtask,
                %checkpoint,
                file = %pending,
                bytes = txn.size,
                "file sink transaction staged"
            );
            self.staged.push(StagedTransaction {
                checkpoint,
                seq: txn.seq,
                pending,
                committed: self.names.committed(txn.seq),
                size: txn.size,
                crc32: txn.crc.finalize(),
            });
        }
        // Always a manifest, even with nothing staged: its `next_seq` tells a restore which
        // published files came after this checkpoint.
        Ok(Some(Manifest::encode(
            &self.names,
            self.next_seq,
            &self.staged,
        )))
    }

    fn commit(&mut self, checkpoint: CheckpointId) -> Result<(), UserError> {
        let due = self
            .staged
            .iter()
            .take_while(|t| t.checkpoint <= checkpoint)
            .count();
        for txn in &self.staged[..due] {
            publish(&self.dir, &self.names, txn, Verify::Size)?;
        }
        if due > 0 {
            sync_dir(&self.dir).map_err(|cause| unwritable(&self.dir, cause))?;
            self.staged.drain(..due);
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), UserError> {
        if let Some(txn) = &mut self.open {
            txn.close()?;
        }
        self.finished = true;
        Ok(())
    }
}

/// How much [`publish`] checks before vouching for a transaction's file.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Verify {
    /// The size: enough for files this writer wrote and fsynced itself.
    Size,
    /// The size and the CRC32 of the content: for a restore, which trusts nothing on disk.
    SizeAndCrc,
}

/// Publishes one staged transaction (pending → final), idempotently; see [`CommitStep`]. The
/// caller fsyncs the directory afterwards.
fn publish(
    dir: &Path,
    names: &PartNames,
    txn: &StagedTransaction,
    verify: Verify,
) -> Result<(), ConnectorError> {
    let pending = dir.join(&txn.pending);
    let committed = dir.join(&txn.committed);
    let lost = |path: &Path, reason: String| ConnectorError::CommitLost {
        uid: names.uid.clone(),
        subtask: names.subtask,
        checkpoint: txn.checkpoint,
        path: path.to_path_buf(),
        reason,
    };
    let check_crc = |path: &Path| -> Result<(), ConnectorError> {
        if verify == Verify::SizeAndCrc {
            let found = crc32_of(path)?;
            if found != txn.crc32 {
                return Err(lost(
                    path,
                    format!("has CRC32 {found:08x}, the manifest says {:08x}", txn.crc32),
                ));
            }
        }
        Ok(())
    };
    match commit_step(txn.size, file_len(&pending)?, file_len(&committed)?) {
        CommitStep::Publish => {
            check_crc(&pending)?;
            fs::rename(&pending, &committed).map_err(|cause| unwritable(&committed, cause))?;
            tracing::debug!(
                uid = %names.uid,
                subtask = names.subtask,
                checkpoint = %txn.checkpoint,
                file = %txn.committed,
                "file sink transaction committed"
            );
        }
        CommitStep::AlreadyPublished => check_crc(&committed)?,
        CommitStep::Lost => {
            return Err(lost(
                &pending,
                format!(
                    "and its final file '{}' are both missing",
                    committed.display()
                ),
            ))
        }
        CommitStep::WrongSize { pending: p, found } => {
            return Err(lost(
                if p { &pending } else { &committed },
                format!("has {found} bytes, the manifest says {}", txn.size),
            ))
        }
    }
    Ok(())
}

/// The length of the regular file at `path`, `None` when there is none.
fn file_len(path: &Path) -> Result<Option<u64>, ConnectorError> {
    match fs::metadata(path) {
        Ok(meta) if meta.is_file() => Ok(Some(meta.len())),
        Ok(_) => Ok(None),
        Err(cause) if cause.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(cause) => Err(unwritable(path, cause)),
    }
}

fn crc32_of(path: &Path) -> Result<u32, ConnectorError> {
    let read_err = |cause| unwritable(path, cause);
    let mut file = File::open(path).map_err(read_err)?;
    let mut hasher = crc32fast::Hasher::new();
    let mut chunk = vec![0u8; WRITE_BUFFER_BYTES];
    loop {
        let n = match file.read(&mut chunk) {
            Ok(0) => return Ok(hasher.finalize()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_err(e)),
        };
        hasher.update(&chunk[..n]);
    }
}

/// The names of the entries of `dir`.
fn list_dir(dir: &Path) -> Result<Vec<String>, ConnectorError> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(|cause| unwritable(dir, cause))? {
        let entry = entry.map_err(|cause| unwritable(dir, cause))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    Ok(names)
}

/// Makes a rename in `dir` durable (a no-op where directories cannot be opened, as on Windows).
fn sync_dir(dir: &Path) -> io::Result<()> {
    if cfg!(unix) {
        File::open(dir)?.sync_all()
    } else {
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Reading the output

/// Every line of every visible part file (`part-*`) in `dir`. Files come in name order, where
/// runs of digits compare as numbers (`part-x-0-9` before `part-x-0-10`), so one subtask's
/// committed transactions come in the order they were written. Hidden files are ignored.
pub fn read_part_files(dir: impl AsRef<Path>) -> io::Result<Vec<String>> {
    let mut parts = Vec::new();
    for entry in fs::read_dir(dir.as_ref())? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("part-") && entry.file_type()?.is_file() {
            parts.push((name, entry.path()));
        }
    }
    parts.sort_by(|a, b| natural_cmp(&a.0, &b.0));
    let mut lines = Vec::new();
    for (_, path) in parts {
        lines.extend(fs::read_to_string(&path)?.lines().map(str::to_string));
    }
    Ok(lines)
}

/// Compares names piece by piece, runs of ASCII digits as numbers (of any length).
fn natural_cmp(a: &str, b: &str) -> Ordering {
    fn pieces(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let bytes = s.as_bytes();
        for i in 1..=bytes.len() {
            if i == bytes.len() || bytes[i].is_ascii_digit() != bytes[start].is_ascii_digit() {
                out.push((bytes[start].is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        out
    }
    let (pa, pb) = (pieces(a), pieces(b));
    for (&(da, x), &(db, y)) in pa.iter().zip(&pb) {
        let order = if da && db {
            let (x, y) = (x.trim_start_matches('0'), y.trim_start_matches('0'));
            x.len().cmp(&y.len()).then_with(|| x.cmp(y))
        } else {
            x.cmp(y)
        };
        if order != Ordering::Equal {
            return order;
        }
    }
    pa.len().cmp(&pb.len()).then_with(|| a.cmp(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::ctx;
    use proptest::prelude::*;

    fn all_files(dir: &Path) -> Vec<String> {
        let mut names = list_dir(dir).expect("list");
        names.sort();
        names
    }

    /// A context with checkpointing on.
    fn checkpointed(uid: &str, subtask: u32, parallelism: u32, attempt: u32) -> SinkContext {
        SinkContext {
            attempt,
            checkpointing: true,
            ..ctx(uid, subtask, parallelism)
        }
    }

    fn lines(records: impl IntoIterator<Item = u32>) -> Vec<String> {
        records.into_iter().map(|r| r.to_string()).collect()
    }

    fn names(uid: &str, subtask: u32) -> PartNames {
        PartNames::new(&ctx(uid, subtask, subtask + 1))
    }

    // --- without checkpointing ----------------------------------------------------------------

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
        assert_eq!(all_files(&out), vec!["part-counts-0", "part-counts-1"]);
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
        assert_eq!(all_files(dir.path()), vec![".part-words-3.inprogress"]);
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

    // --- two-phase commit ---------------------------------------------------------------------

    #[test]
    fn a_committed_checkpoint_becomes_visible_and_an_uncommitted_one_does_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sink = FileSink::<u32>::new(dir.path());
        let mut writer = sink
            .create_writer(&checkpointed("out", 0, 1, 0), None)
            .expect("writer");
        writer.write_batch(vec![1, 2]).expect("write");
        let manifest = writer.prepare_commit(CheckpointId(1)).expect("prepare");
        assert!(
            manifest.is_some(),
            "a staged transaction is in the manifest"
        );
        writer.write_batch(vec![3]).expect("write");
        writer.prepare_commit(CheckpointId(2)).expect("prepare");
        writer.write_batch(vec![4]).expect("write");
        assert!(read_part_files(dir.path()).expect("read").is_empty());

        writer.commit(CheckpointId(1)).expect("commit");
        assert_eq!(read_part_files(dir.path()).expect("read"), lines([1, 2]));
        writer.commit(CheckpointId(2)).expect("commit");
        assert_eq!(read_part_files(dir.path()).expect("read"), lines([1, 2, 3]));
        assert_eq!(
            all_files(dir.path()),
            vec![
                ".part-out-0-a0-2.inprogress",
                "part-out-0-0",
                "part-out-0-1"
            ]
        );
    }

    #[test]
    fn a_commit_covers_every_earlier_staged_checkpoint() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sink = FileSink::<u32>::new(dir.path());
        let mut writer = sink
            .create_writer(&checkpointed("out", 0, 1, 0), None)
            .expect("writer");
        for (checkpoint, record) in [(1, 10), (2, 20), (3, 30)] {
            writer.write_batch(vec![record]).expect("write");
            writer
                .prepare_commit(CheckpointId(checkpoint))
                .expect("prepare");
        }
        // Checkpoints 1 and 2 were aborted (or their notifications lost): 3 publishes all.
        writer.commit(CheckpointId(3)).expect("commit");
        assert_eq!(
            read_part_files(dir.path()).expect("read"),
            lines([10, 20, 30])
        );
    }

    #[test]
    fn a_checkpoint_without_records_stages_no_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sink = FileSink::<u32>::new(dir.path());
        let mut writer = sink
            .create_writer(&checkpointed("out", 0, 1, 0), None)
            .expect("writer");
        let staged_txns = |m: Option<Vec<u8>>| -> usize {
            let m: serde_json::Value =
                serde_json::from_slice(&m.expect("always a manifest")).expect("json");
            m["transactions"].as_array().expect("list").len()
        };
        assert_eq!(
            staged_txns(writer.prepare_commit(CheckpointId(1)).expect("prepare")),
            0
        );
        writer.write_batch(vec![]).expect("an empty batch");
        assert_eq!(
            staged_txns(writer.prepare_commit(CheckpointId(2)).expect("prepare")),
            0
        );
        writer.write_batch(vec![7]).expect("write");
        let staged = writer.prepare_commit(CheckpointId(3)).expect("prepare");
        // Nothing new, but chk-3 is still uncommitted: the manifest still lists it.
        let again = writer.prepare_commit(CheckpointId(4)).expect("prepare");
        assert!(staged.is_some());
        assert_eq!(again, staged);
        writer.commit(CheckpointId(4)).expect("commit");
        assert_eq!(
            staged_txns(writer.prepare_commit(CheckpointId(5)).expect("prepare")),
            0
        );
        assert_eq!(all_files(dir.path()), vec!["part-out-0-0"]);
    }

    #[test]
    fn the_manifest_is_versioned_json_listing_the_staged_transactions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sink = FileSink::<u32>::new(dir.path());
        let mut writer = sink
            .create_writer(&checkpointed("out", 2, 3, 1), None)
            .expect("writer");
        writer.write_batch(vec![1, 22]).expect("write");
        let manifest = writer
            .prepare_commit(CheckpointId(4))
            .expect("prepare")
            .expect("staged");
        let json: serde_json::Value = serde_json::from_slice(&manifest).expect("json");
        let expected = serde_json::json!({
            "version": 2,
            "uid": "out",
            "subtask": 2,
            "next_seq": 1,
            "transactions": [{
                "checkpoint": 4,
                "seq": 0,
                "pending": ".part-out-2-a1-0.pending",
                "final": "part-out-2-0",
                "size": 5,
                "crc32": crc32fast::hash(b"1\n22\n"),
            }],
        });
        assert_eq!(json, expected);
    }

    #[test]
    fn a_version_1_manifest_is_still_read_and_rolls_nothing_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sink = FileSink::<u32>::new(dir.path());
        let mut writer = sink
            .create_writer(&checkpointed("out", 0, 1, 0), None)
            .expect("writer");
        writer.write_batch(vec![1]).expect("write");
        writer.prepare_commit(CheckpointId(1)).expect("prepare");
        writer.commit(CheckpointId(1)).expect("commit");
        drop(writer);
        let v1 = br#"{"version":1,"uid":"out","subtask":0,"transactions":[]}"#;
        let _restored = sink
            .create_writer(&checkpointed("out", 0, 1, 1), Some(v1))
            .expect("a version 1 manifest restores");
        assert_eq!(all_files(dir.path()), vec!["part-out-0-0"]);
    }

    #[test]
    fn a_restore_from_an_older_checkpoint_unpublishes_what_later_checkpoints_published() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sink = FileSink::<u32>::new(dir.path());
        let mut writer = sink
            .create_writer(&checkpointed("out", 0, 1, 0), None)
            .expect("writer");
        writer.write_batch(vec![1]).expect("write");
        let older = writer.prepare_commit(CheckpointId(1)).expect("prepare");
        writer.commit(CheckpointId(1)).expect("commit");
        writer.write_batch(vec![2]).expect("write");
        writer.prepare_commit(CheckpointId(2)).expect("prepare");
        writer.commit(CheckpointId(2)).expect("commit");
        drop(writer);
        assert_eq!(all_files(dir.path()), vec!["part-out-0-0", "part-out-0-1"]);
        // chk-2 turned out damaged: recovery restores chk-1, whose records are all in file 0.
        let _restored = sink
            .create_writer(&checkpointed("out", 0, 1, 1), older.as_deref())
            .expect("writer");
        assert_eq!(all_files(dir.path()), vec!["part-out-0-0"]);
    }

    #[test]
    fn a_commit_replayed_twice_is_harmless() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sink = FileSink::<u32>::new(dir.path());
        let mut writer = sink
            .create_writer(&checkpointed("out", 0, 1, 0), None)
            .expect("writer");
        writer.write_batch(vec![1, 2]).expect("write");
        let manifest = writer
            .prepare_commit(CheckpointId(1))
            .expect("prepare")
            .expect("staged");
        writer.commit(CheckpointId(1)).expect("commit");
        writer.commit(CheckpointId(1)).expect("commit again");
        drop(writer);
        // A restore replays the commit of a transaction that is already published.
        for attempt in 1..3 {
            sink.create_writer(&checkpointed("out", 0, 1, attempt), Some(&manifest))
                .expect("restore");
        }
        assert_eq!(read_part_files(dir.path()).expect("read"), lines([1, 2]));
        assert_eq!(all_files(dir.path()), vec!["part-out-0-0"]);
    }

    #[test]
    fn a_restore_commits_the_manifest_and_deletes_what_was_staged_after_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sink = FileSink::<u32>::new(dir.path());
        let mut writer = sink
            .create_writer(&checkpointed("out", 0, 1, 0), None)
            .expect("writer");
        writer.write_batch(vec![1]).expect("write");
        let first = writer
            .prepare_commit(CheckpointId(1))
            .expect("prepare")
            .expect("staged");
        writer.write_batch(vec![2]).expect("write");
        writer.prepare_commit(CheckpointId(2)).expect("prepare");
        writer.write_batch(vec![3]).expect("write");
        drop(writer); // the job fails; checkpoint 2 never completed

        let mut restored = sink
            .create_writer(&checkpointed("out", 0, 1, 1), Some(&first))
            .expect("restore");
        assert_eq!(
            all_files(dir.path()),
            vec!["part-out-0-0"],
            "chk-1 published; chk-2's pending file and the open file aborted"
        );
        // The replayed records go to new names: seq 3, above the deleted files' 1 and 2.
        restored.write_batch(vec![2, 3]).expect("write");
        restored.finish().expect("finish");
        restored.prepare_commit(CheckpointId(2)).expect("prepare");
        restored.commit(CheckpointId(2)).expect("commit");
        assert_eq!(all_files(dir.path()), vec!["part-out-0-0", "part-out-0-3"]);
        assert_eq!(read_part_files(dir.path()).expect("read"), lines([1, 2, 3]));
    }

    #[test]
    fn a_restore_never_touches_another_subtasks_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sink = FileSink::<u32>::new(dir.path());
        // Subtask 1 of "out", and subtask 1 of "out-0" whose names start like "out"'s subtask 0.
        let mut others = Vec::new();
        for (uid, subtask) in [("out", 1), ("out-0", 1)] {
            let mut w = sink
                .create_writer(&checkpointed(uid, subtask, 2, 0), None)
                .expect("writer");
            w.write_batch(vec![1]).expect("write");
            w.prepare_commit(CheckpointId(1)).expect("prepare");
            w.write_batch(vec![2]).expect("write");
            others.push(w);
        }
        let before = all_files(dir.path());
        assert_eq!(before.len(), 4);
        let mut mine = sink
            .create_writer(&checkpointed("out", 0, 2, 0), None)
            .expect("writer");
        mine.write_batch(vec![9]).expect("write");
        drop(mine);
        sink.create_writer(&checkpointed("out", 0, 2, 1), None)
            .expect("restore");
        assert_eq!(all_files(dir.path()), before);
    }

    #[test]
    fn end_of_input_then_prepare_and_commit_publishes_the_tail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sink = FileSink::<u32>::new(dir.path());
        let mut writer = sink
            .create_writer(&checkpointed("out", 0, 1, 0), None)
            .expect("writer");
        writer.write_batch(vec![1, 2]).expect("write");
        writer.finish().expect("finish");
        writer.finish().expect("finish again");
        assert!(
            writer.write_batch(vec![3]).is_err(),
            "no writes after finish"
        );
        assert!(
            read_part_files(dir.path()).expect("read").is_empty(),
            "finish publishes nothing with checkpointing"
        );
        writer
            .prepare_commit(CheckpointId(9))
            .expect("prepare")
            .expect("the tail is staged");
        assert!(read_part_files(dir.path()).expect("read").is_empty());
        writer.commit(CheckpointId(9)).expect("commit");
        assert_eq!(read_part_files(dir.path()).expect("read"), lines([1, 2]));
    }

    #[test]
    fn a_corrupt_manifest_is_refused_naming_the_sink() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sink = FileSink::<u32>::new(dir.path());
        let mut other = sink
            .create_writer(&checkpointed("out", 1, 2, 0), None)
            .expect("writer");
        other.write_batch(vec![1]).expect("write");
        let others_manifest = other
            .prepare_commit(CheckpointId(1))
            .expect("prepare")
            .expect("staged");
        let cases: [(&[u8], &str); 5] = [
            (b"\x00garbage", "not a file sink manifest"),
            (br#"{"version":3}"#, "manifest version 3 is not supported"),
            (br#"{"version":1,"uid":"out"}"#, "cannot be decoded"),
            (&others_manifest, "belongs to sink 'out' subtask 1"),
            (
                br#"{"version":2,"uid":"out","subtask":0,"next_seq":1,"transactions":[{"checkpoint":1,
                "seq":0,"pending":"../escape","final":"part-out-0-0","size":1,"crc32":0}]}"#,
                "not this subtask's files",
            ),
        ];
        for (manifest, reason) in cases {
            let err = sink
                .create_writer(&checkpointed("out", 0, 2, 1), Some(manifest))
                .err()
                .expect("corrupt manifest");
            let message = err.to_string();
            assert!(
                message.contains("file sink 'out' subtask 0 cannot restore its manifest")
                    && message.contains(reason),
                "{message}"
            );
        }
    }

    #[test]
    fn a_restore_whose_staged_file_vanished_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sink = FileSink::<u32>::new(dir.path());
        let mut writer = sink
            .create_writer(&checkpointed("out", 0, 1, 0), None)
            .expect("writer");
        writer.write_batch(vec![1]).expect("write");
        let manifest = writer
            .prepare_commit(CheckpointId(1))
            .expect("prepare")
            .expect("staged");
        drop(writer);
        let pending = dir.path().join(".part-out-0-a0-0.pending");
        fs::write(&pending, "2\n").expect("damage");
        let err = sink
            .create_writer(&checkpointed("out", 0, 1, 1), Some(&manifest))
            .err()
            .expect("damaged");
        assert!(err.to_string().contains("has CRC32"), "{err}");
        fs::remove_file(&pending).expect("remove");
        let err = sink
            .create_writer(&checkpointed("out", 0, 1, 1), Some(&manifest))
            .err()
            .expect("lost");
        let message = err.to_string();
        assert!(
            message.contains("file sink 'out' subtask 0 cannot commit chk-1")
                && message.contains(&format!("'{}'", pending.display()))
                && message.contains("part-out-0-0' are both missing"),
            "{message}"
        );
        let typed = err
            .downcast_ref::<ConnectorError>()
            .expect("a connector error");
        assert!(!typed.retry_may_help());
    }

    #[test]
    fn a_crash_between_prepare_and_commit_then_restore_publishes_every_record_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sink = FileSink::<u32>::new(dir.path());
        let mut writer = sink
            .create_writer(&checkpointed("out", 0, 1, 0), None)
            .expect("writer");
        writer.write_batch((0..5).collect()).expect("write");
        writer.prepare_commit(CheckpointId(1)).expect("prepare");
        writer.commit(CheckpointId(1)).expect("commit");
        writer.write_batch((5..8).collect()).expect("write");
        // Checkpoint 2 completes (its _metadata is written), then the job fails before the
        // writer hears of it: its transaction is staged but not published.
        let completed = writer
            .prepare_commit(CheckpointId(2))
            .expect("prepare")
            .expect("staged");
        writer.write_batch((8..10).collect()).expect("write"); // after the barrier: replayed
        drop(writer);
        assert_eq!(read_part_files(dir.path()).expect("read"), lines(0..5));

        // The source resumes at record 8, the sink from checkpoint 2's manifest.
        let mut writer = sink
            .create_writer(&checkpointed("out", 0, 1, 1), Some(&completed))
            .expect("restore");
        assert_eq!(read_part_files(dir.path()).expect("read"), lines(0..8));
        writer.write_batch((8..12).collect()).expect("write");
        writer.finish().expect("finish");
        writer.prepare_commit(CheckpointId(3)).expect("prepare");
        writer.commit(CheckpointId(3)).expect("commit");
        assert_eq!(read_part_files(dir.path()).expect("read"), lines(0..12));
        assert!(all_files(dir.path()).iter().all(|f| f.starts_with("part-")));
    }

    /// One step of a simulated job with a single sink subtask.
    #[derive(Clone, Debug)]
    enum Step {
        /// The source emits this many records.
        Write(u32),
        /// A checkpoint: the barrier reaches the sink; the checkpoint completes or is aborted;
        /// the sink hears of the completion or the notification is lost.
        Checkpoint { completes: bool, notified: bool },
        /// The job fails and restarts from the latest completed checkpoint.
        Crash,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            3 => (0u32..6).prop_map(Step::Write),
            2 => (any::<bool>(), any::<bool>())
                .prop_map(|(completes, notified)| Step::Checkpoint { completes, notified }),
            1 => Just(Step::Crash),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        /// Whatever the crashes, aborted checkpoints and lost notifications, the published
        /// output is every record exactly once, in order, and no hidden file remains.
        #[test]
        fn a_crash_at_any_point_leaves_every_record_published_exactly_once(
            steps in prop::collection::vec(step(), 0..30),
            total in 0u32..60,
        ) {
            let dir = tempfile::tempdir().expect("tempdir");
            let sink = FileSink::<u32>::new(dir.path());
            let mut attempt = 0;
            let mut writer = sink
                .create_writer(&checkpointed("out", 0, 1, attempt), None)
                .expect("writer");
            let mut next = 0; // the source's position
            let mut checkpoint = 0;
            // (source position, sink manifest) of the latest completed checkpoint.
            let mut completed: (u32, Option<Vec<u8>>) = (0, None);
            for step in steps {
                match step {
                    Step::Write(n) => {
                        let end = (next + n).min(total);
                        writer.write_batch((next..end).collect()).expect("write");
                        next = end;
                    }
                    Step::Checkpoint { completes, notified } => {
                        checkpoint += 1;
                        let manifest = writer
                            .prepare_commit(CheckpointId(checkpoint))
                            .expect("prepare");
                        if completes {
                            completed = (next, manifest);
                            if notified {
                                writer.commit(CheckpointId(checkpoint)).expect("commit");
                            }
                        }
                    }
                    Step::Crash => {
                        drop(writer);
                        attempt += 1;
                        writer = sink
                            .create_writer(
                                &checkpointed("out", 0, 1, attempt),
                                completed.1.as_deref(),
                            )
                            .expect("restore");
                        next = completed.0;
                    }
                }
            }
            writer.write_batch((next..total).collect()).expect("write");
            writer.finish().expect("finish");
            writer.prepare_commit(CheckpointId(checkpoint + 1)).expect("prepare");
            writer.commit(CheckpointId(checkpoint + 1)).expect("commit");
            prop_assert_eq!(read_part_files(dir.path()).expect("read"), lines(0..total));
            let files = all_files(dir.path());
            prop_assert!(files.iter().all(|f| f.starts_with("part-")), "{:?}", files);
        }
    }

    #[test]
    fn a_prepare_for_an_older_checkpoint_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sink = FileSink::<u32>::new(dir.path());
        let mut writer = sink
            .create_writer(&checkpointed("out", 0, 1, 0), None)
            .expect("writer");
        writer.prepare_commit(CheckpointId(5)).expect("prepare");
        let err = writer
            .prepare_commit(CheckpointId(5))
            .expect_err("repeated");
        assert!(
            err.to_string().contains("prepare chk-5 after chk-5"),
            "{err}"
        );
    }

    // --- names and decisions ------------------------------------------------------------------

    #[test]
    fn names_are_recognised_only_for_their_own_uid_and_subtask() {
        let out0 = names("out", 0);
        assert_eq!(
            out0.classify(".part-out-0-a3-17.inprogress"),
            Some(OwnFile::InProgress {
                attempt: 3,
                seq: 17
            })
        );
        assert_eq!(
            out0.classify(".part-out-0-a0-2.pending"),
            Some(OwnFile::Pending { attempt: 0, seq: 2 })
        );
        assert_eq!(
            out0.classify("part-out-0-2"),
            Some(OwnFile::Final { seq: 2 })
        );
        assert_eq!(
            out0.classify(".part-out-0.inprogress"),
            Some(OwnFile::UnversionedInProgress)
        );
        assert_eq!(out0.classify("part-out-0"), Some(OwnFile::UnversionedFinal));
        for foreign in [
            ".part-out-1-a0-2.pending",   // another subtask
            ".part-out-00-a0-2.pending",  // not a name we build
            ".part-out-0-1-a0-2.pending", // uid "out-0", subtask 1
            ".part-out-0-a0-2-a0-3.pending",
            ".part-out-0-a0-+2.pending",
            ".part-out-0-a0-2.pending.tmp",
            "part-out-0-1-2", // uid "out-0", subtask 1
            "part-out-01",
            "part-out-0-",
            ".part-out-0-ax-2.inprogress",
        ] {
            assert_eq!(out0.classify(foreign), None, "{foreign}");
        }
    }

    #[test]
    fn commit_steps_follow_what_is_on_disk() {
        assert_eq!(commit_step(5, Some(5), None), CommitStep::Publish);
        assert_eq!(commit_step(5, Some(5), Some(5)), CommitStep::Publish);
        assert_eq!(commit_step(5, None, Some(5)), CommitStep::AlreadyPublished);
        assert_eq!(commit_step(5, None, None), CommitStep::Lost);
        assert_eq!(
            commit_step(5, Some(3), None),
            CommitStep::WrongSize {
                pending: true,
                found: 3
            }
        );
        assert_eq!(
            commit_step(5, None, Some(4)),
            CommitStep::WrongSize {
                pending: false,
                found: 4
            }
        );
    }

    #[test]
    fn an_abort_deletes_only_own_hidden_files_and_numbers_past_every_file() {
        let out0 = names("out", 0);
        let listed = vec![StagedTransaction {
            checkpoint: CheckpointId(4),
            seq: 6,
            pending: out0.pending(1, 6),
            committed: out0.committed(6),
            size: 1,
            crc32: 0,
        }];
        let directory: Vec<String> = [
            ".part-out-0-a1-6.pending", // listed: kept
            ".part-out-0-a1-7.pending", // staged after the checkpoint
            ".part-out-0-a2-9.inprogress",
            ".part-out-0.inprogress",
            "part-out-0-11", // visible: never deleted, but numbered past
            ".part-out-1-a2-20.inprogress",
            "part-out-0-1-30",
            "unrelated.txt",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            plan_abort(&out0, &listed, &directory),
            Abort {
                stale: vec![
                    ".part-out-0-a1-7.pending".to_string(),
                    ".part-out-0-a2-9.inprogress".to_string(),
                    ".part-out-0.inprogress".to_string(),
                ],
                next_seq: 12,
            }
        );
        assert_eq!(plan_abort(&out0, &[], &[]).next_seq, 0);
    }

    #[test]
    fn part_files_are_read_in_natural_name_order() {
        let mut names = vec![
            "part-x-0-10",
            "part-x-0-9",
            "part-x-1-0",
            "part-x-0-0",
            "part-x-10-0",
        ];
        names.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(
            names,
            vec![
                "part-x-0-0",
                "part-x-0-9",
                "part-x-0-10",
                "part-x-1-0",
                "part-x-10-0"
            ]
        );
        assert_ne!(
            natural_cmp("a-007", "a-7"),
            Ordering::Equal,
            "ties broken by text"
        );
    }
}
