//! The rules a submission must meet to become a job: its model, its
//! input's shape and bounds, its metadata and timing.

use std::collections::BTreeSet;

use serde::de::DeserializeOwned;
use switchyard_runtime::{ModelKind, ModelSpec, Registry, Routed, StickyKeys};
use switchyard_schemas::redact::{shown, without_values};
use switchyard_schemas::{
    ChatInput, CompletionInput, DEFAULT_TENANT, EmbeddingInput, Job, JobInput, Priority,
    SAMPLING_FIELDS, SCHEMA_VERSION, Sampling, Submission, TensorInput, now_ms, subjects,
};

use super::Rejection;

const MAX_METADATA_ENTRIES: usize = 16;
const MAX_METADATA_KEY: usize = 64;
const MAX_METADATA_VALUE: usize = 512;
const CHAT_ROLES: [&str; 4] = ["system", "user", "assistant", "tool"];

/// Checks a submission against the registry and builds the job to queue.
pub fn validate(
    registry: &Registry,
    submission: Submission,
    priority: Priority,
    id: String,
) -> Result<Job, Rejection> {
    if !subjects::is_valid_id(&id) {
        return Err(Rejection::InvalidRequest(format!(
            "id {} must be 1 to 64 of A-Z a-z 0-9 _ -",
            shown(&id)
        )));
    }
    let tenant = submission
        .tenant
        .clone()
        .unwrap_or_else(|| DEFAULT_TENANT.to_owned());
    if !subjects::is_valid_id(&tenant) {
        return Err(Rejection::InvalidRequest(format!(
            "tenant {} must be 1 to 64 of A-Z a-z 0-9 _ -",
            shown(&tenant)
        )));
    }
    let keys = StickyKeys {
        job_id: &id,
        tenant: &tenant,
        user: submission.metadata.get("user").map(String::as_str),
    };
    let Routed { spec, alias } = registry
        .route(&submission.model, keys)
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
    let input = typed_input(&spec, submission.input)?;
    if submission.stream && !input.generates_text() {
        return Err(Rejection::InvalidRequest(format!(
            "stream is for chat and completion models; {:?} is not one",
            spec.name
        )));
    }
    Ok(Job {
        v: SCHEMA_VERSION,
        id,
        model: spec.name.clone(),
        alias,
        tenant,
        priority,
        input,
        metadata: submission.metadata,
        submitted_at_ms: now_ms(),
        attempt: 1,
        max_attempts: spec.max_attempts,
        failures: Vec::new(),
        deadline_ms: submission.deadline_ms,
        // The model's bound applies to every job, so that what one may run
        // (and cost) is known at admission.
        timeout_ms: Some(
            submission
                .timeout_ms
                .unwrap_or(u64::MAX)
                .min(u64::try_from(spec.timeout.as_millis()).unwrap_or(u64::MAX)),
        ),
        stream: submission.stream,
        webhook: submission.webhook,
        api_key: None,
        // Admission's span, child of the caller's when it sent a context.
        trace_id: switchyard_runtime::trace::trace_id(),
        seal: String::new(),
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
            "metadata entry {}: keys are 1 to {MAX_METADATA_KEY} bytes, values at most {MAX_METADATA_VALUE}",
            shown(k)
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
                    "input.messages[{i}].role {} must be one of {}",
                    shown(&msg.role),
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
            "input.{} is not a known field; expected {}",
            shown(unknown),
            fields.join(", ")
        )));
    }
    serde_json::from_value(value).map_err(|e| {
        Rejection::InvalidRequest(format!("input: {}", without_values(&e.to_string())))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{Coded, ErrorCode};
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
            timeout: std::time::Duration::from_secs(600),
            mlflow: None,
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
            assert_eq!(err.code().as_str(), code, "{model} {input}: {err}");
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
        assert_eq!(err.code(), ErrorCode::InvalidRequest);
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
        assert_eq!(bad_id.unwrap_err().code(), ErrorCode::InvalidRequest);
        let mut s = sub("text", json!({"prompt": "x"}));
        s.metadata = (0..17).map(|i| (format!("k{i}"), "v".into())).collect();
        let err = validate(&registry(), s, Priority::Batch, "ok".into()).unwrap_err();
        assert!(err.to_string().contains("metadata"), "{err}");
    }
}
