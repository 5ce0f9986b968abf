//! The backend contract.

use crate::snapshot::{LocalSnapshot, RestoredSnapshot};
use crate::StateError;
use weir_types::{CheckpointId, KeyGroup, KeyGroupRange, OperatorUid, SubtaskIndex};

/// The kinds of keyed state. A state's kind is declared up front and never changes.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum StateKind {
    /// One value per key and namespace.
    Value,
    /// A list per key and namespace, stored as one value (see [`crate::ListState`]).
    List,
    /// A map per key and namespace: one entry per user key.
    Map,
    /// One value per key and namespace, combined with a reduce function on add.
    Reducing,
    /// A value with a time to live: its bytes start with the expiry ([`crate::ttl`]).
    ValueTtl,
    /// A list with a time to live: its cell starts with the expiry.
    ListTtl,
    /// A map with a time to live: each entry starts with its own expiry.
    MapTtl,
}

impl StateKind {
    /// Whether entries of this kind carry a user key (map states) or not (all the others,
    /// which store exactly one cell per key and namespace, with an empty user key).
    pub fn has_user_keys(self) -> bool {
        matches!(self, StateKind::Map | StateKind::MapTtl)
    }

    /// Whether every stored value starts with its expiry ([`crate::ttl`]): backends may drop
    /// those whose time passed.
    pub fn has_ttl(self) -> bool {
        matches!(
            self,
            StateKind::ValueTtl | StateKind::ListTtl | StateKind::MapTtl
        )
    }
}

/// A state's declaration: its name (unique within the operator) and kind.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StateDescriptor {
    /// Name, unique within one operator; also the RocksDB column family name.
    pub name: String,
    /// What the state holds.
    pub kind: StateKind,
}

/// What [`lookup_descriptor`] found for a state being registered.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Registration {
    /// Declared before with the same kind: reuse this id.
    Known(StateId),
    /// Not declared yet: it gets this id once the backend has created it.
    New(StateId),
}

/// The part of [`KeyedStateBackend::register`] every backend shares: a known name with the
/// same kind keeps its id, a known name with another kind is [`StateError::KindMismatch`], a
/// new name gets the next id.
pub fn lookup_descriptor(
    descriptors: &[StateDescriptor],
    descriptor: &StateDescriptor,
    backend: &'static str,
) -> Result<Registration, StateError> {
    if let Some(idx) = descriptors.iter().position(|d| d.name == descriptor.name) {
        let existing = descriptors[idx].kind;
        if existing != descriptor.kind {
            return Err(StateError::KindMismatch {
                name: descriptor.name.clone(),
                existing,
                requested: descriptor.kind,
            });
        }
        return Ok(Registration::Known(StateId(idx as u32)));
    }
    let id = u32::try_from(descriptors.len()).map_err(|_| StateError::Backend {
        backend,
        op: format!("register state '{}'", descriptor.name),
        detail: "too many states".into(),
    })?;
    Ok(Registration::New(StateId(id)))
}

/// The id a backend hands out for a registered state, `0..` in registration order.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct StateId(pub u32);

/// The address of one state cell: `key group ‖ key ‖ namespace ‖ user key`.
///
/// `key` is the serialised key, `namespace` the serialised namespace (empty when there is
/// none, e.g. outside windows), `user_key` the serialised map key (empty for non-map states).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct StateKey<'a> {
    /// The key group of `key`.
    pub key_group: KeyGroup,
    /// Serialised key.
    pub key: &'a [u8],
    /// Serialised namespace; empty for none.
    pub namespace: &'a [u8],
    /// Serialised map key; empty for non-map states.
    pub user_key: &'a [u8],
}

/// A visitor of `(user_key, value)` pairs; returning an error stops the iteration.
pub type UserKeyVisitor<'a> = dyn FnMut(&[u8], &[u8]) -> Result<(), StateError> + 'a;

/// One entry seen by [`KeyedStateBackend::scan`].
#[derive(Copy, Clone, Debug)]
pub struct StateEntry<'a> {
    /// Where the entry lives.
    pub key: StateKey<'a>,
    /// Its stored bytes.
    pub value: &'a [u8],
}

/// Storage for the keyed state of one operator subtask.
///
/// What an implementation must guarantee:
/// - **Read-your-writes**: a `get` sees every earlier `put`/`delete` of this backend, whatever
///   it buffers internally (RocksDB's write-back cache, for instance).
/// - **Isolation between states**: entries of one [`StateId`] are never visible through another.
/// - **Ordered iteration**: [`prefix_for_each`](Self::prefix_for_each) and
///   [`scan`](Self::scan) visit entries in ascending order of their encoded key bytes
///   ([`crate::encoding::encode_state_key`]); `scan` therefore goes key group by key group.
/// - **Range ownership**: a key whose key group lies outside
///   [`key_group_range`](Self::key_group_range) is refused with
///   [`StateError::KeyGroupOutOfRange`], never stored.
/// - **Flush**: after [`flush`](Self::flush) returns, everything written so far is in the
///   backend's underlying store, so a snapshot taken then sees exactly the state that per-record
///   reads and writes would give.
///
/// A backend is used by one task thread at a time (hence `Send`, not `Sync`).
pub trait KeyedStateBackend: Send {
    /// Short name for messages and metrics: `heap`, `rocksdb`.
    fn name(&self) -> &'static str;

