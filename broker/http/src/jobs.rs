//! The jobs API: submit (with `Prefer: wait` and `Idempotency-Key`),
//! read (with `?wait=`), list and cancel jobs.

use std::time::Duration;

use axum::Router;
use axum::extract::{Extension, FromRef, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use switchyard_core::admission::{NewId, Rejection};
use switchyard_core::auth::Caller;
use switchyard_core::calls::{Begun, CallRequest};
use switchyard_core::cancel::Canceller;
use switchyard_schemas::redact::without_values;
use switchyard_schemas::{DEFAULT_TENANT, Submission, now_ms};
use switchyard_store::view::{JobView, rfc3339};
use switchyard_store::{JobRecord, Status};
use tracing::error;

use crate::error::ApiError;
use crate::extract::{ApiQuery, Body};
use crate::reply::{bypasses_cache, mark_cache};
use crate::state::{ApiState, CallState, Records};

pub(crate) mod input;
pub(crate) mod list;
pub(crate) mod summary;

/// What the jobs API works with.
#[derive(Clone)]
struct JobsState {
    call: CallState,
    records: Records,
    canceller: Canceller,
    idempotency_window_ms: i64,
}

impl FromRef<ApiState> for JobsState {
    fn from_ref(s: &ApiState) -> Self {
        JobsState {
            call: CallState::from_ref(s),
            records: Records::from_ref(s),
            canceller: s.canceller.clone(),
            idempotency_window_ms: s.knobs.idempotency_window_ms,
        }
    }
}

pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/v1/jobs", post(submit).get(list::list_jobs))
        .route("/v1/summary", get(summary::summary))
        .route("/v1/jobs/{id}", get(get_job))
        .route("/v1/jobs/{id}/input", get(input::job_input))
        .route("/v1/jobs/{id}/cancel", post(cancel_job))
}

