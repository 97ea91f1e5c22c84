//! A client's submission in either encoding, with or without a content
//! type, and the subject parsers fed the same bytes as a subject.

#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_schemas::{decode_submission, subjects};

fuzz_target!(|bytes: &[u8]| {
    for content_type in [
        None,
        Some("application/json"),
        Some("application/msgpack"),
    ] {
        let _ = decode_submission(bytes, content_type);
    }
    if let Ok(text) = std::str::from_utf8(bytes) {
        let _ = subjects::queue_of(text);
        let _ = subjects::intake_of(text);
        let _ = subjects::result_request_of(text);
        let _ = subjects::is_valid_id(text);
        // A model's subject token is one valid token, whatever its name.
        let token = subjects::model_token(text);
        assert!(!token.contains(['.', '*', '>', ' ']), "{text:?} → {token:?}");
    }
});
