//! The [`Store`] contract on `memory://` and `file://`, and the faults [`FaultyStore`] injects.

use std::time::Duration;

use weir_storage::{
    crc32, open_store, Bytes, CheckpointPaths, FaultyStore, ObjectPath, RetryHint, RetryPolicy,
    S3Options, SavepointId, SavepointPaths, StorageError, StorageOp, StorageUrl, Store,
};
use weir_types::{CheckpointId, JobId};

const JOB: JobId = JobId(0xfeed);

/// Fast retries so the tests do not sleep for long.
fn quick_retries(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(4),
    }
}

/// A fresh `memory://` store and a fresh `file://` store (with the directory that holds it).
fn backends() -> Vec<(Store, Option<tempfile::TempDir>)> {
    let dir = tempfile::tempdir().expect("temp dir");
    let file_url =
        StorageUrl::parse(&format!("file://{}/root", dir.path().display())).expect("file url");
    let file = open_store(&file_url, &S3Options::default()).expect("open file store");
    vec![(Store::in_memory(), None), (file, Some(dir))]
}

fn faulty(max_attempts: u32) -> (Store, weir_storage::Faults) {
    FaultyStore::wrap(&Store::in_memory().with_retry_policy(quick_retries(max_attempts)))
}

fn path(s: &str) -> ObjectPath {
    ObjectPath::from(s)
}

#[tokio::test]
async fn put_create_refuses_to_overwrite_on_memory_and_file_stores() {
    for (store, _dir) in backends() {
        let p = CheckpointPaths::new(JOB).metadata(CheckpointId(1));
        store
            .put_create(&p, Bytes::from_static(b"first"))
            .await
            .unwrap();
        let err = store
            .put_create(&p, Bytes::from_static(b"second"))
            .await
            .unwrap_err();
        assert!(err.is_already_exists(), "{store}: {err:?}");
        assert_eq!(err.retry_hint(), RetryHint::Permanent);
        assert!(err.to_string().contains(p.as_ref()), "{err}");
        assert_eq!(store.get(&p).await.unwrap(), Bytes::from_static(b"first"));
    }
}

#[tokio::test]
async fn put_overwrites_and_get_reads_back_on_memory_and_file_stores() {
    for (store, _dir) in backends() {
        let p = path("a/b/c");
        store.put(&p, Bytes::from_static(b"one")).await.unwrap();
        store.put(&p, Bytes::from_static(b"two")).await.unwrap();
        assert_eq!(store.get(&p).await.unwrap(), Bytes::from_static(b"two"));
        assert!(store.exists(&p).await.unwrap());
        assert!(!store.exists(&path("a/b/missing")).await.unwrap());
    }
}

#[tokio::test]
async fn reading_a_missing_object_is_not_found_and_names_it() {
    for (store, _dir) in backends() {
        let err = store.get(&path("nope/x")).await.unwrap_err();
        assert!(err.is_not_found(), "{store}: {err:?}");
        assert_eq!(err.to_string(), "object 'nope/x' not found");
    }
}

#[tokio::test]
async fn delete_is_idempotent_on_memory_and_file_stores() {
    for (store, _dir) in backends() {
        let p = path("job/chk-1/x");
        store.put(&p, Bytes::from_static(b"x")).await.unwrap();
        store.delete(&p).await.unwrap();
        store.delete(&p).await.unwrap();
        store.delete(&path("never/existed")).await.unwrap();
        assert!(!store.exists(&p).await.unwrap());
    }
}

#[tokio::test]
async fn listing_is_recursive_sorted_and_empty_for_a_missing_prefix() {
    for (store, _dir) in backends() {
        for name in ["d/b", "d/a", "d/sub/c", "e/x"] {
            store
                .put(&path(name), Bytes::from_static(b"1"))
                .await
                .unwrap();
        }
        let listed: Vec<String> = store
            .list(&path("d"))
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.location.to_string())
            .collect();
        assert_eq!(listed, vec!["d/a", "d/b", "d/sub/c"], "{store}");
        assert!(store.list(&path("missing")).await.unwrap().is_empty());
        assert!(store.list_dirs(&path("missing")).await.unwrap().is_empty());
        assert_eq!(store.list(&ObjectPath::ROOT).await.unwrap().len(), 4);
    }
}

