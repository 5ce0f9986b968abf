//! The conformance suite every [`KeyedStateBackend`] must pass: one check per guarantee written
//! in the trait's docs, plus the typed handles of [`crate::handles`] round-tripping through it.
//!
//! Each check is a `pub fn` that takes a [`BackendFactory`] (a closure that opens a fresh, empty
//! backend owning a given key-group range) and panics on failure, naming the backend. Run them
//! all with [`run_all`], or — better, so each shows up by name — expand
//! [`conformance_tests!`](crate::conformance_tests) inside a test module:
//!
//! ```
//! mod heap_conformance {
//!     weir_state::conformance_tests!(|range| Box::new(weir_state::HeapStateBackend::new(range)));
//! }
//! ```
//!
//! The snapshot checks ([`SNAPSHOT_CHECKS`]) need a [`StateBackendFactory`], since they restore
//! backends too; expand [`snapshot_conformance_tests!`](crate::snapshot_conformance_tests) for
//! them. They copy each snapshot's files into a temporary directory, as an upload and a
//! download would, and remove its cleanup directory, as the uploader does.
//!
//! The suite lives in the library (not behind `cfg(test)`) so other backend crates can run it.
//! Some checks write [`MANY_KEYS`] keys so that a backend with a bounded write-back cache (the
//! RocksDB backend) must spill it mid-way; give such a backend a small memory budget.

use crate::encoding::encode_state_key;
use crate::{
    BackendScope, KeyedScope, KeyedStateBackend, LocalSnapshot, RestoredSnapshot, SnapshotContent,
    StateBackendFactory, StateDescriptor, StateError, StateId, StateKey, StateKind, StateRegistry,
};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use weir_types::{CheckpointId, KeyGroup, KeyGroupRange, OperatorUid, SubtaskIndex};

/// Opens a fresh, empty backend owning the given key groups.
pub type BackendFactory = dyn Fn(KeyGroupRange) -> Box<dyn KeyedStateBackend>;

/// One check of the suite.
pub type Check = fn(&BackendFactory);

/// How many keys the "many keys" checks write: enough to overflow a write-back cache of a few
/// MiB, so a caching backend has to spill while reads and writes go on.
pub const MANY_KEYS: u32 = 60_000;

/// Every check, by name, in the order [`run_all`] runs them.
pub const ALL: &[(&str, Check)] = &[
    (
        "the_backend_reports_its_name_and_key_group_range",
        the_backend_reports_its_name_and_key_group_range,
    ),
    (
        "a_get_of_a_missing_key_is_none",
        a_get_of_a_missing_key_is_none,
    ),
    ("a_get_sees_the_latest_put", a_get_sees_the_latest_put),
    (
        "a_get_sees_the_latest_put_after_a_flush",
        a_get_sees_the_latest_put_after_a_flush,
    ),
    (
        "a_put_replaces_the_previous_value",
        a_put_replaces_the_previous_value,
    ),
    (
        "an_empty_value_is_stored_and_differs_from_a_missing_one",
        an_empty_value_is_stored_and_differs_from_a_missing_one,
    ),
    (
        "a_deleted_key_reads_as_missing",
        a_deleted_key_reads_as_missing,
    ),
    (
        "deleting_a_missing_key_is_not_an_error",
        deleting_a_missing_key_is_not_an_error,
    ),
    (
        "reads_see_writes_across_many_keys",
        reads_see_writes_across_many_keys,
    ),
    (
        "reads_see_overwrites_and_deletes_across_many_keys",
        reads_see_overwrites_and_deletes_across_many_keys,
    ),
    (
        "states_never_see_each_others_entries",
        states_never_see_each_others_entries,
    ),
    (
        "namespaces_never_see_each_others_entries",
        namespaces_never_see_each_others_entries,
    ),
    (
        "keys_whose_bytes_prefix_each_other_are_distinct",
        keys_whose_bytes_prefix_each_other_are_distinct,
    ),
    (
        "the_same_key_in_two_key_groups_is_two_entries",
        the_same_key_in_two_key_groups_is_two_entries,
    ),
    (
        "prefix_for_each_visits_user_keys_in_ascending_order",
        prefix_for_each_visits_user_keys_in_ascending_order,
    ),
    (
        "prefix_for_each_visits_exactly_the_given_prefix",
        prefix_for_each_visits_exactly_the_given_prefix,
    ),
    (
        "prefix_for_each_sees_unflushed_writes_and_deletes",
        prefix_for_each_sees_unflushed_writes_and_deletes,
    ),
    (
        "prefix_for_each_returns_the_visitors_error",
        prefix_for_each_returns_the_visitors_error,
    ),
    (
        "prefix_for_each_on_a_value_state_visits_its_one_cell",
        prefix_for_each_on_a_value_state_visits_its_one_cell,
    ),
    (
        "delete_prefix_removes_exactly_that_prefix",
        delete_prefix_removes_exactly_that_prefix,
    ),
    (
        "delete_prefix_removes_entries_already_read_or_flushed",
        delete_prefix_removes_entries_already_read_or_flushed,
    ),
    (
        "scan_visits_entries_in_ascending_encoded_key_order_across_key_groups",
        scan_visits_entries_in_ascending_encoded_key_order_across_key_groups,
    ),
    (
        "scan_sees_unflushed_writes_and_deletes",
        scan_sees_unflushed_writes_and_deletes,
    ),
    (
        "scan_of_an_empty_state_visits_nothing",
        scan_of_an_empty_state_visits_nothing,
    ),
    (
        "a_key_group_outside_the_range_is_refused_and_never_stored",
        a_key_group_outside_the_range_is_refused_and_never_stored,
    ),
    (
        "registering_the_same_name_and_kind_returns_the_same_id",
        registering_the_same_name_and_kind_returns_the_same_id,
    ),
    (
        "registering_a_known_name_with_another_kind_is_a_kind_mismatch",
        registering_a_known_name_with_another_kind_is_a_kind_mismatch,
    ),
    (
        "descriptors_are_listed_in_registration_order",
        descriptors_are_listed_in_registration_order,
    ),
    (
        "an_unknown_state_id_is_refused",
        an_unknown_state_id_is_refused,
    ),
    (
        "a_user_key_on_a_non_map_state_is_refused",
        a_user_key_on_a_non_map_state_is_refused,
    ),
    (
        "a_flush_changes_nothing_that_reads_see",
        a_flush_changes_nothing_that_reads_see,
    ),
    (
        "size_bytes_accounts_for_the_state_written",
        size_bytes_accounts_for_the_state_written,
    ),
    (
        "value_state_round_trips_through_the_typed_handle",
        value_state_round_trips_through_the_typed_handle,
    ),
    (
        "list_state_round_trips_through_the_typed_handle",
        list_state_round_trips_through_the_typed_handle,
    ),
    (
        "map_state_round_trips_through_the_typed_handle",
        map_state_round_trips_through_the_typed_handle,
    ),
    (
        "reducing_state_round_trips_through_the_typed_handle",
        reducing_state_round_trips_through_the_typed_handle,
    ),
    (
        "typed_handles_keep_keys_and_namespaces_apart",
        typed_handles_keep_keys_and_namespaces_apart,
    ),
];

/// Runs every check in [`ALL`] against backends from `factory`; panics at the first failure.
pub fn run_all(factory: &BackendFactory) {
    for (_, check) in ALL {
        check(factory);
    }
}

/// Expands to one `#[test]` per conformance check, each named after the check, running it on
/// backends made by `$factory` (an expression usable as a [`BackendFactory`], typically a
/// closure `|range| Box::new(..)`), plus a test that the expansion covers [`ALL`].
#[macro_export]
macro_rules! conformance_tests {
    ($factory:expr) => {
        $crate::conformance_tests!(@each ($factory)
            the_backend_reports_its_name_and_key_group_range,
            a_get_of_a_missing_key_is_none,
            a_get_sees_the_latest_put,
            a_get_sees_the_latest_put_after_a_flush,
            a_put_replaces_the_previous_value,
            an_empty_value_is_stored_and_differs_from_a_missing_one,
            a_deleted_key_reads_as_missing,
            deleting_a_missing_key_is_not_an_error,
            reads_see_writes_across_many_keys,
            reads_see_overwrites_and_deletes_across_many_keys,
            states_never_see_each_others_entries,
            namespaces_never_see_each_others_entries,
            keys_whose_bytes_prefix_each_other_are_distinct,
            the_same_key_in_two_key_groups_is_two_entries,
            prefix_for_each_visits_user_keys_in_ascending_order,
            prefix_for_each_visits_exactly_the_given_prefix,
            prefix_for_each_sees_unflushed_writes_and_deletes,
            prefix_for_each_returns_the_visitors_error,
            prefix_for_each_on_a_value_state_visits_its_one_cell,
            delete_prefix_removes_exactly_that_prefix,
            delete_prefix_removes_entries_already_read_or_flushed,
            scan_visits_entries_in_ascending_encoded_key_order_across_key_groups,
            scan_sees_unflushed_writes_and_deletes,
            scan_of_an_empty_state_visits_nothing,
            a_key_group_outside_the_range_is_refused_and_never_stored,
            registering_the_same_name_and_kind_returns_the_same_id,
            registering_a_known_name_with_another_kind_is_a_kind_mismatch,
            descriptors_are_listed_in_registration_order,
            an_unknown_state_id_is_refused,
            a_user_key_on_a_non_map_state_is_refused,
            a_flush_changes_nothing_that_reads_see,
            size_bytes_accounts_for_the_state_written,
            value_state_round_trips_through_the_typed_handle,
            list_state_round_trips_through_the_typed_handle,
            map_state_round_trips_through_the_typed_handle,
            reducing_state_round_trips_through_the_typed_handle,
            typed_handles_keep_keys_and_namespaces_apart,
        );
    };
    (@each ($factory:expr) $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                $crate::conformance::$name(&$factory);
            }
        )*

        #[test]
        fn the_conformance_tests_cover_every_check() {
            let expanded: ::std::vec::Vec<&str> = ::std::vec![$(stringify!($name)),*];
            let all: ::std::vec::Vec<&str> =
                $crate::conformance::ALL.iter().map(|(name, _)| *name).collect();
            assert_eq!(expanded, all);
        }
    };
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// The key groups every check's backend owns: neither the first nor the last, so keys on both
/// sides of the range can be refused.
const RANGE: KeyGroupRange = KeyGroupRange { start: 10, end: 19 };

fn open(factory: &BackendFactory) -> Box<dyn KeyedStateBackend> {
    factory(RANGE)
}

fn register(b: &mut dyn KeyedStateBackend, name: &str, kind: StateKind) -> StateId {
    let name = name.to_string();
    b.register(&StateDescriptor { name, kind })
        .unwrap_or_else(|e| panic!("{}: register: {e}", b.name()))
}

