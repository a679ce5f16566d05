//! The JSON of LQSM's HTTP API (`/v1`). One definition per concept, used by the
//! server, the client, the CLI and the worker alike. Times are milliseconds since the
//! Unix epoch (`*_ms` fields), durations milliseconds, memory MiB, cpu in cores.
//! Every request type refuses unknown fields, so a typo is an error, not a default.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

mod json;
mod time;
mod vocabulary;

pub use json::RawJson;
pub use time::{epoch_ms, human_duration};

/// Drops the continuation bytes that open `bytes` (at most 3: output read from a byte
/// offset may start inside a character) and says how many, so that a reader of output by
/// offsets starts at a whole character and advances its offset by the bytes skipped.
pub fn skip_partial_character(bytes: &mut Vec<u8>) -> usize {
    let cut = bytes
        .iter()
        .take(3)
        .take_while(|b| **b & 0b1100_0000 == 0b1000_0000)
        .count();
    bytes.drain(..cut);
    cut
}
pub use vocabulary::{
    AttemptOutcome, ErrorCode, JobState, KillReason, QueueState, RefusalReason, RunWhen,
    UnknownName, WorkerState, WorkflowState,
};

/// The worker protocol version this release speaks (`RegisterWorker.protocol`).
/// Version 1 is the protocol before registrations carried a version; version 2 adds
/// the `protocol` field and nothing else, so a version-1 worker is served as before;
/// version 3 adds what a job does from inside (a running attempt's `progress`, the
/// `retry` report) and the assignment's `soft_timeout_ms`, `inputs` and `inputs_path`:
/// a server older than it refuses a version-3 worker at registration, clearly, instead
/// of refusing its polls later; version 4 lets a `failed` report carry `retry: false`
/// (the job fails now, without spending its remaining retries); version 5 lets a poll
/// name in `ending` the attempts whose reports another poll carries; version 6 has the
/// registration answer carry a `registration` number that polls name, so that a poll
/// sent before registering again is refused instead of read for the new registration;
/// version 7 lets a report carry the attempt's measured `usage` and a failed one
/// `memory_exceeded`; version 8 adds `POST /v1/workers/{id}/logs`, the output of running
/// attempts uploaded as it grows (a preview: the report's `logs` stay the truth).
/// The server accepts `OLDEST_WORKER_PROTOCOL..=WORKER_PROTOCOL`.
pub const WORKER_PROTOCOL: u32 = 8;

/// The first worker protocol version with `POST /v1/workers/{id}/logs`.
pub const LIVE_LOGS_PROTOCOL: u32 = 8;

/// The oldest worker protocol version this release's server accepts.
pub const OLDEST_WORKER_PROTOCOL: u32 = 1;

/// `JobView.submitted_by` of a job submitted to a server without tokens.
pub const ANONYMOUS: &str = "anonymous";

/// What views show instead of the value of a secret environment variable
/// (`SubmitJob::secret_env`).
pub const REDACTED: &str = "***";
use utoipa::ToSchema;
use uuid::Uuid;

/// Every error answer: `{"error": {"code": ..., "message": ..., "field": ...}}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// What went wrong, for people and for programs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code.
    pub code: ErrorCode,
    /// What happened and what to do about it.
    pub message: String,
    /// The offending field, when one is to blame (`jobs[3].resources.cpu`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// Resources a job asks for or a worker offers. Absent fields take defaults.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// CPU cores (fractions allowed, down to 0.001).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<f64>,
    /// Memory in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
    /// Whole GPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<u32>,
    /// Named custom resources (`{"licence": 2}`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub custom: BTreeMap<String, u64>,
}

/// Resource amounts in answers: every field present.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ResourceFigures {
    /// CPU cores.
    pub cpu: f64,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// GPUs.
    pub gpu: u32,
    /// Custom resources.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub custom: BTreeMap<String, u64>,
}

/// What a job runs.
// Read through `JobKindFields`: serde buffers an internally tagged enum's content,
// and buffered content cannot hand `args` over as raw text.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", try_from = "JobKindFields")]
pub enum JobKind {
    /// A program, run as a child process in its own process group.
    #[schema(title = "CommandJob")]
    Command {
        /// Program and arguments.
        argv: Vec<String>,
        /// Extra environment variables.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        env: BTreeMap<String, String>,
        /// Working directory.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cwd: Option<String>,
    },
    /// A handler registered on workers, called with JSON arguments.
    #[schema(title = "FunctionJob")]
    Function {
        /// Handler name (`lqsm.echo`).
        handler: String,
        /// Arguments, any JSON (`null` when absent), handed to the handler as sent.
        #[serde(default)]
        #[schema(value_type = Value)]
        args: RawJson,
    },
}

/// The `type` of a [`JobKind`].
#[derive(Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum JobKindType {
    Command,
    Function,
}

/// Every field a [`JobKind`] may have, read in one pass so `args` stays raw.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JobKindFields {
    #[serde(rename = "type")]
    kind: JobKindType,
    #[serde(default)]
    argv: Option<Vec<String>>,
    #[serde(default)]
    env: Option<BTreeMap<String, String>>,
    #[serde(default)]
    cwd: Option<String>,
    #[serde(default)]
    handler: Option<String>,
    #[serde(default)]
    args: Option<RawJson>,
}

impl TryFrom<JobKindFields> for JobKind {
    type Error = String;

    fn try_from(f: JobKindFields) -> Result<Self, String> {
        // The same words serde uses, so that the server reports the field at fault.
        let unknown = |name: &str, kind: &str| {
            format!("unknown field `{name}`: a {kind} job does not take it")
        };
        match f.kind {
            JobKindType::Command => {
                if f.handler.is_some() {
                    return Err(unknown("handler", "command"));
                }
                if f.args.is_some() {
                    return Err(unknown("args", "command"));
                }
                Ok(JobKind::Command {
                    argv: f.argv.ok_or("missing field `argv`")?,
                    env: f.env.unwrap_or_default(),
                    cwd: f.cwd,
                })
            }
            JobKindType::Function => {
                for (name, present) in [
                    ("argv", f.argv.is_some()),
                    ("env", f.env.is_some()),
                    ("cwd", f.cwd.is_some()),
                ] {
                    if present {
                        return Err(unknown(name, "function"));
                    }
                }
                Ok(JobKind::Function {
                    handler: f.handler.ok_or("missing field `handler`")?,
                    args: f.args.unwrap_or_default(),
                })
            }
        }
    }
}

