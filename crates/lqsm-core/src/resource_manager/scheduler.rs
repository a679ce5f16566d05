//! The unified allocation algorithm: hierarchical capacity scheduling with Dominant
//! Resource Fairness, elastic sharing up to each ceiling, pluggable ordering and
//! placement, and preemption for queues starved below their guarantee.
//!
//! Every internal queue keeps its children that can take work in an ordered set keyed
//! by (dominant share ÷ guarantee, weight). Choosing the next job is a walk from the
//! root along the first entry of each set; after a placement only the keys on the
//! job's path change. Both cost O(depth · log fan-out), so a decision grows with the
//! logarithm of the number of queues, and a pass with nothing new to do returns at once.

use super::queues::SelectionKey;
use super::rate_limits::Verdict;
use super::{PassReport, ROOT, ResourceManager};
use crate::effects::Record;
use crate::ids::{FencingToken, QueueId, Timestamp};
use crate::jobs::{Attempt, JobKey, JobState};
use crate::policy::{PreemptionFacts, PreemptionRequest, PreemptionView, RunningAttempt};
use crate::queues::QueueState;
use crate::resources::Resources;
use crate::timers::Timer;
use crate::workers::{Candidates, ConstraintId, WorkerKey};
use std::collections::BTreeMap;

/// Slack for float comparisons of shares against guarantees and ceilings.
const EPSILON: f64 = 1e-9;

/// Ready jobs looked at to size a starved queue's need.
const NEED_SCAN_LIMIT: usize = 100_000;

impl ResourceManager {
    /// Runs one scheduling pass: places as many ready jobs as fit, in the order the
    /// algorithm dictates, and preempts for queues starved past the delay. Returns at
    /// once when nothing changed since the last pass.
    pub fn schedule(&mut self, now: Timestamp) -> PassReport {
        self.latest_now = now;
        if !self.dirty {
            return PassReport::default();
        }
        self.dirty = false;
        if self.keys_stale {
            self.rebuild_selection();
        }
        let mut report = PassReport {
            ran: true,
            ..PassReport::default()
        };
        self.place_ready(now, &mut report);
        if self.config.preemption.enabled {
            self.track_starvation(now);
            if self.preempt_for_starved(now, &mut report) > 0 {
                self.unskip_all();
                self.place_ready(now, &mut report);
            }
            self.preempt_for_priority(now, &mut report);
        }
        self.unskip_all();
        report
    }

    /// Recomputes every selection key, after the cluster's size or a guarantee changed.
    fn rebuild_selection(&mut self) {
        self.keys_stale = false;
        let mut leaves = Vec::new();
        for node in self.queues.iter_mut().flatten() {
            node.eligible_children.clear();
            node.key_in_parent = None;
            node.at_ceiling = false;
            if node.is_leaf() {
                leaves.push(node.id);
                // The cluster or the guarantees changed: so did the users' shares.
                let max_share = super::queues::user_share_limit(node);
                node.ready.reshare(&self.total, max_share);
            }
        }
        for leaf in leaves {
            self.refresh_up(leaf);
        }
    }

    /// Whether a queue can take work now (before looking at worker fit).
    fn eligible(&self, id: QueueId) -> bool {
        let node = self.node(id);
        if node.at_ceiling || node.state == QueueState::Draining {
            return false;
        }
        if !node.is_leaf() {
            return !node.eligible_children.is_empty();
        }
        let under_running_limit = node
            .config
            .running_limit()
            .is_none_or(|max| node.running < u64::from(max));
        node.ready.has_next()
            && !node.skipped_in_pass
            && under_running_limit
            && node.rate_held_until.is_none()
    }

    fn selection_key(&self, id: QueueId) -> SelectionKey {
        let node = self.node(id);
        let share = node.used.dominant_share(&self.total);
        let (class, ratio) = if node.abs_guarantee > 0.0 {
            (0, share / node.abs_guarantee)
        } else {
            (1, share)
        };
        SelectionKey {
            class,
            ratio_bits: ratio.max(0.0).to_bits(),
            inverse_weight: u32::MAX - node.config.weight,
            queue: id,
        }
    }

