//! The webhook outbox. A delivery row is written in the same transaction
//! that records the job's change, so a delivery is as durable as the
//! record; its body is the job as the API shows it at that moment.

use async_trait::async_trait;
use serde_json::json;
use switchyard_schemas::WebhookEvent;

use crate::view::{JobView, rfc3339};
use crate::{JobRecord, Status, StoreError};

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
pub trait WebhookOutbox: Send + Sync {
    /// Leases up to `limit` webhook deliveries due at `now_ms` (of jobs
    /// whose enqueue is confirmed) until `lease_until_ms`, the soonest due
    /// first but at most `per_tenant` of any one tenant, so that one
    /// tenant's backlog does not keep the others' waiting.
    async fn claim_deliveries(
        &self,
        now_ms: i64,
        lease_until_ms: i64,
        limit: u32,
        per_tenant: u32,
    ) -> Result<Vec<Delivery>, StoreError>;
    /// Records an attempt and what follows it; `Next::Disabled` disables
    /// the delivery's endpoint, holding every delivery pending for it.
    async fn record_attempt(&self, attempt: &Attempt, next: Next) -> Result<(), StoreError>;
    /// A job's webhook events and their attempts, oldest first.
    async fn deliveries(&self, job_id: &str) -> Result<Vec<DeliveryRecord>, StoreError>;
    async fn disabled_endpoints(&self) -> Result<Vec<DisabledEndpoint>, StoreError>;
    /// Enables an endpoint again; the deliveries held for it become due.
    /// Returns how many, or `None` when it was not disabled.
    async fn enable_endpoint(&self, url: &str, now_ms: i64) -> Result<Option<u64>, StoreError>;
}

/// The event a job's recorded status calls for: `queued` only when the job
/// has just been recorded, never for a retry going back to its queue.
pub fn event_for(status: Status, just_recorded: bool) -> Option<WebhookEvent> {
    match status {
        Status::Queued if just_recorded => Some(WebhookEvent::Queued),
        Status::Queued | Status::Assigned => None,
        Status::Running => Some(WebhookEvent::Started),
        Status::Succeeded => Some(WebhookEvent::Completed),
        Status::Failed | Status::TimedOut => Some(WebhookEvent::Failed),
        Status::Cancelled => Some(WebhookEvent::Cancelled),
        Status::Expired => Some(WebhookEvent::Expired),
    }
}

/// The `webhook-id` of an event: the same for every attempt of it, so a
/// receiver can drop repeats.
pub fn delivery_id(record: &JobRecord, event: WebhookEvent) -> String {
    format!("msg_{}_{}_{}", record.id, record.attempt, event.as_str())
}

/// The body of an event: `{type, timestamp, data}`, `data` being the job as
/// `GET /v1/jobs/{id}` shows it at that moment.
pub fn body(record: &JobRecord, event: WebhookEvent) -> String {
    let at = match event {
        WebhookEvent::Queued => Some(record.created_at_ms),
        WebhookEvent::Started => record.started_at_ms,
        _ => record.finished_at_ms,
    };
    json!({
        "type": format!("job.{}", event.as_str()),
        "timestamp": rfc3339(at.unwrap_or(record.created_at_ms)),
        "data": JobView::from(record.clone()),
    })
    .to_string()
}
