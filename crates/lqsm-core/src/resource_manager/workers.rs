//! Worker commands: registration, the poll (heartbeat, reports, running list) and
//! draining.

use super::ResourceManager;
use crate::effects::{Kill, KillReason, Record, RefusalReason, RefusedReport};
use crate::ids::{FencingToken, JobId, Timestamp, WorkerId};
use crate::jobs::Waiting;
use crate::jobs::{AttemptOutcome, AttemptReport, JobKey, JobState, ReportedResult, Termination};
use crate::resources::Resources;
use crate::timers::Timer;
use crate::workers::{Worker, WorkerKey, WorkerRegistration, WorkerState};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// How long a worker's `acked` may stay below the answers handed to it before their
/// attempts are handed again: far beyond an answer's time on the wire, since a worker
/// acknowledges an answer in its next poll.
pub const REDELIVER_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

/// How long after a poll of a worker is answered the worker may take to poll again
/// before it is *quiet*: a worker polls again as soon as it has processed an answer, so
/// one that has not is dead, cut off or stalled. A quiet worker gets no new attempts, and
/// those placed on it but not yet handed over are placed elsewhere; it takes work again
/// with its next poll. Without this, a worker killed without a word goes on being chosen for new work
/// until its heartbeat timeout declares it lost (20 s by default): work the cluster
/// could have run, waiting on a dead worker.
pub const QUIET_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// A refused worker command.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum WorkerError {
    /// The worker never registered (or was forgotten).
    #[error("worker {0} is not registered; register first")]
    Unknown(WorkerId),
    /// The poll was sent for an earlier registration of the worker than its latest:
    /// it is taken for nothing (its reports ride on the next poll).
    #[error(
        "this poll of worker {worker} belongs to its registration {sent}, not to its latest, {latest}; it is ignored"
    )]
    StaleRegistration {
        /// The worker.
        worker: WorkerId,
        /// The registration the poll names.
        sent: u64,
        /// The worker's latest registration.
        latest: u64,
    },
    /// The worker missed its heartbeat; its attempts were requeued.
    #[error("worker {0} was declared lost; register again")]
    Lost(WorkerId),
    /// A registration field is out of range.
    #[error("{field}: {reason}")]
    InvalidField {
        /// The offending field, as the wire names it.
        field: String,
        /// What is wrong.
        reason: String,
    },
}

/// One poll: a heartbeat, the attempts the worker still runs and those it finished.
#[derive(Clone, PartialEq, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerPoll {
    /// Attempts running on the worker now.
    #[serde(default)]
    pub running: Vec<(JobId, FencingToken)>,
    /// Attempts that ended since the last poll.
    #[serde(default)]
    pub finished: Vec<AttemptReport>,
    /// The highest answer number ([`crate::PollAnswer::seq`]) the worker has
    /// seen. Attempts carried by later answers are not yet expected in `running`.
    /// `None`: every answer handed out is assumed seen.
    #[serde(default)]
    pub acked: Option<u64>,
    /// The latest state running attempts reported of themselves (Celery's
    /// `update_state`): small JSON, kept with the job.
    #[serde(default)]
    pub progress: Vec<(JobId, FencingToken, crate::jobs::Json)>,
    /// Attempts that ended and whose reports are on their way in another poll: neither
    /// running nor lost (a worker with two polls out names them in the second).
    #[serde(default)]
    pub ending: Vec<(JobId, FencingToken)>,
    /// The registration this poll was sent for ([`crate::Worker::registration`]).
    /// A poll sent before the worker registered again may arrive after it, with a list
    /// of running attempts that predates the registration: naming it lets the server
    /// refuse such a poll instead of counting attempts lost from it. `None`: an older
    /// worker, taken as its latest registration.
    #[serde(default)]
    pub registration: Option<u64>,
}

/// What the core made of a poll.
#[derive(Clone, PartialEq, Debug, Default)]
pub struct PollOutcome {
    /// Reports that were refused (the worker drops them).
    pub refused: Vec<RefusedReport>,
    /// Reports that were accepted.
    pub accepted: usize,
}

