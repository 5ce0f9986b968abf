//! Savepoints end to end, with real processes on loopback: one `weir jobmanager`, two
//! `weir taskmanager`s with two slots each. `keyed-agg` is stopped with a savepoint half-way
//! (`weir stop`), the savepoint's folder is moved, and a new job started from it (`weir run -s`)
//! must end with the exactly-once output of an uninterrupted run. `weir savepoint inspect`
//! and `dispose` read the folder alone; bad restore paths are refused naming the problem.

mod common;

use common::procs::{rest, start_jobmanager, start_taskmanager_with, wait_for, weir_cmd, Proc};
use common::{assert_keyed_agg_exactly_once, exactly_once_updates, read_parts};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(150);
const SEED: u64 = 42;
const KEYS: u64 = 2000;
const RECORDS: u64 = 160_000;

struct Cluster {
    _jm: Proc,
    tms: Vec<Proc>,
    rpc: String,
    rest: String,
    dir: tempfile::TempDir,
}

fn cluster() -> Cluster {
    cluster_with(&[], &[])
}

/// A cluster whose JobManager also gets `defines` and whose TaskManagers get `env` (each
/// process's own credentials: they never travel with a job).
fn cluster_with(defines: &[&str], env: &[(&str, &str)]) -> Cluster {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut all = vec![
        "heartbeat.timeout=3s",
        "heartbeat.interval=100ms",
        "slot.request.timeout=20s",
    ];
    all.extend_from_slice(defines);
    let (jm, rpc, rest_addr) = start_jobmanager(&all);
    let tms: Vec<Proc> = (0..2)
        .map(|i| {
            start_taskmanager_with(
                &rpc,
                &format!("tm-{i}"),
                &dir.path().join(format!("tm-{i}")),
                env,
            )
        })
        .collect();
    wait_for(
        "2 TaskManagers to register",
        Duration::from_secs(30),
        || {
            rest(&rest_addr, "/taskmanagers")["taskmanagers"]
                .as_array()
                .is_some_and(|t| t.len() == 2)
        },
    );
    Cluster {
        _jm: jm,
        tms,
        rpc,
        rest: rest_addr,
        dir,
    }
}

/// `weir run keyed-agg` (detached) with checkpoints every 300 ms; `extra` adds flags.
fn run(c: &Cluster, p: u32, rate: u64, out: &Path, extra: &[&str]) -> Output {
    let checkpoints: PathBuf = c.dir.path().join("checkpoints");
    weir_cmd()
        .args([
            "run",
            "keyed-agg",
            "-p",
            &p.to_string(),
            "--detached",
            "--json",
        ])
        .args(["--jobmanager", &c.rpc])
        .args(["--param", &format!("records={RECORDS}")])
        .args(["--param", &format!("keys={KEYS}")])
        .args(["--param", &format!("rate={rate}")])
        .args(["--param", "emit=updates"])
        .args(["--param", &format!("output={}", out.display())])
        .args(["-D", "execution.checkpointing.interval=300ms"])
        .args([
            "-D",
            &format!("state.checkpoints.dir=file://{}", checkpoints.display()),
        ])
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .expect("weir run")
}

fn submitted(o: &Output) -> String {
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

fn wait_state(c: &Cluster, id: &str, state: &str) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    wait_for(&format!("job {id} to end"), DEADLINE, || {
        last = job(c, id);
        matches!(
            last["state"].as_str(),
            Some("FINISHED" | "FAILED" | "CANCELED")
        )
    });
    assert_eq!(last["state"], state, "job {id}: {last}");
    last
}

fn wait_checkpoints(c: &Cluster, id: &str, n: u64) {
    wait_for("completed checkpoints", DEADLINE, || {
        rest(&c.rest, &format!("/jobs/{id}/checkpoints"))["counts"]["completed"]
            .as_u64()
            .unwrap_or(0)
            >= n
    });
}

/// `weir stop` with a savepoint under `target`; returns the savepoint's folder.
fn stop(c: &Cluster, id: &str, target: &Path, format: &str) -> String {
    let o = weir_cmd()
        .args([
            "stop",
            id,
            "--type",
            format,
            "--json",
            "--jobmanager",
            &c.rpc,
        ])
        .arg("--savepoint-path")
        .arg(target)
        .stdin(Stdio::null())
        .output()
        .expect("weir stop");
    assert!(
        o.status.success(),
        "weir stop failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["status"], "COMPLETED", "{v}");
    v["location"].as_str().expect("location").to_string()
}

fn local_path(url: &str) -> PathBuf {
    PathBuf::from(url.strip_prefix("file://").unwrap_or(url))
}

/// The command failed, and its stderr names `what`.
fn assert_refused(o: &Output, what: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "not refused: {err}");
    assert!(
        err.contains(what),
        "the refusal does not name '{what}': {err}"
    );
}

