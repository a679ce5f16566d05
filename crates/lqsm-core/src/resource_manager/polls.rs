//! The worker poll protocol's delivery rules (docs/PROTOCOL.md is the specification a
//! worker implements). A worker long-polls; its call waits here until there is
//! something to tell it or its time is up, and the answer leaves the core as a
//! [`PollAnswer`] in [`Effects::answers`](crate::Effects::answers), to be sent once the
//! batch is durable. The rules:
//! - a worker has at most one waiting poll: a newer one replaces it, and the replaced
//!   call is answered at once, empty but for its refused reports;
//! - a waiting poll is answered as soon as there are assignments or kill orders for
//!   its worker, else when its wait is over;
//! - the wait is capped by [`Config::max_poll_wait`](super::Config::max_poll_wait) and
//!   by half the heartbeat timeout, so a waiting worker is never taken for lost;
//! - an answer carrying assignments is numbered (1, 2, … from the worker's
//!   registration); an answer without any carries 0;
//! - kill orders are sent once per attempt, however many reasons there were;
//! - the logs of refused reports belong to stale attempts and are dropped
//!   ([`PollOutcome::accepted_logs`]).

use super::{ResourceManager, WorkerError, WorkerPoll, workers::PollOutcome};
use crate::effects::{Assignment, Kill, PollAnswer, RefusedReport};
use crate::ids::{FencingToken, JobId, PollTicket, Timestamp, WorkerId, WorkerKey};
use crate::timers::Timer;
use std::time::Duration;

/// A long-poll waiting for its answer.
#[derive(Debug)]
pub(crate) struct ParkedPoll {
    ticket: PollTicket,
    /// Its wait is over: answer it even with nothing to say.
    due: bool,
    /// Refused reports of the poll, returned with its answer.
    refused: Vec<RefusedReport>,
}

impl PollOutcome {
    /// Keeps the logs of the attempts whose reports were accepted, dropping those of
    /// refused reports: they belong to attempts that are no longer current, and must
    /// not overwrite the log of the attempt that is.
    pub fn accepted_logs<T>(
        &self,
        logs: impl IntoIterator<Item = (JobId, FencingToken, T)>,
    ) -> Vec<(JobId, T)> {
        logs.into_iter()
            .filter(|(job, token, _)| {
                !self
                    .refused
                    .iter()
                    .any(|r| r.job == *job && r.token == *token)
            })
            .map(|(job, _, log)| (job, log))
            .collect()
    }
}

impl ResourceManager {
    /// A worker's poll that waits for work: applies it as
    /// [`worker_polled`](Self::worker_polled) does, then parks the call under `ticket`
    /// for at most [`poll_wait`](Self::poll_wait)`(wait)`. Its answer comes out in
    /// [`Effects::answers`](crate::Effects::answers) — in this batch when there is
    /// work already or `wait` is zero. A worker still waiting in an older poll has that
    /// one answered now, empty.
    pub fn long_poll(
        &mut self,
        id: WorkerId,
        ticket: PollTicket,
        poll: &WorkerPoll,
        wait: Duration,
        now: Timestamp,
    ) -> Result<PollOutcome, WorkerError> {
        let outcome = self.worker_polled(id, poll, now)?;
        let key = self.worker_ids[&id];
        self.end_parked_poll(key, id);
        let wait = self.poll_wait(wait);
        if !wait.is_zero() {
            self.timers
                .set(now.after(wait), Timer::PollDue(key, ticket));
        }
        self.parked_polls.insert(
            key,
            ParkedPoll {
                ticket,
                due: wait.is_zero(),
                refused: outcome.refused.clone(),
            },
        );
        self.to_answer.insert(key);
        Ok(outcome)
    }

