use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{SCHEMA_VERSION, Submission, Versioned};

/// How a message body is encoded. Internal messages are always MessagePack;
/// clients may send JSON and get replies in kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    MessagePack,
    Json,
}

impl Encoding {
    /// JSON when the content type says so, or when there is none and the body
    /// opens with `{` (no MessagePack encoding of a map starts with that byte).
    pub fn detect(body: &[u8], content_type: Option<&str>) -> Encoding {
        match content_type {
            Some(ct) if ct.contains("json") => Encoding::Json,
            Some(ct) if ct.contains("msgpack") => Encoding::MessagePack,
            _ if body.trim_ascii_start().first() == Some(&b'{') => Encoding::Json,
            _ => Encoding::MessagePack,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("cannot encode {type_name}: {source}")]
    Encode {
        type_name: &'static str,
        source: rmp_serde::encode::Error,
    },
    #[error("cannot encode {type_name} as JSON: {source}")]
    EncodeJson {
        type_name: &'static str,
        source: serde_json::Error,
    },
    #[error("cannot decode {type_name}: {message}")]
    Decode {
        type_name: &'static str,
        message: String,
    },
    #[error("{type_name} has schema version {found}; this build reads up to {SCHEMA_VERSION}")]
    UnsupportedVersion { type_name: &'static str, found: u16 },
}

fn short_name<T>() -> &'static str {
    let full = std::any::type_name::<T>();
    full.rsplit("::").next().unwrap_or(full)
}

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    rmp_serde::to_vec_named(value).map_err(|source| CodecError::Encode {
        type_name: short_name::<T>(),
        source,
    })
}

pub fn encode_as<T: Serialize>(value: &T, encoding: Encoding) -> Result<Vec<u8>, CodecError> {
    match encoding {
        Encoding::MessagePack => encode(value),
        Encoding::Json => serde_json::to_vec(value).map_err(|source| CodecError::EncodeJson {
            type_name: short_name::<T>(),
            source,
        }),
    }
}

fn check_version<T: Versioned>(value: T) -> Result<T, CodecError> {
    match value.version() {
        v if v <= SCHEMA_VERSION => Ok(value),
        found => Err(CodecError::UnsupportedVersion {
            type_name: short_name::<T>(),
            found,
        }),
    }
}

/// Decodes an internal (MessagePack) message and checks its schema version.
pub fn decode<T: DeserializeOwned + Versioned>(bytes: &[u8]) -> Result<T, CodecError> {
    let value = rmp_serde::from_slice(bytes).map_err(|e| CodecError::Decode {
        type_name: short_name::<T>(),
        message: e.to_string(),
    })?;
    check_version(value)
}

/// Decodes a client's submission in whichever encoding it came.
pub fn decode_submission(
    bytes: &[u8],
    content_type: Option<&str>,
) -> Result<(Submission, Encoding), CodecError> {
    let encoding = Encoding::detect(bytes, content_type);
    let decoded = match encoding {
        Encoding::MessagePack => rmp_serde::from_slice(bytes).map_err(|e| e.to_string()),
        Encoding::Json => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
    };
    // The message is a client's to read and may be stored: no values.
    let decoded = decoded.map_err(|m| crate::redact::without_values(&m));
    let submission = decoded.map_err(|message| CodecError::Decode {
        type_name: short_name::<Submission>(),
        message,
    })?;
    Ok((check_version(submission)?, encoding))
}
