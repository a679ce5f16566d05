//! Worker autoscaling, the server's half: the core's [`Autoscaler`] kept inside the
//! ResourceManager actor ([`Scaling`]), a task that runs only while this server leads
//! and carries the decisions out ([`lead`]), and the providers that start and stop
//! workers: `local` (`lqsm worker` processes on this machine, [`LocalWorkers`]) and
//! `exec` (an operator's command told the pool and the number wanted, [`run_exec`]).
//!
//! The decisions are the core's and are made on the actor, with the state they are
//! about: a drain is applied to the core in the same batch that decided it, so no
//! scheduling pass can hand the chosen (idle) worker a job in between. The task only
//! does I/O: starting processes, running commands, signalling drained workers.
//!
//! What the provider is allowed to run comes from the config file only: nothing of the
//! API reaches a command line or an environment.

use crate::config::{POOL_LABEL, PoolConfig, ProviderKind};
use crate::resource_manager::Runtime;
use lqsm_api as api;
use lqsm_core::autoscale::{PoolStatus, ScaleEventKind};
use lqsm_core::{
    Autoscaler, Policies, PoolSnapshot, PoolSpec, ResourceManager, ScaleAction, ScaleEvent,
    Timestamp, WorkerId, WorkerState,
};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How many provider events (starts, stops, failures) are kept besides the core's
/// decisions.
const PROVIDER_EVENTS_KEPT: usize = 200;

/// How much of a failed command's stderr an event keeps (its end).
const STDERR_TAIL_BYTES: usize = 1024;

/// One event as the views show it: a core decision or a provider's doing.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// When.
    pub at: Timestamp,
    /// The pool.
    pub pool: String,
    /// `scale_up`, …, `workers_started`, `worker_stopped`, `provider_failed`.
    pub kind: String,
    /// Workers counted before.
    pub from: u32,
    /// Workers wanted.
    pub to: u32,
    /// Why.
    pub reason: String,
}

impl From<&ScaleEvent> for Event {
    fn from(e: &ScaleEvent) -> Self {
        Self {
            at: e.at,
            pool: e.pool.clone(),
            kind: e.kind.to_string(),
            from: e.from,
            to: e.to,
            reason: e.reason.clone(),
        }
    }
}

/// A pool as last evaluated.
#[derive(Clone, Debug)]
pub struct PoolReport {
    /// Its settings as the core reads them.
    pub spec: PoolSpec,
    /// `local` or `exec`.
    pub provider: &'static str,
    /// What it looked like.
    pub snapshot: PoolSnapshot,
    /// What the autoscaler knows of it.
    pub status: Option<PoolStatus>,
    /// When it was evaluated (`None`: not yet; the snapshot is of the read).
    pub evaluated_at: Option<Timestamp>,
}

/// What `GET /v1/autoscale` shows, in the core's terms.
#[derive(Clone, Debug, Default)]
pub struct AutoscaleReport {
    /// Whether the autoscaler runs.
    pub enabled: bool,
    /// How often it evaluates.
    pub interval: Duration,
    /// The pools.
    pub pools: Vec<PoolReport>,
    /// Recent events, oldest first.
    pub events: Vec<Event>,
}

/// An action with the pool's count around it, for the provider.
#[derive(Clone, Debug)]
pub struct Planned {
    /// What to do.
    pub action: ScaleAction,
    /// Workers the pool counted before.
    pub current: u32,
    /// Workers it should have after.
    pub desired: u32,
    /// For a drain, the names of the drained workers (in `action`'s order).
    pub names: Vec<String>,
}

/// What one evaluation decided, and the pools as they were then.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// The actions, drains already applied to the core.
    pub actions: Vec<Planned>,
    /// Each pool's workers, by pool name.
    pub pools: BTreeMap<String, PoolSnapshot>,
}

/// The pools a server sizes, each with its provider settings and the workers' token.
#[derive(Clone, Debug)]
pub struct Setup {
    /// How often to evaluate.
    pub interval: Duration,
    /// The pools, in the config's order.
    pub pools: Vec<PoolSetup>,
}

/// One pool: its config entry, the core's spec and the token its workers use.
#[derive(Clone)]
pub struct PoolSetup {
    /// The config entry.
    pub config: PoolConfig,
    /// The core's spec of it.
    pub spec: PoolSpec,
    /// The workers' token, read at start from `token_env`/`token_file`.
    pub token: Option<String>,
}

