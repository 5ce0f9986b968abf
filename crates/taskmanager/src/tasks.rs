//! The subtasks a TaskManager runs, per job and attempt, and what it does with each message
//! of the JobManager.
//!
//! All JobManager messages are handled one at a time on one control thread
//! ([`Tasks::handle`]), so the maps here change in one place. Task threads only report: their
//! state changes and checkpoint events go straight to the session's outbox.
//!
//! Channels of an attempt: a channel between two subtasks of this process is one in-memory
//! channel; whichever of the two is deployed first makes it and parks the other end for the
//! second. A channel to or from another TaskManager is a data-exchange stream (outbound pump
//! or inbound registration), keyed by job, attempt, edge and subtasks, so a stream of an old
//! attempt never reaches a new one.

use crate::metrics::TaskManagerMetrics;
use crate::{BuiltJob, JobFactory, JobSpec};
use crossbeam_channel::Sender;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;
use weir_checkpoint::{CheckpointingMode, TaskRestoreSpec};
use weir_exchange::{
    ChannelKey, Connections, ExchangeService, InboundRegistration, OutboundHandle,
};
use weir_graph::Plan;
use weir_proto::v1::{self, job_manager_message::Kind as Down, task_manager_message::Kind as Up};
use weir_runtime::deploy::{
    keyed_subtasks, spawn_subtask, subtask_channels, ChannelEnd, ChannelRef, CheckpointEnv,
    RestoreEnv, SubtaskEnv,
};
use weir_runtime::{Control, JobDefinition, JobMetrics, TaskError, TaskEvent, Transfer};
use weir_state_transfer::{LocalStateCache, Uploader};
use weir_storage::CheckpointPaths;
use weir_types::{Barrier, CheckpointId, JobId, SubtaskIndex, VertexId};

pub use weir_coordination::driver::now_ms;

/// Where messages to the JobManager go: the current session's sender, if connected.
#[derive(Clone, Default)]
pub struct Outbox(Arc<Mutex<Option<UnboundedSender<v1::TaskManagerMessage>>>>);

impl Outbox {
    /// Sends `kind` on the current session; dropped when there is none (the JobManager has
    /// then failed the attempt over anyway).
    pub fn send(&self, kind: Up) {
        let guard = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match guard.as_ref() {
            Some(tx) => {
                let _ = tx.send(v1::TaskManagerMessage { kind: Some(kind) });
            }
            None => tracing::debug!("no session: a report to the JobManager is dropped"),
        }
    }

    /// Points the outbox at a new session (or at none).
    pub fn set(&self, tx: Option<UnboundedSender<v1::TaskManagerMessage>>) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = tx;
    }
}

/// One job on this TaskManager: built once, shared by its attempts.
struct JobEntry {
    /// What the job was built from (a resubmission with another spec rebuilds it).
    spec: JobSpec,
    job: Arc<JobDefinition>,
    plan: Arc<Plan>,
    /// The rebuilt plan's fingerprint (its JSON and this build), checked against every
    /// deployment's.
    fingerprint: String,
    built: BuiltJobEnv,
    cache: Option<Arc<LocalStateCache>>,
    attempts: BTreeMap<u32, Attempt>,
    /// The JobMaster stopped the job after its final checkpoint.
    stopping: bool,
}

struct BuiltJobEnv {
    options: weir_runtime::RuntimeOptions,
    state_backend: Arc<dyn weir_state::StateBackendFactory>,
    checkpointing: Option<(CheckpointingMode, Arc<Transfer>)>,
    in_flight: Arc<AtomicUsize>,
}

/// The subtasks of one attempt of a job on this TaskManager.
struct Attempt {
    cancelled: Arc<AtomicBool>,
    controls: HashMap<(u32, u32), Sender<Control>>,
    /// The other end of in-memory channels whose second subtask is not deployed yet.
    parked: HashMap<ChannelRef, ChannelEnd>,
    registrations: Vec<InboundRegistration>,
    outbound: Vec<OutboundHandle>,
    metrics: Arc<JobMetrics>,
    events: Option<Sender<TaskEvent>>,
    live: Arc<AtomicUsize>,
    /// Synchronous snapshot pauses of this attempt's tasks here, in microseconds.
    sync_pauses: Arc<Mutex<Vec<u64>>>,
}

impl Attempt {
    fn cancel(&mut self) {
        self.cancelled.store(true, Ordering::SeqCst);
        for o in &self.outbound {
            o.abort();
        }
        self.parked.clear();
        self.registrations.clear();
        self.controls.clear();
        self.events = None;
    }
}

