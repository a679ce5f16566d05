//! What the core asks its shell to do. The runtime persists `records` in one commit
//! and only then sends `answers` to the workers' polls and answers clients.

use crate::ids::{FencingToken, JobId, PollTicket, QueueId, WorkerId};
use crate::jobs::JobState;
use crate::queues::QueuePath;

/// Something whose durable copy must be brought up to date. Records name the entity;
/// the runtime reads its current state from the core when it writes the batch, so a
/// job that changed five times in a batch is written once.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Record {
    /// A job was created or changed.
    Job(JobId),
    /// A finished job passed its retention and is gone from the core.
    JobPurged {
        /// Its id.
        id: JobId,
        /// Its leaf queue.
        queue: QueuePath,
        /// Its state in the last record handed out for storage (`None`: none was).
        recorded: Option<JobState>,
        /// Its tags.
        tags: Vec<String>,
    },
    /// A queue was created or changed.
    Queue(QueueId),
    /// A queue created on demand was removed after its idle time (kept as retired, its
    /// counters readable), or a retired queue was forgotten after the retention: write
    /// what the path holds at the end of the batch
    /// ([`ResourceManager::durable_queue`](crate::ResourceManager::durable_queue)).
    QueueRetired(QueuePath),
    /// A queue was deleted.
    QueueDeleted {
        /// Its id.
        id: QueueId,
        /// Its path.
        path: QueuePath,
    },
    /// A worker registered, changed state or was lost.
    Worker(WorkerId),
    /// A schedule was created, fired, paused or resumed (by name).
    Schedule(String),
    /// A schedule was deleted (by name).
    ScheduleDeleted(String),
    /// A broadcast open to workers that join later was opened, reached a new worker or
    /// was closed (by id; closed when [`ResourceManager::open_broadcast`](crate::ResourceManager::open_broadcast) no longer has it).
    Broadcast(uuid::Uuid),
}

/// Why an attempt must be stopped on its worker.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum KillReason {
    /// Its job was cancelled.
    Cancelled,
    /// It ran past its timeout.
    TimedOut,
    /// Preemption took its resources back.
    Preempted,
    /// The worker reported it running, but it is not the job's current attempt.
    Stale,
}

/// Stop one attempt on one worker.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Kill {
    /// The worker running it.
    pub worker: WorkerId,
    /// The job.
    pub job: JobId,
    /// The attempt.
    pub token: FencingToken,
    /// Why.
    pub reason: KillReason,
}

/// A new attempt given to a worker, as carried by a [`PollAnswer`].
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Assignment {
    /// The worker.
    pub worker: WorkerId,
    /// The job.
    pub job: JobId,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// The attempt's token; the worker reports with it.
    pub token: FencingToken,
}

/// Why a worker's report about an attempt was refused.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RefusalReason {
    /// No such job (purged, or never existed).
    UnknownJob,
    /// The token is not the job's current attempt on this worker.
    StaleAttempt,
}

/// A refused report.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct RefusedReport {
    /// The job named.
    pub job: JobId,
    /// The token named.
    pub token: FencingToken,
    /// Why it was refused.
    pub reason: RefusalReason,
}

/// The answer to one long-poll: the attempts the worker must start and those it must
/// stop. The only way either reaches a worker.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct PollAnswer {
    /// The worker that polled.
    pub worker: WorkerId,
    /// The poll call being answered (as the shell named it).
    pub ticket: PollTicket,
    /// The answer's number when it carries assignments, counted from the worker's
    /// registration; 0 when it carries none, so that an empty answer never lets a
    /// worker acknowledge a numbered one still on its way to it.
    pub seq: u64,
    /// New attempts to start, in the order they were made.
    pub assignments: Vec<Assignment>,
    /// Attempts to stop, one order per attempt.
    pub kills: Vec<Kill>,
    /// The poll's reports that were refused (the worker drops them).
    pub refused: Vec<RefusedReport>,
}

/// Everything the core produced since the shell last took its effects.
#[derive(Clone, Debug, Default)]
pub struct Effects {
    /// What to persist, in order.
    pub records: Vec<Record>,
    /// Answers to send to waiting polls once `records` are durable: the one dispatch
    /// effect, carrying every new attempt and kill order to its worker.
    pub answers: Vec<PollAnswer>,
    /// How many attempts were made (each took a fresh fencing token, so the token
    /// high-water mark must be persisted with the batch).
    pub attempts_made: u64,
    /// Whether a fencing token or a registration number was drawn (they share one
    /// counter): the counter's high-water mark must be persisted with the batch.
    pub next_token_moved: bool,
    /// Attempts ordered stopped, in the order decided: an account for metrics and
    /// tests. The orders themselves reach workers through `answers`.
    pub kills: Vec<Kill>,
    /// Jobs that reached a terminal state (to wake waiting clients).
    pub finished: Vec<JobId>,
}

impl Effects {
    /// True when there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
            && self.answers.is_empty()
            && self.attempts_made == 0
            && !self.next_token_moved
            && self.kills.is_empty()
            && self.finished.is_empty()
    }
}
