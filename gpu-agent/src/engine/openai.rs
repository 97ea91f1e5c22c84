//! Engines that speak the OpenAI HTTP API: vLLM (`kind: vllm`, which also
//! reports its queue and KV cache on `/metrics`) and any other compatible
//! server — TGI, SGLang, llama.cpp's server — as `kind: openai`.

use std::sync::RwLock;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::Value;
use switchyard_runtime::{Issues, ModelKind, Registry};
use switchyard_schemas::{
    ChatInput, ChatMessage, CompletionInput, EmbeddingInput, EngineLoad, ErrorClass, JobInput,
    Priority, Usage,
};
use tracing::{debug, info, warn};

use super::http::{answers, check_url, client, gauge_sum, json_answer, scrape, transport_error};
use super::{Engine, EngineError, Inference, TokenSink, check_models_and_slots};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenAiConfig {
    /// Where the server listens, such as `http://127.0.0.1:8000`.
    pub url: String,
    /// Models it serves, by the names the registry and the server share.
    /// Left out, the agent asks the server (`/v1/models`), again at every
    /// heartbeat, and serves those the live registry names: a model the
    /// server serves is taken up as soon as the registry adds it.
    #[serde(default)]
    pub models: Vec<String>,
    /// Requests the agent sends at once; the server may batch them.
    pub slots: u32,
    /// Longest a request may take before it is abandoned (and retried
    /// elsewhere) — the engine is never waited on for ever.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Sent as a bearer token, for servers started with one.
    #[serde(default)]
    pub api_key: Option<String>,
    /// Sends each job's priority as the request's `priority` (critical 0,
    /// high 1, normal 2, batch 3; lower goes first), for a vLLM started
    /// with `--scheduling-policy priority` — which any other vLLM refuses.
    #[serde(default)]
    pub send_priority: bool,
}

/// The route and body of a job's request: its input, which already has
/// the OpenAI request's shape, with the model's name, and its priority when
/// the server takes one.
fn request(
    model: &str,
    input: &JobInput,
    priority: Option<Priority>,
) -> Result<(&'static str, Value), EngineError> {
    let (path, body) = match input {
        JobInput::Chat(c) => ("/v1/chat/completions", serde_json::to_value(c)),
        JobInput::Completion(c) => ("/v1/completions", serde_json::to_value(c)),
        JobInput::Embedding(e) => ("/v1/embeddings", serde_json::to_value(e)),
        JobInput::Tensor(_) => {
            return Err(EngineError {
                class: ErrorClass::InvalidInput,
                message: "an OpenAI-compatible engine takes text, not tensors".into(),
            });
        }
    };
    let mut body = body.map_err(|e| EngineError {
        class: ErrorClass::Internal,
        message: format!("request not encoded: {e}"),
    })?;
    body["model"] = Value::String(model.to_owned());
    if let Some(priority) = priority {
        body["priority"] = Value::from(engine_priority(priority));
    }
    Ok((path, body))
}

/// `body`, asking for its answer as a stream that ends with the usage.
fn streamed(mut body: Value) -> Value {
    body["stream"] = Value::Bool(true);
    body["stream_options"] = serde_json::json!({"include_usage": true});
    body
}

/// A job's priority as vLLM's `priority` field ranks requests: lower
/// values are scheduled first.
fn engine_priority(priority: Priority) -> u8 {
    match priority {
        Priority::Critical => 0,
        Priority::High => 1,
        Priority::Normal => 2,
        Priority::Batch => 3,
    }
}

fn default_request_timeout() -> Duration {
    Duration::from_secs(300)
}

impl OpenAiConfig {
    pub fn validate(&self, issues: &mut Issues) {
        check_models_and_slots(&self.models, true, self.slots, issues);
        check_url(&self.url, self.request_timeout, issues);
    }
}

/// What the server publishes about its own load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// `/metrics` with `vllm:num_requests_waiting` and `vllm:kv_cache_usage_perc`.
    Vllm,
    /// Nothing the agent reads.
    Generic,
}

