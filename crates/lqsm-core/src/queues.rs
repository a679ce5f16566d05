//! The configuration side of the QueuesManager: queue paths, per-queue settings and
//! their checks, lifecycle states and counters. The tree node that carries them at
//! run time lives with the QueuesManager's commands (`resource_manager/queues.rs`).

use crate::rate_limits::{MAX_KEY_LIMITS, RateLimit};
use crate::resources::{MiB, Millicores, Resources};
use crate::retry::RetryPolicy;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

/// The ordering policy a queue gets unless it names another: higher priority first,
/// then first come first served.
pub const PRIORITY_FIFO: &str = "priority-fifo";
/// The placement policy a queue gets unless it names another: the fitting worker with
/// the least free resources.
pub const BEST_FIT: &str = "best-fit";
/// The admission policy a queue gets unless it names another: accept every valid
/// submission.
pub const ACCEPT_ALL: &str = "accept-all";

/// Deepest allowed queue: `root` plus this many levels.
pub const MAX_QUEUE_DEPTH: usize = 16;

/// A dot path from `root` (`root.eng.ml`). Each segment is `[a-z0-9_-]{1,64}`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct QueuePath(Arc<str>);

impl QueuePath {
    /// Validates `path`: it starts at `root`, every segment follows the naming rule,
    /// and it is at most [`MAX_QUEUE_DEPTH`] levels below root.
    pub fn parse(path: &str) -> Result<Self, QueueError> {
        let mut segments = path.split('.');
        if segments.next() != Some("root") {
            return Err(QueueError::InvalidPath {
                path: path.to_owned(),
                reason: "a queue path starts with `root` (e.g. `root.etl`)".into(),
            });
        }
        let mut depth = 0;
        for segment in segments {
            depth += 1;
            let valid = !segment.is_empty()
                && segment.len() <= 64
                && segment.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'
                });
            if !valid {
                return Err(QueueError::InvalidPath {
                    path: path.to_owned(),
                    reason: format!("segment `{segment}` must be 1 to 64 of a-z, 0-9, `_` and `-`"),
                });
            }
        }
        if depth > MAX_QUEUE_DEPTH {
            return Err(QueueError::InvalidPath {
                path: path.to_owned(),
                reason: format!("it is {depth} levels deep (max {MAX_QUEUE_DEPTH})"),
            });
        }
        Ok(Self(path.into()))
    }

    /// The root queue's path.
    pub fn root() -> Self {
        Self("root".into())
    }

    /// The path as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The parent's path, or `None` for root.
    pub fn parent(&self) -> Option<QueuePath> {
        self.0.rsplit_once('.').map(|(p, _)| Self(p.into()))
    }

    /// The last segment.
    pub fn name(&self) -> &str {
        self.0.rsplit_once('.').map_or(&self.0, |(_, n)| n)
    }

    /// True when `self` is `other` or lies under it.
    pub fn is_within(&self, other: &QueuePath) -> bool {
        self.0 == other.0
            || (self.0.starts_with(&*other.0)
                && self.0.as_bytes().get(other.0.len()) == Some(&b'.'))
    }
}

impl TryFrom<String> for QueuePath {
    type Error = QueueError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<QueuePath> for String {
    fn from(p: QueuePath) -> String {
        p.0.to_string()
    }
}

impl std::borrow::Borrow<str> for QueuePath {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for QueuePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for QueuePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether a queue accepts submissions and dispatches what it holds.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueState {
    /// Accepts submissions and dispatches them.
    Running,
    /// Accepts nothing new; still dispatches and runs what it holds.
    Stopped,
    /// Accepts nothing new and starts nothing new; running attempts finish,
    /// pending jobs wait until the queue is started again.
    Draining,
}

/// The wire's snake_case name (`stopped`), for messages people read.
impl fmt::Display for QueueState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            QueueState::Running => "running",
            QueueState::Stopped => "stopped",
            QueueState::Draining => "draining",
        })
    }
}

