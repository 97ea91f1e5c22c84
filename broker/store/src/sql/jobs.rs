//! Job records and idempotency keys: admission writes, the projection of
//! events and results, and the webhook deliveries those changes call for,
//! written in the same transaction.

use std::collections::HashSet;

use async_trait::async_trait;
use sqlx::{Any, Row, Transaction};
use switchyard_schemas::{EventKind, Job, JobEvent, JobResult, Outcome, now_ms};

use super::outbox::insert_delivery;
use super::{Page, SqlStore, ledger, page, params, quotas, record};
use crate::ledger::Charge;
use crate::outbox::{body, delivery_id, event_for};
use crate::runs::NewDelivery;
use crate::{
    Holds, Idempotency, Inserted, JobRecord, JobRecords, ListFilter, Recording, RejectedJob,
    Source, Status, StoreError,
};

/// A key claimed this long ago whose job was never recorded belongs to a
/// request that failed and could not release it (the store was failing
/// too): the next request with the key takes it over. A request in flight
/// records its job well within this.
pub(super) const ABANDONED_CLAIM_MS: i64 = 15_000;

/// Whether an event is ahead of the job's recorded (attempt, stage), with the
/// event's attempt as `$1` and stage as `$2`.
const AHEAD: &str = "(attempt < $1 OR (attempt = $1 AND (CASE status \
    WHEN 'queued' THEN 0 WHEN 'assigned' THEN 1 WHEN 'running' THEN 2 ELSE 3 END) < $2))";

