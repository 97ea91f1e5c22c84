//! The closed set of error codes clients see. Every error of the core says
//! which code it is; the HTTP edge alone picks a status for a code, and the
//! NATS replies carry the code as it is. Each code's string is part of the
//! API (docs/api.md) and never changes.

use serde::{Deserialize, Serialize};
use switchyard_schemas::ErrorBody;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    // The request itself.
    MalformedBody,
    InvalidRequest,
    UnknownModel,
    InputTooLarge,
    BodyTooLarge,
    WebhookRefused,
    PiiDetected,
    // The caller's standing.
    Unauthenticated,
    InvalidApiKey,
    KeyExpired,
    KeyRevoked,
    Forbidden,
    BudgetExceeded,
    RateLimited,
    QueueFull,
    FileQuotaExceeded,
    // What the request names.
    NotFound,
    AlreadyExists,
    IdTaken,
    IdempotencyConflict,
    NotFailed,
    NotCancellable,
    NotFinished,
    StaleRevision,
    RolloutRunning,
    ModelInUse,
    ResultExpired,
    StillRunning,
    // Batch lines.
    InvalidJson,
    InvalidUrl,
    InvalidFile,
    StreamInterrupted,
    // A workflow run.
    WorkflowFailed,
    // Switchyard's own parts.
    QueueUnavailable,
    StoreUnavailable,
    BrokerUnavailable,
    StorageFull,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 37] = [
        ErrorCode::MalformedBody,
        ErrorCode::InvalidRequest,
        ErrorCode::UnknownModel,
        ErrorCode::InputTooLarge,
        ErrorCode::BodyTooLarge,
        ErrorCode::WebhookRefused,
        ErrorCode::PiiDetected,
        ErrorCode::Unauthenticated,
        ErrorCode::InvalidApiKey,
        ErrorCode::KeyExpired,
        ErrorCode::KeyRevoked,
        ErrorCode::Forbidden,
        ErrorCode::BudgetExceeded,
        ErrorCode::RateLimited,
        ErrorCode::QueueFull,
        ErrorCode::FileQuotaExceeded,
        ErrorCode::NotFound,
        ErrorCode::AlreadyExists,
        ErrorCode::IdTaken,
        ErrorCode::IdempotencyConflict,
        ErrorCode::NotFailed,
        ErrorCode::NotCancellable,
        ErrorCode::NotFinished,
        ErrorCode::StaleRevision,
        ErrorCode::RolloutRunning,
        ErrorCode::ModelInUse,
        ErrorCode::ResultExpired,
        ErrorCode::StillRunning,
        ErrorCode::InvalidJson,
        ErrorCode::InvalidUrl,
        ErrorCode::InvalidFile,
        ErrorCode::StreamInterrupted,
        ErrorCode::WorkflowFailed,
        ErrorCode::QueueUnavailable,
        ErrorCode::StoreUnavailable,
        ErrorCode::BrokerUnavailable,
        ErrorCode::StorageFull,
    ];

    /// The code as clients read it.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::MalformedBody => "malformed_body",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::UnknownModel => "unknown_model",
            ErrorCode::InputTooLarge => "input_too_large",
            ErrorCode::BodyTooLarge => "body_too_large",
            ErrorCode::WebhookRefused => "webhook_refused",
            ErrorCode::PiiDetected => "pii_detected",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::InvalidApiKey => "invalid_api_key",
            ErrorCode::KeyExpired => "key_expired",
            ErrorCode::KeyRevoked => "key_revoked",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::BudgetExceeded => "budget_exceeded",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::QueueFull => "queue_full",
            ErrorCode::FileQuotaExceeded => "file_quota_exceeded",
            ErrorCode::NotFound => "not_found",
            ErrorCode::AlreadyExists => "already_exists",
            ErrorCode::IdTaken => "id_taken",
            ErrorCode::IdempotencyConflict => "idempotency_conflict",
            ErrorCode::NotFailed => "not_failed",
            ErrorCode::NotCancellable => "not_cancellable",
            ErrorCode::NotFinished => "not_finished",
            ErrorCode::StaleRevision => "stale_revision",
            ErrorCode::RolloutRunning => "rollout_running",
            ErrorCode::ModelInUse => "model_in_use",
            ErrorCode::ResultExpired => "result_expired",
            ErrorCode::StillRunning => "still_running",
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::InvalidUrl => "invalid_url",
            ErrorCode::InvalidFile => "invalid_file",
            ErrorCode::StreamInterrupted => "stream_interrupted",
            ErrorCode::WorkflowFailed => "workflow_failed",
            ErrorCode::QueueUnavailable => "queue_unavailable",
            ErrorCode::StoreUnavailable => "store_unavailable",
            ErrorCode::BrokerUnavailable => "broker_unavailable",
            ErrorCode::StorageFull => "storage_full",
        }
    }

    /// Whether the fault is Switchyard's (a part it needs is down), so the
    /// client is told only that, and the detail goes to the log.
    pub fn is_ours(self) -> bool {
        matches!(
            self,
            ErrorCode::QueueUnavailable
                | ErrorCode::StoreUnavailable
                | ErrorCode::BrokerUnavailable
        )
    }

    /// What a client is told of a fault of ours.
    fn our_message(self) -> &'static str {
        match self {
            ErrorCode::QueueUnavailable => "the job queue is unavailable; the job was not queued",
            ErrorCode::BrokerUnavailable => "the broker cannot reach NATS; try again",
            _ => "the job store is unavailable; try again",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error that names its code.
pub trait Coded: std::error::Error {
    fn code(&self) -> ErrorCode;
}

/// The body a client is given for `e`, over HTTP or NATS alike: its code,
/// and its message, or for a fault of ours a plain one (the detail is
/// logged here, not sent).
pub fn client_body(e: &dyn Coded) -> ErrorBody {
    let code = e.code();
    let message = match code.is_ours() {
        true => {
            tracing::error!(error = %e, code = code.as_str(), "request failed");
            code.our_message().to_owned()
        }
        false => e.to_string(),
    };
    ErrorBody {
        code: code.as_str().to_owned(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_code_serialises_as_its_documented_string() {
        for code in ErrorCode::ALL {
            assert_eq!(
                serde_json::to_value(code).unwrap(),
                serde_json::Value::String(code.as_str().to_owned())
            );
        }
        let mut strings: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        strings.sort_unstable();
        strings.dedup();
        assert_eq!(strings.len(), ErrorCode::ALL.len());
    }
}
