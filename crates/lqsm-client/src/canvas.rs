//! Celery's canvas on LQSM's workflows: [`chain`], [`group`] and [`chord`] build a
//! [`SubmitWorkflow`] to submit with [`Client::submit_workflow`](crate::Client::submit_workflow).
//! Nodes left unnamed are named by position (`0`, `1`, ... and `callback`).

use lqsm_api::{SubmitJob, SubmitWorkflow};

fn named(job: SubmitJob, fallback: String) -> SubmitJob {
    if job.name.is_some() {
        job
    } else {
        job.named(&fallback)
    }
}

/// Jobs run one after the other, each receiving the result of the one before (in its
/// handler's `inputs`); a failure cancels the rest.
pub fn chain(jobs: impl IntoIterator<Item = SubmitJob>) -> SubmitWorkflow {
    let mut nodes: Vec<SubmitJob> = Vec::new();
    for (i, job) in jobs.into_iter().enumerate() {
        let mut job = named(job, i.to_string());
        if let Some(previous) = nodes.last().and_then(|n| n.name.clone()) {
            job = job.after([previous]).with_results();
        }
        nodes.push(job);
    }
    SubmitWorkflow { nodes }
}

/// Jobs run side by side; the workflow's id is the group's, its results come in one call
/// ([`Client::workflow`](crate::Client::workflow)).
pub fn group(jobs: impl IntoIterator<Item = SubmitJob>) -> SubmitWorkflow {
    SubmitWorkflow {
        nodes: jobs
            .into_iter()
            .enumerate()
            .map(|(i, job)| named(job, i.to_string()))
            .collect(),
    }
}

/// A group, then `callback` once every member succeeded, receiving their results in the
/// group's order.
pub fn chord(jobs: impl IntoIterator<Item = SubmitJob>, callback: SubmitJob) -> SubmitWorkflow {
    let mut workflow = group(jobs);
    let members: Vec<String> = workflow
        .nodes
        .iter()
        .filter_map(|n| n.name.clone())
        .collect();
    let callback = named(callback, "callback".into())
        .after(members)
        .with_results();
    workflow.nodes.push(callback);
    workflow
}

#[cfg(test)]
mod tests {
    use super::*;

    fn echo(n: i64) -> SubmitJob {
        SubmitJob::function("root.q", "lqsm.echo", serde_json::json!(n))
    }

    #[test]
    fn a_chain_links_each_node_to_the_one_before_with_its_result() {
        let w = chain([echo(1), echo(2).named("second"), echo(3)]);
        let names: Vec<_> = w
            .nodes
            .iter()
            .map(|n| n.name.clone().unwrap_or_default())
            .collect();
        assert_eq!(names, ["0", "second", "2"]);
        assert!(w.nodes[0].after.is_empty() && !w.nodes[0].pass_results);
        assert_eq!(w.nodes[1].after, ["0"]);
        assert_eq!(w.nodes[2].after, ["second"]);
        assert!(w.nodes[2].pass_results);
    }

    #[test]
    fn a_chord_callback_waits_for_the_whole_group_in_order() {
        let w = chord((0..3).map(echo), echo(9));
        assert_eq!(w.nodes.len(), 4);
        assert_eq!(w.nodes[3].name.as_deref(), Some("callback"));
        assert_eq!(w.nodes[3].after, ["0", "1", "2"]);
        assert!(w.nodes[3].pass_results);
    }
}
