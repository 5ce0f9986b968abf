//! Task-local recovery: uploads that keep local copies in a [`LocalStateCache`], and restores
//! that take verified files from it instead of downloading them.

use std::path::Path;
use std::sync::Arc;

use weir_checkpoint::OperatorSubtaskState;
use weir_state::{LocalSnapshot, SnapshotContent, SnapshotFile, StateDescriptor, StateKind};
use weir_state_transfer::{DownloadStats, LocalStateCache, SharedFiles, UploadedKeyed, Uploader};
use weir_storage::{CheckpointPaths, Faults, FaultyStore, RetryPolicy, Store};
use weir_types::{CheckpointId, JobId, KeyGroupRange, OperatorUid, SubtaskIndex};

const JOB: JobId = JobId(0x5eed_0000_0000_0000_0000_0000_0000_0002);
const SUBTASK: SubtaskIndex = SubtaskIndex(3);

fn uid() -> OperatorUid {
    OperatorUid::new("sum").unwrap()
}

/// The object store, and a view of it that counts requests.
fn stores() -> (Store, Store, Faults) {
    let store = Store::in_memory().with_retry_policy(RetryPolicy::no_retries());
    let (counted, faults) = FaultyStore::wrap(&store);
    (store, counted, faults)
}

fn cache(root: &Path) -> Arc<LocalStateCache> {
    Arc::new(LocalStateCache::open(root.join("local-recovery")).unwrap())
}

fn uploader(store: &Store, cache: Option<&Arc<LocalStateCache>>) -> Uploader {
    let up = Uploader::new(store.clone(), CheckpointPaths::new(JOB));
    match cache {
        Some(cache) => up.with_local_cache(Arc::clone(cache)),
        None => up,
    }
}

/// A file of a hand-made snapshot: an SST on disk (shareable) or a private file in memory. Its
/// bytes follow from its name.
fn bytes_of(name: &str) -> Vec<u8> {
    format!("{name};").repeat(40 + name.len()).into_bytes()
}

fn is_sst(name: &str) -> bool {
    name.ends_with(".sst")
}

/// A snapshot of checkpoint `id` whose SST files live in `<root>/snap-<id>`.
fn snapshot(root: &Path, id: u64, names: &[&str]) -> LocalSnapshot {
    let dir = root.join(format!("snap-{id}"));
    std::fs::create_dir_all(&dir).unwrap();
    let files = names
        .iter()
        .map(|name| SnapshotFile {
            name: (*name).into(),
            content: if is_sst(name) {
                let path = dir.join(name);
                std::fs::write(&path, bytes_of(name)).unwrap();
                SnapshotContent::Path(path)
            } else {
                SnapshotContent::Bytes(bytes_of(name))
            },
            shareable: is_sst(name),
        })
        .collect();
    LocalSnapshot {
        checkpoint: CheckpointId(id),
        backend: "rocksdb",
        format: 1,
        key_groups: KeyGroupRange { start: 0, end: 7 },
        descriptors: vec![StateDescriptor {
            name: "count".into(),
            kind: StateKind::Value,
        }],
        files,
        cleanup_dir: Some(dir),
        pending: None,
    }
}

async fn upload(
    up: &Uploader,
    root: &Path,
    id: u64,
    names: &[&str],
    base: Option<&SharedFiles>,
) -> UploadedKeyed {
    up.upload_keyed(&uid(), SUBTASK, snapshot(root, id, names), base)
        .await
        .unwrap()
}

/// Restores checkpoint `id` into a fresh directory, checks every file's bytes, and returns
/// the stats.
async fn restore(
    up: &Uploader,
    root: &Path,
    id: u64,
    state: &OperatorSubtaskState,
    names: &[&str],
) -> DownloadStats {
    let dir = root.join(format!("restore-{id}-{}", next_suffix()));
    let (restored, _, stats) = up
        .download_keyed(CheckpointId(id), state, &dir)
        .await
        .unwrap();
    let restored_names: Vec<&str> = restored.files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(restored_names, names);
    for (name, path) in &restored.files {
        assert_eq!(std::fs::read(path).unwrap(), bytes_of(name), "{name}");
    }
    assert_eq!(stats.total_files(), names.len());
    assert_eq!(
        stats.total_bytes(),
        names.iter().map(|n| bytes_of(n).len() as u64).sum::<u64>()
    );
    stats
}

fn next_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn size_of(names: &[&str]) -> u64 {
    names.iter().map(|n| bytes_of(n).len() as u64).sum()
}

#[tokio::test]
async fn a_restore_with_a_full_cache_downloads_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, counted, faults) = stores();
    let cache = cache(tmp.path());
    let up = uploader(&counted, Some(&cache));
    let names = [
        "000001.sst",
        "000002.sst",
        "MANIFEST-000003",
        "OPTIONS-000004",
    ];
    let uploaded = upload(&up, tmp.path(), 1, &names, None).await;
    assert!(
        !tmp.path().join("snap-1").exists(),
        "cleanup_dir was removed"
    );
    assert_eq!(cache.files_of(CheckpointId(1)).len(), names.len());

    let gets = faults.get_attempts();
    let stats = restore(&up, tmp.path(), 1, &uploaded.state, &names).await;
    assert_eq!(faults.get_attempts(), gets, "no object was read");
    assert_eq!(
        stats,
        DownloadStats {
            bytes: 0,
            files: 0,
            bytes_local: size_of(&names),
            files_local: names.len(),
        }
    );
}

