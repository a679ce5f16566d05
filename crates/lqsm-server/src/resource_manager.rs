//! The ResourceManager runtime: one task owns the core state. Handlers send it
//! commands; it applies every command waiting in its channel as one batch, runs the
//! timers and one scheduling pass, commits everything the batch changed to the store
//! in one durable write (the group commit), and only then answers, sends the poll
//! answers the core composed and wakes waiters. The worker protocol's rules (which
//! poll to answer when, with what) are the core's; this shell only carries them.

use crate::scheduler::SchedulerError;
use crate::view::{Published, ViewBuilder};
use lqsm_core::schedules::{ScheduleError, ScheduleRecord, ScheduleSpec};
use lqsm_core::{
    Effects, FencingToken, JobError, JobId, Kill, PollTicket, QueueError, Record, RefusedReport,
    ResourceManager, Resources, SubmitError, SubmitRequest, Submitted, Timestamp, WorkerError,
    WorkerId, WorkerPoll, WorkerRegistration,
};
use lqsm_core::{JobRecord, JobState, codec};
use lqsm_store::{Epoch, JobDeletion, JobIndex, JobWrite, Store, WriteBatch};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// How finely the actor wakes for timers: a timer fires at most this late.
const TIMER_GRANULARITY: Duration = Duration::from_millis(10);

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

/// A change to the periodic schedules.
pub enum ScheduleOp {
    /// Create a schedule.
    Create(Box<ScheduleSpec>),
    /// Replace a schedule's trigger, template and policies.
    Update(Box<ScheduleSpec>),
    /// Pause a schedule.
    Pause(String),
    /// Resume a paused schedule.
    Resume(String),
    /// Delete a schedule.
    Delete(String),
}

/// What a worker's poll uploads with the attempts it reports finished, each named by job
/// and attempt: their output, and the results too large to keep in memory. Kept only for
/// reports the core accepts.
#[derive(Debug, Default)]
pub struct Uploads {
    /// Captured output.
    pub logs: Vec<(JobId, FencingToken, Vec<u8>)>,
    /// Results (JSON text) the core was told are kept apart (`SucceededStored`).
    pub results: Vec<(JobId, FencingToken, Vec<u8>)>,
}

/// A piece of a running attempt's output, as its worker uploaded it (protocol 8).
#[derive(Debug, Clone)]
pub struct LogChunk {
    /// The job.
    pub job: JobId,
    /// The attempt.
    pub token: FencingToken,
    /// Where `text` starts in the attempt's output.
    pub offset: u64,
    /// The output from `offset` on.
    pub text: String,
}

/// What the store keeps a schedule under, in the named values.
pub const SCHEDULE_PREFIX: &str = "schedule/";

/// What the store keeps an open broadcast under, in the named values.
pub const BROADCAST_PREFIX: &str = "broadcast/";

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
    /// When it is warned that its time runs out.
    pub soft_timeout: Option<Duration>,
    /// For a job that receives its parents' results: those results, or where to read them.
    pub inputs: Option<Inputs>,
}

/// The parents' results a dispatched job receives.
#[derive(Debug)]
pub enum Inputs {
    /// In `after`'s order (`null` for a parent that did not succeed).
    Inline(Vec<lqsm_core::jobs::Json>),
    /// Too large to travel with the assignment: the worker reads them
    /// (`GET /v1/jobs/{id}/inputs`), so no poll answer grows with a chord's size.
    Elsewhere,
}

/// Parents' results larger than this in all travel by reference ([`Inputs::Elsewhere`]).
pub const INLINE_INPUTS_BYTES: usize = 256 * 1024;

/// The parents' results a job receives, from what `rm` holds (parents are kept while a
/// dependent has not ended), or `None` when it receives none.
fn inputs_of(rm: &ResourceManager, job: &lqsm_core::Job) -> Option<Inputs> {
    let depends = job.spec.depends().filter(|d| d.pass_results)?;
    let mut size = 0;
    let mut values = Vec::with_capacity(depends.parents.len().min(1024));
    for parent in &depends.parents {
        let result = match rm.job(*parent).and_then(|p| p.termination.as_deref()) {
            Some(lqsm_core::Termination::Succeeded {
                result: Some(result),
                ..
            }) => result.clone(),
            // Kept in the store, not in memory: the worker reads them there.
            Some(lqsm_core::Termination::SucceededStored { .. }) => return Some(Inputs::Elsewhere),
            _ => lqsm_core::jobs::Json::null(),
        };
        size += result.as_str().len();
        if size > INLINE_INPUTS_BYTES {
            return Some(Inputs::Elsewhere);
        }
        values.push(result);
    }
    Some(Inputs::Inline(values))
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
    SubmitBroadcast {
        template: (SubmitRequest, Option<Vec<u8>>),
        id: uuid::Uuid,
        new_workers: bool,
        reply: oneshot::Sender<Result<Vec<lqsm_core::BroadcastJob>, lqsm_core::WorkflowError>>,
    },
    SubmitWorkflow {
        nodes: Vec<(SubmitRequest, Option<Vec<u8>>)>,
        reply: oneshot::Sender<Result<Vec<JobId>, lqsm_core::WorkflowError>>,
    },
    CancelSelected {
        selection: lqsm_core::JobSelection,
        reason: String,
        reply: oneshot::Sender<Result<usize, lqsm_core::SelectionError>>,
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
        logs: crate::resource_manager::Uploads,
        wait: Duration,
        reply: oneshot::Sender<Result<Dispatch, WorkerError>>,
    },
    WaitJob {
        id: JobId,
        wait: Duration,
        reply: oneshot::Sender<()>,
    },
    Schedule {
        op: ScheduleOp,
        reply: oneshot::Sender<Result<Option<ScheduleRecord>, ScheduleError>>,
    },
    Schedules {
        reply: oneshot::Sender<Vec<ScheduleRecord>>,
    },
    LogChunks {
        worker: WorkerId,
        chunks: Vec<LogChunk>,
        reply: oneshot::Sender<Result<Vec<lqsm_core::RefusedReport>, WorkerError>>,
    },
    Autoscale {
        reply: oneshot::Sender<crate::autoscale::Outcome>,
    },
    AutoscaleStarted {
        pool: String,
        count: u32,
        reply: oneshot::Sender<()>,
    },
    AutoscaleNote {
        event: crate::autoscale::Event,
        reply: oneshot::Sender<()>,
    },
    AutoscaleReport {
        reply: oneshot::Sender<crate::autoscale::AutoscaleReport>,
    },
}

