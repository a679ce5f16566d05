//! The ResourceManager runtime: one task owns the core state. Handlers send it
//! commands; it applies every command waiting in its channel as one batch, runs the
//! timers and one scheduling pass, commits everything the batch changed to the store
//! in one durable write (the group commit), and only then answers, sends the poll
//! answers the core composed and wakes waiters. The worker protocol's rules (which
//! poll to answer when, with what) are the core's; this shell only carries them.

use crate::scheduler::SchedulerError;
use crate::view::{Published, ViewBuilder};
use lqsm_core::{
    Effects, FencingToken, JobError, JobId, Kill, Policies, PollTicket, QueueError, Record,
    RefusedReport, ResourceManager, Resources, SubmitError, SubmitRequest, Submitted, Timestamp,
    WorkerError, WorkerId, WorkerPoll, WorkerRegistration,
};
use lqsm_core::{JobRecord, codec};
use lqsm_store::{Epoch, JobIndex, JobWrite, Store, WriteBatch};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Most commands applied in one batch.
const MAX_BATCH: usize = 8192;

/// A change to the queue tree.
pub enum QueueOp {
    /// Create a queue.
    Create(String, lqsm_core::QueueConfig),
    /// Change a queue's settings.
    Update(String, lqsm_core::QueueUpdate),
    /// Stop a queue.
    Stop(String),
    /// Start a queue.
    Start(String),
    /// Drain a queue.
    Drain(String),
    /// Delete a queue (force: cancel its jobs).
    Delete(String, bool),
}

/// What a poll gets back, in the core's terms (the JobServer renders it for the wire).
#[derive(Debug, Default)]
pub struct Dispatch {
    /// The answer's number (0 when it carries no assignment).
    pub seq: u64,
    /// Attempts to start, with what the worker needs to run each.
    pub assignments: Vec<DispatchedAttempt>,
    /// Attempts to stop.
    pub kills: Vec<Kill>,
    /// The poll's reports that were refused.
    pub refused: Vec<RefusedReport>,
}

/// One attempt handed to a worker.
#[derive(Debug)]
pub struct DispatchedAttempt {
    /// The job.
    pub job: JobId,
    /// The attempt's fencing token.
    pub token: FencingToken,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// The job's leaf queue.
    pub queue: String,
    /// What to run (the stored payload when it was kept out of memory).
    pub kind: lqsm_core::JobKind,
    /// What it holds while running.
    pub request: Resources,
    /// How long it may run.
    pub timeout: Option<Duration>,
}

enum Command {
    Submit {
        jobs: Vec<(SubmitRequest, Option<Vec<u8>>)>,
        reply: oneshot::Sender<Vec<Result<Submitted, SubmitError>>>,
    },
    Cancel {
        id: JobId,
        reason: String,
        reply: oneshot::Sender<Result<(), JobError>>,
    },
    Queue {
        op: QueueOp,
        reply: oneshot::Sender<Result<(), QueueError>>,
    },
    CreateQueues {
        queues: Vec<(String, lqsm_core::QueueConfig)>,
        reply: oneshot::Sender<Vec<Result<bool, QueueError>>>,
    },
    Register {
        registration: WorkerRegistration,
        reply: oneshot::Sender<Result<(), WorkerError>>,
    },
    DrainWorker {
        id: WorkerId,
        reply: oneshot::Sender<Result<(), WorkerError>>,
    },
    UndrainWorker {
        id: WorkerId,
        reply: oneshot::Sender<Result<(), WorkerError>>,
    },
    Poll {
        worker: WorkerId,
        poll: WorkerPoll,
        logs: Vec<(JobId, FencingToken, Vec<u8>)>,
        wait: Duration,
        reply: oneshot::Sender<Result<Dispatch, WorkerError>>,
    },
    WaitJob {
        id: JobId,
        wait: Duration,
        reply: oneshot::Sender<()>,
    },
}

/// Where a reply goes once the batch is durable.
enum Reply {
    Submit(
        oneshot::Sender<Vec<Result<Submitted, SubmitError>>>,
        Vec<Result<Submitted, SubmitError>>,
    ),
    Cancel(oneshot::Sender<Result<(), JobError>>, Result<(), JobError>),
    Queue(
        oneshot::Sender<Result<(), QueueError>>,
        Result<(), QueueError>,
    ),
    Queues(
        oneshot::Sender<Vec<Result<bool, QueueError>>>,
        Vec<Result<bool, QueueError>>,
    ),
    Worker(
        oneshot::Sender<Result<(), WorkerError>>,
        Result<(), WorkerError>,
    ),
    PollRefused(oneshot::Sender<Result<Dispatch, WorkerError>>, WorkerError),
}

