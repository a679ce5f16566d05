//! LQSM's worker agent as a library: it registers with a server, long-polls for
//! attempts, runs them — commands as child processes in their own process group,
//! functions as async handlers — and reports how they ended.
//!
//! A Rust program serves its own functions by registering handlers by name, as
//! Celery's `@app.task` does:
//!
//! ```no_run
//! use lqsm_worker::{WorkerBuilder, WorkerConfig};
//! use serde_json::{Value, json};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let worker = WorkerBuilder::new(WorkerConfig::new("http://127.0.0.1:7420"))
//!     .handler("billing.invoice", |args: Value| async move {
//!         let total = args["amount"].as_f64().ok_or("`amount` must be a number")?;
//!         Ok::<_, String>(json!({"invoice": 1, "total": total * 1.2}))
//!     })
//!     .build()?;
//! // Runs until Ctrl-C, then drains: takes nothing new, lets running attempts finish.
//! worker.run(async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(()) }
//! ```
//!
//! # Guarantees
//!
//! - The worker's id is a UUIDv7 made when it is built and kept for the life of the
//!   process: after a server restart it registers again under the same id and lists
//!   what it runs, so the server reclaims those attempts instead of running them
//!   again.
//! - An attempt (job, fencing token) handed out twice runs once.
//! - A report is kept until a poll that carried it is answered; network errors and
//!   server restarts are retried with exponential backoff and jitter (capped at
//!   [`WorkerConfig::backoff_cap`]) while attempts keep running.
//! - A command's processes end with its attempt: on a timeout or a stop order its
//!   whole process group gets SIGTERM, [`WorkerConfig::kill_grace`], then SIGKILL;
//!   whatever it leaves behind when its main process exits is killed.
//! - No process of an attempt outlives the worker: each command runs under its own
//!   supervisor process ([`supervisor`]), which kills every process the command
//!   started — also those that left its process group — when the worker dies, even
//!   by SIGKILL. A program built on this crate calls [`supervisor::run_if_asked`]
//!   first thing in `main`.
//! - A worker cut off from the server stops its attempts before the server may
//!   declare them lost (self-fencing): once nothing it sent has been answered for the
//!   server's heartbeat timeout less a margin, it kills them and does not report
//!   them, so that the server runs them again elsewhere while no copy runs here.
//! - Memory limits are enforced with cgroup v2 where the worker may create cgroups
//!   with the memory controller, or, with [`WorkerConfig::memory_check`], by the
//!   attempt's supervisor sampling its processes' memory; [`Worker::memory_enforced`]
//!   says whether.
//! - Every command attempt run under a supervisor or in a cgroup is measured (peak
//!   memory, CPU time), and the report carries it to a server of protocol 7 or later.
//! - A command's output goes up while it runs, to a server of protocol 8 or later:
//!   about once a second, what every running command wrote since, in one call
//!   (`POST /v1/workers/{id}/logs`); the report still carries all of it.
//!
//! # Reporting latency
//!
//! When an attempt finishes while a long-poll waits, the worker replaces that poll
//! with a new one carrying the report (the server answers the old one empty). If the
//! server had already answered the old poll with new work, that answer still arrives
//! and its attempts start: every answer is numbered (`seq`) and every poll says the
//! highest number the worker has processed (`ack`), so the server expects an attempt
//! in `running` only once the answer carrying it has been seen. Answers to replaced
//! polls may arrive out of order, so a number is acknowledged only once no replaced
//! poll is still waiting for its answer. A poll is replaced
//! once it is [`WorkerConfig::cut_short_after`] old, so that reports of attempts
//! finishing close together share one poll.

mod agent;
mod cgroup;
mod config;
mod context;
pub mod executor;
mod handlers;
pub mod supervisor;

pub use agent::RETRY_EXIT_CODE;
pub use config::{Capacity, RunAs, RunAsError, WorkerConfig, decide_run_as, detect_capacity};
pub use context::{RetryRequested, job_id, retry, soft_time_limit, update_state};
pub use handlers::{BUILTIN_HANDLERS, HandlerFuture, HandlerResult};

use agent::{Agent, Settings};
use cgroup::MemoryLimits;
use handlers::{CustomHandler, Handler};
use lqsm_client::{Client, ClientError};
use serde::Serialize;
use std::collections::HashMap;
use std::fmt::Display;
use std::future::Future;
use std::sync::Arc;
use tokio::sync::watch;
use uuid::Uuid;

