//! Uploads and downloads of keyed snapshots and private files against in-memory and
//! fault-injecting stores.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::task::{Context, Waker};
use std::time::Duration;

use proptest::collection::{btree_set, vec};
use proptest::prelude::*;
use weir_checkpoint::{FileHandle, OperatorSubtaskState};
use weir_state::{LocalSnapshot, SnapshotContent, SnapshotFile, StateDescriptor, StateKind};
use weir_state_transfer::{
    KeyedStateMeta, MetaError, SharedFiles, TransferError, UploadedKeyed, Uploader,
};
use weir_storage::{crc32, Bytes, CheckpointPaths, FaultyStore, RetryPolicy, StorageError, Store};
use weir_types::{CheckpointId, JobId, KeyGroupRange, OperatorUid, SubtaskIndex};

const JOB: JobId = JobId(0x5eed_0000_0000_0000_0000_0000_0000_0001);
const SUBTASK: SubtaskIndex = SubtaskIndex(3);

fn uid() -> OperatorUid {
    OperatorUid::new("sum").unwrap()
}

fn paths() -> CheckpointPaths {
    CheckpointPaths::new(JOB)
}

/// A store that fails at once instead of retrying, so fault tests are fast and exact.
fn store() -> Store {
    Store::in_memory().with_retry_policy(RetryPolicy::no_retries())
}

fn uploader(store: &Store) -> Uploader {
    Uploader::new(store.clone(), paths())
}

/// One file of a hand-made snapshot.
#[derive(Clone, Debug)]
struct Spec {
    name: String,
    shareable: bool,
    bytes: Vec<u8>,
    on_disk: bool,
}

/// A shareable SST file on disk; its bytes follow from its name (equal names, equal bytes).
fn sst(name: &str) -> Spec {
    Spec {
        name: name.into(),
        shareable: true,
        bytes: sst_bytes(name),
        on_disk: true,
    }
}

fn sst_bytes(name: &str) -> Vec<u8> {
    format!("sst {name};").repeat(50 + name.len()).into_bytes()
}

/// A private file held in memory.
fn private(name: &str, bytes: &[u8]) -> Spec {
    Spec {
        name: name.into(),
        shareable: false,
        bytes: bytes.to_vec(),
        on_disk: false,
    }
}

fn descriptors() -> Vec<StateDescriptor> {
    vec![
        StateDescriptor {
            name: "count".into(),
            kind: StateKind::Value,
        },
        StateDescriptor {
            name: "seen".into(),
            kind: StateKind::Map,
        },
    ]
}

const KEY_GROUPS: KeyGroupRange = KeyGroupRange { start: 32, end: 63 };

/// A snapshot of checkpoint `id` whose on-disk files live in `<root>/snap-<id>` (its cleanup
/// directory).
fn snapshot(root: &Path, id: u64, specs: &[Spec]) -> LocalSnapshot {
    let dir = root.join(format!("snap-{id}"));
    std::fs::create_dir_all(&dir).unwrap();
    let files = specs
        .iter()
        .map(|spec| SnapshotFile {
            name: spec.name.clone(),
            content: if spec.on_disk {
                let path = dir.join(&spec.name);
                std::fs::write(&path, &spec.bytes).unwrap();
                SnapshotContent::Path(path)
            } else {
                SnapshotContent::Bytes(spec.bytes.clone())
            },
            shareable: spec.shareable,
        })
        .collect();
    LocalSnapshot {
        checkpoint: CheckpointId(id),
        backend: "rocksdb",
        format: 1,
        key_groups: KEY_GROUPS,
        descriptors: descriptors(),
        files,
        cleanup_dir: Some(dir),
        pending: None,
    }
}

async fn upload(
    up: &Uploader,
    root: &Path,
    id: u64,
    specs: &[Spec],
    base: Option<&SharedFiles>,
) -> Result<UploadedKeyed, TransferError> {
    up.upload_keyed(&uid(), SUBTASK, snapshot(root, id, specs), base)
        .await
}

