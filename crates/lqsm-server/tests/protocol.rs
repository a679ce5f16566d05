//! Worker protocol versions: a worker of the previous protocol (its registration
//! carries no `protocol`) is served as before, one of a newer major version is refused
//! with a message naming both versions and what to upgrade.
#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

use lqsm_api as api;
use lqsm_testkit::{BlockingTestServer, SimWorker, eventually, function_job};
use serde_json::json;
use uuid::Uuid;

/// A registration exactly as a protocol-1 worker sent it: no `protocol` field.
fn version_one_registration(id: Uuid, handler: &str) -> serde_json::Value {
    json!({
        "id": id,
        "name": "old-worker",
        "capacity": {"cpu": 2.0, "memory_mib": 1024},
        "serves_commands": false,
        "handlers": [handler],
    })
}

#[test]
fn a_worker_of_the_previous_protocol_registers_polls_and_runs_a_job() {
    let server = BlockingTestServer::start();
    let api = server.api();
    let id = Uuid::now_v7();
    let view: api::WorkerView = api
        .post("/v1/workers", &version_one_registration(id, "proto.v1"))
        .expect(200);
    assert_eq!(view.state, api::WorkerState::Active);

    let job = api.submit(&function_job("root.default", "proto.v1"));
    let poll = eventually("the old worker to get the job", || {
        let answer: api::PollResponse = api
            .post(
                &format!("/v1/workers/{id}/poll"),
                &json!({"running": [], "finished": [], "wait_ms": 200}),
            )
            .expect(200);
        (!answer.assignments.is_empty()).then_some(answer)
    });
    let assignment = &poll.assignments[0];
    assert_eq!(assignment.job, job);
    let _: api::PollResponse = api
        .post(
            &format!("/v1/workers/{id}/poll"),
            &json!({
                "ack": poll.seq,
                "finished": [{
                    "job": assignment.job,
                    "token": assignment.token,
                    "result": {"type": "succeeded", "result": "done"},
                }],
            }),
        )
        .expect(200);
    let done = api.job(job);
    assert_eq!(done.state, api::JobState::Succeeded, "{done:?}");
}

#[test]
fn a_worker_of_a_newer_major_protocol_is_refused_with_what_to_upgrade() {
    let server = BlockingTestServer::start();
    let api = server.api();
    let mut registration = version_one_registration(Uuid::now_v7(), "proto.v9");
    let too_new = api::WORKER_PROTOCOL + 1;
    registration["protocol"] = json!(too_new);
    let error = api.post("/v1/workers", &registration).expect_error(400);
    assert_eq!(
        error.code,
        api::ErrorCode::IncompatibleProtocol,
        "{error:?}"
    );
    assert_eq!(error.field.as_deref(), Some("protocol"));
    let expected = format!(
        "the worker speaks protocol {too_new}, this server accepts protocols {} to {}: upgrade the LQSM server",
        api::OLDEST_WORKER_PROTOCOL,
        api::WORKER_PROTOCOL
    );
    assert!(error.message.starts_with(&expected), "{}", error.message);

    // Version 0 never existed: refused too, with the advice to upgrade the worker.
    registration["protocol"] = json!(0);
    let error = api.post("/v1/workers", &registration).expect_error(400);
    assert_eq!(error.code, api::ErrorCode::IncompatibleProtocol);
    assert!(
        error.message.contains("upgrade the worker"),
        "{}",
        error.message
    );
}

#[test]
fn the_current_protocol_is_accepted() {
    let server = BlockingTestServer::start();
    let api = server.api();
    let mut registration = version_one_registration(Uuid::now_v7(), "proto.v2");
    registration["protocol"] = json!(api::WORKER_PROTOCOL);
    let view: api::WorkerView = api.post("/v1/workers", &registration).expect(200);
    assert_eq!(view.state, api::WorkerState::Active);
}

