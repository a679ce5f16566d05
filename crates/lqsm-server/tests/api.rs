//! The life of a job through the real server: submission (single, batch,
//! idempotent), a worker taking and reporting it, retries, timeouts, cancellation,
//! fencing of stale reports, lost workers, the queue API, metrics and the OpenAPI
//! document. Each test starts its own server, so they run in parallel.
#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

use lqsm_api as api;
use lqsm_testkit::{
    BlockingTestServer, ServerProcess, SimWorker, eventually, finished_attempt, function_job,
};
use serde_json::json;
use uuid::Uuid;

fn outcomes(view: &api::JobView) -> Vec<Option<api::AttemptOutcome>> {
    view.attempts.iter().map(|a| a.outcome).collect()
}

#[test]
fn submitted_job_runs_on_a_worker_and_its_result_is_kept() {
    let server = BlockingTestServer::start();
    let api = server.api();
    let mut worker = SimWorker::register(&api, "echo");
    let id = api.submit(&api::SubmitJob::function(
        "root.default",
        "echo",
        json!({"x": 42}),
    ));

    // A wait that times out answers with the job as it is.
    let early: api::JobView = api
        .get(&format!("/v1/jobs/{id}/wait?timeout_ms=100"))
        .expect(200);
    assert_eq!(early.id, id);
    assert!(
        [api::JobState::Pending, api::JobState::Scheduled].contains(&early.state),
        "{}",
        early.state
    );

    let a = worker.next_assignment();
    assert_eq!(a.job, id);
    assert_eq!(a.attempt, 1);
    assert_eq!(a.queue, "root.default");
    assert_eq!(
        a.kind,
        api::JobKind::Function {
            handler: "echo".into(),
            args: json!({"x": 42}).into()
        }
    );

    // A client waiting for the job is answered when it finishes.
    let waiter = {
        let api = api.clone();
        std::thread::spawn(move || api.get(&format!("/v1/jobs/{id}/wait?timeout_ms=10000")))
    };
    let resp = worker.succeed(&a, json!({"echoed": 42}));
    assert!(resp.refused.is_empty(), "{resp:?}");

    let waited: api::JobView = waiter.join().unwrap().expect(200);
    assert_eq!(waited.state, lqsm_api::JobState::Succeeded);
    assert_eq!(waited.result, Some(json!({"echoed": 42})));

    let view = api.job(id);
    assert_eq!(view.state, lqsm_api::JobState::Succeeded);
    assert_eq!(view.result, Some(json!({"echoed": 42})));
    assert_eq!(view.queue, "root.default");
    assert!(view.finished_at_ms.is_some());
    assert_eq!(view.attempts.len(), 1);
    assert_eq!(view.attempts[0].worker, worker.id);
    assert_eq!(view.attempts[0].token, a.token);
    assert_eq!(
        view.attempts[0].outcome,
        Some(lqsm_api::AttemptOutcome::Succeeded)
    );
}

#[test]
fn batch_answers_every_item_and_names_the_field_of_each_invalid_one() {
    let server = BlockingTestServer::start();
    let api = server.api();
    let mut jobs: Vec<api::SubmitJob> = (0..500)
        .map(|i| api::SubmitJob::function("root.default", "batch", json!({ "i": i })))
        .collect();
    jobs[3].resources = Some(api::Resources {
        cpu: Some(-1.0),
        ..api::Resources::default()
    });
    jobs[77].queue = "root.nope".into();
    jobs[250].timeout_ms = Some(0);
    jobs[499].retry = Some(api::RetrySpec {
        max_attempts: Some(0),
        ..api::RetrySpec::default()
    });
    let invalid = [
        (3, "jobs[3].resources.cpu"),
        (77, "jobs[77].queue"),
        (250, "jobs[250].timeout_ms"),
        (499, "jobs[499].retry"),
    ];

    let result: api::BatchResult = api
        .post("/v1/jobs/batch", &api::SubmitBatch { jobs })
        .expect(200);

    assert_eq!(result.results.len(), 500);
    assert_eq!(result.accepted, 496);
    for (i, field) in invalid {
        let item = &result.results[i];
        assert_eq!(item.id, None, "item {i}");
        let error = item.error.as_ref().unwrap_or_else(|| panic!("item {i}"));
        assert_eq!(error.field.as_deref(), Some(field), "item {i}: {error:?}");
        assert!(!error.message.is_empty());
    }
    let mut ids = Vec::new();
    for (i, item) in result.results.iter().enumerate() {
        if invalid.iter().any(|(j, _)| *j == i) {
            continue;
        }
        assert!(item.error.is_none(), "item {i}: {item:?}");
        assert!(item.created, "item {i}");
        ids.push(item.id.unwrap());
    }
    let distinct: std::collections::HashSet<Uuid> = ids.iter().copied().collect();
    assert_eq!(distinct.len(), 496);
    // Accepted items are real jobs with their own arguments.
    let view = api.job(result.results[4].id.unwrap());
    assert_eq!(view.state, lqsm_api::JobState::Pending);
    assert_eq!(
        view.kind,
        api::JobKind::Function {
            handler: "batch".into(),
            args: json!({"i": 4}).into()
        }
    );
    let unknown = &result.results[77].error.as_ref().unwrap();
    assert_eq!(unknown.code, lqsm_api::ErrorCode::NotFound);
    assert!(
        unknown.message.contains("root.default"),
        "the error names the known queues: {}",
        unknown.message
    );
}

#[test]
fn same_idempotency_key_in_the_same_queue_is_the_same_job() {
    let server = BlockingTestServer::start();
    let api = server.api();
    api.create_queue(json!({"path": "root.other"}));
    let mut job = function_job("root.default", "idem");
    job.idempotency_key = Some("order-17".into());

    let first: api::Submitted = api.post("/v1/jobs", &job).expect(201);
    assert!(first.created);
    let again: api::Submitted = api.post("/v1/jobs", &job).expect(200);
    assert_eq!(again.id, first.id);
    assert!(!again.created);

    // In a batch too.
    let batch: api::BatchResult = api
        .post(
            "/v1/jobs/batch",
            &api::SubmitBatch {
                jobs: vec![job.clone()],
            },
        )
        .expect(200);
    assert_eq!(batch.results[0].id, Some(first.id));
    assert!(!batch.results[0].created);

    // The key is per queue.
    job.queue = "root.other".into();
    let elsewhere: api::Submitted = api.post("/v1/jobs", &job).expect(201);
    assert_ne!(elsewhere.id, first.id);
    assert!(elsewhere.created);
}

