//! The lifecycle side of the QueuesManager: what a job is, its attempts, and how it
//! moves from pending to a terminal state.

use crate::ids::{FencingToken, JobId, QueueId, Timestamp, WorkerId};
use crate::resources::{MiB, Resources};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

pub use crate::ids::JobKey;
pub use crate::retry::RetryPolicy;

/// A JSON value kept as its compact text: the core never looks inside arguments or
/// results, and text costs a fraction of a parsed tree's memory.
#[derive(Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Json(Box<serde_json::value::RawValue>);

impl Json {
    /// JSON `null`.
    pub fn null() -> Self {
        Self::from_value(&serde_json::Value::Null)
    }

    /// The compact text of `value`.
    pub fn from_value(value: &serde_json::Value) -> Self {
        Self(serde_json::value::to_raw_value(value).expect("a JSON value always serialises"))
    }

    /// Text already checked to be JSON (by a deserialiser), kept as it is.
    pub fn from_raw(raw: Box<serde_json::value::RawValue>) -> Self {
        Self(raw)
    }

    /// The checked text, to carry on without parsing it.
    pub fn to_raw(&self) -> Box<serde_json::value::RawValue> {
        self.0.clone()
    }

    /// Checks that `text` is JSON and keeps it as it is.
    pub fn parse(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::value::RawValue::from_string(text.to_owned()).map(Self)
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        self.0.get()
    }

    /// The value, parsed.
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::from_str(self.0.get()).expect("held text is valid JSON")
    }
}

impl Default for Json {
    fn default() -> Self {
        Self::null()
    }
}

impl From<serde_json::Value> for Json {
    fn from(value: serde_json::Value) -> Self {
        Self::from_value(&value)
    }
}

impl PartialEq for Json {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl fmt::Debug for Json {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A program to run as a child process.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Command {
    /// Program and arguments; at least the program.
    pub argv: Vec<String>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory (the worker's own when absent).
    #[serde(default)]
    pub cwd: Option<String>,
}

/// What a worker runs.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    /// A program run as a child process (boxed: function jobs are the common case
    /// and should not pay for a command's fields).
    Command(Box<Command>),
    /// A handler registered by name on a worker, called with JSON arguments.
    Function {
        /// The handler's name (`lqsm.echo`, `billing.invoice`); shared between jobs.
        handler: Arc<str>,
        /// Its arguments.
        #[serde(default)]
        args: Json,
    },
    /// A command or function too large to hold in memory: the shell keeps the real
    /// kind in its store and fetches it when the job is dispatched or shown. The core
    /// needs only what placement needs.
    Stored {
        /// The handler of a function job; `None` for a command.
        handler: Option<Arc<str>>,
    },
}

impl JobKind {
    /// A command job running `argv` with no extra environment in the worker's directory.
    pub fn command<S: Into<String>>(argv: impl IntoIterator<Item = S>) -> Self {
        JobKind::Command(Box::new(Command {
            argv: argv.into_iter().map(Into::into).collect(),
            env: BTreeMap::new(),
            cwd: None,
        }))
    }

    /// A function job calling `handler` with `args`.
    pub fn function(handler: &str, args: serde_json::Value) -> Self {
        JobKind::Function {
            handler: handler.into(),
            args: Json::from_value(&args),
        }
    }

    /// The handler a function job needs, or `None` for a command job.
    pub fn handler(&self) -> Option<&str> {
        match self {
            JobKind::Command(_) | JobKind::Stored { handler: None } => None,
            JobKind::Function { handler, .. }
            | JobKind::Stored {
                handler: Some(handler),
            } => Some(handler),
        }
    }
}

/// When a job that depends on others may run, once each of its parents has ended
/// (after its own retries).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunWhen {
    /// Every parent succeeded; a parent that failed, was cancelled or expired cancels
    /// this job with reason `dependency_failed` naming it.
    #[default]
    AllSucceeded,
    /// Every parent ended, however it ended.
    AllFinished,
}

impl RunWhen {
    /// The wire's name (`all_succeeded`).
    pub fn name(self) -> &'static str {
        match self {
            RunWhen::AllSucceeded => "all_succeeded",
            RunWhen::AllFinished => "all_finished",
        }
    }
}

/// The jobs a job waits for: its parents, in the order their results are passed.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dependencies {
    /// The parents, in order (a chord's callback lists its group's members in order).
    pub parents: Vec<JobId>,
    /// When it may run.
    #[serde(default)]
    pub run_when: RunWhen,
    /// Whether the worker receives the parents' results with the job (a chain's link, a
    /// chord's callback).
    #[serde(default)]
    pub pass_results: bool,
}

/// Most parents one job may wait for: a chord's callback waits for its whole group.
pub const MAX_PARENTS: usize = 10_000;

/// The workflow a job was submitted in, and its node's name there.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowNode {
    /// The workflow's id (the server chose it, a UUIDv7).
    pub workflow: uuid::Uuid,
    /// The node's name, unique in its workflow.
    pub name: String,
}

