//! The HTTP jobs API. Errors are `{"error": {"code", "message"}}` with a
//! stable code; the status is chosen here and only here.

use axum::Router;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Extension, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use serde_json::{Value, json};
use std::time::Duration;

use async_nats::jetstream::stream::Stream;
use switchyard_schemas::{
    DEFAULT_TENANT, ErrorBody, ErrorClass, Job, JobError, Priority, Submission, now_ms,
};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tracing::error;

use crate::BrokerConfig;
use crate::admission::{Admitter, Rejection, SubmitError};
use crate::auth::{Auth, Caller};
use crate::cache::{self, Lookup, ResultCache};
use crate::cancel::{self, CancelError};
use crate::limits::KeyLimits;
use crate::wait::Watch;
use crate::{admin, batches, billing, events, kserve, openai, openapi, webhooks};
use async_nats::jetstream::kv;
use async_nats::jetstream::object_store::ObjectStore;
use base64::Engine as _;
use std::sync::Arc;
use switchyard_runtime::{Readiness, Tenants};
use switchyard_store::view::{JobView, rfc3339};
use switchyard_store::{BatchStore, JobRecord, ListFilter, Source, Status};
use tokio::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Submit(#[from] SubmitError),
    #[error("request body exceeds {0} bytes")]
    BodyTooLarge(usize),
    #[error("request body could not be read")]
    BodyUnreadable,
    #[error("no job with id {0:?}")]
    NotFound(String),
    #[error("job {0:?} is not failed, so it cannot be replayed")]
    NotFailed(String),
    #[error(transparent)]
    Cancel(#[from] CancelError),
    #[error("{message}")]
    QueueFull { message: String, retry_after: u64 },
    #[error("Idempotency-Key must be 1 to 255 visible ASCII characters")]
    BadIdempotencyKey,
    #[error("a request with this Idempotency-Key is still being handled; retry shortly")]
    IdempotencyInFlight,
    #[error("job store: {0}")]
    Store(#[from] switchyard_store::StoreError),
    #[error("NATS: {0}")]
    Unavailable(String),
    #[error("job {0} is still running; its result will be at /v1/jobs/{0}")]
    StillRunning(String),
    /// The job ran and failed; the error is already fit for the client.
    #[error("{}", .0.message)]
    JobFailed(JobError),
    #[error("batch {0} already ended {1}")]
    BatchEnded(String, &'static str),
    #[error("{0} already exists")]
    AlreadyExists(String),
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::Submit(SubmitError::Rejected(r)) => {
                let status = match r {
                    Rejection::MalformedBody(_) => StatusCode::BAD_REQUEST,
                    Rejection::OverBudget { .. } => StatusCode::PAYMENT_REQUIRED,
                    Rejection::InputTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                    Rejection::InvalidRequest(_)
                    | Rejection::UnknownModel(_)
                    | Rejection::WebhookRefused(_)
                    | Rejection::PiiFound(_) => StatusCode::UNPROCESSABLE_ENTITY,
                };
                (status, r.code())
            }
            ApiError::QueueFull { .. } | ApiError::Submit(SubmitError::QueueFull { .. }) => {
                (StatusCode::TOO_MANY_REQUESTS, "queue_full")
            }
            ApiError::Submit(SubmitError::RateLimited { .. }) => {
                (StatusCode::TOO_MANY_REQUESTS, "rate_limited")
            }
            ApiError::Submit(SubmitError::IdTaken(_)) => (StatusCode::CONFLICT, "id_taken"),
            ApiError::Submit(SubmitError::QueueUnavailable(_)) => {
                (StatusCode::SERVICE_UNAVAILABLE, "queue_unavailable")
            }
            ApiError::BodyTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            ApiError::BodyUnreadable => (StatusCode::BAD_REQUEST, "malformed_body"),
            ApiError::BadIdempotencyKey => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
            ApiError::IdempotencyInFlight => (StatusCode::CONFLICT, "idempotency_conflict"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::NotFailed(_) => (StatusCode::CONFLICT, "not_failed"),
            ApiError::Cancel(e) => {
                let status = match e {
                    CancelError::NotFound(_) => StatusCode::NOT_FOUND,
                    CancelError::Final { .. } => StatusCode::CONFLICT,
                    CancelError::Store(_) | CancelError::Unavailable(_) => {
                        StatusCode::SERVICE_UNAVAILABLE
                    }
                };
                (status, e.code())
            }
            ApiError::Submit(SubmitError::Store(_)) | ApiError::Store(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable")
            }
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "broker_unavailable"),
            ApiError::StillRunning(_) => (StatusCode::GATEWAY_TIMEOUT, "still_running"),
            ApiError::JobFailed(e) => (class_status(e.class), e.class.code()),
            ApiError::BatchEnded(..) => (StatusCode::CONFLICT, "not_cancellable"),
            ApiError::AlreadyExists(_) => (StatusCode::CONFLICT, "already_exists"),
        }
    }

    /// The stable code the client is given.
    pub fn code(&self) -> &'static str {
        self.status_and_code().1
    }

    /// What the client is told. Operator detail (addresses, driver errors)
    /// stays in the log.
    fn client_message(&self, status: StatusCode, code: &str) -> String {
        match self {
            ApiError::JobFailed(_) | ApiError::StillRunning(_) => self.to_string(),
            _ if !status.is_server_error() => self.to_string(),
            _ => {
                error!(error = %self, code, "request failed");
                match code {
                    "queue_unavailable" => {
                        "the job queue is unavailable; the job was not queued".into()
                    }
                    "broker_unavailable" => "the broker cannot reach NATS; try again".into(),
                    _ => "the job store is unavailable; try again".into(),
                }
            }
        }
    }
}