/// A batch applied to the core: what to write, and what to answer once it is written.
struct Applied {
    effects: Effects,
    write: WriteBatch,
    replies: Vec<Reply>,
    /// Awaited jobs: whether to answer at once (finished in this batch's state, or no
    /// wait), and otherwise how long to wait.
    job_waits: Vec<(JobId, bool, Duration, oneshot::Sender<()>)>,
    /// Jobs with a running attempt's output held whose record this batch changed, with
    /// their current attempt as of this batch: once the batch is durable, the output of
    /// any other attempt is dropped (readers then find the report's logs in the store).
    live_current: Vec<(JobId, Option<FencingToken>)>,
}

/// A batch whose commit is on its way to disk.
struct InFlight {
    commit: tokio::task::JoinHandle<Result<(), lqsm_store::StoreError>>,
    started: Instant,
    applied: Applied,
}

/// Where a reply goes once the batch is durable.
enum Reply {
    Submit(
        oneshot::Sender<Vec<Result<Submitted, SubmitError>>>,
        Vec<Result<Submitted, SubmitError>>,
    ),
    SubmitBroadcast(
        oneshot::Sender<Result<Vec<lqsm_core::BroadcastJob>, lqsm_core::WorkflowError>>,
        Result<Vec<lqsm_core::BroadcastJob>, lqsm_core::WorkflowError>,
    ),
    SubmitWorkflow(
        oneshot::Sender<Result<Vec<JobId>, lqsm_core::WorkflowError>>,
        Result<Vec<JobId>, lqsm_core::WorkflowError>,
    ),
    Cancel(oneshot::Sender<Result<(), JobError>>, Result<(), JobError>),
    CancelSelected(
        oneshot::Sender<Result<usize, lqsm_core::SelectionError>>,
        Result<usize, lqsm_core::SelectionError>,
    ),
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
    Schedule(
        oneshot::Sender<Result<Option<ScheduleRecord>, ScheduleError>>,
        Result<Option<ScheduleRecord>, ScheduleError>,
    ),
}

/// A cloneable handle to the runtime.
#[derive(Clone)]
pub struct Runtime {
    tx: mpsc::UnboundedSender<Command>,
    live: Arc<crate::live_logs::LiveLogs>,
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

    /// Submits a workflow: every node or none; answers once it is durable.
    pub async fn submit_workflow(
        &self,
        nodes: Vec<(SubmitRequest, Option<Vec<u8>>)>,
    ) -> Result<Result<Vec<JobId>, lqsm_core::WorkflowError>, SchedulerError> {
        self.call(|reply| Command::SubmitWorkflow { nodes, reply })
            .await
    }

    /// Submits a broadcast: a job per matching active worker; answers once durable.
    pub async fn submit_broadcast(
        &self,
        template: (SubmitRequest, Option<Vec<u8>>),
        id: uuid::Uuid,
        new_workers: bool,
    ) -> Result<Result<Vec<lqsm_core::BroadcastJob>, lqsm_core::WorkflowError>, SchedulerError>
    {
        self.call(|reply| Command::SubmitBroadcast {
            template,
            id,
            new_workers,
            reply,
        })
        .await
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

    /// Cancels every unfinished job a selection matches.
    pub async fn cancel_selected(
        &self,
        selection: lqsm_core::JobSelection,
        reason: String,
    ) -> Result<Result<usize, lqsm_core::SelectionError>, SchedulerError> {
        self.call(|reply| Command::CancelSelected {
            selection,
            reason,
            reply,
        })
        .await
    }

    /// Changes the queue tree.
    pub async fn queue(&self, op: QueueOp) -> Result<Result<(), QueueError>, SchedulerError> {
        self.call(|reply| Command::Queue { op, reply }).await
    }

    /// Changes the schedules; answers with the schedule as it is now (`None` once deleted).
    pub async fn schedule(
        &self,
        op: ScheduleOp,
    ) -> Result<Result<Option<ScheduleRecord>, ScheduleError>, SchedulerError> {
        self.call(|reply| Command::Schedule { op, reply }).await
    }

    /// Every schedule with its state, in name order.
    pub async fn schedules(&self) -> Result<Vec<ScheduleRecord>, SchedulerError> {
        self.call(|reply| Command::Schedules { reply }).await
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
        logs: crate::resource_manager::Uploads,
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

    /// Takes the output of running attempts a worker uploaded, for the current attempts
    /// only; answers at once with the chunks refused (stale or unknown attempts).
    pub async fn log_chunks(
        &self,
        worker: WorkerId,
        chunks: Vec<LogChunk>,
    ) -> Result<Result<Vec<lqsm_core::RefusedReport>, WorkerError>, SchedulerError> {
        self.call(|reply| Command::LogChunks {
            worker,
            chunks,
            reply,
        })
        .await
    }

    /// The output of running attempts, as uploaded so far (read without the actor).
    pub fn live_logs(&self) -> &Arc<crate::live_logs::LiveLogs> {
        &self.live
    }

    /// Returns when the job is finished, or `wait` has passed.
    pub async fn wait_job(&self, id: JobId, wait: Duration) -> Result<(), SchedulerError> {
        self.call(|reply| Command::WaitJob { id, wait, reply })
            .await
    }

    /// Evaluates the autoscaled pools now; the drains decided are applied before it
    /// answers. Pools none when autoscaling is off.
    pub async fn autoscale(&self) -> Result<crate::autoscale::Outcome, SchedulerError> {
        self.call(|reply| Command::Autoscale { reply }).await
    }

    /// The provider started `count` workers of `pool`: they count until they register.
    pub async fn autoscale_started(&self, pool: &str, count: u32) -> Result<(), SchedulerError> {
        let pool = pool.to_owned();
        self.call(|reply| Command::AutoscaleStarted { pool, count, reply })
            .await
    }

    /// Records what a provider did.
    pub async fn autoscale_note(
        &self,
        event: crate::autoscale::Event,
    ) -> Result<(), SchedulerError> {
        self.call(|reply| Command::AutoscaleNote { event, reply })
            .await
    }

    /// The autoscaler's pools and events.
    pub async fn autoscale_report(
        &self,
    ) -> Result<crate::autoscale::AutoscaleReport, SchedulerError> {
        self.call(|reply| Command::AutoscaleReport { reply }).await
    }
}

/// Where the server reads the wall clock: milliseconds since the Unix epoch. The system
/// clock by default; tests give one they can step (`ServerConfig::wall_clock`).
#[derive(Clone)]
pub struct WallClock(Arc<dyn Fn() -> u64 + Send + Sync>);

impl WallClock {
    /// The system's clock.
    pub fn system() -> Self {
        Self(Arc::new(lqsm_api::epoch_ms))
    }

    /// A clock that reads `read`.
    pub fn from_fn(read: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        Self(Arc::new(read))
    }

    /// What it reads now.
    pub fn now_ms(&self) -> u64 {
        (self.0)()
    }
}

impl Default for WallClock {
    fn default() -> Self {
        Self::system()
    }
}

impl std::fmt::Debug for WallClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WallClock")
    }
}

