//! The cluster side of the ResourceManager: workers, their resources, and the index
//! that finds a worker for a job in logarithmic time.

use crate::hashing::HashMap;
use crate::ids::JobKey;
use crate::ids::{Timestamp, WorkerId};
use crate::queues::QueuePath;
use crate::resources::Resources;
use serde::{Deserialize, Serialize};
use slotmap::SlotMap;
use std::collections::{BTreeMap, BTreeSet};

pub use crate::ids::{ConstraintId, WorkerKey};

/// The handler name that lets a worker serve every function.
pub const ANY_HANDLER: &str = "*";

/// What a worker says about itself when it registers.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerRegistration {
    /// Its id.
    pub id: WorkerId,
    /// A name for people (`gpu-node-7`).
    pub name: String,
    /// What it offers.
    pub capacity: Resources,
    /// Labels jobs can select on.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Whether it runs command jobs.
    #[serde(default = "yes")]
    pub serves_commands: bool,
    /// Function handlers it runs; `*` means all.
    #[serde(default)]
    pub handlers: BTreeSet<String>,
    /// The queues whose jobs it runs, each with the queues under it (Celery's
    /// `worker -Q`); empty means every queue.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub queues: BTreeSet<QueuePath>,
}

fn yes() -> bool {
    true
}

/// Whether a worker takes new work.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    /// Takes new work.
    Active,
    /// Takes nothing new; finishes what it runs.
    Draining,
    /// Missed its heartbeat; its attempts were requeued. It must register again.
    Lost,
}

/// A worker as the core holds it.
#[derive(Clone, Debug)]
pub struct Worker {
    /// Its id.
    pub id: WorkerId,
    /// Its name.
    pub name: String,
    /// What it offers in all.
    pub capacity: Resources,
    /// What its attempts hold.
    pub used: Resources,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Whether it runs commands.
    pub serves_commands: bool,
    /// The handlers it runs.
    pub handlers: BTreeSet<String>,
    /// The queues it serves (with those under them); empty: all.
    pub queues: BTreeSet<QueuePath>,
    /// Whether it takes work.
    pub state: WorkerState,
    /// When it registered (last).
    pub registered_at: Timestamp,
    /// The number of its latest registration, drawn from the fencing-token counter so
    /// that it only grows, across restarts and leaders. A poll naming another number
    /// was sent for an earlier registration and is refused.
    pub registration: u64,
    /// It is lost if it has not polled by then.
    pub heartbeat_deadline: Timestamp,
    /// Since when it has held no attempt; `None` while it holds one. The autoscaler
    /// drains only workers idle long enough, idlest first.
    pub idle_since: Option<Timestamp>,
    /// Jobs whose current attempt it holds; each job knows its position here.
    pub(crate) attempts: Vec<JobKey>,
    /// Attempts assigned but not yet handed over in a poll answer.
    pub(crate) outbox: Vec<JobKey>,
    /// Poll answers that carried assignments, counted from its registration.
    pub(crate) answers: u64,
    pub(crate) class: ClassId,
    /// Its key in its class's free-resource index while it takes work.
    pub(crate) indexed: Option<FreeKey>,
    /// Deadline the pending heartbeat timer was set for.
    pub(crate) heartbeat_timer: Option<Timestamp>,
    /// Since when its `acked` has stayed below this answer number (see
    /// `ResourceManager::redeliver_unacknowledged`).
    pub(crate) behind: Option<(u64, Timestamp)>,
    /// It has not polled again in time (see [`QUIET_GRACE`](crate::QUIET_GRACE)): it
    /// gets no new attempts until it does, though it is not yet declared lost.
    pub quiet: bool,
    /// It is quiet if it has not polled by then.
    pub(crate) quiet_deadline: Timestamp,
    /// Deadline the pending quiet timer was set for.
    pub(crate) quiet_timer: Option<Timestamp>,
}

