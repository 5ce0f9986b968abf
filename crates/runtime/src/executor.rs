//! The in-process executor behind `weir local`: plans a [`JobDefinition`] and runs every
//! subtask on its own thread.

use crate::api::NodeRuntime;
use crate::function::SourceContext;
use crate::link::AnyBox;
use crate::metrics::JobMetrics;
use crate::operators::OpIdent;
use crate::{JobDefinition, JobError, TaskError};
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir_graph::{
    ExecutionGraph, JobGraph, NodeKind, ParallelismSettings, Partitioning, StreamGraph,
};
use weir_state::{BackendScope, StateBackendFactory};
use weir_types::{KeyGroupRange, NodeId, OperatorUid, SubtaskIndex, VertexId};

/// Tunables of the data plane.
#[derive(Clone, Debug)]
pub struct RuntimeOptions {
    /// Records per batch between tasks (`taskmanager.network.batch-size`).
    pub batch_size: usize,
    /// Batches a channel holds before its producer blocks
    /// (`taskmanager.network.channel-capacity`).
    pub channel_capacity: usize,
    /// Longest time a record waits in an output buffer (`execution.buffer-timeout.interval`).
    pub buffer_timeout: Duration,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        Self {
            batch_size: 1024,
            channel_capacity: 8,
            buffer_timeout: Duration::from_millis(100),
        }
    }
}

/// A job's three graph layers, resolved for one set of parallelism settings.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The StreamGraph with parallelism and partitioning resolved.
    pub stream: StreamGraph,
    /// Validated uids, by node.
    pub uids: Vec<OperatorUid>,
    /// Operators chained into vertices.
    pub job: JobGraph,
    /// Vertices split into subtasks.
    pub execution: ExecutionGraph,
}

impl JobDefinition {
    /// Resolves the job's graph layers; uid and parallelism errors name the operator.
    pub fn plan(&self, settings: ParallelismSettings) -> Result<Plan, weir_graph::GraphError> {
        let mut stream = self.graph.clone();
        let uids = stream.resolve(settings)?;
        let job = JobGraph::from_stream_graph(&stream);
        let execution = ExecutionGraph::from_job_graph(&job);
        Ok(Plan {
            stream,
            uids,
            job,
            execution,
        })
    }
}

/// What a finished job reports.
#[derive(Clone, Debug)]
pub struct JobReport {
    /// Wall time from the first task start to the last task end.
    pub duration: Duration,
    /// Records emitted by the sources.
    pub source_records: u64,
    /// Records written by the sinks.
    pub sink_records: u64,
    /// Keyed state at end of input, in bytes, over all keyed subtasks.
    pub state_bytes: u64,
    /// Number of tasks (subtasks of all vertices) that ran.
    pub tasks: usize,
}

/// What one subtask's operators are built with.
pub(crate) struct SubtaskCtx {
    pub uid: OperatorUid,
    pub subtask: SubtaskIndex,
    pub parallelism: u32,
    pub max_parallelism: u32,
    pub key_groups: KeyGroupRange,
    pub state_backend: Arc<dyn StateBackendFactory>,
    pub keyed_subtasks_in_process: u32,
    pub metrics: Arc<JobMetrics>,
    pub cancelled: Arc<AtomicBool>,
    pub options: RuntimeOptions,
    pub attempt: u32,
    pub checkpointing: bool,
}

impl SubtaskCtx {
    pub(crate) fn ident(&self) -> OpIdent {
        OpIdent {
            uid: self.uid.to_string(),
            subtask: self.subtask,
            parallelism: self.parallelism,
        }
    }

    pub(crate) fn source_context(&self) -> SourceContext {
        SourceContext {
            uid: self.uid.clone(),
            subtask: self.subtask,
            parallelism: self.parallelism,
            cancelled: self.cancelled.clone(),
            attempt: self.attempt,
            checkpointing: self.checkpointing,
        }
    }

    pub(crate) fn backend_scope(&self) -> BackendScope {
        BackendScope {
            operator_uid: self.uid.clone(),
            subtask: self.subtask,
            parallelism: self.parallelism,
            max_parallelism: self.max_parallelism,
            key_group_range: self.key_groups,
            keyed_subtasks_in_process: self.keyed_subtasks_in_process,
        }
    }
}

