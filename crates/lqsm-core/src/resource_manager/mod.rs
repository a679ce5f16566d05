//! The ResourceManager state machine: the queue tree, the jobs, the workers and the
//! timers, changed only through commands. Every command takes `now`; none does I/O.
//! What the shell must do afterwards accumulates in [`Effects`], taken with
//! [`ResourceManager::take_effects`].
//!
//! The state lives here; the commands are split by the part of the seed they serve,
//! each an `impl ResourceManager` block in its own module:
//! - `queues`: the QueuesManager: the queue tree, its settings and lifecycle;
//! - `jobs`: submission, cancellation and the end of attempts;
//! - `workers`: registration, polls (the worker protocol) and draining;
//! - `on_demand`: queues created from a parent's template, removed once idle;
//! - `timers`: what happens when time passes;
//! - `usage`: what attempts used, right-sized requests, more memory after an OOM kill;
//! - `rate_limits`: the buckets behind queue, key and handler rate limits;
//! - `scheduler`: the allocation algorithm (one pass) and preemption.

pub(crate) mod clock;
pub(crate) mod jobs;
pub(crate) mod on_demand;
pub(crate) mod polls;
mod queues;
pub(crate) mod rate_limits;
pub(crate) mod ready;
pub(crate) mod scheduler;
pub(crate) mod schedules;
pub(crate) mod timers;
pub(crate) mod usage;
pub(crate) mod workers;
pub(crate) mod workflows;

pub use crate::effects::{RefusalReason, RefusedReport};
pub use jobs::{JobError, JobSelection, SelectionError, Submitted};
pub use queues::{NameUsage, QueueView, UserShareView};
pub use workers::{PollOutcome, QUIET_GRACE, REDELIVER_AFTER, WorkerError, WorkerPoll};
pub use workflows::{BroadcastJob, MAX_WORKFLOW_NODES, OpenBroadcast, WorkflowError};

use crate::effects::Effects;
use crate::hashing::HashMap;
use crate::ids::{JobId, QueueId, Timestamp, WorkerId};
use crate::jobs::Waiting;
use crate::jobs::{Job, JobKey, JobState};
use crate::policy::{Policies, PreemptionPolicy};
use crate::queues::{QueueConfig, QueuePath};
use crate::rate_limits::RateLimit;
use crate::resources::Resources;
use crate::timers::Timers;
use crate::workers::{Worker, WorkerIndex, WorkerKey};
use queues::QueueNode;
use serde::{Deserialize, Serialize};
use slotmap::SlotMap;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

/// The root queue's id.
pub const ROOT: QueueId = QueueId(0);

/// Preemption settings for the whole cluster.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PreemptionConfig {
    /// The cluster switch.
    pub enabled: bool,
    /// How long a queue below its guarantee waits with unmet demand before preemption acts.
    pub delay: Duration,
    /// Fraction of a guarantee treated as noise on both sides, so rounding never thrashes.
    pub dead_zone: f64,
    /// The name of the preemption policy.
    pub policy: String,
}

impl Default for PreemptionConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            delay: Duration::from_secs(15),
            dead_zone: 0.05,
            policy: crate::policy::NEWEST_OVER_GUARANTEE.into(),
        }
    }
}

/// Cluster-wide settings of the ResourceManager.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// A worker that has not polled for this long is lost.
    pub heartbeat_timeout: Duration,
    /// Finished jobs (and their idempotency keys) are kept this long.
    pub retention: Duration,
    /// A lost worker stays listed (as `lost`) this long after its missed heartbeat,
    /// then is forgotten: a cluster whose workers come and go (autoscaling, spot
    /// machines, rolling restarts) would otherwise hold every worker it ever had.
    pub lost_worker_retention: Duration,
    /// Preemption settings.
    pub preemption: PreemptionConfig,
    /// Longest a worker's long-poll waits for work (it is also cut to half the
    /// heartbeat timeout, so a waiting worker is never taken for lost).
    pub max_poll_wait: Duration,
    /// A pass stops after this many leaves whose next job fit on no worker; the rest
    /// wait for the next change. Bounds the cost of passes over a full cluster.
    pub max_skips_per_pass: usize,
    /// Rate limits per handler (task) name, across every queue, as Celery's
    /// `@task(rate_limit=...)`: one bucket per handler.
    pub handler_rate_limits: BTreeMap<String, RateLimit>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            heartbeat_timeout: Duration::from_secs(10),
            retention: Duration::from_secs(24 * 3600),
            lost_worker_retention: Duration::from_secs(600),
            preemption: PreemptionConfig::default(),
            max_poll_wait: Duration::from_secs(4),
            max_skips_per_pass: 64,
            handler_rate_limits: BTreeMap::new(),
        }
    }
}