    /// Brings the selection sets from `id` up to the root in line with its current
    /// usage and eligibility.
    pub(crate) fn refresh_up(&mut self, id: QueueId) {
        let mut at = id;
        while let Some(parent) = self.node(at).parent {
            let wanted = self.eligible(at).then(|| self.selection_key(at));
            let node = self.node_mut(at);
            let old = node.key_in_parent;
            if old != wanted {
                node.key_in_parent = wanted;
                let siblings = &mut self.node_mut(parent).eligible_children;
                if let Some(k) = old {
                    siblings.remove(&k);
                }
                if let Some(k) = wanted {
                    siblings.insert(k);
                }
            }
            at = parent;
        }
    }

    /// The leaf the algorithm serves next: the first eligible child at every level.
    fn next_leaf(&self) -> Option<QueueId> {
        let mut at = ROOT;
        loop {
            let node = self.node(at);
            if node.is_leaf() {
                return (at != ROOT || self.eligible(ROOT)).then_some(at);
            }
            at = node.eligible_children.first()?.queue;
        }
    }

    /// The highest queue on the leaf's path whose ceiling `request` would break.
    fn ceiling_hit(&self, leaf: QueueId, request: &Resources) -> Option<QueueId> {
        let mut hit = None;
        let mut at = leaf;
        while let Some(parent) = self.node(at).parent {
            let node = self.node(at);
            if node.used.dominant_share_with(request, &self.total) > node.abs_max + EPSILON {
                hit = Some(at);
            }
            at = parent;
        }
        hit
    }

    fn place_ready(&mut self, now: Timestamp, report: &mut PassReport) {
        // Requests that fit nowhere this pass; resources only shrink during the loop,
        // so a request at least as large with the same candidates fails too (the same
        // constraint, or another with the same classes: a job's constraint names its
        // queue, and most queues are served by the same workers).
        let mut unfit: Vec<(ConstraintId, Resources)> = Vec::new();
        // Whether some worker could run a request when idle, memoised for the pass.
        let mut capable: Vec<(ConstraintId, Resources, bool)> = Vec::new();
        while let Some(leaf) = self.next_leaf() {
            let Some(head) = self.leaf_head(leaf) else {
                // Only dead entries were left: the leaf has nothing ready after all.
                self.refresh_up(leaf);
                continue;
            };
            match self.rate_verdict(leaf, head, now) {
                None => {}
                Some(Verdict::HoldLeaf(until)) => {
                    self.hold_for_rate_limit(leaf, head, until);
                    continue;
                }
                Some(Verdict::SetAside(until, by, limit)) => {
                    self.set_aside(leaf, head, (until, by, limit), now);
                    continue;
                }
            }
            // A pinned job that can never run on its worker goes now, whatever else.
            if let Some(worker) = self.jobs[head].spec.pinned()
                && let Err(reason) = self.pinned_verdict(worker, head)
            {
                self.cancel_key(head, &reason, now);
                continue;
            }
            let job = &self.jobs[head];
            let constraint = job.constraint;
            if let Some(capped) = self.ceiling_hit(leaf, &job.spec.request) {
                // A job that no worker could run, or that alone is beyond a ceiling,
                // would hold the subtree at its ceiling for nothing: set it aside.
                let request = job.spec.request.clone();
                let beyond =
                    request.dominant_share(&self.total) > self.node(capped).abs_max + EPSILON;
                if beyond || !self.could_ever_run(constraint, &request, &mut capable) {
                    self.park(leaf, head, now);
                    continue;
                }
                self.node_mut(capped).at_ceiling = true;
                self.refresh_up(capped);
                continue;
            }
            let pinned = job.spec.pinned();
            // A pinned job's siblings (same constraint and request) are pinned elsewhere:
            // what one of them could not get says nothing of the others.
            let known_unfit = pinned.is_none()
                && unfit.iter().any(|(c, r)| {
                    self.same_candidates(*c, constraint) && r.fits_in(&job.spec.request)
                });
            let chosen = if let Some(worker) = pinned {
                self.worker_ids
                    .get(&worker)
                    .copied()
                    .filter(|w| self.fits_on(*w, head))
            } else if known_unfit {
                None
            } else {
                let candidates = Candidates {
                    index: &self.index,
                    workers: &self.workers,
                    classes: self.index.classes_for(constraint),
                };
                let node = self.node(leaf);
                node.placement
                    .place(&job.spec.request, &candidates)
                    .filter(|w| self.fits_on(*w, head))
            };
            match chosen {
                Some(worker) => {
                    self.assign(leaf, head, worker, now);
                    report.placed += 1;
                }
                None => {
                    let request = job.spec.request.clone();
                    if let Some(worker) = pinned {
                        // Its worker cannot take it now: it waits for that worker, not
                        // in front of the rest of its leaf.
                        self.hold_pinned(leaf, head, worker, now);
                        continue;
                    }
                    if !self.could_ever_run(constraint, &request, &mut capable) {
                        self.park(leaf, head, now);
                        continue;
                    }
                    if pinned.is_none() && !known_unfit && unfit.len() < 16 {
                        unfit.push((constraint, request));
                    }
                    self.node_mut(leaf).skipped_in_pass = true;
                    self.skipped.push(leaf);
                    self.refresh_up(leaf);
                    report.skipped += 1;
                    if self.skipped.len() >= self.config.max_skips_per_pass {
                        break;
                    }
                }
            }
        }
    }

