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
    /// The URL other servers reach this one at (followers hand calls to the leader
    /// there). Default: `http://` and the listening address, with this machine's host
    /// name when listening on every interface.
    pub advertise: Option<String>,
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
    /// Periodic schedules created at start when missing (`[[schedules]]`, the fields of
    /// `POST /v1/schedules`).
    pub schedules: Vec<api::CreateSchedule>,
    /// Scheduler and timer settings.
    pub scheduler: SchedulerConfig,
    /// Size limits.
    pub limits: Limits,
    /// A file the audit log appends to, one JSON line per call that changed the queue
    /// tree, the schedules or a worker's state (it goes to the log either way).
    pub audit_log: Option<PathBuf>,
    /// HTTPS for the API.
    pub tls: TlsConfig,
    /// The worker autoscaler (`[autoscale]`, `[[autoscale.pools]]`).
    pub autoscale: AutoscaleConfig,
    /// Where the scheduler reads the wall clock (not a setting: tests inject one they
    /// can step).
    #[serde(skip)]
    pub wall_clock: crate::resource_manager::WallClock,
    /// The policies queues and the cluster select by name: the built-ins, and those a
    /// program embedding the server registers (not a setting of the file: code).
    #[serde(skip)]
    pub policies: lqsm_core::Policies,
}

/// The `[tls]` section. With `cert_file` and `key_file` the API is served over HTTPS
/// only (rustls: TLS 1.2 and 1.3), and the default advertised URL is `https://`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// The PEM certificate chain the server presents, its own certificate first.
    pub cert_file: Option<PathBuf>,
    /// The PEM private key of that certificate.
    pub key_file: Option<PathBuf>,
    /// PEM CA certificates trusted, besides the system's, when this server calls
    /// another (a follower passing a call to its leader).
    pub ca_file: Option<PathBuf>,
}

impl TlsConfig {
    /// Whether the API is served over HTTPS.
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some()
    }

    /// The scheme of the API's URLs: `https` with TLS, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.enabled() { "https" } else { "http" }
    }

    /// Refuses half a setting: a certificate without its key, or a key alone.
    pub fn check(&self) -> Result<(), String> {
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) => {
                Err("tls.cert_file is set but tls.key_file is not: give both".into())
            }
            (None, Some(_)) => {
                Err("tls.key_file is set but tls.cert_file is not: give both".into())
            }
            _ => Ok(()),
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7420)),
            advertise: None,
            data_dir: PathBuf::from("./lqsm-data"),
            store: StoreConfig::default(),
            insecure: false,
            tokens: Vec::new(),
            queues: Vec::new(),
            schedules: Vec::new(),
            scheduler: SchedulerConfig::default(),
            limits: Limits::default(),
            audit_log: None,
            tls: TlsConfig::default(),
            autoscale: AutoscaleConfig::default(),
            wall_clock: crate::resource_manager::WallClock::default(),
            policies: lqsm_core::Policies::default(),
        }
    }
}

