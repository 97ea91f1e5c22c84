//! The webhook outbox: deliveries leased, attempted and retried, and the
//! retention that drops old outputs and ended deliveries.

use async_trait::async_trait;
use sqlx::any::AnyRow;
use sqlx::{Any, Executor, Row};

use super::{SqlStore, Writer, int, opt_int};
use crate::outbox::{Attempt, Delivery, DeliveryRecord, DisabledEndpoint, Next, WebhookOutbox};
use crate::runs::NewDelivery;
use crate::{Retention, StoreError};

/// Queues a webhook event, held at once if its endpoint is disabled; its
/// id makes a repeat a no-op.
pub(crate) async fn insert_delivery<'e, E: Executor<'e, Database = Any>>(
    db: E,
    d: &NewDelivery,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO webhook_deliveries (id, job_id, tenant, url, event, payload, state, created_at, next_at)
         VALUES ($1, $2, $3, $4, $5, $6,
            CASE WHEN EXISTS (SELECT 1 FROM webhook_disabled WHERE url = $4) THEN 'disabled' ELSE 'pending' END,
            $7, $7)
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(&d.id)
    .bind(&d.subject_id)
    .bind(&d.tenant)
    .bind(&d.url)
    .bind(&d.event)
    .bind(&d.payload)
    .bind(d.at_ms)
    .execute(db)
    .await?;
    Ok(())
}

fn attempt(row: &AnyRow) -> Result<Attempt, sqlx::Error> {
    Ok(Attempt {
        delivery_id: row.try_get("delivery_id")?,
        number: int(row, "number")?,
        at_ms: row.try_get("at")?,
        duration_ms: row.try_get("duration_ms")?,
        status: opt_int(row, "status")?,
        error: row.try_get("error")?,
    })
}

#[async_trait]
impl WebhookOutbox for SqlStore {
    async fn claim_deliveries(
        &self,
        now_ms: i64,
        lease_until_ms: i64,
        limit: u32,
        per_tenant: u32,
    ) -> Result<Vec<Delivery>, StoreError> {
        // A job's `queued` event waits for the queue's confirmation: a job
        // the queue refused is discarded, and its client was told so. A
        // run's events have no job row.
        let rows = sqlx::query(
            "UPDATE webhook_deliveries SET lease_until = $2
             WHERE id IN (
                SELECT id FROM (
                  SELECT d.id, d.next_at,
                    ROW_NUMBER() OVER (PARTITION BY d.tenant ORDER BY d.next_at) AS nth
                  FROM webhook_deliveries d LEFT JOIN jobs j ON j.id = d.job_id
                  WHERE d.state = 'pending' AND d.next_at <= $1 AND d.lease_until <= $1
                    AND (j.id IS NULL OR j.enqueued_at IS NOT NULL)) due
                WHERE nth <= $4
                ORDER BY next_at LIMIT $3)
               AND lease_until <= $1
             RETURNING id, job_id, tenant, url, event, payload, attempts",
        )
        .bind(now_ms)
        .bind(lease_until_ms)
        .bind(i64::from(limit))
        .bind(i64::from(per_tenant))
        .fetch_all(self.pool())
        .await?;
        let delivery = |row: &AnyRow| -> Result<Delivery, sqlx::Error> {
            Ok(Delivery {
                id: row.try_get("id")?,
                job_id: row.try_get("job_id")?,
                tenant: row.try_get("tenant")?,
                url: row.try_get("url")?,
                event: row.try_get("event")?,
                payload: row.try_get("payload")?,
                attempts: int(row, "attempts")?,
            })
        };
        Ok(rows.iter().map(delivery).collect::<Result<_, _>>()?)
    }

