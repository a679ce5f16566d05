//! A follower hands calls to the leader.
//!
//! A server that does not lead answers the reads the store can answer itself (a job, its
//! logs, listings that need no queue tree, probes, metrics, the API document) and passes
//! every other call to the leader's advertised address unchanged, returning the leader's
//! answer unchanged: the same token is checked there, the same errors come back, and a
//! worker's long-poll waits there. So every server serves the whole API, and clients and
//! workers may talk to any of them.
//!
//! A passed call carries [`FORWARDED_BY`]; a server that receives one while not leading
//! (the leader changed while it travelled) answers 503 rather than pass it on again.
//!
//! Reads of what only the leader holds in memory (the queue tree, the workers, the
//! cluster summary) are answered from a snapshot: the leader's answer to the same call
//! (same path, query and token) of at most [`SNAPSHOT_TTL`] ago. So however many clients
//! read through followers, each follower asks the leader at most once per second per
//! distinct read, and reads scale with servers; the price is that such a read through a
//! follower may be up to a second old.

use crate::error::ApiError;
use crate::jobserver::AppState;
use crate::leadership::Role;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::time::Duration;

/// The header a passed call carries: the name of the server that passed it.
pub const FORWARDED_BY: HeaderName = HeaderName::from_static("x-lqsm-forwarded-by");

/// How old a follower's snapshot of a leader's read may be.
pub const SNAPSHOT_TTL: Duration = Duration::from_secs(1);

/// Most snapshots a follower keeps (distinct paths, queries and tokens); when it is
/// reached the stale ones are dropped, and while it still is, reads go to the leader.
const MAX_SNAPSHOTS: usize = 1024;

/// The largest answer kept as a snapshot (a larger one is passed on each time).
const MAX_SNAPSHOT_BYTES: usize = 1 << 20;

/// A read's path and query, and the token it was made with.
type SnapshotKey = (String, Vec<u8>);

/// A leader's answer, kept to answer the same read again.
#[derive(Clone)]
struct Snapshot {
    taken: std::time::Instant,
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
}

impl Snapshot {
    fn response(&self) -> Response {
        let mut response = Response::new(Body::from(self.body.clone()));
        *response.status_mut() = self.status;
        *response.headers_mut() = self.headers.clone();
        response
    }
}

/// The longest a passed call may take: the longest wait a call may ask for (5 min) and a
/// margin.
const LONGEST_PASSED_CALL: Duration = Duration::from_secs(330);

/// How long connecting to the leader may take before the call is answered 503.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The HTTP client a follower passes calls with.
#[derive(Clone)]
pub struct Forwarder {
    client: reqwest::Client,
    node: String,
    snapshots: std::sync::Arc<std::sync::Mutex<HashMap<SnapshotKey, Snapshot>>>,
}

impl Forwarder {
    /// A forwarder for the server named `node`.
    pub fn new(node: &str, trusted: &[reqwest::Certificate]) -> Self {
        let mut client = reqwest::Client::builder();
        for certificate in trusted {
            client = client.add_root_certificate(certificate.clone());
        }
        let client = client
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            // Long-polls and waits wait at the leader as long as they asked, up to 5 min;
            // a leader that stops answering is given up earlier, when the role changes.
            .timeout(LONGEST_PASSED_CALL)
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_default();
        Self {
            client,
            node: node.to_owned(),
            snapshots: std::sync::Arc::default(),
        }
    }

