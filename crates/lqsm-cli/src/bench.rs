//! `lqsm bench`: a load generator in the manner of `redis-benchmark`. Submits jobs,
//! waits for them to finish, and reports rates and latency percentiles measured from
//! the server's own timestamps (submitted, started, finished).

use crate::units::{show_ms, table};
use crate::{Output, print};
use indicatif::{ProgressBar, ProgressStyle};
use lqsm_api as api;
use lqsm_client::{Client, JobFilter};
use lqsm_worker::{WorkerBuilder, WorkerConfig};
use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Options of `lqsm bench`.
#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    /// Another kind of run than the default submit-and-wait one.
    #[command(subcommand)]
    other: Option<BenchCommand>,
    /// Jobs to submit.
    #[arg(short = 'n', long, default_value_t = 10_000)]
    jobs: usize,
    /// Jobs per submission request (1: single submissions).
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Concurrent submitting clients.
    #[arg(short, long, default_value_t = 4)]
    concurrency: usize,
    /// Submit at this steady rate (jobs/s) instead of as fast as possible.
    #[arg(long)]
    rate: Option<f64>,
    /// Run `lqsm.sleep` for this many ms instead of `lqsm.noop`.
    #[arg(long, conflicts_with = "command")]
    sleep_ms: Option<u64>,
    /// Run this program (no arguments) as a command job instead, e.g. `true`.
    #[arg(long)]
    command: Option<String>,
    /// Queue to submit to.
    #[arg(short, long, default_value = "root.default")]
    queue: String,
    /// Start this many workers inside the bench process (0: use the cluster's).
    #[arg(long, default_value_t = 0)]
    workers: usize,
    /// Give up waiting for completion after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout_s: u64,
}

/// The other kinds of `lqsm bench` run.
#[derive(clap::Subcommand)]
enum BenchCommand {
    /// Steady mixed load for a long time (an hour by default) against a server and
    /// workers it starts itself, workers joining and leaving: does the server's memory
    /// or latency drift? Exit code 1 when it did beyond the limits.
    Soak(crate::soak::SoakArgs),
}

