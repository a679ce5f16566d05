//! Scenarios that pin the YARN CapacityScheduler semantics the allocation algorithm
//! follows: guarantees, elastic sharing up to ceilings, preemption, DRF and nesting.
#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

mod support;

use lqsm_core::*;
use std::time::Duration;
use support::{Sim, one_core};

/// 100 one-core workers: 100 cpus in all.
fn hundred_cpus(sim: &mut Sim) {
    for i in 0..100 {
        sim.worker(&format!("w{i}"), 1, 1000);
    }
}

/// A cluster with preemption on or off, acting `delay_s` after a queue starves, whose
/// workers are never declared lost (they do not poll in these scenarios).
fn preempting_sim(enabled: bool, delay_s: u64) -> Sim {
    let mut config = Config::default();
    config.preemption.enabled = enabled;
    config.preemption.delay = Duration::from_secs(delay_s);
    config.heartbeat_timeout = Duration::from_secs(3600);
    Sim::new(config)
}

fn seventy_thirty(preemption: bool, a_max: f64, b_max: f64) -> Sim {
    let mut sim = preempting_sim(preemption, 10);
    sim.queue("root.a", 70.0, a_max);
    sim.queue("root.b", 30.0, b_max);
    hundred_cpus(&mut sim);
    sim
}

fn assert_near(actual: f64, expected: f64, tolerance: f64, what: &str) {
    assert!(
        (actual - expected).abs() <= tolerance,
        "{what}: {actual} is not within {tolerance} of {expected}"
    );
}

#[test]
fn flooded_queues_split_by_guarantee_seventy_thirty() {
    let mut sim = seventy_thirty(false, 100.0, 100.0);
    sim.submit_n("root.a", 500, one_core());
    sim.submit_n("root.b", 500, one_core());
    let report = sim.pass();
    assert_eq!(report.placed, 100);
    assert_near(sim.used_cores("root.a"), 70.0, 1.0, "root.a cpus");
    assert_near(sim.used_cores("root.b"), 30.0, 1.0, "root.b cpus");
    sim.check();
}

#[test]
fn split_holds_as_attempts_finish_and_are_replaced() {
    let mut sim = seventy_thirty(false, 100.0, 100.0);
    let a = sim.submit_n("root.a", 600, one_core());
    let b = sim.submit_n("root.b", 600, one_core());
    sim.pass();
    for round in 0..5 {
        // Every worker finishes what it runs; the freed capacity is shared again.
        let workers: Vec<WorkerId> = sim.rm.workers().map(|w| w.id).collect();
        for w in workers {
            sim.poll_running(w);
            let held: Vec<JobId> = sim.still_running(w, None).iter().map(|(j, _)| *j).collect();
            for job in held {
                sim.succeed(w, job);
            }
        }
        sim.pass();
        assert_near(
            sim.used_cores("root.a"),
            70.0,
            1.0,
            &format!("round {round} a"),
        );
        assert_near(
            sim.used_cores("root.b"),
            30.0,
            1.0,
            &format!("round {round} b"),
        );
    }
    let done = |ids: &[JobId]| {
        ids.iter()
            .filter(|j| sim.state(**j) == JobState::Succeeded)
            .count()
    };
    assert_eq!(done(&a), 350);
    assert_eq!(done(&b), 150);
    sim.check();
}

#[test]
fn idle_capacity_is_lent_up_to_max_capacity() {
    let mut sim = seventy_thirty(false, 90.0, 100.0);
    sim.submit_n("root.a", 500, one_core());
    sim.pass();
    assert_near(
        sim.used_cores("root.a"),
        90.0,
        1e-9,
        "root.a grows to its 90% ceiling",
    );
    assert_eq!(sim.rm.queue("root.a").unwrap().stats().pending, 410);

    let mut sim = seventy_thirty(false, 100.0, 100.0);
    sim.submit_n("root.a", 500, one_core());
    sim.pass();
    assert_near(
        sim.used_cores("root.a"),
        100.0,
        1e-9,
        "root.a takes the whole idle cluster",
    );
    sim.check();
}

