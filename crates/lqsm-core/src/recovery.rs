//! Durable records of queues and jobs, and rebuilding the ResourceManager from them.
//!
//! A restart is work-preserving: attempts that were scheduled or running are not
//! requeued at once. They wait, holding no resources, for their worker to register
//! again and list them in its first poll (then they are *reclaimed* as they were);
//! those still unclaimed when the grace period ends go back to pending without
//! counting as a failure.

use crate::effects::Record;
use crate::ids::{FencingToken, JobId, QueueId, Timestamp, WorkerId};
use crate::jobs::{
    Attempt, AttemptOutcome, Job, JobKey, JobKind, JobSpec, JobState, Termination, Waiting,
};
use crate::policy::Policies;
use crate::queues::{QueueConfig, QueueError, QueuePath, QueueState, QueueStats, QueueUpdate};
use crate::resource_manager::{Config, ConfigError, ResourceManager};
use crate::timers::Timer;
use crate::workers::WorkerKey;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use thiserror::Error;

/// Everything durable about a queue.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct QueueRecord {
    /// Its path.
    pub path: QueuePath,
    /// Its settings.
    pub config: QueueConfig,
    /// Its lifecycle state.
    pub state: QueueState,
    /// Its lifetime counters (`pending` is not kept: it is counted from the jobs). Absent
    /// in records written before they were kept, whose counters are then rebuilt from
    /// the jobs still held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counters: Option<QueueStats>,
    /// Created on demand from its parent's template.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub on_demand: bool,
    /// Why its settings differ from what was asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Set for a queue created on demand and removed after its idle time: the record
    /// keeps its settings and counters readable until the retention has passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed_at: Option<Timestamp>,
}

/// Everything durable about a job.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct JobRecord {
    /// Its id.
    pub id: JobId,
    /// Its leaf queue (possibly deleted since, for a finished job).
    pub queue: QueuePath,
    /// Submission order across the cluster.
    pub seq: u64,
    /// Where it is in its life.
    pub state: JobState,
    /// When it was accepted.
    pub submitted_at: Timestamp,
    /// Not to be scheduled before then.
    pub not_before: Option<Timestamp>,
    /// Its settings.
    pub spec: JobSpec,
    /// Every attempt so far, the current one last.
    pub attempts: Vec<Attempt>,
    /// Attempts that counted against `max_attempts`.
    pub failures: u32,
    /// How it ended.
    pub termination: Option<Termination>,
    /// When it ended.
    pub finished_at: Option<Timestamp>,
    /// While a rate limit holds it back: until when. A reader compares it with the time:
    /// the record is not rewritten when the hold ends, only when the job changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limited_until: Option<Timestamp>,
    /// The state the job last reported of itself while running (`update_state`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<crate::jobs::Json>,
}

/// What restoring needs besides the records.
#[derive(Clone, Debug, Default)]
pub struct RestoreInput {
    /// Every queue but root may be here, in any order; root's record sets its settings.
    pub queues: Vec<QueueRecord>,
    /// Every job the store holds, in any order.
    pub jobs: Vec<JobRecord>,
    /// The persisted high-water mark of fencing tokens (see [`ResourceManager::next_token`]).
    pub next_token: u64,
    /// Every stored schedule, in any order.
    pub schedules: Vec<crate::schedules::ScheduleRecord>,
    /// Every stored open broadcast, in any order.
    pub broadcasts: Vec<crate::resource_manager::OpenBroadcast>,
}

/// A store whose records cannot be rebuilt into a consistent state.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum RestoreError {
    /// The cluster settings are invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A queue record is refused by today's rules.
    #[error("stored queue `{path}` cannot be restored: {error}")]
    Queue {
        /// The queue.
        path: QueuePath,
        /// Why.
        error: QueueError,
    },
    /// A job record is inconsistent.
    #[error("stored job {id} cannot be restored: {reason}")]
    Job {
        /// The job.
        id: JobId,
        /// Why.
        reason: String,
    },
    /// A schedule record is refused by today's rules.
    #[error("stored schedule `{name}` cannot be restored: {error}")]
    Schedule {
        /// The schedule.
        name: String,
        /// Why.
        error: crate::schedules::ScheduleError,
    },
}

