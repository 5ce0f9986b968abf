//! Checkpoints end to end, through the real `weir` binary: a failure mid-run (`fail-after`)
//! restores the latest completed checkpoint and the job ends with the same state and
//! exactly-once output as a run without failures — on RocksDB and heap, on `file://` and on an
//! S3-compatible server; no orphan files; incremental uploads; and a flipped byte in any
//! checkpoint file is detected on restore, named, and the previous checkpoint is used.

mod common;

use common::{exactly_once_updates, expected_keyed_agg, read_parts, stderr, weir, write_text};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use weir_checkpoint::CheckpointMetadata;

const DEADLINE: Duration = Duration::from_secs(120);

/// Checkpoint and restart settings every test uses: a 200 ms interval, quick fixed-delay
/// restarts.
fn checkpointing(interval: &str) -> Vec<String> {
    [
        format!("execution.checkpointing.interval={interval}"),
        "restart-strategy.type=fixed-delay".into(),
        "restart-strategy.fixed-delay.attempts=3".into(),
        "restart-strategy.fixed-delay.delay=50ms".into(),
    ]
    .into_iter()
    .flat_map(|d| ["-D".to_string(), d])
    .collect()
}

fn run_ok(args: &[String]) -> String {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = weir(&refs, DEADLINE);
    let err = stderr(&out);
    assert!(out.status.success(), "weir {args:?} failed:\n{err}");
    err
}

fn keyed_agg_args(records: u64, rate: u64, output: &Path, state: &Path) -> Vec<String> {
    vec![
        "local".into(),
        "--taskmanagers=0".into(),
        "keyed-agg".into(),
        "-p".into(),
        "2".into(),
        "--param".into(),
        format!("records={records}"),
        "--param".into(),
        "keys=2000".into(),
        "--param".into(),
        format!("rate={rate}"),
        "--param".into(),
        "emit=updates".into(),
        "--param".into(),
        format!("output={}", output.display()),
        "--state-dir".into(),
        state.display().to_string(),
    ]
}

/// `weir local word-count -p 2` over `input` into `output`, with `backend` state in `state`.
fn word_count_args(input: &Path, output: &Path, backend: &str, state: &Path) -> Vec<String> {
    vec![
        "local".into(),
        "--taskmanagers=0".into(),
        "word-count".into(),
        "-p".into(),
        "2".into(),
        "--param".into(),
        format!("input={}", input.display()),
        "--param".into(),
        format!("output={}", output.display()),
        "--state-backend".into(),
        backend.into(),
        "--state-dir".into(),
        state.display().to_string(),
    ]
}

fn assert_restored_from_a_checkpoint(err: &str) {
    assert!(
        err.contains("1 restart(s), last restored from chk-"),
        "the job did not restart from a checkpoint:\n{err}"
    );
}

#[test]
fn keyed_agg_after_a_mid_run_failure_has_the_failure_free_state_and_exactly_once_output() {
    for backend in ["rocksdb", "heap"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (out, state) = (dir.path().join("out"), dir.path().join("state"));
        let mut args = keyed_agg_args(120_000, 60_000, &out, &state);
        args.extend([
            "--state-backend".into(),
            backend.into(),
            "--param".into(),
            "fail-after=25000".into(),
        ]);
        args.extend(checkpointing("200ms"));
        let err = run_ok(&args);
        assert_restored_from_a_checkpoint(&err);
        let last = exactly_once_updates(&read_parts(&out));
        assert_eq!(
            last,
            expected_keyed_agg(42, 2000, 120_000),
            "backend {backend}"
        );
    }
}

#[test]
fn word_count_after_a_mid_run_failure_has_the_failure_free_output_exactly_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.txt");
    write_text(&input, 300_000, 3_000, 7);
    let reference = dir.path().join("reference");
    run_ok(&word_count_args(
        &input,
        &reference,
        "rocksdb",
        &dir.path().join("state-ref"),
    ));
    let expected = exactly_once_updates(&read_parts(&reference));
    for backend in ["rocksdb", "heap"] {
        let out = dir.path().join(format!("out-{backend}"));
        let state = dir.path().join(format!("state-{backend}"));
        let mut args = word_count_args(&input, &out, backend, &state);
        args.extend(["--param".into(), "fail-after=600000".into()]);
        // A small batch size and channel keep the job slow enough to checkpoint first.
        args.extend(checkpointing("100ms"));
        args.extend(["-D".into(), "taskmanager.network.batch-size=64".into()]);
        let err = run_ok(&args);
        assert_restored_from_a_checkpoint(&err);
        let got = exactly_once_updates(&read_parts(&out));
        assert_eq!(got, expected, "backend {backend}");
    }
}

