//! Server settings: defaults, then the optional TOML file, then flags and `LQSM_*`
//! variables (applied by the CLI). A commented example is `lqsm.example.toml`.

use lqsm_api as api;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Everything the server can be told.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// The data directory: where the embedded store keeps its files.
    pub data_dir: PathBuf,
    /// Which store backend holds the durable state.
    pub store: StoreConfig,
    /// Allow listening beyond loopback without tokens.
    pub insecure: bool,
    /// Bearer tokens and their roles. None: no authentication (loopback only).
    pub tokens: Vec<TokenConfig>,
    /// Queues created at start when missing.
    pub queues: Vec<QueueDecl>,
    /// Scheduler and timer settings.
    pub scheduler: SchedulerConfig,
    /// Size limits.
    pub limits: Limits,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7420)),
            data_dir: PathBuf::from("./lqsm-data"),
            store: StoreConfig::default(),
            insecure: false,
            tokens: Vec::new(),
            queues: Vec::new(),
            scheduler: SchedulerConfig::default(),
            limits: Limits::default(),
        }
    }
}

/// The `[store]` section: the backend and the lease this server writes under.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// The backend; `embedded` (the default) keeps everything in `data_dir`.
    pub backend: StoreBackend,
    /// The name this server holds the store's lease under. Keep it the same across restarts
    /// of one server, so that a restart takes the lease over at once.
    pub node: String,
    /// How long the lease lasts unless renewed (it is renewed every third of this).
    pub lease_ttl_ms: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            backend: StoreBackend::Embedded,
            node: "lqsm-server".to_owned(),
            lease_ttl_ms: 30_000,
        }
    }
}

/// The store backends this build has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum StoreBackend {
    /// One data directory, nothing to install (`lqsm_store::EmbeddedStore`).
    Embedded,
}

impl TryFrom<String> for StoreBackend {
    type Error = String;
    fn try_from(name: String) -> Result<Self, String> {
        match name.as_str() {
            "embedded" => Ok(Self::Embedded),
            other => Err(format!(
                "store.backend `{other}` is not a backend this build has; use \"embedded\" (the default)"
            )),
        }
    }
}

/// A bearer token and what it may do.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Who the token is: recorded as the submitter of its jobs (`submitted_by`). Tokens
    /// without one get `<role>-<n>` (the n-th unnamed token of that role) and a warning.
    #[serde(default)]
    pub name: Option<String>,
    /// The secret.
    pub token: String,
    /// admin, submitter or worker.
    pub role: RoleName,
    /// For submitters: queue patterns (`root.etl.*`, `root.default`, `*`).
    #[serde(default)]
    pub queues: Vec<String>,
}

/// The roles a token can have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoleName {
    /// Everything.
    Admin,
    /// Submit, read and cancel jobs in its queues.
    Submitter,
    /// The worker endpoints.
    Worker,
}

impl RoleName {
    /// The name in the config (`admin`, `submitter`, `worker`).
    pub fn as_str(self) -> &'static str {
        match self {
            RoleName::Admin => "admin",
            RoleName::Submitter => "submitter",
            RoleName::Worker => "worker",
        }
    }
}

impl std::fmt::Display for RoleName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A queue declared in the config.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueDecl {
    /// Its path.
    pub path: String,
    /// Its settings.
    #[serde(flatten)]
    pub settings: api::QueueSettings,
}

