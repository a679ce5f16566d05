//! Reads through the seam: job reads from the store's indexes (a job is readable as soon
//! as its submission is answered), listings by queue subtree, state and tag with cursors
//! in both orders, queue trees by depth and page, and `/readyz` while restoring.
#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

use lqsm_api as api;
use lqsm_testkit::{Api, BlockingTestServer, DEADLINE, eventually, function_job};
use serde_json::json;
use uuid::Uuid;

#[test]
fn a_job_is_readable_and_listed_as_soon_as_its_submission_is_answered() {
    let server = BlockingTestServer::start();
    let api = server.api();
    for _ in 0..20 {
        let id = api.submit(&function_job("root.default", "nobody"));
        assert_eq!(api.job(id).id, id);
        let newest: api::JobList = api
            .get("/v1/jobs?queue=root.default&order=newest&limit=1")
            .expect(200);
        assert_eq!(newest.jobs.first().map(|j| j.id), Some(id));
    }
}

/// Every page of a listing, following `next_cursor`.
fn all_pages(api: &Api, query: &str) -> Vec<Uuid> {
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let url = match &cursor {
            Some(c) => format!("/v1/jobs?{query}&limit=2&cursor={c}"),
            None => format!("/v1/jobs?{query}&limit=2"),
        };
        let page: api::JobList = api.get(&url).expect(200);
        assert!(page.jobs.len() <= 2, "{url}: a page holds at most `limit`");
        ids.extend(page.jobs.iter().map(|j| j.id));
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => return ids,
        }
    }
}

#[test]
fn listings_by_queue_subtree_state_and_tag_page_with_cursors_in_both_orders() {
    let server = BlockingTestServer::start();
    let api = server.api();
    for path in ["root.team", "root.team.x", "root.team.y", "root.other"] {
        api.create_queue(json!({"path": path, "capacity": 0.0}));
    }
    let mut submitted = Vec::new();
    for i in 0..9 {
        let queue = ["root.team.x", "root.team.y", "root.other"][i % 3];
        let mut job = function_job(queue, "nobody");
        if i % 2 == 0 {
            job.tags = vec!["even".into()];
        }
        submitted.push((api.submit(&job), queue, i % 2 == 0));
    }
    let cancelled = submitted[3].0;
    api.post(&format!("/v1/jobs/{cancelled}/cancel"), &json!({}))
        .expect_status(200);

    let expect = |keep: &dyn Fn(Uuid, &str, bool) -> bool| -> Vec<Uuid> {
        submitted
            .iter()
            .filter(|(id, q, even)| keep(*id, q, *even))
            .map(|(id, _, _)| *id)
            .collect()
    };
    let in_team = expect(&|_, q, _| q.starts_with("root.team."));
    assert_eq!(in_team.len(), 6);
    assert_eq!(all_pages(&api, "queue=root.team"), in_team);
    let mut newest = in_team.clone();
    newest.reverse();
    assert_eq!(all_pages(&api, "queue=root.team&order=newest"), newest);
    // A leaf is read from its own index.
    assert_eq!(
        all_pages(&api, "queue=root.team.x"),
        expect(&|_, q, _| q == "root.team.x")
    );
    // The prefix of a queue's name is not its subtree.
    assert!(all_pages(&api, "queue=root.tea").is_empty());
    // Tag, and tag with a queue subtree, both orders.
    let even = expect(&|_, _, even| even);
    assert_eq!(all_pages(&api, "tag=even"), even);
    let even_in_team = expect(&|_, q, even| even && q.starts_with("root.team."));
    let mut even_in_team_newest = even_in_team.clone();
    even_in_team_newest.reverse();
    assert_eq!(all_pages(&api, "tag=even&queue=root.team"), even_in_team);
    assert_eq!(
        all_pages(&api, "tag=even&queue=root.team&order=newest"),
        even_in_team_newest
    );
    // State, alone and with a subtree.
    assert_eq!(all_pages(&api, "state=cancelled"), vec![cancelled]);
    assert_eq!(
        all_pages(&api, "state=pending&queue=root.team"),
        in_team
            .iter()
            .copied()
            .filter(|id| *id != cancelled)
            .collect::<Vec<_>>()
    );
    assert!(all_pages(&api, "state=cancelled&queue=root.other").is_empty());
}

