//! Counts over the job records for dashboards: how jobs ended, minute by
//! minute.

use async_trait::async_trait;

use crate::StoreError;

/// The jobs that ended in one minute with one status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    /// The minute's start, Unix ms.
    pub minute_ms: i64,
    pub status: String,
    pub jobs: u64,
}

#[async_trait]
pub trait Summaries: Send + Sync {
    /// The jobs that ended at or after `since_ms`, of `tenant` or of every
    /// tenant, counted per minute and status, oldest minute first.
    async fn ended_per_minute(
        &self,
        since_ms: i64,
        tenant: Option<&str>,
    ) -> Result<Vec<Ended>, StoreError>;
}