/// A cloneable handle to the runtime.
#[derive(Clone)]
pub struct Runtime {
    tx: mpsc::UnboundedSender<Command>,
}

impl Runtime {
    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, SchedulerError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(make(tx))
            .map_err(|_| SchedulerError::Stopped)?;
        rx.await.map_err(|_| SchedulerError::Stopped)
    }

    /// Submits jobs, each with the payload to store when its kind is `Stored`; each
    /// answer comes once the batch holding it is durable.
    pub async fn submit(
        &self,
        jobs: Vec<(SubmitRequest, Option<Vec<u8>>)>,
    ) -> Result<Vec<Result<Submitted, SubmitError>>, SchedulerError> {
        self.call(|reply| Command::Submit { jobs, reply }).await
    }

    /// Cancels a job.
    pub async fn cancel(
        &self,
        id: JobId,
        reason: String,
    ) -> Result<Result<(), JobError>, SchedulerError> {
        self.call(|reply| Command::Cancel { id, reason, reply })
            .await
    }

    /// Changes the queue tree.
    pub async fn queue(&self, op: QueueOp) -> Result<Result<(), QueueError>, SchedulerError> {
        self.call(|reply| Command::Queue { op, reply }).await
    }

    /// Creates queues in order, all in one commit. Each answer is `Ok(true)` when created,
    /// `Ok(false)` when the queue already existed with exactly these settings.
    pub async fn create_queues(
        &self,
        queues: Vec<(String, lqsm_core::QueueConfig)>,
    ) -> Result<Vec<Result<bool, QueueError>>, SchedulerError> {
        self.call(|reply| Command::CreateQueues { queues, reply })
            .await
    }

    /// Registers a worker.
    pub async fn register(
        &self,
        registration: WorkerRegistration,
    ) -> Result<Result<(), WorkerError>, SchedulerError> {
        self.call(|reply| Command::Register {
            registration,
            reply,
        })
        .await
    }

    /// Drains a worker.
    pub async fn drain_worker(
        &self,
        id: WorkerId,
    ) -> Result<Result<(), WorkerError>, SchedulerError> {
        self.call(|reply| Command::DrainWorker { id, reply }).await
    }

    /// Puts a draining worker back to work.
    pub async fn undrain_worker(
        &self,
        id: WorkerId,
    ) -> Result<Result<(), WorkerError>, SchedulerError> {
        self.call(|reply| Command::UndrainWorker { id, reply })
            .await
    }

    /// A worker's poll, with the logs of the attempts it reports finished; waits up to
    /// `wait` for new work.
    pub async fn poll(
        &self,
        worker: WorkerId,
        poll: WorkerPoll,
        logs: Vec<(JobId, FencingToken, Vec<u8>)>,
        wait: Duration,
    ) -> Result<Result<Dispatch, WorkerError>, SchedulerError> {
        self.call(|reply| Command::Poll {
            worker,
            poll,
            logs,
            wait,
            reply,
        })
        .await
    }

    /// Returns when the job is finished, or `wait` has passed.
    pub async fn wait_job(&self, id: JobId, wait: Duration) -> Result<(), SchedulerError> {
        self.call(|reply| Command::WaitJob { id, wait, reply })
            .await
    }
}

/// Milliseconds since the epoch, never going backwards within the process.
struct Clock {
    last: u64,
}

impl Clock {
    fn now(&mut self) -> Timestamp {
        self.last = self.last.max(lqsm_api::epoch_ms());
        Timestamp(self.last)
    }
}

/// The current wall-clock time in ms (for handlers that need `now` to validate).
pub fn wall_clock() -> Timestamp {
    Timestamp(lqsm_api::epoch_ms())
}

/// The actor's state.
pub struct Actor {
    rm: ResourceManager,
    store: Arc<dyn Store>,
    rx: mpsc::UnboundedReceiver<Command>,
    clock: Clock,
    /// Where the answer to each waiting poll goes, by the ticket the core knows it by.
    waiting_polls: HashMap<PollTicket, oneshot::Sender<Result<Dispatch, WorkerError>>>,
    next_ticket: u64,
    waiting_jobs: HashMap<JobId, Vec<(Instant, oneshot::Sender<()>)>>,
    /// The epoch of this server's lease: every commit carries it, so that the store refuses
    /// them once another server has taken over.
    epoch: Epoch,
    /// Publishes the queue, worker and capacity view after each commit.
    views: ViewBuilder,
}

