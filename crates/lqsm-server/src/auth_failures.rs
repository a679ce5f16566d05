//! Failed authentication, limited per client address: each answer `401` a client gets
//! spends one of its allowance, which refills at `limits.max_failed_auth_per_minute`
//! (and holds at most that many). A client with nothing left gets `429
//! too_many_requests` with `Retry-After` for every call, whatever its token, until one
//! refills: guessing tokens fast is not possible, and an answer never tells a guess
//! apart while blocked. A follower checks tokens itself before passing a call to the
//! leader, so the leader never counts a follower's address for its clients' mistakes.

use crate::error::ApiError;
use crate::jobserver::AppState;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use lqsm_api::ErrorCode;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most client addresses remembered; beyond it, those whose allowance is whole again
/// are forgotten first.
const MAX_CLIENTS: usize = 100_000;

/// One client's allowance of failures.
#[derive(Clone, Copy, Debug)]
struct Allowance {
    left: f64,
    at: Instant,
}

/// The allowances of every client that failed recently.
#[derive(Debug)]
pub struct AuthFailures {
    per_minute: u32,
    clients: Mutex<HashMap<IpAddr, Allowance>>,
}

impl AuthFailures {
    /// At most `per_minute` failed authentications a minute per client; 0 turns the
    /// limit off.
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute,
            clients: Mutex::new(HashMap::new()),
        }
    }

    fn refill(&self, allowance: Allowance, now: Instant) -> Allowance {
        let rate = f64::from(self.per_minute) / 60.0;
        let elapsed = now.saturating_duration_since(allowance.at).as_secs_f64();
        Allowance {
            left: (allowance.left + elapsed * rate).min(f64::from(self.per_minute)),
            at: now,
        }
    }

    /// How long `client` must wait before its next call counts, if it has no failure
    /// left.
    pub fn blocked_for(&self, client: IpAddr, now: Instant) -> Option<Duration> {
        if self.per_minute == 0 {
            return None;
        }
        let clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        let allowance = self.refill(*clients.get(&client)?, now);
        if allowance.left >= 1.0 {
            return None;
        }
        let rate = f64::from(self.per_minute) / 60.0;
        Some(Duration::from_secs_f64((1.0 - allowance.left) / rate))
    }

    /// Counts one failed authentication of `client`.
    pub fn failed(&self, client: IpAddr, now: Instant) {
        if self.per_minute == 0 {
            return;
        }
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if clients.len() >= MAX_CLIENTS && !clients.contains_key(&client) {
            let full = f64::from(self.per_minute);
            clients.retain(|_, a| self.refill(*a, now).left < full);
            if clients.len() >= MAX_CLIENTS {
                // Every remembered client is still short of failures: the newest
                // address goes uncounted rather than letting the map grow without end.
                return;
            }
        }
        let whole = Allowance {
            left: f64::from(self.per_minute),
            at: now,
        };
        let allowance = self.refill(*clients.get(&client).unwrap_or(&whole), now);
        clients.insert(
            client,
            Allowance {
                left: (allowance.left - 1.0).max(0.0),
                at: now,
            },
        );
    }
}

/// Refuses clients that failed too often, and counts the failures of the others.
pub(crate) async fn limit(
    State(state): State<AppState>,
    request: Request,
    next: axum::middleware::Next,
) -> Response {
    let client = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip());
    // Probes and the API document need no token: they stay open to everyone.
    let path = request.uri().path();
    let open = matches!(path, "/healthz" | "/readyz" | "/v1/openapi.json");
    let (Some(client), false) = (client, state.auth.is_open() || open) else {
        return next.run(request).await;
    };
    if let Some(wait) = state.auth_failures.blocked_for(client, Instant::now()) {
        let seconds = wait.as_secs().max(1);
        let mut response = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::TooManyRequests,
            format!(
                "too many failed authentications from {client}; retry in {seconds} s with a valid token"
            ),
        )
        .into_response();
        response
            .headers_mut()
            .insert(axum::http::header::RETRY_AFTER, HeaderValue::from(seconds));
        return response;
    }
    let response = next.run(request).await;
    if response.status() == StatusCode::UNAUTHORIZED {
        state.auth_failures.failed(client, Instant::now());
    }
    response
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // In tests a panic is the failure report.
    use super::*;

    #[test]
    fn a_client_is_blocked_once_its_failures_are_spent_and_freed_as_they_refill() {
        let limit = AuthFailures::new(3);
        let client: IpAddr = "192.0.2.7".parse().unwrap();
        let other: IpAddr = "192.0.2.8".parse().unwrap();
        let start = Instant::now();
        for _ in 0..3 {
            assert_eq!(limit.blocked_for(client, start), None);
            limit.failed(client, start);
        }
        // Three a minute: one refills every 20 s.
        let wait = limit.blocked_for(client, start).expect("blocked");
        assert!(
            wait > Duration::from_secs(19) && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        assert_eq!(
            limit.blocked_for(other, start),
            None,
            "others are not blocked"
        );
        assert!(
            limit
                .blocked_for(client, start + Duration::from_secs(10))
                .is_some()
        );
        assert_eq!(
            limit.blocked_for(client, start + Duration::from_secs(20)),
            None
        );
        // After a long quiet spell the allowance is whole again, not more.
        let later = start + Duration::from_secs(3600);
        for _ in 0..3 {
            limit.failed(client, later);
        }
        assert!(limit.blocked_for(client, later).is_some());
    }

    #[test]
    fn zero_turns_the_limit_off() {
        let limit = AuthFailures::new(0);
        let client: IpAddr = "192.0.2.7".parse().unwrap();
        let now = Instant::now();
        for _ in 0..100 {
            limit.failed(client, now);
        }
        assert_eq!(limit.blocked_for(client, now), None);
    }
}
