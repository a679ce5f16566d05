//! Between the wire (lqsm-api) and the domain (lqsm-core): wire values are turned into
//! core ones (refusing only what cannot be represented, such as a cpu amount that is
//! not a number) and views are built from core state. The rules a value must obey
//! (bounds, non-empty names, positive timeouts, what a limit of 0 means) are the
//! core's, which names the wire field it refuses.

use crate::error::ApiError;
use lqsm_api as api;
use lqsm_core as core;
use lqsm_core::{JobId, MiB, Millicores, ResourceName, Timestamp};
use std::collections::BTreeMap;
use std::time::Duration;

/// Longest delay, timeout or backoff accepted (a year), so sums cannot overflow.
const MAX_MS: u64 = 365 * 24 * 3600 * 1000;

fn invalid(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::invalid_field(field, message)
}

fn millis(field: &str, ms: u64) -> Result<Duration, ApiError> {
    if ms > MAX_MS {
        return Err(invalid(field, format!("{ms} ms is more than a year")));
    }
    Ok(Duration::from_millis(ms))
}

/// Wire resources to a core vector; `base` fills absent fields. The core checks the
/// bounds (`Resources::check`).
pub fn resources(
    field: &str,
    r: &api::Resources,
    base: &core::Resources,
) -> Result<core::Resources, ApiError> {
    let mut out = base.clone();
    if let Some(cpu) = r.cpu {
        if !cpu.is_finite() || cpu < 0.0 {
            return Err(invalid(
                &format!("{field}.cpu"),
                format!("{cpu} is not a number of cores"),
            ));
        }
        // Saturates: an absurd amount stays absurd for the core to refuse.
        out.cpu = Millicores((cpu * 1000.0).round() as u64);
    }
    if let Some(mem) = r.memory_mib {
        out.memory = MiB(mem);
    }
    if let Some(gpu) = r.gpu {
        out.gpu = gpu;
    }
    for (name, amount) in &r.custom {
        let name = ResourceName::new(name)
            .map_err(|e| invalid(&format!("{field}.custom"), e.to_string()))?;
        out.set_custom(name, *amount);
    }
    Ok(out)
}

/// Core resources as wire figures.
pub fn figures(r: &core::Resources) -> api::ResourceFigures {
    api::ResourceFigures {
        cpu: r.cpu.0 as f64 / 1000.0,
        memory_mib: r.memory.0,
        gpu: r.gpu,
        custom: r
            .customs()
            .iter()
            .map(|(n, a)| (n.as_str().to_owned(), *a))
            .collect(),
    }
}

fn retry(
    field: &str,
    r: &api::RetrySpec,
    base: core::RetryPolicy,
) -> Result<core::RetryPolicy, ApiError> {
    let mut out = base;
    if let Some(n) = r.max_attempts {
        out.max_attempts = n;
    }
    if let Some(ms) = r.backoff_base_ms {
        out.backoff_base = millis(&format!("{field}.backoff_base_ms"), ms)?;
    }
    if let Some(ms) = r.backoff_cap_ms {
        out.backoff_cap = millis(&format!("{field}.backoff_cap_ms"), ms)?;
    }
    if let Some(j) = r.jitter {
        out.jitter = j;
    }
    // The core checks the ranges (`RetryPolicy::validate`) where the policy is used.
    Ok(out)
}

/// The `env` entry of a stored command that names its secret variables (a JSON list).
/// Kept in the command's `env` so that the record's format does not change; no variable
/// can have this name (a name never holds `=`, and submissions are checked for it), and
/// it is taken out before a command is shown or dispatched.
pub const SECRET_ENV_ENTRY: &str = "=lqsm.secret_env";

/// Wire job kind to core kind, the variables `secret` names marked secret (the core
/// checks the program and handler names; [`submission`] checks the names).
pub fn kind(k: &api::JobKind, secret: &[String]) -> core::JobKind {
    match k {
        api::JobKind::Command { argv, env, cwd } => {
            let mut env = env.clone();
            if !secret.is_empty() {
                let names: std::collections::BTreeSet<&String> = secret.iter().collect();
                env.insert(
                    SECRET_ENV_ENTRY.to_owned(),
                    serde_json::to_string(&names).unwrap_or_default(),
                );
            }
            core::JobKind::Command(Box::new(core::jobs::Command {
                argv: argv.clone(),
                env,
                cwd: cwd.clone(),
            }))
        }
        // The arguments' text goes on as it came: checked JSON, never parsed here.
        api::JobKind::Function { handler, args } => core::JobKind::Function {
            handler: handler.as_str().into(),
            args: core::jobs::Json::from_raw(args.clone().into_raw()),
        },
    }
}

