//! Rebuilding the ResourceManager from its records: nothing is lost, running attempts
//! are reclaimed by their workers or requeued after the grace period.
#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

mod support;

use lqsm_core::*;
use std::time::Duration;
use support::{Sim, one_core};

const GRACE: Duration = Duration::from_secs(30);

/// What a store would hold: every queue and job record, and the token high-water mark.
fn records(sim: &Sim, jobs: &[JobId]) -> RestoreInput {
    sim.stored(Some(jobs))
}

fn restored(sim: &Sim, jobs: &[JobId], after: Duration) -> Sim {
    // Records survive a round trip through JSON, as they would through a store.
    let input = records(sim, jobs);
    let queues: Vec<QueueRecord> =
        serde_json::from_str(&serde_json::to_string(&input.queues).unwrap()).unwrap();
    let job_records: Vec<JobRecord> =
        serde_json::from_str(&serde_json::to_string(&input.jobs).unwrap()).unwrap();
    let input = RestoreInput {
        queues,
        jobs: job_records,
        ..input
    };
    let mut next = Sim::new(sim.rm.config().clone());
    next.now = sim.now.after(after);
    let (rm, _) = ResourceManager::restore(
        sim.rm.config().clone(),
        Policies::default(),
        9,
        input,
        next.now,
        GRACE,
    )
    .unwrap();
    next.rm = rm;
    next
}

struct Before {
    sim: Sim,
    jobs: Vec<JobId>,
    w1: WorkerId,
    w2: WorkerId,
    on_w1: Vec<JobId>,
    on_w2: Vec<JobId>,
    pending: Vec<JobId>,
    delayed: JobId,
    done: JobId,
}

fn before_restart() -> Before {
    let mut sim = Sim::new(Config::default());
    sim.queue("root.eng", 60.0, 100.0);
    sim.queue("root.eng.ml", 100.0, 100.0);
    sim.queue("root.ops", 40.0, 100.0);
    sim.rm.stop_queue("root.ops").unwrap();
    let w1 = sim.worker("w1", 2, 2000);
    let w2 = sim.worker("w2", 1, 1000);
    let done = sim.submit_n("root.eng.ml", 1, one_core())[0];
    sim.pass();
    sim.poll_running(w1);
    sim.poll_running(w2);
    let holder = sim.rm.job(done).unwrap().current_attempt().unwrap().worker;
    sim.succeed(holder, done);
    let running = sim.submit_n("root.eng.ml", 3, one_core());
    sim.pass();
    sim.poll_running(w1);
    sim.poll_running(w2);
    let on = |w: WorkerId| -> Vec<JobId> {
        running
            .iter()
            .copied()
            .filter(|j| sim.rm.job(*j).unwrap().current_attempt().unwrap().worker == w)
            .collect()
    };
    let (on_w1, on_w2) = (on(w1), on(w2));
    let mut idem = sim.request("root.eng.ml", one_core());
    idem.idempotency_key = Some("nightly".into());
    let mut pending = vec![sim.submit(idem).unwrap().id()];
    pending.extend(sim.submit_n("root.eng.ml", 2, one_core()));
    let mut late = sim.request("root.eng.ml", one_core());
    late.not_before = Some(sim.now.after(Duration::from_secs(3600)));
    let delayed = sim.submit(late).unwrap().id();
    let mut jobs = vec![done, delayed];
    jobs.extend(&running);
    jobs.extend(&pending);
    Before {
        sim,
        jobs,
        w1,
        w2,
        on_w1,
        on_w2,
        pending,
        delayed,
        done,
    }
}

