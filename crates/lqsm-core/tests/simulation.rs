//! Deterministic simulation: the ResourceManager and several workers that follow
//! docs/PROTOCOL.md, over simulated time and an unreliable network, with random faults
//! (lost polls, lost answers, partitions, worker crashes and restarts, server restarts).
//! Every run is a seed; a failure names its seed and replays from it alone:
//!
//! ```sh
//! LQSM_SIM_SEED=1234 cargo test -p lqsm-core --test simulation -- --nocapture
//! LQSM_SIM_SEEDS=100000 cargo test --release -p lqsm-core --test simulation   # a long run
//! ```
//!
//! Checked at every step: the core's own consistency; no job is run by two workers at
//! once (a worker cut off stops its attempts before the server may give them to
//! another). Checked at the end, once faults stop: every job submitted finished once,
//! and succeeded unless faults used up all its attempts.
#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

mod support;

use lqsm_core::*;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use support::Sim;

/// How often each worker acts, and the core passes.
const STEP: Duration = Duration::from_millis(250);
/// Simulated time with faults, then without (every job must finish in it).
const FAULTY_STEPS: u32 = 1200;
const CALM_STEPS: u32 = 2400;
const RECLAIM_GRACE: Duration = Duration::from_secs(30);

/// A small seeded generator (SplitMix64): the simulation needs nothing more, and its
/// sequence never changes under it.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// When a worker cut off from the server stops its attempts: the heartbeat timeout
/// less a margin (a fifth, between 1 and 3 s, at most half), as the real workers do.
fn fence_after(heartbeat_timeout: Duration) -> Duration {
    let margin = (heartbeat_timeout / 5)
        .clamp(Duration::from_secs(1), Duration::from_secs(3))
        .min(heartbeat_timeout / 2);
    heartbeat_timeout - margin
}

/// A worker as the protocol has it: what it runs, its unconfirmed reports, `ack`.
struct Worker {
    id: WorkerId,
    /// Cut off from the server until then: polls and answers are lost.
    cut_until: Timestamp,
    running: BTreeMap<(JobId, FencingToken), Timestamp>,
    reports: BTreeMap<(JobId, FencingToken), ReportedResult>,
    seen: BTreeSet<(JobId, FencingToken)>,
    acked: u64,
    last_contact: Timestamp,
    registered: bool,
}

impl Worker {
    fn new(id: WorkerId, now: Timestamp) -> Self {
        Self {
            id,
            cut_until: now,
            running: BTreeMap::new(),
            reports: BTreeMap::new(),
            seen: BTreeSet::new(),
            acked: 0,
            last_contact: now,
            registered: false,
        }
    }
}

struct World {
    sim: Sim,
    rng: Rng,
    workers: Vec<Worker>,
    submitted: Vec<JobId>,
    fence_after: Duration,
    next_worker: u128,
}

impl World {
    fn new(seed: u64) -> Self {
        let mut sim = Sim::new(Config::default());
        sim.queue("root.q", 100.0, 100.0);
        let fence_after = fence_after(sim.rm.config().heartbeat_timeout);
        let mut world = Self {
            sim,
            rng: Rng(seed),
            workers: Vec::new(),
            submitted: Vec::new(),
            fence_after,
            next_worker: 1,
        };
        for _ in 0..3 {
            world.add_worker();
        }
        world
    }

    fn add_worker(&mut self) {
        self.next_worker += 1;
        let id = WorkerId(uuid::Uuid::from_u128(self.next_worker | (7 << 100)));
        self.workers.push(Worker::new(id, self.sim.now));
    }

    fn register(&mut self, w: usize) {
        let worker = &mut self.workers[w];
        let registration = WorkerRegistration {
            id: worker.id,
            name: "sim".into(),
            capacity: Resources::cores(2, 2000),
            labels: BTreeMap::new(),
            serves_commands: true,
            handlers: ["*".to_string()].into(),
            queues: BTreeSet::new(),
        };
        self.sim
            .rm
            .register_worker(registration, self.sim.now)
            .unwrap();
        worker.registered = true;
        worker.acked = 0;
        worker.last_contact = self.sim.now;
        self.sim.drain_effects();
    }