/// The `[store]` section: the backend and the lease this server writes under.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// The backend; `embedded` (the default) keeps everything in `data_dir`.
    pub backend: StoreBackend,
    /// The name this server holds the store's lease under; unique among the servers
    /// sharing a store. Keep it the same across restarts of one server, so that a restart
    /// takes the lease over at once. Default: host name and port, e.g. `db1:7420`.
    pub node: Option<String>,
    /// How long the lease lasts unless renewed: how long a failed leader's successor
    /// waits before taking over.
    pub lease_ttl_ms: u64,
    /// How often the leader renews its lease (well under `lease_ttl_ms`, so that a slow
    /// renewal or two never costs it the lease).
    pub lease_renew_ms: u64,
    /// `postgres` only: the database, as a URL (`postgresql://user@host:5432/db`) or libpq
    /// `key=value` pairs. The password and TLS mode may instead come from
    /// `password_file`/`sslmode` or the environment (`PGPASSWORD`, `PGSSLMODE`).
    pub url: Option<String>,
    /// `postgres` only: the schema LQSM's tables live in (default `lqsm`).
    pub schema: Option<String>,
    /// `postgres` only: a file holding the password, used when the URL has none.
    pub password_file: Option<PathBuf>,
    /// `postgres` only: `disable`, `prefer` or `require`, used when the URL has none.
    pub sslmode: Option<String>,
    /// `postgres` only: certificate authorities (PEM) to check the server's certificate.
    pub ssl_root_cert: Option<PathBuf>,
    /// `postgres` only: the most connections this server opens (default 8).
    pub max_connections: Option<usize>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            backend: StoreBackend::Embedded,
            node: None,
            lease_ttl_ms: 5_000,
            lease_renew_ms: 1_000,
            url: None,
            schema: None,
            password_file: None,
            sslmode: None,
            ssl_root_cert: None,
            max_connections: None,
        }
    }
}

impl StoreConfig {
    /// The PostgreSQL options of `backend = "postgres"`, or why they cannot be used.
    pub fn postgres_options(&self) -> Result<lqsm_store_postgres::PostgresOptions, String> {
        let url = self.url.clone().ok_or_else(|| {
            "store.url is required with store.backend = \"postgres\" (e.g. \"postgresql://lqsm@db1:5432/lqsm\")"
                .to_owned()
        })?;
        let mut options = lqsm_store_postgres::PostgresOptions::new(url);
        if let Some(schema) = &self.schema {
            options.schema.clone_from(schema);
        }
        options.password_file.clone_from(&self.password_file);
        options.ssl_root_cert.clone_from(&self.ssl_root_cert);
        if let Some(mode) = &self.sslmode {
            options.ssl_mode = Some(mode.parse().map_err(|e| format!("store.sslmode: {e}"))?);
        }
        if let Some(n) = self.max_connections {
            options.max_connections = n;
        }
        Ok(options)
    }

    /// Refuses settings that do not fit the backend (a URL for the embedded store, a
    /// PostgreSQL store without one).
    pub fn check(&self) -> Result<(), String> {
        if self.lease_renew_ms == 0 || self.lease_renew_ms.saturating_mul(2) > self.lease_ttl_ms {
            return Err(format!(
                "store.lease_renew_ms ({}) must be above 0 and at most half of store.lease_ttl_ms ({}), so that a late renewal does not cost the lease",
                self.lease_renew_ms, self.lease_ttl_ms
            ));
        }
        if self.node.as_deref().is_some_and(str::is_empty) {
            return Err("store.node must not be empty".to_owned());
        }
        match self.backend {
            StoreBackend::Postgres => self.postgres_options().map(|_| ()),
            StoreBackend::Embedded => {
                let postgres_only = [
                    ("url", self.url.is_some()),
                    ("schema", self.schema.is_some()),
                    ("password_file", self.password_file.is_some()),
                    ("sslmode", self.sslmode.is_some()),
                    ("ssl_root_cert", self.ssl_root_cert.is_some()),
                    ("max_connections", self.max_connections.is_some()),
                ];
                match postgres_only.iter().find(|(_, set)| *set) {
                    Some((name, _)) => Err(format!(
                        "store.{name} is a setting of the PostgreSQL store, but store.backend is \"embedded\"; set backend = \"postgres\" or remove it"
                    )),
                    None => Ok(()),
                }
            }
        }
    }
}

/// The `[autoscale]` section: pools of workers the leader sizes to the work waiting.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AutoscaleConfig {
    /// Whether the leader runs the autoscaler (default false).
    pub enabled: bool,
    /// How often the pools are evaluated, ms (default 5000).
    pub interval_ms: u64,
    /// The pools (`[[autoscale.pools]]`).
    pub pools: Vec<PoolConfig>,
}

