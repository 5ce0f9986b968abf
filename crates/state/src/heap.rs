//! The in-memory keyed state backend: small state, tests, and the honest baseline the RocksDB
//! backend is measured against.
//!
//! Layout: per state, one [`FxHashMap`] from the encoded cell prefix (`key group ‖ key ‖
//! namespace`, see [`encoding::encode_prefix`]) to a cell: the single value of a value, list
//! or reducing state, or a [`BTreeMap`] from user key to value for a map state. Point reads and
//! writes are one hash lookup with the prefix encoded into a reused scratch buffer (a `get` hit
//! allocates nothing); ordered iteration ([`KeyedStateBackend::scan`]) collects and sorts, since
//! it is off the per-record path.
//!
//! # Snapshots
//! [`KeyedStateBackend::snapshot`] serialises the whole state on the task thread into one
//! private file, [`HEAP_SNAPSHOT_FILE`], held in memory: the magic `WHSS`, the format version
//! ([`HEAP_SNAPSHOT_FORMAT`], u16 big-endian), then a postcard body with the key-group range,
//! the descriptors and every cell of every state, exactly as the maps hold them.
//! [`StateBackendFactory::restore`] reads it back and checks it cell by cell.

use crate::backend::{lookup_descriptor, Registration};
use crate::encoding;
use crate::ttl;
use crate::{
    BackendScope, KeyedStateBackend, LocalSnapshot, RestoredSnapshot, SnapshotContent,
    SnapshotFile, StateBackendFactory, StateDescriptor, StateEntry, StateError, StateId, StateKey,
};
use rustc_hash::{FxHashMap, FxHashSet};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::mem::size_of;
use weir_types::{CheckpointId, KeyGroupRange};

/// The name of the heap backend's one snapshot file.
pub const HEAP_SNAPSHOT_FILE: &str = "heap-state";

/// The heap snapshot's format version: [`LocalSnapshot::format`], and the file's header.
pub const HEAP_SNAPSHOT_FORMAT: u16 = 1;

/// The first bytes of a heap snapshot file.
const HEAP_SNAPSHOT_MAGIC: &[u8; 4] = b"WHSS";

/// What an allocator keeps per heap allocation beyond the requested bytes (header, rounding):
/// a conservative figure for glibc malloc.
const ALLOC_OVERHEAD: usize = 16;

/// Bytes a B-tree map spends per entry beyond its keys and values (node slack, edges),
/// estimated from std's node layout (11 slots per node, nodes about two-thirds full).
const BTREE_ENTRY_OVERHEAD: usize = 24;

/// One cell of a state: what lives under one `key group ‖ key ‖ namespace` prefix.
#[derive(Debug, Serialize, Deserialize)]
enum Cell {
    /// The value of a value, list or reducing state.
    Value(Box<[u8]>),
    /// The entries of a map state, by user key (ordered, so `prefix_for_each` needs no sort).
    Map(BTreeMap<Box<[u8]>, Box<[u8]>>),
}

/// One declared state's cells.
#[derive(Debug, Default, Serialize, Deserialize)]
struct HeapState {
    cells: FxHashMap<Box<[u8]>, Cell>,
}

/// Keyed state held in hash maps on the task's heap. See the [module docs](self).
#[derive(Debug)]
pub struct HeapStateBackend {
    range: KeyGroupRange,
    descriptors: Vec<StateDescriptor>,
    states: Vec<HeapState>,
    /// Per state with a TTL, its entries in about the order they expire (rebuilt on restore):
    /// a few are checked on every access and dropped when expired (incremental cleanup).
    ttl_queues: Vec<VecDeque<TtlEntry>>,
    /// Per state, the entries (cell key ‖ user key) its cleanup queue holds: an entry is queued
    /// once however often it is deleted and created again, so the queue never outgrows the
    /// state.
    ttl_queued: Vec<FxHashSet<Box<[u8]>>>,
    /// Reused for encoding lookup keys.
    scratch: Vec<u8>,
}

/// One entry of a TTL state as its cleanup queue knows it.
#[derive(Debug)]
struct TtlEntry {
    expires: i64,
    cell: Box<[u8]>,
    user_key: Box<[u8]>,
}

/// The key an entry is queued under: its cell key, then its user key (cell keys are
/// self-delimiting, so the pair is unambiguous).
fn queued_key(cell: &[u8], user_key: &[u8]) -> Box<[u8]> {
    [cell, user_key].concat().into_boxed_slice()
}