    /// One worker's turn: its attempts end, it fences itself if cut off too long, and
    /// it polls.
    fn act(&mut self, w: usize, faults: bool) {
        let now = self.sim.now;
        let fence_after = self.fence_after;
        let fail = faults && self.rng.chance(0.1);
        let worker = &mut self.workers[w];
        let ended: Vec<_> = worker
            .running
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(key, _)| *key)
            .collect();
        for key in ended {
            worker.running.remove(&key);
            let result = if fail {
                ReportedResult::Failed {
                    exit_code: Some(1),
                    message: "simulated".into(),
                    retry: true,
                }
            } else {
                ReportedResult::Succeeded {
                    result: None,
                    exit_code: Some(0),
                }
            };
            worker.reports.insert(key, result);
        }
        if !worker.running.is_empty() && now >= worker.last_contact.after(fence_after) {
            // Stopped, and not reported: to the server they are lost.
            worker.running.clear();
        }
        let cut = now < worker.cut_until;
        if !worker.registered {
            if !(cut || faults && self.rng.chance(0.2)) {
                self.register(w);
            }
            return;
        }
        let poll = WorkerPoll {
            running: worker.running.keys().copied().collect(),
            finished: worker
                .reports
                .iter()
                .map(|(&(job, token), result)| AttemptReport {
                    job,
                    token,
                    result: result.clone(),
                    started_at: None,
                })
                .collect(),
            acked: Some(worker.acked),
            ending: Vec::new(),
            progress: Vec::new(),
        };
        if cut || (faults && self.rng.chance(0.05)) {
            return; // the poll is lost on its way
        }
        let id = worker.id;
        let ticket = self.sim.ticket();
        match self
            .sim
            .rm
            .long_poll(id, ticket, &poll, Duration::ZERO, now)
        {
            Ok(_) => {}
            Err(WorkerError::Unknown(_) | WorkerError::Lost(_)) => {
                // The server restarted or took it for lost: register again, same id,
                // running attempts kept (a restarted server reclaims them).
                self.workers[w].registered = false;
                return;
            }
            Err(e) => panic!("poll refused: {e}"),
        }
        // The answer comes after the pass that decides it.
        self.sim.pass();
        let answer = self.sim.answer_to(ticket);
        if faults && self.rng.chance(0.05) {
            return; // the answer is lost on its way back
        }
        let Some(answer) = answer else { return };
        // Most attempts are short; some outlast the heartbeat timeout, so that a
        // partition catches them running.
        let duration_ms = if self.rng.chance(0.2) {
            8_000 + self.rng.below(32_000)
        } else {
            250 + self.rng.below(8_000)
        };
        let worker = &mut self.workers[w];
        worker.last_contact = now;
        for report in &poll.finished {
            worker.reports.remove(&(report.job, report.token));
        }
        for kill in &answer.kills {
            worker.running.remove(&(kill.job, kill.token));
        }
        worker.acked = worker.acked.max(answer.seq);
        for assignment in &answer.assignments {
            let key = (assignment.job, assignment.token);
            if worker.seen.insert(key) {
                worker
                    .running
                    .insert(key, now.after(Duration::from_millis(duration_ms)));
            }
        }
    }

    fn faults(&mut self) {
        let now = self.sim.now;
        if self.rng.chance(0.01) {
            let w = self.rng.below(self.workers.len() as u64) as usize;
            let secs = 1 + self.rng.below(40);
            self.workers[w].cut_until = now.after(Duration::from_secs(secs));
        }
        if self.rng.chance(0.003) {
            // A crash: its attempts die with it (no job outlives its worker). It comes
            // back as a new process: a new id, or the same one kept on disk.
            let w = self.rng.below(self.workers.len() as u64) as usize;
            let same_id = self.rng.chance(0.5);
            let old = self.workers[w].id;
            trace(format_args!(
                "{now:?} crash of {old} (same id back: {same_id})"
            ));
            self.workers.remove(w);
            if same_id {
                let mut back = Worker::new(old, now);
                back.cut_until = now.after(Duration::from_secs(self.rng.below(30)));
                self.workers.push(back);
            } else {
                self.add_worker();
            }
        }
        if self.rng.chance(0.002) {
            trace(format_args!("{now:?} server restart"));
            self.sim.restart(RECLAIM_GRACE);
        }
        if self.rng.chance(0.02) {
            let n = 1 + self.rng.below(8);
            for _ in 0..n {
                let req = self.sim.request("root.q", Resources::cores(1, 100));
                let mut req = req;
                req.retry = Some(RetryPolicy {
                    max_attempts: 20,
                    backoff_cap: Duration::from_secs(30),
                    ..RetryPolicy::default()
                });
                self.submitted.push(self.sim.submit(req).unwrap().id());
            }
        }
    }

    fn step(&mut self, faults: bool) {
        if faults {
            self.faults();
        }
        for w in 0..self.workers.len() {
            self.act(w, faults);
            self.check_one_runner();
        }
        self.sim.pass();
        self.sim.check();
        self.sim.advance(STEP);
    }

    /// No job is run by two workers at once.
    fn check_one_runner(&self) {
        let mut runners: BTreeMap<JobId, usize> = BTreeMap::new();
        // A crashed worker is gone from the list: its attempts died with it.
        for worker in &self.workers {
            for (job, _) in worker.running.keys() {
                *runners.entry(*job).or_default() += 1;
            }
        }
        if let Some((job, n)) = runners.iter().find(|(_, n)| **n > 1) {
            panic!("job {job} runs on {n} workers at once");
        }
    }
}

