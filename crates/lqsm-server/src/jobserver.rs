//! The JobServer: the `/v1` HTTP API. Handlers parse, validate and authorise in
//! parallel, then hand commands to the ResourceManager runtime and answer once the
//! runtime says the change is durable.

use crate::auth::{Auth, Caller, QueueSight, Role};
use crate::config::Limits;
use crate::convert;
use crate::error::ApiError;
use crate::resource_manager::QueueOp;
use crate::scheduler::{JobListing, Scheduler, SchedulerError};
use crate::view::{ClusterView, QueueSnapshot};
use axum::body::Bytes;
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use lqsm_api as api;
use lqsm_api::ErrorCode;
use lqsm_core::{JobId, QueueUpdate, WorkerId, WorkerPoll};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use utoipa::OpenApi;
use uuid::Uuid;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The scheduler (the only way handlers reach the state).
    pub scheduler: Arc<dyn Scheduler>,
    /// Tokens.
    pub auth: Arc<Auth>,
    /// Limits.
    pub limits: Limits,
    /// Set once the state is restored and the server serves.
    pub ready: Arc<AtomicBool>,
    /// Renders `/metrics`.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// Whether this server leads, follows (and whom) or is starting.
    pub role: tokio::sync::watch::Receiver<crate::leadership::Role>,
    /// Passes calls to the leader while this server follows.
    pub forwarder: crate::forwarding::Forwarder,
    /// Records the calls that change the cluster.
    pub audit: Arc<crate::audit::AuditLog>,
    /// Failed authentications per client address.
    pub auth_failures: Arc<crate::auth_failures::AuthFailures>,
    /// The last hour of the cluster's figures, while this server leads.
    pub history: Arc<crate::history::History>,
    /// Whether the server listens with TLS (the dashboard's cookie is then `Secure`).
    pub tls: bool,
}

impl From<SchedulerError> for ApiError {
    fn from(e: SchedulerError) -> Self {
        match e {
            SchedulerError::Stopped => ApiError::unavailable(
                "the server is shutting down or its store failed; retry against a healthy server",
            ),
            SchedulerError::Restoring => ApiError::unavailable(
                "the server is restoring its state from the store, or stopping after its store failed; retry once /readyz answers 200 (here or on another server)",
            ),
            SchedulerError::Read(why) => {
                ApiError::unavailable(format!("reading the store failed: {why}; retry later"))
            }
            SchedulerError::NotLeader => ApiError::unavailable(
                "this server does not lead and no leader is known yet (an election takes a few seconds); retry shortly",
            ),
        }
    }
}

/// A JSON body whose errors name the field at fault.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    ErrorCode::PayloadTooLarge,
                    "the request body is larger than the server's limit (limits.max_request_bytes)",
                )
            } else {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::InvalidBody,
                    e.body_text(),
                )
            }
        })?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Parses JSON, blaming the field at fault.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // Tracking the path costs on every value of every body (batches of thousands of
    // jobs); only a body that fails is parsed again to say where.
    if let Ok(value) = serde_json::from_slice(bytes) {
        return Ok(value);
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidJson,
                format!("the body is not valid JSON: {inner}"),
            );
        }
        let message = inner.to_string();
        let mut message = message
            .split(" at line ")
            .next()
            .unwrap_or(&message)
            .to_owned();
        let mut field = if path == "." { String::new() } else { path };
        // A field of a tagged enum is read from a buffer, where its path is lost: one
        // read by hand names itself (`field `retry`: ...`, lqsm_api): blame it.
        if let Some((name, rest)) = message
            .strip_prefix("field `")
            .and_then(|m| m.split_once("`: "))
        {
            field = prefixed(&field, name);
            message = rest.to_owned();
        }
        // A field given twice is reported at its parent, like a missing one: name it.
        if let Some(twice) = message
            .strip_prefix("duplicate field `")
            .and_then(|m| m.split('`').next())
        {
            field = prefixed(&field, twice);
        }
        // An unknown key `.` at the top has the path of the body itself: name it from
        // the message (found by fuzzing).
        if field.is_empty()
            && let Some(unknown) = message
                .strip_prefix("unknown field `")
                .and_then(|m| m.split('`').next())
        {
            field = unknown.to_owned();
        }
        let code = if message.starts_with("unknown field") {
            ErrorCode::UnknownField
        } else {
            ErrorCode::InvalidField
        };
        // A missing field is reported at its parent: name the field itself.
        if let Some(missing) = message
            .strip_prefix("missing field `")
            .and_then(|m| m.split('`').next())
        {
            field = if field.is_empty() {
                missing.to_owned()
            } else {
                format!("{field}.{missing}")
            };
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::MissingField,
                format!("{field}: is required"),
            )
            .at(field);
        }
        let text = if field.is_empty() {
            message
        } else {
            format!("{field}: {message}")
        };
        let err = ApiError::new(StatusCode::BAD_REQUEST, code, text);
        if field.is_empty() { err } else { err.at(field) }
    })?;
    // What failed the first parse after a whole value: data after it.
    de.end().map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidJson,
            format!("the body is not valid JSON: {e}"),
        )
    })?;
    Ok(value)
}

type ApiResult<T> = Result<T, ApiError>;

/// Most bytes of JSON a running job's progress (`update_state`) may hold.
pub const MAX_PROGRESS_BYTES: usize = 4096;

fn prefixed(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{prefix}.{name}")
    }
}

/// Checks and converts one wire job; `field` prefixes error fields in a batch.
fn prepare(
    state: &AppState,
    caller: &Caller,
    field: &str,
    job: &api::SubmitJob,
) -> ApiResult<(lqsm_core::SubmitRequest, Option<Vec<u8>>)> {
    let (mut req, size) = prepare_request(state, caller, field, job)?;
    if job.name.is_some() {
        return Err(ApiError::invalid_field(
            &prefixed(field, "name"),
            "only a workflow's nodes have names (POST /v1/workflows)",
        ));
    }
    req.depends = convert::dependencies(field, job, convert::parent_id)?;
    Ok(offload(req, size, state.limits.inline_payload_bytes))
}

/// 403 unless the caller may read every job `req` waits for that is not in `ours` (a
/// workflow's own nodes), naming the `after` entry. Unknown parents are left to the core,
/// which refuses them.
pub(crate) async fn check_parents_readable(
    state: &AppState,
    caller: &Caller,
    field: &str,
    req: &lqsm_core::SubmitRequest,
    ours: &std::collections::HashSet<JobId>,
) -> ApiResult<()> {
    let Some(depends) = &req.depends else {
        return Ok(());
    };
    if caller.role.require_everything().is_ok() {
        return Ok(());
    }
    let outside: Vec<(usize, JobId)> = depends
        .parents
        .iter()
        .copied()
        .enumerate()
        .filter(|(_, p)| !ours.contains(p))
        .collect();
    if outside.is_empty() {
        return Ok(());
    }
    let records = state
        .scheduler
        .jobs_by_id(outside.iter().map(|(_, id)| *id).collect())
        .await?;
    for ((i, _), record) in outside.iter().zip(records) {
        if let Some(record) = record {
            caller
                .role
                .require_read(record.queue.as_str())
                .map_err(|e| e.at(prefixed(field, &format!("after[{i}]"))))?;
        }
    }
    Ok(())
}

/// A submission checked and converted, with its kind's size in bytes; the payload still
/// in it (a schedule keeps its template whole).
pub(crate) fn prepare_request(
    state: &AppState,
    caller: &Caller,
    field: &str,
    job: &api::SubmitJob,
) -> ApiResult<(lqsm_core::SubmitRequest, usize)> {
    caller
        .role
        .require_queue(&job.queue)
        .map_err(|e| e.at(prefixed(field, "queue")))?;
    let size = serde_json::to_vec(&job.kind).map_or(0, |v| v.len());
    if size > state.limits.max_job_bytes {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::PayloadTooLarge,
            format!(
                "the job's kind is {size} bytes (limit {}, limits.max_job_bytes)",
                state.limits.max_job_bytes
            ),
        )
        .at(prefixed(field, "kind")));
    }
    let id = match job.id {
        None => JobId(Uuid::now_v7()),
        Some(id) if id.get_version_num() == 7 => JobId(id),
        Some(id) => {
            return Err(ApiError::invalid_field(
                &prefixed(field, "id"),
                format!(
                    "{id} is a version {} UUID; a job id must be a UUIDv7 (time-ordered), or be left out for the server to choose",
                    id.get_version_num()
                ),
            ));
        }
    };
    let mut req = convert::submission(field, id, job).map_err(|e| {
        // `submission` names fields as `{field}.x`; a single job has no prefix.
        match &e.detail.field {
            Some(f) if field.is_empty() => {
                let f = f.trim_start_matches('.').to_owned();
                let mut e = e.clone();
                e.detail.message = e.detail.message.trim_start_matches('.').to_owned();
                e.at(f)
            }
            _ => e,
        }
    })?;
    req.submitted_by = caller.submitter();
    Ok((req, size))
}

