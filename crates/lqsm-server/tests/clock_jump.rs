//! The server's wall clock stepped ten minutes either way (an NTP step, a VM resumed, an
//! operator setting the date), through a clock injected with `ServerConfig::wall_clock`,
//! while in-process workers run jobs of a few seconds, a job waits on a timeout and
//! another on an ETA. No attempt may be declared lost because of the step, the timeout
//! fires after its duration (not at the step, not ten minutes late), the ETA follows the
//! wall clock (docs/ARCHITECTURE.md, "Time"), and every acknowledged job completes
//! exactly once, counted by the jobs themselves. Each run prints its figures.
#![allow(clippy::unwrap_used, clippy::print_stdout, missing_docs)] // Each run prints its counts.

use lqsm_api as api;
use lqsm_client::Client;
use lqsm_server::resource_manager::WallClock;
use lqsm_testkit::{TestServer, eventually_async, eventually_async_within};
use lqsm_worker::{Capacity, WorkerBuilder, WorkerConfig};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use uuid::Uuid;

const TEN_MINUTES_MS: i64 = 600_000;

/// Jobs that each sleep this long: running when the clock steps.
const SLEEP_MS: u64 = 4_000;

/// How many such jobs.
const SLEEPERS: u64 = 12;

/// The timeout of the job that never ends by itself.
const TIMEOUT: Duration = Duration::from_secs(6);

/// How long anything that must happen soon may take on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(60);

/// The system clock plus an offset the test changes.
fn steppable_clock() -> (WallClock, Arc<AtomicI64>) {
    let offset = Arc::new(AtomicI64::new(0));
    let read = offset.clone();
    let clock = WallClock::from_fn(move || {
        lqsm_api::epoch_ms().saturating_add_signed(read.load(Ordering::SeqCst))
    });
    (clock, offset)
}

/// What the jobs themselves saw, by the number each was given.
#[derive(Default)]
struct Ledger {
    started: Mutex<HashMap<u64, Vec<Instant>>>,
    completed: Mutex<HashMap<u64, u32>>,
}

impl Ledger {
    fn start(&self, n: u64) {
        self.started
            .lock()
            .unwrap()
            .entry(n)
            .or_default()
            .push(Instant::now());
    }

    fn complete(&self, n: u64) {
        *self.completed.lock().unwrap().entry(n).or_default() += 1;
    }

    fn completions(&self, n: u64) -> u32 {
        self.completed.lock().unwrap().get(&n).copied().unwrap_or(0)
    }

    fn first_start(&self, n: u64) -> Option<Instant> {
        self.started.lock().unwrap().get(&n)?.first().copied()
    }
}

fn number(args: &Value) -> Result<u64, String> {
    args["n"]
        .as_u64()
        .ok_or_else(|| "`n` must be a number".to_owned())
}

/// A worker in this process running `clock.sleep` (sleeps `ms`, then counts itself
/// complete) and `clock.hang` (never ends by itself).
fn start_worker(
    server: &TestServer,
    name: &str,
    ledger: &Arc<Ledger>,
) -> (oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let mut config = WorkerConfig::new(server.url());
    config.name = name.into();
    config.capacity = Capacity {
        cpus: 8.0,
        memory_mib: 8192,
        ..Capacity::default()
    };
    config.kill_grace = Duration::from_millis(300);
    config.poll_wait = Duration::from_millis(1000);
    config.supervise_commands = false;
    let sleeper = ledger.clone();
    let hanger = ledger.clone();
    let worker = WorkerBuilder::new(config)
        .handler("clock.sleep", move |args: Value| {
            let ledger = sleeper.clone();
            async move {
                let n = number(&args)?;
                ledger.start(n);
                tokio::time::sleep(Duration::from_millis(args["ms"].as_u64().unwrap_or(0))).await;
                ledger.complete(n);
                Ok::<_, String>(json!({ "n": n }))
            }
        })
        .handler("clock.hang", move |args: Value| {
            let ledger = hanger.clone();
            async move {
                let n = number(&args)?;
                ledger.start(n);
                tokio::time::sleep(Duration::from_secs(600)).await;
                ledger.complete(n);
                Ok::<_, String>(Value::Null)
            }
        })
        .build()
        .unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let _ = worker
            .run(async move {
                let _ = stopped.await;
            })
            .await;
    });
    (stop, task)
}