#[test]
fn a_client_chosen_id_sent_again_names_the_same_job_and_a_different_job_under_it_is_refused() {
    let server = BlockingTestServer::start();
    let api = server.api();
    let id = Uuid::now_v7();
    let mut job = function_job("root.default", "client-id");
    job.id = Some(id);

    let first: api::Submitted = api.post("/v1/jobs", &job).expect(201);
    assert_eq!((first.id, first.created), (id, true));
    // A retry after a lost answer, alone or in a batch: the same job.
    let again: api::Submitted = api.post("/v1/jobs", &job).expect(200);
    assert_eq!((again.id, again.created), (id, false));
    let batch: api::BatchResult = api
        .post(
            "/v1/jobs/batch",
            &api::SubmitBatch {
                jobs: vec![job.clone()],
            },
        )
        .expect(200);
    assert_eq!(batch.results[0].id, Some(id));
    assert!(!batch.results[0].created);
    assert_eq!(api.job(id).id, id);

    // Another submission under the same id: a conflict naming `id`.
    let mut other = job.clone();
    other.priority = Some(9);
    let error = api.post("/v1/jobs", &other).expect_error(409);
    assert_eq!(error.field.as_deref(), Some("id"), "{error:?}");
    assert!(
        error.message.contains("already in use"),
        "{}",
        error.message
    );

    // Only time-ordered ids: a UUIDv4 is refused, naming the field.
    let mut v4 = function_job("root.default", "client-id");
    v4.id = Some(Uuid::from_u128(0x4d2f_0c1e_8a3b_4c5d_9e6f_7a8b_9c0d_1e2f));
    let error = api.post("/v1/jobs", &v4).expect_error(400);
    assert_eq!(error.field.as_deref(), Some("id"), "{error:?}");
    assert!(error.message.contains("UUIDv7"), "{}", error.message);
}

#[test]
fn a_finished_job_is_run_again_as_a_new_linked_job_and_never_reopened() {
    let server = BlockingTestServer::start();
    let api = server.api();
    let mut job = api::SubmitJob::function("root.default", "rerun", json!({"n": 7}));
    job.priority = Some(4);
    job.tags = vec!["nightly".into()];
    job.idempotency_key = Some("once".into());
    let original = api.submit(&job);

    // Not finished yet: refused, naming the job.
    let error = api
        .post(&format!("/v1/jobs/{original}/retry"), &json!({}))
        .expect_error(409);
    assert_eq!(error.field.as_deref(), Some("id"), "{error:?}");

    let mut worker = SimWorker::register(&api, "rerun");
    let a = worker.next_assignment();
    worker.poll(
        &[finished_attempt(
            &a,
            api::AttemptResult::Failed {
                exit_code: None,
                message: "bad input".into(),
                retry: None,
                memory_exceeded: false,
            },
        )],
        0,
    );
    let failed = api.wait_for_state(original, api::JobState::Failed);

    let again: api::Submitted = api
        .post(&format!("/v1/jobs/{original}/retry"), &json!({}))
        .expect(201);
    assert_ne!(again.id, original);
    let rerun = api.job(again.id);
    assert_eq!(rerun.retry_of, Some(original));
    assert!(!rerun.state.is_terminal(), "{:?}", rerun.state);
    assert_eq!(rerun.priority, 4);
    assert_eq!(rerun.tags, vec!["nightly".to_owned()]);
    assert_eq!(rerun.kind, job.kind);
    let b = worker.next_assignment();
    assert_eq!(b.job, again.id, "the new job runs, with the same arguments");
    assert_eq!(b.kind, job.kind);
    // The original stays as it ended.
    assert_eq!(api.job(original), failed);
    // An unknown job: 404 naming the id.
    let error = api
        .post(&format!("/v1/jobs/{}/retry", Uuid::now_v7()), &json!({}))
        .expect_error(404);
    assert_eq!(error.field.as_deref(), Some("id"), "{error:?}");
}

#[test]
fn failed_attempt_is_retried_after_its_backoff_then_succeeds() {
    let server = BlockingTestServer::start();
    let api = server.api();
    let mut worker = SimWorker::register(&api, "flaky");
    let mut job = function_job("root.default", "flaky");
    job.retry = Some(api::RetrySpec {
        max_attempts: Some(2),
        backoff_base_ms: Some(200),
        jitter: Some(0.0),
        ..api::RetrySpec::default()
    });
    let id = api.submit(&job);

    let first = worker.next_assignment();
    assert_eq!((first.job, first.attempt), (id, 1));
    let resp = worker.poll(
        &[finished_attempt(
            &first,
            api::AttemptResult::Failed {
                exit_code: None,
                message: "disk full".into(),
                retry: None,
                memory_exceeded: false,
            },
        )],
        0,
    );
    assert!(resp.refused.is_empty(), "{resp:?}");
    assert!(
        resp.assignments.is_empty(),
        "no retry before the backoff: {resp:?}"
    );

    let between = api.job(id);
    assert_eq!(between.state, lqsm_api::JobState::Pending);
    assert_eq!(between.attempts.len(), 1);
    assert_eq!(
        between.attempts[0].outcome,
        Some(lqsm_api::AttemptOutcome::Failed)
    );
    assert_eq!(between.attempts[0].message.as_deref(), Some("disk full"));

    let second = worker.next_assignment();
    assert_eq!((second.job, second.attempt), (id, 2));
    assert_ne!(second.token, first.token);
    let view = api.job(id);
    let failed_at = view.attempts[0].finished_at_ms.unwrap();
    let retried_at = view.attempts[1].scheduled_at_ms;
    assert!(
        retried_at >= failed_at + 200,
        "retried {} ms after the failure, backoff is 200 ms",
        retried_at - failed_at
    );

    worker.succeed(&second, json!("ok"));
    let done = api.job(id);
    assert_eq!(done.state, lqsm_api::JobState::Succeeded);
    assert_eq!(
        outcomes(&done),
        [
            Some(api::AttemptOutcome::Failed),
            Some(api::AttemptOutcome::Succeeded)
        ]
    );
}

