//! A typed async client of LQSM's `/v1` HTTP API, over the wire types of `lqsm-api`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use lqsm_client::Client;
//! use std::time::Duration;
//!
//! let client = Client::new("http://127.0.0.1:7420", None)?;
//! // Celery's `task.delay(...)` and `result.get(timeout=...)`:
//! let handle = client
//!     .delay("root.default", "lqsm.echo", serde_json::json!({"hello": "world"}))
//!     .await?;
//! let result = handle.get(Duration::from_secs(30)).await?;
//! assert_eq!(result["hello"], "world");
//! # Ok(()) }
//! ```
//!
//! Every call answers with the server's type or a [`ClientError`] that says what
//! happened and what to do about it. A `Client` is cheap to clone: clones share
//! their connection pool.

mod canvas;
mod error;
mod handle;

pub use canvas::{chain, chord, group};
pub use error::ClientError;
pub use handle::{JobFailed, JobHandle};

use error::root_cause;
use lqsm_api as api;
use reqwest::header::{AUTHORIZATION, HeaderValue};
use reqwest::{Method, RequestBuilder, StatusCode, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// How long an ordinary call may take before it fails with [`ClientError::Timeout`].
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Extra time given to calls that wait on the server (long-polls, job waits) beyond
/// the wait itself.
const WAIT_MARGIN: Duration = Duration::from_secs(10);

/// Filters of [`Client::list_jobs`]; `None` means "any".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobFilter {
    /// Only jobs of this queue and the queues below it.
    pub queue: Option<String>,
    /// Only jobs in this state.
    pub state: Option<api::JobState>,
    /// Only jobs carrying this tag.
    pub tag: Option<String>,
    /// Only jobs submitted by this token name (`anonymous` on a server without tokens).
    pub submitter: Option<String>,
    /// Oldest (the default) or newest first.
    pub order: api::ListOrder,
}

/// A connection to an LQSM server, or to one of several: given several URLs, a call
/// that cannot connect to the current one moves on to the next (a call that never
/// connected was never received, so moving on is safe for every call).
#[derive(Clone, Debug)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    http: reqwest::Client,
    /// The servers' base URLs, in the order given.
    bases: Vec<Url>,
    /// Which of them calls go to now.
    current: std::sync::atomic::AtomicUsize,
    /// The base URLs as people wrote them, for messages.
    shown: String,
    auth: Option<HeaderValue>,
    timeout: Duration,
}

/// One server's base URL, checked.
fn parse_base(text: &str) -> Result<Url, ClientError> {
    let invalid = |reason: String| ClientError::InvalidUrl {
        url: text.to_owned(),
        reason,
    };
    let base = Url::parse(text).map_err(|e| invalid(e.to_string()))?;
    if !matches!(base.scheme(), "http" | "https") {
        return Err(invalid(format!(
            "scheme `{}` is not http or https",
            base.scheme()
        )));
    }
    if base.cannot_be_a_base() {
        return Err(invalid("it cannot have paths appended".into()));
    }
    Ok(base)
}

/// A borrowed batch, so submitting one does not copy the jobs.
#[derive(Serialize)]
struct BatchRef<'a> {
    jobs: &'a [api::SubmitJob],
}

/// The HTTP client every [`Client`] uses: `trusted` CAs besides the system's.
fn http_client(trusted: &[reqwest::Certificate]) -> Result<reqwest::Client, reqwest::Error> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    for certificate in trusted {
        builder = builder.add_root_certificate(certificate.clone());
    }
    builder.build()
}

