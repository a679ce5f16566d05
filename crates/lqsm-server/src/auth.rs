//! Bearer tokens and roles: `admin` may do everything, `submitter` may submit, read
//! and cancel jobs (and manage schedules) in the queues its patterns match, `reader` may
//! only read them, `worker` may use the worker endpoints. What shows the whole cluster
//! (every worker, the cluster summary, `/metrics`, listings across all queues) needs an
//! admin token or one whose patterns cover every queue (`*`). Every token has a name, the caller's identity (recorded as the submitter
//! of its jobs). With no tokens configured everyone is admin and `anonymous` (the
//! server then listens on loopback only).

use crate::config::{RoleName, TokenConfig};
use crate::error::ApiError;
use axum::http::{HeaderMap, StatusCode};
use lqsm_api::ErrorCode;
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
    /// Reads in matching queues.
    Reader(Vec<String>),
}

/// Who is calling and what they may do.
#[derive(Clone, Debug, PartialEq)]
pub struct Caller {
    /// The token's name (`anonymous` on a server without tokens).
    pub name: String,
    /// What it may do.
    pub role: Role,
}

impl Caller {
    /// The submitter recorded in a job: the token's name, none on an open server
    /// (shown as `anonymous`), so that such jobs carry nothing extra.
    pub fn submitter(&self) -> Option<String> {
        (self.name != lqsm_api::ANONYMOUS).then(|| self.name.clone())
    }
}

/// The configured tokens.
#[derive(Clone, Debug, Default)]
pub struct Auth {
    tokens: HashMap<String, Caller>,
}

impl Auth {
    /// From the config's tokens, naming the unnamed ones `<role>-<n>` (with a warning);
    /// refuses two tokens with one name or one secret, since a name is an identity.
    pub fn new(tokens: &[TokenConfig]) -> Result<Self, String> {
        let mut unnamed: HashMap<RoleName, usize> = HashMap::new();
        let mut names = std::collections::HashSet::new();
        let mut callers = HashMap::new();
        for (index, t) in tokens.iter().enumerate() {
            let name = match &t.name {
                Some(name) => {
                    if name.trim().is_empty() || name == lqsm_api::ANONYMOUS {
                        return Err(format!(
                            "tokens[{index}].name: `{name}` cannot name a token (empty, or reserved for callers of a server without tokens); choose another"
                        ));
                    }
                    name.clone()
                }
                None => {
                    let n = unnamed.entry(t.role).or_insert(0);
                    *n += 1;
                    let derived = format!("{}-{n}", t.role);
                    tracing::warn!(
                        token = index,
                        name = %derived,
                        "a [[tokens]] entry has no `name`; it is called `{derived}` (its jobs record that as their submitter); add `name = \"...\"` to give it a lasting identity"
                    );
                    derived
                }
            };
            if !names.insert(name.clone()) {
                return Err(format!(
                    "tokens[{index}]: two tokens are named `{name}`; give each token its own `name`"
                ));
            }
            let role = match t.role {
                RoleName::Admin => Role::Admin,
                RoleName::Submitter => Role::Submitter(t.queues.clone()),
                RoleName::Worker => Role::Worker,
                RoleName::Reader => Role::Reader(t.queues.clone()),
            };
            if callers
                .insert(t.secret(index)?, Caller { name, role })
                .is_some()
            {
                return Err(format!(
                    "tokens[{index}]: the same secret is configured twice; each token needs its own"
                ));
            }
        }
        Ok(Self { tokens: callers })
    }

