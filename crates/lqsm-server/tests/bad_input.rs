//! Every class of bad input gets a 4xx answer with `{"error":{"code","message"}}`
//! naming the field to blame, and the server stays up.
#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

use lqsm_api as api;
use lqsm_api::ErrorCode;
use lqsm_testkit::{Api, BlockingTestServer, function_job, toml_settings};
use serde_json::json;

/// Small limits, so size checks are cheap to reach.
const LIMITS: &str = "[limits]\nmax_request_bytes = 65536\nmax_job_bytes = 1024\n";

/// One bad request and the answer it must get.
struct Case {
    what: &'static str,
    method: &'static str,
    path: String,
    body: String,
    status: u16,
    /// The error code; `None`: any code.
    code: Option<ErrorCode>,
    /// The field the error must blame; `None`: no particular field.
    field: Option<&'static str>,
    /// Accept a field below `field` too (`kind.type` for `kind`).
    under: bool,
    /// Text the message must contain.
    mentions: &'static str,
}

fn case(what: &'static str, method: &'static str, path: &str, body: serde_json::Value) -> Case {
    Case {
        what,
        method,
        path: path.to_owned(),
        body: body.to_string(),
        status: 400,
        code: Some(ErrorCode::InvalidField),
        field: None,
        under: false,
        mentions: "",
    }
}

impl Case {
    fn raw(mut self, body: &str) -> Self {
        self.body = body.to_owned();
        self
    }
    fn answer(mut self, status: u16, code: Option<ErrorCode>) -> Self {
        self.status = status;
        self.code = code;
        self
    }
    fn field(mut self, field: &'static str) -> Self {
        self.field = Some(field);
        self
    }
    fn field_under(mut self, field: &'static str) -> Self {
        self.field = Some(field);
        self.under = true;
        self
    }
    fn mentions(mut self, text: &'static str) -> Self {
        self.mentions = text;
        self
    }
}

fn blames(error: &api::ErrorDetail, c: &Case) -> bool {
    match (error.field.as_deref(), c.field) {
        (got, want) if got == want => true,
        (Some(got), Some(want)) => c.under && got.starts_with(&format!("{want}.")),
        _ => false,
    }
}

/// Runs every case; returns a line per mismatch.
fn check(api: &Api, cases: &[Case]) -> Vec<String> {
    let mut wrong = Vec::new();
    for c in cases {
        let reply = api.raw(c.method, &c.path, c.body.clone());
        let body: Result<api::ErrorBody, _> = serde_json::from_str(&reply.body);
        let Ok(api::ErrorBody { error }) = body else {
            wrong.push(format!(
                "{}: {} {} answered {} with a body that is not an error: {:?}",
                c.what, c.method, c.path, reply.status, reply.body
            ));
            continue;
        };
        let right = reply.status == c.status
            && c.code.is_none_or(|code| error.code == code)
            && blames(&error, c)
            && !error.message.is_empty()
            && error.message.contains(c.mentions);
        if !right {
            wrong.push(format!(
                "{}: {} {}: expected {} {} field {:?} mentioning {:?}; got {} {error:?}",
                c.what,
                c.method,
                c.path,
                c.status,
                c.code.map_or("any code", ErrorCode::as_str),
                c.field,
                c.mentions,
                reply.status
            ));
        }
    }
    wrong
}

fn assert_still_up(api: &Api) {
    let health = api.get("/healthz");
    assert_eq!((health.status, health.body.as_str()), (200, "ok"));
    // And still does its job.
    api.submit(&function_job("root.default", "after"));
}

fn job_with(extra: serde_json::Value) -> serde_json::Value {
    let mut job = json!({"queue": "root.default", "kind": {"type": "function", "handler": "h"}});
    for (k, v) in extra.as_object().unwrap() {
        job[k] = v.clone();
    }
    job
}

