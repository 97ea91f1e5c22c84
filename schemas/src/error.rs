use serde::{Deserialize, Serialize};

/// The closed set of reasons a job can fail, decided once where the failure is
/// seen and carried unchanged to the edge, which alone picks an HTTP status.
/// A class this version does not know (sent by a newer component) reads as
/// `Internal`, so the result that carries it is kept rather than dropped.
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
    /// The job was not started by its deadline; it never ran.
    Expired,
    /// The job ran past its own execution timeout and was cancelled.
    TimedOut,
    /// A client cancelled the job.
    Cancelled,
    /// A fault inside Switchyard, or a class this version does not know
    /// (the last variant, as serde requires of the one that takes them).
    #[serde(other)]
    Internal,
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
    fn a_class_from_a_newer_component_reads_as_internal() {
        let error: JobError =
            serde_json::from_str(r#"{"class":"gpu_fell_off_the_bus","message":"m"}"#).unwrap();
        assert_eq!(error.class, ErrorClass::Internal);
        let packed = rmp_serde::to_vec_named(&serde_json::json!({
            "class": "gpu_fell_off_the_bus",
            "message": "m",
        }))
        .unwrap();
        let error: JobError = rmp_serde::from_slice(&packed).unwrap();
        assert_eq!(error, JobError::new(ErrorClass::Internal, "m"));
    }

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
