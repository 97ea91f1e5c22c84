//! The admin API: tenants and API keys.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{post, put};
use serde::Deserialize;
use serde_json::{Value, json};
use switchyard_core::admin;
use switchyard_core::auth::{KeySpec, Role};
use switchyard_runtime::RateLimits;

use crate::error::{ApiError, invalid};
use crate::extract::{ApiJson, ApiQuery, parse_time};
use crate::state::{AdminState, ApiState};

pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/v1/admin/tenants", post(create_tenant).get(list_tenants))
        .route("/v1/admin/tenants/{name}/limits", put(set_limits))
        .route("/v1/admin/keys", post(create_key).get(list_keys))
        .route("/v1/admin/keys/{id}/revoke", post(revoke_key))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTenant {
    name: String,
    limits: Option<RateLimits>,
}

/// Make a tenant.
#[utoipa::path(post, path = "/v1/admin/tenants", tag = "admin",
    request_body(content = Object, description = "`{name, limits?}`; limits as in the configuration"),
    responses(
        (status = 201, description = "`{name, limits, source: api}`", body = Object),
        (status = 409, description = "`already_exists`", body = Object),
        (status = 422, description = "`invalid_request`", body = Object),
    ))]
async fn create_tenant(
    State(s): State<AdminState>,
    ApiJson(t): ApiJson<NewTenant>,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    let made = admin::create(&s.auth, &t.name, t.limits).await?;
    Ok((StatusCode::CREATED, axum::Json(made)))
}

/// Every tenant with the limits in force.
#[utoipa::path(get, path = "/v1/admin/tenants", tag = "admin",
    responses((status = 200, description = "`{data: [{name, limits, source}]}`", body = Object)))]
async fn list_tenants(State(s): State<AdminState>) -> Result<axum::Json<Value>, ApiError> {
    let data = admin::tenants(&s.auth, &s.tenants).await?;
    Ok(axum::Json(json!({ "data": data })))
}

/// Set a tenant's rate limits (`null` goes back to the configuration's).
#[utoipa::path(put, path = "/v1/admin/tenants/{name}/limits", tag = "admin",
    request_body(content = Object, description = "RateLimits, or null"),
    responses(
        (status = 200, description = "`{name, limits}`", body = Object),
        (status = 404, description = "`not_found`", body = Object),
        (status = 422, description = "`invalid_request`", body = Object),
    ))]
async fn set_limits(
    State(s): State<AdminState>,
    Path(name): Path<String>,
    ApiJson(limits): ApiJson<Option<RateLimits>>,
) -> Result<axum::Json<Value>, ApiError> {
    admin::limit(&s.auth, &name, limits).await?;
    Ok(axum::Json(json!({"name": name, "limits": limits})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKey {
    role: String,
    tenant: Option<String>,
    #[serde(default)]
    name: String,
    limits: Option<RateLimits>,
    /// RFC 3339.
    expires_at: Option<String>,
}

/// Make an API key; its token is in this answer only.
#[utoipa::path(post, path = "/v1/admin/keys", tag = "admin",
    request_body(content = Object, description = "`{role, tenant?, name?, limits?, expires_at?}`"),
    responses(
        (status = 201, description = "The key, with `key`: `sy_<id>_<secret>`", body = Object),
        (status = 422, description = "`invalid_request`", body = Object),
    ))]
async fn create_key(
    State(s): State<AdminState>,
    ApiJson(k): ApiJson<NewKey>,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    let role = Role::parse(&k.role)
        .ok_or_else(|| invalid("role must be admin, operator, submitter or reader"))?;
    let spec = KeySpec {
        tenant: k.tenant,
        role,
        name: k.name,
        limits: k.limits,
        expires_at_ms: parse_time("expires_at", k.expires_at.as_deref())?,
    };
    Ok((
        StatusCode::CREATED,
        axum::Json(admin::mint(&s.auth, spec).await?),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysQuery {
    tenant: Option<String>,
}

/// API keys, oldest first (never their secrets).
#[utoipa::path(get, path = "/v1/admin/keys", tag = "admin",
    params(("tenant" = Option<String>, Query)),
    responses((status = 200, description = "`{data: [key]}`", body = Object)))]
async fn list_keys(
    State(s): State<AdminState>,
    ApiQuery(q): ApiQuery<KeysQuery>,
) -> Result<axum::Json<Value>, ApiError> {
    let data = admin::keys(&s.auth, q.tenant.as_deref()).await?;
    Ok(axum::Json(json!({ "data": data })))
}

/// Revoke an API key.
#[utoipa::path(post, path = "/v1/admin/keys/{id}/revoke", tag = "admin",
    responses(
        (status = 200, description = "The key, with `revoked_at`", body = Object),
        (status = 404, description = "`not_found`", body = Object),
    ))]
async fn revoke_key(
    State(s): State<AdminState>,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    Ok(axum::Json(admin::revoke(&s.auth, &id).await?))
}
