//! Worker autoscaling, the core's half: how many workers each pool should have, and
//! which ones to let go. Pools are sets of workers recognised by their labels; what
//! the core sees of one ([`PoolSnapshot`], from [`ResourceManager::pool_snapshot`]) is
//! handed to an [`AutoscalingPolicy`] chosen by name, and the [`Autoscaler`] turns its
//! answer into [`ScaleAction`]s under the rules that hold whatever a policy says:
//! `min`/`max`, cooldowns, only idle workers drained, nothing started twice.
//!
//! Like the rest of the core this does no I/O and reads no clock. The server calls
//! [`Autoscaler::evaluate`] every few seconds and carries the actions out itself: a
//! provider starts processes (then [`Autoscaler::started`] says how many), and a drain
//! is [`ResourceManager::drain_worker`] followed by stopping the process once it runs
//! nothing.

use crate::ids::{ConstraintId, Timestamp, WorkerId};
use crate::jobs::Waiting;
use crate::policy::Policies;
use crate::queues::QueueState;
use crate::resource_manager::ResourceManager;
use crate::resources::Resources;
use crate::workers::WorkerState;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::time::Duration;
use thiserror::Error;

/// The built-in autoscaling policy: enough workers for the waiting jobs at a target
/// number per worker, plus enough for the running ones at a target utilisation.
pub const TARGET_BACKLOG: &str = "target-backlog";

/// How many decisions [`Autoscaler::events`] keeps by default.
pub const EVENTS_KEPT: usize = 200;

/// A pool of workers the autoscaler sizes.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolSpec {
    /// Its name, unique among pools.
    pub name: String,
    /// A worker belongs to the pool when it carries all these labels (empty: every
    /// worker). New workers the provider starts must carry them.
    pub labels: BTreeMap<String, String>,
    /// Fewest workers kept; 0 lets the pool scale to zero.
    pub min: u32,
    /// Most workers; at least 1.
    pub max: u32,
    /// What one new worker offers: a job that does not fit in it is no reason to
    /// start one.
    pub worker_capacity: Resources,
    /// Waiting jobs per worker the built-in policy aims at.
    pub target_backlog_per_worker: f64,
    /// Share of the workers' capacity the built-in policy aims to keep in use
    /// (above 0, at most 1): the rest is headroom.
    pub target_utilisation: f64,
    /// Least time between two scale-ups.
    pub scale_up_cooldown: Duration,
    /// Least time between a scale-down and the scale event before it (either way), so
    /// that workers just started for a burst are not let go at once.
    pub scale_down_cooldown: Duration,
    /// A worker is drained only after running nothing for this long.
    pub idle_before_scale_down: Duration,
    /// Workers asked for and not registered within this time are counted no more (the
    /// provider failed or they died starting); a drain asked for and not seen taken
    /// within it is forgotten too.
    pub registration_timeout: Duration,
    /// The name of its autoscaling policy in [`Policies`].
    pub policy: String,
}

impl Default for PoolSpec {
    fn default() -> Self {
        Self {
            name: String::new(),
            labels: BTreeMap::new(),
            min: 0,
            max: 1,
            worker_capacity: Resources::cores(1, 1024),
            target_backlog_per_worker: 2.0,
            target_utilisation: 0.8,
            scale_up_cooldown: Duration::from_secs(30),
            scale_down_cooldown: Duration::from_secs(120),
            idle_before_scale_down: Duration::from_secs(300),
            registration_timeout: Duration::from_secs(300),
            policy: TARGET_BACKLOG.to_owned(),
        }
    }
}

/// A pool setting out of range, named as the config names it.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("pool `{pool}`: {field}: {reason}")]
pub struct PoolSpecError {
    /// The pool's name (empty when the name is what is wrong).
    pub pool: String,
    /// The offending field (`max`, `worker_capacity.cpu`, `target_utilisation`).
    pub field: String,
    /// What is wrong, for a person.
    pub reason: String,
}

