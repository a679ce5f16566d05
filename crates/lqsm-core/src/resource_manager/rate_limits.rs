//! Rate limits in the scheduler: a leaf's own limit, its per-key limits and the
//! cluster's per-handler limits, each a GCRA bucket ([`crate::rate_limits`]).
//!
//! A token is spent when an attempt is dispatched (retries included), never before.
//!
//! - A leaf whose own limit holds its next job back sits out until the instant the limit
//!   allows it, woken by one timer: no pass looks at it meanwhile. Its order stays strict.
//! - A job held back by a per-key or per-handler limit is set aside in that limit's
//!   *hold*, a FIFO, so the jobs behind it (other customers, other tasks) go on. A hold
//!   gives its jobs back one at a time, at the front of their leaves: one timer at the
//!   instant its bucket allows the next start, then again once the job given back was
//!   dispatched (or went away). At most one job per hold is out at once, and a later job
//!   of a held key waits behind the hold, so each key's jobs start in their order.
//!
//! Buckets are made at first need. One that is full again is the same as a new one:
//! per-key buckets (without a hold) are swept of full ones each time their number
//! doubles, so their memory follows the keys dispatched within one burst's time, not
//! every key ever seen. Buckets are not stored: after a restart every bucket starts
//! *empty* (its next start one interval after the restore), which keeps the limit across
//! the restart whatever was spent just before it, at the cost of at most one burst.

use super::ResourceManager;
use crate::effects::Record;
use crate::hashing::HashMap;
use crate::ids::{HoldKey, JobId, QueueId, Timestamp};
use crate::jobs::{JobKey, JobKind, JobState, Waiting};
use crate::rate_limits::{Bucket, RateLimit};
use crate::timers::Timer;
use std::collections::VecDeque;
use std::sync::Arc;

/// Fewest buckets of one key name kept before a sweep of full ones.
const MIN_SWEEP_AT: usize = 64;

/// A bucket seen for the first time: full, or, after a restore at `restored_at`, empty
/// at that instant (as empty as it may have been left before the restart).
fn new_bucket(restored_at: Option<Timestamp>, limit: &RateLimit) -> Bucket {
    match restored_at {
        Some(at) => Bucket::emptied_at(at, limit),
        None => Bucket::default(),
    }
}

/// A per-job limit's bucket and the hold of the jobs it keeps back, if any.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Cell {
    bucket: Bucket,
    hold: Option<HoldKey>,
}

/// The cells of one key name of a leaf, by key value.
#[derive(Debug)]
pub(crate) struct KeyBuckets {
    cells: HashMap<String, Cell>,
    /// Sweep full buckets when this many are held.
    sweep_at: usize,
}

/// Which per-job limit a hold waits for.
#[derive(Clone, Debug)]
pub(crate) enum HeldBy {
    /// A handler's cluster-wide limit.
    Handler(Arc<str>),
    /// A leaf's limit on one value of a key.
    Key {
        leaf: QueueId,
        name: String,
        value: String,
    },
}

/// Jobs set aside by one per-job limit, oldest first.
#[derive(Debug)]
pub(crate) struct Hold {
    jobs: VecDeque<JobKey>,
    by: HeldBy,
    limit: RateLimit,
    /// A timer will give the next job back.
    armed: bool,
    /// The job given back and not yet dispatched.
    out: Option<JobKey>,
}

/// What the limits say of a leaf's next job.
pub(crate) enum Verdict {
    /// The leaf's own limit: the leaf sits out until then.
    HoldLeaf(Timestamp),
    /// A per-job limit: the job is set aside in its hold, probably until then.
    SetAside(Timestamp, HeldBy, RateLimit),
}

