//! What the server promised survives it: acknowledged submissions and reports live
//! through `kill -9` in the middle of a load, running attempts live through a
//! graceful restart, and SIGTERM ends the process cleanly.
#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

use lqsm_api as api;
use lqsm_testkit::{Api, ServerProcess, SimWorker, eventually, function_job};
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use uuid::Uuid;

/// Load long enough to be killed in the middle of, short enough to check quickly.
const ACKED_BEFORE_KILL: usize = 5000;
const BATCH: usize = 50;

/// Shared by the load threads: when to stop, and how many ids were acknowledged.
#[derive(Clone, Default)]
struct Load {
    stop: Arc<AtomicBool>,
    submitted: Arc<AtomicUsize>,
    finished: Arc<AtomicUsize>,
}

/// A job of `handler` whose arguments are `bytes` long: over 1 KiB the server keeps
/// the payload in its store rather than in memory (`limits.inline_payload_bytes`).
fn job_of(handler: &str, bytes: usize) -> api::SubmitJob {
    api::SubmitJob::function(
        "root.default",
        handler,
        json!({ "blob": "p".repeat(bytes) }),
    )
}

/// Submits one job at a time until the server goes away; returns the acknowledged ids.
fn submit_singles(api: Api, job: api::SubmitJob, load: Load) -> JoinHandle<Vec<Uuid>> {
    std::thread::spawn(move || {
        let mut acked = Vec::new();
        while !load.stop.load(Ordering::Relaxed) {
            let Ok(reply) = api.try_post("/v1/jobs", &job) else {
                break; // The server is gone.
            };
            let submitted: api::Submitted = reply.expect(201);
            acked.push(submitted.id);
            load.submitted.fetch_add(1, Ordering::Relaxed);
        }
        acked
    })
}

/// Submits batches until the server goes away; returns the acknowledged ids.
fn submit_batches(api: Api, job: api::SubmitJob, load: Load) -> JoinHandle<Vec<Uuid>> {
    std::thread::spawn(move || {
        let batch = api::SubmitBatch {
            jobs: vec![job; BATCH],
        };
        let mut acked = Vec::new();
        while !load.stop.load(Ordering::Relaxed) {
            let Ok(reply) = api.try_post("/v1/jobs/batch", &batch) else {
                break;
            };
            let result: api::BatchResult = reply.expect(200);
            assert_eq!(result.accepted, BATCH, "{result:?}");
            acked.extend(result.results.iter().map(|r| r.id.unwrap()));
            load.submitted.fetch_add(BATCH, Ordering::Relaxed);
        }
        acked
    })
}

/// A worker that reports every attempt it gets as succeeded in its next poll; returns
/// the jobs whose success report the server acknowledged.
fn finish_everything(api: Api, handler: &'static str, load: Load) -> JoinHandle<Vec<Uuid>> {
    std::thread::spawn(move || {
        let id = Uuid::now_v7();
        let registration = api::RegisterWorker {
            id,
            name: "load-worker".into(),
            capacity: api::Resources {
                cpu: Some(64.0),
                memory_mib: Some(65536),
                ..api::Resources::default()
            },
            labels: Default::default(),
            serves_commands: false,
            queues: Default::default(),
            handlers: vec![handler.to_owned()],
            protocol: api::WORKER_PROTOCOL,
        };
        api.post("/v1/workers", &registration).expect_status(200);
        let mut holding: Vec<api::Assignment> = Vec::new();
        let mut done = Vec::new();
        while !load.stop.load(Ordering::Relaxed) {
            let report: Vec<api::FinishedAttempt> = holding
                .iter()
                .map(|a| api::FinishedAttempt {
                    job: a.job,
                    token: a.token,
                    result: api::AttemptResult::Succeeded {
                        result: Some(json!("done")),
                        exit_code: None,
                    },
                    logs: None,
                    usage: None,
                    started_at_ms: None,
                })
                .collect();
            let poll = api::PollRequest {
                registration: None,
                running: Vec::new(),
                finished: report.clone(),
                wait_ms: 50,
                ack: None,
                ending: Vec::new(),
            };
            let Ok(reply) = api.try_post(&format!("/v1/workers/{id}/poll"), &poll) else {
                break;
            };
            let resp: api::PollResponse = reply.expect(200);
            assert!(resp.refused.is_empty(), "{:?}", resp.refused);
            done.extend(report.iter().map(|f| f.job));
            load.finished.fetch_add(report.len(), Ordering::Relaxed);
            holding = resp.assignments;
        }
        done
    })
}

