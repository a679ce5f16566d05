//! The command-sequence target: bytes read (with `arbitrary`) as a sequence of commands
//! to the core's ResourceManager, as its shell and its workers would send them —
//! submissions (with retries, timeouts, delays, expiries, dependencies, selectors),
//! workflows, worker registrations (again under a known id too), polls that report,
//! acknowledge, leave attempts out or repeat old reports, cancellations, queue creation,
//! change, deletion and draining, schedules, time passing, scheduling passes, and
//! restarts from what a store would hold (through the store's codec).
//!
//! The properties, after every command: nothing panics; the core's own consistency
//! check holds; no attempt (fencing token) is handed out twice; a job is reported
//! finished at most once and is terminal exactly when it was; no job has failed more
//! often than its retry policy allows; every stored record reads back as written; a
//! restart from the stored state succeeds.

use arbitrary::{Arbitrary, Unstructured};
use lqsm_core::schedules::{Misfire, Overlap, ScheduleSpec, Trigger};
use lqsm_core::*;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Duration;
use uuid::Uuid;

/// Queues the commands name (by index): the tree's shape changes as they are created
/// and deleted, so a path may name a queue, a missing one, or one with children.
pub const PATHS: [&str; 8] = [
    "root.a",
    "root.a.x",
    "root.a.y",
    "root.b",
    "root.b.z",
    "root.c",
    "root.a.x.deep",
    "root.bad..path",
];

/// How many distinct workers the commands name.
const WORKERS: u8 = 6;
/// Most commands read from one input: longer inputs add time, not reach.
const MAX_COMMANDS: usize = 400;
/// Most jobs one input submits, bounding the cost of an input.
const MAX_JOBS: usize = 600;

/// One command to the core.
#[derive(Arbitrary, Debug, Clone)]
pub enum Command {
    /// Submit a job.
    Submit(Submission),
    /// Submit a workflow of up to eight nodes, each waiting for earlier ones.
    Workflow {
        /// Per node: its queue and whom it waits for (an offset back, 0 for none).
        nodes: Vec<(u8, u8)>,
        /// Whether nodes run only when their parents succeeded.
        all_succeeded: bool,
    },
    /// A worker registers (again, when it is known).
    Register {
        /// Which worker.
        worker: u8,
        /// Its cores.
        cores: u8,
        /// Its memory, in GiB.
        gib: u8,
        /// Whether it carries the label `zone=z1`.
        labelled: bool,
        /// Whether it serves only `root.a`'s subtree.
        only_a: bool,
    },
    /// A worker polls.
    Poll(Poll),
    /// Cancel a job the sequence submitted.
    Cancel {
        /// Which job (modulo those submitted).
        job: u16,
    },
    /// Cancel every unfinished job of a queue (and a state).
    CancelSelected {
        /// Which queue.
        queue: u8,
        /// Only pending jobs.
        pending_only: bool,
    },
    /// Drain a worker.
    DrainWorker {
        /// Which worker.
        worker: u8,
    },
    /// Put a draining worker back to work.
    UndrainWorker {
        /// Which worker.
        worker: u8,
    },
    /// Time passes, then timers run.
    Advance {
        /// How much, in milliseconds (up to about 65 s; more with `minutes`).
        millis: u16,
        /// Whole minutes added.
        minutes: u8,
    },
    /// A scheduling pass (timers first).
    Pass,
    /// Create a queue.
    CreateQueue {
        /// Which path.
        queue: u8,
        /// Its guarantee, percent (taken modulo 128: some are out of range).
        capacity: u8,
        /// Its ceiling, percent (likewise).
        max_capacity: u8,
    },
    /// Change a queue's settings.
    UpdateQueue {
        /// Which queue.
        queue: u8,
        /// The change.
        update: Update,
    },
    /// Delete a queue.
    DeleteQueue {
        /// Which queue.
        queue: u8,
        /// Cancel its jobs.
        force: bool,
    },
    /// Stop, drain or start a queue.
    QueueState {
        /// Which queue.
        queue: u8,
        /// 0 stop, 1 drain, otherwise start.
        state: u8,
    },
    /// Create or replace a schedule firing every few seconds.
    Schedule {
        /// Which of four names.
        name: u8,
        /// Its interval, in seconds.
        every_s: u8,
        /// Its job's queue.
        queue: u8,
        /// Replace an existing one rather than create.
        replace: bool,
        /// Skip fires while the last job runs.
        skip_overlap: bool,
        /// Catch up on missed fires (up to 3) rather than run once.
        catch_up: bool,
    },
    /// Pause or resume a schedule.
    PauseSchedule {
        /// Which name.
        name: u8,
        /// Pause (or resume).
        paused: bool,
    },
    /// Delete a schedule.
    DeleteSchedule {
        /// Which name.
        name: u8,
    },
    /// The server restarts: the state rebuilt from what a store holds.
    Restart {
        /// Grace for running attempts to be reported, in seconds.
        grace_s: u8,
    },
}

