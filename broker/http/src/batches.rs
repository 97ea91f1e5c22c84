//! OpenAI's Batch API: a JSONL file of requests, each run as a job at
//! `batch` priority (by the core's batch runner), with an output file and
//! an error file at the end.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Router;
use axum::extract::{Extension, Path, State};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use switchyard_core::auth::Caller;
use switchyard_core::openai_request::Endpoint;
use switchyard_schemas::now_ms;
use switchyard_store::{BatchCounts, BatchRecord, BatchStatus, BatchUpdate};

use crate::error::{ApiError, invalid};
use crate::extract::{ApiJson, ApiQuery};
use crate::files;
use crate::state::{ApiState, BatchState, visible};

/// The longest completion window a batch may ask for.
const MAX_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);

pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/v1/batches", post(create).get(list))
        .route("/v1/batches/{id}", get(retrieve))
        .route("/v1/batches/{id}/cancel", post(cancel))
}

fn secs(ms: Option<i64>) -> Value {
    ms.map_or(Value::Null, |ms| json!(ms / 1000))
}

/// A batch as OpenAI shows it.
fn batch_json(b: &BatchRecord) -> Value {
    let stamp = |column: &str| secs(b.stamps.get(column).copied());
    let BatchCounts {
        total,
        completed,
        failed,
    } = b.counts;
    json!({
        "id": b.id,
        "object": "batch",
        "endpoint": b.endpoint,
        "errors": b.error.as_ref().map(|(code, message)| json!({
            "object": "list", "data": [{"code": code, "message": message, "param": null, "line": null}]
        })),
        "input_file_id": b.input_file_id,
        "completion_window": b.completion_window,
        "status": b.status.as_str(),
        "output_file_id": b.output_file_id,
        "error_file_id": b.error_file_id,
        "created_at": b.created_at_ms / 1000,
        "in_progress_at": stamp("in_progress_at"),
        "expires_at": b.expires_at_ms / 1000,
        "finalizing_at": stamp("finalizing_at"),
        "completed_at": stamp("completed_at"),
        "failed_at": stamp("failed_at"),
        "expired_at": stamp("expired_at"),
        "cancelling_at": stamp("cancelling_at"),
        "cancelled_at": stamp("cancelled_at"),
        "request_counts": {"total": total, "completed": completed, "failed": failed},
        "metadata": b.metadata,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBatch {
    input_file_id: String,
    endpoint: String,
    completion_window: String,
    #[serde(default)]
    metadata: Option<BTreeMap<String, String>>,
}

/// Runs a file of requests as jobs at `batch` priority.
#[utoipa::path(post, path = "/v1/batches", tag = "batches",
    request_body(content = Object, description = "`{input_file_id, endpoint, completion_window, metadata}`"),
    responses(
        (status = 200, description = "The batch, `validating`", body = Object),
        (status = 404, description = "`not_found`: no such input file", body = Object),
        (status = 422, description = "`invalid_request`", body = Object),
    ))]
async fn create(
    State(s): State<BatchState>,
    Extension(caller): Extension<Caller>,
    ApiJson(request): ApiJson<CreateBatch>,
) -> Result<axum::Json<Value>, ApiError> {
    if Endpoint::from_path(&request.endpoint).is_none() {
        return Err(invalid(format!(
            "endpoint {:?} must be one of {}",
            request.endpoint,
            Endpoint::ALL.map(Endpoint::path).join(", ")
        )));
    }
    let window = humantime::parse_duration(&request.completion_window)
        .ok()
        .filter(|w| !w.is_zero() && *w <= MAX_WINDOW)
        .ok_or_else(|| invalid("completion_window must be a duration up to 7 days, such as 24h"))?;
    let metadata = request.metadata.unwrap_or_default();
    if metadata.len() > 16 || metadata.iter().any(|(k, v)| k.len() > 64 || v.len() > 512) {
        return Err(invalid(
            "metadata holds at most 16 entries, keys up to 64 bytes, values up to 512",
        ));
    }
    let file = files::find(&s, &caller, &request.input_file_id).await?;
    if file.purpose != "batch" {
        return Err(invalid(format!("file {} is not a batch input", file.id)));
    }
    let now = now_ms();
    let batch = BatchRecord {
        id: format!("batch_{}", uuid::Uuid::now_v7().simple()),
        tenant: file.tenant,
        api_key: caller.key.as_ref().map(|k| k.id.clone()),
        endpoint: request.endpoint,
        input_file_id: file.id,
        completion_window: request.completion_window,
        status: BatchStatus::Validating,
        metadata,
        created_at_ms: now,
        expires_at_ms: now + i64::try_from(window.as_millis()).unwrap_or(i64::MAX / 2),
        stamps: BTreeMap::new(),
        output_file_id: None,
        error_file_id: None,
        error: None,
        lines_read: 0,
        input_done: false,
        counts: BatchCounts::default(),
    };
    s.batch_store.insert_batch(&batch).await?;
    Ok(axum::Json(batch_json(&batch)))
}

async fn find(s: &BatchState, caller: &Caller, id: &str) -> Result<BatchRecord, ApiError> {
    let found = s.batch_store.get_batch(id).await?;
    visible(caller, found, |b| &b.tenant, || format!("batch {id:?}"))
}

#[utoipa::path(get, path = "/v1/batches/{id}", tag = "batches",
    responses(
        (status = 200, description = "The batch, with `request_counts`", body = Object),
        (status = 404, description = "`not_found`", body = Object),
    ))]
