//! The result cache: a request repeated exactly — same model, same input
//! after admission filled in its defaults — is answered from an earlier
//! result without touching a GPU. Opt-in per model (`cache:` in the
//! registry); kept in a JetStream KV bucket, so every broker replica shares
//! it. Only calls that wait for their answer use it.

use std::time::Duration;

use async_nats::jetstream::kv;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use switchyard_runtime::{CacheSpec, Registry};
use switchyard_schemas::{Job, JobInput, now_ms};
use tracing::debug;

use crate::metrics as m;

/// The bucket's lifetime for entries: the longest `ttl` of any model.
pub fn longest_ttl(registry: &Registry) -> Option<Duration> {
    registry
        .models()
        .iter()
        .filter_map(|spec| spec.cache.as_ref().map(|c| c.ttl))
        .max()
}

#[derive(Clone)]
pub struct ResultCache {
    kv: kv::Store,
}

#[derive(Serialize, Deserialize)]
struct Entry {
    at_ms: i64,
    output: Value,
}

/// What one request does with the cache.
pub struct Lookup {
    key: Option<String>,
    ttl: Duration,
    /// `hit`, `miss` or `bypass`, for the `X-Switchyard-Cache` header;
    /// none where the model is not cached.
    pub state: Option<&'static str>,
}

impl Lookup {
    /// For a request that does not use the cache.
    pub fn unused() -> Self {
        Lookup {
            key: None,
            ttl: Duration::ZERO,
            state: None,
        }
    }
}

impl ResultCache {
    pub fn new(kv: kv::Store) -> Self {
        Self { kv }
    }

    /// Looks `job` up, unless its model is not cached, its output would
    /// differ on a repeat, or the client asked to `bypass` the cache.
    pub async fn look_up(
        &self,
        spec: Option<&CacheSpec>,
        job: &Job,
        bypass: bool,
    ) -> (Lookup, Option<Value>) {
        let Some(spec) = spec.filter(|spec| spec.sampled || deterministic(&job.input)) else {
            return (Lookup::unused(), None);
        };
        let model = job.model.as_str();
        if bypass {
            metrics::counter!(m::CACHE, "model" => model.to_owned(), "outcome" => "bypass")
                .increment(1);
            // Not read, but refreshed with the new result.
            let lookup = Lookup {
                key: Some(digest(job)),
                ttl: spec.ttl,
                state: Some("bypass"),
            };
            return (lookup, None);
        }
        let key = digest(job);
        let found = match self.kv.get(&key).await {
            Ok(Some(bytes)) => serde_json::from_slice::<Entry>(&bytes)
                .ok()
                .filter(|e| {
                    now_ms() - e.at_ms < i64::try_from(spec.ttl.as_millis()).unwrap_or(i64::MAX)
                })
                .map(|e| e.output),
            Ok(None) => None,
            Err(e) => {
                debug!(error = %e, "result cache unreadable; treated as a miss");
                None
            }
        };
        let state = if found.is_some() { "hit" } else { "miss" };
        metrics::counter!(m::CACHE, "model" => model.to_owned(), "outcome" => state).increment(1);
        let lookup = Lookup {
            key: Some(key),
            ttl: spec.ttl,
            state: Some(state),
        };
        (lookup, found)
    }

    /// Keeps a fresh result for the requests that repeat this one.
    pub async fn store(&self, lookup: &Lookup, output: &Value) {
        let Some(key) = &lookup.key else {
            return;
        };
        if lookup.ttl.is_zero() {
            return;
        }
        let entry = Entry {
            at_ms: now_ms(),
            output: output.clone(),
        };
        let Ok(bytes) = serde_json::to_vec(&entry) else {
            return;
        };
        // A result too large for one message is simply not cached.
        if let Err(e) = self.kv.put(key, bytes.into()).await {
            debug!(error = %e, "result not cached");
        }
    }
}

/// Whether a repeat gives the same output: embeddings and tensors do;
/// generated text only when it is not sampled (temperature 0).
fn deterministic(input: &JobInput) -> bool {
    match input {
        JobInput::Chat(c) => c.temperature == Some(0.0),
        JobInput::Completion(c) => c.temperature == Some(0.0),
        JobInput::Embedding(_) | JobInput::Tensor(_) => true,
    }
}

/// The key: a SHA-256 of the tenant, the model and the canonical JSON of
/// the input (object keys sorted), as admission left it. The tenant is in
/// it so that a hit never tells one tenant what another asked.
fn digest(job: &Job) -> String {
    let input = serde_json::to_vec(&job.input).unwrap_or_default();
    let mut hash = Sha256::new();
    hash.update(job.tenant.as_bytes());
    hash.update([0]);
    hash.update(job.model.as_bytes());
    hash.update([0]);
    hash.update(&input);
    hex::encode(hash.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_schemas::{CompletionInput, Priority, SCHEMA_VERSION, Sampling};

    fn job(prompt: &str, temperature: Option<f64>) -> Job {
        Job {
            v: SCHEMA_VERSION,
            id: "a".into(),
            model: "m".into(),
            alias: None,
            tenant: "t".into(),
            priority: Priority::Normal,
            input: JobInput::Completion(CompletionInput {
                prompt: prompt.into(),
                max_tokens: Some(4),
                temperature,
                sampling: Sampling::default(),
            }),
            metadata: Default::default(),
            submitted_at_ms: 0,
            attempt: 1,
            max_attempts: 1,
            failures: Vec::new(),
            deadline_ms: None,
            timeout_ms: None,
            stream: false,
            webhook: None,
            api_key: None,
            trace_id: None,
            seal: String::new(),
        }
    }

    #[test]
    fn the_key_is_the_tenant_s_request_not_the_job() {
        let a = job("hello", Some(0.0));
        let b = Job {
            id: "b".into(),
            submitted_at_ms: 99,
            ..job("hello", Some(0.0))
        };
        assert_eq!(digest(&a), digest(&b), "ids and times do not matter");
        let other = Job {
            tenant: "other".into(),
            ..job("hello", Some(0.0))
        };
        assert_ne!(digest(&a), digest(&other), "tenants do not share");
        assert_ne!(digest(&a), digest(&job("hello!", Some(0.0))));
        assert_ne!(
            digest(&a),
            digest(&Job {
                model: "n".into(),
                ..job("hello", Some(0.0))
            })
        );
    }

    #[test]
    fn only_unsampled_text_is_deterministic() {
        assert!(deterministic(&job("x", Some(0.0)).input));
        assert!(!deterministic(&job("x", Some(0.7)).input));
        assert!(
            !deterministic(&job("x", None).input),
            "the engine's default samples"
        );
    }
}