/// How far the wall clock may stray from the monotonic count before it is taken to have
/// been stepped. Both clocks are slewed alike by NTP, so only a step (or a suspended
/// machine) parts them; the margin only absorbs the gap between the two readings.
const CLOCK_STEP_THRESHOLD_MS: u64 = 250;

/// The actor's `now`: the wall clock's reading when it was anchored plus the monotonic
/// time since, so that time passes steadily whatever the wall clock does. When the wall
/// clock is seen to have stepped away from that count, `now` follows it (calendar
/// instants keep their meaning) and the step is reported, for the core to move its
/// liveness deadlines by it (`ResourceManager::clock_jumped`).
struct Clock {
    wall: WallClock,
    anchored_ms: u64,
    anchored_at: Instant,
}

impl Clock {
    fn new(wall: WallClock) -> Self {
        let anchored_ms = wall.now_ms();
        Self {
            wall,
            anchored_ms,
            anchored_at: Instant::now(),
        }
    }

    /// The monotonic count, without looking at the wall clock.
    fn counted(&self) -> Timestamp {
        let elapsed = u64::try_from(self.anchored_at.elapsed().as_millis()).unwrap_or(u64::MAX);
        Timestamp(self.anchored_ms.saturating_add(elapsed))
    }

    /// Now, with the step the wall clock took since the last reading (ms, forward when
    /// positive) if it took one.
    fn now(&mut self) -> (Timestamp, Option<i64>) {
        let counted = self.counted();
        let wall = self.wall.now_ms();
        if wall.abs_diff(counted.0) <= CLOCK_STEP_THRESHOLD_MS {
            return (counted, None);
        }
        let step = i64::try_from(i128::from(wall) - i128::from(counted.0))
            .unwrap_or(if wall > counted.0 { i64::MAX } else { i64::MIN });
        self.anchored_ms = wall;
        self.anchored_at = Instant::now();
        (Timestamp(wall), Some(step))
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
    /// Told when the actor must end even though handles remain (the server steps down or
    /// shuts down while long-polls hold handles).
    stop: Arc<tokio::sync::Notify>,
    /// The worker autoscaler, when it runs.
    scaling: Option<crate::autoscale::Scaling>,
    /// The output of running attempts (shared with the readers).
    live: Arc<crate::live_logs::LiveLogs>,
}

/// Encodes what a batch changed into one store write at `epoch`, in the current record
/// format ([`lqsm_core::codec`]), with each job's previous index. The batch must then be
/// committed before the next one is built (or the writer stop), since the core now counts
/// these records as written.
pub fn write_batch(rm: &mut ResourceManager, effects: &Effects, epoch: Epoch) -> WriteBatch {
    let mut batch = WriteBatch {
        epoch,
        ..WriteBatch::default()
    };
    let mut seen = HashSet::new();
    // Every queue path the batch touched: each is written as it is at the end of the
    // batch (live or retired) or deleted, so a path deleted and made again in one batch
    // keeps its last state.
    let mut queue_paths: std::collections::BTreeSet<lqsm_core::QueuePath> =
        std::collections::BTreeSet::new();
    let mut broadcasts: std::collections::BTreeMap<uuid::Uuid, Option<Vec<u8>>> =
        std::collections::BTreeMap::new();
    let mut schedules: std::collections::BTreeMap<String, Option<Vec<u8>>> =
        std::collections::BTreeMap::new();
    for record in &effects.records {
        match record {
            Record::Job(id) => {
                if !seen.insert(*id) {
                    continue;
                }
                if let Some((r, previous)) = rm.record_job(*id) {
                    batch.jobs.push(job_entry(&r, previous));
                }
            }
            Record::JobPurged {
                id,
                queue,
                recorded,
                tags,
            } => batch.deleted_jobs.push(JobDeletion {
                key: *id.0.as_bytes(),
                previous: recorded.map(|state| JobIndex {
                    queue: queue.to_string(),
                    state: codec::state_name(state).to_owned(),
                    tags: tags.clone(),
                }),
            }),
            Record::Queue(id) => {
                if let Some(path) = rm.queue_path(*id) {
                    queue_paths.insert(path.clone());
                }
            }
            Record::QueueDeleted { path, .. } | Record::QueueRetired(path) => {
                queue_paths.insert(path.clone());
            }
            Record::Worker(_) => {}
            // The last change of a schedule in the batch decides whether it is written
            // or deleted.
            Record::Schedule(name) | Record::ScheduleDeleted(name) => {
                let state = rm
                    .schedule_named(name)
                    .and_then(|record| serde_json::to_vec(record).ok());
                schedules.insert(name.clone(), state);
            }
            // Written as it is at the end of the batch, or deleted once closed.
            Record::Broadcast(id) => {
                let state = rm
                    .open_broadcast(*id)
                    .and_then(|open| serde_json::to_vec(open).ok());
                broadcasts.insert(*id, state);
            }
        }
    }
    for (id, state) in broadcasts {
        let key = format!("{BROADCAST_PREFIX}{id}");
        match state {
            Some(bytes) => batch.meta.push((key, bytes)),
            None => batch.deleted_meta.push(key),
        }
    }
    for path in queue_paths {
        match rm.durable_queue(&path) {
            Some(r) => batch
                .queues
                .push((path.to_string(), codec::encode_queue(&r))),
            None => batch.deleted_queues.push(path.to_string()),
        }
    }
    for (name, state) in schedules {
        let key = format!("{SCHEDULE_PREFIX}{name}");
        match state {
            Some(bytes) => batch.meta.push((key, bytes)),
            None => batch.deleted_meta.push(key),
        }
    }
    if effects.next_token_moved {
        batch.meta.push((
            NEXT_TOKEN.to_owned(),
            rm.next_token().to_le_bytes().to_vec(),
        ));
    }
    batch
}

/// A job record as the store keeps it: encoded, with the fields the store indexes, and
/// those of the record written before (in state `previous`; `None` when the store holds
/// none). A job's queue and tags never change, only its state.
pub fn job_entry(record: &JobRecord, previous: Option<JobState>) -> JobWrite {
    let index = JobIndex {
        queue: record.queue.to_string(),
        state: codec::state_name(record.state).to_owned(),
        tags: record.spec.tags().to_vec(),
    };
    let previous = previous.map(|state| JobIndex {
        state: codec::state_name(state).to_owned(),
        ..index.clone()
    });
    JobWrite {
        key: *record.id.0.as_bytes(),
        record: codec::encode_job(record),
        index,
        previous,
    }
}

/// Meta key of the fencing-token high-water mark.
pub const NEXT_TOKEN: &str = "next_token";

/// The server's settings the actor works with.
#[derive(Debug, Clone, Copy)]
pub struct ActorSettings {
    /// The longest a worker's long-poll waits (`scheduler.max_poll_wait_ms`).
    pub longest_poll: Duration,
    /// The most bytes of a running attempt's output kept (`limits.max_log_bytes`).
    pub log_cap: usize,
}

/// Starts the actor on the current tokio runtime.
pub fn spawn(
    rm: ResourceManager,
    store: Arc<dyn Store>,
    epoch: Epoch,
    settings: ActorSettings,
    published: Published,
    wall: WallClock,
    scaling: Option<crate::autoscale::Scaling>,
) -> Spawned {
    let (tx, rx) = mpsc::unbounded_channel();
    let live = Arc::new(crate::live_logs::LiveLogs::new(settings.log_cap));
    let mut rm = rm;
    rm.set_max_poll_wait(settings.longest_poll);
    let views = ViewBuilder::new(&rm, published);
    let stop = Arc::new(tokio::sync::Notify::new());
    let actor = Actor {
        rm,
        store,
        rx,
        clock: Clock::new(wall),
        waiting_polls: HashMap::new(),
        next_ticket: 0,
        waiting_jobs: HashMap::new(),
        epoch,
        views,
        stop: stop.clone(),
        scaling,
        live: live.clone(),
    };
    Spawned {
        runtime: Runtime { tx, live },
        actor: tokio::spawn(actor.run()),
        stop,
    }
}

/// A running actor.
pub struct Spawned {
    /// The handle commands are sent through.
    pub runtime: Runtime,
    /// The actor's task: it ends when every handle is gone, when it is stopped, or when
    /// the store fails.
    pub actor: tokio::task::JoinHandle<Result<(), lqsm_store::StoreError>>,
    /// Stops the actor: the commit in flight lands and is answered, calls still queued or
    /// waiting answer [`SchedulerError::Stopped`].
    pub stop: Arc<tokio::sync::Notify>,
}

impl Actor {
    /// Runs until every handle is dropped, or the store fails (then nothing more is
    /// answered: what was not durable was never acknowledged).
    ///
    /// Two batches are in the pipeline at most: while one batch's commit is on its way to
    /// disk, the next is applied to the core. The next is committed (and so answered) only
    /// after the first is durable, so answers keep their order and nothing is answered
    /// before it is durable.
    async fn run(mut self) -> Result<(), lqsm_store::StoreError> {
        let mut in_flight: Option<InFlight> = None;
        loop {
            let wake = self.next_wake();
            let first = tokio::select! {
                cmd = self.rx.recv() => match cmd {
                    Some(cmd) => Some(cmd),
                    None => {
                        if let Some(landing) = in_flight.take() {
                            self.land(landing).await?;
                        }
                        return Ok(());
                    }
                },
                _ = tokio::time::sleep_until(wake.into()) => None,
                () = self.stop.notified() => {
                    if let Some(landing) = in_flight.take() {
                        self.land(landing).await?;
                    }
                    return Ok(());
                }
                // Nothing new came while the commit was on its way: answer as soon as it lands.
                landed = async { (&mut in_flight.as_mut().expect("guarded").commit).await },
                    if in_flight.is_some() => {
                    let landing = in_flight.take().expect("guarded");
                    self.finish_landed(landing, landed).await?;
                    continue;
                }
            };
            let mut batch = Vec::with_capacity(64);
            batch.extend(first);
            while batch.len() < MAX_BATCH {
                match self.rx.try_recv() {
                    Ok(cmd) => batch.push(cmd),
                    Err(_) => break,
                }
            }
            let applied = self.apply(batch);
            // Commits land in order: the batch before must be durable first.
            if let Some(landing) = in_flight.take() {
                self.land(landing).await?;
            }
            in_flight = self.commit(applied).await;
        }
    }

