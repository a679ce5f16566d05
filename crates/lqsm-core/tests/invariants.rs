//! Property tests: random sequences of submissions (some with label selectors), polls
//! (finishes, failures, repeated stale reports, reports sent in a later poll, attempts
//! left out, acknowledgements, answers lost on the way), worker loss and registration
//! again, draining, cancellations, queue creation, deletion and changes of guarantee,
//! ceiling, running limit and state, and time — with the system's invariants checked
//! after every step, and after every scheduling pass the allocation rule itself: work
//! conservation job by job and the guarantee order of every decision of the pass.
//!
//! `PROPTEST_CASES` (or `LQSM_PROPTEST_CASES`) raises the number of cases for a long
//! run: `PROPTEST_CASES=5000 cargo test --release -p lqsm-core --test invariants`.
#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

mod support;

use lqsm_core::*;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{RngAlgorithm, TestRng, TestRunner};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;
use support::Sim;

/// The queues commands name: the four leaves built at the start, a leaf that can be
/// created under one of them (making it a parent), a new top-level queue, and a parent.
const PATHS: [&str; 7] = [
    "root.a.a1",
    "root.a.a2",
    "root.b",
    "root.c",
    "root.c.c1",
    "root.d",
    "root.a",
];
/// Values of the one label workers carry and jobs select on (`zone`).
const ZONES: [&str; 2] = ["east", "west"];
/// Queues a worker may be limited to serve.
const SERVED: [&str; 3] = ["root.a", "root.b", "root.c"];
const EPS: f64 = 1e-9;

/// The number of cases: the environment's `LQSM_PROPTEST_CASES` or `PROPTEST_CASES`
/// when set (long runs), else `default` (CI).
fn cases(default: u32) -> u32 {
    ["LQSM_PROPTEST_CASES", "PROPTEST_CASES"]
        .iter()
        .find_map(|var| std::env::var(var).ok()?.parse().ok())
        .unwrap_or(default)
}

#[derive(Clone, Debug)]
enum Op {
    Submit {
        path: usize,
        cores: u64,
        mib: u64,
        priority: i32,
        attempts: u32,
        timeout_s: Option<u64>,
        delay_s: Option<u64>,
        zone: Option<usize>,
    },
    AddWorker {
        cores: u64,
        mib: u64,
        zone: Option<usize>,
        serves: Option<usize>,
    },
    /// The worker polls (an answer comes at once): it finishes its first `finish`
    /// attempts (success or failure) and reports them — in this poll, or, with
    /// `defer_reports`, names them as ending here and reports them in its next poll, as
    /// a worker with a second poll out does; it drops its next `omit` attempts without a
    /// word (a crashed child), sometimes repeats a report it sent before, acknowledges
    /// the answers it saw (`ack`) or sends no acknowledgement (an older worker), and
    /// with `lose_answer` never sees the answer.
    Poll {
        worker: usize,
        finish: usize,
        succeed: bool,
        repeat_old_report: bool,
        defer_reports: bool,
        omit: usize,
        ack: bool,
        lose_answer: bool,
    },
    /// The worker stops polling (it will be lost unless it registers again).
    Silence {
        worker: usize,
    },
    /// The worker registers again under its id: a new process that runs nothing, or
    /// the same one still running what it held.
    Reregister {
        worker: usize,
        keep_running: bool,
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
        path: usize,
        change: QueueChange,
    },
    Pass,
}

#[derive(Clone, Debug)]
enum QueueChange {
    Stop,
    Drain,
    Start,
    Guarantee(f64),
    MaxCapacity(f64),
    MaxRunning(Option<u32>),
    Create {
        capacity: f64,
        max: f64,
    },
    Delete {
        force: bool,
    },
    /// Fair sharing by the jobs' `tenant` key, with a user limit of this factor.
    Fairness(Option<u32>),
}

fn op() -> impl Strategy<Value = Op> {
    let submit = (
        (0..PATHS.len(), 1..=4u64, 1..=8u64, -2..=2i32, 1..=3u32),
        (
            proptest::option::weighted(0.2, 1..20u64),
            proptest::option::weighted(0.2, 1..20u64),
            proptest::option::weighted(0.2, 0..ZONES.len()),
        ),
    )
        .prop_map(
            |((path, cores, mib, priority, attempts), (timeout_s, delay_s, zone))| Op::Submit {
                path: path % 6, // root.a is not named: it is a parent most of the time
                cores,
                mib: mib * 500,
                priority,
                attempts,
                timeout_s,
                delay_s,
                zone,
            },
        );
    let poll = (
        (
            0..8usize,
            0..4usize,
            any::<bool>(),
            proptest::bool::weighted(0.1),
        ),
        (
            proptest::bool::weighted(0.15),
            prop_oneof![8 => Just(0usize), 1 => Just(1), 1 => Just(2)],
            proptest::bool::weighted(0.8),
            proptest::bool::weighted(0.1),
        ),
    )
        .prop_map(
            |(
                (worker, finish, succeed, repeat_old_report),
                (defer_reports, omit, ack, lose_answer),
            )| {
                Op::Poll {
                    worker,
                    finish,
                    succeed,
                    repeat_old_report,
                    defer_reports,
                    omit,
                    ack,
                    lose_answer,
                }
            },
        );
    let change = prop_oneof![
        1 => Just(QueueChange::Stop),
        1 => Just(QueueChange::Drain),
        2 => Just(QueueChange::Start),
        2 => (0..=60u32).prop_map(|c| QueueChange::Guarantee(f64::from(c))),
        1 => (40..=100u32).prop_map(|m| QueueChange::MaxCapacity(f64::from(m))),
        1 => proptest::option::of(1..6u32).prop_map(QueueChange::MaxRunning),
        // Siblings' guarantees often sum to 100% already: a new queue mostly has none.
        2 => (prop_oneof![Just(0u32), 0..=30u32], 50..=100u32).prop_map(|(c, m)| QueueChange::Create {
            capacity: f64::from(c),
            max: f64::from(m),
        }),
        1 => any::<bool>().prop_map(|force| QueueChange::Delete { force }),
        1 => proptest::option::of(1..=3u32).prop_map(QueueChange::Fairness),
    ];
    prop_oneof![
        10 => submit,
        1 => (1..=16u64, 1..=16u64, proptest::option::weighted(0.3, 0..ZONES.len()),
              proptest::option::weighted(0.15, 0..SERVED.len()))
            .prop_map(|(cores, gib, zone, serves)| Op::AddWorker { cores, mib: gib * 1000, zone, serves }),
        5 => poll,
        1 => (0..8usize).prop_map(|worker| Op::Silence { worker }),
        1 => (0..8usize, any::<bool>()).prop_map(|(worker, keep_running)| Op::Reregister { worker, keep_running }),
        1 => (0..8usize).prop_map(|worker| Op::DrainWorker { worker }),
        1 => (0..8usize).prop_map(|worker| Op::UndrainWorker { worker }),
        1 => (0..200usize).prop_map(|job| Op::Cancel { job }),
        3 => (1..8u64).prop_map(|secs| Op::Advance { secs }),
        2 => (0..PATHS.len(), change).prop_map(|(path, change)| Op::ChangeQueue { path, change }),
        6 => Just(Op::Pass),
    ]
}

fn ops(max: usize) -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(op(), 1..max)
}

