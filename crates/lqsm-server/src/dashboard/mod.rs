//! The web dashboard at `/ui`, served by every server.
//!
//! Pages are HTML rendered on the server (maud, which escapes every value it inserts)
//! with htmx for partial updates and a server-sent-events stream for the figures that
//! change every second; both scripts are vendored in `assets/vendor` and embedded in the
//! binary, so the dashboard works offline and needs no build step.
//!
//! The dashboard is a client of the server's own HTTP API: every page and action is one
//! or a few calls into the API router, in process, with the person's token. So it sees
//! exactly what the token may see and does only what it may do, through the same checks,
//! audit log and, on a follower, the same passing of calls to the leader.
//!
//! Security: a person logs in with a token, kept in an `HttpOnly`, `SameSite=Strict`
//! cookie (`Secure` under TLS) and never put in a URL. Every action is a POST carrying a
//! CSRF token derived from the session (SHA-256 of a tag and the token; on a server
//! without tokens, of a secret drawn at start), which a page of another site cannot read.
//! Every answer carries a Content-Security-Policy that allows scripts and styles from
//! this server only: no inline script runs, whatever text a job carries.

mod charts;
mod pages;

use crate::jobserver::AppState;
use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use lqsm_api as api;
use maud::{DOCTYPE, Markup, html};
use serde::de::DeserializeOwned;
use std::net::SocketAddr;
use std::sync::Arc;
use tower::ServiceExt;

/// The cookie holding a logged-in person's token (hex-encoded).
const SESSION_COOKIE: &str = "lqsm_session";

/// The largest API answer a page reads.
const MAX_ANSWER_BYTES: usize = 64 << 20;

/// What every dashboard handler needs.
#[derive(Clone)]
pub struct Ui {
    /// The API, called in process.
    api: Router,
    /// The server's state (tokens, TLS).
    state: AppState,
    /// Drawn at start: the CSRF secret of a server without tokens.
    open_secret: Arc<[u8; 32]>,
}

/// The dashboard's routes (no fallback: they are merged into the API's router).
pub fn router(api: Router, state: AppState) -> Router {
    let mut open_secret = [0u8; 32];
    // With no randomness the secret stays zero; tokens then keep the dashboard safe,
    // and a server without tokens listens on loopback only.
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut open_secret);
    let ui = Ui {
        api,
        state,
        open_secret: Arc::new(open_secret),
    };
    Router::new()
        .route("/ui", get(pages::overview))
        .route("/ui/", get(|| async { Redirect::to("/ui") }))
        .route("/ui/login", get(pages::login_form).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/events", get(pages::events))
        .route("/ui/queues", get(pages::queues))
        .route("/ui/queues/rows", get(pages::queue_rows))
        .route("/ui/queues/action", post(pages::queue_action))
        .route("/ui/jobs", get(pages::jobs))
        .route("/ui/jobs/{id}", get(pages::job))
        .route("/ui/jobs/{id}/logs", get(pages::job_logs))
        .route("/ui/jobs/{id}/action", post(pages::job_action))
        .route("/ui/workers", get(pages::workers))
        .route("/ui/workers/{id}/action", post(pages::worker_action))
        .route("/ui/schedules", get(pages::schedules))
        .route("/ui/schedules/{name}/action", post(pages::schedule_action))
        .route("/ui/workflows/{id}", get(pages::workflow))
        .route("/ui/assets/{file}", get(asset))
        .layer(axum::middleware::from_fn(security_headers))
        .with_state(ui)
}

/// Headers on every dashboard answer: the Content-Security-Policy and its companions, and
/// the time the server took (`Server-Timing`, which browsers show and the dashboard's
/// benchmark reads).
async fn security_headers(request: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let from_htmx = request.headers().contains_key("hx-request");
    let mut response = next.run(request).await;
    if from_htmx
        && response
            .headers()
            .get(header::LOCATION)
            .is_some_and(|l| l == "/ui/login")
    {
        // A fragment's request (a live block reloading) whose session ended: a redirect
        // would be followed inside the page and put the login form in the block; htmx
        // changes the whole page on `HX-Redirect` instead.
        response = ([("hx-redirect", HeaderValue::from_static("/ui/login"))], "").into_response();
    }
    let took = started.elapsed();
    let headers = response.headers_mut();
    if let Ok(value) =
        HeaderValue::from_str(&format!("render;dur={:.3}", took.as_secs_f64() * 1000.0))
    {
        headers.insert("server-timing", value);
    }
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// The embedded assets: the vendored scripts (with their licences) and our stylesheet.
async fn asset(axum::extract::Path(file): axum::extract::Path<String>) -> Response {
    let (body, kind): (&'static [u8], &str) = match file.as_str() {
        "htmx.min.js" => (
            include_bytes!("../../assets/vendor/htmx-2.0.11.min.js"),
            "text/javascript; charset=utf-8",
        ),
        "htmx-ext-sse.js" => (
            include_bytes!("../../assets/vendor/htmx-ext-sse-2.2.4.js"),
            "text/javascript; charset=utf-8",
        ),
        "dashboard.css" => (
            include_bytes!("../../assets/dashboard.css"),
            "text/css; charset=utf-8",
        ),
        "favicon.svg" => (include_bytes!("../../assets/favicon.svg"), "image/svg+xml"),
        "LICENSES.txt" => (
            include_bytes!("../../assets/vendor/LICENSES.txt"),
            "text/plain; charset=utf-8",
        ),
        _ => return (StatusCode::NOT_FOUND, "no such asset").into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}

/// The connection's address, when the server knows it (the API's failed-login limit
/// counts by address, so calls made for a person carry theirs).
#[derive(Clone, Copy)]
pub struct Peer(Option<ConnectInfo<SocketAddr>>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Peer(
            parts.extensions.get::<ConnectInfo<SocketAddr>>().copied(),
        ))
    }
}