fn cell(kg: u16, key: &[u8]) -> StateKey<'_> {
    StateKey {
        key_group: KeyGroup(kg),
        key,
        namespace: b"",
        user_key: b"",
    }
}

fn in_ns<'a>(kg: u16, key: &'a [u8], namespace: &'a [u8]) -> StateKey<'a> {
    StateKey {
        key_group: KeyGroup(kg),
        key,
        namespace,
        user_key: b"",
    }
}

fn entry<'a>(kg: u16, key: &'a [u8], namespace: &'a [u8], user_key: &'a [u8]) -> StateKey<'a> {
    StateKey {
        key_group: KeyGroup(kg),
        key,
        namespace,
        user_key,
    }
}

fn get(b: &mut dyn KeyedStateBackend, s: StateId, k: &StateKey<'_>) -> Option<Vec<u8>> {
    let name = b.name();
    b.get(s, k)
        .unwrap_or_else(|e| panic!("{name}: get {k:?}: {e}"))
        .map(<[u8]>::to_vec)
}

fn put(b: &mut dyn KeyedStateBackend, s: StateId, k: &StateKey<'_>, v: &[u8]) {
    let name = b.name();
    b.put(s, k, v)
        .unwrap_or_else(|e| panic!("{name}: put {k:?}: {e}"));
}

fn delete(b: &mut dyn KeyedStateBackend, s: StateId, k: &StateKey<'_>) {
    let name = b.name();
    b.delete(s, k)
        .unwrap_or_else(|e| panic!("{name}: delete {k:?}: {e}"));
}

fn flush(b: &mut dyn KeyedStateBackend) {
    let name = b.name();
    b.flush().unwrap_or_else(|e| panic!("{name}: flush: {e}"));
}

/// `(user_key, value)` pairs under `prefix`, in visiting order.
fn under(
    b: &mut dyn KeyedStateBackend,
    s: StateId,
    prefix: &StateKey<'_>,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    let name = b.name();
    let mut out = Vec::new();
    b.prefix_for_each(s, prefix, &mut |uk, v| {
        out.push((uk.to_vec(), v.to_vec()));
        Ok(())
    })
    .unwrap_or_else(|e| panic!("{name}: prefix_for_each {prefix:?}: {e}"));
    out
}

/// `(encoded key, value)` pairs of `s`, in visiting order.
fn scanned(b: &mut dyn KeyedStateBackend, s: StateId) -> Vec<(Vec<u8>, Vec<u8>)> {
    let name = b.name();
    let mut out = Vec::new();
    b.scan(s, &mut |e| {
        let mut k = Vec::new();
        encode_state_key(&mut k, &e.key);
        out.push((k, e.value.to_vec()));
        Ok(())
    })
    .unwrap_or_else(|e| panic!("{name}: scan: {e}"));
    out
}

fn encoded(k: &StateKey<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    encode_state_key(&mut out, k);
    out
}

/// A small deterministic generator (SplitMix64), so checks need no `rand`.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The key group the many-keys checks put key `i` in.
fn kg_of(i: u32) -> u16 {
    RANGE.start + (i % RANGE.len()) as u16
}

/// A value for key `i` in round `round`, of varying length (8..40 bytes).
fn value_of(i: u32, round: u32) -> Vec<u8> {
    let len = 8 + (i.wrapping_mul(7).wrapping_add(round) % 32) as usize;
    let mut v = Vec::with_capacity(len);
    let seed = (u64::from(i) << 32) | u64::from(round);
    let mut rng = Rng(seed);
    while v.len() < len {
        v.extend_from_slice(&rng.next().to_le_bytes());
    }
    v.truncate(len);
    v
}

fn is_out_of_range(r: Result<(), StateError>) -> bool {
    matches!(r, Err(StateError::KeyGroupOutOfRange { .. }))
}

// ---------------------------------------------------------------------------------------------
// Basics
// ---------------------------------------------------------------------------------------------

/// `name()` is non-empty and `key_group_range()` is the range the backend was opened with.
pub fn the_backend_reports_its_name_and_key_group_range(factory: &BackendFactory) {
    let b = open(factory);
    assert!(!b.name().is_empty());
    assert_eq!(b.key_group_range(), RANGE, "{}", b.name());
}

/// A key never written reads as `None`.
pub fn a_get_of_a_missing_key_is_none(factory: &BackendFactory) {
    let mut b = open(factory);
    let s = register(&mut *b, "s", StateKind::Value);
    assert_eq!(get(&mut *b, s, &cell(10, b"nobody")), None, "{}", b.name());
    // Twice: a cached absence must still read as absence.
    assert_eq!(get(&mut *b, s, &cell(10, b"nobody")), None, "{}", b.name());
}

/// Read-your-writes without any flush.
pub fn a_get_sees_the_latest_put(factory: &BackendFactory) {
    let mut b = open(factory);
    let s = register(&mut *b, "s", StateKind::Value);
    put(&mut *b, s, &cell(11, b"k"), b"v1");
    assert_eq!(
        get(&mut *b, s, &cell(11, b"k")).as_deref(),
        Some(&b"v1"[..])
    );
    put(&mut *b, s, &cell(11, b"k"), b"v2");
    assert_eq!(
        get(&mut *b, s, &cell(11, b"k")).as_deref(),
        Some(&b"v2"[..])
    );
}

/// Read-your-writes across a flush, and writes after the flush win over flushed ones.
pub fn a_get_sees_the_latest_put_after_a_flush(factory: &BackendFactory) {
    let mut b = open(factory);
    let s = register(&mut *b, "s", StateKind::Value);
    put(&mut *b, s, &cell(12, b"k"), b"before");
    flush(&mut *b);
    assert_eq!(
        get(&mut *b, s, &cell(12, b"k")).as_deref(),
        Some(&b"before"[..])
    );
    put(&mut *b, s, &cell(12, b"k"), b"after");
    assert_eq!(
        get(&mut *b, s, &cell(12, b"k")).as_deref(),
        Some(&b"after"[..])
    );
    flush(&mut *b);
    assert_eq!(
        get(&mut *b, s, &cell(12, b"k")).as_deref(),
        Some(&b"after"[..])
    );
}

/// A put replaces the value whatever the lengths of the old and new values.
pub fn a_put_replaces_the_previous_value(factory: &BackendFactory) {
    let mut b = open(factory);
    let s = register(&mut *b, "s", StateKind::Value);
    let k = cell(13, b"k");
    for v in [&b"same"[..], b"SAME", b"much longer than before", b"x", b""] {
        put(&mut *b, s, &k, v);
        assert_eq!(get(&mut *b, s, &k).as_deref(), Some(v), "{}", b.name());
    }
}

/// An empty value is a value: it reads back as `Some(&[])`, not as missing, before and after a
/// flush.
pub fn an_empty_value_is_stored_and_differs_from_a_missing_one(factory: &BackendFactory) {
    let mut b = open(factory);
    let s = register(&mut *b, "s", StateKind::Value);
    put(&mut *b, s, &cell(10, b"k"), b"");
    assert_eq!(get(&mut *b, s, &cell(10, b"k")), Some(Vec::new()));
    flush(&mut *b);
    assert_eq!(get(&mut *b, s, &cell(10, b"k")), Some(Vec::new()));
    assert_eq!(scanned(&mut *b, s).len(), 1, "{}", b.name());
}

/// A delete hides the value, before and after a flush, and a later put brings a value back.
pub fn a_deleted_key_reads_as_missing(factory: &BackendFactory) {
    let mut b = open(factory);
    let s = register(&mut *b, "s", StateKind::Value);
    let k = cell(14, b"k");
    put(&mut *b, s, &k, b"v");
    delete(&mut *b, s, &k);
    assert_eq!(get(&mut *b, s, &k), None, "{}: unflushed delete", b.name());
    put(&mut *b, s, &k, b"v");
    flush(&mut *b);
    delete(&mut *b, s, &k);
    assert_eq!(
        get(&mut *b, s, &k),
        None,
        "{}: delete of a flushed value",
        b.name()
    );
    flush(&mut *b);
    assert_eq!(get(&mut *b, s, &k), None, "{}: flushed delete", b.name());
    put(&mut *b, s, &k, b"again");
    assert_eq!(get(&mut *b, s, &k).as_deref(), Some(&b"again"[..]));
}

/// Deleting what was never written (or was already deleted) succeeds and changes nothing.
pub fn deleting_a_missing_key_is_not_an_error(factory: &BackendFactory) {
    let mut b = open(factory);
    let s = register(&mut *b, "s", StateKind::Value);
    let m = register(&mut *b, "m", StateKind::Map);
    delete(&mut *b, s, &cell(15, b"never"));
    delete(&mut *b, s, &cell(15, b"never"));
    delete(&mut *b, m, &entry(15, b"never", b"", b"uk"));
    flush(&mut *b);
    assert_eq!(get(&mut *b, s, &cell(15, b"never")), None);
    assert!(scanned(&mut *b, s).is_empty(), "{}", b.name());
    assert!(scanned(&mut *b, m).is_empty(), "{}", b.name());
}

// ---------------------------------------------------------------------------------------------
// Many keys: forces a bounded write-back cache to spill mid-way
// ---------------------------------------------------------------------------------------------

/// Read-your-writes over [`MANY_KEYS`] keys: each key is read (missing), written, and read back
/// at the end, before and after a flush.
pub fn reads_see_writes_across_many_keys(factory: &BackendFactory) {
    let mut b = open(factory);
    let s = register(&mut *b, "counts", StateKind::Value);
    for i in 0..MANY_KEYS {
        let k = i.to_be_bytes();
        assert_eq!(
            get(&mut *b, s, &cell(kg_of(i), &k)),
            None,
            "{}: key {i}",
            b.name()
        );
        put(&mut *b, s, &cell(kg_of(i), &k), &value_of(i, 0));
    }
    for pass in ["unflushed", "flushed"] {
        for i in 0..MANY_KEYS {
            let k = i.to_be_bytes();
            let got = get(&mut *b, s, &cell(kg_of(i), &k));
            assert_eq!(got, Some(value_of(i, 0)), "{}: key {i} ({pass})", b.name());
        }
        flush(&mut *b);
    }
    assert_eq!(
        scanned(&mut *b, s).len(),
        MANY_KEYS as usize,
        "{}",
        b.name()
    );
}

