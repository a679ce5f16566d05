//! The JobServer's schedule endpoints (`/v1/schedules`): periodic schedules, Celery beat
//! inside the scheduler. A token may manage a schedule when it may submit to the
//! schedule's queue.

use crate::convert;
use crate::error::ApiError;
use crate::jobserver::{ApiJson, AppState, prepare_request};
use crate::resource_manager::ScheduleOp;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use lqsm_api as api;
use lqsm_api::ErrorCode;
use lqsm_core::schedules::{
    Misfire, Overlap, ScheduleError, ScheduleRecord, ScheduleSpec, Trigger,
};

type ApiResult<T> = Result<T, ApiError>;

/// Missed fires made up by `catch_up` when the request names no count.
const DEFAULT_CATCH_UP: u32 = 10;

impl From<ScheduleError> for ApiError {
    fn from(e: ScheduleError) -> Self {
        match &e {
            ScheduleError::InvalidField { field, reason } => {
                // The core names the trigger's parts; the wire has them at the top level.
                let field = match field.as_str() {
                    "trigger.expr" => "cron",
                    "trigger.timezone" => "timezone",
                    "trigger.interval_ms" => "every_ms",
                    other => other,
                };
                ApiError::invalid_field(field, reason.clone())
            }
            ScheduleError::Exists(_) => {
                ApiError::new(StatusCode::CONFLICT, ErrorCode::Conflict, e.to_string()).at("name")
            }
            ScheduleError::NotFound(_) => ApiError::not_found(e.to_string()),
        }
    }
}

/// The core's schedule as the wire shows it.
pub fn schedule_view(record: &ScheduleRecord) -> api::ScheduleView {
    let spec = &record.spec;
    let (cron, timezone, every_ms) = match &spec.trigger {
        Trigger::Cron { expr, timezone } => (Some(expr.clone()), Some(timezone.clone()), None),
        Trigger::Every { interval_ms } => (None, None, Some(*interval_ms)),
    };
    let (misfire, catch_up_max) = match spec.misfire {
        Misfire::Skip => ("skip", None),
        Misfire::RunOnce => ("run_once", None),
        Misfire::CatchUp { max } => ("catch_up", Some(max)),
    };
    api::ScheduleView {
        name: spec.name.clone(),
        cron,
        timezone,
        every_ms,
        queue: spec.job.queue.clone(),
        kind: convert::kind_view(&spec.job.kind),
        misfire: misfire.to_owned(),
        catch_up_max,
        overlap: match spec.overlap {
            Overlap::Allow => "allow",
            Overlap::Skip => "skip",
        }
        .to_owned(),
        paused: record.paused,
        created_at_ms: record.created_at.0,
        next_fire_ms: (!record.paused)
            .then_some(record.next_fire)
            .flatten()
            .map(|t| t.0),
        last_fire_ms: record.last_fire.map(|t| t.0),
        last_job: record.last_job.map(|id| id.0),
        last_error: record.last_error.clone(),
        fired: record.fired,
    }
}

/// The trigger a request names: exactly one of `cron` (in `timezone`, UTC by default) and
/// `every_ms`.
fn trigger_of(
    cron: Option<&String>,
    every_ms: Option<u64>,
    timezone: Option<&String>,
) -> ApiResult<Trigger> {
    match (cron, every_ms) {
        (Some(expr), None) => Ok(Trigger::Cron {
            expr: expr.clone(),
            timezone: timezone.cloned().unwrap_or_else(|| "UTC".to_owned()),
        }),
        (None, Some(interval_ms)) => {
            if timezone.is_some() {
                return Err(ApiError::invalid_field(
                    "timezone",
                    "a time zone goes with `cron`, not with `every_ms`",
                ));
            }
            Ok(Trigger::Every { interval_ms })
        }
        _ => Err(ApiError::invalid_field(
            "cron",
            "give exactly one of `cron` (e.g. \"0 3 * * *\") and `every_ms`",
        )),
    }
}

/// The job template a request names, checked as a submission by the caller would be.
fn template_of(
    state: &AppState,
    caller: &crate::auth::Caller,
    job: &api::SubmitJob,
) -> ApiResult<lqsm_core::SubmitRequest> {
    for (field, set) in [
        ("job.id", job.id.is_some()),
        ("job.delay_ms", job.delay_ms.is_some()),
    ] {
        if set {
            return Err(ApiError::invalid_field(
                field,
                "each fire gives its job its own id and start time",
            ));
        }
    }
    for (field, set) in [
        ("job.name", job.name.is_some()),
        ("job.after", !job.after.is_empty()),
        ("job.run_when", job.run_when.is_some()),
        ("job.pass_results", job.pass_results),
    ] {
        if set {
            return Err(ApiError::invalid_field(
                field,
                "a schedule's job waits for no other job (submit a workflow from a handler instead)",
            ));
        }
    }
    let (mut job, _) = prepare_request(state, caller, "job", job)?;
    // Each fire gives the job its own id; this one is a placeholder.
    job.id = lqsm_core::JobId(uuid::Uuid::nil());
    Ok(job)
}