/// Figures of a restore.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct RestoreReport {
    /// Queues rebuilt (root included).
    pub queues: usize,
    /// Jobs pending again (ready or delayed).
    pub pending: usize,
    /// Attempts waiting to be reclaimed by their workers.
    pub awaiting_reclaim: usize,
    /// Finished jobs kept until their retention ends.
    pub finished: usize,
}

impl ResourceManager {
    /// Hands out job `id`'s durable record for storage, with the job's state in the record
    /// handed out before (`None` for its first): the shell gives the store both, so that a
    /// store keeping its own indexes knows which entries to replace without reading them.
    /// The record handed out becomes the one the next call compares with, so call this once
    /// per job and commit, with commits applied in order (a failed commit stops the writer).
    pub fn record_job(&mut self, id: JobId) -> Option<(JobRecord, Option<JobState>)> {
        let key = *self.job_ids.get(&id)?;
        let record = self.record_of(key)?;
        let previous = self.jobs[key].recorded.replace(record.state);
        Some((record, previous))
    }

    /// The durable record of a job, as it is now.
    pub fn job_record(&self, id: JobId) -> Option<JobRecord> {
        self.record_of(*self.job_ids.get(&id)?)
    }

    /// The durable record of the job at `key`, as it is now.
    fn record_of(&self, key: JobKey) -> Option<JobRecord> {
        let job = self.jobs.get(key)?;
        Some(JobRecord {
            id: job.id,
            queue: self.queue_path(job.queue)?.clone(),
            seq: job.seq,
            state: job.state,
            submitted_at: job.submitted_at,
            not_before: job.not_before,
            spec: job.spec.clone(),
            attempts: job.attempts.clone(),
            failures: job.failures,
            termination: job.termination.as_deref().cloned(),
            finished_at: job.finished_at,
            rate_limited_until: self.rate_limited_until_of(key),
            progress: self.progress.get(&key).cloned(),
        })
    }

    /// The durable record of a live queue.
    pub fn queue_record(&self, id: QueueId) -> Option<QueueRecord> {
        let node = self.queues.get(id.0 as usize)?.as_ref()?;
        Some(QueueRecord {
            path: node.path.clone(),
            config: node.config.clone(),
            state: node.state,
            counters: Some(QueueStats {
                pending: 0,
                ..node.stats
            }),
            on_demand: node.on_demand,
            note: node.note.clone(),
            removed_at: None,
        })
    }

    /// The next fencing token to be handed out. Persist it with every commit that
    /// holds assignments, so tokens keep growing across restarts.
    pub fn next_token(&self) -> u64 {
        self.next_token
    }

    /// Hands out no token or registration number below `next`: for a cluster started
    /// afresh on a store that already counted (say every queue and job of it was
    /// removed), so that a number is never given twice.
    pub fn resume_tokens_from(&mut self, next: u64) {
        if next > self.next_token {
            self.next_token = next;
            self.effects.next_token_moved = true;
        }
    }

