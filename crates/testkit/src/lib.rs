//! Test support for Weir's integration tests: a real S3-compatible server on loopback.
//!
//! [`S3Server`] starts [s3s-fs](https://crates.io/crates/s3s-fs) (installed by
//! `scripts/install-s3-server.sh`), which checks request signatures and honours create-only
//! puts, so the commit protocol is tested against S3 semantics rather than a local fake.
//!
//! Used only as a dev-dependency; depends on `tempfile` and std, nothing of Weir's.
//!
//! How a test gets a server:
//!
//! 1. [`require_or_skip`] (or [`S3Server::start`]) finds the binary: `WEIR_S3S_FS`, else the
//!    install script's default path. Without one the test is skipped loudly — unless
//!    `WEIR_REQUIRE_S3=1` (set by `scripts/test.sh`), which turns a missing server into a
//!    failure, so CI never passes by skipping.
//! 2. It picks a free loopback port, creates a temporary root holding one bucket folder, and
//!    spawns the server with its output in a log file (a few tries if the port is taken
//!    meanwhile).
//! 3. It waits, bounded, until the port accepts TCP connections.
//! 4. Dropping the [`S3Server`] kills the process by its id and waits for it, then removes the
//!    root.

#![warn(missing_docs)]

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The environment variable naming the s3s-fs binary.
pub const BINARY_ENV: &str = "WEIR_S3S_FS";
/// The environment variable that, set to `1`, makes a missing server an error.
pub const REQUIRE_ENV: &str = "WEIR_REQUIRE_S3";
/// The s3s-fs version the install script pins.
pub const S3S_FS_VERSION: &str = "0.14.1";

const BUCKET: &str = "weir-test";
const ACCESS_KEY: &str = "weir-test-access-key";
const SECRET_KEY: &str = "weir-test-secret-key";
const START_ATTEMPTS: usize = 5;
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// A running s3s-fs on `127.0.0.1`, with one empty bucket. Killed on drop.
#[derive(Debug)]
pub struct S3Server {
    child: Child,
    port: u16,
    /// Holds `data/<bucket>/` (the server's root is `data/`) and `s3s-fs.log`.
    dir: tempfile::TempDir,
}

impl S3Server {
    /// Starts a server. `Ok(None)` when no binary is installed (skip the test), unless
    /// `WEIR_REQUIRE_S3=1`, which makes that an error; `Err` when the server does not start.
    pub fn start() -> Result<Option<S3Server>, String> {
        Self::start_from(find_binary()?, required())
    }

    fn start_from(binary: Option<PathBuf>, required: bool) -> Result<Option<S3Server>, String> {
        let Some(binary) = binary else {
            if required {
                return Err(format!(
                    "{REQUIRE_ENV}=1 but no S3-compatible server is installed at {} \
                     (run scripts/install-s3-server.sh or set {BINARY_ENV})",
                    default_binary().display()
                ));
            }
            return Ok(None);
        };
        let mut last_error = String::new();
        for _ in 0..START_ATTEMPTS {
            match Self::start_once(&binary)? {
                Ok(server) => return Ok(Some(server)),
                // The port was taken between our probe and the server's bind: try another.
                Err(exited) => last_error = exited,
            }
        }
        Err(format!(
            "s3s-fs ({}) did not start in {START_ATTEMPTS} tries: {last_error}",
            binary.display()
        ))
    }

