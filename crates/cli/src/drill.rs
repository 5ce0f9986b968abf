//! `weir drill`: a recovery drill as a command (DESIGN §6). It starts a cluster of its own —
//! `weir jobmanager`s sharing a high-availability folder and `weir taskmanager`s, all child
//! processes of this one on loopback — runs the job once without faults as the reference,
//! then again while it injects faults on a schedule drawn from the seed, and checks:
//!
//! - **output**: the committed output lines equal the reference's, as a multiset (no line
//!   lost, none duplicated; an aborted transaction's output is never committed, so it would
//!   show as a duplicate or a stranger);
//! - **checkpoint ids**: every completed checkpoint id the JobManagers reported, in the order
//!   they were first seen, rises strictly (also across a JobManager takeover);
//! - **orphans**: once the JobMaster reports it is done with the folder, every file in the
//!   job's checkpoint folder (both jobs' after a savepoint round trip) belongs to a retained
//!   checkpoint (named by its `_metadata`), or is `_metadata` or a lease.
//!
//! Faults: `kill-tm` (SIGKILL of a TaskManager that runs tasks, then a replacement starts),
//! `stop-tm` (SIGSTOP until the heartbeat timeout has passed, then SIGCONT), `kill-jm` (SIGKILL
//! of the leading JobManager, then a replacement standby starts on a port the TaskManagers
//! already know), `kill-during-recovery` (a TaskManager killed, and another one as soon as the
//! job is restarting), `storage-errors` (for [`STORAGE_FAULT_WINDOW`], every checkpoint storage
//! put, get and delete of every member fails with probability [`STORAGE_ERROR_RATE`] before
//! the store's own retries), `storage-slow` (for the same window, each of them waits
//! [`STORAGE_DELAY`] first). Storage faults go through a control file that every member reads
//! (`storage.fault-injection.control-file`, `weir_storage::control`). With
//! `--savepoint-round-trip`, halfway through the faults the job stops with a savepoint and
//! resumes from it at another parallelism ([`RoundTrip`]).
//!
//! Per fault the report says when the sources' one-second rate was back to 90 % of the
//! reference run's ([`caught_up_after`]). The pure parts — the schedule, the output comparison,
//! the id check, the orphan check and the rates — are functions with unit tests; the processes
//! are at the edge.

use crate::catalog::Catalog;
use crate::cluster::{connect, io_runtime, JobView};
use crate::commands::{resolve_job, Failure};
use crate::config::Config;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use weir_proto::v1;

/// A fault the drill can inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Fault {
    KillTm,
    StopTm,
    KillJm,
    KillDuringRecovery,
    StorageErrors,
    StorageSlow,
}

impl Fault {
    const ALL: [Fault; 6] = [
        Fault::KillTm,
        Fault::StopTm,
        Fault::KillJm,
        Fault::KillDuringRecovery,
        Fault::StorageErrors,
        Fault::StorageSlow,
    ];

    /// Whether the fault hits TaskManager processes only (what the drill can do to a cluster
    /// it did not start).
    fn hits_a_taskmanager(self) -> bool {
        matches!(
            self,
            Fault::KillTm | Fault::StopTm | Fault::KillDuringRecovery
        )
    }

    fn name(self) -> &'static str {
        match self {
            Fault::KillTm => "kill-tm",
            Fault::StopTm => "stop-tm",
            Fault::KillJm => "kill-jm",
            Fault::KillDuringRecovery => "kill-during-recovery",
            Fault::StorageErrors => "storage-errors",
            Fault::StorageSlow => "storage-slow",
        }
    }

    /// Parses `--faults`: comma-separated names, each known.
    pub(crate) fn parse_list(s: &str) -> Result<Vec<Fault>, String> {
        let mut out = Vec::new();
        for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let fault = Fault::ALL
                .into_iter()
                .find(|f| f.name() == name)
                .ok_or_else(|| {
                    let known: Vec<&str> = Fault::ALL.iter().map(|f| f.name()).collect();
                    format!(
                        "--faults: unknown fault '{name}' (known: {})",
                        known.join(", ")
                    )
                })?;
            if !out.contains(&fault) {
                out.push(fault);
            }
        }
        if out.is_empty() {
            return Err("--faults names no fault".into());
        }
        Ok(out)
    }
}

/// A deterministic generator (splitmix64): the same seed draws the same schedule.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// One planned fault: which, and a draw that picks its target among those available then.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Planned {
    pub fault: Fault,
    pub target_draw: u64,
}

/// The schedule of `rounds` faults drawn from `faults` by `seed`.
pub(crate) fn schedule(faults: &[Fault], rounds: u32, seed: u64) -> Vec<Planned> {
    let mut rng = SplitMix(seed);
    (0..rounds)
        .map(|_| Planned {
            fault: faults[(rng.next() % faults.len() as u64) as usize],
            target_draw: rng.next(),
        })
        .collect()
}

/// The output check: lines of the drill run against the reference, as multisets.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub(crate) struct OutputCheck {
    pub reference_lines: usize,
    pub drill_lines: usize,
    /// Lines the reference has more often than the drill run.
    pub lost: usize,
    /// Lines the drill run has more often than the reference.
    pub duplicated: usize,
    /// A few of the differing lines, for people.
    pub examples: Vec<String>,
}

impl OutputCheck {
    pub(crate) fn passed(&self) -> bool {
        self.lost == 0 && self.duplicated == 0
    }
}

/// Compares two outputs as multisets of lines.
pub(crate) fn compare_outputs(reference: &[String], drill: &[String]) -> OutputCheck {
    let mut counts: BTreeMap<&str, i64> = BTreeMap::new();
    for l in reference {
        *counts.entry(l).or_default() += 1;
    }
    for l in drill {
        *counts.entry(l).or_default() -= 1;
    }
    let mut check = OutputCheck {
        reference_lines: reference.len(),
        drill_lines: drill.len(),
        ..OutputCheck::default()
    };
    for (line, n) in counts {
        match n {
            0 => continue,
            n if n > 0 => check.lost += n as usize,
            n => check.duplicated += n.unsigned_abs() as usize,
        }
        if check.examples.len() < 5 {
            let what = if n > 0 { "lost" } else { "extra" };
            check.examples.push(format!("{what}: {line}"));
        }
    }
    check
}

/// Completed checkpoint ids in the order they were first seen must rise strictly; `Err` names
/// the first that did not.
pub(crate) fn ids_rising(first_seen: &[u64]) -> Result<(), String> {
    for pair in first_seen.windows(2) {
        if pair[1] <= pair[0] {
            return Err(format!(
                "checkpoint {} completed after checkpoint {}",
                pair[1], pair[0]
            ));
        }
    }
    Ok(())
}