/// How failed attempts are retried. Absent fields take the queue's defaults.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetrySpec {
    /// Attempts in all, counting the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Wait after the first failure, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_base_ms: Option<u64>,
    /// Longest wait, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_cap_ms: Option<u64>,
    /// Fraction (0..=1) of a wait taken off at random.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<f64>,
}

/// A limit on how often jobs start: `rate` (`100/s`, `10/m`, `5/h`) sustained, and up to
/// `burst` at once after a quiet spell. Every attempt's dispatch counts, retries included.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSpec {
    /// Starts per second, minute or hour: `100/s`, `10/m`, `5/h`. In a queue's settings a
    /// rate of `0` (or `0/s`) removes the limit.
    pub rate: String,
    /// Starts allowed back to back after a quiet spell (default 1: evenly spaced, as
    /// Celery spaces them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

/// A job submission (`POST /v1/jobs`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitJob {
    /// The job's id, chosen by the client: a UUIDv7 (time-ordered; listings sort by it).
    /// Sending the same id with the same submission again is safe (a retry after a lost
    /// answer): the answer names the same job, with `created: false`. The same id with a
    /// different submission is refused with 409 naming `id` (arguments larger than the
    /// server's inline limit are kept apart and not compared). Without it the server picks
    /// one. A finished job's id is free again once the job has passed its retention.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Uuid>,
    /// Leaf queue path (`root.default`).
    pub queue: String,
    /// What to run.
    pub kind: JobKind,
    /// Resources per attempt; the queue's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// Size cpu and memory from what this job's name (handler or program) used in its
    /// queue: the 95th percentile times a margin, within the queue's `auto_resources`
    /// bounds (or the defaults). Until enough attempts were observed, `resources` or the
    /// queue's default hold.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub auto_resources: bool,
    /// Higher runs first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    /// Start no sooner than this many ms from now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    /// Start no sooner than this instant (an ETA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before_ms: Option<u64>,
    /// Give up if not started by this instant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
    /// Longest an attempt may run, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// When an attempt is warned that its time runs out, ms (before `timeout_ms`): a
    /// command gets the worker's soft-timeout signal (SIGUSR1 by default), a handler a
    /// notice it can wait for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soft_timeout_ms: Option<u64>,
    /// Retry policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySpec>,
    /// Same key in the same queue within retention: the same job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Labels a worker must carry.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: BTreeMap<String, String>,
    /// Free-form tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Keys the queue's `key_limits` apply to, e.g. `{"customer": "acme"}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub keys: BTreeMap<String, String>,
    /// In a workflow: the node's name, unique in the workflow, by which other nodes name
    /// it in `after`. Refused outside a workflow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The jobs this one waits for, in order (the order their results are passed in):
    /// ids of existing jobs the caller may read, or, in a workflow, names of its nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<String>,
    /// When it may run once its parents ended (default `all_succeeded`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_when: Option<RunWhen>,
    /// Whether the worker receives the parents' results, in `after`'s order, with the job
    /// (`Assignment.inputs`): a chain's next link, a chord's callback. Function jobs only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pass_results: bool,
    /// Names of variables of the command's `env` whose values are secret: every view of
    /// the job (and of a schedule's template) shows them as `***`, and the job's captured
    /// output has their values masked; the worker still receives the real values. The
    /// server stores them as given (in clear at rest). Command jobs only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secret_env: Vec<String>,
}

impl SubmitJob {
    /// A function job with every option left to the queue.
    pub fn function(queue: &str, handler: &str, args: serde_json::Value) -> Self {
        Self::function_raw(queue, handler, RawJson::from_value(&args))
    }

    /// A function job whose arguments are already JSON text.
    pub fn function_raw(queue: &str, handler: &str, args: RawJson) -> Self {
        Self::new(
            queue,
            JobKind::Function {
                handler: handler.into(),
                args,
            },
        )
    }

    /// A submission of `kind` with every option left to the queue.
    pub fn new(queue: &str, kind: JobKind) -> Self {
        Self {
            id: None,
            queue: queue.into(),
            kind,
            resources: None,
            auto_resources: false,
            priority: None,
            delay_ms: None,
            not_before_ms: None,
            expires_at_ms: None,
            timeout_ms: None,
            soft_timeout_ms: None,
            retry: None,
            idempotency_key: None,
            selector: BTreeMap::new(),
            tags: Vec::new(),
            keys: BTreeMap::new(),
            name: None,
            after: Vec::new(),
            run_when: None,
            pass_results: false,
            secret_env: Vec::new(),
        }
    }

    /// This job named `name`, as a workflow node.
    pub fn named(mut self, name: &str) -> Self {
        self.name = Some(name.into());
        self
    }

    /// This job waiting for `parents` (node names in a workflow, or job ids).
    pub fn after<S: ToString>(mut self, parents: impl IntoIterator<Item = S>) -> Self {
        self.after = parents.into_iter().map(|p| p.to_string()).collect();
        self
    }

    /// This job running when its parents ended as `run_when` says.
    pub fn when(mut self, run_when: RunWhen) -> Self {
        self.run_when = Some(run_when);
        self
    }

    /// This job receiving its parents' results.
    pub fn with_results(mut self) -> Self {
        self.pass_results = true;
        self
    }
}

/// A workflow (`POST /v1/workflows`): a graph of jobs taken whole or refused whole, with
/// the refused node named. Nodes wait for each other by name (`after`) and may wait for
/// existing jobs by id. A group is a workflow of nodes that wait for nothing; a chain, one
/// whose every node waits for the one before and receives its result; a chord, a group
/// and one node that waits for all of it and receives their results in order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitWorkflow {
    /// The jobs, each with a `name` (at most 20,000).
    pub nodes: Vec<SubmitJob>,
}

/// A node of a submitted workflow.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WorkflowNodeId {
    /// Its name.
    pub name: String,
    /// Its job's id.
    pub id: Uuid,
}