/// The names of a command's secret variables, in order (none for other kinds).
pub fn secret_names(k: &core::JobKind) -> Vec<String> {
    match k {
        core::JobKind::Command(c) => c
            .env
            .get(SECRET_ENV_ENTRY)
            .and_then(|names| serde_json::from_str(names).ok())
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

/// A command's variables without the entry naming the secret ones.
fn plain_env(c: &core::jobs::Command) -> BTreeMap<String, String> {
    let mut env = c.env.clone();
    env.remove(SECRET_ENV_ENTRY);
    env
}

/// Core job kind to wire kind as views show it: secret variables' values as
/// [`api::REDACTED`].
pub fn kind_view(k: &core::JobKind) -> api::JobKind {
    let secret = secret_names(k);
    match dispatched_kind(k) {
        api::JobKind::Command { argv, mut env, cwd } => {
            for name in &secret {
                if let Some(value) = env.get_mut(name) {
                    api::REDACTED.clone_into(value);
                }
            }
            api::JobKind::Command { argv, env, cwd }
        }
        other => other,
    }
}

/// Core job kind to wire kind as a worker receives it: every variable with its value.
pub fn dispatched_kind(k: &core::JobKind) -> api::JobKind {
    match k {
        core::JobKind::Command(c) => api::JobKind::Command {
            argv: c.argv.clone(),
            env: plain_env(c),
            cwd: c.cwd.clone(),
        },
        core::JobKind::Function { handler, args } => api::JobKind::Function {
            handler: handler.to_string(),
            args: api::RawJson::from_raw(args.to_raw()),
        },
        // Only shown when the store could not be read: say so rather than invent.
        core::JobKind::Stored { handler } => api::JobKind::Function {
            handler: handler.as_deref().unwrap_or("(command)").to_owned(),
            args: api::RawJson::from_value(
                &serde_json::json!({"unavailable": "the job's payload is in the store"}),
            ),
        },
    }
}

/// `output` (a job's captured output) with the values of the job's secret variables
/// replaced by [`api::REDACTED`], longest first (so that a value holding another is
/// masked whole).
pub fn mask_secrets(k: &core::JobKind, output: Vec<u8>) -> Vec<u8> {
    let values = secret_values(k);
    if values.is_empty() {
        return output;
    }
    // Workers send output as text: a byte that is not UTF-8 was lost before.
    let text = String::from_utf8_lossy(&output).into_owned();
    values
        .into_iter()
        .fold(text, |text, value| text.replace(value, api::REDACTED))
        .into_bytes()
}

/// The values of the job's secret variables, longest first (none for a function).
pub fn secret_values(k: &core::JobKind) -> Vec<&str> {
    let core::JobKind::Command(c) = k else {
        return Vec::new();
    };
    let mut values: Vec<&str> = secret_names(k)
        .iter()
        .filter_map(|name| c.env.get(name).map(String::as_str))
        .filter(|value| !value.is_empty())
        .collect();
    values.sort_by_key(|v| std::cmp::Reverse(v.len()));
    values
}

/// The part of a job's output a follower asks for (`GET /v1/jobs/{id}/logs?offset=N`),
/// with its secrets masked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogWindow {
    /// Where `text` starts in the output (before masking: offsets count the bytes the
    /// attempt wrote).
    pub offset: u64,
    /// Where the next read starts.
    pub next_offset: u64,
    /// The output from `offset` to `next_offset`, masked.
    pub text: String,
    /// Whether the output between the offset asked and `offset` is no longer kept.
    pub missed: bool,
}

/// The output from byte `from` on of `kept`, which holds the output from byte `start`
/// on, with every secret value (`secrets`, longest first) masked wherever it overlaps
/// the window, also when it began before it (so a value cut between two reads shows in
/// neither). While more may come (`growing`), an end that could be the start of a
/// secret value is held back for the next read.
pub fn log_window(kept: &str, start: u64, from: u64, secrets: &[&str], growing: bool) -> LogWindow {
    let bytes = kept.as_bytes();
    let missed = from < start;
    let mut begin = usize::try_from(from.saturating_sub(start))
        .unwrap_or(usize::MAX)
        .min(bytes.len());
    while !kept.is_char_boundary(begin) {
        begin += 1;
    }
    let mut end = bytes.len();
    if growing {
        let held = secrets
            .iter()
            .filter_map(|value| {
                (1..value.len())
                    .rev()
                    .find(|&k| bytes.ends_with(&value.as_bytes()[..k]))
            })
            .max()
            .unwrap_or(0);
        end -= held;
        while !kept.is_char_boundary(end) {
            end -= 1;
        }
    }
    let end = end.max(begin);
    // Every occurrence, longest values first, none overlapping another.
    let mut found: Vec<(usize, usize)> = Vec::new();
    for value in secrets {
        for (at, _) in kept.match_indices(value) {
            let range = (at, at + value.len());
            if !found.iter().any(|f| f.0 < range.1 && range.0 < f.1) {
                found.push(range);
            }
        }
    }
    found.sort_unstable();
    let mut text = String::with_capacity(end - begin);
    let mut at = begin;
    for (from, to) in found {
        if to <= at || from >= end {
            continue;
        }
        text.push_str(&kept[at..from.max(at)]);
        text.push_str(api::REDACTED);
        at = to.min(end);
    }
    text.push_str(&kept[at..end]);
    LogWindow {
        offset: start + begin as u64,
        next_offset: start + end as u64,
        text,
        missed,
    }
}

/// Checks a command's variable names and the names `secret` marks secret.
fn check_env(field: &str, job: &api::SubmitJob) -> Result<(), ApiError> {
    let env = match &job.kind {
        api::JobKind::Command { env, .. } => env,
        api::JobKind::Function { .. } => {
            if job.secret_env.is_empty() {
                return Ok(());
            }
            return Err(invalid(
                &format!("{field}.secret_env"),
                "only a command job has environment variables to keep secret",
            ));
        }
    };
    for name in env.keys() {
        if name.is_empty() || name.contains('=') || name.contains('\0') {
            return Err(invalid(
                &format!("{field}.kind.env"),
                format!("`{name}` is not a variable name (empty, or holds `=` or NUL)"),
            ));
        }
    }
    for (i, name) in job.secret_env.iter().enumerate() {
        if !env.contains_key(name) {
            return Err(invalid(
                &format!("{field}.secret_env[{i}]"),
                format!("`{name}` is not a variable of kind.env: give its value there"),
            ));
        }
    }
    Ok(())
}

/// A wire submission to a core one with a fresh id. Queue defaults for absent options
/// are applied by the core; only what the wire alone can check is checked here.
pub fn submission(
    field: &str,
    id: JobId,
    job: &api::SubmitJob,
) -> Result<core::SubmitRequest, ApiError> {
    check_env(field, job)?;
    let mut req = core::SubmitRequest::new(id, &job.queue, kind(&job.kind, &job.secret_env));
    if let Some(r) = &job.resources {
        let base = core::Resources::cores(1, 256);
        let resolved = resources(&format!("{field}.resources"), r, &base)?;
        req.request = Some(resolved);
    }
    req.auto_request = job.auto_resources;
    req.priority = job.priority;
    req.not_before = match (job.delay_ms, job.not_before_ms) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                &format!("{field}.delay_ms"),
                "give delay_ms or not_before_ms, not both",
            ));
        }
        (Some(ms), None) => {
            // Counted by the core from the job's submission time, not from now.
            req.delay = Some(millis(&format!("{field}.delay_ms"), ms)?);
            None
        }
        (None, Some(at)) => Some(Timestamp(at)),
        (None, None) => None,
    };
    req.expires_at = job.expires_at_ms.map(Timestamp);
    if let Some(ms) = job.timeout_ms {
        req.timeout = Some(millis(&format!("{field}.timeout_ms"), ms)?);
    }
    if let Some(ms) = job.soft_timeout_ms {
        req.soft_timeout = Some(millis(&format!("{field}.soft_timeout_ms"), ms)?);
    }
    if let Some(r) = &job.retry {
        req.retry = Some(retry(
            &format!("{field}.retry"),
            r,
            core::RetryPolicy::default(),
        )?);
    }
    req.idempotency_key = job.idempotency_key.clone();
    req.selector = job.selector.clone();
    req.tags = job.tags.clone();
    req.keys = job.keys.clone();
    Ok(req)
}

