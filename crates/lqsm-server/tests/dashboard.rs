//! The web dashboard over HTTP: every page and action, logins and roles, CSRF, the
//! content policy and the escaping of what jobs carry.
#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

use lqsm_api as api;
use lqsm_testkit::{BlockingTestServer, SimWorker, eventually, function_job, toml_settings};
use reqwest::blocking::{Client, Response};
use reqwest::header;
use serde_json::json;
use std::io::Read;

const TOKENS: &str = r#"
[[tokens]]
name = "ada"
token = "admin-secret"
role = "admin"

[[tokens]]
name = "rita"
token = "reader-secret"
role = "reader"
queues = ["*"]
"#;

/// A browser that follows no redirects, so that each answer can be looked at.
fn browser() -> Client {
    Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .unwrap()
}

/// A page: its status, headers and text.
struct Page {
    status: u16,
    headers: header::HeaderMap,
    body: String,
}

fn read(response: Response) -> Page {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    Page {
        status,
        headers,
        body: response.text().unwrap(),
    }
}

fn get(client: &Client, url: &str, cookie: Option<&str>) -> Page {
    let mut request = client.get(url);
    if let Some(cookie) = cookie {
        request = request.header(header::COOKIE, cookie);
    }
    read(request.send().unwrap())
}

fn post_form(client: &Client, url: &str, cookie: Option<&str>, form: &[(&str, &str)]) -> Page {
    let mut request = client.post(url).form(form);
    if let Some(cookie) = cookie {
        request = request.header(header::COOKIE, cookie);
    }
    read(request.send().unwrap())
}

/// The CSRF token a page carries for its actions.
fn csrf_of(page: &Page) -> String {
    let marker = r#"<meta name="csrf-token" content=""#;
    let start = page
        .body
        .find(marker)
        .expect("the page carries a CSRF token")
        + marker.len();
    page.body[start..].split('"').next().unwrap().to_owned()
}

/// Every dashboard answer forbids inline script, and no page has any.
fn assert_safe(page: &Page, what: &str) {
    let policy = page
        .headers
        .get(header::CONTENT_SECURITY_POLICY)
        .unwrap_or_else(|| panic!("{what}: no Content-Security-Policy"))
        .to_str()
        .unwrap();
    assert!(policy.contains("script-src 'self'"), "{what}: {policy}");
    assert!(!policy.contains("unsafe-inline"), "{what}: {policy}");
    for (i, _) in page.body.match_indices("<script") {
        let tag = &page.body[i..page.body[i..].find('>').map_or(page.body.len(), |e| i + e)];
        assert!(
            tag.contains("src=\"/ui/assets/"),
            "{what}: an inline script: {tag}"
        );
    }
}