impl std::fmt::Debug for PoolSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.debug_struct("PoolSetup")
            .field("spec", &self.spec)
            .field("provider", &self.config.provider)
            .finish_non_exhaustive()
    }
}

impl Setup {
    /// Every pool of the config checked against `policies`, tokens read; the error
    /// names the field (`autoscale.pools[1].max`). `None` when autoscaling is off.
    pub fn from_config(config: &crate::config::ServerConfig) -> Result<Option<Arc<Setup>>, String> {
        let autoscale = &config.autoscale;
        autoscale.check()?;
        let specs = autoscale.specs(&config.policies)?;
        if !autoscale.enabled {
            return Ok(None);
        }
        let mut pools = Vec::with_capacity(specs.len());
        for (i, (pool, spec)) in autoscale.pools.iter().zip(specs).enumerate() {
            let token = pool.token(i)?;
            if token.is_none() && !config.tokens.is_empty() && pool.provider == ProviderKind::Local
            {
                return Err(format!(
                    "autoscale.pools[{i}].token_env: the server requires tokens, so the workers it starts need one with the worker role: set `token_env` or `token_file`"
                ));
            }
            pools.push(PoolSetup {
                config: pool.clone(),
                spec,
                token,
            });
        }
        Ok(Some(Arc::new(Setup {
            interval: Duration::from_millis(autoscale.interval_ms),
            pools,
        })))
    }

    fn pool(&self, name: &str) -> Option<&PoolSetup> {
        self.pools.iter().find(|p| p.spec.name == name)
    }
}

/// The autoscaler as the actor holds it.
#[derive(Debug)]
pub struct Scaling {
    scaler: Autoscaler,
    pools: Vec<(PoolSpec, &'static str)>,
    policies: Policies,
    interval: Duration,
    provider_events: VecDeque<Event>,
    last: BTreeMap<String, (Timestamp, PoolSnapshot)>,
}

impl Scaling {
    /// The autoscaler of `setup`'s pools, choosing their policies in `policies`.
    pub fn new(setup: &Setup, policies: Policies) -> Self {
        Self {
            scaler: Autoscaler::new(),
            pools: setup
                .pools
                .iter()
                .map(|p| (p.spec.clone(), p.config.provider.as_str()))
                .collect(),
            policies,
            interval: setup.interval,
            provider_events: VecDeque::new(),
            last: BTreeMap::new(),
        }
    }

    /// Evaluates every pool at `now` and drains the workers chosen at once, in the
    /// core, so that none of them is handed work after it was chosen for being idle.
    pub fn evaluate(&mut self, rm: &mut ResourceManager, now: Timestamp) -> Outcome {
        let specs: Vec<PoolSpec> = self.pools.iter().map(|(s, _)| s.clone()).collect();
        let seen_last = self.scaler.events().back().cloned();
        let actions = self.scaler.evaluate(rm, &specs, &self.policies, now);
        let new_events: Vec<ScaleEvent> = self
            .scaler
            .events()
            .iter()
            .rev()
            .take_while(|e| Some(*e) != seen_last.as_ref())
            .cloned()
            .collect();
        for event in new_events.iter().rev() {
            metrics::counter!(
                "lqsm_autoscale_decisions_total",
                "pool" => event.pool.clone(),
                "action" => event.kind.to_string()
            )
            .increment(1);
            tracing::info!(pool = %event.pool, kind = %event.kind, from = event.from, to = event.to, reason = %event.reason, "autoscale");
        }
        let mut planned = Vec::with_capacity(actions.len());
        for action in actions {
            let (pool, kind) = match &action {
                ScaleAction::Start { pool, .. } => (pool.clone(), ScaleEventKind::ScaleUp),
                ScaleAction::Drain { pool, .. } => (pool.clone(), ScaleEventKind::ScaleDown),
            };
            let (current, desired) = new_events
                .iter()
                .find(|e| e.pool == pool && e.kind == kind)
                .map_or((0, 0), |e| (e.from, e.to));
            let action = match action {
                ScaleAction::Drain {
                    pool,
                    workers,
                    reason,
                } => {
                    // A worker that went since the snapshot is simply not drained.
                    let workers: Vec<WorkerId> = workers
                        .into_iter()
                        .filter(|id| rm.drain_worker(*id).is_ok())
                        .collect();
                    ScaleAction::Drain {
                        pool,
                        workers,
                        reason,
                    }
                }
                start => start,
            };
            planned.push(Planned {
                action,
                current,
                desired,
                names: Vec::new(),
            });
        }
        let mut pools = BTreeMap::new();
        for spec in &specs {
            let snapshot = rm.pool_snapshot(spec, now);
            let pending = self.scaler.pending_starts(&spec.name);
            let taking_work = snapshot.active();
            metrics::gauge!("lqsm_autoscale_workers", "pool" => spec.name.clone())
                .set(f64::from(taking_work.saturating_add(pending)));
            if let Some(desired) = self.scaler.status(&spec.name).and_then(|s| s.desired) {
                metrics::gauge!("lqsm_autoscale_desired_workers", "pool" => spec.name.clone())
                    .set(f64::from(desired));
            }
            self.last.insert(spec.name.clone(), (now, snapshot.clone()));
            pools.insert(spec.name.clone(), snapshot);
        }
        for p in &mut planned {
            if let ScaleAction::Drain { pool, workers, .. } = &p.action
                && let Some(snapshot) = pools.get(pool)
            {
                p.names = workers
                    .iter()
                    .filter_map(|id| snapshot.workers.iter().find(|w| w.id == *id))
                    .map(|w| w.name.clone())
                    .collect();
            }
        }
        Outcome {
            actions: planned,
            pools,
        }
    }

