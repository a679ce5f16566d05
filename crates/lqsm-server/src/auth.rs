//! Bearer tokens and roles.
//!
//! | role | may |
//! |---|---|
//! | `admin` | everything |
//! | `queue-admin` | in the subtrees its patterns name (`root.etl.*`): create, update and delete the queues below each subtree's root, stop, start and drain any queue of it, and everything a submitter may do there |
//! | `submitter` | submit, read, cancel and retry jobs, manage schedules and workflows, in the queues its patterns match |
//! | `reader` | read jobs, queues, schedules and workflows in the queues its patterns match |
//! | `worker` | the worker endpoints (register, poll, drain itself), the worker list |
//!
//! A queue-admin's subtree root keeps the settings an admin gave it: its guarantee and
//! ceiling are a share of its parent, which is not the queue-admin's to hand out, so it
//! may not update or delete it, nor create a sibling of it; and it may not turn
//! preemption off anywhere (that would keep borrowed capacity from the other teams). This
//! is YARN's "administer queue" right, extended to the queues below.
//!
//! Reads follow the patterns: a token limited to some queues sees, in the queue tree,
//! the queues its patterns cover and, to place them, their ancestors (marked
//! `placement_only`, without their figures or their other children). What shows the
//! whole cluster (every worker, the cluster summary, `/metrics`, job listings across all
//! queues) needs an admin token or one whose patterns cover every queue (`*`), whatever
//! its role besides worker (workers list the workers). Every token has a name, the
//! caller's identity (recorded as the submitter of its jobs and in the audit log). With
//! no tokens configured everyone is admin and `anonymous` (the server then listens on
//! loopback only).

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
    /// The queues of the subtrees its patterns name, and jobs in them.
    QueueAdmin(Vec<String>),
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
                RoleName::QueueAdmin => Role::QueueAdmin(t.queues.clone()),
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

/// The queue a pattern is anchored at: `root.etl` for `root.etl.*` and for `root.etl`,
/// `root` for `*`.
fn anchor(pattern: &str) -> &str {
    if pattern == "*" {
        return "root";
    }
    pattern.strip_suffix(".*").unwrap_or(pattern)
}

/// Whether `path` lies strictly below `ancestor`.
fn strictly_below(path: &str, ancestor: &str) -> bool {
    path.len() > ancestor.len()
        && path.starts_with(ancestor)
        && path.as_bytes().get(ancestor.len()) == Some(&b'.')
}

/// Which queues of the tree a caller sees, and how.
#[derive(Clone, Debug)]
pub enum QueueSight {
    /// Every queue, whole.
    Everything,
    /// The queues these patterns cover, whole, and their ancestors, to place them.
    Patterns(Vec<String>),
}

impl QueueSight {
    /// Whether the queue is shown with its figures.
    pub fn whole(&self, path: &str) -> bool {
        match self {
            QueueSight::Everything => true,
            QueueSight::Patterns(patterns) => patterns.iter().any(|p| pattern_matches(p, path)),
        }
    }