impl WorkflowNode {
    /// The tag every job of workflow `id` carries, by which the store lists them and a
    /// cancel finds them.
    pub fn tag_of(id: uuid::Uuid) -> String {
        format!("{WORKFLOW_TAG_PREFIX}{id}")
    }
}

/// Tags starting with this are the workflows' own (see [`WorkflowNode::tag_of`]).
pub const WORKFLOW_TAG_PREFIX: &str = "workflow=";

/// A submission as the core receives it: the JobServer has parsed it and chosen the id.
/// Options left out take the queue's defaults.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    /// The id the JobServer chose (UUIDv7).
    pub id: JobId,
    /// The leaf queue's path, as text (validated here).
    pub queue: String,
    /// What to run.
    pub kind: JobKind,
    /// Resources it needs; the queue's default when absent.
    #[serde(default)]
    pub request: Option<Resources>,
    /// Higher runs first; the queue's default when absent.
    #[serde(default)]
    pub priority: Option<i32>,
    /// Not to start before this instant (an ETA).
    #[serde(default)]
    pub not_before: Option<Timestamp>,
    /// Not to start before this long after the core takes the submission (a countdown):
    /// counted from the job's `submitted_at`, so that the two never disagree. With
    /// `not_before` too, the later of the two holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<Duration>,
    /// Give up if it has not started by this instant.
    #[serde(default)]
    pub expires_at: Option<Timestamp>,
    /// Longest an attempt may run; the queue's default when absent.
    #[serde(default)]
    pub timeout: Option<Duration>,
    /// How failures are retried; the queue's default when absent.
    #[serde(default)]
    pub retry: Option<RetryPolicy>,
    /// Same key in the same queue within the retention window: same job.
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// Labels a worker must carry (`gpu=a100`).
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    /// Free-form tags for filtering.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Who submitted it (the name of the caller's token); `None` when the server has no
    /// tokens, so that such jobs carry nothing extra.
    #[serde(default)]
    pub submitted_by: Option<String>,
    /// Keys a queue's `key_limits` apply to (`customer` → `acme`).
    #[serde(default)]
    pub keys: BTreeMap<String, String>,
    /// The finished job this one runs again (`lqsm job retry`), kept as a link.
    #[serde(default)]
    pub retry_of: Option<JobId>,
    /// When an attempt is warned that its time runs out (a command gets a signal, a
    /// handler a notice), before `timeout` kills it.
    #[serde(default)]
    pub soft_timeout: Option<Duration>,
    /// The one worker it may run on (set by [`ResourceManager::submit_broadcast`](crate::ResourceManager::submit_broadcast)).
    #[serde(default)]
    pub pinned: Option<WorkerId>,
    /// The jobs it waits for.
    #[serde(default)]
    pub depends: Option<Dependencies>,
    /// The workflow it belongs to.
    #[serde(default)]
    pub workflow: Option<WorkflowNode>,
    /// Size the request from what attempts of its name used (its queue's
    /// `auto_resources` bounds, or the defaults), even when it names resources: those
    /// then hold until enough attempts were observed.
    #[serde(default)]
    pub auto_request: bool,
}

impl SubmitRequest {
    /// A function job for `queue` with every option left to the queue.
    pub fn function(id: JobId, queue: &str, handler: &str, args: serde_json::Value) -> Self {
        Self::new(id, queue, JobKind::function(handler, args))
    }

    /// A submission of `kind` to `queue` with every option left to the queue.
    pub fn new(id: JobId, queue: &str, kind: JobKind) -> Self {
        Self {
            id,
            queue: queue.into(),
            kind,
            request: None,
            priority: None,
            not_before: None,
            delay: None,
            expires_at: None,
            timeout: None,
            retry: None,
            idempotency_key: None,
            selector: BTreeMap::new(),
            tags: Vec::new(),
            submitted_by: None,
            keys: BTreeMap::new(),
            retry_of: None,
            depends: None,
            workflow: None,
            auto_request: false,
            soft_timeout: None,
            pinned: None,
        }
    }
}

/// A job's settings once the queue's defaults are applied. Fixed after submission.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
#[serde(from = "JobSpecRecord", into = "JobSpecRecord")]
pub struct JobSpec {
    /// What to run.
    pub kind: JobKind,
    /// Resources each attempt holds.
    pub request: Resources,
    /// Higher runs first.
    pub priority: i32,
    /// Longest an attempt may run.
    pub timeout: Option<Duration>,
    /// How failures are retried.
    pub retry: RetryPolicy,
    /// Options most jobs leave out, boxed so that those jobs stay small.
    extras: Option<Box<JobExtras>>,
}

#[derive(Clone, PartialEq, Debug, Default)]
struct JobExtras {
    expires_at: Option<Timestamp>,
    idempotency_key: Option<String>,
    selector: BTreeMap<String, String>,
    tags: Vec<String>,
    submitted_by: Option<String>,
    keys: JobKeys,
    retry_of: Option<JobId>,
    depends: Option<Dependencies>,
    workflow: Option<WorkflowNode>,
    soft_timeout: Option<Duration>,
    pinned: Option<WorkerId>,
}

