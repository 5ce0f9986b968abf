//! The file sink: records as lines in part files of one directory, made visible either when a
//! subtask finishes (no checkpoints) or exactly once per completed checkpoint (two-phase
//! commit).
//!
//! [`FileSink`]'s docs describe the file names, the folder's ownership and the two-phase commit
//! step by step; this module keeps the pure decisions (naming, [`claim_step`], [`commit_step`],
//! [`plan_abort`], [`OwnFiles`]) apart from the writers and drivers that do the I/O.

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
use std::time::{SystemTime, UNIX_EPOCH};
use weir_runtime::{Sink, SinkContext, SinkWriter, UserError};
use weir_types::CheckpointId;

/// The write buffer of each file sink writer.
const WRITE_BUFFER_BYTES: usize = 256 * 1024;

/// The manifest format this build writes (3: with `owner`).
const MANIFEST_VERSION: u32 = 3;

/// The oldest manifest format this build reads (1: without `next_seq`; 2: without `owner`).
const MANIFEST_OLDEST_READABLE_VERSION: u32 = 1;

/// The name of the owner marker in an output folder.
const OWNER_MARKER: &str = "_weir_owner";

/// The owner marker format this build writes and reads.
const OWNER_MARKER_VERSION: u32 = 1;

/// Writes records as lines to part files in a directory, each published exactly once.
///
/// - **Without checkpointing** each subtask writes `<dir>/.part-<uid>-<subtask>.inprogress`;
///   [`SinkWriter::finish`] flushes, fsyncs and renames it to `<dir>/part-<uid>-<subtask>`
///   (then fsyncs the directory). A job that fails leaves only the hidden file. A rerun of the
///   same job overwrites the part files of the same uid and subtask (its staging log records
///   them); it does not remove those of subtasks that no longer exist. A file of those names
///   that the job did not write is never replaced: the writer refuses to start
///   (`OwnershipError::NotOwnFile`).
/// - **With checkpointing** the writer is a two-phase commit: the records between two barriers
///   become one part file `<dir>/part-<uid>-<subtask>-<seq>`, visible only once their
///   checkpoint completes, and a restore publishes what the restored checkpoint staged and
///   deletes what this job staged after it (steps below). A rerun adds part files next to
///   those of an earlier run; start with an empty directory.
///
/// Readers of `part-*` (such as [`read_part_files`]) never see partial output: a writer
/// dropped at any point (the job failed) leaves only hidden files behind.
///
/// # Ownership
///
/// An output folder belongs to one job. Its owner is named by the marker `<dir>/_weir_owner`
/// (versioned JSON: `{"version":1,"owner":{"job":"keyed-agg"}}`, or
/// `{"version":1,"owner":{"sink_uid":"sink"}}` for a job known only by its sink's uid), which
/// the first writer to open the folder creates, create-only: the content is written to a
/// temporary file that is then hard-linked to the marker's name, so no writer ever reads a
/// half-written marker and none ever replaces one. Every writer of every subtask reads it when
/// it opens (`claim_step`):
///
/// - no marker: create it, naming this job (or, on a restore, the job whose checkpoint it is);
///   a writer that loses the race to create it reads the winner's;
/// - the marker names this job: write (a sibling subtask claimed the folder, or this job ran
///   here before and is resuming or rerunning);
/// - the marker names the job whose checkpoint is being restored (its manifest records the
///   owner it was written under): write, as that owner;
/// - otherwise refuse (`OwnershipError::Owned`, naming the folder, the marker, the owner and
///   this job). The task fails; nothing in the folder is touched.
///
/// The job's identity is what [`owned_by`](Self::owned_by) gave, else the job's id from the
/// [`SinkContext`]: the same in every attempt and in a resumed run (`--restore JOB_ID`), another
/// for any other run. Markers and manifests written by an earlier build, which named the job
/// by its sink's uid, are still read.
///
/// Every file a writer creates is first recorded, durably, in its subtask's *staging log*
/// `<dir>/.part-<uid>-<subtask>.staging` (one JSON line per transaction, tagged with the
/// owner: `{"owner":{"job":"keyed-agg"},"file":{"transaction":{"attempt":0,"seq":7}}}`). The
/// sink deletes, unpublishes or replaces only files that its restored manifest lists or that
/// its staging log records for its owner (`OwnFiles`); a file merely named like one of its
/// own (written by another job, an older build, or before the folder was claimed) is left
/// alone.
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
/// | `.part-<uid>-<subtask>.staging`                     | both          | the staging log        |
/// | `_weir_owner` (one per folder)                      | both          | the owner marker       |
///
/// `seq` numbers the transactions of one subtask; a writer starts above every `seq` already in
/// the directory for its uid and subtask (and in its manifest and staging log), and the
/// attempt is part of every hidden name, so no file that may already exist is ever reused or
/// overwritten.
///
/// # Two-phase commit (with checkpointing)
///
/// 1. [`write_batch`](SinkWriter::write_batch): the first record after a barrier records the
///    new transaction in the staging log (fsynced), then opens its file (`….inprogress`,
///    create-only); records are appended, counting bytes and CRC32.
/// 2. [`prepare_commit(n)`](SinkWriter::prepare_commit): flush, fsync and close the open file,
///    rename it to `….pending`, fsync the directory, and add `(n, seq, pending name, final name,
///    size, crc32)` to the staged list; return the whole staged list as the manifest, with
///    `next_seq` and the owner (always a manifest, even with nothing staged). A checkpoint
///    without records stages no file.
/// 3. [`commit(n)`](SinkWriter::commit): rename every staged transaction with checkpoint ≤ `n`
///    from pending to final, fsync the directory, drop them from the list. Idempotent.
/// 4. [`finish`](SinkWriter::finish) (end of input): close the open file; the final checkpoint's
///    `prepare_commit` stages it and its `commit` publishes it. Writing after `finish` fails.
/// 5. Restore ([`Sink::create_writer`] with the manifest of the restored checkpoint, which
///    completed): check the folder's owner (above), then publish every listed transaction,
///    checking size and CRC32 — already published with the right size is fine, but a
///    transaction whose files are both missing or damaged is an error
///    ([`ConnectorError::CommitLost`]): committed output never silently vanishes. Then abort
///    (`plan_abort`): delete every hidden file of this uid and subtask that the staging log
///    records for this owner and the manifest does not list (staged or written after that
///    checkpoint, by any attempt); other subtasks' files, and files the log does not record,
///    are never touched. Files this subtask *published* with a number at or above the
///    manifest's `next_seq` came from checkpoints after the restored one (recovery fell back
///    past a damaged checkpoint): those the staging log records are unpublished (deleted),
///    since their records are replayed. A start without a manifest aborts hidden files the
///    same way and deletes no visible file.
///
/// # The manifest
///
/// What `prepare_commit` returns and a restore reads: versioned JSON, file names relative to
/// the directory, e.g.
/// `{"version":3,"uid":"sink","subtask":0,"next_seq":8,"owner":{"job":"keyed-agg"},
/// "transactions":[{"checkpoint":3,"seq":7,"pending":".part-sink-0-a0-7.pending",
/// "final":"part-sink-0-7","size":120,"crc32":305419896}]}`.
/// Versions 1 (without `next_seq`: it rolls nothing back) and 2 (without `owner`: the restore
/// is accepted only by the marker naming this sink's own identity) are still read. A manifest
/// of another version, of another uid or subtask, or naming files that are not this
/// subtask's is refused ([`ConnectorError::BadManifest`]).
pub struct FileSink<T> {
    dir: PathBuf,
    /// The owning job's identity, when the builder gave one.
    job: Option<String>,
    _records: PhantomData<fn(T)>,
}

