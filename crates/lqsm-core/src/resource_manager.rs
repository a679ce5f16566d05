//! The ResourceManager state machine: the queue tree, the jobs, the workers and the
//! timers, changed only through the commands below. Every command takes `now`; none
//! does I/O. What the shell must do afterwards accumulates in [`Effects`], taken with
//! [`ResourceManager::take_effects`].

use crate::effects::{Assignment, Effects, Kill, KillReason, Record};
use crate::hashing::HashMap;
use crate::ids::{FencingToken, JobId, QueueId, Timestamp, WorkerId};
use crate::jobs::Waiting;
use crate::jobs::{
    AttemptOutcome, AttemptReport, Job, JobKey, JobKind, JobState, ReportedResult, SubmitError,
    SubmitRequest, Termination, unit_random,
};
use crate::policy::{AdmissionContext, Policies, PreemptionPolicy};
use crate::queues::{
    QueueConfig, QueueError, QueueNode, QueuePath, QueueState, QueueStats, QueueUpdate,
};
use crate::resources::{MiB, Millicores, Resources};
use crate::timers::{Timer, Timers};
use crate::workers::{Candidates, Worker, WorkerIndex, WorkerKey, WorkerRegistration, WorkerState};
use serde::{Deserialize, Serialize};
use slotmap::SlotMap;
use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

/// The root queue's id.
pub const ROOT: QueueId = QueueId(0);

/// Largest request component accepted, so sums can never overflow.
const MAX_CPU_MILLICORES: u64 = 1 << 40;
const MAX_MEMORY_MIB: u64 = 1 << 40;
const MAX_GPUS: u32 = 1 << 16;
const MAX_CUSTOM: u64 = 1 << 40;

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
    /// Preemption settings.
    pub preemption: PreemptionConfig,
    /// A pass stops after this many leaves whose next job fit on no worker; the rest
    /// wait for the next change. Bounds the cost of passes over a full cluster.
    pub max_skips_per_pass: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            heartbeat_timeout: Duration::from_secs(10),
            retention: Duration::from_secs(24 * 3600),
            preemption: PreemptionConfig::default(),
            max_skips_per_pass: 64,
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
}

/// A refused job command.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum JobError {
    /// No job has that id (it may have been purged after its retention).
    #[error("job {0} does not exist")]
    NotFound(JobId),
    /// The job already reached a terminal state.
    #[error("job {id} already finished ({state:?})")]
    AlreadyFinished {
        /// The job.
        id: JobId,
        /// Its terminal state.
        state: JobState,
    },
}

/// A refused worker command.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum WorkerError {
    /// The worker never registered (or was forgotten).
    #[error("worker {0} is not registered; register first")]
    Unknown(WorkerId),
    /// The worker missed its heartbeat; its attempts were requeued.
    #[error("worker {0} was declared lost; register again")]
    Lost(WorkerId),
    /// A registration field is out of range.
    #[error("{field}: {reason}")]
    InvalidField {
        /// The offending field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// How a submission was taken.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Submitted {
    /// A new job was created.
    Created(JobId),
    /// The idempotency key matched this existing job; nothing was created.
    Existing(JobId),
}

impl Submitted {
    /// The job's id either way.
    pub fn id(self) -> JobId {
        match self {
            Submitted::Created(id) | Submitted::Existing(id) => id,
        }
    }
}

/// Why a worker's report about an attempt was refused.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RefusalReason {
    /// No such job (purged, or never existed).
    UnknownJob,
    /// The token is not the job's current attempt on this worker.
    StaleAttempt,
}

/// A refused report.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct RefusedReport {
    /// The job named.
    pub job: JobId,
    /// The token named.
    pub token: FencingToken,
    /// Why it was refused.
    pub reason: RefusalReason,
}

/// One poll: a heartbeat, the attempts the worker still runs and those it finished.
#[derive(Clone, PartialEq, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerPoll {
    /// Attempts running on the worker now.
    #[serde(default)]
    pub running: Vec<(JobId, FencingToken)>,
    /// Attempts that ended since the last poll.
    #[serde(default)]
    pub finished: Vec<AttemptReport>,
    /// The highest answer number (see [`ResourceManager::answer_seq`]) the worker has
    /// seen. Attempts carried by later answers are not yet expected in `running`.
    /// `None`: every answer handed out is assumed seen.
    #[serde(default)]
    pub acked: Option<u64>,
}

/// What the core made of a poll.
#[derive(Clone, PartialEq, Debug, Default)]
pub struct PollOutcome {
    /// Reports that were refused (the worker drops them).
    pub refused: Vec<RefusedReport>,
    /// Reports that were accepted.
    pub accepted: usize,
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

/// A read-only view of one queue.
#[derive(Clone, Copy)]
pub struct QueueView<'a> {
    rm: &'a ResourceManager,
    node: &'a QueueNode,
}

