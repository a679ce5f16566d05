//! Property tests: random sequences of submissions, polls, finishes, failures, worker
//! loss, queue changes and time, with the system's invariants checked after every step.
#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

mod support;

use lqsm_core::*;
use proptest::prelude::*;
use std::collections::{BTreeSet, HashSet};
use std::time::Duration;
use support::Sim;

const LEAVES: [&str; 4] = ["root.a.a1", "root.a.a2", "root.b", "root.c"];
/// The largest request the generator makes, for the ceiling exemption below.
const MAX_JOB_CORES: u64 = 4;
const MAX_JOB_MIB: u64 = 4000;
const EPS: f64 = 1e-9;

#[derive(Clone, Debug)]
enum Op {
    Submit {
        leaf: usize,
        cores: u64,
        mib: u64,
        priority: i32,
        attempts: u32,
        timeout_s: Option<u64>,
        delay_s: Option<u64>,
    },
    AddWorker {
        cores: u64,
        mib: u64,
    },
    /// The worker polls: finishes its first `finish` attempts (success or failure),
    /// sometimes repeating a report it already sent, and runs the rest.
    Poll {
        worker: usize,
        finish: usize,
        succeed: bool,
        repeat_old_report: bool,
    },
    /// The worker stops polling for good (it will be lost).
    Silence {
        worker: usize,
    },
    DrainWorker {
        worker: usize,
    },
    UndrainWorker {
        worker: usize,
    },
    Cancel {
        job: usize,
    },
    Advance {
        secs: u64,
    },
    ChangeQueue {
        leaf: usize,
        change: QueueChange,
    },
    Pass,
}

#[derive(Clone, Debug)]
enum QueueChange {
    Stop,
    Drain,
    Start,
    MaxCapacity(f64),
    MaxRunning(Option<u32>),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..LEAVES.len(), 1..=MAX_JOB_CORES, 1..=(MAX_JOB_MIB / 500), -2..=2i32, 1..=3u32,
              proptest::option::weighted(0.2, 1..20u64), proptest::option::weighted(0.2, 1..20u64))
            .prop_map(|(leaf, cores, mib, priority, attempts, timeout_s, delay_s)| Op::Submit {
                leaf, cores, mib: mib * 500, priority, attempts, timeout_s, delay_s,
            }),
        1 => (1..=16u64, 1..=16u64).prop_map(|(cores, gib)| Op::AddWorker { cores, mib: gib * 1000 }),
        5 => (0..8usize, 0..4usize, any::<bool>(), proptest::bool::weighted(0.1))
            .prop_map(|(worker, finish, succeed, repeat_old_report)| Op::Poll { worker, finish, succeed, repeat_old_report }),
        1 => (0..8usize).prop_map(|worker| Op::Silence { worker }),
        1 => (0..8usize).prop_map(|worker| Op::DrainWorker { worker }),
        1 => (0..8usize).prop_map(|worker| Op::UndrainWorker { worker }),
        1 => (0..200usize).prop_map(|job| Op::Cancel { job }),
        3 => (1..8u64).prop_map(|secs| Op::Advance { secs }),
        1 => (0..LEAVES.len(), prop_oneof![
                Just(QueueChange::Stop),
                Just(QueueChange::Drain),
                Just(QueueChange::Start),
                Just(QueueChange::Start),
                (50..=100u32).prop_map(|m| QueueChange::MaxCapacity(f64::from(m))),
                proptest::option::of(1..6u32).prop_map(QueueChange::MaxRunning),
            ]).prop_map(|(leaf, change)| Op::ChangeQueue { leaf, change }),
        6 => Just(Op::Pass),
    ]
}

struct World {
    sim: Sim,
    workers: Vec<WorkerId>,
    silent: BTreeSet<WorkerId>,
    jobs: Vec<JobId>,
    last_token: FencingToken,
    handed_out: std::collections::BTreeSet<FencingToken>,
    /// Every token seen on an attempt, with its job.
    token_owner: std::collections::BTreeMap<FencingToken, JobId>,
    finished_once: HashSet<JobId>,
    sent_reports: Vec<(WorkerId, AttemptReport)>,
}

