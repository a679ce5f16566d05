//! The seam between the JobServer (HTTP) and the ResourceManager: the scheduler as the
//! JobServer sees it. Handlers hold an `Arc<dyn Scheduler>` and nothing else of the
//! scheduler; today's implementation is [`InProcess`] (the actor in this process, reads
//! from the store and from the view the actor publishes); a forwarding implementation to
//! a remote leader can be added without touching the handlers.
//!
//! Every method is async and object-safe (it returns a boxed future), and failures are
//! data: the scheduler's own refusals as the core's error types, and
//! [`SchedulerError`] when the scheduler cannot answer at all.

use crate::resource_manager::{Dispatch, QueueOp, Runtime, ScheduleOp};
use crate::view::{ClusterView, Published};
use lqsm_core::schedules::{ScheduleError, ScheduleRecord};
use lqsm_core::{
    JobError, JobId, JobRecord, JobState, QueueError, SubmitError, SubmitRequest, Submitted,
    WorkerError, WorkerId, WorkerPoll, WorkerRegistration, codec,
};
use lqsm_store::{JobFilter, JobKey, JobQuery, Order, Store};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// Why the scheduler could not answer at all (as opposed to refusing a request).
#[derive(Debug, Clone, thiserror::Error)]
pub enum SchedulerError {
    /// It stopped (the store failed, or the server is shutting down).
    #[error("the resource manager has stopped")]
    Stopped,
    /// The server is still restoring its state from the store.
    #[error("the server is restoring its state")]
    Restoring,
    /// A read from the store failed.
    #[error("{0}")]
    Read(String),
    /// This server does not lead: it answers reads of jobs from the store and hands every
    /// other call to the leader, and none is known right now (an election is under way).
    #[error("this server does not lead and no leader is known yet")]
    NotLeader,
}

/// What every scheduler call returns: a boxed future, so that the trait is object-safe.
pub type Answer<'a, T> = Pin<Box<dyn Future<Output = Result<T, SchedulerError>> + Send + 'a>>;

/// A job as read: its record, with the payload kept out of memory put back in its kind.
pub type JobRead = JobRecord;

/// Which jobs a listing wants (the wire's `GET /v1/jobs`, parsed).
#[derive(Debug, Clone, PartialEq)]
pub struct JobListing {
    /// This queue and every queue below it.
    pub queue: Option<String>,
    /// Only this state.
    pub state: Option<JobState>,
    /// Only jobs with this tag.
    pub tag: Option<String>,
    /// Only jobs submitted by this token name (`anonymous`: by callers of a server
    /// without tokens).
    pub submitter: Option<String>,
    /// Oldest or newest first.
    pub order: Order,
    /// Start strictly after this job (in `order`).
    pub after: Option<JobId>,
    /// At most this many (1..=1000).
    pub limit: usize,
}

/// A page of a listing.
#[derive(Debug, Clone, Default)]
pub struct JobReadPage {
    /// The jobs, in the order asked.
    pub jobs: Vec<JobRead>,
    /// Whether more jobs may match after the page.
    pub more: bool,
    /// With `more`: the job the next page starts after. The last job of the page, or a
    /// later one when the listing stopped after examining [`MAX_EXAMINED`] records
    /// without filling the page (the page then holds fewer jobs than asked, possibly
    /// none, and the listing goes on from there).
    pub resume_after: Option<JobId>,
}

