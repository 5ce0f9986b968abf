//! What a task acknowledges: which task it is ([`TaskId`]), the files and inline bytes it wrote
//! for each operator of its chain ([`TaskStateSnapshot`]), and how long that took
//! ([`TaskAckMetrics`]).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use weir_types::{OperatorUid, SubtaskIndex, VertexId};

/// One task of the job: a subtask of a JobGraph vertex. Every task acknowledges every checkpoint.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TaskId {
    /// The vertex (operator chain) the task runs.
    pub vertex: VertexId,
    /// Which parallel instance of the vertex.
    pub subtask: SubtaskIndex,
}

impl TaskId {
    /// The task for `subtask` of `vertex`.
    pub fn new(vertex: VertexId, subtask: SubtaskIndex) -> Self {
        Self { vertex, subtask }
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}]", self.vertex, self.subtask)
    }
}

/// Why a [`FileHandle`] path is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandleError {
    /// The path was empty.
    #[error("file handle path must not be empty")]
    EmptyPath,
    /// The path was absolute, contained a `..`/`.`/empty segment, or a backslash.
    #[error(
        "file handle path '{0}' must be relative to the job's checkpoint directory, \
         without '.', '..', empty segments or backslashes"
    )]
    NotRelative(String),
}

/// One file a task uploaded (or reuses) for a checkpoint.
///
/// `path` is relative to the job's checkpoint directory `<root>/<job-id>/`, so it reads
/// `chk-<n>/…` for a file owned by one checkpoint and `shared/…` for a file that incremental
/// checkpoints share; a savepoint's paths are relative to its own directory. Uploaders give every
/// upload a fresh path (never overwrite), so a path names exactly one set of bytes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "RawFileHandle")]
pub struct FileHandle {
    path: String,
    size: u64,
    crc32: u32,
    shared: bool,
}

impl FileHandle {
    /// Validates `path` (relative, no `.`/`..`/empty segments, no backslash) and builds a handle.
    pub fn new(
        path: impl Into<String>,
        size: u64,
        crc32: u32,
        shared: bool,
    ) -> Result<Self, HandleError> {
        let path = path.into();
        if path.is_empty() {
            return Err(HandleError::EmptyPath);
        }
        let bad_segment = path
            .split('/')
            .any(|seg| seg.is_empty() || seg == "." || seg == "..");
        if bad_segment || path.contains('\\') {
            return Err(HandleError::NotRelative(path));
        }
        Ok(Self {
            path,
            size,
            crc32,
            shared,
        })
    }

    /// The path relative to the job's checkpoint directory.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The file's length in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The CRC32 (crc32fast) of the file's bytes, checked on restore.
    pub fn crc32(&self) -> u32 {
        self.crc32
    }

    /// Whether later checkpoints may reference this file (an incremental SST file under
    /// `shared/`) rather than it belonging to one checkpoint alone.
    pub fn is_shared(&self) -> bool {
        self.shared
    }
}

#[derive(Deserialize)]
struct RawFileHandle {
    path: String,
    size: u64,
    crc32: u32,
    shared: bool,
}

impl TryFrom<RawFileHandle> for FileHandle {
    type Error = HandleError;
    fn try_from(raw: RawFileHandle) -> Result<Self, Self::Error> {
        Self::new(raw.path, raw.size, raw.crc32, raw.shared)
    }
}

/// The state one operator of one subtask contributed to a checkpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorSubtaskState {
    /// Files holding the state (keyed state snapshots, large operator state).
    pub files: Vec<FileHandle>,
    /// Small state kept inline in `_metadata`, e.g. a source's offsets.
    pub inline: Option<Vec<u8>>,
    /// The subtask had processed its whole input when the snapshot was taken (a bounded job
    /// waiting for its final checkpoint). A restored finished operator does not run its
    /// end-of-input work again (it already emitted that output).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub finished: bool,
}

/// Everything a task acknowledges for one checkpoint: the state of each operator in its chain.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStateSnapshot {
    /// Per operator uid, what that operator wrote. Stateless operators may be absent.
    pub operators: BTreeMap<OperatorUid, OperatorSubtaskState>,
}