/// A job's settings.
#[derive(Arbitrary, Debug, Clone)]
pub struct Submission {
    /// Which queue.
    pub queue: u8,
    /// Cores asked.
    pub cores: u8,
    /// Memory asked, in units of 250 MiB.
    pub memory: u8,
    /// Priority.
    pub priority: i8,
    /// Attempts allowed.
    pub attempts: u8,
    /// Timeout, seconds.
    pub timeout_s: Option<u8>,
    /// Not before, seconds from now.
    pub delay_s: Option<u8>,
    /// Expires, seconds from now.
    pub expires_s: Option<u8>,
    /// Idempotency key (one of a few, so they repeat).
    pub idempotency: Option<u8>,
    /// Needs a worker with `zone=z1`.
    pub selector: bool,
    /// Waits for an earlier job (an offset back from the last one).
    pub after: Option<u8>,
    /// A command job rather than a function.
    pub command: bool,
    /// Reuses an earlier job's id (a client retrying with its own id).
    pub reuse_id: Option<u8>,
}

/// A worker's poll.
#[derive(Arbitrary, Debug, Clone)]
pub struct Poll {
    /// Which worker.
    pub worker: u8,
    /// How many of its attempts it reports finished.
    pub finish: u8,
    /// How they ended: succeeded, failed, failed for good, timed out, asked for a retry.
    pub outcome: u8,
    /// A bit per running attempt: set, it is left out of the poll (a lossy worker).
    pub forget: u8,
    /// Repeats a report it already sent.
    pub repeat_old: bool,
    /// Acknowledges the last answer it got.
    pub ack: bool,
    /// Names the finished attempts as `ending` instead of reporting them.
    pub ending: bool,
    /// Sends progress for its first attempt.
    pub progress: bool,
    /// Long-polls this many seconds (0: answered at once).
    pub wait_s: u8,
}

/// A queue change.
#[derive(Arbitrary, Debug, Clone)]
pub struct Update {
    capacity: Option<u8>,
    max_capacity: Option<u8>,
    weight: Option<u8>,
    max_running: Option<Option<u8>>,
    max_pending: Option<Option<u8>>,
    preemptable: Option<bool>,
    rate_per_second: Option<Option<u8>>,
    ordering: Option<u8>,
}

const ORDERINGS: [&str; 3] = ["priority_fifo", "fifo", "no_such_policy"];

/// Reads an input as commands (as many as it holds, up to a bound).
pub fn commands(data: &[u8]) -> Vec<Command> {
    let mut u = Unstructured::new(data);
    let mut out = Vec::new();
    while !u.is_empty() && out.len() < MAX_COMMANDS {
        match Command::arbitrary(&mut u) {
            Ok(c) => out.push(c),
            Err(_) => break,
        }
    }
    out
}

/// The target: runs the commands an input reads as, checking the properties after
/// each. Panics, with the reason and the step, when one does not hold.
pub fn run(data: &[u8]) {
    let commands = commands(data);
    let mut world = World::new();
    for (step, command) in commands.iter().enumerate() {
        world.apply(command);
        if let Err(why) = world.check() {
            panic!("after step {step} ({command:?}): {why}");
        }
    }
}

struct World {
    rm: ResourceManager,
    now: Timestamp,
    next_id: u128,
    next_ticket: u64,
    jobs: Vec<JobId>,
    /// What each worker was handed and has not finished or been told to stop.
    held: BTreeMap<WorkerId, BTreeSet<(JobId, FencingToken)>>,
    /// Reports sent, for repeating one.
    sent: Vec<(WorkerId, AttemptReport)>,
    last_answer: BTreeMap<WorkerId, u64>,
    handed_out: HashSet<FencingToken>,
    finished: HashSet<JobId>,
    /// Reads of each worker's answers are checked against the kills and assignments.
    restarts: u32,
}

