//! What happens when time passes: delayed jobs become ready, pending jobs expire,
//! attempts time out, silent workers are lost and finished jobs are purged.

use super::ResourceManager;
use crate::effects::{KillReason, Record};
use crate::ids::Timestamp;
use crate::jobs::{AttemptOutcome, JobKey, JobState, Termination};
use crate::timers::Timer;
use crate::workers::WorkerState;

impl ResourceManager {
    /// Fires every timer due at `now`: delayed jobs become ready, expired ones expire,
    /// attempts past their timeout are killed, silent workers are lost, finished jobs
    /// past retention are purged, and due preemption makes the next pass act.
    pub fn tick(&mut self, now: Timestamp) {
        self.latest_now = now;
        while let Some((at, timer)) = self.timers.pop_due(now) {
            match timer {
                Timer::Release(key) => {
                    let Some(job) = self.jobs.get(key) else {
                        continue;
                    };
                    if job.state == JobState::Pending
                        && job.waiting != crate::jobs::Waiting::Blocked
                        && job.not_before.is_some_and(|t| t <= now)
                    {
                        self.make_ready(key, now, false);
                    }
                }
                Timer::Expire(key) => {
                    let Some(job) = self.jobs.get(key) else {
                        continue;
                    };
                    if job.state == JobState::Pending
                        && job.spec.expires_at().is_some_and(|t| t <= now)
                    {
                        self.terminate(key, Termination::Expired, now);
                    }
                }
                Timer::AttemptTimeout(key, token) => {
                    let Some(job) = self.jobs.get(key) else {
                        continue;
                    };
                    if job.current_token() == Some(token) {
                        self.fail_attempt(
                            key,
                            AttemptOutcome::TimedOut,
                            Some(KillReason::TimedOut),
                            now,
                        );
                    }
                }
                Timer::Heartbeat(key) => {
                    let Some(worker) = self.workers.get_mut(key) else {
                        continue;
                    };
                    worker.heartbeat_timer = None;
                    if worker.state == WorkerState::Lost {
                        continue;
                    }
                    if worker.heartbeat_deadline <= now {
                        self.lose_worker(key, now);
                    } else {
                        self.arm_heartbeat(key);
                    }
                }
                Timer::Quiet(key) => {
                    let Some(worker) = self.workers.get_mut(key) else {
                        continue;
                    };
                    worker.quiet_timer = None;
                    if worker.state == WorkerState::Lost || worker.quiet {
                        continue;
                    }
                    if worker.quiet_deadline > now {
                        self.arm_quiet(key);
                    } else if !self.parked_polls.contains_key(&key) {
                        // A worker waiting in a poll polled again: the answer to that
                        // one sets its next deadline.
                        self.go_quiet(key, now);
                    }
                }
                Timer::QueueIdle(id) => self.queue_idle_due(id, now),
                Timer::ForgetRetiredQueues => self.forget_retired_queues(now),
                Timer::ForgetWorker(key) => {
                    // A worker lost, back and lost again is kept from its latest loss.
                    if self.workers.get(key).is_some_and(|w| {
                        w.state == WorkerState::Lost
                            && w.heartbeat_deadline
                                .after(self.config.lost_worker_retention)
                                <= now
                    }) {
                        self.forget_worker(key);
                    }
                }
                Timer::Purge(key) => {
                    let Some(job) = self.jobs.get(key) else {
                        continue;
                    };
                    // A job a dependent still waits on is kept; the dependent's end
                    // purges it then.
                    if job
                        .finished_at
                        .is_some_and(|f| f.after(self.config.retention) <= now)
                        && !self.needed_by_dependents(key)
                    {
                        self.purge(key);
                    }
                }
                Timer::Reclaim(key, token) => self.reclaim_expired(key, token, now),
                Timer::PollDue(key, ticket) => self.poll_due(key, ticket),
                Timer::RateLimit(leaf) => self.rate_limit_due(leaf, now),
                Timer::GiveBack(hold) => self.give_back(hold),
                Timer::Schedule(key) => self.fire_schedule(key, now),
                Timer::BroadcastUntil(id) => {
                    if self
                        .open_broadcasts
                        .get(&id)
                        .is_some_and(|b| b.until.is_some_and(|t| t <= now))
                    {
                        self.close_broadcast(id);
                    }
                }
                Timer::PreemptionDue => {
                    let _ = at;
                    self.dirty = true;
                }
            }
        }
    }

    pub(crate) fn purge(&mut self, key: JobKey) {
        let job = self.jobs.remove(key).expect("purged jobs exist");
        self.children.remove(&key);
        self.open_children.remove(&key);
        self.progress.remove(&key);
        if let Some(worker) = job.spec.pinned()
            && let Some(pinned) = self.pinned_jobs.get_mut(&worker)
        {
            pinned.retain(|k| *k != key);
            if pinned.is_empty() {
                self.pinned_jobs.remove(&worker);
            }
        }
        self.job_ids.remove(&job.id);
        if let Some(k) = job.spec.idempotency_key() {
            self.idempotency.remove(&(job.queue, k.to_owned()));
        }
        let queue = self
            .queue_path(job.queue)
            .cloned()
            .expect("a job's queue outlives it");
        self.effects.records.push(Record::JobPurged {
            id: job.id,
            queue,
            recorded: job.recorded,
            tags: job.spec.tags().to_vec(),
        });
    }
}