fn build() -> World {
    let mut config = Config::default();
    config.preemption.enabled = true;
    config.preemption.delay = Duration::from_secs(5);
    config.max_skips_per_pass = 10_000;
    let mut sim = Sim::new(config);
    sim.queue("root.a", 40.0, 100.0);
    sim.queue("root.a.a1", 50.0, 80.0);
    sim.queue("root.a.a2", 50.0, 100.0);
    sim.queue("root.b", 35.0, 60.0);
    sim.queue("root.c", 25.0, 100.0);
    sim.rm
        .update_queue(
            "root.c",
            &QueueUpdate {
                preemptable: Some(false),
                ..QueueUpdate::default()
            },
        )
        .expect("valid update");
    let mut world = World {
        sim,
        workers: Vec::new(),
        silent: BTreeSet::new(),
        jobs: Vec::new(),
        last_token: FencingToken(0),
        handed_out: Default::default(),
        token_owner: Default::default(),
        finished_once: HashSet::new(),
        sent_reports: Vec::new(),
    };
    for cores in [8, 4] {
        let id = world.sim.worker(&format!("w{cores}"), cores, cores * 1000);
        world.workers.push(id);
    }
    world
}

impl World {
    fn pick_worker(&self, i: usize) -> Option<WorkerId> {
        (!self.workers.is_empty()).then(|| self.workers[i % self.workers.len()])
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match op {
            Op::Submit {
                leaf,
                cores,
                mib,
                priority,
                attempts,
                timeout_s,
                delay_s,
            } => {
                let mut req = self
                    .sim
                    .request(LEAVES[*leaf], Resources::cores(*cores, *mib));
                req.priority = Some(*priority);
                req.retry = Some(RetryPolicy {
                    max_attempts: *attempts,
                    backoff_base: Duration::from_secs(1),
                    backoff_cap: Duration::from_secs(4),
                    jitter: 0.5,
                });
                req.timeout = timeout_s.map(Duration::from_secs);
                req.not_before = delay_s.map(|s| self.sim.now.after(Duration::from_secs(s)));
                // Refusals (stopped queue) are fine; they must change nothing.
                let before = self.sim.rm.job_count();
                match self.sim.submit(req) {
                    Ok(s) => self.jobs.push(s.id()),
                    Err(_) => prop_assert_eq!(self.sim.rm.job_count(), before),
                }
            }
            Op::AddWorker { cores, mib } => {
                let name = format!("w{}", self.workers.len());
                let id = self.sim.worker(&name, *cores, *mib);
                self.workers.push(id);
            }
            Op::Poll {
                worker,
                finish,
                succeed,
                repeat_old_report,
            } => {
                let Some(w) = self.pick_worker(*worker) else {
                    return Ok(());
                };
                if self.silent.contains(&w)
                    || self
                        .sim
                        .rm
                        .worker(w)
                        .is_some_and(|x| x.state == WorkerState::Lost)
                {
                    return Ok(());
                }
                let running = self.sim.still_running(w, None);
                let (done, still) = running.split_at((*finish).min(running.len()));
                let mut finished: Vec<AttemptReport> = done
                    .iter()
                    .map(|(job, token)| AttemptReport {
                        job: *job,
                        token: *token,
                        result: if *succeed {
                            ReportedResult::Succeeded {
                                result: None,
                                exit_code: Some(0),
                            }
                        } else {
                            ReportedResult::Failed {
                                exit_code: Some(1),
                                message: "x".into(),
                                // One failure in four must not be retried: the job
                                // fails at once, attempts left or not.
                                retry: !token.0.is_multiple_of(4),
                            }
                        },
                        started_at: None,
                    })
                    .collect();
                let mut stale = None;
                if *repeat_old_report
                    && let Some((_, old)) = self.sent_reports.iter().rev().find(|(ww, _)| *ww == w)
                {
                    stale = Some(old.clone());
                    finished.push(old.clone());
                }
                let poll = WorkerPoll {
                    running: still.to_vec(),
                    finished: finished.clone(),
                    acked: None,
                    ending: Vec::new(),
                    progress: Vec::new(),
                };
                // The poll does not wait: its answer hands over what the worker was
                // given since its last one.
                let answer = self.sim.take_assignments(w, &poll);
                if let Some(old) = stale {
                    prop_assert!(
                        answer
                            .refused
                            .iter()
                            .any(|r| r.job == old.job && r.token == old.token),
                        "a repeated report must be refused"
                    );
                }
                for r in finished {
                    self.sent_reports.push((w, r));
                }
                let got = answer.assignments;
                self.sim
                    .received
                    .entry(w)
                    .or_default()
                    .extend(got.iter().map(|a| (a.job, a.token)));
                self.sim.drain_effects();
            }
            Op::Silence { worker } => {
                if let Some(w) = self.pick_worker(*worker) {
                    self.silent.insert(w);
                }
            }
            Op::DrainWorker { worker } => {
                if let Some(w) = self.pick_worker(*worker) {
                    let _ = self.sim.rm.drain_worker(w);
                }
            }
            Op::UndrainWorker { worker } => {
                if let Some(w) = self.pick_worker(*worker) {
                    let _ = self.sim.rm.undrain_worker(w);
                }
            }
            Op::Cancel { job } => {
                if !self.jobs.is_empty() {
                    let id = self.jobs[job % self.jobs.len()];
                    let _ = self.sim.rm.cancel(id, "test", self.sim.now);
                }
            }
            Op::Advance { secs } => {
                self.sim.advance(Duration::from_secs(*secs));
                self.sim.rm.tick(self.sim.now);
            }
            Op::ChangeQueue { leaf, change } => {
                let path = LEAVES[*leaf];
                let rm = &mut self.sim.rm;
                let _ = match change {
                    QueueChange::Stop => rm.stop_queue(path),
                    QueueChange::Drain => rm.drain_queue(path),
                    QueueChange::Start => rm.start_queue(path),
                    QueueChange::MaxCapacity(m) => rm.update_queue(
                        path,
                        &QueueUpdate {
                            max_capacity: Some(*m),
                            ..QueueUpdate::default()
                        },
                    ),
                    QueueChange::MaxRunning(m) => rm.update_queue(
                        path,
                        &QueueUpdate {
                            max_running: Some(*m),
                            ..QueueUpdate::default()
                        },
                    ),
                };
            }
            Op::Pass => self.pass_and_check()?,
        }
        self.sim.drain_effects();
        self.check_always()
    }

