//! Talking to a server over HTTP with the wire types of `lqsm_api`, without the typed
//! client: the blocking [`Api`] (any request, raw bodies included, so bad input can be
//! sent) and [`SimWorker`], a worker played by the test.

use crate::wait::{DEADLINE, eventually};
use lqsm_api as api;
use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

/// An HTTP answer: status and body text.
#[derive(Debug)]
pub struct Reply {
    /// The HTTP status code.
    pub status: u16,
    /// The body as text.
    pub body: String,
    /// The `Retry-After` header, when the answer has one.
    pub retry_after: Option<String>,
}

impl Reply {
    /// The body as `T`; panics with the body when it is not.
    pub fn json<T: DeserializeOwned>(&self) -> T {
        serde_json::from_str(&self.body).unwrap_or_else(|e| {
            panic!(
                "cannot read {} from the answer ({}): {e}\nbody: {}",
                std::any::type_name::<T>(),
                self.status,
                self.body
            )
        })
    }

    /// Asserts the status, then reads the body as `T`.
    pub fn expect<T: DeserializeOwned>(&self, status: u16) -> T {
        self.expect_status(status);
        self.json()
    }

    /// Asserts the status.
    pub fn expect_status(&self, status: u16) -> &Self {
        assert_eq!(
            self.status, status,
            "unexpected status; body: {}",
            self.body
        );
        self
    }

    /// Asserts the status and reads the `{"error": ...}` body.
    pub fn expect_error(&self, status: u16) -> api::ErrorDetail {
        self.expect::<api::ErrorBody>(status).error
    }
}

/// A blocking client of one server.
#[derive(Clone)]
pub struct Api {
    http: reqwest::blocking::Client,
    base: String,
    token: Option<String>,
}

impl Api {
    /// A client of the server at `base` (`http://HOST:PORT`), sending `token` as a
    /// bearer token when given.
    pub fn new(base: &str, token: Option<&str>) -> Api {
        let mut http = reqwest::blocking::Client::builder().timeout(DEADLINE);
        if base.starts_with("https://") {
            // The test servers' certificates are signed by the test CA.
            let pem = std::fs::read(crate::tls::CA).expect("read the test CA");
            let ca = reqwest::Certificate::from_pem(&pem).expect("the test CA is PEM");
            http = http.add_root_certificate(ca);
        }
        let http = http.build().expect("an HTTP client");
        Api {
            http,
            base: base.to_owned(),
            token: token.map(str::to_owned),
        }
    }

    /// The same server with another token.
    pub fn with_token(&self, token: &str) -> Api {
        Api {
            token: Some(token.to_owned()),
            ..self.clone()
        }
    }

    /// Its server's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn send(&self, req: reqwest::blocking::RequestBuilder) -> Reply {
        self.try_send(req)
            .unwrap_or_else(|e| panic!("no answer from the server at {}: {e}", self.base))
    }

    /// Like `send`, but a transport error is returned rather than a panic.
    fn try_send(&self, req: reqwest::blocking::RequestBuilder) -> Result<Reply, reqwest::Error> {
        let req = match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let resp = req.send()?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = resp.text()?;
        Ok(Reply {
            status,
            body,
            retry_after,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> Reply {
        self.send(self.http.get(self.url(path)))
    }

    /// Every job the server holds, by id, read through the paged listing; `None` when a
    /// page cannot be read (the server is down or answers an error), for callers that
    /// poll across restarts.
    pub fn all_jobs(&self) -> Option<std::collections::HashMap<Uuid, api::JobView>> {
        let mut jobs = std::collections::HashMap::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(c) => format!("/v1/jobs?limit=1000&cursor={c}"),
                None => "/v1/jobs?limit=1000".to_owned(),
            };
            let reply = self.try_get(&path).ok()?;
            if reply.status != 200 {
                return None;
            }
            let page: api::JobList = reply.json();
            jobs.extend(page.jobs.into_iter().map(|j| (j.id, j)));
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => return Some(jobs),
            }
        }
    }

    /// Like `get`, but a transport error is returned rather than a panic.
    pub fn try_get(&self, path: &str) -> Result<Reply, reqwest::Error> {
        self.try_send(self.http.get(self.url(path)))
    }

    /// `DELETE path`.
    pub fn delete(&self, path: &str) -> Reply {
        self.send(self.http.delete(self.url(path)))
    }

    /// `POST path` with `body` as JSON.
    pub fn post<T: Serialize + ?Sized>(&self, path: &str, body: &T) -> Reply {
        self.send(self.http.post(self.url(path)).json(body))
    }

    /// Like `post`, but a transport error is returned rather than a panic.
    pub fn try_post<T: Serialize + ?Sized>(
        &self,
        path: &str,
        body: &T,
    ) -> Result<Reply, reqwest::Error> {
        self.try_send(self.http.post(self.url(path)).json(body))
    }

    /// `PATCH path` with `body` as JSON.
    pub fn patch<T: Serialize + ?Sized>(&self, path: &str, body: &T) -> Reply {
        self.send(self.http.patch(self.url(path)).json(body))
    }

    /// Any method with a raw body sent as `application/json`.
    pub fn raw(&self, method: &str, path: &str, body: impl Into<Vec<u8>>) -> Reply {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("a method");
        self.send(
            self.http
                .request(method, self.url(path))
                .header("content-type", "application/json")
                .body(body.into()),
        )
    }

    /// Submits one job; asserts 201.
    pub fn submit(&self, job: &api::SubmitJob) -> Uuid {
        let s: api::Submitted = self.post("/v1/jobs", job).expect(201);
        assert!(s.created);
        s.id
    }

    /// The job's view; asserts 200.
    pub fn job(&self, id: Uuid) -> api::JobView {
        self.get(&format!("/v1/jobs/{id}")).expect(200)
    }

    /// Polls the job until it is in `state`.
    pub fn wait_for_state(&self, id: Uuid, state: api::JobState) -> api::JobView {
        eventually(&format!("job {id} to be {state}"), || {
            let view = self.job(id);
            (view.state == state).then_some(view)
        })
    }

    /// Creates a queue; asserts 201.
    pub fn create_queue(&self, body: serde_json::Value) -> api::QueueView {
        self.post("/v1/queues", &body).expect(201)
    }
}