    /// The provider started `n` workers of `pool`.
    pub fn started(&mut self, pool: &str, n: u32, now: Timestamp) {
        self.scaler.started(pool, n, now);
    }

    /// Records what a provider did or failed to do.
    pub fn note(&mut self, event: Event) {
        if event.kind == "provider_failed" {
            metrics::counter!(
                "lqsm_autoscale_decisions_total",
                "pool" => event.pool.clone(),
                "action" => "provider_failed"
            )
            .increment(1);
        }
        if self.provider_events.len() >= PROVIDER_EVENTS_KEPT {
            self.provider_events.pop_front();
        }
        self.provider_events.push_back(event);
    }

    /// The clock stepped by `by_ms`: cooldowns move with it.
    pub fn clock_jumped(&mut self, by_ms: i64) {
        self.scaler.clock_jumped(by_ms);
    }

    /// The pools as last evaluated (or as they are now, before the first evaluation)
    /// and the events of both kinds, oldest first.
    pub fn report(&self, rm: &ResourceManager, now: Timestamp) -> AutoscaleReport {
        let pools = self
            .pools
            .iter()
            .map(|(spec, provider)| {
                let (evaluated_at, snapshot) = match self.last.get(&spec.name) {
                    Some((at, snapshot)) => (Some(*at), snapshot.clone()),
                    None => (None, rm.pool_snapshot(spec, now)),
                };
                PoolReport {
                    spec: spec.clone(),
                    provider,
                    snapshot,
                    status: self.scaler.status(&spec.name),
                    evaluated_at,
                }
            })
            .collect();
        let mut events: Vec<Event> = self
            .scaler
            .events()
            .iter()
            .map(Event::from)
            .chain(self.provider_events.iter().cloned())
            .collect();
        // Stable: a decision stays before what its provider then did at the same instant.
        events.sort_by_key(|e| e.at);
        AutoscaleReport {
            enabled: true,
            interval: self.interval,
            pools,
            events,
        }
    }
}

/// The wire form of a report.
pub fn wire(report: &AutoscaleReport) -> api::AutoscaleView {
    let event = |e: &Event| api::AutoscaleEvent {
        at_ms: e.at.0,
        pool: e.pool.clone(),
        kind: e.kind.clone(),
        from: e.from,
        to: e.to,
        reason: e.reason.clone(),
    };
    api::AutoscaleView {
        enabled: report.enabled,
        interval_ms: u64::try_from(report.interval.as_millis()).unwrap_or(u64::MAX),
        pools: report
            .pools
            .iter()
            .map(|p| {
                let status = p.status.clone().unwrap_or_default();
                api::AutoscalePoolView {
                    name: p.spec.name.clone(),
                    provider: p.provider.to_owned(),
                    policy: p.spec.policy.clone(),
                    labels: p.spec.labels.clone(),
                    min: p.spec.min,
                    max: p.spec.max,
                    current: p.snapshot.active(),
                    draining: p.snapshot.draining(),
                    pending: status.pending_starts,
                    desired: status.desired,
                    backlog: p.snapshot.backlog,
                    running: p.snapshot.running,
                    evaluated_at_ms: p.evaluated_at.map(|t| t.0),
                    last_decision: report
                        .events
                        .iter()
                        .rev()
                        .find(|e| e.pool == p.spec.name)
                        .map(event),
                    workers: p
                        .snapshot
                        .workers
                        .iter()
                        .map(|w| api::AutoscaleWorker {
                            id: w.id.0.to_string(),
                            name: w.name.clone(),
                            state: crate::convert::worker_state(w.state),
                            attempts: w.attempts,
                            idle_since_ms: w.idle_since.map(|t| t.0),
                        })
                        .collect(),
                }
            })
            .collect(),
        events: report.events.iter().map(event).collect(),
    }
}

/// What the provider task needs besides the actor: where the workers it starts reach
/// this server.
#[derive(Clone, Debug)]
pub struct Reach {
    /// The server's URL.
    pub url: String,
    /// CA certificates the workers trust for an `https://` URL.
    pub ca_file: Option<PathBuf>,
}

/// Runs while this server leads: every interval, has the actor evaluate the pools and
/// carries the actions out. Ends when the actor stops (the caller aborts it when
/// leadership ends).
pub async fn lead(runtime: Runtime, setup: Arc<Setup>, local: Arc<LocalWorkers>, reach: Reach) {
    let mut ticks = tokio::time::interval(setup.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Ok(outcome) = runtime.autoscale().await else {
            return;
        };
        for planned in &outcome.actions {
            let Some(pool) = setup.pool(action_pool(&planned.action)) else {
                continue;
            };
            let events = match (&planned.action, pool.config.provider) {
                (ScaleAction::Start { count, .. }, ProviderKind::Local) => {
                    local.start(pool, *count, &reach)
                }
                (ScaleAction::Start { count, .. }, ProviderKind::Exec) => {
                    let done = run_exec(pool, planned, &reach).await;
                    if done.is_ok() {
                        let _ = runtime.autoscale_started(&pool.spec.name, *count).await;
                    }
                    vec![done.unwrap_or_else(|e| e)]
                }
                // The local provider stops drained workers once they run nothing
                // (`tend`, below).
                (ScaleAction::Drain { .. }, ProviderKind::Local) => Vec::new(),
                (ScaleAction::Drain { workers, .. }, ProviderKind::Exec) if workers.is_empty() => {
                    Vec::new()
                }
                (ScaleAction::Drain { .. }, ProviderKind::Exec) => {
                    vec![run_exec(pool, planned, &reach).await.unwrap_or_else(|e| e)]
                }
            };
            for event in events {
                if event.kind == "workers_started" {
                    let _ = runtime
                        .autoscale_started(&event.pool, event.to - event.from)
                        .await;
                }
                let _ = runtime.autoscale_note(event).await;
            }
        }
        for event in local.tend(&setup, &outcome.pools) {
            let _ = runtime.autoscale_note(event).await;
        }
    }
}

fn action_pool(action: &ScaleAction) -> &str {
    match action {
        ScaleAction::Start { pool, .. } | ScaleAction::Drain { pool, .. } => pool,
    }
}

fn event(pool: &str, kind: &str, from: u32, to: u32, reason: String) -> Event {
    Event {
        at: crate::resource_manager::wall_clock(),
        pool: pool.to_owned(),
        kind: kind.to_owned(),
        from,
        to,
        reason,
    }
}

/// Runs the pool's command as `command <pool> <desired>`, with the pool, the counts and
/// the workers to let go in its environment, for at most its timeout. `Ok` carries the
/// event of its success, `Err` that of its failure (`provider_failed`, with the end of
/// its stderr).
pub async fn run_exec(pool: &PoolSetup, planned: &Planned, reach: &Reach) -> Result<Event, Event> {
    let name = &pool.spec.name;
    let fail = |why: String| {
        event(
            name,
            "provider_failed",
            planned.current,
            planned.desired,
            why,
        )
    };
    let Some(program) = &pool.config.command else {
        return Err(fail("no command configured".into()));
    };
    let drained: Vec<String> = match &planned.action {
        ScaleAction::Drain { workers, .. } => workers.iter().map(|w| w.0.to_string()).collect(),
        ScaleAction::Start { .. } => Vec::new(),
    };
    let labels: Vec<String> = pool
        .spec
        .labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let mut cmd = tokio::process::Command::new(program);
    cmd.arg(name)
        .arg(planned.desired.to_string())
        .env("LQSM_POOL", name)
        .env("LQSM_DESIRED", planned.desired.to_string())
        .env("LQSM_CURRENT", planned.current.to_string())
        .env("LQSM_DRAIN_WORKERS", drained.join(","))
        .env("LQSM_DRAIN_WORKER_NAMES", planned.names.join(","))
        .env("LQSM_WORKER_LABELS", labels.join(","))
        .env("LQSM_SERVER", &reach.url)
        .env_remove("LQSM_TOKEN")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(token) = &pool.token {
        cmd.env("LQSM_TOKEN", token);
    }
    let child = cmd
        .spawn()
        .map_err(|e| fail(format!("cannot run {}: {e}", program.display())))?;
    let pid = child.id();
    let timeout = pool.config.command_timeout();
    let ran = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(ran) => ran,
        Err(_) => {
            // Its children too: a script's `kubectl` must not outlive it.
            if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            return Err(fail(format!(
                "{} {name} {} did not finish within {} ms and was killed",
                program.display(),
                planned.desired,
                timeout.as_millis()
            )));
        }
    };
    let output = ran.map_err(|e| fail(format!("waiting for {}: {e}", program.display())))?;
    if !output.status.success() {
        return Err(fail(format!(
            "{} {name} {} failed ({}): {}",
            program.display(),
            planned.desired,
            output.status,
            stderr_tail(&output.stderr)
        )));
    }
    let what = match &planned.action {
        ScaleAction::Start { count, .. } => format!("asked for {count} more"),
        ScaleAction::Drain { workers, .. } => format!("told to let {} drained go", workers.len()),
    };
    Ok(event(
        name,
        "exec_done",
        planned.current,
        planned.desired,
        format!(
            "{} {name} {} succeeded: {what}",
            program.display(),
            planned.desired
        ),
    ))
}

