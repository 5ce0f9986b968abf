//! The in-memory keyed state backend: small state, tests, and the honest baseline the RocksDB
//! backend is measured against.
//!
//! Layout: the owned key groups are cut into at most [`MAX_SEGMENTS`] runs of consecutive key
//! groups, *segments*. Per state and segment, one [`FxHashMap`] behind an [`Arc`] maps the
//! encoded cell prefix (`key group ‖ key ‖ namespace`, see [`encoding::encode_prefix`]) to a
//! cell: the single value of a value, list or reducing state, or a [`BTreeMap`] from user key to
//! value for a map state. Point reads and writes are one hash lookup with the prefix encoded
//! into a reused scratch buffer (a `get` hit allocates nothing); ordered iteration
//! ([`KeyedStateBackend::scan`]) collects and sorts, since it is off the per-record path.
//!
//! # Snapshots: an O(segments) pause, incremental files
//! [`KeyedStateBackend::snapshot`] copies no cell. For every segment written since the last
//! snapshot it moves each state's map of that segment behind an [`Arc`] it shares with a
//! *version*, and leaves the rest to the snapshot's background part ([`crate::PendingFiles`]),
//! which writes each version into one shareable file and then lets the maps go. While a map is
//! shared (*frozen*) it is read-only: the task's writes to it go to a small overlay (changed
//! cells, and deletions), and reads look there first. The first access after the version let go
//! applies the overlay to the map, which is the task's alone again. So what exists twice is only
//! what was written while the background part ran.
//!
//! A segment not written since the last snapshot keeps its version, and so its file: the
//! uploader reuses it from the last completed checkpoint instead of uploading it again. The
//! bytes of each segment's latest file stay in memory (the serialised form, a fraction of the
//! maps' size), so a snapshot can always hand over every file, whether or not the checkpoint
//! that first wrote it completed.
//!
//! Files of a snapshot:
//! - [`HEAP_SNAPSHOT_FILE`] (private): the magic `WHSS`, the format version
//!   ([`HEAP_SNAPSHOT_FORMAT`], u16 big-endian), then a postcard body with the key-group range,
//!   the descriptors and the names of the segment files;
//! - per non-empty segment, `heap-state-<segment>-<instance>-<checkpoint>` (shareable): the
//!   magic `WHSG`, the segment format ([`SEGMENT_FORMAT`]), then a postcard body with the
//!   segment's key-group range and, per state (in registration order; states declared after the
//!   file was written are absent and empty), every cell exactly as the map holds it. `<instance>`
//!   is random per backend instance, so a name is never reused for other bytes, also by
//!   backends restored from the same snapshot.
//!
//! [`StateBackendFactory::restore`] reads them back and checks them cell by cell. Format 1 (one
//! private file holding every cell) is still read.

use crate::backend::{lookup_descriptor, Registration};
use crate::encoding;
use crate::ttl;
use crate::{
    BackendScope, KeyedStateBackend, LocalSnapshot, PendingFiles, RestoredSnapshot,
    SnapshotContent, SnapshotFile, StateBackendFactory, StateDescriptor, StateEntry, StateError,
    StateId, StateKey,
};
use rustc_hash::{FxHashMap, FxHashSet};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::mem::size_of;
use std::sync::{Arc, Mutex, PoisonError};
use weir_types::{CheckpointId, KeyGroupRange};

/// The name of the heap backend's snapshot manifest (one per snapshot, private).
pub const HEAP_SNAPSHOT_FILE: &str = "heap-state";

/// The heap snapshot's format version: [`LocalSnapshot::format`], and the manifest's header.
/// Format 1 (every cell in one private file) is still restored.
pub const HEAP_SNAPSHOT_FORMAT: u16 = 2;

/// The one-file format that came before segments.
const HEAP_SNAPSHOT_FORMAT_V1: u16 = 1;

/// The format version of a segment file's header.
pub const SEGMENT_FORMAT: u16 = 1;

/// The most segments one backend cuts its key groups into: the unit of copy on write and of
/// incremental upload. More segments mean smaller copies after a snapshot and finer uploads,
/// but more files per checkpoint.
pub const MAX_SEGMENTS: u32 = 16;

/// The first bytes of a heap snapshot manifest (and of a format-1 snapshot file).
const HEAP_SNAPSHOT_MAGIC: &[u8; 4] = b"WHSS";

/// The first bytes of a segment file.
const SEGMENT_MAGIC: &[u8; 4] = b"WHSG";

/// The name every segment file starts with.
const SEGMENT_FILE_PREFIX: &str = "heap-state-";

/// What an allocator keeps per heap allocation beyond the requested bytes (header, rounding):
/// a conservative figure for glibc malloc.
const ALLOC_OVERHEAD: usize = 16;

/// Bytes a B-tree map spends per entry beyond its keys and values (node slack, edges),
/// estimated from std's node layout (11 slots per node, nodes about two-thirds full).
const BTREE_ENTRY_OVERHEAD: usize = 24;

/// One cell of a state: what lives under one `key group ‖ key ‖ namespace` prefix.
#[derive(Clone, Debug, Serialize, Deserialize)]
enum Cell {
    /// The value of a value, list or reducing state.
    Value(Box<[u8]>),
    /// The entries of a map state, by user key (ordered, so `prefix_for_each` needs no sort).
    Map(BTreeMap<Box<[u8]>, Box<[u8]>>),
}

/// The cells of one state in one segment, by cell prefix.
type CellMap = FxHashMap<Box<[u8]>, Cell>;

/// One state's cells in one segment.
#[derive(Debug)]
enum Segment {
    /// The task's alone.
    Live(CellMap),
    /// Shared with a snapshot version that has not written its file yet, and read-only until
    /// it has: changes go to `overlay` (`None`: deleted), which reads consult first.
    Frozen {
        base: Arc<CellMap>,
        overlay: FxHashMap<Box<[u8]>, Option<Cell>>,
    },
}

impl Default for Segment {
    fn default() -> Self {
        Segment::Live(CellMap::default())
    }
}

impl Segment {
    /// The cell at `prefix`.
    fn get(&self, prefix: &[u8]) -> Option<&Cell> {
        match self {
            Segment::Live(map) => map.get(prefix),
            Segment::Frozen { base, overlay } => match overlay.get(prefix) {
                Some(changed) => changed.as_ref(),
                None => base.get(prefix),
            },
        }
    }

    /// Makes a frozen segment live again once no version holds its map: applies the overlay
    /// (O(overlay)). A cheap check otherwise.
    fn thaw(&mut self) {
        let Segment::Frozen { base, .. } = self else {
            return;
        };
        if Arc::strong_count(base) != 1 {
            return;
        }
        let Segment::Frozen { base, overlay } = std::mem::take(self) else {
            unreachable!("matched above")
        };
        let mut map = Arc::try_unwrap(base).unwrap_or_else(|shared| (*shared).clone());
        apply(&mut map, overlay);
        *self = Segment::Live(map);
    }

