//! The usage ledger: a line per attempt, written once.

use async_trait::async_trait;
use sqlx::Row;
use switchyard_schemas::ErrorClass;

use super::{SqlStore, Writer, flag, int};
use crate::StoreError;
use crate::ledger::{AttemptUsage, Charge, Figures, Ledger, UsageFilter, UsageReport, UsageRow};

/// The ledger lines charged to their job's tenant: the attempt whose result
/// the job delivered, when it succeeded or was stopped by its client or its
/// own timeout (what the engine did until then was asked for). Every other
/// attempt's usage (a node lost, an engine fault) is waste.
const CHARGED: &str =
    "j.status IN ('succeeded', 'cancelled', 'timed_out') AND j.attempt = u.attempt";

/// The error classes that count against a version: faults of the engine
/// or its node, not the client's.
const VERSION_FAULTS: [ErrorClass; 4] = [
    ErrorClass::Internal,
    ErrorClass::EngineUnavailable,
    ErrorClass::Overloaded,
    ErrorClass::Timeout,
];
/// The most delivered attempts a version's percentile is taken over: the
/// newest ones.
const FIGURES_SAMPLE: i64 = 10_000;

/// The UTC date (`YYYY-MM-DD`) of a day counted from the Unix epoch.
fn utc_day(day: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(day.saturating_mul(86_400)) {
        Ok(t) => format!("{:04}-{:02}-{:02}", t.year(), u8::from(t.month()), t.day()),
        Err(_) => day.to_string(),
    }
}

#[async_trait]
impl Ledger for SqlStore {
    async fn record_usage(&self, charges: &[Charge]) -> Result<Vec<usize>, StoreError> {
        let (mut tx, _turn) = self.begin_write(Writer::Background).await?;
        let new = super::projection::charges(&mut tx, charges, &Default::default()).await?;
        tx.commit().await?;
        Ok(new)
    }

    async fn usage_report(&self, f: &UsageFilter) -> Result<UsageReport, StoreError> {
        let query = |charged: bool| {
            format!(
                "SELECT u.at / 86400000 AS day, u.model AS model, j.tenant AS tenant,
                    COUNT(*) AS requests, CAST(SUM(u.prompt_tokens) AS BIGINT) AS prompt_tokens,
                    CAST(SUM(u.completion_tokens) AS BIGINT) AS completion_tokens,
                    CAST(SUM(u.engine_ms) AS BIGINT) AS engine_ms,
                    CAST(SUM(u.cost_micros) AS BIGINT) AS cost_micros,
                    CAST(SUM(u.cache_hit) AS BIGINT) AS cache_hits
                 FROM usage u JOIN jobs j ON j.id = u.job_id
                 WHERE {} ({CHARGED})
                   AND ($1 IS NULL OR j.tenant = $1)
                   AND ($2 IS NULL OR u.at >= $2) AND ($3 IS NULL OR u.at < $3)
                 GROUP BY day, u.model, j.tenant ORDER BY day, u.model, j.tenant",
                if charged { "" } else { "NOT" }
            )
        };
        let mut report = UsageReport::default();
        for (charged, rows) in [(true, &mut report.charged), (false, &mut report.waste)] {
            let found = sqlx::query(&query(charged))
                .bind(&f.tenant)
                .bind(f.since_ms)
                .bind(f.until_ms)
                .fetch_all(self.pool())
                .await?;
            for row in &found {
                let n = |name: &str| -> Result<u64, sqlx::Error> {
                    Ok(u64::try_from(row.try_get::<i64, _>(name)?).unwrap_or(0))
                };
                rows.push(UsageRow {
                    day: utc_day(row.try_get("day")?),
                    model: row.try_get("model")?,
                    tenant: row.try_get("tenant")?,
                    requests: n("requests")?,
                    prompt_tokens: n("prompt_tokens")?,
                    completion_tokens: n("completion_tokens")?,
                    engine_ms: n("engine_ms")?,
                    cost_micros: row.try_get("cost_micros")?,
                    cache_hits: n("cache_hits")?,
                });
            }
        }
        Ok(report)
    }

