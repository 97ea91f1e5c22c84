//! Dead letters over HTTP: list them, and replay one once its cause is
//! fixed.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use switchyard_core::dead_letters::DeadLetters;

use crate::error::ApiError;
use crate::extract::ApiQuery;
use crate::state::ApiState;

pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/v1/admin/dead-letters", get(list))
        .route("/v1/admin/dead-letters/{id}/replay", post(replay))
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    #[serde(default = "default_limit")]
    limit: usize,
}

fn default_limit() -> usize {
    100
}

/// Jobs that failed every attempt, oldest first.
#[utoipa::path(get, path = "/v1/admin/dead-letters", tag = "admin",
    params(("limit" = Option<usize>, Query, description = "At most this many, 100 by default")),
    responses((status = 200, description = "`{dead_letters: [{job_id, model, priority, attempts, dead_at_ms, failures}]}`", body = Object),
              (status = 503, description = "`queue_unavailable`", body = Object)))]
async fn list(
    State(s): State<DeadLetters>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<axum::Json<Value>, ApiError> {
    let letters = s.list(q.limit.clamp(1, 1000)).await?;
    Ok(axum::Json(json!({ "dead_letters": letters })))
}

/// Queue a dead job again, as its next attempt with a fresh budget.
#[utoipa::path(post, path = "/v1/admin/dead-letters/{id}/replay", tag = "admin",
    params(("id" = String, Path)),
    responses((status = 202, description = "`{id, status: queued, attempt}`", body = Object),
              (status = 404, description = "`not_found`", body = Object),
              (status = 409, description = "`not_failed`", body = Object),
              (status = 503, description = "`queue_unavailable`, `store_unavailable`", body = Object)))]
async fn replay(
    State(s): State<DeadLetters>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let job = s.replay(&id).await?;
    let body = json!({"id": job.id, "status": "queued", "attempt": job.attempt});
    Ok((StatusCode::ACCEPTED, axum::Json(body)).into_response())
}
