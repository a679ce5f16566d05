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
    /// Paths of its children, in order (shared between views until the shape changes).
    pub children: Arc<Vec<String>>,
    /// Until when a rate limit held its next job back, as of the last change to the
    /// queue (a reader compares it with the time).
    pub rate_limited_until: Option<lqsm_core::Timestamp>,
    /// A leaf with a fairness key: the values of it holding most here, largest first.
    pub users: Vec<lqsm_core::UserShareView>,
    /// Created on demand from its parent's template.
    pub on_demand: bool,
    /// Created on demand and holding nothing: since when (it is removed once idle for
    /// the template's idle time).
    pub idle_since: Option<lqsm_core::Timestamp>,
    /// Why its settings differ from what was asked.
    pub note: Option<String>,
    /// A leaf's right-sizing figures by job name.
    pub usage: Vec<lqsm_core::NameUsage>,
}

/// The most values of a fairness key a queue's view lists.
const USERS_SHOWN: usize = 20;

/// The values of `view`'s fairness key holding most, for its snapshot.
fn top_users(view: &lqsm_core::QueueView<'_>) -> Vec<lqsm_core::UserShareView> {
    let mut users = view.users();
    users.truncate(USERS_SHOWN);
    users
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
    /// The queues it serves (with those under them); empty: all.
    pub queues: Vec<String>,
    /// Its latest registration's number.
    pub registration: u64,
    /// It has not polled again in time: it gets no new attempts until it does.
    pub quiet: bool,
}