/// A job's keys (`customer` → `acme`), packed in one allocation in name order: the
/// scheduler reads them at every dispatch under a per-key limit, and one short run of
/// bytes costs far fewer cache misses than a map of strings. Each entry is the name's
/// length (u32, little-endian), the name, the value's length, the value.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct JobKeys(Option<Box<[u8]>>);

impl JobKeys {
    /// The keys of `map`.
    pub fn from_map(map: &BTreeMap<String, String>) -> Self {
        let size = map.iter().map(|(k, v)| 8 + k.len() + v.len()).sum();
        let mut bytes = Vec::with_capacity(size);
        for (name, value) in map {
            for text in [name, value] {
                let len = u32::try_from(text.len()).expect("a key is far shorter than 4 GiB");
                bytes.extend_from_slice(&len.to_le_bytes());
                bytes.extend_from_slice(text.as_bytes());
            }
        }
        Self((!bytes.is_empty()).then(|| bytes.into_boxed_slice()))
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// `(name, value)` pairs in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        let mut rest: &[u8] = self.0.as_deref().unwrap_or_default();
        let mut text = move || {
            let (len, tail) = rest.split_first_chunk::<4>()?;
            let (bytes, tail) = tail.split_at(u32::from_le_bytes(*len) as usize);
            rest = tail;
            Some(std::str::from_utf8(bytes).expect("keys are built from text"))
        };
        std::iter::from_fn(move || Some((text()?, text()?)))
    }

    /// The value of key `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.iter().find(|(k, _)| *k == name).map(|(_, v)| v)
    }

    /// The keys as a map.
    pub fn to_map(&self) -> BTreeMap<String, String> {
        self.iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }
}

impl std::fmt::Debug for JobKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

static NO_KEYS: JobKeys = JobKeys(None);

static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();

impl JobSpec {
    /// Give up if not started by then.
    pub fn expires_at(&self) -> Option<Timestamp> {
        self.extras.as_ref().and_then(|e| e.expires_at)
    }

    /// The submission's idempotency key.
    pub fn idempotency_key(&self) -> Option<&str> {
        self.extras
            .as_ref()
            .and_then(|e| e.idempotency_key.as_deref())
    }

    /// Labels a worker must carry.
    pub fn selector(&self) -> &BTreeMap<String, String> {
        self.extras.as_ref().map_or(&NO_LABELS, |e| &e.selector)
    }

    /// Free-form tags.
    pub fn tags(&self) -> &[String] {
        self.extras.as_ref().map_or(&[], |e| &e.tags)
    }

    /// Who submitted it (a token's name); `None` on a server without tokens.
    pub fn submitted_by(&self) -> Option<&str> {
        self.extras.as_ref().and_then(|e| e.submitted_by.as_deref())
    }

    /// The finished job this one runs again, if it is a re-run.
    pub fn retry_of(&self) -> Option<JobId> {
        self.extras.as_ref().and_then(|e| e.retry_of)
    }

    /// The spec as a re-run of job `of` (records keep the link apart from the rest).
    pub(crate) fn with_retry_of(mut self, of: Option<JobId>) -> Self {
        if of.is_some() {
            self.extras.get_or_insert_with(Box::default).retry_of = of;
        }
        self
    }

    /// The jobs it waits for, if any.
    pub fn depends(&self) -> Option<&Dependencies> {
        self.extras.as_ref().and_then(|e| e.depends.as_ref())
    }

    /// The workflow it belongs to, if any.
    pub fn workflow(&self) -> Option<&WorkflowNode> {
        self.extras.as_ref().and_then(|e| e.workflow.as_ref())
    }

    /// The one worker it may run on (a broadcast's attempt on that worker).
    pub fn pinned(&self) -> Option<WorkerId> {
        self.extras.as_ref().and_then(|e| e.pinned)
    }

    /// The spec pinned to `worker` (records keep it apart from the rest).
    pub(crate) fn with_pinned(mut self, worker: Option<WorkerId>) -> Self {
        if worker.is_some() {
            self.extras.get_or_insert_with(Box::default).pinned = worker;
        }
        self
    }

    /// When an attempt is warned that its time runs out, if it is.
    pub fn soft_timeout(&self) -> Option<Duration> {
        self.extras.as_ref().and_then(|e| e.soft_timeout)
    }

    /// The spec with this soft timeout (records keep it apart from the rest).
    pub(crate) fn with_soft_timeout(mut self, soft_timeout: Option<Duration>) -> Self {
        if soft_timeout.is_some() {
            self.extras.get_or_insert_with(Box::default).soft_timeout = soft_timeout;
        }
        self
    }

    /// The spec with these parents and workflow (records keep them apart from the rest).
    pub(crate) fn with_dependencies(
        mut self,
        depends: Option<Dependencies>,
        workflow: Option<WorkflowNode>,
    ) -> Self {
        if depends.is_some() || workflow.is_some() {
            let extras = self.extras.get_or_insert_with(Box::default);
            extras.depends = depends;
            extras.workflow = workflow;
        }
        self
    }