    /// Whether some worker taking work could run `request` once idle. Larger requests
    /// than one known incapable are incapable too, smaller than one known capable are
    /// capable, so a pass asks the workers about few distinct requests.
    fn could_ever_run(
        &self,
        constraint: ConstraintId,
        request: &Resources,
        memo: &mut Vec<(ConstraintId, Resources, bool)>,
    ) -> bool {
        for (c, r, capable) in memo.iter() {
            if !self.same_candidates(*c, constraint) {
                continue;
            }
            if *capable && request.fits_in(r) {
                return true;
            }
            if !*capable && r.fits_in(request) {
                return false;
            }
        }
        let answer = Candidates {
            index: &self.index,
            workers: &self.workers,
            classes: self.index.classes_for(constraint),
        }
        .any_capable(request);
        if memo.len() < 16 {
            memo.push((constraint, request.clone(), answer));
        }
        answer
    }

    /// Whether jobs with these constraints have the same candidate workers.
    fn same_candidates(&self, a: ConstraintId, b: ConstraintId) -> bool {
        a == b || self.index.classes_for(a) == self.index.classes_for(b)
    }

    /// Sets a ready job aside until a worker registers, so it does not block its leaf.
    fn park(&mut self, leaf: QueueId, head: JobKey, now: Timestamp) {
        if !self.released.is_empty() {
            // A job a rate limit gave back, parked: the limit gives back the next one.
            self.forget_rate_limited(head, now);
        }
        self.jobs[head].waiting = crate::jobs::Waiting::Parked;
        let node = self.node_mut(leaf);
        node.ready.pop_head();
        node.parked.push(head);
        self.parked_leaves.insert(leaf);
        self.refresh_up(leaf);
    }

    /// Whether a pinned job its worker cannot take now may still run there one day:
    /// `Err` with the reason to cancel it when its worker was lost, or no longer matches
    /// it. A worker not registered (yet) after a restart is waited for.
    fn pinned_verdict(&self, worker: crate::ids::WorkerId, job: JobKey) -> Result<(), String> {
        let Some(w) = self.worker(worker) else {
            return Ok(());
        };
        if w.state == crate::workers::WorkerState::Lost {
            return Err(format!("its worker {} was lost", w.name));
        }
        let job = &self.jobs[job];
        if !self.index.class_accepts(w.class, job.constraint)
            || !job.spec.request.fits_in(&w.capacity)
        {
            return Err(format!("its worker {} no longer matches it", w.name));
        }
        Ok(())
    }

