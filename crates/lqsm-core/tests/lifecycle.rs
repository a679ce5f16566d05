//! The life of a job and of a worker: success, retries with backoff, timeouts, lost
//! workers, fencing, idempotency, delays and expiry, cancellation, queue lifecycle,
//! and the precise errors bad input gets.
#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

mod support;

use lqsm_core::*;
use std::time::Duration;
use support::{Sim, job_id, one_core};

fn sim_with_queue() -> (Sim, WorkerId) {
    let mut sim = Sim::new(Config::default());
    sim.queue("root.q", 100.0, 100.0);
    let w = sim.worker("w", 4, 4000);
    (sim, w)
}

fn retrying(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        backoff_base: Duration::from_secs(2),
        backoff_cap: Duration::from_secs(60),
        jitter: 0.0,
    }
}

fn failed(message: &str) -> ReportedResult {
    ReportedResult::Failed {
        exit_code: Some(3),
        message: message.into(),
        retry: true,
    }
}

#[test]
fn submitted_job_is_assigned_run_and_succeeds_once() {
    let (mut sim, w) = sim_with_queue();
    let id = sim.submit_n("root.q", 1, one_core())[0];
    assert_eq!(sim.state(id), JobState::Pending);
    sim.pass();
    assert_eq!(sim.state(id), JobState::Scheduled);
    let got = sim.poll_running(w);
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].job, got[0].attempt), (id, 1));
    sim.poll_running(w);
    assert_eq!(sim.state(id), JobState::Running);
    let out = sim.report(
        w,
        id,
        ReportedResult::Succeeded {
            result: Some(serde_json::json!({"ok": true}).into()),
            exit_code: None,
        },
    );
    assert_eq!(out.accepted, 1);
    let job = sim.rm.job(id).unwrap();
    assert_eq!(job.state, JobState::Succeeded);
    assert!(matches!(
        job.termination.as_deref(),
        Some(Termination::Succeeded { result: Some(v), .. }) if v.to_value()["ok"] == true
    ));
    assert_eq!(sim.log.finished, vec![id]);
    assert!(sim.log.records.contains(&Record::Job(id)));
    // A duplicate report of the same attempt is refused: completed exactly once.
    let again = sim.report_token(
        w,
        id,
        got[0].token,
        ReportedResult::Succeeded {
            result: None,
            exit_code: None,
        },
    );
    assert_eq!(again.refused[0].reason, RefusalReason::StaleAttempt);
    assert_eq!(sim.log.finished, vec![id]);
    assert_eq!(sim.rm.worker(w).unwrap().used, Resources::default());
    sim.check();
}

#[test]
fn failed_attempt_is_retried_after_exponential_backoff_then_fails_for_good() {
    let (mut sim, w) = sim_with_queue();
    let mut req = sim.request("root.q", one_core());
    req.retry = Some(retrying(3));
    let id = sim.submit(req).unwrap().id();
    let mut tokens = Vec::new();
    for (attempt, backoff) in [(1, 2), (2, 4)] {
        sim.pass();
        sim.poll_running(w);
        let token = sim.rm.job(id).unwrap().current_token().unwrap();
        tokens.push(token);
        sim.report(w, id, failed("boom"));
        let job = sim.rm.job(id).unwrap();
        assert_eq!(job.state, JobState::Pending, "attempt {attempt} is retried");
        assert_eq!(job.failures, attempt);
        assert_eq!(
            job.not_before,
            Some(sim.now.after(Duration::from_secs(backoff)))
        );
        // Not before the backoff has passed.
        sim.advance(Duration::from_secs(backoff) - Duration::from_millis(1));
        sim.pass();
        assert_eq!(sim.state(id), JobState::Pending);
        sim.advance(Duration::from_millis(1));
    }
    sim.pass();
    sim.poll_running(w);
    let third = sim.rm.job(id).unwrap().current_attempt().unwrap().clone();
    assert_eq!(third.number, 3);
    assert!(tokens.iter().all(|t| *t < third.token), "tokens only grow");
    sim.report(w, id, failed("still broken"));
    let job = sim.rm.job(id).unwrap();
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(job.attempts.len(), 3);
    assert!(matches!(
        job.termination.as_deref(),
        Some(Termination::Failed { last: AttemptOutcome::Failed { message, exit_code: Some(3) } }) if message == "still broken"
    ));
    sim.check();
}

#[test]
fn a_failure_reported_not_to_be_retried_fails_the_job_at_once_with_attempts_left() {
    // Celery's `autoretry_for`: an error not listed there fails the task at once.
    let (mut sim, w) = sim_with_queue();
    let submit = |sim: &mut Sim| {
        let mut req = sim.request("root.q", one_core());
        req.retry = Some(retrying(3));
        sim.submit(req).unwrap().id()
    };
    let final_failure = ReportedResult::Failed {
        exit_code: Some(3),
        message: "ValueError: bad input".into(),
        retry: false,
    };

    // Without the flag (retry: true, the default), the failure is retried.
    let retried = submit(&mut sim);
    sim.pass();
    sim.poll_running(w);
    let out = sim.report(w, retried, failed("ConnectionError: reset"));
    assert_eq!(out.accepted, 1);
    let job = sim.rm.job(retried).unwrap();
    assert_eq!(job.state, JobState::Pending, "retried");
    assert_eq!(job.failures, 1);
    assert_eq!(
        job.not_before,
        Some(sim.now.after(Duration::from_secs(2))),
        "after the policy's backoff"
    );
    assert!(job.termination.is_none());

    // With retry: false, the first attempt's failure ends the job, two attempts unused.
    let id = submit(&mut sim);
    sim.pass();
    sim.poll_running(w);
    let token = sim.rm.job(id).unwrap().current_token().unwrap();
    let out = sim.report(w, id, final_failure.clone());
    assert_eq!(out.accepted, 1);
    let job = sim.rm.job(id).unwrap();
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(job.attempts.len(), 1);
    assert_eq!(job.failures, 1, "the attempt counts as any failure");
    assert_eq!(job.not_before, None);
    assert!(job.finished_at.is_some());
    // The attempt and the job's end are recorded as for any failure: the flag changed the
    // decision only.
    let expected = AttemptOutcome::Failed {
        exit_code: Some(3),
        message: "ValueError: bad input".into(),
    };
    assert_eq!(job.attempts[0].outcome.as_ref(), Some(&expected));
    assert_eq!(
        job.termination.as_deref(),
        Some(&Termination::Failed { last: expected })
    );
    // Nothing runs it again, past the backoff a retry would have waited (2 s).
    sim.advance(Duration::from_secs(5));
    sim.pass();
    assert_eq!(sim.state(id), JobState::Failed);
    assert!(
        sim.poll_running(w).iter().all(|a| a.job != id),
        "never assigned again"
    );
    // The same report again is refused as stale and changes nothing.
    let again = sim.report_token(w, id, token, final_failure);
    assert_eq!(again.accepted, 0);
    assert_eq!(sim.state(id), JobState::Failed);
    sim.check();
}

