//! The server's wall clock stepped ten minutes either way (an NTP step, a VM resumed, an
//! operator setting the date), through a clock injected with `ServerConfig::wall_clock`,
//! while in-process workers run jobs of a few seconds, a job runs into its timeout,
//! another fails and waits its retry backoff, another waits for its ETA, and a worker
//! dies just after the step. No attempt may be declared lost because of the step; the
//! timeout fires after its duration (not at the step, not ten minutes late); the backoff
//! and the dead worker's heartbeat deadline are not stretched by a step back; the ETA
//! follows the wall clock (docs/ARCHITECTURE.md, "Time"); and every acknowledged job
//! completes exactly once, counted by the jobs themselves. Each run prints its figures,
//! then checks them.
#![allow(clippy::unwrap_used, clippy::print_stdout, missing_docs)] // Each run prints its counts.

use lqsm_api as api;
use lqsm_client::Client;
use lqsm_server::config::QueueDecl;
use lqsm_server::resource_manager::WallClock;
use lqsm_testkit::{POLL_EVERY, TestServer, eventually_async};
use lqsm_worker::{Capacity, WorkerBuilder, WorkerConfig};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};
use uuid::Uuid;

const TEN_MINUTES_MS: i64 = 600_000;

/// Jobs that each sleep this long: running when the clock steps.
const SLEEP_MS: u64 = 4_000;

/// How many such jobs.
const SLEEPERS: u64 = 12;

/// The numbers of the other jobs.
const ETA_JOB: u64 = SLEEPERS;
const FLAKY_JOB: u64 = SLEEPERS + 1;
const ORPHAN_JOB: u64 = SLEEPERS + 2;
const HANGING_JOB: u64 = SLEEPERS + 3;

/// The timeout of the job that never ends by itself.
const TIMEOUT: Duration = Duration::from_secs(6);

/// The server's heartbeat timeout: a dead worker is lost this long after its last poll.
const HEARTBEAT_TIMEOUT_MS: u64 = 8_000;

/// The queue only the worker that dies serves.
const ORPHANS: &str = "root.orphans";

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
    /// Notes a start; true for the job's first.
    fn start(&self, n: u64) -> bool {
        let mut started = self.started.lock().unwrap();
        let starts = started.entry(n).or_default();
        starts.push(Instant::now());
        starts.len() == 1
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

    fn has_started(&self, n: u64) -> bool {
        self.started.lock().unwrap().contains_key(&n)
    }
}

/// `clock.sleep`: sleeps `ms` (`again_ms` when it ran before), then fails if told to
/// fail its first run, else counts itself complete.
async fn sleep_job(ledger: Arc<Ledger>, args: Value) -> Result<Value, String> {
    let n = args["n"].as_u64().ok_or("`n` must be a number")?;
    let first = ledger.start(n);
    let ms = match args["again_ms"].as_u64() {
        Some(again) if !first => again,
        _ => args["ms"].as_u64().unwrap_or(0),
    };
    tokio::time::sleep(Duration::from_millis(ms)).await;
    if first && args["fail_first"].as_bool() == Some(true) {
        return Err("the first run fails, by design".into());
    }
    ledger.complete(n);
    Ok(json!({ "n": n }))
}

/// A worker in this process running `clock.sleep` and `clock.hang` (which never ends by
/// itself), serving `queues` (empty: all).
struct InProcessWorker {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
    /// Set: its handlers stop where they are, as the process of a real worker would.
    death: watch::Sender<bool>,
}

