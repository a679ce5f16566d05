//! Fair sharing among the users of a leaf: its fairness key, its user limit.
#![allow(clippy::unwrap_used)]

mod support;

use lqsm_core::*;
use support::*;

/// `n` one-core jobs of `user` (a value of the `tenant` key, or the submitter).
fn submit_as(sim: &mut Sim, queue: &str, user: &str, n: usize, priority: i32) -> Vec<JobId> {
    (0..n)
        .map(|_| {
            let mut req = sim.request(queue, one_core());
            req.keys.insert("tenant".into(), user.into());
            req.submitted_by = Some(user.into());
            req.priority = Some(priority);
            sim.submit(req).unwrap().id()
        })
        .collect()
}

fn fair_leaf(sim: &mut Sim, path: &str, capacity: f64, key: &str, factor: Option<f64>) {
    let config = QueueConfig {
        fairness_key: Some(key.into()),
        user_limit_factor: factor,
        ..QueueConfig::with_capacity(capacity, 100.0)
    };
    sim.rm.create_queue(path, config).unwrap();
}

/// Attempts each user holds in `queue`, as `(user, running)`, largest first.
fn running_by_user(sim: &Sim, queue: &str) -> Vec<(String, u32)> {
    sim.rm
        .queue(queue)
        .unwrap()
        .users()
        .into_iter()
        .map(|u| (u.name, u.running))
        .collect()
}

fn running_of(sim: &Sim, jobs: &[JobId]) -> usize {
    jobs.iter()
        .filter(|j| matches!(sim.state(**j), JobState::Scheduled | JobState::Running))
        .count()
}

#[test]
fn one_users_flood_does_not_starve_another_who_came_later() {
    for fair in [false, true] {
        let mut sim = Sim::new(Config::default());
        if fair {
            fair_leaf(&mut sim, "root.shared", 100.0, "tenant", None);
        } else {
            sim.queue("root.shared", 100.0, 100.0);
        }
        sim.worker("w", 4, 4000);
        let alice = submit_as(&mut sim, "root.shared", "alice", 100, 0);
        let bob = submit_as(&mut sim, "root.shared", "bob", 2, 0);
        sim.pass();
        sim.check();
        // First come, first served gives alice every core; fair sharing, half each.
        let expected = if fair { (2, 2) } else { (4, 0) };
        assert_eq!(
            (running_of(&sim, &alice), running_of(&sim, &bob)),
            expected,
            "fair: {fair}"
        );
    }
}

#[test]
fn the_user_holding_least_goes_next() {
    let mut sim = Sim::new(Config::default());
    fair_leaf(&mut sim, "root.shared", 100.0, "tenant", None);
    let w = sim.worker("w", 3, 3000);
    let alice = submit_as(&mut sim, "root.shared", "alice", 10, 0);
    let bob = submit_as(&mut sim, "root.shared", "bob", 10, 0);
    submit_as(&mut sim, "root.shared", "carol", 10, 0);
    sim.pass();
    assert_eq!(
        running_by_user(&sim, "root.shared"),
        vec![("alice".into(), 1), ("bob".into(), 1), ("carol".into(), 1)]
    );
    // Bob's job ends: bob holds least, so bob's next job takes the core, although
    // alice's waited longer.
    sim.poll_running(w);
    sim.succeed(w, bob[0]);
    sim.pass();
    sim.check();
    assert_eq!(sim.state(bob[1]), JobState::Scheduled);
    assert_eq!(sim.state(alice[1]), JobState::Pending);
}

#[test]
fn users_holding_the_same_take_turns() {
    let mut sim = Sim::new(Config::default());
    fair_leaf(&mut sim, "root.shared", 100.0, "tenant", None);
    let w = sim.worker("w", 1, 1000);
    let alice = submit_as(&mut sim, "root.shared", "alice", 3, 0);
    let bob = submit_as(&mut sim, "root.shared", "bob", 3, 0);
    // One core: whenever it frees, both hold nothing, and the one served longest ago
    // goes next.
    let mut order = Vec::new();
    for _ in 0..4 {
        sim.pass();
        sim.check();
        let running = sim.poll_running(w);
        assert_eq!(running.len(), 1);
        let job = running[0].job;
        order.push(if alice.contains(&job) { "alice" } else { "bob" });
        assert!(alice.contains(&job) || bob.contains(&job));
        sim.succeed(w, job);
    }
    assert_eq!(order, ["alice", "bob", "alice", "bob"]);
}