#[tokio::test]
async fn a_jobs_checkpoint_ids_are_listed_in_ascending_order() {
    for (store, _dir) in backends() {
        let paths = CheckpointPaths::new(JOB);
        let other = CheckpointPaths::new(JobId(7));
        for n in [10, 2, 9] {
            let file = paths.checkpoint_file(CheckpointId(n), "state").unwrap();
            store.put(&file, Bytes::from_static(b"s")).await.unwrap();
        }
        let shared = paths.shared_file("1.sst").unwrap();
        store.put(&shared, Bytes::from_static(b"s")).await.unwrap();
        let foreign = other.metadata(CheckpointId(5));
        store.put(&foreign, Bytes::from_static(b"m")).await.unwrap();

        assert_eq!(
            store.checkpoint_ids(&paths).await.unwrap(),
            vec![CheckpointId(2), CheckpointId(9), CheckpointId(10)],
            "{store}"
        );
        assert!(store
            .checkpoint_ids(&CheckpointPaths::new(JobId(99)))
            .await
            .unwrap()
            .is_empty());
    }
}

#[tokio::test]
async fn savepoint_ids_are_listed_from_the_savepoint_root() {
    for (store, _dir) in backends() {
        for id in ["b-2", "a-1"] {
            let sp = SavepointPaths::new(SavepointId::new(id).unwrap());
            store
                .put(&sp.metadata(), Bytes::from_static(b"m"))
                .await
                .unwrap();
        }
        store
            .put(&path("not-a-savepoint/x"), Bytes::new())
            .await
            .unwrap();
        let ids: Vec<String> = store
            .savepoint_ids()
            .await
            .unwrap()
            .iter()
            .map(|id| id.to_string())
            .collect();
        assert_eq!(ids, vec!["a-1", "b-2"], "{store}");
    }
}

#[tokio::test]
async fn delete_prefix_removes_an_incomplete_checkpoint_and_nothing_else() {
    for (store, _dir) in backends() {
        let paths = CheckpointPaths::new(JOB);
        for name in ["a", "b/c"] {
            let p = paths.checkpoint_file(CheckpointId(3), name).unwrap();
            store.put(&p, Bytes::from_static(b"x")).await.unwrap();
        }
        let keep = paths.checkpoint_file(CheckpointId(30), "a").unwrap();
        store.put(&keep, Bytes::from_static(b"x")).await.unwrap();

        let dir = paths.checkpoint_dir(CheckpointId(3));
        assert_eq!(store.delete_prefix(&dir).await.unwrap(), 2);
        assert_eq!(store.delete_prefix(&dir).await.unwrap(), 0);
        assert!(store.exists(&keep).await.unwrap());
        assert_eq!(
            store.checkpoint_ids(&paths).await.unwrap(),
            vec![CheckpointId(30)],
            "{store}"
        );
    }
}

#[tokio::test]
async fn a_verified_read_returns_bytes_whose_crc_matches() {
    for (store, _dir) in backends() {
        let p = path("job/shared/1.sst");
        let bytes = Bytes::from_static(b"sst bytes");
        let crc = store.put_with_crc(&p, bytes.clone()).await.unwrap();
        assert_eq!(crc, crc32(&bytes));
        assert_eq!(store.get_verified(&p, crc).await.unwrap(), bytes);
    }
}

#[tokio::test]
async fn a_crc_mismatch_is_detected_and_names_the_path() {
    let (store, faults) = faulty(3);
    let p = CheckpointPaths::new(JOB).metadata(CheckpointId(4));
    let crc = store
        .put_with_crc(&p, Bytes::from_static(b"WEIR metadata body"))
        .await
        .unwrap();

    faults.corrupt_next_gets(1);
    let err = store.get_verified(&p, crc).await.unwrap_err();
    match &err {
        StorageError::CrcMismatch {
            path,
            expected,
            actual,
        } => {
            assert_eq!(path, p.as_ref());
            assert_eq!(*expected, crc);
            assert_ne!(actual, expected);
        }
        other => panic!("expected a CRC mismatch, got {other:?}"),
    }
    assert_eq!(err.retry_hint(), RetryHint::Permanent);
    assert!(err.to_string().contains(&format!("{p}")), "{err}");
    // The corruption was one read's; the stored bytes are intact.
    assert!(store.get_verified(&p, crc).await.is_ok());
}

#[tokio::test]
async fn corrupting_gets_by_path_flips_a_byte_in_every_matching_read() {
    let (store, faults) = faulty(1);
    let bad = path("job/shared/bad.sst");
    let good = path("job/shared/good.sst");
    let bytes = Bytes::from_static(b"abcdef");
    store.put(&bad, bytes.clone()).await.unwrap();
    store.put(&good, bytes.clone()).await.unwrap();
    faults.corrupt_gets_matching(|p| p.as_ref().ends_with("bad.sst"));

    for _ in 0..2 {
        let read = store.get(&bad).await.unwrap();
        assert_eq!(read.len(), bytes.len());
        let differing = read
            .iter()
            .zip(bytes.iter())
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(differing, 1);
    }
    assert_eq!(store.get(&good).await.unwrap(), bytes);
    faults.clear();
    assert_eq!(store.get(&bad).await.unwrap(), bytes);
}

