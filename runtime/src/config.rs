//! Configuration: one YAML file with a section per component, overridden by
//! `SWITCHYARD_<SECTION>__<FIELD>` environment variables, rejected as a whole
//! (every problem listed) before anything binds a port.

use std::path::Path;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Yaml};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use switchyard_schemas::subjects;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration could not be read: {0}")]
    Parse(String),
    #[error("configuration is invalid:\n{0}")]
    Invalid(Issues),
}

/// Loads the file (when given) and the environment overrides into `T`.
pub fn load<T: DeserializeOwned>(path: Option<&Path>) -> Result<T, ConfigError> {
    let mut figment = Figment::new();
    if let Some(path) = path {
        if !path.exists() {
            return Err(ConfigError::Parse(format!(
                "{} does not exist",
                path.display()
            )));
        }
        figment = figment.merge(Yaml::file(path));
    }
    figment
        // SWITCHYARD_CONFIG and SWITCHYARD_API_KEY are the command line's.
        .merge(
            Env::prefixed("SWITCHYARD_")
                .ignore(&["config", "api_key"])
                .split("__"),
        )
        .extract()
        .map_err(|e| {
            let all: Vec<String> = e.into_iter().map(|e| e.to_string()).collect();
            ConfigError::Parse(all.join("; "))
        })
}

/// Every problem found in a configuration, so that one run shows them all.
#[derive(Debug, Default)]
pub struct Issues(Vec<String>);

impl Issues {
    pub fn push(&mut self, field: &str, value: impl std::fmt::Debug, reason: &str) {
        self.0.push(format!("{field} = {value:?}: {reason}"));
    }

    pub fn check(&mut self, ok: bool, field: &str, value: impl std::fmt::Debug, reason: &str) {
        if !ok {
            self.push(field, value, reason);
        }
    }

    /// Problems found so far.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn into_result(self) -> Result<(), ConfigError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(self))
        }
    }
}

impl std::fmt::Display for Issues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for issue in &self.0 {
            writeln!(f, "  - {issue}")?;
        }
        Ok(())
    }
}

/// How the processes reach NATS and how the streams are laid out.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    pub url: String,
    /// Stream replicas: 1 on one host, 3 in a production cluster.
    pub replicas: usize,
    /// How long the server remembers message ids to drop re-published duplicates.
    #[serde(with = "humantime_serde")]
    pub duplicate_window: Duration,
    #[serde(with = "humantime_serde")]
    pub result_retention: Duration,
    #[serde(with = "humantime_serde")]
    pub event_retention: Duration,
    #[serde(with = "humantime_serde")]
    pub usage_retention: Duration,
    /// How long a streamed job's tokens are kept for a client that
    /// reconnects to resume from; the whole output is in the result.
    #[serde(with = "humantime_serde")]
    pub token_retention: Duration,
    /// How long jobs that exhausted their attempts are kept for replay.
    #[serde(with = "humantime_serde")]
    pub dead_letter_retention: Duration,
    /// How long a workflow run's history is kept, counted from each of its
    /// events: well beyond the longest run.
    #[serde(with = "humantime_serde")]
    pub workflow_retention: Duration,
    /// Timeout of one JetStream API call or publish acknowledgement.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Most jobs one lane (one tenant's jobs for one model at one priority) holds, and most
    /// submissions waiting at one priority. Beyond it the server itself
    /// refuses the publish, so the bound holds across broker replicas.
    pub max_queued_per_queue: i64,
    /// Most bytes the batch files bucket holds, over all tenants; past it
    /// an upload is refused `507 storage_full`. Set when the bucket is
    /// made.
    pub max_file_store_bytes: i64,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".into(),
            replicas: 1,
            duplicate_window: Duration::from_secs(10 * 60),
            result_retention: Duration::from_secs(24 * 3600),
            event_retention: Duration::from_secs(24 * 3600),
            usage_retention: Duration::from_secs(7 * 24 * 3600),
            token_retention: Duration::from_secs(15 * 60),
            dead_letter_retention: Duration::from_secs(30 * 24 * 3600),
            workflow_retention: Duration::from_secs(30 * 24 * 3600),
            request_timeout: Duration::from_secs(10),
            max_queued_per_queue: 100_000,
            max_file_store_bytes: 8 * 1024 * 1024 * 1024,
        }
    }
}

impl NatsConfig {
    pub fn validate(&self, issues: &mut Issues) {
        issues.check(
            self.max_file_store_bytes > 0,
            "nats.max_file_store_bytes",
            self.max_file_store_bytes,
            "must be positive",
        );
        issues.check(
            (1..=5).contains(&self.replicas),
            "nats.replicas",
            self.replicas,
            "must be between 1 and 5",
        );
        issues.check(
            self.max_queued_per_queue >= 1,
            "nats.max_queued_per_queue",
            self.max_queued_per_queue,
            "must be at least 1",
        );
        issues.check(
            !self.duplicate_window.is_zero(),
            "nats.duplicate_window",
            self.duplicate_window,
            "must be positive: retried publishes are de-duplicated within it",
        );
        for (field, d) in [
            ("nats.result_retention", self.result_retention),
            ("nats.event_retention", self.event_retention),
            ("nats.usage_retention", self.usage_retention),
            ("nats.token_retention", self.token_retention),
            ("nats.dead_letter_retention", self.dead_letter_retention),
            ("nats.workflow_retention", self.workflow_retention),
        ] {
            issues.check(
                d >= self.duplicate_window,
                field,
                d,
                "must be at least nats.duplicate_window",
            );
        }
    }
}