impl<T> FileSink<T> {
    /// A sink writing into `dir`, which is created when the first writer opens if needed. Its
    /// job is known by its id; see [`owned_by`](Self::owned_by).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            job: None,
            _records: PhantomData,
        }
    }

    /// Names the job this sink writes for (its name, or its id when the builder knows it): the
    /// identity the output folder's owner marker records, so that another job writing into the
    /// folder is refused and this one, resumed or rerun, is accepted (see "Ownership" above).
    pub fn owned_by(mut self, job: impl Into<String>) -> Self {
        self.job = Some(job.into());
        self
    }

    /// This sink's identity: the name its builder gave, else the job's id (the same in every
    /// attempt and in a resumed run, another for any other job).
    fn owner(&self, ctx: &SinkContext) -> Owner {
        match &self.job {
            Some(job) => Owner::Job(job.clone()),
            None => Owner::Job(ctx.job.to_string()),
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
        Self {
            dir: self.dir.clone(),
            job: self.job.clone(),
            _records: PhantomData,
        }
    }
}

impl<T> fmt::Debug for FileSink<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileSink")
            .field("dir", &self.dir)
            .field("job", &self.job)
            .finish()
    }
}

impl<T: Display + Send + 'static> Sink<T> for FileSink<T> {
    fn name(&self) -> String {
        "file".to_string()
    }

    /// Checks the folder's owner (claiming it when it has none). Then, without checkpointing
    /// and without a manifest: the publish-on-finish writer. Otherwise the two-phase writer,
    /// after committing `restored`'s transactions and aborting the rest. (A manifest handed to
    /// a job without checkpointing is still committed first.)
    fn create_writer(
        &self,
        ctx: &SinkContext,
        restored: Option<&[u8]>,
    ) -> Result<Box<dyn SinkWriter<T>>, UserError> {
        fs::create_dir_all(&self.dir).map_err(|cause| unwritable(&self.dir, cause))?;
        let names = PartNames::new(ctx);
        let manifest = restored
            .map(|bytes| Manifest::decode(&names, bytes))
            .transpose()?;
        let restored_owner = manifest.as_ref().and_then(|m| m.owner.as_ref());
        let owner = claim_folder(
            &self.dir,
            &self.owner(ctx),
            restored_owner,
            &names,
            ctx.attempt,
        )?;
        let restoring = manifest.is_some();
        if ctx.checkpointing || restoring {
            let writer = TwoPhaseWriter::open(
                &self.dir,
                names.clone(),
                owner.clone(),
                ctx.attempt,
                manifest,
            )?;
            if ctx.checkpointing {
                return Ok(Box::new(writer));
            }
        }
        Ok(Box::new(OnFinishWriter::<T>::open(
            &self.dir, &names, owner,
        )?))
    }

    /// Restored at another parallelism: every old subtask's manifest is settled — its listed
    /// transactions published, the rest of what it staged aborted — by exactly one new
    /// subtask ([`settled_by`]), which then writes as its own index. The folder's owner is the
    /// one the manifests name (so new subtasks without an old one are accepted too).
    fn create_rescaled_writer(
        &self,
        ctx: &SinkContext,
        _old_parallelism: u32,
        manifests: &[(u32, Vec<u8>)],
    ) -> Result<Box<dyn SinkWriter<T>>, UserError> {
        fs::create_dir_all(&self.dir).map_err(|cause| unwritable(&self.dir, cause))?;
        let names = PartNames::new(ctx);
        let (subtask, parallelism) = (ctx.subtask.get(), ctx.parallelism);
        let mut own = None;
        let mut others = Vec::new();
        let mut restored_owner = None;
        for (old, bytes) in manifests {
            let old_names = PartNames::of(ctx.uid.to_string(), *old);
            let manifest = Manifest::decode(&old_names, bytes)?;
            if restored_owner.is_none() {
                restored_owner = manifest.owner.clone();
            }
            if *old == subtask {
                own = Some(manifest);
            } else if settled_by(subtask, parallelism, *old) {
                others.push((old_names, manifest));
            }
        }
        let owner = claim_folder(
            &self.dir,
            &self.owner(ctx),
            restored_owner.as_ref(),
            &names,
            ctx.attempt,
        )?;
        for (old_names, manifest) in others {
            tracing::info!(uid = %ctx.uid, subtask, old_subtask = old_names.subtask, "settling the transactions of a subtask that no longer exists");
            // Opening a writer settles what the manifest lists and aborts the rest; this one
            // writes nothing more.
            drop(TwoPhaseWriter::<T>::open(
                &self.dir,
                old_names,
                owner.clone(),
                ctx.attempt,
                Some(manifest),
            )?);
        }
        Ok(Box::new(TwoPhaseWriter::<T>::open(
            &self.dir,
            names,
            owner,
            ctx.attempt,
            own,
        )?))
    }
}

/// Which old subtasks' transactions new subtask `subtask` of `parallelism` settles when the
/// sink is restored at another parallelism: its own index, if it existed, and every old index
/// `k ≥ parallelism` with `k mod parallelism = subtask`. Over the new subtasks every old index
/// is settled exactly once.
fn settled_by(subtask: u32, parallelism: u32, old: u32) -> bool {
    old == subtask || (old >= parallelism && old % parallelism == subtask)
}

fn unwritable(path: &Path, cause: io::Error) -> ConnectorError {
    ConnectorError::OutputUnwritable {
        path: path.to_path_buf(),
        cause,
    }
}

// ---------------------------------------------------------------------------------------------
// Ownership: the owner marker, its decision, and the errors

/// Why a file sink may not write into its output folder, or may not replace a file there. The
/// task fails with it; retrying does not help (except, perhaps, after a transient
/// [`MarkerIo`](Self::MarkerIo)): the folder or the file has to change first.
#[derive(Debug, thiserror::Error)]
pub enum OwnershipError {
    /// The folder's owner marker names another job.
    #[error(
        "output folder '{}' belongs to {owner} (owner marker '{}'), so {job} may not write \
         into it: write to another folder, or delete the marker if that job and its output are \
         gone",
        dir.display(),
        marker.display()
    )]
    Owned {
        /// The output folder.
        dir: PathBuf,
        /// Its owner marker.
        marker: PathBuf,
        /// The job the marker names.
        owner: String,
        /// The job that was refused.
        job: String,
    },
    /// The folder's owner marker exists but cannot be understood. It is left as it is.
    #[error(
        "output folder '{}' has an owner marker '{}' that cannot be used: {reason}",
        dir.display(),
        marker.display()
    )]
    UnreadableMarker {
        /// The output folder.
        dir: PathBuf,
        /// Its owner marker.
        marker: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Reading or creating the owner marker failed.
    #[error("cannot read or create the owner marker '{}': {cause}", marker.display())]
    MarkerIo {
        /// The owner marker.
        marker: PathBuf,
        /// The I/O error.
        cause: io::Error,
    },
    /// A file the writer would have to replace exists but was not written by this job (its
    /// staging log does not record it). It is left as it is.
    #[error(
        "'{}' is in the way of the output of {job}, which did not write it; the file sink \
         never replaces a file it did not write: move it away, or write to another folder",
        path.display()
    )]
    NotOwnFile {
        /// The file.
        path: PathBuf,
        /// The job whose writer refused.
        job: String,
    },
}