#[test]
fn returning_queue_regains_its_guarantee_within_delay_plus_one_pass() {
    let mut sim = seventy_thirty(true, 100.0, 100.0);
    sim.submit_n("root.a", 500, one_core());
    sim.pass();
    assert_near(
        sim.used_cores("root.a"),
        100.0,
        1e-9,
        "a borrowed everything",
    );

    sim.advance(Duration::from_secs(1));
    sim.submit_n("root.b", 500, one_core());
    let report = sim.pass();
    assert_eq!(report.preempted, 0, "no preemption before the delay");
    assert_eq!(sim.used_cores("root.b"), 0.0);

    sim.advance(Duration::from_secs(9));
    assert_eq!(
        sim.pass().preempted,
        0,
        "9 s of waiting is still inside the 10 s delay"
    );
    sim.advance(Duration::from_secs(1));
    let report = sim.pass();
    assert_near(report.preempted as f64, 30.0, 1.0, "attempts taken back");
    assert_near(
        sim.used_cores("root.b"),
        30.0,
        1.0,
        "root.b after delay + one pass",
    );
    assert_near(
        sim.used_cores("root.a"),
        70.0,
        1.0,
        "root.a keeps its guarantee",
    );
    let preempted_kills = sim
        .log
        .kills
        .iter()
        .filter(|k| k.reason == KillReason::Preempted)
        .count();
    assert_eq!(preempted_kills as u64, report.preempted);

    // Victims go back to pending without using up an attempt.
    let victim = sim.log.kills[0].job;
    let job = sim.rm.job(victim).unwrap();
    assert_eq!(job.state, JobState::Pending);
    assert_eq!(job.failures, 0);
    assert_eq!(job.attempts[0].outcome, Some(AttemptOutcome::Preempted));

    // And nothing thrashes afterwards.
    for _ in 0..5 {
        sim.advance(Duration::from_secs(11));
        let report = sim.pass();
        assert_eq!(report.preempted, 0);
    }
    sim.check();
}

#[test]
fn preemption_off_means_the_borrower_keeps_what_it_runs() {
    let mut sim = seventy_thirty(false, 100.0, 100.0);
    sim.submit_n("root.a", 500, one_core());
    sim.pass();
    sim.submit_n("root.b", 500, one_core());
    sim.advance(Duration::from_secs(60));
    let report = sim.pass();
    assert_eq!(report.preempted, 0);
    assert_eq!(sim.used_cores("root.a"), 100.0);
}

#[test]
fn a_queue_that_opted_out_is_never_preempted() {
    let mut sim = seventy_thirty(true, 100.0, 100.0);
    sim.rm
        .update_queue(
            "root.a",
            &QueueUpdate {
                preemptable: Some(false),
                ..QueueUpdate::default()
            },
        )
        .unwrap();
    sim.submit_n("root.a", 500, one_core());
    sim.pass();
    sim.submit_n("root.b", 500, one_core());
    sim.pass();
    sim.advance(Duration::from_secs(30));
    let report = sim.pass();
    assert_eq!(report.preempted, 0);
    assert_eq!(sim.used_cores("root.a"), 100.0);
}