/// Every job of `root.default`, through the paged listing.
fn all_jobs(api: &Api) -> HashMap<Uuid, api::JobView> {
    let mut jobs = HashMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/jobs?queue=root.default&limit=1000&cursor={c}"),
            None => "/v1/jobs?queue=root.default&limit=1000".to_owned(),
        };
        let page: api::JobList = api.get(&path).expect(200);
        jobs.extend(page.jobs.into_iter().map(|j| (j.id, j)));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => return jobs,
        }
    }
}

fn succeeded_attempts(view: &api::JobView) -> usize {
    view.attempts
        .iter()
        .filter(|a| a.outcome == Some(lqsm_api::AttemptOutcome::Succeeded))
        .count()
}

/// Asserts that every acknowledged id is stored, in one of `states`.
fn assert_all_stored(
    api: &Api,
    stored: &HashMap<Uuid, api::JobView>,
    acked: &[Uuid],
    states: &[api::JobState],
) {
    let missing: Vec<(Uuid, u16)> = acked
        .iter()
        .filter(|id| !stored.contains_key(id))
        .map(|id| (*id, api.get(&format!("/v1/jobs/{id}")).status))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged jobs are missing after the restart (id, GET status): {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(20)]
    );
    let wrong: Vec<(Uuid, api::JobState)> = acked
        .iter()
        .map(|id| (*id, stored[id].state))
        .filter(|(_, s)| !states.contains(s))
        .collect();
    assert!(
        wrong.is_empty(),
        "{} acknowledged jobs are in unexpected states (expected one of {states:?}): {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(20)]
    );
}

#[test]
fn acknowledged_submissions_survive_kill_9_mid_load() {
    let mut server = ServerProcess::start();
    let api = server.api();
    let load = Load::default();
    let small = job_of("unserved", 10);
    let large = job_of("unserved", 2000);
    let threads = vec![
        submit_singles(api.clone(), small.clone(), load.clone()),
        submit_singles(api.clone(), large.clone(), load.clone()),
        submit_batches(api.clone(), small.clone(), load.clone()),
        submit_batches(api.clone(), large.clone(), load.clone()),
    ];
    eventually("the load to get going", || {
        (load.submitted.load(Ordering::Relaxed) >= ACKED_BEFORE_KILL).then_some(())
    });
    server.kill_9();
    load.stop.store(true, Ordering::Relaxed);
    let per_thread: Vec<Vec<Uuid>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let acked: Vec<Uuid> = per_thread.iter().flatten().copied().collect();
    assert!(acked.len() >= ACKED_BEFORE_KILL);
    eprintln!("{} submissions acknowledged before the kill", acked.len());

    server.restart();
    let api = server.api();
    let stored = all_jobs(&api);
    assert_all_stored(&api, &stored, &acked, &[api::JobState::Pending]);
    // The last acknowledgements before the kill are the ones most at risk: read them
    // one by one too.
    for ids in &per_thread {
        for id in &ids[ids.len().saturating_sub(10)..] {
            assert_eq!(api.job(*id).state, lqsm_api::JobState::Pending);
        }
    }
    // Large payloads live in the store beside the job records: each came back whole.
    let started = std::time::Instant::now();
    let large_ids = per_thread[1].iter().chain(&per_thread[3]);
    let mut checked = 0;
    for id in large_ids {
        assert_eq!(api.job(*id).kind, large.kind, "job {id}");
        checked += 1;
    }
    eprintln!(
        "{checked} large payloads checked in {:?}",
        started.elapsed()
    );
}

