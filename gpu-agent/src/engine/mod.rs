//! Engines the agent can drive. Every engine implements [`Engine`]; the agent
//! knows nothing else about it.

mod http;
pub mod on_demand;
pub mod openai;
pub mod simulated;
pub mod triton;

use std::time::{Duration, Instant};

use async_trait::async_trait;
use switchyard_runtime::{Issues, Registry};
use switchyard_schemas::{EngineLoad, ErrorClass, JobInput, Priority, Usage};

use tokio_util::sync::CancellationToken;
use tracing::warn;

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
    /// Models this engine serves now.
    fn models(&self) -> Vec<String>;
    /// Models it does not serve now but can load when asked
    /// ([`Engine::load_model`]), or when a job for one arrives.
    fn loadable(&self) -> Vec<String> {
        Vec::new()
    }
    /// Loads a model of [`Engine::loadable`]; returns once it serves.
    async fn load_model(&self, model: &str) -> Result<(), EngineError> {
        Err(EngineError {
            class: ErrorClass::UnknownModel,
            message: format!("this engine cannot load {model:?} on request"),
        })
    }
    /// Housekeeping, once per heartbeat interval: Triton re-reads its model
    /// repository and unloads models idle too long.
    async fn tend(&self) {}
    /// Once the agent has drained: stops what the engine started itself.
    async fn stop(&self) {}
    /// Requests it runs at once; the agent never has more in flight.
    fn slots(&self) -> u32;
    /// Runs one request. An engine that orders its own queue puts it by
    /// `priority`. With `tokens`, each piece of text is sent there as it is
    /// generated; the returned output is whole either way.
    async fn infer(
        &self,
        model: &str,
        input: &JobInput,
        priority: Priority,
        tokens: Option<&TokenSink>,
    ) -> Result<Inference, EngineError>;
    /// The engine's own account of its load (requests it queues, KV cache in
    /// use), for heartbeats.
    async fn load(&self) -> EngineLoad;
    /// Whether the engine answers now: a cheap probe, such as a health route.
    async fn ready(&self) -> bool;
    /// Whether the engine serves: a real, tiny request. Asked instead of
    /// [`Engine::ready`] at start and after the engine failed, since a
    /// health route can answer before the engine can serve.
    async fn prove(&self) -> bool {
        self.ready().await
    }
}

/// Builds the engine. An OpenAI-compatible engine configured without a
/// model list is asked for one (`/v1/models`), again every few seconds
/// until it answers or `shutdown` comes; `None` then.
pub async fn build(
    config: &EngineConfig,
    registry: &Registry,
    shutdown: &CancellationToken,
) -> Option<Box<dyn Engine>> {
    let (config, flavor) = match config {
        EngineConfig::Simulated(c) => return Some(Box::new(simulated::Simulated::new(c.clone()))),
        EngineConfig::Triton(c) => {
            return Some(Box::new(triton::Triton::new(c.clone(), registry)));
        }
        EngineConfig::VllmOnDemand(c) => {
            return Some(Box::new(on_demand::OnDemand::new(c.clone(), registry)));
        }
        EngineConfig::Vllm(c) => (c, openai::Flavor::Vllm),
        EngineConfig::Openai(c) => (c, openai::Flavor::Generic),
    };
    let engine = openai::OpenAi::new(config.clone(), flavor, registry);
    while engine.models().is_empty() {
        tokio::select! {
            () = shutdown.cancelled() => return None,
            () = async {
                if !engine.discover_models().await {
                    warn!("the engine serves no model of the registry yet; asking again");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            } => {}
        }
    }
    Some(Box::new(engine))
}

/// A model loaded on demand: requests running on it, and when it last
/// served, so that it is unloaded only once idle.
struct Use {
    running: u32,
    last_used: Instant,
}

impl Use {
    fn fresh() -> Self {
        Self {
            running: 0,
            last_used: Instant::now(),
        }
    }

    fn begin(&mut self) {
        self.running += 1;
    }

    fn end(&mut self) {
        self.running = self.running.saturating_sub(1);
        self.last_used = Instant::now();
    }

    fn running(&self) -> u32 {
        self.running
    }

    /// Nothing runs on it, and nothing has for `after`.
    fn idle_for(&self, after: Duration) -> bool {
        self.running == 0 && self.last_used.elapsed() >= after
    }
}

/// What every engine's configuration must get right: a sane number of
/// slots, and models unless the engine can be asked for them. A model the
/// registry does not name yet is allowed: the live registry may add it,
/// and the agent serves it from then on.
fn check_models_and_slots(models: &[String], may_discover: bool, slots: u32, issues: &mut Issues) {
    issues.check(
        slots > 0 && slots <= 4096,
        "agent.engine.slots",
        slots,
        "must be between 1 and 4096",
    );
    issues.check(
        may_discover || !models.is_empty(),
        "agent.engine.models",
        models,
        "serve at least one model",
    );
}
