//! The autoscaler's core half: what a pool's backlog counts, what the built-in policy
//! wants, and the rules the Autoscaler keeps whatever a policy says (limits,
//! cooldowns, idle workers only, nothing started twice).
#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

mod support;

use lqsm_core::autoscale::{TARGET_BACKLOG, validate_pools};
use lqsm_core::*;
use proptest::prelude::*;
use std::sync::Arc;
use std::time::Duration;
use support::{Sim, one_core};

const SECOND: Duration = Duration::from_secs(1);

/// A cluster whose workers never go silent on their own (tests move time by minutes
/// and do not poll), with one leaf `root.q`.
fn sim() -> Sim {
    let config = Config {
        heartbeat_timeout: Duration::from_secs(365 * 24 * 3600),
        ..Config::default()
    };
    let mut sim = Sim::new(config);
    sim.queue("root.q", 50.0, 100.0);
    sim
}

/// The pool `gpu`: workers labelled `pool=gpu` of 4 cores, 2 jobs wanted per worker.
fn pool(min: u32, max: u32) -> PoolSpec {
    let mut spec =
        PoolSpec::new("gpu", Resources::cores(4, 4000), min, max).with_label("pool", "gpu");
    spec.scale_up_cooldown = 30 * SECOND;
    spec.scale_down_cooldown = Duration::ZERO;
    spec.idle_before_scale_down = 60 * SECOND;
    spec.registration_timeout = 120 * SECOND;
    spec
}

fn pool_worker(sim: &mut Sim, name: &str) -> WorkerId {
    sim.worker_with(name, Resources::cores(4, 4000), &[("pool", "gpu")])
}

fn evaluate(sim: &Sim, scaler: &mut Autoscaler, spec: &PoolSpec) -> Vec<ScaleAction> {
    scaler.evaluate(
        &sim.rm,
        std::slice::from_ref(spec),
        &Policies::default(),
        sim.now,
    )
}

fn starts(actions: &[ScaleAction]) -> Option<u32> {
    actions.iter().find_map(|a| match a {
        ScaleAction::Start { count, .. } => Some(*count),
        ScaleAction::Drain { .. } => None,
    })
}

fn drains(actions: &[ScaleAction]) -> Vec<WorkerId> {
    actions
        .iter()
        .flat_map(|a| match a {
            ScaleAction::Drain { workers, .. } => workers.clone(),
            ScaleAction::Start { .. } => Vec::new(),
        })
        .collect()
}

fn kinds(scaler: &Autoscaler) -> Vec<ScaleEventKind> {
    scaler.events().iter().map(|e| e.kind).collect()
}

#[test]
fn a_backlog_starts_workers_up_to_max() {
    let mut sim = sim();
    sim.submit_n("root.q", 12, one_core());
    sim.pass();
    let spec = pool(0, 4);
    let mut scaler = Autoscaler::new();
    let actions = evaluate(&sim, &mut scaler, &spec);
    assert_eq!(starts(&actions), Some(4));
    let ScaleAction::Start { reason, pool, .. } = &actions[0] else {
        panic!("a start: {actions:?}");
    };
    assert_eq!(pool, "gpu");
    assert!(
        reason.starts_with("12 jobs wait, 2 per worker wanted: 6 workers"),
        "{reason}"
    );
    assert!(reason.ends_with("held at max 4"), "{reason}");
    let event = &scaler.events()[0];
    assert_eq!(
        (event.kind, event.from, event.to, event.at),
        (ScaleEventKind::ScaleUp, 0, 4, sim.now)
    );

    // Once started and registered, the pool is at max while jobs wait: recorded once.
    scaler.started("gpu", 4, sim.now);
    for i in 0..4 {
        pool_worker(&mut sim, &format!("w{i}"));
    }
    sim.advance(60 * SECOND);
    sim.submit_n("root.q", 20, one_core());
    for _ in 0..3 {
        assert!(evaluate(&sim, &mut scaler, &spec).is_empty());
    }
    assert_eq!(
        kinds(&scaler),
        [ScaleEventKind::ScaleUp, ScaleEventKind::AtMax]
    );
    assert_eq!(
        scaler.pending_starts("gpu"),
        0,
        "registrations settle the starts"
    );
}

