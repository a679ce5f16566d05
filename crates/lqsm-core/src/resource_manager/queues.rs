//! The QueuesManager: the queue tree, each queue's settings, lifecycle and runtime
//! bookkeeping, and read-only views of it.

pub(crate) use super::ready::ReadyQueue;
use super::{ROOT, ResourceManager};
use crate::effects::Record;
use crate::ids::{JobId, QueueId, Timestamp};
use crate::jobs::JobKey;
use crate::jobs::Waiting;
use crate::queues::{QueueConfig, QueueError, QueuePath, QueueState, QueueStats, QueueUpdate};
use crate::resources::Resources;
use std::collections::BTreeSet;
use std::sync::Arc;

/// Key of a queue in its parent's selection set: ordered so that the first entry is
/// the child to serve next (lowest dominant share ÷ guarantee, then highest weight).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub(crate) struct SelectionKey {
    /// 0 for children with a guarantee, 1 for those without (served only after).
    pub class: u8,
    /// `f64::to_bits` of a non-negative ratio, which orders like the float.
    pub ratio_bits: u64,
    /// `u32::MAX - weight`, so a higher weight sorts first.
    pub inverse_weight: u32,
    /// The child itself; makes keys unique.
    pub queue: QueueId,
}

/// A queue's ordering, placement and admission policies, looked up by name.
pub(crate) type QueuePolicies = (
    Arc<dyn crate::policy::OrderingPolicy>,
    Arc<dyn crate::policy::PlacementPolicy>,
    Arc<dyn crate::policy::AdmissionPolicy>,
);

/// One node of the queue tree, with the scheduler's bookkeeping beside the config.
#[derive(Debug)]
pub(crate) struct QueueNode {
    pub id: QueueId,
    pub path: QueuePath,
    pub parent: Option<QueueId>,
    pub children: Vec<QueueId>,
    /// Sum of the children's `capacity`, kept so adding a child is O(1).
    pub children_capacity: f64,
    pub config: QueueConfig,
    pub state: QueueState,
    /// Guarantee as a fraction of the whole cluster (product down the path).
    pub abs_guarantee: f64,
    /// Ceiling as a fraction of the whole cluster.
    pub abs_max: f64,
    /// Resources held by attempts in this subtree.
    pub used: Resources,
    /// Attempts scheduled or running in this subtree.
    pub running: u64,
    /// Unfinished jobs in this subtree (pending, delayed, scheduled, running).
    pub unfinished: u64,
    /// Created on demand from its parent's template: removed once idle.
    pub on_demand: bool,
    /// Leaf created on demand: since when it has held no unfinished job.
    pub idle_since: Option<Timestamp>,
    /// Why its settings differ from what was asked (a template's guarantee that did
    /// not fit).
    pub note: Option<String>,
    /// Leaf: what its attempts used, by job name (handler or program).
    pub usage: std::collections::BTreeMap<Arc<str>, crate::usage::UsageStats>,
    pub stats: QueueStats,
    /// Leaf: jobs ready to be scheduled, in dispatch order.
    pub ready: ReadyQueue,
    /// Leaf: ready jobs that no worker could run even when idle (or that alone exceed
    /// a ceiling), set aside so they do not block the queue, in their former order.
    /// Put back when a worker registers or a ceiling changes. Dropped lazily.
    pub parked: Vec<JobKey>,
    /// Leaf: attempts holding resources in the order they were made (tokens grow, so
    /// newest last). Ended attempts are dropped lazily: an entry is live only while
    /// its token is its job's current one.
    pub attempts: Vec<(crate::ids::FencingToken, JobKey)>,
    /// Leaf: entries of `attempts` known to be dead.
    pub dead_attempts: usize,
    /// Internal node: children that can take work now, best first.
    pub eligible_children: BTreeSet<SelectionKey>,
    /// This node's key in its parent's `eligible_children`, when it is in there.
    pub key_in_parent: Option<SelectionKey>,
    /// Set when the head job would lift this subtree past its ceiling; cleared when
    /// resources in the subtree are released or the cluster changes.
    pub at_ceiling: bool,
    /// Set for the rest of a pass when the head job fit on no worker.
    pub skipped_in_pass: bool,
    /// Since when this leaf has been below its guarantee with demand it could not place.
    pub starved_since: Option<crate::ids::Timestamp>,
    /// Leaf: set while a rate limit holds its next job back, until the instant it
    /// allows it (a timer clears it then); the leaf sits out meanwhile.
    pub rate_held_until: Option<Timestamp>,
    /// Leaf: the job the current hold is for (its next job when the hold began).
    pub rate_held_job: Option<JobKey>,
    /// Leaf: the bucket of its `rate_limit`, made at its first dispatch.
    pub rate_bucket: Option<crate::rate_limits::Bucket>,
    /// Leaf: the buckets of its `key_limits`, by key name, then key value.
    pub key_buckets: std::collections::BTreeMap<String, super::rate_limits::KeyBuckets>,
    pub ordering: Arc<dyn crate::policy::OrderingPolicy>,
    pub placement: Arc<dyn crate::policy::PlacementPolicy>,
    pub admission: Arc<dyn crate::policy::AdmissionPolicy>,
}

