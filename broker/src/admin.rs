//! Tenants and API keys: the admin API, and the same operations for the
//! `switchyard keys` and `switchyard tenants` commands, which work on the
//! store directly (the first admin key has no API to come from).

use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{post, put};
use serde::Deserialize;
use serde_json::{Value, json};
use switchyard_runtime::{RateLimits, Tenants};
use switchyard_schemas::{now_ms, subjects};

use crate::api::{ApiError, ApiState, invalid, parse_time};
use crate::auth::{Auth, KeyError, KeySpec, Role};
use switchyard_store::view::rfc3339;
use switchyard_store::{KeyRecord, TenantRecord};

pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/v1/admin/tenants", post(create_tenant).get(list_tenants))
        .route("/v1/admin/tenants/{name}/limits", put(set_limits))
        .route("/v1/admin/keys", post(create_key).get(list_keys))
        .route("/v1/admin/keys/{id}/revoke", post(revoke_key))
}

impl From<KeyError> for ApiError {
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::Invalid(message) => invalid(message),
            KeyError::Random(e) => ApiError::Unavailable(e.to_string()),
            KeyError::Store(e) => ApiError::Store(e),
        }
    }
}

/// A key as the API shows it: never its digest.
pub fn key_json(k: &KeyRecord) -> Value {
    json!({
        "id": k.id,
        "tenant": k.tenant,
        "role": k.role,
        "name": k.name,
        "limits": k.limits,
        "created_at": rfc3339(k.created_at_ms),
        "expires_at": k.expires_at_ms.map(rfc3339),
        "revoked_at": k.revoked_at_ms.map(rfc3339),
    })
}

fn tenant_json(name: &str, limits: Option<RateLimits>, source: &str) -> Value {
    json!({"name": name, "limits": limits, "source": source})
}

/// Every tenant: the configuration's, then those the admin API made, each
/// with the limits in force.
pub async fn tenants(auth: &Auth, configured: &Tenants) -> Result<Vec<Value>, ApiError> {
    let stored = auth.store().list_tenants().await?;
    let mut out: Vec<Value> = Vec::new();
    let mut names: Vec<&str> = configured.iter().map(|t| t.name.as_str()).collect();
    names.sort_unstable();
    for name in names {
        let row = stored.iter().find(|t| t.name == name);
        let limits = row
            .and_then(|t| t.limits)
            .or_else(|| configured.get(name).and_then(|t| t.limits));
        out.push(tenant_json(name, limits, "config"));
    }
    for t in stored.iter().filter(|t| configured.get(&t.name).is_none()) {
        out.push(tenant_json(&t.name, t.limits, "api"));
    }
    Ok(out)
}

/// Makes a tenant; refused when one of that name exists.
pub async fn create(
    auth: &Auth,
    name: &str,
    limits: Option<RateLimits>,
) -> Result<Value, ApiError> {
    if !subjects::is_valid_id(name) {
        return Err(invalid("a tenant name is 1 to 64 of A-Z a-z 0-9 _ -"));
    }
    let record = TenantRecord {
        name: name.to_owned(),
        limits,
        created_at_ms: now_ms(),
    };
    if auth.tenant_exists(name).await? || !auth.store().insert_tenant(&record).await? {
        return Err(ApiError::AlreadyExists(format!("tenant {name:?}")));
    }
    Ok(tenant_json(name, limits, "api"))
}

/// Sets the limits of an existing tenant; they replace the configuration's
/// on every broker within seconds.
pub async fn limit(auth: &Auth, name: &str, limits: Option<RateLimits>) -> Result<(), ApiError> {
    if !auth.tenant_exists(name).await? {
        return Err(ApiError::NotFound(name.to_owned()));
    }
    auth.store()
        .set_tenant_limits(name, limits.as_ref(), now_ms())
        .await?;
    Ok(())
}

/// Makes a key: the answer holds its token, shown only this once.
pub async fn mint(auth: &Auth, spec: KeySpec) -> Result<Value, ApiError> {
    let new = auth.mint(spec, now_ms()).await?;
    let mut body = key_json(&new.record);
    body["key"] = Value::String(new.token);
    Ok(body)
}

/// Revokes a key at once, on every broker that shares the store.
pub async fn revoke(auth: &Auth, id: &str) -> Result<Value, ApiError> {
    let key = auth
        .store()
        .revoke_key(id, now_ms())
        .await?
        .ok_or_else(|| ApiError::NotFound(id.to_owned()))?;
    Ok(key_json(&key))
}

pub async fn keys(auth: &Auth, tenant: Option<&str>) -> Result<Vec<Value>, ApiError> {
    Ok(auth
        .store()
        .list_keys(tenant)
        .await?
        .iter()
        .map(key_json)
        .collect())
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
    State(s): State<ApiState>,
    body: Result<axum::Json<NewTenant>, JsonRejection>,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    let axum::Json(t) = body.map_err(|e| invalid(e.body_text()))?;
    let made = create(&s.auth, &t.name, t.limits).await?;
    Ok((StatusCode::CREATED, axum::Json(made)))
}

/// Every tenant with the limits in force.
#[utoipa::path(get, path = "/v1/admin/tenants", tag = "admin",
    responses((status = 200, description = "`{data: [{name, limits, source}]}`", body = Object)))]
async fn list_tenants(State(s): State<ApiState>) -> Result<axum::Json<Value>, ApiError> {
    let data = tenants(&s.auth, &s.tenants).await?;
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
    State(s): State<ApiState>,
    Path(name): Path<String>,
    body: Result<axum::Json<Option<RateLimits>>, JsonRejection>,
) -> Result<axum::Json<Value>, ApiError> {
    let axum::Json(limits) = body.map_err(|e| invalid(e.body_text()))?;
    limit(&s.auth, &name, limits).await?;
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
    State(s): State<ApiState>,
    body: Result<axum::Json<NewKey>, JsonRejection>,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    let axum::Json(k) = body.map_err(|e| invalid(e.body_text()))?;
    let role = Role::parse(&k.role)
        .ok_or_else(|| invalid("role must be admin, operator, submitter or reader"))?;
    let spec = KeySpec {
        tenant: k.tenant,
        role,
        name: k.name,
        limits: k.limits,
        expires_at_ms: parse_time("expires_at", k.expires_at.as_deref())?,
    };
    Ok((StatusCode::CREATED, axum::Json(mint(&s.auth, spec).await?)))
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
    State(s): State<ApiState>,
    query: Result<Query<KeysQuery>, QueryRejection>,
) -> Result<axum::Json<Value>, ApiError> {
    let Query(q) = query.map_err(|e| invalid(e.body_text()))?;
    let data = keys(&s.auth, q.tenant.as_deref()).await?;
    Ok(axum::Json(json!({ "data": data })))
}

/// Revoke an API key.
#[utoipa::path(post, path = "/v1/admin/keys/{id}/revoke", tag = "admin",
    responses(
        (status = 200, description = "The key, with `revoked_at`", body = Object),
        (status = 404, description = "`not_found`", body = Object),
    ))]
async fn revoke_key(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    Ok(axum::Json(revoke(&s.auth, &id).await?))
}

/// The key checker for a command run beside the broker: the same store and
/// pepper.
pub async fn open(
    cfg: &crate::BrokerConfig,
    tenants: &Tenants,
) -> Result<Arc<Auth>, crate::BrokerError> {
    let store = Arc::new(switchyard_store::SqlStore::open(&cfg.database_url).await?);
    let pepper = cfg.auth.pepper()?;
    Ok(Arc::new(Auth::new(pepper, store, tenants)))
}
