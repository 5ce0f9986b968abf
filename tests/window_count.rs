//! `window-count` end to end with real processes: out-of-order event-time input through
//! tumbling, sliding and session windows on a cluster of two TaskManagers, one of them
//! SIGKILLed mid-run. The output must equal a failure-free `weir local` run's and a brute-force
//! model of the windows, every window exactly once; bad input is refused by name.

mod common;

use common::procs::{
    rest, start_jobmanager, start_taskmanager, wait_for, wait_job_finished, weir_cmd,
};
use common::read_parts;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(150);
const LINES: u64 = 40_000;
const KEYS: u64 = 20;

/// `timestamp<TAB>key` lines: timestamps rise 2 ms a line with up to 39 ms of jitter, so with
/// 50 ms of allowed out-of-orderness no record is ever late, whatever the timing.
fn write_input(path: &Path) -> Vec<(i64, String)> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let events: Vec<(i64, String)> = (0..LINES)
        .map(|i| {
            let ts = 1_700_000_000_000 + 2 * i as i64 + (next() % 40) as i64;
            (ts, format!("k{}", next() % KEYS))
        })
        .collect();
    let text: String = events.iter().map(|(t, k)| format!("{t}\t{k}\n")).collect();
    std::fs::write(path, text).unwrap();
    events
}

/// The windows a brute-force count gives: `start<TAB>end<TAB>key<TAB>count`, sorted.
fn model(events: &[(i64, String)], args: &[&str]) -> Vec<String> {
    let param = |name: &str| {
        args.iter()
            .find_map(|a| a.strip_prefix(&format!("{name}=")))
            .map(|v| v.trim_end_matches("ms").parse::<i64>().unwrap())
    };
    let mut counts: BTreeMap<(i64, i64, String), u64> = BTreeMap::new();
    if let Some(gap) = param("session-gap") {
        let mut by_key: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
        for (t, k) in events {
            by_key.entry(k).or_default().push(*t);
        }
        for (k, mut ts) in by_key {
            ts.sort();
            let (mut start, mut end, mut n) = (ts[0], ts[0] + gap, 0u64);
            for t in ts {
                if t > end {
                    counts.insert((start, end, k.to_string()), n);
                    (start, n) = (t, 0);
                }
                end = end.max(t + gap);
                n += 1;
            }
            counts.insert((start, end, k.to_string()), n);
        }
    } else {
        let size = param("window").unwrap();
        let slide = param("slide").unwrap_or(size);
        for (t, k) in events {
            let mut start = t - t.rem_euclid(slide);
            while start > t - size {
                *counts.entry((start, start + size, k.clone())).or_default() += 1;
                start -= slide;
            }
        }
    }
    let mut lines: Vec<String> = counts
        .into_iter()
        .map(|((s, e, k), n)| format!("{s}\t{e}\t{k}\t{n}"))
        .collect();
    lines.sort();
    lines
}

fn sorted_output(dir: &Path) -> Vec<String> {
    let mut lines = read_parts(dir);
    lines.sort();
    lines
}

fn params(input: &Path, out: &Path, shape: &[&str]) -> Vec<String> {
    let mut p = vec![
        format!("input={}", input.display()),
        format!("output={}", out.display()),
        "out-of-orderness=50ms".to_string(),
    ];
    if !shape.iter().any(|s| s.starts_with("watermark-interval=")) {
        p.push("watermark-interval=20ms".to_string());
    }
    p.extend(shape.iter().map(|s| s.to_string()));
    p.into_iter()
        .flat_map(|p| ["--param".to_string(), p])
        .collect()
}