impl Default for AutoscaleConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            interval_ms: 5_000,
            pools: Vec::new(),
        }
    }
}

/// The label every worker of an autoscaled pool carries, with the pool's name: what the
/// autoscaler counts and drains are the workers carrying it (those a previous leader
/// started included), never a worker started by hand without it.
pub const POOL_LABEL: &str = "lqsm.pool";

/// How a pool's workers are started and stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// `lqsm worker` processes on the leader's machine.
    Local,
    /// An operator's command, told the pool and the number of workers wanted.
    Exec,
}

impl ProviderKind {
    /// Its name in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Local => "local",
            ProviderKind::Exec => "exec",
        }
    }
}

/// One `[[autoscale.pools]]` entry.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// Its name, unique among pools (1 to 128 characters).
    pub name: String,
    /// Labels its workers carry (besides `lqsm.pool = <name>`, always added); jobs
    /// select them with their selector.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Fewest workers kept; 0 lets the pool scale to zero (default 0).
    #[serde(default)]
    pub min: u32,
    /// Most workers, at least 1.
    pub max: u32,
    /// What one worker offers (`{ cpu = 2, memory_mib = 4096 }`; default 1 core and
    /// 1024 MiB): a job that does not fit is no reason to start one.
    #[serde(default)]
    pub worker_capacity: lqsm_api::Resources,
    /// The autoscaling policy (default `target-backlog`).
    #[serde(default = "default_policy")]
    pub policy: String,
    /// Waiting jobs per worker the built-in policy aims at (default 2).
    #[serde(default)]
    pub target_backlog_per_worker: Option<f64>,
    /// Share of the workers' capacity the built-in policy keeps in use (default 0.8).
    #[serde(default)]
    pub target_utilisation: Option<f64>,
    /// Least time between two scale-ups, ms (default 30000).
    #[serde(default)]
    pub scale_up_cooldown_ms: Option<u64>,
    /// Least time between a scale-down and the scale event before it, ms (default 120000).
    #[serde(default)]
    pub scale_down_cooldown_ms: Option<u64>,
    /// A worker is drained only after running nothing this long, ms (default 300000).
    #[serde(default)]
    pub idle_before_scale_down_ms: Option<u64>,
    /// Workers asked for and not registered within this are counted no more, ms
    /// (default 300000).
    #[serde(default)]
    pub registration_timeout_ms: Option<u64>,
    /// `local` or `exec`.
    pub provider: ProviderKind,
    /// `exec` only: the program run as `command <pool> <desired>` (no shell), with
    /// `LQSM_POOL`, `LQSM_DESIRED`, `LQSM_CURRENT` and `LQSM_DRAIN_WORKERS` set.
    #[serde(default)]
    pub command: Option<PathBuf>,
    /// `exec` only: how long the command may run before it is killed, ms (default 60000).
    #[serde(default)]
    pub command_timeout_ms: Option<u64>,
    /// `local` only: the program started as the worker (default: this server's own
    /// executable, `lqsm`).
    #[serde(default)]
    pub worker_binary: Option<PathBuf>,
    /// `local` only: extra arguments of `lqsm worker` (`["--queues", "root.gpu"]`).
    #[serde(default)]
    pub worker_args: Vec<String>,
    /// `local` only: a drained worker still running attempts this long after its drain
    /// is stopped anyway (SIGTERM: the worker's own shutdown then lets them finish
    /// within its drain grace), ms (default 3600000).
    #[serde(default)]
    pub drain_timeout_ms: Option<u64>,
    /// An environment variable of the server holding the token the workers use
    /// (passed to them in `LQSM_TOKEN`, never on a command line).
    #[serde(default)]
    pub token_env: Option<String>,
    /// A file holding that token instead.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

fn default_policy() -> String {
    lqsm_core::autoscale::TARGET_BACKLOG.to_owned()
}