#[tokio::test]
async fn a_damaged_cached_file_is_downloaded_instead() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, counted, faults) = stores();
    let cache = cache(tmp.path());
    let up = uploader(&counted, Some(&cache));
    let names = ["000001.sst", "000002.sst", "MANIFEST-000003"];
    let uploaded = upload(&up, tmp.path(), 1, &names, None).await;
    let victim = &uploaded.state.files[1];
    let cached = cache.cached_path(victim.path()).unwrap();
    // Same size, one byte flipped: only the CRC32 can tell.
    let mut damaged = std::fs::read(&cached).unwrap();
    damaged[7] ^= 0x20;
    std::fs::write(&cached, &damaged).unwrap();

    let gets = faults.get_attempts();
    let stats = restore(&up, tmp.path(), 1, &uploaded.state, &names).await;
    assert_eq!(
        faults.get_attempts(),
        gets + 1,
        "only the damaged file was read"
    );
    assert_eq!((stats.files, stats.bytes), (1, victim.size()));
    assert_eq!(stats.files_local, 2);
    // The downloaded copy replaced the damaged one in the cache.
    assert_eq!(
        std::fs::read(cache.cached_path(victim.path()).unwrap()).unwrap(),
        bytes_of("000002.sst")
    );
    let gets = faults.get_attempts();
    let stats = restore(&up, tmp.path(), 1, &uploaded.state, &names).await;
    assert_eq!(faults.get_attempts(), gets);
    assert_eq!(stats.files_local, names.len());
}

#[tokio::test]
async fn a_cached_file_deleted_behind_the_caches_back_is_downloaded_instead() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, counted, faults) = stores();
    let cache = cache(tmp.path());
    let up = uploader(&counted, Some(&cache));
    let names = ["000001.sst", "MANIFEST-000002"];
    let uploaded = upload(&up, tmp.path(), 1, &names, None).await;
    std::fs::remove_file(cache.cached_path(uploaded.state.files[0].path()).unwrap()).unwrap();

    let gets = faults.get_attempts();
    let stats = restore(&up, tmp.path(), 1, &uploaded.state, &names).await;
    assert_eq!(faults.get_attempts(), gets + 1);
    assert_eq!((stats.files, stats.files_local), (1, 1));
}

#[tokio::test]
async fn pruning_keeps_files_a_newer_checkpoint_still_references() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, counted, faults) = stores();
    let cache = cache(tmp.path());
    let up = uploader(&counted, Some(&cache));
    let first_names = ["000001.sst", "000002.sst", "MANIFEST-000001"];
    let first = upload(&up, tmp.path(), 1, &first_names, None).await;
    let second_names = ["000002.sst", "000003.sst", "MANIFEST-000002"];
    let second = upload(&up, tmp.path(), 2, &second_names, Some(&first.shared)).await;

    cache.retain_from(CheckpointId(2)).await;
    assert_eq!(cache.checkpoints(), [CheckpointId(2)]);
    let mut expected: Vec<String> = second
        .state
        .files
        .iter()
        .map(|h| h.path().to_owned())
        .collect();
    expected.sort();
    assert_eq!(cache.files_of(CheckpointId(2)), expected);
    for gone in ["shared/sum/3/1-000001.sst", "chk-1/sum/3/MANIFEST-000001"] {
        assert_eq!(cache.cached_path(gone), None, "{gone}");
    }
    assert_eq!(cache.cached_bytes(), size_of(&second_names));

    let gets = faults.get_attempts();
    let stats = restore(&up, tmp.path(), 2, &second.state, &second_names).await;
    assert_eq!(
        faults.get_attempts(),
        gets,
        "checkpoint 2 restores from local disk"
    );
    assert_eq!(stats.files_local, second_names.len());
}

#[tokio::test]
async fn files_reused_from_the_base_are_cached_under_the_new_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, counted, faults) = stores();
    // Checkpoint 1 was uploaded without a cache (say, before this TaskManager restarted), so
    // the reused file reaches the cache from checkpoint 2's local snapshot.
    let first_names = ["000001.sst", "000002.sst", "MANIFEST-000001"];
    let first = upload(&uploader(&counted, None), tmp.path(), 1, &first_names, None).await;
    let cache = cache(tmp.path());
    let up = uploader(&counted, Some(&cache));
    let second_names = ["000002.sst", "000003.sst", "MANIFEST-000002"];
    let second = upload(&up, tmp.path(), 2, &second_names, Some(&first.shared)).await;
    assert_eq!(second.reused_files, 1);

    let reused = first.shared["000002.sst"].path();
    assert_eq!(reused, "shared/sum/3/1-000002.sst");
    assert!(cache.files_of(CheckpointId(2)).iter().any(|p| p == reused));
    assert_eq!(
        std::fs::read(cache.cached_path(reused).unwrap()).unwrap(),
        bytes_of("000002.sst")
    );
    assert_eq!(cache.checkpoints(), [CheckpointId(2)]);

    let gets = faults.get_attempts();
    restore(&up, tmp.path(), 2, &second.state, &second_names).await;
    assert_eq!(faults.get_attempts(), gets);
}