    async fn job_cost(&self, job_id: &str) -> Result<i64, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT CAST(COALESCE(SUM(u.cost_micros), 0) AS BIGINT) AS cost_micros
             FROM usage u JOIN jobs j ON j.id = u.job_id
             WHERE u.job_id = $1 AND {CHARGED}"
        ))
        .bind(job_id)
        .fetch_one(self.pool())
        .await?;
        Ok(row.try_get("cost_micros")?)
    }

    async fn job_usage(&self, job_id: &str) -> Result<Vec<AttemptUsage>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT u.attempt, u.node, u.prompt_tokens, u.completion_tokens, u.engine_ms,
                    u.cost_micros, u.cache_hit,
                    CAST(CASE WHEN {CHARGED} THEN 1 ELSE 0 END AS BIGINT) AS charged
             FROM usage u JOIN jobs j ON j.id = u.job_id
             WHERE u.job_id = $1 ORDER BY u.attempt"
        ))
        .bind(job_id)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(AttemptUsage {
                    attempt: int(row, "attempt")?,
                    node: row.try_get("node")?,
                    prompt_tokens: int(row, "prompt_tokens")?,
                    completion_tokens: int(row, "completion_tokens")?,
                    engine_ms: int(row, "engine_ms")?,
                    cost_micros: row.try_get("cost_micros")?,
                    cache_hit: flag(row, "cache_hit")?,
                    charged: flag(row, "charged")?,
                })
            })
            .collect()
    }

    async fn version_figures(
        &self,
        model: &str,
        alias: &str,
        since_ms: i64,
    ) -> Result<Figures, StoreError> {
        let faults: Vec<String> = VERSION_FAULTS
            .iter()
            .map(|c| format!("'{}'", c.code()))
            .collect();
        let faults = faults.join(", ");
        let ended = sqlx::query(&format!(
            "SELECT COUNT(*) AS jobs,
                CAST(COALESCE(SUM(CASE WHEN status = 'failed' AND error_code IN ({faults})
                    THEN 1 ELSE 0 END), 0) AS BIGINT) AS failed
             FROM jobs
             WHERE model = $1 AND finished_at >= $2 AND alias = $3
               AND status IN ('succeeded', 'failed')"
        ))
        .bind(model)
        .bind(since_ms)
        .bind(alias)
        .fetch_one(self.pool())
        .await?;
        let delivered = sqlx::query(&format!(
            "SELECT u.engine_ms AS engine_ms, u.cost_micros AS cost_micros
             FROM usage u JOIN jobs j ON j.id = u.job_id
             WHERE j.model = $1 AND j.finished_at >= $2 AND j.alias = $3
               AND j.status = 'succeeded' AND j.attempt = u.attempt
             ORDER BY j.finished_at DESC LIMIT {FIGURES_SAMPLE}"
        ))
        .bind(model)
        .bind(since_ms)
        .bind(alias)
        .fetch_all(self.pool())
        .await?;
        let mut engine_ms = Vec::with_capacity(delivered.len());
        let mut cost = 0.0;
        for row in &delivered {
            engine_ms.push(row.try_get::<i64, _>("engine_ms")?);
            cost += row.try_get::<i64, _>("cost_micros")? as f64;
        }
        engine_ms.sort_unstable();
        let count = |name: &str| -> Result<u64, sqlx::Error> {
            Ok(u64::try_from(ended.try_get::<i64, _>(name)?).unwrap_or(0))
        };
        Ok(Figures {
            jobs: count("jobs")?,
            failed: count("failed")?,
            p95_engine_ms: percentile(&engine_ms, 95),
            mean_cost_micros: (!engine_ms.is_empty()).then(|| cost / engine_ms.len() as f64),
        })
    }
}

/// The `p`th percentile of sorted values (nearest rank).
fn percentile(sorted: &[i64], p: usize) -> Option<u64> {
    let rank = (sorted.len() * p).div_ceil(100).max(1);
    sorted.get(rank - 1).map(|v| u64::try_from(*v).unwrap_or(0))
}
