//! How `weir plan` prints the three graph layers.

use std::fmt::Write;
use weir_graph::NodeKind;
use weir_runtime::Plan;

/// The plan as text for people.
pub fn plan_text(plan: &Plan) -> String {
    let mut s = String::new();
    let g = &plan.stream;
    let _ = writeln!(
        s,
        "Job '{}': max parallelism {}, {} slot(s) needed",
        g.job_name, plan.job.max_parallelism, plan.execution.slots_needed
    );
    let _ = writeln!(s, "\nStreamGraph ({} operators)", g.nodes.len());
    for n in &g.nodes {
        let kind = match n.kind {
            NodeKind::Source { parallel: true } => "source",
            NodeKind::Source { parallel: false } => "source (non-parallel)",
            NodeKind::Operator => "operator",
            NodeKind::KeyedOperator => "keyed operator",
            NodeKind::Sink => "sink",
        };
        let inputs: Vec<String> = g
            .inputs(n.id)
            .map(|e| {
                let side = e
                    .side_output
                    .as_ref()
                    .map(|t| format!(", side output '{t}'"))
                    .unwrap_or_default();
                format!(
                    "{} ({}{side})",
                    plan.uids[e.source.0 as usize],
                    e.partitioning.map(|p| p.as_str()).unwrap_or("forward")
                )
            })
            .collect();
        let _ = writeln!(
            s,
            "  {:<8} {:<14} {:<24} p={:<3} {}{}",
            n.id.to_string(),
            plan.uids[n.id.0 as usize].as_str(),
            n.name,
            n.resolved_parallelism,
            kind,
            if inputs.is_empty() {
                String::new()
            } else {
                format!("  <- {}", inputs.join(", "))
            }
        );
    }
    let _ = writeln!(
        s,
        "\nJobGraph ({} vertices; forward edges of equal parallelism are chained)",
        plan.job.vertices.len()
    );
    for v in &plan.job.vertices {
        let _ = writeln!(
            s,
            "  {:<9} p={:<3} {}{}  [{}]",
            v.id.to_string(),
            v.parallelism,
            if v.keyed { "keyed  " } else { "" },
            v.name,
            v.uids.join(" -> ")
        );
        for e in plan.job.outputs(v.id) {
            let _ = writeln!(s, "      --{}--> {}", e.partitioning.as_str(), e.target);
        }
    }
    let _ = writeln!(
        s,
        "\nExecutionGraph ({} subtasks in {} slot(s); slot i holds subtask i of every vertex)",
        plan.execution.subtasks.len(),
        plan.execution.slots_needed
    );
    for st in &plan.execution.subtasks {
        let keyed = plan.job.vertices[st.vertex.0 as usize].keyed;
        let _ = writeln!(
            s,
            "  {:<9} subtask {}/{}  slot {}{}",
            st.vertex.to_string(),
            st.subtask.0,
            st.parallelism,
            st.slot,
            if keyed {
                format!("  key groups {}", st.key_groups)
            } else {
                String::new()
            }
        );
    }
    s
}

/// The plan as JSON for scripts.
pub fn plan_json(plan: &Plan) -> serde_json::Value {
    serde_json::json!({
        "job": plan.stream.job_name,
        "max_parallelism": plan.job.max_parallelism,
        "slots_needed": plan.execution.slots_needed,
        "stream_graph": plan.stream,
        "job_graph": plan.job,
        "execution_graph": plan.execution,
    })
}