async fn object_paths(store: &Store) -> Vec<String> {
    store
        .list(paths().job_dir())
        .await
        .unwrap()
        .into_iter()
        .map(|m| paths().relative_to_job(&m.location).unwrap())
        .collect()
}

/// Downloads checkpoint `id` into a fresh directory and checks names, order and bytes.
async fn assert_restores(
    up: &Uploader,
    root: &Path,
    id: u64,
    state: &OperatorSubtaskState,
    specs: &[Spec],
) {
    let dir = root.join(format!("restore-{id}"));
    let (restored, _, stats) = up
        .download_keyed(CheckpointId(id), state, &dir)
        .await
        .unwrap();
    let names: Vec<&str> = restored.files.iter().map(|(n, _)| n.as_str()).collect();
    let expected: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, expected);
    for ((_, path), spec) in restored.files.iter().zip(specs) {
        assert_eq!(std::fs::read(path).unwrap(), spec.bytes, "{}", spec.name);
        assert_eq!(path.parent(), Some(dir.as_path()));
    }
    assert_eq!(stats.files, specs.len());
    assert_eq!(
        stats.bytes,
        specs.iter().map(|s| s.bytes.len() as u64).sum::<u64>()
    );
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries.map(|e| e.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    }
}

#[tokio::test]
async fn a_round_trip_restores_identical_bytes_names_and_description() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store();
    let up = uploader(&store);
    let mut memory_sst = sst("000011.sst");
    memory_sst.on_disk = false;
    let specs = [
        sst("000010.sst"),
        memory_sst,
        private("MANIFEST-000003", b"manifest bytes"),
        private("OPTIONS-000004", b""),
    ];
    let uploaded = upload(&up, tmp.path(), 1, &specs, None).await.unwrap();
    assert!(
        !tmp.path().join("snap-1").exists(),
        "cleanup_dir was removed"
    );
    assert_eq!(uploaded.uploaded_files, 4);
    assert_eq!(uploaded.reused_files, 0);
    assert_eq!(uploaded.bytes_uploaded, uploaded.full_size);
    assert_eq!(
        uploaded.shared.keys().collect::<Vec<_>>(),
        ["000010.sst", "000011.sst"]
    );

    let dir = tmp.path().join("restore");
    let (restored, shared, stats) = up
        .download_keyed(CheckpointId(1), &uploaded.state, &dir)
        .await
        .unwrap();
    assert_eq!(restored.checkpoint, CheckpointId(1));
    assert_eq!(restored.backend, "rocksdb");
    assert_eq!(restored.format, 1);
    assert_eq!(restored.key_groups, KEY_GROUPS);
    assert_eq!(restored.descriptors, descriptors());
    assert_eq!(restored.dir, dir);
    assert_eq!(
        shared, uploaded.shared,
        "the restored checkpoint is the next base"
    );
    assert_eq!(stats.bytes, uploaded.full_size);
    assert_restores(&up, tmp.path(), 1, &uploaded.state, &specs).await;
}