    /// The cell at `prefix`, to change in place (a frozen cell is copied into the overlay).
    fn get_mut(&mut self, prefix: &[u8]) -> Option<&mut Cell> {
        self.thaw();
        match self {
            Segment::Live(map) => map.get_mut(prefix),
            Segment::Frozen { base, overlay } => {
                if !overlay.contains_key(prefix) {
                    let cell = base.get(prefix)?.clone();
                    overlay.insert(prefix.into(), Some(cell));
                }
                overlay.get_mut(prefix).and_then(Option::as_mut)
            }
        }
    }

    /// Stores the value `value` at `prefix` (a value, list or reducing state), in place when
    /// the cell is live or already in the overlay; returns whether the cell is new. Unlike
    /// `get_mut`, a frozen cell is not copied into the overlay only to be overwritten.
    fn set_value(&mut self, prefix: &[u8], value: &[u8]) -> bool {
        self.thaw();
        match self {
            Segment::Live(map) => match map.get_mut(prefix) {
                Some(Cell::Value(slot)) => {
                    overwrite(slot, value);
                    false
                }
                _ => map
                    .insert(prefix.into(), Cell::Value(value.into()))
                    .is_none(),
            },
            Segment::Frozen { base, overlay } => match overlay.get_mut(prefix) {
                Some(Some(Cell::Value(slot))) => {
                    overwrite(slot, value);
                    false
                }
                Some(change) => {
                    let created = change.is_none();
                    *change = Some(Cell::Value(value.into()));
                    created
                }
                None => {
                    overlay.insert(prefix.into(), Some(Cell::Value(value.into())));
                    !base.contains_key(prefix)
                }
            },
        }
    }

    /// Stores `cell` at `prefix`.
    fn insert(&mut self, prefix: &[u8], cell: Cell) {
        self.thaw();
        match self {
            Segment::Live(map) => {
                map.insert(prefix.into(), cell);
            }
            Segment::Frozen { overlay, .. } => {
                overlay.insert(prefix.into(), Some(cell));
            }
        }
    }

    /// Removes the cell at `prefix`, if any.
    fn remove(&mut self, prefix: &[u8]) {
        self.thaw();
        match self {
            Segment::Live(map) => {
                map.remove(prefix);
            }
            Segment::Frozen { base, overlay } => {
                if base.contains_key(prefix) {
                    overlay.insert(prefix.into(), None);
                } else {
                    overlay.remove(prefix);
                }
            }
        }
    }

    /// Every cell, in no particular order.
    fn iter(&self) -> Box<dyn Iterator<Item = (&Box<[u8]>, &Cell)> + '_> {
        match self {
            Segment::Live(map) => Box::new(map.iter()),
            Segment::Frozen { base, overlay } => Box::new(
                overlay
                    .iter()
                    .filter_map(|(k, c)| c.as_ref().map(|c| (k, c)))
                    .chain(base.iter().filter(|(k, _)| !overlay.contains_key(&k[..]))),
            ),
        }
    }

    fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }

    /// Hash-table slots allocated (for size estimates).
    fn capacity(&self) -> usize {
        match self {
            Segment::Live(map) => map.capacity(),
            Segment::Frozen { base, overlay } => base.capacity() + overlay.capacity(),
        }
    }

    /// Shares the segment's cells with a new snapshot version: O(1) when live (or when the
    /// previous version let go); a copy only when an older version still holds the map, i.e.
    /// its file is still being written (a snapshot taken before the previous one finished).
    fn freeze(&mut self) -> Arc<CellMap> {
        self.thaw();
        let map = match std::mem::take(self) {
            Segment::Live(map) => map,
            Segment::Frozen { base, overlay } => {
                let mut map = (*base).clone();
                apply(&mut map, overlay);
                map
            }
        };
        let base = Arc::new(map);
        *self = Segment::Frozen {
            base: Arc::clone(&base),
            overlay: FxHashMap::default(),
        };
        base
    }

    /// The map of a segment no snapshot froze: restore builds only such segments.
    fn live(&mut self) -> &mut CellMap {
        match self {
            Segment::Live(map) => map,
            Segment::Frozen { .. } => unreachable!("a backend being restored took no snapshot"),
        }
    }
}

/// Applies an overlay's changes to `map`.
fn apply(map: &mut CellMap, overlay: FxHashMap<Box<[u8]>, Option<Cell>>) {
    for (prefix, change) in overlay {
        match change {
            Some(cell) => {
                map.insert(prefix, cell);
            }
            None => {
                map.remove(&prefix);
            }
        }
    }
}

/// One declared state's cells, per segment.
#[derive(Debug)]
struct HeapState {
    segments: Vec<Segment>,
}

impl HeapState {
    fn new(segments: usize) -> Self {
        Self {
            segments: (0..segments).map(|_| Segment::default()).collect(),
        }
    }

    fn cells(&self) -> impl Iterator<Item = (&Box<[u8]>, &Cell)> {
        self.segments.iter().flat_map(Segment::iter)
    }
}

/// How the owned key groups are cut into segments: runs of `per` consecutive key groups.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
struct Segments {
    range: KeyGroupRange,
    per: u32,
    count: usize,
}

impl Segments {
    fn new(range: KeyGroupRange) -> Self {
        let len = range.len();
        let per = len.div_ceil(MAX_SEGMENTS).max(1);
        Self {
            range,
            per,
            count: len.div_ceil(per) as usize,
        }
    }

    /// The segment of a key group in the range.
    fn of(&self, key_group: u16) -> usize {
        (u32::from(key_group - self.range.start) / self.per) as usize
    }

    /// The segment of an encoded cell prefix (it starts with the key group, big-endian).
    fn of_prefix(&self, prefix: &[u8]) -> usize {
        self.of(u16::from_be_bytes([prefix[0], prefix[1]]))
    }

    /// The key groups of segment `s`.
    fn key_groups(&self, s: usize) -> KeyGroupRange {
        let start = u32::from(self.range.start) + s as u32 * self.per;
        let end = (start + self.per - 1).min(u32::from(self.range.end));
        KeyGroupRange {
            start: start as u16,
            end: end as u16,
        }
    }
}

/// A segment as one snapshot saw it: the maps it shares with the backend until its file is
/// written, then the file's bytes (kept for later snapshots that reuse the file).
#[derive(Debug)]
struct SegmentVersion {
    /// The shareable file's name: unique over every backend instance.
    name: String,
    body: Mutex<VersionBody>,
}

