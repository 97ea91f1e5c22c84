//! The OpenAI-compatible front: `/v1/chat/completions`, `/v1/completions`,
//! `/v1/embeddings` and `/v1/models`, so that OpenAI clients work unchanged.
//! Every request is a job in the durable queue like any other; the call
//! waits for its result, or relays its output as server-sent events.

use std::convert::Infallible;

use axum::Router;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use bytes::Bytes;
use futures::channel::mpsc;
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use switchyard_runtime::ModelKind;
use switchyard_schemas::{ErrorBody, Outcome, Priority, Submission, now_ms};
use tokio::time::Instant;
use tracing::warn;

use crate::admission::{Rejection, SubmitError};
use crate::api::{ApiError, ApiState, invalid, name_job, priority, read_body};
use crate::auth::Caller;
use crate::cache;
use crate::cancel;
use crate::wait::{Event, Watch};

pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/models", get(models))
}

/// One OpenAI endpoint: they differ only in what they take and give.
macro_rules! endpoint {
    ($(#[doc = $doc:literal])* $name:ident, $path:literal, $takes:literal, $gives:literal, $endpoint:ident) => {
        $(#[doc = $doc])*
        #[utoipa::path(post, path = $path, tag = "openai",
            request_body(content = Object, description = $takes),
            params(("X-Switchyard-Priority" = Option<String>, Header, description = "critical, high, normal (default) or batch")),
            responses(
                (status = 200, description = $gives, body = Object),
                (status = 400, description = "`malformed_body`, or the engine refused the input (`invalid_input`)", body = Object),
                (status = 422, description = "`invalid_request`, `unknown_model`", body = Object),
                (status = 429, description = "`queue_full`", body = Object),
                (status = 503, description = "`queue_unavailable`, `engine_unavailable`, …", body = Object),
                (status = 504, description = "`still_running`, `timeout`", body = Object),
            ))]
        async fn $name(
            State(s): State<ApiState>,
            Extension(caller): Extension<Caller>,
            headers: HeaderMap,
            body: Result<Bytes, BytesRejection>,
        ) -> Result<Response, ApiError> {
            serve(s, caller, headers, body, Endpoint::$endpoint).await
        }
    };
}

endpoint!(
    /// OpenAI's chat completions, as a job; `stream: true` answers with
    /// server-sent events.
    chat,
    "/v1/chat/completions",
    "OpenAI's chat completion request",
    "OpenAI's chat completion, or its chunks as `text/event-stream`",
    Chat
);
endpoint!(
    /// OpenAI's completions, as a job; `stream: true` answers with
    /// server-sent events.
    completions,
    "/v1/completions",
    "OpenAI's completion request",
    "OpenAI's completion, or its chunks as `text/event-stream`",
    Completion
);
endpoint!(
    /// OpenAI's embeddings, as a job.
    embeddings,
    "/v1/embeddings",
    "OpenAI's embedding request",
    "OpenAI's embedding list",
    Embedding
);

/// Which OpenAI endpoint a request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completion,
    Embedding,
}

impl Endpoint {
    pub const ALL: [Endpoint; 3] = [Endpoint::Chat, Endpoint::Completion, Endpoint::Embedding];

    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Chat => "/v1/chat/completions",
            Endpoint::Completion => "/v1/completions",
            Endpoint::Embedding => "/v1/embeddings",
        }
    }

    pub fn from_path(path: &str) -> Option<Endpoint> {
        Endpoint::ALL.into_iter().find(|e| e.path() == path)
    }
}

/// An OpenAI request body: the fields the front itself reads; the rest is
/// the job's input, checked strictly by admission.
#[derive(Debug, Deserialize)]
struct OpenAiRequest {
    model: String,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    /// OpenAI's newer name for `max_tokens`.
    #[serde(default)]
    max_completion_tokens: Option<u32>,
    /// The end user, for the caller's own tracking; kept as metadata.
    #[serde(default)]
    user: Option<String>,
    /// `float` (the default) or `base64`, for embeddings.
    #[serde(default)]
    encoding_format: Option<String>,
    #[serde(flatten)]
    input: Map<String, Value>,
}

#[derive(Debug, Default, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// The registry, as OpenAI lists models.
#[utoipa::path(get, path = "/v1/models", tag = "openai",
    responses((status = 200, description = "`{object: list, data: [{id, object: model, …}]}`", body = Object)))]
