//! Job records. The store is a projection of what the streams say happened;
//! every write is idempotent so that a redelivered message changes nothing.

mod access;
mod batches;
mod sql;
mod sql_access;
mod sql_batches;

use std::collections::BTreeMap;

use async_trait::async_trait;

use crate::budget::Reservation;
use crate::limits::Take;
use switchyard_schemas::{
    ErrorClass, Job, JobEvent, JobResult, Outcome, Priority, Usage, UsageEvent,
};

pub use access::{AccessStore, KeyRecord, TenantRecord};
pub use batches::{
    BatchCounts, BatchItem, BatchRecord, BatchStatus, BatchStore, BatchUpdate, FileRecord,
};
pub use sql::{SqlStore, is_postgres};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored job {id} is corrupt: {reason}")]
    Corrupt { id: String, reason: String },
    #[error("cannot create the database directory {path}: {source}")]
    Dir {
        path: String,
        source: std::io::Error,
    },
}

/// The error for a stored row of `id` that cannot be read back.
pub(crate) fn corrupt(id: String) -> impl Fn(String) -> StoreError {
    move |reason| StoreError::Corrupt {
        id: id.clone(),
        reason,
    }
}

/// What `insert` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    New,
    /// A job with that id exists; `enqueued` says whether the queue confirmed it.
    Existing {
        enqueued: bool,
    },
}

/// Where a job came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Http,
    Nats,
    NatsRequest,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Http => "http",
            Source::Nats => "nats",
            Source::NatsRequest => "nats_request",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Queued,
    Assigned,
    Running,
    Succeeded,
    Failed,
    /// Not started by its deadline; never ran.
    Expired,
    /// Cancelled at its own execution timeout.
    TimedOut,
    /// Cancelled by a client.
    Cancelled,
}

impl Status {
    /// The final status a result gives its job.
    pub fn of(outcome: &Outcome) -> Status {
        match outcome {
            Outcome::Succeeded { .. } => Status::Succeeded,
            Outcome::Failed { error } => match error.class {
                ErrorClass::Expired => Status::Expired,
                ErrorClass::TimedOut => Status::TimedOut,
                ErrorClass::Cancelled => Status::Cancelled,
                _ => Status::Failed,
            },
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Assigned => "assigned",
            Status::Running => "running",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::Expired => "expired",
            Status::TimedOut => "timed_out",
            Status::Cancelled => "cancelled",
        }
    }

    /// Whether nothing changes a job any more.
    pub fn is_final(self) -> bool {
        !matches!(self, Status::Queued | Status::Assigned | Status::Running)
    }

    pub fn parse(s: &str) -> Option<Status> {
        [
            Status::Queued,
            Status::Assigned,
            Status::Running,
            Status::Succeeded,
            Status::Failed,
            Status::Expired,
            Status::TimedOut,
            Status::Cancelled,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }
}

/// Which jobs a listing shows. Every field narrows it.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub status: Option<Status>,
    pub model: Option<String>,
    pub tenant: Option<String>,
    /// Created at or after (Unix ms).
    pub since_ms: Option<i64>,
    /// Created before (Unix ms).
    pub until_ms: Option<i64>,
    /// Only jobs listed after this one (created before it, or at the same
    /// time with a smaller id): the previous page's last.
    pub after: Option<(i64, String)>,
}

/// A submission refused at the NATS intake, kept so the client can look it up.
#[derive(Debug, Clone)]
pub struct RejectedJob {
    pub id: String,
    pub tenant: String,
    pub model: String,
    pub priority: Priority,
    pub source: Source,
    pub code: String,
    pub message: String,
    pub at_ms: i64,
}

