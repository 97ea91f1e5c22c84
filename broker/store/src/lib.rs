//! The broker's store layer: job records, idempotency keys, quotas, the
//! usage ledger, the webhook outbox and retention, each a trait of its own,
//! on SQL (SQLite or PostgreSQL). The store is a projection of what the
//! streams say happened; every write is idempotent so that a redelivered
//! message changes nothing. It takes plain values (amounts, limits, rates)
//! and never calls back into the broker's rules.

mod access;
mod batches;
pub mod ledger;
pub mod outbox;
pub mod quotas;
pub mod runs;
mod sql;
pub mod summary;
pub mod view;

use std::collections::{BTreeMap, HashSet};

use async_trait::async_trait;

use switchyard_schemas::{ErrorClass, Job, JobEvent, JobResult, Outcome, Priority, Usage};

pub use access::{AccessStore, KeyRecord, TenantRecord};
pub use batches::{
    BatchCounts, BatchItem, BatchRecord, BatchStatus, BatchStore, BatchUpdate, FileRecord,
};
pub use ledger::Ledger;
pub use outbox::WebhookOutbox;
pub use quotas::{Holds, Quotas};
pub use runs::RunRecords;
pub use sql::{SqlStore, is_postgres};
pub use summary::Summaries;

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
    /// The database could not be reached for a write shared by several
    /// callers; each of them is told so.
    #[error("database unreachable: {0}")]
    Unreachable(String),
}

impl StoreError {
    /// The database could not be reached (down, or no connection free in
    /// time), as opposed to refusing what was asked of it: asking again at
    /// once would only wait as long again.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            StoreError::Unreachable(_)
                | StoreError::Db(
                    sqlx::Error::PoolTimedOut
                        | sqlx::Error::PoolClosed
                        | sqlx::Error::Io(_)
                        | sqlx::Error::Tls(_)
                        | sqlx::Error::WorkerCrashed
                )
        )
    }
}

/// The error for a stored row of `id` that cannot be read back.
pub(crate) fn corrupt(id: String) -> impl Fn(String) -> StoreError {
    move |reason| StoreError::Corrupt {
        id: id.clone(),
        reason,
    }
}

/// What `insert` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    /// Recorded, holding what it was to hold.
    New,
    /// A job of the same tenant with that id exists; `enqueued` says
    /// whether the queue confirmed it. Unconfirmed, it now holds what it
    /// was to hold.
    Existing { enqueued: bool },
    /// Another tenant's job has that id: nothing changed.
    OtherTenant,
    /// The holder at this index of the places asked for has none left:
    /// nothing recorded.
    PlacesFull(usize),
    /// The budget has no room for the reservation; what is left of it
    /// (µ$): nothing recorded.
    OverBudget(i64),
}

/// A job to record with others (`JobRecords::insert_many`).
#[derive(Debug, Clone, Copy)]
pub struct Recording<'a> {
    pub job: &'a Job,
    pub source: Source,
    pub tokens_estimate: u32,
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
    pub priority: Option<String>,
    /// The node of its latest attempt.
    pub node: Option<String>,
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
    /// The model that served it (for an alias, its version).
    pub model: String,
    /// The alias it was asked for by, if it was.
    pub alias: Option<String>,
    /// The trace its admission began, when traces are exported.
    pub trace_id: Option<String>,
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

/// What recording a batch of results did.
#[derive(Debug, Default)]
pub struct Applied {
    /// Which of the charges (by index) were new to the ledger.
    pub new_charges: Vec<usize>,
    /// The records of the jobs asked for, as the results left them: none
    /// for a job whose record had already ended (it was not written).
    pub records: Vec<JobRecord>,
    /// Which of the results (by index) were not written, nor their
    /// charges, for want of their job's record: one admitted elsewhere and
    /// queued while its record was written, not written yet.
    pub unrecorded: Vec<usize>,
}