impl ApiError {
    /// The response, its body made by `body` from the code and the message.
    pub fn respond(self, body: impl FnOnce(&'static str, String) -> Value) -> Response {
        let (status, code) = self.status_and_code();
        let retry_after = match &self {
            ApiError::QueueFull { retry_after, .. }
            | ApiError::Submit(SubmitError::RateLimited { retry_after, .. }) => Some(*retry_after),
            ApiError::IdempotencyInFlight => Some(1),
            ApiError::JobFailed(_) => None,
            _ if status == StatusCode::SERVICE_UNAVAILABLE => Some(1),
            _ => None,
        };
        let message = self.client_message(status, code);
        let mut response = (status, axum::Json(body(code, message))).into_response();
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.respond(|code, message| json!({"error": ErrorBody { code: code.into(), message }}))
    }
}

/// What the HTTP API needs from the rest of the broker.
pub struct Parts {
    pub admitter: Admitter,
    pub cancellations: kv::Store,
    pub client: async_nats::Client,
    pub results: Stream,
    pub readiness: Readiness,
    pub cache: Option<ResultCache>,
    pub files: batches::Files,
    pub batch_store: Arc<dyn BatchStore>,
    /// Outputs too large for a result message.
    pub large_results: ObjectStore,
    pub auth: Arc<Auth>,
    pub tenants: Arc<Tenants>,
}

/// What every handler shares.
pub fn state(parts: Parts, cfg: &BrokerConfig) -> ApiState {
    ApiState {
        admitter: parts.admitter,
        cancellations: parts.cancellations,
        client: parts.client,
        results: parts.results,
        readiness: parts.readiness,
        cache: parts.cache,
        max_body_bytes: cfg.max_body_bytes,
        queue_full_retry_after: cfg.queue_full_retry_after.as_secs().max(1),
        idempotency_window_ms: i64::try_from(cfg.idempotency_window.as_millis())
            .unwrap_or(i64::MAX),
        sync_timeout: cfg.sync_timeout,
        files: parts.files,
        batch_store: parts.batch_store,
        large_results: parts.large_results,
        max_file_bytes: cfg.max_file_bytes,
        auth: parts.auth,
        tenants: parts.tenants,
    }
}

/// The jobs API, the OpenAI-compatible and KServe fronts, webhooks and
/// batches.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/v1/jobs", post(submit).get(list_jobs))
        .route("/v1/jobs/{id}", get(get_job))
        .route("/v1/jobs/{id}/cancel", post(cancel_job))
        .merge(openai::router())
        .merge(kserve::router())
        .merge(events::router())
        .merge(openapi::router())
        .merge(webhooks::router())
        .merge(billing::router())
        .merge(batches::router(state.max_file_bytes))
        .merge(admin::router())
        .layer(DefaultBodyLimit::max(state.max_body_bytes))
        .with_state(state)
}

