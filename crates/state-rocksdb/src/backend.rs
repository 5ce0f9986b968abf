//! [`RocksDbStateBackend`]: one RocksDB instance behind a write-back cache.

use crate::{backend_error, BACKEND_NAME, SNAPSHOT_FORMAT};
use rocksdb::{ColumnFamily, Options, ReadOptions, WriteBatch, WriteOptions, DB};
use rustc_hash::FxHashMap;
use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use weir_state::encoding::{decode_state_key_checked, encode_prefix, encode_state_key};
use weir_state::{lookup_descriptor, Registration};
use weir_state::{
    KeyedStateBackend, LocalSnapshot, PendingFiles, SnapshotContent, SnapshotFile, StateDescriptor,
    StateEntry, StateError, StateId, StateKey, StateKind, UserKeyVisitor,
};
use weir_types::{CheckpointId, KeyGroupRange};

/// What one cached entry costs beyond its key and value bytes: the map slot, two boxes, the
/// allocator's headers and the table's slack.
const ENTRY_OVERHEAD_BYTES: usize = 96;

/// The bytes a cached entry is charged against the write-back budget.
fn entry_bytes(key_len: usize, value_len: usize) -> usize {
    key_len + value_len + ENTRY_OVERHEAD_BYTES
}

/// One cached cell: its value as of the last read or write (`None`: absent, or deleted), and
/// the cache generation in which RocksDB has yet to see it: the entry is dirty iff that is its
/// slot's [`generation`](Slot::generation). A snapshot starts a new generation, so every entry
/// of the generation it froze becomes clean at once when the two merge again.
///
/// Invariant: a clean entry equals what RocksDB holds at that key (once the snapshot that
/// froze it is joined).
#[derive(Debug)]
struct Entry {
    value: Option<Box<[u8]>>,
    dirty_in: u32,
    /// How often it was read or written since eviction passes last looked at it, up to
    /// [`MAX_USES`] (a generalized CLOCK's counter): each pass evicts entries used at most once
    /// and counts the others down by two, so an entry used by many records outlives one used
    /// by a single record (whose read-then-write counts once: the read that loads it counts
    /// nothing).
    uses: u8,
}

/// The most uses an entry's counter remembers.
const MAX_USES: u8 = 7;

/// The options of a state's column family: a state with a TTL also gets a compaction filter
/// that drops the entries whose expiry passed (see `weir_state::ttl`), so expired state
/// leaves the disk as RocksDB compacts, without a scan of ours.
pub(crate) fn options_for(cf_options: &rocksdb::Options, ttl: bool) -> rocksdb::Options {
    let mut o = cf_options.clone();
    if ttl {
        o.set_compaction_filter("weir-ttl", |_level: u32, _key: &[u8], value: &[u8]| {
            if weir_state::ttl::expired(value, weir_state::ttl::now_ms()) {
                rocksdb::compaction_filter::Decision::Remove
            } else {
                rocksdb::compaction_filter::Decision::Keep
            }
        });
    }
    o
}

/// [`Entry::dirty_in`] of an entry that is clean in every generation.
const CLEAN: u32 = 0;

/// The cached cells of one state, by encoded key. Map states keep theirs ordered, so the cells
/// under one prefix (one key's map) are a range and `prefix_for_each`/`delete_prefix` never
/// walk the whole cache; the other kinds only need point lookups, which a hash map does faster.
#[derive(Debug)]
enum Cells {
    Hashed(FxHashMap<Box<[u8]>, Entry>),
    Ordered(BTreeMap<Box<[u8]>, Entry>),
}

impl Cells {
    fn for_kind(kind: StateKind) -> Self {
        if kind.has_user_keys() {
            Cells::Ordered(BTreeMap::new())
        } else {
            Cells::Hashed(FxHashMap::default())
        }
    }

    fn contains(&self, key: &[u8]) -> bool {
        match self {
            Cells::Hashed(m) => m.contains_key(key),
            Cells::Ordered(m) => m.contains_key(key),
        }
    }

    fn get(&self, key: &[u8]) -> Option<&Entry> {
        match self {
            Cells::Hashed(m) => m.get(key),
            Cells::Ordered(m) => m.get(key),
        }
    }

    fn get_mut(&mut self, key: &[u8]) -> Option<&mut Entry> {
        match self {
            Cells::Hashed(m) => m.get_mut(key),
            Cells::Ordered(m) => m.get_mut(key),
        }
    }

    /// Inserts an entry for a key that is not cached yet.
    fn insert_new(&mut self, key: Box<[u8]>, entry: Entry) -> &mut Entry {
        match self {
            Cells::Hashed(m) => m.entry(key).or_insert(entry),
            Cells::Ordered(m) => m.entry(key).or_insert(entry),
        }
    }

    fn len(&self) -> usize {
        match self {
            Cells::Hashed(m) => m.len(),
            Cells::Ordered(m) => m.len(),
        }
    }

    /// Keeps the entries for which `f` says so.
    fn retain(&mut self, mut f: impl FnMut(&[u8], &mut Entry) -> bool) {
        match self {
            Cells::Hashed(m) => m.retain(|k, e| f(k, e)),
            Cells::Ordered(m) => m.retain(|k, e| f(k, e)),
        }
    }

    fn for_each_mut(&mut self, mut f: impl FnMut(&[u8], &mut Entry)) {
        match self {
            Cells::Hashed(m) => m.iter_mut().for_each(|(k, e)| f(k, e)),
            Cells::Ordered(m) => m.iter_mut().for_each(|(k, e)| f(k, e)),
        }
    }
}

/// The cached entries of an ordered map whose keys start with `prefix`.
fn range_under<'a>(
    map: &'a BTreeMap<Box<[u8]>, Entry>,
    prefix: &'a [u8],
) -> impl Iterator<Item = (&'a Box<[u8]>, &'a Entry)> + 'a {
    map.range::<[u8], _>((Bound::Included(prefix), Bound::Unbounded))
        .take_while(move |(k, _)| k.starts_with(prefix))
}

/// The smallest byte string greater than every string starting with `prefix`, if any.
fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut out = prefix.to_vec();
    while let Some(last) = out.pop() {
        if last < u8::MAX {
            out.push(last + 1);
            return Some(out);
        }
    }
    None
}

/// Read options bounding an iterator to the keys that start with `prefix`.
fn prefix_read_options(prefix: &[u8]) -> ReadOptions {
    let mut options = ReadOptions::default();
    options.set_iterate_lower_bound(prefix.to_vec());
    if let Some(upper) = prefix_successor(prefix) {
        options.set_iterate_upper_bound(upper);
    }
    options
}

/// The column family of the state named `name`.
fn column_family<'a>(db: &'a DB, name: &str) -> Result<&'a ColumnFamily, StateError> {
    db.cf_handle(name).ok_or_else(|| {
        backend_error(
            format!("find the column family of state '{name}'"),
            "it is not open",
        )
    })
}

/// One declared state's cache.
#[derive(Debug)]
struct Slot {
    cells: Cells,
    /// How many of `cells` are dirty.
    dirty: usize,
    /// Hashed cells only: the key of every entry that became dirty since the last time the
    /// state was written to RocksDB (a key may appear twice, or name an entry dropped since),
    /// so writing the dirty entries costs O(dirty), not O(cache). Empty for ordered cells,
    /// which are walked in order instead.
    dirty_log: Vec<Box<[u8]>>,
    /// What `dirty_log` is charged against the budget (part of the backend's cached bytes).
    log_bytes: usize,
    /// This cache generation (never [`CLEAN`]).
    generation: u32,
}

