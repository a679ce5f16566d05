//! Measures no-op jobs through one in-process worker against the real server. Not run
//! by default; for figures, build and run in release:
//!
//! ```text
//! cargo build --release -p lqsm-cli
//! cargo test --release -p lqsm-worker --test throughput -- --ignored --nocapture
//! ```
//!
//! `LQSM_BENCH_JOBS` sets the number of jobs (default 50,000).
#![allow(clippy::unwrap_used, clippy::print_stdout, missing_docs)]

use lqsm_api as api;
use lqsm_testkit::TestServer;
use lqsm_worker::{Capacity, WorkerBuilder, WorkerConfig};
use std::time::{Duration, Instant};

fn noop() -> api::SubmitJob {
    let mut job = api::SubmitJob::function("root.default", "lqsm.noop", serde_json::Value::Null);
    job.resources = Some(api::Resources {
        cpu: Some(0.001),
        memory_mib: Some(0),
        ..Default::default()
    });
    job
}

async fn start_worker(
    server: &TestServer,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<lqsm_worker::RunSummary, lqsm_worker::WorkerError>>,
) {
    let mut config = WorkerConfig::new(server.url());
    config.capacity = Capacity {
        cpus: 1000.0,
        memory_mib: 1024,
        ..Capacity::default()
    };
    config.memory_limits = false;
    // The test harness cannot serve as the attempts' supervisor.
    config.supervise_commands = false;
    let worker = WorkerBuilder::new(config).build().unwrap();
    let id = worker.id();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run(async move {
        let _ = stopped.await;
    }));
    let client = server.client();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !client.workers().await.unwrap().iter().any(|w| w.id == id) {
        assert!(Instant::now() < deadline, "the worker never registered");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    (stop, running)
}

async fn wait_for_succeeded(client: &lqsm_client::Client, expected: u64) {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let done = client.queue("root.default").await.unwrap().counts.succeeded;
        if done >= expected {
            return;
        }
        assert!(Instant::now() < deadline, "only {done} of {expected} done");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "a measurement: run with --ignored --nocapture, in release"]
async fn noop_jobs_through_one_worker() {
    let server = TestServer::start().await;
    let client = server.client();
    let total: usize = std::env::var("LQSM_BENCH_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    let batch: Vec<api::SubmitJob> = (0..1000).map(|_| noop()).collect();
    let rounds = total.div_ceil(1000);

    // 1. Latency: one job at a time, submit → the client sees it succeeded.
    let (stop, running) = start_worker(&server).await;
    let mut latencies = Vec::new();
    for _ in 0..200 {
        let started = Instant::now();
        let id = client.submit(&noop()).await.unwrap().id;
        let view = client.wait(id, Duration::from_secs(10)).await.unwrap();
        assert_eq!(view.state, lqsm_api::JobState::Succeeded);
        let elapsed = started.elapsed();
        if elapsed > Duration::from_millis(20) {
            // Where the time went, by the server's clock (ms).
            let a = &view.attempts[0];
            println!(
                "slow job: {elapsed:?}: scheduled +{} ms, finished +{:?} ms after submission",
                a.scheduled_at_ms - view.submitted_at_ms,
                view.finished_at_ms.map(|t| t - view.submitted_at_ms),
            );
        }
        latencies.push(elapsed);
    }
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    println!(
        "latency submit→succeeded (200 sequential no-op jobs): p50 {:?}, p90 {:?}, p99 {:?}, max {:?}",
        at(0.5),
        at(0.9),
        at(0.99),
        at(1.0)
    );
    let _ = stop.send(());
    let summary = running.await.unwrap().unwrap();
    let mut expected = summary.succeeded;

    // 2. A backlog: jobs wait with no worker; one worker starts and runs them all.
    for _ in 0..rounds {
        let answer = client.submit_batch(&batch).await.unwrap();
        assert_eq!(answer.accepted, batch.len());
    }
    expected += (rounds * 1000) as u64;
    let started = Instant::now();
    let (stop, running) = start_worker(&server).await;
    wait_for_succeeded(&client, expected).await;
    let elapsed = started.elapsed();
    println!(
        "backlog: {} pending no-op jobs run by one new worker in {elapsed:?}: {:.0} jobs/s (dispatch, run, report, commit)",
        rounds * 1000,
        (rounds * 1000) as f64 / elapsed.as_secs_f64()
    );

    // 3. End to end: two tasks submit batches of 1,000 while the worker runs them.
    let started = Instant::now();
    let submitters: Vec<_> = (0..2)
        .map(|_| {
            let client = client.clone();
            let batch = batch.clone();
            tokio::spawn(async move {
                for _ in 0..rounds.div_ceil(2) {
                    let answer = client.submit_batch(&batch).await.unwrap();
                    assert_eq!(answer.accepted, batch.len());
                }
            })
        })
        .collect();
    for s in submitters {
        s.await.unwrap();
    }
    let submitted = started.elapsed();
    let n = (rounds.div_ceil(2) * 2 * 1000) as u64;
    expected += n;
    wait_for_succeeded(&client, expected).await;
    let elapsed = started.elapsed();
    println!(
        "end to end: {n} no-op jobs submitted in {submitted:?}, all succeeded after {elapsed:?}: {:.0} jobs/s",
        n as f64 / elapsed.as_secs_f64()
    );
    let _ = stop.send(());
    let summary = running.await.unwrap().unwrap();
    println!("worker: {summary:?}");
}
