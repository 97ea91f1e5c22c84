//! Job records: admission writes, the projection of events and results,
//! and the webhook deliveries those changes call for, written in the same
//! transaction.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use sqlx::any::AnyRow;
use sqlx::{Any, AnyConnection, Row, Transaction};
use switchyard_schemas::{EventKind, Job, JobEvent, JobResult, now_ms};

use super::outbox::insert_delivery;
use super::rows::{Marks, statements};
use super::{Page, RECORD, SqlStore, Writer, page, params, projection, quotas, record};
use crate::ledger::Charge;
use crate::outbox::{body, delivery_id, event_for};
use crate::runs::NewDelivery;
use crate::{
    Applied, Holds, Inserted, JobRecord, JobRecords, ListFilter, Recording, RejectedJob, Source,
    Status, StoreError,
};

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
    let rows = of_jobs(tx, "id", "webhook_url IS NOT NULL AND", &ids).await?;
    rows.iter()
        .map(|row| row.try_get("id").map_err(StoreError::from))
        .collect()
}

/// The indices of the `items` that are `so`.
fn indices<T>(items: &[T], so: impl Fn(&T) -> bool) -> Vec<usize> {
    (0..items.len()).filter(|&i| so(&items[i])).collect()
}

/// `columns` of the jobs `ids` that meet `condition` (an SQL condition
/// ending in `AND`, or nothing), in one read.
async fn of_jobs(
    conn: &mut AnyConnection,
    columns: &str,
    condition: &str,
    ids: &[&str],
) -> Result<Vec<AnyRow>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT {columns} FROM jobs WHERE {condition} id IN ({})",
        params(1, ids.len())
    );
    let mut query = sqlx::query(&sql);
    for id in ids {
        query = query.bind(*id);
    }
    query.fetch_all(conn).await
}

/// Writes the webhook delivery `report` calls for, if the job's webhook
/// asks for that event. Its id makes a repeat a no-op.
async fn queue_webhook(
    conn: &mut AnyConnection,
    id: &str,
    report: Report,
) -> Result<(), StoreError> {
    let Some(row) = sqlx::query("SELECT * FROM jobs WHERE id = $1 AND webhook_url IS NOT NULL")
        .bind(id)
        .fetch_optional(&mut *conn)
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
    insert_delivery(conn, &delivery).await
}

/// The `jobs` columns admission writes, and their types.
const RECORDED: [(&str, &str); 17] = [
    ("status", "TEXT"),
    ("id", "TEXT"),
    ("model", "TEXT"),
    ("priority", "TEXT"),
    ("source", "TEXT"),
    ("job", "TEXT"),
    ("metadata", "TEXT"),
    ("attempt", "BIGINT"),
    ("created_at", "BIGINT"),
    ("tenant", "TEXT"),
    ("deadline_at", "BIGINT"),
    ("webhook_url", "TEXT"),
    ("webhook_events", "TEXT"),
    ("tokens_estimate", "BIGINT"),
    ("api_key", "TEXT"),
    ("alias", "TEXT"),
    ("trace_id", "TEXT"),
];