#[derive(Clone)]
pub struct ApiState {
    pub admitter: Admitter,
    pub cancellations: kv::Store,
    pub client: async_nats::Client,
    /// The `RESULTS` stream, read directly by callers that wait.
    pub results: Stream,
    /// The broker's own readiness (NATS connected, serving).
    pub readiness: Readiness,
    /// Where some model has `cache:` configured.
    cache: Option<ResultCache>,
    queue_full_retry_after: u64,
    idempotency_window_ms: i64,
    /// How long a call may wait for its job before `504 still_running`.
    pub sync_timeout: Duration,
    /// Batch input and output files.
    pub files: batches::Files,
    pub batch_store: Arc<dyn BatchStore>,
    pub large_results: ObjectStore,
    pub max_body_bytes: usize,
    pub max_file_bytes: usize,
    pub auth: Arc<Auth>,
    /// The configuration's tenants.
    pub tenants: Arc<Tenants>,
}

impl ApiState {
    /// The result cache's answer to a request, checked as admission would
    /// check it (so that an invalid request is refused, not looked up).
    pub async fn cached(
        &self,
        submission: &Submission,
        priority: Priority,
        headers: &HeaderMap,
    ) -> Result<(Lookup, Option<Value>), ApiError> {
        let Some(cache) = &self.cache else {
            return Ok((Lookup::unused(), None));
        };
        let registry = &self.admitter.registry;
        let spec = registry
            .get(&submission.model)
            .and_then(|s| s.cache.as_ref());
        if spec.is_none() {
            return Ok((Lookup::unused(), None));
        }
        let job = self
            .admitter
            .validate(submission.clone(), priority, "lookup".into())
            .map_err(SubmitError::from)?;
        Ok(cache.look_up(spec, &job, headers).await)
    }

    /// Records a request answered from the cache as a job of its own,
    /// succeeded without running, so that it is on record and billed.
    pub async fn answered(
        &self,
        submission: Submission,
        priority: Priority,
        id: String,
        output: Value,
    ) -> Result<Job, ApiError> {
        self.admitter
            .record_answered(submission, priority, id, Source::Http, output)
            .await
            .map_err(ApiError::Submit)
    }

    /// Keeps a result for the requests that repeat this one.
    pub async fn remember(&self, lookup: &Lookup, output: &Value) {
        if let Some(cache) = &self.cache {
            cache.store(lookup, output).await;
        }
    }

    /// The job, if the caller may see it: another tenant's job is not
    /// found, so that its existence is not confirmed.
    pub async fn job(&self, caller: &Caller, id: &str) -> Result<JobRecord, ApiError> {
        self.admitter
            .store
            .get(id)
            .await?
            .filter(|r| caller.sees(&r.tenant))
            .ok_or_else(|| ApiError::NotFound(id.to_owned()))
    }

    /// Admits and queues a job submitted over HTTP, its tenant already
    /// stamped by the caller's key.
    pub async fn submit(
        &self,
        submission: Submission,
        priority: Priority,
        id: String,
        key: Option<&KeyLimits>,
    ) -> Result<Job, ApiError> {
        self.admitter
            .submit(submission, priority, id, Source::Http, key)
            .await
            .map_err(|e| match e {
                SubmitError::QueueFull { .. } => ApiError::QueueFull {
                    message: e.to_string(),
                    retry_after: self.queue_full_retry_after,
                },
                other => ApiError::Submit(other),
            })
    }
}

/// The HTTP status of a failed job's error.
fn class_status(class: ErrorClass) -> StatusCode {
    match class {
        ErrorClass::InvalidInput => StatusCode::BAD_REQUEST,
        ErrorClass::UnknownModel => StatusCode::NOT_FOUND,
        ErrorClass::Cancelled => StatusCode::CONFLICT,
        ErrorClass::EngineUnavailable | ErrorClass::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
        ErrorClass::Timeout | ErrorClass::TimedOut | ErrorClass::Expired => {
            StatusCode::GATEWAY_TIMEOUT
        }
        ErrorClass::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The HTTP status of a failed job's stored error code; a code refused at
/// admission is the client's error.
pub fn job_error_status(code: &str) -> u16 {
    ErrorClass::from_code(code)
        .map_or(StatusCode::UNPROCESSABLE_ENTITY, class_status)
        .as_u16()
}

/// A request the API refuses as invalid, with the reason.
pub fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::Submit(SubmitError::Rejected(Rejection::InvalidRequest(
        message.into(),
    )))
}

/// `X-Switchyard-Priority`, `normal` when absent.
pub fn priority(headers: &HeaderMap) -> Result<Priority, ApiError> {
    match headers.get("x-switchyard-priority") {
        None => Ok(Priority::default()),
        Some(v) => v.to_str().ok().and_then(|p| p.parse().ok()).ok_or_else(|| {
            invalid("X-Switchyard-Priority must be critical, high, normal or batch")
        }),
    }
}

/// Names the job that answered, for calls that do not return its record.
pub fn name_job(response: &mut Response, id: &str) {
    if let Ok(v) = HeaderValue::from_str(id) {
        response.headers_mut().insert("x-switchyard-job-id", v);
    }
}

/// The request's body, or the error that says why it is not there.
pub fn read_body(s: &ApiState, body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::BodyTooLarge(s.max_body_bytes)
        } else {
            ApiError::BodyUnreadable
        }
    })
}

