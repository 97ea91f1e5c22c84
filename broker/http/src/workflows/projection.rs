//! Keeps the store's rows of runs in step with their histories: a run's
//! start and end, written in batches and acknowledged after the commit,
//! and the webhook event of its end queued with the run as the API shows
//! it. Every write is idempotent, so a redelivered event changes nothing.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::Message;
use async_nats::jetstream::consumer::PullConsumer;
use serde_json::json;
use switchyard_core::projection::follow_with;
use switchyard_schemas::{WebhookEvent, now_ms};
use switchyard_store::runs::{NewDelivery, RunEnd, RunRow};
use switchyard_store::view::rfc3339;
use switchyard_store::{JobStore, StoreError};
use switchyard_workflows::journal::{self, JournalError};
use switchyard_workflows::runs::Runs;
use switchyard_workflows::{RunEvent, RunStatus, Workflows};
use tokio_util::sync::CancellationToken;

use super::record::settled;

/// How long a run's end waits for its jobs' ends to be recorded before it
/// is reported without them.
const JOBS_GRACE: Duration = Duration::from_secs(10);

/// Why a batch of run events was not recorded (it is delivered again).
#[derive(Debug, thiserror::Error)]
pub enum ProjectRunsError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Journal(#[from] JournalError),
}

/// What the projection reads besides the store.
#[derive(Clone)]
pub struct RunSources {
    pub runs: Runs,
    pub workflows: Arc<Workflows>,
}

/// Follows the run histories until `shutdown`.
pub async fn follow_runs(
    consumer: PullConsumer,
    batch: usize,
    store: Arc<dyn JobStore>,
    sources: RunSources,
    shutdown: CancellationToken,
) {
    let apply = move |store: Arc<dyn JobStore>, items: Vec<Option<(String, RunEvent)>>| {
        let sources = sources.clone();
        // A run's history is written by its engine alone: nothing waits
        // on another record.
        async move { apply(&sources, store, items).await.map(|()| Vec::new()) }
    };
    follow_with(
        journal::STREAM,
        consumer,
        batch,
        store,
        (read, |_: &Option<(String, RunEvent)>| true, apply),
        shutdown,
    )
    .await
}

/// A run's start, end or replay, with its run's id; `None` for its other
/// events.
fn read(msg: &Message) -> Result<Option<(String, RunEvent)>, String> {
    let id = msg
        .subject
        .strip_prefix("sy.wf.history.")
        .ok_or_else(|| format!("{} is not a run's history", msg.subject))?;
    let event: RunEvent = serde_json::from_slice(&msg.payload).map_err(|e| e.to_string())?;
    let kept = matches!(
        event,
        RunEvent::Started { .. } | RunEvent::Finished { .. } | RunEvent::Replayed { .. }
    );
    Ok(kept.then(|| (id.to_owned(), event)))
}

async fn apply(
    sources: &RunSources,
    store: Arc<dyn JobStore>,
    items: Vec<Option<(String, RunEvent)>>,
) -> Result<(), ProjectRunsError> {
    let mut started = Vec::new();
    let mut ended = Vec::new();
    for (id, event) in items.into_iter().flatten() {
        match event {
            RunEvent::Started { run, at_ms } => started.push(RunRow {
                id: run.id,
                tenant: run.tenant,
                workflow: run.workflow,
                version: run.version,
                priority: run.priority.as_str().to_owned(),
                status: "running".into(),
                created_at_ms: at_ms,
                ended_at_ms: None,
                error: None,
                webhook: run.webhook,
            }),
            RunEvent::Finished {
                status,
                error,
                at_ms,
                ..
            } => ended.push(RunEnd {
                id,
                status: status.as_str().to_owned(),
                at_ms,
                error,
            }),
            // Running again until its next end.
            RunEvent::Replayed { at_ms } => ended.push(RunEnd {
                id,
                status: "running".into(),
                at_ms,
                error: None,
            }),
            _ => {}
        }
    }
    if started.is_empty() && ended.is_empty() {
        return Ok(());
    }
    let rows = store.apply_runs(&started, &ended).await?;
    let reports = rows
        .iter()
        .filter_map(|row| Some((row, wanted(row)?)))
        .map(|(row, event)| report(sources, store.as_ref(), row, event));
    futures::future::try_join_all(reports).await?;
    Ok(())
}

/// The event a run's end sends, if its webhook asks for it.
fn wanted(row: &RunRow) -> Option<WebhookEvent> {
    let event = match RunStatus::parse(&row.status)? {
        RunStatus::Succeeded => WebhookEvent::Completed,
        RunStatus::Cancelled => WebhookEvent::Cancelled,
        RunStatus::Failed | RunStatus::FailedCompensation => WebhookEvent::Failed,
    };
    row.webhook
        .as_ref()
        .filter(|w| w.events.contains(&event))
        .map(|_| event)
}

/// Queues the webhook event of a run's end, its body the run as
/// `GET /v1/workflows/runs/{id}` shows it once its jobs' ends are
/// recorded.
async fn report(
    sources: &RunSources,
    store: &dyn JobStore,
    row: &RunRow,
    event: WebhookEvent,
) -> Result<(), ProjectRunsError> {
    let Some(webhook) = &row.webhook else {
        return Ok(());
    };
    let history = sources.runs.journal().read(&row.id).await?;
    let ended_at = row.ended_at_ms.unwrap_or(row.created_at_ms);
    let deadline = ended_at + i64::try_from(JOBS_GRACE.as_millis()).unwrap_or(i64::MAX);
    let Some(view) = settled(store, &sources.workflows, &history.events, deadline).await? else {
        return Ok(());
    };
    let payload = json!({
        "type": format!("run.{}", event.as_str()),
        "timestamp": rfc3339(ended_at),
        "data": view,
    });
    let delivery = NewDelivery {
        // A replayed run ends again: each end is its own delivery.
        id: format!("msg_{}_run_{}_{ended_at}", row.id, event.as_str()),
        subject_id: row.id.clone(),
        tenant: row.tenant.clone(),
        url: webhook.url.clone(),
        event: event.as_str().to_owned(),
        payload: payload.to_string(),
        at_ms: now_ms(),
    };
    store.queue_delivery(&delivery).await?;
    Ok(())
}
