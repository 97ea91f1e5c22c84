//! The API's errors, and the one place where an error becomes an HTTP
//! status: every error names its code (`switchyard_core::ErrorCode`), and
//! [`status`] alone picks the status for a code. Bodies are
//! `{"error": {"code", "message"}}`; KServe's front shapes them its own way.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use switchyard_core::admin::AdminError;
use switchyard_core::admission::{Rejection, SubmitError};
use switchyard_core::auth::AuthError;
use switchyard_core::calls::CallError;
use switchyard_core::cancel::CancelError;
use switchyard_core::dead_letters::DeadLetterError;
use switchyard_core::error::client_body;
use switchyard_core::models::ModelsError;
use switchyard_core::{Coded, ErrorCode};
use switchyard_schemas::{ErrorBody, ErrorClass, JobError};
use switchyard_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Submit(#[from] SubmitError),
    /// The job's queue is full; the client may retry after `retry_after` s.
    #[error("{message}")]
    QueueFull { message: String, retry_after: u64 },
    #[error(transparent)]
    Cancel(#[from] CancelError),
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error(transparent)]
    DeadLetter(#[from] DeadLetterError),
    #[error(transparent)]
    Models(#[from] ModelsError),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("request body exceeds {0} bytes")]
    BodyTooLarge(usize),
    #[error("request body could not be read")]
    BodyUnreadable,
    /// What was asked for, as "job \"<id>\"".
    #[error("no {0}")]
    NotFound(String),
    #[error("Idempotency-Key must be 1 to 255 visible ASCII characters")]
    BadIdempotencyKey,
    #[error("Last-Event-ID must be a chunk's id, a<attempt>.s<seq>")]
    BadLastEventId,
    #[error("a request with this Idempotency-Key is still being handled; retry shortly")]
    IdempotencyInFlight,
    #[error("job store: {0}")]
    Store(#[from] StoreError),
    #[error("NATS: {0}")]
    Unavailable(String),
    #[error("job {0} is still running; its result will be at /v1/jobs/{0}")]
    StillRunning(String),
    /// The job ran and failed; the error is already fit for the client.
    #[error("{}", .0.message)]
    JobFailed(JobError),
    #[error("run {0} has ended")]
    RunEnded(String),
    #[error("run {0} has not ended failed_compensation, so it cannot be replayed")]
    RunNotDeadLettered(String),
    #[error("run {0} is still running; it will be at /v1/workflows/runs/{0}")]
    RunStillRunning(String),
    /// The run failed, was cancelled, or its compensation failed: why.
    #[error("run {0} did not succeed: {1}")]
    RunFailed(String, String),
    #[error("batch {0} already ended {1}")]
    BatchEnded(String, &'static str),
    #[error("this tenant has as many event streams open as it may; close one first")]
    TooManyStreams,
    #[error("the tenant's files would pass its quota of {0} bytes; delete some first")]
    FileQuota(u64),
    #[error("the file store is full; try again later")]
    FilesFull,
}

impl From<Rejection> for ApiError {
    fn from(r: Rejection) -> Self {
        ApiError::Submit(SubmitError::Rejected(r))
    }
}

impl From<CallError> for ApiError {
    fn from(e: CallError) -> Self {
        match e {
            CallError::Submit(e) => ApiError::Submit(e),
            CallError::Unavailable(e) => ApiError::Unavailable(e),
        }
    }
}

/// A request the API refuses as invalid, with the reason.
pub fn invalid(message: impl Into<String>) -> ApiError {
    Rejection::invalid(message).into()
}

impl Coded for ApiError {
    fn code(&self) -> ErrorCode {
        match self {
            ApiError::Submit(e) => e.code(),
            ApiError::QueueFull { .. } => ErrorCode::QueueFull,
            ApiError::Cancel(e) => e.code(),
            ApiError::Admin(e) => e.code(),
            ApiError::DeadLetter(e) => e.code(),
            ApiError::Models(e) => e.code(),
            ApiError::Auth(e) => e.code(),
            ApiError::BodyTooLarge(_) => ErrorCode::BodyTooLarge,
            ApiError::BodyUnreadable => ErrorCode::MalformedBody,
            ApiError::NotFound(_) => ErrorCode::NotFound,
            ApiError::BadIdempotencyKey | ApiError::BadLastEventId => ErrorCode::InvalidRequest,
            ApiError::IdempotencyInFlight => ErrorCode::IdempotencyConflict,
            ApiError::Store(_) => ErrorCode::StoreUnavailable,
            ApiError::Unavailable(_) => ErrorCode::BrokerUnavailable,
            ApiError::StillRunning(_) | ApiError::RunStillRunning(_) => ErrorCode::StillRunning,
            ApiError::RunFailed(..) => ErrorCode::WorkflowFailed,
            // Answered with the job's own class (see `respond`); this is
            // what it counts as for the API itself.
            ApiError::JobFailed(_) => ErrorCode::InvalidRequest,
            ApiError::BatchEnded(..) | ApiError::RunEnded(_) => ErrorCode::NotCancellable,
            ApiError::RunNotDeadLettered(_) => ErrorCode::NotFailed,
            ApiError::TooManyStreams => ErrorCode::RateLimited,
            ApiError::FileQuota(_) => ErrorCode::FileQuotaExceeded,
            ApiError::FilesFull => ErrorCode::StorageFull,
        }
    }
}

/// The HTTP status of an error code: the one mapping.
pub fn status(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::MalformedBody | ErrorCode::InvalidJson => StatusCode::BAD_REQUEST,
        ErrorCode::InvalidRequest
        | ErrorCode::UnknownModel
        | ErrorCode::WebhookRefused
        | ErrorCode::PiiDetected
        | ErrorCode::InvalidUrl
        | ErrorCode::InvalidFile => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorCode::InputTooLarge | ErrorCode::BodyTooLarge | ErrorCode::FileQuotaExceeded => {
            StatusCode::PAYLOAD_TOO_LARGE
        }
        ErrorCode::StorageFull => StatusCode::INSUFFICIENT_STORAGE,
        ErrorCode::Unauthenticated
        | ErrorCode::InvalidApiKey
        | ErrorCode::KeyExpired
        | ErrorCode::KeyRevoked => StatusCode::UNAUTHORIZED,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::BudgetExceeded => StatusCode::PAYMENT_REQUIRED,
        ErrorCode::RateLimited | ErrorCode::QueueFull => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::ResultExpired => StatusCode::GONE,
        ErrorCode::AlreadyExists
        | ErrorCode::IdTaken
        | ErrorCode::IdempotencyConflict
        | ErrorCode::NotFailed
        | ErrorCode::NotCancellable
        | ErrorCode::NotFinished
        | ErrorCode::StaleRevision
        | ErrorCode::RolloutRunning
        | ErrorCode::ModelInUse => StatusCode::CONFLICT,
        ErrorCode::StillRunning => StatusCode::GATEWAY_TIMEOUT,
        ErrorCode::StreamInterrupted | ErrorCode::WorkflowFailed => StatusCode::BAD_GATEWAY,
        ErrorCode::QueueUnavailable
        | ErrorCode::StoreUnavailable
        | ErrorCode::BrokerUnavailable => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// The HTTP status of a failed job's error class.
pub fn class_status(class: ErrorClass) -> StatusCode {
    match class {
        ErrorClass::InvalidInput => StatusCode::BAD_REQUEST,
        ErrorClass::UnknownModel => StatusCode::NOT_FOUND,
        ErrorClass::Cancelled => StatusCode::CONFLICT,
        ErrorClass::EngineUnavailable | ErrorClass::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
        ErrorClass::Timeout | ErrorClass::TimedOut | ErrorClass::Expired => {
            StatusCode::GATEWAY_TIMEOUT
        }
        ErrorClass::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The HTTP status of a failed job's stored error code: a job's class, or
/// a code it was refused with at admission.
pub fn job_error_status(code: &str) -> u16 {
    let known = ErrorCode::ALL.into_iter().find(|c| c.as_str() == code);
    match (ErrorClass::from_code(code), known) {
        (Some(class), _) => class_status(class),
        (None, Some(code)) => status(code),
        (None, None) => StatusCode::UNPROCESSABLE_ENTITY,
    }
    .as_u16()
}

impl ApiError {
    /// The response, its body made by `body` from the code and message.
    pub fn respond(self, body: impl FnOnce(ErrorBody) -> Value) -> Response {
        let (status, error) = match &self {
            ApiError::JobFailed(e) => (
                class_status(e.class),
                ErrorBody {
                    code: e.class.code().into(),
                    message: e.message.clone(),
                },
            ),
            other => (status(other.code()), client_body(other)),
        };
        let retry_after = match &self {
            ApiError::QueueFull { retry_after, .. }
            | ApiError::Submit(SubmitError::RateLimited { retry_after, .. }) => Some(*retry_after),
            ApiError::Auth(AuthError::TooManyFailures(wait)) => Some(*wait),
            ApiError::IdempotencyInFlight | ApiError::TooManyStreams => Some(1),
            ApiError::JobFailed(_) => None,
            _ if status == StatusCode::SERVICE_UNAVAILABLE => Some(1),
            _ => None,
        };
        let mut response = (status, axum::Json(body(error))).into_response();
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.respond(|error| json!({ "error": error }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_code_has_the_documented_status() {
        let documented = [
            ("malformed_body", 400),
            ("unauthenticated", 401),
            ("invalid_api_key", 401),
            ("key_revoked", 401),
            ("key_expired", 401),
            ("forbidden", 403),
            ("already_exists", 409),
            ("id_taken", 409),
            ("invalid_request", 422),
            ("unknown_model", 422),
            ("pii_detected", 422),
            ("budget_exceeded", 402),
            ("webhook_refused", 422),
            ("input_too_large", 413),
            ("body_too_large", 413),
            ("not_found", 404),
            ("idempotency_conflict", 409),
            ("not_failed", 409),
            ("not_cancellable", 409),
            ("queue_full", 429),
            ("rate_limited", 429),
            ("queue_unavailable", 503),
            ("store_unavailable", 503),
            ("broker_unavailable", 503),
            ("still_running", 504),
        ];
        for (name, expected) in documented {
            let code = ErrorCode::ALL
                .into_iter()
                .find(|c| c.as_str() == name)
                .unwrap();
            assert_eq!(status(code).as_u16(), expected, "{name}");
        }
    }

    #[test]
    fn a_failed_job_answers_with_its_class_status() {
        assert_eq!(job_error_status("invalid_input"), 400);
        assert_eq!(job_error_status("engine_unavailable"), 503);
        assert_eq!(job_error_status("expired"), 504);
        assert_eq!(job_error_status("cancelled"), 409);
        // Refused at admission: the code's own status.
        assert_eq!(job_error_status("unknown_model"), 404);
        assert_eq!(job_error_status("invalid_request"), 422);
        assert_eq!(job_error_status("budget_exceeded"), 402);
    }

    #[test]
    fn faults_of_ours_say_so_without_detail_and_ask_for_a_retry() {
        let response = ApiError::Unavailable("nats://10.0.0.7:4222 refused".into()).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        let queue_full = ApiError::QueueFull {
            message: "full".into(),
            retry_after: 7,
        }
        .into_response();
        assert_eq!(queue_full.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(queue_full.headers()[header::RETRY_AFTER], "7");
    }
}