impl ResourceManager {
    /// Moves every bucket by `by_ms` for a step of the wall clock (see `clock_jumped`).
    pub(crate) fn shift_rate_limit_buckets(&mut self, by_ms: i64) {
        let shifted = |at: Timestamp| crate::timers::shifted(at, by_ms);
        self.rate_limits_restored_at = self.rate_limits_restored_at.map(shifted);
        for cell in self.handler_buckets.values_mut() {
            cell.bucket.shift(by_ms);
        }
        for node in self.queues.iter_mut().flatten() {
            if let Some(bucket) = &mut node.rate_bucket {
                bucket.shift(by_ms);
            }
            for keys in node.key_buckets.values_mut() {
                for cell in keys.cells.values_mut() {
                    cell.bucket.shift(by_ms);
                }
            }
        }
    }

    /// A bucket seen for the first time (see [`new_bucket`]).
    fn new_bucket(&self, limit: &RateLimit) -> Bucket {
        new_bucket(self.rate_limits_restored_at, limit)
    }

    /// The job's handler, if it has a cluster-wide limit, with that limit.
    fn handler_limit(&self, job: JobKey) -> Option<(&Arc<str>, &RateLimit)> {
        if self.config.handler_rate_limits.is_empty() {
            return None;
        }
        let handler = match &self.jobs[job].spec.kind {
            JobKind::Function { handler, .. }
            | JobKind::Stored {
                handler: Some(handler),
            } => handler,
            JobKind::Command(_) | JobKind::Stored { handler: None } => return None,
        };
        let limit = self.config.handler_rate_limits.get(&**handler)?;
        Some((handler, limit))
    }

    fn cell(&self, by: &HeldBy) -> Option<&Cell> {
        match by {
            HeldBy::Handler(handler) => self.handler_buckets.get(handler),
            HeldBy::Key { leaf, name, value } => self
                .queues
                .get(leaf.0 as usize)?
                .as_ref()?
                .key_buckets
                .get(name)?
                .cells
                .get(value),
        }
    }

    /// The cell of `by`, made if missing; `None` once its leaf is gone.
    fn cell_mut(&mut self, by: &HeldBy, limit: &RateLimit, now: Timestamp) -> Option<&mut Cell> {
        let fresh = Cell {
            bucket: self.new_bucket(limit),
            hold: None,
        };
        let seed = self.seed;
        match by {
            HeldBy::Handler(handler) => {
                Some(self.handler_buckets.entry(handler.clone()).or_insert(fresh))
            }
            HeldBy::Key { leaf, name, value } => {
                let node = self.queues.get_mut(leaf.0 as usize)?.as_mut()?;
                let named = node
                    .key_buckets
                    .entry(name.clone())
                    .or_insert_with(|| KeyBuckets {
                        cells: crate::hashing::map(seed),
                        sweep_at: MIN_SWEEP_AT,
                    });
                if !named.cells.contains_key(value) && named.cells.len() >= named.sweep_at {
                    // Full buckets without a hold are the same as new ones: dropping them
                    // changes nothing.
                    named
                        .cells
                        .retain(|_, c| c.hold.is_some() || !c.bucket.is_full(now));
                    named.sweep_at = (named.cells.len() * 2).max(MIN_SWEEP_AT);
                }
                Some(named.cells.entry(value.clone()).or_insert(fresh))
            }
        }
    }