impl PoolSpec {
    /// A pool with the default targets and cooldowns.
    pub fn new(name: &str, worker_capacity: Resources, min: u32, max: u32) -> Self {
        Self {
            name: name.to_owned(),
            worker_capacity,
            min,
            max,
            ..Self::default()
        }
    }

    /// The same pool, recognising its workers by one more label.
    pub fn with_label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_owned(), value.to_owned());
        self
    }

    /// Whether a worker with these labels belongs to the pool.
    pub fn contains(&self, labels: &BTreeMap<String, String>) -> bool {
        self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
    }

    /// Checks every setting; the error names the first bad one.
    pub fn validate(&self) -> Result<(), PoolSpecError> {
        let bad = |field: &str, reason: String| PoolSpecError {
            pool: self.name.clone(),
            field: field.to_owned(),
            reason,
        };
        if self.name.is_empty() || self.name.len() > 128 {
            return Err(bad("name", "must be 1 to 128 characters".into()));
        }
        if self.max == 0 {
            return Err(bad(
                "max",
                "must be at least 1 (a min of 0 lets the pool scale to zero)".into(),
            ));
        }
        if self.min > self.max {
            return Err(bad(
                "min",
                format!("{} is above max ({})", self.min, self.max),
            ));
        }
        self.worker_capacity
            .check("worker_capacity")
            .map_err(|b| bad(&b.field, b.reason))?;
        let tbpw = self.target_backlog_per_worker;
        if !tbpw.is_finite() || tbpw <= 0.0 {
            return Err(bad(
                "target_backlog_per_worker",
                format!("{tbpw} is not a number of jobs above 0"),
            ));
        }
        let u = self.target_utilisation;
        if !u.is_finite() || u <= 0.0 || u > 1.0 {
            return Err(bad(
                "target_utilisation",
                format!("{u} is not a fraction above 0 and at most 1"),
            ));
        }
        if self.registration_timeout.is_zero() {
            return Err(bad("registration_timeout", "must be above zero".into()));
        }
        if self.policy.is_empty() {
            return Err(bad("policy", "must name an autoscaling policy".into()));
        }
        Ok(())
    }
}

/// Checks a set of pools as a server loads them: each valid, names unique, every
/// policy registered.
pub fn validate_pools(pools: &[PoolSpec], policies: &Policies) -> Result<(), PoolSpecError> {
    let mut names = BTreeSet::new();
    for pool in pools {
        pool.validate()?;
        if !names.insert(pool.name.as_str()) {
            return Err(PoolSpecError {
                pool: pool.name.clone(),
                field: "name".into(),
                reason: "another pool has this name".into(),
            });
        }
        if let Err(known) = policies.autoscaling(&pool.policy) {
            return Err(PoolSpecError {
                pool: pool.name.clone(),
                field: "policy".into(),
                reason: format!("unknown policy `{}` (known: {known})", pool.policy),
            });
        }
    }
    Ok(())
}

/// One worker of a pool as the autoscaler sees it.
#[derive(Clone, PartialEq, Debug)]
pub struct PoolWorker {
    /// Its id.
    pub id: WorkerId,
    /// Its name.
    pub name: String,
    /// Active or draining (lost workers are not in the pool).
    pub state: WorkerState,
    /// What its attempts hold.
    pub used: Resources,
    /// What it offers.
    pub capacity: Resources,
    /// How many attempts it holds.
    pub attempts: u32,
    /// Since when it has run nothing; `None` while it runs something.
    pub idle_since: Option<Timestamp>,
}

impl PoolWorker {
    /// How long it has run nothing by `now`, if it runs nothing.
    pub fn idle_for(&self, now: Timestamp) -> Option<Duration> {
        self.idle_since.map(|since| now.since(since))
    }
}

/// What the core sees of a pool at one instant.
#[derive(Clone, PartialEq, Debug, Default)]
pub struct PoolSnapshot {
    /// The instant.
    pub at: Timestamp,
    /// Its active and draining workers, by id.
    pub workers: Vec<PoolWorker>,
    /// Jobs ready to run that a new worker of the pool could run: its labels satisfy
    /// the job's selector and the job's request fits in the pool's `worker_capacity`.
    /// Left out: jobs delayed or backing off, blocked by parents, held by a rate limit
    /// or for one worker (pinned), in a draining queue, or beyond their queue's
    /// running limit. A job several pools could run counts in each.
    pub backlog: u64,
    /// What those jobs request in all.
    pub backlog_resources: Resources,
    /// Attempts the pool's workers hold.
    pub running: u64,
}

