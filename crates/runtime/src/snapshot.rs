//! Checkpoints on the task side: what a chain's synchronous snapshot collects
//! ([`ChainSnapshot`]), the messages between tasks and the checkpoint driver ([`Control`],
//! [`TaskEvent`]), and the asynchronous part that uploads a snapshot and acknowledges it
//! ([`TaskCheckpointing::start_async`]).
//!
//! Flow of checkpoint *n* through one task:
//! 1. A barrier *n* arrives (in-band, or as [`Control::Trigger`] at a source or at a task
//!    whose inputs have all ended) and the task's inputs are aligned.
//! 2. Synchronous part, on the task thread: every step of the chain adds its state to a
//!    [`ChainSnapshot`] (a source its position, a keyed operator its backend's
//!    [`weir_state::LocalSnapshot`], an exactly-once sink its staging manifest) and the
//!    network writers forward barrier *n*. The task goes back to records.
//! 3. Asynchronous part, on the upload runtime: files are uploaded (incrementally, reusing
//!    the files of the barrier's base checkpoint only), then the task acknowledges with
//!    [`TaskEvent::Ack`], or declines with [`TaskEvent::Decline`] if an upload failed.
//! 4. [`Control::Complete`] tells the chain that *n* completed: sinks publish, keyed operators
//!    make *n*'s uploads the next incremental base.

use crate::TaskError;
use crossbeam_channel::{Receiver, Sender};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use weir_checkpoint::{
    CheckpointingMode, FileHandle, OperatorSubtaskState, TaskAckMetrics, TaskId, TaskStateSnapshot,
};
use weir_state::{BackendScope, LocalSnapshot, StateBackendFactory};
use weir_state_transfer::{SharedFiles, Uploader};
use weir_types::{Barrier, CheckpointId, OperatorUid, SubtaskIndex};

/// The file name of an exactly-once sink's staging manifest within its checkpoint directory.
pub(crate) const SINK_MANIFEST_FILE: &str = "sink-manifest";

/// What the checkpoint driver tells one task.
#[derive(Clone, Debug)]
pub enum Control {
    /// Take checkpoint `barrier.checkpoint` now (sources, and tasks whose inputs all ended).
    Trigger(Barrier),
    /// The checkpoint completed.
    Complete(CheckpointId),
    /// The checkpoint was aborted (a task waiting for a stop savepoint goes on).
    Aborted(CheckpointId),
    /// A source ends its input now (`weir stop --drain`); other tasks ignore it.
    Drain,
    /// The job is done (its final checkpoint completed): stop.
    Shutdown,
}

pub(crate) use weir_coordination::driver::TaskEvent;

/// One operator's contribution to a task's snapshot.
pub(crate) enum OperatorPart {
    /// Small state stored inline in `_metadata` (a source's position).
    Inline(Vec<u8>),
    /// A small private file of this checkpoint (a sink's staging manifest).
    PrivateFile { name: &'static str, bytes: Vec<u8> },
    /// A keyed backend's snapshot, uploaded incrementally against `base`.
    Keyed {
        snapshot: LocalSnapshot,
        base: Option<SharedFiles>,
        uploads: KeyedUploads,
        /// A canonical savepoint: convert the native snapshot before the upload.
        canonical: Option<CanonicalSource>,
    },
}

/// Everything the synchronous part of one task's checkpoint collected.
pub(crate) struct ChainSnapshot {
    pub barrier: Barrier,
    pub parts: Vec<(OperatorUid, OperatorPart)>,
    /// Taken after the task's chain finished (end of input): every part is marked finished.
    pub finished: bool,
}

impl ChainSnapshot {
    pub(crate) fn new(barrier: Barrier, finished: bool) -> Self {
        Self {
            barrier,
            parts: Vec::new(),
            finished,
        }
    }

