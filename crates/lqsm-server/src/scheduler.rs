//! The seam between the JobServer (HTTP) and the ResourceManager: the scheduler as the
//! JobServer sees it. Handlers hold an `Arc<dyn Scheduler>` and nothing else of the
//! scheduler; today's implementation is [`InProcess`] (the actor in this process, reads
//! from the store and from the view the actor publishes); a forwarding implementation to
//! a remote leader can be added without touching the handlers.
//!
//! Every method is async and object-safe (it returns a boxed future), and failures are
//! data: the scheduler's own refusals as the core's error types, and
//! [`SchedulerError`] when the scheduler cannot answer at all.

use crate::resource_manager::{Dispatch, QueueOp, Runtime};
use crate::view::{ClusterView, Published};
use lqsm_core::{
    FencingToken, JobError, JobId, JobRecord, JobState, QueueError, SubmitError, SubmitRequest,
    Submitted, WorkerError, WorkerId, WorkerPoll, WorkerRegistration, codec,
};
use lqsm_store::{JobFilter, JobKey, JobQuery, Order, Store};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
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
    /// Whether more jobs match after the last one.
    pub more: bool,
}

/// The scheduler as the JobServer sees it.
pub trait Scheduler: Send + Sync + 'static {
    /// Submits jobs, each with the payload to store when its kind is `Stored`; answers
    /// once the batch holding them is durable.
    fn submit(
        &self,
        jobs: Vec<(SubmitRequest, Option<Vec<u8>>)>,
    ) -> Answer<'_, Vec<Result<Submitted, SubmitError>>>;
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
        logs: Vec<(JobId, FencingToken, Vec<u8>)>,
        wait: Duration,
    ) -> Answer<'_, Result<Dispatch, WorkerError>>;
    /// Returns when the job is finished, or `wait` has passed.
    fn wait_job(&self, id: JobId, wait: Duration) -> Answer<'_, ()>;
    /// One job as acknowledged (None when there is no such job).
    fn job(&self, id: JobId) -> Answer<'_, Option<JobRead>>;
    /// A page of jobs.
    fn jobs(&self, listing: JobListing) -> Answer<'_, JobReadPage>;
    /// The captured output of a job's last reported attempt.
    fn logs(&self, id: JobId) -> Answer<'_, Option<Vec<u8>>>;
    /// Queues, workers and capacity as of the last commit.
    fn view(&self) -> Answer<'_, Arc<ClusterView>>;
    /// The number of jobs held in each state (states with none left out).
    fn job_counts(&self) -> Answer<'_, BTreeMap<String, u64>>;
    /// The store and the lease this server writes under.
    fn store_status(&self) -> Answer<'_, StoreStatus>;
}

/// The scheduler of this process: the actor for changes, the store and the published
/// view for reads (so reads never run on the actor's thread).
#[derive(Clone)]
pub struct InProcess {
    runtime: Runtime,
    store: Arc<dyn Store>,
    view: Published,
    backend: &'static str,
    lease: tokio::sync::watch::Receiver<Option<lqsm_store::Lease>>,
}

/// The store and who writes to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreStatus {
    /// `embedded` or `postgres`.
    pub backend: &'static str,
    /// The lease this server writes under, as of its last renewal.
    pub lease: Option<lqsm_store::Lease>,
}

impl InProcess {
    /// Wraps the actor's handle, the store it commits to and the views it publishes.
    pub fn new(runtime: Runtime, store: Arc<dyn Store>, view: Published) -> Self {
        let (_, lease) = tokio::sync::watch::channel(None);
        Self {
            runtime,
            store,
            view,
            backend: "embedded",
            lease,
        }
    }