    /// Starts committing what `applied` changed; a batch that changed nothing durable is
    /// answered at once.
    async fn commit(&mut self, mut applied: Applied) -> Option<InFlight> {
        let write = std::mem::take(&mut applied.write);
        if write.is_empty() {
            self.finish(applied).await;
            return None;
        }
        let store = self.store.clone();
        let started = Instant::now();
        let commit = tokio::task::spawn_blocking(move || store.commit(&write));
        Some(InFlight {
            commit,
            started,
            applied,
        })
    }

    /// Waits for a commit in flight, then answers its batch.
    async fn land(&mut self, mut landing: InFlight) -> Result<(), lqsm_store::StoreError> {
        let landed = (&mut landing.commit).await;
        self.finish_landed(landing, landed).await
    }

    async fn finish_landed(
        &mut self,
        landing: InFlight,
        landed: Result<Result<(), lqsm_store::StoreError>, tokio::task::JoinError>,
    ) -> Result<(), lqsm_store::StoreError> {
        landed
            .map_err(|e| lqsm_store::StoreError::Engine(format!("commit task failed: {e}")))??;
        metrics::histogram!("lqsm_store_commit_seconds")
            .record(landing.started.elapsed().as_secs_f64());
        self.finish(landing.applied).await;
        Ok(())
    }