#[tokio::test]
async fn a_put_succeeds_after_fewer_transient_failures_than_the_bound() {
    let (store, faults) = faulty(3);
    faults.fail_next_puts(2);
    let p = path("job/chk-1/a");
    store.put(&p, Bytes::from_static(b"a")).await.unwrap();
    assert_eq!(faults.put_attempts(), 3);
    assert_eq!(faults.injected_failures(), 2);
    assert_eq!(store.get(&p).await.unwrap(), Bytes::from_static(b"a"));
}

#[tokio::test]
async fn a_put_gives_up_after_the_bound_and_says_a_retry_may_help() {
    let (store, faults) = faulty(3);
    faults.fail_next_puts(5);
    let p = path("job/chk-1/a");
    let err = store.put(&p, Bytes::from_static(b"a")).await.unwrap_err();
    match &err {
        StorageError::Backend {
            op,
            path,
            attempts,
            hint,
            ..
        } => {
            assert_eq!(*op, StorageOp::Put);
            assert_eq!(path, "job/chk-1/a");
            assert_eq!(*attempts, 3);
            assert_eq!(*hint, RetryHint::Transient);
        }
        other => panic!("expected a backend error, got {other:?}"),
    }
    assert_eq!(err.retry_hint(), RetryHint::Transient);
    assert!(err.to_string().contains("after 3 attempt(s)"), "{err}");
    assert_eq!(faults.put_attempts(), 3);
    assert!(!store.exists(&p).await.unwrap());
}

#[tokio::test]
async fn a_get_is_retried_after_a_transient_failure() {
    let (store, faults) = faulty(2);
    let p = path("x");
    store.put(&p, Bytes::from_static(b"x")).await.unwrap();
    faults.fail_next_gets(1);
    assert_eq!(store.get(&p).await.unwrap(), Bytes::from_static(b"x"));
    assert_eq!(faults.get_attempts(), 2);

    faults.fail_next_gets(2);
    let err = store.get(&p).await.unwrap_err();
    assert_eq!(err.retry_hint(), RetryHint::Transient);
    assert_eq!(faults.get_attempts(), 4);
}

#[tokio::test]
async fn a_permanent_failure_is_not_retried() {
    let (store, faults) = faulty(5);
    let err = store.get(&path("missing")).await.unwrap_err();
    assert!(err.is_not_found());
    assert_eq!(faults.get_attempts(), 1);

    let p = path("once");
    store
        .put_create(&p, Bytes::from_static(b"1"))
        .await
        .unwrap();
    let before = faults.put_attempts();
    let err = store
        .put_create(&p, Bytes::from_static(b"2"))
        .await
        .unwrap_err();
    assert!(err.is_already_exists());
    assert_eq!(faults.put_attempts(), before + 1);
}