/// How far one run reached: each figure counts an event the invariants must survive.
/// A generator that never produced one of them would leave its rules unchecked.
#[derive(Clone, Copy, Debug, Default)]
struct Reach {
    passes: u64,
    placements: u64,
    preemptions: u64,
    worker_losses: u64,
    reregistrations_after_loss: u64,
    reregistrations_alive: u64,
    queue_creates: u64,
    queue_deletes: u64,
    guarantee_changes: u64,
    refused_queue_changes: u64,
    selector_placements: u64,
    acknowledged_polls: u64,
    lost_answers: u64,
    redeliveries: u64,
    omitted_attempts_lost: u64,
    reports_in_later_poll: u64,
    cancels: u64,
    /// Decisions of a pass that served a queue at or above its guarantee while a
    /// sibling below its own had a job waiting: the guarantee check had work to do.
    contested_decisions: u64,
    /// Leaves checked for work conservation while no worker had 4 cpus and 4,000 MiB
    /// free (the old check exempted every one of them).
    contended_leaf_checks: u64,
    /// Leaves made to share fairly among tenants (some with a user limit).
    fairness_changes: u64,
    /// Registrations of a worker lost so long ago that the cluster had forgotten it.
    forgotten_workers_back: u64,
    /// Times a worker went quiet (silent past its poll wait and grace).
    quiet_spells: u64,
}

impl Reach {
    fn add(&mut self, other: &Reach) {
        for (mine, theirs) in self.figures_mut().into_iter().zip(other.figures()) {
            *mine += theirs.1;
        }
    }

    fn figures(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("passes", self.passes),
            ("placements", self.placements),
            ("preemptions", self.preemptions),
            ("worker losses", self.worker_losses),
            (
                "registrations again after loss",
                self.reregistrations_after_loss,
            ),
            ("registrations again alive", self.reregistrations_alive),
            ("queue creates", self.queue_creates),
            ("queue deletes", self.queue_deletes),
            ("guarantee changes", self.guarantee_changes),
            ("queue changes refused", self.refused_queue_changes),
            ("selector jobs placed", self.selector_placements),
            ("acknowledging polls", self.acknowledged_polls),
            ("answers lost", self.lost_answers),
            ("attempts handed again", self.redeliveries),
            (
                "attempts left out of a poll, lost",
                self.omitted_attempts_lost,
            ),
            ("reports sent in a later poll", self.reports_in_later_poll),
            ("cancels", self.cancels),
            ("contested guarantee decisions", self.contested_decisions),
            (
                "contended work-conservation checks",
                self.contended_leaf_checks,
            ),
            ("fair-sharing changes", self.fairness_changes),
            (
                "registrations again once forgotten",
                self.forgotten_workers_back,
            ),
            ("workers gone quiet", self.quiet_spells),
        ]
    }

    fn figures_mut(&mut self) -> Vec<&mut u64> {
        vec![
            &mut self.passes,
            &mut self.placements,
            &mut self.preemptions,
            &mut self.worker_losses,
            &mut self.reregistrations_after_loss,
            &mut self.reregistrations_alive,
            &mut self.queue_creates,
            &mut self.queue_deletes,
            &mut self.guarantee_changes,
            &mut self.refused_queue_changes,
            &mut self.selector_placements,
            &mut self.acknowledged_polls,
            &mut self.lost_answers,
            &mut self.redeliveries,
            &mut self.omitted_attempts_lost,
            &mut self.reports_in_later_poll,
            &mut self.cancels,
            &mut self.contested_decisions,
            &mut self.contended_leaf_checks,
            &mut self.fairness_changes,
            &mut self.forgotten_workers_back,
            &mut self.quiet_spells,
        ]
    }
}

/// What the test's worker knows: what it was handed and still runs, and what it saw.
struct ModelWorker {
    id: WorkerId,
    registration: WorkerRegistration,
    /// Attempts it runs (from answers it saw, until finished, dropped or killed).
    held: BTreeSet<(JobId, FencingToken)>,
    /// Reports named as ending in one poll, to be sent in the next.
    deferred: Vec<AttemptReport>,
    /// The highest answer number seen since it registered.
    seen: u64,
    silent: bool,
}

struct World {
    sim: Sim,
    workers: Vec<ModelWorker>,
    jobs: Vec<JobId>,
    last_token: FencingToken,
    /// Every token seen on an attempt, with its job.
    token_owner: BTreeMap<FencingToken, JobId>,
    /// Every token handed out in an answer: to which worker, and whether an answer
    /// carrying it reached the worker.
    handed: HashMap<FencingToken, (WorkerId, bool)>,
    finished_once: HashSet<JobId>,
    sent_reports: Vec<(WorkerId, AttemptReport)>,
    lost: BTreeSet<WorkerId>,
    /// Workers quiet at the last check.
    quiet: BTreeSet<WorkerId>,
    reach: Reach,
}

fn registration(
    id: WorkerId,
    cores: u64,
    mib: u64,
    zone: Option<usize>,
    serves: Option<usize>,
) -> WorkerRegistration {
    WorkerRegistration {
        id,
        name: format!("w{}", id.0.as_u128() & 0xffff),
        capacity: Resources::cores(cores, mib),
        labels: zone
            .map(|z| ("zone".to_string(), ZONES[z].to_string()))
            .into_iter()
            .collect(),
        serves_commands: true,
        queues: serves
            .map(|q| QueuePath::parse(SERVED[q]).unwrap())
            .into_iter()
            .collect(),
        handlers: ["*".to_string()].into(),
    }
}

fn build() -> World {
    let mut config = Config::default();
    config.preemption.enabled = true;
    config.preemption.delay = Duration::from_secs(5);
    config.max_skips_per_pass = 10_000;
    // Short enough that a silent worker is forgotten within a run, so polls, drains and
    // registrations also meet a worker the cluster no longer knows.
    config.lost_worker_retention = Duration::from_secs(20);
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
        jobs: Vec::new(),
        last_token: FencingToken(0),
        token_owner: BTreeMap::new(),
        handed: HashMap::new(),
        finished_once: HashSet::new(),
        sent_reports: Vec::new(),
        lost: BTreeSet::new(),
        quiet: BTreeSet::new(),
        reach: Reach::default(),
    };
    world.add_worker(8, 8000, None, None);
    world.add_worker(4, 4000, Some(0), None);
    world
}

/// A queue as the checks see it: fixed during a pass.
struct Node {
    parent: Option<QueueId>,
    children: Vec<QueueId>,
    leaf: bool,
    path: QueuePath,
    abs_guarantee: f64,
    abs_max: f64,
    /// It or a queue above it drains: nothing under it starts.
    draining: bool,
    max_running: Option<u32>,
    rate_held: bool,
}

struct Tree {
    nodes: BTreeMap<QueueId, Node>,
}

impl Tree {
    fn of(rm: &ResourceManager) -> Tree {
        let mut nodes = BTreeMap::new();
        for q in rm.queues() {
            let parent = q
                .path()
                .parent()
                .map(|p| rm.queue(p.as_str()).unwrap().id());
            let mut draining = false;
            let mut at = Some(q.path().clone());
            while let Some(p) = at {
                draining |= rm.queue(p.as_str()).unwrap().state() == QueueState::Draining;
                at = p.parent();
            }
            nodes.insert(
                q.id(),
                Node {
                    parent,
                    children: q
                        .children()
                        .iter()
                        .map(|c| rm.queue(c.as_str()).unwrap().id())
                        .collect(),
                    leaf: q.is_leaf(),
                    path: q.path().clone(),
                    abs_guarantee: q.abs_guarantee(),
                    abs_max: q.abs_max(),
                    draining,
                    max_running: q.config().running_limit(),
                    rate_held: q.rate_limited_until().is_some(),
                },
            );
        }
        Tree { nodes }
    }

