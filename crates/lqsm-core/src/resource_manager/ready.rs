//! A leaf's ready jobs in dispatch order, and fair sharing among the users of a leaf.
//!
//! Without a fairness key a leaf serves its ready jobs by rank under its ordering policy,
//! then first come first served. With one (`QueueConfig::fairness_key`), each rank is
//! split further by the job's value of that key (its user, tenant, customer): inside a
//! rank the next job is the oldest of the user holding the smallest share of the
//! cluster in this leaf, ties going to the user served longest ago; a user at the
//! leaf's user limit waits while it holds that much (it may always run one job, as in
//! YARN, so that no limit can keep a user out altogether).

use crate::jobs::JobKey;
use crate::resources::Resources;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

/// A leaf's ready jobs in dispatch order. Each rank (or each user inside a rank) is a
/// FIFO deque, so taking the next job touches little memory. Entries of jobs that
/// stopped waiting (cancelled, expired) are dropped lazily when they reach the front;
/// `len` counts live ones.
#[derive(Debug, Default)]
pub(crate) struct ReadyQueue {
    buckets: BTreeMap<i64, VecDeque<JobKey>>,
    fair: Option<Box<FairShares>>,
    live: usize,
}

/// Order key of a user inside a rank: its share (`f64::to_bits` of a non-negative
/// number orders like the number), when it was last served, its name.
type UserOrder = (u64, u64, Arc<str>);

#[derive(Debug, Default)]
struct FairBucket {
    jobs: HashMap<Arc<str>, VecDeque<JobKey>>,
    order: BTreeSet<UserOrder>,
}

#[derive(Debug, Default)]
struct UserShare {
    used: Resources,
    running: u32,
    share_bits: u64,
    last_served: u64,
    /// Ranks where this user has ready jobs.
    ranks: BTreeSet<i64>,
}

impl UserShare {
    fn order(&self, name: &Arc<str>) -> UserOrder {
        (self.share_bits, self.last_served, name.clone())
    }

    fn at_limit(&self, max_share: Option<f64>) -> bool {
        self.running > 0 && max_share.is_some_and(|max| f64::from_bits(self.share_bits) >= max)
    }
}

#[derive(Debug, Default)]
struct FairShares {
    buckets: BTreeMap<i64, FairBucket>,
    users: HashMap<Arc<str>, UserShare>,
    /// The cluster's resources the shares are taken of (as of the last `reshare`).
    total: Resources,
    /// Most share of the cluster one user may hold in this leaf; None: no user limit.
    max_share: Option<f64>,
    /// Counts dispatches, to order users of equal share by who was served last.
    served: u64,
    /// Where the job `head` returned is, for `pop_head`.
    head: Option<(i64, Arc<str>)>,
    /// Set when `head` found live jobs only of users at their limit; cleared by
    /// anything that may change that (a push, an attempt ending, new limits).
    all_at_limit: bool,
}

impl FairShares {
    /// Moves `user`'s place in every rank where it waits after its share changed.
    fn reorder(&mut self, name: &Arc<str>, update: impl FnOnce(&mut UserShare)) {
        let user = self.users.entry(name.clone()).or_default();
        let before = user.order(name);
        update(user);
        user.share_bits = user.used.dominant_share(&self.total).max(0.0).to_bits();
        let after = user.order(name);
        if before != after {
            for rank in &user.ranks {
                if let Some(bucket) = self.buckets.get_mut(rank) {
                    bucket.order.remove(&before);
                    bucket.order.insert(after.clone());
                }
            }
        }
        if user.running == 0 && user.ranks.is_empty() {
            self.users.remove(name);
        }
    }

    fn push(&mut self, rank: i64, job: JobKey, name: &str, front: bool) {
        let name: Arc<str> = match self.users.get_key_value(name) {
            Some((known, _)) => known.clone(),
            None => Arc::from(name),
        };
        let user = self.users.entry(name.clone()).or_default();
        let order = user.order(&name);
        user.ranks.insert(rank);
        let bucket = self.buckets.entry(rank).or_default();
        let jobs = bucket.jobs.entry(name).or_insert_with(|| {
            bucket.order.insert(order);
            VecDeque::new()
        });
        if front {
            jobs.push_front(job);
        } else {
            jobs.push_back(job);
        }
        self.all_at_limit = false;
    }

