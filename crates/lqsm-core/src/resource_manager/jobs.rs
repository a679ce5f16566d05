//! Job commands: submission (with every check of a request), cancellation, and
//! the end of attempts (success, failure with retry, loss, preemption).

use super::ResourceManager;
use super::workflows::Parents;
use crate::effects::{Kill, KillReason, Record};
use crate::ids::{JobId, QueueId, Timestamp};
use crate::jobs::Waiting;
use crate::jobs::{
    AttemptOutcome, Job, JobKey, JobKind, JobState, SubmitError, SubmitRequest, Termination,
    unit_random,
};
use crate::policy::AdmissionContext;
use crate::queues::QueueState;
use crate::resources::Resources;
use crate::timers::Timer;
use crate::workers::{Candidates, WorkerKey, WorkerState};
use thiserror::Error;

/// A refused job command.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum JobError {
    /// No job has that id (it may have been purged after its retention).
    #[error("job {0} does not exist")]
    NotFound(JobId),
    /// The job already reached a terminal state.
    #[error("job {id} already finished ({state})")]
    AlreadyFinished {
        /// The job.
        id: JobId,
        /// Its terminal state.
        state: JobState,
    },
}

/// Which unfinished jobs a bulk cancel takes ([`ResourceManager::cancel_selected`]): every
/// criterion given must match, and at least one must be given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobSelection {
    /// A queue: its jobs and those of every queue under it.
    pub queue: Option<String>,
    /// A tag the job carries.
    pub tag: Option<String>,
    /// An unfinished state: pending, scheduled or running.
    pub state: Option<JobState>,
}

/// Why a bulk cancel was refused; nothing was cancelled.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SelectionError {
    /// No criterion: cancelling every job of the cluster must not be one slip away.
    #[error(
        "name at least one of queue, tag and state (to cancel every unfinished job, name the queue `root`)"
    )]
    Empty,
    /// A terminal state selects nothing to cancel.
    #[error("state: `{0}` jobs are already finished; choose pending, scheduled or running")]
    FinishedState(&'static str),
    /// The queue does not exist.
    #[error(transparent)]
    Queue(#[from] crate::queues::QueueError),
}

/// A submission that passed every check ([`ResourceManager::check_submission`]).
pub(crate) enum Checked {
    /// It names an existing job (same idempotency key, or the same id and submission).
    Existing(JobId),
    /// The job to take in (boxed: a job is large next to an id).
    New(Box<Job>),
}

/// How a submission was taken.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Submitted {
    /// A new job was created.
    Created(JobId),
    /// The idempotency key matched this existing job; nothing was created.
    Existing(JobId),
}

impl Submitted {
    /// The job's id either way.
    pub fn id(self) -> JobId {
        match self {
            Submitted::Created(id) | Submitted::Existing(id) => id,
        }
    }
}

impl ResourceManager {
    /// Accepts a job into a leaf queue, or says precisely why not. A repeated
    /// idempotency key returns the original job and changes nothing.
    pub fn submit(&mut self, req: SubmitRequest, now: Timestamp) -> Result<Submitted, SubmitError> {
        let made = self.create_on_demand(&req.queue, now)?;
        match self.check_submission(req, now, 0) {
            Ok(Checked::Existing(id)) => Ok(Submitted::Existing(id)),
            Ok(Checked::New(job)) => Ok(Submitted::Created(self.insert_job(*job, now))),
            Err(refused) => {
                if let Some(made) = made {
                    self.undo_on_demand(made);
                }
                Err(refused)
            }
        }
    }