    /// The queues from `leaf` up to, not including, root: those with a ceiling.
    fn path_below_root(&self, leaf: QueueId) -> Vec<QueueId> {
        let mut out = Vec::new();
        let mut at = leaf;
        while let Some(parent) = self.nodes[&at].parent {
            out.push(at);
            at = parent;
        }
        out
    }

    fn leaves_under(&self, id: QueueId) -> Vec<QueueId> {
        let node = &self.nodes[&id];
        if node.leaf {
            return vec![id];
        }
        node.children
            .iter()
            .flat_map(|c| self.leaves_under(*c))
            .collect()
    }
}

/// A leaf's next job at one instant of a pass.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Head {
    None,
    Known(JobId),
    /// Preemption put jobs back at its front during the pass: which is first is unknown.
    Unknown,
}

/// The state the scheduler decided on at one instant, as far as the test can rebuild
/// it from before the pass and the attempts the pass made.
struct Moment {
    total: Resources,
    used: HashMap<QueueId, Resources>,
    running: HashMap<QueueId, u64>,
    /// Attempts preemption ended in a leaf during the pass: its running count may be
    /// this much lower than `running` says.
    preempted: HashMap<QueueId, u64>,
    /// Free resources of the workers that take work.
    free: HashMap<WorkerId, Resources>,
    head: HashMap<QueueId, Head>,
}

fn accepts(worker: &Worker, job: &Job, leaf: &QueuePath) -> bool {
    let kind = match job.spec.kind.handler() {
        None => worker.serves_commands,
        Some(h) => worker.handlers.contains(h) || worker.handlers.contains("*"),
    };
    kind && (worker.queues.is_empty() || worker.queues.iter().any(|q| leaf.is_within(q)))
        && job
            .spec
            .selector()
            .iter()
            .all(|(k, v)| worker.labels.get(k) == Some(v))
}

impl Moment {
    fn breaks_ceiling(&self, tree: &Tree, queue: QueueId, request: &Resources) -> bool {
        self.used[&queue].dominant_share_with(request, &self.total)
            > tree.nodes[&queue].abs_max + EPS
    }

    /// Whether the scheduler may serve this leaf at all now.
    fn servable(&self, tree: &Tree, leaf: QueueId) -> bool {
        let node = &tree.nodes[&leaf];
        !node.draining
            && !node.rate_held
            && node.max_running.is_none_or(|m| {
                let lowest = self.running[&leaf]
                    .saturating_sub(self.preempted.get(&leaf).copied().unwrap_or(0));
                lowest < u64::from(m)
            })
    }

    /// Whether a queue on `leaf`'s path may be marked at its ceiling: some leaf under
    /// it that the scheduler may serve has a next job that would lift it above. The
    /// scheduler then leaves its whole subtree out (docs/ARCHITECTURE.md, step 2).
    fn maybe_at_ceiling(&self, rm: &ResourceManager, tree: &Tree, leaf: QueueId) -> bool {
        tree.path_below_root(leaf).into_iter().any(|x| {
            tree.leaves_under(x).into_iter().any(|other| {
                self.servable(tree, other)
                    && match self.head[&other] {
                        Head::None => false,
                        Head::Unknown => true,
                        Head::Known(id) => {
                            self.breaks_ceiling(tree, x, &rm.job(id).unwrap().spec.request)
                        }
                    }
            })
        })
    }

    /// A worker taking work that `job` fits on now.
    fn fits_somewhere(
        &self,
        rm: &ResourceManager,
        job: &Job,
        leaf: &QueuePath,
    ) -> Option<WorkerId> {
        rm.workers()
            .filter(|w| w.state == WorkerState::Active && !w.quiet && accepts(w, job, leaf))
            .find(|w| job.spec.request.fits_in(&self.free[&w.id]))
            .map(|w| w.id)
    }

    /// The leaf's next job when the scheduler must start it now: the leaf may be
    /// served, no ceiling forbids the job, and some worker taking work has room for it.
    fn runnable(
        &self,
        rm: &ResourceManager,
        tree: &Tree,
        leaf: QueueId,
    ) -> Option<(JobId, WorkerId)> {
        let Head::Known(id) = self.head[&leaf] else {
            return None;
        };
        if !self.servable(tree, leaf) || self.maybe_at_ceiling(rm, tree, leaf) {
            return None;
        }
        let job = rm.job(id).unwrap();
        if tree
            .path_below_root(leaf)
            .into_iter()
            .any(|x| self.breaks_ceiling(tree, x, &job.spec.request))
        {
            return None;
        }
        self.fits_somewhere(rm, job, &tree.nodes[&leaf].path)
            .map(|w| (id, w))
    }

    fn share(&self, queue: QueueId) -> f64 {
        self.used[&queue].dominant_share(&self.total)
    }

    /// The state now, read from the core.
    fn now(rm: &ResourceManager, tree: &Tree) -> Moment {
        let mut m = Moment {
            total: rm.total().clone(),
            used: HashMap::new(),
            running: HashMap::new(),
            preempted: HashMap::new(),
            free: rm.workers().map(|w| (w.id, w.free())).collect(),
            head: HashMap::new(),
        };
        for q in rm.queues() {
            m.used.insert(q.id(), q.used().clone());
            m.running.insert(q.id(), q.running());
            if tree.nodes[&q.id()].leaf {
                m.head
                    .insert(q.id(), q.next_job().map_or(Head::None, Head::Known));
            }
        }
        m
    }
}

/// What each tenant's attempts hold in `leaf`, counted from the jobs themselves:
/// `(resources, attempts)` by tenant.
fn tenant_use(rm: &ResourceManager, leaf: QueueId) -> BTreeMap<String, (Resources, u32)> {
    let mut by_tenant: BTreeMap<String, (Resources, u32)> = BTreeMap::new();
    for job in rm.jobs() {
        if job.queue == leaf && matches!(job.state, JobState::Scheduled | JobState::Running) {
            let tenant = job.spec.keys().get("tenant").unwrap_or("").to_owned();
            let entry = by_tenant.entry(tenant).or_default();
            entry.0.add(&job.spec.request);
            entry.1 += 1;
        }
    }
    by_tenant
}

/// Whether `job`'s tenant holds all its leaf's user limit allows (it may always run
/// one job): the rule of `QueueConfig::user_limit_factor`, restated over the jobs.
fn tenant_at_limit(rm: &ResourceManager, job: &Job) -> bool {
    let Some(path) = rm.queue_path(job.queue) else {
        return false;
    };
    let Ok(queue) = rm.queue(path.as_str()) else {
        return false;
    };
    let Some(factor) = queue.config().user_limit_factor else {
        return false;
    };
    let tenant = job.spec.keys().get("tenant").unwrap_or("");
    let max_share = factor * queue.abs_guarantee();
    tenant_use(rm, job.queue)
        .get(tenant)
        .is_some_and(|(used, running)| {
            *running > 0 && used.dominant_share(rm.total()) >= max_share - EPS
        })
}

/// One attempt a pass made.
struct Made {
    token: FencingToken,
    job: JobId,
    leaf: QueueId,
    worker: WorkerId,
    request: Resources,
}

impl World {
    fn add_worker(&mut self, cores: u64, mib: u64, zone: Option<usize>, serves: Option<usize>) {
        let id = WorkerId(uuid::Uuid::from_u128(self.sim.fresh_id() | (1 << 100)));
        let reg = registration(id, cores, mib, zone, serves);
        self.sim
            .rm
            .register_worker(reg.clone(), self.sim.now)
            .expect("a valid registration");
        self.workers.push(ModelWorker {
            id,
            registration: reg,
            held: BTreeSet::new(),
            deferred: Vec::new(),
            seen: 0,
            silent: false,
        });
    }

