//! The workflow runs API: start a run (`Idempotency-Key`, `Prefer: wait`,
//! a webhook for its end), list runs, read one with its steps, their jobs
//! and its cost, follow its history, and cancel it. The broker keeps the
//! run's ticket and reads its history; the engine role drives it.

pub(crate) mod list;
mod openai;
mod projection;
mod record;

pub(crate) use openai::{chat, named_by};
pub use projection::{ProjectRunsError, RunSources, follow_runs};

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Extension, FromRef, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::Event as SseEvent;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt;
use futures::channel::mpsc;
use serde::Deserialize;
use serde_json::{Value, json};
use switchyard_core::admission::Admitter;
use switchyard_core::auth::Caller;
use switchyard_core::watch::Watcher;
use switchyard_core::webhooks::Webhooks;
use switchyard_schemas::redact::without_values;
use switchyard_schemas::{DEFAULT_TENANT, Priority, WebhookEvent, WebhookTarget, now_ms};
use switchyard_store::JobStore;
use switchyard_workflows::runs::{Cancelled, Replay, Runs, RunsError, run_id};
use switchyard_workflows::{RunEvent, RunHeader, Workflows};

use crate::error::{ApiError, invalid};
use crate::extract::Body;
use crate::jobs::{idempotency_key, prefer_wait};
use crate::reply::sse;
use crate::state::ApiState;
use record::read;

/// What the runs API works with.
#[derive(Clone)]
pub(crate) struct RunsState {
    runs: Runs,
    /// The longest `Prefer: wait`.
    wait_limit: Duration,
    workflows: Arc<Workflows>,
    store: Arc<dyn JobStore>,
    webhooks: Arc<Webhooks>,
    /// Follows the jobs of a run whose tokens a client reads.
    watcher: Watcher,
    /// Reserves a run's budget.
    admitter: Admitter,
}

impl FromRef<ApiState> for RunsState {
    fn from_ref(s: &ApiState) -> Self {
        RunsState {
            runs: s.runs.clone(),
            wait_limit: s.calls.sync_timeout(),
            workflows: s.workflows.clone(),
            store: s.store.clone(),
            webhooks: s.webhooks.clone(),
            watcher: s.calls.watcher().clone(),
            admitter: s.calls.admitter().clone(),
        }
    }
}

pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/v1/workflows/{name}/runs", post(start))
        .route("/v1/workflows/runs", get(list::list_runs))
        .route("/v1/workflows/runs/{id}", get(get_run))
        .route("/v1/workflows/runs/{id}/cancel", post(cancel))
        .route("/v1/workflows/runs/{id}/events", get(events))
        .route("/v1/admin/workflows/runs/{id}/replay", post(replay))
}

/// The body of `POST /v1/workflows/{name}/runs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StartRun {
    input: Value,
    #[serde(default)]
    priority: Option<Priority>,
    /// For keys that act for every tenant; a tenant's key sets its own.
    #[serde(default)]
    tenant: Option<String>,
    /// Where the run's end is reported.
    #[serde(default)]
    webhook: Option<WebhookTarget>,
}

/// How long an ended run's answer waits for its jobs' ends to be recorded.
const JOBS_SETTLE: Duration = Duration::from_secs(2);

/// The events a run's webhook can be sent: its end (a run never expires,
/// so `expired`, among a job's ends by default, is left out).
const RUN_EVENTS: [WebhookEvent; 3] = [
    WebhookEvent::Completed,
    WebhookEvent::Failed,
    WebhookEvent::Cancelled,
];

fn unavailable(e: RunsError) -> ApiError {
    ApiError::Unavailable(e.to_string())
}

/// Start a run of the workflow's latest version.
#[utoipa::path(post, path = "/v1/workflows/{name}/runs", tag = "workflows",
    request_body(content = Object, description = "`input` (held to the workflow's `input_schema`), and optionally `priority`, `tenant`, `webhook` (`{url, events}`: `completed`, `failed`, `cancelled`)"),
    params(
        ("name" = String, Path, description = "The workflow"),
        ("Idempotency-Key" = Option<String>, Header, description = "The same key names the same run"),
        ("Prefer" = Option<String>, Header, description = "`wait=N`: answer with the ended run if it ends within N seconds"),
    ),
    responses(
        (status = 202, description = "Kept: `{id, status, workflow, version}`", body = Object),
        (status = 200, description = "Ended within `Prefer: wait`: the run", body = Object),
        (status = 404, description = "`not_found`: no such workflow", body = Object),
        (status = 422, description = "`invalid_request`: the input fails the workflow's `input_schema`", body = Object),
        (status = 402, description = "`budget_exceeded`: the tenant's budget has no room for the workflow's `max_cost_usd`", body = Object),
        (status = 400, description = "`webhook_refused`: the webhook may not be used", body = Object),
        (status = 503, description = "`broker_unavailable`", body = Object),
    ))]