    /// Sets a pinned job aside until its worker frees resources or takes work again.
    fn hold_pinned(
        &mut self,
        leaf: QueueId,
        head: JobKey,
        worker: crate::ids::WorkerId,
        now: Timestamp,
    ) {
        if !self.released.is_empty() {
            self.forget_rate_limited(head, now);
        }
        self.jobs[head].waiting = crate::jobs::Waiting::PinnedHold;
        self.node_mut(leaf).ready.pop_head();
        self.pinned_hold.entry(worker).or_default().push(head);
        self.refresh_up(leaf);
    }

    /// Puts the jobs held for `worker` back at the front of their leaves, in the order
    /// they had: the worker has room again, or takes work again.
    pub(crate) fn release_pinned(&mut self, worker: crate::ids::WorkerId) {
        let Some(held) = self.pinned_hold.remove(&worker) else {
            return;
        };
        for key in held.into_iter().rev() {
            let Some(job) = self.jobs.get_mut(key) else {
                continue;
            };
            if job.waiting != crate::jobs::Waiting::PinnedHold {
                continue;
            }
            job.waiting = crate::jobs::Waiting::Ready;
            let leaf = job.queue;
            self.enqueue_ready(leaf, key, true);
            self.refresh_up(leaf);
            self.head_changed(leaf);
        }
        self.dirty = true;
    }

    /// Guards against a placement policy choosing a worker that cannot take the job.
    fn fits_on(&self, worker: WorkerKey, job: JobKey) -> bool {
        let Some(w) = self.workers.get(worker) else {
            return false;
        };
        let job = &self.jobs[job];
        w.indexed.is_some()
            && self.index.class_accepts(w.class, job.constraint)
            && job.spec.request.fits_in(&w.free())
    }

    /// Forgets ceiling marks on the path of a leaf whose next job changed: they were
    /// made for the old head, and a smaller new one may fit under the ceiling.
    pub(crate) fn head_changed(&mut self, leaf: QueueId) {
        let mut changed = false;
        let mut at = Some(leaf);
        while let Some(id) = at {
            let node = self.node_mut(id);
            changed |= std::mem::replace(&mut node.at_ceiling, false);
            at = node.parent;
        }
        if changed {
            self.refresh_up(leaf);
        }
        self.dirty = true;
    }

    fn unskip_all(&mut self) {
        for leaf in std::mem::take(&mut self.skipped) {
            if let Some(Some(node)) = self.queues.get_mut(leaf.0 as usize) {
                node.skipped_in_pass = false;
                self.refresh_up(leaf);
            }
        }
    }

    /// Gives the head job of `leaf` to `worker` as a new attempt.
    fn assign(&mut self, leaf: QueueId, key: JobKey, worker_key: WorkerKey, now: Timestamp) {
        self.spend_rate_tokens(leaf, key, now);
        let token = FencingToken(self.next_token);
        self.next_token += 1;
        let worker = &mut self.workers[worker_key];
        let job = &mut self.jobs[key];
        let number = u32::try_from(job.attempts.len() + 1).unwrap_or(u32::MAX);
        // Most jobs run once: room for one attempt, not the default four.
        job.attempts.reserve_exact(1);
        job.attempts.push(Attempt {
            number,
            token,
            worker: worker.id,
            scheduled_at: now,
            started_at: None,
            finished_at: None,
            outcome: None,
        });
        job.state = JobState::Scheduled;
        job.waiting = crate::jobs::Waiting::Not;
        job.worker = Some(worker_key);
        job.delivered_in = 0;
        job.handed = false;
        let wait = now.since(job.ready_since);
        let request = &job.spec.request;
        worker.used.add(request);
        job.worker_slot =
            u32::try_from(worker.attempts.len()).expect("fewer than 2^32 attempts per worker");
        worker.attempts.push(key);
        worker.idle_since = None;
        worker.outbox.push(key);
        self.index.upsert(worker_key, worker);
        self.effects.attempts_made += 1;
        self.effects.next_token_moved = true;
        self.to_answer.insert(worker_key);
        self.effects.records.push(Record::Job(job.id));
        if let Some(timeout) = job.spec.timeout {
            self.timers
                .set(now.after(timeout), Timer::AttemptTimeout(key, token));
        }

        let node = self.queues[leaf.0 as usize].as_mut().expect("leaf is live");
        node.ready.pop_head();
        if node.ready.is_fair() {
            let user = node.config.fairness_value(&job.spec).unwrap_or("");
            node.ready.started(user, request);
        }
        node.attempts.push((token, key));
        node.stats.pending -= 1;
        node.stats.wait.record(wait);
        self.effects.records.push(Record::Queue(leaf));
        let mut at = Some(leaf);
        while let Some(id) = at {
            let node = self.queues[id.0 as usize]
                .as_mut()
                .expect("ancestors are live");
            node.used.add(request);
            node.running += 1;
            at = node.parent;
        }
        self.refresh_up(leaf);
    }