impl Worker {
    /// What is left for new attempts.
    pub fn free(&self) -> Resources {
        self.capacity.minus(&self.used)
    }

    /// What it contributes to the cluster's total: all of it while active, what it
    /// still runs while draining, nothing once lost.
    pub fn share_of_total(&self) -> &Resources {
        static NOTHING: Resources =
            Resources::new(crate::resources::Millicores(0), crate::resources::MiB(0), 0);
        match self.state {
            WorkerState::Active => &self.capacity,
            WorkerState::Draining => &self.used,
            WorkerState::Lost => &NOTHING,
        }
    }

    /// How many attempts it holds.
    pub fn attempt_count(&self) -> usize {
        self.attempts.len()
    }
}

/// Identifies a group of workers that accept the same jobs (same labels and kinds).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct ClassId(pub(crate) u32);

#[derive(Clone, PartialEq, Eq, Hash, Debug)]
struct ClassSignature {
    labels: BTreeMap<String, String>,
    serves_commands: bool,
    handlers: BTreeSet<String>,
    queues: BTreeSet<QueuePath>,
}

impl ClassSignature {
    fn accepts(&self, constraint: &ConstraintSignature) -> bool {
        let kind_ok = match &constraint.handler {
            None => self.serves_commands,
            Some(h) => self.handlers.contains(h) || self.handlers.contains(ANY_HANDLER),
        };
        kind_ok
            && (self.queues.is_empty() || self.queues.iter().any(|q| constraint.queue.is_within(q)))
            && constraint
                .selector
                .iter()
                .all(|(k, v)| self.labels.get(k) == Some(v))
    }
}

/// What a job needs of a worker: labels, a kind it runs, and its queue served. Jobs
/// of different queues have different constraints even when every worker serves all
/// queues: which classes accept a constraint is worked out when either appears.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
struct ConstraintSignature {
    selector: BTreeMap<String, String>,
    handler: Option<String>,
    queue: QueuePath,
}

/// A worker's position in its class's index: ordered by free cpu, then memory, then gpus.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub(crate) struct FreeKey {
    cpu: u64,
    memory: u64,
    gpu: u32,
    worker: WorkerKey,
}

impl FreeKey {
    fn of(key: WorkerKey, free: &Resources) -> Self {
        Self {
            cpu: free.cpu.0,
            memory: free.memory.0,
            gpu: free.gpu,
            worker: key,
        }
    }
}

#[derive(Debug)]
struct WorkerClass {
    signature: ClassSignature,
    free: BTreeSet<FreeKey>,
}

#[derive(Debug)]
struct Constraint {
    signature: ConstraintSignature,
    classes: Vec<ClassId>,
}

/// Workers that take work, grouped into classes and ordered by free resources, plus
/// the interned job constraints and which classes satisfy each.
#[derive(Debug)]
pub struct WorkerIndex {
    classes: Vec<WorkerClass>,
    class_ids: HashMap<ClassSignature, ClassId>,
    constraints: Vec<Constraint>,
    /// Fast path for the common constraint: no selector, keyed by queue, then by
    /// handler ("" = command).
    plain_constraints: HashMap<QueuePath, HashMap<String, ConstraintId>>,
    constraint_ids: HashMap<ConstraintSignature, ConstraintId>,
    /// One shared copy of every handler name jobs have used.
    handler_names: std::collections::HashSet<std::sync::Arc<str>, foldhash::quality::FixedState>,
    /// The seed of the index's maps.
    seed: u64,
}

impl WorkerIndex {
    pub(crate) fn new(seed: u64) -> Self {
        Self {
            classes: Vec::new(),
            class_ids: crate::hashing::map(seed),
            constraints: Vec::new(),
            plain_constraints: crate::hashing::map(seed),
            constraint_ids: crate::hashing::map(seed),
            handler_names: std::collections::HashSet::with_hasher(
                foldhash::quality::FixedState::with_seed(seed),
            ),
            seed,
        }
    }