fn config() -> Config {
    let mut config = Config::default();
    config.preemption.enabled = true;
    config.preemption.delay = Duration::from_secs(5);
    config
}

fn worker_id(i: u8) -> WorkerId {
    WorkerId(Uuid::from_u128(0xa000 + u128::from(i % WORKERS)))
}

fn path(i: u8) -> &'static str {
    PATHS[usize::from(i) % PATHS.len()]
}

fn schedule_name(i: u8) -> String {
    format!("every-{}", i % 4)
}

impl World {
    fn new() -> Self {
        let rm = ResourceManager::new(config(), Policies::default(), 7)
            .unwrap_or_else(|e| panic!("the default configuration is refused: {e}"));
        let mut world = Self {
            rm,
            now: Timestamp(1_000_000),
            next_id: 1,
            next_ticket: 0,
            jobs: Vec::new(),
            held: BTreeMap::new(),
            sent: Vec::new(),
            last_answer: BTreeMap::new(),
            handed_out: HashSet::new(),
            finished: HashSet::new(),
            restarts: 0,
        };
        for (p, cap) in [("root.a", 50.0), ("root.a.x", 60.0), ("root.b", 30.0)] {
            world
                .rm
                .create_queue(p, QueueConfig::with_capacity(cap, 100.0))
                .unwrap_or_else(|e| panic!("the starting tree is refused: {e}"));
        }
        world
    }

    fn fresh_job_id(&mut self) -> JobId {
        self.next_id += 1;
        // Time-ordered as the server's ids are: the counter in the timestamp bits.
        JobId(Uuid::from_u128(
            (self.next_id << 80) | (0x7 << 76) | (0x8 << 60) | self.next_id,
        ))
    }

    fn request(&mut self, s: &Submission) -> SubmitRequest {
        let id = match s.reuse_id {
            Some(i) if !self.jobs.is_empty() => self.jobs[usize::from(i) % self.jobs.len()],
            _ => self.fresh_job_id(),
        };
        let kind = if s.command {
            JobKind::command(["true"])
        } else {
            JobKind::function("lqsm.noop", serde_json::Value::Null)
        };
        let mut req = SubmitRequest::new(id, path(s.queue), kind);
        req.request = Some(Resources::cores(
            u64::from(s.cores % 10),
            u64::from(s.memory) * 250,
        ));
        req.priority = Some(i32::from(s.priority));
        req.retry = Some(RetryPolicy {
            max_attempts: u32::from(s.attempts % 5),
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(8),
            jitter: 0.5,
        });
        req.timeout = s.timeout_s.map(|t| Duration::from_secs(u64::from(t)));
        req.not_before = s
            .delay_s
            .map(|d| self.now.after(Duration::from_secs(u64::from(d))));
        req.expires_at = s
            .expires_s
            .map(|d| self.now.after(Duration::from_secs(u64::from(d))));
        req.idempotency_key = s.idempotency.map(|k| format!("key-{}", k % 4));
        if s.selector {
            req.selector.insert("zone".into(), "z1".into());
        }
        if let Some(back) = s.after
            && !self.jobs.is_empty()
        {
            let parent = self.jobs[self.jobs.len() - 1 - usize::from(back) % self.jobs.len()];
            req.depends = Some(Dependencies {
                parents: vec![parent],
                run_when: if back % 2 == 0 {
                    RunWhen::AllSucceeded
                } else {
                    RunWhen::AllFinished
                },
                pass_results: back % 3 == 0,
            });
        }
        req
    }