fn function_job(handler: &str, args: Value, max_attempts: u32) -> api::SubmitJob {
    let mut job = api::SubmitJob::function("root.default", handler, args);
    job.resources = Some(api::Resources {
        cpu: Some(0.5),
        memory_mib: Some(16),
        ..Default::default()
    });
    job.retry = Some(api::RetrySpec {
        max_attempts: Some(max_attempts),
        backoff_base_ms: Some(100),
        ..Default::default()
    });
    job
}

/// Attempts of these jobs the server ended as lost.
async fn attempts_declared_lost(client: &Client, jobs: &[Uuid]) -> usize {
    let mut lost = 0;
    for id in jobs {
        let view = client.job(*id).await.unwrap();
        lost += view
            .attempts
            .iter()
            .filter(|a| a.outcome == Some(api::AttemptOutcome::Lost))
            .count();
    }
    lost
}

async fn state_of(client: &Client, id: Uuid) -> api::JobState {
    client.job(id).await.unwrap().state
}

/// Runs jobs across a step of the server's wall clock by `step_ms` and checks what the
/// module says.
async fn jobs_survive_a_step_of(step_ms: i64) {
    let (wall, offset) = steppable_clock();
    let server = TestServer::start_with(|config| config.wall_clock = wall.clone()).await;
    let client = server.client();
    let ledger = Arc::new(Ledger::default());
    let workers = [
        start_worker(&server, "clock-a", &ledger),
        start_worker(&server, "clock-b", &ledger),
    ];
    eventually_async("both workers to register", || async {
        (client.workers().await.unwrap().len() == 2).then_some(())
    })
    .await;

    // Acknowledged: sleepers 0..SLEEPERS, the ETA job SLEEPERS. The timeout job is
    // expected to time out, not to complete.
    let mut acknowledged: Vec<(u64, Uuid)> = Vec::new();
    for n in 0..SLEEPERS {
        let job = function_job("clock.sleep", json!({ "n": n, "ms": SLEEP_MS }), 3);
        acknowledged.push((n, client.submit(&job).await.unwrap().id));
    }
    let hang_n = SLEEPERS + 1;
    let mut hang = function_job("clock.hang", json!({ "n": hang_n }), 1);
    hang.timeout_ms = Some(TIMEOUT.as_millis() as u64);
    let hang = client.submit(&hang).await.unwrap().id;
    // Forward, the step carries the clock past the ETA; backward, it puts the ETA ten
    // minutes further off, until the clock is stepped back.
    let eta_in = if step_ms > 0 {
        Duration::from_secs(120)
    } else {
        Duration::from_secs(15)
    };
    let eta_n = SLEEPERS;
    let mut at_eta = function_job("clock.sleep", json!({ "n": eta_n, "ms": 100 }), 3);
    let eta_submitted = Instant::now();
    at_eta.not_before_ms = Some(wall.now_ms() + eta_in.as_millis() as u64);
    acknowledged.push((eta_n, client.submit(&at_eta).await.unwrap().id));

    // Everything but the ETA job is running on the workers: step the clock.
    eventually_async("every sleeper and the hanging job to start", || async {
        let started = ledger.started.lock().unwrap();
        ((0..SLEEPERS).all(|n| started.contains_key(&n)) && started.contains_key(&hang_n))
            .then_some(())
    })
    .await;
    offset.fetch_add(step_ms, Ordering::SeqCst);
    let stepped = Instant::now();

    // The timeout fires after its duration from the attempt's start, as measured by the
    // job: not at the step, not ten minutes later.
    let timed_out_at = eventually_async_within("the hanging job to time out", PATIENCE, || async {
        state_of(&client, hang)
            .await
            .is_terminal()
            .then(Instant::now)
    })
    .await;
    let hang_started = ledger.first_start(hang_n).unwrap();
    let timeout_after = timed_out_at.duration_since(hang_started);
    let view = client.job(hang).await.unwrap();
    assert_eq!(
        view.attempts.last().and_then(|a| a.outcome),
        Some(api::AttemptOutcome::TimedOut),
        "{view:?}"
    );
    assert!(
        timeout_after >= TIMEOUT - Duration::from_millis(100),
        "the {TIMEOUT:?} timeout fired after {timeout_after:?} (the step was {step_ms} ms, {:?} after the start)",
        stepped.duration_since(hang_started)
    );

    // Every sleeper ends, once.
    for (n, id) in &acknowledged[..SLEEPERS as usize] {
        eventually_async_within("a sleeper to finish", PATIENCE, || async {
            state_of(&client, *id).await.is_terminal().then_some(())
        })
        .await;
        assert_eq!(
            state_of(&client, *id).await,
            api::JobState::Succeeded,
            "job {n}"
        );
    }

    let eta_id = acknowledged[SLEEPERS as usize].1;
    let eta_story = if step_ms > 0 {
        // The ETA lies in the past of the stepped clock: the job runs now, long before
        // its two minutes of real time are up.
        eventually_async_within("the ETA job to run after the step", PATIENCE, || async {
            (state_of(&client, eta_id).await == api::JobState::Succeeded).then_some(())
        })
        .await;
        let ran_after = ledger
            .first_start(eta_n)
            .unwrap()
            .duration_since(eta_submitted);
        assert!(ran_after < eta_in, "it ran because of the step");
        format!(
            "started {ran_after:?} after submission, its ETA {eta_in:?} ahead by the clock before the step"
        )
    } else {
        // Past its ETA in real time, but ten minutes before it by the stepped clock: it
        // waits. (A wait for time to pass, not for an event.)
        tokio::time::sleep_until((eta_submitted + eta_in + Duration::from_secs(2)).into()).await;
        assert_eq!(state_of(&client, eta_id).await, api::JobState::Pending);
        offset.fetch_add(-step_ms, Ordering::SeqCst);
        eventually_async_within(
            "the ETA job to run once the clock is set right",
            PATIENCE,
            || async {
                (state_of(&client, eta_id).await == api::JobState::Succeeded).then_some(())
            },
        )
        .await;
        format!(
            "waited past its ETA ({eta_in:?} of real time) while the clock read 10 min earlier, ran once it was set right"
        )
    };

    let ids: Vec<Uuid> = acknowledged
        .iter()
        .map(|(_, id)| *id)
        .chain([hang])
        .collect();
    let declared_lost = attempts_declared_lost(&client, &ids).await;
    let lost = acknowledged
        .iter()
        .filter(|(n, _)| ledger.completions(*n) == 0)
        .count();
    let completed_twice = acknowledged
        .iter()
        .filter(|(n, _)| ledger.completions(*n) > 1)
        .count();
    println!(
        "wall clock stepped {:+} s while {SLEEPERS} jobs of {SLEEP_MS} ms ran: acknowledged={} lost={lost} completed_twice={completed_twice} attempts_declared_lost={declared_lost}; a {TIMEOUT:?} timeout fired after {timeout_after:?}; the ETA job {eta_story}",
        step_ms / 1000,
        acknowledged.len(),
    );
    assert_eq!(
        declared_lost, 0,
        "attempts declared lost because of the step"
    );
    assert_eq!(lost, 0, "acknowledged jobs that never completed");
    assert_eq!(completed_twice, 0, "jobs completed twice");
    for (n, id) in &acknowledged {
        let view = client.job(*id).await.unwrap();
        assert_eq!(view.attempts.len(), 1, "job {n} ran once: {view:?}");
    }
    for (stop, task) in workers {
        let _ = stop.send(());
        let _ = tokio::time::timeout(PATIENCE, task).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_step_of_ten_minutes_loses_no_attempt_and_runs_no_job_twice() {
    jobs_survive_a_step_of(TEN_MINUTES_MS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backward_step_of_ten_minutes_stalls_no_timeout_and_runs_no_job_twice() {
    jobs_survive_a_step_of(-TEN_MINUTES_MS).await;
}