/// The scheduler as the JobServer sees it.
pub trait Scheduler: Send + Sync + 'static {
    /// Submits jobs, each with the payload to store when its kind is `Stored`; answers
    /// once the batch holding them is durable.
    fn submit(
        &self,
        jobs: Vec<(SubmitRequest, Option<Vec<u8>>)>,
    ) -> Answer<'_, Vec<Result<Submitted, SubmitError>>>;
    /// Submits a workflow: every node or none (ids in request order).
    fn submit_workflow(
        &self,
        nodes: Vec<(SubmitRequest, Option<Vec<u8>>)>,
    ) -> Answer<'_, Result<Vec<JobId>, lqsm_core::WorkflowError>>;
    /// Submits a broadcast: one job per matching active worker, as workflow `id`.
    fn submit_broadcast(
        &self,
        template: (SubmitRequest, Option<Vec<u8>>),
        id: uuid::Uuid,
        new_workers: bool,
    ) -> Answer<'_, Result<Vec<lqsm_core::BroadcastJob>, lqsm_core::WorkflowError>>;
    /// Cancels a job.
    fn cancel(&self, id: JobId, reason: String) -> Answer<'_, Result<(), JobError>>;
    /// Cancels every unfinished job a selection matches; says how many.
    fn cancel_selected(
        &self,
        selection: lqsm_core::JobSelection,
        reason: String,
    ) -> Answer<'_, Result<usize, lqsm_core::SelectionError>>;
    /// Changes the queue tree.
    fn queue(&self, op: QueueOp) -> Answer<'_, Result<(), QueueError>>;
    /// Creates queues in order, in one commit: `Ok(true)` created, `Ok(false)` existed
    /// with exactly these settings.
    fn create_queues(
        &self,
        queues: Vec<(String, lqsm_core::QueueConfig)>,
    ) -> Answer<'_, Vec<Result<bool, QueueError>>>;
    /// Registers a worker.
    fn register(&self, registration: WorkerRegistration) -> Answer<'_, Result<(), WorkerError>>;
    /// Drains a worker.
    fn drain_worker(&self, id: WorkerId) -> Answer<'_, Result<(), WorkerError>>;
    /// Puts a draining worker back to work.
    fn undrain_worker(&self, id: WorkerId) -> Answer<'_, Result<(), WorkerError>>;
    /// A worker's long-poll, with the logs of the attempts it reports finished.
    fn poll(
        &self,
        worker: WorkerId,
        poll: WorkerPoll,
        logs: crate::resource_manager::Uploads,
        wait: Duration,
    ) -> Answer<'_, Result<Dispatch, WorkerError>>;
    /// Returns when the job is finished, or `wait` has passed.
    fn wait_job(&self, id: JobId, wait: Duration) -> Answer<'_, ()>;
    /// One job as acknowledged (None when there is no such job).
    fn job(&self, id: JobId) -> Answer<'_, Option<JobRead>>;
    /// A page of jobs.
    fn jobs(&self, listing: JobListing) -> Answer<'_, JobReadPage>;
    /// Many jobs by id, in one read task (each `None` when there is no such job).
    fn jobs_by_id(&self, ids: Vec<JobId>) -> Answer<'_, Vec<Option<JobRead>>>;
    /// The captured output of a job's last reported attempt.
    fn logs(&self, id: JobId) -> Answer<'_, Option<Vec<u8>>>;
    /// Takes the output of running attempts that `worker` uploaded (protocol 8), for
    /// its current attempts only; answers with the chunks refused. Only the leader
    /// takes them (followers pass the call on): a scheduler without an actor answers
    /// [`SchedulerError::NotLeader`].
    fn log_chunks(
        &self,
        _worker: WorkerId,
        _chunks: Vec<crate::resource_manager::LogChunk>,
    ) -> Answer<'_, Result<Vec<lqsm_core::RefusedReport>, WorkerError>> {
        not_leader()
    }
    /// The output of attempt `token` of job `id` as its worker uploaded it so far, from
    /// byte `from` on; `None` when none is held. It lives in the leader's memory: a
    /// follower answers [`SchedulerError::NotLeader`] (and the JobServer asks the
    /// leader); a scheduler that holds none answers `None`.
    fn live_logs(
        &self,
        _id: JobId,
        _token: lqsm_core::FencingToken,
        _from: u64,
    ) -> Answer<'_, Option<crate::live_logs::LiveRead>> {
        Box::pin(async { Ok(None) })
    }
    /// Queues, workers and capacity as of the last commit.
    fn view(&self) -> Answer<'_, Arc<ClusterView>>;
    /// The number of jobs held in each state (states with none left out).
    fn job_counts(&self) -> Answer<'_, BTreeMap<String, u64>>;
    /// The store and the lease this server writes under.
    fn store_status(&self) -> Answer<'_, StoreStatus>;
    /// Changes the periodic schedules; answers with the schedule as it is now (`None`
    /// once deleted).
    fn schedule(&self, op: ScheduleOp)
    -> Answer<'_, Result<Option<ScheduleRecord>, ScheduleError>>;
    /// Every schedule with its state, in name order.
    fn schedules(&self) -> Answer<'_, Vec<ScheduleRecord>>;
    /// The worker autoscaler's pools and recent events. A scheduler without one (a
    /// test's stub) answers that autoscaling is off.
    fn autoscale(&self) -> Answer<'_, crate::autoscale::AutoscaleReport> {
        Box::pin(async { Ok(crate::autoscale::AutoscaleReport::default()) })
    }
}

/// The scheduler of this process: the actor for changes, the store and the published
/// view for reads (so reads never run on the actor's thread).
#[derive(Clone)]
pub struct InProcess {
    runtime: Runtime,
    view: Published,
    reads: StoreReads,
}

