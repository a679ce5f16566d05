//! Right-sizing: what attempts used is kept per leaf and job name, `auto` requests follow
//! its 95th percentile, and an attempt killed for exceeding its memory runs again with
//! twice as much without spending the job's retries. Usage arrives in reports, so these
//! tests inject it: they do not depend on cgroups being available.
#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

mod support;

use lqsm_core::*;
use std::time::Duration;
use support::Sim;

/// A leaf `root.q` that right-sizes (defaults: margin 1.2 after 5 attempts) with a
/// default request of 1 core and 400 MiB, and one 4-core, 4,000 MiB worker.
fn sim(auto: Option<AutoResources>) -> (Sim, WorkerId) {
    let mut sim = Sim::new(Config::default());
    let mut config = QueueConfig::with_capacity(100.0, 100.0);
    config.defaults.request = Resources::cores(1, 400);
    config.auto_resources = auto;
    sim.rm.create_queue("root.q", config).unwrap();
    let worker = sim.worker("w", 4, 4000);
    (sim, worker)
}

fn command(sim: &mut Sim, program: &str) -> SubmitRequest {
    let id = JobId(uuid::Uuid::from_u128(sim.fresh_id()));
    SubmitRequest::new(id, "root.q", JobKind::command([program, "--flag"]))
}

/// Runs one job of `program` to success, its attempt reported as using `memory` MiB at
/// peak and `cpu_ms` of cpu over one second.
fn run_measured(sim: &mut Sim, worker: WorkerId, program: &str, memory: u64, cpu_ms: u64) -> JobId {
    let req = command(sim, program);
    let id = sim.submit(req).unwrap().id();
    sim.pass();
    sim.poll_running(worker);
    sim.advance(Duration::from_secs(1));
    let token = sim.rm.job(id).unwrap().current_token().unwrap();
    let usage = Usage {
        peak_memory: MiB(memory),
        cpu_ms,
    };
    let success = ReportedResult::Succeeded {
        result: None,
        exit_code: Some(0),
    };
    let out = sim.report_measured(worker, id, token, success, Some(usage), false);
    assert_eq!(out.accepted, 1);
    id
}

#[test]
fn reports_are_counted_per_name_against_what_the_jobs_asked_for() {
    let (mut sim, worker) = sim(None);
    for i in 1..=10 {
        run_measured(&mut sim, worker, "/opt/etl/load", 90 + i, 200);
    }
    run_measured(&mut sim, worker, "report", 10, 900);
    let usage = sim.rm.queue("root.q").unwrap().usage();
    let names: Vec<&str> = usage.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["load", "report"]);
    let load = &usage[0].summary;
    assert_eq!((load.attempts, load.window), (10, 10));
    assert_eq!(
        (load.memory_p50, load.memory_p95, load.memory_max),
        (MiB(95), MiB(100), MiB(100))
    );
    assert_eq!(load.cpu_p95, Millicores(200));
    assert_eq!(load.requested, Resources::cores(1, 400));
    // What `auto` would ask for a new `load` job: 100 MiB × 1.2, 0.2 cores × 1.2.
    let auto = usage[0].auto_request.clone().unwrap();
    assert_eq!((auto.cpu, auto.memory), (Millicores(240), MiB(120)));
    // One attempt of `report` is too few.
    assert!(usage[1].auto_request.is_none());
    sim.check();
}

#[test]
fn a_right_sizing_leaf_gives_jobs_that_name_nothing_what_their_name_used() {
    let (mut sim, worker) = sim(Some(AutoResources::default()));
    // Before 5 attempts: the queue's default.
    for _ in 0..4 {
        let id = run_measured(&mut sim, worker, "load", 100, 250);
        assert_eq!(
            sim.rm.job(id).unwrap().spec.request,
            Resources::cores(1, 400)
        );
    }
    run_measured(&mut sim, worker, "load", 100, 250);
    let req = command(&mut sim, "load");
    let id = sim.submit(req).unwrap().id();
    let request = &sim.rm.job(id).unwrap().spec.request;
    assert_eq!((request.cpu, request.memory), (Millicores(300), MiB(120)));
    // A job naming its resources keeps them...
    let mut named = command(&mut sim, "load");
    named.request = Some(Resources::cores(2, 1000));
    let named = sim.submit(named).unwrap().id();
    assert_eq!(
        sim.rm.job(named).unwrap().spec.request,
        Resources::cores(2, 1000)
    );
    // ...unless it asks for `auto`.
    let mut asked = command(&mut sim, "load");
    asked.request = Some(Resources::cores(2, 1000));
    asked.auto_request = true;
    let asked = sim.submit(asked).unwrap().id();
    assert_eq!(sim.rm.job(asked).unwrap().spec.request.memory, MiB(120));
    // Another name has its own figures: none yet.
    let req = command(&mut sim, "other");
    let other = sim.submit(req).unwrap().id();
    assert_eq!(
        sim.rm.job(other).unwrap().spec.request,
        Resources::cores(1, 400)
    );
    sim.check();
}