    /// Takes `name` out of the rank `rank` (it has no jobs left there).
    fn leave_rank(&mut self, rank: i64, name: &Arc<str>) {
        let Some(user) = self.users.get_mut(name) else {
            return;
        };
        let order = user.order(name);
        user.ranks.remove(&rank);
        if user.running == 0 && user.ranks.is_empty() {
            self.users.remove(name);
        }
        if let Some(bucket) = self.buckets.get_mut(&rank) {
            bucket.jobs.remove(name);
            bucket.order.remove(&order);
            if bucket.jobs.is_empty() {
                self.buckets.remove(&rank);
            }
        }
    }

    fn head(&mut self, is_live: &impl Fn(JobKey) -> bool) -> Option<JobKey> {
        self.head = None;
        // Ranks in order, without holding the map: emptied users leave it on the way.
        let mut next = self.buckets.keys().next().copied();
        while let Some(rank) = next {
            next = self
                .buckets
                .range((std::ops::Bound::Excluded(rank), std::ops::Bound::Unbounded))
                .next()
                .map(|(r, _)| *r);
            let mut emptied = Vec::new();
            let mut found = None;
            let Some(bucket) = self.buckets.get_mut(&rank) else {
                continue;
            };
            for (_, _, name) in &bucket.order {
                let at_limit = self
                    .users
                    .get(name)
                    .is_some_and(|u| u.at_limit(self.max_share));
                if at_limit {
                    continue;
                }
                let Some(jobs) = bucket.jobs.get_mut(name) else {
                    continue;
                };
                while let Some(job) = jobs.front() {
                    if is_live(*job) {
                        break;
                    }
                    jobs.pop_front();
                }
                match jobs.front() {
                    Some(job) => {
                        found = Some((*job, name.clone()));
                        break;
                    }
                    None => emptied.push(name.clone()),
                }
            }
            for name in &emptied {
                self.leave_rank(rank, name);
            }
            if let Some((job, name)) = found {
                self.head = Some((rank, name));
                return Some(job);
            }
        }
        None
    }

    /// The job `head` would return, without dropping anything.
    fn peek(&self, is_live: &impl Fn(JobKey) -> bool) -> Option<JobKey> {
        self.buckets.values().find_map(|bucket| {
            bucket.order.iter().find_map(|(_, _, name)| {
                let at_limit = self
                    .users
                    .get(name)
                    .is_some_and(|u| u.at_limit(self.max_share));
                if at_limit {
                    return None;
                }
                bucket.jobs.get(name)?.iter().copied().find(|j| is_live(*j))
            })
        })
    }

    fn pop_head(&mut self) -> bool {
        let Some((rank, name)) = self.head.take() else {
            return false;
        };
        let Some(jobs) = self
            .buckets
            .get_mut(&rank)
            .and_then(|b| b.jobs.get_mut(&name))
        else {
            return false;
        };
        jobs.pop_front();
        if jobs.is_empty() {
            self.leave_rank(rank, &name);
        }
        true
    }

    fn iter_live<'a>(
        &'a self,
        is_live: impl Fn(JobKey) -> bool + 'a,
    ) -> impl Iterator<Item = JobKey> + 'a {
        self.buckets
            .values()
            .flat_map(|bucket| {
                bucket
                    .order
                    .iter()
                    .filter_map(|(_, _, name)| bucket.jobs.get(name))
                    .flatten()
            })
            .copied()
            .filter(move |j| is_live(*j))
    }
}

impl ReadyQueue {
    /// An empty queue shared fairly among the values of a fairness key.
    pub fn fair() -> Self {
        Self {
            fair: Some(Box::default()),
            ..Self::default()
        }
    }

