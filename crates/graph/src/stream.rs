//! The StreamGraph: one node per operator the user wrote, edges with their partitioning.

use crate::GraphError;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use weir_types::{default_max_parallelism, NodeId, OperatorUid, MAX_MAX_PARALLELISM};

/// How records of an edge are distributed over the downstream subtasks.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Partitioning {
    /// Subtask `i` sends to subtask `i` (equal parallelism); the only chainable edge.
    Forward,
    /// By key group of the record's key (`key_by`).
    Hash,
    /// Round robin over all downstream subtasks.
    Rebalance,
    /// Round robin over a local subset of downstream subtasks.
    Rescale,
    /// Every record to every downstream subtask.
    Broadcast,
}

impl Partitioning {
    /// Lower-case name, as shown by `weir plan`.
    pub fn as_str(self) -> &'static str {
        match self {
            Partitioning::Forward => "forward",
            Partitioning::Hash => "hash",
            Partitioning::Rebalance => "rebalance",
            Partitioning::Rescale => "rescale",
            Partitioning::Broadcast => "broadcast",
        }
    }
}

/// What a node does, as far as planning cares.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeKind {
    /// A source; `parallel: false` pins it to parallelism 1 (e.g. a socket).
    Source {
        /// Whether the source can run with parallelism above 1.
        parallel: bool,
    },
    /// A stateless operator (map, filter, flat_map, …).
    Operator,
    /// An operator over a keyed stream, holding keyed state.
    KeyedOperator,
    /// A sink.
    Sink,
}

/// One operator as the user wrote it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamNode {
    /// Creation-order id.
    pub id: NodeId,
    /// The stable uid; `None` until the user gives one (an error at build time).
    pub uid: Option<String>,
    /// Display name (e.g. `Map`, `Source: generator`).
    pub name: String,
    /// What the node does.
    pub kind: NodeKind,
    /// Parallelism set on this operator, if any.
    pub parallelism: Option<u32>,
    /// Parallelism after [`StreamGraph::resolve`]; 0 before.
    #[serde(default)]
    pub resolved_parallelism: u32,
}

/// A data edge between two nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamEdge {
    /// Upstream node.
    pub source: NodeId,
    /// Downstream node.
    pub target: NodeId,
    /// Partitioning the user asked for; `None` = forward when parallelism is equal, else
    /// rebalance (decided by [`StreamGraph::resolve`]).
    pub partitioning: Option<Partitioning>,
    /// The upstream node's side output this edge reads (`None`: its main output).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub side_output: Option<String>,
}

/// The parallelism settings that apply to a job, lowest precedence first.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParallelismSettings {
    /// `parallelism.default` from the configuration.
    pub config_default: u32,
    /// `weir run -p N` / `weir local -p N`.
    pub cli: Option<u32>,
    /// `pipeline.max-parallelism` from the configuration: used when the job sets none.
    pub config_max_parallelism: Option<u32>,
}

/// What the user wrote: operators and edges, before chaining.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamGraph {
    /// The job's name.
    pub job_name: String,
    /// Nodes, indexed by [`NodeId`].
    pub nodes: Vec<StreamNode>,
    /// Edges in creation order.
    pub edges: Vec<StreamEdge>,
    /// Parallelism set on the job (`env.set_parallelism`).
    pub job_parallelism: Option<u32>,
    /// Max parallelism set on the job; `None` = Flink's default from the largest parallelism.
    pub max_parallelism: Option<u32>,
    /// Max parallelism after [`StreamGraph::resolve`]; 0 before.
    #[serde(default)]
    pub resolved_max_parallelism: u32,
}

impl StreamGraph {
    /// The node with `id`.
    pub fn node(&self, id: NodeId) -> &StreamNode {
        &self.nodes[id.0 as usize]
    }

    /// The edges into `id`.
    pub fn inputs(&self, id: NodeId) -> impl Iterator<Item = &StreamEdge> {
        self.edges.iter().filter(move |e| e.target == id)
    }

    /// The edges out of `id`.
    pub fn outputs(&self, id: NodeId) -> impl Iterator<Item = &StreamEdge> {
        self.edges.iter().filter(move |e| e.source == id)
    }