/// The store and who writes to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreStatus {
    /// `embedded` or `postgres`.
    pub backend: &'static str,
    /// The lease the leader writes under, as this server last saw it.
    pub lease: Option<lqsm_store::Lease>,
    /// The servers sharing the store, as they last announced themselves.
    pub servers: Vec<lqsm_store::ServerInfo>,
}

/// Reads answered from the store itself, which every server can do, leader or not.
#[derive(Clone)]
pub struct StoreReads {
    store: Arc<dyn Store>,
    backend: &'static str,
    lease: tokio::sync::watch::Receiver<Option<lqsm_store::Lease>>,
}

impl StoreReads {
    /// Reads from `store` (a `backend` store), showing the lease `lease` follows.
    pub fn new(
        store: Arc<dyn Store>,
        backend: &'static str,
        lease: tokio::sync::watch::Receiver<Option<lqsm_store::Lease>>,
    ) -> Self {
        Self {
            store,
            backend,
            lease,
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        read: impl FnOnce(&dyn Store) -> Result<T, SchedulerError> + Send + 'static,
    ) -> Result<T, SchedulerError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || read(store.as_ref()))
            .await
            .map_err(|e| SchedulerError::Read(format!("a read task failed: {e}")))?
    }

    fn job(&self, id: JobId) -> Answer<'_, Option<JobRead>> {
        Box::pin(self.blocking(move |store| {
            let key = *id.0.as_bytes();
            match store.job(&key).map_err(read_error)? {
                Some(bytes) => decode(store, &key, &bytes).map(Some),
                None => Ok(None),
            }
        }))
    }

    fn jobs_by_id(&self, ids: Vec<JobId>) -> Answer<'_, Vec<Option<JobRead>>> {
        Box::pin(self.blocking(move |store| {
            let mut found = Vec::with_capacity(ids.len());
            let mut keys = Vec::with_capacity(ids.len());
            let mut records = Vec::with_capacity(ids.len());
            for id in &ids {
                let key = *id.0.as_bytes();
                let Some(bytes) = store.job(&key).map_err(read_error)? else {
                    found.push(None);
                    continue;
                };
                let record = codec::decode_job(&bytes).map_err(|e| {
                    SchedulerError::Read(format!("job {} cannot be decoded: {e}", id.0))
                })?;
                found.push(Some(records.len()));
                keys.push(key);
                records.push(record);
            }
            // The results kept apart, read in one call for them all (a chord's
            // callback reads thousands).
            fill_results(store, &keys, &mut records)?;
            let mut records: Vec<Option<JobRead>> = records.into_iter().map(Some).collect();
            Ok(found
                .into_iter()
                .map(|at| at.and_then(|i| records[i].take()))
                .collect())
        }))
    }

    fn jobs(&self, view: Arc<ClusterView>, listing: JobListing) -> Answer<'_, JobReadPage> {
        Box::pin(self.blocking(move |store| list(store, &view, &listing)))
    }

    fn logs(&self, id: JobId) -> Answer<'_, Option<Vec<u8>>> {
        Box::pin(self.blocking(move |store| store.logs(id.0.as_bytes()).map_err(read_error)))
    }

    fn store_status(&self) -> Answer<'_, StoreStatus> {
        let backend = self.backend;
        let lease = self.lease.borrow().clone();
        Box::pin(async move {
            let servers = self
                .blocking(|store| store.servers().map_err(read_error))
                .await?;
            Ok(StoreStatus {
                backend,
                lease,
                servers,
            })
        })
    }

    fn job_counts(&self) -> Answer<'_, BTreeMap<String, u64>> {
        Box::pin(self.blocking(|store| {
            let mut by_state = BTreeMap::new();
            for count in store.counts().map_err(read_error)? {
                *by_state.entry(count.state).or_insert(0) += count.count;
            }
            Ok(by_state)
        }))
    }
}

impl InProcess {
    /// Wraps the actor's handle and the views it publishes, reading the store with
    /// `reads`.
    pub fn new(runtime: Runtime, view: Published, reads: StoreReads) -> Self {
        Self {
            runtime,
            view,
            reads,
        }
    }
}

fn read_error(e: lqsm_store::StoreError) -> SchedulerError {
    SchedulerError::Read(e.to_string())
}

