//! The job store on SQL: an SQLite file (the embedded default) or a
//! PostgreSQL database, through sqlx's `Any` driver with one set of queries
//! written in the SQL both speak (`$n` parameters, `CASE` for `MAX`, times as
//! integers). SQLite runs in WAL mode with `synchronous = NORMAL`, which
//! survives a crash of the process (not of the machine); the queue itself
//! lives in JetStream, and the records can be rebuilt from its streams.
//! Several brokers share one PostgreSQL database.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::AnyPool;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::MigrateDatabase;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Any, Executor, Row, Transaction};
use switchyard_schemas::{EventKind, Job, JobEvent, JobResult, Outcome, Usage, now_ms};

use super::{
    Attempt, Charge, Delivery, DeliveryRecord, DisabledEndpoint, Inserted, JobRecord, JobStore,
    ListFilter, Next, RejectedJob, Source, Status, StoreError, UsageFilter, UsageReport, UsageRow,
};
use crate::budget::Reservation;
use crate::limits::{Take, key_holder};
use crate::webhooks;

pub struct SqlStore {
    pool: AnyPool,
}

/// An integer column as the narrower type a record holds.
pub(super) fn int<T: TryFrom<i64>>(row: &AnyRow, column: &str) -> Result<T, sqlx::Error> {
    narrow(column, row.try_get(column)?)
}

pub(super) fn opt_int<T: TryFrom<i64>>(
    row: &AnyRow,
    column: &str,
) -> Result<Option<T>, sqlx::Error> {
    let value: Option<i64> = row.try_get(column)?;
    value.map(|v| narrow(column, v)).transpose()
}

fn narrow<T: TryFrom<i64>>(column: &str, value: i64) -> Result<T, sqlx::Error> {
    T::try_from(value).map_err(|_| sqlx::Error::ColumnDecode {
        index: column.to_owned(),
        source: format!("{value} is out of range").into(),
    })
}

/// The UTC date (`YYYY-MM-DD`) of a day counted from the Unix epoch.
fn utc_day(day: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(day.saturating_mul(86_400)) {
        Ok(t) => format!("{:04}-{:02}-{:02}", t.year(), u8::from(t.month()), t.day()),
        Err(_) => day.to_string(),
    }
}

/// A 0/1 column (flags are integers in both databases).
pub(super) fn flag(row: &AnyRow, column: &str) -> Result<bool, sqlx::Error> {
    Ok(row.try_get::<i64, _>(column)? != 0)
}

/// A key claimed this long ago whose job was never recorded belongs to a
/// request that failed and could not release it (the store was failing
/// too): the next request with the key takes it over. A request in flight
/// records its job well within this.
const ABANDONED_CLAIM_MS: i64 = 15_000;

/// Whether a database URL names PostgreSQL (else SQLite).
pub fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