    // ----- preemption ----------------------------------------------------------------

    fn share_ratio(&self, id: QueueId) -> f64 {
        let node = self.node(id);
        let share = node.used.dominant_share(&self.total);
        if node.abs_guarantee > 0.0 {
            share / node.abs_guarantee
        } else if share > 0.0 {
            f64::INFINITY
        } else {
            0.0
        }
    }

    /// Marks leaves that were passed over while below their guarantee as starved (the
    /// clock starts at the first such pass) and clears those no longer starved.
    fn track_starvation(&mut self, now: Timestamp) {
        let below = 1.0 - self.config.preemption.dead_zone;
        let skipped = self.skipped.clone();
        for leaf in skipped {
            if self.node(leaf).abs_guarantee > 0.0
                && self.share_ratio(leaf) < below
                && self.node(leaf).starved_since.is_none()
            {
                self.node_mut(leaf).starved_since = Some(now);
                self.starved.insert(leaf);
                let due = now.after(self.config.preemption.delay);
                self.timers.set(due, Timer::PreemptionDue);
            }
        }
        let starved: Vec<QueueId> = self.starved.iter().copied().collect();
        for leaf in starved {
            let node = self.node(leaf);
            let still = node.state != QueueState::Draining
                && node.ready.has_next()
                && self.share_ratio(leaf) < below;
            if !still {
                self.node_mut(leaf).starved_since = None;
                self.starved.remove(&leaf);
            }
        }
    }

    /// What `leaf` needs to reach its guarantee (at least its next job), bounded by
    /// what it has ready; and its next job's request and constraint.
    fn starved_need(&self, leaf: QueueId) -> Option<StarvedNeed> {
        let node = self.node(leaf);
        let live = |k: JobKey| {
            self.jobs
                .get(k)
                .is_some_and(|j| j.waiting == crate::jobs::Waiting::Ready)
        };
        let head = node.ready.iter_live(live).next()?;
        let constraint = self.jobs[head].constraint;
        let head_request = self.jobs[head].spec.request.clone();
        let mut need = Resources::default();
        for key in node.ready.iter_live(live).take(NEED_SCAN_LIMIT) {
            let request = &self.jobs[key].spec.request;
            if !need.is_zero()
                && node.used.dominant_share_with(&need, &self.total) >= node.abs_guarantee - EPSILON
            {
                break;
            }
            need.add(request);
        }
        Some(StarvedNeed {
            need,
            head_request,
            constraint,
        })
    }

