//! Rate limits through the real server: a limited queue starts its jobs no faster than
//! its limit, a held job and its queue say until when, per-key limits give each key
//! value its own bucket, a restart keeps the limit, and bad limits are refused naming
//! the field.
#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

use lqsm_api as api;
use lqsm_testkit::{BlockingTestServer, SimWorker, eventually, function_job};
use serde_json::json;
use uuid::Uuid;

/// Polls until `n` assignments in all have come; returns them in order.
fn assignments(worker: &mut SimWorker, n: usize) -> Vec<api::Assignment> {
    let mut got = Vec::new();
    eventually(&format!("{n} assignments"), || {
        got.extend(worker.poll(&[], worker.poll_wait_ms).assignments);
        (got.len() >= n).then_some(())
    });
    got
}

#[test]
fn a_limited_queue_starts_jobs_no_faster_than_its_limit_and_says_until_when() {
    let server = BlockingTestServer::start();
    let api = server.api();
    let queue = api.create_queue(json!({
        "path": "root.limited",
        "rate_limit": {"rate": "2/s", "burst": 2},
    }));
    let limit = queue.settings.rate_limit.unwrap();
    assert_eq!((limit.rate.as_str(), limit.burst), ("2/s", Some(2)));
    let mut worker = SimWorker::register(&api, "limited");
    let jobs: Vec<Uuid> = (0..6)
        .map(|_| api.submit(&function_job("root.limited", "limited")))
        .collect();

    // While the limit holds the queue back, its next job says until when, and so does
    // the queue.
    let until = eventually("a job held back by the limit", || {
        jobs.iter().find_map(|id| {
            let view = api.job(*id);
            view.rate_limited_until_ms
                .filter(|_| view.state == api::JobState::Pending)
        })
    });
    assert!(until > api::epoch_ms().saturating_sub(1_000), "{until}");
    eventually("the queue held back by the limit", || {
        let view: api::QueueView = api.get("/v1/queues/root.limited").expect(200);
        view.rate_limited_until_ms
    });

    assignments(&mut worker, 6);
    let mut starts: Vec<u64> = jobs
        .iter()
        .map(|id| api.job(*id).attempts[0].scheduled_at_ms)
        .collect();
    starts.sort_unstable();
    // n starts within a span of s ms: n ≤ burst + rate × s.
    for i in 0..starts.len() {
        for j in i..starts.len() {
            let n = (j - i + 1) as u64;
            let span = starts[j] - starts[i];
            assert!(
                n.saturating_sub(2) * 1000 <= 2 * span,
                "{n} starts within {span} ms under 2/s, burst 2: {starts:?}"
            );
        }
    }
    let finished = api.job(jobs[5]);
    assert_eq!(finished.rate_limited_until_ms, None, "{finished:?}");
}

#[test]
fn each_customer_has_its_own_bucket_and_a_held_one_does_not_delay_the_others() {
    let server = BlockingTestServer::start();
    let api = server.api();
    api.create_queue(json!({
        "path": "root.per_customer",
        "key_limits": {"customer": {"rate": "1/m"}},
    }));
    let mut worker = SimWorker::register(&api, "keyed");
    let keyed = |customer: &str| {
        let mut job = function_job("root.per_customer", "keyed");
        job.keys = [("customer".to_owned(), customer.to_owned())].into();
        api.submit(&job)
    };
    let acme = keyed("acme");
    let acme_again = keyed("acme");
    let globex = keyed("globex");
    // The held customer's next job is set aside: the other customer's job behind it
    // starts at once.
    let got: Vec<Uuid> = assignments(&mut worker, 2).iter().map(|a| a.job).collect();
    assert_eq!(got, vec![acme, globex]);
    let held = api.job(acme_again);
    assert_eq!(held.state, api::JobState::Pending);
    assert_eq!(held.keys["customer"], "acme");
    let until = held.rate_limited_until_ms.unwrap();
    assert!(
        until > api::epoch_ms() + 50_000,
        "held for about a minute: {until}"
    );
}

#[test]
fn a_restart_starts_the_limit_afresh_rather_than_forgetting_it() {
    let mut server = BlockingTestServer::start();
    let api = server.api();
    api.create_queue(json!({
        "path": "root.slow",
        "rate_limit": {"rate": "1/m"},
    }));
    let mut worker = SimWorker::register(&api, "slow");
    let first = api.submit(&function_job("root.slow", "slow"));
    let second = api.submit(&function_job("root.slow", "slow"));
    assert_eq!(assignments(&mut worker, 1)[0].job, first);
    server.restart();
    let restarted_at = api::epoch_ms();
    let api = server.api();
    // After the restart the bucket starts empty: the next start is a whole interval
    // after the restore, whatever the bucket held before it.
    let until = eventually("the held job after the restart", || {
        api.job(second)
            .rate_limited_until_ms
            .filter(|until| *until >= restarted_at + 59_000)
    });
    assert!(until <= api::epoch_ms() + 60_000, "{until}");
}

#[test]
fn bad_limits_are_refused_naming_the_field() {
    let server = BlockingTestServer::start();
    let api = server.api();
    let cases = [
        (json!({"rate": "10 per second"}), "rate_limit.rate", "100/s"),
        (json!({"rate": "10/d"}), "rate_limit.rate", "unknown period"),
        (
            json!({"rate": "10/s", "burst": 0}),
            "rate_limit.burst",
            "1 to",
        ),
    ];
    for (limit, field, needle) in cases {
        let error = api
            .post(
                "/v1/queues",
                &json!({"path": "root.bad", "rate_limit": limit}),
            )
            .expect_error(400);
        assert_eq!(error.field.as_deref(), Some(field), "{error:?}");
        assert!(error.message.contains(needle), "{error:?}");
    }
    let error = api
        .post(
            "/v1/queues",
            &json!({"path": "root.bad", "key_limits": {"Customer": {"rate": "1/s"}}}),
        )
        .expect_error(400);
    assert_eq!(error.field.as_deref(), Some("key_limits"), "{error:?}");
    let mut job = function_job("root.default", "h");
    job.keys = [("customer".to_owned(), String::new())].into();
    let error = api.post("/v1/jobs", &job).expect_error(400);
    assert_eq!(error.field.as_deref(), Some("keys.customer"), "{error:?}");
    // A rate of 0 removes a limit, as a running limit of 0 does.
    api.create_queue(json!({"path": "root.was_limited", "rate_limit": {"rate": "1/s"}}));
    let view: api::QueueView = api
        .patch(
            "/v1/queues/root.was_limited",
            &json!({"rate_limit": {"rate": "0"}}),
        )
        .expect(200);
    assert_eq!(view.settings.rate_limit, None);
}
