//! [`AccessStore`] on the embedded SQLite database.

use async_trait::async_trait;
use sqlx::Row;
use sqlx::any::AnyRow;
use switchyard_runtime::RateLimits;

use super::{SqlStore, Writer};
use crate::access::{AccessStore, KeyRecord, TenantRecord};
use crate::{StoreError, corrupt};

fn limits_json(limits: Option<&RateLimits>) -> Option<String> {
    limits.and_then(|l| serde_json::to_string(l).ok())
}

fn read_limits(id: &str, text: Option<String>) -> Result<Option<RateLimits>, StoreError> {
    text.map(|t| serde_json::from_str(&t).map_err(|e| corrupt(id.to_owned())(e.to_string())))
        .transpose()
}

fn key(row: &AnyRow) -> Result<KeyRecord, StoreError> {
    let id: String = row.try_get("id")?;
    let limits = read_limits(&id, row.try_get("limits")?)?;
    Ok(KeyRecord {
        tenant: row.try_get("tenant")?,
        role: row.try_get("role")?,
        name: row.try_get("name")?,
        digest: row.try_get("digest")?,
        limits,
        created_at_ms: row.try_get("created_at")?,
        expires_at_ms: row.try_get("expires_at")?,
        revoked_at_ms: row.try_get("revoked_at")?,
        id,
    })
}

#[async_trait]
impl AccessStore for SqlStore {
    async fn insert_key(&self, k: &KeyRecord) -> Result<(), StoreError> {
        let _turn = self.turn(Writer::Request).await;
        sqlx::query(
            "INSERT INTO api_keys
                (id, tenant, role, name, digest, limits, created_at, expires_at, revoked_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&k.id)
        .bind(&k.tenant)
        .bind(&k.role)
        .bind(&k.name)
        .bind(&k.digest)
        .bind(limits_json(k.limits.as_ref()))
        .bind(k.created_at_ms)
        .bind(k.expires_at_ms)
        .bind(k.revoked_at_ms)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn get_key(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        sqlx::query("SELECT * FROM api_keys WHERE id = $1")
            .bind(id)
            .fetch_optional(self.pool())
            .await?
            .as_ref()
            .map(key)
            .transpose()
    }

    async fn list_keys(&self, tenant: Option<&str>) -> Result<Vec<KeyRecord>, StoreError> {
        sqlx::query(
            "SELECT * FROM api_keys WHERE $1 IS NULL OR tenant = $1 ORDER BY created_at, id",
        )
        .bind(tenant)
        .fetch_all(self.pool())
        .await?
        .iter()
        .map(key)
        .collect()
    }

    async fn revoke_key(&self, id: &str, at_ms: i64) -> Result<Option<KeyRecord>, StoreError> {
        let _turn = self.turn(Writer::Request).await;
        sqlx::query(
            "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1 RETURNING *",
        )
        .bind(id)
        .bind(at_ms)
        .fetch_optional(self.pool())
        .await?
        .as_ref()
        .map(key)
        .transpose()
    }

    async fn insert_tenant(&self, t: &TenantRecord) -> Result<bool, StoreError> {
        let _turn = self.turn(Writer::Request).await;
        let made = sqlx::query(
            "INSERT INTO tenants (name, limits, created_at) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(&t.name)
        .bind(limits_json(t.limits.as_ref()))
        .bind(t.created_at_ms)
        .execute(self.pool())
        .await?;
        Ok(made.rows_affected() > 0)
    }

    async fn set_tenant_limits(
        &self,
        name: &str,
        limits: Option<&RateLimits>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let _turn = self.turn(Writer::Request).await;
        sqlx::query(
            "INSERT INTO tenants (name, limits, created_at) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO UPDATE SET limits = excluded.limits",
        )
        .bind(name)
        .bind(limits_json(limits))
        .bind(now_ms)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn list_tenants(&self) -> Result<Vec<TenantRecord>, StoreError> {
        sqlx::query("SELECT name, limits, created_at FROM tenants ORDER BY name")
            .fetch_all(self.pool())
            .await?
            .iter()
            .map(|row| {
                let name: String = row.try_get("name")?;
                Ok(TenantRecord {
                    limits: read_limits(&name, row.try_get("limits")?)?,
                    created_at_ms: row.try_get("created_at")?,
                    name,
                })
            })
            .collect()
    }
}
