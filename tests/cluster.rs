//! The cluster end to end, with real processes on loopback: one `weir jobmanager`, three
//! `weir taskmanager`s with two slots each, `keyed-agg` at p=4 with 500 ms checkpoints
//! submitted by `weir run`. A TaskManager that runs tasks is SIGKILLed (or SIGSTOPped) mid-run;
//! the job must recover on the survivors and end with the state and exactly-once output of a
//! failure-free run, and its recovery record must show the moved slots and the bytes read
//! locally versus downloaded.

mod common;

use common::assert_keyed_agg_exactly_once;
use common::procs::{
    rest, start_jobmanager, start_taskmanager, wait_for, wait_job_finished, weir_cmd, Proc,
};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(150);
const SEED: u64 = 42;
const KEYS: u64 = 2000;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

struct Cluster {
    jm: Proc,
    tms: Vec<Proc>,
    rpc: String,
    rest: String,
    dir: tempfile::TempDir,
}

fn cluster(heartbeat_timeout: &str) -> Cluster {
    let dir = tempfile::tempdir().expect("tempdir");
    let (jm, rpc, rest_addr) = start_jobmanager(&[
        &format!("heartbeat.timeout={heartbeat_timeout}"),
        "heartbeat.interval=100ms",
        "slot.request.timeout=20s",
    ]);
    let tms: Vec<Proc> = (0..3)
        .map(|i| {
            start_taskmanager(
                &rpc,
                &format!("tm-{i}"),
                &dir.path().join(format!("tm-{i}")),
            )
        })
        .collect();
    wait_for(
        "3 TaskManagers to register",
        Duration::from_secs(30),
        || {
            rest(&rest_addr, "/taskmanagers")["taskmanagers"]
                .as_array()
                .is_some_and(|t| t.len() == 3)
        },
    );
    Cluster {
        jm,
        tms,
        rpc,
        rest: rest_addr,
        dir,
    }
}