/// What one logged dirty key costs beyond its bytes: the boxed slice's pointer and length, and
/// the allocator's header.
const LOG_OVERHEAD_BYTES: usize = 32;

impl Slot {
    fn new(kind: StateKind, generation: u32) -> Self {
        Self {
            cells: Cells::for_kind(kind),
            dirty: 0,
            dirty_log: Vec::new(),
            log_bytes: 0,
            generation,
        }
    }

    /// Records that the entry at `key` just became dirty; returns the bytes the log grew by
    /// (charged to the budget by the caller).
    #[must_use]
    fn log_dirty(&mut self, key: &[u8]) -> usize {
        self.dirty += 1;
        if matches!(self.cells, Cells::Hashed(_)) {
            self.dirty_log.push(Box::from(key));
            let cost = key.len() + LOG_OVERHEAD_BYTES;
            self.log_bytes += cost;
            return cost;
        }
        0
    }

    /// Empties the dirty-key log; returns the bytes it was charged.
    #[must_use]
    fn clear_log(&mut self) -> usize {
        self.dirty_log.clear();
        std::mem::take(&mut self.log_bytes)
    }
}

/// The instance directory; removed when dropped (after the DB, which is declared before it in
/// [`RocksDbStateBackend`] and so closed first).
#[derive(Debug)]
pub(crate) struct InstanceDir(PathBuf);

impl InstanceDir {
    pub(crate) fn new(path: PathBuf) -> Self {
        Self(path)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for InstanceDir {
    fn drop(&mut self) {
        match std::fs::remove_dir_all(&self.0) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(
                path = %self.0.display(),
                error = %e,
                "cannot remove a RocksDB state directory"
            ),
        }
    }
}

/// Keyed state of one operator subtask in its own RocksDB instance, behind a write-back cache.
///
/// The write-back cache is what makes per-record state access fast: RocksDB does ~370K
/// get+put pairs per second, a hash map tens of millions. It holds, per state, clean entries
/// (values read from RocksDB, including cached absence) and dirty ones (writes RocksDB has not
/// seen yet), charged `key + value + 96` bytes each against the backend's share of the managed
/// memory ([`write_back_budget_bytes`](Self::write_back_budget_bytes)).
///
/// 1. [`get`](KeyedStateBackend::get): a cached entry answers; a miss reads RocksDB
///    (`get_pinned`) and caches the result, present or absent, as clean.
/// 2. [`put`](KeyedStateBackend::put) / [`delete`](KeyedStateBackend::delete): write the value
///    (or a tombstone) into the cache as dirty; RocksDB is not touched.
/// 3. Before an entry would take the cache over budget, it **evicts** down to half the budget,
///    keeping what is used most (a generalized CLOCK: a use counter per entry, counted down by
///    each eviction pass): clean entries go, without any write, if they are enough; otherwise
///    it **spills** first — every dirty entry goes to RocksDB in one `WriteBatch` (WAL off) and
///    becomes clean.
///    A failed write is returned as the operation's error, and the cache is left as it was.
/// 4. [`flush`](KeyedStateBackend::flush) writes the dirty entries the same way but keeps them,
///    now clean. [`prefix_for_each`](KeyedStateBackend::prefix_for_each) and
///    [`scan`](KeyedStateBackend::scan) first write the dirty entries they would read (the
///    prefix's, or the state's), then iterate RocksDB;
///    [`delete_prefix`](KeyedStateBackend::delete_prefix) drops the prefix's cached entries and
///    deletes its keys in RocksDB.
///
/// So a clean entry always equals RocksDB's value, and every read sees the latest write.
///
/// # Snapshots
/// [`snapshot`](KeyedStateBackend::snapshot) keeps the task's pause O(number of states): only
/// step 1 runs on the task thread, and it copies nothing.
/// 1. **Synchronous (the freeze)**: the cache is frozen as it is (a pointer swap per state)
///    and the task goes on with an empty one. The frozen generation is read-only and shared
///    with the background thread.
/// 2. **Background thread**: the frozen dirty entries (found through each state's dirty-key
///    log, so the cost is O(dirty), not O(cache)) are written, in key order, into one SST file
///    per state beside the instance and *ingested* (moved into the database as its newest
///    data: no memtable insert and no flush for them, which made 1 s checkpoints of 1M keys
///    10–30 % faster than a `WriteBatch`), then a RocksDB native checkpoint is created in
///    [`snapshot_dir`](Self::snapshot_dir),
///    which must not exist: RocksDB flushes every memtable, hard-links the live SST files and
///    copies the small metadata files. The snapshot's [`pending`](LocalSnapshot::pending) part
///    waits for it and lists the directory: every `*.sst` is shareable — RocksDB never
///    rewrites an SST nor reuses a file number, also after a restore, where it continues from
///    the MANIFEST's next file number — and every other file (`CURRENT`, `MANIFEST-*`,
///    `OPTIONS-*`, `*.log`) is private.
/// 3. Meanwhile a point read that misses the cache looks in the frozen generation before
///    RocksDB: a frozen key's value is the barrier's, which RocksDB may not hold yet, and any
///    other key's value is already in RocksDB. A hit is answered from the frozen generation
///    (no copy); a write goes to the new cache, as always.
/// 4. Once the entries are ingested (noticed at the next cache miss), the frozen generation
///    merges back into the cache — its entries are clean now, the newer ones win — walking
///    the smaller of the two, so the cache stays as warm as before the barrier. Until the
///    thread is joined, nothing else touches RocksDB: every write (spill, flush), scan, prefix
///    read, size query, registration and the next snapshot joins it first (and merges). So a
///    write made after the barrier can never reach the checkpoint, and "clean" still means
///    "RocksDB holds it" whenever RocksDB is looked at. If writing or ingesting failed, the
///    backend is poisoned: every later operation that joins the thread (a spill or flush, a
///    scan or prefix read, a size query, the next snapshot) fails, and the task restores from
///    a checkpoint. Point reads meanwhile stay right: the frozen generation still answers
///    for the barrier's entries.
///
/// The frozen generation is not charged to the budget while the background part runs: the
/// write-back memory may then reach twice the budget (the frozen generation and the new
/// cache); the merge charges it again, and the next write over budget spills. It is never
/// copied, so at steady state one cache generation is held.
///
/// If the checkpoint fails, its directory is removed and the pending part returns a
/// [`StateError::Snapshot`]. Otherwise the directory is the snapshot's
/// [`cleanup_dir`](LocalSnapshot::cleanup_dir): the uploader removes it, not the backend.
pub struct RocksDbStateBackend {
    // Field order matters: `db` must close before `dir` removes the directory. `Drop` joins
    // the background part of a snapshot (the only other holder of `db`) first.
    db: Arc<DB>,
    /// The background part of the last snapshot (ingestion + native checkpoint), until
    /// joined: every read or write of RocksDB waits for it first.
    in_flight: Option<std::thread::JoinHandle<Result<(), String>>>,
    /// The cache generation the last snapshot froze at its barrier, until its background part
    /// is joined: read-only, shared with that part (which writes its dirty entries), and
    /// consulted by point reads that miss the cache before RocksDB is.
    frozen: Option<Frozen>,
    /// The live cache's generation (see [`Entry`]); a snapshot starts the next one.
    generation: u32,
    /// Set when a snapshot's dirty entries could not be written: the cache marked entries clean
    /// that
    /// RocksDB does not hold, so every later operation fails (the task restores instead).
    poisoned: Option<String>,
    range: KeyGroupRange,
    descriptors: Vec<StateDescriptor>,
    slots: Vec<Slot>,
    cf_options: Options,
    write_options: WriteOptions,
    read_options: ReadOptions,
    /// Reused for encoding keys.
    scratch: Vec<u8>,
    cached_bytes: usize,
    budget_bytes: usize,
    spills: u64,
    evictions: u64,
    misses: u64,
    dir: InstanceDir,
}

impl std::fmt::Debug for RocksDbStateBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksDbStateBackend")
            .field("path", &self.dir.path())
            .field("range", &self.range)
            .field("descriptors", &self.descriptors)
            .field("cached_bytes", &self.cached_bytes)
            .field("budget_bytes", &self.budget_bytes)
            .finish_non_exhaustive()
    }
}

