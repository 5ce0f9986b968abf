//! Who may talk to a Weir cluster, with real processes on loopback: without the cluster's token
//! every port refuses (RPC `Unauthenticated`, REST and `/metrics` 401, data-plane streams
//! `Unauthenticated`), a TaskManager with another token cannot register, a port bound off
//! loopback without TLS is refused unless `--insecure`, and `weir config` never prints the
//! token.

mod common;

use common::procs::{rest, start_jobmanager, start_taskmanager, token, wait_for, weir_cmd};
use std::io::{Read, Write};
use std::process::Stdio;
use std::time::Duration;
use weir_proto::v1::data_exchange_service_client::DataExchangeServiceClient;
use weir_proto::v1::dispatcher_service_client::DispatcherServiceClient;

const DEADLINE: Duration = Duration::from_secs(30);

/// `GET path` with `authorization` (if any); the status line.
fn status_of(addr: &str, path: &str, authorization: Option<&str>) -> String {
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
    s.read_to_string(&mut answer).unwrap();
    answer.lines().next().unwrap_or_default().to_string()
}

#[test]
fn without_the_token_every_port_refuses_and_with_it_every_port_answers() {
    let dir = tempfile::tempdir().unwrap();
    let (_jm, rpc, rest_addr) = start_jobmanager(&[]);
    let _tm = start_taskmanager(&rpc, "tm-0", &dir.path().join("tm-0"));
    wait_for("the TaskManager to register", DEADLINE, || {
        rest(&rest_addr, "/taskmanagers")["taskmanagers"]
            .as_array()
            .is_some_and(|t| t.len() == 1)
    });
    let tm = &rest(&rest_addr, "/taskmanagers")["taskmanagers"][0];
    let data = tm["data_address"].as_str().unwrap().to_string();
    let metrics = tm["metrics_address"].as_str().unwrap().to_string();
    let good = token().bearer();
    let wrong = "Bearer not-the-cluster-token-0123456789";

    // REST: every API path and /metrics; the UI's own files are public (they hold no data).
    for path in [
        "/overview",
        "/jobs",
        "/taskmanagers",
        "/metrics",
        "/jobs/00/checkpoints",
    ] {
        for auth in [None, Some(wrong), Some("Basic dXNlcjpwYXNz")] {
            let s = status_of(&rest_addr, path, auth);
            assert!(s.contains("401"), "GET {path} with {auth:?}: {s}");
        }
    }
    assert!(status_of(&rest_addr, "/overview", Some(&good)).contains("200"));
    assert!(status_of(&rest_addr, "/", None).contains("200"));
    assert!(status_of(&rest_addr, "/ui/app.js", None).contains("200"));
    // A TaskManager's /metrics.
    assert!(status_of(&metrics, "/metrics", None).contains("401"));
    assert!(status_of(&metrics, "/metrics", Some(wrong)).contains("401"));
    assert!(status_of(&metrics, "/metrics", Some(&good)).contains("200"));

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // RPC: the Dispatcher (and with it every JobManager service).
        let mut bare = DispatcherServiceClient::connect(rpc.clone()).await.unwrap();
        let refused = bare
            .list_jobs(weir_proto::v1::ListJobsRequest {})
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
        // The data plane: a stream is refused before it can name a channel.
        let mut plane = DataExchangeServiceClient::connect(format!("http://{data}"))
            .await
            .unwrap();
        let open = tokio_stream::iter(vec![weir_proto::v1::DataFrame { kind: None }]);
        let refused = plane.transfer(open).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    });
    // With the token the CLI works.
    let o = weir_cmd()
        .args(["list", "--jobmanager", &rpc])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn a_taskmanager_with_another_token_cannot_register_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let (_jm, rpc, rest_addr) = start_jobmanager(&[]);
    let o = weir_cmd()
        .args(["taskmanager", "--jobmanager", &rpc, "--id", "tm-impostor"])
        .arg("--state-dir")
        .arg(dir.path())
        .args([
            "-D",
            "security.auth.token=another-clusters-token-0123456789",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("the TaskManager runs and ends");
    assert_eq!(o.status.code(), Some(2), "a refused TaskManager exits 2");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("token"), "{err}");
    assert!(
        !err.contains("another-clusters-token"),
        "the token itself is never printed: {err}"
    );
    let tms = rest(&rest_addr, "/taskmanagers");
    assert_eq!(
        tms["taskmanagers"].as_array().map(Vec::len),
        Some(0),
        "{tms}"
    );
}