/// The jobs a job waits for: `after`'s entries resolved by `parent` (given each entry's
/// field and text), with the condition and whether results are passed.
pub fn dependencies(
    field: &str,
    job: &api::SubmitJob,
    mut parent: impl FnMut(&str, &str) -> Result<JobId, ApiError>,
) -> Result<Option<core::Dependencies>, ApiError> {
    let at = |name: &str| {
        if field.is_empty() {
            name.to_owned()
        } else {
            format!("{field}.{name}")
        }
    };
    if job.after.is_empty() {
        for (name, set) in [
            ("run_when", job.run_when.is_some()),
            ("pass_results", job.pass_results),
        ] {
            if set {
                return Err(invalid(
                    &at(name),
                    "goes with `after` (the jobs to wait for)",
                ));
            }
        }
        return Ok(None);
    }
    if job.after.len() > core::jobs::MAX_PARENTS {
        return Err(invalid(
            &at("after"),
            format!(
                "{} parents (at most {})",
                job.after.len(),
                core::jobs::MAX_PARENTS
            ),
        ));
    }
    let parents = job
        .after
        .iter()
        .enumerate()
        .map(|(i, text)| parent(&at(&format!("after[{i}]")), text))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(core::Dependencies {
        parents,
        run_when: match job.run_when {
            Some(api::RunWhen::AllFinished) => core::RunWhen::AllFinished,
            Some(api::RunWhen::AllSucceeded) | None => core::RunWhen::AllSucceeded,
        },
        pass_results: job.pass_results,
    }))
}