#[test]
fn attempt_past_its_timeout_is_killed_and_the_job_fails() {
    let server = BlockingTestServer::start();
    let api = server.api();
    let mut worker = SimWorker::register(&api, "slow");
    let mut job = function_job("root.default", "slow");
    job.timeout_ms = Some(300);
    let id = api.submit(&job);

    let a = worker.next_assignment();
    assert_eq!(a.timeout_ms, Some(300));
    // The worker keeps saying it runs the attempt, and never reports it.
    let kill = eventually("a kill order", || {
        let resp = worker.poll(&[], 100);
        resp.kill.into_iter().next()
    });
    assert_eq!(kill.job, id);
    assert_eq!(kill.token, a.token);
    assert_eq!(kill.reason, lqsm_api::KillReason::TimedOut);

    let view = api.wait_for_state(id, api::JobState::Failed);
    assert_eq!(view.max_attempts, 1);
    assert_eq!(view.attempts.len(), 1);
    assert_eq!(
        view.attempts[0].outcome,
        Some(lqsm_api::AttemptOutcome::TimedOut)
    );
    let ran = view.attempts[0].finished_at_ms.unwrap() - view.attempts[0].scheduled_at_ms;
    assert!(ran >= 300, "killed after {ran} ms, timeout is 300 ms");
    assert!(view.reason.is_some());
}

#[test]
fn cancelling_a_pending_job_cancels_it_once() {
    let server = BlockingTestServer::start();
    let api = server.api();
    // No worker runs this handler: the job stays pending.
    let id = api.submit(&function_job("root.default", "nobody"));
    assert_eq!(api.job(id).state, lqsm_api::JobState::Pending);

    let view: api::JobView = api
        .post(&format!("/v1/jobs/{id}/cancel"), &json!({}))
        .expect(200);
    assert_eq!(view.state, lqsm_api::JobState::Cancelled);
    assert_eq!(view.reason.as_deref(), Some("cancelled by a client"));
    assert!(view.attempts.is_empty());
    assert_eq!(api.job(id).state, lqsm_api::JobState::Cancelled);

    let again = api
        .post(&format!("/v1/jobs/{id}/cancel"), &json!({}))
        .expect_error(409);
    assert_eq!(again.code, lqsm_api::ErrorCode::Conflict);
}

#[test]
fn cancelling_a_running_job_orders_its_worker_to_kill_it() {
    let server = BlockingTestServer::start();
    let api = server.api();
    let mut worker = SimWorker::register(&api, "long");
    let id = api.submit(&function_job("root.default", "long"));
    let a = worker.next_assignment();
    worker.poll(&[], 0);
    assert_eq!(api.job(id).state, lqsm_api::JobState::Running);

    let view: api::JobView = api
        .post(&format!("/v1/jobs/{id}/cancel"), &json!({}))
        .expect(200);
    assert_eq!(view.state, lqsm_api::JobState::Cancelled);
    assert_eq!(
        view.attempts[0].outcome,
        Some(lqsm_api::AttemptOutcome::Cancelled)
    );

    let resp = worker.poll(&[], 0);
    let first = resp
        .kill
        .iter()
        .find(|k| k.job == id)
        .unwrap_or_else(|| panic!("no kill order for the cancelled job: {resp:?}"));
    assert_eq!(first.token, a.token);
    assert_eq!(first.reason, lqsm_api::KillReason::Cancelled);

    // A report that crosses the cancel is refused and changes nothing.
    let late = worker.poll(&[finished_attempt(&a, api::AttemptResult::TimedOut)], 0);
    assert_eq!(late.refused.len(), 1, "{late:?}");
    assert_eq!(
        late.refused[0].reason,
        lqsm_api::RefusalReason::StaleAttempt
    );
    assert_eq!(api.job(id).state, lqsm_api::JobState::Cancelled);
}

#[test]
fn report_with_a_stale_token_is_refused() {
    let server = BlockingTestServer::start();
    let api = server.api();
    let mut worker = SimWorker::register(&api, "fenced");
    let id = api.submit(&function_job("root.default", "fenced"));
    let a = worker.next_assignment();

    let forged = api::Assignment {
        token: a.token + 1000,
        ..a.clone()
    };
    let resp = worker.poll(
        &[finished_attempt(
            &forged,
            api::AttemptResult::Succeeded {
                result: None,
                exit_code: None,
            },
        )],
        0,
    );
    assert_eq!(
        resp.refused,
        [api::RefusedReport {
            job: id,
            token: a.token + 1000,
            reason: api::RefusalReason::StaleAttempt
        }]
    );
    let unknown = Uuid::now_v7();
    let resp = worker.poll(
        &[api::FinishedAttempt {
            job: unknown,
            token: 1,
            result: api::AttemptResult::TimedOut,
            logs: None,
            usage: None,
            started_at_ms: None,
        }],
        0,
    );
    assert_eq!(resp.refused.len(), 1);
    assert_eq!(resp.refused[0].reason, lqsm_api::RefusalReason::UnknownJob);
    // The real attempt is untouched and can still report.
    assert_eq!(api.job(id).state, lqsm_api::JobState::Running);
    let resp = worker.succeed(&a, json!(1));
    assert!(resp.refused.is_empty(), "{resp:?}");
    let view = api.job(id);
    assert_eq!(view.state, lqsm_api::JobState::Succeeded);
    assert_eq!(view.attempts.len(), 1);
}

#[test]
fn lost_worker_attempt_is_requeued_once_and_its_late_report_refused() {
    // Short enough to wait for, long enough that the second worker, polling every
    // 300 ms, is never itself late on a loaded machine (2 s left it one stall away).
    let server = BlockingTestServer::start_with(|c| c.scheduler.heartbeat_timeout_ms = 4_000);
    let api = server.api();
    let mut first = SimWorker::register(&api, "lossy");
    let mut job = function_job("root.default", "lossy");
    job.retry = Some(api::RetrySpec {
        max_attempts: Some(3),
        backoff_base_ms: Some(0),
        jitter: Some(0.0),
        ..api::RetrySpec::default()
    });
    let id = api.submit(&job);
    let taken = first.next_assignment();
    assert_eq!(taken.job, id);

    // The first worker goes silent; a second one keeps polling.
    let mut second = SimWorker::register(&api, "lossy");
    second.poll_wait_ms = 300; // Well inside its own heartbeat timeout.
    let again = second.next_assignment();
    assert_eq!(again.job, id);
    assert_eq!(again.attempt, 2);
    let workers: Vec<api::WorkerView> = api.get("/v1/workers").expect(200);
    let lost = workers.iter().find(|w| w.id == first.id).unwrap();
    assert_eq!(lost.state, lqsm_api::WorkerState::Lost);

    // The first worker comes back with its report: told to register again...
    let report = finished_attempt(
        &taken,
        api::AttemptResult::Succeeded {
            result: Some(json!("late")),
            exit_code: None,
        },
    );
    let err = first
        .poll_raw(std::slice::from_ref(&report), 0)
        .expect_error(409);
    assert_eq!(err.code, lqsm_api::ErrorCode::RegisterAgain);
    // ... and once registered, its report is refused.
    first.register_again();
    first.running.clear();
    let resp = first.poll(&[report], 0);
    assert_eq!(resp.refused.len(), 1, "{resp:?}");
    assert_eq!(
        resp.refused[0].reason,
        lqsm_api::RefusalReason::StaleAttempt
    );
    assert_eq!(resp.refused[0].token, taken.token);

    second.succeed(&again, json!("on time"));
    let view = api.job(id);
    assert_eq!(view.state, lqsm_api::JobState::Succeeded);
    assert_eq!(view.result, Some(json!("on time")));
    assert_eq!(
        outcomes(&view),
        [
            Some(api::AttemptOutcome::Lost),
            Some(api::AttemptOutcome::Succeeded)
        ]
    );
    // The first worker polled after the attempt was scheduled: it was lost no sooner
    // than the heartbeat timeout after that.
    let silent = view.attempts[0].finished_at_ms.unwrap() - view.attempts[0].scheduled_at_ms;
    assert!(
        silent >= 4_000,
        "lost after {silent} ms, heartbeat timeout is 4,000 ms"
    );
}