impl PoolSnapshot {
    /// Workers taking work.
    pub fn active(&self) -> u32 {
        count(
            self.workers
                .iter()
                .filter(|w| w.state == WorkerState::Active),
        )
    }

    /// Workers finishing their attempts before they go.
    pub fn draining(&self) -> u32 {
        count(
            self.workers
                .iter()
                .filter(|w| w.state == WorkerState::Draining),
        )
    }

    /// Active workers running something.
    pub fn busy(&self) -> u32 {
        count(
            self.workers
                .iter()
                .filter(|w| w.state == WorkerState::Active && w.attempts > 0),
        )
    }

    /// How many workers' worth of the active workers is in use: each one's dominant
    /// share of its own capacity, summed (3 workers half used: 1.5).
    pub fn in_use(&self) -> f64 {
        self.workers
            .iter()
            .filter(|w| w.state == WorkerState::Active)
            .map(|w| w.used.dominant_share(&w.capacity))
            .filter(|share| share.is_finite())
            .sum()
    }
}

fn count<T>(items: impl Iterator<Item = T>) -> u32 {
    u32::try_from(items.count()).unwrap_or(u32::MAX)
}

/// A policy's answer: the number of active workers the pool should have, and why.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ScaleDecision {
    /// Workers wanted; the autoscaler holds it within the pool's `[min, max]`.
    pub desired: u32,
    /// A sentence for people, with the numbers behind it.
    pub reason: String,
}

/// Decides a pool's size. Pure: the same pool and snapshot give the same answer; the
/// [`Autoscaler`] applies the limits, cooldowns and the choice of workers to drain.
pub trait AutoscalingPolicy: Send + Sync + fmt::Debug {
    /// The name pools select it by.
    fn name(&self) -> &str;
    /// How many active workers `pool` should have, given what it looks like at `now`.
    fn decide(&self, pool: &PoolSpec, snapshot: &PoolSnapshot, now: Timestamp) -> ScaleDecision;
}

/// `ceil(backlog ÷ target_backlog_per_worker)` workers for the jobs that wait, plus
/// `ceil(in use ÷ target_utilisation)` for those that run, within `[min, max]`; no
/// worker at all when nothing waits and nothing runs.
#[derive(Debug, Default)]
pub struct TargetBacklog;

impl AutoscalingPolicy for TargetBacklog {
    fn name(&self) -> &str {
        TARGET_BACKLOG
    }

    fn decide(&self, pool: &PoolSpec, snapshot: &PoolSnapshot, _now: Timestamp) -> ScaleDecision {
        // A spec that skipped validation must not divide by zero or wrap.
        let per_worker = pool.target_backlog_per_worker.max(f64::MIN_POSITIVE);
        let utilisation = pool.target_utilisation.clamp(f64::MIN_POSITIVE, 1.0);
        let for_backlog = whole_workers(snapshot.backlog as f64 / per_worker);
        let in_use = snapshot.in_use();
        // A small tolerance, so that 4 workers' worth at 100% wanted is 4, not 5.
        let for_running = whole_workers(in_use / utilisation - 1e-9);
        let mut parts = Vec::new();
        if snapshot.backlog > 0 {
            parts.push(format!(
                "{} {}, {} per worker wanted: {}",
                snapshot.backlog,
                if snapshot.backlog == 1 {
                    "job waits"
                } else {
                    "jobs wait"
                },
                pool.target_backlog_per_worker,
                workers(for_backlog),
            ));
        }
        if in_use > 0.0 {
            parts.push(format!(
                "{in_use:.1} workers' worth in use, {:.0}% utilisation wanted: {}",
                utilisation * 100.0,
                workers(for_running),
            ));
        }
        let raw = for_backlog.saturating_add(for_running);
        let mut reason = match parts.len() {
            0 => "nothing waits or runs: 0 workers".to_owned(),
            1 => parts.remove(0),
            _ => format!("{}; {} in all", parts.join("; "), workers(raw)),
        };
        let desired = raw.clamp(pool.min, pool.max.max(pool.min));
        if raw > desired {
            reason.push_str(&format!("; held at max {}", pool.max));
        } else if raw < desired {
            reason.push_str(&format!("; kept at min {}", pool.min));
        }
        ScaleDecision { desired, reason }
    }
}

