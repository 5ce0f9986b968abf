//! Storage faults switched on from outside the process: a recovery drill (`weir drill
//! --faults storage-errors,storage-slow`) makes every JobManager and TaskManager of its cluster
//! fail or slow down their checkpoint storage requests for a while, without a misbehaving
//! server.
//!
//! A process opts in once, at start, with [`install`]: a control file and the scope (a
//! [`StorageUrl`], normally `state.checkpoints.dir`). From then on [`crate::open_store`] wraps
//! every store it opens inside that scope in a [`crate::FaultyStore`] that reads the control
//! file (at most every [`POLL_INTERVAL`]) and, while it says so, fails puts, gets and deletes
//! with a given probability or delays them. Stores outside the scope (the high-availability
//! folder, savepoint targets) are never touched.
//!
//! The control file holds one setting per line ([`StorageFaults::parse`]):
//!
//! ```text
//! errors 0.3      # each put, get or delete fails with probability 0.3 (before it is sent)
//! delay 400ms     # each put, get or delete waits 400 ms first
//! ```
//!
//! A missing or empty file means no faults. An unreadable or malformed file also means no
//! faults, logged once per change, so a half-written control file can never fail a job.
//! Injected failures look like network failures ([`crate::InjectedFault`]), so the store's
//! retries apply to them as they would to real ones.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::url::StorageUrl;

/// How often a store re-reads the control file.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// The most of the control file that is read: a path naming something endless (a device, a
/// huge file) must not take the process's memory.
const MAX_CONTROL_BYTES: u64 = 4096;

/// The faults the control file asks for now.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StorageFaults {
    /// The probability, from 0 to 1, that a put, get or delete fails.
    pub error_rate: f64,
    /// How long each put, get or delete waits before it is sent.
    pub delay: Duration,
}

impl StorageFaults {
    /// Whether these faults change anything.
    pub fn is_none(&self) -> bool {
        self.error_rate <= 0.0 && self.delay.is_zero()
    }

    /// Reads a control file's text: `errors <0..1>` and `delay <n>ms|<n>s` lines, blank lines
    /// and `#` comments; `Err` names the line that is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut out = Self::default();
        for (n, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let bad = |why: &str| format!("line {}: '{raw}': {why}", n + 1);
            let (key, value) = line
                .split_once(char::is_whitespace)
                .ok_or_else(|| bad("expected `errors <rate>` or `delay <duration>`"))?;
            let value = value.trim();
            match key {
                "errors" => {
                    let rate: f64 = value.parse().map_err(|_| bad("not a number"))?;
                    if !(0.0..=1.0).contains(&rate) {
                        return Err(bad("the rate must be between 0 and 1"));
                    }
                    out.error_rate = rate;
                }
                "delay" => {
                    out.delay =
                        parse_delay(value).ok_or_else(|| bad("expected e.g. 400ms or 2s"))?
                }
                _ => return Err(bad("unknown setting (known: errors, delay)")),
            }
        }
        Ok(out)
    }

    /// The control file text that [`parse`](Self::parse) reads back as `self`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if self.error_rate > 0.0 {
            out.push_str(&format!("errors {}\n", self.error_rate));
        }
        if !self.delay.is_zero() {
            out.push_str(&format!("delay {}ms\n", self.delay.as_millis()));
        }
        out
    }
}

fn parse_delay(v: &str) -> Option<Duration> {
    let (digits, unit) = match v.strip_suffix("ms") {
        Some(d) => (d, 1),
        None => (v.strip_suffix('s')?, 1000),
    };
    let n: u64 = digits.trim().parse().ok()?;
    n.checked_mul(unit).map(Duration::from_millis)
}

/// Writes `faults` to the control file at `path` so that readers see the old or the new
/// content, never a torn one (a temporary file renamed over it).
pub fn write_control_file(path: &Path, faults: &StorageFaults) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, faults.render())?;
    std::fs::rename(&tmp, path)
}

/// This process's fault switch: the control file, the scope, and what was last read.
#[derive(Debug)]
pub struct FaultControl {
    file: PathBuf,
    scope: String,
    cached: Mutex<Cached>,
    draws: AtomicU64,
    seed: u64,
}

#[derive(Debug)]
struct Cached {
    read_at: Option<Instant>,
    faults: StorageFaults,
    /// The last problem logged, so a bad file is reported once, not per request.
    problem: Option<String>,
}

static CONTROL: OnceLock<Arc<FaultControl>> = OnceLock::new();

/// Why [`install`] refused.
#[derive(Debug, thiserror::Error)]
#[error("storage fault control is already installed (control file '{0}')")]
pub struct AlreadyInstalled(pub PathBuf);

/// Switches this process's storage faults to the control file `file`, for the stores that
/// [`crate::open_store`] opens inside `scope` from now on. Once per process.
pub fn install(file: PathBuf, scope: &StorageUrl) -> Result<(), AlreadyInstalled> {
    let control = Arc::new(FaultControl::new(file, scope));
    CONTROL
        .set(control)
        .map_err(|c| AlreadyInstalled(c.file.clone()))?;
    tracing::warn!(
        scope = %scope,
        "storage fault injection is installed: checkpoint storage requests fail or slow down \
         when the control file says so"
    );
    Ok(())
}

/// The installed control, if `url` lies inside its scope.
pub(crate) fn for_url(url: &StorageUrl) -> Option<Arc<FaultControl>> {
    let control = CONTROL.get()?;
    within(&url.to_string(), &control.scope).then(|| Arc::clone(control))
}