#[test]
fn the_scale_up_cooldown_holds_a_second_start() {
    let mut sim = sim();
    sim.submit_n("root.q", 4, one_core());
    let spec = pool(0, 10);
    let mut scaler = Autoscaler::new();
    assert_eq!(starts(&evaluate(&sim, &mut scaler, &spec)), Some(2));
    scaler.started("gpu", 2, sim.now);

    sim.advance(10 * SECOND);
    sim.submit_n("root.q", 8, one_core());
    assert!(evaluate(&sim, &mut scaler, &spec).is_empty());
    sim.advance(10 * SECOND);
    assert!(evaluate(&sim, &mut scaler, &spec).is_empty());
    let held: Vec<&ScaleEvent> = scaler
        .events()
        .iter()
        .filter(|e| e.kind == ScaleEventKind::Cooldown)
        .collect();
    assert_eq!(held.len(), 1, "a refusal is recorded once: {held:?}");
    assert_eq!((held[0].from, held[0].to), (2, 6));
    assert!(
        held[0].reason.contains("cooldown holds it for 20 s more"),
        "{}",
        held[0].reason
    );

    sim.advance(10 * SECOND);
    assert_eq!(
        starts(&evaluate(&sim, &mut scaler, &spec)),
        Some(4),
        "12 jobs want 6 workers; 2 are on their way"
    );
}

#[test]
fn pending_starts_are_not_started_twice_and_expire() {
    let mut sim = sim();
    sim.submit_n("root.q", 4, one_core());
    let spec = pool(0, 10);
    let mut scaler = Autoscaler::new();
    assert_eq!(starts(&evaluate(&sim, &mut scaler, &spec)), Some(2));
    scaler.started("gpu", 2, sim.now);
    assert_eq!(scaler.pending_starts("gpu"), 2);

    // Past the cooldown the two on their way still count.
    sim.advance(40 * SECOND);
    assert!(evaluate(&sim, &mut scaler, &spec).is_empty());
    // One registers; the other never does.
    pool_worker(&mut sim, "arrived");
    sim.advance(10 * SECOND);
    assert!(evaluate(&sim, &mut scaler, &spec).is_empty());
    assert_eq!(scaler.pending_starts("gpu"), 1);

    sim.advance(spec.registration_timeout);
    let actions = evaluate(&sim, &mut scaler, &spec);
    assert_eq!(
        starts(&actions),
        Some(1),
        "the lost start is asked for again"
    );
    assert_eq!(scaler.pending_starts("gpu"), 0);
    let expired = scaler
        .events()
        .iter()
        .find(|e| e.kind == ScaleEventKind::StartsExpired)
        .expect("the expiry is recorded");
    assert_eq!((expired.from, expired.to), (2, 1));
    assert!(
        expired.reason.contains("did not register within 2 min"),
        "{}",
        expired.reason
    );
}

#[test]
fn idle_workers_are_drained_idlest_first_and_busy_ones_never() {
    let mut sim = sim();
    let busy = pool_worker(&mut sim, "busy");
    sim.submit_n("root.q", 1, one_core());
    sim.pass();
    assert_eq!(sim.rm.worker(busy).unwrap().attempt_count(), 1);
    let first = pool_worker(&mut sim, "first");
    sim.advance(10 * SECOND);
    let second = pool_worker(&mut sim, "second");
    sim.advance(10 * SECOND);
    let third = pool_worker(&mut sim, "third");
    let spec = pool(0, 10);
    let mut scaler = Autoscaler::new();

    // One core of four runs: one worker wanted, three idle ones too many, but only
    // the first has been idle a minute.
    sim.advance(45 * SECOND);
    let actions = evaluate(&sim, &mut scaler, &spec);
    assert_eq!(drains(&actions), [first]);
    let ScaleAction::Drain { reason, .. } = &actions[0] else {
        panic!("a drain");
    };
    assert!(
        reason.contains("workers' worth in use, 80% utilisation wanted: 1 worker"),
        "{reason}"
    );
    assert!(
        reason.contains("draining 1 worker idle for 60 s or more"),
        "{reason}"
    );
    sim.rm.drain_worker(first).unwrap();

    sim.advance(20 * SECOND);
    assert_eq!(drains(&evaluate(&sim, &mut scaler, &spec)), [second, third]);
    for w in [second, third] {
        sim.rm.drain_worker(w).unwrap();
    }
    sim.advance(600 * SECOND);
    assert!(
        evaluate(&sim, &mut scaler, &spec).is_empty(),
        "the busy worker stays"
    );
    let last = scaler.events().back().unwrap();
    assert_eq!(
        (last.kind, last.from, last.to),
        (ScaleEventKind::ScaleDown, 3, 1)
    );
}

