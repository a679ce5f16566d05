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
/// (The queue tree is answered to every token, filtered to its queues.)
const WHOLE_CLUSTER: [&str; 4] = ["/v1/workers", "/v1/cluster", "/metrics", "/v1/jobs"];

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
fn a_token_naming_a_parent_queue_alone_cancels_nothing_below_it() {
    let settings = format!(
        "{TOKENS}\n[[tokens]]\ntoken = \"parent-secret\"\nrole = \"submitter\"\nqueues = [\"root.etl\"]\n"
    );
    let server = BlockingTestServer::start_with(toml_settings(&settings));
    let admin = server.api_as("admin-secret");
    let parent_only = server.api_as("parent-secret");
    admin.create_queue(json!({"path": "root.etl"}));
    admin.create_queue(json!({"path": "root.etl.daily"}));
    let below = admin.submit(&function_job("root.etl.daily", "nobody-runs-this"));

    // The selection would take the whole subtree: refused, naming a queue below.
    let error = parent_only
        .post("/v1/jobs/cancel", &json!({"queue": "root.etl"}))
        .expect_error(403);
    assert_eq!(error.code, ErrorCode::Forbidden, "{error:?}");
    assert!(error.message.contains("root.etl.daily"), "{error:?}");
    assert_eq!(admin.job(below).state, api::JobState::Pending);
    // A token covering the subtree may.
    let done: api::CancelledJobs = server
        .api_as("etl-secret")
        .post("/v1/jobs/cancel", &json!({"queue": "root.etl"}))
        .expect(200);
    assert_eq!(done.cancelled, 1);
}

