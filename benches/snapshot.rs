//! The synchronous part of a snapshot (DESIGN.md §5, step 3): `snapshot()` of a RocksDB or a heap
//! backend holding 1M keys of `(count, sum)` cells (postcard `(u64, u64)`), with 512 MiB of
//! managed memory for RocksDB (every key fits the write-back cache), when 1% or 100% of the keys
//! were updated since the previous snapshot.
//!
//! Only `snapshot()` is timed: the task's pause. For RocksDB it is the freeze of the write-back
//! cache (one pointer swap per state); for the heap backend, the freeze of each segment written
//! since the last snapshot (a move behind an `Arc`). The background part — RocksDB: writing the
//! frozen dirty entries, the memtable flush and the hard links of the native checkpoint; heap:
//! serialising the frozen segments — is resolved outside the timing, as are the updates before
//! it and removing the snapshot directory. After each case, one line on stderr gives the last
//! snapshot's files and how many shareable bytes were new (what an incremental upload would
//! send).
//!
//! Run with `cargo bench --bench snapshot` (under a minute).

// `criterion_group!` generates an undocumented `pub fn`.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use weir_state::{
    BackendScope, HeapStateBackend, KeyedStateBackend, LocalSnapshot, SnapshotContent,
    StateDescriptor, StateId, StateKey, StateKind,
};
use weir_state_rocksdb::RocksDbStateBackendFactory;
use weir_types::{
    key_group_for_key_bytes, CheckpointId, KeyGroup, KeyGroupRange, OperatorUid, SubtaskIndex,
};

const KEYS: u64 = 1_000_000;
const MAX_PARALLELISM: u32 = 128;
const MANAGED_MEMORY_BYTES: u64 = 512 << 20;

/// xorshift64*: which keys a 1% round updates.
struct Keys(u64);

impl Keys {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % KEYS
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Stores `(round, k + round)` at key `k` (postcard varints, as the typed handles would).
fn update(backend: &mut dyn KeyedStateBackend, s: StateId, k: u64, round: u64, buf: &mut Bufs) {
    buf.key.clear();
    put_varint(&mut buf.key, k);
    let key_group: KeyGroup = key_group_for_key_bytes(&buf.key, MAX_PARALLELISM);
    buf.value.clear();
    put_varint(&mut buf.value, round);
    put_varint(&mut buf.value, k + round);
    let cell = StateKey {
        key_group,
        key: &buf.key,
        namespace: b"",
        user_key: b"",
    };
    backend.put(s, &cell, &buf.value).expect("put");
}

#[derive(Default)]
struct Bufs {
    key: Vec<u8>,
    value: Vec<u8>,
}

/// A backend and what the next round needs.
struct Case {
    backend: Box<dyn KeyedStateBackend>,
    state: StateId,
    next_checkpoint: u64,
    keys: Keys,
    bufs: Bufs,
    /// SST names of the previous snapshot.
    previous: BTreeSet<String>,
    /// The last snapshot's `(files, SST bytes, new SST bytes)`.
    last: (usize, u64, u64),
}

impl Case {
    fn new(mut backend: Box<dyn KeyedStateBackend>) -> Self {
        let state = backend
            .register(&StateDescriptor {
                name: "counts".into(),
                kind: StateKind::Value,
            })
            .expect("register");
        let mut case = Self {
            backend,
            state,
            next_checkpoint: 1,
            keys: Keys(0x1234_5678),
            bufs: Bufs::default(),
            previous: BTreeSet::new(),
            last: (0, 0, 0),
        };
        for k in 0..KEYS {
            update(&mut *case.backend, state, k, 0, &mut case.bufs);
        }
        case.snapshot_and_discard();
        case
    }

    /// Updates every key (`every_key`) or 1% of them, drawn at random.
    fn update_round(&mut self, every_key: bool) {
        let round = self.next_checkpoint;
        if every_key {
            for k in 0..KEYS {
                update(&mut *self.backend, self.state, k, round, &mut self.bufs);
            }
        } else {
            for _ in 0..KEYS / 100 {
                let k = self.keys.next();
                update(&mut *self.backend, self.state, k, round, &mut self.bufs);
            }
        }
    }

    /// Takes the next snapshot; returns how long `snapshot()` took.
    fn snapshot_and_discard(&mut self) -> Duration {
        let checkpoint = CheckpointId(self.next_checkpoint);
        self.next_checkpoint += 1;
        let started = Instant::now();
        let snapshot = self.backend.snapshot(checkpoint).expect("snapshot");
        let took = started.elapsed();
        // The background part is not the task's pause.
        let snapshot = snapshot.resolve().expect("the snapshot's background part");
        self.account(&snapshot);
        if let Some(dir) = &snapshot.cleanup_dir {
            std::fs::remove_dir_all(dir).expect("cleanup");
        }
        took
    }

    fn account(&mut self, snapshot: &LocalSnapshot) {
        let mut ssts = BTreeSet::new();
        let (mut sst_bytes, mut new_bytes) = (0, 0);
        for f in snapshot.files.iter().filter(|f| f.shareable) {
            let len = match &f.content {
                SnapshotContent::Path(p) => std::fs::metadata(p).expect("stat").len(),
                SnapshotContent::Shared(bytes) => bytes.len() as u64,
                SnapshotContent::Bytes(bytes) => bytes.len() as u64,
            };
            sst_bytes += len;
            if !self.previous.contains(&f.name) {
                new_bytes += len;
            }
            ssts.insert(f.name.clone());
        }
        self.last = (snapshot.files.len(), sst_bytes, new_bytes);
        self.previous = ssts;
    }
}

const RANGE: KeyGroupRange = KeyGroupRange { start: 0, end: 127 };

fn rocksdb_snapshot(c: &mut Criterion) {
    for (label, every_key) in [("updated_1pct", false), ("updated_100pct", true)] {
        let dir = tempfile::tempdir().expect("temp dir");
        let factory =
            RocksDbStateBackendFactory::new(dir.path(), MANAGED_MEMORY_BYTES).expect("factory");
        let scope = BackendScope {
            operator_uid: OperatorUid::new("bench").expect("uid"),
            subtask: SubtaskIndex(0),
            parallelism: 1,
            max_parallelism: MAX_PARALLELISM,
            key_group_range: RANGE,
            keyed_subtasks_in_process: 1,
        };
        let case = Case::new(Box::new(factory.open(&scope).expect("open")));
        run_case(c, "rocksdb_snapshot_1M_keys", label, every_key, case);
    }
}

fn heap_snapshot(c: &mut Criterion) {
    for (label, every_key) in [("updated_1pct", false), ("updated_100pct", true)] {
        let case = Case::new(Box::new(HeapStateBackend::new(RANGE)));
        run_case(c, "heap_snapshot_1M_keys", label, every_key, case);
    }
}

fn run_case(c: &mut Criterion, name: &str, label: &str, every_key: bool, mut case: Case) {
    {
        let mut group = c.benchmark_group(name);
        group
            .sampling_mode(SamplingMode::Flat)
            .sample_size(10)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(if every_key { 10 } else { 3 }));
        group.bench_function(label, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    case.update_round(every_key);
                    total += case.snapshot_and_discard();
                }
                total
            })
        });
        group.finish();
        let (files, sst_bytes, new_bytes) = case.last;
        eprintln!(
            "{name}/{label}: last snapshot {files} files, {:.1} MiB shareable, {:.1} MiB new",
            sst_bytes as f64 / f64::from(1 << 20),
            new_bytes as f64 / f64::from(1 << 20),
        );
    }
}

criterion_group!(benches, rocksdb_snapshot, heap_snapshot);
criterion_main!(benches);
