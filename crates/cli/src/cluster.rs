//! The cluster roles of the CLI: how a TaskManager rebuilds a submitted job from the binary's
//! catalog ([`CatalogJobFactory`]), how the JobManager reads a job's settings from its
//! configuration ([`ConfigResolver`]), and the child TaskManager processes of `weir local`
//! ([`LocalCluster`]).

use crate::catalog::Catalog;
use crate::config::{Config, StateBackendKind};
use crate::params::Params;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use weir_graph::ParallelismSettings;
use weir_jobmanager::{JobSettings, JobSettingsResolver};
use weir_runtime::RuntimeOptions;
use weir_state::{HeapStateBackendFactory, StateBackendFactory};
use weir_state_rocksdb::RocksDbStateBackendFactory;
use weir_storage::open_store;
use weir_taskmanager::{BuiltJob, JobFactory, JobSpec};

/// Rebuilds jobs on a TaskManager: the catalog's builder with the submitted parameters, the
/// submitted configuration over this process's (machine keys stay local).
pub struct CatalogJobFactory {
    catalog: Catalog,
    config: Config,
    /// One RocksDB factory per process: the managed-memory budget is per TaskManager.
    rocksdb: Mutex<Option<Arc<RocksDbStateBackendFactory>>>,
}

impl CatalogJobFactory {
    /// A factory over `catalog`, with this process's configuration `config`.
    pub fn new(catalog: Catalog, config: Config) -> Self {
        Self {
            catalog,
            config,
            rocksdb: Mutex::new(None),
        }
    }

    fn rocksdb(&self) -> Result<Arc<RocksDbStateBackendFactory>, String> {
        let mut slot = self.rocksdb.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(f) = slot.as_ref() {
            return Ok(f.clone());
        }
        let dir = self.config.state_dir.join("rocksdb");
        let f = Arc::new(
            RocksDbStateBackendFactory::new(&dir, self.config.managed_memory_bytes)
                .map_err(|e| e.to_string())?,
        );
        *slot = Some(f.clone());
        Ok(f)
    }
}

/// The job's parameters as `key=value` strings.
pub(crate) fn param_args(params: &BTreeMap<String, String>) -> Vec<String> {
    params.iter().map(|(k, v)| format!("{k}={v}")).collect()
}

impl JobFactory for CatalogJobFactory {
    fn checkpoint_store(&self, spec: &JobSpec) -> Result<Option<weir_storage::Store>, String> {
        let config = self
            .config
            .with_job_config(&spec.config.clone().into_iter().collect())
            .map_err(|e| e.to_string())?;
        if config.checkpoint_config().is_none() {
            return Ok(None);
        }
        let (url, s3) = config.checkpoint_storage();
        open_store(&url, &s3)
            .map(Some)
            .map_err(|e| format!("state.checkpoints.dir '{url}': {e}"))
    }

    fn open_storage(&self, spec: &JobSpec, url: &str) -> Result<weir_storage::Store, String> {
        let config = self
            .config
            .with_job_config(&spec.config.clone().into_iter().collect())
            .map_err(|e| e.to_string())?;
        let parsed = weir_storage::StorageUrl::parse(url).map_err(|e| format!("'{url}': {e}"))?;
        open_store(&parsed, &config.checkpoint_storage().1).map_err(|e| format!("'{url}': {e}"))
    }

    fn build(&self, spec: &JobSpec) -> Result<BuiltJob, String> {
        let config = self
            .config
            .with_job_config(&spec.config.clone().into_iter().collect())
            .map_err(|e| e.to_string())?;
        let job = self.catalog.get(&spec.job_name).ok_or_else(|| {
            format!(
                "this TaskManager's binary has no job '{}' in its catalog",
                spec.job_name
            )
        })?;
        let params = Params::parse(
            &spec.job_name,
            &param_args(&spec.params.clone().into_iter().collect()),
        )
        .map_err(|e| e.to_string())?;
        let def = self
            .catalog
            .build(job, &params)
            .map_err(|e| e.to_string())?;
        let plan = def
            .plan(ParallelismSettings {
                config_default: config.parallelism_default,
                cli: (spec.parallelism > 0).then_some(spec.parallelism),
                config_max_parallelism: config.max_parallelism,
            })
            .map_err(|e| e.to_string())?;
        let state_backend: Arc<dyn StateBackendFactory> = match config.state_backend {
            StateBackendKind::Heap => Arc::new(HeapStateBackendFactory::new()),
            StateBackendKind::RocksDb => self.rocksdb()?,
        };
        let checkpointing = match config.checkpoint_config() {
            Some(cp) => {
                let (url, s3) = config.checkpoint_storage();
                let store = open_store(&url, &s3)
                    .map_err(|e| format!("state.checkpoints.dir '{url}': {e}"))?;
                Some((cp.mode, store))
            }
            None => None,
        };
        Ok(BuiltJob {
            job: def,
            plan,
            options: RuntimeOptions {
                batch_size: config.batch_size,
                channel_capacity: config.channel_capacity,
                buffer_timeout: config.buffer_timeout,
                metrics: config.metrics_enabled,
            },
            state_backend,
            checkpointing,
        })
    }
}

/// Reads a submitted job's checkpoint and restart settings from its configuration.
pub struct ConfigResolver {
    /// The JobManager process's configuration (the job's keys override it).
    pub config: Config,
}

impl JobSettingsResolver for ConfigResolver {
    fn resolve(&self, spec: &weir_proto::v1::JobSpec) -> Result<JobSettings, String> {
        let config = self
            .config
            .with_job_config(&spec.config.clone().into_iter().collect())
            .map_err(|e| e.to_string())?;
        let checkpoint = config.checkpoint_config();
        let store = match checkpoint {
            Some(_) => {
                let (url, s3) = config.checkpoint_storage();
                Some(
                    open_store(&url, &s3)
                        .map_err(|e| format!("state.checkpoints.dir '{url}': {e}"))?,
                )
            }
            None => None,
        };
        Ok(JobSettings {
            checkpoint,
            store,
            restart: config.restart_strategy(),
            savepoint_dir: config.savepoint_dir.as_ref().map(ToString::to_string),
            s3: config.checkpoint_storage().1,
        })
    }
}

