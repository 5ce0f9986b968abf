//! Running chosen subtasks of a job in this process, with channels the caller supplies: what a
//! TaskManager does with each `DeployTask`.
//!
//! 1. [`subtask_channels`] lists the channels a subtask reads and writes, by
//!    [`ChannelRef`] (job edge, upstream subtask, downstream subtask).
//! 2. For each, the caller makes the task's end with the edge's factory
//!    ([`JobDefinition::edge_factory`]): an in-memory [`EdgeFactory::pair`] when both subtasks
//!    run in this process (the other end goes to the other subtask), or an
//!    [`EdgeFactory::outbound`] / [`EdgeFactory::inbound`] end pumped over the network.
//! 3. [`spawn_subtask`] assembles the chain (restoring state, then calling
//!    [`SubtaskEnv::on_running`]) and runs the task loop on its own thread. Its result is the
//!    thread's result: `Ok` at a clean end, the root cause otherwise (panics included).

use crate::api::ErasedEdge;
use crate::link::AnyBox;
use crate::metrics::JobMetrics;
use crate::remote::{NextEncoded, PushEncoded};
use crate::snapshot::{Control, TaskCheckpointing, TaskEvent, TaskRestore, Transfer};
use crate::subtask::{panic_error, run_task, thread_name, BaseCtx, TaskSpec};
use crate::{JobDefinition, RuntimeOptions, TaskError};
use crossbeam_channel::{Receiver, Sender};
use std::collections::{BTreeMap, HashMap};
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, Mutex};
use weir_checkpoint::{CheckpointingMode, OperatorSubtaskState, TaskId};
use weir_graph::{NodeKind, Partitioning, Plan};
use weir_state::StateBackendFactory;
use weir_state_transfer::DownloadStats;
use weir_types::{CheckpointId, JobId, OperatorUid, SubtaskIndex, VertexId};

/// A channel end of some edge's record type, type-erased (made by an [`EdgeFactory`]).
pub struct ChannelEnd(AnyBox);

/// One channel of a job: edge `edge` (index into `plan.job.edges`), from upstream subtask
/// `upstream` to downstream subtask `downstream`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelRef {
    /// Index of the job edge.
    pub edge: usize,
    /// Upstream subtask index.
    pub upstream: u32,
    /// Downstream subtask index.
    pub downstream: u32,
}

/// The channels one subtask writes (`outputs`, per edge in downstream order) and reads.
#[derive(Clone, Debug, Default)]
pub struct SubtaskChannels {
    /// Outgoing channels.
    pub outputs: Vec<ChannelRef>,
    /// Incoming channels.
    pub inputs: Vec<ChannelRef>,
}

/// Lists the channels of `vertex`'s subtask `subtask`: every (upstream, downstream) pair of
/// every edge it touches; forward edges only connect `i → i`.
pub fn subtask_channels(plan: &Plan, vertex: VertexId, subtask: SubtaskIndex) -> SubtaskChannels {
    let mut out = SubtaskChannels::default();
    for (e, edge) in plan.job.edges.iter().enumerate() {
        let forward = edge.partitioning == Partitioning::Forward;
        if edge.source == vertex {
            let n_down = plan.job.vertices[edge.target.0 as usize].parallelism;
            for d in 0..n_down {
                if !forward || d == subtask.0 {
                    out.outputs.push(ChannelRef {
                        edge: e,
                        upstream: subtask.0,
                        downstream: d,
                    });
                }
            }
        }
        if edge.target == vertex {
            let n_up = plan.job.vertices[edge.source.0 as usize].parallelism;
            for u in 0..n_up {
                if !forward || u == subtask.0 {
                    out.inputs.push(ChannelRef {
                        edge: e,
                        upstream: u,
                        downstream: subtask.0,
                    });
                }
            }
        }
    }
    out
}

/// Makes channel ends of one edge's record type.
pub struct EdgeFactory(Arc<dyn ErasedEdge>);

impl EdgeFactory {
    /// An in-memory channel: `(sender end, receiver end)`.
    pub fn pair(&self, capacity: usize) -> (ChannelEnd, ChannelEnd) {
        let (tx, rx) = self.0.pair(capacity);
        (ChannelEnd(tx), ChannelEnd(rx))
    }

