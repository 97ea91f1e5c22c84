//! The workflow runs API: start a run (`Idempotency-Key`, `Prefer: wait`),
//! read it with its steps, their jobs and its cost, and cancel it. The
//! broker keeps the run's ticket and reads its history; the engine role
//! drives it.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Extension, FromRef, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::Event as SseEvent;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt;
use futures::channel::mpsc;
use serde::Deserialize;
use serde_json::{Value, json};
use switchyard_core::auth::Caller;
use switchyard_core::openai_request::Endpoint;
use switchyard_schemas::redact::without_values;
use switchyard_schemas::{DEFAULT_TENANT, Priority, now_ms};
use switchyard_store::JobStore;
use switchyard_workflows::runs::{Cancelled, Runs, RunsError, run_id};
use switchyard_workflows::view::run_view;
use switchyard_workflows::{RunEvent, RunHeader, Workflows};

use crate::error::{ApiError, invalid};
use crate::extract::Body;
use crate::jobs::{idempotency_key, prefer_wait};
use crate::openai::Relay;
use crate::reply::{priority, sse};
use crate::state::{ApiState, visible};

/// What the runs API works with.
#[derive(Clone)]
pub(crate) struct RunsState {
    runs: Runs,
    /// The longest `Prefer: wait`.
    wait_limit: Duration,
    workflows: Arc<Workflows>,
    store: Arc<dyn JobStore>,
}

impl FromRef<ApiState> for RunsState {
    fn from_ref(s: &ApiState) -> Self {
        RunsState {
            runs: s.runs.clone(),
            wait_limit: s.calls.sync_timeout(),
            workflows: s.workflows.clone(),
            store: s.store.clone(),
        }
    }
}

pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/v1/workflows/{name}/runs", post(start))
        .route("/v1/workflows/runs/{id}", get(get_run))
        .route("/v1/workflows/runs/{id}/cancel", post(cancel))
        .route("/v1/workflows/runs/{id}/events", get(events))
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
}

fn unavailable(e: RunsError) -> ApiError {
    ApiError::Unavailable(e.to_string())
}