    /// Answers the worker's parked poll, if it has one, at once and empty: a newer poll
    /// or a registration replaced it.
    pub(crate) fn end_parked_poll(&mut self, key: WorkerKey, id: WorkerId) {
        if let Some(replaced) = self.parked_polls.remove(&key) {
            self.effects.answers.push(PollAnswer {
                worker: id,
                ticket: replaced.ticket,
                seq: 0,
                assignments: Vec::new(),
                kills: Vec::new(),
                refused: replaced.refused,
            });
        }
    }

    /// How long a poll that asks to wait `asked` may wait: at most
    /// [`Config::max_poll_wait`](super::Config::max_poll_wait), and at most half the
    /// heartbeat timeout (a worker waiting in a poll sends no heartbeat).
    pub fn poll_wait(&self, asked: Duration) -> Duration {
        asked
            .min(self.config.max_poll_wait)
            .min(self.config.heartbeat_timeout / 2)
    }

    /// Sets the longest a long-poll waits (the server's `max_poll_wait_ms`).
    pub fn set_max_poll_wait(&mut self, wait: Duration) {
        self.config.max_poll_wait = wait;
    }

    /// Queues an order to stop an attempt, once per attempt.
    pub(crate) fn order_kill(&mut self, kill: Kill) {
        if let Some(key) = self.worker_ids.get(&kill.worker).copied() {
            let orders = self.kill_orders.entry(key).or_default();
            // A cancel and a stale report, say, may name the same attempt.
            if !orders
                .iter()
                .any(|o| o.job == kill.job && o.token == kill.token)
            {
                orders.push(kill.clone());
                self.to_answer.insert(key);
            }
        }
        self.effects.kills.push(kill);
    }

    /// The timer of a waiting poll fired: it is answered with what there is.
    pub(crate) fn poll_due(&mut self, key: WorkerKey, ticket: PollTicket) {
        if let Some(parked) = self.parked_polls.get_mut(&key)
            && parked.ticket == ticket
        {
            parked.due = true;
            self.to_answer.insert(key);
        }
    }

    /// Answers every waiting poll that has work, kill orders or no more time.
    pub(crate) fn answer_polls(&mut self) {
        for key in std::mem::take(&mut self.to_answer) {
            let Some(parked) = self.parked_polls.get(&key) else {
                continue;
            };
            let Some(worker) = self.workers.get(key) else {
                self.parked_polls.remove(&key);
                continue;
            };
            let has_orders = self.kill_orders.get(&key).is_some_and(|k| !k.is_empty());
            if worker.outbox.is_empty() && !has_orders && !parked.due {
                continue;
            }
            let parked = self
                .parked_polls
                .remove(&key)
                .expect("looked up just above");
            let assignments = self.hand_over(key);
            let seq = if assignments.is_empty() {
                0
            } else {
                self.workers[key].answers
            };
            self.effects.answers.push(PollAnswer {
                worker: self.workers[key].id,
                ticket: parked.ticket,
                seq,
                assignments,
                kills: self.kill_orders.remove(&key).unwrap_or_default(),
                refused: parked.refused,
            });
            self.expect_poll(key);
        }
    }

    /// Takes the worker's undelivered attempts that are still current, numbering the
    /// answer that will carry them.
    fn hand_over(&mut self, key: WorkerKey) -> Vec<Assignment> {
        let worker = &mut self.workers[key];
        let outbox = std::mem::take(&mut worker.outbox);
        let (id, answer) = (worker.id, worker.answers + 1);
        let mut out = Vec::with_capacity(outbox.len());
        for job_key in outbox {
            let Some(job) = self.jobs.get_mut(job_key) else {
                continue;
            };
            if job.worker != Some(key) || job.delivered_in != 0 {
                continue;
            }
            job.delivered_in = answer;
            job.handed = true;
            let attempt = job.attempts.last().expect("an active job has an attempt");
            out.push(Assignment {
                worker: id,
                job: job.id,
                attempt: attempt.number,
                token: attempt.token,
            });
        }
        if !out.is_empty() {
            self.workers[key].answers = answer;
        }
        out
    }
}
