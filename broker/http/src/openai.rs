//! The OpenAI-compatible front: `/v1/chat/completions`, `/v1/completions`,
//! `/v1/embeddings` and `/v1/models`, so that OpenAI clients work unchanged.
//! Every request is a job in the durable queue like any other; the call
//! waits for its result, or relays its output as server-sent events.

use axum::Router;
use axum::extract::{Extension, FromRef, State};
use axum::http::HeaderMap;
use axum::response::sse::Event as SseEvent;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use bytes::Bytes;
use futures::SinkExt;
use futures::channel::mpsc;
use serde_json::{Value, json};
use switchyard_core::ErrorCode;
use switchyard_core::auth::Caller;
use switchyard_core::calls::{Begun, Call};
use switchyard_core::openai_request::{Endpoint, Parsed, parse};
use switchyard_core::watch::Event;
use switchyard_schemas::{ErrorBody, Outcome, StreamChunk, now_ms};
use tracing::warn;

use crate::error::ApiError;
use crate::extract::Body;
use crate::reply::{mark_cache, name_job, priority, sse};
use crate::state::{ApiState, CallState};
use crate::workflows::{self, RunsState};

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
            State(s): State<OpenAiState>,
            Extension(caller): Extension<Caller>,
            headers: HeaderMap,
            Body(body): Body,
        ) -> Result<Response, ApiError> {
            if let Some(workflow) = workflows::named_by(Endpoint::$endpoint, &body) {
                return workflows::chat(s.runs, caller, headers, &workflow, &body).await;
            }
            serve(s.call, caller, headers, body, Endpoint::$endpoint).await
        }
    };
}

/// What the OpenAI front works with: calls that wait for jobs, and workflow
/// runs for `model: "workflow:<name>"`.
#[derive(Clone)]
struct OpenAiState {
    call: CallState,
    runs: RunsState,
}

impl FromRef<ApiState> for OpenAiState {
    fn from_ref(s: &ApiState) -> Self {
        OpenAiState {
            call: CallState::from_ref(s),
            runs: RunsState::from_ref(s),
        }
    }
}

endpoint!(
    /// OpenAI's chat completions, as a job, or as a run of a workflow named
    /// `workflow:<name>`; `stream: true` answers with server-sent events.
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

/// The registry, as OpenAI lists models: its models, then its aliases.
#[utoipa::path(get, path = "/v1/models", tag = "openai",
    responses((status = 200, description = "`{object: list, data: [{id, object: model, …}]}`", body = Object)))]
async fn models(State(s): State<OpenAiState>) -> axum::Json<Value> {
    let registry = s.call.calls.admitter().registry();
    let (models, aliases) = (registry.models(), registry.aliases());
    let names = models
        .iter()
        .map(|m| &m.name)
        .chain(aliases.iter().map(|a| &a.name));
    let data: Vec<Value> = names
        .map(|name| json!({"id": name, "object": "model", "created": 0, "owned_by": "switchyard"}))
        .collect();
    axum::Json(json!({"object": "list", "data": data}))
}

