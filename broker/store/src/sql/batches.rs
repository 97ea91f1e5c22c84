//! [`BatchStore`] on the embedded SQLite database.

use async_trait::async_trait;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{SqlStore, Writer, flag, record};
use crate::batches::{
    BatchCounts, BatchItem, BatchRecord, BatchStatus, BatchStore, BatchUpdate, FileRecord,
};
use crate::{JobRecord, StoreError};

/// The column that stamps when a batch entered each status.
fn stamp_column(status: BatchStatus) -> Option<&'static str> {
    match status {
        BatchStatus::Validating => None,
        BatchStatus::InProgress => Some("in_progress_at"),
        BatchStatus::Finalizing => Some("finalizing_at"),
        BatchStatus::Completed => Some("completed_at"),
        BatchStatus::Failed => Some("failed_at"),
        BatchStatus::Cancelling => Some("cancelling_at"),
        BatchStatus::Cancelled => Some("cancelled_at"),
        BatchStatus::Expired => Some("expired_at"),
    }
}

fn file(row: &AnyRow) -> Result<FileRecord, sqlx::Error> {
    Ok(FileRecord {
        id: row.try_get("id")?,
        tenant: row.try_get("tenant")?,
        filename: row.try_get("filename")?,
        purpose: row.try_get("purpose")?,
        bytes: row.try_get("bytes")?,
        created_at_ms: row.try_get("created_at")?,
    })
}

impl SqlStore {
    async fn batch(&self, row: &AnyRow) -> Result<BatchRecord, StoreError> {
        let id: String = row.try_get("id")?;
        let corrupt = crate::corrupt(id.clone());
        let status: String = row.try_get("status")?;
        let metadata: String = row.try_get("metadata")?;
        let error: Option<String> = row.try_get("error")?;
        let mut stamps = std::collections::BTreeMap::new();
        for status in BatchStatus::ALL {
            if let Some(column) = stamp_column(status)
                && let Some(at) = row.try_get::<Option<i64>, _>(column)?
            {
                stamps.insert(column, at);
            }
        }
        let counts = sqlx::query(
            "SELECT COUNT(*) AS total,
                COALESCE(SUM(CASE WHEN j.status = 'succeeded' THEN 1 ELSE 0 END), 0) AS completed,
                COALESCE(SUM(CASE WHEN i.error_code IS NOT NULL
                    OR j.status IN ('failed', 'expired', 'timed_out', 'cancelled')
                    THEN 1 ELSE 0 END), 0) AS failed
             FROM batch_items i LEFT JOIN jobs j ON j.id = i.job_id WHERE i.batch_id = $1",
        )
        .bind(&id)
        .fetch_one(self.pool())
        .await?;
        let count = |name: &str| -> Result<u64, sqlx::Error> {
            Ok(u64::try_from(counts.try_get::<i64, _>(name)?).unwrap_or(0))
        };
        Ok(BatchRecord {
            status: BatchStatus::parse(&status)
                .ok_or_else(|| corrupt(format!("batch status {status:?}")))?,
            metadata: serde_json::from_str(&metadata).map_err(|e| corrupt(e.to_string()))?,
            error: error
                .map(|e| serde_json::from_str(&e))
                .transpose()
                .map_err(|e| corrupt(e.to_string()))?,
            tenant: row.try_get("tenant")?,
            api_key: row.try_get("api_key")?,
            endpoint: row.try_get("endpoint")?,
            input_file_id: row.try_get("input_file_id")?,
            completion_window: row.try_get("completion_window")?,
            created_at_ms: row.try_get("created_at")?,
            expires_at_ms: row.try_get("expires_at")?,
            output_file_id: row.try_get("output_file_id")?,
            error_file_id: row.try_get("error_file_id")?,
            lines_read: u64::try_from(row.try_get::<i64, _>("lines_read")?).unwrap_or(0),
            input_done: flag(row, "input_done")?,
            counts: BatchCounts {
                total: count("total")?,
                completed: count("completed")?,
                failed: count("failed")?,
            },
            stamps,
            id,
        })
    }
}