/// What a model takes as input; decides how a job's input is validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    Chat,
    Completion,
    /// Texts in, one vector per text out (OpenAI `/v1/embeddings`).
    Embedding,
    /// Named tensors in, named tensors out (KServe v2): Triton's models.
    Tensor,
}

/// One entry of the model registry. Adding a model is adding an entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    pub name: String,
    pub kind: ModelKind,
    /// Upper bound on `max_tokens` a job may ask for.
    #[serde(default = "default_max_tokens")]
    pub max_tokens: u32,
    /// Used when a job does not say.
    #[serde(default = "default_tokens")]
    pub default_max_tokens: u32,
    /// Upper bound on the size of a job's input (prompt or messages), in bytes.
    #[serde(default = "default_max_input_bytes")]
    pub max_input_bytes: usize,
    /// Attempts a job gets when it fails with a retryable error.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Answer repeated requests from a cache of results, without running
    /// them again; off unless set.
    #[serde(default)]
    pub cache: Option<CacheSpec>,
    /// What to do with personal data in this model's requests; the
    /// broker's `pii.default` when not given.
    #[serde(default)]
    pub pii: Option<PiiPolicy>,
    /// What its usage costs; free when not given.
    #[serde(default)]
    pub price: Option<Price>,
    /// Longest a job of this model runs (its own `timeout_ms` when that is
    /// shorter); past it the job is cancelled `timed_out`. A budget
    /// reserves engine time for all of it.
    #[serde(default = "default_model_timeout", with = "humantime_serde")]
    pub timeout: std::time::Duration,
    /// The MLflow model version this model is, `models:/<name>/<version>`:
    /// an alias following that registered model rolls out to it when the
    /// MLflow alias moves to that version.
    #[serde(default)]
    pub mlflow: Option<String>,
}

fn default_model_timeout() -> std::time::Duration {
    std::time::Duration::from_secs(600)
}

/// A model's prices, in US dollars.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Price {
    pub prompt_per_1k: f64,
    pub completion_per_1k: f64,
    /// Per second of engine time (one GPU's time for one request).
    pub gpu_second: f64,
    /// Per 1k tokens (prompt and completion) of an answer from the cache.
    pub cache_hit_per_1k: f64,
}

impl Price {
    /// The cost of one attempt's usage, in millionths of a dollar.
    pub fn cost_micros(
        &self,
        prompt: u32,
        completion: u32,
        engine_ms: u64,
        cache_hit: bool,
    ) -> i64 {
        let usd = if cache_hit {
            f64::from(prompt + completion) / 1000.0 * self.cache_hit_per_1k
        } else {
            f64::from(prompt) / 1000.0 * self.prompt_per_1k
                + f64::from(completion) / 1000.0 * self.completion_per_1k
                + engine_ms as f64 / 1000.0 * self.gpu_second
        };
        (usd * 1e6).round() as i64
    }

    pub(crate) fn valid(&self) -> bool {
        [
            self.prompt_per_1k,
            self.completion_per_1k,
            self.gpu_second,
            self.cache_hit_per_1k,
        ]
        .iter()
        .all(|p| p.is_finite() && *p >= 0.0)
    }
}

/// What the broker does with personal data found in a request, before the
/// request is stored or logged anywhere.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PiiPolicy {
    /// Leave it as it is.
    #[default]
    Off,
    /// Replace each finding with a typed placeholder (`[EMAIL]`).
    Mask,
    /// Refuse the request (422), naming the types found.
    Block,
}

/// The result cache of one model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSpec {
    /// How long a result is served from the cache.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// Also cache text generated with sampling (temperature absent or
    /// above 0), whose repeats would otherwise differ.
    #[serde(default)]
    pub sampled: bool,
}

fn default_max_tokens() -> u32 {
    4096
}
fn default_tokens() -> u32 {
    256
}
fn default_max_input_bytes() -> usize {
    256 * 1024
}
fn default_max_attempts() -> u32 {
    3
}

/// Checks a node or other id that becomes a subject token.
pub fn check_id(issues: &mut Issues, field: &str, value: &str) {
    issues.check(
        subjects::is_valid_id(value),
        field,
        value,
        "must be 1 to 64 of A-Z a-z 0-9 _ -",
    );
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn spec(name: &str) -> ModelSpec {
        ModelSpec {
            name: name.into(),
            kind: ModelKind::Chat,
            max_tokens: 16,
            default_max_tokens: 8,
            max_input_bytes: 1024,
            max_attempts: 3,
            cache: None,
            pii: None,
            price: None,
            timeout: default_model_timeout(),
            mlflow: None,
        }
    }

    #[test]
    fn file_values_defaults_and_unknown_fields() {
        #[derive(Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        struct File {
            nats: NatsConfig,
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, "nats:\n  url: nats://h:1\n  replicas: 3\n").unwrap();
        let f: File = load(Some(&path)).unwrap();
        assert_eq!(f.nats.url, "nats://h:1");
        assert_eq!(f.nats.replicas, 3);
        assert_eq!(f.nats.duplicate_window, Duration::from_secs(600));

        std::fs::write(&path, "nats:\n  urll: x\n").unwrap();
        let err = load::<File>(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("urll"), "{err}");

        let err = load::<File>(Some(&dir.path().join("missing.yaml")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not exist"), "{err}");
    }

    #[test]
    fn nats_config_checks_retention_against_dedup_window() {
        let mut issues = Issues::default();
        NatsConfig {
            replicas: 0,
            result_retention: Duration::from_secs(1),
            ..NatsConfig::default()
        }
        .validate(&mut issues);
        let text = issues.to_string();
        assert!(text.contains("nats.replicas"), "{text}");
        assert!(text.contains("nats.result_retention"), "{text}");
    }
}