#[tokio::test]
async fn a_second_upload_with_the_first_ones_shared_files_as_base_uploads_only_the_new_shareable_files(
) {
    let tmp = tempfile::tempdir().unwrap();
    let store = store();
    let up = uploader(&store);
    let first_specs = [
        sst("000001.sst"),
        sst("000002.sst"),
        sst("000003.sst"),
        private("MANIFEST-000001", b"first manifest"),
    ];
    let first = upload(&up, tmp.path(), 1, &first_specs, None)
        .await
        .unwrap();

    let second_specs = [
        sst("000002.sst"),
        sst("000003.sst"),
        sst("000004.sst"),
        private("MANIFEST-000002", b"second manifest"),
    ];
    let second = upload(&up, tmp.path(), 2, &second_specs, Some(&first.shared))
        .await
        .unwrap();
    assert_eq!(second.reused_files, 2);
    assert_eq!(second.uploaded_files, 2);
    let new_bytes = (sst_bytes("000004.sst").len() + b"second manifest".len()) as u64;
    assert_eq!(second.bytes_uploaded, new_bytes);
    let all_bytes: u64 = second_specs.iter().map(|s| s.bytes.len() as u64).sum();
    assert_eq!(second.full_size, all_bytes);
    for name in ["000002.sst", "000003.sst"] {
        assert_eq!(second.shared[name], first.shared[name], "{name} reused");
        assert!(second.state.files.contains(&first.shared[name]));
    }
    assert_eq!(
        second.shared.keys().collect::<Vec<_>>(),
        ["000002.sst", "000003.sst", "000004.sst"]
    );
    // Four objects for the first checkpoint, two for the second; deleting 000001.sst is the
    // shared-state registry's decision, not the uploader's.
    assert_eq!(object_paths(&store).await.len(), 6);
    assert_restores(&up, tmp.path(), 2, &second.state, &second_specs).await;
    assert_restores(&up, tmp.path(), 1, &first.state, &first_specs).await;
}

#[tokio::test]
async fn private_files_are_never_reused_even_when_their_name_is_in_the_base() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store();
    let up = uploader(&store);
    let first = upload(&up, tmp.path(), 1, &[sst("000007.sst")], None)
        .await
        .unwrap();
    // A base entry that is not a shared handle is not reused either.
    let mut base = first.shared.clone();
    base.insert(
        "000008.sst".into(),
        FileHandle::new("chk-1/sum/3/000008.sst", 1, 2, false).unwrap(),
    );

    let specs = [
        private("000007.sst", &sst_bytes("000007.sst")),
        sst("000008.sst"),
    ];
    let second = upload(&up, tmp.path(), 2, &specs, Some(&base))
        .await
        .unwrap();
    assert_eq!(second.reused_files, 0);
    assert_eq!(second.uploaded_files, 2);
    assert_eq!(second.state.files[0].path(), "chk-2/sum/3/000007.sst");
    assert!(!second.state.files[0].is_shared());
    assert_eq!(second.state.files[1].path(), "shared/sum/3/2-000008.sst");
    assert_eq!(
        second.shared.keys().collect::<Vec<_>>(),
        ["000008.sst"],
        "a private file is never part of the next base"
    );
}

#[tokio::test]
async fn uploaded_paths_are_valid_handle_paths_under_the_checkpoint_or_shared_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store();
    let up = uploader(&store);
    let specs = [
        sst("000020.sst"),
        private("MANIFEST-000009", b"m"),
        sst("000021.sst"),
        private("CURRENT", b"MANIFEST-000009\n"),
    ];
    let uploaded = upload(&up, tmp.path(), 12, &specs, None).await.unwrap();
    let meta = KeyedStateMeta::decode(uploaded.state.inline.as_deref().unwrap()).unwrap();
    assert_eq!(meta.version, 1);
    for ((handle, spec), file) in uploaded.state.files.iter().zip(&specs).zip(&meta.files) {
        let expected = if spec.shareable {
            format!("shared/sum/3/12-{}", spec.name)
        } else {
            format!("chk-12/sum/3/{}", spec.name)
        };
        assert_eq!(handle.path(), expected);
        assert_eq!(handle.is_shared(), spec.shareable);
        assert_eq!(handle.size(), spec.bytes.len() as u64);
        assert_eq!(handle.crc32(), crc32(&spec.bytes));
        assert_eq!(
            FileHandle::new(handle.path(), 0, 0, false).unwrap().path(),
            handle.path()
        );
        assert_eq!(
            (file.name.as_str(), file.path.as_str()),
            (spec.name.as_str(), handle.path())
        );
        let stored = store
            .get(&paths().handle_path(handle.path()).unwrap())
            .await
            .unwrap();
        assert_eq!(stored, Bytes::from(spec.bytes.clone()));
    }
    let mut listed = object_paths(&store).await;
    let mut referenced: Vec<String> = uploaded
        .state
        .files
        .iter()
        .map(|h| h.path().to_owned())
        .collect();
    listed.sort();
    referenced.sort();
    assert_eq!(listed, referenced);
}