#[test]
fn scale_down_stops_at_min_and_waits_for_idle_time() {
    let mut sim = sim();
    let workers: Vec<WorkerId> = (0..4)
        .map(|i| pool_worker(&mut sim, &format!("w{i}")))
        .collect();
    let spec = pool(2, 10);
    let mut scaler = Autoscaler::new();
    sim.advance(30 * SECOND);
    assert!(evaluate(&sim, &mut scaler, &spec).is_empty());
    assert_eq!(kinds(&scaler), [ScaleEventKind::NoIdleWorker]);
    sim.advance(30 * SECOND);
    let drained = drains(&evaluate(&sim, &mut scaler, &spec));
    assert_eq!(
        drained,
        workers[..2],
        "two of four, by id when equally idle"
    );
    for w in &drained {
        sim.rm.drain_worker(*w).unwrap();
    }
    sim.advance(3600 * SECOND);
    assert!(
        evaluate(&sim, &mut scaler, &spec).is_empty(),
        "never below min"
    );
    assert_eq!(scaler.status("gpu").unwrap().desired, Some(2));
}

#[test]
fn a_pool_scales_to_zero_and_back() {
    let mut sim = sim();
    let w = pool_worker(&mut sim, "only");
    let job = sim.submit_n("root.q", 1, one_core())[0];
    sim.pass();
    sim.poll_running(w);
    let spec = pool(0, 3);
    let mut scaler = Autoscaler::new();
    assert!(
        evaluate(&sim, &mut scaler, &spec).is_empty(),
        "one job runs on one worker"
    );

    sim.advance(30 * SECOND);
    sim.succeed(w, job);
    sim.advance(59 * SECOND);
    assert!(
        drains(&evaluate(&sim, &mut scaler, &spec)).is_empty(),
        "idle 59 s"
    );
    sim.advance(SECOND);
    let actions = evaluate(&sim, &mut scaler, &spec);
    assert_eq!(drains(&actions), [w]);
    let ScaleAction::Drain { reason, .. } = &actions[0] else {
        panic!("a drain");
    };
    assert!(
        reason.starts_with("nothing waits or runs: 0 workers"),
        "{reason}"
    );
    sim.rm.drain_worker(w).unwrap();
    sim.advance(60 * SECOND);
    assert!(evaluate(&sim, &mut scaler, &spec).is_empty());

    // From zero: a job arrives, nothing can run it, one worker is asked for.
    sim.submit_n("root.q", 1, one_core());
    sim.pass();
    let actions = evaluate(&sim, &mut scaler, &spec);
    assert_eq!(starts(&actions), Some(1));
    let ScaleAction::Start { reason, .. } = &actions[0] else {
        panic!("a start");
    };
    assert_eq!(reason, "1 job waits, 2 per worker wanted: 1 worker");
    assert_eq!(
        kinds(&scaler),
        [
            ScaleEventKind::NoIdleWorker,
            ScaleEventKind::ScaleDown,
            ScaleEventKind::ScaleUp
        ],
        "only the changes are recorded"
    );
}

