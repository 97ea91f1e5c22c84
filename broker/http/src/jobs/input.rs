//! A job's input as it was stored: after PII masking, so the console and
//! scripts see what the engine saw, never the raw text. Apart from the job
//! itself, which a poll reads often and an input can make large.

use axum::extract::{Extension, Path, State};
use serde_json::{Value, json};
use switchyard_core::auth::Caller;

use crate::error::ApiError;
use crate::state::Records;

/// The job's input as admission recorded it.
#[utoipa::path(get, path = "/v1/jobs/{id}/input", tag = "jobs",
    responses(
        (status = 200, description = "`{input}`: as stored, after PII masking; `null` for a job refused before admission", body = Object),
        (status = 404, description = "`not_found`", body = Object),
        (status = 503, description = "`store_unavailable`", body = Object),
    ))]
pub(crate) async fn job_input(
    State(s): State<Records>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    s.job(&caller, &id).await?;
    let input = s.store.input(&id).await?;
    Ok(axum::Json(json!({ "input": input })))
}
