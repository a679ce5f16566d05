//! The plugin interface. Each step of the allocation algorithm that a cluster may
//! want to change is a trait; the built-in behaviour is a set of ordinary
//! implementations registered by name, so a custom policy plugs in exactly where a
//! built-in does. Policies are pure functions of what they are shown: they decide,
//! the core applies and enforces its invariants whatever a policy returns.

// The autoscaling trait lives with the pools it decides for (`autoscale`); the registry
// only holds it by name like the others.
use crate::autoscale::{AutoscalingPolicy, TargetBacklog};
use crate::hashing::HashMap;
use crate::ids::ConstraintId;
use crate::ids::{FencingToken, QueueId, Timestamp};
use crate::ids::{JobKey, WorkerKey};
use crate::jobs::JobSpec;
use crate::queues::{QueuePath, QueueStats};
use crate::resources::Resources;
use crate::workers::Candidates;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

// The names of the policies a queue gets unless it names others live with the queue
// settings that default to them.
pub use crate::queues::{ACCEPT_ALL, BEST_FIT, PRIORITY_FIFO};

/// Built-in ordering: first come first served, ignoring priority.
pub const FIFO: &str = "fifo";
/// Built-in ordering: smallest dominant request first (more jobs done sooner).
pub const SMALLEST_FIRST: &str = "smallest-first";
/// Built-in placement: the fitting worker with the most free resources.
pub const SPREAD: &str = "spread";
/// Built-in admission: refuse jobs no registered worker could ever run.
pub const REQUIRE_CAPABLE_WORKER: &str = "require-capable-worker";
/// Built-in preemption: newest attempts of the queues furthest over their guarantee.
pub const NEWEST_OVER_GUARANTEE: &str = "newest-over-guarantee";

/// Orders the pending jobs of a leaf queue.
pub trait OrderingPolicy: Send + Sync + fmt::Debug {
    /// The name queues select it by.
    fn name(&self) -> &str;
    /// The job's rank, computed once when it enters the queue: lower ranks are
    /// dispatched first, equal ranks in submission order.
    fn rank(&self, spec: &JobSpec) -> i64;
}

/// Chooses the worker for a job among those that accept it.
pub trait PlacementPolicy: Send + Sync + fmt::Debug {
    /// The name queues select it by.
    fn name(&self) -> &str;
    /// A worker from `candidates` whose free resources fit `request`, or `None` to
    /// leave the job pending. Returning a worker that does not fit is refused by the core.
    fn place(&self, request: &Resources, candidates: &Candidates<'_>) -> Option<WorkerKey>;
}

/// What an admission policy sees of a submission.
pub struct AdmissionContext<'a> {
    /// The leaf queue.
    pub queue: &'a QueuePath,
    /// Its counters.
    pub stats: &'a QueueStats,
    /// The job, with the queue's defaults applied.
    pub spec: &'a JobSpec,
    /// The time of the submission.
    pub now: Timestamp,
    /// Workers that accept this kind of job and take work.
    pub candidates: Candidates<'a>,
}

