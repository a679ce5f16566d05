//! Secret environment variables of command jobs (`secret_env`): every view shows `***`
//! for them and the job's logs have their values masked, while the worker that runs
//! the job receives the real values.
#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

use lqsm_api as api;
use lqsm_api::ErrorCode;
use lqsm_testkit::{Api, BlockingTestServer, finished_attempt};
use serde_json::json;
use std::collections::BTreeMap;

const SECRET: &str = "s3cr3t-v4lue";

/// A command job with a plain and a secret variable.
fn job_with_a_secret() -> api::SubmitJob {
    let mut job = api::SubmitJob::new(
        "root.default",
        api::JobKind::Command {
            argv: vec!["sh".into(), "-c".into(), "echo \"token is $TOKEN\"".into()],
            env: BTreeMap::from([
                ("TOKEN".to_owned(), SECRET.to_owned()),
                ("MODE".to_owned(), "fast".to_owned()),
            ]),
            cwd: None,
        },
    );
    job.secret_env = vec!["TOKEN".into()];
    job
}

/// The command's variables as a view shows them.
fn env_of(kind: &api::JobKind) -> BTreeMap<String, String> {
    match kind {
        api::JobKind::Command { env, .. } => env.clone(),
        api::JobKind::Function { .. } => panic!("a command job was expected: {kind:?}"),
    }
}

fn masked() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("TOKEN".to_owned(), api::REDACTED.to_owned()),
        ("MODE".to_owned(), "fast".to_owned()),
    ])
}

/// Registers a worker that runs commands and polls until it gets one job.
fn take_command(api: &Api) -> (uuid::Uuid, api::Assignment) {
    let id = uuid::Uuid::now_v7();
    api.post(
        "/v1/workers",
        &api::RegisterWorker {
            id,
            name: "secret-runner".into(),
            capacity: api::Resources {
                cpu: Some(4.0),
                memory_mib: Some(4096),
                ..api::Resources::default()
            },
            labels: Default::default(),
            serves_commands: true,
            queues: Default::default(),
            handlers: Vec::new(),
            protocol: api::WORKER_PROTOCOL,
        },
    )
    .expect_status(200);
    let assignment = lqsm_testkit::wait::eventually("the command's assignment", || {
        let poll: api::PollResponse = api
            .post(
                &format!("/v1/workers/{id}/poll"),
                &api::PollRequest {
                    wait_ms: 200,
                    ..api::PollRequest::default()
                },
            )
            .expect(200);
        poll.assignments.into_iter().next()
    });
    (id, assignment)
}

#[test]
fn secret_values_are_masked_in_views_and_logs_and_reach_the_worker() {
    let server = BlockingTestServer::start();
    let api = server.api();
    let id = api.submit(&job_with_a_secret());

    let view = api.job(id);
    assert_eq!(env_of(&view.kind), masked());
    assert_eq!(view.secret_env, ["TOKEN"]);
    let listed: api::JobList = api.get("/v1/jobs?queue=root.default").expect(200);
    assert_eq!(env_of(&listed.jobs[0].kind), masked());
    let raw = api.get(&format!("/v1/jobs/{id}")).body;
    assert!(!raw.contains(SECRET), "{raw}");

    // The worker gets the value itself, and nothing naming the secret ones.
    let (worker, assignment) = take_command(&api);
    assert_eq!(assignment.job, id);
    assert_eq!(
        env_of(&assignment.kind),
        BTreeMap::from([
            ("TOKEN".to_owned(), SECRET.to_owned()),
            ("MODE".to_owned(), "fast".to_owned()),
        ])
    );
    let mut finished = finished_attempt(
        &assignment,
        api::AttemptResult::Succeeded {
            result: None,
            exit_code: Some(0),
        },
    );
    finished.logs = Some(format!("token is {SECRET}\nand again: {SECRET}!\n"));
    api.post(
        &format!("/v1/workers/{worker}/poll"),
        &api::PollRequest {
            finished: vec![finished],
            ..api::PollRequest::default()
        },
    )
    .expect_status(200);
    let done = api.wait_for_state(id, api::JobState::Succeeded);
    assert_eq!(env_of(&done.kind), masked());
    let logs = api.get(&format!("/v1/jobs/{id}/logs")).body;
    assert_eq!(logs, "token is ***\nand again: ***!\n");

    // A re-run keeps the variable secret.
    let rerun: api::Submitted = api
        .post(&format!("/v1/jobs/{id}/retry"), &json!({}))
        .expect(201);
    let view = api.job(rerun.id);
    assert_eq!(env_of(&view.kind), masked());
    assert_eq!(view.secret_env, ["TOKEN"]);
}