#[test]
fn restore_keeps_queues_and_every_job_in_its_state() {
    let b = before_restart();
    let sim = restored(&b.sim, &b.jobs, Duration::from_secs(5));
    assert_eq!(sim.rm.queues().len(), 4);
    assert_eq!(
        sim.rm.queue("root.ops").unwrap().state(),
        QueueState::Stopped
    );
    assert_eq!(sim.rm.queue("root.eng").unwrap().config().capacity, 60.0);
    assert_eq!(sim.state(b.done), JobState::Succeeded);
    assert_eq!(sim.state(b.delayed), JobState::Pending);
    for id in &b.pending {
        assert_eq!(sim.state(*id), JobState::Pending);
    }
    for id in b.on_w1.iter().chain(&b.on_w2) {
        assert_eq!(
            sim.state(*id),
            JobState::Running,
            "awaits reclaim, not requeued"
        );
    }
    let ml = sim.rm.queue("root.eng.ml").unwrap();
    assert_eq!(ml.unfinished(), 7);
    assert_eq!(ml.running(), 0, "unclaimed attempts hold no resources");
    assert_eq!(ml.stats().pending, 4);
    sim.check();
}

#[test]
fn returning_worker_reclaims_what_it_runs_and_the_rest_is_requeued() {
    let b = before_restart();
    let mut sim = restored(&b.sim, &b.jobs, Duration::from_secs(5));
    assert_eq!(b.on_w1.len(), 2);
    // w1 comes back running only the first of its two attempts.
    sim.worker_back(b.w1, 2);
    let kept = b.on_w1[0];
    let token = b.sim.rm.job(kept).unwrap().current_token().unwrap();
    let poll = WorkerPoll {
        registration: None,
        running: vec![(kept, token)],
        finished: vec![],
        acked: None,
        ending: Vec::new(),
        progress: Vec::new(),
    };
    sim.rm.worker_polled(b.w1, &poll, sim.now).unwrap();
    let job = sim.rm.job(kept).unwrap();
    assert_eq!(job.state, JobState::Running);
    assert_eq!(sim.rm.worker(b.w1).unwrap().used, one_core());
    let dropped = sim.rm.job(b.on_w1[1]).unwrap();
    assert_eq!(dropped.state, JobState::Pending);
    assert_eq!(
        dropped.attempts.last().unwrap().outcome,
        Some(AttemptOutcome::NotReclaimed)
    );
    assert_eq!(dropped.failures, 0);
    // Its report is accepted as usual.
    let out = sim.report_token(
        b.w1,
        kept,
        token,
        ReportedResult::Succeeded {
            result: None,
            exit_code: Some(0),
        },
    );
    assert_eq!(out.accepted, 1);
    assert_eq!(sim.state(kept), JobState::Succeeded);
    sim.check();
}

#[test]
fn attempts_nobody_reclaims_are_requeued_after_the_grace_period_with_fresh_tokens() {
    let b = before_restart();
    let mut sim = restored(&b.sim, &b.jobs, Duration::from_secs(5));
    let old_max = b
        .jobs
        .iter()
        .filter_map(|j| b.sim.rm.job(*j))
        .flat_map(|j| j.attempts.iter().map(|a| a.token))
        .max()
        .unwrap();
    sim.advance(GRACE - Duration::from_millis(1));
    sim.pass();
    assert_eq!(sim.state(b.on_w2[0]), JobState::Running);
    sim.advance(Duration::from_millis(1));
    let fresh = sim.worker("fresh", 8, 8000);
    sim.pass();
    for id in b.on_w1.iter().chain(&b.on_w2) {
        let job = sim.rm.job(*id).unwrap();
        assert_eq!(job.state, JobState::Scheduled, "requeued and placed again");
        let attempt = job.current_attempt().unwrap();
        assert_eq!(attempt.worker, fresh);
        assert!(
            attempt.token > old_max,
            "tokens keep growing across restarts"
        );
    }
    sim.check();
}

#[test]
fn a_returning_worker_takes_no_new_work_before_its_first_poll() {
    let b = before_restart();
    let mut sim = restored(&b.sim, &b.jobs, Duration::from_secs(5));
    sim.worker_back(b.w2, 1);
    sim.pass();
    assert_eq!(sim.rm.worker(b.w2).unwrap().attempt_count(), 0);
    let token = b.sim.rm.job(b.on_w2[0]).unwrap().current_token().unwrap();
    let poll = WorkerPoll {
        registration: None,
        running: vec![(b.on_w2[0], token)],
        finished: vec![],
        acked: None,
        ending: Vec::new(),
        progress: Vec::new(),
    };
    sim.rm.worker_polled(b.w2, &poll, sim.now).unwrap();
    assert_eq!(sim.rm.worker(b.w2).unwrap().attempt_count(), 1);
    sim.check();
}