/// A refused configuration.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum ConfigError {
    /// The preemption policy is not registered.
    #[error("preemption.policy: unknown policy `{name}` (known: {known})")]
    UnknownPreemptionPolicy {
        /// The name given.
        name: String,
        /// The registered names.
        known: String,
    },
    /// The dead zone is not a fraction.
    #[error("preemption.dead_zone: {0} is not between 0 and 0.5")]
    DeadZone(f64),
    /// The heartbeat timeout is zero.
    #[error("heartbeat_timeout: must be above zero")]
    HeartbeatTimeout,
    /// A handler's rate limit is out of range.
    #[error("{field}: {reason}")]
    HandlerLimit {
        /// The offending field (`handler_rate_limits.<handler>.burst`).
        field: String,
        /// What is wrong.
        reason: String,
    },
}

/// Figures of one scheduling pass.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct PassReport {
    /// Attempts assigned.
    pub placed: u64,
    /// Leaves passed over because their next job fit on no worker.
    pub skipped: u64,
    /// Attempts taken back by preemption.
    pub preempted: u64,
    /// Whether the pass did anything at all (false: nothing had changed).
    pub ran: bool,
}

/// The ResourceManager's whole state: see the module documentation.
pub struct ResourceManager {
    pub(crate) config: Config,
    pub(crate) policies: Policies,
    pub(crate) preemption_policy: Arc<dyn PreemptionPolicy>,
    pub(crate) seed: u64,
    /// Indexed by `QueueId`; `None` once deleted (ids are never reused).
    pub(crate) queues: Vec<Option<QueueNode>>,
    pub(crate) queue_ids: HashMap<QueuePath, QueueId>,
    /// Paths of deleted queues, so their finished jobs still name them.
    pub(crate) deleted_paths: HashMap<QueueId, QueuePath>,
    /// Queues created on demand and removed after their idle time, by path: their
    /// settings and lifetime counters stay readable for the retention.
    pub(crate) retired_queues: BTreeMap<QueuePath, crate::queues::RetiredQueue>,
    pub(crate) jobs: SlotMap<JobKey, Job>,
    pub(crate) job_ids: HashMap<JobId, JobKey>,
    pub(crate) idempotency: HashMap<(QueueId, String), JobKey>,
    pub(crate) workers: SlotMap<WorkerKey, Worker>,
    pub(crate) worker_ids: HashMap<WorkerId, WorkerKey>,
    pub(crate) index: WorkerIndex,
    /// What shares are shares of: the capacity of active workers plus what draining
    /// workers still run (so no queue's share can exceed 1).
    pub(crate) total: Resources,
    pub(crate) timers: Timers,
    pub(crate) effects: Effects,
    pub(crate) next_seq: u64,
    pub(crate) next_token: u64,
    /// Something changed that a pass could act on.
    pub(crate) dirty: bool,
    /// Shares or guarantees changed: every selection key must be recomputed.
    pub(crate) keys_stale: bool,
    /// Leaves below their guarantee whose demand could not be placed.
    pub(crate) starved: BTreeSet<QueueId>,
    /// Queues with `priority_preemption` on (the pass looks at their leaves only), each
    /// with the time its wake-up was last armed for (one timer per due time).
    pub(crate) priority_preempting: BTreeMap<QueueId, Option<Timestamp>>,
    /// Leaves passed over in the current pass.
    pub(crate) skipped: Vec<QueueId>,
    /// Leaves holding parked jobs.
    pub(crate) parked_leaves: BTreeSet<QueueId>,
    /// Restored attempts waiting for their worker to reclaim them, by worker.
    pub(crate) unclaimed: HashMap<WorkerId, Vec<JobKey>>,
    /// Long-polls waiting for work, by worker (at most one each).
    pub(crate) parked_polls: HashMap<WorkerKey, polls::ParkedPoll>,
    /// The latest `now` the shell passed in: the time of the poll answers a batch
    /// gives, which carry no time of their own.
    pub(crate) latest_now: Timestamp,
    /// Kill orders not yet sent, by worker, one per attempt.
    pub(crate) kill_orders: HashMap<WorkerKey, Vec<crate::effects::Kill>>,
    /// Workers whose waiting poll may have something to answer.
    pub(crate) to_answer: BTreeSet<WorkerKey>,
    /// One bucket per limited handler that has dispatched since the start.
    pub(crate) handler_buckets: HashMap<Arc<str>, rate_limits::Cell>,
    /// Jobs set aside by per-key and per-handler limits, one hold per limit.
    pub(crate) holds: SlotMap<crate::ids::HoldKey, rate_limits::Hold>,
    /// Each job set aside by a hold, with the instant it is expected to start.
    pub(crate) held_until: BTreeMap<JobKey, Timestamp>,
    /// Each job a hold gave back and that was not dispatched yet, with its hold.
    pub(crate) released: BTreeMap<JobKey, crate::ids::HoldKey>,
    /// When this state was restored, if it was: buckets not seen since start empty then.
    pub(crate) rate_limits_restored_at: Option<Timestamp>,
    /// Periodic schedules, and their slots by name.
    pub(crate) schedules: SlotMap<crate::ids::ScheduleKey, schedules::ScheduleEntry>,
    pub(crate) schedule_names: BTreeMap<String, crate::ids::ScheduleKey>,
    /// Jobs waiting for parents, with how many of them have not ended.
    pub(crate) blocked: HashMap<JobKey, u32>,
    /// Each job that others wait for, with those dependents (kept until it is purged).
    pub(crate) children: HashMap<JobKey, Vec<JobKey>>,
    /// Parents that ended and whose dependents are still to be released or cancelled.
    pub(crate) ended_parents: Vec<JobKey>,
    /// Whether `ended_parents` is being worked through (further ends only join it).
    pub(crate) ending_parents: bool,
    /// The state each job last reported of itself while running (`update_state`).
    pub(crate) progress: HashMap<JobKey, crate::jobs::Json>,
    /// Jobs pinned to each worker (a broadcast's), possibly ended or purged since.
    pub(crate) pinned_jobs: HashMap<WorkerId, Vec<JobKey>>,
    /// Pinned jobs set aside until their worker can take them, by worker.
    pub(crate) pinned_hold: HashMap<WorkerId, Vec<JobKey>>,
    /// How many dependents of each job have not ended (it is kept while any has not).
    pub(crate) open_children: HashMap<JobKey, u32>,
    /// Broadcasts that also reach workers registering later, by id.
    pub(crate) open_broadcasts: BTreeMap<uuid::Uuid, workflows::OpenBroadcast>,
}