/// The answer to a workflow's submission.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WorkflowSubmitted {
    /// The workflow's id (the group's id, for a group).
    pub id: Uuid,
    /// Its nodes' job ids, in the order submitted.
    pub nodes: Vec<WorkflowNodeId>,
}

/// A workflow with the state and result of each node (`GET /v1/workflows/{id}`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WorkflowView {
    /// Its id.
    pub id: Uuid,
    /// Where it is, from its jobs' states.
    pub state: WorkflowState,
    /// How many nodes are in each state.
    pub counts: BTreeMap<JobState, u64>,
    /// Every node as a job, in submission order (each with `name` and `after`).
    pub nodes: Vec<JobView>,
}

/// The parents' results a job receives (`GET /v1/jobs/{id}/inputs`), in `after`'s order;
/// `null` for a parent that did not succeed (under `all_finished`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobInputs {
    /// The parents' results.
    #[schema(value_type = Vec<Object>)]
    pub inputs: Vec<serde_json::Value>,
}

/// The answer to a submission.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Submitted {
    /// The job's id.
    pub id: Uuid,
    /// False when an idempotency key, or a client-chosen id, matched an existing job.
    pub created: bool,
}

/// A batch submission (`POST /v1/jobs/batch`), up to 10,000 jobs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitBatch {
    /// The jobs, each validated and answered on its own.
    pub jobs: Vec<SubmitJob>,
}

/// The answer to one item of a batch: an id, or the error for that item.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BatchItem {
    /// The job's id, when accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Uuid>,
    /// False when an idempotency key matched an existing job.
    #[serde(default)]
    pub created: bool,
    /// Why this item was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorDetail>,
}

/// The answer to a batch, in submission order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BatchResult {
    /// One item per submitted job.
    pub results: Vec<BatchItem>,
    /// How many were accepted.
    pub accepted: usize,
}

/// One attempt at a job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AttemptView {
    /// 1 for the first.
    pub number: u32,
    /// Its fencing token.
    pub token: u64,
    /// The worker it ran on.
    pub worker: Uuid,
    /// When it was assigned.
    pub scheduled_at_ms: u64,
    /// When the worker confirmed it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at_ms: Option<u64>,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<u64>,
    /// How it ended; absent while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<AttemptOutcome>,
    /// The failure's message or exit code, when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A job as clients see it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobView {
    /// Its id.
    pub id: Uuid,
    /// Its queue.
    pub queue: String,
    /// Where it is in its life.
    pub state: JobState,
    /// What it runs.
    pub kind: JobKind,
    /// Resources per attempt.
    pub resources: ResourceFigures,
    /// Its priority.
    pub priority: i32,
    /// When it was accepted.
    pub submitted_at_ms: u64,
    /// Who submitted it: the name of the caller's token, or `anonymous` on a server
    /// without tokens. Empty from servers older than this field.
    #[serde(default)]
    pub submitted_by: String,
    /// Not to start before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before_ms: Option<u64>,
    /// Gives up if not started by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
    /// Attempt timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// When an attempt is warned that its time runs out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soft_timeout_ms: Option<u64>,
    /// The latest state the job reported of itself while running (`update_state`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub progress: Option<serde_json::Value>,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// Its tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Its keys (for per-key rate limits).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub keys: BTreeMap<String, String>,
    /// While pending and held back by a rate limit: the instant the limit allows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limited_until_ms: Option<u64>,
    /// For a re-run (`POST /v1/jobs/{id}/retry`): the finished job it runs again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_of: Option<Uuid>,
    /// The workflow it belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<Uuid>,
    /// Its node's name in the workflow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The jobs it waits for, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<Uuid>,
    /// When it may run once they ended (with `after`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_when: Option<RunWhen>,
    /// Whether it receives their results.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pass_results: bool,
    /// For a broadcast's job: the one worker it runs on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinned_worker: Option<Uuid>,
    /// The variables of `kind.env` whose values are secret: shown as `***` there.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secret_env: Vec<String>,
    /// Every attempt, the latest last.
    pub attempts: Vec<AttemptView>,
    /// The result of a succeeded function job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
    /// The exit code of the last attempt of a command job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Why it failed, was cancelled or expired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<u64>,
}

/// The order of a job listing, by submission time (`order` of `GET /v1/jobs`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ListOrder {
    /// Oldest first: the default, so that paging never skips a job submitted meanwhile.
    #[default]
    Oldest,
    /// Newest first: what a person looking at recent work wants.
    Newest,
}

impl ListOrder {
    /// The name used on the wire (`oldest`, `newest`).
    pub fn as_str(self) -> &'static str {
        match self {
            ListOrder::Oldest => "oldest",
            ListOrder::Newest => "newest",
        }
    }
}

/// A bulk cancel (`POST /v1/jobs/cancel`): every unfinished job matching all the criteria
/// given (at least one).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelJobs {
    /// A queue: its jobs and those of every queue under it (`root` for all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// A tag the jobs carry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// pending, scheduled or running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<JobState>,
    /// Why, kept with each job (default "cancelled by a client").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What a bulk cancel did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CancelledJobs {
    /// How many jobs were cancelled.
    pub cancelled: u64,
}

/// A page of jobs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobList {
    /// The jobs, in the order asked for (oldest first by default).
    pub jobs: Vec<JobView>,
    /// Pass as `cursor` for the next page; absent on the last page. A page may hold
    /// fewer jobs than `limit`, even none, while this is present: a listing examines at
    /// most 2,000 jobs per page for filters its index does not cover, and ends short
    /// rather than scan on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Default job options of a queue.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueueDefaults {
    /// Resources of a command job that names none (default 1 cpu, 256 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// Resources of a function job that names none (default 0.01 cpu, 16 MiB: functions
    /// run inside the worker's process, many at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function_resources: Option<Resources>,
    /// Priority of a job that names none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    /// Attempt timeout of a job that names none, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Retry policy of a job that names none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySpec>,
}

