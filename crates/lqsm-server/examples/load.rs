//! Load generator for the JobServer's submission path (figures in docs/BENCHMARKS.md).
//!
//! Start a server, then:
//!   cargo run --release -p lqsm-server --example load -- http://127.0.0.1:7420 batch 200 1000 4
//!   cargo run --release -p lqsm-server --example load -- http://127.0.0.1:7420 single 10 64
//!   cargo run --release -p lqsm-server --example load -- http://127.0.0.1:7420 single 10 64 8
//!
//! `batch BATCHES SIZE CLIENTS`: BATCHES batches of SIZE no-op jobs from CLIENTS clients.
//! `single SECONDS CLIENTS [LISTERS]`: one job per request from CLIENTS clients for SECONDS,
//! while LISTERS clients (default 0) each list the queue's newest 100 jobs 20 times a
//! second (`GET /v1/jobs?queue=root.default&order=newest&limit=100`).
//! `workers N SECONDS [JOBS]`: N simulated workers (1 cpu, 256 MiB, handler `lqsm.noop`),
//! each a tokio task registered over HTTP (`POST /v1/workers`) and long-polling as a real
//! worker does (docs/PROTOCOL.md): every assignment is reported finished (succeeded) in
//! that worker's next poll, sent at once. A submitter keeps JOBS (default 200,000) no-op
//! jobs outstanding (submitted and not yet reported), topping up in batches of 1,000 (four
//! requests in flight), for SECONDS; then it stops, the backlog drains, and the workers stay idle in their
//! long-polls for 4 s (the line `idle:` marks that moment) before the process exits.
//! Needs N + ~300 file descriptors (`ulimit -n`); see scripts/bench-workers.sh.
#![allow(clippy::unwrap_used, clippy::print_stdout, missing_docs)]