async fn retrieve(
    State(s): State<BatchState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    Ok(axum::Json(batch_json(&find(&s, &caller, &id).await?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    after: Option<String>,
    limit: Option<u32>,
}

/// Batches, newest first, a page at a time (`after`: the last id seen).
#[utoipa::path(get, path = "/v1/batches", tag = "batches",
    params(
        ("after" = Option<String>, Query, description = "The last batch id of the previous page"),
        ("limit" = Option<u32>, Query, description = "1 to 100, 20 by default"),
    ),
    responses(
        (status = 200, description = "`{object: list, data, first_id, last_id, has_more}`", body = Object),
        (status = 422, description = "`invalid_request`", body = Object),
    ))]
async fn list(
    State(s): State<BatchState>,
    Extension(caller): Extension<Caller>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<axum::Json<Value>, ApiError> {
    let limit = query.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(invalid("limit must be between 1 and 100"));
    }
    let mut page = s
        .batch_store
        .list_batches(caller.tenant.as_deref(), query.after.as_deref(), limit + 1)
        .await?;
    let has_more = page.len() > limit as usize;
    page.truncate(limit as usize);
    Ok(axum::Json(json!({
        "object": "list",
        "data": page.iter().map(batch_json).collect::<Vec<_>>(),
        "first_id": page.first().map(|b| &b.id),
        "last_id": page.last().map(|b| &b.id),
        "has_more": has_more,
    })))
}

/// Stops a batch: no more of its requests start, those queued are
/// cancelled, and what finished is in its output.
#[utoipa::path(post, path = "/v1/batches/{id}/cancel", tag = "batches",
    responses(
        (status = 200, description = "The batch, `cancelling`", body = Object),
        (status = 404, description = "`not_found`", body = Object),
        (status = 409, description = "`not_cancellable`: the batch already ended", body = Object),
    ))]
async fn cancel(
    State(s): State<BatchState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    let batch = find(&s, &caller, &id).await?;
    let moved = s
        .batch_store
        .set_batch_status(
            &id,
            &[BatchStatus::Validating, BatchStatus::InProgress],
            BatchStatus::Cancelling,
            now_ms(),
            BatchUpdate::default(),
        )
        .await?;
    if !moved && batch.status != BatchStatus::Cancelling {
        return Err(ApiError::BatchEnded(id, batch.status.as_str()));
    }
    Ok(axum::Json(batch_json(&find(&s, &caller, &id).await?)))
}