/// Records each job in `tx` unless its id is taken: `New`, `Existing` (the
/// same tenant's) or `OtherTenant`, in the order of `jobs`. Writes nothing
/// but the new jobs (and their webhooks' first reports), so a transaction
/// holding several is never undone for one of them.
async fn record_jobs(
    conn: &mut AnyConnection,
    jobs: &[Recording<'_>],
) -> Result<Vec<Inserted>, StoreError> {
    let mut found = vec![Inserted::New; jobs.len()];
    let indexed: Vec<(usize, &Recording)> = jobs.iter().enumerate().collect();
    let columns: Vec<&str> = RECORDED.iter().map(|(c, _)| *c).collect();
    let types: Vec<&str> = RECORDED.iter().map(|(_, t)| *t).collect();
    for rows in statements(&indexed, |(_, r)| r.job.id.as_str()) {
        let sql = format!(
            "INSERT INTO jobs ({}) VALUES {} ON CONFLICT (id) DO NOTHING RETURNING id",
            columns.join(", "),
            Marks::of(conn).values(rows.len(), &types)
        );
        let mut query = sqlx::query(&sql);
        for (_, r) in &rows {
            let job = r.job;
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
            query = query
                .bind(Status::Queued.as_str())
                .bind(&job.id)
                .bind(&job.model)
                .bind(job.priority.as_str())
                .bind(r.source.as_str())
                .bind(json)
                .bind(metadata)
                .bind(i64::from(job.attempt))
                .bind(job.submitted_at_ms)
                .bind(&job.tenant)
                .bind(job.deadline_ms)
                .bind(webhook.map(|w| &w.url))
                .bind(events)
                .bind(i64::from(r.tokens_estimate))
                .bind(&job.api_key)
                .bind(&job.alias)
                .bind(&job.trace_id);
        }
        let new: HashSet<String> = query
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(|row| row.try_get("id"))
            .collect::<Result<_, _>>()?;
        let taken: Vec<&str> = rows
            .iter()
            .map(|(_, r)| r.job.id.as_str())
            .filter(|id| !new.contains(*id))
            .collect();
        let held = held(conn, &taken).await?;
        for (i, r) in rows {
            let job = r.job;
            found[*i] = match held.get(job.id.as_str()) {
                None => {
                    if job.webhook.is_some() {
                        queue_webhook(conn, &job.id, Report::Recorded).await?;
                    }
                    Inserted::New
                }
                Some((tenant, _)) if *tenant != job.tenant => Inserted::OtherTenant,
                Some((_, enqueued)) => Inserted::Existing {
                    enqueued: *enqueued,
                },
            };
        }
    }
    Ok(found)
}

/// The tenant of each of the jobs `ids` already recorded, and whether its
/// queue confirmed it.
async fn held(
    conn: &mut AnyConnection,
    ids: &[&str],
) -> Result<HashMap<String, (String, bool)>, StoreError> {
    let rows = of_jobs(conn, "id, tenant, enqueued_at", "", ids).await?;
    let mut held = HashMap::new();
    for row in rows {
        let enqueued = row.try_get::<Option<i64>, _>("enqueued_at")?.is_some();
        held.insert(row.try_get("id")?, (row.try_get("tenant")?, enqueued));
    }
    Ok(held)
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
        let (mut tx, _turn) = self.begin_write(Writer::Request).await?;
        let recording = Recording {
            job,
            source,
            tokens_estimate,
        };
        let found = record_jobs(&mut tx, &[recording]).await?[0];
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
        if let [alone] = jobs
            && alone.job.webhook.is_none()
        {
            // One job writes one statement, whole or not at all on its own:
            // a transaction around it would cost two more trips to the
            // database, the whole of a quiet broker's admission but for them.
            let _turn = self.turn(Writer::Request).await;
            let mut conn = self.pool().acquire().await?;
            return record_jobs(&mut conn, jobs).await;
        }
        let (mut tx, _turn) = self.begin_write(Writer::Request).await?;
        let found = record_jobs(&mut tx, jobs).await?;
        tx.commit().await?;
        Ok(found)
    }

    async fn mark_enqueued(&self, ids: &[String], at_ms: i64) -> Result<(), StoreError> {
        let _turn = self.turn(Writer::Background).await;
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
        let _turn = self.turn(Writer::Request).await;
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
        let (mut tx, _turn) = self.begin_write(Writer::Request).await?;
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
        let _turn = self.turn(Writer::Background).await;
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

    async fn apply_events(&self, events: &[JobEvent]) -> Result<Vec<usize>, StoreError> {
        let (mut tx, _turn) = self.begin_write(Writer::Background).await?;
        let written = projection::events(&mut tx, events).await?;
        let known = events
            .iter()
            .filter(|e| !matches!(e.kind, EventKind::Unknown));
        let missing =
            projection::unrecorded(&mut tx, known.map(|e| e.job_id.as_str()), &written).await?;
        let started: Vec<&JobEvent> = events
            .iter()
            .filter(|e| matches!(e.kind, EventKind::Running { .. }))
            .collect();
        let hooked = hooked(&mut tx, started.iter().map(|e| e.job_id.as_str())).await?;
        for e in started.into_iter().filter(|e| hooked.contains(&e.job_id)) {
            queue_webhook(&mut tx, &e.job_id, Report::Started(e.attempt)).await?;
        }
        tx.commit().await?;
        Ok(indices(events, |e| missing.contains(&e.job_id)))
    }

    async fn apply_results(
        &self,
        results: &[JobResult],
        charges: &[Charge],
        wanted: &(dyn for<'w> Fn(&'w str) -> bool + Sync),
    ) -> Result<Applied, StoreError> {
        let (mut tx, _turn) = self.begin_write(Writer::Background).await?;
        let (records, written) = projection::results(&mut tx, results, wanted).await?;
        let ids = results.iter().map(|r| r.job_id.as_str());
        let missing = projection::unrecorded(&mut tx, ids, &written).await?;
        let new = projection::charges(&mut tx, charges, &missing).await?;
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
        Ok(Applied {
            new_charges: new,
            records,
            unrecorded: indices(results, |r| missing.contains(&r.job_id)),
        })
    }

    async fn get(&self, id: &str) -> Result<Option<JobRecord>, StoreError> {
        let row = sqlx::query(&format!("SELECT {RECORD} FROM jobs WHERE id = $1"))
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(record).transpose()
    }

    async fn recorded(&self, ids: &[&str]) -> Result<HashSet<String>, StoreError> {
        let mut conn = self.pool().acquire().await?;
        Ok(projection::recorded(&mut conn, ids).await?)
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