/// What the control thread needs besides its maps.
pub struct TaskContext {
    /// This TaskManager's id.
    pub id: String,
    /// The async runtime (gRPC, uploads, data exchange).
    pub runtime: tokio::runtime::Handle,
    /// The receiving side of the data plane.
    pub exchange: ExchangeService,
    /// The sending side of the data plane.
    pub connections: Connections,
    /// Rebuilds jobs.
    pub factory: Arc<dyn JobFactory>,
    /// Local state root.
    pub state_dir: PathBuf,
    /// Messages to the JobManager.
    pub outbox: Outbox,
    /// The subtasks' counters (`/metrics`, progress reports).
    pub metrics: Arc<TaskManagerMetrics>,
}

/// A job id and one of its attempts.
type AttemptRef = (String, u32);

/// Every job and attempt this TaskManager runs.
pub struct Tasks {
    ctx: TaskContext,
    jobs: HashMap<String, JobEntry>,
    /// Task ends, reported by waiter threads, so attempts are cleaned up on this thread.
    ended: (Sender<AttemptRef>, crossbeam_channel::Receiver<AttemptRef>),
}

impl Tasks {
    /// No jobs yet.
    pub fn new(ctx: TaskContext) -> Self {
        Self {
            ctx,
            jobs: HashMap::new(),
            ended: crossbeam_channel::unbounded(),
        }
    }

