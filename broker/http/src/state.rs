//! What the handlers share, and the narrow slice each front takes of it
//! (axum's `FromRef`): a front sees only the services it uses.

use std::sync::Arc;

use axum::extract::FromRef;
use axum::http::{HeaderMap, HeaderName};
use switchyard_core::admission::{NewId, SubmitError};
use switchyard_core::auth::{Auth, Caller};
use switchyard_core::batches::Files;
use switchyard_core::calls::{CallError, CallRequest, Calls};
use switchyard_core::cancel::Canceller;
use switchyard_core::dead_letters::DeadLetters;
use switchyard_core::shares::Shares;
use switchyard_runtime::{Readiness, Tenants};
use switchyard_schemas::{Priority, Submission};
use switchyard_store::{BatchStore, JobRecord, JobStore};

use crate::error::ApiError;
use crate::reply::bypasses_cache;

/// Everything the HTTP edge is given.
#[derive(Clone)]
pub struct ApiState {
    pub calls: Calls,
    pub canceller: Canceller,
    pub store: Arc<dyn JobStore>,
    /// The broker's own readiness (NATS connected, serving).
    pub readiness: Readiness,
    pub batch_store: Arc<dyn BatchStore>,
    /// Batch input and output files.
    pub files: Files,
    pub dead_letters: DeadLetters,
    pub auth: Arc<Auth>,
    /// The header a trusted proxy in front writes the client's address
    /// into; None: the TCP peer is the client.
    pub client_address_header: Option<HeaderName>,
    /// The configuration's tenants.
    pub tenants: Arc<Tenants>,
    /// Event streams open per tenant.
    pub event_streams: Shares,
    /// Replay consumers to delete.
    pub gone_streams: crate::events::Gone,
    pub knobs: Knobs,
    /// Workflow runs: their tickets and histories.
    pub runs: switchyard_workflows::runs::Runs,
    /// The configuration's workflows.
    pub workflows: Arc<switchyard_workflows::Workflows>,
    /// Checks the webhooks of runs, as admission does jobs'.
    pub webhooks: Arc<switchyard_core::webhooks::Webhooks>,
    /// The aliases and rollouts, live.
    pub live: switchyard_core::models::LiveRegistry,
    /// The nodes' heartbeats and the models' queues, as last reported.
    pub fleet: switchyard_core::fleet::Fleet,
    pub trace_link: TraceLink,
}

/// A trace in the tracing UI, `{trace_id}` standing for its id: what the
/// console links a job to. None: no link.
#[derive(Clone, Default)]
pub struct TraceLink(pub Option<Arc<str>>);

impl FromRef<ApiState> for TraceLink {
    fn from_ref(s: &ApiState) -> Self {
        s.trace_link.clone()
    }
}

/// The edge's settings.
#[derive(Debug, Clone, Copy)]
pub struct Knobs {
    pub max_body_bytes: usize,
    pub max_file_bytes: usize,
    pub max_file_bytes_per_tenant: u64,
    /// `Retry-After` of a `queue_full` answer, seconds.
    pub queue_full_retry_after: u64,
    /// How long an `Idempotency-Key` holds its job.
    pub idempotency_window_ms: i64,
}

/// The fronts that submit jobs and wait for them.
#[derive(Clone)]
pub struct CallState {
    pub calls: Calls,
    pub queue_full_retry_after: u64,
}

impl CallState {
    /// A call that waits for its job, for `caller`, with the cache as its
    /// headers ask; its id is new.
    pub fn waiting(
        caller: &Caller,
        headers: &HeaderMap,
        submission: Submission,
        priority: Priority,
        stream: bool,
    ) -> CallRequest {
        CallRequest {
            submission,
            priority,
            id: NewId::draw(),
            key: caller.key.clone(),
            bypass_cache: bypasses_cache(headers),
            wait: true,
            stream,
        }
    }

    /// The API's error for a call that could not begin: a full queue says
    /// when to try again.
    pub fn refused(&self, e: CallError) -> ApiError {
        match e {
            CallError::Submit(e @ SubmitError::QueueFull { .. }) => ApiError::QueueFull {
                message: e.to_string(),
                retry_after: self.queue_full_retry_after,
            },
            other => other.into(),
        }
    }
}

impl FromRef<ApiState> for CallState {
    fn from_ref(s: &ApiState) -> Self {
        CallState {
            calls: s.calls.clone(),
            queue_full_retry_after: s.knobs.queue_full_retry_after,
        }
    }
}

/// The job records, for the fronts that read them.
#[derive(Clone)]
pub struct Records {
    pub store: Arc<dyn JobStore>,
}

impl Records {
    /// The job, if the caller may see it.
    pub async fn job(&self, caller: &Caller, id: &str) -> Result<JobRecord, ApiError> {
        let found = self.store.get(id).await?;
        let seen = visible(caller, found, |r| &r.tenant, || format!("job {id:?}"));
        // A durable submission of the caller's refused because another
        // tenant's job holds its id: the refusal, not that job.
        if let (Err(ApiError::NotFound(_)), Some(tenant)) = (&seen, &caller.tenant)
            && self.store.id_refusal(tenant, id).await?.is_some()
        {
            return Err(SubmitError::IdTaken(id.to_owned()).into());
        }
        seen
    }
}

/// What was `found`, if the caller may see it: another tenant's is not
/// found either, so that its existence is not confirmed.
pub fn visible<T>(
    caller: &Caller,
    found: Option<T>,
    tenant: impl Fn(&T) -> &str,
    what: impl FnOnce() -> String,
) -> Result<T, ApiError> {
    found
        .filter(|r| caller.sees(tenant(r)))
        .ok_or_else(|| ApiError::NotFound(what()))
}

impl FromRef<ApiState> for Records {
    fn from_ref(s: &ApiState) -> Self {
        Records {
            store: s.store.clone(),
        }
    }
}

/// Batches and their files.
#[derive(Clone)]
pub struct BatchState {
    pub batch_store: Arc<dyn BatchStore>,
    pub files: Files,
    pub max_file_bytes: usize,
    pub max_file_bytes_per_tenant: u64,
}

impl FromRef<ApiState> for BatchState {
    fn from_ref(s: &ApiState) -> Self {
        BatchState {
            batch_store: s.batch_store.clone(),
            files: s.files.clone(),
            max_file_bytes: s.knobs.max_file_bytes,
            max_file_bytes_per_tenant: s.knobs.max_file_bytes_per_tenant,
        }
    }
}

/// Tenants and keys.
#[derive(Clone)]
pub struct AdminState {
    pub auth: Arc<Auth>,
    pub tenants: Arc<Tenants>,
}

impl FromRef<ApiState> for AdminState {
    fn from_ref(s: &ApiState) -> Self {
        AdminState {
            auth: s.auth.clone(),
            tenants: s.tenants.clone(),
        }
    }
}

impl FromRef<ApiState> for DeadLetters {
    fn from_ref(s: &ApiState) -> Self {
        s.dead_letters.clone()
    }
}

impl FromRef<ApiState> for Readiness {
    fn from_ref(s: &ApiState) -> Self {
        s.readiness.clone()
    }
}

impl FromRef<ApiState> for switchyard_core::models::LiveRegistry {
    fn from_ref(s: &ApiState) -> Self {
        s.live.clone()
    }
}

impl FromRef<ApiState> for switchyard_core::fleet::Fleet {
    fn from_ref(s: &ApiState) -> Self {
        s.fleet.clone()
    }
}