    fn pick_worker(&self, i: usize) -> Option<usize> {
        (!self.workers.is_empty()).then(|| i % self.workers.len())
    }

    /// The core's state of the model's worker `w`; `None` once it was forgotten.
    fn state_of(&self, w: usize) -> Option<WorkerState> {
        self.sim
            .rm
            .worker(self.workers[w].id)
            .map(|worker| worker.state)
    }

    /// Whether the worker's polls are answered (it is neither lost nor forgotten).
    fn takes_polls(&self, w: usize) -> bool {
        self.state_of(w)
            .is_some_and(|state| state != WorkerState::Lost)
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match op {
            Op::Submit {
                path,
                cores,
                mib,
                priority,
                attempts,
                timeout_s,
                delay_s,
                zone,
            } => self.submit(
                PATHS[*path],
                Resources::cores(*cores, *mib),
                *priority,
                *attempts,
                *timeout_s,
                *delay_s,
                *zone,
            )?,
            Op::AddWorker {
                cores,
                mib,
                zone,
                serves,
            } => self.add_worker(*cores, *mib, *zone, *serves),
            Op::Poll {
                worker,
                finish,
                succeed,
                repeat_old_report,
                defer_reports,
                omit,
                ack,
                lose_answer,
            } => {
                if let Some(w) = self.pick_worker(*worker) {
                    self.poll(
                        w,
                        *finish,
                        *succeed,
                        *repeat_old_report,
                        *defer_reports,
                        *omit,
                        *ack,
                        *lose_answer,
                    )?;
                }
            }
            Op::Silence { worker } => {
                if let Some(w) = self.pick_worker(*worker) {
                    self.workers[w].silent = true;
                }
            }
            Op::Reregister {
                worker,
                keep_running,
            } => {
                if let Some(w) = self.pick_worker(*worker) {
                    self.reregister(w, *keep_running)?;
                }
            }
            Op::DrainWorker { worker } | Op::UndrainWorker { worker } => {
                if let Some(w) = self.pick_worker(*worker) {
                    let id = self.workers[w].id;
                    let before = self.state_of(w);
                    let drain = matches!(op, Op::DrainWorker { .. });
                    let result = if drain {
                        self.sim.rm.drain_worker(id)
                    } else {
                        self.sim.rm.undrain_worker(id)
                    };
                    let after = self.state_of(w);
                    if before.is_none() {
                        prop_assert_eq!(result, Err(WorkerError::Unknown(id)));
                        prop_assert_eq!(after, None);
                    } else if before == Some(WorkerState::Lost) {
                        prop_assert_eq!(result, Err(WorkerError::Lost(id)));
                        prop_assert_eq!(after, Some(WorkerState::Lost));
                    } else {
                        prop_assert_eq!(result, Ok(()));
                        let expected = if drain {
                            WorkerState::Draining
                        } else {
                            WorkerState::Active
                        };
                        prop_assert_eq!(after, Some(expected));
                    }
                }
            }
            Op::Cancel { job } => {
                if !self.jobs.is_empty() {
                    let id = self.jobs[job % self.jobs.len()];
                    let before = self.sim.rm.job(id).unwrap().state;
                    let result = self.sim.rm.cancel(id, "test", self.sim.now);
                    let after = self.sim.rm.job(id).unwrap().state;
                    if before.is_terminal() {
                        prop_assert_eq!(
                            result,
                            Err(JobError::AlreadyFinished { id, state: before })
                        );
                        prop_assert_eq!(after, before);
                    } else {
                        prop_assert_eq!(result, Ok(()));
                        prop_assert_eq!(after, JobState::Cancelled);
                        self.reach.cancels += 1;
                    }
                }
            }
            Op::Advance { secs } => {
                // Workers poll all the time: every one that is not silent has polled
                // (with nothing to report) before the time passes, so only the silent
                // ones are lost for missing their heartbeat. Not polling again after
                // that answer, any of them may go quiet until its next poll, which
                // exercises the quiet rules far more often than real workers would.
                for w in 0..self.workers.len() {
                    if self.takes_polls(w) {
                        self.poll(w, 0, true, false, false, 0, true, false)?;
                    }
                }
                self.sim.advance(Duration::from_secs(*secs));
                self.sim.rm.tick(self.sim.now);
            }
            Op::ChangeQueue { path, change } => self.change_queue(PATHS[*path], change)?,
            Op::Pass => self.pass_and_check()?,
        }
        self.sim.drain_effects();
        self.check_always()
    }