use lqsm_api::{
    AttemptResult, ClusterSummary, FinishedAttempt, JobState, PollRequest, PollResponse,
    RegisterWorker, Resources, SubmitBatch, SubmitJob,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Submits no-op jobs `first..first + size` in one batch request; how many were accepted.
async fn submit_batch(client: &reqwest::Client, base: &str, first: usize, size: usize) -> usize {
    let body = SubmitBatch {
        jobs: (0..size).map(|i| job(first + i)).collect(),
    };
    let res = client
        .post(format!("{base}/v1/jobs/batch"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.text().await.unwrap());
    let out: lqsm_api::BatchResult = res.json().await.unwrap();
    out.accepted
}

/// A no-op job; `LOAD_PAYLOAD_BYTES` pads its arguments to that size.
fn job(i: usize) -> SubmitJob {
    let pad = std::env::var("LOAD_PAYLOAD_BYTES")
        .ok()
        .and_then(|v| v.parse::<usize>().ok());
    let args = match pad {
        Some(n) => serde_json::json!({ "n": i, "blob": "x".repeat(n) }),
        None => serde_json::json!({ "n": i }),
    };
    SubmitJob::function("root.default", "lqsm.noop", args)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let base = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "http://127.0.0.1:7420".into());
    let mode = args.get(2).cloned().unwrap_or_else(|| "batch".into());
    let num =
        |i: usize, default: usize| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .unwrap();
    match mode.as_str() {
        "batch" => {
            let (batches, size, clients) = (num(3, 200), num(4, 1000), num(5, 4));
            let next = Arc::new(AtomicUsize::new(0));
            let started = Instant::now();
            let mut tasks = Vec::new();
            for _ in 0..clients {
                let (client, base, next) = (client.clone(), base.clone(), next.clone());
                tasks.push(tokio::spawn(async move {
                    let mut accepted = 0;
                    loop {
                        let b = next.fetch_add(1, Ordering::Relaxed);
                        if b >= batches {
                            return accepted;
                        }
                        accepted += submit_batch(&client, &base, b * size, size).await;
                    }
                }));
            }
            let mut accepted = 0;
            for t in tasks {
                accepted += t.await.unwrap();
            }
            let secs = started.elapsed().as_secs_f64();
            println!(
                "batch: {accepted} jobs in {secs:.2} s = {:.0} jobs/s ({batches} batches of {size}, {clients} clients)",
                accepted as f64 / secs
            );
        }
        "single" => {
            let (seconds, clients, listers) = (num(3, 10), num(4, 64), num(5, 0));
            let deadline = Instant::now() + Duration::from_secs(seconds as u64);
            let started = Instant::now();
            let mut listing = Vec::new();
            for _ in 0..listers {
                let (client, base) = (client.clone(), base.clone());
                listing.push(tokio::spawn(async move {
                    let mut latencies = Vec::new();
                    let mut every = tokio::time::interval(Duration::from_millis(50));
                    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                    while Instant::now() < deadline {
                        every.tick().await;
                        let t = Instant::now();
                        let res = client
                            .get(format!(
                                "{base}/v1/jobs?queue=root.default&order=newest&limit=100"
                            ))
                            .send()
                            .await
                            .unwrap();
                        assert!(res.status().is_success());
                        let list: lqsm_api::JobList = res.json().await.unwrap();
                        assert_eq!(list.jobs.len(), 100);
                        latencies.push(t.elapsed());
                    }
                    latencies
                }));
            }
            let mut tasks = Vec::new();
            for c in 0..clients {
                let (client, base) = (client.clone(), base.clone());
                tasks.push(tokio::spawn(async move {
                    let mut latencies = Vec::new();
                    let mut i = 0;
                    while Instant::now() < deadline {
                        let t = Instant::now();
                        let res = client
                            .post(format!("{base}/v1/jobs"))
                            .json(&job(c * 1_000_000 + i))
                            .send()
                            .await
                            .unwrap();
                        assert!(res.status().is_success());
                        let _ = res.bytes().await.unwrap();
                        latencies.push(t.elapsed());
                        i += 1;
                    }
                    latencies
                }));
            }
            let mut all = Vec::new();
            for t in tasks {
                all.extend(t.await.unwrap());
            }
            let secs = started.elapsed().as_secs_f64();
            all.sort_unstable();
            println!(
                "single: {} jobs in {secs:.2} s = {:.0} jobs/s from {clients} clients; latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                all.len(),
                all.len() as f64 / secs,
                percentile(&all, 0.5).as_secs_f64() * 1e3,
                percentile(&all, 0.99).as_secs_f64() * 1e3,
                all.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
            );
            let mut lists = Vec::new();
            for t in listing {
                lists.extend(t.await.unwrap());
            }
            if listers > 0 {
                lists.sort_unstable();
                println!(
                    "lists: {} from {listers} clients ({:.1}/s); latency p50 {:.2} ms, p99 {:.2} ms",
                    lists.len(),
                    lists.len() as f64 / secs,
                    percentile(&lists, 0.5).as_secs_f64() * 1e3,
                    percentile(&lists, 0.99).as_secs_f64() * 1e3,
                );
            }
        }
        "workers" => workers(&base, num(3, 10_000), num(4, 30), num(5, 200_000)).await,
        other => panic!("unknown mode {other}: use batch, single or workers"),
    }
}

/// What the simulated workers and the submitter count.
#[derive(Default)]
struct Stats {
    registered: AtomicU64,
    registrations: AtomicU64,
    /// Polls sent and not yet answered: the long-polls this process holds open.
    polls_open: AtomicU64,
    polls: AtomicU64,
    poll_errors: AtomicU64,
    assignments: AtomicU64,
    /// Reports the server accepted: attempts completed end to end.
    completed: AtomicU64,
    refused: AtomicU64,
    submitted: AtomicU64,
}

/// Registers (again), retrying network errors and 5xx answers with backoff.
async fn register(client: &reqwest::Client, base: &str, body: &RegisterWorker, stats: &Stats) {
    let mut backoff = Duration::from_millis(50);
    loop {
        match client
            .post(format!("{base}/v1/workers"))
            .json(body)
            .send()
            .await
        {
            Ok(res) if res.status().is_success() => {
                let _ = res.bytes().await;
                stats.registrations.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Ok(res) if res.status().is_client_error() => {
                panic!(
                    "registration refused: {}",
                    res.text().await.unwrap_or_default()
                )
            }
            _ => {
                stats.poll_errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(jitter(backoff, body.id.as_u128())).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Between half and all of `d`, spread by `seed` so that a fleet does not retry in step.
fn jitter(d: Duration, seed: u128) -> Duration {
    let nanos = u128::from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos(),
    );
    let frac = ((seed ^ nanos) % 1000) as f64 / 2000.0;
    d.mul_f64(0.5 + frac)
}

/// One simulated worker: registers, then polls until `stop`, reporting every assignment
/// as succeeded in the next poll. The first poll (wait 0) is made under the ramp permit, so
/// that at most the permit count of connections are being opened at once.
async fn simulated_worker(
    i: usize,
    client: reqwest::Client,
    base: String,
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
    ramp: Arc<tokio::sync::Semaphore>,
) {
    let body = RegisterWorker {
        id: uuid::Uuid::now_v7(),
        name: format!("sim-{i}"),
        capacity: Resources {
            cpu: Some(1.0),
            memory_mib: Some(256),
            ..Resources::default()
        },
        labels: Default::default(),
        serves_commands: false,
        queues: Default::default(),
        handlers: vec!["lqsm.noop".into()],
        protocol: lqsm_api::WORKER_PROTOCOL,
    };
    let url = format!("{base}/v1/workers/{}/poll", body.id);
    let mut permit = Some(ramp.acquire_owned().await.unwrap());
    register(&client, &base, &body, &stats).await;
    stats.registered.fetch_add(1, Ordering::Relaxed);
    let mut ack = 0;
    let mut reports: Vec<FinishedAttempt> = Vec::new();
    let mut backoff = Duration::from_millis(50);
    while !stop.load(Ordering::Relaxed) {
        let req = PollRequest {
            registration: None,
            running: Vec::new(),
            finished: std::mem::take(&mut reports),
            // The server caps it at `max_poll_wait_ms` (4 s by default); the worker polls
            // again as soon as an answer arrives.
            wait_ms: if permit.is_some() { 0 } else { 30_000 },
            ack: Some(ack),
            ending: Vec::new(),
        };
        stats.polls_open.fetch_add(1, Ordering::Relaxed);
        let res = client.post(&url).json(&req).send().await;
        let answer = match res {
            Ok(res) if res.status().is_success() => res.json::<PollResponse>().await.ok(),
            Ok(res) if res.status() == reqwest::StatusCode::CONFLICT => {
                // register_again: same id, numbering of answers restarts; keep the reports.
                stats.polls_open.fetch_sub(1, Ordering::Relaxed);
                register(&client, &base, &body, &stats).await;
                ack = 0;
                reports = req.finished;
                continue;
            }
            _ => None,
        };
        stats.polls_open.fetch_sub(1, Ordering::Relaxed);
        let Some(answer) = answer else {
            // No answer settles nothing: the reports go again with the next poll.
            stats.poll_errors.fetch_add(1, Ordering::Relaxed);
            reports = req.finished;
            tokio::time::sleep(jitter(backoff, body.id.as_u128())).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
            continue;
        };
        backoff = Duration::from_millis(50);
        permit = None;
        stats.polls.fetch_add(1, Ordering::Relaxed);
        let accepted = req.finished.len().saturating_sub(answer.refused.len());
        stats
            .completed
            .fetch_add(accepted as u64, Ordering::Relaxed);
        stats
            .refused
            .fetch_add(answer.refused.len() as u64, Ordering::Relaxed);
        if answer.seq > 0 {
            ack = ack.max(answer.seq);
        }
        if !answer.assignments.is_empty() {
            stats
                .assignments
                .fetch_add(answer.assignments.len() as u64, Ordering::Relaxed);
            let now = lqsm_api::epoch_ms();
            reports = answer
                .assignments
                .into_iter()
                .map(|a| FinishedAttempt {
                    job: a.job,
                    token: a.token,
                    result: AttemptResult::Succeeded {
                        result: None,
                        exit_code: None,
                    },
                    logs: None,
                    usage: None,
                    started_at_ms: Some(now),
                })
                .collect();
        }
    }
}

/// The server's count of jobs in `state`, from `GET /v1/cluster`.
async fn count(client: &reqwest::Client, base: &str, state: JobState) -> Option<u64> {
    let res = client.get(format!("{base}/v1/cluster")).send().await.ok()?;
    let summary: ClusterSummary = res.json().await.ok()?;
    Some(summary.jobs.get(&state).copied().unwrap_or(0))
}

async fn workers(base: &str, n: usize, seconds: usize, jobs: usize) {
    const BATCH: usize = 1_000;
    // One client for everything; every long-poll holds a connection of its own.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(n + 1_024)
        // Connections left over from the ramp close once idle; a poll's connection is
        // idle only between an answer and the next poll.
        .pool_idle_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let stats = Arc::new(Stats::default());
    let stop = Arc::new(AtomicBool::new(false));
    let ramp = Arc::new(tokio::sync::Semaphore::new(256));
    let started = Instant::now();
    for i in 0..n {
        tokio::spawn(simulated_worker(
            i,
            client.clone(),
            base.to_owned(),
            stats.clone(),
            stop.clone(),
            ramp.clone(),
        ));
    }
    while (stats.registered.load(Ordering::Relaxed) as usize) < n {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Every worker registered and past its first poll: every permit back.
    let _all = ramp.acquire_many(256).await.unwrap();
    println!(
        "registered: {n} workers in {:.2} s ({} polls open); submitting for {seconds} s, {jobs} jobs outstanding",
        started.elapsed().as_secs_f64(),
        stats.polls_open.load(Ordering::Relaxed),
    );
    let run_start = Instant::now();
    let deadline = run_start + Duration::from_secs(seconds as u64);
    // The server's pending count once a second, after the first fill.
    let monitor = {
        let (client, base) = (client.clone(), base.to_owned());
        tokio::spawn(async move {
            let mut min: Option<u64> = None;
            let mut every = tokio::time::interval(Duration::from_secs(1));
            every.tick().await;
            while Instant::now() + Duration::from_millis(500) < deadline {
                every.tick().await;
                if run_start.elapsed() < Duration::from_secs(3) {
                    continue;
                }
                if let Some(p) = count(&client, &base, JobState::Pending).await {
                    min = Some(min.map_or(p, |m| m.min(p)));
                }
            }
            min
        })
    };
    // Four batches in flight at a time (one request at a time falls behind the workers).
    let next_batch = Arc::new(AtomicUsize::new(0));
    let mut submitters = Vec::new();
    for _ in 0..4 {
        let (client, base, stats, next_batch) = (
            client.clone(),
            base.to_owned(),
            stats.clone(),
            next_batch.clone(),
        );
        submitters.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let submitted = stats.submitted.load(Ordering::Relaxed);
                let outstanding = submitted.saturating_sub(stats.completed.load(Ordering::Relaxed));
                if outstanding as usize + BATCH > jobs {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    continue;
                }
                // Counted before the answer, so that the four do not overshoot.
                stats.submitted.fetch_add(BATCH as u64, Ordering::Relaxed);
                let b = next_batch.fetch_add(1, Ordering::Relaxed);
                let accepted = submit_batch(&client, &base, b * BATCH, BATCH).await;
                stats
                    .submitted
                    .fetch_sub((BATCH - accepted) as u64, Ordering::Relaxed);
            }
        }));
    }
    for s in submitters {
        s.await.unwrap();
    }
    let secs = run_start.elapsed().as_secs_f64();
    let done = stats.completed.load(Ordering::Relaxed);
    let polls = stats.polls.load(Ordering::Relaxed);
    // The server's count: reports it accepted whose poll is still waiting count too.
    let succeeded = count(&client, base, JobState::Succeeded).await.unwrap_or(0);
    let min_pending = monitor.await.unwrap();
    println!(
        "run: {succeeded} placements in {secs:.2} s = {:.0} placements/s end to end ({n} workers; server-counted succeeded jobs; {done} reports answered; submitted {}, assigned {}, refused {}; {polls} polls = {:.0}/s, {} failed; {} registrations; server pending min {})",
        succeeded as f64 / secs,
        stats.submitted.load(Ordering::Relaxed),
        stats.assignments.load(Ordering::Relaxed),
        stats.refused.load(Ordering::Relaxed),
        polls as f64 / secs,
        stats.poll_errors.load(Ordering::Relaxed),
        stats.registrations.load(Ordering::Relaxed),
        min_pending.map_or_else(|| "unknown".to_owned(), |m| m.to_string()),
    );
    // Idle: nothing submitted; wait for the backlog to drain, then hold the polls open.
    let drain = Instant::now();
    while stats.completed.load(Ordering::Relaxed) < stats.submitted.load(Ordering::Relaxed)
        && drain.elapsed() < Duration::from_secs(120)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drained = drain.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    println!(
        "idle: backlog drained in {drained:.2} s ({} of {} completed); {} long-polls open (this process's count); holding 4 s",
        stats.completed.load(Ordering::Relaxed),
        stats.submitted.load(Ordering::Relaxed),
        stats.polls_open.load(Ordering::Relaxed),
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::Relaxed);
    println!(
        "done: {} long-polls open at exit; {} polls failed in all",
        stats.polls_open.load(Ordering::Relaxed),
        stats.poll_errors.load(Ordering::Relaxed),
    );
}
