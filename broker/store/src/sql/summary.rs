//! Counts for dashboards, read through the `jobs_finished` index.

use async_trait::async_trait;
use sqlx::Row;

use super::SqlStore;
use crate::StoreError;
use crate::summary::{Ended, Summaries};

#[async_trait]
impl Summaries for SqlStore {
    async fn ended_per_minute(
        &self,
        since_ms: i64,
        tenant: Option<&str>,
    ) -> Result<Vec<Ended>, StoreError> {
        let rows = sqlx::query(
            "SELECT (finished_at / 60000) * 60000 AS minute, status, COUNT(*) AS jobs
             FROM jobs WHERE finished_at >= $1 AND ($2 IS NULL OR tenant = $2)
             GROUP BY (finished_at / 60000) * 60000, status ORDER BY minute, status",
        )
        .bind(since_ms)
        .bind(tenant)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(Ended {
                    minute_ms: row.try_get("minute")?,
                    status: row.try_get("status")?,
                    jobs: u64::try_from(row.try_get::<i64, _>("jobs")?).unwrap_or(0),
                })
            })
            .collect()
    }
}
