//! vLLM servers the agent starts and stops itself (`kind: vllm_on_demand`):
//! one server process per model, none running at first. A model is started
//! when the dispatcher asks this node for it (or a job for it arrives), and
//! serves once a real request succeeds; it is stopped once it has served
//! nothing for `unload_after`, which frees its GPU memory for another.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use nix::sys::signal::Signal;
use serde::Deserialize;
use switchyard_runtime::{Issues, Registry};
use switchyard_schemas::{EngineLoad, ErrorClass, JobInput, Priority};
use tokio::process::Child;
use tracing::{info, warn};

use super::http::check_url;
use super::openai::{Flavor, OpenAi, OpenAiConfig};
use super::{Engine, EngineError, Inference, TokenSink, Use, check_models_and_slots};
use crate::{metrics as m, process};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnDemandConfig {
    /// Requests the agent sends at once, over all its models.
    pub slots: u32,
    /// The models it can start, by the names the registry and the server
    /// share, with how to start each.
    pub models: BTreeMap<String, ServerConfig>,
    /// Stop a server once it has served nothing for this long.
    #[serde(default = "default_unload_after", with = "humantime_serde")]
    pub unload_after: Duration,
    /// Longest a server may take from start to its first answer; one that
    /// takes longer is stopped and the start reported as failed.
    #[serde(default = "default_start_timeout", with = "humantime_serde")]
    pub start_timeout: Duration,
    /// After SIGTERM, how long a server may take to exit before SIGKILL.
    #[serde(default = "default_stop_timeout", with = "humantime_serde")]
    pub stop_timeout: Duration,
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    #[serde(default)]
    pub api_key: Option<String>,
    /// As for `kind: vllm`: each server runs with `--scheduling-policy priority`.
    #[serde(default)]
    pub send_priority: bool,
}

/// How to start one model's server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Where the started server listens, such as `http://127.0.0.1:8101`.
    pub url: String,
    /// Program and arguments, such as `[vllm, serve, /models/llama,
    /// --port, "8101", --served-model-name, llama]`.
    pub command: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub cwd: Option<PathBuf>,
}

fn default_unload_after() -> Duration {
    Duration::from_secs(600)
}
fn default_start_timeout() -> Duration {
    Duration::from_secs(600)
}
fn default_stop_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(300)
}

/// How often a starting server is asked whether it serves yet.
const START_POLL: Duration = Duration::from_millis(500);

impl OnDemandConfig {
    pub fn validate(&self, issues: &mut Issues) {
        let models: Vec<String> = self.models.keys().cloned().collect();
        check_models_and_slots(&models, false, self.slots, issues);
        for (model, server) in &self.models {
            check_url(&server.url, self.request_timeout, issues);
            issues.check(
                server.command.first().is_some_and(|p| !p.is_empty()),
                &format!("agent.engine.models.{model}.command"),
                format!("{:?}", server.command),
                "name the program to run",
            );
        }
        for (key, value) in [
            ("agent.engine.unload_after", self.unload_after),
            ("agent.engine.start_timeout", self.start_timeout),
        ] {
            issues.check(!value.is_zero(), key, value, "must be positive");
        }
    }

    /// The configuration of the client for `model`'s server.
    fn client_for(&self, model: &str, server: &ServerConfig) -> OpenAiConfig {
        OpenAiConfig {
            url: server.url.clone(),
            models: vec![model.to_owned()],
            slots: self.slots,
            request_timeout: self.request_timeout,
            api_key: self.api_key.clone(),
            send_priority: self.send_priority,
        }
    }
}

/// A model whose server answers.
struct Serving {
    client: Arc<OpenAi>,
    used: Use,
}

pub struct OnDemand {
    config: OnDemandConfig,
    registry: Registry,
    /// Each model's server process while it runs; held while it starts or
    /// stops, so that a model is started once.
    processes: BTreeMap<String, tokio::sync::Mutex<Option<Child>>>,
    serving: Mutex<BTreeMap<String, Serving>>,
    /// Servers told to stop, until they exit, with when they are killed.
    stopping: Mutex<Vec<(Child, Instant)>>,
}

