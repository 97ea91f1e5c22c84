//! Workflow runs' rows, and the webhook events of their ends.

use async_trait::async_trait;
use sqlx::Row;
use sqlx::any::AnyRow;
use switchyard_schemas::{WebhookEvent, WebhookTarget};

use super::outbox::insert_delivery;
use super::{Page, SqlStore, Writer, int, page, quotas};
use crate::StoreError;
use crate::quotas::run_reservation;
use crate::runs::{NewDelivery, RunEnd, RunFilter, RunRecords, RunRow};

fn run(row: &AnyRow) -> Result<RunRow, StoreError> {
    let url: Option<String> = row.try_get("webhook_url")?;
    let events: Option<String> = row.try_get("webhook_events")?;
    let webhook = url.map(|url| WebhookTarget {
        url,
        events: events
            .unwrap_or_default()
            .split(',')
            .filter_map(WebhookEvent::parse)
            .collect(),
    });
    Ok(RunRow {
        id: row.try_get("id")?,
        tenant: row.try_get("tenant")?,
        workflow: row.try_get("workflow")?,
        version: int(row, "version")?,
        priority: row.try_get("priority")?,
        status: row.try_get("status")?,
        created_at_ms: row.try_get("created_at")?,
        ended_at_ms: row.try_get("ended_at")?,
        error: row.try_get("error")?,
        webhook,
    })
}

#[async_trait]
impl RunRecords for SqlStore {
    async fn apply_runs(
        &self,
        started: &[RunRow],
        ended: &[RunEnd],
    ) -> Result<Vec<RunRow>, StoreError> {
        let (mut tx, _turn) = self.begin_write(Writer::Background).await?;
        for r in started {
            let events = r.webhook.as_ref().map(|w| {
                w.events
                    .iter()
                    .map(|e| e.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            });
            sqlx::query(
                "INSERT INTO workflow_runs (id, tenant, workflow, version, priority, status,
                    created_at, webhook_url, webhook_events)
                 VALUES ($1, $2, $3, $4, $5, 'running', $6, $7, $8)
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(&r.id)
            .bind(&r.tenant)
            .bind(&r.workflow)
            .bind(i64::from(r.version))
            .bind(&r.priority)
            .bind(r.created_at_ms)
            .bind(r.webhook.as_ref().map(|w| w.url.as_str()))
            .bind(events)
            .execute(&mut *tx)
            .await?;
        }
        let mut rows = Vec::with_capacity(ended.len());
        for e in ended {
            // An end moves a running run; a replay (`running`) moves a
            // dead-lettered one back: applied again, either changes nothing.
            let reopen = e.status == "running";
            let from = match reopen {
                true => "failed_compensation",
                false => "running",
            };
            sqlx::query(
                "UPDATE workflow_runs SET status = $2, ended_at = $3, error = $4
                 WHERE id = $1 AND status = $5",
            )
            .bind(&e.id)
            .bind(&e.status)
            .bind((!reopen).then_some(e.at_ms))
            .bind(&e.error)
            .bind(from)
            .execute(&mut *tx)
            .await?;
            if !reopen {
                // What its jobs did not draw of the run's reservation.
                quotas::release(&mut tx, &run_reservation(&e.id), 0).await?;
            }
            let row = sqlx::query("SELECT * FROM workflow_runs WHERE id = $1")
                .bind(&e.id)
                .fetch_optional(&mut *tx)
                .await?;
            if let Some(row) = row {
                rows.push(run(&row)?);
            }
        }
        tx.commit().await?;
        Ok(rows)
    }

    async fn list_runs(&self, f: &RunFilter, limit: u32) -> Result<Vec<RunRow>, StoreError> {
        let filter = Page {
            by: &[
                ("status", f.status.as_deref()),
                ("tenant", f.tenant.as_deref()),
                ("workflow", f.workflow.as_deref()),
            ],
            since_ms: f.since_ms,
            until_ms: f.until_ms,
            after: f.after.as_ref(),
            limit,
        };
        let rows = page(self.pool(), "workflow_runs", filter).await?;
        rows.iter().map(run).collect()
    }

    async fn queue_delivery(&self, delivery: &NewDelivery) -> Result<(), StoreError> {
        let _turn = self.turn(Writer::Background).await;
        insert_delivery(self.pool(), delivery).await
    }
}
