//! Bad input: one clear line naming the thing, exit code 2, nothing written to the output dir.

mod common;

use common::{stderr, tree, weir};
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

fn fails_with(args: &[&str], needle: &str) {
    let o = weir(args, T);
    let err = stderr(&o);
    assert_eq!(
        o.status.code(),
        Some(2),
        "exit code of {args:?}; stderr: {err}"
    );
    assert!(
        err.contains(needle),
        "stderr of {args:?} should name {needle:?}: {err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
}

#[test]
fn an_unknown_job_is_named() {
    fails_with(
        &["local", "--taskmanagers=0", "no-such-job"],
        "unknown job 'no-such-job'",
    );
}

#[test]
fn an_unknown_param_is_named_with_the_known_ones() {
    fails_with(
        &[
            "local",
            "--taskmanagers=0",
            "keyed-agg",
            "--param",
            "kyes=3",
        ],
        "unknown --param 'kyes' for job 'keyed-agg'",
    );
}

#[test]
fn a_malformed_param_is_named() {
    fails_with(
        &["local", "--taskmanagers=0", "keyed-agg", "--param", "keys"],
        "malformed --param 'keys'",
    );
    fails_with(
        &[
            "local",
            "--taskmanagers=0",
            "keyed-agg",
            "--param",
            "keys=many",
        ],
        "--param keys=many",
    );
}

#[test]
fn parallelism_zero_is_rejected() {
    fails_with(
        &["local", "--taskmanagers=0", "keyed-agg", "-p", "0"],
        "parallelism 0 is invalid",
    );
}

#[test]
fn parallelism_above_the_max_parallelism_is_rejected() {
    fails_with(
        &[
            "local",
            "--taskmanagers=0",
            "keyed-agg",
            "-p",
            "9",
            "-D",
            "pipeline.max-parallelism=8",
        ],
        "parallelism 9 is invalid; it must be between 1 and the max parallelism 8",
    );
}

#[test]
fn an_unreadable_input_path_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let missing = dir.path().join("missing.txt");
    fails_with(
        &[
            "local",
            "--taskmanagers=0",
            "word-count",
            "--param",
            &format!("input={}", missing.display()),
            "--param",
            &format!("output={}", out.display()),
        ],
        &missing.display().to_string(),
    );
    assert!(!out.exists(), "nothing is created in the output dir");
}

#[test]
fn a_state_dir_that_is_not_writable_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let state = file.join("state");
    let out = dir.path().join("out");
    fails_with(
        &[
            "local",
            "--taskmanagers=0",
            "keyed-agg",
            "--param",
            &format!("output={}", out.display()),
            "--state-dir",
            &state.display().to_string(),
        ],
        &state.display().to_string(),
    );
    assert!(
        tree(&out).is_empty(),
        "nothing half-written: {:?}",
        tree(&out)
    );
}

#[test]
fn an_output_path_that_is_a_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    fails_with(
        &[
            "local",
            "--taskmanagers=0",
            "keyed-agg",
            "--param",
            &format!("output={}", file.display()),
        ],
        "exists and is not a directory",
    );
}

#[test]
fn an_unknown_config_key_is_named() {
    fails_with(
        &[
            "local",
            "--taskmanagers=0",
            "keyed-agg",
            "-D",
            "state.backnd=heap",
        ],
        "unknown configuration key 'state.backnd'",
    );
}

#[test]
fn a_bad_config_value_is_named() {
    fails_with(
        &[
            "local",
            "--taskmanagers=0",
            "keyed-agg",
            "--state-backend",
            "leveldb",
        ],
        "configuration key 'state.backend'",
    );
}

#[test]
fn a_failing_job_exits_one_naming_the_operator_and_subtask() {
    // A file that is not UTF-8 passes the up-front checks (it exists and is readable) and
    // fails inside the source operator while the job runs.
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    std::fs::write(input.join("a.txt"), [0xffu8, 0xfe, b'\n']).unwrap();
    let o = weir(
        &[
            "local",
            "--taskmanagers=0",
            "word-count",
            "--param",
            &format!("input={}", input.display()),
        ],
        T,
    );
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("operator 'source' subtask 0/1 failed"),
        "{err}"
    );
}

#[test]
fn a_bad_socket_address_is_named() {
    fails_with(
        &[
            "local",
            "--taskmanagers=0",
            "word-count",
            "--param",
            "socket=localhost",
        ],
        "--param socket=localhost: expected HOST:PORT",
    );
}

#[test]
fn word_count_without_input_or_socket_says_what_it_needs() {
    fails_with(
        &["local", "--taskmanagers=0", "word-count"],
        "job 'word-count' needs --param input (or socket)=…",
    );
}

#[test]
fn a_padding_beyond_its_bound_is_refused_naming_it() {
    fails_with(
        &["plan", "keyed-agg", "--param", "padding=1000000000000"],
        "padding",
    );
}