async fn models(State(s): State<ApiState>) -> axum::Json<Value> {
    let data: Vec<Value> = s
        .admitter
        .registry
        .iter()
        .map(|m| json!({"id": m.name, "object": "model", "created": 0, "owned_by": "switchyard"}))
        .collect();
    axum::Json(json!({"object": "list", "data": data}))
}

/// An OpenAI request read as a job's submission, with the front's own
/// options.
pub struct Parsed {
    pub submission: Submission,
    pub stream: bool,
    base64: bool,
    include_usage: bool,
}

/// Reads an OpenAI request body for `endpoint` as a submission at
/// `priority`, for the caller's tenant.
pub fn parse(
    s: &ApiState,
    caller: &Caller,
    body: &[u8],
    endpoint: Endpoint,
    priority: Priority,
) -> Result<Parsed, ApiError> {
    let request: OpenAiRequest = serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => invalid(e.to_string()),
        _ => ApiError::Submit(SubmitError::Rejected(Rejection::MalformedBody(format!(
            "body is not valid JSON: {e}"
        )))),
    })?;
    let base64 = match (endpoint, request.encoding_format.as_deref()) {
        (Endpoint::Embedding, None | Some("float")) => false,
        (Endpoint::Embedding, Some("base64")) => true,
        (Endpoint::Embedding, Some(other)) => {
            return Err(invalid(format!(
                "encoding_format {other:?} must be float or base64"
            )));
        }
        (_, Some(_)) => return Err(invalid("encoding_format is for embeddings")),
        (_, None) => false,
    };
    let include_usage = request
        .stream_options
        .as_ref()
        .is_some_and(|o| o.include_usage);
    if request.stream_options.is_some() && !request.stream {
        return Err(invalid("stream_options is only allowed with stream: true"));
    }
    let mut input = request.input;
    if let Some(n) = request.max_completion_tokens {
        if input.contains_key("max_tokens") {
            return Err(invalid(
                "give max_tokens or max_completion_tokens, not both",
            ));
        }
        input.insert("max_tokens".into(), n.into());
    }
    let submission = Submission {
        v: switchyard_schemas::SCHEMA_VERSION,
        id: None,
        model: request.model.clone(),
        tenant: caller.tenant.clone(),
        priority: Some(priority),
        input: Value::Object(input),
        metadata: request
            .user
            .map(|u| [("user".to_owned(), u)].into())
            .unwrap_or_default(),
        deadline_ms: None,
        timeout_ms: None,
        stream: request.stream,
        webhook: None,
    };
    check_kind(s, &submission.model, endpoint)?;
    Ok(Parsed {
        submission,
        stream: request.stream,
        base64,
        include_usage,
    })
}

async fn serve(
    s: ApiState,
    caller: Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
    endpoint: Endpoint,
) -> Result<Response, ApiError> {
    let body = read_body(&s, body)?;
    let priority = priority(&headers)?;
    let Parsed {
        submission,
        stream,
        base64,
        include_usage,
    } = parse(&s, &caller, &body, endpoint, priority)?;
    let (lookup, hit) = s.cached(&submission, priority, &headers).await?;

    let id = uuid::Uuid::now_v7().to_string();
    let relay = Relay {
        chat: endpoint == Endpoint::Chat,
        id: id.clone(),
        model: submission.model.clone(),
        created: now_ms() / 1000,
        include_usage,
    };
    if let Some(mut output) = hit {
        s.answered(submission, priority, id.clone(), output.clone())
            .await?;
        let mut response = if stream {
            let (mut tx, rx) = mpsc::channel(64);
            tokio::spawn(async move {
                if relay.open(&mut tx).await {
                    relay.finish(&mut tx, "", output).await;
                }
            });
            sse(rx)
        } else {
            if base64 {
                encode_embeddings(&mut output);
            }
            axum::Json(output).into_response()
        };
        cache::mark(&mut response, &lookup);
        return Ok(response);
    }
    let mut watch = Watch::start(&s, &id, stream)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    s.submit(submission, priority, id.clone(), caller.key.as_ref())
        .await?;
    let deadline = Instant::now() + s.sync_timeout;
    let mut guard = CancelOnDrop::new(&s, &id);
    if stream {
        let (tx, rx) = mpsc::channel(64);
        let state = s.clone();
        tokio::spawn(async move {
            match relay.run(&mut watch, tx, deadline).await {
                // A client that stopped reading no longer wants the job.
                Relayed::ClientGone => {}
                Relayed::Result(output) => {
                    guard.disarm();
                    if let Some(output) = output {
                        state.remember(&lookup, &output).await;
                    }
                }
                Relayed::TimedOut => guard.disarm(),
            }
        });
        let mut response = sse(rx);
        name_job(&mut response, &id);
        return Ok(response);
    }
    let result = watch.result(deadline).await;
    guard.disarm();
    let Some(result) = result else {
        return Err(ApiError::StillRunning(id));
    };
    let mut output = match result.outcome {
        Outcome::Succeeded { output, .. } => output,
        Outcome::Failed { error } => return Err(ApiError::JobFailed(error)),
    };
    s.remember(&lookup, &output).await;
    if base64 {
        encode_embeddings(&mut output);
    }
    let mut response = axum::Json(output).into_response();
    name_job(&mut response, &id);
    cache::mark(&mut response, &lookup);
    Ok(response)
}

