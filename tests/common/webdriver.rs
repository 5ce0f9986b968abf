//! A headless Chromium driven over WebDriver: Debian's `chromedriver` on a loopback port the OS
//! picked, spoken to with plain HTTP/1.1 and JSON (the few commands the UI tests need).
//!
//! `Browser::start` answers `None` (after printing `SKIPPED …`) when chromium or chromedriver
//! is not installed, unless `WEIR_REQUIRE_BROWSER=1` (set by `scripts/test.sh`, which installs
//! them), which makes that a failure.

use super::procs::Proc;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The W3C name of an element reference in answers.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub struct Browser {
    _driver: Proc,
    port: u16,
    session: String,
    _profile: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// One HTTP/1.1 exchange with `127.0.0.1:port`; the JSON body of the answer.
fn http(port: u16, method: &str, path: &str, body: Option<&Value>) -> Result<Value, String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(60))).ok();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| e.to_string())?;
    // chromedriver keeps the connection open: read the head, then Content-Length bytes.
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut byte).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err(format!("{method} {path}: the connection closed mid-answer"));
        }
        raw.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&raw).to_string();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .ok_or_else(|| format!("{method} {path}: no Content-Length in {head}"))?;
    let mut body = vec![0u8; length];
    s.read_exact(&mut body).map_err(|e| e.to_string())?;
    let value: Value = serde_json::from_slice(&body).map_err(|e| {
        format!(
            "{method} {path}: {e}: {head}{}",
            String::from_utf8_lossy(&body)
        )
    })?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("{method} {path}: {head}: {value}"));
    }
    Ok(value)
}

impl Browser {
    /// A fresh headless Chromium (its own profile), or `None` when none is installed and none
    /// is required.
    pub fn start() -> Option<Self> {
        let missing: Vec<&str> = [CHROMIUM, CHROMEDRIVER]
            .into_iter()
            .filter(|p| !Path::new(p).exists())
            .collect();
        if !missing.is_empty() {
            let required = std::env::var("WEIR_REQUIRE_BROWSER").is_ok_and(|v| v == "1");
            assert!(
                !required,
                "WEIR_REQUIRE_BROWSER=1 but {missing:?} is not installed (scripts/install-test-tools.sh installs Debian's chromium and chromium-driver)"
            );
            println!("SKIPPED: {missing:?} not installed (scripts/install-test-tools.sh)");
            return None;
        }
        let port = free_port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let driver = Proc {
            name: "chromedriver".into(),
            child,
        };
        let until = Instant::now() + Duration::from_secs(20);
        while http(port, "GET", "/status", None)
            .map(|v| v["value"]["ready"] != json!(true))
            .unwrap_or(true)
        {
            assert!(
                Instant::now() < until,
                "chromedriver is not ready after 20 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let profile = tempfile::tempdir().expect("profile dir");
        // Without the background-networking flags Chromium keeps dialling Google's hosts,
        // which a closed network refuses.
        let args = vec![
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            "--window-size=1400,1800".into(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let session = http(
            port,
            "POST",
            "/session",
            Some(&json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {"binary": CHROMIUM, "args": args}
            }}})),
        )
        .expect("a browser session");
        let session = session["value"]["sessionId"]
            .as_str()
            .expect("a session id")
            .to_string();
        Some(Self {
            _driver: driver,
            port,
            session,
            _profile: profile,
        })
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let path = format!("/session/{}{path}", self.session);
        http(self.port, method, &path, body.as_ref()).unwrap_or_else(|e| panic!("WebDriver: {e}"))
            ["value"]
            .take()
    }

    pub fn goto(&self, url: &str) {
        self.call("POST", "/url", Some(json!({ "url": url })));
    }

    /// Elements matching the CSS `selector`, as WebDriver references.
    pub fn find_all(&self, selector: &str) -> Vec<String> {
        let found = self.call(
            "POST",
            "/elements",
            Some(json!({"using": "css selector", "value": selector})),
        );
        found
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e[ELEMENT].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn text(&self, element: &str) -> String {
        self.call("GET", &format!("/element/{element}/text"), None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    pub fn attribute(&self, element: &str, name: &str) -> Option<String> {
        self.call("GET", &format!("/element/{element}/attribute/{name}"), None)
            .as_str()
            .map(str::to_string)
    }

    pub fn click(&self, element: &str) {
        self.call(
            "POST",
            &format!("/element/{element}/click"),
            Some(json!({})),
        );
    }

    /// The text of every element matching `selector`, once `ok` holds for them (re-read every
    /// 100 ms: the page refreshes itself every second), or a panic naming `what`.
    pub fn wait_for(
        &self,
        what: &str,
        selector: &str,
        deadline: Duration,
        ok: impl Fn(&[String]) -> bool,
    ) -> Vec<String> {
        let until = Instant::now() + deadline;
        let mut texts = Vec::new();
        while Instant::now() < until {
            // An element the page replaced between listing and reading is read again next time.
            texts = self
                .find_all(selector)
                .iter()
                .filter_map(|e| {
                    let path = format!("/session/{}/element/{e}/text", self.session);
                    http(self.port, "GET", &path, None)
                        .ok()
                        .and_then(|v| v["value"].as_str().map(str::to_string))
                })
                .collect();
            if ok(&texts) {
                return texts;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let source = self.call("GET", "/source", None);
        let source = source.as_str().unwrap_or_default();
        let url = self.call("GET", "/url", None).to_string();
        // A `#token=` address must not reach a log.
        let url = url.split("#token=").next().unwrap_or_default();
        panic!(
            "the UI never showed {what} ({selector}): {texts:?}\nat {url}, the page was:\n{}",
            &source[..source.len().min(4000)]
        );
    }

    /// Saves a PNG of the window to `path`.
    pub fn screenshot(&self, path: &Path) {
        let png = self.call("GET", "/screenshot", None);
        let bytes = base64_decode(png.as_str().expect("base64 PNG"));
        std::fs::write(path, bytes).expect("write the screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let path = format!("/session/{}", self.session);
        let _ = http(self.port, "DELETE", &path, None);
    }
}

/// Standard base64 (as WebDriver sends screenshots), without a crate for one function.
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for v in text.bytes().filter_map(value) {
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}