/// Keeps a large kind out of memory: the core gets a stub, the store the real thing.
pub(crate) fn offload(
    mut req: lqsm_core::SubmitRequest,
    size: usize,
    inline_limit: usize,
) -> (lqsm_core::SubmitRequest, Option<Vec<u8>>) {
    if size <= inline_limit {
        return (req, None);
    }
    let handler = req.kind.handler().map(Into::into);
    let stub = lqsm_core::JobKind::Stored { handler };
    let kind = std::mem::replace(&mut req.kind, stub);
    (req, Some(lqsm_core::codec::encode_payload(&kind)))
}

#[utoipa::path(post, path = "/v1/jobs", request_body = api::SubmitJob,
    responses((status = 201, body = api::Submitted), (status = 200, description = "idempotency key matched", body = api::Submitted), (status = "4XX", body = api::ErrorBody)))]
async fn submit_job(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(job): ApiJson<api::SubmitJob>,
) -> ApiResult<Response> {
    let caller = state.auth.caller(&headers)?;
    let req = prepare(&state, &caller, "", &job)?;
    check_parents_readable(&state, &caller, "", &req.0, &Default::default()).await?;
    submit_one(&state, req).await
}

/// Submits one job and answers as `POST /v1/jobs` does: 201 when it was created, 200
/// when an idempotency key or a client-chosen id named an existing job.
async fn submit_one(
    state: &AppState,
    submission: (lqsm_core::SubmitRequest, Option<Vec<u8>>),
) -> ApiResult<Response> {
    let submitted = state
        .scheduler
        .submit(vec![submission])
        .await?
        .pop()
        .ok_or_else(|| ApiError::unavailable("no answer"))?
        .map_err(ApiError::from)?;
    let (status, created) = match submitted {
        lqsm_core::Submitted::Created(_) => (StatusCode::CREATED, true),
        lqsm_core::Submitted::Existing(_) => (StatusCode::OK, false),
    };
    Ok((
        status,
        Json(api::Submitted {
            id: submitted.id().0,
            created,
        }),
    )
        .into_response())
}

#[utoipa::path(post, path = "/v1/jobs/batch", request_body = api::SubmitBatch,
    responses((status = 200, body = api::BatchResult), (status = "4XX", body = api::ErrorBody)))]
async fn submit_batch(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(batch): ApiJson<api::SubmitBatch>,
) -> ApiResult<Json<api::BatchResult>> {
    let caller = state.auth.caller(&headers)?;
    if batch.jobs.len() > state.limits.max_batch {
        return Err(ApiError::invalid_field(
            "jobs",
            format!(
                "{} jobs in one batch (limit {})",
                batch.jobs.len(),
                state.limits.max_batch
            ),
        ));
    }
    let mut items: Vec<Option<api::BatchItem>> = Vec::with_capacity(batch.jobs.len());
    let mut valid = Vec::with_capacity(batch.jobs.len());
    for (i, job) in batch.jobs.iter().enumerate() {
        let field = format!("jobs[{i}]");
        let prepared = match prepare(&state, &caller, &field, job) {
            Ok(req) => check_parents_readable(&state, &caller, &field, &req.0, &Default::default())
                .await
                .map(|()| req),
            Err(e) => Err(e),
        };
        match prepared {
            Ok(req) => {
                valid.push(req);
                items.push(None);
            }
            Err(e) => items.push(Some(api::BatchItem {
                id: None,
                created: false,
                error: Some(e.detail),
            })),
        }
    }
    let mut results = state.scheduler.submit(valid).await?.into_iter();
    let mut accepted = 0;
    let results = items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            if let Some(refused) = item {
                return refused;
            }
            match results.next() {
                Some(Ok(s)) => {
                    accepted += 1;
                    api::BatchItem {
                        id: Some(s.id().0),
                        created: matches!(s, lqsm_core::Submitted::Created(_)),
                        error: None,
                    }
                }
                Some(Err(e)) => api::BatchItem {
                    id: None,
                    created: false,
                    error: Some(ApiError::from(e).in_item(&format!("jobs[{i}]")).detail),
                },
                None => api::BatchItem {
                    id: None,
                    created: false,
                    error: Some(ApiError::unavailable("no answer").detail),
                },
            }
        })
        .collect();
    Ok(Json(api::BatchResult { results, accepted }))
}

fn parse_job_id(text: &str) -> ApiResult<JobId> {
    Uuid::parse_str(text)
        .map(JobId)
        .map_err(|_| ApiError::invalid_field("id", format!("`{text}` is not a job id (a UUID)")))
}

fn parse_worker_id(text: &str) -> ApiResult<WorkerId> {
    Uuid::parse_str(text)
        .map(WorkerId)
        .map_err(|_| ApiError::invalid_field("id", format!("`{text}` is not a worker id (a UUID)")))
}

/// The job's view as acknowledged, or 404.
/// A job that is not (or no longer) there.
fn no_such_job(id: JobId) -> ApiError {
    ApiError::not_found(format!(
        "job {id} does not exist (it may have passed its retention)"
    ))
    .at("id")
}

async fn view_job(state: &AppState, id: JobId) -> ApiResult<api::JobView> {
    let record = state
        .scheduler
        .job(id)
        .await?
        .ok_or_else(|| no_such_job(id))?;
    Ok(convert::job_view(
        &record,
        record.queue.as_str(),
        crate::resource_manager::wall_clock(),
    ))
}

#[utoipa::path(get, path = "/v1/jobs/{id}", params(("id" = String, Path)), responses((status = 200, body = api::JobView), (status = "4XX", body = api::ErrorBody)))]
async fn get_job(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<api::JobView>> {
    let role = state.auth.role(&headers)?;
    let view = view_job(&state, parse_job_id(&id)?).await?;
    role.require_read(&view.queue)?;
    Ok(Json(view))
}

/// Filters of a job listing.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// Only this queue (and below it).
    queue: Option<String>,
    /// Only this state.
    state: Option<String>,
    /// Only jobs with this tag.
    tag: Option<String>,
    /// Only jobs submitted by this token name (`anonymous` on a server without tokens).
    submitter: Option<String>,
    /// `oldest` (default) or `newest` first, by submission time.
    order: Option<api::ListOrder>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Page size (default 100, at most 1,000).
    limit: Option<usize>,
}

#[utoipa::path(get, path = "/v1/jobs", params(ListQuery), responses((status = 200, body = api::JobList), (status = "4XX", body = api::ErrorBody)))]
async fn list_jobs(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<api::JobList>> {
    let role = state.auth.role(&headers)?;
    let Query(q) = query.map_err(|e| query_error(&e))?;
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > 1000 {
        return Err(ApiError::invalid_field(
            "limit",
            format!("{limit} is not between 1 and 1000"),
        ));
    }
    let wanted_state = q.state.as_deref().map(convert::parse_state).transpose()?;
    let after = q
        .cursor
        .as_deref()
        .map(parse_job_id)
        .transpose()
        .map_err(|e| e.at("cursor"))?;
    match (&role, &q.queue) {
        (Role::Admin, _) => {}
        (_, Some(queue)) => role.require_read(queue)?,
        (_, None) => role.require_everything().map_err(|_| {
            ApiError::new(
                StatusCode::FORBIDDEN,
                ErrorCode::Forbidden,
                "give `queue` to list jobs with this token",
            )
        })?,
    }
    let listing = JobListing {
        queue: q.queue.clone(),
        state: wanted_state,
        tag: q.tag.clone(),
        submitter: q.submitter.clone().filter(|s| !s.is_empty()),
        order: match q.order.unwrap_or_default() {
            api::ListOrder::Oldest => lqsm_store::Order::OldestFirst,
            api::ListOrder::Newest => lqsm_store::Order::NewestFirst,
        },
        after,
        limit,
    };
    let page = state.scheduler.jobs(listing).await?;
    let now = crate::resource_manager::wall_clock();
    // A listing covers the queue's subtree; a token matching the queue alone (an exact
    // pattern) does not read the queues below it.
    let sight = role.queue_sight()?;
    let jobs: Vec<api::JobView> = page
        .jobs
        .iter()
        .filter(|record| sight.whole(record.queue.as_str()))
        .map(|record| convert::job_view(record, record.queue.as_str(), now))
        .collect();
    // From the page as read (the last job examined), so that a page whose jobs were all
    // left out, or that ended short after examining its most records, still leads on.
    let next_cursor = page
        .resume_after
        .filter(|_| page.more)
        .map(|id| id.0.to_string());
    Ok(Json(api::JobList { jobs, next_cursor }))
}

#[utoipa::path(post, path = "/v1/jobs/{id}/cancel", params(("id" = String, Path)), responses((status = 200, body = api::JobView), (status = "4XX", body = api::ErrorBody)))]
async fn cancel_job(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<api::JobView>> {
    let role = state.auth.role(&headers)?;
    let id = parse_job_id(&id)?;
    let view = view_job(&state, id).await?;
    role.require_queue(&view.queue)?;
    state
        .scheduler
        .cancel(id, "cancelled by a client".into())
        .await??;
    Ok(Json(view_job(&state, id).await?))
}

#[utoipa::path(post, path = "/v1/jobs/{id}/retry", params(("id" = String, Path)),
    responses((status = 201, description = "a new job running the finished one again", body = api::Submitted), (status = "4XX", body = api::ErrorBody)))]