/// An `after` entry that must be a job id.
pub fn parent_id(field: &str, text: &str) -> Result<JobId, ApiError> {
    uuid::Uuid::parse_str(text).map(JobId).map_err(|_| {
        invalid(
            field,
            format!("`{text}` is not a job id (names of nodes are only known inside a workflow)"),
        )
    })
}

/// A wire rate limit to the core's; `None` for a rate of 0 (no limit).
fn rate_limit(field: &str, spec: &api::RateLimitSpec) -> Result<Option<core::RateLimit>, ApiError> {
    core::RateLimit::from_setting(&spec.rate, spec.burst)
        .map_err(|reason| invalid(&format!("{field}.rate"), reason))
}

/// A core rate limit as the wire writes it.
fn rate_limit_spec(limit: &core::RateLimit) -> api::RateLimitSpec {
    api::RateLimitSpec {
        rate: limit.rate.to_string(),
        burst: Some(limit.burst),
    }
}

/// Queue settings on the wire to a core config, starting from `base`.
pub fn queue_config(
    s: &api::QueueSettings,
    base: &core::QueueConfig,
) -> Result<core::QueueConfig, ApiError> {
    let mut c = base.clone();
    if let Some(v) = s.capacity {
        c.capacity = v;
    }
    if let Some(v) = s.max_capacity {
        c.max_capacity = v;
    }
    if let Some(v) = s.weight {
        c.weight = v;
    }
    if let Some(v) = s.max_running {
        c.max_running = core::queues::limit(v);
    }
    if let Some(v) = s.max_pending {
        c.max_pending = core::queues::limit(v);
    }
    if let Some(d) = &s.defaults {
        if let Some(r) = &d.resources {
            c.defaults.request = resources("defaults.resources", r, &c.defaults.request)?;
        }
        if let Some(r) = &d.function_resources {
            c.defaults.function_request = resources(
                "defaults.function_resources",
                r,
                &c.defaults.function_request,
            )?;
        }
        if let Some(p) = d.priority {
            c.defaults.priority = p;
        }
        if let Some(ms) = d.timeout_ms {
            c.defaults.timeout = (ms > 0).then(|| Duration::from_millis(ms.min(MAX_MS)));
        }
        if let Some(r) = &d.retry {
            c.defaults.retry = retry("defaults.retry", r, c.defaults.retry)?;
        }
    }
    if let Some(v) = &s.ordering {
        c.ordering = v.clone();
    }
    if let Some(v) = &s.placement {
        c.placement = v.clone();
    }
    if let Some(v) = &s.admission {
        c.admission = v.clone();
    }
    if let Some(v) = s.preemptable {
        c.preemptable = v;
    }
    if let Some(v) = s.priority_preemption {
        c.priority_preemption = v;
    }
    if let Some(v) = &s.fairness_key {
        c.fairness_key = (!v.is_empty()).then(|| v.clone());
    }
    if let Some(v) = s.user_limit_factor {
        c.user_limit_factor = (v != 0.0).then_some(v);
    }
    if let Some(spec) = &s.rate_limit {
        c.rate_limit = rate_limit("rate_limit", spec)?;
    }
    if let Some(limits) = &s.key_limits {
        c.key_limits.clear();
        for (name, spec) in limits {
            if let Some(limit) = rate_limit(&format!("key_limits.{name}"), spec)? {
                c.key_limits.insert(name.clone(), limit);
            }
        }
    }
    if let Some(spec) = &s.template {
        c.template = queue_template(spec, c.template.as_deref())?;
    }
    if let Some(spec) = &s.auto_resources {
        c.auto_resources = auto_resources(spec, c.auto_resources.as_ref())?;
    }
    Ok(c)
}