/// A queue's settings. In a create every absent field takes its default; in an update
/// absent fields stay as they are.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueueSettings {
    /// Guaranteed share, percent of the parent's (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<f64>,
    /// Elastic ceiling, percent of the parent's (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_capacity: Option<f64>,
    /// Tie-breaking weight (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// Most attempts running at once; 0 removes the limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_running: Option<u32>,
    /// Most jobs pending; 0 removes the limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending: Option<u64>,
    /// Job defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defaults: Option<QueueDefaults>,
    /// Ordering policy name (priority-fifo, fifo, smallest-first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordering: Option<String>,
    /// Placement policy name (best-fit, spread).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<String>,
    /// Admission policy name (accept-all, require-capable-worker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admission: Option<String>,
    /// Whether preemption may take attempts back from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preemptable: Option<bool>,
    /// A leaf's priority preemption inside it (YARN's intra-queue preemption): a job its
    /// ordering puts ahead, waiting past the cluster's preemption delay, takes the place
    /// of running attempts of jobs ranked after it. Default false; needs the cluster's
    /// preemption on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_preemption: Option<bool>,
    /// A leaf's limit on how often its jobs start (retries included); absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitSpec>,
    /// A leaf's limits per job key, by key name: `{"customer": {"rate": "5/s"}}` gives
    /// each customer its own bucket. In an update the map replaces the old one (`{}`
    /// removes them all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_limits: Option<BTreeMap<String, RateLimitSpec>>,
    /// A leaf's fair sharing among the values of a key of its jobs: `user` (the
    /// submitter, its token's identity) or a key of the jobs' `keys` (`tenant`). Inside
    /// a priority, the next job is the oldest of the value holding least of the
    /// cluster in this queue. `""` removes it (first come, first served).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fairness_key: Option<String>,
    /// A leaf's user limit: the most one value of the fairness key may hold, as a
    /// multiple of the queue's guarantee (YARN's user-limit-factor); each may always
    /// run one job. Needs `fairness_key` and a capacity above 0. 0 removes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_limit_factor: Option<f64>,
    /// A parent's template for queues made on demand (`root.users.*`): the first submit
    /// to `<this queue>.<name>` creates that leaf with the template's settings. A queue
    /// with a template takes no jobs itself. In an update, absent fields of the
    /// template stay as they are; `max_queues: 0` removes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<QueueTemplateSpec>,
    /// A leaf's right-sizing: its jobs that name no resources (and jobs that ask for
    /// `auto_resources`) request what their name's recent attempts used. `{}` turns it
    /// on with the defaults; `{"margin": 0}` turns it off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_resources: Option<AutoResourcesSpec>,
}

/// A leaf's right-sizing settings; absent fields take their defaults (in an update,
/// stay as they are).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AutoResourcesSpec {
    /// A request is the 95th percentile of observed use times this (default 1.2, from 1
    /// to 10); 0 turns right-sizing off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub margin: Option<f64>,
    /// Attempts of a name observed before its requests follow them (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_samples: Option<u32>,
    /// The least a right-sized request asks for (default 0.05 cpu, 32 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<Resources>,
    /// The most (default: no bound but the workers'); also the most memory an attempt
    /// killed for exceeding its memory is retried with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<Resources>,
}

/// `GET /v1/queues/{path}/usage`: what a leaf's attempts used, by job name.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct QueueUsage {
    /// The leaf.
    pub path: String,
    /// Whether the leaf right-sizes its jobs' requests.
    pub auto_resources: bool,
    /// One entry per handler or program seen, by name.
    pub names: Vec<NameUsage>,
}

/// What the latest attempts of one job name used against what they asked for. Function
/// jobs run inside their worker's process and are not measured one by one: only
/// commands appear here.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NameUsage {
    /// The handler, or the command's program file name.
    pub name: String,
    /// Attempts measured since the leader started.
    pub attempts: u64,
    /// Attempts the figures are taken over (the latest, at most 256).
    pub window: u64,
    /// Mean cpu (cores) and memory (MiB) their jobs asked for.
    pub requested: ResourceFigures,
    /// Median and 95th percentile of peak memory, and the largest, MiB.
    pub memory_p50_mib: u64,
    /// 95th percentile of peak memory, MiB.
    pub memory_p95_mib: u64,
    /// Largest peak memory, MiB.
    pub memory_max_mib: u64,
    /// Median of the cores used on average over an attempt.
    pub cpu_p50: f64,
    /// 95th percentile of the cores used on average over an attempt.
    pub cpu_p95: f64,
    /// What `auto` requests for a new job of this name now; absent before enough
    /// attempts were observed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_request: Option<ResourceFigures>,
}

/// The template of a parent whose children are made on demand, as YARN's auto-created
/// leaf queues.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueueTemplateSpec {
    /// A child that has held no unfinished job this long is removed, ms (default
    /// 600,000); its finished jobs and lifetime counters stay readable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_ms: Option<u64>,
    /// Most children made on demand at once (default 1,000); past it a submit to a new
    /// one is refused. 0 removes the template (the children stay, as ordinary queues).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queues: Option<u32>,
    /// Each child's settings, as a queue's. `capacity` is the guarantee each child asks
    /// for: it gets it while the siblings' guarantees and it fit under 100%, else 0,
    /// with a note saying so.
    #[serde(flatten)]
    #[schema(no_recursion)]
    pub settings: Box<QueueSettings>,
}

/// `POST /v1/queues`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateQueue {
    /// The new queue's path; its parent must exist.
    pub path: String,
    /// Its settings.
    #[serde(flatten)]
    pub settings: QueueSettings,
}

/// Many queues to create in one request (`POST /v1/queues/batch`), applied in order, so
/// a parent listed before its children is created first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CreateQueues {
    /// The queues, each `path` plus its settings, as for `POST /v1/queues`.
    pub queues: Vec<CreateQueue>,
}

/// The answer to one queue of a batch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct QueueBatchItem {
    /// The queue's path, as given (empty when the item had none).
    pub path: String,
    /// True when this request created it; false when it already existed with exactly
    /// these settings (so importing the same file twice is harmless) or was refused.
    pub created: bool,
    /// Why this item was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorDetail>,
}

/// The answer to a batch of queues, in request order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct QueueBatchResult {
    /// One item per queue of the request.
    pub results: Vec<QueueBatchItem>,
    /// How many were created.
    pub created: usize,
}