    /// Runs the control loop: JobManager messages from `messages`, until it closes.
    pub fn run(mut self, messages: crossbeam_channel::Receiver<Down>) {
        let ended = self.ended.1.clone();
        loop {
            crossbeam_channel::select! {
                recv(messages) -> msg => match msg {
                    Ok(m) => {
                        let handled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            self.handle(m)
                        }));
                        if let Err(panic) = handled {
                            let detail = panic
                                .downcast_ref::<String>()
                                .cloned()
                                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                                .unwrap_or_else(|| "unknown panic".into());
                            tracing::error!(%detail, "a JobManager message made the control thread panic; it was dropped");
                        }
                    }
                    Err(_) => break,
                },
                recv(ended) -> msg => {
                    if let Ok((job, attempt)) = msg {
                        self.on_task_ended(&job, attempt);
                    }
                }
            }
        }
        self.cancel_all("the TaskManager is stopping");
    }

    /// Handles one message of the JobManager.
    pub fn handle(&mut self, msg: Down) {
        match msg {
            // Answered liveness: the session keeps track of it, the tasks need nothing.
            Down::Heartbeat(_) => {}
            Down::Deploy(d) => self.deploy(d),
            Down::Cancel(c) => self.cancel(&c.job_id, c.attempt, &c.reason),
            Down::Trigger(t) => self.trigger(t),
            Down::Complete(c) => self.complete(&c.job_id, c.attempt, CheckpointId(c.checkpoint_id)),
            Down::Aborted(a) => {
                let id = CheckpointId(a.checkpoint_id);
                if let Some(att) = self.attempt_mut(&a.job_id, a.attempt) {
                    for tx in att.controls.values() {
                        let _ = tx.send(Control::Aborted(id));
                    }
                }
                if let Some(cache) = self.jobs.get(&a.job_id).and_then(|j| j.cache.clone()) {
                    self.ctx
                        .runtime
                        .spawn(async move { cache.discard(id).await });
                }
            }
            Down::Stop(s) => self.stop(&s.job_id, s.attempt),
            Down::Shutdown(s) => {
                let live = self
                    .jobs
                    .values()
                    .flat_map(|j| j.attempts.values())
                    .any(|a| a.live.load(Ordering::SeqCst) > 0);
                if live {
                    tracing::warn!(reason = %s.reason, "the JobManager shuts down: cancelling every task");
                } else {
                    // Nothing runs: an orderly end (e.g. `weir local` after its job), no failure.
                    tracing::debug!(reason = %s.reason, "the JobManager shuts down; no task runs here");
                }
                self.cancel_all(&s.reason);
            }
            Down::Probe(p) => self.probe(p),
            Down::Savepoint(p) => self.prepare_savepoint(p),
            Down::Drain(d) => {
                if let Some(a) = self.attempt_mut(&d.job_id, d.attempt) {
                    tracing::info!(job = %d.job_id, attempt = d.attempt, "draining the sources");
                    for tx in a.controls.values() {
                        let _ = tx.send(Control::Drain);
                    }
                }
            }
            Down::Registered(_) | Down::Refused(_) => {
                tracing::warn!("unexpected registration answer on an established session");
            }
        }
    }

    /// Reads a submission's probe object from the job's checkpoint storage, off this thread,
    /// and answers whether it could (and whether the bytes matched).
    fn probe(&mut self, p: v1::ProbeStorage) {
        let outbox = self.ctx.outbox.clone();
        let reply = move |error: String| {
            outbox.send(Up::StorageProbed(v1::StorageProbed {
                probe_id: p.probe_id,
                error,
            }))
        };
        let store = match p
            .job
            .as_ref()
            .map(|spec| self.ctx.factory.checkpoint_store(spec))
        {
            Some(Ok(Some(store))) => store,
            Some(Ok(None)) => return reply("the job has no checkpoint storage here".into()),
            Some(Err(e)) => return reply(e),
            None => return reply("a ProbeStorage without a job spec".into()),
        };
        let job_id = p.job.as_ref().map(|s| s.job_id.clone()).unwrap_or_default();
        let (path, expected) = (p.path, p.expected);
        self.ctx.runtime.spawn(async move {
            let paths = match JobId::parse(&job_id) {
                Ok(job) => CheckpointPaths::new(job),
                Err(e) => return reply(e),
            };
            let object = match paths.handle_path(&path) {
                Ok(o) => o,
                Err(e) => return reply(format!("probe path '{path}': {e}")),
            };
            let read = tokio::time::timeout(PROBE_TIMEOUT, store.get(&object)).await;
            reply(match read {
                Ok(Ok(bytes)) if bytes.as_ref() == expected.as_slice() => String::new(),
                Ok(Ok(_)) => {
                    format!("{store}/{object} holds other bytes than the JobManager wrote")
                }
                Ok(Err(e)) => format!("cannot read {store}/{object}: {e}"),
                Err(_) => format!("reading {store}/{object} took over {PROBE_TIMEOUT:?}"),
            });
        });
    }

    /// Registers where the tasks of a job write a savepoint (before its barrier reaches them;
    /// their uploads wait for it, bounded).
    fn prepare_savepoint(&mut self, p: v1::PrepareSavepoint) {
        let Some(entry) = self.jobs.get(&p.job_id) else {
            tracing::debug!(job = %p.job_id, "a savepoint target for a job not running here");
            return;
        };
        let Some((_, transfer)) = &entry.built.checkpointing else {
            tracing::warn!(job = %p.job_id, "a savepoint target for a job without checkpointing");
            return;
        };
        let opened = JobId::parse(&p.job_id).and_then(|job| {
            let uploader = self
                .ctx
                .factory
                .open_storage(&entry.spec, &p.folder_url)
                .map(|store| Uploader::self_contained(store, job))?;
            // A local folder: files already on disk (RocksDB's SSTs) are hard-linked, not copied.
            Ok(match weir_storage::StorageUrl::parse(&p.folder_url) {
                Ok(weir_storage::StorageUrl::File { root }) => uploader.with_link_root(root),
                _ => uploader,
            })
        });
        match opened {
            Ok(uploader) => {
                tracing::info!(job = %p.job_id, savepoint = p.checkpoint_id, folder = %p.folder_url, "savepoint target registered");
                transfer
                    .savepoints
                    .register(CheckpointId(p.checkpoint_id), uploader);
            }
            // The tasks decline the savepoint when their wait for the target ends.
            Err(e) => {
                tracing::error!(job = %p.job_id, savepoint = p.checkpoint_id, folder = %p.folder_url, error = %e, "cannot open the savepoint folder")
            }
        }
    }

    /// Cancels every attempt of every job (the session broke or the JobManager shut down).
    pub fn cancel_all(&mut self, reason: &str) {
        let jobs: Vec<(String, u32)> = self
            .jobs
            .iter()
            .filter_map(|(id, j)| j.attempts.keys().last().map(|a| (id.clone(), *a)))
            .collect();
        for (job, attempt) in jobs {
            self.cancel(&job, attempt, reason);
        }
    }

    fn report(&self, task: &v1::TaskKey, state: v1::ExecutionState, error: Option<&TaskError>) {
        report_state(&self.ctx.outbox, task, state, error);
    }

    fn job_entry(&mut self, spec: &JobSpec) -> Result<&mut JobEntry, String> {
        let stale = self
            .jobs
            .get(&spec.job_id)
            .is_some_and(|j| j.spec != *spec && j.attempts.is_empty());
        if stale {
            tracing::info!(job = %spec.job_id, "the job was resubmitted with another spec: rebuilding it");
            self.jobs.remove(&spec.job_id);
        }
        if !self.jobs.contains_key(&spec.job_id) {
            let BuiltJob {
                job,
                plan,
                options,
                state_backend,
                checkpointing,
            } = self.ctx.factory.build(spec)?;
            let job_id = JobId::parse(&spec.job_id)?;
            let cache = match &checkpointing {
                Some(_) => {
                    let root = self.ctx.state_dir.join("local-recovery").join(&spec.job_id);
                    match LocalStateCache::open(&root) {
                        Ok(c) => Some(Arc::new(c)),
                        Err(e) => {
                            tracing::warn!(error = %e, "no local recovery for this job");
                            None
                        }
                    }
                }
                None => None,
            };
            let checkpointing = checkpointing.map(|(mode, store)| {
                let mut uploader = Uploader::new(store, CheckpointPaths::new(job_id));
                if let Some(c) = &cache {
                    uploader = uploader.with_local_cache(c.clone());
                }
                (
                    mode,
                    Arc::new(Transfer::new(uploader, self.ctx.runtime.clone())),
                )
            });
            self.jobs.insert(
                spec.job_id.clone(),
                JobEntry {
                    spec: spec.clone(),
                    job: Arc::new(job),
                    fingerprint: weir_proto::plan_fingerprint(
                        &serde_json::to_vec(&plan).map_err(|e| e.to_string())?,
                        weir_proto::build_identity(),
                    ),
                    plan: Arc::new(plan),
                    built: BuiltJobEnv {
                        options,
                        state_backend,
                        checkpointing,
                        in_flight: Arc::default(),
                    },
                    cache,
                    attempts: BTreeMap::new(),
                    stopping: false,
                },
            );
        }
        Ok(self.jobs.get_mut(&spec.job_id).expect("inserted above"))
    }

    fn deploy(&mut self, d: v1::DeployTask) {
        let Some(key) = d.task.clone() else {
            tracing::warn!("a DeployTask without a task key is ignored");
            return;
        };
        let started = Instant::now();
        self.report(&key, v1::ExecutionState::Deploying, None);
        let deployed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.try_deploy(&key, d, started)
        }))
        .unwrap_or_else(|_| Err("deploying the task panicked".to_string()));
        if let Err(detail) = deployed {
            tracing::error!(job = %key.job_id, attempt = key.attempt, vertex = key.vertex, subtask = key.subtask, %detail, "deployment failed");
            report_failed(&self.ctx.outbox, &key, &detail, false, None);
        }
    }

    fn try_deploy(
        &mut self,
        key: &v1::TaskKey,
        d: v1::DeployTask,
        started: Instant,
    ) -> Result<(), String> {
        let spec = d.job.ok_or("a DeployTask without a job spec")?;
        let restore: Option<TaskRestoreSpec> = if d.restore_json.is_empty() {
            None
        } else {
            Some(
                serde_json::from_slice(&d.restore_json)
                    .map_err(|e| format!("the restore spec does not parse: {e}"))?,
            )
        };
        let external = match restore.as_ref().and_then(|r| r.location.as_deref()) {
            None => None,
            Some(url) => {
                let store = self.ctx.factory.open_storage(&spec, url).map_err(|e| {
                    format!("cannot open the snapshot folder {url} to restore from: {e}")
                })?;
                Some(Uploader::self_contained(store, JobId::parse(&key.job_id)?))
            }
        };
        let self_id = self.ctx.id.clone();
        let tm_metrics = self.ctx.metrics.clone();
        let (runtime, exchange, connections, outbox, state_dir) = (
            self.ctx.runtime.clone(),
            self.ctx.exchange.clone(),
            self.ctx.connections.clone(),
            self.ctx.outbox.clone(),
            self.ctx.state_dir.clone(),
        );
        let ended_tx = self.ended.0.clone();
        let entry = self.job_entry(&spec)?;
        if entry.fingerprint != d.plan_fingerprint {
            return Err(format!(
                "plan fingerprint mismatch for job '{}': the JobMaster's is '{}' (build '{}'), \
                 this TaskManager's is '{}' (build '{}'): the binaries or the job's parameters \
                 differ",
                spec.job_name,
                d.plan_fingerprint,
                d.build_id,
                entry.fingerprint,
                weir_proto::build_identity()
            ));
        }
        let (vertex, subtask) = (VertexId(key.vertex), SubtaskIndex(key.subtask));
        let plan = entry.plan.clone();
        let job = entry.job.clone();
        if plan.job.vertices.len() <= vertex.0 as usize
            || plan.job.vertices[vertex.0 as usize].parallelism <= subtask.0
        {
            return Err(format!(
                "this TaskManager's build of job '{}' has no subtask {subtask} of vertex {vertex}: \
                 the binaries differ",
                spec.job_name
            ));
        }
        if let Some((&newest, _)) = entry.attempts.iter().next_back() {
            if key.attempt < newest {
                return Err(format!(
                    "attempt {} is older than attempt {newest}, already deployed",
                    key.attempt
                ));
            }
        }
        if let Some(l) = d.locations.iter().find(|l| {
            plan.job
                .vertices
                .get(l.vertex as usize)
                .is_none_or(|v| v.parallelism <= l.subtask)
        }) {
            return Err(format!(
                "this TaskManager's build of job '{}' has no subtask {} of vertex {}: the \
                 binaries differ",
                spec.job_name, l.subtask, l.vertex
            ));
        }
        let locations: HashMap<(u32, u32), (String, String)> = d
            .locations
            .iter()
            .map(|l| {
                (
                    (l.vertex, l.subtask),
                    (l.taskmanager_id.clone(), l.data_address.clone()),
                )
            })
            .collect();
        let here: Vec<(VertexId, SubtaskIndex)> = d
            .locations
            .iter()
            .filter(|l| l.taskmanager_id == self_id)
            .map(|l| (VertexId(l.vertex), SubtaskIndex(l.subtask)))
            .collect();
        let keyed_here = keyed_subtasks(&plan, &here).max(1);
        let attempt = entry.attempts.entry(key.attempt).or_insert_with(|| {
            let metrics = Arc::new(JobMetrics::default());
            let cancelled = Arc::new(AtomicBool::new(false));
            watch_first_record(&metrics, &cancelled, &outbox, &key.job_id, key.attempt);
            let live: Arc<AtomicUsize> = Arc::default();
            report_progress(&metrics, &tm_metrics, &cancelled, &live, &outbox, key);
            let events = entry.built.checkpointing.as_ref().map(|_| {
                let (tx, rx) = crossbeam_channel::unbounded::<TaskEvent>();
                forward_events(rx, outbox.clone(), key.job_id.clone(), key.attempt);
                tx
            });
            Attempt {
                cancelled,
                controls: HashMap::new(),
                parked: HashMap::new(),
                registrations: Vec::new(),
                outbound: Vec::new(),
                metrics,
                events,
                live,
                sync_pauses: Arc::default(),
            }
        });
        if attempt.cancelled.load(Ordering::SeqCst) {
            return Err(format!("attempt {} was cancelled", key.attempt));
        }
        let capacity = entry.built.options.channel_capacity;
        let io = entry.built.options.metrics.then(|| {
            tm_metrics.register(
                &key.job_id,
                key.attempt,
                key.vertex,
                key.subtask,
                &plan.job.vertices[vertex.0 as usize].name,
            )
        });
        let channels = subtask_channels(&plan, vertex, subtask);
        let location_of = |v: weir_types::VertexId, s: u32| {
            locations
                .get(&(v.0, s))
                .cloned()
                .ok_or_else(|| format!("no location for subtask {s} of vertex {v}"))
        };
        let channel_key = |r: &ChannelRef| ChannelKey {
            job_id: key.job_id.clone(),
            attempt: key.attempt,
            edge: r.edge as u32,
            upstream: r.upstream,
            downstream: r.downstream,
        };
        let mut outputs: BTreeMap<usize, Vec<ChannelEnd>> = BTreeMap::new();
        for r in &channels.outputs {
            let edge = &plan.job.edges[r.edge];
            let factory = job.edge_factory(&plan, r.edge);
            let (tm, address) = location_of(edge.target, r.downstream)?;
            let end = if tm == self_id {
                match attempt.parked.remove(r) {
                    Some(sender) => sender,
                    None => {
                        let (tx, rx) = factory.pair(capacity);
                        attempt.parked.insert(*r, rx);
                        tx
                    }
                }
            } else {
                let (tx, next) = factory.outbound(capacity);
                let next = match &io {
                    Some(io) => crate::metrics::count_sent(next, io.clone()),
                    None => next,
                };
                let handle = connections.spawn_outbound(&runtime, &address, channel_key(r), next);
                attempt.outbound.push(handle);
                tx
            };
            outputs.entry(r.edge).or_default().push(end);
        }
        let mut inputs = Vec::new();
        for r in &channels.inputs {
            let edge = &plan.job.edges[r.edge];
            let factory = job.edge_factory(&plan, r.edge);
            let (tm, _) = location_of(edge.source, r.upstream)?;
            let end = if tm == self_id {
                match attempt.parked.remove(r) {
                    Some(receiver) => receiver,
                    None => {
                        let (tx, rx) = factory.pair(capacity);
                        attempt.parked.insert(*r, tx);
                        rx
                    }
                }
            } else {
                let ck = channel_key(r);
                let (push, rx) = factory.inbound(capacity, ck.to_string());
                let push = match &io {
                    Some(io) => crate::metrics::count_received(push, io.clone()),
                    None => push,
                };
                let registration = exchange
                    .register_inbound(ck, push)
                    .map_err(|e| e.to_string())?;
                attempt.registrations.push(registration);
                rx
            };
            inputs.push(end);
        }
        let checkpointing = match (&entry.built.checkpointing, &attempt.events) {
            (Some((mode, transfer)), Some(events)) => {
                let (tx, rx) = crossbeam_channel::unbounded();
                attempt.controls.insert((key.vertex, key.subtask), tx);
                Some(CheckpointEnv {
                    mode: *mode,
                    control: rx,
                    events: events.clone(),
                    transfer: transfer.clone(),
                    in_flight: entry.built.in_flight.clone(),
                    sync_pauses: attempt.sync_pauses.clone(),
                })
            }
            _ => None,
        };
        let stats = Arc::new(Mutex::new(weir_state_transfer::DownloadStats::default()));
        let restored = restore.as_ref().map(|r| r.checkpoint);
        let restore = restore.map(|r| RestoreEnv {
            checkpoint: r.checkpoint,
            operators: r.operators,
            rescaled: r.rescaled,
            local_dir: state_dir.join("restore").join(&key.job_id),
            stats: stats.clone(),
            external,
        });
        let on_running = {
            let (outbox, key) = (outbox.clone(), key.clone());
            Box::new(move || {
                if let Some(checkpoint) = restored {
                    let s = *stats.lock().unwrap_or_else(PoisonError::into_inner);
                    tracing::info!(job = %key.job_id, attempt = key.attempt, vertex = key.vertex, subtask = key.subtask, %checkpoint, bytes_downloaded = s.bytes, bytes_local = s.bytes_local, "subtask restored");
                    outbox.send(Up::Restored(v1::TaskRestored {
                        task: Some(key.clone()),
                        checkpoint_id: checkpoint.0,
                        bytes_downloaded: s.bytes,
                        bytes_local: s.bytes_local,
                        duration_ms: started.elapsed().as_millis() as u64,
                    }));
                }
                report_state(&outbox, &key, v1::ExecutionState::Running, None);
            }) as Box<dyn FnOnce() + Send>
        };
        let cancelled = attempt.cancelled.clone();
        let env = SubtaskEnv {
            job: JobId::parse(&key.job_id)?,
            vertex,
            subtask,
            attempt: key.attempt,
            state_backend: entry.built.state_backend.clone(),
            keyed_subtasks_in_process: keyed_here,
            metrics: attempt.metrics.clone(),
            io,
            cancelled: cancelled.clone(),
            options: entry.built.options.clone(),
            checkpointing,
            restore,
            on_running: Some(on_running),
        };
        let handle = spawn_subtask(job, plan, env, outputs, inputs)
            .map_err(|e| format!("cannot start the task thread: {e}"))?;
        attempt.live.fetch_add(1, Ordering::SeqCst);
        let (key, live) = (key.clone(), attempt.live.clone());
        let (metrics, sync_pauses) = (attempt.metrics.clone(), attempt.sync_pauses.clone());
        let tm_metrics = tm_metrics.clone();
        std::thread::Builder::new()
            .name(format!("wait-{}-{}", key.vertex, key.subtask))
            .spawn(move || {
                let result = handle
                    .join()
                    .unwrap_or(Err(TaskError::Cancelled));
                // The last task of the attempt here reports the attempt's figures before its
                // own end, so the JobMaster has them when the attempt ends.
                if live.fetch_sub(1, Ordering::SeqCst) == 1 {
                    let subtasks = tm_metrics.reports(&key.job_id, key.attempt);
                    outbox.send(attempt_metrics(&key, &metrics, &sync_pauses, subtasks));
                    tm_metrics.forget(&key.job_id, key.attempt);
                }
                match result {
                    Ok(()) => report_state(&outbox, &key, v1::ExecutionState::Finished, None),
                    // A task that failed on its own is reported FAILED even when the attempt
                    // was cancelled meanwhile: it may be the root cause the JobMaster looks for.
                    Err(e) if cancelled.load(Ordering::SeqCst) && e.is_secondary() => {
                        report_state(&outbox, &key, v1::ExecutionState::Canceled, None)
                    }
                    Err(e) => {
                        if e.is_secondary() {
                            // A consequence of another task's failure, which is the one to read.
                            tracing::info!(job = %key.job_id, attempt = key.attempt, vertex = key.vertex, subtask = key.subtask, error = %e, "task stopped after another failure");
                        } else {
                            tracing::error!(job = %key.job_id, attempt = key.attempt, vertex = key.vertex, subtask = key.subtask, error = %e, "task failed");
                        }
                        report_state(&outbox, &key, v1::ExecutionState::Failed, Some(&e));
                    }
                }
                let _ = ended_tx.send((key.job_id.clone(), key.attempt));
            })
            .map_err(|e| format!("cannot start the task waiter: {e}"))?;
        Ok(())
    }

    fn attempt_mut(&mut self, job: &str, attempt: u32) -> Option<&mut Attempt> {
        self.jobs.get_mut(job)?.attempts.get_mut(&attempt)
    }

    fn trigger(&mut self, t: v1::TriggerCheckpoint) {
        let Some(key) = t.task else { return };
        let barrier = Barrier {
            checkpoint: CheckpointId(t.checkpoint_id),
            base: t.base.map(CheckpointId),
            savepoint: t.savepoint.then_some(weir_types::SavepointBarrier {
                canonical: t.canonical,
                stop: t.stop,
            }),
        };
        match self
            .attempt_mut(&key.job_id, key.attempt)
            .and_then(|a| a.controls.get(&(key.vertex, key.subtask)))
        {
            Some(tx) => {
                let _ = tx.send(Control::Trigger(barrier));
            }
            None => {
                tracing::debug!(job = %key.job_id, attempt = key.attempt, checkpoint = t.checkpoint_id, "trigger for a task not running here")
            }
        }
    }

    fn complete(&mut self, job: &str, attempt: u32, id: CheckpointId) {
        if let Some(a) = self.attempt_mut(job, attempt) {
            for tx in a.controls.values() {
                let _ = tx.send(Control::Complete(id));
            }
        }
        if let Some(cache) = self.jobs.get(job).and_then(|j| j.cache.clone()) {
            self.ctx
                .runtime
                .spawn(async move { cache.retain_from(id).await });
        }
    }

    fn stop(&mut self, job: &str, attempt: u32) {
        if let Some(entry) = self.jobs.get_mut(job) {
            entry.stopping = true;
            if let Some(a) = entry.attempts.get(&attempt) {
                for tx in a.controls.values() {
                    let _ = tx.send(Control::Shutdown);
                }
            }
        }
        // Tasks that already ended (a job without checkpoints) leave nothing to wait for.
        self.on_task_ended(job, attempt);
    }

    fn cancel(&mut self, job: &str, attempt: u32, reason: &str) {
        let Some(entry) = self.jobs.get_mut(job) else {
            return;
        };
        tracing::info!(job, attempt, reason, "cancelling tasks");
        // Streams of these attempts are refused from now on, then their tasks stop.
        self.ctx.exchange.cancel_attempts(job, attempt);
        for (_, a) in entry.attempts.range_mut(..=attempt) {
            a.cancel();
        }
        let ended: Vec<(String, u32)> = entry
            .attempts
            .range(..=attempt)
            .map(|(n, _)| (job.to_string(), *n))
            .collect();
        for (job, n) in ended {
            self.on_task_ended(&job, n);
        }
    }

    /// Drops attempts whose tasks all ended (cancelled, or the job stopped); drops the job once
    /// it stopped and nothing of it runs.
    fn on_task_ended(&mut self, job: &str, attempt: u32) {
        let Some(entry) = self.jobs.get_mut(job) else {
            return;
        };
        let done = entry.attempts.get(&attempt).is_some_and(|a| {
            a.live.load(Ordering::SeqCst) == 0
                && (a.cancelled.load(Ordering::SeqCst) || entry.stopping)
        });
        if done {
            if let Some(mut a) = entry.attempts.remove(&attempt) {
                a.cancel();
            }
        }
        if entry.stopping && entry.attempts.is_empty() {
            let in_flight = entry.built.in_flight.clone();
            if let Some(entry) = self.jobs.remove(job) {
                let root = entry.cache.as_ref().map(|c| c.root().to_path_buf());
                drop(entry);
                // Uploads still running hold the cache; remove its folder once they are done.
                std::thread::spawn(move || {
                    let until = Instant::now() + Duration::from_secs(30);
                    while in_flight.load(Ordering::SeqCst) > 0 && Instant::now() < until {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    if let Some(root) = root {
                        let _ = std::fs::remove_dir_all(root);
                    }
                });
            }
            tracing::info!(job, "job finished on this TaskManager");
        }
    }
}