impl ResourceManager {
    /// Registers a worker, or updates one that registers again. A worker that was
    /// lost comes back empty: its old attempts were requeued when it was lost.
    pub fn register_worker(
        &mut self,
        reg: WorkerRegistration,
        now: Timestamp,
    ) -> Result<(), WorkerError> {
        let invalid = |field: &str, reason: &str| WorkerError::InvalidField {
            field: field.to_owned(),
            reason: reason.to_owned(),
        };
        if reg.name.is_empty() || reg.name.len() > 256 {
            return Err(invalid("name", "must be 1 to 256 characters"));
        }
        reg.capacity
            .check("capacity")
            .map_err(|bad| WorkerError::InvalidField {
                field: bad.field,
                reason: bad.reason,
            })?;
        if !reg.serves_commands && reg.handlers.is_empty() {
            return Err(invalid(
                "handlers",
                "a worker that runs no commands must serve at least one handler",
            ));
        }
        // The same id is the same process, whose attempts go on running: a smaller
        // size than they hold would leave the worker over-committed, and the scheduler
        // would count room that is not there. (A restarted process registers a new id.)
        if let Some(known) = self.worker_ids.get(&reg.id).map(|k| &self.workers[*k])
            && !known.used.fits_in(&reg.capacity)
        {
            return Err(invalid(
                "capacity",
                &format!(
                    "worker {} is registered again with less than its running attempts hold \
                     ({}); offer at least that, or register a new worker id",
                    reg.id, known.used
                ),
            ));
        }
        let class = self.index.class_for(&reg);
        let deadline = now.after(self.config.heartbeat_timeout);
        let registration = self.next_token;
        self.next_token += 1;
        self.effects.next_token_moved = true;
        let key = match self.worker_ids.get(&reg.id) {
            Some(key) => {
                let key = *key;
                // A poll parked from before this registration would carry answers of
                // the new one to a caller that no longer counts them: it ends, empty.
                self.end_parked_poll(key, reg.id);
                let worker = &mut self.workers[key];
                // A worker back from lost starts its idle time afresh; one registering
                // again while it was idle keeps the time it has been idle.
                if worker.state == WorkerState::Lost || !worker.attempts.is_empty() {
                    worker.idle_since = None;
                }
                if worker.attempts.is_empty() {
                    worker.idle_since.get_or_insert(now);
                }
                self.total.sub(worker.share_of_total());
                self.index.remove(worker);
                worker.name = reg.name;
                worker.capacity = reg.capacity;
                worker.labels = reg.labels;
                worker.serves_commands = reg.serves_commands;
                worker.handlers = reg.handlers;
                worker.queues = reg.queues;
                worker.class = class;
                worker.state = WorkerState::Active;
                worker.registered_at = now;
                worker.registration = registration;
                worker.heartbeat_deadline = deadline;
                // A worker that registers again counts answers afresh, and must list
                // from its next poll on what it still runs of what it held.
                worker.answers = 0;
                worker.behind = None;
                for job in &worker.attempts {
                    if self.jobs[*job].delivered_in != 0 {
                        self.jobs[*job].delivered_in = crate::jobs::KNOWN_TO_WORKER;
                    }
                }
                key
            }
            None => {
                let key = self.workers.insert(Worker {
                    id: reg.id,
                    name: reg.name,
                    capacity: reg.capacity,
                    used: Resources::default(),
                    labels: reg.labels,
                    serves_commands: reg.serves_commands,
                    handlers: reg.handlers,
                    queues: reg.queues,
                    state: WorkerState::Active,
                    registered_at: now,
                    registration,
                    heartbeat_deadline: deadline,
                    idle_since: Some(now),
                    attempts: Vec::new(),
                    outbox: Vec::new(),
                    answers: 0,
                    class,
                    indexed: None,
                    heartbeat_timer: None,
                    behind: None,
                    quiet: false,
                    quiet_deadline: now,
                    quiet_timer: None,
                });
                self.worker_ids.insert(reg.id, key);
                key
            }
        };
        self.total.add(&self.workers[key].capacity);
        self.latest_now = now;
        self.heard_from(key);
        // A worker with attempts to reclaim takes no new work until its first poll
        // has said which of them it still runs; that poll lets it take work.
        if !self.unclaimed.contains_key(&reg.id) {
            self.take_work(key);
        }
        self.join_open_broadcasts(key, now);
        self.arm_heartbeat(key);
        self.effects.records.push(Record::Worker(reg.id));
        self.keys_stale = true;
        self.dirty = true;
        Ok(())
    }