fn misfire_of(misfire: Option<&str>, catch_up_max: Option<u32>) -> ApiResult<Misfire> {
    Ok(match (misfire, catch_up_max) {
        (Some(other), _) if !matches!(other, "skip" | "run_once" | "catch_up") => {
            return Err(ApiError::invalid_field(
                "misfire",
                format!("`{other}` is not one of skip, run_once, catch_up"),
            ));
        }
        (Some("catch_up"), max) => Misfire::CatchUp {
            max: max.unwrap_or(DEFAULT_CATCH_UP),
        },
        (_, Some(_)) => {
            return Err(ApiError::invalid_field(
                "catch_up_max",
                "goes with `misfire = \"catch_up\"`",
            ));
        }
        (Some("skip"), None) => Misfire::Skip,
        _ => Misfire::RunOnce,
    })
}

fn overlap_of(overlap: Option<&str>) -> ApiResult<Overlap> {
    match overlap {
        None | Some("allow") => Ok(Overlap::Allow),
        Some("skip") => Ok(Overlap::Skip),
        Some(other) => Err(ApiError::invalid_field(
            "overlap",
            format!("`{other}` is not one of allow, skip"),
        )),
    }
}

/// The wire's request in the core's terms, checked as far as needs no state.
fn spec_of(
    state: &AppState,
    headers: &HeaderMap,
    body: &api::CreateSchedule,
) -> ApiResult<ScheduleSpec> {
    let caller = state.auth.caller(headers)?;
    Ok(ScheduleSpec {
        name: body.name.clone(),
        trigger: trigger_of(body.cron.as_ref(), body.every_ms, body.timezone.as_ref())?,
        job: template_of(state, &caller, &body.job)?,
        misfire: misfire_of(body.misfire.as_deref(), body.catch_up_max)?,
        overlap: overlap_of(body.overlap.as_deref())?,
    })
}

/// A schedule declared in the config file, in the core's terms; its jobs are submitted as
/// `config`.
pub(crate) fn declared_spec(decl: &api::CreateSchedule) -> Result<ScheduleSpec, ApiError> {
    if decl.job.id.is_some() || decl.job.delay_ms.is_some() {
        return Err(ApiError::invalid_field(
            "job",
            "each fire gives its job its own id and start time (leave out id and delay_ms)",
        ));
    }
    let mut job = convert::submission("job", lqsm_core::JobId(uuid::Uuid::nil()), &decl.job)?;
    job.submitted_by = Some("config".to_owned());
    Ok(ScheduleSpec {
        name: decl.name.clone(),
        trigger: trigger_of(decl.cron.as_ref(), decl.every_ms, decl.timezone.as_ref())?,
        job,
        misfire: misfire_of(decl.misfire.as_deref(), decl.catch_up_max)?,
        overlap: overlap_of(decl.overlap.as_deref())?,
    })
}

/// `current` with what `patch` changes.
fn updated(
    state: &AppState,
    headers: &HeaderMap,
    mut spec: ScheduleSpec,
    patch: &api::UpdateSchedule,
) -> ApiResult<ScheduleSpec> {
    let caller = state.auth.caller(headers)?;
    spec.trigger = match (&patch.cron, patch.every_ms, &spec.trigger) {
        (None, None, Trigger::Cron { expr, timezone }) => Trigger::Cron {
            expr: expr.clone(),
            timezone: patch.timezone.clone().unwrap_or_else(|| timezone.clone()),
        },
        (None, None, every @ Trigger::Every { .. }) => {
            if patch.timezone.is_some() {
                return Err(ApiError::invalid_field(
                    "timezone",
                    "this schedule has an interval, not a cron expression",
                ));
            }
            every.clone()
        }
        (cron, every_ms, _) => trigger_of(cron.as_ref(), every_ms, patch.timezone.as_ref())?,
    };
    if let Some(job) = &patch.job {
        spec.job = template_of(state, &caller, job)?;
    }
    if patch.misfire.is_some() || patch.catch_up_max.is_some() {
        let current = match spec.misfire {
            Misfire::CatchUp { .. } => "catch_up",
            Misfire::Skip => "skip",
            Misfire::RunOnce => "run_once",
        };
        spec.misfire = misfire_of(
            Some(patch.misfire.as_deref().unwrap_or(current)),
            patch.catch_up_max,
        )?;
    }
    if patch.overlap.is_some() {
        spec.overlap = overlap_of(patch.overlap.as_deref())?;
    }
    Ok(spec)
}