/// Runs jobs inside this process, one thread per subtask.
pub struct LocalExecutor {
    options: RuntimeOptions,
    state_backend: Arc<dyn StateBackendFactory>,
    metrics: Arc<JobMetrics>,
    cancelled: Arc<AtomicBool>,
}

struct TaskSpec {
    name: String,
    vertex: VertexId,
    subtask: SubtaskIndex,
    key_groups: KeyGroupRange,
    /// Senders of this subtask per outgoing job edge index.
    senders: HashMap<usize, AnyBox>,
    /// Receivers of this subtask, over all incoming job edges.
    receivers: Vec<AnyBox>,
}

impl LocalExecutor {
    /// An executor whose keyed operators keep state in backends from `state_backend`.
    pub fn new(options: RuntimeOptions, state_backend: Arc<dyn StateBackendFactory>) -> Self {
        Self {
            options,
            state_backend,
            metrics: Arc::new(JobMetrics::default()),
            cancelled: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The job's live counters (readable while it runs, e.g. by a progress reporter).
    pub fn metrics(&self) -> Arc<JobMetrics> {
        self.metrics.clone()
    }

    /// A flag that cancels the running job when set (Ctrl-C).
    pub fn cancel_flag(&self) -> Arc<AtomicBool> {
        self.cancelled.clone()
    }

    /// Runs `job` as planned until every task has finished. On failure, returns the root
    /// cause: the first error that is not a consequence of another task's failure.
    pub fn execute(&self, job: &JobDefinition, plan: &Plan) -> Result<JobReport, JobError> {
        let start = Instant::now();
        let def = job;
        // 1. Channels: for every job edge, one per (upstream, downstream) subtask pair.
        let mut specs: Vec<TaskSpec> = Vec::new();
        let mut index: HashMap<(VertexId, u32), usize> = HashMap::new();
        for ev in &plan.execution.subtasks {
            let v = &plan.job.vertices[ev.vertex.0 as usize];
            index.insert((ev.vertex, ev.subtask.0), specs.len());
            specs.push(TaskSpec {
                name: format!("{} ({}/{})", v.name, ev.subtask.0 + 1, ev.parallelism),
                vertex: ev.vertex,
                subtask: ev.subtask,
                key_groups: ev.key_groups,
                senders: HashMap::new(),
                receivers: Vec::new(),
            });
        }
        for (e, edge) in plan.job.edges.iter().enumerate() {
            let n_up = plan.job.vertices[edge.source.0 as usize].parallelism as usize;
            let n_down = plan.job.vertices[edge.target.0 as usize].parallelism as usize;
            let forward = edge.partitioning == Partitioning::Forward;
            let (senders, receivers) = def
                .edge_runtime(edge.source_node, edge.target_node)
                .channels(n_up, n_down, forward, self.options.channel_capacity);
            for (up, s) in senders.into_iter().enumerate() {
                specs[index[&(edge.source, up as u32)]].senders.insert(e, s);
            }
            for (down, rs) in receivers.into_iter().enumerate() {
                specs[index[&(edge.target, down as u32)]]
                    .receivers
                    .extend(rs);
            }
        }
        let keyed_subtasks: u32 = plan
            .stream
            .nodes
            .iter()
            .filter(|n| n.kind == NodeKind::KeyedOperator)
            .map(|n| n.resolved_parallelism)
            .sum();
        // 2. One (scoped) thread per subtask; each reports its end on `done`.
        let (done_tx, done_rx) = crossbeam_channel::unbounded::<(String, Result<(), TaskError>)>();
        let tasks = specs.len();
        let base = BaseCtx {
            state_backend: self.state_backend.clone(),
            keyed_subtasks_in_process: keyed_subtasks,
            metrics: self.metrics.clone(),
            cancelled: self.cancelled.clone(),
            options: self.options.clone(),
        };
        let mut primary: Option<TaskError> = None;
        let mut secondary: Option<TaskError> = None;
        std::thread::scope(|scope| -> Result<(), JobError> {
            for spec in specs {
                let (base, done) = (&base, done_tx.clone());
                let name = spec.name.clone();
                std::thread::Builder::new()
                    .name(thread_name(&spec.name))
                    .spawn_scoped(scope, move || {
                        let name = spec.name.clone();
                        let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
                            run_task(job, plan, base, spec)
                        }))
                        .unwrap_or_else(|panic| Err(panic_error(&name, panic)));
                        let _ = done.send((name, result));
                    })
                    .map_err(|e| {
                        self.cancelled.store(true, Ordering::Relaxed);
                        JobError::Thread {
                            task: name,
                            detail: format!("could not start: {e}"),
                        }
                    })?;
            }
            drop(done_tx);
            // 3. Collect: the first primary error cancels the rest.
            for (name, result) in done_rx.iter() {
                match result {
                    Ok(()) => tracing::debug!(task = %name, "task finished"),
                    Err(e) if e.is_secondary() => {
                        tracing::debug!(task = %name, error = %e, "task stopped");
                        self.cancelled.store(true, Ordering::Relaxed);
                        secondary.get_or_insert(e);
                    }
                    Err(e) => {
                        tracing::error!(task = %name, error = %e, "task failed");
                        self.cancelled.store(true, Ordering::Relaxed);
                        primary.get_or_insert(e);
                    }
                }
            }
            Ok(())
        })?;
        if let Some(e) = primary.or(secondary) {
            return Err(e.into());
        }
        Ok(JobReport {
            duration: start.elapsed(),
            source_records: JobMetrics::get(&self.metrics.source_records),
            sink_records: JobMetrics::get(&self.metrics.sink_records),
            state_bytes: JobMetrics::get(&self.metrics.state_bytes),
            tasks,
        })
    }
}