/// A job as the API shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    pub id: String,
    pub model: String,
    pub tenant: String,
    pub priority: String,
    pub source: String,
    pub status: Status,
    pub attempt: u32,
    pub node: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub created_at_ms: i64,
    pub enqueued_at_ms: Option<i64>,
    pub assigned_at_ms: Option<i64>,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
    pub output: Option<serde_json::Value>,
    /// Tokens admission estimated the job at, when its tenant has a token limit.
    pub tokens_estimate: Option<u32>,
    /// The output was dropped at the end of its retention.
    pub output_expired: bool,
    pub error: Option<(String, String)>,
    pub usage: Option<Usage>,
}

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

/// What was charged (the attempts whose results were delivered) and what
/// was waste (attempts superseded by another that delivered).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UsageReport {
    pub charged: Vec<UsageRow>,
    pub waste: Vec<UsageRow>,
}

/// A webhook event due to be sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// The `webhook-id`.
    pub id: String,
    pub job_id: String,
    pub tenant: String,
    pub url: String,
    pub event: String,
    pub payload: String,
    /// Attempts made so far.
    pub attempts: u32,
}

/// One attempt to deliver a webhook event.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    pub delivery_id: String,
    /// 1 for the first.
    pub number: u32,
    pub at_ms: i64,
    pub duration_ms: i64,
    /// The receiver's HTTP status, when it answered.
    pub status: Option<u16>,
    /// Why it could not be asked (refused connection, timeout, guard).
    pub error: Option<String>,
}

/// What follows an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Delivered,
    Retry {
        at_ms: i64,
    },
    /// The retry schedule ran out.
    Failed,
    /// The receiver answered 410: its endpoint is disabled.
    Disabled,
}

/// A webhook event of a job, with its attempts so far.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryRecord {
    pub id: String,
    pub url: String,
    pub event: String,
    pub state: String,
    pub created_at_ms: i64,
    /// When the next attempt is due, while the delivery is pending.
    pub next_at_ms: Option<i64>,
    pub attempts: Vec<Attempt>,
}

/// A receiver that answered 410.
#[derive(Debug, Clone, PartialEq)]
pub struct DisabledEndpoint {
    pub url: String,
    pub at_ms: i64,
    pub reason: String,
}

