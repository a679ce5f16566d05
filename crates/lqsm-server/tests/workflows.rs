//! Workflows through the HTTP API: a chain passes each result on, a chord's callback gets
//! its group's results in order (by reference when large), a workflow goes on across a
//! restart, a cancel reaches every unfinished node, bad graphs are refused naming the
//! node, and a parent the caller may not read is refused.
#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

use lqsm_api as api;
use lqsm_testkit::wait::eventually;
use lqsm_testkit::{BlockingTestServer, SimWorker, toml_settings};
use serde_json::json;

fn node(name: &str, handler: &str, n: i64) -> api::SubmitJob {
    api::SubmitJob::function("root.default", handler, json!(n)).named(name)
}

/// The assignment an answer carried, or the next one to come.
fn handed(worker: &mut SimWorker, mut answer: api::PollResponse) -> api::Assignment {
    if answer.assignments.is_empty() {
        worker.next_assignment()
    } else {
        assert_eq!(answer.assignments.len(), 1, "{answer:?}");
        answer.assignments.remove(0)
    }
}

fn workflow(api: &lqsm_testkit::Api, id: uuid::Uuid) -> api::WorkflowView {
    api.get(&format!("/v1/workflows/{id}")).expect(200)
}

#[test]
fn a_chain_passes_each_result_on_and_goes_on_across_a_restart() {
    let mut server = BlockingTestServer::start();
    let api = server.api();
    let chain = lqsm_client::chain([
        node("extract", "wf.chain", 1),
        node("transform", "wf.chain", 2),
        node("load", "wf.chain", 3),
    ]);
    let submitted: api::WorkflowSubmitted = api.post("/v1/workflows", &chain).expect(201);
    let names: Vec<&str> = submitted.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["extract", "transform", "load"]);
    let view = workflow(&api, submitted.id);
    assert_eq!(view.state, api::WorkflowState::Running);
    assert_eq!(view.nodes.len(), 3);
    assert_eq!(view.nodes[1].after, [submitted.nodes[0].id]);
    assert_eq!(view.nodes[1].name.as_deref(), Some("transform"));
    assert_eq!(view.nodes[1].workflow, Some(submitted.id));

    let mut worker = SimWorker::register(&api, "wf.chain");
    let first = worker.next_assignment();
    assert_eq!(first.job, submitted.nodes[0].id);
    assert!(first.inputs.is_none());
    // The next link is handed out the moment the first ends, in the same answer if it can.
    let answer = worker.succeed(&first, json!({"rows": 10}));
    let second = handed(&mut worker, answer);
    assert_eq!(second.job, submitted.nodes[1].id);
    assert_eq!(second.inputs, Some(vec![json!({"rows": 10})]));

    // A restart while the second link runs: the worker reclaims it, and the rest of the
    // chain still runs, in order.
    server.restart();
    let api = server.api();
    worker.reconnect(&api);
    worker.register_again();
    let answer = worker.succeed(&second, json!({"rows": 9}));
    let third = handed(&mut worker, answer);
    assert_eq!(third.job, submitted.nodes[2].id);
    assert_eq!(third.inputs, Some(vec![json!({"rows": 9})]));
    worker.succeed(&third, json!("done"));
    let view = eventually("the chain to end", || {
        let view = workflow(&api, submitted.id);
        (view.state != api::WorkflowState::Running).then_some(view)
    });
    assert_eq!(view.state, api::WorkflowState::Succeeded);
    let results: Vec<_> = view.nodes.iter().map(|n| n.result.clone()).collect();
    assert_eq!(
        results,
        [
            Some(json!({"rows": 10})),
            Some(json!({"rows": 9})),
            Some(json!("done"))
        ]
    );
    assert_eq!(view.counts[&api::JobState::Succeeded], 3);
}