#[test]
fn drf_equalises_dominant_shares_of_cpu_heavy_and_memory_heavy_queues() {
    let mut sim = Sim::new(Config::default());
    sim.queue("root.cpu", 50.0, 100.0);
    sim.queue("root.mem", 50.0, 100.0);
    // 10 workers of 10 cores and 100 GiB: 100 cores, 1000 GiB.
    for i in 0..10 {
        sim.worker(&format!("w{i}"), 10, 100 * 1024);
    }
    // cpu-heavy: 2 cores + 4 GiB (2% cpu, 0.4% memory).
    sim.submit_n("root.cpu", 200, Resources::cores(2, 4 * 1024));
    // memory-heavy: 0.5 core + 20 GiB (0.5% cpu, 2% memory).
    let mem_job = Resources::new(Millicores(500), MiB(20 * 1024), 0);
    sim.submit_n("root.mem", 200, mem_job);
    sim.pass();
    let cpu_share = sim.rm.queue("root.cpu").unwrap().dominant_share();
    let mem_share = sim.rm.queue("root.mem").unwrap().dominant_share();
    assert!(
        cpu_share > 0.3 && mem_share > 0.3,
        "{cpu_share} {mem_share}"
    );
    assert_near(
        cpu_share,
        mem_share,
        0.021,
        "dominant shares (one job apart at most)",
    );
    sim.check();
}

#[test]
fn guarantees_nest_in_a_three_level_tree() {
    let mut sim = Sim::new(Config::default());
    sim.queue("root.eng", 60.0, 100.0);
    sim.queue("root.ops", 40.0, 100.0);
    sim.queue("root.eng.ml", 50.0, 100.0);
    sim.queue("root.eng.web", 50.0, 100.0);
    sim.queue("root.eng.ml.train", 80.0, 100.0);
    sim.queue("root.eng.ml.serve", 20.0, 100.0);
    hundred_cpus(&mut sim);
    for leaf in [
        "root.eng.ml.train",
        "root.eng.ml.serve",
        "root.eng.web",
        "root.ops",
    ] {
        sim.submit_n(leaf, 300, one_core());
    }
    sim.pass();
    assert_near(sim.used_cores("root.ops"), 40.0, 1.0, "ops");
    assert_near(sim.used_cores("root.eng"), 60.0, 1.0, "eng");
    assert_near(sim.used_cores("root.eng.web"), 30.0, 1.0, "web");
    assert_near(sim.used_cores("root.eng.ml"), 30.0, 1.0, "ml");
    assert_near(sim.used_cores("root.eng.ml.train"), 24.0, 1.0, "train");
    assert_near(sim.used_cores("root.eng.ml.serve"), 6.0, 1.0, "serve");
    sim.check();
}

#[test]
fn nested_idle_capacity_goes_to_the_sibling_first() {
    // ml idle: web may borrow eng's share before ops gets anything beyond its own.
    let mut sim = Sim::new(Config::default());
    sim.queue("root.eng", 60.0, 100.0);
    sim.queue("root.ops", 40.0, 100.0);
    sim.queue("root.eng.ml", 50.0, 100.0);
    sim.queue("root.eng.web", 50.0, 100.0);
    hundred_cpus(&mut sim);
    sim.submit_n("root.eng.web", 300, one_core());
    sim.submit_n("root.ops", 300, one_core());
    sim.pass();
    assert_near(
        sim.used_cores("root.eng.web"),
        60.0,
        1.0,
        "web takes eng's whole guarantee",
    );
    assert_near(sim.used_cores("root.ops"), 40.0, 1.0, "ops");
}

#[test]
fn weight_breaks_ties_between_equal_queues() {
    let mut sim = Sim::new(Config::default());
    sim.queue("root.light", 50.0, 100.0);
    sim.queue("root.heavy", 50.0, 100.0);
    sim.rm
        .update_queue(
            "root.heavy",
            &QueueUpdate {
                weight: Some(5),
                ..QueueUpdate::default()
            },
        )
        .unwrap();
    sim.worker("only", 1, 1000);
    sim.submit_n("root.light", 1, one_core());
    sim.submit_n("root.heavy", 1, one_core());
    sim.pass();
    assert_eq!(sim.used_cores("root.heavy"), 1.0);
    assert_eq!(sim.used_cores("root.light"), 0.0);
}

#[test]
fn max_running_caps_a_leaf() {
    let mut sim = seventy_thirty(false, 100.0, 100.0);
    sim.rm
        .update_queue(
            "root.a",
            &QueueUpdate {
                max_running: Some(Some(5)),
                ..QueueUpdate::default()
            },
        )
        .unwrap();
    sim.submit_n("root.a", 50, one_core());
    sim.pass();
    assert_eq!(sim.rm.queue("root.a").unwrap().running(), 5);
}

