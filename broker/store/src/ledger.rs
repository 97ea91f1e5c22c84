//! The usage ledger: a priced line per attempt, written once, and the
//! reports that sum it.

use async_trait::async_trait;
use switchyard_schemas::UsageEvent;

use crate::StoreError;

/// One attempt's usage, priced: a line of the ledger.
#[derive(Debug, Clone, PartialEq)]
pub struct Charge {
    pub usage: UsageEvent,
    pub cost_micros: i64,
    /// Answered from the result cache.
    pub cache_hit: bool,
}

/// Which usage a report covers.
#[derive(Debug, Clone, Default)]
pub struct UsageFilter {
    pub tenant: Option<String>,
    /// Recorded at or after (Unix ms).
    pub since_ms: Option<i64>,
    /// Recorded before (Unix ms).
    pub until_ms: Option<i64>,
}

/// Usage summed per day (UTC), model and tenant.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageRow {
    pub day: String,
    pub model: String,
    pub tenant: String,
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub engine_ms: u64,
    pub cost_micros: i64,
    pub cache_hits: u64,
}

/// One attempt's line in the ledger, as a job's page shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptUsage {
    pub attempt: u32,
    pub node: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub engine_ms: u64,
    pub cost_micros: i64,
    pub cache_hit: bool,
    /// Charged to the job's tenant (the delivered attempt), or waste.
    pub charged: bool,
}

/// What was charged (the attempts whose results were delivered) and what
/// was waste (attempts superseded by another that delivered).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UsageReport {
    pub charged: Vec<UsageRow>,
    pub waste: Vec<UsageRow>,
}

/// How one version fared behind an alias over a window: what a rollout's
/// guards compare.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Figures {
    /// Jobs that ended succeeded or failed.
    pub jobs: u64,
    /// Of them, those that failed for a cause of the engine or its node
    /// (not the client's input, a cancellation or a deadline).
    pub failed: u64,
    /// Engine time of the delivered attempts, 95th percentile.
    pub p95_engine_ms: Option<u64>,
    /// Mean charge of the delivered attempts.
    pub mean_cost_micros: Option<f64>,
}

#[async_trait]
pub trait Ledger: Send + Sync {
    /// Adds ledger lines; a line already there (same job and attempt) is
    /// left as it is, so a redelivered usage event never bills twice.
    /// Returns the indexes of the lines that were new.
    async fn record_usage(&self, charges: &[Charge]) -> Result<Vec<usize>, StoreError>;
    async fn usage_report(&self, filter: &UsageFilter) -> Result<UsageReport, StoreError>;
    /// What the job was charged, in micro-USD: its delivered attempt's
    /// line, as the report counts it; 0 while it has none.
    async fn job_cost(&self, job_id: &str) -> Result<i64, StoreError>;
    /// Every ledger line of the job, by attempt, each charged or waste.
    async fn job_usage(&self, job_id: &str) -> Result<Vec<AttemptUsage>, StoreError>;
    /// How `model`'s jobs asked for by `alias` fared since `since_ms`.
    async fn version_figures(
        &self,
        model: &str,
        alias: &str,
        since_ms: i64,
    ) -> Result<Figures, StoreError>;
}