/// The HTTP form of a submission: the priority is in the body, and ids are
/// always the server's.
fn parse_submission(body: &[u8]) -> Result<Submission, Rejection> {
    let submission: Submission = serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => Rejection::InvalidRequest(e.to_string()),
        _ => Rejection::MalformedBody(format!("body is not valid JSON: {e}")),
    })?;
    if submission.id.is_some() {
        return Err(Rejection::InvalidRequest(
            "id is assigned by the server over HTTP".into(),
        ));
    }
    Ok(submission)
}

/// Queue a job.
#[utoipa::path(post, path = "/v1/jobs", tag = "jobs",
    request_body(content = Object, description = "`model`, `input`, and optionally `priority`, `tenant`, `metadata`, `deadline_ms`, `timeout_ms`, `stream` (docs/api.md)"),
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "The same key returns the job it first made"),
        ("Prefer" = Option<String>, Header, description = "`wait=N`: answer with the finished job if it ends within N seconds"),
    ),
    responses(
        (status = 202, description = "Queued: `{id, status, model, priority, created_at}`", body = Object),
        (status = 200, description = "Finished within `Prefer: wait`", body = JobView),
        (status = 400, description = "`malformed_body`", body = Object),
        (status = 409, description = "`idempotency_conflict`", body = Object),
        (status = 413, description = "`body_too_large`, `input_too_large`", body = Object),
        (status = 422, description = "`invalid_request`, `unknown_model`", body = Object),
        (status = 429, description = "`queue_full`", body = Object),
        (status = 503, description = "`queue_unavailable`, `store_unavailable`", body = Object),
    ))]
async fn submit(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = read_body(&s, body)?;
    let mut submission = parse_submission(&body).map_err(SubmitError::from)?;
    caller.stamp(&mut submission).map_err(SubmitError::from)?;
    // A key is the tenant's own: another tenant's same key is another request.
    let key = idempotency_key(&headers)?.map(|key| {
        let tenant = submission.tenant.as_deref().unwrap_or(DEFAULT_TENANT);
        format!("{tenant}:{key}")
    });
    let key = key.as_deref();
    let priority = submission.priority.unwrap_or_default();
    let id = uuid::Uuid::now_v7().to_string();
    let store = &s.admitter.store;
    if let Some(key) = key {
        let now = now_ms();
        let holder = store
            .claim_key(key, &id, now, now - s.idempotency_window_ms)
            .await?;
        if holder != id {
            // The same request again: answer with the job it made.
            let record = store
                .get(&holder)
                .await?
                .ok_or(ApiError::IdempotencyInFlight)?;
            let mut response = accepted(
                &record.id,
                record.status.as_str(),
                &record.model,
                &record.priority,
                record.created_at_ms,
            );
            response
                .headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
            return Ok(response);
        }
    }
    let wait = prefer_wait(&headers, s.sync_timeout);
    let release = |key: Option<&str>| {
        let store = store.clone();
        let id = id.clone();
        let key = key.map(str::to_owned);
        async move {
            if let Some(key) = key
                && let Err(e) = store.release_key(&key, &id).await
            {
                error!(error = %e, "could not release an idempotency key");
            }
        }
    };
    let (lookup, hit) = match s.cached(&submission, priority, &headers).await {
        Ok(found) => found,
        Err(e) => {
            release(key).await;
            return Err(e);
        }
    };
    if let Some(output) = hit {
        let job = match s.answered(submission, priority, id.clone(), output).await {
            Ok(job) => job,
            Err(e) => {
                release(key).await;
                return Err(e);
            }
        };
        let mut response = match (wait, store.get(&job.id).await?) {
            (Some(wait), Some(record)) => waited(record, wait),
            _ => accepted(
                &job.id,
                Status::Succeeded.as_str(),
                &job.model,
                job.priority.as_str(),
                job.submitted_at_ms,
            ),
        };
        cache::mark(&mut response, &lookup);
        return Ok(response);
    }
    // Listening before the job is queued, so that a quick result is not missed.
    let mut watch = match wait {
        Some(_) => Some(
            Watch::start(&s, &id, false)
                .await
                .map_err(|e| ApiError::Unavailable(e.to_string()))?,
        ),
        None => None,
    };
    let job = match s
        .submit(submission, priority, id.clone(), caller.key.as_ref())
        .await
    {
        Ok(job) => job,
        Err(e) => {
            release(key).await;
            return Err(e);
        }
    };
    if let (Some(wait), Some(watch)) = (wait, &mut watch)
        && let Some(record) = finished_within(&s, watch, &job.id, wait).await?
    {
        if let Some(output) = record
            .output
            .as_ref()
            .filter(|_| record.status == Status::Succeeded)
        {
            s.remember(&lookup, output).await;
        }
        let mut response = waited(record, wait);
        cache::mark(&mut response, &lookup);
        return Ok(response);
    }
    let mut response = accepted(
        &job.id,
        "queued",
        &job.model,
        job.priority.as_str(),
        job.submitted_at_ms,
    );
    cache::mark(&mut response, &lookup);
    Ok(response)
}