/// What a function job asks for by default: a hundredth of a core and 16 MiB, so a
/// 2-cpu worker runs up to 200 in-process handlers at once (a whole core each would run
/// two); measured in docs/BENCHMARKS.md.
pub const DEFAULT_FUNCTION_REQUEST: Resources = Resources::new(Millicores(10), MiB(16), 0);

/// Job options a queue applies when a submission leaves them out.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobDefaults {
    /// Resources a command job asks for when it names none.
    pub request: Resources,
    /// Resources a function job asks for when it names none. Smaller than a command's:
    /// a function runs inside the worker's own process, mostly waiting on I/O, so a
    /// worker runs many at once; a handler that burns cpu should ask for it.
    pub function_request: Resources,
    /// Priority when none is given (higher runs first).
    pub priority: i32,
    /// Attempt timeout when none is given.
    pub timeout: Option<Duration>,
    /// Retry policy when none is given.
    pub retry: RetryPolicy,
}

impl JobDefaults {
    /// The resources a job of `kind` asks for when it names none.
    pub fn request_for(&self, kind: &crate::jobs::JobKind) -> &Resources {
        if kind.handler().is_some() {
            &self.function_request
        } else {
            &self.request
        }
    }
}

impl Default for JobDefaults {
    fn default() -> Self {
        Self {
            request: Resources::cores(1, 256),
            function_request: DEFAULT_FUNCTION_REQUEST,
            priority: 0,
            timeout: None,
            retry: RetryPolicy::default(),
        }
    }
}

/// The settings of one queue.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Guaranteed share, in percent of the parent's guarantee. Siblings sum to at most 100.
    pub capacity: f64,
    /// Elastic ceiling, in percent of the parent's ceiling; at least `capacity`.
    pub max_capacity: f64,
    /// Breaks ties between siblings with equal standing (higher first); at least 1.
    pub weight: u32,
    /// Most attempts of this leaf running at once.
    pub max_running: Option<u32>,
    /// Most pending jobs this leaf holds; submissions past it are refused.
    pub max_pending: Option<u64>,
    /// Options for submissions that leave them out.
    pub defaults: JobDefaults,
    /// Name of the ordering policy for this leaf's pending jobs.
    pub ordering: String,
    /// Name of the placement policy for this leaf's jobs.
    pub placement: String,
    /// Name of the admission policy for submissions to this leaf.
    pub admission: String,
    /// Whether preemption may take attempts back from this queue (and below it).
    pub preemptable: bool,
    /// Leaf: priority preemption inside the queue (YARN's intra-queue preemption). A
    /// job its ordering puts ahead, waiting past the cluster's preemption delay, takes
    /// the place of running attempts of jobs ranked after it, on one worker. Needs the
    /// cluster's `preemption.enabled`.
    pub priority_preemption: bool,
    /// Leaf: most dispatches of its jobs over time, retries included. None: no limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// Leaf: a limit per job key, by key name (`customer`): each value of that key
    /// (`acme`) has its own bucket. A job without the key is not limited by it.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub key_limits: BTreeMap<String, RateLimit>,
    /// Leaf: shares the queue fairly among the values of this key of its jobs: `user`
    /// (the submitter: its token's identity) or any key of a job's `keys` (`tenant`). Inside a priority the next job is the oldest of the value
    /// holding least of the cluster in this queue. None: first come, first served.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fairness_key: Option<String>,
    /// Leaf: the most one value of the fairness key may hold, as a multiple of the
    /// queue's guarantee (YARN's user-limit-factor): 1 keeps a user within the
    /// guarantee, 2 lets one take twice it when the queue borrows. Each may always run
    /// one job. None: no limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_limit_factor: Option<f64>,
    /// Leaf: right-sizing. Jobs that name no resources (and jobs that ask for `auto`)
    /// request what their name's recent attempts used (95th percentile × margin, within
    /// bounds); the queue's default until enough were observed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_resources: Option<AutoResources>,
    /// Parent: its children are created on demand, by the first submit to a path under
    /// it (`root.users.alice`), with these settings. Such a parent takes no jobs itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template: Option<Box<QueueTemplate>>,
}

