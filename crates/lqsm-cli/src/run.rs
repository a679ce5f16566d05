//! The long-running commands: `server`, `worker` and `standalone`.

use crate::units::{parse_mib, parse_pair, parse_resource};
use anyhow::Context;
use lqsm_server::config::ServerConfig;
use lqsm_worker::{WorkerBuilder, WorkerConfig};
use std::net::SocketAddr;
use std::path::PathBuf;
use tokio::sync::watch;

/// Settings of `lqsm server` (and of the server inside `lqsm standalone`).
#[derive(clap::Args, Clone)]
pub struct ServerArgs {
    /// TOML settings file (see lqsm.example.toml).
    #[arg(long, env = "LQSM_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:7420].
    #[arg(long, env = "LQSM_LISTEN")]
    listen: Option<SocketAddr>,
    /// Data directory [default: ./lqsm-data].
    #[arg(long, env = "LQSM_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Where the state is kept: `embedded` (in the data directory; the default) or a
    /// PostgreSQL URL (`postgresql://user@host:5432/database`; the password may come from
    /// PGPASSWORD).
    #[arg(
        long,
        env = "LQSM_STORE",
        value_name = "embedded|URL",
        hide_env_values = true
    )]
    store: Option<String>,
    /// The name this server leads under, unique among the servers sharing a PostgreSQL
    /// store and kept across its restarts [default: host name and port].
    #[arg(long, env = "LQSM_NODE")]
    node: Option<String>,
    /// The URL the other servers reach this one at [default: http:// and --listen, with
    /// the host name when listening on every interface].
    #[arg(long, env = "LQSM_ADVERTISE")]
    advertise: Option<String>,
    /// Listen beyond loopback even without tokens.
    #[arg(long, env = "LQSM_INSECURE")]
    insecure: bool,
    /// Append the audit log (who changed queues, schedules, workers) to this file, one
    /// JSON line a call.
    #[arg(long, env = "LQSM_AUDIT_LOG")]
    audit_log: Option<std::path::PathBuf>,
    /// Serve HTTPS with this PEM certificate chain (with --tls-key).
    #[arg(long, env = "LQSM_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "LQSM_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// An admin token (adds to those in the config file; its jobs are submitted by
    /// `command-line-admin`).
    #[arg(long, env = "LQSM_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Heartbeat timeout of workers, ms [default: 20000].
    #[arg(long, env = "LQSM_HEARTBEAT_TIMEOUT_MS")]
    heartbeat_timeout_ms: Option<u64>,
    /// How long finished jobs are kept, ms [default: 86400000].
    #[arg(long, env = "LQSM_RETENTION_MS")]
    retention_ms: Option<u64>,
    /// After a restart, how long running attempts wait for their workers, ms [default: 30000].
    #[arg(long, env = "LQSM_RECLAIM_GRACE_MS")]
    reclaim_grace_ms: Option<u64>,
}

impl ServerArgs {
    fn into_config(self) -> anyhow::Result<ServerConfig> {
        let mut config = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read config file {}", path.display()))?;
                ServerConfig::from_toml(&text)
                    .map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))?
            }
            None => ServerConfig::default(),
        };
        if let Some(v) = self.listen {
            config.listen = v;
        }
        if let Some(v) = self.data_dir {
            config.data_dir = v;
        }
        match self.store.as_deref() {
            None => {}
            Some("embedded") => {
                // Whatever a config file said of a PostgreSQL store no longer applies.
                config.store = lqsm_server::config::StoreConfig {
                    node: config.store.node.clone(),
                    lease_ttl_ms: config.store.lease_ttl_ms,
                    lease_renew_ms: config.store.lease_renew_ms,
                    ..lqsm_server::config::StoreConfig::default()
                };
            }
            Some(url)
                if url.starts_with("postgres://")
                    || url.starts_with("postgresql://")
                    || url.contains('=') =>
            {
                config.store.backend = lqsm_server::config::StoreBackend::Postgres;
                config.store.url = Some(url.to_owned());
            }
            Some(other) => anyhow::bail!(
                "--store `{other}` is neither `embedded` nor a PostgreSQL URL (postgresql://user@host:5432/database, or libpq's host=... dbname=...)"
            ),
        }
        if let Some(node) = self.node {
            config.store.node = Some(node);
        }
        if let Some(advertise) = self.advertise {
            config.advertise = Some(advertise);
        }
        config.store.check().map_err(|e| anyhow::anyhow!(e))?;
        config.insecure |= self.insecure;
        if let Some(path) = self.tls_cert {
            config.tls.cert_file = Some(path);
        }
        if let Some(path) = self.tls_key {
            config.tls.key_file = Some(path);
        }
        if let Some(path) = self.audit_log {
            config.audit_log = Some(path);
        }
        if let Some(token) = self.admin_token {
            config.tokens.push(lqsm_server::config::TokenConfig {
                name: Some("command-line-admin".into()),
                token,
                token_file: None,
                token_env: None,
                role: lqsm_server::config::RoleName::Admin,
                queues: Vec::new(),
            });
        }
        if let Some(v) = self.heartbeat_timeout_ms {
            config.scheduler.heartbeat_timeout_ms = v;
        }
        if let Some(v) = self.retention_ms {
            config.scheduler.retention_ms = v;
        }
        if let Some(v) = self.reclaim_grace_ms {
            config.scheduler.reclaim_grace_ms = v;
        }
        Ok(config)
    }
}