    fn apply(&mut self, command: &Command) {
        match command {
            Command::Submit(s) => {
                if self.jobs.len() >= MAX_JOBS {
                    return;
                }
                let req = self.request(s);
                if let Ok(submitted) = self.rm.submit(req, self.now) {
                    self.jobs.push(submitted.id());
                }
            }
            Command::Workflow {
                nodes,
                all_succeeded,
            } => {
                if self.jobs.len() >= MAX_JOBS {
                    return;
                }
                let workflow = Uuid::from_u128(self.next_id | (0xf << 100));
                let mut reqs: Vec<SubmitRequest> = Vec::new();
                for (i, (queue, back)) in nodes.iter().take(8).enumerate() {
                    let id = self.fresh_job_id();
                    let mut req =
                        SubmitRequest::function(id, path(*queue), "lqsm.noop", Default::default());
                    req.request = Some(Resources::cores(1, 100));
                    req.workflow = Some(WorkflowNode {
                        workflow,
                        name: format!("n{i}"),
                    });
                    if *back > 0 && i > 0 {
                        let parent = reqs[i - 1 - usize::from(*back - 1) % i].id;
                        req.depends = Some(Dependencies {
                            parents: vec![parent],
                            run_when: if *all_succeeded {
                                RunWhen::AllSucceeded
                            } else {
                                RunWhen::AllFinished
                            },
                            pass_results: true,
                        });
                    }
                    reqs.push(req);
                }
                if let Ok(ids) = self.rm.submit_workflow(reqs, self.now) {
                    self.jobs.extend(ids);
                }
            }
            Command::Register {
                worker,
                cores,
                gib,
                labelled,
                only_a,
            } => {
                let id = worker_id(*worker);
                let mut labels = BTreeMap::new();
                if *labelled {
                    labels.insert("zone".to_owned(), "z1".to_owned());
                }
                let queues = if *only_a {
                    QueuePath::parse("root.a").into_iter().collect()
                } else {
                    BTreeSet::new()
                };
                let capacity = Resources::cores(u64::from(cores % 17), u64::from(*gib) * 1000);
                let registration = WorkerRegistration {
                    id,
                    name: format!("w{}", worker % WORKERS),
                    capacity,
                    labels,
                    serves_commands: true,
                    queues,
                    handlers: ["*".to_owned()].into(),
                };
                let _ = self.rm.register_worker(registration, self.now);
            }
            Command::Poll(p) => self.poll(p),
            Command::Cancel { job } => {
                if !self.jobs.is_empty() {
                    let id = self.jobs[usize::from(*job) % self.jobs.len()];
                    let _ = self.rm.cancel(id, "fuzz", self.now);
                }
            }
            Command::CancelSelected {
                queue,
                pending_only,
            } => {
                let selection = JobSelection {
                    queue: Some(path(*queue).to_owned()),
                    tag: None,
                    state: pending_only.then_some(JobState::Pending),
                };
                let _ = self.rm.cancel_selected(&selection, "fuzz", self.now);
            }
            Command::DrainWorker { worker } => {
                let _ = self.rm.drain_worker(worker_id(*worker));
            }
            Command::UndrainWorker { worker } => {
                let _ = self.rm.undrain_worker(worker_id(*worker));
            }
            Command::Advance { millis, minutes } => {
                self.now = self.now.after(
                    Duration::from_millis(u64::from(*millis))
                        + Duration::from_secs(60 * u64::from(*minutes % 16)),
                );
                self.rm.tick(self.now);
            }
            Command::Pass => {
                self.rm.tick(self.now);
                self.rm.schedule(self.now);
            }
            Command::CreateQueue {
                queue,
                capacity,
                max_capacity,
            } => {
                let config = QueueConfig::with_capacity(
                    f64::from(capacity % 128),
                    f64::from(max_capacity % 128),
                );
                let _ = self.rm.create_queue(path(*queue), config);
            }
            Command::UpdateQueue { queue, update } => {
                let change = QueueUpdate {
                    capacity: update.capacity.map(|c| f64::from(c % 128)),
                    max_capacity: update.max_capacity.map(|c| f64::from(c % 128)),
                    weight: update.weight.map(u32::from),
                    max_running: update.max_running.map(|m| m.map(u32::from)),
                    max_pending: update.max_pending.map(|m| m.map(u64::from)),
                    preemptable: update.preemptable,
                    rate_limit: update.rate_per_second.map(|r| {
                        r.map(|n| {
                            RateLimit::new(
                                Rate {
                                    count: u32::from(n),
                                    per: RatePeriod::Second,
                                },
                                u32::from(n % 4),
                            )
                        })
                    }),
                    ordering: update
                        .ordering
                        .map(|o| ORDERINGS[usize::from(o) % ORDERINGS.len()].to_owned()),
                    ..QueueUpdate::default()
                };
                let _ = self.rm.update_queue(path(*queue), &change);
            }
            Command::DeleteQueue { queue, force } => {
                let _ = self.rm.delete_queue(path(*queue), *force, self.now);
            }
            Command::QueueState { queue, state } => {
                let p = path(*queue);
                let _ = match state % 3 {
                    0 => self.rm.stop_queue(p),
                    1 => self.rm.drain_queue(p),
                    _ => self.rm.start_queue(p),
                };
            }
            Command::Schedule {
                name,
                every_s,
                queue,
                replace,
                skip_overlap,
                catch_up,
            } => {
                let id = self.fresh_job_id();
                let mut job =
                    SubmitRequest::function(id, path(*queue), "lqsm.noop", Default::default());
                job.request = Some(Resources::cores(1, 100));
                let spec = ScheduleSpec {
                    name: schedule_name(*name),
                    trigger: Trigger::Every {
                        interval_ms: u64::from(*every_s) * 1000,
                    },
                    job,
                    misfire: if *catch_up {
                        Misfire::CatchUp { max: 3 }
                    } else {
                        Misfire::RunOnce
                    },
                    overlap: if *skip_overlap {
                        Overlap::Skip
                    } else {
                        Overlap::Allow
                    },
                };
                let _ = if *replace {
                    self.rm.update_schedule(spec, self.now).map(|_| ())
                } else {
                    self.rm.create_schedule(spec, self.now).map(|_| ())
                };
            }
            Command::PauseSchedule { name, paused } => {
                let _ = self
                    .rm
                    .pause_schedule(&schedule_name(*name), *paused, self.now);
            }
            Command::DeleteSchedule { name } => {
                let _ = self.rm.delete_schedule(&schedule_name(*name));
            }
            Command::Restart { grace_s } => self.restart(Duration::from_secs(u64::from(*grace_s))),
        }
    }