/// A leaf's right-sizing: the requests of its jobs that name none (and of jobs that ask
/// for `auto`) follow what their name's attempts used.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AutoResources {
    /// A request is the 95th percentile of observed use times this.
    pub margin: f64,
    /// Attempts observed before requests follow them; until then a job gets the
    /// queue's default request.
    pub min_samples: u32,
    /// The least cpu and memory a right-sized request asks for.
    pub min: Resources,
    /// The most; also the ceiling of the memory an attempt killed for exceeding its
    /// memory is retried with. None: no bound but the workers'.
    pub max: Option<Resources>,
}

impl Default for AutoResources {
    fn default() -> Self {
        Self {
            margin: 1.2,
            min_samples: 5,
            min: Resources::new(Millicores(50), MiB(32), 0),
            max: None,
        }
    }
}

impl AutoResources {
    /// Why these settings cannot be used, naming the field.
    pub fn check(&self) -> Result<(), (String, String)> {
        if !self.margin.is_finite() || !(1.0..=10.0).contains(&self.margin) {
            return Err((
                "auto_resources.margin".into(),
                format!("{} is not a factor between 1 and 10", self.margin),
            ));
        }
        if let Some(max) = &self.max
            && (max.cpu < self.min.cpu || max.memory < self.min.memory)
        {
            return Err((
                "auto_resources.max".into(),
                "is below auto_resources.min".into(),
            ));
        }
        Ok(())
    }
}

/// A parent's template for the children it creates on demand (`root.users.*`), as
/// YARN's auto-created leaf queues.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueTemplate {
    /// The settings each child starts with. Its `capacity` is the guarantee a child
    /// gets while its siblings' guarantees and it fit under 100%; past that a child gets
    /// 0, and its note says so.
    pub child: QueueConfig,
    /// A child that has held no unfinished job this long is removed; its finished jobs
    /// and lifetime counters stay readable, and a later submit creates it again with
    /// its counters.
    pub idle_removal: Duration,
    /// Most children created on demand that may exist at once; a submit past it is
    /// refused.
    pub max_queues: u32,
}

impl Default for QueueTemplate {
    fn default() -> Self {
        Self {
            child: QueueConfig::default(),
            idle_removal: Duration::from_secs(600),
            max_queues: 1000,
        }
    }
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            capacity: 0.0,
            max_capacity: 100.0,
            weight: 1,
            max_running: None,
            max_pending: None,
            defaults: JobDefaults::default(),
            ordering: PRIORITY_FIFO.into(),
            placement: BEST_FIT.into(),
            admission: ACCEPT_ALL.into(),
            preemptable: true,
            priority_preemption: false,
            rate_limit: None,
            key_limits: BTreeMap::new(),
            fairness_key: None,
            user_limit_factor: None,
            auto_resources: None,
            template: None,
        }
    }
}

/// A running or pending limit as the wire gives it: 0 means no limit. The one place
/// that meaning is decided; configs built through it never hold `Some(0)`.
pub fn limit<T: Default + PartialEq>(n: T) -> Option<T> {
    (n != T::default()).then_some(n)
}

impl QueueConfig {
    /// The running limit in force: `max_running`, where 0 means no limit.
    pub fn running_limit(&self) -> Option<u32> {
        self.max_running.and_then(limit)
    }

    /// The pending limit in force: `max_pending`, where 0 means no limit.
    pub fn pending_limit(&self) -> Option<u64> {
        self.max_pending.and_then(limit)
    }

    /// A config with the given guarantee and ceiling and defaults elsewhere.
    pub fn with_capacity(capacity: f64, max_capacity: f64) -> Self {
        Self {
            capacity,
            max_capacity,
            ..Self::default()
        }
    }