impl InProcessWorker {
    fn start(server: &TestServer, name: &str, queues: &[&str], ledger: &Arc<Ledger>) -> Self {
        let mut config = WorkerConfig::new(server.url());
        config.name = name.into();
        config.queues = queues.iter().map(|q| (*q).to_owned()).collect();
        config.capacity = Capacity {
            cpus: 8.0,
            memory_mib: 8192,
            ..Capacity::default()
        };
        config.kill_grace = Duration::from_millis(300);
        config.poll_wait = Duration::from_millis(1000);
        config.supervise_commands = false;
        let (death, _) = watch::channel(false);
        let sleeper = (ledger.clone(), death.subscribe());
        let hanger = ledger.clone();
        let worker = WorkerBuilder::new(config)
            .handler("clock.sleep", move |args: Value| {
                let (ledger, mut death) = (sleeper.0.clone(), sleeper.1.clone());
                async move {
                    tokio::select! {
                        done = sleep_job(ledger, args) => done,
                        _ = death.wait_for(|dead| *dead) => Err("its worker died".to_owned()),
                    }
                }
            })
            .handler("clock.hang", move |args: Value| {
                let ledger = hanger.clone();
                async move {
                    ledger.start(args["n"].as_u64().unwrap_or(u64::MAX));
                    tokio::time::sleep(Duration::from_secs(3600)).await;
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
        Self { stop, task, death }
    }

    /// Gone at once, without a word to the server, its jobs with it (a kill -9).
    fn die(&self) {
        self.task.abort();
        self.death.send_replace(true);
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(PATIENCE, self.task).await;
    }
}

fn sleep_job_in(queue: &str, args: Value, max_attempts: u32) -> api::SubmitJob {
    let mut job = api::SubmitJob::function(queue, "clock.sleep", args);
    job.resources = Some(api::Resources {
        cpu: Some(0.5),
        memory_mib: Some(16),
        ..Default::default()
    });
    job.retry = Some(api::RetrySpec {
        max_attempts: Some(max_attempts),
        backoff_base_ms: Some(500),
        backoff_cap_ms: Some(500),
        jitter: Some(0.0),
    });
    job
}

async fn view(client: &Client, id: Uuid) -> api::JobView {
    client.job(id).await.unwrap()
}

/// The first `Some` of `f` within `deadline`, polling; `None` when none came.
async fn within<T, F: std::future::Future<Output = Option<T>>>(
    deadline: Duration,
    mut f: impl FnMut() -> F,
) -> Option<T> {
    let until = Instant::now() + deadline;
    loop {
        if let Some(found) = f().await {
            return Some(found);
        }
        if Instant::now() >= until {
            return None;
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// When the job reached `state` (as first seen), within [`PATIENCE`].
async fn reached(client: &Client, id: Uuid, state: api::JobState) -> Option<Instant> {
    within(PATIENCE, || async move {
        (view(client, id).await.state == state).then(Instant::now)
    })
    .await
}

/// Runs jobs across a step of the server's wall clock by `step_ms`, prints the figures,
/// then checks them.
async fn jobs_survive_a_step_of(step_ms: i64) {
    let (wall, offset) = steppable_clock();
    let server = TestServer::start_with(|config| {
        config.wall_clock = wall.clone();
        config.scheduler.heartbeat_timeout_ms = HEARTBEAT_TIMEOUT_MS;
        config.queues.push(QueueDecl {
            path: ORPHANS.into(),
            settings: api::QueueSettings::default(),
        });
    })
    .await;
    let client = server.client();
    let ledger = Arc::new(Ledger::default());
    let registered = |n: usize| {
        let client = client.clone();
        async move {
            eventually_async("the workers to register", || async {
                (client.workers().await.unwrap().len() == n).then_some(())
            })
            .await;
        }
    };

    // The worker that will die runs one job, retried elsewhere once it is lost: long the
    // first time, short the second.
    let doomed = InProcessWorker::start(&server, "clock-doomed", &[ORPHANS], &ledger);
    registered(1).await;
    let orphan = sleep_job_in(
        ORPHANS,
        json!({ "n": ORPHAN_JOB, "ms": 120_000, "again_ms": 100 }),
        2,
    );
    let orphan = client.submit(&orphan).await.unwrap().id;
    eventually_async("the orphan-to-be to start", || async {
        ledger.has_started(ORPHAN_JOB).then_some(())
    })
    .await;
    let workers = [
        InProcessWorker::start(&server, "clock-a", &[], &ledger),
        InProcessWorker::start(&server, "clock-b", &[], &ledger),
    ];
    registered(3).await;

    // Acknowledged, to complete exactly once: the sleepers, the ETA job, the job that
    // fails once, the dead worker's job. The hanging job is to time out.
    let mut acknowledged: Vec<(u64, Uuid)> = vec![(ORPHAN_JOB, orphan)];
    for n in 0..SLEEPERS {
        let job = sleep_job_in("root.default", json!({ "n": n, "ms": SLEEP_MS }), 3);
        acknowledged.push((n, client.submit(&job).await.unwrap().id));
    }
    let flaky = sleep_job_in(
        "root.default",
        json!({ "n": FLAKY_JOB, "ms": 3_000, "again_ms": 100, "fail_first": true }),
        2,
    );
    let flaky = client.submit(&flaky).await.unwrap().id;
    acknowledged.push((FLAKY_JOB, flaky));
    let mut hang =
        api::SubmitJob::function("root.default", "clock.hang", json!({ "n": HANGING_JOB }));
    hang.timeout_ms = Some(TIMEOUT.as_millis() as u64);
    let hang = client.submit(&hang).await.unwrap().id;
    // Forward, the step carries the clock past the ETA; backward, it puts the ETA ten
    // minutes further off, until the clock is set right again.
    let eta_in = if step_ms > 0 {
        Duration::from_secs(120)
    } else {
        Duration::from_secs(15)
    };
    let mut at_eta = sleep_job_in("root.default", json!({ "n": ETA_JOB, "ms": 100 }), 3);
    let eta_submitted = Instant::now();
    at_eta.not_before_ms = Some(wall.now_ms() + eta_in.as_millis() as u64);
    let eta = client.submit(&at_eta).await.unwrap().id;
    acknowledged.push((ETA_JOB, eta));

    // Everything but the ETA job runs: step the clock, and a worker dies right after.
    eventually_async("every job but the ETA job to start", || async {
        ((0..SLEEPERS)
            .chain([FLAKY_JOB, HANGING_JOB])
            .all(|n| ledger.has_started(n)))
        .then_some(())
    })
    .await;
    offset.fetch_add(step_ms, Ordering::SeqCst);
    doomed.die();
    let died = Instant::now();

    // The timeout fires after its duration from the attempt's start, as the job measures
    // it: not at the step, not ten minutes later.
    let timeout_after = reached(&client, hang, api::JobState::Failed)
        .await
        .map(|at| at.duration_since(ledger.first_start(HANGING_JOB).unwrap()));
    let hang_view = view(&client, hang).await;
    // The dead worker is lost a heartbeat timeout after its last poll, and its job runs
    // again elsewhere; the job that failed runs again after its backoff.
    let orphan_retried_after = reached(&client, orphan, api::JobState::Succeeded)
        .await
        .map(|at| at.duration_since(died));
    let flaky_done = reached(&client, flaky, api::JobState::Succeeded).await;
    for n in 0..SLEEPERS {
        let id = acknowledged.iter().find(|(m, _)| *m == n).unwrap().1;
        reached(&client, id, api::JobState::Succeeded).await;
    }
    let eta_story = if step_ms > 0 {
        // The ETA lies in the past of the stepped clock: the job runs now, long before
        // its two minutes of real time are up.
        reached(&client, eta, api::JobState::Succeeded).await;
        match ledger.first_start(ETA_JOB) {
            Some(at) => format!(
                "started {:?} after submission, its ETA {eta_in:?} ahead by the clock before the step",
                at.duration_since(eta_submitted)
            ),
            None => "never ran".to_owned(),
        }
    } else {
        // Past its ETA in real time, but ten minutes before it by the stepped clock: it
        // waits. (A wait for time to pass, not for an event.)
        tokio::time::sleep_until((eta_submitted + eta_in + Duration::from_secs(2)).into()).await;
        let waited = view(&client, eta).await.state == api::JobState::Pending;
        offset.fetch_add(-step_ms, Ordering::SeqCst);
        let ran = reached(&client, eta, api::JobState::Succeeded)
            .await
            .is_some();
        format!(
            "{} past its ETA ({eta_in:?} of real time) while the clock read 10 min earlier, {} once the clock was set right",
            if waited { "waited" } else { "did not wait" },
            if ran { "ran" } else { "did not run" }
        )
    };

    let mut declared_lost = 0;
    let mut outcomes = std::collections::BTreeMap::new();
    for (n, id) in acknowledged.iter().copied().chain([(HANGING_JOB, hang)]) {
        let view = view(&client, id).await;
        // The dead worker's attempt is lost by its death, not by the step.
        declared_lost += view
            .attempts
            .iter()
            .filter(|a| a.outcome == Some(api::AttemptOutcome::Lost) && n != ORPHAN_JOB)
            .count();
        outcomes.insert(
            n,
            view.attempts.iter().map(|a| a.outcome).collect::<Vec<_>>(),
        );
    }
    let lost = acknowledged
        .iter()
        .filter(|(n, _)| ledger.completions(*n) == 0)
        .count();
    let completed_twice = acknowledged
        .iter()
        .filter(|(n, _)| ledger.completions(*n) > 1)
        .count();
    println!(
        "wall clock stepped {:+} s while {} jobs ran: acknowledged={} lost={lost} completed_twice={completed_twice} attempts_declared_lost={declared_lost}; \
         a {TIMEOUT:?} timeout fired after {timeout_after:?}; the dead worker's job succeeded elsewhere {orphan_retried_after:?} after its death \
         (heartbeat timeout {HEARTBEAT_TIMEOUT_MS} ms); the job failing once succeeded: {}; the ETA job {eta_story}",
        step_ms / 1000,
        SLEEPERS + 3,
        acknowledged.len(),
        flaky_done.is_some(),
    );
    assert_eq!(
        declared_lost, 0,
        "attempts declared lost because of the step: attempt outcomes by job: {outcomes:?}"
    );
    assert_eq!(
        lost, 0,
        "acknowledged jobs that never completed: attempt outcomes by job: {outcomes:?}"
    );
    assert_eq!(
        completed_twice, 0,
        "jobs completed twice: attempt outcomes by job: {outcomes:?}"
    );
    let timeout_after = timeout_after.expect("the hanging job timed out");
    assert_eq!(
        hang_view.attempts.last().and_then(|a| a.outcome),
        Some(api::AttemptOutcome::TimedOut),
        "{hang_view:?}"
    );
    // The server counts from the assignment, a little before the job starts: a second
    // of slack for a slow hand-over, far from a timeout fired at the step.
    assert!(
        timeout_after >= TIMEOUT - Duration::from_secs(1),
        "the {TIMEOUT:?} timeout fired after {timeout_after:?}, at the step"
    );
    assert!(
        orphan_retried_after.is_some(),
        "the dead worker's job ran again"
    );
    assert!(flaky_done.is_some(), "the job that failed once ran again");
    let outcomes_of = |n: u64| outcomes[&n].clone();
    assert_eq!(
        outcomes_of(ORPHAN_JOB),
        [
            Some(api::AttemptOutcome::Lost),
            Some(api::AttemptOutcome::Succeeded)
        ]
    );
    assert_eq!(
        outcomes_of(FLAKY_JOB),
        [
            Some(api::AttemptOutcome::Failed),
            Some(api::AttemptOutcome::Succeeded)
        ]
    );
    for n in (0..SLEEPERS).chain([ETA_JOB]) {
        assert_eq!(
            outcomes_of(n),
            [Some(api::AttemptOutcome::Succeeded)],
            "job {n}"
        );
    }
    if step_ms < 0 {
        assert!(eta_story.starts_with("waited"), "{eta_story}");
    }
    for worker in workers {
        worker.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_step_of_ten_minutes_loses_no_attempt_and_runs_no_job_twice() {
    jobs_survive_a_step_of(TEN_MINUTES_MS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backward_step_of_ten_minutes_stalls_no_deadline_and_runs_no_job_twice() {
    jobs_survive_a_step_of(-TEN_MINUTES_MS).await;
}