#[async_trait]
pub trait JobStore: Send + Sync {
    /// Records an admitted job as queued-but-unconfirmed. A job with that id
    /// already recorded is left as it is, and its `enqueued_at` is returned.
    async fn insert(&self, job: &Job, source: Source) -> Result<Inserted, StoreError>;
    /// Claims `key` for `job_id` unless a claim younger than `fresh_since_ms`
    /// holds it (one whose job was never recorded holds it only briefly);
    /// returns the job id that holds the key now.
    async fn claim_key(
        &self,
        key: &str,
        job_id: &str,
        now_ms: i64,
        fresh_since_ms: i64,
    ) -> Result<String, StoreError>;
    /// Releases a claim whose submission was refused, so that a retry can proceed.
    async fn release_key(&self, key: &str, job_id: &str) -> Result<(), StoreError>;
    /// The queue confirmed the job.
    async fn mark_enqueued(&self, id: &str, at_ms: i64) -> Result<(), StoreError>;
    /// Makes a failed job queued again as `job` (a replay); false when the
    /// job is not recorded as failed.
    async fn reopen(&self, job: &Job) -> Result<bool, StoreError>;
    /// Forgets a job the queue refused: the client was told it is not queued.
    async fn discard_unqueued(&self, id: &str) -> Result<(), StoreError>;
    /// Records a refused job unless its id is taken; the tenant of the job
    /// the id now names.
    async fn insert_rejected(&self, job: &RejectedJob) -> Result<String, StoreError>;
    async fn apply_events(&self, events: &[JobEvent]) -> Result<(), StoreError>;
    async fn apply_results(&self, results: &[JobResult]) -> Result<(), StoreError>;
    /// Takes one request from each limit, all or none; when one has no
    /// room, which one and how long until it has (µs).
    async fn take(
        &self,
        takes: &[Take],
        now_us: i64,
    ) -> Result<Option<(&'static str, i64)>, StoreError>;
    /// Corrects token limits by what finished jobs really used (job id,
    /// tokens): each job's estimate is replaced once, in its tenant's limit
    /// and its key's; `rate` gives a holder's (a tenant, or `key:<id>`)
    /// limit row and the time a token costs (µs).
    async fn correct_limits(
        &self,
        used: &[(String, u32)],
        rate: &(dyn for<'t> Fn(&'t str) -> Option<(String, i64)> + Sync),
    ) -> Result<(), StoreError>;
    /// Gives a job one place of each holder's (a tenant, or `key:<id>`)
    /// most for jobs not yet ended, all or none; the index of a holder
    /// whose places are all held, if one is. A job keeps the places it
    /// holds.
    async fn take_places(
        &self,
        job_id: &str,
        holders: &[(String, u32)],
    ) -> Result<Option<usize>, StoreError>;
    /// Reserves `r.micros` of a tenant's budget for a job unless reserved
    /// plus spent would pass the limit; a job that holds a reservation
    /// keeps it. `None` when reserved; otherwise what is left.
    async fn reserve(&self, job_id: &str, r: &Reservation) -> Result<Option<i64>, StoreError>;
    /// Ends the reservations of these jobs: each job's `cost` (of its
    /// record, 0 if it has none) is spent and the rest given back, and its
    /// places among jobs not yet ended are freed. A job without
    /// either is skipped, so settling twice changes nothing.
    async fn settle(
        &self,
        job_ids: &[String],
        cost: &(dyn for<'r> Fn(&'r JobRecord) -> i64 + Sync),
    ) -> Result<(), StoreError>;
    /// Adds ledger lines; a line already there (same job and attempt) is
    /// left as it is, so a redelivered usage event never bills twice.
    async fn record_usage(&self, charges: &[Charge]) -> Result<Vec<usize>, StoreError>;
    async fn usage_report(&self, filter: &UsageFilter) -> Result<UsageReport, StoreError>;
    async fn get(&self, id: &str) -> Result<Option<JobRecord>, StoreError>;
    /// Jobs matching `filter`, newest first, at most `limit`.
    async fn list(&self, filter: &ListFilter, limit: u32) -> Result<Vec<JobRecord>, StoreError>;
    /// Jobs not started whose start deadline is before `now_ms`, soonest first.
    async fn overdue(&self, now_ms: i64, limit: u32) -> Result<Vec<String>, StoreError>;
    /// Jobs recorded before `created_before_ms` whose enqueue was never confirmed.
    async fn unconfirmed(&self, created_before_ms: i64, limit: u32)
    -> Result<Vec<Job>, StoreError>;
    /// Leases up to `limit` webhook deliveries due at `now_ms` (of jobs
    /// whose enqueue is confirmed) until `lease_until_ms`.
    async fn claim_deliveries(
        &self,
        now_ms: i64,
        lease_until_ms: i64,
        limit: u32,
    ) -> Result<Vec<Delivery>, StoreError>;
    /// Records an attempt and what follows it; `Next::Disabled` disables
    /// the delivery's endpoint, holding every delivery pending for it.
    async fn record_attempt(&self, attempt: &Attempt, next: Next) -> Result<(), StoreError>;
    /// A job's webhook events and their attempts, oldest first.
    async fn deliveries(&self, job_id: &str) -> Result<Vec<DeliveryRecord>, StoreError>;
    async fn disabled_endpoints(&self) -> Result<Vec<DisabledEndpoint>, StoreError>;
    /// Drops outputs of jobs that ended before `before_ms`, and webhook
    /// events no longer pending that were recorded before it, up to `limit`
    /// of each; returns how many rows changed.
    async fn forget(&self, before_ms: i64, limit: u32) -> Result<u64, StoreError>;
    /// Enables an endpoint again; the deliveries held for it become due.
    /// Returns how many, or `None` when it was not disabled.
    async fn enable_endpoint(&self, url: &str, now_ms: i64) -> Result<Option<u64>, StoreError>;
}