#[test]
fn jobs_the_pool_cannot_run_are_not_counted() {
    let mut sim = sim();
    sim.queue("root.drained", 10.0, 100.0);
    let mut limited = QueueConfig::with_capacity(10.0, 100.0);
    limited.max_running = Some(2);
    sim.rm.create_queue("root.limited", limited).unwrap();
    let spec = pool(0, 100);

    sim.submit_n("root.q", 2, one_core()); // counted
    let mut req = sim.request("root.q", Resources::cores(2, 100));
    req.selector = [("pool".to_string(), "gpu".to_string())].into();
    sim.submit(req).unwrap(); // counted
    let mut req = sim.request("root.q", one_core());
    req.selector = [("pool".to_string(), "cpu".to_string())].into();
    sim.submit(req).unwrap(); // wants other workers
    sim.submit_n("root.q", 1, Resources::cores(8, 100)); // beyond a new worker
    let mut req = sim.request("root.q", one_core());
    req.not_before = Some(sim.now.after(3600 * SECOND));
    sim.submit(req).unwrap(); // not due
    sim.submit_n("root.drained", 3, one_core());
    sim.rm.drain_queue("root.drained").unwrap(); // held
    sim.submit_n("root.limited", 5, one_core()); // only 2 may run
    sim.pass();

    let snapshot = sim.rm.pool_snapshot(&spec, sim.now);
    assert_eq!(snapshot.backlog, 5);
    assert_eq!(snapshot.backlog_resources, Resources::cores(6, 500));
    assert!(snapshot.workers.is_empty());

    // Workers of the pool and others; a running job on a pool worker lowers what waits.
    let w = pool_worker(&mut sim, "in");
    sim.worker_with("out", Resources::cores(4, 4000), &[("pool", "cpu")]);
    sim.pass();
    let snapshot = sim.rm.pool_snapshot(&spec, sim.now);
    assert_eq!(snapshot.workers.len(), 1);
    assert_eq!(snapshot.workers[0].id, w);
    assert!(snapshot.running >= 1);
    assert_eq!(
        snapshot.running,
        u64::from(snapshot.workers[0].attempts),
        "the other worker's attempts are not the pool's"
    );
}

#[test]
fn a_draining_worker_is_not_drained_again() {
    let mut sim = sim();
    let w = pool_worker(&mut sim, "w");
    let spec = pool(0, 3);
    let mut scaler = Autoscaler::new();
    sim.advance(60 * SECOND);
    assert_eq!(drains(&evaluate(&sim, &mut scaler, &spec)), [w]);
    // The server has not carried it out yet: not asked twice.
    sim.advance(SECOND);
    assert!(evaluate(&sim, &mut scaler, &spec).is_empty());
    sim.rm.drain_worker(w).unwrap();
    sim.advance(SECOND);
    assert!(evaluate(&sim, &mut scaler, &spec).is_empty());
    assert_eq!(
        sim.rm.pool_snapshot(&spec, sim.now).workers[0].state,
        WorkerState::Draining
    );
    assert_eq!(kinds(&scaler), [ScaleEventKind::ScaleDown]);
}

/// Always three workers, whatever happens.
#[derive(Debug)]
struct AlwaysThree;
impl AutoscalingPolicy for AlwaysThree {
    fn name(&self) -> &str {
        "always-three"
    }
    fn decide(&self, _pool: &PoolSpec, snapshot: &PoolSnapshot, _now: Timestamp) -> ScaleDecision {
        ScaleDecision {
            desired: 3,
            reason: format!("three, with {} waiting", snapshot.backlog),
        }
    }
}

/// Asks for more than any pool may have.
#[derive(Debug)]
struct Greedy;
impl AutoscalingPolicy for Greedy {
    fn name(&self) -> &str {
        "greedy"
    }
    fn decide(&self, _pool: &PoolSpec, _snapshot: &PoolSnapshot, _now: Timestamp) -> ScaleDecision {
        ScaleDecision {
            desired: u32::MAX,
            reason: "all of them".into(),
        }
    }
}

