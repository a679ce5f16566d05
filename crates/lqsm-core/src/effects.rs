//! What the core asks its shell to do. The runtime persists `records` in one commit
//! and only then sends `kills`, hands out assignments and answers clients.

use crate::ids::{FencingToken, JobId, QueueId, WorkerId};
use crate::queues::QueuePath;

/// Something whose durable copy must be brought up to date. Records name the entity;
/// the runtime reads its current state from the core when it writes the batch, so a
/// job that changed five times in a batch is written once.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Record {
    /// A job was created or changed.
    Job(JobId),
    /// A finished job passed its retention and is gone from the core.
    JobPurged(JobId),
    /// A queue was created or changed.
    Queue(QueueId),
    /// A queue was deleted.
    QueueDeleted {
        /// Its id.
        id: QueueId,
        /// Its path.
        path: QueuePath,
    },
    /// A worker registered, changed state or was lost.
    Worker(WorkerId),
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

/// A new attempt given to a worker (it waits in the worker's outbox until a poll
/// takes it, see `ResourceManager::take_assignments`).
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

/// Everything the core produced since the shell last took its effects.
#[derive(Clone, Debug, Default)]
pub struct Effects {
    /// What to persist, in order.
    pub records: Vec<Record>,
    /// New attempts, in the order they were made.
    pub assignments: Vec<Assignment>,
    /// Attempts to stop.
    pub kills: Vec<Kill>,
    /// Jobs that reached a terminal state (to wake waiting clients).
    pub finished: Vec<JobId>,
}

impl Effects {
    /// True when there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
            && self.assignments.is_empty()
            && self.kills.is_empty()
            && self.finished.is_empty()
    }
}