    /// Rebuilds the ResourceManager from its records at `now`. Running attempts wait
    /// `grace` for their workers to reclaim them.
    pub fn restore(
        config: Config,
        policies: Policies,
        seed: u64,
        mut input: RestoreInput,
        now: Timestamp,
        grace: Duration,
    ) -> Result<(Self, RestoreReport), RestoreError> {
        let mut rm = ResourceManager::new(config, policies, seed)?;
        // What was spent before the restart is not known: every bucket starts empty.
        rm.rate_limits_restored_at = Some(now);
        let mut report = RestoreReport {
            queues: 1,
            ..RestoreReport::default()
        };
        // Parents before children.
        input.queues.sort_by(|a, b| {
            depth(&a.path)
                .cmp(&depth(&b.path))
                .then(a.path.cmp(&b.path))
        });
        let mut durable_counters = Vec::new();
        for record in input.queues {
            if let Some(removed_at) = record.removed_at {
                rm.restore_retired(record, removed_at);
                continue;
            }
            let failed = |error| RestoreError::Queue {
                path: record.path.clone(),
                error,
            };
            if record.path == QueuePath::root() {
                let update = QueueUpdate {
                    max_running: Some(record.config.max_running),
                    max_pending: Some(record.config.max_pending),
                    defaults: Some(record.config.defaults.clone()),
                    ordering: Some(record.config.ordering.clone()),
                    placement: Some(record.config.placement.clone()),
                    admission: Some(record.config.admission.clone()),
                    weight: Some(record.config.weight),
                    preemptable: Some(record.config.preemptable),
                    rate_limit: Some(record.config.rate_limit),
                    key_limits: Some(record.config.key_limits.clone()),
                    template: Some(record.config.template.clone()),
                    ..QueueUpdate::default()
                };
                rm.update_queue("root", &update).map_err(failed)?;
            } else {
                rm.create_queue(record.path.as_str(), record.config.clone())
                    .map_err(failed)?;
                report.queues += 1;
            }
            let id = rm.queue_ids[&record.path];
            let node = rm.node_mut(id);
            node.state = record.state;
            node.on_demand = record.on_demand;
            node.note = record.note;
            if let Some(counters) = record.counters {
                durable_counters.push((id, counters));
            }
        }

        let mut max_token = input.next_token;
        let mut max_seq = 0;
        // Grown once, not by doubling: each doubling copies the table into fresh memory
        // the kernel must zero first, a large part of a restart with millions of jobs.
        rm.jobs.reserve(input.jobs.len());
        rm.job_ids.reserve(input.jobs.len());
        let mut dependents = Vec::new();
        for record in input.jobs {
            max_seq = max_seq.max(record.seq);
            if let Some(last) = record.attempts.last() {
                max_token = max_token.max(last.token.0 + 1);
            }
            let (state, key) = rm.restore_job(record, now, grace)?;
            if rm.jobs[key].spec.depends().is_some() {
                dependents.push(key);
            }
            match state {
                JobState::Pending => report.pending += 1,
                JobState::Scheduled | JobState::Running => report.awaiting_reclaim += 1,
                _ => report.finished += 1,
            }
        }
        // Counters kept durably win over those rebuilt from the jobs still held, which
        // miss every job purged after retention; only `pending` comes from the jobs.
        for (id, counters) in durable_counters {
            let node = rm.node_mut(id);
            node.stats = QueueStats {
                pending: node.stats.pending,
                ..counters
            };
        }
        // A queue created on demand that holds nothing starts its idle time afresh.
        let on_demand: Vec<QueueId> = rm
            .queues
            .iter()
            .flatten()
            .filter(|n| n.on_demand)
            .map(|n| n.id)
            .collect();
        for id in on_demand {
            rm.mark_idle(id, now);
        }
        rm.next_token = rm.next_token.max(max_token);
        rm.next_seq = max_seq + 1;
        for schedule in input.schedules {
            let name = schedule.spec.name.clone();
            rm.restore_schedule(schedule)
                .map_err(|error| RestoreError::Schedule { name, error })?;
        }
        for broadcast in input.broadcasts {
            rm.restore_broadcast(broadcast);
        }
        rm.keys_stale = true;
        rm.dirty = true;
        // Restoring writes nothing new; what is stored is already the truth.
        rm.take_effects();
        // Except for a dependent whose parent's outcome is gone: it is cancelled, and that
        // is written by the first commit.
        rm.link_restored(dependents, now);
        Ok((rm, report))
    }

    fn tombstone_for(&mut self, path: &QueuePath) -> QueueId {
        if let Some((id, _)) = self.deleted_paths.iter().find(|(_, p)| *p == path) {
            return *id;
        }
        let id = QueueId(u32::try_from(self.queues.len()).expect("fewer than 2^32 queues"));
        self.queues.push(None);
        self.deleted_paths.insert(id, path.clone());
        id
    }