impl std::fmt::Debug for ResourceManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResourceManager")
            .field("queues", &self.queue_ids.len())
            .field("jobs", &self.jobs.len())
            .field("workers", &self.workers.len())
            .field("total", &self.total)
            .finish_non_exhaustive()
    }
}

impl ResourceManager {
    /// A cluster with only the root queue, no workers and no jobs. `seed` keys the
    /// core's hashing and its only randomness (retry jitter).
    pub fn new(config: Config, policies: Policies, seed: u64) -> Result<Self, ConfigError> {
        let preemption_policy =
            policies
                .preemption(&config.preemption.policy)
                .map_err(|known| ConfigError::UnknownPreemptionPolicy {
                    name: config.preemption.policy.clone(),
                    known,
                })?;
        let dz = config.preemption.dead_zone;
        if !dz.is_finite() || !(0.0..=0.5).contains(&dz) {
            return Err(ConfigError::DeadZone(dz));
        }
        if config.heartbeat_timeout.is_zero() {
            return Err(ConfigError::HeartbeatTimeout);
        }
        for (handler, limit) in &config.handler_rate_limits {
            limit
                .check(&format!("handler_rate_limits.{handler}"))
                .map_err(|(field, reason)| ConfigError::HandlerLimit { field, reason })?;
        }
        let root_config = QueueConfig::with_capacity(100.0, 100.0);
        let root_policies = (
            policies.ordering(&root_config.ordering).expect("built-in"),
            policies
                .placement(&root_config.placement)
                .expect("built-in"),
            policies
                .admission(&root_config.admission)
                .expect("built-in"),
        );
        let mut root = QueueNode::new(ROOT, QueuePath::root(), None, root_config, root_policies);
        root.abs_guarantee = 1.0;
        root.abs_max = 1.0;
        let mut queue_ids = crate::hashing::map(seed);
        queue_ids.insert(QueuePath::root(), ROOT);
        Ok(Self {
            config,
            policies,
            preemption_policy,
            seed,
            queues: vec![Some(root)],
            queue_ids,
            deleted_paths: crate::hashing::map(seed),
            retired_queues: BTreeMap::new(),
            jobs: SlotMap::with_key(),
            job_ids: crate::hashing::map(seed),
            idempotency: crate::hashing::map(seed),
            workers: SlotMap::with_key(),
            worker_ids: crate::hashing::map(seed),
            index: WorkerIndex::new(seed),
            total: Resources::default(),
            timers: Timers::default(),
            effects: Effects::default(),
            next_seq: 1,
            next_token: 1,
            dirty: false,
            keys_stale: false,
            starved: BTreeSet::new(),
            priority_preempting: BTreeMap::new(),
            skipped: Vec::new(),
            parked_leaves: BTreeSet::new(),
            unclaimed: crate::hashing::map(seed),
            parked_polls: crate::hashing::map(seed),
            latest_now: Timestamp(0),
            kill_orders: crate::hashing::map(seed),
            to_answer: BTreeSet::new(),
            handler_buckets: crate::hashing::map(seed),
            holds: SlotMap::with_key(),
            held_until: BTreeMap::new(),
            released: BTreeMap::new(),
            rate_limits_restored_at: None,
            schedules: SlotMap::with_key(),
            schedule_names: BTreeMap::new(),
            blocked: crate::hashing::map(seed),
            children: crate::hashing::map(seed),
            ended_parents: Vec::new(),
            ending_parents: false,
            progress: crate::hashing::map(seed),
            pinned_jobs: crate::hashing::map(seed),
            pinned_hold: crate::hashing::map(seed),
            open_children: crate::hashing::map(seed),
            open_broadcasts: BTreeMap::new(),
        })
    }