/// Arguments well over `limits.inline_payload_bytes` (1 KiB by default), so the server
/// keeps the job's payload in its store rather than in memory.
fn big_args() -> serde_json::Value {
    json!({"blob": "x".repeat(4000), "n": 7})
}

#[test]
fn large_payload_reaches_the_worker_whole() {
    let server = BlockingTestServer::start();
    let api = server.api();
    let mut worker = SimWorker::register(&api, "big");
    let kind = api::JobKind::Function {
        handler: "big".into(),
        args: big_args().into(),
    };
    let id = api.submit(&api::SubmitJob::new("root.default", kind.clone()));
    assert_eq!(api.job(id).kind, kind);

    let a = worker.next_assignment();
    assert_eq!(a.job, id);
    assert_eq!(a.kind, kind);
    worker.succeed(&a, json!("ok"));
    let done: api::JobView = api
        .get(&format!("/v1/jobs/{id}/wait?timeout_ms=5000"))
        .expect(200);
    assert_eq!(done.state, lqsm_api::JobState::Succeeded);
    assert_eq!(done.kind, kind);

    // A large command, and a large job in a batch, too.
    let command = api::JobKind::Command {
        argv: vec!["echo".into(), "y".repeat(3000)],
        env: Default::default(),
        cwd: None,
    };
    let batch: api::BatchResult = api
        .post(
            "/v1/jobs/batch",
            &api::SubmitBatch {
                jobs: vec![api::SubmitJob::new("root.default", command.clone())],
            },
        )
        .expect(200);
    let cid = batch.results[0].id.unwrap();
    assert_eq!(api.job(cid).kind, command);
    let cancelled: api::JobView = api
        .post(&format!("/v1/jobs/{cid}/cancel"), &json!({}))
        .expect(200);
    assert_eq!(cancelled.kind, command);
}

#[test]
fn job_listing_shows_large_payloads_whole() {
    let server = BlockingTestServer::start();
    let api = server.api();
    let kind = api::JobKind::Function {
        handler: "listed".into(),
        args: big_args().into(),
    };
    let id = api.submit(&api::SubmitJob::new("root.default", kind.clone()));
    assert_eq!(api.job(id).kind, kind);

    let list: api::JobList = api.get("/v1/jobs?queue=root.default").expect(200);
    let listed = list.jobs.iter().find(|j| j.id == id).unwrap();
    if listed.kind != kind {
        let shown = serde_json::to_string(&listed.kind).unwrap();
        panic!(
            "GET /v1/jobs shows the job with a large payload as {} instead of its kind \
             (which GET /v1/jobs/{{id}} shows)",
            &shown[..shown.len().min(200)]
        );
    }
}

fn child<'a>(view: &'a api::QueueView, path: &str) -> &'a api::QueueView {
    view.children
        .iter()
        .find(|c| c.path == path)
        .unwrap_or_else(|| panic!("{path} is not a child of {}", view.path))
}

#[test]
fn a_queue_batch_creates_in_order_names_each_bad_field_and_can_be_sent_twice() {
    let server = BlockingTestServer::start();
    let api = server.api();
    api.patch("/v1/queues/root.default", &json!({"capacity": 50}))
        .expect_status(200);
    let batch = json!({"queues": [
        {"path": "root.teams", "capacity": 40},
        {"path": "root.teams.a", "capacity": 50, "max_running": 3},
        {"path": "root.teams.b", "capacity": 150},
        {"path": "root.teams.c", "capcity": 10},
        {"capacity": 10},
        {"path": "root.nowhere.x"},
        {"path": "root.teams.d", "capacity": 50},
    ]});
    let first: api::QueueBatchResult = api.post("/v1/queues/batch", &batch).expect(200);
    let created: Vec<bool> = first.results.iter().map(|r| r.created).collect();
    assert_eq!(
        created,
        [true, true, false, false, false, false, true],
        "{first:#?}"
    );
    assert_eq!(first.created, 3);
    let field = |i: usize| {
        first.results[i]
            .error
            .as_ref()
            .and_then(|e| e.field.clone())
            .unwrap_or_default()
    };
    assert_eq!(field(2), "queues[2].capacity", "{first:#?}");
    assert_eq!(field(3), "queues[3].capcity", "{first:#?}");
    assert_eq!(field(4), "queues[4].path", "{first:#?}");
    assert!(
        first.results[5]
            .error
            .as_ref()
            .is_some_and(|e| e.message.contains("root.nowhere")),
        "{first:#?}"
    );
    let a: api::QueueView = api.get("/v1/queues/root.teams.a").expect(200);
    assert_eq!(a.settings.max_running, Some(3), "{a:#?}");

    // The same batch again: what exists with these settings is left alone.
    let again: api::QueueBatchResult = api.post("/v1/queues/batch", &batch).expect(200);
    assert_eq!(again.created, 0, "{again:#?}");
    for i in [0, 1, 6] {
        assert!(
            again.results[i].error.is_none() && !again.results[i].created,
            "{again:#?}"
        );
    }
    // Same path, other settings: refused, the stored queue kept.
    let changed: api::QueueBatchResult = api
        .post(
            "/v1/queues/batch",
            &json!({"queues": [{"path": "root.teams.a", "capacity": 20}]}),
        )
        .expect(200);
    assert!(changed.results[0].error.is_some(), "{changed:#?}");
    let a: api::QueueView = api.get("/v1/queues/root.teams.a").expect(200);
    assert_eq!(a.capacity, 50.0, "{a:#?}");

    let not_a_list = api
        .post("/v1/queues/batch", &json!({"queues": {"path": "root.x"}}))
        .expect_error(400);
    assert_eq!(
        not_a_list.field.as_deref(),
        Some("queues"),
        "{not_a_list:?}"
    );
}

