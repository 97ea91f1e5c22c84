//! A run as the API and its webhook show it: its history's view, with each
//! model step's job as the store records it and the run's cost.

use std::time::Duration;

use serde_json::{Value, json};
use switchyard_core::auth::Caller;
use switchyard_schemas::now_ms;
use switchyard_store::{JobStore, StoreError};
use switchyard_workflows::view::run_view;
use switchyard_workflows::{RunEvent, Workflows};

use super::{RunsState, unavailable};
use crate::error::ApiError;
use crate::state::visible;

/// The run's view with its jobs, and whether every one of them has ended
/// in the store (a job's end can be recorded after the run heard of it).
/// `None` for an empty history.
async fn with_jobs(
    store: &dyn JobStore,
    workflows: &Workflows,
    history: &[RunEvent],
) -> Result<Option<(Value, bool)>, StoreError> {
    let Some(RunEvent::Started { run, .. }) = history.first() else {
        return Ok(None);
    };
    let workflow = workflows.get(&run.workflow, run.version);
    let Some((mut view, jobs)) = run_view(workflow, history) else {
        return Ok(None);
    };
    let mut cost_micros = 0;
    let mut all_ended = true;
    let mut records = serde_json::Map::new();
    for job in &jobs {
        if let Some(record) = store.get(job).await? {
            all_ended &= record.status.is_final();
            let cost = store.job_cost(job).await?;
            cost_micros += cost;
            records.insert(
                job.clone(),
                json!({
                    "status": record.status.as_str(),
                    "node": record.node,
                    "usage": record.usage,
                    "cost_usd": cost as f64 / 1e6,
                    "started_at_ms": record.started_at_ms,
                    "finished_at_ms": record.finished_at_ms,
                }),
            );
        }
    }
    for step in view["steps"].as_array_mut().into_iter().flatten() {
        for attempt in step["attempts"].as_array_mut().into_iter().flatten() {
            let job = attempt["effect_id"].as_str().and_then(|j| records.get(j));
            if let Some(job) = job {
                attempt["job"] = job.clone();
            }
        }
    }
    view["cost_usd"] = json!(cost_micros as f64 / 1e6);
    Ok(Some((view, all_ended)))
}

/// The run's view with its jobs; for a run that has ended, once its jobs'
/// ends are all recorded too, or as they are at `until_ms`, so that its
/// usage and cost are whole. `None` for an empty history.
pub(crate) async fn settled(
    store: &dyn JobStore,
    workflows: &Workflows,
    history: &[RunEvent],
    until_ms: i64,
) -> Result<Option<Value>, StoreError> {
    loop {
        match with_jobs(store, workflows, history).await? {
            None => return Ok(None),
            Some((view, all_ended))
                if all_ended || view["status"] == "running" || now_ms() >= until_ms =>
            {
                return Ok(Some(view));
            }
            Some(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// The run's view for `caller`, settled until `until_ms` (0: as it is),
/// and its tenant; another tenant's run is not found, as if it were not
/// there.
pub(crate) async fn read(
    s: &RunsState,
    caller: &Caller,
    id: &str,
    until_ms: i64,
) -> Result<(Value, String), ApiError> {
    let history = s
        .runs
        .journal()
        .read(id)
        .await
        .map_err(|e| unavailable(e.into()))?;
    let found = history.events.first().and_then(|first| match first {
        RunEvent::Started { run, .. } => Some(run.clone()),
        _ => None,
    });
    let header = visible(caller, found, |r| &r.tenant, || format!("run {id:?}"))?;
    match settled(s.store.as_ref(), &s.workflows, &history.events, until_ms).await? {
        Some(view) => Ok((view, header.tenant)),
        None => Err(ApiError::NotFound(format!("run {id:?}"))),
    }
}