#[tokio::test]
async fn puts_matching_a_predicate_fail_until_cleared() {
    let (store, faults) = faulty(3);
    let paths = CheckpointPaths::new(JOB);
    let doomed_dir = paths.checkpoint_dir(CheckpointId(2));
    faults.fail_puts_matching(move |p| p.prefix_matches(&doomed_dir));

    let ok = paths.checkpoint_file(CheckpointId(1), "a").unwrap();
    store
        .put_create(&ok, Bytes::from_static(b"a"))
        .await
        .unwrap();
    let doomed = paths.checkpoint_file(CheckpointId(2), "a").unwrap();
    let err = store
        .put_create(&doomed, Bytes::from_static(b"a"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains(doomed.as_ref()), "{err}");
    assert!(err.to_string().contains("injected put failure"), "{err}");
    assert_eq!(faults.injected_failures(), 3);

    faults.clear();
    store
        .put_create(&doomed, Bytes::from_static(b"a"))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_create_retried_after_a_lost_answer_accepts_its_own_write() {
    let (store, faults) = faulty(3);
    let p = path("job/chk-1/_metadata");
    faults.lose_next_put_answers(1);
    store
        .put_create(&p, Bytes::from_static(b"mine"))
        .await
        .unwrap();
    assert_eq!(faults.put_attempts(), 2);
    assert_eq!(store.get(&p).await.unwrap(), Bytes::from_static(b"mine"));
}

#[tokio::test]
async fn a_create_retried_after_a_failure_still_refuses_someone_elses_object() {
    let (store, faults) = faulty(3);
    let p = path("job/chk-1/_metadata");
    store
        .put_create(&p, Bytes::from_static(b"theirs"))
        .await
        .unwrap();
    // The first attempt fails transiently, so the retry cannot tell whether the object it then
    // finds is its own: it compares bytes, and these are not ours.
    faults.fail_next_puts(1);
    let err = store
        .put_create(&p, Bytes::from_static(b"mine"))
        .await
        .unwrap_err();
    assert!(err.is_already_exists(), "{err:?}");
    assert_eq!(store.get(&p).await.unwrap(), Bytes::from_static(b"theirs"));
}

#[tokio::test]
async fn deletes_fail_when_armed_and_succeed_on_retry() {
    let (store, faults) = faulty(2);
    let p = path("d");
    store.put(&p, Bytes::from_static(b"d")).await.unwrap();
    faults.fail_next_deletes(1);
    store.delete(&p).await.unwrap();
    assert_eq!(faults.delete_attempts(), 2);
    assert!(!store.exists(&p).await.unwrap());

    let no_retry = store.clone().with_retry_policy(RetryPolicy::no_retries());
    faults.fail_next_deletes(1);
    let err = no_retry.delete(&p).await.unwrap_err();
    assert!(err.to_string().contains("injected delete failure"), "{err}");
}

#[tokio::test]
async fn the_same_memory_name_opens_the_same_store_and_others_are_isolated() {
    let opts = S3Options::default();
    let url = |s: &str| StorageUrl::parse(s).unwrap();
    let a1 = open_store(&url("memory://same-name-test"), &opts).unwrap();
    let a2 = open_store(&url("memory://same-name-test"), &opts).unwrap();
    let b = open_store(&url("memory://other-name-test"), &opts).unwrap();
    a1.put(&path("k"), Bytes::from_static(b"v")).await.unwrap();
    assert_eq!(a2.get(&path("k")).await.unwrap(), Bytes::from_static(b"v"));
    assert!(b.get(&path("k")).await.unwrap_err().is_not_found());
}

#[tokio::test]
async fn the_url_prefix_roots_every_path() {
    let opts = S3Options::default();
    let url = |s: &str| StorageUrl::parse(s).unwrap();
    let rooted = open_store(&url("memory://prefix-test/weir/chk"), &opts).unwrap();
    let whole = open_store(&url("memory://prefix-test"), &opts).unwrap();
    rooted
        .put(&path("a/b"), Bytes::from_static(b"v"))
        .await
        .unwrap();
    assert!(whole.exists(&path("weir/chk/a/b")).await.unwrap());
    let listed = rooted.list(&ObjectPath::ROOT).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].location.as_ref(), "a/b");
}

#[tokio::test]
async fn a_file_store_creates_its_directory_and_writes_plain_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("deep/er/root");
    let url = StorageUrl::parse(root.to_str().unwrap()).unwrap();
    let store = open_store(&url, &S3Options::default()).unwrap();
    assert!(root.is_dir());
    let p = CheckpointPaths::new(JOB).metadata(CheckpointId(1));
    store
        .put_create(&p, Bytes::from_static(b"meta"))
        .await
        .unwrap();
    let on_disk = root.join(p.as_ref());
    assert_eq!(std::fs::read(&on_disk).unwrap(), b"meta");
    // Deleting the last file of a checkpoint also removes its now empty directory.
    store.delete(&p).await.unwrap();
    assert!(!on_disk.parent().unwrap().exists());
}

#[test]
fn a_file_store_that_cannot_create_its_directory_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, b"not a dir").unwrap();
    let url = StorageUrl::parse(blocker.join("root").to_str().unwrap()).unwrap();
    let err = open_store(&url, &S3Options::default()).unwrap_err();
    assert!(matches!(err, StorageError::CreateRoot { .. }), "{err:?}");
    assert!(err.to_string().contains(blocker.to_str().unwrap()), "{err}");
}

#[test]
fn an_s3_store_builds_from_options_without_network() {
    let url = StorageUrl::parse("s3://weir-test/checkpoints").unwrap();
    let opts = S3Options {
        endpoint: Some("http://127.0.0.1:1".into()),
        region: "us-east-1".into(),
        access_key_id: Some("weir".into()),
        secret_access_key: Some("weir-secret".into()),
        allow_http: true,
        path_style: true,
    };
    let store = open_store(&url, &opts).unwrap();
    assert_eq!(store.to_string(), "s3://weir-test/checkpoints");
    // Virtual-hosted style and AWS defaults build too.
    open_store(&url, &S3Options::default()).unwrap();
}

#[test]
fn s3_options_never_print_the_secret() {
    let opts = S3Options {
        secret_access_key: Some("hunter2".into()),
        ..S3Options::default()
    };
    let shown = format!("{opts:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("<redacted>"));
}