#[test]
fn queues_are_created_listed_updated_stopped_started_drained_and_deleted() {
    let server = BlockingTestServer::start();
    let api = server.api();

    // A fresh server's root.default has no guarantee, only the whole cluster lent.
    let default: api::QueueView = api.get("/v1/queues/root.default").expect(200);
    assert_eq!((default.capacity, default.max_capacity), (0.0, 100.0));
    // Children of root may not promise more than 100% between them.
    api.patch("/v1/queues/root.default", &json!({"capacity": 80}))
        .expect::<api::QueueView>(200);
    let err = api
        .post("/v1/queues", &json!({"path": "root.etl", "capacity": 30}))
        .expect_error(400);
    assert_eq!(err.field.as_deref(), Some("capacity"));
    assert!(err.message.contains("110%"), "{}", err.message);

    let default: api::QueueView = api
        .patch("/v1/queues/root.default", &json!({"capacity": 70}))
        .expect(200);
    assert_eq!(default.capacity, 70.0);
    let etl = api.create_queue(json!({"path": "root.etl", "capacity": 30}));
    assert_eq!(etl.path, "root.etl");
    assert_eq!(etl.state, lqsm_api::QueueState::Running);
    assert_eq!(etl.capacity, 30.0);
    let daily = api.create_queue(json!({"path": "root.etl.daily", "capacity": 100}));
    assert_eq!(daily.path, "root.etl.daily");
    let dup = api
        .post("/v1/queues", &json!({"path": "root.etl"}))
        .expect_error(409);
    assert_eq!(dup.field.as_deref(), Some("path"));

    let tree: api::QueueView = api.get("/v1/queues").expect(200);
    assert_eq!(tree.path, "root");
    assert_eq!(child(&tree, "root.default").capacity, 70.0);
    let etl = child(&tree, "root.etl");
    assert_eq!(child(etl, "root.etl.daily").capacity, 100.0);

    let got: api::QueueView = api.get("/v1/queues/root.etl").expect(200);
    assert_eq!(got.capacity, 30.0);
    assert_eq!(got.children.len(), 1);

    // An update changes what it names and keeps the rest.
    let updated: api::QueueView = api
        .patch(
            "/v1/queues/root.etl",
            &json!({"max_capacity": 50, "weight": 3}),
        )
        .expect(200);
    assert_eq!(updated.capacity, 30.0);
    assert_eq!(updated.max_capacity, 50.0);
    assert_eq!(updated.settings.weight, Some(3));
    // A limit of 0 is no limit, on the way in and on the way out.
    let unlimited: api::QueueView = api
        .patch(
            "/v1/queues/root.etl",
            &json!({"max_running": 0, "max_pending": 0}),
        )
        .expect(200);
    assert_eq!(unlimited.settings.max_running, Some(0));
    assert_eq!(unlimited.settings.max_pending, Some(0));

    // Jobs go to leaves only.
    let not_leaf = api
        .post("/v1/jobs", &function_job("root.etl", "q"))
        .expect_error(400);
    assert_eq!(not_leaf.field.as_deref(), Some("queue"));

    let leaf = "root.etl.daily";
    let stopped: api::QueueView = api
        .post(&format!("/v1/queues/{leaf}/stop"), &json!({}))
        .expect(200);
    assert_eq!(stopped.state, lqsm_api::QueueState::Stopped);
    let refused = api
        .post("/v1/jobs", &function_job(leaf, "q"))
        .expect_error(409);
    assert_eq!(refused.code, lqsm_api::ErrorCode::NotAccepting);
    assert_eq!(refused.field.as_deref(), Some("queue"));

    let started: api::QueueView = api
        .post(&format!("/v1/queues/{leaf}/start"), &json!({}))
        .expect(200);
    assert_eq!(started.state, lqsm_api::QueueState::Running);
    let held = api.submit(&function_job(leaf, "q"));

    let draining: api::QueueView = api
        .post(&format!("/v1/queues/{leaf}/drain"), &json!({}))
        .expect(200);
    assert_eq!(draining.state, lqsm_api::QueueState::Draining);
    let refused = api
        .post("/v1/jobs", &function_job(leaf, "q"))
        .expect_error(409);
    assert_eq!(refused.code, lqsm_api::ErrorCode::NotAccepting);
    assert_eq!(api.job(held).state, lqsm_api::JobState::Pending);

    // Deleting a queue that holds jobs needs force, which cancels them.
    let err = api.delete(&format!("/v1/queues/{leaf}")).expect_error(409);
    assert_eq!(err.code, lqsm_api::ErrorCode::Conflict);
    assert!(err.message.contains("force"), "{}", err.message);
    api.delete(&format!("/v1/queues/{leaf}?force=true"))
        .expect_status(204);
    let cancelled = api.job(held);
    assert_eq!(cancelled.state, lqsm_api::JobState::Cancelled);
    assert!(
        cancelled
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("root.etl.daily") && r.contains("deleted")),
        "{:?}",
        cancelled.reason
    );
    let gone = api.get(&format!("/v1/queues/{leaf}")).expect_error(404);
    assert!(gone.message.contains("known:"), "{}", gone.message);
    // An empty queue goes without force.
    api.delete("/v1/queues/root.etl").expect_status(204);
    let tree: api::QueueView = api.get("/v1/queues").expect(200);
    assert!(tree.children.iter().all(|c| c.path != "root.etl"));
    api.delete("/v1/queues/root").expect_error(400);
}