#[test]
fn attempt_past_its_timeout_is_killed_and_retried() {
    let (mut sim, w) = sim_with_queue();
    let mut req = sim.request("root.q", one_core());
    req.timeout = Some(Duration::from_secs(30));
    req.retry = Some(retrying(2));
    let id = sim.submit(req).unwrap().id();
    sim.pass();
    sim.poll_running(w);
    let token = sim.rm.job(id).unwrap().current_token().unwrap();
    sim.advance(Duration::from_secs(29));
    sim.poll_running(w);
    sim.pass();
    assert_eq!(sim.state(id), JobState::Running);
    sim.advance(Duration::from_secs(1));
    sim.pass();
    let kill = sim.log.kills.last().unwrap().clone();
    assert_eq!(
        (kill.job, kill.token, kill.reason),
        (id, token, KillReason::TimedOut)
    );
    let job = sim.rm.job(id).unwrap();
    assert_eq!(job.attempts[0].outcome, Some(AttemptOutcome::TimedOut));
    assert_eq!(job.state, JobState::Pending);
    // A late success from the killed attempt is refused.
    let late = sim.report_token(
        w,
        id,
        token,
        ReportedResult::Succeeded {
            result: None,
            exit_code: Some(0),
        },
    );
    assert_eq!(late.refused.len(), 1);
    assert_ne!(sim.state(id), JobState::Succeeded);
    sim.check();
}

#[test]
fn lost_worker_attempts_are_requeued_once_and_its_late_reports_refused() {
    let mut sim = Sim::new(Config::default());
    sim.queue("root.q", 100.0, 100.0);
    let lost = sim.worker("lost", 2, 2000);
    let ids = sim.submit_n("root.q", 2, one_core());
    sim.pass();
    sim.poll_running(lost);
    let tokens: Vec<FencingToken> = ids
        .iter()
        .map(|j| sim.rm.job(*j).unwrap().current_token().unwrap())
        .collect();
    let healthy = sim.worker("healthy", 2, 2000);
    sim.advance(Duration::from_secs(9));
    sim.poll_running(healthy);
    sim.pass();
    assert!(ids.iter().all(|j| sim.state(*j) == JobState::Running));
    sim.advance(Duration::from_secs(1));
    sim.pass();
    assert_eq!(sim.rm.worker(lost).unwrap().state, WorkerState::Lost);
    for id in &ids {
        let job = sim.rm.job(*id).unwrap();
        assert_eq!(job.attempts[0].outcome, Some(AttemptOutcome::Lost));
        assert_eq!(job.failures, 1);
        // Default retry policy has one attempt: lost means failed for good.
        assert_eq!(job.state, JobState::Failed);
    }
    // The lost worker's report is refused until it registers again...
    let poll = WorkerPoll {
        registration: None,
        running: vec![],
        finished: vec![AttemptReport {
            job: ids[0],
            token: tokens[0],
            result: ReportedResult::Succeeded {
                result: None,
                exit_code: Some(0),
            },
            started_at: None,
            usage: None,
            memory_exceeded: false,
        }],
        acked: None,
        ending: Vec::new(),
        progress: Vec::new(),
    };
    assert_eq!(
        sim.rm.worker_polled(lost, &poll, sim.now),
        Err(WorkerError::Lost(lost))
    );
    // ...and after it does, the stale token is refused.
    sim.rm
        .register_worker(
            WorkerRegistration {
                id: lost,
                name: "lost".into(),
                capacity: Resources::cores(2, 2000),
                labels: Default::default(),
                serves_commands: true,
                queues: Default::default(),
                handlers: Default::default(),
            },
            sim.now,
        )
        .unwrap();
    let out = sim.rm.worker_polled(lost, &poll, sim.now).unwrap();
    assert_eq!(out.refused[0].reason, RefusalReason::StaleAttempt);
    assert_eq!(sim.state(ids[0]), JobState::Failed);
    sim.check();
}

#[test]
fn a_lost_worker_is_listed_for_its_retention_then_forgotten_and_may_register_again() {
    let config = Config {
        lost_worker_retention: Duration::from_secs(60),
        ..Config::default()
    };
    let mut sim = Sim::new(config);
    sim.queue("root.q", 100.0, 100.0);
    let gone = sim.worker("gone", 1, 1000);
    let stays = sim.worker("stays", 1, 1000);
    // Heartbeat timeout 10 s: `gone` is due at 10 s and lost from then.
    sim.advance(Duration::from_secs(5));
    sim.poll_running(stays);
    sim.advance(Duration::from_secs(5));
    sim.pass();
    assert_eq!(sim.rm.worker(gone).unwrap().state, WorkerState::Lost);
    // Still listed until 60 s after it was due...
    sim.poll_running(stays);
    sim.advance(Duration::from_secs(59));
    sim.pass();
    assert_eq!(sim.rm.worker(gone).unwrap().state, WorkerState::Lost);
    // ...then forgotten: the cluster no longer counts or lists it.
    sim.advance(Duration::from_secs(1));
    sim.pass();
    assert!(sim.rm.worker(gone).is_none());
    assert!(sim.rm.worker(stays).is_some());
    let poll = WorkerPoll {
        registration: None,
        running: vec![],
        finished: vec![],
        acked: None,
        ending: Vec::new(),
        progress: Vec::new(),
    };
    assert_eq!(
        sim.rm.worker_polled(gone, &poll, sim.now),
        Err(WorkerError::Unknown(gone))
    );
    // The process, back, registers as after a server restart and takes work.
    sim.worker_back(gone, 1);
    let id = sim.submit_n("root.q", 1, one_core())[0];
    sim.pass();
    let job = sim.rm.job(id).unwrap();
    assert_eq!(job.state, JobState::Scheduled);
    assert_eq!(job.current_attempt().unwrap().worker, gone);
    sim.check();
}

#[test]
fn a_worker_lost_again_is_kept_for_the_retention_after_its_latest_loss() {
    let config = Config {
        lost_worker_retention: Duration::from_secs(60),
        ..Config::default()
    };
    let mut sim = Sim::new(config);
    sim.queue("root.q", 100.0, 100.0);
    let flaky = sim.worker("flaky", 1, 1000);
    sim.advance(Duration::from_secs(10));
    sim.pass();
    assert_eq!(sim.rm.worker(flaky).unwrap().state, WorkerState::Lost);
    // Back at 40 s, lost again at 50 s: the first loss's timer (70 s) must not drop it.
    sim.advance(Duration::from_secs(30));
    sim.worker_back(flaky, 1);
    sim.advance(Duration::from_secs(10));
    sim.pass();
    assert_eq!(sim.rm.worker(flaky).unwrap().state, WorkerState::Lost);
    sim.advance(Duration::from_secs(30));
    sim.pass();
    assert_eq!(sim.rm.worker(flaky).unwrap().state, WorkerState::Lost);
    sim.advance(Duration::from_secs(30));
    sim.pass();
    assert!(sim.rm.worker(flaky).is_none());
    sim.check();
}

#[test]
fn lost_worker_attempt_with_retries_left_runs_again_elsewhere() {
    let mut sim = Sim::new(Config::default());
    sim.queue("root.q", 100.0, 100.0);
    let first = sim.worker("first", 1, 1000);
    let mut req = sim.request("root.q", one_core());
    req.retry = Some(RetryPolicy {
        backoff_base: Duration::ZERO,
        ..retrying(2)
    });
    let id = sim.submit(req).unwrap().id();
    sim.pass();
    sim.poll_running(first);
    let second = sim.worker("second", 1, 1000);
    sim.advance(Duration::from_secs(10));
    sim.poll_running(second);
    sim.pass();
    let job = sim.rm.job(id).unwrap();
    assert_eq!(job.state, JobState::Scheduled);
    assert_eq!(job.current_attempt().unwrap().worker, second);
    assert_eq!(job.attempts.len(), 2);
    sim.check();
}