impl QueueNode {
    /// A running, empty queue; the caller sets its absolute shares.
    pub fn new(
        id: QueueId,
        path: QueuePath,
        parent: Option<QueueId>,
        config: QueueConfig,
        (ordering, placement, admission): QueuePolicies,
    ) -> Self {
        let ready = if config.fairness_key.is_some() {
            ReadyQueue::fair()
        } else {
            ReadyQueue::default()
        };
        Self {
            id,
            path,
            parent,
            children: Vec::new(),
            children_capacity: 0.0,
            config,
            state: QueueState::Running,
            abs_guarantee: 0.0,
            abs_max: 0.0,
            used: Resources::default(),
            running: 0,
            unfinished: 0,
            on_demand: false,
            idle_since: None,
            note: None,
            usage: std::collections::BTreeMap::new(),
            stats: QueueStats::default(),
            ready,
            parked: Vec::new(),
            attempts: Vec::new(),
            dead_attempts: 0,
            eligible_children: BTreeSet::new(),
            key_in_parent: None,
            at_ceiling: false,
            skipped_in_pass: false,
            starved_since: None,
            rate_held_until: None,
            rate_held_job: None,
            rate_bucket: None,
            key_buckets: std::collections::BTreeMap::new(),
            ordering,
            placement,
            admission,
        }
    }

    pub fn is_leaf(&self) -> bool {
        self.children.is_empty()
    }
}

/// What one value of a leaf's fairness key (a user, a tenant) holds in the leaf.
#[derive(Clone, PartialEq, Debug)]
pub struct UserShareView {
    /// The value (`alice`; "" for jobs without the key).
    pub name: String,
    /// Resources its attempts hold.
    pub used: Resources,
    /// Its attempts scheduled or running.
    pub running: u32,
    /// Its dominant share of the cluster.
    pub share: f64,
}