    /// Every check of a submission, changing nothing the caller could see: the job it
    /// would create, or the existing job it names. `also_pending` counts jobs of the same
    /// request (a workflow) already checked for the same queue, so that the queue's
    /// pending limit holds for them together.
    pub(crate) fn check_submission(
        &mut self,
        req: SubmitRequest,
        now: Timestamp,
        also_pending: u64,
    ) -> Result<Checked, SubmitError> {
        req.validate()?;
        let queue = self.lookup_queue(&req.queue)?;
        let node = self.node(queue);
        if !node.is_leaf() {
            return Err(SubmitError::NotALeaf(req.queue));
        }
        if node.config.template.is_some() {
            return Err(SubmitError::OnDemandParent(req.queue));
        }
        if let Some(key) = &req.idempotency_key
            && let Some(existing) = self.idempotency.get(&(queue, key.clone()))
        {
            return Ok(Checked::Existing(self.jobs[*existing].id));
        }
        // A client-chosen id sent again: the same submission is the same job (a retry after
        // a lost answer), whatever the queue's state since; anything else is a conflict.
        if let Some(&existing) = self.job_ids.get(&req.id) {
            let id = req.id;
            let defaults = node.config.defaults.clone();
            let sized =
                req.auto_request || (req.request.is_none() && node.config.auto_resources.is_some());
            let (mut spec, _) = req.resolve(&defaults);
            let job = &self.jobs[existing];
            if sized {
                // Its request followed the figures of the time it was first taken.
                spec.request = job.spec.request.clone();
            }
            if job.queue == queue && job.spec == spec {
                return Ok(Checked::Existing(id));
            }
            return Err(SubmitError::DuplicateId(id));
        }
        if node.state != QueueState::Running {
            return Err(SubmitError::NotAccepting {
                path: req.queue,
                state: node.state,
            });
        }
        if let Some(expires_at) = req.expires_at
            && expires_at <= now
        {
            return Err(SubmitError::InvalidField {
                field: "expires_at_ms".into(),
                reason: "is already in the past".into(),
            });
        }
        if let Some(max) = node.config.pending_limit()
            && node.stats.pending + also_pending >= max
        {
            return Err(SubmitError::QueueFull {
                path: req.queue,
                pending: node.stats.pending + also_pending,
                max,
            });
        }
        if let Some(depends) = &req.depends
            && req.workflow.is_none()
            && let Some(unknown) = depends
                .parents
                .iter()
                .find(|p| !self.job_ids.contains_key(p))
        {
            return Err(SubmitError::InvalidField {
                field: "after".into(),
                reason: format!("job {unknown} does not exist (or has passed its retention)"),
            });
        }
        let (id, queue_path, delay) = (req.id, req.queue.clone(), req.delay);
        let (named, asked_auto) = (req.request.is_some(), req.auto_request);
        let (mut spec, not_before) = req.resolve(&node.config.defaults);
        if let Some(sized) = self.sized_request(node, &spec, named, asked_auto) {
            spec.request = sized;
        }
        let not_before = match delay {
            Some(delay) => not_before.max(Some(now.after(delay))),
            None => not_before,
        };
        if let (Some(start), Some(expires_at)) = (not_before, spec.expires_at())
            && expires_at <= start
        {
            return Err(SubmitError::InvalidField {
                field: "expires_at_ms".into(),
                reason: "is not after the job's countdown ends, so it could never run".into(),
            });
        }
        spec.request
            .check("resources")
            .map_err(|bad| SubmitError::InvalidField {
                field: bad.field,
                reason: bad.reason,
            })?;
        let leaf_path = self.node(queue).path.clone();
        let constraint =
            self.index
                .constraint_for(spec.selector(), spec.kind.handler(), &leaf_path);
        match &mut spec.kind {
            // One shared copy of each handler name, however many jobs name it.
            JobKind::Function { handler, .. }
            | JobKind::Stored {
                handler: Some(handler),
            } => *handler = self.index.intern_handler(handler),
            _ => {}
        }
        let node = self.node(queue);
        let admission = AdmissionContext {
            queue: &node.path,
            stats: &node.stats,
            spec: &spec,
            now,
            candidates: Candidates {
                index: &self.index,
                workers: &self.workers,
                classes: self.index.classes_for(constraint),
            },
        };
        if let Err(reason) = node.admission.admit(&admission) {
            return Err(SubmitError::Refused {
                path: queue_path,
                policy: node.admission.name().to_owned(),
                reason,
            });
        }
        let rank = node.ordering.rank(&spec);
        Ok(Checked::New(Box::new(Job {
            id,
            queue,
            seq: 0,
            state: JobState::Pending,
            submitted_at: now,
            not_before: not_before.filter(|t| *t > now),
            spec,
            attempts: Vec::new(),
            failures: 0,
            termination: None,
            finished_at: None,
            ready_since: now,
            rank,
            constraint,
            worker: None,
            worker_slot: 0,
            waiting: Waiting::Not,
            delivered_in: 0,
            handed: false,
            recorded: None,
        })))
    }

