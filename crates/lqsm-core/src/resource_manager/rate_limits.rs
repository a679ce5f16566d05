//! Rate limits in the scheduler: a leaf's own limit, its per-key limits and the
//! cluster's per-handler limits, each a GCRA bucket ([`crate::rate_limits`]).
//!
//! A token is spent when an attempt is dispatched (retries included), never before. A
//! leaf whose next job some limit holds back sits out until the instant the limit allows
//! it, woken by one timer: no pass looks at it meanwhile, so a limited queue costs
//! nothing while it waits. Order within a leaf stays strict, as for a job too big for the
//! free room: the next job waits for its limit, and the jobs behind it wait with it.
//!
//! Buckets are made at a leaf's (or handler's, or key value's) first dispatch. One that
//! is full again is the same as a new one: per-key buckets are swept of full ones each
//! time their number doubles, so their memory follows the keys dispatched within one
//! burst's time, not every key ever seen. Buckets are not stored: after a restart every
//! bucket starts *empty* (its next start one interval after the restore), which keeps
//! the limit across the restart whatever was spent just before it, at the cost of at
//! most one burst.

use super::ResourceManager;
use crate::effects::Record;
use crate::hashing::HashMap;
use crate::ids::{JobId, QueueId, Timestamp};
use crate::jobs::{JobKey, JobKind};
use crate::rate_limits::{Bucket, RateLimit};
use crate::timers::Timer;

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

/// The buckets of one key name of a leaf, by key value.
#[derive(Debug)]
pub(crate) struct KeyBuckets {
    buckets: HashMap<String, Bucket>,
    /// Sweep full buckets when this many are held.
    sweep_at: usize,
}

impl ResourceManager {
    /// A bucket seen for the first time (see [`new_bucket`]).
    fn new_bucket(&self, limit: &RateLimit) -> Bucket {
        new_bucket(self.rate_limits_restored_at, limit)
    }

    /// The handler's cluster-wide limit, if the job has a handler that has one.
    fn handler_limit(&self, job: JobKey) -> Option<(&str, &RateLimit)> {
        if self.config.handler_rate_limits.is_empty() {
            return None;
        }
        let handler = self.jobs[job].spec.kind.handler()?;
        self.config
            .handler_rate_limits
            .get_key_value(handler)
            .map(|(h, l)| (h.as_str(), l))
    }

    /// `None` when every limit on `job` allows it to start at `now`; else the first
    /// instant they all do (as far as is known now).
    pub(crate) fn limits_allow_at(
        &self,
        leaf: QueueId,
        job: JobKey,
        now: Timestamp,
    ) -> Option<Timestamp> {
        let node = self.node(leaf);
        let handler = self.handler_limit(job);
        if !node.config.has_rate_limits() && handler.is_none() {
            return None;
        }
        let mut until: Option<Timestamp> = None;
        let mut consider = |bucket: Option<&Bucket>, limit: &RateLimit| {
            let fresh;
            let bucket = match bucket {
                Some(b) => b,
                None => {
                    fresh = self.new_bucket(limit);
                    &fresh
                }
            };
            if let Some(at) = bucket.limited_until(limit, now) {
                until = until.max(Some(at));
            }
        };
        if let Some(limit) = &node.config.rate_limit {
            consider(node.rate_bucket.as_ref(), limit);
        }
        if let Some((name, limit)) = handler {
            consider(self.handler_buckets.get(name), limit);
        }
        let keys = self.jobs[job].spec.keys();
        for (name, limit) in &node.config.key_limits {
            let Some(value) = keys.get(name) else {
                continue;
            };
            let bucket = node
                .key_buckets
                .get(name)
                .and_then(|k| k.buckets.get(value));
            consider(bucket, limit);
        }
        until
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
                Some(bucket) => bucket.spend(limit, now),
                None => {
                    let mut bucket = new_bucket(restored_at, limit);
                    bucket.spend(limit, now);
                    self.handler_buckets.insert(handler.clone(), bucket);
                }
            }
        }
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
                        buckets: crate::hashing::map(seed),
                        sweep_at: MIN_SWEEP_AT,
                    },
                );
            }
            let named = node
                .key_buckets
                .get_mut(name)
                .expect("inserted just above if missing");
            if let Some(bucket) = named.buckets.get_mut(value) {
                bucket.spend(limit, now);
                continue;
            }
            if named.buckets.len() >= named.sweep_at {
                // Full buckets are the same as new ones: dropping them changes nothing.
                named.buckets.retain(|_, b| !b.is_full(now));
                named.sweep_at = (named.buckets.len() * 2).max(MIN_SWEEP_AT);
            }
            let mut bucket = new_bucket(restored_at, limit);
            bucket.spend(limit, now);
            named.buckets.insert(value.to_owned(), bucket);
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

    /// Until when a rate limit holds job `id` back, while one does.
    pub fn rate_limited_until(&self, id: JobId) -> Option<Timestamp> {
        let key = *self.job_ids.get(&id)?;
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
            .map_or(0, |n| n.key_buckets.values().map(|k| k.buckets.len()).sum())
    }
}
