//! NVIDIA Triton Inference Server over KServe v2 HTTP: tensor jobs go to
//! `/v2/models/<model>/infer`; readiness is `/v2/health/ready`; the queue is
//! `nv_inference_pending_request_count` on Triton's metrics port.

use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};
use switchyard_runtime::{Issues, Registry};
use switchyard_schemas::{EngineLoad, ErrorClass, JobInput, Usage};

use super::http::{answers, check_url, client, gauge_sum, scrape, status_error, transport_error};
use super::{Engine, EngineError, Inference, TokenSink, check_models_and_slots};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TritonConfig {
    /// Triton's HTTP endpoint (`--http-port`), such as `http://127.0.0.1:8000`.
    pub url: String,
    /// Models it serves, by the names the registry and the repository share.
    pub models: Vec<String>,
    pub slots: u32,
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Triton's metrics endpoint (`--metrics-port`), such as
    /// `http://127.0.0.1:8002/metrics`, for its queue in heartbeats.
    #[serde(default)]
    pub metrics_url: Option<String>,
}

fn default_request_timeout() -> Duration {
    Duration::from_secs(60)
}

impl TritonConfig {
    pub fn validate(&self, registry: &Registry, issues: &mut Issues) {
        check_models_and_slots(&self.models, false, self.slots, registry, issues);
        check_url(&self.url, self.request_timeout, issues);
    }
}

pub struct Triton {
    config: TritonConfig,
    base: String,
    http: reqwest::Client,
}

impl Triton {
    pub fn new(config: TritonConfig) -> Self {
        Self {
            base: config.url.trim_end_matches('/').to_owned(),
            http: client(config.request_timeout),
            config,
        }
    }
}

#[async_trait]
impl Engine for Triton {
    fn models(&self) -> &[String] {
        &self.config.models
    }

    fn slots(&self) -> u32 {
        self.config.slots
    }

    /// Tensors in, tensors out; Triton does not stream them. The usage has
    /// no tokens: such a job is billed by its engine time.
    async fn infer(
        &self,
        model: &str,
        input: &JobInput,
        _tokens: Option<&TokenSink>,
    ) -> Result<Inference, EngineError> {
        let JobInput::Tensor(tensors) = input else {
            return Err(EngineError {
                class: ErrorClass::InvalidInput,
                message: "Triton takes tensors, not text".into(),
            });
        };
        let response = self
            .http
            .post(format!("{}/v2/models/{model}/infer", self.base))
            .json(&json!({"inputs": tensors.inputs}))
            .send()
            .await
            .map_err(transport_error)?;
        let status = response.status();
        let text = response.text().await.map_err(transport_error)?;
        if !status.is_success() {
            return Err(status_error(status, &text));
        }
        let output: Value = serde_json::from_str(&text).map_err(|e| EngineError {
            class: ErrorClass::EngineUnavailable,
            message: format!("Triton's answer is not JSON: {e}"),
        })?;
        Ok(Inference {
            output,
            usage: Usage::default(),
        })
    }

    async fn ready(&self) -> bool {
        answers(self.http.get(format!("{}/v2/health/ready", self.base))).await
    }

    async fn load(&self) -> EngineLoad {
        let Some(url) = &self.config.metrics_url else {
            return EngineLoad::default();
        };
        let Some(text) = scrape(&self.http, url).await else {
            return EngineLoad::default();
        };
        EngineLoad {
            queue_depth: gauge_sum(&text, "nv_inference_pending_request_count").map(|n| n as u32),
            kv_cache_usage: None,
        }
    }
}