    /// Takes in a job every check passed ([`Self::check_submission`]); its parents, if it
    /// has any, are already held.
    pub(crate) fn insert_job(&mut self, mut job: Job, now: Timestamp) -> JobId {
        job.seq = self.next_seq;
        self.next_seq += 1;
        let (id, queue, not_before) = (job.id, job.queue, job.not_before);
        let expires_at = job.spec.expires_at();
        let idempotency_key = job.spec.idempotency_key().map(str::to_owned);
        let pinned = job.spec.pinned();
        let key = self.jobs.insert(job);
        self.job_ids.insert(id, key);
        if let Some(worker) = pinned {
            self.pinned_jobs.entry(worker).or_default().push(key);
        }
        if let Some(k) = idempotency_key {
            self.idempotency.insert((queue, k), key);
        }
        let leaf = self.node_mut(queue);
        leaf.stats.submitted += 1;
        leaf.stats.pending += 1;
        // Lifetime counters are durable: they outlive retention and restarts.
        self.effects.records.push(Record::Queue(queue));
        self.add_unfinished(queue, 1);
        self.effects.records.push(Record::Job(id));
        if let Some(at) = expires_at {
            self.timers.set(at, Timer::Expire(key));
        }
        match self.link_parents(key) {
            Parents::Ended => match not_before {
                Some(at) => self.timers.set(at, Timer::Release(key)),
                None => self.make_ready(key, now, false),
            },
            Parents::Waiting => {}
            Parents::Failed(reason) => self.cancel_key(key, &reason, now),
        }
        id
    }

    pub(crate) fn add_unfinished(&mut self, leaf: QueueId, delta: i64) {
        let mut at = Some(leaf);
        while let Some(id) = at {
            let node = self.node_mut(id);
            node.unfinished = node.unfinished.saturating_add_signed(delta);
            at = node.parent;
        }
    }

    /// Adds `key` to `leaf`'s ready jobs under its rank and its fairness value: behind
    /// the others, or ahead of them for a job that had already been dispatched.
    pub(crate) fn enqueue_ready(&mut self, leaf: QueueId, key: JobKey, front: bool) {
        let job = &self.jobs[key];
        let node = self.queues[leaf.0 as usize].as_mut().expect("leaf is live");
        let user = node.config.fairness_value(&job.spec).unwrap_or("");
        node.ready.push(job.rank, key, user, front);
    }

    /// Puts a pending job into its leaf's ready queue: behind the others of its rank,
    /// or ahead of them for a job that had already been dispatched (preempted).
    pub(crate) fn make_ready(&mut self, key: JobKey, now: Timestamp, front: bool) {
        let job = &mut self.jobs[key];
        job.not_before = None;
        job.ready_since = now;
        job.waiting = Waiting::Ready;
        let queue = job.queue;
        let had_next = self.node(queue).ready.has_next();
        self.enqueue_ready(queue, key, front);
        if !had_next {
            self.refresh_up(queue);
        }
        // A job ranked ahead of the others (a higher priority) is the new head too: a
        // ceiling mark made for the old head must not hold it back.
        let jobs = &self.jobs;
        let first = self.queues[queue.0 as usize]
            .as_mut()
            .expect("a ready job's leaf is live")
            .ready
            .head(|k| jobs.get(k).is_some_and(|j| j.waiting == Waiting::Ready));
        if !had_next || front || first == Some(key) {
            self.head_changed(queue);
        }
        self.dirty = true;
    }

    /// The next job of a leaf, if it has a ready one.
    pub(crate) fn leaf_head(&mut self, leaf: QueueId) -> Option<JobKey> {
        let jobs = &self.jobs;
        let node = self.queues[leaf.0 as usize].as_mut()?;
        node.ready
            .head(|k| jobs.get(k).is_some_and(|j| j.waiting == Waiting::Ready))
    }