#[tokio::test]
async fn a_flipped_byte_fails_the_download_with_an_error_naming_the_file_and_the_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store();
    let specs = [
        sst("000030.sst"),
        sst("000031.sst"),
        private("MANIFEST-000001", b"manifest"),
    ];
    let uploaded = upload(&uploader(&store), tmp.path(), 4, &specs, None)
        .await
        .unwrap();
    let (faulty, faults) = FaultyStore::wrap(&store);
    faults.corrupt_gets_matching(|p| p.as_ref().ends_with("000031.sst"));
    let dir = tmp.path().join("restore");
    let err = uploader(&faulty)
        .download_keyed(CheckpointId(4), &uploaded.state, &dir)
        .await
        .unwrap_err();
    assert!(
        matches!(err, TransferError::Download { .. })
            && matches!(err.storage_error(), Some(StorageError::CrcMismatch { .. })),
        "{err}"
    );
    assert_eq!(err.checkpoint(), CheckpointId(4));
    let msg = err.to_string();
    assert!(
        msg.contains("chk-4") && msg.contains("shared/sum/3/4-000031.sst"),
        "{msg}"
    );
    assert!(
        files_in(&dir).is_empty(),
        "a failed download leaves no files: {:?}",
        files_in(&dir)
    );
}

#[tokio::test]
async fn an_overwritten_object_fails_the_download_with_a_crc_error() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store();
    let up = uploader(&store);
    let specs = [sst("000040.sst"), private("MANIFEST-000002", b"manifest")];
    let uploaded = upload(&up, tmp.path(), 5, &specs, None).await.unwrap();
    let victim = paths().handle_path("chk-5/sum/3/MANIFEST-000002").unwrap();
    store
        .put(&victim, Bytes::from_static(b"manifesT"))
        .await
        .unwrap();
    let err = up
        .download_keyed(
            CheckpointId(5),
            &uploaded.state,
            &tmp.path().join("restore"),
        )
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("chk-5")
            && msg.contains("chk-5/sum/3/MANIFEST-000002")
            && msg.contains("damaged"),
        "{msg}"
    );
}

#[tokio::test]
async fn a_missing_object_fails_the_download_with_an_error_naming_the_file_and_the_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store();
    let up = uploader(&store);
    let specs = [sst("000050.sst"), sst("000051.sst")];
    let uploaded = upload(&up, tmp.path(), 6, &specs, None).await.unwrap();
    store
        .delete(&paths().handle_path("shared/sum/3/6-000050.sst").unwrap())
        .await
        .unwrap();
    let err = up
        .download_keyed(
            CheckpointId(6),
            &uploaded.state,
            &tmp.path().join("restore"),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, TransferError::Download { .. })
            && matches!(err.storage_error(), Some(StorageError::NotFound { .. })),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("chk-6") && msg.contains("shared/sum/3/6-000050.sst"),
        "{msg}"
    );
}