pub struct OpenAi {
    config: OpenAiConfig,
    /// The models it serves now: the configured ones, or those discovered.
    served: RwLock<Vec<String>>,
    /// The kind of each model, for the request that proves the engine.
    registry: Registry,
    base: String,
    http: reqwest::Client,
    flavor: Flavor,
}

impl OpenAi {
    pub fn new(config: OpenAiConfig, flavor: Flavor, registry: &Registry) -> Self {
        Self {
            served: RwLock::new(config.models.clone()),
            registry: registry.clone(),
            base: config.url.trim_end_matches('/').to_owned(),
            http: client(config.request_timeout),
            config,
            flavor,
        }
    }

    /// The server's models (`/v1/models`) that the registry names.
    async fn listed(&self) -> Result<Vec<String>, reqwest::Error> {
        let mut request = self.http.get(format!("{}/v1/models", self.base));
        if let Some(key) = &self.config.api_key {
            request = request.bearer_auth(key);
        }
        let body: Value = request.send().await?.error_for_status()?.json().await?;
        let served = body["data"].as_array().into_iter().flatten();
        let ids = served.filter_map(|m| m["id"].as_str());
        let (known, unknown): (Vec<&str>, Vec<&str>) =
            ids.partition(|id| self.registry.get(id).is_some());
        if !unknown.is_empty() {
            debug!(
                ?unknown,
                "the engine serves models the registry does not name; ignored"
            );
        }
        Ok(known.into_iter().map(str::to_owned).collect())
    }

    /// Serves the models the server lists that the registry names; whether
    /// there are any. A server that does not answer leaves them as they are.
    pub async fn discover_models(&self) -> bool {
        match self.listed().await {
            Ok(known) => {
                let mut served = self.served.write().unwrap_or_else(|e| e.into_inner());
                if *served != known {
                    info!(models = ?known, "models discovered");
                    *served = known;
                }
                !served.is_empty()
            }
            Err(e) => {
                warn!(error = %e, "cannot list the engine's models");
                !self.models().is_empty()
            }
        }
    }

    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.post(format!("{}{path}", self.base));
        match &self.config.api_key {
            Some(key) => request.bearer_auth(key),
            None => request,
        }
    }
}

