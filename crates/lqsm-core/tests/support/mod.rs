//! A small harness around the ResourceManager: a manual clock, numbered ids, and
//! workers that do what a test tells them.
#![allow(dead_code, clippy::unwrap_used, missing_docs)]

use lqsm_core::*;
use std::collections::BTreeMap;
use std::time::Duration;
use uuid::Uuid;

pub struct Sim {
    pub rm: ResourceManager,
    pub now: Timestamp,
    next_id: u128,
    /// Every effect taken so far, for assertions.
    pub log: Log,
    next_ticket: u64,
    /// Attempts each worker was handed.
    pub received: BTreeMap<WorkerId, std::collections::BTreeSet<(JobId, FencingToken)>>,
}

/// What the core produced, kept for assertions.
#[derive(Debug, Default)]
pub struct Log {
    pub records: Vec<Record>,
    /// Every poll answer, in the order given.
    pub answers: Vec<PollAnswer>,
    /// The assignments those answers carried.
    pub assignments: Vec<Assignment>,
    /// Every kill decided (the orders reach workers in answers).
    pub kills: Vec<Kill>,
    pub finished: Vec<JobId>,
}

pub fn job_id(n: u128) -> JobId {
    JobId(Uuid::from_u128(n))
}

impl Sim {
    pub fn new(config: Config) -> Self {
        Self::with_policies(config, Policies::default())
    }

    pub fn with_policies(config: Config, policies: Policies) -> Self {
        Self {
            rm: ResourceManager::new(config, policies, 7).unwrap(),
            now: Timestamp(1_000_000),
            next_id: 1,
            log: Log::default(),
            next_ticket: 1,
            received: BTreeMap::new(),
        }
    }

    pub fn queue(&mut self, path: &str, capacity: f64, max: f64) {
        self.rm
            .create_queue(path, QueueConfig::with_capacity(capacity, max))
            .unwrap();
    }

    pub fn fresh_id(&mut self) -> u128 {
        self.next_id += 1;
        self.next_id
    }

    pub fn worker_with(
        &mut self,
        name: &str,
        capacity: Resources,
        labels: &[(&str, &str)],
    ) -> WorkerId {
        let id = WorkerId(Uuid::from_u128(self.fresh_id() | (1 << 100)));
        let labels: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.rm
            .register_worker(
                WorkerRegistration {
                    id,
                    name: name.into(),
                    capacity,
                    labels,
                    serves_commands: true,
                    queues: Default::default(),
                    handlers: ["*".to_string()].into(),
                },
                self.now,
            )
            .unwrap();
        id
    }

    /// A known worker registers again (after a restart of the server).
    pub fn worker_back(&mut self, id: WorkerId, cores: u64) {
        self.rm
            .register_worker(
                WorkerRegistration {
                    id,
                    name: "back".into(),
                    capacity: Resources::cores(cores, cores * 1000),
                    labels: BTreeMap::new(),
                    serves_commands: true,
                    queues: Default::default(),
                    handlers: ["*".to_string()].into(),
                },
                self.now,
            )
            .unwrap();
    }

    pub fn worker(&mut self, name: &str, cores: u64, memory_mib: u64) -> WorkerId {
        self.worker_with(name, Resources::cores(cores, memory_mib), &[])
    }

    pub fn request(&mut self, queue: &str, request: Resources) -> SubmitRequest {
        let id = job_id(self.fresh_id());
        let mut req = SubmitRequest::function(id, queue, "lqsm.noop", serde_json::Value::Null);
        req.request = Some(request);
        req
    }

    pub fn submit(&mut self, req: SubmitRequest) -> Result<Submitted, SubmitError> {
        self.rm.submit(req, self.now)
    }

    pub fn submit_n(&mut self, queue: &str, n: usize, request: Resources) -> Vec<JobId> {
        (0..n)
            .map(|_| {
                let req = self.request(queue, request.clone());
                self.submit(req).unwrap().id()
            })
            .collect()
    }

    /// Runs timers and one pass, and records the effects.
    /// What a store would hold: every queue, the jobs named (every job for `None`), every
    /// schedule, and the token high-water mark.
    pub fn stored(&self, jobs: Option<&[JobId]>) -> RestoreInput {
        let queues = self
            .rm
            .queues()
            .iter()
            .map(|q| self.rm.queue_record(q.id()).unwrap())
            .chain(
                self.rm
                    .retired_queues()
                    .map(|(path, _)| self.rm.durable_queue(path).unwrap()),
            )
            .collect();
        let ids: Vec<JobId> = match jobs {
            Some(ids) => ids.to_vec(),
            None => self.rm.jobs().map(|j| j.id).collect(),
        };
        RestoreInput {
            queues,
            jobs: ids
                .iter()
                .filter_map(|id| self.rm.job_record(*id))
                .collect(),
            next_token: self.rm.next_token(),
            schedules: self.rm.schedules().cloned().collect(),
            broadcasts: self.rm.open_broadcasts().cloned().collect(),
        }
    }

    /// A restart: the state rebuilt from what a store would hold now, with `grace` for
    /// running attempts to be reclaimed (the workers must register again).
    pub fn restart(&mut self, grace: Duration) {
        let (rm, _) = ResourceManager::restore(
            self.rm.config().clone(),
            Policies::default(),
            3,
            self.stored(None),
            self.now,
            grace,
        )
        .unwrap();
        self.rm = rm;
    }

