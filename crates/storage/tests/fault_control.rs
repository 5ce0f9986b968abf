//! The process-wide storage fault switch (`weir_storage::control`): one test per binary,
//! because a process installs it once.

use std::time::{Duration, Instant};
use weir_storage::control::{install, write_control_file, POLL_INTERVAL};
use weir_storage::{
    open_store, Bytes, ObjectPath, RetryPolicy, S3Options, StorageFaults, StorageUrl,
};

#[tokio::test]
async fn stores_inside_the_scope_fail_and_wait_while_the_control_file_says_so_and_others_never() {
    let dir = tempfile::tempdir().unwrap();
    let control = dir.path().join("faults");
    let scope = StorageUrl::parse(&format!(
        "file://{}",
        dir.path().join("checkpoints").display()
    ))
    .unwrap();
    install(control.clone(), &scope).unwrap();
    assert!(
        install(control.clone(), &scope).is_err(),
        "a second install is refused"
    );
    let inside = open_store(
        &StorageUrl::parse(&format!("{scope}/job")).unwrap(),
        &S3Options::default(),
    )
    .unwrap()
    .with_retry_policy(RetryPolicy::no_retries());
    let outside = open_store(
        &StorageUrl::parse(&format!("file://{}", dir.path().join("ha").display())).unwrap(),
        &S3Options::default(),
    )
    .unwrap()
    .with_retry_policy(RetryPolicy::no_retries());
    let path = |n: u32| ObjectPath::from(format!("f-{n}"));
    let bytes = Bytes::from_static(b"state");

    inside.put(&path(0), bytes.clone()).await.unwrap();

    write_control_file(
        &control,
        &StorageFaults {
            error_rate: 1.0,
            delay: Duration::ZERO,
        },
    )
    .unwrap();
    tokio::time::sleep(POLL_INTERVAL * 2).await;
    let err = inside.put(&path(1), bytes.clone()).await.unwrap_err();
    assert!(err.to_string().contains("injected put failure"), "{err}");
    let err = inside.get(&path(0)).await.unwrap_err();
    assert!(err.to_string().contains("injected get failure"), "{err}");
    outside.put(&path(1), bytes.clone()).await.unwrap();

    write_control_file(
        &control,
        &StorageFaults {
            error_rate: 0.0,
            delay: Duration::from_millis(300),
        },
    )
    .unwrap();
    tokio::time::sleep(POLL_INTERVAL * 2).await;
    let started = Instant::now();
    inside.put(&path(2), bytes.clone()).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));

    write_control_file(&control, &StorageFaults::default()).unwrap();
    tokio::time::sleep(POLL_INTERVAL * 2).await;
    assert_eq!(inside.get(&path(2)).await.unwrap(), bytes);
    // A torn or hostile control file is no fault at all.
    std::fs::write(&control, b"errors \xff\xfe\n").unwrap();
    tokio::time::sleep(POLL_INTERVAL * 2).await;
    inside.put(&path(3), bytes).await.unwrap();
}