/// Entries of a TTL state checked per access.
const TTL_CLEANUP_PER_ACCESS: usize = 2;

/// The cleanup queues of `states`: every entry of each TTL state, earliest expiry first.
fn ttl_queues(descriptors: &[StateDescriptor], states: &[HeapState]) -> Vec<VecDeque<TtlEntry>> {
    descriptors
        .iter()
        .zip(states)
        .map(|(d, state)| {
            let mut q: Vec<TtlEntry> = Vec::new();
            if d.kind.has_ttl() {
                for (cell, c) in &state.cells {
                    let mut push = |uk: &[u8], v: &[u8]| {
                        if let Some((expires, _)) = ttl::split(v) {
                            q.push(TtlEntry {
                                expires,
                                cell: cell.clone(),
                                user_key: uk.into(),
                            });
                        }
                    };
                    match c {
                        Cell::Value(v) => push(&[], v),
                        Cell::Map(map) => map.iter().for_each(|(uk, v)| push(uk, v)),
                    }
                }
            }
            q.sort_by_key(|e| e.expires);
            q.into()
        })
        .collect()
}

/// The membership sets of `queues` (see `HeapStateBackend::ttl_queued`).
fn queued_sets(queues: &[VecDeque<TtlEntry>]) -> Vec<FxHashSet<Box<[u8]>>> {
    queues
        .iter()
        .map(|q| q.iter().map(|e| queued_key(&e.cell, &e.user_key)).collect())
        .collect()
}

impl HeapStateBackend {
    /// An empty backend owning the key groups in `range`.
    pub fn new(range: KeyGroupRange) -> Self {
        Self {
            range,
            descriptors: Vec::new(),
            states: Vec::new(),
            ttl_queues: Vec::new(),
            ttl_queued: Vec::new(),
            scratch: Vec::with_capacity(64),
        }
    }

    /// Checks `state` and `key` and encodes the cell prefix into `self.scratch`; returns the
    /// state's index.
    fn prepare(&mut self, state: StateId, key: &StateKey<'_>) -> Result<usize, StateError> {
        let idx = self.check(state, key)?;
        let desc = &self.descriptors[idx];
        if !desc.kind.has_user_keys() && !key.user_key.is_empty() {
            return Err(user_key_on_non_map_state(&desc.name));
        }
        self.scratch.clear();
        encoding::encode_prefix(&mut self.scratch, key);
        Ok(idx)
    }

    /// Incremental TTL cleanup of state `idx`: looks at the few entries that expire first
    /// and drops those whose time passed; an entry renewed since goes back in the queue
    /// with its new expiry.
    fn clean_expired(&mut self, idx: usize) {
        let now = ttl::now_ms();
        for _ in 0..TTL_CLEANUP_PER_ACCESS {
            let queue = &mut self.ttl_queues[idx];
            if queue.front().is_none_or(|e| e.expires > now) {
                return;
            }
            let entry = queue.pop_front().expect("checked above");
            let cells = &mut self.states[idx].cells;
            let current = match cells.get(&entry.cell) {
                None => None,
                Some(Cell::Value(v)) => Some(v),
                Some(Cell::Map(map)) => map.get(&entry.user_key),
            };
            let Some(expires) = current.and_then(|v| ttl::split(v)).map(|(e, _)| e) else {
                self.ttl_queued[idx].remove(&queued_key(&entry.cell, &entry.user_key));
                continue;
            };
            if expires > now {
                queue.push_back(TtlEntry { expires, ..entry });
                continue;
            }
            let now_empty = match cells.get_mut(&entry.cell) {
                Some(Cell::Map(map)) => {
                    map.remove(&entry.user_key);
                    map.is_empty()
                }
                _ => true,
            };
            if now_empty {
                cells.remove(&entry.cell);
            }
            self.ttl_queued[idx].remove(&queued_key(&entry.cell, &entry.user_key));
        }
    }

    /// How many entries of TTL states the cleanup queues track (tests).
    #[cfg(test)]
    fn ttl_tracked(&self) -> usize {
        self.ttl_queues.iter().map(VecDeque::len).sum()
    }

    /// Checks that `state` is known and that `key` lies in the owned range.
    fn check(&self, state: StateId, key: &StateKey<'_>) -> Result<usize, StateError> {
        let idx = state_index(state, self.states.len())?;
        if !self.range.contains(key.key_group) {
            return Err(StateError::KeyGroupOutOfRange {
                key_group: key.key_group,
                range: self.range,
            });
        }
        Ok(idx)
    }

