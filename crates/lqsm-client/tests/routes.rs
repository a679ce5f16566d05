//! Every route of the client against a real server (in-process, through
//! `lqsm_testkit::TestServer`).
#![allow(clippy::unwrap_used, missing_docs)]

use lqsm_api as api;
use lqsm_client::{Client, ClientError, JobFailed, JobFilter};
use lqsm_testkit::TestServer;
use serde_json::json;
use std::time::Duration;
use uuid::Uuid;

fn echo(queue: &str) -> api::SubmitJob {
    api::SubmitJob::function(queue, "lqsm.echo", json!({"n": 1}))
}

#[tokio::test]
async fn queue_routes_create_change_and_delete_a_queue() {
    let server = TestServer::start().await;
    let client = server.client();
    let created = client
        .create_queue(&api::CreateQueue {
            path: "root.etl".into(),
            settings: api::QueueSettings {
                max_capacity: Some(50.0),
                ..Default::default()
            },
        })
        .await
        .unwrap();
    assert_eq!(created.path, "root.etl");
    assert_eq!(created.max_capacity, 50.0);
    let tree = client.queues().await.unwrap();
    assert!(tree.children.iter().any(|q| q.path == "root.etl"));
    let updated = client
        .update_queue(
            "root.etl",
            &api::QueueSettings {
                weight: Some(3),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(updated.settings.weight, Some(3));
    assert_eq!(updated.max_capacity, 50.0, "untouched settings stay");
    assert_eq!(
        client.stop_queue("root.etl").await.unwrap().state,
        lqsm_api::QueueState::Stopped
    );
    assert_eq!(
        client.start_queue("root.etl").await.unwrap().state,
        lqsm_api::QueueState::Running
    );
    client.submit(&echo("root.etl")).await.unwrap();
    assert_eq!(
        client.drain_queue("root.etl").await.unwrap().state,
        lqsm_api::QueueState::Draining
    );
    // It holds a pending job: deleting needs force.
    let err = client.delete_queue("root.etl", false).await.unwrap_err();
    assert_eq!(err.status(), Some(409), "{err}");
    client.delete_queue("root.etl", true).await.unwrap();
    let err = client.queue("root.etl").await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
}

#[tokio::test]
async fn job_routes_submit_list_page_and_cancel() {
    let server = TestServer::start().await;
    let client = server.client();
    let mut tagged = echo("root.default");
    tagged.tags = vec!["nightly".into()];
    let first = client.submit(&tagged).await.unwrap();
    assert!(first.created);
    let batch = client
        .submit_batch(&[
            echo("root.default"),
            echo("root.nope"),
            echo("root.default"),
        ])
        .await
        .unwrap();
    assert_eq!(batch.accepted, 2);
    let refused = batch.results[1].error.as_ref().unwrap();
    assert_eq!(
        refused.field.as_deref(),
        Some("jobs[1].queue"),
        "{refused:?}"
    );

    // Pages of one, oldest first, until the cursor runs out.
    let filter = JobFilter {
        queue: Some("root.default".into()),
        ..JobFilter::default()
    };
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = client
            .list_jobs(&filter, cursor.as_deref(), Some(1))
            .await
            .unwrap();
        seen.extend(page.jobs.iter().map(|j| j.id));
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[0], first.id);
    let nightly = client
        .list_jobs(
            &JobFilter {
                tag: Some("nightly".into()),
                state: Some(api::JobState::Pending),
                ..JobFilter::default()
            },
            None,
            None,
        )
        .await
        .unwrap();
    assert_eq!(nightly.jobs.len(), 1);
    // Jobs by who submitted them: `anonymous` on a server without tokens.
    let by = |who: &str| JobFilter {
        submitter: Some(who.into()),
        ..JobFilter::default()
    };
    let anonymous = client
        .list_jobs(&by("anonymous"), None, None)
        .await
        .unwrap();
    assert_eq!(anonymous.jobs.len(), 3);
    let nobody = client.list_jobs(&by("nobody"), None, None).await.unwrap();
    assert!(nobody.jobs.is_empty() && nobody.next_cursor.is_none());

    let cancelled = client.cancel(first.id).await.unwrap();
    assert_eq!(cancelled.state, lqsm_api::JobState::Cancelled);
    assert_eq!(
        client.job(first.id).await.unwrap().state,
        lqsm_api::JobState::Cancelled
    );
    let err = lqsm_client::JobHandle::new(client.clone(), first.id)
        .get(Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(matches!(err, JobFailed::Cancelled { .. }), "{err}");
    assert_eq!(client.logs(first.id).await.unwrap(), "");
    let summary = client.cluster().await.unwrap();
    assert_eq!(summary.jobs.get(&api::JobState::Pending), Some(&2));
}

#[tokio::test]
async fn get_gives_up_at_its_timeout_when_nothing_runs_the_job() {
    let server = TestServer::start().await;
    let handle = server
        .client()
        .delay("root.default", "lqsm.noop", json!(null))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let err = handle.get(Duration::from_millis(300)).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    match &err {
        JobFailed::Timeout { state, .. } => assert_eq!(*state, api::JobState::Pending),
        other => panic!("expected a timeout, got {other}"),
    }
    assert!(err.to_string().contains("get() again"), "{err}");
}

#[tokio::test]
async fn server_errors_carry_the_message_and_the_field_at_fault() {
    let server = TestServer::start().await;
    let client = server.client();
    let err = client.submit(&echo("root.nope")).await.unwrap_err();
    match &err {
        ClientError::Api { status, error } => {
            assert_eq!(*status, 404);
            assert_eq!(error.field.as_deref(), Some("queue"));
        }
        other => panic!("expected an API error, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("root.nope") && text.contains("field `queue`"),
        "{text}"
    );
    let err = client.job(Uuid::now_v7()).await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
}

#[tokio::test]
async fn worker_routes_register_poll_and_drain() {
    let server = TestServer::start().await;
    let client = server.client();
    let id = Uuid::now_v7();
    let view = client
        .register_worker(&api::RegisterWorker {
            id,
            name: "w".into(),
            capacity: api::Resources {
                cpu: Some(2.0),
                memory_mib: Some(1024),
                ..Default::default()
            },
            labels: Default::default(),
            serves_commands: true,
            queues: Default::default(),
            handlers: vec!["*".into()],
            protocol: api::WORKER_PROTOCOL,
        })
        .await
        .unwrap();
    assert_eq!(view.id, id);
    let job = client.submit(&echo("root.default")).await.unwrap();
    let answer = client
        .poll(
            id,
            &api::PollRequest {
                wait_ms: 2000,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(answer.assignments.len(), 1);
    assert_eq!(answer.assignments[0].job, job.id);
    assert_eq!(
        client.drain_worker(id).await.unwrap().state,
        lqsm_api::WorkerState::Draining
    );
    assert_eq!(client.workers().await.unwrap().len(), 1);
    // A worker the server does not know is told to register again.
    let err = client
        .poll(Uuid::now_v7(), &api::PollRequest::default())
        .await
        .unwrap_err();
    assert!(err.is_register_again(), "{err}");
}

#[tokio::test]
async fn a_server_with_tokens_refuses_a_missing_or_wrong_token_with_a_hint() {
    let server = TestServer::with_admin_token("s3cret").await;
    let err = server.client().cluster().await.unwrap_err();
    assert!(matches!(err, ClientError::Unauthorized { .. }), "{err}");
    assert!(err.to_string().contains("LQSM_TOKEN"), "{err}");
    let wrong = Client::new(server.url(), Some("nope".into())).unwrap();
    assert!(matches!(
        wrong.cluster().await.unwrap_err(),
        ClientError::Unauthorized { .. }
    ));
    let right = Client::new(server.url(), Some("s3cret".into())).unwrap();
    assert_eq!(right.cluster().await.unwrap().queues, 2);
}

#[tokio::test]
async fn the_queue_tree_of_more_than_a_page_is_joined_whole() {
    let server = TestServer::start().await;
    let client = server.client();
    // More queues than the server answers at once (1,000 children a page), each with a
    // child, so both the pages and the depth must be followed.
    let queue = |path: String| api::CreateQueue {
        path,
        settings: api::QueueSettings {
            capacity: Some(0.0),
            ..Default::default()
        },
    };
    let mut queues = Vec::new();
    for i in 0..1001 {
        queues.push(queue(format!("root.t{i:04}")));
        queues.push(queue(format!("root.t{i:04}.leaf")));
    }
    let created = client.create_queues(&queues).await.unwrap();
    assert_eq!(created.created, 2002);
    let tree = client.queues().await.unwrap();
    assert_eq!(
        tree.children.len(),
        1002,
        "root.default and the 1,001 queues"
    );
    assert!(
        tree.children
            .iter()
            .filter(|q| q.path.starts_with("root.t"))
            .all(|q| q.children.len() == 1),
        "every subtree whole"
    );
}

/// A loopback port nothing listens on (bound, then released).
fn dead_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test]
async fn a_client_of_several_servers_moves_on_from_one_it_cannot_reach() {
    let server = TestServer::start().await;
    let dead = format!("http://127.0.0.1:{}", dead_port());
    let client = Client::new(&format!("{dead}, {}", server.url()), None).unwrap();
    // The first server cannot be reached: the call goes to the second, and so do the next.
    let submitted = client.submit(&echo("root.default")).await.unwrap();
    assert!(submitted.created);
    let job = client.job(submitted.id).await.unwrap();
    assert_eq!(job.id, submitted.id);

    // When none can be reached, the error names them all.
    let nowhere = Client::new(&format!("{dead},{dead}/"), None).unwrap();
    match nowhere.job(submitted.id).await {
        Err(ClientError::Unreachable { url, .. }) => assert_eq!(url, format!("{dead},{dead}")),
        other => panic!("expected unreachable, got {other:?}"),
    }
    // A list with a bad URL is refused naming it.
    match Client::new(&format!("{dead},ftp://x"), None) {
        Err(ClientError::InvalidUrl { url, .. }) => assert_eq!(url, "ftp://x"),
        other => panic!("expected an invalid URL, got {other:?}"),
    }
}

#[tokio::test]
async fn schedule_routes_create_list_pause_resume_and_delete() {
    let server = TestServer::start().await;
    let client = server.client();
    let create = api::CreateSchedule {
        name: "tick".into(),
        cron: None,
        timezone: None,
        every_ms: Some(60_000),
        job: echo("root.default"),
        misfire: Some("skip".into()),
        catch_up_max: None,
        overlap: Some("skip".into()),
    };
    let created = client.create_schedule(&create).await.unwrap();
    assert_eq!(created.name, "tick");
    assert_eq!(created.every_ms, Some(60_000));
    assert_eq!(
        (created.misfire.as_str(), created.overlap.as_str()),
        ("skip", "skip")
    );
    assert!(!created.paused);
    assert!(created.next_fire_ms.is_some());
    // The same name again is a conflict naming the field.
    let err = client.create_schedule(&create).await.unwrap_err();
    assert_eq!(err.status(), Some(409), "{err}");
    let listed = client.schedules().await.unwrap();
    assert_eq!(
        listed.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        ["tick"]
    );
    assert_eq!(client.schedule("tick").await.unwrap().queue, "root.default");
    let paused = client.pause_schedule("tick").await.unwrap();
    assert!(paused.paused && paused.next_fire_ms.is_none(), "{paused:?}");
    let resumed = client.resume_schedule("tick").await.unwrap();
    assert!(
        !resumed.paused && resumed.next_fire_ms.is_some(),
        "{resumed:?}"
    );
    client.delete_schedule("tick").await.unwrap();
    assert!(client.schedule("tick").await.unwrap_err().is_not_found());
    assert!(
        client
            .delete_schedule("tick")
            .await
            .unwrap_err()
            .is_not_found()
    );
    assert!(
        client
            .pause_schedule("tick")
            .await
            .unwrap_err()
            .is_not_found()
    );
    assert!(client.schedules().await.unwrap().is_empty());

    // A bad cron expression is refused with the field at fault.
    let err = client
        .create_schedule(&api::CreateSchedule {
            name: "bad".into(),
            cron: Some("61 * * * *".into()),
            every_ms: None,
            ..create
        })
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(400), "{err}");
    assert!(err.to_string().contains("61 * * * *"), "{err}");
}