#[test]
fn a_missing_queue_is_reported_without_naming_queues_the_caller_may_not_see() {
    let server = BlockingTestServer::start_with(toml_settings(TOKENS));
    let admin = server.api_as("admin-secret");
    admin.create_queue(json!({"path": "root.etl"}));
    admin.create_queue(json!({"path": "root.hr"}));
    admin.create_queue(json!({"path": "root.hr.payroll"}));
    let submitter = server.api_as("etl-secret");

    // A single submission and a batch item alike.
    let error = submitter
        .post("/v1/jobs", &function_job("root.etl.typo", "h"))
        .expect_error(404);
    assert_eq!(error.field.as_deref(), Some("queue"), "{error:?}");
    assert!(error.message.contains("root.etl.typo"), "{error:?}");
    assert!(!error.message.contains("payroll"), "{error:?}");
    let batch: api::BatchResult = submitter
        .post(
            "/v1/jobs/batch",
            &json!({"jobs": [function_job("root.etl.typo", "h")]}),
        )
        .expect(200);
    let item = batch.results[0].error.as_ref().expect("refused");
    assert!(!item.message.contains("payroll"), "{item:?}");
    // An admin still gets the queues near the typo, to spot it by.
    let error = admin
        .post("/v1/jobs", &function_job("root.etl.typo", "h"))
        .expect_error(404);
    assert!(error.message.contains("root.hr.payroll"), "{error:?}");
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

/// Tokens of every role, those limited to some queues limited to `root.etl`'s subtree.
const EVERY_ROLE: &str = r#"
[[tokens]]
name = "ops"
token = "admin-secret"
role = "admin"

[[tokens]]
name = "etl-admin"
token = "queue-admin-secret"
role = "queue-admin"
queues = ["root.etl.*"]

[[tokens]]
name = "etl-bot"
token = "etl-secret"
role = "submitter"
queues = ["root.etl.*"]

[[tokens]]
name = "etl-auditor"
token = "reader-secret"
role = "reader"
queues = ["root.etl.*"]

[[tokens]]
name = "daily-auditor"
token = "daily-reader-secret"
role = "reader"
queues = ["root.etl.daily"]

[[tokens]]
name = "etl-parent-auditor"
token = "parent-reader-secret"
role = "reader"
queues = ["root.etl"]

[[tokens]]
name = "watcher"
token = "all-reader-secret"
role = "reader"
queues = ["*"]

[[tokens]]
name = "node"
token = "worker-secret"
role = "worker"
"#;

/// The paths of a queue tree, depth first, each marked `*` when shown only to place
/// the queues below it.
fn tree_paths(view: &api::QueueView) -> Vec<String> {
    let mut paths = vec![format!(
        "{}{}",
        view.path,
        if view.placement_only { "*" } else { "" }
    )];
    for child in &view.children {
        paths.extend(tree_paths(child));
    }
    paths
}

#[test]
fn a_queue_admin_administers_its_subtree_below_its_root_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let settings = format!(
        "audit_log = {:?}\n{EVERY_ROLE}",
        audit.display().to_string()
    );
    let server = BlockingTestServer::start_with(toml_settings(&settings));
    let admin = server.api_as("admin-secret");
    let queue_admin = server.api_as("queue-admin-secret");
    let submitter = server.api_as("etl-secret");
    admin.create_queue(json!({"path": "root.etl", "capacity": 40, "max_capacity": 60}));
    admin.create_queue(json!({"path": "root.ml", "capacity": 40}));
    let forbidden = |reply: &Reply, what: &str| assert_code(reply, 403, ErrorCode::Forbidden, what);

    // Below its subtree's root it creates, one by one or in a batch.
    let daily: api::QueueView = queue_admin
        .post(
            "/v1/queues",
            &json!({"path": "root.etl.daily", "capacity": 70}),
        )
        .expect(201);
    assert!(
        (daily.abs_guarantee - 0.28).abs() < 1e-9,
        "a share of the admin's share: {daily:?}"
    );
    let batch: api::QueueBatchResult = queue_admin
        .post(
            "/v1/queues/batch",
            &json!({"queues": [{"path": "root.etl.hourly", "capacity": 30}, {"path": "root.ml.x"}]}),
        )
        .expect(200);
    assert_eq!(batch.created, 1, "{batch:?}");
    let refused = batch.results[1].error.as_ref().unwrap();
    assert_eq!(refused.code, ErrorCode::Forbidden, "{refused:?}");
    assert!(admin.get("/v1/queues/root.ml.x").status == 404);
    // Not outside it, not a sibling of its root, not its root again.
    let error = queue_admin
        .post("/v1/queues", &json!({"path": "root.ml.y"}))
        .expect_error(403);
    assert_eq!(error.field.as_deref(), Some("path"), "{error:?}");
    assert!(error.message.contains("`root.etl`"), "{error:?}");
    forbidden(
        &queue_admin.post("/v1/queues", &json!({"path": "root.etl2"})),
        "a sibling of its root",
    );
    let error = queue_admin
        .patch("/v1/queues/root.etl", &json!({"capacity": 90}))
        .expect_error(403);
    assert!(
        error.message.contains("root of this token's subtree"),
        "raising its own guarantee: {error:?}"
    );
    forbidden(
        &queue_admin.patch("/v1/queues/root.etl", &json!({"max_running": 1000})),
        "any setting of its root",
    );
    let root: api::QueueView = admin.get("/v1/queues/root.etl").expect(200);
    assert_eq!(root.capacity, 40.0);
    // Settings below its root are its own, preemption excepted.
    let updated: api::QueueView = queue_admin
        .patch("/v1/queues/root.etl.daily", &json!({"max_running": 5}))
        .expect(200);
    assert_eq!(updated.settings.max_running, Some(5));
    let error = queue_admin
        .patch("/v1/queues/root.etl.daily", &json!({"preemptable": false}))
        .expect_error(403);
    assert_eq!(error.field.as_deref(), Some("preemptable"), "{error:?}");
    forbidden(
        &queue_admin.patch("/v1/queues/root.ml", &json!({"max_running": 1})),
        "another team's queue",
    );
    // It stops, drains and starts its root and what is below; nothing else.
    for action in ["drain", "start", "stop", "start"] {
        queue_admin
            .post(&format!("/v1/queues/root.etl/{action}"), &json!({}))
            .expect_status(200);
    }
    queue_admin
        .post("/v1/queues/root.etl.daily/drain", &json!({}))
        .expect_status(200);
    queue_admin
        .post("/v1/queues/root.etl.daily/start", &json!({}))
        .expect_status(200);
    forbidden(
        &queue_admin.post("/v1/queues/root.ml/drain", &json!({})),
        "draining another team's queue",
    );
    forbidden(
        &queue_admin.post("/v1/queues/root/stop", &json!({})),
        "stopping the whole tree",
    );
    // Everything a submitter does in its queues.
    let own = queue_admin.submit(&function_job("root.etl.daily", "qa"));
    let by_bot = submitter.submit(&function_job("root.etl.daily", "qa"));
    let cancelled: api::JobView = queue_admin
        .post(&format!("/v1/jobs/{by_bot}/cancel"), &json!({}))
        .expect(200);
    assert_eq!(cancelled.state, api::JobState::Cancelled);
    assert_eq!(queue_admin.job(own).submitted_by, "etl-admin");
    let error = queue_admin
        .post("/v1/jobs", &function_job("root.ml", "qa"))
        .expect_error(403);
    assert_eq!(error.field.as_deref(), Some("queue"));
    // Deleting: below its root only.
    assert_eq!(queue_admin.delete("/v1/queues/root.etl.hourly").status, 204);
    forbidden(
        &queue_admin.delete("/v1/queues/root.etl"),
        "deleting its root",
    );
    forbidden(
        &queue_admin.delete("/v1/queues/root.ml"),
        "deleting another's",
    );
    // Submitters and readers change no queue, even in their subtree.
    forbidden(
        &submitter.post("/v1/queues", &json!({"path": "root.etl.z"})),
        "a submitter creating",
    );
    forbidden(
        &submitter.post("/v1/queues/root.etl.daily/drain", &json!({})),
        "a submitter draining",
    );
    forbidden(
        &server
            .api_as("reader-secret")
            .patch("/v1/queues/root.etl.daily", &json!({"max_running": 9})),
        "a reader updating",
    );
    // Its view of the tree: its subtree, placed under root.
    let tree: api::QueueView = queue_admin.get("/v1/queues").expect(200);
    assert_eq!(
        tree_paths(&tree),
        ["root*", "root.etl", "root.etl.daily"],
        "{tree:#?}"
    );

    // Its changes are audited as an admin's, under its name, refusals included.
    let records: Vec<serde_json::Value> = std::fs::read_to_string(&audit)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let by_queue_admin: Vec<(String, u64)> = records
        .iter()
        .filter(|r| r["caller"] == "etl-admin")
        .map(|r| {
            (
                r["action"].as_str().unwrap().to_owned(),
                r["status"].as_u64().unwrap(),
            )
        })
        .collect();
    let expected: Vec<(String, u64)> = [
        ("create_queue", 201),
        ("create_queue", 200),
        ("create_queue", 403),
        ("create_queue", 403),
        ("update_queue", 403),
        ("update_queue", 403),
        ("update_queue", 200),
        ("update_queue", 403),
        ("update_queue", 403),
        ("drain_queue", 200),
        ("start_queue", 200),
        ("stop_queue", 200),
        ("start_queue", 200),
        ("drain_queue", 200),
        ("start_queue", 200),
        ("drain_queue", 403),
        ("stop_queue", 403),
        ("delete_queue", 204),
        ("delete_queue", 403),
        ("delete_queue", 403),
    ]
    .iter()
    .map(|(action, status)| ((*action).to_owned(), *status))
    .collect();
    assert_eq!(by_queue_admin, expected);
    assert!(
        records
            .iter()
            .filter(|r| r["caller"] == "etl-admin")
            .all(|r| r["role"] == "queue-admin"),
        "{records:?}"
    );
}