/// `GET /v1/queues{rest}` and its `lqsm-next-cursor` header.
fn tree(base: &str, query: &str) -> (api::QueueView, Option<String>) {
    let reply = reqwest::blocking::get(format!("{base}/v1/queues{query}")).unwrap();
    assert_eq!(reply.status().as_u16(), 200);
    let next = reply
        .headers()
        .get("lqsm-next-cursor")
        .map(|v| v.to_str().unwrap().to_owned());
    (reply.json().unwrap(), next)
}

#[test]
fn queue_trees_answer_by_depth_and_page_their_children() {
    let server = BlockingTestServer::start();
    let api = server.api();
    for i in 0..5 {
        api.create_queue(json!({"path": format!("root.p{i}"), "capacity": 0.0}));
        api.create_queue(json!({"path": format!("root.p{i}.leaf"), "capacity": 0.0}));
    }
    // A small tree is answered whole by default.
    let (whole, next) = tree(server.url(), "");
    assert_eq!(next, None);
    assert_eq!(whole.children.len(), 6);
    assert!(whole.children.iter().any(|c| c.children.len() == 1));
    // Depth 1: the children, without theirs.
    let (shallow, _) = tree(server.url(), "?depth=1");
    assert_eq!(shallow.children.len(), 6);
    assert!(shallow.children.iter().all(|c| c.children.is_empty()));
    // Pages of two children, following the cursor.
    let mut seen = Vec::new();
    let mut query = "?depth=0&limit=2".to_owned();
    let (alone, _) = tree(server.url(), &query);
    assert!(alone.children.is_empty(), "depth 0 is the queue alone");
    let (one, _) = tree(server.url(), "/root.p0?depth=0");
    assert_eq!(one.path, "root.p0");
    assert!(one.children.is_empty());
    let (whole, _) = tree(server.url(), "/root.p0");
    assert_eq!(
        whole.children.len(),
        1,
        "a small subtree is whole by default"
    );
    query = "?limit=2".to_owned();
    loop {
        let (page, next) = tree(server.url(), &query);
        assert!(page.children.len() <= 2);
        seen.extend(page.children.iter().map(|c| c.path.clone()));
        match next {
            Some(cursor) => query = format!("?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(
        seen,
        [
            "root.default",
            "root.p0",
            "root.p1",
            "root.p2",
            "root.p3",
            "root.p4"
        ]
    );
    let bad = api.get("/v1/queues?limit=0").expect_error(400);
    assert_eq!(bad.field.as_deref(), Some("limit"));
}

#[test]
fn a_large_queue_tree_is_answered_one_level_and_one_page_at_a_time() {
    let server = BlockingTestServer::start();
    let api = server.api();
    let queues: Vec<_> = (0..1100)
        .map(|i| json!({"path": format!("root.q{i:04}"), "capacity": 0.0}))
        .collect();
    let created: api::QueueBatchResult = api
        .post("/v1/queues/batch", &json!({"queues": queues}))
        .expect(200);
    assert_eq!(created.created, 1100);
    let (first, next) = tree(server.url(), "");
    assert_eq!(first.children.len(), 1000, "a page of the root's children");
    let cursor = next.expect("a cursor to the rest");
    let (rest, next) = tree(server.url(), &format!("?cursor={cursor}"));
    assert_eq!(rest.children.len(), 101, "the rest, root.default included");
    assert_eq!(next, None);
    // A queue by its path answers the same way.
    let (by_path, next) = tree(server.url(), "/root");
    assert_eq!(by_path.children.len(), 1000);
    assert!(next.is_some());
    // The cluster view counts every queue without listing them.
    let cluster: api::ClusterSummary = api.get("/v1/cluster").expect(200);
    assert_eq!(cluster.queues, 1102);
}

#[test]
fn readyz_answers_503_and_the_api_unavailable_while_the_store_is_restoring() {
    let data = tempfile::tempdir().unwrap();
    let config = lqsm_server::config::ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data.path().to_owned(),
        ..lqsm_server::config::ServerConfig::default()
    };
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (restore_tx, restore_rx) = tokio::sync::oneshot::channel::<()>();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(lqsm_server::serve_after(
            config,
            async move {
                let _ = stop_rx.await;
            },
            move |addr| addr_tx.send(addr).unwrap(),
            async move {
                let _ = restore_rx.await;
            },
        ))
    });
    let addr = addr_rx.recv_timeout(DEADLINE).unwrap();
    let api = Api::new(&format!("http://{addr}"), None);

    assert_eq!(api.get("/healthz").status, 200);
    let restoring = api.get("/readyz");
    assert_eq!(restoring.status, 503);
    let body: serde_json::Value = restoring.json();
    assert_eq!(body["status"], "restoring");
    assert_eq!(body["error"]["code"], "unavailable");
    let refused = api.get("/v1/cluster").expect_error(503);
    assert_eq!(refused.code, api::ErrorCode::Unavailable);
    assert!(refused.message.contains("restoring"), "{}", refused.message);

    restore_tx.send(()).unwrap();
    eventually("the server to be ready", || {
        (api.get("/readyz").status == 200).then_some(())
    });
    api.get("/v1/cluster").expect::<api::ClusterSummary>(200);
    stop_tx.send(()).unwrap();
    server.join().unwrap().unwrap();
}

