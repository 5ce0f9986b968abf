//! The [`Store`] contract on `s3://`, against a real S3-compatible server (s3s-fs on loopback,
//! started by `weir-testkit`): signed requests, create-only puts, verified reads, listings,
//! idempotent deletes and a large object.
//!
//! Each test starts its own server. Without one installed the tests print `SKIPPED …` and pass,
//! unless `WEIR_REQUIRE_S3=1` (as `scripts/test.sh` sets), which makes them fail instead.

use std::time::Duration;

use weir_storage::{
    crc32, open_store, Bytes, CheckpointPaths, ObjectPath, RetryHint, RetryPolicy, S3Options,
    StorageError, StorageUrl, Store,
};
use weir_testkit::{require_or_skip, S3Server};
use weir_types::{CheckpointId, JobId};

const JOB: JobId = JobId(0x53);

/// The options a deployment would use for an S3-compatible server on plain HTTP.
fn options(server: &S3Server) -> S3Options {
    S3Options {
        endpoint: Some(server.endpoint()),
        region: "us-east-1".to_owned(),
        access_key_id: Some(server.access_key().to_owned()),
        secret_access_key: Some(server.secret_key().to_owned()),
        allow_http: true,
        path_style: true,
    }
}

/// A store on `s3://<bucket>/<prefix>` of `server`, with quick retries.
fn store(server: &S3Server, prefix: &str) -> Store {
    let url = StorageUrl::parse(&server.url(prefix)).expect("s3 url");
    open_store(&url, &options(server))
        .expect("open s3 store")
        .with_retry_policy(RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(20),
        })
}

fn path(s: &str) -> ObjectPath {
    ObjectPath::from(s)
}

#[tokio::test]
async fn put_overwrites_and_get_reads_back_on_s3() {
    let Some(server) = require_or_skip("put_overwrites_and_get_reads_back_on_s3") else {
        return;
    };
    let store = store(&server, "weir");
    let p = path("a/b/c");
    store.put(&p, Bytes::from_static(b"one")).await.unwrap();
    store.put(&p, Bytes::from_static(b"two")).await.unwrap();
    assert_eq!(store.get(&p).await.unwrap(), Bytes::from_static(b"two"));
    assert!(store.exists(&p).await.unwrap());
    assert!(!store.exists(&path("a/b/missing")).await.unwrap());
    let err = store.get(&path("a/b/missing")).await.unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    // The URL's prefix is where the object lands in the bucket.
    assert!(
        server.bucket_dir().join("weir/a/b/c").is_file(),
        "server log: {}",
        server.log()
    );
}

#[tokio::test]
async fn put_create_refuses_to_overwrite_on_s3() {
    let Some(server) = require_or_skip("put_create_refuses_to_overwrite_on_s3") else {
        return;
    };
    let store = store(&server, "");
    let p = CheckpointPaths::new(JOB).metadata(CheckpointId(1));
    store
        .put_create(&p, Bytes::from_static(b"first"))
        .await
        .unwrap();
    let err = store
        .put_create(&p, Bytes::from_static(b"second"))
        .await
        .unwrap_err();
    assert!(err.is_already_exists(), "{err:?}");
    assert_eq!(err.retry_hint(), RetryHint::Permanent);
    assert!(err.to_string().contains(p.as_ref()), "{err}");
    assert_eq!(store.get(&p).await.unwrap(), Bytes::from_static(b"first"));
}

#[tokio::test]
async fn get_verified_detects_bytes_damaged_on_the_server() {
    let Some(server) = require_or_skip("get_verified_detects_bytes_damaged_on_the_server") else {
        return;
    };
    let store = store(&server, "chk");
    let p = CheckpointPaths::new(JOB)
        .checkpoint_file(CheckpointId(7), "state-0")
        .unwrap();
    let bytes = Bytes::from(vec![0x5au8; 4096]);
    let crc = store.put_with_crc(&p, bytes.clone()).await.unwrap();
    assert_eq!(crc, crc32(&bytes));
    assert_eq!(store.get_verified(&p, crc).await.unwrap(), bytes);

    // Flip one byte of the stored object behind the server's back.
    let file = server.bucket_dir().join("chk").join(p.as_ref());
    let mut stored = std::fs::read(&file).expect("the object is a file in the bucket folder");
    stored[100] ^= 0xff;
    std::fs::write(&file, &stored).unwrap();

    let err = store.get_verified(&p, crc).await.unwrap_err();
    match &err {
        StorageError::CrcMismatch {
            path,
            expected,
            actual,
        } => {
            assert_eq!(path, p.as_ref());
            assert_eq!(*expected, crc);
            assert_eq!(*actual, crc32(&stored));
        }
        other => panic!("expected a CRC mismatch, got {other:?}"),
    }
    assert_eq!(err.retry_hint(), RetryHint::Permanent);
}