/// Settings of `lqsm worker` (and of the worker inside `lqsm standalone`).
#[derive(clap::Args, Clone)]
pub struct WorkerArgs {
    /// CPU cores to offer [default: all of this machine's].
    #[arg(long)]
    cpus: Option<f64>,
    /// Memory to offer, e.g. 8G or 512M [default: all of this machine's].
    #[arg(long, value_parser = parse_mib)]
    memory: Option<u64>,
    /// GPUs to offer [default: those nvidia-smi lists].
    #[arg(long)]
    gpus: Option<u32>,
    /// A custom resource to offer, NAME=AMOUNT (repeatable), e.g. licence=2.
    #[arg(long = "resource", value_parser = parse_resource)]
    resources: Vec<(String, u64)>,
    /// A label jobs can select on, KEY=VALUE (repeatable).
    #[arg(long = "label", value_parser = parse_pair)]
    labels: Vec<(String, String)>,
    /// The worker's name [default: the host name].
    #[arg(long)]
    name: Option<String>,
    /// Run only function handlers, no command jobs.
    #[arg(long)]
    no_commands: bool,
    /// Run only the jobs of these queues and of those under them, e.g.
    /// `--queues root.etl,root.reports` [default: every queue].
    #[arg(long, value_delimiter = ',')]
    queues: Vec<String>,
    /// The signal a command gets at its soft time limit (`--soft-timeout` of a job).
    #[arg(long, default_value = "SIGUSR1", value_parser = parse_signal)]
    soft_timeout_signal: nix::sys::signal::Signal,
    /// Run command jobs as this unprivileged user (its uid and primary gid, no
    /// supplementary groups); the worker itself must run as root. A worker running as
    /// root without it runs command jobs as root, and says so in its log.
    #[arg(long, value_name = "USER")]
    run_as: Option<String>,
    /// Enforce command jobs' memory requests without cgroups: where an attempt gets no
    /// cgroup v2 memory limit (cgroup v1 machines, containers), its supervisor samples
    /// the resident memory of the attempt's processes together about every 100 ms and
    /// kills them all once it exceeds the job's memory request; the attempt fails as
    /// having exceeded its memory limit. Peaks shorter than the sampling period can be
    /// missed, and memory the processes share is counted once for each. Off by default;
    /// with cgroups, `memory.max` enforces the limit either way.
    #[arg(long)]
    memory_check: bool,
}

fn parse_signal(text: &str) -> Result<nix::sys::signal::Signal, String> {
    let name = text.to_ascii_uppercase();
    let name = if name.starts_with("SIG") {
        name
    } else {
        format!("SIG{name}")
    };
    name.parse()
        .map_err(|_| format!("`{text}` is not a signal name (SIGUSR1, SIGINT, ...)"))
}

impl WorkerArgs {
    fn into_config(self, server: String, token: Option<String>) -> anyhow::Result<WorkerConfig> {
        let mut config = WorkerConfig::new(server);
        config.token = token;
        if let Some(cpus) = self.cpus {
            anyhow::ensure!(
                cpus.is_finite() && cpus > 0.0,
                "--cpus {cpus}: give a number of cores above 0"
            );
            config.capacity.cpus = cpus;
        }
        if let Some(mib) = self.memory {
            config.capacity.memory_mib = mib;
        }
        if let Some(gpus) = self.gpus {
            let detected = config.capacity.gpus.clone();
            config.capacity.gpus = (0..gpus)
                .map(|i| detected.get(i as usize).copied().unwrap_or(i))
                .collect();
        }
        config.capacity.custom.extend(self.resources);
        config.labels.extend(self.labels);
        if let Some(name) = self.name {
            config.name = name;
        }
        config.serves_commands = !self.no_commands;
        config.queues = self.queues;
        config.soft_timeout_signal = self.soft_timeout_signal;
        config.memory_check = self.memory_check;
        if let Some(user) = &self.run_as {
            config.run_as = Some(
                lqsm_worker::RunAs::lookup(user).map_err(|e| anyhow::anyhow!("--run-as: {e}"))?,
            );
        }
        Ok(config)
    }
}

/// `lqsm standalone`: server settings plus worker settings.
#[derive(clap::Args, Clone)]
pub struct StandaloneArgs {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    worker: WorkerArgs,
}

