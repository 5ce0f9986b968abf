//! Weir: a stateful stream-processing runtime whose keyed state survives crashes.
//!
//! This facade is what user crates depend on. It re-exports the DataStream API
//! ([`StreamEnvironment`], [`DataStream`], [`KeyedStream`]), the state handles, the connectors,
//! the CLI entry point ([`cli::main`]), the [`minicluster`] that runs a job built in this
//! process, and the example [`jobs`].
//!
//! A user binary registers its jobs in a [`cli::Catalog`] and hands it to [`cli::main`]; every
//! process of a cluster runs that same binary, so every process can rebuild the same job:
//!
//! ```no_run
//! use weir::cli::{Catalog, JobSpec};
//! fn main() -> std::process::ExitCode {
//!     weir::cli::main(weir::jobs::catalog())
//! }
//! ```

#![warn(missing_docs)]

pub mod jobs;

pub use weir_runtime::{
    restart, BoundedOutOfOrderness, CheckpointRecord, CheckpointStatus, Collector,
    ConnectedStreams, Data, DataStream, DataStreamSink, Either, EndOfInputContext, JobDefinition,
    JobMetrics, KeyedCoProcessFunction, KeyedConnectedStreams, KeyedContext, KeyedProcessFunction,
    KeyedStream, OpenContext, OutputTag, Plan, RuntimeOptions, Sink, SinkContext, SinkWriter,
    Source, SourceContext, SourcePoll, SourceReader, StreamEnvironment, TimeDomain, Timer,
    TimestampFn, UserError, WatermarkGenerator, WatermarkStrategy,
};

/// Windows on keyed streams (tumbling, sliding, session; triggers, lateness).
pub mod window {
    pub use weir_window::*;
}

/// Running jobs built in this process: a JobManager and an in-process TaskManager (the same
/// JobMaster as a cluster's).
pub mod minicluster {
    pub use weir_minicluster::*;
}

/// Keyed state: handles, the backend trait, the heap backend.
pub mod state {
    pub use weir_state::*;
    pub use weir_state_rocksdb::*;
}

/// Sources and sinks.
pub mod connectors {
    pub use weir_connectors::*;
}

/// Graph layers (StreamGraph, JobGraph, ExecutionGraph).
pub mod graph {
    pub use weir_graph::*;
}

/// Ids, key groups and stream messages.
pub mod types {
    pub use weir_types::*;
}

/// The `weir` command line, reusable with your own catalog.
pub mod cli {
    pub use weir_cli::*;
}
