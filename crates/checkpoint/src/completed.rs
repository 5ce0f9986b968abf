//! Completed checkpoints and the store that retains them.

use crate::kind::CheckpointKind;
use crate::metadata::CheckpointMetadata;
use std::collections::BTreeMap;
use weir_types::CheckpointId;

/// A checkpoint or savepoint whose `_metadata` is durable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompletedCheckpoint {
    metadata: CheckpointMetadata,
}

impl CompletedCheckpoint {
    /// Wraps metadata that has been written durably, or read back and verified on restore.
    pub fn from_metadata(metadata: CheckpointMetadata) -> Self {
        Self { metadata }
    }

    /// The checkpoint id.
    pub fn id(&self) -> CheckpointId {
        self.metadata.checkpoint_id
    }

    /// Checkpoint or savepoint.
    pub fn kind(&self) -> CheckpointKind {
        self.metadata.kind
    }

    /// The durable metadata.
    pub fn metadata(&self) -> &CheckpointMetadata {
        &self.metadata
    }
}

/// Why a store could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("state.checkpoints.num-retained must be at least 1, got {0}")]
pub struct ZeroRetention(pub u32);

/// The retained completed checkpoints (at most `num_retained`) and every savepoint.
///
/// Adding a checkpoint subsumes the oldest checkpoints beyond `num_retained`; savepoints are not
/// counted and never subsumed (they belong to the user, who disposes of them with
/// [`CompletedCheckpointStore::remove_savepoint`]). The newest checkpoint is therefore always
/// retained.
#[derive(Clone, Debug)]
pub struct CompletedCheckpointStore {
    num_retained: usize,
    checkpoints: BTreeMap<CheckpointId, CompletedCheckpoint>,
    savepoints: BTreeMap<CheckpointId, CompletedCheckpoint>,
}

impl CompletedCheckpointStore {
    /// A store keeping `num_retained` (at least 1) checkpoints.
    pub fn new(num_retained: u32) -> Result<Self, ZeroRetention> {
        if num_retained == 0 {
            return Err(ZeroRetention(num_retained));
        }
        Ok(Self {
            num_retained: num_retained as usize,
            checkpoints: BTreeMap::new(),
            savepoints: BTreeMap::new(),
        })
    }

    /// Adds `completed` and returns the checkpoints it subsumed, oldest first. Checkpoints are
    /// ordered by id, so one that completes after a newer one may be subsumed at once.
    pub fn add(&mut self, completed: CompletedCheckpoint) -> Vec<CompletedCheckpoint> {
        if completed.kind().is_savepoint() {
            self.savepoints.insert(completed.id(), completed);
            return Vec::new();
        }
        self.checkpoints.insert(completed.id(), completed);
        let mut subsumed = Vec::new();
        while self.checkpoints.len() > self.num_retained {
            match self.checkpoints.pop_first() {
                Some((_, c)) => subsumed.push(c),
                None => break,
            }
        }
        subsumed
    }

    /// Adds `completed` without subsuming anything, even beyond the retention count: what a
    /// restore loads from storage stays until a checkpoint of the resumed job completes (so a
    /// smaller `state.checkpoints.num-retained` never deletes an older checkpoint before a newer
    /// one is verified). The next [`Self::add`] trims to the count.
    pub fn add_retaining(&mut self, completed: CompletedCheckpoint) {
        if completed.kind().is_savepoint() {
            self.savepoints.insert(completed.id(), completed);
        } else {
            self.checkpoints.insert(completed.id(), completed);
        }
    }

    /// The newest completed checkpoint or savepoint: where recovery starts.
    pub fn latest(&self) -> Option<&CompletedCheckpoint> {
        let c = self.checkpoints.last_key_value().map(|(_, c)| c);
        let s = self.savepoints.last_key_value().map(|(_, c)| c);
        match (c, s) {
            (Some(c), Some(s)) => Some(if s.id() > c.id() { s } else { c }),
            (c, s) => c.or(s),
        }
    }

    /// The newest completed checkpoint that is not a savepoint.
    pub fn latest_checkpoint(&self) -> Option<&CompletedCheckpoint> {
        self.checkpoints.last_key_value().map(|(_, c)| c)
    }

    /// Retained checkpoints and savepoints, in id order.
    pub fn all(&self) -> Vec<&CompletedCheckpoint> {
        let mut all: Vec<_> = self
            .checkpoints
            .values()
            .chain(self.savepoints.values())
            .collect();
        all.sort_by_key(|c| c.id());
        all
    }

    /// Whether `id` is retained.
    pub fn contains(&self, id: CheckpointId) -> bool {
        self.checkpoints.contains_key(&id) || self.savepoints.contains_key(&id)
    }

    /// Removes checkpoint or savepoint `id` (found damaged on restore); returns whether it was
    /// retained. The caller unregisters its files.
    pub fn remove(&mut self, id: CheckpointId) -> bool {
        self.checkpoints.remove(&id).is_some() || self.savepoints.remove(&id).is_some()
    }

    /// Removes a savepoint the user disposed of; the caller unregisters its files.
    pub fn remove_savepoint(&mut self, id: CheckpointId) -> Option<CompletedCheckpoint> {
        self.savepoints.remove(&id)
    }

    /// How many checkpoints (not savepoints) are retained.
    pub fn num_checkpoints(&self) -> usize {
        self.checkpoints.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kind::SavepointFormat;
    use weir_types::JobId;

    fn completed(id: u64, kind: CheckpointKind) -> CompletedCheckpoint {
        CompletedCheckpoint::from_metadata(CheckpointMetadata {
            job_id: JobId(1),
            checkpoint_id: CheckpointId(id),
            kind,
            timestamp: id,
            max_parallelism: 128,
            key_group_hash_version: 1,
            operators: BTreeMap::new(),
            self_contained: true,
            job_name: None,
            leader_epoch: None,
        })
    }

    const SP: CheckpointKind = CheckpointKind::Savepoint {
        format: SavepointFormat::Canonical,
    };

    #[test]
    fn a_store_of_zero_is_refused_naming_the_key() {
        let err = CompletedCheckpointStore::new(0).unwrap_err();
        assert!(err.to_string().contains("state.checkpoints.num-retained"));
    }

    #[test]
    fn adding_beyond_retention_subsumes_the_oldest_checkpoint() {
        let mut s = CompletedCheckpointStore::new(2).unwrap();
        assert!(s.add(completed(1, CheckpointKind::Checkpoint)).is_empty());
        assert!(s.add(completed(2, CheckpointKind::Checkpoint)).is_empty());
        let sub = s.add(completed(3, CheckpointKind::Checkpoint));
        assert_eq!(
            sub.iter().map(|c| c.id()).collect::<Vec<_>>(),
            [CheckpointId(1)]
        );
        assert_eq!(s.latest().map(|c| c.id()), Some(CheckpointId(3)));
    }

    #[test]
    fn a_savepoint_is_never_subsumed() {
        let mut s = CompletedCheckpointStore::new(1).unwrap();
        s.add(completed(1, SP));
        for id in 2..10 {
            for c in s.add(completed(id, CheckpointKind::Checkpoint)) {
                assert!(!c.kind().is_savepoint());
            }
        }
        assert!(s.contains(CheckpointId(1)));
        assert_eq!(s.latest().map(|c| c.id()), Some(CheckpointId(9)));
        s.add(completed(10, SP));
        assert_eq!(s.latest().map(|c| c.id()), Some(CheckpointId(10)));
        assert_eq!(s.latest_checkpoint().map(|c| c.id()), Some(CheckpointId(9)));
    }
}