/// Decodes a job record and puts its stored payload back in its kind.
fn decode(store: &dyn Store, key: &JobKey, bytes: &[u8]) -> Result<JobRead, SchedulerError> {
    let mut record = codec::decode_job(bytes).map_err(|e| {
        SchedulerError::Read(format!(
            "job {} cannot be decoded: {e}",
            uuid::Uuid::from_bytes(*key)
        ))
    })?;
    if matches!(record.spec.kind, lqsm_core::JobKind::Stored { .. })
        && let Some(kind) = crate::resource_manager::fetch_kinds(store, &[*key])
            .into_values()
            .next()
    {
        record.spec.kind = kind;
    }
    let mut records = [record];
    fill_results(store, &[*key], &mut records)?;
    let [record] = records;
    Ok(record)
}

/// Puts back the results kept apart from the records (`SucceededStored`), read in one
/// call, so every reader sees each job as it ended. A result that cannot be read is an
/// error, never a silent `null` (a dependent would run on it).
fn fill_results(
    store: &dyn Store,
    keys: &[JobKey],
    records: &mut [JobRead],
) -> Result<(), SchedulerError> {
    let stored: Vec<usize> = records
        .iter()
        .enumerate()
        .filter(|(_, r)| {
            matches!(
                r.termination,
                Some(lqsm_core::Termination::SucceededStored { .. })
            )
        })
        .map(|(i, _)| i)
        .collect();
    if stored.is_empty() {
        return Ok(());
    }
    let wanted: Vec<JobKey> = stored.iter().map(|i| keys[*i]).collect();
    let found = store.results(&wanted).map_err(read_error)?;
    for (i, bytes) in stored.into_iter().zip(found) {
        let id = uuid::Uuid::from_bytes(keys[i]);
        let result = bytes
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|text| lqsm_core::jobs::Json::parse(&text).ok())
            .ok_or_else(|| {
                SchedulerError::Read(format!("the kept result of job {id} is missing or damaged"))
            })?;
        if let Some(lqsm_core::Termination::SucceededStored { exit_code }) = records[i].termination
        {
            records[i].termination = Some(lqsm_core::Termination::Succeeded {
                result: Some(result),
                exit_code,
            });
        }
    }
    Ok(())
}

impl Scheduler for InProcess {
    fn submit(
        &self,
        jobs: Vec<(SubmitRequest, Option<Vec<u8>>)>,
    ) -> Answer<'_, Vec<Result<Submitted, SubmitError>>> {
        Box::pin(self.runtime.submit(jobs))
    }

    fn submit_workflow(
        &self,
        nodes: Vec<(SubmitRequest, Option<Vec<u8>>)>,
    ) -> Answer<'_, Result<Vec<JobId>, lqsm_core::WorkflowError>> {
        Box::pin(self.runtime.submit_workflow(nodes))
    }

    fn submit_broadcast(
        &self,
        template: (SubmitRequest, Option<Vec<u8>>),
        id: uuid::Uuid,
        new_workers: bool,
    ) -> Answer<'_, Result<Vec<lqsm_core::BroadcastJob>, lqsm_core::WorkflowError>> {
        Box::pin(self.runtime.submit_broadcast(template, id, new_workers))
    }

    fn cancel(&self, id: JobId, reason: String) -> Answer<'_, Result<(), JobError>> {
        Box::pin(self.runtime.cancel(id, reason))
    }

    fn cancel_selected(
        &self,
        selection: lqsm_core::JobSelection,
        reason: String,
    ) -> Answer<'_, Result<usize, lqsm_core::SelectionError>> {
        Box::pin(self.runtime.cancel_selected(selection, reason))
    }

    fn queue(&self, op: QueueOp) -> Answer<'_, Result<(), QueueError>> {
        Box::pin(self.runtime.queue(op))
    }

    fn create_queues(
        &self,
        queues: Vec<(String, lqsm_core::QueueConfig)>,
    ) -> Answer<'_, Vec<Result<bool, QueueError>>> {
        Box::pin(self.runtime.create_queues(queues))
    }

    fn register(&self, registration: WorkerRegistration) -> Answer<'_, Result<(), WorkerError>> {
        Box::pin(self.runtime.register(registration))
    }

    fn drain_worker(&self, id: WorkerId) -> Answer<'_, Result<(), WorkerError>> {
        Box::pin(self.runtime.drain_worker(id))
    }

    fn undrain_worker(&self, id: WorkerId) -> Answer<'_, Result<(), WorkerError>> {
        Box::pin(self.runtime.undrain_worker(id))
    }

    fn poll(
        &self,
        worker: WorkerId,
        poll: WorkerPoll,
        logs: crate::resource_manager::Uploads,
        wait: Duration,
    ) -> Answer<'_, Result<Dispatch, WorkerError>> {
        Box::pin(self.runtime.poll(worker, poll, logs, wait))
    }

    fn wait_job(&self, id: JobId, wait: Duration) -> Answer<'_, ()> {
        Box::pin(self.runtime.wait_job(id, wait))
    }

    fn schedule(
        &self,
        op: ScheduleOp,
    ) -> Answer<'_, Result<Option<ScheduleRecord>, ScheduleError>> {
        Box::pin(self.runtime.schedule(op))
    }

    fn schedules(&self) -> Answer<'_, Vec<ScheduleRecord>> {
        Box::pin(self.runtime.schedules())
    }

    fn autoscale(&self) -> Answer<'_, crate::autoscale::AutoscaleReport> {
        Box::pin(self.runtime.autoscale_report())
    }

    fn job(&self, id: JobId) -> Answer<'_, Option<JobRead>> {
        self.reads.job(id)
    }

    fn jobs_by_id(&self, ids: Vec<JobId>) -> Answer<'_, Vec<Option<JobRead>>> {
        self.reads.jobs_by_id(ids)
    }

    fn jobs(&self, listing: JobListing) -> Answer<'_, JobReadPage> {
        self.reads.jobs(self.view.latest(), listing)
    }

    fn logs(&self, id: JobId) -> Answer<'_, Option<Vec<u8>>> {
        self.reads.logs(id)
    }

    fn log_chunks(
        &self,
        worker: WorkerId,
        chunks: Vec<crate::resource_manager::LogChunk>,
    ) -> Answer<'_, Result<Vec<lqsm_core::RefusedReport>, WorkerError>> {
        Box::pin(self.runtime.log_chunks(worker, chunks))
    }

    fn live_logs(
        &self,
        id: JobId,
        token: lqsm_core::FencingToken,
        from: u64,
    ) -> Answer<'_, Option<crate::live_logs::LiveRead>> {
        let read = self.runtime.live_logs().read(id, token, from);
        Box::pin(async move { Ok(read) })
    }

    fn view(&self) -> Answer<'_, Arc<ClusterView>> {
        let view = self.view.latest();
        Box::pin(async move { Ok(view) })
    }

    fn store_status(&self) -> Answer<'_, StoreStatus> {
        self.reads.store_status()
    }

    fn job_counts(&self) -> Answer<'_, BTreeMap<String, u64>> {
        self.reads.job_counts()
    }
}