    /// Keys a queue's per-key rate limits apply to (`customer` → `acme`).
    pub fn keys(&self) -> &JobKeys {
        self.extras.as_ref().map_or(&NO_KEYS, |e| &e.keys)
    }

    /// The spec with these keys (records keep them apart from the rest of the spec).
    pub(crate) fn with_keys(mut self, keys: BTreeMap<String, String>) -> Self {
        if !keys.is_empty() {
            self.extras.get_or_insert_with(Box::default).keys = JobKeys::from_map(&keys);
        }
        self
    }

    /// The spec without keys (what a record of format 1 held).
    #[cfg(test)]
    pub(crate) fn without_keys(mut self) -> Self {
        if let Some(extras) = &mut self.extras {
            extras.keys = JobKeys::default();
        }
        self
    }

    fn from_parts(
        kind: JobKind,
        request: Resources,
        priority: i32,
        timeout: Option<Duration>,
        retry: RetryPolicy,
        extras: JobExtras,
    ) -> Self {
        let extras = (extras != JobExtras::default()).then(|| Box::new(extras));
        Self {
            kind,
            request,
            priority,
            timeout,
            retry,
            extras,
        }
    }
}

/// The flat, serialisable form of a [`JobSpec`].
#[derive(Serialize, Deserialize)]
struct JobSpecRecord {
    kind: JobKind,
    request: Resources,
    priority: i32,
    #[serde(default)]
    timeout: Option<Duration>,
    retry: RetryPolicy,
    #[serde(default)]
    expires_at: Option<Timestamp>,
    #[serde(default)]
    idempotency_key: Option<String>,
    #[serde(default)]
    selector: BTreeMap<String, String>,
    #[serde(default)]
    tags: Vec<String>,
    // Absent in records written before jobs named their submitter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    submitted_by: Option<String>,
    // Absent in records written before jobs carried keys.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    keys: BTreeMap<String, String>,
    // Absent in records written before jobs could be re-run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retry_of: Option<JobId>,
    // Absent in records written before jobs could depend on others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    depends: Option<Dependencies>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    workflow: Option<WorkflowNode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    soft_timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pinned: Option<WorkerId>,
}

impl From<JobSpecRecord> for JobSpec {
    fn from(r: JobSpecRecord) -> Self {
        let extras = JobExtras {
            expires_at: r.expires_at,
            idempotency_key: r.idempotency_key,
            selector: r.selector,
            tags: r.tags,
            submitted_by: r.submitted_by,
            keys: JobKeys::from_map(&r.keys),
            retry_of: r.retry_of,
            depends: r.depends,
            workflow: r.workflow,
            soft_timeout: r.soft_timeout,
            pinned: r.pinned,
        };
        JobSpec::from_parts(r.kind, r.request, r.priority, r.timeout, r.retry, extras)
    }
}

impl From<JobSpec> for JobSpecRecord {
    fn from(s: JobSpec) -> Self {
        let extras = s.extras.map(|b| *b).unwrap_or_default();
        Self {
            kind: s.kind,
            request: s.request,
            priority: s.priority,
            timeout: s.timeout,
            retry: s.retry,
            expires_at: extras.expires_at,
            idempotency_key: extras.idempotency_key,
            selector: extras.selector,
            tags: extras.tags,
            submitted_by: extras.submitted_by,
            keys: extras.keys.to_map(),
            retry_of: extras.retry_of,
            depends: extras.depends,
            workflow: extras.workflow,
            soft_timeout: extras.soft_timeout,
            pinned: extras.pinned,
        }
    }
}

impl SubmitRequest {
    /// The job a queue with `defaults` would make of this submission: for the tests of
    /// policies written outside the core, which rank or admit a [`JobSpec`].
    pub fn into_spec(self, defaults: &crate::queues::JobDefaults) -> JobSpec {
        self.resolve(defaults).0
    }

    /// The job's settings: this submission's options, the queue's defaults for the
    /// ones it left out.
    pub(crate) fn resolve(
        self,
        defaults: &crate::queues::JobDefaults,
    ) -> (JobSpec, Option<Timestamp>) {
        let mut tags = self.tags;
        if let Some(node) = &self.workflow {
            tags.push(WorkflowNode::tag_of(node.workflow));
        }
        let extras = JobExtras {
            expires_at: self.expires_at,
            idempotency_key: self.idempotency_key,
            selector: self.selector,
            tags,
            submitted_by: self.submitted_by,
            keys: JobKeys::from_map(&self.keys),
            retry_of: self.retry_of,
            depends: self.depends.filter(|d| !d.parents.is_empty()),
            workflow: self.workflow,
            soft_timeout: self.soft_timeout,
            pinned: self.pinned,
        };
        let request = self
            .request
            .unwrap_or_else(|| defaults.request_for(&self.kind).clone());
        let spec = JobSpec::from_parts(
            self.kind,
            request,
            self.priority.unwrap_or(defaults.priority),
            self.timeout.or(defaults.timeout),
            self.retry.unwrap_or(defaults.retry),
            extras,
        );
        (spec, self.not_before)
    }
}