    async fn record_attempt(&self, a: &Attempt, next: Next) -> Result<(), StoreError> {
        let (state, next_at) = match next {
            Next::Delivered => ("delivered", 0),
            Next::Retry { at_ms } => ("pending", at_ms),
            Next::Failed => ("failed", 0),
            Next::Disabled => ("disabled", 0),
        };
        let (mut tx, _turn) = self.begin_write(Writer::Background).await?;
        sqlx::query(
            "INSERT INTO webhook_attempts (delivery_id, number, at, duration_ms, status, error)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        )
        .bind(&a.delivery_id)
        .bind(i64::from(a.number))
        .bind(a.at_ms)
        .bind(a.duration_ms)
        .bind(a.status.map(i64::from))
        .bind(&a.error)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE webhook_deliveries SET attempts = CASE WHEN attempts > $2 THEN attempts ELSE $2 END, state = $3, next_at = $4,
                lease_until = 0
             WHERE id = $1 AND state = 'pending'",
        )
        .bind(&a.delivery_id)
        .bind(i64::from(a.number))
        .bind(state)
        .bind(next_at)
        .execute(&mut *tx)
        .await?;
        if next == Next::Disabled {
            sqlx::query(
                "INSERT INTO webhook_disabled (url, at, reason)
                 SELECT url, $2, 'answered 410 Gone' FROM webhook_deliveries WHERE id = $1
                 ON CONFLICT (url) DO NOTHING",
            )
            .bind(&a.delivery_id)
            .bind(a.at_ms)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE webhook_deliveries SET state = 'disabled'
                 WHERE state = 'pending'
                   AND url = (SELECT url FROM webhook_deliveries WHERE id = $1)",
            )
            .bind(&a.delivery_id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn deliveries(&self, job_id: &str) -> Result<Vec<DeliveryRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, url, event, state, created_at, next_at FROM webhook_deliveries
             WHERE job_id = $1 ORDER BY created_at, id",
        )
        .bind(job_id)
        .fetch_all(self.pool())
        .await?;
        let mut attempts: Vec<Attempt> = sqlx::query(
            "SELECT a.* FROM webhook_attempts a JOIN webhook_deliveries d ON d.id = a.delivery_id
             WHERE d.job_id = $1 ORDER BY a.delivery_id, a.number",
        )
        .bind(job_id)
        .fetch_all(self.pool())
        .await?
        .iter()
        .map(attempt)
        .collect::<Result<_, _>>()?;
        rows.iter()
            .map(|row| {
                let id: String = row.try_get("id")?;
                let state: String = row.try_get("state")?;
                let next_at: i64 = row.try_get("next_at")?;
                let (mine, rest) = attempts.drain(..).partition(|a| a.delivery_id == id);
                attempts = rest;
                Ok(DeliveryRecord {
                    url: row.try_get("url")?,
                    event: row.try_get("event")?,
                    created_at_ms: row.try_get("created_at")?,
                    next_at_ms: (state == "pending").then_some(next_at),
                    state,
                    attempts: mine,
                    id,
                })
            })
            .collect()
    }

    async fn disabled_endpoints(&self) -> Result<Vec<DisabledEndpoint>, StoreError> {
        let rows = sqlx::query("SELECT url, at, reason FROM webhook_disabled ORDER BY at")
            .fetch_all(self.pool())
            .await?;
        rows.iter()
            .map(|row| {
                Ok(DisabledEndpoint {
                    url: row.try_get("url")?,
                    at_ms: row.try_get("at")?,
                    reason: row.try_get("reason")?,
                })
            })
            .collect()
    }

    async fn enable_endpoint(&self, url: &str, now_ms: i64) -> Result<Option<u64>, StoreError> {
        let (mut tx, _turn) = self.begin_write(Writer::Request).await?;
        let was = sqlx::query("DELETE FROM webhook_disabled WHERE url = $1")
            .bind(url)
            .execute(&mut *tx)
            .await?;
        if was.rows_affected() == 0 {
            return Ok(None);
        }
        let resumed = sqlx::query(
            "UPDATE webhook_deliveries SET state = 'pending', next_at = $2
             WHERE url = $1 AND state = 'disabled'",
        )
        .bind(url)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(resumed.rows_affected()))
    }
}

#[async_trait]
impl Retention for SqlStore {
    async fn forget(&self, before_ms: i64, limit: u32) -> Result<u64, StoreError> {
        let (mut tx, _turn) = self.begin_write(Writer::Background).await?;
        let outputs = sqlx::query(
            "UPDATE jobs SET output = NULL, output_expired = 1
             WHERE id IN (SELECT id FROM jobs
                WHERE output IS NOT NULL AND finished_at < $1 LIMIT $2)",
        )
        .bind(before_ms)
        .bind(i64::from(limit))
        .execute(&mut *tx)
        .await?;
        let ended = "SELECT id FROM webhook_deliveries
             WHERE state != 'pending' AND created_at < $1 LIMIT $2";
        sqlx::query(&format!(
            "DELETE FROM webhook_attempts WHERE delivery_id IN ({ended})"
        ))
        .bind(before_ms)
        .bind(i64::from(limit))
        .execute(&mut *tx)
        .await?;
        let events = sqlx::query(&format!(
            "DELETE FROM webhook_deliveries WHERE id IN ({ended})"
        ))
        .bind(before_ms)
        .bind(i64::from(limit))
        .execute(&mut *tx)
        .await?;
        let runs = sqlx::query(
            "DELETE FROM workflow_runs WHERE id IN (SELECT id FROM workflow_runs
                WHERE ended_at IS NOT NULL AND ended_at < $1 LIMIT $2)",
        )
        .bind(before_ms)
        .bind(i64::from(limit))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(outputs.rows_affected() + events.rows_affected() + runs.rows_affected())
    }
}
