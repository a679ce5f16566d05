//! Steps of the wall clock (`ResourceManager::clock_jumped`): liveness is measured in
//! durations, so a jump either way neither makes a healthy worker look silent nor a
//! running attempt look late, nor stalls heartbeats, timeouts, backoffs, long-polls or
//! rate limits for the jump's length; calendar instants (ETAs) follow the wall clock.
//! Where it shows the hazard, a test runs the same story with a core that is not told
//! of the jump.
#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

mod support;

use lqsm_core::*;
use std::time::Duration;
use support::{Sim, one_core};

const TEN_MINUTES_MS: i64 = 600_000;
const ONE_HOUR_MS: i64 = 3_600_000;

/// A core whose clock reads a real date (far enough from zero for an hour's step back),
/// with one queue and one worker.
fn sim_with_worker() -> (Sim, WorkerId) {
    let mut sim = Sim::new(Config::default());
    sim.now = Timestamp(1_800_000_000_000);
    sim.queue("root.q", 100.0, 100.0);
    let w = sim.worker("w", 4, 4000);
    (sim, w)
}

/// The wall clock steps by `by_ms` and the shell tells the core, as the server's clock
/// does when it sees the wall clock leave its monotonic count.
fn jump(sim: &mut Sim, by_ms: i64) {
    sim.now = Timestamp(sim.now.0.saturating_add_signed(by_ms));
    sim.rm.clock_jumped(by_ms);
}

/// The wall clock steps and the core is not told: it just sees another `now`.
fn jump_untold(sim: &mut Sim, by_ms: i64) {
    sim.now = Timestamp(sim.now.0.saturating_add_signed(by_ms));
}

fn retrying(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        backoff_base: Duration::from_secs(2),
        backoff_cap: Duration::from_secs(60),
        jitter: 0.0,
    }
}

/// A job with a 30 s timeout, running on `w`.
fn running_job(sim: &mut Sim, w: WorkerId) -> JobId {
    let mut req = sim.request("root.q", one_core());
    req.timeout = Some(Duration::from_secs(30));
    req.retry = Some(retrying(2));
    let id = sim.submit(req).unwrap().id();
    sim.pass();
    sim.poll_running(w);
    assert_eq!(sim.state(id), JobState::Running);
    id
}

fn worker_state(sim: &Sim, w: WorkerId) -> WorkerState {
    sim.rm.worker(w).unwrap().state
}

#[test]
fn a_forward_jump_makes_no_worker_silent_and_no_attempt_late() {
    for told in [false, true] {
        let (mut sim, w) = sim_with_worker();
        let id = running_job(&mut sim, w);
        sim.advance(Duration::from_secs(5));
        sim.poll_running(w);
        if told {
            jump(&mut sim, TEN_MINUTES_MS);
        } else {
            jump_untold(&mut sim, TEN_MINUTES_MS);
        }
        sim.pass();
        if !told {
            // The hazard: the worker, still running the job, is declared lost (or its
            // attempt timed out) and the job is retried elsewhere.
            assert!(sim.rm.job(id).unwrap().attempts[0].outcome.is_some());
            assert_ne!(sim.state(id), JobState::Running, "untold, the jump ends it");
            continue;
        }
        assert_eq!(worker_state(&sim, w), WorkerState::Active);
        assert_eq!(sim.state(id), JobState::Running);
        assert!(sim.log.kills.is_empty(), "{:?}", sim.log.kills);
        // Heartbeats still count from the last poll, in durations: 10 s of silence.
        sim.advance(Duration::from_secs(9));
        sim.pass();
        assert_eq!(worker_state(&sim, w), WorkerState::Active);
        sim.advance(Duration::from_secs(1));
        sim.pass();
        assert_eq!(worker_state(&sim, w), WorkerState::Lost);
        assert_eq!(
            sim.rm.job(id).unwrap().attempts[0].outcome,
            Some(AttemptOutcome::Lost)
        );
        sim.check();
    }
}

#[test]
fn an_attempt_times_out_after_its_duration_across_a_jump_either_way() {
    for by in [TEN_MINUTES_MS, -TEN_MINUTES_MS] {
        let (mut sim, w) = sim_with_worker();
        let id = running_job(&mut sim, w);
        let token = sim.rm.job(id).unwrap().current_token().unwrap();
        sim.advance(Duration::from_secs(10));
        sim.poll_running(w);
        jump(&mut sim, by);
        sim.advance(Duration::from_secs(9));
        sim.poll_running(w);
        sim.advance(Duration::from_secs(9));
        sim.poll_running(w);
        sim.advance(Duration::from_millis(1_999));
        sim.poll_running(w);
        sim.pass();
        assert_eq!(sim.state(id), JobState::Running, "jump {by}: 29.999 s in");
        sim.advance(Duration::from_millis(1));
        sim.pass();
        let kill = sim.log.kills.last().expect("a kill").clone();
        assert_eq!(
            (kill.job, kill.token, kill.reason),
            (id, token, KillReason::TimedOut),
            "jump {by}"
        );
        assert_eq!(worker_state(&sim, w), WorkerState::Active, "jump {by}");
        sim.check();
    }
}