/// Who is looking: their token (none on a server without tokens), what they may do, and
/// where they connect from (the API's failed-login limit counts by address).
pub struct Session {
    token: Option<String>,
    caller: crate::auth::Caller,
    peer: Option<ConnectInfo<SocketAddr>>,
    csrf: String,
}

/// Why a page could not be shown.
pub enum UiError {
    /// Not logged in (or the token is no longer valid): to the login page.
    Login,
    /// The API refused or failed: its status and message.
    Api(StatusCode, String),
    /// Bad input in the dashboard's own forms.
    BadRequest(String),
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        match self {
            UiError::Login => Redirect::to("/ui/login").into_response(),
            UiError::Api(status, message) => (
                status,
                Html(page_shell("Error", "", None, error_box(&message)).into_string()),
            )
                .into_response(),
            UiError::BadRequest(message) => (
                StatusCode::BAD_REQUEST,
                Html(page_shell("Error", "", None, error_box(&message)).into_string()),
            )
                .into_response(),
        }
    }
}

fn error_box(message: &str) -> Markup {
    html! { p.error role="alert" { (message) } }
}

impl Ui {
    /// The session of a request: from its cookie, or the open server's anonymous admin.
    fn session(&self, headers: &HeaderMap, Peer(peer): Peer) -> Result<Session, UiError> {
        if self.state.auth.is_open() {
            let caller = self
                .state
                .auth
                .caller(&HeaderMap::new())
                .map_err(|_| UiError::Login)?;
            return Ok(Session {
                token: None,
                caller,
                peer,
                csrf: csrf_token(&self.open_secret[..]),
            });
        }
        let token = session_token(headers).ok_or(UiError::Login)?;
        let caller = self
            .state
            .auth
            .caller(&bearer(&token))
            .map_err(|_| UiError::Login)?;
        Ok(Session {
            csrf: csrf_token(token.as_bytes()),
            token: Some(token),
            caller,
            peer,
        })
    }

    /// Checks an action's CSRF token (a form field or the `x-csrf-token` header).
    fn check_csrf(
        &self,
        session: &Session,
        headers: &HeaderMap,
        field: Option<&str>,
    ) -> Result<(), UiError> {
        let given = field.or_else(|| headers.get("x-csrf-token").and_then(|v| v.to_str().ok()));
        // A browser says where a request comes from; one from another site is refused
        // even before the token is compared.
        if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
            && site != "same-origin"
            && site != "none"
        {
            return Err(UiError::Api(
                StatusCode::FORBIDDEN,
                "this action came from another site; it was refused".into(),
            ));
        }
        match given {
            Some(given) if constant_time_eq(given.as_bytes(), session.csrf.as_bytes()) => Ok(()),
            _ => Err(UiError::Api(
                StatusCode::FORBIDDEN,
                "the action's CSRF token is missing or wrong: reload the page and try again".into(),
            )),
        }
    }

    /// Calls the API in process with the session's token; the status, headers and body.
    async fn call(
        &self,
        session: &Session,
        method: Method,
        uri: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<(StatusCode, HeaderMap, axum::body::Bytes), UiError> {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(token) = &session.token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let body = match body {
            Some(value) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                Body::from(value.to_string())
            }
            None => Body::empty(),
        };
        let mut request = request
            .body(body)
            .map_err(|e| UiError::BadRequest(format!("cannot form the call {uri}: {e}")))?;
        if let Some(peer) = session.peer {
            request.extensions_mut().insert(peer);
        }
        let response = match self.api.clone().oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        let (parts, body) = response.into_parts();
        let bytes = axum::body::to_bytes(body, MAX_ANSWER_BYTES)
            .await
            .map_err(|e| UiError::Api(StatusCode::BAD_GATEWAY, format!("reading {uri}: {e}")))?;
        if parts.status == StatusCode::UNAUTHORIZED {
            return Err(UiError::Login);
        }
        if !parts.status.is_success() {
            let message = serde_json::from_slice::<api::ErrorBody>(&bytes)
                .map(|e| e.error.message)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
            return Err(UiError::Api(parts.status, message));
        }
        Ok((parts.status, parts.headers, bytes))
    }