/// The TaskManager child processes of `weir local`: started with this binary, stopped (and
/// reaped) when dropped, so no process outlives the command. On Linux each child also gets
/// SIGKILL when this process dies (`PR_SET_PDEATHSIG`), so even a killed `weir local` leaves
/// no orphan.
pub struct LocalCluster {
    children: Vec<(String, Child)>,
}

impl LocalCluster {
    /// Starts `n` TaskManagers with `slots` slots each, registering at `jobmanager`, with
    /// state under `state_root/tm-<i>`; `forward` are the `--config`/`-D` arguments. Each is
    /// handed `token` in its environment (`WEIR_SECURITY_AUTH_TOKEN`: not on a command line
    /// other users can read).
    pub fn start(
        n: u32,
        slots: u32,
        jobmanager: &str,
        state_root: &Path,
        (forward, token): (&[String], &weir_security::Token),
    ) -> Result<Self, String> {
        let exe = std::env::current_exe()
            .map_err(|e| format!("cannot find this binary to start TaskManagers: {e}"))?;
        let mut cluster = LocalCluster {
            children: Vec::new(),
        };
        for i in 0..n {
            let id = format!("local-tm-{i}");
            let dir: PathBuf = state_root.join(format!("tm-{i}"));
            let mut cmd = Command::new(&exe);
            cmd.arg("taskmanager")
                .arg("--jobmanager")
                .arg(jobmanager)
                .arg("--slots")
                .arg(slots.to_string())
                .arg("--state-dir")
                .arg(&dir)
                .arg("--id")
                .arg(&id)
                .args(forward)
                .env("WEIR_SECURITY_AUTH_TOKEN", token.expose())
                .stdin(Stdio::null());
            // Its own process group: a Ctrl-C in the terminal reaches only `weir local`, which
            // cancels the job and then stops the TaskManagers itself.
            std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
            die_with_parent(&mut cmd);
            let child = cmd
                .spawn()
                .map_err(|e| format!("cannot start TaskManager {id}: {e}"))?;
            tracing::info!(%id, pid = child.id(), "TaskManager process started");
            cluster.children.push((id, child));
        }
        Ok(cluster)
    }

    /// The children's ids and process ids.
    pub fn pids(&self) -> Vec<(String, u32)> {
        self.children
            .iter()
            .map(|(id, c)| (id.clone(), c.id()))
            .collect()
    }

    /// Stops every child: SIGTERM, then SIGKILL after `grace`; reaps them all.
    pub fn stop(&mut self, grace: Duration) {
        for (_, child) in &mut self.children {
            if let Ok(None) = child.try_wait() {
                signal(child.id(), libc::SIGTERM);
            }
        }
        let until = Instant::now() + grace;
        for (id, child) in &mut self.children {
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() >= until => {
                        tracing::warn!(%id, "TaskManager did not stop in time; killing it");
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        }
        self.children.clear();
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(3));
    }
}

pub(crate) fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) reads and writes no memory of this process. Callers pass a child they
    // started and have not reaped, or (`weir drill --jobmanager`) a TaskManager pid whose
    // command line they checked.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

#[cfg(target_os = "linux")]
pub(crate) fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn die_with_parent(_cmd: &mut Command) {}

/// What a client sees of a job at one moment.
pub(crate) struct JobView {
    pub details: weir_jobmanager::view::JobDetails,
    pub checkpoints: weir_jobmanager::view::CheckpointsView,
    pub recoveries: weir_jobmanager::view::RecoveriesView,
}

impl JobView {
    /// Decodes a `GetJob` answer.
    pub(crate) fn decode(r: &weir_proto::v1::GetJobResponse) -> Result<Self, String> {
        let bad = |what: &str, e: serde_json::Error| format!("the JobManager sent bad {what}: {e}");
        Ok(Self {
            details: serde_json::from_slice(&r.job_json).map_err(|e| bad("job details", e))?,
            checkpoints: serde_json::from_slice(&r.checkpoints_json)
                .map_err(|e| bad("checkpoints", e))?,
            recoveries: serde_json::from_slice(&r.recoveries_json)
                .map_err(|e| bad("recoveries", e))?,
        })
    }

    /// Everything as one JSON document (`weir run --json`, `weir local --json`).
    pub(crate) fn json(&self) -> serde_json::Value {
        let completed = self.checkpoints.counts.completed;
        serde_json::json!({
            "job_id": self.details.id,
            "job": self.details.name,
            "status": self.details.state,
            "duration_s": self.details.duration_ms as f64 / 1000.0,
            "restarts": self.details.restarts,
            "attempt": self.details.attempt,
            "failure": self.details.failure_cause,
            "restored_from": self.details.restored_from.map(|c| c.0),
            "checkpoints_completed": completed,
            "latest_completed": self.checkpoints.latest_completed.map(|c| c.0),
            "tasks": self.details.vertices.iter().map(|v| v.parallelism as usize).sum::<usize>(),
            "source_records": self.details.metrics.source_records,
            "sink_records": self.details.metrics.sink_records,
            "state_bytes": self.details.metrics.state_bytes,
            "details": self.details,
            "recoveries": self.recoveries.recoveries,
        })
    }
}