#[derive(Debug)]
enum VersionBody {
    /// Not written yet: the segment's key groups and each state's map at the barrier.
    Frozen {
        key_groups: KeyGroupRange,
        states: Vec<Arc<CellMap>>,
    },
    /// The file's bytes.
    Written(Arc<[u8]>),
}

impl SegmentVersion {
    /// The version's file, written now if no earlier call wrote it (the maps are let go then).
    fn file(&self, checkpoint: CheckpointId) -> Result<SnapshotFile, StateError> {
        let mut body = self.body.lock().unwrap_or_else(PoisonError::into_inner);
        if let VersionBody::Frozen { key_groups, states } = &*body {
            let bytes =
                encode_segment(*key_groups, states).map_err(|detail| StateError::Snapshot {
                    checkpoint,
                    backend: "heap",
                    op: format!("serialise {}", self.name),
                    detail,
                })?;
            *body = VersionBody::Written(bytes.into());
        }
        let VersionBody::Written(bytes) = &*body else {
            unreachable!("written just above")
        };
        Ok(SnapshotFile {
            name: self.name.clone(),
            content: SnapshotContent::Shared(Arc::clone(bytes)),
            shareable: true,
        })
    }

    /// Bytes of memory the version keeps on its own (the written file; frozen maps are shared).
    fn retained_bytes(&self) -> usize {
        match &*self.body.lock().unwrap_or_else(PoisonError::into_inner) {
            VersionBody::Frozen { .. } => 0,
            VersionBody::Written(bytes) => bytes.len(),
        }
    }
}

/// Keyed state held in hash maps on the task's heap. See the [module docs](self).
#[derive(Debug)]
pub struct HeapStateBackend {
    range: KeyGroupRange,
    segments: Segments,
    descriptors: Vec<StateDescriptor>,
    states: Vec<HeapState>,
    /// Per segment: whether a cell of any state in it changed since its version was taken.
    changed: Vec<bool>,
    /// Per segment: the version the latest snapshot handed over (none for an empty segment).
    versions: Vec<Option<Arc<SegmentVersion>>>,
    /// Random per instance: part of every segment file's name.
    instance: u64,
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
                for (cell, c) in state.cells() {
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

/// A number that differs between backend instances, also across processes and restarts.
fn instance_nonce() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    // `RandomState` is seeded randomly per process; the time, the process and a counter
    // separate instances further.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    h.write_u128(now);
    h.write_u32(std::process::id());
    h.write_u64(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    h.finish()
}

impl HeapStateBackend {
    /// An empty backend owning the key groups in `range`.
    pub fn new(range: KeyGroupRange) -> Self {
        let segments = Segments::new(range);
        Self {
            range,
            segments,
            descriptors: Vec::new(),
            states: Vec::new(),
            changed: vec![false; segments.count],
            versions: vec![None; segments.count],
            instance: instance_nonce(),
            ttl_queues: Vec::new(),
            ttl_queued: Vec::new(),
            scratch: Vec::with_capacity(64),
        }
    }

    /// Checks `state` and `key` and encodes the cell prefix into `self.scratch`; returns the
    /// state's index and the key's segment.
    fn prepare(
        &mut self,
        state: StateId,
        key: &StateKey<'_>,
    ) -> Result<(usize, usize), StateError> {
        let idx = self.check(state, key)?;
        let desc = &self.descriptors[idx];
        if !desc.kind.has_user_keys() && !key.user_key.is_empty() {
            return Err(user_key_on_non_map_state(&desc.name));
        }
        self.scratch.clear();
        encoding::encode_prefix(&mut self.scratch, key);
        Ok((idx, self.segments.of(key.key_group.0)))
    }

    /// The cells of state `idx` in segment `seg`, to change: marks the segment changed.
    fn cells_mut(&mut self, idx: usize, seg: usize) -> &mut Segment {
        self.changed[seg] = true;
        &mut self.states[idx].segments[seg]
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
            let seg = self.segments.of_prefix(&entry.cell);
            let cells = &self.states[idx].segments[seg];
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
                self.ttl_queues[idx].push_back(TtlEntry { expires, ..entry });
                continue;
            }
            let cells = self.cells_mut(idx, seg);
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

    /// An estimate of the bytes one state's cells occupy, hash tables included.
    fn state_bytes(state: &HeapState) -> usize {
        let slot = size_of::<(Box<[u8]>, Cell)>() + 1; // + the table's control byte
        let mut bytes: usize = state.segments.iter().map(|m| m.capacity() * slot).sum();
        for (key, cell) in state.cells() {
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

    /// The name of segment `seg`'s file written for `checkpoint` by this instance.
    fn segment_file_name(&self, seg: usize, checkpoint: CheckpointId) -> String {
        format!(
            "{SEGMENT_FILE_PREFIX}{seg:04}-{:016x}-{}",
            self.instance,
            checkpoint.get()
        )
    }
}

/// A manifest's body as written and read.
#[derive(Serialize, Deserialize)]
struct Manifest {
    key_groups: KeyGroupRange,
    descriptors: Vec<StateDescriptor>,
    /// The segment files, in segment order.
    segment_files: Vec<String>,
}

/// A segment file's body as written, borrowing the maps.
#[derive(Serialize)]
struct SegmentBodyRef<'a> {
    key_groups: KeyGroupRange,
    states: Vec<&'a CellMap>,
}

/// A segment file's body as read back.
#[derive(Deserialize)]
struct SegmentBody {
    key_groups: KeyGroupRange,
    states: Vec<CellMap>,
}

/// A format-1 snapshot's body.
#[derive(Deserialize)]
struct SnapshotBodyV1 {
    key_groups: KeyGroupRange,
    descriptors: Vec<StateDescriptor>,
    states: Vec<StateV1>,
}

/// One state of a format-1 snapshot.
#[derive(Deserialize)]
struct StateV1 {
    cells: CellMap,
}

/// `magic ‖ version (u16 BE) ‖ postcard(body)`.
fn encode_framed(magic: &[u8; 4], version: u16, body: &impl Serialize) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(1 << 12);
    out.extend_from_slice(magic);
    out.extend_from_slice(&version.to_be_bytes());
    postcard::to_extend(body, out).map_err(|e| e.to_string())
}

/// The bytes of a segment file holding `states`' maps of the segment `key_groups`.
fn encode_segment(key_groups: KeyGroupRange, states: &[Arc<CellMap>]) -> Result<Vec<u8>, String> {
    let body = SegmentBodyRef {
        key_groups,
        states: states.iter().map(|m| &**m).collect(),
    };
    encode_framed(SEGMENT_MAGIC, SEGMENT_FORMAT, &body)
}

/// Checks `magic` and returns the header's version and the rest.
fn unframe<'a>(magic: &[u8; 4], what: &str, bytes: &'a [u8]) -> Result<(u16, &'a [u8]), String> {
    let (head, rest) = bytes.split_at(bytes.len().min(magic.len()));
    if head != magic {
        return Err(format!("not a {what} (bad magic)"));
    }
    let version = rest
        .get(..2)
        .map(|v| u16::from_be_bytes([v[0], v[1]]))
        .ok_or_else(|| "truncated header".to_string())?;
    Ok((version, &rest[2..]))
}

/// Decodes a whole postcard body: nothing may follow it.
fn decode_body<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, String> {
    let (body, trailing): (T, &[u8]) =
        postcard::take_from_bytes(bytes).map_err(|e| format!("cannot decode the body: {e}"))?;
    if !trailing.is_empty() {
        return Err(format!("{} bytes after the body", trailing.len()));
    }
    Ok(body)
}

/// Reads a manifest (format 2) or a format-1 snapshot: which one is the header's version.
enum SnapshotHead {
    Manifest(Manifest),
    V1(SnapshotBodyV1),
}

fn decode_head(bytes: &[u8]) -> Result<SnapshotHead, String> {
    let (version, body) = unframe(HEAP_SNAPSHOT_MAGIC, "heap snapshot", bytes)?;
    match version {
        HEAP_SNAPSHOT_FORMAT => decode_body(body).map(SnapshotHead::Manifest),
        HEAP_SNAPSHOT_FORMAT_V1 => decode_body(body).map(SnapshotHead::V1),
        other => Err(format!(
            "file format {other} is not a supported format ({HEAP_SNAPSHOT_FORMAT_V1} or \
             {HEAP_SNAPSHOT_FORMAT})"
        )),
    }
}

fn decode_segment(bytes: &[u8]) -> Result<SegmentBody, String> {
    let (version, body) = unframe(SEGMENT_MAGIC, "heap segment file", bytes)?;
    if version != SEGMENT_FORMAT {
        return Err(format!(
            "segment format {version} is not the supported format {SEGMENT_FORMAT}"
        ));
    }
    decode_body(body)
}

/// Checks the descriptors a file declares against the snapshot's: equal, no name twice.
fn check_descriptors(
    declared: &[StateDescriptor],
    snapshot: &RestoredSnapshot,
) -> Result<(), String> {
    if declared != snapshot.descriptors {
        return Err(format!(
            "the file declares states {declared:?} but the snapshot says {:?}",
            snapshot.descriptors
        ));
    }
    let mut seen = Vec::with_capacity(declared.len());
    for d in declared {
        if seen.contains(&&d.name) {
            return Err(format!("state '{}' is declared twice", d.name));
        }
        seen.push(&d.name);
    }
    Ok(())
}

impl HeapStateBackend {
    /// An empty backend for `snapshot`'s range and descriptors, every segment marked changed.
    fn empty_for(snapshot: &RestoredSnapshot) -> Self {
        let mut b = Self::new(snapshot.key_groups);
        b.descriptors = snapshot.descriptors.clone();
        b.states = (0..b.descriptors.len())
            .map(|_| HeapState::new(b.segments.count))
            .collect();
        b.changed.fill(true);
        b
    }

