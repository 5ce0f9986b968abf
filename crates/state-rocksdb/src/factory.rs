//! The per-process factory: state directory, memory plan, shared block cache and write buffer
//! manager, and the options every instance opens with.

use crate::backend::{is_sst, options_for, InstanceDir, RocksDbStateBackend};
use crate::{backend_error, BACKEND_NAME, SNAPSHOT_FORMAT};
use rocksdb::{
    BlockBasedIndexType, BlockBasedOptions, Cache, ColumnFamilyDescriptor, DBCompressionType,
    Options, WriteBufferManager, DB,
};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use weir_state::{
    BackendScope, KeyedStateBackend, RestoredSnapshot, StateBackendFactory, StateError,
};

/// Smallest and largest memtable size per column family.
const MIN_WRITE_BUFFER_BYTES: usize = 256 << 10;
const MAX_WRITE_BUFFER_BYTES: usize = 64 << 20;

/// Bloom filter bits per key (about 1% false positives).
const BLOOM_BITS_PER_KEY: f64 = 10.0;

/// Size of one index or filter partition.
const METADATA_BLOCK_BYTES: usize = 4096;

/// The memtable's bloom filter, as a share of the memtable's size: a point read of a key the
/// memtable does not hold (most reads, with keys spread over far more than a memtable holds)
/// skips the skip-list search, which otherwise was the largest single cost of a cache-missing
/// read (16 % of the CPU at 10M uniform keys).
const MEMTABLE_BLOOM_RATIO: f64 = 0.1;

/// Numbers instance directories uniquely within this process.
static NEXT_INSTANCE: AtomicU64 = AtomicU64::new(0);

/// How the managed memory budget is split. See the [crate docs](crate#memory).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct MemoryPlan {
    /// The whole per-process budget.
    pub managed_memory_bytes: u64,
    /// The shared block cache's capacity: half the budget.
    pub block_cache_bytes: usize,
    /// The memtable limit of the write buffer manager, charged to the block cache: half of it.
    pub write_buffer_manager_bytes: usize,
    /// Memtable size per column family: an eighth of the block cache, within 256 KiB..=64 MiB.
    pub write_buffer_bytes: usize,
    /// What is left for the backends' write-back caches, shared equally among the process's
    /// keyed subtasks.
    pub write_back_bytes: usize,
}

impl MemoryPlan {
    /// The plan for a budget of `managed_memory_bytes`.
    pub fn for_budget(managed_memory_bytes: u64) -> Self {
        let total = usize::try_from(managed_memory_bytes).unwrap_or(usize::MAX);
        let block_cache_bytes = total / 2;
        Self {
            managed_memory_bytes,
            block_cache_bytes,
            write_buffer_manager_bytes: block_cache_bytes / 2,
            write_buffer_bytes: (block_cache_bytes / 8)
                .clamp(MIN_WRITE_BUFFER_BYTES, MAX_WRITE_BUFFER_BYTES),
            write_back_bytes: total - block_cache_bytes,
        }
    }

    /// One backend's write-back cache budget when `keyed_subtasks` share the process.
    pub fn write_back_bytes_per_backend(&self, keyed_subtasks: u32) -> usize {
        self.write_back_bytes / keyed_subtasks.max(1) as usize
    }
}

/// Creates a [`RocksDbStateBackend`] per keyed operator subtask; one per process, shared by
/// every task (it is `Send + Sync`).
pub struct RocksDbStateBackendFactory {
    state_dir: PathBuf,
    plan: MemoryPlan,
    /// Shared by every instance: data, index and filter blocks, and the memtables' charge.
    cache: Cache,
    /// Bounds the memtables of every instance together; charged to `cache`.
    write_buffers: WriteBufferManager,
}

impl std::fmt::Debug for RocksDbStateBackendFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksDbStateBackendFactory")
            .field("state_dir", &self.state_dir)
            .field("plan", &self.plan)
            .finish_non_exhaustive()
    }
}

impl RocksDbStateBackendFactory {
    /// A factory keeping instances under `state_dir` (created if missing) within
    /// `managed_memory_bytes`, the process's memory budget for keyed state (see
    /// [`MemoryPlan`]). A directory that cannot be created is a [`StateError::Backend`] naming
    /// it.
    pub fn new(
        state_dir: impl Into<PathBuf>,
        managed_memory_bytes: u64,
    ) -> Result<Self, StateError> {
        let state_dir = state_dir.into();
        std::fs::create_dir_all(&state_dir).map_err(|e| {
            backend_error(format!("create state directory {}", state_dir.display()), e)
        })?;
        let plan = MemoryPlan::for_budget(managed_memory_bytes);
        let cache = Cache::new_lru_cache(plan.block_cache_bytes);
        let write_buffers = WriteBufferManager::new_write_buffer_manager_with_cache(
            plan.write_buffer_manager_bytes,
            false,
            cache.clone(),
        );
        Ok(Self {
            state_dir,
            plan,
            cache,
            write_buffers,
        })
    }

    /// The root directory of every instance.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// How the memory budget is split.
    pub fn memory_plan(&self) -> MemoryPlan {
        self.plan
    }