/// Read-modify-write over [`MANY_KEYS`] keys in a shuffled order, with every third key deleted,
/// across spills and flushes: the last write (or delete) of each key is what reads see.
pub fn reads_see_overwrites_and_deletes_across_many_keys(factory: &BackendFactory) {
    let mut b = open(factory);
    let s = register(&mut *b, "sums", StateKind::Value);
    let other = register(&mut *b, "other", StateKind::Value);
    for i in 0..MANY_KEYS {
        put(
            &mut *b,
            s,
            &cell(kg_of(i), &i.to_be_bytes()),
            &value_of(i, 0),
        );
    }
    flush(&mut *b);
    let mut rng = Rng(7);
    let mut round = vec![0u32; MANY_KEYS as usize];
    let mut deleted = vec![false; MANY_KEYS as usize];
    for step in 0..2 * MANY_KEYS {
        let i = rng.below(u64::from(MANY_KEYS)) as u32;
        let k = i.to_be_bytes();
        let key = cell(kg_of(i), &k);
        let want = (!deleted[i as usize]).then(|| value_of(i, round[i as usize]));
        assert_eq!(
            get(&mut *b, s, &key),
            want,
            "{}: key {i} at step {step}",
            b.name()
        );
        if i % 3 == 0 && step % 2 == 0 {
            delete(&mut *b, s, &key);
            deleted[i as usize] = true;
        } else {
            round[i as usize] += 1;
            deleted[i as usize] = false;
            put(&mut *b, s, &key, &value_of(i, round[i as usize]));
        }
        if step == MANY_KEYS {
            flush(&mut *b);
        }
    }
    for i in 0..MANY_KEYS {
        let k = i.to_be_bytes();
        let want = (!deleted[i as usize]).then(|| value_of(i, round[i as usize]));
        assert_eq!(
            get(&mut *b, s, &cell(kg_of(i), &k)),
            want,
            "{}: key {i}",
            b.name()
        );
    }
    let live = deleted.iter().filter(|d| !**d).count();
    assert_eq!(scanned(&mut *b, s).len(), live, "{}", b.name());
    assert!(scanned(&mut *b, other).is_empty(), "{}", b.name());
}

// ---------------------------------------------------------------------------------------------
// Isolation
// ---------------------------------------------------------------------------------------------

/// Two states with the same key never see each other's entries, in point reads, deletes,
/// prefix iteration or scans.
pub fn states_never_see_each_others_entries(factory: &BackendFactory) {
    let mut b = open(factory);
    let a = register(&mut *b, "a", StateKind::Value);
    let c = register(&mut *b, "c", StateKind::Value);
    let m1 = register(&mut *b, "m1", StateKind::Map);
    let m2 = register(&mut *b, "m2", StateKind::Map);
    put(&mut *b, a, &cell(16, b"k"), b"from a");
    assert_eq!(get(&mut *b, c, &cell(16, b"k")), None, "{}", b.name());
    put(&mut *b, c, &cell(16, b"k"), b"from c");
    put(&mut *b, m1, &entry(16, b"k", b"", b"u"), b"from m1");
    flush(&mut *b);
    put(&mut *b, m2, &entry(16, b"k", b"", b"w"), b"from m2");
    assert_eq!(
        get(&mut *b, a, &cell(16, b"k")).as_deref(),
        Some(&b"from a"[..])
    );
    assert_eq!(
        get(&mut *b, c, &cell(16, b"k")).as_deref(),
        Some(&b"from c"[..])
    );
    delete(&mut *b, a, &cell(16, b"k"));
    assert_eq!(
        get(&mut *b, c, &cell(16, b"k")).as_deref(),
        Some(&b"from c"[..])
    );
    assert_eq!(
        under(&mut *b, m1, &cell(16, b"k")),
        vec![(b"u".to_vec(), b"from m1".to_vec())]
    );
    assert_eq!(
        under(&mut *b, m2, &cell(16, b"k")),
        vec![(b"w".to_vec(), b"from m2".to_vec())]
    );
    b.delete_prefix(m1, &cell(16, b"k")).expect("delete_prefix");
    assert_eq!(under(&mut *b, m2, &cell(16, b"k")).len(), 1, "{}", b.name());
    assert!(scanned(&mut *b, a).is_empty(), "{}", b.name());
    assert_eq!(scanned(&mut *b, c).len(), 1, "{}", b.name());
    assert!(scanned(&mut *b, m1).is_empty(), "{}", b.name());
    assert_eq!(scanned(&mut *b, m2).len(), 1, "{}", b.name());
}

/// The same key in two namespaces is two cells.
pub fn namespaces_never_see_each_others_entries(factory: &BackendFactory) {
    let mut b = open(factory);
    let s = register(&mut *b, "s", StateKind::Value);
    let m = register(&mut *b, "m", StateKind::Map);
    put(&mut *b, s, &in_ns(17, b"k", b"w1"), b"one");
    put(&mut *b, s, &in_ns(17, b"k", b"w2"), b"two");
    assert_eq!(get(&mut *b, s, &in_ns(17, b"k", b"")), None, "{}", b.name());
    assert_eq!(
        get(&mut *b, s, &in_ns(17, b"k", b"w1")).as_deref(),
        Some(&b"one"[..])
    );
    delete(&mut *b, s, &in_ns(17, b"k", b"w1"));
    assert_eq!(
        get(&mut *b, s, &in_ns(17, b"k", b"w2")).as_deref(),
        Some(&b"two"[..])
    );

    put(&mut *b, m, &entry(17, b"k", b"w1", b"u"), b"one");
    put(&mut *b, m, &entry(17, b"k", b"w2", b"u"), b"two");
    assert_eq!(
        under(&mut *b, m, &in_ns(17, b"k", b"w1")),
        vec![(b"u".to_vec(), b"one".to_vec())]
    );
    b.delete_prefix(m, &in_ns(17, b"k", b"w1"))
        .expect("delete_prefix");
    assert_eq!(
        under(&mut *b, m, &in_ns(17, b"k", b"w2")),
        vec![(b"u".to_vec(), b"two".to_vec())],
        "{}",
        b.name()
    );
}

/// Keys, namespaces and user keys whose bytes are prefixes of one another (`a` / `ab`, key `ab`
/// vs key `a` in namespace `b`, user key `` vs `\0`) are all distinct entries.
pub fn keys_whose_bytes_prefix_each_other_are_distinct(factory: &BackendFactory) {
    let mut b = open(factory);
    let s = register(&mut *b, "s", StateKind::Value);
    let m = register(&mut *b, "m", StateKind::Map);
    let cells = [
        in_ns(18, b"a", b""),
        in_ns(18, b"ab", b""),
        in_ns(18, b"a", b"b"),
        in_ns(18, b"", b"ab"),
        in_ns(18, b"", b""),
        in_ns(18, b"a\0", b""),
    ];
    for (i, c) in cells.iter().enumerate() {
        put(&mut *b, s, c, &[i as u8]);
    }
    for (i, c) in cells.iter().enumerate() {
        assert_eq!(
            get(&mut *b, s, c),
            Some(vec![i as u8]),
            "{}: {c:?}",
            b.name()
        );
    }
    delete(&mut *b, s, &cells[0]);
    for (i, c) in cells.iter().enumerate().skip(1) {
        assert_eq!(
            get(&mut *b, s, c),
            Some(vec![i as u8]),
            "{}: {c:?}",
            b.name()
        );
    }

    let user_keys: [&[u8]; 4] = [b"", b"\0", b"x", b"xy"];
    for (i, uk) in user_keys.iter().enumerate() {
        put(&mut *b, m, &entry(18, b"a", b"", uk), &[i as u8]);
    }
    for (i, uk) in user_keys.iter().enumerate() {
        let got = get(&mut *b, m, &entry(18, b"a", b"", uk));
        assert_eq!(got, Some(vec![i as u8]), "{}: user key {uk:?}", b.name());
    }
    assert!(
        under(&mut *b, m, &cell(18, b"ab")).is_empty(),
        "{}",
        b.name()
    );
    assert!(
        under(&mut *b, m, &in_ns(18, b"a", b"b")).is_empty(),
        "{}",
        b.name()
    );
}

/// The same key bytes in two key groups are two entries.
pub fn the_same_key_in_two_key_groups_is_two_entries(factory: &BackendFactory) {
    let mut b = open(factory);
    let s = register(&mut *b, "s", StateKind::Value);
    put(&mut *b, s, &cell(10, b"k"), b"ten");
    put(&mut *b, s, &cell(19, b"k"), b"nineteen");
    flush(&mut *b);
    assert_eq!(
        get(&mut *b, s, &cell(10, b"k")).as_deref(),
        Some(&b"ten"[..])
    );
    assert_eq!(
        get(&mut *b, s, &cell(19, b"k")).as_deref(),
        Some(&b"nineteen"[..])
    );
    delete(&mut *b, s, &cell(10, b"k"));
    assert_eq!(
        get(&mut *b, s, &cell(19, b"k")).as_deref(),
        Some(&b"nineteen"[..])
    );
    assert_eq!(get(&mut *b, s, &cell(11, b"k")), None, "{}", b.name());
}

// ---------------------------------------------------------------------------------------------
// Prefix iteration and deletion
// ---------------------------------------------------------------------------------------------

/// `prefix_for_each` visits a map's entries in ascending user-key bytes, whatever the insertion
/// order.
pub fn prefix_for_each_visits_user_keys_in_ascending_order(factory: &BackendFactory) {
    let mut b = open(factory);
    let m = register(&mut *b, "m", StateKind::Map);
    let mut rng = Rng(42);
    let mut want: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for i in 0..500u32 {
        let len = 1 + rng.below(6) as usize;
        let uk: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let v = i.to_le_bytes().to_vec();
        want.retain(|(k, _)| *k != uk);
        want.push((uk.clone(), v.clone()));
        put(&mut *b, m, &entry(11, b"key", b"ns", &uk), &v);
        if i == 250 {
            flush(&mut *b);
        }
    }
    want.sort();
    assert_eq!(
        under(&mut *b, m, &in_ns(11, b"key", b"ns")),
        want,
        "{}",
        b.name()
    );
    flush(&mut *b);
    assert_eq!(
        under(&mut *b, m, &in_ns(11, b"key", b"ns")),
        want,
        "{}",
        b.name()
    );
}

/// `prefix_for_each` visits exactly the entries whose key group, key and namespace equal the
/// prefix's (the prefix's own user key is ignored): not longer keys, not other namespaces, not
/// neighbouring key groups.
pub fn prefix_for_each_visits_exactly_the_given_prefix(factory: &BackendFactory) {
    let mut b = open(factory);
    let m = register(&mut *b, "m", StateKind::Map);
    let neighbours = [
        entry(12, b"ab", b"", b"1"),
        entry(12, b"a", b"x", b"2"),
        entry(12, b"", b"a", b"3"),
        entry(11, b"a", b"", b"4"),
        entry(13, b"a", b"", b"5"),
        entry(12, b"a\0", b"", b"6"),
    ];
    for n in &neighbours {
        put(&mut *b, m, n, b"neighbour");
    }
    put(&mut *b, m, &entry(12, b"a", b"", b"u1"), b"v1");
    flush(&mut *b);
    put(&mut *b, m, &entry(12, b"a", b"", b"u2"), b"v2");
    let want = vec![
        (b"u1".to_vec(), b"v1".to_vec()),
        (b"u2".to_vec(), b"v2".to_vec()),
    ];
    assert_eq!(under(&mut *b, m, &cell(12, b"a")), want, "{}", b.name());
    let with_user_key = entry(12, b"a", b"", b"u2");
    assert_eq!(
        under(&mut *b, m, &with_user_key),
        want,
        "{}: user key of prefix",
        b.name()
    );
    assert!(under(&mut *b, m, &cell(12, b"nobody")).is_empty());
}