#[test]
fn a_failure_reported_not_to_be_retried_fails_the_job_at_once_and_a_bad_flag_is_refused() {
    let server = BlockingTestServer::start();
    let api = server.api();
    // A worker of protocol 3, older than `retry`: the server honours the flag whatever
    // version the worker registered with.
    let id = Uuid::now_v7();
    let mut registration = version_one_registration(id, "proto.final");
    registration["protocol"] = json!(3);
    let _: api::WorkerView = api.post("/v1/workers", &registration).expect(200);

    let mut job = function_job("root.default", "proto.final");
    job.retry = Some(api::RetrySpec {
        max_attempts: Some(3),
        backoff_base_ms: Some(0),
        ..api::RetrySpec::default()
    });
    let job = api.submit(&job);
    let poll_path = format!("/v1/workers/{id}/poll");
    let poll = eventually("the worker to get the job", || {
        let answer: api::PollResponse = api.post(&poll_path, &json!({"wait_ms": 200})).expect(200);
        (!answer.assignments.is_empty()).then_some(answer)
    });
    let assignment = &poll.assignments[0];
    let report = |retry: serde_json::Value| {
        json!({
            "ack": poll.seq,
            "running": [],
            "finished": [{
                "job": assignment.job,
                "token": assignment.token,
                "result": {"type": "failed", "message": "ValueError: bad input", "retry": retry},
            }],
        })
    };

    // Not a boolean: the whole poll is refused, naming the field, and nothing changes.
    let error = api.post(&poll_path, &report(json!("no"))).expect_error(400);
    assert_eq!(error.code, api::ErrorCode::InvalidField, "{error:?}");
    assert_eq!(
        error.field.as_deref(),
        Some("finished[0].result.retry"),
        "{error:?}"
    );
    assert!(error.message.contains("boolean"), "{}", error.message);
    assert_eq!(api.job(job).attempts[0].outcome, None);

    // `retry: false`: the job fails with its first attempt, two attempts unused.
    let answer: api::PollResponse = api.post(&poll_path, &report(json!(false))).expect(200);
    assert!(answer.refused.is_empty(), "{answer:?}");
    let view = api.job(job);
    assert_eq!(view.state, api::JobState::Failed, "{view:?}");
    assert_eq!(view.attempts.len(), 1);
    assert_eq!(view.attempts[0].outcome, Some(api::AttemptOutcome::Failed));
    assert_eq!(
        view.attempts[0].message.as_deref(),
        Some("ValueError: bad input")
    );
    // And it is not offered again.
    let later: api::PollResponse = api
        .post(&poll_path, &json!({"ack": poll.seq, "wait_ms": 300}))
        .expect(200);
    assert!(later.assignments.is_empty(), "{later:?}");
}

/// A worker that stops polling after an answer (killed without a word) is *quiet* 3 s
/// later, long before its heartbeat timeout: the job placed on it but never handed to it
/// runs on a worker that polls, its first attempt `withdrawn` and not counted as a
/// failure, while the quiet worker is still active (not lost). Its next poll ends it.
#[test]
fn a_job_placed_on_a_worker_that_stopped_polling_runs_on_one_that_polls() {
    let server = BlockingTestServer::start_with(|c| c.scheduler.heartbeat_timeout_ms = 600_000);
    let api = server.api();
    let mut silent = SimWorker::register(&api, "quiet.h");
    silent.poll(&[], 0);
    // Placed on the only worker serving the handler, which never polls again.
    let job = api.submit(&function_job("root.default", "quiet.h"));
    eventually("the job placed on the silent worker", || {
        let view = api.job(job);
        (view.attempts.len() == 1).then_some(())
    });
    assert_eq!(api.job(job).attempts[0].worker, silent.id);

    let mut polling = SimWorker::register(&api, "quiet.h");
    let assignment = polling.next_assignment();
    assert_eq!(assignment.job, job);
    let view = api.job(job);
    assert_eq!(
        view.attempts
            .iter()
            .map(|a| (a.worker, a.outcome))
            .collect::<Vec<_>>(),
        vec![
            (silent.id, Some(api::AttemptOutcome::Withdrawn)),
            (polling.id, None)
        ]
    );
    let worker_view = |id: Uuid| -> api::WorkerView {
        let workers: Vec<api::WorkerView> = api.get("/v1/workers").expect(200);
        workers.into_iter().find(|w| w.id == id).unwrap()
    };
    let quiet = worker_view(silent.id);
    assert!(
        quiet.quiet && quiet.state == api::WorkerState::Active,
        "quiet, not lost: {quiet:?}"
    );
    polling.succeed(&assignment, json!("done"));
    let done = api.wait_for_state(job, api::JobState::Succeeded);
    assert_eq!(
        done.attempts.len(),
        2,
        "the withdrawn attempt and the one that ran"
    );

    silent.poll(&[], 0);
    assert!(
        !worker_view(silent.id).quiet,
        "its poll makes it take work again"
    );
}
