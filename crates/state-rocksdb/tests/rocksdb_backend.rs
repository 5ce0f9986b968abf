//! What only the RocksDB backend promises: state larger than its memory budget, one directory
//! per instance that goes away with it, and clear errors about the state directory.

use weir_state::{
    BackendScope, KeyedStateBackend, StateBackendFactory, StateDescriptor, StateKey, StateKind,
};
use weir_state_rocksdb::RocksDbStateBackendFactory;
use weir_types::{KeyGroup, KeyGroupRange, OperatorUid, SubtaskIndex};

fn scope(uid: &str, subtask: u32, keyed_subtasks_in_process: u32) -> BackendScope {
    BackendScope {
        operator_uid: OperatorUid::new(uid).expect("uid"),
        subtask: SubtaskIndex(subtask),
        parallelism: keyed_subtasks_in_process,
        max_parallelism: 128,
        key_group_range: KeyGroupRange { start: 0, end: 127 },
        keyed_subtasks_in_process,
    }
}

fn value_state(backend: &mut dyn KeyedStateBackend, name: &str) -> weir_state::StateId {
    backend
        .register(&StateDescriptor {
            name: name.into(),
            kind: StateKind::Value,
        })
        .expect("register")
}

/// A pseudo-random (incompressible) value of `len` bytes for key `i`, round `round`.
fn value_for(i: u32, round: u32, len: usize) -> Vec<u8> {
    let mut x = ((u64::from(i) << 32) | u64::from(round)).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The cell of a value state for `key` (no namespace, no user key).
fn value_cell(key_group: KeyGroup, key: &[u8]) -> StateKey<'_> {
    StateKey {
        key_group,
        key,
        namespace: b"",
        user_key: b"",
    }
}

#[test]
fn state_several_times_larger_than_the_memory_budget_reads_back_intact() {
    const BUDGET: u64 = 8 << 20;
    const KEYS: u32 = 400_000;
    const VALUE_LEN: usize = 168; // 400k × 168 B ≈ 64 MiB of values
    let root = tempfile::tempdir().expect("temp dir");
    let factory = RocksDbStateBackendFactory::new(root.path(), BUDGET).expect("factory");
    let mut backend = factory.open(&scope("big", 0, 1)).expect("open");
    let s = value_state(&mut backend, "payload");
    let key_of = |i: u32| (KeyGroup((i % 128) as u16), i.to_be_bytes());

    for i in 0..KEYS {
        let (kg, k) = key_of(i);
        let cell = value_cell(kg, &k);
        backend
            .put(s, &cell, &value_for(i, 0, VALUE_LEN))
            .expect("put");
        assert!(backend.write_back_cache_bytes() <= backend.write_back_budget_bytes());
    }
    // Overwrite every tenth key, so some reads must find the newer of two flushed versions.
    for i in (0..KEYS).step_by(10) {
        let (kg, k) = key_of(i);
        let cell = value_cell(kg, &k);
        backend
            .put(s, &cell, &value_for(i, 1, VALUE_LEN))
            .expect("put");
    }
    assert!(
        backend.spill_count() > 5,
        "spills: {}",
        backend.spill_count()
    );

    for i in 0..KEYS {
        let (kg, k) = key_of(i);
        let cell = value_cell(kg, &k);
        let round = u32::from(i % 10 == 0);
        let got = backend.get(s, &cell).expect("get");
        assert_eq!(got, Some(&value_for(i, round, VALUE_LEN)[..]), "key {i}");
    }
    let size = backend.size_bytes().expect("size_bytes");
    assert!(
        size > 4 * BUDGET,
        "size_bytes {size} for ~64 MiB of values, budget {BUDGET}"
    );
}