/// The running program, even if its file was replaced or deleted since it started.
const SELF_EXE: &str = "/proc/self/exe";

/// Why a worker could not be built or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The configuration cannot work; the message says what to change.
    #[error("worker configuration: {0}")]
    Config(String),
    /// The server refused this worker for good (its token, or its registration).
    #[error("the server refused this worker: {0}")]
    Refused(#[source] ClientError),
    /// The client could not be set up (a bad server URL).
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// What a worker is about to offer, to show at start.
#[derive(Clone, Debug, PartialEq)]
pub struct StartupReport {
    /// The worker's id, kept for the life of the process.
    pub id: Uuid,
    /// Its name.
    pub name: String,
    /// What it offers.
    pub capacity: Capacity,
    /// The handlers it serves, sorted.
    pub handlers: Vec<String>,
    /// Whether it runs command jobs.
    pub serves_commands: bool,
    /// Whether commands' memory is limited to what they were granted (cgroup v2, or
    /// [`WorkerConfig::memory_check`]).
    pub memory_enforced: bool,
    /// Why memory is not limited, when it is not.
    pub memory_note: Option<String>,
}

/// What a worker did, when [`Worker::run`] returns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunSummary {
    /// Attempts started.
    pub started: u64,
    /// Attempts that succeeded.
    pub succeeded: u64,
    /// Attempts that failed, timed out or were stopped.
    pub failed: u64,
    /// Attempts still running when the worker was killed.
    pub killed: usize,
    /// Attempts the worker stopped because the server could not be reached for
    /// too long (not reported: the server runs them again).
    pub fenced: u64,
    /// Finished attempts the server could not be told about before returning.
    pub unreported: usize,
}

/// Kills a running worker's attempts at once and makes [`Worker::run`] return: the
/// second Ctrl-C. Cheap to clone.
#[derive(Clone, Debug)]
pub struct KillSwitch {
    tx: Arc<watch::Sender<bool>>,
}

impl KillSwitch {
    /// Kills every attempt's process group (SIGKILL, no grace) and stops the worker.
    /// Works before and during [`Worker::run`].
    pub fn kill_now(&self) {
        self.tx.send_replace(true);
    }
}

/// Sets up a worker: its configuration and the handlers it serves.
pub struct WorkerBuilder {
    config: WorkerConfig,
    handlers: HashMap<String, Handler>,
    problems: Vec<String>,
}

impl WorkerBuilder {
    /// A worker with `config` serving the built-in handlers ([`BUILTIN_HANDLERS`]).
    pub fn new(config: WorkerConfig) -> Self {
        let handlers = BUILTIN_HANDLERS
            .iter()
            .filter_map(|name| Some(((*name).to_owned(), Handler::builtin(name)?)))
            .collect();
        Self {
            config,
            handlers,
            problems: Vec::new(),
        }
    }