    /// Cancels every unfinished job `selection` matches, as [`Self::cancel`] does one;
    /// returns their ids.
    pub fn cancel_selected(
        &mut self,
        selection: &JobSelection,
        reason: &str,
        now: Timestamp,
    ) -> Result<Vec<JobId>, SelectionError> {
        if *selection == JobSelection::default() {
            return Err(SelectionError::Empty);
        }
        if let Some(state) = selection.state
            && state.is_terminal()
        {
            return Err(SelectionError::FinishedState(crate::codec::state_name(
                state,
            )));
        }
        let queue = match &selection.queue {
            Some(path) => Some(self.lookup_queue(path)?),
            None => None,
        };
        let within = |rm: &Self, mut at: Option<QueueId>, ancestor: QueueId| {
            while let Some(q) = at {
                if q == ancestor {
                    return true;
                }
                at = rm.node(q).parent;
            }
            false
        };
        let keys: Vec<JobKey> = self
            .jobs
            .iter()
            .filter(|(_, job)| {
                !job.state.is_terminal()
                    && selection.state.is_none_or(|s| job.state == s)
                    && selection
                        .tag
                        .as_ref()
                        .is_none_or(|t| job.spec.tags().iter().any(|tag| tag == t))
                    && queue.is_none_or(|q| within(self, Some(job.queue), q))
            })
            .map(|(key, _)| key)
            .collect();
        // Cancelling a broadcast (its tag alone) closes it to workers that join later.
        if selection.queue.is_none()
            && selection.state.is_none()
            && let Some(id) = selection
                .tag
                .as_deref()
                .and_then(|t| t.strip_prefix(crate::jobs::WORKFLOW_TAG_PREFIX))
                .and_then(|id| uuid::Uuid::parse_str(id).ok())
        {
            self.close_broadcast(id);
        }
        let mut ids = Vec::with_capacity(keys.len());
        for key in keys {
            ids.push(self.jobs[key].id);
            // Cancelling a parent may have cancelled this one as its dependent already.
            if !self.jobs[key].state.is_terminal() {
                self.cancel_key(key, reason, now);
            }
        }
        Ok(ids)
    }

    /// Cancels a job: a pending one at once; one with an attempt is killed on its
    /// worker and cancelled in the same step (a late report from it is refused).
    pub fn cancel(&mut self, id: JobId, reason: &str, now: Timestamp) -> Result<(), JobError> {
        let key = *self.job_ids.get(&id).ok_or(JobError::NotFound(id))?;
        let state = self.jobs[key].state;
        if state.is_terminal() {
            return Err(JobError::AlreadyFinished { id, state });
        }
        self.cancel_key(key, reason, now);
        Ok(())
    }

    pub(crate) fn cancel_key(&mut self, key: JobKey, reason: &str, now: Timestamp) {
        if self.jobs[key].state.is_active() {
            self.end_attempt(
                key,
                AttemptOutcome::Cancelled,
                Some(KillReason::Cancelled),
                now,
            );
        }
        self.terminate(
            key,
            Termination::Cancelled {
                reason: reason.to_owned(),
            },
            now,
        );
    }