#[test]
fn placement_honours_labels_kinds_and_fit() {
    let mut sim = Sim::new(Config::default());
    sim.queue("root.q", 100.0, 100.0);
    let plain = sim.worker("plain", 8, 8000);
    let gpu = sim.worker_with(
        "gpu",
        Resources::new(Millicores(8000), MiB(8000), 2),
        &[("accel", "a100")],
    );
    let mut req = sim.request("root.q", Resources::new(Millicores(1000), MiB(100), 1));
    req.selector.insert("accel".into(), "a100".into());
    let gpu_job = sim.submit(req).unwrap().id();
    let mut req = sim.request("root.q", Resources::cores(1, 100));
    req.selector.insert("accel".into(), "tpu".into());
    let nowhere = sim.submit(req).unwrap().id();
    let too_big = sim.submit_n("root.q", 1, Resources::cores(9, 100))[0];
    sim.pass();
    assert_eq!(
        sim.rm
            .job(gpu_job)
            .unwrap()
            .current_attempt()
            .unwrap()
            .worker,
        gpu
    );
    assert_eq!(sim.state(nowhere), JobState::Pending);
    assert_eq!(sim.state(too_big), JobState::Pending);
    let _ = plain;
    sim.check();
}

#[test]
fn best_fit_packs_and_spread_spreads() {
    let mut sim = Sim::new(Config::default());
    sim.queue("root.pack", 50.0, 100.0);
    sim.queue("root.wide", 50.0, 100.0);
    sim.rm
        .update_queue(
            "root.wide",
            &QueueUpdate {
                placement: Some(policy::SPREAD.into()),
                ..QueueUpdate::default()
            },
        )
        .unwrap();
    let small = sim.worker("small", 2, 1000);
    let big = sim.worker("big", 16, 1000);
    let packed = sim.submit_n("root.pack", 1, one_core())[0];
    sim.pass();
    assert_eq!(
        sim.rm
            .job(packed)
            .unwrap()
            .current_attempt()
            .unwrap()
            .worker,
        small
    );
    let spread = sim.submit_n("root.wide", 1, one_core())[0];
    sim.pass();
    assert_eq!(
        sim.rm
            .job(spread)
            .unwrap()
            .current_attempt()
            .unwrap()
            .worker,
        big
    );
}

#[test]
fn a_pass_with_nothing_new_does_nothing() {
    let mut sim = seventy_thirty(false, 100.0, 100.0);
    sim.submit_n("root.a", 500, one_core());
    assert!(sim.pass().ran);
    let again = sim.pass();
    assert!(!again.ran);
    assert_eq!(again.placed, 0);
}

#[test]
fn a_hundred_thousand_leaf_queues_work() {
    let mut sim = Sim::new(Config::default());
    for i in 0..100 {
        sim.queue(&format!("root.t{i}"), 1.0, 100.0);
        for j in 0..1_000 {
            sim.queue(&format!("root.t{i}.q{j}"), 0.1, 100.0);
        }
    }
    assert_eq!(sim.rm.queues().len(), 100_101);
    for i in 0..20 {
        sim.worker(&format!("w{i}"), 64, 64_000);
    }
    let mut ids = Vec::new();
    for k in 0..1_000 {
        let leaf = format!("root.t{}.q{}", k % 100, (k * 7) % 1_000);
        ids.extend(sim.submit_n(&leaf, 1, one_core()));
    }
    let report = sim.pass();
    assert_eq!(report.placed, 1_000);
    assert!(ids.iter().all(|j| sim.state(*j) == JobState::Scheduled));
    assert_eq!(sim.used_cores("root"), 1_000.0);
    sim.check();
}