    pub(crate) fn add(&mut self, uid: &OperatorUid, part: OperatorPart) {
        self.parts.push((uid.clone(), part));
    }
}

/// The shareable files one keyed operator uploaded per acknowledged checkpoint: the candidates
/// for its incremental base. Shared between the operator (which picks the base at a barrier)
/// and its uploads (which record what they uploaded).
#[derive(Clone, Default)]
pub(crate) struct KeyedUploads(Arc<Mutex<BTreeMap<CheckpointId, SharedFiles>>>);

impl KeyedUploads {
    /// The files uploaded for exactly `base` — the completed checkpoint the coordinator holds
    /// for the new one — or nothing (a full upload). Never another checkpoint's files.
    pub(crate) fn base_for(&self, base: Option<CheckpointId>) -> Option<SharedFiles> {
        let map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        base.and_then(|id| map.get(&id).cloned())
    }

    pub(crate) fn record(&self, id: CheckpointId, files: SharedFiles) {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.insert(id, files);
    }

    /// `id` completed: older uploads can no longer be a base. A savepoint's completion (its
    /// uploads are never recorded) changes nothing.
    pub(crate) fn completed(&self, id: CheckpointId) {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if map.contains_key(&id) {
            map.retain(|k, _| *k >= id);
        }
    }
}

/// Where a task's checkpoint uploads go, and the runtime they run on.
pub struct Transfer {
    /// Uploads and downloads of this job's checkpoint files.
    pub uploader: Uploader,
    /// The runtime uploads run on (never a task thread).
    pub runtime: tokio::runtime::Handle,
    /// Where each savepoint in flight is written (registered by the TaskManager).
    pub savepoints: SavepointTargets,
}

impl Transfer {
    /// A transfer to `uploader` on `runtime`, with no savepoint registered yet.
    pub fn new(uploader: Uploader, runtime: tokio::runtime::Handle) -> Self {
        Self {
            uploader,
            runtime,
            savepoints: SavepointTargets::default(),
        }
    }
}

/// How long a savepoint's upload waits for its target to be registered (the JobMaster sends
/// the target to every TaskManager before it triggers the sources, but the barrier may
/// overtake it on another TaskManager's session).
pub const SAVEPOINT_TARGET_WAIT: Duration = Duration::from_secs(30);

/// Savepoints kept registered per job (the newest ones).
const MAX_SAVEPOINT_TARGETS: usize = 16;

/// The uploaders of a job's savepoints in flight, by savepoint id: each writes to the
/// savepoint's own folder ([`Uploader::self_contained`]). The TaskManager registers them when
/// the JobMaster announces a savepoint; a task's upload waits (bounded) for its savepoint's.
pub struct SavepointTargets {
    targets: tokio::sync::watch::Sender<BTreeMap<CheckpointId, Uploader>>,
}

impl Default for SavepointTargets {
    fn default() -> Self {
        Self {
            targets: tokio::sync::watch::Sender::new(BTreeMap::new()),
        }
    }
}

impl SavepointTargets {
    /// Registers the uploader of savepoint `id` (the oldest registrations beyond a bound go).
    pub fn register(&self, id: CheckpointId, uploader: Uploader) {
        self.targets.send_modify(|m| {
            m.insert(id, uploader);
            while m.len() > MAX_SAVEPOINT_TARGETS {
                m.pop_first();
            }
        });
    }