/// Longest read of a storage probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

fn attempt_metrics(
    key: &v1::TaskKey,
    metrics: &JobMetrics,
    sync_pauses: &Mutex<Vec<u64>>,
    subtasks: Vec<v1::SubtaskIoReport>,
) -> Up {
    let pauses = sync_pauses.lock().unwrap_or_else(PoisonError::into_inner);
    Up::AttemptMetrics(v1::AttemptMetrics {
        job_id: key.job_id.clone(),
        attempt: key.attempt,
        source_records: JobMetrics::get(&metrics.source_records),
        sink_records: JobMetrics::get(&metrics.sink_records),
        state_bytes: JobMetrics::get(&metrics.state_bytes),
        sync_pauses_us: pauses
            .iter()
            .take(weir_runtime::MAX_RECORDED_SYNC_PAUSES)
            .copied()
            .collect(),
        subtasks,
    })
}

fn report_state(
    outbox: &Outbox,
    task: &v1::TaskKey,
    state: v1::ExecutionState,
    error: Option<&TaskError>,
) {
    match error {
        Some(e) => {
            let damaged = match e {
                TaskError::CheckpointDamaged { checkpoint, .. } => Some(checkpoint.0),
                _ => None,
            };
            outbox.send(Up::TaskState(v1::TaskStateUpdate {
                task: Some(task.clone()),
                state: v1::ExecutionState::Failed as i32,
                error: e.to_string(),
                secondary: e.is_secondary(),
                damaged_checkpoint: damaged,
                incompatible_state: matches!(e, TaskError::IncompatibleState { .. }),
            }))
        }
        None => outbox.send(Up::TaskState(v1::TaskStateUpdate {
            task: Some(task.clone()),
            state: state as i32,
            error: String::new(),
            secondary: false,
            damaged_checkpoint: None,
            incompatible_state: false,
        })),
    }
}

