//! NVIDIA Triton Inference Server over KServe v2 HTTP: tensor jobs go to
//! `/v2/models/<model>/infer`; readiness is `/v2/health/ready`; the queue is
//! `nv_inference_pending_request_count` on Triton's metrics port. With
//! `on_demand`, the repository's other models are loaded when needed and
//! unloaded when idle (Triton in explicit model-control mode).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};
use switchyard_runtime::{Issues, Registry};
use switchyard_schemas::{EngineLoad, ErrorClass, JobInput, Priority, Tensor, TensorInput, Usage};
use tracing::{info, warn};

use super::http::{
    answers, check_url, client, gauge_sum, json_answer, scrape, status_error, transport_error,
};
use super::{Engine, EngineError, Inference, TokenSink, Use, check_models_and_slots};
use crate::metrics as m;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TritonConfig {
    /// Triton's HTTP endpoint (`--http-port`), such as `http://127.0.0.1:8000`.
    pub url: String,
    /// Models it serves at all times, by the names the registry and the
    /// repository share. May be empty with `on_demand`.
    #[serde(default)]
    pub models: Vec<String>,
    pub slots: u32,
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Triton's metrics endpoint (`--metrics-port`), such as
    /// `http://127.0.0.1:8002/metrics`, for its queue in heartbeats.
    #[serde(default)]
    pub metrics_url: Option<String>,
    /// Also serve the other models of Triton's repository that the registry
    /// names, loading each when it is asked for (Triton must run with
    /// `--model-control-mode=explicit`).
    #[serde(default)]
    pub on_demand: bool,
    /// Unload a model loaded on demand once it has served nothing for this
    /// long; without it such a model stays loaded.
    #[serde(default, with = "humantime_serde")]
    pub unload_after: Option<Duration>,
    /// Longest a model may take to load.
    #[serde(default = "default_load_timeout", with = "humantime_serde")]
    pub load_timeout: Duration,
}

fn default_request_timeout() -> Duration {
    Duration::from_secs(60)
}

fn default_load_timeout() -> Duration {
    Duration::from_secs(600)
}

impl TritonConfig {
    pub fn validate(&self, issues: &mut Issues) {
        check_models_and_slots(&self.models, self.on_demand, self.slots, issues);
        check_url(&self.url, self.request_timeout, issues);
        issues.check(
            self.on_demand || self.unload_after.is_none(),
            "agent.engine.unload_after",
            "set",
            "only models loaded on demand are unloaded: set on_demand too",
        );
        issues.check(
            !self.load_timeout.is_zero(),
            "agent.engine.load_timeout",
            self.load_timeout,
            "must be positive",
        );
    }
}

/// The repository's models beyond the configured ones, as last read.
#[derive(Default)]
struct Repository {
    /// Models that may be loaded on demand: in the repository, named by the
    /// registry, not among the configured ones.
    on_demand: BTreeSet<String>,
    /// Those loaded now, with their use.
    loaded: BTreeMap<String, Use>,
}

/// An inference request: the job's tensors, and its level as Triton's
/// request `priority` (its schedule-policy extension: 1 is served first).
/// A model whose dynamic batcher has `priority_levels: 4` queues the four
/// levels apart; one with fewer levels, or none, serves a level it lacks at
/// its default.
fn request(tensors: &TensorInput, priority: Priority) -> Value {
    let level = match priority {
        Priority::Critical => 1,
        Priority::High => 2,
        Priority::Normal => 3,
        Priority::Batch => 4,
    };
    json!({"inputs": tensors.inputs, "parameters": {"priority": level}})
}

/// What `GET /v2/models/<model>` says of the inputs a model takes.
#[derive(Deserialize)]
struct Metadata {
    inputs: Vec<InputMetadata>,
}

#[derive(Deserialize)]
struct InputMetadata {
    name: String,
    datatype: String,
    /// -1 where any length goes (the batch dimension).
    shape: Vec<i64>,
}

