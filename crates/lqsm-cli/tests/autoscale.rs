//! Worker autoscaling end to end with the `local` provider: a real `lqsm server` with a
//! pool that starts at zero; a backlog of command jobs makes it start `lqsm worker`
//! processes, every job runs exactly once, and once idle the workers are drained and
//! their processes stopped. What it decided shows in `lqsm cluster`, its events and
//! `/metrics`.
#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

mod e2e_support;

use e2e_support::{Cli, completions, marking_job};
use lqsm_api as api;
use lqsm_testkit::{ServerProcess, eventually_explained};
use std::collections::BTreeSet;
use std::time::Duration;
use uuid::Uuid;

/// Generous: the machine running the tests may be loaded, and workers are processes.
const WAIT: Duration = Duration::from_secs(120);

const CONFIG: &str = r#"
[autoscale]
enabled = true
interval_ms = 300

[[autoscale.pools]]
name = "local"
provider = "local"
labels = { role = "batch" }
min = 0
max = 2
worker_capacity = { cpu = 1, memory_mib = 256 }
target_backlog_per_worker = 2.0
scale_up_cooldown_ms = 0
scale_down_cooldown_ms = 0
idle_before_scale_down_ms = 1500
registration_timeout_ms = 60000
"#;

/// Process ids whose command line names `needle` (a worker's name), from /proc.
fn processes_naming(needle: &str) -> Vec<u32> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        // A zombie has exited: only its parent has yet to reap it.
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| {
                let end = stat.rfind(')')?;
                stat[end + 1..].split_whitespace().next().map(str::to_owned)
            })
            .is_none_or(|state| state == "Z" || state == "X");
        if args.contains(&needle.as_bytes()) && !zombie {
            found.push(pid);
        }
    }
    found
}

#[test]
fn a_backlog_starts_local_workers_that_run_every_job_once_then_drain_and_stop() {
    let mut server = ServerProcess::builder().config(CONFIG).start();
    let api = server.api();
    let cli = Cli::new(&server.url());
    let explain = |server: &ServerProcess| server.log_tail();

    // Nothing waits: the pool stays at zero.
    let view: api::AutoscaleView = api.get("/v1/autoscale").expect(200);
    assert!(view.enabled);
    assert_eq!(
        view.pools[0].current + view.pools[0].pending,
        0,
        "{view:#?}"
    );

    let dir = tempfile::tempdir().unwrap();
    let marks = dir.path().join("marks");
    let mut ids = Vec::new();
    for _ in 0..8 {
        let id = Uuid::now_v7();
        let mut job = marking_job(id, &marks, "sleep 0.3");
        job.selector = [("role".to_owned(), "batch".to_owned())].into();
        api.submit(&job);
        ids.push(id);
    }

    // Workers are started for the backlog, at most max.
    let mut names = BTreeSet::new();
    eventually_explained(
        "local workers registered for the backlog",
        WAIT,
        || explain(&server),
        || {
            let view: api::AutoscaleView = api.get("/v1/autoscale").expect(200);
            names.extend(view.pools[0].workers.iter().map(|w| w.name.clone()));
            (view.pools[0].current >= 1).then_some(())
        },
    );

    // Every job ran once, on the pool's workers.
    eventually_explained(
        "every job succeeded",
        WAIT,
        || explain(&server),
        || {
            let view: api::AutoscaleView = api.get("/v1/autoscale").expect(200);
            names.extend(view.pools[0].workers.iter().map(|w| w.name.clone()));
            ids.iter()
                .all(|id| api.job(*id).state == api::JobState::Succeeded)
                .then_some(())
        },
    );
    let runs = completions(&marks);
    for id in &ids {
        let job = api.job(*id);
        assert_eq!(job.attempts.len(), 1, "{job:#?}");
        assert_eq!(
            runs.get(id),
            Some(&1),
            "job {id} ran {:?} times",
            runs.get(id)
        );
    }
    assert_eq!(runs.len(), ids.len(), "{runs:?}");
    assert!(!names.is_empty() && names.len() <= 2, "{names:?}");
    let workers: Vec<api::WorkerView> = api.get("/v1/workers").expect(200);
    for job in ids.iter().map(|id| api.job(*id)) {
        let ran_on = job.attempts[0].worker;
        let worker = workers.iter().find(|w| w.id == ran_on);
        assert!(
            worker.is_some_and(|w| w.labels.get("lqsm.pool").map(String::as_str) == Some("local")),
            "{job:#?} ran on {worker:?}"
        );
    }

    // Idle, they are drained and their processes stopped: back to zero.
    eventually_explained(
        "the workers drained and their processes gone",
        WAIT,
        || explain(&server),
        || {
            let view: api::AutoscaleView = api.get("/v1/autoscale").expect(200);
            let pool = &view.pools[0];
            let gone = names.iter().all(|n| processes_naming(n).is_empty());
            // The server saw them exit (it reaps its children every interval).
            let reaped = view
                .events
                .iter()
                .filter(|e| e.kind == "worker_stopped")
                .count();
            (pool.current == 0 && pool.pending == 0 && gone && reaped >= names.len()).then_some(())
        },
    );
    let view: api::AutoscaleView = api.get("/v1/autoscale").expect(200);
    let kinds: Vec<&str> = view.events.iter().map(|e| e.kind.as_str()).collect();
    for kind in [
        "scale_up",
        "workers_started",
        "scale_down",
        "worker_stopping",
        "worker_stopped",
    ] {
        assert!(kinds.contains(&kind), "no {kind} event: {kinds:?}");
    }
    let workers: Vec<api::WorkerView> = api.get("/v1/workers").expect(200);
    for w in workers.iter().filter(|w| names.contains(&w.name)) {
        assert_ne!(w.state, api::WorkerState::Active, "{w:?}");
    }

    // Visible: `lqsm cluster`, its events, and the metrics.
    let shown = cli.run(&["cluster", "--events"]);
    shown.success();
    assert!(shown.stdout.contains("pool local (local):"), "{shown:#?}");
    assert!(shown.stdout.contains("scale_up"), "{shown:#?}");
    assert!(shown.stdout.contains("scale_down"), "{shown:#?}");
    let json: serde_json::Value = cli.json(&["cluster"]);
    assert_eq!(json["autoscale"]["pools"][0]["name"], "local", "{json}");
    let metrics = api.get("/metrics").body;
    for needle in [
        "lqsm_autoscale_workers{pool=\"local\"} 0",
        "lqsm_autoscale_desired_workers{pool=\"local\"} 0",
        "lqsm_autoscale_decisions_total{pool=\"local\",action=\"scale_up\"}",
    ] {
        assert!(metrics.contains(needle), "no {needle} in:\n{metrics}");
    }

    // Nothing left behind at shutdown.
    server.stop();
}

#[test]
fn workers_started_by_the_local_provider_stop_with_the_server() {
    let config = CONFIG.replace("min = 0", "min = 1");
    let mut server = ServerProcess::builder().config(&config).start();
    let api = server.api();
    let name = eventually_explained(
        "the pool's least worker registered",
        WAIT,
        || server.log_tail(),
        || {
            let view: api::AutoscaleView = api.get("/v1/autoscale").expect(200);
            let pool = &view.pools[0];
            (pool.current == 1).then(|| pool.workers[0].name.clone())
        },
    );
    assert_eq!(processes_naming(&name).len(), 1);
    server.stop();
    eventually_explained(
        "the worker's process gone after the server's shutdown",
        WAIT,
        String::new,
        || processes_naming(&name).is_empty().then_some(()),
    );
}
