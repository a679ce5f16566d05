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
#![allow(clippy::unwrap_used, clippy::print_stdout, missing_docs)]

use lqsm_api::{SubmitBatch, SubmitJob};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

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
                        let body = SubmitBatch {
                            jobs: (0..size).map(|i| job(b * size + i)).collect(),
                        };
                        let res = client
                            .post(format!("{base}/v1/jobs/batch"))
                            .json(&body)
                            .send()
                            .await
                            .unwrap();
                        assert!(res.status().is_success(), "{}", res.text().await.unwrap());
                        let out: lqsm_api::BatchResult = res.json().await.unwrap();
                        accepted += out.accepted;
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
        other => panic!("unknown mode {other}: use batch or single"),
    }
}