async fn retry_job(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let caller = state.auth.caller(&headers)?;
    let id = parse_job_id(&id)?;
    let record = state
        .scheduler
        .job(id)
        .await?
        .ok_or_else(|| no_such_job(id))?;
    caller.role.require_queue(record.queue.as_str())?;
    if !record.state.is_terminal() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::Conflict,
            format!(
                "job {id} is {}: only a finished job is run again (it is never reopened)",
                convert::job_state(record.state)
            ),
        )
        .at("id"));
    }
    if matches!(record.spec.kind, lqsm_core::JobKind::Stored { .. }) {
        return Err(ApiError::unavailable(format!(
            "the arguments of job {id} cannot be read from the store; try again"
        )));
    }
    // The same settings, to run now: without the original's idempotency key (it names the
    // original) and expiry, and submitted by whoever asks.
    let spec = &record.spec;
    let mut req = lqsm_core::SubmitRequest::new(
        JobId(Uuid::now_v7()),
        record.queue.as_str(),
        spec.kind.clone(),
    );
    req.request = Some(spec.request.clone());
    req.priority = Some(spec.priority);
    req.timeout = spec.timeout;
    req.soft_timeout = spec.soft_timeout();
    // A broadcast's job runs again on its worker.
    req.pinned = spec.pinned();
    req.retry = Some(spec.retry);
    req.selector = spec.selector().clone();
    // A re-run runs alone: it waits for nothing and is no workflow's node.
    req.tags = spec
        .tags()
        .iter()
        .filter(|t| !t.starts_with(lqsm_core::jobs::WORKFLOW_TAG_PREFIX))
        .cloned()
        .collect();
    req.keys = spec.keys().to_map();
    req.submitted_by = caller.submitter();
    req.retry_of = Some(id);
    let size = serde_json::to_vec(&convert::kind_view(&spec.kind)).map_or(0, |v| v.len());
    // A fresh id: always a new job (201).
    submit_one(
        &state,
        offload(req, size, state.limits.inline_payload_bytes),
    )
    .await
}

#[utoipa::path(post, path = "/v1/jobs/cancel", request_body = api::CancelJobs,
    responses((status = 200, body = api::CancelledJobs), (status = "4XX", body = api::ErrorBody)))]
async fn cancel_jobs(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<api::CancelJobs>,
) -> ApiResult<Json<api::CancelledJobs>> {
    let role = state.auth.role(&headers)?;
    // A submitter cancels within the queues it may use; only an admin across them all.
    match &body.queue {
        Some(queue) => {
            role.require_queue(queue).map_err(|e| e.at("queue"))?;
            // The selection takes the queue's whole subtree: a token naming the queue
            // alone (an exact pattern) must not reach the queues below it.
            if !matches!(role, Role::Admin) {
                let cluster = state.scheduler.view().await?;
                let below = format!("{queue}.");
                for (path, _) in cluster.queues.range(below.clone()..) {
                    if !path.starts_with(&below) {
                        break;
                    }
                    role.require_queue(path).map_err(|e| e.at("queue"))?;
                }
            }
        }
        None => role.require_admin()?,
    }
    let state_filter = body.state.map(convert::core_job_state);
    let selection = lqsm_core::JobSelection {
        queue: body.queue,
        tag: body.tag,
        state: state_filter,
    };
    let reason = body
        .reason
        .unwrap_or_else(|| "cancelled by a client".to_owned());
    let cancelled = state.scheduler.cancel_selected(selection, reason).await??;
    Ok(Json(api::CancelledJobs {
        cancelled: cancelled as u64,
    }))
}

/// From where a follower of a job's output reads.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct LogsQuery {
    /// Answer a `JobLogs` (JSON) with the output from this byte on (the previous
    /// answer's `next_offset`; 0 the first time). Without it, the whole output kept, as
    /// text.
    offset: Option<u64>,
}

#[utoipa::path(get, path = "/v1/jobs/{id}/logs", params(("id" = String, Path), LogsQuery),
    responses((status = 200, description = "the job's output: while an attempt runs, what its worker uploaded so far (protocol 8 workers), else the captured output of its last reported attempt; as text, or with `offset` as a `JobLogs`", content((String = "text/plain"), (api::JobLogs = "application/json"))), (status = "4XX", body = api::ErrorBody)))]
async fn job_logs(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    Path(id): Path<String>,
    query: Result<Query<LogsQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let role = state.auth.role(&headers)?;
    let Query(q) = query.map_err(|e| query_error(&e))?;
    let id = parse_job_id(&id)?;
    let record = state
        .scheduler
        .job(id)
        .await?
        .ok_or_else(|| no_such_job(id))?;
    role.require_read(record.queue.as_str())?;
    let secrets = convert::secret_values(&record.spec.kind);
    // Read a little before the offset asked, so that masking sees whole a secret value
    // the offset cuts.
    let context = secrets.first().map_or(0, |v| v.len() as u64);
    let read_from = q.offset.unwrap_or(0).saturating_sub(context);
    // A running attempt's output lives in the leader's memory; the store has the last
    // report's. The record read decides which: once the report is durable the record
    // says so, and the leader drops the running output only after that.
    let running = record
        .attempts
        .last()
        .filter(|a| record.state.is_active() && a.outcome.is_none());
    let live = match running {
        None => None,
        Some(attempt) => {
            match state
                .scheduler
                .live_logs(id, attempt.token, read_from)
                .await
            {
                Ok(read) => read,
                Err(SchedulerError::NotLeader) => {
                    if let Some(answer) = ask_the_leader(&state, &headers, &uri).await {
                        return Ok(answer);
                    }
                    None
                }
                Err(e) => return Err(e.into()),
            }
        }
    };
    let Some(offset) = q.offset else {
        let logs = match live {
            // Masked as a follower's read is, so that a secret value still coming is
            // not shown in part.
            Some(live) => convert::log_window(&live.text, live.offset, 0, &secrets, true)
                .text
                .into_bytes(),
            None => {
                let logs = state.scheduler.logs(id).await?.unwrap_or_default();
                convert::mask_secrets(&record.spec.kind, logs)
            }
        };
        return Ok((
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; charset=utf-8",
            )],
            logs,
        )
            .into_response());
    };
    let answer = match live {
        Some(live) => {
            let window = convert::log_window(&live.text, live.offset, offset, &secrets, true);
            api::JobLogs {
                offset: window.offset,
                next_offset: window.next_offset,
                text: window.text,
                missed: window.missed,
                running: true,
                attempt: Some(live.attempt),
            }
        }
        None => {
            let logs = state.scheduler.logs(id).await?.unwrap_or_default();
            let logs = String::from_utf8_lossy(&logs);
            // The report's logs count from their first byte, as the running output did:
            // the two agree unless the output was cut to its tail.
            let window = convert::log_window(&logs, 0, offset, &secrets, false);
            let reported = record.attempts.iter().rev().find(|a| {
                matches!(
                    a.outcome,
                    Some(
                        lqsm_core::AttemptOutcome::Succeeded { .. }
                            | lqsm_core::AttemptOutcome::Failed { .. }
                            | lqsm_core::AttemptOutcome::TimedOut
                            | lqsm_core::AttemptOutcome::RetryRequested { .. }
                    )
                )
            });
            api::JobLogs {
                offset: window.offset,
                next_offset: window.next_offset,
                text: window.text,
                missed: false,
                running: false,
                attempt: reported.map(|a| a.number),
            }
        }
    };
    Ok(Json(answer).into_response())
}

/// Passes a read of a running job's output to the leader, which holds it; `None` when
/// no leader is known or the call was already passed (then the store's logs answer).
async fn ask_the_leader(
    state: &AppState,
    headers: &HeaderMap,
    uri: &axum::http::Uri,
) -> Option<Response> {
    let crate::leadership::Role::Follower {
        leader: Some(leader),
    } = state.role.borrow().clone()
    else {
        return None;
    };
    if headers.contains_key(crate::forwarding::FORWARDED_BY) {
        return None;
    }
    let mut request = Request::new(axum::body::Body::empty());
    *request.uri_mut() = uri.clone();
    *request.headers_mut() = headers.clone();
    Some(
        state
            .forwarder
            .pass(&leader, request, state.limits.max_request_bytes)
            .await,
    )
}

/// How long to wait.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct WaitQuery {
    /// Milliseconds (default 30,000, at most 300,000).
    timeout_ms: Option<u64>,
}