/// Encodes what a batch changed into one store write at `epoch`, in the current record
/// format ([`lqsm_core::codec`]).
pub fn write_batch(rm: &ResourceManager, effects: &Effects, epoch: Epoch) -> WriteBatch {
    let mut batch = WriteBatch {
        epoch,
        ..WriteBatch::default()
    };
    let mut seen = HashSet::new();
    let mut seen_queues = HashSet::new();
    for record in &effects.records {
        match record {
            Record::Job(id) => {
                if !seen.insert(*id) {
                    continue;
                }
                if let Some(r) = rm.job_record(*id) {
                    batch.jobs.push(job_entry(&r));
                }
            }
            Record::JobPurged(id) => batch.deleted_jobs.push(*id.0.as_bytes()),
            Record::Queue(id) => {
                if !seen_queues.insert(*id) {
                    continue;
                }
                if let Some(r) = rm.queue_record(*id) {
                    batch
                        .queues
                        .push((r.path.to_string(), codec::encode_queue(&r)));
                }
            }
            Record::QueueDeleted { path, .. } => batch.deleted_queues.push(path.to_string()),
            Record::Worker(_) => {}
        }
    }
    if effects.attempts_made > 0 {
        batch.meta.push((
            NEXT_TOKEN.to_owned(),
            rm.next_token().to_le_bytes().to_vec(),
        ));
    }
    batch
}

/// A job record as the store keeps it: encoded, with the fields the store indexes.
pub fn job_entry(record: &JobRecord) -> JobWrite {
    JobWrite {
        key: *record.id.0.as_bytes(),
        record: codec::encode_job(record),
        index: JobIndex {
            queue: record.queue.to_string(),
            state: codec::state_name(record.state).to_owned(),
            tags: record.spec.tags().to_vec(),
        },
    }
}

/// Meta key of the fencing-token high-water mark.
pub const NEXT_TOKEN: &str = "next_token";

/// Starts the actor on the current tokio runtime.
pub fn spawn(
    rm: ResourceManager,
    store: Arc<dyn Store>,
    epoch: Epoch,
    longest_poll: Duration,
    published: Published,
) -> (
    Runtime,
    tokio::task::JoinHandle<Result<(), lqsm_store::StoreError>>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut rm = rm;
    rm.set_max_poll_wait(longest_poll);
    let views = ViewBuilder::new(&rm, published);
    let actor = Actor {
        rm,
        store,
        rx,
        clock: Clock { last: 0 },
        waiting_polls: HashMap::new(),
        next_ticket: 0,
        waiting_jobs: HashMap::new(),
        epoch,
        views,
    };
    (Runtime { tx }, tokio::spawn(actor.run()))
}

impl Actor {
    /// Runs until every handle is dropped, or the store fails (then nothing more is
    /// answered: what was not durable was never acknowledged).
    async fn run(mut self) -> Result<(), lqsm_store::StoreError> {
        loop {
            let wake = self.next_wake();
            let first = tokio::select! {
                cmd = self.rx.recv() => match cmd {
                    Some(cmd) => Some(cmd),
                    None => return Ok(()),
                },
                _ = tokio::time::sleep_until(wake.into()) => None,
            };
            let mut batch = Vec::with_capacity(64);
            batch.extend(first);
            while batch.len() < MAX_BATCH {
                match self.rx.try_recv() {
                    Ok(cmd) => batch.push(cmd),
                    Err(_) => break,
                }
            }
            self.step(batch).await?;
        }
    }

    fn next_wake(&self) -> Instant {
        let mut wake = Instant::now() + Duration::from_secs(1);
        if let Some(at) = self.rm.next_timer() {
            let now = wall_clock();
            let until = Duration::from_millis(at.0.saturating_sub(now.0));
            wake = wake.min(Instant::now() + until);
        }
        for waits in self.waiting_jobs.values() {
            for (deadline, _) in waits {
                wake = wake.min(*deadline);
            }
        }
        wake
    }

