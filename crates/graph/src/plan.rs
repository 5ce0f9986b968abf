//! A job's three layers resolved together: what the client sends the Dispatcher and what the
//! JobMaster schedules, checkpoints and shows.

use crate::{ExecutionGraph, JobGraph, NodeKind, StreamGraph};
use serde::{Deserialize, Serialize};
use weir_types::{OperatorUid, VertexId};

/// A job's three graph layers, resolved for one set of parallelism settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// The StreamGraph with parallelism and partitioning resolved.
    pub stream: StreamGraph,
    /// Validated uids, by node.
    pub uids: Vec<OperatorUid>,
    /// Operators chained into vertices.
    pub job: JobGraph,
    /// Vertices split into subtasks.
    pub execution: ExecutionGraph,
    /// The StreamGraph as the user wrote it, before resolution: a JobMaster re-resolves it at
    /// another parallelism ([`Plan::at_parallelism`]) when it rescales the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unresolved: Option<StreamGraph>,
}

impl Plan {
    /// Resolves `stream` with `settings`; uid and parallelism errors name the operator.
    pub fn resolve(
        mut stream: StreamGraph,
        settings: crate::ParallelismSettings,
    ) -> Result<Plan, crate::GraphError> {
        let unresolved = Some(stream.clone());
        let uids = stream.resolve(settings)?;
        let job = JobGraph::from_stream_graph(&stream);
        let execution = ExecutionGraph::from_job_graph(&job);
        Ok(Plan {
            stream,
            uids,
            job,
            execution,
            unresolved,
        })
    }

    /// The same job resolved as `-p parallelism` with this plan's max parallelism: what a
    /// TaskManager builds from the job's spec with `parallelism` and
    /// `pipeline.max-parallelism` set to those. `None` for a plan without its unresolved
    /// graph.
    pub fn at_parallelism(&self, parallelism: u32) -> Option<Result<Plan, crate::GraphError>> {
        let stream = self.unresolved.clone()?;
        Some(Plan::resolve(
            stream,
            crate::ParallelismSettings {
                config_default: parallelism,
                cli: Some(parallelism),
                config_max_parallelism: Some(self.job.max_parallelism),
            },
        ))
    }

    /// Whether `vertex` starts with a source (checkpoints are triggered there).
    pub fn is_source_vertex(&self, vertex: VertexId) -> bool {
        let head = self.job.vertices[vertex.0 as usize].head;
        matches!(
            self.stream.nodes[head.0 as usize].kind,
            NodeKind::Source { .. }
        )
    }

    /// Slots a job needs: its largest vertex parallelism (one slot-sharing group).
    pub fn slots_needed(&self) -> u32 {
        self.job
            .vertices
            .iter()
            .map(|v| v.parallelism)
            .max()
            .unwrap_or(0)
    }

    /// Whether `metadata`-style per-operator parallelisms fit this plan: `uid` exists and runs
    /// at `parallelism`. Returns the plan's parallelism for `uid`, or `None` if it has no such
    /// operator.
    pub fn parallelism_of(&self, uid: &OperatorUid) -> Option<u32> {
        let node = self.uids.iter().position(|u| u == uid)?;
        Some(self.stream.nodes[node].resolved_parallelism)
    }
}