    /// Checks the graph and fixes parallelism, max parallelism and edge partitioning (see the
    /// crate docs). Returns the validated uids by node.
    pub fn resolve(
        &mut self,
        settings: ParallelismSettings,
    ) -> Result<Vec<OperatorUid>, GraphError> {
        let uids = self.check_uids()?;
        if !self
            .nodes
            .iter()
            .any(|n| matches!(n.kind, NodeKind::Source { .. }))
        {
            return Err(GraphError::NoSource);
        }
        for e in &self.edges {
            for id in [e.source, e.target] {
                if id.0 as usize >= self.nodes.len() {
                    return Err(GraphError::UnknownNode(id));
                }
            }
        }
        let uid_of = |id: NodeId| uids[id.0 as usize].to_string();
        for (i, e) in self.edges.iter().enumerate() {
            if self.edges[..i]
                .iter()
                .any(|f| f.source == e.source && f.target == e.target)
            {
                return Err(GraphError::DuplicateEdge {
                    source_uid: uid_of(e.source),
                    target_uid: uid_of(e.target),
                });
            }
            if let Some(tag) = &e.side_output {
                if self.nodes[e.source.0 as usize].kind != NodeKind::KeyedOperator {
                    return Err(GraphError::NoSideOutputs {
                        uid: uid_of(e.source),
                        tag: tag.clone(),
                    });
                }
            }
        }
        if self.max_parallelism.is_none() {
            self.max_parallelism = settings.config_max_parallelism;
        }
        if let Some(m) = self.max_parallelism {
            if m == 0 || m > MAX_MAX_PARALLELISM {
                return Err(GraphError::BadMaxParallelism(m));
            }
        }
        // 1. Parallelism: config default < -p < job setting < operator setting.
        let (base, base_what) = match (self.job_parallelism, settings.cli) {
            (Some(p), _) => (p, "job parallelism".to_string()),
            (None, Some(p)) => (p, "-p".to_string()),
            (None, None) => (
                settings.config_default.max(1),
                "parallelism.default".to_string(),
            ),
        };
        let mut whats = Vec::with_capacity(self.nodes.len());
        for node in &mut self.nodes {
            let (p, what) = match node.parallelism {
                Some(p) => (
                    p,
                    format!("operator '{}'", node.uid.as_deref().unwrap_or(&node.name)),
                ),
                None => (base, base_what.clone()),
            };
            let p = match node.kind {
                NodeKind::Source { parallel: false } if node.parallelism.is_some_and(|p| p > 1) => {
                    return Err(GraphError::NonParallel {
                        uid: node.uid.clone().unwrap_or_default(),
                        parallelism: p,
                    })
                }
                NodeKind::Source { parallel: false } => 1,
                _ => p,
            };
            node.resolved_parallelism = p;
            whats.push(what);
        }
        // 2. Max parallelism: job setting, else Flink's default from the largest parallelism.
        let largest = self
            .nodes
            .iter()
            .map(|n| n.resolved_parallelism)
            .max()
            .unwrap_or(1);
        let max_p = self
            .max_parallelism
            .unwrap_or_else(|| default_max_parallelism(largest));
        for (node, what) in self.nodes.iter().zip(&whats) {
            let p = node.resolved_parallelism;
            if p == 0 || p > max_p {
                return Err(GraphError::BadParallelism {
                    what: what.clone(),
                    parallelism: p,
                    max_parallelism: max_p,
                });
            }
        }
        self.resolved_max_parallelism = max_p;
        // 3. Edges: unspecified → forward or rebalance; explicit forward needs equal parallelism.
        let nodes = &self.nodes;
        for e in &mut self.edges {
            let (a, b) = (&nodes[e.source.0 as usize], &nodes[e.target.0 as usize]);
            let equal = a.resolved_parallelism == b.resolved_parallelism;
            match e.partitioning {
                None => {
                    e.partitioning = Some(if equal {
                        Partitioning::Forward
                    } else {
                        Partitioning::Rebalance
                    })
                }
                Some(Partitioning::Forward) if !equal => {
                    return Err(GraphError::ForwardParallelismMismatch {
                        from: a.uid.clone().unwrap_or_default(),
                        from_p: a.resolved_parallelism,
                        to: b.uid.clone().unwrap_or_default(),
                        to_p: b.resolved_parallelism,
                    })
                }
                Some(_) => {}
            }
        }
        Ok(uids)
    }

    fn check_uids(&self) -> Result<Vec<OperatorUid>, GraphError> {
        let mut seen: HashMap<&str, &str> = HashMap::new();
        let mut out = Vec::with_capacity(self.nodes.len());
        for node in &self.nodes {
            let uid = node.uid.as_deref().ok_or_else(|| GraphError::MissingUid {
                name: node.name.clone(),
                node: node.id,
            })?;
            if let Some(first) = seen.insert(uid, &node.name) {
                return Err(GraphError::DuplicateUid {
                    uid: uid.to_string(),
                    first: first.to_string(),
                    second: node.name.clone(),
                });
            }
            out.push(OperatorUid::new(uid).map_err(|source| GraphError::BadUid {
                name: node.name.clone(),
                source,
            })?);
        }
        Ok(out)
    }

    /// Nodes in a topological order (sources first), stable by id.
    pub fn topological_order(&self) -> Vec<NodeId> {
        let mut indegree: BTreeMap<NodeId, usize> = self.nodes.iter().map(|n| (n.id, 0)).collect();
        for e in &self.edges {
            *indegree.entry(e.target).or_default() += 1;
        }
        let mut ready: Vec<NodeId> = indegree
            .iter()
            .filter(|(_, d)| **d == 0)
            .map(|(n, _)| *n)
            .collect();
        ready.reverse();
        let mut out = Vec::with_capacity(self.nodes.len());
        while let Some(n) = ready.pop() {
            out.push(n);
            let mut next: Vec<NodeId> = Vec::new();
            for e in self.outputs(n) {
                let d = indegree.get_mut(&e.target).expect("edge target is a node");
                *d -= 1;
                if *d == 0 {
                    next.push(e.target);
                }
            }
            next.sort();
            next.reverse();
            ready.extend(next);
            ready.sort_by(|a, b| b.cmp(a));
        }
        out
    }
}