#[test]
fn bad_input_of_every_class_is_answered_with_the_field_to_blame() {
    let server = BlockingTestServer::start_with(toml_settings(LIMITS));
    let api = server.api();
    let unknown_job = uuid::Uuid::now_v7();
    let big_args = "a".repeat(2000);
    let huge_body = format!(
        r#"{{"queue":"root.default","kind":{{"type":"function","handler":"h","args":"{}"}}}}"#,
        "a".repeat(70_000)
    );
    let cases = vec![
        // Not JSON.
        case("truncated JSON", "POST", "/v1/jobs", json!(null))
            .raw(r#"{"queue":"#)
            .answer(400, Some(ErrorCode::InvalidJson)),
        case("not JSON", "POST", "/v1/jobs", json!(null))
            .raw("queue=root.default")
            .answer(400, Some(ErrorCode::InvalidJson)),
        case("empty body", "POST", "/v1/jobs", json!(null))
            .raw("")
            .answer(400, Some(ErrorCode::InvalidJson)),
        // Wrong types.
        case(
            "queue as a number",
            "POST",
            "/v1/jobs",
            job_with(json!({"queue": 5})),
        )
        .field("queue"),
        case(
            "cpu as text",
            "POST",
            "/v1/jobs",
            job_with(json!({"resources": {"cpu": "lots"}})),
        )
        .field("resources.cpu"),
        case(
            "priority as text",
            "POST",
            "/v1/jobs",
            job_with(json!({"priority": "high"})),
        )
        .field("priority"),
        case(
            "a tag holding a NUL character",
            "POST",
            "/v1/jobs",
            job_with(json!({"tags": ["fine", "bad\u{0}tag"]})),
        )
        .field("tags[1]"),
        case(
            "a tag over 256 characters",
            "POST",
            "/v1/jobs",
            job_with(json!({"tags": ["t".repeat(257)]})),
        )
        .field("tags[0]"),
        case(
            "unknown job kind",
            "POST",
            "/v1/jobs",
            job_with(json!({"kind": {"type": "shell"}})),
        )
        .field_under("kind"),
        case(
            "jobs not a list",
            "POST",
            "/v1/jobs/batch",
            json!({"jobs": 5}),
        )
        .field("jobs"),
        case(
            "wrong type inside a batch",
            "POST",
            "/v1/jobs/batch",
            json!({"jobs": [job_with(json!({})), job_with(json!({"queue": 5}))]}),
        )
        .field("jobs[1].queue"),
        case(
            "queue setting of the wrong type",
            "PATCH",
            "/v1/queues/root.default",
            json!({"capacity": "big"}),
        )
        .field("capacity"),
        // Unknown fields.
        case(
            "unknown field",
            "POST",
            "/v1/jobs",
            job_with(json!({"bogus": 1})),
        )
        .answer(400, Some(ErrorCode::UnknownField))
        .field("bogus"),
        case(
            "unknown nested field",
            "POST",
            "/v1/jobs",
            job_with(json!({"resources": {"gpus": 1}})),
        )
        .answer(400, Some(ErrorCode::UnknownField))
        .field("resources.gpus"),
        case(
            "unknown queue setting",
            "PATCH",
            "/v1/queues/root.default",
            json!({"capacityy": 5}),
        )
        .answer(400, Some(ErrorCode::UnknownField))
        .field("capacityy"),
        case(
            "unknown poll field",
            "POST",
            &format!("/v1/workers/{}/poll", uuid::Uuid::now_v7()),
            json!({"wait": 5}),
        )
        .answer(400, Some(ErrorCode::UnknownField))
        .field("wait"),
        case(
            "a report's retry flag not a boolean",
            "POST",
            &format!("/v1/workers/{}/poll", uuid::Uuid::now_v7()),
            json!({"finished": [{
                "job": uuid::Uuid::now_v7(),
                "token": 1,
                "result": {"type": "failed", "message": "m", "retry": "no"},
            }]}),
        )
        .field("finished[0].result.retry")
        .mentions("expected a boolean"),
        // Sizes.
        case(
            "body over max_request_bytes",
            "POST",
            "/v1/jobs",
            json!(null),
        )
        .raw(&huge_body)
        .answer(413, Some(ErrorCode::PayloadTooLarge))
        .mentions("max_request_bytes"),
        case(
            "args over max_job_bytes",
            "POST",
            "/v1/jobs",
            job_with(json!({"kind": {"type": "function", "handler": "h", "args": big_args}})),
        )
        .answer(413, Some(ErrorCode::PayloadTooLarge))
        .field("kind")
        .mentions("max_job_bytes"),
        // Queue names.
        case(
            "bad queue name",
            "POST",
            "/v1/jobs",
            job_with(json!({"queue": "root.Bad"})),
        )
        .field("queue")
        .mentions("Bad"),
        case(
            "queue outside root",
            "POST",
            "/v1/jobs",
            job_with(json!({"queue": "etl"})),
        )
        .field("queue"),
        case(
            "bad queue name on create",
            "POST",
            "/v1/queues",
            json!({"path": "root.Bad"}),
        )
        .field("path")
        .mentions("Bad"),
        case(
            "empty queue segment",
            "POST",
            "/v1/queues",
            json!({"path": "root..x"}),
        )
        .field("path"),
        // Resources.
        case(
            "negative cpu",
            "POST",
            "/v1/jobs",
            job_with(json!({"resources": {"cpu": -1}})),
        )
        .field("resources.cpu"),
        case(
            "absurd cpu",
            "POST",
            "/v1/jobs",
            job_with(json!({"resources": {"cpu": 1e12}})),
        )
        .field("resources.cpu"),
        case(
            "absurd memory",
            "POST",
            "/v1/jobs",
            job_with(json!({"resources": {"memory_mib": 1_u64 << 50}})),
        )
        .field("resources.memory_mib")
        .mentions("absurd"),
        case(
            "no resources at all",
            "POST",
            "/v1/jobs",
            job_with(json!({"resources": {"cpu": 0, "memory_mib": 0}})),
        )
        .field("resources"),
        case(
            "negative memory",
            "POST",
            "/v1/jobs",
            job_with(json!({"resources": {"memory_mib": -1}})),
        )
        .field("resources.memory_mib"),
        case(
            "worker offering nothing",
            "POST",
            "/v1/workers",
            json!({"id": uuid::Uuid::now_v7(), "name": "w", "capacity": {}}),
        )
        .field("capacity"),
        // Other values.
        case(
            "timeout of zero",
            "POST",
            "/v1/jobs",
            job_with(json!({"timeout_ms": 0})),
        )
        .field("timeout_ms"),
        case(
            "delay of more than a year",
            "POST",
            "/v1/jobs",
            job_with(json!({"delay_ms": 99_999_999_999_u64})),
        )
        .field("delay_ms"),
        case(
            "delay and ETA together",
            "POST",
            "/v1/jobs",
            job_with(json!({"delay_ms": 5, "not_before_ms": 5})),
        )
        .field("delay_ms"),
        case(
            "expiry in the past",
            "POST",
            "/v1/jobs",
            job_with(json!({"expires_at_ms": 5})),
        )
        .field("expires_at_ms"),
        case(
            "jitter above 1",
            "POST",
            "/v1/jobs",
            job_with(json!({"retry": {"jitter": 2}})),
        )
        .field("retry")
        .mentions("jitter"),
        case(
            "empty handler",
            "POST",
            "/v1/jobs",
            job_with(json!({"kind": {"type": "function", "handler": ""}})),
        )
        .field("kind.handler"),
        case(
            "empty argv",
            "POST",
            "/v1/jobs",
            job_with(json!({"kind": {"type": "command", "argv": []}})),
        )
        .field("kind.argv"),
        case(
            "unknown ordering policy",
            "POST",
            "/v1/queues",
            json!({"path": "root.x", "ordering": "random"}),
        )
        .field("ordering")
        .mentions("known:"),
        case(
            "negative capacity",
            "PATCH",
            "/v1/queues/root.default",
            json!({"capacity": -5}),
        )
        .field("capacity"),
        case(
            "job state that does not exist",
            "GET",
            "/v1/jobs?state=done",
            json!(null),
        )
        .raw("")
        .field("state"),
        case("page size of zero", "GET", "/v1/jobs?limit=0", json!(null))
            .raw("")
            .field("limit"),
        // Things that do not exist.
        case(
            "unknown queue",
            "POST",
            "/v1/jobs",
            job_with(json!({"queue": "root.nope"})),
        )
        .answer(404, Some(ErrorCode::NotFound))
        .field("queue")
        .mentions("known: root, root.default"),
        case(
            "unknown queue by path",
            "GET",
            "/v1/queues/root.nope",
            json!(null),
        )
        .raw("")
        .answer(404, Some(ErrorCode::NotFound))
        .field("queue")
        .mentions("known:"),
        case(
            "unknown job",
            "GET",
            &format!("/v1/jobs/{unknown_job}"),
            json!(null),
        )
        .raw("")
        .answer(404, Some(ErrorCode::NotFound))
        .field("id"),
        case(
            "cancel of an unknown job",
            "POST",
            &format!("/v1/jobs/{unknown_job}/cancel"),
            json!({}),
        )
        .answer(404, Some(ErrorCode::NotFound))
        .field("id"),
        case("unknown endpoint", "GET", "/v1/nothing", json!(null))
            .raw("")
            .answer(404, Some(ErrorCode::NotFound)),
        // Malformed ids.
        case(
            "malformed job id",
            "GET",
            "/v1/jobs/not-a-uuid",
            json!(null),
        )
        .raw("")
        .field("id")
        .mentions("not-a-uuid"),
        case(
            "malformed job id on wait",
            "GET",
            "/v1/jobs/42/wait",
            json!(null),
        )
        .raw("")
        .field("id"),
        case(
            "malformed worker id",
            "POST",
            "/v1/workers/w-1/poll",
            json!({}),
        )
        .field("id"),
        case(
            "malformed worker id in a registration",
            "POST",
            "/v1/workers",
            json!({"id": "w-1", "name": "w", "capacity": {"cpu": 1}}),
        )
        .field("id"),
    ];

    let wrong = check(&api, &cases);
    assert!(
        wrong.is_empty(),
        "{} of {} cases answered wrongly:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );
    assert_still_up(&api);
}

#[test]
fn batch_item_over_max_job_bytes_is_refused_alone() {
    let server = BlockingTestServer::start_with(toml_settings(LIMITS));
    let api = server.api();
    let mut big = function_job("root.default", "h");
    big.kind = api::JobKind::Function {
        handler: "h".into(),
        args: json!("a".repeat(2000)).into(),
    };
    let batch = api::SubmitBatch {
        jobs: vec![function_job("root.default", "h"), big],
    };
    let result: api::BatchResult = api.post("/v1/jobs/batch", &batch).expect(200);
    assert_eq!(result.accepted, 1);
    assert!(result.results[0].id.is_some());
    let error = result.results[1].error.as_ref().unwrap();
    assert_eq!(error.code, lqsm_api::ErrorCode::PayloadTooLarge);
    assert_eq!(error.field.as_deref(), Some("jobs[1].kind"));
    assert_still_up(&api);
}

#[test]
fn queue_creation_errors_name_the_field() {
    let server = BlockingTestServer::start();
    let api = server.api();
    let cases = vec![
        case(
            "setting of the wrong type on create",
            "POST",
            "/v1/queues",
            json!({"path": "root.x", "capacity": "big"}),
        )
        .field("capacity"),
        case(
            "nested default of the wrong type on create",
            "POST",
            "/v1/queues",
            json!({"path": "root.x", "defaults": {"priority": "x"}}),
        )
        .field("defaults.priority"),
        case(
            "unknown setting on create",
            "POST",
            "/v1/queues",
            json!({"path": "root.x", "capacityy": 5}),
        )
        .answer(400, Some(ErrorCode::UnknownField))
        .field("capacityy"),
    ];
    let wrong = check(&api, &cases);
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_still_up(&api);
}

#[test]
fn missing_required_field_is_named() {
    let server = BlockingTestServer::start();
    let api = server.api();
    let cases = vec![
        case(
            "job without a queue",
            "POST",
            "/v1/jobs",
            json!({"kind": {"type": "function", "handler": "h"}}),
        )
        .answer(400, Some(ErrorCode::MissingField))
        .field("queue"),
        case(
            "queue without a path",
            "POST",
            "/v1/queues",
            json!({"capacity": 5}),
        )
        .answer(400, Some(ErrorCode::MissingField))
        .field("path"),
    ];
    let wrong = check(&api, &cases);
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_still_up(&api);
}

#[test]
fn wrong_method_is_answered_with_an_error_body() {
    let server = BlockingTestServer::start();
    let api = server.api();
    let cases = vec![
        case(
            "DELETE on the job collection",
            "DELETE",
            "/v1/jobs",
            json!(null),
        )
        .raw("")
        .answer(405, None),
    ];
    let wrong = check(&api, &cases);
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_still_up(&api);
}