    fn restore_job(
        &mut self,
        record: JobRecord,
        now: Timestamp,
        grace: Duration,
    ) -> Result<(JobState, JobKey), RestoreError> {
        let id = record.id;
        let invalid = |reason: &str| RestoreError::Job {
            id,
            reason: reason.to_owned(),
        };
        if self.job_ids.contains_key(&id) {
            return Err(invalid("stored twice"));
        }
        let live_queue = self.queue_ids.get(&record.queue).copied();
        let queue = match (live_queue, record.state.is_terminal()) {
            (Some(q), _) if self.node(q).is_leaf() => q,
            (_, true) => self.tombstone_for(&record.queue),
            _ => {
                return Err(invalid(&format!(
                    "unfinished but its queue `{}` is not a leaf",
                    record.queue
                )));
            }
        };
        if record.state.is_active() && record.attempts.is_empty() {
            return Err(invalid("active without an attempt"));
        }
        let constraint = self.index.constraint_for(
            record.spec.selector(),
            record.spec.kind.handler(),
            &record.queue,
        );
        let mut record = record;
        match &mut record.spec.kind {
            // One shared copy of each handler name, as for submissions.
            JobKind::Function { handler, .. }
            | JobKind::Stored {
                handler: Some(handler),
            } => *handler = self.index.intern_handler(handler),
            _ => {}
        }
        let rank = match self.queues[queue.0 as usize].as_ref() {
            Some(node) => node.ordering.rank(&record.spec),
            None => 0,
        };
        let state = record.state;
        let progress = record.progress.take();
        let expires_at = record.spec.expires_at();
        let timeout = record.spec.timeout;
        let idempotency_key = record.spec.idempotency_key().map(str::to_owned);
        let key = self.jobs.insert(Job {
            id,
            queue,
            seq: record.seq,
            state,
            submitted_at: record.submitted_at,
            not_before: record.not_before,
            spec: record.spec,
            attempts: record.attempts,
            failures: record.failures,
            termination: record.termination.map(Box::new),
            finished_at: record.finished_at,
            ready_since: now,
            rank,
            constraint,
            worker: None,
            worker_slot: 0,
            waiting: Waiting::Not,
            delivered_in: 0,
            handed: false,
            // Restored from the store, which holds this very state.
            recorded: Some(state),
        });
        self.job_ids.insert(id, key);
        if let Some(worker) = self.jobs[key].spec.pinned()
            && !state.is_terminal()
        {
            self.pinned_jobs.entry(worker).or_default().push(key);
        }
        if let Some(progress) = progress {
            self.progress.insert(key, progress);
        }
        if let Some(k) = idempotency_key {
            self.idempotency.insert((queue, k), key);
        }
        // Counters are rebuilt from the jobs still held (within retention).
        if let Some(Some(node)) = self.queues.get_mut(queue.0 as usize) {
            let stats = &mut node.stats;
            stats.submitted += 1;
            match state {
                JobState::Succeeded => stats.succeeded += 1,
                JobState::Failed => stats.failed += 1,
                JobState::Cancelled => stats.cancelled += 1,
                JobState::Expired => stats.expired += 1,
                _ => {}
            }
            for attempt in &self.jobs[key].attempts {
                if let Some(finished) = attempt.finished_at {
                    stats.run.record(finished.since(attempt.scheduled_at));
                }
            }
        }
        if state.is_terminal() {
            let finished = self.jobs[key].finished_at.unwrap_or(now);
            self.timers
                .set(finished.after(self.config.retention), Timer::Purge(key));
            return Ok((state, key));
        }
        self.add_unfinished(queue, 1);
        if let Some(at) = expires_at {
            self.timers.set(at, Timer::Expire(key));
        }
        if state == JobState::Pending {
            self.node_mut(queue).stats.pending += 1;
            if self.jobs[key].spec.depends().is_some() {
                // Waits, runs or is cancelled once every job is in (`link_restored`).
                return Ok((state, key));
            }
            match self.jobs[key].not_before.filter(|t| *t > now) {
                Some(at) => self.timers.set(at, Timer::Release(key)),
                None => self.make_ready(key, now, false),
            }
            return Ok((state, key));
        }
        // Scheduled or running: wait for the worker to reclaim it.
        let attempt = self.jobs[key].attempts.last().expect("checked above");
        let (token, worker, scheduled_at) = (attempt.token, attempt.worker, attempt.scheduled_at);
        self.unclaimed.entry(worker).or_default().push(key);
        self.timers
            .set(now.after(grace), Timer::Reclaim(key, token));
        if let Some(timeout) = timeout {
            self.timers.set(
                scheduled_at.after(timeout),
                Timer::AttemptTimeout(key, token),
            );
        }
        Ok((state, key))
    }