impl SqlStore {
    async fn apply_event(tx: &mut Transaction<'_, Any>, e: &JobEvent) -> Result<(), sqlx::Error> {
        // Progress is ordered by (attempt, stage): a job only moves forward,
        // a retry starts the next attempt at `queued`, and a late event of an
        // earlier attempt changes nothing but a timestamp it was missing.
        let (attempt, stage, status, node, assigned_at, started_at) = match &e.kind {
            EventKind::Unknown => return Ok(()),
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
        // The first final result wins, whatever its attempt: results come
        // from the RESULTS stream, which keeps one per job, so the record
        // and the stream agree by construction. (A result of attempt 1 may
        // be projected after attempt 2 was queued; it is still the job's.)
        sqlx::query(
            "UPDATE jobs SET status = $1, output = $2, error_code = $3, error_message = $4,
                prompt_tokens = $5, completion_tokens = $6, finished_at = $7,
                node = COALESCE($8, node),
                assigned_at = CASE WHEN attempt <> $9 THEN $11 ELSE COALESCE(assigned_at, $11) END,
                started_at = CASE WHEN attempt <> $9 THEN $12 ELSE COALESCE(started_at, $12) END,
                attempt = $9
             WHERE id = $10 AND status NOT IN ('succeeded', 'failed', 'expired', 'timed_out', 'cancelled')",
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

/// What a webhook delivery reports.
#[derive(Clone, Copy)]
enum Report {
    /// The job was just recorded (`queued`).
    Recorded,
    /// This attempt began running. Named outright, not read from the
    /// status: the result may have been recorded first (the streams are
    /// projected independently), and the job still started.
    Started(u32),
    /// Whatever the job's recorded status calls for.
    Status,
}

/// Of the jobs `ids`, those with a webhook: one read for a batch, so that
/// the jobs without one (most) cost no look-up each. Read after the
/// batch's first write: a transaction that reads first in SQLite may find
/// another writer has moved on when it comes to write, and fail.
async fn hooked<'a>(
    tx: &mut Transaction<'_, Any>,
    ids: impl Iterator<Item = &'a str>,
) -> Result<HashSet<String>, StoreError> {
    let ids: Vec<&str> = ids.collect();
    if ids.is_empty() {
        return Ok(HashSet::new());
    }
    let sql = format!(
        "SELECT id FROM jobs WHERE webhook_url IS NOT NULL AND id IN ({})",
        params(1, ids.len())
    );
    let mut query = sqlx::query(&sql);
    for id in ids {
        query = query.bind(id);
    }
    let rows = query.fetch_all(&mut **tx).await?;
    rows.iter()
        .map(|row| row.try_get("id").map_err(StoreError::from))
        .collect()
}

/// Writes the webhook delivery `report` calls for, if the job's webhook
/// asks for that event. Its id makes a repeat a no-op.
async fn queue_webhook(
    tx: &mut Transaction<'_, Any>,
    id: &str,
    report: Report,
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
    let event = match report {
        Report::Recorded => event_for(record.status, true),
        Report::Started(attempt) => {
            (record.attempt == attempt).then_some(switchyard_schemas::WebhookEvent::Started)
        }
        Report::Status => event_for(record.status, false),
    };
    let Some(event) = event else {
        return Ok(());
    };
    if !wanted
        .unwrap_or_default()
        .split(',')
        .any(|e| e == event.as_str())
    {
        return Ok(());
    }
    let delivery = NewDelivery {
        id: delivery_id(&record, event),
        subject_id: record.id.clone(),
        tenant: record.tenant.clone(),
        url,
        event: event.as_str().to_owned(),
        payload: body(&record, event),
        at_ms: now_ms(),
    };
    insert_delivery(&mut **tx, &delivery).await
}

/// Records `job` in `tx` unless its id is taken: `New`, `Existing` (the
/// same tenant's) or `OtherTenant`. Writes nothing but the new job (and its
/// webhook's first report), so a transaction holding several is never
/// undone for one of them.
async fn record_job(
    tx: &mut Transaction<'_, Any>,
    job: &Job,
    source: Source,
    tokens_estimate: u32,
) -> Result<Inserted, StoreError> {
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
    let inserted = sqlx::query(
        "INSERT INTO jobs (id, model, priority, source, status, job, metadata, attempt, created_at,
            tenant, deadline_at, webhook_url, webhook_events, tokens_estimate, api_key, alias,
            trace_id)
         VALUES ($1, $2, $3, $4, 'queued', $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
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
    .bind(i64::from(tokens_estimate))
    .bind(&job.api_key)
    .bind(&job.alias)
    .bind(&job.trace_id)
    .execute(&mut **tx)
    .await?;
    if inserted.rows_affected() == 1 {
        if webhook.is_some() {
            queue_webhook(tx, &job.id, Report::Recorded).await?;
        }
        return Ok(Inserted::New);
    }
    let held = sqlx::query("SELECT tenant, enqueued_at FROM jobs WHERE id = $1")
        .bind(&job.id)
        .fetch_one(&mut **tx)
        .await?;
    if held.try_get::<String, _>("tenant")? != job.tenant {
        return Ok(Inserted::OtherTenant);
    }
    Ok(Inserted::Existing {
        enqueued: held.try_get::<Option<i64>, _>("enqueued_at")?.is_some(),
    })
}

#[async_trait]
impl JobRecords for SqlStore {
    async fn insert(
        &self,
        job: &Job,
        source: Source,
        tokens_estimate: u32,
        holds: &Holds,
    ) -> Result<Inserted, StoreError> {
        let mut tx = self.pool().begin().await?;
        let found = record_job(&mut tx, job, source, tokens_estimate).await?;
        match found {
            Inserted::OtherTenant => {
                tx.rollback().await?;
                return Ok(found);
            }
            Inserted::Existing { enqueued: true } => {
                tx.commit().await?;
                return Ok(found);
            }
            _ => {}
        }
        if let Some(full) = quotas::take_places(&mut tx, &job.id, &holds.places).await? {
            tx.rollback().await?;
            return Ok(Inserted::PlacesFull(full));
        }
        if let Some(r) = &holds.reservation
            && let Some(left) = quotas::reserve(&mut tx, &job.id, r).await?
        {
            tx.rollback().await?;
            return Ok(Inserted::OverBudget(left));
        }
        tx.commit().await?;
        Ok(found)
    }

    async fn insert_many(&self, jobs: &[Recording<'_>]) -> Result<Vec<Inserted>, StoreError> {
        let mut tx = self.pool().begin().await?;
        let mut found = Vec::with_capacity(jobs.len());
        for r in jobs {
            found.push(record_job(&mut tx, r.job, r.source, r.tokens_estimate).await?);
        }
        tx.commit().await?;
        Ok(found)
    }

    async fn mark_enqueued(&self, ids: &[String], at_ms: i64) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "UPDATE jobs SET enqueued_at = COALESCE(enqueued_at, $1) WHERE id IN ({})",
            params(2, ids.len())
        );
        let mut marked = sqlx::query(&sql).bind(at_ms);
        for id in ids {
            marked = marked.bind(id);
        }
        marked.execute(self.pool()).await?;
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
        .execute(self.pool())
        .await?;
        Ok(reopened.rows_affected() == 1)
    }

    async fn discard_unqueued(&self, id: &str) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
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
        .execute(self.pool())
        .await?;
        let holder: String = sqlx::query_scalar("SELECT tenant FROM jobs WHERE id = $1")
            .bind(&job.id)
            .fetch_one(self.pool())
            .await?;
        if holder != job.tenant {
            sqlx::query(
                "INSERT INTO id_refusals (tenant, id, code, message, created_at)
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant, id) DO NOTHING",
            )
            .bind(&job.tenant)
            .bind(&job.id)
            .bind(&job.code)
            .bind(&job.message)
            .bind(job.at_ms)
            .execute(self.pool())
            .await?;
        }
        Ok(holder)
    }

    async fn id_refusal(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<Option<(String, String)>, StoreError> {
        let row =
            sqlx::query("SELECT code, message FROM id_refusals WHERE tenant = $1 AND id = $2")
                .bind(tenant)
                .bind(id)
                .fetch_optional(self.pool())
                .await?;
        Ok(row.map(|r| (r.get("code"), r.get("message"))))
    }

    async fn apply_events(&self, events: &[JobEvent]) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
        for e in events {
            Self::apply_event(&mut tx, e).await?;
        }
        let started: Vec<&JobEvent> = events
            .iter()
            .filter(|e| matches!(e.kind, EventKind::Running { .. }))
            .collect();
        let hooked = hooked(&mut tx, started.iter().map(|e| e.job_id.as_str())).await?;
        for e in started.into_iter().filter(|e| hooked.contains(&e.job_id)) {
            queue_webhook(&mut tx, &e.job_id, Report::Started(e.attempt)).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn apply_results(
        &self,
        results: &[JobResult],
        charges: &[Charge],
    ) -> Result<Vec<usize>, StoreError> {
        let mut tx = self.pool().begin().await?;
        for r in results {
            Self::apply_result(&mut tx, r).await?;
        }
        let new = ledger::insert_charges(&mut tx, charges).await?;
        let hooked = hooked(&mut tx, results.iter().map(|r| r.job_id.as_str())).await?;
        for r in results.iter().filter(|r| hooked.contains(&r.job_id)) {
            // A job its engine answered at once has no `running` event: its
            // result says it started.
            if r.started_at_ms.is_some() {
                queue_webhook(&mut tx, &r.job_id, Report::Started(r.attempt)).await?;
            }
            queue_webhook(&mut tx, &r.job_id, Report::Status).await?;
        }
        tx.commit().await?;
        Ok(new)
    }

    async fn get(&self, id: &str) -> Result<Option<JobRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(record).transpose()
    }

    async fn input(&self, id: &str) -> Result<Option<serde_json::Value>, StoreError> {
        let json: Option<Option<String>> = sqlx::query_scalar("SELECT job FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        let Some(json) = json.flatten() else {
            return Ok(None);
        };
        let mut job: serde_json::Value = serde_json::from_str(&json)
            .map_err(|e| crate::corrupt(id.to_owned())(e.to_string()))?;
        Ok(job.get_mut("input").map(serde_json::Value::take))
    }

    async fn list(&self, f: &ListFilter, limit: u32) -> Result<Vec<JobRecord>, StoreError> {
        let filter = Page {
            by: &[
                ("status", f.status.map(Status::as_str)),
                ("tenant", f.tenant.as_deref()),
                ("model", f.model.as_deref()),
                ("priority", f.priority.as_deref()),
                ("node", f.node.as_deref()),
            ],
            since_ms: f.since_ms,
            until_ms: f.until_ms,
            after: f.after.as_ref(),
            limit,
        };
        let rows = page(self.pool(), "jobs", filter).await?;
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
        .fetch_all(self.pool())
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
        .fetch_all(self.pool())
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
}

#[async_trait]
impl Idempotency for SqlStore {
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
        .fetch_optional(self.pool())
        .await?;
        let holder = match claimed {
            Some(id) => id,
            None => {
                sqlx::query_scalar("SELECT job_id FROM idempotency WHERE key = $1")
                    .bind(key)
                    .fetch_one(self.pool())
                    .await?
            }
        };
        Ok(holder)
    }

    async fn release_key(&self, key: &str, job_id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM idempotency WHERE key = $1 AND job_id = $2")
            .bind(key)
            .bind(job_id)
            .execute(self.pool())
            .await?;
        Ok(())
    }
}