/// The scheduler of a server that does not lead: it reads jobs from the store (so a job
/// any server acknowledged is readable here at once) and refuses everything else with
/// [`SchedulerError::NotLeader`]. Calls that need the leader never reach it when the
/// server runs normally: the JobServer hands them to the leader over HTTP first.
#[derive(Clone)]
pub struct Follower {
    reads: StoreReads,
}

impl Follower {
    /// A follower reading with `reads`.
    pub fn new(reads: StoreReads) -> Self {
        Self { reads }
    }
}

fn not_leader<'a, T: Send + 'a>() -> Answer<'a, T> {
    Box::pin(async { Err(SchedulerError::NotLeader) })
}

impl Scheduler for Follower {
    fn submit(
        &self,
        _jobs: Vec<(SubmitRequest, Option<Vec<u8>>)>,
    ) -> Answer<'_, Vec<Result<Submitted, SubmitError>>> {
        not_leader()
    }
    fn submit_workflow(
        &self,
        _nodes: Vec<(SubmitRequest, Option<Vec<u8>>)>,
    ) -> Answer<'_, Result<Vec<JobId>, lqsm_core::WorkflowError>> {
        not_leader()
    }
    fn submit_broadcast(
        &self,
        _template: (SubmitRequest, Option<Vec<u8>>),
        _id: uuid::Uuid,
        _new_workers: bool,
    ) -> Answer<'_, Result<Vec<lqsm_core::BroadcastJob>, lqsm_core::WorkflowError>> {
        not_leader()
    }
    fn cancel(&self, _id: JobId, _reason: String) -> Answer<'_, Result<(), JobError>> {
        not_leader()
    }
    fn cancel_selected(
        &self,
        _selection: lqsm_core::JobSelection,
        _reason: String,
    ) -> Answer<'_, Result<usize, lqsm_core::SelectionError>> {
        not_leader()
    }
    fn queue(&self, _op: QueueOp) -> Answer<'_, Result<(), QueueError>> {
        not_leader()
    }
    fn create_queues(
        &self,
        _queues: Vec<(String, lqsm_core::QueueConfig)>,
    ) -> Answer<'_, Vec<Result<bool, QueueError>>> {
        not_leader()
    }
    fn register(&self, _registration: WorkerRegistration) -> Answer<'_, Result<(), WorkerError>> {
        not_leader()
    }
    fn drain_worker(&self, _id: WorkerId) -> Answer<'_, Result<(), WorkerError>> {
        not_leader()
    }
    fn undrain_worker(&self, _id: WorkerId) -> Answer<'_, Result<(), WorkerError>> {
        not_leader()
    }
    fn poll(
        &self,
        _worker: WorkerId,
        _poll: WorkerPoll,
        _logs: crate::resource_manager::Uploads,
        _wait: Duration,
    ) -> Answer<'_, Result<Dispatch, WorkerError>> {
        not_leader()
    }
    fn wait_job(&self, _id: JobId, _wait: Duration) -> Answer<'_, ()> {
        not_leader()
    }
    fn schedule(
        &self,
        _op: ScheduleOp,
    ) -> Answer<'_, Result<Option<ScheduleRecord>, ScheduleError>> {
        not_leader()
    }
    fn schedules(&self) -> Answer<'_, Vec<ScheduleRecord>> {
        not_leader()
    }
    fn autoscale(&self) -> Answer<'_, crate::autoscale::AutoscaleReport> {
        not_leader()
    }
    fn job(&self, id: JobId) -> Answer<'_, Option<JobRead>> {
        self.reads.job(id)
    }

    fn jobs_by_id(&self, ids: Vec<JobId>) -> Answer<'_, Vec<Option<JobRead>>> {
        self.reads.jobs_by_id(ids)
    }
    fn jobs(&self, listing: JobListing) -> Answer<'_, JobReadPage> {
        // Without the leader's queue tree a parent queue's leaves are unknown: the
        // JobServer hands listings by queue to the leader.
        self.reads.jobs(Arc::new(ClusterView::default()), listing)
    }
    fn logs(&self, id: JobId) -> Answer<'_, Option<Vec<u8>>> {
        self.reads.logs(id)
    }
    fn live_logs(
        &self,
        _id: JobId,
        _token: lqsm_core::FencingToken,
        _from: u64,
    ) -> Answer<'_, Option<crate::live_logs::LiveRead>> {
        not_leader()
    }
    fn view(&self) -> Answer<'_, Arc<ClusterView>> {
        not_leader()
    }
    fn job_counts(&self) -> Answer<'_, BTreeMap<String, u64>> {
        self.reads.job_counts()
    }
    fn store_status(&self) -> Answer<'_, StoreStatus> {
        self.reads.store_status()
    }
}

