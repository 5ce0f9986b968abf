//! What only RocksDB snapshots promise: SST files are shared between snapshots (the incremental
//! property), their names never come back for other bytes (also after a restore), the snapshot
//! directory is independent of the live instance, and restore refuses incomplete files.
//!
//! The cross-backend snapshot checks run in `conformance.rs`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tempfile::TempDir;
use weir_state::{
    BackendScope, KeyedStateBackend, LocalSnapshot, RestoredSnapshot, SnapshotContent,
    StateBackendFactory, StateDescriptor, StateError, StateId, StateKey, StateKind,
};
use weir_state_rocksdb::{RocksDbStateBackend, RocksDbStateBackendFactory};
use weir_types::{CheckpointId, KeyGroup, KeyGroupRange, OperatorUid, SubtaskIndex};

/// 32 MiB block cache (4 MiB memtables), 32 MiB write-back cache: the writes of these tests
/// reach RocksDB only through snapshots, so each snapshot adds one SST per changed state.
const MANAGED_MEMORY_BYTES: u64 = 64 << 20;

const RANGE: KeyGroupRange = KeyGroupRange { start: 0, end: 127 };

/// A factory in a temporary state directory (dropped after the factory).
struct Fixture {
    factory: RocksDbStateBackendFactory,
    root: TempDir,
}

impl Fixture {
    fn new(managed_memory_bytes: u64) -> Self {
        let root = tempfile::tempdir().expect("temp dir");
        let factory =
            RocksDbStateBackendFactory::new(root.path(), managed_memory_bytes).expect("factory");
        Self { factory, root }
    }

    fn open(&self) -> RocksDbStateBackend {
        self.factory.open(&scope()).expect("open")
    }

    fn restore(&self, snapshot: RestoredSnapshot) -> RocksDbStateBackend {
        self.factory
            .open_restored(&scope(), snapshot)
            .expect("restore")
    }

    /// A fresh directory for a simulated download.
    fn download_dir(&self, name: &str) -> PathBuf {
        self.root.path().join("downloads").join(name)
    }
}

fn scope() -> BackendScope {
    BackendScope {
        operator_uid: OperatorUid::new("snapshots").expect("uid"),
        subtask: SubtaskIndex(0),
        parallelism: 1,
        max_parallelism: 128,
        key_group_range: RANGE,
        keyed_subtasks_in_process: 1,
    }
}

fn declare(backend: &mut dyn KeyedStateBackend, names: &[&str]) -> Vec<StateId> {
    names
        .iter()
        .map(|name| {
            backend
                .register(&StateDescriptor {
                    name: (*name).into(),
                    kind: StateKind::Value,
                })
                .expect("register")
        })
        .collect()
}

fn cell(key: &[u8]) -> StateKey<'_> {
    StateKey {
        key_group: KeyGroup((key.iter().map(|&b| u16::from(b)).sum::<u16>()) % 128),
        key,
        namespace: b"",
        user_key: b"",
    }
}

/// Writes keys `keys` of state `s` with values of round `round`.
fn write(backend: &mut dyn KeyedStateBackend, s: StateId, keys: std::ops::Range<u32>, round: u32) {
    for i in keys {
        let k = i.to_be_bytes();
        let v = [i.to_le_bytes(), round.to_le_bytes(), [7; 4], [9; 4]].concat();
        backend.put(s, &cell(&k), &v).expect("put");
    }
}

fn read(backend: &mut dyn KeyedStateBackend, s: StateId, i: u32) -> Option<Vec<u8>> {
    let k = i.to_be_bytes();
    backend.get(s, &cell(&k)).expect("get").map(<[u8]>::to_vec)
}

/// The snapshot's SST files: name → path.
fn ssts(snapshot: &LocalSnapshot) -> BTreeMap<String, PathBuf> {
    snapshot
        .files
        .iter()
        .filter(|f| f.shareable)
        .map(|f| match &f.content {
            SnapshotContent::Path(p) => (f.name.clone(), p.clone()),
            SnapshotContent::Bytes(_) | SnapshotContent::Shared(_) => {
                panic!("{} is held in memory", f.name)
            }
        })
        .collect()
}

/// An SST file's number (`000012.sst` → 12).
fn number(name: &str) -> u64 {
    name.strip_suffix(".sst")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{name} is not an SST name"))
}