#[test]
fn the_instance_directory_is_removed_when_the_backend_is_dropped() {
    let root = tempfile::tempdir().expect("temp dir");
    let factory = RocksDbStateBackendFactory::new(root.path(), 16 << 20).expect("factory");
    let mut backend = factory.open(&scope("window-agg", 3, 1)).expect("open");
    let s = value_state(&mut backend, "count");
    let cell = StateKey {
        key_group: KeyGroup(1),
        key: b"k",
        namespace: b"",
        user_key: b"",
    };
    backend.put(s, &cell, b"v").expect("put");
    backend.flush().expect("flush");
    let path = backend.path().to_path_buf();
    assert!(
        path.starts_with(root.path().join("window-agg")),
        "{}",
        path.display()
    );
    let dir_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    assert!(dir_name.starts_with("subtask-3-"), "{dir_name}");
    assert!(
        path.join("CURRENT").exists(),
        "no RocksDB in {}",
        path.display()
    );
    drop(backend);
    assert!(!path.exists(), "{} is still there", path.display());
    assert!(root.path().exists(), "the state directory itself stays");
}

#[test]
fn two_backends_of_one_subtask_get_separate_directories_and_state() {
    let root = tempfile::tempdir().expect("temp dir");
    let factory = RocksDbStateBackendFactory::new(root.path(), 16 << 20).expect("factory");
    let mut a = factory.create(&scope("op", 0, 2)).expect("create");
    let mut b = factory.create(&scope("op", 0, 2)).expect("create");
    let sa = value_state(&mut *a, "s");
    let sb = value_state(&mut *b, "s");
    let cell = StateKey {
        key_group: KeyGroup(1),
        key: b"k",
        namespace: b"",
        user_key: b"",
    };
    a.put(sa, &cell, b"a").expect("put");
    a.flush().expect("flush");
    assert_eq!(b.get(sb, &cell).expect("get"), None);
    let dirs = std::fs::read_dir(root.path().join("op"))
        .expect("read_dir")
        .count();
    assert_eq!(dirs, 2);
    assert_eq!(factory.name(), "rocksdb");
    assert_eq!(a.name(), "rocksdb");
}

#[test]
fn each_backend_gets_an_equal_share_of_the_write_back_memory() {
    let root = tempfile::tempdir().expect("temp dir");
    let factory = RocksDbStateBackendFactory::new(root.path(), 64 << 20).expect("factory");
    let backend = factory.open(&scope("op", 1, 4)).expect("open");
    assert_eq!(backend.write_back_budget_bytes(), (32 << 20) / 4);
    assert_eq!(factory.memory_plan().block_cache_bytes, 32 << 20);
}

#[test]
fn a_state_directory_that_cannot_be_created_is_an_error_naming_it() {
    let root = tempfile::tempdir().expect("temp dir");
    let file = root.path().join("a-file");
    std::fs::write(&file, b"not a directory").expect("write");
    let wanted = file.join("state");
    let err = RocksDbStateBackendFactory::new(&wanted, 16 << 20).expect_err("must fail");
    let message = err.to_string();
    assert!(message.contains("rocksdb"), "{message}");
    assert!(message.contains(&*wanted.to_string_lossy()), "{message}");
}

#[test]
fn an_operator_directory_that_cannot_be_created_is_an_error_naming_it() {
    let root = tempfile::tempdir().expect("temp dir");
    let factory = RocksDbStateBackendFactory::new(root.path(), 16 << 20).expect("factory");
    // A file where the operator's directory would go.
    let in_the_way = root.path().join("op");
    std::fs::write(&in_the_way, b"in the way").expect("write");
    let err = factory.open(&scope("op", 0, 1)).expect_err("must fail");
    let message = err.to_string();
    assert!(
        message.contains(&*in_the_way.to_string_lossy()),
        "{message}"
    );
}

