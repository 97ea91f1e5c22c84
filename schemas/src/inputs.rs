//! What a job asks of its engine: the request, typed by the kind of model
//! it is for, as admission validated it.

use serde::{Deserialize, Serialize};

/// One message of a chat conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatInput {
    pub messages: Vec<ChatMessage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(flatten)]
    pub sampling: Sampling,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompletionInput {
    pub prompt: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(flatten)]
    pub sampling: Sampling,
}

/// OpenAI's other sampling parameters, passed to the engine as they are.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sampling {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    /// Up to four strings that end the output; one string or a list.
    #[serde(
        default,
        deserialize_with = "one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub stop: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f64>,
}

/// The names of [`Sampling`]'s fields, for strict parsing.
pub const SAMPLING_FIELDS: [&str; 5] = [
    "top_p",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
];

/// Texts to embed, as in an OpenAI `/v1/embeddings` request: one embedding
/// per text, in order. A request may give one text or a list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbeddingInput {
    #[serde(deserialize_with = "one_or_many")]
    pub input: Vec<String>,
    /// Length of each embedding, for models that can shorten theirs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dimensions: Option<u32>,
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Texts {
        One(String),
        Many(Vec<String>),
    }
    match Texts::deserialize(d) {
        Ok(Texts::One(text)) => Ok(vec![text]),
        Ok(Texts::Many(texts)) => Ok(texts),
        Err(_) => Err(serde::de::Error::custom(
            "expected a string or a list of strings",
        )),
    }
}

/// The tensors of a KServe v2 inference request, for models that are not
/// language models (Triton).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorInput {
    pub inputs: Vec<Tensor>,
}

/// One named tensor, its data flattened in row-major order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<u64>,
    pub datatype: String,
    pub data: Vec<serde_json::Value>,
}

/// A validated request, typed by the kind of model it is for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JobInput {
    Chat(ChatInput),
    Completion(CompletionInput),
    Embedding(EmbeddingInput),
    Tensor(TensorInput),
}

impl JobInput {
    /// Whether its output comes piece by piece (`stream: true` is allowed).
    pub fn generates_text(&self) -> bool {
        matches!(self, JobInput::Chat(_) | JobInput::Completion(_))
    }

    pub fn max_tokens(&self) -> Option<u32> {
        match self {
            JobInput::Chat(c) => c.max_tokens,
            JobInput::Completion(c) => c.max_tokens,
            JobInput::Embedding(_) | JobInput::Tensor(_) => None,
        }
    }

    /// The bytes of its text.
    pub fn text_bytes(&self) -> usize {
        match self {
            JobInput::Chat(c) => c.messages.iter().map(|m| m.content.len()).sum(),
            JobInput::Completion(c) => c.prompt.len(),
            JobInput::Embedding(e) => e.input.iter().map(String::len).sum(),
            JobInput::Tensor(_) => 0,
        }
    }

    /// The tokens it is expected to use before the engine has counted
    /// them: its prompt at a token per four bytes (as tokenizers of Latin
    /// text roughly give) and all of its `max_tokens`.
    pub fn expected_tokens(&self) -> u32 {
        let prompt = u32::try_from(self.text_bytes().div_ceil(4)).unwrap_or(u32::MAX);
        prompt.saturating_add(self.max_tokens().unwrap_or(0))
    }
}