    /// Serves function jobs for handler `name` with `f`, called with the job's
    /// arguments. `Ok(value)` succeeds with `value` (encoded as JSON) as the job's
    /// result; `Err(e)` fails the attempt with `e` as its message. A panic fails the
    /// attempt too. Stops and timeouts drop the future, so `f` should await rather
    /// than block.
    pub fn handler<F, Fut, T, E>(mut self, name: impl Into<String>, f: F) -> Self
    where
        F: Fn(serde_json::Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        T: Serialize,
        E: Display,
    {
        let name = name.into();
        if name.is_empty() || name == "*" {
            self.problems
                .push(format!("`{name}` cannot be a handler name"));
            return self;
        }
        if name.starts_with("lqsm.") {
            self.problems.push(format!(
                "handler name `{name}`: names starting with `lqsm.` are reserved for built-ins"
            ));
            return self;
        }
        if self.handlers.contains_key(&name) {
            self.problems
                .push(format!("handler `{name}` is registered twice"));
            return self;
        }
        let custom: CustomHandler = Arc::new(move |args| {
            let call = f(args);
            Box::pin(async move {
                match call.await {
                    Ok(value) => serde_json::to_value(value).map_err(|e| {
                        format!("the handler's result cannot be encoded as JSON: {e}")
                    }),
                    Err(e) => Err(e.to_string()),
                }
            })
        });
        self.handlers.insert(name, Handler::Custom(custom));
        self
    }

    /// Checks the configuration, makes the worker's id and sets up memory limits
    /// (saying once, in the log, if they cannot be enforced). Contacts no server.
    pub fn build(self) -> Result<Worker, WorkerError> {
        if let Some(problem) = self.problems.first() {
            return Err(WorkerError::Config(problem.clone()));
        }
        let config = self.config;
        check(&config)?;
        let (run_as, warning) = decide_run_as(
            nix::unistd::geteuid().as_raw(),
            config.run_as.clone(),
            config.serves_commands,
        )
        .map_err(WorkerError::Config)?;
        if let Some(warning) = warning {
            tracing::warn!("{warning}");
        }
        if let Some(user) = &run_as {
            tracing::info!(user = %user.name, uid = user.uid, gid = user.gid, "command jobs run as this user");
        }
        let client = Client::new(&config.server, config.token.clone())?;
        let client = match &config.ca_file {
            Some(path) => client.with_ca_file(path)?,
            None => client,
        };
        let id = Uuid::now_v7();
        let memory_check = config.memory_check && config.serves_commands;
        let (limits, memory_note) = if !config.memory_limits {
            (
                None,
                (!memory_check).then(|| "disabled in the configuration".to_owned()),
            )
        } else if !config.serves_commands {
            (None, Some("this worker runs no commands".to_owned()))
        } else {
            match MemoryLimits::detect(id) {
                Ok(limits) => (Some(Arc::new(limits)), None),
                Err(why) if memory_check => {
                    tracing::info!(
                        "memory limits of commands are enforced by the memory check (sampling each attempt's processes), not cgroups: {why}"
                    );
                    (None, None)
                }
                Err(why) => {
                    tracing::warn!("memory limits of commands are not enforced: {why}");
                    (None, Some(why))
                }
            }
        };
        let mut handlers: Vec<String> = self.handlers.keys().cloned().collect();
        handlers.sort_unstable();
        let startup = StartupReport {
            id,
            name: config.name.clone(),
            capacity: config.capacity.clone(),
            handlers: handlers.clone(),
            serves_commands: config.serves_commands,
            memory_enforced: limits.is_some() || memory_check,
            memory_note,
        };
        let registration = lqsm_api::RegisterWorker {
            id,
            name: config.name.clone(),
            capacity: config.capacity.to_wire(),
            labels: config.labels.clone(),
            serves_commands: config.serves_commands,
            handlers,
            queues: config.queues.clone(),
            protocol: lqsm_api::WORKER_PROTOCOL,
        };
        let supervisor = (config.serves_commands && config.supervise_commands)
            .then(|| std::path::PathBuf::from(SELF_EXE));
        let settings = Settings {
            poll_wait: config.poll_wait,
            cut_short_after: config.cut_short_after,
            kill_grace: config.kill_grace,
            log_cap: config.log_cap_bytes,
            drain_grace: config.drain_grace,
            backoff_cap: config.backoff_cap,
            serves_commands: config.serves_commands,
            supervisor,
            soft_timeout_signal: config.soft_timeout_signal,
            run_as,
            memory_check,
        };
        let agent = Agent::new(
            client,
            registration,
            settings,
            self.handlers,
            limits,
            config.capacity.gpus.clone(),
        );
        let (tx, rx) = watch::channel(false);
        Ok(Worker {
            agent,
            startup,
            kill_tx: Arc::new(tx),
            kill_rx: rx,
        })
    }
}

/// Refuses settings that cannot work, naming the field.
fn check(config: &WorkerConfig) -> Result<(), WorkerError> {
    let bad = |message: String| Err(WorkerError::Config(message));
    if !config.capacity.cpus.is_finite() || config.capacity.cpus < 0.0 {
        return bad(format!(
            "capacity.cpus is {}; give a non-negative number of cores",
            config.capacity.cpus
        ));
    }
    if config.serves_commands && config.supervise_commands && !supervisor::hook_called() {
        return bad(
            "command jobs run under a supervisor that is this program started again: call `lqsm_worker::supervisor::run_if_asked()` first thing in `main` (or set `supervise_commands = false`, or `serves_commands = false`)".to_owned(),
        );
    }
    if let Some(user) = &config.run_as
        && config.serves_commands
        && !config.supervise_commands
    {
        return bad(format!(
            "run_as `{}` needs supervise_commands: the attempt's supervisor drops to the user's identity",
            user.name
        ));
    }
    if config.memory_check && config.serves_commands && !config.supervise_commands {
        return bad(
            "memory_check needs supervise_commands: the attempt's supervisor samples its processes' memory"
                .to_owned(),
        );
    }
    if config.poll_wait.as_millis() > 30_000 {
        return bad(format!(
            "poll_wait is {}; the server waits at most 30 s, and it must stay below its heartbeat timeout (20 s by default)",
            lqsm_api::human_duration(config.poll_wait)
        ));
    }
    Ok(())
}

/// A worker ready to run.
pub struct Worker {
    agent: Agent,
    startup: StartupReport,
    kill_tx: Arc<watch::Sender<bool>>,
    kill_rx: watch::Receiver<bool>,
}

impl Worker {
    /// Its id: a UUIDv7 made at build, kept for the life of the process.
    pub fn id(&self) -> Uuid {
        self.startup.id
    }