    /// An estimate of the bytes one state's cells occupy, hash table included.
    fn state_bytes(state: &HeapState) -> usize {
        let slot = size_of::<(Box<[u8]>, Cell)>() + 1; // + the table's control byte
        let mut bytes = state.cells.capacity() * slot;
        for (key, cell) in &state.cells {
            bytes += key.len() + ALLOC_OVERHEAD;
            bytes += match cell {
                Cell::Value(v) => v.len() + ALLOC_OVERHEAD,
                Cell::Map(map) => map
                    .iter()
                    .map(|(uk, v)| {
                        uk.len()
                            + v.len()
                            + 2 * ALLOC_OVERHEAD
                            + 2 * size_of::<Box<[u8]>>()
                            + BTREE_ENTRY_OVERHEAD
                    })
                    .sum::<usize>(),
            };
        }
        bytes
    }
}

/// A heap snapshot's body as written, borrowed from the backend.
#[derive(Serialize)]
struct SnapshotBodyRef<'a> {
    key_groups: KeyGroupRange,
    descriptors: &'a [StateDescriptor],
    states: &'a [HeapState],
}

/// A heap snapshot's body as read back.
#[derive(Deserialize)]
struct SnapshotBody {
    key_groups: KeyGroupRange,
    descriptors: Vec<StateDescriptor>,
    states: Vec<HeapState>,
}

impl HeapStateBackend {
    /// The bytes of [`HEAP_SNAPSHOT_FILE`]: magic, version, postcard body.
    fn encode_snapshot(&self, checkpoint: CheckpointId) -> Result<Vec<u8>, StateError> {
        let mut out = Vec::with_capacity(1 << 12);
        out.extend_from_slice(HEAP_SNAPSHOT_MAGIC);
        out.extend_from_slice(&HEAP_SNAPSHOT_FORMAT.to_be_bytes());
        let body = SnapshotBodyRef {
            key_groups: self.range,
            descriptors: &self.descriptors,
            states: &self.states,
        };
        postcard::to_extend(&body, out).map_err(|e| StateError::Snapshot {
            checkpoint,
            backend: "heap",
            op: format!("serialise {HEAP_SNAPSHOT_FILE}"),
            detail: e.to_string(),
        })
    }

    /// Rebuilds a backend from a snapshot's [`HEAP_SNAPSHOT_FILE`], checking the header, that
    /// the body matches `snapshot`'s description, and that every cell lies in the range and has
    /// its state's shape.
    fn decode_snapshot(snapshot: &RestoredSnapshot, bytes: &[u8]) -> Result<Self, StateError> {
        let bad =
            |detail: String| snapshot.error("heap", format!("{HEAP_SNAPSHOT_FILE}: {detail}"));
        let (magic, rest) = bytes.split_at(bytes.len().min(HEAP_SNAPSHOT_MAGIC.len()));
        if magic != HEAP_SNAPSHOT_MAGIC {
            return Err(bad("not a heap snapshot (bad magic)".into()));
        }
        let version = rest
            .get(..2)
            .map(|v| u16::from_be_bytes([v[0], v[1]]))
            .ok_or_else(|| bad("truncated header".into()))?;
        if version != HEAP_SNAPSHOT_FORMAT {
            return Err(bad(format!(
                "file format {version} is not the supported format {HEAP_SNAPSHOT_FORMAT}"
            )));
        }
        let (body, trailing): (SnapshotBody, &[u8]) = postcard::take_from_bytes(&rest[2..])
            .map_err(|e| bad(format!("cannot decode the body: {e}")))?;
        if !trailing.is_empty() {
            return Err(bad(format!("{} bytes after the body", trailing.len())));
        }
        if body.key_groups != snapshot.key_groups {
            return Err(bad(format!(
                "the file covers key groups {} but the snapshot says {}",
                body.key_groups, snapshot.key_groups
            )));
        }
        if body.descriptors != snapshot.descriptors {
            return Err(bad(format!(
                "the file declares states {:?} but the snapshot says {:?}",
                body.descriptors, snapshot.descriptors
            )));
        }
        if body.states.len() != body.descriptors.len() {
            return Err(bad(format!(
                "{} states for {} descriptors",
                body.states.len(),
                body.descriptors.len()
            )));
        }
        let mut seen = Vec::with_capacity(body.descriptors.len());
        for (descriptor, state) in body.descriptors.iter().zip(&body.states) {
            if seen.contains(&&descriptor.name) {
                return Err(bad(format!(
                    "state '{}' is declared twice",
                    descriptor.name
                )));
            }
            seen.push(&descriptor.name);
            check_cells(descriptor, state, body.key_groups).map_err(bad)?;
        }
        let ttl_queues = ttl_queues(&body.descriptors, &body.states);
        let ttl_queued = queued_sets(&ttl_queues);
        Ok(Self {
            range: body.key_groups,
            descriptors: body.descriptors,
            states: body.states,
            ttl_queues,
            ttl_queued,
            scratch: Vec::with_capacity(64),
        })
    }
}

