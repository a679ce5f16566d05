//! `lqsm`: the one binary — server, worker, standalone, and the client commands.

mod bench;
mod jobs;
mod queues;
mod run;
mod schedules;
mod soak;
mod top;
mod units;
mod workflows;

use clap::{Parser, Subcommand, ValueEnum};
use lqsm_client::Client;
use std::process::ExitCode;

// The server allocates per request and per record; mimalloc is measurably faster
// than the system allocator there (docs/BENCHMARKS.md).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// LQSM: multi-tenant job queues and scheduling.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// The server's URL, or several comma-separated (a call moves on from one it cannot
    /// reach).
    #[arg(
        long,
        global = true,
        env = "LQSM_SERVER",
        default_value = "http://127.0.0.1:7420"
    )]
    server: String,
    /// Bearer token.
    #[arg(long, global = true, env = "LQSM_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// PEM CA certificates to trust, besides the system's, for `https://` servers.
    #[arg(long, global = true, env = "LQSM_CA_FILE")]
    ca_file: Option<std::path::PathBuf>,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Human)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

/// How results are printed.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned tables and readable figures.
    Human,
    /// JSON, for scripts.
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server: the HTTP API and the scheduler over the embedded store.
    Server(run::ServerArgs),
    /// Run a worker that takes jobs from the server.
    Worker(run::WorkerArgs),
    /// Run a server and one worker in one process: a working LQSM in one command.
    Standalone(run::StandaloneArgs),
    /// Submit a job: `lqsm submit -- CMD ARGS...` or `lqsm submit --function NAME`.
    Submit(jobs::SubmitArgs),
    /// Inspect and control jobs.
    #[command(subcommand)]
    Job(jobs::JobCommand),
    /// Create, change and inspect queues.
    #[command(subcommand)]
    Queue(queues::QueueCommand),
    /// Inspect and drain workers.
    #[command(subcommand)]
    Workers(queues::WorkersCommand),
    /// Periodic schedules: cron or a fixed interval, each fire submitting one job.
    #[command(subcommand)]
    Schedule(schedules::ScheduleCommand),
    /// Workflows: graphs of jobs (chains, groups, chords) submitted whole from a file.
    #[command(subcommand)]
    Workflow(workflows::WorkflowCommand),
    /// The cluster at a glance, with the worker autoscaler's pools.
    Cluster(queues::ClusterArgs),
    /// Load-test the cluster: submit jobs and measure rates and latencies.
    Bench(bench::BenchArgs),
    /// A live view of the cluster, its queues and its workers (q quits).
    Top(top::TopArgs),
}

/// What a command prints, as text or JSON. A reader that went away (`lqsm ... | head`)
/// ends the command quietly, as it ends any Unix tool, rather than a panic.
pub fn print(output: Output, human: &str, json: &impl serde::Serialize) {
    let mut text = match output {
        Output::Human => human.to_owned(),
        Output::Json => {
            serde_json::to_string_pretty(json).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
        }
    };
    if !text.ends_with('\n') && !text.is_empty() {
        text.push('\n');
    }
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("lqsm: cannot write to standard output: {e}");
        std::process::exit(1);
    }
}

fn client(cli: &Cli) -> anyhow::Result<Client> {
    let client = Client::new(&cli.server, cli.token.clone()).map_err(|e| anyhow::anyhow!("{e}"))?;
    match &cli.ca_file {
        Some(path) => client
            .with_ca_file(path)
            .map_err(|e| anyhow::anyhow!("{e}")),
        None => Ok(client),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Runtime::new()
        .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))
}

/// Runs the command; `Ok(code)` is the process's exit code.
fn execute(cli: Cli) -> anyhow::Result<u8> {
    let output = cli.output;
    match &cli.command {
        Command::Server(args) => {
            runtime()?.block_on(run::server(args.clone()))?;
            Ok(0)
        }
        Command::Worker(args) => {
            let client_config = (cli.server.clone(), cli.token.clone(), cli.ca_file.clone());
            runtime()?.block_on(run::worker(client_config, args.clone()))?;
            Ok(0)
        }
        Command::Standalone(args) => {
            runtime()?.block_on(run::standalone(args.clone(), cli.ca_file.clone()))?;
            Ok(0)
        }
        Command::Submit(args) => runtime()?.block_on(jobs::submit(&client(&cli)?, args, output)),
        Command::Job(cmd) => runtime()?.block_on(jobs::job(&client(&cli)?, cmd, output)),
        Command::Queue(cmd) => runtime()?.block_on(queues::queue(&client(&cli)?, cmd, output)),
        Command::Workers(cmd) => runtime()?.block_on(queues::workers(&client(&cli)?, cmd, output)),
        Command::Schedule(cmd) => {
            runtime()?.block_on(schedules::schedule(&client(&cli)?, cmd, output))
        }
        Command::Workflow(cmd) => {
            runtime()?.block_on(workflows::workflow(&client(&cli)?, cmd, output))
        }
        Command::Cluster(args) => {
            runtime()?.block_on(queues::cluster(&client(&cli)?, args, output))
        }
        Command::Bench(args) => runtime()?.block_on(bench::run(
            &cli.server,
            cli.token.clone(),
            cli.ca_file.as_deref(),
            args,
            output,
        )),
        Command::Top(args) => top::top(client(&cli)?, &cli.server, args, output),
    }
}

/// Keeps the kernel from backing this process's memory with transparent huge pages. The
/// allocator asks for them, and the kernel then zeroes a whole 2 MiB page the first time
/// any byte of it is touched, again each time the allocator has given freed memory back:
/// with the short-lived buffers of every group commit, that zeroing took a fifth of the
/// server's cpu end to end (profiled; docs/BENCHMARKS.md). Children inherit the setting,
/// so the supervisor of a command job turns it back off for the job
/// (`lqsm_worker::supervisor`).
fn refuse_transparent_huge_pages() {
    if let Err(e) = nix::sys::prctl::set_thp_disable(true) {
        tracing::debug!(error = %e, "cannot turn transparent huge pages off for this process");
    }
}

fn main() -> ExitCode {
    // Before anything else: when a worker starts this binary again to supervise a
    // command attempt, this is that supervisor, and it never returns.
    lqsm_worker::supervisor::run_if_asked();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if matches!(
        cli.command,
        Command::Server(_) | Command::Worker(_) | Command::Standalone(_)
    ) {
        refuse_transparent_huge_pages();
    }
    match execute(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            // A client error already says what happened and what to do; its causes
            // would only repeat it. Other errors read best with their causes.
            let text = match e.downcast_ref::<lqsm_client::ClientError>() {
                Some(client_error) => client_error.to_string(),
                None => format!("{e:#}"),
            };
            #[allow(clippy::print_stderr)] // The one place errors reach a person.
            {
                eprintln!("lqsm: {text}");
            }
            ExitCode::FAILURE
        }
    }
}
