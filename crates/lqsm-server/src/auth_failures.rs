//! Failed authentication, limited per client address (an IPv6 client by its /64): each
//! answer `401` a client gets spends one of its allowance, which refills at
//! `limits.max_failed_auth_per_minute` (and holds at most that many). A client with
//! nothing left gets `429 too_many_requests` with `Retry-After` until one refills,
//! whatever token it sends — except the tokens that already worked from that address
//! since its first failure (a worker behind the same NAT as a misconfigured client
//! carries on). So guessing tokens fast is not possible, and while blocked an answer
//! never tells a new guess apart. A follower checks tokens itself before passing a call
//! to the leader, so the leader never counts a follower's address for its clients'
//! mistakes.

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

/// Most tokens remembered as having worked from one address.
const MAX_GOOD_TOKENS: usize = 16;

/// One client's allowance of failures, and the tokens (by keyed hash: the secrets are
/// not kept) that worked from it since it was first counted.
#[derive(Clone, Debug)]
struct Allowance {
    left: f64,
    at: Instant,
    good: Vec<u64>,
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

    fn refill(&self, allowance: &Allowance, now: Instant) -> Allowance {
        let rate = f64::from(self.per_minute) / 60.0;
        let elapsed = now.saturating_duration_since(allowance.at).as_secs_f64();
        Allowance {
            left: (allowance.left + elapsed * rate).min(f64::from(self.per_minute)),
            at: now,
            good: allowance.good.clone(),
        }
    }

    /// How long `client` must wait before a call with `token` (a keyed hash of it) is
    /// taken, if it has no failure left and that token has not worked from it.
    pub fn blocked_for(
        &self,
        client: IpAddr,
        token: Option<u64>,
        now: Instant,
    ) -> Option<Duration> {
        if self.per_minute == 0 {
            return None;
        }
        let clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        let allowance = self.refill(clients.get(&group(client))?, now);
        if allowance.left >= 1.0 || token.is_some_and(|t| allowance.good.contains(&t)) {
            return None;
        }
        let rate = f64::from(self.per_minute) / 60.0;
        Some(Duration::from_secs_f64((1.0 - allowance.left) / rate))
    }

    /// Remembers that `token` worked from `client`, if that address is being counted.
    pub fn succeeded(&self, client: IpAddr, token: u64) {
        if self.per_minute == 0 {
            return;
        }
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(allowance) = clients.get_mut(&group(client))
            && !allowance.good.contains(&token)
            && allowance.good.len() < MAX_GOOD_TOKENS
        {
            allowance.good.push(token);
        }
    }

    /// Counts one failed authentication of `client`.
    pub fn failed(&self, client: IpAddr, now: Instant) {
        if self.per_minute == 0 {
            return;
        }
        let client = group(client);
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if clients.len() >= MAX_CLIENTS && !clients.contains_key(&client) {
            let full = f64::from(self.per_minute);
            clients.retain(|_, a| self.refill(a, now).left < full);
            if clients.len() >= MAX_CLIENTS {
                // Every remembered client is still short of failures: the newest
                // address goes uncounted rather than letting the map grow without end.
                return;
            }
        }
        let whole = Allowance {
            left: f64::from(self.per_minute),
            at: now,
            good: Vec::new(),
        };
        let allowance = self.refill(clients.get(&client).unwrap_or(&whole), now);
        clients.insert(
            client,
            Allowance {
                left: (allowance.left - 1.0).max(0.0),
                ..allowance
            },
        );
    }
}

/// The address a client is counted under: itself for IPv4, its /64 for IPv6 (one
/// host commonly holds a whole /64).
fn group(client: IpAddr) -> IpAddr {
    match client {
        IpAddr::V4(_) => client,
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(std::net::Ipv6Addr::from(bits))
        }
    }
}

/// The bearer token of a request, as a hash keyed for this process.
fn token_hash(request: &Request) -> Option<u64> {
    use std::hash::BuildHasher;
    static KEYS: std::sync::OnceLock<std::collections::hash_map::RandomState> =
        std::sync::OnceLock::new();
    let header = request.headers().get(axum::http::header::AUTHORIZATION)?;
    let token = header.to_str().ok()?.strip_prefix("Bearer ")?.trim();
    Some(KEYS.get_or_init(Default::default).hash_one(token))
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
    let token = token_hash(&request);
    if let Some(wait) = state
        .auth_failures
        .blocked_for(client, token, Instant::now())
    {
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
    } else if let Some(token) = token {
        state.auth_failures.succeeded(client, token);
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
            assert_eq!(limit.blocked_for(client, None, start), None);
            limit.failed(client, start);
        }
        // Three a minute: one refills every 20 s.
        let wait = limit.blocked_for(client, None, start).expect("blocked");
        assert!(
            wait > Duration::from_secs(19) && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        assert_eq!(
            limit.blocked_for(other, None, start),
            None,
            "others are not blocked"
        );
        let soon = start + Duration::from_secs(10);
        assert!(limit.blocked_for(client, None, soon).is_some());
        let refilled = start + Duration::from_secs(20);
        assert_eq!(limit.blocked_for(client, None, refilled), None);
        // After a long quiet spell the allowance is whole again, not more.
        let later = start + Duration::from_secs(3600);
        for _ in 0..3 {
            limit.failed(client, later);
        }
        assert!(limit.blocked_for(client, None, later).is_some());
    }

    #[test]
    fn zero_turns_the_limit_off() {
        let limit = AuthFailures::new(0);
        let client: IpAddr = "192.0.2.7".parse().unwrap();
        let now = Instant::now();
        for _ in 0..100 {
            limit.failed(client, now);
        }
        assert_eq!(limit.blocked_for(client, None, now), None);
    }

    #[test]
    fn a_token_that_worked_from_a_blocked_address_still_works_and_a_new_one_waits() {
        let limit = AuthFailures::new(2);
        let shared: IpAddr = "198.51.100.1".parse().unwrap();
        let now = Instant::now();
        limit.failed(shared, now);
        limit.succeeded(shared, 7); // a worker's token, while a neighbour fails
        limit.failed(shared, now);
        assert_eq!(limit.blocked_for(shared, Some(7), now), None);
        assert!(limit.blocked_for(shared, Some(8), now).is_some());
        assert!(limit.blocked_for(shared, None, now).is_some());
    }

    #[test]
    fn an_ipv6_client_is_counted_by_its_64() {
        let limit = AuthFailures::new(1);
        let now = Instant::now();
        limit.failed("2001:db8:1:2::1".parse().unwrap(), now);
        let same_64: IpAddr = "2001:db8:1:2::ffff".parse().unwrap();
        let other_64: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert!(limit.blocked_for(same_64, None, now).is_some());
        assert_eq!(limit.blocked_for(other_64, None, now), None);
    }
}