/// Most leaves of a parent queue whose indexes are merged; a larger subtree is read by
/// scanning every job in order and keeping those below it.
const MAX_MERGED_LEAVES: usize = 32;

/// The most records one page of a listing examines. Filters the chosen index does not
/// cover (a state within a queue, a submitter) are checked record by record; a rare match
/// among a million jobs would otherwise read them all for one page. Past this the page
/// ends short and its cursor resumes the scan, so every page answers in bounded time.
/// Decoding and checking costs about 8 µs a record on a loaded 2-core machine: 10,000
/// took 66 to 137 ms a page, over the dashboard's 50 ms goal; 2,000 stay near 20 ms
/// (docs/BENCHMARKS.md, "The dashboard").
pub const MAX_EXAMINED: usize = 2_000;

/// One ordered stream of job keys from one index, read a page at a time.
struct Stream {
    filter: JobFilter,
    after: Option<JobKey>,
    buffered: std::collections::VecDeque<(JobKey, Vec<u8>)>,
    done: bool,
}

impl Stream {
    fn new(filter: JobFilter, after: Option<JobKey>) -> Self {
        Self {
            filter,
            after,
            buffered: std::collections::VecDeque::new(),
            done: false,
        }
    }

    fn peek(
        &mut self,
        store: &dyn Store,
        order: Order,
        chunk: usize,
    ) -> Result<Option<&(JobKey, Vec<u8>)>, SchedulerError> {
        if self.buffered.is_empty() && !self.done {
            let page = store
                .jobs(&JobQuery {
                    filter: self.filter.clone(),
                    order,
                    after: self.after,
                    limit: chunk,
                })
                .map_err(read_error)?;
            self.done = page.next.is_none();
            self.after = page.jobs.last().map(|(k, _)| *k).or(self.after);
            if page.jobs.is_empty() {
                self.done = true;
            }
            self.buffered.extend(page.jobs);
        }
        Ok(self.buffered.front())
    }
}

