//! Celery's `AsyncResult`: a handle to a submitted job and its eventual result.

use crate::{Client, ClientError};
use lqsm_api::{JobState, JobView};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// The longest wait the server grants in one call; longer waits are several calls.
const LONGEST_SERVER_WAIT: Duration = Duration::from_secs(300);

/// A submitted job whose result can be awaited.
#[derive(Clone, Debug)]
pub struct JobHandle {
    client: Client,
    id: Uuid,
}

/// Why [`JobHandle::get`] has no result to give.
#[derive(Debug, thiserror::Error)]
pub enum JobFailed {
    /// Its last attempt failed and it has no attempts left.
    #[error("job {id} failed: {reason}")]
    Failed {
        /// The job.
        id: Uuid,
        /// Why, as the server recorded it (the handler's message, the exit code...).
        reason: String,
        /// The exit code of a command job's last attempt.
        exit_code: Option<i32>,
    },
    /// It was cancelled.
    #[error("job {id} was cancelled: {reason}")]
    Cancelled {
        /// The job.
        id: Uuid,
        /// By whom or why.
        reason: String,
    },
    /// It was not started before its expiry.
    #[error("job {id} expired before it could start: {reason}")]
    Expired {
        /// The job.
        id: Uuid,
        /// The server's explanation.
        reason: String,
    },
    /// It had not finished when the wait ended; it may still finish.
    #[error(
        "job {id} is still {state} after waiting {}; call get() again to keep waiting, or cancel it",
        lqsm_api::human_duration(*waited)
    )]
    Timeout {
        /// The job.
        id: Uuid,
        /// Its state when the wait ended.
        state: JobState,
        /// How long [`JobHandle::get`] waited.
        waited: Duration,
    },
    /// The server could not be asked.
    #[error(transparent)]
    Client(#[from] ClientError),
}

impl JobHandle {
    /// A handle to job `id` on the server `client` talks to.
    pub fn new(client: Client, id: Uuid) -> Self {
        Self { client, id }
    }

    /// The job's id.
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// The job as it is now.
    pub async fn view(&self) -> Result<JobView, ClientError> {
        self.client.job(self.id).await
    }

    /// Waits up to `timeout` for the job to finish and answers with the result of a
    /// succeeded job (`null` when it has none, as for commands), or why there is
    /// none: Celery's `result.get(timeout=...)`.
    pub async fn get(&self, timeout: Duration) -> Result<serde_json::Value, JobFailed> {
        let started = Instant::now();
        loop {
            let left = timeout.saturating_sub(started.elapsed());
            let view = self
                .client
                .wait(self.id, left.min(LONGEST_SERVER_WAIT))
                .await?;
            let state = match outcome(view) {
                Ok(finished) => return finished,
                Err(state) => state,
            };
            if started.elapsed() >= timeout {
                return Err(JobFailed::Timeout {
                    id: self.id,
                    state,
                    waited: started.elapsed(),
                });
            }
        }
    }
}

/// The outcome of a finished job, or the state of one not finished yet.
fn outcome(view: JobView) -> Result<Result<serde_json::Value, JobFailed>, JobState> {
    let id = view.id;
    let reason = view
        .reason
        .unwrap_or_else(|| "the server gave no reason".to_owned());
    match view.state {
        JobState::Succeeded => Ok(Ok(view.result.unwrap_or(serde_json::Value::Null))),
        JobState::Failed => Ok(Err(JobFailed::Failed {
            id,
            reason,
            exit_code: view.exit_code,
        })),
        JobState::Cancelled => Ok(Err(JobFailed::Cancelled { id, reason })),
        JobState::Expired => Ok(Err(JobFailed::Expired { id, reason })),
        JobState::Pending | JobState::Scheduled | JobState::Running => Err(view.state),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lqsm_api::{JobKind, ResourceFigures};

    fn view(state: JobState, result: Option<serde_json::Value>, reason: Option<&str>) -> JobView {
        JobView {
            id: Uuid::nil(),
            queue: "root.default".into(),
            state,
            kind: JobKind::Function {
                handler: "h".into(),
                args: lqsm_api::RawJson::null(),
            },
            resources: ResourceFigures::default(),
            priority: 0,
            submitted_at_ms: 0,
            submitted_by: "anonymous".into(),
            not_before_ms: None,
            expires_at_ms: None,
            timeout_ms: None,
            soft_timeout_ms: None,
            progress: None,
            max_attempts: 1,
            tags: Vec::new(),
            keys: Default::default(),
            rate_limited_until_ms: None,
            retry_of: None,
            workflow: None,
            name: None,
            after: Vec::new(),
            run_when: None,
            pass_results: false,
            pinned_worker: None,
            secret_env: Vec::new(),
            attempts: Vec::new(),
            result,
            exit_code: Some(3),
            reason: reason.map(Into::into),
            finished_at_ms: None,
        }
    }

    #[test]
    fn a_succeeded_job_gives_its_result_and_a_failed_one_its_reason() {
        let ok = outcome(view(JobState::Succeeded, Some(serde_json::json!(42)), None));
        assert!(matches!(ok, Ok(Ok(v)) if v == 42));
        let failed = outcome(view(JobState::Failed, None, Some("exit code 3: boom")));
        match failed {
            Ok(Err(e @ JobFailed::Failed { .. })) => {
                assert!(e.to_string().contains("exit code 3: boom"), "{e}");
            }
            other => panic!("expected a failure, got {other:?}"),
        }
        assert!(matches!(
            outcome(view(JobState::Cancelled, None, None)),
            Ok(Err(JobFailed::Cancelled { .. }))
        ));
        assert!(matches!(
            outcome(view(JobState::Running, None, None)),
            Err(JobState::Running)
        ));
    }
}