    fn preempt_for_starved(&mut self, now: Timestamp, report: &mut PassReport) -> u64 {
        let delay = self.config.preemption.delay;
        let mut due: Vec<(f64, QueueId)> = self
            .starved
            .iter()
            .filter(|leaf| {
                self.node(**leaf)
                    .starved_since
                    .is_some_and(|since| since.after(delay) <= now)
            })
            .map(|leaf| (self.share_ratio(*leaf), *leaf))
            .collect();
        due.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let mut taken = 0;
        for (_, starved) in due {
            let Some(StarvedNeed {
                need,
                head_request,
                constraint,
            }) = self.starved_need(starved)
            else {
                continue;
            };
            let request = PreemptionRequest {
                starved,
                need: need.clone(),
                constraint,
                next_request: head_request.clone(),
                dead_zone: self.config.preemption.dead_zone,
            };
            let victims = self
                .preemption_policy
                .select_victims(&request, &PreemptionView::new(self));
            // Room freed on several workers adds up to the need without holding the
            // next job anywhere: a victim counts only on a worker where the job fits
            // once every victim proposed there is gone.
            let mut room: BTreeMap<WorkerKey, Resources> = BTreeMap::new();
            for victim in &victims {
                if !self.may_preempt(victim.job, victim.token, starved, constraint, &head_request) {
                    continue;
                }
                let job = &self.jobs[victim.job];
                if let Some(worker) = job.worker {
                    room.entry(worker)
                        .or_insert_with(|| {
                            let w = &self.workers[worker];
                            w.capacity.minus(&w.used)
                        })
                        .add(&job.spec.request);
                }
            }
            // Victims are taken one worker at a time: once one is taken on a worker
            // that cannot yet hold the job, victims elsewhere wait until it can, so
            // that 2 cores freed here and 2 there never stand for a 4-core job. The
            // need is met once it is freed in all and some worker holds the job.
            let mut queue: std::collections::VecDeque<_> = victims.into();
            let mut deferred = Vec::new();
            let mut filling: Option<WorkerKey> = None;
            let mut freed = Resources::default();
            let mut some_worker_holds = false;
            loop {
                if need.fits_in(&freed) && some_worker_holds {
                    break;
                }
                let Some(victim) = queue.pop_front() else {
                    break;
                };
                if !self.may_preempt(victim.job, victim.token, starved, constraint, &head_request) {
                    continue;
                }
                let Some(worker) = self.jobs[victim.job].worker else {
                    continue;
                };
                if !room
                    .get(&worker)
                    .is_some_and(|room| head_request.fits_in(room))
                {
                    continue;
                }
                if filling.is_some_and(|f| f != worker) {
                    deferred.push(victim);
                    continue;
                }
                freed.add(&self.jobs[victim.job].spec.request);
                self.preempt_attempt(victim.job, now);
                taken += 1;
                let w = &self.workers[worker];
                if head_request.fits_in(&w.capacity.minus(&w.used)) {
                    some_worker_holds = true;
                    filling = None;
                    for victim in deferred.drain(..).rev() {
                        queue.push_front(victim);
                    }
                } else {
                    filling = Some(worker);
                }
            }
            // The starved queue's clock starts again; it is served before anyone in
            // the placement that follows, and if it still falls short the delay
            // applies afresh, so preemption never fires back to back.
            self.node_mut(starved).starved_since = None;
            self.starved.remove(&starved);
        }
        report.preempted += taken;
        taken
    }