    /// Checks the fields that need no knowledge of the tree.
    pub fn validate(&self, path: &QueuePath) -> Result<(), QueueError> {
        let invalid = |field: &str, reason: String| QueueError::InvalidConfig {
            path: path.clone(),
            field: field.to_owned(),
            reason,
        };
        if !self.capacity.is_finite() || !(0.0..=100.0).contains(&self.capacity) {
            return Err(invalid(
                "capacity",
                format!("{} is not a percentage between 0 and 100", self.capacity),
            ));
        }
        if !self.max_capacity.is_finite() || !(0.0..=100.0).contains(&self.max_capacity) {
            return Err(invalid(
                "max_capacity",
                format!(
                    "{} is not a percentage between 0 and 100",
                    self.max_capacity
                ),
            ));
        }
        if self.max_capacity < self.capacity {
            return Err(invalid(
                "max_capacity",
                format!(
                    "{}% is below capacity {}%",
                    self.max_capacity, self.capacity
                ),
            ));
        }
        if self.weight == 0 {
            return Err(invalid("weight", "must be at least 1".into()));
        }
        if let Err(bad) = self.defaults.request.check("defaults.resources") {
            return Err(invalid(&bad.field, bad.reason));
        }
        if let Err(bad) = self
            .defaults
            .function_request
            .check("defaults.function_resources")
        {
            return Err(invalid(&bad.field, bad.reason));
        }
        self.defaults
            .retry
            .validate()
            .map_err(|reason| invalid("defaults.retry", reason))?;
        if let Some(limit) = &self.rate_limit {
            limit
                .check("rate_limit")
                .map_err(|(field, reason)| invalid(&field, reason))?;
        }
        if self.key_limits.len() > MAX_KEY_LIMITS {
            return Err(invalid(
                "key_limits",
                format!("{} limits (max {MAX_KEY_LIMITS})", self.key_limits.len()),
            ));
        }
        for (name, limit) in &self.key_limits {
            check_key_name(name).map_err(|reason| invalid("key_limits", reason))?;
            limit
                .check(&format!("key_limits.{name}"))
                .map_err(|(field, reason)| invalid(&field, reason))?;
        }
        if let Some(name) = &self.fairness_key {
            check_key_name(name).map_err(|reason| invalid("fairness_key", reason))?;
        }
        if let Some(factor) = self.user_limit_factor {
            if !factor.is_finite() || factor <= 0.0 {
                return Err(invalid(
                    "user_limit_factor",
                    format!("{factor} is not a multiple above 0 of the queue's guarantee"),
                ));
            }
            if self.fairness_key.is_none() {
                return Err(invalid(
                    "user_limit_factor",
                    "limits each value of the fairness key: set fairness_key (e.g. `user`)".into(),
                ));
            }
            if self.capacity <= 0.0 {
                return Err(invalid(
                    "user_limit_factor",
                    "is a multiple of the queue's guarantee, and its capacity is 0".into(),
                ));
            }
        }
        if let Some(auto) = &self.auto_resources {
            auto.check()
                .map_err(|(field, reason)| invalid(&field, reason))?;
            if let Err(bad) = auto.min.check("auto_resources.min") {
                return Err(invalid(&bad.field, bad.reason));
            }
            if let Some(max) = &auto.max
                && let Err(bad) = max.check("auto_resources.max")
            {
                return Err(invalid(&bad.field, bad.reason));
            }
        }
        if let Some(template) = &self.template {
            if template.max_queues == 0 {
                return Err(invalid(
                    "template.max_queues",
                    "must be at least 1 (to stop creating queues, remove the template)".into(),
                ));
            }
            if template.child.template.is_some() {
                return Err(invalid(
                    "template.template",
                    "a queue created on demand cannot create queues itself".into(),
                ));
            }
            if let Some(field) = self.leaf_only_setting() {
                return Err(invalid(
                    field,
                    "belongs to a leaf, and a queue with a template is a parent".into(),
                ));
            }
            template.child.validate(path).map_err(|error| match error {
                QueueError::InvalidConfig { field, reason, .. } => {
                    invalid(&format!("template.{field}"), reason)
                }
                other => other,
            })?;
        }
        Ok(())
    }