impl RocksDbStateBackend {
    pub(crate) fn new(
        db: DB,
        dir: InstanceDir,
        cf_options: Options,
        range: KeyGroupRange,
        budget_bytes: usize,
    ) -> Self {
        let mut write_options = WriteOptions::default();
        write_options.disable_wal(true);
        Self {
            db: Arc::new(db),
            in_flight: None,
            frozen: None,
            generation: 1,
            poisoned: None,
            range,
            descriptors: Vec::new(),
            slots: Vec::new(),
            cf_options,
            write_options,
            read_options: ReadOptions::default(),
            scratch: Vec::with_capacity(64),
            cached_bytes: 0,
            budget_bytes,
            spills: 0,
            evictions: 0,
            misses: 0,
            dir,
        }
    }

    /// Takes over `descriptors` as registered, in order, for a backend opened on a restored
    /// instance whose column families already exist.
    pub(crate) fn with_states(mut self, descriptors: Vec<StateDescriptor>) -> Self {
        self.slots = descriptors
            .iter()
            .map(|d| Slot::new(d.kind, self.generation))
            .collect();
        self.descriptors = descriptors;
        self
    }

    /// The instance's directory (removed when the backend is dropped).
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Where [`snapshot`](KeyedStateBackend::snapshot) puts the native checkpoint for
    /// `checkpoint`: `<instance dir>.chk-<id>`, a sibling of the instance directory (RocksDB
    /// never touches it), removed by whoever uploads the snapshot, not by this backend.
    pub fn snapshot_dir(&self, checkpoint: CheckpointId) -> PathBuf {
        let mut name = self.dir.path().as_os_str().to_owned();
        name.push(format!(".chk-{}", checkpoint.0));
        PathBuf::from(name)
    }

    /// Where the background part of the snapshot for `checkpoint` builds the SST of state
    /// `state`'s dirty entries before RocksDB ingests it:
    /// `<instance dir>.ingest-<id>-<state>.sst`, a sibling like
    /// [`snapshot_dir`](Self::snapshot_dir), gone once ingested (or once ingesting failed).
    pub fn ingest_file(&self, checkpoint: CheckpointId, state: StateId) -> PathBuf {
        ingest_file(self.dir.path(), checkpoint, state.0 as usize)
    }

    /// Bytes the write-back cache is charged for now.
    pub fn write_back_cache_bytes(&self) -> usize {
        self.cached_bytes
    }

    /// The write-back cache's budget: this backend's share of the managed memory.
    pub fn write_back_budget_bytes(&self) -> usize {
        self.budget_bytes
    }

    /// How many times the write-back cache wrote its dirty entries to RocksDB to make room.
    pub fn spill_count(&self) -> u64 {
        self.spills
    }

    /// Point reads the cache could not answer (they read RocksDB).
    pub fn cache_misses(&self) -> u64 {
        self.misses
    }

    /// How many times the write-back cache evicted entries to make room (with or without a
    /// spill first).
    pub fn eviction_count(&self) -> u64 {
        self.evictions
    }

    /// Checks that `state` is known and `key` lies in the owned range; returns the state's
    /// index.
    fn check(&self, state: StateId, key: &StateKey<'_>) -> Result<usize, StateError> {
        let idx = state.0 as usize;
        if idx >= self.slots.len() {
            return Err(StateError::UnknownState(state.0));
        }
        if !self.range.contains(key.key_group) {
            return Err(StateError::KeyGroupOutOfRange {
                key_group: key.key_group,
                range: self.range,
            });
        }
        Ok(idx)
    }

    /// [`check`](Self::check)s, refuses a user key on a non-map state, and encodes the full key
    /// into `self.scratch`.
    fn prepare(&mut self, state: StateId, key: &StateKey<'_>) -> Result<usize, StateError> {
        let idx = self.check(state, key)?;
        let descriptor = &self.descriptors[idx];
        if !descriptor.kind.has_user_keys() && !key.user_key.is_empty() {
            return Err(StateError::MalformedKey {
                state: descriptor.name.clone(),
                detail: "a user key was given for a state that is not a map state".into(),
            });
        }
        self.scratch.clear();
        encode_state_key(&mut self.scratch, key);
        Ok(idx)
    }

    /// Evicts if an entry of `size` bytes would take the cache over budget (see
    /// [`spill`](Self::spill)).
    fn make_room(&mut self, size: usize) -> Result<(), StateError> {
        if self.cached_bytes > 0 && self.cached_bytes + size > self.budget_bytes {
            self.spill()?;
        }
        Ok(())
    }

    /// Brings the cache down to half its budget, keeping what is used most (a generalized
    /// CLOCK, in passes):
    ///
    /// 1. When most entries are dirty, or the clean ones that are not hot would not be enough,
    ///    every dirty entry is written to RocksDB in one batch first (a **spill**) and becomes
    ///    clean; otherwise nothing is written.
    /// 2. A pass over the cache evicts every clean entry used at most once since the last pass
    ///    (a record that reads then writes a key it had to load uses it once) and counts the
    ///    others down by two; more passes follow, stopping at half the budget, while the cache
    ///    is above it; after a few every clean entry could have gone, so it always gets there.
    ///    Dirty entries stay.
    ///
    /// With uniform keys almost everything is used once, so one pass empties the cache much as
    /// dropping it did; with skewed keys the hot ones stay. The next eviction comes only after
    /// half the budget was filled again, so the walks cost O(1) per cached entry.
    fn spill(&mut self) -> Result<(), StateError> {
        let target = self.budget_bytes / 2;
        let (entries, dirty) = self
            .slots
            .iter()
            .fold((0, 0), |(n, d), s| (n + s.cells.len(), d + s.dirty));
        let write_first = dirty * 2 >= entries || {
            // Clean entries that are not hot: they alone may be enough, and cost no write.
            let mut cold_clean = 0usize;
            for slot in &mut self.slots {
                let generation = slot.generation;
                slot.cells.for_each_mut(|key, e| {
                    if e.dirty_in != generation && e.uses <= 1 {
                        cold_clean +=
                            entry_bytes(key.len(), e.value.as_deref().map_or(0, <[u8]>::len));
                    }
                });
            }
            self.cached_bytes.saturating_sub(cold_clean) > target
        };
        let mut written = 0;
        if write_first {
            written = self.write_dirty(None)?;
            for slot in &mut self.slots {
                slot.dirty = 0;
                self.cached_bytes -= slot.clear_log();
            }
            self.spills += 1;
        }
        let before = self.cached_bytes;
        let mut bytes = self.cached_bytes;
        for pass in 0..=MAX_USES / 2 {
            for slot in &mut self.slots {
                let generation = slot.generation;
                slot.cells.retain(|key, e| {
                    // Written above: clean now (every entry is visited by the first pass).
                    if write_first && e.dirty_in == generation {
                        e.dirty_in = CLEAN;
                    }
                    // The first pass takes every cold clean entry (the next eviction then comes
                    // after a whole budget, not half of one); later ones stop at the target.
                    if (pass > 0 && bytes <= target) || e.dirty_in == generation {
                        return true;
                    }
                    if e.uses > 1 {
                        e.uses -= 2;
                        return true;
                    }
                    bytes -= entry_bytes(key.len(), e.value.as_deref().map_or(0, <[u8]>::len));
                    false
                });
            }
            if bytes <= target {
                break;
            }
        }
        tracing::debug!(
            path = %self.dir.path().display(),
            before_bytes = before,
            after_bytes = bytes,
            written,
            "write-back cache evicted"
        );
        self.cached_bytes = bytes;
        self.evictions += 1;
        Ok(())
    }