    /// A sender end whose elements are taken, encoded, by `next` (for a network pump).
    pub fn outbound(&self, capacity: usize) -> (ChannelEnd, NextEncoded) {
        let (tx, next) = self.0.outbound(capacity);
        (ChannelEnd(tx), next)
    }

    /// A receiver end fed, encoded, through `push` (by a network pump); `label` names the
    /// channel in decode errors.
    pub fn inbound(&self, capacity: usize, label: String) -> (PushEncoded, ChannelEnd) {
        let (push, rx) = self.0.inbound(capacity, label);
        (push, ChannelEnd(rx))
    }
}

impl JobDefinition {
    /// The channel factory of job edge `edge` of `plan`.
    pub fn edge_factory(&self, plan: &Plan, edge: usize) -> EdgeFactory {
        let e = &plan.job.edges[edge];
        EdgeFactory(self.edge_runtime(e.source_node, e.target_node).clone())
    }
}

/// Checkpointing for a deployed subtask.
pub struct CheckpointEnv {
    /// Exactly-once or at-least-once alignment.
    pub mode: CheckpointingMode,
    /// Triggers, completions and the final stop, from the JobMaster.
    pub control: Receiver<Control>,
    /// Acks, declines and end of input, to the JobMaster.
    pub events: Sender<TaskEvent>,
    /// Uploads (and restore downloads) of this job.
    pub transfer: Arc<Transfer>,
    /// Uploads running, over this process's tasks (wait for them before exiting).
    pub in_flight: Arc<AtomicUsize>,
    /// Where the task records each synchronous snapshot pause, in microseconds (shared by
    /// the tasks of one attempt; reported to the JobMaster for benchmarks).
    pub sync_pauses: Arc<Mutex<Vec<u64>>>,
}

/// What a deployed subtask restores from.
pub struct RestoreEnv {
    /// The completed checkpoint.
    pub checkpoint: CheckpointId,
    /// Per operator uid of the chain, the state its subtask stored.
    pub operators: BTreeMap<OperatorUid, OperatorSubtaskState>,
    /// Operators restored at another parallelism: every old subtask's state.
    pub rescaled: BTreeMap<OperatorUid, weir_checkpoint::RescaledOperator>,
    /// Where downloads go before the backend takes them.
    pub local_dir: PathBuf,
    /// Filled while the chain restores: bytes downloaded and read from the local copy.
    pub stats: Arc<Mutex<DownloadStats>>,
    /// Reads the files of a snapshot outside the job's checkpoint folder (a savepoint's own
    /// folder); `None`: the job's folder. Such files are never the job's incremental base.
    pub external: Option<weir_state_transfer::Uploader>,
}

/// Everything a deployed subtask runs with besides its channels.
pub struct SubtaskEnv {
    /// The job.
    pub job: JobId,
    /// The vertex.
    pub vertex: VertexId,
    /// The subtask index.
    pub subtask: SubtaskIndex,
    /// The job attempt (rises with every failover).
    pub attempt: u32,
    /// Keyed state backends.
    pub state_backend: Arc<dyn StateBackendFactory>,
    /// Keyed subtasks this process runs for the job (the memory budget is split over them).
    pub keyed_subtasks_in_process: u32,
    /// The job's counters in this process.
    pub metrics: Arc<JobMetrics>,
    /// This subtask's data-plane counters; `None` when the job runs with
    /// `metrics.enabled: false` (nothing is counted).
    pub io: Option<Arc<crate::metrics::SubtaskIo>>,
    /// Set to stop the task (cancel).
    pub cancelled: Arc<AtomicBool>,
    /// Data-plane tunables.
    pub options: RuntimeOptions,
    /// Checkpointing, when the job has it.
    pub checkpointing: Option<CheckpointEnv>,
    /// The state to restore, when the attempt restores a checkpoint.
    pub restore: Option<RestoreEnv>,
    /// Called once, after the chain is assembled and its state restored, before the first
    /// record.
    pub on_running: Option<Box<dyn FnOnce() + Send>>,
}