/// `n` workers' worth rounded up to whole workers: 0 for nothing (or NaN), and at most
/// `u32::MAX` — for policies that turn a load into a count.
pub fn whole_workers(n: f64) -> u32 {
    if n.is_nan() || n <= 0.0 {
        0
    } else if n >= f64::from(u32::MAX) {
        u32::MAX
    } else {
        n.ceil() as u32
    }
}

fn workers(n: u32) -> String {
    if n == 1 {
        "1 worker".to_owned()
    } else {
        format!("{n} workers")
    }
}

/// A duration as people read it in a reason: `45 s`, `5 min`, `2 h`.
fn human(d: Duration) -> String {
    let s = d.as_secs();
    if s < 120 {
        format!("{} s", d.as_secs_f64().ceil())
    } else if s < 7200 {
        format!("{} min", s.div_ceil(60))
    } else {
        format!("{} h", s.div_ceil(3600))
    }
}

/// What the server should do for a pool.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum ScaleAction {
    /// Start `count` new workers carrying the pool's labels, then report them with
    /// [`Autoscaler::started`].
    Start {
        /// The pool.
        pool: String,
        /// How many workers.
        count: u32,
        /// Why.
        reason: String,
    },
    /// Drain these workers ([`ResourceManager::drain_worker`]) and stop them: each
    /// has run nothing for the pool's `idle_before_scale_down`.
    Drain {
        /// The pool.
        pool: String,
        /// The workers, idlest first.
        workers: Vec<WorkerId>,
        /// Why.
        reason: String,
    },
}

/// What a recorded decision was.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScaleEventKind {
    /// Workers asked for.
    ScaleUp,
    /// Idle workers drained.
    ScaleDown,
    /// More workers wanted, and the pool is at its max.
    AtMax,
    /// A change wanted and held back by a cooldown.
    Cooldown,
    /// Fewer workers wanted, and none idle long enough to drain.
    NoIdleWorker,
    /// Workers asked for did not register in time and are counted no more.
    StartsExpired,
    /// The pool's spec is invalid or names an unknown policy: it is left alone.
    Invalid,
}

impl fmt::Display for ScaleEventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ScaleEventKind::ScaleUp => "scale_up",
            ScaleEventKind::ScaleDown => "scale_down",
            ScaleEventKind::AtMax => "at_max",
            ScaleEventKind::Cooldown => "cooldown",
            ScaleEventKind::NoIdleWorker => "no_idle_worker",
            ScaleEventKind::StartsExpired => "starts_expired",
            ScaleEventKind::Invalid => "invalid",
        })
    }
}

/// One recorded decision.
#[derive(Clone, PartialEq, Debug)]
pub struct ScaleEvent {
    /// When.
    pub at: Timestamp,
    /// The pool.
    pub pool: String,
    /// What it was.
    pub kind: ScaleEventKind,
    /// Workers counted before: active ones not being let go, plus those asked for
    /// and not yet registered.
    pub from: u32,
    /// Workers wanted (for a scale-down: those left).
    pub to: u32,
    /// Why, with the numbers.
    pub reason: String,
}

/// What the autoscaler knows of a pool, for views.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct PoolStatus {
    /// The size last decided.
    pub desired: Option<u32>,
    /// Workers asked for and not yet registered.
    pub pending_starts: u32,
    /// The last scale-up.
    pub last_scale_up: Option<Timestamp>,
    /// The last scale-down.
    pub last_scale_down: Option<Timestamp>,
}

