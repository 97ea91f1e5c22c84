//! Why a submission was refused, each reason with its stable code.

use switchyard_schemas::Priority;
use switchyard_store::StoreError;

use crate::error::{Coded, ErrorCode};

/// Why a submission was refused. Each variant has a stable code; the HTTP
/// status is chosen at the HTTP edge.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Rejection {
    #[error("{0}")]
    MalformedBody(String),
    #[error("{0}")]
    InvalidRequest(String),
    #[error("model {0:?} is not served here")]
    UnknownModel(String),
    #[error("input is {size} bytes; model {model:?} takes at most {limit}")]
    InputTooLarge {
        model: String,
        size: usize,
        limit: usize,
    },
    /// The webhook may not be used: the address guard refused it, or no
    /// secret is there to sign it.
    #[error("{0}")]
    WebhookRefused(String),
    /// The request holds personal data of these types and its policy is
    /// `block`.
    #[error("the request holds personal data ({0}); it is refused here")]
    PiiFound(String),
    /// The tenant's budget for this period has no room for the job's
    /// estimated cost.
    #[error(
        "tenant {tenant:?} has not ${left:.6} left of its budget for work estimated at ${estimate:.6}"
    )]
    OverBudget {
        tenant: String,
        left: f64,
        estimate: f64,
    },
}

impl Coded for Rejection {
    fn code(&self) -> ErrorCode {
        match self {
            Rejection::MalformedBody(_) => ErrorCode::MalformedBody,
            Rejection::InvalidRequest(_) => ErrorCode::InvalidRequest,
            Rejection::UnknownModel(_) => ErrorCode::UnknownModel,
            Rejection::InputTooLarge { .. } => ErrorCode::InputTooLarge,
            Rejection::WebhookRefused(_) => ErrorCode::WebhookRefused,
            Rejection::PiiFound(_) => ErrorCode::PiiDetected,
            Rejection::OverBudget { .. } => ErrorCode::BudgetExceeded,
        }
    }
}

impl Rejection {
    /// Work estimated at `estimate` micro-dollars, refused by `tenant`'s
    /// budget with `left` micro-dollars left.
    pub(super) fn over_budget(tenant: String, left: i64, estimate: i64) -> Rejection {
        Rejection::OverBudget {
            tenant,
            left: left as f64 / 1e6,
            estimate: estimate as f64 / 1e6,
        }
    }

    /// A request refused as invalid, with the reason.
    pub fn invalid(message: impl Into<String>) -> Rejection {
        Rejection::InvalidRequest(message.into())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// The job's queue is at `nats.max_queued_per_queue`: not queued.
    #[error("the {priority} queue of model {model:?} is full")]
    QueueFull { priority: Priority, model: String },
    /// The tenant is over one of its rate limits: not queued.
    #[error("tenant {tenant:?} is over its {limit} limit; retry in {retry_after} s")]
    RateLimited {
        tenant: String,
        limit: &'static str,
        retry_after: u64,
    },
    /// The queue did not confirm the job: it is not queued and will not run.
    #[error("the queue is unavailable: {0}")]
    QueueUnavailable(String),
    /// The client's job id names another tenant's job.
    #[error("job id {0:?} is taken; choose another")]
    IdTaken(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Coded for SubmitError {
    fn code(&self) -> ErrorCode {
        match self {
            SubmitError::Rejected(r) => r.code(),
            SubmitError::QueueFull { .. } => ErrorCode::QueueFull,
            SubmitError::RateLimited { .. } => ErrorCode::RateLimited,
            SubmitError::QueueUnavailable(_) => ErrorCode::QueueUnavailable,
            SubmitError::IdTaken(_) => ErrorCode::IdTaken,
            SubmitError::Store(_) => ErrorCode::StoreUnavailable,
        }
    }
}