/// A queue with live figures; `children` holds the subtree.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct QueueView {
    /// Its path.
    pub path: String,
    /// Whether it accepts and runs jobs.
    pub state: QueueState,
    /// Guaranteed share, percent of the parent's.
    pub capacity: f64,
    /// Ceiling, percent of the parent's.
    pub max_capacity: f64,
    /// Guarantee as a fraction of the cluster.
    pub abs_guarantee: f64,
    /// Ceiling as a fraction of the cluster.
    pub abs_max: f64,
    /// Resources its guarantee amounts to today.
    pub guaranteed: ResourceFigures,
    /// Resources its attempts hold.
    pub used: ResourceFigures,
    /// Jobs pending in its subtree.
    pub pending: u64,
    /// Attempts running in its subtree.
    pub running: u64,
    /// Jobs submitted, succeeded, failed, cancelled and expired in its subtree (after
    /// a restart: counted again from the jobs kept within retention).
    pub counts: QueueCounts,
    /// While a rate limit holds this leaf's next job back: the instant it allows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limited_until_ms: Option<u64>,
    /// A leaf with a fairness key: the values of it holding most here (at most 20),
    /// largest share first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<UserShare>,
    /// Made on demand by its parent's template; removed once idle.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub on_demand: bool,
    /// Made on demand and holding no unfinished job: since when (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_since_ms: Option<u64>,
    /// A queue made on demand and removed after its idle time: when (ms since the
    /// epoch). Its settings and lifetime counters are as they were then; a submit to it
    /// makes it again, its counters carried on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed_at_ms: Option<u64>,
    /// Why its settings differ from what was asked (a template's guarantee that did not
    /// fit beside its siblings').
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Its settings.
    pub settings: QueueSettings,
    /// True on a queue shown only to place below it the queues a token limited to some
    /// queues may read: its own figures (`used`, `pending`, `running`, `counts`) are
    /// left out (zero), and so are its children the token may not read.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub placement_only: bool,
    /// Its children.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(no_recursion)]
    pub children: Vec<QueueView>,
}

/// What one value of a leaf's fairness key (a user, a tenant) holds in the leaf.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UserShare {
    /// The value (`alice`); `""` for the jobs without the key.
    pub name: String,
    /// Resources its attempts hold.
    pub used: ResourceFigures,
    /// Its attempts scheduled or running.
    pub running: u32,
    /// Its dominant share of the cluster (0..=1).
    pub share: f64,
}

/// Lifetime counters of a queue's subtree.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct QueueCounts {
    /// Accepted.
    pub submitted: u64,
    /// Succeeded.
    pub succeeded: u64,
    /// Failed for good.
    pub failed: u64,
    /// Cancelled.
    pub cancelled: u64,
    /// Expired.
    pub expired: u64,
    /// Mean wait from ready to scheduled, ms.
    pub mean_wait_ms: u64,
    /// Mean run time, ms.
    pub mean_run_ms: u64,
}

/// `POST /v1/workers`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterWorker {
    /// The worker's id (keep it across reconnects so running attempts are recognised).
    pub id: Uuid,
    /// A name for people.
    pub name: String,
    /// What it offers.
    pub capacity: Resources,
    /// Labels jobs select on.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Whether it runs command jobs (default true).
    #[serde(default = "yes")]
    pub serves_commands: bool,
    /// Handlers it runs; `*` for all.
    #[serde(default)]
    pub handlers: Vec<String>,
    /// The queues whose jobs it runs, each with the queues under it (Celery's
    /// `worker -Q`): queue paths, which need not exist yet. Empty or absent: every
    /// queue. Servers before this field refuse it as unknown.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub queues: Vec<String>,
    /// The worker protocol version it speaks (this release speaks 5); absent means 1,
    /// the version before registrations carried one.
    #[serde(default = "protocol_one")]
    #[schema(default = 1, minimum = 1)]
    pub protocol: u32,
}

fn yes() -> bool {
    true
}

fn protocol_one() -> u32 {
    1
}

/// An attempt a worker holds, by job and token.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttemptRef {
    /// The job.
    pub job: Uuid,
    /// The attempt's token.
    pub token: u64,
    /// The latest state the attempt reported of itself (Celery's `update_state`): small
    /// JSON (at most 4 KiB), shown as the job's `progress`. Send it in every poll while
    /// the attempt runs; the server keeps it when it changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub progress: Option<serde_json::Value>,
}

/// How an attempt ended, as the worker saw it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum AttemptResult {
    /// It succeeded.
    #[schema(title = "AttemptSucceeded")]
    Succeeded {
        /// A function's return value.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schema(value_type = Option<Object>)]
        result: Option<serde_json::Value>,
        /// A command's exit code.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exit_code: Option<i32>,
    },
    /// It failed.
    #[schema(title = "AttemptFailed")]
    Failed {
        /// A command's exit code.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exit_code: Option<i32>,
        /// What went wrong.
        message: String,
        /// Whether the job may be retried (protocol 4; absent means true): `false` fails
        /// the job now, whatever attempts its retry policy has left (Celery's
        /// `autoretry_for`: an exception not listed there is not retried).
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            deserialize_with = "retry_flag"
        )]
        retry: Option<bool>,
        /// It was killed for using more memory than its request (protocol 7): the job
        /// runs again with twice the memory without spending an attempt, while that stays
        /// within its queue's bound for right-sized requests.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        memory_exceeded: bool,
    },
    /// The worker killed it at its timeout.
    #[schema(title = "AttemptTimedOut")]
    TimedOut,
    /// The job asked to be run again (Celery's `self.retry(countdown=...)`; a command
    /// exits with code 75): not a failure, but it uses one of the job's attempts.
    #[schema(title = "AttemptRetry")]
    Retry {
        /// Wait this long before the next attempt; the retry policy's backoff when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        countdown_ms: Option<u64>,
        /// Why.
        #[serde(default)]
        message: String,
    },
}

/// `AttemptResult::Failed.retry`: a boolean, or absent (or null). serde reads the fields
/// of a tagged enum from a buffer, where the path of a wrong type is lost, so the error
/// names its field itself (`field `retry`: ...`); the server reports it at that field.
fn retry_flag<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Option<bool>, D::Error> {
    use serde::de::Error;
    match Option::<serde_json::Value>::deserialize(de)? {
        None => Ok(None),
        Some(value) => bool::deserialize(value)
            .map(Some)
            .map_err(|e| D::Error::custom(format!("field `retry`: {e}"))),
    }
}