    /// Writes the dirty entries of every state (or only of state `only`) to RocksDB in one
    /// batch, leaving them marked dirty; returns how many were written.
    ///
    /// Entries go into the batch in key order: the memtable is a skip list, and inserting
    /// sorted keys lets it reuse each insertion's search path for the next.
    fn write_dirty(&mut self, only: Option<usize>) -> Result<usize, StateError> {
        let batch = self.dirty_batch(only)?;
        self.write(batch)
    }

    /// The dirty entries of every state (or only of state `only`) as one batch, in key order
    /// per state; the entries stay marked dirty. Costs O(dirty) for hashed states.
    fn dirty_batch(&self, only: Option<usize>) -> Result<WriteBatch, StateError> {
        dirty_batch(&self.db, &self.descriptors, &self.slots, only)
    }

    /// Waits for the background part of the last snapshot; RocksDB holds every write made
    /// before it afterwards. Fails (for good) if that part could not write its batch.
    fn settle(&mut self) -> Result<(), StateError> {
        if let Some(thread) = self.in_flight.take() {
            let outcome = thread
                .join()
                .unwrap_or_else(|_| Err("the snapshot thread panicked".into()));
            if let Err(detail) = outcome {
                self.poisoned = Some(detail);
            }
        }
        if let Some(frozen) = self.frozen.take() {
            // Joined: the thread's handle on the generation is gone.
            match Arc::try_unwrap(frozen.slots) {
                Ok(base) if self.poisoned.is_none() => self.merge_frozen(base, frozen.bytes),
                Ok(base) => release(base),
                Err(shared) => release_shared(shared),
            }
        }
        match &self.poisoned {
            Some(detail) => Err(backend_error(
                format!(
                    "use {} after a snapshot failed to write its dirty entries",
                    self.dir.path().display()
                ),
                detail,
            )),
            None => Ok(()),
        }
    }

    /// Takes the frozen generation `base` (charged `base_bytes`) back into the cache once the
    /// snapshot's background part wrote it: the entries written since the barrier win, and
    /// the cache stays as warm as it was. Costs O(the smaller of the two).
    fn merge_frozen(&mut self, base: Vec<Slot>, base_bytes: usize) {
        let newer = std::mem::take(&mut self.slots);
        let mut bytes = base_bytes + self.cached_bytes;
        let mut base = base.into_iter();
        for cur in newer {
            let Some(old) = base.next() else {
                self.slots.push(cur);
                continue;
            };
            // The frozen generation's log is done with: its entries are clean.
            bytes -= old.log_bytes;
            let (cells, dropped) = match (old.cells, cur.cells) {
                (Cells::Hashed(b), Cells::Hashed(n)) => {
                    let (m, d) = merge_maps(b, n);
                    (Cells::Hashed(m), d)
                }
                (Cells::Ordered(b), Cells::Ordered(n)) => {
                    let (m, d) = merge_maps(b, n);
                    (Cells::Ordered(m), d)
                }
                // A state's kind never changes: keep the newer cells.
                (_, n) => (n, 0),
            };
            bytes -= dropped;
            // The frozen entries carry the older generation: clean now, without a walk.
            self.slots.push(Slot {
                cells,
                dirty: cur.dirty,
                dirty_log: cur.dirty_log,
                log_bytes: cur.log_bytes,
                generation: cur.generation,
            });
        }
        self.cached_bytes = bytes;
    }

    /// Merges the frozen generation back as soon as the background part has written its batch
    /// (RocksDB holds its values; the native checkpoint may still be in the making): the
    /// window in which reads look in two maps and writes allocate new entries stays short.
    fn reclaim_written(&mut self) {
        let written = self
            .frozen
            .as_ref()
            .is_some_and(|f| f.written.load(std::sync::atomic::Ordering::Acquire));
        if !written {
            return;
        }
        let Some(frozen) = self.frozen.take() else {
            return;
        };
        match Arc::try_unwrap(frozen.slots) {
            Ok(base) => self.merge_frozen(base, frozen.bytes),
            Err(shared) => {
                // Not ours alone yet (cannot happen once `written` is set): look again later.
                self.frozen = Some(Frozen {
                    slots: shared,
                    bytes: frozen.bytes,
                    written: frozen.written,
                });
            }
        }
    }

    /// Writes `batch` (WAL off); returns how many operations it held.
    fn write(&mut self, batch: WriteBatch) -> Result<usize, StateError> {
        self.settle()?;
        let n = batch.len();
        if n > 0 {
            self.db.write_opt(batch, &self.write_options).map_err(|e| {
                backend_error(format!("write a batch to {}", self.dir.path().display()), e)
            })?;
        }
        Ok(n)
    }

    /// Marks the entries of every state (or only of state `only`) clean.
    fn mark_clean(&mut self, only: Option<usize>) {
        for (idx, slot) in self.slots.iter_mut().enumerate() {
            if slot.dirty == 0 || only.is_some_and(|o| o != idx) {
                continue;
            }
            match &mut slot.cells {
                Cells::Hashed(map) => {
                    for key in slot.dirty_log.drain(..) {
                        if let Some(entry) = map.get_mut(&key) {
                            entry.dirty_in = CLEAN;
                        }
                    }
                }
                Cells::Ordered(_) => slot.cells.for_each_mut(|_, entry| entry.dirty_in = CLEAN),
            }
            slot.dirty = 0;
            self.cached_bytes -= std::mem::take(&mut slot.log_bytes);
        }
    }

    /// Makes RocksDB hold every write to state `idx` under `prefix`: the range of an ordered
    /// cache, or the whole state for a hashed one.
    fn flush_prefix(&mut self, idx: usize, prefix: &[u8]) -> Result<(), StateError> {
        let slot = &self.slots[idx];
        if slot.dirty == 0 {
            return Ok(());
        }
        let Cells::Ordered(map) = &slot.cells else {
            self.write_dirty(Some(idx))?;
            self.mark_clean(Some(idx));
            return Ok(());
        };
        let cf = column_family(&self.db, &self.descriptors[idx].name)?;
        let generation = slot.generation;
        let mut batch = WriteBatch::default();
        for (key, entry) in range_under(map, prefix) {
            if entry.dirty_in == generation {
                match &entry.value {
                    Some(value) => batch.put_cf(cf, key, value),
                    None => batch.delete_cf(cf, key),
                }
            }
        }
        if self.write(batch)? == 0 {
            return Ok(());
        }
        let slot = &mut self.slots[idx];
        if let Cells::Ordered(map) = &mut slot.cells {
            let upper = prefix_successor(prefix);
            let upper = match &upper {
                Some(u) => Bound::Excluded(&u[..]),
                None => Bound::Unbounded,
            };
            for (_, entry) in map.range_mut::<[u8], _>((Bound::Included(prefix), upper)) {
                if entry.dirty_in == slot.generation {
                    entry.dirty_in = CLEAN;
                    slot.dirty -= 1;
                }
            }
        }
        Ok(())
    }