/// Accepts or refuses a submission before anything is stored.
pub trait AdmissionPolicy: Send + Sync + fmt::Debug {
    /// The name queues select it by.
    fn name(&self) -> &str;
    /// `Err(reason)` refuses the job; the client sees the reason.
    fn admit(&self, ctx: &AdmissionContext<'_>) -> Result<(), String>;
}

/// What a starved queue needs.
#[derive(Clone, Debug)]
pub struct PreemptionRequest {
    /// The leaf below its guarantee whose demand waited past the delay.
    pub starved: QueueId,
    /// Resources that would bring it to its guarantee (or serve all its demand).
    pub need: Resources,
    /// The constraint of its next job: victims on workers that cannot run it free nothing useful.
    pub constraint: ConstraintId,
    /// Its next job's request: victims on workers too small to hold it free nothing
    /// useful either.
    pub next_request: Resources,
    /// Fraction of a guarantee treated as noise, so rounding never triggers preemption.
    pub dead_zone: f64,
}

/// A running attempt that preemption could take back.
#[derive(Clone, Debug)]
pub struct Victim {
    /// The job whose attempt is taken.
    pub job: JobKey,
    /// The attempt's token.
    pub token: FencingToken,
}

/// Chooses which running attempts to take back for a starved queue.
pub trait PreemptionPolicy: Send + Sync + fmt::Debug {
    /// The name the cluster selects it by.
    fn name(&self) -> &str;
    /// Candidates in order of preference. The core takes them in this order, skips any
    /// whose removal would put a queue at or below its guarantee or that sit in a queue
    /// that opted out, and stops once `request.need` is freed.
    fn select_victims(&self, request: &PreemptionRequest, view: &PreemptionView<'_>)
    -> Vec<Victim>;
}

/// A running attempt as preemption sees it.
#[derive(Clone, Debug)]
pub struct RunningAttempt {
    /// The job.
    pub job: JobKey,
    /// The attempt's token.
    pub token: FencingToken,
    /// The worker running it.
    pub worker: WorkerKey,
}

/// The state a [`PreemptionView`] shows, provided by the ResourceManager. A trait so
/// that this module, below the ResourceManager, never needs to name it.
pub(crate) trait PreemptionFacts {
    fn total(&self) -> &Resources;
    fn leaves_with_attempts(&self) -> Vec<QueueId>;
    fn used(&self, queue: QueueId) -> &Resources;
    fn abs_guarantee(&self, queue: QueueId) -> f64;
    fn parent(&self, queue: QueueId) -> Option<QueueId>;
    fn preemptable(&self, queue: QueueId) -> bool;
    fn attempts_newest_first(&self, leaf: QueueId)
    -> Box<dyn Iterator<Item = RunningAttempt> + '_>;
    fn request_of(&self, job: JobKey) -> &Resources;
    fn worker_free(&self, worker: WorkerKey) -> Resources;
    fn worker_could_run(
        &self,
        worker: WorkerKey,
        constraint: ConstraintId,
        request: &Resources,
    ) -> bool;
}

/// What a preemption policy may look at: queues, their usage and guarantees, and
/// their running attempts.
pub struct PreemptionView<'a> {
    facts: &'a dyn PreemptionFacts,
}

impl<'a> PreemptionView<'a> {
    pub(crate) fn new(facts: &'a dyn PreemptionFacts) -> Self {
        Self { facts }
    }

    /// Capacity of the workers that take work.
    pub fn total(&self) -> &Resources {
        self.facts.total()
    }

    /// Leaves that hold at least one attempt, in id order.
    pub fn leaves_with_attempts(&self) -> Vec<QueueId> {
        self.facts.leaves_with_attempts()
    }

    /// Resources held by a queue's subtree.
    pub fn used(&self, queue: QueueId) -> &Resources {
        self.facts.used(queue)
    }

    /// A queue's guarantee as a fraction of the cluster.
    pub fn abs_guarantee(&self, queue: QueueId) -> f64 {
        self.facts.abs_guarantee(queue)
    }

    /// A queue's parent.
    pub fn parent(&self, queue: QueueId) -> Option<QueueId> {
        self.facts.parent(queue)
    }

    /// Whether the queue and every ancestor allow preemption.
    pub fn preemptable(&self, queue: QueueId) -> bool {
        self.facts.preemptable(queue)
    }

    /// A leaf's attempts, newest first.
    pub fn attempts_newest_first(
        &self,
        leaf: QueueId,
    ) -> impl Iterator<Item = RunningAttempt> + '_ {
        self.facts.attempts_newest_first(leaf)
    }

    /// The resources a job's attempt holds.
    pub fn request_of(&self, job: JobKey) -> &Resources {
        self.facts.request_of(job)
    }

    /// What a worker has free now: its capacity less what its attempts hold.
    pub fn worker_free(&self, worker: WorkerKey) -> Resources {
        self.facts.worker_free(worker)
    }

    /// Whether the worker takes work and could run the starved queue's next job once
    /// room is freed on it: it accepts the job's constraint and its capacity holds it.
    pub fn worker_could_run(&self, worker: WorkerKey, request: &PreemptionRequest) -> bool {
        self.facts
            .worker_could_run(worker, request.constraint, &request.next_request)
    }
}