#[derive(Serialize)]
struct Percentiles {
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

#[derive(Serialize)]
struct Report {
    jobs: usize,
    completed: usize,
    failed: usize,
    submit_seconds: f64,
    submit_rate: f64,
    total_seconds: f64,
    completion_rate: f64,
    submit_to_start: Percentiles,
    submit_to_finish: Percentiles,
}

fn percentiles(mut samples: Vec<u64>) -> Percentiles {
    samples.sort_unstable();
    let at = |p: f64| {
        if samples.is_empty() {
            return 0.0;
        }
        samples[((samples.len() - 1) as f64 * p).round() as usize] as f64
    };
    Percentiles {
        p50_ms: at(0.5),
        p90_ms: at(0.9),
        p99_ms: at(0.99),
        max_ms: samples.last().copied().unwrap_or(0) as f64,
    }
}

fn job(args: &BenchArgs, tag: &str) -> api::SubmitJob {
    let mut job = match (&args.command, args.sleep_ms) {
        (Some(program), _) => api::SubmitJob::new(
            &args.queue,
            api::JobKind::Command {
                argv: vec![program.clone()],
                env: Default::default(),
                cwd: None,
            },
        ),
        (None, Some(ms)) => api::SubmitJob::function(
            &args.queue,
            "lqsm.sleep",
            serde_json::json!(ms as f64 / 1000.0),
        ),
        (None, None) => api::SubmitJob::function(&args.queue, "lqsm.noop", serde_json::Value::Null),
    };
    job.tags = vec![tag.to_owned()];
    job.resources = Some(api::Resources {
        cpu: Some(0.001),
        memory_mib: Some(1),
        gpu: None,
        custom: Default::default(),
    });
    job
}

/// Runs the benchmark against the server at `server`.
pub async fn run(
    server: &str,
    token: Option<String>,
    ca_file: Option<&std::path::Path>,
    args: &BenchArgs,
    output: Output,
) -> anyhow::Result<u8> {
    if let Some(BenchCommand::Soak(soak)) = &args.other {
        return crate::soak::run(soak, output).await;
    }
    anyhow::ensure!(
        args.jobs > 0 && args.batch > 0 && args.concurrency > 0,
        "--jobs, --batch and --concurrency must be above 0"
    );
    let mut client = Client::new(server, token.clone())?;
    if let Some(path) = ca_file {
        client = client.with_ca_file(path)?;
    }
    let before = client.queue(&args.queue).await?;
    // In-process workers, stopped when the run ends.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut worker_tasks = Vec::new();
    for i in 0..args.workers {
        let mut config = WorkerConfig::new(server);
        config.token = token.clone();
        config.ca_file = ca_file.map(std::path::Path::to_owned);
        config.name = format!("bench-{i}");
        let worker = WorkerBuilder::new(config).build()?;
        let mut stop = stop_rx.clone();
        worker_tasks.push(tokio::spawn(worker.run(async move {
            let _ = stop.wait_for(|s| *s).await;
        })));
    }

    let tag = format!("bench-{}", uuid::Uuid::now_v7().simple());
    let next = Arc::new(AtomicUsize::new(0));
    let submitted = Arc::new(AtomicUsize::new(0));
    let bar = ProgressBar::new(args.jobs as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} finished ({per_sec}) {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    if output == Output::Json {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let started = Instant::now();
    let template = job(args, &tag);
    let per_batch = args.batch.min(args.jobs);
    let mut submitters = Vec::new();
    for _ in 0..args.concurrency {
        let (client, next, submitted, template) = (
            client.clone(),
            next.clone(),
            submitted.clone(),
            template.clone(),
        );
        let (jobs, rate) = (args.jobs, args.rate);
        submitters.push(tokio::spawn(async move {
            loop {
                let first = next.fetch_add(per_batch, Ordering::Relaxed);
                if first >= jobs {
                    return Ok::<(), anyhow::Error>(());
                }
                let n = per_batch.min(jobs - first);
                if let Some(rate) = rate {
                    // Pace: job `first` is due at first / rate seconds.
                    let due = started + Duration::from_secs_f64(first as f64 / rate);
                    tokio::time::sleep_until(due.into()).await;
                }
                if n == 1 {
                    client.submit(&template).await?;
                } else {
                    let batch: Vec<api::SubmitJob> = (0..n).map(|_| template.clone()).collect();
                    let result = client.submit_batch(&batch).await?;
                    if let Some(e) = result.results.iter().find_map(|r| r.error.as_ref()) {
                        anyhow::bail!("the server refused a job: {}", e.message);
                    }
                }
                submitted.fetch_add(n, Ordering::Relaxed);
            }
        }));
    }
    let mut submit_seconds = None;
    let deadline = started + Duration::from_secs(args.timeout_s);
    let done_before = before.counts.succeeded + before.counts.failed;
    let mut completed;
    loop {
        if submit_seconds.is_none() && submitters.iter().all(|t| t.is_finished()) {
            submit_seconds = Some(started.elapsed().as_secs_f64());
            for t in submitters.drain(..) {
                t.await??;
            }
        }
        let now = client.queue(&args.queue).await?;
        completed = (now.counts.succeeded + now.counts.failed).saturating_sub(done_before) as usize;
        bar.set_position(completed.min(args.jobs) as u64);
        bar.set_message(format!("{} submitted", submitted.load(Ordering::Relaxed)));
        if completed >= args.jobs || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let total_seconds = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let _ = stop_tx.send(true);
    for t in worker_tasks {
        let _ = t.await;
    }
    anyhow::ensure!(
        completed >= args.jobs,
        "only {completed} of {} jobs finished within {} s; are workers running? (--workers N starts some)",
        args.jobs,
        args.timeout_s
    );

    // Latencies from the server's timestamps of every job of this run.
    let (mut to_start, mut to_finish, mut failed) = (Vec::new(), Vec::new(), 0);
    let filter = JobFilter {
        queue: Some(args.queue.clone()),
        state: None,
        tag: Some(tag.clone()),
        ..JobFilter::default()
    };
    let mut cursor: Option<String> = None;
    loop {
        let page = client
            .list_jobs(&filter, cursor.as_deref(), Some(1000))
            .await?;
        for j in &page.jobs {
            if j.state != api::JobState::Succeeded {
                failed += 1;
            }
            if let Some(a) = j.attempts.last() {
                let start = a.started_at_ms.unwrap_or(a.scheduled_at_ms);
                to_start.push(start.saturating_sub(j.submitted_at_ms));
                if let Some(f) = j.finished_at_ms {
                    to_finish.push(f.saturating_sub(j.submitted_at_ms));
                }
            }
        }
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    let submit_seconds = submit_seconds.unwrap_or(total_seconds);
    let report = Report {
        jobs: args.jobs,
        completed,
        failed,
        submit_seconds,
        submit_rate: args.jobs as f64 / submit_seconds,
        total_seconds,
        completion_rate: args.jobs as f64 / total_seconds,
        submit_to_start: percentiles(to_start),
        submit_to_finish: percentiles(to_finish),
    };
    let ms = |v: f64| show_ms(v as u64);
    let rows = vec![
        vec![
            "jobs".into(),
            format!("{} ({} failed)", report.jobs, report.failed),
        ],
        vec![
            "submit rate".into(),
            format!(
                "{:.0} jobs/s ({:.2} s)",
                report.submit_rate, report.submit_seconds
            ),
        ],
        vec![
            "completion rate".into(),
            format!(
                "{:.0} jobs/s ({:.2} s)",
                report.completion_rate, report.total_seconds
            ),
        ],
        vec![
            "submit→start".into(),
            format!(
                "p50 {}  p90 {}  p99 {}  max {}",
                ms(report.submit_to_start.p50_ms),
                ms(report.submit_to_start.p90_ms),
                ms(report.submit_to_start.p99_ms),
                ms(report.submit_to_start.max_ms)
            ),
        ],
        vec![
            "submit→finish".into(),
            format!(
                "p50 {}  p90 {}  p99 {}  max {}",
                ms(report.submit_to_finish.p50_ms),
                ms(report.submit_to_finish.p90_ms),
                ms(report.submit_to_finish.p99_ms),
                ms(report.submit_to_finish.max_ms)
            ),
        ],
    ];
    print(output, &table(&["MEASURE", "VALUE"], &rows), &report);
    Ok(0)
}