#[utoipa::path(get, path = "/v1/jobs/{id}/wait", params(("id" = String, Path), WaitQuery), responses((status = 200, body = api::JobView), (status = "4XX", body = api::ErrorBody)))]
async fn wait_job(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    query: Result<Query<WaitQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<api::JobView>> {
    let role = state.auth.role(&headers)?;
    let Query(q) = query.map_err(|e| query_error(&e))?;
    let id = parse_job_id(&id)?;
    let view = view_job(&state, id).await?;
    role.require_read(&view.queue)?;
    let timeout = q.timeout_ms.unwrap_or(30_000).min(300_000);
    state
        .scheduler
        .wait_job(id, Duration::from_millis(timeout))
        .await?;
    Ok(Json(view_job(&state, id).await?))
}

/// The children of `queue` that `sight` shows.
fn shown_children<'a>(
    queue: &'a QueueSnapshot,
    sight: &'a QueueSight,
) -> impl Iterator<Item = &'a String> + 'a {
    queue.children.iter().filter(move |p| sight.shows(p))
}

/// A queue tree as the wire shows it to a caller with `sight`, `depth` levels of
/// children deep (None: all).
fn queue_view(
    cluster: &ClusterView,
    queue: &QueueSnapshot,
    sight: &QueueSight,
    depth: Option<usize>,
    page: Option<(&Option<String>, usize)>,
) -> api::QueueView {
    let stats = &queue.stats;
    let total = &cluster.total;
    let g = queue.abs_guarantee;
    let guaranteed = lqsm_core::Resources::new(
        lqsm_core::Millicores((total.cpu.0 as f64 * g) as u64),
        lqsm_core::MiB((total.memory.0 as f64 * g) as u64),
        (f64::from(total.gpu) * g) as u32,
    );
    let children = match depth {
        Some(0) => Vec::new(),
        _ => {
            let deeper = depth.map(|d| d - 1);
            let listed = shown_children(queue, sight).filter(|p| match page {
                Some((Some(after), _)) => p.as_str() > after.as_str(),
                _ => true,
            });
            let limit = page.map_or(usize::MAX, |(_, limit)| limit);
            listed
                .filter_map(|p| cluster.queue(p))
                .take(limit)
                .map(|c| queue_view(cluster, c, sight, deeper, None))
                .collect()
        }
    };
    let view = api::QueueView {
        path: queue.path.clone(),
        state: convert::queue_state(queue.state),
        capacity: queue.config.capacity,
        max_capacity: queue.config.max_capacity,
        abs_guarantee: g,
        abs_max: queue.abs_max,
        guaranteed: convert::figures(&guaranteed),
        used: convert::figures(&queue.used),
        pending: stats.pending,
        running: queue.running,
        counts: queue_counts(stats),
        rate_limited_until_ms: queue
            .rate_limited_until
            .filter(|until| *until > crate::resource_manager::wall_clock())
            .map(|t| t.0),
        users: queue
            .users
            .iter()
            .map(|u| api::UserShare {
                name: u.name.clone(),
                used: convert::figures(&u.used),
                running: u.running,
                share: u.share,
            })
            .collect(),
        on_demand: queue.on_demand,
        idle_since_ms: queue.idle_since.map(|t| t.0),
        removed_at_ms: None,
        note: queue.note.clone(),
        settings: convert::queue_settings(&queue.config),
        placement_only: false,
        children,
    };
    if sight.whole(&queue.path) {
        view
    } else {
        // An ancestor of the queues the caller may read: its figures sum up the queues
        // it may not read.
        api::QueueView {
            used: api::ResourceFigures::default(),
            pending: 0,
            running: 0,
            counts: api::QueueCounts::default(),
            rate_limited_until_ms: None,
            users: Vec::new(),
            placement_only: true,
            ..view
        }
    }
}

/// A queue's lifetime counters as the wire shows them.
fn queue_counts(stats: &lqsm_core::QueueStats) -> api::QueueCounts {
    api::QueueCounts {
        submitted: stats.submitted,
        succeeded: stats.succeeded,
        failed: stats.failed,
        cancelled: stats.cancelled,
        expired: stats.expired,
        mean_wait_ms: stats.wait.mean().map_or(0, |d| d.as_millis() as u64),
        mean_run_ms: stats.run.mean().map_or(0, |d| d.as_millis() as u64),
    }
}

/// A queue made on demand and removed once idle: its last settings and lifetime
/// counters, nothing pending or running.
fn retired_view(path: &str, retired: &lqsm_core::RetiredQueue) -> api::QueueView {
    let stats = &retired.stats;
    api::QueueView {
        path: path.to_owned(),
        state: api::QueueState::Running,
        capacity: retired.config.capacity,
        max_capacity: retired.config.max_capacity,
        abs_guarantee: 0.0,
        abs_max: 0.0,
        guaranteed: api::ResourceFigures::default(),
        used: api::ResourceFigures::default(),
        pending: 0,
        running: 0,
        counts: queue_counts(stats),
        rate_limited_until_ms: None,
        users: Vec::new(),
        on_demand: true,
        idle_since_ms: None,
        removed_at_ms: Some(retired.removed_at.0),
        note: retired.note.clone(),
        settings: convert::queue_settings(&retired.config),
        placement_only: false,
        children: Vec::new(),
    }
}

/// The core's "no such queue", naming a few queues that do exist and `sight` shows.
fn queue_not_found(cluster: &ClusterView, sight: &QueueSight, path: &str) -> ApiError {
    let known: Vec<&str> = cluster
        .queues
        .keys()
        .filter(|p| sight.whole(p))
        .take(5)
        .map(String::as_str)
        .collect();
    ApiError::from(lqsm_core::QueueError::NotFound {
        path: path.to_owned(),
        known: known.join(", "),
    })
}

/// Trees up to this many queues are answered whole by default.
const WHOLE_TREE_QUEUES: usize = 1000;

/// How much of a queue tree to answer.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct TreeQuery {
    /// Levels of children to include (0: the queue alone). Default: the whole tree when
    /// it holds at most 1,000 queues, else 1.
    depth: Option<usize>,
    /// Only the direct children whose path sorts after this one (the path of the last
    /// child of the previous page, also given in the `lqsm-next-cursor` header).
    cursor: Option<String>,
    /// At most this many direct children (1..=1000; default: all when the tree is
    /// answered whole, else 1,000).
    limit: Option<usize>,
}

/// The tree at `path` as `query` asks, with the cursor of the next page of its direct
/// children when there are more.
fn queue_tree(
    cluster: &ClusterView,
    path: &str,
    sight: &QueueSight,
    query: &TreeQuery,
) -> ApiResult<(api::QueueView, Option<String>)> {
    let Some(queue) = cluster.queue(path) else {
        return match cluster.retired.get(path) {
            Some(retired) if sight.whole(path) => Ok((retired_view(path, retired), None)),
            _ => Err(queue_not_found(cluster, sight, path)),
        };
    };
    if let Some(limit) = query.limit
        && !(1..=1000).contains(&limit)
    {
        return Err(ApiError::invalid_field(
            "limit",
            format!("{limit} is not between 1 and 1000"),
        ));
    }
    // Counting the subtree stops at the threshold: cheap however large the tree.
    let small = cluster.subtree(path).take(WHOLE_TREE_QUEUES + 1).count() <= WHOLE_TREE_QUEUES;
    let depth = query.depth.or(if small { None } else { Some(1) });
    let limit = query.limit.unwrap_or(if small && query.cursor.is_none() {
        usize::MAX
    } else {
        1000
    });
    let view = queue_view(cluster, queue, sight, depth, Some((&query.cursor, limit)));
    let remaining = shown_children(queue, sight)
        .filter(|p| {
            query
                .cursor
                .as_ref()
                .is_none_or(|after| p.as_str() > after.as_str())
        })
        .count();
    let next = if depth != Some(0) && remaining > view.children.len() {
        view.children.last().map(|c| c.path.clone())
    } else {
        None
    };
    Ok((view, next))
}

/// Answers a queue tree, with the next page's cursor in a header.
fn tree_response(view: api::QueueView, next: Option<String>) -> Response {
    let mut response = Json(view).into_response();
    if let Some(next) = next
        && let Ok(value) = axum::http::HeaderValue::from_str(&next)
    {
        response.headers_mut().insert("lqsm-next-cursor", value);
    }
    response
}

#[utoipa::path(get, path = "/v1/queues", params(TreeQuery), responses((status = 200, body = api::QueueView, headers(("lqsm-next-cursor" = String, description = "the cursor of the next page of the root's children, when there are more"))), (status = "4XX", body = api::ErrorBody)))]
async fn list_queues(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<TreeQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    // A token limited to some queues sees those, placed under their ancestors.
    let sight = state.auth.role(&headers)?.queue_sight()?;
    let Query(q) = query.map_err(|e| query_error(&e))?;
    let cluster = state.scheduler.view().await?;
    let (view, next) = queue_tree(&cluster, "root", &sight, &q)?;
    Ok(tree_response(view, next))
}