fn assert_exactly_once(out: &Path) {
    assert_keyed_agg_exactly_once(out, SEED, KEYS, RECORDS);
}

/// Stops a p=2 RocksDB job half-way with a `format` savepoint, moves the folder, and resumes
/// from the moved folder at parallelism `p` with `resume_flags`; the output must be exactly
/// once.
fn stop_move_resume(format: &str, p: u32, resume_flags: &[&str]) -> (Cluster, PathBuf) {
    let c = cluster();
    let out = c.dir.path().join("out");
    let id = submitted(&run(&c, 2, 30_000, &out, &[]));
    wait_checkpoints(&c, &id, 2);
    let location = stop(&c, &id, &c.dir.path().join("savepoints"), format);
    let stopped = wait_state(&c, &id, "FINISHED");
    let partial = read_parts(&out).len() as u64;
    assert!(
        partial > 0 && partial < RECORDS,
        "stopped half-way: {partial} of {RECORDS} lines ({stopped})"
    );
    // Relocatable: every path in `_metadata` is relative to the folder.
    let moved = c.dir.path().join("moved");
    std::fs::create_dir_all(&moved).unwrap();
    let moved = moved.join("sp");
    std::fs::rename(local_path(&location), &moved).expect("move the savepoint folder");
    let mut flags = vec!["-s", moved.to_str().unwrap()];
    flags.extend_from_slice(resume_flags);
    let resumed = submitted(&run(&c, p, 200_000, &out, &flags));
    let done = wait_state(&c, &resumed, "FINISHED");
    assert!(done["restored_from"].as_u64().is_some(), "{done}");
    assert_exactly_once(&out);
    (c, moved)
}

#[test]
fn a_job_stopped_at_p2_with_a_native_savepoint_resumes_at_p3_from_the_moved_folder_exactly_once() {
    let (c, moved) = stop_move_resume("native", 3, &[]);
    // inspect reads the folder alone.
    let o = weir_cmd()
        .args(["savepoint", "inspect", "--json"])
        .arg(&moved)
        .output()
        .expect("inspect");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["kind"], "savepoint (native)", "{v}");
    assert_eq!(v["self_contained"], true, "{v}");
    let agg = &v["operators"]["aggregate"];
    assert_eq!(agg["parallelism"], 2, "{v}");
    assert_eq!(agg["subtasks"][0]["backend"], "rocksdb", "{v}");
    assert!(agg["bytes"].as_u64().unwrap() > 0, "{v}");
    // dump decodes the state: this binary's catalog knows keyed-agg.
    let dump = |what: &str| -> Vec<serde_json::Value> {
        let o = weir_cmd()
            .args([
                "savepoint",
                "dump",
                "--uid",
                "aggregate",
                "--state",
                "count-sum",
            ])
            .arg(&moved)
            .output()
            .expect("dump");
        assert!(
            o.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    };
    let lines = dump("known job");
    assert!(
        !lines.is_empty() && lines.len() <= KEYS as usize,
        "{}",
        lines.len()
    );
    assert!(lines[0]["key"].is_u64(), "{}", lines[0]);
    assert!(lines[0]["value"][0].as_u64().unwrap() >= 1, "{}", lines[0]);
    // A job this binary does not know: the same entries, as hex.
    let meta = moved.join("_metadata");
    let mut m = weir_checkpoint::CheckpointMetadata::decode(&std::fs::read(&meta).unwrap())
        .expect("metadata");
    assert_eq!(m.job_name.as_deref(), Some("keyed-agg"));
    m.job_name = Some("not-in-this-binary".into());
    std::fs::write(&meta, m.encode().unwrap()).unwrap();
    let raw = dump("unknown job");
    assert_eq!(raw.len(), lines.len());
    let o = weir_cmd()
        .args(["savepoint", "inspect", "--json"])
        .arg(&moved)
        .output()
        .expect("inspect");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["operators"]["aggregate"]["parallelism"], 2, "{v}");
    assert!(raw[0]["key"]["hex"].is_string(), "{}", raw[0]);
    assert!(raw[0]["value"]["hex"].is_string(), "{}", raw[0]);
    // dispose removes it, _metadata first.
    let o = weir_cmd()
        .args(["savepoint", "dispose"])
        .arg(&moved)
        .output()
        .expect("dispose");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!moved.join("_metadata").exists());
    assert!(
        std::fs::read_dir(&moved).map_or(true, |mut d| d.next().is_none()),
        "files left after dispose"
    );
    drop(c);
}