    /// Visits RocksDB's entries of state `idx` whose keys start with `prefix` (all of them when
    /// it is empty), in key order: `f(key, value)`.
    fn iterate(
        &self,
        idx: usize,
        prefix: &[u8],
        f: &mut UserKeyVisitor<'_>,
    ) -> Result<(), StateError> {
        let name = &self.descriptors[idx].name;
        let cf = column_family(&self.db, name)?;
        let mut it = self.db.raw_iterator_cf_opt(cf, prefix_read_options(prefix));
        it.seek(prefix);
        while let Some((key, value)) = it.item() {
            f(key, value)?;
            it.next();
        }
        it.status()
            .map_err(|e| backend_error(format!("iterate state '{name}'"), e))
    }

    /// The cells under `prefix` (an encoded cell prefix) of map state `idx`: dropped from the
    /// cache and deleted in RocksDB.
    fn delete_map_prefix(&mut self, idx: usize, prefix: &[u8]) -> Result<(), StateError> {
        // The prefix's cached cells may hold values only a snapshot's in-flight batch has:
        // let it land before the cells go and RocksDB is scanned for what to delete.
        self.settle()?;
        let slot = &mut self.slots[idx];
        match &mut slot.cells {
            Cells::Ordered(map) => {
                let doomed: Vec<Box<[u8]>> =
                    range_under(map, prefix).map(|(k, _)| k.clone()).collect();
                for key in doomed {
                    if let Some(entry) = map.remove(&key) {
                        let value_len = entry.value.as_deref().map_or(0, <[u8]>::len);
                        self.cached_bytes -= entry_bytes(key.len(), value_len);
                        if entry.dirty_in == slot.generation {
                            slot.dirty -= 1;
                        }
                    }
                }
            }
            Cells::Hashed(map) => {
                let (mut bytes, mut dirty) = (0, 0);
                let generation = slot.generation;
                map.retain(|key, entry| {
                    let keep = !key.starts_with(prefix);
                    if !keep {
                        bytes +=
                            entry_bytes(key.len(), entry.value.as_deref().map_or(0, <[u8]>::len));
                        dirty += usize::from(entry.dirty_in == generation);
                    }
                    keep
                });
                self.cached_bytes -= bytes;
                slot.dirty -= dirty;
            }
        }
        // Every dirty entry under the prefix is gone from the cache, so RocksDB is the truth
        // for it: delete what it holds.
        let cf = column_family(&self.db, &self.descriptors[idx].name)?;
        let mut batch = WriteBatch::default();
        self.iterate(idx, prefix, &mut |key, _| {
            batch.delete_cf(cf, key);
            Ok(())
        })?;
        self.write(batch)?;
        Ok(())
    }
}