#[async_trait]
impl Engine for OpenAi {
    fn models(&self) -> Vec<String> {
        self.served
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Without a configured list, the server's models are listed again:
    /// one it serves that the registry has just added is taken up.
    async fn tend(&self) {
        if self.config.models.is_empty() {
            self.discover_models().await;
        }
    }

    fn slots(&self) -> u32 {
        self.config.slots
    }

    async fn infer(
        &self,
        model: &str,
        input: &JobInput,
        priority: Priority,
        tokens: Option<&TokenSink>,
    ) -> Result<Inference, EngineError> {
        let (path, body) = request(model, input, self.config.send_priority.then_some(priority))?;
        let body = match tokens {
            Some(_) => streamed(body),
            None => body,
        };
        let mut response = self
            .post(path)
            .json(&body)
            .send()
            .await
            .map_err(transport_error)?;
        let status = response.status();
        let output = match tokens {
            Some(sink) if status.is_success() => {
                let mut events = SseAssembler::new(input);
                while let Some(bytes) = response.chunk().await.map_err(transport_error)? {
                    events.feed(&bytes, sink);
                }
                events.finish(model)
            }
            _ => json_answer(response).await?,
        };
        let usage = usage_of(&output).unwrap_or_else(|| {
            warn!(model, "the engine reported no usage; billed as zero tokens");
            Usage::default()
        });
        Ok(Inference { output, usage })
    }

    /// A one-token request (one text to embed) to its first model.
    async fn prove(&self) -> bool {
        let Some(model) = self.models().first().cloned() else {
            return false;
        };
        let hello = match self.registry.get(&model).map(|spec| spec.kind) {
            Some(ModelKind::Chat) => JobInput::Chat(ChatInput {
                messages: vec![ChatMessage {
                    role: "user".into(),
                    content: "hi".into(),
                }],
                max_tokens: Some(1),
                temperature: None,
                sampling: Default::default(),
            }),
            Some(ModelKind::Embedding) => JobInput::Embedding(EmbeddingInput {
                input: vec!["hi".into()],
                dimensions: None,
            }),
            _ => JobInput::Completion(CompletionInput {
                prompt: "hi".into(),
                max_tokens: Some(1),
                temperature: None,
                sampling: Default::default(),
            }),
        };
        self.infer(&model, &hello, Priority::Critical, None)
            .await
            .is_ok()
    }

    async fn ready(&self) -> bool {
        // vLLM's own health route; other servers all answer the model list.
        let path = match self.flavor {
            Flavor::Vllm => "/health",
            Flavor::Generic => "/v1/models",
        };
        let mut probe = self.http.get(format!("{}{path}", self.base));
        if let Some(key) = &self.config.api_key {
            probe = probe.bearer_auth(key);
        }
        answers(probe).await
    }

    async fn load(&self) -> EngineLoad {
        if self.flavor == Flavor::Generic {
            return EngineLoad::default();
        }
        scrape(&self.http, &format!("{}/metrics", self.base))
            .await
            .map(|text| vllm_load(&text))
            .unwrap_or_default()
    }
}

/// Reads an OpenAI server-sent event stream (`data: {chunk}` lines, a last
/// chunk with `usage` and no choices, then `data: [DONE]`), passes each
/// piece of text on, and builds the whole response the non-streaming call
/// would have given.
struct SseAssembler {
    chat: bool,
    pending: Vec<u8>,
    text: String,
    id: Value,
    finish_reason: Value,
    usage: Value,
}

impl SseAssembler {
    fn new(input: &JobInput) -> Self {
        Self {
            chat: matches!(input, JobInput::Chat(_)),
            pending: Vec::new(),
            text: String::new(),
            id: Value::Null,
            finish_reason: Value::Null,
            usage: Value::Null,
        }
    }

    fn feed(&mut self, bytes: &[u8], sink: &TokenSink) {
        self.pending.extend_from_slice(bytes);
        while let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            let Some(data) = std::str::from_utf8(&line)
                .ok()
                .and_then(|l| l.trim_end().strip_prefix("data: "))
            else {
                continue;
            };
            let Ok(chunk) = serde_json::from_str::<Value>(data) else {
                continue; // `[DONE]`
            };
            if self.id.is_null() {
                self.id = chunk["id"].clone();
            }
            if !chunk["usage"].is_null() {
                self.usage = chunk["usage"].clone();
            }
            let Some(choice) = chunk["choices"].get(0) else {
                continue;
            };
            let piece = if self.chat {
                choice["delta"]["content"].as_str()
            } else {
                choice["text"].as_str()
            };
            if let Some(piece) = piece.filter(|p| !p.is_empty()) {
                self.text.push_str(piece);
                let _ = sink.send(piece.to_owned());
            }
            if !choice["finish_reason"].is_null() {
                self.finish_reason = choice["finish_reason"].clone();
            }
        }
    }

    fn finish(self, model: &str) -> Value {
        let choice = if self.chat {
            serde_json::json!({"index": 0, "message": {"role": "assistant", "content": self.text}, "finish_reason": self.finish_reason})
        } else {
            serde_json::json!({"index": 0, "text": self.text, "finish_reason": self.finish_reason})
        };
        serde_json::json!({
            "id": self.id,
            "object": if self.chat { "chat.completion" } else { "text_completion" },
            "model": model,
            "choices": [choice],
            "usage": self.usage,
        })
    }
}

