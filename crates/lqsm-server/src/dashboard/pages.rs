//! The dashboard's pages and actions: each reads the API in process and renders HTML.

use super::charts::{figure, line_chart, share_bar};
use super::{Peer, Session, Ui, UiError, page_shell};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use lqsm_api as api;
use maud::{Markup, html};
use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

/// Jobs on a page of the job list.
const JOBS_PER_PAGE: usize = 50;

/// Children of a queue shown at once (the rest are a page away).
const CHILDREN_PER_PAGE: usize = 100;

/// Workflow nodes drawn as a graph; a larger workflow is listed only.
const MAX_GRAPH_NODES: usize = 200;

fn when(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

fn resources(r: &api::ResourceFigures) -> String {
    let mut text = format!("{} cpu, {} MiB", figure(r.cpu), r.memory_mib);
    if r.gpu > 0 {
        text.push_str(&format!(", {} gpu", r.gpu));
    }
    for (name, amount) in &r.custom {
        text.push_str(&format!(", {amount} {name}"));
    }
    text
}

/// A query string from pairs, each value percent-encoded.
fn query(pairs: &[(&str, &str)]) -> String {
    let encoded: Vec<String> = pairs
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{k}={}", encode(v)))
        .collect();
    encoded.join("&")
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A POST form with the session's CSRF token and one button.
fn action_button(session: &Session, action_url: &str, action: &str, label: &str) -> Markup {
    html! {
        form.inline method="post" action=(action_url) {
            input type="hidden" name="csrf" value=(session.csrf);
            input type="hidden" name="action" value=(action);
            button type="submit" { (label) }
        }
    }
}

/// Whether the session may change queues at all (the API decides which).
fn may_admin_queues(session: &Session) -> bool {
    matches!(
        session.caller.role,
        crate::auth::Role::Admin | crate::auth::Role::QueueAdmin(_)
    )
}

fn may_change_jobs(session: &Session) -> bool {
    !matches!(
        session.caller.role,
        crate::auth::Role::Reader(_) | crate::auth::Role::Worker
    )
}

fn is_admin(session: &Session) -> bool {
    session.caller.role == crate::auth::Role::Admin
}

// ----- Login -------------------------------------------------------------------------

/// The login page, with an error when a login failed.
pub fn login_page(error: Option<&str>) -> Html<String> {
    let content = html! {
        @if let Some(error) = error {
            p.error role="alert" { (error) }
        }
        form.login method="post" action="/ui/login" {
            label for="token" { "Token" }
            input id="token" name="token" type="password" autocomplete="current-password" required;
            button type="submit" { "Log in" }
        }
        p.muted { "The token is kept in a cookie only this dashboard reads, until you log out." }
    };
    Html(page_shell("Log in", "", None, content).into_string())
}

pub async fn login_form() -> Html<String> {
    login_page(None)
}

// ----- Overview ----------------------------------------------------------------------

pub async fn overview(
    State(ui): State<Ui>,
    headers: HeaderMap,
    peer: Peer,
) -> Result<Html<String>, UiError> {
    let session = ui.session(&headers, peer)?;
    let summary: Result<api::ClusterSummary, UiError> = ui.get(&session, "/v1/cluster").await;
    let content = match summary {
        Ok(summary) => {
            let history: api::ClusterHistory = ui.get(&session, "/v1/cluster/history").await?;
            html! {
                div hx-ext="sse" sse-connect="/ui/events" {
                    section id="figures" sse-swap="figures" aria-live="polite" { (figures(&summary)) }
                    section id="charts" sse-swap="charts" { (charts(&history.samples)) }
                }
            }
        }
        Err(UiError::Api(StatusCode::FORBIDDEN, message)) => html! {
            p { "This token sees only some queues, not the whole cluster (" (message) "). " a href="/ui/queues" { "Its queues" } }
        },
        Err(e) => return Err(e),
    };
    Ok(Html(
        page_shell("Overview", "overview", Some(&session), content).into_string(),
    ))
}

/// The cluster's figures: capacity against use, jobs, workers, the servers.
fn figures(summary: &api::ClusterSummary) -> Markup {
    let count = |state: api::JobState| summary.jobs.get(&state).copied().unwrap_or(0);
    let workers = |state: api::WorkerState| summary.workers.get(&state).copied().unwrap_or(0);
    html! {
        dl.figures {
            div { dt { "CPU in use" } dd { (figure(summary.used.cpu)) " of " (figure(summary.total.cpu)) } }
            div { dt { "Memory in use" } dd { (summary.used.memory_mib) " of " (summary.total.memory_mib) " MiB" } }
            div { dt { "Pending" } dd data-figure="pending" { (count(api::JobState::Pending)) } }
            div { dt { "Running" } dd data-figure="running" { (count(api::JobState::Running) + count(api::JobState::Scheduled)) } }
            div { dt { "Succeeded (held)" } dd data-figure="succeeded" { (count(api::JobState::Succeeded)) } }
            div { dt { "Failed (held)" } dd { (count(api::JobState::Failed)) } }
            div { dt { "Workers" } dd { (workers(api::WorkerState::Active)) " active, " (workers(api::WorkerState::Draining)) " draining, " (workers(api::WorkerState::Lost)) " lost" } }
            div { dt { "Queues" } dd { (summary.queues) } }
        }
        @if let Some(store) = &summary.store {
            p {
                "Store: " (store.backend) "; leader " strong { (store.leader) } " (epoch " (store.epoch) ")"
                @if store.servers.len() > 1 {
                    "; servers: "
                    @for (i, server) in store.servers.iter().enumerate() {
                        @if i > 0 { ", " }
                        (server.node) @if server.leader { " (leads)" }
                    }
                }
            }
        }
    }
}

/// The last hour as charts: finished jobs per second, jobs waiting, attempts running.
fn charts(samples: &[api::ClusterSample]) -> Markup {
    let Some(first) = samples.first() else {
        return html! { p.muted { "No figures yet: the leader samples them once a second." } };
    };
    let seconds = |s: &api::ClusterSample| s.at_ms.saturating_sub(first.at_ms) as f64 / 1000.0;
    let rate: Vec<(f64, f64)> = samples
        .windows(2)
        .map(|w| {
            let dt = (w[1].at_ms.saturating_sub(w[0].at_ms) as f64 / 1000.0).max(0.001);
            (
                seconds(&w[1]),
                w[1].finished.saturating_sub(w[0].finished) as f64 / dt,
            )
        })
        .collect();
    let pending: Vec<(f64, f64)> = samples
        .iter()
        .map(|s| (seconds(s), s.pending as f64))
        .collect();
    let running: Vec<(f64, f64)> = samples
        .iter()
        .map(|s| (seconds(s), s.running as f64))
        .collect();
    let cpu: Vec<(f64, f64)> = samples.iter().map(|s| (seconds(s), s.cpu_used)).collect();
    html! {
        div.charts {
            (line_chart("Finished", "jobs/s", &rate))
            (line_chart("Waiting", "jobs", &pending))
            (line_chart("Running", "attempts", &running))
            (line_chart("CPU in use", "cores", &cpu))
        }
    }
}

/// Once a second: the figures and the charts, as server-sent events the overview swaps in.
pub async fn events(
    State(ui): State<Ui>,
    headers: HeaderMap,
    peer: Peer,
) -> Result<Response, UiError> {
    let session = ui.session(&headers, peer)?;
    let first: api::ClusterHistory = ui.get(&session, "/v1/cluster/history").await?;
    let stream = futures_util::stream::unfold(
        (
            ui,
            session,
            first.samples,
            tokio::time::interval(Duration::from_secs(1)),
        ),
        |(ui, session, mut samples, mut every)| async move {
            every.tick().await;
            let since = samples.last().map_or(0, |s| s.at_ms + 1);
            if let Ok(more) = ui
                .get::<api::ClusterHistory>(
                    &session,
                    &format!("/v1/cluster/history?since_ms={since}"),
                )
                .await
            {
                samples.extend(more.samples);
                let excess = samples.len().saturating_sub(crate::history::SAMPLES_KEPT);
                samples.drain(..excess);
            }
            let events = match ui.get::<api::ClusterSummary>(&session, "/v1/cluster").await {
                Ok(summary) => vec![
                    Event::default()
                        .event("figures")
                        .data(figures(&summary).into_string()),
                    Event::default()
                        .event("charts")
                        .data(charts(&samples).into_string()),
                ],
                Err(UiError::Api(_, message)) => vec![
                    Event::default()
                        .event("figures")
                        .data(html! { p.error role="alert" { (message) } }.into_string()),
                ],
                // Logged out meanwhile: end the stream.
                Err(_) => return None,
            };
            Some((
                futures_util::stream::iter(
                    events.into_iter().map(Ok::<_, std::convert::Infallible>),
                ),
                (ui, session, samples, every),
            ))
        },
    );
    use futures_util::StreamExt;
    Ok(Sse::new(stream.flatten())
        .keep_alive(KeepAlive::default())
        .into_response())
}

// ----- Queues ------------------------------------------------------------------------

#[derive(serde::Deserialize)]
pub struct QueuesQuery {
    path: Option<String>,
    cursor: Option<String>,
    level: Option<usize>,
}

fn queue_uri(path: &str, cursor: Option<&str>) -> String {
    let mut uri = format!(
        "/v1/queues/{}?depth=1&limit={CHILDREN_PER_PAGE}",
        encode(path)
    );
    if let Some(cursor) = cursor {
        uri.push_str(&format!("&cursor={}", encode(cursor)));
    }
    uri
}

async fn queue_page(
    ui: &Ui,
    session: &Session,
    path: &str,
    cursor: Option<&str>,
) -> Result<(api::QueueView, Option<String>), UiError> {
    let (_, headers, bytes) = ui
        .call(session, Method::GET, &queue_uri(path, cursor), None)
        .await?;
    let view: api::QueueView = serde_json::from_slice(&bytes).map_err(|e| {
        UiError::Api(
            StatusCode::BAD_GATEWAY,
            format!("the queue could not be read: {e}"),
        )
    })?;
    let next = headers
        .get("lqsm-next-cursor")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    Ok((view, next))
}

fn queue_row(queue: &api::QueueView, level: usize) -> Markup {
    let name = queue.path.rsplit('.').next().unwrap_or(&queue.path);
    html! {
        tr data-path=(queue.path) {
            td.indent data-level=(level.min(12)) {
                // A listing one level deep does not say whether a child has children of
                // its own: expanding a leaf adds nothing.
                button.expand type="button" aria-label=(format!("show the queues under {}", queue.path))
                    hx-get=(format!("/ui/queues/rows?{}", query(&[("path", &queue.path), ("level", &(level + 1).to_string())])))
                    hx-target="closest tr" hx-swap="afterend" { "+" }
                " "
                a href=(format!("/ui/queues?{}", query(&[("path", &queue.path)]))) { (name) }
                @if queue.placement_only { span.muted { " (not yours)" } }
            }
            td { @if !queue.placement_only { (share_bar(used_share(queue), queue.abs_guarantee, queue.abs_max)) } }
            td.num { (queue.pending) }
            td.num { (queue.running) }
            td { (queue.state.as_str()) }
        }
    }
}

/// A queue's use as a share of the cluster: its dominant resource against the whole.
fn used_share(queue: &api::QueueView) -> f64 {
    // The guarantee is a share of the cluster and `guaranteed` the resources it stands
    // for, so use over guaranteed resources, times the guarantee, is use's share.
    let g = &queue.guaranteed;
    let u = &queue.used;
    let ratio = |used: f64, guaranteed: f64| {
        if guaranteed > 0.0 {
            used / guaranteed
        } else {
            0.0
        }
    };
    let dominant = ratio(u.cpu, g.cpu).max(ratio(u.memory_mib as f64, g.memory_mib as f64));
    if queue.abs_guarantee > 0.0 {
        dominant * queue.abs_guarantee
    } else {
        0.0
    }
}

fn queue_table(rows: Markup) -> Markup {
    html! {
        table.queues {
            caption.visually-hidden { "Queues" }
            thead { tr { th scope="col" { "Queue" } th scope="col" { "Use / guarantee" } th scope="col" { "Pending" } th scope="col" { "Running" } th scope="col" { "State" } } }
            tbody { (rows) }
        }
    }
}

pub async fn queues(
    State(ui): State<Ui>,
    headers: HeaderMap,
    peer: Peer,
    Query(q): Query<QueuesQuery>,
) -> Result<Html<String>, UiError> {
    let session = ui.session(&headers, peer)?;
    let path = q.path.unwrap_or_else(|| "root".to_owned());
    let (queue, next) = queue_page(&ui, &session, &path, q.cursor.as_deref()).await?;
    let mut crumbs = Vec::new();
    let mut prefix = String::new();
    for part in path.split('.') {
        if !prefix.is_empty() {
            prefix.push('.');
        }
        prefix.push_str(part);
        crumbs.push((part.to_owned(), prefix.clone()));
    }
    let settings = serde_json::to_string_pretty(&queue.settings).unwrap_or_default();
    let content = html! {
        nav aria-label="Queue path" {
            ol.crumbs {
                @for (name, full) in &crumbs {
                    li { a href=(format!("/ui/queues?{}", query(&[("path", full)]))) { (name) } }
                }
            }
        }
        @if !queue.placement_only {
            dl.figures {
                div { dt { "State" } dd { (queue.state.as_str()) } }
                div { dt { "Use / guarantee" } dd { (share_bar(used_share(&queue), queue.abs_guarantee, queue.abs_max)) } }
                div { dt { "Guaranteed" } dd { (resources(&queue.guaranteed)) } }
                div { dt { "In use" } dd { (resources(&queue.used)) } }
                div { dt { "Pending" } dd { (queue.pending) } }
                div { dt { "Running" } dd { (queue.running) } }
                div { dt { "Submitted" } dd { (queue.counts.submitted) } }
                div { dt { "Succeeded" } dd { (queue.counts.succeeded) } }
                div { dt { "Failed" } dd { (queue.counts.failed) } }
            }
            @if let Some(note) = &queue.note { p.note { (note) } }
            p { a href=(format!("/ui/jobs?{}", query(&[("queue", &queue.path)]))) { "Its jobs" } }
        }
        @if !queue.children.is_empty() {
            h2 { "Queues under it" }
            (queue_table(html! { @for child in &queue.children { (queue_row(child, 0)) } }))
            @if let Some(next) = next {
                p { a href=(format!("/ui/queues?{}", query(&[("path", &path), ("cursor", &next)]))) { "More queues" } }
            }
        }
        @if may_admin_queues(&session) && !queue.placement_only {
            h2 { "Settings" }
            form.settings method="post" action="/ui/queues/action" {
                input type="hidden" name="csrf" value=(session.csrf);
                input type="hidden" name="path" value=(queue.path);
                input type="hidden" name="action" value="update";
                label for="settings" { "Settings (JSON, as " code { "PATCH /v1/queues/{path}" } " takes them)" }
                textarea id="settings" name="settings" rows="12" { (settings) }
                button type="submit" { "Save settings" }
            }
            div.actions {
                @for (action, label) in [("stop", "Stop"), ("start", "Start"), ("drain", "Drain")] {
                    form.inline method="post" action="/ui/queues/action" {
                        input type="hidden" name="csrf" value=(session.csrf);
                        input type="hidden" name="path" value=(queue.path);
                        input type="hidden" name="action" value=(action);
                        button type="submit" { (label) }
                    }
                }
            }
        } @else if !queue.placement_only {
            h2 { "Settings" }
            pre { (settings) }
        }
    };
    Ok(Html(
        page_shell(&format!("Queue {path}"), "queues", Some(&session), content).into_string(),
    ))
}

/// The rows of a queue's children, for expanding the tree in place.
pub async fn queue_rows(
    State(ui): State<Ui>,
    headers: HeaderMap,
    peer: Peer,
    Query(q): Query<QueuesQuery>,
) -> Result<Html<String>, UiError> {
    let session = ui.session(&headers, peer)?;
    let path = q
        .path
        .ok_or_else(|| UiError::BadRequest("`path` is missing".into()))?;
    let (queue, next) = queue_page(&ui, &session, &path, q.cursor.as_deref()).await?;
    let level = q.level.unwrap_or(1);
    let rows = html! {
        @for child in &queue.children { (queue_row(child, level)) }
        @if next.is_some() {
            tr { td colspan="5" data-level=(level.min(12)) { a href=(format!("/ui/queues?{}", query(&[("path", &path)]))) { "More queues under " (path) } } }
        }
    };
    Ok(Html(rows.into_string()))
}

#[derive(serde::Deserialize)]
pub struct ActionForm {
    csrf: Option<String>,
    action: String,
    path: Option<String>,
    settings: Option<String>,
}

pub async fn queue_action(
    State(ui): State<Ui>,
    headers: HeaderMap,
    peer: Peer,
    axum::Form(form): axum::Form<ActionForm>,
) -> Result<Response, UiError> {
    let session = ui.session(&headers, peer)?;
    ui.check_csrf(&session, &headers, form.csrf.as_deref())?;
    let path = form
        .path
        .ok_or_else(|| UiError::BadRequest("`path` is missing".into()))?;
    let uri = format!("/v1/queues/{}", encode(&path));
    match form.action.as_str() {
        "update" => {
            let text = form.settings.unwrap_or_default();
            let settings: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| UiError::BadRequest(format!("the settings are not JSON: {e}")))?;
            ui.call(&session, Method::PATCH, &uri, Some(&settings))
                .await?;
        }
        "stop" | "start" | "drain" => {
            ui.call(
                &session,
                Method::POST,
                &format!("{uri}/{}", form.action),
                None,
            )
            .await?;
        }
        other => {
            return Err(UiError::BadRequest(format!(
                "`{other}` is not an action on a queue"
            )));
        }
    }
    Ok(Redirect::to(&format!("/ui/queues?{}", query(&[("path", &path)]))).into_response())
}

// ----- Jobs --------------------------------------------------------------------------

#[derive(serde::Deserialize, Default)]
pub struct JobsQuery {
    queue: Option<String>,
    state: Option<String>,
    tag: Option<String>,
    submitter: Option<String>,
    cursor: Option<String>,
    id: Option<String>,
}

pub async fn jobs(
    State(ui): State<Ui>,
    headers: HeaderMap,
    peer: Peer,
    Query(q): Query<JobsQuery>,
) -> Result<Response, UiError> {
    let session = ui.session(&headers, peer)?;
    if let Some(id) = q.id.as_deref().map(str::trim).filter(|id| !id.is_empty()) {
        return match uuid::Uuid::parse_str(id) {
            Ok(id) => Ok(Redirect::to(&format!("/ui/jobs/{id}")).into_response()),
            Err(_) => Err(UiError::BadRequest(format!("`{id}` is not a job id"))),
        };
    }
    let (queue, state, tag, submitter) = (
        q.queue.clone().unwrap_or_default(),
        q.state.clone().unwrap_or_default(),
        q.tag.clone().unwrap_or_default(),
        q.submitter.clone().unwrap_or_default(),
    );
    let limit = JOBS_PER_PAGE.to_string();
    let mut pairs = vec![
        ("order", "newest"),
        ("limit", limit.as_str()),
        ("queue", queue.as_str()),
        ("state", state.as_str()),
        ("tag", tag.as_str()),
        ("submitter", submitter.as_str()),
    ];
    let cursor = q.cursor.clone().unwrap_or_default();
    pairs.push(("cursor", cursor.as_str()));
    let list: api::JobList = ui
        .get(&session, &format!("/v1/jobs?{}", query(&pairs)))
        .await?;
    let content = html! {
        form.filters method="get" action="/ui/jobs" {
            label { "Queue " input name="queue" value=(queue) placeholder="root.etl"; }
            label { "State "
                select name="state" {
                    option value="" { "any" }
                    @for s in api::JobState::ALL {
                        option value=(s.as_str()) selected[s.as_str() == state] { (s.as_str()) }
                    }
                }
            }
            label { "Tag " input name="tag" value=(tag); }
            label { "User " input name="submitter" value=(submitter) placeholder="a token's name"; }
            button type="submit" { "Filter" }
        }
        form.filters method="get" action="/ui/jobs" {
            label { "Job id " input name="id" required placeholder="0190…"; }
            button type="submit" { "Open" }
        }
        @if list.jobs.is_empty() && list.next_cursor.is_some() {
            p { "None among the jobs looked through so far; older ones may match." }
        } @else if list.jobs.is_empty() {
            p { "No jobs match." }
        } @else {
            table.jobs {
                caption.visually-hidden { "Jobs, newest first" }
                thead { tr { th scope="col" { "Job" } th scope="col" { "Queue" } th scope="col" { "State" } th scope="col" { "What" } th scope="col" { "Tags" } th scope="col" { "By" } th scope="col" { "Submitted" } } }
                tbody {
                    @for job in &list.jobs {
                        tr {
                            td { a href=(format!("/ui/jobs/{}", job.id)) { code { (job.id) } } }
                            td { (job.queue) }
                            td { span class=(format!("state {}", job.state.as_str())) { (job.state.as_str()) } }
                            td { (what(job)) }
                            td { @for t in &job.tags { span.tag { (t) } " " } }
                            td { (job.submitted_by) }
                            td { (when(job.submitted_at_ms)) }
                        }
                    }
                }
            }
        }
        @if let Some(next) = &list.next_cursor {
            p { a rel="next" href=(format!("/ui/jobs?{}", query(&[("queue", &queue), ("state", &state), ("tag", &tag), ("submitter", &submitter), ("cursor", next)]))) { "Older jobs" } }
        }
    };
    Ok(Html(page_shell("Jobs", "jobs", Some(&session), content).into_string()).into_response())
}

/// What a job runs, in a few words.
fn what(job: &api::JobView) -> String {
    if let Some(name) = &job.name {
        return name.clone();
    }
    match &job.kind {
        api::JobKind::Command { argv, .. } => argv.join(" "),
        api::JobKind::Function { handler, .. } => handler.clone(),
    }
}

pub async fn job(
    State(ui): State<Ui>,
    headers: HeaderMap,
    peer: Peer,
    Path(id): Path<String>,
) -> Result<Html<String>, UiError> {
    let session = ui.session(&headers, peer)?;
    let job: api::JobView = ui
        .get(&session, &format!("/v1/jobs/{}", encode(&id)))
        .await?;
    let logs = logs_section(&ui, &session, &job).await;
    // The graph of its workflow, when it belongs to one small enough to draw.
    let flow = match job.workflow {
        Some(id) => ui
            .get::<api::WorkflowView>(&session, &format!("/v1/workflows/{id}"))
            .await
            .ok()
            .filter(|flow| flow.nodes.len() <= MAX_GRAPH_NODES),
        None => None,
    };
    let spec = serde_json::to_string_pretty(&job.kind).unwrap_or_default();
    let action_url = format!("/ui/jobs/{}/action", job.id);
    let content = html! {
        dl.figures {
            div { dt { "State" } dd { span class=(format!("state {}", job.state.as_str())) { (job.state.as_str()) } } }
            div { dt { "Queue" } dd { a href=(format!("/ui/queues?{}", query(&[("path", &job.queue)]))) { (job.queue) } } }
            div { dt { "Resources" } dd { (resources(&job.resources)) } }
            div { dt { "Priority" } dd { (job.priority) } }
            div { dt { "Submitted" } dd { (when(job.submitted_at_ms)) " by " (job.submitted_by) } }
            @if let Some(at) = job.finished_at_ms { div { dt { "Finished" } dd { (when(at)) } } }
            div { dt { "Attempts allowed" } dd { (job.max_attempts) } }
            @if !job.tags.is_empty() { div { dt { "Tags" } dd { @for t in &job.tags { span.tag { (t) } " " } } } }
            @if let Some(workflow) = job.workflow { div { dt { "Workflow" } dd { a href=(format!("/ui/workflows/{workflow}")) { (workflow) } } } }
        }
        @if may_change_jobs(&session) {
            div.actions {
                @if !job.state.is_terminal() { (action_button(&session, &action_url, "cancel", "Cancel")) }
                @if matches!(job.state, api::JobState::Failed | api::JobState::Cancelled | api::JobState::Expired) {
                    (action_button(&session, &action_url, "retry", "Retry"))
                }
            }
        }
        @if let Some(reason) = &job.reason { h2 { "Why it ended" } p.reason { (reason) } }
        @if let Some(result) = &job.result { h2 { "Result" } pre { (serde_json::to_string_pretty(result).unwrap_or_default()) } }
        @if let Some(code) = job.exit_code { p { "Exit code " (code) } }
        h2 { "What it runs" }
        pre { (spec) }
        h2 { "Attempts" }
        @if job.attempts.is_empty() { p { "None yet." } } @else {
            table {
                thead { tr { th scope="col" { "#" } th scope="col" { "Worker" } th scope="col" { "Scheduled" } th scope="col" { "Started" } th scope="col" { "Finished" } th scope="col" { "Outcome" } } }
                tbody {
                    @for a in &job.attempts {
                        tr {
                            td { (a.number) }
                            td { code { (a.worker) } }
                            td { (when(a.scheduled_at_ms)) }
                            td { @if let Some(t) = a.started_at_ms { (when(t)) } }
                            td { @if let Some(t) = a.finished_at_ms { (when(t)) } }
                            td { @if let Some(o) = a.outcome { (o.as_str()) } @if let Some(m) = &a.message { " — " (m) } }
                        }
                    }
                }
            }
        }
        h2 { "Output" }
        (logs)
        @if let Some(flow) = &flow {
            h2 { "Its workflow" }
            (graph(&flow.nodes))
        }
    };
    Ok(Html(
        page_shell(&format!("Job {}", job.id), "jobs", Some(&session), content).into_string(),
    ))
}

/// The job's output; while it runs, the block reloads itself every second.
async fn logs_section(ui: &Ui, session: &Session, job: &api::JobView) -> Markup {
    let text = match ui
        .call(
            session,
            Method::GET,
            &format!("/v1/jobs/{}/logs", job.id),
            None,
        )
        .await
    {
        Ok((_, _, bytes)) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(UiError::Api(_, message)) => format!("(the output could not be read: {message})"),
        Err(_) => String::new(),
    };
    let live = !job.state.is_terminal();
    html! {
        @if live {
            div id="logs" hx-get=(format!("/ui/jobs/{}/logs", job.id)) hx-trigger="every 1s" hx-swap="outerHTML" {
                p.muted { "Live: refreshed every second while the job runs." }
                pre.logs { (text) }
            }
        } @else {
            div id="logs" {
                @if text.is_empty() { p.muted { "No output." } } @else { pre.logs { (text) } }
            }
        }
    }
}

pub async fn job_logs(
    State(ui): State<Ui>,
    headers: HeaderMap,
    peer: Peer,
    Path(id): Path<String>,
) -> Result<Html<String>, UiError> {
    let session = ui.session(&headers, peer)?;
    let job: api::JobView = ui
        .get(&session, &format!("/v1/jobs/{}", encode(&id)))
        .await?;
    Ok(Html(logs_section(&ui, &session, &job).await.into_string()))
}

pub async fn job_action(
    State(ui): State<Ui>,
    headers: HeaderMap,
    peer: Peer,
    Path(id): Path<String>,
    axum::Form(form): axum::Form<ActionForm>,
) -> Result<Response, UiError> {
    let id = uuid::Uuid::parse_str(&id)
        .map_err(|_| UiError::BadRequest(format!("`{id}` is not a job id")))?;
    let target = Target {
        what: "a job",
        actions: &["cancel", "retry"],
        api: format!("/v1/jobs/{id}"),
        back: format!("/ui/jobs/{id}"),
    };
    perform(&ui, &headers, peer, &form, target).await
}

/// What an action button acts on: the actions it takes, the API path they are posted
/// under (`{api}/{action}`) and the page shown after.
struct Target {
    what: &'static str,
    actions: &'static [&'static str],
    api: String,
    back: String,
}