/// Wire right-sizing settings to the core's, starting from those in force; `None` when
/// they turn it off (`margin: 0`).
fn auto_resources(
    spec: &api::AutoResourcesSpec,
    base: Option<&core::AutoResources>,
) -> Result<Option<core::AutoResources>, ApiError> {
    if spec.margin == Some(0.0) {
        return Ok(None);
    }
    let mut auto = base.cloned().unwrap_or_default();
    if let Some(margin) = spec.margin {
        auto.margin = margin;
    }
    if let Some(n) = spec.min_samples {
        auto.min_samples = n;
    }
    if let Some(min) = &spec.min {
        auto.min = resources("auto_resources.min", min, &auto.min)?;
    }
    if let Some(max) = &spec.max {
        let base = auto.max.clone().unwrap_or(auto.min.clone());
        auto.max = Some(resources("auto_resources.max", max, &base)?);
    }
    Ok(Some(auto))
}

/// A wire template to the core's, starting from the template in force (an update
/// changes only what it names); `None` when it asks to remove the template.
fn queue_template(
    spec: &api::QueueTemplateSpec,
    base: Option<&core::QueueTemplate>,
) -> Result<Option<Box<core::QueueTemplate>>, ApiError> {
    if spec.max_queues == Some(0) {
        return Ok(None);
    }
    if spec.settings.template.is_some() {
        return Err(invalid(
            "template.template",
            "a queue made on demand cannot make queues itself",
        ));
    }
    let base = base.cloned().unwrap_or_default();
    let child = queue_config(&spec.settings, &base.child).map_err(|mut e| {
        e.detail.field = e.detail.field.map(|field| format!("template.{field}"));
        e
    })?;
    Ok(Some(Box::new(core::QueueTemplate {
        child,
        idle_removal: spec.idle_ms.map_or(base.idle_removal, |ms| {
            Duration::from_millis(ms.min(MAX_MS))
        }),
        max_queues: spec.max_queues.unwrap_or(base.max_queues),
    })))
}

/// A queue's default request as wire resources (every field present).
fn default_resources(r: &core::Resources) -> api::Resources {
    api::Resources {
        cpu: Some(r.cpu.0 as f64 / 1000.0),
        memory_mib: Some(r.memory.0),
        gpu: Some(r.gpu),
        custom: Default::default(),
    }
}

