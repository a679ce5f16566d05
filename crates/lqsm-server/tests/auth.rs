//! Bearer tokens and roles: who may call what, and the refusal to listen beyond
//! loopback without tokens.
#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

use lqsm_api as api;
use lqsm_api::ErrorCode;
use lqsm_testkit::{
    BlockingTestServer, Reply, ServerProcess, SimWorker, function_job, toml_settings,
};
use serde_json::json;

const TOKENS: &str = r#"
[[tokens]]
token = "admin-secret"
role = "admin"

[[tokens]]
token = "etl-secret"
role = "submitter"
queues = ["root.etl.*"]

[[tokens]]
token = "worker-secret"
role = "worker"
"#;

/// What shows the whole cluster: only admins and tokens covering every queue read it.
const WHOLE_CLUSTER: [&str; 5] = [
    "/v1/queues",
    "/v1/workers",
    "/v1/cluster",
    "/metrics",
    "/v1/jobs",
];

fn assert_code(reply: &Reply, status: u16, code: ErrorCode, what: &str) {
    let error = reply.expect_error(status);
    assert_eq!(error.code, code, "{what}: {error:?}");
}

#[test]
fn tokens_decide_who_may_do_what() {
    let server = BlockingTestServer::start_with(toml_settings(TOKENS));
    let anonymous = server.api();
    let admin = server.api_as("admin-secret");
    let submitter = server.api_as("etl-secret");
    let worker = server.api_as("worker-secret");
    let stranger = server.api_as("guessed-secret");

    // Probes stay open; everything else needs a known token.
    assert_eq!(anonymous.get("/healthz").status, 200);
    assert_eq!(anonymous.get("/readyz").status, 200);
    let job = function_job("root.default", "auth");
    for (api, who) in [(&anonymous, "no token"), (&stranger, "unknown token")] {
        assert_code(&api.get("/v1/queues"), 401, ErrorCode::Unauthorized, who);
        assert_code(
            &api.post("/v1/jobs", &job),
            401,
            ErrorCode::Unauthorized,
            who,
        );
        assert_code(&api.get("/v1/workers"), 401, ErrorCode::Unauthorized, who);
    }

    // The admin sets up the queues.
    admin.create_queue(json!({"path": "root.etl"}));
    admin.create_queue(json!({"path": "root.etl.x", "capacity": 100}));
    let foreign = admin.submit(&job);

    // A submitter works in its queues only.
    let denied = submitter.post("/v1/jobs", &job).expect_error(403);
    assert_eq!(denied.code, lqsm_api::ErrorCode::Forbidden);
    assert_eq!(denied.field.as_deref(), Some("queue"));
    assert!(denied.message.contains("root.etl.*"), "{}", denied.message);
    let own = submitter.submit(&function_job("root.etl.x", "auth"));
    assert_eq!(submitter.job(own).queue, "root.etl.x");
    let batch: api::BatchResult = submitter
        .post(
            "/v1/jobs/batch",
            &api::SubmitBatch {
                jobs: vec![function_job("root.etl.x", "auth"), job.clone()],
            },
        )
        .expect(200);
    assert_eq!(batch.accepted, 1);
    assert_eq!(
        batch.results[1].error.as_ref().unwrap().code,
        lqsm_api::ErrorCode::Forbidden
    );
    assert_code(
        &submitter.get(&format!("/v1/jobs/{foreign}")),
        403,
        ErrorCode::Forbidden,
        "reading a job of another queue",
    );
    assert_code(
        &submitter.post(&format!("/v1/jobs/{foreign}/cancel"), &json!({})),
        403,
        ErrorCode::Forbidden,
        "cancelling a job of another queue",
    );
    assert_eq!(admin.job(foreign).state, lqsm_api::JobState::Pending);
    let list: api::JobList = submitter.get("/v1/jobs?queue=root.etl.x").expect(200);
    assert_eq!(list.jobs.len(), 2);
    assert_code(
        &submitter.get("/v1/jobs"),
        403,
        ErrorCode::Forbidden,
        "listing every queue",
    );
    assert_code(
        &submitter.post("/v1/queues", &json!({"path": "root.etl.y"})),
        403,
        ErrorCode::Forbidden,
        "creating a queue",
    );
    // ... and may not act as a worker.
    let registration = api::RegisterWorker {
        id: uuid::Uuid::now_v7(),
        name: "intruder".into(),
        capacity: api::Resources {
            cpu: Some(1.0),
            ..api::Resources::default()
        },
        labels: Default::default(),
        serves_commands: true,
        queues: Default::default(),
        handlers: Vec::new(),
        protocol: api::WORKER_PROTOCOL,
    };
    assert_code(
        &submitter.post("/v1/workers", &registration),
        403,
        ErrorCode::Forbidden,
        "a submitter registering a worker",
    );
    assert_code(
        &submitter.post(
            &format!("/v1/workers/{}/poll", registration.id),
            &api::PollRequest::default(),
        ),
        403,
        ErrorCode::Forbidden,
        "a submitter polling",
    );

    // A worker token works the worker endpoints and nothing about jobs.
    assert_code(
        &worker.post("/v1/jobs", &function_job("root.etl.x", "auth")),
        403,
        ErrorCode::Forbidden,
        "a worker submitting",
    );
    assert_code(
        &worker.get(&format!("/v1/jobs/{own}")),
        403,
        ErrorCode::Forbidden,
        "a worker reading a job",
    );
    assert_code(
        &worker.post(&format!("/v1/jobs/{own}/cancel"), &json!({})),
        403,
        ErrorCode::Forbidden,
        "a worker cancelling a job",
    );
    let run = submitter.submit(&function_job("root.etl.x", "auth-run"));
    let mut sim = SimWorker::register(&worker, "auth-run");
    let a = sim.next_assignment();
    assert_eq!(a.job, run);
    sim.succeed(&a, json!("done"));
    assert_eq!(submitter.job(run).state, lqsm_api::JobState::Succeeded);

    // The submitter may cancel in its own queue.
    let cancelled: api::JobView = submitter
        .post(
            &format!("/v1/jobs/{}/cancel", batch.results[0].id.unwrap()),
            &json!({}),
        )
        .expect(200);
    assert_eq!(cancelled.state, lqsm_api::JobState::Cancelled);
}