impl KeyedStateBackend for RocksDbStateBackend {
    fn name(&self) -> &'static str {
        BACKEND_NAME
    }

    fn key_group_range(&self) -> KeyGroupRange {
        self.range
    }

    fn register(&mut self, descriptor: &StateDescriptor) -> Result<StateId, StateError> {
        let id = match lookup_descriptor(&self.descriptors, descriptor, BACKEND_NAME)? {
            Registration::Known(id) => return Ok(id),
            Registration::New(id) => id,
        };
        // The default column family is always open (and otherwise unused).
        if descriptor.name != rocksdb::DEFAULT_COLUMN_FAMILY_NAME {
            self.settle()?;
            let path = self.dir.path().display().to_string();
            Arc::get_mut(&mut self.db)
                .ok_or_else(|| {
                    backend_error(
                        format!("register state '{}' in {path}", descriptor.name),
                        "the database is shared with a snapshot still running",
                    )
                })?
                .create_cf(&descriptor.name, {
                    // `create_cf` does not keep the options' compaction filter alive (an open
                    // with column family descriptors does), and RocksDB calls it for as long
                    // as the database lives, which a snapshot thread may extend past this
                    // backend: the options of a new TTL column family are kept for the
                    // process's life (a few hundred bytes per TTL state created fresh; a
                    // restored backend opens its families instead).
                    if descriptor.kind.has_ttl() {
                        &*Box::leak(Box::new(options_for(&self.cf_options, true)))
                    } else {
                        &self.cf_options
                    }
                })
                .map_err(|e| {
                    backend_error(
                        format!(
                            "create the column family of state '{}' in {}",
                            descriptor.name,
                            self.dir.path().display()
                        ),
                        e,
                    )
                })?;
        }
        self.descriptors.push(descriptor.clone());
        self.slots.push(Slot::new(descriptor.kind, self.generation));
        Ok(id)
    }

    fn descriptors(&self) -> &[StateDescriptor] {
        &self.descriptors
    }

    fn get(&mut self, state: StateId, key: &StateKey<'_>) -> Result<Option<&[u8]>, StateError> {
        let idx = self.prepare(state, key)?;
        let hit = match self.slots[idx].cells.get_mut(&self.scratch) {
            Some(entry) => {
                entry.uses = (entry.uses + 1).min(MAX_USES);
                true
            }
            None => false,
        };
        if hit {
            let entry = self.slots[idx].cells.get(&self.scratch);
            return Ok(entry.and_then(|e| e.value.as_deref()));
        }
        // A written frozen generation is the cache's again.
        self.reclaim_written();
        // Its value as of the barrier, which the background part may be writing to RocksDB
        // right now: answered from the frozen generation, not copied (it comes back into the
        // cache when the part is joined).
        fn frozen_cells(f: &Frozen, idx: usize) -> Option<&Cells> {
            f.slots.get(idx).map(|slot| &slot.cells)
        }
        if self
            .frozen
            .as_ref()
            .and_then(|f| frozen_cells(f, idx))
            .is_some_and(|cells| cells.contains(&self.scratch))
        {
            let entry = self
                .frozen
                .as_ref()
                .and_then(|f| frozen_cells(f, idx))
                .and_then(|cells| cells.get(&self.scratch));
            return Ok(entry.and_then(|e| e.value.as_deref()));
        }
        self.misses += 1;
        let name = &self.descriptors[idx].name;
        let cf = column_family(&self.db, name)?;
        let loaded: Option<Box<[u8]>> = self
            .db
            .get_pinned_cf_opt(cf, &self.scratch, &self.read_options)
            .map_err(|e| backend_error(format!("get from state '{name}'"), e))?
            .map(|v| Box::from(&*v));
        let size = entry_bytes(self.scratch.len(), loaded.as_deref().map_or(0, <[u8]>::len));
        self.make_room(size)?;
        self.cached_bytes += size;
        let key = Box::from(&self.scratch[..]);
        let entry = self.slots[idx].cells.insert_new(
            key,
            Entry {
                value: loaded,
                dirty_in: CLEAN,
                uses: 0,
            },
        );
        Ok(entry.value.as_deref())
    }

    fn put(&mut self, state: StateId, key: &StateKey<'_>, value: &[u8]) -> Result<(), StateError> {
        let idx = self.prepare(state, key)?;
        let slot = &mut self.slots[idx];
        if let Some(entry) = slot.cells.get_mut(&self.scratch) {
            let old_len = entry.value.as_deref().map_or(0, <[u8]>::len);
            match &mut entry.value {
                Some(old) if old.len() == value.len() => old.copy_from_slice(value),
                other => *other = Some(value.into()),
            }
            let newly_dirty = entry.dirty_in != slot.generation;
            entry.dirty_in = slot.generation;
            entry.uses = (entry.uses + 1).min(MAX_USES);
            if newly_dirty {
                self.cached_bytes += slot.log_dirty(&self.scratch);
            }
            self.cached_bytes = self.cached_bytes + value.len() - old_len;
            if self.cached_bytes > self.budget_bytes {
                self.spill()?;
            }
            return Ok(());
        }
        self.make_room(entry_bytes(self.scratch.len(), value.len()))?;
        self.cached_bytes += entry_bytes(self.scratch.len(), value.len());
        let slot = &mut self.slots[idx];
        slot.cells.insert_new(
            Box::from(&self.scratch[..]),
            Entry {
                value: Some(value.into()),
                dirty_in: slot.generation,
                uses: 0,
            },
        );
        self.cached_bytes += slot.log_dirty(&self.scratch);
        Ok(())
    }

    fn delete(&mut self, state: StateId, key: &StateKey<'_>) -> Result<(), StateError> {
        let idx = self.prepare(state, key)?;
        let slot = &mut self.slots[idx];
        if let Some(entry) = slot.cells.get_mut(&self.scratch) {
            entry.uses = (entry.uses + 1).min(MAX_USES);
            // Already absent (clean) or deleted (dirty tombstone): nothing to do.
            if let Some(old) = entry.value.take() {
                self.cached_bytes -= old.len();
                let newly_dirty = entry.dirty_in != slot.generation;
                entry.dirty_in = slot.generation;
                if newly_dirty {
                    self.cached_bytes += slot.log_dirty(&self.scratch);
                }
            }
            return Ok(());
        }
        self.make_room(entry_bytes(self.scratch.len(), 0))?;
        self.cached_bytes += entry_bytes(self.scratch.len(), 0);
        let slot = &mut self.slots[idx];
        slot.cells.insert_new(
            Box::from(&self.scratch[..]),
            Entry {
                value: None,
                dirty_in: slot.generation,
                uses: 0,
            },
        );
        self.cached_bytes += slot.log_dirty(&self.scratch);
        Ok(())
    }

    fn prefix_for_each(
        &mut self,
        state: StateId,
        prefix: &StateKey<'_>,
        f: &mut UserKeyVisitor<'_>,
    ) -> Result<(), StateError> {
        let idx = self.check(state, prefix)?;
        self.settle()?;
        let cell = StateKey {
            user_key: &[],
            ..*prefix
        };
        if !self.descriptors[idx].kind.has_user_keys() {
            // One cell per prefix: a point read.
            return match self.get(state, &cell)? {
                Some(value) => f(&[], value),
                None => Ok(()),
            };
        }
        let mut encoded = Vec::with_capacity(32);
        encode_prefix(&mut encoded, &cell);
        self.flush_prefix(idx, &encoded)?;
        let skip = encoded.len();
        self.iterate(idx, &encoded, &mut |key, value| f(&key[skip..], value))
    }

    fn delete_prefix(&mut self, state: StateId, prefix: &StateKey<'_>) -> Result<(), StateError> {
        let idx = self.check(state, prefix)?;
        let cell = StateKey {
            user_key: &[],
            ..*prefix
        };
        if !self.descriptors[idx].kind.has_user_keys() {
            return self.delete(state, &cell);
        }
        let mut encoded = Vec::with_capacity(32);
        encode_prefix(&mut encoded, &cell);
        self.delete_map_prefix(idx, &encoded)
    }

    fn scan(
        &mut self,
        state: StateId,
        f: &mut dyn FnMut(&StateEntry<'_>) -> Result<(), StateError>,
    ) -> Result<(), StateError> {
        let idx = state.0 as usize;
        if idx >= self.slots.len() {
            return Err(StateError::UnknownState(state.0));
        }
        self.settle()?;
        self.write_dirty(Some(idx))?;
        self.mark_clean(Some(idx));
        let name = &self.descriptors[idx].name;
        self.iterate(idx, &[], &mut |key, value| {
            let key = decode_state_key_checked(name, key)?;
            f(&StateEntry { key, value })
        })
    }

    fn flush(&mut self) -> Result<(), StateError> {
        self.write_dirty(None)?;
        self.mark_clean(None);
        Ok(())
    }

    fn compact(&mut self) -> Result<(), StateError> {
        self.settle()?;
        self.flush()?;
        // Everything is written: drop the cached copies of expired values (the store drops
        // its own in the compaction below), so no read or scan meets them again.
        let now = weir_state::ttl::now_ms();
        let mut freed = 0;
        for (slot, d) in self.slots.iter_mut().zip(&self.descriptors) {
            if !d.kind.has_ttl() {
                continue;
            }
            slot.cells.retain(|key, e| {
                let value = e.value.as_deref();
                let keep = value.is_some_and(|v| !weir_state::ttl::expired(v, now));
                if !keep {
                    freed += entry_bytes(key.len(), value.map_or(0, <[u8]>::len));
                }
                keep
            });
        }
        self.cached_bytes -= freed;
        for d in &self.descriptors {
            let cf = column_family(&self.db, &d.name)?;
            self.db
                .flush_cf(cf)
                .map_err(|e| backend_error(format!("flush state '{}'", d.name), e))?;
            self.db.compact_range_cf(cf, None::<&[u8]>, None::<&[u8]>);
        }
        Ok(())
    }

    fn size_bytes(&mut self) -> Result<u64, StateError> {
        self.settle()?;
        self.flush()?;
        let mut total = 0u64;
        let default = rocksdb::DEFAULT_COLUMN_FAMILY_NAME;
        let default_is_a_state = self.descriptors.iter().any(|d| d.name == default);
        let names = self
            .descriptors
            .iter()
            .map(|d| d.name.as_str())
            .chain((!default_is_a_state).then_some(default));
        for name in names {
            let cf = column_family(&self.db, name)?;
            for property in [
                rocksdb::properties::TOTAL_SST_FILES_SIZE,
                rocksdb::properties::CUR_SIZE_ALL_MEM_TABLES,
            ] {
                let value = self
                    .db
                    .property_int_value_cf(cf, property)
                    .map_err(|e| backend_error(format!("read the size of state '{name}'"), e))?;
                total += value.unwrap_or(0);
            }
        }
        Ok(total)
    }

    /// A native checkpoint; see [the type's docs](RocksDbStateBackend#snapshots).
    fn snapshot(&mut self, checkpoint: CheckpointId) -> Result<LocalSnapshot, StateError> {
        let started = Instant::now();
        let failed = |op: String, detail: &dyn std::fmt::Display| StateError::Snapshot {
            checkpoint,
            backend: BACKEND_NAME,
            op,
            detail: detail.to_string(),
        };
        self.settle()
            .map_err(|e| failed("finish the previous snapshot".into(), &e))?;
        let dir = self.snapshot_dir(checkpoint);
        if std::fs::symlink_metadata(&dir).is_ok() {
            return Err(failed(
                format!("create the checkpoint directory {}", dir.display()),
                &"it already exists",
            ));
        }
        // Synchronous, O(states): the cache generation is frozen as it is and the task goes on
        // with an empty one. Point reads that miss it find the frozen values; every other read
        // or write of RocksDB settles the background part first.
        self.generation = match self.generation.wrapping_add(1) {
            CLEAN => 1,
            next => next,
        };
        let fresh = self
            .descriptors
            .iter()
            .map(|d| Slot::new(d.kind, self.generation))
            .collect();
        let frozen = Arc::new(std::mem::replace(&mut self.slots, fresh));
        let frozen_bytes = std::mem::take(&mut self.cached_bytes);
        let dirty: usize = frozen.iter().map(|slot| slot.dirty).sum();
        let batch_written = Arc::new(std::sync::atomic::AtomicBool::new(false));
        self.frozen = Some(Frozen {
            slots: Arc::clone(&frozen),
            bytes: frozen_bytes,
            written: Arc::clone(&batch_written),
        });
        let descriptors = self.descriptors.clone();
        // Background: ingest the frozen dirty entries, then the native checkpoint (flush, hard
        // links).
        let db = self.db.clone();
        let target = dir.clone();
        let sst_options = self.cf_options.clone();
        let instance = self.dir.path().to_path_buf();
        let (files_tx, files_rx) = std::sync::mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("weir-rocksdb-snapshot".into())
            .spawn(move || -> Result<(), String> {
                let written = ingest_dirty(&db, &descriptors, &frozen, &sst_options, |idx| {
                    ingest_file(&instance, checkpoint, idx)
                });
                drop(frozen);
                if written.is_ok() {
                    // RocksDB holds every frozen value now: the task may take it back.
                    batch_written.store(true, std::sync::atomic::Ordering::Release);
                }
                if let Err(e) = written {
                    let detail = format!("write the snapshot's dirty entries: {e}");
                    let _ = files_tx.send(Err(detail.clone()));
                    return Err(detail);
                }
                let files = rocksdb::checkpoint::Checkpoint::new(&db)
                    .and_then(|c| c.create_checkpoint(&target))
                    .map_err(|e| {
                        format!("create a RocksDB checkpoint in {}: {e}", target.display())
                    })
                    .and_then(|()| {
                        snapshot_files(&target)
                            .map_err(|e| format!("list the files of {}: {e}", target.display()))
                    });
                if files.is_err() {
                    remove_incomplete(&target);
                }
                let _ = files_tx.send(files);
                Ok(())
            })
            .map_err(|e| {
                // The frozen generation's dirty entries are lost with the thread.
                if let Some(f) = self.frozen.take() {
                    release_shared(f.slots);
                }
                self.poisoned = Some(format!("the snapshot thread could not start: {e}"));
                failed("start the snapshot thread".into(), &e)
            })?;
        self.in_flight = Some(thread);
        tracing::debug!(
            path = %dir.display(),
            %checkpoint,
            dirty,
            frozen_bytes,
            sync_millis = started.elapsed().as_secs_f64() * 1e3,
            "RocksDB snapshot started"
        );
        let pending = PendingFiles::new(move || {
            let outcome = files_rx
                .recv()
                .unwrap_or_else(|_| Err("the snapshot thread ended without a result".into()));
            outcome.map_err(|detail| StateError::Snapshot {
                checkpoint,
                backend: BACKEND_NAME,
                op: "finish the native checkpoint".into(),
                detail,
            })
        });
        Ok(LocalSnapshot {
            checkpoint,
            backend: BACKEND_NAME,
            format: SNAPSHOT_FORMAT,
            key_groups: self.range,
            descriptors: self.descriptors.clone(),
            files: Vec::new(),
            cleanup_dir: Some(dir),
            pending: Some(pending),
        })
    }
}

