//! Idempotency keys: a key claimed for the job its first request made, in
//! one statement, so that brokers racing on one key agree on the winner.

use async_trait::async_trait;

use super::{SqlStore, Writer};
use crate::{Idempotency, StoreError};

/// A key claimed this long ago whose job was never recorded belongs to a
/// request that failed and could not release it (the store was failing
/// too): the next request with the key takes it over. A request in flight
/// records its job well within this.
pub(super) const ABANDONED_CLAIM_MS: i64 = 15_000;

/// How often a claim is tried when each try finds the key held and then
/// let go: a key sent again and again as its requests are refused.
const CLAIM_TRIES: u32 = 3;

#[async_trait]
impl Idempotency for SqlStore {
    async fn claim_key(
        &self,
        key: &str,
        job_id: &str,
        now_ms: i64,
        fresh_since_ms: i64,
    ) -> Result<String, StoreError> {
        let _turn = self.turn(Writer::Request).await;
        for _ in 0..CLAIM_TRIES {
            // One statement, so two brokers racing on one key agree on the winner.
            let claimed: Option<String> = sqlx::query_scalar(
                "INSERT INTO idempotency (key, job_id, created_at) VALUES ($1, $2, $3)
                 ON CONFLICT (key) DO UPDATE SET job_id = excluded.job_id, created_at = excluded.created_at
                    WHERE idempotency.created_at < $4
                       OR (idempotency.created_at < $5
                           AND NOT EXISTS (SELECT 1 FROM jobs WHERE jobs.id = idempotency.job_id))
                 RETURNING job_id",
            )
            .bind(key)
            .bind(job_id)
            .bind(now_ms)
            .bind(fresh_since_ms)
            .bind(now_ms - ABANDONED_CLAIM_MS)
            .fetch_optional(self.pool())
            .await?;
            if let Some(id) = claimed {
                return Ok(id);
            }
            let holder = sqlx::query_scalar("SELECT job_id FROM idempotency WHERE key = $1")
                .bind(key)
                .fetch_optional(self.pool())
                .await?;
            if let Some(id) = holder {
                return Ok(id);
            }
            // The holder let the key go between the two statements (its
            // request was refused): the key is free to claim again.
        }
        Err(StoreError::Db(sqlx::Error::RowNotFound))
    }

    async fn release_key(&self, key: &str, job_id: &str) -> Result<(), StoreError> {
        let _turn = self.turn(Writer::Request).await;
        sqlx::query("DELETE FROM idempotency WHERE key = $1 AND job_id = $2")
            .bind(key)
            .bind(job_id)
            .execute(self.pool())
            .await?;
        Ok(())
    }
}
