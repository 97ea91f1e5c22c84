//! A node's NATS user may publish results, usage, running events and
//! streamed tokens, but only what the dispatcher's grant for that attempt
//! vouches for counts: what one node forges for another node's job never
//! becomes that job's result, a ledger row, or something its client sees,
//! and a forged result stored first does not keep the real one out.

use std::time::Duration;

use crate::common::*;
use serde_json::json;
use switchyard_runtime::grants::{Claim, prove};
use switchyard_schemas::{
    EventKind, JobEvent, JobResult, SCHEMA_VERSION, StreamChunk, Timeline, Usage, UsageEvent,
    encode,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_result_or_usage_forged_for_another_node_s_job_never_counts() {
    let stack = Stack::running(
        StackOptions {
            // Long enough for the forgeries to land while node-a runs it.
            base_latency: "3s",
            ..StackOptions::default()
        },
        &["node-a"],
    );
    let body = json!({"model": CHAT_MODEL, "stream": true, "input": {
        "messages": [{"role": "user", "content": "the real one"}], "max_tokens": 4}});
    let id = stack.submit_http(&body).await;
    eventually(
        Duration::from_secs(20),
        Duration::from_millis(20),
        || async {
            let (_, job) = stack.get_job(&id).await;
            so(job["status"] == "running", || job.to_string())
        },
    )
    .await;

    // A client following the job: its events and streamed tokens.
    let following = stack
        .http
        .get(stack.broker_url(&format!("/v1/jobs/{id}/events")))
        .send()
        .await
        .unwrap();

    // node-b's user, as a node's user may: publishing on the subjects of
    // results, usage and events, with proofs made from a grant it made up
    // (it has none for this attempt) or with none.
    let js = async_nats::jetstream::new(stack.nats.client().await);
    let made_up = prove("a grant node-b made up", Claim::Result(None));
    let forged = |node: &str, proof: Option<String>| JobResult {
        node: Some(node.to_owned()),
        proof,
        ..JobResult::succeeded(
            &id,
            1,
            Timeline::default(),
            json!({"choices": [{"message": {"role": "assistant", "content": "forged"}}]}),
            Usage {
                prompt_tokens: 1,
                completion_tokens: 1,
            },
        )
    };
    // Stored first: RESULTS takes one per job, so it is in the way of the
    // real one until the broker drops it.
    js.publish(
        format!("sy.results.{id}"),
        encode(&forged("node-b", Some(made_up))).unwrap().into(),
    )
    .await
    .unwrap()
    .await
    .expect("the first result on the job's subject is stored");
    let usage = UsageEvent {
        v: SCHEMA_VERSION,
        job_id: id.clone(),
        attempt: 1,
        node: "node-a".into(),
        model: CHAT_MODEL.into(),
        usage: Usage {
            prompt_tokens: 1_000_000,
            completion_tokens: 1_000_000,
        },
        engine_ms: 1,
        at_ms: switchyard_schemas::now_ms(),
        proof: Some(prove("a grant node-b made up", Claim::Usage)),
    };
    let running = JobEvent {
        v: SCHEMA_VERSION,
        job_id: id.clone(),
        attempt: 1,
        at_ms: switchyard_schemas::now_ms(),
        kind: EventKind::Running {
            node: "node-b".into(),
        },
        proof: None,
    };
    for (subject, payload) in [
        (format!("sy.usage.{id}"), encode(&usage).unwrap()),
        (format!("sy.events.{id}"), encode(&running).unwrap()),
    ] {
        js.publish(subject, payload.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    // Tokens in the job's stream, as node-b and as node-a without a proof.
    let client = stack.nats.client().await;
    for (node, proof) in [
        (
            "node-b",
            Some(prove("a grant node-b made up", Claim::Chunk)),
        ),
        ("node-a", None),
    ] {
        let chunk = StreamChunk {
            v: SCHEMA_VERSION,
            job_id: id.clone(),
            attempt: 1,
            seq: 0,
            delta: "FORGED".into(),
            finish_reason: None,
            node: node.into(),
            proof,
        };
        client
            .publish(format!("sy.stream.{id}"), encode(&chunk).unwrap().into())
            .await
            .unwrap();
    }
    client.flush().await.unwrap();

    let done = stack
        .wait_finished(std::slice::from_ref(&id), Duration::from_secs(30))
        .await;
    let job = &done[&id];
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["node"], "node-a", "{job}");
    assert_eq!(
        job["result"]["choices"][0]["message"]["content"],
        expected_echo("the real one", 4),
        "{job}"
    );
    // The client following it saw node-a's tokens and events only.
    let seen = following.text().await.unwrap();
    assert!(seen.contains("event: token"), "{seen}");
    assert!(
        !seen.contains("FORGED") && !seen.contains("node-b"),
        "{seen}"
    );

    // The stored result is node-a's too: a client reading RESULTS meets it.
    let stored = js
        .get_stream("RESULTS")
        .await
        .unwrap()
        .direct_get_last_for_subject(format!("sy.results.{id}"))
        .await
        .unwrap();
    let stored: JobResult = switchyard_schemas::decode(&stored.payload).unwrap();
    assert_eq!(stored.node.as_deref(), Some("node-a"));

    // The ledger holds node-a's usage of the job, not the forged million.
    let usage = eventually(
        Duration::from_secs(20),
        Duration::from_millis(100),
        || async {
            let (_, report) = stack.get_json("/v1/usage").await;
            let rows = report["data"].as_array().cloned().unwrap_or_default();
            so(!rows.is_empty(), || report.to_string()).map(|()| rows)
        },
    )
    .await;
    let requests: u64 = usage.iter().map(|r| r["requests"].as_u64().unwrap()).sum();
    let prompt: u64 = usage
        .iter()
        .map(|r| r["prompt_tokens"].as_u64().unwrap())
        .sum();
    assert_eq!(requests, 1, "{usage:?}");
    assert!(prompt < 1_000, "the forged usage was charged: {usage:?}");
    for stream in ["RESULTS", "BILLING", "EVENTS"] {
        let dropped = stack
            .metric(
                "broker",
                &format!("switchyard_broker_forged_messages_total{{stream=\"{stream}\"}}"),
            )
            .await;
        assert_eq!(dropped, 1.0, "{stream}");
    }
}