#[test]
fn attempt_handed_over_but_not_reported_is_treated_as_lost() {
    let (mut sim, w) = sim_with_queue();
    let mut req = sim.request("root.q", one_core());
    req.retry = Some(RetryPolicy {
        backoff_base: Duration::ZERO,
        ..retrying(2)
    });
    let id = sim.submit(req).unwrap().id();
    sim.pass();
    let answer = sim.take_assignments(w, &WorkerPoll::default());
    assert_eq!(answer.assignments.len(), 1);
    // The worker's next poll does not mention it (the answer never reached it).
    sim.rm
        .worker_polled(w, &WorkerPoll::default(), sim.now)
        .unwrap();
    let job = sim.rm.job(id).unwrap();
    assert_eq!(job.attempts[0].outcome, Some(AttemptOutcome::Lost));
    assert_eq!(job.state, JobState::Pending);
    sim.check();
}

#[test]
fn a_worker_running_a_stale_attempt_is_told_to_kill_it() {
    let (mut sim, w) = sim_with_queue();
    let id = sim.submit_n("root.q", 1, one_core())[0];
    sim.pass();
    sim.poll_running(w);
    let token = sim.rm.job(id).unwrap().current_token().unwrap();
    sim.rm.cancel(id, "by test", sim.now).unwrap();
    sim.drain_effects();
    let poll = WorkerPoll {
        registration: None,
        running: vec![(id, token)],
        finished: vec![],
        acked: None,
        ending: Vec::new(),
        progress: Vec::new(),
    };
    sim.rm.worker_polled(w, &poll, sim.now).unwrap();
    sim.drain_effects();
    let kinds: Vec<KillReason> = sim.log.kills.iter().map(|k| k.reason).collect();
    assert_eq!(kinds, vec![KillReason::Cancelled, KillReason::Stale]);
}

#[test]
fn idempotency_key_returns_the_original_job_within_retention() {
    let (mut sim, _) = sim_with_queue();
    sim.queue("root.other", 0.0, 100.0);
    let mut first = sim.request("root.q", one_core());
    first.idempotency_key = Some("order-42".into());
    let original = sim.submit(first.clone()).unwrap();
    assert!(matches!(original, Submitted::Created(_)));
    let mut again = first.clone();
    again.id = job_id(999_999);
    assert_eq!(
        sim.submit(again.clone()).unwrap(),
        Submitted::Existing(original.id())
    );
    assert_eq!(sim.rm.job_count(), 1);
    // Same key, other queue: a different job.
    let mut elsewhere = again.clone();
    elsewhere.queue = "root.other".into();
    assert!(matches!(
        sim.submit(elsewhere).unwrap(),
        Submitted::Created(_)
    ));
    // After the original finished and passed its retention, the key is free again.
    sim.rm.cancel(original.id(), "done", sim.now).unwrap();
    sim.advance(Duration::from_secs(24 * 3600));
    sim.pass();
    assert!(sim.rm.job(original.id()).is_none());
    assert!(
        sim.log
            .records
            .iter()
            .any(|r| matches!(r, Record::JobPurged { id, .. } if *id == original.id()))
    );
    again.id = job_id(1_000_000);
    assert!(matches!(sim.submit(again).unwrap(), Submitted::Created(_)));
}

#[test]
fn the_same_id_with_the_same_submission_is_the_same_job_even_in_a_stopped_queue() {
    let (mut sim, _) = sim_with_queue();
    let first = sim.request("root.q", one_core());
    let original = sim.submit(first.clone()).unwrap();
    assert!(matches!(original, Submitted::Created(_)));
    // A retry after a lost answer, once the queue stopped: still the same job.
    sim.rm.stop_queue("root.q").unwrap();
    assert_eq!(
        sim.submit(first.clone()).unwrap(),
        Submitted::Existing(original.id())
    );
    assert_eq!(sim.rm.job_count(), 1);
    // The same id for another submission, or from another submitter: refused.
    let mut other = first.clone();
    other.priority = Some(3);
    assert_eq!(
        sim.submit(other).unwrap_err(),
        SubmitError::DuplicateId(original.id())
    );
    let mut someone_else = first;
    someone_else.submitted_by = Some("mallory".into());
    assert_eq!(
        sim.submit(someone_else).unwrap_err(),
        SubmitError::DuplicateId(original.id())
    );
}

#[test]
fn delayed_job_waits_for_its_eta() {
    let (mut sim, w) = sim_with_queue();
    let mut req = sim.request("root.q", one_core());
    req.not_before = Some(sim.now.after(Duration::from_secs(60)));
    let id = sim.submit(req).unwrap().id();
    sim.pass();
    assert_eq!(sim.state(id), JobState::Pending);
    sim.advance(Duration::from_secs(59));
    sim.poll_running(w);
    sim.pass();
    assert_eq!(sim.state(id), JobState::Pending);
    assert_eq!(
        sim.rm.next_timer(),
        Some(sim.now.after(Duration::from_secs(1)))
    );
    sim.advance(Duration::from_secs(1));
    sim.pass();
    assert_eq!(sim.state(id), JobState::Scheduled);
}

#[test]
fn pending_job_past_its_expiry_expires_and_a_started_one_does_not() {
    let mut sim = Sim::new(Config::default());
    sim.queue("root.q", 100.0, 100.0);
    let mut late = sim.request("root.q", one_core());
    late.expires_at = Some(sim.now.after(Duration::from_secs(5)));
    let late = sim.submit(late).unwrap().id();
    sim.advance(Duration::from_secs(5));
    sim.pass();
    assert_eq!(sim.state(late), JobState::Expired);
    assert_eq!(sim.rm.queue("root.q").unwrap().stats().expired, 1);

    let w = sim.worker("w", 1, 1000);
    let mut started = sim.request("root.q", one_core());
    started.expires_at = Some(sim.now.after(Duration::from_secs(5)));
    let started = sim.submit(started).unwrap().id();
    sim.pass();
    sim.poll_running(w);
    sim.advance(Duration::from_secs(6));
    sim.poll_running(w);
    sim.pass();
    assert_eq!(sim.state(started), JobState::Running);
}

#[test]
fn cancel_pending_and_running_jobs() {
    let mut sim = Sim::new(Config::default());
    sim.queue("root.q", 100.0, 100.0);
    let w = sim.worker("w", 1, 1000);
    let ids = sim.submit_n("root.q", 2, one_core());
    sim.pass();
    sim.poll_running(w);
    let (running, pending) = (ids[0], ids[1]);
    assert_eq!(sim.state(running), JobState::Running);
    sim.rm.cancel(pending, "not needed", sim.now).unwrap();
    assert_eq!(sim.state(pending), JobState::Cancelled);
    let token = sim.rm.job(running).unwrap().current_token().unwrap();
    sim.rm.cancel(running, "not needed", sim.now).unwrap();
    sim.drain_effects();
    assert_eq!(sim.state(running), JobState::Cancelled);
    let kill = sim.log.kills.last().unwrap();
    assert_eq!(
        (kill.job, kill.token, kill.reason),
        (running, token, KillReason::Cancelled)
    );
    assert_eq!(sim.rm.worker(w).unwrap().used, Resources::default());
    assert_eq!(
        sim.rm.cancel(running, "again", sim.now),
        Err(JobError::AlreadyFinished {
            id: running,
            state: JobState::Cancelled
        })
    );
    assert_eq!(
        sim.rm.cancel(job_id(5), "x", sim.now),
        Err(JobError::NotFound(job_id(5)))
    );
    let stats = sim.rm.queue("root.q").unwrap().stats();
    assert_eq!((stats.cancelled, stats.pending), (2, 0));
    sim.check();
}