#[test]
fn the_deepest_tree_nests_guarantees_all_the_way_down() {
    let mut sim = Sim::new(Config::default());
    let mut path = String::from("root");
    for depth in 1..=16 {
        path.push_str(&format!(".d{depth}"));
        sim.queue(&path, 50.0, 100.0);
        let sibling = format!("{}.s", path.rsplit_once('.').unwrap().0);
        sim.queue(&sibling, 50.0, 100.0);
    }
    let too_deep = format!("{path}.x");
    assert!(matches!(
        sim.rm.create_queue(&too_deep, QueueConfig::default()),
        Err(QueueError::InvalidPath { .. })
    ));
    hundred_cpus(&mut sim);
    sim.submit_n(&path, 10, one_core());
    sim.pass();
    let deepest = sim.rm.queue(&path).unwrap();
    assert!((deepest.abs_guarantee() - 0.5f64.powi(16)).abs() < 1e-15);
    assert_eq!(
        deepest.running(),
        10,
        "idle capacity flows down to the only demand"
    );
}

/// Found by the random invariant run: a leaf whose next job would lift its parent past
/// the ceiling marks the parent full, which holds back the siblings' smaller jobs too.
/// Draining that leaf takes its job out of the running, so the mark must go with it.
#[test]
fn draining_the_leaf_that_filled_a_ceiling_frees_its_siblings() {
    let mut sim = Sim::new(Config::default());
    sim.queue("root.p", 50.0, 50.0);
    sim.queue("root.p.x", 50.0, 100.0);
    sim.queue("root.p.y", 50.0, 100.0);
    sim.worker("w", 10, 10_000);
    let first = sim.submit_n("root.p.y", 1, one_core());
    sim.pass();
    assert_eq!(sim.state(first[0]), JobState::Scheduled);
    // p uses 1 of its 5 cores: x's 5-core job would lift it to 6, past the ceiling.
    sim.submit_n("root.p.x", 1, Resources::cores(5, 100));
    sim.pass();
    let waiting = sim.submit_n("root.p.y", 1, one_core());
    sim.pass();
    sim.rm.drain_queue("root.p.x").unwrap();
    sim.pass();
    assert_eq!(
        sim.state(waiting[0]),
        JobState::Scheduled,
        "p.y's job fits under p's ceiling once p.x drains"
    );
    sim.check();
}

fn priority_preempting(enabled_in_cluster: bool, queue_flag: bool) -> (Sim, WorkerId) {
    let mut sim = preempting_sim(enabled_in_cluster, 5);
    sim.queue("root.q", 100.0, 100.0);
    sim.rm
        .update_queue(
            "root.q",
            &QueueUpdate {
                priority_preemption: Some(queue_flag),
                ..QueueUpdate::default()
            },
        )
        .unwrap();
    let worker = sim.worker("w", 4, 4000);
    (sim, worker)
}

fn submit_with_priority(sim: &mut Sim, priority: i32, cores: u64) -> JobId {
    let mut req = sim.request("root.q", Resources::cores(cores, 100));
    req.priority = Some(priority);
    sim.submit(req).unwrap().id()
}

/// YARN's intra-queue preemption: a higher-priority job waiting past the delay takes
/// the place of the lowest-priority, newest attempts of its own queue — only as many as
/// it needs, on one worker — and starts there at once; the victims wait, their attempt
/// not spent.
#[test]
fn a_higher_priority_job_takes_the_place_of_lower_ones_in_its_queue() {
    let (mut sim, worker) = priority_preempting(true, true);
    let low = submit_with_priority(&mut sim, 0, 1);
    let lowest: Vec<JobId> = (0..3)
        .map(|_| submit_with_priority(&mut sim, -1, 1))
        .collect();
    sim.pass();
    assert_eq!(sim.rm.worker(worker).unwrap().attempt_count(), 4);
    let urgent = submit_with_priority(&mut sim, 5, 2);
    sim.pass();
    assert_eq!(sim.state(urgent), JobState::Pending);
    sim.advance(Duration::from_secs(4));
    sim.pass();
    assert!(sim.log.kills.is_empty(), "not before the delay");
    sim.advance(Duration::from_secs(2));
    sim.pass();
    let killed: Vec<JobId> = sim.log.kills.iter().map(|k| k.job).collect();
    assert_eq!(
        killed,
        [lowest[2], lowest[1]],
        "the newest of the lowest priority, two"
    );
    assert!(
        sim.log
            .kills
            .iter()
            .all(|k| k.reason == KillReason::Preempted)
    );
    assert_eq!(sim.state(urgent), JobState::Scheduled);
    assert_eq!(sim.state(low), JobState::Scheduled);
    for victim in &killed {
        assert_eq!(sim.state(*victim), JobState::Pending);
        assert_eq!(sim.rm.job(*victim).unwrap().failures, 0, "no attempt spent");
    }
    sim.check();
}