#[utoipa::path(post, path = "/v1/queues", request_body = api::CreateQueue, responses((status = 201, body = api::QueueView), (status = "4XX", body = api::ErrorBody)))]
async fn create_queue(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<serde_json::Value>,
) -> ApiResult<Response> {
    let role = state.auth.role(&headers)?;
    role.require_any_queue_admin()?;
    let (path, config) = parse_create_queue(body)?;
    check_queue_admin_settings(&role, &path, &config, true)?;
    state
        .scheduler
        .queue(QueueOp::Create(path.clone(), config))
        .await??;
    let view = get_queue_view(&state, &role, path).await?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

/// 403 unless `role` may give queue `path` the settings `config`: an admin any; a
/// queue-admin only below its subtrees' roots, and never with preemption turned off
/// where it was on (`was_preemptable`; true for a new queue).
fn check_queue_admin_settings(
    role: &Role,
    path: &str,
    config: &lqsm_core::QueueConfig,
    was_preemptable: bool,
) -> ApiResult<()> {
    role.require_queue_settings(path)
        .map_err(|e| e.at("path"))?;
    if role.is_queue_admin() && was_preemptable && !config.preemptable {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            "a queue-admin may not turn preemption off: the capacity its queues borrow must stay reclaimable by the other queues; ask an admin",
        )
        .at("preemptable"));
    }
    Ok(())
}

/// `CreateQueue` is `path` plus the settings; parsed in two steps so that errors in the
/// settings keep their field names (a flattened struct would lose them).
fn parse_create_queue(body: serde_json::Value) -> ApiResult<(String, lqsm_core::QueueConfig)> {
    let mut body = match body {
        serde_json::Value::Object(map) => map,
        _ => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidField,
                "the body must be a JSON object with `path` and the queue's settings",
            ));
        }
    };
    let path = match body.remove("path") {
        Some(serde_json::Value::String(p)) => p,
        Some(_) => {
            return Err(ApiError::invalid_field(
                "path",
                "must be a string like `root.etl`",
            ));
        }
        None => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::MissingField,
                "path: is required",
            )
            .at("path"));
        }
    };
    let text = serde_json::to_vec(&body).map_err(|e| ApiError::unavailable(e.to_string()))?;
    let settings: api::QueueSettings = parse_json(&text)?;
    let config = convert::queue_config(&settings, &lqsm_core::QueueConfig::default())?;
    Ok((path, config))
}

#[utoipa::path(post, path = "/v1/queues/batch", request_body = api::CreateQueues,
    responses((status = 200, body = api::QueueBatchResult), (status = "4XX", body = api::ErrorBody)))]
async fn create_queues(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<serde_json::Value>,
) -> ApiResult<Json<api::QueueBatchResult>> {
    let role = state.auth.role(&headers)?;
    role.require_any_queue_admin()?;
    let items = match body {
        serde_json::Value::Object(mut map) => match map.remove("queues") {
            Some(serde_json::Value::Array(items)) => items,
            Some(_) => return Err(ApiError::invalid_field("queues", "must be an array")),
            None => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::MissingField,
                    "queues: is required",
                )
                .at("queues"));
            }
        },
        _ => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidField,
                "the body must be a JSON object with `queues`, an array of queues",
            ));
        }
    };
    if items.len() > state.limits.max_batch {
        return Err(ApiError::invalid_field(
            "queues",
            format!(
                "{} queues in one batch (limit {}); send them in several requests, parents first",
                items.len(),
                state.limits.max_batch
            ),
        ));
    }
    let mut results: Vec<api::QueueBatchItem> = Vec::with_capacity(items.len());
    let mut valid = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let given_path = item
            .get("path")
            .and_then(|p| p.as_str())
            .unwrap_or_default()
            .to_owned();
        let allowed = parse_create_queue(item).and_then(|(path, config)| {
            check_queue_admin_settings(&role, &path, &config, true).map(|()| (path, config))
        });
        match allowed {
            Ok(queue) => valid.push(queue),
            Err(e) => {
                results.push(api::QueueBatchItem {
                    path: given_path,
                    created: false,
                    error: Some(e.in_item(&format!("queues[{i}]")).detail),
                });
                continue;
            }
        }
        // A placeholder, filled in from the runtime's answer below.
        results.push(api::QueueBatchItem {
            path: given_path,
            created: false,
            error: None,
        });
    }
    let mut answers = state.scheduler.create_queues(valid).await?.into_iter();
    let mut created = 0;
    for (i, item) in results.iter_mut().enumerate() {
        if item.error.is_some() {
            continue;
        }
        match answers.next() {
            Some(Ok(was_created)) => {
                item.created = was_created;
                created += usize::from(was_created);
            }
            Some(Err(e)) => {
                item.error = Some(ApiError::from(e).in_item(&format!("queues[{i}]")).detail);
            }
            None => item.error = Some(ApiError::unavailable("no answer").detail),
        }
    }
    Ok(Json(api::QueueBatchResult { results, created }))
}

/// The queue's tree as of the last commit (which holds any change answered): whole
/// when small, else one level and the first page of its children.
async fn get_queue_view(state: &AppState, role: &Role, path: String) -> ApiResult<api::QueueView> {
    let cluster = state.scheduler.view().await?;
    let whole_when_small = TreeQuery {
        depth: None,
        cursor: None,
        limit: None,
    };
    let sight = role.queue_sight()?;
    Ok(queue_tree(&cluster, &path, &sight, &whole_when_small)?.0)
}

#[utoipa::path(get, path = "/v1/queues/{path}", params(("path" = String, Path), TreeQuery), responses((status = 200, body = api::QueueView, headers(("lqsm-next-cursor" = String, description = "the cursor of the next page of the queue's children, when there are more"))), (status = "4XX", body = api::ErrorBody)))]
async fn get_queue(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(path): Path<String>,
    query: Result<Query<TreeQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let role = state.auth.role(&headers)?;
    let sight = role.queue_sight()?;
    // Neither readable nor above a readable queue: refused before looking it up, so
    // that the answer tells nothing of queues the token may not read.
    if !sight.shows(&path) {
        role.require_read(&path)?;
    }
    let Query(q) = query.map_err(|e| query_error(&e))?;
    let cluster = state.scheduler.view().await?;
    let (view, next) = queue_tree(&cluster, &path, &sight, &q)?;
    Ok(tree_response(view, next))
}

#[utoipa::path(patch, path = "/v1/queues/{path}", params(("path" = String, Path)), request_body = api::QueueSettings, responses((status = 200, body = api::QueueView), (status = "4XX", body = api::ErrorBody)))]
async fn update_queue(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(path): Path<String>,
    ApiJson(settings): ApiJson<api::QueueSettings>,
) -> ApiResult<Json<api::QueueView>> {
    let role = state.auth.role(&headers)?;
    role.require_queue_settings(&path)?;
    let sight = role.queue_sight()?;
    let p = path.clone();
    let state_view = state.scheduler.view().await?;
    let current = state_view
        .queue(&p)
        .map(|q| q.config.clone())
        .ok_or_else(|| queue_not_found(&state_view, &sight, &p))?;
    let config = convert::queue_config(&settings, &current)?;
    check_queue_admin_settings(&role, &path, &config, current.preemptable)?;
    let update = QueueUpdate {
        capacity: Some(config.capacity),
        max_capacity: Some(config.max_capacity),
        weight: Some(config.weight),
        max_running: Some(config.max_running),
        max_pending: Some(config.max_pending),
        defaults: Some(config.defaults.clone()),
        ordering: Some(config.ordering.clone()),
        placement: Some(config.placement.clone()),
        admission: Some(config.admission.clone()),
        preemptable: Some(config.preemptable),
        priority_preemption: Some(config.priority_preemption),
        rate_limit: Some(config.rate_limit),
        key_limits: Some(config.key_limits.clone()),
        fairness_key: Some(config.fairness_key.clone()),
        user_limit_factor: Some(config.user_limit_factor),
        template: Some(config.template.clone()),
        auto_resources: Some(config.auto_resources.clone()),
    };
    let update = if path == "root" {
        QueueUpdate {
            capacity: None,
            max_capacity: None,
            ..update
        }
    } else {
        update
    };
    state
        .scheduler
        .queue(QueueOp::Update(path.clone(), update))
        .await??;
    Ok(Json(get_queue_view(&state, &role, path).await?))
}

async fn queue_action(
    state: &AppState,
    headers: &HeaderMap,
    op: QueueOp,
    path: String,
) -> ApiResult<Json<api::QueueView>> {
    let role = state.auth.role(headers)?;
    role.require_queue_admin(&path)?;
    state.scheduler.queue(op).await??;
    Ok(Json(get_queue_view(state, &role, path).await?))
}

#[utoipa::path(get, path = "/v1/queues/{path}/usage", params(("path" = String, Path)), responses((status = 200, body = api::QueueUsage), (status = "4XX", body = api::ErrorBody)))]
async fn queue_usage(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(path): Path<String>,
) -> ApiResult<Json<api::QueueUsage>> {
    let role = state.auth.role(&headers)?;
    role.require_read(&path)?;
    let sight = role.queue_sight()?;
    let cluster = state.scheduler.view().await?;
    let queue = cluster
        .queue(&path)
        .ok_or_else(|| queue_not_found(&cluster, &sight, &path))?;
    let cores = |m: lqsm_core::Millicores| m.0 as f64 / 1000.0;
    let names = queue
        .usage
        .iter()
        .map(|u| {
            let s = &u.summary;
            api::NameUsage {
                name: u.name.clone(),
                attempts: s.attempts,
                window: s.window as u64,
                requested: convert::figures(&s.requested),
                memory_p50_mib: s.memory_p50.0,
                memory_p95_mib: s.memory_p95.0,
                memory_max_mib: s.memory_max.0,
                cpu_p50: cores(s.cpu_p50),
                cpu_p95: cores(s.cpu_p95),
                auto_request: u.auto_request.as_ref().map(convert::figures),
            }
        })
        .collect();
    Ok(Json(api::QueueUsage {
        path,
        auto_resources: queue.config.auto_resources.is_some(),
        names,
    }))
}