    /// Bytes currently held by the shared block cache (blocks and memtable charges).
    pub fn block_cache_usage_bytes(&self) -> usize {
        self.cache.get_usage()
    }

    /// Opens a fresh, empty backend for `scope`: the concrete type, for tests and benchmarks.
    pub fn open(&self, scope: &BackendScope) -> Result<RocksDbStateBackend, StateError> {
        let dir = self.create_instance_dir(scope)?;
        let cf_options = self.column_family_options();
        let db_options = self.db_options(&cf_options, true);
        let default_cf =
            ColumnFamilyDescriptor::new(rocksdb::DEFAULT_COLUMN_FAMILY_NAME, cf_options.clone());
        let db = DB::open_cf_descriptors(&db_options, dir.path(), [default_cf])
            .map_err(|e| backend_error(format!("open {}", dir.path().display()), e))?;
        tracing::debug!(
            path = %dir.path().display(),
            operator = %scope.operator_uid,
            subtask = scope.subtask.get(),
            "opened RocksDB state backend"
        );
        Ok(RocksDbStateBackend::new(
            db,
            dir,
            cf_options,
            scope.key_group_range,
            self.write_back_bytes(scope),
        ))
    }

    /// Opens a backend for `scope` on a snapshot's files: the concrete type behind
    /// [`StateBackendFactory::restore`].
    ///
    /// 1. Checks the snapshot's backend, format and key-group range
    ///    ([`RestoredSnapshot::check_compatible`]).
    /// 2. Creates an instance directory as [`open`](Self::open) does (removed again on error,
    ///    and when the backend is dropped) and hard-links each SST file into it (copying when
    ///    a link is impossible, e.g. across file systems); the small metadata files are copied,
    ///    since RocksDB may rewrite them.
    /// 3. Opens RocksDB there with every column family it holds (`DB::list_cf`) and the options
    ///    of [`open`](Self::open); each declared state must have its column family, and each
    ///    column family but `default` a declared state.
    /// 4. Registers the snapshot's descriptors in their order, so state ids match.
    ///
    /// Every error is a [`StateError::Restore`] naming the checkpoint.
    pub fn open_restored(
        &self,
        scope: &BackendScope,
        snapshot: RestoredSnapshot,
    ) -> Result<RocksDbStateBackend, StateError> {
        let fail = |detail: String| snapshot.error(BACKEND_NAME, detail);
        snapshot.check_compatible(BACKEND_NAME, SNAPSHOT_FORMAT, scope.key_group_range)?;
        for (i, d) in snapshot.descriptors.iter().enumerate() {
            if snapshot.descriptors[..i].iter().any(|e| e.name == d.name) {
                return Err(fail(format!("state '{}' is declared twice", d.name)));
            }
        }
        let dir = self
            .create_instance_dir(scope)
            .map_err(|e| fail(e.to_string()))?;
        for (name, from) in &snapshot.files {
            if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\\']) {
                return Err(fail(format!("'{name}' is not a file name")));
            }
            let to = dir.path().join(name);
            let brought = if is_sst(name) {
                std::fs::hard_link(from, &to).or_else(|_| std::fs::copy(from, &to).map(drop))
            } else {
                std::fs::copy(from, &to).map(drop)
            };
            brought.map_err(|e| {
                fail(format!(
                    "cannot bring {} into {}: {e}",
                    from.display(),
                    dir.path().display()
                ))
            })?;
        }
        let cf_options = self.column_family_options();
        let db_options = self.db_options(&cf_options, false);
        let families = DB::list_cf(&db_options, dir.path()).map_err(|e| {
            fail(format!(
                "cannot read the column families in {}: {e}",
                dir.path().display()
            ))
        })?;
        if let Some(d) = snapshot
            .descriptors
            .iter()
            .find(|d| !families.contains(&d.name))
        {
            return Err(fail(format!("state '{}' has no column family", d.name)));
        }
        if let Some(cf) = families.iter().find(|cf| {
            *cf != rocksdb::DEFAULT_COLUMN_FAMILY_NAME
                && !snapshot.descriptors.iter().any(|d| &d.name == *cf)
        }) {
            return Err(fail(format!(
                "column family '{cf}' belongs to no declared state"
            )));
        }
        let db = DB::open_cf_descriptors(
            &db_options,
            dir.path(),
            families.iter().map(|cf| {
                let ttl = snapshot
                    .descriptors
                    .iter()
                    .any(|d| &d.name == cf && d.kind.has_ttl());
                ColumnFamilyDescriptor::new(cf, options_for(&cf_options, ttl))
            }),
        )
        .map_err(|e| fail(format!("cannot open {}: {e}", dir.path().display())))?;
        tracing::debug!(
            path = %dir.path().display(),
            operator = %scope.operator_uid,
            subtask = scope.subtask.get(),
            checkpoint = %snapshot.checkpoint,
            files = snapshot.files.len(),
            "restored RocksDB state backend"
        );
        let backend = RocksDbStateBackend::new(
            db,
            dir,
            cf_options,
            scope.key_group_range,
            self.write_back_bytes(scope),
        );
        Ok(backend.with_states(snapshot.descriptors))
    }

    /// One backend's write-back cache budget in `scope`.
    fn write_back_bytes(&self, scope: &BackendScope) -> usize {
        self.plan
            .write_back_bytes_per_backend(scope.keyed_subtasks_in_process)
    }

    /// Options for the instance itself (column families get `cf_options`): the shared write
    /// buffer manager, few info logs, and whether a missing database may be created.
    fn db_options(&self, cf_options: &Options, create_if_missing: bool) -> Options {
        let mut options = cf_options.clone();
        options.create_if_missing(create_if_missing);
        options.set_write_buffer_manager(&self.write_buffers);
        options.set_keep_log_file_num(2);
        options
    }

    /// Options for every column family, in [`open`](Self::open) and
    /// [`open_restored`](Self::open_restored) alike: the shared block cache with index and
    /// filter blocks in it, bloom filters (also on the memtable), LZ4, and the planned memtable
    /// size.
    ///
    /// Index and filters are **partitioned** (as Flink's `partitioned-index-filters`): an SST of
    /// a million small entries has a ~1 MiB filter, larger than one shard of a cache of a few
    /// tens of MiB, so a monolithic filter would be read from disk and checksummed on every
    /// lookup that misses the cache (measured: 18K get+put/s instead of hundreds of thousands).
    /// Partitions are metadata-block sized; only the small top level stays pinned.
    fn column_family_options(&self) -> Options {
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&self.cache);
        table.set_bloom_filter(BLOOM_BITS_PER_KEY, false);
        table.set_index_type(BlockBasedIndexType::TwoLevelIndexSearch);
        table.set_partition_filters(true);
        table.set_metadata_block_size(METADATA_BLOCK_BYTES);
        table.set_cache_index_and_filter_blocks(true);
        table.set_cache_index_and_filter_blocks_with_high_priority(true);
        table.set_pin_top_level_index_and_filter(true);
        table.set_pin_l0_filter_and_index_blocks_in_cache(true);
        let mut options = Options::default();
        options.set_block_based_table_factory(&table);
        options.set_write_buffer_size(self.plan.write_buffer_bytes);
        options.set_memtable_whole_key_filtering(true);
        options.set_memtable_prefix_bloom_ratio(MEMTABLE_BLOOM_RATIO);
        options.set_compression_type(DBCompressionType::Lz4);
        options
    }

    /// Creates `<state_dir>/<operator_uid>/subtask-<i>-<pid>-<n>`, a directory no other instance
    /// uses (an existing one, left by a crashed process with the same pid, is skipped).
    fn create_instance_dir(&self, scope: &BackendScope) -> Result<InstanceDir, StateError> {
        let parent = self.state_dir.join(scope.operator_uid.as_str());
        std::fs::create_dir_all(&parent)
            .map_err(|e| backend_error(format!("create directory {}", parent.display()), e))?;
        loop {
            let n = NEXT_INSTANCE.fetch_add(1, Ordering::Relaxed);
            let name = format!("subtask-{}-{}-{n}", scope.subtask.get(), std::process::id());
            let path = parent.join(name);
            match std::fs::create_dir(&path) {
                Ok(()) => return Ok(InstanceDir::new(path)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(backend_error(
                        format!("create directory {}", path.display()),
                        e,
                    ))
                }
            }
        }
    }
}