/// Checks the session and its CSRF token, posts the action to the API, and goes back.
async fn perform(
    ui: &Ui,
    headers: &HeaderMap,
    peer: Peer,
    form: &ActionForm,
    target: Target,
) -> Result<Response, UiError> {
    let session = ui.session(headers, peer)?;
    ui.check_csrf(&session, headers, form.csrf.as_deref())?;
    let action = form.action.as_str();
    if !target.actions.contains(&action) {
        return Err(UiError::BadRequest(format!(
            "`{action}` is not an action on {}",
            target.what
        )));
    }
    ui.call(
        &session,
        Method::POST,
        &format!("{}/{action}", target.api),
        None,
    )
    .await?;
    Ok(Redirect::to(&target.back).into_response())
}

// ----- Workers -----------------------------------------------------------------------

pub async fn workers(
    State(ui): State<Ui>,
    headers: HeaderMap,
    peer: Peer,
) -> Result<Html<String>, UiError> {
    let session = ui.session(&headers, peer)?;
    let workers: Vec<api::WorkerView> = ui.get(&session, "/v1/workers").await?;
    let content = html! {
        @if workers.is_empty() { p { "No workers." } } @else {
            table.workers {
                caption.visually-hidden { "Workers" }
                thead { tr { th scope="col" { "Worker" } th scope="col" { "State" } th scope="col" { "Capacity" } th scope="col" { "In use" } th scope="col" { "Attempts" } th scope="col" { "Labels" } th scope="col" { "Queues" } @if is_admin(&session) { th scope="col" { "Action" } } } }
                tbody {
                    @for w in &workers {
                        tr {
                            td { (w.name) br; code.muted { (w.id) } }
                            td {
                                (w.state.as_str())
                                @if w.quiet { " " span.tag title="it has not polled again in time: it gets no new work until it does" { "quiet" } }
                            }
                            td { (resources(&w.capacity)) }
                            td { (resources(&w.used)) }
                            td.num { (w.attempts) }
                            td { @for (k, v) in &w.labels { span.tag { (k) "=" (v) } " " } }
                            td { @if w.queues.is_empty() { "all" } @else { (w.queues.join(", ")) } }
                            @if is_admin(&session) {
                                td {
                                    @match w.state {
                                        api::WorkerState::Active => (action_button(&session, &format!("/ui/workers/{}/action", w.id), "drain", "Drain")),
                                        api::WorkerState::Draining => (action_button(&session, &format!("/ui/workers/{}/action", w.id), "undrain", "Undrain")),
                                        api::WorkerState::Lost => {},
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(Html(
        page_shell("Workers", "workers", Some(&session), content).into_string(),
    ))
}

pub async fn worker_action(
    State(ui): State<Ui>,
    headers: HeaderMap,
    peer: Peer,
    Path(id): Path<String>,
    axum::Form(form): axum::Form<ActionForm>,
) -> Result<Response, UiError> {
    let id = uuid::Uuid::parse_str(&id)
        .map_err(|_| UiError::BadRequest(format!("`{id}` is not a worker id")))?;
    let target = Target {
        what: "a worker",
        actions: &["drain", "undrain"],
        api: format!("/v1/workers/{id}"),
        back: "/ui/workers".to_owned(),
    };
    perform(&ui, &headers, peer, &form, target).await
}

// ----- Schedules ---------------------------------------------------------------------

pub async fn schedules(
    State(ui): State<Ui>,
    headers: HeaderMap,
    peer: Peer,
) -> Result<Html<String>, UiError> {
    let session = ui.session(&headers, peer)?;
    let schedules: Vec<api::ScheduleView> = ui.get(&session, "/v1/schedules").await?;
    let content = html! {
        @if schedules.is_empty() { p { "No schedules." } } @else {
            table.schedules {
                caption.visually-hidden { "Schedules" }
                thead { tr { th scope="col" { "Schedule" } th scope="col" { "When" } th scope="col" { "Queue" } th scope="col" { "Next fire" } th scope="col" { "Last fire" } th scope="col" { "Fired" } th scope="col" { "State" } @if may_change_jobs(&session) { th scope="col" { "Action" } } } }
                tbody {
                    @for s in &schedules {
                        tr {
                            td { (s.name) }
                            td {
                                @if let Some(cron) = &s.cron { code { (cron) } @if let Some(tz) = &s.timezone { " (" (tz) ")" } }
                                @if let Some(every) = s.every_ms { "every " (api::human_duration(Duration::from_millis(every))) }
                            }
                            td { (s.queue) }
                            td { @if let Some(t) = s.next_fire_ms { (when(t)) } }
                            td { @if let Some(t) = s.last_fire_ms { (when(t)) } @if let Some(job) = s.last_job { " " a href=(format!("/ui/jobs/{job}")) { "its job" } } }
                            td.num { (s.fired) }
                            td { @if s.paused { "paused" } @else { "active" } @if let Some(e) = &s.last_error { br; span.error { (e) } } }
                            @if may_change_jobs(&session) {
                                td {
                                    @if s.paused {
                                        (action_button(&session, &format!("/ui/schedules/{}/action", encode(&s.name)), "resume", "Resume"))
                                    } @else {
                                        (action_button(&session, &format!("/ui/schedules/{}/action", encode(&s.name)), "pause", "Pause"))
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(Html(
        page_shell("Schedules", "schedules", Some(&session), content).into_string(),
    ))
}

pub async fn schedule_action(
    State(ui): State<Ui>,
    headers: HeaderMap,
    peer: Peer,
    Path(name): Path<String>,
    axum::Form(form): axum::Form<ActionForm>,
) -> Result<Response, UiError> {
    let target = Target {
        what: "a schedule",
        actions: &["pause", "resume"],
        api: format!("/v1/schedules/{}", encode(&name)),
        back: "/ui/schedules".to_owned(),
    };
    perform(&ui, &headers, peer, &form, target).await
}

// ----- Workflows ---------------------------------------------------------------------

pub async fn workflow(
    State(ui): State<Ui>,
    headers: HeaderMap,
    peer: Peer,
    Path(id): Path<String>,
) -> Result<Html<String>, UiError> {
    let session = ui.session(&headers, peer)?;
    let flow: api::WorkflowView = ui
        .get(&session, &format!("/v1/workflows/{}", encode(&id)))
        .await?;
    let content = html! {
        p { "State: " strong { (flow.state.as_str()) } " — "
            @for (i, (state, n)) in flow.counts.iter().enumerate() { @if i > 0 { ", " } (n) " " (state.as_str()) }
        }
        @if flow.nodes.len() <= MAX_GRAPH_NODES { (graph(&flow.nodes)) } @else {
            p.muted { (flow.nodes.len()) " jobs: too many to draw; listed below." }
        }
        table {
            thead { tr { th scope="col" { "Job" } th scope="col" { "Name" } th scope="col" { "State" } th scope="col" { "After" } } }
            tbody {
                @for node in &flow.nodes {
                    tr {
                        td { a href=(format!("/ui/jobs/{}", node.id)) { code { (node.id) } } }
                        td { (what(node)) }
                        td { (node.state.as_str()) }
                        td { (node.after.len()) " job(s)" }
                    }
                }
            }
        }
    };
    Ok(Html(
        page_shell(
            &format!("Workflow {}", flow.id),
            "jobs",
            Some(&session),
            content,
        )
        .into_string(),
    ))
}

/// A workflow drawn in layers: each job one layer right of the last job it waits for.
fn graph(nodes: &[api::JobView]) -> Markup {
    let index: BTreeMap<uuid::Uuid, usize> =
        nodes.iter().enumerate().map(|(i, n)| (n.id, i)).collect();
    let mut layer = vec![0usize; nodes.len()];
    // Nodes come in submission order, which puts every job after those it waits for;
    // a few passes settle any that do not.
    for _ in 0..nodes.len().min(8) {
        for (i, node) in nodes.iter().enumerate() {
            let deepest = node
                .after
                .iter()
                .filter_map(|a| index.get(a))
                .map(|&j| layer[j] + 1)
                .max()
                .unwrap_or(0);
            layer[i] = layer[i].max(deepest);
        }
    }
    let mut rows: BTreeMap<usize, usize> = BTreeMap::new();
    let position: Vec<(f64, f64)> = layer
        .iter()
        .map(|&l| {
            let row = rows.entry(l).or_insert(0);
            *row += 1;
            (20.0 + l as f64 * 170.0, 20.0 + (*row - 1) as f64 * 50.0)
        })
        .collect();
    let width = position.iter().map(|p| p.0).fold(0.0, f64::max) + 170.0;
    let height = position.iter().map(|p| p.1).fold(0.0, f64::max) + 60.0;
    html! {
        svg.graph viewBox=(format!("0 0 {width} {height}")) role="img" aria-label="the workflow's jobs and what each waits for" {
            @for (i, node) in nodes.iter().enumerate() {
                @for a in &node.after {
                    @if let Some(&j) = index.get(a) {
                        line.edge x1=(position[j].0 + 140.0) y1=(position[j].1 + 15.0) x2=(position[i].0) y2=(position[i].1 + 15.0) {}
                    }
                }
            }
            @for (i, node) in nodes.iter().enumerate() {
                a href=(format!("/ui/jobs/{}", node.id)) {
                    rect class=(format!("node {}", node.state.as_str())) x=(position[i].0) y=(position[i].1) width="140" height="30" rx="4" {}
                    text x=(position[i].0 + 6.0) y=(position[i].1 + 19.0) {
                        (truncate(&what(node), 14)) " · " (node.state.as_str())
                    }
                }
            }
        }
    }
}

fn truncate(text: &str, chars: usize) -> String {
    if text.chars().count() <= chars {
        text.to_owned()
    } else {
        text.chars()
            .take(chars.saturating_sub(1))
            .chain(['…'])
            .collect()
    }
}