impl PoolConfig {
    /// The core's pool: its settings, with `lqsm.pool = <name>` among its labels.
    /// `index` names the entry in errors (`autoscale.pools[1].worker_capacity.cpu`).
    pub fn spec(&self, index: usize) -> Result<lqsm_core::PoolSpec, String> {
        let defaults = lqsm_core::PoolSpec::default();
        let capacity = crate::convert::resources(
            &format!("autoscale.pools[{index}].worker_capacity"),
            &self.worker_capacity,
            &defaults.worker_capacity,
        )
        .map_err(|e| {
            format!(
                "{}: {}",
                e.detail.field.unwrap_or_default(),
                e.detail.message
            )
        })?;
        let ms = |v: Option<u64>, default: Duration| v.map_or(default, Duration::from_millis);
        let mut labels = self.labels.clone();
        labels.insert(POOL_LABEL.to_owned(), self.name.clone());
        Ok(lqsm_core::PoolSpec {
            name: self.name.clone(),
            labels,
            min: self.min,
            max: self.max,
            worker_capacity: capacity,
            target_backlog_per_worker: self
                .target_backlog_per_worker
                .unwrap_or(defaults.target_backlog_per_worker),
            target_utilisation: self
                .target_utilisation
                .unwrap_or(defaults.target_utilisation),
            scale_up_cooldown: ms(self.scale_up_cooldown_ms, defaults.scale_up_cooldown),
            scale_down_cooldown: ms(self.scale_down_cooldown_ms, defaults.scale_down_cooldown),
            idle_before_scale_down: ms(
                self.idle_before_scale_down_ms,
                defaults.idle_before_scale_down,
            ),
            registration_timeout: ms(self.registration_timeout_ms, defaults.registration_timeout),
            policy: self.policy.clone(),
        })
    }

    /// How long a drained worker of the `local` provider may keep running attempts.
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_millis(self.drain_timeout_ms.unwrap_or(3_600_000))
    }

    /// How long the `exec` provider's command may run.
    pub fn command_timeout(&self) -> Duration {
        Duration::from_millis(self.command_timeout_ms.unwrap_or(60_000))
    }

    /// The workers' token, from `token_env` or `token_file`, if either is set.
    pub fn token(&self, index: usize) -> Result<Option<String>, String> {
        let field = |name: &str| format!("autoscale.pools[{index}].{name}");
        match (&self.token_env, &self.token_file) {
            (None, None) => Ok(None),
            (Some(var), None) => secret_from_env(var, &field("token_env")).map(Some),
            (None, Some(path)) => secret_from_file(path, &field("token_file")).map(Some),
            (Some(_), Some(_)) => Err(format!(
                "{}: give the workers' token one way only: `token_env` or `token_file`",
                field("token_env")
            )),
        }
    }
}

/// A secret held in the environment variable `var`, trimmed; `field` names the setting
/// in errors.
fn secret_from_env(var: &str, field: &str) -> Result<String, String> {
    match std::env::var(var) {
        Ok(secret) if !secret.trim().is_empty() => Ok(secret.trim().to_owned()),
        _ => Err(format!(
            "{field}: the environment variable {var} is unset or empty"
        )),
    }
}

/// A secret held in the file `path` (a mounted secret), trimmed; `field` names the
/// setting in errors.
fn secret_from_file(path: &std::path::Path, field: &str) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{field}: cannot read {} ({e})", path.display()))?;
    match text.trim() {
        "" => Err(format!("{field}: {} is empty", path.display())),
        secret => Ok(secret.to_owned()),
    }
}

impl AutoscaleConfig {
    /// Checks every setting but the policy names (see [`AutoscaleConfig::specs`]); the
    /// error names the field, `autoscale.pools[1].max`.
    pub fn check(&self) -> Result<(), String> {
        if self.interval_ms < 100 {
            return Err(format!(
                "autoscale.interval_ms: {} is below the least interval, 100 ms",
                self.interval_ms
            ));
        }
        let mut policies = lqsm_core::Policies::default();
        // Any name passes here: only the start knows every registered policy.
        for pool in &self.pools {
            if !pool.policy.is_empty() && policies.autoscaling(&pool.policy).is_err() {
                policies.register_autoscaling(std::sync::Arc::new(NamedOnly(pool.policy.clone())));
            }
        }
        self.specs(&policies).map(|_| ())
    }