    /// The same, naming its backend and following the lease it writes under.
    pub fn with_lease(
        mut self,
        backend: &'static str,
        lease: tokio::sync::watch::Receiver<Option<lqsm_store::Lease>>,
    ) -> Self {
        self.backend = backend;
        self.lease = lease;
        self
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
    Ok(record)
}

impl Scheduler for InProcess {
    fn submit(
        &self,
        jobs: Vec<(SubmitRequest, Option<Vec<u8>>)>,
    ) -> Answer<'_, Vec<Result<Submitted, SubmitError>>> {
        Box::pin(self.runtime.submit(jobs))
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
        logs: Vec<(JobId, FencingToken, Vec<u8>)>,
        wait: Duration,
    ) -> Answer<'_, Result<Dispatch, WorkerError>> {
        Box::pin(self.runtime.poll(worker, poll, logs, wait))
    }

    fn wait_job(&self, id: JobId, wait: Duration) -> Answer<'_, ()> {
        Box::pin(self.runtime.wait_job(id, wait))
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

    fn jobs(&self, listing: JobListing) -> Answer<'_, JobReadPage> {
        let view = self.view.latest();
        Box::pin(self.blocking(move |store| list(store, &view, &listing)))
    }

    fn logs(&self, id: JobId) -> Answer<'_, Option<Vec<u8>>> {
        Box::pin(self.blocking(move |store| store.logs(id.0.as_bytes()).map_err(read_error)))
    }

    fn view(&self) -> Answer<'_, Arc<ClusterView>> {
        let view = self.view.latest();
        Box::pin(async move { Ok(view) })
    }

    fn store_status(&self) -> Answer<'_, StoreStatus> {
        let status = StoreStatus {
            backend: self.backend,
            lease: self.lease.borrow().clone(),
        };
        Box::pin(async move { Ok(status) })
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

/// Most leaves of a parent queue whose indexes are merged; a larger subtree is read by
/// scanning every job in order and keeping those below it.
const MAX_MERGED_LEAVES: usize = 32;

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
        let record = codec::decode_job(&bytes).map_err(|e| {
            SchedulerError::Read(format!(
                "job {} cannot be decoded: {e}",
                uuid::Uuid::from_bytes(key)
            ))
        })?;
        let matches = state_name.is_none_or(|s| codec::state_name(record.state) == s)
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
            break;
        }
        page.jobs.push(decode(store, &key, &bytes)?);
    }
    Ok(page)
}

/// The scheduler until the server has restored its state: every call answers
/// [`SchedulerError::Restoring`]; once [`Starting::ready`] is given the real one, every
/// call goes to it.
#[derive(Default)]
pub struct Starting {
    inner: OnceLock<Arc<dyn Scheduler>>,
}

impl Starting {
    /// Hands over to the restored scheduler (only the first call counts).
    pub fn ready(&self, scheduler: Arc<dyn Scheduler>) {
        let _ = self.inner.set(scheduler);
    }

    /// Whether the server is restored.
    pub fn is_ready(&self) -> bool {
        self.inner.get().is_some()
    }

    fn get(&self) -> Result<&Arc<dyn Scheduler>, SchedulerError> {
        self.inner.get().ok_or(SchedulerError::Restoring)
    }
}

macro_rules! forward {
    ($self:ident . $method:ident ( $($arg:expr),* )) => {
        match $self.get() {
            Ok(inner) => inner.$method($($arg),*),
            Err(e) => Box::pin(async move { Err(e) }),
        }
    };
}

impl Scheduler for Starting {
    fn submit(
        &self,
        jobs: Vec<(SubmitRequest, Option<Vec<u8>>)>,
    ) -> Answer<'_, Vec<Result<Submitted, SubmitError>>> {
        forward!(self.submit(jobs))
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
        logs: Vec<(JobId, FencingToken, Vec<u8>)>,
        wait: Duration,
    ) -> Answer<'_, Result<Dispatch, WorkerError>> {
        forward!(self.poll(worker, poll, logs, wait))
    }
    fn wait_job(&self, id: JobId, wait: Duration) -> Answer<'_, ()> {
        forward!(self.wait_job(id, wait))
    }
    fn job(&self, id: JobId) -> Answer<'_, Option<JobRead>> {
        forward!(self.job(id))
    }
    fn jobs(&self, listing: JobListing) -> Answer<'_, JobReadPage> {
        forward!(self.jobs(listing))
    }
    fn logs(&self, id: JobId) -> Answer<'_, Option<Vec<u8>>> {
        forward!(self.logs(id))
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
