//! `weir drill` end to end: it starts its own JobManagers and TaskManagers (child processes on
//! loopback), runs `keyed-agg` once as the reference and once under faults, and checks the
//! output, the checkpoint ids and the checkpoint folder. A planted bug (a record dropped after a
//! restore) must be caught and reported with the seed, and the same seed must replay it.

mod common;

use common::procs::{start_jobmanager, start_taskmanager, weir_cmd};
use std::process::Output;

/// Runs `weir drill keyed-agg` with `extra` arguments and a state directory of its own.
fn drill(state: &std::path::Path, extra: &[&str]) -> (Output, serde_json::Value) {
    let o = weir_cmd()
        .args(["drill", "keyed-agg", "-p", "2", "--json"])
        .args(["--param", "records=60000", "--param", "rate=12000"])
        .args(["--param", "keys=500", "--param", "emit=final"])
        .args(["--interval", "1s"])
        .arg("--state-dir")
        .arg(state)
        .args(extra)
        .output()
        .expect("weir drill runs");
    let report = String::from_utf8_lossy(&o.stdout)
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no JSON report: {}", String::from_utf8_lossy(&o.stderr)));
    (o, report)
}

/// The drill exited 0 and its report says every check passed, each by name.
fn assert_passed(o: &Output, report: &serde_json::Value) {
    assert!(
        o.status.success(),
        "{report}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(report["passed"], true, "{report}");
    for check in [
        "finished",
        "output",
        "checkpoint_ids_rising",
        "no_orphaned_files",
    ] {
        assert_eq!(report["checks"][check]["passed"], true, "{check}: {report}");
    }
}

fn faults(report: &serde_json::Value) -> Vec<String> {
    report["faults"]
        .as_array()
        .expect("faults")
        .iter()
        .map(|f| f["fault"].as_str().expect("fault").to_string())
        .collect()
}

#[test]
fn a_drill_of_taskmanager_kills_and_pauses_passes_every_check() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (o, report) = drill(
        dir.path(),
        &[
            "--rounds",
            "3",
            "--seed",
            "7",
            "--faults",
            "kill-tm,stop-tm,kill-during-recovery",
        ],
    );
    assert_passed(&o, &report);
    assert_eq!(report["seed"], 7);
    assert_eq!(faults(&report).len(), 3, "{report}");
    assert!(
        !report["recoveries"]
            .as_array()
            .expect("recoveries")
            .is_empty(),
        "{report}"
    );
}

#[test]
fn a_killed_leader_jobmanager_leaves_no_orphan_and_the_output_exact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (o, report) = drill(
        dir.path(),
        &[
            "--jobmanagers",
            "2",
            "--rounds",
            "2",
            "--seed",
            "11",
            "--faults",
            "kill-jm",
        ],
    );
    assert_passed(&o, &report);
    assert_eq!(faults(&report), vec!["kill-jm", "kill-jm"], "{report}");
}

#[test]
fn a_drill_of_failing_and_slow_checkpoint_storage_passes_every_check() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (o, report) = drill(
        dir.path(),
        &[
            "--rounds",
            "2",
            "--seed",
            "2",
            "--faults",
            "storage-errors,storage-slow",
        ],
    );
    assert_passed(&o, &report);
    assert_eq!(
        faults(&report),
        vec!["storage-errors", "storage-slow"],
        "{report}"
    );
}

#[test]
fn a_savepoint_round_trip_to_another_parallelism_between_faults_keeps_the_output_exact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (o, report) = drill(
        dir.path(),
        &[
            "--rounds",
            "2",
            "--seed",
            "8",
            "--faults",
            "kill-tm",
            "--savepoint-round-trip",
        ],
    );
    assert_passed(&o, &report);
    assert_eq!(
        faults(&report),
        vec!["kill-tm", "savepoint-round-trip", "kill-tm"],
        "{report}"
    );
    let trip = report["faults"][1]["target"].as_str().expect("target");
    assert!(trip.contains("at p=2, resumed at p=1"), "{report}");
}

#[test]
fn a_planted_lost_record_is_caught_with_its_seed_and_the_seed_replays_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let args = [
        "--param",
        "drop-after-restore=true",
        "--rounds",
        "1",
        "--seed",
        "5",
        "--faults",
        "kill-tm",
    ];
    let (first, report) = drill(&dir.path().join("a"), &args);
    assert_eq!(first.status.code(), Some(1), "{report}");
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(stderr.contains("--seed 5"), "{stderr}");
    assert_eq!(report["checks"]["output"]["passed"], false, "{report}");
    assert!(
        report["checks"]["output"]["detail"]["lost"].as_u64() >= Some(1),
        "{report}"
    );
    let (again, replay) = drill(&dir.path().join("b"), &args);
    assert_eq!(again.status.code(), Some(1), "{replay}");
    assert_eq!(faults(&replay), faults(&report));
    assert_eq!(replay["checks"]["output"]["passed"], false, "{replay}");
}

#[test]
fn a_drill_refuses_an_unknown_fault_and_kill_jm_without_a_standby() {
    let dir = tempfile::tempdir().expect("tempdir");
    let o = weir_cmd()
        .args(["drill", "keyed-agg", "--faults", "kill-tm,storage-fire"])
        .arg("--state-dir")
        .arg(dir.path())
        .output()
        .expect("weir drill runs");
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("storage-fire") && err.contains("storage-slow"),
        "{err}"
    );
    let o = weir_cmd()
        .args(["drill", "keyed-agg", "--faults", "kill-jm"])
        .arg("--state-dir")
        .arg(dir.path())
        .output()
        .expect("weir drill runs");
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--jobmanagers 2"), "{err}");
}

#[test]
fn a_drill_of_a_running_cluster_kills_and_pauses_its_taskmanagers_by_pid_and_passes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_jm, rpc, _rest) = start_jobmanager(&["heartbeat.interval=100ms", "heartbeat.timeout=1s"]);
    let _tms: Vec<_> = (0..3)
        .map(|i| {
            start_taskmanager(
                &rpc,
                &format!("ext-tm-{i}"),
                &dir.path().join(format!("tm-{i}")),
            )
        })
        .collect();
    let (o, report) = drill(
        &dir.path().join("drill"),
        &[
            "--jobmanager",
            &rpc,
            "-D",
            "heartbeat.timeout=1s",
            "--rounds",
            "2",
            "--seed",
            "4",
            "--faults",
            "kill-tm,stop-tm",
        ],
    );
    assert_passed(&o, &report);
    let targets: Vec<&str> = report["faults"]
        .as_array()
        .expect("faults")
        .iter()
        .map(|f| f["target"].as_str().expect("target"))
        .collect();
    assert_eq!(targets.len(), 2, "{report}");
    assert!(
        targets
            .iter()
            .all(|t| t.starts_with("ext-tm-") && t.contains("pid ")),
        "{report}"
    );
    let o = weir_cmd()
        .args([
            "drill",
            "keyed-agg",
            "--jobmanager",
            &rpc,
            "--faults",
            "kill-jm",
        ])
        .arg("--state-dir")
        .arg(dir.path())
        .output()
        .expect("weir drill runs");
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("kill-jm") && err.contains("own cluster"),
        "{err}"
    );
}