    /// Claims the attempts a returning worker lists (running or just finished) and
    /// requeues the ones it no longer has. Called on its first poll after a restart.
    pub(crate) fn reclaim(
        &mut self,
        worker_key: WorkerKey,
        listed: &[(JobId, FencingToken)],
        now: Timestamp,
    ) {
        let worker_id = self.workers[worker_key].id;
        let Some(waiting) = self.unclaimed.remove(&worker_id) else {
            return;
        };
        for key in waiting {
            let Some(job) = self.jobs.get(key) else {
                continue;
            };
            let Some(token) = job.current_token() else {
                continue; // ended while it waited (cancelled, timed out)
            };
            if job.worker.is_some() {
                continue;
            }
            if listed.contains(&(job.id, token)) {
                self.claim(key, worker_key);
            } else {
                self.requeue_unclaimed(key, now);
            }
        }
        if self.workers[worker_key].state == crate::workers::WorkerState::Active {
            self.take_work(worker_key);
        }
    }

    /// Attaches a restored attempt to the worker that runs it, as if just assigned.
    fn claim(&mut self, key: JobKey, worker_key: WorkerKey) {
        let job = &mut self.jobs[key];
        let token = job.current_token().expect("claimed attempts are current");
        let (queue, request) = (job.queue, job.spec.request.clone());
        let worker = &mut self.workers[worker_key];
        job.worker = Some(worker_key);
        // Listed by the worker itself: known to it whatever it acknowledged.
        job.delivered_in = crate::jobs::KNOWN_TO_WORKER;
        job.handed = true;
        job.worker_slot = u32::try_from(worker.attempts.len()).expect("fewer than 2^32 attempts");
        worker.attempts.push(key);
        worker.idle_since = None;
        worker.used.add(&request);
        let node = self.queues[queue.0 as usize]
            .as_mut()
            .expect("leaf is live");
        node.attempts.push((token, key));
        if node.ready.is_fair() {
            let user = node
                .config
                .fairness_value(&self.jobs[key].spec)
                .unwrap_or("");
            node.ready.started(user, &request);
        }
        let mut at = Some(queue);
        while let Some(id) = at {
            let node = self.node_mut(id);
            node.used.add(&request);
            node.running += 1;
            at = node.parent;
        }
        self.refresh_up(queue);
        let id = self.jobs[key].id;
        self.effects.records.push(Record::Job(id));
    }

    /// A restored attempt nobody reclaimed goes back to the front of its leaf; the
    /// restart was not the job's fault, so it does not count as a failure.
    pub(crate) fn requeue_unclaimed(&mut self, key: JobKey, now: Timestamp) {
        self.end_attempt(key, AttemptOutcome::NotReclaimed, None, now);
        self.make_ready(key, now, true);
    }

    /// Fired by a reclaim timer: requeues the attempt if it is still unclaimed, and
    /// lets its worker take work once nothing of it is awaited any more.
    pub(crate) fn reclaim_expired(&mut self, key: JobKey, token: FencingToken, now: Timestamp) {
        let Some(job) = self.jobs.get(key) else {
            return;
        };
        let Some(worker) = job.attempts.last().map(|a| a.worker) else {
            return;
        };
        if job.current_token() == Some(token) && job.worker.is_none() {
            self.requeue_unclaimed(key, now);
        }
        self.forget_unclaimed(worker, key);
    }

    fn forget_unclaimed(&mut self, worker: WorkerId, key: JobKey) {
        let Some(list) = self.unclaimed.get_mut(&worker) else {
            return;
        };
        list.retain(|k| *k != key);
        if !list.is_empty() {
            return;
        }
        self.unclaimed.remove(&worker);
        if let Some(wk) = self.worker_ids.get(&worker).copied()
            && self.workers[wk].state == crate::workers::WorkerState::Active
            && self.workers[wk].indexed.is_none()
        {
            self.take_work(wk);
        }
    }
}

fn depth(path: &QueuePath) -> usize {
    path.as_str().matches('.').count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_counts_levels_below_root() {
        assert_eq!(depth(&QueuePath::root()), 0);
        assert_eq!(depth(&QueuePath::parse("root.a.b").expect("valid")), 2);
    }
}