#[derive(Debug, Default)]
struct PoolState {
    last_up: Option<Timestamp>,
    last_down: Option<Timestamp>,
    /// Workers asked for and not yet seen, oldest request first.
    pending: VecDeque<(Timestamp, u32)>,
    /// The workers of the pool at the last evaluation: one not among them registered
    /// since, and settles the oldest pending start.
    known: BTreeSet<WorkerId>,
    /// Drains handed out and not yet seen taken, with when.
    drains_asked: BTreeMap<WorkerId, Timestamp>,
    /// The last refusal recorded, so that one held for many evaluations is recorded once.
    last_note: Option<(ScaleEventKind, u32, u32)>,
    desired: Option<u32>,
}

impl PoolState {
    fn pending_total(&self) -> u32 {
        self.pending
            .iter()
            .fold(0u32, |sum, (_, n)| sum.saturating_add(*n))
    }

    /// `arrived` new workers registered: they are the oldest starts.
    fn settle(&mut self, mut arrived: u32) {
        while arrived > 0 {
            let Some(front) = self.pending.front_mut() else {
                return;
            };
            let taken = front.1.min(arrived);
            front.1 -= taken;
            arrived -= taken;
            if front.1 == 0 {
                self.pending.pop_front();
            }
        }
    }

    /// Drops the starts older than `timeout`; returns how many.
    fn expire(&mut self, now: Timestamp, timeout: Duration) -> u32 {
        let mut expired = 0u32;
        while let Some((at, n)) = self.pending.front() {
            if now < at.after(timeout) {
                break;
            }
            expired = expired.saturating_add(*n);
            self.pending.pop_front();
        }
        expired
    }
}

/// The autoscaling state machine: per pool, the last scale events, the workers asked
/// for and not yet registered, the drains handed out; and a bounded record of
/// decisions. Sans-I/O: the server feeds it the time and carries out its actions.
#[derive(Debug)]
pub struct Autoscaler {
    pools: BTreeMap<String, PoolState>,
    events: VecDeque<ScaleEvent>,
    events_kept: usize,
}

impl Default for Autoscaler {
    fn default() -> Self {
        Self::new()
    }
}

impl Autoscaler {
    /// An autoscaler that has decided nothing yet, keeping [`EVENTS_KEPT`] events.
    pub fn new() -> Self {
        Self::with_events_kept(EVENTS_KEPT)
    }

    /// The same, keeping the last `n` events (at least one).
    pub fn with_events_kept(n: usize) -> Self {
        Self {
            pools: BTreeMap::new(),
            events: VecDeque::new(),
            events_kept: n.max(1),
        }
    }

    /// Decides, for every pool, what to start or drain at `now`. Pools no longer
    /// listed are forgotten; a pool whose spec is invalid or names an unknown policy is
    /// left alone (and the reason recorded once). The rules hold whatever a policy
    /// answers: the size stays within `[min, max]`; a scale-up waits for
    /// `scale_up_cooldown` after the previous one, a scale-down for
    /// `scale_down_cooldown` after any scale event; workers asked for and not yet
    /// registered count as workers (until `registration_timeout`); only active
    /// workers idle for `idle_before_scale_down` are drained, idlest first, never one
    /// already asked to drain, never below `min`.
    pub fn evaluate(
        &mut self,
        rm: &ResourceManager,
        pools: &[PoolSpec],
        policies: &Policies,
        now: Timestamp,
    ) -> Vec<ScaleAction> {
        self.pools
            .retain(|name, _| pools.iter().any(|p| &p.name == name));
        let mut actions = Vec::new();
        for spec in pools {
            if let Some(action) = self.evaluate_pool(rm, spec, policies, now) {
                actions.push(action);
            }
        }
        actions
    }