/// Keyed subtasks among `subtasks` of `plan` (for [`SubtaskEnv::keyed_subtasks_in_process`]).
pub fn keyed_subtasks(plan: &Plan, subtasks: &[(VertexId, SubtaskIndex)]) -> u32 {
    subtasks
        .iter()
        .map(|(v, _)| {
            let vertex = &plan.job.vertices[v.0 as usize];
            vertex
                .nodes
                .iter()
                .filter(|n| plan.stream.nodes[n.0 as usize].kind == NodeKind::KeyedOperator)
                .count() as u32
        })
        .sum()
}

/// Starts one subtask on its own thread. `outputs` holds, per outgoing edge index, the sender
/// ends in the order [`subtask_channels`] listed them; `inputs` the receiver ends.
pub fn spawn_subtask(
    job: Arc<JobDefinition>,
    plan: Arc<Plan>,
    env: SubtaskEnv,
    outputs: BTreeMap<usize, Vec<ChannelEnd>>,
    inputs: Vec<ChannelEnd>,
) -> std::io::Result<std::thread::JoinHandle<Result<(), TaskError>>> {
    let vertex = &plan.job.vertices[env.vertex.0 as usize];
    let ev = plan
        .execution
        .subtasks
        .iter()
        .find(|s| s.vertex == env.vertex && s.subtask == env.subtask)
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "the plan has no subtask {} of vertex {}",
                    env.subtask, env.vertex
                ),
            )
        })?;
    let name = format!(
        "{} ({}/{})",
        vertex.name,
        env.subtask.0 + 1,
        vertex.parallelism
    );
    let task = TaskId::new(env.vertex, env.subtask);
    let checkpointing = env.checkpointing.map(|c| {
        Arc::new(TaskCheckpointing {
            task,
            subtask: env.subtask,
            mode: c.mode,
            control: c.control,
            events: c.events,
            transfer: c.transfer,
            sync_pauses: c.sync_pauses,
            attempt: env.attempt,
            in_flight: c.in_flight,
        })
    });
    let restore = match (env.restore, &checkpointing) {
        (Some(r), Some(cp)) => Some(Arc::new(TaskRestore {
            checkpoint: r.checkpoint,
            operators: r.operators,
            rescaled: r.rescaled,
            external: r.external.is_some(),
            transfer: match r.external {
                Some(uploader) => Arc::new(Transfer::new(uploader, cp.transfer.runtime.clone())),
                None => cp.transfer.clone(),
            },
            local_dir: r.local_dir,
            stats: r.stats,
        })),
        (Some(r), None) => {
            // Starting fresh would replay the sources into sinks that cannot roll back.
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "{name} must restore {} but this process runs the job without \
                     checkpointing (execution.checkpointing.interval)",
                    r.checkpoint
                ),
            ));
        }
        (None, _) => None,
    };
    let spec = TaskSpec {
        name: name.clone(),
        vertex: env.vertex,
        subtask: env.subtask,
        key_groups: ev.key_groups,
        senders: outputs
            .into_iter()
            .map(|(e, ends)| {
                let f = job.edge_factory(&plan, e);
                (e, f.0.bundle(ends.into_iter().map(|c| c.0).collect()))
            })
            .collect::<HashMap<_, _>>(),
        receivers: inputs.into_iter().map(|c| c.0).collect(),
        checkpointing,
        restore,
        on_running: env.on_running,
    };
    let base = BaseCtx {
        job: env.job,
        state_backend: env.state_backend,
        keyed_subtasks_in_process: env.keyed_subtasks_in_process,
        metrics: env.metrics,
        io: env.io,
        cancelled: env.cancelled,
        options: env.options,
        attempt: env.attempt,
    };
    std::thread::Builder::new()
        .name(thread_name(&name))
        .spawn(move || {
            std::panic::catch_unwind(AssertUnwindSafe(|| run_task(&job, &plan, &base, spec)))
                .unwrap_or_else(|panic| Err(panic_error(&name, panic)))
        })
}
