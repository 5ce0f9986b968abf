//! Per-record keyed state access: one "record" is a read-modify-write of a `(count, sum)` cell
//! (postcard `(u64, u64)`) for a key drawn uniformly from 1M keys, as a keyed count+sum job does.
//!
//! - `rocksdb_raw`: the `rocksdb` crate directly, on the backend's layout (one DB, one column
//!   family, WAL off, keys from `encode_state_key`, 256 MiB block cache): the ceiling a job
//!   on RocksDB without a write-back cache is compared against.
//! - `rocksdb_backend/*`: `RocksDbStateBackend` through the trait, with its write-back cache; with
//!   512 MiB of managed memory every key fits the cache, with 64 MiB it evicts (and spills);
//!   `…_zipf1.1` draws the keys from a Zipf distribution (exponent 1.1) instead, where keeping
//!   the hot keys cached is what counts.
//! - `heap_backend`: `HeapStateBackend` through the trait.
//!
//! Run with `cargo bench --bench state_access`; each benchmark takes a few seconds.

// `criterion_group!` generates an undocumented `pub fn`.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rocksdb::{BlockBasedOptions, Cache, ColumnFamilyDescriptor, Options, WriteBatch, DB};
use std::hint::black_box;
use std::time::Duration;
use weir_state::encoding::encode_state_key;
use weir_state::{
    BackendScope, HeapStateBackend, KeyedStateBackend, StateDescriptor, StateId, StateKey,
    StateKind,
};
use weir_state_rocksdb::RocksDbStateBackendFactory;
use weir_types::{key_group_for_key_bytes, KeyGroup, KeyGroupRange, OperatorUid, SubtaskIndex};

const KEYS: u64 = 1_000_000;
const MAX_PARALLELISM: u32 = 128;
const ALL_KEY_GROUPS: KeyGroupRange = KeyGroupRange { start: 0, end: 127 };

/// A key stream: xorshift64* (uniform), or Zipf ranks drawn from a counter.
enum Keys {
    Uniform(u64),
    Zipf(weir::connectors::Zipf, u64),
}

impl Keys {
    fn uniform() -> Self {
        Keys::Uniform(0x1234_5678)
    }

    fn zipf(s: f64) -> Self {
        Keys::Zipf(weir::connectors::Zipf::new(KEYS, s).expect("zipf"), 0)
    }

    fn next(&mut self) -> u64 {
        match self {
            Keys::Uniform(x) => {
                *x ^= *x >> 12;
                *x ^= *x << 25;
                *x ^= *x >> 27;
                x.wrapping_mul(0x2545_F491_4F6C_DD1D) % KEYS
            }
            Keys::Zipf(z, seq) => {
                *seq += 1;
                z.sample(0x1234_5678, *seq) - 1
            }
        }
    }
}

/// A key's serialised bytes (postcard varint of the u64) and key group.
fn key_bytes(k: u64, out: &mut Vec<u8>) -> KeyGroup {
    out.clear();
    put_varint(out, k);
    key_group_for_key_bytes(out, MAX_PARALLELISM)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn take_varint(bytes: &mut &[u8]) -> u64 {
    let mut v = 0u64;
    for (i, &b) in bytes.iter().enumerate() {
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            *bytes = &bytes[i + 1..];
            return v;
        }
    }
    *bytes = &[];
    v
}

/// The record's work on the cell: decode `(count, sum)` (postcard), add one and `x`, encode.
fn update(old: Option<&[u8]>, x: u64, out: &mut Vec<u8>) {
    let (count, sum) = match old {
        Some(mut bytes) => (take_varint(&mut bytes), take_varint(&mut bytes)),
        None => (0, 0),
    };
    out.clear();
    put_varint(out, count + 1);
    put_varint(out, sum + x);
}