    /// Everything the shell must do since the last call. Waiting polls that have
    /// work, kill orders or no more time to wait are answered here, so call it after
    /// the batch's commands, [`tick`](Self::tick) and [`schedule`](Self::schedule).
    pub fn take_effects(&mut self) -> Effects {
        self.answer_polls();
        std::mem::take(&mut self.effects)
    }

    /// The cluster-wide settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The job with this id.
    pub fn job(&self, id: JobId) -> Option<&Job> {
        self.job_ids.get(&id).map(|k| &self.jobs[*k])
    }

    pub(crate) fn job_by_key(&self, key: JobKey) -> Option<&Job> {
        self.jobs.get(key)
    }

    /// Every job the core holds (all states, until purged), in no particular order.
    pub fn jobs(&self) -> impl Iterator<Item = &Job> {
        self.jobs.values()
    }

    /// How many jobs the core holds (all states, until purged).
    pub fn job_count(&self) -> usize {
        self.jobs.len()
    }

    /// The worker with this id.
    pub fn worker(&self, id: WorkerId) -> Option<&Worker> {
        self.worker_ids.get(&id).map(|k| &self.workers[*k])
    }

    /// Every worker, in no particular order.
    pub fn workers(&self) -> impl Iterator<Item = &Worker> {
        self.workers.values()
    }

    /// What shares are shares of: capacity of active workers plus what draining
    /// workers still run.
    pub fn total(&self) -> &Resources {
        &self.total
    }

    /// When [`tick`](Self::tick) next has something to do.
    pub fn next_timer(&self) -> Option<Timestamp> {
        self.timers.next_due()
    }

    /// True when a [`schedule`](Self::schedule) call could change anything.
    pub fn needs_pass(&self) -> bool {
        self.dirty
    }

    // ----- checks for tests ----------------------------------------------------------