    /// Invariants that hold after every step.
    fn check_always(&mut self) -> Result<(), TestCaseError> {
        // No worker over-committed; usage equals the sum of attempts; one holder per attempt.
        self.sim
            .rm
            .check_consistency()
            .map_err(TestCaseError::fail)?;
        // A job is terminal at most once.
        for id in std::mem::take(&mut self.sim.log.finished) {
            prop_assert!(self.finished_once.insert(id), "job {id} finished twice");
        }
        // No attempt is ever handed out twice.
        for a in std::mem::take(&mut self.sim.log.assignments) {
            prop_assert!(
                self.handed_out.insert(a.token),
                "token {} handed out twice",
                a.token
            );
        }
        for id in &self.jobs {
            if let Some(job) = self.sim.rm.job(*id) {
                prop_assert_eq!(job.state.is_terminal(), self.finished_once.contains(id));
                prop_assert!(job.failures <= job.spec.retry.max_attempts);
            }
        }
        Ok(())
    }

    fn pass_and_check(&mut self) -> Result<(), TestCaseError> {
        self.sim.rm.tick(self.sim.now);
        self.sim.drain_effects();
        let kills_before = self.sim.log.kills.len();
        self.sim.rm.schedule(self.sim.now);
        self.sim.drain_effects();
        let rm = &self.sim.rm;
        let total = rm.total().clone();

        // Tokens only grow: an attempt this pass made holds a token above every
        // earlier one, and no token ever names two attempts.
        let mut made: Vec<(JobId, FencingToken)> = Vec::new();
        for job in rm.jobs() {
            for attempt in &job.attempts {
                match self.token_owner.get(&attempt.token) {
                    Some(owner) => {
                        prop_assert_eq!(*owner, job.id, "token {} reused", attempt.token);
                    }
                    None => {
                        prop_assert!(
                            attempt.token > self.last_token,
                            "token {} is not above the earlier {}",
                            attempt.token,
                            self.last_token
                        );
                        made.push((job.id, attempt.token));
                    }
                }
            }
        }
        for (id, token) in &made {
            self.token_owner.insert(*token, *id);
        }
        if let Some(highest) = made.iter().map(|(_, t)| *t).max() {
            self.last_token = highest;
        }
        for (id, _) in &made {
            let job = rm.job(*id).expect("assigned job exists");
            let mut path = rm.queue_path(job.queue).cloned();
            while let Some(p) = path {
                // A queue that received work stays within its ceiling.
                let view = rm.queue(p.as_str()).expect("live queue");
                prop_assert!(
                    view.dominant_share() <= view.abs_max() + EPS,
                    "{} above its ceiling: {} > {}",
                    p,
                    view.dominant_share(),
                    view.abs_max()
                );
                path = p.parent();
            }
        }

        // Preemption never takes a queue below its guarantee, nor from one that opted out.
        for k in &self.sim.log.kills[kills_before..] {
            if k.reason != KillReason::Preempted {
                continue;
            }
            let job = rm.job(k.job).expect("victim exists");
            let mut path = rm.queue_path(job.queue).cloned();
            while let Some(p) = path {
                if p.as_str() == "root" {
                    break;
                }
                let view = rm.queue(p.as_str()).expect("live queue");
                prop_assert!(view.config().preemptable, "preempted from opted-out {}", p);
                prop_assert!(
                    view.dominant_share() >= view.abs_guarantee() - EPS,
                    "preemption took {} below its guarantee: {} < {}",
                    p,
                    view.dominant_share(),
                    view.abs_guarantee()
                );
                path = p.parent();
            }
        }

        // Work conservation, and with it guarantees: after a pass no leaf's next job
        // fits on a worker that takes work, unless the leaf may not start anything
        // (draining, at max_running) or a ceiling on its path is within one job.
        let largest = Resources::cores(MAX_JOB_CORES, MAX_JOB_MIB);
        let active: Vec<&Worker> = rm
            .workers()
            .filter(|w| w.state == WorkerState::Active)
            .collect();
        for leaf in LEAVES {
            let view = rm.queue(leaf).expect("leaf exists");
            if view.state() == QueueState::Draining {
                continue;
            }
            if view
                .config()
                .max_running
                .is_some_and(|m| view.running() >= u64::from(m))
            {
                continue;
            }
            let mut near_ceiling = false;
            let mut path = Some(view.path().clone());
            while let Some(p) = path {
                let q = rm.queue(p.as_str()).expect("live");
                if q.used().dominant_share_with(&largest, &total) > q.abs_max() + EPS {
                    near_ceiling = true;
                }
                path = p.parent();
            }
            if near_ceiling {
                continue;
            }
            let head = view.next_job().and_then(|id| rm.job(id));
            if let Some(head) = head {
                let fits = active.iter().any(|w| head.spec.request.fits_in(&w.free()));
                prop_assert!(
                    !fits,
                    "{}'s next job {:?} fits but was left pending",
                    leaf,
                    head.spec.request
                );
            }
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, max_shrink_iters: 2000, ..ProptestConfig::default() })]

    /// Under any sequence of commands: no worker is over-committed, no queue that
    /// receives work passes its ceiling, no attempt is handed out twice, a job is
    /// terminal at most once, repeated reports are refused, preemption never takes a
    /// queue below its guarantee, and after a pass every leaf with demand that could
    /// be served has been.
    #[test]
    fn invariants_hold_under_random_operation(ops in proptest::collection::vec(op(), 1..200)) {
        let mut world = build();
        for op in &ops {
            world.apply(op)?;
        }
        // Settle: everyone polls, a pass runs, and the invariants still hold.
        for i in 0..world.workers.len() {
            world.apply(&Op::Poll { worker: i, finish: 0, succeed: true, repeat_old_report: false })?;
        }
        world.apply(&Op::Pass)?;
    }

    /// The same seed and the same commands give the same decisions.
    #[test]
    fn replay_is_deterministic(ops in proptest::collection::vec(op(), 1..120)) {
        type Fingerprint = Vec<(JobId, String, Vec<(FencingToken, WorkerId, Option<Timestamp>)>)>;
        let run = |ops: &[Op]| -> Result<Fingerprint, TestCaseError> {
            let mut world = build();
            for op in ops {
                world.apply(op)?;
            }
            Ok(world
                .jobs
                .iter()
                .filter_map(|id| world.sim.rm.job(*id))
                .map(|j| {
                    let attempts = j.attempts.iter().map(|a| (a.token, a.worker, a.finished_at)).collect();
                    (j.id, format!("{:?} {:?}", j.state, j.not_before), attempts)
                })
                .collect())
        };
        prop_assert_eq!(run(&ops)?, run(&ops)?);
    }
}
