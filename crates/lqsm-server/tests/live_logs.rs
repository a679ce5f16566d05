//! The output of running attempts (protocol 8): a worker uploads it while the attempt
//! runs, readers see it grow on `GET /v1/jobs/{id}/logs` (whole, or from an offset),
//! a stale attempt's output is refused, and the report's `logs` replace it at the end.
#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

use lqsm_api as api;
use lqsm_testkit::{Api, BlockingTestServer, SimWorker, finished_attempt, function_job};
use serde_json::json;
use uuid::Uuid;

fn upload(worker: &SimWorker, chunks: &[(Uuid, u64, u64, &str)]) -> api::LogChunksAnswer {
    let body = api::LogChunks {
        chunks: chunks
            .iter()
            .map(|&(job, token, offset, text)| api::LogChunk {
                job,
                token,
                offset,
                text: text.to_owned(),
            })
            .collect(),
    };
    worker
        .api
        .post(&format!("/v1/workers/{}/logs", worker.id), &body)
        .expect(200)
}

fn logs_text(api: &Api, job: Uuid) -> String {
    let reply = api.get(&format!("/v1/jobs/{job}/logs"));
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body
}

fn logs_from(api: &Api, job: Uuid, offset: u64) -> api::JobLogs {
    api.get(&format!("/v1/jobs/{job}/logs?offset={offset}"))
        .expect(200)
}

/// A job of `handler` assigned to `worker`, which has polled once since, so the job runs.
fn running_job(api: &Api, worker: &mut SimWorker, handler: &str) -> api::Assignment {
    let job = api.submit(&function_job("root.default", handler));
    let assignment = worker.next_assignment();
    assert_eq!(assignment.job, job);
    worker.poll(&[], 0);
    assert_eq!(api.job(job).state, api::JobState::Running);
    assignment
}

#[test]
fn a_running_attempts_output_grows_offsets_follow_it_and_the_report_wins() {
    let server = BlockingTestServer::start();
    let api = server.api();
    let mut worker = SimWorker::register(&api, "live.grows");
    let a = running_job(&api, &mut worker, "live.grows");
    // Nothing uploaded yet: as before, empty.
    assert_eq!(logs_text(&api, a.job), "");
    let empty = logs_from(&api, a.job, 0);
    assert_eq!((empty.offset, empty.next_offset), (0, 0));
    assert!(!empty.running && empty.text.is_empty(), "{empty:?}");

    let answer = upload(&worker, &[(a.job, a.token, 0, "line 1\n")]);
    assert!(answer.refused.is_empty(), "{answer:?}");
    assert_eq!(logs_text(&api, a.job), "line 1\n");
    let first = logs_from(&api, a.job, 0);
    assert_eq!(
        first,
        api::JobLogs {
            offset: 0,
            next_offset: 7,
            text: "line 1\n".into(),
            missed: false,
            running: true,
            attempt: Some(1),
        }
    );

    // A chunk sent again with more (its first call's answer was lost) overlaps: the
    // known part is taken once.
    upload(&worker, &[(a.job, a.token, 0, "line 1\nline 2\n")]);
    let next = logs_from(&api, a.job, first.next_offset);
    assert_eq!((next.offset, next.next_offset), (7, 14));
    assert_eq!(next.text, "line 2\n");
    // Nothing new: an empty answer at the same place.
    let none = logs_from(&api, a.job, next.next_offset);
    assert_eq!(
        (none.offset, none.next_offset, none.text.as_str()),
        (14, 14, "")
    );
    assert!(none.running);
    upload(&worker, &[(a.job, a.token, 14, "line 3\n")]);
    assert_eq!(logs_text(&api, a.job), "line 1\nline 2\nline 3\n");

    // The report is the truth: its logs replace the preview, and a follower reads on
    // from where it was.
    let mut report = finished_attempt(
        &a,
        api::AttemptResult::Succeeded {
            result: None,
            exit_code: None,
        },
    );
    report.logs = Some("line 1\nline 2\nline 3\nline 4 (the last)\n".into());
    let answer = worker.poll(&[report], 0);
    assert!(answer.refused.is_empty(), "{answer:?}");
    assert_eq!(api.job(a.job).state, api::JobState::Succeeded);
    let rest = logs_from(&api, a.job, 21);
    assert_eq!(rest.text, "line 4 (the last)\n");
    assert_eq!(
        (rest.offset, rest.running, rest.attempt),
        (21, false, Some(1))
    );
    // A chunk arriving after the report is refused and changes nothing.
    let late = upload(&worker, &[(a.job, a.token, 21, "late\n")]);
    assert_eq!(late.refused.len(), 1, "{late:?}");
    assert_eq!(late.refused[0].reason, api::RefusalReason::StaleAttempt);
    assert_eq!(
        logs_text(&api, a.job),
        "line 1\nline 2\nline 3\nline 4 (the last)\n"
    );
}