    /// `None` when every limit on `job` lets it start at `now`.
    pub(crate) fn rate_verdict(
        &self,
        leaf: QueueId,
        job: JobKey,
        now: Timestamp,
    ) -> Option<Verdict> {
        let node = self.node(leaf);
        let handler = self.handler_limit(job);
        if !node.config.has_rate_limits() && handler.is_none() {
            return None;
        }
        if let Some(limit) = &node.config.rate_limit {
            let fresh;
            let bucket = match &node.rate_bucket {
                Some(b) => b,
                None => {
                    fresh = self.new_bucket(limit);
                    &fresh
                }
            };
            if let Some(until) = bucket.limited_until(limit, now) {
                return Some(Verdict::HoldLeaf(until));
            }
        }
        // A per-job limit holds the job back when its bucket is empty, or when it holds
        // older jobs, unless a hold gave this one back: a job under two limits given back
        // by one waits for the other's bucket, not behind its queue (else two holds
        // could hand such jobs to each other forever).
        let given_back = self.released.contains_key(&job);
        let verdict = |cell: Option<&Cell>, limit: &RateLimit, by: &dyn Fn() -> HeldBy| {
            let (bucket, hold) = match cell {
                Some(c) => (c.bucket, c.hold),
                None => (self.new_bucket(limit), None),
            };
            let waiting = hold
                .filter(|_| !given_back)
                .map_or(0, |h| self.holds[h].jobs.len());
            let limited = bucket.limited_until(limit, now);
            if limited.is_none() && waiting == 0 {
                return None;
            }
            let interval_ms = limit.rate.interval_nanos().div_ceil(1_000_000);
            let until = limited
                .unwrap_or(now)
                .after(std::time::Duration::from_millis(
                    interval_ms * waiting as u64,
                ));
            Some(Verdict::SetAside(until, by(), *limit))
        };
        if let Some((handler, limit)) = handler
            && let Some(v) = verdict(self.handler_buckets.get(handler), limit, &|| {
                HeldBy::Handler(handler.clone())
            })
        {
            return Some(v);
        }
        let keys = self.jobs[job].spec.keys();
        for (name, limit) in &node.config.key_limits {
            let Some(value) = keys.get(name) else {
                continue;
            };
            let cell = node.key_buckets.get(name).and_then(|k| k.cells.get(value));
            let by = || HeldBy::Key {
                leaf,
                name: name.clone(),
                value: value.to_owned(),
            };
            if let Some(v) = verdict(cell, limit, &by) {
                return Some(v);
            }
        }
        None
    }

    /// Spends one token of every limit on `job`, dispatched at `now`. Allocates only
    /// for a bucket it makes.
    pub(crate) fn spend_rate_tokens(&mut self, leaf: QueueId, job: JobKey, now: Timestamp) {
        let restored_at = self.rate_limits_restored_at;
        let handler = match &self.jobs[job].spec.kind {
            JobKind::Function { handler, .. }
            | JobKind::Stored {
                handler: Some(handler),
            } => Some(handler),
            JobKind::Command(_) | JobKind::Stored { handler: None } => None,
        };
        if let Some(handler) = handler
            && let Some(limit) = self.config.handler_rate_limits.get(&**handler)
        {
            match self.handler_buckets.get_mut(&**handler) {
                Some(cell) => cell.bucket.spend(limit, now),
                None => {
                    let mut bucket = new_bucket(restored_at, limit);
                    bucket.spend(limit, now);
                    let cell = Cell { bucket, hold: None };
                    self.handler_buckets.insert(handler.clone(), cell);
                }
            }
        }
        if self.node(leaf).config.has_rate_limits() {
            let seed = self.seed;
            let keys = self.jobs[job].spec.keys();
            let node = self.queues[leaf.0 as usize]
                .as_mut()
                .expect("a leaf dispatching is live");
            if let Some(limit) = &node.config.rate_limit {
                node.rate_bucket
                    .get_or_insert_with(|| new_bucket(restored_at, limit))
                    .spend(limit, now);
            }
            for (name, limit) in &node.config.key_limits {
                let Some(value) = keys.get(name) else {
                    continue;
                };
                if !node.key_buckets.contains_key(name) {
                    node.key_buckets.insert(
                        name.clone(),
                        KeyBuckets {
                            cells: crate::hashing::map(seed),
                            sweep_at: MIN_SWEEP_AT,
                        },
                    );
                }
                let named = node
                    .key_buckets
                    .get_mut(name)
                    .expect("inserted just above if missing");
                if let Some(cell) = named.cells.get_mut(value) {
                    cell.bucket.spend(limit, now);
                    continue;
                }
                if named.cells.len() >= named.sweep_at {
                    named
                        .cells
                        .retain(|_, c| c.hold.is_some() || !c.bucket.is_full(now));
                    named.sweep_at = (named.cells.len() * 2).max(MIN_SWEEP_AT);
                }
                let mut bucket = new_bucket(restored_at, limit);
                bucket.spend(limit, now);
                named
                    .cells
                    .insert(value.to_owned(), Cell { bucket, hold: None });
            }
        }
        if let Some(hold) = self.released.remove(&job) {
            self.give_back_done(hold, now);
        }
    }

