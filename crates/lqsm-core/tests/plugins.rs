//! Custom policies plug in where the built-ins do, and the core still enforces its
//! rules whatever a policy returns.
#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

mod support;

use lqsm_core::policy::{
    AdmissionContext, AdmissionPolicy, OrderingPolicy, PlacementPolicy, PreemptionPolicy,
    PreemptionRequest, Victim,
};
use lqsm_core::scheduler::PreemptionView;
use lqsm_core::workers::{Candidates, WorkerKey};
use lqsm_core::*;
use std::sync::Arc;
use std::time::Duration;
use support::{Sim, one_core};

/// Lowest priority first: the opposite of the built-in.
#[derive(Debug)]
struct LowestPriorityFirst;
impl OrderingPolicy for LowestPriorityFirst {
    fn name(&self) -> &str {
        "lowest-priority-first"
    }
    fn rank(&self, spec: &JobSpec) -> i64 {
        i64::from(spec.priority)
    }
}

/// Refuses jobs without a `team:` tag.
#[derive(Debug)]
struct TeamTagRequired;
impl AdmissionPolicy for TeamTagRequired {
    fn name(&self) -> &str {
        "team-tag-required"
    }
    fn admit(&self, ctx: &AdmissionContext<'_>) -> Result<(), String> {
        if ctx.spec.tags().iter().any(|t| t.starts_with("team:")) {
            Ok(())
        } else {
            Err(format!("jobs in {} need a `team:` tag", ctx.queue))
        }
    }
}

/// Prefers workers labelled `zone=a`, else any that fits.
#[derive(Debug)]
struct PreferZoneA;
impl PlacementPolicy for PreferZoneA {
    fn name(&self) -> &str {
        "prefer-zone-a"
    }
    fn place(&self, request: &Resources, candidates: &Candidates<'_>) -> Option<WorkerKey> {
        let mut fallback = None;
        for (key, worker) in candidates.fitting(request) {
            if worker.labels.get("zone").map(String::as_str) == Some("a") {
                return Some(key);
            }
            fallback.get_or_insert(key);
        }
        fallback
    }
}

/// Proposes every attempt of every leaf, oldest first, even illegal ones.
#[derive(Debug)]
struct OldestAnywhere;
impl PreemptionPolicy for OldestAnywhere {
    fn name(&self) -> &str {
        "oldest-anywhere"
    }
    fn select_victims(
        &self,
        _request: &PreemptionRequest,
        view: &PreemptionView<'_>,
    ) -> Vec<Victim> {
        let mut all: Vec<_> = view
            .leaves_with_attempts()
            .into_iter()
            .flat_map(|leaf| view.attempts_newest_first(leaf).collect::<Vec<_>>())
            .collect();
        all.sort_by_key(|a| a.token);
        all.into_iter()
            .map(|a| Victim {
                job: a.job,
                token: a.token,
            })
            .collect()
    }
}

fn policies() -> Policies {
    let mut p = Policies::default();
    p.register_ordering(Arc::new(LowestPriorityFirst));
    p.register_admission(Arc::new(TeamTagRequired));
    p.register_placement(Arc::new(PreferZoneA));
    p.register_preemption(Arc::new(OldestAnywhere));
    p
}

fn queue_with(sim: &mut Sim, path: &str, capacity: f64, config: impl FnOnce(&mut QueueConfig)) {
    let mut c = QueueConfig::with_capacity(capacity, 100.0);
    config(&mut c);
    sim.rm.create_queue(path, c).unwrap();
}

#[test]
fn custom_ordering_decides_which_job_runs_first() {
    let mut sim = Sim::with_policies(Config::default(), policies());
    queue_with(&mut sim, "root.q", 100.0, |c| {
        c.ordering = "lowest-priority-first".into()
    });
    sim.worker("one-slot", 1, 1000);
    let mut urgent = sim.request("root.q", one_core());
    urgent.priority = Some(10);
    let urgent = sim.submit(urgent).unwrap().id();
    let mut lazy = sim.request("root.q", one_core());
    lazy.priority = Some(-5);
    let lazy = sim.submit(lazy).unwrap().id();
    sim.pass();
    assert_eq!(sim.state(lazy), JobState::Scheduled);
    assert_eq!(sim.state(urgent), JobState::Pending);
}