/// Runs window-count failure-free in `weir local`.
fn run_local(input: &Path, out: &Path, shape: &[&str]) {
    let o = weir_cmd()
        .args(["local", "window-count", "-p", "2"])
        .args(params(input, out, shape))
        .output()
        .expect("weir local");
    assert!(
        o.status.success(),
        "weir local window-count failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Runs window-count at p=2 on a JobManager and two TaskManagers, SIGKILLs a TaskManager
/// that runs it once two checkpoints completed, and waits for the job to finish on the
/// survivor.
fn run_with_a_kill(dir: &Path, input: &Path, out: &Path, shape: &[&str]) -> serde_json::Value {
    let (_jm, rpc, rest_addr) = start_jobmanager(&[
        "heartbeat.timeout=1s",
        "heartbeat.interval=100ms",
        "slot.request.timeout=20s",
    ]);
    let mut tms: Vec<_> = (0..2)
        .map(|i| start_taskmanager(&rpc, &format!("tm-{i}"), &dir.join(format!("tm-{i}"))))
        .collect();
    wait_for("2 TaskManagers", Duration::from_secs(30), || {
        rest(&rest_addr, "/taskmanagers")["taskmanagers"]
            .as_array()
            .is_some_and(|t| t.len() == 2)
    });
    let o = weir_cmd()
        .args(["run", "window-count", "-p", "2", "--detached", "--json"])
        .args(["--jobmanager", &rpc])
        .args(params(input, out, shape))
        // 40 000 records at 6 000/s per subtask: a few seconds, several checkpoints.
        .args(["--param", "rate=6000"])
        .args(["-D", "execution.checkpointing.interval=300ms"])
        .args([
            "-D",
            &format!("state.checkpoints.dir=file://{}", dir.join("cp").display()),
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
    let id = v["job_id"].as_str().expect("job id").to_string();
    wait_for("two completed checkpoints", DEADLINE, || {
        rest(&rest_addr, &format!("/jobs/{id}/checkpoints"))["counts"]["completed"]
            .as_u64()
            .unwrap_or(0)
            >= 2
    });
    let job = rest(&rest_addr, &format!("/jobs/{id}"));
    let victim = job["vertices"]
        .as_array()
        .expect("vertices")
        .iter()
        .filter(|v| v["keyed"].as_bool().unwrap_or(false))
        .flat_map(|v| v["subtasks"].as_array().cloned().unwrap_or_default())
        .find_map(|s| s["taskmanager"].as_str().map(str::to_string))
        .expect("a TaskManager runs a window subtask");
    let i: usize = victim.trim_start_matches("tm-").parse().unwrap();
    tms[i].signal("KILL");
    let done = wait_job_finished(&rest_addr, &id, DEADLINE);
    assert!(
        done["restarts"].as_u64().unwrap_or(0) >= 1,
        "the kill landed after the job ended: {done}"
    );
    tms.clear();
    done
}

fn windows_survive_a_kill(shape: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.tsv");
    let events = write_input(&input);
    let want = model(&events, shape);

    let calm = dir.path().join("calm");
    run_local(&input, &calm, shape);
    assert_eq!(
        sorted_output(&calm),
        want,
        "a failure-free run differs from the model"
    );

    let killed = dir.path().join("killed");
    run_with_a_kill(dir.path(), &input, &killed, shape);
    let got = sorted_output(&killed);
    assert_eq!(got.len(), want.len(), "windows lost or repeated");
    assert_eq!(
        got, want,
        "the run with a kill differs from the failure-free run"
    );
    assert!(
        read_parts(&killed.join("late")).is_empty(),
        "no record is late in this input"
    );
}

#[test]
fn tumbling_windows_over_out_of_order_input_survive_a_killed_taskmanager_exactly_once() {
    windows_survive_a_kill(&["window=100ms"]);
}

#[test]
fn sliding_windows_over_out_of_order_input_survive_a_killed_taskmanager_exactly_once() {
    windows_survive_a_kill(&["window=100ms", "slide=25ms"]);
}

#[test]
fn session_windows_over_out_of_order_input_survive_a_killed_taskmanager_exactly_once() {
    windows_survive_a_kill(&["session-gap=30ms"]);
}

#[test]
fn late_records_go_to_the_late_folder_and_bad_lines_are_refused_by_their_content() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.tsv");
    std::fs::write(&input, "1000\ta\n1500\ta\n3000\tb\n200\ta\n3100\tb\n").unwrap();
    let out = dir.path().join("out");
    // One record per batch, a watermark after each: the 200 comes after the watermark 2949.
    let o = weir_cmd()
        .args(["local", "window-count", "-p", "1"])
        .args(params(&input, &out, &["window=1s", "watermark-interval=0"]))
        .args(["-D", "taskmanager.network.batch-size=1"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        sorted_output(&out),
        vec!["1000\t2000\ta\t2", "3000\t4000\tb\t2"]
    );
    assert_eq!(read_parts(&out.join("late")), vec!["200\ta"]);

    std::fs::write(&input, "1000\ta\nnot a line\n").unwrap();
    let o = weir_cmd()
        .args(["local", "window-count", "-p", "1"])
        .args(params(&input, &dir.path().join("bad"), &["window=1s"]))
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("'not a line'") && err.contains("parse"),
        "the error names the line and the operator: {err}"
    );
    let o = weir_cmd()
        .args(["local", "window-count"])
        .args(params(&input, &dir.path().join("bad2"), &["window=0s"]))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("window"), "{err}");
}