#[test]
fn server_refuses_to_listen_beyond_loopback_without_tokens() {
    let ran = ServerProcess::builder().start_expecting_refusal("0.0.0.0:0".parse().unwrap());
    let (status, stderr) = (ran.status, ran.stderr);
    assert!(!status.success(), "exited with {status}");
    assert!(
        stderr.contains("--insecure"),
        "the refusal should say how to override it; stderr:\n{stderr}"
    );
}

#[test]
fn a_job_records_the_name_of_the_token_that_submitted_it_across_a_restart() {
    let mut server = ServerProcess::builder()
        .config(
            r#"
[[tokens]]
name = "ci-bot"
token = "ci-secret"
role = "submitter"
queues = ["*"]

[[tokens]]
token = "admin-secret"
role = "admin"
"#,
        )
        .start();
    let job = function_job("root.default", "who");
    let by_bot = server.api_as("ci-secret").submit(&job);
    // An unnamed token is known by its role and place: the first unnamed admin.
    let by_admin = server.api_as("admin-secret").submit(&job);
    let admin = server.api_as("admin-secret");
    assert_eq!(admin.job(by_bot).submitted_by, "ci-bot");
    assert_eq!(admin.job(by_admin).submitted_by, "admin-1");
    assert!(
        server.log_tail().contains("has no `name`"),
        "the unnamed token is warned about:\n{}",
        server.log_tail()
    );

    server.stop();
    server.restart();
    let admin = server.api_as("admin-secret");
    assert_eq!(admin.job(by_bot).submitted_by, "ci-bot");
    assert_eq!(admin.job(by_admin).submitted_by, "admin-1");
}

#[test]
fn jobs_on_a_server_without_tokens_are_submitted_by_anonymous() {
    let server = BlockingTestServer::start();
    let api = server.api();
    let id = api.submit(&function_job("root.default", "who"));
    assert_eq!(api.job(id).submitted_by, api::ANONYMOUS);
}