/// Lists jobs by the most selective index, filtering the rest.
///
/// The index is chosen without counting: a tag (few jobs carry a given tag), else the
/// queue's own index for a leaf (or the merge of its leaves' indexes for a parent with a
/// few), else the state, else every job in order. The other filters are checked on the
/// decoded records.
fn list(
    store: &dyn Store,
    view: &ClusterView,
    listing: &JobListing,
) -> Result<JobReadPage, SchedulerError> {
    let after = listing.after.map(|id| *id.0.as_bytes());
    let state_name = listing.state.map(codec::state_name);
    let leaves: Option<Vec<String>> = listing.queue.as_ref().map(|queue| {
        let below: Vec<String> = view
            .subtree(queue)
            .filter(|q| q.children.is_empty())
            .map(|q| q.path.clone())
            .collect();
        // A queue deleted since may still hold finished jobs: its own index has them.
        if below.is_empty() {
            vec![queue.clone()]
        } else {
            below
        }
    });
    let mut streams: Vec<Stream> = match (&listing.tag, &leaves, state_name) {
        (Some(tag), _, _) => vec![Stream::new(JobFilter::Tag(tag.clone()), after)],
        (None, Some(leaves), _) if leaves.len() <= MAX_MERGED_LEAVES => leaves
            .iter()
            .map(|q| Stream::new(JobFilter::Queue(q.clone()), after))
            .collect(),
        (None, _, Some(state)) => vec![Stream::new(JobFilter::State(state.to_owned()), after)],
        _ => vec![Stream::new(JobFilter::All, after)],
    };
    let chunk = (listing.limit + 1).clamp(64, 1001);
    let mut page = JobReadPage::default();
    let mut examined = 0usize;
    loop {
        // The next key in order across the streams.
        let mut best: Option<(usize, JobKey)> = None;
        for (i, stream) in streams.iter_mut().enumerate() {
            if let Some((key, _)) = stream.peek(store, listing.order, chunk)? {
                let better = best.is_none_or(|(_, b)| match listing.order {
                    Order::OldestFirst => *key < b,
                    Order::NewestFirst => *key > b,
                });
                if better {
                    best = Some((i, *key));
                }
            }
        }
        let Some((i, _)) = best else { break };
        let Some((key, bytes)) = streams[i].buffered.pop_front() else {
            break;
        };
        if examined == MAX_EXAMINED {
            // `key` is not examined: the next page starts after the last one that was.
            page.more = true;
            break;
        }
        examined += 1;
        page.resume_after = Some(JobId(uuid::Uuid::from_bytes(key)));
        let record = codec::decode_job(&bytes).map_err(|e| {
            SchedulerError::Read(format!(
                "job {} cannot be decoded: {e}",
                uuid::Uuid::from_bytes(key)
            ))
        })?;
        let matches = state_name.is_none_or(|s| codec::state_name(record.state) == s)
            && listing.submitter.as_ref().is_none_or(|who| {
                record.spec.submitted_by().unwrap_or(lqsm_api::ANONYMOUS) == who.as_str()
            })
            && listing
                .tag
                .as_ref()
                .is_none_or(|t| record.spec.tags().contains(t))
            && listing
                .queue
                .as_ref()
                .is_none_or(|q| crate::view::is_within(record.queue.as_str(), q));
        if !matches {
            continue;
        }
        if page.jobs.len() == listing.limit {
            page.more = true;
            page.resume_after = page.jobs.last().map(|j| j.id);
            break;
        }
        page.jobs.push(decode(store, &key, &bytes)?);
    }
    if !page.more {
        page.resume_after = None;
    }
    Ok(page)
}

/// The scheduler this server answers with now, switched as its role changes: none while
/// it restores its state (every call answers [`SchedulerError::Restoring`]), the actor in
/// this process while it leads, a [`Follower`] while another server leads.
#[derive(Default)]
pub struct Switch {
    current: std::sync::RwLock<Option<Arc<dyn Scheduler>>>,
}

impl Switch {
    /// Answers with `scheduler` from now on (`None`: restoring).
    pub fn set(&self, scheduler: Option<Arc<dyn Scheduler>>) {
        // A poisoned lock only means a panic elsewhere while it was held; the value is
        // a plain pointer and still whole.
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = scheduler;
    }

    fn get(&self) -> Result<Arc<dyn Scheduler>, SchedulerError> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(SchedulerError::Restoring)
    }
}

macro_rules! forward {
    ($self:ident . $method:ident ( $($arg:expr),* )) => {{
        let current = $self.get();
        Box::pin(async move { current?.$method($($arg),*).await })
    }};
}