/// Equal priority never preempts; neither does a queue without the setting, nor any
/// queue while the cluster's preemption is off.
#[test]
fn priority_preemption_needs_a_higher_rank_the_queue_setting_and_the_cluster_switch() {
    for (cluster, queue, priority) in [(true, true, 0), (true, false, 5), (false, true, 5)] {
        let (mut sim, _) = priority_preempting(cluster, queue);
        for _ in 0..4 {
            submit_with_priority(&mut sim, 0, 1);
        }
        sim.pass();
        let waiting = submit_with_priority(&mut sim, priority, 1);
        sim.pass();
        sim.advance(Duration::from_secs(60));
        sim.pass();
        assert!(sim.log.kills.is_empty(), "{cluster} {queue} {priority}");
        assert_eq!(sim.state(waiting), JobState::Pending);
        sim.check();
    }
}

/// A queue held at its ceiling, not by a full cluster: the freed share lets the job in.
#[test]
fn priority_preemption_makes_room_under_the_queues_ceiling() {
    let (mut sim, worker) = priority_preempting(true, true);
    sim.rm
        .update_queue(
            "root.q",
            &QueueUpdate {
                capacity: Some(50.0),
                max_capacity: Some(50.0),
                ..QueueUpdate::default()
            },
        )
        .unwrap();
    sim.worker("other", 4, 4000);
    for _ in 0..4 {
        submit_with_priority(&mut sim, 0, 1);
    }
    sim.pass();
    assert_eq!(
        sim.used_cores("root.q"),
        4.0,
        "at its ceiling: half of 8 cores"
    );
    let urgent = submit_with_priority(&mut sim, 3, 1);
    sim.advance(Duration::from_secs(6));
    sim.pass();
    assert_eq!(sim.log.kills.len(), 1);
    assert_eq!(sim.log.kills[0].worker, worker);
    assert_eq!(sim.state(urgent), JobState::Scheduled);
    assert_eq!(sim.used_cores("root.q"), 4.0);
    sim.check();
}