impl<'a> QueueView<'a> {
    /// Its id.
    pub fn id(&self) -> QueueId {
        self.node.id
    }
    /// Its path.
    pub fn path(&self) -> &'a QueuePath {
        &self.node.path
    }
    /// Its settings.
    pub fn config(&self) -> &'a QueueConfig {
        &self.node.config
    }
    /// Its lifecycle state.
    pub fn state(&self) -> QueueState {
        self.node.state
    }
    /// True when it holds jobs rather than queues.
    pub fn is_leaf(&self) -> bool {
        self.node.is_leaf()
    }
    /// Its children's paths.
    pub fn children(&self) -> Vec<&'a QueuePath> {
        self.node
            .children
            .iter()
            .map(|c| &self.rm.node(*c).path)
            .collect()
    }
    /// Its guarantee as a fraction of the cluster.
    pub fn abs_guarantee(&self) -> f64 {
        self.node.abs_guarantee
    }
    /// Its ceiling as a fraction of the cluster.
    pub fn abs_max(&self) -> f64 {
        self.node.abs_max
    }
    /// Resources its subtree's attempts hold.
    pub fn used(&self) -> &'a Resources {
        &self.node.used
    }
    /// Its dominant share of the cluster.
    pub fn dominant_share(&self) -> f64 {
        self.node.used.dominant_share(&self.rm.total)
    }
    /// Attempts scheduled or running in its subtree.
    pub fn running(&self) -> u64 {
        self.node.running
    }
    /// Jobs not yet finished in its subtree.
    pub fn unfinished(&self) -> u64 {
        self.node.unfinished
    }
    /// The job this leaf dispatches next, if it has a ready one.
    pub fn next_job(&self) -> Option<JobId> {
        self.node
            .ready
            .iter_live(|k| {
                self.rm
                    .jobs
                    .get(k)
                    .is_some_and(|j| j.waiting == Waiting::Ready)
            })
            .next()
            .map(|k| self.rm.jobs[k].id)
    }

    /// Counters summed over its subtree's leaves.
    pub fn stats(&self) -> QueueStats {
        let mut sum = QueueStats::default();
        self.rm.for_each_leaf(self.node.id, &mut |leaf| {
            let s = &leaf.stats;
            sum.pending += s.pending;
            sum.submitted += s.submitted;
            sum.succeeded += s.succeeded;
            sum.failed += s.failed;
            sum.cancelled += s.cancelled;
            sum.expired += s.expired;
            for (total, part) in [(&mut sum.wait, &s.wait), (&mut sum.run, &s.run)] {
                total.count += part.count;
                total.total_ms += part.total_ms;
                total.max_ms = total.max_ms.max(part.max_ms);
            }
        });
        sum
    }
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
    /// Leaves passed over in the current pass.
    pub(crate) skipped: Vec<QueueId>,
    /// Leaves holding parked jobs.
    pub(crate) parked_leaves: BTreeSet<QueueId>,
    /// Restored attempts waiting for their worker to reclaim them, by worker.
    pub(crate) unclaimed: HashMap<WorkerId, Vec<JobKey>>,
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
            skipped: Vec::new(),
            parked_leaves: BTreeSet::new(),
            unclaimed: crate::hashing::map(seed),
        })
    }

    /// Everything the shell must do since the last call.
    pub fn take_effects(&mut self) -> Effects {
        std::mem::take(&mut self.effects)
    }

    /// The cluster-wide settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    // ----- reads -------------------------------------------------------------------

    pub(crate) fn node(&self, id: QueueId) -> &QueueNode {
        self.queues[id.0 as usize]
            .as_ref()
            .expect("queue ids held internally refer to live queues")
    }

    pub(crate) fn node_mut(&mut self, id: QueueId) -> &mut QueueNode {
        self.queues[id.0 as usize]
            .as_mut()
            .expect("queue ids held internally refer to live queues")
    }

    fn lookup_queue(&self, path: &str) -> Result<QueueId, QueueError> {
        if let Some(id) = self.queue_ids.get(path) {
            return Ok(*id);
        }
        QueuePath::parse(path)?;
        Err(QueueError::NotFound {
            path: path.to_owned(),
            known: self.known_queues(),
        })
    }

    fn known_queues(&self) -> String {
        let mut known: Vec<&str> = self.queue_ids.keys().map(QueuePath::as_str).collect();
        known.sort_unstable();
        let more = known.len().saturating_sub(8);
        known.truncate(8);
        let mut text = known.join(", ");
        if more > 0 {
            text.push_str(&format!(" and {more} more"));
        }
        text
    }

    /// The queue at `path`.
    pub fn queue(&self, path: &str) -> Result<QueueView<'_>, QueueError> {
        let id = self.lookup_queue(path)?;
        Ok(QueueView {
            rm: self,
            node: self.node(id),
        })
    }

    /// Every queue, parents before children, siblings in creation order.
    pub fn queues(&self) -> Vec<QueueView<'_>> {
        let mut out = Vec::with_capacity(self.queue_ids.len());
        let mut stack = vec![ROOT];
        while let Some(id) = stack.pop() {
            let node = self.node(id);
            out.push(QueueView { rm: self, node });
            stack.extend(node.children.iter().rev());
        }
        out
    }

    /// The path of the queue with this id, live or deleted.
    pub fn queue_path(&self, id: QueueId) -> Option<&QueuePath> {
        match self.queues.get(id.0 as usize) {
            Some(Some(node)) => Some(&node.path),
            _ => self.deleted_paths.get(&id),
        }
    }

    pub(crate) fn for_each_leaf(&self, id: QueueId, f: &mut dyn FnMut(&QueueNode)) {
        let node = self.node(id);
        if node.is_leaf() {
            f(node);
        }
        for child in &node.children {
            self.for_each_leaf(*child, f);
        }
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

    // ----- queues --------------------------------------------------------------------

    fn resolve_policies(
        &self,
        path: &QueuePath,
        config: &QueueConfig,
    ) -> Result<crate::queues::QueuePolicies, QueueError> {
        let unknown = |kind: &'static str, name: &str, known: String| QueueError::UnknownPolicy {
            path: path.clone(),
            kind,
            name: name.to_owned(),
            known,
        };
        let ordering = self
            .policies
            .ordering(&config.ordering)
            .map_err(|k| unknown("ordering", &config.ordering, k))?;
        let placement = self
            .policies
            .placement(&config.placement)
            .map_err(|k| unknown("placement", &config.placement, k))?;
        let admission = self
            .policies
            .admission(&config.admission)
            .map_err(|k| unknown("admission", &config.admission, k))?;
        Ok((ordering, placement, admission))
    }

    fn check_sibling_capacity(
        &self,
        parent: QueueId,
        changed: Option<QueueId>,
        capacity: f64,
    ) -> Result<(), QueueError> {
        let parent_node = self.node(parent);
        let replaced = changed.map_or(0.0, |c| self.node(c).config.capacity);
        let sum = parent_node.children_capacity - replaced + capacity;
        if sum > 100.0 + 1e-9 {
            return Err(QueueError::CapacityOverflow {
                parent: parent_node.path.clone(),
                sum,
            });
        }
        Ok(())
    }

    /// Creates a queue under an existing parent. A leaf parent must hold no jobs.
    pub fn create_queue(&mut self, path: &str, config: QueueConfig) -> Result<QueueId, QueueError> {
        let path = QueuePath::parse(path)?;
        if self.queue_ids.contains_key(&path) {
            return Err(QueueError::AlreadyExists(path));
        }
        let parent_path = path
            .parent()
            .ok_or(QueueError::AlreadyExists(QueuePath::root()))?;
        let parent = self.lookup_queue(parent_path.as_str())?;
        config.validate(&path)?;
        let policies = self.resolve_policies(&path, &config)?;
        let parent_node = self.node(parent);
        if parent_node.is_leaf() && parent_node.unfinished > 0 {
            return Err(QueueError::ParentHoldsJobs(parent_node.path.clone()));
        }
        self.check_sibling_capacity(parent, None, config.capacity)?;

        let id = QueueId(u32::try_from(self.queues.len()).expect("fewer than 2^32 queues"));
        let parent_node = self.node(parent);
        let mut node = QueueNode::new(id, path.clone(), Some(parent), config, policies);
        node.abs_guarantee = parent_node.abs_guarantee * node.config.capacity / 100.0;
        node.abs_max = parent_node.abs_max * node.config.max_capacity / 100.0;
        node.state = parent_node.state;
        let capacity = node.config.capacity;
        self.queues.push(Some(node));
        let parent_node = self.node_mut(parent);
        parent_node.children.push(id);
        parent_node.children_capacity += capacity;
        self.queue_ids.insert(path, id);
        self.effects.records.push(Record::Queue(id));
        Ok(id)
    }

    /// Changes a queue's settings. Guarantees and ceilings below it follow at once.
    pub fn update_queue(&mut self, path: &str, update: &QueueUpdate) -> Result<(), QueueError> {
        let id = self.lookup_queue(path)?;
        let node = self.node(id);
        if id == ROOT && (update.capacity.is_some() || update.max_capacity.is_some()) {
            return Err(QueueError::Root("given a capacity (it is always 100%)"));
        }
        let config = update.apply_to(&node.config);
        config.validate(&node.path)?;
        let (ordering, placement, admission) = self.resolve_policies(&node.path, &config)?;
        if let Some(parent) = node.parent {
            self.check_sibling_capacity(parent, Some(id), config.capacity)?;
        }
        let reorder = node.config.ordering != config.ordering;
        let capacity_change = config.capacity - node.config.capacity;
        if let Some(parent) = node.parent {
            self.node_mut(parent).children_capacity += capacity_change;
        }
        let node = self.node_mut(id);
        node.config = config;
        node.ordering = ordering;
        node.placement = placement;
        node.admission = admission;
        if reorder {
            self.rerank(id);
        }
        self.recompute_absolute(id);
        // Ceilings moved: jobs set aside as too big for them may fit now.
        self.unpark_all();
        self.keys_stale = true;
        self.dirty = true;
        self.effects.records.push(Record::Queue(id));
        Ok(())
    }

    /// Ranks a leaf's ready jobs again after its ordering policy changed.
    fn rerank(&mut self, id: QueueId) {
        let node = self.node_mut(id);
        let ordering = node.ordering.clone();
        let mut ready = std::mem::take(&mut node.ready);
        let jobs = &mut self.jobs;
        let live = ready.drain_live(|k| jobs.get(k).is_some_and(|j| j.waiting == Waiting::Ready));
        for key in live {
            let job = &mut self.jobs[key];
            job.rank = ordering.rank(&job.spec);
            ready.push_back(job.rank, key);
        }
        let parked = self.node(id).parked.clone();
        for key in parked {
            if let Some(job) = self.jobs.get_mut(key) {
                job.rank = ordering.rank(&job.spec);
            }
        }
        self.node_mut(id).ready = ready;
    }

    fn recompute_absolute(&mut self, id: QueueId) {
        let (g, m) = match self.node(id).parent {
            Some(p) => {
                let parent = self.node(p);
                let c = &self.node(id).config;
                (
                    parent.abs_guarantee * c.capacity / 100.0,
                    parent.abs_max * c.max_capacity / 100.0,
                )
            }
            None => (1.0, 1.0),
        };
        let node = self.node_mut(id);
        node.abs_guarantee = g;
        node.abs_max = m;
        for child in node.children.clone() {
            self.recompute_absolute(child);
        }
    }

    fn set_subtree_state(&mut self, id: QueueId, state: QueueState) {
        self.dirty = true;
        let node = self.node_mut(id);
        node.state = state;
        let children = node.children.clone();
        if children.is_empty() {
            self.refresh_up(id);
        }
        self.effects.records.push(Record::Queue(id));
        for child in children {
            self.set_subtree_state(child, state);
        }
    }

    /// Stops a queue and everything under it: nothing new is accepted; what it holds
    /// still runs.
    pub fn stop_queue(&mut self, path: &str) -> Result<(), QueueError> {
        let id = self.lookup_queue(path)?;
        self.set_subtree_state(id, QueueState::Stopped);
        Ok(())
    }

    /// Drains a queue and everything under it: nothing new is accepted or started;
    /// running attempts finish, pending jobs wait for `start`.
    pub fn drain_queue(&mut self, path: &str) -> Result<(), QueueError> {
        let id = self.lookup_queue(path)?;
        self.set_subtree_state(id, QueueState::Draining);
        Ok(())
    }

    /// Starts a queue and everything under it again.
    pub fn start_queue(&mut self, path: &str) -> Result<(), QueueError> {
        let id = self.lookup_queue(path)?;
        self.set_subtree_state(id, QueueState::Running);
        Ok(())
    }

    /// Deletes a queue and its subtree. With unfinished jobs this needs `force`, and
    /// then every one of them is cancelled with a reason saying so.
    pub fn delete_queue(
        &mut self,
        path: &str,
        force: bool,
        now: Timestamp,
    ) -> Result<u64, QueueError> {
        let id = self.lookup_queue(path)?;
        if id == ROOT {
            return Err(QueueError::Root("deleted"));
        }
        let node = self.node(id);
        if node.unfinished > 0 && !force {
            return Err(QueueError::HoldsJobs {
                path: node.path.clone(),
                jobs: node.unfinished,
            });
        }
        let doomed_path = node.path.clone();
        let doomed: Vec<JobKey> = self
            .jobs
            .iter()
            .filter(|(_, job)| !job.state.is_terminal())
            .filter(|(_, job)| {
                self.queue_path(job.queue)
                    .is_some_and(|p| p.is_within(&doomed_path))
            })
            .map(|(key, _)| key)
            .collect();
        let reason = format!("queue {doomed_path} was deleted");
        let cancelled = doomed.len() as u64;
        for key in doomed {
            self.cancel_key(key, &reason, now);
        }
        let parent = self.node(id).parent.expect("only root has no parent");
        self.remove_from_parent_set(id);
        let capacity = self.node(id).config.capacity;
        let parent_node = self.node_mut(parent);
        parent_node.children.retain(|c| *c != id);
        parent_node.children_capacity -= capacity;
        self.drop_subtree(id);
        self.keys_stale = true;
        self.dirty = true;
        Ok(cancelled)
    }

    fn remove_from_parent_set(&mut self, id: QueueId) {
        let node = self.node_mut(id);
        let (Some(key), Some(parent)) = (node.key_in_parent.take(), node.parent) else {
            return;
        };
        self.node_mut(parent).eligible_children.remove(&key);
        self.refresh_up(parent);
    }

    fn drop_subtree(&mut self, id: QueueId) {
        let node = self.queues[id.0 as usize]
            .take()
            .expect("queue ids held internally refer to live queues");
        for child in &node.children {
            self.drop_subtree(*child);
        }
        self.queue_ids.remove(&node.path);
        self.starved.remove(&id);
        self.effects.records.push(Record::QueueDeleted {
            id,
            path: node.path.clone(),
        });
        self.deleted_paths.insert(id, node.path);
    }

    // ----- jobs ----------------------------------------------------------------------

    fn validate_request(request: &Resources) -> Result<(), SubmitError> {
        let invalid = |reason: String| SubmitError::InvalidField {
            field: "request",
            reason,
        };
        if request.cpu.0 == 0 && request.memory.0 == 0 {
            return Err(invalid("must ask for some cpu or memory".into()));
        }
        if request.cpu > Millicores(MAX_CPU_MILLICORES) {
            return Err(invalid(format!(
                "cpu {} millicores is absurd",
                request.cpu.0
            )));
        }
        if request.memory > MiB(MAX_MEMORY_MIB) {
            return Err(invalid(format!(
                "memory {} MiB is absurd",
                request.memory.0
            )));
        }
        if request.gpu > MAX_GPUS {
            return Err(invalid(format!("{} gpus is absurd", request.gpu)));
        }
        if let Some((name, amount)) = request.customs().iter().find(|(_, a)| *a > MAX_CUSTOM) {
            return Err(invalid(format!("{amount} of {name:?} is absurd")));
        }
        Ok(())
    }

    /// Accepts a job into a leaf queue, or says precisely why not. A repeated
    /// idempotency key returns the original job and changes nothing.
    pub fn submit(&mut self, req: SubmitRequest, now: Timestamp) -> Result<Submitted, SubmitError> {
        req.validate()?;
        let queue = self.lookup_queue(&req.queue)?;
        let node = self.node(queue);
        if !node.is_leaf() {
            return Err(SubmitError::NotALeaf(req.queue));
        }
        if let Some(key) = &req.idempotency_key
            && let Some(existing) = self.idempotency.get(&(queue, key.clone()))
        {
            return Ok(Submitted::Existing(self.jobs[*existing].id));
        }
        if node.state != QueueState::Running {
            return Err(SubmitError::NotAccepting {
                path: req.queue,
                state: node.state,
            });
        }
        if self.job_ids.contains_key(&req.id) {
            return Err(SubmitError::DuplicateId(req.id));
        }
        if let Some(expires_at) = req.expires_at
            && expires_at <= now
        {
            return Err(SubmitError::InvalidField {
                field: "expires_at",
                reason: "is already in the past".into(),
            });
        }
        if let Some(max) = node.config.max_pending
            && node.stats.pending >= max
        {
            return Err(SubmitError::QueueFull {
                path: req.queue,
                pending: node.stats.pending,
                max,
            });
        }
        let (id, queue_path) = (req.id, req.queue.clone());
        let (mut spec, not_before) = req.resolve(&node.config.defaults);
        Self::validate_request(&spec.request)?;
        let constraint = self
            .index
            .constraint_for(spec.selector(), spec.kind.handler());
        match &mut spec.kind {
            // One shared copy of each handler name, however many jobs name it.
            JobKind::Function { handler, .. }
            | JobKind::Stored {
                handler: Some(handler),
            } => *handler = self.index.intern_handler(handler),
            _ => {}
        }
        let node = self.node(queue);
        let admission = AdmissionContext {
            queue: &node.path,
            stats: &node.stats,
            spec: &spec,
            now,
            candidates: Candidates {
                index: &self.index,
                workers: &self.workers,
                classes: self.index.classes_for(constraint),
            },
        };
        if let Err(reason) = node.admission.admit(&admission) {
            return Err(SubmitError::Refused {
                path: queue_path,
                policy: node.admission.name().to_owned(),
                reason,
            });
        }
        let rank = node.ordering.rank(&spec);

        let seq = self.next_seq;
        self.next_seq += 1;
        let expires_at = spec.expires_at();
        let idempotency_key = spec.idempotency_key().map(str::to_owned);
        let not_before = not_before.filter(|t| *t > now);
        let key = self.jobs.insert(Job {
            id,
            queue,
            seq,
            state: JobState::Pending,
            submitted_at: now,
            not_before,
            spec,
            attempts: Vec::new(),
            failures: 0,
            termination: None,
            finished_at: None,
            ready_since: now,
            rank,
            constraint,
            worker: None,
            worker_slot: 0,
            waiting: Waiting::Not,
            delivered_in: 0,
        });
        self.job_ids.insert(id, key);
        if let Some(k) = idempotency_key {
            self.idempotency.insert((queue, k), key);
        }
        let leaf = self.node_mut(queue);
        leaf.stats.submitted += 1;
        leaf.stats.pending += 1;
        self.add_unfinished(queue, 1);
        if let Some(at) = expires_at {
            self.timers.set(at, Timer::Expire(key));
        }
        match not_before {
            Some(at) => self.timers.set(at, Timer::Release(key)),
            None => self.make_ready(key, now, false),
        }
        self.effects.records.push(Record::Job(id));
        Ok(Submitted::Created(id))
    }

    pub(crate) fn add_unfinished(&mut self, leaf: QueueId, delta: i64) {
        let mut at = Some(leaf);
        while let Some(id) = at {
            let node = self.node_mut(id);
            node.unfinished = node.unfinished.saturating_add_signed(delta);
            at = node.parent;
        }
    }

    /// Puts a pending job into its leaf's ready queue: behind the others of its rank,
    /// or ahead of them for a job that had already been dispatched (preempted).
    pub(crate) fn make_ready(&mut self, key: JobKey, now: Timestamp, front: bool) {
        let job = &mut self.jobs[key];
        job.not_before = None;
        job.ready_since = now;
        job.waiting = Waiting::Ready;
        let (rank, queue) = (job.rank, job.queue);
        let leaf = self.node_mut(queue);
        let was_empty = leaf.ready.is_empty();
        if front {
            leaf.ready.push_front(rank, key);
        } else {
            leaf.ready.push_back(rank, key);
        }
        if was_empty {
            self.refresh_up(queue);
        }
        if was_empty || front {
            self.head_changed(queue);
        }
        self.dirty = true;
    }

    /// The next job of a leaf, if it has a ready one.
    pub(crate) fn leaf_head(&mut self, leaf: QueueId) -> Option<JobKey> {
        let jobs = &self.jobs;
        let node = self.queues[leaf.0 as usize].as_mut()?;
        node.ready
            .head(|k| jobs.get(k).is_some_and(|j| j.waiting == Waiting::Ready))
    }

    /// Cancels a job: a pending one at once; one with an attempt is killed on its
    /// worker and cancelled in the same step (a late report from it is refused).
    pub fn cancel(&mut self, id: JobId, reason: &str, now: Timestamp) -> Result<(), JobError> {
        let key = *self.job_ids.get(&id).ok_or(JobError::NotFound(id))?;
        let state = self.jobs[key].state;
        if state.is_terminal() {
            return Err(JobError::AlreadyFinished { id, state });
        }
        self.cancel_key(key, reason, now);
        Ok(())
    }

    fn cancel_key(&mut self, key: JobKey, reason: &str, now: Timestamp) {
        if self.jobs[key].state.is_active() {
            self.end_attempt(
                key,
                AttemptOutcome::Cancelled,
                Some(KillReason::Cancelled),
                now,
            );
        }
        self.terminate(
            key,
            Termination::Cancelled {
                reason: reason.to_owned(),
            },
            now,
        );
    }

    /// Moves a job that holds no attempt to a terminal state, once.
    fn terminate(&mut self, key: JobKey, termination: Termination, now: Timestamp) {
        let job = &mut self.jobs[key];
        debug_assert!(!job.state.is_terminal() && !job.state.is_active());
        let state = match &termination {
            Termination::Succeeded { .. } => JobState::Succeeded,
            Termination::Failed { .. } => JobState::Failed,
            Termination::Cancelled { .. } => JobState::Cancelled,
            Termination::Expired => JobState::Expired,
        };
        let was_pending = job.state == JobState::Pending;
        let was_ready = job.waiting == Waiting::Ready;
        job.waiting = Waiting::Not;
        job.state = state;
        job.termination = Some(Box::new(termination));
        job.finished_at = Some(now);
        job.not_before = None;
        let (id, queue) = (job.id, job.queue);
        if self
            .queues
            .get(queue.0 as usize)
            .is_some_and(Option::is_some)
        {
            let leaf = self.node_mut(queue);
            if was_pending {
                leaf.stats.pending -= 1;
                if was_ready {
                    leaf.ready.forget_one();
                    if leaf.ready.is_empty() {
                        self.refresh_up(queue);
                    }
                    // The leaf's next job may have changed to one that fits.
                    self.head_changed(queue);
                }
            }
            let stats = &mut self.node_mut(queue).stats;
            match state {
                JobState::Succeeded => stats.succeeded += 1,
                JobState::Failed => stats.failed += 1,
                JobState::Cancelled => stats.cancelled += 1,
                _ => stats.expired += 1,
            }
            self.add_unfinished(queue, -1);
        }
        self.timers
            .set(now.after(self.config.retention), Timer::Purge(key));
        self.effects.records.push(Record::Job(id));
        self.effects.finished.push(id);
    }

    /// Ends the current attempt of an active job: frees its resources, records the
    /// outcome, optionally asks its worker to kill it. The job is left `Pending`
    /// (not ready); the caller decides what comes next. An attempt not yet reclaimed
    /// after a restart holds no resources, so only its record changes.
    pub(crate) fn end_attempt(
        &mut self,
        key: JobKey,
        outcome: AttemptOutcome,
        kill: Option<KillReason>,
        now: Timestamp,
    ) {
        let job = &mut self.jobs[key];
        debug_assert!(job.state.is_active());
        let worker_key = job.worker.take();
        let attempt = job
            .attempts
            .last_mut()
            .expect("an active job has an attempt");
        attempt.finished_at = Some(now);
        let (token, scheduled_at, worker_id) =
            (attempt.token, attempt.scheduled_at, attempt.worker);
        if outcome.counts_as_failure() {
            job.failures += 1;
        }
        attempt.outcome = Some(outcome);
        job.state = JobState::Pending;
        job.delivered_in = 0;
        let (id, queue, request) = (job.id, job.queue, job.spec.request.clone());
        if let Some(reason) = kill {
            self.effects.kills.push(Kill {
                worker: worker_id,
                job: id,
                token,
                reason,
            });
        }
        if let Some(worker_key) = worker_key {
            self.release_on_worker(worker_key, key, &request);
        }
        if let Some(Some(leaf)) = self.queues.get_mut(queue.0 as usize) {
            leaf.stats.run.record(now.since(scheduled_at));
            leaf.stats.pending += 1;
            if worker_key.is_some() {
                self.release_on_path(queue, &request);
            }
        }
        self.effects.records.push(Record::Job(id));
        self.dirty = true;
    }

    fn release_on_worker(&mut self, worker_key: WorkerKey, job: JobKey, request: &Resources) {
        let slot = self.jobs[job].worker_slot as usize;
        let worker = &mut self.workers[worker_key];
        worker.attempts.swap_remove(slot);
        if let Some(moved) = worker.attempts.get(slot) {
            self.jobs[*moved].worker_slot = slot as u32;
        }
        let worker = &mut self.workers[worker_key];
        worker.used.sub(request);
        if worker.state == WorkerState::Draining {
            // A draining worker counts in the cluster only with what it still runs.
            self.total.sub(request);
            self.keys_stale = true;
        }
        if worker.indexed.is_some() {
            self.index.upsert(worker_key, worker);
        }
    }

    fn release_on_path(&mut self, leaf: QueueId, request: &Resources) {
        let node = self.node_mut(leaf);
        node.dead_attempts += 1;
        if node.dead_attempts * 2 > node.attempts.len() && node.attempts.len() >= 32 {
            self.compact_leaf_attempts(leaf);
        }
        let mut at = Some(leaf);
        while let Some(id) = at {
            let node = self.node_mut(id);
            node.used.sub(request);
            node.running -= 1;
            node.at_ceiling = false;
            at = node.parent;
        }
        self.refresh_up(leaf);
    }

    /// Drops a leaf's dead attempt entries (amortised: run when half are dead).
    fn compact_leaf_attempts(&mut self, leaf: QueueId) {
        let mut entries = std::mem::take(&mut self.node_mut(leaf).attempts);
        entries.retain(|(token, key)| {
            self.jobs
                .get(*key)
                .is_some_and(|j| j.current_token() == Some(*token))
        });
        let node = self.node_mut(leaf);
        node.attempts = entries;
        node.dead_attempts = 0;
    }

    /// Ends an attempt that failed, timed out or was lost: retried after its backoff
    /// while attempts remain, failed for good otherwise.
    fn fail_attempt(
        &mut self,
        key: JobKey,
        outcome: AttemptOutcome,
        kill: Option<KillReason>,
        now: Timestamp,
    ) {
        self.end_attempt(key, outcome.clone(), kill, now);
        let job = &self.jobs[key];
        if job.failures >= job.spec.retry.max_attempts {
            self.terminate(key, Termination::Failed { last: outcome }, now);
            return;
        }
        let jitter = unit_random(self.seed, job.seq, u64::from(job.failures));
        let wait = job.spec.retry.backoff(job.failures, jitter);
        self.requeue(key, now.after(wait), now);
    }

    /// Puts a job whose attempt ended back to pending, ready at `at`.
    fn requeue(&mut self, key: JobKey, at: Timestamp, now: Timestamp) {
        if at <= now {
            self.make_ready(key, now, false);
        } else {
            self.jobs[key].not_before = Some(at);
            self.timers.set(at, Timer::Release(key));
        }
    }

    /// Takes an attempt back for preemption: it goes back to pending, ready at once,
    /// without counting as a failure.
    pub(crate) fn preempt_attempt(&mut self, key: JobKey, now: Timestamp) {
        self.end_attempt(
            key,
            AttemptOutcome::Preempted,
            Some(KillReason::Preempted),
            now,
        );
        self.make_ready(key, now, true);
    }

    // ----- workers -------------------------------------------------------------------

    /// Registers a worker, or updates one that registers again. A worker that was
    /// lost comes back empty: its old attempts were requeued when it was lost.
    pub fn register_worker(
        &mut self,
        reg: WorkerRegistration,
        now: Timestamp,
    ) -> Result<(), WorkerError> {
        let invalid = |field: &'static str, reason: &str| WorkerError::InvalidField {
            field,
            reason: reason.to_owned(),
        };
        if reg.name.is_empty() || reg.name.len() > 256 {
            return Err(invalid("name", "must be 1 to 256 characters"));
        }
        let c = &reg.capacity;
        if c.cpu.0 == 0 && c.memory.0 == 0 {
            return Err(invalid("capacity", "must offer some cpu or memory"));
        }
        if c.cpu.0 > MAX_CPU_MILLICORES || c.memory.0 > MAX_MEMORY_MIB || c.gpu > MAX_GPUS {
            return Err(invalid("capacity", "is absurdly large"));
        }
        if !reg.serves_commands && reg.handlers.is_empty() {
            return Err(invalid(
                "handlers",
                "a worker that runs no commands must serve at least one handler",
            ));
        }
        let class = self.index.class_for(&reg);
        let deadline = now.after(self.config.heartbeat_timeout);
        let key = match self.worker_ids.get(&reg.id) {
            Some(key) => {
                let key = *key;
                let worker = &mut self.workers[key];
                self.total.sub(worker.share_of_total());
                self.index.remove(worker);
                worker.name = reg.name;
                worker.capacity = reg.capacity;
                worker.labels = reg.labels;
                worker.serves_commands = reg.serves_commands;
                worker.handlers = reg.handlers;
                worker.class = class;
                worker.state = WorkerState::Active;
                worker.registered_at = now;
                worker.heartbeat_deadline = deadline;
                // A worker that registers again counts answers afresh.
                worker.answers = 0;
                key
            }
            None => {
                let key = self.workers.insert(Worker {
                    id: reg.id,
                    name: reg.name,
                    capacity: reg.capacity,
                    used: Resources::default(),
                    labels: reg.labels,
                    serves_commands: reg.serves_commands,
                    handlers: reg.handlers,
                    state: WorkerState::Active,
                    registered_at: now,
                    heartbeat_deadline: deadline,
                    attempts: Vec::new(),
                    outbox: Vec::new(),
                    answers: 0,
                    class,
                    indexed: None,
                    heartbeat_timer: None,
                });
                self.worker_ids.insert(reg.id, key);
                key
            }
        };
        let worker = &mut self.workers[key];
        self.total.add(&worker.capacity);
        // A worker with attempts to reclaim takes no new work until its first poll
        // has said which of them it still runs.
        if !self.unclaimed.contains_key(&reg.id) {
            self.index.upsert(key, worker);
        }
        self.arm_heartbeat(key);
        self.unpark_all();
        self.effects.records.push(Record::Worker(reg.id));
        self.keys_stale = true;
        self.dirty = true;
        Ok(())
    }

    /// A new or changed worker, or a raised ceiling, may let set-aside jobs run: they
    /// go back to the front of their leaves, in the order they had.
    fn unpark_all(&mut self) {
        for leaf in std::mem::take(&mut self.parked_leaves) {
            let Some(Some(node)) = self.queues.get_mut(leaf.0 as usize) else {
                continue;
            };
            let parked = std::mem::take(&mut node.parked);
            for key in parked.into_iter().rev() {
                let Some(job) = self.jobs.get_mut(key) else {
                    continue;
                };
                if job.waiting != Waiting::Parked {
                    continue;
                }
                job.waiting = Waiting::Ready;
                let rank = job.rank;
                self.node_mut(leaf).ready.push_front(rank, key);
            }
            self.refresh_up(leaf);
            self.head_changed(leaf);
        }
    }

    fn arm_heartbeat(&mut self, key: WorkerKey) {
        let worker = &mut self.workers[key];
        if worker.heartbeat_timer.is_none() {
            worker.heartbeat_timer = Some(worker.heartbeat_deadline);
            self.timers
                .set(worker.heartbeat_deadline, Timer::Heartbeat(key));
        }
    }

    fn worker_key(&self, id: WorkerId) -> Result<WorkerKey, WorkerError> {
        let key = *self.worker_ids.get(&id).ok_or(WorkerError::Unknown(id))?;
        if self.workers[key].state == WorkerState::Lost {
            return Err(WorkerError::Lost(id));
        }
        Ok(key)
    }

    /// A worker's poll: heartbeat, finished attempts, and the attempts it runs. An
    /// attempt handed to it that it neither runs nor reports is treated as lost; one it
    /// runs that is not current is killed.
    pub fn worker_polled(
        &mut self,
        id: WorkerId,
        poll: &WorkerPoll,
        now: Timestamp,
    ) -> Result<PollOutcome, WorkerError> {
        let worker_key = self.worker_key(id)?;
        self.workers[worker_key].heartbeat_deadline = now.after(self.config.heartbeat_timeout);
        self.arm_heartbeat(worker_key);
        if self.unclaimed.contains_key(&id) {
            let listed: Vec<(JobId, FencingToken)> = poll
                .running
                .iter()
                .copied()
                .chain(poll.finished.iter().map(|r| (r.job, r.token)))
                .collect();
            self.reclaim(worker_key, &listed, now);
        }

        let mut outcome = PollOutcome::default();
        for report in &poll.finished {
            match self.current_attempt_on(worker_key, report.job, report.token) {
                Ok(key) => {
                    outcome.accepted += 1;
                    if let Some(attempt) = self.jobs[key].attempts.last_mut()
                        && attempt.started_at.is_none()
                    {
                        attempt.started_at = Some(
                            report
                                .started_at
                                .map_or(now, |t| t.max(attempt.scheduled_at).min(now)),
                        );
                    }
                    self.apply_report(key, &report.result, now);
                }
                Err(reason) => outcome.refused.push(RefusedReport {
                    job: report.job,
                    token: report.token,
                    reason,
                }),
            }
        }
        for (job, token) in &poll.running {
            match self.current_attempt_on(worker_key, *job, *token) {
                Ok(key) => {
                    let job = &mut self.jobs[key];
                    if job.state == JobState::Scheduled {
                        job.state = JobState::Running;
                        if let Some(a) = job.attempts.last_mut() {
                            a.started_at = Some(now);
                        }
                        self.effects.records.push(Record::Job(job.id));
                    }
                }
                Err(_) => self.effects.kills.push(Kill {
                    worker: id,
                    job: *job,
                    token: *token,
                    reason: KillReason::Stale,
                }),
            }
        }
        let mut reported: Vec<FencingToken> = poll
            .running
            .iter()
            .map(|(_, t)| *t)
            .chain(poll.finished.iter().map(|r| r.token))
            .collect();
        reported.sort_unstable();
        let vanished: Vec<JobKey> = self.workers[worker_key]
            .attempts
            .iter()
            .copied()
            .filter(|key| {
                let job = &self.jobs[*key];
                let token = job.current_token().expect("worker attempts are active");
                // Only an attempt carried by an answer the worker says it has seen
                // can be missing: a later answer may still be on its way to it.
                job.delivered_in != 0
                    && poll.acked.is_none_or(|seen| job.delivered_in <= seen)
                    && reported.binary_search(&token).is_err()
            })
            .collect();
        for key in vanished {
            self.fail_attempt(key, AttemptOutcome::Lost, None, now);
        }
        Ok(outcome)
    }

    fn current_attempt_on(
        &self,
        worker: WorkerKey,
        id: JobId,
        token: FencingToken,
    ) -> Result<JobKey, RefusalReason> {
        let key = *self.job_ids.get(&id).ok_or(RefusalReason::UnknownJob)?;
        let job = &self.jobs[key];
        if job.worker == Some(worker) && job.current_token() == Some(token) {
            Ok(key)
        } else {
            Err(RefusalReason::StaleAttempt)
        }
    }

    fn apply_report(&mut self, key: JobKey, result: &ReportedResult, now: Timestamp) {
        match result {
            ReportedResult::Succeeded { result, exit_code } => {
                let outcome = AttemptOutcome::Succeeded {
                    result: result.clone(),
                    exit_code: *exit_code,
                };
                self.end_attempt(key, outcome, None, now);
                self.terminate(
                    key,
                    Termination::Succeeded {
                        result: result.clone(),
                        exit_code: *exit_code,
                    },
                    now,
                );
            }
            ReportedResult::Failed { exit_code, message } => {
                let outcome = AttemptOutcome::Failed {
                    exit_code: *exit_code,
                    message: message.clone(),
                };
                self.fail_attempt(key, outcome, None, now);
            }
            ReportedResult::TimedOut => self.fail_attempt(key, AttemptOutcome::TimedOut, None, now),
        }
    }

    /// Hands over the attempts assigned to a worker since it last took them. Call
    /// only once the records of those assignments are durable.
    pub fn take_assignments(&mut self, id: WorkerId) -> Result<Vec<Assignment>, WorkerError> {
        let key = self.worker_key(id)?;
        let worker = &mut self.workers[key];
        let outbox = std::mem::take(&mut worker.outbox);
        if !outbox.is_empty() {
            worker.answers += 1;
        }
        let answer = worker.answers;
        let mut out = Vec::with_capacity(outbox.len());
        for job_key in outbox {
            let Some(job) = self.jobs.get_mut(job_key) else {
                continue;
            };
            if job.worker != Some(key) || job.delivered_in != 0 {
                continue;
            }
            job.delivered_in = answer;
            let attempt = job.attempts.last().expect("an active job has an attempt");
            out.push(Assignment {
                worker: id,
                job: job.id,
                attempt: attempt.number,
                token: attempt.token,
            });
        }
        Ok(out)
    }

    /// The number of the latest poll answer that carried assignments to this worker
    /// (0 before the first). Sent with every answer; the worker echoes the highest it
    /// has seen in `WorkerPoll::acked`.
    pub fn answer_seq(&self, id: WorkerId) -> u64 {
        self.worker(id).map_or(0, |w| w.answers)
    }

    /// Takes a worker out of scheduling: it finishes what it runs and gets nothing new.
    pub fn drain_worker(&mut self, id: WorkerId) -> Result<(), WorkerError> {
        let key = self.worker_key(id)?;
        let worker = &mut self.workers[key];
        if worker.state == WorkerState::Active {
            self.total.sub(&worker.capacity);
            worker.state = WorkerState::Draining;
            self.total.add(worker.share_of_total());
            self.index.remove(worker);
            // Shares change, and jobs only this worker could run must be set aside.
            self.keys_stale = true;
            self.dirty = true;
            self.effects.records.push(Record::Worker(id));
        }
        Ok(())
    }

    fn lose_worker(&mut self, key: WorkerKey, now: Timestamp) {
        let worker = &mut self.workers[key];
        self.total.sub(worker.share_of_total());
        worker.state = WorkerState::Lost;
        worker.outbox.clear();
        self.index.remove(worker);
        let id = worker.id;
        let attempts: Vec<JobKey> = worker.attempts.clone();
        for job in attempts {
            self.fail_attempt(job, AttemptOutcome::Lost, None, now);
        }
        self.keys_stale = true;
        self.dirty = true;
        self.effects.records.push(Record::Worker(id));
    }

    // ----- time ----------------------------------------------------------------------

    /// Fires every timer due at `now`: delayed jobs become ready, expired ones expire,
    /// attempts past their timeout are killed, silent workers are lost, finished jobs
    /// past retention are purged, and due preemption makes the next pass act.
    pub fn tick(&mut self, now: Timestamp) {
        while let Some((at, timer)) = self.timers.pop_due(now) {
            match timer {
                Timer::Release(key) => {
                    let Some(job) = self.jobs.get(key) else {
                        continue;
                    };
                    if job.state == JobState::Pending && job.not_before.is_some_and(|t| t <= now) {
                        self.make_ready(key, now, false);
                    }
                }
                Timer::Expire(key) => {
                    let Some(job) = self.jobs.get(key) else {
                        continue;
                    };
                    if job.state == JobState::Pending
                        && job.spec.expires_at().is_some_and(|t| t <= now)
                    {
                        self.terminate(key, Termination::Expired, now);
                    }
                }
                Timer::AttemptTimeout(key, token) => {
                    let Some(job) = self.jobs.get(key) else {
                        continue;
                    };
                    if job.current_token() == Some(token) {
                        self.fail_attempt(
                            key,
                            AttemptOutcome::TimedOut,
                            Some(KillReason::TimedOut),
                            now,
                        );
                    }
                }
                Timer::Heartbeat(key) => {
                    let Some(worker) = self.workers.get_mut(key) else {
                        continue;
                    };
                    worker.heartbeat_timer = None;
                    if worker.state == WorkerState::Lost {
                        continue;
                    }
                    if worker.heartbeat_deadline <= now {
                        self.lose_worker(key, now);
                    } else {
                        self.arm_heartbeat(key);
                    }
                }
                Timer::Purge(key) => {
                    let Some(job) = self.jobs.get(key) else {
                        continue;
                    };
                    if job
                        .finished_at
                        .is_some_and(|f| f.after(self.config.retention) <= now)
                    {
                        self.purge(key);
                    }
                }
                Timer::Reclaim(key, token) => self.reclaim_expired(key, token, now),
                Timer::PreemptionDue => {
                    let _ = at;
                    self.dirty = true;
                }
            }
        }
    }

    fn purge(&mut self, key: JobKey) {
        let job = self.jobs.remove(key).expect("purged jobs exist");
        self.job_ids.remove(&job.id);
        if let Some(k) = job.spec.idempotency_key() {
            self.idempotency.remove(&(job.queue, k.to_owned()));
        }
        self.effects.records.push(Record::JobPurged(job.id));
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
