//! The canonical savepoint format on one core: writing a keyed subtask's state as a canonical
//! file (`weir_state::canonical::write_from`, what a canonical savepoint does with each
//! subtask's snapshot) and restoring one into a fresh backend (`restore_into`).
//!
//! The state: 100,000 keys, each with a `(count, sum)` value and 1,000 bytes of padding (about
//! 100 MiB), on the RocksDB backend — the shape of `weir bench keyed-agg --padding 1000`.
//! Throughput is in bytes of the canonical file.
//!
//! Run with `cargo bench --bench canonical`.

// `criterion_group!` generates an undocumented `pub fn`.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::time::Duration;
use weir_state::canonical::{restore_into, write_from, CanonicalFile};
use weir_state::{
    BackendScope, HeapStateBackendFactory, KeyedStateBackend, StateBackendFactory, StateDescriptor,
    StateKey, StateKind,
};
use weir_state_rocksdb::RocksDbStateBackendFactory;
use weir_types::{key_group_for_key_bytes, KeyGroupRange, OperatorUid, SubtaskIndex};

const KEYS: u64 = 100_000;
const PADDING: usize = 1000;
const MAX_PARALLELISM: u32 = 128;

fn scope(subtask: u32) -> BackendScope {
    BackendScope {
        operator_uid: OperatorUid::new("aggregate").expect("uid"),
        subtask: SubtaskIndex(subtask),
        parallelism: 1,
        max_parallelism: MAX_PARALLELISM,
        key_group_range: KeyGroupRange { start: 0, end: 127 },
        keyed_subtasks_in_process: 1,
    }
}

fn descriptor(name: &str) -> StateDescriptor {
    StateDescriptor {
        name: name.into(),
        kind: StateKind::Value,
    }
}

/// A backend holding `KEYS` keys' count-sum and padding.
fn filled(factory: &dyn StateBackendFactory) -> Box<dyn KeyedStateBackend> {
    let mut b = factory.create(&scope(0)).expect("backend");
    let count = b.register(&descriptor("count-sum")).expect("state");
    let pad = b.register(&descriptor("padding")).expect("state");
    let padding: Vec<u8> = (0..PADDING).map(|i| (i * 131 % 251) as u8).collect();
    for k in 0..KEYS {
        let key = postcard::to_stdvec(&k).expect("key");
        let cell = StateKey {
            key_group: key_group_for_key_bytes(&key, MAX_PARALLELISM),
            key: &key,
            namespace: b"",
            user_key: b"",
        };
        b.put(
            count,
            &cell,
            &postcard::to_stdvec(&(k, k * 3)).expect("value"),
        )
        .expect("put");
        b.put(pad, &cell, &padding).expect("put");
    }
    b.flush().expect("flush");
    b
}

fn canonical(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let rocksdb = RocksDbStateBackendFactory::new(dir.path(), 512 << 20).expect("factory");
    let mut source = filled(&rocksdb);
    let bytes = write_from(&mut *source).expect("canonical");
    let mut group = c.benchmark_group("canonical");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(15));
    group.throughput(Throughput::Bytes(bytes.len() as u64));
    group.bench_function("write_from_rocksdb", |b| {
        b.iter(|| write_from(&mut *source).expect("canonical").len())
    });
    let mut next = 1;
    group.bench_function("restore_into_rocksdb", |b| {
        b.iter(|| {
            let file = CanonicalFile::parse(&bytes).expect("parse");
            let mut fresh = rocksdb.create(&scope(next)).expect("backend");
            next += 1;
            restore_into(&mut *fresh, &file).expect("restore");
            fresh.flush().expect("flush");
        })
    });
    let heap = HeapStateBackendFactory::new();
    group.bench_function("restore_into_heap", |b| {
        b.iter(|| {
            let file = CanonicalFile::parse(&bytes).expect("parse");
            let mut fresh = heap.create(&scope(0)).expect("backend");
            restore_into(&mut *fresh, &file).expect("restore")
        })
    });
    group.finish();
}

criterion_group!(benches, canonical);
criterion_main!(benches);