/// Start a run of the workflow's latest version.
#[utoipa::path(post, path = "/v1/workflows/{name}/runs", tag = "workflows",
    request_body(content = Object, description = "`input` (held to the workflow's `input_schema`), and optionally `priority`, `tenant`"),
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
    let priority = request.priority.unwrap_or(Priority::Normal);
    let key = idempotency_key(&headers)?;
    let started = begin(
        &s,
        &caller,
        &name,
        request.tenant,
        priority,
        request.input,
        key,
    )
    .await?;
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
/// header, once its ticket is kept.
async fn begin(
    s: &RunsState,
    caller: &Caller,
    name: &str,
    tenant: Option<String>,
    priority: Priority,
    input: Value,
    idempotency_key: Option<&str>,
) -> Result<RunHeader, ApiError> {
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
    let header = RunHeader {
        id: run_id(&tenant, idempotency_key),
        workflow: name.to_owned(),
        version: workflow.spec.version,
        tenant,
        priority,
        input,
    };
    s.runs
        .start(header.clone(), now_ms())
        .await
        .map_err(unavailable)?;
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
        let view = match read(s, caller, id).await {
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

/// The workflow an OpenAI request names as its model, `workflow:<name>`.
pub(crate) fn named_by(endpoint: Endpoint, body: &[u8]) -> Option<String> {
    if endpoint != Endpoint::Chat {
        return None;
    }
    #[derive(Deserialize)]
    struct Model {
        model: String,
    }
    let Model { model } = serde_json::from_slice(body).ok()?;
    model.strip_prefix(WORKFLOW_MODEL).map(str::to_owned)
}

/// How the OpenAI front names a workflow as a model.
const WORKFLOW_MODEL: &str = "workflow:";

/// A chat completion answered by a run of `workflow`: the request, less
/// `model` and the streaming options, is the run's input; the run's output
/// is the answer. An output that is already a chat completion (a model
/// step's) is given as it is; any other is the message's content.
pub(crate) async fn chat(
    s: RunsState,
    caller: Caller,
    headers: HeaderMap,
    workflow: &str,
    body: &[u8],
) -> Result<Response, ApiError> {
    let mut input: serde_json::Map<String, Value> = serde_json::from_slice(body).map_err(|e| {
        invalid(format!(
            "body is not a chat request: {}",
            without_values(&e.to_string())
        ))
    })?;
    let stream = input.remove("stream").and_then(|v| v.as_bool()) == Some(true);
    let model = format!("{WORKFLOW_MODEL}{workflow}");
    for field in ["model", "stream_options"] {
        input.remove(field);
    }
    let priority = priority(&headers)?;
    let key = idempotency_key(&headers)?;
    let run = begin(
        &s,
        &caller,
        workflow,
        None,
        priority,
        Value::Object(input),
        key,
    )
    .await?;
    let view = wait_ended(&s, &caller, &run.id, s.wait_limit).await?;
    match view["status"].as_str() {
        Some("succeeded") => {}
        Some("running") => return Err(ApiError::RunStillRunning(run.id)),
        _ => {
            let error = view["error"].as_str().unwrap_or("the run did not succeed");
            return Err(ApiError::RunFailed(run.id, error.to_owned()));
        }
    }
    let completion = as_completion(&run.id, &model, &view);
    let mut response = match stream {
        false => axum::Json(completion).into_response(),
        true => {
            // The run's answer, sent once it is whole.
            let relay = Relay {
                chat: true,
                id: run.id.clone(),
                model,
                created: now_ms() / 1000,
                include_usage: false,
            };
            let (mut tx, rx) = mpsc::channel(8);
            let replay = async move {
                if relay.open(&mut tx).await {
                    relay.finish(&mut tx, "", completion).await;
                }
            };
            sse(replay, rx)
        }
    };
    if let Ok(v) = HeaderValue::from_str(&run.id) {
        response.headers_mut().insert("x-switchyard-run-id", v);
    }
    Ok(response)
}

/// A run's output as OpenAI's chat completion, with the usage of all its
/// model steps.
fn as_completion(id: &str, model: &str, run: &Value) -> Value {
    let output = &run["output"];
    let mut usage = (0, 0);
    let jobs = run["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["attempts"].as_array().into_iter().flatten())
        .filter_map(|a| a.get("job"));
    for job in jobs {
        usage.0 += job["usage"]["prompt_tokens"].as_u64().unwrap_or(0);
        usage.1 += job["usage"]["completion_tokens"].as_u64().unwrap_or(0);
    }
    let content = match (&output["choices"][0]["message"]["content"], output) {
        (Value::String(text), _) => text.clone(),
        (_, Value::String(text)) => text.clone(),
        (_, other) => other.to_string(),
    };
    json!({
        "id": format!("chatcmpl-{id}"),
        "object": "chat.completion",
        "created": now_ms() / 1000,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": usage.0, "completion_tokens": usage.1, "total_tokens": usage.0 + usage.1},
    })
}

/// The run's view, with each model step's job and the run's cost added.
async fn read(s: &RunsState, caller: &Caller, id: &str) -> Result<(Value, String), ApiError> {
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
    let workflow = s.workflows.get(&header.workflow, header.version);
    let Some((mut view, jobs)) = run_view(workflow, &history.events) else {
        return Err(ApiError::NotFound(format!("run {id:?}")));
    };
    let mut cost_micros = 0;
    let mut records = serde_json::Map::new();
    for job in &jobs {
        if let Some(record) = s.store.get(job).await? {
            let cost = s.store.job_cost(job).await?;
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
    Ok((view, header.tenant))
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
    let (view, _) = read(&s, &caller, &id).await?;
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
    read(&s, &caller, &id).await?;
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
    read(&s, &caller, &id).await?;
    match s.runs.cancel(&id, now_ms()).await.map_err(unavailable)? {
        Cancelled::Requested => Ok((
            StatusCode::ACCEPTED,
            axum::Json(json!({"id": id, "status": "cancelling"})),
        )
            .into_response()),
        Cancelled::Finished => Err(ApiError::RunEnded(id)),
        Cancelled::NotFound => Err(ApiError::NotFound(format!("run {id:?}"))),
    }
}