    fn next_wake(&self) -> Instant {
        let mut wake = Instant::now() + Duration::from_secs(1);
        if let Some(at) = self.rm.next_timer() {
            // By the monotonic count: a step of the wall clock not yet seen delays a
            // calendar timer by at most the one-second wake.
            let now = self.clock.counted();
            // Timers due within one granule fire together, in one batch and one commit:
            // thousands of schedules, heartbeats or retries spread over a second cost a
            // hundred wakes, not thousands.
            let granule = TIMER_GRANULARITY.as_millis() as u64;
            let at = at.0.div_ceil(granule) * granule;
            let until = Duration::from_millis(at.saturating_sub(now.0));
            wake = wake.min(Instant::now() + until);
        }
        for waits in self.waiting_jobs.values() {
            for (deadline, _) in waits {
                wake = wake.min(*deadline);
            }
        }
        wake
    }

    /// Applies a batch of commands to the core, runs the timers and a scheduling pass, and
    /// says what to write and, once it is durable, what to answer.
    fn apply(&mut self, batch: Vec<Command>) -> Applied {
        let (now, stepped) = self.clock.now();
        if let Some(by_ms) = stepped {
            tracing::warn!(
                by_ms,
                "the wall clock stepped; heartbeat, timeout, backoff and rate-limit deadlines move with it, ETAs and schedules follow the wall clock"
            );
            metrics::counter!("lqsm_clock_steps_total").increment(1);
            self.rm.clock_jumped(by_ms);
            if let Some(scaling) = &mut self.scaling {
                scaling.clock_jumped(by_ms);
            }
        }
        let mut replies = Vec::new();
        let mut job_waits = Vec::new();
        let mut payloads = Vec::new();
        let mut job_logs = Vec::new();
        let mut job_results = Vec::new();
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
                Command::SubmitBroadcast {
                    template: (template, payload),
                    id,
                    new_workers,
                    reply,
                } => {
                    let result = self.rm.broadcast(template, id, new_workers, now);
                    if let (Ok(jobs), Some(bytes)) = (&result, payload) {
                        payloads.extend(jobs.iter().map(|b| (*b.job.0.as_bytes(), bytes.clone())));
                    }
                    replies.push(Reply::SubmitBroadcast(reply, result));
                }
                Command::SubmitWorkflow { nodes, reply } => {
                    let mut stored = Vec::new();
                    let requests = nodes
                        .into_iter()
                        .map(|(job, payload)| {
                            if let Some(bytes) = payload {
                                stored.push((*job.id.0.as_bytes(), bytes));
                            }
                            job
                        })
                        .collect();
                    let result = self.rm.submit_workflow(requests, now);
                    if result.is_ok() {
                        payloads.extend(stored);
                    }
                    replies.push(Reply::SubmitWorkflow(reply, result));
                }
                Command::Cancel { id, reason, reply } => {
                    replies.push(Reply::Cancel(reply, self.rm.cancel(id, &reason, now)));
                }
                Command::CancelSelected {
                    selection,
                    reason,
                    reply,
                } => {
                    let result = self
                        .rm
                        .cancel_selected(&selection, &reason, now)
                        .map(|ids| ids.len());
                    replies.push(Reply::CancelSelected(reply, result));
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
                Command::Schedule { op, reply } => {
                    let result = match op {
                        ScheduleOp::Create(spec) => {
                            self.rm.create_schedule(*spec, now).map(|r| Some(r.clone()))
                        }
                        ScheduleOp::Update(spec) => {
                            self.rm.update_schedule(*spec, now).map(|r| Some(r.clone()))
                        }
                        ScheduleOp::Pause(name) => self
                            .rm
                            .pause_schedule(&name, true, now)
                            .map(|r| Some(r.clone())),
                        ScheduleOp::Resume(name) => self
                            .rm
                            .pause_schedule(&name, false, now)
                            .map(|r| Some(r.clone())),
                        ScheduleOp::Delete(name) => self.rm.delete_schedule(&name).map(|()| None),
                    };
                    replies.push(Reply::Schedule(reply, result));
                }
                Command::Schedules { reply } => {
                    // A read: answered at once, it changes nothing to make durable.
                    let _ = reply.send(self.rm.schedules().cloned().collect());
                }
                Command::LogChunks {
                    worker,
                    chunks,
                    reply,
                } => {
                    // Nothing durable: answered at once.
                    let _ = reply.send(self.take_log_chunks(worker, chunks));
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
                                    .accepted_logs(logs.logs)
                                    .into_iter()
                                    .map(|(job, log)| (*job.0.as_bytes(), log)),
                            );
                            job_results.extend(
                                outcome
                                    .accepted_logs(logs.results)
                                    .into_iter()
                                    .map(|(job, result)| (*job.0.as_bytes(), result)),
                            );
                            self.waiting_polls.insert(ticket, reply);
                        }
                        Err(e) => replies.push(Reply::PollRefused(reply, e)),
                    }
                }
                Command::WaitJob { id, wait, reply } => job_waits.push((id, wait, reply)),
                // The autoscaler's commands change nothing durable (a drain is the
                // worker's state, which is not stored): answered at once.
                Command::Autoscale { reply } => {
                    let outcome = match &mut self.scaling {
                        Some(scaling) => scaling.evaluate(&mut self.rm, now),
                        None => crate::autoscale::Outcome::default(),
                    };
                    let _ = reply.send(outcome);
                }
                Command::AutoscaleStarted { pool, count, reply } => {
                    if let Some(scaling) = &mut self.scaling {
                        scaling.started(&pool, count, now);
                    }
                    let _ = reply.send(());
                }
                Command::AutoscaleNote { event, reply } => {
                    if let Some(scaling) = &mut self.scaling {
                        scaling.note(event);
                    }
                    let _ = reply.send(());
                }
                Command::AutoscaleReport { reply } => {
                    let report = self
                        .scaling
                        .as_ref()
                        .map(|s| s.report(&self.rm, now))
                        .unwrap_or_default();
                    let _ = reply.send(report);
                }
            }
        }
        self.rm.tick(now);
        let started = Instant::now();
        let pass = self.rm.schedule(now);
        if pass.ran {
            metrics::histogram!("lqsm_schedule_seconds").record(started.elapsed().as_secs_f64());
        }
        let effects = self.rm.take_effects();
        let live_current = if self.live.is_empty() {
            Vec::new()
        } else {
            effects
                .records
                .iter()
                .filter_map(|record| match record {
                    lqsm_core::Record::Job(id) | lqsm_core::Record::JobPurged { id, .. } => {
                        Some((*id, self.rm.job(*id).and_then(|j| j.current_token())))
                    }
                    _ => None,
                })
                .collect()
        };
        let mut write = write_batch(&mut self.rm, &effects, self.epoch);
        write.payloads = payloads;
        write.logs = job_logs;
        write.results = job_results;
        // Whether each awaited job is finished is decided now, by the state this batch
        // makes durable (the next batch may already be applied when this one lands).
        let job_waits = job_waits
            .into_iter()
            .map(|(id, wait, reply)| {
                let finished = self.rm.job(id).is_none_or(|j| j.state.is_terminal());
                (id, finished || wait.is_zero(), wait, reply)
            })
            .collect();
        Applied {
            effects,
            write,
            replies,
            job_waits,
            live_current,
        }
    }

    /// Keeps the chunks of attempts current on `worker`; says which were refused, and
    /// why, as its reports would be.
    fn take_log_chunks(
        &mut self,
        worker: WorkerId,
        chunks: Vec<LogChunk>,
    ) -> Result<Vec<lqsm_core::RefusedReport>, WorkerError> {
        // An unknown worker registers again first, even with nothing to upload.
        self.rm.check_worker(worker)?;
        let mut refused = Vec::new();
        for chunk in chunks {
            match self.rm.running_attempt(worker, chunk.job, chunk.token)? {
                Ok(attempt) => self.live.append(
                    chunk.job,
                    chunk.token,
                    attempt,
                    chunk.offset,
                    chunk.text.as_bytes(),
                ),
                Err(reason) => refused.push(lqsm_core::RefusedReport {
                    job: chunk.job,
                    token: chunk.token,
                    reason,
                }),
            }
        }
        Ok(refused)
    }

    /// Answers a batch once it is durable: publishes what readers see, then answers (so an
    /// answered change is visible to the next read), hands out work and wakes waiters.
    async fn finish(&mut self, applied: Applied) {
        let Applied {
            effects,
            replies,
            job_waits,
            live_current,
            ..
        } = applied;
        // The reports' logs are durable now: readers find them in the store.
        for (job, current) in live_current {
            self.live.keep_only(job, current);
        }
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
                Reply::SubmitBroadcast(tx, r) => {
                    if let Ok(jobs) = &r {
                        let created: Vec<_> =
                            jobs.iter().map(|b| Ok(Submitted::Created(b.job))).collect();
                        self.count_submitted(&created);
                    }
                    let _ = tx.send(r);
                }
                Reply::SubmitWorkflow(tx, r) => {
                    if let Ok(ids) = &r {
                        let created: Vec<_> =
                            ids.iter().map(|id| Ok(Submitted::Created(*id))).collect();
                        self.count_submitted(&created);
                    }
                    let _ = tx.send(r);
                }
                Reply::Cancel(tx, r) => {
                    let _ = tx.send(r);
                }
                Reply::CancelSelected(tx, r) => {
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
                Reply::Schedule(tx, r) => {
                    let _ = tx.send(r);
                }
            }
        }
        for (id, answer_now, wait, reply) in job_waits {
            if answer_now {
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
        self.send_answers(effects.answers).await;
        self.expire_job_waits();
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
    /// a worker needs to run each new attempt (the kinds kept in the store read in one
    /// call, on a blocking thread).
    async fn send_answers(&mut self, answers: Vec<lqsm_core::PollAnswer>) {
        let stored: Vec<lqsm_store::JobKey> = answers
            .iter()
            .filter(|answer| self.waiting_polls.contains_key(&answer.ticket))
            .flat_map(|answer| &answer.assignments)
            .filter(|a| {
                self.rm
                    .job(a.job)
                    .is_some_and(|j| matches!(j.spec.kind, lqsm_core::JobKind::Stored { .. }))
            })
            .map(|a| *a.job.0.as_bytes())
            .collect();
        let mut fetched = if stored.is_empty() {
            HashMap::new()
        } else {
            let store = self.store.clone();
            tokio::task::spawn_blocking(move || fetch_kinds(store.as_ref(), &stored))
                .await
                .unwrap_or_else(|e| {
                    tracing::error!(error = %e, "reading job payloads failed");
                    HashMap::new()
                })
        };
        for answer in answers {
            let Some(reply) = self.waiting_polls.remove(&answer.ticket) else {
                continue;
            };
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
                        soft_timeout: job.spec.soft_timeout(),
                        inputs: inputs_of(&self.rm, job),
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

    use super::*;
    use crate::config::ServerConfig;
    use lqsm_core::{
        AttemptReport, JobId, QueueConfig, ReportedResult, SubmitRequest, WorkerRegistration,
    };
    use lqsm_store::{EmbeddedStore, JobFilter, JobQuery, Order};
    use std::collections::BTreeMap;

    /// The clock counts on the monotonic clock, says nothing of a wall clock that strays
    /// by less than the threshold, and follows and reports a step either way.
    #[test]
    fn the_clock_follows_and_reports_a_step_of_the_wall_clock_and_nothing_less() {
        use std::sync::atomic::{AtomicI64, Ordering};
        let offset = Arc::new(AtomicI64::new(0));
        let read = offset.clone();
        let start = lqsm_api::epoch_ms();
        // The system clock, stepped by `offset`.
        let mut clock = Clock::new(WallClock::from_fn(move || {
            lqsm_api::epoch_ms().saturating_add_signed(read.load(Ordering::SeqCst))
        }));
        let (now, stepped) = clock.now();
        assert_eq!(stepped, None);
        assert!(now.0 >= start);
        offset.store(-100, Ordering::SeqCst);
        assert_eq!(clock.now().1, None, "100 ms is within the threshold");
        offset.store(600_000, Ordering::SeqCst);
        let (now, stepped) = clock.now();
        let by = stepped.expect("a step forward");
        assert!((599_000..=601_000).contains(&by), "{by}");
        assert!(now.0 >= start + 600_000);
        assert_eq!(clock.now().1, None, "re-anchored: told once");
        offset.store(-600_000, Ordering::SeqCst);
        let (now, stepped) = clock.now();
        let by = stepped.expect("a step back");
        assert!((-1_201_000..=-1_199_000).contains(&by), "{by}");
        assert!(now.0 < start);
        assert!(clock.counted() >= now);
    }

    /// Jobs per (queue, state) as the core holds them.
    fn core_counts(rm: &ResourceManager) -> BTreeMap<(String, String), u64> {
        let mut counts = BTreeMap::new();
        for job in rm.jobs() {
            let queue = rm.queue_path(job.queue).unwrap().to_string();
            let state = codec::state_name(job.state).to_owned();
            *counts.entry((queue, state)).or_default() += 1;
        }
        counts
    }

    /// Jobs per (queue, state) as the store's index counts them.
    fn store_counts(store: &EmbeddedStore) -> BTreeMap<(String, String), u64> {
        store
            .counts()
            .unwrap()
            .into_iter()
            .map(|c| ((c.queue, c.state), c.count))
            .collect()
    }

    /// Every job the store lists under `filter`, as ids in key order.
    fn listed(store: &EmbeddedStore, filter: JobFilter) -> Vec<JobId> {
        let page = store
            .jobs(&JobQuery {
                filter,
                order: Order::OldestFirst,
                after: None,
                limit: 100_000,
            })
            .unwrap();
        page.jobs
            .into_iter()
            .map(|(key, _)| JobId(uuid::Uuid::from_bytes(key)))
            .collect()
    }

    /// The store's index agrees with the core: counts, and the listing of every state and
    /// tag.
    fn assert_index_matches(rm: &ResourceManager, store: &EmbeddedStore, when: &str) {
        assert_eq!(store_counts(store), core_counts(rm), "counts {when}");
        let mut by_state: BTreeMap<&str, Vec<JobId>> = BTreeMap::new();
        let mut tagged = Vec::new();
        for job in rm.jobs() {
            by_state
                .entry(codec::state_name(job.state))
                .or_default()
                .push(job.id);
            if job.spec.tags().iter().any(|t| t == "odd") {
                tagged.push(job.id);
            }
        }
        for state in [
            "pending",
            "scheduled",
            "running",
            "succeeded",
            "failed",
            "cancelled",
        ] {
            let mut want = by_state.remove(state).unwrap_or_default();
            want.sort();
            assert_eq!(
                listed(store, JobFilter::State(state.to_owned())),
                want,
                "jobs listed as {state} {when}"
            );
        }
        assert!(by_state.is_empty(), "states not checked: {by_state:?}");
        tagged.sort();
        assert_eq!(
            listed(store, JobFilter::Tag("odd".to_owned())),
            tagged,
            "tagged jobs {when}"
        );
        assert_eq!(
            store.load().unwrap().jobs.len(),
            rm.jobs().count(),
            "records {when}"
        );
    }

    /// Hands the batch's records to the store, as the actor does after each batch.
    fn commit(rm: &mut ResourceManager, store: &EmbeddedStore) -> Effects {
        let effects = rm.take_effects();
        let batch = write_batch(rm, &effects, 0);
        store.commit(&batch).unwrap();
        effects
    }

    /// A store that holds the token counter but no queue and no job (every one of them
    /// removed) starts a cluster afresh that still counts on from it: a registration
    /// number, which a late poll is checked against, is never handed out twice.
    #[test]
    fn a_fresh_start_on_a_store_that_counted_counts_on() {
        let dir = tempfile::tempdir().unwrap();
        let config = ServerConfig {
            data_dir: dir.path().join("data"),
            ..ServerConfig::default()
        };
        let store = EmbeddedStore::open(&config.data_dir).unwrap();
        let mut batch = lqsm_store::WriteBatch::default();
        batch
            .meta
            .push((NEXT_TOKEN.to_owned(), 5_000u64.to_le_bytes().to_vec()));
        store.commit(&batch).unwrap();
        let mut rm = crate::restore(&store, &config).unwrap();
        assert!(rm.queue("root.default").is_ok(), "started afresh");
        let id = WorkerId(uuid::Uuid::now_v7());
        let registration = WorkerRegistration {
            id,
            name: "w".into(),
            capacity: Resources::cores(1, 512),
            labels: BTreeMap::new(),
            serves_commands: true,
            queues: Default::default(),
            handlers: ["*".to_owned()].into(),
        };
        rm.register_worker(registration, wall_clock()).unwrap();
        assert_eq!(rm.worker(id).map(|w| w.registration), Some(5_000));
        commit(&mut rm, &store);
        let again = crate::restore(&store, &config).unwrap();
        assert_eq!(again.next_token(), 5_001);
    }

    /// The store keeps its index from the previous index the writer passes (it never reads
    /// its own back): through submissions, assignments, starts, successes, failures with
    /// retries, cancellations, purges after retention and restarts (after which attempts
    /// are requeued), the store's counts and listings stay those of the core.
    #[test]
    fn the_store_index_follows_every_job_through_its_life_its_purge_and_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = ServerConfig {
            data_dir: dir.path().join("data"),
            ..ServerConfig::default()
        };
        config.scheduler.retention_ms = 5_000;
        config.scheduler.reclaim_grace_ms = 1_000;
        let store = EmbeddedStore::open(&config.data_dir).unwrap();
        let mut rm = crate::restore(&store, &config).unwrap();
        for queue in ["root.a", "root.b"] {
            rm.create_queue(queue, QueueConfig::with_capacity(50.0, 100.0))
                .unwrap();
        }
        commit(&mut rm, &store);
        let mut now = wall_clock().0;
        let mut ticket = 0;
        let mut worker = None;
        let mut running: Vec<(JobId, FencingToken)> = Vec::new();
        let mut submitted = 0u64;
        let mut states_seen = std::collections::BTreeSet::new();
        for step in 0..60u64 {
            now += 700;
            let at = Timestamp(now);
            if step % 20 == 19 {
                // A restart: the core is rebuilt from the store; the worker comes back
                // under a new id, so its attempts are requeued after the grace.
                drop(rm);
                rm = crate::restore(&store, &config).unwrap();
                commit(&mut rm, &store);
                assert_index_matches(&rm, &store, &format!("after the restart at {step}"));
                worker = None;
                running.clear();
            }
            let id = match worker {
                Some(id) => id,
                None => {
                    let id = WorkerId(uuid::Uuid::now_v7());
                    let registration = WorkerRegistration {
                        id,
                        name: format!("w{step}"),
                        capacity: Resources::cores(3, 4096),
                        labels: BTreeMap::new(),
                        serves_commands: true,
                        queues: Default::default(),
                        handlers: ["*".to_owned()].into(),
                    };
                    rm.register_worker(registration, at).unwrap();
                    worker = Some(id);
                    id
                }
            };
            for queue in ["root.a", "root.b"] {
                submitted += 1;
                let mut job = SubmitRequest::function(
                    JobId(uuid::Uuid::now_v7()),
                    queue,
                    "h",
                    serde_json::json!({}),
                );
                job.request = Some(Resources::cores(1, 64));
                if submitted % 2 == 1 {
                    job.tags = vec!["odd".to_owned()];
                }
                if submitted.is_multiple_of(5) {
                    job.retry = Some(lqsm_core::RetryPolicy {
                        max_attempts: 2,
                        backoff_base: Duration::from_millis(500),
                        backoff_cap: Duration::from_millis(500),
                        jitter: 0.0,
                    });
                }
                rm.submit(job, at).unwrap();
            }
            commit(&mut rm, &store);
            states_seen.extend(store_counts(&store).into_keys().map(|(_, s)| s));
            let pending = rm
                .jobs()
                .find(|j| j.state == JobState::Pending)
                .map(|j| j.id);
            if step % 7 == 3
                && let Some(pending) = pending
            {
                rm.cancel(pending, "test", at).unwrap();
            }
            // The worker reports what it ran: alternately a success and a failure.
            let finished = running
                .drain(..)
                .enumerate()
                .map(|(i, (job, token))| AttemptReport {
                    job,
                    token,
                    result: if (i as u64 + step).is_multiple_of(3) {
                        ReportedResult::Failed {
                            exit_code: None,
                            message: "boom".to_owned(),
                            retry: true,
                        }
                    } else {
                        ReportedResult::Succeeded {
                            result: None,
                            exit_code: None,
                        }
                    },
                    started_at: None,
                    usage: None,
                    memory_exceeded: false,
                })
                .collect();
            ticket += 1;
            let poll = WorkerPoll {
                registration: None,
                running: Vec::new(),
                finished,
                acked: None,
                ending: Vec::new(),
                progress: Vec::new(),
            };
            rm.long_poll(id, PollTicket(ticket), &poll, Duration::ZERO, at)
                .unwrap();
            rm.tick(at);
            rm.schedule(at);
            let effects = commit(&mut rm, &store);
            for answer in effects.answers {
                running.extend(answer.assignments.iter().map(|a| (a.job, a.token)));
            }
            // Half of what was assigned is seen running before it finishes.
            if step % 2 == 0 && !running.is_empty() {
                ticket += 1;
                let poll = WorkerPoll {
                    registration: None,
                    running: running.clone(),
                    finished: Vec::new(),
                    acked: None,
                    ending: Vec::new(),
                    progress: Vec::new(),
                };
                rm.long_poll(id, PollTicket(ticket), &poll, Duration::ZERO, at)
                    .unwrap();
                commit(&mut rm, &store);
            }
            assert_index_matches(&rm, &store, &format!("at step {step}"));
            states_seen.extend(store_counts(&store).into_keys().map(|(_, s)| s));
        }
        for state in ["pending", "running", "succeeded", "failed", "cancelled"] {
            assert!(
                states_seen.contains(state),
                "no job was {state}: {states_seen:?}"
            );
        }
        assert!(
            (rm.jobs().count() as u64) < submitted,
            "finished jobs were purged after their retention"
        );
    }
}