/// Scheduler and timer settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerConfig {
    /// A worker silent this long is lost.
    pub heartbeat_timeout_ms: u64,
    /// Finished jobs are kept this long.
    pub retention_ms: u64,
    /// After a restart, running attempts wait this long to be reclaimed.
    pub reclaim_grace_ms: u64,
    /// Longest a poll waits for work.
    pub max_poll_wait_ms: u64,
    /// Preemption on or off.
    pub preemption: bool,
    /// How long a starved queue waits before preemption acts.
    pub preemption_delay_ms: u64,
    /// Fraction of a guarantee treated as noise.
    pub preemption_dead_zone: f64,
    /// Rate limits per handler (task) name, across every queue, as Celery's
    /// `@task(rate_limit=...)`: `"billing.invoice" = { rate = "10/m", burst = 1 }`.
    pub handler_rate_limits: BTreeMap<String, lqsm_core::RateLimit>,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            heartbeat_timeout_ms: 10_000,
            retention_ms: 24 * 3600 * 1000,
            reclaim_grace_ms: 30_000,
            max_poll_wait_ms: 4_000,
            preemption: false,
            preemption_delay_ms: 15_000,
            preemption_dead_zone: 0.05,
            handler_rate_limits: BTreeMap::new(),
        }
    }
}

impl SchedulerConfig {
    /// The core's settings.
    pub fn core(&self) -> lqsm_core::Config {
        let mut c = lqsm_core::Config {
            heartbeat_timeout: Duration::from_millis(self.heartbeat_timeout_ms),
            retention: Duration::from_millis(self.retention_ms),
            handler_rate_limits: self.handler_rate_limits.clone(),
            ..lqsm_core::Config::default()
        };
        c.preemption.enabled = self.preemption;
        c.preemption.delay = Duration::from_millis(self.preemption_delay_ms);
        c.preemption.dead_zone = self.preemption_dead_zone;
        c
    }
}

/// Size limits of requests.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest job (its kind: argv, env or args), bytes.
    pub max_job_bytes: usize,
    /// Largest request body, bytes.
    pub max_request_bytes: usize,
    /// Most jobs in one batch.
    pub max_batch: usize,
    /// A job whose kind (argv, env, args) is larger than this stays in the store and
    /// is read when dispatched, so memory grows with the number of jobs, not their size.
    pub inline_payload_bytes: usize,
    /// Most captured output kept per job (the tail is kept).
    pub max_log_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_job_bytes: 1 << 20,
            max_request_bytes: 16 << 20,
            max_batch: 10_000,
            inline_payload_bytes: 1024,
            max_log_bytes: 1 << 20,
        }
    }
}

impl ServerConfig {
    /// Reads a TOML file on top of the defaults.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_parses() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../lqsm.example.toml");
        let text = std::fs::read_to_string(path).expect("example exists");
        let config = ServerConfig::from_toml(&text).expect("example parses");
        assert_eq!(config.tokens.len(), 3);
        assert_eq!(config.queues.len(), 4);
        assert_eq!(config.queues[1].path, "root.etl.daily");
        let limit = config.scheduler.core().handler_rate_limits["billing.invoice"];
        assert_eq!((limit.rate.to_string(), limit.burst), ("10/m".into(), 1));
    }

    #[test]
    fn a_bad_handler_rate_limit_is_refused_saying_how_to_write_it() {
        let err = ServerConfig::from_toml(
            "[scheduler.handler_rate_limits]\n\"h\" = { rate = \"10 per second\" }\n",
        )
        .expect_err("bad rate");
        assert!(err.contains("100/s"), "{err}");
    }

    #[test]
    fn the_store_defaults_to_the_embedded_backend() {
        let config = ServerConfig::from_toml("").expect("empty config");
        assert_eq!(config.store.backend, StoreBackend::Embedded);
        let config = ServerConfig::from_toml("[store]\nbackend = \"embedded\"\nnode = \"a\"\n")
            .expect("explicit embedded");
        assert_eq!(config.store.node, "a");
    }

    #[test]
    fn an_unknown_store_backend_is_refused_naming_the_field() {
        let err = ServerConfig::from_toml("[store]\nbackend = \"postgres\"\n")
            .expect_err("no such backend");
        assert!(err.contains("store.backend `postgres`"), "{err}");
        assert!(err.contains("embedded"), "{err}");
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let err = ServerConfig::from_toml("listen = \"127.0.0.1:1\"\nlisten_port = 5\n")
            .expect_err("typo");
        assert!(err.contains("listen_port"), "{err}");
    }
}
