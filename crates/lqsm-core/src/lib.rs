//! LQSM's deterministic core: the queue tree and its jobs (the QueuesManager), the
//! workers and the unified allocation algorithm (the ResourceManager), the timers
//! behind retries, timeouts, ETAs and heartbeats, and the policy traits that make
//! each scheduling step pluggable.
//!
//! No I/O, no clock, no randomness: time is passed in as `now`, randomness comes
//! from a seed, and every outcome the shell must act on is returned as
//! [`Effects`]. The same inputs always give the same state and the same effects.

pub mod autoscale;
pub mod codec;
pub mod effects;
mod hashing;
pub mod ids;
pub mod jobs;
pub mod policy;
pub mod queues;
pub mod rate_limits;
pub mod recovery;
pub mod resource_manager;
pub mod resources;
mod retry;
pub mod schedules;
mod timers;
pub mod usage;
pub mod workers;

/// What preemption policies see of the running attempts (kept at this path for the
/// plugins written against it; the types live in [`policy`], the algorithm in
/// [`resource_manager`]).
pub mod scheduler {
    pub use crate::policy::{PreemptionView, RunningAttempt};
}

pub use autoscale::{
    Autoscaler, AutoscalingPolicy, PoolSnapshot, PoolSpec, PoolSpecError, PoolWorker, ScaleAction,
    ScaleDecision, ScaleEvent, ScaleEventKind,
};
pub use effects::{Assignment, Effects, Kill, KillReason, PollAnswer, Record};
pub use ids::{FencingToken, JobId, PollTicket, QueueId, Timestamp, WorkerId};
pub use jobs::{
    Attempt, AttemptOutcome, AttemptReport, Dependencies, Job, JobKind, JobSpec, JobState,
    ReportedResult, RetryPolicy, RunWhen, SubmitError, SubmitRequest, Termination, Usage,
    WorkflowNode,
};
pub use policy::Policies;
pub use queues::{
    AutoResources, FAIRNESS_BY_USER, JobDefaults, QueueConfig, QueueError, QueuePath, QueueState,
    QueueStats, QueueTemplate, QueueUpdate, RetiredQueue,
};
pub use rate_limits::{Rate, RateLimit, RatePeriod};
pub use recovery::{JobRecord, QueueRecord, RestoreError, RestoreInput, RestoreReport};
pub use resource_manager::{
    BroadcastJob, Config, ConfigError, JobError, JobSelection, MAX_WORKFLOW_NODES, NameUsage,
    OpenBroadcast, PassReport, PollOutcome, PreemptionConfig, QUIET_GRACE, QueueView,
    REDELIVER_AFTER, ROOT, RefusalReason, RefusedReport, ResourceManager, SelectionError,
    Submitted, UserShareView, WorkerError, WorkerPoll, WorkflowError,
};
pub use resources::{BadAmount, MiB, Millicores, ResourceName, Resources};
pub use usage::UsageSummary;
pub use workers::{Worker, WorkerRegistration, WorkerState};