fn usage_of(output: &Value) -> Option<Usage> {
    let usage = output.get("usage")?;
    let count = |k: &str| usage.get(k)?.as_u64().and_then(|n| u32::try_from(n).ok());
    Some(Usage {
        prompt_tokens: count("prompt_tokens")?,
        completion_tokens: count("completion_tokens").unwrap_or(0),
    })
}

/// The queue and KV-cache gauges in vLLM's Prometheus text.
fn vllm_load(metrics: &str) -> EngineLoad {
    EngineLoad {
        queue_depth: gauge_sum(metrics, "vllm:num_requests_waiting").map(|n| n as u32),
        kv_cache_usage: gauge_sum(metrics, "vllm:kv_cache_usage_perc").map(|f| f as f32),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_carries_the_job_s_priority_only_when_the_server_takes_one() {
        let input = JobInput::Completion(CompletionInput {
            prompt: "hi".into(),
            max_tokens: Some(4),
            temperature: None,
            sampling: Default::default(),
        });
        let ranks: Vec<Value> = Priority::ALL
            .into_iter()
            .map(|p| request("m", &input, Some(p)).unwrap().1["priority"].clone())
            .collect();
        assert_eq!(ranks, [0, 1, 2, 3]);
        let (path, plain) = request("m", &input, None).unwrap();
        assert_eq!(path, "/v1/completions");
        assert_eq!(
            plain,
            serde_json::json!({"model": "m", "prompt": "hi", "max_tokens": 4})
        );
    }

    #[test]
    fn vllm_gauges_are_read_from_its_metrics_text() {
        let text = r#"# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="tiny-llama"} 6.0
vllm:num_requests_waiting_by_reason{engine="0",reason="capacity"} 2.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="tiny-llama"} 0.47
"#;
        let load = vllm_load(text);
        assert_eq!(load.queue_depth, Some(6), "a longer name is another metric");
        assert_eq!(load.kv_cache_usage, Some(0.47));
        assert_eq!(vllm_load("up 1\n"), EngineLoad::default());
    }

    #[test]
    fn a_streamed_answer_is_passed_on_and_assembled() {
        // As vLLM sends it, cut at arbitrary byte boundaries.
        let sse = concat!(
            "data: {\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"choices\":[{\"index\":0,\"text\":\" anor\",\"finish_reason\":null}]}\n\n",
            "data: {\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"choices\":[{\"index\":0,\"text\":\" usquvo\",\"finish_reason\":\"length\"}]}\n\n",
            "data: {\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"total_tokens\":5,\"completion_tokens\":2}}\n\n",
            "data: [DONE]\n\n",
        );
        let input = JobInput::Completion(switchyard_schemas::CompletionInput {
            prompt: "x".into(),
            max_tokens: Some(2),
            temperature: None,
            sampling: Default::default(),
        });
        let (sink, mut pieces) = tokio::sync::mpsc::unbounded_channel();
        let mut sse_in = SseAssembler::new(&input);
        for part in sse.as_bytes().chunks(37) {
            sse_in.feed(part, &sink);
        }
        let out = sse_in.finish("tiny");
        assert_eq!(pieces.try_recv().unwrap(), " anor");
        assert_eq!(pieces.try_recv().unwrap(), " usquvo");
        assert!(pieces.try_recv().is_err());
        assert_eq!(out["choices"][0]["text"], " anor usquvo");
        assert_eq!(out["choices"][0]["finish_reason"], "length");
        assert_eq!(
            usage_of(&out),
            Some(Usage {
                prompt_tokens: 3,
                completion_tokens: 2
            })
        );
    }

    #[test]
    fn usage_is_the_engine_s_own_count() {
        let body = serde_json::json!({"usage": {"prompt_tokens": 6, "completion_tokens": 16, "total_tokens": 22}});
        assert_eq!(
            usage_of(&body),
            Some(Usage {
                prompt_tokens: 6,
                completion_tokens: 16
            })
        );
        assert_eq!(usage_of(&serde_json::json!({"choices": []})), None);
    }
}
