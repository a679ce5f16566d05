//! What a running function handler can do from inside its job, as Celery's bound tasks
//! do: report a small state ([`update_state`]), ask to be run again later ([`retry`]),
//! and learn that its soft time limit has passed ([`soft_time_limit`]).
//!
//! Each call reaches the attempt whose handler runs it, through a task-local set by the
//! worker around the handler's call and future; outside a handler they do nothing.

use serde_json::Value;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::watch;
use uuid::Uuid;

tokio::task_local! {
    static ATTEMPT: Arc<AttemptContext>;
}

/// What the worker and a running handler share about one attempt.
#[derive(Debug)]
pub(crate) struct AttemptContext {
    job: Uuid,
    progress: Mutex<Option<Value>>,
    retry: Mutex<Option<RetryRequested>>,
    soft_limit: watch::Receiver<bool>,
}

impl AttemptContext {
    /// The context of an attempt of `job`; the sender says when its soft limit passed.
    pub(crate) fn new(job: Uuid) -> (Arc<Self>, watch::Sender<bool>) {
        let (tx, rx) = watch::channel(false);
        let context = Arc::new(Self {
            job,
            progress: Mutex::new(None),
            retry: Mutex::new(None),
            soft_limit: rx,
        });
        (context, tx)
    }

    /// The state the handler last reported.
    pub(crate) fn progress(&self) -> Option<Value> {
        self.progress
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The retry the handler asked for, if it did.
    pub(crate) fn take_retry(&self) -> Option<RetryRequested> {
        self.retry
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// Runs `f` with this context as the current one.
    pub(crate) fn enter<R>(self: &Arc<Self>, f: impl FnOnce() -> R) -> R {
        ATTEMPT.sync_scope(self.clone(), f)
    }

    /// `future` with this context as the current one whenever it runs.
    pub(crate) fn scope<F: std::future::Future>(
        self: Arc<Self>,
        future: F,
    ) -> impl std::future::Future<Output = F::Output> + use<F> {
        ATTEMPT.scope(self, future)
    }
}

/// The id of the job whose handler is running, if one is.
pub fn job_id() -> Option<Uuid> {
    ATTEMPT.try_with(|a| a.job).ok()
}

/// Reports the job's state while it runs (Celery's `update_state(meta=...)`): it shows
/// as the job's `progress` in `lqsm job get` from the worker's next poll on. Keep it small
/// (the server refuses more than 4 KiB). Returns false outside a handler.
pub fn update_state(state: Value) -> bool {
    ATTEMPT
        .try_with(|a| {
            *a.progress.lock().unwrap_or_else(PoisonError::into_inner) = Some(state);
        })
        .is_ok()
}

/// Asks for the job to be run again after `countdown` (the queue's retry backoff when
/// `None`), as Celery's `self.retry(countdown=...)`. Return the value as the handler's
/// error: the attempt then ends as a retry, not a failure, and uses one of the job's
/// attempts (when none is left, the job fails).
///
/// ```
/// # use serde_json::{Value, json};
/// # use std::time::Duration;
/// # async fn gateway_busy() -> bool { false }
/// async fn charge(_args: Value) -> Result<Value, lqsm_worker::RetryRequested> {
///     if gateway_busy().await {
///         return Err(lqsm_worker::retry(Some(Duration::from_secs(30)), "gateway busy"));
///     }
///     Ok(json!("charged"))
/// }
/// ```
pub fn retry(countdown: Option<Duration>, message: impl Into<String>) -> RetryRequested {
    let request = RetryRequested {
        countdown,
        message: message.into(),
    };
    let _ = ATTEMPT.try_with(|a| {
        *a.retry.lock().unwrap_or_else(PoisonError::into_inner) = Some(request.clone());
    });
    request
}

/// Waits until the job's soft time limit (`soft_timeout_ms`) has passed; never returns
/// for a job without one, or outside a handler. Race it with the work
/// (`tokio::select!`) to save what can be saved before the hard timeout.
pub async fn soft_time_limit() {
    let Ok(mut passed) = ATTEMPT.try_with(|a| a.soft_limit.clone()) else {
        return std::future::pending().await;
    };
    if passed.wait_for(|p| *p).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// A handler's request to be run again: see [`retry`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryRequested {
    /// How long to wait first.
    pub countdown: Option<Duration>,
    /// Why.
    pub message: String,
}

impl fmt::Display for RetryRequested {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.countdown {
            Some(wait) => write!(f, "retry in {wait:?}: {}", self.message),
            None => write!(f, "retry: {}", self.message),
        }
    }
}

impl std::error::Error for RetryRequested {}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_handler_reaches_its_own_attempt_and_nothing_outside() {
        assert!(!update_state(serde_json::json!(1)));
        assert_eq!(job_id(), None);
        let (context, soft) = AttemptContext::new(Uuid::nil());
        let handler = context.clone().scope(async {
            assert!(update_state(serde_json::json!({"pct": 40})));
            let _ = retry(Some(Duration::from_secs(3)), "busy");
            soft_time_limit().await;
            job_id()
        });
        let task = tokio::spawn(handler);
        tokio::task::yield_now().await;
        soft.send(true).expect("the handler waits");
        assert_eq!(task.await.expect("ran"), Some(Uuid::nil()));
        assert_eq!(context.progress(), Some(serde_json::json!({"pct": 40})));
        assert_eq!(
            context.take_retry(),
            Some(RetryRequested {
                countdown: Some(Duration::from_secs(3)),
                message: "busy".into()
            })
        );
    }
}