/// A finished attempt in a poll.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FinishedAttempt {
    /// The job.
    pub job: Uuid,
    /// The attempt's token.
    pub token: u64,
    /// How it went.
    pub result: AttemptResult,
    /// Its captured output (stdout and stderr), already capped by the worker; the
    /// server keeps the last `limits.max_log_bytes` of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logs: Option<String>,
    /// When the worker started it (ms since the epoch); recorded if the server had
    /// not yet seen it running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at_ms: Option<u64>,
    /// What it used, as the worker measured it (protocol 7); absent when not measured
    /// (a function run inside the worker's own process).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<AttemptUsage>,
}

/// What one attempt used, as its worker measured it: the peak of its processes'
/// resident memory together (cgroup v2's `memory.peak` where the attempt has a cgroup,
/// else the largest sum sampled over its process tree) and their CPU time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttemptUsage {
    /// Peak resident memory, MiB (rounded up).
    pub peak_memory_mib: u64,
    /// CPU time, user and system, ms.
    pub cpu_ms: u64,
}

/// A piece of a running attempt's output (protocol 8), in `LogChunks`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LogChunk {
    /// The job.
    pub job: Uuid,
    /// The attempt's token.
    pub token: u64,
    /// Where `text` starts in the attempt's output: the number of bytes the attempt
    /// wrote before it (so a chunk sent again after a failed call overlaps, and the
    /// server takes only what it does not hold yet).
    pub offset: u64,
    /// The output from `offset` on (UTF-8; a character the worker had to cut is
    /// replaced, the offsets count the bytes the attempt wrote).
    pub text: String,
}

/// `POST /v1/workers/{id}/logs` (protocol 8): the new output of running attempts, for
/// several attempts in one call, sent at most about once a second per attempt and only
/// when there is new output. A preview for readers while the attempts run: the report's
/// `logs` replace it when the attempt ends.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LogChunks {
    /// The chunks, at most one per attempt.
    pub chunks: Vec<LogChunk>,
}

/// The answer to `POST /v1/workers/{id}/logs`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LogChunksAnswer {
    /// Chunks of attempts that are not current on this worker (`stale_attempt`) or of
    /// jobs the server does not hold (`unknown_job`): nothing of them was kept, and the
    /// worker sends no more of those attempts. Every other chunk was taken.
    pub refused: Vec<RefusedReport>,
}

/// `GET /v1/jobs/{id}/logs?offset=N`: the job's output from byte `N` on, for a reader
/// that follows it. While an attempt runs, its output as its worker uploaded it so far
/// (the last `limits.max_log_bytes` of it); once it ended, its report's `logs`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobLogs {
    /// Where `text` starts in the attempt's output. Equal to the `offset` asked, unless
    /// the output kept no longer reaches back to it (`missed`).
    pub offset: u64,
    /// Ask from here next time: `offset` plus the bytes of `text`.
    pub next_offset: u64,
    /// The output from `offset` on.
    pub text: String,
    /// True when the output between the `offset` asked and this answer's `offset` is no
    /// longer kept (it passed out of the tail of `limits.max_log_bytes`, or never
    /// reached this server): that much was skipped.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub missed: bool,
    /// True while the attempt runs: more may come. False once its report's `logs` are
    /// what is shown (those are the attempt's output as kept for good).
    pub running: bool,
    /// The number of the attempt whose output this is (offsets start again at 0 with
    /// each attempt); absent when no attempt has output yet. For an ended attempt, the
    /// last attempt that ended with a report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
}

/// `POST /v1/workers/{id}/poll`: heartbeat, reports and a long-poll for work.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PollRequest {
    /// Attempts running on the worker now.
    #[serde(default)]
    pub running: Vec<AttemptRef>,
    /// Attempts that ended since the last poll.
    #[serde(default)]
    pub finished: Vec<FinishedAttempt>,
    /// How long to wait for new work when there is none (default 0, max 30,000).
    #[serde(default)]
    pub wait_ms: u64,
    /// The highest `seq` of the poll answers this worker has processed. Attempts from
    /// later answers (still in flight, e.g. on a replaced long-poll) are not yet
    /// expected in `running`. Reset to 0 on registering again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack: Option<u64>,
    /// Attempts that ended and whose reports are on their way in another poll still
    /// out (protocol 5): neither running nor lost. A worker with two polls out names
    /// them in the second, which the server may take first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ending: Vec<AttemptRef>,
    /// The `registration` of the answer to the registration this poll belongs to
    /// (protocol 6). A poll sent before the worker registered again can reach the
    /// server after it, with a list of running attempts from before: the server
    /// refuses such a poll with `409 stale_registration` and takes nothing from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration: Option<u64>,
}

/// A new attempt for the worker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Assignment {
    /// The job.
    pub job: Uuid,
    /// The attempt's token: report with it.
    pub token: u64,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// The job's queue.
    pub queue: String,
    /// What to run.
    pub kind: JobKind,
    /// Resources granted.
    pub resources: ResourceFigures,
    /// Kill it after this long, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Warn it after this long, ms: a command gets the worker's soft-timeout signal, a
    /// handler a notice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soft_timeout_ms: Option<u64>,
    /// For a job that receives its parents' results: those results, in order, when they
    /// are small enough to travel with the assignment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Object>>)]
    pub inputs: Option<Vec<serde_json::Value>>,
    /// For a job that receives its parents' results and they are too large to travel with
    /// the assignment: the path to read them from (`GET /v1/jobs/{id}/inputs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs_path: Option<String>,
}

/// An attempt the worker must stop.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct KillOrder {
    /// The job.
    pub job: Uuid,
    /// The attempt's token.
    pub token: u64,
    /// Why.
    pub reason: KillReason,
}

/// A report the server refused (the worker drops it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RefusedReport {
    /// The job.
    pub job: Uuid,
    /// The attempt's token.
    pub token: u64,
    /// Why.
    pub reason: RefusalReason,
}