    /// The class for a worker's labels and kinds, created on first sight.
    pub(crate) fn class_for(&mut self, registration: &WorkerRegistration) -> ClassId {
        let signature = ClassSignature {
            labels: registration.labels.clone(),
            serves_commands: registration.serves_commands,
            handlers: registration.handlers.clone(),
            queues: registration.queues.clone(),
        };
        if let Some(id) = self.class_ids.get(&signature) {
            return *id;
        }
        let id =
            ClassId(u32::try_from(self.classes.len()).expect("fewer than 2^32 worker classes"));
        for constraint in &mut self.constraints {
            if signature.accepts(&constraint.signature) {
                constraint.classes.push(id);
            }
        }
        self.class_ids.insert(signature.clone(), id);
        self.classes.push(WorkerClass {
            signature,
            free: BTreeSet::new(),
        });
        id
    }

    /// The interned constraint of a job of `queue` with this selector and handler
    /// (`None`: command).
    pub(crate) fn constraint_for(
        &mut self,
        selector: &BTreeMap<String, String>,
        handler: Option<&str>,
        queue: &QueuePath,
    ) -> ConstraintId {
        if selector.is_empty()
            && let Some(id) = self
                .plain_constraints
                .get(queue)
                .and_then(|by_handler| by_handler.get(handler.unwrap_or("")))
        {
            return *id;
        }
        let signature = ConstraintSignature {
            selector: selector.clone(),
            handler: handler.map(str::to_owned),
            queue: queue.clone(),
        };
        if let Some(id) = self.constraint_ids.get(&signature) {
            return *id;
        }
        let id = ConstraintId(
            u32::try_from(self.constraints.len()).expect("fewer than 2^32 constraints"),
        );
        let classes = self
            .classes
            .iter()
            .enumerate()
            .filter(|(_, c)| c.signature.accepts(&signature))
            .map(|(i, _)| ClassId(i as u32))
            .collect();
        if selector.is_empty() {
            let seed = self.seed;
            self.plain_constraints
                .entry(queue.clone())
                .or_insert_with(|| crate::hashing::map(seed))
                .insert(handler.unwrap_or("").to_owned(), id);
        }
        self.constraint_ids.insert(signature.clone(), id);
        self.constraints.push(Constraint { signature, classes });
        id
    }

    /// The shared copy of a handler name.
    pub(crate) fn intern_handler(&mut self, name: &str) -> std::sync::Arc<str> {
        if let Some(shared) = self.handler_names.get(name) {
            return shared.clone();
        }
        let shared: std::sync::Arc<str> = name.into();
        self.handler_names.insert(shared.clone());
        shared
    }

    /// Whether workers of `class` accept jobs with `constraint`.
    pub(crate) fn class_accepts(&self, class: ClassId, constraint: ConstraintId) -> bool {
        self.constraints[constraint.0 as usize]
            .classes
            .contains(&class)
    }

    /// The classes whose workers accept jobs with `constraint`.
    pub(crate) fn classes_for(&self, constraint: ConstraintId) -> &[ClassId] {
        &self.constraints[constraint.0 as usize].classes
    }

    /// Puts a worker in (or moves it within) its class's index.
    pub(crate) fn upsert(&mut self, key: WorkerKey, worker: &mut Worker) {
        self.remove(worker);
        let entry = FreeKey::of(key, &worker.free());
        self.classes[worker.class.0 as usize].free.insert(entry);
        worker.indexed = Some(entry);
    }

    /// Takes a worker out of the index (it takes no work).
    pub(crate) fn remove(&mut self, worker: &mut Worker) {
        if let Some(entry) = worker.indexed.take() {
            self.classes[worker.class.0 as usize].free.remove(&entry);
        }
    }
}

