//! Workflow runs as the store keeps them: one row a run, written from its
//! history's start and end, for listing runs and for the webhook of a run's
//! end. The history in JetStream stays the truth about a run.

use async_trait::async_trait;
use switchyard_schemas::WebhookTarget;

use crate::StoreError;

/// A run's row.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRow {
    pub id: String,
    pub tenant: String,
    pub workflow: String,
    pub version: u32,
    pub priority: String,
    /// `running` until the run ends, then its final status.
    pub status: String,
    pub created_at_ms: i64,
    pub ended_at_ms: Option<i64>,
    pub error: Option<String>,
    pub webhook: Option<WebhookTarget>,
}

/// A run's end, as its history's last event says; `running` for its
/// replay, which opens a run that ended `failed_compensation` again.
#[derive(Debug, Clone, PartialEq)]
pub struct RunEnd {
    pub id: String,
    pub status: String,
    pub at_ms: i64,
    pub error: Option<String>,
}

/// Which runs to list.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    pub tenant: Option<String>,
    pub workflow: Option<String>,
    pub status: Option<String>,
    /// Started at or after (Unix ms).
    pub since_ms: Option<i64>,
    /// Started before (Unix ms).
    pub until_ms: Option<i64>,
    /// Only runs listed after this one: the previous page's last.
    pub after: Option<(i64, String)>,
}

/// A webhook event to queue, its body fixed now.
#[derive(Debug, Clone, PartialEq)]
pub struct NewDelivery {
    /// The `webhook-id`: the same event queued again is queued once.
    pub id: String,
    /// The job or run it is about.
    pub subject_id: String,
    pub tenant: String,
    pub url: String,
    pub event: String,
    pub payload: String,
    pub at_ms: i64,
}

#[async_trait]
pub trait RunRecords: Send + Sync {
    /// Records runs that started and runs that ended or were replayed, in
    /// that order, in one transaction; a row written again is left as it
    /// is. Returns the rows of the ended runs, as they now are (a run whose
    /// start is not recorded has none).
    async fn apply_runs(
        &self,
        started: &[RunRow],
        ended: &[RunEnd],
    ) -> Result<Vec<RunRow>, StoreError>;
    /// Runs newest first.
    async fn list_runs(&self, filter: &RunFilter, limit: u32) -> Result<Vec<RunRow>, StoreError>;
    /// Queues a webhook event (of a run; a job's are queued with its
    /// record's change).
    async fn queue_delivery(&self, delivery: &NewDelivery) -> Result<(), StoreError>;
}