/// Who owns an output folder: a job, by the only identities a file sink can know.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Owner {
    /// A job named by its builder with [`FileSink::owned_by`] (its name or its id).
    Job(String),
    /// A job known by its file sink's operator uid (markers of an earlier build only).
    SinkUid(String),
}

impl Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Job(job) => write!(f, "job '{job}'"),
            Self::SinkUid(uid) => write!(f, "the job whose file sink has uid '{uid}'"),
        }
    }
}

/// The content of an output folder's owner marker: `{"version":1,"owner":{"job":"…"}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct OwnerMarker {
    version: u32,
    owner: Owner,
}

impl OwnerMarker {
    fn encode(owner: &Owner) -> Vec<u8> {
        let marker = Self {
            version: OWNER_MARKER_VERSION,
            owner: owner.clone(),
        };
        let mut bytes = serde_json::to_vec(&marker).expect("a marker serializes");
        bytes.push(b'\n');
        bytes
    }

    /// The owner `bytes` name, or why they cannot be used.
    fn decode(bytes: &[u8]) -> Result<Owner, String> {
        #[derive(Deserialize)]
        struct Version {
            version: u32,
        }
        let Version { version } = serde_json::from_slice(bytes)
            .map_err(|e| format!("it is not a file sink owner marker: {e}"))?;
        if version != OWNER_MARKER_VERSION {
            return Err(format!(
                "owner marker version {version} is not supported (this build reads version \
                 {OWNER_MARKER_VERSION})"
            ));
        }
        let marker: Self =
            serde_json::from_slice(bytes).map_err(|e| format!("it cannot be decoded: {e}"))?;
        Ok(marker.owner)
    }
}

/// What a writer opening its output folder does about the owner marker.
#[derive(Clone, Debug, PartialEq, Eq)]
enum ClaimStep {
    /// There is no marker: create one naming this owner (the restored checkpoint's owner when
    /// there is one, else this sink's identity).
    Create(Owner),
    /// The marker names this sink's job, or the job whose checkpoint is being restored: write,
    /// as that owner.
    Accept(Owner),
    /// The marker names another job: refuse, touching nothing.
    Refuse(Owner),
}

/// Decides [`ClaimStep`] from this sink's identity `ours`, the owner recorded in the manifest
/// being restored (if any), and the owner the folder's marker names (if there is one).
fn claim_step(ours: &Owner, restored: Option<&Owner>, marker: Option<&Owner>) -> ClaimStep {
    match marker {
        None => ClaimStep::Create(restored.unwrap_or(ours).clone()),
        Some(owner) if owner == ours || Some(owner) == restored => ClaimStep::Accept(owner.clone()),
        Some(owner) => ClaimStep::Refuse(owner.clone()),
    }
}

/// Reads `dir`'s owner marker and acts on [`claim_step`]: the owner this writer writes as, or
/// why it may not write here.
fn claim_folder(
    dir: &Path,
    ours: &Owner,
    restored: Option<&Owner>,
    names: &PartNames,
    attempt: u32,
) -> Result<Owner, OwnershipError> {
    let marker = dir.join(OWNER_MARKER);
    // A marker is only ever created, never replaced: after losing the race to create it, the
    // second read sees the winner's. A third round means markers are being deleted meanwhile.
    for _ in 0..3 {
        let found = read_marker(dir, &marker)?;
        match claim_step(ours, restored, found.as_ref()) {
            ClaimStep::Accept(owner) => {
                tracing::debug!(dir = %dir.display(), %owner, uid = %names.uid, subtask = names.subtask, "file sink writes into a folder its job owns");
                return Ok(owner);
            }
            ClaimStep::Refuse(owner) => {
                return Err(OwnershipError::Owned {
                    dir: dir.to_path_buf(),
                    marker,
                    owner: owner.to_string(),
                    job: ours.to_string(),
                })
            }
            ClaimStep::Create(owner) => {
                if create_marker(&marker, &owner, names, attempt)? {
                    tracing::info!(dir = %dir.display(), %owner, uid = %names.uid, subtask = names.subtask, "file sink claimed its output folder");
                    return Ok(owner);
                }
            }
        }
    }
    Err(OwnershipError::UnreadableMarker {
        dir: dir.to_path_buf(),
        marker,
        reason: "it vanished every time after it was found to exist".to_string(),
    })
}

/// The owner `marker` names, `None` when there is no marker.
fn read_marker(dir: &Path, marker: &Path) -> Result<Option<Owner>, OwnershipError> {
    let bytes = match fs::read(marker) {
        Ok(bytes) => bytes,
        Err(cause) if cause.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(cause) => {
            return Err(OwnershipError::MarkerIo {
                marker: marker.to_path_buf(),
                cause,
            })
        }
    };
    OwnerMarker::decode(&bytes)
        .map(Some)
        .map_err(|reason| OwnershipError::UnreadableMarker {
            dir: dir.to_path_buf(),
            marker: marker.to_path_buf(),
            reason,
        })
}

/// Creates `marker` naming `owner`, only if there is none: the content goes to a temporary
/// file of this writer's (created with `create_new`), which is then hard-linked to the marker's
/// name — a link, unlike a rename, never replaces an existing file, and unlike writing into a
/// `create_new` marker it never shows a reader a half-written one. False when another writer's
/// marker was there first.
fn create_marker(
    marker: &Path,
    owner: &Owner,
    names: &PartNames,
    attempt: u32,
) -> Result<bool, OwnershipError> {
    let io_err = |cause| OwnershipError::MarkerIo {
        marker: marker.to_path_buf(),
        cause,
    };
    let dir = marker.parent().unwrap_or(Path::new("."));
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let tmp = dir.join(format!(
        ".{OWNER_MARKER}-{}-a{attempt}-{}-{nanos}.tmp",
        names.stem,
        std::process::id()
    ));
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(io_err)?;
    let linked = file
        .write_all(&OwnerMarker::encode(owner))
        .and_then(|()| file.sync_all())
        .and_then(|()| fs::hard_link(&tmp, marker));
    drop(file);
    // The temporary file is this writer's own, whatever happened.
    if let Err(cause) = fs::remove_file(&tmp) {
        tracing::warn!(file = %tmp.display(), %cause, "cannot remove the temporary owner marker");
    }
    match linked {
        Ok(()) => {
            sync_dir(dir).map_err(io_err)?;
            Ok(true)
        }
        Err(cause) if cause.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(cause) => Err(io_err(cause)),
    }
}