    /// Moves a job that holds no attempt to a terminal state, once.
    pub(crate) fn terminate(&mut self, key: JobKey, termination: Termination, now: Timestamp) {
        if !self.held_until.is_empty() || !self.released.is_empty() {
            // A rate limit's hold gives back its next job if this one was its.
            self.forget_rate_limited(key, now);
        }
        let job = &mut self.jobs[key];
        debug_assert!(!job.state.is_terminal() && !job.state.is_active());
        let state = match &termination {
            Termination::Succeeded { .. } | Termination::SucceededStored { .. } => {
                JobState::Succeeded
            }
            Termination::Failed { .. } => JobState::Failed,
            Termination::Cancelled { .. } => JobState::Cancelled,
            Termination::Expired => JobState::Expired,
        };
        let was_pending = job.state == JobState::Pending;
        let was_ready = job.waiting == Waiting::Ready;
        let was_blocked = job.waiting == Waiting::Blocked;
        job.waiting = Waiting::Not;
        job.state = state;
        job.termination = Some(Box::new(termination));
        job.finished_at = Some(now);
        job.not_before = None;
        let (id, queue) = (job.id, job.queue);
        if self
            .queues
            .get(queue.0 as usize)
            .is_some_and(Option::is_some)
        {
            let leaf = self.node_mut(queue);
            if was_pending {
                leaf.stats.pending -= 1;
                if was_ready {
                    leaf.ready.forget_one();
                    if !leaf.ready.has_next() {
                        self.refresh_up(queue);
                    }
                    // The leaf's next job may have changed to one that fits.
                    self.head_changed(queue);
                }
            }
            let stats = &mut self.node_mut(queue).stats;
            match state {
                JobState::Succeeded => stats.succeeded += 1,
                JobState::Failed => stats.failed += 1,
                JobState::Cancelled => stats.cancelled += 1,
                _ => stats.expired += 1,
            }
            self.effects.records.push(Record::Queue(queue));
            self.add_unfinished(queue, -1);
            self.mark_idle(queue, now);
        }
        self.timers
            .set(now.after(self.config.retention), Timer::Purge(key));
        self.effects.records.push(Record::Job(id));
        self.effects.finished.push(id);
        if was_blocked {
            self.blocked.remove(&key);
        }
        self.dependencies_ended(key, now);
    }

    /// Ends the current attempt of an active job: frees its resources, records the
    /// outcome, optionally asks its worker to kill it. The job is left `Pending`
    /// (not ready); the caller decides what comes next. An attempt not yet reclaimed
    /// after a restart holds no resources, so only its record changes.
    pub(crate) fn end_attempt(
        &mut self,
        key: JobKey,
        outcome: AttemptOutcome,
        kill: Option<KillReason>,
        now: Timestamp,
    ) {
        let job = &mut self.jobs[key];
        debug_assert!(job.state.is_active());
        let worker_key = job.worker.take();
        let attempt = job
            .attempts
            .last_mut()
            .expect("an active job has an attempt");
        attempt.finished_at = Some(now);
        let (token, scheduled_at, worker_id) =
            (attempt.token, attempt.scheduled_at, attempt.worker);
        if outcome.counts_as_failure() {
            job.failures += 1;
        }
        attempt.outcome = Some(outcome);
        job.state = JobState::Pending;
        job.delivered_in = 0;
        job.handed = false;
        let (id, queue, request) = (job.id, job.queue, job.spec.request.clone());
        if let Some(reason) = kill {
            self.order_kill(Kill {
                worker: worker_id,
                job: id,
                token,
                reason,
            });
        }
        if let Some(worker_key) = worker_key {
            self.release_on_worker(worker_key, key, &request);
            let worker = &mut self.workers[worker_key];
            if worker.attempts.is_empty() {
                worker.idle_since = Some(now);
            }
            // Room on this worker: the jobs pinned to it and held may fit now.
            if !self.pinned_hold.is_empty() {
                self.release_pinned(worker_id);
            }
        }
        if let Some(Some(leaf)) = self.queues.get_mut(queue.0 as usize) {
            leaf.stats.run.record(now.since(scheduled_at));
            leaf.stats.pending += 1;
            self.effects.records.push(Record::Queue(queue));
            if worker_key.is_some() {
                self.release_on_path(queue, key, &request);
            }
        }
        self.effects.records.push(Record::Job(id));
        self.dirty = true;
    }

    pub(crate) fn release_on_worker(
        &mut self,
        worker_key: WorkerKey,
        job: JobKey,
        request: &Resources,
    ) {
        let slot = self.jobs[job].worker_slot as usize;
        let worker = &mut self.workers[worker_key];
        worker.attempts.swap_remove(slot);
        if let Some(moved) = worker.attempts.get(slot) {
            self.jobs[*moved].worker_slot = slot as u32;
        }
        let worker = &mut self.workers[worker_key];
        worker.used.sub(request);
        if worker.state == WorkerState::Draining {
            // A draining worker counts in the cluster only with what it still runs.
            self.total.sub(request);
            self.keys_stale = true;
        }
        if worker.indexed.is_some() {
            self.index.upsert(worker_key, worker);
        }
    }