#[test]
fn a_port_off_loopback_is_refused_without_insecure_and_the_token_is_never_printed() {
    let o = weir_cmd()
        .args([
            "jobmanager",
            "--rpc-bind",
            "0.0.0.0:0",
            "--rest-bind",
            "127.0.0.1:0",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("--rpc-bind 0.0.0.0:0") && err.contains("--insecure"),
        "{err}"
    );
    let dir = tempfile::tempdir().unwrap();
    let o = weir_cmd()
        .args(["taskmanager", "--data-bind", "0.0.0.0:0"])
        .arg("--state-dir")
        .arg(dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--data-bind 0.0.0.0:0"), "{err}");
    // `--insecure` binds, and says so.
    let mut jm = weir_cmd()
        .args([
            "jobmanager",
            "--rpc-bind",
            "0.0.0.0:0",
            "--rest-bind",
            "127.0.0.1:0",
            "--insecure",
        ])
        .env("WEIR_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = jm.stderr.take().unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    let until = std::time::Instant::now() + DEADLINE;
    while !seen.contains("RPC on") && std::time::Instant::now() < until {
        let n = stderr.read(&mut buf).unwrap_or(0);
        if n == 0 {
            break;
        }
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let _ = jm.kill();
    let _ = jm.wait();
    assert!(
        seen.contains("--insecure"),
        "a warning names --insecure: {seen}"
    );
    assert!(seen.contains("RPC on"), "{seen}");
    // `weir config` shows that a token is set, never the token.
    let o = weir_cmd()
        .args([
            "config",
            "-D",
            "security.auth.token=do-not-print-me-0123456789",
        ])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("security.auth.token = ******"), "{out}");
    assert!(!out.contains("do-not-print-me"), "{out}");
}

#[test]
fn a_run_with_s3_credentials_never_logs_them_and_never_sends_them_with_the_job() {
    let Some(server) = weir_testkit::require_or_skip(
        "a_run_with_s3_credentials_never_logs_them_and_never_sends_them_with_the_job",
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let secret = server.secret_key().to_string();
    // A local cluster (a JobManager here, two TaskManager children sharing this stderr),
    // everything logged at debug level, checkpoints on the S3 server.
    let o = weir_cmd()
        .args(["local", "keyed-agg", "-p", "2", "--taskmanagers", "2"])
        .args(["--param", "records=60000", "--param", "rate=30000"])
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .args(["-D", "execution.checkpointing.interval=200ms"])
        .args([
            "-D",
            &format!("state.checkpoints.dir={}", server.url("secrets")),
        ])
        .args(["-D", &format!("s3.endpoint={}", server.endpoint())])
        .args(["-D", "s3.path.style.access=true"])
        .env("WEIR_S3_ACCESS_KEY", server.access_key())
        .env("WEIR_S3_SECRET_KEY", &secret)
        .env("WEIR_LOG", "debug")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        o.status.success(),
        "{}",
        &log[log.len().saturating_sub(3000)..]
    );
    assert!(
        log.lines().count() > 100,
        "debug logging ran: {} lines",
        log.lines().count()
    );
    assert!(
        !log.contains(&secret),
        "the secret key appears in the log: {}",
        log.lines()
            .find(|l| l.contains(&secret))
            .unwrap_or_default()
    );
    assert!(
        !log.contains(token().expose()),
        "the cluster's token appears in the log"
    );
    // Checkpoints reached the server (the credentials worked), and nothing written there
    // carries the secret either (`_metadata` included).
    let root = server.bucket_dir().join("secrets");
    let mut files = 0;
    let mut stack = vec![root];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                files += 1;
                let bytes = std::fs::read(&p).unwrap();
                assert!(
                    !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                    "{} carries the secret",
                    p.display()
                );
            }
        }
    }
    assert!(files > 0, "checkpoints were written to the S3 server");
}