/// A read-only view of one queue.
#[derive(Clone, Copy)]
pub struct QueueView<'a> {
    pub(super) rm: &'a ResourceManager,
    pub(super) node: &'a QueueNode,
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
    /// Leaf with a fairness key: what each value of it holds here (resources and
    /// attempts), by value, largest share first. Empty otherwise.
    pub fn users(&self) -> Vec<UserShareView> {
        let total = &self.rm.total;
        let mut users: Vec<UserShareView> = self
            .node
            .ready
            .user_shares()
            .filter(|(_, _, running)| *running > 0)
            .map(|(name, used, running)| UserShareView {
                name: name.to_owned(),
                used: used.clone(),
                running,
                share: used.dominant_share(total),
            })
            .collect();
        users.sort_by(|a, b| b.share.total_cmp(&a.share).then(a.name.cmp(&b.name)));
        users
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

    /// Whether it was created on demand from its parent's template (and is removed
    /// once idle).
    pub fn on_demand(&self) -> bool {
        self.node.on_demand
    }

    /// Created on demand and holding no unfinished job: since when.
    pub fn idle_since(&self) -> Option<Timestamp> {
        self.node.idle_since.filter(|_| self.node.unfinished == 0)
    }

    /// Why its settings differ from what was asked, if they do.
    pub fn note(&self) -> Option<&'a str> {
        self.node.note.as_deref()
    }

    /// A leaf's right-sizing figures by job name (handler or program): what the latest
    /// attempts used against what they asked for, and the request `auto` gives a new
    /// job of that name now (`None` before enough attempts were observed).
    pub fn usage(&self) -> Vec<NameUsage> {
        let auto = self.node.config.auto_resources.clone().unwrap_or_default();
        self.node
            .usage
            .iter()
            .map(|(name, stats)| {
                let base = self.node.config.defaults.request.clone();
                NameUsage {
                    name: name.to_string(),
                    summary: stats.summary(),
                    auto_request: stats.auto_request(&auto, &base),
                }
            })
            .collect()
    }
    /// Until when a rate limit holds this leaf's next job back, while one does.
    pub fn rate_limited_until(&self) -> Option<Timestamp> {
        self.node.rate_held_until
    }
    /// The job this leaf dispatches next, if it has a ready one (with a user limit:
    /// of a user below its limit).
    pub fn next_job(&self) -> Option<JobId> {
        self.node
            .ready
            .peek(|k| {
                self.rm
                    .jobs
                    .get(k)
                    .is_some_and(|j| j.waiting == Waiting::Ready)
            })
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

/// One job name's right-sizing figures in a leaf ([`QueueView::usage`]).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct NameUsage {
    /// The handler or program.
    pub name: String,
    /// What its latest attempts used and asked for.
    pub summary: crate::usage::UsageSummary,
    /// The cpu and memory `auto` requests now, if enough attempts were observed.
    pub auto_request: Option<Resources>,
}

/// The most share of the cluster one value of a leaf's fairness key may hold: its
/// `user_limit_factor` times the leaf's guarantee.
pub(crate) fn user_share_limit(node: &QueueNode) -> Option<f64> {
    node.config
        .user_limit_factor
        .map(|factor| factor * node.abs_guarantee)
}

fn leaf_setting_on_parent(path: &QueuePath, field: &str) -> QueueError {
    QueueError::InvalidConfig {
        path: path.clone(),
        field: field.to_owned(),
        reason: "acts on the jobs of a leaf queue, and this queue has (or would get) child \
                 queues; set it on the leaves, or remove it before adding children"
            .to_owned(),
    }
}

impl ResourceManager {
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

    pub(crate) fn lookup_queue(&self, path: &str) -> Result<QueueId, QueueError> {
        if let Some(id) = self.queue_ids.get(path) {
            return Ok(*id);
        }
        QueuePath::parse(path)?;
        Err(QueueError::NotFound {
            path: path.to_owned(),
            known: self.known_queues_near(path),
        })
    }

    /// A few existing queues to spot a typo in `path` by: all of them (sorted) in a small
    /// tree; in a large one, children of the nearest ancestor that exists. A miss must
    /// cost a few lookups, not a sort of 100,000 paths: it is on the scheduler's thread.
    pub(crate) fn known_queues_near(&self, path: &str) -> String {
        const SHOWN: usize = 8;
        const SMALL_TREE: usize = 64;
        let (mut known, total): (Vec<&str>, usize) = if self.queue_ids.len() <= SMALL_TREE {
            let all = self.queue_ids.keys().map(QueuePath::as_str).collect();
            (all, self.queue_ids.len())
        } else {
            let mut ancestor = ROOT;
            let mut prefix = path;
            while let Some((parent, _)) = prefix.rsplit_once('.') {
                if let Some(id) = self.queue_ids.get(parent) {
                    ancestor = *id;
                    break;
                }
                prefix = parent;
            }
            let children = &self.node(ancestor).children;
            let first = children.iter().take(SHOWN);
            let shown = first.map(|c| self.node(*c).path.as_str()).collect();
            (shown, children.len())
        };
        known.sort_unstable();
        known.truncate(SHOWN);
        let more = total.saturating_sub(known.len());
        let mut text = known.join(", ");
        if more > 0 {
            text.push_str(&format!(" and {more} more"));
        }
        text
    }

