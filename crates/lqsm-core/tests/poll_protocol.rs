//! The worker poll protocol's delivery rules (docs/PROTOCOL.md): one waiting poll per
//! worker, answered as soon as there is work or kill orders, else when its capped wait
//! is over; numbered answers; one kill order per attempt; logs of refused reports
//! dropped.
#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

mod support;

use lqsm_core::*;
use std::time::Duration;
use support::{Sim, one_core};

fn sim_with_queue() -> (Sim, WorkerId) {
    let mut sim = Sim::new(Config::default());
    sim.queue("root.q", 100.0, 100.0);
    let w = sim.worker("w", 4, 4000);
    (sim, w)
}

/// Parks a long-poll that lists `running` and asks to wait `wait`; returns its ticket.
fn park(sim: &mut Sim, w: WorkerId, poll: &WorkerPoll, wait: Duration) -> PollTicket {
    let ticket = sim.ticket();
    sim.rm.long_poll(w, ticket, poll, wait, sim.now).unwrap();
    sim.drain_effects();
    ticket
}

#[test]
fn a_waiting_poll_is_answered_as_soon_as_work_is_assigned() {
    let (mut sim, w) = sim_with_queue();
    let ticket = park(&mut sim, w, &WorkerPoll::default(), Duration::from_secs(3));
    assert!(
        sim.answer_to(ticket).is_none(),
        "nothing to say yet: it waits"
    );
    let id = sim.submit_n("root.q", 1, one_core())[0];
    sim.pass();
    let answer = sim
        .answer_to(ticket)
        .expect("answered in the batch that assigned");
    assert_eq!(answer.worker, w);
    assert_eq!(answer.assignments.len(), 1);
    assert_eq!(answer.assignments[0].job, id);
    assert_eq!(answer.seq, 1);
}

#[test]
fn a_waiting_poll_with_nothing_to_say_is_answered_empty_when_its_wait_is_over() {
    let (mut sim, w) = sim_with_queue();
    let ticket = park(&mut sim, w, &WorkerPoll::default(), Duration::from_secs(3));
    sim.advance(Duration::from_millis(2999));
    sim.pass();
    assert!(sim.answer_to(ticket).is_none(), "still within its wait");
    sim.advance(Duration::from_millis(1));
    sim.pass();
    let answer = sim.answer_to(ticket).expect("its wait is over");
    assert_eq!(
        (answer.seq, answer.assignments.len(), answer.kills.len()),
        (0, 0, 0)
    );
}

#[test]
fn the_wait_is_capped_by_the_longest_poll_and_by_half_the_heartbeat_timeout() {
    let config = Config {
        heartbeat_timeout: Duration::from_secs(10),
        max_poll_wait: Duration::from_secs(30),
        ..Config::default()
    };
    let mut sim = Sim::new(config);
    sim.queue("root.q", 100.0, 100.0);
    let w = sim.worker("w", 4, 4000);
    assert_eq!(
        sim.rm.poll_wait(Duration::from_secs(60)),
        Duration::from_secs(5),
        "half the heartbeat timeout: a waiting worker must not be taken for lost"
    );
    sim.rm.set_max_poll_wait(Duration::from_secs(2));
    assert_eq!(
        sim.rm.poll_wait(Duration::from_secs(60)),
        Duration::from_secs(2)
    );
    assert_eq!(
        sim.rm.poll_wait(Duration::from_secs(1)),
        Duration::from_secs(1)
    );

    let ticket = park(&mut sim, w, &WorkerPoll::default(), Duration::from_secs(60));
    sim.advance(Duration::from_secs(2));
    sim.pass();
    assert!(
        sim.answer_to(ticket).is_some(),
        "answered after the capped wait"
    );
}

#[test]
fn a_poll_that_does_not_wait_is_answered_in_its_own_batch() {
    let (mut sim, w) = sim_with_queue();
    let ticket = park(&mut sim, w, &WorkerPoll::default(), Duration::ZERO);
    let answer = sim.answer_to(ticket).expect("answered at once");
    assert_eq!(answer.seq, 0);
}