#[test]
fn chunks_of_attempts_that_are_not_current_are_refused_and_never_overwrite() {
    let server = BlockingTestServer::start();
    let api = server.api();
    let mut worker = SimWorker::register(&api, "live.stale");
    let mut job = function_job("root.default", "live.stale");
    job.retry = Some(api::RetrySpec {
        max_attempts: Some(2),
        backoff_base_ms: Some(0),
        jitter: Some(0.0),
        ..api::RetrySpec::default()
    });
    let id = api.submit(&job);
    let first = worker.next_assignment();
    worker.poll(&[], 0);
    upload(&worker, &[(id, first.token, 0, "first attempt\n")]);
    // The first attempt fails; the second runs.
    let failed = finished_attempt(
        &first,
        api::AttemptResult::Failed {
            exit_code: Some(1),
            message: "boom".into(),
            retry: None,
            memory_exceeded: false,
        },
    );
    // The second attempt may come in the answer to the report itself.
    let answer = worker.poll(&[failed], 0);
    let second = match answer.assignments.first() {
        Some(second) => second.clone(),
        None => worker.next_assignment(),
    };
    assert_eq!((second.job, second.attempt), (id, 2));
    worker.poll(&[], 0);
    upload(&worker, &[(id, second.token, 0, "second attempt\n")]);

    // The first attempt's output, still on its way, is refused whole.
    let answer = upload(&worker, &[(id, first.token, 14, "more of the first\n")]);
    assert_eq!(answer.refused.len(), 1);
    assert_eq!(
        (answer.refused[0].token, answer.refused[0].reason),
        (first.token, api::RefusalReason::StaleAttempt)
    );
    let live = logs_from(&api, id, 0);
    assert_eq!(live.text, "second attempt\n");
    assert_eq!((live.attempt, live.running), (Some(2), true));

    // Another worker cannot upload for an attempt it does not hold; a job that does
    // not exist is unknown; in one call, each chunk is judged alone.
    let other = SimWorker::register(&api, "live.other");
    let answer = upload(&other, &[(id, second.token, 15, "intruder\n")]);
    assert_eq!(answer.refused[0].reason, api::RefusalReason::StaleAttempt);
    let answer = upload(
        &worker,
        &[
            (Uuid::now_v7(), 1, 0, "nobody\n"),
            (id, second.token, 15, "still second\n"),
        ],
    );
    assert_eq!(answer.refused.len(), 1, "{answer:?}");
    assert_eq!(answer.refused[0].reason, api::RefusalReason::UnknownJob);
    assert_eq!(logs_text(&api, id), "second attempt\nstill second\n");

    // A worker the server does not know registers again first, as for a poll.
    let stranger = Uuid::now_v7();
    let error = api
        .post(
            &format!("/v1/workers/{stranger}/logs"),
            &json!({"chunks": []}),
        )
        .expect_error(409);
    assert_eq!(error.code, api::ErrorCode::RegisterAgain);
    // A chunk with a field the protocol does not have is refused naming it.
    let error = api
        .post(
            &format!("/v1/workers/{}/logs", worker.id),
            &json!({"chunks": [{"job": id, "token": second.token, "offset": 0, "text": "", "extra": 1}]}),
        )
        .expect_error(400);
    assert_eq!(error.code, api::ErrorCode::UnknownField, "{error:?}");
    assert!(
        error
            .field
            .as_deref()
            .is_some_and(|f| f.starts_with("chunks[0]")),
        "{error:?}"
    );
}