#[test]
fn fairness_acts_inside_a_priority_a_higher_priority_goes_first_whatever_its_user_holds() {
    let mut sim = Sim::new(Config::default());
    fair_leaf(&mut sim, "root.shared", 100.0, "tenant", None);
    sim.worker("w", 3, 3000);
    let alice_low = submit_as(&mut sim, "root.shared", "alice", 1, 0);
    let bob_low = submit_as(&mut sim, "root.shared", "bob", 5, 0);
    let alice_high = submit_as(&mut sim, "root.shared", "alice", 2, 9);
    sim.pass();
    sim.check();
    // Alice's two urgent jobs first, then the one core left goes to bob, who holds
    // nothing, before alice's ordinary job.
    assert_eq!(running_of(&sim, &alice_high), 2);
    assert_eq!(running_of(&sim, &bob_low), 1);
    assert_eq!(running_of(&sim, &alice_low), 0);
}

#[test]
fn a_user_limit_keeps_each_user_within_its_multiple_of_the_guarantee() {
    let mut sim = Sim::new(Config::default());
    // The leaf is guaranteed half the cluster and may borrow all of it; one user may
    // hold the guarantee (factor 1), so it takes two users to borrow.
    fair_leaf(&mut sim, "root.shared", 50.0, "user", Some(1.0));
    sim.queue("root.idle", 50.0, 100.0);
    sim.worker("w", 10, 10_000);
    let alice = submit_as(&mut sim, "root.shared", "alice", 20, 0);
    sim.pass();
    sim.check();
    assert_eq!(running_of(&sim, &alice), 5);
    assert_eq!(sim.rm.queue("root.shared").unwrap().stats().pending, 15);
    let bob = submit_as(&mut sim, "root.shared", "bob", 20, 0);
    sim.pass();
    sim.check();
    assert_eq!((running_of(&sim, &alice), running_of(&sim, &bob)), (5, 5));
}

#[test]
fn each_user_may_run_one_job_however_low_its_limit() {
    let mut sim = Sim::new(Config::default());
    fair_leaf(&mut sim, "root.shared", 10.0, "user", Some(0.01));
    sim.worker("w", 8, 8000);
    let alice = submit_as(&mut sim, "root.shared", "alice", 4, 0);
    let bob = submit_as(&mut sim, "root.shared", "bob", 4, 0);
    sim.pass();
    sim.check();
    assert_eq!((running_of(&sim, &alice), running_of(&sim, &bob)), (1, 1));
    // A third user's first job is not held back by the others being at their limits.
    let carol = submit_as(&mut sim, "root.shared", "carol", 1, 0);
    sim.pass();
    sim.check();
    assert_eq!(running_of(&sim, &carol), 1);
}

#[test]
fn a_user_at_its_limit_runs_again_when_a_worker_joins() {
    let mut sim = Sim::new(Config::default());
    fair_leaf(&mut sim, "root.shared", 100.0, "user", Some(0.5));
    sim.worker("a", 4, 4000);
    let alice = submit_as(&mut sim, "root.shared", "alice", 8, 0);
    sim.pass();
    assert_eq!(running_of(&sim, &alice), 2);
    // A second worker doubles the cluster, and half of it is twice as much.
    sim.worker("b", 4, 4000);
    sim.pass();
    sim.check();
    assert_eq!(running_of(&sim, &alice), 4);
}

#[test]
fn the_submitter_is_the_user_not_a_key_the_job_names() {
    let mut sim = Sim::new(Config::default());
    fair_leaf(&mut sim, "root.shared", 100.0, FAIRNESS_BY_USER, None);
    sim.worker("w", 2, 2000);
    let mut mallory = Vec::new();
    for alias in ["x", "y", "z"] {
        let mut req = sim.request("root.shared", one_core());
        req.submitted_by = Some("mallory".into());
        req.keys.insert("user".into(), alias.into());
        mallory.push(sim.submit(req).unwrap().id());
    }
    let bob = submit_as(&mut sim, "root.shared", "bob", 1, 0);
    sim.pass();
    sim.check();
    assert_eq!((running_of(&sim, &mallory), running_of(&sim, &bob)), (1, 1));
    assert_eq!(
        running_by_user(&sim, "root.shared"),
        vec![("bob".into(), 1), ("mallory".into(), 1)]
    );
}

#[test]
fn jobs_without_the_key_share_one_place_in_line() {
    let mut sim = Sim::new(Config::default());
    fair_leaf(&mut sim, "root.shared", 100.0, "tenant", None);
    sim.worker("w", 2, 2000);
    let anonymous = sim.submit_n("root.shared", 5, one_core());
    let acme = submit_as(&mut sim, "root.shared", "acme", 1, 0);
    sim.pass();
    sim.check();
    assert_eq!(
        (running_of(&sim, &anonymous), running_of(&sim, &acme)),
        (1, 1)
    );
}