/// The answer to `Prefer: wait` when the job ended within the wait.
fn waited(record: JobRecord, wait: Duration) -> Response {
    let mut response = axum::Json(JobView::from(record)).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("wait={}", wait.as_secs())) {
        response.headers_mut().insert("preference-applied", v);
    }
    response
}

/// `Prefer: wait=N` (RFC 7240): answer once the job has finished, if it
/// does within N seconds (at most `limit`).
fn prefer_wait(headers: &HeaderMap, limit: Duration) -> Option<Duration> {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| p.trim().strip_prefix("wait=")?.trim().parse::<u64>().ok())
        .map(|secs| Duration::from_secs(secs).min(limit))
}

/// The job's record once it has finished, if its result comes within
/// `wait`. The record follows the result by a moment (the broker's
/// projection writes it), so it is read until it shows the end.
async fn finished_within(
    s: &ApiState,
    watch: &mut Watch,
    id: &str,
    wait: Duration,
) -> Result<Option<JobRecord>, ApiError> {
    if watch.result(Instant::now() + wait).await.is_none() {
        return Ok(None);
    }
    let settle = Instant::now() + RECORD_SETTLE;
    loop {
        let record = s.admitter.store.get(id).await?;
        if record.as_ref().is_some_and(|r| r.status.is_final()) || Instant::now() >= settle {
            return Ok(record);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Longest the record may lag behind the result it reflects.
const RECORD_SETTLE: Duration = Duration::from_secs(2);

#[derive(Debug, serde::Deserialize)]
struct GetQuery {
    /// Long-poll: answer once the job has finished, or after this many
    /// seconds with its state then.
    #[serde(default)]
    wait: Option<u64>,
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    match value.to_str() {
        Ok(key) if (1..=255).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic()) => {
            Ok(Some(key))
        }
        _ => Err(ApiError::BadIdempotencyKey),
    }
}

/// `202 Accepted` naming the job, with its `Location`.
fn accepted(id: &str, status: &str, model: &str, priority: &str, created_at_ms: i64) -> Response {
    let body = json!({
        "id": id,
        "status": status,
        "model": model,
        "priority": priority,
        "created_at": rfc3339(created_at_ms),
    });
    let mut response = (StatusCode::ACCEPTED, axum::Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("/v1/jobs/{id}")) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    response
}

/// A job, its transitions, and its result or error.
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs",
    params(
        ("id" = String, Path, description = "The job's id"),
        ("wait" = Option<u64>, Query, description = "Long-poll: answer once the job ends, or after this many seconds"),
    ),
    responses(
        (status = 200, description = "The job", body = JobView),
        (status = 404, description = "`not_found`", body = Object),
        (status = 422, description = "`invalid_request`", body = Object),
        (status = 503, description = "`store_unavailable`", body = Object),
    ))]
