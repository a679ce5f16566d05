//! `lqsm workflow ...`: graphs of jobs submitted whole from a JSON or YAML file, drawn
//! in text with each node's state.

use crate::{Output, print};
use anyhow::Context;
use lqsm_api as api;
use lqsm_client::Client;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use uuid::Uuid;

/// `lqsm workflow ...`.
#[derive(clap::Subcommand)]
pub enum WorkflowCommand {
    /// Submit a workflow from a file (`-` for standard input): JSON, or YAML when the
    /// name ends in `.yaml` or `.yml`, holding `nodes`, each a job with a `name`, and
    /// `after` naming the nodes (or job ids) it waits for.
    Submit {
        /// The file.
        file: String,
        /// Wait until every node has ended, then draw the graph; the exit code is 0 only
        /// when the workflow succeeded.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up after this many seconds.
        #[arg(long, default_value_t = 300)]
        timeout_s: u64,
    },
    /// Draw a workflow: each node under the first job it waits for, with its state.
    Get {
        /// The workflow's id.
        id: Uuid,
    },
    /// Cancel every unfinished node of a workflow.
    Cancel {
        /// The workflow's id.
        id: Uuid,
    },
}

/// Reads a workflow file: YAML by its name, JSON otherwise (standard input: JSON when it
/// starts with `{`, else YAML).
pub fn read_workflow(file: &str) -> anyhow::Result<api::SubmitWorkflow> {
    let text = if file == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading standard input")?
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?
    };
    let yaml = if file == "-" {
        !text.trim_start().starts_with('{')
    } else {
        file.ends_with(".yaml") || file.ends_with(".yml")
    };
    let json = if yaml {
        // Through a JSON tree: job arguments are kept as JSON text, which only a JSON
        // reader can hand over.
        let tree: serde_json::Value =
            serde_norway::from_str(&text).with_context(|| format!("{file} is not YAML"))?;
        serde_json::to_string(&tree)?
    } else {
        text
    };
    serde_json::from_str(&json).with_context(|| format!("{file} is not a workflow"))
}

/// Runs `lqsm workflow ...`; the exit code.
pub async fn workflow(
    client: &Client,
    cmd: &WorkflowCommand,
    output: Output,
) -> anyhow::Result<u8> {
    match cmd {
        WorkflowCommand::Submit {
            file,
            wait,
            timeout_s,
        } => {
            let workflow = read_workflow(file)?;
            let submitted = client.submit_workflow(&workflow).await?;
            if !wait {
                let mut human = format!(
                    "workflow {} submitted: {} jobs\n",
                    submitted.id,
                    submitted.nodes.len()
                );
                for node in submitted.nodes.iter().take(20) {
                    human.push_str(&format!("  {}  {}\n", node.id, node.name));
                }
                if submitted.nodes.len() > 20 {
                    human.push_str(&format!("  ... and {} more\n", submitted.nodes.len() - 20));
                }
                print(output, &human, &submitted);
                return Ok(0);
            }
            let view = client
                .wait_workflow(submitted.id, Duration::from_secs(*timeout_s))
                .await?;
            print(output, &draw(&view), &view);
            Ok(exit_code(view.state))
        }
        WorkflowCommand::Get { id } => {
            let view = client.workflow(*id).await?;
            print(output, &draw(&view), &view);
            Ok(0)
        }
        WorkflowCommand::Cancel { id } => {
            let cancelled = client.cancel_workflow(*id).await?;
            let human = format!(
                "workflow {id}: {} unfinished jobs cancelled\n",
                cancelled.cancelled
            );
            print(output, &human, &cancelled);
            Ok(0)
        }
    }
}

fn exit_code(state: api::WorkflowState) -> u8 {
    match state {
        api::WorkflowState::Succeeded => 0,
        api::WorkflowState::Running => 2,
        _ => 1,
    }
}

/// How deep the drawing indents.
const MAX_DRAWN_DEPTH: usize = 24;