#[test]
fn acknowledged_reports_survive_kill_9_and_no_job_finishes_twice() {
    let mut server = ServerProcess::start();
    let api = server.api();
    let load = Load::default();
    let submitters = vec![
        submit_singles(api.clone(), job_of("load", 10), load.clone()),
        submit_batches(api.clone(), job_of("load", 10), load.clone()),
        submit_batches(api.clone(), job_of("load", 2000), load.clone()),
    ];
    let worker = finish_everything(api.clone(), "load", load.clone());
    eventually("the load to get going", || {
        let enough = load.submitted.load(Ordering::Relaxed) >= ACKED_BEFORE_KILL
            && load.finished.load(Ordering::Relaxed) >= 1000;
        enough.then_some(())
    });
    server.kill_9();
    load.stop.store(true, Ordering::Relaxed);
    let acked: Vec<Uuid> = submitters
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let finished = worker.join().unwrap();
    assert!(finished.len() >= 1000);
    eprintln!(
        "{} submissions and {} reports acknowledged before the kill",
        acked.len(),
        finished.len()
    );

    server.restart();
    let api = server.api();
    let stored = all_jobs(&api);
    // Jobs handed out but not reported wait for their worker to reclaim them.
    assert_all_stored(
        &api,
        &stored,
        &acked,
        &[
            api::JobState::Pending,
            api::JobState::Scheduled,
            api::JobState::Running,
            api::JobState::Succeeded,
        ],
    );
    for id in &finished {
        let view = &stored[id];
        assert_eq!(view.state, lqsm_api::JobState::Succeeded, "{view:?}");
        assert_eq!(succeeded_attempts(view), 1, "{view:?}");
        assert_eq!(view.result, Some(json!("done")));
    }
    let twice: Vec<&api::JobView> = stored
        .values()
        .filter(|v| succeeded_attempts(v) > 1)
        .collect();
    assert!(twice.is_empty(), "jobs that succeeded twice: {twice:?}");
}

/// A worker holds a running attempt while `restart` takes the server down and up
/// again; the worker registers again, says it still runs the attempt, and reports it.
fn running_attempt_survives(restart: impl FnOnce(&mut ServerProcess)) {
    let mut server = ServerProcess::start();
    let api = server.api();
    let mut worker = SimWorker::register(&api, "keep");
    let id = api.submit(&function_job("root.default", "keep"));
    let a = worker.next_assignment();
    worker.poll(&[], 0);
    assert_eq!(api.job(id).state, lqsm_api::JobState::Running);

    restart(&mut server);
    let api = server.api();
    worker.reconnect(&api);

    // The new process does not know the worker yet...
    let err = worker.poll_raw(&[], 0).expect_error(409);
    assert_eq!(err.code, lqsm_api::ErrorCode::RegisterAgain);
    // ... which registers again under its id and says what it still runs.
    worker.register_again();
    let resp = worker.poll(&[], 0);
    assert!(resp.kill.is_empty(), "{resp:?}");
    assert!(resp.assignments.is_empty(), "{resp:?}");
    let view = api.job(id);
    assert_eq!(view.state, lqsm_api::JobState::Running);
    assert_eq!(view.attempts.len(), 1);
    assert_eq!(view.attempts[0].token, a.token);

    let resp = worker.succeed(&a, json!("kept"));
    assert!(resp.refused.is_empty(), "{resp:?}");
    let view = api.job(id);
    assert_eq!(view.state, lqsm_api::JobState::Succeeded);
    assert_eq!(view.result, Some(json!("kept")));
    assert_eq!(view.attempts.len(), 1);
    assert_eq!(
        view.attempts[0].outcome,
        Some(lqsm_api::AttemptOutcome::Succeeded)
    );
}

#[test]
fn running_attempt_survives_a_graceful_restart() {
    running_attempt_survives(|server| {
        server.stop();
        server.restart();
    });
}

#[test]
fn running_attempt_survives_kill_9() {
    running_attempt_survives(|server| {
        server.kill_9();
        server.restart();
    });
}

#[test]
fn attempt_not_reclaimed_within_the_grace_runs_again_elsewhere() {
    let mut server = ServerProcess::builder()
        .arg("--reclaim-grace-ms")
        .arg("500")
        .start();
    let api = server.api();
    let mut gone = SimWorker::register(&api, "orphan");
    let id = api.submit(&function_job("root.default", "orphan"));
    let first = gone.next_assignment();
    gone.poll(&[], 0);

    server.kill_9();
    server.restart();
    let api = server.api();
    // The old worker never comes back; a new one gets the job once the grace is over.
    let mut other = SimWorker::register(&api, "orphan");
    let second = other.next_assignment();
    assert_eq!(second.job, id);
    assert_eq!(second.attempt, 2);
    assert!(second.token > first.token, "{second:?} after {first:?}");
    other.succeed(&second, json!("second time"));
    let view = api.job(id);
    assert_eq!(view.state, lqsm_api::JobState::Succeeded);
    let outcomes: Vec<Option<lqsm_api::AttemptOutcome>> =
        view.attempts.iter().map(|a| a.outcome).collect();
    assert_eq!(
        outcomes,
        [
            Some(lqsm_api::AttemptOutcome::NotReclaimed),
            Some(lqsm_api::AttemptOutcome::Succeeded)
        ]
    );

    // Its late report is refused.
    gone.reconnect(&api);
    gone.register_again();
    gone.running.clear();
    let resp = gone.succeed(&first, json!("too late"));
    assert_eq!(resp.refused.len(), 1, "{resp:?}");
    assert_eq!(
        resp.refused[0].reason,
        lqsm_api::RefusalReason::StaleAttempt
    );
    assert_eq!(api.job(id).result, Some(json!("second time")));
}

