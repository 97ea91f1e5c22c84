//! Admission: turning a client's submission into a queued job. Shared by the
//! HTTP API and both NATS intakes, so every door applies the same rules.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use async_nats::jetstream::Context;
use serde::de::DeserializeOwned;
use switchyard_runtime::nats;
use switchyard_runtime::{ModelKind, ModelSpec, Registry};
use switchyard_schemas::{
    ChatInput, CompletionInput, DEFAULT_TENANT, EmbeddingInput, Job, JobInput, JobResult, Outcome,
    Priority, SAMPLING_FIELDS, SCHEMA_VERSION, Sampling, Submission, TensorInput, UsageEvent,
    encode, now_ms, subjects,
};
use tracing::{debug, warn};

use crate::billing;
use crate::budget::{self, Budgets};
use crate::limits::{KeyLimits, Limits};
use crate::metrics as m;
use crate::pii::Pii;
use crate::webhooks::Webhooks;
use switchyard_store::quotas::Settlement;
use switchyard_store::{Inserted, JobStore, Source, StoreError};

const MAX_METADATA_ENTRIES: usize = 16;
const MAX_METADATA_KEY: usize = 64;
const MAX_METADATA_VALUE: usize = 512;
const CHAT_ROLES: [&str; 4] = ["system", "user", "assistant", "tool"];

/// Why a submission was refused. Each variant has a stable code; the HTTP
/// status is chosen at the HTTP edge.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Rejection {
    #[error("{0}")]
    MalformedBody(String),
    #[error("{0}")]
    InvalidRequest(String),
    #[error("model {0:?} is not served here")]
    UnknownModel(String),
    #[error("input is {size} bytes; model {model:?} takes at most {limit}")]
    InputTooLarge {
        model: String,
        size: usize,
        limit: usize,
    },
    /// The webhook may not be used: the address guard refused it, or no
    /// secret is there to sign it.
    #[error("{0}")]
    WebhookRefused(String),
    /// The request holds personal data of these types and its policy is
    /// `block`.
    #[error("the request holds personal data ({0}); it is refused here")]
    PiiFound(String),
    /// The tenant's budget for this period has no room for the job's
    /// estimated cost.
    #[error(
        "tenant {tenant:?} has not ${left:.6} left of its budget for a job estimated at ${estimate:.6}"
    )]
    OverBudget {
        tenant: String,
        left: f64,
        estimate: f64,
    },
}