fn thread_name(name: &str) -> String {
    // Linux shows 15 bytes of a thread name; keep the subtask suffix visible.
    name.chars().filter(|c| c.is_ascii()).collect()
}

fn panic_error(task: &str, panic: Box<dyn std::any::Any + Send>) -> TaskError {
    let detail = panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into());
    TaskError::Panicked {
        task: task.to_string(),
        detail,
    }
}

struct BaseCtx {
    state_backend: Arc<dyn StateBackendFactory>,
    keyed_subtasks_in_process: u32,
    metrics: Arc<JobMetrics>,
    cancelled: Arc<AtomicBool>,
    options: RuntimeOptions,
}

/// Assembles one subtask's chain tail-first, then runs its loop.
fn run_task(
    job: &JobDefinition,
    plan: &Plan,
    base: &BaseCtx,
    mut spec: TaskSpec,
) -> Result<(), TaskError> {
    let vertex = &plan.job.vertices[spec.vertex.0 as usize];
    let ctx_for = |node: NodeId| SubtaskCtx {
        uid: plan.uids[node.0 as usize].clone(),
        subtask: spec.subtask,
        parallelism: vertex.parallelism,
        max_parallelism: plan.job.max_parallelism,
        key_groups: spec.key_groups,
        state_backend: base.state_backend.clone(),
        keyed_subtasks_in_process: base.keyed_subtasks_in_process,
        metrics: base.metrics.clone(),
        cancelled: base.cancelled.clone(),
        options: base.options.clone(),
        attempt: 0,
        checkpointing: false,
    };
    let mut built: HashMap<NodeId, AnyBox> = HashMap::new();
    for &node in vertex.nodes.iter().rev() {
        let ctx = ctx_for(node);
        let mut outputs = Vec::new();
        for edge in plan.stream.outputs(node) {
            if let Some(link) = built.remove(&edge.target) {
                outputs.push(link);
                continue;
            }
            let (e, je) = plan
                .job
                .edges
                .iter()
                .enumerate()
                .find(|(_, je)| je.source_node == node && je.target_node == edge.target)
                .expect("an edge leaving the chain is a job edge");
            let senders = spec
                .senders
                .remove(&e)
                .expect("senders for every outgoing edge");
            outputs.push(job.edge_runtime(node, edge.target).writer(
                &ctx,
                senders,
                je.partitioning,
            ));
        }
        match &job.nodes[node.0 as usize] {
            NodeRuntime::Source(src) => {
                debug_assert_eq!(node, vertex.head);
                tracing::debug!(task = %spec.name, "source task starting");
                return src.run(&ctx, outputs);
            }
            NodeRuntime::Operator(op) => {
                let link = op.build(&ctx, outputs)?;
                built.insert(node, link);
            }
        }
    }
    let head = built.remove(&vertex.head).expect("the head was built");
    let NodeRuntime::Operator(op) = &job.nodes[vertex.head.0 as usize] else {
        unreachable!("a source head returns above")
    };
    tracing::debug!(task = %spec.name, inputs = spec.receivers.len(), "task starting");
    op.run_inputs(
        &ctx_for(vertex.head),
        std::mem::take(&mut spec.receivers),
        head,
    )
}