    /// Lets a worker take new work: it joins the placement index, and the jobs set
    /// aside because no worker taking work could run them get another look, since
    /// this one may. Every way a worker starts taking work goes through here (a
    /// registration, an undrain, the end of its reclaim after a restart): a job
    /// parked while the worker was held back would otherwise never be looked at again.
    ///
    /// A quiet worker joins the index only with its next poll (`heard_from`), but its
    /// capacity counts in the cluster already, which raises the queues' ceilings: jobs
    /// set aside at a ceiling get their look now, on the workers that poll.
    pub(crate) fn take_work(&mut self, key: WorkerKey) {
        let worker = &mut self.workers[key];
        if !worker.quiet {
            self.index.upsert(key, worker);
            let id = worker.id;
            self.release_pinned(id);
        }
        self.unpark_all();
        self.dirty = true;
    }

    /// A new or changed worker, or a raised ceiling, may let set-aside jobs run: they
    /// go back to the front of their leaves, in the order they had.
    pub(crate) fn unpark_all(&mut self) {
        for leaf in std::mem::take(&mut self.parked_leaves) {
            let Some(Some(node)) = self.queues.get_mut(leaf.0 as usize) else {
                continue;
            };
            let parked = std::mem::take(&mut node.parked);
            for key in parked.into_iter().rev() {
                let Some(job) = self.jobs.get_mut(key) else {
                    continue;
                };
                if job.waiting != Waiting::Parked {
                    continue;
                }
                job.waiting = Waiting::Ready;
                self.enqueue_ready(leaf, key, true);
            }
            self.refresh_up(leaf);
            self.head_changed(leaf);
        }
    }

    pub(crate) fn arm_heartbeat(&mut self, key: WorkerKey) {
        let worker = &mut self.workers[key];
        if worker.heartbeat_timer.is_none() {
            worker.heartbeat_timer = Some(worker.heartbeat_deadline);
            self.timers
                .set(worker.heartbeat_deadline, Timer::Heartbeat(key));
        }
    }

    /// The worker was heard from (a registration or a poll): it is not quiet. Returns
    /// whether it was.
    pub(crate) fn heard_from(&mut self, key: WorkerKey) -> bool {
        let was_quiet = std::mem::replace(&mut self.workers[key].quiet, false);
        if was_quiet {
            self.effects
                .records
                .push(Record::Worker(self.workers[key].id));
        }
        was_quiet
    }

    /// A poll of the worker was answered now: it is quiet unless it polls again within
    /// [`QUIET_GRACE`].
    pub(crate) fn expect_poll(&mut self, key: WorkerKey) {
        self.workers[key].quiet_deadline = self.latest_now.after(QUIET_GRACE);
        self.arm_quiet(key);
    }

    pub(crate) fn arm_quiet(&mut self, key: WorkerKey) {
        let worker = &mut self.workers[key];
        if worker.quiet_timer.is_none() {
            worker.quiet_timer = Some(worker.quiet_deadline);
            self.timers.set(worker.quiet_deadline, Timer::Quiet(key));
        }
    }

    /// The worker has not polled again in time: it takes no new work, and the attempts
    /// placed on it that it was never handed go back to their queues, at the front,
    /// without counting as failures. Those it was handed stay: it may be running them,
    /// and only its heartbeat timeout may declare them lost.
    pub(crate) fn go_quiet(&mut self, key: WorkerKey, now: Timestamp) {
        let worker = &mut self.workers[key];
        worker.quiet = true;
        self.index.remove(worker);
        let withdrawn: Vec<JobKey> = self.workers[key]
            .attempts
            .iter()
            .copied()
            .filter(|job| self.never_handed(*job))
            .collect();
        self.withdraw_attempts(withdrawn, now);
        let jobs = &self.jobs;
        self.workers[key]
            .outbox
            .retain(|job| jobs.get(*job).is_some_and(|j| j.worker == Some(key)));
        self.dirty = true;
        self.effects
            .records
            .push(Record::Worker(self.workers[key].id));
    }

    /// Withdraws these attempts, each back at the front of its leaf, in the order the
    /// jobs were submitted.
    fn withdraw_attempts(&mut self, mut jobs: Vec<JobKey>, now: Timestamp) {
        jobs.sort_unstable_by_key(|job| std::cmp::Reverse(self.jobs[*job].seq));
        for job in jobs {
            self.withdraw_attempt(job, now);
        }
    }