fn report_failed(
    outbox: &Outbox,
    task: &v1::TaskKey,
    error: &str,
    secondary: bool,
    damaged_checkpoint: Option<u64>,
) {
    outbox.send(Up::TaskState(v1::TaskStateUpdate {
        task: Some(task.clone()),
        state: v1::ExecutionState::Failed as i32,
        error: error.to_string(),
        secondary,
        damaged_checkpoint,
        incompatible_state: false,
    }));
}

/// Forwards the checkpoint events of one attempt's tasks to the JobManager until every
/// sender (tasks and their uploads) is gone.
fn forward_events(
    rx: crossbeam_channel::Receiver<TaskEvent>,
    outbox: Outbox,
    job_id: String,
    attempt: u32,
) {
    let spawned = std::thread::Builder::new()
        .name("tm-events".into())
        .spawn(move || {
            let key = |t: weir_checkpoint::TaskId| {
                v1::TaskKey::new(&job_id, weir_types::AttemptId(attempt), t.vertex, t.subtask)
            };
            for event in rx {
                let msg = match event {
                    TaskEvent::Ack {
                        task,
                        id,
                        snapshot,
                        metrics,
                    } => match serde_json::to_vec(&snapshot) {
                        Ok(json) => Up::Ack(v1::CheckpointAck {
                            task: Some(key(task)),
                            checkpoint_id: id.0,
                            snapshot_json: json,
                            metrics: Some(v1::AckMetrics {
                                sync_ms: metrics.sync_ms,
                                async_ms: metrics.async_ms,
                                alignment_ms: metrics.alignment_ms,
                                bytes_uploaded: metrics.bytes_uploaded,
                                full_size: metrics.full_size,
                            }),
                        }),
                        Err(e) => Up::Decline(v1::CheckpointDecline {
                            task: Some(key(task)),
                            checkpoint_id: id.0,
                            reason: format!("the snapshot handles do not serialise: {e}"),
                        }),
                    },
                    TaskEvent::Decline { task, id, reason } => Up::Decline(v1::CheckpointDecline {
                        task: Some(key(task)),
                        checkpoint_id: id.0,
                        reason,
                    }),
                    TaskEvent::Finished { task, .. } => Up::EndOfInput(v1::TaskEndOfInput {
                        task: Some(key(task)),
                    }),
                };
                outbox.send(msg);
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the checkpoint event forwarder");
    }
}

/// Reports the first record this TaskManager's sources of an attempt emitted.
/// How often a running attempt's record counts go to the JobMaster (its live metrics).
const PROGRESS_INTERVAL: Duration = Duration::from_millis(200);

/// Reports the attempt's record counts (no pauses: the final report carries them) every
/// [`PROGRESS_INTERVAL`] while its tasks here run; stops when it is cancelled or its last task
/// here ended.
fn report_progress(
    metrics: &Arc<JobMetrics>,
    tm_metrics: &Arc<TaskManagerMetrics>,
    cancelled: &Arc<AtomicBool>,
    live: &Arc<AtomicUsize>,
    outbox: &Outbox,
    key: &v1::TaskKey,
) {
    let (metrics, tm_metrics, cancelled, live, outbox, key) = (
        metrics.clone(),
        tm_metrics.clone(),
        cancelled.clone(),
        live.clone(),
        outbox.clone(),
        key.clone(),
    );
    let none = Mutex::new(Vec::new());
    let _ = std::thread::Builder::new()
        .name("tm-progress".into())
        .spawn(move || {
            let mut seen_live = false;
            while !cancelled.load(Ordering::SeqCst) {
                std::thread::sleep(PROGRESS_INTERVAL);
                let running = live.load(Ordering::SeqCst) > 0;
                if seen_live && !running {
                    return;
                }
                seen_live |= running;
                if running {
                    let subtasks = tm_metrics.reports(&key.job_id, key.attempt);
                    outbox.send(attempt_metrics(&key, &metrics, &none, subtasks));
                }
            }
        });
}

fn watch_first_record(
    metrics: &Arc<JobMetrics>,
    cancelled: &Arc<AtomicBool>,
    outbox: &Outbox,
    job_id: &str,
    attempt: u32,
) {
    let (metrics, cancelled, outbox, job_id) = (
        metrics.clone(),
        cancelled.clone(),
        outbox.clone(),
        job_id.to_string(),
    );
    let _ = std::thread::Builder::new()
        .name("tm-first-record".into())
        .spawn(move || {
            let until = Instant::now() + Duration::from_secs(600);
            while !cancelled.load(Ordering::SeqCst) && Instant::now() < until {
                if JobMetrics::get(&metrics.source_records) > 0 {
                    outbox.send(Up::FirstRecord(v1::FirstRecord {
                        job_id,
                        attempt,
                        at_ms: now_ms(),
                    }));
                    return;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        });
}
