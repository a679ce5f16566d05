//! The request-decoding targets: whatever the server does with a request's bytes before
//! its handler's logic (routing, path parameters, query strings, JSON bodies, the
//! conversion of wire types into the core's), and the wire types' own decoding.
//!
//! The properties: nothing panics; every refusal is a structured error
//! (`{"error":{"code","message","field"}}`) that names the field at fault whenever it
//! blames one; the server never answers 500; and a body the wire types accept reads back
//! equal after being written out again.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use lqsm_api as api;
use lqsm_api::{ErrorCode, ErrorDetail};
use lqsm_server::jobserver::{AppState, parse_json};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};
use tower::ServiceExt;

/// The route taken when an input's first line is not `METHOD /uri`: the whole input is
/// then the body of a submit.
const FALLBACK_ROUTE: (&str, &str) = ("POST", "/v1/jobs");

/// The router and the runtime that drives it, built once per process (a fuzzer runs
/// millions of inputs through them).
struct Server {
    runtime: tokio::runtime::Runtime,
    router: axum::Router,
    // Held so that the role the handlers watch stays `Leader`.
    _role: tokio::sync::watch::Sender<lqsm_server::leadership::Role>,
}

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("a tokio runtime for the request target: {e}"));
        let (role, role_updates) =
            tokio::sync::watch::channel(lqsm_server::leadership::Role::Leader);
        let router = runtime.block_on(async {
            let state = AppState {
                scheduler: Arc::new(crate::stub::AcceptingScheduler::new()),
                auth: Arc::new(lqsm_server::auth::Auth::default()),
                limits: lqsm_server::config::Limits::default(),
                ready: Arc::new(AtomicBool::new(true)),
                metrics: None,
                role: role_updates,
                forwarder: lqsm_server::forwarding::Forwarder::new("fuzz", &[]),
                audit: Arc::new(lqsm_server::audit::AuditLog::log_only()),
                auth_failures: Arc::new(lqsm_server::auth_failures::AuthFailures::new(0)),
                history: Arc::new(lqsm_server::history::History::default()),
                tls: false,
            };
            lqsm_server::jobserver::router(state)
        });
        Server {
            runtime,
            router,
            _role: role,
        }
    })
}

/// A request read from a fuzz input: `METHOD /path?query` on the first line, the body
/// after it.
#[derive(Debug, PartialEq)]
pub struct RawRequest<'a> {
    /// The HTTP method.
    pub method: Method,
    /// The path and query, as given.
    pub uri: String,
    /// The body's bytes.
    pub body: &'a [u8],
}

impl<'a> RawRequest<'a> {
    /// Reads an input; one whose first line is not a request line is the body of a
    /// submit, so that no input is wasted.
    pub fn parse(data: &'a [u8]) -> Self {
        let (line, body) = match data.iter().position(|&b| b == b'\n') {
            Some(end) => (&data[..end], &data[end + 1..]),
            None => (data, &[][..]),
        };
        let parsed = std::str::from_utf8(line).ok().and_then(|line| {
            let (method, uri) = line.split_once(' ')?;
            let method = match method {
                "GET" => Method::GET,
                "POST" => Method::POST,
                "PATCH" => Method::PATCH,
                "PUT" => Method::PUT,
                "DELETE" => Method::DELETE,
                _ => return None,
            };
            uri.starts_with('/').then(|| (method, uri.to_owned()))
        });
        match parsed {
            Some((method, uri)) => Self { method, uri, body },
            None => Self {
                method: Method::POST,
                uri: FALLBACK_ROUTE.1.to_owned(),
                body: data,
            },
        }
    }

    /// The input that reads back as this request.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!("{} {}\n", self.method, self.uri).into_bytes();
        out.extend_from_slice(self.body);
        out
    }
}