// ---------------------------------------------------------------------------------------------
// The staging log: the files a subtask's writers created

/// One line of a subtask's staging log: a file (or the files of a transaction) its owner's
/// writer was about to create.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct LogEntry {
    owner: Owner,
    file: Created,
}

/// What a staging log line records.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Created {
    /// Transaction `seq` of `attempt`: its in-progress, pending and final files.
    Transaction { attempt: u32, seq: u64 },
    /// The files of a run without checkpointing (`.part-<uid>-<subtask>.inprogress` and
    /// `part-<uid>-<subtask>`).
    Unversioned,
}

/// The files one owner's staging log records for a subtask: with its restored manifest, the
/// only files the writer ever deletes, unpublishes or replaces.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct OwnFiles {
    /// `(attempt, seq)` of every transaction.
    transactions: HashSet<(u32, u64)>,
    /// The `seq` of every transaction (a final name has no attempt).
    seqs: HashSet<u64>,
    /// Whether the files of a run without checkpointing are recorded.
    unversioned: bool,
}

impl OwnFiles {
    /// What the staging log `text` records for `owner`. Lines of other owners, and lines that
    /// cannot be decoded (a line torn by a crash: its file was never created, since a line is
    /// durable before its file exists), are skipped.
    fn from_log(owner: &Owner, text: &str) -> Self {
        let mut own = Self::default();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            match serde_json::from_str::<LogEntry>(line) {
                Ok(entry) if entry.owner == *owner => own.insert(entry.file),
                Ok(_) => {}
                Err(e) => tracing::debug!(line, error = %e, "skipping a staging log line"),
            }
        }
        own
    }

    fn insert(&mut self, created: Created) {
        match created {
            Created::Transaction { attempt, seq } => {
                self.transactions.insert((attempt, seq));
                self.seqs.insert(seq);
            }
            Created::Unversioned => self.unversioned = true,
        }
    }

    fn contains(&self, created: Created) -> bool {
        match created {
            Created::Transaction { attempt, seq } => self.transactions.contains(&(attempt, seq)),
            Created::Unversioned => self.unversioned,
        }
    }

    /// Whether the log records `file` as this owner's.
    fn owns(&self, file: OwnFile) -> bool {
        match file {
            OwnFile::UnversionedInProgress | OwnFile::UnversionedFinal => self.unversioned,
            OwnFile::InProgress { attempt, seq } | OwnFile::Pending { attempt, seq } => {
                self.transactions.contains(&(attempt, seq))
            }
            OwnFile::Final { seq } => self.seqs.contains(&seq),
        }
    }
}

/// A subtask's staging log, open for appending, and what it records for this writer's owner.
struct StagingLog {
    path: PathBuf,
    owner: Owner,
    file: File,
    own: OwnFiles,
}

impl StagingLog {
    /// Reads (creating it if needed) the staging log of `names`' subtask in `dir`.
    fn open(dir: &Path, names: &PartNames, owner: Owner) -> Result<Self, ConnectorError> {
        let path = dir.join(names.staging_log());
        let err = |cause| unwritable(&path, cause);
        let (text, existed) = match fs::read(&path) {
            Ok(bytes) => (String::from_utf8_lossy(&bytes).into_owned(), true),
            Err(cause) if cause.kind() == io::ErrorKind::NotFound => (String::new(), false),
            Err(cause) => return Err(err(cause)),
        };
        let mut file = OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .map_err(err)?;
        if !text.is_empty() && !text.ends_with('\n') {
            // A crash tore the last line: start the next one on a line of its own.
            file.write_all(b"\n").map_err(err)?;
        }
        if !existed {
            sync_dir(dir).map_err(|cause| unwritable(dir, cause))?;
        }
        Ok(Self {
            own: OwnFiles::from_log(&owner, &text),
            path,
            owner,
            file,
        })
    }

    /// Records, durably, that this owner is about to create `created`'s files.
    fn record(&mut self, created: Created) -> Result<(), ConnectorError> {
        if self.own.contains(created) {
            return Ok(());
        }
        let entry = LogEntry {
            owner: self.owner.clone(),
            file: created,
        };
        let mut line = serde_json::to_vec(&entry).expect("a log entry serializes");
        line.push(b'\n');
        self.file
            .write_all(&line)
            .and_then(|()| self.file.sync_data())
            .map_err(|cause| unwritable(&self.path, cause))?;
        self.own.insert(created);
        Ok(())
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
        Self::of(ctx.uid.to_string(), ctx.subtask.get())
    }