fn stderr_tail(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim_end();
    let mut start = text.len().saturating_sub(STDERR_TAIL_BYTES);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    if text.is_empty() {
        "(no stderr)".to_owned()
    } else {
        text[start..].to_owned()
    }
}

/// The `lqsm worker` processes this server started, by worker name. They outlive a
/// spell of leading (they keep working for the next leader, which counts them by their
/// pool label), and get SIGTERM when this server shuts down.
#[derive(Debug, Default)]
pub struct LocalWorkers {
    children: Mutex<HashMap<String, LocalChild>>,
    started: std::sync::atomic::AtomicU64,
}

#[derive(Debug)]
struct LocalChild {
    pool: String,
    child: tokio::process::Child,
    pid: Option<u32>,
    /// Since when the server has shown it draining.
    draining_since: Option<Instant>,
    /// Whether it was told to stop.
    signalled: bool,
}

impl LocalWorkers {
    /// Starts `count` workers of `pool`; answers the events to record (the workers
    /// started, and a failure if some could not be).
    pub fn start(&self, pool: &PoolSetup, count: u32, reach: &Reach) -> Vec<Event> {
        let name = &pool.spec.name;
        let binary = match &pool.config.worker_binary {
            Some(path) => path.clone(),
            None => match std::env::current_exe() {
                Ok(path) => path,
                Err(e) => {
                    return vec![event(
                        name,
                        "provider_failed",
                        0,
                        count,
                        format!("cannot find this program to start workers with: {e}"),
                    )];
                }
            },
        };
        let mut names = Vec::new();
        let mut failure = None;
        for _ in 0..count {
            let n = self
                .started
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let worker_name = format!("{name}-{}-{n}", std::process::id());
            match spawn_worker(&binary, pool, &worker_name, reach) {
                Ok(child) => {
                    let pid = child.id();
                    self.lock().insert(
                        worker_name.clone(),
                        LocalChild {
                            pool: name.clone(),
                            child,
                            pid,
                            draining_since: None,
                            signalled: false,
                        },
                    );
                    names.push(worker_name);
                }
                Err(e) => {
                    failure = Some(format!("cannot start {}: {e}", binary.display()));
                    break;
                }
            }
        }
        let mut events = Vec::new();
        let started = u32::try_from(names.len()).unwrap_or(u32::MAX);
        if started > 0 {
            events.push(event(
                name,
                "workers_started",
                0,
                started,
                format!("started {started} local: {}", names.join(", ")),
            ));
        }
        if let Some(why) = failure {
            events.push(event(name, "provider_failed", started, count, why));
        }
        events
    }

