//! How jobs ended, minute by minute: the console's outcome chart, and a
//! figure scripts can poll. Not under `/v1/jobs/`, where a client's own job
//! id could be `summary`.

use std::collections::BTreeMap;

use axum::extract::{Extension, State};
use serde_json::{Value, json};
use switchyard_core::auth::Caller;
use switchyard_schemas::now_ms;
use switchyard_store::view::rfc3339;

use crate::error::{ApiError, invalid};
use crate::extract::{ApiQuery, parse_time};
use crate::state::Records;

/// The furthest back a summary reaches: a day of minutes.
const MOST_MS: i64 = 24 * 3600 * 1000;
const DEFAULT_MS: i64 = 3600 * 1000;

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SummaryQuery {
    /// Ended at or after this time (RFC 3339); an hour ago by default.
    since: Option<String>,
    tenant: Option<String>,
}

/// Jobs that ended per minute and status, over the last hour by default.
#[utoipa::path(get, path = "/v1/summary", tag = "jobs",
    params(
        ("since" = Option<String>, Query, description = "Ended at or after (RFC 3339), at most a day ago; an hour ago by default"),
        ("tenant" = Option<String>, Query),
    ),
    responses(
        (status = 200, description = "`{since, minutes: [{minute, succeeded, failed, …}], totals: {status: jobs}}`: only minutes in which a job ended", body = Object),
        (status = 422, description = "`invalid_request`", body = Object),
        (status = 503, description = "`store_unavailable`", body = Object),
    ))]
pub(crate) async fn summary(
    State(s): State<Records>,
    Extension(caller): Extension<Caller>,
    ApiQuery(q): ApiQuery<SummaryQuery>,
) -> Result<axum::Json<Value>, ApiError> {
    let now = now_ms();
    let since = parse_time("since", q.since.as_deref())?.unwrap_or(now - DEFAULT_MS);
    if since < now - MOST_MS {
        return Err(invalid("since may be at most a day ago"));
    }
    let tenant = caller.tenant_filter(q.tenant)?;
    let ended = s.store.ended_per_minute(since, tenant.as_deref()).await?;
    let mut minutes: BTreeMap<i64, serde_json::Map<String, Value>> = BTreeMap::new();
    let mut totals: BTreeMap<String, u64> = BTreeMap::new();
    for e in ended {
        *totals.entry(e.status.clone()).or_default() += e.jobs;
        minutes
            .entry(e.minute_ms)
            .or_insert_with(|| {
                let mut m = serde_json::Map::new();
                m.insert("minute".into(), rfc3339(e.minute_ms).into());
                m
            })
            .insert(e.status, e.jobs.into());
    }
    Ok(axum::Json(json!({
        "since": rfc3339(since),
        "minutes": minutes.into_values().collect::<Vec<_>>(),
        "totals": totals,
    })))
}
