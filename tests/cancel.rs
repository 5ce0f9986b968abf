//! Ctrl-C on `weir local`: the job stops promptly, exits 130, publishes no partial output and
//! removes its RocksDB instances.

mod common;

use common::{read_parts, tree};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn sigint_cancels_a_running_job_without_visible_partial_output() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let state = dir.path().join("state");
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args([
            "local",
            "--taskmanagers=0",
            "keyed-agg",
            "-p",
            "2",
            "--param",
            "rate=2000",
            "--param",
            "records=unbounded",
            "--param",
            "emit=updates",
        ])
        .arg("--param")
        .arg(format!("output={}", out.display()))
        .arg("--state-dir")
        .arg(&state)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the job runs (its RocksDB instances exist), then interrupt it.
    let start = Instant::now();
    while tree(&state)
        .iter()
        .filter(|p| p.contains("subtask-"))
        .count()
        < 2
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "job did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    let status = Command::new("kill")
        .arg("-INT")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let interrupted = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if interrupted.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("weir did not stop within 10 s of SIGINT");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("job 'keyed-agg' cancelled"), "{stderr}");
    assert!(
        read_parts(&out).is_empty(),
        "no published part file after a cancel"
    );
    assert!(
        !tree(&state).iter().any(|p| p.contains("subtask-")),
        "RocksDB instances are removed: {:?}",
        tree(&state)
    );
}