#[test]
fn idempotency_keys_survive_a_restart() {
    let b = before_restart();
    let mut sim = restored(&b.sim, &b.jobs, Duration::from_secs(5));
    let mut again = sim.request("root.eng.ml", one_core());
    again.idempotency_key = Some("nightly".into());
    assert_eq!(
        sim.submit(again).unwrap(),
        Submitted::Existing(b.pending[0])
    );
    let fresh = sim.submit_n("root.eng.ml", 1, one_core())[0];
    let seqs: Vec<u64> = b.jobs.iter().map(|j| sim.rm.job(*j).unwrap().seq).collect();
    assert!(
        sim.rm.job(fresh).unwrap().seq > *seqs.iter().max().unwrap(),
        "FIFO order continues"
    );
}

#[test]
fn a_job_in_a_queue_that_is_gone_is_refused_by_name() {
    let b = before_restart();
    let mut input = records(&b.sim, &b.jobs);
    input.queues.retain(|q| q.path.as_str() != "root.eng.ml");
    let err = ResourceManager::restore(
        Config::default(),
        Policies::default(),
        1,
        input,
        b.sim.now,
        GRACE,
    )
    .err()
    .unwrap();
    assert!(
        err.to_string()
            .contains("its queue `root.eng.ml` is not a leaf"),
        "{err}"
    );
}

#[test]
fn lifetime_counters_survive_retention_and_a_restart() {
    let mut sim = Sim::new(Config::default());
    sim.queue("root.q", 100.0, 100.0);
    let w = sim.worker("w", 4, 4000);
    let ids = sim.submit_n("root.q", 3, one_core());
    sim.pass();
    sim.poll_running(w);
    sim.advance(Duration::from_millis(1500));
    sim.succeed(w, ids[0]);
    sim.succeed(w, ids[1]);
    sim.rm.cancel(ids[2], "not needed", sim.now).unwrap();
    let pending = sim.submit_n("root.q", 1, Resources::cores(8, 100))[0];
    let before = sim.rm.queue("root.q").unwrap().stats();
    assert_eq!(
        (
            before.submitted,
            before.succeeded,
            before.cancelled,
            before.pending
        ),
        (4, 2, 1, 1),
        "{before:?}"
    );
    assert_eq!(before.run.count, 3, "three attempts ended: {before:?}");

    // Past retention the finished jobs are purged; only the pending one is still held.
    sim.advance(sim.rm.config().retention + Duration::from_secs(1));
    sim.pass();
    for id in &ids {
        assert!(sim.rm.job(*id).is_none(), "job {id:?} should be purged");
    }
    let after = restored(&sim, &[pending], Duration::from_secs(5));
    let stats = after.rm.queue("root.q").unwrap().stats();
    assert_eq!(
        QueueStats {
            pending: before.pending,
            ..stats
        },
        before,
        "the lifetime counters must come back as they were"
    );
    assert_eq!(stats.pending, 1);
}