    /// Whether the job's current attempt was never handed to its worker, so that it
    /// cannot have started. A job pinned to its worker (a broadcast's) can run nowhere
    /// else, and is left where it is.
    fn never_handed(&self, key: JobKey) -> bool {
        let job = &self.jobs[key];
        job.delivered_in == 0 && !job.handed && job.spec.pinned().is_none()
    }

    pub(crate) fn worker_key(&self, id: WorkerId) -> Result<WorkerKey, WorkerError> {
        let key = *self.worker_ids.get(&id).ok_or(WorkerError::Unknown(id))?;
        if self.workers[key].state == WorkerState::Lost {
            return Err(WorkerError::Lost(id));
        }
        Ok(key)
    }

    /// A worker's poll: heartbeat, finished attempts, and the attempts it runs. An
    /// attempt handed to it that it neither runs nor reports is treated as lost; one it
    /// runs that is not current is killed.
    pub fn worker_polled(
        &mut self,
        id: WorkerId,
        poll: &WorkerPoll,
        now: Timestamp,
    ) -> Result<PollOutcome, WorkerError> {
        let worker_key = self.worker_key(id)?;
        let latest = self.workers[worker_key].registration;
        if let Some(sent) = poll.registration
            && sent != latest
        {
            return Err(WorkerError::StaleRegistration {
                worker: id,
                sent,
                latest,
            });
        }
        self.workers[worker_key].heartbeat_deadline = now.after(self.config.heartbeat_timeout);
        self.arm_heartbeat(worker_key);
        self.latest_now = now;
        if self.heard_from(worker_key)
            && self.workers[worker_key].state == WorkerState::Active
            && !self.unclaimed.contains_key(&id)
        {
            self.take_work(worker_key);
        }
        if self.unclaimed.contains_key(&id) {
            // What it runs, what it reports, and what another poll reports.
            let listed: Vec<(JobId, FencingToken)> = poll
                .running
                .iter()
                .chain(&poll.ending)
                .copied()
                .chain(poll.finished.iter().map(|r| (r.job, r.token)))
                .collect();
            self.reclaim(worker_key, &listed, now);
        }

        let mut outcome = PollOutcome::default();
        for report in &poll.finished {
            match self.current_attempt_on(worker_key, report.job, report.token) {
                Ok(key) => {
                    outcome.accepted += 1;
                    if let Some(attempt) = self.jobs[key].attempts.last_mut()
                        && attempt.started_at.is_none()
                    {
                        attempt.started_at = Some(
                            report
                                .started_at
                                .map_or(now, |t| t.max(attempt.scheduled_at).min(now)),
                        );
                    }
                    self.note_usage(key, report, now);
                    if !self.retry_with_more_memory(key, report, now) {
                        self.apply_report(key, &report.result, now);
                    }
                }
                Err(reason) => outcome.refused.push(RefusedReport {
                    job: report.job,
                    token: report.token,
                    reason,
                }),
            }
        }
        for (job, token) in &poll.running {
            match self.current_attempt_on(worker_key, *job, *token) {
                Ok(key) => {
                    let job = &mut self.jobs[key];
                    if job.state == JobState::Scheduled {
                        job.state = JobState::Running;
                        if let Some(a) = job.attempts.last_mut() {
                            a.started_at = Some(now);
                        }
                        self.effects.records.push(Record::Job(job.id));
                    }
                }
                Err(_) => self.order_kill(Kill {
                    worker: id,
                    job: *job,
                    token: *token,
                    reason: KillReason::Stale,
                }),
            }
        }
        for (job, token, state) in &poll.progress {
            if let Ok(key) = self.current_attempt_on(worker_key, *job, *token)
                && self.progress.get(&key) != Some(state)
            {
                self.progress.insert(key, state.clone());
                self.effects.records.push(Record::Job(*job));
            }
        }
        let mut reported: Vec<FencingToken> = poll
            .running
            .iter()
            .chain(&poll.ending)
            .map(|(_, t)| *t)
            .chain(poll.finished.iter().map(|r| r.token))
            .collect();
        reported.sort_unstable();
        let vanished: Vec<JobKey> = self.workers[worker_key]
            .attempts
            .iter()
            .copied()
            .filter(|key| {
                let job = &self.jobs[*key];
                let token = job.current_token().expect("worker attempts are active");
                // Only an attempt carried by an answer the worker says it has seen
                // can be missing: a later answer may still be on its way to it.
                let expected = job.delivered_in == crate::jobs::KNOWN_TO_WORKER
                    || (job.delivered_in != 0
                        && poll.acked.is_none_or(|seen| job.delivered_in <= seen));
                expected && reported.binary_search(&token).is_err()
            })
            .collect();
        for key in vanished {
            self.fail_attempt(key, AttemptOutcome::Lost, None, now);
        }
        if let Some(seen) = poll.acked {
            self.redeliver_unacknowledged(worker_key, seen, now);
        }
        Ok(outcome)
    }

