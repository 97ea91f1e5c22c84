//! OpenAI requests read as job submissions: the OpenAI front and the batch
//! runner take the same bodies, so both read them here.

use serde::Deserialize;
use serde_json::{Map, Value};
use switchyard_runtime::{ModelKind, Registry};
use switchyard_schemas::redact::without_values;
use switchyard_schemas::{Priority, Submission};

use crate::admission::Rejection;
use crate::auth::Caller;

/// Which OpenAI endpoint a request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completion,
    Embedding,
}

impl Endpoint {
    pub const ALL: [Endpoint; 3] = [Endpoint::Chat, Endpoint::Completion, Endpoint::Embedding];

    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Chat => "/v1/chat/completions",
            Endpoint::Completion => "/v1/completions",
            Endpoint::Embedding => "/v1/embeddings",
        }
    }

    pub fn from_path(path: &str) -> Option<Endpoint> {
        Endpoint::ALL.into_iter().find(|e| e.path() == path)
    }
}

/// An OpenAI request body: the fields the front itself reads; the rest is
/// the job's input, checked strictly by admission.
#[derive(Debug, Deserialize)]
struct OpenAiRequest {
    model: String,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    /// OpenAI's newer name for `max_tokens`.
    #[serde(default)]
    max_completion_tokens: Option<u32>,
    /// The end user, for the caller's own tracking; kept as metadata.
    #[serde(default)]
    user: Option<String>,
    /// `float` (the default) or `base64`, for embeddings.
    #[serde(default)]
    encoding_format: Option<String>,
    #[serde(flatten)]
    input: Map<String, Value>,
}

#[derive(Debug, Default, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// An OpenAI request read as a job's submission, with the front's own
/// options.
pub struct Parsed {
    pub submission: Submission,
    pub stream: bool,
    /// Embeddings as base64 rather than lists of floats.
    pub base64: bool,
    /// A usage chunk ends the stream.
    pub include_usage: bool,
}

/// Reads an OpenAI request body for `endpoint` as a submission at
/// `priority`, for the caller's tenant.
pub fn parse(
    registry: &Registry,
    caller: &Caller,
    body: &[u8],
    endpoint: Endpoint,
    priority: Priority,
) -> Result<Parsed, Rejection> {
    let request: OpenAiRequest = serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => Rejection::invalid(without_values(&e.to_string())),
        _ => Rejection::MalformedBody(format!(
            "body is not valid JSON: {}",
            without_values(&e.to_string())
        )),
    })?;
    let base64 = match (endpoint, request.encoding_format.as_deref()) {
        (Endpoint::Embedding, None | Some("float")) => false,
        (Endpoint::Embedding, Some("base64")) => true,
        (Endpoint::Embedding, Some(other)) => {
            return Err(Rejection::invalid(format!(
                "encoding_format {other:?} must be float or base64"
            )));
        }
        (_, Some(_)) => return Err(Rejection::invalid("encoding_format is for embeddings")),
        (_, None) => false,
    };
    let include_usage = request
        .stream_options
        .as_ref()
        .is_some_and(|o| o.include_usage);
    if request.stream_options.is_some() && !request.stream {
        return Err(Rejection::invalid(
            "stream_options is only allowed with stream: true",
        ));
    }
    let mut input = request.input;
    if let Some(n) = request.max_completion_tokens {
        if input.contains_key("max_tokens") {
            return Err(Rejection::invalid(
                "give max_tokens or max_completion_tokens, not both",
            ));
        }
        input.insert("max_tokens".into(), n.into());
    }
    let submission = Submission {
        v: switchyard_schemas::SCHEMA_VERSION,
        id: None,
        model: request.model.clone(),
        tenant: caller.tenant.clone(),
        priority: Some(priority),
        input: Value::Object(input),
        metadata: request
            .user
            .map(|u| [("user".to_owned(), u)].into())
            .unwrap_or_default(),
        deadline_ms: None,
        timeout_ms: None,
        stream: request.stream,
        webhook: None,
    };
    check_kind(registry, &submission.model, endpoint)?;
    Ok(Parsed {
        submission,
        stream: request.stream,
        base64,
        include_usage,
    })
}

/// The model must be of the endpoint's kind: a chat model is not asked for
/// embeddings.
fn check_kind(registry: &Registry, model: &str, endpoint: Endpoint) -> Result<(), Rejection> {
    let Some(kind) = registry.kind_of(model) else {
        return Err(Rejection::UnknownModel(model.to_owned()));
    };
    let fits = matches!(
        (endpoint, kind),
        (Endpoint::Chat, ModelKind::Chat)
            | (Endpoint::Completion, ModelKind::Completion)
            | (Endpoint::Embedding, ModelKind::Embedding)
    );
    match fits {
        true => Ok(()),
        false => Err(Rejection::invalid(format!(
            "model {model:?} is a {kind:?} model; this endpoint is for {endpoint:?} models"
        ))),
    }
}