#[tokio::test]
async fn a_failing_put_fails_the_upload_leaves_no_object_of_its_own_and_still_removes_the_cleanup_dir(
) {
    let tmp = tempfile::tempdir().unwrap();
    let store = store();
    let first_specs = [
        sst("000001.sst"),
        sst("000002.sst"),
        private("MANIFEST-1", b"m1"),
    ];
    let first = upload(&uploader(&store), tmp.path(), 1, &first_specs, None)
        .await
        .unwrap();
    let before = object_paths(&store).await;

    let (faulty, faults) = FaultyStore::wrap(&store);
    faults.fail_puts_matching(|p| p.as_ref().ends_with("000006.sst"));
    // More files than run at once, so some start after the failure and some finish before it.
    let specs = [
        sst("000001.sst"),
        sst("000002.sst"),
        sst("000003.sst"),
        sst("000004.sst"),
        sst("000005.sst"),
        sst("000006.sst"),
        sst("000007.sst"),
        sst("000008.sst"),
        private("MANIFEST-2", b"m2"),
    ];
    let err = upload(
        &uploader(&faulty),
        tmp.path(),
        2,
        &specs,
        Some(&first.shared),
    )
    .await
    .unwrap_err();
    assert!(matches!(&err, TransferError::Upload { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("chk-2") && msg.contains("000006.sst"), "{msg}");
    assert!(
        !tmp.path().join("snap-2").exists(),
        "cleanup_dir was removed"
    );
    // 000003–000006 started together; the three that landed were deleted again.
    assert!(faults.delete_attempts() >= 3, "{faults:?}");
    assert_eq!(
        object_paths(&store).await,
        before,
        "only the first checkpoint's objects remain"
    );
    assert_restores(&uploader(&store), tmp.path(), 1, &first.state, &first_specs).await;
}

#[tokio::test]
async fn a_put_whose_answer_was_lost_is_cleaned_up_when_the_upload_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store();
    let (faulty, faults) = FaultyStore::wrap(&store);
    // The object lands, then the put reports a failure; without retries the upload fails.
    faults.lose_next_put_answers(1);
    let err = upload(
        &uploader(&faulty),
        tmp.path(),
        3,
        &[sst("000001.sst")],
        None,
    )
    .await
    .unwrap_err();
    assert!(matches!(&err, TransferError::Upload { .. }), "{err}");
    assert_eq!(object_paths(&store).await, Vec::<String>::new());
}

#[tokio::test]
async fn a_lost_put_answer_is_retried_without_failing_the_upload() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::in_memory().with_retry_policy(RetryPolicy {
        max_attempts: 3,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(1),
    });
    let (faulty, faults) = FaultyStore::wrap(&store);
    faults.lose_next_put_answers(1);
    let specs = [sst("000001.sst"), private("MANIFEST-1", b"m")];
    let up = uploader(&faulty);
    let uploaded = upload(&up, tmp.path(), 1, &specs, None).await.unwrap();
    assert_eq!(faults.injected_failures(), 1);
    assert_restores(&up, tmp.path(), 1, &uploaded.state, &specs).await;
}

#[tokio::test]
async fn a_snapshot_with_a_bad_or_duplicate_file_name_is_refused_before_anything_is_uploaded() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store();
    let up = uploader(&store);
    let cases: [&[Spec]; 4] = [
        &[sst("000001.sst"), private("../escape", b"x")],
        &[sst("000001.sst"), private("a/b", b"x")],
        &[sst("000001.sst"), private("", b"x")],
        &[sst("000001.sst"), sst("000001.sst")],
    ];
    for (i, specs) in cases.into_iter().enumerate() {
        let err = upload(&up, tmp.path(), i as u64, specs, None)
            .await
            .unwrap_err();
        assert!(matches!(&err, TransferError::BadFileName { .. }), "{err}");
        assert!(!tmp.path().join(format!("snap-{i}")).exists());
    }
    assert_eq!(object_paths(&store).await, Vec::<String>::new());
}

#[tokio::test]
async fn a_missing_local_file_fails_the_upload_with_an_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store();
    let snap = snapshot(tmp.path(), 1, &[sst("000001.sst"), sst("000002.sst")]);
    std::fs::remove_file(tmp.path().join("snap-1/000002.sst")).unwrap();
    let err = uploader(&store)
        .upload_keyed(&uid(), SUBTASK, snap, None)
        .await
        .unwrap_err();
    assert!(matches!(&err, TransferError::ReadLocal { .. }), "{err}");
    assert!(err.to_string().contains("000002.sst"), "{err}");
    assert_eq!(object_paths(&store).await, Vec::<String>::new());
}

