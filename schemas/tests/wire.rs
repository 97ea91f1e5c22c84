//! The wire format is a contract with other processes and other languages:
//! every message must round-trip, and the bytes of a fixed message must not
//! change silently (golden files; regenerate with `SWITCHYARD_BLESS=1` only for
//! an intended, versioned change).

// Tests fail by panicking; the no-panic lints are for the product code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use serde::Serialize;
use serde::de::DeserializeOwned;
use switchyard_schemas::*;

fn job() -> Job {
    Job {
        v: SCHEMA_VERSION,
        id: "0192f3a4-0000-7000-8000-000000000001".into(),
        model: "tiny-chat".into(),
        alias: None,
        tenant: "acme".into(),
        priority: Priority::High,
        input: JobInput::Chat(ChatInput {
            messages: vec![ChatMessage {
                role: "user".into(),
                content: "hello".into(),
            }],
            max_tokens: Some(8),
            temperature: None,
            sampling: Default::default(),
        }),
        metadata: BTreeMap::from([("team".to_owned(), "search".to_owned())]),
        submitted_at_ms: 1_760_000_000_000,
        attempt: 1,
        max_attempts: 3,
        failures: vec![],
        deadline_ms: None,
        timeout_ms: None,
        stream: false,
        webhook: None,
        api_key: None,
        trace_id: None,
        seal: String::new(),
    }
}

fn result() -> JobResult {
    JobResult {
        v: SCHEMA_VERSION,
        job_id: job().id,
        attempt: 1,
        node: Some("node-a".into()),
        assigned_at_ms: Some(1_760_000_000_010),
        started_at_ms: Some(1_760_000_000_020),
        output_ref: None,
        finished_at_ms: 1_760_000_000_100,
        outcome: Outcome::Succeeded {
            output: serde_json::json!({"choices": [{"message": {"content": "hello"}}]}),
            usage: Usage {
                prompt_tokens: 1,
                completion_tokens: 8,
            },
        },
        output_sha256: None,
        proof: None,
        usage_record: None,
    }
}

fn round_trip<T: Serialize + DeserializeOwned + Versioned + PartialEq + std::fmt::Debug>(v: T) {
    let bytes = encode(&v).unwrap();
    let back: T = decode(&bytes).unwrap();
    assert_eq!(back, v);
}

#[test]
fn every_message_round_trips() {
    round_trip(job());
    round_trip(Job {
        input: JobInput::Embedding(EmbeddingInput {
            input: vec!["one".into(), "two".into()],
            dimensions: Some(64),
        }),
        ..job()
    });
    round_trip(result());
    round_trip(Assignment {
        v: SCHEMA_VERSION,
        job: job(),
        node: "node-a".into(),
        assigned_at_ms: 5,
        grant: String::new(),
    });
    let failure = Failure {
        attempt: 1,
        node: "node-a".into(),
        at_ms: 3,
        error: JobError::new(ErrorClass::Overloaded, "busy"),
    };
    let retried = job().retry(failure.clone());
    assert_eq!(retried.attempt, 2);
    assert_eq!(retried.failed_nodes().collect::<Vec<_>>(), ["node-a"]);
    round_trip(retried.clone());
    round_trip(DeadLetter {
        v: SCHEMA_VERSION,
        job: retried,
        at_ms: 4,
    });
    round_trip(JobEvent {
        v: SCHEMA_VERSION,
        job_id: "j".into(),
        attempt: 1,
        at_ms: 3,
        kind: EventKind::Retrying {
            node: "node-a".into(),
            error: failure.error,
        },
        proof: None,
    });
    round_trip(JobEvent {
        v: SCHEMA_VERSION,
        job_id: "j".into(),
        attempt: 2,
        at_ms: 7,
        kind: EventKind::Running {
            node: "node-b".into(),
        },
        proof: None,
    });
    round_trip(JobResult {
        outcome: Outcome::Failed {
            error: JobError::new(ErrorClass::UnknownModel, "no such model"),
        },
        node: None,
        ..result()
    });
    round_trip(UsageEvent::fixture("j", "n"));
    round_trip(JobResult {
        usage_record: Some(UsageEvent::fixture(&job().id, "node-a")),
        ..result()
    });
    round_trip(Heartbeat {
        v: SCHEMA_VERSION,
        node: "n".into(),
        at_ms: 1,
        models: vec!["m".into()],
        slots_total: 8,
        running: 2,
        queued: 1,
        held: Default::default(),
        read_through: Some(17),
        draining: false,
        ready: true,
        service_ms: Some(40),
        service_ms_by_model: [("m".to_owned(), 40)].into(),
        gpus: vec![GpuStats {
            index: 0,
            name: "NVIDIA H100 80GB HBM3".into(),
            utilization_pct: Some(87),
            memory_used_bytes: Some(60 << 30),
            memory_total_bytes: Some(80 << 30),
            temperature_c: Some(61),
            power_mw: Some(512_000),
            processes: vec![GpuProcess {
                pid: 4242,
                memory_bytes: Some(59 << 30),
            }],
        }],
        engine: EngineLoad {
            queue_depth: Some(3),
            kv_cache_usage: Some(0.42),
        },
        loadable: vec!["cold".into()],
    });
    round_trip(LoadRequest {
        v: SCHEMA_VERSION,
        model: "cold".into(),
    });
    round_trip(LoadReply {
        v: SCHEMA_VERSION,
        model: "cold".into(),
        error: Some("no room".into()),
    });
}

