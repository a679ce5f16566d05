//! A scheduler that takes every well-formed request and keeps nothing, so that the
//! request target runs the real router, extractors, parsing and validation of the HTTP
//! API at thousands of requests a second, without a store or an actor behind it.
//!
//! Changes are answered as done (a submit as created, a queue change as made), reads as
//! empty, and what needs real state to answer (a poll's dispatch, a schedule, the store's
//! status) as the scheduler having stopped: the JobServer turns that into a 503, which
//! the target takes as "decoding accepted the request".

use lqsm_core::schedules::{ScheduleError, ScheduleRecord};
use lqsm_core::{
    BroadcastJob, JobError, JobId, JobSelection, QueueConfig, QueueError, ResourceManager,
    SelectionError, SubmitError, SubmitRequest, Submitted, WorkerError, WorkerId, WorkerPoll,
    WorkerRegistration, WorkflowError,
};
use lqsm_server::resource_manager::{Dispatch, QueueOp, ScheduleOp, Uploads};
use lqsm_server::scheduler::{
    Answer, JobListing, JobRead, JobReadPage, Scheduler, SchedulerError, StoreStatus,
};
use lqsm_server::view::{ClusterView, Published, ViewBuilder};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// The queues the stub's cluster view holds, so that reads of queues find some.
pub const QUEUES: [&str; 4] = ["root.a", "root.a.x", "root.a.y", "root.b"];

/// The scheduler behind the request target (see the module's documentation).
pub struct AcceptingScheduler {
    view: Arc<ClusterView>,
}

impl AcceptingScheduler {
    /// A stub whose cluster holds [`QUEUES`] and no worker.
    pub fn new() -> Self {
        let view = match ResourceManager::new(Default::default(), Default::default(), 1) {
            Ok(mut rm) => {
                for path in QUEUES {
                    // The paths are valid and created parents first; a refusal would only
                    // leave the view with fewer queues.
                    let _ = rm.create_queue(path, QueueConfig::with_capacity(50.0, 100.0));
                }
                let published = Published::default();
                let _builder = ViewBuilder::new(&rm, published.clone());
                published.latest()
            }
            Err(_) => Arc::new(ClusterView::default()),
        };
        Self { view }
    }
}

impl Default for AcceptingScheduler {
    fn default() -> Self {
        Self::new()
    }
}

fn ready<'a, T: Send + 'a>(value: T) -> Answer<'a, T> {
    Box::pin(std::future::ready(Ok(value)))
}

fn stopped<'a, T: Send + 'a>() -> Answer<'a, T> {
    Box::pin(std::future::ready(Err(SchedulerError::Stopped)))
}

impl Scheduler for AcceptingScheduler {
    fn submit(
        &self,
        jobs: Vec<(SubmitRequest, Option<Vec<u8>>)>,
    ) -> Answer<'_, Vec<Result<Submitted, SubmitError>>> {
        ready(
            jobs.into_iter()
                .map(|(req, _)| Ok(Submitted::Created(req.id)))
                .collect(),
        )
    }

    fn submit_workflow(
        &self,
        nodes: Vec<(SubmitRequest, Option<Vec<u8>>)>,
    ) -> Answer<'_, Result<Vec<JobId>, WorkflowError>> {
        ready(Ok(nodes.into_iter().map(|(req, _)| req.id).collect()))
    }

    fn submit_broadcast(
        &self,
        _template: (SubmitRequest, Option<Vec<u8>>),
        _id: uuid::Uuid,
        _new_workers: bool,
    ) -> Answer<'_, Result<Vec<BroadcastJob>, WorkflowError>> {
        ready(Ok(Vec::new()))
    }

    fn cancel(&self, _id: JobId, _reason: String) -> Answer<'_, Result<(), JobError>> {
        ready(Ok(()))
    }

    fn cancel_selected(
        &self,
        _selection: JobSelection,
        _reason: String,
    ) -> Answer<'_, Result<usize, SelectionError>> {
        ready(Ok(0))
    }

    fn queue(&self, _op: QueueOp) -> Answer<'_, Result<(), QueueError>> {
        ready(Ok(()))
    }

    fn create_queues(
        &self,
        queues: Vec<(String, QueueConfig)>,
    ) -> Answer<'_, Vec<Result<bool, QueueError>>> {
        ready(queues.iter().map(|_| Ok(true)).collect())
    }

    fn register(&self, _registration: WorkerRegistration) -> Answer<'_, Result<(), WorkerError>> {
        ready(Ok(()))
    }

    fn drain_worker(&self, _id: WorkerId) -> Answer<'_, Result<(), WorkerError>> {
        ready(Ok(()))
    }

    fn undrain_worker(&self, _id: WorkerId) -> Answer<'_, Result<(), WorkerError>> {
        ready(Ok(()))
    }

    fn poll(
        &self,
        _worker: WorkerId,
        _poll: WorkerPoll,
        _logs: Uploads,
        _wait: Duration,
    ) -> Answer<'_, Result<Dispatch, WorkerError>> {
        stopped()
    }

    fn log_chunks(
        &self,
        _worker: WorkerId,
        _chunks: Vec<lqsm_server::resource_manager::LogChunk>,
    ) -> Answer<'_, Result<Vec<lqsm_core::RefusedReport>, WorkerError>> {
        stopped()
    }

    fn wait_job(&self, _id: JobId, _wait: Duration) -> Answer<'_, ()> {
        ready(())
    }

    fn job(&self, _id: JobId) -> Answer<'_, Option<JobRead>> {
        ready(None)
    }

    fn jobs(&self, _listing: JobListing) -> Answer<'_, JobReadPage> {
        ready(JobReadPage::default())
    }

    fn jobs_by_id(&self, ids: Vec<JobId>) -> Answer<'_, Vec<Option<JobRead>>> {
        ready(ids.iter().map(|_| None).collect())
    }

    fn logs(&self, _id: JobId) -> Answer<'_, Option<Vec<u8>>> {
        ready(None)
    }

    fn view(&self) -> Answer<'_, Arc<ClusterView>> {
        ready(self.view.clone())
    }

    fn job_counts(&self) -> Answer<'_, BTreeMap<String, u64>> {
        ready(BTreeMap::new())
    }

    fn store_status(&self) -> Answer<'_, StoreStatus> {
        stopped()
    }

    fn schedule(
        &self,
        _op: ScheduleOp,
    ) -> Answer<'_, Result<Option<ScheduleRecord>, ScheduleError>> {
        stopped()
    }

    fn schedules(&self) -> Answer<'_, Vec<ScheduleRecord>> {
        ready(Vec::new())
    }
}