/// After a restart, the jobs waiting for work are looked at before any worker is back:
/// none can take them, so they are set aside until one can. The worker returning with
/// attempts to reclaim can take work only once its first poll has reclaimed them, and
/// from then on it must get the jobs set aside — those pending at the restart and those
/// submitted while it was not yet back — not only the ones submitted later.
#[test]
fn a_returning_worker_gets_the_jobs_set_aside_while_it_reclaimed_its_attempts() {
    let mut sim = Sim::new(Config::default());
    sim.queue("root.q", 100.0, 100.0);
    let w = sim.worker("w", 4, 4000);
    let running = sim.submit_n("root.q", 2, one_core());
    sim.pass();
    sim.poll_running(w);
    // Submitted just before the server is killed: no pass has placed it yet.
    let pending_at_restart = sim.submit_n("root.q", 1, one_core())[0];
    let mut jobs = running.clone();
    jobs.push(pending_at_restart);
    let tokens: Vec<FencingToken> = running
        .iter()
        .map(|j| sim.rm.job(*j).unwrap().current_token().unwrap())
        .collect();

    let mut sim = restored(&sim, &jobs, Duration::from_secs(1));
    // No worker is back yet: the pending job is set aside.
    sim.pass();
    assert_eq!(sim.state(pending_at_restart), JobState::Pending);
    // The worker is told to register again; the scheduler looks before its first poll.
    sim.worker_back(w, 4);
    let submitted_meanwhile = sim.submit_n("root.q", 1, one_core())[0];
    sim.pass();
    assert_eq!(sim.rm.worker(w).unwrap().attempt_count(), 0);
    // Its first poll lists the attempt it still runs and reports the one that ended
    // while the server was down.
    let poll = WorkerPoll {
        registration: None,
        running: vec![(running[0], tokens[0])],
        finished: vec![AttemptReport {
            job: running[1],
            token: tokens[1],
            result: ReportedResult::Succeeded {
                result: None,
                exit_code: Some(0),
            },
            started_at: None,
            usage: None,
            memory_exceeded: false,
        }],
        acked: Some(0),
        ending: Vec::new(),
        progress: Vec::new(),
    };
    let answer = sim.take_assignments(w, &poll);
    assert_eq!(sim.state(running[0]), JobState::Running);
    assert_eq!(sim.state(running[1]), JobState::Succeeded);
    sim.pass();
    for id in [pending_at_restart, submitted_meanwhile] {
        let job = sim.rm.job(id).unwrap();
        assert_eq!(job.state, JobState::Scheduled, "job {id:?} left pending");
        assert_eq!(job.current_attempt().unwrap().worker, w);
    }
    assert_eq!(sim.rm.worker(w).unwrap().attempt_count(), 3);
    // They reach the worker in its next answer, numbered from its new registration.
    let poll = WorkerPoll {
        registration: None,
        running: vec![(running[0], tokens[0])],
        finished: vec![],
        acked: Some(answer.seq),
        ending: Vec::new(),
        progress: Vec::new(),
    };
    let next = sim.take_assignments(w, &poll);
    let mut handed: Vec<JobId> = answer
        .assignments
        .iter()
        .chain(&next.assignments)
        .map(|a| a.job)
        .collect();
    handed.sort();
    let mut expected = vec![pending_at_restart, submitted_meanwhile];
    expected.sort();
    assert_eq!(handed, expected);
    sim.check();
}

/// The same when the returning worker's attempts are given up at the end of the grace
/// period instead (it registered, but did not poll in time): from then on it takes
/// work, the jobs set aside meanwhile included.
#[test]
fn a_worker_whose_reclaim_expired_gets_the_jobs_set_aside_meanwhile() {
    // Not declared lost while the grace period runs.
    let mut sim = Sim::new(Config {
        heartbeat_timeout: GRACE * 2,
        ..Config::default()
    });
    sim.queue("root.q", 100.0, 100.0);
    let w = sim.worker("w", 4, 4000);
    let running = sim.submit_n("root.q", 1, one_core())[0];
    sim.pass();
    sim.poll_running(w);
    let pending_at_restart = sim.submit_n("root.q", 1, one_core())[0];

    let mut sim = restored(&sim, &[running, pending_at_restart], Duration::from_secs(1));
    sim.pass();
    sim.worker_back(w, 4);
    sim.pass();
    assert_eq!(sim.state(pending_at_restart), JobState::Pending);
    sim.advance(GRACE);
    sim.pass();
    for id in [running, pending_at_restart] {
        let job = sim.rm.job(id).unwrap();
        assert_eq!(job.state, JobState::Scheduled, "job {id:?} left pending");
        assert_eq!(job.current_attempt().unwrap().worker, w);
    }
    sim.check();
}