    /// The core's pools, every setting checked against the registered `policies`; the
    /// error names the field, `autoscale.pools[1].max`.
    pub fn specs(
        &self,
        policies: &lqsm_core::Policies,
    ) -> Result<Vec<lqsm_core::PoolSpec>, String> {
        let mut specs = Vec::with_capacity(self.pools.len());
        for (i, pool) in self.pools.iter().enumerate() {
            let field = |name: &str| format!("autoscale.pools[{i}].{name}");
            let specific = |name: &str, set: bool, provider: ProviderKind| {
                if set {
                    Err(format!(
                        "{}: a setting of the {} provider, but this pool's provider is `{}`",
                        field(name),
                        provider.as_str(),
                        pool.provider.as_str()
                    ))
                } else {
                    Ok(())
                }
            };
            match pool.provider {
                ProviderKind::Exec => {
                    if pool.command.is_none() {
                        return Err(format!(
                            "{}: the exec provider needs the command it runs as `command <pool> <desired>`",
                            field("command")
                        ));
                    }
                    specific(
                        "worker_binary",
                        pool.worker_binary.is_some(),
                        ProviderKind::Local,
                    )?;
                    specific(
                        "worker_args",
                        !pool.worker_args.is_empty(),
                        ProviderKind::Local,
                    )?;
                    specific(
                        "drain_timeout_ms",
                        pool.drain_timeout_ms.is_some(),
                        ProviderKind::Local,
                    )?;
                }
                ProviderKind::Local => {
                    specific("command", pool.command.is_some(), ProviderKind::Exec)?;
                    specific(
                        "command_timeout_ms",
                        pool.command_timeout_ms.is_some(),
                        ProviderKind::Exec,
                    )?;
                }
            }
            if pool.command_timeout_ms == Some(0) {
                return Err(format!(
                    "{}: must be above zero",
                    field("command_timeout_ms")
                ));
            }
            if pool.token_env.is_some() && pool.token_file.is_some() {
                return Err(format!(
                    "{}: give the workers' token one way only: `token_env` or `token_file`",
                    field("token_env")
                ));
            }
            if pool.labels.contains_key(POOL_LABEL) {
                return Err(format!(
                    "{}: `{POOL_LABEL}` is set by the autoscaler to the pool's name; leave it out",
                    field("labels")
                ));
            }
            specs.push(pool.spec(i)?);
        }
        lqsm_core::autoscale::validate_pools(&specs, policies).map_err(|e| {
            let index = self
                .pools
                .iter()
                .position(|p| p.name == e.pool)
                .unwrap_or_default();
            // The core names durations without their unit; the config's names carry it.
            let field = match e.field.as_str() {
                "registration_timeout" => "registration_timeout_ms".to_owned(),
                other => other.to_owned(),
            };
            // A duplicate name blames the second pool of that name.
            let index = if e.field == "name" && e.reason.contains("another pool") {
                self.pools
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| p.name == e.pool)
                    .nth(1)
                    .map_or(index, |(i, _)| i)
            } else {
                index
            };
            format!("autoscale.pools[{index}].{field}: {}", e.reason)
        })?;
        Ok(specs)
    }
}

/// A stand-in for a policy a program may register later, so that the file's check
/// accepts its name.
#[derive(Debug)]
struct NamedOnly(String);