/// `prefix_for_each` sees puts and deletes that were never flushed, mixed with flushed entries.
pub fn prefix_for_each_sees_unflushed_writes_and_deletes(factory: &BackendFactory) {
    let mut b = open(factory);
    let m = register(&mut *b, "m", StateKind::Map);
    for uk in [b"a", b"b", b"c"] {
        put(&mut *b, m, &entry(13, b"k", b"", uk), b"old");
    }
    flush(&mut *b);
    delete(&mut *b, m, &entry(13, b"k", b"", b"b"));
    put(&mut *b, m, &entry(13, b"k", b"", b"c"), b"new");
    put(&mut *b, m, &entry(13, b"k", b"", b"d"), b"new");
    let want = vec![
        (b"a".to_vec(), b"old".to_vec()),
        (b"c".to_vec(), b"new".to_vec()),
        (b"d".to_vec(), b"new".to_vec()),
    ];
    assert_eq!(under(&mut *b, m, &cell(13, b"k")), want, "{}", b.name());
    // Point reads still agree afterwards.
    assert_eq!(get(&mut *b, m, &entry(13, b"k", b"", b"b")), None);
    assert_eq!(
        get(&mut *b, m, &entry(13, b"k", b"", b"c")).as_deref(),
        Some(&b"new"[..])
    );
}

/// An error returned by the visitor stops the iteration and is returned as is.
pub fn prefix_for_each_returns_the_visitors_error(factory: &BackendFactory) {
    let mut b = open(factory);
    let m = register(&mut *b, "m", StateKind::Map);
    for uk in [b"a", b"b", b"c"] {
        put(&mut *b, m, &entry(14, b"k", b"", uk), b"v");
    }
    let mut seen = 0;
    let r = b.prefix_for_each(m, &cell(14, b"k"), &mut |_, _| {
        seen += 1;
        Err(StateError::UnknownState(999))
    });
    assert!(
        matches!(r, Err(StateError::UnknownState(999))),
        "{}: {r:?}",
        b.name()
    );
    assert_eq!(seen, 1, "{}: the visitor ran after its error", b.name());
    let r = b.scan(m, &mut |_| Err(StateError::UnknownState(998)));
    assert!(
        matches!(r, Err(StateError::UnknownState(998))),
        "{}: {r:?}",
        b.name()
    );
}

/// On a value state, `prefix_for_each` visits the one cell of the prefix, with an empty user key.
pub fn prefix_for_each_on_a_value_state_visits_its_one_cell(factory: &BackendFactory) {
    let mut b = open(factory);
    let s = register(&mut *b, "s", StateKind::Value);
    put(&mut *b, s, &cell(15, b"k"), b"v");
    put(&mut *b, s, &cell(15, b"kk"), b"other");
    assert_eq!(
        under(&mut *b, s, &cell(15, b"k")),
        vec![(Vec::new(), b"v".to_vec())]
    );
    b.delete_prefix(s, &cell(15, b"k")).expect("delete_prefix");
    assert_eq!(get(&mut *b, s, &cell(15, b"k")), None, "{}", b.name());
    assert_eq!(
        get(&mut *b, s, &cell(15, b"kk")).as_deref(),
        Some(&b"other"[..])
    );
}

/// `delete_prefix` removes every entry under the prefix, flushed or not, and nothing else.
pub fn delete_prefix_removes_exactly_that_prefix(factory: &BackendFactory) {
    let mut b = open(factory);
    let m = register(&mut *b, "m", StateKind::Map);
    let neighbours = [
        entry(16, b"ab", b"", b"1"),
        entry(16, b"a", b"x", b"2"),
        entry(15, b"a", b"", b"3"),
        entry(17, b"a", b"", b"4"),
    ];
    for n in &neighbours {
        put(&mut *b, m, n, b"neighbour");
    }
    for i in 0..100u32 {
        put(
            &mut *b,
            m,
            &entry(16, b"a", b"", &i.to_be_bytes()),
            b"doomed",
        );
        if i == 50 {
            flush(&mut *b);
        }
    }
    b.delete_prefix(m, &entry(16, b"a", b"", b"ignored user key"))
        .expect("delete_prefix");
    assert!(
        under(&mut *b, m, &cell(16, b"a")).is_empty(),
        "{}",
        b.name()
    );
    for i in 0..100u32 {
        let got = get(&mut *b, m, &entry(16, b"a", b"", &i.to_be_bytes()));
        assert_eq!(got, None, "{}: user key {i}", b.name());
    }
    for n in &neighbours {
        assert_eq!(
            get(&mut *b, m, n).as_deref(),
            Some(&b"neighbour"[..]),
            "{}: {n:?}",
            b.name()
        );
    }
    assert_eq!(scanned(&mut *b, m).len(), neighbours.len(), "{}", b.name());
    // Writing under the prefix again works.
    put(&mut *b, m, &entry(16, b"a", b"", b"new"), b"v");
    assert_eq!(
        under(&mut *b, m, &cell(16, b"a")),
        vec![(b"new".to_vec(), b"v".to_vec())]
    );
}

/// Entries that were read (and so may be cached) or flushed before a `delete_prefix` read as
/// missing afterwards, also after a flush.
pub fn delete_prefix_removes_entries_already_read_or_flushed(factory: &BackendFactory) {
    let mut b = open(factory);
    let m = register(&mut *b, "m", StateKind::Map);
    for i in 0..20u32 {
        put(&mut *b, m, &entry(17, b"k", b"w", &i.to_be_bytes()), b"v");
    }
    flush(&mut *b);
    for i in 0..20u32 {
        let got = get(&mut *b, m, &entry(17, b"k", b"w", &i.to_be_bytes()));
        assert_eq!(got.as_deref(), Some(&b"v"[..]));
    }
    put(&mut *b, m, &entry(17, b"k", b"w", b"unflushed"), b"v");
    b.delete_prefix(m, &in_ns(17, b"k", b"w"))
        .expect("delete_prefix");
    for pass in ["before flush", "after flush"] {
        for i in 0..20u32 {
            let got = get(&mut *b, m, &entry(17, b"k", b"w", &i.to_be_bytes()));
            assert_eq!(got, None, "{}: user key {i} {pass}", b.name());
        }
        assert_eq!(get(&mut *b, m, &entry(17, b"k", b"w", b"unflushed")), None);
        flush(&mut *b);
    }
    assert!(scanned(&mut *b, m).is_empty(), "{}", b.name());
}

// ---------------------------------------------------------------------------------------------
// Scans
// ---------------------------------------------------------------------------------------------

/// `scan` visits every entry of a state once, in ascending encoded-key order, so key group by
/// key group, with decoded keys and the right values.
pub fn scan_visits_entries_in_ascending_encoded_key_order_across_key_groups(
    factory: &BackendFactory,
) {
    let mut b = open(factory);
    let m = register(&mut *b, "m", StateKind::Map);
    let s = register(&mut *b, "s", StateKind::Value);
    let mut rng = Rng(3);
    let mut want_m = std::collections::BTreeMap::new();
    let mut want_s = std::collections::BTreeMap::new();
    for i in 0..3000u32 {
        let kg = RANGE.start + rng.below(u64::from(RANGE.len())) as u16;
        let key: Vec<u8> = (0..rng.below(4)).map(|_| rng.next() as u8 % 4).collect();
        let ns: Vec<u8> = (0..rng.below(3)).map(|_| rng.next() as u8 % 3).collect();
        let uk: Vec<u8> = (0..rng.below(4)).map(|_| rng.next() as u8).collect();
        let v = i.to_be_bytes().to_vec();
        put(&mut *b, m, &entry(kg, &key, &ns, &uk), &v);
        want_m.insert(encoded(&entry(kg, &key, &ns, &uk)), v.clone());
        put(&mut *b, s, &in_ns(kg, &key, &ns), &v);
        want_s.insert(encoded(&in_ns(kg, &key, &ns)), v);
        if i % 1000 == 999 {
            flush(&mut *b);
        }
    }
    let got = scanned(&mut *b, m);
    assert_eq!(
        got,
        want_m.into_iter().collect::<Vec<_>>(),
        "{}: map state",
        b.name()
    );
    let got = scanned(&mut *b, s);
    assert_eq!(
        got,
        want_s.into_iter().collect::<Vec<_>>(),
        "{}: value state",
        b.name()
    );

    // Decoded keys carry the key group first: the visit never goes back to a lower one.
    let mut last = 0u16;
    b.scan(m, &mut |e| {
        assert!(e.key.key_group.0 >= last);
        assert!(RANGE.contains(e.key.key_group));
        last = e.key.key_group.0;
        Ok(())
    })
    .expect("scan");
}

/// `scan` sees puts and deletes that were never flushed.
pub fn scan_sees_unflushed_writes_and_deletes(factory: &BackendFactory) {
    let mut b = open(factory);
    let s = register(&mut *b, "s", StateKind::Value);
    put(&mut *b, s, &cell(10, b"a"), b"flushed");
    put(&mut *b, s, &cell(10, b"b"), b"flushed");
    flush(&mut *b);
    delete(&mut *b, s, &cell(10, b"a"));
    put(&mut *b, s, &cell(10, b"b"), b"rewritten");
    put(&mut *b, s, &cell(19, b"c"), b"new");
    let want = vec![
        (encoded(&cell(10, b"b")), b"rewritten".to_vec()),
        (encoded(&cell(19, b"c")), b"new".to_vec()),
    ];
    assert_eq!(scanned(&mut *b, s), want, "{}", b.name());
}

/// A state with nothing in it scans as empty, also after writes and deletes cancel out.
pub fn scan_of_an_empty_state_visits_nothing(factory: &BackendFactory) {
    let mut b = open(factory);
    let s = register(&mut *b, "s", StateKind::Value);
    assert!(scanned(&mut *b, s).is_empty());
    put(&mut *b, s, &cell(10, b"a"), b"v");
    delete(&mut *b, s, &cell(10, b"a"));
    assert!(scanned(&mut *b, s).is_empty(), "{}", b.name());
}

// ---------------------------------------------------------------------------------------------
// Range ownership, registration
// ---------------------------------------------------------------------------------------------