impl StateBackendFactory for RocksDbStateBackendFactory {
    fn name(&self) -> &'static str {
        BACKEND_NAME
    }

    fn create(&self, scope: &BackendScope) -> Result<Box<dyn KeyedStateBackend>, StateError> {
        Ok(Box::new(self.open(scope)?))
    }

    /// See [`open_restored`](RocksDbStateBackendFactory::open_restored).
    fn restore(
        &self,
        scope: &BackendScope,
        snapshot: RestoredSnapshot,
    ) -> Result<Box<dyn KeyedStateBackend>, StateError> {
        Ok(Box::new(self.open_restored(scope, snapshot)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_the_budget_goes_to_rocksdb_and_half_to_the_write_back_caches() {
        let plan = MemoryPlan::for_budget(512 << 20);
        assert_eq!(plan.block_cache_bytes, 256 << 20);
        assert_eq!(plan.write_buffer_manager_bytes, 128 << 20);
        assert_eq!(plan.write_buffer_bytes, 32 << 20);
        assert_eq!(plan.write_back_bytes, 256 << 20);
        assert_eq!(plan.write_back_bytes_per_backend(4), 64 << 20);
        assert_eq!(plan.write_back_bytes_per_backend(0), 256 << 20);
    }

    #[test]
    fn the_memtable_size_stays_within_its_bounds() {
        assert_eq!(
            MemoryPlan::for_budget(1 << 20).write_buffer_bytes,
            MIN_WRITE_BUFFER_BYTES
        );
        assert_eq!(
            MemoryPlan::for_budget(16 << 30).write_buffer_bytes,
            MAX_WRITE_BUFFER_BYTES
        );
    }
}