#[test]
fn metrics_count_submissions() {
    // A process of its own: the metrics recorder is one per process.
    let server = ServerProcess::start();
    let api = server.api();
    for _ in 0..3 {
        api.submit(&function_job("root.default", "metered"));
    }
    let metrics = api.get("/metrics");
    metrics.expect_status(200);
    let line = metrics
        .body
        .lines()
        .find(|l| l.starts_with("lqsm_jobs_submitted_total{queue=\"root.default\"}"))
        .unwrap_or_else(|| panic!("no submission counter in:\n{}", metrics.body));
    assert_eq!(line.rsplit(' ').next(), Some("3"), "{line}");
    // This server leads, at the epoch its lease gave it.
    let gauge = |name: &str| {
        metrics
            .body
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no gauge {name} in:\n{}", metrics.body))
    };
    assert_eq!(gauge("lqsm_leader"), 1.0);
    let cluster: api::ClusterSummary = api.get("/v1/cluster").expect(200);
    let store = cluster.store.expect("the store and its writer");
    assert_eq!(gauge("lqsm_store_epoch"), store.epoch as f64);
    assert_eq!(store.backend, "embedded");
    // Named, by default, after its host and port.
    assert!(
        store
            .leader
            .ends_with(&format!(":{}", server.addr().port())),
        "{}",
        store.leader
    );
    assert!(store.epoch >= 1);
    assert!(store.lease_expires_at_ms > lqsm_api::epoch_ms());
}

#[test]
fn openapi_document_lists_the_routes() {
    let server = BlockingTestServer::start();
    let api = server.api();
    let reply = api
        .try_get("/v1/openapi.json")
        .unwrap_or_else(|e| panic!("GET /v1/openapi.json got no answer: {e}"));
    let doc: serde_json::Value = reply.expect(200);
    let paths = doc["paths"].as_object().expect("paths is an object");
    for path in [
        "/v1/jobs",
        "/v1/jobs/batch",
        "/v1/jobs/{id}",
        "/v1/queues",
        "/v1/workers/{id}/poll",
    ] {
        assert!(paths.contains_key(path), "{path} is not in the document");
    }
    assert_eq!(api.get("/healthz").body, "ok");
}

/// Regression: an empty answer used to carry the latest answer number, so a worker
/// that read it before a larger answer with assignments acknowledged that answer too
/// early, and the server counted its attempts as lost.
#[test]
fn only_answers_with_assignments_are_numbered_and_an_unseen_one_loses_nothing() {
    let server = BlockingTestServer::start();
    let api = server.api();
    let mut worker = SimWorker::register(&api, "numbered");
    let empty = worker.poll(&[], 0);
    assert_eq!((empty.seq, empty.assignments.len()), (0, 0));
    let first = api.submit(&function_job("root.default", "numbered"));
    let carrying = worker.poll(&[], 2000);
    assert_eq!(carrying.assignments.len(), 1);
    assert_eq!(carrying.assignments[0].job, first);
    assert!(carrying.seq >= 1);
    let after = worker.poll(&[], 0);
    assert_eq!(after.seq, 0, "an empty answer has no number");
    // A poll that acknowledges less than the carrying answer, and does not list its
    // attempt, loses nothing.
    let req = api::PollRequest {
        registration: None,
        running: Vec::new(),
        finished: Vec::new(),
        wait_ms: 0,
        ack: Some(carrying.seq - 1),
        ending: Vec::new(),
    };
    api.post(&format!("/v1/workers/{}/poll", worker.id), &req)
        .expect::<api::PollResponse>(200);
    let job: api::JobView = api.get(&format!("/v1/jobs/{first}")).expect(200);
    assert_ne!(job.state, api::JobState::Failed, "{job:?}");
    assert_eq!(job.attempts.len(), 1);
}

#[test]
fn function_args_reach_the_worker_and_the_job_view_as_the_submitter_wrote_them() {
    // Keys out of order and a number spelled `1.50`: a server that parsed the args into
    // a tree and wrote them out again would sort the keys and respell the number.
    let server = BlockingTestServer::start();
    let api = server.api();
    let mut worker = SimWorker::register(&api, "verbatim");
    let args = r#"{"z":1,"a":[1.50,"x"]}"#;
    let body = format!(
        r#"{{"queue":"root.default","kind":{{"type":"function","handler":"verbatim","args":{args}}}}}"#
    );
    let submitted: api::Submitted = api.raw("POST", "/v1/jobs", body).expect(201);
    let a = worker.next_assignment();
    let api::JobKind::Function { args: sent, .. } = &a.kind else {
        panic!("a function job: {a:?}");
    };
    assert_eq!(sent.as_str(), args);
    let view = api.job(submitted.id);
    let api::JobKind::Function { args: shown, .. } = &view.kind else {
        panic!("a function job: {view:?}");
    };
    assert_eq!(shown.as_str(), args);
}

/// Protocol 6: a poll names the registration it was sent for. One sent before the
/// worker registered again can reach the server after it, listing what ran before:
/// it is refused, naming `registration`, and nothing in it is taken — not its
/// heartbeat, not its reports, not the absence of an attempt from its list.
#[test]
fn a_poll_sent_for_an_earlier_registration_is_refused_and_changes_nothing() {
    let server = BlockingTestServer::start();
    let api = server.api();
    let mut worker = SimWorker::register(&api, "numbered");
    let first = worker
        .registration_number
        .expect("the answer carries a number");
    let id = api.submit(&function_job("root.default", "numbered"));
    let taken = worker.next_assignment();
    assert_eq!(taken.job, id);

    worker.register_again();
    let latest = worker.registration_number.expect("a new number");
    assert!(latest > first);

    // The late poll lists nothing running and reports the attempt done.
    let report = finished_attempt(
        &taken,
        api::AttemptResult::Succeeded {
            result: Some(json!("from before")),
            exit_code: None,
        },
    );
    let late = api::PollRequest {
        running: Vec::new(),
        finished: vec![report],
        wait_ms: 0,
        ack: Some(0),
        ending: Vec::new(),
        registration: Some(first),
    };
    let err = api
        .post(&format!("/v1/workers/{}/poll", worker.id), &late)
        .expect_error(409);
    assert_eq!(err.code, lqsm_api::ErrorCode::StaleRegistration);
    assert_eq!(err.field.as_deref(), Some("registration"));
    let view = api.job(id);
    assert_eq!(view.state, lqsm_api::JobState::Scheduled, "{view:?}");
    assert_eq!(view.attempts.len(), 1, "the attempt was not counted lost");

    // The worker's own poll under its latest number goes on as usual, as does a
    // poll without a number (a worker before protocol 6).
    let resp = worker.poll(&[], 0);
    assert!(resp.refused.is_empty(), "{resp:?}");
    worker.registration_number = None;
    worker.succeed(&taken, json!("now"));
    let view = api.job(id);
    assert_eq!(view.state, lqsm_api::JobState::Succeeded);
    assert_eq!(view.result, Some(json!("now")));
}