/// `-D` flags that put checkpoints on `server` under `prefix`.
fn on_s3(server: &weir_testkit::S3Server, prefix: &str) -> Vec<String> {
    [
        format!("state.checkpoints.dir={}", server.url(prefix)),
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
fn both_jobs_recover_exactly_once_with_checkpoints_on_an_s3_compatible_server() {
    let Some(server) = weir_testkit::require_or_skip(
        "both_jobs_recover_exactly_once_with_checkpoints_on_an_s3_compatible_server",
    ) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    // keyed-agg on RocksDB.
    let (out, state) = (dir.path().join("out"), dir.path().join("state"));
    let mut args = keyed_agg_args(120_000, 60_000, &out, &state);
    args.extend(["--param".into(), "fail-after=25000".into()]);
    args.extend(checkpointing("200ms"));
    args.extend(on_s3(&server, "keyed-agg"));
    let err = run_ok(&args);
    assert_restored_from_a_checkpoint(&err);
    let last = exactly_once_updates(&read_parts(&out));
    assert_eq!(last, expected_keyed_agg(42, 2000, 120_000));
    assert_no_orphans(&only_job_dir(&server.bucket_dir().join("keyed-agg")));
    // word-count on the heap backend, against a failure-free run.
    let input = dir.path().join("in.txt");
    write_text(&input, 200_000, 2_000, 11);
    let wc_state = dir.path().join("wc-state");
    let word_count = |out: &Path, extra: Vec<String>| -> String {
        let mut args = word_count_args(&input, out, "heap", &wc_state);
        args.extend(extra);
        run_ok(&args)
    };
    let reference = dir.path().join("wc-reference");
    word_count(&reference, Vec::new());
    let out = dir.path().join("wc-out");
    let mut extra = vec!["--param".into(), "fail-after=400000".into()];
    extra.extend(checkpointing("100ms"));
    extra.extend(["-D".into(), "taskmanager.network.batch-size=64".into()]);
    extra.extend(on_s3(&server, "word-count"));
    let err = word_count(&out, extra);
    assert_restored_from_a_checkpoint(&err);
    assert_eq!(
        exactly_once_updates(&read_parts(&out)),
        exactly_once_updates(&read_parts(&reference))
    );
    assert_no_orphans(&only_job_dir(&server.bucket_dir().join("word-count")));
}

/// The one job directory under a checkpoint root.
fn only_job_dir(root: &Path) -> PathBuf {
    let dirs: Vec<PathBuf> = std::fs::read_dir(root)
        .unwrap_or_else(|e| panic!("no checkpoint root {}: {e}", root.display()))
        .map(|e| e.expect("entry").path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(dirs.len(), 1, "one job directory under {}", root.display());
    dirs.into_iter().next().expect("one")
}

/// Every file below `dir`, relative, with `/` separators. The job may be running: a
/// subsumed checkpoint's folder that goes away during the walk is skipped, not an error.
fn files_below(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && d != dir => continue,
            Err(e) => panic!("read dir {}: {e}", d.display()),
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).expect("below").to_string_lossy();
                out.insert(rel.replace('\\', "/"));
            }
        }
    }
    out
}

/// The completed checkpoints in a job directory: id → decoded `_metadata`.
fn completed(job_dir: &Path) -> BTreeMap<u64, CheckpointMetadata> {
    let mut out = BTreeMap::new();
    for f in files_below(job_dir) {
        if let Some(n) = f
            .strip_prefix("chk-")
            .and_then(|r| r.strip_suffix("/_metadata"))
        {
            let bytes = match std::fs::read(job_dir.join(&f)) {
                Ok(bytes) => bytes,
                // Subsumed and deleted since the walk (the job may be running).
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => panic!("read {f}: {e}"),
            };
            if let Ok(m) = CheckpointMetadata::decode(&bytes) {
                out.insert(n.parse().expect("id"), m);
            }
        }
    }
    out
}