impl Client {
    /// A client of the server at `base_url` (`http://host:7420`; a path prefix is
    /// kept), or of several servers given as a comma-separated list
    /// (`http://a:7420,http://b:7420`), sending `token` as a bearer token when given.
    /// Nothing is contacted yet.
    pub fn new(base_url: &str, token: Option<String>) -> Result<Self, ClientError> {
        let bases = base_url
            .split(',')
            .map(|one| parse_base(one.trim()))
            .collect::<Result<Vec<_>, _>>()?;
        let auth = match token {
            Some(token) => {
                let mut value = HeaderValue::from_str(&format!("Bearer {}", token.trim()))
                    .map_err(|_| ClientError::Unauthorized {
                        message: "the token contains characters an HTTP header cannot carry".into(),
                    })?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        let http = http_client(&[]).map_err(|e| ClientError::InvalidUrl {
            url: base_url.to_owned(),
            reason: format!("cannot set up the HTTP client: {e}"),
        })?;
        let shown = base_url
            .split(',')
            .map(|one| one.trim().trim_end_matches('/'))
            .collect::<Vec<_>>()
            .join(",");
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                shown,
                bases,
                current: std::sync::atomic::AtomicUsize::new(0),
                auth,
                timeout: DEFAULT_REQUEST_TIMEOUT,
            }),
        })
    }

    /// The same client with another limit on ordinary calls (default 30 s). Calls that
    /// wait on the server get their wait on top of a margin, whatever this says.
    pub fn with_request_timeout(self, timeout: Duration) -> Self {
        self.rebuilt(self.inner.http.clone(), timeout)
    }

    /// The same servers, token and current server, with this HTTP client and timeout.
    fn rebuilt(&self, http: reqwest::Client, timeout: Duration) -> Self {
        let inner = Inner {
            http,
            bases: self.inner.bases.clone(),
            current: std::sync::atomic::AtomicUsize::new(self.current()),
            shown: self.inner.shown.clone(),
            auth: self.inner.auth.clone(),
            timeout,
        };
        Self {
            inner: Arc::new(inner),
        }
    }

    /// The same client, trusting the CA certificates of the PEM file at `path` besides
    /// the system's, for servers whose certificates those CAs signed (`https://` URLs).
    pub fn with_ca_file(self, path: &std::path::Path) -> Result<Self, ClientError> {
        let bad = |reason: String| ClientError::CaFile {
            path: path.display().to_string(),
            reason,
        };
        let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
        let trusted =
            reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| bad(e.to_string()))?;
        if trusted.is_empty() {
            return Err(bad("it holds no PEM certificate".into()));
        }
        let http = http_client(&trusted).map_err(|e| bad(e.to_string()))?;
        Ok(self.rebuilt(http, self.inner.timeout))
    }

    /// The servers' base URLs, as given.
    pub fn base_url(&self) -> &str {
        &self.inner.shown
    }

    /// Which of the servers calls go to now.
    fn current(&self) -> usize {
        self.inner
            .current
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    // --- jobs ---

    /// Submits one job (`POST /v1/jobs`). `created` is false when its idempotency key
    /// matched an existing job, whose id is returned.
    pub async fn submit(&self, job: &api::SubmitJob) -> Result<api::Submitted, ClientError> {
        let req = self.request(Method::POST, &["v1", "jobs"]).json(job);
        self.send(req, "a submission answer").await
    }

    /// Submits up to 10,000 jobs at once (`POST /v1/jobs/batch`); each is answered on
    /// its own, in order.
    pub async fn submit_batch(
        &self,
        jobs: &[api::SubmitJob],
    ) -> Result<api::BatchResult, ClientError> {
        let req = self
            .request(Method::POST, &["v1", "jobs", "batch"])
            .json(&BatchRef { jobs });
        self.send(req, "a batch answer").await
    }

    /// A job as it is now (`GET /v1/jobs/{id}`).
    pub async fn job(&self, id: Uuid) -> Result<api::JobView, ClientError> {
        let req = self.request(Method::GET, &["v1", "jobs", &id.to_string()]);
        self.send(req, "a job").await
    }

    /// A page of at most `limit` jobs (server default 100, at most 1,000) matching
    /// `filter`, in `filter.order`, after `cursor` (the previous page's `next_cursor`).
    pub async fn list_jobs(
        &self,
        filter: &JobFilter,
        cursor: Option<&str>,
        limit: Option<usize>,
    ) -> Result<api::JobList, ClientError> {
        let mut url = self.url(&["v1", "jobs"]);
        {
            let mut query = url.query_pairs_mut();
            let pairs = [
                ("queue", filter.queue.as_deref()),
                ("state", filter.state.map(api::JobState::as_str)),
                ("tag", filter.tag.as_deref()),
                ("submitter", filter.submitter.as_deref()),
                ("order", Some(filter.order.as_str())),
                ("cursor", cursor),
            ];
            for (name, value) in pairs {
                if let Some(value) = value {
                    query.append_pair(name, value);
                }
            }
            if let Some(limit) = limit {
                query.append_pair("limit", &limit.to_string());
            }
        }
        let url = strip_empty_query(url);
        let req = self.request_url(Method::GET, url);
        self.send(req, "a job list").await
    }

    /// Cancels a job (`POST /v1/jobs/{id}/cancel`) and answers with its new state. A
    /// running attempt is killed by its worker.
    pub async fn cancel(&self, id: Uuid) -> Result<api::JobView, ClientError> {
        let req = self.request(Method::POST, &["v1", "jobs", &id.to_string(), "cancel"]);
        self.send(req, "a job").await
    }

    /// Runs a finished job again: a new job with the same settings, linked to it by
    /// `retry_of` (`POST /v1/jobs/{id}/retry`); the finished job is never reopened.
    pub async fn retry(&self, id: Uuid) -> Result<api::Submitted, ClientError> {
        let req = self.request(Method::POST, &["v1", "jobs", &id.to_string(), "retry"]);
        self.send(req, "a submission answer").await
    }

    /// Cancels every unfinished job matching all the criteria given
    /// (`POST /v1/jobs/cancel`).
    pub async fn cancel_jobs(
        &self,
        selection: &api::CancelJobs,
    ) -> Result<api::CancelledJobs, ClientError> {
        let req = self
            .request(Method::POST, &["v1", "jobs", "cancel"])
            .json(selection);
        self.send(req, "a bulk cancel answer").await
    }

    /// Waits until the job is finished or `timeout` (at most 300 s, the server's
    /// limit) has passed, and answers with the job as it then is, finished or not
    /// (`GET /v1/jobs/{id}/wait`).
    pub async fn wait(&self, id: Uuid, timeout: Duration) -> Result<api::JobView, ClientError> {
        let timeout_ms = timeout.as_millis().min(300_000) as u64;
        let mut url = self.url(&["v1", "jobs", &id.to_string(), "wait"]);
        url.query_pairs_mut()
            .append_pair("timeout_ms", &timeout_ms.to_string());
        let req = self
            .request_url(Method::GET, url)
            .timeout(Duration::from_millis(timeout_ms) + WAIT_MARGIN);
        self.send(req, "a job").await
    }

    /// The captured output (stdout and stderr) of the job: while an attempt runs, what
    /// its worker uploaded so far; else that of its last reported attempt; empty when
    /// there is none (`GET /v1/jobs/{id}/logs`).
    pub async fn logs(&self, id: Uuid) -> Result<String, ClientError> {
        let req = self.request(Method::GET, &["v1", "jobs", &id.to_string(), "logs"]);
        let (_, bytes) = self.exchange(req).await?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// The job's output from byte `offset` on, for a reader that follows it
    /// (`GET /v1/jobs/{id}/logs?offset=N`): ask again from the answer's `next_offset`
    /// while it is `running`. A server before protocol 8 refuses the parameter.
    pub async fn logs_from(&self, id: Uuid, offset: u64) -> Result<api::JobLogs, ClientError> {
        let mut url = self.url(&["v1", "jobs", &id.to_string(), "logs"]);
        url.query_pairs_mut()
            .append_pair("offset", &offset.to_string());
        let req = self.request_url(Method::GET, url);
        self.send(req, "a job's output").await
    }

    /// Submits a function job with the queue's defaults and answers with a handle to
    /// its result: Celery's `task.delay(args)`.
    pub async fn delay(
        &self,
        queue: &str,
        handler: &str,
        args: serde_json::Value,
    ) -> Result<JobHandle, ClientError> {
        let submitted = self
            .submit(&api::SubmitJob::function(queue, handler, args))
            .await?;
        Ok(JobHandle::new(self.clone(), submitted.id))
    }

    /// The parents' results a job receives (`GET /v1/jobs/{id}/inputs`): what a worker
    /// reads when an assignment's `inputs_path` says they were too large to travel with it.
    pub async fn job_inputs(&self, id: Uuid) -> Result<api::JobInputs, ClientError> {
        let req = self.request(Method::GET, &["v1", "jobs", &id.to_string(), "inputs"]);
        self.send(req, "a job's inputs").await
    }

    // --- workflows ---

    /// Submits a workflow whole (`POST /v1/workflows`): build one with [`chain`],
    /// [`group`] or [`chord`], or name the nodes and their `after` yourself.
    pub async fn submit_workflow(
        &self,
        workflow: &api::SubmitWorkflow,
    ) -> Result<api::WorkflowSubmitted, ClientError> {
        let req = self
            .request(Method::POST, &["v1", "workflows"])
            .json(workflow);
        self.send(req, "a workflow submission answer").await
    }

    /// Runs a job once on every active worker that matches it (`POST /v1/broadcasts`):
    /// one job per worker, together a workflow (read it with [`Client::workflow`]). With
    /// `new_workers`, also on each matching worker that registers later, until the job's
    /// expiry or a cancel of the broadcast.
    pub async fn broadcast(
        &self,
        job: &api::SubmitJob,
        new_workers: bool,
    ) -> Result<api::WorkflowSubmitted, ClientError> {
        let mut url = self.url(&["v1", "broadcasts"]);
        if new_workers {
            url.query_pairs_mut().append_pair("new_workers", "true");
        }
        let req = self.request_url(Method::POST, url).json(job);
        self.send(req, "a broadcast answer").await
    }

    /// A workflow with each node's state and result (`GET /v1/workflows/{id}`).
    pub async fn workflow(&self, id: Uuid) -> Result<api::WorkflowView, ClientError> {
        let req = self.request(Method::GET, &["v1", "workflows", &id.to_string()]);
        self.send(req, "a workflow").await
    }

    /// Cancels every unfinished node of a workflow (`POST /v1/workflows/{id}/cancel`).
    pub async fn cancel_workflow(&self, id: Uuid) -> Result<api::CancelledJobs, ClientError> {
        let req = self.request(
            Method::POST,
            &["v1", "workflows", &id.to_string(), "cancel"],
        );
        self.send(req, "a cancel answer").await
    }

    /// Waits until every node of the workflow has ended or `timeout` has passed, and
    /// answers with the workflow as it then is.
    pub async fn wait_workflow(
        &self,
        id: Uuid,
        timeout: Duration,
    ) -> Result<api::WorkflowView, ClientError> {
        let deadline = std::time::Instant::now() + timeout;
        let view = self.workflow(id).await?;
        // Each node unfinished at first is waited on in turn, on the server (no polling
        // loop, and the workflow is read twice, not once per node).
        for node in view.nodes.iter().filter(|n| !n.state.is_terminal()) {
            let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) else {
                break;
            };
            self.wait(node.id, left).await?;
        }
        self.workflow(id).await
    }

    // --- queues ---

    /// The whole queue tree with live figures (`GET /v1/queues`). A large tree is
    /// answered a page of the root's children at a time: the pages are joined here.
    pub async fn queues(&self) -> Result<api::QueueView, ClientError> {
        // Deeper than any queue path, so every page holds whole subtrees.
        const ALL_LEVELS: &str = "1000";
        const PAGE: usize = 1000;
        let page_size = PAGE.to_string();
        let first = self
            .request(Method::GET, &["v1", "queues"])
            .query(&[("depth", ALL_LEVELS), ("limit", page_size.as_str())]);
        let mut tree: api::QueueView = self.send(first, "a queue tree").await?;
        let mut last_page = tree.children.len();
        while last_page == PAGE {
            let Some(cursor) = tree.children.last().map(|c| c.path.clone()) else {
                break;
            };
            let next = self.request(Method::GET, &["v1", "queues"]).query(&[
                ("depth", ALL_LEVELS),
                ("limit", page_size.as_str()),
                ("cursor", cursor.as_str()),
            ]);
            let page: api::QueueView = self.send(next, "a queue tree").await?;
            last_page = page.children.len();
            tree.children.extend(page.children);
        }
        Ok(tree)
    }

    /// One queue and its subtree (`GET /v1/queues/{path}`).
    pub async fn queue(&self, path: &str) -> Result<api::QueueView, ClientError> {
        let req = self.request(Method::GET, &["v1", "queues", path]);
        self.send(req, "a queue").await
    }

    /// What a leaf's attempts used, by job name (`GET /v1/queues/{path}/usage`).
    pub async fn queue_usage(&self, path: &str) -> Result<api::QueueUsage, ClientError> {
        let req = self.request(Method::GET, &["v1", "queues", path, "usage"]);
        self.send(req, "a queue").await
    }

    /// Creates a queue under an existing parent (`POST /v1/queues`).
    pub async fn create_queue(
        &self,
        queue: &api::CreateQueue,
    ) -> Result<api::QueueView, ClientError> {
        let req = self.request(Method::POST, &["v1", "queues"]).json(queue);
        self.send(req, "a queue").await
    }

    /// Creates many queues in one request and one commit (`POST /v1/queues/batch`), in
    /// order (list parents first); each item says created, unchanged or why refused.
    pub async fn create_queues(
        &self,
        queues: &[api::CreateQueue],
    ) -> Result<api::QueueBatchResult, ClientError> {
        #[derive(serde::Serialize)]
        struct BatchRef<'a> {
            queues: &'a [api::CreateQueue],
        }
        let req = self
            .request(Method::POST, &["v1", "queues", "batch"])
            .json(&BatchRef { queues });
        self.send(req, "a queue batch answer").await
    }

    /// Changes the settings given in `settings`; the others stay as they are
    /// (`PATCH /v1/queues/{path}`).
    pub async fn update_queue(
        &self,
        path: &str,
        settings: &api::QueueSettings,
    ) -> Result<api::QueueView, ClientError> {
        let req = self
            .request(Method::PATCH, &["v1", "queues", path])
            .json(settings);
        self.send(req, "a queue").await
    }

    /// Stops a queue: it accepts nothing new but runs what it holds.
    pub async fn stop_queue(&self, path: &str) -> Result<api::QueueView, ClientError> {
        self.queue_action(path, "stop").await
    }

    /// Starts a stopped or draining queue again.
    pub async fn start_queue(&self, path: &str) -> Result<api::QueueView, ClientError> {
        self.queue_action(path, "start").await
    }

    /// Drains a queue: it accepts and starts nothing; running attempts finish.
    pub async fn drain_queue(&self, path: &str) -> Result<api::QueueView, ClientError> {
        self.queue_action(path, "drain").await
    }

    async fn queue_action(&self, path: &str, action: &str) -> Result<api::QueueView, ClientError> {
        let req = self.request(Method::POST, &["v1", "queues", path, action]);
        self.send(req, "a queue").await
    }

    /// Deletes a queue. One that holds unfinished jobs needs `force`, which cancels
    /// them (`DELETE /v1/queues/{path}`).
    pub async fn delete_queue(&self, path: &str, force: bool) -> Result<(), ClientError> {
        let mut url = self.url(&["v1", "queues", path]);
        if force {
            url.query_pairs_mut().append_pair("force", "true");
        }
        let req = self.request_url(Method::DELETE, url);
        self.exchange(req).await.map(|_| ())
    }

    // --- schedules ---

    /// Creates a periodic schedule (`POST /v1/schedules`): at each fire time it submits
    /// one job from `schedule.job`, tagged `schedule:NAME`.
    pub async fn create_schedule(
        &self,
        schedule: &api::CreateSchedule,
    ) -> Result<api::ScheduleView, ClientError> {
        let req = self
            .request(Method::POST, &["v1", "schedules"])
            .json(schedule);
        self.send(req, "a schedule").await
    }

    /// Every schedule the token may manage, in name order (`GET /v1/schedules`).
    pub async fn schedules(&self) -> Result<Vec<api::ScheduleView>, ClientError> {
        let req = self.request(Method::GET, &["v1", "schedules"]);
        self.send(req, "a schedule list").await
    }

    /// One schedule, with its next and last fire (`GET /v1/schedules/{name}`).
    pub async fn schedule(&self, name: &str) -> Result<api::ScheduleView, ClientError> {
        let req = self.request(Method::GET, &["v1", "schedules", name]);
        self.send(req, "a schedule").await
    }

    /// Changes a schedule's trigger, template or policies; what it did is kept
    /// (`PATCH /v1/schedules/{name}`).
    pub async fn update_schedule(
        &self,
        name: &str,
        change: &api::UpdateSchedule,
    ) -> Result<api::ScheduleView, ClientError> {
        let req = self
            .request(Method::PATCH, &["v1", "schedules", name])
            .json(change);
        self.send(req, "a schedule").await
    }

    /// Pauses a schedule: it fires nothing until resumed
    /// (`POST /v1/schedules/{name}/pause`).
    pub async fn pause_schedule(&self, name: &str) -> Result<api::ScheduleView, ClientError> {
        self.schedule_action(name, "pause").await
    }

    /// Resumes a paused schedule at its next fire time; what came due meanwhile is not
    /// made up (`POST /v1/schedules/{name}/resume`).
    pub async fn resume_schedule(&self, name: &str) -> Result<api::ScheduleView, ClientError> {
        self.schedule_action(name, "resume").await
    }

    async fn schedule_action(
        &self,
        name: &str,
        action: &str,
    ) -> Result<api::ScheduleView, ClientError> {
        let req = self.request(Method::POST, &["v1", "schedules", name, action]);
        self.send(req, "a schedule").await
    }

    /// Deletes a schedule; the jobs it made stay (`DELETE /v1/schedules/{name}`).
    pub async fn delete_schedule(&self, name: &str) -> Result<(), ClientError> {
        let req = self.request(Method::DELETE, &["v1", "schedules", name]);
        self.exchange(req).await.map(|_| ())
    }

    // --- workers ---

    /// Registers a worker, or registers it again under the same id after the server
    /// restarted or lost it (`POST /v1/workers`).
    pub async fn register_worker(
        &self,
        registration: &api::RegisterWorker,
    ) -> Result<api::WorkerView, ClientError> {
        let req = self
            .request(Method::POST, &["v1", "workers"])
            .json(registration);
        self.send(req, "a worker").await
    }

    /// Puts a draining worker back to work (`POST /v1/workers/{id}/undrain`).
    pub async fn undrain_worker(&self, worker: Uuid) -> Result<api::WorkerView, ClientError> {
        let req = self.request(
            Method::POST,
            &["v1", "workers", &worker.to_string(), "undrain"],
        );
        self.send(req, "a worker").await
    }

    /// A worker's poll: heartbeat, finished reports and a long-poll for work of up to
    /// `poll.wait_ms` (`POST /v1/workers/{id}/poll`).
    ///
    /// The request is encoded before this returns, so `poll` is only borrowed for the
    /// call and the returned future owns everything it needs (it can be spawned).
    pub fn poll(
        &self,
        worker: Uuid,
        poll: &api::PollRequest,
    ) -> impl Future<Output = Result<api::PollResponse, ClientError>> + Send + 'static {
        let body = serde_json::to_vec(poll).expect("a poll request always encodes as JSON");
        let wait = Duration::from_millis(poll.wait_ms);
        let client = self.clone();
        let req = self
            .request(
                Method::POST,
                &["v1", "workers", &worker.to_string(), "poll"],
            )
            .header(
                reqwest::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )
            .timeout(wait + WAIT_MARGIN);
        async move { client.send(req.body(body), "a poll answer").await }
    }

    /// Uploads the new output of the worker's running attempts (protocol 8,
    /// `POST /v1/workers/{id}/logs`); the answer names the chunks refused.
    pub async fn upload_logs(
        &self,
        worker: Uuid,
        chunks: &api::LogChunks,
    ) -> Result<api::LogChunksAnswer, ClientError> {
        let req = self
            .request(
                Method::POST,
                &["v1", "workers", &worker.to_string(), "logs"],
            )
            .json(chunks);
        self.send(req, "a log upload answer").await
    }

    /// Tells the server to give the worker nothing new; its running attempts finish
    /// (`POST /v1/workers/{id}/drain`).
    pub async fn drain_worker(&self, worker: Uuid) -> Result<api::WorkerView, ClientError> {
        let req = self.request(
            Method::POST,
            &["v1", "workers", &worker.to_string(), "drain"],
        );
        self.send(req, "a worker").await
    }

    /// Every worker the cluster knows, by name (`GET /v1/workers`).
    pub async fn workers(&self) -> Result<Vec<api::WorkerView>, ClientError> {
        let req = self.request(Method::GET, &["v1", "workers"]);
        self.send(req, "a worker list").await
    }

    /// Cluster totals: workers and jobs by state, resources (`GET /v1/cluster`).
    pub async fn cluster(&self) -> Result<api::ClusterSummary, ClientError> {
        let req = self.request(Method::GET, &["v1", "cluster"]);
        self.send(req, "a cluster summary").await
    }

    /// The worker autoscaler: pools, decisions and events (`GET /v1/autoscale`).
    pub async fn autoscale(&self) -> Result<api::AutoscaleView, ClientError> {
        let req = self.request(Method::GET, &["v1", "autoscale"]);
        self.send(req, "the autoscaler's view").await
    }

    /// Whether the server has restored its state and serves (`GET /readyz`): `false`
    /// while it restores, an error when it cannot be reached.
    pub async fn ready(&self) -> Result<bool, ClientError> {
        let req = self.request(Method::GET, &["readyz"]);
        match self.exchange(req).await {
            Ok(_) => Ok(true),
            Err(e) if e.status() == Some(503) => Ok(false),
            Err(e) => Err(e),
        }
    }

    // --- plumbing ---

    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.inner.bases[self.current()].clone();
        url.path_segments_mut()
            .expect("checked in new(): the base URL can have paths appended")
            .pop_if_empty()
            .extend(segments);
        url
    }

    fn request(&self, method: Method, segments: &[&str]) -> RequestBuilder {
        self.request_url(method, self.url(segments))
    }

    fn request_url(&self, method: Method, url: Url) -> RequestBuilder {
        let req = self
            .inner
            .http
            .request(method, url)
            .timeout(self.inner.timeout);
        match &self.inner.auth {
            Some(auth) => req.header(AUTHORIZATION, auth.clone()),
            None => req,
        }
    }

    /// Sends and decodes a JSON answer of type `T`.
    async fn send<T: DeserializeOwned>(
        &self,
        req: RequestBuilder,
        what: &'static str,
    ) -> Result<T, ClientError> {
        let (status, bytes) = self.exchange(req).await?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
            url: self.inner.shown.clone(),
            status: status.as_u16(),
            what,
            reason: e.to_string(),
        })
    }

    /// Sends, and answers with the body of a 2xx answer or the error the server gave.
    async fn exchange(&self, req: RequestBuilder) -> Result<(StatusCode, Vec<u8>), ClientError> {
        let (client, req) = req.build_split();
        let mut req = req.map_err(|e| self.transport(e, None))?;
        let timeout = req.timeout().copied();
        let mut moves = 0;
        let answer = loop {
            let again = (self.inner.bases.len() > 1)
                .then(|| req.try_clone())
                .flatten();
            match client.execute(req).await {
                Ok(answer) => break answer,
                // Not connected, so not received: the next server may take it.
                Err(e) if e.is_connect() && moves + 1 < self.inner.bases.len() => {
                    let Some(mut next) = again else {
                        return Err(self.transport(e, timeout));
                    };
                    *next.url_mut() = self.move_on(next.url());
                    req = next;
                    moves += 1;
                }
                Err(e) => return Err(self.transport(e, timeout)),
            }
        };
        let status = answer.status();
        let bytes = answer
            .bytes()
            .await
            .map_err(|e| self.transport(e, timeout))?;
        if status.is_success() {
            return Ok((status, bytes.to_vec()));
        }
        Err(self.refusal(status, &bytes))
    }

    /// Makes the next server the current one; answers `url` (made for the current one)
    /// made for it.
    fn move_on(&self, url: &Url) -> Url {
        let bases = &self.inner.bases;
        let from = bases
            .iter()
            .position(|base| {
                url.as_str()
                    .starts_with(base.as_str().trim_end_matches('/'))
            })
            .unwrap_or_else(|| self.current());
        // Calls failing at once move on once: the first moves, the others follow it.
        let to = match self.inner.current.compare_exchange(
            from,
            (from + 1) % bases.len(),
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
        ) {
            Ok(_) => (from + 1) % bases.len(),
            Err(now) if now != from => now,
            Err(_) => (from + 1) % bases.len(),
        };
        let rest = url
            .path()
            .strip_prefix(bases[from].path().trim_end_matches('/'))
            .unwrap_or(url.path());
        let mut moved = bases[to].clone();
        moved.set_path(&format!("{}{rest}", bases[to].path().trim_end_matches('/')));
        moved.set_query(url.query());
        moved
    }

    fn transport(&self, err: reqwest::Error, timeout: Option<Duration>) -> ClientError {
        if err.is_timeout() {
            return ClientError::Timeout {
                url: self.inner.shown.clone(),
                after: timeout.unwrap_or(self.inner.timeout),
            };
        }
        ClientError::Unreachable {
            url: self.inner.shown.clone(),
            cause: root_cause(&err),
            source: err,
        }
    }

    fn refusal(&self, status: StatusCode, body: &[u8]) -> ClientError {
        let detail = match serde_json::from_slice::<api::ErrorBody>(body) {
            Ok(body) => body.error,
            // Not the server's error shape (a proxy's page, or a code newer than this
            // client): show the message if there is one, else what came.
            Err(_) => {
                let message = serde_json::from_slice::<serde_json::Value>(body)
                    .ok()
                    .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
                    .unwrap_or_else(|| {
                        let text = String::from_utf8_lossy(body);
                        text.trim().chars().take(300).collect()
                    });
                return ClientError::Http {
                    status: status.as_u16(),
                    message: if message.is_empty() {
                        format!("no explanation ({status})")
                    } else {
                        message
                    },
                };
            }
        };
        match status {
            StatusCode::UNAUTHORIZED => ClientError::Unauthorized {
                message: detail.message,
            },
            StatusCode::FORBIDDEN => ClientError::Forbidden {
                message: detail.message,
            },
            _ => ClientError::Api {
                status: status.as_u16(),
                error: detail,
            },
        }
    }
}