/// Every keyed operation refuses a key group outside the range with
/// [`StateError::KeyGroupOutOfRange`], and nothing is stored.
pub fn a_key_group_outside_the_range_is_refused_and_never_stored(factory: &BackendFactory) {
    let mut b = open(factory);
    let s = register(&mut *b, "s", StateKind::Value);
    let m = register(&mut *b, "m", StateKind::Map);
    for kg in [0, RANGE.start - 1, RANGE.end + 1, u16::MAX] {
        let k = cell(kg, b"k");
        let name = b.name();
        assert!(is_out_of_range(b.put(s, &k, b"v")), "{name}: put in {kg}");
        assert!(
            is_out_of_range(b.put(m, &entry(kg, b"k", b"", b"u"), b"v")),
            "{name}"
        );
        assert!(
            is_out_of_range(b.get(s, &k).map(|_| ())),
            "{name}: get in {kg}"
        );
        assert!(is_out_of_range(b.delete(s, &k)), "{name}: delete in {kg}");
        let r = b.prefix_for_each(m, &k, &mut |_, _| Ok(()));
        assert!(is_out_of_range(r), "{name}: prefix_for_each in {kg}");
        assert!(
            is_out_of_range(b.delete_prefix(m, &k)),
            "{name}: delete_prefix in {kg}"
        );
    }
    flush(&mut *b);
    assert!(scanned(&mut *b, s).is_empty(), "{}", b.name());
    assert!(scanned(&mut *b, m).is_empty(), "{}", b.name());
    // The edges of the range are inside it.
    put(&mut *b, s, &cell(RANGE.start, b"k"), b"first");
    put(&mut *b, s, &cell(RANGE.end, b"k"), b"last");
    assert_eq!(scanned(&mut *b, s).len(), 2, "{}", b.name());
}

/// Registering a name again with the same kind returns the first id and adds no descriptor.
pub fn registering_the_same_name_and_kind_returns_the_same_id(factory: &BackendFactory) {
    let mut b = open(factory);
    let a = register(&mut *b, "a", StateKind::Value);
    let m = register(&mut *b, "m", StateKind::Map);
    put(&mut *b, a, &cell(10, b"k"), b"v");
    assert_eq!(register(&mut *b, "a", StateKind::Value), a, "{}", b.name());
    assert_eq!(register(&mut *b, "m", StateKind::Map), m, "{}", b.name());
    assert_eq!(b.descriptors().len(), 2, "{}", b.name());
    // Re-registering does not reset the state.
    assert_eq!(get(&mut *b, a, &cell(10, b"k")).as_deref(), Some(&b"v"[..]));
}

/// Registering a known name with another kind is [`StateError::KindMismatch`] naming both kinds.
pub fn registering_a_known_name_with_another_kind_is_a_kind_mismatch(factory: &BackendFactory) {
    let mut b = open(factory);
    register(&mut *b, "a", StateKind::Value);
    let r = b.register(&StateDescriptor {
        name: "a".into(),
        kind: StateKind::Map,
    });
    match r {
        Err(StateError::KindMismatch {
            name,
            existing,
            requested,
        }) => {
            assert_eq!(name, "a");
            assert_eq!(existing, StateKind::Value);
            assert_eq!(requested, StateKind::Map);
        }
        other => panic!("{}: expected KindMismatch, got {other:?}", b.name()),
    }
    assert_eq!(b.descriptors().len(), 1, "{}", b.name());
}

/// `descriptors()` lists the states in registration order, indexed by their [`StateId`].
pub fn descriptors_are_listed_in_registration_order(factory: &BackendFactory) {
    let mut b = open(factory);
    let kinds = [
        ("window-contents", StateKind::List),
        ("count", StateKind::Value),
        ("by-user", StateKind::Map),
        ("sum", StateKind::Reducing),
        ("default", StateKind::Value),
    ];
    for (i, (name, kind)) in kinds.iter().enumerate() {
        assert_eq!(
            register(&mut *b, name, *kind),
            StateId(i as u32),
            "{}",
            b.name()
        );
    }
    let got: Vec<(String, StateKind)> = b
        .descriptors()
        .iter()
        .map(|d| (d.name.clone(), d.kind))
        .collect();
    let want: Vec<(String, StateKind)> = kinds.iter().map(|(n, k)| (n.to_string(), *k)).collect();
    assert_eq!(got, want, "{}", b.name());
    // Every one of them is usable, and they stay apart.
    for i in 0..kinds.len() as u32 {
        put(&mut *b, StateId(i), &cell(10, b"k"), &i.to_be_bytes());
    }
    for i in 0..kinds.len() as u32 {
        let got = get(&mut *b, StateId(i), &cell(10, b"k"));
        assert_eq!(got, Some(i.to_be_bytes().to_vec()), "{}", b.name());
    }
}

/// A [`StateId`] the backend never handed out is [`StateError::UnknownState`].
pub fn an_unknown_state_id_is_refused(factory: &BackendFactory) {
    let mut b = open(factory);
    register(&mut *b, "s", StateKind::Value);
    let bad = StateId(7);
    let k = cell(10, b"k");
    let name = b.name();
    let unknown = |r: Result<(), StateError>| matches!(r, Err(StateError::UnknownState(7)));
    assert!(unknown(b.get(bad, &k).map(|_| ())), "{name}: get");
    assert!(unknown(b.put(bad, &k, b"v")), "{name}: put");
    assert!(unknown(b.delete(bad, &k)), "{name}: delete");
    assert!(
        unknown(b.prefix_for_each(bad, &k, &mut |_, _| Ok(()))),
        "{name}"
    );
    assert!(unknown(b.delete_prefix(bad, &k)), "{name}: delete_prefix");
    assert!(unknown(b.scan(bad, &mut |_| Ok(()))), "{name}: scan");
}

/// Value, list and reducing states have no user keys: a put, get or delete with one is refused
/// as a [`StateError::MalformedKey`] naming the state, rather than silently stored apart.
pub fn a_user_key_on_a_non_map_state_is_refused(factory: &BackendFactory) {
    let mut b = open(factory);
    let s = register(&mut *b, "plain", StateKind::Value);
    let k = entry(10, b"k", b"", b"uk");
    let name = b.name();
    let refused = |r: Result<(), StateError>| matches!(r, Err(StateError::MalformedKey { ref state, .. }) if state == "plain");
    assert!(refused(b.put(s, &k, b"v")), "{name}: put");
    assert!(refused(b.get(s, &k).map(|_| ())), "{name}: get");
    assert!(refused(b.delete(s, &k)), "{name}: delete");
    assert!(scanned(&mut *b, s).is_empty(), "{name}");
}

/// A flush changes nothing that `get`, `prefix_for_each` or `scan` return.
pub fn a_flush_changes_nothing_that_reads_see(factory: &BackendFactory) {
    let mut b = open(factory);
    let s = register(&mut *b, "s", StateKind::Value);
    let m = register(&mut *b, "m", StateKind::Map);
    for i in 0..200u32 {
        let k = i.to_be_bytes();
        put(&mut *b, s, &cell(kg_of(i), &k), &value_of(i, 1));
        put(&mut *b, m, &entry(kg_of(i), &k, b"", b"u"), &value_of(i, 2));
        if i % 4 == 0 {
            delete(&mut *b, s, &cell(kg_of(i), &k));
        }
    }
    let before = (
        scanned(&mut *b, s),
        scanned(&mut *b, m),
        under(&mut *b, m, &cell(10, &0u32.to_be_bytes())),
    );
    flush(&mut *b);
    flush(&mut *b);
    let after = (
        scanned(&mut *b, s),
        scanned(&mut *b, m),
        under(&mut *b, m, &cell(10, &0u32.to_be_bytes())),
    );
    assert_eq!(before, after, "{}", b.name());
    assert_eq!(before.0.len(), 150, "{}", b.name());
}

/// `size_bytes` grows as state is written and is not smaller than about half of the raw bytes
/// held (values compress a little at most: they are pseudo-random).
pub fn size_bytes_accounts_for_the_state_written(factory: &BackendFactory) {
    let mut b = open(factory);
    let s = register(&mut *b, "s", StateKind::Value);
    let name = b.name();
    let empty = b
        .size_bytes()
        .unwrap_or_else(|e| panic!("{name}: size_bytes: {e}"));
    let mut raw = 0u64;
    let mut rng = Rng(11);
    for i in 0..20_000u32 {
        let k = i.to_be_bytes();
        let v: Vec<u8> = (0..16).flat_map(|_| rng.next().to_le_bytes()).collect();
        raw += (k.len() + v.len()) as u64;
        put(&mut *b, s, &cell(kg_of(i), &k), &v);
    }
    let full = b
        .size_bytes()
        .unwrap_or_else(|e| panic!("{name}: size_bytes: {e}"));
    assert!(full > empty, "{name}: {empty} -> {full}");
    assert!(
        full >= raw / 2,
        "{name}: {full} bytes reported for {raw} raw bytes"
    );
}

// ---------------------------------------------------------------------------------------------
// Typed handles
// ---------------------------------------------------------------------------------------------

/// [`crate::ValueState`]: get (none), update, get, clear, and `for_each_key` over all keys.
pub fn value_state_round_trips_through_the_typed_handle(factory: &BackendFactory) {
    let mut b = open(factory);
    let state = StateRegistry::new(&mut *b)
        .value_state::<(u64, String)>("pair")
        .expect("register");
    let mut scratch = Vec::new();
    let mut scope = KeyedScope::new(&mut *b, KeyGroup(12), b"alice", &mut scratch);
    assert_eq!(state.get(&mut scope).expect("get"), None);
    state
        .update(&mut scope, &(7, "seven".into()))
        .expect("update");
    assert_eq!(
        state.get(&mut scope).expect("get"),
        Some((7, "seven".into()))
    );
    let mut scope = KeyedScope::new(&mut *b, KeyGroup(13), b"bob", &mut scratch);
    state
        .update(&mut scope, &(8, "eight".into()))
        .expect("update");
    let mut seen = Vec::new();
    state
        .for_each_key(&mut *b, &mut |k, v| {
            seen.push((k.to_vec(), v));
            Ok(())
        })
        .expect("for_each_key");
    assert_eq!(
        seen,
        vec![
            (b"alice".to_vec(), (7, "seven".to_string())),
            (b"bob".to_vec(), (8, "eight".to_string())),
        ]
    );
    let mut scope = KeyedScope::new(&mut *b, KeyGroup(12), b"alice", &mut scratch);
    state.clear(&mut scope).expect("clear");
    assert_eq!(state.get(&mut scope).expect("get"), None);
}