/// The workers a placement policy may choose from for one job: those of the classes
/// that accept it and take work. Every query returns only workers whose free
/// resources fit the request.
pub struct Candidates<'a> {
    pub(crate) index: &'a WorkerIndex,
    pub(crate) workers: &'a SlotMap<WorkerKey, Worker>,
    pub(crate) classes: &'a [ClassId],
}

impl<'a> Candidates<'a> {
    fn fits(&self, entry: &FreeKey, request: &Resources) -> bool {
        if entry.cpu < request.cpu.0 || entry.memory < request.memory.0 || entry.gpu < request.gpu {
            return false;
        }
        if request.customs().is_empty() {
            return true;
        }
        let worker = &self.workers[entry.worker];
        request.fits_in(&worker.free())
    }

    /// The fitting worker with the least free cpu (then memory): best fit, packs tightly.
    pub fn smallest_fitting(&self, request: &Resources) -> Option<WorkerKey> {
        let from = FreeKey {
            cpu: request.cpu.0,
            memory: 0,
            gpu: 0,
            worker: WorkerKey::default(),
        };
        self.classes
            .iter()
            .filter_map(|class| {
                self.index.classes[class.0 as usize]
                    .free
                    .range(from..)
                    .find(|entry| self.fits(entry, request))
            })
            .min()
            .map(|entry| entry.worker)
    }

    /// The fitting worker with the most free cpu (then memory): spreads load.
    pub fn largest_fitting(&self, request: &Resources) -> Option<WorkerKey> {
        self.classes
            .iter()
            .filter_map(|class| {
                self.index.classes[class.0 as usize]
                    .free
                    .iter()
                    .rev()
                    .take_while(|entry| entry.cpu >= request.cpu.0)
                    .find(|entry| self.fits(entry, request))
            })
            .max()
            .map(|entry| entry.worker)
    }

    /// True when some candidate could run `request` once idle (its capacity fits).
    pub fn any_capable(&self, request: &Resources) -> bool {
        self.classes.iter().any(|class| {
            self.index.classes[class.0 as usize]
                .free
                .iter()
                .any(|entry| request.fits_in(&self.workers[entry.worker].capacity))
        })
    }