    fn poll(&mut self, p: &Poll) {
        let worker = worker_id(p.worker);
        let held: Vec<(JobId, FencingToken)> = self
            .held
            .get(&worker)
            .map(|h| h.iter().copied().collect())
            .unwrap_or_default();
        let done = usize::from(p.finish % 4).min(held.len());
        let (finished, running) = held.split_at(done);
        let running: Vec<(JobId, FencingToken)> = running
            .iter()
            .enumerate()
            .filter(|(i, _)| *i >= 8 || p.forget & (1 << i) == 0)
            .map(|(_, a)| *a)
            .collect();
        let mut reports: Vec<AttemptReport> = finished
            .iter()
            .map(|&(job, token)| AttemptReport {
                job,
                token,
                result: match p.outcome % 5 {
                    0 => ReportedResult::Succeeded {
                        result: None,
                        exit_code: Some(0),
                    },
                    1 => ReportedResult::Failed {
                        exit_code: Some(1),
                        message: "fuzz".into(),
                        retry: true,
                    },
                    2 => ReportedResult::Failed {
                        exit_code: Some(2),
                        message: "fuzz".into(),
                        retry: false,
                    },
                    3 => ReportedResult::TimedOut,
                    _ => ReportedResult::Retry {
                        countdown: Some(Duration::from_secs(1)),
                        message: String::new(),
                    },
                },
                started_at: None,
                usage: None,
                memory_exceeded: false,
            })
            .collect();
        let mut ending = Vec::new();
        if p.ending {
            // Reported in another poll: named here, the report itself not sent.
            ending.extend(reports.drain(..).map(|r| (r.job, r.token)));
        }
        if p.repeat_old
            && let Some((_, old)) = self.sent.iter().rev().find(|(w, _)| *w == worker)
        {
            reports.push(old.clone());
        }
        let progress = match running.first() {
            Some(&(job, token)) if p.progress => {
                vec![(job, token, serde_json::json!({"done": 1}).into())]
            }
            _ => Vec::new(),
        };
        let poll = WorkerPoll {
            running,
            finished: reports.clone(),
            acked: if p.ack {
                self.last_answer.get(&worker).copied()
            } else {
                None
            },
            ending,
            progress,
            // A worker of protocol 6 names its registration; an older one does not.
            registration: if p.ack {
                self.rm.worker(worker).map(|w| w.registration)
            } else {
                None
            },
        };
        self.next_ticket += 1;
        let ticket = PollTicket(self.next_ticket);
        let wait = Duration::from_secs(u64::from(p.wait_s % 40));
        if self
            .rm
            .long_poll(worker, ticket, &poll, wait, self.now)
            .is_ok()
        {
            if let Some(held) = self.held.get_mut(&worker) {
                for r in &reports {
                    held.remove(&(r.job, r.token));
                }
            }
            self.sent.extend(reports.into_iter().map(|r| (worker, r)));
        }
    }

