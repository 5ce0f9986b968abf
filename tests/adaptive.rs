//! The adaptive scheduler end to end, with real processes on loopback: `weir jobmanager` with
//! `jobmanager.scheduler: adaptive`, two `weir taskmanager`s with two slots each, `keyed-agg`
//! at p=4. One TaskManager is killed with no replacement: the job goes on at p=2; a new
//! TaskManager registers: it returns to p=4. Its output is exactly once, and the recovery
//! records name both changes.

mod common;

use common::procs::{rest, start_jobmanager, start_taskmanager, wait_for, weir_cmd, Proc};
use common::{exactly_once_updates, expected_keyed_agg, read_parts};
use std::process::Stdio;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(150);
const KEYS: u64 = 2000;
const RECORDS: u64 = 240_000;

fn parallelism(rest_addr: &str, id: &str) -> Option<u64> {
    let j = rest(rest_addr, &format!("/jobs/{id}"));
    if j["state"] != "RUNNING" {
        return None;
    }
    let running = j["vertices"]
        .as_array()?
        .iter()
        .flat_map(|v| v["subtasks"].as_array().cloned().unwrap_or_default())
        .all(|s| s["state"] == "RUNNING");
    running
        .then(|| j["vertices"][1]["parallelism"].as_u64())
        .flatten()
}

#[test]
fn a_job_losing_a_taskmanager_goes_on_at_the_parallelism_left_and_scales_back_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_jm, rpc, rest_addr) = start_jobmanager(&[
        "heartbeat.timeout=3s",
        "heartbeat.interval=100ms",
        "slot.request.timeout=2s",
        "jobmanager.scheduler=adaptive",
        "jobmanager.adaptive-scheduler.resource-stabilization-timeout=1s",
    ]);
    let tms: Vec<Proc> = (0..2)
        .map(|i| {
            start_taskmanager(
                &rpc,
                &format!("tm-{i}"),
                &dir.path().join(format!("tm-{i}")),
            )
        })
        .collect();
    wait_for("2 TaskManagers", Duration::from_secs(30), || {
        rest(&rest_addr, "/taskmanagers")["taskmanagers"]
            .as_array()
            .is_some_and(|t| t.len() == 2)
    });
    let out = dir.path().join("out");
    let o = weir_cmd()
        .args(["run", "keyed-agg", "-p", "4", "--detached", "--json"])
        .args(["--jobmanager", &rpc])
        .args(["--param", &format!("records={RECORDS}")])
        .args(["--param", &format!("keys={KEYS}")])
        .args(["--param", "rate=20000", "--param", "emit=updates"])
        .args(["--param", &format!("output={}", out.display())])
        .args(["-D", "execution.checkpointing.interval=300ms"])
        .args([
            "-D",
            &format!(
                "state.checkpoints.dir=file://{}",
                dir.path().join("checkpoints").display()
            ),
        ])
        .stdin(Stdio::null())
        .output()
        .expect("weir run");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let id = v["job_id"].as_str().expect("job id").to_string();
    wait_for("p=4 and two checkpoints", DEADLINE, || {
        parallelism(&rest_addr, &id) == Some(4)
            && rest(&rest_addr, &format!("/jobs/{id}/checkpoints"))["counts"]["completed"]
                .as_u64()
                .unwrap_or(0)
                >= 2
    });
    tms[1].signal("KILL");
    wait_for("the job to run at p=2", DEADLINE, || {
        parallelism(&rest_addr, &id) == Some(2)
    });
    // Slots return: back to p=4 once they stayed for the stabilization timeout.
    let _replacement = start_taskmanager(&rpc, "tm-2", &dir.path().join("tm-2"));
    wait_for("the job to run at p=4 again", DEADLINE, || {
        parallelism(&rest_addr, &id) == Some(4)
    });
    let mut last = serde_json::Value::Null;
    wait_for("the job to finish", DEADLINE, || {
        last = rest(&rest_addr, &format!("/jobs/{id}"));
        matches!(
            last["state"].as_str(),
            Some("FINISHED" | "FAILED" | "CANCELED")
        )
    });
    assert_eq!(last["state"], "FINISHED", "{last}");
    let lines = read_parts(&out);
    assert_eq!(
        exactly_once_updates(&lines),
        expected_keyed_agg(42, KEYS, RECORDS)
    );
    let recoveries = rest(&rest_addr, &format!("/jobs/{id}/recoveries"))["recoveries"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let rescales: Vec<(u64, u64)> = recoveries
        .iter()
        .filter_map(|r| Some((r["rescale"]["from"].as_u64()?, r["rescale"]["to"].as_u64()?)))
        .collect();
    assert_eq!(rescales, vec![(4, 2), (2, 4)], "{recoveries:?}");
    let down = recoveries
        .iter()
        .find(|r| r["rescale"]["to"] == 2)
        .expect("the scale-down");
    assert!(
        down["rescale"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("2 free slot")),
        "{down}"
    );
    drop(tms);
}