/// [`Job::delivered_in`] of an attempt its worker must list in every poll whatever it
/// acknowledged: one it listed itself (reclaimed after a server restart), or one held
/// when the worker registered again under the same id (a new process knows only what
/// it still runs; no answer from before can still be on its way to it).
pub(crate) const KNOWN_TO_WORKER: u64 = u64::MAX;

/// Where a job is in its life.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting: ready, or delayed until its not-before time.
    Pending,
    /// Assigned to a worker that has not yet confirmed it runs.
    Scheduled,
    /// Confirmed running on its worker.
    Running,
    /// Finished successfully.
    Succeeded,
    /// Failed with no retries left.
    Failed,
    /// Cancelled by a client, or by deletion of its queue.
    Cancelled,
    /// Not started before its expiry.
    Expired,
}

/// The wire's snake_case name (`succeeded`), for messages people read.
impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            JobState::Pending => "pending",
            JobState::Scheduled => "scheduled",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::Expired => "expired",
        })
    }
}

impl JobState {
    /// True for the four states a job never leaves.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled | JobState::Expired
        )
    }

    /// True while an attempt holds resources.
    pub fn is_active(self) -> bool {
        matches!(self, JobState::Scheduled | JobState::Running)
    }
}

/// How one attempt ended.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    /// It succeeded, with an optional result.
    Succeeded {
        /// The handler's return value, if any.
        result: Option<Json>,
        /// The exit code of a command.
        exit_code: Option<i32>,
    },
    /// It failed.
    Failed {
        /// The exit code of a command.
        exit_code: Option<i32>,
        /// What went wrong.
        message: String,
    },
    /// It ran past its timeout and was killed.
    TimedOut,
    /// Its worker stopped answering, or lost it.
    Lost,
    /// Preemption took its resources back; it does not count as a failure.
    Preempted,
    /// The job was cancelled while this attempt held resources.
    Cancelled,
    /// The job asked to be retried (Celery's `self.retry`): not a failure, but it uses
    /// one of the job's attempts, and the next waits `countdown` (the retry policy's
    /// backoff when absent).
    RetryRequested {
        /// How long to wait before the next attempt.
        countdown: Option<Duration>,
        /// Why, as the job said.
        message: String,
    },
    /// After a restart its worker did not reclaim it within the grace period; it
    /// does not count as a failure.
    NotReclaimed,
    /// Its worker stopped polling before the attempt was handed to it, so it never
    /// started: it was taken back and placed again, and it does not count as a failure.
    Withdrawn,
}

impl AttemptOutcome {
    /// True when this outcome uses up one of the job's attempts.
    pub fn counts_as_failure(&self) -> bool {
        matches!(
            self,
            AttemptOutcome::Failed { .. }
                | AttemptOutcome::TimedOut
                | AttemptOutcome::Lost
                | AttemptOutcome::RetryRequested { .. }
        )
    }
}

/// One try at running a job.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct Attempt {
    /// 1 for the first attempt.
    pub number: u32,
    /// The attempt's fencing token.
    pub token: FencingToken,
    /// The worker it was given to.
    pub worker: WorkerId,
    /// When it was assigned.
    pub scheduled_at: Timestamp,
    /// When the worker confirmed it runs.
    pub started_at: Option<Timestamp>,
    /// When it ended.
    pub finished_at: Option<Timestamp>,
    /// How it ended.
    pub outcome: Option<AttemptOutcome>,
}

/// Why a job ended the way it did, for clients.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Termination {
    /// Succeeded; the result of the last attempt.
    Succeeded {
        /// The handler's return value, if any.
        result: Option<Json>,
        /// The command's exit code.
        exit_code: Option<i32>,
    },
    /// Failed with no attempts left; the last attempt's outcome says how.
    Failed {
        /// The last attempt's outcome.
        last: AttemptOutcome,
    },
    /// Cancelled, with the reason.
    Cancelled {
        /// Who or what cancelled it.
        reason: String,
    },
    /// Expired before it could start.
    Expired,
    /// Succeeded with a result too large to hold in memory: the shell keeps it in its
    /// store (read back with the job) and the core only knows that there is one.
    SucceededStored {
        /// The command's exit code.
        exit_code: Option<i32>,
    },
}