#[test]
fn builtin_ordering_runs_higher_priority_first() {
    let mut sim = Sim::with_policies(Config::default(), policies());
    sim.queue("root.q", 100.0, 100.0);
    sim.worker("one-slot", 1, 1000);
    let mut lazy = sim.request("root.q", one_core());
    lazy.priority = Some(-5);
    let lazy = sim.submit(lazy).unwrap().id();
    let mut urgent = sim.request("root.q", one_core());
    urgent.priority = Some(10);
    let urgent = sim.submit(urgent).unwrap().id();
    sim.pass();
    assert_eq!(sim.state(urgent), JobState::Scheduled);
    assert_eq!(sim.state(lazy), JobState::Pending);
}

#[test]
fn custom_admission_refuses_with_its_reason() {
    let mut sim = Sim::with_policies(Config::default(), policies());
    queue_with(&mut sim, "root.q", 100.0, |c| {
        c.admission = "team-tag-required".into()
    });
    let req = sim.request("root.q", one_core());
    let err = sim.submit(req).unwrap_err();
    assert_eq!(
        err.to_string(),
        "queue `root.q`: admission policy `team-tag-required` refused the job: jobs in root.q need a `team:` tag"
    );
    let mut ok = sim.request("root.q", one_core());
    ok.tags.push("team:data".into());
    assert!(sim.submit(ok).is_ok());
}

#[test]
fn builtin_require_capable_worker_refuses_jobs_nothing_can_run() {
    let mut sim = Sim::new(Config::default());
    queue_with(&mut sim, "root.q", 100.0, |c| {
        c.admission = policy::REQUIRE_CAPABLE_WORKER.into()
    });
    sim.worker("small", 2, 1000);
    let req = sim.request("root.q", Resources::cores(3, 100));
    let err = sim.submit(req).unwrap_err();
    assert!(
        err.to_string()
            .contains("no worker that accepts this job offers"),
        "{err}"
    );
    let req = sim.request("root.q", Resources::cores(2, 100));
    assert!(sim.submit(req).is_ok());
}

#[test]
fn custom_placement_chooses_the_worker() {
    let mut sim = Sim::with_policies(Config::default(), policies());
    queue_with(&mut sim, "root.q", 100.0, |c| {
        c.placement = "prefer-zone-a".into()
    });
    sim.worker_with("b-tight", Resources::cores(1, 1000), &[("zone", "b")]);
    let zone_a = sim.worker_with("a-roomy", Resources::cores(64, 64000), &[("zone", "a")]);
    let id = sim.submit_n("root.q", 1, one_core())[0];
    sim.pass();
    // Best fit would have picked the one-core worker in zone b.
    assert_eq!(
        sim.rm.job(id).unwrap().current_attempt().unwrap().worker,
        zone_a
    );
}

#[test]
fn unknown_policy_names_are_refused_with_the_known_ones() {
    let mut config = Config::default();
    config.preemption.policy = "nope".into();
    let err = ResourceManager::new(config, Policies::default(), 1).unwrap_err();
    assert_eq!(
        err.to_string(),
        "preemption.policy: unknown policy `nope` (known: newest-over-guarantee)"
    );
}

#[test]
fn custom_preemption_chooses_victims_but_cannot_break_guarantees() {
    let mut config = Config::default();
    config.preemption.enabled = true;
    config.preemption.delay = Duration::from_secs(5);
    config.preemption.policy = "oldest-anywhere".into();
    config.heartbeat_timeout = Duration::from_secs(3600);
    let mut sim = Sim::with_policies(config, policies());
    sim.queue("root.a", 50.0, 100.0);
    sim.queue("root.b", 20.0, 100.0);
    sim.queue("root.c", 30.0, 100.0);
    for i in 0..10 {
        sim.worker(&format!("w{i}"), 1, 1000);
    }
    // b holds 2 (its guarantee) first, then a takes the other 8.
    let b_jobs = sim.submit_n("root.b", 2, one_core());
    sim.pass();
    sim.advance(Duration::from_secs(1));
    let a_jobs = sim.submit_n("root.a", 20, one_core());
    sim.pass();
    assert_eq!(sim.used_cores("root.a"), 8.0);
    sim.advance(Duration::from_secs(1));
    sim.submit_n("root.c", 10, one_core());
    sim.pass();
    sim.advance(Duration::from_secs(5));
    let report = sim.pass();
    // The policy proposed b's attempts first (oldest), but b is at its guarantee.
    assert!(b_jobs.iter().all(|j| sim.state(*j) == JobState::Scheduled));
    assert_eq!(report.preempted, 3);
    assert_eq!(sim.used_cores("root.c"), 3.0);
    assert_eq!(sim.used_cores("root.a"), 5.0);
    // Oldest of a's attempts went first.
    let victims: Vec<JobId> = sim.log.kills.iter().map(|k| k.job).collect();
    assert_eq!(victims, a_jobs[..3].to_vec());
}