#[test]
fn every_page_and_action_of_an_open_server() {
    let server = BlockingTestServer::start();
    let api = server.api();
    let base = server.url().to_owned();
    let client = browser();

    // Something to show: a queue, jobs (one tagged with markup), a worker, a schedule,
    // a workflow.
    api.create_queue(json!({"path": "root.etl", "capacity": 30}));
    api.create_queue(json!({"path": "root.etl.daily", "capacity": 100}));
    let mut hostile = api::SubmitJob::function(
        "root.default",
        "<script>alert('tag')</script>",
        json!({"x": "<img src=x onerror=alert(2)>"}),
    );
    hostile.tags = vec!["<script>alert(1)</script>".into()];
    let hostile = api.submit(&hostile);
    let to_cancel = api.submit(&function_job("root.etl.daily", "dash.wait"));
    let mut worker = SimWorker::register(&api, "dash.run");
    let done = api.submit(&function_job("root.default", "dash.run"));
    let _ = worker.poll(&[], 0);
    api.post(
        "/v1/schedules",
        &json!({"name": "nightly", "cron": "0 3 * * *",
                "job": {"queue": "root.default", "kind": {"type": "function", "handler": "tick", "args": {}}}}),
    )
    .expect_status(201);
    let flow: api::WorkflowSubmitted = api
        .post(
            "/v1/workflows",
            &lqsm_client::chain([
                api::SubmitJob::function("root.default", "wf.a", json!(1)).named("first"),
                api::SubmitJob::function("root.default", "wf.b", json!(2)).named("second"),
            ]),
        )
        .expect(201);

    // Every page answers, safely, with the open server's warning.
    let pages = [
        "/ui".to_owned(),
        "/ui/queues".to_owned(),
        "/ui/queues?path=root.etl".to_owned(),
        "/ui/jobs".to_owned(),
        "/ui/jobs?state=pending&queue=root.etl".to_owned(),
        format!("/ui/jobs/{hostile}"),
        format!("/ui/jobs/{done}"),
        "/ui/workers".to_owned(),
        "/ui/schedules".to_owned(),
        format!("/ui/workflows/{}", flow.id),
    ];
    for path in &pages {
        let page = get(&client, &format!("{base}{path}"), None);
        assert_eq!(page.status, 200, "{path}: {}", page.body);
        assert_safe(&page, path);
        assert!(
            page.body.contains("runs without tokens"),
            "{path}: no warning"
        );
    }
    let rows = get(
        &client,
        &format!("{base}/ui/queues/rows?path=root.etl&level=1"),
        None,
    );
    assert_eq!(rows.status, 200);
    assert!(rows.body.contains("root.etl.daily"), "{}", rows.body);
    let overview = get(&client, &format!("{base}/ui/queues"), None);
    assert!(
        overview.body.contains("root.etl"),
        "the tree shows the queues"
    );
    let schedules = get(&client, &format!("{base}/ui/schedules"), None);
    assert!(schedules.body.contains("nightly") && schedules.body.contains("0 3 * * *"));
    let workers = get(&client, &format!("{base}/ui/workers"), None);
    assert!(
        workers
            .body
            .contains(&format!("sim-dash.run-{}", worker.id)),
        "{}",
        workers.body
    );
    let by_user = get(
        &client,
        &format!("{base}/ui/jobs?submitter=anonymous&queue=root.etl"),
        None,
    );
    assert!(
        by_user.body.contains(&to_cancel.to_string()),
        "filtered by user"
    );
    let nobody = get(&client, &format!("{base}/ui/jobs?submitter=nobody"), None);
    assert!(nobody.body.contains("No jobs match"), "{}", nobody.body);
    let listing = get(&client, &format!("{base}/ui/jobs?queue=root.etl"), None);
    assert!(listing.body.contains(&to_cancel.to_string()));
    assert!(
        !listing.body.contains(&hostile.to_string()),
        "filtered by queue"
    );
    let graph = get(&client, &format!("{base}/ui/workflows/{}", flow.id), None);
    assert!(
        graph.body.contains("<svg class=\"graph\""),
        "drawn: {}",
        graph.body
    );
    let member = get(
        &client,
        &format!("{base}/ui/jobs/{}", flow.nodes[1].id),
        None,
    );
    assert!(
        member.body.contains("Its workflow"),
        "a job shows its workflow's graph"
    );
    assert!(
        member
            .body
            .contains(&format!("/ui/jobs/{}", flow.nodes[0].id)),
        "with the job it waits for"
    );

    // What a job carries is shown as text, never as markup.
    let detail = get(&client, &format!("{base}/ui/jobs/{hostile}"), None);
    assert!(!detail.body.contains("<script>alert"), "{}", detail.body);
    assert!(!detail.body.contains("<img src=x"), "{}", detail.body);
    assert!(
        detail
            .body
            .contains("&lt;script&gt;alert(1)&lt;/script&gt;")
    );
    let listing = get(&client, &format!("{base}/ui/jobs"), None);
    assert!(!listing.body.contains("<script>alert"));

    // Assets are embedded; an unknown one is not found.
    let htmx = get(&client, &format!("{base}/ui/assets/htmx.min.js"), None);
    assert_eq!(htmx.status, 200);
    assert!(htmx.body.len() > 10_000);
    assert_eq!(
        get(&client, &format!("{base}/ui/assets/nope.js"), None).status,
        404
    );

    // Actions need the page's CSRF token, and a request from another site is refused.
    let page = get(&client, &format!("{base}/ui/jobs/{to_cancel}"), None);
    assert!(page.body.contains(">Cancel<"), "a cancel button");
    let csrf = csrf_of(&page);
    let action = format!("{base}/ui/jobs/{to_cancel}/action");
    let refused = post_form(&client, &action, None, &[("action", "cancel")]);
    assert_eq!(refused.status, 403, "{}", refused.body);
    let refused = post_form(
        &client,
        &action,
        None,
        &[("action", "cancel"), ("csrf", "0000")],
    );
    assert_eq!(refused.status, 403);
    let cross_site = read(
        client
            .post(&action)
            .header("sec-fetch-site", "cross-site")
            .form(&[("action", "cancel"), ("csrf", csrf.as_str())])
            .send()
            .unwrap(),
    );
    assert_eq!(cross_site.status, 403);
    assert_eq!(
        api.job(to_cancel).state,
        api::JobState::Pending,
        "nothing was done"
    );
    let done_action = post_form(
        &client,
        &action,
        None,
        &[("action", "cancel"), ("csrf", &csrf)],
    );
    assert_eq!(done_action.status, 303, "{}", done_action.body);
    assert_eq!(api.job(to_cancel).state, api::JobState::Cancelled);
    let retried = post_form(
        &client,
        &action,
        None,
        &[("action", "retry"), ("csrf", &csrf)],
    );
    assert_eq!(retried.status, 303, "{}", retried.body);

    // Queue settings, stop and start; a bad setting is named, and changes nothing.
    let queue_action = format!("{base}/ui/queues/action");
    let bad = post_form(
        &client,
        &queue_action,
        None,
        &[
            ("csrf", &csrf),
            ("path", "root.etl"),
            ("action", "update"),
            ("settings", r#"{"capacity": "lots"}"#),
        ],
    );
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert!(bad.body.contains("capacity"), "{}", bad.body);
    let saved = post_form(
        &client,
        &queue_action,
        None,
        &[
            ("csrf", &csrf),
            ("path", "root.etl"),
            ("action", "update"),
            ("settings", r#"{"capacity": 40}"#),
        ],
    );
    assert_eq!(saved.status, 303, "{}", saved.body);
    let etl: api::QueueView = api.get("/v1/queues/root.etl?depth=0").expect(200);
    assert_eq!(etl.capacity, 40.0);
    for (action, state) in [
        ("stop", api::QueueState::Stopped),
        ("start", api::QueueState::Running),
    ] {
        let changed = post_form(
            &client,
            &queue_action,
            None,
            &[("csrf", &csrf), ("path", "root.etl"), ("action", action)],
        );
        assert_eq!(changed.status, 303, "{action}: {}", changed.body);
        let etl: api::QueueView = api.get("/v1/queues/root.etl?depth=0").expect(200);
        assert_eq!(etl.state, state, "{action}");
    }

    // Workers drain and undrain; schedules pause and resume.
    let worker_action = format!("{base}/ui/workers/{}/action", worker.id);
    for (action, state) in [
        ("drain", api::WorkerState::Draining),
        ("undrain", api::WorkerState::Active),
    ] {
        let changed = post_form(
            &client,
            &worker_action,
            None,
            &[("csrf", &csrf), ("action", action)],
        );
        assert_eq!(changed.status, 303, "{action}: {}", changed.body);
        let workers: Vec<api::WorkerView> = api.get("/v1/workers").expect(200);
        assert_eq!(workers[0].state, state, "{action}");
    }
    let schedule_action = format!("{base}/ui/schedules/nightly/action");
    for (action, paused) in [("pause", true), ("resume", false)] {
        let changed = post_form(
            &client,
            &schedule_action,
            None,
            &[("csrf", &csrf), ("action", action)],
        );
        assert_eq!(changed.status, 303, "{action}: {}", changed.body);
        let schedule: api::ScheduleView = api.get("/v1/schedules/nightly").expect(200);
        assert_eq!(schedule.paused, paused, "{action}");
    }
    let unknown = post_form(
        &client,
        &schedule_action,
        None,
        &[("csrf", &csrf), ("action", "explode")],
    );
    assert_eq!(unknown.status, 400);
    assert!(unknown.body.contains("explode"));

    // The leader samples its figures once a second; the stream sends them.
    eventually("a second of history", || {
        let history: api::ClusterHistory = api.get("/v1/cluster/history").expect(200);
        (history.samples.len() >= 2).then_some(())
    });
    let mut stream = client.get(format!("{base}/ui/events")).send().unwrap();
    assert_eq!(stream.status().as_u16(), 200);
    let mut seen = String::new();
    let mut buffer = [0u8; 4096];
    while !(seen.contains("event: figures") && seen.contains("event: charts")) {
        let n = stream.read(&mut buffer).unwrap();
        assert!(n > 0, "the stream ended: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buffer[..n]));
    }
    assert!(seen.contains("Pending"), "{seen}");
}

#[test]
fn with_tokens_a_person_logs_in_and_sees_only_what_their_role_allows() {
    let server = BlockingTestServer::start_with(toml_settings(TOKENS));
    let admin = server.api_as("admin-secret");
    let base = server.url().to_owned();
    let client = browser();
    let job = admin.submit(&function_job("root.default", "dash.wait"));
    admin
        .post(
            "/v1/schedules",
            &json!({"name": "nightly", "cron": "0 3 * * *",
                    "job": {"queue": "root.default", "kind": {"type": "function", "handler": "tick", "args": {}}}}),
        )
        .expect_status(201);

    // Without a session every page sends the person to log in; the API never reads the
    // cookie.
    for path in ["/ui", "/ui/jobs", &format!("/ui/jobs/{job}")] {
        let page = get(&client, &format!("{base}{path}"), None);
        assert_eq!(page.status, 303, "{path}");
        assert_eq!(page.headers[header::LOCATION], "/ui/login");
    }
    // A live block reloading after the session ended changes the whole page instead.
    let fragment = read(
        client
            .get(format!("{base}/ui/jobs/{job}/logs"))
            .header("hx-request", "true")
            .send()
            .unwrap(),
    );
    assert_eq!(fragment.status, 200);
    assert_eq!(fragment.headers["hx-redirect"], "/ui/login");
    assert!(fragment.body.is_empty());
    let login = get(&client, &format!("{base}/ui/login"), None);
    assert_eq!(login.status, 200);
    assert_safe(&login, "login");
    assert!(login.body.contains("type=\"password\""));

    // A wrong token is refused; a right one becomes an HttpOnly, SameSite=Strict cookie
    // and never appears in a URL.
    let wrong = post_form(
        &client,
        &format!("{base}/ui/login"),
        None,
        &[("token", "guess")],
    );
    assert_eq!(wrong.status, 401);
    assert!(wrong.body.contains("not known"));
    let cookie_of = |token: &str| {
        let answer = post_form(
            &client,
            &format!("{base}/ui/login"),
            None,
            &[("token", token)],
        );
        assert_eq!(answer.status, 303, "{}", answer.body);
        assert_eq!(answer.headers[header::LOCATION], "/ui");
        let set = answer.headers[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            set.contains("HttpOnly") && set.contains("SameSite=Strict"),
            "{set}"
        );
        assert!(!set.contains("Secure"), "no TLS here: {set}");
        assert!(
            !set.contains(token),
            "the cookie does not carry the token as typed"
        );
        set.split(';').next().unwrap().to_owned()
    };
    let reader = cookie_of("reader-secret");
    let admin_cookie = cookie_of("admin-secret");

    // The reader sees the pages, without the warning, and without actions.
    let overview = get(&client, &format!("{base}/ui"), Some(&reader));
    assert_eq!(overview.status, 200, "{}", overview.body);
    assert!(!overview.body.contains("runs without tokens"));
    assert!(overview.body.contains("rita (reader)"));
    let page = get(&client, &format!("{base}/ui/jobs/{job}"), Some(&reader));
    assert_eq!(page.status, 200);
    assert!(
        !page.body.contains(">Cancel<"),
        "a reader gets no cancel button"
    );
    // Forcing the action anyway is refused by the API's own check.
    let csrf = csrf_of(&page);
    let forced = post_form(
        &client,
        &format!("{base}/ui/jobs/{job}/action"),
        Some(&reader),
        &[("action", "cancel"), ("csrf", &csrf)],
    );
    assert_eq!(forced.status, 403, "{}", forced.body);
    assert_eq!(admin.job(job).state, api::JobState::Pending);
    let queue_page = get(
        &client,
        &format!("{base}/ui/queues?path=root.default"),
        Some(&reader),
    );
    assert!(
        !queue_page.body.contains("Save settings"),
        "a reader edits nothing"
    );
    // Nor do forced queue, worker and schedule actions get through.
    for (url, form) in [
        (
            format!("{base}/ui/queues/action"),
            vec![
                ("path", "root.default"),
                ("action", "update"),
                ("settings", r#"{"capacity": 1}"#),
            ],
        ),
        (
            format!("{base}/ui/queues/action"),
            vec![("path", "root.default"), ("action", "stop")],
        ),
        (
            format!("{base}/ui/workers/{}/action", uuid::Uuid::nil()),
            vec![("action", "drain")],
        ),
        (
            format!("{base}/ui/schedules/nightly/action"),
            vec![("action", "pause")],
        ),
    ] {
        let mut form = form;
        form.push(("csrf", csrf.as_str()));
        let refused = post_form(&client, &url, Some(&reader), &form);
        assert_eq!(refused.status, 403, "{url} {form:?}: {}", refused.body);
    }
    let default: api::QueueView = admin.get("/v1/queues/root.default?depth=0").expect(200);
    assert_eq!(default.state, api::QueueState::Running);
    assert_ne!(default.capacity, 1.0);

    // One session's CSRF token does not work for another.
    let admin_page = get(
        &client,
        &format!("{base}/ui/jobs/{job}"),
        Some(&admin_cookie),
    );
    assert!(admin_page.body.contains(">Cancel<"));
    let action = format!("{base}/ui/jobs/{job}/action");
    let borrowed = post_form(
        &client,
        &action,
        Some(&admin_cookie),
        &[("action", "cancel"), ("csrf", &csrf)],
    );
    assert_eq!(borrowed.status, 403);
    let admin_csrf = csrf_of(&admin_page);
    let cancelled = post_form(
        &client,
        &action,
        Some(&admin_cookie),
        &[("action", "cancel"), ("csrf", &admin_csrf)],
    );
    assert_eq!(cancelled.status, 303, "{}", cancelled.body);
    assert_eq!(admin.job(job).state, api::JobState::Cancelled);

    // Logging out clears the cookie.
    let out = post_form(
        &client,
        &format!("{base}/ui/logout"),
        Some(&admin_cookie),
        &[],
    );
    assert_eq!(out.status, 303);
    assert!(
        out.headers[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
}