/// The files of a job's checkpoint folder (relative paths) that no retained checkpoint names:
/// `referenced` holds the paths every retained `_metadata` references, relative to the folder.
pub(crate) fn orphans(listed: &[String], referenced: &BTreeSet<String>) -> Vec<String> {
    listed
        .iter()
        .filter(|p| {
            let name = p.rsplit('/').next().unwrap_or(p);
            !(name == weir_checkpoint::METADATA_FILE_NAME
                || p.starts_with("_lease/")
                || p.starts_with("_probe")
                || referenced.contains(p.as_str()))
        })
        .cloned()
        .collect()
}

/// A `(time since submission in ms, records the sources emitted)` sample of a run.
pub(crate) type Sample = (u64, u64);

/// The window a live rate is measured over.
const RATE_WINDOW_MS: u64 = 1000;

/// Records per second over the window of `RATE_WINDOW_MS` ending at `t`, from the samples at
/// or before each end of it; `None` before two samples span it.
fn rate_at(samples: &[Sample], t: u64) -> Option<f64> {
    let at = |when: u64| samples.iter().rev().find(|(ms, _)| *ms <= when).copied();
    let (t0, c0) = at(t.checked_sub(RATE_WINDOW_MS)?)?;
    let (t1, c1) = at(t)?;
    (t1 > t0).then(|| c1.saturating_sub(c0) as f64 * 1000.0 / (t1 - t0) as f64)
}

/// The run's baseline rate: the median of its one-second rates while records flowed.
pub(crate) fn baseline_rate(samples: &[Sample]) -> Option<f64> {
    let mut rates: Vec<f64> = samples
        .iter()
        .filter_map(|&(t, _)| rate_at(samples, t))
        .filter(|r| *r > 0.0)
        .collect();
    if rates.is_empty() {
        return None;
    }
    rates.sort_by(f64::total_cmp);
    Some(rates[rates.len() / 2])
}

/// How long after `from` (ms) the one-second rate first reached 90 % of `baseline` again,
/// looking no further than `until`; `None` if it did not. The window must lie wholly after
/// `from`, so a fault that cost nothing reports one window (1000 ms).
pub(crate) fn caught_up_after(
    samples: &[Sample],
    baseline: f64,
    from: u64,
    until: u64,
) -> Option<u64> {
    samples
        .iter()
        .map(|&(t, _)| t)
        .filter(|&t| t >= from + RATE_WINDOW_MS && t <= until)
        .find(|&t| rate_at(samples, t).is_some_and(|r| r >= 0.9 * baseline))
        .map(|t| t - from)
}

/// How long a storage fault lasts.
const STORAGE_FAULT_WINDOW: Duration = Duration::from_secs(2);
/// The failure probability of each storage request during `storage-errors`.
const STORAGE_ERROR_RATE: f64 = 0.5;
/// The wait before each storage request during `storage-slow`.
const STORAGE_DELAY: Duration = Duration::from_millis(300);

/// Savepoint round trips tried before the drill gives up.
const MAX_ROUND_TRIP_TRIES: u32 = 10;

/// How long the drill waits for the JobMaster's cleanup after the job ended.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(60);

/// Longest the reference run may take before the drill gives up on it.
const REFERENCE_DEADLINE: Duration = Duration::from_secs(3600);

/// How a drill runs.
pub(crate) struct DrillOptions {
    pub job: String,
    pub parallelism: Option<u32>,
    pub params: Vec<String>,
    pub taskmanagers: u32,
    pub jobmanagers: u32,
    pub faults: Vec<Fault>,
    pub rounds: u32,
    pub interval: Duration,
    pub seed: u64,
    pub json: bool,
    /// `--savepoint-round-trip`.
    pub savepoint_round_trip: bool,
    /// `--jobmanager`: drill a running cluster on this host instead of starting one.
    pub jobmanager: Option<String>,
    /// `--config`/`-D` arguments for the children.
    pub forward: Vec<String>,
}

/// One injected fault, as it happened.
#[derive(Debug, serde::Serialize)]
struct Injected {
    /// A [`Fault`]'s name, or `savepoint-round-trip`.
    fault: &'static str,
    target: String,
    /// Since the drill run's submission.
    at_ms: u64,
    /// How long injecting it took (a pause or a storage fault lasts a while).
    lasted_ms: u64,
    /// From the injection until the sources' one-second rate was back to 90 % of the reference
    /// run's; `None` if not before the next fault or the end.
    caught_up_ms: Option<u64>,
}

/// Child processes of the drill, killed and reaped when dropped.
struct Members {
    exe: PathBuf,
    scratch: PathBuf,
    forward: Vec<String>,
    /// `(rpc port, rest port, process)` per JobManager slot; spare slots start empty.
    jms: Vec<(u16, u16, Option<Child>)>,
    /// The storage fault control file every member reads.
    storage_faults: PathBuf,
    /// How long `stop-tm` pauses a TaskManager: past the heartbeat timeout.
    stop_pause: Duration,
    /// `--jobmanager`: the URLs of a cluster the drill did not start (no JobManager or
    /// TaskManager of its own; TaskManagers are found by the pid their JobManager shows).
    external: Option<String>,
    tms: Vec<(String, Child)>,
    next_tm: u32,
    slots: u32,
    /// The cluster's token: handed to every member in its environment, and presented to
    /// their REST ports.
    token: weir_security::Token,
}

fn free_port() -> Result<u16, Failure> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| Failure::Job(format!("cannot find a free port: {e}")))?;
    Ok(l.local_addr()
        .map_err(|e| Failure::Job(e.to_string()))?
        .port())
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn signal(child: &Child, sig: libc::c_int) {
    crate::cluster::signal(child.id(), sig);
}

/// Starts a member (its output to its log, nothing on stdin) that dies with the drill, so a
/// killed drill leaves no cluster behind.
fn spawn_member(mut cmd: Command, what: &str) -> Result<Child, Failure> {
    cmd.stdin(Stdio::null()).stdout(Stdio::null());
    crate::cluster::die_with_parent(&mut cmd);
    cmd.spawn()
        .map_err(|e| Failure::Job(format!("cannot start {what}: {e}")))
}

