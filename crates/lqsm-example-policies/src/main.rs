//! `lqsm-custom-server CONFIG.toml [--cheaper-pool-max N]`: the LQSM server with this
//! program's policies beside the built-ins. It reads the same config file as
//! `lqsm server`; queues select `deadline-first` and worker pools `spill-over` by name
//! like any built-in (`--cheaper-pool-max`, default 4: the `max` of the pool that
//! `spill-over` pools spill over from). Stops on SIGINT or SIGTERM.

use anyhow::Context;
use lqsm_server::config::ServerConfig;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    const USAGE: &str = "usage: lqsm-custom-server CONFIG.toml [--cheaper-pool-max N]";
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (path, cheaper_pool_max) = match args.as_slice() {
        [path] => (path.clone(), 4),
        [path, flag, n] if flag == "--cheaper-pool-max" => (
            path.clone(),
            n.parse::<u32>()
                .with_context(|| format!("--cheaper-pool-max: `{n}` is not a whole number"))?,
        ),
        _ => anyhow::bail!(USAGE),
    };
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    let mut config = ServerConfig::from_toml(&text).map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
    config.policies = lqsm_example_policies::policies(cheaper_pool_max);
    let scheme = config.tls.scheme();
    lqsm_server::serve(config, stopped(), announce(scheme))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
}

#[allow(clippy::print_stdout)] // The listening line is how a caller learns the port.
fn announce(scheme: &'static str) -> impl FnOnce(std::net::SocketAddr) {
    move |addr| println!("lqsm-custom-server listening on {scheme}://{addr}")
}

/// Resolves on the first SIGINT or SIGTERM.
async fn stopped() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
