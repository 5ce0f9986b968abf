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
}

impl Plan {
    /// Resolves `stream` with `settings`; uid and parallelism errors name the operator.
    pub fn resolve(
        mut stream: StreamGraph,
        settings: crate::ParallelismSettings,
    ) -> Result<Plan, crate::GraphError> {
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
