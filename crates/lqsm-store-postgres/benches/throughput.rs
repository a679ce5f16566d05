//! Throughput of the PostgreSQL backend, against the ceiling of `scripts/bench-pg-ceiling.sh`.
//!
//! ```sh
//! cargo bench -p lqsm-store-postgres --bench throughput
//! ```
//!
//! Environment: `LQSM_BENCH_POSTGRES_URL` (default
//! `postgresql://postgres@127.0.0.1:5432/test`), `BENCH_JOBS` (default 1,000,000),
//! `BENCH_RUNS` (default 3), `BENCH_ONLY` (`drivers`, `submit` or `lifecycle`).
//!
//! Three measurements, each run `BENCH_RUNS` times on fresh tables, median printed:
//!
//! - `drivers`: how to ship 1,000 job rows in one transaction with the synchronous client,
//!   `INSERT ... SELECT FROM unnest($1::uuid[], ...)` with binary array parameters against
//!   `COPY ... FROM STDIN BINARY`, into a table of the shape of `lqsm_jobs`;
//! - `submit`: `PostgresStore::commit` of batches of 1,000 new jobs (200-byte records,
//!   100 queues, every 5th job tagged, every 7th too), then `load` of them all;
//! - `lifecycle`: the three durable writes of each job, each a commit of 1,000 jobs:
//!   accepted (insert), assigned (state and record change), finished (the same).

#![allow(clippy::unwrap_used, clippy::print_stdout, missing_docs)]

use std::time::{Duration, Instant};

use lqsm_store::testsuite::{job_key, job_write};
use lqsm_store::{JobIndex, JobWrite, Store, WriteBatch};
use lqsm_store_postgres::{PostgresOptions, PostgresStore, SslMode};
use postgres::types::Type;
use uuid::Uuid;

const BATCH: u64 = 1_000;
const SCHEMA: &str = "lqsm_bench";