fn bytes_of(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn size_of(paths: impl IntoIterator<Item = PathBuf>) -> u64 {
    paths
        .into_iter()
        .map(|p| std::fs::metadata(&p).expect("stat").len())
        .sum()
}

/// Copies the snapshot's files to `to` and removes its cleanup directory, as the uploader does.
fn upload(snapshot: LocalSnapshot, to: &Path) -> RestoredSnapshot {
    let restored = snapshot.copy_to_dir(to).expect("copy");
    if let Some(dir) = &snapshot.cleanup_dir {
        std::fs::remove_dir_all(dir).expect("remove the cleanup dir");
    }
    restored
}

#[test]
fn sst_files_are_shareable_and_every_other_file_is_private() {
    let fx = Fixture::new(MANAGED_MEMORY_BYTES);
    let mut backend = fx.open();
    let s = declare(&mut backend, &["a", "b"]);
    write(&mut backend, s[0], 0..1000, 0);
    write(&mut backend, s[1], 0..1000, 0);
    let snapshot = backend
        .snapshot(CheckpointId(1))
        .and_then(LocalSnapshot::resolve)
        .expect("snapshot");
    assert_eq!(snapshot.backend, "rocksdb");
    assert_eq!(snapshot.format, weir_state_rocksdb::SNAPSHOT_FORMAT);
    let names: Vec<&str> = snapshot.files.iter().map(|f| f.name.as_str()).collect();
    assert!(names.contains(&"CURRENT"), "{names:?}");
    assert!(
        names.iter().any(|n| n.starts_with("MANIFEST-")),
        "{names:?}"
    );
    assert!(names.iter().any(|n| n.starts_with("OPTIONS-")), "{names:?}");
    assert_eq!(ssts(&snapshot).len(), 2, "one SST per state: {names:?}");
    for f in &snapshot.files {
        assert_eq!(f.shareable, f.name.ends_with(".sst"), "{}", f.name);
        let SnapshotContent::Path(path) = &f.content else {
            panic!("{} is held in memory", f.name);
        };
        assert_eq!(
            Some(path.parent().expect("parent")),
            snapshot.cleanup_dir.as_deref()
        );
    }
}

#[test]
fn the_snapshot_directory_is_a_sibling_of_the_instance_directory() {
    let fx = Fixture::new(MANAGED_MEMORY_BYTES);
    let mut backend = fx.open();
    let s = declare(&mut backend, &["a"]);
    write(&mut backend, s[0], 0..10, 0);
    let snapshot = backend
        .snapshot(CheckpointId(42))
        .and_then(LocalSnapshot::resolve)
        .expect("snapshot");
    let dir = snapshot.cleanup_dir.clone().expect("a cleanup dir");
    assert_eq!(dir, backend.snapshot_dir(CheckpointId(42)));
    assert!(!dir.starts_with(backend.path()), "{}", dir.display());
    assert_eq!(dir.parent(), backend.path().parent());
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    assert!(name.ends_with(".chk-42"), "{name}");
    // The backend leaves it to the uploader.
    let instance = backend.path().to_path_buf();
    drop(backend);
    assert!(!instance.exists());
    assert!(dir.join("CURRENT").exists());
}

#[test]
fn a_second_snapshot_for_the_same_checkpoint_is_refused_and_leaves_the_first_intact() {
    let fx = Fixture::new(MANAGED_MEMORY_BYTES);
    let mut backend = fx.open();
    let s = declare(&mut backend, &["a"]);
    write(&mut backend, s[0], 0..100, 0);
    let first = backend
        .snapshot(CheckpointId(5))
        .and_then(LocalSnapshot::resolve)
        .expect("snapshot");
    write(&mut backend, s[0], 0..100, 1);
    match backend.snapshot(CheckpointId(5)) {
        Err(e @ StateError::Snapshot { checkpoint, .. }) => {
            assert_eq!(checkpoint, CheckpointId(5));
            assert!(e.to_string().contains("chk-5"), "{e}");
        }
        other => panic!("expected a snapshot error, got {other:?}"),
    }
    // The first snapshot is untouched and the backend still works.
    let download = fx.download_dir("first");
    let mut restored = fx.restore(upload(first, &download));
    assert_eq!(read(&mut restored, s[0], 7), read_round(7, 0));
    assert_eq!(read(&mut backend, s[0], 7), read_round(7, 1));
    backend
        .snapshot(CheckpointId(6))
        .and_then(LocalSnapshot::resolve)
        .expect("the next snapshot");
}

#[test]
fn a_snapshot_that_cannot_write_its_dirty_entries_fails_naming_the_file_and_poisons_the_backend() {
    let fx = Fixture::new(MANAGED_MEMORY_BYTES);
    let mut backend = fx.open();
    let s = declare(&mut backend, &["a"]);
    write(&mut backend, s[0], 0..100, 0);
    // Something (here a directory) already sits where the SST of the dirty entries goes, as a
    // full disk or a broken file system would make its creation fail.
    let blocked = backend.ingest_file(CheckpointId(3), s[0]);
    std::fs::create_dir_all(&blocked).expect("block the ingest file");
    let failed = backend
        .snapshot(CheckpointId(3))
        .and_then(LocalSnapshot::resolve)
        .expect_err("the snapshot cannot write its entries");
    let message = failed.to_string();
    assert!(message.contains("chk-3"), "{message}");
    assert!(
        message.contains(&blocked.display().to_string()) && message.contains("state 'a'"),
        "the error names the file and the state: {message}"
    );
    // RocksDB lacks the barrier's entries: from the next operation that goes to RocksDB on, the
    // backend refuses (the task restores from the last checkpoint instead).
    match backend.flush() {
        Err(e) => assert!(e.to_string().contains("dirty entries"), "{e}"),
        Ok(()) => panic!("a backend whose snapshot lost its entries flushed"),
    }
    assert!(backend.snapshot(CheckpointId(4)).is_err());
}

/// The value [`write`] stores for key `i` in round `round`.
fn read_round(i: u32, round: u32) -> Option<Vec<u8>> {
    Some([i.to_le_bytes(), round.to_le_bytes(), [7; 4], [9; 4]].concat())
}

#[test]
fn two_snapshots_with_a_small_change_between_share_most_sst_files() {
    let fx = Fixture::new(MANAGED_MEMORY_BYTES);
    let mut backend = fx.open();
    let s = declare(&mut backend, &["a", "b", "c"]);
    for &state in &s {
        write(&mut backend, state, 0..20_000, 0);
    }
    let first = backend
        .snapshot(CheckpointId(1))
        .and_then(LocalSnapshot::resolve)
        .expect("snapshot");
    write(&mut backend, s[1], 100..110, 1);
    let second = backend
        .snapshot(CheckpointId(2))
        .and_then(LocalSnapshot::resolve)
        .expect("snapshot");

    let (a, b) = (ssts(&first), ssts(&second));
    let shared: Vec<&String> = b.keys().filter(|n| a.contains_key(*n)).collect();
    let new: Vec<&String> = b.keys().filter(|n| !a.contains_key(*n)).collect();
    assert_eq!(shared.len(), 3, "first {a:?}, second {b:?}");
    assert_eq!(
        new.len(),
        1,
        "only the changed state's flush is new: {new:?}"
    );
    let shared_bytes = size_of(shared.iter().map(|n| b[*n].clone()));
    let new_bytes = size_of(new.iter().map(|n| b[*n].clone()));
    assert!(
        new_bytes * 20 < shared_bytes,
        "{new_bytes} new bytes against {shared_bytes} shared"
    );
}

#[test]
fn the_second_snapshot_has_new_names_only_for_new_files() {
    let fx = Fixture::new(MANAGED_MEMORY_BYTES);
    let mut backend = fx.open();
    let s = declare(&mut backend, &["a", "b"]);
    write(&mut backend, s[0], 0..20_000, 0);
    write(&mut backend, s[1], 0..20_000, 0);
    let first = backend
        .snapshot(CheckpointId(1))
        .and_then(LocalSnapshot::resolve)
        .expect("snapshot");
    write(&mut backend, s[0], 0..50, 1);
    let second = backend
        .snapshot(CheckpointId(2))
        .and_then(LocalSnapshot::resolve)
        .expect("snapshot");

    let (a, b) = (ssts(&first), ssts(&second));
    let newest_of_first = a.keys().map(|n| number(n)).max().expect("SSTs");
    for (name, path) in &b {
        match a.get(name) {
            // Equal names, equal bytes.
            Some(old) => assert_eq!(bytes_of(old), bytes_of(path), "{name} changed"),
            None => assert!(
                number(name) > newest_of_first,
                "{name} is new but numbered below {newest_of_first}"
            ),
        }
    }
}

#[test]
fn after_restore_new_sst_files_never_reuse_a_restored_name() {
    let fx = Fixture::new(MANAGED_MEMORY_BYTES);
    let mut backend = fx.open();
    let s = declare(&mut backend, &["a", "b"]);
    write(&mut backend, s[0], 0..20_000, 0);
    write(&mut backend, s[1], 0..20_000, 0);
    let first = backend
        .snapshot(CheckpointId(1))
        .and_then(LocalSnapshot::resolve)
        .expect("snapshot");
    drop(backend);
    let restored_ssts: BTreeMap<String, Vec<u8>> = ssts(&first)
        .into_iter()
        .map(|(name, path)| (name, bytes_of(&path)))
        .collect();
    let newest_restored = restored_ssts.keys().map(|n| number(n)).max().expect("SSTs");
    let download = fx.download_dir("chk-1");
    let mut restored = fx.restore(upload(first, &download));

    // Enough snapshots that RocksDB also compacts, rewriting restored files into new ones.
    for round in 1..=6u32 {
        write(&mut restored, s[0], 0..20_000, round);
        write(&mut restored, s[1], round * 100..round * 100 + 10, round);
        let snapshot = restored
            .snapshot(CheckpointId(1 + u64::from(round)))
            .and_then(LocalSnapshot::resolve)
            .expect("snapshot");
        for (name, path) in ssts(&snapshot) {
            match restored_ssts.get(&name) {
                Some(bytes) => assert_eq!(bytes, &bytes_of(&path), "{name} reused"),
                None => assert!(number(&name) > newest_restored, "{name} after restore"),
            }
        }
        std::fs::remove_dir_all(snapshot.cleanup_dir.expect("dir")).expect("cleanup");
    }
    assert_eq!(read(&mut restored, s[0], 3), read_round(3, 6));
    assert_eq!(read(&mut restored, s[1], 3), read_round(3, 0));
}

#[test]
fn removing_the_cleanup_dir_leaves_the_live_db_working() {
    // A small budget, so reads go to RocksDB rather than the write-back cache.
    let fx = Fixture::new(4 << 20);
    let mut backend = fx.open();
    let s = declare(&mut backend, &["a"]);
    write(&mut backend, s[0], 0..30_000, 0);
    let snapshot = backend
        .snapshot(CheckpointId(1))
        .and_then(LocalSnapshot::resolve)
        .expect("snapshot");
    std::fs::remove_dir_all(snapshot.cleanup_dir.as_ref().expect("dir")).expect("remove");
    for i in (0..30_000).step_by(97) {
        assert_eq!(read(&mut backend, s[0], i), read_round(i, 0), "key {i}");
    }
    let mut count = 0;
    backend
        .scan(s[0], &mut |_| {
            count += 1;
            Ok(())
        })
        .expect("scan");
    assert_eq!(count, 30_000);
    write(&mut backend, s[0], 0..30_000, 1);
    let second = backend
        .snapshot(CheckpointId(2))
        .and_then(LocalSnapshot::resolve)
        .expect("snapshot");
    let download = fx.download_dir("chk-2");
    let mut restored = fx.restore(upload(second, &download));
    assert_eq!(read(&mut restored, s[0], 29_999), read_round(29_999, 1));
}

#[cfg(unix)]
#[test]
fn restore_hard_links_the_sst_files_and_removes_its_directory_on_drop() {
    use std::os::unix::fs::MetadataExt;
    let fx = Fixture::new(MANAGED_MEMORY_BYTES);
    let mut backend = fx.open();
    let s = declare(&mut backend, &["a"]);
    write(&mut backend, s[0], 0..1000, 0);
    let snapshot = backend
        .snapshot(CheckpointId(1))
        .and_then(LocalSnapshot::resolve)
        .expect("snapshot");
    let download = fx.download_dir("chk-1");
    let restored_snapshot = upload(snapshot, &download);
    let sst = restored_snapshot
        .files
        .iter()
        .find(|(n, _)| n.ends_with(".sst"))
        .map(|(n, _)| n.clone())
        .expect("an SST");
    let restored = fx.restore(restored_snapshot.clone());
    let linked = std::fs::metadata(restored.path().join(&sst)).expect("stat");
    let downloaded = std::fs::metadata(download.join(&sst)).expect("stat");
    assert_eq!(
        linked.ino(),
        downloaded.ino(),
        "{sst} was copied, not linked"
    );
    // The caller may remove the downloads at once.
    std::fs::remove_dir_all(&download).expect("remove downloads");
    let instance = restored.path().to_path_buf();
    assert!(instance.starts_with(fx.root.path().join("snapshots")));
    drop(restored);
    assert!(!instance.exists(), "{} is still there", instance.display());
}

#[test]
fn a_snapshot_missing_an_sst_file_is_refused_and_leaves_no_directory() {
    let fx = Fixture::new(MANAGED_MEMORY_BYTES);
    let mut backend = fx.open();
    let s = declare(&mut backend, &["a", "b"]);
    write(&mut backend, s[0], 0..1000, 0);
    write(&mut backend, s[1], 0..1000, 0);
    let snapshot = backend
        .snapshot(CheckpointId(12))
        .and_then(LocalSnapshot::resolve)
        .expect("snapshot");
    let mut restored = upload(snapshot, &fx.download_dir("chk-12"));
    let instances_before = std::fs::read_dir(fx.root.path().join("snapshots"))
        .expect("read_dir")
        .count();
    let sst = restored
        .files
        .iter()
        .position(|(n, _)| n.ends_with(".sst"))
        .expect("an SST");
    restored.files.remove(sst);
    match fx.factory.restore(&scope(), restored) {
        Err(e @ StateError::Restore { checkpoint, .. }) => {
            assert_eq!(checkpoint, CheckpointId(12));
            assert!(e.to_string().contains("chk-12"), "{e}");
        }
        Err(other) => panic!("expected a restore error, got {other:?}"),
        Ok(_) => panic!("restored without one of its SST files"),
    }
    let instances_after = std::fs::read_dir(fx.root.path().join("snapshots"))
        .expect("read_dir")
        .count();
    assert_eq!(
        instances_after, instances_before,
        "a failed restore left a directory"
    );
}

#[test]
fn a_column_family_without_a_declared_state_is_refused() {
    let fx = Fixture::new(MANAGED_MEMORY_BYTES);
    let mut backend = fx.open();
    let s = declare(&mut backend, &["a", "b"]);
    write(&mut backend, s[1], 0..10, 0);
    let snapshot = backend
        .snapshot(CheckpointId(3))
        .and_then(LocalSnapshot::resolve)
        .expect("snapshot");
    let mut restored = upload(snapshot, &fx.download_dir("chk-3"));
    restored.descriptors.remove(1);
    let err = fx
        .factory
        .open_restored(&scope(), restored)
        .expect_err("must refuse");
    let message = err.to_string();
    assert!(
        message.contains("chk-3") && message.contains("'b'"),
        "{message}"
    );
}

#[test]
fn writes_spills_and_flushes_while_the_background_part_runs_stay_out_of_the_snapshot() {
    // A 4 MiB budget (2 MiB of write-back cache): the writes below spill several times while
    // the snapshot's ingestion and native checkpoint may still be running.
    let fx = Fixture::new(4 << 20);
    let mut backend = fx.open();
    let s = declare(&mut backend, &["a"]);
    write(&mut backend, s[0], 0..20_000, 0);
    let snapshot = backend.snapshot(CheckpointId(1)).expect("snapshot");
    assert!(
        snapshot.pending.is_some(),
        "the expensive part runs in the background"
    );
    for round in 1..4 {
        write(&mut backend, s[0], 0..20_000, round);
    }
    backend.flush().expect("flush");
    assert!(backend.spill_count() > 0, "the cache spilled meanwhile");
    let snapshot = snapshot.resolve().expect("resolve");
    let mut restored = fx.restore(upload(snapshot, &fx.download_dir("bg")));
    for i in [0, 1, 9_999, 19_999] {
        assert_eq!(read(&mut restored, s[0], i), read_round(i, 0), "key {i}");
        assert_eq!(read(&mut backend, s[0], i), read_round(i, 3), "key {i}");
    }
}

#[test]
fn clearing_a_map_while_the_background_part_runs_neither_resurrects_it_nor_changes_the_snapshot() {
    let fx = Fixture::new(MANAGED_MEMORY_BYTES);
    let mut backend = fx.open();
    let map = backend
        .register(&StateDescriptor {
            name: "m".into(),
            kind: StateKind::Map,
        })
        .expect("register");
    let key = 7u32.to_be_bytes();
    let entry = |user_key: &'static [u8]| StateKey {
        user_key,
        ..cell(&key)
    };
    let user_keys: [&'static [u8]; 3] = [b"a", b"b", b"c"];
    for uk in user_keys {
        backend.put(map, &entry(uk), b"v").expect("put");
    }
    let snapshot = backend.snapshot(CheckpointId(1)).expect("snapshot");
    backend
        .delete_prefix(map, &entry(b""))
        .expect("clear the map");
    let count = |b: &mut dyn KeyedStateBackend| {
        let mut n = 0;
        b.prefix_for_each(map, &entry(b""), &mut |_, _| {
            n += 1;
            Ok(())
        })
        .expect("scan");
        n
    };
    assert_eq!(count(&mut backend), 0, "the cleared map is empty");
    let snapshot = snapshot.resolve().expect("resolve");
    assert_eq!(
        count(&mut backend),
        0,
        "the in-flight batch did not bring it back"
    );
    let mut restored = fx.restore(upload(snapshot, &fx.download_dir("map")));
    assert_eq!(count(&mut restored), 3, "the snapshot still has the map");
}

/// One step of [`reads_and_snapshots_agree_with_a_model_under_any_order_of_operations`].
#[derive(Clone, Debug)]
enum Op {
    Put(u8, u8),
    Delete(u8),
    Get(u8),
    Flush,
    Snapshot,
    /// Waits for the oldest unresolved snapshot and checks that it restores to its barrier.
    Resolve,
}

fn op() -> impl proptest::strategy::Strategy<Value = Op> {
    use proptest::prelude::*;
    prop_oneof![
        6 => (any::<u8>(), any::<u8>()).prop_map(|(k, v)| Op::Put(k, v)),
        2 => any::<u8>().prop_map(Op::Delete),
        6 => any::<u8>().prop_map(Op::Get),
        1 => Just(Op::Flush),
        1 => Just(Op::Snapshot),
        1 => Just(Op::Resolve),
    ]
}

/// A value of 8 KiB, so that a few hundred cached entries fill the 2 MiB write-back budget of
/// a 4 MiB fixture and the cache spills, also while a background part runs.
fn big_value(key: u8, round: u8) -> Vec<u8> {
    let mut v = vec![round; 8 << 10];
    v[0] = key;
    v
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

    /// Point reads answer from the cache, the frozen generation of an unfinished snapshot, or
    /// RocksDB; whichever it is, every read equals a plain map's, and every snapshot restores
    /// to exactly the map as it was at its barrier, whatever writes, spills and flushes came
    /// between the barrier and its background part's end.
    #[test]
    fn reads_and_snapshots_agree_with_a_model_under_any_order_of_operations(
        ops in proptest::collection::vec(op(), 1..400),
    ) {
        let fx = Fixture::new(4 << 20);
        let mut backend = fx.open();
        let s = declare(&mut backend, &["a"])[0];
        let mut model: BTreeMap<u8, Vec<u8>> = BTreeMap::new();
        let mut pending: std::collections::VecDeque<(LocalSnapshot, BTreeMap<u8, Vec<u8>>)> =
            std::collections::VecDeque::new();
        let mut next_checkpoint = 1;
        let check_oldest = |pending: &mut std::collections::VecDeque<(LocalSnapshot, BTreeMap<u8, Vec<u8>>)>| {
            let Some((snapshot, at_barrier)) = pending.pop_front() else { return };
            let id = snapshot.checkpoint;
            let snapshot = snapshot.resolve().expect("resolve");
            let mut restored = fx.restore(upload(snapshot, &fx.download_dir(&format!("{}", id.0))));
            for k in 0..=u8::MAX {
                let got = restored.get(s, &cell(&[k])).expect("get").map(<[u8]>::to_vec);
                assert_eq!(got, at_barrier.get(&k).cloned(), "checkpoint {id}, key {k}");
            }
        };
        for op in ops {
            match op {
                Op::Put(k, v) => {
                    let value = big_value(k, v);
                    backend.put(s, &cell(&[k]), &value).expect("put");
                    model.insert(k, value);
                }
                Op::Delete(k) => {
                    backend.delete(s, &cell(&[k])).expect("delete");
                    model.remove(&k);
                }
                Op::Get(k) => {
                    let got = backend.get(s, &cell(&[k])).expect("get").map(<[u8]>::to_vec);
                    proptest::prop_assert_eq!(got, model.get(&k).cloned(), "key {}", k);
                }
                Op::Flush => backend.flush().expect("flush"),
                Op::Snapshot => {
                    let snapshot = backend
                        .snapshot(CheckpointId(next_checkpoint))
                        .expect("snapshot");
                    next_checkpoint += 1;
                    pending.push_back((snapshot, model.clone()));
                }
                Op::Resolve => check_oldest(&mut pending),
            }
        }
        while !pending.is_empty() {
            check_oldest(&mut pending);
        }
        for k in 0..=u8::MAX {
            let got = backend.get(s, &cell(&[k])).expect("get").map(<[u8]>::to_vec);
            proptest::prop_assert_eq!(got, model.get(&k).cloned(), "key {} at the end", k);
        }
    }
}