#[test]
fn a_canonical_savepoint_of_rocksdb_state_at_p2_resumes_at_p1_on_the_heap_backend_exactly_once() {
    let (c, moved) = stop_move_resume("canonical", 1, &["-D", "state.backend=heap"]);
    let o = weir_cmd()
        .args(["savepoint", "inspect", "--json"])
        .arg(&moved)
        .output()
        .expect("inspect");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["kind"], "savepoint (canonical)", "{v}");
    assert_eq!(
        v["operators"]["aggregate"]["subtasks"][1]["backend"], "canonical",
        "{v}"
    );
    drop(c);
}

#[test]
fn bad_restore_paths_and_savepoint_requests_are_refused_naming_the_problem() {
    let c = cluster();
    let out = c.dir.path().join("out");
    // A folder without _metadata.
    let empty = c.dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let o = run(&c, 2, 1000, &out, &["-s", empty.to_str().unwrap()]);
    assert_refused(&o, "_metadata does not exist");
    // A damaged _metadata.
    std::fs::write(empty.join("_metadata"), b"WEIR garbage").unwrap();
    let o = run(&c, 2, 1000, &out, &["-s", empty.to_str().unwrap()]);
    assert_refused(&o, "_metadata: metadata is truncated");
    // A savepoint of a job whose operators this job lacks.
    let id = submitted(&run(&c, 2, 20_000, &out, &[]));
    wait_checkpoints(&c, &id, 1);
    // No target and no savepoint-dir configured.
    let o = weir_cmd()
        .args(["savepoint", &id, "--jobmanager", &c.rpc])
        .output()
        .expect("weir savepoint");
    assert_refused(&o, "execution.checkpointing.savepoint-dir");
    let target = c.dir.path().join("sp");
    let o = weir_cmd()
        .args(["savepoint", &id, "--jobmanager", &c.rpc, "--type", "native"])
        .arg(&target)
        .output()
        .expect("weir savepoint");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let location = String::from_utf8_lossy(&o.stdout).trim().to_string();
    // The job goes on after a savepoint that does not stop it.
    assert_eq!(job(&c, &id)["state"], "RUNNING");
    let words = c.dir.path().join("words.txt");
    std::fs::write(&words, "a b c\n").unwrap();
    let o = weir_cmd()
        .args(["run", "word-count", "--detached", "--jobmanager", &c.rpc])
        .args(["--param", &format!("input={}", words.display())])
        .args(["-D", "execution.checkpointing.interval=300ms"])
        .args(["-s", &location])
        .output()
        .expect("weir run");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("operator 'aggregate'") || err.contains("operator 'generator'"),
        "{err}"
    );
    assert!(err.contains("--allow-non-restored-state"), "{err}");
    // A native RocksDB savepoint on the heap backend: refused at submission, naming both.
    let elsewhere = c.dir.path().join("out-heap");
    let o = run(
        &c,
        2,
        1000,
        &elsewhere,
        &["-s", &location, "-D", "state.backend=heap"],
    );
    assert_refused(
        &o,
        "operator 'aggregate' has native rocksdb state but the job runs the heap",
    );
    // The savepoint is intact after every refusal.
    assert!(local_path(&location).join("_metadata").exists());
    wait_state(&c, &id, "FINISHED");
    assert_exactly_once(&out);
}

/// `-D` flags that reach `server`.
fn s3_flags(server: &weir_testkit::S3Server) -> Vec<String> {
    [
        format!("s3.endpoint={}", server.endpoint()),
        format!("s3.access-key={}", server.access_key()),
        format!("s3.secret-key={}", server.secret_key()),
        "s3.path.style.access=true".into(),
    ]
    .into_iter()
    .flat_map(|d| ["-D".to_string(), d])
    .collect()
}