    /// An answer that carried attempts can be lost on its way (a dropped connection).
    /// Its attempts would then wait, assigned and holding the worker's resources, until
    /// a later answer happened to move the worker's `acked` past them, and forever if
    /// none came. So a worker whose `acked` stays below the answers handed to it for
    /// [`REDELIVER_AFTER`] is given those attempts again, in a new answer: it runs an
    /// attempt once however often it sees it, and an answer merely slow costs a
    /// duplicate message.
    fn redeliver_unacknowledged(&mut self, key: WorkerKey, seen: u64, now: Timestamp) {
        let worker = &self.workers[key];
        let handed = worker.answers;
        let upto = match worker.behind {
            Some((upto, _)) if seen >= upto => {
                self.workers[key].behind = (seen < handed).then_some((handed, now));
                return;
            }
            Some((upto, since)) if now >= since.after(REDELIVER_AFTER) => upto,
            Some(_) => return,
            None => {
                if seen < handed {
                    self.workers[key].behind = Some((handed, now));
                }
                return;
            }
        };
        let again: Vec<JobKey> = worker
            .attempts
            .iter()
            .copied()
            .filter(|job| {
                let delivered_in = self.jobs[*job].delivered_in;
                delivered_in > seen && delivered_in <= upto
            })
            .collect();
        for job in &again {
            self.jobs[*job].delivered_in = 0;
        }
        let worker = &mut self.workers[key];
        worker.behind = None;
        if !again.is_empty() {
            worker.outbox.extend(again);
            self.to_answer.insert(key);
        }
    }

    /// Whether `worker` may talk to the server: registered and not declared lost (else
    /// it must register again first).
    pub fn check_worker(&self, worker: WorkerId) -> Result<(), WorkerError> {
        self.worker_key(worker).map(|_| ())
    }

    /// The number of attempt `token` of job `id` when it is that job's current attempt
    /// on `worker`, by the rule reports follow (so a stale attempt's output, uploaded
    /// while it runs, is refused as its report would be). Changes nothing: a worker
    /// uploading output is not heard from (its polls are its heartbeat).
    pub fn running_attempt(
        &self,
        worker: WorkerId,
        id: JobId,
        token: FencingToken,
    ) -> Result<Result<u32, RefusalReason>, WorkerError> {
        let worker = self.worker_key(worker)?;
        Ok(self.current_attempt_on(worker, id, token).and_then(|key| {
            self.jobs[key]
                .current_attempt()
                .map(|a| a.number)
                .ok_or(RefusalReason::StaleAttempt)
        }))
    }

    pub(crate) fn current_attempt_on(
        &self,
        worker: WorkerKey,
        id: JobId,
        token: FencingToken,
    ) -> Result<JobKey, RefusalReason> {
        let key = *self.job_ids.get(&id).ok_or(RefusalReason::UnknownJob)?;
        let job = &self.jobs[key];
        if job.worker == Some(worker) && job.current_token() == Some(token) {
            Ok(key)
        } else {
            Err(RefusalReason::StaleAttempt)
        }
    }

    pub(crate) fn apply_report(&mut self, key: JobKey, result: &ReportedResult, now: Timestamp) {
        match result {
            ReportedResult::Succeeded { result, exit_code } => {
                let outcome = AttemptOutcome::Succeeded {
                    result: result.clone(),
                    exit_code: *exit_code,
                };
                self.end_attempt(key, outcome, None, now);
                self.terminate(
                    key,
                    Termination::Succeeded {
                        result: result.clone(),
                        exit_code: *exit_code,
                    },
                    now,
                );
            }
            ReportedResult::Failed {
                exit_code,
                message,
                retry,
            } => {
                let outcome = AttemptOutcome::Failed {
                    exit_code: *exit_code,
                    message: message.clone(),
                };
                if *retry {
                    self.fail_attempt(key, outcome, None, now);
                } else {
                    self.fail_job(key, outcome, now);
                }
            }
            ReportedResult::TimedOut => self.fail_attempt(key, AttemptOutcome::TimedOut, None, now),
            ReportedResult::SucceededStored { exit_code } => {
                let outcome = AttemptOutcome::Succeeded {
                    result: None,
                    exit_code: *exit_code,
                };
                self.end_attempt(key, outcome, None, now);
                self.terminate(
                    key,
                    Termination::SucceededStored {
                        exit_code: *exit_code,
                    },
                    now,
                );
            }
            ReportedResult::Retry { countdown, message } => {
                let outcome = AttemptOutcome::RetryRequested {
                    countdown: *countdown,
                    message: message.clone(),
                };
                self.fail_attempt(key, outcome, None, now);
            }
        }
    }

