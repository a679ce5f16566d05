//! Every error the API answers: a status and `{"error":{"code","message","field"}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use lqsm_api::{ErrorBody, ErrorCode, ErrorDetail};
use lqsm_core::{JobError, QueueError, SubmitError, WorkerError};

tokio::task_local! {
    /// Whether the caller of the request being answered may see every queue. A missing
    /// queue's error lists queues near it to spot a typo by, which must not name queues
    /// hidden from the caller; it is set around each API call (`queue_names_for`), so
    /// that every way a queue error reaches an answer, batch items included, obeys it.
    static SEES_EVERY_QUEUE: bool;
}

/// Runs `answer` for a caller who may (or may not) see every queue.
pub async fn queue_names_for<F: std::future::Future>(
    sees_every_queue: bool,
    answer: F,
) -> F::Output {
    SEES_EVERY_QUEUE.scope(sees_every_queue, answer).await
}

/// An error answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// The body.
    pub detail: ErrorDetail,
}

impl ApiError {
    /// Any error.
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status,
            detail: ErrorDetail {
                code,
                message: message.into(),
                field: None,
            },
        }
    }

    /// The same error, blaming `field`.
    pub fn at(mut self, field: impl Into<String>) -> Self {
        self.detail.field = Some(field.into());
        self
    }

    /// A field with a bad value (400).
    pub fn invalid_field(field: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        Self::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidField,
            format!("{field}: {message}"),
        )
        .at(field)
    }

    /// Something that does not exist (404).
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, message)
    }

    /// The store or runtime failed (503).
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            message,
        )
    }

    /// Prefixes the blamed field with the item's place in a batch.
    pub fn in_item(mut self, prefix: &str) -> Self {
        self.detail.field = Some(match self.detail.field.take() {
            Some(f) => format!("{prefix}.{f}"),
            None => prefix.to_owned(),
        });
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(ErrorBody { error: self.detail })).into_response()
    }
}

impl From<QueueError> for ApiError {
    fn from(e: QueueError) -> Self {
        let (status, code, field) = match &e {
            QueueError::InvalidPath { .. } => (
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidField,
                Some("path".to_owned()),
            ),
            QueueError::NotFound { .. } => (
                StatusCode::NOT_FOUND,
                ErrorCode::NotFound,
                Some("queue".to_owned()),
            ),
            QueueError::AlreadyExists(_) => (
                StatusCode::CONFLICT,
                ErrorCode::Conflict,
                Some("path".to_owned()),
            ),
            QueueError::InvalidConfig { field, .. } => (
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidField,
                Some(field.clone()),
            ),
            QueueError::CapacityOverflow { .. } => (
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidField,
                Some("capacity".to_owned()),
            ),
            QueueError::UnknownPolicy { kind, .. } => (
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidField,
                Some((*kind).to_owned()),
            ),
            QueueError::ParentHoldsJobs(_) => (
                StatusCode::CONFLICT,
                ErrorCode::Conflict,
                Some("path".to_owned()),
            ),
            QueueError::HoldsJobs { .. } => (
                StatusCode::CONFLICT,
                ErrorCode::Conflict,
                Some("force".to_owned()),
            ),
            QueueError::OnDemandLimit { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::QueueFull,
                Some("queue".to_owned()),
            ),
            QueueError::Root(_) => (
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidField,
                Some("path".to_owned()),
            ),
        };
        let message = match &e {
            QueueError::NotFound { path, .. }
                if !SEES_EVERY_QUEUE.try_with(|sees| *sees).unwrap_or(true) =>
            {
                format!("queue `{path}` does not exist, or this token may not see it")
            }
            _ => e.to_string(),
        };
        let mut err = Self::new(status, code, message);
        err.detail.field = field;
        err
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        match e {
            SubmitError::Queue(q) => ApiError::from(q).at("queue"),
            SubmitError::NotALeaf(_) | SubmitError::OnDemandParent(_) => Self::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidField,
                e.to_string(),
            )
            .at("queue"),
            SubmitError::NotAccepting { .. } => {
                Self::new(StatusCode::CONFLICT, ErrorCode::NotAccepting, e.to_string()).at("queue")
            }
            SubmitError::InvalidField { ref field, .. } => {
                // The core names fields as the wire does.
                let field = field.clone();
                Self::new(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::InvalidField,
                    e.to_string(),
                )
                .at(field)
            }
            SubmitError::DuplicateId(_) => {
                Self::new(StatusCode::CONFLICT, ErrorCode::Conflict, e.to_string()).at("id")
            }
            SubmitError::QueueFull { .. } => Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::QueueFull,
                e.to_string(),
            )
            .at("queue"),
            SubmitError::Refused { .. } => {
                Self::new(StatusCode::FORBIDDEN, ErrorCode::Refused, e.to_string())
            }
        }
    }
}

impl From<JobError> for ApiError {
    fn from(e: JobError) -> Self {
        match e {
            JobError::NotFound(_) => Self::not_found(e.to_string()).at("id"),
            JobError::AlreadyFinished { .. } => {
                Self::new(StatusCode::CONFLICT, ErrorCode::Conflict, e.to_string())
            }
        }
    }
}

impl From<lqsm_core::SelectionError> for ApiError {
    fn from(e: lqsm_core::SelectionError) -> Self {
        match e {
            lqsm_core::SelectionError::Queue(q) => Self::from(q),
            lqsm_core::SelectionError::Empty => Self::invalid_field("queue", e.to_string()),
            lqsm_core::SelectionError::FinishedState(_) => {
                Self::invalid_field("state", e.to_string())
            }
        }
    }
}

impl From<WorkerError> for ApiError {
    fn from(e: WorkerError) -> Self {
        match e {
            WorkerError::Unknown(_) | WorkerError::Lost(_) => Self::new(
                StatusCode::CONFLICT,
                ErrorCode::RegisterAgain,
                e.to_string(),
            )
            .at("id"),
            WorkerError::StaleRegistration { .. } => Self::new(
                StatusCode::CONFLICT,
                ErrorCode::StaleRegistration,
                e.to_string(),
            )
            .at("registration"),
            WorkerError::InvalidField { ref field, .. } => {
                let field = field.clone();
                Self::new(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::InvalidField,
                    e.to_string(),
                )
                .at(field)
            }
        }
    }
}