#[test]
fn stopped_queue_refuses_new_jobs_but_runs_what_it_has() {
    let (mut sim, _) = sim_with_queue();
    let held = sim.submit_n("root.q", 1, one_core())[0];
    sim.rm.stop_queue("root.q").unwrap();
    let req = sim.request("root.q", one_core());
    assert!(matches!(
        sim.submit(req),
        Err(SubmitError::NotAccepting { .. })
    ));
    sim.pass();
    assert_eq!(sim.state(held), JobState::Scheduled);
    sim.rm.start_queue("root.q").unwrap();
    let req = sim.request("root.q", one_core());
    assert!(sim.submit(req).is_ok());
}

#[test]
fn draining_queue_starts_nothing_until_started_again() {
    let mut sim = Sim::new(Config::default());
    sim.queue("root.q", 100.0, 100.0);
    sim.queue("root.other", 0.0, 100.0);
    let w = sim.worker("w", 4, 4000);

    // Before draining: one attempt runs, one runs and will fail into a retry, two wait
    // (submitted, never passed), and one waits for an ETA that falls inside the drain.
    let running = sim.submit_n("root.q", 1, one_core())[0];
    let mut req = sim.request("root.q", one_core());
    req.retry = Some(retrying(2));
    let retried = sim.submit(req).unwrap().id();
    sim.pass();
    let started = sim.poll_running(w);
    assert_eq!(started.len(), 2);
    assert_eq!(sim.state(running), JobState::Running);
    assert_eq!(sim.state(retried), JobState::Running);
    let queued_req = sim.request("root.q", one_core());
    let queued = [
        sim.submit(queued_req.clone()).unwrap().id(),
        sim.submit_n("root.q", 1, one_core())[0],
    ];
    let mut delayed = sim.request("root.q", one_core());
    delayed.not_before = Some(sim.now.after(Duration::from_secs(30)));
    let delayed = sim.submit(delayed).unwrap().id();
    let waiting: Vec<JobId> = queued.iter().copied().chain([delayed, retried]).collect();

    sim.rm.drain_queue("root.q").unwrap();
    assert_eq!(
        sim.rm.queue("root.q").unwrap().state(),
        QueueState::Draining
    );

    // While draining: the running attempt that fails goes back to waiting (its
    // backoff ends inside the drain); a new submission is refused and leaves no job; the
    // same submission again is the job it already is; another queue still takes work.
    sim.report(w, retried, failed("boom"));
    assert_eq!(sim.state(retried), JobState::Pending);
    let refused = sim.request("root.q", one_core());
    let refused_id = refused.id;
    assert!(matches!(
        sim.submit(refused),
        Err(SubmitError::NotAccepting {
            state: QueueState::Draining,
            ..
        })
    ));
    assert!(
        sim.rm.job(refused_id).is_none(),
        "a refused job is not kept"
    );
    assert_eq!(
        sim.submit(queued_req).unwrap(),
        Submitted::Existing(queued[0])
    );
    let elsewhere = sim.submit_n("root.other", 1, one_core())[0];

    // A worker with room polls again and again for a minute of simulated time (past the
    // delayed job's ETA and the retry's backoff): nothing of the draining queue starts.
    let mut handed = Vec::new();
    for round in 0..12 {
        sim.advance(Duration::from_secs(5));
        sim.pass();
        handed.extend(sim.poll_running(w).into_iter().map(|a| a.job));
        for id in &waiting {
            assert_eq!(
                sim.state(*id),
                JobState::Pending,
                "round {round}: draining, so {id:?} does not start"
            );
        }
        let free = {
            let worker = sim.rm.worker(w).unwrap();
            worker.capacity.cpu.0 - worker.used.cpu.0
        };
        assert!(
            free >= 2000,
            "round {round}: the worker has room ({free} m)"
        );
    }
    assert_eq!(
        handed,
        vec![elsewhere],
        "the worker took work from the running queue, none from the draining one"
    );
    assert!(
        sim.log
            .assignments
            .iter()
            .all(|a| !waiting.contains(&a.job) || a.job == retried && a.attempt == 1),
        "no attempt of a waiting job was handed out while draining"
    );
    // Running attempts still finish while draining.
    sim.succeed(w, running);
    assert_eq!(
        sim.state(running),
        JobState::Succeeded,
        "running attempts finish"
    );
    sim.succeed(w, elsewhere);
    sim.pass();
    assert!(sim.poll_running(w).is_empty());
    assert!(waiting.iter().all(|id| sim.state(*id) == JobState::Pending));

    // Started again: every waiting job starts, the retry as its second attempt.
    sim.rm.start_queue("root.q").unwrap();
    sim.pass();
    let mut got: Vec<JobId> = sim.poll_running(w).into_iter().map(|a| a.job).collect();
    got.sort();
    let mut want = waiting.clone();
    want.sort();
    assert_eq!(got, want, "started again: everything waiting starts");
    for id in &waiting {
        assert_eq!(sim.state(*id), JobState::Running);
    }
    assert_eq!(
        sim.rm
            .job(retried)
            .unwrap()
            .current_attempt()
            .unwrap()
            .number,
        2
    );
    sim.check();
}

#[test]
fn deleting_a_queue_with_jobs_needs_force_and_cancels_them_with_a_reason() {
    let (mut sim, w) = sim_with_queue();
    let ids = sim.submit_n("root.q", 3, Resources::cores(2, 100));
    sim.pass();
    sim.poll_running(w);
    let err = sim.rm.delete_queue("root.q", false, sim.now).unwrap_err();
    assert_eq!(
        err.to_string(),
        "queue `root.q` holds 3 unfinished job(s); delete with force to cancel them"
    );
    assert_eq!(sim.rm.delete_queue("root.q", true, sim.now), Ok(3));
    sim.drain_effects();
    for id in &ids {
        let job = sim.rm.job(*id).unwrap();
        assert_eq!(job.state, JobState::Cancelled);
        assert!(
            matches!(job.termination.as_deref(), Some(Termination::Cancelled { reason }) if reason == "queue root.q was deleted")
        );
        assert_eq!(sim.rm.queue_path(job.queue).unwrap().as_str(), "root.q");
    }
    assert_eq!(
        sim.log.kills.len(),
        2,
        "the two running attempts are killed"
    );
    assert!(sim.rm.queue("root.q").is_err());
    assert_eq!(sim.rm.worker(w).unwrap().used, Resources::default());
    // The capacity it held is free for a new queue.
    sim.queue("root.fresh", 100.0, 100.0);
    sim.check();
}

#[test]
fn queue_changes_are_validated_with_precise_errors() {
    let mut sim = Sim::new(Config::default());
    sim.queue("root.a", 70.0, 100.0);
    let err = sim
        .rm
        .create_queue("root.b", QueueConfig::with_capacity(40.0, 100.0))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "capacity of children of `root` would sum to 110% (max 100%)"
    );
    let err = sim
        .rm
        .create_queue("root.x.y", QueueConfig::default())
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("queue `root.x` does not exist (known: root, root.a"),
        "{err}"
    );
    let err = sim
        .rm
        .create_queue("root.Bad", QueueConfig::default())
        .unwrap_err();
    assert!(matches!(err, QueueError::InvalidPath { .. }), "{err}");
    let err = sim
        .rm
        .create_queue("root.a", QueueConfig::default())
        .unwrap_err();
    assert_eq!(
        err,
        QueueError::AlreadyExists(QueuePath::parse("root.a").unwrap())
    );
    let cfg = QueueConfig {
        ordering: "random".into(),
        ..QueueConfig::default()
    };
    let err = sim.rm.create_queue("root.c", cfg).unwrap_err();
    assert!(
        err.to_string().contains(
            "unknown ordering policy `random` (known: fifo, priority-fifo, smallest-first)"
        ),
        "{err}"
    );
    let err = sim
        .rm
        .update_queue(
            "root.a",
            &QueueUpdate {
                capacity: Some(101.0),
                ..QueueUpdate::default()
            },
        )
        .unwrap_err();
    assert!(err.to_string().contains("capacity"), "{err}");
    assert!(matches!(
        sim.rm.delete_queue("root", true, sim.now),
        Err(QueueError::Root(_))
    ));
    // A leaf holding jobs cannot grow children.
    sim.submit_n("root.a", 1, one_core());
    let err = sim
        .rm
        .create_queue("root.a.child", QueueConfig::default())
        .unwrap_err();
    assert_eq!(
        err,
        QueueError::ParentHoldsJobs(QueuePath::parse("root.a").unwrap())
    );
}

