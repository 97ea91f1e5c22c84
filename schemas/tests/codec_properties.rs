//! Properties of the codecs over generated input: no bytes make a decoder
//! panic, and a submission means the same in JSON and in MessagePack.

// Tests fail by panicking; the no-panic lints are for the product code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use proptest::prelude::*;
use serde_json::json;
use switchyard_schemas::{
    Encoding, Job, JobResult, Priority, Submission, decode, decode_submission, encode, encode_as,
};

fn submission() -> impl Strategy<Value = Submission> {
    (
        "[a-z][a-z0-9.-]{0,20}",
        proptest::option::of("[a-z0-9-]{1,16}"),
        proptest::option::of(proptest::sample::select(Priority::ALL.to_vec())),
        ".{0,200}",
        0u32..4096,
        proptest::collection::btree_map("[a-z]{1,8}", ".{0,16}", 0..4),
        proptest::option::of(any::<i64>()),
        any::<bool>(),
    )
        .prop_map(
            |(model, tenant, priority, prompt, max_tokens, metadata, deadline_ms, stream)| {
                Submission {
                    v: switchyard_schemas::SCHEMA_VERSION,
                    id: None,
                    model,
                    tenant,
                    priority,
                    input: json!({"prompt": prompt, "max_tokens": max_tokens}),
                    metadata: metadata.into_iter().collect::<BTreeMap<_, _>>(),
                    deadline_ms,
                    timeout_ms: None,
                    stream,
                    webhook: None,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn no_bytes_make_a_decoder_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        for content_type in [None, Some("application/json"), Some("application/msgpack")] {
            let _ = decode_submission(&bytes, content_type);
        }
        let _ = decode::<Job>(&bytes);
        let _ = decode::<JobResult>(&bytes);
        let _ = decode::<Submission>(&bytes);
    }

    #[test]
    fn a_submission_decodes_to_itself_from_either_encoding(s in submission()) {
        let json = encode_as(&s, Encoding::Json).unwrap();
        let packed = encode_as(&s, Encoding::MessagePack).unwrap();
        let (from_json, e1) = decode_submission(&json, None).unwrap();
        let (from_packed, e2) = decode_submission(&packed, None).unwrap();
        prop_assert_eq!(e1, Encoding::Json);
        prop_assert_eq!(e2, Encoding::MessagePack);
        prop_assert_eq!(&from_json, &s);
        prop_assert_eq!(&from_packed, &s);
        prop_assert_eq!(decode::<Submission>(&encode(&s).unwrap()).unwrap(), s);
    }

    #[test]
    fn a_submission_of_another_schema_version_is_refused(s in submission(), v in 2u16..) {
        let other = Submission { v, ..s };
        prop_assert!(decode_submission(&encode_as(&other, Encoding::Json).unwrap(), None).is_err());
    }
}
