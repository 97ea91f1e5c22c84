//! Dead letters: jobs that failed every attempt they had. Operators list
//! them and replay one once its cause is fixed. A replay is a new attempt
//! with a fresh attempt budget: the record is reopened (and will be queued
//! again by the outbox if the broker dies here), the job is queued, and only
//! then is the dead letter removed.

use async_nats::jetstream::stream::Stream;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use switchyard_schemas::{DeadLetter, Failure, decode, now_ms, subjects};

use crate::admission::{Admitter, SubmitError};
use crate::api::ApiError;

#[derive(Clone)]
struct DeadState {
    admitter: Admitter,
    dead: Stream,
    results: Stream,
}

pub fn router(admitter: Admitter, dead: Stream, results: Stream) -> Router {
    Router::new()
        .route("/v1/admin/dead-letters", get(list))
        .route("/v1/admin/dead-letters/{id}/replay", post(replay))
        .with_state(DeadState {
            admitter,
            dead,
            results,
        })
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    #[serde(default = "default_limit")]
    limit: usize,
}

fn default_limit() -> usize {
    100
}

#[derive(Debug, Serialize)]
struct DeadView {
    job_id: String,
    model: String,
    priority: String,
    attempts: usize,
    dead_at_ms: i64,
    failures: Vec<Failure>,
}

/// Jobs that failed every attempt, oldest first.
#[utoipa::path(get, path = "/v1/admin/dead-letters", tag = "admin",
    params(("limit" = Option<usize>, Query, description = "At most this many, 100 by default")),
    responses((status = 200, description = "`{dead_letters: [{job_id, model, priority, attempts, dead_at_ms, failures}]}`", body = Object),
              (status = 503, description = "`queue_unavailable`", body = Object)))]
async fn list(
    State(s): State<DeadState>,
    Query(q): Query<ListQuery>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let limit = q.limit.clamp(1, 1000);
    let unavailable = |e: String| ApiError::Submit(SubmitError::QueueUnavailable(e));
    let subjects: Vec<(String, usize)> = s
        .dead
        .info_with_subjects(subjects::DEAD_ALL)
        .await
        .map_err(|e| unavailable(e.to_string()))?
        .try_collect()
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let mut letters = Vec::new();
    for (subject, _) in subjects.into_iter().take(limit) {
        if let Ok(msg) = s.dead.direct_get_last_for_subject(subject).await
            && let Ok(letter) = decode::<DeadLetter>(&msg.payload)
        {
            letters.push(DeadView {
                job_id: letter.job.id,
                model: letter.job.model,
                priority: letter.job.priority.as_str().to_owned(),
                attempts: letter.job.failures.len(),
                dead_at_ms: letter.at_ms,
                failures: letter.job.failures,
            });
        }
    }
    letters.sort_by_key(|l| l.dead_at_ms);
    Ok(axum::Json(json!({ "dead_letters": letters })))
}

/// Queue a dead job again, as its next attempt with a fresh budget.
#[utoipa::path(post, path = "/v1/admin/dead-letters/{id}/replay", tag = "admin",
    params(("id" = String, Path)),
    responses((status = 202, description = "`{id, status: queued, attempt}`", body = Object),
              (status = 404, description = "`not_found`", body = Object),
              (status = 409, description = "`not_failed`", body = Object),
              (status = 503, description = "`queue_unavailable`, `store_unavailable`", body = Object)))]
async fn replay(State(s): State<DeadState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    if !subjects::is_valid_id(&id) {
        return Err(ApiError::NotFound(id));
    }
    let msg = s
        .dead
        .direct_get_last_for_subject(subjects::dead(&id))
        .await
        .map_err(|_| ApiError::NotFound(id.clone()))?;
    let letter: DeadLetter = decode(&msg.payload).map_err(|_| ApiError::NotFound(id.clone()))?;
    // The next attempt number, with a fresh budget of failures.
    let mut job = letter.job;
    job.failures.clear();
    job.submitted_at_ms = now_ms();
    if !s.admitter.store.reopen(&job).await? {
        return Err(ApiError::NotFailed(id));
    }
    // A job has one stored result: the old failure makes way for the new one.
    s.results
        .purge()
        .filter(subjects::results(&job.id))
        .await
        .map_err(|e| ApiError::Submit(SubmitError::QueueUnavailable(e.to_string())))?;
    s.admitter
        .enqueue(&job)
        .await
        .map_err(|e| ApiError::Submit(SubmitError::QueueUnavailable(e.to_string())))?;
    if let Err(e) = s.admitter.store.mark_enqueued(&job.id, now_ms()).await {
        tracing::warn!(job_id = %job.id, error = %e, "could not mark replayed job enqueued");
    }
    if let Err(e) = s.dead.purge().filter(subjects::dead(&job.id)).await {
        tracing::warn!(job_id = %job.id, error = %e, "replayed, but the dead letter stays");
    }
    tracing::info!(job_id = %job.id, attempt = job.attempt, "dead letter replayed");
    let body = json!({"id": job.id, "status": "queued", "attempt": job.attempt});
    Ok((StatusCode::ACCEPTED, axum::Json(body)).into_response())
}