#[test]
fn the_running_output_kept_is_the_end_and_a_follower_is_told_what_it_missed() {
    let server = BlockingTestServer::start_with(|c| c.limits.max_log_bytes = 16);
    let api = server.api();
    let mut worker = SimWorker::register(&api, "live.tail");
    let a = running_job(&api, &mut worker, "live.tail");
    upload(&worker, &[(a.job, a.token, 0, "0123456789")]);
    let early = logs_from(&api, a.job, 0);
    assert_eq!(early.next_offset, 10);
    upload(&worker, &[(a.job, a.token, 10, "abcdefghij")]);
    // 20 bytes written, 16 kept: the follower at 10 lost nothing; one at 2 lost 2..4.
    let on = logs_from(&api, a.job, 10);
    assert_eq!(
        (on.offset, on.text.as_str(), on.missed),
        (10, "abcdefghij", false)
    );
    let behind = logs_from(&api, a.job, 2);
    assert_eq!(
        (behind.offset, behind.text.as_str(), behind.missed),
        (4, "456789abcdefghij", true)
    );
    assert_eq!(logs_text(&api, a.job), "456789abcdefghij");
    // Uploads that never arrived (or a new leader) leave a gap: the tail starts again.
    upload(&worker, &[(a.job, a.token, 100, "later")]);
    let gap = logs_from(&api, a.job, 20);
    assert_eq!(
        (gap.offset, gap.text.as_str(), gap.missed),
        (100, "later", true)
    );
}

#[test]
fn a_worker_of_protocol_7_sends_no_chunks_and_its_logs_are_read_as_before() {
    let server = BlockingTestServer::start();
    let api = server.api();
    let id = Uuid::now_v7();
    let registration = json!({
        "id": id,
        "name": "worker-of-protocol-7",
        "capacity": {"cpu": 1.0, "memory_mib": 512},
        "serves_commands": false,
        "handlers": ["live.old"],
        "protocol": 7,
    });
    let view: api::WorkerView = api.post("/v1/workers", &registration).expect(200);
    let job = api.submit(&function_job("root.default", "live.old"));
    let poll_path = format!("/v1/workers/{id}/poll");
    let poll = lqsm_testkit::eventually("the old worker to get the job", || {
        let answer: api::PollResponse = api
            .post(
                &poll_path,
                &json!({"wait_ms": 200, "registration": view.registration}),
            )
            .expect(200);
        (!answer.assignments.is_empty()).then_some(answer)
    });
    let a = &poll.assignments[0];
    let running = json!({"job": a.job, "token": a.token});
    let _: api::PollResponse = api
        .post(
            &poll_path,
            &json!({"ack": poll.seq, "running": [running], "registration": view.registration}),
        )
        .expect(200);
    assert_eq!(api.job(job).state, api::JobState::Running);
    // Running, nothing uploaded: empty, as before.
    assert_eq!(logs_text(&api, job), "");
    let _: api::PollResponse = api
        .post(
            &poll_path,
            &json!({
                "ack": poll.seq,
                "registration": view.registration,
                "finished": [{
                    "job": a.job,
                    "token": a.token,
                    "result": {"type": "succeeded"},
                    "logs": "all at the end\n",
                }],
            }),
        )
        .expect(200);
    assert_eq!(api.job(job).state, api::JobState::Succeeded);
    assert_eq!(logs_text(&api, job), "all at the end\n");
    let read = logs_from(&api, job, 0);
    assert_eq!(
        (read.text.as_str(), read.next_offset, read.running),
        ("all at the end\n", 15, false)
    );
}