    /// One try: `Ok(Err(..))` when the process exited (worth another port), `Err` when it
    /// cannot be spawned or never becomes ready.
    fn start_once(binary: &Path) -> Result<Result<S3Server, String>, String> {
        let dir = tempfile::Builder::new()
            .prefix("weir-s3s-fs-")
            .tempdir()
            .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
        let data = dir.path().join("data");
        std::fs::create_dir_all(data.join(BUCKET))
            .map_err(|e| format!("cannot create the bucket folder: {e}"))?;
        let log_path = dir.path().join("s3s-fs.log");
        let log = File::create(&log_path)
            .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
        let log_err = log
            .try_clone()
            .map_err(|e| format!("cannot duplicate the log handle: {e}"))?;
        let port = free_loopback_port()?;
        let child = Command::new(binary)
            .arg("--host")
            .arg("127.0.0.1")
            .arg("--port")
            .arg(port.to_string())
            .arg("--access-key")
            .arg(ACCESS_KEY)
            .arg("--secret-key")
            .arg(SECRET_KEY)
            .arg(&data)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        // From here on, dropping `server` kills the child.
        let mut server = S3Server { child, port, dir };
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = server
                .child
                .try_wait()
                .map_err(|e| format!("cannot poll s3s-fs: {e}"))?
            {
                return Ok(Err(format!(
                    "s3s-fs exited ({status}) on port {port}: {}",
                    server.log().trim()
                )));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                return Ok(Ok(server));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "s3s-fs did not accept connections on {addr} within {READY_TIMEOUT:?}: {}",
                    server.log().trim()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The one bucket the server holds (empty at start).
    pub fn bucket(&self) -> &str {
        BUCKET
    }

    /// The access key id the server accepts.
    pub fn access_key(&self) -> &str {
        ACCESS_KEY
    }

    /// The secret key the server accepts.
    pub fn secret_key(&self) -> &str {
        SECRET_KEY
    }

    /// `s3://<bucket>/<prefix>` (`s3://<bucket>` for an empty prefix).
    pub fn url(&self, prefix: &str) -> String {
        match prefix.trim_matches('/') {
            "" => format!("s3://{BUCKET}"),
            p => format!("s3://{BUCKET}/{p}"),
        }
    }

    /// The folder backing the bucket: objects appear here as files (for tests that damage or
    /// inspect stored bytes directly).
    pub fn bucket_dir(&self) -> PathBuf {
        self.dir.path().join("data").join(BUCKET)
    }

    /// What the server wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = File::open(self.dir.path().join("s3s-fs.log")) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        // `Child::kill` signals this child's pid (SIGKILL); waiting reaps it. Either fails only
        // when the process already exited, which is what we want anyway.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A server for `test_name`, or `None` after printing a loud `SKIPPED` line to stderr (not
/// captured by the test harness) when none is installed. Panics when the server is required (`WEIR_REQUIRE_S3=1`) but missing, or when an
/// installed server does not start.
pub fn require_or_skip(test_name: &str) -> Option<S3Server> {
    match S3Server::start() {
        Ok(Some(server)) => Some(server),
        Ok(None) => {
            // Straight to the process's stderr: the test harness captures `eprintln!` of
            // passing tests, and a skip must not be silent.
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED {test_name}: no S3-compatible server \
                 (run scripts/install-s3-server.sh or set {BINARY_ENV})"
            );
            None
        }
        Err(e) => panic!("{test_name}: {e}"),
    }
}

/// Where `scripts/install-s3-server.sh` puts the binary:
/// `${WEIR_TOOLS_DIR:-$HOME/.cache/weir-tools}/s3s-fs-<version>/bin/s3s-fs`.
pub fn default_binary() -> PathBuf {
    let tools = match std::env::var_os("WEIR_TOOLS_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_default()
            .join(".cache")
            .join("weir-tools"),
    };
    tools
        .join(format!("s3s-fs-{S3S_FS_VERSION}"))
        .join("bin")
        .join("s3s-fs")
}

/// `WEIR_S3S_FS` when set (an error if it names no file), else the default path if installed.
fn find_binary() -> Result<Option<PathBuf>, String> {
    match std::env::var_os(BINARY_ENV) {
        Some(path) if !path.is_empty() => {
            let path = PathBuf::from(path);
            if path.is_file() {
                Ok(Some(path))
            } else {
                Err(format!(
                    "{BINARY_ENV}={} names no file (run scripts/install-s3-server.sh)",
                    path.display()
                ))
            }
        }
        _ => {
            let path = default_binary();
            Ok(path.is_file().then_some(path))
        }
    }
}

fn required() -> bool {
    std::env::var(REQUIRE_ENV).is_ok_and(|v| v.trim() == "1")
}

/// A port that was free a moment ago: bind port 0 on loopback, read it, release it.
fn free_loopback_port() -> Result<u16, String> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| format!("cannot bind a loopback port: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("cannot read the bound port: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_started_server_accepts_connections_and_is_gone_after_drop() {
        let Some(server) = require_or_skip("a_started_server_accepts_connections") else {
            return;
        };
        assert!(server.endpoint().starts_with("http://127.0.0.1:"));
        assert!(server.bucket_dir().is_dir());
        assert_eq!(server.url("a/b/"), "s3://weir-test/a/b");
        assert_eq!(server.url(""), "s3://weir-test");
        let addr: SocketAddr = server.endpoint()["http://".len()..].parse().unwrap();
        TcpStream::connect(addr).expect("server accepts");
        let pid = server.pid();
        drop(server);
        #[cfg(target_os = "linux")]
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} still exists after drop"
        );
    }

    #[test]
    fn a_missing_binary_skips_unless_the_server_is_required() {
        assert!(matches!(S3Server::start_from(None, false), Ok(None)));
        let err = S3Server::start_from(None, true).unwrap_err();
        assert!(err.contains("WEIR_REQUIRE_S3=1"), "{err}");
        assert!(err.contains("scripts/install-s3-server.sh"), "{err}");
    }

    #[test]
    fn a_binary_that_exits_at_once_is_an_error_naming_it() {
        let err = S3Server::start_from(Some(PathBuf::from("/bin/false")), true).unwrap_err();
        assert!(
            err.contains("/bin/false") && err.contains("did not start"),
            "{err}"
        );
    }

    #[test]
    fn two_servers_run_side_by_side_on_different_ports() {
        let (Some(a), Some(b)) = (
            require_or_skip("two_servers_run_side_by_side (a)"),
            require_or_skip("two_servers_run_side_by_side (b)"),
        ) else {
            return;
        };
        assert_ne!(a.endpoint(), b.endpoint());
        assert_ne!(a.bucket_dir(), b.bucket_dir());
    }
}
