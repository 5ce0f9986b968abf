//! The in-memory keyed state backend: small state, tests, and the honest baseline the RocksDB
//! backend is measured against.
//!
//! Layout: per state, one [`FxHashMap`] from the encoded cell prefix (`key group ‖ key ‖
//! namespace`, see [`encoding::encode_prefix`]) to a cell: the single value of a value, list
//! or reducing state, or a [`BTreeMap`] from user key to value for a map state. Point reads and
//! writes are one hash lookup with the prefix encoded into a reused scratch buffer (a `get` hit
//! allocates nothing); ordered iteration ([`KeyedStateBackend::scan`]) collects and sorts, since
//! it is off the per-record path.

use crate::backend::{lookup_descriptor, Registration};
use crate::encoding;
use crate::{
    BackendScope, KeyedStateBackend, StateBackendFactory, StateDescriptor, StateEntry, StateError,
    StateId, StateKey, StateKind,
};
use rustc_hash::FxHashMap;
use std::collections::BTreeMap;
use std::mem::size_of;
use weir_types::KeyGroupRange;

/// What an allocator keeps per heap allocation beyond the requested bytes (header, rounding):
/// a conservative figure for glibc malloc.
const ALLOC_OVERHEAD: usize = 16;

/// Bytes a B-tree map spends per entry beyond its keys and values (node slack, edges),
/// estimated from std's node layout (11 slots per node, nodes about two-thirds full).
const BTREE_ENTRY_OVERHEAD: usize = 24;

/// One cell of a state: what lives under one `key group ‖ key ‖ namespace` prefix.
#[derive(Debug)]
enum Cell {
    /// The value of a value, list or reducing state.
    Value(Box<[u8]>),
    /// The entries of a map state, by user key (ordered, so `prefix_for_each` needs no sort).
    Map(BTreeMap<Box<[u8]>, Box<[u8]>>),
}

/// One declared state's cells.
#[derive(Debug, Default)]
struct HeapState {
    cells: FxHashMap<Box<[u8]>, Cell>,
}

/// Keyed state held in hash maps on the task's heap. See the [module docs](self).
#[derive(Debug)]
pub struct HeapStateBackend {
    range: KeyGroupRange,
    descriptors: Vec<StateDescriptor>,
    states: Vec<HeapState>,
    /// Reused for encoding lookup keys.
    scratch: Vec<u8>,
}

impl HeapStateBackend {
    /// An empty backend owning the key groups in `range`.
    pub fn new(range: KeyGroupRange) -> Self {
        Self {
            range,
            descriptors: Vec::new(),
            states: Vec::new(),
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
        Ok(id)
    }

    fn descriptors(&self) -> &[StateDescriptor] {
        &self.descriptors
    }

    fn get(&mut self, state: StateId, key: &StateKey<'_>) -> Result<Option<&[u8]>, StateError> {
        let idx = self.prepare(state, key)?;
        let cell = self.states[idx].cells.get(&self.scratch[..]);
        Ok(match cell {
            None => None,
            Some(Cell::Value(v)) => Some(&v[..]),
            Some(Cell::Map(map)) => map.get(key.user_key).map(|v| &v[..]),
        })
    }

    fn put(&mut self, state: StateId, key: &StateKey<'_>, value: &[u8]) -> Result<(), StateError> {
        let idx = self.prepare(state, key)?;
        let is_map = self.descriptors[idx].kind == StateKind::Map;
        let cells = &mut self.states[idx].cells;
        match cells.get_mut(&self.scratch[..]) {
            Some(Cell::Value(slot)) => overwrite(slot, value),
            Some(Cell::Map(map)) => match map.get_mut(key.user_key) {
                Some(slot) => overwrite(slot, value),
                None => {
                    map.insert(key.user_key.into(), value.into());
                }
            },
            None => {
                let cell = if is_map {
                    Cell::Map(BTreeMap::from([(key.user_key.into(), value.into())]))
                } else {
                    Cell::Value(value.into())
                };
                cells.insert(self.scratch[..].into(), cell);
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
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::conformance_tests!(|range| Box::new(HeapStateBackend::new(range)));

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