impl InputMetadata {
    /// The smallest tensor of this input: every variable dimension 1, all zeros.
    fn zeros(self) -> Tensor {
        let shape: Vec<u64> = self
            .shape
            .iter()
            .map(|d| u64::try_from(*d).unwrap_or(1))
            .collect();
        let n = shape.iter().product::<u64>();
        let zero = match self.datatype.as_str() {
            "BOOL" => json!(false),
            "BYTES" => json!(""),
            _ => json!(0),
        };
        Tensor {
            name: self.name,
            shape,
            datatype: self.datatype,
            data: vec![zero; usize::try_from(n).unwrap_or(0)],
        }
    }
}

/// One row of `POST /v2/repository/index`; a model never loaded has no state.
#[derive(Deserialize)]
struct IndexEntry {
    name: String,
    #[serde(default)]
    state: Option<String>,
}

pub struct Triton {
    config: TritonConfig,
    base: String,
    http: reqwest::Client,
    /// The repository's models the registry does not name are ignored
    /// until it does.
    registry: Registry,
    repository: Mutex<Repository>,
}

impl Triton {
    pub fn new(config: TritonConfig, registry: &Registry) -> Self {
        Self {
            base: config.url.trim_end_matches('/').to_owned(),
            http: client(config.request_timeout),
            registry: registry.clone(),
            repository: Mutex::new(Repository::default()),
            config,
        }
    }

    fn repository(&self) -> std::sync::MutexGuard<'_, Repository> {
        // Plain data: a panic elsewhere leaves it usable.
        self.repository
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Marks a request for `model` as running, loading the model first if it
    /// is one loaded on demand and is not loaded now (it may have been
    /// unloaded while the job waited).
    async fn begin(&self, model: &str) -> Result<InUse<'_>, EngineError> {
        if self.config.models.iter().any(|m| m == model) {
            return Ok(InUse {
                triton: self,
                model: None,
            });
        }
        loop {
            if let Some(used) = self.repository().loaded.get_mut(model) {
                used.begin();
                return Ok(InUse {
                    triton: self,
                    model: Some(model.to_owned()),
                });
            }
            self.load_model(model).await?;
        }
    }

    /// Reads the repository index: which models exist, and which are loaded.
    async fn read_index(&self) -> Result<Vec<IndexEntry>, EngineError> {
        let response = self
            .http
            .post(format!("{}/v2/repository/index", self.base))
            .json(&json!({}))
            .send()
            .await
            .map_err(transport_error)?;
        json_answer(response).await
    }

    /// Calls `/v2/repository/models/<model>/<action>` (`load` or `unload`).
    async fn control(&self, model: &str, action: &str) -> Result<(), EngineError> {
        let response = self
            .http
            .post(format!(
                "{}/v2/repository/models/{model}/{action}",
                self.base
            ))
            .timeout(self.config.load_timeout)
            .send()
            .await
            .map_err(transport_error)?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let text = response.text().await.map_err(transport_error)?;
        Err(status_error(status, &text))
    }

    /// Takes in the repository index: new models become loadable, and what
    /// Triton says is loaded is believed (it may have restarted).
    fn take_index(&self, index: Vec<IndexEntry>) {
        let mut repo = self.repository();
        let fixed: BTreeSet<&String> = self.config.models.iter().collect();
        let mut on_demand = BTreeSet::new();
        let mut ready = BTreeSet::new();
        for entry in index {
            if self.registry.get(&entry.name).is_some() && !fixed.contains(&entry.name) {
                if entry.state.as_deref() == Some("READY") {
                    ready.insert(entry.name.clone());
                }
                on_demand.insert(entry.name);
            }
        }
        repo.loaded
            .retain(|model, used| ready.contains(model) || used.running() > 0);
        for model in ready {
            repo.loaded.entry(model).or_insert_with(Use::fresh);
        }
        repo.on_demand = on_demand;
    }

    /// Unloads models loaded on demand that have served nothing for
    /// `unload_after`. A model is forgotten before it is unloaded, so a job
    /// that arrives meanwhile loads it again rather than failing.
    async fn unload_idle(&self, after: Duration) {
        let idle: Vec<String> = {
            let mut repo = self.repository();
            let idle: Vec<String> = repo
                .loaded
                .iter()
                .filter(|(_, u)| u.idle_for(after))
                .map(|(m, _)| m.clone())
                .collect();
            for model in &idle {
                repo.loaded.remove(model);
            }
            idle
        };
        for model in idle {
            match self.control(&model, "unload").await {
                Ok(()) => {
                    info!(%model, "idle model unloaded");
                    metrics::counter!(m::MODEL_UNLOADS).increment(1);
                }
                Err(e) => warn!(%model, error = %e.message, "cannot unload an idle model"),
            }
        }
    }
}