    /// Rebuilds the core from its records, each written and read back through the
    /// store's codec.
    fn restart(&mut self, grace: Duration) {
        let queues = self
            .rm
            .queues()
            .iter()
            .filter_map(|q| self.rm.queue_record(q.id()))
            .map(|record| {
                let bytes = codec::encode_queue(&record);
                codec::decode_queue(&bytes)
                    .unwrap_or_else(|e| panic!("a queue record does not read back: {e}"))
            })
            .collect();
        let jobs = self
            .rm
            .jobs()
            .map(|j| j.id)
            .collect::<Vec<_>>()
            .into_iter()
            .filter_map(|id| self.rm.job_record(id))
            .map(|record| {
                let bytes = codec::encode_job(&record);
                let back = codec::decode_job(&bytes)
                    .unwrap_or_else(|e| panic!("a job record does not read back: {e}"));
                if codec::encode_job(&back) != bytes {
                    panic!(
                        "job {} reads back different from how it was written",
                        record.id
                    );
                }
                back
            })
            .collect();
        let input = RestoreInput {
            queues,
            jobs,
            next_token: self.rm.next_token(),
            schedules: self.rm.schedules().cloned().collect(),
            broadcasts: self.rm.open_broadcasts().cloned().collect(),
        };
        self.restarts += 1;
        match ResourceManager::restore(config(), Policies::default(), 7, input, self.now, grace) {
            Ok((rm, _)) => self.rm = rm,
            Err(e) => panic!("the stored state of a consistent core does not restore: {e}"),
        }
    }

    /// Takes the effects and checks them and the state.
    fn check(&mut self) -> Result<(), String> {
        let effects = self.rm.take_effects();
        for answer in &effects.answers {
            self.last_answer.insert(answer.worker, answer.seq);
            let held = self.held.entry(answer.worker).or_default();
            for a in &answer.assignments {
                if !self.handed_out.insert(a.token) {
                    return Err(format!("token {} handed out twice", a.token));
                }
                held.insert((a.job, a.token));
            }
            for k in &answer.kills {
                held.remove(&(k.job, k.token));
            }
        }
        for id in &effects.finished {
            if !self.finished.insert(*id) {
                return Err(format!("job {id} finished twice"));
            }
        }
        self.rm.check_consistency()?;
        for job in self.rm.jobs() {
            if job.state.is_terminal() != self.finished.contains(&job.id) {
                return Err(format!(
                    "job {} is {:?} but was {}reported finished",
                    job.id,
                    job.state,
                    if self.finished.contains(&job.id) {
                        ""
                    } else {
                        "not "
                    }
                ));
            }
            if job.failures > job.spec.retry.max_attempts.max(1) {
                return Err(format!(
                    "job {} failed {} times with {} attempts allowed",
                    job.id, job.failures, job.spec.retry.max_attempts
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_read_as_commands_until_they_run_out() {
        let bytes: Vec<u8> = (0..2000u32).map(|i| (i * 7919 % 251) as u8).collect();
        let read = commands(&bytes);
        assert!(read.len() > 10, "{} commands", read.len());
        assert!(commands(&[]).is_empty());
    }

    #[test]
    fn a_hand_written_sequence_runs_jobs_to_the_end() {
        let mut world = World::new();
        let steps = [
            Command::Register {
                worker: 0,
                cores: 8,
                gib: 8,
                labelled: false,
                only_a: false,
            },
            Command::Submit(Submission {
                queue: 1,
                cores: 1,
                memory: 1,
                priority: 0,
                attempts: 2,
                timeout_s: None,
                delay_s: None,
                expires_s: None,
                idempotency: None,
                selector: false,
                after: None,
                command: false,
                reuse_id: None,
            }),
            Command::Pass,
            Command::Poll(Poll {
                worker: 0,
                finish: 0,
                outcome: 0,
                forget: 0,
                repeat_old: false,
                ack: true,
                ending: false,
                progress: false,
                wait_s: 0,
            }),
            Command::Poll(Poll {
                worker: 0,
                finish: 1,
                outcome: 0,
                forget: 0,
                repeat_old: false,
                ack: true,
                ending: false,
                progress: false,
                wait_s: 0,
            }),
        ];
        for step in &steps {
            world.apply(step);
            world.check().expect("consistent");
        }
        assert_eq!(world.jobs.len(), 1);
        assert!(world.finished.contains(&world.jobs[0]), "the job succeeded");
    }
}
