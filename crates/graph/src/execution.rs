//! The ExecutionGraph: every vertex split into subtasks, each with its slot and key groups.

use crate::JobGraph;
use serde::{Deserialize, Serialize};
use weir_types::{key_group_range_for_subtask, KeyGroupRange, SubtaskIndex, VertexId};

/// One parallel instance of a vertex.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutionVertex {
    /// The vertex.
    pub vertex: VertexId,
    /// Which instance.
    pub subtask: SubtaskIndex,
    /// Of how many.
    pub parallelism: u32,
    /// The key groups it owns (meaningful for keyed vertices; every vertex has one, as in
    /// Flink, so a vertex that becomes keyed in a later version maps cleanly).
    pub key_groups: KeyGroupRange,
    /// The slot it runs in: with one slot-sharing group, subtask `i` of every vertex shares
    /// slot `i`.
    pub slot: u32,
}

/// The job split into subtasks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutionGraph {
    /// Subtasks, grouped by vertex in vertex order.
    pub subtasks: Vec<ExecutionVertex>,
    /// Slots the job needs: its largest vertex parallelism (slot sharing).
    pub slots_needed: u32,
}

impl ExecutionGraph {
    /// Splits every vertex of `job` into subtasks.
    pub fn from_job_graph(job: &JobGraph) -> ExecutionGraph {
        let mut subtasks = Vec::new();
        for v in &job.vertices {
            for i in 0..v.parallelism {
                subtasks.push(ExecutionVertex {
                    vertex: v.id,
                    subtask: SubtaskIndex(i),
                    parallelism: v.parallelism,
                    key_groups: key_group_range_for_subtask(job.max_parallelism, v.parallelism, i),
                    slot: i,
                });
            }
        }
        let slots_needed = job
            .vertices
            .iter()
            .map(|v| v.parallelism)
            .max()
            .unwrap_or(0);
        ExecutionGraph {
            subtasks,
            slots_needed,
        }
    }

    /// The subtasks of `vertex`.
    pub fn subtasks_of(&self, vertex: VertexId) -> impl Iterator<Item = &ExecutionVertex> {
        self.subtasks.iter().filter(move |s| s.vertex == vertex)
    }
}

#[cfg(test)]
mod tests {
    use crate::*;
    use weir_types::NodeId;

    fn node(id: u32, uid: &str, kind: NodeKind, p: Option<u32>) -> StreamNode {
        StreamNode {
            id: NodeId(id),
            uid: Some(uid.into()),
            name: uid.into(),
            kind,
            parallelism: p,
            resolved_parallelism: 0,
        }
    }

    fn edge(a: u32, b: u32, p: Option<Partitioning>) -> StreamEdge {
        StreamEdge {
            source: NodeId(a),
            target: NodeId(b),
            partitioning: p,
            side_output: None,
        }
    }

    fn word_count() -> StreamGraph {
        StreamGraph {
            job_name: "wc".into(),
            nodes: vec![
                node(0, "source", NodeKind::Source { parallel: true }, None),
                node(1, "split", NodeKind::Operator, None),
                node(2, "count", NodeKind::KeyedOperator, None),
                node(3, "sink", NodeKind::Sink, None),
            ],
            edges: vec![
                edge(0, 1, None),
                edge(1, 2, Some(Partitioning::Hash)),
                edge(2, 3, None),
            ],
            job_parallelism: None,
            max_parallelism: None,
            resolved_max_parallelism: 0,
        }
    }

