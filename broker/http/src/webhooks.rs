//! The webhook part of the API: a job's deliveries with every attempt, and
//! the endpoints disabled by a 410.

use axum::Router;
use axum::extract::{Extension, Path, State};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use switchyard_core::auth::Caller;
use switchyard_schemas::now_ms;
use switchyard_store::outbox::{Attempt, DeliveryRecord};
use switchyard_store::view::rfc3339;

use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::state::{ApiState, Records};

pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/v1/jobs/{id}/webhooks", get(job_deliveries))
        .route("/v1/webhooks/disabled", get(disabled))
        .route("/v1/webhooks/enable", post(enable))
}

fn attempt_json(a: &Attempt) -> Value {
    json!({
        "number": a.number,
        "at": rfc3339(a.at_ms),
        "duration_ms": a.duration_ms,
        "status": a.status,
        "error": a.error,
    })
}

fn delivery_json(d: &DeliveryRecord) -> Value {
    json!({
        "webhook_id": d.id,
        "url": d.url,
        "event": d.event,
        "state": d.state,
        "created_at": rfc3339(d.created_at_ms),
        "next_attempt_at": d.next_at_ms.map(rfc3339),
        "attempts": d.attempts.iter().map(attempt_json).collect::<Vec<_>>(),
    })
}

/// A job's webhook events, each with its attempts.
#[utoipa::path(get, path = "/v1/jobs/{id}/webhooks", tag = "webhooks",
    responses(
        (status = 200, description = "`{data: [delivery]}`: `webhook_id`, `url`, `event`, `state` (pending, delivered, failed, disabled), `next_attempt_at`, `attempts: [{number, at, duration_ms, status, error}]`", body = Object),
        (status = 404, description = "`not_found`", body = Object),
    ))]
async fn job_deliveries(
    State(s): State<Records>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    s.job(&caller, &id).await?;
    let data: Vec<Value> = s
        .store
        .deliveries(&id)
        .await?
        .iter()
        .map(delivery_json)
        .collect();
    Ok(axum::Json(json!({ "data": data })))
}

/// Receivers that answered 410 Gone; nothing is sent to them.
#[utoipa::path(get, path = "/v1/webhooks/disabled", tag = "webhooks",
    responses((status = 200, description = "`{data: [{url, at, reason}]}`", body = Object)))]
async fn disabled(State(s): State<Records>) -> Result<axum::Json<Value>, ApiError> {
    let data: Vec<Value> = s
        .store
        .disabled_endpoints()
        .await?
        .into_iter()
        .map(|d| json!({"url": d.url, "at": rfc3339(d.at_ms), "reason": d.reason}))
        .collect();
    Ok(axum::Json(json!({ "data": data })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnableRequest {
    url: String,
}

/// Enables a disabled receiver; the events held for it are sent.
#[utoipa::path(post, path = "/v1/webhooks/enable", tag = "webhooks",
    request_body(content = Object, description = "`{url}`"),
    responses(
        (status = 200, description = "`{url, resumed}`: how many held events are now due", body = Object),
        (status = 404, description = "`not_found`: the URL is not disabled", body = Object),
        (status = 422, description = "`invalid_request`: no `url`", body = Object),
    ))]
async fn enable(
    State(s): State<Records>,
    ApiJson(request): ApiJson<EnableRequest>,
) -> Result<axum::Json<Value>, ApiError> {
    match s.store.enable_endpoint(&request.url, now_ms()).await? {
        Some(resumed) => Ok(axum::Json(json!({"url": request.url, "resumed": resumed}))),
        None => Err(ApiError::NotFound(format!(
            "disabled receiver {:?}",
            request.url
        ))),
    }
}