#[test]
fn a_bulk_cancel_stays_within_the_callers_queues() {
    let server = BlockingTestServer::start_with(toml_settings(TOKENS));
    let admin = server.api_as("admin-secret");
    let submitter = server.api_as("etl-secret");
    admin.create_queue(json!({"path": "root.etl"}));
    admin.create_queue(json!({"path": "root.etl.daily"}));
    admin.create_queue(json!({"path": "root.ml"}));
    let mut nightly = function_job("root.etl.daily", "nobody-runs-this");
    nightly.tags = vec!["nightly".into()];
    let in_etl = submitter.submit(&nightly);
    nightly.queue = "root.ml".into();
    let in_ml = admin.submit(&nightly);

    // Within its queues, a submitter may.
    let done: api::CancelledJobs = submitter
        .post(
            "/v1/jobs/cancel",
            &json!({"queue": "root.etl.daily", "tag": "nightly", "reason": "bad input file"}),
        )
        .expect(200);
    assert_eq!(done.cancelled, 1);
    let view = submitter.job(in_etl);
    assert_eq!(view.state, api::JobState::Cancelled);
    // Beyond them, or across every queue, it may not.
    assert_code(
        &submitter.post("/v1/jobs/cancel", &json!({"queue": "root.ml"})),
        403,
        ErrorCode::Forbidden,
        "another team's queue",
    );
    assert_code(
        &submitter.post("/v1/jobs/cancel", &json!({"tag": "nightly"})),
        403,
        ErrorCode::Forbidden,
        "every queue",
    );
    assert_eq!(admin.job(in_ml).state, api::JobState::Pending);
    // Bad selections are refused naming the field, cancelling nothing.
    let error = admin.post("/v1/jobs/cancel", &json!({})).expect_error(400);
    assert_eq!(error.field.as_deref(), Some("queue"), "{error:?}");
    let error = admin
        .post("/v1/jobs/cancel", &json!({"state": "succeeded"}))
        .expect_error(400);
    assert_eq!(error.field.as_deref(), Some("state"), "{error:?}");
    let error = admin
        .post("/v1/jobs/cancel", &json!({"queue": "root.nope"}))
        .expect_error(404);
    assert_eq!(error.field.as_deref(), Some("queue"), "{error:?}");
    assert_eq!(admin.job(in_ml).state, api::JobState::Pending);
    // An admin may cancel across every queue.
    let done: api::CancelledJobs = admin
        .post("/v1/jobs/cancel", &json!({"tag": "nightly"}))
        .expect(200);
    assert_eq!(done.cancelled, 1);
    assert_eq!(admin.job(in_ml).state, api::JobState::Cancelled);
}