/// Higher priority first, then FIFO.
#[derive(Debug, Default)]
pub struct PriorityFifo;
impl OrderingPolicy for PriorityFifo {
    fn name(&self) -> &str {
        PRIORITY_FIFO
    }
    fn rank(&self, spec: &JobSpec) -> i64 {
        -i64::from(spec.priority)
    }
}

/// Pure FIFO.
#[derive(Debug, Default)]
pub struct Fifo;
impl OrderingPolicy for Fifo {
    fn name(&self) -> &str {
        FIFO
    }
    fn rank(&self, _spec: &JobSpec) -> i64 {
        0
    }
}

/// Smallest request first (by cpu, then memory), FIFO among equals.
#[derive(Debug, Default)]
pub struct SmallestFirst;
impl OrderingPolicy for SmallestFirst {
    fn name(&self) -> &str {
        SMALLEST_FIRST
    }
    fn rank(&self, spec: &JobSpec) -> i64 {
        let cpu = spec.request.cpu.0.min(1 << 30) as i64;
        let mem = spec.request.memory.0.min(1 << 30) as i64;
        (cpu << 31) | mem
    }
}

/// Best fit: the fitting worker with the least free cpu, then memory.
#[derive(Debug, Default)]
pub struct BestFit;
impl PlacementPolicy for BestFit {
    fn name(&self) -> &str {
        BEST_FIT
    }
    fn place(&self, request: &Resources, candidates: &Candidates<'_>) -> Option<WorkerKey> {
        candidates.smallest_fitting(request)
    }
}

/// Spread: the fitting worker with the most free cpu, then memory.
#[derive(Debug, Default)]
pub struct Spread;
impl PlacementPolicy for Spread {
    fn name(&self) -> &str {
        SPREAD
    }
    fn place(&self, request: &Resources, candidates: &Candidates<'_>) -> Option<WorkerKey> {
        candidates.largest_fitting(request)
    }
}

/// Accepts every valid submission.
#[derive(Debug, Default)]
pub struct AcceptAll;
impl AdmissionPolicy for AcceptAll {
    fn name(&self) -> &str {
        ACCEPT_ALL
    }
    fn admit(&self, _ctx: &AdmissionContext<'_>) -> Result<(), String> {
        Ok(())
    }
}

/// Refuses a job that no worker taking work could run even when idle, as YARN
/// refuses a request above its maximum allocation.
#[derive(Debug, Default)]
pub struct RequireCapableWorker;
impl AdmissionPolicy for RequireCapableWorker {
    fn name(&self) -> &str {
        REQUIRE_CAPABLE_WORKER
    }
    fn admit(&self, ctx: &AdmissionContext<'_>) -> Result<(), String> {
        if ctx.candidates.any_capable(&ctx.spec.request) {
            return Ok(());
        }
        Err(format!(
            "no worker that accepts this job offers {} even when idle",
            ctx.spec.request
        ))
    }
}

/// Takes the newest attempts of the leaves furthest over their guarantee first,
/// re-ranking the leaves after every pick, until the need is covered and some worker
/// would hold the starved queue's next job (room freed across workers may cover the
/// need and hold the job nowhere).
#[derive(Debug, Default)]
pub struct NewestOverGuarantee;
impl PreemptionPolicy for NewestOverGuarantee {
    fn name(&self) -> &str {
        NEWEST_OVER_GUARANTEE
    }