/// [`crate::ListState`]: add appends in order, update replaces, an empty update or clear empties.
pub fn list_state_round_trips_through_the_typed_handle(factory: &BackendFactory) {
    let mut b = open(factory);
    let list = StateRegistry::new(&mut *b)
        .list_state::<String>("events")
        .expect("register");
    let mut scratch = Vec::new();
    let mut scope = KeyedScope::new(&mut *b, KeyGroup(14), b"k", &mut scratch);
    assert!(list.get(&mut scope).expect("get").is_empty());
    for e in ["a", "bb", "", "dddd"] {
        list.add(&mut scope, &e.to_string()).expect("add");
    }
    assert_eq!(
        list.get(&mut scope).expect("get"),
        vec!["a", "bb", "", "dddd"]
    );
    list.update(&mut scope, &["x".to_string()]).expect("update");
    assert_eq!(list.get(&mut scope).expect("get"), vec!["x"]);
    list.update(&mut scope, &[]).expect("update");
    assert!(list.get(&mut scope).expect("get").is_empty());
    list.add(&mut scope, &"y".to_string()).expect("add");
    list.clear(&mut scope).expect("clear");
    assert!(list.get(&mut scope).expect("get").is_empty());
}

/// [`crate::MapState`]: insert, get, contains, remove, entries in encoded-key order, is_empty,
/// clear.
pub fn map_state_round_trips_through_the_typed_handle(factory: &BackendFactory) {
    let mut b = open(factory);
    let map = StateRegistry::new(&mut *b)
        .map_state::<u32, String>("by-id")
        .expect("register");
    let mut scratch = Vec::new();
    let mut scope = KeyedScope::new(&mut *b, KeyGroup(15), b"k", &mut scratch);
    assert!(map.is_empty(&mut scope).expect("is_empty"));
    for id in [3u32, 1, 2, 200] {
        map.insert(&mut scope, &id, &format!("v{id}"))
            .expect("insert");
    }
    assert_eq!(
        map.get(&mut scope, &2).expect("get"),
        Some("v2".to_string())
    );
    assert_eq!(map.get(&mut scope, &9).expect("get"), None);
    assert!(map.contains(&mut scope, &200).expect("contains"));
    map.remove(&mut scope, &3).expect("remove");
    assert!(!map.contains(&mut scope, &3).expect("contains"));
    // postcard varints: 1, 2 and 200 encode as [1], [2], [200, 1]; bytewise order is 1, 2, 200.
    let entries = map.entries(&mut scope).expect("entries");
    assert_eq!(
        entries,
        vec![
            (1, "v1".to_string()),
            (2, "v2".to_string()),
            (200, "v200".to_string())
        ]
    );
    assert!(!map.is_empty(&mut scope).expect("is_empty"));
    map.clear(&mut scope).expect("clear");
    assert!(map.is_empty(&mut scope).expect("is_empty"));
    assert_eq!(map.get(&mut scope, &1).expect("get"), None);
}

/// [`crate::ReducingState`]: the first add stores, later adds combine, clear removes.
pub fn reducing_state_round_trips_through_the_typed_handle(factory: &BackendFactory) {
    let mut b = open(factory);
    let sum = StateRegistry::new(&mut *b)
        .reducing_state::<(u64, u64), _>("count-and-sum", |a, b| (a.0 + b.0, a.1 + b.1))
        .expect("register");
    let mut scratch = Vec::new();
    let mut scope = KeyedScope::new(&mut *b, KeyGroup(16), b"k", &mut scratch);
    assert_eq!(sum.get(&mut scope).expect("get"), None);
    for v in 1..=100u64 {
        sum.add(&mut scope, (1, v)).expect("add");
    }
    assert_eq!(sum.get(&mut scope).expect("get"), Some((100, 5050)));
    sum.clear(&mut scope).expect("clear");
    assert_eq!(sum.get(&mut scope).expect("get"), None);
}