/// The control file's text, refused when longer than [`MAX_CONTROL_BYTES`].
fn read_bounded(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(MAX_CONTROL_BYTES + 1)
        .read_to_string(&mut text)?;
    if text.len() as u64 > MAX_CONTROL_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("longer than {MAX_CONTROL_BYTES} bytes"),
        ));
    }
    Ok(text)
}

/// Whether the URL `url` is `scope` or below it.
fn within(url: &str, scope: &str) -> bool {
    let scope = scope.trim_end_matches('/');
    url.strip_prefix(scope)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

impl FaultControl {
    /// A control reading `file` for the stores inside `scope`.
    pub fn new(file: PathBuf, scope: &StorageUrl) -> Self {
        let seed = u64::from(std::process::id())
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
        Self {
            file,
            scope: scope.to_string(),
            cached: Mutex::new(Cached {
                read_at: None,
                faults: StorageFaults::default(),
                problem: None,
            }),
            draws: AtomicU64::new(0),
            seed,
        }
    }

    /// What the control file says now (re-read when the last read is older than
    /// [`POLL_INTERVAL`]).
    pub fn current(&self) -> StorageFaults {
        let mut c = self
            .cached
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if c.read_at.is_some_and(|t| t.elapsed() < POLL_INTERVAL) {
            return c.faults;
        }
        let (faults, problem) = match read_bounded(&self.file) {
            Ok(text) => match StorageFaults::parse(&text) {
                Ok(f) => (f, None),
                Err(e) => (StorageFaults::default(), Some(e)),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (StorageFaults::default(), None),
            Err(e) => (StorageFaults::default(), Some(e.to_string())),
        };
        if problem.is_some() && problem != c.problem {
            tracing::warn!(
                file = %self.file.display(),
                problem = problem.as_deref().unwrap_or_default(),
                "ignoring the storage fault control file"
            );
        }
        if faults != c.faults {
            tracing::info!(
                error_rate = faults.error_rate,
                delay_ms = faults.delay.as_millis() as u64,
                "storage faults changed"
            );
        }
        *c = Cached {
            read_at: Some(Instant::now()),
            faults,
            problem,
        };
        faults
    }

    /// Whether the next request fails, at the current error rate.
    pub(crate) fn draw_failure(&self, rate: f64) -> bool {
        if rate <= 0.0 {
            return false;
        }
        let n = self.draws.fetch_add(1, Ordering::Relaxed);
        let mut z = self
            .seed
            .wrapping_add(n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        // The top 53 bits as a uniform number in [0, 1).
        ((z >> 11) as f64 / (1u64 << 53) as f64) < rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_control_file_reads_back_what_was_rendered_and_names_a_bad_line() {
        let f = StorageFaults {
            error_rate: 0.25,
            delay: Duration::from_millis(400),
        };
        assert_eq!(StorageFaults::parse(&f.render()).unwrap(), f);
        assert!(StorageFaults::parse("").unwrap().is_none());
        assert_eq!(
            StorageFaults::parse("# drill\n\ndelay 2s\n").unwrap().delay,
            Duration::from_secs(2)
        );
        let err = StorageFaults::parse("errors 0.1\nerrors 7\n").unwrap_err();
        assert!(
            err.contains("line 2") && err.contains("between 0 and 1"),
            "{err}"
        );
        let err = StorageFaults::parse("explode now").unwrap_err();
        assert!(err.contains("unknown setting"), "{err}");
        assert!(StorageFaults::parse("delay soon").is_err());
        assert!(StorageFaults::parse("errors").is_err());
    }

    #[test]
    fn only_urls_at_or_below_the_scope_are_inside_it() {
        assert!(within("file:///d/checkpoints", "file:///d/checkpoints"));
        assert!(within(
            "file:///d/checkpoints/job",
            "file:///d/checkpoints/"
        ));
        assert!(!within("file:///d/checkpoints2", "file:///d/checkpoints"));
        assert!(!within("file:///d/ha", "file:///d/checkpoints"));
    }

    #[test]
    fn the_control_follows_the_file_and_treats_a_bad_or_missing_one_as_no_faults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("faults");
        let scope = StorageUrl::parse("memory://scope").unwrap();
        let control = FaultControl::new(file.clone(), &scope);
        assert!(control.current().is_none());
        write_control_file(
            &file,
            &StorageFaults {
                error_rate: 1.0,
                delay: Duration::ZERO,
            },
        )
        .unwrap();
        std::thread::sleep(POLL_INTERVAL + Duration::from_millis(20));
        assert_eq!(control.current().error_rate, 1.0);
        assert!(control.draw_failure(1.0));
        assert!(!control.draw_failure(0.0));
        std::fs::write(&file, "errors lots\n").unwrap();
        std::thread::sleep(POLL_INTERVAL + Duration::from_millis(20));
        assert!(control.current().is_none());
        // Valid lines padded past the size bound: refused whole, not read without end.
        let mut huge = String::from("errors 1\n");
        huge.push_str(&"# padding\n".repeat(1000));
        std::fs::write(&file, huge).unwrap();
        std::thread::sleep(POLL_INTERVAL + Duration::from_millis(20));
        assert!(control.current().is_none());
        // A device that never ends is read only up to the bound.
        let endless = FaultControl::new(PathBuf::from("/dev/zero"), &scope);
        assert!(endless.current().is_none());
    }

    #[test]
    fn failures_are_drawn_at_about_the_asked_rate() {
        let scope = StorageUrl::parse("memory://scope").unwrap();
        let control = FaultControl::new(PathBuf::from("/nonexistent"), &scope);
        let failed = (0..10_000).filter(|_| control.draw_failure(0.3)).count();
        assert!((2_700..3_300).contains(&failed), "{failed} of 10000");
    }
}