/// `priority_preemption` is a leaf's setting: set and shown through the API, refused
/// on a queue with children, naming the field.
#[test]
fn priority_preemption_is_a_leaf_setting_of_the_api() {
    let server = BlockingTestServer::start();
    let api = server.api();
    let view: api::QueueView = api
        .post(
            "/v1/queues",
            &json!({"path": "root.urgent", "priority_preemption": true}),
        )
        .expect(201);
    assert_eq!(view.settings.priority_preemption, Some(true));
    let view: api::QueueView = api.get("/v1/queues/root.default").expect(200);
    assert_eq!(view.settings.priority_preemption, Some(false));

    api.post("/v1/queues", &json!({"path": "root.team"}))
        .expect::<api::QueueView>(201);
    api.post("/v1/queues", &json!({"path": "root.team.a"}))
        .expect::<api::QueueView>(201);
    let err = api
        .patch(
            "/v1/queues/root.team",
            &json!({"priority_preemption": true}),
        )
        .expect_error(400);
    assert_eq!(err.field.as_deref(), Some("priority_preemption"), "{err:?}");
    let err = api
        .post("/v1/queues", &json!({"path": "root.urgent.sub"}))
        .expect_error(400);
    assert_eq!(err.field.as_deref(), Some("priority_preemption"), "{err:?}");
}

/// A leaf's fair sharing through the API: set with the queue, its users shown in the
/// queue's view, the job the fairness key picks handed out first, bad settings refused
/// naming the field.
#[test]
fn measured_usage_right_sizes_requests_and_an_attempt_killed_for_memory_runs_again_with_more() {
    let server = BlockingTestServer::start();
    let api = server.api();
    let view: api::QueueView = api
        .post(
            "/v1/queues",
            &json!({
                "path": "root.sized",
                "capacity": 0,
                "defaults": {"function_resources": {"cpu": 1, "memory_mib": 400}},
                "auto_resources": {"min_samples": 3, "max": {"cpu": 2, "memory_mib": 1000}},
            }),
        )
        .expect(201);
    let auto = view.settings.auto_resources.as_ref().unwrap();
    assert_eq!((auto.margin, auto.min_samples), (Some(1.2), Some(3)));
    let mut worker = SimWorker::register(&api, "etl.load");
    let measured = |a: &api::Assignment, memory: u64| api::FinishedAttempt {
        usage: Some(api::AttemptUsage {
            peak_memory_mib: memory,
            cpu_ms: 10,
        }),
        ..finished_attempt(
            a,
            api::AttemptResult::Succeeded {
                result: None,
                exit_code: None,
            },
        )
    };
    for memory in [90, 100, 110] {
        let id = api.submit(&api::SubmitJob::function(
            "root.sized",
            "etl.load",
            json!(null),
        ));
        let job: api::JobView = api.get(&format!("/v1/jobs/{id}")).expect(200);
        assert_eq!(
            job.resources.memory_mib, 400,
            "before 3 attempts: the default"
        );
        let a = worker.next_assignment();
        worker.poll(&[measured(&a, memory)], 0);
    }
    let usage: api::QueueUsage = api.get("/v1/queues/root.sized/usage").expect(200);
    assert!(usage.auto_resources);
    assert_eq!(usage.names.len(), 1, "{usage:?}");
    let load = &usage.names[0];
    assert_eq!((load.name.as_str(), load.attempts), ("etl.load", 3));
    assert_eq!(
        (
            load.memory_p50_mib,
            load.memory_p95_mib,
            load.memory_max_mib
        ),
        (100, 110, 110)
    );
    assert_eq!(load.requested.memory_mib, 400);
    assert_eq!(load.auto_request.as_ref().unwrap().memory_mib, 132);
    // Now a new job asks for 110 MiB × 1.2.
    let id = api.submit(&api::SubmitJob::function(
        "root.sized",
        "etl.load",
        json!(null),
    ));
    let job: api::JobView = api.get(&format!("/v1/jobs/{id}")).expect(200);
    assert_eq!(job.resources.memory_mib, 132);
    // Its attempt is killed for its memory: it runs again with 264 MiB, no retry spent.
    let a = worker.next_assignment();
    let oom = finished_attempt(
        &a,
        api::AttemptResult::Failed {
            exit_code: None,
            message: "killed by the kernel for exceeding its memory limit of 132 MiB".into(),
            retry: None,
            memory_exceeded: true,
        },
    );
    let answer = worker.poll(&[oom], 0);
    let job: api::JobView = api.get(&format!("/v1/jobs/{id}")).expect(200);
    assert_eq!(job.resources.memory_mib, 264);
    assert_ne!(job.state, api::JobState::Failed);
    let again = match answer.assignments.first() {
        Some(a) => a.clone(),
        None => worker.next_assignment(),
    };
    assert_eq!(
        (again.job, again.attempt, again.resources.memory_mib),
        (id, 2, 264)
    );
    // Bad settings name their field.
    let err = api
        .patch(
            "/v1/queues/root.sized",
            &json!({"auto_resources": {"margin": 0.5}}),
        )
        .expect_error(400);
    assert_eq!(
        err.field.as_deref(),
        Some("auto_resources.margin"),
        "{err:?}"
    );
    let err = api
        .patch("/v1/queues/root", &json!({"auto_resources": {}}))
        .expect_error(400);
    assert_eq!(err.field.as_deref(), Some("auto_resources"), "{err:?}");
    // Off again.
    let view: api::QueueView = api
        .patch(
            "/v1/queues/root.sized",
            &json!({"auto_resources": {"margin": 0}}),
        )
        .expect(200);
    assert!(view.settings.auto_resources.is_none());
}

