//! Listing runs, newest first, a page at a time, from the store's rows of
//! them.

use axum::extract::{Extension, State};
use serde_json::{Value, json};
use switchyard_core::auth::Caller;
use switchyard_store::runs::{RunFilter, RunRow};
use switchyard_workflows::RunStatus;

use super::RunsState;
use crate::error::{ApiError, invalid};
use crate::extract::{ApiQuery, parse_time};
use crate::jobs::list::{decode_cursor, next_cursor, page_limit};

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    workflow: Option<String>,
    status: Option<String>,
    tenant: Option<String>,
    /// Started at or after this time (RFC 3339).
    since: Option<String>,
    /// Started before this time (RFC 3339).
    until: Option<String>,
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

fn row_view(r: RunRow) -> Value {
    json!({
        "id": r.id,
        "workflow": r.workflow,
        "version": r.version,
        "tenant": r.tenant,
        "priority": r.priority,
        "status": r.status,
        "started_at_ms": r.created_at_ms,
        "finished_at_ms": r.ended_at_ms,
        "error": r.error,
    })
}

/// Runs newest first, a page at a time; `status=failed_compensation` lists
/// the runs left for an operator to finish.
#[utoipa::path(get, path = "/v1/workflows/runs", tag = "workflows",
    params(
        ("workflow" = Option<String>, Query),
        ("status" = Option<String>, Query, description = "running, succeeded, failed, cancelled, failed_compensation"),
        ("tenant" = Option<String>, Query),
        ("since" = Option<String>, Query, description = "Started at or after (RFC 3339)"),
        ("until" = Option<String>, Query, description = "Started before (RFC 3339)"),
        ("limit" = Option<u32>, Query, description = "1 to 200, 50 by default"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
    ),
    responses(
        (status = 200, description = "`{data: [run], next_cursor}`, each run without its steps", body = Object),
        (status = 422, description = "`invalid_request`", body = Object),
        (status = 503, description = "`store_unavailable`", body = Object),
    ))]
pub(crate) async fn list_runs(
    State(s): State<RunsState>,
    Extension(caller): Extension<Caller>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<axum::Json<Value>, ApiError> {
    let limit = page_limit(q.limit)?;
    if let Some(status) = q.status.as_deref()
        && status != "running"
        && RunStatus::parse(status).is_none()
    {
        return Err(invalid(format!("status {status:?} is not a run status")));
    }
    let filter = RunFilter {
        tenant: caller.tenant_filter(q.tenant)?,
        workflow: q.workflow,
        status: q.status,
        since_ms: parse_time("since", q.since.as_deref())?,
        until_ms: parse_time("until", q.until.as_deref())?,
        after: q.cursor.as_deref().map(decode_cursor).transpose()?,
    };
    let rows = s.store.list_runs(&filter, limit).await?;
    let next_cursor = next_cursor(&rows, limit, |r| (r.created_at_ms, &r.id));
    let data: Vec<Value> = rows.into_iter().map(row_view).collect();
    Ok(axum::Json(
        json!({"data": data, "next_cursor": next_cursor}),
    ))
}