#[test]
fn queues_keys_tokens_and_finished_jobs_survive_kill_9() {
    let mut server = ServerProcess::start();
    let api = server.api();
    // Queue settings and states.
    api.patch("/v1/queues/root.default", &json!({"weight": 5}))
        .expect_status(200);
    api.create_queue(json!({"path": "root.paused"}));
    api.post("/v1/queues/root.paused/stop", &json!({}))
        .expect_status(200);
    // A queue deleted with its job.
    api.create_queue(json!({"path": "root.gone"}));
    let orphan = api.submit(&function_job("root.gone", "gone"));
    api.delete("/v1/queues/root.gone?force=true")
        .expect_status(204);
    // An idempotency key.
    let mut keyed = function_job("root.default", "keyed");
    keyed.idempotency_key = Some("nightly-2026-11-27".into());
    let keyed_id = api.submit(&keyed);
    // A finished job, and the token it ran with.
    let mut worker = SimWorker::register(&api, "done");
    let done = api.submit(&function_job("root.default", "done"));
    let a = worker.next_assignment();
    worker.succeed(&a, json!(42));

    server.kill_9();
    server.restart();
    let api = server.api();

    let default: api::QueueView = api.get("/v1/queues/root.default").expect(200);
    assert_eq!(default.settings.weight, Some(5));
    let paused: api::QueueView = api.get("/v1/queues/root.paused").expect(200);
    assert_eq!(paused.state, lqsm_api::QueueState::Stopped);
    let refused = api
        .post("/v1/jobs", &function_job("root.paused", "x"))
        .expect_error(409);
    assert_eq!(refused.code, lqsm_api::ErrorCode::NotAccepting);

    api.get("/v1/queues/root.gone").expect_error(404);
    let reply = api.get(&format!("/v1/jobs/{orphan}"));
    let view: api::JobView = reply.expect(200);
    assert_eq!(view.state, lqsm_api::JobState::Cancelled);
    assert_eq!(view.queue, "root.gone");

    let again: api::Submitted = api.post("/v1/jobs", &keyed).expect(200);
    assert_eq!(again.id, keyed_id);
    assert!(!again.created);

    let view = api.job(done);
    assert_eq!(view.state, lqsm_api::JobState::Succeeded);
    assert_eq!(view.result, Some(json!(42)));
    // Fencing tokens keep growing across restarts.
    let mut worker = SimWorker::register(&api, "done");
    api.submit(&function_job("root.default", "done"));
    let b = worker.next_assignment();
    assert!(
        b.token > a.token,
        "token {} reused after {}",
        b.token,
        a.token
    );
}

#[test]
fn sigterm_exits_with_code_0_and_keeps_every_job() {
    let mut server = ServerProcess::start();
    let api = server.api();
    let mut ids: Vec<Uuid> = (0..3)
        .map(|i| {
            api.submit(&api::SubmitJob::function(
                "root.default",
                "kept",
                json!({ "i": i }),
            ))
        })
        .collect();
    let cancelled = ids.pop().unwrap();
    api.post(&format!("/v1/jobs/{cancelled}/cancel"), &json!({}))
        .expect_status(200);
    api.create_queue(json!({"path": "root.kept"}));
    let large = job_of("kept-large", 3000);
    let large_id = api.submit(&large);

    server.stop(); // Asserts exit code 0.
    server.restart();
    let api = server.api();
    for (i, id) in ids.iter().enumerate() {
        let view = api.job(*id);
        assert_eq!(view.state, lqsm_api::JobState::Pending);
        assert_eq!(
            view.kind,
            api::JobKind::Function {
                handler: "kept".into(),
                args: json!({ "i": i }).into()
            }
        );
    }
    assert_eq!(api.job(cancelled).state, lqsm_api::JobState::Cancelled);
    api.get("/v1/queues/root.kept").expect_status(200);
    // A large payload is read back from the store when its job is dispatched.
    let mut worker = SimWorker::register(&api, "kept-large");
    let a = worker.next_assignment();
    assert_eq!(a.job, large_id);
    assert_eq!(a.kind, large.kind);
}