/// Submits keyed-agg at p=4 (detached); returns the job id.
fn submit(c: &Cluster, records: u64, rate: u64, out: &Path) -> String {
    let checkpoints: PathBuf = c.dir.path().join("checkpoints");
    let o = weir_cmd()
        .args(["run", "keyed-agg", "-p", "4", "--detached", "--json"])
        .args(["--jobmanager", &c.rpc])
        .args(["--param", &format!("records={records}")])
        .args(["--param", &format!("keys={KEYS}")])
        .args(["--param", &format!("rate={rate}")])
        .args(["--param", "emit=updates"])
        .args(["--param", &format!("output={}", out.display())])
        .args(["-D", "execution.checkpointing.interval=500ms"])
        .args([
            "-D",
            &format!("state.checkpoints.dir=file://{}", checkpoints.display()),
        ])
        .args(["-D", "restart-strategy.type=fixed-delay"])
        .args(["-D", "restart-strategy.fixed-delay.attempts=5"])
        .args(["-D", "restart-strategy.fixed-delay.delay=50ms"])
        .output()
        .expect("weir run");
    assert!(
        o.status.success(),
        "weir run failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    v["job_id"].as_str().expect("job id").to_string()
}

fn job(c: &Cluster, id: &str) -> serde_json::Value {
    rest(&c.rest, &format!("/jobs/{id}"))
}

fn completed_checkpoints(c: &Cluster, id: &str) -> u64 {
    rest(&c.rest, &format!("/jobs/{id}/checkpoints"))["counts"]["completed"]
        .as_u64()
        .unwrap_or(0)
}

/// The TaskManager index running subtasks of the job (the first that runs a keyed one).
fn a_busy_taskmanager(c: &Cluster, id: &str) -> usize {
    let j = job(c, id);
    for v in j["vertices"].as_array().expect("vertices") {
        if !v["keyed"].as_bool().unwrap_or(false) {
            continue;
        }
        for s in v["subtasks"].as_array().expect("subtasks") {
            if let Some(tm) = s["taskmanager"].as_str() {
                return tm.trim_start_matches("tm-").parse().expect("tm-<i>");
            }
        }
    }
    panic!("no TaskManager runs a keyed subtask: {j}");
}

fn wait_finished(c: &Cluster, id: &str) -> serde_json::Value {
    wait_job_finished(&c.rest, id, DEADLINE)
}

/// The output is exactly once and equals a failure-free run's final state.
fn assert_exactly_once(out: &Path, records: u64) {
    assert_keyed_agg_exactly_once(out, SEED, KEYS, records);
}

fn recoveries(c: &Cluster, id: &str) -> Vec<serde_json::Value> {
    rest(&c.rest, &format!("/jobs/{id}/recoveries"))["recoveries"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Kills (or stops) a busy TaskManager once two checkpoints completed; returns its index and
/// the kill time.
fn fail_a_taskmanager(c: &Cluster, id: &str, sig: &str) -> (usize, u64) {
    wait_for("two completed checkpoints", DEADLINE, || {
        completed_checkpoints(c, id) >= 2
    });
    let victim = a_busy_taskmanager(c, id);
    let at = now_ms();
    c.tms[victim].signal(sig);
    (victim, at)
}

/// The recovery record of the loss of `tm-<victim>`, checked: the failed slots moved to
/// survivors, and state was both read locally and downloaded.
fn checked_recovery(c: &Cluster, id: &str, victim: usize) -> serde_json::Value {
    let rs = recoveries(c, id);
    let r = rs
        .iter()
        .find(|r| r["lost_taskmanager"] == format!("tm-{victim}"))
        .unwrap_or_else(|| panic!("no recovery for tm-{victim}: {rs:?}"))
        .clone();
    check_recovery(&r, victim);
    r
}

fn check_recovery(r: &serde_json::Value, victim: usize) {
    assert_eq!(r["status"], "completed", "{r}");
    assert_eq!(r["lost_taskmanager"], format!("tm-{victim}"), "{r}");
    let moves = r["moves"].as_array().expect("moves");
    assert!(!moves.is_empty(), "no slot moved: {r}");
    for m in moves {
        assert_eq!(m["from_taskmanager"], format!("tm-{victim}"), "{r}");
        assert_ne!(m["to_taskmanager"], format!("tm-{victim}"), "{r}");
    }
    assert!(r["restored_checkpoint"].as_u64().is_some(), "{r}");
    // Survivors read their state locally; the moved subtasks downloaded theirs.
    assert!(r["bytes_local"].as_u64().unwrap_or(0) > 0, "{r}");
    assert!(r["bytes_downloaded"].as_u64().unwrap_or(0) > 0, "{r}");
}

#[test]
fn a_killed_taskmanager_is_recovered_on_the_survivors_with_exactly_once_output() {
    let c = cluster("3s");
    let out = c.dir.path().join("out");
    let records = 150_000;
    let id = submit(&c, records, 40_000, &out);
    let (victim, killed_at) = fail_a_taskmanager(&c, &id, "KILL");
    wait_finished(&c, &id);
    assert_exactly_once(&out, records);
    let r = checked_recovery(&c, &id, victim);
    let detected = r["detected_ms"].as_u64().expect("detected_ms");
    eprintln!(
        "kill → detect {} ms; recovery {}",
        detected.saturating_sub(killed_at),
        r["durations"]
    );
    // A broken connection is noticed at once, far below the 3 s heartbeat timeout.
    assert!(detected.saturating_sub(killed_at) < 1500, "{r}");
    drop(c.jm);
}

#[test]
fn a_hung_taskmanager_is_caught_by_the_heartbeat_timeout_and_recovered() {
    let c = cluster("1s");
    let out = c.dir.path().join("out");
    let records = 120_000;
    let id = submit(&c, records, 40_000, &out);
    let (victim, stopped_at) = fail_a_taskmanager(&c, &id, "STOP");
    wait_finished(&c, &id);
    assert_exactly_once(&out, records);
    let r = checked_recovery(&c, &id, victim);
    let detected = r["detected_ms"].as_u64().expect("detected_ms");
    // Caught by the timeout: not before it, and not long after.
    let waited = detected.saturating_sub(stopped_at);
    assert!(
        (900..5000).contains(&waited),
        "detected after {waited} ms: {r}"
    );
}

#[test]
fn two_kills_in_a_row_still_end_exactly_once() {
    let c = cluster("3s");
    let out = c.dir.path().join("out");
    let records = 150_000;
    let id = submit(&c, records, 40_000, &out);
    let (first, _) = fail_a_taskmanager(&c, &id, "KILL");
    // The second kill lands during the recovery (before every task runs again).
    std::thread::sleep(Duration::from_millis(150));
    let j = job(&c, &id);
    let second = (0..3).find(|&i| i != first).expect("a survivor");
    c.tms[second].signal("KILL");
    // One TaskManager is left with 2 slots: the job (4 slots) waits for a replacement.
    let _replacement = start_taskmanager(&c.rpc, "tm-3", &c.dir.path().join("tm-3"));
    wait_finished(&c, &id);
    assert_exactly_once(&out, records);
    let rs = recoveries(&c, &id);
    assert!(
        rs.len() >= 2,
        "expected two recoveries: {rs:?} (job at the second kill: {j})"
    );
    drop(c.jm);
}

#[test]
fn a_job_needing_more_slots_than_the_cluster_has_fails_naming_both_counts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_jm, rpc, rest_addr) = start_jobmanager(&[
        "heartbeat.timeout=3s",
        "heartbeat.interval=100ms",
        "slot.request.timeout=2s",
    ]);
    let _tm = start_taskmanager(&rpc, "tm-0", &dir.path().join("tm-0"));
    wait_for(
        "the TaskManager to register",
        Duration::from_secs(30),
        || {
            rest(&rest_addr, "/taskmanagers")["taskmanagers"]
                .as_array()
                .is_some_and(|t| t.len() == 1)
        },
    );
    let o = weir_cmd()
        .args(["run", "keyed-agg", "-p", "4", "--jobmanager", &rpc])
        .args(["--param", "records=1000", "--param", "keys=10"])
        .stdin(Stdio::null())
        .output()
        .expect("weir run");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("needs 4 slots but the cluster has 2 free"),
        "{err}"
    );
    let overview = rest(&rest_addr, "/overview");
    assert!(overview.is_object(), "{overview}");
}