    /// Whether the queue is shown at all: whole, or as the ancestor of one shown whole.
    pub fn shows(&self, path: &str) -> bool {
        match self {
            QueueSight::Everything => true,
            QueueSight::Patterns(patterns) => {
                self.whole(path) || patterns.iter().any(|p| strictly_below(anchor(p), path))
            }
        }
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
            Role::QueueAdmin(_) | Role::Submitter(_) | Role::Reader(_) => {
                Err(forbidden("this needs a worker or admin token".into()))
            }
        }
    }

    /// 403 unless admin, or a queue-admin or submitter whose patterns cover `queue`: the
    /// right to change things in a queue (submit, cancel, retry, manage schedules).
    pub fn require_queue(&self, queue: &str) -> Result<(), ApiError> {
        match self {
            Role::Admin => Ok(()),
            Role::QueueAdmin(patterns) | Role::Submitter(patterns) => covered(patterns, queue),
            Role::Reader(_) => Err(forbidden(
                "a reader token may read, not change anything".into(),
            )),
            Role::Worker => Err(forbidden("a worker token may not use job endpoints".into())),
        }
    }

    /// 403 unless admin, or a token other than a worker's whose patterns cover `queue`:
    /// the right to read a queue, its jobs and its schedules.
    pub fn require_read(&self, queue: &str) -> Result<(), ApiError> {
        match self {
            Role::Admin => Ok(()),
            Role::QueueAdmin(patterns) | Role::Submitter(patterns) | Role::Reader(patterns) => {
                covered(patterns, queue)
            }
            Role::Worker => Err(forbidden("a worker token may not use job endpoints".into())),
        }
    }

    /// 403 unless the token may read everything: admin, or a queue-admin, submitter or
    /// reader whose patterns cover every queue (`*`). What shows the whole cluster needs it.
    pub fn require_everything(&self) -> Result<(), ApiError> {
        match self {
            Role::Admin => Ok(()),
            Role::QueueAdmin(patterns) | Role::Submitter(patterns) | Role::Reader(patterns)
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

    /// Which queues of the tree this token sees; 403 for a worker's.
    pub fn queue_sight(&self) -> Result<QueueSight, ApiError> {
        if self.require_everything().is_ok() {
            return Ok(QueueSight::Everything);
        }
        match self {
            Role::QueueAdmin(patterns) | Role::Submitter(patterns) | Role::Reader(patterns) => {
                Ok(QueueSight::Patterns(patterns.clone()))
            }
            Role::Admin | Role::Worker => Err(forbidden(
                "a worker token may not read the queue tree".into(),
            )),
        }
    }

    /// 403 unless admin or a queue-admin of some subtree: who may try queue changes at all.
    pub fn require_any_queue_admin(&self) -> Result<(), ApiError> {
        match self {
            Role::Admin | Role::QueueAdmin(_) => Ok(()),
            _ => Err(forbidden(
                "changing queues needs an admin or queue-admin token".into(),
            )),
        }
    }

    /// 403 unless admin, or a queue-admin whose patterns cover `queue`: the right to
    /// stop, start and drain it (its subtree's root included).
    pub fn require_queue_admin(&self, queue: &str) -> Result<(), ApiError> {
        match self {
            Role::Admin => Ok(()),
            Role::QueueAdmin(patterns) => covered(patterns, queue).map_err(|_| {
                forbidden(format!(
                    "this token administers the queues of {}, not `{queue}`",
                    patterns.join(", ")
                ))
            }),
            _ => self.require_any_queue_admin(),
        }
    }

    /// 403 unless admin, or a queue-admin with `queue` strictly below the root of one of
    /// its subtrees: the right to create, update and delete it. A subtree's root is the
    /// admin's: its settings are its share of a parent the queue-admin does not administer.
    pub fn require_queue_settings(&self, queue: &str) -> Result<(), ApiError> {
        let Role::QueueAdmin(patterns) = self else {
            return match self {
                Role::Admin => Ok(()),
                _ => self.require_any_queue_admin(),
            };
        };
        if patterns
            .iter()
            .any(|p| pattern_matches(p, queue) && strictly_below(queue, anchor(p)))
        {
            return Ok(());
        }
        if patterns.iter().any(|p| anchor(p) == queue) {
            return Err(forbidden(format!(
                "`{queue}` is the root of this token's subtree: its settings are its share of its parent, set by an admin; a queue-admin creates, updates and deletes the queues below it (and may stop, start and drain it)"
            )));
        }
        Err(forbidden(format!(
            "this token administers the queues below {}, not `{queue}`",
            patterns
                .iter()
                .map(|p| format!("`{}`", anchor(p)))
                .collect::<Vec<_>>()
                .join(", ")
        )))
    }

    /// The role's name in the config (`admin`, `queue-admin`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::QueueAdmin(_) => "queue-admin",
            Role::Submitter(_) => "submitter",
            Role::Reader(_) => "reader",
            Role::Worker => "worker",
        }
    }

    /// Whether this token is a queue-admin (bound by the limits of its subtrees), not
    /// an admin.
    pub fn is_queue_admin(&self) -> bool {
        matches!(self, Role::QueueAdmin(_))
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

    fn patterns(list: &[&str]) -> Vec<String> {
        list.iter().map(|p| (*p).to_owned()).collect()
    }

    #[test]
    fn a_queue_admin_manages_below_its_subtrees_roots_and_operates_the_roots() {
        let role = Role::QueueAdmin(patterns(&["root.etl.*", "root.ml"]));
        assert!(role.require_queue_settings("root.etl.daily").is_ok());
        assert!(role.require_queue_settings("root.etl.daily.x").is_ok());
        for (queue, says) in [
            ("root.etl", "root of this token's subtree"),
            ("root.ml", "root of this token's subtree"),
            ("root.ml.x", "not `root.ml.x`"),
            ("root.etlx", "not `root.etlx`"),
            ("root", "not `root`"),
        ] {
            let refused = role.require_queue_settings(queue).expect_err(queue);
            assert_eq!(refused.status, StatusCode::FORBIDDEN);
            assert!(
                refused.detail.message.contains(says),
                "{queue}: {refused:?}"
            );
        }
        assert!(role.require_queue_admin("root.etl").is_ok());
        assert!(role.require_queue_admin("root.ml").is_ok());
        assert!(role.require_queue_admin("root.default").is_err());
        // A submitter of the same queues manages none of them.
        let submitter = Role::Submitter(patterns(&["root.etl.*"]));
        assert!(submitter.require_queue_settings("root.etl.daily").is_err());
        assert!(submitter.require_queue_admin("root.etl").is_err());
        // `*` anchors at root: every queue but root.
        let everything = Role::QueueAdmin(patterns(&["*"]));
        assert!(everything.require_queue_settings("root.a").is_ok());
        assert!(everything.require_queue_settings("root").is_err());
        assert!(Role::Admin.require_queue_settings("root").is_ok());
    }

    #[test]
    fn a_token_sees_its_queues_whole_and_their_ancestors_only_to_place_them() {
        let sight = Role::Reader(patterns(&["root.etl.daily", "root.ml.*"]))
            .queue_sight()
            .expect("a reader reads queues");
        for (path, whole, shown) in [
            ("root", false, true),
            ("root.etl", false, true),
            ("root.etl.daily", true, true),
            ("root.etl.daily.x", false, false),
            ("root.etl.hourly", false, false),
            ("root.ml", true, true),
            ("root.ml.a.b", true, true),
            ("root.mlx", false, false),
            ("root.default", false, false),
        ] {
            assert_eq!(sight.whole(path), whole, "{path} whole");
            assert_eq!(sight.shows(path), shown, "{path} shown");
        }
        assert!(matches!(
            Role::Reader(patterns(&["*"])).queue_sight(),
            Ok(QueueSight::Everything)
        ));
        assert!(matches!(
            Role::Admin.queue_sight(),
            Ok(QueueSight::Everything)
        ));
        assert!(Role::Worker.queue_sight().is_err());
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