    /// Verifies the bookkeeping that every rule relies on: worker and queue usage
    /// equal the sum of their attempts, no worker is over-committed, each active job
    /// is held by exactly one worker and one leaf. Returns the first violation found.
    pub fn check_consistency(&self) -> Result<(), String> {
        let mut by_worker: std::collections::HashMap<WorkerKey, Resources> = Default::default();
        let mut by_queue: std::collections::HashMap<QueueId, (Resources, u64)> = Default::default();
        let mut tokens = HashSet::new();
        let mut ready: std::collections::HashMap<QueueId, usize> = Default::default();
        for (key, job) in &self.jobs {
            let unmet = self.blocked.get(&key).copied();
            if (job.waiting == Waiting::Blocked) != unmet.is_some() {
                return Err(format!(
                    "job {} is {:?} but counted blocked {unmet:?}",
                    job.id, job.waiting
                ));
            }
            if let Some(unmet) = unmet {
                let parents = &job
                    .spec
                    .depends()
                    .ok_or("a blocked job has parents")?
                    .parents;
                let running = parents
                    .iter()
                    .filter(|p| self.job(**p).is_some_and(|j| !j.state.is_terminal()))
                    .count();
                if job.state != JobState::Pending || running != unmet as usize || unmet == 0 {
                    return Err(format!(
                        "blocked job {} is {:?} and waits for {unmet} of {running} running parents",
                        job.id, job.state
                    ));
                }
            }
            if job.waiting == Waiting::Ready {
                if job.state != JobState::Pending || job.not_before.is_some() {
                    return Err(format!("job {} is ready but {:?}", job.id, job.state));
                }
                *ready.entry(job.queue).or_default() += 1;
            }
            if !job.state.is_active() {
                if job.worker.is_some() {
                    return Err(format!("inactive job {} still names a worker", job.id));
                }
                continue;
            }
            let token = job.current_token().ok_or("active job without attempt")?;
            if !tokens.insert(token) {
                return Err(format!("token {token} held twice"));
            }
            let Some(worker) = job.worker else {
                let awaited = self.unclaimed.values().any(|keys| keys.contains(&key));
                if !awaited {
                    return Err(format!("active job {} has no worker", job.id));
                }
                continue;
            };
            if !self.workers[worker].attempts.contains(&key) {
                return Err(format!("job {} not in its worker's attempts", job.id));
            }
            by_worker.entry(worker).or_default().add(&job.spec.request);
            let mut at = Some(job.queue);
            while let Some(q) = at {
                let e = by_queue.entry(q).or_default();
                e.0.add(&job.spec.request);
                e.1 += 1;
                at = self.node(q).parent;
            }
            let leaf = self.node(job.queue);
            if !leaf.attempts.contains(&(token, key)) {
                return Err(format!("job {} not in its leaf's attempts", job.id));
            }
        }
        let mut open: std::collections::HashMap<JobKey, u32> = Default::default();
        for (key, job) in &self.jobs {
            if job.waiting == Waiting::PinnedHold {
                let held = job
                    .spec
                    .pinned()
                    .and_then(|w| self.pinned_hold.get(&w))
                    .is_some_and(|h| h.contains(&key));
                let worker_lost = job
                    .spec
                    .pinned()
                    .and_then(|w| self.worker(w))
                    .is_some_and(|w| w.state == crate::workers::WorkerState::Lost);
                if !held || job.state != JobState::Pending || worker_lost {
                    return Err(format!(
                        "job {} is held for its worker but not in its hold",
                        job.id
                    ));
                }
            }
            if job.state.is_terminal() {
                continue;
            }
            for parent in job.spec.depends().iter().flat_map(|d| &d.parents) {
                if let Some(p) = self.job_ids.get(parent) {
                    *open.entry(*p).or_default() += 1;
                }
            }
        }
        for (parent, n) in &open {
            if self.open_children.get(parent) != Some(n) {
                return Err(format!(
                    "job {} has {n} open dependents, counted {:?}",
                    self.jobs[*parent].id,
                    self.open_children.get(parent)
                ));
            }
        }
        if self.open_children.len() != open.len() {
            return Err(format!(
                "{} jobs counted with open dependents, {} have them",
                self.open_children.len(),
                open.len()
            ));
        }
        for (key, worker) in &self.workers {
            let expected = by_worker.remove(&key).unwrap_or_default();
            if worker.used != expected {
                return Err(format!(
                    "worker {} used {:?} != {:?}",
                    worker.name, worker.used, expected
                ));
            }
            if !worker.used.fits_in(&worker.capacity) {
                return Err(format!(
                    "worker {} over-committed: {:?}",
                    worker.name, worker.used
                ));
            }
        }
        for view in self.queues() {
            let expected = ready.remove(&view.id()).unwrap_or_default();
            if view.node.ready.len() != expected {
                return Err(format!(
                    "queue {} counts {} ready jobs, holds {expected}",
                    view.path(),
                    view.node.ready.len()
                ));
            }
            let (used, running) = by_queue.remove(&view.id()).unwrap_or_default();
            if *view.used() != used || view.running() != running {
                return Err(format!("queue {} used/running out of step", view.path()));
            }
        }
        Ok(())
    }
}