#[test]
fn bad_submissions_are_refused_with_the_field_named_and_nothing_stored() {
    let mut sim = Sim::new(Config::default());
    sim.queue("root.eng", 50.0, 100.0);
    sim.queue("root.eng.ml", 100.0, 100.0);
    let cases: Vec<(SubmitRequest, &str)> = vec![
        (
            sim.request("root.etl", one_core()),
            "queue `root.etl` does not exist (known: root, root.eng, root.eng.ml)",
        ),
        (
            sim.request("root.eng", one_core()),
            "queue `root.eng` has child queues; submit to one of its leaves",
        ),
        (
            sim.request("etl", one_core()),
            "queue path `etl` is invalid",
        ),
        (
            sim.request("root.eng.ml", Resources::default()),
            "resources: must have some cpu or memory",
        ),
        (
            sim.request(
                "root.eng.ml",
                Resources::new(Millicores(u64::MAX), MiB(1), 0),
            ),
            "resources.cpu: ",
        ),
        (
            {
                let mut r = sim.request("root.eng.ml", one_core());
                r.kind = JobKind::command(Vec::<String>::new());
                r
            },
            "kind.argv: must name a program",
        ),
        (
            {
                let mut r = sim.request("root.eng.ml", one_core());
                r.retry = Some(RetryPolicy {
                    max_attempts: 0,
                    ..RetryPolicy::default()
                });
                r
            },
            "retry: max_attempts must be at least 1",
        ),
        (
            {
                let mut r = sim.request("root.eng.ml", one_core());
                r.expires_at = Some(Timestamp(1));
                r
            },
            "expires_at_ms: is already in the past",
        ),
    ];
    for (req, expected) in cases {
        let err = sim.submit(req).unwrap_err();
        assert!(
            err.to_string().starts_with(expected),
            "got `{err}`, want `{expected}`"
        );
    }
    assert_eq!(sim.rm.job_count(), 0);
    let req = sim.request("root.eng.ml", one_core());
    let id = req.id;
    sim.submit(req.clone()).unwrap();
    // The same id for a different submission (the same one again is the same job).
    let mut different = req;
    different.priority = Some(1);
    assert_eq!(sim.submit(different), Err(SubmitError::DuplicateId(id)));
}

#[test]
fn max_pending_refuses_submissions_beyond_the_limit() {
    let (mut sim, _) = sim_with_queue();
    sim.rm
        .update_queue(
            "root.q",
            &QueueUpdate {
                max_pending: Some(Some(2)),
                ..QueueUpdate::default()
            },
        )
        .unwrap();
    sim.submit_n("root.q", 2, one_core());
    let req = sim.request("root.q", one_core());
    let err = sim.submit(req).unwrap_err();
    assert_eq!(
        err.to_string(),
        "queue `root.q` has 2 pending jobs (max_pending 2)"
    );
}

#[test]
fn bad_worker_registrations_are_refused() {
    let mut sim = Sim::new(Config::default());
    let reg = |name: &str, capacity: Resources| WorkerRegistration {
        id: WorkerId(uuid::Uuid::from_u128(1)),
        name: name.into(),
        capacity,
        labels: Default::default(),
        serves_commands: true,
        queues: Default::default(),
        handlers: Default::default(),
    };
    let err = sim
        .rm
        .register_worker(reg("", one_core()), sim.now)
        .unwrap_err();
    assert!(err.to_string().starts_with("name:"), "{err}");
    let err = sim
        .rm
        .register_worker(reg("w", Resources::default()), sim.now)
        .unwrap_err();
    assert!(err.to_string().starts_with("capacity:"), "{err}");
    assert!(sim.rm.workers().next().is_none());
    let unknown = WorkerId(uuid::Uuid::from_u128(77));
    assert_eq!(
        sim.rm
            .worker_polled(unknown, &WorkerPoll::default(), sim.now),
        Err(WorkerError::Unknown(unknown))
    );
}

#[test]
fn drained_worker_gets_nothing_new_and_finishes_what_it_runs() {
    let (mut sim, w) = sim_with_queue();
    let first = sim.submit_n("root.q", 1, one_core())[0];
    sim.pass();
    sim.poll_running(w);
    sim.rm.drain_worker(w).unwrap();
    let second = sim.submit_n("root.q", 1, one_core())[0];
    sim.pass();
    assert_eq!(sim.state(second), JobState::Pending);
    sim.succeed(w, first);
    assert_eq!(sim.state(first), JobState::Succeeded);
    assert_eq!(sim.rm.worker(w).unwrap().state, WorkerState::Draining);
}

#[test]
fn an_undrained_worker_takes_new_work_again() {
    let (mut sim, w) = sim_with_queue();
    sim.rm.drain_worker(w).unwrap();
    let waiting = sim.submit_n("root.q", 1, one_core())[0];
    sim.pass();
    assert_eq!(sim.state(waiting), JobState::Pending);
    assert_eq!(
        sim.rm.total().cpu,
        Millicores(0),
        "a drained idle worker offers nothing"
    );

    sim.rm.undrain_worker(w).unwrap();
    assert_eq!(sim.rm.worker(w).unwrap().state, WorkerState::Active);
    assert_eq!(sim.rm.total().cpu, Millicores(4000));
    sim.pass();
    assert_eq!(sim.state(waiting), JobState::Scheduled);
    // Undraining an active worker changes nothing; a lost or unknown one is refused.
    sim.rm.undrain_worker(w).unwrap();
    let unknown = WorkerId(uuid::Uuid::from_u128(77));
    assert_eq!(
        sim.rm.undrain_worker(unknown),
        Err(WorkerError::Unknown(unknown))
    );
    sim.check();
}

#[test]
fn queue_counters_follow_the_jobs() {
    let (mut sim, w) = sim_with_queue();
    let ids = sim.submit_n("root.q", 3, one_core());
    sim.advance(Duration::from_millis(250));
    sim.pass();
    sim.poll_running(w);
    sim.advance(Duration::from_millis(1000));
    sim.succeed(w, ids[0]);
    sim.report(w, ids[1], failed("x"));
    let view = sim.rm.queue("root.q").unwrap();
    let stats = view.stats();
    assert_eq!(
        (
            stats.submitted,
            stats.pending,
            stats.succeeded,
            stats.failed
        ),
        (3, 0, 1, 1)
    );
    assert_eq!(view.running(), 1);
    assert_eq!(stats.wait.mean(), Some(Duration::from_millis(250)));
    assert_eq!(stats.run.max_ms, 1000);
    let root = sim.rm.queue("root").unwrap();
    assert_eq!(root.stats().submitted, 3);
    assert_eq!(root.running(), 1);
}