    fn select_victims(
        &self,
        request: &PreemptionRequest,
        view: &PreemptionView<'_>,
    ) -> Vec<Victim> {
        let total = view.total();
        let over_limit = 1.0 + request.dead_zone;
        // Simulated usage of each candidate leaf as victims are picked.
        let mut used: BTreeMap<QueueId, Resources> = BTreeMap::new();
        let mut cursors: BTreeMap<QueueId, Vec<(Victim, WorkerKey)>> = BTreeMap::new();
        for leaf in view.leaves_with_attempts() {
            if leaf == request.starved || !view.preemptable(leaf) {
                continue;
            }
            let guarantee = view.abs_guarantee(leaf);
            if guarantee > 0.0 && view.used(leaf).dominant_share(total) / guarantee <= over_limit {
                continue;
            }
            used.insert(leaf, view.used(leaf).clone());
            let mut newest_first: Vec<(Victim, WorkerKey)> = view
                .attempts_newest_first(leaf)
                .filter(|a| view.worker_could_run(a.worker, request))
                .map(|a| {
                    let victim = Victim {
                        job: a.job,
                        token: a.token,
                    };
                    (victim, a.worker)
                })
                .collect();
            newest_first.reverse(); // pop() now yields the newest
            cursors.insert(leaf, newest_first);
        }
        let ratio = |leaf: QueueId, used: &Resources| {
            let g = view.abs_guarantee(leaf);
            let share = used.dominant_share(total);
            match (g > 0.0, share > 0.0) {
                (true, _) => share / g,
                (false, true) => f64::INFINITY,
                (false, false) => 0.0,
            }
        };
        let mut freed = Resources::default();
        let mut room: BTreeMap<WorkerKey, Resources> = BTreeMap::new();
        let mut some_worker_holds = false;
        let mut victims = Vec::new();
        while !(request.need.fits_in(&freed) && some_worker_holds) {
            let Some((leaf, _)) = used
                .iter()
                .filter(|(leaf, _)| cursors.get(leaf).is_some_and(|c| !c.is_empty()))
                .map(|(leaf, u)| (*leaf, ratio(*leaf, u)))
                // The dead zone decides who is a candidate at all; once chosen, a
                // queue gives back down to its guarantee (the core stops it there).
                .filter(|(_, r)| *r > 1.0)
                .max_by(|a, b| a.1.total_cmp(&b.1))
            else {
                break;
            };
            let Some((victim, worker)) = cursors.get_mut(&leaf).and_then(Vec::pop) else {
                break;
            };
            let request_of = view.request_of(victim.job);
            if let Some(u) = used.get_mut(&leaf) {
                u.sub(request_of);
            }
            freed.add(request_of);
            let on_worker = room
                .entry(worker)
                .or_insert_with(|| view.worker_free(worker));
            on_worker.add(request_of);
            some_worker_holds |= request.next_request.fits_in(on_worker);
            victims.push(victim);
        }
        victims
    }
}

/// The policies a cluster knows, by name. Starts with the built-ins; register your own
/// before building the ResourceManager.
#[derive(Clone)]
pub struct Policies {
    ordering: HashMap<String, Arc<dyn OrderingPolicy>>,
    placement: HashMap<String, Arc<dyn PlacementPolicy>>,
    admission: HashMap<String, Arc<dyn AdmissionPolicy>>,
    preemption: HashMap<String, Arc<dyn PreemptionPolicy>>,
    autoscaling: HashMap<String, Arc<dyn AutoscalingPolicy>>,
}

impl fmt::Debug for Policies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policies")
            .field("ordering", &names(&self.ordering))
            .field("placement", &names(&self.placement))
            .field("admission", &names(&self.admission))
            .field("preemption", &names(&self.preemption))
            .field("autoscaling", &names(&self.autoscaling))
            .finish()
    }
}

fn names<T: ?Sized>(map: &HashMap<String, Arc<T>>) -> String {
    let mut names: Vec<&str> = map.keys().map(String::as_str).collect();
    names.sort_unstable();
    names.join(", ")
}

impl Default for Policies {
    fn default() -> Self {
        let mut p = Self {
            ordering: crate::hashing::map(0),
            placement: crate::hashing::map(0),
            admission: crate::hashing::map(0),
            preemption: crate::hashing::map(0),
            autoscaling: crate::hashing::map(0),
        };
        p.register_ordering(Arc::new(PriorityFifo));
        p.register_ordering(Arc::new(Fifo));
        p.register_ordering(Arc::new(SmallestFirst));
        p.register_placement(Arc::new(BestFit));
        p.register_placement(Arc::new(Spread));
        p.register_admission(Arc::new(AcceptAll));
        p.register_admission(Arc::new(RequireCapableWorker));
        p.register_preemption(Arc::new(NewestOverGuarantee));
        p.register_autoscaling(Arc::new(TargetBacklog));
        p
    }
}