/// The HTTP form of a submission: the priority is in the body, and ids are
/// always the server's.
fn parse_submission(body: &[u8]) -> Result<Submission, Rejection> {
    let submission: Submission = serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => Rejection::invalid(without_values(&e.to_string())),
        _ => Rejection::MalformedBody(format!(
            "body is not valid JSON: {}",
            without_values(&e.to_string())
        )),
    })?;
    if submission.id.is_some() {
        return Err(Rejection::invalid("id is assigned by the server over HTTP"));
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
    State(s): State<JobsState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<Response, ApiError> {
    let mut submission = parse_submission(&body)?;
    caller.stamp(&mut submission)?;
    // A key is the tenant's own: another tenant's same key is another request.
    let key = idempotency_key(&headers)?.map(|key| {
        let tenant = submission.tenant.as_deref().unwrap_or(DEFAULT_TENANT);
        format!("{tenant}:{key}")
    });
    let id = NewId::draw();
    let store = &s.records.store;
    if let Some(key) = &key {
        let now = now_ms();
        let holder = store
            .claim_key(key, id.as_str(), now, now - s.idempotency_window_ms)
            .await?;
        if holder != id.as_str() {
            // The same request again: answer with the job it made, once its
            // queue has it. Until then the first request may still be
            // refused (a full queue) and take the record back, and a 202
            // here would name a job that never runs.
            let record = store
                .get(&holder)
                .await?
                .filter(|r| r.status != Status::Queued || r.enqueued_at_ms.is_some())
                .ok_or(ApiError::IdempotencyInFlight)?;
            let mut response = accepted(
                &record.id,
                record.status.as_str(),
                (&record.model, record.alias.as_deref()),
                &record.priority,
                record.created_at_ms,
            );
            response
                .headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
            return Ok(response);
        }
    }
    let calls = &s.call.calls;
    let wait = prefer_wait(&headers, calls.sync_timeout());
    let request = CallRequest {
        priority: submission.priority.unwrap_or_default(),
        submission,
        id: id.clone(),
        key: caller.key.clone(),
        bypass_cache: bypasses_cache(&headers),
        wait: wait.is_some(),
        stream: false,
    };
    let (begun, cache) = match calls.begin(request).await {
        Ok(begun) => begun,
        Err(e) => {
            // Refused: a retry with the same key may try again.
            if let Some(key) = &key
                && let Err(e) = store.release_key(key, id.as_str()).await
            {
                error!(error = %e, "could not release an idempotency key");
            }
            return Err(s.call.refused(e));
        }
    };
    let mut response = match (begun, wait) {
        (Begun::Cached { job, .. }, Some(wait)) => match store.get(&job.id).await? {
            Some(record) => waited(record, wait),
            None => accepted_job(&job, Status::Succeeded),
        },
        (Begun::Cached { job, .. }, None) => accepted_job(&job, Status::Succeeded),
        (Begun::Queued { job, call }, wait) => {
            let finished = match (call, wait) {
                (Some(mut call), Some(wait)) => {
                    let record = call.finished_record(calls, wait).await?;
                    let output = record
                        .as_ref()
                        .filter(|r| r.status == Status::Succeeded)
                        .and_then(|r| r.output.as_ref());
                    call.end(output).await;
                    record.map(|r| waited(r, wait))
                }
                _ => None,
            };
            finished.unwrap_or_else(|| accepted_job(&job, Status::Queued))
        }
    };
    mark_cache(&mut response, cache);
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
pub(crate) fn prefer_wait(headers: &HeaderMap, limit: Duration) -> Option<Duration> {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| p.trim().strip_prefix("wait=")?.trim().parse::<u64>().ok())
        .map(|secs| Duration::from_secs(secs).min(limit))
}

pub(crate) fn idempotency_key(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
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

fn accepted_job(job: &switchyard_schemas::Job, status: Status) -> Response {
    accepted(
        &job.id,
        status.as_str(),
        (&job.model, job.alias.as_deref()),
        job.priority.as_str(),
        job.submitted_at_ms,
    )
}

/// `202 Accepted` naming the job, its model (the version that serves it)
/// and the alias it was asked for by, if it was, with its `Location`.
fn accepted(
    id: &str,
    status: &str,
    (model, alias): (&str, Option<&str>),
    priority: &str,
    created_at_ms: i64,
) -> Response {
    let mut body = json!({
        "id": id,
        "status": status,
        "model": model,
        "priority": priority,
        "created_at": rfc3339(created_at_ms),
    });
    if let Some(alias) = alias {
        body["alias"] = json!(alias);
    }
    let mut response = (StatusCode::ACCEPTED, axum::Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("/v1/jobs/{id}")) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    response
}

#[derive(Debug, serde::Deserialize)]
struct GetQuery {
    /// Long-poll: answer once the job has finished, or after this many
    /// seconds with its state then.
    #[serde(default)]
    wait: Option<u64>,
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
    State(s): State<JobsState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<GetQuery>,
) -> Result<axum::Json<JobView>, ApiError> {
    let calls = &s.call.calls;
    let record = s.records.job(&caller, &id).await?;
    let Some(wait) = query
        .wait
        .map(|secs| Duration::from_secs(secs).min(calls.sync_timeout()))
    else {
        return Ok(axum::Json(JobView::from(record)));
    };
    if record.status.is_final() {
        return Ok(axum::Json(JobView::from(record)));
    }
    // Another call's job: waiting on it never cancels it.
    let mut watch = calls
        .watcher()
        .watch(&id, false)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    let record = match calls.finished_record(&mut watch, &id, wait).await? {
        Some(record) => record,
        // Still going: its state now.
        None => s.records.job(&caller, &id).await?,
    };
    Ok(axum::Json(JobView::from(record)))
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
    State(s): State<JobsState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    s.records.job(&caller, &id).await?;
    s.canceller.cancel(&id).await?;
    Ok(axum::Json(json!({"id": id, "status": "cancelled"})))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefer(value: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("prefer", HeaderValue::from_static(value));
        headers
    }

    #[test]
    fn prefer_wait_is_read_from_any_preference_and_capped() {
        let limit = Duration::from_secs(30);
        assert_eq!(prefer_wait(&HeaderMap::new(), limit), None);
        assert_eq!(
            prefer_wait(&prefer("wait=5"), limit),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            prefer_wait(&prefer("respond-async, wait=10"), limit),
            Some(Duration::from_secs(10))
        );
        assert_eq!(prefer_wait(&prefer("wait=600"), limit), Some(limit));
        assert_eq!(prefer_wait(&prefer("wait=soon"), limit), None);
    }

    #[test]
    fn an_idempotency_key_is_visible_ascii_of_bounded_length() {
        let key = |v: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert("idempotency-key", HeaderValue::from_static(v));
            idempotency_key(&headers).map(|k| k.map(str::to_owned))
        };
        assert_eq!(key("order-17").unwrap().as_deref(), Some("order-17"));
        assert!(key("has space").is_err());
        assert!(key("").is_err());
        assert!(idempotency_key(&HeaderMap::new()).unwrap().is_none());
    }

    #[test]
    fn the_server_assigns_ids_over_http() {
        assert!(parse_submission(br#"{"model":"m","input":{},"id":"mine"}"#).is_err());
        assert!(matches!(
            parse_submission(b"{not json"),
            Err(Rejection::MalformedBody(_))
        ));
        assert!(parse_submission(br#"{"model":"m","input":{}}"#).is_ok());
    }
}