#[test]
fn command_jobs_only_go_to_workers_that_run_commands() {
    let mut sim = Sim::new(Config::default());
    sim.queue("root.q", 100.0, 100.0);
    let fn_only = WorkerId(uuid::Uuid::from_u128(50));
    sim.rm
        .register_worker(
            WorkerRegistration {
                id: fn_only,
                name: "functions".into(),
                capacity: Resources::cores(4, 4000),
                labels: Default::default(),
                serves_commands: false,
                queues: Default::default(),
                handlers: ["lqsm.echo".to_string()].into(),
            },
            sim.now,
        )
        .unwrap();
    let mut cmd = sim.request("root.q", one_core());
    cmd.kind = JobKind::command(["true"]);
    let cmd = sim.submit(cmd).unwrap().id();
    let mut other = sim.request("root.q", one_core());
    other.kind = JobKind::function("billing.invoice", serde_json::Value::Null);
    let other = sim.submit(other).unwrap().id();
    let mut echo = sim.request("root.q", one_core());
    echo.kind = JobKind::function("lqsm.echo", serde_json::json!([1]));
    let echo = sim.submit(echo).unwrap().id();
    sim.pass();
    assert_eq!(sim.state(cmd), JobState::Pending);
    assert_eq!(sim.state(other), JobState::Pending);
    assert_eq!(
        sim.state(echo),
        JobState::Scheduled,
        "jobs nobody can run do not block the queue"
    );
    // A worker that runs commands arrives: the set-aside command job runs.
    sim.worker("commands", 1, 1000);
    sim.pass();
    assert_eq!(sim.state(cmd), JobState::Scheduled);
    assert_eq!(sim.state(other), JobState::Pending);
    sim.check();
}

#[test]
fn a_worker_given_queues_runs_only_their_jobs_and_those_of_queues_under_them() {
    let mut sim = Sim::new(Config::default());
    sim.queue("root.eng", 50.0, 100.0);
    sim.queue("root.eng.ml", 100.0, 100.0);
    sim.queue("root.ops", 50.0, 100.0);
    let eng_worker = WorkerId(uuid::Uuid::from_u128(60));
    sim.rm
        .register_worker(
            WorkerRegistration {
                id: eng_worker,
                name: "eng".into(),
                capacity: Resources::cores(4, 4000),
                labels: Default::default(),
                serves_commands: true,
                handlers: ["*".to_string()].into(),
                queues: [QueuePath::parse("root.eng").unwrap()].into(),
            },
            sim.now,
        )
        .unwrap();
    let ml = sim.submit_n("root.eng.ml", 2, one_core());
    let ops = sim.submit_n("root.ops", 2, one_core());
    sim.pass();
    for job in &ml {
        assert_eq!(
            sim.state(*job),
            JobState::Scheduled,
            "root.eng.ml is under root.eng"
        );
    }
    for job in &ops {
        assert_eq!(
            sim.state(*job),
            JobState::Pending,
            "the only worker does not serve root.ops, though it has room"
        );
    }
    let eng_jobs: Vec<JobId> = sim.poll_running(eng_worker).iter().map(|a| a.job).collect();
    assert_eq!(eng_jobs.len(), 2);
    assert!(eng_jobs.iter().all(|job| ml.contains(job)));
    // A worker of every queue arrives: root.ops runs there.
    let any = sim.worker("any", 4, 4000);
    sim.pass();
    let any_jobs: Vec<JobId> = sim.poll_running(any).iter().map(|a| a.job).collect();
    assert_eq!(any_jobs.len(), 2);
    assert!(any_jobs.iter().all(|job| ops.contains(job)));
    // More ops work while the all-queues worker is full waits for it, with the eng
    // worker idle beside it.
    let more_ops = sim.submit_n("root.ops", 3, Resources::cores(2, 100));
    sim.pass();
    assert_eq!(sim.state(more_ops[0]), JobState::Scheduled);
    assert_eq!(sim.state(more_ops[1]), JobState::Pending);
    sim.check();
}

#[test]
fn a_countdown_counts_from_the_jobs_submission_time() {
    let mut sim = Sim::new(Config::default());
    sim.queue("root.q", 100.0, 100.0);
    sim.worker("w", 2, 2000);
    let mut req = sim.request("root.q", one_core());
    req.delay = Some(Duration::from_secs(1));
    // An ETA earlier than the countdown's end: the later of the two holds.
    req.not_before = Some(sim.now.after(Duration::from_millis(10)));
    let id = sim.submit(req).unwrap().id();
    let submitted_at = sim.rm.job(id).unwrap().submitted_at;
    assert_eq!(submitted_at, sim.now);
    sim.advance(Duration::from_millis(999));
    sim.pass();
    assert_eq!(sim.state(id), JobState::Pending);
    sim.advance(Duration::from_millis(1));
    sim.pass();
    assert_eq!(sim.state(id), JobState::Scheduled);

    // An expiry that comes before the countdown ends could never let it run.
    let mut req = sim.request("root.q", one_core());
    req.delay = Some(Duration::from_secs(5));
    req.expires_at = Some(sim.now.after(Duration::from_secs(2)));
    match sim.submit(req) {
        Err(SubmitError::InvalidField { field, .. }) => assert_eq!(field, "expires_at_ms"),
        other => panic!("expected a refusal naming expires_at_ms, got {other:?}"),
    }
    sim.check();
}

#[test]
fn cancelling_a_blocked_head_lets_the_next_job_run() {
    let mut sim = Sim::new(Config::default());
    sim.queue("root.q", 100.0, 100.0);
    sim.worker("w", 2, 2000);
    let first = sim.submit_n("root.q", 1, one_core())[0];
    let big = sim.submit_n("root.q", 1, Resources::cores(2, 100))[0];
    let small = sim.submit_n("root.q", 1, one_core())[0];
    sim.pass();
    assert_eq!(sim.state(first), JobState::Scheduled);
    assert_eq!(
        sim.state(small),
        JobState::Pending,
        "FIFO: the big head waits, so does the rest"
    );
    sim.rm.cancel(big, "too big", sim.now).unwrap();
    sim.pass();
    assert_eq!(sim.state(small), JobState::Scheduled);
}

#[test]
fn stopping_a_draining_queue_resumes_dispatch() {
    let (mut sim, _) = sim_with_queue();
    let id = sim.submit_n("root.q", 1, one_core())[0];
    sim.rm.drain_queue("root.q").unwrap();
    sim.pass();
    assert_eq!(sim.state(id), JobState::Pending);
    sim.rm.stop_queue("root.q").unwrap();
    sim.pass();
    assert_eq!(sim.state(id), JobState::Scheduled);
}

#[test]
fn draining_the_only_worker_big_enough_sets_its_jobs_aside() {
    let mut sim = Sim::new(Config::default());
    sim.queue("root.q", 100.0, 100.0);
    let big = sim.worker_with("big", Resources::cores(8, 8000), &[("size", "big")]);
    sim.worker("small", 2, 2000);
    let mut filler = sim.request("root.q", one_core());
    filler.selector.insert("size".into(), "big".into());
    sim.submit(filler).unwrap();
    let huge = sim.submit_n("root.q", 1, Resources::cores(8, 100))[0];
    let tiny = sim.submit_n("root.q", 1, one_core())[0];
    sim.pass();
    assert_eq!(
        sim.state(tiny),
        JobState::Pending,
        "FIFO: tiny waits behind the 8-core head"
    );
    sim.rm.drain_worker(big).unwrap();
    sim.pass();
    assert_eq!(
        sim.state(huge),
        JobState::Pending,
        "nothing can run it now; it is set aside"
    );
    assert_eq!(
        sim.state(tiny),
        JobState::Scheduled,
        "and no longer blocks the queue"
    );
}