#[test]
fn a_schedules_template_and_a_workflows_nodes_keep_their_secrets() {
    let server = BlockingTestServer::start();
    let api = server.api();
    let schedule: api::ScheduleView = api
        .post(
            "/v1/schedules",
            &json!({"name": "rotate", "every_ms": 3_600_000, "job": job_with_a_secret()}),
        )
        .expect(201);
    assert_eq!(env_of(&schedule.kind), masked());
    let listed = api.get("/v1/schedules").body;
    assert!(!listed.contains(SECRET), "{listed}");

    let mut node = job_with_a_secret();
    node.name = Some("only".into());
    let flow: api::WorkflowSubmitted = api
        .post("/v1/workflows", &json!({"nodes": [node]}))
        .expect(201);
    let view = api.get(&format!("/v1/workflows/{}", flow.id)).body;
    assert!(!view.contains(SECRET), "{view}");
    assert!(view.contains(r#""TOKEN":"***""#), "{view}");
}

#[test]
fn secret_env_must_name_variables_of_a_commands_env() {
    let server = BlockingTestServer::start();
    let api = server.api();
    let mut job = job_with_a_secret();
    job.secret_env = vec!["TOKEN".into(), "PASSWORD".into()];
    let error = api.post("/v1/jobs", &job).expect_error(400);
    assert_eq!(error.field.as_deref(), Some("secret_env[1]"), "{error:?}");
    assert!(error.message.contains("`PASSWORD`"), "{error:?}");

    let mut function = api::SubmitJob::function("root.default", "h", json!(null));
    function.secret_env = vec!["TOKEN".into()];
    let error = api.post("/v1/jobs", &function).expect_error(400);
    assert_eq!(error.field.as_deref(), Some("secret_env"), "{error:?}");

    // A name no variable can have (it would also pass for the server's own entry).
    let mut job = job_with_a_secret();
    if let api::JobKind::Command { env, .. } = &mut job.kind {
        env.insert("=lqsm.secret_env".into(), "[]".into());
    }
    let error = api.post("/v1/jobs", &job).expect_error(400);
    assert_eq!(error.code, ErrorCode::InvalidField);
    assert_eq!(error.field.as_deref(), Some("kind.env"), "{error:?}");

    // In a batch the field is named within its item.
    let mut bad = job_with_a_secret();
    bad.secret_env = vec!["NOPE".into()];
    let batch: api::BatchResult = api
        .post(
            "/v1/jobs/batch",
            &api::SubmitBatch {
                jobs: vec![job_with_a_secret(), bad],
            },
        )
        .expect(200);
    assert_eq!(batch.accepted, 1);
    let error = batch.results[1].error.as_ref().unwrap();
    assert_eq!(
        error.field.as_deref(),
        Some("jobs[1].secret_env[0]"),
        "{error:?}"
    );
}

#[test]
fn a_running_commands_output_is_masked_even_when_a_read_or_an_upload_cuts_a_secret() {
    let server = BlockingTestServer::start();
    let api = server.api();
    let id = api.submit(&job_with_a_secret());
    let (worker, a) = take_command(&api);
    let upload = |offset: u64, text: &str| {
        let answer: api::LogChunksAnswer = api
            .post(
                &format!("/v1/workers/{worker}/logs"),
                &api::LogChunks {
                    chunks: vec![api::LogChunk {
                        job: a.job,
                        token: a.token,
                        offset,
                        text: text.to_owned(),
                    }],
                },
            )
            .expect(200);
        assert!(answer.refused.is_empty(), "{answer:?}");
    };
    // The upload stops inside the secret: what may be its start is not shown yet.
    upload(0, &format!("token is {}", &SECRET[..4]));
    assert_eq!(api.get(&format!("/v1/jobs/{id}/logs")).body, "token is ");
    let first: api::JobLogs = api.get(&format!("/v1/jobs/{id}/logs?offset=0")).expect(200);
    assert_eq!((first.text.as_str(), first.next_offset), ("token is ", 9));
    upload(13, &format!("{} ok\n", &SECRET[4..]));
    // A read from inside the secret shows none of it.
    let inside: api::JobLogs = api
        .get(&format!("/v1/jobs/{id}/logs?offset=11"))
        .expect(200);
    assert_eq!(inside.text, "*** ok\n");
    let next: api::JobLogs = api
        .get(&format!("/v1/jobs/{id}/logs?offset={}", first.next_offset))
        .expect(200);
    assert_eq!(next.text, "*** ok\n");
    assert_eq!(
        api.get(&format!("/v1/jobs/{id}/logs")).body,
        "token is *** ok\n"
    );
}