    pub(crate) fn release_on_path(&mut self, leaf: QueueId, job: JobKey, request: &Resources) {
        let spec = &self.jobs[job].spec;
        let node = self.queues[leaf.0 as usize].as_mut().expect("leaf is live");
        if node.ready.is_fair() {
            let user = node.config.fairness_value(spec).unwrap_or("");
            node.ready.ended(user, request);
        }
        node.dead_attempts += 1;
        if node.dead_attempts * 2 > node.attempts.len() && node.attempts.len() >= 32 {
            self.compact_leaf_attempts(leaf);
        }
        let mut at = Some(leaf);
        while let Some(id) = at {
            let node = self.node_mut(id);
            node.used.sub(request);
            node.running -= 1;
            node.at_ceiling = false;
            at = node.parent;
        }
        self.refresh_up(leaf);
    }

    /// Drops a leaf's dead attempt entries (amortised: run when half are dead).
    pub(crate) fn compact_leaf_attempts(&mut self, leaf: QueueId) {
        let mut entries = std::mem::take(&mut self.node_mut(leaf).attempts);
        entries.retain(|(token, key)| {
            self.jobs
                .get(*key)
                .is_some_and(|j| j.current_token() == Some(*token))
        });
        let node = self.node_mut(leaf);
        node.attempts = entries;
        node.dead_attempts = 0;
    }

    /// Ends an attempt that failed, timed out or was lost: retried after its backoff
    /// while attempts remain, failed for good otherwise.
    pub(crate) fn fail_attempt(
        &mut self,
        key: JobKey,
        outcome: AttemptOutcome,
        kill: Option<KillReason>,
        now: Timestamp,
    ) {
        self.end_attempt(key, outcome.clone(), kill, now);
        let job = &self.jobs[key];
        if job.failures >= job.spec.retry.max_attempts {
            self.terminate(key, Termination::Failed { last: outcome }, now);
            return;
        }
        let jitter = unit_random(self.seed, job.seq, u64::from(job.failures));
        let wait = match outcome {
            // The job named its own wait.
            AttemptOutcome::RetryRequested {
                countdown: Some(countdown),
                ..
            } => countdown,
            _ => job.spec.retry.backoff(job.failures, jitter),
        };
        self.requeue(key, now.after(wait), now);
    }

    /// Ends the current attempt as a failure that must not be retried (the worker said
    /// so): the job fails now, whatever attempts its retry policy has left. The attempt
    /// counts as a failure as any other.
    pub(crate) fn fail_job(&mut self, key: JobKey, outcome: AttemptOutcome, now: Timestamp) {
        self.end_attempt(key, outcome.clone(), None, now);
        self.terminate(key, Termination::Failed { last: outcome }, now);
    }

    /// Puts a job whose attempt ended back to pending, ready at `at`.
    pub(crate) fn requeue(&mut self, key: JobKey, at: Timestamp, now: Timestamp) {
        if at <= now {
            self.make_ready(key, now, false);
        } else {
            self.jobs[key].not_before = Some(at);
            self.timers.set(at, Timer::Release(key));
        }
    }

    /// Takes back an attempt its worker was never handed (the worker went quiet or was
    /// lost first): it never started, so it goes back to pending, ready at once at the
    /// front of its leaf, without counting as a failure.
    pub(crate) fn withdraw_attempt(&mut self, key: JobKey, now: Timestamp) {
        self.end_attempt(key, AttemptOutcome::Withdrawn, None, now);
        self.make_ready(key, now, true);
    }

    /// Takes an attempt back for preemption: it goes back to pending, ready at once,
    /// without counting as a failure.
    pub(crate) fn preempt_attempt(&mut self, key: JobKey, now: Timestamp) {
        self.end_attempt(
            key,
            AttemptOutcome::Preempted,
            Some(KillReason::Preempted),
            now,
        );
        self.make_ready(key, now, true);
    }
}