    /// Priority preemption inside the leaves that ask for it (`priority_preemption`,
    /// YARN's intra-queue preemption): a leaf's next job, ready for at least the
    /// preemption delay, takes the place of running attempts of the same leaf whose
    /// jobs its ordering ranks after it. The victims are taken on one worker that could
    /// run the job, lowest-ranked and newest first, only as many as make room for it
    /// there and under every ceiling on its path, and the job is placed on that worker
    /// at once: the freed room goes to it, not to whoever the next pass serves first.
    /// Guarantees are untouched (the leaf's use hardly moves), and victims go back to the
    /// front of their rank without using up an attempt. One job per leaf and pass.
    fn preempt_for_priority(&mut self, now: Timestamp, report: &mut PassReport) {
        let delay = self.config.preemption.delay;
        let leaves: Vec<QueueId> = self.priority_preempting.keys().copied().collect();
        for leaf in leaves {
            let node = self.node(leaf);
            if !node.is_leaf()
                || node.state != QueueState::Running
                || node.rate_held_until.is_some()
                || node.attempts.len() <= node.dead_attempts
            {
                continue;
            }
            let Some(head) = self.leaf_head(leaf) else {
                continue;
            };
            let job = &self.jobs[head];
            if job.spec.pinned().is_some() || self.rate_verdict(leaf, head, now).is_some() {
                continue;
            }
            let due = job.ready_since.after(delay);
            if now < due {
                // Looked at again once it has waited long enough, if still waiting.
                if self.has_lower_ranked_attempt(leaf, job.rank)
                    && let Some(armed) = self.priority_preempting.get_mut(&leaf)
                    && *armed != Some(due)
                {
                    *armed = Some(due);
                    self.timers.set(due, Timer::PreemptionDue);
                }
                continue;
            }
            let Some((worker, victims)) = self.priority_victims(leaf, head) else {
                continue;
            };
            for victim in &victims {
                self.preempt_attempt(*victim, now);
            }
            report.preempted += victims.len() as u64;
            // The victims rank after the job, so it is still the leaf's next.
            debug_assert_eq!(self.leaf_head(leaf), Some(head));
            if self.leaf_head(leaf) == Some(head)
                && self.fits_on(worker, head)
                && self
                    .ceiling_hit(leaf, &self.jobs[head].spec.request.clone())
                    .is_none()
            {
                self.assign(leaf, head, worker, now);
                report.placed += 1;
            }
        }
    }

    fn has_lower_ranked_attempt(&self, leaf: QueueId, rank: i64) -> bool {
        self.node(leaf).attempts.iter().any(|(token, key)| {
            self.jobs
                .get(*key)
                .is_some_and(|j| j.current_token() == Some(*token) && j.rank > rank)
        })
    }

    /// The worker and victims for [`Self::preempt_for_priority`], or `None` when no
    /// single worker can make room for `head` from lower-ranked attempts of its leaf.
    fn priority_victims(&self, leaf: QueueId, head: JobKey) -> Option<(WorkerKey, Vec<JobKey>)> {
        let job = &self.jobs[head];
        let (rank, request, constraint) = (job.rank, &job.spec.request, job.constraint);
        // Lower-ranked current attempts of the leaf, by worker: the lowest-ranked first,
        // the newest first among equals.
        let mut by_worker: std::collections::BTreeMap<WorkerKey, Vec<(i64, FencingToken, JobKey)>> =
            std::collections::BTreeMap::new();
        for (token, key) in &self.node(leaf).attempts {
            let Some(j) = self.jobs.get(*key) else {
                continue;
            };
            if j.current_token() != Some(*token) || j.rank <= rank {
                continue;
            }
            if let Some(w) = j.worker {
                by_worker.entry(w).or_default().push((j.rank, *token, *key));
            }
        }
        let mut best: Option<(WorkerKey, Vec<JobKey>)> = None;
        for (worker, mut attempts) in by_worker {
            if !self.worker_could_run(worker, constraint, request) {
                continue;
            }
            attempts.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)));
            let mut free = self.workers[worker].free();
            let mut freed = Resources::default();
            let mut chosen = Vec::new();
            for (_, _, key) in attempts {
                if request.fits_in(&free) && self.fits_under_ceilings(leaf, &freed, request) {
                    break;
                }
                let r = &self.jobs[key].spec.request;
                free.add(r);
                freed.add(r);
                chosen.push(key);
            }
            let enough = request.fits_in(&free) && self.fits_under_ceilings(leaf, &freed, request);
            if enough && best.as_ref().is_none_or(|(_, b)| chosen.len() < b.len()) {
                best = Some((worker, chosen));
            }
        }
        best.filter(|(_, victims)| !victims.is_empty())
    }

    /// Whether `request` fits under every ceiling on `leaf`'s path once `freed` (held in
    /// the leaf) is given back.
    fn fits_under_ceilings(&self, leaf: QueueId, freed: &Resources, request: &Resources) -> bool {
        let mut at = leaf;
        while let Some(parent) = self.node(at).parent {
            let node = self.node(at);
            if node
                .used
                .minus(freed)
                .dominant_share_with(request, &self.total)
                > node.abs_max + EPSILON
            {
                return false;
            }
            at = parent;
        }
        true
    }

    /// The core's own rules for a victim, whatever the policy proposed: the attempt is
    /// current, on a worker that takes work (what a draining one frees goes to no one)
    /// and can run the starved queue's next job — it accepts the job and is big enough
    /// to hold it, else the freed room would only go back to the victim's queue — in a
    /// queue that is
    /// not the starved one, and no queue on its path opted out or would drop below its
    /// guarantee. That holds for shared ancestors of the starved queue too: the freed
    /// resources may go to a needier queue elsewhere, so an ancestor must afford them.
    fn may_preempt(
        &self,
        key: JobKey,
        token: FencingToken,
        starved: QueueId,
        constraint: ConstraintId,
        head_request: &Resources,
    ) -> bool {
        let Some(job) = self.jobs.get(key) else {
            return false;
        };
        if job.current_token() != Some(token) || job.queue == starved {
            return false;
        }
        let Some(worker_key) = job.worker else {
            return false;
        };
        if !self.worker_could_run(worker_key, constraint, head_request) {
            return false;
        }
        let request = &job.spec.request;
        let mut at = job.queue;
        while let Some(parent) = self.node(at).parent {
            let node = self.node(at);
            if !node.config.preemptable {
                return false;
            }
            let after = node.used.minus(request).dominant_share(&self.total);
            if after < node.abs_guarantee - EPSILON {
                return false;
            }
            at = parent;
        }
        true
    }
}

