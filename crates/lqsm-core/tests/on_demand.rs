//! Queues made on demand from a parent's template (`root.users.*`): the first submit
//! creates the leaf, an idle one is removed with its counters kept, a limit bounds how
//! many exist, and a refused submission leaves nothing behind.
#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

mod support;

use lqsm_core::*;
use std::time::Duration;
use support::{Sim, one_core};

const IDLE: Duration = Duration::from_secs(60);

/// A cluster with `root.users` making children of `child_capacity`% (at most
/// `max_queues` of them, removed after a minute idle) and one 4-core worker.
fn users(child_capacity: f64, max_queues: u32) -> (Sim, WorkerId) {
    let mut sim = Sim::new(Config::default());
    let template = QueueTemplate {
        child: QueueConfig {
            max_running: Some(3),
            ..QueueConfig::with_capacity(child_capacity, 50.0)
        },
        idle_removal: IDLE,
        max_queues,
    };
    sim.rm
        .create_queue(
            "root.users",
            QueueConfig {
                template: Some(Box::new(template)),
                ..QueueConfig::with_capacity(60.0, 100.0)
            },
        )
        .unwrap();
    sim.queue("root.batch", 40.0, 100.0);
    let worker = sim.worker("w", 4, 4000);
    (sim, worker)
}

#[test]
fn the_first_submit_makes_the_leaf_with_the_templates_settings() {
    let (mut sim, worker) = users(10.0, 100);
    assert!(sim.rm.find_queue("root.users.alice").is_none());
    let first = sim.submit_n("root.users.alice", 1, one_core())[0];
    let alice = sim.rm.queue("root.users.alice").unwrap();
    assert!(alice.on_demand());
    assert_eq!(alice.config().capacity, 10.0);
    assert_eq!(alice.config().max_running, Some(3));
    assert!(alice.note().is_none());
    // 10% of root.users' 60%.
    assert!((alice.abs_guarantee() - 0.06).abs() < 1e-9);
    // The second submit finds it.
    sim.submit_n("root.users.alice", 1, one_core());
    assert_eq!(
        sim.rm.queue("root.users.alice").unwrap().stats().submitted,
        2
    );
    assert_eq!(sim.rm.queue("root.users").unwrap().children().len(), 1);
    sim.pass();
    sim.poll_running(worker);
    assert_eq!(sim.state(first), JobState::Running);
    sim.check();
}

#[test]
fn a_guarantee_that_does_not_fit_beside_the_siblings_is_zero_with_a_note() {
    let (mut sim, _) = users(40.0, 100);
    sim.submit_n("root.users.alice", 1, one_core());
    sim.submit_n("root.users.bob", 1, one_core());
    // 40 + 40 fit; a third 40 would make 120%.
    sim.submit_n("root.users.carol", 1, one_core());
    for (user, capacity) in [("alice", 40.0), ("bob", 40.0), ("carol", 0.0)] {
        let q = sim.rm.queue(&format!("root.users.{user}")).unwrap();
        assert_eq!(q.config().capacity, capacity, "{user}");
    }
    let note = sim.rm.queue("root.users.carol").unwrap().note().unwrap();
    assert!(
        note.contains("guarantee of 0") && note.contains("120%"),
        "{note}"
    );
    sim.check();
}

#[test]
fn a_template_user_limit_is_dropped_with_the_guarantee_that_did_not_fit() {
    let mut sim = Sim::new(Config::default());
    let child = QueueConfig {
        fairness_key: Some("user".into()),
        user_limit_factor: Some(2.0),
        ..QueueConfig::with_capacity(60.0, 100.0)
    };
    sim.rm
        .create_queue(
            "root.teams",
            QueueConfig {
                template: Some(Box::new(QueueTemplate {
                    child,
                    ..QueueTemplate::default()
                })),
                ..QueueConfig::with_capacity(100.0, 100.0)
            },
        )
        .unwrap();
    sim.submit_n("root.teams.a", 1, one_core());
    sim.submit_n("root.teams.b", 1, one_core());
    let b = sim.rm.queue("root.teams.b").unwrap();
    assert_eq!(b.config().capacity, 0.0);
    assert_eq!(b.config().user_limit_factor, None);
    assert!(b.note().unwrap().contains("user_limit_factor"));
    sim.check();
}