impl Policies {
    /// Adds (or replaces) an ordering policy under its name.
    pub fn register_ordering(&mut self, policy: Arc<dyn OrderingPolicy>) {
        self.ordering.insert(policy.name().to_owned(), policy);
    }
    /// Adds (or replaces) a placement policy under its name.
    pub fn register_placement(&mut self, policy: Arc<dyn PlacementPolicy>) {
        self.placement.insert(policy.name().to_owned(), policy);
    }
    /// Adds (or replaces) an admission policy under its name.
    pub fn register_admission(&mut self, policy: Arc<dyn AdmissionPolicy>) {
        self.admission.insert(policy.name().to_owned(), policy);
    }
    /// Adds (or replaces) a preemption policy under its name.
    pub fn register_preemption(&mut self, policy: Arc<dyn PreemptionPolicy>) {
        self.preemption.insert(policy.name().to_owned(), policy);
    }

    /// Adds (or replaces) an autoscaling policy under its name; pools select it by
    /// [`PoolSpec::policy`](crate::autoscale::PoolSpec::policy).
    pub fn register_autoscaling(&mut self, policy: Arc<dyn AutoscalingPolicy>) {
        self.autoscaling.insert(policy.name().to_owned(), policy);
    }

    /// The autoscaling policy registered under `name`, or the registered names (sorted,
    /// comma-separated) for a message when there is none.
    pub fn autoscaling(&self, name: &str) -> Result<Arc<dyn AutoscalingPolicy>, String> {
        self.autoscaling
            .get(name)
            .cloned()
            .ok_or_else(|| names(&self.autoscaling))
    }

    pub(crate) fn ordering(&self, name: &str) -> Result<Arc<dyn OrderingPolicy>, String> {
        self.ordering
            .get(name)
            .cloned()
            .ok_or_else(|| names(&self.ordering))
    }
    pub(crate) fn placement(&self, name: &str) -> Result<Arc<dyn PlacementPolicy>, String> {
        self.placement
            .get(name)
            .cloned()
            .ok_or_else(|| names(&self.placement))
    }
    pub(crate) fn admission(&self, name: &str) -> Result<Arc<dyn AdmissionPolicy>, String> {
        self.admission
            .get(name)
            .cloned()
            .ok_or_else(|| names(&self.admission))
    }
    pub(crate) fn preemption(&self, name: &str) -> Result<Arc<dyn PreemptionPolicy>, String> {
        self.preemption
            .get(name)
            .cloned()
            .ok_or_else(|| names(&self.preemption))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::{JobKind, SubmitRequest};
    use crate::queues::JobDefaults;

    fn spec(priority: i32, cores: u64) -> JobSpec {
        let mut req = SubmitRequest::new(
            crate::ids::JobId(uuid::Uuid::nil()),
            "root.q",
            JobKind::function("h", serde_json::Value::Null),
        );
        req.priority = Some(priority);
        req.request = Some(Resources::cores(cores, 10));
        req.resolve(&JobDefaults::default()).0
    }

    #[test]
    fn builtin_orderings_rank_as_documented() {
        assert!(PriorityFifo.rank(&spec(5, 1)) < PriorityFifo.rank(&spec(1, 1)));
        assert_eq!(Fifo.rank(&spec(5, 1)), Fifo.rank(&spec(-5, 9)));
        assert!(SmallestFirst.rank(&spec(0, 1)) < SmallestFirst.rank(&spec(0, 2)));
    }

    #[test]
    fn registry_lists_known_names_when_one_is_missing() {
        let policies = Policies::default();
        assert_eq!(
            policies.placement("nearest").expect_err("unknown"),
            "best-fit, spread"
        );
        assert!(policies.admission(REQUIRE_CAPABLE_WORKER).is_ok());
    }
}