    pub fn is_fair(&self) -> bool {
        self.fair.is_some()
    }

    pub fn len(&self) -> usize {
        self.live
    }

    /// Whether a job may be taken now: some is live and, with a user limit, the last
    /// look did not find every waiting user at its limit.
    pub fn has_next(&self) -> bool {
        self.live > 0 && !self.fair.as_ref().is_some_and(|f| f.all_at_limit)
    }

    /// Adds a job behind the others of its rank (and user), or ahead of them for one
    /// that had already been dispatched. `user` is its value of the fairness key.
    pub fn push(&mut self, rank: i64, job: JobKey, user: &str, front: bool) {
        self.live += 1;
        if let Some(fair) = &mut self.fair {
            fair.push(rank, job, user, front);
            return;
        }
        let bucket = self.buckets.entry(rank).or_default();
        if front {
            bucket.push_front(job);
        } else {
            bucket.push_back(job);
        }
    }

    /// The next live job, dropping dead entries in front of it. With fairness, the
    /// next job of the first user in line not at its limit; None when every live job
    /// belongs to a user at its limit (then `has_next` is false until that changes).
    pub fn head(&mut self, is_live: impl Fn(JobKey) -> bool) -> Option<JobKey> {
        if let Some(fair) = &mut self.fair {
            let head = fair.head(&is_live);
            fair.all_at_limit = head.is_none() && self.live > 0;
            return head;
        }
        loop {
            let mut bucket = self.buckets.first_entry()?;
            match bucket.get().front() {
                None => {
                    bucket.remove();
                }
                Some(job) if is_live(*job) => return Some(*job),
                Some(_) => {
                    bucket.get_mut().pop_front();
                }
            }
        }
    }

    /// The job `head` would return now, without dropping dead entries.
    pub fn peek(&self, is_live: impl Fn(JobKey) -> bool) -> Option<JobKey> {
        match &self.fair {
            Some(fair) => fair.peek(&is_live),
            None => self.iter_live(is_live).next(),
        }
    }

    /// Removes the entry `head` just returned.
    pub fn pop_head(&mut self) {
        if let Some(fair) = &mut self.fair {
            if fair.pop_head() {
                self.live -= 1;
            }
            return;
        }
        if let Some(mut bucket) = self.buckets.first_entry() {
            bucket.get_mut().pop_front();
            if bucket.get().is_empty() {
                bucket.remove();
            }
            self.live -= 1;
        }
    }

    /// A live entry died in place (its job stopped waiting); it is dropped lazily.
    pub fn forget_one(&mut self) {
        self.live -= 1;
    }

