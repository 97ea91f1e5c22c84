//! `GET /v1/usage`: the ledger summed by day, model and tenant, as JSON or
//! CSV; and `GET /v1/jobs/{id}/usage`: one job's lines.

use axum::Router;
use axum::extract::{Extension, Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Value, json};
use switchyard_core::auth::Caller;
use switchyard_store::ledger::{AttemptUsage, UsageFilter, UsageRow};

use crate::error::{ApiError, invalid};
use crate::extract::{ApiQuery, parse_time};
use crate::state::{ApiState, Records};

pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/v1/usage", get(usage))
        .route("/v1/jobs/{id}/usage", get(job_usage))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsageQuery {
    tenant: Option<String>,
    since: Option<String>,
    until: Option<String>,
    /// `json` (the default) or `csv`.
    format: Option<String>,
}

fn usd(micros: i64) -> f64 {
    micros as f64 / 1e6
}

fn row_json(r: &UsageRow) -> Value {
    json!({
        "day": r.day, "model": r.model, "tenant": r.tenant, "requests": r.requests,
        "prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
        "engine_ms": r.engine_ms, "cost_usd": usd(r.cost_micros), "cache_hits": r.cache_hits,
    })
}

const CSV_HEADER: &str =
    "day,model,tenant,requests,prompt_tokens,completion_tokens,engine_ms,cost_usd,cache_hits\n";

/// A CSV field: quoted when it holds a comma, a quote or a line break.
fn field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// Usage by day (UTC), model and tenant: what was charged, and the waste of
/// attempts that another attempt superseded.
#[utoipa::path(get, path = "/v1/usage", tag = "billing",
    params(
        ("tenant" = Option<String>, Query),
        ("since" = Option<String>, Query, description = "Recorded at or after (RFC 3339)"),
        ("until" = Option<String>, Query, description = "Recorded before (RFC 3339)"),
        ("format" = Option<String>, Query, description = "json (default) or csv (charged rows only)"),
    ),
    responses(
        (status = 200, description = "`{data: [{day, model, tenant, requests, prompt_tokens, completion_tokens, engine_ms, cost_usd, cache_hits}], waste: [...], total_cost_usd}`, or CSV", body = Object),
        (status = 422, description = "`invalid_request`", body = Object),
        (status = 503, description = "`store_unavailable`", body = Object),
    ))]
async fn usage(
    State(s): State<Records>,
    Extension(caller): Extension<Caller>,
    ApiQuery(q): ApiQuery<UsageQuery>,
) -> Result<Response, ApiError> {
    let filter = UsageFilter {
        tenant: caller.tenant_filter(q.tenant)?,
        since_ms: parse_time("since", q.since.as_deref())?,
        until_ms: parse_time("until", q.until.as_deref())?,
    };
    let report = s.store.usage_report(&filter).await?;
    match q.format.as_deref() {
        None | Some("json") => {
            let total: i64 = report.charged.iter().map(|r| r.cost_micros).sum();
            Ok(axum::Json(json!({
                "data": report.charged.iter().map(row_json).collect::<Vec<_>>(),
                "waste": report.waste.iter().map(row_json).collect::<Vec<_>>(),
                "total_cost_usd": usd(total),
            }))
            .into_response())
        }
        Some("csv") => {
            let mut csv = String::from(CSV_HEADER);
            for r in &report.charged {
                csv.push_str(&format!(
                    "{},{},{},{},{},{},{},{},{}\n",
                    r.day,
                    field(&r.model),
                    field(&r.tenant),
                    r.requests,
                    r.prompt_tokens,
                    r.completion_tokens,
                    r.engine_ms,
                    usd(r.cost_micros),
                    r.cache_hits
                ));
            }
            Ok(([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], csv).into_response())
        }
        Some(other) => Err(invalid(format!("format {other:?} must be json or csv"))),
    }
}

fn attempt_json(a: &AttemptUsage) -> Value {
    json!({
        "attempt": a.attempt, "node": a.node, "prompt_tokens": a.prompt_tokens,
        "completion_tokens": a.completion_tokens, "engine_ms": a.engine_ms,
        "cost_usd": usd(a.cost_micros), "cache_hit": a.cache_hit, "charged": a.charged,
    })
}

/// A job's ledger lines, one per attempt that reached an engine: the one
/// charged, and any waste.
#[utoipa::path(get, path = "/v1/jobs/{id}/usage", tag = "billing",
    responses(
        (status = 200, description = "`{data: [{attempt, node, prompt_tokens, completion_tokens, engine_ms, cost_usd, cache_hit, charged}], cost_usd}`: `cost_usd` is what the job was charged", body = Object),
        (status = 404, description = "`not_found`", body = Object),
        (status = 503, description = "`store_unavailable`", body = Object),
    ))]
async fn job_usage(
    State(s): State<Records>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    s.job(&caller, &id).await?;
    let lines = s.store.job_usage(&id).await?;
    let charged: i64 = lines
        .iter()
        .filter(|a| a.charged)
        .map(|a| a.cost_micros)
        .sum();
    Ok(axum::Json(json!({
        "data": lines.iter().map(attempt_json).collect::<Vec<_>>(),
        "cost_usd": usd(charged),
    })))
}