impl SqlStore {
    /// Opens (creating if needed) the database and applies migrations.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        if is_postgres(url) {
            // Brokers starting together may race to make it: whoever
            // loses finds it there.
            if !Any::database_exists(url).await? && Any::create_database(url).await.is_err() {
                Any::database_exists(url).await?;
            }
            let pool = AnyPoolOptions::new()
                .max_connections(16)
                // With the server down, a request waits this long for a
                // connection and is then refused (503), not held for 30 s.
                .acquire_timeout(Duration::from_secs(3))
                .connect(url)
                .await?;
            sqlx::migrate!("../migrations/postgres").run(&pool).await?;
            return Ok(Self { pool });
        }
        let options = SqliteConnectOptions::from_str(url)?;
        if let Some(dir) = options
            .get_filename()
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
        {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
                path: dir.display().to_string(),
                source,
            })?;
        }
        let url = match url.contains('?') {
            true => url.to_owned(),
            false => format!("{url}?mode=rwc"),
        };
        let pool = AnyPoolOptions::new()
            .max_connections(4)
            // A transaction that failed as the disk filled can come back
            // still open, holding SQLite's write lock for ever; rolling
            // back on release frees it (an error just means none was open).
            .after_release(|conn, _| {
                Box::pin(async move {
                    let _ = conn.execute("ROLLBACK").await;
                    Ok(true)
                })
            })
            .after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute(
                        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;
                         PRAGMA busy_timeout = 10000;",
                    )
                    .await?;
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        sqlx::migrate!("../migrations/sqlite").run(&pool).await?;
        Ok(Self { pool })
    }

    pub(super) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    async fn apply_event(tx: &mut Transaction<'_, Any>, e: &JobEvent) -> Result<(), sqlx::Error> {
        // Progress is ordered by (attempt, stage): a job only moves forward,
        // a retry starts the next attempt at `queued`, and a late event of an
        // earlier attempt changes nothing but a timestamp it was missing.
        let (attempt, stage, status, node, assigned_at, started_at) = match &e.kind {
            EventKind::Assigned { node } => {
                (e.attempt, 1, "assigned", Some(node), Some(e.at_ms), None)
            }
            EventKind::Running { node } => {
                (e.attempt, 2, "running", Some(node), None, Some(e.at_ms))
            }
            EventKind::Retrying { .. } | EventKind::Requeued { .. } => {
                (e.attempt + 1, 0, "queued", None, None, None)
            }
        };
        sqlx::query(&format!(
            "UPDATE jobs SET
                status = CASE WHEN {AHEAD} THEN $3 ELSE status END,
                node = CASE WHEN {AHEAD} THEN $4 ELSE node END,
                assigned_at = CASE WHEN attempt < $1 THEN $5
                    WHEN attempt = $1 THEN COALESCE(assigned_at, $5) ELSE assigned_at END,
                started_at = CASE WHEN attempt < $1 THEN $6
                    WHEN attempt = $1 THEN COALESCE(started_at, $6) ELSE started_at END,
                attempt = CASE WHEN attempt > $1 THEN attempt ELSE $1 END
             WHERE id = $7 AND status NOT IN ('succeeded', 'failed', 'expired', 'timed_out', 'cancelled')"
        ))
        .bind(i64::from(attempt))
        .bind(stage)
        .bind(status)
        .bind(node)
        .bind(assigned_at)
        .bind(started_at)
        .bind(&e.job_id)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    async fn apply_result(tx: &mut Transaction<'_, Any>, r: &JobResult) -> Result<(), sqlx::Error> {
        let status = Status::of(&r.outcome);
        let (output, error, usage) = match &r.outcome {
            Outcome::Succeeded { output, usage } => (Some(output.to_string()), None, Some(*usage)),
            Outcome::Failed { error } => (
                None,
                Some((error.class.code(), error.message.as_str())),
                None,
            ),
        };
        // The first final result wins, and a result of a superseded attempt
        // (the job was already given to another one) is fenced out.
        sqlx::query(
            "UPDATE jobs SET status = $1, output = $2, error_code = $3, error_message = $4,
                prompt_tokens = $5, completion_tokens = $6, finished_at = $7,
                node = COALESCE($8, node),
                assigned_at = CASE WHEN attempt < $9 THEN $11 ELSE COALESCE(assigned_at, $11) END,
                started_at = CASE WHEN attempt < $9 THEN $12 ELSE COALESCE(started_at, $12) END,
                attempt = CASE WHEN attempt > $9 THEN attempt ELSE $9 END
             WHERE id = $10 AND status NOT IN ('succeeded', 'failed', 'expired', 'timed_out', 'cancelled') AND attempt <= $9",
        )
        .bind(status.as_str())
        .bind(output)
        .bind(error.map(|e| e.0))
        .bind(error.map(|e| e.1))
        .bind(usage.map(|u| i64::from(u.prompt_tokens)))
        .bind(usage.map(|u| i64::from(u.completion_tokens)))
        .bind(r.finished_at_ms)
        .bind(&r.node)
        .bind(i64::from(r.attempt))
        .bind(&r.job_id)
        .bind(r.assigned_at_ms)
        .bind(r.started_at_ms)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}

/// Whether an event is ahead of the job's recorded (attempt, stage), with the
/// event's attempt as `$1` and stage as `$2`.
const AHEAD: &str = "(attempt < $1 OR (attempt = $1 AND (CASE status \
    WHEN 'queued' THEN 0 WHEN 'assigned' THEN 1 WHEN 'running' THEN 2 ELSE 3 END) < $2))";

pub(super) fn record(row: &AnyRow) -> Result<JobRecord, StoreError> {
    let id: String = row.try_get("id")?;
    let corrupt = super::corrupt(id.clone());
    let status: String = row.try_get("status")?;
    let metadata: String = row.try_get("metadata")?;
    let output: Option<String> = row.try_get("output")?;
    let code: Option<String> = row.try_get("error_code")?;
    let message: Option<String> = row.try_get("error_message")?;
    let prompt: Option<u32> = opt_int(row, "prompt_tokens")?;
    let completion: Option<u32> = opt_int(row, "completion_tokens")?;
    Ok(JobRecord {
        status: Status::parse(&status).ok_or_else(|| corrupt(format!("status {status:?}")))?,
        metadata: serde_json::from_str(&metadata).map_err(|e| corrupt(e.to_string()))?,
        output: output
            .map(|o| serde_json::from_str(&o))
            .transpose()
            .map_err(|e| corrupt(e.to_string()))?,
        error: code.zip(message),
        output_expired: flag(row, "output_expired")?,
        tokens_estimate: opt_int(row, "tokens_estimate")?,
        usage: prompt.zip(completion).map(|(p, c)| Usage {
            prompt_tokens: p,
            completion_tokens: c,
        }),
        model: row.try_get("model")?,
        tenant: row.try_get("tenant")?,
        priority: row.try_get("priority")?,
        source: row.try_get("source")?,
        attempt: int(row, "attempt")?,
        node: row.try_get("node")?,
        created_at_ms: row.try_get("created_at")?,
        enqueued_at_ms: row.try_get("enqueued_at")?,
        assigned_at_ms: row.try_get("assigned_at")?,
        started_at_ms: row.try_get("started_at")?,
        finished_at_ms: row.try_get("finished_at")?,
        id,
    })
}

/// Writes the webhook delivery that a job's recorded status calls for, if
/// its webhook asks for that event. Its id makes a repeat a no-op.
async fn queue_webhook(
    tx: &mut Transaction<'_, Any>,
    id: &str,
    just_recorded: bool,
) -> Result<(), StoreError> {
    let Some(row) = sqlx::query("SELECT * FROM jobs WHERE id = $1 AND webhook_url IS NOT NULL")
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?
    else {
        return Ok(());
    };
    let url: String = row.try_get("webhook_url")?;
    let wanted: Option<String> = row.try_get("webhook_events")?;
    let record = record(&row)?;
    let Some(event) = webhooks::event_for(record.status, just_recorded) else {
        return Ok(());
    };
    if !wanted
        .unwrap_or_default()
        .split(',')
        .any(|e| e == event.as_str())
    {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO webhook_deliveries (id, job_id, tenant, url, event, payload, state, created_at, next_at)
         VALUES ($1, $2, $3, $4, $5, $6,
            CASE WHEN EXISTS (SELECT 1 FROM webhook_disabled WHERE url = $4) THEN 'disabled' ELSE 'pending' END,
            $7, $7)
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(webhooks::delivery_id(&record, event))
    .bind(&record.id)
    .bind(&record.tenant)
    .bind(&url)
    .bind(event.as_str())
    .bind(webhooks::body(&record, event))
    .bind(now_ms())
    .execute(&mut **tx)
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
impl JobStore for SqlStore {
    async fn insert(&self, job: &Job, source: Source) -> Result<Inserted, StoreError> {
        let json = serde_json::to_string(job).map_err(|e| StoreError::Corrupt {
            id: job.id.clone(),
            reason: e.to_string(),
        })?;
        let metadata = serde_json::to_string(&job.metadata).unwrap_or_else(|_| "{}".into());
        let webhook = job.webhook.as_ref();
        let events = webhook.map(|w| {
            w.events
                .iter()
                .map(|e| e.as_str())
                .collect::<Vec<_>>()
                .join(",")
        });
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO jobs (id, model, priority, source, status, job, metadata, attempt, created_at,
                tenant, deadline_at, webhook_url, webhook_events, tokens_estimate, api_key)
             VALUES ($1, $2, $3, $4, 'queued', $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(&job.id)
        .bind(&job.model)
        .bind(job.priority.as_str())
        .bind(source.as_str())
        .bind(json)
        .bind(metadata)
        .bind(i64::from(job.attempt))
        .bind(job.submitted_at_ms)
        .bind(&job.tenant)
        .bind(job.deadline_ms)
        .bind(webhook.map(|w| &w.url))
        .bind(events)
        .bind(i64::from(crate::budget::tokens(job)))
        .bind(&job.api_key)
        .execute(&mut *tx)
        .await?;
        let found = if inserted.rows_affected() == 1 {
            if webhook.is_some() {
                queue_webhook(&mut tx, &job.id, true).await?;
            }
            Inserted::New
        } else {
            let enqueued: Option<i64> =
                sqlx::query_scalar("SELECT enqueued_at FROM jobs WHERE id = $1")
                    .bind(&job.id)
                    .fetch_one(&mut *tx)
                    .await?;
            Inserted::Existing {
                enqueued: enqueued.is_some(),
            }
        };
        tx.commit().await?;
        Ok(found)
    }

    async fn claim_key(
        &self,
        key: &str,
        job_id: &str,
        now_ms: i64,
        fresh_since_ms: i64,
    ) -> Result<String, StoreError> {
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
        .fetch_optional(&self.pool)
        .await?;
        let holder = match claimed {
            Some(id) => id,
            None => {
                sqlx::query_scalar("SELECT job_id FROM idempotency WHERE key = $1")
                    .bind(key)
                    .fetch_one(&self.pool)
                    .await?
            }
        };
        Ok(holder)
    }

    async fn release_key(&self, key: &str, job_id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM idempotency WHERE key = $1 AND job_id = $2")
            .bind(key)
            .bind(job_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn mark_enqueued(&self, id: &str, at_ms: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE jobs SET enqueued_at = COALESCE(enqueued_at, $1) WHERE id = $2")
            .bind(at_ms)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn reopen(&self, job: &Job) -> Result<bool, StoreError> {
        let json = serde_json::to_string(job).map_err(|e| StoreError::Corrupt {
            id: job.id.clone(),
            reason: e.to_string(),
        })?;
        let reopened = sqlx::query(
            "UPDATE jobs SET status = 'queued', job = $1, attempt = $2, node = NULL,
                enqueued_at = NULL, assigned_at = NULL, started_at = NULL, finished_at = NULL,
                output = NULL, error_code = NULL, error_message = NULL,
                prompt_tokens = NULL, completion_tokens = NULL
             WHERE id = $3 AND status = 'failed'",
        )
        .bind(json)
        .bind(i64::from(job.attempt))
        .bind(&job.id)
        .execute(&self.pool)
        .await?;
        Ok(reopened.rows_affected() == 1)
    }

    async fn discard_unqueued(&self, id: &str) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let gone = sqlx::query(
            "DELETE FROM jobs WHERE id = $1 AND status = 'queued' AND enqueued_at IS NULL",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if gone.rows_affected() == 1 {
            sqlx::query("DELETE FROM webhook_deliveries WHERE job_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn insert_rejected(&self, job: &RejectedJob) -> Result<String, StoreError> {
        sqlx::query(
            "INSERT INTO jobs (id, model, priority, source, status, created_at, finished_at,
                error_code, error_message, tenant)
             VALUES ($1, $2, $3, $4, 'failed', $5, $5, $6, $7, $8)
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(&job.id)
        .bind(&job.model)
        .bind(job.priority.as_str())
        .bind(job.source.as_str())
        .bind(job.at_ms)
        .bind(&job.code)
        .bind(&job.message)
        .bind(&job.tenant)
        .execute(&self.pool)
        .await?;
        Ok(sqlx::query_scalar("SELECT tenant FROM jobs WHERE id = $1")
            .bind(&job.id)
            .fetch_one(&self.pool)
            .await?)
    }

    async fn apply_events(&self, events: &[JobEvent]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for e in events {
            Self::apply_event(&mut tx, e).await?;
            if matches!(e.kind, EventKind::Running { .. }) {
                queue_webhook(&mut tx, &e.job_id, false).await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    async fn apply_results(&self, results: &[JobResult]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for r in results {
            Self::apply_result(&mut tx, r).await?;
            queue_webhook(&mut tx, &r.job_id, false).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn record_usage(&self, charges: &[Charge]) -> Result<Vec<usize>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let mut new = Vec::new();
        for (i, c) in charges.iter().enumerate() {
            let u = &c.usage;
            let inserted = sqlx::query(
                "INSERT INTO usage (job_id, attempt, node, model, prompt_tokens, completion_tokens,
                    engine_ms, at, cost_micros, cache_hit)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                 ON CONFLICT (job_id, attempt) DO NOTHING",
            )
            .bind(&u.job_id)
            .bind(i64::from(u.attempt))
            .bind(&u.node)
            .bind(&u.model)
            .bind(i64::from(u.usage.prompt_tokens))
            .bind(i64::from(u.usage.completion_tokens))
            .bind(i64::try_from(u.engine_ms).unwrap_or(i64::MAX))
            .bind(u.at_ms)
            .bind(c.cost_micros)
            .bind(i64::from(c.cache_hit))
            .execute(&mut *tx)
            .await?;
            if inserted.rows_affected() == 1 {
                new.push(i);
            }
        }
        tx.commit().await?;
        Ok(new)
    }

    async fn take(
        &self,
        takes: &[Take],
        now_us: i64,
    ) -> Result<Option<(&'static str, i64)>, StoreError> {
        let mut tx = self.pool.begin().await?;
        for t in takes {
            // GCRA: a request may come when the theoretical arrival time is
            // at most the tolerance ahead; it moves that time on by its cost.
            let taken = sqlx::query(
                "INSERT INTO rate_limits (key, tat) VALUES ($1, $2 + $3)
                 ON CONFLICT (key) DO UPDATE SET tat = CASE WHEN rate_limits.tat > $2 THEN rate_limits.tat ELSE $2 END + $3
                    WHERE rate_limits.tat <= $2 + $4",
            )
            .bind(&t.key)
            .bind(now_us)
            .bind(t.cost_us)
            .bind(t.tolerance_us)
            .execute(&mut *tx)
            .await?;
            if taken.rows_affected() == 0 {
                let tat: i64 = sqlx::query_scalar("SELECT tat FROM rate_limits WHERE key = $1")
                    .bind(&t.key)
                    .fetch_one(&mut *tx)
                    .await?;
                tx.rollback().await?;
                return Ok(Some((t.limit, (tat - now_us - t.tolerance_us).max(1))));
            }
        }
        tx.commit().await?;
        Ok(None)
    }

    async fn correct_limits(
        &self,
        used: &[(String, u32)],
        rate: &(dyn for<'t> Fn(&'t str) -> Option<(String, i64)> + Sync),
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for (id, tokens) in used {
            let Some(row) = sqlx::query(
                "SELECT tenant, api_key, tokens_estimate FROM jobs
                 WHERE id = $1 AND tokens_estimate IS NOT NULL",
            )
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            else {
                continue;
            };
            // Cleared in the same transaction: a result seen again moves
            // nothing.
            sqlx::query("UPDATE jobs SET tokens_estimate = NULL WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            let tenant: String = row.try_get("tenant")?;
            let key: Option<String> = row.try_get("api_key")?;
            let estimate: i64 = row.try_get("tokens_estimate")?;
            let holders = std::iter::once(tenant).chain(key.as_deref().map(key_holder));
            for (limit, per_token) in holders.filter_map(|h| rate(&h)) {
                sqlx::query("UPDATE rate_limits SET tat = tat + $2 WHERE key = $1")
                    .bind(limit)
                    .bind(per_token * (i64::from(*tokens) - estimate))
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    async fn reserve(&self, job_id: &str, r: &Reservation) -> Result<Option<i64>, StoreError> {
        // Writes first, so the transaction holds the write lock throughout.
        let mut tx = self.pool.begin().await?;
        let new = sqlx::query(
            "INSERT INTO reservations (job_id, tenant, period_start, micros)
             VALUES ($1, $2, $3, $4) ON CONFLICT (job_id) DO NOTHING",
        )
        .bind(job_id)
        .bind(&r.tenant)
        .bind(r.period_start_ms)
        .bind(r.micros)
        .execute(&mut *tx)
        .await?;
        if new.rows_affected() == 0 {
            tx.commit().await?;
            return Ok(None);
        }
        sqlx::query(
            "INSERT INTO budgets (tenant, period_start) VALUES ($1, $2)
             ON CONFLICT (tenant, period_start) DO NOTHING",
        )
        .bind(&r.tenant)
        .bind(r.period_start_ms)
        .execute(&mut *tx)
        .await?;
        let reserved = sqlx::query(
            "UPDATE budgets SET reserved_micros = reserved_micros + $3
             WHERE tenant = $1 AND period_start = $2
               AND reserved_micros + spent_micros + $3 <= $4",
        )
        .bind(&r.tenant)
        .bind(r.period_start_ms)
        .bind(r.micros)
        .bind(r.limit_micros)
        .execute(&mut *tx)
        .await?;
        if reserved.rows_affected() == 1 {
            tx.commit().await?;
            return Ok(None);
        }
        let left: i64 = sqlx::query_scalar(
            "SELECT $3 - reserved_micros - spent_micros FROM budgets
             WHERE tenant = $1 AND period_start = $2",
        )
        .bind(&r.tenant)
        .bind(r.period_start_ms)
        .bind(r.limit_micros)
        .fetch_one(&mut *tx)
        .await?;
        tx.rollback().await?;
        Ok(Some(left.max(0)))
    }

    async fn take_places(
        &self,
        job_id: &str,
        holders: &[(String, u32)],
    ) -> Result<Option<usize>, StoreError> {
        let mut tx = self.pool.begin().await?;
        for (i, (holder, max)) in holders.iter().enumerate() {
            let new = sqlx::query(
                "INSERT INTO place_holders (job_id, holder) VALUES ($1, $2)
                 ON CONFLICT (job_id, holder) DO NOTHING",
            )
            .bind(job_id)
            .bind(holder)
            .execute(&mut *tx)
            .await?;
            if new.rows_affected() == 0 {
                continue;
            }
            let taken = sqlx::query(
                "INSERT INTO places (holder, used) VALUES ($1, 1)
                 ON CONFLICT (holder) DO UPDATE SET used = places.used + 1 WHERE places.used < $2",
            )
            .bind(holder)
            .bind(i64::from(*max))
            .execute(&mut *tx)
            .await?;
            if taken.rows_affected() == 0 || *max == 0 {
                tx.rollback().await?;
                return Ok(Some(i));
            }
        }
        tx.commit().await?;
        Ok(None)
    }

    async fn settle(
        &self,
        job_ids: &[String],
        cost: &(dyn for<'r> Fn(&'r JobRecord) -> i64 + Sync),
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for id in job_ids {
            let freed: Vec<String> =
                sqlx::query_scalar("DELETE FROM place_holders WHERE job_id = $1 RETURNING holder")
                    .bind(id)
                    .fetch_all(&mut *tx)
                    .await?;
            for holder in freed {
                sqlx::query("UPDATE places SET used = used - 1 WHERE holder = $1")
                    .bind(holder)
                    .execute(&mut *tx)
                    .await?;
            }
            let Some(held) = sqlx::query(
                "DELETE FROM reservations WHERE job_id = $1 RETURNING tenant, period_start, micros",
            )
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            else {
                continue;
            };
            let spent = match sqlx::query("SELECT * FROM jobs WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?
            {
                Some(row) => cost(&record(&row)?),
                None => 0,
            };
            sqlx::query(
                "UPDATE budgets SET reserved_micros = reserved_micros - $3,
                    spent_micros = spent_micros + $4
                 WHERE tenant = $1 AND period_start = $2",
            )
            .bind(held.try_get::<String, _>("tenant")?)
            .bind(held.try_get::<i64, _>("period_start")?)
            .bind(held.try_get::<i64, _>("micros")?)
            .bind(spent)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn usage_report(&self, f: &UsageFilter) -> Result<UsageReport, StoreError> {
        // Charged: the attempt whose result the job delivered.
        let query = |charged: bool| {
            format!(
                "SELECT u.at / 86400000 AS day, u.model AS model, j.tenant AS tenant,
                    COUNT(*) AS requests, CAST(SUM(u.prompt_tokens) AS BIGINT) AS prompt_tokens,
                    CAST(SUM(u.completion_tokens) AS BIGINT) AS completion_tokens,
                    CAST(SUM(u.engine_ms) AS BIGINT) AS engine_ms,
                    CAST(SUM(u.cost_micros) AS BIGINT) AS cost_micros,
                    CAST(SUM(u.cache_hit) AS BIGINT) AS cache_hits
                 FROM usage u JOIN jobs j ON j.id = u.job_id
                 WHERE {} (j.status = 'succeeded' AND j.attempt = u.attempt)
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
                .fetch_all(&self.pool)
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

    async fn get(&self, id: &str) -> Result<Option<JobRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(record).transpose()
    }

    async fn list(&self, f: &ListFilter, limit: u32) -> Result<Vec<JobRecord>, StoreError> {
        let (after_ms, after_id) = f.after.clone().unzip();
        let rows = sqlx::query(
            "SELECT * FROM jobs
             WHERE ($1 IS NULL OR status = $1) AND ($2 IS NULL OR model = $2)
               AND ($3 IS NULL OR tenant = $3)
               AND ($4 IS NULL OR created_at >= $4) AND ($5 IS NULL OR created_at < $5)
               AND ($6 IS NULL OR (created_at, id) < ($6, $7))
             ORDER BY created_at DESC, id DESC LIMIT $8",
        )
        .bind(f.status.map(Status::as_str))
        .bind(&f.model)
        .bind(&f.tenant)
        .bind(f.since_ms)
        .bind(f.until_ms)
        .bind(after_ms)
        .bind(after_id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(record).collect()
    }

    async fn overdue(&self, now_ms: i64, limit: u32) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT id FROM jobs
             WHERE deadline_at IS NOT NULL AND status IN ('queued', 'assigned')
               AND deadline_at < $1
             ORDER BY deadline_at LIMIT $2",
        )
        .bind(now_ms)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?)
    }

    async fn unconfirmed(
        &self,
        created_before_ms: i64,
        limit: u32,
    ) -> Result<Vec<Job>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, job FROM jobs
             WHERE enqueued_at IS NULL AND status = 'queued' AND created_at < $1
             ORDER BY created_at LIMIT $2",
        )
        .bind(created_before_ms)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let id: String = row.try_get("id")?;
                let json: Option<String> = row.try_get("job")?;
                json.and_then(|j| serde_json::from_str(&j).ok())
                    .ok_or(StoreError::Corrupt {
                        id,
                        reason: "queued job without its body".into(),
                    })
            })
            .collect()
    }

    async fn claim_deliveries(
        &self,
        now_ms: i64,
        lease_until_ms: i64,
        limit: u32,
    ) -> Result<Vec<Delivery>, StoreError> {
        // A `queued` event waits for the queue's confirmation: a job the
        // queue refused is discarded, and its client was told so.
        let rows = sqlx::query(
            "UPDATE webhook_deliveries SET lease_until = $2
             WHERE id IN (
                SELECT d.id FROM webhook_deliveries d JOIN jobs j ON j.id = d.job_id
                WHERE d.state = 'pending' AND d.next_at <= $1 AND d.lease_until <= $1
                  AND j.enqueued_at IS NOT NULL
                ORDER BY d.next_at LIMIT $3)
               AND lease_until <= $1
             RETURNING id, job_id, tenant, url, event, payload, attempts",
        )
        .bind(now_ms)
        .bind(lease_until_ms)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
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
        let mut tx = self.pool.begin().await?;
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
        .fetch_all(&self.pool)
        .await?;
        let mut attempts: Vec<Attempt> = sqlx::query(
            "SELECT a.* FROM webhook_attempts a JOIN webhook_deliveries d ON d.id = a.delivery_id
             WHERE d.job_id = $1 ORDER BY a.delivery_id, a.number",
        )
        .bind(job_id)
        .fetch_all(&self.pool)
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
            .fetch_all(&self.pool)
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

    async fn forget(&self, before_ms: i64, limit: u32) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
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
        tx.commit().await?;
        Ok(outputs.rows_affected() + events.rows_affected())
    }

    async fn enable_endpoint(&self, url: &str, now_ms: i64) -> Result<Option<u64>, StoreError> {
        let mut tx = self.pool.begin().await?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_schemas::{
        CompletionInput, ErrorClass, JobError, JobInput, Priority, SCHEMA_VERSION, UsageEvent,
    };

    /// A fresh store: SQLite in a new folder, or, with
    /// `SY_TEST_POSTGRES` set to a server's URL, a new database there.
    async fn store() -> (SqlStore, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let url = match std::env::var("SY_TEST_POSTGRES") {
            Ok(server) => format!(
                "{}/sy_unit_{}",
                server.trim_end_matches('/'),
                uuid::Uuid::now_v7().simple()
            ),
            Err(_) => format!("sqlite://{}/sub/jobs.db", dir.path().display()),
        };
        (SqlStore::open(&url).await.unwrap(), dir)
    }

    fn job(id: &str) -> Job {
        Job {
            v: SCHEMA_VERSION,
            id: id.into(),
            model: "m".into(),
            tenant: "t".into(),
            priority: Priority::High,
            input: JobInput::Completion(CompletionInput {
                prompt: "p".into(),
                max_tokens: Some(2),
                temperature: None,
                sampling: Default::default(),
            }),
            metadata: [("k".to_owned(), "v".to_owned())].into(),
            submitted_at_ms: 1_000,
            attempt: 1,
            max_attempts: 3,
            failures: vec![],
            deadline_ms: None,
            timeout_ms: None,
            stream: false,
            webhook: None,
            api_key: None,
        }
    }

    fn event(id: &str, at: i64, kind: EventKind) -> JobEvent {
        JobEvent {
            v: SCHEMA_VERSION,
            job_id: id.into(),
            attempt: 1,
            at_ms: at,
            kind,
        }
    }

    fn result(id: &str, outcome: Outcome) -> JobResult {
        JobResult {
            v: SCHEMA_VERSION,
            job_id: id.into(),
            attempt: 1,
            node: Some("n1".into()),
            assigned_at_ms: Some(10),
            started_at_ms: Some(20),
            output_ref: None,
            finished_at_ms: 50,
            outcome,
        }
    }

    #[tokio::test]
    async fn lifecycle_moves_forward_only_and_ignores_repeats() {
        let (s, _dir) = store().await;
        s.insert(&job("a"), Source::Http).await.unwrap();
        s.insert(&job("a"), Source::Nats).await.unwrap();
        let ok = result(
            "a",
            Outcome::Succeeded {
                output: serde_json::json!({"x": 1}),
                usage: Usage {
                    prompt_tokens: 1,
                    completion_tokens: 2,
                },
            },
        );
        // Out of order: the result lands before the events, and alone gives
        // the whole timeline.
        s.apply_results(std::slice::from_ref(&ok)).await.unwrap();
        let early = s.get("a").await.unwrap().unwrap();
        assert_eq!(
            (early.assigned_at_ms, early.started_at_ms),
            (Some(10), Some(20))
        );
        s.apply_events(&[
            event("a", 10, EventKind::Assigned { node: "n1".into() }),
            event("a", 20, EventKind::Running { node: "n1".into() }),
        ])
        .await
        .unwrap();
        let failed = result(
            "a",
            Outcome::Failed {
                error: JobError::new(ErrorClass::Timeout, "late"),
            },
        );
        s.apply_results(&[failed]).await.unwrap();

        let r = s.get("a").await.unwrap().unwrap();
        assert_eq!(r.status, Status::Succeeded, "first final result wins");
        assert_eq!(r.source, "http", "the first insert wins");
        assert_eq!(r.assigned_at_ms, Some(10));
        assert_eq!(r.started_at_ms, Some(20));
        assert_eq!(r.finished_at_ms, Some(50));
        assert_eq!(r.node.as_deref(), Some("n1"));
        assert_eq!(r.output, Some(serde_json::json!({"x": 1})));
        assert_eq!(r.metadata["k"], "v");
        assert_eq!(
            r.usage,
            Some(Usage {
                prompt_tokens: 1,
                completion_tokens: 2
            })
        );
        assert!(s.get("missing").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_retry_starts_the_next_attempt_and_fences_the_old_one() {
        let (s, _dir) = store().await;
        s.insert(&job("a"), Source::Http).await.unwrap();
        let at = |attempt, at_ms, kind| JobEvent {
            attempt,
            ..event("a", at_ms, kind)
        };
        let busy = JobError::new(ErrorClass::Overloaded, "busy");
        s.apply_events(&[
            at(1, 10, EventKind::Assigned { node: "n1".into() }),
            at(1, 20, EventKind::Running { node: "n1".into() }),
            at(
                1,
                30,
                EventKind::Retrying {
                    node: "n1".into(),
                    error: busy,
                },
            ),
        ])
        .await
        .unwrap();
        let r = s.get("a").await.unwrap().unwrap();
        assert_eq!((r.status, r.attempt), (Status::Queued, 2));
        assert_eq!(
            (r.assigned_at_ms, r.started_at_ms, r.node),
            (None, None, None)
        );

        // A late event of attempt 1 does not move attempt 2 back.
        s.apply_events(&[
            at(2, 40, EventKind::Assigned { node: "n2".into() }),
            at(1, 25, EventKind::Running { node: "n1".into() }),
        ])
        .await
        .unwrap();
        let r = s.get("a").await.unwrap().unwrap();
        assert_eq!((r.status, r.attempt), (Status::Assigned, 2));
        assert_eq!(r.node.as_deref(), Some("n2"));
        assert_eq!((r.assigned_at_ms, r.started_at_ms), (Some(40), None));

        // Attempt 1's result, arriving late, is fenced out; attempt 2's is not.
        let late = JobError::new(ErrorClass::Timeout, "late");
        let stale = JobResult {
            attempt: 1,
            ..result("a", Outcome::Failed { error: late })
        };
        s.apply_results(&[stale]).await.unwrap();
        assert_eq!(s.get("a").await.unwrap().unwrap().status, Status::Assigned);
        let fresh = JobResult {
            attempt: 2,
            node: Some("n2".into()),
            ..result(
                "a",
                Outcome::Succeeded {
                    output: serde_json::json!({}),
                    usage: Usage::default(),
                },
            )
        };
        s.apply_results(&[fresh]).await.unwrap();
        let r = s.get("a").await.unwrap().unwrap();
        assert_eq!((r.status, r.attempt), (Status::Succeeded, 2));
        assert_eq!(r.node.as_deref(), Some("n2"));
    }

    #[tokio::test]
    async fn insert_reports_existing_jobs_and_whether_they_were_queued() {
        let (s, _dir) = store().await;
        assert_eq!(
            s.insert(&job("a"), Source::Nats).await.unwrap(),
            Inserted::New
        );
        assert_eq!(
            s.insert(&job("a"), Source::Nats).await.unwrap(),
            Inserted::Existing { enqueued: false }
        );
        s.mark_enqueued("a", 5).await.unwrap();
        assert_eq!(
            s.insert(&job("a"), Source::Nats).await.unwrap(),
            Inserted::Existing { enqueued: true }
        );
    }

    #[tokio::test]
    async fn an_idempotency_key_holds_one_job_within_its_window() {
        let (s, _dir) = store().await;
        assert_eq!(s.claim_key("k", "j1", 1_000, 0).await.unwrap(), "j1");
        assert_eq!(
            s.claim_key("k", "j2", 2_000, 500).await.unwrap(),
            "j1",
            "fresh: kept"
        );
        assert_eq!(
            s.claim_key("k", "j3", 3_000, 1_500).await.unwrap(),
            "j3",
            "expired: reused"
        );
        s.release_key("k", "j2").await.unwrap();
        assert_eq!(
            s.claim_key("k", "j4", 3_001, 0).await.unwrap(),
            "j3",
            "only the holder releases"
        );
        s.release_key("k", "j3").await.unwrap();
        assert_eq!(s.claim_key("k", "j5", 3_002, 0).await.unwrap(), "j5");
    }

    #[tokio::test]
    async fn a_key_whose_job_was_never_recorded_is_taken_over_after_a_while() {
        let (s, _dir) = store().await;
        let later = 1_000 + ABANDONED_CLAIM_MS;
        assert_eq!(s.claim_key("lost", "j1", 1_000, 0).await.unwrap(), "j1");
        assert_eq!(
            s.claim_key("lost", "j2", later - 1, 0).await.unwrap(),
            "j1",
            "maybe still in flight: kept"
        );
        assert_eq!(
            s.claim_key("lost", "j3", later + 1, 0).await.unwrap(),
            "j3",
            "abandoned: taken over"
        );
        s.insert(&job("a"), Source::Http).await.unwrap();
        assert_eq!(s.claim_key("kept", "a", 1_000, 0).await.unwrap(), "a");
        assert_eq!(
            s.claim_key("kept", "j4", later + 1, 0).await.unwrap(),
            "a",
            "its job exists: kept for the window"
        );
    }

    #[tokio::test]
    async fn unconfirmed_jobs_are_found_until_marked() {
        let (s, _dir) = store().await;
        s.insert(&job("a"), Source::Http).await.unwrap();
        s.insert(&job("b"), Source::Http).await.unwrap();
        s.mark_enqueued("b", 5).await.unwrap();
        let found = s.unconfirmed(2_000, 10).await.unwrap();
        assert_eq!(found, vec![job("a")]);
        assert!(
            s.unconfirmed(500, 10).await.unwrap().is_empty(),
            "too young"
        );
        s.discard_unqueued("a").await.unwrap();
        s.discard_unqueued("b").await.unwrap();
        assert!(s.unconfirmed(2_000, 10).await.unwrap().is_empty());
        assert!(
            s.get("a").await.unwrap().is_none(),
            "refused by the queue: forgotten"
        );
        assert!(
            s.get("b").await.unwrap().is_some(),
            "queued jobs are never discarded"
        );
    }

    #[tokio::test]
    async fn overdue_jobs_are_those_not_started_by_their_deadline() {
        let (s, _dir) = store().await;
        let with_deadline = |id: &str, ms| Job {
            deadline_ms: Some(ms),
            ..job(id)
        };
        s.insert(&with_deadline("late", 1_500), Source::Http)
            .await
            .unwrap();
        s.insert(&with_deadline("later", 1_800), Source::Http)
            .await
            .unwrap();
        s.insert(&with_deadline("in-time", 9_000), Source::Http)
            .await
            .unwrap();
        s.insert(&with_deadline("started", 1_500), Source::Http)
            .await
            .unwrap();
        s.insert(&job("no-deadline"), Source::Http).await.unwrap();
        s.apply_events(&[event(
            "started",
            1_200,
            EventKind::Running { node: "n".into() },
        )])
        .await
        .unwrap();
        assert_eq!(s.overdue(2_000, 10).await.unwrap(), ["late", "later"]);
        assert_eq!(
            s.overdue(2_000, 1).await.unwrap(),
            ["late"],
            "soonest first"
        );
        assert!(s.overdue(1_000, 10).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn usage_is_recorded_once_per_attempt() {
        let (s, _dir) = store().await;
        let u = UsageEvent {
            v: SCHEMA_VERSION,
            job_id: "a".into(),
            attempt: 1,
            node: "n".into(),
            model: "m".into(),
            usage: Usage {
                prompt_tokens: 3,
                completion_tokens: 4,
            },
            engine_ms: 5,
            at_ms: 6,
        };
        let c = Charge {
            usage: u,
            cost_micros: 7,
            cache_hit: false,
        };
        s.record_usage(&[c.clone(), c.clone()]).await.unwrap();
        s.record_usage(&[c]).await.unwrap();
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM usage")
            .fetch_one(&s.pool)
            .await
            .unwrap();
        assert_eq!(n, 1);
    }

    #[tokio::test]
    async fn a_limit_admits_its_burst_then_one_per_interval_and_corrects_once() {
        let (s, _dir) = store().await;
        let take = |cost_us, tolerance_us| Take {
            key: "t:tpm".into(),
            limit: "tokens_per_minute",
            cost_us,
            tolerance_us,
        };
        // A burst of three (tolerance two intervals), then the fourth waits
        // one interval.
        for _ in 0..3 {
            assert_eq!(s.take(&[take(100, 200)], 1_000).await.unwrap(), None);
        }
        assert_eq!(
            s.take(&[take(100, 200)], 1_000).await.unwrap(),
            Some(("tokens_per_minute", 100))
        );
        assert_eq!(s.take(&[take(100, 200)], 1_100).await.unwrap(), None);

        // A job's real tokens replace its estimate in its tenant's limit and
        // its key's, once however often its result is seen.
        let key_take = Take {
            key: "key:k1:tpm".into(),
            ..take(100, 200)
        };
        assert_eq!(s.take(&[key_take], 1_000).await.unwrap(), None);
        let mut j = job("est");
        j.tenant = "t".into();
        j.api_key = Some("k1".into());
        s.insert(&j, Source::Http).await.unwrap();
        let tat = |key: &'static str| {
            let pool = &s.pool;
            async move {
                sqlx::query_scalar::<_, i64>("SELECT tat FROM rate_limits WHERE key = $1")
                    .bind(key)
                    .fetch_one(pool)
                    .await
                    .unwrap()
            }
        };
        let before = (tat("t:tpm").await, tat("key:k1:tpm").await);
        // The key's tokens cost twice the tenant's.
        let rate = |holder: &str| match holder {
            "t" => Some(("t:tpm".to_owned(), 1)),
            "key:k1" => Some(("key:k1:tpm".to_owned(), 2)),
            _ => None,
        };
        let estimate = i64::from(crate::budget::tokens(&j));
        for _ in 0..2 {
            s.correct_limits(&[("est".into(), 8)], &rate).await.unwrap();
        }
        assert_eq!(
            (tat("t:tpm").await, tat("key:k1:tpm").await),
            (before.0 + 8 - estimate, before.1 + 2 * (8 - estimate))
        );
    }

    #[tokio::test]
    async fn a_job_takes_a_place_of_each_holder_or_none() {
        let (s, _dir) = store().await;
        let holders = |key_max| [("t".to_owned(), 3), ("key:k".to_owned(), key_max)];
        assert_eq!(s.take_places("a", &holders(1)).await.unwrap(), None);
        // Taken again by the same job: it keeps its places.
        assert_eq!(s.take_places("a", &holders(1)).await.unwrap(), None);
        // The key is full: the tenant's place is not taken either.
        assert_eq!(s.take_places("b", &holders(1)).await.unwrap(), Some(1));
        assert_eq!(s.take_places("c", &holders(2)).await.unwrap(), None);
        assert_eq!(s.take_places("d", &holders(5)).await.unwrap(), None);
        assert_eq!(s.take_places("e", &holders(5)).await.unwrap(), Some(0));
        s.settle(&["a".to_owned(), "a".to_owned()], &|_| 0)
            .await
            .unwrap();
        assert_eq!(s.take_places("e", &holders(5)).await.unwrap(), None);
        assert_eq!(s.take_places("f", &holders(5)).await.unwrap(), Some(0));
    }
}