#[tokio::test]
async fn a_reused_file_whose_local_size_differs_from_its_base_handle_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store();
    let up = uploader(&store);
    let first = upload(&up, tmp.path(), 1, &[sst("000001.sst")], None)
        .await
        .unwrap();
    let mut changed = sst("000001.sst");
    changed.bytes.push(b'!');
    let err = upload(
        &up,
        tmp.path(),
        2,
        &[changed, sst("000002.sst")],
        Some(&first.shared),
    )
    .await
    .unwrap_err();
    assert!(matches!(&err, TransferError::BaseMismatch { .. }), "{err}");
    assert_eq!(
        object_paths(&store).await.len(),
        1,
        "nothing new was uploaded"
    );
}

#[tokio::test]
async fn dropping_an_unfinished_upload_still_removes_the_cleanup_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store();
    let up = uploader(&store);
    let snap = snapshot(tmp.path(), 1, &[sst("000001.sst"), sst("000002.sst")]);
    let uid = uid();
    let mut upload = Box::pin(up.upload_keyed(&uid, SUBTASK, snap, None));
    // Polled once: it starts its file reads and waits for them. Then dropped, as an aborted
    // checkpoint's upload would be.
    let mut cx = Context::from_waker(Waker::noop());
    assert!(upload.as_mut().poll(&mut cx).is_pending());
    drop(upload);
    assert!(!tmp.path().join("snap-1").exists());
}

#[tokio::test]
async fn a_private_file_round_trips_and_a_damaged_one_is_refused() {
    let store = store();
    let up = uploader(&store);
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
    assert_eq!(handle.path(), "chk-7/sink/2/staging/manifest.json");
    assert!(!handle.is_shared());
    assert_eq!(
        up.download_private(CheckpointId(7), &handle).await.unwrap(),
        b"{\"parts\":[]}"
    );

    // A second upload of the same file for the same checkpoint never overwrites.
    let again = up
        .upload_private(
            CheckpointId(7),
            &sink,
            SubtaskIndex(2),
            "staging/manifest.json",
            b"other".to_vec(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(again, TransferError::Upload { .. })
            && matches!(
                again.storage_error(),
                Some(StorageError::AlreadyExists { .. })
            ),
        "{again}"
    );

    let wrong_size =
        FileHandle::new(handle.path(), handle.size() + 1, handle.crc32(), false).unwrap();
    let err = up
        .download_private(CheckpointId(7), &wrong_size)
        .await
        .unwrap_err();
    assert!(matches!(&err, TransferError::SizeMismatch { .. }), "{err}");

    let (faulty, faults) = FaultyStore::wrap(&store);
    faults.corrupt_next_gets(1);
    let err = uploader(&faulty)
        .download_private(CheckpointId(7), &handle)
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("chk-7") && msg.contains("chk-7/sink/2/staging/manifest.json"),
        "{msg}"
    );
}

#[tokio::test]
async fn a_download_refuses_state_without_a_description_or_with_a_file_it_has_no_handle_for() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store();
    let up = uploader(&store);
    let uploaded = upload(
        &up,
        tmp.path(),
        8,
        &[sst("000001.sst"), sst("000002.sst")],
        None,
    )
    .await
    .unwrap();
    let dir = tmp.path().join("restore");

    let mut no_meta = uploaded.state.clone();
    no_meta.inline = None;
    let err = up
        .download_keyed(CheckpointId(8), &no_meta, &dir)
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            TransferError::Meta {
                source: MetaError::Missing,
                ..
            }
        ),
        "{err}"
    );

    let mut missing = uploaded.state.clone();
    missing.files.remove(1);
    let err = up
        .download_keyed(CheckpointId(8), &missing, &dir)
        .await
        .unwrap_err();
    assert!(matches!(&err, TransferError::MissingHandle { .. }), "{err}");
    assert!(
        err.to_string().contains("shared/sum/3/8-000002.sst"),
        "{err}"
    );

    let mut future = KeyedStateMeta::decode(uploaded.state.inline.as_deref().unwrap()).unwrap();
    future.version = 2;
    let mut unknown = uploaded.state.clone();
    unknown.inline = Some(future.encode().unwrap());
    let err = up
        .download_keyed(CheckpointId(8), &unknown, &dir)
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            TransferError::Meta {
                source: MetaError::UnsupportedVersion { found: 2, .. },
                ..
            }
        ),
        "{err}"
    );
}