#[test]
fn after_a_backward_jump_a_silent_worker_is_still_lost_on_time_and_its_job_retried() {
    for told in [false, true] {
        let (mut sim, dead) = sim_with_worker();
        let id = running_job(&mut sim, dead);
        let healthy = sim.worker("healthy", 4, 4000);
        sim.advance(Duration::from_secs(2));
        if told {
            jump(&mut sim, -ONE_HOUR_MS);
        } else {
            jump_untold(&mut sim, -ONE_HOUR_MS);
        }
        sim.advance(Duration::from_secs(8));
        sim.poll_running(healthy);
        sim.pass();
        if !told {
            // The hazard: the dead worker's deadline lies an hour ahead.
            assert_eq!(worker_state(&sim, dead), WorkerState::Active);
            continue;
        }
        assert_eq!(worker_state(&sim, dead), WorkerState::Lost);
        // Its job waits its 2 s backoff, counted in durations too, then runs elsewhere.
        assert_eq!(sim.state(id), JobState::Pending);
        sim.advance(Duration::from_secs(2));
        sim.poll_running(healthy);
        sim.pass();
        sim.poll_running(healthy);
        assert_eq!(sim.state(id), JobState::Running);
        assert_eq!(sim.rm.job(id).unwrap().current_attempt().unwrap().number, 2);
        sim.check();
    }
}

#[test]
fn an_eta_follows_the_wall_clock_while_a_retry_backoff_keeps_its_length() {
    let (mut sim, w) = sim_with_worker();
    let start = sim.now;
    let mut at_eta = sim.request("root.q", one_core());
    at_eta.not_before = Some(start.after(Duration::from_secs(60)));
    let at_eta = sim.submit(at_eta).unwrap().id();
    let mut retried = sim.request("root.q", one_core());
    retried.retry = Some(retrying(2));
    let retried = sim.submit(retried).unwrap().id();
    sim.pass();
    sim.poll_running(w);
    sim.report(
        w,
        retried,
        ReportedResult::Failed {
            exit_code: Some(1),
            message: "boom".into(),
            retry: true,
        },
    );
    assert_eq!(sim.state(retried), JobState::Pending);
    jump(&mut sim, -TEN_MINUTES_MS);
    sim.advance(Duration::from_secs(2));
    sim.poll_running(w);
    sim.pass();
    assert_eq!(
        sim.state(retried),
        JobState::Scheduled,
        "backoff of 2 s over"
    );
    // A minute later the wall clock reads nine minutes before the ETA: it waits.
    for _ in 0..6 {
        sim.advance(Duration::from_secs(10));
        sim.poll_running(w);
        sim.pass();
    }
    assert_eq!(sim.state(at_eta), JobState::Pending);
    assert_eq!(
        sim.rm.job(at_eta).unwrap().not_before,
        Some(start.after(Duration::from_secs(60)))
    );
    // The wall clock steps forward past it: it runs at once.
    jump(&mut sim, TEN_MINUTES_MS);
    sim.pass();
    assert_eq!(sim.state(at_eta), JobState::Scheduled);
    sim.check();
}

#[test]
fn a_backward_jump_does_not_stall_a_rate_limited_queue() {
    let mut sim = Sim::new(Config::default());
    sim.now = Timestamp(1_800_000_000_000);
    sim.rm
        .create_queue(
            "root.q",
            QueueConfig {
                rate_limit: Some(RateLimit::new(Rate::parse("1/s").unwrap(), 1)),
                ..QueueConfig::with_capacity(100.0, 100.0)
            },
        )
        .unwrap();
    sim.worker("w", 4, 4000);
    let jobs = sim.submit_n("root.q", 3, one_core());
    let scheduled = |sim: &Sim| {
        jobs.iter()
            .filter(|j| sim.state(**j) == JobState::Scheduled)
            .count()
    };
    sim.pass();
    assert_eq!(scheduled(&sim), 1, "one start per second");
    jump(&mut sim, -TEN_MINUTES_MS);
    sim.advance(Duration::from_millis(999));
    sim.pass();
    assert_eq!(scheduled(&sim), 1);
    sim.advance(Duration::from_millis(1));
    sim.pass();
    assert_eq!(
        scheduled(&sim),
        2,
        "the limit's next start, 1 s after the first"
    );
    sim.advance(Duration::from_secs(1));
    sim.pass();
    assert_eq!(scheduled(&sim), 3);
    sim.check();
}

#[test]
fn a_long_poll_waits_its_time_across_a_backward_jump() {
    let (mut sim, w) = sim_with_worker();
    let ticket = sim.ticket();
    let poll = WorkerPoll {
        registration: None,
        running: vec![],
        finished: vec![],
        acked: None,
        ending: Vec::new(),
        progress: Vec::new(),
    };
    sim.rm
        .long_poll(w, ticket, &poll, Duration::from_secs(3), sim.now)
        .unwrap();
    sim.drain_effects();
    jump(&mut sim, -TEN_MINUTES_MS);
    sim.advance(Duration::from_millis(2_999));
    sim.pass();
    assert!(sim.answer_to(ticket).is_none(), "still within its wait");
    sim.advance(Duration::from_millis(1));
    sim.pass();
    assert!(
        sim.answer_to(ticket).is_some(),
        "answered when its 3 s are up"
    );
    assert_eq!(worker_state(&sim, w), WorkerState::Active);
    sim.check();
}