/// What a replayed seed prints (`LQSM_SIM_TRACE=1`).
fn trace(what: std::fmt::Arguments) {
    if std::env::var_os("LQSM_SIM_TRACE").is_some() {
        eprintln!("{what}");
    }
}

fn run(seed: u64) {
    let mut world = World::new(seed);
    for _ in 0..FAULTY_STEPS {
        world.step(true);
    }
    for worker in &mut world.workers {
        worker.cut_until = world.sim.now;
    }
    for _ in 0..CALM_STEPS {
        world.step(false);
        if world
            .submitted
            .iter()
            .all(|id| world.sim.rm.job(*id).is_some_and(|j| j.state.is_terminal()))
        {
            break;
        }
    }
    let mut finishes: BTreeMap<JobId, usize> = BTreeMap::new();
    for id in &world.sim.log.finished {
        *finishes.entry(*id).or_default() += 1;
    }
    for id in &world.submitted {
        let state = world.sim.rm.job(*id).map(|j| j.state);
        assert!(
            state.is_some_and(JobState::is_terminal),
            "job {id} did not finish once faults stopped: {state:?}; {:?}; held by workers {:?}",
            world.sim.rm.job_record(*id).map(|r| r.attempts),
            world
                .workers
                .iter()
                .filter(|w| w.running.keys().any(|(j, _)| j == id)
                    || w.reports.keys().any(|(j, _)| j == id))
                .map(|w| w.id)
                .collect::<Vec<_>>()
        );
        assert_eq!(
            finishes.get(id),
            Some(&1),
            "job {id} finished {:?} times",
            finishes.get(id)
        );
        let attempts = world.sim.rm.job_record(*id).map_or(0, |r| r.attempts.len());
        assert!(
            state == Some(JobState::Succeeded) || attempts == 20,
            "job {id} ended {state:?} with {attempts} of its 20 attempts used"
        );
    }
}

#[test]
fn invariants_hold_across_seeds() {
    if let Ok(seed) = std::env::var("LQSM_SIM_SEED") {
        run(seed.parse().expect("LQSM_SIM_SEED is a number"));
        return;
    }
    let seeds: u64 = std::env::var("LQSM_SIM_SEEDS")
        .ok()
        .map(|n| n.parse().expect("LQSM_SIM_SEEDS is a number"))
        .unwrap_or(2000);
    for seed in 0..seeds {
        if let Err(panic) = std::panic::catch_unwind(|| run(seed)) {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!(
                "seed {seed} failed: {message}\nreplay: LQSM_SIM_SEED={seed} cargo test -p lqsm-core --test simulation"
            );
        }
    }
}