    /// Stops the workers the server shows draining once they run nothing (or once
    /// their pool's drain timeout has passed), and forgets those that exited; answers
    /// the events to record.
    pub fn tend(&self, setup: &Setup, pools: &BTreeMap<String, PoolSnapshot>) -> Vec<Event> {
        let mut events = Vec::new();
        let mut children = self.lock();
        children.retain(|name, c| match c.child.try_wait() {
            Ok(Some(status)) => {
                let how = if c.signalled {
                    "stopped after its drain".to_owned()
                } else {
                    format!("exited by itself ({status})")
                };
                events.push(event(
                    &c.pool,
                    "worker_stopped",
                    0,
                    0,
                    format!("{name} {how}"),
                ));
                false
            }
            _ => true,
        });
        for (name, c) in children.iter_mut() {
            if c.signalled {
                continue;
            }
            let Some(snapshot) = pools.get(&c.pool) else {
                continue;
            };
            let Some(worker) = snapshot.workers.iter().find(|w| &w.name == name) else {
                continue;
            };
            if worker.state != WorkerState::Draining {
                c.draining_since = None;
                continue;
            }
            let since = *c.draining_since.get_or_insert_with(Instant::now);
            let timeout = setup
                .pool(&c.pool)
                .map_or(Duration::MAX, |p| p.config.drain_timeout());
            let over = since.elapsed() >= timeout;
            if worker.attempts == 0 || over {
                c.signalled = true;
                terminate(c.pid);
                let why = if worker.attempts == 0 {
                    "drained and running nothing".to_owned()
                } else {
                    format!(
                        "still running {} attempt(s) after the drain timeout of {} ms",
                        worker.attempts,
                        timeout.as_millis()
                    )
                };
                events.push(event(
                    &c.pool,
                    "worker_stopping",
                    0,
                    0,
                    format!("SIGTERM to {name}: {why}"),
                ));
            }
        }
        events
    }