    pub fn pass(&mut self) -> PassReport {
        self.rm.tick(self.now);
        let report = self.rm.schedule(self.now);
        self.drain_effects();
        report
    }

    pub fn drain_effects(&mut self) {
        let e = self.rm.take_effects();
        self.log.records.extend(e.records);
        for answer in &e.answers {
            self.log
                .assignments
                .extend(answer.assignments.iter().cloned());
        }
        self.log.answers.extend(e.answers);
        self.log.kills.extend(e.kills);
        self.log.finished.extend(e.finished);
    }

    pub fn advance(&mut self, d: Duration) {
        self.now = self.now.after(d);
    }

    /// What this worker still runs: every attempt it was handed that is still current
    /// (a well-behaved worker that obeyed its kills), except `but`.
    pub fn still_running(
        &self,
        worker: WorkerId,
        but: Option<JobId>,
    ) -> Vec<(JobId, FencingToken)> {
        self.received
            .get(&worker)
            .into_iter()
            .flatten()
            .filter(|(j, t)| {
                Some(*j) != but && self.rm.job(*j).and_then(|job| job.current_token()) == Some(*t)
            })
            .copied()
            .collect()
    }

    /// The worker polls twice, as a real one does: reports what it runs and takes new
    /// attempts, then reports those as started too.
    pub fn poll_running(&mut self, worker: WorkerId) -> Vec<Assignment> {
        let poll = WorkerPoll {
            registration: None,
            running: self.still_running(worker, None),
            finished: vec![],
            acked: None,
            ending: Vec::new(),
            progress: Vec::new(),
        };
        let got = self.take_assignments(worker, &poll).assignments;
        let held = self.received.entry(worker).or_default();
        held.extend(got.iter().map(|a| (a.job, a.token)));
        let poll = WorkerPoll {
            registration: None,
            running: self.still_running(worker, None),
            finished: vec![],
            acked: None,
            ending: Vec::new(),
            progress: Vec::new(),
        };
        self.rm.worker_polled(worker, &poll, self.now).unwrap();
        self.drain_effects();
        got
    }

    /// A poll that does not wait: its answer hands over whatever the worker has been
    /// given since its last answer, and what the pass of the poll's batch gives it (as
    /// the server runs one after each batch of commands: a quiet worker that polls
    /// takes work again in that pass).
    pub fn take_assignments(&mut self, worker: WorkerId, poll: &WorkerPoll) -> PollAnswer {
        let ticket = self.ticket();
        self.rm
            .long_poll(worker, ticket, poll, Duration::ZERO, self.now)
            .unwrap();
        self.rm.schedule(self.now);
        self.drain_effects();
        self.answer_to(ticket)
            .expect("a poll that does not wait is answered at once")
    }

    /// A fresh poll ticket.
    pub fn ticket(&mut self) -> PollTicket {
        self.next_ticket += 1;
        PollTicket(self.next_ticket)
    }

    /// The answer given to the poll with this ticket, if any yet.
    pub fn answer_to(&self, ticket: PollTicket) -> Option<PollAnswer> {
        self.log
            .answers
            .iter()
            .find(|a| a.ticket == ticket)
            .cloned()
    }

    pub fn report(&mut self, worker: WorkerId, job: JobId, result: ReportedResult) -> PollOutcome {
        let token = self.rm.job(job).unwrap().current_token().unwrap();
        self.report_token(worker, job, token, result)
    }

    pub fn report_token(
        &mut self,
        worker: WorkerId,
        job: JobId,
        token: FencingToken,
        result: ReportedResult,
    ) -> PollOutcome {
        self.report_measured(worker, job, token, result, None, false)
    }

    /// A report carrying what the worker measured, and whether it killed the attempt for
    /// exceeding its memory.
    pub fn report_measured(
        &mut self,
        worker: WorkerId,
        job: JobId,
        token: FencingToken,
        result: ReportedResult,
        usage: Option<Usage>,
        memory_exceeded: bool,
    ) -> PollOutcome {
        let poll = WorkerPoll {
            registration: None,
            running: self.still_running(worker, Some(job)),
            finished: vec![AttemptReport {
                job,
                token,
                result,
                started_at: None,
                usage,
                memory_exceeded,
            }],
            acked: None,
            ending: Vec::new(),
            progress: Vec::new(),
        };
        let out = self.rm.worker_polled(worker, &poll, self.now).unwrap();
        self.drain_effects();
        out
    }

    pub fn succeed(&mut self, worker: WorkerId, job: JobId) -> PollOutcome {
        self.report(
            worker,
            job,
            ReportedResult::Succeeded {
                result: None,
                exit_code: Some(0),
            },
        )
    }

    pub fn used_cores(&self, queue: &str) -> f64 {
        self.rm.queue(queue).unwrap().used().cpu.0 as f64 / 1000.0
    }

    pub fn state(&self, job: JobId) -> JobState {
        self.rm.job(job).unwrap().state
    }

    pub fn check(&self) {
        if let Err(e) = self.rm.check_consistency() {
            panic!("inconsistent: {e}");
        }
    }
}

pub fn one_core() -> Resources {
    Resources::cores(1, 100)
}