    /// The first setting only a leaf may have: rate limits, priority preemption and fair
    /// sharing act on the jobs of a leaf, and a queue with children holds none.
    pub fn leaf_only_setting(&self) -> Option<&'static str> {
        if self.rate_limit.is_some() {
            Some("rate_limit")
        } else if !self.key_limits.is_empty() {
            Some("key_limits")
        } else if self.priority_preemption {
            Some("priority_preemption")
        } else if self.fairness_key.is_some() {
            Some("fairness_key")
        } else if self.user_limit_factor.is_some() {
            Some("user_limit_factor")
        } else if self.auto_resources.is_some() {
            Some("auto_resources")
        } else {
            None
        }
    }

    /// The fairness value of a job in this queue: its value of the fairness key, or ""
    /// for a job without it; None when the queue has no fairness key.
    pub fn fairness_value<'a>(&self, spec: &'a crate::jobs::JobSpec) -> Option<&'a str> {
        let name = self.fairness_key.as_deref()?;
        let value = if name == FAIRNESS_BY_USER {
            // The token's identity, never a key the job names itself: a user must not
            // escape its limit by calling itself someone else.
            spec.submitted_by()
        } else {
            spec.keys().get(name)
        };
        Some(value.unwrap_or(""))
    }

    /// Whether any rate limit of this queue's own applies to its jobs.
    pub fn has_rate_limits(&self) -> bool {
        self.rate_limit.is_some() || !self.key_limits.is_empty()
    }
}

/// The fairness key that means the job's submitter (the identity of its token).
pub const FAIRNESS_BY_USER: &str = "user";

/// Longest name of a job key (`customer`).
pub const MAX_KEY_NAME: usize = 64;

/// Checks the name of a job key: 1 to [`MAX_KEY_NAME`] of `a-z`, `0-9`, `_`, `-` and `.`,
/// the same rule for a job's `keys` and a queue's `key_limits`.
pub fn check_key_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= MAX_KEY_NAME
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-' || b == b'.'
        });
    if valid {
        Ok(())
    } else {
        Err(format!(
            "key name `{name}` must be 1 to {MAX_KEY_NAME} of a-z, 0-9, `_`, `-` and `.`"
        ))
    }
}

/// A queue created on demand and removed after its idle time: what stays readable of it
/// for the retention.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct RetiredQueue {
    /// Its last settings.
    pub config: QueueConfig,
    /// Its lifetime counters (nothing pending).
    pub stats: QueueStats,
    /// When it was removed.
    pub removed_at: crate::ids::Timestamp,
    /// Its note, if it had one.
    pub note: Option<String>,
}

/// A partial change to a queue's settings; absent fields stay as they are.
#[derive(Clone, PartialEq, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueUpdate {
    /// New guarantee, percent of the parent's.
    pub capacity: Option<f64>,
    /// New ceiling, percent of the parent's.
    pub max_capacity: Option<f64>,
    /// New tie-breaking weight.
    pub weight: Option<u32>,
    /// New running limit; `Some(None)` removes it.
    pub max_running: Option<Option<u32>>,
    /// New pending limit; `Some(None)` removes it.
    pub max_pending: Option<Option<u64>>,
    /// New job defaults.
    pub defaults: Option<JobDefaults>,
    /// New ordering policy name.
    pub ordering: Option<String>,
    /// New placement policy name.
    pub placement: Option<String>,
    /// New admission policy name.
    pub admission: Option<String>,
    /// New preemptable flag.
    pub preemptable: Option<bool>,
    /// New priority preemption inside the queue.
    pub priority_preemption: Option<bool>,
    /// New rate limit; `Some(None)` removes it.
    pub rate_limit: Option<Option<RateLimit>>,
    /// New per-key limits, replacing the old ones (an empty map removes them all).
    pub key_limits: Option<BTreeMap<String, RateLimit>>,
    /// New fairness key; `Some(None)` removes it.
    pub fairness_key: Option<Option<String>>,
    /// New user limit; `Some(None)` removes it.
    pub user_limit_factor: Option<Option<f64>>,
    /// New right-sizing; `Some(None)` removes it.
    pub auto_resources: Option<Option<AutoResources>>,
    /// New template for children created on demand; `Some(None)` removes it (the
    /// children it made stay, as ordinary queues).
    pub template: Option<Option<Box<QueueTemplate>>>,
}