    /// Sends SIGTERM to every worker this server started (at shutdown): each finishes
    /// or stops its attempts within its own drain grace and exits.
    pub fn stop_all(&self) {
        let mut children = self.lock();
        for c in children.values_mut() {
            if c.child.try_wait().ok().flatten().is_none() {
                terminate(c.pid);
            }
        }
        children.clear();
    }

    /// The process ids of the workers it started and holds, by worker name.
    pub fn pids(&self) -> BTreeMap<String, u32> {
        self.lock()
            .iter()
            .filter_map(|(name, c)| c.pid.map(|pid| (name.clone(), pid)))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, LocalChild>> {
        self.children
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// SIGTERM to a worker's process group (it leads its own): the worker drains and exits.
fn terminate(pid: Option<u32>) {
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
}

/// `<binary> --server URL worker --name NAME --label ... --cpus ... --memory ...` with
/// the token in `LQSM_TOKEN`, in its own process group.
fn spawn_worker(
    binary: &std::path::Path,
    pool: &PoolSetup,
    name: &str,
    reach: &Reach,
) -> std::io::Result<tokio::process::Child> {
    let capacity = &pool.spec.worker_capacity;
    let mut cmd = tokio::process::Command::new(binary);
    // Settings of this server's own environment must not become the worker's.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("LQSM_") {
            cmd.env_remove(key);
        }
    }
    cmd.arg("--server")
        .arg(&reach.url)
        .arg("worker")
        .arg("--name")
        .arg(name)
        .arg("--cpus")
        .arg(format!("{}", capacity.cpu.0 as f64 / 1000.0))
        .arg("--memory")
        .arg(format!("{}M", capacity.memory.0))
        .arg("--gpus")
        .arg(capacity.gpu.to_string());
    for (resource, amount) in capacity.customs() {
        cmd.arg("--resource")
            .arg(format!("{}={amount}", resource.as_str()));
    }
    for (key, value) in &pool.spec.labels {
        cmd.arg("--label").arg(format!("{key}={value}"));
    }
    debug_assert!(pool.spec.labels.contains_key(POOL_LABEL));
    cmd.args(&pool.config.worker_args);
    if let Some(token) = &pool.token {
        cmd.env("LQSM_TOKEN", token);
    }
    if let Some(ca) = &reach.ca_file {
        cmd.env("LQSM_CA_FILE", ca);
    }
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .process_group(0)
        .kill_on_drop(false);
    cmd.spawn()
}