/// Checks that every cell of `state` has a well-formed prefix in `range` and the shape of
/// `descriptor`'s kind.
fn check_cells(
    descriptor: &StateDescriptor,
    state: &HeapState,
    range: KeyGroupRange,
) -> Result<(), String> {
    let name = &descriptor.name;
    for (prefix, cell) in &state.cells {
        let key = encoding::decode_state_key(prefix)
            .filter(|k| k.user_key.is_empty())
            .ok_or_else(|| format!("state '{name}' holds a malformed cell key"))?;
        if !range.contains(key.key_group) {
            return Err(format!(
                "state '{name}' holds key group {} outside {range}",
                key.key_group
            ));
        }
        match (cell, descriptor.kind.has_user_keys()) {
            (Cell::Map(map), true) if !map.is_empty() => {}
            (Cell::Value(_), false) => {}
            _ => {
                return Err(format!(
                    "state '{name}' ({:?}) holds a cell of another shape",
                    descriptor.kind
                ))
            }
        }
    }
    Ok(())
}

/// The index of `state` in a backend with `len` states, or [`StateError::UnknownState`].
fn state_index(state: StateId, len: usize) -> Result<usize, StateError> {
    let idx = state.0 as usize;
    if idx < len {
        Ok(idx)
    } else {
        Err(StateError::UnknownState(state.0))
    }
}

/// The error for a non-empty user key on a state that has none (value, list, reducing).
pub(crate) fn user_key_on_non_map_state(state: &str) -> StateError {
    StateError::MalformedKey {
        state: state.to_string(),
        detail: "a user key was given for a state that is not a map state".into(),
    }
}

/// Overwrites `slot` with `value`, reusing its allocation when the length is unchanged.
fn overwrite(slot: &mut Box<[u8]>, value: &[u8]) {
    if slot.len() == value.len() {
        slot.copy_from_slice(value);
    } else {
        *slot = value.into();
    }
}

