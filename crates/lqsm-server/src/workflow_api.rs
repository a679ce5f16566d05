//! The JobServer's workflow endpoints (`/v1/workflows`) and the parents' results a job
//! receives (`/v1/jobs/{id}/inputs`). A workflow is a graph of jobs submitted in one
//! request; its jobs carry the tag [`WorkflowNode::tag_of`], by which the store lists
//! them and a cancel finds them. A group, a chain and a chord are workflows.

use crate::convert;
use crate::error::ApiError;
use crate::jobserver::{ApiJson, AppState, check_parents_readable, offload, prepare_request};
use crate::resource_manager::wall_clock;
use crate::scheduler::{JobListing, JobRead};
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use lqsm_api as api;
use lqsm_core::{JobId, JobState, MAX_WORKFLOW_NODES, WorkflowError, WorkflowNode};
use std::collections::{BTreeMap, HashMap, HashSet};
use uuid::Uuid;

type ApiResult<T> = Result<T, ApiError>;

impl From<WorkflowError> for ApiError {
    fn from(e: WorkflowError) -> Self {
        match e {
            WorkflowError::Node { index, error } => {
                ApiError::from(error).in_item(&format!("nodes[{index}]"))
            }
            WorkflowError::Size(_) => ApiError::invalid_field("nodes", e.to_string()),
            WorkflowError::Cycle { index, .. } | WorkflowError::UnknownParent { index, .. } => {
                ApiError::invalid_field(&format!("nodes[{index}].after"), e.to_string())
            }
        }
    }
}

#[utoipa::path(post, path = "/v1/workflows", request_body = api::SubmitWorkflow,
    responses((status = 201, body = api::WorkflowSubmitted), (status = "4XX", body = api::ErrorBody)))]
pub(crate) async fn submit_workflow(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<api::SubmitWorkflow>,
) -> ApiResult<(StatusCode, Json<api::WorkflowSubmitted>)> {
    let caller = state.auth.caller(&headers)?;
    let count = body.nodes.len();
    if count == 0 || count > MAX_WORKFLOW_NODES {
        return Err(ApiError::invalid_field(
            "nodes",
            format!("a workflow holds 1 to {MAX_WORKFLOW_NODES} jobs, this one {count}"),
        ));
    }
    let workflow = Uuid::now_v7();
    let mut by_name: HashMap<&str, JobId> = HashMap::with_capacity(count);
    let mut prepared = Vec::with_capacity(count);
    for (i, job) in body.nodes.iter().enumerate() {
        let field = format!("nodes[{i}]");
        let name = job.name.as_deref().ok_or_else(|| {
            ApiError::invalid_field(
                &format!("{field}.name"),
                "every node of a workflow needs a name",
            )
        })?;
        if Uuid::parse_str(name).is_ok() {
            return Err(ApiError::invalid_field(
                &format!("{field}.name"),
                format!("`{name}` looks like a job id; `after` could not tell them apart"),
            ));
        }
        let (mut req, size) = prepare_request(&state, &caller, &field, job)?;
        if by_name.insert(name, req.id).is_some() {
            return Err(ApiError::invalid_field(
                &format!("{field}.name"),
                format!("`{name}` names two nodes"),
            ));
        }
        req.workflow = Some(WorkflowNode {
            workflow,
            name: name.to_owned(),
        });
        prepared.push((req, size));
    }
    let ours: HashSet<JobId> = by_name.values().copied().collect();
    let mut nodes = Vec::with_capacity(count);
    for (i, ((mut req, size), job)) in prepared.into_iter().zip(&body.nodes).enumerate() {
        let field = format!("nodes[{i}]");
        req.depends = convert::dependencies(&field, job, |f, text| match by_name.get(text) {
            Some(id) => Ok(*id),
            None => convert::parent_id(f, text).map_err(|_| {
                ApiError::invalid_field(
                    f,
                    format!("`{text}` is neither a node of this workflow nor a job id"),
                )
            }),
        })?;
        check_parents_readable(&state, &caller, &field, &req, &ours).await?;
        nodes.push(offload(req, size, state.limits.inline_payload_bytes));
    }
    let names: Vec<String> = body
        .nodes
        .iter()
        .map(|n| n.name.clone().unwrap_or_default())
        .collect();
    let ids = state.scheduler.submit_workflow(nodes).await??;
    Ok((
        StatusCode::CREATED,
        Json(api::WorkflowSubmitted {
            id: workflow,
            nodes: names
                .into_iter()
                .zip(ids)
                .map(|(name, id)| api::WorkflowNodeId { name, id: id.0 })
                .collect(),
        }),
    ))
}

