//! The read side of the scheduler's state: an immutable view of queues, workers and
//! capacity that the actor publishes after each commit, so that reads never run on the
//! scheduler's thread.
//!
//! Queues are held in a persistent ordered map (structural sharing): publishing a new
//! view clones the map in O(1) and rebuilds only the queues a batch touched, so the cost
//! follows what changed, not the size of the tree (100,000 queues cost nothing when one
//! job moves).

use lqsm_core::{
    Effects, QueueConfig, QueueId, QueueState, QueueStats, Record, ResourceManager, Resources,
    WorkerId, WorkerState,
};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};

/// One queue as of the last commit.
#[derive(Debug, Clone)]
pub struct QueueSnapshot {
    /// Its path, e.g. `root.etl`.
    pub path: String,
    /// Running, stopped or draining.
    pub state: QueueState,
    /// Its settings.
    pub config: QueueConfig,
    /// Its guaranteed share of the cluster (0..=1).
    pub abs_guarantee: f64,
    /// Its maximal share of the cluster (0..=1).
    pub abs_max: f64,
    /// Resources its running attempts hold.
    pub used: Resources,
    /// Attempts running in it (and below).
    pub running: u64,
    /// Counters (sums over the leaves for a parent).
    pub stats: QueueStats,
    /// Paths of its children, in order.
    pub children: Vec<String>,
}

/// One worker as of the last commit.
#[derive(Debug, Clone)]
pub struct WorkerSnapshot {
    /// Its id.
    pub id: WorkerId,
    /// Its name.
    pub name: String,
    /// Active, draining, …
    pub state: WorkerState,
    /// What it offers.
    pub capacity: Resources,
    /// What its attempts hold.
    pub used: Resources,
    /// Attempts it runs.
    pub attempts: usize,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
}

/// Queues, workers and capacity as of one commit: immutable once published.
#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    /// Every queue, by path (so a subtree is a contiguous range of paths).
    pub queues: imbl::OrdMap<String, Arc<QueueSnapshot>>,
    /// Every worker, by name then id.
    pub workers: Arc<Vec<WorkerSnapshot>>,
    /// The resources all workers offer.
    pub total: Resources,
    /// The number of jobs the scheduler holds (unfinished, and finished within retention).
    pub jobs_held: usize,
}

impl ClusterView {
    /// The queue at `path`.
    pub fn queue(&self, path: &str) -> Option<&Arc<QueueSnapshot>> {
        self.queues.get(path)
    }

    /// The queues of the subtree at `path` (itself first), in path order.
    pub fn subtree<'a>(&'a self, path: &'a str) -> impl Iterator<Item = &'a Arc<QueueSnapshot>> {
        self.queues
            .range(path.to_owned()..)
            .take_while(move |(p, _)| is_within(p, path))
            .map(|(_, q)| q)
    }
}

/// Whether `path` is `ancestor` or below it.
pub fn is_within(path: &str, ancestor: &str) -> bool {
    path == ancestor
        || (path.len() > ancestor.len()
            && path.starts_with(ancestor)
            && path.as_bytes()[ancestor.len()] == b'.')
}

/// Where the actor publishes views and readers take the latest.
#[derive(Debug, Clone, Default)]
pub struct Published(Arc<RwLock<Arc<ClusterView>>>);