fn sse(events: mpsc::Receiver<SseEvent>) -> Response {
    Sse::new(events.map(Ok::<_, Infallible>))
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// The model must be of the endpoint's kind: a chat model is not asked for
/// embeddings.
fn check_kind(s: &ApiState, model: &str, endpoint: Endpoint) -> Result<(), ApiError> {
    let Some(spec) = s.admitter.registry.get(model) else {
        return Err(ApiError::Submit(SubmitError::Rejected(
            Rejection::UnknownModel(model.to_owned()),
        )));
    };
    let fits = matches!(
        (endpoint, spec.kind),
        (Endpoint::Chat, ModelKind::Chat)
            | (Endpoint::Completion, ModelKind::Completion)
            | (Endpoint::Embedding, ModelKind::Embedding)
    );
    match fits {
        true => Ok(()),
        false => Err(invalid(format!(
            "model {model:?} is a {:?} model; this endpoint is for {endpoint:?} models",
            spec.kind
        ))),
    }
}

/// Each embedding as OpenAI's base64: its float32 values, little-endian.
fn encode_embeddings(output: &mut Value) {
    let Some(data) = output.get_mut("data").and_then(Value::as_array_mut) else {
        return;
    };
    for item in data {
        if let Some(values) = item.get("embedding").and_then(Value::as_array) {
            let bytes: Vec<u8> = values
                .iter()
                .filter_map(Value::as_f64)
                .flat_map(|f| (f as f32).to_le_bytes())
                .collect();
            item["embedding"] = base64::engine::general_purpose::STANDARD
                .encode(bytes)
                .into();
        }
    }
}

/// Cancels the job if the client goes away before its answer: the call is
/// dropped, or the event stream's reader is gone.
struct CancelOnDrop {
    state: Option<ApiState>,
    id: String,
}

impl CancelOnDrop {
    fn new(s: &ApiState, id: &str) -> Self {
        Self {
            state: Some(s.clone()),
            id: id.to_owned(),
        }
    }

    fn disarm(&mut self) {
        self.state = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        let Some(s) = self.state.take() else {
            return;
        };
        let id = std::mem::take(&mut self.id);
        tokio::spawn(async move {
            match cancel::cancel(&s.admitter, &s.cancellations, &id).await {
                Ok(()) => tracing::info!(job_id = %id, "client went away; job cancelled"),
                // Finished meanwhile, most likely: nothing to undo.
                Err(e) => tracing::debug!(job_id = %id, error = %e, "not cancelled"),
            }
        });
    }
}

/// Relays one job's streamed output as OpenAI chunks.
struct Relay {
    chat: bool,
    id: String,
    model: String,
    created: i64,
    include_usage: bool,
}

impl Relay {
    fn chunk(&self, delta: Option<&str>, finish_reason: Option<&str>) -> Value {
        let choice = if self.chat {
            let delta = match delta {
                Some(text) => json!({"content": text}),
                None => json!({}),
            };
            json!({"index": 0, "delta": delta, "finish_reason": finish_reason})
        } else {
            json!({"index": 0, "text": delta.unwrap_or(""), "finish_reason": finish_reason})
        };
        self.envelope(json!([choice]))
    }

    fn envelope(&self, choices: Value) -> Value {
        let (id, object) = match self.chat {
            true => (format!("chatcmpl-{}", self.id), "chat.completion.chunk"),
            false => (format!("cmpl-{}", self.id), "text_completion"),
        };
        json!({"id": id, "object": object, "created": self.created, "model": self.model, "choices": choices})
    }

    /// Sends chunks until the job's result, then the rest of the text the
    /// chunks missed, the final chunk, the usage when asked, and `[DONE]`.
    /// Chunks are best effort; the result is whole, so a gap is filled from
    /// it. Only one attempt's chunks are relayed: if that attempt fails
    /// after sending text and a retry writes something else, the stream
    /// ends with an error rather than with text that does not add up.
    async fn run(
        &self,
        watch: &mut Watch,
        mut tx: mpsc::Sender<SseEvent>,
        deadline: Instant,
    ) -> Relayed {
        let mut sent = String::new();
        let mut attempt = None;
        if !self.open(&mut tx).await {
            return Relayed::ClientGone;
        }
        loop {
            let Some(event) = watch.next(deadline).await else {
                let message = ApiError::StillRunning(self.id.clone()).to_string();
                send_error(&mut tx, "still_running", message).await;
                return Relayed::TimedOut;
            };
            let piece = match event {
                Event::Noise => continue,
                Event::Chunk(chunk) => {
                    let current = *attempt.get_or_insert(chunk.attempt);
                    if chunk.attempt != current && sent.is_empty() {
                        attempt = Some(chunk.attempt);
                    } else if chunk.attempt != current {
                        continue;
                    }
                    if chunk.delta.is_empty() {
                        continue;
                    }
                    sent.push_str(&chunk.delta);
                    self.chunk(Some(&chunk.delta), None)
                }
                Event::Result(result) => {
                    let output = match result.outcome {
                        Outcome::Succeeded { output, .. } => output,
                        Outcome::Failed { error } => {
                            send_error(&mut tx, error.class.code(), error.message).await;
                            return Relayed::Result(None);
                        }
                    };
                    let finished = self.finish(&mut tx, &sent, output.clone()).await;
                    return Relayed::Result(finished.then_some(output));
                }
            };
            if send(&mut tx, &piece).await.is_err() {
                return Relayed::ClientGone;
            }
        }
    }

    /// Starts the stream: a chat's first chunk names the role. False if the
    /// client is gone.
    async fn open(&self, tx: &mut mpsc::Sender<SseEvent>) -> bool {
        if !self.chat {
            return true;
        }
        let role = json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]);
        send(tx, &self.envelope(role)).await.is_ok()
    }

    /// Ends the stream of a job that succeeded with `output`, of which
    /// `sent` went out already; false if the two do not add up.
    async fn finish(&self, tx: &mut mpsc::Sender<SseEvent>, sent: &str, output: Value) -> bool {
        let choice = &output["choices"][0];
        let whole = match self.chat {
            true => choice["message"]["content"].as_str(),
            false => choice["text"].as_str(),
        }
        .unwrap_or_default();
        let Some(rest) = whole.strip_prefix(sent) else {
            warn!(job_id = %self.id, "streamed text and result differ after a retry");
            let message = format!(
                "the output was restarted after a failure; the whole result is at /v1/jobs/{}",
                self.id
            );
            send_error(tx, "stream_interrupted", message).await;
            return false;
        };
        let finish_reason = choice["finish_reason"].as_str().unwrap_or("stop");
        let mut last = vec![self.chunk((!rest.is_empty()).then_some(rest), Some(finish_reason))];
        if self.include_usage {
            let mut usage_chunk = self.envelope(json!([]));
            usage_chunk["usage"] = output.get("usage").cloned().unwrap_or(Value::Null);
            last.push(usage_chunk);
        }
        for chunk in &last {
            if send(tx, chunk).await.is_err() {
                return true;
            }
        }
        let _ = tx.send(SseEvent::default().data("[DONE]")).await;
        true
    }
}

/// How a relay ended.
#[derive(Debug)]
enum Relayed {
    /// With the job's result: its output, where it succeeded and the
    /// stream added up.
    Result(Option<Value>),
    /// `sync_timeout` passed; the job goes on.
    TimedOut,
    ClientGone,
}

/// Ends a stream with OpenAI's error event; the stream closes after it.
async fn send_error(tx: &mut mpsc::Sender<SseEvent>, code: &str, message: String) {
    let error = ErrorBody {
        code: code.into(),
        message,
    };
    let _ = send(tx, &json!({"error": error})).await;
}

/// Sends one event; an error means the client is gone.
async fn send(tx: &mut mpsc::Sender<SseEvent>, data: &Value) -> Result<(), mpsc::SendError> {
    tx.send(SseEvent::default().data(data.to_string())).await
}