async fn start(
    State(s): State<RunsState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<Response, ApiError> {
    let request: StartRun = serde_json::from_slice(&body).map_err(|e| {
        invalid(format!(
            "body is not a run request: {}",
            without_values(&e.to_string())
        ))
    })?;
    let key = idempotency_key(&headers)?;
    let started = begin(&s, &caller, &name, request, key, false).await?;
    if let Some(wait) = prefer_wait(&headers, s.wait_limit) {
        let view = wait_ended(&s, &caller, &started.id, wait).await?;
        let status = match view["status"] == "running" {
            true => StatusCode::ACCEPTED,
            false => StatusCode::OK,
        };
        return Ok((status, axum::Json(view)).into_response());
    }
    let body = json!({"id": started.id, "status": "running", "workflow": started.workflow, "version": started.version});
    Ok((StatusCode::ACCEPTED, axum::Json(body)).into_response())
}

/// Starts a run of the workflow's latest version for the caller: its
/// header, once its ticket is kept. Its span is the root of the run's
/// trace. `stream`: a client follows its answering step's tokens.
#[tracing::instrument(name = "workflow.start", skip_all, fields(workflow = %name))]
async fn begin(
    s: &RunsState,
    caller: &Caller,
    name: &str,
    request: StartRun,
    idempotency_key: Option<&str>,
    stream: bool,
) -> Result<RunHeader, ApiError> {
    let StartRun {
        input,
        priority,
        tenant,
        webhook,
    } = request;
    let workflow = s
        .workflows
        .latest(name)
        .ok_or_else(|| ApiError::NotFound(format!("workflow {name:?}")))?;
    let tenant = match (&caller.tenant, tenant) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "tenant is set by the server from the API key; leave it out",
            ));
        }
        (Some(own), None) => own.clone(),
        (None, asked) => asked.unwrap_or_else(|| DEFAULT_TENANT.to_owned()),
    };
    workflow
        .check_input(&input)
        .map_err(|e| invalid(e.to_string()))?;
    if let Some(other) = webhook
        .iter()
        .flat_map(|w| &w.events)
        .find(|e| matches!(e, WebhookEvent::Queued | WebhookEvent::Started))
    {
        return Err(invalid(format!(
            "webhook.events: a run reports its end (completed, failed, cancelled), not {:?}",
            other.as_str()
        )));
    }
    let webhook = s
        .webhooks
        .target(&tenant, webhook)
        .await?
        .and_then(|mut w| {
            // A tenant's default may ask for job events a run has not.
            w.events.retain(|e| RUN_EVENTS.contains(e));
            (!w.events.is_empty()).then_some(w)
        });
    let header = RunHeader {
        id: run_id(&tenant, idempotency_key),
        workflow: name.to_owned(),
        version: workflow.spec.version,
        tenant,
        priority: priority.unwrap_or(Priority::Normal),
        input,
        webhook,
        api_key: caller.key.as_ref().map(|k| k.id.clone()),
        trace: switchyard_runtime::trace::traceparent(),
        stream,
    };
    let budget = workflow.spec.max_cost_micros();
    if let Some(micros) = budget {
        s.admitter
            .reserve_run(&header.tenant, &header.id, micros)
            .await
            .map_err(ApiError::Submit)?;
    }
    if let Err(e) = s.runs.start(header.clone(), now_ms()).await {
        if budget.is_some()
            && let Err(e) = s.admitter.release_run(&header.id).await
        {
            tracing::warn!(run = %header.id, error = %e, "a run that was not kept keeps its budget reservation until the period ends");
        }
        return Err(unavailable(e));
    }
    Ok(header)
}

/// The run once it has ended, or as it is after `wait`: read again each
/// time its history grows (a core subscription sees each append), and at
/// least every second.
async fn wait_ended(
    s: &RunsState,
    caller: &Caller,
    id: &str,
    wait: Duration,
) -> Result<Value, ApiError> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut grew = s
        .runs
        .watch(id)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    let mut end_heard = 0;
    loop {
        let now = tokio::time::Instant::now();
        let settle_by = now_ms() + i64::try_from(JOBS_SETTLE.as_millis()).unwrap_or(0);
        let view = match read(s, caller, id, settle_by).await {
            Ok((view, _)) => view,
            // Kept, and its first event not written yet: the engine
            // writes it from the ticket.
            Err(ApiError::NotFound(_)) => json!({"id": id, "status": "running"}),
            Err(e) => return Err(e),
        };
        if view["status"] != "running" || now >= deadline {
            return Ok(view);
        }
        // The end heard before the stream has stored it: read again
        // shortly, a few times, rather than wait for what will not come.
        if (1..50).contains(&end_heard) {
            end_heard += 1;
            tokio::time::sleep(Duration::from_millis(2)).await;
            continue;
        }
        let next = deadline.min(now + Duration::from_secs(1));
        if let Ok(Some(msg)) = tokio::time::timeout_at(next, grew.next()).await
            && let Ok(RunEvent::Finished { .. }) = serde_json::from_slice(&msg.payload)
        {
            end_heard = 1;
        }
    }
}