/// What a starved leaf needs, as preemption sizes it.
struct StarvedNeed {
    /// Enough to reach its guarantee, or all it has ready.
    need: Resources,
    /// Its next job's request: a worker too small for it frees nothing useful.
    head_request: Resources,
    /// Its next job's constraint.
    constraint: ConstraintId,
}

impl PreemptionFacts for ResourceManager {
    fn total(&self) -> &Resources {
        &self.total
    }

    fn leaves_with_attempts(&self) -> Vec<QueueId> {
        self.queues
            .iter()
            .flatten()
            .filter(|n| n.is_leaf() && n.attempts.len() > n.dead_attempts)
            .map(|n| n.id)
            .collect()
    }

    fn used(&self, queue: QueueId) -> &Resources {
        &self.node(queue).used
    }

    fn abs_guarantee(&self, queue: QueueId) -> f64 {
        self.node(queue).abs_guarantee
    }

    fn parent(&self, queue: QueueId) -> Option<QueueId> {
        self.node(queue).parent
    }

    fn preemptable(&self, queue: QueueId) -> bool {
        let mut at = Some(queue);
        while let Some(id) = at {
            let node = self.node(id);
            if !node.config.preemptable {
                return false;
            }
            at = node.parent;
        }
        true
    }

    fn attempts_newest_first(
        &self,
        leaf: QueueId,
    ) -> Box<dyn Iterator<Item = RunningAttempt> + '_> {
        Box::new(
            self.node(leaf)
                .attempts
                .iter()
                .rev()
                .filter_map(|(token, key)| {
                    let job = self.job_by_key(*key)?;
                    if job.current_token() != Some(*token) {
                        return None;
                    }
                    Some(RunningAttempt {
                        job: *key,
                        token: *token,
                        worker: job.worker?,
                    })
                }),
        )
    }

    fn request_of(&self, job: JobKey) -> &Resources {
        &self.jobs[job].spec.request
    }

    fn worker_free(&self, worker: WorkerKey) -> Resources {
        self.workers
            .get(worker)
            .map_or_else(Resources::default, |w| w.capacity.minus(&w.used))
    }

    fn worker_could_run(
        &self,
        worker: WorkerKey,
        constraint: ConstraintId,
        request: &Resources,
    ) -> bool {
        self.workers.get(worker).is_some_and(|w| {
            w.indexed.is_some()
                && self.index.class_accepts(w.class, constraint)
                && request.fits_in(&w.capacity)
        })
    }
}