/// One round of the property test: which SST files (by number) the snapshot has, how many
/// private files, and whether the store fails one put during it.
type Round = (std::collections::BTreeSet<u8>, u8, bool);

fn run_rounds(rounds: Vec<Round>) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let tmp = tempfile::tempdir().unwrap();
        let store = store();
        let (faulty, faults) = FaultyStore::wrap(&store);
        let up = uploader(&faulty);
        let mut base: Option<SharedFiles> = None;
        let mut completed: Vec<(u64, OperatorSubtaskState, Vec<Spec>)> = Vec::new();
        // Every handle ever returned: a path must always carry the same bytes.
        let mut crc_of: BTreeMap<String, u32> = BTreeMap::new();

        for (i, (ssts, privates, fail)) in rounds.into_iter().enumerate() {
            let id = i as u64 + 1;
            let mut specs: Vec<Spec> = ssts.iter().map(|n| sst(&format!("{n:06}.sst"))).collect();
            specs.extend((0..privates).map(|p| {
                private(
                    &format!("private-{p}"),
                    format!("chk {id} private {p}").as_bytes(),
                )
            }));
            let before = object_paths(&store).await;
            let injected_before = faults.injected_failures();
            if fail {
                faults.fail_next_puts(1);
            }
            let result = upload(&up, tmp.path(), id, &specs, base.as_ref()).await;
            let failed_put = faults.injected_failures() > injected_before;
            faults.clear();
            let cleanup_dir = tmp.path().join(format!("snap-{id}"));
            prop_assert!(!cleanup_dir.exists());
            match result {
                Ok(uploaded) => {
                    prop_assert!(!failed_put, "an upload succeeded although a put failed");
                    let reused: u64 = uploaded
                        .state
                        .files
                        .iter()
                        .filter(|h| base.as_ref().is_some_and(|b| b.values().any(|bh| bh == *h)))
                        .map(|h| h.size())
                        .sum();
                    prop_assert_eq!(uploaded.bytes_uploaded + reused, uploaded.full_size);
                    for handle in &uploaded.state.files {
                        let known = crc_of
                            .entry(handle.path().to_owned())
                            .or_insert(handle.crc32());
                        prop_assert_eq!(*known, handle.crc32(), "{} changed", handle.path());
                    }
                    // The checkpoint completes: its shareable files are the next base.
                    base = Some(uploaded.shared.clone());
                    completed.push((id, uploaded.state, specs));
                }
                Err(e) => {
                    prop_assert!(failed_put, "unexpected failure: {}", e);
                    prop_assert_eq!(
                        object_paths(&store).await,
                        before,
                        "a failed upload left objects"
                    );
                }
            }
        }
        // Every completed checkpoint still restores byte for byte, and nothing else is stored.
        for (id, state, specs) in &completed {
            assert_restores(&uploader(&store), tmp.path(), *id, state, specs).await;
        }
        let mut referenced: Vec<String> = completed
            .iter()
            .flat_map(|(_, state, _)| state.files.iter().map(|h| h.path().to_owned()))
            .collect();
        referenced.sort();
        referenced.dedup();
        prop_assert_eq!(object_paths(&store).await, referenced);
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn any_sequence_of_incremental_uploads_references_only_stored_objects_and_never_overwrites(
        rounds in vec((btree_set(0u8..10, 0..6), 0u8..3, proptest::bool::weighted(0.25)), 1..7)
    ) {
        run_rounds(rounds)?;
    }
}