/// The graph in text: a header with the counts, then each node under the first job it
/// waits for, with its state, id, what else it waits for, and why it ended badly.
pub fn draw(view: &api::WorkflowView) -> String {
    let counts: Vec<String> = view
        .counts
        .iter()
        .map(|(state, n)| format!("{n} {state}"))
        .collect();
    let mut out = format!(
        "workflow {} {} ({})\n",
        view.id,
        view.state,
        counts.join(", ")
    );
    let position: HashMap<Uuid, usize> = view
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.id, i))
        .collect();
    let label = |id: &Uuid| match position.get(id) {
        Some(&i) => view.nodes[i].name.clone().unwrap_or_else(|| id.to_string()),
        None => format!("job {id}"),
    };
    // Each node hangs under its first parent in the workflow; the others are listed.
    let mut children: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    let mut roots = Vec::new();
    for (i, node) in view.nodes.iter().enumerate() {
        match node.after.iter().find_map(|p| position.get(p)) {
            Some(&parent) => children.entry(parent).or_default().push(i),
            None => roots.push(i),
        }
    }
    // Each line's tree part (branches and name), then the rest, aligned after the widest.
    let mut lines: Vec<(String, String)> = Vec::with_capacity(view.nodes.len());
    // Depth-first from the roots, with an explicit stack (a chain may be long).
    let mut stack: Vec<(usize, String, bool, bool)> = roots
        .iter()
        .rev()
        .enumerate()
        .map(|(k, &i)| (i, String::new(), k == 0, true))
        .collect();
    while let Some((i, prefix, last, root)) = stack.pop() {
        let node = &view.nodes[i];
        let (branch, mut continued) = match (root, last) {
            (true, _) => ("", String::new()),
            (false, true) => ("└─ ", format!("{prefix}   ")),
            (false, false) => ("├─ ", format!("{prefix}│  ")),
        };
        // Deeper than this, a long chain would print lines of quadratic width: its
        // tail is drawn at this depth.
        if continued.chars().count() > 3 * MAX_DRAWN_DEPTH {
            continued = prefix.clone();
        }
        let name = node.name.clone().unwrap_or_else(|| node.id.to_string());
        let tree = format!("{prefix}{branch}{name}");
        let mut line = format!("{:<9}  {}", node.state.as_str(), node.id);
        let first_parent = node.after.iter().position(|p| position.contains_key(p));
        let others: Vec<String> = node
            .after
            .iter()
            .enumerate()
            .filter(|(k, _)| Some(*k) != first_parent)
            .map(|(_, p)| label(p))
            .collect();
        if !others.is_empty() {
            let shown = others
                .iter()
                .take(3)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ");
            let more = others.len().saturating_sub(3);
            line.push_str(&if more > 0 {
                format!("  (also after {shown} and {more} more)")
            } else {
                format!("  (also after {shown})")
            });
        }
        if let Some(reason) = &node.reason {
            line.push_str(&format!("  {reason}"));
        }
        lines.push((tree, line));
        if let Some(kids) = children.get(&i) {
            for (k, &child) in kids.iter().enumerate().rev() {
                stack.push((child, continued.clone(), k + 1 == kids.len(), false));
            }
        }
    }
    let width = lines
        .iter()
        .map(|(tree, _)| tree.chars().count())
        .max()
        .unwrap_or(0);
    for (tree, rest) in lines {
        let pad = width - tree.chars().count();
        out.push_str(&format!("{tree}{:pad$}  {rest}\n", ""));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, id: u128, state: api::JobState, after: &[u128]) -> api::JobView {
        let mut view: api::JobView = serde_json::from_value(serde_json::json!({
            "id": Uuid::from_u128(id),
            "queue": "root.default",
            "state": state,
            "kind": {"type": "function", "handler": "h", "args": null},
            "resources": {"cpu": 0.01, "memory_mib": 16, "gpu": 0},
            "priority": 0,
            "submitted_at_ms": 0,
            "max_attempts": 1,
            "attempts": [],
        }))
        .expect("a job view");
        view.name = Some(name.into());
        view.after = after.iter().map(|a| Uuid::from_u128(*a)).collect();
        view
    }

    #[test]
    fn the_graph_hangs_each_node_under_its_first_parent() {
        use api::JobState::*;
        let mut failed = node("report", 5, Cancelled, &[3, 4]);
        failed.reason = Some("dependency_failed: parent job x failed".into());
        let view = api::WorkflowView {
            id: Uuid::from_u128(99),
            state: api::WorkflowState::Failed,
            counts: BTreeMap::from([(Succeeded, 2), (Failed, 1), (Cancelled, 2)]),
            nodes: vec![
                node("extract", 1, Succeeded, &[]),
                node("clean", 2, Succeeded, &[1]),
                node("load", 3, Failed, &[2]),
                node("audit", 4, Cancelled, &[1]),
                failed,
            ],
        };
        let drawn = draw(&view);
        let expected = "\
workflow 00000000-0000-0000-0000-000000000063 failed (2 cancelled, 1 failed, 2 succeeded)
extract          succeeded  00000000-0000-0000-0000-000000000001
├─ clean         succeeded  00000000-0000-0000-0000-000000000002
│  └─ load       failed     00000000-0000-0000-0000-000000000003
│     └─ report  cancelled  00000000-0000-0000-0000-000000000005  (also after audit)  dependency_failed: parent job x failed
└─ audit         cancelled  00000000-0000-0000-0000-000000000004
";
        assert_eq!(drawn, expected, "\n{drawn}");
    }

    #[test]
    fn yaml_and_json_files_read_alike() {
        let dir = tempfile::tempdir().expect("temp dir");
        let yaml = dir.path().join("w.yaml");
        std::fs::write(
            &yaml,
            "nodes:\n  - name: a\n    queue: root.default\n    kind: {type: function, handler: lqsm.echo, args: {n: 1}}\n  - name: b\n    queue: root.default\n    kind: {type: function, handler: lqsm.echo}\n    after: [a]\n    pass_results: true\n",
        )
        .expect("write");
        let json = dir.path().join("w.json");
        std::fs::write(
            &json,
            r#"{"nodes":[{"name":"a","queue":"root.default","kind":{"type":"function","handler":"lqsm.echo","args":{"n":1}}},{"name":"b","queue":"root.default","kind":{"type":"function","handler":"lqsm.echo"},"after":["a"],"pass_results":true}]}"#,
        )
        .expect("write");
        let from_yaml = read_workflow(yaml.to_str().expect("utf-8")).expect("yaml");
        let from_json = read_workflow(json.to_str().expect("utf-8")).expect("json");
        assert_eq!(from_yaml, from_json);
        assert_eq!(from_yaml.nodes[1].after, ["a"]);
        let bad = dir.path().join("bad.yaml");
        std::fs::write(&bad, "nodes:\n  - name: a\n    aftr: [b]\n").expect("write");
        let err = format!(
            "{:#}",
            read_workflow(bad.to_str().expect("utf-8")).expect_err("bad")
        );
        assert!(err.contains("aftr"), "{err}");
    }
}