fn unavailable(message: String) -> EngineError {
    EngineError {
        class: ErrorClass::EngineUnavailable,
        message,
    }
}

impl OnDemand {
    pub fn new(config: OnDemandConfig, registry: &Registry) -> Self {
        Self {
            processes: config
                .models
                .keys()
                .map(|m| (m.clone(), tokio::sync::Mutex::new(None)))
                .collect(),
            serving: Mutex::default(),
            stopping: Mutex::default(),
            registry: registry.clone(),
            config,
        }
    }

    fn serving(&self) -> MutexGuard<'_, BTreeMap<String, Serving>> {
        // Plain data: a panic elsewhere leaves it usable.
        self.serving.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The client of `model`'s server, counted as in use until the guard
    /// drops; the server is started first if it does not run.
    async fn begin(&self, model: &str) -> Result<(Arc<OpenAi>, InUse<'_>), EngineError> {
        loop {
            if let Some(serving) = self.serving().get_mut(model) {
                serving.used.begin();
                let guard = InUse {
                    engine: self,
                    model: model.to_owned(),
                };
                return Ok((serving.client.clone(), guard));
            }
            self.load_model(model).await?;
        }
    }

    /// Starts `model`'s server and waits until it serves a real request,
    /// it exits, or `start_timeout` passes.
    async fn start(&self, model: &str) -> Result<(Child, Arc<OpenAi>), EngineError> {
        let server = &self.config.models[model];
        let mut child = process::spawn(&server.command, &server.env, server.cwd.as_deref())
            .map_err(|e| unavailable(format!("cannot start {model:?}'s server: {e}")))?;
        info!(%model, pid = ?child.id(), "server started");
        let client = Arc::new(OpenAi::new(
            self.config.client_for(model, server),
            Flavor::Vllm,
            &self.registry,
        ));
        let deadline = Instant::now() + self.config.start_timeout;
        let failure = loop {
            match child.try_wait() {
                Ok(Some(status)) => break format!("{model:?}'s server exited: {status}"),
                Err(e) => break format!("{model:?}'s server is lost: {e}"),
                Ok(None) => {}
            }
            if tokio::time::timeout_at(deadline.into(), client.prove())
                .await
                .unwrap_or(false)
            {
                return Ok((child, client));
            }
            if Instant::now() >= deadline {
                break format!(
                    "{model:?}'s server did not serve within {:?}",
                    self.config.start_timeout
                );
            }
            tokio::time::sleep(START_POLL).await;
        };
        process::terminate(&mut child, self.config.stop_timeout).await;
        Err(unavailable(failure))
    }

    /// Forgets servers that exited by themselves: their models may be
    /// started again.
    fn reap(&self) {
        for (model, process) in &self.processes {
            let Ok(mut slot) = process.try_lock() else {
                continue; // starting or stopping
            };
            let exited = slot
                .as_mut()
                .is_some_and(|child| !matches!(child.try_wait(), Ok(None)));
            if exited {
                *slot = None;
                self.serving().remove(model);
                metrics::counter!(m::ENGINE_EXITS).increment(1);
                warn!(%model, "server exited; it is started again when needed");
            }
        }
    }

    /// Tells the servers idle for `unload_after` to stop. A model is
    /// forgotten first, so a job that arrives meanwhile starts it again
    /// rather than failing. Nothing here waits for a server to exit: the
    /// heartbeat's housekeeping may be cut short at any point.
    fn stop_idle(&self) {
        let idle: Vec<String> = {
            let mut serving = self.serving();
            let idle: Vec<String> = serving
                .iter()
                .filter(|(_, s)| s.used.idle_for(self.config.unload_after))
                .map(|(m, _)| m.clone())
                .collect();
            for model in &idle {
                serving.remove(model);
            }
            idle
        };
        for model in idle {
            // Held: the model is being started again, and its start stops
            // the old server itself.
            let Ok(mut slot) = self.processes[&model].try_lock() else {
                continue;
            };
            if let Some(child) = slot.take() {
                info!(%model, "stopping an idle server");
                process::signal_group(&child, Signal::SIGTERM);
                metrics::counter!(m::MODEL_UNLOADS).increment(1);
                let deadline = Instant::now() + self.config.stop_timeout;
                self.stopping().push((child, deadline));
            }
        }
    }