#[test]
fn a_policy_registered_by_name_is_used_and_kept_within_limits() {
    let sim = sim();
    let mut policies = Policies::default();
    policies.register_autoscaling(Arc::new(AlwaysThree));
    policies.register_autoscaling(Arc::new(Greedy));
    assert!(
        policies.autoscaling(TARGET_BACKLOG).is_ok(),
        "the built-in stays"
    );
    let mut spec = pool(0, 5);
    spec.policy = "always-three".into();
    let mut scaler = Autoscaler::new();
    let actions = scaler.evaluate(&sim.rm, std::slice::from_ref(&spec), &policies, sim.now);
    assert_eq!(
        actions,
        [ScaleAction::Start {
            pool: "gpu".into(),
            count: 3,
            reason: "three, with 0 waiting".into()
        }]
    );

    let mut greedy = pool(0, 5);
    greedy.name = "greedy".into();
    greedy.policy = "greedy".into();
    let actions = scaler.evaluate(&sim.rm, &[spec.clone(), greedy.clone()], &policies, sim.now);
    assert_eq!(
        actions,
        [ScaleAction::Start {
            pool: "greedy".into(),
            count: 5,
            reason: "all of them".into()
        }],
        "held at the pool's max whatever the policy says"
    );
    assert!(validate_pools(&[spec.clone(), greedy], &policies).is_ok());

    // A name nobody registered: the pool is left alone, and the reason recorded once.
    spec.policy = "nobody".into();
    for _ in 0..2 {
        let actions = scaler.evaluate(&sim.rm, std::slice::from_ref(&spec), &policies, sim.now);
        assert!(actions.is_empty());
    }
    let invalid: Vec<&ScaleEvent> = scaler
        .events()
        .iter()
        .filter(|e| e.kind == ScaleEventKind::Invalid)
        .collect();
    assert_eq!(invalid.len(), 1);
    assert!(
        invalid[0].reason.contains("unknown policy `nobody`"),
        "{}",
        invalid[0].reason
    );
    let err = validate_pools(&[spec], &policies).unwrap_err();
    assert_eq!(err.field, "policy");
    assert!(
        err.reason.contains("always-three, greedy, target-backlog"),
        "{err}"
    );
}

type Breaks = Box<dyn Fn(&mut PoolSpec)>;

fn case(field: &'static str, breaks: impl Fn(&mut PoolSpec) + 'static) -> (&'static str, Breaks) {
    (field, Box::new(breaks))
}

#[test]
fn validation_names_the_bad_field() {
    let cases = [
        case("name", |p| p.name.clear()),
        case("max", |p| p.max = 0),
        case("min", |p| (p.min, p.max) = (3, 2)),
        case("worker_capacity", |p| {
            p.worker_capacity = Resources::default()
        }),
        case("worker_capacity.cpu", |p| {
            p.worker_capacity = Resources::cores(1 << 40, 10);
        }),
        case("target_backlog_per_worker", |p| {
            p.target_backlog_per_worker = 0.0
        }),
        case("target_backlog_per_worker", |p| {
            p.target_backlog_per_worker = f64::NAN;
        }),
        case("target_utilisation", |p| p.target_utilisation = 1.5),
        case("target_utilisation", |p| p.target_utilisation = 0.0),
        case("registration_timeout", |p| {
            p.registration_timeout = Duration::ZERO;
        }),
        case("policy", |p| p.policy.clear()),
    ];
    for (field, break_it) in cases {
        let mut spec = pool(0, 4);
        break_it(&mut spec);
        let err = spec.validate().unwrap_err();
        assert_eq!(err.field, field, "{err}");
        assert!(err.to_string().contains(&format!(": {field}: ")), "{err}");
    }
    assert!(pool(0, 4).validate().is_ok());
    assert!(
        PoolSpec::new("zero", one_core(), 0, 1).validate().is_ok(),
        "min 0 is allowed"
    );
    let err = validate_pools(&[pool(0, 1), pool(1, 2)], &Policies::default()).unwrap_err();
    assert_eq!((err.pool.as_str(), err.field.as_str()), ("gpu", "name"));
    assert_eq!(PoolSpec::default().policy, TARGET_BACKLOG);
    assert_eq!(PoolSpec::default().target_backlog_per_worker, 2.0);
    assert_eq!(PoolSpec::default().target_utilisation, 0.8);
}

