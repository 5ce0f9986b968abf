//! The JobGraph: operators chained into vertices.

use crate::{Partitioning, StreamGraph};
use serde::{Deserialize, Serialize};
use weir_types::{NodeId, VertexId};

/// A chain of operators that runs as one task per subtask, as plain function calls.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobVertex {
    /// The vertex id, in topological order of heads.
    pub id: VertexId,
    /// Display name: the chained operators' names joined with ` -> `.
    pub name: String,
    /// The first operator of the chain: the one that reads the vertex's inputs.
    pub head: NodeId,
    /// Every operator of the chain, in topological order (a chain may fan out).
    pub nodes: Vec<NodeId>,
    /// The uids of `nodes`, in the same order.
    pub uids: Vec<String>,
    /// Number of subtasks.
    pub parallelism: u32,
    /// Whether the vertex reads a hash-partitioned input, i.e. holds keyed state.
    pub keyed: bool,
}

/// A data edge between two vertices.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobEdge {
    /// Upstream vertex.
    pub source: VertexId,
    /// Downstream vertex.
    pub target: VertexId,
    /// The upstream operator that emits on this edge.
    pub source_node: NodeId,
    /// The downstream operator that reads this edge (the target vertex's head).
    pub target_node: NodeId,
    /// How records are distributed.
    pub partitioning: Partitioning,
}

/// Operators chained into vertices.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobGraph {
    /// The job's name.
    pub job_name: String,
    /// The job's max parallelism (number of key groups).
    pub max_parallelism: u32,
    /// Vertices, indexed by [`VertexId`].
    pub vertices: Vec<JobVertex>,
    /// Edges between vertices.
    pub edges: Vec<JobEdge>,
}

impl JobGraph {
    /// Chains a resolved StreamGraph ([`StreamGraph::resolve`] must have run): a node joins its
    /// input's vertex when it has exactly that one input and the edge is forward.
    pub fn from_stream_graph(graph: &StreamGraph) -> JobGraph {
        let order = graph.topological_order();
        let mut vertex_of: Vec<Option<VertexId>> = vec![None; graph.nodes.len()];
        let mut vertices: Vec<JobVertex> = Vec::new();
        for &id in &order {
            let node = graph.node(id);
            let inputs: Vec<_> = graph.inputs(id).collect();
            let chained_to = match inputs.as_slice() {
                [only] if only.partitioning == Some(Partitioning::Forward) => {
                    vertex_of[only.source.0 as usize]
                }
                _ => None,
            };
            let vertex = match chained_to {
                Some(v) => v,
                None => {
                    let v = VertexId(vertices.len() as u32);
                    vertices.push(JobVertex {
                        id: v,
                        name: String::new(),
                        head: id,
                        nodes: Vec::new(),
                        uids: Vec::new(),
                        parallelism: node.resolved_parallelism,
                        keyed: inputs
                            .iter()
                            .any(|e| e.partitioning == Some(Partitioning::Hash)),
                    });
                    v
                }
            };
            vertex_of[id.0 as usize] = Some(vertex);
            let jv = &mut vertices[vertex.0 as usize];
            jv.nodes.push(id);
            jv.uids.push(node.uid.clone().unwrap_or_default());
        }
        for v in &mut vertices {
            v.name = v
                .nodes
                .iter()
                .map(|n| graph.node(*n).name.as_str())
                .collect::<Vec<_>>()
                .join(" -> ");
        }
        let edges = graph
            .edges
            .iter()
            .filter_map(|e| {
                let (s, t) = (
                    vertex_of[e.source.0 as usize]?,
                    vertex_of[e.target.0 as usize]?,
                );
                (s != t).then(|| JobEdge {
                    source: s,
                    target: t,
                    source_node: e.source,
                    target_node: e.target,
                    partitioning: e.partitioning.unwrap_or(Partitioning::Forward),
                })
            })
            .collect();
        JobGraph {
            job_name: graph.job_name.clone(),
            max_parallelism: graph.resolved_max_parallelism,
            vertices,
            edges,
        }
    }

    /// The vertex that runs `node`.
    pub fn vertex_of(&self, node: NodeId) -> Option<&JobVertex> {
        self.vertices.iter().find(|v| v.nodes.contains(&node))
    }

    /// Edges into `vertex`.
    pub fn inputs(&self, vertex: VertexId) -> impl Iterator<Item = &JobEdge> {
        self.edges.iter().filter(move |e| e.target == vertex)
    }

    /// Edges out of `vertex`.
    pub fn outputs(&self, vertex: VertexId) -> impl Iterator<Item = &JobEdge> {
        self.edges.iter().filter(move |e| e.source == vertex)
    }
}
