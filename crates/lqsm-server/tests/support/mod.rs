//! The integration harness: starts the real `lqsm` binary on a random loopback port
//! with a temporary data directory, talks to it over HTTP with the `lqsm_api` wire
//! types, plays a worker, and tears everything down on drop.
//!
//! The binary comes from crate `lqsm-cli`, so `env!("CARGO_BIN_EXE_lqsm")` does not
//! exist here: the harness looks for `<target dir>/<profile>/lqsm` next to the test
//! executable (`<target dir>/<profile>/deps/<test>`). Build it before running these
//! tests:
//!
//! ```text
//! cargo build -p lqsm-cli && cargo test -p lqsm-server
//! ```
//!
//! `cargo test` (even `--workspace`) does not build `lqsm`: cargo builds a package's
//! binaries for that package's own integration tests only, and `lqsm-cli` has none. A
//! binary older than any `crates/*/src` file is refused rather than silently tested.
//! `LQSM_TEST_BIN=/path/to/lqsm` overrides the lookup (and the age check).
#![allow(dead_code, clippy::unwrap_used, missing_docs)]

use lqsm_api as api;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tempfile::TempDir;
use uuid::Uuid;

/// How long any wait for a state may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// Polls `f` every 20 ms until it returns `Some`, or panics naming `what` after
/// `timeout`.
pub fn eventually<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The `lqsm` binary, fresh (see [`lqsm_testkit::lqsm_binary`]).
pub fn binary() -> PathBuf {
    lqsm_testkit::lqsm_binary()
}

/// How to start a server.
#[derive(Default)]
pub struct ServerBuilder {
    args: Vec<String>,
    config: Option<String>,
}

impl ServerBuilder {
    /// An extra command-line argument after `lqsm server`.
    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_owned());
        self
    }

    /// A TOML settings file, passed with `--config`.
    pub fn config(mut self, toml: &str) -> Self {
        self.config = Some(toml.to_owned());
        self
    }

    fn prepare(self, listen: &str) -> Server {
        let data = TempDir::with_prefix("lqsm-it-data-").expect("a temp dir");
        let scratch = TempDir::with_prefix("lqsm-it-logs-").expect("a temp dir");
        let mut args = vec![
            "server".to_owned(),
            "--listen".to_owned(),
            listen.to_owned(),
            "--data-dir".to_owned(),
            data.path().display().to_string(),
        ];
        if let Some(toml) = &self.config {
            let path = scratch.path().join("lqsm.toml");
            std::fs::write(&path, toml).expect("write the config file");
            args.push("--config".to_owned());
            args.push(path.display().to_string());
        }
        args.extend(self.args);
        Server {
            child: None,
            base: String::new(),
            args,
            data,
            scratch,
            starts: 0,
        }
    }

    /// Starts the server on `127.0.0.1:0` and waits until `/readyz` answers.
    pub fn start(self) -> Server {
        let mut server = self.prepare("127.0.0.1:0");
        server.spawn();
        server
    }

    /// Starts a server on `listen` that is expected to refuse to start: returns its
    /// exit status and what it wrote on stderr.
    pub fn start_expecting_refusal(self, listen: &str) -> (ExitStatus, String) {
        let mut server = self.prepare(listen);
        let log = server.next_log_path();
        let mut child = server.command(&log).spawn().expect("spawn lqsm");
        let status = wait_with_deadline(&mut child, DEADLINE).unwrap_or_else(|| {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the server did not refuse to start on {listen}; its log:\n{}",
                tail(&log)
            )
        });
        (status, std::fs::read_to_string(&log).unwrap_or_default())
    }
}

/// A running (or stopped) `lqsm server` process with its own data directory.
pub struct Server {
    child: Option<Child>,
    base: String,
    args: Vec<String>,
    data: TempDir,
    /// The config file and the stderr logs of each start.
    scratch: TempDir,
    starts: u32,
}