#[test]
fn events_are_a_bounded_ring_of_changes() {
    let mut sim = sim();
    let mut spec = pool(0, 100);
    spec.registration_timeout = Duration::from_secs(3600);
    let mut scaler = Autoscaler::with_events_kept(3);
    for round in 0..6 {
        sim.submit_n("root.q", 2, one_core());
        let actions = evaluate(&sim, &mut scaler, &spec);
        assert_eq!(starts(&actions), Some(1), "round {round}");
        scaler.started("gpu", 1, sim.now);
        sim.advance(30 * SECOND);
        // Steady: nothing more is recorded.
        assert!(evaluate(&sim, &mut scaler, &spec).is_empty());
    }
    assert_eq!(scaler.events().len(), 3);
    let tos: Vec<u32> = scaler.events().iter().map(|e| e.to).collect();
    assert_eq!(tos, [4, 5, 6], "the newest kept");
}

#[test]
fn a_clock_step_moves_cooldowns_and_idle_times() {
    let mut sim = sim();
    pool_worker(&mut sim, "w");
    let spec = pool(0, 3);
    let mut scaler = Autoscaler::new();
    sim.advance(30 * SECOND);
    assert!(evaluate(&sim, &mut scaler, &spec).is_empty());
    // Ten minutes forward in no time: the worker has still been idle 30 s.
    let step = Duration::from_secs(600);
    sim.advance(step);
    sim.rm.clock_jumped(600_000);
    scaler.clock_jumped(600_000);
    assert!(drains(&evaluate(&sim, &mut scaler, &spec)).is_empty());
    sim.advance(30 * SECOND);
    assert_eq!(drains(&evaluate(&sim, &mut scaler, &spec)).len(), 1);
}