#[test]
fn a_chord_callback_gets_large_results_by_reference_in_the_group_order() {
    let server = BlockingTestServer::start();
    let api = server.api();
    let chord = lqsm_client::chord(
        (0..3).map(|i| node(&format!("part{i}"), "wf.chord", i)),
        node("sum", "wf.chord", 0),
    );
    let submitted: api::WorkflowSubmitted = api.post("/v1/workflows", &chord).expect(201);
    let mut worker = SimWorker::register(&api, "wf.chord");
    let mut members = Vec::new();
    eventually("the group's three attempts", || {
        members.extend(worker.poll(&[], 200).assignments);
        (members.len() >= 3).then_some(())
    });
    // Three results of 100 KiB each: together past what travels with an assignment.
    members.sort_by_key(|a| a.job);
    let mut answer = api::PollResponse::default();
    for (i, a) in members.iter().enumerate().rev() {
        answer = worker.succeed(a, json!({"part": i, "pad": "x".repeat(100 * 1024)}));
    }
    let callback = handed(&mut worker, answer);
    assert_eq!(callback.job, submitted.nodes[3].id);
    assert!(callback.inputs.is_none());
    let path = callback.inputs_path.clone().expect("inputs by reference");
    assert_eq!(path, format!("/v1/jobs/{}/inputs", callback.job));
    let inputs: api::JobInputs = api.get(&path).expect(200);
    let parts: Vec<_> = inputs.inputs.iter().map(|v| v["part"].clone()).collect();
    assert_eq!(parts, [json!(0), json!(1), json!(2)]);
    // A job that receives nothing has no inputs to read.
    api.get(&format!("/v1/jobs/{}/inputs", members[0].job))
        .expect_error(400);
}

#[test]
fn a_failed_node_cancels_its_dependents_and_a_cancel_reaches_every_node() {
    let server = BlockingTestServer::start();
    let api = server.api();
    let graph = api::SubmitWorkflow {
        nodes: vec![
            node("a", "wf.fail", 1),
            node("b", "wf.fail", 2).after(["a"]),
            node("c", "wf.fail", 3)
                .after(["a"])
                .when(api::RunWhen::AllFinished),
        ],
    };
    let submitted: api::WorkflowSubmitted = api.post("/v1/workflows", &graph).expect(201);
    let mut worker = SimWorker::register(&api, "wf.fail");
    let a = worker.next_assignment();
    let answer = worker.poll(
        &[lqsm_testkit::finished_attempt(
            &a,
            api::AttemptResult::Failed {
                exit_code: None,
                message: "no input".into(),
                retry: None,
                memory_exceeded: false,
            },
        )],
        0,
    );
    let b = eventually("b cancelled", || {
        let b = api.job(submitted.nodes[1].id);
        (b.state == api::JobState::Cancelled).then_some(b)
    });
    assert_eq!(
        b.reason.as_deref(),
        Some(format!("dependency_failed: parent job {} failed", a.job).as_str())
    );
    // `all_finished` runs anyway; cancelling the workflow stops it.
    let c = handed(&mut worker, answer);
    assert_eq!(c.job, submitted.nodes[2].id);
    let cancelled: api::CancelledJobs = api
        .post(
            &format!("/v1/workflows/{}/cancel", submitted.id),
            &json!({}),
        )
        .expect(200);
    assert_eq!(cancelled.cancelled, 1);
    let view = workflow(&api, submitted.id);
    assert_eq!(view.state, api::WorkflowState::Failed);
    assert_eq!(view.nodes[2].state, api::JobState::Cancelled);
}

#[test]
fn bad_graphs_are_refused_whole_naming_the_node_and_field() {
    let server = BlockingTestServer::start();
    let api = server.api();
    let refused = |nodes: Vec<api::SubmitJob>, field: &str| {
        let error = api
            .post("/v1/workflows", &api::SubmitWorkflow { nodes })
            .expect_error(400);
        assert_eq!(error.field.as_deref(), Some(field), "{error:?}");
        error.message
    };
    let message = refused(
        vec![
            node("a", "h", 1).after(["b"]),
            node("b", "h", 2).after(["a"]),
        ],
        "nodes[0].after",
    );
    assert!(message.contains("waits for itself"), "{message}");
    let message = refused(
        vec![node("a", "h", 1), node("b", "h", 2).after(["nope"])],
        "nodes[1].after[0]",
    );
    assert!(message.contains("neither a node"), "{message}");
    refused(vec![node("a", "h", 1), node("a", "h", 2)], "nodes[1].name");
    refused(
        vec![api::SubmitJob::function("root.default", "h", json!(1))],
        "nodes[0].name",
    );
    refused(vec![], "nodes");
    let mut command = api::SubmitJob::new(
        "root.default",
        api::JobKind::Command {
            argv: vec!["true".into()],
            env: Default::default(),
            cwd: None,
        },
    )
    .named("cmd")
    .after(["a"]);
    command.pass_results = true;
    refused(vec![node("a", "h", 1), command], "nodes[1].pass_results");
    let mut elsewhere = node("b", "h", 1).after(["a"]);
    elsewhere.queue = "root.nowhere".into();
    let error = api
        .post(
            "/v1/workflows",
            &api::SubmitWorkflow {
                nodes: vec![node("a", "h", 1), elsewhere],
            },
        )
        .expect_error(404);
    assert_eq!(error.field.as_deref(), Some("nodes[1].queue"), "{error:?}");
    // Nothing of any refused graph was taken.
    let listed: api::JobList = api.get("/v1/jobs").expect(200);
    assert!(listed.jobs.is_empty(), "{listed:?}");
    // A single job has no name, and waits only for ids.
    let error = api
        .post("/v1/jobs", &node("solo", "h", 1))
        .expect_error(400);
    assert_eq!(error.field.as_deref(), Some("name"));
    let error = api
        .post(
            "/v1/jobs",
            &api::SubmitJob::function("root.default", "h", json!(1)).after(["extract"]),
        )
        .expect_error(400);
    assert_eq!(error.field.as_deref(), Some("after[0]"));
    api.get(&format!("/v1/workflows/{}", uuid::Uuid::now_v7()))
        .expect_error(404);
}