fn wait_with_deadline(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait on our child") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The last lines of a log file, for failure messages.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

impl Server {
    /// A server with default settings.
    pub fn start() -> Server {
        Server::builder().start()
    }

    /// A builder for flags and a config file.
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    /// `http://127.0.0.1:PORT` of the current process (a restart changes the port).
    pub fn base(&self) -> &str {
        &self.base
    }

    /// A client without a token.
    pub fn api(&self) -> Api {
        Api::new(&self.base, None)
    }

    /// A client sending `Authorization: Bearer <token>`.
    pub fn api_as(&self, token: &str) -> Api {
        Api::new(&self.base, Some(token))
    }

    /// The process id of the running server.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the server runs").id()
    }

    fn next_log_path(&mut self) -> PathBuf {
        self.starts += 1;
        self.scratch
            .path()
            .join(format!("server-{}.log", self.starts))
    }

    fn current_log(&self) -> PathBuf {
        self.scratch
            .path()
            .join(format!("server-{}.log", self.starts))
    }

    /// The end of the current process's stderr.
    pub fn log_tail(&self) -> String {
        tail(&self.current_log())
    }

    fn command(&self, log: &Path) -> Command {
        let stderr = File::create(log).expect("create the server log");
        let mut cmd = Command::new(binary());
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info");
        // Settings must come from the test alone.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("LQSM_") {
                cmd.env_remove(key);
            }
        }
        cmd
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "the server already runs");
        let log = self.next_log_path();
        let mut child = self.command(&log).spawn().expect("spawn lqsm");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = tx.send(lines.next());
            // Keep reading so the server never writes into a closed pipe.
            for _ in lines {}
        });
        let first = rx.recv_timeout(DEADLINE);
        let addr = match &first {
            Ok(Some(Ok(line))) => line
                .strip_prefix("lqsm server listening on http://")
                .map(str::to_owned),
            _ => None,
        };
        let Some(addr) = addr else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the server did not announce its address (first line: {first:?}); its log:\n{}",
                tail(&log)
            );
        };
        self.base = format!("http://{addr}");
        self.child = Some(child);
        let api = self.api();
        let ready = Instant::now() + DEADLINE;
        loop {
            if api.get("/readyz").status == 200 {
                break;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "the server exited with {status}; its log:\n{}",
                    self.log_tail()
                );
            }
            assert!(
                Instant::now() < ready,
                "the server did not become ready; its log:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: the process dies at once, mid-whatever.
    pub fn kill_9(&mut self) {
        let mut child = self.child.take().expect("the server runs");
        child.kill().expect("SIGKILL the server");
        child.wait().expect("reap the server");
    }

    /// SIGTERM, then waits for the process to exit; panics unless it exits with 0.
    pub fn stop(&mut self) {
        let mut child = self.child.take().expect("the server runs");
        let sent = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM failed: {sent}");
        let Some(status) = wait_with_deadline(&mut child, Duration::from_secs(15)) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the server did not exit within 15 s of SIGTERM; its log:\n{}",
                self.log_tail()
            );
        };
        assert_eq!(
            status.code(),
            Some(0),
            "the server should exit with 0 after SIGTERM; its log:\n{}",
            self.log_tail()
        );
    }

    /// Starts a new process on the same data directory and flags (on a new port).
    pub fn restart(&mut self) {
        self.spawn();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// An HTTP answer: status and body text.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: String,
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
    pub fn new(base: &str, token: Option<&str>) -> Api {
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .expect("an HTTP client");
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

    fn send(&self, req: reqwest::blocking::RequestBuilder) -> Reply {
        let req = match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let resp = req.send().expect("the server answers");
        let status = resp.status().as_u16();
        let body = resp.text().expect("a readable body");
        Reply { status, body }
    }

    /// Like `send`, but a transport error is returned rather than a panic.
    fn try_send(&self, req: reqwest::blocking::RequestBuilder) -> Result<Reply, reqwest::Error> {
        let req = match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let resp = req.send()?;
        let status = resp.status().as_u16();
        let body = resp.text()?;
        Ok(Reply { status, body })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn get(&self, path: &str) -> Reply {
        self.send(self.http.get(self.url(path)))
    }

    /// Like `get`, but a transport error is returned rather than a panic.
    pub fn try_get(&self, path: &str) -> Result<Reply, reqwest::Error> {
        self.try_send(self.http.get(self.url(path)))
    }

    pub fn delete(&self, path: &str) -> Reply {
        self.send(self.http.delete(self.url(path)))
    }

    pub fn post<T: Serialize + ?Sized>(&self, path: &str, body: &T) -> Reply {
        self.send(self.http.post(self.url(path)).json(body))
    }

    pub fn try_post<T: Serialize + ?Sized>(
        &self,
        path: &str,
        body: &T,
    ) -> Result<Reply, reqwest::Error> {
        self.try_send(self.http.post(self.url(path)).json(body))
    }

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
        eventually(&format!("job {id} to be {state}"), DEADLINE, || {
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
    pub api: Api,
    pub id: Uuid,
    registration: api::RegisterWorker,
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
            handlers: vec![handler.to_owned()],
            protocol: api::WORKER_PROTOCOL,
        };
        let mut worker = SimWorker {
            api: api.clone(),
            id,
            registration,
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
            }));
        resp
    }

    /// Polls until an assignment arrives; returns it.
    pub fn next_assignment(&mut self) -> api::Assignment {
        let mut got = Vec::new();
        eventually("an assignment", DEADLINE, || {
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
            &[finished(
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
pub fn finished(a: &api::Assignment, result: api::AttemptResult) -> api::FinishedAttempt {
    api::FinishedAttempt {
        job: a.job,
        token: a.token,
        result,
        logs: None,
        started_at_ms: None,
    }
}