    async fn step(&mut self, batch: Vec<Command>) -> Result<(), lqsm_store::StoreError> {
        let now = self.clock.now();
        let mut replies = Vec::new();
        let mut job_waits = Vec::new();
        let mut payloads = Vec::new();
        let mut job_logs = Vec::new();
        for cmd in batch {
            match cmd {
                Command::Submit { jobs, reply } => {
                    let results = jobs
                        .into_iter()
                        .map(|(job, payload)| {
                            let result = self.rm.submit(job, now);
                            if let (Ok(Submitted::Created(id)), Some(bytes)) = (&result, payload) {
                                payloads.push((*id.0.as_bytes(), bytes));
                            }
                            result
                        })
                        .collect();
                    replies.push(Reply::Submit(reply, results));
                }
                Command::Cancel { id, reason, reply } => {
                    replies.push(Reply::Cancel(reply, self.rm.cancel(id, &reason, now)));
                }
                Command::Queue { op, reply } => {
                    let result = match op {
                        QueueOp::Create(path, config) => {
                            self.rm.create_queue(&path, config).map(|_| ())
                        }
                        QueueOp::Update(path, update) => self.rm.update_queue(&path, &update),
                        QueueOp::Stop(path) => self.rm.stop_queue(&path),
                        QueueOp::Start(path) => self.rm.start_queue(&path),
                        QueueOp::Drain(path) => self.rm.drain_queue(&path),
                        QueueOp::Delete(path, force) => {
                            self.rm.delete_queue(&path, force, now).map(|_| ())
                        }
                    };
                    replies.push(Reply::Queue(reply, result));
                }
                Command::CreateQueues { queues, reply } => {
                    let results = queues
                        .into_iter()
                        .map(|(path, config)| match self.rm.find_queue(&path) {
                            Some(existing) if existing.config() == &config => Ok(false),
                            _ => self.rm.create_queue(&path, config).map(|_| true),
                        })
                        .collect();
                    replies.push(Reply::Queues(reply, results));
                }
                Command::Register {
                    registration,
                    reply,
                } => {
                    replies.push(Reply::Worker(
                        reply,
                        self.rm.register_worker(registration, now),
                    ));
                }
                Command::UndrainWorker { id, reply } => {
                    replies.push(Reply::Worker(reply, self.rm.undrain_worker(id)));
                }
                Command::DrainWorker { id, reply } => {
                    replies.push(Reply::Worker(reply, self.rm.drain_worker(id)));
                }
                Command::Poll {
                    worker,
                    poll,
                    logs,
                    wait,
                    reply,
                } => {
                    self.next_ticket += 1;
                    let ticket = PollTicket(self.next_ticket);
                    match self.rm.long_poll(worker, ticket, &poll, wait, now) {
                        Ok(outcome) => {
                            job_logs.extend(
                                outcome
                                    .accepted_logs(logs)
                                    .into_iter()
                                    .map(|(job, log)| (*job.0.as_bytes(), log)),
                            );
                            self.waiting_polls.insert(ticket, reply);
                        }
                        Err(e) => replies.push(Reply::PollRefused(reply, e)),
                    }
                }
                Command::WaitJob { id, wait, reply } => job_waits.push((id, wait, reply)),
            }
        }
        self.rm.tick(now);
        let started = Instant::now();
        let pass = self.rm.schedule(now);
        if pass.ran {
            metrics::histogram!("lqsm_schedule_seconds").record(started.elapsed().as_secs_f64());
        }
        let effects = self.rm.take_effects();
        let mut write = write_batch(&self.rm, &effects, self.epoch);
        write.payloads = payloads;
        write.logs = job_logs;
        if !write.is_empty() {
            let store = self.store.clone();
            let started = Instant::now();
            tokio::task::spawn_blocking(move || store.commit(&write))
                .await
                .map_err(|e| {
                    lqsm_store::StoreError::Engine(format!("commit task failed: {e}"))
                })??;
            metrics::histogram!("lqsm_store_commit_seconds")
                .record(started.elapsed().as_secs_f64());
        }
        // Durable: publish what readers see, then answer (so an answered change is
        // visible to the next read), hand out work and wake waiters.
        let started = Instant::now();
        self.views.update(&self.rm, &effects);
        metrics::histogram!("lqsm_view_publish_seconds").record(started.elapsed().as_secs_f64());
        crate::metrics::record_effects(&self.rm, &effects);
        for reply in replies {
            match reply {
                Reply::Submit(tx, r) => {
                    self.count_submitted(&r);
                    let _ = tx.send(r);
                }
                Reply::Cancel(tx, r) => {
                    let _ = tx.send(r);
                }
                Reply::Queues(tx, r) => {
                    let _ = tx.send(r);
                }
                Reply::Queue(tx, r) => {
                    let _ = tx.send(r);
                }
                Reply::Worker(tx, r) => {
                    let _ = tx.send(r);
                }
                Reply::PollRefused(tx, e) => {
                    let _ = tx.send(Err(e));
                }
            }
        }
        for (id, wait, reply) in job_waits {
            let finished = self.rm.job(id).is_none_or(|j| j.state.is_terminal());
            if finished || wait.is_zero() {
                let _ = reply.send(());
            } else {
                self.waiting_jobs
                    .entry(id)
                    .or_default()
                    .push((Instant::now() + wait, reply));
            }
        }
        for id in &effects.finished {
            for (_, reply) in self.waiting_jobs.remove(id).unwrap_or_default() {
                let _ = reply.send(());
            }
        }
        self.send_answers(effects.answers);
        self.expire_job_waits();
        Ok(())
    }

