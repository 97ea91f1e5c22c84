//! Tenants and API keys: what the admin API does, and the same operations
//! for the `switchyard keys` and `switchyard tenants` commands, which work
//! on the store directly (the first admin key has no API to come from).

use serde_json::{Value, json};
use switchyard_runtime::{RateLimits, Tenants};
use switchyard_schemas::{now_ms, subjects};
use switchyard_store::view::rfc3339;
use switchyard_store::{KeyRecord, StoreError, TenantRecord};

use crate::auth::{Auth, KeyError, KeySpec};
use crate::error::{Coded, ErrorCode};

/// Why an admin operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    Invalid(String),
    #[error("no {0}")]
    NotFound(String),
    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("job store: {0}")]
    Store(#[from] StoreError),
}

impl Coded for AdminError {
    fn code(&self) -> ErrorCode {
        match self {
            AdminError::Invalid(_) | AdminError::Key(KeyError::Invalid(_)) => {
                ErrorCode::InvalidRequest
            }
            AdminError::NotFound(_) => ErrorCode::NotFound,
            AdminError::AlreadyExists(_) => ErrorCode::AlreadyExists,
            AdminError::Key(KeyError::Random(_)) => ErrorCode::BrokerUnavailable,
            AdminError::Key(KeyError::Store(_)) | AdminError::Store(_) => {
                ErrorCode::StoreUnavailable
            }
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
pub async fn tenants(auth: &Auth, configured: &Tenants) -> Result<Vec<Value>, AdminError> {
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
) -> Result<Value, AdminError> {
    if !subjects::is_valid_id(name) {
        return Err(AdminError::Invalid(
            "a tenant name is 1 to 64 of A-Z a-z 0-9 _ -".into(),
        ));
    }
    let record = TenantRecord {
        name: name.to_owned(),
        limits,
        created_at_ms: now_ms(),
    };
    if auth.tenant_exists(name).await? || !auth.store().insert_tenant(&record).await? {
        return Err(AdminError::AlreadyExists(format!("tenant {name:?}")));
    }
    Ok(tenant_json(name, limits, "api"))
}

/// Sets the limits of an existing tenant; they replace the configuration's
/// on every broker within seconds.
pub async fn limit(auth: &Auth, name: &str, limits: Option<RateLimits>) -> Result<(), AdminError> {
    if !auth.tenant_exists(name).await? {
        return Err(AdminError::NotFound(format!("tenant {name:?}")));
    }
    auth.store()
        .set_tenant_limits(name, limits.as_ref(), now_ms())
        .await?;
    Ok(())
}

/// Makes a key: the answer holds its token, shown only this once.
pub async fn mint(auth: &Auth, spec: KeySpec) -> Result<Value, AdminError> {
    let new = auth.mint(spec, now_ms()).await?;
    let mut body = key_json(&new.record);
    body["key"] = Value::String(new.token);
    Ok(body)
}

/// Revokes a key at once, on every broker that shares the store.
pub async fn revoke(auth: &Auth, id: &str) -> Result<Value, AdminError> {
    let key = auth
        .store()
        .revoke_key(id, now_ms())
        .await?
        .ok_or_else(|| AdminError::NotFound(format!("key {id:?}")))?;
    Ok(key_json(&key))
}

pub async fn keys(auth: &Auth, tenant: Option<&str>) -> Result<Vec<Value>, AdminError> {
    Ok(auth
        .store()
        .list_keys(tenant)
        .await?
        .iter()
        .map(key_json)
        .collect())
}