    /// The uploader of savepoint `id`, waiting at most `wait` for it to be registered.
    pub async fn uploader(&self, id: CheckpointId, wait: Duration) -> Option<Uploader> {
        let mut rx = self.targets.subscribe();
        let found = tokio::time::timeout(wait, rx.wait_for(|m| m.contains_key(&id))).await;
        match found {
            Ok(Ok(m)) => m.get(&id).cloned(),
            _ => None,
        }
    }
}

/// What a canonical savepoint needs to read a keyed snapshot back: the backend factory and
/// the operator subtask's scope.
#[derive(Clone)]
pub(crate) struct CanonicalSource {
    pub factory: Arc<dyn StateBackendFactory>,
    pub scope: BackendScope,
}

/// Turns a backend's native snapshot into a canonical one (blocking: call it off the task
/// thread). The snapshot is opened as a temporary backend in a directory next to it, read
/// state by state, and removed again.
fn canonicalize(
    snapshot: LocalSnapshot,
    source: &CanonicalSource,
) -> Result<LocalSnapshot, String> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let snapshot = snapshot.resolve().map_err(|e| e.to_string())?;
    let id = snapshot.checkpoint;
    // Next to the snapshot (the state directory, same file system: hard links), else the
    // system's temporary directory (heap snapshots are in memory).
    let base = snapshot
        .cleanup_dir
        .as_deref()
        .and_then(std::path::Path::parent)
        .map_or_else(std::env::temp_dir, std::path::Path::to_path_buf);
    let dir = base.join(format!(
        ".weir-canonical-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let restored = snapshot.link_to_dir(&dir).map_err(|e| e.to_string())?;
        let mut scope = source.scope.clone();
        scope.key_group_range = snapshot.key_groups;
        let mut backend = source
            .factory
            .restore(&scope, restored)
            .map_err(|e| format!("cannot read the snapshot back for a canonical savepoint: {e}"))?;
        weir_state::canonical::write_from(&mut *backend).map_err(|e| e.to_string())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    if let Some(d) = &snapshot.cleanup_dir {
        let _ = std::fs::remove_dir_all(d);
    }
    let bytes = result?;
    Ok(LocalSnapshot {
        checkpoint: id,
        backend: weir_state::canonical::CANONICAL_BACKEND,
        format: u32::from(weir_state::canonical::CANONICAL_VERSION),
        key_groups: snapshot.key_groups,
        descriptors: snapshot.descriptors.clone(),
        files: vec![weir_state::SnapshotFile {
            name: weir_state::canonical::CANONICAL_FILE_NAME.to_string(),
            content: weir_state::SnapshotContent::Bytes(bytes),
            shareable: false,
        }],
        cleanup_dir: None,
        pending: None,
    })
}

/// Most synchronous pauses one attempt's tasks record in one process (the first ones).
pub const MAX_RECORDED_SYNC_PAUSES: usize = 100_000;

/// One task's side of checkpointing.
pub(crate) struct TaskCheckpointing {
    pub task: TaskId,
    pub subtask: SubtaskIndex,
    pub mode: CheckpointingMode,
    pub control: Receiver<Control>,
    pub events: Sender<TaskEvent>,
    pub transfer: Arc<Transfer>,
    /// Synchronous pauses of this job's snapshots, in microseconds (for benchmarks), at most
    /// [`MAX_RECORDED_SYNC_PAUSES`].
    pub sync_pauses: Arc<Mutex<Vec<u64>>>,
    /// The job attempt this task belongs to.
    pub attempt: u32,
    /// Asynchronous parts still running, over the whole job: the job waits for them at its
    /// end, so every upload is either acknowledged (and cleaned up if unused) or gone.
    pub in_flight: Arc<std::sync::atomic::AtomicUsize>,
}

impl TaskCheckpointing {
    /// Runs the asynchronous part of `snapshot` on the upload runtime: uploads, then
    /// acknowledges (or declines, after deleting what this task uploaded for it).
    pub(crate) fn start_async(&self, snapshot: ChainSnapshot, sync: Duration, alignment: Duration) {
        let transfer = self.transfer.clone();
        let events = self.events.clone();
        let (task, subtask) = (self.task, self.subtask);
        let sync_us = sync.as_micros() as u64;
        {
            // A job that runs for months checkpoints millions of times: keep the first ones.
            let mut pauses = self
                .sync_pauses
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if pauses.len() < MAX_RECORDED_SYNC_PAUSES {
                pauses.push(sync_us);
            }
        }
        let id = snapshot.barrier.checkpoint;
        let in_flight = self.in_flight.clone();
        in_flight.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.transfer.runtime.spawn(async move {
            let started = Instant::now();
            let mut uploaded: Vec<FileHandle> = Vec::new();
            // A savepoint goes to its own folder, through the uploader its target registered.
            let uploader = match snapshot.barrier.savepoint {
                None => Ok(transfer.uploader.clone()),
                Some(_) => transfer
                    .savepoints
                    .uploader(id, SAVEPOINT_TARGET_WAIT)
                    .await
                    .ok_or_else(|| {
                        format!(
                            "the target of savepoint {id} was not announced within \
                             {SAVEPOINT_TARGET_WAIT:?}"
                        )
                    }),
            };
            let result = match &uploader {
                Ok(uploader) => upload(uploader, subtask, snapshot, &mut uploaded).await,
                Err(e) => Err(e.clone()),
            };
            let event = match result {
                Ok((snapshot, bytes_uploaded, full_size)) => TaskEvent::Ack {
                    task,
                    id,
                    snapshot,
                    metrics: TaskAckMetrics {
                        sync_ms: sync.as_millis() as u64,
                        async_ms: started.elapsed().as_millis() as u64,
                        alignment_ms: alignment.as_millis() as u64,
                        bytes_uploaded,
                        full_size,
                    },
                },
                Err(reason) => {
                    if let Ok(uploader) = &uploader {
                        delete_files(uploader, &uploaded).await;
                    }
                    tracing::warn!(checkpoint = %id, %task, %reason, "declining checkpoint");
                    TaskEvent::Decline { task, id, reason }
                }
            };
            // The job's event channel outlives every upload: a late ack is still seen (and its
            // unused files deleted).
            let _ = events.send(event);
            in_flight.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        });
    }
}

/// Best effort: deletes files this task uploaded for a checkpoint it then declined (nothing
/// else references them; the coordinator never saw them).
async fn delete_files(uploader: &Uploader, files: &[FileHandle]) {
    for f in files {
        let deleted = match uploader.paths().handle_path(f.path()) {
            Ok(path) => uploader
                .store()
                .delete(&path)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(detail) = deleted {
            tracing::warn!(path = f.path(), %detail, "could not delete an upload of a declined checkpoint");
        }
    }
}

async fn upload(
    uploader: &Uploader,
    subtask: SubtaskIndex,
    snapshot: ChainSnapshot,
    uploaded: &mut Vec<FileHandle>,
) -> Result<(TaskStateSnapshot, u64, u64), String> {
    let id = snapshot.barrier.checkpoint;
    let is_savepoint = snapshot.barrier.is_savepoint();
    let finished = snapshot.finished;
    let mut out = TaskStateSnapshot::default();
    let (mut bytes_uploaded, mut full_size) = (0u64, 0u64);
    for (uid, part) in snapshot.parts {
        let state: &mut OperatorSubtaskState = out.operators.entry(uid.clone()).or_default();
        match part {
            OperatorPart::Inline(bytes) => {
                full_size += bytes.len() as u64;
                state.inline = Some(bytes);
            }
            OperatorPart::PrivateFile { name, bytes } => {
                let handle = uploader
                    .upload_private(id, &uid, subtask, name, bytes)
                    .await
                    .map_err(|e| e.to_string())?;
                bytes_uploaded += handle.size();
                full_size += handle.size();
                uploaded.push(handle.clone());
                state.files.push(handle);
            }
            OperatorPart::Keyed {
                snapshot,
                base,
                uploads,
                canonical,
            } => {
                let snapshot = match canonical {
                    None => snapshot,
                    Some(source) => {
                        tokio::task::spawn_blocking(move || canonicalize(snapshot, &source))
                            .await
                            .map_err(|e| format!("the canonical conversion panicked: {e}"))??
                    }
                };
                let result = uploader
                    .upload_keyed(&uid, subtask, snapshot, base.as_ref())
                    .await
                    .map_err(|e| e.to_string())?;
                let reused: std::collections::BTreeSet<&str> = base
                    .iter()
                    .flat_map(|b| b.values().map(|h| h.path()))
                    .collect();
                uploaded.extend(
                    result
                        .state
                        .files
                        .iter()
                        .filter(|h| !reused.contains(h.path()))
                        .cloned(),
                );
                bytes_uploaded += result.bytes_uploaded;
                full_size += result.full_size;
                if !is_savepoint {
                    uploads.record(id, result.shared);
                }
                *state = result.state;
            }
        }
        state.finished = finished;
    }
    Ok((out, bytes_uploaded, full_size))
}

/// What one subtask restores from: the checkpoint and, per operator uid of its chain, the
/// state that operator's subtask stored.
pub(crate) struct TaskRestore {
    pub checkpoint: CheckpointId,
    pub operators: BTreeMap<OperatorUid, OperatorSubtaskState>,
    /// Operators restored at another parallelism: every old subtask's state.
    pub rescaled: BTreeMap<OperatorUid, weir_checkpoint::RescaledOperator>,
    /// The snapshot lies outside the job's checkpoint folder (a savepoint): its files are read,
    /// never referenced by the job's own checkpoints.
    pub external: bool,
    pub transfer: Arc<Transfer>,
    /// Bytes this subtask's restore downloaded and read from the local copy.
    pub stats: Arc<Mutex<weir_state_transfer::DownloadStats>>,
    /// Where downloads go before the backend takes them.
    pub local_dir: std::path::PathBuf,
}

impl TaskRestore {
    pub(crate) fn state_of(&self, uid: &OperatorUid) -> Option<&OperatorSubtaskState> {
        self.operators.get(uid)
    }

    /// Every old subtask's state of `uid`, when it is restored at another parallelism.
    pub(crate) fn rescaled_of(
        &self,
        uid: &OperatorUid,
    ) -> Option<&weir_checkpoint::RescaledOperator> {
        self.rescaled.get(uid)
    }

    /// Whether `uid`'s subtask had finished its input when the restored checkpoint was taken.
    pub(crate) fn finished(&self, uid: &OperatorUid) -> bool {
        self.operators.get(uid).is_some_and(|s| s.finished)
    }
}

/// Checks that barrier ids only rise within one task (invariant: ids strictly increase).
#[derive(Default)]
pub(crate) struct BarrierOrder {
    last: Option<CheckpointId>,
}

impl BarrierOrder {
    /// Whether `id` is new (larger than every barrier seen); `Err` names the regression.
    pub(crate) fn accept(&mut self, id: CheckpointId) -> Result<(), String> {
        match self.last {
            Some(last) if id <= last => Err(format!(
                "barrier of {id} arrived after {last}: checkpoint ids must strictly increase"
            )),
            _ => {
                self.last = Some(id);
                Ok(())
            }
        }
    }

    /// Whether a direct trigger for `id` still needs a snapshot (it was not seen in-band).
    pub(crate) fn is_new(&self, id: CheckpointId) -> bool {
        self.last.is_none_or(|last| id > last)
    }
}

/// Maps a restore failure to the task error the executor recognises as a damaged checkpoint.
pub(crate) fn damaged(
    uid: &str,
    subtask: SubtaskIndex,
    id: CheckpointId,
    detail: String,
) -> TaskError {
    TaskError::CheckpointDamaged {
        uid: uid.to_string(),
        subtask,
        checkpoint: id,
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn barrier_ids_must_strictly_increase() {
        let mut order = BarrierOrder::default();
        assert!(order.accept(CheckpointId(3)).is_ok());
        assert!(order.accept(CheckpointId(5)).is_ok());
        let err = order.accept(CheckpointId(5)).unwrap_err();
        assert!(
            err.contains("barrier of chk-5 arrived after chk-5"),
            "{err}"
        );
        assert!(order.accept(CheckpointId(4)).is_err());
        assert!(!order.is_new(CheckpointId(5)));
        assert!(order.is_new(CheckpointId(6)));
    }

    #[test]
    fn only_the_barriers_base_is_offered_for_reuse() {
        let uploads = KeyedUploads::default();
        uploads.record(CheckpointId(1), SharedFiles::new());
        let mut two = SharedFiles::new();
        two.insert(
            "9.sst".into(),
            FileHandle::new("shared/x/0/2-9.sst", 1, 2, true).expect("valid"),
        );
        uploads.record(CheckpointId(2), two.clone());
        assert_eq!(uploads.base_for(Some(CheckpointId(2))), Some(two));
        assert_eq!(uploads.base_for(Some(CheckpointId(3))), None);
        assert_eq!(uploads.base_for(None), None);
        uploads.completed(CheckpointId(2));
        assert_eq!(uploads.base_for(Some(CheckpointId(1))), None);
    }
}