/// A request running on a model; on drop the model counts as used now.
struct InUse<'a> {
    triton: &'a Triton,
    /// `None` for a configured model, which is never unloaded.
    model: Option<String>,
}

impl Drop for InUse<'_> {
    fn drop(&mut self) {
        if let Some(model) = &self.model
            && let Some(used) = self.triton.repository().loaded.get_mut(model)
        {
            used.end();
        }
    }
}

#[async_trait]
impl Engine for Triton {
    fn models(&self) -> Vec<String> {
        let repo = self.repository();
        let mut models = self.config.models.clone();
        models.extend(repo.loaded.keys().cloned());
        models
    }

    fn loadable(&self) -> Vec<String> {
        let repo = self.repository();
        repo.on_demand
            .iter()
            .filter(|m| !repo.loaded.contains_key(*m))
            .cloned()
            .collect()
    }

    async fn load_model(&self, model: &str) -> Result<(), EngineError> {
        if self.config.models.iter().any(|m| m == model)
            || self.repository().loaded.contains_key(model)
        {
            return Ok(());
        }
        if !self.repository().on_demand.contains(model) {
            return Err(EngineError {
                class: ErrorClass::UnknownModel,
                message: format!("{model:?} is not a model of this node's repository"),
            });
        }
        let started = Instant::now();
        self.control(model, "load").await?;
        info!(%model, took_ms = started.elapsed().as_millis() as u64, "model loaded");
        self.repository()
            .loaded
            .entry(model.to_owned())
            .or_insert_with(Use::fresh);
        Ok(())
    }

    async fn tend(&self) {
        if !self.config.on_demand {
            return;
        }
        match self.read_index().await {
            Ok(index) => self.take_index(index),
            Err(e) => warn!(error = %e.message, "cannot read Triton's model repository"),
        }
        if let Some(after) = self.config.unload_after {
            self.unload_idle(after).await;
        }
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
        priority: Priority,
        _tokens: Option<&TokenSink>,
    ) -> Result<Inference, EngineError> {
        let JobInput::Tensor(tensors) = input else {
            return Err(EngineError {
                class: ErrorClass::InvalidInput,
                message: "Triton takes tensors, not text".into(),
            });
        };
        let _in_use = self.begin(model).await?;
        let response = self
            .http
            .post(format!("{}/v2/models/{model}/infer", self.base))
            .json(&request(tensors, priority))
            .send()
            .await
            .map_err(transport_error)?;
        let output: Value = json_answer(response).await?;
        Ok(Inference {
            output,
            usage: Usage::default(),
        })
    }

    async fn ready(&self) -> bool {
        answers(self.http.get(format!("{}/v2/health/ready", self.base))).await
    }

    /// An inference on zeros of the smallest shapes the first model takes,
    /// read from its metadata.
    async fn prove(&self) -> bool {
        let Some(model) = self.models().into_iter().next() else {
            return self.ready().await;
        };
        let metadata = async {
            let response = self
                .http
                .get(format!("{}/v2/models/{model}", self.base))
                .send()
                .await
                .map_err(transport_error)?;
            json_answer::<Metadata>(response).await
        };
        let Ok(metadata) = metadata.await else {
            return false;
        };
        let inputs = metadata
            .inputs
            .into_iter()
            .map(InputMetadata::zeros)
            .collect();
        let zeros = JobInput::Tensor(TensorInput { inputs });
        self.infer(&model, &zeros, Priority::Critical, None)
            .await
            .is_ok()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_ranks_the_job_s_level_as_triton_does_highest_first() {
        let tensors = TensorInput { inputs: Vec::new() };
        let levels: Vec<Value> = Priority::ALL
            .into_iter()
            .map(|p| request(&tensors, p)["parameters"]["priority"].clone())
            .collect();
        assert_eq!(levels, [json!(1), json!(2), json!(3), json!(4)]);
    }
}