impl Members {
    fn rpc_urls(&self) -> String {
        if let Some(urls) = &self.external {
            return urls.clone();
        }
        self.jms
            .iter()
            .map(|(rpc, _, _)| format!("http://127.0.0.1:{rpc}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn start_jm(&mut self, i: usize) -> Result<(), Failure> {
        let (rpc, rest, _) = self.jms[i];
        let log = std::fs::File::create(self.scratch.join(format!("jobmanager-{i}.log")))
            .map_err(|e| Failure::Job(format!("cannot write the drill's logs: {e}")))?;
        let ha = format!(
            "high-availability.storageDir=file://{}",
            self.scratch.join("ha").display()
        );
        let mut cmd = Command::new(&self.exe);
        cmd.args(["jobmanager", "--rpc-bind"])
            .arg(format!("127.0.0.1:{rpc}"))
            .arg("--rest-bind")
            .arg(format!("127.0.0.1:{rest}"))
            .args(&self.forward)
            .args(["-D", "high-availability.type=storage", "-D", &ha])
            .env("WEIR_SECURITY_AUTH_TOKEN", self.token.expose())
            .env("WEIR_LOG", "info")
            .stderr(log);
        self.jms[i].2 = Some(spawn_member(cmd, "a JobManager")?);
        Ok(())
    }

    fn start_tm(&mut self) -> Result<String, Failure> {
        let id = format!("drill-tm-{}", self.next_tm);
        self.next_tm += 1;
        let log = std::fs::File::create(self.scratch.join(format!("{id}.log")))
            .map_err(|e| Failure::Job(format!("cannot write the drill's logs: {e}")))?;
        let mut cmd = Command::new(&self.exe);
        cmd.args(["taskmanager", "--jobmanager", &self.rpc_urls(), "--id", &id])
            .arg("--slots")
            .arg(self.slots.to_string())
            .arg("--state-dir")
            .arg(self.scratch.join(&id))
            .args(&self.forward)
            .env("WEIR_SECURITY_AUTH_TOKEN", self.token.expose())
            .env("WEIR_LOG", "warn")
            .stderr(log);
        self.tms
            .push((id.clone(), spawn_member(cmd, "a TaskManager")?));
        Ok(id)
    }

    /// The REST address of the JobManager that leads, if one answers as leader.
    fn leader(&self) -> Option<usize> {
        (0..self.jms.len()).find(|&i| {
            self.jms[i].2.is_some() && rest_get(self.jms[i].1, "/overview", &self.token).is_some()
        })
    }
}

impl Drop for Members {
    fn drop(&mut self) {
        for (_, child) in &mut self.tms {
            signal(child, libc::SIGCONT);
            kill(child);
        }
        for (_, _, child) in &mut self.jms {
            if let Some(c) = child {
                kill(c);
            }
        }
    }
}

/// `GET path` on a local REST port, with the token; the body when the answer is 200.
fn rest_get(port: u16, path: &str, token: &weir_security::Token) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {}\r\nConnection: close\r\n\r\n",
        token.bearer()
    )
    .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    if !body.starts_with("HTTP/1.1 200") {
        return None;
    }
    Some(
        body.split("\r\n\r\n")
            .nth(1)
            .unwrap_or_default()
            .to_string(),
    )
}

/// Every line of every committed `part-*` file below `dir`.
fn committed_lines(dir: &Path) -> Vec<String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("part-"))
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
        .iter()
        .flat_map(|p| {
            std::fs::read_to_string(p)
                .unwrap_or_default()
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Every file below `dir`, relative, `/`-separated.
fn list_files(dir: &Path, prefix: &str, out: &mut Vec<String>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let rel = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        if e.path().is_dir() {
            list_files(&e.path(), &rel, out);
        } else {
            out.push(rel);
        }
    }
}

/// The files the retained checkpoints of the job folder `dir` reference, relative to it.
fn referenced_files(dir: &Path) -> Result<BTreeSet<String>, String> {
    let mut out = BTreeSet::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Ok(out);
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let metadata = e.path().join(weir_checkpoint::METADATA_FILE_NAME);
        if !name.starts_with("chk-") || !metadata.exists() {
            continue;
        }
        let bytes = std::fs::read(&metadata)
            .map_err(|err| format!("cannot read {}: {err}", metadata.display()))?;
        let m = weir_checkpoint::CheckpointMetadata::decode(&bytes)
            .map_err(|err| format!("{}: {err}", metadata.display()))?;
        // Handle paths are relative to the job's folder (`chk-<n>/…` or `shared/…`).
        out.extend(m.files().map(|f| f.path().to_string()));
    }
    Ok(out)
}

/// What one run of the job ended with.
struct RunEnd {
    view: JobView,
    /// The job's ids, in order: one, or two after a savepoint round trip.
    job_ids: Vec<String>,
    lines: Vec<String>,
    /// Completed checkpoint ids in the order first seen.
    ids: Vec<u64>,
    injected: Vec<Injected>,
    /// The sources' progress over the run.
    samples: Vec<Sample>,
    /// Every recovery any leader reported during the run, in the order they were detected (a
    /// new leader knows only its own).
    recoveries: Vec<weir_jobmanager::RecoveryRecord>,
    /// Every completed checkpoint any leader reported, by id.
    checkpoints: BTreeMap<u64, weir_coordination::driver::CheckpointRecord>,
    /// The submission, in ms since the Unix epoch (what recovery and checkpoint times use).
    submitted_wall_ms: u64,
}

impl RunEnd {
    /// Per recovery, the records the sources emitted again: those between the restored
    /// checkpoint's trigger and the failure's detection, from the progress samples (`None`
    /// when a sample is missing or a new leader's count started over in between).
    fn replayed(&self) -> Vec<Option<u64>> {
        self.recoveries
            .iter()
            .map(|r| {
                let trigger = self.checkpoints.get(&r.restored_checkpoint?.0)?.trigger_ms;
                let since = |wall: u64| wall.checked_sub(self.submitted_wall_ms);
                records_between(&self.samples, since(trigger)?, since(r.detected_ms)?)
            })
            .collect()
    }
}

/// The records the sources emitted from `from` to `to` (ms since submission), by the last
/// samples at or before each; `None` without such samples, or when the count fell in between
/// (a new leader counts from zero).
pub(crate) fn records_between(samples: &[Sample], from: u64, to: u64) -> Option<u64> {
    let at = |t: u64| samples.iter().rev().find(|(ms, _)| *ms <= t).map(|s| s.1);
    let (a, b) = (at(from)?, at(to)?);
    let monotone = samples
        .windows(2)
        .filter(|w| w[1].0 > from && w[1].0 <= to)
        .all(|w| w[1].1 >= w[0].1);
    (monotone && b >= a).then(|| b - a)
}

/// The median and the largest of `values` (`None` when empty).
fn median_max(mut values: Vec<u64>) -> Option<(u64, u64)> {
    values.sort_unstable();
    Some((*values.get(values.len() / 2)?, *values.last()?))
}