#[test]
fn a_token_limited_to_some_queues_sees_only_them_placed_in_the_tree() {
    let server = BlockingTestServer::start_with(toml_settings(EVERY_ROLE));
    let admin = server.api_as("admin-secret");
    for path in ["root.etl", "root.etl.daily", "root.etl.hourly", "root.ml"] {
        admin.create_queue(json!({"path": path}));
    }
    admin.submit(&function_job("root.ml", "busy"));
    admin.submit(&function_job("root.etl.hourly", "busy"));
    let daily = server.api_as("daily-reader-secret");
    let submitter = server.api_as("etl-secret");

    // One leaf: the leaf whole, its ancestors placed, nothing beside them.
    let tree: api::QueueView = daily.get("/v1/queues").expect(200);
    assert_eq!(
        tree_paths(&tree),
        ["root*", "root.etl*", "root.etl.daily"],
        "{tree:#?}"
    );
    // An ancestor shows none of the figures of the queues the token may not read.
    assert_eq!(tree.pending, 0, "root sums every queue's jobs: {tree:#?}");
    assert_eq!(tree.counts.submitted, 0);
    assert_eq!(tree.children[0].pending, 0);
    let etl: api::QueueView = daily.get("/v1/queues/root.etl").expect(200);
    assert_eq!(tree_paths(&etl), ["root.etl*", "root.etl.daily"]);
    daily.get("/v1/queues/root.etl.daily").expect_status(200);
    // Elsewhere: refused the same whether the queue exists or not.
    for path in [
        "root.ml",
        "root.etl.hourly",
        "root.nowhere",
        "root.etl.daily.x",
    ] {
        assert_code(
            &daily.get(&format!("/v1/queues/{path}")),
            403,
            ErrorCode::Forbidden,
            path,
        );
    }

    // A subtree: whole, with everything below it.
    let tree: api::QueueView = submitter.get("/v1/queues").expect(200);
    assert_eq!(
        tree_paths(&tree),
        ["root*", "root.etl", "root.etl.daily", "root.etl.hourly"],
        "{tree:#?}"
    );
    assert_eq!(tree.children[0].pending, 1, "its own queues' figures");
    // A missing queue within it is 404, naming only queues it may read.
    let missing = submitter.get("/v1/queues/root.etl.nope").expect_error(404);
    assert!(!missing.message.contains("root.ml"), "{missing:?}");
    assert!(!missing.message.contains("root.default"), "{missing:?}");

    // Every queue: the whole tree, nothing marked.
    let tree: api::QueueView = server
        .api_as("all-reader-secret")
        .get("/v1/queues")
        .expect(200);
    assert_eq!(
        tree_paths(&tree),
        [
            "root",
            "root.default",
            "root.etl",
            "root.etl.daily",
            "root.etl.hourly",
            "root.ml"
        ]
    );
    assert_eq!(tree.pending, 2);
    // A worker reads no queue.
    assert_code(
        &server.api_as("worker-secret").get("/v1/queues"),
        403,
        ErrorCode::Forbidden,
        "a worker",
    );
}