async fn serve(
    s: CallState,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
    endpoint: Endpoint,
) -> Result<Response, ApiError> {
    let priority = priority(&headers)?;
    let calls = &s.calls;
    let Parsed {
        submission,
        stream,
        base64,
        include_usage,
    } = parse(
        calls.admitter().registry(),
        &caller,
        &body,
        endpoint,
        priority,
    )?;
    let request = CallState::waiting(&caller, &headers, submission, priority, stream);
    let id = request.id.as_str().to_owned();
    let relay = Relay {
        chat: endpoint == Endpoint::Chat,
        id: id.clone(),
        model: request.submission.model.clone(),
        created: now_ms() / 1000,
        include_usage,
    };
    let (begun, cache) = calls.begin(request).await.map_err(|e| s.refused(e))?;
    let mut response = match begun {
        Begun::Cached { mut output, .. } => {
            if stream {
                relay.whole(output)
            } else {
                if base64 {
                    encode_embeddings(&mut output);
                }
                axum::Json(output).into_response()
            }
        }
        Begun::Queued { call: None, .. } => return Err(ApiError::StillRunning(id)),
        Begun::Queued {
            call: Some(mut call),
            ..
        } if stream => {
            let (tx, rx) = mpsc::channel(64);
            let relayed = async move {
                match relay.run(&mut *call, tx, None).await {
                    // A client that stopped reading no longer wants the job:
                    // dropping the call cancels it.
                    Relayed::ClientGone => {}
                    Relayed::Result(output) => call.end(output.as_ref()).await,
                    Relayed::TimedOut => call.end(None).await,
                }
            };
            let mut response = sse(relayed, rx);
            name_job(&mut response, &id);
            response
        }
        Begun::Queued {
            call: Some(mut call),
            ..
        } => {
            // Dropped here, with the handler, if the client goes away.
            let result = call.result().await;
            let Some(result) = result else {
                call.end(None).await;
                return Err(ApiError::StillRunning(id));
            };
            let mut output = match result.outcome {
                Outcome::Succeeded { output, .. } => output,
                Outcome::Failed { error } => {
                    call.end(None).await;
                    return Err(ApiError::JobFailed(error));
                }
            };
            call.end(Some(&output)).await;
            if base64 {
                encode_embeddings(&mut output);
            }
            let mut response = axum::Json(output).into_response();
            name_job(&mut response, &id);
            response
        }
    };
    mark_cache(&mut response, cache);
    Ok(response)
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

/// Relays one job's streamed output as OpenAI chunks.
pub(crate) struct Relay {
    pub chat: bool,
    pub id: String,
    pub model: String,
    pub created: i64,
    pub include_usage: bool,
}

impl Relay {
    pub(crate) fn chunk(&self, delta: Option<&str>, finish_reason: Option<&str>) -> Value {
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
    /// Each chunk's event id is `a<attempt>.s<seq>`; with `after` (a
    /// resumed stream's `Last-Event-ID`), the chunks up to it are taken in
    /// but not sent again.
    pub(crate) async fn run(
        &self,
        feed: &mut impl Feed,
        mut tx: mpsc::Sender<SseEvent>,
        after: Option<(u32, u32)>,
    ) -> Relayed {
        let mut text = Followed::default();
        if after.is_none() && !self.open(&mut tx).await {
            return Relayed::ClientGone;
        }
        loop {
            let Some(event) = feed.next().await else {
                let message = ApiError::StillRunning(self.id.clone()).to_string();
                send_error(&mut tx, ErrorCode::StillRunning.as_str(), message).await;
                return Relayed::TimedOut;
            };
            let piece = match event {
                Event::Noise => continue,
                Event::Chunk(chunk) => match text.take(&chunk) {
                    Some(_) if after.is_some_and(|at| (chunk.attempt, chunk.seq) <= at) => {
                        continue;
                    }
                    Some(delta) => SseEvent::default()
                        .id(format!("a{}.s{}", chunk.attempt, chunk.seq))
                        .data(self.chunk(Some(delta), None).to_string()),
                    None => continue,
                },
                Event::Result(result) => {
                    let output = match result.outcome {
                        Outcome::Succeeded { output, .. } => output,
                        Outcome::Failed { error } => {
                            send_error(&mut tx, error.class.code(), error.message).await;
                            return Relayed::Result(None);
                        }
                    };
                    let finished = self.finish(&mut tx, &text.sent, output.clone()).await;
                    return Relayed::Result(finished.then_some(output));
                }
            };
            if tx.send(piece).await.is_err() {
                return Relayed::ClientGone;
            }
        }
    }

    /// A stream of an answer that is whole already: the role, the text in
    /// one chunk, the end.
    pub(crate) fn whole(self, output: Value) -> Response {
        let (mut tx, rx) = mpsc::channel(8);
        let replay = async move {
            if self.open(&mut tx).await {
                self.finish(&mut tx, "", output).await;
            }
        };
        sse(replay, rx)
    }

    /// Starts the stream: a chat's first chunk names the role. False if the
    /// client is gone.
    pub(crate) async fn open(&self, tx: &mut mpsc::Sender<SseEvent>) -> bool {
        if !self.chat {
            return true;
        }
        let role = json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]);
        send(tx, &self.envelope(role)).await.is_ok()
    }

    /// Ends the stream of a job that succeeded with `output`, of which
    /// `sent` went out already; false if the two do not add up.
    pub(crate) async fn finish(
        &self,
        tx: &mut mpsc::Sender<SseEvent>,
        sent: &str,
        output: Value,
    ) -> bool {
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
            send_error(tx, ErrorCode::StreamInterrupted.as_str(), message).await;
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

/// The text of one attempt of a job, followed: the first attempt heard
/// from is followed, and another (a retry, or a workflow step's next
/// job) replaces it only while none of its text was sent, so that what a
/// client reads adds up.
#[derive(Default)]
pub(crate) struct Followed {
    /// The job and attempt followed.
    attempt: Option<(String, u32)>,
    pub sent: String,
}

impl Followed {
    /// The chunk's text, if it is to be sent.
    pub(crate) fn take<'a>(&mut self, chunk: &'a StreamChunk) -> Option<&'a str> {
        let followed = self
            .attempt
            .as_ref()
            .is_some_and(|(job, n)| *job == chunk.job_id && *n == chunk.attempt);
        if !followed {
            if self.attempt.is_some() && !self.sent.is_empty() {
                return None;
            }
            self.attempt = Some((chunk.job_id.clone(), chunk.attempt));
        }
        if chunk.delta.is_empty() {
            return None;
        }
        self.sent.push_str(&chunk.delta);
        Some(&chunk.delta)
    }
}

/// Where a relay's chunks and result come from: a call's watch, or a
/// replay of the job's stored tokens.
pub(crate) trait Feed {
    /// The next chunk or the result; `None` once there is nothing more to
    /// wait for.
    async fn next(&mut self) -> Option<Event>;
}

impl Feed for Call {
    async fn next(&mut self) -> Option<Event> {
        Call::next(self).await
    }
}

/// How a relay ended.
#[derive(Debug)]
pub(crate) enum Relayed {
    /// With the job's result: its output, where it succeeded and the
    /// stream added up.
    Result(Option<Value>),
    /// `sync_timeout` passed; the job goes on.
    TimedOut,
    ClientGone,
}

/// Ends a stream with OpenAI's error event; the stream closes after it.
pub(crate) async fn send_error(tx: &mut mpsc::Sender<SseEvent>, code: &str, message: String) {
    let error = ErrorBody {
        code: code.into(),
        message,
    };
    let _ = send(tx, &json!({"error": error})).await;
}

/// Sends one event; an error means the client is gone.
pub(crate) async fn send(
    tx: &mut mpsc::Sender<SseEvent>,
    data: &Value,
) -> Result<(), mpsc::SendError> {
    tx.send(SseEvent::default().data(data.to_string())).await
}