/// Runs `weir drill`.
pub(crate) fn drill_command(
    catalog: &Catalog,
    config: &Config,
    options: &DrillOptions,
) -> Result<(), Failure> {
    if options.rounds == 0 {
        return Err(Failure::Usage("--rounds must be at least 1".into()));
    }
    if options.jobmanager.is_some() {
        if let Some(f) = options.faults.iter().find(|f| !f.hits_a_taskmanager()) {
            return Err(Failure::Usage(format!(
                "--faults {} needs the drill's own cluster (without --jobmanager): it restarts \
                 JobManagers or configures every member's storage; on an existing cluster the \
                 drill injects kill-tm, stop-tm and kill-during-recovery",
                f.name()
            )));
        }
    }
    if options.faults.contains(&Fault::KillJm) && options.jobmanagers < 2 {
        return Err(Failure::Usage(
            "--faults kill-jm needs --jobmanagers 2 or more (a standby to take over)".into(),
        ));
    }
    let entry = catalog
        .get(&options.job)
        .ok_or_else(|| Failure::Usage(format!("unknown job '{}'", options.job)))?;
    if !entry.params.iter().any(|p| p.name == "output") {
        return Err(Failure::Usage(format!(
            "job '{}' has no `output` parameter: the drill compares committed output",
            options.job
        )));
    }
    if options.params.iter().any(|p| p.starts_with("output=")) {
        return Err(Failure::Usage(
            "--param output is the drill's own: it writes each run's output itself".into(),
        ));
    }
    let scratch = config
        .state_dir
        .join(format!("drill-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)
        .map_err(|e| Failure::Usage(format!("cannot create '{}': {e}", scratch.display())))?;
    let checkpoints = scratch.join("checkpoints");
    // The drill's own settings, on top of the command's `--config`/`-D`.
    let mut own: BTreeMap<String, String> = [
        ("heartbeat.interval", "100ms".to_string()),
        ("heartbeat.timeout", "1s".to_string()),
        ("slot.request.timeout", "30s".to_string()),
        (
            "state.checkpoints.dir",
            format!("file://{}", checkpoints.display()),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    if config.checkpoint_interval.is_none() {
        own.insert("execution.checkpointing.interval".into(), "500ms".into());
    }
    // Unless the job names its own, restarts are immediate and unlimited: a drill counts
    // recoveries, and a growing backoff would make a long drill mostly waiting.
    if config.restart_strategy_type.is_none() {
        own.insert("restart-strategy.type".into(), "fixed-delay".into());
        own.insert(
            "restart-strategy.fixed-delay.attempts".into(),
            "infinite".into(),
        );
        own.insert("restart-strategy.fixed-delay.delay".into(), "100ms".into());
    }
    let mut forward = options.forward.clone();
    for (k, v) in &own {
        forward.push("-D".into());
        forward.push(format!("{k}={v}"));
    }
    let storage_faults = scratch.join("storage-faults");
    forward.push("-D".into());
    forward.push(format!(
        "storage.fault-injection.control-file={}",
        storage_faults.display()
    ));
    let kill_jms = schedule(&options.faults, options.rounds, options.seed)
        .iter()
        .filter(|p| p.fault == Fault::KillJm)
        .count();
    let mut jms = Vec::new();
    for _ in 0..(options.jobmanagers as usize + kill_jms) {
        jms.push((free_port()?, free_port()?, None));
    }
    let probe = resolve_job(
        catalog,
        config,
        &options.job,
        options.parallelism,
        &options.params,
        None,
    )?;
    let needed = probe.plan.slots_needed();
    let slots = needed
        .div_ceil(options.taskmanagers.saturating_sub(1).max(1))
        .max(1);
    let mut members = Members {
        exe: std::env::current_exe()
            .map_err(|e| Failure::Job(format!("cannot find this binary: {e}")))?,
        scratch: scratch.clone(),
        forward: forward.clone(),
        jms,
        storage_faults,
        external: options.jobmanager.clone(),
        stop_pause: if options.jobmanager.is_some() {
            config.heartbeat_timeout + Duration::from_millis(500)
        } else {
            Duration::from_millis(1500)
        },
        tms: Vec::new(),
        next_tm: 0,
        slots,
        token: crate::cluster::auth_token(config)?,
    };
    if let Some(urls) = &options.jobmanager {
        // Someone else's cluster: it must answer now.
        connect(&io_runtime()?, urls)?;
    } else {
        for i in 0..options.jobmanagers as usize {
            members.start_jm(i)?;
        }
        for _ in 0..options.taskmanagers {
            members.start_tm()?;
        }
    }
    let started = Instant::now();
    while members.external.is_none() && members.leader().is_none() {
        if started.elapsed() > Duration::from_secs(30) {
            return Err(Failure::Job(format!(
                "no JobManager leads after 30 s (logs in {})",
                scratch.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let runtime_config = config
        .with_job_config(&own)
        .map_err(|e| Failure::Usage(e.to_string()))?;
    match &options.jobmanager {
        Some(urls) => eprintln!(
            "drill: the cluster at {urls}; killed TaskManagers are not replaced by the drill; seed {}",
            options.seed
        ),
        None => eprintln!(
            "drill: {} JobManager(s), {} TaskManager(s) × {slots} slot(s); seed {}",
            options.jobmanagers, options.taskmanagers, options.seed
        ),
    }
    let reference = run_once(
        catalog,
        &runtime_config,
        options,
        &mut members,
        &scratch.join("reference"),
        &[],
        REFERENCE_DEADLINE,
    )?;
    eprintln!(
        "drill: reference run {:?} with {} output lines",
        reference.view.details.state,
        reference.lines.len()
    );
    let plan = schedule(&options.faults, options.rounds, options.seed);
    // Bounded against a hang, loosely: the reference's time thrice, plus each fault's interval
    // and a minute of recovery.
    let reference_time = Duration::from_millis(reference.view.details.duration_ms);
    let deadline =
        reference_time * 3 + (options.interval + Duration::from_secs(60)) * options.rounds;
    let faulty = run_once(
        catalog,
        &runtime_config,
        options,
        &mut members,
        &scratch.join("drill"),
        &plan,
        deadline,
    )?;
    let mut faulty = faulty;
    if let Some(baseline) = baseline_rate(&reference.samples) {
        let ends: Vec<u64> = faulty
            .injected
            .iter()
            .skip(1)
            .map(|f| f.at_ms)
            .chain([u64::MAX])
            .collect();
        for (f, until) in faulty.injected.iter_mut().zip(ends) {
            f.caught_up_ms = caught_up_after(&faulty.samples, baseline, f.at_ms, until);
        }
    }
    let output = compare_outputs(&reference.lines, &faulty.lines);
    let ids = ids_rising(&faulty.ids);
    let mut orphan_check = Ok(Vec::new());
    for id in &faulty.job_ids {
        let job_dir = checkpoints.join(id);
        let mut listed = Vec::new();
        list_files(&job_dir, "", &mut listed);
        let found = referenced_files(&job_dir).map(|r| orphans(&listed, &r));
        orphan_check = match (orphan_check, found) {
            (Ok(mut all), Ok(o)) => {
                all.extend(o.into_iter().map(|f| format!("{id}/{f}")));
                Ok(all)
            }
            (Err(e), _) | (_, Err(e)) => Err(e),
        };
    }
    let finished = faulty.view.details.state == weir_jobmanager::view::JobState::Finished;
    let orphan_ok = matches!(&orphan_check, Ok(o) if o.is_empty());
    let passed = finished && output.passed() && ids.is_ok() && orphan_ok;
    let report = serde_json::json!({
        "job": options.job,
        "seed": options.seed,
        "passed": passed,
        "faults": faulty.injected,
        "recoveries": faulty
            .recoveries
            .iter()
            .zip(faulty.replayed())
            .map(|(r, replayed)| {
                let mut v = serde_json::to_value(r).unwrap_or_default();
                v["replayed_records"] = serde_json::json!(replayed);
                v
            })
            .collect::<Vec<_>>(),
        "checkpoints_completed": faulty.checkpoints.len(),
        "checkpoint_duration_ms": median_max(faulty.checkpoints.values().map(|c| c.duration_ms).collect())
            .map(|(median, max)| serde_json::json!({ "median": median, "max": max })),
        "checkpoint_size_bytes": median_max(faulty.checkpoints.values().map(|c| c.full_size).collect())
            .map(|(median, max)| serde_json::json!({ "median": median, "max": max })),
        "checks": {
            "finished": { "passed": finished, "state": faulty.view.details.state },
            "output": { "passed": output.passed(), "detail": output },
            "checkpoint_ids_rising": {
                "passed": ids.is_ok(),
                "ids": faulty.ids,
                "detail": ids.as_ref().err(),
            },
            "no_orphaned_files": {
                "passed": orphan_ok,
                "orphans": orphan_check.as_ref().ok(),
                "detail": orphan_check.as_ref().err(),
            },
        },
    });
    if options.json {
        println!("{report}");
    } else {
        print_report(&faulty, &output, &ids, &orphan_check, finished);
    }
    drop(members);
    if passed {
        let _ = std::fs::remove_dir_all(&scratch);
        Ok(())
    } else {
        Err(Failure::Job(format!(
            "the drill failed; replay it with --seed {} (logs and output kept in {})",
            options.seed,
            scratch.display()
        )))
    }
}

/// Submits the job with its output in `out`, injects `plan` (one fault per interval once the
/// first checkpoint completed), and follows it to its end.
fn run_once(
    catalog: &Catalog,
    config: &Config,
    options: &DrillOptions,
    members: &mut Members,
    out: &Path,
    plan: &[Planned],
    deadline: Duration,
) -> Result<RunEnd, Failure> {
    let mut params = options.params.clone();
    params.push(format!("output={}", out.display()));
    let job = resolve_job(
        catalog,
        config,
        &options.job,
        options.parallelism,
        &params,
        None,
    )?;
    let rt = io_runtime()?;
    let urls = members.rpc_urls();
    let mut client = connect(&rt, &urls)?;
    let plan_json = serde_json::to_vec(&job.plan).map_err(|e| Failure::Job(e.to_string()))?;
    let mut job_id = rt
        .block_on(client.submit_job(v1::SubmitJobRequest {
            job: Some(job.spec),
            plan_json,
            ..Default::default()
        }))
        .map_err(|s| Failure::Job(format!("submit: {}", s.message())))?
        .into_inner()
        .job_id;
    let mut job_ids = vec![job_id.clone()];
    // The savepoint round trip comes after half of the faults (retried on the next tick if
    // the job cannot take a savepoint then, e.g. while it restarts).
    let mut round_trip_after = options.savepoint_round_trip.then_some(plan.len() / 2);
    let mut round_trip_tries = 0;
    let submitted = Instant::now();
    let mut ids = Vec::new();
    let mut seen = BTreeSet::new();
    let mut injected = Vec::new();
    let mut next = plan.iter();
    let mut next_at: Option<Instant> = None;
    let mut cleanup_wait: Option<Instant> = None;
    let mut samples: Vec<Sample> = Vec::new();
    let mut recoveries: BTreeMap<(u64, u32), weir_jobmanager::RecoveryRecord> = BTreeMap::new();
    let mut checkpoints = BTreeMap::new();
    let progress = crate::progress::Progress::bar(plan.len() as u64, "faults injected");
    let submitted_wall_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
        .saturating_sub(submitted.elapsed().as_millis() as u64);
    let view = loop {
        if submitted.elapsed() > deadline {
            return Err(Failure::Job(format!(
                "job {job_id} did not end within {deadline:?}"
            )));
        }
        let view = match fetch(&rt, &mut client, &urls, &job_id) {
            Some(v) => v,
            None => {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        samples.push((
            submitted.elapsed().as_millis() as u64,
            view.details.metrics.source_records,
        ));
        progress.at(injected.len() as u64);
        progress.set(format!(
            "faults; job {:?}, {} records, {} recoveries",
            view.details.state,
            view.details.metrics.source_records,
            view.recoveries.recoveries.len()
        ));
        for r in &view.recoveries.recoveries {
            recoveries.insert((r.detected_ms, r.id), r.clone());
        }
        for r in &view.checkpoints.history {
            if r.status == weir_coordination::driver::CheckpointStatus::Completed {
                if seen.insert(r.id.0) {
                    ids.push(r.id.0);
                }
                checkpoints.insert(r.id.0, r.clone());
            }
        }
        if view.details.state.is_terminal() {
            // The JobMaster may still be deleting and sweeping: the folder is checked after.
            if view.details.cleaned_up
                || cleanup_wait.get_or_insert_with(Instant::now).elapsed() > CLEANUP_TIMEOUT
            {
                break view;
            }
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        if next_at.is_none() && !ids.is_empty() {
            next_at = Some(Instant::now() + options.interval);
        }
        if next_at.is_some_and(|t| Instant::now() >= t) && round_trip_after == Some(injected.len())
        {
            let at_ms = submitted.elapsed().as_millis() as u64;
            let step = RoundTrip {
                rt: &rt,
                urls: &urls,
                catalog,
                config,
                options,
                params: &params,
                savepoints: &members.scratch.join("savepoints"),
            };
            match step.run(&mut client, &job_id, &view)? {
                Some((new_id, target)) => {
                    job_id = new_id;
                    job_ids.push(job_id.clone());
                    round_trip_after = None;
                    injected.push(Injected {
                        fault: "savepoint-round-trip",
                        target,
                        at_ms,
                        lasted_ms: (submitted.elapsed().as_millis() as u64).saturating_sub(at_ms),
                        caught_up_ms: None,
                    });
                }
                None if round_trip_tries >= MAX_ROUND_TRIP_TRIES => {
                    return Err(Failure::Job(format!(
                        "the savepoint round trip failed {MAX_ROUND_TRIP_TRIES} times"
                    )));
                }
                None => round_trip_tries += 1,
            }
            next_at = Some(Instant::now() + options.interval);
            continue;
        }
        if next_at.is_some_and(|t| Instant::now() >= t) {
            match next.next() {
                Some(p) => {
                    let at_ms = submitted.elapsed().as_millis() as u64;
                    let target = inject(p, members, &view)?;
                    injected.push(Injected {
                        fault: p.fault.name(),
                        target,
                        at_ms,
                        lasted_ms: (submitted.elapsed().as_millis() as u64).saturating_sub(at_ms),
                        caught_up_ms: None,
                    });
                    next_at = Some(Instant::now() + options.interval);
                }
                None => next_at = Some(Instant::now() + Duration::from_secs(3600)),
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    if injected.len() < plan.len() {
        eprintln!(
            "drill: the job ended after {} of {} faults; give it more records or a shorter --interval",
            injected.len(),
            plan.len()
        );
    }
    Ok(RunEnd {
        view,
        job_ids,
        lines: committed_lines(out),
        ids,
        injected,
        samples,
        recoveries: recoveries.into_values().collect(),
        checkpoints,
        submitted_wall_ms,
    })
}

/// `--savepoint-round-trip`: stop the job with a canonical savepoint, resume it from there at
/// another parallelism, same output.
struct RoundTrip<'a> {
    rt: &'a tokio::runtime::Runtime,
    urls: &'a str,
    catalog: &'a Catalog,
    config: &'a Config,
    options: &'a DrillOptions,
    params: &'a [String],
    savepoints: &'a Path,
}

impl RoundTrip<'_> {
    /// The resumed job's id and what was done; `None` when the job could not take the
    /// savepoint now (it stays running; the drill tries again later).
    fn run(
        &self,
        client: &mut weir_proto::v1::dispatcher_service_client::DispatcherServiceClient<
            weir_security::AuthChannel,
        >,
        job_id: &str,
        view: &JobView,
    ) -> Result<Option<(String, String)>, Failure> {
        use weir_jobmanager::view::{SavepointOperation, SavepointState};
        let target = format!("file://{}", self.savepoints.display());
        let request_id =
            match self
                .rt
                .block_on(client.trigger_savepoint(v1::TriggerSavepointRequest {
                    job_id: job_id.to_string(),
                    target,
                    format: "canonical".into(),
                    stop: true,
                    drain: false,
                })) {
                Ok(r) => r.into_inner().request_id,
                Err(s) => {
                    eprintln!("drill: no savepoint now ({}); trying again", s.message());
                    return Ok(None);
                }
            };
        let started = Instant::now();
        let op: SavepointOperation = loop {
            if started.elapsed() > SAVEPOINT_TIMEOUT {
                return Err(Failure::Job(format!(
                    "savepoint {request_id} of job {job_id} did not end within {SAVEPOINT_TIMEOUT:?}"
                )));
            }
            match self
                .rt
                .block_on(client.get_savepoint(v1::GetSavepointRequest {
                    job_id: job_id.to_string(),
                    request_id,
                })) {
                Ok(r) => {
                    let op: SavepointOperation =
                        serde_json::from_slice(&r.into_inner().status_json)
                            .map_err(|e| Failure::Job(format!("a bad savepoint answer: {e}")))?;
                    if op.status != SavepointState::InProgress {
                        break op;
                    }
                }
                Err(_) => {
                    if let Ok(c) = connect(self.rt, self.urls) {
                        *client = c;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let location = match (op.status, op.location) {
            (SavepointState::Completed, Some(l)) => l,
            _ => {
                eprintln!(
                    "drill: savepoint {request_id} failed ({}); trying again",
                    op.failure_cause.unwrap_or_default()
                );
                return Ok(None);
            }
        };
        // The stopped job ends, and its JobMaster lets go of its folder.
        let started = Instant::now();
        while !fetch(self.rt, client, self.urls, job_id)
            .is_some_and(|v| v.details.state.is_terminal() && v.details.cleaned_up)
        {
            if started.elapsed() > CLEANUP_TIMEOUT {
                return Err(Failure::Job(format!(
                    "job {job_id} did not end after its stop with savepoint {request_id}"
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let p = view
            .details
            .vertices
            .iter()
            .map(|v| v.parallelism)
            .max()
            .unwrap_or(1);
        let p2 = if p > 1 { p - 1 } else { p + 1 };
        let job = resolve_job(
            self.catalog,
            self.config,
            &self.options.job,
            Some(p2),
            self.params,
            None,
        )?;
        let plan_json = serde_json::to_vec(&job.plan).map_err(|e| Failure::Job(e.to_string()))?;
        let new_id = self
            .rt
            .block_on(client.submit_job(v1::SubmitJobRequest {
                job: Some(job.spec),
                plan_json,
                restore_path: location.clone(),
                ..Default::default()
            }))
            .map_err(|s| Failure::Job(format!("resuming from {location}: {}", s.message())))?
            .into_inner()
            .job_id;
        Ok(Some((
            new_id.clone(),
            format!("savepoint {request_id} at p={p}, resumed at p={p2} as job {new_id}"),
        )))
    }
}

/// How long a savepoint of the round trip may take.
const SAVEPOINT_TIMEOUT: Duration = Duration::from_secs(120);

/// The job as the current leader sees it; `None` while no leader knows it.
fn fetch(
    rt: &tokio::runtime::Runtime,
    client: &mut weir_proto::v1::dispatcher_service_client::DispatcherServiceClient<
        weir_security::AuthChannel,
    >,
    urls: &str,
    job_id: &str,
) -> Option<JobView> {
    let answer = rt.block_on(client.get_job(v1::GetJobRequest {
        job_id: job_id.to_string(),
    }));
    match answer {
        Ok(r) => JobView::decode(&r.into_inner()).ok(),
        Err(_) => {
            if let Ok(c) = connect(rt, urls) {
                *client = c;
            }
            None
        }
    }
}

/// The TaskManagers running a subtask of the job now.
fn busy_taskmanagers(view: &JobView) -> Vec<String> {
    let mut out: BTreeSet<String> = BTreeSet::new();
    for v in &view.details.vertices {
        for s in &v.subtasks {
            if let Some(tm) = &s.taskmanager {
                out.insert(tm.clone());
            }
        }
    }
    out.into_iter().collect()
}

/// The running TaskManagers of an external cluster this job uses, with their pids, checked to
/// be `weir taskmanager` processes of this host (never another process that reuses a pid).
fn local_taskmanagers(view: &JobView) -> Vec<(String, u32)> {
    let mut out: BTreeMap<String, u32> = BTreeMap::new();
    for s in view.details.vertices.iter().flat_map(|v| &v.subtasks) {
        if let (Some(tm), Some(pid)) = (&s.taskmanager, s.taskmanager_pid) {
            out.insert(tm.clone(), pid);
        }
    }
    out.into_iter()
        .filter(|(id, pid)| is_taskmanager_process(*pid, id))
        .collect()
}

/// Whether process `pid` of this host is `weir taskmanager` with id `id` (its `--id`, or the
/// default `tm-<pid>`).
fn is_taskmanager_process(pid: u32, id: &str) -> bool {
    let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<String> = raw
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let is_tm = args.iter().any(|a| a == "taskmanager");
    let named = args.windows(2).any(|w| w[0] == "--id" && w[1] == id) || id == format!("tm-{pid}");
    is_tm && named
}

/// Injects a TaskManager fault into a cluster the drill did not start: by pid, no replacement.
fn inject_external(p: &Planned, view: &JobView, pause: Duration) -> String {
    let tms = local_taskmanagers(view);
    if tms.is_empty() {
        return "no TaskManager of this job on this host".into();
    }
    let (id, pid) = &tms[(p.target_draw % tms.len() as u64) as usize];
    match p.fault {
        Fault::StopTm => {
            crate::cluster::signal(*pid, libc::SIGSTOP);
            std::thread::sleep(pause);
            crate::cluster::signal(*pid, libc::SIGCONT);
            format!("{id} (pid {pid})")
        }
        _ => {
            crate::cluster::signal(*pid, libc::SIGKILL);
            format!("{id} (pid {pid}; not replaced)")
        }
    }
}

/// Injects one fault; returns what it hit.
fn inject(p: &Planned, members: &mut Members, view: &JobView) -> Result<String, Failure> {
    if members.external.is_some() {
        return Ok(inject_external(p, view, members.stop_pause));
    }
    let pick_tm = |members: &Members, draw: u64| -> Option<usize> {
        let busy = busy_taskmanagers(view);
        let candidates: Vec<usize> = (0..members.tms.len())
            .filter(|&i| busy.contains(&members.tms[i].0))
            .collect();
        let pool: Vec<usize> = if candidates.is_empty() {
            (0..members.tms.len()).collect()
        } else {
            candidates
        };
        (!pool.is_empty()).then(|| pool[(draw % pool.len() as u64) as usize])
    };
    match p.fault {
        Fault::KillTm | Fault::KillDuringRecovery => {
            let Some(i) = pick_tm(members, p.target_draw) else {
                return Ok("no TaskManager".into());
            };
            let (id, mut child) = members.tms.remove(i);
            kill(&mut child);
            let replacement = members.start_tm()?;
            let mut target = format!("{id} (replaced by {replacement})");
            if p.fault == Fault::KillDuringRecovery {
                // The second kill lands while the job restarts from the first.
                std::thread::sleep(Duration::from_millis(300));
                if let Some(j) = pick_tm(members, p.target_draw >> 7) {
                    let (id2, mut child2) = members.tms.remove(j);
                    kill(&mut child2);
                    let r2 = members.start_tm()?;
                    target.push_str(&format!(", then {id2} (replaced by {r2})"));
                }
            }
            Ok(target)
        }
        Fault::StopTm => {
            let Some(i) = pick_tm(members, p.target_draw) else {
                return Ok("no TaskManager".into());
            };
            signal(&members.tms[i].1, libc::SIGSTOP);
            // Past the heartbeat timeout (1 s): the JobManager declares it lost.
            std::thread::sleep(members.stop_pause);
            signal(&members.tms[i].1, libc::SIGCONT);
            Ok(members.tms[i].0.clone())
        }
        Fault::StorageErrors | Fault::StorageSlow => {
            let faults = if p.fault == Fault::StorageErrors {
                weir_storage::StorageFaults {
                    error_rate: STORAGE_ERROR_RATE,
                    ..Default::default()
                }
            } else {
                weir_storage::StorageFaults {
                    delay: STORAGE_DELAY,
                    ..Default::default()
                }
            };
            let write = |f: &weir_storage::StorageFaults| {
                weir_storage::control::write_control_file(&members.storage_faults, f).map_err(|e| {
                    Failure::Job(format!(
                        "cannot write '{}': {e}",
                        members.storage_faults.display()
                    ))
                })
            };
            write(&faults)?;
            std::thread::sleep(STORAGE_FAULT_WINDOW);
            write(&weir_storage::StorageFaults::default())?;
            Ok(format!(
                "checkpoint storage of every member, {} ms",
                STORAGE_FAULT_WINDOW.as_millis()
            ))
        }
        Fault::KillJm => {
            let Some(leader) = members.leader() else {
                return Ok("no leader".into());
            };
            if let Some(mut c) = members.jms[leader].2.take() {
                kill(&mut c);
            }
            let spare = (0..members.jms.len()).find(|&i| members.jms[i].2.is_none() && i != leader);
            let mut target = format!("jobmanager-{leader}");
            if let Some(s) = spare {
                members.start_jm(s)?;
                target.push_str(&format!(" (standby jobmanager-{s} started)"));
            }
            Ok(target)
        }
    }
}

fn print_report(
    run: &RunEnd,
    output: &OutputCheck,
    ids: &Result<(), String>,
    orphans: &Result<Vec<String>, String>,
    finished: bool,
) {
    println!("fault                   at          caught up   target");
    for f in &run.injected {
        println!(
            "{:<23} {:>7} ms  {:>9}  {}",
            f.fault,
            f.at_ms,
            f.caught_up_ms
                .map_or("-".to_string(), |ms| format!("{ms} ms")),
            f.target
        );
    }
    println!();
    println!(
        "recovery  restored  detect  cancel  schedule  deploy  first record  replayed  local / downloaded"
    );
    let ms = |v: Option<u64>| v.map_or("-".to_string(), |v| format!("{v} ms"));
    for (r, replayed) in run.recoveries.iter().zip(run.replayed()) {
        println!(
            "{:<9} {:<9} {:<7} {:<7} {:<9} {:<7} {:<13} {:<9} {} / {} bytes",
            r.id,
            r.restored_checkpoint.map_or("-".into(), |c| c.to_string()),
            ms(r.durations.detection_ms),
            ms(r.durations.cancel_ms),
            ms(r.durations.schedule_ms),
            ms(r.durations.deploy_ms),
            ms(r.durations.first_record_ms),
            replayed.map_or("-".into(), |n| n.to_string()),
            r.bytes_local,
            r.bytes_downloaded
        );
    }
    let durations = median_max(run.checkpoints.values().map(|c| c.duration_ms).collect());
    let sizes = median_max(run.checkpoints.values().map(|c| c.full_size).collect());
    if let (Some((d50, dmax)), Some((s50, smax))) = (durations, sizes) {
        println!(
            "\ncheckpoints: {} completed, duration median {d50} ms (max {dmax} ms), size median {s50} bytes (max {smax} bytes)",
            run.checkpoints.len()
        );
    }
    println!();
    let mark = |ok: bool| if ok { "pass" } else { "FAIL" };
    println!(
        "{}  the job finished ({:?})",
        mark(finished),
        run.view.details.state
    );
    println!(
        "{}  output equals the reference: {} lines, {} lost, {} duplicated{}",
        mark(output.passed()),
        output.drill_lines,
        output.lost,
        output.duplicated,
        if output.examples.is_empty() {
            String::new()
        } else {
            format!(" (e.g. {})", output.examples.join("; "))
        }
    );
    println!(
        "{}  checkpoint ids rise strictly: {} completed{}",
        mark(ids.is_ok()),
        run.ids.len(),
        ids.as_ref()
            .err()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default()
    );
    match orphans {
        Ok(o) => println!(
            "{}  no orphaned files in checkpoint storage{}",
            mark(o.is_empty()),
            if o.is_empty() {
                String::new()
            } else {
                format!(": {}", o.join(", "))
            }
        ),
        Err(e) => println!("FAIL  no orphaned files in checkpoint storage: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fault_is_caught_up_when_the_one_second_rate_is_back_near_the_baseline() {
        // 1000 records/s, a stall from 3 s to 5 s, then 1000/s again.
        let samples: Vec<Sample> = (0..=80)
            .map(|i| {
                let t = i * 100;
                let c = match t {
                    t if t <= 3000 => t,
                    t if t <= 5000 => 3000,
                    t => 3000 + (t - 5000),
                };
                (t, c)
            })
            .collect();
        let baseline = baseline_rate(&samples).unwrap();
        assert!((baseline - 1000.0).abs() < 1e-6, "{baseline}");
        // The rate is back to 90 % once 0.9 s of the window is after the stall.
        assert_eq!(
            caught_up_after(&samples, baseline, 3000, u64::MAX),
            Some(2900)
        );
        assert_eq!(caught_up_after(&samples, baseline, 3000, 5500), None);
        assert_eq!(baseline_rate(&[(0, 0), (100, 0)]), None);
    }

    #[test]
    fn replayed_records_are_counted_between_two_samples_unless_the_count_started_over() {
        let samples: Vec<Sample> = vec![(0, 0), (100, 50), (200, 120), (300, 200), (400, 10)];
        assert_eq!(records_between(&samples, 150, 320), Some(150));
        assert_eq!(records_between(&samples, 100, 100), Some(0));
        assert_eq!(
            records_between(&samples, 150, 450),
            None,
            "a new leader counts from zero"
        );
        assert_eq!(records_between(&[], 0, 10), None);
        assert_eq!(median_max(vec![5, 1, 9]), Some((5, 9)));
        assert_eq!(median_max(Vec::new()), None);
    }

    #[test]
    fn the_same_seed_draws_the_same_schedule_and_another_seed_another() {
        let faults = [Fault::KillTm, Fault::StopTm, Fault::KillJm];
        let a = schedule(&faults, 20, 7);
        assert_eq!(a, schedule(&faults, 20, 7));
        assert_ne!(a, schedule(&faults, 20, 8));
        assert!(a.iter().all(|p| faults.contains(&p.fault)));
        let kinds: BTreeSet<Fault> = a.iter().map(|p| p.fault).collect();
        assert_eq!(kinds.len(), 3, "20 rounds draw every fault");
    }

    #[test]
    fn an_unknown_fault_is_refused_naming_the_known_ones() {
        let err = Fault::parse_list("kill-tm,storage-fire").unwrap_err();
        assert!(
            err.contains("storage-errors") && err.contains("kill-tm"),
            "{err}"
        );
        assert_eq!(
            Fault::parse_list("kill-tm, stop-tm,kill-tm").unwrap(),
            vec![Fault::KillTm, Fault::StopTm]
        );
        assert!(Fault::parse_list(" , ").is_err());
    }

    #[test]
    fn outputs_are_compared_as_multisets_counting_lost_and_duplicated_lines() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let same = compare_outputs(&s(&["a", "b", "b"]), &s(&["b", "a", "b"]));
        assert!(same.passed());
        let c = compare_outputs(&s(&["a", "b", "b"]), &s(&["a", "b", "c", "c"]));
        assert_eq!((c.lost, c.duplicated), (1, 2));
        assert!(!c.passed());
        assert_eq!(c.examples.len(), 2);
    }

    #[test]
    fn checkpoint_ids_must_rise_strictly_in_the_order_they_completed() {
        assert!(ids_rising(&[1, 2, 5, 9]).is_ok());
        assert!(ids_rising(&[]).is_ok());
        let err = ids_rising(&[1, 4, 3]).unwrap_err();
        assert!(
            err.contains("checkpoint 3 completed after checkpoint 4"),
            "{err}"
        );
        assert!(ids_rising(&[2, 2]).is_err());
    }

    #[test]
    fn only_files_no_retained_checkpoint_names_are_orphans() {
        let listed: Vec<String> = [
            "chk-4/_metadata",
            "chk-4/agg/0/MANIFEST-5",
            "shared/agg/0/000012.sst",
            "shared/agg/0/000009.sst",
            "_lease/lease-2",
            "chk-3/agg/0/OPTIONS-7",
        ]
        .map(String::from)
        .to_vec();
        let referenced: BTreeSet<String> = ["chk-4/agg/0/MANIFEST-5", "shared/agg/0/000012.sst"]
            .map(String::from)
            .into();
        assert_eq!(
            orphans(&listed, &referenced),
            vec![
                "shared/agg/0/000009.sst".to_string(),
                "chk-3/agg/0/OPTIONS-7".to_string()
            ]
        );
    }
}