    /// Rebuilds the TTL cleanup queues from the cells (after a restore).
    fn rebuild_ttl_queues(&mut self) {
        self.ttl_queues = ttl_queues(&self.descriptors, &self.states);
        self.ttl_queued = queued_sets(&self.ttl_queues);
    }

    /// Moves `cells` (state `idx`'s, checked) into their segments. `Err` names a cell already
    /// held (a key group in two files).
    fn absorb(&mut self, idx: usize, cells: CellMap) -> Result<(), String> {
        let segments = self.segments;
        for (prefix, cell) in cells {
            let seg = segments.of_prefix(&prefix);
            let map = self.states[idx].segments[seg].live();
            if map.insert(prefix, cell).is_some() {
                return Err(format!(
                    "state '{}' holds a cell twice",
                    self.descriptors[idx].name
                ));
            }
        }
        Ok(())
    }

    /// Rebuilds a backend from a format-1 snapshot's body.
    fn from_v1(snapshot: &RestoredSnapshot, body: SnapshotBodyV1) -> Result<Self, String> {
        if body.key_groups != snapshot.key_groups {
            return Err(format!(
                "the file covers key groups {} but the snapshot says {}",
                body.key_groups, snapshot.key_groups
            ));
        }
        check_descriptors(&body.descriptors, snapshot)?;
        if body.states.len() != body.descriptors.len() {
            return Err(format!(
                "{} states for {} descriptors",
                body.states.len(),
                body.descriptors.len()
            ));
        }
        let mut b = Self::empty_for(snapshot);
        for (idx, state) in body.states.into_iter().enumerate() {
            check_cells(&b.descriptors[idx], &state.cells, body.key_groups)?;
            b.absorb(idx, state.cells)?;
        }
        b.rebuild_ttl_queues();
        Ok(b)
    }