#[test]
fn keys_read_again_and_again_stay_cached_while_a_stream_of_cold_keys_passes_through() {
    const HOT: u32 = 500;
    let root = tempfile::tempdir().expect("temp dir");
    // A 2 MiB share of managed memory: ~4k cached entries of these sizes.
    let factory = RocksDbStateBackendFactory::new(root.path(), 2 << 20).expect("factory");
    let mut backend = factory.open(&scope("clock", 0, 1)).expect("open");
    let s = value_state(&mut backend, "v");
    let key_of = |i: u32| (KeyGroup((i % 128) as u16), i.to_be_bytes());
    let touch_hot = |backend: &mut weir_state_rocksdb::RocksDbStateBackend| {
        for i in 0..HOT {
            let (kg, k) = key_of(i);
            backend.get(s, &value_cell(kg, &k)).expect("get");
        }
    };
    for i in 0..HOT {
        let (kg, k) = key_of(i);
        backend
            .put(s, &value_cell(kg, &k), &value_for(i, 0, 100))
            .expect("put");
    }
    // Cold keys stream through (each written once, read once), the hot ones are read between
    // every batch of them: many evictions, spills included.
    for batch in 0..100u32 {
        touch_hot(&mut backend);
        for j in 0..1_000u32 {
            let i = HOT + batch * 1_000 + j;
            let (kg, k) = key_of(i);
            let cell = value_cell(kg, &k);
            backend.put(s, &cell, &value_for(i, 0, 100)).expect("put");
            backend.get(s, &cell).expect("get");
        }
    }
    eprintln!(
        "budget {} evictions {} spills {} misses {}",
        backend.write_back_budget_bytes(),
        backend.eviction_count(),
        backend.spill_count(),
        backend.cache_misses()
    );
    assert!(
        backend.eviction_count() > 20,
        "{}",
        backend.eviction_count()
    );
    assert!(
        backend.spill_count() > 0,
        "the dirty cold keys were written"
    );
    let misses = backend.cache_misses();
    touch_hot(&mut backend);
    assert_eq!(
        backend.cache_misses(),
        misses,
        "every hot key was still cached after {} evictions",
        backend.eviction_count()
    );
    // And nothing was lost on the way.
    for i in (0..HOT + 100_000).step_by(97) {
        let (kg, k) = key_of(i);
        let got = backend.get(s, &value_cell(kg, &k)).expect("get");
        assert_eq!(got, Some(&value_for(i, 0, 100)[..]), "key {i}");
    }
}

#[test]
fn compaction_removes_expired_ttl_state_from_disk_as_the_state_size_shows() {
    use weir_state::{KeyedScope, StateRegistry, StateTtl};
    let dir = tempfile::tempdir().expect("temp dir");
    let factory = RocksDbStateBackendFactory::new(dir.path(), 64 << 20).expect("factory");
    let mut b = factory.create(&scope("ttl", 0, 1)).expect("create");
    let short = StateTtl::after_write(std::time::Duration::from_millis(500));
    let long = StateTtl::after_write(std::time::Duration::from_secs(3600));
    let (s, l) = {
        let mut r = StateRegistry::new(&mut *b);
        (
            r.value_state_with_ttl::<Vec<u8>>("short", short).unwrap(),
            r.value_state_with_ttl::<Vec<u8>>("long", long).unwrap(),
        )
    };
    let mut scratch = Vec::new();
    for i in 0..20_000u32 {
        let key = i.to_be_bytes();
        let mut scope = KeyedScope::new(&mut *b, KeyGroup((i % 128) as u16), &key, &mut scratch);
        s.update(&mut scope, &value_for(i, 0, 500)).unwrap();
        if i < 1_000 {
            l.update(&mut scope, &value_for(i, 1, 500)).unwrap();
        }
    }
    b.compact().unwrap();
    let before = b.size_bytes().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(700));
    b.compact().unwrap();
    let after = b.size_bytes().unwrap();
    eprintln!("TTL state on disk: {before} bytes before expiry, {after} after compaction");
    // 21 000 values of 500 bytes before; the 1 000 long-lived ones after.
    assert!(before > 8_000_000, "before: {before} bytes");
    assert!(
        after < before / 10,
        "compaction kept expired state: {before} -> {after} bytes"
    );
    let key = 5u32.to_be_bytes();
    let mut scope = KeyedScope::new(&mut *b, KeyGroup(5), &key, &mut scratch);
    assert_eq!(s.get(&mut scope).unwrap(), None);
    assert_eq!(l.get(&mut scope).unwrap(), Some(value_for(5, 1, 500)));
}
