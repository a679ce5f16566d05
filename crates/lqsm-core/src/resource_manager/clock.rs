//! A step of the shell's clock. The core has one `now`, which follows the wall clock so
//! that calendar instants (ETAs, expiries, cron fire times, retention, the times users
//! see) mean what they say. Liveness is measured in durations instead: a heartbeat
//! deadline, an attempt's timeout, a restored attempt's grace, a long-poll's wait, a
//! retry's backoff, the redelivery of an unacknowledged answer, a starved queue's delay
//! and the rate limits. When the wall clock steps (an NTP step, a VM resumed, an operator
//! setting the date), the shell, which measures time on a monotonic clock, says by how
//! much, and every one of those deadlines moves with it: none of them is shortened or
//! stretched by the step.

use super::ResourceManager;
use crate::jobs::JobState;
use crate::timers::{Timer, shifted};

impl ResourceManager {
    /// The shell's `now` has jumped by `by_ms` milliseconds (forward when positive) with
    /// no time passing: the wall clock was stepped. Moves every deadline measured as a
    /// duration by the same amount, so that a forward step makes no worker look silent
    /// and no attempt look timed out, and a backward one stalls no heartbeat check,
    /// timeout, backoff or rate limit for the step's length. Calendar instants stay
    /// where they are: a job's ETA (`not_before` before its first attempt) and its
    /// `expires_at`, schedules' fire times, broadcasts' ends and retention follow the
    /// wall clock.
    pub fn clock_jumped(&mut self, by_ms: i64) {
        if by_ms == 0 {
            return;
        }
        let jobs = &self.jobs;
        let waits_for_backoff = |job: &crate::jobs::Job| {
            job.state == JobState::Pending && !job.attempts.is_empty() && job.not_before.is_some()
        };
        self.timers.shift(by_ms, |timer| match timer {
            Timer::AttemptTimeout(..)
            | Timer::Heartbeat(_)
            | Timer::Quiet(_)
            | Timer::ForgetWorker(_)
            | Timer::QueueIdle(_)
            | Timer::Reclaim(..)
            | Timer::PollDue(..)
            | Timer::PreemptionDue
            | Timer::RateLimit(_)
            | Timer::GiveBack(_) => true,
            Timer::Release(key) => jobs.get(*key).is_some_and(waits_for_backoff),
            Timer::Expire(_)
            | Timer::Purge(_)
            | Timer::ForgetRetiredQueues
            | Timer::Schedule(_)
            | Timer::BroadcastUntil(_) => false,
        });
        for job in self.jobs.values_mut() {
            if waits_for_backoff(job) {
                job.not_before = job.not_before.map(|at| shifted(at, by_ms));
            }
            if job.state == JobState::Pending {
                job.ready_since = shifted(job.ready_since, by_ms);
            }
        }
        for worker in self.workers.values_mut() {
            worker.heartbeat_deadline = shifted(worker.heartbeat_deadline, by_ms);
            worker.heartbeat_timer = worker.heartbeat_timer.map(|at| shifted(at, by_ms));
            worker.quiet_deadline = shifted(worker.quiet_deadline, by_ms);
            worker.quiet_timer = worker.quiet_timer.map(|at| shifted(at, by_ms));
            // Idle time is measured like a heartbeat: a step must not make a busy
            // worker's neighbour look idle for ten minutes, nor hide one that is.
            worker.idle_since = worker.idle_since.map(|at| shifted(at, by_ms));
            if let Some((upto, since)) = worker.behind {
                worker.behind = Some((upto, shifted(since, by_ms)));
            }
        }
        for node in self.queues.iter_mut().flatten() {
            node.starved_since = node.starved_since.map(|at| shifted(at, by_ms));
            node.rate_held_until = node.rate_held_until.map(|at| shifted(at, by_ms));
            node.idle_since = node.idle_since.map(|at| shifted(at, by_ms));
        }
        for until in self.held_until.values_mut() {
            *until = shifted(*until, by_ms);
        }
        self.shift_rate_limit_buckets(by_ms);
    }
}