/// Options of `POST /v1/broadcasts`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct BroadcastQuery {
    /// Also run the job on each matching worker that registers later, until the job's
    /// `expires_at_ms` or a cancel of the broadcast (default false).
    new_workers: Option<bool>,
}

#[utoipa::path(post, path = "/v1/broadcasts", request_body = api::SubmitJob, params(BroadcastQuery),
    responses((status = 201, description = "one job per matching active worker, as a workflow", body = api::WorkflowSubmitted), (status = "4XX", body = api::ErrorBody)))]
pub(crate) async fn submit_broadcast(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<BroadcastQuery>, QueryRejection>,
    ApiJson(job): ApiJson<api::SubmitJob>,
) -> ApiResult<(StatusCode, Json<api::WorkflowSubmitted>)> {
    let caller = state.auth.caller(&headers)?;
    let Query(query) = query.map_err(|e| crate::jobserver::query_error(&e))?;
    let new_workers = query.new_workers.unwrap_or(false);
    for (field, set) in [
        ("id", job.id.is_some()),
        ("name", job.name.is_some()),
        ("after", !job.after.is_empty()),
        ("run_when", job.run_when.is_some()),
        ("pass_results", job.pass_results),
        ("idempotency_key", job.idempotency_key.is_some()),
    ] {
        if set {
            return Err(ApiError::invalid_field(
                field,
                "a broadcast names its own jobs, one per worker, and waits for nothing",
            ));
        }
    }
    let (req, size) = prepare_request(&state, &caller, "", &job)?;
    let id = Uuid::now_v7();
    let template = offload(req, size, state.limits.inline_payload_bytes);
    if new_workers && template.1.is_some() {
        return Err(ApiError::invalid_field(
            "kind",
            format!(
                "a broadcast open to new workers keeps its job in memory: its kind must be at most {} bytes (limits.inline_payload_bytes)",
                state.limits.inline_payload_bytes
            ),
        ));
    }
    let jobs = state
        .scheduler
        .submit_broadcast(template, id, new_workers)
        .await?
        .map_err(|e| match e {
            // The template is the request's only job: its fields are the request's.
            WorkflowError::Node { error, .. } => ApiError::from(error),
            other => ApiError::from(other),
        })?;
    Ok((
        StatusCode::CREATED,
        Json(api::WorkflowSubmitted {
            id,
            nodes: jobs
                .into_iter()
                .map(|b| api::WorkflowNodeId {
                    name: b.name,
                    id: b.job.0,
                })
                .collect(),
        }),
    ))
}

fn parse_workflow_id(text: &str) -> ApiResult<Uuid> {
    Uuid::parse_str(text).map_err(|_| {
        ApiError::invalid_field("id", format!("`{text}` is not a workflow id (a UUID)"))
    })
}

/// Every job of workflow `id`, in submission order (404 when it holds none: never
/// submitted, or every job passed its retention).
async fn workflow_jobs(state: &AppState, id: Uuid) -> ApiResult<Vec<JobRead>> {
    let mut jobs = Vec::new();
    let mut after = None;
    loop {
        let page = state
            .scheduler
            .jobs(JobListing {
                queue: None,
                state: None,
                tag: Some(WorkflowNode::tag_of(id)),
                submitter: None,
                order: lqsm_store::Order::OldestFirst,
                after,
                limit: 1000,
            })
            .await?;
        after = page.resume_after;
        jobs.extend(page.jobs);
        if !page.more || after.is_none() {
            break;
        }
    }
    if jobs.is_empty() {
        return Err(ApiError::not_found(format!(
            "workflow {id} does not exist (or its jobs have passed their retention)"
        )));
    }
    Ok(jobs)
}

/// `check` once for each queue among `jobs` (a 403 from it stops at the first).
fn for_each_queue(jobs: &[JobRead], mut check: impl FnMut(&str) -> ApiResult<()>) -> ApiResult<()> {
    let mut checked = HashSet::new();
    for job in jobs {
        if checked.insert(job.queue.as_str()) {
            check(job.queue.as_str())?;
        }
    }
    Ok(())
}

