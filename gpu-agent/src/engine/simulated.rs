//! A simulated LLM engine for demos, load tests and scheduling tests. Its
//! output is a deterministic function of the input, so a test can tell that a
//! result belongs to its job: the completion repeats the prompt's words, in
//! order and cycling, up to `max_tokens` words (one word = one token).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::json;
use switchyard_runtime::Issues;
use switchyard_schemas::{EngineLoad, ErrorClass, JobInput, Priority, Usage};
use tokio::sync::Semaphore;

use super::{Engine, EngineError, Inference, TokenSink, check_models_and_slots};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulatedConfig {
    pub models: Vec<String>,
    /// Requests served at once; more wait inside the engine, as on a real one.
    pub slots: u32,
    /// Time to first token.
    #[serde(default, with = "humantime_serde")]
    pub base_latency: Duration,
    /// Time per generated token.
    #[serde(default, with = "humantime_serde")]
    pub per_token_latency: Duration,
    /// Failures to inject, for demos and tests of the failure paths.
    #[serde(default)]
    pub faults: Vec<Fault>,
    /// A KV cache to model: each generating request holds its prompt and
    /// `max_tokens` in it while it runs, requests wait when it is full,
    /// and its use is reported as vLLM reports its own.
    #[serde(default)]
    pub kv_cache: Option<KvCacheSpec>,
}

/// The simulated engine's KV cache.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvCacheSpec {
    /// Its size, in tokens.
    pub tokens: u32,
    /// The share held by work other than this agent's requests (other
    /// clients of the engine, a prefix cache kept warm), 0 to below 1.
    #[serde(default)]
    pub held: f64,
}

/// The KV cache: its free tokens, waited for in turn, its size, and the
/// tokens held now (a waiter's partial grant is not held yet).
struct KvCache {
    free: Semaphore,
    tokens: u32,
    used: AtomicU32,
}

/// Tokens of the cache a running request holds, given back when it ends.
struct KvHold<'a> {
    cache: &'a KvCache,
    tokens: u32,
    _permits: tokio::sync::SemaphorePermit<'a>,
}

impl Drop for KvHold<'_> {
    fn drop(&mut self) {
        self.cache.used.fetch_sub(self.tokens, Ordering::Relaxed);
    }
}

impl KvCache {
    fn new(spec: KvCacheSpec) -> Self {
        let held = (f64::from(spec.tokens) * spec.held).round() as u32;
        Self {
            free: Semaphore::new(spec.tokens.saturating_sub(held) as usize),
            tokens: spec.tokens,
            used: AtomicU32::new(held),
        }
    }

    /// Waits until `tokens` (at most the whole cache) fit.
    async fn hold(&self, tokens: u64) -> Result<KvHold<'_>, EngineError> {
        let tokens = tokens.clamp(1, u64::from(self.tokens)) as u32;
        let permits = self
            .free
            .acquire_many(tokens)
            .await
            .map_err(|_| EngineError {
                class: ErrorClass::EngineUnavailable,
                message: "engine is shutting down".into(),
            })?;
        self.used.fetch_add(tokens, Ordering::Relaxed);
        Ok(KvHold {
            cache: self,
            tokens,
            _permits: permits,
        })
    }

    fn usage(&self) -> f32 {
        let used = f64::from(self.used.load(Ordering::Relaxed));
        (used / f64::from(self.tokens.max(1))) as f32
    }
}

/// Fails requests whose prompt contains `prompt_contains` (every request
/// when it is absent) with `class`, after the base latency: all of them,
/// or the fraction `rate` of them, spread evenly (0.3: three in ten).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    pub class: ErrorClass,
    #[serde(default)]
    pub prompt_contains: Option<String>,
    #[serde(default)]
    pub rate: Option<f64>,
}

impl SimulatedConfig {
    pub fn validate(&self, issues: &mut Issues) {
        check_models_and_slots(&self.models, false, self.slots, issues);
        for (i, fault) in self.faults.iter().enumerate() {
            issues.check(
                fault.rate.is_none_or(|r| (0.0..=1.0).contains(&r)),
                &format!("engine.faults[{i}].rate"),
                fault.rate,
                "must be between 0 and 1",
            );
        }
        if let Some(kv) = &self.kv_cache {
            issues.check(
                kv.tokens > 0,
                "engine.kv_cache.tokens",
                kv.tokens,
                "must be positive",
            );
            issues.check(
                (0.0..1.0).contains(&kv.held),
                "engine.kv_cache.held",
                kv.held,
                "must be at least 0 and below 1",
            );
        }
    }
}