    #[allow(clippy::too_many_arguments)]
    fn submit(
        &mut self,
        path: &str,
        request: Resources,
        priority: i32,
        attempts: u32,
        timeout_s: Option<u64>,
        delay_s: Option<u64>,
        zone: Option<usize>,
    ) -> Result<(), TestCaseError> {
        let mut req = self.sim.request(path, request);
        req.priority = Some(priority);
        req.retry = Some(RetryPolicy {
            max_attempts: attempts,
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(4),
            jitter: 0.5,
        });
        req.timeout = timeout_s.map(Duration::from_secs);
        req.not_before = delay_s.map(|s| self.sim.now.after(Duration::from_secs(s)));
        if let Some(z) = zone {
            req.selector.insert("zone".into(), ZONES[z].into());
        }
        // Three tenants in turn, for the leaves that share fairly among them.
        req.keys
            .insert("tenant".into(), ["a", "b", "c"][self.jobs.len() % 3].into());
        let accepting = self
            .sim
            .rm
            .find_queue(path)
            .is_some_and(|q| q.is_leaf() && q.state() == QueueState::Running);
        let before = self.sim.rm.job_count();
        match self.sim.submit(req) {
            Ok(s) => {
                prop_assert!(accepting, "{} took a job", path);
                self.jobs.push(s.id());
            }
            Err(e) => {
                prop_assert!(!accepting, "{} refused a job: {}", path, e);
                prop_assert_eq!(self.sim.rm.job_count(), before);
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn poll(
        &mut self,
        w: usize,
        finish: usize,
        succeed: bool,
        repeat_old_report: bool,
        defer_reports: bool,
        omit: usize,
        ack: bool,
        lose_answer: bool,
    ) -> Result<(), TestCaseError> {
        if self.workers[w].silent {
            return Ok(());
        }
        let id = self.workers[w].id;
        let state = self.state_of(w);
        let lost = state != Some(WorkerState::Active) && state != Some(WorkerState::Draining);
        let held: Vec<(JobId, FencingToken)> = self.workers[w].held.iter().copied().collect();
        let (done, rest) = held.split_at(finish.min(held.len()));
        let (dropped, running) = rest.split_at(omit.min(rest.len()));
        let reports: Vec<AttemptReport> = done
            .iter()
            .map(|(job, token)| AttemptReport {
                job: *job,
                token: *token,
                result: if succeed {
                    ReportedResult::Succeeded {
                        result: None,
                        exit_code: Some(0),
                    }
                } else {
                    ReportedResult::Failed {
                        exit_code: Some(1),
                        message: "x".into(),
                        // One failure in four must not be retried: the job fails at
                        // once, attempts left or not.
                        retry: !token.0.is_multiple_of(4),
                    }
                },
                started_at: None,
                usage: None,
                memory_exceeded: false,
            })
            .collect();
        let mut finished = std::mem::take(&mut self.workers[w].deferred);
        let later = finished.len();
        let mut ending = Vec::new();
        if defer_reports {
            ending = done.to_vec();
        } else {
            finished.extend(reports.iter().cloned());
        }
        let mut stale = None;
        if repeat_old_report
            && let Some((_, old)) = self.sent_reports.iter().rev().find(|(ww, _)| *ww == id)
        {
            stale = Some(old.clone());
            finished.push(old.clone());
        }
        let poll = WorkerPoll {
            registration: None,
            running: running.to_vec(),
            finished: finished.clone(),
            acked: ack.then_some(self.workers[w].seen),
            ending,
            progress: Vec::new(),
        };
        // Attempts the core expects in this poll and that it leaves out.
        let vanishing: Vec<(JobId, FencingToken)> = dropped
            .iter()
            .filter(|(job, token)| self.current(*job) == Some(*token))
            .copied()
            .collect();
        let jobs_before = self.sim.rm.job_count();
        let ticket = self.sim.ticket();
        let result = self
            .sim
            .rm
            .long_poll(id, ticket, &poll, Duration::ZERO, self.sim.now);
        if lost {
            if state.is_none() {
                prop_assert_eq!(result, Err(WorkerError::Unknown(id)));
            } else {
                prop_assert_eq!(result, Err(WorkerError::Lost(id)));
            }
            prop_assert_eq!(self.sim.rm.job_count(), jobs_before);
            // It learns it was lost; what it ran was taken back and it stops it all.
            let model = &mut self.workers[w];
            model.held.clear();
            model.deferred.clear();
            return Ok(());
        }
        let outcome = result.map_err(|e| TestCaseError::fail(e.to_string()))?;
        let answers_before = self.sim.log.answers.len();
        self.sim.drain_effects();
        let answer = self.sim.log.answers[answers_before..]
            .iter()
            .find(|a| a.ticket == ticket)
            .cloned();
        let answer = answer
            .ok_or_else(|| TestCaseError::fail("a poll that does not wait is answered at once"))?;
        if let Some(old) = stale {
            prop_assert!(
                outcome
                    .refused
                    .iter()
                    .any(|r| r.job == old.job && r.token == old.token),
                "a repeated report must be refused"
            );
        }
        for (job, token) in &vanishing {
            prop_assert_ne!(
                self.current(*job),
                Some(*token),
                "attempt {} of {} was left out of a poll and is still current",
                token,
                job
            );
            self.reach.omitted_attempts_lost += 1;
        }
        if ack {
            self.reach.acknowledged_polls += 1;
        }
        if defer_reports {
            self.workers[w].deferred = reports.clone();
        }
        self.reach.reports_in_later_poll += later as u64;
        for r in finished {
            self.sent_reports.push((id, r));
        }
        let model = &mut self.workers[w];
        model.held = running.iter().copied().collect();
        // Every attempt handed out is current and its worker's; one is handed again
        // only to the same worker, whom no answer carrying it had reached.
        for a in &answer.assignments {
            let job = self.sim.rm.job(a.job).unwrap();
            prop_assert_eq!(job.current_token(), Some(a.token));
            prop_assert_eq!(job.attempts.last().unwrap().worker, id);
            match self.handed.get_mut(&a.token) {
                Some((to, reached)) => {
                    prop_assert_eq!(*to, id, "token {} handed to two workers", a.token);
                    prop_assert!(!*reached, "token {} handed again after it arrived", a.token);
                    *reached = !lose_answer;
                    self.reach.redeliveries += 1;
                }
                None => {
                    self.handed.insert(a.token, (id, !lose_answer));
                }
            }
        }
        if lose_answer {
            self.reach.lost_answers += 1;
            return Ok(());
        }
        let model = &mut self.workers[w];
        model
            .held
            .extend(answer.assignments.iter().map(|a| (a.job, a.token)));
        model.seen = model.seen.max(answer.seq);
        for kill in &answer.kills {
            model.held.remove(&(kill.job, kill.token));
        }
        Ok(())
    }

    fn reregister(&mut self, w: usize, keep_running: bool) -> Result<(), TestCaseError> {
        let id = self.workers[w].id;
        let was_forgotten = self.state_of(w).is_none();
        if was_forgotten {
            self.reach.forgotten_workers_back += 1;
        }
        let was_lost = was_forgotten || self.state_of(w) == Some(WorkerState::Lost);
        let reg = self.workers[w].registration.clone();
        let result = self.sim.rm.register_worker(reg, self.sim.now);
        prop_assert_eq!(result, Ok(()));
        prop_assert_eq!(self.sim.rm.worker(id).unwrap().state, WorkerState::Active);
        let model = &mut self.workers[w];
        model.silent = false;
        model.seen = 0;
        if !keep_running {
            model.held.clear();
            model.deferred.clear();
        }
        if was_lost {
            self.lost.remove(&id);
            self.reach.reregistrations_after_loss += 1;
        } else {
            self.reach.reregistrations_alive += 1;
        }
        Ok(())
    }

    fn current(&self, job: JobId) -> Option<FencingToken> {
        self.sim.rm.job(job).and_then(|j| j.current_token())
    }

    /// A fingerprint of the queue tree, to show a refused change changed nothing.
    fn queue_fingerprint(&self) -> String {
        self.sim
            .rm
            .queues()
            .iter()
            .map(|q| {
                format!(
                    "{} {:?} {:?} {} {}\n",
                    q.path(),
                    q.state(),
                    q.config(),
                    q.abs_guarantee(),
                    q.abs_max()
                )
            })
            .collect()
    }

    fn change_queue(&mut self, path: &str, change: &QueueChange) -> Result<(), TestCaseError> {
        let now = self.sim.now;
        let rm = &self.sim.rm;
        let exists = rm.find_queue(path).is_some();
        let parent = QueuePath::parse(path).unwrap().parent().unwrap();
        // The guarantees of the queue's siblings, which may sum to 100%.
        let siblings: f64 = rm.find_queue(parent.as_str()).map_or(0.0, |p| {
            p.children()
                .iter()
                .filter(|c| c.as_str() != path)
                .map(|c| rm.queue(c.as_str()).unwrap().config().capacity)
                .sum()
        });
        let config = rm.find_queue(path).map(|q| q.config().clone());
        let unfinished = rm.find_queue(path).map_or(0, |q| q.unfinished());
        let before = self.queue_fingerprint();
        let rm = &mut self.sim.rm;
        let (result, expected_ok) = match change {
            QueueChange::Stop => (rm.stop_queue(path), exists),
            QueueChange::Drain => (rm.drain_queue(path), exists),
            QueueChange::Start => (rm.start_queue(path), exists),
            QueueChange::Guarantee(c) => (
                rm.update_queue(
                    path,
                    &QueueUpdate {
                        capacity: Some(*c),
                        ..QueueUpdate::default()
                    },
                ),
                config.as_ref().is_some_and(|cfg| {
                    *c <= cfg.max_capacity
                        && siblings + c <= 100.0 + EPS
                        // A user limit is a multiple of the guarantee: it needs one.
                        && (*c > 0.0 || cfg.user_limit_factor.is_none())
                }),
            ),
            QueueChange::MaxCapacity(m) => (
                rm.update_queue(
                    path,
                    &QueueUpdate {
                        max_capacity: Some(*m),
                        ..QueueUpdate::default()
                    },
                ),
                config.as_ref().is_some_and(|cfg| *m >= cfg.capacity),
            ),
            QueueChange::MaxRunning(m) => (
                rm.update_queue(
                    path,
                    &QueueUpdate {
                        max_running: Some(*m),
                        ..QueueUpdate::default()
                    },
                ),
                exists,
            ),
            QueueChange::Create { capacity, max } => {
                // A leaf with jobs or with a leaf's own settings cannot take children.
                let parent_ok = rm.find_queue(parent.as_str()).is_some_and(|p| {
                    !(p.is_leaf() && p.unfinished() > 0) && p.config().fairness_key.is_none()
                });
                let expected =
                    !exists && parent_ok && siblings + capacity <= 100.0 + EPS && max >= capacity;
                let result = rm
                    .create_queue(path, QueueConfig::with_capacity(*capacity, *max))
                    .map(|_| ());
                (result, expected)
            }
            QueueChange::Fairness(factor) => {
                let expected = rm.find_queue(path).is_some_and(|q| {
                    q.is_leaf() && (factor.is_none() || q.config().capacity > 0.0)
                });
                let update = QueueUpdate {
                    fairness_key: Some(Some("tenant".into())),
                    user_limit_factor: Some(factor.map(f64::from)),
                    ..QueueUpdate::default()
                };
                (rm.update_queue(path, &update), expected)
            }
            QueueChange::Delete { force } => {
                let result = rm.delete_queue(path, *force, now);
                let expected = exists && (unfinished == 0 || *force);
                if let Ok(cancelled) = &result {
                    prop_assert_eq!(*cancelled, unfinished, "deleting {} cancelled", path);
                }
                (result.map(|_| ()), expected)
            }
        };
        prop_assert_eq!(
            result.is_ok(),
            expected_ok,
            "{:?} on {}: {:?}",
            change,
            path,
            result
        );
        let rm = &self.sim.rm;
        match (change, result) {
            (_, Err(_)) => {
                prop_assert_eq!(
                    self.queue_fingerprint(),
                    before,
                    "a refused change changed the tree"
                );
                self.reach.refused_queue_changes += 1;
            }
            (QueueChange::Stop | QueueChange::Drain | QueueChange::Start, Ok(())) => {
                let state = match change {
                    QueueChange::Stop => QueueState::Stopped,
                    QueueChange::Drain => QueueState::Draining,
                    _ => QueueState::Running,
                };
                for q in rm.queues() {
                    if q.path().is_within(&QueuePath::parse(path).unwrap()) {
                        prop_assert_eq!(
                            q.state(),
                            state,
                            "{} after {:?} of {}",
                            q.path(),
                            change,
                            path
                        );
                    }
                }
            }
            (QueueChange::Guarantee(c), Ok(())) => {
                let q = rm.queue(path).unwrap();
                let p = rm.queue(parent.as_str()).unwrap();
                prop_assert_eq!(q.config().capacity, *c);
                prop_assert!((q.abs_guarantee() - p.abs_guarantee() * c / 100.0).abs() < EPS);
                self.reach.guarantee_changes += 1;
            }
            (QueueChange::MaxCapacity(m), Ok(())) => {
                let q = rm.queue(path).unwrap();
                let p = rm.queue(parent.as_str()).unwrap();
                prop_assert!((q.abs_max() - p.abs_max() * m / 100.0).abs() < EPS);
            }
            (QueueChange::MaxRunning(m), Ok(())) => {
                prop_assert_eq!(rm.queue(path).unwrap().config().running_limit(), *m);
            }
            (QueueChange::Fairness(factor), Ok(())) => {
                let config = rm.queue(path).unwrap().config();
                prop_assert_eq!(config.fairness_key.as_deref(), Some("tenant"));
                prop_assert_eq!(config.user_limit_factor, factor.map(f64::from));
                self.reach.fairness_changes += 1;
            }
            (QueueChange::Create { .. }, Ok(())) => {
                let q = rm.queue(path).unwrap();
                prop_assert!(q.is_leaf());
                prop_assert_eq!(q.state(), rm.queue(parent.as_str()).unwrap().state());
                self.reach.queue_creates += 1;
            }
            (QueueChange::Delete { .. }, Ok(())) => {
                prop_assert!(rm.find_queue(path).is_none());
                for id in &self.jobs {
                    let job = rm.job(*id).unwrap();
                    if rm.queue_path(job.queue).is_some_and(|p| p.as_str() == path) {
                        prop_assert!(job.state.is_terminal());
                    }
                }
                self.reach.queue_deletes += 1;
            }
        }
        Ok(())
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
        self.sim.log.assignments.clear();
        for id in &self.jobs {
            if let Some(job) = self.sim.rm.job(*id) {
                prop_assert_eq!(job.state.is_terminal(), self.finished_once.contains(id));
                prop_assert!(job.failures <= job.spec.retry.max_attempts);
            }
        }
        // A fair leaf's account of its tenants is what their attempts hold.
        for queue in self.sim.rm.queues() {
            if queue.config().fairness_key.is_none() || !queue.is_leaf() {
                continue;
            }
            let counted: BTreeMap<String, (Resources, u32)> = queue
                .users()
                .into_iter()
                .map(|u| (u.name, (u.used, u.running)))
                .collect();
            prop_assert_eq!(
                &counted,
                &tenant_use(&self.sim.rm, queue.id()),
                "{}",
                queue.path()
            );
        }
        // A lost worker holds nothing and counts for nothing.
        for w in self.sim.rm.workers() {
            if w.state == WorkerState::Lost {
                prop_assert_eq!(w.attempt_count(), 0);
                if self.lost.insert(w.id) {
                    self.reach.worker_losses += 1;
                }
            }
            if !w.quiet {
                self.quiet.remove(&w.id);
            } else if self.quiet.insert(w.id) {
                self.reach.quiet_spells += 1;
            }
        }
        // A quiet worker keeps only attempts it was handed: it may be running those,
        // and the rest went back to their queues.
        for job in self.sim.rm.jobs() {
            let Some(attempt) = job.attempts.last() else {
                continue;
            };
            let on_quiet = self
                .sim
                .rm
                .worker(attempt.worker)
                .is_some_and(|w| w.quiet && w.state != WorkerState::Lost);
            if job.state.is_active() && on_quiet {
                prop_assert!(
                    self.handed.contains_key(&attempt.token),
                    "job {} waits on quiet worker {} that was never handed it",
                    job.id,
                    attempt.worker
                );
            }
        }
        Ok(())
    }

    fn pass_and_check(&mut self) -> Result<(), TestCaseError> {
        self.sim.rm.tick(self.sim.now);
        self.sim.drain_effects();
        let before = Moment::now(&self.sim.rm, &Tree::of(&self.sim.rm));
        let kills_before = self.sim.log.kills.len();
        self.sim.rm.schedule(self.sim.now);
        self.sim.drain_effects();
        self.reach.passes += 1;
        let rm = &self.sim.rm;
        let tree = Tree::of(rm);
        let now = self.sim.now;

        // Tokens only grow: an attempt this pass made holds a token above every
        // earlier one, and no token ever names two attempts.
        let mut made: Vec<Made> = Vec::new();
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
                        made.push(Made {
                            token: attempt.token,
                            job: job.id,
                            leaf: job.queue,
                            worker: attempt.worker,
                            request: job.spec.request.clone(),
                        });
                    }
                }
            }
        }
        made.sort_by_key(|m| m.token);
        for m in &made {
            self.token_owner.insert(m.token, m.job);
            if !rm.job(m.job).unwrap().spec.selector().is_empty() {
                self.reach.selector_placements += 1;
            }
        }
        if let Some(highest) = made.last() {
            self.last_token = highest.token;
        }
        self.reach.placements += made.len() as u64;
        // A tenant of a leaf with a user limit was below it when its last attempt of
        // the pass was made, or ran nothing then (preemption in the pass only lowers
        // what it holds at the end).
        let mut last_made: BTreeMap<(QueueId, String), &Made> = BTreeMap::new();
        for m in &made {
            let tenant = rm
                .job(m.job)
                .unwrap()
                .spec
                .keys()
                .get("tenant")
                .unwrap_or("");
            last_made.insert((m.leaf, tenant.to_owned()), m);
        }
        for ((leaf, tenant), m) in &last_made {
            let queue = rm.queue(tree.nodes[leaf].path.as_str()).unwrap();
            let Some(factor) = queue.config().user_limit_factor else {
                continue;
            };
            let (used, running) = tenant_use(rm, *leaf).remove(tenant).unwrap_or_default();
            if running <= 1 {
                continue;
            }
            let mut before = used.clone();
            before.sub(&m.request);
            let max_share = factor * queue.abs_guarantee();
            prop_assert!(
                before.dominant_share(rm.total()) < max_share + EPS,
                "tenant {} of {} held {:?} of {:?}, at its limit {}, and got {}",
                tenant,
                queue.path(),
                before,
                rm.total(),
                max_share,
                m.job
            );
        }
        for m in &made {
            // A queue that received work stays within its ceiling.
            for q in tree.path_below_root(m.leaf) {
                let view = rm.queue(tree.nodes[&q].path.as_str()).unwrap();
                prop_assert!(
                    view.dominant_share() <= view.abs_max() + EPS,
                    "{} above its ceiling: {} > {}",
                    view.path(),
                    view.dominant_share(),
                    view.abs_max()
                );
            }
        }