/// The answer to a poll.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PollResponse {
    /// This answer's number when it carries assignments (0 when it carries none): echo
    /// the highest one processed as `ack` in later polls.
    #[serde(default)]
    pub seq: u64,
    /// New attempts to start.
    pub assignments: Vec<Assignment>,
    /// Attempts to stop.
    pub kill: Vec<KillOrder>,
    /// Reports refused.
    pub refused: Vec<RefusedReport>,
}

/// A worker as the cluster sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WorkerView {
    /// Its id.
    pub id: Uuid,
    /// Its name.
    pub name: String,
    /// Where it is in its life.
    pub state: WorkerState,
    /// What it offers.
    pub capacity: ResourceFigures,
    /// What its attempts hold.
    pub used: ResourceFigures,
    /// Attempts it holds.
    pub attempts: usize,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// The queues it serves, with those under them; absent: every queue.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub queues: Vec<String>,
    /// The server's heartbeat timeout, ms: after this long without a poll the
    /// server declares the worker lost and runs its attempts elsewhere. Given in the
    /// answer to a registration, so that a worker cut off from the server can stop
    /// its attempts before that happens; absent elsewhere and from older servers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_timeout_ms: Option<u64>,
    /// The number of its latest registration: polls name it (`PollRequest.registration`,
    /// protocol 6). It only grows, across server restarts and leaders. Absent from
    /// older servers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration: Option<u64>,
    /// It has not polled again in time after an answer (docs/PROTOCOL.md, "Quiet
    /// workers"): it gets no new attempts until it polls, though it is not yet
    /// declared lost. Absent when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub quiet: bool,
}

/// `GET /v1/cluster`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ClusterSummary {
    /// Workers by state.
    pub workers: BTreeMap<WorkerState, usize>,
    /// What shares are shares of.
    pub total: ResourceFigures,
    /// What attempts hold.
    pub used: ResourceFigures,
    /// Jobs held, by state.
    pub jobs: BTreeMap<JobState, u64>,
    /// Number of queues.
    pub queues: usize,
    /// The store, and the server that writes to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<StoreSummary>,
}

/// `GET /v1/cluster/history`: the leader's figures once a second over the last hour,
/// oldest first (a new leader starts its hour afresh).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ClusterHistory {
    /// Time between samples, ms.
    pub interval_ms: u64,
    /// The samples, oldest first.
    pub samples: Vec<ClusterSample>,
}

/// The cluster at one moment. Counters are totals since the queues were created, so a
/// rate is the difference of two samples over their time apart.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ClusterSample {
    /// When, ms since the Unix epoch.
    pub at_ms: u64,
    /// CPU cores offered by the workers.
    pub cpu_total: f64,
    /// CPU cores held by running attempts.
    pub cpu_used: f64,
    /// Memory offered, MiB.
    pub memory_total_mib: u64,
    /// Memory held by running attempts, MiB.
    pub memory_used_mib: u64,
    /// Jobs waiting (ready or delayed).
    pub pending: u64,
    /// Attempts running.
    pub running: u64,
    /// Jobs accepted, in total.
    pub submitted: u64,
    /// Jobs finished (succeeded, failed, cancelled or expired), in total.
    pub finished: u64,
    /// Jobs that failed for good, in total.
    pub failed: u64,
    /// Workers taking jobs.
    pub workers_active: u32,
}

/// A periodic schedule to create (`POST /v1/schedules`): at each fire time it submits one
/// job from `job`. Exactly one of `cron` and `every_ms`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSchedule {
    /// Its name: 1 to 128 letters, digits, `.`, `_`, `-`.
    pub name: String,
    /// A cron expression: 5 fields (minute hour day-of-month month day-of-week), or 6 with
    /// seconds first, or `@hourly`, `@daily`...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// The IANA time zone `cron` is read in (default `UTC`); daylight saving is followed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// A fixed interval instead of `cron`, counted from creation (at least 1000 ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every_ms: Option<u64>,
    /// The job each fire submits (its `id`, `delay_ms`, `not_before_ms`, `expires_at_ms`
    /// and `idempotency_key` are each fire's own, so they are refused here).
    pub job: SubmitJob,
    /// Fire times missed while no server could fire them: `skip`, `run_once` (default:
    /// one job for all of them) or `catch_up` (the latest `catch_up_max`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub misfire: Option<String>,
    /// With `misfire = catch_up`: the most missed fires made up (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catch_up_max: Option<u32>,
    /// A fire while the previous fire's job has not finished: `allow` (default) or `skip`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlap: Option<String>,
}

/// A change to a schedule (`PATCH /v1/schedules/{name}`): each field given replaces the
/// schedule's; what the schedule did (last fire, last job, count) is kept.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateSchedule {
    /// A new cron expression (replaces an interval).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// A new time zone for the cron expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// A new interval (replaces a cron expression).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every_ms: Option<u64>,
    /// A new job template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<SubmitJob>,
    /// A new misfire policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub misfire: Option<String>,
    /// With `misfire = catch_up`: the most missed fires made up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catch_up_max: Option<u32>,
    /// A new overlap policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlap: Option<String>,
}

/// A schedule with its state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ScheduleView {
    /// Its name.
    pub name: String,
    /// Its cron expression, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// The time zone of `cron`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// Its interval, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every_ms: Option<u64>,
    /// The queue its jobs go to.
    pub queue: String,
    /// What its jobs run.
    pub kind: JobKind,
    /// `skip`, `run_once` or `catch_up`.
    pub misfire: String,
    /// With `catch_up`: the most missed fires made up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catch_up_max: Option<u32>,
    /// `allow` or `skip`.
    pub overlap: String,
    /// Paused schedules do not fire.
    pub paused: bool,
    /// When it was created (ms since the Unix epoch).
    pub created_at_ms: u64,
    /// Its next fire time (absent while paused, or when the trigger never fires again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_fire_ms: Option<u64>,
    /// The last fire time handled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_fire_ms: Option<u64>,
    /// The job of the last fire that made one (every job of the schedule is tagged
    /// `schedule:NAME`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_job: Option<Uuid>,
    /// Why the last fire made no job, if it did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Jobs made so far.
    pub fired: u64,
}