    /// The queue at `path`, or `None`; unlike [`ResourceManager::queue`] a miss costs
    /// nothing (no error message to build).
    pub fn find_queue(&self, path: &str) -> Option<QueueView<'_>> {
        let id = *self.queue_ids.get(path)?;
        Some(QueueView {
            rm: self,
            node: self.node(id),
        })
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

    pub(crate) fn resolve_policies(
        &self,
        path: &QueuePath,
        config: &QueueConfig,
    ) -> Result<QueuePolicies, QueueError> {
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

    pub(crate) fn check_sibling_capacity(
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
        let mut config = config;
        // A limit of 0 is no limit: kept as none, so equal settings compare equal.
        config.max_running = config.running_limit();
        config.max_pending = config.pending_limit();
        config.validate(&path)?;
        let policies = self.resolve_policies(&path, &config)?;
        let parent_node = self.node(parent);
        if parent_node.is_leaf() && parent_node.unfinished > 0 {
            return Err(QueueError::ParentHoldsJobs(parent_node.path.clone()));
        }
        if let Some(field) = parent_node.config.leaf_only_setting() {
            return Err(leaf_setting_on_parent(&parent_node.path, field));
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
        self.note_priority_preemption(id);
        self.effects.records.push(Record::Queue(id));
        Ok(id)
    }

    /// Keeps the set of queues with priority preemption in line with `id`'s config.
    fn note_priority_preemption(&mut self, id: QueueId) {
        if self.node(id).config.priority_preemption {
            self.priority_preempting.entry(id).or_insert(None);
        } else {
            self.priority_preempting.remove(&id);
        }
    }

    /// Changes a queue's settings. Guarantees and ceilings below it follow at once.
    pub fn update_queue(&mut self, path: &str, update: &QueueUpdate) -> Result<(), QueueError> {
        let id = self.lookup_queue(path)?;
        let node = self.node(id);
        if id == ROOT && (update.capacity.is_some() || update.max_capacity.is_some()) {
            return Err(QueueError::Root("given a capacity (it is always 100%)"));
        }
        let mut config = update.apply_to(&node.config);
        config.max_running = config.running_limit();
        config.max_pending = config.pending_limit();
        config.validate(&node.path)?;
        let (ordering, placement, admission) = self.resolve_policies(&node.path, &config)?;
        if let Some(parent) = node.parent {
            self.check_sibling_capacity(parent, Some(id), config.capacity)?;
        }
        if !node.is_leaf()
            && let Some(field) = config.leaf_only_setting()
        {
            return Err(leaf_setting_on_parent(&node.path, field));
        }
        // A queue with a template is a parent: its own jobs would have nowhere to go.
        if config.template.is_some() && node.is_leaf() && node.unfinished > 0 {
            return Err(QueueError::ParentHoldsJobs(node.path.clone()));
        }
        let reorder = node.config.ordering != config.ordering
            || node.config.fairness_key != config.fairness_key;
        let capacity_change = config.capacity - node.config.capacity;
        if let Some(parent) = node.parent {
            self.node_mut(parent).children_capacity += capacity_change;
        }
        let node = self.node_mut(id);
        if node.config.rate_limit != config.rate_limit {
            // A changed limit starts from the state of the old one's bucket.
            node.rate_held_until = None;
            if config.rate_limit.is_none() {
                node.rate_bucket = None;
            }
        }
        let key_limits_changed = node.config.key_limits != config.key_limits;
        if key_limits_changed {
            node.rate_held_until = None;
        }
        node.config = config;
        self.note_priority_preemption(id);
        if key_limits_changed {
            // Held jobs go back in order; the limits now in force sort them again.
            self.release_key_holds(id);
            let node = self.node_mut(id);
            let kept = &node.config.key_limits;
            node.key_buckets.retain(|name, _| kept.contains_key(name));
        }
        let node = self.node_mut(id);
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

    /// Ranks a leaf's ready jobs again after its ordering policy or its fairness key
    /// changed; with a fairness key, the users' shares are counted again from the
    /// attempts running.
    pub(crate) fn rerank(&mut self, id: QueueId) {
        let node = self.node_mut(id);
        let ordering = node.ordering.clone();
        let mut ready = if node.config.fairness_key.is_some() {
            ReadyQueue::fair()
        } else {
            ReadyQueue::default()
        };
        std::mem::swap(&mut node.ready, &mut ready);
        let jobs = &self.jobs;
        let live = ready.drain_live(|k| jobs.get(k).is_some_and(|j| j.waiting == Waiting::Ready));
        let node = self.queues[id.0 as usize].as_mut().expect("leaf is live");
        if node.ready.is_fair() {
            for (token, key) in &node.attempts {
                if let Some(job) = jobs.get(*key)
                    && job.current_token() == Some(*token)
                {
                    let user = node.config.fairness_value(&job.spec).unwrap_or("");
                    node.ready.started(user, &job.spec.request);
                }
            }
            let max_share = user_share_limit(node);
            node.ready.reshare(&self.total, max_share);
        }
        for key in live {
            let job = &mut self.jobs[key];
            job.rank = ordering.rank(&job.spec);
            self.enqueue_ready(id, key, false);
        }
        let parked = self.node(id).parked.clone();
        for key in parked {
            if let Some(job) = self.jobs.get_mut(key) {
                job.rank = ordering.rank(&job.spec);
            }
        }
    }

    pub(crate) fn recompute_absolute(&mut self, id: QueueId) {
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

    pub(crate) fn set_subtree_state(&mut self, id: QueueId, state: QueueState) {
        self.dirty = true;
        let node = self.node_mut(id);
        node.state = state;
        let children = node.children.clone();
        if children.is_empty() {
            // A ceiling mark above may have been made for this leaf's next job, which
            // a drain takes out of the running: it would hold back the siblings.
            self.head_changed(id);
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
        self.close_broadcasts_into(&doomed_path);
        let cancelled = doomed.len() as u64;
        for key in doomed {
            // Cancelling a parent may have cancelled this one as its dependent already.
            if !self.jobs[key].state.is_terminal() {
                self.cancel_key(key, &reason, now);
            }
        }
        self.unlink_queue(id);
        Ok(cancelled)
    }

    /// Takes a queue and its subtree out of the tree (they hold no unfinished job).
    pub(crate) fn unlink_queue(&mut self, id: QueueId) {
        let parent = self.node(id).parent.expect("only root has no parent");
        self.remove_from_parent_set(id);
        let capacity = self.node(id).config.capacity;
        let parent_node = self.node_mut(parent);
        parent_node.children.retain(|c| *c != id);
        parent_node.children_capacity -= capacity;
        self.drop_subtree(id);
        self.keys_stale = true;
        self.dirty = true;
    }

    pub(crate) fn remove_from_parent_set(&mut self, id: QueueId) {
        let node = self.node_mut(id);
        let (Some(key), Some(parent)) = (node.key_in_parent.take(), node.parent) else {
            return;
        };
        self.node_mut(parent).eligible_children.remove(&key);
        self.refresh_up(parent);
    }

    pub(crate) fn drop_subtree(&mut self, id: QueueId) {
        let node = self.queues[id.0 as usize]
            .take()
            .expect("queue ids held internally refer to live queues");
        for child in &node.children {
            self.drop_subtree(*child);
        }
        self.queue_ids.remove(&node.path);
        self.starved.remove(&id);
        self.priority_preempting.remove(&id);
        self.effects.records.push(Record::QueueDeleted {
            id,
            path: node.path.clone(),
        });
        self.deleted_paths.insert(id, node.path);
    }
}