/// One human line per recovery phase reached.
pub(crate) fn recovery_line(r: &weir_jobmanager::RecoveryRecord) -> String {
    let ms = |v: Option<u64>| v.map_or("-".to_string(), |v| format!("{v} ms"));
    let moves: Vec<String> = r
        .moves
        .iter()
        .map(|m| {
            format!(
                "v{}/{} {}→{}",
                m.vertex, m.subtask, m.from_taskmanager, m.to_taskmanager
            )
        })
        .collect();
    format!(
        "recovery {} ({:?}): {}; detect {}, cancel {}, schedule {}, deploy+restore {}, first record {}, total {}; restored {} ({} local, {} downloaded){}",
        r.id,
        r.status,
        r.cause,
        ms(r.durations.detection_ms),
        ms(r.durations.cancel_ms),
        ms(r.durations.schedule_ms),
        ms(r.durations.deploy_ms),
        ms(r.durations.first_record_ms),
        ms(r.durations.total_ms),
        r.restored_checkpoint
            .map_or("nothing".to_string(), |c| c.to_string()),
        crate::commands::human_bytes(r.bytes_local),
        crate::commands::human_bytes(r.bytes_downloaded),
        if moves.is_empty() {
            String::new()
        } else {
            format!("; moved {}", moves.join(", "))
        }
    )
}