    /// Holds `leaf` back until `until`, when a timer lets it dispatch again; its next
    /// job says so.
    pub(crate) fn hold_for_rate_limit(&mut self, leaf: QueueId, job: JobKey, until: Timestamp) {
        let node = self.node_mut(leaf);
        node.rate_held_until = Some(until);
        node.rate_held_job = Some(job);
        self.refresh_up(leaf);
        self.timers.set(until, Timer::RateLimit(leaf));
        // Its record says so, for whoever reads the job meanwhile.
        self.effects.records.push(Record::Job(self.jobs[job].id));
    }

    /// Sets the leaf's next job aside in the hold of the limit `by`, probably until
    /// `until`: the jobs behind it go on.
    pub(crate) fn set_aside(
        &mut self,
        leaf: QueueId,
        job: JobKey,
        (until, by, limit): (Timestamp, HeldBy, RateLimit),
        now: Timestamp,
    ) {
        self.node_mut(leaf).ready.pop_head();
        self.refresh_up(leaf);
        self.jobs[job].waiting = Waiting::RateLimited;
        self.held_until.insert(job, until);
        self.effects.records.push(Record::Job(self.jobs[job].id));
        let given_back = self.released.remove(&job);
        let cell = self
            .cell_mut(&by, &limit, now)
            .expect("the leaf being scheduled is live");
        let bucket = cell.bucket;
        let existing = cell.hold;
        // Given back by this very hold and held again: back to its front, it is the
        // oldest there. Given back by another: that one gives back its next.
        let again = given_back.is_some() && given_back == existing;
        if let Some(other) = given_back.filter(|_| !again) {
            self.give_back_done(other, now);
        }
        let hold = match existing {
            Some(hold) => hold,
            None => {
                let hold = self.holds.insert(Hold {
                    jobs: VecDeque::new(),
                    by: by.clone(),
                    limit,
                    armed: false,
                    out: None,
                });
                if let Some(cell) = self.cell_mut(&by, &limit, now) {
                    cell.hold = Some(hold);
                }
                hold
            }
        };
        let entry = &mut self.holds[hold];
        if again {
            entry.jobs.push_front(job);
            entry.out = None;
        } else {
            entry.jobs.push_back(job);
        }
        if !entry.armed && entry.out.is_none() {
            entry.armed = true;
            let at = bucket.limited_until(&limit, now).unwrap_or(now);
            self.timers.set(at, Timer::GiveBack(hold));
        }
    }

    /// A hold's next job may start: give it back to the front of its leaf.
    pub(crate) fn give_back(&mut self, hold: HoldKey) {
        let Some(entry) = self.holds.get_mut(hold) else {
            return;
        };
        entry.armed = false;
        if entry.out.is_some() {
            return;
        }
        let next = loop {
            let Some(job) = entry.jobs.pop_front() else {
                break None;
            };
            let live = self
                .jobs
                .get(job)
                .is_some_and(|j| j.state == JobState::Pending && j.waiting == Waiting::RateLimited);
            if live {
                break Some(job);
            }
        };
        let Some(job) = next else {
            self.drop_hold(hold);
            return;
        };
        entry.out = Some(job);
        self.released.insert(job, hold);
        self.held_until.remove(&job);
        let j = &mut self.jobs[job];
        j.waiting = Waiting::Ready;
        let leaf = j.queue;
        self.enqueue_ready(leaf, job, true);
        self.refresh_up(leaf);
        self.head_changed(leaf);
    }

    /// The job a hold gave back was dispatched, held again elsewhere or went away: the
    /// hold gives the next one back when its bucket allows.
    pub(crate) fn give_back_done(&mut self, hold: HoldKey, now: Timestamp) {
        let Some(entry) = self.holds.get(hold) else {
            return;
        };
        let by = entry.by.clone();
        let limit = entry.limit;
        let at = self
            .cell(&by)
            .and_then(|c| c.bucket.limited_until(&limit, now))
            .unwrap_or(now);
        let entry = &mut self.holds[hold];
        entry.out = None;
        if entry.jobs.is_empty() {
            self.drop_hold(hold);
            return;
        }
        if !entry.armed {
            entry.armed = true;
            self.timers.set(at, Timer::GiveBack(hold));
        }
    }

