//! Seeing inside a running job, with real processes on loopback: the web UI driven in a headless
//! Chromium (job graph, checkpoint table, the recovery timeline of a killed TaskManager,
//! cancelling from the page), and the Prometheus endpoints of the JobManager and the
//! TaskManagers (exposition format checked by `promtool`, counters against the job's actual
//! record counts).
//!
//! Screenshots go to `$WEIR_UI_SCREENSHOTS` when set (the README's come from there), else to a
//! temporary folder.

mod common;

use common::procs::{rest, start_jobmanager, start_taskmanager, wait_for, weir_cmd, Proc};
use common::webdriver::Browser;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(60);

struct Cluster {
    _jm: Proc,
    tms: Vec<(String, Proc)>,
    rpc: String,
    rest: String,
    dir: tempfile::TempDir,
}

fn cluster(taskmanagers: usize) -> Cluster {
    let dir = tempfile::tempdir().expect("tempdir");
    let (jm, rpc, rest_addr) = start_jobmanager(&[
        "heartbeat.interval=100ms",
        "heartbeat.timeout=2s",
        "slot.request.timeout=20s",
    ]);
    let tms: Vec<(String, Proc)> = (0..taskmanagers)
        .map(|i| {
            let id = format!("tm-{i}");
            let p = start_taskmanager(&rpc, &id, &dir.path().join(&id));
            (id, p)
        })
        .collect();
    wait_for("the TaskManagers to register", DEADLINE, || {
        rest(&rest_addr, "/taskmanagers")["taskmanagers"]
            .as_array()
            .is_some_and(|t| t.len() == taskmanagers)
    });
    Cluster {
        _jm: jm,
        tms,
        rpc,
        rest: rest_addr,
        dir,
    }
}

/// Submits keyed-agg at p=2 with 300 ms checkpoints (detached); returns the job id.
fn submit(c: &Cluster, params: &[&str]) -> String {
    let checkpoints: PathBuf = c.dir.path().join("checkpoints");
    let o = weir_cmd()
        .args(["run", "keyed-agg", "-p", "2", "--detached", "--json"])
        .args(["--jobmanager", &c.rpc])
        .args(params.iter().flat_map(|p| ["--param", p]))
        .args(["-D", "execution.checkpointing.interval=300ms"])
        .args([
            "-D",
            &format!("state.checkpoints.dir=file://{}", checkpoints.display()),
        ])
        .args(["-D", "restart-strategy.type=fixed-delay"])
        .args(["-D", "restart-strategy.fixed-delay.delay=50ms"])
        .stdin(Stdio::null())
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

/// `GET path` on `addr` with the cluster's token: the status line and the body as text.
fn get_text(addr: &str, path: &str) -> (String, String) {
    get_as(addr, path, Some(&common::procs::token().bearer()))
}

/// `GET path` on `addr` with `authorization` (if any): the status line and the body.
fn get_as(addr: &str, path: &str, authorization: Option<&str>) -> (String, String) {
    let mut s = std::net::TcpStream::connect(addr).expect("reachable");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = authorization
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("an answer");
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    (
        head.lines().next().unwrap_or_default().to_string(),
        body.to_string(),
    )
}

fn screenshots() -> (PathBuf, Option<tempfile::TempDir>) {
    match std::env::var_os("WEIR_UI_SCREENSHOTS") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            std::fs::create_dir_all(&dir).expect("screenshot folder");
            (dir, None)
        }
        None => {
            let t = tempfile::tempdir().expect("tempdir");
            (t.path().to_path_buf(), Some(t))
        }
    }
}

/// Runs `promtool check metrics` on `text`; `None` when promtool is absent and not required.
fn promtool_check(text: &str) -> Option<String> {
    let tool = Path::new("/usr/bin/promtool");
    if !tool.exists() {
        let required = std::env::var("WEIR_REQUIRE_BROWSER").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "WEIR_REQUIRE_BROWSER=1 but promtool is not installed (scripts/install-test-tools.sh installs Debian's prometheus)"
        );
        println!("SKIPPED: promtool not installed (scripts/install-test-tools.sh)");
        return None;
    }
    let mut child = Command::new(tool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool starts");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().expect("promtool ends");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool check metrics: {said}\n{text}"
    );
    Some(said)
}