/// Follows a job until it reaches a terminal state, printing state changes and recoveries
/// (unless `quiet`), writing its checkpoint history to `history` when given. `fetch` reads
/// the job's current view; `cancel` is set by Ctrl-C.
pub(crate) fn follow(
    mut fetch: impl FnMut() -> Result<JobView, String>,
    mut on_cancel: impl FnMut(),
    cancel: &std::sync::atomic::AtomicBool,
    quiet: bool,
    history: Option<(&Path, &str)>,
) -> Result<JobView, String> {
    use std::sync::atomic::Ordering;
    let mut last_state = None;
    let mut printed: BTreeMap<u32, String> = BTreeMap::new();
    let progress = (!quiet).then(|| crate::progress::Progress::spinner("submitted"));
    let mut cancel_sent = false;
    let mut failures = 0;
    loop {
        if cancel.load(Ordering::SeqCst) && !cancel_sent {
            on_cancel();
            cancel_sent = true;
        }
        let view = match fetch() {
            Ok(v) => {
                failures = 0;
                v
            }
            Err(e) => {
                failures += 1;
                if failures > 25 {
                    return Err(e);
                }
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
        };
        if let Some(p) = &progress {
            if last_state != Some(view.details.state) {
                p.line(&format!(
                    "job {} is {:?}",
                    view.details.id, view.details.state
                ));
                last_state = Some(view.details.state);
            }
            for r in &view.recoveries.recoveries {
                let line = recovery_line(r);
                if printed.get(&r.id) != Some(&line) {
                    p.line(&line);
                    printed.insert(r.id, line);
                }
            }
            p.set(progress_message(&view));
        }
        if let Some((path, url)) = history {
            write_history(path, url, &view);
        }
        if view.details.state.is_terminal() {
            return Ok(view);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What a followed job is doing, in one line: restoring (tasks running of all, state read so
/// far), or running (records per second, the last checkpoint's age).
fn progress_message(view: &JobView) -> String {
    let d = &view.details;
    let subtasks: Vec<&str> = d
        .vertices
        .iter()
        .flat_map(|v| v.subtasks.iter().map(|s| s.state.as_str()))
        .collect();
    let running = subtasks.iter().filter(|s| **s == "RUNNING").count();
    if running < subtasks.len() {
        let restoring = view
            .recoveries
            .recoveries
            .last()
            .filter(|r| r.status == weir_jobmanager::recovery::RecoveryStatus::InProgress);
        return match restoring {
            Some(r) => format!(
                "{:?}: restoring, {running}/{} tasks running, {} read locally, {} downloaded",
                d.state,
                subtasks.len(),
                crate::commands::human_bytes(r.bytes_local),
                crate::commands::human_bytes(r.bytes_downloaded)
            ),
            None => format!(
                "{:?}: deploying, {running}/{} tasks running",
                d.state,
                subtasks.len()
            ),
        };
    }
    let checkpoint = view
        .checkpoints
        .latest_completed
        .and_then(|id| view.checkpoints.history.iter().rev().find(|c| c.id == id))
        .map(|c| {
            let now = weir_coordination::driver::now_ms();
            format!(
                ", last checkpoint {} {:.1} s ago",
                c.id,
                now.saturating_sub(c.trigger_ms) as f64 / 1000.0
            )
        })
        .unwrap_or_default();
    format!(
        "{:?}: {} records/s, {} records{checkpoint}",
        d.state, d.records_per_s, d.metrics.source_records
    )
}

/// Writes the job's checkpoint history where `weir checkpoints` reads it.
fn write_history(path: &Path, url: &str, view: &JobView) {
    let history = crate::checkpoints::JobHistory {
        job_id: view.details.id.clone(),
        job: view.details.name.clone(),
        checkpoint_dir: url.to_string(),
        restarts: view.details.restarts,
        checkpoints: view.checkpoints.history.clone(),
    };
    if let Err(e) = crate::checkpoints::write_atomically(path, &history) {
        tracing::debug!(path = %path.display(), error = %e, "checkpoint history not written");
    }
}

use crate::commands::Failure;
use weir_proto::v1::dispatcher_service_client::DispatcherServiceClient;
use weir_proto::v1::{self};

/// The spec of a job to submit: name, parameters (as parsed once, see
/// [`crate::commands::ResolvedJob`]), this process's job configuration, and the id
/// (`--restore`'s, or a new one).
pub(crate) fn job_spec(
    config: &Config,
    job: &str,
    parallelism: Option<u32>,
    params: &Params,
    restore: Option<&str>,
) -> Result<v1::JobSpec, Failure> {
    let job_id = match restore {
        Some(id) => weir_types::JobId::parse(id)
            .map_err(|e| Failure::Usage(format!("--restore: {e}")))?
            .to_string(),
        None => String::new(),
    };
    if restore.is_some() && config.checkpoint_config().is_none() {
        return Err(Failure::Usage(
            "--restore needs checkpointing: set execution.checkpointing.interval".into(),
        ));
    }
    Ok(v1::JobSpec {
        job_id,
        job_name: job.to_string(),
        params: params
            .keys()
            .map(|k| (k.to_string(), params.raw(k).unwrap_or_default().to_string()))
            .collect(),
        config: config.job_config().into_iter().collect(),
        parallelism: parallelism.unwrap_or(0),
    })
}

pub(crate) fn io_runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Job(format!("cannot start the client runtime: {e}")))
}

/// Where this process's clients find their token: `security.auth.token` and
/// `security.auth.token-file` as configured (set once the configuration is loaded).
static CLIENT_AUTH: std::sync::OnceLock<(Option<weir_security::Token>, Option<PathBuf>)> =
    std::sync::OnceLock::new();

/// This process's clients' TLS (`security.ssl.*`), or why it cannot load.
static CLIENT_TLS: std::sync::OnceLock<Result<Option<weir_security::Tls>, String>> =
    std::sync::OnceLock::new();

/// Records where [`connect`] finds the token and its TLS settings; only the first call counts.
pub(crate) fn set_client_auth(config: &Config) {
    let _ = CLIENT_AUTH.set((config.auth_token.clone(), config.auth_token_file.clone()));
    let _ = CLIENT_TLS.set(config.tls());
}

fn client_tls() -> Result<Option<weir_security::Tls>, Failure> {
    CLIENT_TLS
        .get()
        .cloned()
        .unwrap_or(Ok(None))
        .map_err(Failure::Usage)
}

/// The token this process's clients present (resolved when first needed, so commands that
/// never connect never create the default token file).
fn client_token() -> Result<weir_security::Token, Failure> {
    let (token, file) = CLIENT_AUTH.get().cloned().unwrap_or_default();
    weir_security::resolve(token.as_ref().map(|t| t.expose()), file.as_deref())
        .map_err(|e| Failure::Usage(e.to_string()))
}

/// A Dispatcher client of the JobManager that leads among `urls` (comma-separated; one URL
/// without high availability): each is tried in turn, and a standby's refusal moves on.
pub(crate) fn connect(
    rt: &tokio::runtime::Runtime,
    urls: &str,
) -> Result<DispatcherServiceClient<weir_security::AuthChannel>, Failure> {
    let token = client_token()?;
    let tls = client_tls()?;
    let list: Vec<&str> = urls
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect();
    if list.is_empty() {
        return Err(Failure::Usage(format!(
            "--jobmanager '{urls}' names no JobManager"
        )));
    }
    let mut problems = Vec::new();
    for url in &list {
        let dialled = match &tls {
            Some(_) => weir_security::Tls::url(url),
            None => url.to_string(),
        };
        let endpoint = tonic::transport::Endpoint::from_shared(dialled)
            .map_err(|e| Failure::Usage(format!("--jobmanager '{url}' is not a URL: {e}")))?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(30));
        let endpoint = match &tls {
            Some(t) => endpoint
                .tls_config(t.grpc_client())
                .map_err(|e| Failure::Usage(format!("TLS (security.ssl.*): {e}")))?,
            None => endpoint,
        };
        let channel = match rt.block_on(endpoint.connect()) {
            Ok(c) => c,
            Err(e) => {
                problems.push(format!(
                    "cannot reach the JobManager at {url}: {}",
                    weir_runtime::error_chain(&e)
                ));
                continue;
            }
        };
        let mut client = DispatcherServiceClient::with_interceptor(
            channel,
            weir_security::ClientAuth::new(Some(&token)),
        );
        if list.len() == 1 {
            return Ok(client);
        }
        match rt.block_on(client.list_jobs(v1::ListJobsRequest {})) {
            Ok(_) => return Ok(client),
            Err(s) => problems.push(format!("{url}: {}", s.message())),
        }
    }
    Err(Failure::Usage(problems.join("; ")))
}

/// The JobManager address when none is given and high availability is off.
const DEFAULT_JOBMANAGER: &str = "http://127.0.0.1:6123";

/// Where a client finds the JobManager: the addresses it was given, or the high-availability
/// folder where the leader writes its own (read again whenever the client looks for the
/// leader, so it follows takeovers).
pub(crate) enum JobManagerAddr {
    /// `--jobmanager`: one URL, or every JobManager's, comma-separated.
    Urls(String),
    /// `high-availability.storageDir`.
    Ha {
        /// The folder.
        store: weir_storage::Store,
        /// Its URL, for messages.
        dir: String,
    },
}

/// `--jobmanager` as given; without it, with `high-availability.type: storage`, the leader's
/// address in `high-availability.storageDir`; otherwise the default local JobManager.
pub(crate) fn jobmanager_addr(
    given: Option<String>,
    config: &Config,
) -> Result<JobManagerAddr, Failure> {
    if let Some(urls) = given {
        return Ok(JobManagerAddr::Urls(urls));
    }
    match (&config.ha_storage_dir, config.ha_enabled) {
        (Some(dir), true) => Ok(JobManagerAddr::Ha {
            store: open_store(dir, &config.s3).map_err(|e| {
                Failure::Usage(format!("high-availability.storageDir '{dir}': {e}"))
            })?,
            dir: dir.to_string(),
        }),
        _ => Ok(JobManagerAddr::Urls(DEFAULT_JOBMANAGER.to_string())),
    }
}

impl JobManagerAddr {
    /// The URLs to try now: the given ones, or the current leader's.
    pub(crate) fn urls(&self, rt: &tokio::runtime::Runtime) -> Result<String, Failure> {
        match self {
            JobManagerAddr::Urls(urls) => Ok(urls.clone()),
            JobManagerAddr::Ha { store, dir } => {
                match rt.block_on(weir_coordination::leader::leader_address(store)) {
                    Ok(Some(address)) => Ok(address.rpc),
                    Ok(None) => Err(Failure::Usage(format!(
                        "no JobManager has led yet: high-availability.storageDir '{dir}' holds \
                         no leader address (or pass --jobmanager)"
                    ))),
                    Err(e) => Err(Failure::Job(format!(
                        "cannot read the leader's address: {e}"
                    ))),
                }
            }
        }
    }

    /// [`urls`](Self::urls) on a runtime of its own.
    pub(crate) fn resolve(&self) -> Result<String, Failure> {
        self.urls(&io_runtime()?)
    }

    /// Whether a lost JobManager may come back as another (a takeover to follow).
    fn follows_leaders(&self) -> bool {
        match self {
            JobManagerAddr::Urls(urls) => urls.contains(','),
            JobManagerAddr::Ha { .. } => true,
        }
    }
}

/// How long an attached client keeps looking for its job's leader after losing it.
const FOLLOW_LEADER_TIMEOUT: Duration = Duration::from_secs(60);

/// [`fetch_grpc`], following the job to a new leader among `urls` when the JobManager it
/// asked is gone or stands by (high availability), for up to [`FOLLOW_LEADER_TIMEOUT`].
fn fetch_following(
    rt: &tokio::runtime::Runtime,
    client: &mut DispatcherServiceClient<weir_security::AuthChannel>,
    addr: &JobManagerAddr,
    job_id: &str,
) -> Result<JobView, String> {
    let several = addr.follows_leaders();
    let started = Instant::now();
    loop {
        let answer = rt.block_on(client.get_job(v1::GetJobRequest {
            job_id: job_id.to_string(),
        }));
        let status = match answer {
            Ok(r) => return JobView::decode(&r.into_inner()),
            Err(s) => s,
        };
        // A new leader knows the job only once it took it over: NotFound is transient then.
        let transient = matches!(
            status.code(),
            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
        ) || (status.code() == tonic::Code::NotFound && several);
        if !several || !transient || started.elapsed() > FOLLOW_LEADER_TIMEOUT {
            return Err(status.message().to_string());
        }
        std::thread::sleep(Duration::from_millis(200));
        if let Ok(c) = addr.urls(rt).and_then(|urls| connect(rt, &urls)) {
            *client = c;
        }
    }
}

pub(crate) fn status_failure(what: &str, s: tonic::Status) -> Failure {
    match s.code() {
        tonic::Code::InvalidArgument | tonic::Code::NotFound | tonic::Code::AlreadyExists => {
            Failure::Usage(format!("{what}: {}", s.message()))
        }
        // A transport failure (a refused TLS handshake, say) says why in its source chain.
        _ => Failure::Job(format!("{what}: {}", weir_runtime::error_chain(&s))),
    }
}

/// The token of this process, or a usage error naming the key or file.
pub(crate) fn auth_token(config: &Config) -> Result<weir_security::Token, Failure> {
    config
        .auth_token()
        .map_err(|e| Failure::Usage(e.to_string()))
}

/// Refuses an address off loopback unless TLS protects it (the token always does) or
/// `--insecure`.
fn check_bind(
    what: &str,
    addr: std::net::SocketAddr,
    tls: bool,
    insecure: bool,
) -> Result<(), Failure> {
    weir_security::check_bind(what, addr, tls, insecure).map_err(|e| Failure::Usage(e.to_string()))
}

/// `weir jobmanager`.
pub(crate) fn jobmanager_command(
    config: &Config,
    rpc_bind: &str,
    rest_bind: &str,
    insecure: bool,
) -> Result<(), Failure> {
    let options = jobmanager_options(config, rpc_bind, rest_bind)?;
    let tls = options.tls.is_some();
    check_bind("--rpc-bind", options.rpc_bind, tls, insecure)?;
    check_bind("--rest-bind", options.rest_bind, tls, insecure)?;
    let ha = ha_options(config)?;
    let with_ha = ha.is_some();
    let handle = weir_jobmanager::JobManager::start_with_ha(
        options,
        Arc::new(ConfigResolver {
            config: config.clone(),
        }),
        ha,
    )
    .map_err(|e| Failure::Usage(e.to_string()))?;
    eprintln!(
        "JobManager: RPC on {}, REST on http://{} (web UI at /, Prometheus at /metrics){}",
        handle.rpc_addr(),
        handle.rest_addr(),
        if with_ha {
            " (high availability: standing by until it leads)"
        } else {
            ""
        }
    );
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s = stop.clone();
    let _ = ctrlc::set_handler(move || s.store(true, std::sync::atomic::Ordering::SeqCst));
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("JobManager shutting down: TaskManagers cancel their tasks");
    handle.shutdown();
    Ok(())
}

/// The high-availability settings of `weir jobmanager`, checked; `None` when it is off.
fn ha_options(config: &Config) -> Result<Option<weir_jobmanager::HaOptions>, Failure> {
    if !config.ha_enabled {
        return Ok(None);
    }
    let Some(url) = &config.ha_storage_dir else {
        return Err(Failure::Usage(
            "high-availability.type is storage but high-availability.storageDir is not set".into(),
        ));
    };
    if config.ha_renew_interval >= config.ha_lease_duration {
        return Err(Failure::Usage(format!(
            "high-availability.lease.renew-interval ({:?}) must be less than \
             high-availability.lease.duration ({:?})",
            config.ha_renew_interval, config.ha_lease_duration
        )));
    }
    let store = weir_storage::open_store(url, &config.s3)
        .map_err(|e| Failure::Usage(format!("high-availability.storageDir '{url}': {e}")))?;
    Ok(Some(weir_jobmanager::HaOptions {
        store,
        lease_duration: config.ha_lease_duration,
        renew_interval: config.ha_renew_interval,
        on_lost: Arc::new(|reason| {
            // Stop acting at once: a JobManager that may have been replaced must not write.
            eprintln!("JobManager lost its leadership: {reason}; exiting");
            std::process::exit(crate::EXIT_LEADERSHIP_LOST);
        }),
    }))
}

fn jobmanager_options(
    config: &Config,
    rpc_bind: &str,
    rest_bind: &str,
) -> Result<weir_jobmanager::JobManagerOptions, Failure> {
    let addr = |flag: &str, v: &str| {
        v.parse::<std::net::SocketAddr>()
            .map_err(|e| Failure::Usage(format!("{flag} '{v}': {e}")))
    };
    Ok(weir_jobmanager::JobManagerOptions {
        auth: Some(auth_token(config)?),
        tls: config.tls().map_err(Failure::Usage)?,
        rpc_bind: addr("--rpc-bind", rpc_bind)?,
        rest_bind: addr("--rest-bind", rest_bind)?,
        heartbeat_interval: config.heartbeat_interval,
        heartbeat_timeout: config.heartbeat_timeout,
        slot_request_timeout: config.slot_request_timeout,
        adaptive: config
            .adaptive_scheduler
            .then_some(config.resource_stabilization_timeout),
        ..Default::default()
    })
}

/// `weir taskmanager`.
pub(crate) fn taskmanager_command(
    catalog: &Catalog,
    config: &Config,
    (jobmanager, slots, id): (Option<String>, Option<u32>, Option<String>),
    data_bind: &str,
    insecure: bool,
) -> Result<(), Failure> {
    let (jobmanager, leader_store) = match jobmanager_addr(jobmanager, config)? {
        JobManagerAddr::Urls(urls) => (urls, None),
        JobManagerAddr::Ha { store, dir } => (
            format!("the leader in high-availability.storageDir {dir}"),
            Some(store),
        ),
    };
    let data_bind = data_bind
        .parse()
        .map_err(|e| Failure::Usage(format!("--data-bind '{data_bind}': {e}")))?;
    let slots = slots.unwrap_or(config.taskmanager_slots);
    if slots == 0 {
        return Err(Failure::Usage("--slots must be at least 1".into()));
    }
    let id = id.unwrap_or_else(|| format!("tm-{}", std::process::id()));
    let options = weir_taskmanager::TaskManagerOptions {
        jobmanager,
        leader_store,
        id,
        slots,
        state_dir: config.state_dir.clone(),
        data_bind,
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(2),
        metrics_bind: Some(config.metrics_bind),
        auth: Some(auth_token(config)?),
        tls: config.tls().map_err(Failure::Usage)?,
    };
    let tls = options.tls.is_some();
    check_bind("--data-bind", options.data_bind, tls, insecure)?;
    check_bind("metrics.bind-host", config.metrics_bind, tls, insecure)?;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s = stop.clone();
    let _ = ctrlc::set_handler(move || s.store(true, std::sync::atomic::Ordering::SeqCst));
    let factory = Arc::new(CatalogJobFactory::new(catalog.clone(), config.clone()));
    weir_taskmanager::session::run(options, factory, stop).map_err(|e| match e {
        weir_taskmanager::TaskManagerError::Refused { .. } => Failure::Usage(e.to_string()),
        e => Failure::Job(e.to_string()),
    })
}

fn fetch_grpc(
    rt: &tokio::runtime::Runtime,
    client: &mut DispatcherServiceClient<weir_security::AuthChannel>,
    job_id: &str,
) -> Result<JobView, String> {
    let r = rt
        .block_on(client.get_job(v1::GetJobRequest {
            job_id: job_id.to_string(),
        }))
        .map_err(|s| s.message().to_string())?;
    JobView::decode(&r.into_inner())
}

/// Where a submitted job starts: afresh, resumed from its own latest checkpoint
/// (`--restore`), or from a savepoint or retained checkpoint (`-s`).
#[derive(Clone, Debug, Default)]
pub(crate) struct StartFrom {
    pub resume: bool,
    pub restore_path: Option<String>,
    pub allow_non_restored_state: bool,
    pub claim_mode: Option<String>,
}

impl StartFrom {
    fn request(&self, spec: v1::JobSpec, plan_json: Vec<u8>) -> v1::SubmitJobRequest {
        v1::SubmitJobRequest {
            job: Some(spec),
            plan_json,
            resume: self.resume,
            restore_path: self.restore_path.clone().unwrap_or_default(),
            allow_non_restored_state: self.allow_non_restored_state,
            claim_mode: self.claim_mode.clone().unwrap_or_default(),
        }
    }
}

/// `weir run`.
pub(crate) fn run_command(
    addr: &JobManagerAddr,
    spec: v1::JobSpec,
    plan: &weir_graph::Plan,
    start: &StartFrom,
    detached: bool,
    json: bool,
) -> Result<(), Failure> {
    let rt = io_runtime()?;
    let mut client = connect(&rt, &addr.urls(&rt)?)?;
    let plan_json = serde_json::to_vec(plan).map_err(|e| Failure::Job(e.to_string()))?;
    let job_id = rt
        .block_on(client.submit_job(start.request(spec, plan_json)))
        .map_err(|s| status_failure("submit", s))?
        .into_inner()
        .job_id;
    if detached {
        if json {
            println!("{}", serde_json::json!({ "job_id": job_id }));
        } else {
            println!("{job_id}");
        }
        return Ok(());
    }
    eprintln!("job {job_id} submitted");
    let cancel = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let c = cancel.clone();
    let _ = ctrlc::set_handler(move || {
        if c.swap(true, std::sync::atomic::Ordering::SeqCst) {
            // A second Ctrl-C: stop following at once (the job keeps its cancel request).
            std::process::exit(130);
        }
    });
    let mut cancel_client = client.clone();
    let view = follow(
        || fetch_following(&rt, &mut client, addr, &job_id),
        || {
            eprintln!("cancelling job {job_id}");
            let _ = rt.block_on(cancel_client.cancel_job(v1::CancelJobRequest {
                job_id: job_id.clone(),
            }));
        },
        &cancel,
        json,
        None,
    )
    .map_err(Failure::Job)?;
    finish(view, json)
}

/// Prints a finished job's summary; its final state decides the exit code. The same lines
/// for `weir run` and `weir local`, whatever the number of TaskManagers.
fn finish(view: JobView, json: bool) -> Result<(), Failure> {
    use weir_jobmanager::view::JobState;
    if json {
        println!("{}", view.json());
    } else {
        eprintln!("{}", summary_line(&view));
        if view.details.checkpointing {
            eprintln!(
                "checkpoints: {} completed, {} restart(s){}",
                view.checkpoints.counts.completed,
                view.details.restarts,
                view.details
                    .restored_from
                    .map(|id| format!(", last restored from {id}"))
                    .unwrap_or_default()
            );
        }
    }
    match view.details.state {
        JobState::Finished => Ok(()),
        JobState::Canceled => Err(Failure::Cancelled(format!(
            "job '{}' cancelled",
            view.details.name
        ))),
        _ => Err(Failure::Job(format!(
            "job '{}' failed: {}",
            view.details.name,
            view.details
                .failure_cause
                .unwrap_or_else(|| "no cause recorded".into())
        ))),
    }
}

/// `job 'NAME' (ID) FINISHED in 1.234 s: N records read (R/s), M records written, T tasks,
/// keyed state S`.
fn summary_line(view: &JobView) -> String {
    let d = &view.details;
    let secs = d.duration_ms as f64 / 1000.0;
    let m = d.metrics;
    format!(
        "job '{}' ({}) {:?} in {:.3} s: {} records read ({:.0}/s), {} records written, {} tasks, keyed state {}",
        d.name,
        d.id,
        d.state,
        secs,
        m.source_records,
        m.source_records as f64 / secs.max(1e-9),
        m.sink_records,
        d.vertices.iter().map(|v| v.parallelism as usize).sum::<usize>(),
        crate::commands::human_bytes(m.state_bytes)
    )
}

/// `weir list`.
pub(crate) fn list_command(url: &str, json: bool) -> Result<(), Failure> {
    let rt = io_runtime()?;
    let mut client = connect(&rt, url)?;
    let r = rt
        .block_on(client.list_jobs(v1::ListJobsRequest {}))
        .map_err(|s| status_failure("list", s))?
        .into_inner();
    let jobs: weir_jobmanager::view::JobsView = serde_json::from_slice(&r.jobs_json)
        .map_err(|e| Failure::Job(format!("the JobManager sent a bad job list: {e}")))?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&jobs).expect("serialises")
        );
        return Ok(());
    }
    println!(
        "{:<32}  {:<12} {:<11} {:>8} {:>9} {:>10} {:>10} {:>10}",
        "JOB ID", "NAME", "STATE", "RESTARTS", "TASKS", "DURATION", "RECORDS/S", "CHECKPOINT"
    );
    for j in &jobs.jobs {
        let rate = if j.state.is_terminal() {
            "-".to_string()
        } else {
            j.records_per_s.to_string()
        };
        let checkpoint = j.last_checkpoint_age_ms.map_or("-".to_string(), |a| {
            format!("{:.1}s ago", a as f64 / 1000.0)
        });
        println!(
            "{:<32}  {:<12} {:<11} {:>8} {:>4}/{:<4} {:>9.1}s {:>10} {:>10}",
            j.id,
            j.name,
            format!("{:?}", j.state).to_uppercase(),
            j.restarts,
            j.tasks_running,
            j.tasks_total,
            j.duration_ms as f64 / 1000.0,
            rate,
            checkpoint
        );
    }
    for j in &jobs.jobs {
        if j.restarts == 0 {
            continue;
        }
        if let Ok(view) = fetch_grpc(&rt, &mut client, &j.id) {
            for r in &view.recoveries.recoveries {
                println!("  {}: {}", j.id, recovery_line(r));
            }
        }
    }
    Ok(())
}