#[utoipa::path(post, path = "/v1/queues/{path}/stop", params(("path" = String, Path)), responses((status = 200, body = api::QueueView)))]
async fn stop_queue(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(path): Path<String>,
) -> ApiResult<Json<api::QueueView>> {
    queue_action(&state, &headers, QueueOp::Stop(path.clone()), path).await
}

#[utoipa::path(post, path = "/v1/queues/{path}/start", params(("path" = String, Path)), responses((status = 200, body = api::QueueView)))]
async fn start_queue(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(path): Path<String>,
) -> ApiResult<Json<api::QueueView>> {
    queue_action(&state, &headers, QueueOp::Start(path.clone()), path).await
}

#[utoipa::path(post, path = "/v1/queues/{path}/drain", params(("path" = String, Path)), responses((status = 200, body = api::QueueView)))]
async fn drain_queue(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(path): Path<String>,
) -> ApiResult<Json<api::QueueView>> {
    queue_action(&state, &headers, QueueOp::Drain(path.clone()), path).await
}

/// Deleting a queue that holds jobs needs `force=true`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct DeleteQuery {
    /// Cancel its unfinished jobs.
    #[serde(default)]
    force: bool,
}

#[utoipa::path(delete, path = "/v1/queues/{path}", params(("path" = String, Path), DeleteQuery), responses((status = 204), (status = "4XX", body = api::ErrorBody)))]
async fn delete_queue(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(path): Path<String>,
    query: Result<Query<DeleteQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<StatusCode> {
    state.auth.role(&headers)?.require_queue_settings(&path)?;
    let Query(q) = query.map_err(|e| query_error(&e))?;
    state
        .scheduler
        .queue(QueueOp::Delete(path, q.force))
        .await??;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/workers", request_body = api::RegisterWorker, responses((status = 200, body = api::WorkerView), (status = "4XX", body = api::ErrorBody)))]
async fn register_worker(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(reg): ApiJson<api::RegisterWorker>,
) -> ApiResult<Json<api::WorkerView>> {
    state.auth.role(&headers)?.require_worker()?;
    check_protocol(reg.protocol)?;
    let capacity = convert::resources("capacity", &reg.capacity, &lqsm_core::Resources::default())?;
    let queues = reg
        .queues
        .iter()
        .enumerate()
        .map(|(i, path)| {
            lqsm_core::QueuePath::parse(path)
                .map_err(|e| ApiError::invalid_field(&format!("queues[{i}]"), e.to_string()))
        })
        .collect::<Result<_, _>>()?;
    let id = WorkerId(reg.id);
    let registration = lqsm_core::WorkerRegistration {
        id,
        name: reg.name,
        capacity,
        labels: reg.labels,
        serves_commands: reg.serves_commands,
        handlers: reg.handlers.into_iter().collect(),
        queues,
    };
    state.scheduler.register(registration).await??;
    worker_answer(&state, id).await
}

/// A worker as its own calls (register, drain, undrain) answer it, as of the last
/// commit (which holds any change answered): with the heartbeat timeout, by which the
/// worker fences itself (stops its attempts before the server may declare them lost).
async fn worker_answer(state: &AppState, id: WorkerId) -> ApiResult<Json<api::WorkerView>> {
    let cluster = state.scheduler.view().await?;
    cluster
        .workers
        .iter()
        .find(|w| w.id == id)
        .map(|w| {
            Json(api::WorkerView {
                heartbeat_timeout_ms: Some(cluster.heartbeat_timeout_ms),
                ..worker_view(w)
            })
        })
        .ok_or_else(|| ApiError::not_found("worker vanished"))
}

/// Refuses a worker whose protocol version this server cannot serve, saying which side
/// to upgrade.
fn check_protocol(version: u32) -> ApiResult<()> {
    let accepted = api::OLDEST_WORKER_PROTOCOL..=api::WORKER_PROTOCOL;
    if accepted.contains(&version) {
        return Ok(());
    }
    let (oldest, newest) = (api::OLDEST_WORKER_PROTOCOL, api::WORKER_PROTOCOL);
    let advice = if version > newest {
        "upgrade the LQSM server, or run a worker of the server's release"
    } else {
        "upgrade the worker to the server's release"
    };
    Err(ApiError::new(
        StatusCode::BAD_REQUEST,
        ErrorCode::IncompatibleProtocol,
        format!(
            "the worker speaks protocol {version}, this server accepts protocols {oldest} to {newest}: {advice}"
        ),
    )
    .at("protocol"))
}

fn worker_view(w: &crate::view::WorkerSnapshot) -> api::WorkerView {
    api::WorkerView {
        id: w.id.0,
        name: w.name.clone(),
        state: convert::worker_state(w.state),
        capacity: convert::figures(&w.capacity),
        used: convert::figures(&w.used),
        attempts: w.attempts,
        labels: w.labels.clone(),
        queues: w.queues.clone(),
        heartbeat_timeout_ms: None,
        registration: Some(w.registration),
        quiet: w.quiet,
    }
}

#[utoipa::path(post, path = "/v1/workers/{id}/poll", params(("id" = String, Path)), request_body = api::PollRequest, responses((status = 200, body = api::PollResponse), (status = "4XX", body = api::ErrorBody)))]
async fn poll_worker(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    ApiJson(poll): ApiJson<api::PollRequest>,
) -> ApiResult<Json<api::PollResponse>> {
    state.auth.role(&headers)?.require_worker()?;
    let id = parse_worker_id(&id)?;
    // A result larger than the inline limit is kept in the store, not in memory: the
    // core is told there is one, the store gets its text with the report's batch.
    let mut results = Vec::new();
    // A report sent twice in one poll counts once (the second would be refused as stale
    // and take the first's uploads with it).
    let mut seen = std::collections::HashSet::new();
    let finished = poll
        .finished
        .iter()
        .filter(|f| seen.insert((f.job, f.token)))
        .map(|f| {
            let mut result = convert::reported(&f.result);
            if let lqsm_core::ReportedResult::Succeeded {
                result: Some(value),
                exit_code,
            } = &result
                && value.as_str().len() > state.limits.inline_payload_bytes
            {
                results.push((
                    JobId(f.job),
                    lqsm_core::FencingToken(f.token),
                    value.as_str().as_bytes().to_vec(),
                ));
                result = lqsm_core::ReportedResult::SucceededStored {
                    exit_code: *exit_code,
                };
            }
            lqsm_core::AttemptReport {
                job: JobId(f.job),
                token: lqsm_core::FencingToken(f.token),
                result,
                started_at: f.started_at_ms.map(lqsm_core::Timestamp),
                usage: f.usage.map(|u| lqsm_core::Usage {
                    peak_memory: lqsm_core::MiB(u.peak_memory_mib),
                    cpu_ms: u.cpu_ms,
                }),
                memory_exceeded: matches!(
                    f.result,
                    api::AttemptResult::Failed {
                        memory_exceeded: true,
                        ..
                    }
                ),
            }
        })
        .collect();
    let core_poll = WorkerPoll {
        running: poll
            .running
            .iter()
            .map(|r| (JobId(r.job), lqsm_core::FencingToken(r.token)))
            .collect(),
        finished,
        acked: poll.ack,
        ending: poll
            .ending
            .iter()
            .map(|r| (JobId(r.job), lqsm_core::FencingToken(r.token)))
            .collect(),
        progress: Vec::new(),
        registration: poll.registration,
    };
    let mut core_poll = core_poll;
    for (i, attempt) in poll.running.iter().enumerate() {
        let Some(progress) = &attempt.progress else {
            continue;
        };
        let text = lqsm_core::jobs::Json::from_value(progress);
        if text.as_str().len() > MAX_PROGRESS_BYTES {
            // Refusing the poll would refuse its reports and heartbeat with it, again at
            // every retry: the oversized state alone is left out.
            tracing::warn!(
                job = %attempt.job,
                bytes = text.as_str().len(),
                entry = i,
                "a running job's progress is over {MAX_PROGRESS_BYTES} bytes and is not kept"
            );
            continue;
        }
        core_poll.progress.push((
            JobId(attempt.job),
            lqsm_core::FencingToken(attempt.token),
            text,
        ));
    }
    let cap = state.limits.max_log_bytes;
    let logs = poll
        .finished
        .iter()
        .filter_map(|f| {
            let text = f.logs.as_deref()?;
            // Keep the tail: the end of the output says how it ended.
            let mut start = text.len().saturating_sub(cap);
            while !text.is_char_boundary(start) {
                start += 1;
            }
            Some((
                JobId(f.job),
                lqsm_core::FencingToken(f.token),
                text.as_bytes()[start..].to_vec(),
            ))
        })
        .collect();
    let uploads = crate::resource_manager::Uploads { logs, results };
    let dispatch = state
        .scheduler
        .poll(id, core_poll, uploads, Duration::from_millis(poll.wait_ms))
        .await??;
    Ok(Json(convert::poll_response(dispatch)))
}

#[utoipa::path(post, path = "/v1/workers/{id}/logs", params(("id" = String, Path)), request_body = api::LogChunks, responses((status = 200, body = api::LogChunksAnswer), (status = "4XX", body = api::ErrorBody)))]
async fn upload_logs(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    ApiJson(upload): ApiJson<api::LogChunks>,
) -> ApiResult<Json<api::LogChunksAnswer>> {
    state.auth.role(&headers)?.require_worker()?;
    let id = parse_worker_id(&id)?;
    let cap = state.limits.max_log_bytes;
    let chunks = upload
        .chunks
        .into_iter()
        .map(|chunk| {
            // Only the end of a chunk larger than the server keeps can matter.
            let mut text = chunk.text;
            let mut offset = chunk.offset;
            let mut cut = text.len().saturating_sub(cap);
            while !text.is_char_boundary(cut) {
                cut += 1;
            }
            if cut > 0 {
                text.drain(..cut);
                offset = offset.saturating_add(cut as u64);
            }
            crate::resource_manager::LogChunk {
                job: JobId(chunk.job),
                token: lqsm_core::FencingToken(chunk.token),
                offset,
                text,
            }
        })
        .collect();
    let refused = state.scheduler.log_chunks(id, chunks).await??;
    Ok(Json(api::LogChunksAnswer {
        refused: refused
            .into_iter()
            .map(|r| api::RefusedReport {
                job: r.job.0,
                token: r.token.0,
                reason: convert::refusal_reason(r.reason),
            })
            .collect(),
    }))
}

#[utoipa::path(post, path = "/v1/workers/{id}/drain", params(("id" = String, Path)), responses((status = 200, body = api::WorkerView), (status = "4XX", body = api::ErrorBody)))]
async fn drain_worker(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<api::WorkerView>> {
    state.auth.role(&headers)?.require_worker()?;
    let id = parse_worker_id(&id)?;
    state.scheduler.drain_worker(id).await??;
    worker_answer(&state, id).await
}

#[utoipa::path(post, path = "/v1/workers/{id}/undrain", params(("id" = String, Path)), responses((status = 200, body = api::WorkerView), (status = "4XX", body = api::ErrorBody)))]
async fn undrain_worker(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<api::WorkerView>> {
    state.auth.role(&headers)?.require_worker()?;
    let id = parse_worker_id(&id)?;
    state.scheduler.undrain_worker(id).await??;
    worker_answer(&state, id).await
}

#[utoipa::path(get, path = "/v1/workers", responses((status = 200, body = Vec<api::WorkerView>)))]
async fn list_workers(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> ApiResult<Json<Vec<api::WorkerView>>> {
    let role = state.auth.role(&headers)?;
    if role != Role::Worker {
        role.require_everything()?;
    }
    let cluster = state.scheduler.view().await?;
    Ok(Json(cluster.workers.iter().map(worker_view).collect()))
}

#[utoipa::path(get, path = "/v1/cluster", responses((status = 200, body = api::ClusterSummary)))]
async fn cluster(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> ApiResult<Json<api::ClusterSummary>> {
    state.auth.role(&headers)?.require_everything()?;
    let cluster = state.scheduler.view().await?;
    let mut jobs = std::collections::BTreeMap::new();
    for (name, count) in state.scheduler.job_counts().await? {
        if let Ok(job_state) = convert::parse_state(&name) {
            *jobs.entry(convert::job_state(job_state)).or_insert(0) += count;
        }
    }
    let mut workers = std::collections::BTreeMap::new();
    for w in cluster.workers.iter() {
        *workers.entry(convert::worker_state(w.state)).or_insert(0) += 1;
    }
    let used = cluster
        .queue("root")
        .map(|r| r.used.clone())
        .unwrap_or_default();
    let status = state.scheduler.store_status().await?;
    let store = status.lease.map(|lease| api::StoreSummary {
        backend: status.backend.to_owned(),
        servers: status
            .servers
            .into_iter()
            .map(|server| api::ServerSummary {
                leader: server.node == lease.holder,
                node: server.node,
                address: server.address,
                seen_at_ms: server.seen_at_ms,
            })
            .collect(),
        leader: lease.holder,
        epoch: lease.epoch,
        lease_expires_at_ms: lease.expires_at_ms,
    });
    Ok(Json(api::ClusterSummary {
        workers,
        total: convert::figures(&cluster.total),
        used: convert::figures(&used),
        jobs,
        queues: cluster.queues.len(),
        store,
    }))
}

/// `GET /v1/cluster/history`'s query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct HistoryQuery {
    /// Only samples taken at or after this time (ms since the Unix epoch).
    since_ms: Option<u64>,
}

#[utoipa::path(get, path = "/v1/cluster/history", params(HistoryQuery), responses((status = 200, body = api::ClusterHistory), (status = "4XX", body = api::ErrorBody)))]
async fn cluster_history(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<api::ClusterHistory>> {
    state.auth.role(&headers)?.require_everything()?;
    let Query(q) = query.map_err(|e| query_error(&e))?;
    // Only the leader samples; a call that reached a follower was passed to it, so this
    // one is the leader's (or the server is starting and answers 503 before this).
    Ok(Json(state.history.since(q.since_ms.unwrap_or(0))))
}

#[utoipa::path(get, path = "/v1/autoscale", responses((status = 200, body = api::AutoscaleView), (status = "4XX", body = api::ErrorBody)))]
async fn autoscale(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> ApiResult<Json<api::AutoscaleView>> {
    // Pools and their workers are the whole cluster's: readers of every queue see them.
    state.auth.role(&headers)?.require_everything()?;
    let report = state.scheduler.autoscale().await?;
    Ok(Json(crate::autoscale::wire(&report)))
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.ready.load(Ordering::Acquire) {
        "ready".into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({
                "status": "restoring",
                "error": {
                    "code": "unavailable",
                    "message": "the server is restoring its state from the store; it serves once this answers 200"
                }
            })),
        )
            .into_response()
    }
}

/// Answers the call with errors that name only queues its caller may see.
async fn queue_names_for_caller(
    State(state): State<AppState>,
    request: Request,
    next: axum::middleware::Next,
) -> Response {
    // A refused token is answered by the handler; until then, assume the least.
    let sees_every_queue = state
        .auth
        .role(request.headers())
        .is_ok_and(|role| role.require_everything().is_ok());
    crate::error::queue_names_for(sees_every_queue, next.run(request)).await
}

/// Answers every API call 503 `unavailable` until the state is restored (probes,
/// metrics and the API document answer at once).
/// Refuses a path whose percent-escapes do not decode to UTF-8 with the API's error (the
/// path extractor's own refusal is plain text; found by fuzzing).
async fn utf8_path(request: Request, next: axum::middleware::Next) -> Response {
    let path = request.uri().path();
    if path.contains('%')
        && let Err(e) = percent_decoded(path)
    {
        return ApiError::invalid_field("path", e).into_response();
    }
    next.run(request).await
}

fn percent_decoded(path: &str) -> Result<String, String> {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out)
        .map_err(|_| "the URL's path is not UTF-8 once its %-escapes are decoded".to_owned())
}

async fn until_ready(
    State(state): State<AppState>,
    request: Request,
    next: axum::middleware::Next,
) -> Response {
    let path = request.uri().path();
    if state.ready.load(Ordering::Acquire)
        || !path.starts_with("/v1/")
        || path == "/v1/openapi.json"
    {
        return next.run(request).await;
    }
    ApiError::from(SchedulerError::Restoring).into_response()
}

async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> ApiResult<Response> {
    state.auth.role(&headers)?.require_everything()?;
    // Only the leader holds queues and workers; a follower shows its own figures.
    if let Ok(view) = state.scheduler.view().await {
        crate::metrics::record_gauges(&view);
    }
    let text = state
        .metrics
        .as_ref()
        .map(|h| h.render())
        .unwrap_or_default();
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        text,
    )
        .into_response())
}

async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

/// A query-string error, naming the parameter when the message does.
pub(crate) fn query_error(e: &axum::extract::rejection::QueryRejection) -> ApiError {
    let text = e.body_text();
    let message = text
        .trim_start_matches("Failed to deserialize query string: ")
        .to_owned();
    let field = message
        .split('`')
        .nth(1)
        .filter(|_| message.contains("field `"))
        .map(str::to_owned)
        // A bad value is reported as `name: why` (found by fuzzing: `?limit=x` named
        // no field).
        .or_else(|| {
            message
                .split_once(": ")
                .map(|(name, _)| name)
                .filter(|name| {
                    !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                })
                .map(str::to_owned)
        });
    let code = if message.starts_with("unknown field") {
        ErrorCode::UnknownField
    } else {
        ErrorCode::InvalidField
    };
    let err = ApiError::new(StatusCode::BAD_REQUEST, code, message);
    match field {
        Some(f) => err.at(f),
        None => err,
    }
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::MethodNotAllowed,
        "this endpoint does not take that method; see /v1/openapi.json",
    )
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint; see /v1/openapi.json")
}

/// The OpenAPI document of `/v1`.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "LQSM",
        description = "Multi-tenant job queue and scheduler: the JobServer API."
    ),
    paths(
        submit_job,
        submit_batch,
        get_job,
        list_jobs,
        cancel_job,
        cancel_jobs,
        retry_job,
        wait_job,
        job_logs,
        upload_logs,
        list_queues,
        create_queue,
        create_queues,
        get_queue,
        update_queue,
        stop_queue,
        queue_usage,
        start_queue,
        drain_queue,
        delete_queue,
        register_worker,
        poll_worker,
        drain_worker,
        undrain_worker,
        list_workers,
        cluster,
        cluster_history,
        autoscale,
        crate::schedule_api::create_schedule,
        crate::schedule_api::list_schedules,
        crate::schedule_api::get_schedule,
        crate::schedule_api::update_schedule,
        crate::schedule_api::pause_schedule,
        crate::schedule_api::resume_schedule,
        crate::schedule_api::delete_schedule,
        crate::workflow_api::submit_workflow,
        crate::workflow_api::get_workflow,
        crate::workflow_api::cancel_workflow,
        crate::workflow_api::job_inputs,
        crate::workflow_api::submit_broadcast
    ),
    components(schemas(
        api::ErrorBody,
        api::ErrorDetail,
        api::Resources,
        api::ResourceFigures,
        api::JobKind,
        api::RetrySpec,
        api::RateLimitSpec,
        api::SubmitJob,
        api::Submitted,
        api::SubmitBatch,
        api::BatchItem,
        api::BatchResult,
        api::AttemptView,
        api::JobView,
        api::JobList,
        api::ListOrder,
        api::QueueDefaults,
        api::QueueSettings,
        api::CreateQueue,
        api::CreateQueues,
        api::QueueBatchItem,
        api::QueueBatchResult,
        api::QueueView,
        api::QueueCounts,
        api::RegisterWorker,
        api::AttemptRef,
        api::AttemptResult,
        api::FinishedAttempt,
        api::PollRequest,
        api::Assignment,
        api::KillOrder,
        api::RefusedReport,
        api::PollResponse,
        api::WorkerView,
        api::ClusterSummary,
        api::ClusterHistory,
        api::ClusterSample,
        api::CreateSchedule,
        api::UpdateSchedule,
        api::ScheduleView,
        api::StoreSummary,
        api::ServerSummary,
        api::AutoscaleView,
        api::AutoscalePoolView,
        api::AutoscaleWorker,
        api::AutoscaleEvent,
        api::RunWhen,
        api::SubmitWorkflow,
        api::WorkflowNodeId,
        api::WorkflowSubmitted,
        api::WorkflowState,
        api::WorkflowView,
        api::JobInputs,
        api::LogChunk,
        api::LogChunks,
        api::LogChunksAnswer,
        api::JobLogs
    ))
)]
pub struct ApiDoc;