fn url() -> String {
    std::env::var("LQSM_BENCH_POSTGRES_URL")
        .unwrap_or_else(|_| "postgresql://postgres@127.0.0.1:5432/test".to_string())
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn admin() -> postgres::Client {
    postgres::Client::connect(&url(), postgres::NoTls)
        .unwrap_or_else(|e| panic!("PostgreSQL at {} did not answer: {e}", url()))
}

fn drop_schema() {
    admin()
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"))
        .unwrap();
}

/// A 200-byte record that differs per job and per write.
fn record(n: u64, write: u8) -> Vec<u8> {
    let mut record = vec![write; 200];
    record[..8].copy_from_slice(&n.to_le_bytes());
    record
}

/// Job `n` in state `state`, in one of 100 queues, tagged as the test kit tags (every 5th
/// `five`, every 7th `seven`); `previous` is the state it was committed in before, if any
/// (the contract wants the writer to say; this backend does not need it).
fn job(n: u64, state: &str, previous: Option<&str>, write: u8) -> JobWrite {
    let mut job = job_write(n, record(n, write));
    job.index.queue = format!("root.q{}", n % 100);
    job.index.state = state.to_string();
    job.previous = previous.map(|before| JobIndex {
        state: before.to_string(),
        ..job.index.clone()
    });
    job
}

fn median(mut rates: Vec<f64>) -> f64 {
    rates.sort_by(f64::total_cmp);
    rates[rates.len() / 2]
}

fn report(what: &str, rates: Vec<f64>) {
    let shown: Vec<String> = rates.iter().map(|r| format!("{r:.0}")).collect();
    println!(
        "{what}: median {:.0} jobs/s (runs: {})",
        median(rates),
        shown.join(", ")
    );
}

fn fresh_store() -> PostgresStore {
    drop_schema();
    let mut options = PostgresOptions::new(url()).with_schema(SCHEMA);
    options.ssl_mode = Some(SslMode::Disable);
    PostgresStore::open(&options).unwrap()
}

/// A fresh store under this bench's lease, and an empty batch at its epoch.
fn leased_store() -> (PostgresStore, WriteBatch) {
    let store = fresh_store();
    let lease = store
        .acquire_lease("bench", Duration::from_secs(600), 0)
        .unwrap();
    let batch = WriteBatch {
        epoch: lease.epoch,
        ..WriteBatch::default()
    };
    (store, batch)
}

/// Commits `jobs` new jobs; returns their rate and, as a restart would, the rate at which
/// `load` then reads them all back.
fn submit(jobs: u64) -> (f64, f64) {
    let (store, mut batch) = leased_store();
    let start = Instant::now();
    for first in (0..jobs).step_by(BATCH as usize) {
        batch.jobs.clear();
        batch
            .jobs
            .extend((first..first + BATCH).map(|n| job(n, "pending", None, 1)));
        store.commit(&batch).unwrap();
    }
    let submitted = jobs as f64 / start.elapsed().as_secs_f64();
    let start = Instant::now();
    let loaded = store.load().unwrap().jobs.len();
    let load_rate = loaded as f64 / start.elapsed().as_secs_f64();
    assert_eq!(loaded as u64, jobs, "every job is loaded");
    (submitted, load_rate)
}

fn lifecycle(jobs: u64) -> f64 {
    let (store, mut batch) = leased_store();
    let start = Instant::now();
    for first in (0..jobs).step_by(BATCH as usize) {
        let writes = [
            ("pending", None, 1),
            ("running", Some("pending"), 2),
            ("succeeded", Some("running"), 3),
        ];
        for (state, previous, write) in writes {
            batch.jobs.clear();
            batch
                .jobs
                .extend((first..first + BATCH).map(|n| job(n, state, previous, write)));
            store.commit(&batch).unwrap();
        }
    }
    let rate = jobs as f64 / start.elapsed().as_secs_f64();
    let finished: u64 = store
        .counts()
        .unwrap()
        .iter()
        .filter(|c| c.state == "succeeded")
        .map(|c| c.count)
        .sum();
    assert_eq!(finished, jobs, "every job ends finished");
    rate
}

/// Ships `jobs` rows in transactions of 1,000 rows, with `unnest` or with binary COPY.
fn driver(jobs: u64, copy: bool) -> f64 {
    drop_schema();
    let mut client = admin();
    client
        .batch_execute(&format!(
            "CREATE SCHEMA {SCHEMA}; SET search_path = {SCHEMA};
             CREATE TABLE jobs (key uuid PRIMARY KEY, queue text COLLATE \"C\" NOT NULL,
                 state text COLLATE \"C\" NOT NULL, record bytea NOT NULL);
             CREATE INDEX jobs_by_queue ON jobs (queue, key);
             CREATE INDEX jobs_by_state ON jobs (state, key);"
        ))
        .unwrap();
    let insert = client
        .prepare(
            "INSERT INTO jobs (key, queue, state, record)
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bytea[])",
        )
        .unwrap();
    let start = Instant::now();
    for first in (0..jobs).step_by(BATCH as usize) {
        let keys: Vec<Uuid> = (first..first + BATCH)
            .map(|n| Uuid::from_bytes(job_key(n)))
            .collect();
        let queues: Vec<String> = (first..first + BATCH)
            .map(|n| format!("root.q{}", n % 100))
            .collect();
        let records: Vec<Vec<u8>> = (first..first + BATCH).map(|n| record(n, 1)).collect();
        let mut tx = client.transaction().unwrap();
        if copy {
            let sink = tx
                .copy_in("COPY jobs (key, queue, state, record) FROM STDIN BINARY")
                .unwrap();
            let mut writer = postgres::binary_copy::BinaryCopyInWriter::new(
                sink,
                &[Type::UUID, Type::TEXT, Type::TEXT, Type::BYTEA],
            );
            for ((key, queue), record) in keys.iter().zip(&queues).zip(&records) {
                writer.write(&[key, queue, &"pending", record]).unwrap();
            }
            writer.finish().unwrap();
        } else {
            let states = vec!["pending"; keys.len()];
            tx.execute(&insert, &[&keys, &queues, &states, &records])
                .unwrap();
        }
        tx.commit().unwrap();
    }
    jobs as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let jobs = env_number("BENCH_JOBS", 1_000_000) / BATCH * BATCH;
    let runs = env_number("BENCH_RUNS", 3);
    let only = std::env::var("BENCH_ONLY").ok();
    let wanted = |name: &str| only.as_deref().is_none_or(|o| o == name);
    println!(
        "{jobs} jobs in batches of {BATCH}, {runs} runs each; load {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    if wanted("drivers") {
        let rates = (0..runs).map(|_| driver(jobs, false)).collect();
        report("insert ... select from unnest (binary arrays)", rates);
        let rates = (0..runs).map(|_| driver(jobs, true)).collect();
        report("copy from stdin binary", rates);
    }
    if wanted("submit") {
        let (rates, loads): (Vec<f64>, Vec<f64>) = (0..runs).map(|_| submit(jobs)).unzip();
        report("PostgresStore: commits of 1,000 new jobs", rates);
        report("PostgresStore: load() of them all", loads);
    }
    if wanted("lifecycle") {
        let rates = (0..runs).map(|_| lifecycle(jobs)).collect();
        report(
            "PostgresStore: three commits per job (accepted, assigned, finished)",
            rates,
        );
    }
    println!(
        "load after: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    drop_schema();
}