/// Queues, workers and capacity as of one commit: immutable once published.
#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    /// Every queue, by path (so a subtree is a contiguous range of paths).
    pub queues: imbl::OrdMap<String, Arc<QueueSnapshot>>,
    /// Queues created on demand and removed once idle, by path, for the retention.
    pub retired: imbl::OrdMap<String, Arc<lqsm_core::RetiredQueue>>,
    /// Every worker, by name then id.
    pub workers: Arc<Vec<WorkerSnapshot>>,
    /// The resources all workers offer.
    pub total: Resources,
    /// The number of jobs the scheduler holds (unfinished, and finished within retention).
    pub jobs_held: usize,
    /// How long a worker may go without polling before its attempts are lost (a setting
    /// of the server, fixed while it runs).
    pub heartbeat_timeout_ms: u64,
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
        for (path, retired) in rm.retired_queues() {
            current
                .retired
                .insert(path.to_string(), Arc::new(retired.clone()));
        }
        current.workers = Arc::new(workers(rm));
        current.total = rm.total().clone();
        current.jobs_held = rm.job_count();
        current.heartbeat_timeout_ms = rm.config().heartbeat_timeout.as_millis() as u64;
        published.set(Arc::new(current.clone()));
        Self { current, published }
    }

    /// Rebuilds what a committed batch changed and publishes the result (nothing is
    /// published when nothing changed).
    ///
    /// A parent's counters are sums over its leaves and its children a list: recounting
    /// either for `root` of 100,000 queues on every commit would cost milliseconds. So a
    /// changed leaf's counters are applied to its ancestors as a difference, and a
    /// parent's list of children is kept until the tree's shape changes; only a change of
    /// shape (a queue created or deleted, a guarantee changed) recounts, along the path
    /// from that queue to the root.
    pub fn update(&mut self, rm: &ResourceManager, effects: &Effects) {
        // Queues whose own figures changed (a leaf's counters, a queue's settings or state).
        let mut touched: BTreeSet<String> = BTreeSet::new();
        // Queues to rebuild whole, counters summed and children listed.
        let mut recount: BTreeSet<String> = BTreeSet::new();
        let mut removed: Vec<String> = Vec::new();
        let mut workers_changed = false;
        let mut purged = false;
        let mut retired_changed = false;
        let mut job_queues: BTreeSet<QueueId> = BTreeSet::new();
        for record in &effects.records {
            match record {
                Record::Job(id) => {
                    workers_changed = true;
                    if let Some(job) = rm.job(*id) {
                        job_queues.insert(job.queue);
                    }
                }
                Record::JobPurged { .. } => purged = true,
                Record::Queue(id) => {
                    let Some(path) = rm.queue_path(*id) else {
                        continue;
                    };
                    let path = path.to_string();
                    let Ok(view) = rm.queue(&path) else { continue };
                    match self.current.queues.get(&path) {
                        None => {
                            recount.insert(path.clone());
                            recount.extend(ancestors(&path));
                        }
                        // A new guarantee or maximum changes the absolute shares of
                        // everything below.
                        Some(old)
                            if old.config.capacity != view.config().capacity
                                || old.config.max_capacity != view.config().max_capacity =>
                        {
                            let mut stack = vec![path.clone()];
                            while let Some(at) = stack.pop() {
                                if let Ok(q) = rm.queue(&at) {
                                    stack.extend(q.children().iter().map(|p| p.to_string()));
                                }
                                recount.insert(at);
                            }
                            recount.extend(ancestors(&path));
                        }
                        Some(_) => {
                            touched.insert(path);
                        }
                    }
                }
                Record::QueueDeleted { path, .. } => {
                    let path = path.to_string();
                    recount.extend(ancestors(&path));
                    removed.push(path);
                }
                Record::QueueRetired(path) => {
                    let key = path.to_string();
                    match rm.retired_queue(&key) {
                        Some(retired) => {
                            self.current.retired.insert(key, Arc::new(retired.clone()));
                        }
                        None => {
                            self.current.retired.remove(&key);
                        }
                    }
                    retired_changed = true;
                }
                Record::Worker(_) => workers_changed = true,
                Record::Schedule(_) | Record::ScheduleDeleted(_) | Record::Broadcast(_) => {}
            }
        }
        for id in job_queues {
            if let Some(path) = rm.queue_path(id) {
                touched.insert(path.to_string());
            }
        }
        let total_changed = rm.total() != &self.current.total;
        if touched.is_empty()
            && recount.is_empty()
            && removed.is_empty()
            && !retired_changed
            && !workers_changed
            && !total_changed
            && !purged
        {
            return;
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
        }
        // Each touched queue: its own figures now; its counters' change goes up the tree.
        let mut deltas: BTreeMap<String, StatsDelta> = BTreeMap::new();
        for path in &touched {
            if recount.contains(path) {
                continue;
            }
            let Ok(view) = rm.queue(path) else {
                self.current.queues.remove(path);
                continue;
            };
            let Some(old) = self.current.queues.get(path).cloned() else {
                recount.insert(path.clone());
                continue;
            };
            let fresh = if view.is_leaf() {
                let fresh = QueueSnapshot {
                    stats: view.stats(),
                    ..own_figures(rm, path, &old)
                };
                let delta = StatsDelta::between(&old.stats, &fresh.stats);
                for ancestor in ancestors(path) {
                    deltas.entry(ancestor).or_default().add(&delta);
                }
                fresh
            } else {
                own_figures(rm, path, &old)
            };
            self.current.queues.insert(path.clone(), Arc::new(fresh));
        }
        for (path, delta) in deltas {
            if recount.contains(&path) {
                continue;
            }
            let Some(old) = self.current.queues.get(&path).cloned() else {
                recount.insert(path);
                continue;
            };
            let mut fresh = own_figures(rm, &path, &old);
            delta.apply(&mut fresh.stats);
            self.current.queues.insert(path, Arc::new(fresh));
        }
        for path in recount {
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

/// The paths above `path`, nearest first (`root.a.b` → `root.a`, `root`).
fn ancestors(path: &str) -> impl Iterator<Item = String> + '_ {
    let mut at = path;
    std::iter::from_fn(move || {
        let dot = at.rfind('.')?;
        at = &at[..dot];
        Some(at.to_owned())
    })
}

/// A queue's own figures from the core (each O(1)), keeping its counters and children
/// from `old`.
fn own_figures(rm: &ResourceManager, path: &str, old: &QueueSnapshot) -> QueueSnapshot {
    let Ok(view) = rm.queue(path) else {
        return old.clone();
    };
    QueueSnapshot {
        path: old.path.clone(),
        state: view.state(),
        config: view.config().clone(),
        abs_guarantee: view.abs_guarantee(),
        abs_max: view.abs_max(),
        used: view.used().clone(),
        running: view.running(),
        stats: old.stats,
        children: old.children.clone(),
        rate_limited_until: view.rate_limited_until(),
        users: top_users(&view),
        on_demand: view.on_demand(),
        idle_since: view.idle_since(),
        note: view.note().map(str::to_owned),
        usage: view.usage(),
    }
}

/// The change of a leaf's counters, applied to its ancestors' sums. Counts are applied
/// modulo 2^64, which is exact since every sum stays in range; maxima only grow.
#[derive(Debug, Default, Clone, Copy)]
struct StatsDelta {
    counts: [u64; 6],
    wait: [u64; 2],
    run: [u64; 2],
    wait_max: u64,
    run_max: u64,
}

impl StatsDelta {
    fn between(old: &QueueStats, new: &QueueStats) -> Self {
        let counts = |s: &QueueStats| {
            [
                s.pending,
                s.submitted,
                s.succeeded,
                s.failed,
                s.cancelled,
                s.expired,
            ]
        };
        let (o, n) = (counts(old), counts(new));
        let mut delta = StatsDelta {
            wait: [
                new.wait.count.wrapping_sub(old.wait.count),
                new.wait.total_ms.wrapping_sub(old.wait.total_ms),
            ],
            run: [
                new.run.count.wrapping_sub(old.run.count),
                new.run.total_ms.wrapping_sub(old.run.total_ms),
            ],
            wait_max: new.wait.max_ms,
            run_max: new.run.max_ms,
            ..StatsDelta::default()
        };
        for (i, d) in delta.counts.iter_mut().enumerate() {
            *d = n[i].wrapping_sub(o[i]);
        }
        delta
    }

    fn add(&mut self, other: &StatsDelta) {
        for (a, b) in self.counts.iter_mut().zip(other.counts) {
            *a = a.wrapping_add(b);
        }
        for (a, b) in self.wait.iter_mut().zip(other.wait) {
            *a = a.wrapping_add(b);
        }
        for (a, b) in self.run.iter_mut().zip(other.run) {
            *a = a.wrapping_add(b);
        }
        self.wait_max = self.wait_max.max(other.wait_max);
        self.run_max = self.run_max.max(other.run_max);
    }

    fn apply(&self, stats: &mut QueueStats) {
        for (field, d) in [
            &mut stats.pending,
            &mut stats.submitted,
            &mut stats.succeeded,
            &mut stats.failed,
            &mut stats.cancelled,
            &mut stats.expired,
        ]
        .into_iter()
        .zip(self.counts)
        {
            *field = field.wrapping_add(d);
        }
        stats.wait.count = stats.wait.count.wrapping_add(self.wait[0]);
        stats.wait.total_ms = stats.wait.total_ms.wrapping_add(self.wait[1]);
        stats.run.count = stats.run.count.wrapping_add(self.run[0]);
        stats.run.total_ms = stats.run.total_ms.wrapping_add(self.run[1]);
        stats.wait.max_ms = stats.wait.max_ms.max(self.wait_max);
        stats.run.max_ms = stats.run.max_ms.max(self.run_max);
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
            children: Arc::default(),
            rate_limited_until: None,
            users: Vec::new(),
            on_demand: false,
            idle_since: None,
            note: None,
            usage: Vec::new(),
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
        children: Arc::new(view.children().iter().map(|p| p.to_string()).collect()),
        rate_limited_until: view.rate_limited_until(),
        users: top_users(&view),
        on_demand: view.on_demand(),
        idle_since: view.idle_since(),
        note: view.note().map(str::to_owned),
        usage: view.usage(),
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
            queues: w.queues.iter().map(|q| q.as_str().to_owned()).collect(),
            registration: w.registration,
            quiet: w.quiet,
        })
        .collect();
    all.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use lqsm_core::{JobId, SubmitRequest, Timestamp};

    /// What a reader sees of a queue, for comparing an incremental view with a full one.
    fn figures(view: &ClusterView) -> Vec<String> {
        view.queues
            .values()
            .map(|q| {
                format!(
                    "{} {:?} {:?} {} {:?} {:?} {} {}",
                    q.path,
                    q.state,
                    q.stats,
                    q.running,
                    q.used,
                    q.children,
                    q.abs_guarantee,
                    q.abs_max
                )
            })
            .collect()
    }

    #[test]
    fn the_incremental_view_equals_one_built_from_scratch_after_every_commit() {
        let mut rm = ResourceManager::new(
            lqsm_core::Config::default(),
            lqsm_core::Policies::default(),
            7,
        )
        .expect("valid");
        let published = Published::default();
        let mut builder = ViewBuilder::new(&rm, published.clone());
        let mut check = |rm: &mut ResourceManager, step: &str| {
            let effects = rm.take_effects();
            builder.update(rm, &effects);
            let fresh = ViewBuilder::new(rm, Published::default());
            assert_eq!(
                figures(&published.latest()),
                figures(&fresh.current),
                "after {step}"
            );
        };
        let config = |c| lqsm_core::QueueConfig::with_capacity(c, 100.0);
        rm.create_queue("root.a", config(50.0)).expect("created");
        rm.create_queue("root.a.x", config(50.0)).expect("created");
        rm.create_queue("root.a.y", config(50.0)).expect("created");
        rm.create_queue("root.b", config(50.0)).expect("created");
        check(&mut rm, "creating queues");
        let mut ids = Vec::new();
        for (i, queue) in ["root.a.x", "root.a.y", "root.b", "root.a.x"]
            .iter()
            .enumerate()
        {
            let id = JobId(uuid::Uuid::now_v7());
            let job = SubmitRequest::function(id, queue, "h", serde_json::json!({}));
            rm.submit(job, Timestamp(1_000 + i as u64))
                .expect("accepted");
            ids.push(id);
            check(&mut rm, "a submission");
        }
        rm.cancel(ids[0], "test", Timestamp(2_000))
            .expect("cancelled");
        check(&mut rm, "a cancel");
        let update = lqsm_core::QueueUpdate {
            capacity: Some(20.0),
            ..lqsm_core::QueueUpdate::default()
        };
        rm.update_queue("root.a", &update).expect("updated");
        check(&mut rm, "a new guarantee");
        rm.stop_queue("root.b").expect("stopped");
        check(&mut rm, "a stop");
        rm.create_queue("root.a.z", config(0.0)).expect("created");
        check(&mut rm, "a queue under a parent with jobs");
        rm.delete_queue("root.a.y", true, Timestamp(3_000))
            .expect("deleted");
        check(&mut rm, "a deletion");
        rm.tick(Timestamp(4_000));
        check(&mut rm, "a tick");
    }
}