#[test]
fn an_idle_leaf_is_removed_its_jobs_and_counters_stay_readable_and_a_submit_makes_it_again() {
    let (mut sim, worker) = users(10.0, 100);
    let job = sim.submit_n("root.users.alice", 1, one_core())[0];
    sim.pass();
    sim.poll_running(worker);
    // Busy far past the idle time: kept.
    sim.advance(IDLE * 3);
    sim.poll_running(worker);
    sim.pass();
    assert!(sim.rm.find_queue("root.users.alice").is_some());
    sim.succeed(worker, job);
    let idle_from = sim.now;
    assert_eq!(
        sim.rm.queue("root.users.alice").unwrap().idle_since(),
        Some(idle_from)
    );
    sim.advance(IDLE - Duration::from_secs(1));
    sim.poll_running(worker);
    sim.pass();
    assert!(sim.rm.find_queue("root.users.alice").is_some());
    sim.advance(Duration::from_secs(1));
    sim.poll_running(worker);
    sim.pass();
    assert!(sim.rm.find_queue("root.users.alice").is_none());
    assert!(sim.rm.queue("root.users").unwrap().children().is_empty());
    let retired = sim.rm.retired_queue("root.users.alice").unwrap();
    assert_eq!((retired.stats.submitted, retired.stats.succeeded), (1, 1));
    assert_eq!(retired.removed_at, sim.now);
    // The finished job is still there, in the queue it ran in.
    let held = sim.rm.job(job).unwrap();
    assert_eq!(held.state, JobState::Succeeded);
    assert_eq!(
        sim.rm.queue_path(held.queue).map(|p| p.as_str()),
        Some("root.users.alice")
    );
    // Back: made again, its counters carried on.
    sim.submit_n("root.users.alice", 1, one_core());
    let alice = sim.rm.queue("root.users.alice").unwrap();
    assert_eq!((alice.stats().submitted, alice.stats().succeeded), (2, 1));
    assert!(sim.rm.retired_queue("root.users.alice").is_none());
    sim.check();
}

#[test]
fn a_retired_queue_is_forgotten_after_the_retention() {
    let config = Config {
        retention: Duration::from_secs(3600),
        ..Config::default()
    };
    let mut sim = Sim::new(config);
    sim.rm
        .create_queue(
            "root.users",
            QueueConfig {
                template: Some(Box::new(QueueTemplate {
                    idle_removal: IDLE,
                    ..QueueTemplate::default()
                })),
                ..QueueConfig::default()
            },
        )
        .unwrap();
    let job = sim.submit_n("root.users.alice", 1, one_core())[0];
    sim.rm.cancel(job, "test", sim.now).unwrap();
    sim.advance(IDLE);
    sim.pass();
    assert!(sim.rm.retired_queue("root.users.alice").is_some());
    sim.advance(Duration::from_secs(3600));
    sim.pass();
    assert!(sim.rm.retired_queue("root.users.alice").is_none());
    assert!(
        sim.rm
            .durable_queue(&QueuePath::parse("root.users.alice").unwrap())
            .is_none()
    );
    sim.check();
}

#[test]
fn past_the_templates_limit_a_new_leaf_is_refused_until_one_is_removed() {
    let (mut sim, _) = users(0.0, 2);
    let a = sim.submit_n("root.users.a", 1, one_core())[0];
    sim.submit_n("root.users.b", 1, one_core());
    let req = sim.request("root.users.c", one_core());
    let refused = sim.submit(req).unwrap_err();
    assert!(
        matches!(
            refused,
            SubmitError::Queue(QueueError::OnDemandLimit { max: 2, .. })
        ),
        "{refused:?}"
    );
    assert!(refused.to_string().contains("max_queues"), "{refused}");
    assert!(sim.rm.find_queue("root.users.c").is_none());
    // Existing ones still take jobs.
    sim.submit_n("root.users.a", 1, one_core());
    // Once `a` is idle and removed, `c` may be made.
    sim.rm
        .cancel_selected(
            &JobSelection {
                queue: Some("root.users.a".into()),
                ..JobSelection::default()
            },
            "test",
            sim.now,
        )
        .unwrap();
    let _ = a;
    sim.advance(IDLE);
    sim.pass();
    assert!(sim.rm.find_queue("root.users.a").is_none());
    sim.submit_n("root.users.c", 1, one_core());
    assert!(sim.rm.find_queue("root.users.c").is_some());
    sim.check();
}

#[test]
fn a_refused_submission_makes_no_queue_and_leaves_a_retired_one_retired() {
    let (mut sim, _) = users(10.0, 100);
    let mut req = sim.request("root.users.alice", one_core());
    req.expires_at = Some(Timestamp(sim.now.0 - 1));
    let refused = sim.submit(req).unwrap_err();
    assert!(
        matches!(refused, SubmitError::InvalidField { .. }),
        "{refused:?}"
    );
    assert!(sim.rm.find_queue("root.users.alice").is_none());
    // A store would delete what it never held.
    let path = QueuePath::parse("root.users.alice").unwrap();
    assert!(sim.rm.durable_queue(&path).is_none());
    // Retire one, then refuse a submission to it: it stays retired, counters and all.
    let job = sim.submit_n("root.users.alice", 1, one_core())[0];
    sim.rm.cancel(job, "test", sim.now).unwrap();
    sim.advance(IDLE);
    sim.pass();
    let before = sim.rm.retired_queue("root.users.alice").unwrap().clone();
    let mut req = sim.request("root.users.alice", one_core());
    req.expires_at = Some(Timestamp(sim.now.0 - 1));
    sim.submit(req).unwrap_err();
    assert!(sim.rm.find_queue("root.users.alice").is_none());
    assert_eq!(sim.rm.retired_queue("root.users.alice"), Some(&before));
    assert_eq!(
        sim.rm.durable_queue(&path).unwrap().removed_at,
        Some(before.removed_at)
    );
    sim.check();
}