#[test]
fn bounds_hold_and_a_job_asking_for_auto_in_a_plain_leaf_gets_the_default_bounds() {
    let bounded = AutoResources {
        min: Resources::new(Millicores(100), MiB(200), 0),
        max: Some(Resources::new(Millicores(500), MiB(300), 0)),
        ..AutoResources::default()
    };
    let (mut sim, worker) = sim(Some(bounded));
    for _ in 0..5 {
        run_measured(&mut sim, worker, "tiny", 10, 10);
    }
    let req = command(&mut sim, "tiny");
    let id = sim.submit(req).unwrap().id();
    let request = &sim.rm.job(id).unwrap().spec.request;
    assert_eq!((request.cpu, request.memory), (Millicores(100), MiB(200)));
    for _ in 0..5 {
        run_measured(&mut sim, worker, "huge", 3000, 3000);
    }
    let req = command(&mut sim, "huge");
    let id = sim.submit(req).unwrap().id();
    let request = &sim.rm.job(id).unwrap().spec.request;
    assert_eq!((request.cpu, request.memory), (Millicores(500), MiB(300)));

    let (mut plain, worker) = sim_plain();
    for _ in 0..5 {
        run_measured(&mut plain, worker, "load", 100, 250);
    }
    let req = command(&mut plain, "load");
    let id = plain.submit(req).unwrap().id();
    assert_eq!(
        plain.rm.job(id).unwrap().spec.request,
        Resources::cores(1, 400)
    );
    let mut asked = command(&mut plain, "load");
    asked.auto_request = true;
    let asked = plain.submit(asked).unwrap().id();
    let request = &plain.rm.job(asked).unwrap().spec.request;
    assert_eq!((request.cpu, request.memory), (Millicores(300), MiB(120)));
    plain.check();
    sim.check();
}

fn sim_plain() -> (Sim, WorkerId) {
    sim(None)
}

#[test]
fn an_attempt_killed_for_its_memory_runs_again_with_twice_as_much_without_spending_a_retry() {
    let bounded = AutoResources {
        max: Some(Resources::new(Millicores(4000), MiB(1600), 0)),
        ..AutoResources::default()
    };
    let (mut sim, worker) = sim(Some(bounded));
    let req = command(&mut sim, "hungry");
    let id = sim.submit(req).unwrap().id();
    let oom = |message: &str| ReportedResult::Failed {
        exit_code: None,
        message: message.into(),
        retry: true,
    };
    // 400 → 800 → 1,600 MiB (the bound), each time at once and with no failure counted.
    for (attempt, memory) in [(1, 800), (2, 1600)] {
        sim.pass();
        sim.poll_running(worker);
        assert_eq!(sim.state(id), JobState::Running, "attempt {attempt}");
        let token = sim.rm.job(id).unwrap().current_token().unwrap();
        let usage = Usage {
            peak_memory: MiB(memory / 2),
            cpu_ms: 10,
        };
        sim.report_measured(
            worker,
            id,
            token,
            oom("killed for exceeding its memory"),
            Some(usage),
            true,
        );
        let job = sim.rm.job(id).unwrap();
        assert_eq!(job.state, JobState::Pending);
        assert_eq!(job.spec.request.memory, MiB(memory));
        assert_eq!(job.failures, 0);
        assert_eq!(job.not_before, None);
        match &job.attempts.last().unwrap().outcome {
            Some(AttemptOutcome::Failed { message, .. }) => {
                assert!(
                    message.contains(&format!("runs again with {memory} MiB")),
                    "{message}"
                );
            }
            other => panic!("{other:?}"),
        }
    }
    // At the bound: an ordinary failure (one attempt allowed by default: the job fails).
    sim.pass();
    sim.poll_running(worker);
    let token = sim.rm.job(id).unwrap().current_token().unwrap();
    sim.report_measured(worker, id, token, oom("killed again"), None, true);
    let job = sim.rm.job(id).unwrap();
    assert_eq!(job.state, JobState::Failed);
    assert_eq!((job.failures, job.spec.request.memory), (1, MiB(1600)));
    sim.check();
}

#[test]
fn without_a_bound_memory_grows_up_to_the_largest_worker() {
    let (mut sim, worker) = sim(None);
    let mut req = command(&mut sim, "hungry");
    req.request = Some(Resources::cores(1, 3000));
    let id = sim.submit(req).unwrap().id();
    sim.pass();
    sim.poll_running(worker);
    let token = sim.rm.job(id).unwrap().current_token().unwrap();
    let oom = ReportedResult::Failed {
        exit_code: None,
        message: "killed".into(),
        retry: true,
    };
    sim.report_measured(worker, id, token, oom, None, true);
    assert_eq!(sim.rm.job(id).unwrap().spec.request.memory, MiB(4000));
    // A failure the worker did not put down to memory is an ordinary one.
    sim.pass();
    sim.poll_running(worker);
    let token = sim.rm.job(id).unwrap().current_token().unwrap();
    let failed = ReportedResult::Failed {
        exit_code: Some(1),
        message: "boom".into(),
        retry: true,
    };
    sim.report_measured(worker, id, token, failed, None, false);
    assert_eq!(sim.state(id), JobState::Failed);
    sim.check();
}

#[test]
fn the_same_submission_sent_again_is_the_same_job_though_the_figures_moved() {
    let (mut sim, worker) = sim(Some(AutoResources::default()));
    for _ in 0..5 {
        run_measured(&mut sim, worker, "load", 100, 250);
    }
    let req = command(&mut sim, "load");
    let first = sim.submit(req.clone()).unwrap();
    for _ in 0..5 {
        run_measured(&mut sim, worker, "load", 300, 250);
    }
    assert_eq!(sim.submit(req).unwrap(), Submitted::Existing(first.id()));
    sim.check();
}
