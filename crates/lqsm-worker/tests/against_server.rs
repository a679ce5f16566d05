//! The worker library in-process against a real server (in-process too, through
//! `lqsm_testkit::TestServer`).
#![allow(clippy::unwrap_used, missing_docs)]

use lqsm_api as api;
use lqsm_client::{Client, JobFailed};
use lqsm_testkit::{DEADLINE, TestServer, eventually_async, eventually_async_within};
use lqsm_worker::{Capacity, RunSummary, WorkerBuilder, WorkerConfig, WorkerError};
use serde_json::{Value, json};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// A worker running in this process; drained when dropped half-way.
struct RunningWorker {
    id: Uuid,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<RunSummary, WorkerError>>,
}

impl RunningWorker {
    async fn stop(mut self) -> RunSummary {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(DEADLINE, &mut self.task)
            .await
            .expect("the worker drains in time")
            .unwrap()
            .expect("the worker ends without error")
    }
}

impl Drop for RunningWorker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn config(server: &TestServer) -> WorkerConfig {
    let mut config = WorkerConfig::new(server.url());
    config.name = "test-worker".into();
    config.capacity = Capacity {
        cpus: 8.0,
        memory_mib: 8192,
        ..Capacity::default()
    };
    config.kill_grace = Duration::from_millis(300);
    config.poll_wait = Duration::from_millis(1000);
    // The test harness cannot serve as the attempts' supervisor; the supervised
    // path is tested by tests/supervised.rs and the lqsm binary's tests.
    config.supervise_commands = false;
    config
}

async fn start_worker(builder: WorkerBuilder, client: &Client) -> RunningWorker {
    init_logs();
    let worker = builder.build().unwrap();
    let id = worker.id();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(worker.run(async move {
        let _ = rx.await;
    }));
    // Registered once the server lists it.
    eventually_async("the worker to register", || async {
        let workers = client.workers().await.unwrap();
        workers.iter().any(|w| w.id == id).then_some(())
    })
    .await;
    RunningWorker {
        id,
        shutdown: Some(tx),
        task,
    }
}

fn command(script: &str) -> api::SubmitJob {
    let mut job = api::SubmitJob::new(
        "root.default",
        api::JobKind::Command {
            argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
            env: Default::default(),
            cwd: None,
        },
    );
    job.resources = Some(api::Resources {
        cpu: Some(0.1),
        memory_mib: Some(16),
        ..Default::default()
    });
    job.retry = Some(api::RetrySpec {
        max_attempts: Some(1),
        ..Default::default()
    });
    job
}

async fn finished(client: &Client, id: Uuid) -> api::JobView {
    let view = client.wait(id, DEADLINE).await.unwrap();
    assert!(
        view.state.is_terminal(),
        "job still {} after {DEADLINE:?}: {view:?}",
        view.state
    );
    view
}