/// The schedule named, if the caller may read it, or change it with `change` (404 when
/// there is none).
async fn schedule_for(
    state: &AppState,
    headers: &HeaderMap,
    name: &str,
    change: bool,
) -> ApiResult<ScheduleRecord> {
    let role = state.auth.role(headers)?;
    let record = state
        .scheduler
        .schedules()
        .await?
        .into_iter()
        .find(|s| s.spec.name == name)
        .ok_or_else(|| ApiError::from(ScheduleError::NotFound(name.to_owned())))?;
    if change {
        role.require_queue(&record.spec.job.queue)?;
    } else {
        role.require_read(&record.spec.job.queue)?;
    }
    Ok(record)
}

async fn change(state: &AppState, op: ScheduleOp) -> ApiResult<Option<ScheduleRecord>> {
    Ok(state.scheduler.schedule(op).await??)
}

/// Applies `op` to the schedule named, if the caller may manage it, and shows the result.
async fn changed(
    state: &AppState,
    headers: &HeaderMap,
    name: String,
    op: fn(String) -> ScheduleOp,
) -> ApiResult<Json<api::ScheduleView>> {
    schedule_for(state, headers, &name, true).await?;
    let record = change(state, op(name))
        .await?
        .ok_or_else(|| ApiError::unavailable("no answer"))?;
    Ok(Json(schedule_view(&record)))
}

/// Creates a periodic schedule.
#[utoipa::path(post, path = "/v1/schedules", request_body = api::CreateSchedule,
    responses((status = 201, body = api::ScheduleView), (status = "4XX", body = api::ErrorBody)))]
pub(crate) async fn create_schedule(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<api::CreateSchedule>,
) -> ApiResult<Response> {
    let spec = spec_of(&state, &headers, &body)?;
    let record = change(&state, ScheduleOp::Create(Box::new(spec)))
        .await?
        .ok_or_else(|| ApiError::unavailable("no answer"))?;
    Ok((StatusCode::CREATED, Json(schedule_view(&record))).into_response())
}

/// Lists the schedules the token may manage, in name order.
#[utoipa::path(get, path = "/v1/schedules",
    responses((status = 200, body = Vec<api::ScheduleView>)))]
pub(crate) async fn list_schedules(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> ApiResult<Json<Vec<api::ScheduleView>>> {
    let role = state.auth.role(&headers)?;
    let schedules = state.scheduler.schedules().await?;
    Ok(Json(
        schedules
            .iter()
            .filter(|s| role.require_read(&s.spec.job.queue).is_ok())
            .map(schedule_view)
            .collect(),
    ))
}

/// One schedule, with its next and last fire.
#[utoipa::path(get, path = "/v1/schedules/{name}",
    responses((status = 200, body = api::ScheduleView), (status = 404, body = api::ErrorBody)))]
pub(crate) async fn get_schedule(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Json<api::ScheduleView>> {
    let record = schedule_for(&state, &headers, &name, false).await?;
    Ok(Json(schedule_view(&record)))
}

/// Changes a schedule's trigger, template or policies; what it did is kept.
#[utoipa::path(patch, path = "/v1/schedules/{name}", request_body = api::UpdateSchedule,
    responses((status = 200, body = api::ScheduleView), (status = "4XX", body = api::ErrorBody)))]
pub(crate) async fn update_schedule(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    ApiJson(patch): ApiJson<api::UpdateSchedule>,
) -> ApiResult<Json<api::ScheduleView>> {
    let current = schedule_for(&state, &headers, &name, true).await?;
    let spec = updated(&state, &headers, current.spec, &patch)?;
    let record = change(&state, ScheduleOp::Update(Box::new(spec)))
        .await?
        .ok_or_else(|| ApiError::unavailable("no answer"))?;
    Ok(Json(schedule_view(&record)))
}

/// Pauses a schedule: it fires nothing until resumed.
#[utoipa::path(post, path = "/v1/schedules/{name}/pause",
    responses((status = 200, body = api::ScheduleView), (status = 404, body = api::ErrorBody)))]
pub(crate) async fn pause_schedule(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Json<api::ScheduleView>> {
    changed(&state, &headers, name, ScheduleOp::Pause).await
}

/// Resumes a paused schedule at its next fire time (what came due meanwhile is not made
/// up).
#[utoipa::path(post, path = "/v1/schedules/{name}/resume",
    responses((status = 200, body = api::ScheduleView), (status = 404, body = api::ErrorBody)))]
pub(crate) async fn resume_schedule(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Json<api::ScheduleView>> {
    changed(&state, &headers, name, ScheduleOp::Resume).await
}

/// Deletes a schedule; the jobs it made stay.
#[utoipa::path(delete, path = "/v1/schedules/{name}",
    responses((status = 204), (status = 404, body = api::ErrorBody)))]
pub(crate) async fn delete_schedule(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    schedule_for(&state, &headers, &name, true).await?;
    change(&state, ScheduleOp::Delete(name)).await?;
    Ok(StatusCode::NO_CONTENT)
}