    fn evaluate_pool(
        &mut self,
        rm: &ResourceManager,
        spec: &PoolSpec,
        policies: &Policies,
        now: Timestamp,
    ) -> Option<ScaleAction> {
        let policy = spec.validate().map_err(|e| e.to_string()).and_then(|()| {
            policies
                .autoscaling(&spec.policy)
                .map_err(|known| format!("unknown policy `{}` (known: {known})", spec.policy))
        });
        let policy = match policy {
            Ok(policy) => policy,
            Err(reason) => {
                self.note(&spec.name, now, ScaleEventKind::Invalid, 0, 0, reason);
                return None;
            }
        };
        let snapshot = rm.pool_snapshot(spec, now);
        let state = self.pools.entry(spec.name.clone()).or_default();

        let present: BTreeSet<WorkerId> = snapshot.workers.iter().map(|w| w.id).collect();
        let arrived = count(present.difference(&state.known));
        state.settle(arrived);
        state.known = present;
        let expired = state.expire(now, spec.registration_timeout);
        // A drain takes effect when the worker shows as draining (or goes); one the
        // server never carried out is forgotten, so the worker can be chosen again.
        state.drains_asked.retain(|id, at| {
            now < at.after(spec.registration_timeout)
                && snapshot
                    .workers
                    .iter()
                    .any(|w| w.id == *id && w.state == WorkerState::Active)
        });
        let active =
            count(snapshot.workers.iter().filter(|w| {
                w.state == WorkerState::Active && !state.drains_asked.contains_key(&w.id)
            }));
        let pending = state.pending_total();
        let current = active.saturating_add(pending);
        if expired > 0 {
            let reason = format!(
                "{} asked for did not register within {}: counted no more",
                workers(expired),
                human(spec.registration_timeout)
            );
            self.record(
                &spec.name,
                now,
                ScaleEventKind::StartsExpired,
                current.saturating_add(expired),
                current,
                reason,
            );
        }

        let decision = policy.decide(spec, &snapshot, now);
        let desired = decision.desired.clamp(spec.min, spec.max);
        let state = self.pools.entry(spec.name.clone()).or_default();
        state.desired = Some(desired);

        if desired > current {
            if let Some(wait) = cooldown_left(state.last_up, spec.scale_up_cooldown, now) {
                let reason = format!(
                    "{}; the scale-up cooldown holds it for {} more",
                    decision.reason,
                    human(wait)
                );
                self.note(
                    &spec.name,
                    now,
                    ScaleEventKind::Cooldown,
                    current,
                    desired,
                    reason,
                );
                return None;
            }
            state.last_up = Some(now);
            let count = desired - current;
            self.record(
                &spec.name,
                now,
                ScaleEventKind::ScaleUp,
                current,
                desired,
                decision.reason.clone(),
            );
            return Some(ScaleAction::Start {
                pool: spec.name.clone(),
                count,
                reason: decision.reason,
            });
        }

        if desired < current {
            let last_event = state.last_up.max(state.last_down);
            if let Some(wait) = cooldown_left(last_event, spec.scale_down_cooldown, now) {
                let reason = format!(
                    "{}; the scale-down cooldown holds it for {} more",
                    decision.reason,
                    human(wait)
                );
                self.note(
                    &spec.name,
                    now,
                    ScaleEventKind::Cooldown,
                    current,
                    desired,
                    reason,
                );
                return None;
            }
            // Workers on their way cannot be called back: what is drained now is at
            // most the excess, and never takes the active ones below `min`.
            let excess = (current - desired).min(active.saturating_sub(spec.min));
            if excess == 0 {
                state.last_note = None;
                return None;
            }
            let mut idle: Vec<(Timestamp, WorkerId)> = snapshot
                .workers
                .iter()
                .filter(|w| {
                    w.state == WorkerState::Active
                        && w.attempts == 0
                        && !state.drains_asked.contains_key(&w.id)
                })
                .filter_map(|w| w.idle_since.map(|since| (since, w.id)))
                .filter(|(since, _)| now.since(*since) >= spec.idle_before_scale_down)
                .collect();
            idle.sort_unstable();
            idle.truncate(excess as usize);
            if idle.is_empty() {
                let reason = format!(
                    "{}; no worker has been idle for {}",
                    decision.reason,
                    human(spec.idle_before_scale_down)
                );
                self.note(
                    &spec.name,
                    now,
                    ScaleEventKind::NoIdleWorker,
                    current,
                    desired,
                    reason,
                );
                return None;
            }
            let drained: Vec<WorkerId> = idle.iter().map(|(_, id)| *id).collect();
            for id in &drained {
                state.drains_asked.insert(*id, now);
            }
            state.last_down = Some(now);
            let n = count(drained.iter());
            let reason = format!(
                "{}; draining {} idle for {} or more",
                decision.reason,
                workers(n),
                human(spec.idle_before_scale_down)
            );
            self.record(
                &spec.name,
                now,
                ScaleEventKind::ScaleDown,
                current,
                current - n,
                reason.clone(),
            );
            return Some(ScaleAction::Drain {
                pool: spec.name.clone(),
                workers: drained,
                reason,
            });
        }

        if desired == spec.max && snapshot.backlog > 0 {
            let reason = format!(
                "at max {} while {} {}: {}",
                workers(spec.max),
                snapshot.backlog,
                if snapshot.backlog == 1 {
                    "job waits"
                } else {
                    "jobs wait"
                },
                decision.reason
            );
            self.note(
                &spec.name,
                now,
                ScaleEventKind::AtMax,
                current,
                desired,
                reason,
            );
        } else {
            state.last_note = None;
        }
        None
    }