/// The value of the sample `name{labels…}` whose labels include every one of `having`.
fn sample(text: &str, name: &str, having: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next().is_some_and(|n| n == name))
        .find(|l| having.iter().all(|h| l.contains(h)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn the_ui_shows_the_graph_the_checkpoints_and_a_killed_taskmanagers_recovery_and_cancels_the_job() {
    let Some(browser) = Browser::start() else {
        return;
    };
    let c = cluster(2);
    let id = submit(&c, &["records=unbounded", "rate=20000", "keys=1000"]);
    wait_for("8 completed checkpoints", DEADLINE, || {
        rest(&c.rest, &format!("/jobs/{id}/checkpoints"))["counts"]["completed"]
            .as_u64()
            .unwrap_or(0)
            >= 8
    });
    // Kill the TaskManager that runs the source's subtask 0; the other has room for both.
    let job = rest(&c.rest, &format!("/jobs/{id}"));
    let victim = job["vertices"][0]["subtasks"][0]["taskmanager"]
        .as_str()
        .expect("placed")
        .to_string();
    let i = c.tms.iter().position(|(n, _)| *n == victim).expect("ours");
    c.tms[i].1.signal("KILL");
    wait_for("the recovery to complete", DEADLINE, || {
        rest(&c.rest, &format!("/jobs/{id}/recoveries"))["recoveries"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r["status"] == "completed"))
    });
    // The recovery reaches /metrics: a restart and its phases, observed once.
    let (_, text) = get_text(&c.rest, "/metrics");
    promtool_check(&text);
    let job_label = format!("job_id=\"{id}\"");
    assert_eq!(
        sample(&text, "weir_job_restarts_total", &[&job_label]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "weir_recovery_phase_seconds_count",
            &[&job_label, "phase=\"total\""]
        ),
        Some(1.0),
        "{text}"
    );
    let (shots, _keep) = screenshots();
    let base = format!("http://{}", c.rest);
    // Without the token the page asks for it; a `#token=` link stores it in the tab.
    browser.goto(&format!("{base}/#/"));
    browser.wait_for("the token form", "[data-test=token-form]", DEADLINE, |t| {
        t.len() == 1
    });
    browser.goto(&format!(
        "{base}/#token={}",
        common::procs::token().expose()
    ));
    browser.wait_for("the overview", "[data-test=job-row]", DEADLINE, |t| {
        !t.is_empty()
    });

    browser.goto(&format!("{base}/#/jobs/{id}"));
    let vertices = browser.wait_for(
        "the job graph's two vertices",
        "[data-test=vertex]",
        DEADLINE,
        |t| t.len() == 2,
    );
    assert!(vertices[0].contains("Source: generator"), "{vertices:?}");
    assert!(vertices[1].contains("CountSum"), "{vertices:?}");
    for v in browser.find_all("[data-test=vertex]") {
        assert_eq!(
            browser.attribute(&v, "data-parallelism").as_deref(),
            Some("2")
        );
    }
    assert!(
        vertices.iter().all(|v| v.contains("Parallelism: 2")),
        "{vertices:?}"
    );
    let edges = browser.find_all("[data-test=edge]");
    assert_eq!(edges.len(), 1, "one HASH edge between the vertices");
    let rows = browser.wait_for(
        "checkpoint rows",
        "[data-test=checkpoint-row]",
        DEADLINE,
        |t| t.len() >= 3,
    );
    assert!(rows.iter().any(|r| r.contains("COMPLETED")), "{rows:?}");
    assert_eq!(browser.find_all("[data-test=checkpoint-chart]").len(), 1);
    let recovery = browser.wait_for(
        "the recovery of the killed TaskManager",
        "[data-test=recovery]",
        DEADLINE,
        |t| {
            t.iter()
                .any(|r| r.contains(&format!("TaskManager {victim} lost")))
        },
    );
    assert!(
        recovery
            .iter()
            .any(|r| r.contains("detect") && r.contains("restored checkpoint")),
        "the timeline shows the phases: {recovery:?}"
    );
    // Records keep flowing after the recovery, and the page says so.
    browser.wait_for(
        "records per second",
        "[data-test=records-per-s]",
        DEADLINE,
        |t| {
            t.iter()
                .any(|t| !t.starts_with("0\n") && !t.starts_with("0 "))
        },
    );
    browser.screenshot(&shots.join("ui-job.png"));

    browser.goto(&format!("{base}/#/"));
    browser.wait_for("the job's row", "[data-test=job-row]", DEADLINE, |t| {
        t.iter().any(|r| r.contains(&id) && r.contains("RUNNING"))
    });
    browser.screenshot(&shots.join("ui-overview.png"));

    browser.goto(&format!("{base}/#/taskmanagers"));
    browser.wait_for(
        "the surviving TaskManager",
        "[data-test=taskmanager-row]",
        DEADLINE,
        |t| t.len() == 1 && !t[0].contains(&victim),
    );
    browser.screenshot(&shots.join("ui-taskmanagers.png"));

    // Cancel from the job's page: the first click arms the button, the second sends.
    browser.goto(&format!("{base}/#/jobs/{id}"));
    browser.wait_for("the cancel button", "[data-test=cancel]", DEADLINE, |t| {
        t.len() == 1
    });
    let cancel = browser.find_all("[data-test=cancel]")[0].clone();
    browser.click(&cancel);
    assert_eq!(
        rest(&c.rest, &format!("/jobs/{id}"))["state"],
        "RUNNING",
        "one click only arms the button"
    );
    browser.click(&cancel);
    wait_for("the job to be cancelled", DEADLINE, || {
        rest(&c.rest, &format!("/jobs/{id}"))["state"] == "CANCELED"
    });
    browser.wait_for("the CANCELED state", "h1", DEADLINE, |t| {
        t.iter().any(|h| h.contains("CANCELED"))
    });
}

#[test]
fn a_job_name_or_failure_with_markup_is_shown_as_text_and_the_page_carries_a_strict_policy() {
    let c = cluster(1);
    let (status, page) = get_text(&c.rest, "/");
    assert!(status.contains("200"), "{status}");
    assert!(page.contains("/ui/app.js"), "{page}");
    let (_, script) = get_text(&c.rest, "/ui/app.js");
    assert!(
        !script.contains("innerHTML") && !script.contains("insertAdjacentHTML"),
        "the script never parses data as HTML"
    );
    let mut s = std::net::TcpStream::connect(&c.rest).unwrap();
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        c.rest
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let head = answer
        .split("\r\n\r\n")
        .next()
        .unwrap()
        .to_ascii_lowercase();
    assert!(
        head.contains("content-security-policy: default-src 'none'; script-src 'self'"),
        "{head}"
    );
    let (status, _) = get_text(&c.rest, "/ui/../../etc/passwd");
    assert!(status.contains("404"), "{status}");
}

#[test]
fn the_metrics_endpoints_pass_promtool_and_count_the_jobs_actual_records() {
    const RECORDS: u64 = 120_000;
    let c = cluster(2);
    let out = c.dir.path().join("out");
    // A rate-limited run, so the TaskManagers' endpoints are read while it runs.
    let id = submit(
        &c,
        &[
            &format!("records={RECORDS}"),
            "rate=40000",
            "keys=500",
            "emit=final",
            &format!("output={}", out.display()),
        ],
    );
    wait_for("records to flow", DEADLINE, || {
        rest(&c.rest, &format!("/jobs/{id}"))["metrics"]["source_records"]
            .as_u64()
            .unwrap_or(0)
            > 0
    });
    let tms = rest(&c.rest, "/taskmanagers");
    let addresses: Vec<String> = tms["taskmanagers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            t["metrics_address"]
                .as_str()
                .expect("a metrics address")
                .to_string()
        })
        .collect();
    assert_eq!(addresses.len(), 2);
    let mut sources_out = 0.0;
    for a in &addresses {
        let (status, text) = get_text(a, "/metrics");
        assert!(status.contains("200"), "{status}");
        promtool_check(&text);
        assert!(text.contains("weir_taskmanager_slots 2"), "{text}");
        sources_out +=
            sample(&text, "weir_task_records_out_total", &["vertex=\"0\""]).unwrap_or(0.0);
        assert!(get_text(a, "/other").0.contains("404"));
    }
    assert!(
        sources_out > 0.0,
        "the sources' counters rise while the job runs"
    );
    wait_for("the job to finish", Duration::from_secs(90), || {
        rest(&c.rest, &format!("/jobs/{id}"))["state"] == "FINISHED"
    });
    let job = rest(&c.rest, &format!("/jobs/{id}"));
    let (status, text) = get_text(&c.rest, "/metrics");
    assert!(status.contains("200"), "{status}");
    promtool_check(&text);
    let written: u64 = common::read_parts(&out).len() as u64;
    assert_eq!(written, 500, "one final line per key");
    let job_label = format!("job_id=\"{id}\"");
    assert_eq!(
        sample(&text, "weir_job_source_records_total", &[&job_label]),
        Some(RECORDS as f64),
        "{text}"
    );
    assert_eq!(
        sample(&text, "weir_job_sink_records_total", &[&job_label]),
        Some(written as f64)
    );
    // The vertices' counters, from the TaskManagers' final reports, are the records that
    // crossed the HASH edge: every generated record, once.
    let vertices = job["vertices"].as_array().unwrap();
    assert_eq!(vertices[0]["metrics"]["records_out"], RECORDS, "{job}");
    assert_eq!(vertices[1]["metrics"]["records_in"], RECORDS, "{job}");
    let completed = sample(&text, "weir_checkpoints_total", &[&job_label, "completed"])
        .expect("checkpoints counted");
    assert!(completed >= 1.0, "{text}");
    assert_eq!(
        sample(
            &text,
            "weir_checkpoint_duration_seconds_count",
            &[&job_label]
        ),
        Some(completed),
        "each completed checkpoint is observed once"
    );
    assert!(
        sample(&text, "weir_jobs", &["state=\"FINISHED\""]) == Some(1.0),
        "{text}"
    );
    // A second scrape observes nothing twice.
    let (_, again) = get_text(&c.rest, "/metrics");
    assert_eq!(
        sample(
            &again,
            "weir_checkpoint_duration_seconds_count",
            &[&job_label]
        ),
        Some(completed)
    );
}