    /// Answers a read of the leader's view from a snapshot of at most [`SNAPSHOT_TTL`],
    /// asking the leader when there is none.
    async fn read_view(&self, leader: &str, request: Request, body_limit: usize) -> Response {
        let key = (
            request
                .uri()
                .path_and_query()
                .map_or_else(String::new, |p| p.as_str().to_owned()),
            request
                .headers()
                .get(header::AUTHORIZATION)
                .map_or_else(Vec::new, |v| v.as_bytes().to_vec()),
        );
        let fresh = self
            .snapshots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&key)
            .filter(|s| s.taken.elapsed() < SNAPSHOT_TTL)
            .cloned();
        if let Some(snapshot) = fresh {
            return snapshot.response();
        }
        let taken = std::time::Instant::now();
        let response = self.pass(leader, request, body_limit).await;
        if response.status() != StatusCode::OK {
            return response;
        }
        let (parts, body) = response.into_parts();
        let Ok(body) = axum::body::to_bytes(body, usize::MAX).await else {
            return ApiError::unavailable("the leader's answer could not be read; retry")
                .into_response();
        };
        let snapshot = Snapshot {
            taken,
            status: parts.status,
            headers: parts.headers,
            body,
        };
        if snapshot.body.len() <= MAX_SNAPSHOT_BYTES {
            let mut snapshots = self
                .snapshots
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if snapshots.len() >= MAX_SNAPSHOTS {
                snapshots.retain(|_, s| s.taken.elapsed() < SNAPSHOT_TTL);
            }
            if snapshots.len() < MAX_SNAPSHOTS {
                snapshots.insert(key, snapshot.clone());
            }
        }
        snapshot.response()
    }

    /// Passes `request` to the leader at `leader` and returns its answer unchanged.
    pub(crate) async fn pass(&self, leader: &str, request: Request, body_limit: usize) -> Response {
        let (parts, body) = request.into_parts();
        let bytes = match axum::body::to_bytes(body, body_limit).await {
            Ok(bytes) => bytes,
            Err(e) => {
                return ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    lqsm_api::ErrorCode::PayloadTooLarge,
                    format!("the request body could not be read: {e}"),
                )
                .into_response();
            }
        };
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let url = format!("{}{path}", leader.trim_end_matches('/'));
        let mut outgoing = self.client.request(parts.method.clone(), &url).body(bytes);
        for (name, value) in &parts.headers {
            if !is_hop_by_hop(name) {
                outgoing = outgoing.header(name, value);
            }
        }
        outgoing = outgoing.header(FORWARDED_BY, &self.node);
        let answer = match outgoing.send().await {
            Ok(answer) => answer,
            Err(e) => {
                return ApiError::unavailable(format!(
                    "this server does not lead, and the leader at {leader} did not answer ({e}); retry shortly: a new leader is elected within seconds"
                ))
                .into_response();
            }
        };
        let status = answer.status();
        let headers = answer.headers().clone();
        let body = match answer.bytes().await {
            Ok(body) => body,
            Err(e) => {
                return ApiError::unavailable(format!(
                    "the leader at {leader} stopped answering mid-way ({e}); retry"
                ))
                .into_response();
            }
        };
        let mut response = Response::new(Body::from(body));
        *response.status_mut() = status;
        for (name, value) in &headers {
            if !is_hop_by_hop(name) {
                response.headers_mut().append(name, value.clone());
            }
        }
        response
    }
}

/// Headers that describe one connection, not the message: never passed on, either way.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    [
        header::CONNECTION,
        header::HOST,
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
        header::TE,
        header::TRAILER,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
        header::EXPECT,
    ]
    .contains(name)
        || name.as_str() == "keep-alive"
}

/// Whether `request` reads what only the leader holds in memory (answered from a
/// snapshot of the leader's answer).
fn reads_the_leaders_view(request: &Request) -> bool {
    if request.method() != Method::GET {
        return false;
    }
    let path = request.uri().path();
    path == "/v1/cluster"
        || path == "/v1/autoscale"
        || path == "/v1/workers"
        || path == "/v1/queues"
        || path.starts_with("/v1/queues/")
}

