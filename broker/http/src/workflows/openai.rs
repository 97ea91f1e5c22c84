//! A workflow called through the OpenAI-compatible front as the model
//! `workflow:<name>`.

use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use futures::channel::mpsc;
use serde::Deserialize;
use serde_json::{Value, json};
use switchyard_core::auth::Caller;
use switchyard_core::openai_request::Endpoint;
use switchyard_schemas::now_ms;
use switchyard_schemas::redact::without_values;

use super::{RunsState, StartRun, begin, wait_ended};
use crate::error::{ApiError, invalid};
use crate::jobs::idempotency_key;
use crate::openai::Relay;
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
    let request = StartRun {
        input: Value::Object(input),
        priority: Some(priority),
        tenant: None,
        webhook: None,
    };
    let run = begin(&s, &caller, workflow, request, key).await?;
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