pub struct Simulated {
    config: SimulatedConfig,
    slots: Semaphore,
    /// Requests waiting for a slot: the engine's own queue.
    waiting: AtomicU32,
    /// Requests each fault has matched.
    matched: Vec<AtomicU64>,
    kv: Option<KvCache>,
}

impl Simulated {
    pub fn new(config: SimulatedConfig) -> Self {
        let slots = Semaphore::new(config.slots as usize);
        let matched = config.faults.iter().map(|_| AtomicU64::new(0)).collect();
        Self {
            kv: config.kv_cache.map(KvCache::new),
            config,
            slots,
            waiting: AtomicU32::new(0),
            matched,
        }
    }

    /// The fault that fails a request with `prompt`, if one does.
    fn fault_for(&self, prompt: &str) -> Option<&Fault> {
        self.config
            .faults
            .iter()
            .zip(&self.matched)
            .find(|(f, matched)| {
                let hit = f
                    .prompt_contains
                    .as_ref()
                    .is_none_or(|needle| prompt.contains(needle.as_str()));
                hit && f.rate.is_none_or(|rate| {
                    // The nth match fails when n × rate passes a whole number.
                    let n = matched.fetch_add(1, Ordering::Relaxed) as f64;
                    ((n + 1.0) * rate).floor() > (n * rate).floor()
                })
            })
            .map(|(f, _)| f)
    }
}

/// The completion the simulated engine gives for `prompt_words`: the words
/// repeated in order until `max_tokens` words.
pub fn echo_completion(prompt_words: &[&str], max_tokens: u32) -> Vec<String> {
    prompt_words
        .iter()
        .cycle()
        .take(if prompt_words.is_empty() {
            0
        } else {
            max_tokens as usize
        })
        .map(|w| (*w).to_owned())
        .collect()
}

/// Dimensions of the simulated engine's embeddings.
const EMBEDDING_DIMS: usize = 8;