fn rocksdb_raw(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let cache = Cache::new_lru_cache(256 << 20);
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(&cache);
    table.set_cache_index_and_filter_blocks(true);
    table.set_bloom_filter(10.0, false);
    let mut cf_opts = Options::default();
    cf_opts.set_block_based_table_factory(&table);
    cf_opts.set_write_buffer_size(32 << 20);
    cf_opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
    let mut db_opts = cf_opts.clone();
    db_opts.create_if_missing(true);
    db_opts.create_missing_column_families(true);
    let db = DB::open_cf_descriptors(
        &db_opts,
        dir.path(),
        [ColumnFamilyDescriptor::new("counts", cf_opts)],
    )
    .expect("open");
    let cf = db.cf_handle("counts").expect("cf");
    let mut write = rocksdb::WriteOptions::default();
    write.disable_wal(true);

    let (mut key, mut encoded, mut value) = (Vec::new(), Vec::new(), Vec::new());
    let mut batch = WriteBatch::default();
    for k in 0..KEYS {
        encode(k, &mut key, &mut encoded);
        update(None, k, &mut value);
        batch.put_cf(cf, &encoded, &value);
        if batch.len() == 10_000 {
            db.write_opt(std::mem::take(&mut batch), &write)
                .expect("write");
        }
    }
    db.write_opt(batch, &write).expect("write");

    let mut group = c.benchmark_group("state_access");
    configure(&mut group);
    let mut keys = Keys::uniform();
    group.bench_function("rocksdb_raw", |b| {
        b.iter(|| {
            let k = keys.next();
            encode(k, &mut key, &mut encoded);
            let old = db.get_pinned_cf(cf, &encoded).expect("get");
            update(old.as_deref(), k, &mut value);
            drop(old);
            db.put_cf_opt(cf, &encoded, &value, &write).expect("put");
        })
    });
    group.finish();
}

/// Encodes key `k`'s cell as the backend would, into `encoded` (`key` is scratch).
fn encode(k: u64, key: &mut Vec<u8>, encoded: &mut Vec<u8>) {
    let kg = key_bytes(k, key);
    encoded.clear();
    let cell = StateKey {
        key_group: kg,
        key: &key[..],
        namespace: b"",
        user_key: b"",
    };
    encode_state_key(encoded, &cell);
}

/// Read-modify-write of one cell through the trait.
fn record(
    backend: &mut dyn KeyedStateBackend,
    s: StateId,
    keys: &mut Keys,
    key: &mut Vec<u8>,
    value: &mut Vec<u8>,
) {
    let k = keys.next();
    let kg = key_bytes(k, key);
    let cell = StateKey {
        key_group: kg,
        key: &key[..],
        namespace: b"",
        user_key: b"",
    };
    let old = backend.get(s, &cell).expect("get");
    update(old, k, value);
    backend.put(s, &cell, value).expect("put");
}

fn populate(backend: &mut dyn KeyedStateBackend) -> StateId {
    let s = backend
        .register(&StateDescriptor {
            name: "counts".into(),
            kind: StateKind::Value,
        })
        .expect("register");
    let (mut key, mut value) = (Vec::new(), Vec::new());
    for k in 0..KEYS {
        let kg = key_bytes(k, &mut key);
        let cell = StateKey {
            key_group: kg,
            key: &key,
            namespace: b"",
            user_key: b"",
        };
        update(None, k, &mut value);
        backend.put(s, &cell, &value).expect("put");
    }
    backend.flush().expect("flush");
    s
}

fn rocksdb_backend(c: &mut Criterion) {
    for (label, managed, zipf) in [
        ("cache_fits_512MiB", 512u64 << 20, None),
        ("cache_spills_64MiB", 64 << 20, None),
        ("cache_spills_64MiB_zipf1.1", 64 << 20, Some(1.1)),
    ] {
        let dir = tempfile::tempdir().expect("temp dir");
        let factory = RocksDbStateBackendFactory::new(dir.path(), managed).expect("factory");
        let scope = BackendScope {
            operator_uid: OperatorUid::new("bench").expect("uid"),
            subtask: SubtaskIndex(0),
            parallelism: 1,
            max_parallelism: MAX_PARALLELISM,
            key_group_range: ALL_KEY_GROUPS,
            keyed_subtasks_in_process: 1,
        };
        let mut backend = factory.open(&scope).expect("open");
        let s = populate(&mut backend);
        let mut group = c.benchmark_group("state_access");
        configure(&mut group);
        let mut keys = zipf.map_or_else(Keys::uniform, Keys::zipf);
        let (mut key, mut value) = (Vec::new(), Vec::new());
        group.bench_function(format!("rocksdb_backend/{label}"), |b| {
            b.iter(|| record(&mut backend, s, &mut keys, &mut key, &mut value))
        });
        group.finish();
        black_box(backend.spill_count());
    }
}

fn heap_backend(c: &mut Criterion) {
    let mut backend = HeapStateBackend::new(ALL_KEY_GROUPS);
    let s = populate(&mut backend);
    let mut group = c.benchmark_group("state_access");
    configure(&mut group);
    let (mut keys, mut key, mut value) = (Keys::uniform(), Vec::new(), Vec::new());
    group.bench_function("heap_backend", |b| {
        b.iter(|| record(&mut backend, s, &mut keys, &mut key, &mut value))
    });
    group.finish();
}

fn configure(group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Elements(1));
}

criterion_group!(benches, rocksdb_raw, rocksdb_backend, heap_backend);
criterion_main!(benches);