#[test]
fn a_job_may_wait_for_an_existing_job_the_caller_may_read() {
    let server = BlockingTestServer::start_with(toml_settings(
        r#"
[[tokens]]
token = "admin-secret"
role = "admin"

[[tokens]]
token = "etl-secret"
role = "submitter"
queues = ["root.etl"]
"#,
    ));
    let admin = server.api_as("admin-secret");
    admin.create_queue(json!({"path": "root.etl", "capacity": 0.0}));
    let etl = server.api_as("etl-secret");
    let theirs = admin.submit(&api::SubmitJob::function("root.default", "h", json!(1)));
    let ours = etl.submit(&api::SubmitJob::function("root.etl", "h", json!(1)));
    let waits_for_theirs =
        api::SubmitJob::function("root.etl", "h", json!(2)).after([theirs.to_string()]);
    let error = etl.post("/v1/jobs", &waits_for_theirs).expect_error(403);
    assert_eq!(error.field.as_deref(), Some("after[0]"));
    let graph = api::SubmitWorkflow {
        nodes: vec![
            api::SubmitJob::function("root.etl", "h", json!(2))
                .named("next")
                .after([ours.to_string()]),
            api::SubmitJob::function("root.etl", "h", json!(3))
                .named("last")
                .after([theirs.to_string(), "next".into()]),
        ],
    };
    let error = etl.post("/v1/workflows", &graph).expect_error(403);
    assert_eq!(error.field.as_deref(), Some("nodes[1].after[0]"));
    let waits_for_ours =
        api::SubmitJob::function("root.etl", "h", json!(2)).after([ours.to_string()]);
    let id = etl.submit(&waits_for_ours);
    assert_eq!(etl.job(id).after, [ours]);
}

#[test]
fn a_large_result_is_kept_in_the_store_and_reaches_readers_and_dependents() {
    let mut server = BlockingTestServer::start();
    let api = server.api();
    let chain = lqsm_client::chain([node("big", "wf.big", 1), node("after", "wf.big", 2)]);
    let submitted: api::WorkflowSubmitted = api.post("/v1/workflows", &chain).expect(201);
    let mut worker = SimWorker::register(&api, "wf.big");
    let first = worker.next_assignment();
    // Far over the server's inline limit (1 KiB): kept apart, not in memory.
    let big = json!({"rows": "x".repeat(200 * 1024)});
    let answer = worker.succeed(&first, big.clone());
    let second = handed(&mut worker, answer);
    assert_eq!(second.job, submitted.nodes[1].id);
    // The dependent reads it from the store, not from its assignment.
    assert!(second.inputs.is_none());
    let inputs: api::JobInputs = api
        .get(second.inputs_path.as_deref().expect("by reference"))
        .expect(200);
    assert_eq!(inputs.inputs, vec![big.clone()]);
    assert_eq!(api.job(first.job).result, Some(big.clone()));
    // Across a restart too.
    server.restart();
    let api = server.api();
    assert_eq!(api.job(first.job).result, Some(big.clone()));
    let view = workflow(&api, submitted.id);
    assert_eq!(view.nodes[0].result, Some(big));
}