#[test]
fn a_job_resumed_from_a_savepoint_on_s3_outlives_the_disposed_savepoint_and_a_killed_taskmanager() {
    let Some(server) = weir_testkit::require_or_skip(
        "a_job_resumed_from_a_savepoint_on_s3_outlives_the_disposed_savepoint_and_a_killed_taskmanager",
    ) else {
        return;
    };
    // Every process reads its own S3 credentials; the client's never travel with the job.
    let (access, secret) = (
        format!("s3.access-key={}", server.access_key()),
        format!("s3.secret-key={}", server.secret_key()),
    );
    let c = cluster_with(
        &[&access, &secret],
        &[
            ("WEIR_S3_ACCESS_KEY", server.access_key()),
            ("WEIR_S3_SECRET_KEY", server.secret_key()),
        ],
    );
    let out = c.dir.path().join("out");
    let s3 = s3_flags(&server);
    let s3: Vec<&str> = s3.iter().map(String::as_str).collect();
    let id = submitted(&run(&c, 2, 30_000, &out, &s3));
    wait_checkpoints(&c, &id, 2);
    let o = weir_cmd()
        .args([
            "stop",
            &id,
            "--type",
            "native",
            "--json",
            "--jobmanager",
            &c.rpc,
        ])
        .args(["--savepoint-path", &server.url("savepoints")])
        .output()
        .expect("weir stop");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let location = v["location"].as_str().expect("location").to_string();
    assert!(location.starts_with("s3://"), "{location}");
    wait_state(&c, &id, "FINISHED");
    // Resumed (no-claim, the default) from S3, slowly enough to checkpoint and fail first.
    let mut flags = vec!["-s", location.as_str(), "--claim-mode", "no-claim"];
    flags.extend(&s3);
    let resumed = submitted(&run(&c, 2, 25_000, &out, &flags));
    wait_checkpoints(&c, &resumed, 1);
    // The savepoint is not the job's: once its first checkpoint completed it may go.
    let o = weir_cmd()
        .args(["savepoint", "dispose", &location])
        .args(&s3)
        .output()
        .expect("dispose");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let gone = weir_cmd()
        .args(["savepoint", "inspect", &location])
        .args(&s3)
        .output()
        .expect("inspect");
    assert!(
        String::from_utf8_lossy(&gone.stderr).contains("does not exist"),
        "{}",
        String::from_utf8_lossy(&gone.stderr)
    );
    wait_checkpoints(&c, &resumed, 2);
    // A TaskManager dies: the job recovers from its own checkpoint.
    let j = job(&c, &resumed);
    let busy = j["vertices"][1]["subtasks"][0]["taskmanager"]
        .as_str()
        .expect("a keyed subtask's TaskManager")
        .trim_start_matches("tm-")
        .parse::<usize>()
        .expect("tm-<i>");
    c.tms[busy].signal("KILL");
    let done = wait_state(&c, &resumed, "FINISHED");
    assert!(done["restarts"].as_u64().unwrap_or(0) >= 1, "{done}");
    assert_exactly_once(&out);
}

#[test]
fn a_claimed_savepoint_cannot_be_disposed_while_its_job_runs_and_goes_when_subsumed() {
    let c = cluster();
    let out = c.dir.path().join("out");
    let id = submitted(&run(&c, 2, 30_000, &out, &[]));
    wait_checkpoints(&c, &id, 2);
    let location = stop(&c, &id, &c.dir.path().join("savepoints"), "canonical");
    wait_state(&c, &id, "FINISHED");
    let folder = local_path(&location);
    let resumed = submitted(&run(
        &c,
        2,
        20_000,
        &out,
        &[
            "-s",
            &location,
            "--claim-mode",
            "claim",
            "-D",
            "execution.checkpointing.interval=5s",
        ],
    ));
    assert!(folder.join("_claim").exists(), "no claim marker");
    let o = weir_cmd()
        .args(["savepoint", "dispose", &location])
        .output()
        .expect("dispose");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains(&format!("claimed by running job {resumed}")),
        "{err}"
    );
    assert!(
        folder.join("_metadata").exists(),
        "a refused dispose deleted it"
    );
    wait_state(&c, &resumed, "FINISHED");
    // The job's own (final) checkpoint subsumed the claimed savepoint: it is gone.
    assert!(
        !folder.join("_metadata").exists(),
        "the claimed savepoint stayed"
    );
    assert!(!folder.join("_claim").exists(), "the claim marker stayed");
    assert_exactly_once(&out);
}