/// `weir cancel`.
pub(crate) fn cancel_command(url: &str, job_id: &str, json: bool) -> Result<(), Failure> {
    let rt = io_runtime()?;
    let mut client = connect(&rt, url)?;
    rt.block_on(client.cancel_job(v1::CancelJobRequest {
        job_id: job_id.to_string(),
    }))
    .map_err(|s| status_failure("cancel", s))?;
    if json {
        println!(
            "{}",
            serde_json::json!({ "job_id": job_id, "cancelled": true })
        );
    } else {
        eprintln!("job {job_id}: cancellation requested");
    }
    Ok(())
}

/// `weir checkpoints JOB_ID --jobmanager URL`.
pub(crate) fn checkpoints_command(url: &str, job_id: &str, json: bool) -> Result<(), Failure> {
    let rt = io_runtime()?;
    let mut client = connect(&rt, url)?;
    let view = fetch_grpc(&rt, &mut client, job_id).map_err(Failure::Usage)?;
    let history = crate::checkpoints::JobHistory {
        job_id: view.details.id.clone(),
        job: view.details.name.clone(),
        checkpoint_dir: String::new(),
        restarts: view.details.restarts,
        checkpoints: view.checkpoints.history.clone(),
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&history).expect("history serialises")
        );
    } else {
        print!("{}", crate::checkpoints::render(&history));
    }
    Ok(())
}