impl Scheduler for Switch {
    fn submit(
        &self,
        jobs: Vec<(SubmitRequest, Option<Vec<u8>>)>,
    ) -> Answer<'_, Vec<Result<Submitted, SubmitError>>> {
        forward!(self.submit(jobs))
    }
    fn submit_workflow(
        &self,
        nodes: Vec<(SubmitRequest, Option<Vec<u8>>)>,
    ) -> Answer<'_, Result<Vec<JobId>, lqsm_core::WorkflowError>> {
        forward!(self.submit_workflow(nodes))
    }
    fn submit_broadcast(
        &self,
        template: (SubmitRequest, Option<Vec<u8>>),
        id: uuid::Uuid,
        new_workers: bool,
    ) -> Answer<'_, Result<Vec<lqsm_core::BroadcastJob>, lqsm_core::WorkflowError>> {
        forward!(self.submit_broadcast(template, id, new_workers))
    }
    fn cancel(&self, id: JobId, reason: String) -> Answer<'_, Result<(), JobError>> {
        forward!(self.cancel(id, reason))
    }
    fn cancel_selected(
        &self,
        selection: lqsm_core::JobSelection,
        reason: String,
    ) -> Answer<'_, Result<usize, lqsm_core::SelectionError>> {
        forward!(self.cancel_selected(selection, reason))
    }
    fn queue(&self, op: QueueOp) -> Answer<'_, Result<(), QueueError>> {
        forward!(self.queue(op))
    }
    fn create_queues(
        &self,
        queues: Vec<(String, lqsm_core::QueueConfig)>,
    ) -> Answer<'_, Vec<Result<bool, QueueError>>> {
        forward!(self.create_queues(queues))
    }
    fn register(&self, registration: WorkerRegistration) -> Answer<'_, Result<(), WorkerError>> {
        forward!(self.register(registration))
    }
    fn drain_worker(&self, id: WorkerId) -> Answer<'_, Result<(), WorkerError>> {
        forward!(self.drain_worker(id))
    }
    fn undrain_worker(&self, id: WorkerId) -> Answer<'_, Result<(), WorkerError>> {
        forward!(self.undrain_worker(id))
    }
    fn poll(
        &self,
        worker: WorkerId,
        poll: WorkerPoll,
        logs: crate::resource_manager::Uploads,
        wait: Duration,
    ) -> Answer<'_, Result<Dispatch, WorkerError>> {
        forward!(self.poll(worker, poll, logs, wait))
    }
    fn wait_job(&self, id: JobId, wait: Duration) -> Answer<'_, ()> {
        forward!(self.wait_job(id, wait))
    }
    fn schedule(
        &self,
        op: ScheduleOp,
    ) -> Answer<'_, Result<Option<ScheduleRecord>, ScheduleError>> {
        forward!(self.schedule(op))
    }
    fn schedules(&self) -> Answer<'_, Vec<ScheduleRecord>> {
        forward!(self.schedules())
    }
    fn autoscale(&self) -> Answer<'_, crate::autoscale::AutoscaleReport> {
        forward!(self.autoscale())
    }
    fn job(&self, id: JobId) -> Answer<'_, Option<JobRead>> {
        forward!(self.job(id))
    }
    fn jobs_by_id(&self, ids: Vec<JobId>) -> Answer<'_, Vec<Option<JobRead>>> {
        forward!(self.jobs_by_id(ids))
    }
    fn jobs(&self, listing: JobListing) -> Answer<'_, JobReadPage> {
        forward!(self.jobs(listing))
    }
    fn logs(&self, id: JobId) -> Answer<'_, Option<Vec<u8>>> {
        forward!(self.logs(id))
    }
    fn log_chunks(
        &self,
        worker: WorkerId,
        chunks: Vec<crate::resource_manager::LogChunk>,
    ) -> Answer<'_, Result<Vec<lqsm_core::RefusedReport>, WorkerError>> {
        forward!(self.log_chunks(worker, chunks))
    }
    fn live_logs(
        &self,
        id: JobId,
        token: lqsm_core::FencingToken,
        from: u64,
    ) -> Answer<'_, Option<crate::live_logs::LiveRead>> {
        forward!(self.live_logs(id, token, from))
    }
    fn view(&self) -> Answer<'_, Arc<ClusterView>> {
        forward!(self.view())
    }
    fn store_status(&self) -> Answer<'_, StoreStatus> {
        forward!(self.store_status())
    }
    fn job_counts(&self) -> Answer<'_, BTreeMap<String, u64>> {
        forward!(self.job_counts())
    }
}