/// Handles only see the scope's key and namespace: two keys and two windows of one key hold
/// separate values.
pub fn typed_handles_keep_keys_and_namespaces_apart(factory: &BackendFactory) {
    let mut b = open(factory);
    let count = StateRegistry::new(&mut *b)
        .value_state::<u64>("count")
        .expect("register");
    let mut scratch = Vec::new();
    let cases: [(&[u8], &[u8], u64); 4] = [
        (b"k1", b"", 1),
        (b"k1", b"window-0", 2),
        (b"k1", b"window-1", 3),
        (b"k2", b"window-0", 4),
    ];
    for (key, ns, v) in cases {
        let mut scope =
            KeyedScope::new(&mut *b, KeyGroup(17), key, &mut scratch).with_namespace(ns);
        count.update(&mut scope, &v).expect("update");
    }
    flush(&mut *b);
    for (key, ns, v) in cases {
        let mut scope =
            KeyedScope::new(&mut *b, KeyGroup(17), key, &mut scratch).with_namespace(ns);
        assert_eq!(
            count.get(&mut scope).expect("get"),
            Some(v),
            "{key:?} {ns:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Snapshots
// ---------------------------------------------------------------------------------------------

/// One snapshot check: it creates and restores backends through the given factory and panics on
/// failure, naming the backend.
pub type SnapshotCheck = fn(&dyn StateBackendFactory);

/// Every snapshot check, by name, in the order [`run_snapshot_checks`] runs them.
pub const SNAPSHOT_CHECKS: &[(&str, SnapshotCheck)] = &[
    (
        "a_snapshot_describes_the_backend_it_was_taken_from",
        a_snapshot_describes_the_backend_it_was_taken_from,
    ),
    (
        "a_restored_snapshot_scans_the_same_entries_for_every_state_kind",
        a_restored_snapshot_scans_the_same_entries_for_every_state_kind,
    ),
    (
        "a_restored_backend_hands_out_the_snapshots_state_ids",
        a_restored_backend_hands_out_the_snapshots_state_ids,
    ),
    (
        "writes_after_a_snapshot_do_not_change_it",
        writes_after_a_snapshot_do_not_change_it,
    ),
    (
        "a_restored_backend_takes_writes_and_snapshots_again",
        a_restored_backend_takes_writes_and_snapshots_again,
    ),
    (
        "an_empty_backend_snapshots_and_restores",
        an_empty_backend_snapshots_and_restores,
    ),
    (
        "a_snapshot_of_another_backend_is_refused_naming_the_checkpoint",
        a_snapshot_of_another_backend_is_refused_naming_the_checkpoint,
    ),
    (
        "a_snapshot_of_another_format_is_refused_naming_the_checkpoint",
        a_snapshot_of_another_format_is_refused_naming_the_checkpoint,
    ),
    (
        "a_snapshot_of_another_key_group_range_is_refused_naming_both_ranges",
        a_snapshot_of_another_key_group_range_is_refused_naming_both_ranges,
    ),
    (
        "a_snapshot_without_its_files_is_refused_naming_the_checkpoint",
        a_snapshot_without_its_files_is_refused_naming_the_checkpoint,
    ),
    (
        "ttl_state_never_returns_an_expired_value_before_or_after_a_restore_and_compaction_drops_it",
        ttl_state_never_returns_an_expired_value_before_or_after_a_restore_and_compaction_drops_it,
    ),
    (
        "a_snapshot_finished_while_heavy_writes_go_on_holds_exactly_the_state_at_its_barrier",
        a_snapshot_finished_while_heavy_writes_go_on_holds_exactly_the_state_at_its_barrier,
    ),
    (
        "every_finished_snapshot_of_a_chain_with_dropped_ones_restores_exactly_its_state",
        every_finished_snapshot_of_a_chain_with_dropped_ones_restores_exactly_its_state,
    ),
];

/// Runs every check in [`SNAPSHOT_CHECKS`] on `factory`; panics at the first failure.
pub fn run_snapshot_checks(factory: &dyn StateBackendFactory) {
    for (_, check) in SNAPSHOT_CHECKS {
        check(factory);
    }
}

/// Runs `check` through `run`, a closure that builds a factory (and whatever it needs, such as
/// a temporary state directory) and calls the check with it. Used by
/// [`snapshot_conformance_tests!`](crate::snapshot_conformance_tests).
pub fn run_snapshot_check(run: impl Fn(SnapshotCheck), check: SnapshotCheck) {
    run(check)
}

/// Expands to one `#[test]` per snapshot check, each named after the check, plus a test that
/// the expansion covers [`SNAPSHOT_CHECKS`]. `$run` is a closure that builds a factory and
/// runs the check it is given on it:
///
/// ```
/// mod heap_snapshots {
///     use weir_state::HeapStateBackendFactory;
///     weir_state::snapshot_conformance_tests!(|check| check(&HeapStateBackendFactory::new()));
/// }
/// ```
#[macro_export]
macro_rules! snapshot_conformance_tests {
    ($run:expr) => {
        $crate::snapshot_conformance_tests!(@each ($run)
            a_snapshot_describes_the_backend_it_was_taken_from,
            a_restored_snapshot_scans_the_same_entries_for_every_state_kind,
            a_restored_backend_hands_out_the_snapshots_state_ids,
            writes_after_a_snapshot_do_not_change_it,
            a_restored_backend_takes_writes_and_snapshots_again,
            an_empty_backend_snapshots_and_restores,
            a_snapshot_of_another_backend_is_refused_naming_the_checkpoint,
            a_snapshot_of_another_format_is_refused_naming_the_checkpoint,
            a_snapshot_of_another_key_group_range_is_refused_naming_both_ranges,
            a_snapshot_without_its_files_is_refused_naming_the_checkpoint,
            ttl_state_never_returns_an_expired_value_before_or_after_a_restore_and_compaction_drops_it,
            a_snapshot_finished_while_heavy_writes_go_on_holds_exactly_the_state_at_its_barrier,
            every_finished_snapshot_of_a_chain_with_dropped_ones_restores_exactly_its_state,
        );
    };
    (@each ($run:expr) $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                $crate::conformance::run_snapshot_check($run, $crate::conformance::$name);
            }
        )*

        #[test]
        fn the_snapshot_conformance_tests_cover_every_check() {
            let expanded: ::std::vec::Vec<&str> = ::std::vec![$(stringify!($name)),*];
            let all: ::std::vec::Vec<&str> =
                $crate::conformance::SNAPSHOT_CHECKS.iter().map(|(name, _)| *name).collect();
            assert_eq!(expanded, all);
        }
    };
}

/// The scope every snapshot check's backends serve.
fn scope_for(range: KeyGroupRange) -> BackendScope {
    BackendScope {
        operator_uid: OperatorUid::new("conformance").expect("a valid uid"),
        subtask: SubtaskIndex(0),
        parallelism: 1,
        max_parallelism: 128,
        key_group_range: range,
        keyed_subtasks_in_process: 1,
    }
}

fn create(factory: &dyn StateBackendFactory) -> Box<dyn KeyedStateBackend> {
    factory
        .create(&scope_for(RANGE))
        .unwrap_or_else(|e| panic!("{}: create: {e}", factory.name()))
}

fn snapshot(b: &mut dyn KeyedStateBackend, checkpoint: u64) -> LocalSnapshot {
    let name = b.name();
    b.snapshot(CheckpointId(checkpoint))
        .and_then(LocalSnapshot::resolve)
        .unwrap_or_else(|e| panic!("{name}: snapshot: {e}"))
}

fn restore(
    factory: &dyn StateBackendFactory,
    restored: RestoredSnapshot,
) -> Box<dyn KeyedStateBackend> {
    factory
        .restore(&scope_for(RANGE), restored)
        .unwrap_or_else(|e| panic!("{}: restore: {e}", factory.name()))
}

/// A directory under the system's temp dir, removed when dropped (this module cannot use
/// `tempfile`: it is part of the library).
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "weir-snapshot-conformance-{}-{n}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        Self(path)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What an upload and a later download do: copies the snapshot's files into `to`, then removes
/// the snapshot's cleanup directory as the uploader would.
fn upload(snapshot: LocalSnapshot, to: &ScratchDir) -> RestoredSnapshot {
    let restored = snapshot
        .copy_to_dir(&to.0)
        .unwrap_or_else(|e| panic!("{}: copy the snapshot: {e}", snapshot.backend));
    if let Some(dir) = &snapshot.cleanup_dir {
        std::fs::remove_dir_all(dir)
            .unwrap_or_else(|e| panic!("{}: remove {}: {e}", snapshot.backend, dir.display()));
    }
    restored
}

/// The states the snapshot checks declare, one per kind, in this order.
const SNAPSHOT_STATES: [(&str, StateKind); 4] = [
    ("value", StateKind::Value),
    ("list", StateKind::List),
    ("map", StateKind::Map),
    ("reducing", StateKind::Reducing),
];

fn declare_snapshot_states(b: &mut dyn KeyedStateBackend) -> Vec<StateId> {
    SNAPSHOT_STATES
        .iter()
        .map(|(name, kind)| register(b, name, *kind))
        .collect()
}

/// Writes round `round` of every state kind, without flushing: [`MANY_KEYS`] value cells
/// (some deleted again), lists, maps of several user keys in two namespaces (some removed),
/// and reducing cells. A caching backend spills part of it and keeps the rest dirty.
fn fill(b: &mut dyn KeyedStateBackend, states: &[StateId], round: u32) {
    let [value, list, map, reducing] = states else {
        panic!("{}: expected four states", b.name());
    };
    for i in 0..MANY_KEYS {
        let k = (i + round * 1000).to_be_bytes();
        put(b, *value, &cell(kg_of(i), &k), &value_of(i, round));
        if i % 7 == round % 7 {
            delete(b, *value, &cell(kg_of(i), &k));
        }
    }
    for i in 0..300u32 {
        let k = i.to_be_bytes();
        let mut v = value_of(i, round);
        v.extend_from_slice(&value_of(i + 1, round));
        put(b, *list, &cell(kg_of(i), &k), &v);
    }
    for i in 0..100u32 {
        let k = i.to_be_bytes();
        for ns in [&b""[..], b"window-1"] {
            for u in 0..10u32 {
                let uk = (u * 3 + round).to_be_bytes();
                put(b, *map, &entry(kg_of(i), &k, ns, &uk), &value_of(u, round));
            }
            let gone = (round + 3).to_be_bytes();
            delete(b, *map, &entry(kg_of(i), &k, ns, &gone));
        }
    }
    for i in 0..300u32 {
        let k = (i * 13).to_be_bytes();
        put(
            b,
            *reducing,
            &in_ns(kg_of(i), &k, b"pane"),
            &value_of(i, round + 1),
        );
    }
}

/// Every state's `(encoded key, value)` pairs, in scan order, by state id.
fn scan_all(b: &mut dyn KeyedStateBackend) -> Vec<Vec<(Vec<u8>, Vec<u8>)>> {
    (0..b.descriptors().len() as u32)
        .map(|id| scanned(b, StateId(id)))
        .collect()
}

/// Panics unless `result` is a [`StateError::Restore`] or [`StateError::Incompatible`] for
/// `checkpoint` whose message holds
/// every string of `mentions`.
fn assert_refused(
    backend: &str,
    result: Result<Box<dyn KeyedStateBackend>, StateError>,
    checkpoint: CheckpointId,
    mentions: &[&str],
) {
    let err = match result {
        Ok(_) => panic!("{backend}: restore succeeded; expected a refusal"),
        Err(e) => e,
    };
    match &err {
        StateError::Restore { checkpoint: c, .. }
        | StateError::Incompatible { checkpoint: c, .. }
            if *c == checkpoint => {}
        other => panic!("{backend}: expected a restore error for {checkpoint}, got {other:?}"),
    }
    let message = err.to_string();
    for m in mentions.iter().chain([&checkpoint.to_string().as_str()]) {
        assert!(
            message.contains(m),
            "{backend}: '{message}' does not mention '{m}'"
        );
    }
}

/// The snapshot names its checkpoint, the backend, its key groups and declared states, and has
/// uniquely named files; a shareable file's bytes cannot change (on disk, or shared immutable
/// bytes).
pub fn a_snapshot_describes_the_backend_it_was_taken_from(factory: &dyn StateBackendFactory) {
    let mut b = create(factory);
    let states = declare_snapshot_states(&mut *b);
    fill(&mut *b, &states, 0);
    let snap = snapshot(&mut *b, 3);
    let name = b.name();
    assert_eq!(snap.checkpoint, CheckpointId(3), "{name}");
    assert_eq!(snap.backend, name);
    assert_eq!(snap.key_groups, RANGE, "{name}");
    assert_eq!(snap.descriptors, b.descriptors(), "{name}");
    assert!(!snap.files.is_empty(), "{name}: a snapshot without files");
    let mut names: Vec<&str> = snap.files.iter().map(|f| f.name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(
        names.len(),
        snap.files.len(),
        "{name}: duplicate file names"
    );
    for f in &snap.files {
        if f.shareable {
            assert!(
                !matches!(f.content, SnapshotContent::Bytes(_)),
                "{name}: shareable file {} is held as bytes the uploader owns",
                f.name
            );
        }
    }
    assert!(snap.size_bytes() > 0, "{name}");
    let scratch = ScratchDir::new();
    drop(upload(snap, &scratch));
}

/// A backend restored from a snapshot scans exactly what the snapshotted one did, state by
/// state, for every kind — including writes the snapshot had to flush first.
pub fn a_restored_snapshot_scans_the_same_entries_for_every_state_kind(
    factory: &dyn StateBackendFactory,
) {
    let mut b = create(factory);
    let states = declare_snapshot_states(&mut *b);
    fill(&mut *b, &states, 0);
    let snap = snapshot(&mut *b, 1);
    let expected = scan_all(&mut *b);
    assert!(expected.iter().all(|s| !s.is_empty()), "{}", b.name());
    let scratch = ScratchDir::new();
    let mut restored = restore(factory, upload(snap, &scratch));
    assert_eq!(restored.descriptors(), b.descriptors(), "{}", b.name());
    assert_eq!(restored.key_group_range(), RANGE, "{}", b.name());
    let actual = scan_all(&mut *restored);
    for (i, (want, got)) in expected.iter().zip(&actual).enumerate() {
        assert!(
            want == got,
            "{}: state '{}' differs after restore ({} entries, want {})",
            b.name(),
            SNAPSHOT_STATES[i].0,
            got.len(),
            want.len()
        );
    }
    // Point reads agree too (they take another path than scans in a caching backend).
    let k = 5u32.to_be_bytes();
    assert_eq!(
        get(&mut *restored, states[0], &cell(kg_of(5), &k)),
        get(&mut *b, states[0], &cell(kg_of(5), &k)),
        "{}",
        b.name()
    );
}

/// Registering the snapshot's names again on the restored backend returns the snapshot's ids;
/// another kind is still a mismatch; a new name gets the next id.
pub fn a_restored_backend_hands_out_the_snapshots_state_ids(factory: &dyn StateBackendFactory) {
    let mut b = create(factory);
    let states = declare_snapshot_states(&mut *b);
    fill(&mut *b, &states, 0);
    let scratch = ScratchDir::new();
    let mut restored = restore(factory, upload(snapshot(&mut *b, 2), &scratch));
    // In another order than they were declared in.
    for (i, (name, kind)) in SNAPSHOT_STATES.iter().enumerate().rev() {
        assert_eq!(
            register(&mut *restored, name, *kind),
            states[i],
            "{}",
            b.name()
        );
    }
    let wrong = StateDescriptor {
        name: "map".into(),
        kind: StateKind::Value,
    };
    assert!(
        matches!(
            restored.register(&wrong),
            Err(StateError::KindMismatch { .. })
        ),
        "{}",
        b.name()
    );
    let new = register(&mut *restored, "new", StateKind::Map);
    assert_eq!(new, StateId(SNAPSHOT_STATES.len() as u32), "{}", b.name());
    put(&mut *restored, new, &entry(10, b"k", b"", b"u"), b"v");
    assert_eq!(
        get(&mut *restored, new, &entry(10, b"k", b"", b"u")).as_deref(),
        Some(&b"v"[..])
    );
}

/// A snapshot is immutable: overwrites, deletes, flushes and new states after `snapshot()`
/// returns are not in it, even when its files are read only afterwards.
pub fn writes_after_a_snapshot_do_not_change_it(factory: &dyn StateBackendFactory) {
    let mut b = create(factory);
    let states = declare_snapshot_states(&mut *b);
    fill(&mut *b, &states, 0);
    let snap = snapshot(&mut *b, 4);
    let expected = scan_all(&mut *b);
    fill(&mut *b, &states, 1);
    for i in 0..MANY_KEYS / 2 {
        let k = i.to_be_bytes();
        delete(&mut *b, states[0], &cell(kg_of(i), &k));
    }
    let extra = register(&mut *b, "extra", StateKind::Value);
    put(&mut *b, extra, &cell(10, b"k"), b"v");
    flush(&mut *b);
    b.size_bytes()
        .unwrap_or_else(|e| panic!("{}: size_bytes: {e}", b.name()));
    assert!(
        scan_all(&mut *b)[..4] != expected[..],
        "{}: nothing changed",
        b.name()
    );
    let scratch = ScratchDir::new();
    let mut restored = restore(factory, upload(snap, &scratch));
    assert_eq!(restored.descriptors().len(), 4, "{}", b.name());
    assert!(
        scan_all(&mut *restored) == expected,
        "{}: the snapshot changed",
        b.name()
    );
}

/// A restored backend is a full backend: it takes writes, and its own snapshot restores to
/// what it then held.
pub fn a_restored_backend_takes_writes_and_snapshots_again(factory: &dyn StateBackendFactory) {
    let mut b = create(factory);
    let states = declare_snapshot_states(&mut *b);
    fill(&mut *b, &states, 0);
    let first = ScratchDir::new();
    let mut restored = restore(factory, upload(snapshot(&mut *b, 5), &first));
    drop(b);
    fill(&mut *restored, &states, 1);
    let snap = snapshot(&mut *restored, 6);
    let expected = scan_all(&mut *restored);
    let second = ScratchDir::new();
    let mut again = restore(factory, upload(snap, &second));
    assert!(scan_all(&mut *again) == expected, "{}", again.name());
}

/// TTL states ([`crate::ttl`]): a value, a list and a map entry with a short TTL are read while
/// they live, through a snapshot and a restore too; once expired they are never returned, and
/// [`KeyedStateBackend::compact`] removes them from the store while the long-lived ones stay.
pub fn ttl_state_never_returns_an_expired_value_before_or_after_a_restore_and_compaction_drops_it(
    factory: &dyn StateBackendFactory,
) {
    use crate::ttl::StateTtl;
    use std::time::Duration;
    let short = StateTtl::after_write(Duration::from_millis(300));
    let long = StateTtl::after_write(Duration::from_secs(3600));
    let declare = |b: &mut dyn KeyedStateBackend| {
        let mut r = StateRegistry::new(b);
        (
            r.value_state_with_ttl::<u64>("short-value", short).unwrap(),
            r.list_state_with_ttl::<u64>("short-list", short).unwrap(),
            r.map_state_with_ttl::<u64, u64>("short-map", short)
                .unwrap(),
            r.value_state_with_ttl::<u64>("long-value", long).unwrap(),
        )
    };
    let mut b = create(factory);
    let (sv, sl, sm, lv) = declare(&mut *b);
    let mut scratch = Vec::new();
    for k in 0..200u64 {
        let key = k.to_be_bytes();
        let mut scope =
            KeyedScope::new(&mut *b, KeyGroup(10 + (k % 10) as u16), &key, &mut scratch);
        sv.update(&mut scope, &k).unwrap();
        sl.add(&mut scope, &k).unwrap();
        sm.insert(&mut scope, &k, &(k * 2)).unwrap();
        lv.update(&mut scope, &k).unwrap();
    }
    let dir = ScratchDir::new();
    let mut r = restore(factory, upload(snapshot(&mut *b, 9), &dir));
    drop(b);
    let (sv, sl, sm, lv) = declare(&mut *r);
    let read = |r: &mut dyn KeyedStateBackend, k: u64, scratch: &mut Vec<u8>| {
        let key = k.to_be_bytes();
        let mut scope = KeyedScope::new(r, KeyGroup(10 + (k % 10) as u16), &key, scratch);
        (
            sv.get(&mut scope).unwrap(),
            sl.get(&mut scope).unwrap(),
            sm.get(&mut scope, &k).unwrap(),
            sm.is_empty(&mut scope).unwrap(),
            lv.get(&mut scope).unwrap(),
        )
    };
    let name = factory.name();
    assert_eq!(
        read(&mut *r, 7, &mut scratch),
        (Some(7), vec![7], Some(14), false, Some(7)),
        "{name}: live TTL values survive the restore"
    );
    std::thread::sleep(Duration::from_millis(400));
    for k in [7u64, 8, 199] {
        assert_eq!(
            read(&mut *r, k, &mut scratch),
            (None, vec![], None, true, Some(k)),
            "{name}: an expired value was returned"
        );
    }
    r.compact().unwrap();
    let count = |r: &mut dyn KeyedStateBackend, state: &str| {
        let id = StateId(
            r.descriptors()
                .iter()
                .position(|d| d.name == state)
                .unwrap() as u32,
        );
        let mut n = 0;
        r.scan(id, &mut |_| {
            n += 1;
            Ok(())
        })
        .unwrap();
        n
    };
    for state in ["short-value", "short-list", "short-map"] {
        assert_eq!(
            count(&mut *r, state),
            0,
            "{name}: '{state}' kept expired entries"
        );
    }
    assert_eq!(
        count(&mut *r, "long-value"),
        200,
        "{name}: live entries were dropped"
    );
}

/// A backend without states snapshots and restores to one without states that takes new ones.
pub fn an_empty_backend_snapshots_and_restores(factory: &dyn StateBackendFactory) {
    let mut b = create(factory);
    let snap = snapshot(&mut *b, 7);
    assert!(snap.descriptors.is_empty(), "{}", b.name());
    let scratch = ScratchDir::new();
    let mut restored = restore(factory, upload(snap, &scratch));
    assert!(restored.descriptors().is_empty(), "{}", b.name());
    let s = register(&mut *restored, "s", StateKind::Value);
    assert_eq!(s, StateId(0));
    put(&mut *restored, s, &cell(10, b"k"), b"v");
    assert_eq!(scanned(&mut *restored, s).len(), 1, "{}", b.name());
}

/// A snapshot whose background part runs on another thread while the task goes on writing
/// (several rounds over every state, enough to make a caching backend spill and evict
/// meanwhile) restores exactly the state at its barrier; so does the next one, finished only
/// after more writes.
pub fn a_snapshot_finished_while_heavy_writes_go_on_holds_exactly_the_state_at_its_barrier(
    factory: &dyn StateBackendFactory,
) {
    let mut b = create(factory);
    let name = b.name();
    let states = declare_snapshot_states(&mut *b);
    fill(&mut *b, &states, 0);
    let first = b
        .snapshot(CheckpointId(21))
        .unwrap_or_else(|e| panic!("{name}: snapshot: {e}"));
    let at_first = scan_all(&mut *b);
    let background = std::thread::spawn(move || first.resolve());
    for round in 1..4 {
        fill(&mut *b, &states, round);
    }
    for i in (0..MANY_KEYS).step_by(3) {
        let k = (i + 3000).to_be_bytes();
        delete(&mut *b, states[0], &cell(kg_of(i), &k));
    }
    let first = background
        .join()
        .expect("the background part does not panic")
        .unwrap_or_else(|e| panic!("{name}: resolve: {e}"));
    let second = b
        .snapshot(CheckpointId(22))
        .unwrap_or_else(|e| panic!("{name}: snapshot: {e}"));
    let at_second = scan_all(&mut *b);
    assert!(at_first != at_second, "{name}: the writes changed nothing");
    fill(&mut *b, &states, 4);
    let second = second
        .resolve()
        .unwrap_or_else(|e| panic!("{name}: resolve: {e}"));
    for (snap, expected) in [(first, at_first), (second, at_second)] {
        let checkpoint = snap.checkpoint;
        let scratch = ScratchDir::new();
        let mut restored = restore(factory, upload(snap, &scratch));
        assert!(
            scan_all(&mut *restored) == expected,
            "{name}: {checkpoint} does not hold the state at its barrier"
        );
    }
}

/// Snapshots taken one after another, with writes to a few cells or to everything between
/// them, some dropped before their background part ran (an aborted checkpoint): each finished
/// one restores exactly the state at its barrier, whatever the backend shares between them.
pub fn every_finished_snapshot_of_a_chain_with_dropped_ones_restores_exactly_its_state(
    factory: &dyn StateBackendFactory,
) {
    let mut b = create(factory);
    let name = b.name();
    let states = declare_snapshot_states(&mut *b);
    fill(&mut *b, &states, 0);
    let mut kept = Vec::new();
    for round in 1..9u32 {
        if round % 3 == 0 {
            fill(&mut *b, &states, round);
        } else {
            // A few cells in one key group, so most of the state is as the last snapshot saw it.
            for i in 0..5u32 {
                let k = (i + round * 1000).to_be_bytes();
                put(&mut *b, states[0], &cell(12, &k), &value_of(i, round));
            }
            delete(
                &mut *b,
                states[1],
                &cell(kg_of(round), &round.to_be_bytes()),
            );
        }
        let snap = b
            .snapshot(CheckpointId(u64::from(30 + round)))
            .unwrap_or_else(|e| panic!("{name}: snapshot: {e}"));
        if round % 4 == 1 {
            drop(snap);
            continue;
        }
        let expected = scan_all(&mut *b);
        let snap = snap
            .resolve()
            .unwrap_or_else(|e| panic!("{name}: resolve: {e}"));
        let scratch = ScratchDir::new();
        kept.push((upload(snap, &scratch), scratch, expected));
    }
    assert_eq!(kept.len(), 6, "{name}");
    for (restored, _scratch, expected) in kept {
        let checkpoint = restored.checkpoint;
        let mut backend = restore(factory, restored);
        assert!(
            scan_all(&mut *backend) == expected,
            "{name}: {checkpoint} does not hold the state at its barrier"
        );
    }
}

/// Snapshots a filled backend and uploads it, for the refusal checks.
fn uploaded_snapshot(
    factory: &dyn StateBackendFactory,
    checkpoint: u64,
    to: &ScratchDir,
) -> RestoredSnapshot {
    let mut b = create(factory);
    let states = declare_snapshot_states(&mut *b);
    put(&mut *b, states[0], &cell(10, b"k"), b"v");
    upload(snapshot(&mut *b, checkpoint), to)
}

/// A snapshot that says another backend wrote it is refused, naming the checkpoint.
pub fn a_snapshot_of_another_backend_is_refused_naming_the_checkpoint(
    factory: &dyn StateBackendFactory,
) {
    let scratch = ScratchDir::new();
    let mut restored = uploaded_snapshot(factory, 8, &scratch);
    restored.backend = "another-backend".into();
    let result = factory.restore(&scope_for(RANGE), restored);
    assert_refused(
        factory.name(),
        result,
        CheckpointId(8),
        &["another-backend"],
    );
}

/// A snapshot of a format version the backend does not know is refused, naming the checkpoint.
pub fn a_snapshot_of_another_format_is_refused_naming_the_checkpoint(
    factory: &dyn StateBackendFactory,
) {
    let scratch = ScratchDir::new();
    let mut restored = uploaded_snapshot(factory, 9, &scratch);
    restored.format += 1000;
    let format = restored.format.to_string();
    let result = factory.restore(&scope_for(RANGE), restored);
    assert_refused(factory.name(), result, CheckpointId(9), &[&format]);
}

/// Restoring into a subtask that owns other key groups is refused (rescaling from a checkpoint
/// is not supported), naming the checkpoint and both ranges.
pub fn a_snapshot_of_another_key_group_range_is_refused_naming_both_ranges(
    factory: &dyn StateBackendFactory,
) {
    let scratch = ScratchDir::new();
    let restored = uploaded_snapshot(factory, 10, &scratch);
    let other = KeyGroupRange { start: 10, end: 29 };
    let result = factory.restore(&scope_for(other), restored);
    assert_refused(
        factory.name(),
        result,
        CheckpointId(10),
        &[&RANGE.to_string(), &other.to_string()],
    );
}

/// A snapshot whose files did not all arrive is refused, naming the checkpoint.
pub fn a_snapshot_without_its_files_is_refused_naming_the_checkpoint(
    factory: &dyn StateBackendFactory,
) {
    let scratch = ScratchDir::new();
    let mut restored = uploaded_snapshot(factory, 11, &scratch);
    restored.files.clear();
    let result = factory.restore(&scope_for(RANGE), restored);
    assert_refused(factory.name(), result, CheckpointId(11), &[]);
}