/// `url::Url` leaves a bare `?` behind when no pair was appended.
fn strip_empty_query(mut url: Url) -> Url {
    if url.query() == Some("") {
        url.set_query(None);
    }
    url
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn urls_keep_a_path_prefix_and_escape_segments() {
        let client = Client::new("http://127.0.0.1:7420/lqsm/", None).unwrap();
        assert_eq!(
            client.url(&["v1", "queues", "root.a b"]).as_str(),
            "http://127.0.0.1:7420/lqsm/v1/queues/root.a%20b"
        );
        let client = Client::new("http://127.0.0.1:7420", None).unwrap();
        assert_eq!(
            client.url(&["v1", "queues", "a/b"]).as_str(),
            "http://127.0.0.1:7420/v1/queues/a%2Fb"
        );
    }

    #[test]
    fn unusable_urls_are_refused_with_an_example() {
        for bad in ["127.0.0.1:7420", "ftp://x", "not a url"] {
            let err = Client::new(bad, None).unwrap_err();
            assert!(
                matches!(err, ClientError::InvalidUrl { .. }),
                "{bad}: {err}"
            );
            assert!(err.to_string().contains("http://127.0.0.1:7420"), "{err}");
        }
    }

    #[test]
    fn refusals_keep_the_servers_code_and_other_bodies_their_message() {
        let client = Client::new("http://127.0.0.1:9", None).unwrap();
        let err = client.refusal(
            StatusCode::CONFLICT,
            br#"{"error":{"code":"register_again","message":"unknown worker","field":"id"}}"#,
        );
        assert_eq!(err.code(), Some(api::ErrorCode::RegisterAgain));
        assert!(err.is_register_again());
        // A code newer than this client: the server's message still reaches the person.
        let err = client.refusal(
            StatusCode::BAD_REQUEST,
            br#"{"error":{"code":"brand_new_code","message":"try the other thing"}}"#,
        );
        assert_eq!(err.code(), None);
        assert_eq!(err.status(), Some(400));
        assert!(err.to_string().contains("try the other thing"), "{err}");
        // Not LQSM's shape at all (a proxy's page).
        let err = client.refusal(StatusCode::BAD_GATEWAY, b"<html>bad gateway</html>");
        assert!(err.is_transient());
        assert!(err.to_string().contains("bad gateway"), "{err}");
    }

    #[tokio::test]
    async fn a_closed_port_is_reported_as_unreachable_with_a_hint() {
        // A port that was just free: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let client = Client::new(&format!("http://127.0.0.1:{port}"), None).unwrap();
        let err = client.cluster().await.unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, ClientError::Unreachable { .. }), "{text}");
        assert!(text.contains(&format!("http://127.0.0.1:{port}")), "{text}");
        assert!(text.to_lowercase().contains("refused"), "{text}");
        assert!(text.contains("LQSM_SERVER"), "{text}");
        assert!(err.is_transient());
    }
}