#[test]
fn an_attempt_in_an_answer_the_worker_has_not_seen_is_not_lost() {
    let (mut sim, w) = sim_with_queue();
    let first = sim.submit_n("root.q", 1, one_core())[0];
    sim.pass();
    let answer = sim.take_assignments(w, &WorkerPoll::default());
    assert_eq!(answer.assignments.len(), 1);
    let seen = answer.seq;
    let token = sim.rm.job(first).unwrap().current_token().unwrap();
    // A second answer carries another attempt; the worker polls again before it
    // arrives (its long-poll was replaced), acknowledging only the first answer.
    let second = sim.submit_n("root.q", 1, one_core())[0];
    sim.pass();
    let listed = WorkerPoll {
        registration: None,
        running: vec![(first, token)],
        finished: vec![],
        acked: Some(seen),
        ending: Vec::new(),
        progress: Vec::new(),
    };
    let answer = sim.take_assignments(w, &listed);
    assert_eq!(answer.assignments.len(), 1);
    let early = WorkerPoll {
        registration: None,
        running: vec![(first, token)],
        finished: vec![],
        acked: Some(seen),
        ending: Vec::new(),
        progress: Vec::new(),
    };
    sim.rm.worker_polled(w, &early, sim.now).unwrap();
    assert_eq!(
        sim.state(second),
        JobState::Scheduled,
        "not yet expected, so not lost"
    );
    // Once the worker has seen that answer and still does not list it, it is lost.
    let late = WorkerPoll {
        registration: None,
        running: vec![(first, token)],
        finished: vec![],
        acked: Some(answer.seq),
        ending: Vec::new(),
        progress: Vec::new(),
    };
    sim.rm.worker_polled(w, &late, sim.now).unwrap();
    let job = sim.rm.job(second).unwrap();
    assert_eq!(job.attempts[0].outcome, Some(AttemptOutcome::Lost));
    sim.check();
}

#[test]
fn a_function_job_without_resources_asks_a_hundredth_of_a_core_and_a_command_a_whole_one() {
    let (mut sim, w) = sim_with_queue();
    let function =
        SubmitRequest::function(job_id(900), "root.q", "lqsm.noop", serde_json::Value::Null);
    let command = SubmitRequest::new(job_id(901), "root.q", JobKind::command(["true"]));
    sim.submit(function).unwrap();
    sim.submit(command).unwrap();
    let request = |sim: &Sim, n: u128| sim.rm.job(job_id(n)).unwrap().spec.request.clone();
    assert_eq!(
        request(&sim, 900),
        Resources::new(Millicores(10), MiB(16), 0)
    );
    assert_eq!(request(&sim, 901), Resources::cores(1, 256));

    // A 4-cpu, 4000-MiB worker runs hundreds of default function jobs at once, not 4.
    for n in 0..300 {
        let req = SubmitRequest::function(
            job_id(1000 + n),
            "root.q",
            "lqsm.noop",
            serde_json::Value::Null,
        );
        sim.submit(req).unwrap();
    }
    sim.pass();
    let worker = sim.rm.worker(w).unwrap();
    // The command (256 MiB) and 234 functions (16 MiB each) fill its memory.
    assert_eq!(worker.used.memory, MiB(4000), "{worker:?}");
    assert_eq!(worker.attempt_count(), 235, "{worker:?}");
}

#[test]
fn a_running_or_pending_limit_of_zero_means_no_limit() {
    let (mut sim, _) = sim_with_queue();
    let zero = QueueUpdate {
        max_running: Some(Some(0)),
        max_pending: Some(Some(0)),
        ..QueueUpdate::default()
    };
    sim.rm.update_queue("root.q", &zero).unwrap();
    let config = sim.rm.queue("root.q").unwrap().config().clone();
    assert_eq!(
        (config.max_running, config.max_pending),
        (None, None),
        "kept as none"
    );
    let ids = sim.submit_n("root.q", 3, one_core());
    sim.pass();
    assert!(ids.iter().all(|id| sim.state(*id) == JobState::Scheduled));
    let mut created = QueueConfig::with_capacity(0.0, 100.0);
    created.max_running = Some(0);
    sim.rm.create_queue("root.z", created).unwrap();
    assert_eq!(
        sim.rm.queue("root.z").unwrap().config().running_limit(),
        None
    );
    assert_eq!(queues::limit(0_u32), None);
    assert_eq!(queues::limit(5_u32), Some(5));
}

#[test]
fn every_resource_vector_is_checked_against_the_same_bounds_naming_the_wire_field() {
    let mut sim = Sim::new(Config::default());
    let mut defaults = QueueConfig::with_capacity(10.0, 100.0);
    defaults.defaults.request = Resources::new(Millicores(1000), MiB(1 << 41), 0);
    let err = sim.rm.create_queue("root.a", defaults).unwrap_err();
    assert!(
        err.to_string().contains("defaults.resources.memory_mib"),
        "{err}"
    );
    let reg = WorkerRegistration {
        id: WorkerId(uuid::Uuid::from_u128(5)),
        name: "w".into(),
        capacity: Resources::new(Millicores(1000), MiB(1), 1 << 17),
        labels: Default::default(),
        serves_commands: true,
        queues: Default::default(),
        handlers: Default::default(),
    };
    let err = sim.rm.register_worker(reg, sim.now).unwrap_err();
    assert!(
        matches!(&err, WorkerError::InvalidField { field, .. } if field == "capacity.gpu"),
        "{err}"
    );
    let mut huge = one_core();
    huge.set_custom(ResourceName::new("licences").unwrap(), 1 << 41);
    assert_eq!(
        huge.check("resources").unwrap_err().field,
        "resources.custom.licences"
    );
}

#[test]
fn a_missing_queue_in_a_large_tree_is_reported_with_the_children_of_its_nearest_ancestor() {
    let mut sim = Sim::new(Config::default());
    sim.queue("root.users", 50.0, 100.0);
    for i in 0..100 {
        sim.queue(&format!("root.users.u{i:03}"), 0.5, 100.0);
    }
    let Err(err) = sim.rm.queue("root.users.u1000.inbox") else {
        panic!("root.users.u1000.inbox does not exist");
    };
    let err = err.to_string();
    assert!(
        err.starts_with(
            "queue `root.users.u1000.inbox` does not exist (known: root.users.u000, root.users.u001"
        ),
        "{err}"
    );
    assert!(err.ends_with("and 92 more)"), "{err}");
    assert!(sim.rm.find_queue("root.users.u1000").is_none());
    assert!(sim.rm.find_queue("root.users.u099").is_some());
}