#[async_trait]
impl BatchStore for SqlStore {
    async fn insert_file(&self, f: &FileRecord) -> Result<(), StoreError> {
        let _turn = self.turn(Writer::Request).await;
        sqlx::query(
            "INSERT INTO files (id, filename, purpose, bytes, created_at, tenant)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&f.id)
        .bind(&f.filename)
        .bind(&f.purpose)
        .bind(f.bytes)
        .bind(f.created_at_ms)
        .bind(&f.tenant)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn get_file(&self, id: &str) -> Result<Option<FileRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM files WHERE id = $1")
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        Ok(row.as_ref().map(file).transpose()?)
    }

    async fn list_files(
        &self,
        tenant: Option<&str>,
        limit: u32,
    ) -> Result<Vec<FileRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM files WHERE $2 IS NULL OR tenant = $2
             ORDER BY created_at DESC, id DESC LIMIT $1",
        )
        .bind(i64::from(limit))
        .bind(tenant)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.iter().map(file).collect::<Result<_, _>>()?)
    }

    async fn delete_file(&self, id: &str) -> Result<bool, StoreError> {
        let _turn = self.turn(Writer::Request).await;
        let gone = sqlx::query("DELETE FROM files WHERE id = $1")
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(gone.rows_affected() == 1)
    }

    async fn batch_waiting(&self, now_ms: i64) -> Result<bool, StoreError> {
        let waiting: Option<String> = sqlx::query_scalar(
            "SELECT id FROM batches
             WHERE status IN ('validating', 'in_progress', 'finalizing', 'cancelling')
               AND lease_until <= $1 LIMIT 1",
        )
        .bind(now_ms)
        .fetch_optional(self.pool())
        .await?;
        Ok(waiting.is_some())
    }

    async fn file_bytes(&self, tenant: &str) -> Result<u64, StoreError> {
        let bytes: Option<i64> =
            sqlx::query_scalar("SELECT CAST(SUM(bytes) AS BIGINT) FROM files WHERE tenant = $1")
                .bind(tenant)
                .fetch_one(self.pool())
                .await?;
        Ok(u64::try_from(bytes.unwrap_or(0)).unwrap_or(0))
    }

    async fn insert_batch(&self, b: &BatchRecord) -> Result<(), StoreError> {
        let _turn = self.turn(Writer::Request).await;
        sqlx::query(
            "INSERT INTO batches (id, endpoint, input_file_id, completion_window, status, metadata,
                created_at, expires_at, tenant, api_key)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&b.id)
        .bind(&b.endpoint)
        .bind(&b.input_file_id)
        .bind(&b.completion_window)
        .bind(b.status.as_str())
        .bind(serde_json::to_string(&b.metadata).unwrap_or_else(|_| "{}".into()))
        .bind(b.created_at_ms)
        .bind(b.expires_at_ms)
        .bind(&b.tenant)
        .bind(&b.api_key)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn get_batch(&self, id: &str) -> Result<Option<BatchRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM batches WHERE id = $1")
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        match row {
            Some(row) => Ok(Some(self.batch(&row).await?)),
            None => Ok(None),
        }
    }

    async fn list_batches(
        &self,
        tenant: Option<&str>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<BatchRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM batches
             WHERE ($1 IS NULL OR (created_at, id) <
                (SELECT created_at, id FROM batches WHERE id = $1))
                AND ($3 IS NULL OR tenant = $3)
             ORDER BY created_at DESC, id DESC LIMIT $2",
        )
        .bind(after)
        .bind(i64::from(limit))
        .bind(tenant)
        .fetch_all(self.pool())
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            out.push(self.batch(row).await?);
        }
        Ok(out)
    }

    async fn claim_batch(
        &self,
        now_ms: i64,
        lease_until_ms: i64,
    ) -> Result<Option<BatchRecord>, StoreError> {
        let _turn = self.turn(Writer::Background).await;
        let row = sqlx::query(
            "UPDATE batches SET lease_until = $2
             WHERE id = (SELECT id FROM batches
                WHERE status IN ('validating', 'in_progress', 'finalizing', 'cancelling')
                  AND lease_until <= $1
                ORDER BY lease_until, created_at LIMIT 1)
               AND lease_until <= $1
             RETURNING *",
        )
        .bind(now_ms)
        .bind(lease_until_ms)
        .fetch_optional(self.pool())
        .await?;
        match row {
            Some(row) => Ok(Some(self.batch(&row).await?)),
            None => Ok(None),
        }
    }

    async fn renew_batch(&self, id: &str, lease_until_ms: i64) -> Result<(), StoreError> {
        let _turn = self.turn(Writer::Background).await;
        sqlx::query("UPDATE batches SET lease_until = $2 WHERE id = $1")
            .bind(id)
            .bind(lease_until_ms)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    async fn add_batch_items(
        &self,
        id: &str,
        items: &[BatchItem],
        lines_read: u64,
        input_done: bool,
    ) -> Result<(), StoreError> {
        let (mut tx, _turn) = self.begin_write(Writer::Background).await?;
        for item in items {
            sqlx::query(
                "INSERT INTO batch_items (batch_id, line, custom_id, job_id, error_code, error_message)
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
            )
            .bind(id)
            .bind(i64::try_from(item.line).unwrap_or(i64::MAX))
            .bind(&item.custom_id)
            .bind(&item.job_id)
            .bind(item.error.as_ref().map(|e| &e.0))
            .bind(item.error.as_ref().map(|e| &e.1))
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(
            "UPDATE batches SET lines_read = CASE WHEN lines_read > $2 THEN lines_read ELSE $2 END, input_done = $3 WHERE id = $1",
        )
        .bind(id)
        .bind(i64::try_from(lines_read).unwrap_or(i64::MAX))
        .bind(i64::from(input_done))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn batch_items(
        &self,
        id: &str,
        after_line: Option<u64>,
        limit: u32,
    ) -> Result<Vec<(BatchItem, Option<JobRecord>)>, StoreError> {
        let rows = sqlx::query(
            "SELECT i.line AS item_line, i.custom_id AS item_custom_id, i.job_id AS item_job_id,
                i.error_code AS item_error_code, i.error_message AS item_error_message, j.*
             FROM batch_items i LEFT JOIN jobs j ON j.id = i.job_id
             WHERE i.batch_id = $1 AND i.line > $2 ORDER BY i.line LIMIT $3",
        )
        .bind(id)
        .bind(after_line.map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX)))
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                let code: Option<String> = row.try_get("item_error_code")?;
                let message: Option<String> = row.try_get("item_error_message")?;
                let item = BatchItem {
                    line: u64::try_from(row.try_get::<i64, _>("item_line")?).unwrap_or(0),
                    custom_id: row.try_get("item_custom_id")?,
                    job_id: row.try_get("item_job_id")?,
                    error: code.zip(message),
                };
                let job = match row.try_get::<Option<String>, _>("id")? {
                    Some(_) => Some(record(row)?),
                    None => None,
                };
                Ok((item, job))
            })
            .collect()
    }

    async fn set_batch_status(
        &self,
        id: &str,
        from: &[BatchStatus],
        to: BatchStatus,
        at_ms: i64,
        update: BatchUpdate,
    ) -> Result<bool, StoreError> {
        let _turn = self.turn(Writer::Background).await;
        let stamp = stamp_column(to).map_or(String::new(), |c| format!(", {c} = $3"));
        let from: Vec<String> = from.iter().map(|s| format!("'{}'", s.as_str())).collect();
        let changed = sqlx::query(&format!(
            "UPDATE batches SET status = $2{stamp},
                output_file_id = COALESCE($4, output_file_id),
                error_file_id = COALESCE($5, error_file_id),
                error = COALESCE($6, error), lease_until = 0
             WHERE id = $1 AND status IN ({})",
            from.join(", ")
        ))
        .bind(id)
        .bind(to.as_str())
        .bind(at_ms)
        .bind(update.output_file_id)
        .bind(update.error_file_id)
        .bind(
            update
                .error
                .map(|e| serde_json::to_string(&e).unwrap_or_default()),
        )
        .execute(self.pool())
        .await?;
        Ok(changed.rows_affected() == 1)
    }
}