    /// The server started `n` workers for `pool` at `now` (or asked its provider to):
    /// they count as the pool's until they register, or until the pool's
    /// `registration_timeout` passes.
    pub fn started(&mut self, pool: &str, n: u32, now: Timestamp) {
        if n == 0 {
            return;
        }
        let state = self.pools.entry(pool.to_owned()).or_default();
        state.pending.push_back((now, n));
    }

    /// Workers asked for in `pool` and not yet registered.
    pub fn pending_starts(&self, pool: &str) -> u32 {
        self.pools.get(pool).map_or(0, PoolState::pending_total)
    }

    /// What the autoscaler knows of `pool`, once it has seen it.
    pub fn status(&self, pool: &str) -> Option<PoolStatus> {
        self.pools.get(pool).map(|s| PoolStatus {
            desired: s.desired,
            pending_starts: s.pending_total(),
            last_scale_up: s.last_up,
            last_scale_down: s.last_down,
        })
    }

    /// The recorded decisions, oldest first: every scale-up and -down, and each
    /// refusal (at max, a cooldown, no idle worker, an invalid pool) once until the
    /// situation changes. Steady evaluations record nothing.
    pub fn events(&self) -> &VecDeque<ScaleEvent> {
        &self.events
    }

    /// The clock stepped by `by_ms` with no time passing (see
    /// [`ResourceManager::clock_jumped`]): cooldowns and registration timeouts are
    /// durations, so their starting points move with it.
    pub fn clock_jumped(&mut self, by_ms: i64) {
        let shift = |at: Timestamp| Timestamp(at.0.saturating_add_signed(by_ms));
        for state in self.pools.values_mut() {
            state.last_up = state.last_up.map(shift);
            state.last_down = state.last_down.map(shift);
            for (at, _) in &mut state.pending {
                *at = shift(*at);
            }
            for at in state.drains_asked.values_mut() {
                *at = shift(*at);
            }
        }
    }

    /// Records a refusal unless the same one (kind, from, to) was the pool's last.
    fn note(
        &mut self,
        pool: &str,
        now: Timestamp,
        kind: ScaleEventKind,
        from: u32,
        to: u32,
        reason: String,
    ) {
        let state = self.pools.entry(pool.to_owned()).or_default();
        if state.last_note == Some((kind, from, to)) {
            return;
        }
        state.last_note = Some((kind, from, to));
        self.push(ScaleEvent {
            at: now,
            pool: pool.to_owned(),
            kind,
            from,
            to,
            reason,
        });
    }

    fn record(
        &mut self,
        pool: &str,
        now: Timestamp,
        kind: ScaleEventKind,
        from: u32,
        to: u32,
        reason: String,
    ) {
        if let Some(state) = self.pools.get_mut(pool) {
            state.last_note = None;
        }
        self.push(ScaleEvent {
            at: now,
            pool: pool.to_owned(),
            kind,
            from,
            to,
            reason,
        });
    }