    /// What it offers and whether memory limits are enforced.
    pub fn startup(&self) -> &StartupReport {
        &self.startup
    }

    /// Whether commands' memory is limited to what they were granted (cgroup v2, or
    /// the memory check).
    pub fn memory_enforced(&self) -> bool {
        self.startup.memory_enforced
    }

    /// A handle that kills every attempt and stops [`run`](Self::run) at once.
    pub fn kill_switch(&self) -> KillSwitch {
        KillSwitch {
            tx: self.kill_tx.clone(),
        }
    }

    /// Registers and serves until `shutdown` completes, then drains: asks the server
    /// for nothing new, lets running attempts finish for up to
    /// [`WorkerConfig::drain_grace`] (then stops them), reports them, and returns.
    /// [`KillSwitch::kill_now`] ends everything at once. Returns an error only when
    /// the server refuses the worker for good (its token or its registration); its
    /// attempts are killed then.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<RunSummary, WorkerError> {
        // The sender lives in `self.kill_tx` and every KillSwitch; keep one alive for
        // the whole run so the channel never reads as closed.
        let _keep = self.kill_tx;
        self.agent.run(shutdown, self.kill_rx).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn config() -> WorkerConfig {
        let mut config = WorkerConfig::new("http://127.0.0.1:7420");
        config.memory_limits = false;
        // A test binary cannot be its own attempts' supervisor.
        config.supervise_commands = false;
        config
    }

    #[test]
    fn registered_handlers_are_served_with_the_builtins() {
        let worker = WorkerBuilder::new(config())
            .handler("billing.invoice", |_args| async {
                Ok::<_, String>(serde_json::json!(1))
            })
            .build()
            .unwrap();
        assert_eq!(
            worker.startup().handlers,
            vec![
                "billing.invoice",
                "lqsm.echo",
                "lqsm.fail",
                "lqsm.noop",
                "lqsm.sleep"
            ]
        );
        assert!(!worker.memory_enforced());
    }

    #[test]
    fn reserved_and_duplicate_handler_names_are_refused() {
        let h = |_args| async { Ok::<_, String>(()) };
        let err = WorkerBuilder::new(config())
            .handler("lqsm.echo", h)
            .build()
            .err()
            .unwrap();
        assert!(err.to_string().contains("reserved"), "{err}");
        let err = WorkerBuilder::new(config())
            .handler("a", h)
            .handler("a", h)
            .build()
            .err()
            .unwrap();
        assert!(err.to_string().contains("twice"), "{err}");
    }

    #[test]
    fn the_memory_check_needs_the_supervisor_and_counts_as_enforcement() {
        let mut checked = config();
        checked.memory_check = true;
        let err = WorkerBuilder::new(checked.clone()).build().err().unwrap();
        assert!(err.to_string().contains("supervise_commands"), "{err}");
        // A worker of functions only has nothing to check.
        checked.serves_commands = false;
        let worker = WorkerBuilder::new(checked).build().unwrap();
        assert!(!worker.memory_enforced());
    }

    #[test]
    fn a_bad_server_url_is_refused_at_build() {
        let mut config = config();
        config.server = "localhost:7420".into();
        let err = WorkerBuilder::new(config).build().err().unwrap();
        assert!(err.to_string().contains("http://"), "{err}");
    }

    #[test]
    fn each_worker_gets_its_own_stable_id() {
        let a = WorkerBuilder::new(config()).build().unwrap();
        let b = WorkerBuilder::new(config()).build().unwrap();
        assert_ne!(a.id(), b.id());
        assert_eq!(a.id(), a.startup().id);
        assert_eq!(a.id().get_version_num(), 7);
    }
}
