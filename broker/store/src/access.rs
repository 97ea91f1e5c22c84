//! Who may call: API keys and the tenants the admin API made.

use async_trait::async_trait;
use switchyard_runtime::RateLimits;

use crate::StoreError;

/// A stored API key: never its secret, only the secret's HMAC.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyRecord {
    /// The public part of `sy_<id>_<secret>`.
    pub id: String,
    /// None for a key that spans tenants.
    pub tenant: Option<String>,
    pub role: String,
    pub name: String,
    pub digest: Vec<u8>,
    /// The key's own limits, on top of its tenant's.
    pub limits: Option<RateLimits>,
    pub created_at_ms: i64,
    pub expires_at_ms: Option<i64>,
    pub revoked_at_ms: Option<i64>,
}

/// A tenant made through the admin API.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantRecord {
    pub name: String,
    /// Replaces the configuration's limits when set.
    pub limits: Option<RateLimits>,
    pub created_at_ms: i64,
}

#[async_trait]
pub trait AccessStore: Send + Sync {
    async fn insert_key(&self, key: &KeyRecord) -> Result<(), StoreError>;
    async fn get_key(&self, id: &str) -> Result<Option<KeyRecord>, StoreError>;
    /// Oldest first; only `tenant`'s when given.
    async fn list_keys(&self, tenant: Option<&str>) -> Result<Vec<KeyRecord>, StoreError>;
    /// Revokes the key unless it already was; the key as it now stands, or
    /// None when there is no such key.
    async fn revoke_key(&self, id: &str, at_ms: i64) -> Result<Option<KeyRecord>, StoreError>;

    /// Makes the tenant, or leaves an existing one as it is; true when made.
    async fn insert_tenant(&self, tenant: &TenantRecord) -> Result<bool, StoreError>;
    /// Sets a tenant's limits, making its row if it has none (a tenant of
    /// the configuration).
    async fn set_tenant_limits(
        &self,
        name: &str,
        limits: Option<&RateLimits>,
        now_ms: i64,
    ) -> Result<(), StoreError>;
    async fn list_tenants(&self) -> Result<Vec<TenantRecord>, StoreError>;
}