/// A core queue config as wire settings.
pub fn queue_settings(c: &core::QueueConfig) -> api::QueueSettings {
    api::QueueSettings {
        capacity: Some(c.capacity),
        max_capacity: Some(c.max_capacity),
        weight: Some(c.weight),
        max_running: Some(c.max_running.unwrap_or(0)),
        max_pending: Some(c.max_pending.unwrap_or(0)),
        defaults: Some(api::QueueDefaults {
            resources: Some(default_resources(&c.defaults.request)),
            function_resources: Some(default_resources(&c.defaults.function_request)),
            priority: Some(c.defaults.priority),
            timeout_ms: Some(c.defaults.timeout.map_or(0, |d| d.as_millis() as u64)),
            retry: Some(api::RetrySpec {
                max_attempts: Some(c.defaults.retry.max_attempts),
                backoff_base_ms: Some(c.defaults.retry.backoff_base.as_millis() as u64),
                backoff_cap_ms: Some(c.defaults.retry.backoff_cap.as_millis() as u64),
                jitter: Some(c.defaults.retry.jitter),
            }),
        }),
        ordering: Some(c.ordering.clone()),
        placement: Some(c.placement.clone()),
        admission: Some(c.admission.clone()),
        preemptable: Some(c.preemptable),
        priority_preemption: Some(c.priority_preemption),
        fairness_key: c.fairness_key.clone(),
        user_limit_factor: c.user_limit_factor,
        rate_limit: c.rate_limit.as_ref().map(rate_limit_spec),
        key_limits: (!c.key_limits.is_empty()).then(|| {
            c.key_limits
                .iter()
                .map(|(name, limit)| (name.clone(), rate_limit_spec(limit)))
                .collect()
        }),
        auto_resources: c.auto_resources.as_ref().map(|a| api::AutoResourcesSpec {
            margin: Some(a.margin),
            min_samples: Some(a.min_samples),
            min: Some(default_resources(&a.min)),
            max: a.max.as_ref().map(default_resources),
        }),
        template: c.template.as_deref().map(|t| api::QueueTemplateSpec {
            idle_ms: Some(t.idle_removal.as_millis() as u64),
            max_queues: Some(t.max_queues),
            settings: Box::new(queue_settings(&t.child)),
        }),
    }
}

/// A core job state as the wire names it.
pub fn job_state(s: core::JobState) -> api::JobState {
    match s {
        core::JobState::Pending => api::JobState::Pending,
        core::JobState::Scheduled => api::JobState::Scheduled,
        core::JobState::Running => api::JobState::Running,
        core::JobState::Succeeded => api::JobState::Succeeded,
        core::JobState::Failed => api::JobState::Failed,
        core::JobState::Cancelled => api::JobState::Cancelled,
        core::JobState::Expired => api::JobState::Expired,
    }
}

/// A wire job state as the core's.
pub fn core_job_state(s: api::JobState) -> core::JobState {
    match s {
        api::JobState::Pending => core::JobState::Pending,
        api::JobState::Scheduled => core::JobState::Scheduled,
        api::JobState::Running => core::JobState::Running,
        api::JobState::Succeeded => core::JobState::Succeeded,
        api::JobState::Failed => core::JobState::Failed,
        api::JobState::Cancelled => core::JobState::Cancelled,
        api::JobState::Expired => core::JobState::Expired,
    }
}

/// Parses a job state name from a query string.
pub fn parse_state(name: &str) -> Result<core::JobState, ApiError> {
    name.parse::<api::JobState>()
        .map(core_job_state)
        .map_err(|e| invalid("state", e.to_string()))
}

/// A core worker state as the wire names it.
pub fn worker_state(s: core::WorkerState) -> api::WorkerState {
    match s {
        core::WorkerState::Active => api::WorkerState::Active,
        core::WorkerState::Draining => api::WorkerState::Draining,
        core::WorkerState::Lost => api::WorkerState::Lost,
    }
}

/// A core queue state as the wire names it.
pub fn queue_state(s: core::QueueState) -> api::QueueState {
    match s {
        core::QueueState::Running => api::QueueState::Running,
        core::QueueState::Stopped => api::QueueState::Stopped,
        core::QueueState::Draining => api::QueueState::Draining,
    }
}

/// Why the core stops an attempt, as the wire names it.
pub fn kill_reason(r: core::KillReason) -> api::KillReason {
    match r {
        core::KillReason::Cancelled => api::KillReason::Cancelled,
        core::KillReason::TimedOut => api::KillReason::TimedOut,
        core::KillReason::Preempted => api::KillReason::Preempted,
        core::KillReason::Stale => api::KillReason::Stale,
    }
}

/// Why the core refused a report, as the wire names it.
pub fn refusal_reason(r: core::RefusalReason) -> api::RefusalReason {
    match r {
        core::RefusalReason::UnknownJob => api::RefusalReason::UnknownJob,
        core::RefusalReason::StaleAttempt => api::RefusalReason::StaleAttempt,
    }
}