    /// True when no token is configured.
    pub fn is_open(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The caller's role, or 401.
    pub fn role(&self, headers: &HeaderMap) -> Result<Role, ApiError> {
        self.caller(headers).map(|c| c.role)
    }

    /// The caller's identity and role, or 401.
    pub fn caller(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        if self.is_open() {
            return Ok(Caller {
                name: lqsm_api::ANONYMOUS.to_owned(),
                role: Role::Admin,
            });
        }
        let unauthorized = |message: &str| {
            ApiError::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, message)
        };
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
    ApiError::new(StatusCode::FORBIDDEN, ErrorCode::Forbidden, message)
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

/// 403 unless one of `patterns` covers `queue`.
fn covered(patterns: &[String], queue: &str) -> Result<(), ApiError> {
    if patterns.iter().any(|p| pattern_matches(p, queue)) {
        Ok(())
    } else {
        Err(forbidden(format!(
            "this token may not use queue `{queue}` (it may use: {})",
            patterns.join(", ")
        )))
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
            Role::Submitter(_) | Role::Reader(_) => {
                Err(forbidden("this needs a worker or admin token".into()))
            }
        }
    }

    /// 403 unless admin, or a submitter whose patterns cover `queue`: the right to change
    /// things in a queue (submit, cancel, retry, manage schedules).
    pub fn require_queue(&self, queue: &str) -> Result<(), ApiError> {
        match self {
            Role::Admin => Ok(()),
            Role::Submitter(patterns) => covered(patterns, queue),
            Role::Reader(_) => Err(forbidden(
                "a reader token may read, not change anything".into(),
            )),
            Role::Worker => Err(forbidden("a worker token may not use job endpoints".into())),
        }
    }

    /// 403 unless admin, or a submitter or reader whose patterns cover `queue`: the right
    /// to read a queue, its jobs and its schedules.
    pub fn require_read(&self, queue: &str) -> Result<(), ApiError> {
        match self {
            Role::Admin => Ok(()),
            Role::Submitter(patterns) | Role::Reader(patterns) => covered(patterns, queue),
            Role::Worker => Err(forbidden("a worker token may not use job endpoints".into())),
        }
    }

    /// 403 unless the token may read everything: admin, or a submitter or reader whose
    /// patterns cover every queue (`*`). What shows the whole cluster needs it.
    pub fn require_everything(&self) -> Result<(), ApiError> {
        match self {
            Role::Admin => Ok(()),
            Role::Submitter(patterns) | Role::Reader(patterns)
                if patterns.iter().any(|p| p == "*") =>
            {
                Ok(())
            }
            _ => Err(forbidden(
                "this shows the whole cluster: it needs an admin token, or one whose queues are `*`"
                    .into(),
            )),
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

    fn token(name: Option<&str>, secret: &str, role: RoleName) -> TokenConfig {
        TokenConfig {
            name: name.map(str::to_owned),
            token: secret.into(),
            token_file: None,
            token_env: None,
            role,
            queues: vec!["*".into()],
        }
    }

    fn caller_of(auth: &Auth, secret: &str) -> Caller {
        let mut headers = HeaderMap::new();
        headers.insert(
            axum::http::header::AUTHORIZATION,
            format!("Bearer {secret}").parse().expect("header"),
        );
        auth.caller(&headers).expect("known token")
    }

    #[test]
    fn unnamed_tokens_get_stable_names_by_role_and_order() {
        let auth = Auth::new(&[
            token(None, "a1", RoleName::Admin),
            token(Some("etl"), "s1", RoleName::Submitter),
            token(None, "s2", RoleName::Submitter),
            token(None, "a2", RoleName::Admin),
        ])
        .expect("valid");
        assert_eq!(caller_of(&auth, "a1").name, "admin-1");
        assert_eq!(caller_of(&auth, "a2").name, "admin-2");
        assert_eq!(caller_of(&auth, "s1").name, "etl");
        assert_eq!(caller_of(&auth, "s2").name, "submitter-1");
        assert_eq!(caller_of(&auth, "s1").submitter().as_deref(), Some("etl"));
    }

    #[test]
    fn a_name_is_an_identity_so_duplicates_and_anonymous_are_refused() {
        let err = Auth::new(&[
            token(Some("ci"), "a", RoleName::Admin),
            token(Some("ci"), "b", RoleName::Worker),
        ])
        .expect_err("duplicate");
        assert!(err.contains("two tokens are named `ci`"), "{err}");
        let err = Auth::new(&[
            token(Some("admin-1"), "a", RoleName::Admin),
            token(None, "b", RoleName::Admin),
        ])
        .expect_err("derived name collides");
        assert!(err.contains("`admin-1`"), "{err}");
        let err =
            Auth::new(&[token(Some("anonymous"), "a", RoleName::Admin)]).expect_err("reserved");
        assert!(err.contains("reserved"), "{err}");
    }

    #[test]
    fn an_open_server_calls_everyone_anonymous_and_records_no_submitter() {
        let caller = Auth::new(&[])
            .expect("valid")
            .caller(&HeaderMap::new())
            .expect("open");
        assert_eq!(caller.name, "anonymous");
        assert_eq!(caller.role, Role::Admin);
        assert_eq!(caller.submitter(), None);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // In tests a panic is the failure report.
mod secret_sources {
    use super::*;

    fn entry(token: &str, file: Option<std::path::PathBuf>, env: Option<&str>) -> TokenConfig {
        TokenConfig {
            name: Some("ops".into()),
            token: token.into(),
            token_file: file,
            token_env: env.map(str::to_owned),
            role: RoleName::Admin,
            queues: Vec::new(),
        }
    }

    #[test]
    fn a_secret_comes_inline_from_a_file_or_from_the_environment() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let file = dir.path().join("secret");
        std::fs::write(&file, "from-a-file\n").expect("written");
        assert_eq!(entry("inline", None, None).secret(0).unwrap(), "inline");
        assert_eq!(
            entry("", Some(file.clone()), None).secret(0).unwrap(),
            "from-a-file"
        );
        // PATH is set in every test environment; a real deployment names its own variable.
        let path = std::env::var("PATH").expect("PATH is set");
        assert_eq!(entry("", None, Some("PATH")).secret(0).unwrap(), path);
        let auth = Auth::new(&[entry("", Some(file.clone()), None)]).expect("valid");
        assert!(!auth.is_open());
    }

    #[test]
    fn a_missing_or_doubled_secret_is_refused_naming_the_entry() {
        let err = |t: TokenConfig| t.secret(2).unwrap_err();
        assert!(err(entry("", None, None)).starts_with("tokens[2].token:"));
        assert!(
            err(entry("x", Some("/nowhere".into()), None)).contains("one way only"),
            "{}",
            err(entry("x", Some("/nowhere".into()), None))
        );
        assert!(
            err(entry("", Some("/nowhere/secret".into()), None))
                .starts_with("tokens[2].token_file: cannot read /nowhere/secret")
        );
        assert!(
            err(entry("", None, Some("LQSM_SURELY_UNSET_VARIABLE")))
                .starts_with("tokens[2].token_env:")
        );
    }
}
