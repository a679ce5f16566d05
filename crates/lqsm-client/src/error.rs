//! What can go wrong talking to the server, told so that a person knows what to do.

use lqsm_api::{ErrorCode, ErrorDetail};
use std::time::Duration;

/// Where the hint about tokens points people.
const TOKEN_HINT: &str = "pass a valid token with --token or LQSM_TOKEN";

/// What to check when a connection failed with `cause`.
fn unreachable_hint(cause: &str) -> &'static str {
    let lower = cause.to_ascii_lowercase();
    if lower.contains("certificate") {
        "does the server's certificate name this address, and is its CA trusted? (--ca-file or LQSM_CA_FILE)"
    } else if lower.contains("invalid http version") {
        "does the server serve HTTPS? (then use https://)"
    } else {
        "is `lqsm server` running? (set --server or LQSM_SERVER)"
    }
}

/// A failed call to the LQSM server.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server URL given to [`Client::new`](crate::Client::new) cannot be used.
    #[error(
        "`{url}` is not a usable LQSM server URL: {reason} (expected e.g. http://127.0.0.1:7420)"
    )]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// The CA file given to [`Client::with_ca_file`](crate::Client::with_ca_file)
    /// cannot be read or holds no PEM certificate.
    #[error("the CA file `{path}` cannot be used: {reason} (give a PEM file of CA certificates)")]
    CaFile {
        /// The file as given.
        path: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// No connection could be made, or it broke before an answer arrived.
    #[error(
        "cannot reach the LQSM server at {url}: {cause}; {}",
        unreachable_hint(cause)
    )]
    Unreachable {
        /// The server's base URL.
        url: String,
        /// The innermost cause, for people (`Connection refused (os error 111)`).
        cause: String,
        /// The transport error.
        #[source]
        source: reqwest::Error,
    },
    /// The server accepted the connection but did not answer in time.
    #[error(
        "the LQSM server at {url} did not answer within {}; it may be overloaded or stuck (check its log and /readyz)",
        lqsm_api::human_duration(*after)
    )]
    Timeout {
        /// The server's base URL.
        url: String,
        /// How long the client waited.
        after: Duration,
    },
    /// The server does not know the token, or none was given when one is needed (401).
    #[error("the server refused the request: {message}; {TOKEN_HINT}")]
    Unauthorized {
        /// The server's explanation.
        message: String,
    },
    /// The token is known but its role does not allow this (403).
    #[error(
        "this token may not do that: {message}; use a token whose role allows it (--token or LQSM_TOKEN)"
    )]
    Forbidden {
        /// The server's explanation.
        message: String,
    },
    /// The server refused the request and said why.
    #[error("{}", api_message(*status, error))]
    Api {
        /// HTTP status.
        status: u16,
        /// The server's error body: code, message, and the field at fault.
        error: ErrorDetail,
    },
    /// The server refused the request with a body that is not LQSM's error shape (a
    /// proxy's page, say, or an error code newer than this client).
    #[error("the server answered HTTP {status}: {message}")]
    Http {
        /// HTTP status.
        status: u16,
        /// The start of the body, or what the status means when there was none.
        message: String,
    },
    /// The server answered something that is not what this client expects.
    #[error(
        "the server at {url} answered {status} with a body that is not {what}: {reason}; are client and server the same version?"
    )]
    Decode {
        /// The server's base URL.
        url: String,
        /// HTTP status of the answer.
        status: u16,
        /// What was expected (`a JobView`).
        what: &'static str,
        /// What did not fit.
        reason: String,
    },
}

fn api_message(status: u16, error: &ErrorDetail) -> String {
    match &error.field {
        Some(field) if !field.is_empty() => format!(
            "{} (field `{field}`; HTTP {status}, code `{}`)",
            error.message, error.code
        ),
        _ => format!("{} (HTTP {status}, code `{}`)", error.message, error.code),
    }
}

impl ClientError {
    /// The HTTP status the server answered with, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Api { status, .. } | Self::Decode { status, .. } | Self::Http { status, .. } => {
                Some(*status)
            }
            Self::Unauthorized { .. } => Some(401),
            Self::Forbidden { .. } => Some(403),
            _ => None,
        }
    }

    /// The server's machine-readable error code, when it answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Api { error, .. } => Some(error.code),
            Self::Unauthorized { .. } => Some(ErrorCode::Unauthorized),
            Self::Forbidden { .. } => Some(ErrorCode::Forbidden),
            _ => None,
        }
    }

    /// Whether the server answered 404 (no such job, queue or endpoint).
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    /// Whether the server asks a worker to register again (it restarted or lost it).
    pub fn is_register_again(&self) -> bool {
        self.code() == Some(ErrorCode::RegisterAgain)
    }

    /// The server refused a poll sent for an earlier registration of the worker than
    /// its latest (`409 stale_registration`): nothing was taken from it.
    pub fn is_stale_registration(&self) -> bool {
        self.code() == Some(ErrorCode::StaleRegistration)
    }

    /// Whether trying the same request later may work: the server was unreachable,
    /// slow, unavailable (503), failed inside (5xx), or holds back this address after
    /// failed authentications (429).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Unreachable { .. } | Self::Timeout { .. } => true,
            Self::Api { status, .. } | Self::Decode { status, .. } | Self::Http { status, .. } => {
                *status >= 500 || *status == 429
            }
            _ => false,
        }
    }
}

/// The innermost cause of a transport error: that is the one that says what happened
/// (`Connection refused`), the outer ones only say where.
pub(crate) fn root_cause(err: &reqwest::Error) -> String {
    let mut cause: &dyn std::error::Error = err;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, code: ErrorCode, field: Option<&str>) -> ClientError {
        ClientError::Api {
            status,
            error: ErrorDetail {
                code,
                message: "queue `root.nope` does not exist (known: root.default)".into(),
                field: field.map(Into::into),
            },
        }
    }

    #[test]
    fn api_errors_show_the_servers_message_and_field() {
        let text = api(404, ErrorCode::NotFound, Some("queue")).to_string();
        assert!(
            text.starts_with("queue `root.nope` does not exist"),
            "{text}"
        );
        assert!(text.contains("field `queue`"), "{text}");
        assert!(text.contains("404"), "{text}");
        let text = api(404, ErrorCode::NotFound, None).to_string();
        assert!(!text.contains("field"), "{text}");
    }

    #[test]
    fn auth_errors_tell_how_to_give_a_token() {
        let text = ClientError::Unauthorized {
            message: "unknown token".into(),
        }
        .to_string();
        assert!(
            text.contains("LQSM_TOKEN") && text.contains("--token"),
            "{text}"
        );
        let text = ClientError::Forbidden {
            message: "submitters may not manage queues".into(),
        }
        .to_string();
        assert!(text.contains("LQSM_TOKEN"), "{text}");
    }

    #[test]
    fn only_unreachable_slow_and_5xx_answers_are_transient() {
        assert!(api(503, ErrorCode::Unavailable, None).is_transient());
        assert!(api(429, ErrorCode::TooManyRequests, None).is_transient());
        assert!(!api(400, ErrorCode::InvalidField, None).is_transient());
        assert!(!api(409, ErrorCode::RegisterAgain, None).is_transient());
        assert!(api(409, ErrorCode::RegisterAgain, Some("id")).is_register_again());
        assert!(
            ClientError::Timeout {
                url: "http://x".into(),
                after: Duration::from_secs(1)
            }
            .is_transient()
        );
    }
}