    fn push(&mut self, event: ScaleEvent) {
        if self.events.len() >= self.events_kept {
            self.events.pop_front();
        }
        self.events.push_back(event);
    }
}

/// How long a cooldown started at `since` still runs at `now`, if it does.
fn cooldown_left(since: Option<Timestamp>, cooldown: Duration, now: Timestamp) -> Option<Duration> {
    let ends = since?.after(cooldown);
    (now < ends).then(|| ends.since(now))
}

impl ResourceManager {
    /// What `spec`'s pool looks like at `now`: its workers (those carrying its labels,
    /// but lost ones) and the jobs waiting that a new worker of it could run (see
    /// [`PoolSnapshot::backlog`]).
    ///
    /// Cost: one look at every worker, and at every ready or set-aside job of the
    /// leaves that are not draining, stopping at a leaf's running limit: O(workers +
    /// leaves + waiting jobs), one slot read per job; the selector check is made once
    /// per constraint, and jobs without a selector (most) need none. With 100,000 jobs
    /// waiting it took 55 ms in an unoptimised (debug) build, several times less
    /// optimised; it runs on the scheduler's thread, which is why the server calls it
    /// every few seconds, not per request. Jobs delayed until an instant now passed
    /// count from the `tick` that releases them.
    pub fn pool_snapshot(&self, spec: &PoolSpec, now: Timestamp) -> PoolSnapshot {
        let mut snapshot = PoolSnapshot {
            at: now,
            ..PoolSnapshot::default()
        };
        for worker in self.workers.values() {
            if worker.state == WorkerState::Lost || !spec.contains(&worker.labels) {
                continue;
            }
            let attempts = u32::try_from(worker.attempts.len()).unwrap_or(u32::MAX);
            snapshot.running += u64::from(attempts);
            snapshot.workers.push(PoolWorker {
                id: worker.id,
                name: worker.name.clone(),
                state: worker.state,
                used: worker.used.clone(),
                capacity: worker.capacity.clone(),
                attempts,
                idle_since: worker.idle_since,
            });
        }
        snapshot.workers.sort_by_key(|w| w.id);

        let mut selector_ok: BTreeMap<ConstraintId, bool> = BTreeMap::new();
        for node in self.queues.iter().flatten() {
            if !node.is_leaf() || node.state == QueueState::Draining {
                continue;
            }
            // Jobs beyond the leaf's running limit would not start on any number of
            // new workers.
            let mut room = node.config.running_limit().map_or(u64::MAX, |limit| {
                u64::from(limit).saturating_sub(node.running)
            });
            let jobs = &self.jobs;
            let ready = node
                .ready
                .iter_live(|k| jobs.get(k).is_some_and(|j| j.waiting == Waiting::Ready));
            let parked = node
                .parked
                .iter()
                .copied()
                .filter(|k| jobs.get(*k).is_some_and(|j| j.waiting == Waiting::Parked));
            for key in ready.chain(parked) {
                if room == 0 {
                    break;
                }
                let Some(job) = jobs.get(key) else {
                    continue;
                };
                // A pinned job waits for its own worker: a new one cannot run it.
                if job.spec.pinned().is_some() || !job.spec.request.fits_in(&spec.worker_capacity) {
                    continue;
                }
                let selector = job.spec.selector();
                if !selector.is_empty()
                    && !*selector_ok
                        .entry(job.constraint)
                        .or_insert_with(|| spec.contains_selector(selector))
                {
                    continue;
                }
                room -= 1;
                snapshot.backlog += 1;
                snapshot.backlog_resources.add(&job.spec.request);
            }
        }
        snapshot
    }
}

impl PoolSpec {
    /// Whether a worker carrying exactly the pool's labels satisfies `selector`.
    fn contains_selector(&self, selector: &BTreeMap<String, String>) -> bool {
        selector.iter().all(|(k, v)| self.labels.get(k) == Some(v))
    }
}