#[test]
fn a_reader_reads_its_queues_and_changes_nothing_and_cluster_views_need_every_queue() {
    let tokens = format!(
        "{TOKENS}
[[tokens]]
name = \"auditor\"
token = \"reader-secret\"
role = \"reader\"
queues = [\"root.etl.*\"]

[[tokens]]
name = \"watcher\"
token = \"all-reader-secret\"
role = \"reader\"
queues = [\"*\"]
"
    );
    let server = BlockingTestServer::start_with(toml_settings(&tokens));
    let admin = server.api_as("admin-secret");
    admin.create_queue(json!({"path": "root.etl"}));
    admin.create_queue(json!({"path": "root.etl.x"}));
    let submitter = server.api_as("etl-secret");
    let id = submitter.submit(&function_job("root.etl.x", "audited"));
    let other = admin.submit(&function_job("root.default", "elsewhere"));

    let reader = server.api_as("reader-secret");
    // Reads within its queues.
    let job: api::JobView = reader.get(&format!("/v1/jobs/{id}")).expect(200);
    assert_eq!(job.id, id);
    let listed: api::JobList = reader.get("/v1/jobs?queue=root.etl.x").expect(200);
    assert_eq!(listed.jobs.len(), 1);
    reader.get("/v1/queues/root.etl").expect_status(200);
    // Nothing outside them, and nothing that changes anything.
    let forbidden = |reply: &Reply, what: &str| assert_code(reply, 403, ErrorCode::Forbidden, what);
    forbidden(
        &reader.get(&format!("/v1/jobs/{other}")),
        "another queue's job",
    );
    forbidden(
        &reader.get("/v1/jobs?queue=root.default"),
        "another queue's jobs",
    );
    forbidden(
        &reader.post("/v1/jobs", &function_job("root.etl.x", "no")),
        "a submission",
    );
    forbidden(
        &reader.post(&format!("/v1/jobs/{id}/cancel"), &json!({})),
        "a cancel",
    );
    // The whole cluster needs every queue.
    for path in WHOLE_CLUSTER {
        forbidden(&reader.get(path), path);
        forbidden(&submitter.get(path), path);
    }
    let watcher = server.api_as("all-reader-secret");
    for path in WHOLE_CLUSTER {
        watcher.get(path).expect_status(200);
    }
    forbidden(
        &watcher.post("/v1/jobs", &function_job("root.default", "no")),
        "a reader of everything submits nothing",
    );
}

#[test]
fn the_audit_log_records_who_changed_the_cluster_and_how_it_went() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let settings = format!("audit_log = {:?}\n{TOKENS}", audit.display().to_string());
    let server = BlockingTestServer::start_with(toml_settings(&settings));
    let admin = server.api_as("admin-secret");
    let submitter = server.api_as("etl-secret");

    admin.create_queue(json!({"path": "root.etl"}));
    assert_code(
        &submitter.post("/v1/queues", &json!({"path": "root.other"})),
        403,
        ErrorCode::Forbidden,
        "a submitter creates a queue",
    );
    // Reads and job traffic are not admin actions.
    admin.get("/v1/queues").expect_status(200);
    submitter.submit(&function_job("root.etl", "not audited"));
    admin
        .post("/v1/queues/root.etl/drain", &json!({}))
        .expect_status(200);

    let records: Vec<serde_json::Value> = std::fs::read_to_string(&audit)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let summary: Vec<(String, String, u64)> = records
        .iter()
        .map(|r| {
            (
                r["caller"].as_str().unwrap().to_owned(),
                r["action"].as_str().unwrap().to_owned(),
                r["status"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("admin-1".to_owned(), "create_queue".to_owned(), 201),
            ("submitter-1".to_owned(), "create_queue".to_owned(), 403),
            ("admin-1".to_owned(), "drain_queue".to_owned(), 200),
        ]
    );
    assert_eq!(records[2]["path"], "/v1/queues/root.etl/drain");
    assert!(records[0]["at_ms"].as_u64().unwrap() > 0);
}

#[test]
fn a_client_that_keeps_failing_to_authenticate_is_refused_for_a_while() {
    let settings = format!("[limits]\nmax_failed_auth_per_minute = 3\n{TOKENS}");
    let server = BlockingTestServer::start_with(toml_settings(&settings));
    let guesser = server.api_as("guessed-secret");
    let worker = server.api_as("worker-secret");
    assert_code(
        &guesser.get("/v1/queues"),
        401,
        ErrorCode::Unauthorized,
        "guess",
    );
    // A worker on the same address (behind the same NAT, say) authenticates meanwhile.
    assert_ne!(worker.get("/v1/workers").status, 401);
    for attempt in 1..3 {
        assert_code(
            &guesser.get("/v1/queues"),
            401,
            ErrorCode::Unauthorized,
            &format!("guess {attempt}"),
        );
    }
    let blocked = guesser.get("/v1/queues");
    assert_code(
        &blocked,
        429,
        ErrorCode::TooManyRequests,
        "the fourth guess",
    );
    let retry_after: u64 = blocked.retry_after.as_deref().unwrap().parse().unwrap();
    assert!((1..=20).contains(&retry_after), "{retry_after}");
    // Every new token from that address waits, a right one included: while blocked, an
    // answer tells no new guess apart.
    assert_code(
        &server.api_as("admin-secret").get("/v1/queues"),
        429,
        ErrorCode::TooManyRequests,
        "a right token new to the address",
    );
    // The token that worked from this address before it was blocked still does.
    assert_ne!(worker.get("/v1/workers").status, 429);
    // Probes and the API document stay open.
    assert_eq!(server.api().get("/healthz").status, 200);
}