impl Drop for RocksDbStateBackend {
    fn drop(&mut self) {
        // The snapshot thread holds the other reference to `db`: let it finish before the
        // database closes and its directory goes.
        if let Some(thread) = self.in_flight.take() {
            let _ = thread.join();
        }
    }
}

/// The cache generation a snapshot froze at its barrier, and the bytes it was charged.
struct Frozen {
    slots: Arc<Vec<Slot>>,
    bytes: usize,
    /// Set by the background part once RocksDB holds the generation's dirty entries (and it
    /// dropped its own handle on them), before it creates the native checkpoint.
    written: Arc<std::sync::atomic::AtomicBool>,
}

/// Drops a cache generation: on a thread of its own when it is large, so that freeing up to a
/// whole cache's entries never pauses the task.
fn release(slots: Vec<Slot>) {
    const INLINE_ENTRIES: usize = 4096;
    let entries: usize = slots.iter().map(|slot| slot.cells.len()).sum();
    if entries <= INLINE_ENTRIES {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("weir-rocksdb-release".into())
        .spawn(move || drop(slots));
    if let Err(e) = spawned {
        tracing::debug!(error = %e, "freeing a cache generation on the task thread");
    }
}

/// [`release`] for a generation something else may still hold.
fn release_shared(slots: Arc<Vec<Slot>>) {
    let _ = std::thread::Builder::new()
        .name("weir-rocksdb-release".into())
        .spawn(move || drop(slots));
}

/// Moves every entry of `from` into `into`, replacing what `into` holds at the same key;
/// returns the bytes of the replaced entries.
fn move_entries<M>(into: &mut M, from: M) -> usize
where
    M: IntoIterator<Item = (Box<[u8]>, Entry)> + Extendable,
{
    let mut replaced = 0;
    let mut graveyard = Vec::new();
    for (key, entry) in from {
        // Replaced in place, so both the key and the old entry are freed later, elsewhere.
        match into.slot(&key) {
            Some(existing) => {
                let old = std::mem::replace(existing, entry);
                replaced += entry_bytes(key.len(), old.value.as_deref().map_or(0, <[u8]>::len));
                graveyard.push((Some(key), old));
            }
            None => {
                into.put(key, entry);
            }
        }
    }
    bury(graveyard);
    replaced
}

/// Frees replaced entries, off the task's thread when there are many (the frees of a million
/// small boxes are a good part of a merge).
fn bury(graveyard: Vec<(Option<Box<[u8]>>, Entry)>) {
    const INLINE_ENTRIES: usize = 4096;
    if graveyard.len() <= INLINE_ENTRIES {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("weir-rocksdb-release".into())
        .spawn(move || drop(graveyard));
    if let Err(e) = spawned {
        tracing::debug!(error = %e, "freeing replaced cache entries on the task thread");
    }
}

/// Moves the entries of `from` that `into` lacks into it (dropping the others); returns the
/// bytes of the dropped ones.
fn fill_gaps<M>(into: &mut M, from: M) -> usize
where
    M: IntoIterator<Item = (Box<[u8]>, Entry)> + Extendable,
{
    let mut dropped = 0;
    let mut graveyard = Vec::new();
    for (key, entry) in from {
        if into.has(&key) {
            dropped += entry_bytes(key.len(), entry.value.as_deref().map_or(0, <[u8]>::len));
            graveyard.push((Some(key), entry));
        } else {
            into.put(key, entry);
        }
    }
    bury(graveyard);
    dropped
}

/// The two map types of [`Cells`], for [`move_entries`] and [`fill_gaps`].
trait Extendable {
    fn put(&mut self, key: Box<[u8]>, entry: Entry) -> Option<Entry>;
    fn slot(&mut self, key: &[u8]) -> Option<&mut Entry>;
    fn has(&self, key: &[u8]) -> bool;
    fn size(&self) -> usize;
}

impl Extendable for FxHashMap<Box<[u8]>, Entry> {
    fn put(&mut self, key: Box<[u8]>, entry: Entry) -> Option<Entry> {
        self.insert(key, entry)
    }
    fn slot(&mut self, key: &[u8]) -> Option<&mut Entry> {
        self.get_mut(key)
    }
    fn has(&self, key: &[u8]) -> bool {
        self.contains_key(key)
    }
    fn size(&self) -> usize {
        self.len()
    }
}

impl Extendable for BTreeMap<Box<[u8]>, Entry> {
    fn put(&mut self, key: Box<[u8]>, entry: Entry) -> Option<Entry> {
        self.insert(key, entry)
    }
    fn slot(&mut self, key: &[u8]) -> Option<&mut Entry> {
        self.get_mut(key)
    }
    fn has(&self, key: &[u8]) -> bool {
        self.contains_key(key)
    }
    fn size(&self) -> usize {
        self.len()
    }
}

/// One cache from a frozen generation `base` (clean now: its dirty entries are in RocksDB) and
/// the cache `newer` filled since the barrier, whose entries win; walks the smaller of the two.
/// Returns the merged map and the bytes dropped as superseded.
fn merge_maps<M>(mut base: M, mut newer: M) -> (M, usize)
where
    M: IntoIterator<Item = (Box<[u8]>, Entry)> + Extendable,
{
    if newer.size() <= base.size() {
        let dropped = move_entries(&mut base, newer);
        (base, dropped)
    } else {
        let dropped = fill_gaps(&mut newer, base);
        (newer, dropped)
    }
}

/// The dirty entries of `slots` (every state, or only state `only`) as one batch, in key order
/// per state (the memtable is a skip list: sorted inserts reuse each search path). Costs
/// O(dirty) for hashed states; the entries stay marked dirty.
fn dirty_batch(
    db: &DB,
    descriptors: &[StateDescriptor],
    slots: &[Slot],
    only: Option<usize>,
) -> Result<WriteBatch, StateError> {
    let mut batch = WriteBatch::default();
    let mut dirty: Vec<(&[u8], Option<&[u8]>)> = Vec::new();
    for (idx, slot) in slots.iter().enumerate() {
        if slot.dirty == 0 || only.is_some_and(|o| o != idx) {
            continue;
        }
        let cf = column_family(db, &descriptors[idx].name)?;
        dirty_entries(slot, &mut dirty);
        for &(key, value) in &dirty {
            match value {
                Some(value) => batch.put_cf(cf, key, value),
                None => batch.delete_cf(cf, key),
            }
        }
    }
    Ok(batch)
}

/// The dirty entries of `slot` into `dirty` (cleared first), in ascending key order, each key
/// once: `(key, value)`, `None` for a deletion.
fn dirty_entries<'a>(slot: &'a Slot, dirty: &mut Vec<(&'a [u8], Option<&'a [u8]>)>) {
    dirty.clear();
    dirty.reserve(slot.dirty);
    match &slot.cells {
        Cells::Hashed(map) => {
            // Few dirty entries: look them up through the log. Many: one sequential walk
            // of the table is cheaper than a random lookup per entry.
            if slot.dirty * 4 < map.len() {
                for key in &slot.dirty_log {
                    if let Some((key, entry)) = map.get_key_value(key) {
                        if entry.dirty_in == slot.generation {
                            dirty.push((key, entry.value.as_deref()));
                        }
                    }
                }
            } else {
                for (key, entry) in map {
                    if entry.dirty_in == slot.generation {
                        dirty.push((key, entry.value.as_deref()));
                    }
                }
            }
            dirty.sort_unstable_by(|a, b| a.0.cmp(b.0));
            dirty.dedup_by(|a, b| a.0 == b.0);
        }
        Cells::Ordered(map) => {
            for (key, entry) in map {
                if entry.dirty_in == slot.generation {
                    dirty.push((key, entry.value.as_deref()));
                }
            }
        }
    }
}

/// See [`RocksDbStateBackend::ingest_file`].
fn ingest_file(instance: &Path, checkpoint: CheckpointId, state: usize) -> PathBuf {
    let mut name = instance.as_os_str().to_owned();
    name.push(format!(".ingest-{}-{state}.sst", checkpoint.0));
    PathBuf::from(name)
}

/// Writes the dirty entries of `slots` into RocksDB as one SST file per state, built at
/// `file_of(state index)` and ingested (moved in): no memtable insert and no flush for them, so
/// a snapshot's background part is shorter than with a write batch. Ingested files are newer
/// than everything in the database, as the batch would be.
fn ingest_dirty(
    db: &DB,
    descriptors: &[StateDescriptor],
    slots: &[Slot],
    sst_options: &Options,
    file_of: impl Fn(usize) -> PathBuf,
) -> Result<(), String> {
    let mut dirty: Vec<(&[u8], Option<&[u8]>)> = Vec::new();
    let mut ingest = rocksdb::IngestExternalFileOptions::default();
    ingest.set_move_files(true);
    for (idx, slot) in slots.iter().enumerate() {
        if slot.dirty == 0 {
            continue;
        }
        dirty_entries(slot, &mut dirty);
        if dirty.is_empty() {
            continue;
        }
        let name = &descriptors[idx].name;
        let cf = column_family(db, name).map_err(|e| e.to_string())?;
        let path = file_of(idx);
        let written = (|| {
            let mut writer = rocksdb::SstFileWriter::create(sst_options);
            writer.open(&path)?;
            for &(key, value) in &dirty {
                match value {
                    Some(value) => writer.put(key, value)?,
                    None => writer.delete(key)?,
                }
            }
            writer.finish()?;
            db.ingest_external_file_cf_opts(cf, &ingest, vec![&path])
        })();
        // Moved in on success; a leftover on failure.
        let _ = std::fs::remove_file(&path);
        written.map_err(|e| {
            format!(
                "ingest the dirty entries of state '{name}' from {}: {e}",
                path.display()
            )
        })?;
    }
    Ok(())
}

/// The files of a native checkpoint in `dir`, by name: `*.sst` shareable, the rest private.
fn snapshot_files(dir: &Path) -> std::io::Result<Vec<SnapshotFile>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if !entry.file_type()?.is_file() {
            continue;
        }
        let name = entry.file_name().into_string().map_err(|name| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("file name {name:?} is not UTF-8"),
            )
        })?;
        files.push(SnapshotFile {
            shareable: is_sst(&name),
            content: SnapshotContent::Path(entry.path()),
            name,
        });
    }
    files.sort_unstable_by(|a, b| a.name.cmp(&b.name));
    Ok(files)
}

/// Whether `name` is an SST file's: immutable, and named by a file number RocksDB never reuses.
pub(crate) fn is_sst(name: &str) -> bool {
    name.ends_with(".sst")
}

/// Removes what a failed snapshot left in `dir` (and RocksDB's `<dir>.tmp`, should it remain).
fn remove_incomplete(dir: &Path) {
    let mut tmp = dir.as_os_str().to_owned();
    tmp.push(".tmp");
    for path in [dir, Path::new(&tmp)] {
        match std::fs::remove_dir_all(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(
                path = %path.display(),
                error = %e,
                "cannot remove an incomplete RocksDB snapshot"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_successor_bounds_exactly_the_prefixed_keys() {
        assert_eq!(prefix_successor(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_successor(&[1, 0xff, 0xff]), Some(vec![2]));
        assert_eq!(prefix_successor(&[0xff, 0xff]), None);
        assert_eq!(prefix_successor(b""), None);
    }
}