impl Published {
    /// The latest view (a reference count, the lock held for nanoseconds).
    pub fn latest(&self) -> Arc<ClusterView> {
        match self.0.read() {
            Ok(view) => view.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn set(&self, view: Arc<ClusterView>) {
        match self.0.write() {
            Ok(mut slot) => *slot = view,
            Err(poisoned) => *poisoned.into_inner() = view,
        }
    }
}

/// Builds views on the actor's thread: the whole view once, then only what changed.
pub struct ViewBuilder {
    current: ClusterView,
    published: Published,
}

impl ViewBuilder {
    /// Builds the first view from the whole state and publishes it.
    pub fn new(rm: &ResourceManager, published: Published) -> Self {
        let mut current = ClusterView::default();
        for view in rm.queues() {
            current
                .queues
                .insert(view.path().to_string(), Arc::new(snapshot(rm, view.id())));
        }
        current.workers = Arc::new(workers(rm));
        current.total = rm.total().clone();
        current.jobs_held = rm.job_count();
        published.set(Arc::new(current.clone()));
        Self { current, published }
    }

    /// Rebuilds what a committed batch changed and publishes the result (nothing is
    /// published when nothing changed).
    pub fn update(&mut self, rm: &ResourceManager, effects: &Effects) {
        let mut dirty: BTreeSet<String> = BTreeSet::new();
        let mut subtrees: BTreeSet<String> = BTreeSet::new();
        let mut removed: Vec<String> = Vec::new();
        let mut workers_changed = false;
        let mut purged = false;
        let mut dirty_ids: BTreeSet<QueueId> = BTreeSet::new();
        for record in &effects.records {
            match record {
                Record::Job(id) => {
                    workers_changed = true;
                    if let Some(job) = rm.job(*id) {
                        dirty_ids.insert(job.queue);
                    }
                }
                Record::JobPurged(_) => purged = true,
                Record::Queue(id) => {
                    let Some(path) = rm.queue_path(*id) else {
                        continue;
                    };
                    let path = path.to_string();
                    let Ok(view) = rm.queue(&path) else { continue };
                    // A new guarantee or maximum changes the absolute shares of
                    // everything below; anything else only this queue and its parents.
                    let reshaped = self.current.queues.get(&path).is_none_or(|old| {
                        old.config.capacity != view.config().capacity
                            || old.config.max_capacity != view.config().max_capacity
                    });
                    if reshaped && !view.is_leaf() {
                        subtrees.insert(path);
                    } else {
                        dirty_ids.insert(*id);
                    }
                }
                Record::QueueDeleted { path, .. } => removed.push(path.to_string()),
                Record::Worker(_) => workers_changed = true,
            }
        }
        let total_changed = rm.total() != &self.current.total;
        if dirty_ids.is_empty()
            && subtrees.is_empty()
            && removed.is_empty()
            && !workers_changed
            && !total_changed
            && !purged
        {
            return;
        }
        for id in dirty_ids {
            if let Some(path) = rm.queue_path(id) {
                dirty.insert(path.to_string());
            }
        }
        for root in &subtrees {
            dirty.insert(root.clone());
            if let Ok(view) = rm.queue(root) {
                let mut stack: Vec<String> =
                    view.children().iter().map(|p| p.to_string()).collect();
                while let Some(path) = stack.pop() {
                    if let Ok(child) = rm.queue(&path) {
                        stack.extend(child.children().iter().map(|p| p.to_string()));
                    }
                    dirty.insert(path);
                }
            }
        }
        for path in &removed {
            let below: Vec<String> = self
                .current
                .queues
                .range(path.clone()..)
                .take_while(|(p, _)| is_within(p, path))
                .map(|(p, _)| p.clone())
                .collect();
            for p in below {
                self.current.queues.remove(&p);
            }
            dirty.insert(path.clone());
        }
        // Parents sum their leaves and list their children: refresh every ancestor.
        let touched: Vec<String> = dirty.iter().cloned().collect();
        for path in touched {
            let mut at = path.as_str();
            while let Some(dot) = at.rfind('.') {
                at = &at[..dot];
                if !dirty.insert(at.to_owned()) {
                    break;
                }
            }
        }
        for path in dirty {
            match rm.queue(&path) {
                Ok(view) => {
                    self.current
                        .queues
                        .insert(path, Arc::new(snapshot(rm, view.id())));
                }
                Err(_) => {
                    self.current.queues.remove(&path);
                }
            }
        }
        self.current.jobs_held = rm.job_count();
        if workers_changed {
            self.current.workers = Arc::new(workers(rm));
        }
        if total_changed {
            self.current.total = rm.total().clone();
        }
        self.published.set(Arc::new(self.current.clone()));
    }
}

fn snapshot(rm: &ResourceManager, id: QueueId) -> QueueSnapshot {
    let path = rm.queue_path(id).map(|p| p.to_string()).unwrap_or_default();
    let Ok(view) = rm.queue(&path) else {
        return QueueSnapshot {
            path,
            state: QueueState::Stopped,
            config: QueueConfig::default(),
            abs_guarantee: 0.0,
            abs_max: 0.0,
            used: Resources::default(),
            running: 0,
            stats: QueueStats::default(),
            children: Vec::new(),
        };
    };
    QueueSnapshot {
        path,
        state: view.state(),
        config: view.config().clone(),
        abs_guarantee: view.abs_guarantee(),
        abs_max: view.abs_max(),
        used: view.used().clone(),
        running: view.running(),
        stats: view.stats(),
        children: view.children().iter().map(|p| p.to_string()).collect(),
    }
}

fn workers(rm: &ResourceManager) -> Vec<WorkerSnapshot> {
    let mut all: Vec<WorkerSnapshot> = rm
        .workers()
        .map(|w| WorkerSnapshot {
            id: w.id,
            name: w.name.clone(),
            state: w.state,
            capacity: w.capacity.clone(),
            used: w.used.clone(),
            attempts: w.attempt_count(),
            labels: w.labels.clone(),
        })
        .collect();
    all.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
    all
}