    /// Every candidate whose free resources fit `request`, least free cpu first.
    pub fn fitting(
        &self,
        request: &'a Resources,
    ) -> impl Iterator<Item = (WorkerKey, &'a Worker)> + '_ {
        self.classes.iter().flat_map(move |class| {
            self.index.classes[class.0 as usize]
                .free
                .iter()
                .filter(move |entry| self.fits(entry, request))
                .map(|entry| (entry.worker, &self.workers[entry.worker]))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::WorkerId;

    fn registration(
        labels: &[(&str, &str)],
        commands: bool,
        handlers: &[&str],
    ) -> WorkerRegistration {
        WorkerRegistration {
            id: WorkerId(uuid::Uuid::nil()),
            name: "w".into(),
            capacity: Resources::cores(4, 4096),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            serves_commands: commands,
            queues: Default::default(),
            handlers: handlers.iter().map(|h| h.to_string()).collect(),
        }
    }

    fn worker(index: &mut WorkerIndex, reg: &WorkerRegistration, used: Resources) -> Worker {
        Worker {
            id: reg.id,
            name: reg.name.clone(),
            capacity: reg.capacity.clone(),
            used,
            labels: reg.labels.clone(),
            serves_commands: reg.serves_commands,
            handlers: reg.handlers.clone(),
            queues: reg.queues.clone(),
            state: WorkerState::Active,
            registered_at: Timestamp(0),
            registration: 0,
            heartbeat_deadline: Timestamp(0),
            idle_since: None,
            attempts: Vec::new(),
            outbox: Vec::new(),
            answers: 0,
            class: index.class_for(reg),
            indexed: None,
            heartbeat_timer: None,
            behind: None,
            quiet: false,
            quiet_deadline: Timestamp(0),
            quiet_timer: None,
        }
    }

    #[test]
    fn constraints_match_classes_by_labels_and_kind() {
        let mut index = WorkerIndex::new(1);
        let gpu = index.class_for(&registration(&[("gpu", "a100")], true, &[]));
        let fns = index.class_for(&registration(&[], false, &["billing.invoice"]));
        let any = index.class_for(&registration(&[], false, &[ANY_HANDLER]));
        let no_labels = BTreeMap::new();
        let queue = QueuePath::parse("root.q").expect("a valid path");
        let want_gpu: BTreeMap<String, String> = [("gpu".to_string(), "a100".to_string())].into();
        let command = index.constraint_for(&no_labels, None, &queue);
        let gpu_command = index.constraint_for(&want_gpu, None, &queue);
        let invoice = index.constraint_for(&no_labels, Some("billing.invoice"), &queue);
        let other = index.constraint_for(&no_labels, Some("other"), &queue);
        assert_eq!(index.classes_for(command), &[gpu]);
        assert_eq!(index.classes_for(gpu_command), &[gpu]);
        assert_eq!(index.classes_for(invoice), &[fns, any]);
        assert_eq!(index.classes_for(other), &[any]);
        // Interning: the same constraint twice is one id.
        assert_eq!(index.constraint_for(&want_gpu, None, &queue), gpu_command);
        // A class created later joins the constraints it satisfies.
        let late = index.class_for(&registration(&[("gpu", "a100"), ("zone", "b")], true, &[]));
        assert_eq!(index.classes_for(gpu_command), &[gpu, late]);
    }

    #[test]
    fn a_class_given_queues_accepts_their_subtrees_only() {
        let mut index = WorkerIndex::new(1);
        let mut eng = registration(&[], true, &[]);
        eng.queues = [QueuePath::parse("root.eng").expect("a valid path")].into();
        let eng = index.class_for(&eng);
        let all = index.class_for(&registration(&[], true, &[]));
        let no_labels = BTreeMap::new();
        let mut classes_of = |path: &str| {
            let queue = QueuePath::parse(path).expect("a valid path");
            let constraint = index.constraint_for(&no_labels, None, &queue);
            index.classes_for(constraint).to_vec()
        };
        assert_eq!(classes_of("root.eng"), vec![eng, all]);
        assert_eq!(classes_of("root.eng.ml"), vec![eng, all]);
        assert_eq!(
            classes_of("root.engineering"),
            vec![all],
            "a prefix is not a parent"
        );
        assert_eq!(classes_of("root.ops"), vec![all]);
    }

    #[test]
    fn best_fit_and_spread_choose_opposite_ends() {
        let mut index = WorkerIndex::new(1);
        let mut workers: SlotMap<WorkerKey, Worker> = SlotMap::with_key();
        let reg = registration(&[], true, &[]);
        let mut keys = Vec::new();
        for used_cores in [3, 0, 2] {
            let w = worker(&mut index, &reg, Resources::cores(used_cores, 0));
            let key = workers.insert(w);
            index.upsert(key, &mut workers[key]);
            keys.push(key);
        }
        let command = index.constraint_for(&BTreeMap::new(), None, &QueuePath::root());
        let candidates = Candidates {
            index: &index,
            workers: &workers,
            classes: index.classes_for(command),
        };
        let one = Resources::cores(1, 100);
        assert_eq!(
            candidates.smallest_fitting(&one),
            Some(keys[0]),
            "1 core free: tightest"
        );
        assert_eq!(
            candidates.largest_fitting(&one),
            Some(keys[1]),
            "4 cores free: roomiest"
        );
        let three = Resources::cores(3, 100);
        assert_eq!(candidates.smallest_fitting(&three), Some(keys[1]));
        assert_eq!(candidates.smallest_fitting(&Resources::cores(5, 1)), None);
        assert!(candidates.any_capable(&Resources::cores(4, 4096)));
        assert!(!candidates.any_capable(&Resources::cores(4, 4097)));
        assert_eq!(candidates.fitting(&three).count(), 1);
    }
}