/// Resolves with the number of SIGTERM/Ctrl-C signals received so far, once per signal.
fn signals() -> watch::Receiver<u32> {
    let (tx, rx) = watch::channel(0u32);
    tokio::spawn(async move {
        #[cfg(unix)]
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        loop {
            #[cfg(unix)]
            let got_term = async {
                match term.as_mut() {
                    Some(t) => {
                        t.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            #[cfg(not(unix))]
            let got_term = std::future::pending::<()>();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = got_term => {}
            }
            tx.send_modify(|n| *n += 1);
        }
    });
    rx
}

async fn signal_number(mut rx: watch::Receiver<u32>, n: u32) {
    let _ = rx.wait_for(|count| *count >= n).await;
}

#[allow(clippy::print_stdout)] // The listening line is the command's output.
fn announce(scheme: &'static str) -> impl FnOnce(SocketAddr) {
    move |addr| println!("lqsm server listening on {scheme}://{addr}")
}

/// `lqsm server`.
pub async fn server(args: ServerArgs) -> anyhow::Result<()> {
    let config = args.into_config()?;
    let signals = signals();
    let scheme = config.tls.scheme();
    lqsm_server::serve(config, signal_number(signals, 1), announce(scheme))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// Runs a worker until the first signal (drain), or the second (kill now).
async fn run_worker(config: WorkerConfig, signals: watch::Receiver<u32>) -> anyhow::Result<()> {
    let worker = WorkerBuilder::new(config)
        .build()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let report = worker.startup().clone();
    tracing::info!(
        id = %report.id,
        name = %report.name,
        cpus = report.capacity.cpus,
        memory_mib = report.capacity.memory_mib,
        gpus = report.capacity.gpus.len(),
        memory_enforced = report.memory_enforced,
        "worker starting"
    );
    if let Some(note) = &report.memory_note {
        tracing::warn!("{note}");
    }
    let kill = worker.kill_switch();
    let second = signals.clone();
    tokio::spawn(async move {
        signal_number(second, 2).await;
        tracing::warn!("second signal: killing running jobs");
        kill.kill_now();
    });
    let summary = worker
        .run(signal_number(signals, 1))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    tracing::info!(
        started = summary.started,
        succeeded = summary.succeeded,
        failed = summary.failed,
        killed = summary.killed,
        "worker stopped"
    );
    Ok(())
}

/// `lqsm worker`.
pub async fn worker(
    (server, token, ca_file): (String, Option<String>, Option<PathBuf>),
    args: WorkerArgs,
) -> anyhow::Result<()> {
    let mut config = args.into_config(server, token)?;
    config.ca_file = ca_file;
    run_worker(config, signals()).await
}

/// `lqsm standalone`: the server and one worker in one process. The first signal
/// drains the worker, then stops the server; a second kills running jobs.
pub async fn standalone(args: StandaloneArgs, ca_file: Option<PathBuf>) -> anyhow::Result<()> {
    let config = args.server.into_config()?;
    // Its own worker trusts the given CAs, else the server's own certificate (a
    // self-signed one, say).
    let worker_ca = ca_file
        .or_else(|| config.tls.ca_file.clone())
        .or_else(|| config.tls.cert_file.clone());
    let scheme = config.tls.scheme();
    let advertise = config.advertise.clone();
    let token = config
        .tokens
        .iter()
        .find(|t| t.role == lqsm_server::config::RoleName::Admin)
        .map(|t| t.token.clone());
    if !config.tokens.is_empty() && token.is_none() {
        anyhow::bail!(
            "standalone needs an admin token for its own worker when tokens are configured (--admin-token)"
        );
    }
    let signals = signals();
    let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
    let (worker_done_tx, worker_done_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(lqsm_server::serve(
        config,
        async move {
            let _ = worker_done_rx.await;
        },
        move |addr| {
            announce(scheme)(addr);
            let _ = addr_tx.send(addr);
        },
    ));
    let addr = match addr_rx.await {
        Ok(addr) => addr,
        Err(_) => {
            // The server stopped before listening: its error says why.
            return match server.await {
                Ok(Err(e)) => Err(anyhow::anyhow!("{e}")),
                _ => Err(anyhow::anyhow!("the server stopped before it could listen")),
            };
        }
    };
    // Under TLS the worker checks the certificate's names: the advertised URL (a name
    // the certificate covers, resolving to this machine) when set, else the address.
    let url = match (&advertise, scheme) {
        (Some(advertised), "https") => advertised.clone(),
        _ => format!("{scheme}://{addr}"),
    };
    let mut worker_config = args.worker.into_config(url, token)?;
    worker_config.ca_file = worker_ca;
    let worker_result = run_worker(worker_config, signals).await;
    let _ = worker_done_tx.send(());
    let server_result = server
        .await
        .map_err(|e| anyhow::anyhow!("server task failed: {e}"))?
        .map_err(|e| anyhow::anyhow!("{e}"));
    worker_result.and(server_result)
}