fn assert_no_orphans(job_dir: &Path) {
    let retained = completed(job_dir);
    assert!(!retained.is_empty(), "no retained checkpoint");
    let mut referenced: BTreeSet<String> = BTreeSet::new();
    for (id, m) in &retained {
        referenced.insert(format!("chk-{id}/_metadata"));
        referenced.extend(m.files().map(|f| f.path().to_string()));
    }
    // The folder's lease is the owner's record, not checkpoint data: at the end it is released.
    let (leases, present): (BTreeSet<String>, BTreeSet<String>) = files_below(job_dir)
        .into_iter()
        .partition(|f| f.starts_with("_lease/"));
    for lease in &leases {
        let record: serde_json::Value =
            serde_json::from_slice(&std::fs::read(job_dir.join(lease)).expect("read lease"))
                .expect("a lease is JSON");
        assert_eq!(record["released"], true, "{lease}: {record}");
    }
    let orphans: Vec<_> = present.difference(&referenced).collect();
    assert!(
        orphans.is_empty(),
        "files no retained checkpoint references: {orphans:?}"
    );
    let missing: Vec<_> = referenced.difference(&present).collect();
    assert!(
        missing.is_empty(),
        "referenced files that are gone: {missing:?}"
    );
}

#[test]
fn after_the_job_ends_every_checkpoint_file_is_referenced_by_a_retained_checkpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (out, state) = (dir.path().join("out"), dir.path().join("state"));
    let mut args = keyed_agg_args(100_000, 50_000, &out, &state);
    args.extend(["--param".into(), "fail-after=20000".into()]);
    args.extend(checkpointing("100ms"));
    args.extend(["-D".into(), "state.checkpoints.num-retained=2".into()]);
    let err = run_ok(&args);
    assert_restored_from_a_checkpoint(&err);
    let job_dir = only_job_dir(&state.join("checkpoints"));
    assert_eq!(
        completed(&job_dir).len(),
        2,
        "num-retained=2 checkpoints are kept"
    );
    assert_no_orphans(&job_dir);
}