    /// Live jobs in dispatch order (with fairness: as the users stand in line now,
    /// limits aside).
    pub fn iter_live<'a>(
        &'a self,
        is_live: impl Fn(JobKey) -> bool + 'a,
    ) -> Box<dyn Iterator<Item = JobKey> + 'a> {
        match &self.fair {
            Some(fair) => Box::new(fair.iter_live(is_live)),
            None => Box::new(
                self.buckets
                    .values()
                    .flatten()
                    .copied()
                    .filter(move |j| is_live(*j)),
            ),
        }
    }

    /// Empties the queue, returning the live jobs in dispatch order. The users' shares
    /// stay: they belong to the attempts running, not to the jobs waiting.
    pub fn drain_live(&mut self, is_live: impl Fn(JobKey) -> bool) -> Vec<JobKey> {
        let jobs = self.iter_live(is_live).collect();
        self.buckets.clear();
        self.live = 0;
        if let Some(fair) = &mut self.fair {
            fair.buckets.clear();
            fair.head = None;
            fair.all_at_limit = false;
            fair.users.retain(|_, user| {
                user.ranks.clear();
                user.running > 0
            });
        }
        jobs
    }

    /// An attempt of `user`'s started in this leaf, holding `request`.
    pub fn started(&mut self, user: &str, request: &Resources) {
        let Some(fair) = &mut self.fair else {
            return;
        };
        fair.served += 1;
        let served = fair.served;
        let name = match fair.users.get_key_value(user) {
            Some((known, _)) => known.clone(),
            None => Arc::from(user),
        };
        fair.reorder(&name, |u| {
            u.used.add(request);
            u.running += 1;
            u.last_served = served;
        });
    }

    /// An attempt of `user`'s that held `request` in this leaf ended.
    pub fn ended(&mut self, user: &str, request: &Resources) {
        let Some(fair) = &mut self.fair else {
            return;
        };
        let Some((name, _)) = fair.users.get_key_value(user) else {
            return;
        };
        let name = name.clone();
        fair.reorder(&name, |u| {
            u.used.sub(request);
            u.running = u.running.saturating_sub(1);
        });
        fair.all_at_limit = false;
    }

    /// Takes the shares anew of `total` (the cluster changed size) under a user limit
    /// of `max_share` of the cluster.
    pub fn reshare(&mut self, total: &Resources, max_share: Option<f64>) {
        let Some(fair) = &mut self.fair else {
            return;
        };
        if fair.total == *total && fair.max_share == max_share {
            return;
        }
        fair.total = total.clone();
        fair.max_share = max_share;
        fair.all_at_limit = false;
        let names: Vec<Arc<str>> = fair.users.keys().cloned().collect();
        for name in names {
            fair.reorder(&name, |_| {});
        }
    }

    /// Each user's resources held and attempts running in this leaf, by name.
    pub fn user_shares(&self) -> impl Iterator<Item = (&str, &Resources, u32)> {
        self.fair
            .iter()
            .flat_map(|f| f.users.iter())
            .map(|(name, u)| (&**name, &u.used, u.running))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{MiB, Millicores};

    fn keys(n: usize) -> Vec<JobKey> {
        let mut map = slotmap::SlotMap::<JobKey, ()>::with_key();
        (0..n).map(|_| map.insert(())).collect()
    }

    fn one_core() -> Resources {
        Resources::new(Millicores(1000), MiB(100), 0)
    }

    #[test]
    fn users_of_one_rank_take_turns_by_share() {
        let k = keys(4);
        let mut q = ReadyQueue::fair();
        q.reshare(&Resources::new(Millicores(10_000), MiB(1000), 0), None);
        // Alice queued three before Bob's one.
        q.push(0, k[0], "alice", false);
        q.push(0, k[1], "alice", false);
        q.push(0, k[2], "alice", false);
        q.push(0, k[3], "bob", false);
        let mut order = Vec::new();
        while let Some(job) = q.head(|_| true) {
            q.pop_head();
            let user = if job == k[3] { "bob" } else { "alice" };
            q.started(user, &one_core());
            order.push(job);
        }
        assert_eq!(order, vec![k[0], k[3], k[1], k[2]]);
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn a_user_at_its_limit_waits_and_the_leaf_says_so() {
        let k = keys(3);
        let mut q = ReadyQueue::fair();
        q.reshare(&Resources::new(Millicores(10_000), MiB(1000), 0), Some(0.2));
        for job in &k {
            q.push(0, *job, "alice", false);
        }
        for _ in 0..2 {
            assert!(q.head(|_| true).is_some());
            q.pop_head();
            q.started("alice", &one_core());
        }
        // Alice holds 20% of the cluster: her third job waits.
        assert_eq!(q.head(|_| true), None);
        assert!(!q.has_next());
        assert_eq!(q.len(), 1);
        q.ended("alice", &one_core());
        assert!(q.has_next());
        assert_eq!(q.head(|_| true), Some(k[2]));
    }

    #[test]
    fn an_earlier_rank_goes_first_whatever_the_shares() {
        let k = keys(2);
        let mut q = ReadyQueue::fair();
        q.reshare(&Resources::new(Millicores(10_000), MiB(1000), 0), None);
        q.started("alice", &one_core());
        q.push(1, k[0], "bob", false);
        q.push(0, k[1], "alice", false);
        assert_eq!(q.head(|_| true), Some(k[1]));
    }
}