        // Preemption takes from a worker that takes work, never takes a queue below its
        // guarantee, nor from one that opted out.
        let mut victims: Vec<(QueueId, Resources)> = Vec::new();
        for k in &self.sim.log.kills[kills_before..] {
            if k.reason != KillReason::Preempted {
                continue;
            }
            self.reach.preemptions += 1;
            let job = rm.job(k.job).expect("victim exists");
            victims.push((job.queue, job.spec.request.clone()));
            prop_assert_eq!(
                rm.worker(k.worker).unwrap().state,
                WorkerState::Active,
                "preempted {} on a worker that takes no work",
                k.job
            );
            for q in tree.path_below_root(job.queue) {
                let view = rm.queue(tree.nodes[&q].path.as_str()).unwrap();
                prop_assert!(
                    view.config().preemptable,
                    "preempted from opted-out {}",
                    view.path()
                );
                prop_assert!(
                    view.dominant_share() >= view.abs_guarantee() - EPS,
                    "preemption took {} below its guarantee: {} < {}",
                    view.path(),
                    view.dominant_share(),
                    view.abs_guarantee()
                );
            }
        }

        if before.total == *rm.total() {
            self.check_decisions(&tree, before, &made, &victims)?;
        }
        let rm = &self.sim.rm;

        // Work conservation, job by job. Within a leaf the order is strict, so a leaf's
        // next job must not be left waiting when it could start: the leaf may be served
        // (no drain on its path, under its running limit), no ceiling on its path
        // forbids it or is held by another next job, and a worker taking work that
        // accepts it (labels, kinds, queues) has room. A job set aside (parked) while its
        // leaf has nothing ready must be one no such worker could run even when idle,
        // or one alone above a ceiling.
        let end = Moment::now(rm, &tree);
        let roomy = Resources::cores(4, 4000);
        let contended = !rm
            .workers()
            .any(|w| w.state == WorkerState::Active && !w.quiet && roomy.fits_in(&w.free()));
        for (leaf, node) in &tree.nodes {
            if !node.leaf {
                continue;
            }
            if contended && end.head[leaf] != Head::None && end.servable(&tree, *leaf) {
                self.reach.contended_leaf_checks += 1;
            }
            if let Some((job, worker)) = end.runnable(rm, &tree, *leaf) {
                return Err(TestCaseError::fail(format!(
                    "after a pass {}'s next job {job} ({:?}) fits on {worker} but waits",
                    node.path,
                    rm.job(job).unwrap().spec.request
                )));
            }
        }
        for job in rm.jobs() {
            if job.state != JobState::Pending {
                continue;
            }
            // Every job whose time has come is out of its delay.
            prop_assert!(
                job.not_before.is_none_or(|t| t > now),
                "job {} still waits for {:?} at {:?}",
                job.id,
                job.not_before,
                now
            );
            let Some(node) = tree.nodes.get(&job.queue) else {
                continue;
            };
            if job.not_before.is_some() || end.head[&job.queue] != Head::None {
                continue;
            }
            if tenant_at_limit(rm, job) {
                // Its tenant holds all its user limit allows: it waits for one of its
                // attempts to end, not for a worker.
                continue;
            }
            let capable = rm.workers().any(|w| {
                w.state == WorkerState::Active
                    && !w.quiet
                    && accepts(w, job, &node.path)
                    && job.spec.request.fits_in(&w.capacity)
            });
            let alone_beyond = tree.path_below_root(job.queue).into_iter().any(|q| {
                job.spec.request.dominant_share(rm.total()) > tree.nodes[&q].abs_max + EPS
            });
            prop_assert!(
                !capable || alone_beyond,
                "job {} of {} ({:?}) is set aside though a worker could run it",
                job.id,
                node.path,
                job.spec.request
            );
        }
        Ok(())
    }

    /// The guarantee order of every decision of the pass, replayed from the state
    /// before it: when the pass served a queue at or above its guarantee, no sibling
    /// below its own had a next job it could have started then. (Siblings are served
    /// in order of dominant share ÷ guarantee, queues without a guarantee last.)
    /// Preemption frees resources halfway through a pass; the replay never adds them
    /// back, which only makes jobs look less able to start, and counts a queue that
    /// lost attempts at its lowest possible share.
    fn check_decisions(
        &mut self,
        tree: &Tree,
        before: Moment,
        made: &[Made],
        victims: &[(QueueId, Resources)],
    ) -> Result<(), TestCaseError> {
        let rm = &self.sim.rm;
        let end = Moment::now(rm, tree);
        let victim_leaves: BTreeSet<QueueId> = victims.iter().map(|(q, _)| *q).collect();
        let mut at = before;
        for (q, _) in victims {
            *at.preempted.entry(*q).or_default() += 1;
        }
        for (i, m) in made.iter().enumerate() {
            // Each leaf's next job now: its next attempt in this pass, else its next
            // job at the end of the pass (jobs set aside on the way never start).
            for (leaf, node) in &tree.nodes {
                if !node.leaf {
                    continue;
                }
                let head = if victim_leaves.contains(leaf) {
                    Head::Unknown
                } else {
                    made[i..]
                        .iter()
                        .find(|later| later.leaf == *leaf)
                        .map_or(end.head[leaf], |later| Head::Known(later.job))
                };
                at.head.insert(*leaf, head);
            }
            let mut served = m.leaf;
            while let Some(parent) = tree.nodes[&served].parent {
                let mut lowest = at.used[&served].clone();
                for (q, request) in victims {
                    if tree.leaves_under(served).contains(q) {
                        lowest = lowest.minus(request);
                    }
                }
                let served_share = lowest.dominant_share(&at.total);
                if served_share >= tree.nodes[&served].abs_guarantee {
                    for sibling in &tree.nodes[&parent].children {
                        if *sibling == served
                            || at.share(*sibling) >= tree.nodes[sibling].abs_guarantee - EPS
                        {
                            continue;
                        }
                        let leaves = tree.leaves_under(*sibling);
                        if leaves.iter().any(|l| at.head[l] != Head::None) {
                            self.reach.contested_decisions += 1;
                        }
                        for leaf in leaves {
                            if let Some((job, worker)) = at.runnable(rm, tree, leaf) {
                                return Err(TestCaseError::fail(format!(
                                    "the pass gave {} to {} (share {served_share:.3}, guarantee \
                                     {:.3}) while {} (share {:.3}, guarantee {:.3}) could start \
                                     {job} on {worker}",
                                    m.job,
                                    tree.nodes[&served].path,
                                    tree.nodes[&served].abs_guarantee,
                                    tree.nodes[&leaf].path,
                                    at.share(*sibling),
                                    tree.nodes[sibling].abs_guarantee,
                                )));
                            }
                        }
                    }
                }
                served = parent;
            }
            // A pass starts nothing under a drain or past a leaf's running limit.
            prop_assert!(
                at.servable(tree, m.leaf),
                "the pass started {} in {}, which may not start anything",
                m.job,
                tree.nodes[&m.leaf].path
            );
            // The decision made: its resources are taken.
            let mut q = Some(m.leaf);
            while let Some(id) = q {
                at.used.get_mut(&id).unwrap().add(&m.request);
                *at.running.get_mut(&id).unwrap() += 1;
                q = tree.nodes[&id].parent;
            }
            if let Some(free) = at.free.get_mut(&m.worker) {
                *free = free.minus(&m.request);
            }
        }
        Ok(())
    }

    fn run(ops: &[Op]) -> Result<World, TestCaseError> {
        let mut world = build();
        for op in ops {
            world.apply(op)?;
        }
        // Settle: everyone polls, a pass runs, and the invariants still hold.
        for i in 0..world.workers.len() {
            world.apply(&Op::Poll {
                worker: i,
                finish: 0,
                succeed: true,
                repeat_old_report: false,
                defer_reports: false,
                omit: 0,
                ack: true,
                lose_answer: false,
            })?;
        }
        world.apply(&Op::Pass)?;
        Ok(world)
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(192), max_shrink_iters: 2000, ..ProptestConfig::default() })]

    /// Under any sequence of commands: no worker is over-committed, no queue that
    /// receives work passes its ceiling, an attempt is handed only to its worker and
    /// again only when no answer carrying it arrived, a job is terminal at most once,
    /// repeated reports are refused, attempts left out of a poll are lost, commands
    /// succeed exactly when they should and a refused one changes nothing, preemption
    /// never takes a queue below its guarantee, every decision of a pass respects
    /// guarantees, and after a pass no job that could start waits.
    #[test]
    fn invariants_hold_under_random_operation(ops in ops(200)) {
        World::run(&ops)?;
    }

    /// The same seed and the same commands give the same decisions.
    #[test]
    fn replay_is_deterministic(ops in ops(120)) {
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

/// The generator reaches every event the invariants are meant to survive: over a fixed
/// sample of generated runs (the same strategy as the property test), each count is
/// above zero. Run with `--nocapture` to see the figures.
#[test]
fn generator_reaches_every_event() {
    let config = ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha));
    let strategy = ops(200);
    let runs = 64;
    let mut total = Reach::default();
    for _ in 0..runs {
        let ops = strategy.new_tree(&mut runner).unwrap().current();
        let world = World::run(&ops).unwrap_or_else(|e| panic!("{e}\n{ops:?}"));
        total.add(&world.reach);
    }
    eprintln!("reach of {runs} generated runs:");
    for (name, count) in total.figures() {
        eprintln!("  {name:>40}: {count}");
    }
    for (name, count) in total.figures() {
        assert!(count > 0, "no run reached {name}");
    }
}

