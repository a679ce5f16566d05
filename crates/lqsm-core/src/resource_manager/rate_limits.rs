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
use crate::jobs::JobKey;
use crate::rate_limits::{Bucket, RateLimit};
use crate::timers::Timer;

/// Fewest buckets of one key name kept before a sweep of full ones.
const MIN_SWEEP_AT: usize = 64;

/// The buckets of one key name of a leaf, by key value.
#[derive(Debug)]
pub(crate) struct KeyBuckets {
    buckets: HashMap<String, Bucket>,
    /// Sweep full buckets when this many are held.
    sweep_at: usize,
}

impl ResourceManager {
    /// A bucket seen for the first time: full, or, within one burst of a restore, as
    /// empty as it may have been left before the restart.
    fn new_bucket(&self, limit: &RateLimit) -> Bucket {
        match self.rate_limits_restored_at {
            Some(at) => Bucket::emptied_at(at, limit),
            None => Bucket::default(),
        }
    }

    /// The handler's cluster-wide limit, if the job has a handler that has one.
    fn handler_limit(&self, job: JobKey) -> Option<(&str, &RateLimit)> {
        if self.config.handler_limits.is_empty() {
            return None;
        }
        let handler = self.jobs[job].spec.kind.handler()?;
        self.config
            .handler_limits
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
                .and_then(|k| k.buckets.get(value.as_str()));
            consider(bucket, limit);
        }
        until
    }

    /// Spends one token of every limit on `job`, dispatched at `now`.
    pub(crate) fn spend_rate_tokens(&mut self, leaf: QueueId, job: JobKey, now: Timestamp) {
        if let Some((name, limit)) = self.handler_limit(job) {
            let limit = *limit;
            let mut bucket = self
                .handler_buckets
                .get(name)
                .copied()
                .unwrap_or_else(|| self.new_bucket(&limit));
            bucket.spend(&limit, now);
            let name = self.jobs[job]
                .spec
                .kind
                .handler()
                .map(std::sync::Arc::<str>::from)
                .expect("a job with a handler limit has a handler");
            self.handler_buckets.insert(name, bucket);
        }
        if !self.node(leaf).config.has_rate_limits() {
            return;
        }
        if let Some(limit) = self.node(leaf).config.rate_limit {
            let fresh = self.new_bucket(&limit);
            self.node_mut(leaf)
                .rate_bucket
                .get_or_insert(fresh)
                .spend(&limit, now);
        }
        let key_limits: Vec<(String, RateLimit, String)> = {
            let keys = self.jobs[job].spec.keys();
            self.node(leaf)
                .config
                .key_limits
                .iter()
                .filter_map(|(name, limit)| {
                    keys.get(name)
                        .map(|value| (name.clone(), *limit, value.clone()))
                })
                .collect()
        };
        for (name, limit, value) in key_limits {
            let fresh = self.new_bucket(&limit);
            let seed = self.seed;
            let named = self
                .node_mut(leaf)
                .key_buckets
                .entry(name)
                .or_insert_with(|| KeyBuckets {
                    buckets: crate::hashing::map(seed),
                    sweep_at: MIN_SWEEP_AT,
                });
            if !named.buckets.contains_key(value.as_str()) && named.buckets.len() >= named.sweep_at
            {
                // Full buckets are the same as new ones: dropping them changes nothing.
                named.buckets.retain(|_, b| !b.is_full(now));
                named.sweep_at = (named.buckets.len() * 2).max(MIN_SWEEP_AT);
            }
            named
                .buckets
                .entry(value)
                .or_insert(fresh)
                .spend(&limit, now);
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