/// How an attempt ended, and the failure's message when it failed.
fn outcome(o: &core::AttemptOutcome) -> (api::AttemptOutcome, Option<String>) {
    use core::AttemptOutcome::*;
    match o {
        Succeeded { .. } => (api::AttemptOutcome::Succeeded, None),
        Failed { exit_code, message } => (
            api::AttemptOutcome::Failed,
            Some(match exit_code {
                Some(code) if !message.contains("exit code") => {
                    format!("exit code {code}: {message}")
                }
                _ => message.clone(),
            }),
        ),
        TimedOut => (api::AttemptOutcome::TimedOut, None),
        Lost => (api::AttemptOutcome::Lost, None),
        Preempted => (api::AttemptOutcome::Preempted, None),
        Cancelled => (api::AttemptOutcome::Cancelled, None),
        NotReclaimed => (api::AttemptOutcome::NotReclaimed, None),
        Withdrawn => (api::AttemptOutcome::Withdrawn, None),
        RetryRequested { countdown, message } => (
            api::AttemptOutcome::RetryRequested,
            Some(match countdown {
                Some(wait) => format!("retry in {} ms: {message}", wait.as_millis()),
                None => message.clone(),
            }),
        ),
    }
}

/// A job as clients see it at `now` (a rate limit's hold shows only while it lasts).
pub fn job_view(job: &core::JobRecord, queue: &str, now: Timestamp) -> api::JobView {
    let (result, exit_code, reason) = match job.termination.as_ref() {
        Some(core::Termination::Succeeded { result, exit_code }) => (
            result.as_ref().map(core::jobs::Json::to_value),
            *exit_code,
            None,
        ),
        Some(core::Termination::Failed { last }) => {
            let (name, message) = outcome(last);
            let exit = match last {
                core::AttemptOutcome::Failed { exit_code, .. } => *exit_code,
                _ => None,
            };
            (
                None,
                exit,
                Some(message.unwrap_or_else(|| name.as_str().replace('_', " "))),
            )
        }
        Some(core::Termination::Cancelled { reason }) => (None, None, Some(reason.clone())),
        // Its result could not be read back from the store.
        Some(core::Termination::SucceededStored { exit_code }) => (None, *exit_code, None),
        Some(core::Termination::Expired) => {
            (None, None, Some("not started before it expired".into()))
        }
        None => (None, None, None),
    };
    api::JobView {
        id: job.id.0,
        queue: queue.to_owned(),
        state: job_state(job.state),
        kind: kind_view(&job.spec.kind),
        resources: figures(&job.spec.request),
        priority: job.spec.priority,
        submitted_at_ms: job.submitted_at.0,
        submitted_by: job.spec.submitted_by().unwrap_or(api::ANONYMOUS).to_owned(),
        not_before_ms: job.not_before.map(|t| t.0),
        expires_at_ms: job.spec.expires_at().map(|t| t.0),
        timeout_ms: job.spec.timeout.map(|d| d.as_millis() as u64),
        soft_timeout_ms: job.spec.soft_timeout().map(|d| d.as_millis() as u64),
        progress: job.progress.as_ref().map(core::jobs::Json::to_value),
        max_attempts: job.spec.retry.max_attempts,
        tags: job.spec.tags().to_vec(),
        keys: job.spec.keys().to_map(),
        rate_limited_until_ms: job
            .rate_limited_until
            .filter(|until| job.state == core::JobState::Pending && *until > now)
            .map(|t| t.0),
        retry_of: job.spec.retry_of().map(|id| id.0),
        workflow: job.spec.workflow().map(|w| w.workflow),
        name: job.spec.workflow().map(|w| w.name.clone()),
        after: job
            .spec
            .depends()
            .map(|d| d.parents.iter().map(|p| p.0).collect())
            .unwrap_or_default(),
        run_when: job.spec.depends().map(|d| match d.run_when {
            core::RunWhen::AllSucceeded => api::RunWhen::AllSucceeded,
            core::RunWhen::AllFinished => api::RunWhen::AllFinished,
        }),
        pass_results: job.spec.depends().is_some_and(|d| d.pass_results),
        pinned_worker: job.spec.pinned().map(|w| w.0),
        secret_env: secret_names(&job.spec.kind),
        attempts: job
            .attempts
            .iter()
            .map(|a| {
                let (outcome, message) = match &a.outcome {
                    Some(o) => {
                        let (n, m) = outcome(o);
                        (Some(n), m)
                    }
                    None => (None, None),
                };
                api::AttemptView {
                    number: a.number,
                    token: a.token.0,
                    worker: a.worker.0,
                    scheduled_at_ms: a.scheduled_at.0,
                    started_at_ms: a.started_at.map(|t| t.0),
                    finished_at_ms: a.finished_at.map(|t| t.0),
                    outcome,
                    message,
                }
            })
            .collect(),
        result,
        exit_code,
        reason,
        finished_at_ms: job.finished_at.map(|t| t.0),
    }
}