/// Starts a mini cluster (a JobManager and one in-process TaskManager with `slots` slots,
/// state under `state`) whose TaskManager rebuilds jobs from `catalog` with `config`.
pub(crate) fn start_minicluster(
    catalog: &Catalog,
    config: &Config,
    slots: u32,
    state: &Path,
) -> Result<weir_minicluster::MiniCluster, Failure> {
    let mut options = weir_minicluster::MiniClusterOptions::new(slots, state.to_path_buf());
    options.jobmanager = jobmanager_options(config, "127.0.0.1:0", "127.0.0.1:0")?;
    weir_minicluster::MiniCluster::start(
        options,
        Arc::new(ConfigResolver {
            config: config.clone(),
        }),
        Arc::new(CatalogJobFactory::new(catalog.clone(), config.clone())),
    )
    .map_err(|e| Failure::Job(e.to_string()))
}

/// `weir local`: a JobManager in this process with `taskmanagers` TaskManager children, or
/// with one TaskManager inside this process when `taskmanagers` is 0; the job submitted and
/// followed to its end, then everything stopped. Both run the same JobMaster.
#[allow(clippy::too_many_arguments)]
pub(crate) fn local_command(
    catalog: &Catalog,
    config: &Config,
    spec: v1::JobSpec,
    plan: &weir_graph::Plan,
    start: &StartFrom,
    taskmanagers: u32,
    slots: Option<u32>,
    forward: &[String],
    json: bool,
) -> Result<(), Failure> {
    let needed = plan.slots_needed();
    let slots = slots.unwrap_or_else(|| {
        config
            .taskmanager_slots
            .max(needed.div_ceil(taskmanagers.max(1)))
    });
    if slots == 0 {
        return Err(Failure::Usage("--slots must be at least 1".into()));
    }
    std::fs::create_dir_all(&config.state_dir).map_err(|e| {
        Failure::Usage(format!(
            "state dir '{}' cannot be created: {e}",
            config.state_dir.display()
        ))
    })?;
    let root = config
        .state_dir
        .join(format!("cluster-{}", std::process::id()));
    if taskmanagers == 0 {
        let cluster = start_minicluster(catalog, config, slots, &root.join("tm-0"))?;
        eprintln!(
            "local cluster: JobManager RPC {} REST and web UI http://{}/, 1 in-process TaskManager × {} slot(s)",
            cluster.jobmanager().rpc_addr(),
            cluster.jobmanager().rest_addr(),
            slots
        );
        let outcome = run_on(cluster.jobmanager(), config, spec, plan, start, json);
        cluster.stop();
        let _ = std::fs::remove_dir_all(&root);
        return outcome;
    }
    let options = jobmanager_options(config, "127.0.0.1:0", "127.0.0.1:0")?;
    let handle = weir_jobmanager::JobManager::start(
        options,
        Arc::new(ConfigResolver {
            config: config.clone(),
        }),
    )
    .map_err(|e| Failure::Job(e.to_string()))?;
    let token = auth_token(config)?;
    let mut cluster = match LocalCluster::start(
        taskmanagers,
        slots,
        &format!("http://{}", handle.rpc_addr()),
        &root,
        (forward, &token),
    ) {
        Ok(c) => c,
        Err(e) => {
            handle.shutdown();
            return Err(Failure::Job(e));
        }
    };
    eprintln!(
        "local cluster: JobManager RPC {} REST and web UI http://{}/, {} TaskManager(s) × {} slot(s): {}",
        handle.rpc_addr(),
        handle.rest_addr(),
        taskmanagers,
        slots,
        cluster
            .pids()
            .iter()
            .map(|(id, pid)| format!("{id} (pid {pid})"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    // Every TaskManager registers before the job is submitted, so the submission's storage probe
    // reaches them all.
    let deadline = Instant::now() + Duration::from_secs(30);
    while handle.overview().taskmanagers < taskmanagers {
        if Instant::now() >= deadline {
            let registered = handle.overview().taskmanagers;
            handle.shutdown();
            cluster.stop(Duration::from_secs(5));
            return Err(Failure::Job(format!(
                "only {registered} of {taskmanagers} TaskManagers registered within 30 s"
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let outcome = run_on(&handle, config, spec, plan, start, json);
    // The JobManager first: it tells the TaskManagers it is going (they stop quietly), then
    // the TaskManagers, which run nothing any more.
    handle.shutdown();
    cluster.stop(Duration::from_secs(5));
    let _ = std::fs::remove_dir_all(&root);
    outcome
}

fn run_on(
    handle: &weir_jobmanager::JobManagerHandle,
    config: &Config,
    spec: v1::JobSpec,
    plan: &weir_graph::Plan,
    start: &StartFrom,
    json: bool,
) -> Result<(), Failure> {
    let plan_json = serde_json::to_vec(plan).map_err(|e| Failure::Job(e.to_string()))?;
    let job_id = handle
        .submit(start.request(spec, plan_json))
        .map_err(|e| Failure::Usage(e.to_string()))?;
    let id = job_id.to_string();
    let history_path = crate::checkpoints::jobs_dir(&config.state_dir)
        .join(&id)
        .join("checkpoints.json");
    let url = config.checkpoint_storage().0.to_string();
    if config.checkpoint_config().is_some() {
        eprintln!("job id {id}: checkpoints under {url}/{id}");
    }
    let cancel = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let c = cancel.clone();
    let _ = ctrlc::set_handler(move || {
        if c.swap(true, std::sync::atomic::Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("cancelling (Ctrl-C again to stop at once)");
    });
    let history = config
        .checkpoint_config()
        .is_some()
        .then_some((history_path.as_path(), url.as_str()));
    let view = follow(
        || {
            Ok(JobView {
                details: handle.job(job_id).ok_or("the job vanished")?,
                checkpoints: handle.checkpoints(job_id).ok_or("the job vanished")?,
                recoveries: handle.recoveries(job_id).ok_or("the job vanished")?,
            })
        },
        || {
            let _ = handle.cancel(job_id);
        },
        &cancel,
        json,
        history,
    )
    .map_err(Failure::Job)?;
    finish(view, json)
}
