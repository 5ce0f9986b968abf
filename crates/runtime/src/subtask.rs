//! One subtask in this process: what its operators are built with ([`SubtaskCtx`]), how its
//! chain is assembled tail-first and its loop started ([`run_task`]). Deployment (which
//! subtasks run here, with which channels) is [`crate::deploy`]'s; which subtasks run at all,
//! and when, is the JobMaster's: this crate holds no job orchestration.

use crate::api::NodeRuntime;
use crate::function::SourceContext;
use crate::link::AnyBox;
use crate::metrics::{JobMetrics, SubtaskIo};
use crate::operators::OpIdent;
use crate::side::{SideLink, SideOutputs};
use crate::snapshot::{TaskCheckpointing, TaskRestore};
use crate::{JobDefinition, TaskError};
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;
use weir_graph::ParallelismSettings;
use weir_state::{BackendScope, StateBackendFactory};
use weir_types::{JobId, KeyGroupRange, NodeId, OperatorUid, SubtaskIndex, VertexId};

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
    /// Count each subtask's records, bytes and backpressure (`metrics.enabled`).
    pub metrics: bool,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        Self {
            batch_size: 1024,
            channel_capacity: 8,
            buffer_timeout: Duration::from_millis(100),
            metrics: true,
        }
    }
}

pub use weir_graph::Plan;

impl JobDefinition {
    /// Resolves the job's graph layers; uid and parallelism errors name the operator.
    pub fn plan(&self, settings: ParallelismSettings) -> Result<Plan, weir_graph::GraphError> {
        Plan::resolve(self.graph.clone(), settings)
    }
}

/// What one subtask's operators are built with.
pub(crate) struct SubtaskCtx {
    pub job: JobId,
    pub uid: OperatorUid,
    pub subtask: SubtaskIndex,
    pub parallelism: u32,
    pub max_parallelism: u32,
    pub key_groups: KeyGroupRange,
    pub state_backend: Arc<dyn StateBackendFactory>,
    pub keyed_subtasks_in_process: u32,
    pub metrics: Arc<JobMetrics>,
    pub io: Option<Arc<SubtaskIo>>,
    pub cancelled: Arc<AtomicBool>,
    pub options: RuntimeOptions,
    pub attempt: u32,
    pub checkpointing: Option<Arc<TaskCheckpointing>>,
    pub restore: Option<Arc<TaskRestore>>,
    /// The operator's side outputs that the job reads, until the operator takes them.
    pub side_outputs: RefCell<Vec<(String, Box<dyn SideLink>)>>,
}

impl SubtaskCtx {
    /// The operator's side outputs (each operator takes them once, when it is built).
    pub(crate) fn take_side_outputs(&self) -> SideOutputs {
        SideOutputs::new(std::mem::take(&mut *self.side_outputs.borrow_mut()))
    }

    pub(crate) fn ident(&self) -> OpIdent {
        OpIdent {
            uid: self.uid.to_string(),
            subtask: self.subtask,
            parallelism: self.parallelism,
        }
    }

