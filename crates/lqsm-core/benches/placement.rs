//! Scheduling throughput of the core on one thread.
//!
//! `cargo bench -p lqsm-core --bench placement`

use divan::counter::ItemsCount;
use divan::{Bencher, black_box};
use lqsm_core::*;
use uuid::Uuid;

fn main() {
    divan::main();
}

const WORKERS: usize = 5_000;
const JOBS: usize = 1_000_000;
const NOW: Timestamp = Timestamp(1_700_000_000_000);

/// `leaves` equal leaf queues under root, `WORKERS` workers of 256 cores, and `jobs`
/// one-core jobs spread round-robin over the leaves.
fn cluster(leaves: usize, jobs: usize) -> ResourceManager {
    let mut rm =
        ResourceManager::new(Config::default(), Policies::default(), 42).expect("valid config");
    let share = 100.0 / leaves as f64;
    for i in 0..leaves {
        rm.create_queue(
            &format!("root.q{i}"),
            QueueConfig::with_capacity(share, 100.0),
        )
        .expect("valid queue");
    }
    register_workers(&mut rm);
    for j in 0..jobs {
        rm.submit(one_core_job(j, leaves), NOW).expect("valid job");
    }
    rm.take_effects();
    rm
}

/// `WORKERS` workers of 256 cores.
fn register_workers(rm: &mut ResourceManager) {
    for i in 0..WORKERS {
        rm.register_worker(
            WorkerRegistration {
                id: WorkerId(Uuid::from_u128(1 << 64 | i as u128)),
                name: format!("w{i}"),
                capacity: Resources::cores(256, 1 << 20),
                labels: Default::default(),
                serves_commands: true,
                queues: Default::default(),
                handlers: ["*".to_string()].into(),
            },
            NOW,
        )
        .expect("valid worker");
    }
}

/// The `j`th one-core no-op job, for leaf `j % leaves`.
fn one_core_job(j: usize, leaves: usize) -> SubmitRequest {
    let mut req = SubmitRequest::function(
        JobId(Uuid::from_u128(j as u128 + 1)),
        &format!("root.q{}", j % leaves),
        "lqsm.noop",
        serde_json::Value::Null,
    );
    req.request = Some(Resources::cores(1, 64));
    req
}

/// One pass placing a million pending jobs on 5,000 workers.
#[divan::bench(args = [1_000, 100_000], sample_count = 3, sample_size = 1)]
fn place_one_million(bencher: Bencher, leaves: usize) {
    bencher
        .counter(ItemsCount::new(JOBS))
        .with_inputs(|| cluster(leaves, JOBS))
        .bench_local_values(|mut rm| {
            let report = rm.schedule(NOW);
            assert_eq!(report.placed, JOBS as u64);
            rm
        });
}

/// Limits generous enough never to bind: every leaf a queue limit and the handler a
/// cluster-wide limit; with `keys`, every job also a key (one of 10 per leaf) under a
/// per-key limit. What limits cost a pass that places as much as it would without them.
fn generous_limits(leaves: usize, jobs: usize, keys: bool) -> ResourceManager {
    let generous = RateLimit::new(Rate::parse("1000000/s").expect("valid"), 1_000_000);
    let mut config = Config::default();
    config
        .handler_rate_limits
        .insert("lqsm.noop".into(), generous);
    let mut rm = ResourceManager::new(config, Policies::default(), 42).expect("valid config");
    let share = 100.0 / leaves as f64;
    for i in 0..leaves {
        let mut settings = QueueConfig {
            rate_limit: Some(generous),
            ..QueueConfig::with_capacity(share, 100.0)
        };
        if keys {
            settings.key_limits = [("customer".to_owned(), generous)].into();
        }
        rm.create_queue(&format!("root.q{i}"), settings)
            .expect("valid queue");
    }
    register_workers(&mut rm);
    for j in 0..jobs {
        let mut req = one_core_job(j, leaves);
        if keys {
            req.keys = [("customer".to_owned(), format!("c{}", j % 10_000))].into();
        }
        rm.submit(req, NOW).expect("valid job");
    }
    rm.take_effects();
    rm
}

/// One pass placing a million pending jobs from 1,000 leaves on 5,000 workers, with
/// [`generous_limits`]: `queue_handler` (queue and handler limits) or
/// `queue_handler_key` (and per-key limits, every job carrying a key).
#[divan::bench(args = ["queue_handler", "queue_handler_key"], sample_count = 3, sample_size = 1)]
fn place_one_million_rate_limited(bencher: Bencher, limits: &str) {
    let keys = limits.ends_with("key");
    bencher
        .counter(ItemsCount::new(JOBS))
        .with_inputs(|| generous_limits(1_000, JOBS, keys))
        .bench_local_values(|mut rm| {
            let report = rm.schedule(NOW);
            assert_eq!(report.placed, JOBS as u64);
            rm
        });
}

/// A pass when nothing changed since the last one.
#[divan::bench(sample_count = 1000)]
fn idle_pass(bencher: Bencher) {
    let mut rm = cluster(1_000, 10_000);
    rm.schedule(NOW);
    bencher.bench_local(|| black_box(rm.schedule(NOW)));
}

/// Submitting jobs into 1,000 leaves (validation, defaults, indexing), per job.
#[divan::bench(sample_count = 5, sample_size = 1)]
fn submit_100k(bencher: Bencher) {
    const N: usize = 100_000;
    bencher
        .counter(ItemsCount::new(N))
        .with_inputs(|| {
            let rm = cluster(1_000, 0);
            let requests: Vec<SubmitRequest> = (0..N).map(|j| one_core_job(j, 1_000)).collect();
            (rm, requests)
        })
        .bench_local_values(|(mut rm, requests)| {
            for req in requests {
                rm.submit(req, NOW).expect("valid job");
            }
            rm
        });
}

/// A full cluster with 1,000 queues of waiting jobs: one attempt ends and the pass
/// that follows gives its slot to the neediest queue.
#[divan::bench(sample_count = 200)]
fn saturated_pass_after_one_finish(bencher: Bencher) {
    let mut rm = cluster(1_000, 0);
    // Fill every worker (5,000 × 256 cores) and leave 200,000 jobs waiting.
    for j in 0..(WORKERS * 256 + 200_000) {
        rm.submit(one_core_job(j, 1_000), NOW).expect("valid job");
    }
    rm.schedule(NOW);
    let mut finished = 0u128;
    bencher.bench_local(|| {
        // Cancelling a running attempt frees one core, like a finish does.
        finished += 1;
        rm.cancel(JobId(Uuid::from_u128(finished)), "bench", NOW)
            .expect("running job");
        let report = rm.schedule(NOW);
        rm.take_effects();
        black_box(report)
    });
}