    /// Rebuilds a backend from a manifest and its segment files (`read` returns a file's
    /// bytes by name). A file whose key groups are exactly one of this backend's segments
    /// becomes that segment's version, so the next snapshot reuses it if the segment is not
    /// written meanwhile.
    fn from_manifest(
        snapshot: &RestoredSnapshot,
        manifest: Manifest,
        mut read: impl FnMut(&str) -> Result<Vec<u8>, String>,
    ) -> Result<Self, String> {
        if manifest.key_groups != snapshot.key_groups {
            return Err(format!(
                "the manifest covers key groups {} but the snapshot says {}",
                manifest.key_groups, snapshot.key_groups
            ));
        }
        check_descriptors(&manifest.descriptors, snapshot)?;
        let mut b = Self::empty_for(snapshot);
        let mut covered: Vec<KeyGroupRange> = Vec::with_capacity(manifest.segment_files.len());
        for name in &manifest.segment_files {
            let in_file = |e: String| format!("{name}: {e}");
            let bytes = read(name)?;
            let body = decode_segment(&bytes).map_err(in_file)?;
            let kgs = body.key_groups;
            if kgs.is_empty() || kgs.start < b.range.start || kgs.end > b.range.end {
                return Err(in_file(format!(
                    "covers key groups {kgs}, not a part of {}",
                    b.range
                )));
            }
            if let Some(other) = covered
                .iter()
                .find(|o| o.start <= kgs.end && kgs.start <= o.end)
            {
                return Err(in_file(format!(
                    "covers key groups {kgs}, which another file ({other}) covers too"
                )));
            }
            covered.push(kgs);
            if body.states.len() > b.descriptors.len() {
                return Err(in_file(format!(
                    "{} states for {} descriptors",
                    body.states.len(),
                    b.descriptors.len()
                )));
            }
            // A file of exactly one segment (the usual case) becomes its maps as they are: no
            // other file can hold a cell of that segment (the ranges are disjoint).
            let seg = b.segments.of(kgs.start);
            let exact = b.segments.key_groups(seg) == kgs;
            for (idx, cells) in body.states.into_iter().enumerate() {
                check_cells(&b.descriptors[idx], &cells, kgs).map_err(in_file)?;
                if exact {
                    b.states[idx].segments[seg] = Segment::Live(cells);
                } else {
                    b.absorb(idx, cells).map_err(in_file)?;
                }
            }
            if exact {
                b.changed[seg] = false;
                b.versions[seg] = Some(Arc::new(SegmentVersion {
                    name: name.clone(),
                    body: Mutex::new(VersionBody::Written(bytes.into())),
                }));
            }
        }
        // A segment without a file is empty in the snapshot: nothing to write until it changes.
        for seg in 0..b.segments.count {
            if b.versions[seg].is_none() && b.states.iter().all(|s| s.segments[seg].is_empty()) {
                b.changed[seg] = false;
            }
        }
        b.rebuild_ttl_queues();
        Ok(b)
    }
}

/// Checks that every cell of `cells` has a well-formed prefix in `range` and the shape of
/// `descriptor`'s kind.
fn check_cells(
    descriptor: &StateDescriptor,
    cells: &CellMap,
    range: KeyGroupRange,
) -> Result<(), String> {
    let name = &descriptor.name;
    for (prefix, cell) in cells {
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
        self.states.push(HeapState::new(self.segments.count));
        self.ttl_queues.push(VecDeque::new());
        self.ttl_queued.push(FxHashSet::default());
        Ok(id)
    }

    fn descriptors(&self) -> &[StateDescriptor] {
        &self.descriptors
    }

    fn get(&mut self, state: StateId, key: &StateKey<'_>) -> Result<Option<&[u8]>, StateError> {
        let (idx, seg) = self.prepare(state, key)?;
        if self.descriptors[idx].kind.has_ttl() {
            self.clean_expired(idx);
        }
        let segment = &mut self.states[idx].segments[seg];
        segment.thaw();
        Ok(match segment.get(&self.scratch[..]) {
            None => None,
            Some(Cell::Value(v)) => Some(&v[..]),
            Some(Cell::Map(map)) => map.get(key.user_key).map(|v| &v[..]),
        })
    }

    fn put(&mut self, state: StateId, key: &StateKey<'_>, value: &[u8]) -> Result<(), StateError> {
        let (idx, seg) = self.prepare(state, key)?;
        let is_map = self.descriptors[idx].kind.has_user_keys();
        self.changed[seg] = true;
        let cells = &mut self.states[idx].segments[seg];
        let created = if !is_map {
            cells.set_value(&self.scratch, value)
        } else {
            match cells.get_mut(&self.scratch[..]) {
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
                    let cell = Cell::Map(BTreeMap::from([(key.user_key.into(), value.into())]));
                    cells.insert(&self.scratch, cell);
                    true
                }
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
        let (idx, seg) = self.prepare(state, key)?;
        // Look before changing: deleting what is not there must not copy a shared map.
        let present = match self.states[idx].segments[seg].get(&self.scratch[..]) {
            None => false,
            Some(Cell::Value(_)) => true,
            Some(Cell::Map(map)) => map.contains_key(key.user_key),
        };
        if !present {
            return Ok(());
        }
        let prefix = std::mem::take(&mut self.scratch);
        let is_map = self.descriptors[idx].kind.has_user_keys();
        let cells = self.cells_mut(idx, seg);
        // A value cell goes whole: no need to take it into a frozen segment's overlay first.
        let now_empty = !is_map
            || match cells.get_mut(&prefix) {
                Some(Cell::Map(map)) => {
                    map.remove(key.user_key);
                    map.is_empty()
                }
                _ => false,
            };
        if now_empty {
            cells.remove(&prefix);
        }
        self.scratch = prefix;
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
        let seg = self.segments.of(prefix.key_group.0);
        match self.states[idx].segments[seg].get(&self.scratch[..]) {
            None => Ok(()),
            Some(Cell::Value(v)) => f(&[], v),
            Some(Cell::Map(map)) => map.iter().try_for_each(|(uk, v)| f(uk, v)),
        }
    }

    fn delete_prefix(&mut self, state: StateId, prefix: &StateKey<'_>) -> Result<(), StateError> {
        let idx = self.check(state, prefix)?;
        self.scratch.clear();
        encoding::encode_prefix(&mut self.scratch, prefix);
        let seg = self.segments.of(prefix.key_group.0);
        if self.states[idx].segments[seg].get(&self.scratch).is_none() {
            return Ok(());
        }
        let key = std::mem::take(&mut self.scratch);
        self.cells_mut(idx, seg).remove(&key);
        self.scratch = key;
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
        let mut cells: Vec<(&[u8], &Cell)> =
            self.states[idx].cells().map(|(k, c)| (&k[..], c)).collect();
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
        let cells: usize = self.states.iter().map(Self::state_bytes).sum();
        let files: usize = self
            .versions
            .iter()
            .flatten()
            .map(|v| v.retained_bytes())
            .sum();
        Ok((cells + files) as u64)
    }

    /// Takes a version of every segment changed since the last snapshot (new references to its
    /// maps, no copy) and writes the small manifest; the segment files are written by the
    /// snapshot's background part (see the [module
    /// docs](self#snapshots-an-osegments-pause-incremental-files)).
    fn snapshot(&mut self, checkpoint: CheckpointId) -> Result<LocalSnapshot, StateError> {
        let mut versions = Vec::with_capacity(self.segments.count);
        for seg in 0..self.segments.count {
            if self.changed[seg] {
                self.changed[seg] = false;
                // Let go of the old version first: unless a snapshot still being written holds
                // it, its maps are then the task's alone and freezing them copies nothing.
                self.versions[seg] = None;
                self.versions[seg] = if self.states.iter().all(|s| s.segments[seg].is_empty()) {
                    None
                } else {
                    let name = self.segment_file_name(seg, checkpoint);
                    let states = self
                        .states
                        .iter_mut()
                        .map(|s| s.segments[seg].freeze())
                        .collect();
                    Some(Arc::new(SegmentVersion {
                        name,
                        body: Mutex::new(VersionBody::Frozen {
                            key_groups: self.segments.key_groups(seg),
                            states,
                        }),
                    }))
                };
            }
            if let Some(v) = &self.versions[seg] {
                versions.push(Arc::clone(v));
            }
        }
        let manifest = Manifest {
            key_groups: self.range,
            descriptors: self.descriptors.clone(),
            segment_files: versions.iter().map(|v| v.name.clone()).collect(),
        };
        let bytes = encode_framed(HEAP_SNAPSHOT_MAGIC, HEAP_SNAPSHOT_FORMAT, &manifest).map_err(
            |detail| StateError::Snapshot {
                checkpoint,
                backend: "heap",
                op: format!("serialise {HEAP_SNAPSHOT_FILE}"),
                detail,
            },
        )?;
        Ok(LocalSnapshot {
            checkpoint,
            backend: "heap",
            format: u32::from(HEAP_SNAPSHOT_FORMAT),
            key_groups: self.range,
            descriptors: manifest.descriptors,
            files: vec![SnapshotFile {
                name: HEAP_SNAPSHOT_FILE.to_string(),
                content: SnapshotContent::Bytes(bytes),
                shareable: false,
            }],
            cleanup_dir: None,
            pending: Some(PendingFiles::new(move || {
                versions.iter().map(|v| v.file(checkpoint)).collect()
            })),
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

    /// Reads the manifest [`HEAP_SNAPSHOT_FILE`] and the segment files it names (or a format-1
    /// snapshot's one file) back into maps; the restored backend hands out the snapshot's
    /// state ids.
    fn restore(
        &self,
        scope: &BackendScope,
        snapshot: RestoredSnapshot,
    ) -> Result<Box<dyn KeyedStateBackend>, StateError> {
        let format = if snapshot.format == u32::from(HEAP_SNAPSHOT_FORMAT_V1) {
            HEAP_SNAPSHOT_FORMAT_V1
        } else {
            HEAP_SNAPSHOT_FORMAT
        };
        snapshot.check_compatible("heap", u32::from(format), scope.key_group_range)?;
        let read = |name: &str| -> Result<Vec<u8>, String> {
            let path = snapshot
                .file(name)
                .ok_or_else(|| format!("the file {name} is missing"))?;
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
        };
        let head = read(HEAP_SNAPSHOT_FILE).map_err(|e| snapshot.error("heap", e))?;
        let in_head = |e: String| snapshot.error("heap", format!("{HEAP_SNAPSHOT_FILE}: {e}"));
        let backend =
            match decode_head(&head).map_err(in_head)? {
                SnapshotHead::V1(body) if format == HEAP_SNAPSHOT_FORMAT_V1 => {
                    if let Some((name, _)) =
                        snapshot.files.iter().find(|(n, _)| n != HEAP_SNAPSHOT_FILE)
                    {
                        return Err(snapshot.error("heap", format!("unexpected file '{name}'")));
                    }
                    HeapStateBackend::from_v1(&snapshot, body).map_err(in_head)?
                }
                SnapshotHead::Manifest(manifest) if format == HEAP_SNAPSHOT_FORMAT => {
                    if let Some((name, _)) = snapshot.files.iter().find(|(n, _)| {
                        n != HEAP_SNAPSHOT_FILE && !manifest.segment_files.contains(n)
                    }) {
                        return Err(snapshot.error("heap", format!("unexpected file '{name}'")));
                    }
                    HeapStateBackend::from_manifest(&snapshot, manifest, read)
                        .map_err(|e| snapshot.error("heap", e))?
                }
                _ => {
                    return Err(in_head(format!(
                        "the file's format is not the snapshot's format {format}"
                    )))
                }
            };
        Ok(Box::new(backend))
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
        assert_eq!(b.states[0].cells().count(), 1, "only the fresh key is left");
        assert_eq!(b.ttl_tracked(), 1);
    }

    mod snapshots {
        use super::*;

        crate::snapshot_conformance_tests!(|check| check(&HeapStateBackendFactory::new()));
    }

    const RANGE: KeyGroupRange = KeyGroupRange { start: 0, end: 9 };

    fn value_descriptor() -> StateDescriptor {
        StateDescriptor {
            name: "s".into(),
            kind: StateKind::Value,
        }
    }

    fn at(kg: u16, key: &[u8]) -> StateKey<'_> {
        StateKey {
            key_group: weir_types::KeyGroup(kg),
            key,
            namespace: b"",
            user_key: b"",
        }
    }

    /// A heap backend over key groups 0..=9 with one value state.
    fn backend() -> (HeapStateBackend, StateId) {
        let mut b = HeapStateBackend::new(RANGE);
        let s = b.register(&value_descriptor()).unwrap();
        (b, s)
    }

    /// `(name, bytes)` of every file of a resolved snapshot.
    fn files_of(snapshot: LocalSnapshot) -> Vec<(String, Vec<u8>)> {
        snapshot
            .resolve()
            .unwrap()
            .files
            .into_iter()
            .map(|f| {
                let bytes = match f.content {
                    SnapshotContent::Bytes(b) => b,
                    SnapshotContent::Shared(b) => b.to_vec(),
                    SnapshotContent::Path(p) => panic!("a heap file on disk: {}", p.display()),
                };
                (f.name, bytes)
            })
            .collect()
    }

    /// A backend with one value state holding one cell in key group 3, and its snapshot's
    /// files: the manifest, then the one segment's file.
    fn snapshot_files() -> (HeapStateBackend, Vec<(String, Vec<u8>)>) {
        let (mut b, s) = backend();
        b.put(s, &at(3, b"k"), b"v").unwrap();
        let files = files_of(b.snapshot(CheckpointId(4)).unwrap());
        assert_eq!(files.len(), 2, "{files:?}");
        assert_eq!(files[0].0, HEAP_SNAPSHOT_FILE);
        assert!(files[1].0.starts_with("heap-state-0003-"), "{}", files[1].0);
        assert!(files[1].0.ends_with("-4"), "{}", files[1].0);
        (b, files)
    }

    /// Restores a snapshot of checkpoint 4 in `format` with one value state from `files`.
    fn restore_files(
        format: u32,
        files: &[(String, Vec<u8>)],
    ) -> Result<Box<dyn KeyedStateBackend>, StateError> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("weir-heap-restore-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut listed = Vec::new();
        for (name, bytes) in files {
            let path = dir.join(name);
            std::fs::write(&path, bytes).unwrap();
            listed.push((name.clone(), path));
        }
        let snapshot = RestoredSnapshot {
            checkpoint: CheckpointId(4),
            backend: "heap".into(),
            format,
            key_groups: RANGE,
            descriptors: vec![value_descriptor()],
            files: listed,
            dir: dir.clone(),
        };
        let scope = BackendScope {
            operator_uid: weir_types::OperatorUid::new("op").unwrap(),
            subtask: weir_types::SubtaskIndex(0),
            parallelism: 1,
            max_parallelism: 10,
            key_group_range: RANGE,
            keyed_subtasks_in_process: 1,
        };
        let result = HeapStateBackendFactory::new().restore(&scope, snapshot);
        std::fs::remove_dir_all(&dir).unwrap();
        result
    }

    fn refusal(format: u32, files: &[(String, Vec<u8>)]) -> String {
        match restore_files(format, files) {
            Ok(_) => panic!("restored from damaged files"),
            Err(e @ StateError::Restore { .. }) => e.to_string(),
            Err(e) => panic!("expected a restore error, got {e:?}"),
        }
    }

    /// Whether segment `seg` of state 0 is shared with a snapshot version, and its overlay's
    /// size.
    fn frozen(b: &HeapState, seg: usize) -> Option<usize> {
        match &b.segments[seg] {
            Segment::Live(_) => None,
            Segment::Frozen { overlay, .. } => Some(overlay.len()),
        }
    }

    #[test]
    fn a_snapshot_shares_the_maps_until_its_background_part_wrote_them_and_copies_none() {
        let (mut b, s) = backend();
        for kg in 0..10u16 {
            b.put(s, &at(kg, b"k"), b"v").unwrap();
        }
        let snapshot = b.snapshot(CheckpointId(1)).unwrap();
        assert!(
            b.states[0].segments.iter().all(|m| match m {
                Segment::Frozen { base, overlay } =>
                    Arc::strong_count(base) == 2 && overlay.is_empty(),
                Segment::Live(_) => false,
            }),
            "every segment map is shared with the snapshot, none copied"
        );
        // Writes to a frozen segment go to its overlay; reads see them.
        b.put(s, &at(2, b"k"), b"new").unwrap();
        b.put(s, &at(2, b"other"), b"x").unwrap();
        b.delete(s, &at(3, b"k")).unwrap();
        assert_eq!(frozen(&b.states[0], 2), Some(2));
        assert_eq!(frozen(&b.states[0], 3), Some(1));
        assert_eq!(b.get(s, &at(2, b"k")).unwrap(), Some(&b"new"[..]));
        assert_eq!(b.get(s, &at(3, b"k")).unwrap(), None);
        let files = files_of(snapshot);
        // Once the files are written the maps are the task's again: the next access to a
        // segment applies its overlay.
        assert_eq!(b.get(s, &at(2, b"other")).unwrap(), Some(&b"x"[..]));
        assert_eq!(frozen(&b.states[0], 2), None);
        b.put(s, &at(3, b"k"), b"again").unwrap();
        assert_eq!(frozen(&b.states[0], 3), None);
        assert_eq!(b.get(s, &at(3, b"k")).unwrap(), Some(&b"again"[..]));
        let mut restored = restore_files(2, &files).unwrap();
        assert_eq!(restored.get(s, &at(2, b"k")).unwrap(), Some(&b"v"[..]));
        assert_eq!(restored.get(s, &at(3, b"k")).unwrap(), Some(&b"v"[..]));
        assert_eq!(restored.get(s, &at(2, b"other")).unwrap(), None);
    }

    #[test]
    fn a_snapshot_taken_while_the_previous_one_is_still_being_written_holds_its_own_state() {
        let (mut b, s) = backend();
        b.put(s, &at(4, b"k"), b"1").unwrap();
        let first = b.snapshot(CheckpointId(1)).unwrap();
        b.put(s, &at(4, b"k"), b"2").unwrap();
        // The first snapshot's background part has not run: the second copies segment 4.
        let second = b.snapshot(CheckpointId(2)).unwrap();
        b.put(s, &at(4, b"k"), b"3").unwrap();
        let (second, first) = (files_of(second), files_of(first));
        assert_eq!(
            restore_files(2, &first)
                .unwrap()
                .get(s, &at(4, b"k"))
                .unwrap(),
            Some(&b"1"[..])
        );
        assert_eq!(
            restore_files(2, &second)
                .unwrap()
                .get(s, &at(4, b"k"))
                .unwrap(),
            Some(&b"2"[..])
        );
        assert_eq!(b.get(s, &at(4, b"k")).unwrap(), Some(&b"3"[..]));
    }

    #[test]
    fn segments_not_written_since_the_last_snapshot_hand_over_the_same_file() {
        let (mut b, s) = backend();
        for kg in 0..10u16 {
            b.put(s, &at(kg, b"k"), b"v").unwrap();
        }
        let first = files_of(b.snapshot(CheckpointId(1)).unwrap());
        b.put(s, &at(7, b"k"), b"w").unwrap();
        b.delete(s, &at(5, b"missing")).unwrap();
        let second = files_of(b.snapshot(CheckpointId(2)).unwrap());
        let names = |files: &[(String, Vec<u8>)]| -> Vec<String> {
            files.iter().skip(1).map(|(n, _)| n.clone()).collect()
        };
        let (a, z) = (names(&first), names(&second));
        assert_eq!(a.len(), 10);
        let differ: Vec<usize> = (0..10).filter(|&i| a[i] != z[i]).collect();
        assert_eq!(differ, [7], "only key group 7's file is new: {a:?} {z:?}");
        assert!(z[7].ends_with("-2"));
        assert_eq!(first[9], second[9], "a reused file has the same bytes");
    }

    #[test]
    fn a_snapshot_dropped_before_its_background_part_ran_leaves_the_next_one_whole() {
        let (mut b, s) = backend();
        b.put(s, &at(1, b"a"), b"1").unwrap();
        b.put(s, &at(6, b"b"), b"2").unwrap();
        drop(b.snapshot(CheckpointId(1)).unwrap());
        b.put(s, &at(6, b"b"), b"3").unwrap();
        let files = files_of(b.snapshot(CheckpointId(2)).unwrap());
        let mut restored = restore_files(2, &files).unwrap();
        assert_eq!(restored.get(s, &at(1, b"a")).unwrap(), Some(&b"1"[..]));
        assert_eq!(restored.get(s, &at(6, b"b")).unwrap(), Some(&b"3"[..]));
        assert!(
            files[1].0.ends_with("-1"),
            "key group 1's version of checkpoint 1 is written now: {}",
            files[1].0
        );
    }

    #[test]
    fn a_restored_backend_reuses_the_restored_files_for_segments_it_did_not_write() {
        let (mut b, s) = backend();
        for kg in 0..10u16 {
            b.put(s, &at(kg, b"k"), b"v").unwrap();
        }
        let files = files_of(b.snapshot(CheckpointId(4)).unwrap());
        let mut restored = restore_files(2, &files).unwrap();
        restored.put(s, &at(0, b"k"), b"w").unwrap();
        let again = files_of(restored.snapshot(CheckpointId(5)).unwrap());
        assert_ne!(files[1].0, again[1].0, "key group 0 was written");
        assert_eq!(files[2..], again[2..], "the rest is reused as restored");
    }

    #[test]
    fn two_backends_never_name_a_segment_file_alike() {
        let (mut a, s) = backend();
        let (mut b, _) = backend();
        a.put(s, &at(3, b"k"), b"v").unwrap();
        b.put(s, &at(3, b"k"), b"v").unwrap();
        let fa = files_of(a.snapshot(CheckpointId(4)).unwrap());
        let fb = files_of(b.snapshot(CheckpointId(4)).unwrap());
        assert_ne!(fa[1].0, fb[1].0);
    }

    #[test]
    fn many_key_groups_share_at_most_max_segments_files() {
        let range = KeyGroupRange {
            start: 100,
            end: 100 + 1000 - 1,
        };
        let seg = Segments::new(range);
        assert_eq!(seg.per, 63);
        assert_eq!(seg.count, 16);
        assert_eq!(seg.count as u32, MAX_SEGMENTS);
        assert_eq!(seg.of(100), 0);
        assert_eq!(seg.of(1099), 15);
        assert_eq!(
            seg.key_groups(15),
            KeyGroupRange {
                start: 1045,
                end: 1099
            }
        );
        let odd = Segments::new(KeyGroupRange { start: 0, end: 128 });
        assert_eq!((odd.per, odd.count), (9, 15));
        assert_eq!(
            odd.key_groups(14),
            KeyGroupRange {
                start: 126,
                end: 128
            }
        );
        let few = Segments::new(KeyGroupRange { start: 7, end: 9 });
        assert_eq!((few.per, few.count), (1, 3));
    }

    #[test]
    fn a_format_1_snapshot_still_restores() {
        #[derive(Serialize)]
        struct StateRef<'a> {
            cells: &'a CellMap,
        }
        #[derive(Serialize)]
        struct BodyV1<'a> {
            key_groups: KeyGroupRange,
            descriptors: Vec<StateDescriptor>,
            states: Vec<StateRef<'a>>,
        }
        let mut prefix = Vec::new();
        encoding::encode_prefix(&mut prefix, &at(3, b"k"));
        let cells: CellMap = [(prefix.into(), Cell::Value(Box::from(&b"v"[..])))]
            .into_iter()
            .collect();
        let body = BodyV1 {
            key_groups: RANGE,
            descriptors: vec![value_descriptor()],
            states: vec![StateRef { cells: &cells }],
        };
        let bytes = encode_framed(HEAP_SNAPSHOT_MAGIC, 1, &body).unwrap();
        assert_eq!(&bytes[..6], b"WHSS\x00\x01");
        let mut b = restore_files(1, &[(HEAP_SNAPSHOT_FILE.into(), bytes)]).unwrap();
        assert_eq!(b.get(StateId(0), &at(3, b"k")).unwrap(), Some(&b"v"[..]));
    }

    #[test]
    fn fuzzed_heap_snapshot_files_are_refused_or_restored_never_a_panic_or_a_hang() {
        let (_, small) = snapshot_files();
        let (mut b, s) = backend();
        for kg in 0..10u16 {
            b.put(s, &at(kg, b"key"), &[kg as u8; 5]).unwrap();
        }
        let big = files_of(b.snapshot(CheckpointId(4)).unwrap());
        let snapshot = RestoredSnapshot {
            checkpoint: CheckpointId(4),
            backend: "heap".into(),
            format: 2,
            key_groups: RANGE,
            descriptors: vec![value_descriptor()],
            files: Vec::new(),
            dir: std::env::temp_dir(),
        };
        let manifests = vec![small[0].1.clone(), big[0].1.clone()];
        weir_fuzz::run("heap snapshot manifest", &manifests, |bytes| {
            if let Ok(SnapshotHead::Manifest(m)) = decode_head(bytes) {
                let _ = HeapStateBackend::from_manifest(&snapshot, m, |name| {
                    big.iter()
                        .find(|(n, _)| n == name)
                        .map(|(_, b)| b.clone())
                        .ok_or_else(|| "missing".to_string())
                });
            }
        });
        let segments = vec![small[1].1.clone(), big[5].1.clone()];
        weir_fuzz::run("heap segment file", &segments, |bytes| {
            let manifest = Manifest {
                key_groups: RANGE,
                descriptors: vec![value_descriptor()],
                segment_files: vec!["f".into()],
            };
            let _ = HeapStateBackend::from_manifest(&snapshot, manifest, |_| Ok(bytes.to_vec()));
        });
    }

    #[test]
    fn a_heap_manifest_starts_with_the_magic_and_the_format_version() {
        let (_, files) = snapshot_files();
        assert_eq!(&files[0].1[..6], b"WHSS\x00\x02");
        assert_eq!(&files[1].1[..6], b"WHSG\x00\x01");
        assert!(restore_files(2, &files).is_ok());
    }

    #[test]
    fn a_damaged_heap_snapshot_is_refused_naming_the_checkpoint_and_the_file() {
        let (_, files) = snapshot_files();
        for which in [0, 1] {
            let name = files[which].0.clone();
            let bytes = &files[which].1;
            let mut bad_magic = bytes.clone();
            bad_magic[0] = b'X';
            let mut other_version = bytes.clone();
            other_version[5] = 9;
            let mut trailing = bytes.clone();
            trailing.push(0);
            let truncated = bytes[..bytes.len() - 1].to_vec();
            for (case, damaged) in [
                ("bad magic", bad_magic),
                ("format 9", other_version),
                ("after the body", trailing),
                ("decode", truncated),
                ("header", bytes[..5].to_vec()),
            ] {
                let mut broken = files.clone();
                broken[which].1 = damaged;
                let message = refusal(2, &broken);
                assert!(message.contains("chk-4"), "{case}: {message}");
                assert!(message.contains(&name), "{case}: {message}");
                assert!(message.contains(case), "{case}: {message}");
            }
        }
        let message = refusal(2, &files[..1]);
        assert!(message.contains(&files[1].0), "{message}");
        assert!(message.contains("missing"), "{message}");
        let mut extra = files.clone();
        extra.push(("heap-state-9999-x-4".into(), Vec::new()));
        assert!(refusal(2, &extra).contains("unexpected file"));
    }

    #[test]
    fn a_segment_file_with_a_cell_outside_its_key_groups_is_refused() {
        let (_, files) = snapshot_files();
        let mut prefix = Vec::new();
        encoding::encode_prefix(&mut prefix, &at(4, b"k"));
        let cells: CellMap = [(prefix.into(), Cell::Value(Box::from(&b"v"[..])))]
            .into_iter()
            .collect();
        // The file says it holds key group 3, but its cell is in key group 4.
        let bytes = encode_segment(KeyGroupRange { start: 3, end: 3 }, &[Arc::new(cells)]).unwrap();
        let mut broken = files.clone();
        broken[1].1 = bytes;
        let message = refusal(2, &broken);
        assert!(message.contains("kg-4"), "{message}");
        assert!(message.contains(&files[1].0), "{message}");
        // And a file claiming key groups outside the snapshot's range.
        let far = encode_segment(KeyGroupRange { start: 50, end: 50 }, &[]).unwrap();
        broken[1].1 = far;
        assert!(refusal(2, &broken).contains("not a part of"));
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
