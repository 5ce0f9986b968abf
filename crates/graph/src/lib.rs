//! The graph layers of a job, as pure data: [`StreamGraph`] (what the user wrote) →
//! [`JobGraph`] (operators chained into vertices) → [`ExecutionGraph`] (each vertex split into
//! subtasks with their key-group ranges and slots).
//!
//! This crate holds descriptions only — no closures, no operators — so the JobMaster can
//! schedule, the UI can show, and savepoints can map state by uid without linking the runtime.
//! It must not depend on the runtime, the state backends, tokio or tonic. (STYLE.md's layout has
//! no `graph` crate; it exists because `jobmanager` needs the JobGraph but must never depend on
//! `runtime`.)
//!
//! The translation follows Flink:
//! 1. [`StreamGraph::resolve`] checks uids (missing or duplicate → [`GraphError`] naming it),
//!    fixes every node's parallelism (config default < `-p` < job setting < operator setting;
//!    a non-parallel source is always 1), the max parallelism, and turns unspecified edges into
//!    `forward` (equal parallelism) or `rebalance` (parallelism change).
//! 2. [`JobGraph::from_stream_graph`] chains a node into its input's vertex when the edge is
//!    forward, the parallelism is equal and the node has that one input.
//! 3. [`ExecutionGraph::from_job_graph`] gives subtask `i` of every vertex slot `i` (one slot
//!    sharing group) and its key-group range.

#![warn(missing_docs)]

mod execution;
mod job;
mod plan;
mod stream;

pub use execution::{ExecutionGraph, ExecutionVertex};
pub use job::{JobEdge, JobGraph, JobVertex};
pub use plan::Plan;
pub use stream::{
    NodeKind, ParallelismSettings, Partitioning, StreamEdge, StreamGraph, StreamNode,
};

/// Why a graph cannot be built or run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GraphError {
    /// An operator has no uid.
    #[error("operator '{name}' ({node}) has no uid: call .uid(\"…\") on it")]
    MissingUid {
        /// The operator's display name.
        name: String,
        /// Its node id.
        node: weir_types::NodeId,
    },
    /// Two operators share a uid.
    #[error("duplicate operator uid '{uid}': used by '{first}' and '{second}'")]
    DuplicateUid {
        /// The uid.
        uid: String,
        /// The first operator's name.
        first: String,
        /// The second operator's name.
        second: String,
    },
    /// A uid that is not a valid [`weir_types::OperatorUid`].
    #[error("operator '{name}': {source}")]
    BadUid {
        /// The operator's display name.
        name: String,
        /// Why the uid is invalid.
        source: weir_types::UidError,
    },
    /// A parallelism of zero or above the max parallelism.
    #[error("{what}: parallelism {parallelism} is invalid; it must be between 1 and the max parallelism {max_parallelism}")]
    BadParallelism {
        /// Where the value came from (an operator, the job, `-p`).
        what: String,
        /// The value.
        parallelism: u32,
        /// The job's max parallelism.
        max_parallelism: u32,
    },
    /// Two edges join the same two operators (a stream unioned with itself or with its own
    /// side output).
    #[error("operators '{source_uid}' and '{target_uid}' are joined by two edges (a stream unioned with itself or with its own side output); this is not supported")]
    DuplicateEdge {
        /// The upstream operator's uid.
        source_uid: String,
        /// The downstream operator's uid.
        target_uid: String,
    },
    /// A side output read from an operator that cannot emit one.
    #[error("operator '{uid}' has no side outputs (only keyed process functions and windows emit them), but its side output '{tag}' is read")]
    NoSideOutputs {
        /// The operator's uid.
        uid: String,
        /// The side output's name.
        tag: String,
    },
    /// A max parallelism of zero or above 2^15.
    #[error("max parallelism {0} is invalid; it must be between 1 and 32768")]
    BadMaxParallelism(u32),
    /// A non-parallel operator (e.g. the socket source) was given a parallelism above 1.
    #[error("operator '{uid}' is not parallel; it cannot run with parallelism {parallelism}")]
    NonParallel {
        /// The operator's uid.
        uid: String,
        /// The parallelism asked for.
        parallelism: u32,
    },
    /// A forward edge between operators of different parallelism.
    #[error("forward edge from '{from}' (parallelism {from_p}) to '{to}' (parallelism {to_p}) needs equal parallelism; use rebalance()")]
    ForwardParallelismMismatch {
        /// Upstream uid.
        from: String,
        /// Upstream parallelism.
        from_p: u32,
        /// Downstream uid.
        to: String,
        /// Downstream parallelism.
        to_p: u32,
    },
    /// The graph has no source.
    #[error("the job has no source")]
    NoSource,
    /// An edge names a node that does not exist.
    #[error("edge refers to unknown {0}")]
    UnknownNode(weir_types::NodeId),
}
