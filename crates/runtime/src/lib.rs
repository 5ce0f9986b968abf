//! The dataflow runtime: the typed DataStream API, operators, the task mailbox loop, channels
//! and partitioners, and the deploy API a TaskManager runs subtasks with. It holds no job
//! orchestration: attempts, restarts and checkpoint coordination are the JobMaster's
//! (`weir-jobmanager`), in `weir local` as in a cluster.
//!
//! Must not depend on RocksDB (state backends arrive as a [`weir_state::StateBackendFactory`]),
//! on the network crates, or on the job manager.
//!
//! Key types: [`StreamEnvironment`] → [`DataStream`] / [`KeyedStream`] build a
//! [`JobDefinition`]; a TaskManager runs its subtasks through [`deploy`]. User code plugs in through [`Source`],
//! [`Sink`] and [`KeyedProcessFunction`].
//!
//! How a job runs (the `task` module tells the loop itself, step by step):
//! 1. The builder records a [`weir_graph::StreamGraph`] (pure description) plus, per node and
//!    per edge, a typed factory. Types are erased only at factory boundaries, once per task,
//!    never per record.
//! 2. [`JobDefinition::plan`] resolves the graph into a JobGraph (chains) and an
//!    ExecutionGraph (subtasks); a TaskManager creates one bounded channel per (upstream
//!    subtask, downstream subtask) pair of every edge it hosts ([`deploy`]) and starts one
//!    thread per subtask.
//! 3. Each thread assembles its chain tail-first — sink or network writer, then each operator
//!    wrapping the next — and runs the mailbox loop: a source task polls its reader; any other
//!    task selects over its input channels. Records move in batches; watermarks and end of
//!    input travel in-band on the same channels.
//! 4. A bounded channel that is full blocks its producer: that is backpressure, and it reaches
//!    the sources, so memory stays bounded.
//! 5. Errors: an operator error fails its task with the operator uid and subtask; its channels
//!    close, which fails its neighbours as "lost" (a secondary error); the TaskManager reports
//!    each task's end and the JobMaster picks the root cause.

#![warn(missing_docs)]

mod align;
mod api;
mod channel;
mod connect;
pub mod deploy;
mod error;
mod function;
mod link;
mod metrics;
mod operators;
pub mod remote;
mod restore;
mod side;
mod snapshot;
mod subtask;
mod task;
mod time;
mod timers;

pub use api::{Data, DataStream, DataStreamSink, JobDefinition, KeyedStream, StreamEnvironment};
pub use connect::{ConnectedStreams, Either, KeyedCoProcessFunction, KeyedConnectedStreams};
pub use error::{chain as error_chain, TaskError, UserError};
pub use function::{
    Collector, EndOfInputContext, KeyedContext, KeyedProcessFunction, OpenContext, Sink,
    SinkContext, SinkWriter, Source, SourceContext, SourcePoll, SourceReader, COLLECTOR_BATCH,
};
pub use metrics::{JobMetrics, SubtaskIo, SubtaskIoSample};
pub use side::{OutputTag, SideOutputs};
pub use snapshot::{Control, Transfer, MAX_RECORDED_SYNC_PAUSES};
pub use subtask::{Plan, RuntimeOptions};
pub use time::{
    BoundedOutOfOrderness, TimestampFn, WatermarkGenerator, WatermarkStrategy,
    DEFAULT_WATERMARK_INTERVAL,
};
pub use timers::{TimeDomain, Timer, TIMERS_STATE};
pub use weir_coordination::driver::TaskEvent;
pub use weir_coordination::driver::{CheckpointRecord, CheckpointStatus};
pub use weir_coordination::restart;
pub use weir_coordination::restart::{
    RestartDecision, RestartStrategy, RestartStrategyError, RestartTracker,
};

/// Fuzz targets run in this binary: no single allocation may exceed 1 GiB.
#[cfg(test)]
#[global_allocator]
static ALLOC: weir_fuzz::Bounded = weir_fuzz::Bounded::new(1 << 30);