    /// The number of the latest poll answer that carried assignments to this worker
    /// (0 before the first). Sent with that answer; the worker echoes the highest it
    /// has seen in `WorkerPoll::acked`.
    pub fn answer_seq(&self, id: WorkerId) -> u64 {
        self.worker(id).map_or(0, |w| w.answers)
    }

    /// Takes a worker out of scheduling: it finishes what it runs and gets nothing new.
    pub fn drain_worker(&mut self, id: WorkerId) -> Result<(), WorkerError> {
        let key = self.worker_key(id)?;
        let worker = &mut self.workers[key];
        if worker.state == WorkerState::Active {
            self.total.sub(&worker.capacity);
            worker.state = WorkerState::Draining;
            self.total.add(worker.share_of_total());
            self.index.remove(worker);
            // Shares change, and jobs only this worker could run must be set aside.
            self.keys_stale = true;
            self.dirty = true;
            self.effects.records.push(Record::Worker(id));
        }
        Ok(())
    }

    /// Puts a draining worker back to work: it takes new attempts again and its whole
    /// capacity counts in the cluster total. An active worker stays as it is; a lost
    /// one must register again.
    pub fn undrain_worker(&mut self, id: WorkerId) -> Result<(), WorkerError> {
        let key = self.worker_key(id)?;
        let worker = &mut self.workers[key];
        if worker.state != WorkerState::Draining {
            return Ok(());
        }
        self.total.sub(worker.share_of_total());
        worker.state = WorkerState::Active;
        self.total.add(&worker.capacity);
        if !self.unclaimed.contains_key(&id) {
            self.take_work(key);
        }
        self.keys_stale = true;
        self.dirty = true;
        self.effects.records.push(Record::Worker(id));
        Ok(())
    }

    pub(crate) fn lose_worker(&mut self, key: WorkerKey, now: Timestamp) {
        let worker = &mut self.workers[key];
        self.total.sub(worker.share_of_total());
        worker.state = WorkerState::Lost;
        worker.outbox.clear();
        self.index.remove(worker);
        let id = worker.id;
        let attempts: Vec<JobKey> = worker.attempts.clone();
        let (withdrawn, lost): (Vec<JobKey>, Vec<JobKey>) = attempts
            .into_iter()
            .partition(|job| self.never_handed(*job));
        self.withdraw_attempts(withdrawn, now);
        for job in lost {
            self.fail_attempt(job, AttemptOutcome::Lost, None, now);
        }
        let name = self.workers[key].name.clone();
        self.cancel_pinned_to(id, &format!("its worker {name} was lost"), now);
        let forget_at = self.workers[key]
            .heartbeat_deadline
            .after(self.config.lost_worker_retention);
        self.timers.set(forget_at, Timer::ForgetWorker(key));
        self.keys_stale = true;
        self.dirty = true;
        self.effects.records.push(Record::Worker(id));
    }

    /// Drops a lost worker the cluster has kept for its retention. It holds no attempt
    /// (they failed when it was lost) and takes no work; if the process comes back it
    /// is told it is unknown and registers again, as after a restart of the server.
    pub(crate) fn forget_worker(&mut self, key: WorkerKey) {
        let Some(worker) = self.workers.remove(key) else {
            return;
        };
        debug_assert!(worker.attempts.is_empty() && worker.indexed.is_none());
        self.worker_ids.remove(&worker.id);
        self.end_parked_poll(key, worker.id);
        self.kill_orders.remove(&key);
        self.to_answer.remove(&key);
        self.effects.records.push(Record::Worker(worker.id));
    }
}