#[test]
fn every_read_endpoint_answers_each_role_as_its_queues_allow() {
    let server = BlockingTestServer::start_with(toml_settings(EVERY_ROLE));
    let admin = server.api_as("admin-secret");
    for path in ["root.etl", "root.etl.daily", "root.ml"] {
        admin.create_queue(json!({"path": path}));
    }
    let etl_job = admin.submit(&function_job("root.etl.daily", "reads"));
    let ml_job = admin.submit(&function_job("root.ml", "reads"));
    for (name, queue) in [("etl-nightly", "root.etl.daily"), ("ml-nightly", "root.ml")] {
        admin
            .post(
                "/v1/schedules",
                &json!({"name": name, "every_ms": 3_600_000, "job": function_job(queue, "reads")}),
            )
            .expect_status(201);
    }
    let workflow = |queue: &str| -> uuid::Uuid {
        let mut node = function_job(queue, "reads");
        node.name = Some("only".into());
        let submitted: api::WorkflowSubmitted = admin
            .post("/v1/workflows", &json!({"nodes": [node]}))
            .expect(201);
        submitted.id
    };
    let (etl_flow, ml_flow) = (workflow("root.etl.daily"), workflow("root.ml"));

    let reads: Vec<(String, &str)> = vec![
        ("/v1/queues".into(), "tree"),
        ("/v1/queues/root.etl".into(), "etl"),
        ("/v1/queues/root.ml".into(), "ml"),
        ("/v1/jobs?queue=root.etl".into(), "etl"),
        ("/v1/jobs?queue=root.ml".into(), "ml"),
        ("/v1/jobs".into(), "everything"),
        (format!("/v1/jobs/{etl_job}"), "etl"),
        (format!("/v1/jobs/{ml_job}"), "ml"),
        (format!("/v1/jobs/{etl_job}/logs"), "etl"),
        (format!("/v1/jobs/{ml_job}/logs"), "ml"),
        (format!("/v1/jobs/{etl_job}/wait?timeout_ms=1"), "etl"),
        (format!("/v1/jobs/{ml_job}/wait?timeout_ms=1"), "ml"),
        ("/v1/schedules/etl-nightly".into(), "etl"),
        ("/v1/schedules/ml-nightly".into(), "ml"),
        (format!("/v1/workflows/{etl_flow}"), "etl"),
        (format!("/v1/workflows/{ml_flow}"), "ml"),
        ("/v1/workers".into(), "everything"),
        ("/v1/cluster".into(), "everything"),
        ("/metrics".into(), "everything"),
    ];
    // What each role may read: `etl` the queues of root.etl's subtree, `everything` the
    // whole cluster; `tree` is answered to all but workers (filtered).
    let roles: [(&str, &[&str]); 6] = [
        ("admin-secret", &["tree", "etl", "ml", "everything"]),
        ("queue-admin-secret", &["tree", "etl"]),
        ("etl-secret", &["tree", "etl"]),
        ("reader-secret", &["tree", "etl"]),
        ("all-reader-secret", &["tree", "etl", "ml", "everything"]),
        ("worker-secret", &[]),
    ];
    for (token, may) in roles {
        let api = server.api_as(token);
        for (path, needs) in &reads {
            let reply = api.get(path);
            let worker_reads_workers = token == "worker-secret" && path == "/v1/workers";
            if may.contains(needs) || worker_reads_workers {
                assert_eq!(reply.status, 200, "{token} GET {path}: {}", reply.body);
            } else {
                assert_code(
                    &reply,
                    403,
                    ErrorCode::Forbidden,
                    &format!("{token} GET {path}"),
                );
            }
        }
        // A listing of schedules holds only those of the token's queues.
        let schedules: Vec<api::ScheduleView> = api.get("/v1/schedules").expect(200);
        let names: Vec<&str> = schedules.iter().map(|s| s.name.as_str()).collect();
        let expected: &[&str] = match (may.contains(&"ml"), may.contains(&"etl")) {
            (true, _) => &["etl-nightly", "ml-nightly"],
            (false, true) => &["etl-nightly"],
            (false, false) => &[],
        };
        assert_eq!(names, expected, "{token}");
    }

    // A pattern naming a queue alone does not read the queues below it in a listing.
    let daily_reader = server.api_as("daily-reader-secret");
    assert_code(
        &daily_reader.get("/v1/jobs?queue=root.etl"),
        403,
        ErrorCode::Forbidden,
        "listing the parent",
    );
    let listed: api::JobList = daily_reader
        .get("/v1/jobs?queue=root.etl.daily")
        .expect(200);
    // The job, and the workflow's node.
    assert_eq!(listed.jobs.len(), 2, "{listed:?}");
    assert!(listed.jobs.iter().all(|j| j.queue == "root.etl.daily"));
    // Nor does a pattern naming the parent alone read its children's jobs or queues.
    let parent_reader = server.api_as("parent-reader-secret");
    let listed: api::JobList = parent_reader.get("/v1/jobs?queue=root.etl").expect(200);
    assert!(listed.jobs.is_empty(), "{listed:?}");
    let etl: api::QueueView = parent_reader.get("/v1/queues/root.etl").expect(200);
    assert_eq!(tree_paths(&etl), ["root.etl"], "{etl:#?}");
}