    /// The key groups this backend owns.
    fn key_group_range(&self) -> KeyGroupRange;

    /// Declares a state, or returns the id of the same-named state declared before.
    /// Declaring a known name with another kind is [`StateError::KindMismatch`].
    fn register(&mut self, descriptor: &StateDescriptor) -> Result<StateId, StateError>;

    /// The declared states, indexed by [`StateId`].
    fn descriptors(&self) -> &[StateDescriptor];

    /// The bytes stored at `key`, if any.
    fn get(&mut self, state: StateId, key: &StateKey<'_>) -> Result<Option<&[u8]>, StateError>;

    /// Stores `value` at `key`, replacing what was there.
    fn put(&mut self, state: StateId, key: &StateKey<'_>, value: &[u8]) -> Result<(), StateError>;

    /// Removes the entry at `key`; removing a missing entry is not an error.
    fn delete(&mut self, state: StateId, key: &StateKey<'_>) -> Result<(), StateError>;

    /// Visits every entry whose key group, key and namespace equal `prefix`'s (its `user_key`
    /// is ignored), in ascending user-key order: `f(user_key, value)`.
    fn prefix_for_each(
        &mut self,
        state: StateId,
        prefix: &StateKey<'_>,
        f: &mut UserKeyVisitor<'_>,
    ) -> Result<(), StateError>;

    /// Removes every entry under `prefix` (key group, key and namespace; user key ignored).
    fn delete_prefix(&mut self, state: StateId, prefix: &StateKey<'_>) -> Result<(), StateError>;

    /// Visits every entry of `state`, in ascending encoded-key order.
    fn scan(
        &mut self,
        state: StateId,
        f: &mut dyn FnMut(&StateEntry<'_>) -> Result<(), StateError>,
    ) -> Result<(), StateError>;

    /// Writes everything buffered into the underlying store (see the trait docs).
    fn flush(&mut self) -> Result<(), StateError>;

    /// Drops every expired entry of the states with a TTL now and reclaims its space (RocksDB:
    /// a flush and a full compaction, which runs the TTL filter; heap: a sweep of the cleanup
    /// queues). Backends drop expired entries on their own as they go; this is for tests,
    /// measurements and operators that want the space back at once.
    fn compact(&mut self) -> Result<(), StateError> {
        Ok(())
    }

    /// Approximate bytes the state occupies in the backend's store (after a flush: on disk for
    /// RocksDB, in memory for the heap backend).
    fn size_bytes(&mut self) -> Result<u64, StateError>;

    /// The synchronous part of a checkpoint: makes the current state immutable (on local disk
    /// or in memory) and describes it. Must be short — records wait meanwhile — and must see
    /// every write made before the call (a write-back cache is flushed first).
    ///
    /// The snapshot must not change afterwards, whatever the backend does next; a shareable
    /// file's name must never be reused for other bytes by this backend, nor by one restored
    /// from its snapshots. A failed snapshot leaves nothing behind and the backend usable;
    /// the error is [`StateError::Snapshot`].
    fn snapshot(&mut self, checkpoint: CheckpointId) -> Result<LocalSnapshot, StateError>;
}

/// Where a backend instance is created: which operator subtask, which key groups.
#[derive(Clone, Debug)]
pub struct BackendScope {
    /// The keyed operator's uid.
    pub operator_uid: OperatorUid,
    /// The subtask this backend serves.
    pub subtask: SubtaskIndex,
    /// The operator's parallelism.
    pub parallelism: u32,
    /// The job's max parallelism (number of key groups).
    pub max_parallelism: u32,
    /// The key groups this subtask owns.
    pub key_group_range: KeyGroupRange,
    /// How many keyed subtasks this process runs in all: backends that share a memory budget
    /// (RocksDB) give each instance its share.
    pub keyed_subtasks_in_process: u32,
}

/// Creates one backend per keyed operator subtask. Shared by every task of a process.
pub trait StateBackendFactory: Send + Sync {
    /// Short name: `heap`, `rocksdb`.
    fn name(&self) -> &'static str;

    /// Opens a fresh, empty backend for `scope`.
    fn create(&self, scope: &BackendScope) -> Result<Box<dyn KeyedStateBackend>, StateError>;

    /// Rebuilds a backend for `scope` from a checkpoint's snapshot: it scans exactly the
    /// entries the snapshotted backend held, and [`register`](KeyedStateBackend::register)
    /// returns the snapshot's ids for its descriptors. Refuses, naming the checkpoint, a
    /// snapshot of another backend, an unknown format version or another key-group range
    /// ([`RestoredSnapshot::check_compatible`]: [`StateError::Incompatible`]), and missing or
    /// damaged files or a local disk that refuses them ([`StateError::Restore`]).
    fn restore(
        &self,
        scope: &BackendScope,
        snapshot: RestoredSnapshot,
    ) -> Result<Box<dyn KeyedStateBackend>, StateError>;
}