// ----- scenarios the property test found ------------------------------------------

/// A job submitted ahead of a leaf's next job (a higher priority) becomes the next job:
/// a ceiling the old one would have broken must not hold the new one back.
#[test]
fn a_higher_priority_job_is_not_held_back_by_the_ceiling_of_the_job_it_overtakes() {
    let mut sim = Sim::new(Config::default());
    sim.queue("root.q", 50.0, 75.0);
    sim.queue("root.r", 50.0, 100.0);
    let worker = sim.worker("w", 4, 4000);
    sim.submit_n("root.q", 2, Resources::cores(2, 100));
    sim.pass();
    assert_eq!(sim.rm.worker(worker).unwrap().attempt_count(), 1);
    // The second 2-cpu job would lift root.q to 100% of the cluster, above its 75%.
    let mut urgent = sim.request("root.q", Resources::cores(1, 100));
    urgent.priority = Some(1);
    let urgent = sim.submit(urgent).unwrap().id();
    sim.pass();
    assert_eq!(
        sim.state(urgent),
        JobState::Scheduled,
        "1 cpu fits under the ceiling"
    );
    sim.check();
}

/// `root.a` and `root.b`, half each, preemption on after 5 s, no heartbeat losses.
fn halves_with_preemption() -> Sim {
    let mut config = Config::default();
    config.preemption.enabled = true;
    config.preemption.delay = Duration::from_secs(5);
    config.heartbeat_timeout = Duration::from_secs(3600);
    let mut sim = Sim::new(config);
    sim.queue("root.a", 50.0, 100.0);
    sim.queue("root.b", 50.0, 100.0);
    sim
}