/// The store and its writer (the lease holder).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StoreSummary {
    /// `embedded` or `postgres`.
    pub backend: String,
    /// The name the writing server holds the lease under (`[store] node`).
    pub leader: String,
    /// The leader's term: each new lease is one higher.
    pub epoch: u64,
    /// When the lease lapses unless renewed (ms since the Unix epoch).
    pub lease_expires_at_ms: u64,
    /// The servers sharing the store (PostgreSQL), each as it last announced itself.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<ServerSummary>,
}

/// A server sharing the store.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ServerSummary {
    /// Its name (`[store] node`).
    pub node: String,
    /// Where the others reach it.
    pub address: String,
    /// Whether it holds the lease: the leader, which runs the ResourceManager.
    pub leader: bool,
    /// When it last announced itself (ms since the Unix epoch); a server announces
    /// itself every lease renewal interval.
    pub seen_at_ms: u64,
}

/// `GET /v1/autoscale`: the worker autoscaler of the leader, its pools and its recent
/// decisions.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AutoscaleView {
    /// Whether the autoscaler runs (`[autoscale] enabled` on the leader).
    pub enabled: bool,
    /// How often it evaluates the pools, ms.
    pub interval_ms: u64,
    /// The pools, in the config's order.
    pub pools: Vec<AutoscalePoolView>,
    /// Recent events of every pool, oldest first: scale-ups and -downs, refusals
    /// (cooldown, at max, no idle worker), starts that never registered, workers the
    /// provider started or stopped, and provider failures. Steady evaluations are not
    /// recorded.
    pub events: Vec<AutoscaleEvent>,
}

/// One pool as the autoscaler last evaluated it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AutoscalePoolView {
    /// Its name (the workers it starts carry the label `lqsm.pool=<name>`).
    pub name: String,
    /// `local` or `exec`.
    pub provider: String,
    /// The autoscaling policy's name.
    pub policy: String,
    /// The labels its workers carry, `lqsm.pool` included.
    pub labels: BTreeMap<String, String>,
    /// Fewest workers kept.
    pub min: u32,
    /// Most workers.
    pub max: u32,
    /// Workers registered and taking work, not being drained.
    pub current: u32,
    /// Workers draining (finishing their attempts before they stop).
    pub draining: u32,
    /// Workers asked for and not yet registered.
    pub pending: u32,
    /// The size last decided, once evaluated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired: Option<u32>,
    /// Jobs waiting that a new worker of the pool could run.
    pub backlog: u64,
    /// Attempts its workers hold.
    pub running: u64,
    /// When it was last evaluated (ms since the Unix epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluated_at_ms: Option<u64>,
    /// Its last recorded decision, with its reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_decision: Option<AutoscaleEvent>,
    /// Its workers (active and draining).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workers: Vec<AutoscaleWorker>,
}

/// A worker of an autoscaled pool.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AutoscaleWorker {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Active or draining.
    pub state: WorkerState,
    /// Attempts it holds.
    pub attempts: u32,
    /// Since when it has run nothing (ms since the Unix epoch), if it runs nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_since_ms: Option<u64>,
}

/// One autoscaling decision or provider event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AutoscaleEvent {
    /// When (ms since the Unix epoch).
    pub at_ms: u64,
    /// The pool.
    pub pool: String,
    /// The autoscaler's decisions: `scale_up`, `scale_down`, `at_max`, `cooldown`,
    /// `no_idle_worker`, `starts_expired`, `invalid`; what a provider did:
    /// `workers_started`, `worker_stopping`, `worker_stopped`, `exec_done`,
    /// `provider_failed`.
    pub kind: String,
    /// Workers counted before.
    pub from: u32,
    /// Workers wanted (for a scale-down: those left).
    pub to: u32,
    /// Why, with the numbers (a provider failure: its error and the end of its stderr).
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(text: &str) -> Result<JobKind, String> {
        serde_json::from_str::<JobKind>(text).map_err(|e| e.to_string())
    }

    #[test]
    fn a_job_kind_reads_each_type_with_only_its_own_fields() {
        let function = kind(r#"{"type":"function","handler":"h","args":{"b":1,"a":2}}"#)
            .expect("a function job");
        let JobKind::Function { handler, args } = &function else {
            panic!("{function:?}");
        };
        assert_eq!(handler, "h");
        assert_eq!(args.as_str(), r#"{"b":1,"a":2}"#);
        assert_eq!(
            kind(r#"{"type":"function","handler":"h"}"#).expect("no args"),
            JobKind::Function {
                handler: "h".into(),
                args: RawJson::null()
            }
        );
        assert_eq!(
            kind(r#"{"type":"command","argv":["true"]}"#).expect("a command job"),
            JobKind::Command {
                argv: vec!["true".into()],
                env: BTreeMap::new(),
                cwd: None
            }
        );
        let err = kind(r#"{"type":"command","argv":["true"],"handler":"h"}"#).expect_err("mixed");
        assert!(err.starts_with("unknown field `handler`"), "{err}");
        let err = kind(r#"{"type":"function","handler":"h","argv":[]}"#).expect_err("mixed");
        assert!(err.starts_with("unknown field `argv`"), "{err}");
        let err = kind(r#"{"type":"command"}"#).expect_err("no argv");
        assert!(err.starts_with("missing field `argv`"), "{err}");
        let err = kind(r#"{"type":"shell"}"#).expect_err("no such type");
        assert!(err.contains("unknown variant `shell`"), "{err}");
        let err = kind(r#"{"type":"function","handler":"h","prio":1}"#).expect_err("typo");
        assert!(err.contains("unknown field `prio`"), "{err}");
    }

    #[test]
    fn a_job_kind_writes_the_same_json_it_always_did() {
        let function = JobKind::Function {
            handler: "h".into(),
            args: RawJson::parse(r#"{"x":1}"#).expect("json"),
        };
        assert_eq!(
            serde_json::to_string(&function).expect("serialises"),
            r#"{"type":"function","handler":"h","args":{"x":1}}"#
        );
        let command = JobKind::Command {
            argv: vec!["echo".into()],
            env: BTreeMap::new(),
            cwd: None,
        };
        assert_eq!(
            serde_json::to_string(&command).expect("serialises"),
            r#"{"type":"command","argv":["echo"]}"#
        );
    }
}
