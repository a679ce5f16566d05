//! Bearer tokens and roles: `admin` may do everything, `submitter` may submit, read
//! and cancel jobs in the queues its patterns match, `worker` may use the worker
//! endpoints. With no tokens configured everyone is admin (the server then listens on
//! loopback only).

use crate::config::{RoleName, TokenConfig};
use crate::error::ApiError;
use axum::http::{HeaderMap, StatusCode};
use std::collections::HashMap;

/// What a caller may do.
#[derive(Clone, Debug, PartialEq)]
pub enum Role {
    /// Everything.
    Admin,
    /// Jobs in matching queues.
    Submitter(Vec<String>),
    /// Worker endpoints.
    Worker,
}

/// The configured tokens.
#[derive(Clone, Debug, Default)]
pub struct Auth {
    tokens: HashMap<String, Role>,
}

impl Auth {
    /// From the config's tokens.
    pub fn new(tokens: &[TokenConfig]) -> Self {
        let tokens = tokens
            .iter()
            .map(|t| {
                let role = match t.role {
                    RoleName::Admin => Role::Admin,
                    RoleName::Submitter => Role::Submitter(t.queues.clone()),
                    RoleName::Worker => Role::Worker,
                };
                (t.token.clone(), role)
            })
            .collect();
        Self { tokens }
    }

    /// True when no token is configured.
    pub fn is_open(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The caller's role, or 401.
    pub fn role(&self, headers: &HeaderMap) -> Result<Role, ApiError> {
        if self.is_open() {
            return Ok(Role::Admin);
        }
        let unauthorized =
            |message: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message);
        let header = headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or_else(|| unauthorized("missing `Authorization: Bearer <token>` header"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .ok_or_else(|| unauthorized("the Authorization header must be `Bearer <token>`"))?;
        self.tokens
            .get(token.trim())
            .cloned()
            .ok_or_else(|| unauthorized("unknown token"))
    }
}

fn forbidden(message: String) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
}

/// Whether `pattern` covers queue `path`: exact, `*`, or `prefix.*` (the prefix and
/// everything below it).
pub fn pattern_matches(pattern: &str, path: &str) -> bool {
    if pattern == "*" || pattern == path {
        return true;
    }
    match pattern.strip_suffix(".*") {
        Some(prefix) => {
            path == prefix
                || (path.starts_with(prefix) && path.as_bytes().get(prefix.len()) == Some(&b'.'))
        }
        None => false,
    }
}

impl Role {
    /// 403 unless admin.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        match self {
            Role::Admin => Ok(()),
            _ => Err(forbidden("this needs an admin token".into())),
        }
    }

    /// 403 unless admin or worker.
    pub fn require_worker(&self) -> Result<(), ApiError> {
        match self {
            Role::Admin | Role::Worker => Ok(()),
            Role::Submitter(_) => Err(forbidden("this needs a worker or admin token".into())),
        }
    }

    /// 403 unless admin, or a submitter whose patterns cover `queue`.
    pub fn require_queue(&self, queue: &str) -> Result<(), ApiError> {
        match self {
            Role::Admin => Ok(()),
            Role::Submitter(patterns) if patterns.iter().any(|p| pattern_matches(p, queue)) => {
                Ok(())
            }
            Role::Submitter(patterns) => Err(forbidden(format!(
                "this token may not use queue `{queue}` (it may use: {})",
                patterns.join(", ")
            ))),
            Role::Worker => Err(forbidden("a worker token may not use job endpoints".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_cover_a_subtree_or_one_queue() {
        assert!(pattern_matches("root.etl.*", "root.etl"));
        assert!(pattern_matches("root.etl.*", "root.etl.daily"));
        assert!(!pattern_matches("root.etl.*", "root.etlx"));
        assert!(pattern_matches("root.default", "root.default"));
        assert!(!pattern_matches("root.default", "root.default.x"));
        assert!(pattern_matches("*", "root.anything"));
    }
}
