use serde::{Deserialize, Serialize};

/// The closed set of reasons a job can fail, decided once where the failure is
/// seen and carried unchanged to the edge, which alone picks an HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// The request does not fit the model (bad shape, too long, bad parameter).
    InvalidInput,
    /// The model is not in the registry, or not served where it was sent.
    UnknownModel,
    /// The engine could not be reached or is not ready.
    EngineUnavailable,
    /// The engine refused for lack of capacity.
    Overloaded,
    /// The engine did not answer in time.
    Timeout,
    /// A fault inside Switchyard.
    Internal,
    /// The job was not started by its deadline; it never ran.
    Expired,
    /// The job ran past its own execution timeout and was cancelled.
    TimedOut,
    /// A client cancelled the job.
    Cancelled,
}

impl ErrorClass {
    /// Whether another attempt (possibly on another node) may succeed.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorClass::EngineUnavailable | ErrorClass::Overloaded | ErrorClass::Timeout
        )
    }

    pub const ALL: [ErrorClass; 9] = [
        ErrorClass::InvalidInput,
        ErrorClass::UnknownModel,
        ErrorClass::EngineUnavailable,
        ErrorClass::Overloaded,
        ErrorClass::Timeout,
        ErrorClass::Internal,
        ErrorClass::Expired,
        ErrorClass::TimedOut,
        ErrorClass::Cancelled,
    ];

    /// The class a stable code names.
    pub fn from_code(code: &str) -> Option<ErrorClass> {
        ErrorClass::ALL.into_iter().find(|c| c.code() == code)
    }

    /// Stable code shown to clients.
    pub fn code(self) -> &'static str {
        match self {
            ErrorClass::InvalidInput => "invalid_input",
            ErrorClass::UnknownModel => "unknown_model",
            ErrorClass::EngineUnavailable => "engine_unavailable",
            ErrorClass::Overloaded => "overloaded",
            ErrorClass::Timeout => "timeout",
            ErrorClass::Internal => "internal_error",
            ErrorClass::Expired => "expired",
            ErrorClass::TimedOut => "timed_out",
            ErrorClass::Cancelled => "cancelled",
        }
    }
}

/// A failure as it travels in results: the class plus a message fit for the
/// client (never operator detail such as addresses or stack traces).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobError {
    pub class: ErrorClass,
    pub message: String,
}

impl JobError {
    pub fn new(class: ErrorClass, message: impl Into<String>) -> Self {
        Self {
            class,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_capacity_and_availability_failures_are_retryable() {
        assert!(ErrorClass::Timeout.is_retryable());
        assert!(ErrorClass::Overloaded.is_retryable());
        assert!(ErrorClass::EngineUnavailable.is_retryable());
        assert!(!ErrorClass::InvalidInput.is_retryable());
        assert!(!ErrorClass::UnknownModel.is_retryable());
        assert!(!ErrorClass::Internal.is_retryable());
        assert!(!ErrorClass::Expired.is_retryable());
        assert!(!ErrorClass::TimedOut.is_retryable());
    }
}