    pub(crate) fn source_context(&self) -> SourceContext {
        SourceContext {
            job: self.job,
            uid: self.uid.clone(),
            subtask: self.subtask,
            parallelism: self.parallelism,
            cancelled: self.cancelled.clone(),
            attempt: self.attempt,
            checkpointing: self.checkpointing.is_some(),
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

/// One subtask to assemble: its channels and its checkpoint and restore environment.
pub(crate) struct TaskSpec {
    pub(crate) name: String,
    pub(crate) vertex: VertexId,
    pub(crate) subtask: SubtaskIndex,
    pub(crate) key_groups: KeyGroupRange,
    /// Senders of this subtask per outgoing job edge index.
    pub(crate) senders: HashMap<usize, AnyBox>,
    /// Receivers of this subtask, over all incoming job edges.
    pub(crate) receivers: Vec<AnyBox>,
    pub(crate) checkpointing: Option<Arc<TaskCheckpointing>>,
    pub(crate) restore: Option<Arc<TaskRestore>>,
    /// Called once the chain is assembled (state restored), before the first record.
    pub(crate) on_running: Option<Box<dyn FnOnce() + Send>>,
}

pub(crate) fn thread_name(name: &str) -> String {
    // Linux shows 15 bytes of a thread name; keep the subtask suffix visible.
    name.chars().filter(|c| c.is_ascii()).collect()
}

pub(crate) fn panic_error(task: &str, panic: Box<dyn std::any::Any + Send>) -> TaskError {
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

pub(crate) struct BaseCtx {
    pub(crate) job: JobId,
    pub(crate) state_backend: Arc<dyn StateBackendFactory>,
    pub(crate) keyed_subtasks_in_process: u32,
    pub(crate) metrics: Arc<JobMetrics>,
    pub(crate) io: Option<Arc<SubtaskIo>>,
    pub(crate) cancelled: Arc<AtomicBool>,
    pub(crate) options: RuntimeOptions,
    pub(crate) attempt: u32,
}

/// Assembles one subtask's chain tail-first, then runs its loop.
pub(crate) fn run_task(
    job: &JobDefinition,
    plan: &Plan,
    base: &BaseCtx,
    mut spec: TaskSpec,
) -> Result<(), TaskError> {
    let vertex = &plan.job.vertices[spec.vertex.0 as usize];
    let ctx_for = |node: NodeId| SubtaskCtx {
        job: base.job,
        uid: plan.uids[node.0 as usize].clone(),
        subtask: spec.subtask,
        parallelism: vertex.parallelism,
        max_parallelism: plan.job.max_parallelism,
        key_groups: spec.key_groups,
        state_backend: base.state_backend.clone(),
        keyed_subtasks_in_process: base.keyed_subtasks_in_process,
        metrics: base.metrics.clone(),
        io: base.io.clone(),
        cancelled: base.cancelled.clone(),
        options: base.options.clone(),
        attempt: base.attempt,
        checkpointing: spec.checkpointing.clone(),
        restore: spec.restore.clone(),
        side_outputs: RefCell::new(Vec::new()),
    };
    let mut built: HashMap<NodeId, AnyBox> = HashMap::new();
    for &node in vertex.nodes.iter().rev() {
        let ctx = ctx_for(node);
        let mut outputs = Vec::new();
        let mut sides: Vec<(String, Vec<AnyBox>)> = Vec::new();
        for edge in plan.stream.outputs(node) {
            // A side output's links go to its collector, the main output's to the chain.
            let out = match &edge.side_output {
                None => &mut outputs,
                Some(tag) => {
                    let i = match sides.iter().position(|(t, _)| t == tag) {
                        Some(i) => i,
                        None => {
                            sides.push((tag.clone(), Vec::new()));
                            sides.len() - 1
                        }
                    };
                    &mut sides[i].1
                }
            };
            if let Some(link) = built.remove(&edge.target) {
                out.push(link);
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
            out.push(
                job.edge_runtime(node, edge.target)
                    .writer(&ctx, senders, je.partitioning),
            );
        }
        *ctx.side_outputs.borrow_mut() = sides
            .into_iter()
            .map(|(tag, links)| {
                let make = job.side_runtime(node, &tag);
                (tag, make(links))
            })
            .collect();
        match &job.nodes[node.0 as usize] {
            NodeRuntime::Source(src) => {
                debug_assert_eq!(node, vertex.head);
                tracing::debug!(task = %spec.name, "source task starting");
                if let Some(running) = spec.on_running.take() {
                    running();
                }
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
    if let Some(running) = spec.on_running.take() {
        running();
    }
    op.run_inputs(
        &ctx_for(vertex.head),
        std::mem::take(&mut spec.receivers),
        head,
    )
}