#[tokio::test]
async fn listing_is_recursive_sorted_and_finds_checkpoint_ids_on_s3() {
    let Some(server) =
        require_or_skip("listing_is_recursive_sorted_and_finds_checkpoint_ids_on_s3")
    else {
        return;
    };
    let store = store(&server, "root/nested");
    let paths = CheckpointPaths::new(JOB);
    for id in [12, 3, 7] {
        store
            .put_create(&paths.metadata(CheckpointId(id)), Bytes::from_static(b"m"))
            .await
            .unwrap();
    }
    store
        .put(
            &paths.shared_file("sst-1").unwrap(),
            Bytes::from_static(b"s"),
        )
        .await
        .unwrap();
    assert_eq!(
        store.checkpoint_ids(&paths).await.unwrap(),
        vec![CheckpointId(3), CheckpointId(7), CheckpointId(12)]
    );
    let listed: Vec<String> = store
        .list(paths.job_dir())
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.location.to_string())
        .collect();
    let job = paths.job_dir().to_string();
    assert_eq!(
        listed,
        vec![
            format!("{job}/chk-12/_metadata"),
            format!("{job}/chk-3/_metadata"),
            format!("{job}/chk-7/_metadata"),
            format!("{job}/shared/sst-1"),
        ]
    );
    assert!(store.list(&path("missing")).await.unwrap().is_empty());
    assert!(store.list_dirs(&path("missing")).await.unwrap().is_empty());
    // A store on the bucket's root sees the same objects under the prefix.
    let root = self::store(&server, "");
    assert_eq!(root.list(&path("root/nested")).await.unwrap().len(), 4);
}

#[tokio::test]
async fn delete_is_idempotent_on_s3() {
    let Some(server) = require_or_skip("delete_is_idempotent_on_s3") else {
        return;
    };
    let store = store(&server, "d");
    let p = path("x/y");
    store.put(&p, Bytes::from_static(b"v")).await.unwrap();
    store.delete(&p).await.unwrap();
    store.delete(&p).await.unwrap();
    store.delete(&path("never/written")).await.unwrap();
    assert!(!store.exists(&p).await.unwrap());
    // A checkpoint directory goes with delete_prefix, and nothing else does.
    let paths = CheckpointPaths::new(JOB);
    for name in ["a", "b"] {
        let f = paths.checkpoint_file(CheckpointId(2), name).unwrap();
        store.put(&f, Bytes::from_static(b"f")).await.unwrap();
    }
    let keep = paths.metadata(CheckpointId(1));
    store.put(&keep, Bytes::from_static(b"m")).await.unwrap();
    assert_eq!(
        store
            .delete_prefix(&paths.checkpoint_dir(CheckpointId(2)))
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        store
            .delete_prefix(&paths.checkpoint_dir(CheckpointId(2)))
            .await
            .unwrap(),
        0
    );
    assert!(store.exists(&keep).await.unwrap());
}

#[tokio::test]
async fn a_ten_mib_object_round_trips_through_s3() {
    let Some(server) = require_or_skip("a_ten_mib_object_round_trips_through_s3") else {
        return;
    };
    let store = store(&server, "big");
    let bytes: Bytes = (0..(10 << 20))
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect::<Vec<u8>>()
        .into();
    let paths = CheckpointPaths::new(JOB);
    let p = paths.shared_file("big.sst").unwrap();
    let crc = store.put_with_crc(&p, bytes.clone()).await.unwrap();
    let read = store.get_verified(&p, crc).await.unwrap();
    assert_eq!(read.len(), 10 << 20);
    assert!(
        read == bytes,
        "the bytes read differ from the bytes written"
    );
    let listed = store.list(&paths.shared_dir()).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].location, p);
    assert_eq!(listed[0].size, 10 << 20);
}

#[tokio::test]
async fn a_wrong_secret_key_is_refused_by_the_server() {
    let Some(server) = require_or_skip("a_wrong_secret_key_is_refused_by_the_server") else {
        return;
    };
    let url = StorageUrl::parse(&server.url("")).unwrap();
    let wrong = S3Options {
        secret_access_key: Some("not-the-secret".to_owned()),
        ..options(&server)
    };
    let store = open_store(&url, &wrong)
        .unwrap()
        .with_retry_policy(RetryPolicy {
            max_attempts: 2,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(2),
        });
    let err = store
        .put(&path("x"), Bytes::from_static(b"v"))
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::Backend { .. }), "{err:?}");
    // Refused, not flaky: a retry cannot help, so none was made.
    assert_eq!(err.retry_hint(), RetryHint::Permanent, "{err}");
    assert!(err.to_string().contains("SignatureDoesNotMatch"), "{err}");
    assert!(!server.bucket_dir().join("x").exists());
}