/// Escapes what a URI may not hold (spaces, control characters, non-ASCII), leaving
/// what it may, including `%`: an input's own escapes stay as the fuzzer wrote them.
fn uri_text(uri: &str) -> String {
    let mut out = String::with_capacity(uri.len());
    for b in uri.bytes() {
        if b.is_ascii_graphic()
            && !matches!(
                b,
                b'"' | b'<' | b'>' | b'\\' | b'^' | b'`' | b'{' | b'|' | b'}'
            )
        {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The request target: sends the input through the real router (with a scheduler that
/// accepts everything, [`crate::stub`]) and checks the answer. Panics, with the reason,
/// when a property does not hold.
pub fn request(data: &[u8]) {
    let raw = RawRequest::parse(data);
    let Ok(request) = Request::builder()
        .method(raw.method.clone())
        .uri(uri_text(&raw.uri))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(raw.body.to_vec()))
    else {
        // Not a URI even escaped (e.g. `//` then a bad authority): no server sees it.
        return;
    };
    let server = server();
    let (status, bytes) = server.runtime.block_on(async {
        let response = match server.router.clone().oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap_or_else(|e| panic!("reading the answer's body failed: {e}"));
        (status, bytes)
    });
    if let Err(why) = check_answer(&raw, status, &bytes) {
        panic!(
            "{} {}: answered {status}: {why}\nanswer: {}",
            raw.method,
            raw.uri,
            String::from_utf8_lossy(&bytes)
        );
    }
}

/// Checks an answer of the router to `raw`.
fn check_answer(raw: &RawRequest<'_>, status: StatusCode, body: &[u8]) -> Result<(), String> {
    if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
        return Err("a request must never make the server fail".into());
    }
    if status.is_success() || status.is_redirection() {
        // A batch answers 200 with an error per refused item.
        if let Ok(value) = serde_json::from_slice::<serde_json::Value>(body)
            && let Some(items) = value.get("results").and_then(|r| r.as_array())
        {
            for item in items {
                if let Some(error) = item.get("error").filter(|e| !e.is_null()) {
                    let detail: ErrorDetail = serde_json::from_value(error.clone())
                        .map_err(|e| format!("a batch item's error is not an ErrorDetail: {e}"))?;
                    check_refusal(&detail, raw.body)?;
                }
            }
        }
        return Ok(());
    }
    let error: api::ErrorBody = serde_json::from_slice(body)
        .map_err(|e| format!("a refusal must be {{\"error\":{{...}}}}, this one is not ({e})"))?;
    if status == StatusCode::SERVICE_UNAVAILABLE {
        // Only the stub's "stopped": the request was decoded and handed on.
        return if error.error.code == ErrorCode::Unavailable {
            Ok(())
        } else {
            Err(format!("503 with code {}", error.error.code))
        };
    }
    check_refusal(&error.error, raw.body)
}

/// The property every refusal must have: a message, and a field named whenever the code
/// blames one. A bad value may go unnamed only when it is the whole body (not a JSON
/// object where one is expected).
pub fn check_refusal(detail: &ErrorDetail, body: &[u8]) -> Result<(), String> {
    if detail.message.trim().is_empty() {
        return Err("the refusal has no message".into());
    }
    let named = detail.field.as_deref().is_some_and(|f| !f.is_empty())
        // A key that is the empty string is named by the message alone (`` ` ` ``).
        || detail.message.contains("unknown field ``");
    match detail.code {
        ErrorCode::MissingField | ErrorCode::UnknownField if !named => {
            Err(format!("a {} refusal must name the field", detail.code))
        }
        ErrorCode::InvalidField if !named => {
            let whole_body_wrong = !matches!(
                serde_json::from_slice::<serde_json::Value>(body),
                Ok(serde_json::Value::Object(_))
            );
            if whole_body_wrong {
                Ok(())
            } else {
                Err("an invalid_field refusal of a JSON object must name the field".into())
            }
        }
        _ => Ok(()),
    }
}

/// Declares the wire types the type target decodes, by name.
macro_rules! wire_types {
    ($($name:ident),+ $(,)?) => {
        /// The wire types the type target decodes: the request bodies the server reads
        /// with `parse_json` as they are, and the answers a client or worker decodes.
        /// (`CreateQueue` and `CreateQueues` are read in two steps, so that errors keep
        /// their field names: the request target covers them.)
        pub const WIRE_TYPES: &[&str] = &[$(stringify!($name)),+];

        fn decode_named(name: &str, body: &[u8]) -> Result<(), String> {
            match name {
                $(stringify!($name) => round_trip::<api::$name>(body),)+
                _ => Ok(()),
            }
        }
    };
}

wire_types!(
    SubmitJob,
    SubmitBatch,
    SubmitWorkflow,
    CancelJobs,
    QueueSettings,
    RegisterWorker,
    PollRequest,
    CreateSchedule,
    UpdateSchedule,
    PollResponse,
    JobView,
    QueueView,
    BatchResult,
    ErrorBody,
);

/// The type target: the input's first line names a wire type (one of [`WIRE_TYPES`];
/// otherwise the first byte picks one and the whole input is the body), the rest is the
/// body the server's JSON reader (`parse_json`) decodes as it. Panics, with the reason,
/// when a property does not hold.
pub fn decode(data: &[u8]) {
    let (name, body) = split_type(data);
    if let Err(why) = decode_named(name, body) {
        panic!("{name}: {why}\nbody: {}", String::from_utf8_lossy(body));
    }
}

/// The wire type an input names and its body.
pub fn split_type(data: &[u8]) -> (&'static str, &[u8]) {
    if let Some(end) = data.iter().position(|&b| b == b'\n')
        && let Some(name) = WIRE_TYPES.iter().find(|n| n.as_bytes() == &data[..end])
    {
        return (name, &data[end + 1..]);
    }
    let pick = data.first().map_or(0, |&b| usize::from(b)) % WIRE_TYPES.len();
    (WIRE_TYPES[pick], data)
}

fn round_trip<T>(body: &[u8]) -> Result<(), String>
where
    T: DeserializeOwned + Serialize + PartialEq + Debug,
{
    let plain = serde_json::from_slice::<T>(body).is_ok();
    let value = match parse_json::<T>(body) {
        Ok(value) => value,
        Err(e) => {
            if plain {
                return Err(format!(
                    "serde accepts the body but the server refuses it: {e:?}"
                ));
            }
            if e.status != StatusCode::BAD_REQUEST {
                return Err(format!(
                    "a body that does not decode is a 400, not {}",
                    e.status
                ));
            }
            return check_refusal(&e.detail, body);
        }
    };
    if !plain {
        return Err("the server accepts a body serde refuses".into());
    }
    let written = serde_json::to_vec(&value).map_err(|e| format!("cannot write it back: {e}"))?;
    let again: T = parse_json(&written).map_err(|e| {
        format!(
            "what it wrote back does not read: {e:?}\nwritten: {}",
            String::from_utf8_lossy(&written)
        )
    })?;
    if again != value {
        return Err(format!(
            "it reads back different:\nfirst {value:?}\nthen  {again:?}\nwritten: {}",
            String::from_utf8_lossy(&written)
        ));
    }
    let rewritten = serde_json::to_vec(&again).map_err(|e| format!("cannot write it back: {e}"))?;
    if rewritten != written {
        return Err("writing it twice gives two texts".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_line_splits_from_its_body() {
        let raw = RawRequest::parse(b"PATCH /v1/queues/root.a?x=1\n{\"weight\":2}");
        assert_eq!(raw.method, Method::PATCH);
        assert_eq!(raw.uri, "/v1/queues/root.a?x=1");
        assert_eq!(raw.body, b"{\"weight\":2}");
        assert_eq!(RawRequest::parse(&raw.to_bytes()), raw);
    }

    #[test]
    fn an_input_without_a_request_line_is_a_submits_body() {
        let raw = RawRequest::parse(b"{\"queue\":1}");
        assert_eq!((raw.method, raw.uri.as_str()), (Method::POST, "/v1/jobs"));
        assert_eq!(raw.body, b"{\"queue\":1}");
    }

    #[test]
    fn a_refusal_that_blames_no_field_inside_an_object_breaks_the_property() {
        let detail = ErrorDetail {
            code: ErrorCode::InvalidField,
            message: "bad".into(),
            field: None,
        };
        assert!(check_refusal(&detail, b"{\"a\":1}").is_err());
        assert!(check_refusal(&detail, b"[1]").is_ok());
        let unnamed_unknown = ErrorDetail {
            code: ErrorCode::UnknownField,
            ..detail
        };
        assert!(check_refusal(&unnamed_unknown, b"[1]").is_err());
    }

    #[test]
    fn uri_text_escapes_only_what_a_uri_cannot_hold() {
        assert_eq!(
            uri_text("/v1/queues/root.a%2Eb?x=1"),
            "/v1/queues/root.a%2Eb?x=1"
        );
        assert_eq!(uri_text("/a b/{c}é"), "/a%20b/%7Bc%7D%C3%A9");
    }
}