    fn drop_hold(&mut self, hold: HoldKey) {
        let Some(entry) = self.holds.remove(hold) else {
            return;
        };
        if let Some(out) = entry.out {
            self.released.remove(&out);
        }
        let cell = match &entry.by {
            HeldBy::Handler(handler) => self.handler_buckets.get_mut(handler),
            HeldBy::Key { leaf, name, value } => self
                .queues
                .get_mut(leaf.0 as usize)
                .and_then(Option::as_mut)
                .and_then(|node| node.key_buckets.get_mut(name))
                .and_then(|named| named.cells.get_mut(value)),
        };
        if let Some(cell) = cell.filter(|c| c.hold == Some(hold)) {
            cell.hold = None;
        }
    }

    /// A job leaves the rate limits' bookkeeping (it finished, or was set aside as too
    /// big for any worker).
    pub(crate) fn forget_rate_limited(&mut self, job: JobKey, now: Timestamp) {
        self.held_until.remove(&job);
        if let Some(hold) = self.released.remove(&job) {
            self.give_back_done(hold, now);
        }
    }

    /// Gives back every job held by the key limits of `leaf` (their settings changed).
    pub(crate) fn release_key_holds(&mut self, leaf: QueueId) {
        let holds: Vec<HoldKey> = self
            .holds
            .iter()
            .filter(|(_, h)| matches!(h.by, HeldBy::Key { leaf: l, .. } if l == leaf))
            .map(|(k, _)| k)
            .collect();
        for hold in holds {
            let jobs: Vec<JobKey> = self.holds[hold].jobs.drain(..).collect();
            for job in jobs.into_iter().rev() {
                let live = self.jobs.get(job).is_some_and(|j| {
                    j.state == JobState::Pending && j.waiting == Waiting::RateLimited
                });
                if live {
                    self.held_until.remove(&job);
                    let j = &mut self.jobs[job];
                    j.waiting = Waiting::Ready;
                    self.enqueue_ready(leaf, job, true);
                }
            }
            self.drop_hold(hold);
        }
        self.refresh_up(leaf);
        self.head_changed(leaf);
    }

    /// Until when a rate limit holds job `id` back, while one does.
    pub fn rate_limited_until(&self, id: JobId) -> Option<Timestamp> {
        self.rate_limited_until_of(*self.job_ids.get(&id)?)
    }

    /// [`Self::rate_limited_until`] of the job at `key`.
    pub(crate) fn rate_limited_until_of(&self, key: JobKey) -> Option<Timestamp> {
        if let Some(until) = self.held_until.get(&key) {
            return Some(*until);
        }
        let node = self.queues.get(self.jobs[key].queue.0 as usize)?.as_ref()?;
        if node.rate_held_job == Some(key) {
            node.rate_held_until
        } else {
            None
        }
    }

    /// A held leaf's limit may allow its next job now.
    pub(crate) fn rate_limit_due(&mut self, leaf: QueueId, now: Timestamp) {
        let Some(Some(node)) = self.queues.get_mut(leaf.0 as usize) else {
            return;
        };
        if node.rate_held_until.is_some_and(|until| until <= now) {
            node.rate_held_until = None;
            node.rate_held_job = None;
            self.refresh_up(leaf);
            self.dirty = true;
        }
    }

    /// How many per-key buckets a leaf holds now (for tests of their bound).
    pub fn key_bucket_count(&self, leaf: QueueId) -> usize {
        self.queues
            .get(leaf.0 as usize)
            .and_then(Option::as_ref)
            .map_or(0, |n| n.key_buckets.values().map(|k| k.cells.len()).sum())
    }

    /// How many jobs per-key and per-handler limits hold set aside now.
    pub fn rate_limited_job_count(&self) -> usize {
        self.held_until.len()
    }
}