impl QueueUpdate {
    /// `config` with this update applied.
    pub fn apply_to(&self, config: &QueueConfig) -> QueueConfig {
        let mut c = config.clone();
        if let Some(v) = self.capacity {
            c.capacity = v;
        }
        if let Some(v) = self.max_capacity {
            c.max_capacity = v;
        }
        if let Some(v) = self.weight {
            c.weight = v;
        }
        if let Some(v) = self.max_running {
            c.max_running = v;
        }
        if let Some(v) = self.max_pending {
            c.max_pending = v;
        }
        if let Some(v) = &self.defaults {
            c.defaults = v.clone();
        }
        if let Some(v) = &self.ordering {
            c.ordering = v.clone();
        }
        if let Some(v) = &self.placement {
            c.placement = v.clone();
        }
        if let Some(v) = &self.admission {
            c.admission = v.clone();
        }
        if let Some(v) = self.preemptable {
            c.preemptable = v;
        }
        if let Some(v) = self.priority_preemption {
            c.priority_preemption = v;
        }
        if let Some(v) = self.rate_limit {
            c.rate_limit = v;
        }
        if let Some(v) = &self.key_limits {
            c.key_limits = v.clone();
        }
        if let Some(v) = &self.fairness_key {
            c.fairness_key = v.clone();
        }
        if let Some(v) = self.user_limit_factor {
            c.user_limit_factor = v;
        }
        if let Some(v) = &self.auto_resources {
            c.auto_resources = v.clone();
        }
        if let Some(v) = &self.template {
            c.template = v.clone();
        }
        c
    }
}

/// Running totals of a duration: enough for a mean and a maximum.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct DurationStats {
    /// How many durations were recorded.
    pub count: u64,
    /// Their sum, in milliseconds.
    pub total_ms: u64,
    /// The longest, in milliseconds.
    pub max_ms: u64,
}

impl DurationStats {
    /// Records one duration.
    pub fn record(&mut self, d: Duration) {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        self.count += 1;
        self.total_ms = self.total_ms.saturating_add(ms);
        self.max_ms = self.max_ms.max(ms);
    }

    /// The mean, if anything was recorded.
    pub fn mean(&self) -> Option<Duration> {
        (self.count > 0).then(|| Duration::from_millis(self.total_ms / self.count))
    }
}

/// A leaf's counters. Parents' figures are sums over their leaves.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct QueueStats {
    /// Jobs waiting (ready or delayed).
    pub pending: u64,
    /// Jobs accepted since the queue was created.
    pub submitted: u64,
    /// Jobs that succeeded.
    pub succeeded: u64,
    /// Jobs that failed for good.
    pub failed: u64,
    /// Jobs cancelled.
    pub cancelled: u64,
    /// Jobs that expired before they could start.
    pub expired: u64,
    /// Time from becoming ready to being scheduled, per attempt.
    pub wait: DurationStats,
    /// Time from being scheduled to finishing, per attempt.
    pub run: DurationStats,
}