/// One unit vector per text, drawn from a hash of the text: the same text
/// always gets the same vector, different texts (almost surely) different
/// ones.
fn embed(model: &str, texts: &[String], words: usize) -> Inference {
    let data: Vec<serde_json::Value> = texts
        .iter()
        .enumerate()
        .map(|(index, text)| {
            // FNV-1a, then one step of a xorshift per dimension.
            let mut h = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            });
            let raw: Vec<f64> = (0..EMBEDDING_DIMS)
                .map(|_| {
                    h ^= h << 13;
                    h ^= h >> 7;
                    h ^= h << 17;
                    (h >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
                })
                .collect();
            let norm = raw
                .iter()
                .map(|x| x * x)
                .sum::<f64>()
                .sqrt()
                .max(f64::EPSILON);
            let embedding: Vec<f64> = raw.iter().map(|x| x / norm).collect();
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    let prompt_tokens = u32::try_from(words).unwrap_or(u32::MAX);
    Inference {
        output: json!({
            "object": "list",
            "model": model,
            "data": data,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        }),
        usage: Usage {
            prompt_tokens,
            completion_tokens: 0,
        },
    }
}

fn prompt_text(input: &JobInput) -> String {
    match input {
        JobInput::Chat(c) => c
            .messages
            .iter()
            .map(|m| m.content.as_str())
            .collect::<Vec<_>>()
            .join(" "),
        JobInput::Completion(c) => c.prompt.clone(),
        JobInput::Embedding(e) => e.input.join(" "),
        JobInput::Tensor(_) => String::new(),
    }
}

#[async_trait]
impl Engine for Simulated {
    fn models(&self) -> Vec<String> {
        self.config.models.clone()
    }

    fn slots(&self) -> u32 {
        self.config.slots
    }

    async fn ready(&self) -> bool {
        true
    }

    async fn load(&self) -> EngineLoad {
        EngineLoad {
            queue_depth: Some(self.waiting.load(Ordering::Relaxed)),
            kv_cache_usage: self.kv.as_ref().map(KvCache::usage),
        }
    }

    async fn infer(
        &self,
        model: &str,
        input: &JobInput,
        _priority: Priority,
        tokens: Option<&TokenSink>,
    ) -> Result<Inference, EngineError> {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let slot = self.slots.acquire().await;
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        let _slot = slot.map_err(|_| EngineError {
            class: ErrorClass::EngineUnavailable,
            message: "engine is shutting down".into(),
        })?;
        if let JobInput::Tensor(t) = input {
            // An identity model: each input comes back as an output, after
            // the per-token time for each of its values.
            let values: usize = t.inputs.iter().map(|i| i.data.len()).sum();
            let values = u32::try_from(values).unwrap_or(u32::MAX);
            pause(self.config.base_latency + self.config.per_token_latency * values).await;
            let output = json!({"model_name": model, "model_version": "1", "outputs": t.inputs});
            return Ok(Inference {
                output,
                usage: Usage::default(),
            });
        }
        let prompt = prompt_text(input);
        if let Some(fault) = self.fault_for(&prompt) {
            pause(self.config.base_latency).await;
            return Err(EngineError {
                class: fault.class,
                message: format!("simulated {} fault", fault.class.code()),
            });
        }
        let words: Vec<&str> = prompt.split_whitespace().collect();
        if let JobInput::Embedding(e) = input {
            pause(self.config.base_latency).await;
            return Ok(embed(model, &e.input, words.len()));
        }
        let max_tokens = input.max_tokens().unwrap_or(16);
        // Held until the request ends; it waits, as queued in the engine,
        // until the cache has room.
        let _kv = match &self.kv {
            Some(kv) => {
                self.waiting.fetch_add(1, Ordering::Relaxed);
                let held = kv.hold(words.len() as u64 + u64::from(max_tokens)).await;
                self.waiting.fetch_sub(1, Ordering::Relaxed);
                Some(held?)
            }
            None => None,
        };
        let completion = echo_completion(&words, max_tokens);
        let usage = Usage {
            prompt_tokens: u32::try_from(words.len()).unwrap_or(u32::MAX),
            completion_tokens: u32::try_from(completion.len()).unwrap_or(u32::MAX),
        };
        match tokens {
            Some(sink) => {
                pause(self.config.base_latency).await;
                for (i, word) in completion.iter().enumerate() {
                    pause(self.config.per_token_latency).await;
                    let piece = if i == 0 {
                        word.clone()
                    } else {
                        format!(" {word}")
                    };
                    // A closed sink only means nobody listens any more.
                    let _ = sink.send(piece);
                }
            }
            None => {
                pause(
                    self.config.base_latency
                        + self.config.per_token_latency * usage.completion_tokens,
                )
                .await;
            }
        }
        let text = completion.join(" ");
        let usage_json = json!({
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        });
        let output = match input {
            JobInput::Chat(_) => json!({
                "object": "chat.completion",
                "model": model,
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "length",
                }],
                "usage": usage_json,
            }),
            _ => json!({
                "object": "text_completion",
                "model": model,
                "choices": [{"index": 0, "text": text, "finish_reason": "length"}],
                "usage": usage_json,
            }),
        };
        Ok(Inference { output, usage })
    }
}