#[test]
fn a_template_makes_leaves_on_demand_removes_idle_ones_and_keeps_their_counters_across_a_restart() {
    let mut server = BlockingTestServer::start();
    let api = server.api();
    let view: api::QueueView = api
        .post(
            "/v1/queues",
            &json!({
                "path": "root.users",
                "template": {"capacity": 60, "max_capacity": 80, "max_running": 2, "idle_ms": 300, "max_queues": 2},
            }),
        )
        .expect(201);
    let template = view.settings.template.as_ref().unwrap();
    assert_eq!(
        (
            template.settings.capacity,
            template.idle_ms,
            template.max_queues
        ),
        (Some(60.0), Some(300), Some(2))
    );
    let alice = api.submit(&api::SubmitJob::function(
        "root.users.alice",
        "work",
        json!(null),
    ));
    let view: api::QueueView = api.get("/v1/queues/root.users.alice").expect(200);
    assert!(view.on_demand, "{view:?}");
    assert_eq!((view.capacity, view.settings.max_running), (60.0, Some(2)));
    assert_eq!(view.pending, 1);
    assert_eq!(view.idle_since_ms, None);
    // 60 + 60 would pass 100%: bob gets 0, and is told why.
    api.submit(&api::SubmitJob::function(
        "root.users.bob",
        "work",
        json!(null),
    ));
    let bob: api::QueueView = api.get("/v1/queues/root.users.bob").expect(200);
    assert_eq!(bob.capacity, 0.0);
    assert!(
        bob.note.as_deref().unwrap().contains("past 100%"),
        "{bob:?}"
    );
    // The parent takes no jobs; a third child is past the template's limit.
    let err = api
        .post("/v1/jobs", &function_job("root.users", "work"))
        .expect_error(400);
    assert_eq!(err.field.as_deref(), Some("queue"), "{err:?}");
    let err = api
        .post("/v1/jobs", &function_job("root.users.carol", "work"))
        .expect_error(429);
    assert_eq!(err.field.as_deref(), Some("queue"), "{err:?}");
    assert!(err.message.contains("max_queues"), "{err:?}");
    api.get("/v1/queues/root.users.carol").expect_error(404);
    // The template's settings are checked and named under `template.`.
    let err = api
        .patch(
            "/v1/queues/root.users",
            &json!({"template": {"max_capacity": 200}}),
        )
        .expect_error(400);
    assert_eq!(
        err.field.as_deref(),
        Some("template.max_capacity"),
        "{err:?}"
    );

    // Alice's job ends; 300 ms later her queue is removed, her job and counters kept.
    let _: api::JobView = api
        .post(&format!("/v1/jobs/{alice}/cancel"), &json!({}))
        .expect(200);
    let retired = eventually("alice's idle queue removed", || {
        let view: api::QueueView = api.get("/v1/queues/root.users.alice").expect(200);
        view.removed_at_ms.is_some().then_some(view)
    });
    assert_eq!((retired.counts.submitted, retired.counts.cancelled), (1, 1));
    assert!(retired.on_demand && retired.pending == 0);
    let tree: api::QueueView = api.get("/v1/queues/root.users").expect(200);
    let children: Vec<&str> = tree.children.iter().map(|c| c.path.as_str()).collect();
    assert_eq!(children, ["root.users.bob"]);
    let job: api::JobView = api.get(&format!("/v1/jobs/{alice}")).expect(200);
    assert_eq!(
        (job.queue.as_str(), job.state),
        ("root.users.alice", api::JobState::Cancelled)
    );

    // A restart keeps the template, bob, and alice's retired counters; her next job
    // makes her queue again with them.
    server.restart();
    let api = server.api();
    let view: api::QueueView = api.get("/v1/queues/root.users.alice").expect(200);
    assert_eq!(view.removed_at_ms, retired.removed_at_ms);
    assert_eq!(view.counts.submitted, 1);
    let bob: api::QueueView = api.get("/v1/queues/root.users.bob").expect(200);
    assert!(bob.on_demand && bob.note.is_some());
    api.submit(&api::SubmitJob::function(
        "root.users.alice",
        "work",
        json!(null),
    ));
    let view: api::QueueView = api.get("/v1/queues/root.users.alice").expect(200);
    assert_eq!(
        (view.removed_at_ms, view.counts.submitted, view.pending),
        (None, 2, 1)
    );
}

#[test]
fn a_fair_leaf_hands_the_next_core_to_the_tenant_holding_least_and_shows_who_holds_what() {
    let server = BlockingTestServer::start();
    let api = server.api();
    let view: api::QueueView = api
        .post(
            "/v1/queues",
            &json!({
                "path": "root.shared",
                "capacity": 50,
                "fairness_key": "tenant",
                "user_limit_factor": 2,
                "defaults": {"function_resources": {"cpu": 1, "memory_mib": 100}},
            }),
        )
        .expect(201);
    assert_eq!(view.settings.fairness_key.as_deref(), Some("tenant"));
    assert_eq!(view.settings.user_limit_factor, Some(2.0));
    let submit = |tenant: &str| {
        let mut job = api::SubmitJob::function("root.shared", "work", json!(null));
        job.keys.insert("tenant".into(), tenant.into());
        api.submit(&job)
    };
    // Acme floods the queue first; globex comes later with two jobs.
    let acme: Vec<Uuid> = (0..6).map(|_| submit("acme")).collect();
    let globex: Vec<Uuid> = (0..2).map(|_| submit("globex")).collect();
    // The cluster's first worker joins with all eight waiting.
    let mut worker = SimWorker::register(&api, "work");
    let mut taken = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while taken.len() < 4 && std::time::Instant::now() < deadline {
        taken.extend(worker.poll(&[], 1_000).assignments);
    }
    // Four cores: two each, although acme's six came first.
    let jobs: Vec<Uuid> = taken.iter().map(|a| a.job).collect();
    assert_eq!(
        jobs.iter().filter(|j| acme.contains(j)).count(),
        2,
        "{jobs:?}"
    );
    assert_eq!(
        jobs.iter().filter(|j| globex.contains(j)).count(),
        2,
        "{jobs:?}"
    );
    let view: api::QueueView = api.get("/v1/queues/root.shared").expect(200);
    let users: Vec<(&str, u32)> = view
        .users
        .iter()
        .map(|u| (u.name.as_str(), u.running))
        .collect();
    assert_eq!(users, [("acme", 2), ("globex", 2)]);
    assert!((view.users[0].share - 0.5).abs() < 1e-9, "{view:?}");

    // Removing the key: "" (and 0 for the limit).
    let view: api::QueueView = api
        .patch(
            "/v1/queues/root.shared",
            &json!({"fairness_key": "", "user_limit_factor": 0}),
        )
        .expect(200);
    assert_eq!(view.settings.fairness_key, None);
    assert_eq!(view.settings.user_limit_factor, None);
    assert!(view.users.is_empty());

    for (settings, field) in [
        (json!({"fairness_key": "Tenant!"}), "fairness_key"),
        (json!({"user_limit_factor": 1}), "user_limit_factor"),
        (
            json!({"fairness_key": "user", "user_limit_factor": -1}),
            "user_limit_factor",
        ),
    ] {
        let err = api
            .patch("/v1/queues/root.shared", &settings)
            .expect_error(400);
        assert_eq!(err.field.as_deref(), Some(field), "{settings}: {err:?}");
    }
    let err = api
        .patch("/v1/queues/root", &json!({"fairness_key": "user"}))
        .expect_error(400);
    assert_eq!(err.field.as_deref(), Some("fairness_key"), "{err:?}");
}