/// A job as the core holds it.
#[derive(Clone, Debug)]
pub struct Job {
    /// Its id.
    pub id: JobId,
    /// The leaf queue it belongs to.
    pub queue: QueueId,
    /// Submission order across the cluster (FIFO tie-break).
    pub seq: u64,
    /// Where it is in its life.
    pub state: JobState,
    /// When it was accepted.
    pub submitted_at: Timestamp,
    /// Not to be scheduled before this instant (ETA, delay or retry backoff).
    pub not_before: Option<Timestamp>,
    /// Its settings.
    pub spec: JobSpec,
    /// Every attempt so far, the current one last.
    pub attempts: Vec<Attempt>,
    /// Attempts that counted against `max_attempts`.
    pub failures: u32,
    /// Set once, when the job reaches a terminal state (boxed: most jobs the core
    /// holds are pending, and this keeps them small).
    pub termination: Option<Box<Termination>>,
    /// When it reached a terminal state.
    pub finished_at: Option<Timestamp>,
    /// Internal: when the job last became ready (for wait-time figures).
    pub(crate) ready_since: Timestamp,
    /// Internal: its rank under its queue's ordering policy.
    pub(crate) rank: i64,
    /// Internal: interned placement constraint (selector + kind).
    pub(crate) constraint: crate::ids::ConstraintId,
    /// Internal: the worker holding the current attempt.
    pub(crate) worker: Option<crate::ids::WorkerKey>,
    /// Internal: the job's position in that worker's `attempts`.
    pub(crate) worker_slot: u32,
    /// Internal: where a pending job waits.
    pub(crate) waiting: Waiting,
    /// Internal: whether the current attempt was handed to its worker.
    /// 0 until handed over; then the number of the poll answer that carried it, or
    /// [`KNOWN_TO_WORKER`] once the worker cannot be waiting for it any more.
    pub(crate) delivered_in: u64,
    /// Internal: whether the current attempt was ever handed to its worker (a
    /// redelivery resets `delivered_in`, never this): an attempt never handed over
    /// cannot have started, so it may be taken back without counting as a failure.
    pub(crate) handed: bool,
    /// Internal: its state in the last record handed out for storage
    /// ([`ResourceManager::record_job`](crate::ResourceManager::record_job)); `None` before
    /// the first.
    pub(crate) recorded: Option<JobState>,
}

impl Job {
    /// The current attempt, while one holds resources.
    pub fn current_attempt(&self) -> Option<&Attempt> {
        if self.state.is_active() {
            self.attempts.last()
        } else {
            None
        }
    }

    /// The current attempt's token, while one holds resources.
    pub fn current_token(&self) -> Option<FencingToken> {
        self.current_attempt().map(|a| a.token)
    }
}

/// Where a pending job waits (internal bookkeeping for lazy removal).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Waiting {
    /// Not waiting in a leaf's queues: delayed, active or finished.
    Not,
    /// In its leaf's ready queue.
    Ready,
    /// Set aside in its leaf's parked list.
    Parked,
    /// Set aside by a per-key or per-handler rate limit, in that limit's hold.
    RateLimited,
    /// Waiting for parents that have not ended yet.
    Blocked,
    /// Pinned to a worker that cannot take it now (busy, reclaiming, gone for a while):
    /// set aside until that worker frees resources or takes work again.
    PinnedHold,
}

/// What a worker reports about a finished attempt.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttemptReport {
    /// The job.
    pub job: JobId,
    /// The attempt's token, as it was assigned.
    pub token: FencingToken,
    /// How it went.
    pub result: ReportedResult,
    /// When the worker started it, if it says (kept when the core had not seen it
    /// running; never later than the report).
    #[serde(default)]
    pub started_at: Option<Timestamp>,
    /// What it used, when its worker measured it (a command's processes).
    #[serde(default)]
    pub usage: Option<Usage>,
    /// It was killed for using more memory than its request (a `Failed` result): the
    /// job runs again with twice the memory, without spending an attempt, while that
    /// stays within its queue's bound for right-sized requests.
    #[serde(default)]
    pub memory_exceeded: bool,
}

/// What one attempt used, as its worker measured it.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct Usage {
    /// Peak resident memory of its processes together.
    pub peak_memory: MiB,
    /// CPU time its processes used, user and system.
    pub cpu_ms: u64,
}

/// The part of an attempt's end a worker can know.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ReportedResult {
    /// It succeeded.
    Succeeded {
        /// The handler's return value.
        #[serde(default)]
        result: Option<Json>,
        /// The command's exit code.
        #[serde(default)]
        exit_code: Option<i32>,
    },
    /// It failed.
    Failed {
        /// The command's exit code.
        #[serde(default)]
        exit_code: Option<i32>,
        /// What went wrong.
        message: String,
        /// Whether the job may be retried (the default). `false` (Celery's
        /// `autoretry_for` not listing the error) fails the job with this attempt,
        /// whatever attempts its retry policy has left. It only changes that decision:
        /// the attempt's outcome is `Failed` either way.
        #[serde(default = "retryable")]
        retry: bool,
    },
    /// The worker killed it at its timeout.
    TimedOut,
    /// It succeeded with a result the shell keeps in its store, too large for memory.
    SucceededStored {
        /// The command's exit code.
        #[serde(default)]
        exit_code: Option<i32>,
    },
    /// The job asked to be run again (not a failure; it uses an attempt).
    Retry {
        /// How long to wait first; the retry policy's backoff when absent.
        #[serde(default)]
        countdown: Option<Duration>,
        /// Why.
        #[serde(default)]
        message: String,
    },
}

fn retryable() -> bool {
    true
}

/// Most keys one job may carry.
pub const MAX_JOB_KEYS: usize = 16;

