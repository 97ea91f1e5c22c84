//! Listing jobs, a page at a time, and the query values it reads.

use crate::error::{ApiError, invalid};
use crate::extract::{ApiQuery, parse_time};
use crate::state::Records;
use axum::extract::{Extension, State};
use base64::Engine as _;
use serde_json::{Value, json};
use switchyard_core::auth::Caller;
use switchyard_store::view::JobView;
use switchyard_store::{ListFilter, Status};

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    status: Option<String>,
    model: Option<String>,
    priority: Option<String>,
    /// The node of the job's latest attempt.
    node: Option<String>,
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
        ("priority" = Option<String>, Query, description = "critical, high, normal, batch"),
        ("node" = Option<String>, Query, description = "The node of the job's latest attempt"),
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
pub(crate) async fn list_jobs(
    State(s): State<Records>,
    Extension(caller): Extension<Caller>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<axum::Json<Value>, ApiError> {
    let limit = page_limit(q.limit)?;
    let status = match q.status.as_deref() {
        None => None,
        Some(name) => Some(
            Status::parse(name)
                .ok_or_else(|| invalid(format!("status {name:?} is not a job status")))?,
        ),
    };
    if let Some(p) = q.priority.as_deref() {
        p.parse::<switchyard_schemas::Priority>()
            .map_err(|e| invalid(e.to_string()))?;
    }
    let filter = ListFilter {
        status,
        model: q.model,
        priority: q.priority,
        node: q.node,
        tenant: caller.tenant_filter(q.tenant)?,
        since_ms: parse_time("since", q.since.as_deref())?,
        until_ms: parse_time("until", q.until.as_deref())?,
        after: q.cursor.as_deref().map(decode_cursor).transpose()?,
    };
    let records = s.store.list(&filter, limit).await?;
    let next_cursor = next_cursor(&records, limit, |r| (r.created_at_ms, &r.id));
    let data: Vec<JobView> = records.into_iter().map(JobView::from).collect();
    Ok(axum::Json(
        json!({"data": data, "next_cursor": next_cursor}),
    ))
}

/// A list's `limit`: 1 to 200, 50 when not given.
pub(crate) fn page_limit(limit: Option<u32>) -> Result<u32, ApiError> {
    let limit = limit.unwrap_or(LIST_LIMIT_DEFAULT);
    match (1..=LIST_LIMIT_MAX).contains(&limit) {
        true => Ok(limit),
        false => Err(invalid(format!(
            "limit must be between 1 and {LIST_LIMIT_MAX}"
        ))),
    }
}

/// Where the next page starts, when this one is full: after its last row
/// (creation time and id).
pub(crate) fn next_cursor<T>(
    rows: &[T],
    limit: u32,
    key: impl Fn(&T) -> (i64, &str),
) -> Option<String> {
    let last = rows.last().filter(|_| rows.len() == limit as usize)?;
    let (ms, id) = key(last);
    Some(encode_cursor(ms, id))
}

/// A cursor is opaque to clients: the last row's creation time and id.
fn encode_cursor(created_at_ms: i64, id: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{created_at_ms}:{id}"))
}

pub(crate) fn decode_cursor(cursor: &str) -> Result<(i64, String), ApiError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_round_trips_and_a_forged_one_is_refused() {
        let cursor = encode_cursor(1_795_355_100_000, "0193-abc:def");
        assert_eq!(
            decode_cursor(&cursor).unwrap(),
            (1_795_355_100_000, "0193-abc:def".to_owned())
        );
        assert!(decode_cursor("not base64!").is_err());
        let no_time = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("abc");
        assert!(decode_cursor(&no_time).is_err());
    }
}