    fn count_submitted(&self, results: &[Result<Submitted, SubmitError>]) {
        let mut by_queue: HashMap<lqsm_core::QueueId, u64> = HashMap::new();
        for r in results {
            if let Ok(Submitted::Created(id)) = r
                && let Some(job) = self.rm.job(*id)
            {
                *by_queue.entry(job.queue).or_default() += 1;
            }
        }
        for (queue, n) in by_queue {
            if let Some(path) = self.rm.queue_path(queue) {
                crate::metrics::record_submitted(path.as_str(), n);
            }
        }
    }

    /// Sends the answers the core composed to the polls waiting for them, with what
    /// a worker needs to run each new attempt.
    fn send_answers(&mut self, answers: Vec<lqsm_core::PollAnswer>) {
        for answer in answers {
            let Some(reply) = self.waiting_polls.remove(&answer.ticket) else {
                continue;
            };
            let stored: Vec<lqsm_store::JobKey> = answer
                .assignments
                .iter()
                .filter(|a| {
                    self.rm
                        .job(a.job)
                        .is_some_and(|j| matches!(j.spec.kind, lqsm_core::JobKind::Stored { .. }))
                })
                .map(|a| *a.job.0.as_bytes())
                .collect();
            let mut fetched = fetch_kinds(self.store.as_ref(), &stored);
            let assignments = answer
                .assignments
                .into_iter()
                .filter_map(|a| {
                    let job = self.rm.job(a.job)?;
                    let kind = match fetched.remove(a.job.0.as_bytes()) {
                        Some(kind) => kind,
                        None => job.spec.kind.clone(),
                    };
                    Some(DispatchedAttempt {
                        job: a.job,
                        token: a.token,
                        attempt: a.attempt,
                        queue: self.rm.queue_path(job.queue)?.to_string(),
                        kind,
                        request: job.spec.request.clone(),
                        timeout: job.spec.timeout,
                    })
                })
                .collect();
            let _ = reply.send(Ok(Dispatch {
                seq: answer.seq,
                assignments,
                kills: answer.kills,
                refused: answer.refused,
            }));
        }
    }

    fn expire_job_waits(&mut self) {
        let now = Instant::now();
        self.waiting_jobs.retain(|_, waits| {
            let mut i = 0;
            while i < waits.len() {
                if waits[i].0 <= now || waits[i].1.is_closed() {
                    let (_, reply) = waits.swap_remove(i);
                    let _ = reply.send(());
                } else {
                    i += 1;
                }
            }
            !waits.is_empty()
        });
    }
}

/// Reads the kinds of jobs whose payload is in the store. A read failure leaves them
/// out (the caller shows the stub) and is logged.
pub fn fetch_kinds(
    store: &dyn Store,
    keys: &[lqsm_store::JobKey],
) -> HashMap<lqsm_store::JobKey, lqsm_core::JobKind> {
    if keys.is_empty() {
        return HashMap::new();
    }
    match store.payloads(keys) {
        Ok(found) => keys
            .iter()
            .zip(found)
            .filter_map(|(key, bytes)| {
                let kind = match codec::decode_payload(&bytes?) {
                    Ok(kind) => kind,
                    Err(e) => {
                        tracing::error!(job = %uuid::Uuid::from_bytes(*key), error = %e, "cannot decode a job's payload");
                        return None;
                    }
                };
                Some((*key, kind))
            })
            .collect(),
        Err(e) => {
            tracing::error!(error = %e, "cannot read job payloads");
            HashMap::new()
        }
    }
}

/// The policies this server knows (today: the built-ins).
pub fn policies() -> Policies {
    Policies::default()
}