    /// Forgets the stopped servers that have exited; SIGKILL to those past
    /// their `stop_timeout`.
    fn reap_stopping(&self) {
        self.stopping().retain_mut(|(child, deadline)| {
            if !matches!(child.try_wait(), Ok(None)) {
                return false;
            }
            if Instant::now() >= *deadline {
                warn!(pid = ?child.id(), "server did not stop in time; killed");
                process::signal_group(child, Signal::SIGKILL);
            }
            true
        });
    }

    fn stopping(&self) -> MutexGuard<'_, Vec<(Child, Instant)>> {
        self.stopping.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn clients(&self) -> Vec<Arc<OpenAi>> {
        self.serving().values().map(|s| s.client.clone()).collect()
    }
}

/// A request running on a model; on drop the model counts as used now.
struct InUse<'a> {
    engine: &'a OnDemand,
    model: String,
}

impl Drop for InUse<'_> {
    fn drop(&mut self) {
        if let Some(serving) = self.engine.serving().get_mut(&self.model) {
            serving.used.end();
        }
    }
}

#[async_trait]
impl Engine for OnDemand {
    fn models(&self) -> Vec<String> {
        self.serving().keys().cloned().collect()
    }

    fn loadable(&self) -> Vec<String> {
        let serving = self.serving();
        self.config
            .models
            .keys()
            .filter(|m| !serving.contains_key(*m))
            .cloned()
            .collect()
    }

    async fn load_model(&self, model: &str) -> Result<(), EngineError> {
        let Some(process) = self.processes.get(model) else {
            return Err(EngineError {
                class: ErrorClass::UnknownModel,
                message: format!("this node cannot start {model:?}"),
            });
        };
        let mut slot = process.lock().await;
        if self.serving().contains_key(model) {
            return Ok(());
        }
        // A server left from before (it stopped answering): start afresh.
        if let Some(mut old) = slot.take() {
            process::terminate(&mut old, self.config.stop_timeout).await;
        }
        let started = Instant::now();
        let (child, client) = self.start(model).await?;
        info!(%model, took_ms = started.elapsed().as_millis() as u64, "model serves");
        *slot = Some(child);
        self.serving().insert(
            model.to_owned(),
            Serving {
                client,
                used: Use::fresh(),
            },
        );
        Ok(())
    }

    async fn tend(&self) {
        self.reap();
        self.stop_idle();
        self.reap_stopping();
    }

    async fn stop(&self) {
        self.serving().clear();
        let mut children: Vec<Child> = self.stopping().drain(..).map(|(c, _)| c).collect();
        for process in self.processes.values() {
            children.extend(process.lock().await.take());
        }
        for mut child in children {
            process::terminate(&mut child, self.config.stop_timeout).await;
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
        let (client, _in_use) = self.begin(model).await?;
        client.infer(model, input, priority, tokens).await
    }

    /// The queues summed, the fullest KV cache.
    async fn load(&self) -> EngineLoad {
        let mut total = EngineLoad::default();
        for client in self.clients() {
            let load = client.load().await;
            if let Some(depth) = load.queue_depth {
                total.queue_depth = Some(total.queue_depth.unwrap_or(0) + depth);
            }
            if let Some(kv) = load.kv_cache_usage {
                total.kv_cache_usage = Some(total.kv_cache_usage.unwrap_or(0.0).max(kv));
            }
        }
        total
    }

    /// Every running server answers; with none running the node is ready
    /// to start one.
    async fn ready(&self) -> bool {
        for client in self.clients() {
            if !client.ready().await {
                return false;
            }
        }
        true
    }

    async fn prove(&self) -> bool {
        for client in self.clients() {
            if !client.prove().await {
                return false;
            }
        }
        true
    }
}