#[test]
fn a_parent_with_a_template_takes_no_jobs_and_a_leaf_holding_jobs_gets_no_template() {
    let (mut sim, _) = users(10.0, 100);
    let req = sim.request("root.users", one_core());
    let refused = sim.submit(req).unwrap_err();
    assert_eq!(refused, SubmitError::OnDemandParent("root.users".into()));
    assert!(refused.to_string().contains("root.users.<name>"));
    sim.submit_n("root.batch", 1, one_core());
    let update = QueueUpdate {
        template: Some(Some(Box::default())),
        ..QueueUpdate::default()
    };
    assert_eq!(
        sim.rm.update_queue("root.batch", &update),
        Err(QueueError::ParentHoldsJobs(
            QueuePath::parse("root.batch").unwrap()
        ))
    );
    // A template's own settings are checked, named under `template.`.
    let bad = QueueConfig {
        template: Some(Box::new(QueueTemplate {
            child: QueueConfig::with_capacity(30.0, 20.0),
            ..QueueTemplate::default()
        })),
        ..QueueConfig::default()
    };
    match sim.rm.create_queue("root.other", bad) {
        Err(QueueError::InvalidConfig { field, .. }) => assert_eq!(field, "template.max_capacity"),
        other => panic!("{other:?}"),
    }
    let nested = QueueConfig {
        template: Some(Box::new(QueueTemplate {
            child: QueueConfig {
                template: Some(Box::default()),
                ..QueueConfig::default()
            },
            ..QueueTemplate::default()
        })),
        ..QueueConfig::default()
    };
    match sim.rm.create_queue("root.other", nested) {
        Err(QueueError::InvalidConfig { field, .. }) => assert_eq!(field, "template.template"),
        other => panic!("{other:?}"),
    }
    let zero = QueueConfig {
        template: Some(Box::new(QueueTemplate {
            max_queues: 0,
            ..QueueTemplate::default()
        })),
        ..QueueConfig::default()
    };
    match sim.rm.create_queue("root.other", zero) {
        Err(QueueError::InvalidConfig { field, .. }) => assert_eq!(field, "template.max_queues"),
        other => panic!("{other:?}"),
    }
    sim.check();
}

#[test]
fn a_restart_keeps_leaves_made_on_demand_and_retired_ones_and_the_idle_clock_starts_again() {
    let (mut sim, _) = users(10.0, 100);
    let busy = sim.submit_n("root.users.busy", 1, one_core())[0];
    let gone = sim.submit_n("root.users.gone", 1, one_core())[0];
    sim.rm.cancel(gone, "test", sim.now).unwrap();
    sim.advance(IDLE);
    sim.pass();
    let idle = sim.submit_n("root.users.idle", 1, one_core())[0];
    sim.rm.cancel(idle, "test", sim.now).unwrap();
    sim.advance(IDLE / 2);
    sim.restart(Duration::from_secs(30));
    let busy_q = sim.rm.queue("root.users.busy").unwrap();
    assert!(busy_q.on_demand());
    assert_eq!(sim.rm.job(busy).unwrap().state, JobState::Pending);
    assert_eq!(
        sim.rm
            .retired_queue("root.users.gone")
            .map(|r| r.stats.cancelled),
        Some(1)
    );
    // The idle one starts its idle time again at the restart.
    sim.advance(IDLE - Duration::from_secs(1));
    sim.pass();
    assert!(sim.rm.find_queue("root.users.idle").is_some());
    sim.advance(Duration::from_secs(1));
    sim.pass();
    assert!(sim.rm.find_queue("root.users.idle").is_none());
    assert!(sim.rm.find_queue("root.users.busy").is_some());
    sim.check();
}

#[test]
fn a_workflow_makes_the_leaves_it_names_and_a_refused_one_takes_them_back() {
    let (mut sim, _) = users(10.0, 100);
    let node = |sim: &mut Sim, queue: &str, name: &str| {
        let mut req = sim.request(queue, one_core());
        req.workflow = Some(WorkflowNode {
            workflow: uuid::Uuid::from_u128(9),
            name: name.into(),
        });
        req
    };
    let first = node(&mut sim, "root.users.alice", "first");
    let mut second = node(&mut sim, "root.users.bob", "second");
    second.depends = Some(Dependencies {
        parents: vec![first.id],
        run_when: RunWhen::AllSucceeded,
        pass_results: false,
    });
    sim.rm
        .submit_workflow(vec![first, second], sim.now)
        .unwrap();
    assert!(sim.rm.find_queue("root.users.alice").is_some());
    assert!(sim.rm.find_queue("root.users.bob").is_some());
    let ok = node(&mut sim, "root.users.carol", "ok");
    let mut bad = node(&mut sim, "root.users.dave", "bad");
    bad.expires_at = Some(Timestamp(sim.now.0 - 1));
    let refused = sim.rm.submit_workflow(vec![ok, bad], sim.now).unwrap_err();
    assert_eq!(refused.index(), Some(1));
    assert!(sim.rm.find_queue("root.users.carol").is_none());
    assert!(sim.rm.find_queue("root.users.dave").is_none());
    sim.check();
}