/// The whole HTTP API and the dashboard (`/ui`), which calls the API in process.
pub fn router(state: AppState) -> Router {
    let api = api_router(state.clone());
    let dashboard = crate::dashboard::router(api.clone(), state);
    api.merge(dashboard)
}

/// The HTTP API alone.
fn api_router(state: AppState) -> Router {
    let body_limit = state.limits.max_request_bytes;
    Router::new()
        .route("/v1/jobs", post(submit_job).get(list_jobs))
        .route("/v1/jobs/batch", post(submit_batch))
        .route("/v1/jobs/{id}", get(get_job))
        .route("/v1/jobs/{id}/cancel", post(cancel_job))
        .route("/v1/jobs/cancel", post(cancel_jobs))
        .route("/v1/jobs/{id}/retry", post(retry_job))
        .route("/v1/jobs/{id}/wait", get(wait_job))
        .route("/v1/jobs/{id}/logs", get(job_logs))
        .route("/v1/jobs/{id}/inputs", get(crate::workflow_api::job_inputs))
        .route("/v1/workflows", post(crate::workflow_api::submit_workflow))
        .route(
            "/v1/broadcasts",
            post(crate::workflow_api::submit_broadcast),
        )
        .route("/v1/workflows/{id}", get(crate::workflow_api::get_workflow))
        .route(
            "/v1/workflows/{id}/cancel",
            post(crate::workflow_api::cancel_workflow),
        )
        .route("/v1/queues", get(list_queues).post(create_queue))
        .route("/v1/queues/batch", post(create_queues))
        .route(
            "/v1/queues/{path}",
            get(get_queue).patch(update_queue).delete(delete_queue),
        )
        .route("/v1/queues/{path}/stop", post(stop_queue))
        .route("/v1/queues/{path}/usage", get(queue_usage))
        .route("/v1/queues/{path}/start", post(start_queue))
        .route("/v1/queues/{path}/drain", post(drain_queue))
        .route("/v1/workers", post(register_worker).get(list_workers))
        .route("/v1/workers/{id}/poll", post(poll_worker))
        .route("/v1/workers/{id}/logs", post(upload_logs))
        .route("/v1/workers/{id}/drain", post(drain_worker))
        .route("/v1/workers/{id}/undrain", post(undrain_worker))
        .route("/v1/cluster", get(cluster))
        .route("/v1/cluster/history", get(cluster_history))
        .route("/v1/autoscale", get(autoscale))
        .route(
            "/v1/schedules",
            post(crate::schedule_api::create_schedule).get(crate::schedule_api::list_schedules),
        )
        .route(
            "/v1/schedules/{name}",
            get(crate::schedule_api::get_schedule)
                .patch(crate::schedule_api::update_schedule)
                .delete(crate::schedule_api::delete_schedule),
        )
        .route(
            "/v1/schedules/{name}/pause",
            post(crate::schedule_api::pause_schedule),
        )
        .route(
            "/v1/schedules/{name}/resume",
            post(crate::schedule_api::resume_schedule),
        )
        .route("/v1/openapi.json", get(openapi))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn(utf8_path))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            queue_names_for_caller,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            until_ready,
        ))
        // Inside the forwarding: a call is audited where it is carried out.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::audit::record,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::forwarding::to_leader,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::auth_failures::limit,
        ))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The OpenAPI document checked into docs/ is the one the server serves. Run with
    /// `LQSM_BLESS=1` to rewrite it after changing the API.
    #[test]
    fn checked_in_openapi_document_is_current() {
        let generated = ApiDoc::openapi().to_pretty_json().expect("serialises") + "\n";
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
        if std::env::var_os("LQSM_BLESS").is_some() {
            std::fs::write(&path, &generated).expect("writable docs/");
        }
        let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            checked_in == generated,
            "docs/openapi.json is stale: run `LQSM_BLESS=1 cargo test -p lqsm-server checked_in_openapi` and commit it"
        );
    }

    #[test]
    fn json_errors_name_the_field_at_fault() {
        let err = parse_json::<api::SubmitJob>(
            br#"{"queue": "root.q", "kind": {"type": "function", "handler": 5}}"#,
        )
        .expect_err("handler must be a string");
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
        // `kind` is read field by field (so that `args` stays raw): the error names
        // the field inside it and says why.
        assert_eq!(err.detail.field.as_deref(), Some("kind.handler"));
        assert!(
            err.detail.message.contains("expected a string"),
            "{}",
            err.detail.message
        );
        let err = parse_json::<api::SubmitJob>(
            br#"{"queue": "root.q", "kind": {"type": "function", "handler": "h"}, "prio": 1}"#,
        )
        .expect_err("unknown field");
        assert_eq!(err.detail.code, ErrorCode::UnknownField);
        assert_eq!(err.detail.field.as_deref(), Some("prio"));
        // A field given twice is named, at the top and inside `kind` (found by fuzzing).
        let err = parse_json::<api::CancelJobs>(br#"{"queue": "root.a", "queue": "root.b"}"#)
            .expect_err("a field twice");
        assert_eq!(err.detail.field.as_deref(), Some("queue"));
        assert!(
            err.detail.message.contains("duplicate field"),
            "{}",
            err.detail.message
        );
        let err = parse_json::<api::SubmitJob>(
            br#"{"queue": "root.q", "kind": {"type": "function", "handler": "h", "handler": "h"}}"#,
        )
        .expect_err("a field twice");
        assert_eq!(err.detail.field.as_deref(), Some("kind.handler"));
        let err = parse_json::<api::SubmitJob>(b"{").expect_err("syntax");
        assert_eq!(err.detail.code, ErrorCode::InvalidJson);
    }
}