/// Waits `d`; not at all when it is zero, where a timer would still wait
/// for its next tick (a millisecond).
async fn pause(d: Duration) {
    if !d.is_zero() {
        tokio::time::sleep(d).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_schemas::{ChatInput, ChatMessage, CompletionInput};

    fn engine(slots: u32) -> Simulated {
        Simulated::new(SimulatedConfig {
            models: vec!["m".into()],
            slots,
            base_latency: Duration::from_millis(10),
            per_token_latency: Duration::from_millis(1),
            faults: vec![
                Fault {
                    class: ErrorClass::Overloaded,
                    prompt_contains: Some("poison".into()),
                    rate: None,
                },
                Fault {
                    class: ErrorClass::Internal,
                    prompt_contains: Some("flaky".into()),
                    rate: Some(0.3),
                },
            ],
            kv_cache: None,
        })
    }

    #[tokio::test]
    async fn streamed_pieces_add_up_to_the_output() {
        let input = JobInput::Completion(CompletionInput {
            prompt: "one two three".into(),
            max_tokens: Some(5),
            temperature: None,
            sampling: Default::default(),
        });
        let (sink, mut pieces) = tokio::sync::mpsc::unbounded_channel();
        let out = engine(1)
            .infer("m", &input, Priority::Normal, Some(&sink))
            .await
            .unwrap();
        drop(sink);
        let mut streamed = Vec::new();
        while let Some(p) = pieces.recv().await {
            streamed.push(p);
        }
        assert_eq!(streamed.len(), 5);
        assert_eq!(streamed.concat(), out.output["choices"][0]["text"]);
    }

    #[tokio::test]
    async fn faults_fail_only_the_requests_they_match() {
        let input = |prompt: &str| {
            JobInput::Completion(CompletionInput {
                prompt: prompt.into(),
                max_tokens: Some(1),
                temperature: None,
                sampling: Default::default(),
            })
        };
        let e = engine(1);
        let err = e
            .infer("m", &input("a poison pill"), Priority::Normal, None)
            .await
            .unwrap_err();
        assert_eq!(err.class, ErrorClass::Overloaded);
        assert!(
            e.infer("m", &input("wholesome"), Priority::Normal, None)
                .await
                .is_ok()
        );
        // A rate fails that share of its matches, spread evenly.
        let mut failed = Vec::new();
        for i in 0..20 {
            if e.infer("m", &input("a flaky one"), Priority::Normal, None)
                .await
                .is_err()
            {
                failed.push(i);
            }
        }
        assert_eq!(failed, [3, 6, 9, 13, 16, 19]);
    }

    #[tokio::test]
    async fn chat_output_is_openai_shaped_and_follows_the_input() {
        let input = JobInput::Chat(ChatInput {
            messages: vec![
                ChatMessage {
                    role: "system".into(),
                    content: "be brief".into(),
                },
                ChatMessage {
                    role: "user".into(),
                    content: "job-7".into(),
                },
            ],
            max_tokens: Some(5),
            temperature: None,
            sampling: Default::default(),
        });
        let out = engine(1)
            .infer("m", &input, Priority::Normal, None)
            .await
            .unwrap();
        assert_eq!(
            out.output["choices"][0]["message"]["content"],
            "be brief job-7 be brief"
        );
        assert_eq!(out.output["object"], "chat.completion");
        assert_eq!(
            out.usage,
            Usage {
                prompt_tokens: 3,
                completion_tokens: 5
            }
        );
        assert_eq!(out.output["usage"]["total_tokens"], 8);
    }

    #[tokio::test]
    async fn completion_of_an_empty_prompt_is_empty() {
        let input = JobInput::Completion(CompletionInput {
            prompt: "  ".into(),
            max_tokens: Some(4),
            temperature: None,
            sampling: Default::default(),
        });
        let out = engine(1)
            .infer("m", &input, Priority::Normal, None)
            .await
            .unwrap();
        assert_eq!(out.output["choices"][0]["text"], "");
        assert_eq!(out.usage.completion_tokens, 0);
    }

    /// Runs two `input`s at once: the engine's load 5 ms in, and how long
    /// both took.
    async fn two_at_once(e: &Simulated, input: &JobInput) -> (EngineLoad, Duration) {
        let start = tokio::time::Instant::now();
        let probe = async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            e.load().await
        };
        let (a, b, load) = tokio::join!(
            e.infer("m", input, Priority::Normal, None),
            e.infer("m", input, Priority::Normal, None),
            probe
        );
        a.unwrap();
        b.unwrap();
        (load, start.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn latency_is_base_plus_per_token_and_slots_queue_requests() {
        let e = engine(1);
        let input = JobInput::Completion(CompletionInput {
            prompt: "a".into(),
            max_tokens: Some(10),
            temperature: None,
            sampling: Default::default(),
        });
        let (load, took) = two_at_once(&e, &input).await;
        assert_eq!(load.queue_depth, Some(1), "the second request waited");
        assert_eq!(e.load().await.queue_depth, Some(0));
        // One slot: the second request waits for the first (2 × (10ms + 10 × 1ms)).
        assert_eq!(took, Duration::from_millis(40));
    }

    #[tokio::test(start_paused = true)]
    async fn requests_wait_for_room_in_the_kv_cache_and_its_use_is_reported() {
        // 100 tokens, half held by others: room for one request of 2 + 30.
        let e = Simulated::new(SimulatedConfig {
            kv_cache: Some(KvCacheSpec {
                tokens: 100,
                held: 0.5,
            }),
            ..engine(4).config
        });
        let input = JobInput::Completion(CompletionInput {
            prompt: "a b".into(),
            max_tokens: Some(30),
            temperature: None,
            sampling: Default::default(),
        });
        assert_eq!(e.load().await.kv_cache_usage, Some(0.5));
        let (load, took) = two_at_once(&e, &input).await;
        assert_eq!(load.queue_depth, Some(1), "the second waited for the cache");
        assert_eq!(load.kv_cache_usage, Some(0.82));
        assert_eq!(e.load().await.kv_cache_usage, Some(0.5), "given back");
        // Four slots, but one request at a time fits: 2 × (10ms + 30 × 1ms).
        assert_eq!(took, Duration::from_millis(80));
    }
}
