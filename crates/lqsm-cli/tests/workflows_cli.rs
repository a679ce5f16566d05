//! `lqsm workflow ...` against a real `lqsm server` and `lqsm worker`: a chord from a
//! YAML file runs with its callback getting the group's results in order, the graph is
//! drawn, a cancel reaches every unfinished node, and a bad file is refused naming the
//! node and field.
#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

mod e2e_support;

use e2e_support::Cluster;
use lqsm_api as api;
use serde_json::json;

const CHORD: &str = "\
nodes:
  - name: part-a
    queue: root.default
    kind: {type: function, handler: lqsm.echo, args: 1}
  - name: part-b
    queue: root.default
    kind: {type: function, handler: lqsm.echo, args: 2}
  - name: part-c
    queue: root.default
    kind: {type: function, handler: lqsm.echo, args: 3}
  - name: total
    queue: root.default
    kind: {type: function, handler: lqsm.echo, args: sum}
    after: [part-a, part-b, part-c]
    pass_results: true
";

#[test]
fn a_chord_from_yaml_runs_and_is_drawn() {
    let c = Cluster::start(&[], &[("w1", 2)]);
    let file = c.path("chord.yaml");
    std::fs::write(&file, CHORD).unwrap();
    let file = file.to_str().unwrap();

    let done: api::WorkflowView = c.cli.json(&["workflow", "submit", file, "--wait"]);
    assert_eq!(done.state, api::WorkflowState::Succeeded, "{done:?}");
    let total = done
        .nodes
        .iter()
        .find(|n| n.name.as_deref() == Some("total"))
        .unwrap();
    assert_eq!(
        total.result,
        Some(json!({"args": "sum", "inputs": [1, 2, 3]}))
    );

    let drawn = c
        .cli
        .run(&["workflow", "get", &done.id.to_string()])
        .success()
        .stdout
        .clone();
    assert!(
        drawn.starts_with(&format!("workflow {} succeeded (4 succeeded)", done.id)),
        "{drawn}"
    );
    assert!(drawn.contains("└─ total"), "{drawn}");
    assert!(drawn.contains("(also after part-b, part-c)"), "{drawn}");

    // A chain that waits on a long first step: cancelled whole.
    let chain = c.path("chain.json");
    std::fs::write(
        &chain,
        json!({"nodes": [
            {"name": "slow", "queue": "root.default", "kind": {"type": "function", "handler": "lqsm.sleep", "args": 60}},
            {"name": "after", "queue": "root.default", "kind": {"type": "function", "handler": "lqsm.noop"}, "after": ["slow"]},
        ]})
        .to_string(),
    )
    .unwrap();
    let submitted: api::WorkflowSubmitted =
        c.cli.json(&["workflow", "submit", chain.to_str().unwrap()]);
    let cancelled: api::CancelledJobs =
        c.cli
            .json(&["workflow", "cancel", &submitted.id.to_string()]);
    assert_eq!(cancelled.cancelled, 2);
    let view: api::WorkflowView = c.cli.json(&["workflow", "get", &submitted.id.to_string()]);
    assert_eq!(view.state, api::WorkflowState::Cancelled);

    // A node naming a parent that is not there: refused, naming the node and the entry.
    let bad = c.path("bad.yaml");
    std::fs::write(
        &bad,
        CHORD.replace("[part-a, part-b, part-c]", "[part-a, part-z]"),
    )
    .unwrap();
    let ran = c.cli.run(&["workflow", "submit", bad.to_str().unwrap()]);
    assert_ne!(ran.code(), Some(0));
    assert!(
        ran.stderr.contains("nodes[3].after[1]") && ran.stderr.contains("part-z"),
        "{}",
        ran.stderr
    );
}

#[test]
fn a_broadcast_runs_once_on_every_worker() {
    let c = Cluster::start(&[], &[("w1", 1), ("w2", 1), ("w3", 1)]);
    c.eventually("three workers", || {
        (c.cli.workers().len() == 3).then_some(())
    });
    let done: api::WorkflowView = c.cli.json(&[
        "submit",
        "--broadcast",
        "--wait",
        "--",
        "sh",
        "-c",
        "echo cleaned",
    ]);
    assert_eq!(done.state, api::WorkflowState::Succeeded, "{done:?}");
    assert_eq!(done.nodes.len(), 3);
    let mut ran_on: Vec<uuid::Uuid> = done
        .nodes
        .iter()
        .map(|n| {
            assert_eq!(n.attempts.len(), 1);
            assert_eq!(n.pinned_worker, Some(n.attempts[0].worker));
            n.attempts[0].worker
        })
        .collect();
    ran_on.sort();
    ran_on.dedup();
    assert_eq!(ran_on.len(), 3, "one attempt on each worker");
    // No worker matches: refused, naming the selector.
    let ran = c
        .cli
        .run(&["submit", "--broadcast", "--label", "gpu=a100", "--", "true"]);
    assert_ne!(ran.code(), Some(0));
    assert!(
        ran.stderr.contains("no active worker matches"),
        "{}",
        ran.stderr
    );
}

#[test]
fn a_broadcast_open_to_new_workers_reaches_one_that_joins_later() {
    let mut c = Cluster::start(&[], &[("w1", 1)]);
    c.eventually("one worker", || (c.cli.workers().len() == 1).then_some(()));
    let submitted: api::WorkflowSubmitted =
        c.cli
            .json(&["submit", "--broadcast", "--new-workers", "--", "true"]);
    assert_eq!(submitted.nodes.len(), 1);
    c.add_worker("w2", 1);
    let id = submitted.id.to_string();
    let view = c.eventually("the broadcast to reach the new worker and end", || {
        let view: api::WorkflowView = c.cli.json(&["workflow", "get", &id]);
        (view.nodes.len() == 2 && view.state == api::WorkflowState::Succeeded).then_some(view)
    });
    let mut on: Vec<_> = view.nodes.iter().filter_map(|n| n.pinned_worker).collect();
    on.sort();
    on.dedup();
    assert_eq!(on.len(), 2);
    // Cancelled, it reaches no one else.
    let _: api::CancelledJobs = c.cli.json(&["workflow", "cancel", &id]);
    c.add_worker("w3", 1);
    c.eventually("three workers", || {
        (c.cli.workers().len() == 3).then_some(())
    });
    let view: api::WorkflowView = c.cli.json(&["workflow", "get", &id]);
    assert_eq!(view.nodes.len(), 2);
}