#[test]
fn turning_fairness_on_counts_what_each_user_already_runs() {
    let mut sim = Sim::new(Config::default());
    sim.queue("root.shared", 100.0, 100.0);
    let w = sim.worker("w", 4, 4000);
    let alice = submit_as(&mut sim, "root.shared", "alice", 10, 0);
    sim.pass();
    assert_eq!(running_of(&sim, &alice), 4);
    let bob = submit_as(&mut sim, "root.shared", "bob", 10, 0);
    let update = QueueUpdate {
        fairness_key: Some(Some("tenant".into())),
        ..QueueUpdate::default()
    };
    sim.rm.update_queue("root.shared", &update).unwrap();
    assert_eq!(
        running_by_user(&sim, "root.shared"),
        vec![("alice".into(), 4)]
    );
    // Alice holds the whole cluster: each core she frees goes to bob.
    sim.poll_running(w);
    sim.succeed(w, alice[0]);
    sim.succeed(w, alice[1]);
    sim.pass();
    sim.check();
    assert_eq!((running_of(&sim, &alice), running_of(&sim, &bob)), (2, 2));
    // And off again: first come, first served, alice's jobs are older.
    let update = QueueUpdate {
        fairness_key: Some(None),
        ..QueueUpdate::default()
    };
    sim.rm.update_queue("root.shared", &update).unwrap();
    assert!(sim.rm.queue("root.shared").unwrap().users().is_empty());
    sim.poll_running(w);
    sim.succeed(w, bob[0]);
    sim.pass();
    sim.check();
    assert_eq!(sim.state(alice[4]), JobState::Scheduled);
}

#[test]
fn fairness_settings_are_checked_and_named() {
    let mut sim = Sim::new(Config::default());
    let bad = |config: QueueConfig| {
        let mut sim = Sim::new(Config::default());
        match sim.rm.create_queue("root.q", config) {
            Err(QueueError::InvalidConfig { field, .. }) => field,
            other => panic!("accepted: {other:?}"),
        }
    };
    let fair = |key: &str, factor: Option<f64>, capacity: f64| QueueConfig {
        fairness_key: Some(key.into()),
        user_limit_factor: factor,
        ..QueueConfig::with_capacity(capacity, 100.0)
    };
    assert_eq!(bad(fair("Tenant!", None, 10.0)), "fairness_key");
    assert_eq!(bad(fair("user", Some(0.0), 10.0)), "user_limit_factor");
    assert_eq!(bad(fair("user", Some(f64::NAN), 10.0)), "user_limit_factor");
    assert_eq!(bad(fair("user", Some(1.0), 0.0)), "user_limit_factor");
    let no_key = QueueConfig {
        user_limit_factor: Some(1.0),
        ..QueueConfig::with_capacity(10.0, 100.0)
    };
    assert_eq!(bad(no_key), "user_limit_factor");
    // A queue with children holds no jobs to share.
    sim.queue("root.parent", 50.0, 100.0);
    sim.queue("root.parent.leaf", 100.0, 100.0);
    let update = QueueUpdate {
        fairness_key: Some(Some("user".into())),
        ..QueueUpdate::default()
    };
    match sim.rm.update_queue("root.parent", &update) {
        Err(QueueError::InvalidConfig { field, .. }) => assert_eq!(field, "fairness_key"),
        other => panic!("accepted: {other:?}"),
    }
}

#[test]
fn shares_survive_a_restart_with_the_attempts_reclaimed() {
    let mut sim = Sim::new(Config::default());
    fair_leaf(&mut sim, "root.shared", 100.0, "tenant", None);
    let w = sim.worker("w", 4, 4000);
    let alice = submit_as(&mut sim, "root.shared", "alice", 4, 0);
    sim.pass();
    assert_eq!(running_of(&sim, &alice), 4);
    let bob = submit_as(&mut sim, "root.shared", "bob", 4, 0);
    let alice_more = submit_as(&mut sim, "root.shared", "alice", 4, 0);
    sim.poll_running(w);
    sim.restart(std::time::Duration::from_secs(30));
    sim.worker_back(w, 4);
    sim.poll_running(w);
    sim.pass();
    sim.check();
    assert_eq!(
        running_by_user(&sim, "root.shared"),
        vec![("alice".into(), 4)]
    );
    sim.succeed(w, alice[0]);
    sim.pass();
    sim.check();
    assert_eq!(running_of(&sim, &bob), 1);
    assert_eq!(running_of(&sim, &alice_more), 0);
}