impl lqsm_core::AutoscalingPolicy for NamedOnly {
    fn name(&self) -> &str {
        &self.0
    }
    fn decide(
        &self,
        _pool: &lqsm_core::PoolSpec,
        _snapshot: &lqsm_core::PoolSnapshot,
        _now: lqsm_core::Timestamp,
    ) -> lqsm_core::autoscale::ScaleDecision {
        lqsm_core::autoscale::ScaleDecision {
            desired: 0,
            reason: String::new(),
        }
    }
}

/// The store backends this build has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum StoreBackend {
    /// One data directory, nothing to install (`lqsm_store::EmbeddedStore`).
    Embedded,
    /// A PostgreSQL database (`lqsm_store_postgres::PostgresStore`), at `store.url`.
    Postgres,
}

impl TryFrom<String> for StoreBackend {
    type Error = String;
    fn try_from(name: String) -> Result<Self, String> {
        match name.as_str() {
            "embedded" => Ok(Self::Embedded),
            "postgres" => Ok(Self::Postgres),
            other => Err(format!(
                "store.backend `{other}` is not a backend this build has; use \"embedded\" (the default) or \"postgres\""
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
    /// The secret, inline. Better kept out of the config file: `token_file` or
    /// `token_env` instead (exactly one of the three).
    #[serde(default)]
    pub token: String,
    /// A file holding the secret (surrounding whitespace ignored), e.g. a mounted secret.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// An environment variable holding the secret.
    #[serde(default)]
    pub token_env: Option<String>,
    /// admin, queue-admin, submitter, reader or worker.
    pub role: RoleName,
    /// For queue-admins, submitters and readers: queue patterns (`root.etl.*`,
    /// `root.default`, `*`). A queue-admin's `root.etl.*` is the subtree it administers.
    #[serde(default)]
    pub queues: Vec<String>,
}

impl TokenConfig {
    /// The secret, from wherever this entry says it is; `index` names the entry in errors.
    pub fn secret(&self, index: usize) -> Result<String, String> {
        let field = |name: &str| format!("tokens[{index}].{name}");
        match (self.token.is_empty(), &self.token_file, &self.token_env) {
            (false, None, None) => Ok(self.token.clone()),
            (true, Some(path), None) => secret_from_file(path, &field("token_file")),
            (true, None, Some(var)) => secret_from_env(var, &field("token_env")),
            (true, None, None) => Err(format!(
                "{}: each token needs its secret: `token`, `token_file` or `token_env`",
                field("token")
            )),
            _ => Err(format!(
                "{}: give the secret one way only: `token`, `token_file` or `token_env`",
                field("token")
            )),
        }
    }
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
    /// Read jobs, queues and schedules in its queues; change nothing.
    Reader,
    /// Administer the queues of its subtrees (create, update, delete, stop, start,
    /// drain the queues below each subtree's root; stop, start, drain the root) and do
    /// what a submitter does in them.
    #[serde(rename = "queue-admin", alias = "queue_admin")]
    QueueAdmin,
}

impl RoleName {
    /// The name in the config (`admin`, `submitter`, `worker`, `reader`, `queue-admin`).
    pub fn as_str(self) -> &'static str {
        match self {
            RoleName::Admin => "admin",
            RoleName::Submitter => "submitter",
            RoleName::Worker => "worker",
            RoleName::Reader => "reader",
            RoleName::QueueAdmin => "queue-admin",
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
    /// A lost worker stays listed this long, then is forgotten.
    pub lost_worker_retention_ms: u64,
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
            heartbeat_timeout_ms: 20_000,
            retention_ms: 24 * 3600 * 1000,
            lost_worker_retention_ms: 600_000,
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
            lost_worker_retention: Duration::from_millis(self.lost_worker_retention_ms),
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
    /// Most failed authentications a client address may make a minute before its calls
    /// are refused (`429`) until one refills; 0 turns the limit off.
    pub max_failed_auth_per_minute: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_job_bytes: 1 << 20,
            max_request_bytes: 16 << 20,
            max_batch: 10_000,
            inline_payload_bytes: 1024,
            max_log_bytes: 1 << 20,
            max_failed_auth_per_minute: 20,
        }
    }
}

impl ServerConfig {
    /// Reads a TOML file on top of the defaults.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        let config: Self = toml::from_str(text).map_err(|e| e.to_string())?;
        config.store.check()?;
        // Policy names are checked at start, once a program embedding the server has
        // registered its own.
        config.autoscale.check()?;
        Ok(config)
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
        assert_eq!(config.tokens.len(), 5);
        assert_eq!(config.tokens[2].role, RoleName::QueueAdmin);
        assert_eq!(config.tokens[2].queues, ["root.etl.*"]);
        assert_eq!(config.queues.len(), 6);
        assert_eq!(config.queues[1].path, "root.etl.daily");
        assert_eq!(
            config.queues[4].settings.fairness_key.as_deref(),
            Some("user")
        );
        let template = config.queues[5]
            .settings
            .template
            .as_ref()
            .expect("a template");
        assert_eq!(
            (
                template.settings.capacity,
                template.idle_ms,
                template.max_queues
            ),
            (Some(10.0), Some(600_000), Some(500))
        );
        let auto = template
            .settings
            .auto_resources
            .as_ref()
            .expect("right-sizing");
        assert_eq!(auto.max.as_ref().and_then(|m| m.memory_mib), Some(8192));
        let limit = config.scheduler.core().handler_rate_limits["billing.invoice"];
        assert_eq!((limit.rate.to_string(), limit.burst), ("10/m".into(), 1));
        assert!(!config.autoscale.enabled);
        assert_eq!(config.autoscale.pools.len(), 2);
        assert_eq!(config.autoscale.pools[1].provider, ProviderKind::Exec);
        let specs = config
            .autoscale
            .specs(&lqsm_core::Policies::default())
            .expect("valid pools");
        assert_eq!(specs[0].labels[POOL_LABEL], "cpu");
        assert_eq!(specs[0].labels["kind"], "cpu");
        assert_eq!(specs[1].worker_capacity.gpu, 1);
        assert_eq!(specs[0].scale_down_cooldown, Duration::from_secs(120));
    }

    fn pool_error(pools: &str) -> String {
        ServerConfig::from_toml(&format!("[autoscale]\nenabled = true\n{pools}"))
            .expect_err("refused")
    }

    #[test]
    fn autoscale_settings_are_refused_naming_the_field() {
        let local = "[[autoscale.pools]]\nname = \"a\"\nprovider = \"local\"\nmax = 2\n";
        let err = pool_error(&format!(
            "{local}[[autoscale.pools]]\nname = \"b\"\nprovider = \"local\"\nmin = 3\nmax = 0\n"
        ));
        assert!(err.starts_with("autoscale.pools[1].max:"), "{err}");
        let err = pool_error(&format!(
            "{local}[[autoscale.pools]]\nname = \"b\"\nprovider = \"local\"\nmin = 3\nmax = 2\n"
        ));
        assert!(
            err.starts_with("autoscale.pools[1].min: 3 is above max"),
            "{err}"
        );
        let err = pool_error(&format!("{local}{local}"));
        assert!(err.starts_with("autoscale.pools[1].name:"), "{err}");
        let err = pool_error("[[autoscale.pools]]\nname = \"e\"\nprovider = \"exec\"\nmax = 2\n");
        assert!(err.starts_with("autoscale.pools[0].command:"), "{err}");
        let err = pool_error(&format!("{local}command = \"/bin/true\"\n"));
        assert!(err.starts_with("autoscale.pools[0].command:"), "{err}");
        let err = pool_error(&format!("{local}target_utilisation = 1.5\n"));
        assert!(
            err.starts_with("autoscale.pools[0].target_utilisation:"),
            "{err}"
        );
        let err = pool_error(&format!("{local}worker_capacity = {{ cpu = -1 }}\n"));
        assert!(
            err.starts_with("autoscale.pools[0].worker_capacity.cpu:"),
            "{err}"
        );
        let err = pool_error(&format!("{local}registration_timeout_ms = 0\n"));
        assert!(
            err.starts_with("autoscale.pools[0].registration_timeout_ms:"),
            "{err}"
        );
        let err = pool_error(&format!("{local}labels = {{ \"lqsm.pool\" = \"x\" }}\n"));
        assert!(err.starts_with("autoscale.pools[0].labels:"), "{err}");
        let err = pool_error(&format!("{local}token_env = \"A\"\ntoken_file = \"/f\"\n"));
        assert!(err.starts_with("autoscale.pools[0].token_env:"), "{err}");
        let err = pool_error(&format!("{local}providr = \"local\"\n"));
        assert!(err.contains("providr"), "{err}");
        let err = ServerConfig::from_toml("[autoscale]\ninterval_ms = 0\n").expect_err("too often");
        assert!(err.starts_with("autoscale.interval_ms:"), "{err}");
    }

    #[test]
    fn an_unknown_policy_passes_the_file_and_is_refused_at_start_naming_the_field() {
        let config = ServerConfig::from_toml(
            "[autoscale]\nenabled = true\n[[autoscale.pools]]\nname = \"a\"\nprovider = \"local\"\nmax = 2\npolicy = \"mine\"\n",
        )
        .expect("a program may register `mine`");
        let err = crate::autoscale::Setup::from_config(&config).expect_err("not registered");
        assert!(
            err.starts_with("autoscale.pools[0].policy: unknown policy `mine`"),
            "{err}"
        );
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
        assert_eq!(config.store.node.as_deref(), Some("a"));
    }

    #[test]
    fn the_postgres_backend_takes_its_url_and_secrets_from_the_store_section() {
        let config = ServerConfig::from_toml(
            "[store]\nbackend = \"postgres\"\nurl = \"postgresql://lqsm@db1/lqsm\"\nschema = \"prod\"\nsslmode = \"require\"\npassword_file = \"/etc/lqsm/pg\"\n",
        )
        .expect("a postgres store");
        let options = config.store.postgres_options().expect("usable");
        assert_eq!(options.url, "postgresql://lqsm@db1/lqsm");
        assert_eq!(options.schema, "prod");
        assert_eq!(
            options.ssl_mode,
            Some(lqsm_store_postgres::SslMode::Require)
        );
        assert_eq!(
            options.password_file.as_deref(),
            Some(std::path::Path::new("/etc/lqsm/pg"))
        );
    }

    #[test]
    fn store_settings_that_do_not_fit_the_backend_are_refused_naming_the_field() {
        let err = ServerConfig::from_toml("[store]\nbackend = \"postgres\"\n").expect_err("no url");
        assert!(err.contains("store.url is required"), "{err}");
        let err = ServerConfig::from_toml("[store]\nurl = \"postgresql://db1/lqsm\"\n")
            .expect_err("a url for the embedded store");
        assert!(
            err.contains("store.url is a setting of the PostgreSQL store"),
            "{err}"
        );
        let err = ServerConfig::from_toml(
            "[store]\nbackend = \"postgres\"\nurl = \"postgresql://db1/x\"\nsslmode = \"maybe\"\n",
        )
        .expect_err("an unknown sslmode");
        assert!(err.contains("store.sslmode"), "{err}");
    }

    #[test]
    fn an_unknown_store_backend_is_refused_naming_the_field() {
        let err =
            ServerConfig::from_toml("[store]\nbackend = \"mysql\"\n").expect_err("no such backend");
        assert!(err.contains("store.backend `mysql`"), "{err}");
        assert!(err.contains("embedded"), "{err}");
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let err = ServerConfig::from_toml("listen = \"127.0.0.1:1\"\nlisten_port = 5\n")
            .expect_err("typo");
        assert!(err.contains("listen_port"), "{err}");
    }
}