impl KeyedStateBackend for HeapStateBackend {
    fn name(&self) -> &'static str {
        "heap"
    }

    fn key_group_range(&self) -> KeyGroupRange {
        self.range
    }

    fn register(&mut self, descriptor: &StateDescriptor) -> Result<StateId, StateError> {
        let id = match lookup_descriptor(&self.descriptors, descriptor, "heap")? {
            Registration::Known(id) => return Ok(id),
            Registration::New(id) => id,
        };
        self.descriptors.push(descriptor.clone());
        self.states.push(HeapState::default());
        self.ttl_queues.push(VecDeque::new());
        self.ttl_queued.push(FxHashSet::default());
        Ok(id)
    }

    fn descriptors(&self) -> &[StateDescriptor] {
        &self.descriptors
    }

    fn get(&mut self, state: StateId, key: &StateKey<'_>) -> Result<Option<&[u8]>, StateError> {
        let idx = self.prepare(state, key)?;
        if self.descriptors[idx].kind.has_ttl() {
            self.clean_expired(idx);
        }
        let cell = self.states[idx].cells.get(&self.scratch[..]);
        Ok(match cell {
            None => None,
            Some(Cell::Value(v)) => Some(&v[..]),
            Some(Cell::Map(map)) => map.get(key.user_key).map(|v| &v[..]),
        })
    }

    fn put(&mut self, state: StateId, key: &StateKey<'_>, value: &[u8]) -> Result<(), StateError> {
        let idx = self.prepare(state, key)?;
        let is_map = self.descriptors[idx].kind.has_user_keys();
        let cells = &mut self.states[idx].cells;
        let created = match cells.get_mut(&self.scratch[..]) {
            Some(Cell::Value(slot)) => {
                overwrite(slot, value);
                false
            }
            Some(Cell::Map(map)) => match map.get_mut(key.user_key) {
                Some(slot) => {
                    overwrite(slot, value);
                    false
                }
                None => {
                    map.insert(key.user_key.into(), value.into());
                    true
                }
            },
            None => {
                let cell = if is_map {
                    Cell::Map(BTreeMap::from([(key.user_key.into(), value.into())]))
                } else {
                    Cell::Value(value.into())
                };
                cells.insert(self.scratch[..].into(), cell);
                true
            }
        };
        if self.descriptors[idx].kind.has_ttl() {
            if created {
                if let Some((expires, _)) = ttl::split(value) {
                    let queued = queued_key(&self.scratch, key.user_key);
                    if self.ttl_queued[idx].insert(queued) {
                        self.ttl_queues[idx].push_back(TtlEntry {
                            expires,
                            cell: self.scratch[..].into(),
                            user_key: key.user_key.into(),
                        });
                    }
                }
            }
            self.clean_expired(idx);
        }
        Ok(())
    }

    fn compact(&mut self) -> Result<(), StateError> {
        let now = ttl::now_ms();
        for idx in 0..self.states.len() {
            while self.ttl_queues[idx]
                .front()
                .is_some_and(|e| e.expires <= now)
            {
                self.clean_expired(idx);
            }
        }
        Ok(())
    }

    fn delete(&mut self, state: StateId, key: &StateKey<'_>) -> Result<(), StateError> {
        let idx = self.prepare(state, key)?;
        let cells = &mut self.states[idx].cells;
        let now_empty = match cells.get_mut(&self.scratch[..]) {
            None => false,
            Some(Cell::Value(_)) => true,
            Some(Cell::Map(map)) => {
                map.remove(key.user_key);
                map.is_empty()
            }
        };
        if now_empty {
            cells.remove(&self.scratch[..]);
        }
        Ok(())
    }

    fn prefix_for_each(
        &mut self,
        state: StateId,
        prefix: &StateKey<'_>,
        f: &mut crate::UserKeyVisitor<'_>,
    ) -> Result<(), StateError> {
        let idx = self.check(state, prefix)?;
        self.scratch.clear();
        encoding::encode_prefix(&mut self.scratch, prefix);
        match self.states[idx].cells.get(&self.scratch[..]) {
            None => Ok(()),
            Some(Cell::Value(v)) => f(&[], v),
            Some(Cell::Map(map)) => map.iter().try_for_each(|(uk, v)| f(uk, v)),
        }
    }

    fn delete_prefix(&mut self, state: StateId, prefix: &StateKey<'_>) -> Result<(), StateError> {
        let idx = self.check(state, prefix)?;
        self.scratch.clear();
        encoding::encode_prefix(&mut self.scratch, prefix);
        self.states[idx].cells.remove(&self.scratch[..]);
        Ok(())
    }

    fn scan(
        &mut self,
        state: StateId,
        f: &mut dyn FnMut(&StateEntry<'_>) -> Result<(), StateError>,
    ) -> Result<(), StateError> {
        let idx = state_index(state, self.states.len())?;
        let name = &self.descriptors[idx].name;
        // Prefixes are self-delimiting (no cell's prefix is a prefix of another's), so sorting
        // cells by prefix and then walking each map in user-key order yields ascending
        // encoded-key order.
        let mut cells: Vec<(&[u8], &Cell)> = self.states[idx]
            .cells
            .iter()
            .map(|(k, c)| (&k[..], c))
            .collect();
        cells.sort_unstable_by(|a, b| a.0.cmp(b.0));
        for (prefix, cell) in cells {
            let key = encoding::decode_state_key_checked(name, prefix)?;
            match cell {
                Cell::Value(v) => f(&StateEntry { key, value: v })?,
                Cell::Map(map) => {
                    for (uk, v) in map {
                        let key = StateKey {
                            user_key: uk,
                            ..key
                        };
                        f(&StateEntry { key, value: v })?;
                    }
                }
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StateError> {
        // Nothing is buffered: the maps are the store.
        Ok(())
    }

    fn size_bytes(&mut self) -> Result<u64, StateError> {
        let bytes: usize = self.states.iter().map(Self::state_bytes).sum();
        Ok(bytes as u64)
    }

    /// Serialises every state into one private in-memory file, [`HEAP_SNAPSHOT_FILE`] (see the
    /// [module docs](self#snapshots)).
    fn snapshot(&mut self, checkpoint: CheckpointId) -> Result<LocalSnapshot, StateError> {
        let bytes = self.encode_snapshot(checkpoint)?;
        Ok(LocalSnapshot {
            checkpoint,
            backend: "heap",
            format: u32::from(HEAP_SNAPSHOT_FORMAT),
            key_groups: self.range,
            descriptors: self.descriptors.clone(),
            files: vec![SnapshotFile {
                name: HEAP_SNAPSHOT_FILE.to_string(),
                content: SnapshotContent::Bytes(bytes),
                shareable: false,
            }],
            cleanup_dir: None,
            pending: None,
        })
    }
}

/// Creates a [`HeapStateBackend`] per keyed operator subtask.
#[derive(Clone, Debug, Default)]
pub struct HeapStateBackendFactory {
    _private: (),
}

impl HeapStateBackendFactory {
    /// The factory. The heap backend has no settings: its state lives on the task's heap,
    /// bounded only by the process's memory.
    pub fn new() -> Self {
        Self::default()
    }
}

impl StateBackendFactory for HeapStateBackendFactory {
    fn name(&self) -> &'static str {
        "heap"
    }

    fn create(&self, scope: &BackendScope) -> Result<Box<dyn KeyedStateBackend>, StateError> {
        Ok(Box::new(HeapStateBackend::new(scope.key_group_range)))
    }

    /// Reads [`HEAP_SNAPSHOT_FILE`] (the snapshot's only file) back into maps; the restored
    /// backend hands out the snapshot's state ids.
    fn restore(
        &self,
        scope: &BackendScope,
        snapshot: RestoredSnapshot,
    ) -> Result<Box<dyn KeyedStateBackend>, StateError> {
        snapshot.check_compatible(
            "heap",
            u32::from(HEAP_SNAPSHOT_FORMAT),
            scope.key_group_range,
        )?;
        if let Some((name, _)) = snapshot.files.iter().find(|(n, _)| n != HEAP_SNAPSHOT_FILE) {
            return Err(snapshot.error("heap", format!("unexpected file '{name}'")));
        }
        let path = snapshot.file(HEAP_SNAPSHOT_FILE).ok_or_else(|| {
            snapshot.error("heap", format!("the file {HEAP_SNAPSHOT_FILE} is missing"))
        })?;
        let bytes = std::fs::read(path)
            .map_err(|e| snapshot.error("heap", format!("cannot read {}: {e}", path.display())))?;
        Ok(Box::new(HeapStateBackend::decode_snapshot(
            &snapshot, &bytes,
        )?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StateKind;

    crate::conformance_tests!(|range| Box::new(HeapStateBackend::new(range)));

    #[test]
    fn a_value_read_with_ttl_after_access_lives_on_and_one_only_written_expires() {
        use crate::{KeyedScope, StateRegistry, StateTtl};
        use std::time::Duration;
        use weir_types::KeyGroup;
        let mut b = HeapStateBackend::new(KeyGroupRange { start: 0, end: 9 });
        let (read, written) = {
            let mut r = StateRegistry::new(&mut b);
            (
                r.value_state_with_ttl::<u64>(
                    "read",
                    StateTtl::after_access(Duration::from_millis(300)),
                )
                .unwrap(),
                r.value_state_with_ttl::<u64>(
                    "written",
                    StateTtl::after_write(Duration::from_millis(300)),
                )
                .unwrap(),
            )
        };
        let mut scratch = Vec::new();
        let mut scope = KeyedScope::new(&mut b, KeyGroup(1), b"k", &mut scratch);
        read.update(&mut scope, &1).unwrap();
        written.update(&mut scope, &2).unwrap();
        for _ in 0..4 {
            std::thread::sleep(Duration::from_millis(100));
            assert_eq!(
                read.get(&mut scope).unwrap(),
                Some(1),
                "each read renews it"
            );
            let _ = written.get(&mut scope).unwrap();
        }
        assert_eq!(
            written.get(&mut scope).unwrap(),
            None,
            "reads do not renew it"
        );
    }

    #[test]
    fn a_ttl_entry_cleared_and_written_again_on_every_record_is_queued_once() {
        use crate::{KeyedScope, StateRegistry, StateTtl};
        use weir_types::KeyGroup;
        let mut b = HeapStateBackend::new(KeyGroupRange { start: 0, end: 9 });
        let ttl = StateTtl::after_write(std::time::Duration::from_secs(3600));
        let list = StateRegistry::new(&mut b)
            .list_state_with_ttl::<u64>("l", ttl)
            .unwrap();
        let mut scratch = Vec::new();
        for i in 0..1000u64 {
            let mut scope = KeyedScope::new(&mut b, KeyGroup(1), b"hot", &mut scratch);
            list.clear(&mut scope).unwrap();
            list.add(&mut scope, &i).unwrap();
        }
        assert_eq!(b.ttl_tracked(), 1);
    }

    #[test]
    fn expired_ttl_entries_leave_the_heap_a_few_per_access_without_a_sweep() {
        use crate::{KeyedScope, StateRegistry, StateTtl};
        use weir_types::KeyGroup;
        let mut b = HeapStateBackend::new(KeyGroupRange { start: 0, end: 9 });
        let ttl = StateTtl::after_write(std::time::Duration::from_millis(100));
        let v = StateRegistry::new(&mut b)
            .value_state_with_ttl::<u64>("v", ttl)
            .unwrap();
        let mut scratch = Vec::new();
        for k in 0..10u64 {
            let key = k.to_be_bytes();
            v.update(
                &mut KeyedScope::new(&mut b, KeyGroup(1), &key, &mut scratch),
                &k,
            )
            .unwrap();
        }
        assert_eq!(b.ttl_tracked(), 10);
        std::thread::sleep(std::time::Duration::from_millis(150));
        // Writes of another key: each one checks two of the expired entries.
        for round in 0..5u64 {
            v.update(
                &mut KeyedScope::new(&mut b, KeyGroup(2), b"fresh", &mut scratch),
                &round,
            )
            .unwrap();
        }
        assert_eq!(b.states[0].cells.len(), 1, "only the fresh key is left");
        assert_eq!(b.ttl_tracked(), 1);
    }

    mod snapshots {
        use super::*;

        crate::snapshot_conformance_tests!(|check| check(&HeapStateBackendFactory::new()));
    }

    /// A heap backend with one value state holding one cell, and its snapshot's bytes.
    fn snapshot_bytes() -> (HeapStateBackend, Vec<u8>) {
        let mut b = HeapStateBackend::new(KeyGroupRange { start: 0, end: 9 });
        let s = b
            .register(&StateDescriptor {
                name: "s".into(),
                kind: StateKind::Value,
            })
            .unwrap();
        let key = StateKey {
            key_group: weir_types::KeyGroup(3),
            key: b"k",
            namespace: b"",
            user_key: b"",
        };
        b.put(s, &key, b"v").unwrap();
        let snapshot = b.snapshot(CheckpointId(4)).unwrap();
        let [file] = &snapshot.files[..] else {
            panic!("{snapshot:?}")
        };
        assert_eq!(file.name, HEAP_SNAPSHOT_FILE);
        assert!(!file.shareable);
        let SnapshotContent::Bytes(bytes) = &file.content else {
            panic!("{snapshot:?}")
        };
        (b, bytes.clone())
    }

    /// Restores a snapshot of [`snapshot_bytes`]'s backend whose file holds `bytes`.
    fn restore_from(bytes: &[u8]) -> Result<Box<dyn KeyedStateBackend>, StateError> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("weir-heap-restore-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(HEAP_SNAPSHOT_FILE);
        std::fs::write(&path, bytes).unwrap();
        let range = KeyGroupRange { start: 0, end: 9 };
        let snapshot = RestoredSnapshot {
            checkpoint: CheckpointId(4),
            backend: "heap".into(),
            format: 1,
            key_groups: range,
            descriptors: vec![StateDescriptor {
                name: "s".into(),
                kind: StateKind::Value,
            }],
            files: vec![(HEAP_SNAPSHOT_FILE.into(), path)],
            dir: dir.clone(),
        };
        let scope = BackendScope {
            operator_uid: weir_types::OperatorUid::new("op").unwrap(),
            subtask: weir_types::SubtaskIndex(0),
            parallelism: 1,
            max_parallelism: 10,
            key_group_range: range,
            keyed_subtasks_in_process: 1,
        };
        let result = HeapStateBackendFactory::new().restore(&scope, snapshot);
        std::fs::remove_dir_all(&dir).unwrap();
        result
    }

    #[test]
    fn fuzzed_heap_snapshot_files_are_refused_or_restored_never_a_panic_or_a_hang() {
        let (_, small) = snapshot_bytes();
        let mut b = HeapStateBackend::new(KeyGroupRange { start: 0, end: 9 });
        let s = b
            .register(&StateDescriptor {
                name: "s".into(),
                kind: StateKind::Value,
            })
            .unwrap();
        for kg in 0..10u16 {
            let key = StateKey {
                key_group: weir_types::KeyGroup(kg),
                key: b"key",
                namespace: b"ns",
                user_key: b"",
            };
            b.put(s, &key, &[kg as u8; 5]).unwrap();
        }
        let SnapshotContent::Bytes(big) = &b.snapshot(CheckpointId(4)).unwrap().files[0].content
        else {
            panic!("a heap snapshot is bytes")
        };
        let range = KeyGroupRange { start: 0, end: 9 };
        let snapshot = RestoredSnapshot {
            checkpoint: CheckpointId(4),
            backend: "heap".into(),
            format: 1,
            key_groups: range,
            descriptors: vec![StateDescriptor {
                name: "s".into(),
                kind: StateKind::Value,
            }],
            files: Vec::new(),
            dir: std::env::temp_dir(),
        };
        weir_fuzz::run("heap snapshot", &[small, big.clone()], |bytes| {
            let _ = HeapStateBackend::decode_snapshot(&snapshot, bytes);
        });
    }

    fn refusal(bytes: &[u8]) -> String {
        match restore_from(bytes) {
            Ok(_) => panic!("restored from damaged bytes"),
            Err(e @ StateError::Restore { .. }) => e.to_string(),
            Err(e) => panic!("expected a restore error, got {e:?}"),
        }
    }

    #[test]
    fn a_heap_snapshot_file_starts_with_the_magic_and_the_format_version() {
        let (_, bytes) = snapshot_bytes();
        assert_eq!(&bytes[..6], b"WHSS\x00\x01");
        assert!(restore_from(&bytes).is_ok());
    }

    #[test]
    fn a_damaged_heap_snapshot_is_refused_naming_the_checkpoint_and_the_file() {
        let (_, bytes) = snapshot_bytes();
        let mut bad_magic = bytes.clone();
        bad_magic[0] = b'X';
        let mut other_version = bytes.clone();
        other_version[5] = 2;
        let mut trailing = bytes.clone();
        trailing.push(0);
        let truncated = &bytes[..bytes.len() - 1];
        for (case, damaged) in [
            ("bad magic", &bad_magic[..]),
            ("format 2", &other_version[..]),
            ("after the body", &trailing[..]),
            ("decode", truncated),
            ("header", &bytes[..5]),
        ] {
            let message = refusal(damaged);
            assert!(message.contains("chk-4"), "{case}: {message}");
            assert!(message.contains(HEAP_SNAPSHOT_FILE), "{case}: {message}");
            assert!(message.contains(case), "{case}: {message}");
        }
    }

    #[test]
    fn a_heap_snapshot_with_a_cell_outside_its_range_is_refused() {
        let (b, _) = snapshot_bytes();
        // The same state with one more cell, in key group 50: outside the file's 0..=9.
        let mut states = b.states;
        let mut prefix = Vec::new();
        encoding::encode_prefix(
            &mut prefix,
            &StateKey {
                key_group: weir_types::KeyGroup(50),
                key: b"k",
                namespace: b"",
                user_key: b"",
            },
        );
        states[0]
            .cells
            .insert(prefix.into(), Cell::Value(Box::from(&b"v"[..])));
        let body = SnapshotBodyRef {
            key_groups: KeyGroupRange { start: 0, end: 9 },
            descriptors: &b.descriptors,
            states: &states,
        };
        let bytes = [&b"WHSS\x00\x01"[..], &postcard::to_stdvec(&body).unwrap()].concat();
        let message = refusal(&bytes);
        assert!(message.contains("kg-50"), "{message}");
    }

    #[test]
    fn size_bytes_grows_with_the_state_held() {
        let mut b = HeapStateBackend::new(KeyGroupRange { start: 0, end: 9 });
        let s = b
            .register(&StateDescriptor {
                name: "s".into(),
                kind: StateKind::Value,
            })
            .unwrap();
        let empty = b.size_bytes().unwrap();
        for i in 0u32..1000 {
            let k = i.to_be_bytes();
            let key = StateKey {
                key_group: weir_types::KeyGroup(3),
                key: &k,
                namespace: b"",
                user_key: b"",
            };
            b.put(s, &key, &[0u8; 100]).unwrap();
        }
        let full = b.size_bytes().unwrap();
        assert!(full >= empty + 1000 * 104, "{empty} -> {full}");
    }
}