impl Rejection {
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::MalformedBody(_) => "malformed_body",
            Rejection::InvalidRequest(_) => "invalid_request",
            Rejection::UnknownModel(_) => "unknown_model",
            Rejection::InputTooLarge { .. } => "input_too_large",
            Rejection::WebhookRefused(_) => "webhook_refused",
            Rejection::PiiFound(_) => "pii_detected",
            Rejection::OverBudget { .. } => "budget_exceeded",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// The job's queue is at `nats.max_queued_per_queue`: not queued.
    #[error("the {priority} queue of model {model:?} is full")]
    QueueFull { priority: Priority, model: String },
    /// The tenant is over one of its rate limits: not queued.
    #[error("tenant {tenant:?} is over its {limit} limit; retry in {retry_after} s")]
    RateLimited {
        tenant: String,
        limit: &'static str,
        retry_after: u64,
    },
    /// The queue did not confirm the job: it is not queued and will not run.
    #[error("the queue is unavailable: {0}")]
    QueueUnavailable(String),
    /// The client's job id names another tenant's job.
    #[error("job id {0:?} is taken; choose another")]
    IdTaken(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Checks a submission against the registry and builds the job to queue.
pub fn validate(
    registry: &Registry,
    submission: Submission,
    priority: Priority,
    id: String,
) -> Result<Job, Rejection> {
    if !subjects::is_valid_id(&id) {
        return Err(Rejection::InvalidRequest(format!(
            "id {id:?} must be 1 to 64 of A-Z a-z 0-9 _ -"
        )));
    }
    let tenant = submission
        .tenant
        .clone()
        .unwrap_or_else(|| DEFAULT_TENANT.to_owned());
    if !subjects::is_valid_id(&tenant) {
        return Err(Rejection::InvalidRequest(format!(
            "tenant {tenant:?} must be 1 to 64 of A-Z a-z 0-9 _ -"
        )));
    }
    let spec = registry
        .get(&submission.model)
        .ok_or_else(|| Rejection::UnknownModel(submission.model.clone()))?;
    check_metadata(&submission)?;
    check_limits(&submission)?;
    let size = submission.input.to_string().len();
    if size > spec.max_input_bytes {
        return Err(Rejection::InputTooLarge {
            model: spec.name.clone(),
            size,
            limit: spec.max_input_bytes,
        });
    }
    let input = typed_input(spec, submission.input)?;
    if submission.stream && !input.generates_text() {
        return Err(Rejection::InvalidRequest(format!(
            "stream is for chat and completion models; {:?} is not one",
            spec.name
        )));
    }
    Ok(Job {
        v: SCHEMA_VERSION,
        id,
        model: submission.model,
        tenant,
        priority,
        input,
        metadata: submission.metadata,
        submitted_at_ms: now_ms(),
        attempt: 1,
        max_attempts: spec.max_attempts,
        failures: Vec::new(),
        deadline_ms: submission.deadline_ms,
        timeout_ms: submission.timeout_ms,
        stream: submission.stream,
        webhook: submission.webhook,
        api_key: None,
    })
}

fn check_metadata(s: &Submission) -> Result<(), Rejection> {
    if s.metadata.len() > MAX_METADATA_ENTRIES {
        return Err(Rejection::InvalidRequest(format!(
            "metadata has {} entries; at most {MAX_METADATA_ENTRIES}",
            s.metadata.len()
        )));
    }
    match s
        .metadata
        .iter()
        .find(|(k, v)| k.is_empty() || k.len() > MAX_METADATA_KEY || v.len() > MAX_METADATA_VALUE)
    {
        Some((k, _)) => Err(Rejection::InvalidRequest(format!(
            "metadata entry {k:?}: keys are 1 to {MAX_METADATA_KEY} bytes, values at most {MAX_METADATA_VALUE}"
        ))),
        None => Ok(()),
    }
}

const MAX_TIMEOUT_MS: u64 = 24 * 3600 * 1000;

fn check_limits(s: &Submission) -> Result<(), Rejection> {
    if let Some(deadline) = s.deadline_ms.filter(|d| *d <= now_ms()) {
        return Err(Rejection::InvalidRequest(format!(
            "deadline_ms {deadline} is already past"
        )));
    }
    match s.timeout_ms {
        Some(t) if t == 0 || t > MAX_TIMEOUT_MS => Err(Rejection::InvalidRequest(format!(
            "timeout_ms {t} must be between 1 and {MAX_TIMEOUT_MS}"
        ))),
        _ => Ok(()),
    }
}

/// Parses `input` strictly (unknown fields are refused, so a typo is not
/// silently ignored), then applies the model's limits.
fn typed_input(spec: &ModelSpec, value: serde_json::Value) -> Result<JobInput, Rejection> {
    let mut input = match spec.kind {
        ModelKind::Chat => {
            let chat: ChatInput = strict(value, &text_fields("messages"))?;
            if chat.messages.is_empty() {
                return Err(Rejection::InvalidRequest(
                    "input.messages must not be empty".into(),
                ));
            }
            if let Some((i, msg)) = chat
                .messages
                .iter()
                .enumerate()
                .find(|(_, msg)| !CHAT_ROLES.contains(&msg.role.as_str()))
            {
                return Err(Rejection::InvalidRequest(format!(
                    "input.messages[{i}].role {:?} must be one of {}",
                    msg.role,
                    CHAT_ROLES.join(", ")
                )));
            }
            JobInput::Chat(chat)
        }
        ModelKind::Completion => {
            JobInput::Completion(strict::<CompletionInput>(value, &text_fields("prompt"))?)
        }
        ModelKind::Embedding => {
            let texts: EmbeddingInput = strict(value, &["input", "dimensions"])?;
            check_texts(&texts)?;
            return Ok(JobInput::Embedding(texts));
        }
        ModelKind::Tensor => {
            let tensors: TensorInput = strict(value, &["inputs"])?;
            check_tensors(&tensors)?;
            return Ok(JobInput::Tensor(tensors));
        }
    };
    let (max_tokens, temperature, sampling) = match &mut input {
        JobInput::Chat(c) => (&mut c.max_tokens, c.temperature, &c.sampling),
        JobInput::Completion(c) => (&mut c.max_tokens, c.temperature, &c.sampling),
        JobInput::Embedding(_) | JobInput::Tensor(_) => return Ok(input),
    };
    check_sampling(sampling)?;
    match *max_tokens {
        Some(n) if n == 0 || n > spec.max_tokens => {
            return Err(Rejection::InvalidRequest(format!(
                "input.max_tokens {n} must be between 1 and {} for model {:?}",
                spec.max_tokens, spec.name
            )));
        }
        Some(_) => {}
        None => *max_tokens = Some(spec.default_max_tokens),
    }
    if let Some(t) = temperature.filter(|t| !(0.0..=2.0).contains(t)) {
        return Err(Rejection::InvalidRequest(format!(
            "input.temperature {t} must be between 0 and 2"
        )));
    }
    Ok(input)
}

/// The fields a chat or completion input may have: its text, then the
/// sampling parameters.
fn text_fields(text: &'static str) -> Vec<&'static str> {
    [text, "max_tokens", "temperature"]
        .into_iter()
        .chain(SAMPLING_FIELDS)
        .collect()
}

/// OpenAI's bounds, so that an engine never sees what OpenAI would refuse.
fn check_sampling(s: &Sampling) -> Result<(), Rejection> {
    let bad =
        |field: &str, rule: &str| Err(Rejection::InvalidRequest(format!("input.{field} {rule}")));
    if s.top_p.is_some_and(|p| !(p > 0.0 && p <= 1.0)) {
        return bad("top_p", "must be above 0 and at most 1");
    }
    for (field, value) in [
        ("presence_penalty", s.presence_penalty),
        ("frequency_penalty", s.frequency_penalty),
    ] {
        if value.is_some_and(|v| !(-2.0..=2.0).contains(&v)) {
            return bad(field, "must be between -2 and 2");
        }
    }
    if s.stop.len() > 4 || s.stop.iter().any(String::is_empty) {
        return bad("stop", "holds at most 4 non-empty strings");
    }
    Ok(())
}

/// As many texts as OpenAI's API takes in one request.
const MAX_TEXTS: usize = 2048;

fn check_texts(e: &EmbeddingInput) -> Result<(), Rejection> {
    if e.input.is_empty() || e.input.len() > MAX_TEXTS {
        return Err(Rejection::InvalidRequest(format!(
            "input.input holds {} texts; 1 to {MAX_TEXTS}",
            e.input.len()
        )));
    }
    if let Some(i) = e.input.iter().position(String::is_empty) {
        return Err(Rejection::InvalidRequest(format!(
            "input.input[{i}] is empty"
        )));
    }
    match e.dimensions {
        Some(0) => Err(Rejection::InvalidRequest(
            "input.dimensions must be positive".into(),
        )),
        _ => Ok(()),
    }
}

const DATATYPES: [&str; 13] = [
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16",
    "FP32", "FP64", "BYTES",
];

/// Each tensor's data must fill its shape; whether the shape suits the
/// model is the engine's to say.
fn check_tensors(t: &TensorInput) -> Result<(), Rejection> {
    if t.inputs.is_empty() {
        return Err(Rejection::InvalidRequest(
            "input.inputs must not be empty".into(),
        ));
    }
    for (i, tensor) in t.inputs.iter().enumerate() {
        if tensor.name.is_empty() || !DATATYPES.contains(&tensor.datatype.as_str()) {
            return Err(Rejection::InvalidRequest(format!(
                "input.inputs[{i}] needs a name and a datatype of {}",
                DATATYPES.join(", ")
            )));
        }
        let elements = tensor.shape.iter().try_fold(1u64, |n, d| n.checked_mul(*d));
        if elements != Some(tensor.data.len() as u64) {
            return Err(Rejection::InvalidRequest(format!(
                "input.inputs[{i}] has {} values; shape {:?} holds {}",
                tensor.data.len(),
                tensor.shape,
                elements.map_or("too many".to_owned(), |n| n.to_string())
            )));
        }
    }
    Ok(())
}

fn strict<T: DeserializeOwned>(value: serde_json::Value, fields: &[&str]) -> Result<T, Rejection> {
    let Some(obj) = value.as_object() else {
        return Err(Rejection::InvalidRequest("input must be an object".into()));
    };
    let allowed: BTreeSet<&str> = fields.iter().copied().collect();
    if let Some(unknown) = obj.keys().find(|k| !allowed.contains(k.as_str())) {
        return Err(Rejection::InvalidRequest(format!(
            "input.{unknown} is not a known field; expected {}",
            fields.join(", ")
        )));
    }
    serde_json::from_value(value).map_err(|e| Rejection::InvalidRequest(format!("input: {e}")))
}

/// Admits jobs: validates, records, and enqueues durably. A job counts as
/// queued only once JetStream has confirmed it.
#[derive(Clone)]
pub struct Admitter {
    pub registry: Arc<Registry>,
    pub store: Arc<dyn JobStore>,
    pub js: Context,
    pub webhooks: Arc<Webhooks>,
    pub pii: Arc<Pii>,
    pub budgets: Arc<Budgets>,
    pub limits: Arc<Limits>,
}

impl Admitter {
    /// Checks a submission and builds its job, personal data masked.
    pub fn validate(
        &self,
        submission: Submission,
        priority: Priority,
        id: String,
    ) -> Result<Job, Rejection> {
        let mut job = validate(&self.registry, submission, priority, id)?;
        self.pii.apply(&mut job)?;
        Ok(job)
    }

    #[tracing::instrument(name = "job.admit", skip_all, fields(job_id = %id, source = source.as_str()))]
    pub async fn submit(
        &self,
        submission: Submission,
        priority: Priority,
        id: String,
        source: Source,
        key: Option<&KeyLimits>,
    ) -> Result<Job, SubmitError> {
        let started = Instant::now();
        let reject = |r: &Rejection| {
            metrics::counter!(m::REJECTIONS, "source" => source.as_str(), "code" => r.code())
                .increment(1);
        };
        let mut job = self
            .validate(submission, priority, id)
            .inspect_err(reject)?;
        job.api_key = key.map(|k| k.id.clone());
        self.webhooks.admit(&mut job).await.inspect_err(reject)?;
        let takes = self.limits.takes(&job.tenant, key, budget::tokens(&job));
        if !takes.is_empty()
            && let Some((limit, wait_us)) = self.store.take(&takes, now_ms() * 1000).await?
        {
            metrics::counter!(m::REJECTIONS, "source" => source.as_str(), "code" => "rate_limited")
                .increment(1);
            return Err(SubmitError::RateLimited {
                tenant: job.tenant,
                limit,
                retry_after: u64::try_from(wait_us)
                    .unwrap_or(0)
                    .div_ceil(1_000_000)
                    .max(1),
            });
        }
        // Recorded first, so that a crash between here and the queue's
        // confirmation leaves a record the outbox publishes again.
        let inserted = self
            .store
            .insert(&job, source, budget::tokens(&job))
            .await?;
        if inserted != Inserted::New
            && let Some(held) = self.store.get(&job.id).await?
            && held.tenant != job.tenant
        {
            return Err(SubmitError::IdTaken(job.id));
        }
        if inserted == (Inserted::Existing { enqueued: true }) {
            // A repeat of a job already queued (a client retrying with its own
            // id, even past the server's de-duplication window): the same job.
            return Ok(job);
        }
        let places = self.limits.places(&job.tenant, key);
        if !places.is_empty() {
            let holders: Vec<(String, u32)> =
                places.iter().map(|(h, max, _)| (h.clone(), *max)).collect();
            if let Some(full) = self.store.take_places(&job.id, &holders).await? {
                self.discard(&job.id).await;
                metrics::counter!(m::REJECTIONS, "source" => source.as_str(), "code" => "rate_limited")
                    .increment(1);
                return Err(SubmitError::RateLimited {
                    tenant: job.tenant,
                    limit: places[full].2,
                    retry_after: 1,
                });
            }
        }
        if let Some(r) = self.budgets.reservation(&self.registry, &job, now_ms()) {
            let left = self.store.reserve(&job.id, &r).await?;
            if let Some(left) = left {
                self.discard(&job.id).await;
                let over = Rejection::OverBudget {
                    tenant: job.tenant,
                    left: left as f64 / 1e6,
                    estimate: r.micros as f64 / 1e6,
                };
                reject(&over);
                return Err(over.into());
            }
        }
        match self.enqueue(&job).await {
            Ok(()) => {
                if let Err(e) = self.store.mark_enqueued(&job.id, now_ms()).await {
                    // The job is queued; at worst the outbox publishes it
                    // again and the server drops the duplicate.
                    warn!(job_id = %job.id, error = %e, "could not mark job enqueued");
                }
            }
            Err(EnqueueError::Unconfirmed(reason)) => {
                // The job may be in the queue already (only its confirmation
                // was lost): the record stays, unconfirmed, and the outbox
                // publishes it again under the same message id, which the
                // server drops if it has it. Discarding the record here would
                // leave a queued job with no record to project its result on.
                warn!(job_id = %job.id, %reason, "the queue did not confirm the job; the outbox will");
            }
            Err(refused) => {
                // The client is told the job was not queued, so no record of
                // it stays behind for the outbox to publish later.
                self.discard(&job.id).await;
                return Err(match refused {
                    EnqueueError::Full => SubmitError::QueueFull {
                        priority: job.priority,
                        model: job.model,
                    },
                    EnqueueError::Unconfirmed(reason) | EnqueueError::Unavailable(reason) => {
                        SubmitError::QueueUnavailable(reason)
                    }
                });
            }
        }
        debug!(job_id = %job.id, model = %job.model, priority = %job.priority, source = source.as_str(), "job queued");
        metrics::counter!(m::SUBMISSIONS, "source" => source.as_str()).increment(1);
        metrics::histogram!(m::SUBMIT_SECONDS).record(started.elapsed().as_secs_f64());
        Ok(job)
    }

    /// Forgets a job that was recorded but will not be queued, and gives
    /// back what it reserved of its tenant's budget.
    async fn discard(&self, id: &str) {
        if let Err(e) = self.store.discard_unqueued(id).await {
            warn!(job_id = %id, error = %e, "could not discard the unqueued job; the outbox will queue it");
            return;
        }
        let freed = Settlement {
            job_id: id.to_owned(),
            cost_micros: 0,
        };
        if let Err(e) = self.store.settle(&[freed]).await {
            warn!(job_id = %id, error = %e, "could not give back a budget reservation");
        }
    }

    /// Records a job answered without running (a result cache hit): queued
    /// and succeeded at once, never put in a queue.
    pub async fn record_answered(
        &self,
        submission: Submission,
        priority: Priority,
        id: String,
        source: Source,
        output: serde_json::Value,
    ) -> Result<Job, SubmitError> {
        let mut job = self.validate(submission, priority, id)?;
        self.webhooks.admit(&mut job).await?;
        self.store
            .insert(&job, source, budget::tokens(&job))
            .await?;
        let now = now_ms();
        // Counted as confirmed: nothing is left for the outbox to queue.
        self.store.mark_enqueued(&job.id, now).await?;
        let usage = output
            .get("usage")
            .and_then(|u| serde_json::from_value(u.clone()).ok())
            .unwrap_or_default();
        let result = JobResult {
            v: SCHEMA_VERSION,
            job_id: job.id.clone(),
            attempt: job.attempt,
            node: None,
            assigned_at_ms: None,
            started_at_ms: None,
            output_ref: None,
            finished_at_ms: now,
            outcome: Outcome::Succeeded { output, usage },
        };
        self.store.apply_results(&[result]).await?;
        // Billed at the cache-hit price, once: the key is (job, attempt).
        let usage = UsageEvent {
            v: SCHEMA_VERSION,
            job_id: job.id.clone(),
            attempt: job.attempt,
            node: "cache".into(),
            model: job.model.clone(),
            usage,
            engine_ms: 0,
            at_ms: now,
        };
        self.store
            .record_usage(&[billing::charge(&self.registry, usage, true)])
            .await?;
        metrics::counter!(m::SUBMISSIONS, "source" => source.as_str()).increment(1);
        Ok(job)
    }

    /// Publishes the job to its queue and waits for the server's confirmation.
    /// The message id names the job and attempt, so a repeat is dropped.
    pub async fn enqueue(&self, job: &Job) -> Result<(), EnqueueError> {
        let payload = encode(job).map_err(|e| EnqueueError::Unavailable(e.to_string()))?;
        let classify = |e: async_nats::jetstream::context::PublishError| {
            if nats::is_limit_refusal(&e) {
                EnqueueError::Full
            } else if e.kind() == async_nats::jetstream::context::PublishErrorKind::TimedOut {
                EnqueueError::Unconfirmed(e.to_string())
            } else {
                EnqueueError::Unavailable(e.to_string())
            }
        };
        nats::publish(
            &self.js,
            job.queue_subject(),
            &subjects::queued_msg_id(&job.id, job.attempt),
            payload,
        )
        .await
        .map_err(classify)?
        .await
        .map_err(classify)?;
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    #[error("the queue is full")]
    Full,
    /// Sent, but its acknowledgement did not come in time: it may be stored.
    #[error("{0}")]
    Unconfirmed(String),
    /// Not stored.
    #[error("{0}")]
    Unavailable(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use switchyard_runtime::Issues;

    fn registry() -> Registry {
        let spec = |name: &str, kind| ModelSpec {
            name: name.into(),
            kind,
            max_tokens: 64,
            default_max_tokens: 16,
            max_input_bytes: 200,
            max_attempts: 3,
            cache: None,
            pii: None,
            price: None,
        };
        Registry::new(
            &[
                spec("chat", ModelKind::Chat),
                spec("text", ModelKind::Completion),
                spec("embed", ModelKind::Embedding),
            ],
            &mut Issues::default(),
        )
    }

    fn sub(model: &str, input: serde_json::Value) -> Submission {
        serde_json::from_value(json!({"model": model, "input": input})).unwrap()
    }

    fn check(model: &str, input: serde_json::Value) -> Result<Job, Rejection> {
        validate(
            &registry(),
            sub(model, input),
            Priority::Normal,
            "job-1".into(),
        )
    }

    #[test]
    fn valid_chat_gets_the_default_max_tokens() {
        let job = check(
            "chat",
            json!({"messages": [{"role": "user", "content": "hi"}]}),
        )
        .unwrap();
        assert_eq!(job.input.max_tokens(), Some(16));
        assert_eq!(job.attempt, 1);
        assert_eq!(job.priority, Priority::Normal);
    }

    #[test]
    fn each_bad_input_has_its_code() {
        let cases = [
            ("nope", json!({"prompt": "x"}), "unknown_model"),
            ("chat", json!({"prompt": "x"}), "invalid_request"),
            ("chat", json!({"messages": []}), "invalid_request"),
            (
                "chat",
                json!({"messages": [{"role": "robot", "content": "x"}]}),
                "invalid_request",
            ),
            (
                "text",
                json!({"prompt": "x", "max_tokens": 65}),
                "invalid_request",
            ),
            (
                "text",
                json!({"prompt": "x", "max_tokens": 0}),
                "invalid_request",
            ),
            (
                "text",
                json!({"prompt": "x", "temperature": 3.0}),
                "invalid_request",
            ),
            ("text", json!({"prompt": 7}), "invalid_request"),
            ("text", json!("just a string"), "invalid_request"),
            (
                "text",
                json!({"prompt": "x".repeat(300)}),
                "input_too_large",
            ),
            (
                "text",
                json!({"prompt": "x", "top_p": 0}),
                "invalid_request",
            ),
            (
                "text",
                json!({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}),
                "invalid_request",
            ),
            (
                "chat",
                json!({"messages": [{"role": "user", "content": "x"}], "presence_penalty": 3}),
                "invalid_request",
            ),
            ("embed", json!({"input": []}), "invalid_request"),
            ("embed", json!({"input": ["a", ""]}), "invalid_request"),
            ("embed", json!({"input": [1, 2, 3]}), "invalid_request"),
            (
                "embed",
                json!({"input": "a", "dimensions": 0}),
                "invalid_request",
            ),
            ("embed", json!({"prompt": "a"}), "invalid_request"),
        ];
        for (model, input, code) in cases {
            let err = check(model, input.clone()).unwrap_err();
            assert_eq!(err.code(), code, "{model} {input}: {err}");
        }
    }

    #[test]
    fn one_text_to_embed_is_a_list_of_one() {
        for input in [json!({"input": "hello"}), json!({"input": ["hello"]})] {
            let job = check("embed", input).unwrap();
            let JobInput::Embedding(e) = &job.input else {
                panic!("{job:?}");
            };
            assert_eq!(e.input, ["hello"]);
            assert_eq!(job.input.max_tokens(), None);
        }
    }

    #[test]
    fn sampling_parameters_pass_through() {
        let job = check(
            "text",
            json!({"prompt": "x", "top_p": 0.9, "stop": "END", "seed": 7}),
        )
        .unwrap();
        let JobInput::Completion(c) = &job.input else {
            panic!("{job:?}");
        };
        assert_eq!(c.sampling.stop, ["END"]);
        assert_eq!(c.sampling.seed, Some(7));
        assert_eq!(c.sampling.top_p, Some(0.9));
    }

    #[test]
    fn only_text_generation_streams() {
        let mut s = sub("embed", json!({"input": "hello"}));
        s.stream = true;
        let err = validate(&registry(), s, Priority::Normal, "job-1".into()).unwrap_err();
        assert_eq!(err.code(), "invalid_request");
        assert!(err.to_string().contains("stream"), "{err}");
    }

    #[test]
    fn unknown_input_fields_are_named() {
        let err = check("text", json!({"prompt": "x", "max_token": 3})).unwrap_err();
        assert!(err.to_string().contains("max_token"), "{err}");
    }

    #[test]
    fn ids_and_metadata_are_bounded() {
        let bad_id = validate(
            &registry(),
            sub("text", json!({"prompt": "x"})),
            Priority::Batch,
            "a.b".into(),
        );
        assert_eq!(bad_id.unwrap_err().code(), "invalid_request");
        let mut s = sub("text", json!({"prompt": "x"}));
        s.metadata = (0..17).map(|i| (format!("k{i}"), "v".into())).collect();
        let err = validate(&registry(), s, Priority::Batch, "ok".into()).unwrap_err();
        assert!(err.to_string().contains("metadata"), "{err}");
    }
}