#[test]
fn a_replaced_poll_is_answered_empty_with_its_own_refusals() {
    let (mut sim, w) = sim_with_queue();
    let id = sim.submit_n("root.q", 1, one_core())[0];
    sim.pass();
    sim.poll_running(w);
    let token = sim.rm.job(id).unwrap().current_token().unwrap();
    sim.succeed(w, id);
    // The worker repeats the report (say it never saw the answer) in a waiting poll.
    let repeat = WorkerPoll {
        registration: None,
        running: vec![],
        finished: vec![AttemptReport {
            job: id,
            token,
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
    let first = park(&mut sim, w, &repeat, Duration::from_secs(3));
    assert!(sim.answer_to(first).is_none());
    // Meanwhile work arrives, but a newer poll replaces the waiting one before the
    // answer goes out: the work goes to the newer poll.
    sim.submit_n("root.q", 1, one_core());
    sim.rm.tick(sim.now);
    sim.rm.schedule(sim.now);
    let second = sim.ticket();
    sim.rm
        .long_poll(
            w,
            second,
            &WorkerPoll::default(),
            Duration::from_secs(3),
            sim.now,
        )
        .unwrap();
    sim.drain_effects();
    let replaced = sim.answer_to(first).expect("the replaced poll is answered");
    assert_eq!(replaced.seq, 0);
    assert!(replaced.assignments.is_empty() && replaced.kills.is_empty());
    assert_eq!(
        replaced.refused.len(),
        1,
        "its refusals still reach the worker"
    );
    assert_eq!(replaced.refused[0].reason, RefusalReason::StaleAttempt);
    let newer = sim.answer_to(second).expect("the newer poll gets the work");
    assert_eq!(newer.assignments.len(), 1);
    assert!(newer.refused.is_empty());
}

#[test]
fn only_answers_carrying_assignments_are_numbered_counting_from_registration() {
    let (mut sim, w) = sim_with_queue();
    let empty = sim.take_assignments(w, &WorkerPoll::default());
    assert_eq!(empty.seq, 0);
    sim.submit_n("root.q", 1, one_core());
    sim.pass();
    let running = sim.still_running(w, None);
    let first = sim.take_assignments(w, &WorkerPoll::default());
    assert_eq!((first.seq, first.assignments.len()), (1, 1));
    let held: Vec<(JobId, FencingToken)> = running
        .into_iter()
        .chain(first.assignments.iter().map(|a| (a.job, a.token)))
        .collect();
    let listing = WorkerPoll {
        registration: None,
        running: held.clone(),
        finished: vec![],
        acked: Some(first.seq),
        ending: Vec::new(),
        progress: Vec::new(),
    };
    assert_eq!(sim.take_assignments(w, &listing).seq, 0, "empty again");
    sim.submit_n("root.q", 1, one_core());
    sim.pass();
    assert_eq!(sim.take_assignments(w, &listing).seq, 2);
    // A worker that registers again counts afresh.
    sim.worker_back(w, 4);
    sim.submit_n("root.q", 1, one_core());
    sim.pass();
    let again = sim.take_assignments(w, &WorkerPoll::default());
    assert_eq!(again.seq, 1);
}

#[test]
fn an_attempt_killed_for_two_reasons_gets_one_kill_order() {
    let (mut sim, w) = sim_with_queue();
    let id = sim.submit_n("root.q", 1, one_core())[0];
    sim.pass();
    sim.poll_running(w);
    let token = sim.rm.job(id).unwrap().current_token().unwrap();
    sim.rm.cancel(id, "not needed", sim.now).unwrap();
    // The worker, not yet told, still lists the attempt: stale, killed again.
    let answer = sim.take_assignments(
        w,
        &WorkerPoll {
            registration: None,
            running: vec![(id, token)],
            finished: vec![],
            acked: None,
            ending: Vec::new(),
            progress: Vec::new(),
        },
    );
    assert_eq!(answer.kills.len(), 1, "{:?}", answer.kills);
    assert_eq!(answer.kills[0].reason, KillReason::Cancelled);
    assert_eq!((answer.kills[0].job, answer.kills[0].token), (id, token));
    // Both decisions are on the account; the order went out once.
    assert_eq!(sim.log.kills.len(), 2);
    let later = sim.take_assignments(w, &WorkerPoll::default());
    assert!(later.kills.is_empty(), "an order is sent once");
}

#[test]
fn a_kill_order_wakes_a_waiting_poll() {
    let (mut sim, w) = sim_with_queue();
    let id = sim.submit_n("root.q", 1, one_core())[0];
    sim.pass();
    sim.poll_running(w);
    let running = WorkerPoll {
        registration: None,
        running: sim.still_running(w, None),
        finished: vec![],
        acked: None,
        ending: Vec::new(),
        progress: Vec::new(),
    };
    let ticket = park(&mut sim, w, &running, Duration::from_secs(3));
    assert!(sim.answer_to(ticket).is_none());
    sim.rm.cancel(id, "stop", sim.now).unwrap();
    sim.drain_effects();
    let answer = sim.answer_to(ticket).expect("woken by the kill order");
    assert_eq!(answer.kills.len(), 1);
    assert_eq!(answer.kills[0].job, id);
}

#[test]
fn logs_of_refused_reports_are_dropped() {
    let (mut sim, w) = sim_with_queue();
    let id = sim.submit_n("root.q", 1, one_core())[0];
    sim.pass();
    sim.poll_running(w);
    let token = sim.rm.job(id).unwrap().current_token().unwrap();
    let stale = FencingToken(token.0 + 1000);
    let report = |token| AttemptReport {
        job: id,
        token,
        result: ReportedResult::Succeeded {
            result: None,
            exit_code: Some(0),
        },
        started_at: None,
        usage: None,
        memory_exceeded: false,
    };
    let poll = WorkerPoll {
        registration: None,
        running: vec![],
        finished: vec![report(stale), report(token)],
        acked: None,
        ending: Vec::new(),
        progress: Vec::new(),
    };
    let outcome = sim.rm.worker_polled(w, &poll, sim.now).unwrap();
    assert_eq!(outcome.refused.len(), 1);
    let kept = outcome.accepted_logs(vec![(id, stale, "old"), (id, token, "current")]);
    assert_eq!(kept, vec![(id, "current")]);
}

#[test]
fn an_unknown_worker_poll_is_refused_and_nothing_waits() {
    let (mut sim, _) = sim_with_queue();
    let stranger = WorkerId(uuid::Uuid::from_u128(99));
    let ticket = sim.ticket();
    let err = sim
        .rm
        .long_poll(
            stranger,
            ticket,
            &WorkerPoll::default(),
            Duration::ZERO,
            sim.now,
        )
        .unwrap_err();
    assert_eq!(err, WorkerError::Unknown(stranger));
    sim.drain_effects();
    assert!(sim.answer_to(ticket).is_none());
}

/// A poll that acknowledges `acked` and lists nothing, answered at once.
fn poll_acking(sim: &mut Sim, w: WorkerId, acked: u64) -> PollAnswer {
    let poll = WorkerPoll {
        acked: Some(acked),
        ..WorkerPoll::default()
    };
    let ticket = park(sim, w, &poll, Duration::ZERO);
    sim.pass();
    sim.answer_to(ticket)
        .expect("a poll that does not wait is answered")
}

#[test]
fn attempts_of_an_answer_lost_on_its_way_are_handed_again() {
    let (mut sim, w) = sim_with_queue();
    let id = sim.submit_n("root.q", 1, one_core())[0];
    sim.pass();
    let first = poll_acking(&mut sim, w, 0);
    assert_eq!((first.seq, first.assignments.len()), (1, 1));
    // That answer never arrives: the worker keeps acknowledging 0, and the attempt is
    // neither run nor declared lost (the answer might still be on its way)...
    let again = poll_acking(&mut sim, w, 0);
    assert!(again.assignments.is_empty(), "{again:?}");
    sim.advance(REDELIVER_AFTER - Duration::from_millis(1));
    assert!(poll_acking(&mut sim, w, 0).assignments.is_empty());
    assert_eq!(sim.state(id), JobState::Scheduled);
    // ...until it has been missing long enough: the same attempt comes again, in a new
    // answer, and runs once listed.
    sim.advance(Duration::from_millis(1));
    let redelivered = poll_acking(&mut sim, w, 0);
    assert_eq!(redelivered.seq, 2);
    assert_eq!(redelivered.assignments.len(), 1);
    assert_eq!(
        (
            redelivered.assignments[0].job,
            redelivered.assignments[0].token
        ),
        (first.assignments[0].job, first.assignments[0].token)
    );
    let poll = WorkerPoll {
        running: vec![(id, first.assignments[0].token)],
        acked: Some(2),
        ..WorkerPoll::default()
    };
    sim.rm.worker_polled(w, &poll, sim.now).unwrap();
    assert_eq!(sim.state(id), JobState::Running);
    sim.check();
}

#[test]
fn a_worker_registering_again_under_its_id_must_list_what_it_held() {
    let (mut sim, w) = sim_with_queue();
    let id = sim.submit_n("root.q", 1, one_core())[0];
    sim.pass();
    let running = sim.poll_running(w);
    assert_eq!(running.len(), 1);
    assert_eq!(sim.state(id), JobState::Running);
    // Its process restarted and knows nothing of the attempt: it registers again with
    // the same id, and its first poll (acknowledging nothing yet) does not list it.
    sim.rm
        .register_worker(
            WorkerRegistration {
                id: w,
                name: "w".into(),
                capacity: Resources::cores(4, 4000),
                labels: Default::default(),
                serves_commands: true,
                handlers: ["*".to_string()].into(),
                queues: Default::default(),
            },
            sim.now,
        )
        .unwrap();
    let poll = WorkerPoll {
        acked: Some(0),
        ..WorkerPoll::default()
    };
    sim.rm.worker_polled(w, &poll, sim.now).unwrap();
    sim.drain_effects();
    let attempts = sim.rm.job_record(id).unwrap().attempts;
    assert_eq!(
        attempts[0].outcome,
        Some(AttemptOutcome::Lost),
        "the attempt died with the old process: {attempts:?}"
    );
    assert_ne!(sim.state(id), JobState::Running);
    sim.check();
}

#[test]
fn an_attempt_named_as_ending_is_neither_running_nor_lost() {
    let (mut sim, w) = sim_with_queue();
    let id = sim.submit_n("root.q", 1, one_core())[0];
    sim.pass();
    let answer = poll_acking(&mut sim, w, 0);
    let token = answer.assignments[0].token;
    // A second poll overtook the one carrying the attempt's report: it names the
    // attempt as ending, and the attempt stays the worker's until its report lands.
    let poll = WorkerPoll {
        acked: Some(answer.seq),
        ending: vec![(id, token)],
        ..WorkerPoll::default()
    };
    sim.rm.worker_polled(w, &poll, sim.now).unwrap();
    sim.drain_effects();
    assert_eq!(sim.state(id), JobState::Scheduled);
    assert!(sim.log.kills.is_empty(), "{:?}", sim.log.kills);
    sim.succeed(w, id);
    assert_eq!(sim.state(id), JobState::Succeeded);
    // Without the name it would have been lost.
    let other = sim.submit_n("root.q", 1, one_core())[0];
    sim.pass();
    let answer = poll_acking(&mut sim, w, answer.seq);
    assert_eq!(answer.assignments[0].job, other);
    let poll = WorkerPoll {
        acked: Some(answer.seq),
        ..WorkerPoll::default()
    };
    sim.rm.worker_polled(w, &poll, sim.now).unwrap();
    sim.drain_effects();
    assert_ne!(sim.state(other), JobState::Scheduled);
    sim.check();
}

/// The attempts' outcomes and the worker of each, oldest first.
fn attempts_of(sim: &Sim, job: JobId) -> Vec<(WorkerId, Option<AttemptOutcome>)> {
    sim.rm
        .job(job)
        .unwrap()
        .attempts
        .iter()
        .map(|a| (a.worker, a.outcome.clone()))
        .collect()
}

#[test]
fn a_worker_that_stops_polling_gets_no_new_work_and_what_it_was_never_handed_runs_elsewhere() {
    // Heartbeat 20 s: a worker that has not polled again QUIET_GRACE after an answer is
    // quiet long before it may be declared lost.
    let config = Config {
        heartbeat_timeout: Duration::from_secs(20),
        ..Config::default()
    };
    let mut sim = Sim::new(config);
    sim.queue("root.q", 100.0, 100.0);
    let dead = sim.worker("dead", 4, 4000);
    park(
        &mut sim,
        dead,
        &WorkerPoll::default(),
        Duration::from_secs(4),
    );
    // Its waiting poll is answered with the first job: it was handed that one, so it
    // may be running it. Then it dies and polls no more.
    let handed = sim.submit_n("root.q", 1, one_core())[0];
    sim.pass();
    assert_eq!(sim.log.assignments.len(), 1);
    let never_handed = sim.submit_n("root.q", 2, one_core());
    sim.pass();
    for job in &never_handed {
        assert_eq!(attempts_of(&sim, *job), vec![(dead, None)], "placed on it");
    }
    let alive = sim.worker("alive", 4, 4000);
    let ticket = park(
        &mut sim,
        alive,
        &WorkerPoll::default(),
        Duration::from_secs(4),
    );

    sim.advance(QUIET_GRACE - Duration::from_millis(1));
    sim.pass();
    assert!(
        !sim.rm.worker(dead).unwrap().quiet,
        "not quiet within its grace"
    );
    sim.advance(Duration::from_millis(1));
    sim.pass();
    assert!(sim.rm.worker(dead).unwrap().quiet);
    assert!(!sim.rm.worker(alive).unwrap().quiet);
    assert_eq!(
        sim.answer_to(ticket).map(|a| a.assignments.len()),
        Some(2),
        "the waiting poll is answered with what was taken back"
    );
    sim.check();
    for job in &never_handed {
        assert_eq!(
            attempts_of(&sim, *job),
            vec![(dead, Some(AttemptOutcome::Withdrawn)), (alive, None)],
            "taken back and placed on the worker that polls"
        );
        assert_eq!(sim.rm.job(*job).unwrap().failures, 0, "not a failure");
    }
    assert_eq!(
        attempts_of(&sim, handed),
        vec![(dead, None)],
        "what it was handed it may be running: only its loss may take it back"
    );
    // New work goes to the worker that polls, though the quiet one has room.
    let new = sim.submit_n("root.q", 1, one_core())[0];
    sim.pass();
    assert_eq!(attempts_of(&sim, new), vec![(alive, None)]);
    let held = sim.received.entry(alive).or_default();
    for a in sim.log.assignments.iter().filter(|a| a.worker == alive) {
        held.insert((a.job, a.token));
    }
    sim.poll_running(alive);
    assert_eq!(
        sim.still_running(alive, None).len(),
        3,
        "the two taken back and the new one"
    );

    // Its heartbeat timeout, from its last poll, declares it lost.
    sim.advance(Duration::from_secs(20) - QUIET_GRACE);
    sim.poll_running(alive);
    sim.pass();
    assert_eq!(
        sim.rm.worker(dead).unwrap().state,
        WorkerState::Lost,
        "lost at its heartbeat timeout"
    );
    assert_eq!(
        attempts_of(&sim, handed),
        vec![(dead, Some(AttemptOutcome::Lost))],
        "retried after its backoff"
    );
    assert_eq!(
        sim.rm.job(handed).unwrap().failures,
        1,
        "a loss is a failure"
    );
    sim.check();
}

#[test]
fn a_quiet_worker_takes_work_again_with_its_next_poll() {
    let (mut sim, w) = sim_with_queue();
    sim.poll_running(w);
    sim.advance(QUIET_GRACE);
    sim.pass();
    assert!(
        sim.rm.worker(w).unwrap().quiet,
        "answered, and never polled again"
    );
    let job = sim.submit_n("root.q", 1, one_core())[0];
    sim.pass();
    assert_eq!(attempts_of(&sim, job), vec![], "no worker takes it");
    let got = sim.poll_running(w);
    assert!(!sim.rm.worker(w).unwrap().quiet);
    sim.pass();
    let got = [got, sim.poll_running(w)].concat();
    assert_eq!(
        got.iter().map(|a| a.job).collect::<Vec<_>>(),
        vec![job],
        "its poll makes it take work again"
    );
    sim.check();
}

#[test]
fn a_worker_waiting_in_a_poll_is_not_quiet() {
    let config = Config {
        heartbeat_timeout: Duration::from_secs(60),
        max_poll_wait: Duration::from_secs(30),
        ..Config::default()
    };
    let mut sim = Sim::new(config);
    sim.queue("root.q", 100.0, 100.0);
    let w = sim.worker("w", 4, 4000);
    // Polls that wait their whole 30 s, each sent as soon as the last is answered.
    for _ in 0..4 {
        let ticket = park(&mut sim, w, &WorkerPoll::default(), Duration::from_secs(30));
        sim.advance(Duration::from_secs(30));
        sim.pass();
        assert!(sim.answer_to(ticket).is_some());
        assert!(!sim.rm.worker(w).unwrap().quiet, "it polls as it should");
    }
}

#[test]
fn a_lost_worker_s_attempts_it_was_never_handed_use_none_of_their_jobs_attempts() {
    // A heartbeat timeout shorter than the quiet time: the loss comes first.
    let config = Config {
        heartbeat_timeout: Duration::from_secs(2),
        ..Config::default()
    };
    let mut sim = Sim::new(config);
    sim.queue("root.q", 100.0, 100.0);
    let w = sim.worker("w", 4, 4000);
    let job = sim.submit_n("root.q", 1, one_core())[0];
    sim.pass();
    assert_eq!(attempts_of(&sim, job), vec![(w, None)]);
    sim.advance(Duration::from_secs(2));
    sim.pass();
    assert_eq!(sim.rm.worker(w).unwrap().state, WorkerState::Lost);
    let found = sim.rm.job(job).unwrap();
    assert_eq!(
        attempts_of(&sim, job),
        vec![(w, Some(AttemptOutcome::Withdrawn))]
    );
    assert_eq!((found.state, found.failures), (JobState::Pending, 0));
    sim.check();
}