#[derive(Clone, Debug)]
enum Step {
    Submit {
        n: usize,
        cores: u64,
        gpu_only: bool,
    },
    AddWorker {
        in_pool: bool,
    },
    Pass,
    Finish,
    Advance {
        secs: u64,
    },
    Evaluate,
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(
        prop_oneof![
            (0usize..8, 1u64..6, any::<bool>()).prop_map(|(n, cores, gpu_only)| Step::Submit {
                n,
                cores,
                gpu_only
            }),
            any::<bool>().prop_map(|in_pool| Step::AddWorker { in_pool }),
            Just(Step::Pass),
            Just(Step::Finish),
            (0u64..200).prop_map(|secs| Step::Advance { secs }),
            Just(Step::Evaluate),
            Just(Step::Evaluate),
        ],
        1..40,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Whatever happens, the size decided lies within [min, max], a start never takes
    /// the pool past max, and a drain names only idle, active workers of the pool.
    #[test]
    fn decisions_stay_within_limits_and_drain_only_idle_workers(
        steps in steps(),
        min in 0u32..4,
        extra in 0u32..6,
        per_worker in 1u32..5,
        utilisation in 1u32..=10,
    ) {
        let mut sim = sim();
        let mut spec = pool(min, min + extra.max(1));
        spec.target_backlog_per_worker = f64::from(per_worker) / 2.0;
        spec.target_utilisation = f64::from(utilisation) / 10.0;
        spec.scale_up_cooldown = 20 * SECOND;
        spec.scale_down_cooldown = 20 * SECOND;
        let mut scaler = Autoscaler::new();
        let mut workers: Vec<WorkerId> = Vec::new();
        for step in steps {
            match step {
                Step::Submit { n, cores, gpu_only } => {
                    for _ in 0..n {
                        let mut req = sim.request("root.q", Resources::cores(cores, 100));
                        if gpu_only {
                            req.selector = [("pool".to_string(), "gpu".to_string())].into();
                        }
                        sim.submit(req).unwrap();
                    }
                }
                Step::AddWorker { in_pool } => {
                    let label = if in_pool { "gpu" } else { "cpu" };
                    let id = sim.worker_with("w", Resources::cores(4, 4000), &[("pool", label)]);
                    workers.push(id);
                }
                Step::Pass => {
                    sim.pass();
                }
                Step::Finish => {
                    for w in &workers {
                        let running: Vec<JobId> = sim
                            .rm
                            .jobs()
                            .filter(|j| j.state.is_active() && j.attempts.last().is_some_and(|a| a.worker == *w))
                            .map(|j| j.id)
                            .take(1)
                            .collect();
                        for job in running {
                            sim.succeed(*w, job);
                        }
                    }
                }
                Step::Advance { secs } => sim.advance(Duration::from_secs(secs)),
                Step::Evaluate => {
                    let snapshot = sim.rm.pool_snapshot(&spec, sim.now);
                    let decision = TargetBacklogProbe::decide(&spec, &snapshot, sim.now);
                    prop_assert!((spec.min..=spec.max).contains(&decision), "{decision}");
                    let actions = evaluate(&sim, &mut scaler, &spec);
                    let pending = scaler.pending_starts("gpu");
                    for action in &actions {
                        match action {
                            ScaleAction::Start { count, .. } => {
                                let active = snapshot.active();
                                prop_assert!(active + pending + count <= spec.max,
                                    "{active} + {pending} + {count} > {}", spec.max);
                                scaler.started("gpu", *count, sim.now);
                            }
                            ScaleAction::Drain { workers: drained, .. } => {
                                for id in drained {
                                    let w = sim.rm.worker(*id).unwrap();
                                    prop_assert_eq!(w.attempt_count(), 0, "drained a busy worker");
                                    prop_assert_eq!(w.state, WorkerState::Active);
                                    prop_assert_eq!(w.labels.get("pool").map(String::as_str), Some("gpu"));
                                    sim.rm.drain_worker(*id).unwrap();
                                }
                                let active_after = sim.rm.pool_snapshot(&spec, sim.now).active();
                                prop_assert!(active_after >= spec.min, "{active_after} below min");
                            }
                        }
                    }
                    if let Some(desired) = scaler.status("gpu").and_then(|s| s.desired) {
                        prop_assert!((spec.min..=spec.max).contains(&desired));
                    }
                    // A pool may hold more than max (workers registered by hand): a
                    // scale-down then leaves it nearer max, never below min.
                    for event in scaler.events() {
                        match event.kind {
                            ScaleEventKind::ScaleUp => {
                                prop_assert!((spec.min..=spec.max).contains(&event.to), "{event:?}");
                            }
                            ScaleEventKind::ScaleDown => {
                                prop_assert!(event.to >= spec.min && event.to < event.from, "{event:?}");
                            }
                            _ => {}
                        }
                    }
                }
            }
        }
        sim.check();
    }
}

/// The built-in policy, looked up as a server would.
struct TargetBacklogProbe;
impl TargetBacklogProbe {
    fn decide(spec: &PoolSpec, snapshot: &PoolSnapshot, now: Timestamp) -> u32 {
        Policies::default()
            .autoscaling(TARGET_BACKLOG)
            .unwrap()
            .decide(spec, snapshot, now)
            .desired
    }
}

#[test]
fn the_built_in_policy_adds_headroom_for_what_runs() {
    let spec = pool(0, 50);
    let busy = |used: u64| PoolWorker {
        id: WorkerId(uuid::Uuid::from_u128(u128::from(used) + 1)),
        name: "w".into(),
        state: WorkerState::Active,
        used: Resources::cores(used, 0),
        capacity: Resources::cores(4, 4000),
        attempts: u32::try_from(used).unwrap(),
        idle_since: None,
    };
    let snapshot = PoolSnapshot {
        workers: vec![busy(4), busy(4), busy(4), busy(4)],
        backlog: 12,
        backlog_resources: Resources::cores(12, 0),
        running: 16,
        ..PoolSnapshot::default()
    };
    let decision = Policies::default()
        .autoscaling(TARGET_BACKLOG)
        .unwrap()
        .decide(&spec, &snapshot, Timestamp(0));
    assert_eq!(decision.desired, 11);
    assert_eq!(
        decision.reason,
        "12 jobs wait, 2 per worker wanted: 6 workers; 4.0 workers' worth in use, \
         80% utilisation wanted: 5 workers; 11 workers in all"
    );
}
