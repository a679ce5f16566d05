//! The audit log: who changed the cluster, and how it went. Every call that changes
//! the queue tree, the schedules or a worker's state, or cancels jobs in bulk, is
//! recorded with the caller's identity (its token's name) and role, the client's
//! address, the call and its status: as an event of the `lqsm::audit` log target, and, when
//! `audit_log` names a file, as one JSON line appended to it. A call is recorded where
//! it is carried out, so a call a follower passed on is recorded by the leader, with
//! the follower named in `forwarded_by`.

use crate::jobserver::AppState;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::Method;
use axum::response::Response;
use serde::Serialize;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Where audit records go besides the log.
#[derive(Debug, Default)]
pub struct AuditLog {
    file: Option<(PathBuf, Mutex<std::fs::File>)>,
}

/// The audit file could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("audit_log {path}: cannot open it for appending: {source}")]
pub struct AuditLogError {
    path: PathBuf,
    source: std::io::Error,
}

/// One recorded call.
#[derive(Debug, Serialize)]
struct AuditRecord<'a> {
    at_ms: u64,
    caller: &'a str,
    role: &'static str,
    client: Option<String>,
    forwarded_by: Option<&'a str>,
    action: &'static str,
    method: &'a str,
    path: &'a str,
    status: u16,
}

impl AuditLog {
    /// Records to the log only.
    pub fn log_only() -> Self {
        Self::default()
    }

    /// Records to the log and appends JSON lines to `path` (created if missing).
    pub fn to_file(path: &Path) -> Result<Self, AuditLogError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| AuditLogError {
                path: path.to_owned(),
                source,
            })?;
        Ok(Self {
            file: Some((path.to_owned(), Mutex::new(file))),
        })
    }

    fn record(&self, record: &AuditRecord<'_>) {
        tracing::info!(
            target: "lqsm::audit",
            caller = record.caller,
            role = record.role,
            client = record.client.as_deref().unwrap_or("-"),
            forwarded_by = record.forwarded_by.unwrap_or("-"),
            action = record.action,
            method = record.method,
            path = record.path,
            status = record.status,
            "admin action"
        );
        let Some((path, file)) = &self.file else {
            return;
        };
        let mut line = match serde_json::to_vec(record) {
            Ok(line) => line,
            Err(e) => {
                tracing::error!(error = %e, "an audit record could not be encoded");
                return;
            }
        };
        line.push(b'\n');
        // One write per record, so that lines never interleave; a poisoned lock only
        // means another write panicked, and the file is still usable.
        let mut file = file.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Err(e) = file.write_all(&line).and_then(|()| file.flush()) {
            tracing::error!(path = %path.display(), error = %e, "an audit record could not be written");
        }
    }
}

/// The action a call performs, if it is one the audit log records.
pub(crate) fn action_of(method: &Method, path: &str) -> Option<&'static str> {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let changes = *method != Method::GET && *method != Method::HEAD;
    match segments.as_slice() {
        ["v1", "queues", ..] if changes => Some(match (method.as_str(), segments.get(3)) {
            ("DELETE", _) => "delete_queue",
            ("PATCH", _) => "update_queue",
            (_, Some(&"stop")) => "stop_queue",
            (_, Some(&"start")) => "start_queue",
            (_, Some(&"drain")) => "drain_queue",
            _ => "create_queue",
        }),
        ["v1", "schedules", ..] if changes => Some(match (method.as_str(), segments.get(3)) {
            ("DELETE", _) => "delete_schedule",
            ("PATCH", _) => "update_schedule",
            (_, Some(&"pause")) => "pause_schedule",
            (_, Some(&"resume")) => "resume_schedule",
            _ => "create_schedule",
        }),
        ["v1", "workers", _, "drain"] if changes => Some("drain_worker"),
        ["v1", "workers", _, "undrain"] if changes => Some("undrain_worker"),
        ["v1", "jobs", "cancel"] if changes => Some("cancel_jobs"),
        _ => None,
    }
}

fn epoch_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Records the calls `action_of` names, after they are answered.
pub(crate) async fn record(
    State(state): State<AppState>,
    request: Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(action) = action_of(request.method(), request.uri().path()) else {
        return next.run(request).await;
    };
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let (caller, role) = state.auth.caller(request.headers()).map_or_else(
        |_| ("unauthenticated".to_owned(), "-"),
        |c| (c.name, c.role.name()),
    );
    let client = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip().to_string());
    let forwarded_by = request
        .headers()
        .get(crate::forwarding::FORWARDED_BY)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let response = next.run(request).await;
    state.audit.record(&AuditRecord {
        at_ms: epoch_ms(),
        caller: &caller,
        role,
        client,
        forwarded_by: forwarded_by.as_deref(),
        action,
        method: method.as_str(),
        path: &path,
        status: response.status().as_u16(),
    });
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_calls_that_change_the_cluster_are_named_and_the_rest_are_not() {
        let cases = [
            (Method::POST, "/v1/queues", Some("create_queue")),
            (Method::POST, "/v1/queues/batch", Some("create_queue")),
            (Method::PATCH, "/v1/queues/root.a", Some("update_queue")),
            (Method::DELETE, "/v1/queues/root.a", Some("delete_queue")),
            (Method::POST, "/v1/queues/root.a/drain", Some("drain_queue")),
            (Method::POST, "/v1/queues/root.a/stop", Some("stop_queue")),
            (Method::POST, "/v1/schedules", Some("create_schedule")),
            (
                Method::POST,
                "/v1/schedules/n/pause",
                Some("pause_schedule"),
            ),
            (Method::DELETE, "/v1/schedules/n", Some("delete_schedule")),
            (Method::POST, "/v1/workers/w/drain", Some("drain_worker")),
            (
                Method::POST,
                "/v1/workers/w/undrain",
                Some("undrain_worker"),
            ),
            (Method::POST, "/v1/jobs/cancel", Some("cancel_jobs")),
            (Method::GET, "/v1/queues", None),
            (Method::GET, "/v1/schedules/n", None),
            (Method::POST, "/v1/jobs", None),
            (Method::POST, "/v1/jobs/batch", None),
            (Method::POST, "/v1/workers", None),
            (Method::POST, "/v1/workers/w/poll", None),
            (Method::POST, "/v1/jobs/x/cancel", None),
        ];
        for (method, path, expected) in cases {
            assert_eq!(action_of(&method, path), expected, "{method} {path}");
        }
    }
}
