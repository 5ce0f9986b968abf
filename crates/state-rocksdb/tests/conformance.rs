//! The whole conformance suite, snapshot checks included, on the RocksDB backend, with a
//! write-back cache small enough (2 MiB) that the many-keys checks make it spill mid-way.

use tempfile::TempDir;
use weir_state::{
    BackendScope, KeyedStateBackend, LocalSnapshot, StateDescriptor, StateEntry, StateError,
    StateId, StateKey,
};
use weir_state_rocksdb::{RocksDbStateBackend, RocksDbStateBackendFactory};
use weir_types::{CheckpointId, KeyGroupRange, OperatorUid, SubtaskIndex};

/// Managed memory for the suite: 2 MiB block cache, 2 MiB write-back cache.
const MANAGED_MEMORY_BYTES: u64 = 4 << 20;

/// A backend together with the temporary state directory it lives in; the backend is dropped
/// (closing RocksDB and removing its instance directory) before the directory.
struct InTempDir {
    backend: RocksDbStateBackend,
    _root: TempDir,
}

fn open(range: KeyGroupRange) -> Box<dyn KeyedStateBackend> {
    let root = tempfile::tempdir().expect("temp dir");
    let factory =
        RocksDbStateBackendFactory::new(root.path(), MANAGED_MEMORY_BYTES).expect("factory");
    let scope = BackendScope {
        operator_uid: OperatorUid::new("conformance").expect("uid"),
        subtask: SubtaskIndex(0),
        parallelism: 1,
        max_parallelism: 128,
        key_group_range: range,
        keyed_subtasks_in_process: 1,
    };
    let backend = factory.open(&scope).expect("open backend");
    Box::new(InTempDir {
        backend,
        _root: root,
    })
}

impl KeyedStateBackend for InTempDir {
    fn name(&self) -> &'static str {
        self.backend.name()
    }
    fn key_group_range(&self) -> KeyGroupRange {
        self.backend.key_group_range()
    }
    fn register(&mut self, descriptor: &StateDescriptor) -> Result<StateId, StateError> {
        self.backend.register(descriptor)
    }
    fn descriptors(&self) -> &[StateDescriptor] {
        self.backend.descriptors()
    }
    fn get(&mut self, state: StateId, key: &StateKey<'_>) -> Result<Option<&[u8]>, StateError> {
        self.backend.get(state, key)
    }
    fn put(&mut self, state: StateId, key: &StateKey<'_>, value: &[u8]) -> Result<(), StateError> {
        self.backend.put(state, key, value)
    }
    fn delete(&mut self, state: StateId, key: &StateKey<'_>) -> Result<(), StateError> {
        self.backend.delete(state, key)
    }
    fn prefix_for_each(
        &mut self,
        state: StateId,
        prefix: &StateKey<'_>,
        f: &mut weir_state::UserKeyVisitor<'_>,
    ) -> Result<(), StateError> {
        self.backend.prefix_for_each(state, prefix, f)
    }
    fn delete_prefix(&mut self, state: StateId, prefix: &StateKey<'_>) -> Result<(), StateError> {
        self.backend.delete_prefix(state, prefix)
    }
    fn scan(
        &mut self,
        state: StateId,
        f: &mut dyn FnMut(&StateEntry<'_>) -> Result<(), StateError>,
    ) -> Result<(), StateError> {
        self.backend.scan(state, f)
    }
    fn flush(&mut self) -> Result<(), StateError> {
        self.backend.flush()
    }
    fn size_bytes(&mut self) -> Result<u64, StateError> {
        self.backend.size_bytes()
    }
    fn snapshot(&mut self, checkpoint: CheckpointId) -> Result<LocalSnapshot, StateError> {
        self.backend.snapshot(checkpoint)
    }
}

weir_state::conformance_tests!(open);

mod snapshots {
    use super::MANAGED_MEMORY_BYTES;
    use weir_state_rocksdb::RocksDbStateBackendFactory;

    weir_state::snapshot_conformance_tests!(|check| {
        let root = tempfile::tempdir().expect("temp dir");
        let factory =
            RocksDbStateBackendFactory::new(root.path(), MANAGED_MEMORY_BYTES).expect("factory");
        check(&factory);
    });
}

#[test]
fn the_many_keys_checks_make_the_write_back_cache_spill() {
    let root = tempfile::tempdir().expect("temp dir");
    let factory =
        RocksDbStateBackendFactory::new(root.path(), MANAGED_MEMORY_BYTES).expect("factory");
    let scope = BackendScope {
        operator_uid: OperatorUid::new("spill").expect("uid"),
        subtask: SubtaskIndex(0),
        parallelism: 1,
        max_parallelism: 128,
        key_group_range: KeyGroupRange { start: 0, end: 127 },
        keyed_subtasks_in_process: 1,
    };
    let mut backend = factory.open(&scope).expect("open");
    let s = backend
        .register(&StateDescriptor {
            name: "s".into(),
            kind: weir_state::StateKind::Value,
        })
        .expect("register");
    for i in 0..weir_state::conformance::MANY_KEYS {
        let k = i.to_be_bytes();
        let key = StateKey {
            key_group: weir_types::KeyGroup(5),
            key: &k,
            namespace: b"",
            user_key: b"",
        };
        backend.put(s, &key, &[0u8; 24]).expect("put");
    }
    assert!(backend.spill_count() > 0, "{backend:?}");
    assert!(backend.write_back_cache_bytes() <= backend.write_back_budget_bytes());
}