#[test]
fn a_drained_stop_ends_the_sources_input_and_its_final_snapshot_is_the_savepoint() {
    let c = cluster();
    let out = c.dir.path().join("out");
    let id = submitted(&run(&c, 2, 30_000, &out, &[]));
    wait_checkpoints(&c, &id, 2);
    let o = weir_cmd()
        .args(["stop", &id, "--drain", "--type", "canonical", "--json"])
        .args(["--jobmanager", &c.rpc, "--savepoint-path"])
        .arg(c.dir.path().join("drained"))
        .output()
        .expect("weir stop --drain");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["status"], "COMPLETED", "{v}");
    let location = v["location"].as_str().expect("location").to_string();
    wait_state(&c, &id, "FINISHED");
    let lines = read_parts(&out);
    assert!(
        !lines.is_empty() && (lines.len() as u64) < RECORDS,
        "drained half-way: {} lines",
        lines.len()
    );
    exactly_once_updates(&lines);
    // Every operator finished before the savepoint: its snapshot says so.
    let m = weir_checkpoint::CheckpointMetadata::decode(
        &std::fs::read(local_path(&location).join("_metadata")).unwrap(),
    )
    .expect("metadata");
    assert!(m.kind.is_savepoint());
    assert!(
        m.operators
            .values()
            .flat_map(|op| op.subtasks.values())
            .all(|s| s.finished),
        "not every subtask finished"
    );
    // A new run from it reads the rest: together exactly once.
    let resumed = submitted(&run(&c, 2, 200_000, &out, &["-s", &location]));
    wait_state(&c, &resumed, "FINISHED");
    assert_exactly_once(&out);
}

#[test]
fn a_savepoint_of_another_max_parallelism_format_version_or_state_kind_is_refused_naming_it() {
    let c = cluster();
    let out = c.dir.path().join("out");
    let id = submitted(&run(&c, 2, 30_000, &out, &[]));
    wait_checkpoints(&c, &id, 2);
    let location = stop(&c, &id, &c.dir.path().join("savepoints"), "native");
    wait_state(&c, &id, "FINISHED");
    let folder = local_path(&location);
    let elsewhere = c.dir.path().join("out-2");
    // Another max parallelism: key groups cannot be remapped.
    let o = run(
        &c,
        2,
        1000,
        &elsewhere,
        &["-s", &location, "-D", "pipeline.max-parallelism=256"],
    );
    assert_refused(&o, "its max parallelism is 128, the job's is 256");
    // A _metadata of a format version this build cannot read.
    let meta = folder.join("_metadata");
    let original = std::fs::read(&meta).unwrap();
    let mut newer = original.clone();
    newer[5] = 9;
    let n = newer.len() - 4;
    let crc = crc32(&newer[..n]);
    newer[n..].copy_from_slice(&crc.to_be_bytes());
    std::fs::write(&meta, &newer).unwrap();
    let o = run(&c, 2, 1000, &elsewhere, &["-s", &location]);
    assert_refused(&o, "unsupported metadata format version 9");
    // A state whose kind changed: the job fails at once, naming the state, no restart.
    let mut m = weir_checkpoint::CheckpointMetadata::decode(&original).expect("metadata");
    let (_, aggregate) = m
        .operators
        .iter_mut()
        .find(|(uid, _)| uid.as_str() == "aggregate")
        .expect("the aggregate's state");
    for st in aggregate.subtasks.values_mut() {
        let mut keyed: serde_json::Value =
            serde_json::from_slice(st.inline.as_ref().unwrap()).unwrap();
        keyed["descriptors"][0]["kind"] = "Map".into();
        st.inline = Some(serde_json::to_vec(&keyed).unwrap());
    }
    std::fs::write(&meta, m.encode().unwrap()).unwrap();
    let job_id = submitted(&run(&c, 2, 1000, &elsewhere, &["-s", &location]));
    let failed = wait_state(&c, &job_id, "FAILED");
    let cause = failed["failure_cause"].as_str().unwrap_or_default();
    assert!(
        cause.contains("cannot run on the restored state"),
        "{cause}"
    );
    assert!(cause.contains("'count-sum'"), "{cause}");
    assert_eq!(failed["restarts"], 0, "{failed}");
    // The sink never opened (no output folder made, nothing published), and the savepoint's
    // files are intact.
    assert!(!elsewhere.exists() || read_parts(&elsewhere).is_empty());
    assert!(folder.join("_metadata").exists());
}

/// CRC32 (IEEE), as `_metadata`'s trailer has it.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}