/// Where a workflow is, from its jobs' states.
pub fn workflow_state<'a>(states: impl IntoIterator<Item = &'a JobState>) -> api::WorkflowState {
    let (mut unfinished, mut failed, mut cancelled) = (false, false, false);
    for state in states {
        match state {
            JobState::Succeeded => {}
            JobState::Failed | JobState::Expired => failed = true,
            JobState::Cancelled => cancelled = true,
            _ => unfinished = true,
        }
    }
    match (unfinished, failed, cancelled) {
        (true, _, _) => api::WorkflowState::Running,
        (false, true, _) => api::WorkflowState::Failed,
        (false, false, true) => api::WorkflowState::Cancelled,
        (false, false, false) => api::WorkflowState::Succeeded,
    }
}

#[utoipa::path(get, path = "/v1/workflows/{id}", params(("id" = String, Path)),
    responses((status = 200, body = api::WorkflowView), (status = "4XX", body = api::ErrorBody)))]
pub(crate) async fn get_workflow(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<api::WorkflowView>> {
    let role = state.auth.role(&headers)?;
    let id = parse_workflow_id(&id)?;
    let jobs = workflow_jobs(&state, id).await?;
    for_each_queue(&jobs, |queue| role.require_read(queue))?;
    let mut counts: BTreeMap<api::JobState, u64> = BTreeMap::new();
    for job in &jobs {
        *counts.entry(convert::job_state(job.state)).or_default() += 1;
    }
    let now = wall_clock();
    Ok(Json(api::WorkflowView {
        id,
        state: workflow_state(jobs.iter().map(|j| &j.state)),
        counts,
        nodes: jobs
            .iter()
            .map(|j| convert::job_view(j, j.queue.as_str(), now))
            .collect(),
    }))
}

#[utoipa::path(post, path = "/v1/workflows/{id}/cancel", params(("id" = String, Path)),
    responses((status = 200, body = api::CancelledJobs), (status = "4XX", body = api::ErrorBody)))]
pub(crate) async fn cancel_workflow(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<api::CancelledJobs>> {
    let caller = state.auth.caller(&headers)?;
    let id = parse_workflow_id(&id)?;
    match workflow_jobs(&state, id).await {
        Ok(jobs) => for_each_queue(&jobs, |queue| caller.role.require_queue(queue))?,
        // Its jobs passed their retention; a broadcast may still be open to new
        // workers, and only a token over every queue may close it.
        Err(e) if e.status == StatusCode::NOT_FOUND => caller.role.require_everything()?,
        Err(e) => return Err(e),
    }
    let selection = lqsm_core::JobSelection {
        tag: Some(WorkflowNode::tag_of(id)),
        ..lqsm_core::JobSelection::default()
    };
    let cancelled = state
        .scheduler
        .cancel_selected(selection, format!("workflow {id} cancelled"))
        .await?
        .map_err(|e| ApiError::invalid_field("id", e.to_string()))?;
    Ok(Json(api::CancelledJobs {
        cancelled: cancelled as u64,
    }))
}

#[utoipa::path(get, path = "/v1/jobs/{id}/inputs", params(("id" = String, Path)),
    responses((status = 200, body = api::JobInputs), (status = "4XX", body = api::ErrorBody)))]
pub(crate) async fn job_inputs(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<api::JobInputs>> {
    let role = state.auth.role(&headers)?;
    let id = Uuid::parse_str(&id)
        .map(JobId)
        .map_err(|_| ApiError::invalid_field("id", format!("`{id}` is not a job id (a UUID)")))?;
    let job = state
        .scheduler
        .job(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("job {id} does not exist")))?;
    // The worker running it reads them, as does whoever may read the job.
    if role.require_worker().is_err() {
        role.require_read(job.queue.as_str())?;
    }
    let Some(depends) = job.spec.depends().filter(|d| d.pass_results) else {
        return Err(ApiError::invalid_field(
            "id",
            format!("job {id} does not receive its parents' results (`pass_results`)"),
        ));
    };
    let parents = state.scheduler.jobs_by_id(depends.parents.clone()).await?;
    let inputs = parents
        .iter()
        .map(
            |parent| match parent.as_ref().and_then(|p| p.termination.as_ref()) {
                Some(lqsm_core::Termination::Succeeded {
                    result: Some(result),
                    ..
                }) => result.to_value(),
                _ => serde_json::Value::Null,
            },
        )
        .collect();
    Ok(Json(api::JobInputs { inputs }))
}