/// Whether a live process has this pid (zombies, waiting for init to reap them,
/// count as gone).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().next())
                .unwrap_or("X");
            state != "Z" && state != "X"
        }
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_job_succeeds_and_its_output_is_in_its_logs() {
    let server = TestServer::start().await;
    let client = server.client();
    let worker = start_worker(WorkerBuilder::new(config(&server)), &client).await;
    let job = client
        .submit(&command(
            "echo \"hello from $LQSM_QUEUE attempt $LQSM_ATTEMPT\"; echo to stderr >&2",
        ))
        .await
        .unwrap();
    let view = finished(&client, job.id).await;
    assert_eq!(view.state, lqsm_api::JobState::Succeeded, "{view:?}");
    assert_eq!(view.exit_code, Some(0));
    assert_eq!(view.attempts[0].worker, worker.id);
    let logs = client.logs(job.id).await.unwrap();
    assert_eq!(logs, "hello from root.default attempt 1\nto stderr\n");
    let summary = worker.stop().await;
    assert_eq!(summary.succeeded, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_command_records_its_exit_code_and_last_line() {
    let server = TestServer::start().await;
    let client = server.client();
    let worker = start_worker(WorkerBuilder::new(config(&server)), &client).await;
    let job = client
        .submit(&command(
            "echo starting; echo 'cannot open input.csv' >&2; exit 3",
        ))
        .await
        .unwrap();
    let view = finished(&client, job.id).await;
    assert_eq!(view.state, lqsm_api::JobState::Failed, "{view:?}");
    assert_eq!(view.exit_code, Some(3));
    let reason = view.reason.unwrap_or_default();
    assert!(reason.contains("cannot open input.csv"), "{reason}");
    // The client's get() tells the same story.
    let err = lqsm_client::JobHandle::new(client.clone(), job.id)
        .get(DEADLINE)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            JobFailed::Failed {
                exit_code: Some(3),
                ..
            }
        ),
        "{err}"
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn function_jobs_return_their_results_through_delay_and_get() {
    let server = TestServer::start().await;
    let client = server.client();
    let builder =
        WorkerBuilder::new(config(&server)).handler("math.add", |args: Value| async move {
            let a = args["a"].as_i64().ok_or("`a` must be an integer")?;
            let b = args["b"].as_i64().ok_or("`b` must be an integer")?;
            Ok::<_, String>(json!({"sum": a + b}))
        });
    let worker = start_worker(builder, &client).await;

    let sum = client
        .delay("root.default", "math.add", json!({"a": 2, "b": 40}))
        .await
        .unwrap()
        .get(DEADLINE)
        .await
        .unwrap();
    assert_eq!(sum, json!({"sum": 42}));

    let echoed = client
        .delay("root.default", "lqsm.echo", json!(["x", 1]))
        .await
        .unwrap()
        .get(DEADLINE)
        .await
        .unwrap();
    assert_eq!(echoed, json!(["x", 1]));

    let mut bad = api::SubmitJob::function("root.default", "math.add", json!({"a": "two"}));
    bad.retry = Some(api::RetrySpec {
        max_attempts: Some(1),
        ..Default::default()
    });
    let id = client.submit(&bad).await.unwrap().id;
    let err = lqsm_client::JobHandle::new(client.clone(), id)
        .get(DEADLINE)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("`a` must be an integer"), "{err}");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_command_leaves_no_process_behind() {
    let server = TestServer::start().await;
    let client = server.client();
    let worker = start_worker(WorkerBuilder::new(config(&server)), &client).await;
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    // The shell and both sleeps ignore SIGTERM: only the group SIGKILL ends them.
    let mut job = command(&format!(
        "trap '' TERM; sleep 60 & echo $! > '{}'; sleep 60",
        pid_file.display()
    ));
    job.timeout_ms = Some(500);
    let id = client.submit(&job).await.unwrap().id;
    let view = finished(&client, id).await;
    assert_eq!(view.state, lqsm_api::JobState::Failed, "{view:?}");
    assert_eq!(
        view.attempts[0].outcome,
        Some(lqsm_api::AttemptOutcome::TimedOut),
        "{view:?}"
    );
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The server may record the timeout from its own timer a moment before the
    // worker's SIGKILL lands: allow the kill grace.
    eventually_async_within(
        &format!("background sleep {pid} to end with the timeout"),
        Duration::from_secs(5),
        || async { (!alive(pid)).then_some(()) },
    )
    .await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_running_job_stops_its_process() {
    let server = TestServer::start().await;
    let client = server.client();
    let worker = start_worker(WorkerBuilder::new(config(&server)), &client).await;
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    let id = client
        .submit(&command(&format!(
            "echo $$ > '{}'; exec sleep 60",
            pid_file.display()
        )))
        .await
        .unwrap()
        .id;
    let pid: i32 = eventually_async("the job to start", || async {
        let text = std::fs::read_to_string(&pid_file).unwrap_or_default();
        text.trim().parse().ok()
    })
    .await;
    let view = client.cancel(id).await.unwrap();
    assert_eq!(view.state, lqsm_api::JobState::Cancelled);
    eventually_async_within(
        "the cancelled job's process to end",
        Duration::from_secs(5),
        || async { (!alive(pid)).then_some(()) },
    )
    .await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_running_work_before_returning() {
    let server = TestServer::start().await;
    let client = server.client();
    let worker = start_worker(WorkerBuilder::new(config(&server)), &client).await;
    let handle = client
        .delay("root.default", "lqsm.sleep", json!(0.5))
        .await
        .unwrap();
    eventually_async("the job to run", || async {
        (handle.view().await.unwrap().state == lqsm_api::JobState::Running).then_some(())
    })
    .await;
    let summary = worker.stop().await;
    assert_eq!(summary.succeeded, 1, "{summary:?}");
    assert_eq!(summary.unreported, 0, "{summary:?}");
    // The result reached the server before run() returned.
    assert_eq!(
        handle.view().await.unwrap().state,
        lqsm_api::JobState::Succeeded
    );
    let workers = client.workers().await.unwrap();
    assert_eq!(workers[0].state, lqsm_api::WorkerState::Draining);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_attempt_survives_a_server_restart_and_is_reported_after_it() {
    let mut server = TestServer::start().await;
    let client = server.client();
    let mut config = config(&server);
    config.backoff_cap = Duration::from_millis(200);
    let worker = start_worker(WorkerBuilder::new(config), &client).await;
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    // Runs until the test creates `go`, so the restart surely happens meanwhile.
    let id = client
        .submit(&command(&format!(
            "echo started; while [ ! -e '{}' ]; do sleep 0.02; done; echo done",
            go.display()
        )))
        .await
        .unwrap()
        .id;
    eventually_async("the job to run", || async {
        (client.job(id).await.unwrap().state == lqsm_api::JobState::Running).then_some(())
    })
    .await;
    server.restart().await;
    // The restarted server waits for the worker to reclaim the attempt.
    std::fs::write(&go, "").unwrap();
    let view = finished(&client, id).await;
    assert_eq!(view.state, lqsm_api::JobState::Succeeded, "{view:?}");
    assert_eq!(view.attempts.len(), 1, "reclaimed, not run again: {view:?}");
    assert_eq!(client.logs(id).await.unwrap(), "started\ndone\n");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_commands_output_is_readable_before_it_ends_and_the_report_completes_it() {
    let server = TestServer::start().await;
    let client = server.client();
    let worker = start_worker(WorkerBuilder::new(config(&server)), &client).await;
    // A line every 200 ms for 2 s.
    let job = client
        .submit(&command(
            "for i in 1 2 3 4 5 6 7 8 9 10; do echo \"line $i\"; sleep 0.2; done",
        ))
        .await
        .unwrap();
    // Followed as `lqsm job logs --follow` does: from each answer's next offset.
    let mut followed = String::new();
    let first = eventually_async("some output while the command runs", || {
        let client = client.clone();
        async move {
            let read = client.logs_from(job.id, 0).await.unwrap();
            (read.running && read.text.starts_with("line 1\n")).then_some(read)
        }
    })
    .await;
    // `running`: the server answered with the output uploaded while the attempt ran,
    // before its report.
    assert_eq!((first.offset, first.attempt), (0, Some(1)));
    followed.push_str(&first.text);
    let mut offset = first.next_offset;
    loop {
        let read = client.logs_from(job.id, offset).await.unwrap();
        assert!(!read.missed, "{read:?}");
        assert_eq!(read.offset, offset, "{read:?}");
        followed.push_str(&read.text);
        offset = read.next_offset;
        if !read.running && client.job(job.id).await.unwrap().state.is_terminal() {
            let last = client.logs_from(job.id, offset).await.unwrap();
            followed.push_str(&last.text);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let view = finished(&client, job.id).await;
    assert_eq!(view.state, api::JobState::Succeeded, "{view:?}");
    let all: String = (1..=10).map(|i| format!("line {i}\n")).collect();
    assert_eq!(client.logs(job.id).await.unwrap(), all);
    // Nothing lost, nothing doubled, between the preview and the report.
    assert_eq!(followed, all);
    worker.stop().await;
}