/// Whether a follower answers `request` itself, from the store.
fn answered_locally(request: &Request) -> bool {
    let path = request.uri().path();
    if !path.starts_with("/v1/") || path == "/v1/openapi.json" {
        return true;
    }
    if request.method() != Method::GET {
        return false;
    }
    let query = request.uri().query().unwrap_or("");
    let has = |name: &str| {
        query
            .split('&')
            .any(|pair| pair.split('=').next() == Some(name))
    };
    let segments: Vec<&str> = path.trim_start_matches("/v1/").split('/').collect();
    match segments.as_slice() {
        // A job, unless the caller waits for it to finish (the leader wakes waiters).
        ["jobs", _] => !has("wait"),
        ["jobs", _, "logs"] => true,
        // Read from the store, as jobs are.
        ["jobs", _, "inputs"] | ["workflows", _] => true,
        // A listing within a queue needs the queue tree, which only the leader holds.
        ["jobs"] => !has("queue"),
        _ => false,
    }
}

/// Resolves once this server no longer passes calls to `leader`.
async fn leader_replaced(role: &mut tokio::sync::watch::Receiver<Role>, leader: &str) {
    loop {
        let still =
            matches!(&*role.borrow_and_update(), Role::Follower { leader: Some(l) } if l == leader);
        if !still {
            return;
        }
        if role.changed().await.is_err() {
            // The server is going away; its shutdown ends the call.
            std::future::pending::<()>().await;
        }
    }
}

/// Passes calls a follower cannot answer to the leader.
pub(crate) async fn to_leader(
    State(state): State<AppState>,
    request: Request,
    next: axum::middleware::Next,
) -> Response {
    let role = state.role.borrow().clone();
    let Role::Follower { leader } = role else {
        return next.run(request).await;
    };
    if answered_locally(&request) {
        return next.run(request).await;
    }
    // Tokens are checked here, as the leader would: a bad one is this server's to
    // refuse (and to count against its client), not the leader's.
    if let Err(refused) = state.auth.caller(request.headers()) {
        return refused.into_response();
    }
    if let Some(by) = request.headers().get(FORWARDED_BY) {
        let by = by.to_str().unwrap_or("another server").to_owned();
        return ApiError::unavailable(format!(
            "{by} passed this call here as to the leader, but this server no longer leads; retry"
        ))
        .into_response();
    }
    match leader {
        Some(leader) => {
            let mut role = state.role.clone();
            let limit = state.limits.max_request_bytes;
            let passed = async {
                if reads_the_leaders_view(&request) {
                    state.forwarder.read_view(&leader, request, limit).await
                } else {
                    state.forwarder.pass(&leader, request, limit).await
                }
            };
            // A call waiting on a leader that has since been replaced (paused, cut off)
            // is answered at once, for the caller to retry with the new one.
            tokio::select! {
                answer = passed => answer,
                () = leader_replaced(&mut role, &leader) => ApiError::unavailable(format!(
                    "the leader at {leader} was replaced while this call waited for it; retry"
                ))
                .into_response(),
            }
        }
        None => ApiError::from(crate::scheduler::SchedulerError::NotLeader).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(uri: &str) -> Request {
        Request::builder()
            .uri(uri)
            .body(Body::empty())
            .expect("valid request")
    }

    #[test]
    fn reads_of_jobs_are_answered_locally_and_everything_else_goes_to_the_leader() {
        for local in [
            "/healthz",
            "/metrics",
            "/v1/openapi.json",
            "/v1/jobs/0190f0f0-0000-7000-8000-000000000000",
            "/v1/jobs/0190f0f0-0000-7000-8000-000000000000/logs",
            "/v1/jobs?state=pending&limit=10",
        ] {
            assert!(answered_locally(&get(local)), "{local}");
        }
        for passed in [
            "/v1/jobs/0190f0f0-0000-7000-8000-000000000000?wait=5s",
            "/v1/jobs/0190f0f0-0000-7000-8000-000000000000/wait",
            "/v1/jobs?queue=root.etl",
            "/v1/queues",
            "/v1/workers",
            "/v1/cluster",
        ] {
            assert!(!answered_locally(&get(passed)), "{passed}");
        }
        let post = Request::builder()
            .method(Method::POST)
            .uri("/v1/jobs")
            .body(Body::empty())
            .expect("valid request");
        assert!(!answered_locally(&post));
    }
}