#[test]
fn incremental_checkpoints_upload_a_small_fraction_of_the_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    // 100k keys, 50k records/s, a checkpoint every 200 ms: ~10k updates between checkpoints.
    let args: Vec<String> = [
        "local",
        "--taskmanagers=0",
        "keyed-agg",
        "-p",
        "1",
        "--param",
        "keys=100000",
        "--param",
        "records=200000",
        "--param",
        "rate=50000",
        "--state-dir",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([state.display().to_string()])
    .chain(checkpointing("200ms"))
    .collect();
    run_ok(&args);
    let out = weir(
        &[
            "checkpoints",
            "--json",
            "--state-dir",
            &state.display().to_string(),
        ],
        DEADLINE,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let history: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let done: Vec<(u64, u64)> = history["checkpoints"]
        .as_array()
        .expect("checkpoints")
        .iter()
        .filter(|c| c["status"] == "completed")
        .map(|c| {
            (
                c["bytes_uploaded"].as_u64().expect("bytes"),
                c["full_size"].as_u64().expect("size"),
            )
        })
        .collect();
    assert!(done.len() >= 5, "too few checkpoints: {done:?}");
    // The later checkpoints (state populated): the median upload is a small part of the state.
    let mut ratios: Vec<f64> = done[done.len() / 2..]
        .iter()
        .map(|&(up, full)| up as f64 / full.max(1) as f64)
        .collect();
    ratios.sort_by(f64::total_cmp);
    let median = ratios[ratios.len() / 2];
    assert!(
        median < 0.5,
        "median upload is {:.0} % of the state: {done:?}",
        median * 100.0
    );
}

// ---------------------------------------------------------------------------------------------
// Damaged checkpoints

/// Which file of the latest checkpoint a test damages.
#[derive(Copy, Clone, Debug)]
enum Target {
    Metadata,
    Sst,
    SinkManifest,
}

/// Starts keyed-agg with checkpoints and kills it (SIGKILL) once `n` checkpoints completed.
fn run_until_checkpoints_then_kill(out: &Path, state: &Path, n: usize) -> PathBuf {
    let mut args = keyed_agg_args(400_000, 50_000, out, state);
    args.extend(checkpointing("200ms"));
    args.extend(["-D".into(), "state.checkpoints.num-retained=3".into()]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(&args)
        .env_remove("WEIR_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start weir");
    let root = state.join("checkpoints");
    let start = Instant::now();
    loop {
        let ready = std::fs::read_dir(&root)
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| e.ok())
            .map(|e| completed(&e.path()).len() >= n)
            .unwrap_or(false);
        if ready {
            break;
        }
        assert!(
            child.try_wait().expect("poll").is_none(),
            "the job ended before {n} checkpoints completed"
        );
        assert!(start.elapsed() < DEADLINE, "no {n} checkpoints in time");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().expect("SIGKILL weir");
    child.wait().expect("reap weir");
    only_job_dir(&root)
}

fn flip_byte(path: &Path) {
    let mut bytes = std::fs::read(path).expect("read file to damage");
    let i = bytes.len() / 2;
    bytes[i] ^= 0x40;
    std::fs::write(path, bytes).expect("write damaged file");
}

fn damage_latest_then_resume(target: Target) {
    damage_latest_then_resume_retaining(target, 3);
}

/// Damages the latest of three retained checkpoints, then resumes with
/// `state.checkpoints.num-retained=retain_on_resume`.
fn damage_latest_then_resume_retaining(target: Target, retain_on_resume: u32) {
    damage_latest_then_resume_on(target, retain_on_resume, 0);
}

/// As above, the resume running on `taskmanagers` TaskManager processes (0: in-process).
fn damage_latest_then_resume_on(target: Target, retain_on_resume: u32, taskmanagers: u32) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (out, state) = (dir.path().join("out"), dir.path().join("state"));
    let job_dir = run_until_checkpoints_then_kill(&out, &state, 3);
    let retained = completed(&job_dir);
    let (&latest, latest_meta) = retained.iter().next_back().expect("latest");
    let previous: BTreeSet<String> = retained
        .range(..latest)
        .flat_map(|(_, m)| m.files().map(|f| f.path().to_string()).collect::<Vec<_>>())
        .collect();
    let victim = match target {
        Target::Metadata => format!("chk-{latest}/_metadata"),
        Target::Sst => latest_meta
            .files()
            .map(|f| f.path().to_string())
            .find(|p| p.ends_with(".sst") && !previous.contains(p))
            .expect("an SST only the latest checkpoint references"),
        Target::SinkManifest => latest_meta
            .files()
            .map(|f| f.path().to_string())
            .find(|p| p.ends_with("sink-manifest"))
            .expect("a sink manifest in the latest checkpoint"),
    };
    flip_byte(&job_dir.join(&victim));
    let job_id = job_dir
        .file_name()
        .expect("job id")
        .to_string_lossy()
        .into_owned();
    let mut args: Vec<String> = keyed_agg_args(400_000, 400_000, &out, &state)
        .into_iter()
        .map(|a| {
            if a == "--taskmanagers=0" {
                format!("--taskmanagers={taskmanagers}")
            } else {
                a
            }
        })
        .collect();
    args.extend(checkpointing("200ms"));
    args.extend([
        "-D".into(),
        format!("state.checkpoints.num-retained={retain_on_resume}"),
    ]);
    args.extend(["--restore".into(), job_id]);
    let err = run_ok(&args);
    let file_name = victim.rsplit('/').next().expect("name");
    assert!(
        err.contains(file_name) && err.contains(&format!("chk-{latest}")),
        "{target:?}: the damage of {victim} is not reported by name:\n{err}"
    );
    assert!(
        !err.contains(&format!("last restored from chk-{latest}")),
        "{target:?}: the damaged chk-{latest} was restored:\n{err}"
    );
    assert!(
        err.contains("last restored from chk-"),
        "{target:?}: no restore:\n{err}"
    );
    let last = exactly_once_updates(&read_parts(&out));
    assert_eq!(last, expected_keyed_agg(42, 2000, 400_000), "{target:?}");
}

#[test]
fn a_flipped_byte_in_the_latest_metadata_is_named_and_the_previous_checkpoint_is_used() {
    damage_latest_then_resume(Target::Metadata);
}

#[test]
fn a_flipped_byte_in_an_sst_of_the_latest_checkpoint_is_named_and_the_previous_one_is_used() {
    damage_latest_then_resume(Target::Sst);
}

#[test]
fn a_flipped_byte_in_a_sink_staging_manifest_is_named_and_the_previous_checkpoint_is_used() {
    damage_latest_then_resume(Target::SinkManifest);
}

#[test]
fn a_resume_with_a_smaller_retention_still_falls_back_from_a_damaged_latest_checkpoint() {
    // The SST's damage shows only when a task restores it: by then the older checkpoints must
    // still exist, whatever the new retention count.
    damage_latest_then_resume_retaining(Target::Sst, 1);
}

#[test]
fn a_damaged_sst_is_detected_on_a_real_taskmanager_and_the_jobmaster_falls_back() {
    damage_latest_then_resume_on(Target::Sst, 3, 2);
}

#[test]
fn a_second_concurrent_resume_of_one_job_is_refused_naming_the_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (out, state) = (dir.path().join("out"), dir.path().join("state"));
    let job_dir = run_until_checkpoints_then_kill(&out, &state, 2);
    let job_id = job_dir
        .file_name()
        .expect("job id")
        .to_string_lossy()
        .into_owned();
    // The first resume runs slowly, holding the job's checkpoint folder.
    let mut args = keyed_agg_args(400_000, 20_000, &out, &state);
    args.extend(checkpointing("200ms"));
    args.extend(["--restore".into(), job_id.clone()]);
    let mut first = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(&args)
        .env_remove("WEIR_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the first resume");
    let pid = first.id();
    let start = Instant::now();
    loop {
        let held = files_below(&job_dir)
            .into_iter()
            .filter(|f| f.starts_with("_lease/"))
            .filter_map(|f| std::fs::read(job_dir.join(f)).ok())
            .filter_map(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .any(|l| l["pid"] == pid && l["released"] == false);
        if held {
            break;
        }
        assert!(
            first.try_wait().expect("poll").is_none(),
            "the first resume ended early"
        );
        assert!(
            start.elapsed() < DEADLINE,
            "the first resume never took the lease"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = weir(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        DEADLINE,
    );
    first.kill().expect("SIGKILL the first resume");
    first.wait().expect("reap");
    let err = stderr(&second);
    assert_eq!(second.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("checkpoints of job {job_id} are in use"))
            && err.contains(&format!("pid {pid}")),
        "the refusal does not name the first run:\n{err}"
    );
}

#[test]
fn resuming_a_job_without_checkpoints_is_a_usage_error_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state").display().to_string();
    let mut args: Vec<String> = [
        "local",
        "--taskmanagers=0",
        "keyed-agg",
        "--state-dir",
        &state,
        "--restore",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(format!("{:032x}", 7));
    args.extend(checkpointing("1s"));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = weir(&refs, DEADLINE);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("00000000000000000000000000000007"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn resuming_a_finished_job_publishes_nothing_twice() {
    // The final checkpoint holds every task in its finished state: restoring it must not run
    // the aggregate's end-of-input output again (the sink already published it).
    let dir = tempfile::tempdir().expect("tempdir");
    let (out, state) = (dir.path().join("out"), dir.path().join("state"));
    let mut args: Vec<String> = keyed_agg_args(50_000, 1_000_000, &out, &state)
        .into_iter()
        .map(|a| {
            if a == "emit=updates" {
                "emit=final".into()
            } else {
                a
            }
        })
        .collect();
    args.extend(checkpointing("200ms"));
    run_ok(&args);
    let first = read_parts(&out);
    assert_eq!(first.len(), 2000, "one line per key");
    let job_id = only_job_dir(&state.join("checkpoints"))
        .file_name()
        .expect("job id")
        .to_string_lossy()
        .into_owned();
    args.extend(["--restore".into(), job_id]);
    let err = run_ok(&args);
    assert!(err.contains("last restored from chk-"), "{err}");
    let mut again = read_parts(&out);
    let mut first = first;
    again.sort();
    first.sort();
    assert_eq!(
        again, first,
        "the resumed finished job published its output again"
    );
}

#[test]
fn a_checkpoint_storage_the_taskmanagers_cannot_read_fails_the_submission_naming_them() {
    // `memory://` lives in one process: TaskManager processes cannot see the JobManager's.
    let dir = tempfile::tempdir().expect("tempdir");
    let (out, state) = (dir.path().join("out"), dir.path().join("state"));
    let mut args: Vec<String> = keyed_agg_args(10_000, 1_000_000, &out, &state)
        .into_iter()
        .map(|a| {
            if a == "--taskmanagers=0" {
                "--taskmanagers=2".into()
            } else {
                a
            }
        })
        .collect();
    args.extend(checkpointing("200ms"));
    args.extend(["-D".into(), "state.checkpoints.dir=memory://probe".into()]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = weir(&refs, DEADLINE);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("is not readable by every TaskManager")
            && err.contains("TaskManager local-tm-0 cannot read it")
            && err.contains("TaskManager local-tm-1 cannot read it"),
        "the refusal does not name the TaskManagers:\n{err}"
    );
    assert!(!out.exists(), "nothing ran");
    // In one process the same storage is readable, and the job runs.
    let mut inproc = args.clone();
    for a in inproc.iter_mut() {
        if a == "--taskmanagers=2" {
            *a = "--taskmanagers=0".into();
        }
    }
    run_ok(&inproc);
}