impl TaskStateSnapshot {
    /// Every file the snapshot references, in operator order.
    pub fn files(&self) -> impl Iterator<Item = &FileHandle> {
        self.operators.values().flat_map(|op| op.files.iter())
    }
}

/// What a task measured while taking its part of a checkpoint.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskAckMetrics {
    /// The synchronous part (e.g. RocksDB native checkpoint), in milliseconds.
    pub sync_ms: u64,
    /// The asynchronous part (uploads), in milliseconds.
    pub async_ms: u64,
    /// Time spent aligning barriers across input channels, in milliseconds.
    pub alignment_ms: u64,
    /// Bytes this task uploaded for this checkpoint (new files only).
    pub bytes_uploaded: u64,
    /// The full size of the task's state, including reused files, in bytes.
    pub full_size: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fuzzed_restore_specs_are_refused_or_read_never_a_panic_a_hang_or_a_huge_allocation() {
        let mut operators = BTreeMap::new();
        operators.insert(
            OperatorUid::new("agg").unwrap(),
            OperatorSubtaskState {
                files: vec![FileHandle::new("chk-3/agg/0/a.sst", 10, 7, false).unwrap()],
                inline: Some(vec![1, 2, 3]),
                finished: false,
            },
        );
        let mut rescaled = BTreeMap::new();
        rescaled.insert(
            OperatorUid::new("src").unwrap(),
            RescaledOperator {
                old_parallelism: 2,
                subtasks: BTreeMap::new(),
            },
        );
        let spec = TaskRestoreSpec {
            checkpoint: weir_types::CheckpointId(3),
            operators,
            location: Some("file:///tmp/sp".into()),
            rescaled,
        };
        // `DeployTask.restore_json`: JSON a TaskManager receives from the JobMaster.
        weir_fuzz::run(
            "DeployTask.restore_json",
            &[serde_json::to_vec(&spec).unwrap()],
            |b| {
                let _ = serde_json::from_slice::<TaskRestoreSpec>(b);
            },
        );
    }

    #[test]
    fn a_task_id_prints_vertex_and_subtask() {
        assert_eq!(
            TaskId::new(VertexId(3), SubtaskIndex(1)).to_string(),
            "vertex-3[1]"
        );
    }

    #[test]
    fn a_file_handle_path_must_be_relative_and_clean() {
        assert!(FileHandle::new("shared/abc.sst", 1, 2, true).is_ok());
        assert_eq!(
            FileHandle::new("", 0, 0, false),
            Err(HandleError::EmptyPath)
        );
        for bad in ["/abs", "a/../b", "a//b", "./a", "a\\b", "a/"] {
            assert!(
                matches!(
                    FileHandle::new(bad, 0, 0, false),
                    Err(HandleError::NotRelative(_))
                ),
                "{bad} was accepted"
            );
        }
    }

    #[test]
    fn deserializing_a_file_handle_validates_its_path() {
        let err = serde_json::from_str::<FileHandle>(
            r#"{"path":"../x","size":1,"crc32":2,"shared":false}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("'../x'"), "{err}");
    }
}

/// What one deployed subtask restores from (sent by the JobMaster with its deployment): the
/// completed checkpoint and, per operator uid of the subtask's chain, the state it stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRestoreSpec {
    /// The completed checkpoint.
    pub checkpoint: weir_types::CheckpointId,
    /// Per operator uid of the chain, the state that operator's subtask stored.
    pub operators: BTreeMap<OperatorUid, OperatorSubtaskState>,
    /// The URL of the folder the handles are relative to, when it is not the job's checkpoint
    /// folder (a savepoint's own folder, or another job's retained checkpoints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// Operators of the chain restored at another parallelism than the snapshot's: every old
    /// subtask's state, for the task to take its share (keyed state by key group, source
    /// positions and sink transactions as the connector splits them).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rescaled: BTreeMap<OperatorUid, RescaledOperator>,
}

/// An operator's state taken at another parallelism than the one it is restored at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RescaledOperator {
    /// The parallelism the snapshot was taken at.
    pub old_parallelism: u32,
    /// What each old subtask stored.
    pub subtasks: BTreeMap<SubtaskIndex, OperatorSubtaskState>,
}