/// Preemption takes attempts back only from workers that take work: what a draining
/// worker frees goes to no one, so the starved queue's share comes from active ones.
#[test]
fn preemption_never_takes_from_a_draining_worker() {
    let mut sim = halves_with_preemption();
    let first = sim.worker("first", 4, 4000);
    sim.submit_n("root.a", 4, Resources::cores(1, 100));
    sim.pass();
    // The newest attempts, the policy's first choice, run on a worker that then drains.
    let second = sim.worker("second", 4, 4000);
    sim.submit_n("root.a", 4, Resources::cores(1, 100));
    sim.pass();
    assert_eq!(sim.rm.worker(second).unwrap().attempt_count(), 4);
    sim.rm.drain_worker(second).unwrap();
    sim.submit_n("root.b", 2, Resources::cores(1, 100));
    sim.pass();
    sim.advance(Duration::from_secs(6));
    sim.pass();
    for kill in &sim.log.kills {
        assert_eq!(kill.reason, KillReason::Preempted);
        assert_eq!(kill.worker, first, "preempted on the draining worker");
    }
    assert!(
        !sim.log.kills.is_empty(),
        "root.b is starved below its guarantee"
    );
    assert_eq!(sim.rm.queue("root.b").unwrap().running(), 2);
    sim.check();
}

/// Found by CI's random run: a starved queue whose next job needs more memory than a
/// worker has got preemption on that worker anyway; the freed room went straight back
/// to the victim's queue, and the same job was killed and started again in one pass.
#[test]
fn preemption_never_takes_from_a_worker_too_small_for_the_starved_job() {
    let mut sim = halves_with_preemption();
    let big = sim.worker("big", 4, 4000);
    sim.submit_n("root.a", 4, Resources::cores(1, 250));
    sim.pass();
    assert_eq!(sim.rm.worker(big).unwrap().attempt_count(), 4);
    let small = sim.worker("small", 4, 1000);
    sim.submit_n("root.a", 4, Resources::cores(1, 250));
    sim.pass();
    assert_eq!(sim.rm.worker(small).unwrap().attempt_count(), 4);
    // root.b's job fits only on the big worker, whose attempts are the oldest: the
    // policy's first choices are on the small one.
    sim.submit_n("root.b", 1, Resources::cores(1, 2000));
    sim.pass();
    sim.advance(Duration::from_secs(6));
    sim.pass();
    assert!(
        !sim.log.kills.is_empty(),
        "root.b is starved below its guarantee"
    );
    for kill in &sim.log.kills {
        assert_eq!(kill.reason, KillReason::Preempted);
        assert_eq!(
            kill.worker, big,
            "preempted on a worker too small for root.b's job"
        );
    }
    assert_eq!(sim.rm.queue("root.b").unwrap().running(), 1);
    sim.check();
}