/// A refused submission, naming the field to fix.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum SubmitError {
    /// The queue does not exist or the path is malformed.
    #[error(transparent)]
    Queue(#[from] crate::queues::QueueError),
    /// Jobs only go to leaves.
    #[error("queue `{0}` has child queues; submit to one of its leaves")]
    NotALeaf(String),
    /// A parent with a template takes no jobs: its children do, made on demand.
    #[error("queue `{0}` creates its children on demand; submit to `{0}.<name>`")]
    OnDemandParent(String),
    /// The queue is stopped or draining.
    #[error("queue `{path}` is {state} and accepts no new jobs")]
    NotAccepting {
        /// The queue.
        path: String,
        /// Its state.
        state: crate::queues::QueueState,
    },
    /// A field is out of range.
    #[error("{field}: {reason}")]
    InvalidField {
        /// The offending field, as the wire names it.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// The id is already taken by another job (a different submission, or another
    /// submitter's).
    #[error(
        "job id {0} is already in use by a different job; choose a new id for a new job (the same id with the same submission names the existing job)"
    )]
    DuplicateId(JobId),
    /// The queue's pending limit is reached.
    #[error("queue `{path}` has {pending} pending jobs (max_pending {max})")]
    QueueFull {
        /// The queue.
        path: String,
        /// Its pending count.
        pending: u64,
        /// Its limit.
        max: u64,
    },
    /// The queue's admission policy refused it.
    #[error("queue `{path}`: admission policy `{policy}` refused the job: {reason}")]
    Refused {
        /// The queue.
        path: String,
        /// The policy's name.
        policy: String,
        /// Its reason.
        reason: String,
    },
}

impl SubmitRequest {
    /// Checks the fields that need no state, so bad input is refused before anything changes.
    pub(crate) fn validate(&self) -> Result<(), SubmitError> {
        let invalid = |field: &str, reason: String| SubmitError::InvalidField {
            field: field.to_owned(),
            reason,
        };
        match &self.kind {
            JobKind::Command(command) => {
                if command.argv.first().is_none_or(|p| p.is_empty()) {
                    return Err(invalid("kind.argv", "must name a program".into()));
                }
            }
            JobKind::Function { handler, .. }
            | JobKind::Stored {
                handler: Some(handler),
            } => {
                if handler.is_empty() || handler.len() > 256 {
                    return Err(invalid(
                        "kind.handler",
                        "must be 1 to 256 characters".into(),
                    ));
                }
            }
            JobKind::Stored { handler: None } => {}
        }
        if let Some(retry) = &self.retry {
            retry.validate().map_err(|r| invalid("retry", r))?;
        }
        if let Some(key) = &self.idempotency_key
            && (key.is_empty() || key.len() > 256)
        {
            return Err(invalid(
                "idempotency_key",
                "must be 1 to 256 characters".into(),
            ));
        }
        if let Some(timeout) = self.timeout
            && timeout.is_zero()
        {
            return Err(invalid("timeout_ms", "must be above zero".into()));
        }
        if let Some(soft) = self.soft_timeout {
            if soft.is_zero() {
                return Err(invalid("soft_timeout_ms", "must be above zero".into()));
            }
            if let Some(hard) = self.timeout
                && soft >= hard
            {
                return Err(invalid(
                    "soft_timeout_ms",
                    "must be shorter than timeout_ms, so that it warns before the kill".into(),
                ));
            }
        }
        if let (Some(nb), Some(exp)) = (self.not_before, self.expires_at)
            && exp <= nb
        {
            return Err(invalid(
                "expires_at_ms",
                "is not after not_before_ms, so the job could never run".into(),
            ));
        }
        if self.selector.len() > 64 {
            return Err(invalid("selector", "at most 64 labels".into()));
        }
        if self.tags.len() > 64 {
            return Err(invalid("tags", "at most 64 tags".into()));
        }
        // Tags are indexed by the store as text: bounded, and free of control characters
        // (a database's text cannot hold NUL).
        for (i, tag) in self.tags.iter().enumerate() {
            if tag.is_empty() || tag.len() > 256 || tag.chars().any(char::is_control) {
                return Err(invalid(
                    &format!("tags[{i}]"),
                    "must be 1 to 256 characters, none of them a control character".into(),
                ));
            }
            if tag.starts_with(WORKFLOW_TAG_PREFIX) {
                return Err(invalid(
                    &format!("tags[{i}]"),
                    format!(
                        "tags starting with `{WORKFLOW_TAG_PREFIX}` name workflows and are set by the server"
                    ),
                ));
            }
        }
        if let Some(depends) = &self.depends {
            if depends.parents.len() > MAX_PARENTS {
                return Err(invalid("after", format!("at most {MAX_PARENTS} parents")));
            }
            if depends.parents.contains(&self.id) {
                return Err(invalid("after", "a job cannot wait for itself".into()));
            }
            let mut seen = std::collections::HashSet::with_capacity(depends.parents.len());
            if let Some(twice) = depends.parents.iter().find(|p| !seen.insert(**p)) {
                return Err(invalid("after", format!("names job {twice} twice")));
            }
            if depends.pass_results && self.kind.handler().is_none() {
                return Err(invalid(
                    "pass_results",
                    "only function jobs receive their parents' results; a command cannot".into(),
                ));
            }
        }
        if let Some(node) = &self.workflow
            && (node.name.is_empty()
                || node.name.len() > 128
                || node.name.chars().any(char::is_control))
        {
            return Err(invalid(
                "name",
                "must be 1 to 128 characters, none of them a control character".into(),
            ));
        }
        if self.keys.len() > MAX_JOB_KEYS {
            return Err(invalid("keys", format!("at most {MAX_JOB_KEYS} keys")));
        }
        for (name, value) in &self.keys {
            crate::queues::check_key_name(name).map_err(|reason| invalid("keys", reason))?;
            if value.is_empty() || value.len() > 256 {
                return Err(invalid(
                    &format!("keys.{name}"),
                    "must be 1 to 256 characters".into(),
                ));
            }
        }
        Ok(())
    }
}