/// Wire attempt result to core.
pub fn reported(r: &api::AttemptResult) -> core::ReportedResult {
    match r {
        api::AttemptResult::Succeeded { result, exit_code } => core::ReportedResult::Succeeded {
            result: result.as_ref().map(core::jobs::Json::from_value),
            exit_code: *exit_code,
        },
        // `retry` is honoured whatever protocol the worker registered with: an older
        // worker never sends it, and one that does means what a version-4 worker means.
        api::AttemptResult::Failed {
            exit_code,
            message,
            retry,
            ..
        } => core::ReportedResult::Failed {
            exit_code: *exit_code,
            message: message.clone(),
            retry: retry.unwrap_or(true),
        },
        api::AttemptResult::TimedOut => core::ReportedResult::TimedOut,
        api::AttemptResult::Retry {
            countdown_ms,
            message,
        } => core::ReportedResult::Retry {
            countdown: countdown_ms.map(|ms| Duration::from_millis(ms.min(MAX_MS))),
            message: message.clone(),
        },
    }
}

/// A poll's answer as the wire carries it.
pub fn poll_response(dispatch: crate::resource_manager::Dispatch) -> api::PollResponse {
    api::PollResponse {
        seq: dispatch.seq,
        assignments: dispatch
            .assignments
            .into_iter()
            .map(|a| api::Assignment {
                job: a.job.0,
                token: a.token.0,
                attempt: a.attempt,
                queue: a.queue,
                kind: dispatched_kind(&a.kind),
                resources: figures(&a.request),
                timeout_ms: a.timeout.map(|d| d.as_millis() as u64),
                soft_timeout_ms: a.soft_timeout.map(|d| d.as_millis() as u64),
                inputs_path: matches!(a.inputs, Some(crate::resource_manager::Inputs::Elsewhere))
                    .then(|| format!("/v1/jobs/{}/inputs", a.job)),
                inputs: match a.inputs {
                    Some(crate::resource_manager::Inputs::Inline(values)) => {
                        Some(values.iter().map(core::jobs::Json::to_value).collect())
                    }
                    _ => None,
                },
            })
            .collect(),
        kill: dispatch
            .kills
            .iter()
            .map(|k| api::KillOrder {
                job: k.job.0,
                token: k.token.0,
                reason: kill_reason(k.reason),
            })
            .collect(),
        refused: dispatch
            .refused
            .iter()
            .map(|r| api::RefusedReport {
                job: r.job.0,
                token: r.token.0,
                reason: refusal_reason(r.reason),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_window_masks_secrets_cut_by_its_offset_and_holds_back_a_possible_start() {
        let secrets = ["hunter2"];
        // The whole output, nothing secret in it.
        let all = log_window("abc", 0, 0, &secrets, false);
        assert_eq!(
            (all.offset, all.next_offset, all.text.as_str()),
            (0, 3, "abc")
        );
        // A read starting inside a secret shows none of it.
        let text = "pw=hunter2 ok";
        let cut = log_window(text, 0, 6, &secrets, false);
        assert_eq!((cut.offset, cut.text.as_str()), (6, "*** ok"));
        // While the output grows, an end that may begin a secret waits for the next read.
        let growing = log_window("pw=hun", 0, 0, &secrets, true);
        assert_eq!((growing.text.as_str(), growing.next_offset), ("pw=", 3));
        let later = log_window("pw=hunter2!", 0, growing.next_offset, &secrets, true);
        assert_eq!((later.text.as_str(), later.next_offset), ("***!", 11));
        // An offset before what is kept says so.
        let gone = log_window("tail", 100, 40, &secrets, true);
        assert_eq!(
            (gone.offset, gone.missed, gone.text.as_str()),
            (100, true, "tail")
        );
        // An offset past the end answers nothing, at the end.
        let past = log_window("short", 0, 50, &secrets, false);
        assert_eq!(
            (past.offset, past.next_offset, past.text.as_str()),
            (5, 5, "")
        );
    }
}