#[tokio::test]
async fn a_restore_caches_what_it_downloads_under_the_restored_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, counted, faults) = stores();
    let names = ["000001.sst", "000002.sst", "MANIFEST-000001"];
    let uploaded = upload(&uploader(&counted, None), tmp.path(), 5, &names, None).await;
    let cache = cache(tmp.path());
    let up = uploader(&counted, Some(&cache));

    let stats = restore(&up, tmp.path(), 5, &uploaded.state, &names).await;
    assert_eq!((stats.files, stats.files_local), (names.len(), 0));
    assert_eq!(cache.files_of(CheckpointId(5)).len(), names.len());

    let gets = faults.get_attempts();
    let stats = restore(&up, tmp.path(), 5, &uploaded.state, &names).await;
    assert_eq!(faults.get_attempts(), gets);
    assert_eq!((stats.files, stats.files_local), (0, names.len()));
}

#[tokio::test]
async fn a_discarded_checkpoint_is_downloaded_again() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, counted, faults) = stores();
    let cache = cache(tmp.path());
    let up = uploader(&counted, Some(&cache));
    let names = ["000001.sst", "MANIFEST-000001"];
    let uploaded = upload(&up, tmp.path(), 3, &names, None).await;
    cache.discard(CheckpointId(3)).await;
    assert_eq!(cache.cached_bytes(), 0);

    let gets = faults.get_attempts();
    let stats = restore(&up, tmp.path(), 3, &uploaded.state, &names).await;
    assert_eq!(faults.get_attempts(), gets + names.len() as u64);
    assert_eq!(stats.files_local, 0);
}

#[tokio::test]
async fn a_private_file_is_read_from_the_cache_when_it_is_intact() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, counted, faults) = stores();
    let cache = cache(tmp.path());
    let up = uploader(&counted, Some(&cache));
    let sink = OperatorUid::new("sink").unwrap();
    let handle = up
        .upload_private(
            CheckpointId(7),
            &sink,
            SubtaskIndex(2),
            "staging/manifest.json",
            b"{\"parts\":[]}".to_vec(),
        )
        .await
        .unwrap();
    assert_eq!(cache.files_of(CheckpointId(7)), [handle.path()]);

    let gets = faults.get_attempts();
    let read = up.download_private(CheckpointId(7), &handle).await.unwrap();
    assert_eq!(read, b"{\"parts\":[]}");
    assert_eq!(faults.get_attempts(), gets);

    std::fs::write(cache.cached_path(handle.path()).unwrap(), b"{\"parts\":[1]").unwrap();
    let read = up.download_private(CheckpointId(7), &handle).await.unwrap();
    assert_eq!(read, b"{\"parts\":[]}");
    assert_eq!(
        faults.get_attempts(),
        gets + 1,
        "the damaged copy was not used"
    );
}

#[tokio::test]
async fn a_savepoint_into_a_local_folder_hard_links_files_on_disk_and_restores_from_them() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("savepoint-x-9");
    let url = weir_storage::StorageUrl::parse(&format!("file://{}", folder.display())).unwrap();
    let store = weir_storage::open_store(&url, &weir_storage::S3Options::default()).unwrap();
    let up = Uploader::self_contained(store, JOB).with_link_root(folder.clone());
    let snap = snapshot(dir.path(), 9, &["1.sst", "MANIFEST-1"]);
    let sst = dir.path().join("snap-9").join("1.sst");
    let inode = std::fs::metadata(&sst).unwrap().ino();
    let done = up.upload_keyed(&uid(), SUBTASK, snap, None).await.unwrap();
    // The SST is the same inode under the savepoint folder; the in-memory file was written.
    let linked = folder.join(format!("{}/{}/1.sst", uid(), SUBTASK));
    assert_eq!(std::fs::metadata(&linked).unwrap().ino(), inode);
    assert_eq!(std::fs::read(&linked).unwrap(), bytes_of("1.sst"));
    assert!(done.state.files.iter().all(|h| !h.is_shared()));
    let sst_handle = done
        .state
        .files
        .iter()
        .find(|h| h.path().ends_with("1.sst"))
        .unwrap();
    assert_eq!(sst_handle.crc32(), crc32fast::hash(&bytes_of("1.sst")));
    // The snapshot's own directory is gone; the linked file stays and restores.
    assert!(!dir.path().join("snap-9").exists());
    let (restored, _, _) = up
        .download_keyed(CheckpointId(9), &done.state, &dir.path().join("restore"))
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(restored.file("1.sst").unwrap()).unwrap(),
        bytes_of("1.sst")
    );
}