#[test]
fn a_bulk_cancel_takes_every_unfinished_job_matching_all_its_criteria() {
    let (mut sim, _) = sim_with_queue();
    sim.queue("root.team", 0.0, 100.0);
    sim.queue("root.team.etl", 0.0, 100.0);
    sim.queue("root.team.ml", 0.0, 100.0);
    let submit = |sim: &mut Sim, queue: &str, tag: Option<&str>| {
        let mut req = sim.request(queue, Resources::cores(1000, 1));
        req.tags = tag.map(|t| vec![t.to_owned()]).unwrap_or_default();
        sim.submit(req).unwrap().id()
    };
    let etl_nightly = submit(&mut sim, "root.team.etl", Some("nightly"));
    let etl_other = submit(&mut sim, "root.team.etl", None);
    let ml_nightly = submit(&mut sim, "root.team.ml", Some("nightly"));
    let elsewhere = submit(&mut sim, "root.q", Some("nightly"));
    let finished = submit(&mut sim, "root.team.ml", Some("nightly"));
    sim.rm.cancel(finished, "earlier", sim.now).unwrap();

    // The subtree of root.team, with the tag: two jobs; the finished one is left alone.
    let selection = JobSelection {
        queue: Some("root.team".into()),
        tag: Some("nightly".into()),
        state: None,
    };
    let mut cancelled = sim.rm.cancel_selected(&selection, "bulk", sim.now).unwrap();
    cancelled.sort();
    let mut want = vec![etl_nightly, ml_nightly];
    want.sort();
    assert_eq!(cancelled, want);
    for id in [etl_nightly, ml_nightly] {
        assert_eq!(sim.rm.job(id).unwrap().state, JobState::Cancelled);
    }
    for id in [etl_other, elsewhere] {
        assert_eq!(sim.rm.job(id).unwrap().state, JobState::Pending);
    }
    // By state alone.
    let pending = JobSelection {
        state: Some(JobState::Pending),
        ..JobSelection::default()
    };
    assert_eq!(
        sim.rm
            .cancel_selected(&pending, "bulk", sim.now)
            .unwrap()
            .len(),
        2
    );

    // Refused, cancelling nothing: no criterion, a finished state, an unknown queue.
    assert_eq!(
        sim.rm
            .cancel_selected(&JobSelection::default(), "x", sim.now),
        Err(SelectionError::Empty)
    );
    let finished_state = JobSelection {
        state: Some(JobState::Succeeded),
        ..JobSelection::default()
    };
    assert!(matches!(
        sim.rm.cancel_selected(&finished_state, "x", sim.now),
        Err(SelectionError::FinishedState("succeeded"))
    ));
    let unknown = JobSelection {
        queue: Some("root.nope".into()),
        ..JobSelection::default()
    };
    assert!(matches!(
        sim.rm.cancel_selected(&unknown, "x", sim.now),
        Err(SelectionError::Queue(_))
    ));
}

#[test]
fn a_job_that_asks_to_be_retried_waits_its_countdown_and_uses_an_attempt() {
    // The worker stays silent through the countdown.
    let mut sim = Sim::new(Config {
        heartbeat_timeout: Duration::from_secs(3600),
        ..Config::default()
    });
    sim.queue("root.q", 100.0, 100.0);
    let w = sim.worker("w", 4, 4000);
    let mut req = sim.request("root.q", support::one_core());
    req.retry = Some(RetryPolicy {
        max_attempts: 2,
        ..RetryPolicy::default()
    });
    let id = sim.submit(req).unwrap().id();
    sim.pass();
    sim.poll_running(w);
    let retry = ReportedResult::Retry {
        countdown: Some(Duration::from_secs(30)),
        message: "the gateway is busy".into(),
    };
    sim.report(w, id, retry.clone());
    let job = sim.rm.job(id).unwrap();
    assert_eq!(job.state, JobState::Pending);
    assert_eq!(job.failures, 1);
    assert_eq!(job.not_before, Some(sim.now.after(Duration::from_secs(30))));
    // Not before the countdown.
    sim.advance(Duration::from_secs(29));
    sim.pass();
    assert!(sim.poll_running(w).is_empty());
    sim.advance(Duration::from_secs(1));
    sim.pass();
    assert_eq!(sim.poll_running(w).len(), 1);
    // No attempt left: the job fails, saying it asked for a retry.
    sim.report(w, id, retry);
    let job = sim.rm.job(id).unwrap();
    assert_eq!(job.state, JobState::Failed);
    assert!(matches!(
        job.termination.as_deref(),
        Some(Termination::Failed {
            last: AttemptOutcome::RetryRequested { .. }
        })
    ));
}

#[test]
fn a_running_job_reports_its_progress_which_is_kept_and_restored() {
    let mut sim = Sim::new(Config::default());
    sim.queue("root.q", 100.0, 100.0);
    let w = sim.worker("w", 4, 4000);
    let req = sim.request("root.q", support::one_core());
    let id = sim.submit(req).unwrap().id();
    sim.pass();
    sim.poll_running(w);
    let token = sim.rm.job(id).unwrap().current_token().unwrap();
    let state = lqsm_core::jobs::Json::from_value(&serde_json::json!({"pct": 40}));
    let poll = WorkerPoll {
        registration: None,
        running: vec![(id, token)],
        finished: vec![],
        acked: None,
        ending: Vec::new(),
        progress: vec![
            (id, token, state.clone()),
            // A stale attempt's progress is ignored.
            (
                id,
                FencingToken(token.0 + 100),
                lqsm_core::jobs::Json::null(),
            ),
        ],
    };
    sim.rm.worker_polled(w, &poll, sim.now).unwrap();
    sim.drain_effects();
    assert_eq!(sim.rm.job_record(id).unwrap().progress, Some(state.clone()));
    assert!(sim.log.records.contains(&Record::Job(id)));
    // The same state again writes nothing.
    let before = sim.log.records.len();
    sim.rm.worker_polled(w, &poll, sim.now).unwrap();
    sim.drain_effects();
    assert_eq!(sim.log.records.len(), before);
    sim.restart(Duration::from_secs(30));
    assert_eq!(sim.rm.job_record(id).unwrap().progress, Some(state));
}

/// Found by fuzzing: a worker registering again smaller than its running attempts hold
/// was taken at its word, and left over-committed. The same id is the same process
/// with the same attempts, so such a registration is refused, naming `capacity`, and
/// changes nothing; a size that holds them is taken.
#[test]
fn a_worker_registering_again_smaller_than_its_attempts_is_refused() {
    let mut sim = Sim::new(Config::default());
    sim.queue("root.q", 100.0, 100.0);
    let worker = sim.worker("w", 4, 4000);
    let jobs = sim.submit_n("root.q", 3, one_core());
    sim.pass();
    assert_eq!(sim.rm.worker(worker).unwrap().attempt_count(), 3);
    let smaller = WorkerRegistration {
        id: worker,
        name: "w".into(),
        capacity: Resources::cores(2, 4000),
        labels: Default::default(),
        serves_commands: true,
        queues: Default::default(),
        handlers: ["*".to_string()].into(),
    };
    let err = sim
        .rm
        .register_worker(smaller.clone(), sim.now)
        .unwrap_err();
    match &err {
        WorkerError::InvalidField { field, reason } => {
            assert_eq!(field, "capacity");
            assert!(reason.contains("3 cpu, 300 MiB"), "{reason}");
        }
        other => panic!("unexpected {other:?}"),
    }
    let after = sim.rm.worker(worker).unwrap();
    assert_eq!(after.capacity, Resources::cores(4, 4000), "nothing changed");
    assert_eq!(after.attempt_count(), 3);
    assert_eq!(sim.rm.total(), &Resources::cores(4, 4000));
    sim.check();
    // Exactly what the attempts hold is enough; the jobs keep their attempts.
    let enough = WorkerRegistration {
        capacity: Resources::cores(3, 4000),
        ..smaller
    };
    sim.rm.register_worker(enough, sim.now).unwrap();
    assert_eq!(sim.rm.total(), &Resources::cores(3, 4000));
    for job in jobs {
        assert_eq!(sim.state(job), JobState::Scheduled);
    }
    sim.check();
}
