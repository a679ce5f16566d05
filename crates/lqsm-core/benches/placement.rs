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
    for i in 0..WORKERS {
        rm.register_worker(
            WorkerRegistration {
                id: WorkerId(Uuid::from_u128(1 << 64 | i as u128)),
                name: format!("w{i}"),
                capacity: Resources::cores(256, 1 << 20),
                labels: Default::default(),
                serves_commands: true,
                handlers: ["*".to_string()].into(),
            },
            NOW,
        )
        .expect("valid worker");
    }
    let queues: Vec<String> = (0..leaves).map(|i| format!("root.q{i}")).collect();
    for j in 0..jobs {
        let mut req = SubmitRequest::function(
            JobId(Uuid::from_u128(j as u128 + 1)),
            &queues[j % leaves],
            "lqsm.noop",
            serde_json::Value::Null,
        );
        req.request = Some(Resources::cores(1, 64));
        rm.submit(req, NOW).expect("valid job");
    }
    rm.take_effects();
    rm
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

/// A pass when nothing changed since the last one.
#[divan::bench(sample_count = 1000)]
fn idle_pass(bencher: Bencher) {
    let mut rm = cluster(1_000, 10_000);
    rm.schedule(NOW);
    bencher.bench_local(|| black_box(rm.schedule(NOW)));
}