/// Job records: written at admission, moved forward by the projection of
/// the lifecycle streams, read by the API.
#[async_trait]
pub trait JobRecords: Send + Sync {
    /// Records an admitted job, estimated at `tokens_estimate` tokens, as
    /// queued-but-unconfirmed, with what it `holds`, in one transaction:
    /// when a place or the budget has no room, or the store fails, nothing
    /// is recorded, so no refused job is left for the outbox to queue. A
    /// job with that id already recorded is left as it is.
    async fn insert(
        &self,
        job: &Job,
        source: Source,
        tokens_estimate: u32,
        holds: &Holds,
    ) -> Result<Inserted, StoreError>;
    /// Records jobs that hold nothing (no queue places, no budget), in one
    /// transaction: what `insert` answers for each, in order.
    async fn insert_many(&self, jobs: &[Recording<'_>]) -> Result<Vec<Inserted>, StoreError>;
    /// The queue confirmed these jobs.
    async fn mark_enqueued(&self, ids: &[String], at_ms: i64) -> Result<(), StoreError>;
    /// Makes a failed job queued again as `job` (a replay); false when the
    /// job is not recorded as failed.
    async fn reopen(&self, job: &Job) -> Result<bool, StoreError>;
    /// Forgets a job the queue refused: the client was told it is not queued.
    async fn discard_unqueued(&self, id: &str) -> Result<(), StoreError>;
    /// Records a refused job unless its id is taken; the tenant of the job
    /// the id now names. When that is another tenant, the refusal is kept
    /// for the job's tenant alone (see `id_refusal`).
    async fn insert_rejected(&self, job: &RejectedJob) -> Result<String, StoreError>;
    /// The code and message of `tenant`'s submission refused because its id
    /// names another tenant's job.
    async fn id_refusal(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<Option<(String, String)>, StoreError>;
    /// Moves records forward by `events`: the indices of those not applied
    /// for want of their job's record (see `Applied::unrecorded`).
    async fn apply_events(&self, events: &[JobEvent]) -> Result<Vec<usize>, StoreError>;
    /// Records results, and the usage charged with them, in one
    /// transaction, with the records of the jobs `wanted` names as written.
    async fn apply_results(
        &self,
        results: &[JobResult],
        charges: &[ledger::Charge],
        wanted: &(dyn for<'w> Fn(&'w str) -> bool + Sync),
    ) -> Result<Applied, StoreError>;
    async fn get(&self, id: &str) -> Result<Option<JobRecord>, StoreError>;
    /// Of `ids`, those any job of any tenant is recorded as.
    async fn recorded(&self, ids: &[&str]) -> Result<HashSet<String>, StoreError>;
    /// The job's input as admission recorded it (after PII masking); none
    /// for a job refused before it was admitted.
    async fn input(&self, id: &str) -> Result<Option<serde_json::Value>, StoreError>;
    /// Jobs matching `filter`, newest first, at most `limit`.
    async fn list(&self, filter: &ListFilter, limit: u32) -> Result<Vec<JobRecord>, StoreError>;
    /// Jobs not started whose start deadline is before `now_ms`, soonest first.
    async fn overdue(&self, now_ms: i64, limit: u32) -> Result<Vec<String>, StoreError>;
    /// Jobs recorded before `created_before_ms` whose enqueue was never confirmed.
    async fn unconfirmed(&self, created_before_ms: i64, limit: u32)
    -> Result<Vec<Job>, StoreError>;
}

/// Idempotency keys: one job per key within its window.
#[async_trait]
pub trait Idempotency: Send + Sync {
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
}

/// Retention: what is dropped once it is old.
#[async_trait]
pub trait Retention: Send + Sync {
    /// Drops outputs of jobs that ended before `before_ms`, webhook events
    /// no longer pending that were recorded before it, and the rows of runs
    /// that ended before it, up to `limit` of each; returns how many rows
    /// changed.
    async fn forget(&self, before_ms: i64, limit: u32) -> Result<u64, StoreError>;
}

/// Every concern of the job store, for the parts of the broker that span
/// them (admission writes records, takes limits and reserves budget).
pub trait JobStore:
    JobRecords + Idempotency + Quotas + Ledger + WebhookOutbox + RunRecords + Retention + Summaries
{
}

impl<
    T: JobRecords + Idempotency + Quotas + Ledger + WebhookOutbox + RunRecords + Retention + Summaries,
> JobStore for T
{
}
