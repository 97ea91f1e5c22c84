//! A workflow called through the OpenAI-compatible front as the model
//! `workflow:<name>`.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue};
use axum::response::sse::Event as SseEvent;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use futures::channel::mpsc;
use serde::Deserialize;
use serde_json::{Value, json};
use switchyard_core::Coded;
use switchyard_core::auth::Caller;
use switchyard_core::openai_request::Endpoint;
use switchyard_core::watch::{Event, Watch};
use switchyard_schemas::now_ms;
use switchyard_schemas::redact::without_values;
use switchyard_workflows::RunEvent;
use switchyard_workflows::engine::effect_id;
use tokio::time::Instant;

use super::{RunsState, StartRun, begin, wait_ended};
use crate::error::{ApiError, invalid};
use crate::jobs::idempotency_key;
use crate::openai::{Followed, Relay, send, send_error};
use crate::reply::{priority, sse};

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
///
/// Streamed, the tokens of the workflow's answering step (a chat model
/// step whose output is the run's) are relayed as its job generates them;
/// a workflow without one streams its answer once the run has ended.
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
    for field in ["model", "stream_options"] {
        input.remove(field);
    }
    let priority = priority(&headers)?;
    let key = idempotency_key(&headers)?;
    let request = StartRun {
        input: Value::Object(input),
        priority: Some(priority),
        tenant: None,
        webhook: None,
    };
    let answering = match stream {
        true => s
            .workflows
            .latest(workflow)
            .and_then(|w| w.answering.clone()),
        false => None,
    };
    let run = begin(&s, &caller, workflow, request, key, answering.is_some()).await?;
    let relay = Relay {
        chat: true,
        id: run.id.clone(),
        model: format!("{WORKFLOW_MODEL}{workflow}"),
        created: now_ms() / 1000,
        include_usage: false,
    };
    let mut response = match (stream, answering) {
        (true, Some(step)) => tokens(s, caller, relay, step),
        (false, _) => {
            let view = ended(&s, &caller, &run.id, s.wait_limit).await?;
            axum::Json(as_completion(&relay, &view)).into_response()
        }
        (true, None) => {
            // The run's answer, sent once it is whole.
            let view = ended(&s, &caller, &run.id, s.wait_limit).await?;
            let completion = as_completion(&relay, &view);
            relay.whole(completion)
        }
    };
    if let Ok(v) = HeaderValue::from_str(&run.id) {
        response.headers_mut().insert("x-switchyard-run-id", v);
    }
    Ok(response)
}

/// The run once it has succeeded, within `wait`; why not otherwise.
async fn ended(
    s: &RunsState,
    caller: &Caller,
    run: &str,
    wait: Duration,
) -> Result<Value, ApiError> {
    let view = wait_ended(s, caller, run, wait).await?;
    match view["status"].as_str() {
        Some("succeeded") => Ok(view),
        Some("running") => Err(ApiError::RunStillRunning(run.to_owned())),
        _ => {
            let error = view["error"].as_str().unwrap_or("the run did not succeed");
            Err(ApiError::RunFailed(run.to_owned(), error.to_owned()))
        }
    }
}

/// The stream of a run whose answer is `step`'s output: its tokens as
/// its job generates them, then the rest of the answer once the run has
/// succeeded (the tokens are best effort, the answer whole), or why it
/// did not.
fn tokens(s: RunsState, caller: Caller, relay: Relay, step: String) -> Response {
    let (mut tx, rx) = mpsc::channel(64);
    let stream = async move {
        if !relay.open(&mut tx).await {
            return;
        }
        let deadline = Instant::now() + s.wait_limit;
        let Some(sent) = follow(&s, &relay, &step, &mut tx, deadline).await else {
            return;
        };
        let wait = deadline.saturating_duration_since(Instant::now());
        match ended(&s, &caller, &relay.id, wait).await {
            Ok(view) => {
                relay
                    .finish(&mut tx, &sent, as_completion(&relay, &view))
                    .await;
            }
            Err(e) => send_error(&mut tx, e.code().as_str(), e.to_string()).await,
        }
    };
    sse(stream, rx)
}

/// Relays the tokens of `step`'s jobs (each attempt's, as the run's
/// history starts it) until the history ends or `deadline`: the text sent,
/// or `None` if the client went away.
async fn follow(
    s: &RunsState,
    relay: &Relay,
    step: &str,
    tx: &mut mpsc::Sender<SseEvent>,
    deadline: Instant,
) -> Option<String> {
    let run = relay.id.as_str();
    let mut text = Followed::default();
    let Ok(mut grew) = s.runs.watch(run).await else {
        return Some(text.sent);
    };
    // Taken at once: the first attempt's job cannot start streaming first.
    let mut attempt = 1;
    let mut job = s
        .watcher
        .watch(&effect_id(run, step, 1, false), true)
        .await
        .ok();
    loop {
        let look = deadline.min(Instant::now() + Duration::from_secs(1));
        // The job's chunks first: they were sent before its result, and
        // so before the run's end.
        tokio::select! {
            biased;
            event = next(&mut job, deadline) => match event {
                Some(Event::Chunk(chunk)) => {
                    let Some(delta) = text.take(&chunk) else { continue };
                    if send(tx, &relay.chunk(Some(delta), None)).await.is_err() {
                        return None;
                    }
                }
                Some(Event::Noise) => {}
                // This job has ended: what follows is in the history.
                Some(Event::Result(_)) | None => job = None,
            },
            appended = tokio::time::timeout_at(look, grew.next()) => {
                let event = match appended {
                    Ok(Some(msg)) => serde_json::from_slice::<RunEvent>(&msg.payload).ok(),
                    Ok(None) => return Some(text.sent),
                    // Nothing heard: the end may have been missed.
                    Err(_) if Instant::now() >= deadline => return Some(text.sent),
                    Err(_) => match s.runs.journal().read(run).await {
                        Ok(read) => read.events.into_iter().last(),
                        Err(_) => None,
                    },
                };
                match event {
                    Some(RunEvent::Finished { .. }) => return Some(text.sent),
                    Some(RunEvent::StepStarted { step: id, attempt: n, .. })
                        if id == step && n > attempt =>
                    {
                        attempt = n;
                        job = s.watcher.watch(&effect_id(run, step, n, false), true).await.ok();
                    }
                    _ => {}
                }
            }
        }
    }
}

/// The next event of the job followed, if any.
async fn next(job: &mut Option<Watch>, deadline: Instant) -> Option<Event> {
    match job {
        Some(job) => job.next(deadline).await,
        None => std::future::pending().await,
    }
}

/// A run's output as OpenAI's chat completion, with the usage of all its
/// model steps.
fn as_completion(relay: &Relay, run: &Value) -> Value {
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
        "id": format!("chatcmpl-{}", relay.id),
        "object": "chat.completion",
        "created": relay.created,
        "model": relay.model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": usage.0, "completion_tokens": usage.1, "total_tokens": usage.0 + usage.1},
    })
}
