//! Engines the agent can drive. Every engine implements [`Engine`]; the agent
//! knows nothing else about it.

pub mod openai;
pub mod simulated;

use async_trait::async_trait;
use switchyard_runtime::{Issues, Registry};
use switchyard_schemas::{EngineLoad, ErrorClass, JobInput, Usage};

use crate::EngineConfig;

/// Where a streaming request's text goes, piece by piece.
pub type TokenSink = tokio::sync::mpsc::UnboundedSender<String>;

/// What an engine returns for one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Inference {
    /// The engine's response body, in the engine's public protocol
    /// (OpenAI-style for LLMs).
    pub output: serde_json::Value,
    pub usage: Usage,
}

/// A failed request, already classified.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{class:?}: {message}")]
pub struct EngineError {
    pub class: ErrorClass,
    pub message: String,
}

#[async_trait]
pub trait Engine: Send + Sync {
    /// Models this engine serves.
    fn models(&self) -> &[String];
    /// Requests it runs at once; the agent never has more in flight.
    fn slots(&self) -> u32;
    /// Runs one request. With `tokens`, each piece of text is sent there as
    /// it is generated; the returned output is whole either way.
    async fn infer(
        &self,
        model: &str,
        input: &JobInput,
        tokens: Option<&TokenSink>,
    ) -> Result<Inference, EngineError>;
    /// The engine's own account of its load (requests it queues, KV cache in
    /// use), for heartbeats.
    async fn load(&self) -> EngineLoad;
    /// Whether the engine answers now.
    async fn ready(&self) -> bool;
}

pub fn build(config: &EngineConfig) -> Box<dyn Engine> {
    match config {
        EngineConfig::Simulated(c) => Box::new(simulated::Simulated::new(c.clone())),
        EngineConfig::Vllm(c) => Box::new(openai::OpenAi::new(c.clone(), openai::Flavor::Vllm)),
        EngineConfig::Openai(c) => {
            Box::new(openai::OpenAi::new(c.clone(), openai::Flavor::Generic))
        }
    }
}

/// What every engine's configuration must get right: models the registry
/// knows, and a sane number of slots.
fn check_models_and_slots(models: &[String], slots: u32, registry: &Registry, issues: &mut Issues) {
    issues.check(
        slots > 0 && slots <= 4096,
        "agent.engine.slots",
        slots,
        "must be between 1 and 4096",
    );
    issues.check(
        !models.is_empty(),
        "agent.engine.models",
        models,
        "serve at least one model",
    );
    for m in models {
        issues.check(
            registry.get(m).is_some(),
            "agent.engine.models",
            m,
            "not in the model registry",
        );
    }
}