fn golden(name: &str, bytes: &[u8]) {
    // Read when the test runs: a cached build may come from another checkout.
    let path = std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap())
        .join("tests/golden")
        .join(format!("{name}.hex"));
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    if std::env::var_os("SWITCHYARD_BLESS").is_some() {
        std::fs::write(&path, format!("{hex}\n")).unwrap();
    }
    let want = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        hex,
        want.trim(),
        "{name}: the wire bytes changed; bump SCHEMA_VERSION if intended"
    );
}

#[test]
fn wire_bytes_are_stable() {
    golden("job_v1", &encode(&job()).unwrap());
    golden("result_v1", &encode(&result()).unwrap());
}

#[test]
fn submissions_decode_from_json_and_messagepack() {
    let json = br#"{"model":"tiny-chat","input":{"prompt":"hi"},"metadata":{"k":"v"}}"#;
    let (from_json, enc) = decode_submission(json, None).unwrap();
    assert_eq!(enc, Encoding::Json);
    assert_eq!(from_json.model, "tiny-chat");
    assert_eq!(from_json.v, SCHEMA_VERSION);

    let packed = encode(&from_json).unwrap();
    let (from_mp, enc) = decode_submission(&packed, None).unwrap();
    assert_eq!(enc, Encoding::MessagePack);
    assert_eq!(from_mp, from_json);
}

#[test]
fn decode_errors_name_the_type() {
    let err = decode::<Job>(b"\xc1garbage").unwrap_err();
    assert!(err.to_string().contains("Job"), "{err}");
    let err = decode_submission(b"{\"model\": 3}", None).unwrap_err();
    assert!(err.to_string().contains("Submission"), "{err}");
    let err = decode_submission(br#"{"model":"m","input":{},"owner":"x"}"#, None).unwrap_err();
    assert!(
        err.to_string().contains("owner"),
        "unknown fields are refused: {err}"
    );
}

#[test]
fn newer_schema_versions_are_refused() {
    let future = Job {
        v: SCHEMA_VERSION + 1,
        ..job()
    };
    let err = decode::<Job>(&encode(&future).unwrap()).unwrap_err();
    assert!(
        matches!(err, CodecError::UnsupportedVersion { .. }),
        "{err}"
    );
}

#[test]
fn admit_replies_have_the_documented_shape() {
    let ok = AdmitReply::Accepted {
        id: "j1".into(),
        status: "queued".into(),
    };
    assert_eq!(
        serde_json::to_value(&ok).unwrap(),
        serde_json::json!({"id": "j1", "status": "queued"})
    );
    let err = AdmitReply::Rejected {
        error: ErrorBody {
            code: "unknown_model".into(),
            message: "m".into(),
        },
    };
    assert_eq!(
        serde_json::to_value(&err).unwrap(),
        serde_json::json!({"error": {"code": "unknown_model", "message": "m"}})
    );
}

#[test]
fn a_job_written_before_tenants_existed_belongs_to_the_default_tenant() {
    let mut old = serde_json::to_value(job()).unwrap();
    old.as_object_mut().unwrap().remove("tenant");
    let back: Job = decode(&encode(&old).unwrap()).unwrap();
    assert_eq!(back.tenant, DEFAULT_TENANT);
    assert_eq!(back.queue_subject(), "sy.jobs.high.tiny-chat.default");
}

/// A newer agent or dispatcher may send a failure class or an event kind
/// this version does not know: the message still decodes, so its result is
/// recorded instead of the whole message being refused.
#[test]
fn unknown_enum_values_from_a_newer_component_decode_to_a_safe_variant() {
    let mut result = serde_json::to_value(result()).unwrap();
    result["outcome"] = serde_json::json!({
        "status": "failed",
        "error": {"class": "gpu_fell_off_the_bus", "message": "engine lost its GPU"},
    });
    let bytes = rmp_serde::to_vec_named(&result).unwrap();
    let decoded: JobResult = decode(&bytes).unwrap();
    assert_eq!(
        decoded.outcome,
        Outcome::Failed {
            error: JobError::new(ErrorClass::Internal, "engine lost its GPU")
        }
    );

    let event = serde_json::json!({
        "v": SCHEMA_VERSION, "job_id": "j1", "attempt": 1, "at_ms": 5,
        "kind": {"event": "migrated", "node": "n2", "to": "n3"},
    });
    let decoded: JobEvent = decode(&rmp_serde::to_vec_named(&event).unwrap()).unwrap();
    assert_eq!(decoded.kind, EventKind::Unknown);
}