/// A uniform number in [0, 1) derived from a seed and two values: the core's only
/// randomness, so the same seed replays the same decisions.
pub(crate) fn unit_random(seed: u64, a: u64, b: u64) -> f64 {
    // SplitMix64 finaliser over the mixed inputs.
    let mut z = seed ^ a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.rotate_left(32);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let policy = RetryPolicy {
            max_attempts: 10,
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(10),
            jitter: 0.0,
        };
        let waits: Vec<u64> = (1..=6).map(|n| policy.backoff(n, 0.5).as_secs()).collect();
        assert_eq!(waits, vec![1, 2, 4, 8, 10, 10]);
    }

    #[test]
    fn jitter_only_shortens_within_its_fraction() {
        let policy = RetryPolicy {
            jitter: 0.5,
            ..RetryPolicy::default()
        };
        assert_eq!(policy.backoff(1, 0.0), Duration::from_secs(1));
        assert_eq!(policy.backoff(1, 0.999_999), Duration::from_millis(501));
    }

    #[test]
    fn unit_random_is_deterministic_and_in_range() {
        let a = unit_random(7, 1, 2);
        assert_eq!(a, unit_random(7, 1, 2));
        assert_ne!(a, unit_random(8, 1, 2));
        for i in 0..1000 {
            let u = unit_random(42, i, i * 3);
            assert!((0.0..1.0).contains(&u));
        }
    }

    #[test]
    fn specs_round_trip_through_json_with_their_arguments_as_text() {
        let mut req = SubmitRequest::function(
            JobId(uuid::Uuid::nil()),
            "root.q",
            "billing.invoice",
            serde_json::json!({"invoice": 42, "lines": [1, 2]}),
        );
        req.tags = vec!["team:data".into()];
        let (spec, _) = req.resolve(&crate::queues::JobDefaults::default());
        let text = serde_json::to_string(&spec).expect("serialises");
        let back: JobSpec = serde_json::from_str(&text).expect("deserialises");
        assert_eq!(back, spec);
        assert_eq!(back.tags(), ["team:data".to_string()]);
        let JobKind::Function { args, .. } = &back.kind else {
            panic!("function job");
        };
        assert_eq!(args.as_str(), r#"{"invoice":42,"lines":[1,2]}"#);
        let command = JobKind::command(["echo", "hi"]);
        let text = serde_json::to_string(&command).expect("serialises");
        assert_eq!(
            serde_json::from_str::<JobKind>(&text).expect("back"),
            command
        );
    }

    #[test]
    fn a_spec_keeps_its_submitter_and_old_records_read_as_anonymous() {
        let mut req = SubmitRequest::function(
            JobId(uuid::Uuid::nil()),
            "root.q",
            "h",
            serde_json::json!({}),
        );
        req.submitted_by = Some("ci-bot".into());
        let (spec, _) = req.resolve(&crate::queues::JobDefaults::default());
        let text = serde_json::to_string(&spec).expect("serialises");
        let back: JobSpec = serde_json::from_str(&text).expect("deserialises");
        assert_eq!(back.submitted_by(), Some("ci-bot"));
        // A record written before jobs named their submitter.
        let mut old: serde_json::Value = serde_json::from_str(&text).expect("json");
        old.as_object_mut()
            .expect("object")
            .remove("submitted_by")
            .expect("present");
        let back: JobSpec = serde_json::from_value(old).expect("old record reads");
        assert_eq!(back.submitted_by(), None);
    }

    #[test]
    fn messages_name_states_and_amounts_as_the_wire_does() {
        let err = SubmitError::NotAccepting {
            path: "root.etl".into(),
            state: crate::queues::QueueState::Stopped,
        };
        assert_eq!(
            err.to_string(),
            "queue `root.etl` is stopped and accepts no new jobs"
        );
        assert_eq!(JobState::Succeeded.to_string(), "succeeded");
        let r = crate::Resources::cores(1, 256);
        assert_eq!(r.to_string(), "1 cpu, 256 MiB, 0 gpu");
    }

    #[test]
    fn retry_policy_validation_names_the_problem() {
        let bad = RetryPolicy {
            max_attempts: 0,
            ..RetryPolicy::default()
        };
        assert!(bad.validate().expect_err("zero").contains("max_attempts"));
    }
}