    #[test]
    fn source_and_flat_map_chain_and_the_hash_edge_breaks_the_chain() {
        let mut g = word_count();
        g.resolve(ParallelismSettings {
            config_default: 1,
            cli: Some(2),
            config_max_parallelism: None,
        })
        .unwrap();
        let job = JobGraph::from_stream_graph(&g);
        assert_eq!(job.vertices.len(), 2);
        assert_eq!(job.vertices[0].uids, vec!["source", "split"]);
        assert_eq!(job.vertices[1].uids, vec!["count", "sink"]);
        assert!(job.vertices[1].keyed);
        assert_eq!(job.edges.len(), 1);
        assert_eq!(job.edges[0].partitioning, Partitioning::Hash);
        let exec = ExecutionGraph::from_job_graph(&job);
        assert_eq!(exec.slots_needed, 2);
        assert_eq!(exec.subtasks.len(), 4);
        assert_eq!(exec.subtasks[2].key_groups.to_string(), "[0..=63]");
        assert_eq!(exec.subtasks[3].key_groups.to_string(), "[64..=127]");
    }

    #[test]
    fn an_operator_setting_beats_the_job_setting_which_beats_the_cli_and_config() {
        let mut g = word_count();
        g.nodes[3].parallelism = Some(1);
        g.job_parallelism = Some(3);
        g.resolve(ParallelismSettings {
            config_default: 4,
            cli: Some(2),
            config_max_parallelism: None,
        })
        .unwrap();
        let ps: Vec<u32> = g.nodes.iter().map(|n| n.resolved_parallelism).collect();
        assert_eq!(ps, vec![3, 3, 3, 1]);
        // The parallelism change turned the unspecified edge into rebalance, breaking the chain.
        assert_eq!(g.edges[2].partitioning, Some(Partitioning::Rebalance));
        assert_eq!(JobGraph::from_stream_graph(&g).vertices.len(), 3);
    }

    #[test]
    fn the_cli_parallelism_beats_the_config_default() {
        let mut g = word_count();
        g.resolve(ParallelismSettings {
            config_default: 4,
            cli: Some(2),
            config_max_parallelism: None,
        })
        .unwrap();
        assert!(g.nodes.iter().all(|n| n.resolved_parallelism == 2));
        let mut g = word_count();
        g.resolve(ParallelismSettings {
            config_default: 4,
            cli: None,
            config_max_parallelism: None,
        })
        .unwrap();
        assert!(g.nodes.iter().all(|n| n.resolved_parallelism == 4));
    }

    #[test]
    fn a_missing_uid_is_an_error_naming_the_operator() {
        let mut g = word_count();
        g.nodes[1].uid = None;
        let err = g.resolve(ParallelismSettings::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "operator 'split' (node-1) has no uid: call .uid(\"…\") on it"
        );
    }

    #[test]
    fn a_duplicate_uid_is_an_error_naming_both_operators() {
        let mut g = word_count();
        g.nodes[3].uid = Some("count".into());
        g.nodes[3].name = "Sink: print".into();
        let err = g.resolve(ParallelismSettings::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "duplicate operator uid 'count': used by 'count' and 'Sink: print'"
        );
    }

    #[test]
    fn parallelism_zero_and_above_max_parallelism_are_rejected() {
        let mut g = word_count();
        let err = g
            .resolve(ParallelismSettings {
                config_default: 1,
                cli: Some(0),
                config_max_parallelism: None,
            })
            .unwrap_err();
        assert!(
            matches!(err, GraphError::BadParallelism { parallelism: 0, .. }),
            "{err}"
        );
        let mut g = word_count();
        let settings = ParallelismSettings {
            config_default: 1,
            cli: Some(5),
            config_max_parallelism: Some(4),
        };
        let err = g.resolve(settings).unwrap_err();
        assert!(
            err.to_string().contains("-p: parallelism 5 is invalid"),
            "{err}"
        );
    }

    #[test]
    fn a_non_parallel_source_runs_with_parallelism_one() {
        let mut g = word_count();
        g.nodes[0].kind = NodeKind::Source { parallel: false };
        g.resolve(ParallelismSettings {
            config_default: 1,
            cli: Some(2),
            config_max_parallelism: None,
        })
        .unwrap();
        assert_eq!(g.nodes[0].resolved_parallelism, 1);
        assert_eq!(g.edges[0].partitioning, Some(Partitioning::Rebalance));
    }
}