/// A refused queue operation, saying what to fix.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum QueueError {
    /// The path breaks the naming rules.
    #[error("queue path `{path}` is invalid: {reason}")]
    InvalidPath {
        /// The path given.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No queue has that path.
    #[error("queue `{path}` does not exist (known: {known})")]
    NotFound {
        /// The path asked for.
        path: String,
        /// A few existing paths, to spot a typo.
        known: String,
    },
    /// A queue with that path exists already.
    #[error("queue `{0}` already exists")]
    AlreadyExists(QueuePath),
    /// A field of the config is out of range.
    #[error("queue `{path}`: {field}: {reason}")]
    InvalidConfig {
        /// The queue concerned.
        path: QueuePath,
        /// The offending field.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// The guarantees of a parent's children would exceed 100%.
    #[error("capacity of children of `{parent}` would sum to {sum}% (max 100%)")]
    CapacityOverflow {
        /// The parent whose children are concerned.
        parent: QueuePath,
        /// The sum they would reach.
        sum: f64,
    },
    /// A policy name is not registered.
    #[error("queue `{path}`: unknown {kind} policy `{name}` (known: {known})")]
    UnknownPolicy {
        /// The queue concerned.
        path: QueuePath,
        /// Which kind of policy (ordering, placement, admission).
        kind: &'static str,
        /// The name given.
        name: String,
        /// The registered names.
        known: String,
    },
    /// Creating a child under a leaf that holds jobs would strand them.
    #[error("queue `{0}` holds jobs, so it cannot become a parent; move or finish its jobs first")]
    ParentHoldsJobs(QueuePath),
    /// Deleting a queue with jobs needs `force`.
    #[error("queue `{path}` holds {jobs} unfinished job(s); delete with force to cancel them")]
    HoldsJobs {
        /// The queue asked to delete.
        path: QueuePath,
        /// How many unfinished jobs it (and its subtree) holds.
        jobs: u64,
    },
    /// Root cannot be deleted or given a capacity.
    #[error("the root queue cannot be {0}")]
    Root(&'static str),
    /// A parent's template has made as many queues as it may.
    #[error(
        "queue `{parent}` already has {max} queues created on demand (its template's \
         max_queues): wait until idle ones are removed, or raise the limit"
    )]
    OnDemandLimit {
        /// The parent with the template.
        parent: QueuePath,
        /// Its template's `max_queues`.
        max: u32,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_validated_with_reasons() {
        assert!(QueuePath::parse("root").is_ok());
        assert!(QueuePath::parse("root.eng.ml-2_x").is_ok());
        for bad in [
            "", "eng", "root.", "root..a", "root.Eng", "root.a b", "rooty.a",
        ] {
            assert!(QueuePath::parse(bad).is_err(), "{bad} accepted");
        }
        let long = format!("root.{}", "a".repeat(65));
        assert!(QueuePath::parse(&long).is_err());
        let deep16 = format!("root{}", ".a".repeat(16));
        assert!(QueuePath::parse(&deep16).is_ok());
        let deep17 = format!("root{}", ".a".repeat(17));
        let err = QueuePath::parse(&deep17).expect_err("too deep");
        assert!(err.to_string().contains("17 levels deep"), "{err}");
    }

    #[test]
    fn path_relations() {
        let p = QueuePath::parse("root.eng.ml").expect("valid");
        assert_eq!(p.name(), "ml");
        assert_eq!(p.parent().map(|p| p.to_string()), Some("root.eng".into()));
        assert!(p.is_within(&QueuePath::parse("root.eng").expect("valid")));
        assert!(!p.is_within(&QueuePath::parse("root.en").expect("valid")));
        assert!(QueuePath::root().parent().is_none());
    }

    #[test]
    fn config_validation_names_the_field() {
        let path = QueuePath::parse("root.a").expect("valid");
        let err = QueueConfig::with_capacity(50.0, 40.0)
            .validate(&path)
            .expect_err("max below capacity");
        assert!(err.to_string().contains("max_capacity"), "{err}");
        let err = QueueConfig::with_capacity(-1.0, 40.0)
            .validate(&path)
            .expect_err("negative");
        assert!(err.to_string().contains("capacity"), "{err}");
        assert!(
            QueueConfig::with_capacity(f64::NAN, 100.0)
                .validate(&path)
                .is_err()
        );
    }
}
