//! Real processes for the cluster tests: `weir jobmanager` and `weir taskmanager` children that
//! are killed (by their PID) and reaped when dropped, the REST API, bounded waits.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process killed (by its PID) and reaped when dropped.
pub struct Proc {
    pub name: String,
    pub child: Child,
}

impl Proc {
    /// Asserts the process still runs.
    pub fn assert_alive(&mut self) {
        let status = self.child.try_wait().expect("poll the process");
        assert!(status.is_none(), "{} exited: {status:?}", self.name);
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill runs")
            .success();
        assert!(ok, "kill -{sig} {} ({})", self.pid(), self.name);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // A stopped process must be continued to die of SIGKILL promptly on every kernel.
        let _ = self.child.kill();
        let _ = Command::new("kill")
            .arg("-CONT")
            .arg(self.pid().to_string())
            .status();
        let _ = self.child.wait();
    }
}

pub fn weir_cmd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_weir"))
}

/// The JobManager on ports the OS picks (port 0: no other process can take them between
/// picking and binding), with `defines` as `-D` flags; returns it with its RPC URL and REST
/// address, read from its log.
pub fn start_jobmanager(defines: &[&str]) -> (Proc, String, String) {
    let mut child = weir_cmd()
        .args([
            "jobmanager",
            "--rpc-bind",
            "127.0.0.1:0",
            "--rest-bind",
            "127.0.0.1:0",
        ])
        .args(defines.iter().flat_map(|d| ["-D", d]))
        .env("WEIR_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("jobmanager starts");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !sent && line.contains("JobManager: RPC on ") {
                let _ = tx.send(line.clone());
                sent = true;
            }
            eprintln!("[jm] {line}");
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the JobManager prints its addresses");
    let rpc = line
        .split("RPC on ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .expect("rpc address")
        .trim()
        .to_string();
    let rest = line
        .split("REST on http://")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .expect("rest address")
        .to_string();
    (
        Proc {
            name: "jobmanager".into(),
            child,
        },
        format!("http://{rpc}"),
        rest,
    )
}

pub fn start_taskmanager(jm: &str, id: &str, state: &Path) -> Proc {
    start_taskmanager_with(jm, id, state, &[])
}

/// A TaskManager with `env` added to its environment (its own credentials, say).
pub fn start_taskmanager_with(jm: &str, id: &str, state: &Path, env: &[(&str, &str)]) -> Proc {
    let child = weir_cmd()
        .envs(env.iter().copied())
        .args([
            "taskmanager",
            "--jobmanager",
            jm,
            "--slots",
            "2",
            "--id",
            id,
        ])
        .arg("--state-dir")
        .arg(state)
        .env("WEIR_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("taskmanager starts");
    Proc {
        name: id.to_string(),
        child,
    }
}

/// The token every `weir` process of these tests uses: this user's default token file (the
/// first process creates it).
pub fn token() -> weir_security::Token {
    weir_security::resolve(None, None).expect("the default token file")
}

/// `GET path` on the REST API (with the token); the JSON body.
pub fn rest(addr: &str, path: &str) -> serde_json::Value {
    let mut s = std::net::TcpStream::connect(addr).expect("REST reachable");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {}\r\nConnection: close\r\n\r\n",
        token().bearer()
    )
    .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).expect("REST answers");
    let json = body.split("\r\n\r\n").nth(1).unwrap_or_default();
    // A chunked body: take the JSON between the first '{' and the last '}'.
    let start = json.find(['{', '[']).unwrap_or(0);
    let end = json.rfind(['}', ']']).map_or(json.len(), |e| e + 1);
    serde_json::from_str(&json[start..end])
        .unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {body}"))
}

pub fn wait_for(what: &str, deadline: Duration, mut ok: impl FnMut() -> bool) {
    let until = Instant::now() + deadline;
    while Instant::now() < until {
        if ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

/// Waits up to `deadline` for job `id` to end on the JobManager whose REST API is at
/// `rest_addr`; asserts it FINISHED and returns its details.
pub fn wait_job_finished(rest_addr: &str, id: &str, deadline: Duration) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    wait_for("the job to finish", deadline, || {
        last = rest(rest_addr, &format!("/jobs/{id}"));
        matches!(
            last["state"].as_str(),
            Some("FINISHED" | "FAILED" | "CANCELED")
        )
    });
    assert_eq!(last["state"], "FINISHED", "job did not finish: {last}");
    last
}