async fn get_job(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    query: Result<Query<GetQuery>, QueryRejection>,
) -> Result<axum::Json<JobView>, ApiError> {
    let Query(query) = query.map_err(|e| invalid(e.body_text()))?;
    let store = &s.admitter.store;
    let record = s.job(&caller, &id).await?;
    let Some(wait) = query
        .wait
        .map(|secs| Duration::from_secs(secs).min(s.sync_timeout))
    else {
        return Ok(axum::Json(JobView::from(record)));
    };
    if record.status.is_final() {
        return Ok(axum::Json(JobView::from(record)));
    }
    let mut watch = Watch::start(&s, &id, false)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    let record = match finished_within(&s, &mut watch, &id, wait).await? {
        Some(record) => record,
        // Still going: its state now.
        None => store.get(&id).await?.ok_or(ApiError::NotFound(id))?,
    };
    Ok(axum::Json(JobView::from(record)))
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    status: Option<String>,
    model: Option<String>,
    tenant: Option<String>,
    /// Created at or after this time (RFC 3339).
    since: Option<String>,
    /// Created before this time (RFC 3339).
    until: Option<String>,
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

const LIST_LIMIT_DEFAULT: u32 = 50;
const LIST_LIMIT_MAX: u32 = 200;

/// Jobs newest first, a page at a time.
#[utoipa::path(get, path = "/v1/jobs", tag = "jobs",
    params(
        ("status" = Option<String>, Query, description = "queued, assigned, running, succeeded, failed, expired, timed_out, cancelled"),
        ("model" = Option<String>, Query),
        ("tenant" = Option<String>, Query),
        ("since" = Option<String>, Query, description = "Created at or after (RFC 3339)"),
        ("until" = Option<String>, Query, description = "Created before (RFC 3339)"),
        ("limit" = Option<u32>, Query, description = "1 to 200, 50 by default"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
    ),
    responses(
        (status = 200, description = "`{data: [job], next_cursor}`", body = Object),
        (status = 422, description = "`invalid_request`", body = Object),
        (status = 503, description = "`store_unavailable`", body = Object),
    ))]
async fn list_jobs(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<axum::Json<Value>, ApiError> {
    let Query(q) = query.map_err(|e| invalid(e.body_text()))?;
    let limit = q.limit.unwrap_or(LIST_LIMIT_DEFAULT);
    if !(1..=LIST_LIMIT_MAX).contains(&limit) {
        return Err(invalid(format!(
            "limit must be between 1 and {LIST_LIMIT_MAX}"
        )));
    }
    let status = match q.status.as_deref() {
        None => None,
        Some(name) => Some(
            Status::parse(name)
                .ok_or_else(|| invalid(format!("status {name:?} is not a job status")))?,
        ),
    };
    let filter = ListFilter {
        status,
        model: q.model,
        tenant: caller.tenant_filter(q.tenant).map_err(SubmitError::from)?,
        since_ms: parse_time("since", q.since.as_deref())?,
        until_ms: parse_time("until", q.until.as_deref())?,
        after: q.cursor.as_deref().map(decode_cursor).transpose()?,
    };
    let records = s.admitter.store.list(&filter, limit).await?;
    let next_cursor = (records.len() == limit as usize)
        .then(|| {
            records
                .last()
                .map(|r| encode_cursor(r.created_at_ms, &r.id))
        })
        .flatten();
    let data: Vec<JobView> = records.into_iter().map(JobView::from).collect();
    Ok(axum::Json(
        json!({"data": data, "next_cursor": next_cursor}),
    ))
}

/// A query's optional RFC 3339 time, as Unix ms.
pub fn parse_time(field: &str, text: Option<&str>) -> Result<Option<i64>, ApiError> {
    let Some(text) = text else {
        return Ok(None);
    };
    OffsetDateTime::parse(text, &Rfc3339)
        .map(|t| Some(i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)))
        .map_err(|_| {
            invalid(format!(
                "{field} must be an RFC 3339 time, such as 2026-11-22T01:31:50Z"
            ))
        })
}

/// A cursor is opaque to clients: the last job's creation time and id.
fn encode_cursor(created_at_ms: i64, id: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{created_at_ms}:{id}"))
}

fn decode_cursor(cursor: &str) -> Result<(i64, String), ApiError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| {
            let (ms, id) = text.split_once(':')?;
            Some((ms.parse().ok()?, id.to_owned()))
        })
        .ok_or_else(|| invalid("cursor is not one this API gave"))
}

/// Cancel a job that has not ended.
#[utoipa::path(post, path = "/v1/jobs/{id}/cancel", tag = "jobs",
    params(("id" = String, Path, description = "The job's id")),
    responses(
        (status = 200, description = "`{id, status: cancelled}`", body = Object),
        (status = 404, description = "`not_found`", body = Object),
        (status = 409, description = "`not_cancellable`", body = Object),
        (status = 503, description = "`store_unavailable`, `queue_unavailable`", body = Object),
    ))]
async fn cancel_job(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    s.job(&caller, &id).await?;
    cancel::cancel(&s.admitter, &s.cancellations, &id).await?;
    Ok(axum::Json(json!({"id": id, "status": "cancelled"})))
}