/// A run: its status and output, and per step its state and attempts.
#[utoipa::path(get, path = "/v1/workflows/runs/{id}", tag = "workflows",
    params(("id" = String, Path, description = "The run")),
    responses(
        (status = 200, description = "The run (docs/workflows.md)", body = Object),
        (status = 404, description = "`not_found`", body = Object),
    ))]
async fn get_run(
    State(s): State<RunsState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let (view, _) = read(&s, &caller, &id, 0).await?;
    Ok(axum::Json(view).into_response())
}

/// A run's history as server-sent events, one per event (`id`: its place in
/// the history, `event`: its kind, `data`: the event), from the start or
/// after `Last-Event-ID`, until the run's `finished`.
#[utoipa::path(get, path = "/v1/workflows/runs/{id}/events", tag = "workflows",
    params(
        ("id" = String, Path, description = "The run"),
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event"),
    ),
    responses(
        (status = 200, description = "`text/event-stream` of the run's events (docs/workflows.md)", body = Object),
        (status = 404, description = "`not_found`", body = Object),
    ))]
async fn events(
    State(s): State<RunsState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    // Another tenant's run is not found, as if it were not there.
    read(&s, &caller, &id, 0).await?;
    let mut next = match headers.get("last-event-id") {
        None => 0,
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .map(|last| last + 1)
            .ok_or_else(|| invalid("Last-Event-ID must be the id of an event of this run"))?,
    };
    let mut grew = s
        .runs
        .watch(&id)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    let (mut tx, rx) = mpsc::channel(64);
    let relay = async move {
        loop {
            let Ok(history) = s.runs.journal().read(&id).await else {
                return;
            };
            for (i, event) in history.events.iter().enumerate().skip(next) {
                let Ok(data) = serde_json::to_value(event) else {
                    return;
                };
                let kind = data["kind"].as_str().unwrap_or("event").to_owned();
                let sse = SseEvent::default()
                    .id(i.to_string())
                    .event(kind)
                    .data(data.to_string());
                if futures::SinkExt::send(&mut tx, sse).await.is_err() {
                    return;
                }
                if matches!(event, RunEvent::Finished { .. }) {
                    return;
                }
            }
            next = next.max(history.events.len());
            // The next append, or a look in a while (an append heard
            // before the stream stored it is read then).
            let _ = tokio::time::timeout(Duration::from_millis(500), grew.next()).await;
        }
    };
    Ok(sse(relay, rx))
}

/// Cancel a run: its running steps are stopped and the steps it had done
/// are compensated.
#[utoipa::path(post, path = "/v1/workflows/runs/{id}/cancel", tag = "workflows",
    params(("id" = String, Path, description = "The run")),
    responses(
        (status = 202, description = "`{id, status: \"cancelling\"}`", body = Object),
        (status = 404, description = "`not_found`", body = Object),
        (status = 409, description = "`not_cancellable`: it has ended", body = Object),
    ))]
async fn cancel(
    State(s): State<RunsState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    // Another tenant's run is not found, as if it were not there.
    read(&s, &caller, &id, 0).await?;
    match s.runs.cancel(&id, now_ms()).await.map_err(unavailable)? {
        Cancelled::Requested => Ok(accepted(&id, "cancelling")),
        Cancelled::Finished => Err(ApiError::RunEnded(id)),
        Cancelled::NotFound => Err(ApiError::NotFound(format!("run {id:?}"))),
    }
}

/// Replay a run that ended `failed_compensation`, once the cause is fixed:
/// the compensations that failed run again, each with its retry policy's
/// attempts afresh, and the run ends anew (`failed`, `cancelled`, or
/// `failed_compensation` again).
#[utoipa::path(post, path = "/v1/admin/workflows/runs/{id}/replay", tag = "admin",
    params(("id" = String, Path, description = "The run")),
    responses(
        (status = 202, description = "`{id, status: \"running\"}`", body = Object),
        (status = 404, description = "`not_found`", body = Object),
        (status = 409, description = "`not_failed`: it is running, or ended otherwise", body = Object),
    ))]
async fn replay(State(s): State<RunsState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    match s.runs.replay(&id, now_ms()).await.map_err(unavailable)? {
        Replay::Replayed => Ok(accepted(&id, "running")),
        Replay::NotDeadLettered => Err(ApiError::RunNotDeadLettered(id)),
        Replay::NotFound => Err(ApiError::NotFound(format!("run {id:?}"))),
    }
}

/// `202`: the run's history has the request; its engine acts on it.
fn accepted(id: &str, status: &str) -> Response {
    let body = json!({"id": id, "status": status});
    (StatusCode::ACCEPTED, axum::Json(body)).into_response()
}