/// A filter no index covers (here: a submitter, and a state within a queue) is checked
/// job by job, but a page examines at most `MAX_EXAMINED` (2,000) of them: a rare match
/// behind many others is reached through short pages whose cursors go on, never by one
/// page reading a million jobs.
#[test]
fn a_submitter_filter_finds_rare_jobs_through_short_pages() {
    const TOKENS: &str = r#"
[[tokens]]
name = "ada"
token = "ada-secret"
role = "admin"

[[tokens]]
name = "bob"
token = "bob-secret"
role = "submitter"
queues = ["root.default"]
"#;
    let server = BlockingTestServer::start_with(lqsm_testkit::toml_settings(TOKENS));
    let ada = server.api_as("ada-secret");
    let bob = server.api_as("bob-secret");
    let bobs_first = bob.submit(&function_job("root.default", "rare"));
    // 12,000 of ada's after bob's first: more than one page examines.
    for _ in 0..3 {
        let batch = api::SubmitBatch {
            jobs: (0..4000)
                .map(|_| function_job("root.default", "common"))
                .collect(),
        };
        let answer: api::BatchResult = ada.post("/v1/jobs/batch", &batch).expect(200);
        assert_eq!(answer.accepted, 4000);
    }
    let bobs_last = bob.submit(&function_job("root.default", "rare"));

    // Newest first: bob's last job, then pages that end short after examining 2,000 of
    // ada's each, then bob's first.
    let query = "/v1/jobs?queue=root.default&submitter=bob&order=newest&limit=50";
    let first: api::JobList = ada.get(query).expect(200);
    assert_eq!(
        first.jobs.iter().map(|j| j.id).collect::<Vec<_>>(),
        [bobs_last]
    );
    let mut cursor = first.next_cursor.expect("the scan goes on");
    let mut pages = 1;
    let mut found = vec![bobs_last];
    loop {
        let page: api::JobList = ada.get(&format!("{query}&cursor={cursor}")).expect(200);
        pages += 1;
        assert!(page.jobs.iter().all(|j| j.submitted_by == "bob"));
        found.extend(page.jobs.iter().map(|j| j.id));
        match page.next_cursor {
            Some(next) => cursor = next,
            None => break,
        }
        assert!(pages < 20, "the listing ends");
    }
    assert_eq!(found, [bobs_last, bobs_first]);
    assert!(
        pages >= 6,
        "12,000 jobs take six pages' scans ({pages} pages)"
    );
    // The whole listing by the filter alone, oldest first, agrees.
    assert_eq!(all_pages(&ada, "submitter=bob"), [bobs_first, bobs_last]);
    // A state no job of the queue is in, the same way.
    assert!(all_pages(&ada, "queue=root.default&state=failed").is_empty());
    let none: api::JobList = ada
        .get("/v1/jobs?queue=root.default&state=failed&limit=10")
        .expect(200);
    assert!(
        none.jobs.is_empty() && none.next_cursor.is_some(),
        "short, and going on"
    );
}
