//! `lqsm`: the one binary.

use anyhow::Context;
use clap::{Parser, Subcommand};
use lqsm_server::config::ServerConfig;
use std::net::SocketAddr;
use std::path::PathBuf;

// The server allocates per request and per record; mimalloc is measurably faster
// than the system allocator there (docs/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// LQSM: multi-tenant job queues and scheduling.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server: the HTTP API and the scheduler over the embedded store.
    Server(ServerArgs),
}

#[derive(clap::Args)]
struct ServerArgs {
    /// TOML settings file (see lqsm.example.toml).
    #[arg(long, env = "LQSM_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:7420].
    #[arg(long, env = "LQSM_LISTEN")]
    listen: Option<SocketAddr>,
    /// Data directory [default: ./lqsm-data].
    #[arg(long, env = "LQSM_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Listen beyond loopback even without tokens.
    #[arg(long, env = "LQSM_INSECURE")]
    insecure: bool,
    /// An admin token (adds to those in the config file).
    #[arg(long, env = "LQSM_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Heartbeat timeout of workers, ms [default: 10000].
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
        config.insecure |= self.insecure;
        if let Some(token) = self.admin_token {
            config.tokens.push(lqsm_server::config::TokenConfig {
                token,
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

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}

#[allow(clippy::print_stdout)] // The listening line is the binary's output.
fn announce(addr: SocketAddr) {
    println!("lqsm server listening on http://{addr}");
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Server(args) => {
            let config = args.into_config()?;
            let runtime =
                tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            runtime
                .block_on(lqsm_server::serve(config, shutdown_signal(), announce))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
    }
    Ok(())
}