/// Room freed on two workers adds up to a starved queue's need but holds its job on
/// neither: nothing is preempted for nothing. Two 4-core workers each run a 2-core job
/// of root.c (at its guarantee, so not a victim) and one of root.b (borrowing); root.a
/// waits with a 4-core job. Taking both of root.b's jobs would free 4 cores, 2 on each.
#[test]
fn preemption_takes_nothing_when_the_freed_room_holds_the_job_on_no_worker() {
    let mut sim = preempting_sim(true, 10);
    sim.queue("root.a", 50.0, 100.0);
    sim.queue("root.b", 0.0, 100.0);
    sim.queue("root.c", 50.0, 100.0);
    sim.worker("w1", 4, 4000);
    sim.worker("w2", 4, 4000);
    let mut placed_jobs = Vec::new();
    for queue in ["root.c", "root.b", "root.c", "root.b"] {
        let req = sim.request(queue, Resources::cores(2, 100));
        let id = sim.submit(req).unwrap().id();
        sim.pass();
        let worker = sim
            .rm
            .job(id)
            .and_then(|j| j.attempts.last().map(|a| a.worker));
        placed_jobs.push((queue, id, worker));
    }
    let placed: Vec<_> = placed_jobs.iter().map(|(q, _, w)| (*q, *w)).collect();
    let on = |queue: &str| -> std::collections::BTreeSet<_> {
        placed
            .iter()
            .filter(|(q, _)| *q == queue)
            .map(|(_, w)| w.unwrap())
            .collect()
    };
    assert_eq!(
        on("root.b").len(),
        2,
        "one job of root.b on each worker: {placed:?}"
    );
    assert_eq!(
        on("root.c").len(),
        2,
        "one job of root.c on each worker: {placed:?}"
    );

    let req = sim.request("root.a", Resources::cores(4, 100));
    sim.submit(req).unwrap();
    sim.pass();
    sim.advance(Duration::from_secs(11));
    assert_eq!(
        sim.pass().preempted,
        0,
        "2 cores freed on each worker hold no 4-core job"
    );
    assert_eq!(sim.used_cores("root.b"), 4.0);

    // Once root.c's job on one worker ends, taking root.b's job there makes the room.
    let (c_job, c_worker) = placed_jobs
        .iter()
        .find(|(q, _, _)| *q == "root.c")
        .map(|(_, job, worker)| (*job, worker.unwrap()))
        .unwrap();
    sim.succeed(c_worker, c_job);
    sim.pass();
    sim.advance(Duration::from_secs(11));
    let report = sim.pass();
    assert_eq!(report.preempted, 1, "root.b's job beside the freed 2 cores");
    let victim = sim.log.kills.last().unwrap().job;
    assert_eq!(
        sim.rm
            .job(victim)
            .and_then(|j| j.attempts.last().map(|a| a.worker)),
        Some(c_worker)
    );
    sim.check();
}

/// The policy proposes victims on two workers in turn (root.b's jobs were spread, and
/// the newest go first): 2 cores from one worker and 2 from the other would cover the
/// 4-core need and hold the job on neither. Victims are taken one worker at a time, so
/// both come from one worker, and root.a's job starts there.
#[test]
fn preemption_frees_the_room_on_one_worker_when_victims_alternate_between_workers() {
    let mut sim = preempting_sim(true, 10);
    sim.queue("root.a", 50.0, 100.0);
    let mut spread = QueueConfig::with_capacity(0.0, 100.0);
    spread.placement = lqsm_core::policy::SPREAD.into();
    sim.rm.create_queue("root.b", spread).unwrap();
    sim.worker("w1", 4, 4000);
    sim.worker("w2", 4, 4000);
    let mut on = Vec::new();
    for _ in 0..4 {
        let req = sim.request("root.b", Resources::cores(2, 100));
        let id = sim.submit(req).unwrap().id();
        sim.pass();
        on.push(
            sim.rm
                .job(id)
                .and_then(|j| j.attempts.last().map(|a| a.worker)),
        );
    }
    assert!(
        on[0] != on[1] && on[2] != on[3],
        "root.b's jobs alternate between the workers: {on:?}"
    );

    let req = sim.request("root.a", Resources::cores(4, 100));
    let a_job = sim.submit(req).unwrap().id();
    sim.pass();
    sim.advance(Duration::from_secs(11));
    assert_eq!(sim.pass().preempted, 2);
    let victims: std::collections::BTreeSet<_> = sim
        .log
        .kills
        .iter()
        .map(|k| {
            sim.rm
                .job(k.job)
                .and_then(|j| j.attempts.last().map(|a| a.worker))
        })
        .collect();
    assert_eq!(victims.len(), 1, "both victims on one worker: {victims:?}");
    sim.pass();
    assert_eq!(
        sim.rm
            .job(a_job)
            .and_then(|j| j.attempts.last().map(|a| a.worker)),
        victims.into_iter().next().flatten(),
        "root.a's job starts where the room was made"
    );
    sim.check();
}