    /// A GET of the API, decoded.
    async fn get<T: DeserializeOwned>(&self, session: &Session, uri: &str) -> Result<T, UiError> {
        let (_, _, bytes) = self.call(session, Method::GET, uri, None).await?;
        serde_json::from_slice(&bytes).map_err(|e| {
            UiError::Api(
                StatusCode::BAD_GATEWAY,
                format!("the answer to {uri} could not be read: {e}"),
            )
        })
    }
}

/// The `Authorization` header of a token.
fn bearer(token: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_str(&format!("Bearer {token}")) {
        headers.insert(header::AUTHORIZATION, value);
    }
    headers
}

/// The token in the session cookie, if any.
fn session_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .and_then(|(_, value)| hex_decode(value))
        .and_then(|bytes| String::from_utf8(bytes).ok())
}

/// The CSRF token of a session: a digest of it, which a page of another site can neither
/// read nor compute.
fn csrf_token(secret: &[u8]) -> String {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    context.update(b"lqsm-dashboard-csrf\0");
    context.update(secret);
    hex_encode(context.finish().as_ref())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_decode(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The login form's fields.
#[derive(serde::Deserialize)]
struct LoginForm {
    token: String,
}

/// Checks the token and keeps it in the session cookie.
async fn login(
    State(ui): State<Ui>,
    Peer(peer): Peer,
    axum::Form(form): axum::Form<LoginForm>,
) -> Response {
    if ui.state.auth.is_open() {
        return Redirect::to("/ui").into_response();
    }
    let token = form.token.trim();
    // Checked by a call through the API, so that failed attempts count against the
    // address's limit exactly as failed API calls do (and are refused past it).
    let probe = Session {
        token: Some(token.to_owned()),
        caller: crate::auth::Caller {
            name: String::new(),
            role: crate::auth::Role::Reader(Vec::new()),
        },
        peer,
        csrf: String::new(),
    };
    match ui
        .call(&probe, Method::GET, "/v1/queues?depth=0", None)
        .await
    {
        Err(UiError::Login) => {
            return (
                StatusCode::UNAUTHORIZED,
                pages::login_page(Some("that token is not known to this server")),
            )
                .into_response();
        }
        Err(UiError::Api(StatusCode::TOO_MANY_REQUESTS, message)) => {
            return (
                StatusCode::TOO_MANY_REQUESTS,
                pages::login_page(Some(&message)),
            )
                .into_response();
        }
        // Known: a token that may not read the queue tree (a worker's) still logs in.
        _ => {}
    }
    let secure = if ui.state.tls { "; Secure" } else { "" };
    let cookie = format!(
        "{SESSION_COOKIE}={}; Path=/ui; HttpOnly; SameSite=Strict{secure}",
        hex_encode(token.as_bytes())
    );
    let mut response = Redirect::to("/ui").into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// Ends the session.
async fn logout(State(ui): State<Ui>) -> Response {
    let secure = if ui.state.tls { "; Secure" } else { "" };
    let cookie =
        format!("{SESSION_COOKIE}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0{secure}");
    let mut response = Redirect::to("/ui/login").into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// The page around every page's content: navigation, who is logged in, the warning of a
/// server without tokens.
fn page_shell(title: &str, active: &str, session: Option<&Session>, content: Markup) -> Markup {
    const NAV: [(&str, &str); 5] = [
        ("overview", "/ui"),
        ("queues", "/ui/queues"),
        ("jobs", "/ui/jobs"),
        ("workers", "/ui/workers"),
        ("schedules", "/ui/schedules"),
    ];
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                // No inline styles from htmx (the policy forbids them) and no eval.
                meta name="htmx-config" content=r#"{"includeIndicatorStyles":false,"allowEval":false,"allowScriptTags":false}"#;
                @if let Some(session) = session {
                    meta name="csrf-token" content=(session.csrf);
                }
                title { (title) " · LQSM" }
                link rel="stylesheet" href="/ui/assets/dashboard.css";
                link rel="icon" href="/ui/assets/favicon.svg" type="image/svg+xml";
                script src="/ui/assets/htmx.min.js" {}
                script src="/ui/assets/htmx-ext-sse.js" {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header {
                    nav aria-label="Sections" {
                        span.brand { "LQSM" }
                        ul {
                            @for (name, href) in NAV {
                                li {
                                    @if name == active {
                                        a href=(href) aria-current="page" { (name) }
                                    } @else {
                                        a href=(href) { (name) }
                                    }
                                }
                            }
                        }
                    }
                    @if let Some(session) = session {
                        div.who {
                            (session.caller.name) " (" (session.caller.role.name()) ")"
                            @if session.token.is_some() {
                                form method="post" action="/ui/logout" {
                                    button type="submit" { "Log out" }
                                }
                            }
                        }
                    }
                }
                @if session.is_some_and(|s| s.token.is_none()) {
                    p.banner role="alert" {
                        strong { "Warning: " }
                        "this server runs without tokens: anyone who can reach it may do anything. Configure [[tokens]] before exposing it."
                    }
                }
                main id="main" {
                    h1 { (title) }
                    (content)
                }
            }
        }
    }
}