/// A function job for `handler` in `queue`.
pub fn function_job(queue: &str, handler: &str) -> api::SubmitJob {
    api::SubmitJob::function(queue, handler, serde_json::json!({"n": 1}))
}

/// A worker played by the test: it registers, polls, and lists what it runs in
/// every poll, as a real worker must (an attempt it stops listing counts as lost).
pub struct SimWorker {
    /// How it reaches the server.
    pub api: Api,
    /// Its worker id.
    pub id: Uuid,
    registration: api::RegisterWorker,
    /// The number of its latest registration, which its polls name.
    pub registration_number: Option<u64>,
    /// Attempts it holds now.
    pub running: Vec<api::AttemptRef>,
    /// How long `next_assignment` lets each poll wait (keep it well under the
    /// heartbeat timeout).
    pub poll_wait_ms: u64,
}

impl SimWorker {
    /// Registers a worker of 4 cores and 4 GiB that runs only `handler` (so tests
    /// sharing a server never take each other's jobs).
    pub fn register(api: &Api, handler: &str) -> SimWorker {
        let id = Uuid::now_v7();
        let registration = api::RegisterWorker {
            id,
            name: format!("sim-{handler}-{id}"),
            capacity: api::Resources {
                cpu: Some(4.0),
                memory_mib: Some(4096),
                ..api::Resources::default()
            },
            labels: Default::default(),
            serves_commands: false,
            queues: Default::default(),
            handlers: vec![handler.to_owned()],
            protocol: api::WORKER_PROTOCOL,
        };
        let mut worker = SimWorker {
            api: api.clone(),
            id,
            registration,
            registration_number: None,
            running: Vec::new(),
            poll_wait_ms: 200,
        };
        worker.register_again();
        worker
    }

    /// Registers again under the same id (after a restart or after being lost).
    pub fn register_again(&mut self) {
        let view: api::WorkerView = self.api.post("/v1/workers", &self.registration).expect(200);
        assert_eq!(view.id, self.id);
        assert_eq!(view.state, lqsm_api::WorkerState::Active);
        assert!(
            view.registration > self.registration_number,
            "registration numbers grow: {:?} after {:?}",
            view.registration,
            self.registration_number
        );
        self.registration_number = view.registration;
    }

    /// Points the worker at another server address (after a restart).
    pub fn reconnect(&mut self, api: &Api) {
        self.api = api.clone();
    }

    /// Sends a poll listing `self.running` plus `finished`; returns the raw answer.
    pub fn poll_raw(&self, finished: &[api::FinishedAttempt], wait_ms: u64) -> Reply {
        let req = api::PollRequest {
            running: self.running.clone(),
            finished: finished.to_vec(),
            wait_ms,
            ack: None,
            ending: Vec::new(),
            registration: self.registration_number,
        };
        self.api
            .post(&format!("/v1/workers/{}/poll", self.id), &req)
    }

    /// Polls (asserting 200) and keeps `running` up to date: finished attempts and
    /// killed ones leave it, assignments join it.
    pub fn poll(&mut self, finished: &[api::FinishedAttempt], wait_ms: u64) -> api::PollResponse {
        self.running.retain(|r| {
            !finished
                .iter()
                .any(|f| f.job == r.job && f.token == r.token)
        });
        let resp: api::PollResponse = self.poll_raw(finished, wait_ms).expect(200);
        self.running.retain(|r| {
            !resp
                .kill
                .iter()
                .any(|k| k.job == r.job && k.token == r.token)
        });
        self.running
            .extend(resp.assignments.iter().map(|a| api::AttemptRef {
                job: a.job,
                token: a.token,
                progress: None,
            }));
        resp
    }

    /// Polls until an assignment arrives; returns it.
    pub fn next_assignment(&mut self) -> api::Assignment {
        let mut got = Vec::new();
        eventually("an assignment", || {
            let resp = self.poll(&[], self.poll_wait_ms);
            got.extend(resp.assignments);
            (!got.is_empty()).then_some(())
        });
        assert_eq!(got.len(), 1, "expected one assignment, got {got:?}");
        got.remove(0)
    }

    /// Reports that an attempt succeeded with `result`; returns the poll's answer.
    pub fn succeed(&mut self, a: &api::Assignment, result: serde_json::Value) -> api::PollResponse {
        self.poll(
            &[finished_attempt(
                a,
                api::AttemptResult::Succeeded {
                    result: Some(result),
                    exit_code: None,
                },
            )],
            0,
        )
    }
}

/// A report of `a` with `result`.
pub fn finished_attempt(a: &api::Assignment, result: api::AttemptResult) -> api::FinishedAttempt {
    api::FinishedAttempt {
        job: a.job,
        token: a.token,
        result,
        logs: None,
        started_at_ms: None,
        usage: None,
    }
}