    /// The names of subtask `subtask` of the sink `uid`.
    fn of(uid: String, subtask: u32) -> Self {
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

    /// `.part-<uid>-<subtask>.staging`: never taken for a part file by [`classify`](Self::classify).
    fn staging_log(&self) -> String {
        format!(".{}.staging", self.stem)
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
/// JSON, so that an operator can read it (see [`FileSink`], "The manifest"). File names are
/// relative to the sink's directory.
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
    /// The owner the writer wrote as (version 3 on): a restore of this manifest is accepted by
    /// a folder whose marker names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    owner: Option<Owner>,
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
    fn encode(
        names: &PartNames,
        owner: &Owner,
        next_seq: u64,
        transactions: &[StagedTransaction],
    ) -> Vec<u8> {
        let manifest = Self {
            version: MANIFEST_VERSION,
            uid: names.uid.clone(),
            subtask: names.subtask,
            next_seq: Some(next_seq),
            owner: Some(owner.clone()),
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

/// What an opening writer does once the manifest's transactions are published.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Abort {
    /// Hidden files of this uid and subtask that the staging log records for this owner and
    /// the manifest does not list: delete them.
    stale: Vec<String>,
    /// Published files the staging log records for this owner, numbered from the manifest's
    /// `next_seq` on (checkpoints after the restored one published them): delete them.
    unpublish: Vec<String>,
    /// Files named like the two above that the staging log does not record for this owner:
    /// another job's, an older build's, or there before the folder was claimed. Left alone.
    foreign: Vec<String>,
    /// The first transaction number above every one in the directory, the manifest and the
    /// staging log.
    next_seq: u64,
}

/// Plans the abort of a writer of `names`' subtask: `own` is what its staging log records,
/// `listed` what the restored manifest stages, `rollback_from` its `next_seq` (none without a
/// manifest or for a version 1 one), and `directory` the names in the output folder.
fn plan_abort(
    names: &PartNames,
    own: &OwnFiles,
    listed: &[StagedTransaction],
    rollback_from: Option<u64>,
    directory: &[String],
) -> Abort {
    let keep: HashSet<&str> = listed
        .iter()
        .flat_map(|t| [t.pending.as_str(), t.committed.as_str()])
        .collect();
    let mut plan = Abort::default();
    let mut max_seq = listed
        .iter()
        .map(|t| t.seq)
        .chain(own.seqs.iter().copied())
        .max();
    for name in directory {
        let Some(file) = names.classify(name) else {
            continue;
        };
        max_seq = max_seq.max(file.seq());
        let published_after = matches!(
            (file, rollback_from),
            (OwnFile::Final { seq }, Some(from)) if seq >= from
        );
        if keep.contains(name.as_str()) || !(file.hidden() || published_after) {
            continue;
        }
        let to = if !own.owns(file) {
            &mut plan.foreign
        } else if file.hidden() {
            &mut plan.stale
        } else {
            &mut plan.unpublish
        };
        to.push(name.clone());
    }
    plan.stale.sort();
    plan.unpublish.sort();
    plan.foreign.sort();
    plan.next_seq = max_seq.map_or(0, |seq| seq + 1);
    plan
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

impl<T> OnFinishWriter<T> {
    /// Opens the writer of `names`' subtask in `dir`, writing as `owner`. A file of its names
    /// that the staging log does not record for `owner` is never replaced: refuse instead.
    fn open(dir: &Path, names: &PartNames, owner: Owner) -> Result<Self, UserError> {
        let mut log = StagingLog::open(dir, names, owner)?;
        let in_progress = dir.join(names.unversioned_in_progress());
        let committed = dir.join(names.unversioned_final());
        if !log.own.unversioned {
            for path in [&in_progress, &committed] {
                if exists(path)? {
                    return Err(OwnershipError::NotOwnFile {
                        path: path.clone(),
                        job: log.owner.to_string(),
                    }
                    .into());
                }
            }
            log.record(Created::Unversioned)?;
        }
        let file = File::create(&in_progress).map_err(|cause| unwritable(&in_progress, cause))?;
        Ok(Self {
            out: Some(BufWriter::with_capacity(WRITE_BUFFER_BYTES, file)),
            dir: dir.to_path_buf(),
            in_progress,
            committed,
            buf: String::new(),
            _records: PhantomData,
        })
    }
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
    /// Records every transaction before its file exists; knows the owner.
    log: StagingLog,
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
    /// Opens the writer of `names`' subtask in `dir`, writing as `owner`: publishes the
    /// transactions `restored` lists, then aborts what this owner's writers of this subtask
    /// had staged or published after it (step 5). Files the staging log does not record for
    /// `owner` are left alone.
    fn open(
        dir: &Path,
        names: PartNames,
        owner: Owner,
        attempt: u32,
        restored: Option<Manifest>,
    ) -> Result<Self, ConnectorError> {
        let log = StagingLog::open(dir, &names, owner)?;
        let (listed, rollback_from) = match restored {
            Some(m) => (m.transactions, m.next_seq),
            None => (Vec::new(), None),
        };
        for txn in &listed {
            publish(dir, &names, txn, Verify::SizeAndCrc)?;
        }
        let directory = list_dir(dir)?;
        let plan = plan_abort(&names, &log.own, &listed, rollback_from, &directory);
        // Files published after the restored checkpoint (recovery fell back past a damaged
        // newer one): their records are replayed, so unpublish them rather than duplicate.
        for name in &plan.unpublish {
            tracing::warn!(uid = %names.uid, subtask = names.subtask, file = %name, "rolling back output published after the restored checkpoint");
            remove_if_present(&dir.join(name))?;
        }
        for name in &plan.stale {
            remove_if_present(&dir.join(name))?;
        }
        if !plan.foreign.is_empty() {
            tracing::debug!(
                uid = %names.uid,
                subtask = names.subtask,
                owner = %log.owner,
                files = ?plan.foreign,
                "leaving alone files named like this subtask's that its job did not write"
            );
        }
        sync_dir(dir).map_err(|cause| unwritable(dir, cause))?;
        tracing::info!(
            uid = %names.uid,
            subtask = names.subtask,
            attempt,
            owner = %log.owner,
            committed = listed.len(),
            aborted = plan.stale.len(),
            unpublished = plan.unpublish.len(),
            left_alone = plan.foreign.len(),
            next_seq = plan.next_seq,
            "file sink writer opened"
        );
        Ok(Self {
            dir: dir.to_path_buf(),
            last_prepared: listed.iter().map(|t| t.checkpoint).max(),
            names,
            log,
            attempt,
            next_seq: plan.next_seq,
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
            // Recorded first: a file of ours never exists without its record.
            self.log.record(Created::Transaction {
                attempt: self.attempt,
                seq,
            })?;
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
            &self.log.owner,
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

/// Deletes the file at `path`; one already gone is fine.
fn remove_if_present(path: &Path) -> Result<(), ConnectorError> {
    match fs::remove_file(path) {
        Err(cause) if cause.kind() != io::ErrorKind::NotFound => Err(unwritable(path, cause)),
        _ => Ok(()),
    }
}

/// Whether anything (a file, a directory, a dangling link) is at `path`.
fn exists(path: &Path) -> Result<bool, ConnectorError> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(cause) if cause.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(cause) => Err(unwritable(path, cause)),
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

    /// The files in `dir` but the sink's bookkeeping (the owner marker and staging logs).
    fn all_files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = list_dir(dir)
            .expect("list")
            .into_iter()
            .filter(|n| n != OWNER_MARKER && !n.ends_with(".staging"))
            .collect();
        names.sort();
        names
    }

    /// Every file in `dir`, bookkeeping included.
    fn every_file(dir: &Path) -> Vec<String> {
        let mut names = list_dir(dir).expect("list");
        names.sort();
        names
    }

    /// The file sink error in `err`.
    fn ownership_error(err: &UserError) -> &OwnershipError {
        err.downcast_ref::<OwnershipError>()
            .unwrap_or_else(|| panic!("not an ownership error: {err}"))
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

    #[test]
    fn fuzzed_manifests_and_owner_markers_are_refused_or_read_never_a_panic_or_a_hang() {
        let n = names("sink", 1);
        let owner = Owner::Job("0123456789abcdef0123456789abcdef".into());
        let transaction = |seq: u64| StagedTransaction {
            checkpoint: CheckpointId(seq + 1),
            seq,
            pending: n.pending(0, seq),
            committed: n.committed(seq),
            size: 10,
            crc32: 7,
        };
        let seeds = vec![
            Manifest::encode(&n, &owner, 3, &[transaction(1), transaction(2)]),
            Manifest::encode(&n, &Owner::SinkUid("sink".into()), 0, &[]),
        ];
        weir_fuzz::run("file sink manifest", &seeds, |bytes| {
            let _ = Manifest::decode(&n, bytes);
        });
        let markers = vec![
            OwnerMarker::encode(&owner),
            OwnerMarker::encode(&Owner::SinkUid("s".into())),
        ];
        weir_fuzz::run("file sink owner marker", &markers, |bytes| {
            let _ = OwnerMarker::decode(bytes);
        });
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
            "version": 3,
            "uid": "out",
            "subtask": 2,
            "next_seq": 1,
            "owner": {"job": weir_types::JobId(1).to_string()},
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
        // One job, so that sinks of two uids may share the folder.
        let sink = FileSink::<u32>::new(dir.path()).owned_by("job");
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
            (br#"{"version":4}"#, "manifest version 4 is not supported"),
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

    // --- ownership ----------------------------------------------------------------------------

    /// Writes `records` as one committed transaction for checkpoint `chk`; returns its manifest.
    fn commit_one(writer: &mut Box<dyn SinkWriter<u32>>, chk: u64, records: Vec<u32>) -> Vec<u8> {
        writer.write_batch(records).expect("write");
        let manifest = writer
            .prepare_commit(CheckpointId(chk))
            .expect("prepare")
            .expect("a manifest");
        writer.commit(CheckpointId(chk)).expect("commit");
        manifest
    }

    #[test]
    fn a_restore_never_deletes_a_part_file_its_manifests_do_not_list() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sink = FileSink::<u32>::new(dir.path()).owned_by("a");
        let mut writer = sink
            .create_writer(&checkpointed("out", 0, 1, 0), None)
            .expect("writer");
        let first = commit_one(&mut writer, 1, vec![1]);
        // Files named like this subtask's that job "a" never wrote: another run's (an older
        // build, say, that ignores owner markers), some published, some staged.
        let theirs = [
            ("part-out-0-5", "theirs\n"),
            (".part-out-0-a0-6.pending", "theirs, staged\n"),
            (".part-out-0-a7-8.inprogress", "theirs, open\n"),
            (".part-out-0.inprogress", "theirs, unversioned\n"),
        ];
        for (name, text) in theirs {
            fs::write(dir.path().join(name), text).expect("write");
        }
        commit_one(&mut writer, 2, vec![2]); // publishes part-out-0-1, after chk-1
        writer.write_batch(vec![3]).expect("write"); // open: seq 2
        drop(writer);

        // chk-2 turned out damaged: recovery restores chk-1 and replays records 2 and 3.
        let mut restored = sink
            .create_writer(&checkpointed("out", 0, 1, 1), Some(&first))
            .expect("restore");
        assert_eq!(
            all_files(dir.path()),
            vec![
                ".part-out-0-a0-6.pending",
                ".part-out-0-a7-8.inprogress",
                ".part-out-0.inprogress",
                "part-out-0-0",
                "part-out-0-5",
            ],
            "job a's files after chk-1 are gone, the others' are all there"
        );
        for (name, text) in theirs {
            assert_eq!(
                fs::read_to_string(dir.path().join(name)).expect("read"),
                text,
                "{name}"
            );
        }
        // The replayed records go above every number in the folder, theirs included.
        commit_one(&mut restored, 2, vec![2, 3]);
        assert!(dir.path().join("part-out-0-9").exists());
    }

    #[test]
    fn a_fresh_writer_leaves_another_runs_staged_files_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Another run staged a transaction for a checkpoint that completed; it will publish it
        // when it restores.
        let staged = dir.path().join(".part-out-0-a0-3.pending");
        fs::write(&staged, "1\n").expect("write");
        let sink = FileSink::<u32>::new(dir.path()).owned_by("a");
        let mut writer = sink
            .create_writer(&checkpointed("out", 0, 1, 0), None)
            .expect("writer");
        commit_one(&mut writer, 1, vec![7]);
        assert_eq!(
            all_files(dir.path()),
            vec![".part-out-0-a0-3.pending", "part-out-0-4"]
        );
        assert_eq!(fs::read_to_string(&staged).expect("read"), "1\n");
    }

    #[test]
    fn a_second_job_writing_into_an_owned_folder_is_refused_naming_the_owner() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = FileSink::<u32>::new(dir.path()).owned_by("job-a");
        let mut writer = first
            .create_writer(&checkpointed("out", 0, 1, 0), None)
            .expect("writer");
        commit_one(&mut writer, 1, vec![1]);
        writer.write_batch(vec![2]).expect("write");
        let before = every_file(dir.path());

        let second = FileSink::<u32>::new(dir.path()).owned_by("job-b");
        for ctx in [checkpointed("out", 0, 1, 0), ctx("out", 0, 1)] {
            let err = second.create_writer(&ctx, None).err().expect("refused");
            let marker = dir.path().join(OWNER_MARKER);
            let message = err.to_string();
            assert!(
                message.contains(&format!("output folder '{}'", dir.path().display()))
                    && message.contains(&format!("owner marker '{}'", marker.display()))
                    && message.contains("belongs to job 'job-a'")
                    && message.contains("so job 'job-b' may not write into it"),
                "{message}"
            );
            match ownership_error(&err) {
                OwnershipError::Owned {
                    dir: d,
                    marker: m,
                    owner,
                    job,
                } => {
                    assert_eq!((d.as_path(), m), (dir.path(), &marker));
                    assert_eq!(
                        (owner.as_str(), job.as_str()),
                        ("job 'job-a'", "job 'job-b'")
                    );
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(
            every_file(dir.path()),
            before,
            "the refused job touched nothing"
        );
        // The owner goes on as if nothing happened.
        writer.prepare_commit(CheckpointId(2)).expect("prepare");
        writer.commit(CheckpointId(2)).expect("commit");
        assert_eq!(read_part_files(dir.path()).expect("read"), lines([1, 2]));
    }

    fn of_job(mut ctx: SinkContext, job: u128) -> SinkContext {
        ctx.job = weir_types::JobId(job);
        ctx
    }

    #[test]
    fn a_sink_without_a_job_name_is_known_by_its_job_id() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sink = FileSink::<u32>::new(dir.path());
        sink.create_writer(&of_job(checkpointed("out", 0, 1, 0), 7), None)
            .expect("writer");
        sink.create_writer(&of_job(checkpointed("out", 0, 1, 1), 7), None)
            .expect("the same job again");
        let err = sink
            .create_writer(&of_job(checkpointed("out", 0, 1, 0), 8), None)
            .err()
            .expect("refused");
        let (seven, eight) = (weir_types::JobId(7), weir_types::JobId(8));
        assert!(
            err.to_string()
                .contains(&format!("belongs to job '{seven}' (owner marker"))
                && err
                    .to_string()
                    .contains(&format!("so job '{eight}' may not")),
            "{err}"
        );
    }

    #[test]
    fn the_same_job_resuming_keeps_its_folder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sink = FileSink::<u32>::new(dir.path()).owned_by("job-a");
        let mut writer = sink
            .create_writer(&checkpointed("out", 0, 1, 0), None)
            .expect("writer");
        let completed = commit_one(&mut writer, 1, vec![1, 2]);
        writer.write_batch(vec![3]).expect("write");
        drop(writer); // the job fails

        // Failover (attempt 1), and later a new run resuming the job's checkpoint (`--restore`
        // starts attempts anew): both are the owner.
        for attempt in [1, 0] {
            let mut writer = sink
                .create_writer(&checkpointed("out", 0, 1, attempt), Some(&completed))
                .expect("the owner resumes");
            writer.write_batch(vec![3]).expect("write");
        }
        let mut writer = sink
            .create_writer(&checkpointed("out", 0, 1, 2), Some(&completed))
            .expect("the owner resumes");
        commit_one(&mut writer, 2, vec![3]);
        assert_eq!(read_part_files(dir.path()).expect("read"), lines([1, 2, 3]));
        let marker = fs::read_to_string(dir.path().join(OWNER_MARKER)).expect("marker");
        assert_eq!(marker, "{\"version\":1,\"owner\":{\"job\":\"job-a\"}}\n");
    }

    #[test]
    fn a_restore_of_the_owners_checkpoint_is_accepted_whatever_the_sink_is_now_called() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut writer = FileSink::<u32>::new(dir.path())
            .create_writer(&checkpointed("out", 0, 1, 0), None)
            .expect("writer");
        let completed = commit_one(&mut writer, 1, vec![1]);
        drop(writer);
        // The job is given a name, and resumes its checkpoint: the manifest says whose it is.
        let renamed = FileSink::<u32>::new(dir.path()).owned_by("keyed-agg");
        let mut writer = renamed
            .create_writer(&checkpointed("out", 0, 1, 1), Some(&completed))
            .expect("the owner's checkpoint");
        let manifest: serde_json::Value =
            serde_json::from_slice(&commit_one(&mut writer, 2, vec![2])).expect("json");
        assert_eq!(
            manifest["owner"],
            serde_json::json!({"job": weir_types::JobId(1).to_string()})
        );
        // A fresh start under the new name is another job.
        let err = renamed
            .create_writer(&checkpointed("out", 0, 1, 0), None)
            .err()
            .expect("refused");
        assert!(matches!(
            ownership_error(&err),
            OwnershipError::Owned { .. }
        ));
    }

    #[test]
    fn a_resumed_job_whose_marker_vanished_claims_its_folder_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sink = FileSink::<u32>::new(dir.path()).owned_by("job-a");
        let mut writer = sink
            .create_writer(&checkpointed("out", 0, 1, 0), None)
            .expect("writer");
        let completed = commit_one(&mut writer, 1, vec![1]);
        drop(writer);
        fs::remove_file(dir.path().join(OWNER_MARKER)).expect("remove");
        FileSink::<u32>::new(dir.path())
            .owned_by("job-a-v2")
            .create_writer(&checkpointed("out", 0, 1, 1), Some(&completed))
            .expect("resumes");
        let marker = fs::read(dir.path().join(OWNER_MARKER)).expect("marker");
        assert_eq!(
            OwnerMarker::decode(&marker).expect("decode"),
            Owner::Job("job-a".into()),
            "claimed for the job whose checkpoint it resumed"
        );
    }

    #[test]
    fn subtasks_of_one_job_opening_a_new_folder_at_once_all_accept_one_claim() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("out");
        let sink = FileSink::<u32>::new(&out).owned_by("job-a");
        let start = std::sync::Barrier::new(8);
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|subtask| {
                    let (sink, start) = (&sink, &start);
                    scope.spawn(move || {
                        start.wait();
                        sink.create_writer(&checkpointed("out", subtask, 8, 0), None)
                            .map(drop)
                            .map_err(|e| e.to_string())
                    })
                })
                .collect();
            for handle in handles {
                handle
                    .join()
                    .expect("no panic")
                    .expect("every subtask writes");
            }
        });
        assert_eq!(
            fs::read_to_string(out.join(OWNER_MARKER)).expect("marker"),
            "{\"version\":1,\"owner\":{\"job\":\"job-a\"}}\n"
        );
        let files = every_file(&out);
        assert!(files.iter().all(|f| !f.ends_with(".tmp")), "{files:?}");
        assert_eq!(files.len(), 9, "the marker and 8 staging logs: {files:?}");
    }

    #[test]
    fn two_jobs_racing_for_a_new_folder_leave_it_to_exactly_one() {
        for _ in 0..5 {
            let dir = tempfile::tempdir().expect("tempdir");
            let jobs = [
                FileSink::<u32>::new(dir.path()).owned_by("job-a"),
                FileSink::<u32>::new(dir.path()).owned_by("job-b"),
            ];
            let start = std::sync::Barrier::new(8);
            let results: Vec<(usize, Result<(), String>)> = std::thread::scope(|scope| {
                let handles: Vec<_> = (0..8u32)
                    .map(|i| {
                        let (job, start) = ((i % 2) as usize, &start);
                        let sink = &jobs[job];
                        scope.spawn(move || {
                            start.wait();
                            let ctx = checkpointed("out", i / 2, 4, 0);
                            (
                                job,
                                sink.create_writer(&ctx, None)
                                    .map(drop)
                                    .map_err(|e| e.to_string()),
                            )
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("no panic"))
                    .collect()
            });
            let winners: HashSet<usize> = results
                .iter()
                .filter(|(_, r)| r.is_ok())
                .map(|(job, _)| *job)
                .collect();
            assert_eq!(winners.len(), 1, "{results:?}");
            let winner = *winners.iter().next().expect("one");
            let owner = ["job 'job-a'", "job 'job-b'"][winner];
            for (job, result) in &results {
                match result {
                    Ok(()) => assert_eq!(*job, winner),
                    Err(e) => assert!(
                        *job != winner && e.contains(&format!("belongs to {owner}")),
                        "{e}"
                    ),
                }
            }
        }
    }

    #[test]
    fn an_unreadable_owner_marker_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let marker = dir.path().join(OWNER_MARKER);
        let sink = FileSink::<u32>::new(dir.path()).owned_by("a");
        for (content, reason) in [
            (&b""[..], "not a file sink owner marker"),
            (b"\x00garbage", "not a file sink owner marker"),
            (
                br#"{"version":2,"owner":{"job":"a"}}"#,
                "owner marker version 2 is not supported",
            ),
            (br#"{"version":1,"owner":"a"}"#, "cannot be decoded"),
        ] {
            fs::write(&marker, content).expect("write");
            let err = sink
                .create_writer(&checkpointed("out", 0, 1, 0), None)
                .err()
                .expect("refused");
            let message = err.to_string();
            assert!(
                matches!(
                    ownership_error(&err),
                    OwnershipError::UnreadableMarker { .. }
                ) && message.contains(&format!("'{}'", marker.display()))
                    && message.contains(reason),
                "{message}"
            );
            assert_eq!(fs::read(&marker).expect("read"), content);
            assert_eq!(every_file(dir.path()), vec![OWNER_MARKER]);
        }
    }

    #[test]
    fn a_run_without_checkpoints_never_replaces_a_part_file_it_did_not_write() {
        for name in ["part-out-0", ".part-out-0.inprogress"] {
            let dir = tempfile::tempdir().expect("tempdir");
            let theirs = dir.path().join(name);
            fs::write(&theirs, "theirs\n").expect("write");
            let err = FileSink::<u32>::new(dir.path())
                .owned_by("a")
                .create_writer(&ctx("out", 0, 1), None)
                .err()
                .expect("refused");
            assert!(
                matches!(ownership_error(&err), OwnershipError::NotOwnFile { .. })
                    && err.to_string().contains(&format!("'{}'", theirs.display()))
                    && err
                        .to_string()
                        .contains("output of job 'a', which did not write it"),
                "{err}"
            );
            assert_eq!(fs::read_to_string(&theirs).expect("read"), "theirs\n");
        }
    }

    #[test]
    fn the_same_job_rerun_without_checkpoints_replaces_its_own_output() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sink = FileSink::<u32>::new(dir.path()).owned_by("a");
        let mut failed = sink.create_writer(&ctx("out", 0, 1), None).expect("writer");
        failed.write_batch(vec![0]).expect("write");
        drop(failed); // leaves its in-progress file
        for run in [1, 2] {
            let mut writer = sink.create_writer(&ctx("out", 0, 1), None).expect("writer");
            writer.write_batch(vec![run]).expect("write");
            writer.finish().expect("finish");
            assert_eq!(read_part_files(dir.path()).expect("read"), lines([run]));
        }
        assert_eq!(all_files(dir.path()), vec!["part-out-0"]);
    }

    #[test]
    fn the_staging_log_records_each_transaction_before_its_file_exists() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join(".part-out-0.staging");
        // A crash tore the last line of an earlier run's log.
        fs::write(&log, r#"{"owner":{"job":"a"},"file":{"trans"#).expect("write");
        let sink = FileSink::<u32>::new(dir.path()).owned_by("a");
        let mut writer = sink
            .create_writer(&checkpointed("out", 0, 1, 3), None)
            .expect("writer");
        writer.write_batch(vec![1]).expect("write");
        let text = fs::read_to_string(&log).expect("read");
        assert_eq!(
            text.lines().last(),
            Some(r#"{"owner":{"job":"a"},"file":{"transaction":{"attempt":3,"seq":0}}}"#),
            "{text}"
        );
        let own = OwnFiles::from_log(&Owner::Job("a".into()), &text);
        assert!(own.owns(OwnFile::InProgress { attempt: 3, seq: 0 }));
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

    fn strings(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn an_abort_deletes_only_files_its_staging_log_records_and_numbers_past_every_file() {
        let out0 = names("out", 0);
        let listed = vec![StagedTransaction {
            checkpoint: CheckpointId(4),
            seq: 6,
            pending: out0.pending(1, 6),
            committed: out0.committed(6),
            size: 1,
            crc32: 0,
        }];
        let mut own = OwnFiles::default();
        for (attempt, seq) in [(1, 6), (1, 7), (2, 8), (2, 9), (2, 25)] {
            own.insert(Created::Transaction { attempt, seq });
        }
        own.insert(Created::Unversioned);
        let directory = strings(&[
            ".part-out-0-a1-6.pending",    // listed: kept
            ".part-out-0-a1-7.pending",    // staged after the checkpoint
            ".part-out-0-a2-9.inprogress", // written after it
            ".part-out-0.inprogress",
            "part-out-0-5",             // published before the checkpoint: kept
            "part-out-0-8",             // published after it: unpublished
            "part-out-0-11", // named like ours, not in the log: left alone, numbered past
            ".part-out-0-a3-4.pending", // likewise
            ".part-out-0-a1-9.pending", // our seq, another attempt's name: not ours
            ".part-out-1-a2-20.inprogress",
            "part-out-0-1-30",
            "unrelated.txt",
        ]);
        assert_eq!(
            plan_abort(&out0, &own, &listed, Some(7), &directory),
            Abort {
                stale: strings(&[
                    ".part-out-0-a1-7.pending",
                    ".part-out-0-a2-9.inprogress",
                    ".part-out-0.inprogress",
                ]),
                unpublish: strings(&["part-out-0-8"]),
                foreign: strings(&[
                    ".part-out-0-a1-9.pending",
                    ".part-out-0-a3-4.pending",
                    "part-out-0-11",
                ]),
                // Above seq 25 of the log, whose file never appeared.
                next_seq: 26,
            }
        );
        // Without a manifest nothing visible is a candidate; with an empty log nothing is ours.
        let fresh = plan_abort(&out0, &OwnFiles::default(), &[], None, &directory);
        assert!(fresh.stale.is_empty() && fresh.unpublish.is_empty());
        assert_eq!(fresh.next_seq, 12);
        assert_eq!(
            plan_abort(&out0, &OwnFiles::default(), &[], None, &[]).next_seq,
            0
        );
    }

    #[test]
    fn a_staging_log_is_read_for_its_own_owner_only() {
        let job = Owner::Job("a".into());
        let text = concat!(
            r#"{"owner":{"job":"a"},"file":{"transaction":{"attempt":0,"seq":1}}}"#,
            "\n",
            r#"{"owner":{"job":"b"},"file":{"transaction":{"attempt":0,"seq":2}}}"#,
            "\n",
            r#"{"owner":{"sink_uid":"a"},"file":"unversioned"}"#,
            "\n",
            r#"{"owner":{"job":"a"},"file":"unversioned"}"#,
            "\n",
            r#"{"owner":{"job":"a"},"file":{"transac"#, // torn by a crash
        );
        let own = OwnFiles::from_log(&job, text);
        assert!(own.owns(OwnFile::Pending { attempt: 0, seq: 1 }));
        assert!(own.owns(OwnFile::Final { seq: 1 }));
        assert!(own.owns(OwnFile::UnversionedFinal));
        assert!(!own.owns(OwnFile::Final { seq: 2 }), "job b's");
        assert!(!own.owns(OwnFile::InProgress { attempt: 1, seq: 1 }));
        let uid = OwnFiles::from_log(&Owner::SinkUid("a".into()), text);
        assert!(uid.unversioned && uid.seqs.is_empty());
    }

    #[test]
    fn claim_steps_accept_only_the_owner_or_the_job_whose_checkpoint_is_restored() {
        let (a, b) = (Owner::Job("a".into()), Owner::Job("b".into()));
        let uid = Owner::SinkUid("a".into());
        assert_eq!(claim_step(&a, None, None), ClaimStep::Create(a.clone()));
        assert_eq!(claim_step(&a, Some(&b), None), ClaimStep::Create(b.clone()));
        assert_eq!(claim_step(&a, None, Some(&a)), ClaimStep::Accept(a.clone()));
        assert_eq!(
            claim_step(&a, Some(&b), Some(&a)),
            ClaimStep::Accept(a.clone())
        );
        assert_eq!(
            claim_step(&a, Some(&b), Some(&b)),
            ClaimStep::Accept(b.clone())
        );
        assert_eq!(claim_step(&a, None, Some(&b)), ClaimStep::Refuse(b.clone()));
        assert_eq!(
            claim_step(&a, Some(&uid), Some(&b)),
            ClaimStep::Refuse(b.clone())
        );
        assert_eq!(
            claim_step(&uid, None, Some(&a)),
            ClaimStep::Refuse(a.clone()),
            "a job name and a sink uid are different identities"
        );
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

    #[test]
    fn every_old_sink_subtask_is_settled_by_exactly_one_new_subtask() {
        for old_p in 1..=9u32 {
            for new_p in 1..=9u32 {
                for old in 0..old_p {
                    let settlers: Vec<u32> =
                        (0..new_p).filter(|&j| settled_by(j, new_p, old)).collect();
                    assert_eq!(
                        settlers.len(),
                        1,
                        "old {old} of {old_p} → {new_p}: {settlers:?}"
                    );
                }
            }
        }
    }
}
