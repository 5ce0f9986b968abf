//! `weir plan` shows the three layers: chaining, the hash edge, slots and key groups.

mod common;

use common::{stderr, weir};
use std::time::Duration;

#[test]
fn plan_chains_source_and_flat_map_and_puts_a_hash_edge_before_the_keyed_operator() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    std::fs::write(&input, "a b\n").unwrap();
    let input_param = format!("input={}", input.display());
    let args = [
        "plan",
        "word-count",
        "-p",
        "3",
        "--param",
        input_param.as_str(),
    ];
    let o = weir(&[&args[..], &["--json"]].concat(), Duration::from_secs(60));
    assert!(o.status.success(), "{}", stderr(&o));
    let plan: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let vertices = plan["job_graph"]["vertices"].as_array().unwrap();
    assert_eq!(vertices.len(), 2);
    assert_eq!(
        vertices[0]["uids"],
        serde_json::json!(["source", "tokenize"])
    );
    assert_eq!(vertices[1]["uids"], serde_json::json!(["count", "sink"]));
    assert_eq!(vertices[1]["keyed"], true);
    let edges = plan["job_graph"]["edges"].as_array().unwrap();
    assert_eq!(edges.len(), 1);
    assert_eq!(edges[0]["partitioning"], "hash");
    assert_eq!(plan["slots_needed"], 3);
    let subtasks = plan["execution_graph"]["subtasks"].as_array().unwrap();
    assert_eq!(subtasks.len(), 6);
    assert_eq!(
        subtasks[3]["key_groups"],
        serde_json::json!({"start": 0, "end": 42})
    );

    let text = weir(&args, Duration::from_secs(60));
    assert!(text.status.success(), "{}", stderr(&text));
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(text.contains("Source: file -> Tokenize"), "{text}");
    assert!(text.contains("--hash--> vertex-1"), "{text}");
    assert!(text.contains("3 slot(s) needed"), "{text}");
}

#[test]
fn the_cli_parallelism_beats_the_config_default() {
    // Operator and job settings beating -p are unit-tested in weir-graph; this checks the CLI
    // wires -p and -D parallelism.default in the right order.
    let o = weir(
        &[
            "plan",
            "keyed-agg",
            "-p",
            "2",
            "-D",
            "parallelism.default=4",
            "--json",
        ],
        Duration::from_secs(60),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let plan: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for v in plan["job_graph"]["vertices"].as_array().unwrap() {
        assert_eq!(v["parallelism"], 2, "-p beats parallelism.default");
    }
}
