//! The durable job path end to end, against a real nats-server and the real
//! binaries: nothing lost, nothing reported twice, across crashes.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::common::*;
use async_nats::HeaderMap;
use futures::StreamExt;
use serde_json::{Value, json};

fn chat_body(prompt: &str, max_tokens: u32) -> Value {
    json!({
        "model": CHAT_MODEL,
        "input": {"messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens},
        "metadata": {"suite": "durable"},
    })
}

/// Publishes a submission to the durable intake and waits for its PubAck.
async fn submit_nats(js: &async_nats::jetstream::Context, id: &str, body: &Value) {
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", id);
    js.publish_with_headers("sy.submit.normal", headers, body.to_string().into())
        .await
        .expect("publish")
        .await
        .expect("puback");
}

/// Submits `n` jobs over HTTP and `n` over NATS; returns id → prompt.
async fn submit_mixed(stack: &Stack, n: usize, tag: &str) -> HashMap<String, String> {
    let client = stack.nats.client().await;
    let js = async_nats::jetstream::new(client);
    let http = futures::stream::iter(0..n)
        .map(|i| async move {
            let prompt = format!("{tag} http job {i}");
            (stack.submit_http(&chat_body(&prompt, 6)).await, prompt)
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>();
    let nats = futures::stream::iter(0..n)
        .map(|i| {
            let js = js.clone();
            async move {
                let id = format!("{tag}-nats-{i}");
                let prompt = format!("{tag} nats job {i}");
                submit_nats(&js, &id, &chat_body(&prompt, 6)).await;
                (id, prompt)
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>();
    let (a, b) = tokio::join!(http, nats);
    a.into_iter().chain(b).collect()
}

/// Every job succeeded, its answer is the echo of its own prompt, and every
/// result was published exactly once.
fn assert_all_correct(
    jobs: &HashMap<String, String>,
    records: &HashMap<String, Value>,
    results: &HashMap<String, u32>,
) {
    assert_eq!(records.len(), jobs.len());
    for (id, prompt) in jobs {
        let r = &records[id];
        assert_eq!(r["status"], "succeeded", "{id}: {r}");
        assert_eq!(
            r["result"]["choices"][0]["message"]["content"],
            expected_echo(prompt, 6),
            "{id} got another job's answer: {r}"
        );
        assert_eq!(r["usage"]["completion_tokens"], 6);
        let statuses: Vec<&str> = r["transitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["status"].as_str().unwrap())
            .collect();
        assert_eq!(
            statuses,
            ["queued", "assigned", "running", "succeeded"],
            "{r}"
        );
        assert_eq!(
            results.get(id),
            Some(&1),
            "{id}: results published {:?}",
            results.get(id)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_thousand_jobs_over_http_and_nats_all_complete_once() {
    let stack = Stack::running(StackOptions::default(), &["node-a", "node-b"]);
    let counter = ResultCounter::start(&stack.nats.client().await).await;

    let started = Instant::now();
    let jobs = submit_mixed(&stack, 1000, "bulk").await;
    let submitted = started.elapsed();
    let ids: Vec<String> = jobs.keys().cloned().collect();
    let records = stack.wait_finished(&ids, Duration::from_secs(180)).await;
    let elapsed = started.elapsed();
    eprintln!(
        "2000 jobs: submitted in {:.2}s, all finished in {:.2}s ({:.0} jobs/s end to end)",
        submitted.as_secs_f64(),
        elapsed.as_secs_f64(),
        2000.0 / elapsed.as_secs_f64()
    );
    // Let any straggling duplicate arrive before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_all_correct(&jobs, &records, &counter.snapshot());
    let nodes: std::collections::HashSet<&str> = records
        .values()
        .filter_map(|r| r["node"].as_str())
        .collect();
    assert_eq!(nodes.len(), 2, "both agents took work: {nodes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queued_jobs_survive_sigkill_of_broker_and_dispatcher() {
    let mut stack = Stack::new(StackOptions::default());
    stack.start_broker();
    stack.start_dispatcher();
    let counter_client = stack.nats.client().await;

    // No agent runs: every job waits in the queue.
    let jobs = submit_mixed(&stack, 250, "durable").await;
    stack.sigkill("broker");
    stack.sigkill("dispatcher");
    // The server itself restarts too: the queue is on disk, not in a process.
    stack.nats.restart();
    drop(counter_client);
    let counter = ResultCounter::start(&stack.nats.client().await).await;

    stack.start_broker();
    stack.start_dispatcher();
    stack.start_agent("node-a");
    stack.start_agent("node-b");
    let ids: Vec<String> = jobs.keys().cloned().collect();
    let records = stack.wait_finished(&ids, Duration::from_secs(120)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_all_correct(&jobs, &records, &counter.snapshot());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jobs_of_a_killed_agent_are_redelivered_and_reported_once() {
    let mut stack = Stack::running(
        StackOptions {
            slots: 4,
            base_latency: "400ms",
            agent_ack_wait: "2s",
            ..StackOptions::default()
        },
        &["node-a", "node-b"],
    );
    let counter = ResultCounter::start(&stack.nats.client().await).await;

    let mut jobs = HashMap::new();
    for i in 0..40 {
        let prompt = format!("redelivery job {i}");
        jobs.insert(stack.submit_http(&chat_body(&prompt, 6)).await, prompt);
    }
    // Wait until node-a is busy, then kill it mid-job.
    stack.wait_running("node-a").await;
    let mut interrupted = Vec::new();
    for id in jobs.keys() {
        let (_, r) = stack.get_job(id).await;
        if r["node"] == "node-a" && r["status"] != "succeeded" {
            interrupted.push(id.clone());
        }
    }
    stack.sigkill("node-a");
    assert!(
        !interrupted.is_empty(),
        "node-a held no unfinished job when killed"
    );

    // Back with the same identity: its unacknowledged assignments come back.
    stack.start_agent("node-a");
    let ids: Vec<String> = jobs.keys().cloned().collect();
    let records = stack.wait_finished(&ids, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_all_correct(&jobs, &records, &counter.snapshot());
    eprintln!(
        "{} jobs were on node-a when it was killed; all completed once",
        interrupted.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_streamed_job_publishes_its_text_in_order_and_its_whole_result() {
    let stack = Stack::running(
        StackOptions {
            per_token_latency: "5ms",
            ..StackOptions::default()
        },
        &["node-a"],
    );
    let client = stack.nats.client().await;
    let mut pieces = client.subscribe("sy.stream.*").await.unwrap();
    client.flush().await.unwrap();
    let mut body = chat_body("stream these words", 7);
    body["stream"] = json!(true);
    let id = stack.submit_http(&body).await;
    let mut chunks = Vec::new();
    while chunks
        .last()
        .is_none_or(|c: &switchyard_schemas::StreamChunk| c.finish_reason.is_none())
    {
        let msg = tokio::time::timeout(Duration::from_secs(10), pieces.next())
            .await
            .expect("chunks keep coming until the last")
            .unwrap();
        assert_eq!(msg.subject.as_str(), format!("sy.stream.{id}"));
        chunks.push(switchyard_schemas::decode(&msg.payload).unwrap());
    }
    // Seven words, one chunk each, then the last chunk with the reason.
    assert_eq!(chunks.len(), 8, "{chunks:?}");
    assert!(
        chunks
            .iter()
            .enumerate()
            .all(|(i, c)| c.seq as usize == i && c.attempt == 1)
    );
    assert_eq!(chunks[7].finish_reason.as_deref(), Some("length"));
    let text: String = chunks.iter().map(|c| c.delta.as_str()).collect();
    assert_eq!(text, expected_echo("stream these words", 7));
    let r = &stack
        .wait_finished(std::slice::from_ref(&id), Duration::from_secs(10))
        .await[&id];
    assert_eq!(
        r["result"]["choices"][0]["message"]["content"],
        text.as_str()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_output_is_dropped_after_its_retention_and_the_record_stays() {
    let stack = Stack::running(
        StackOptions {
            broker_extra: "  result_retention: 1s",
            ..StackOptions::default()
        },
        &["node-a"],
    );
    let id = stack
        .submit_http(&json!({"model": TEXT_MODEL, "input": {"prompt": "keep me", "max_tokens": 2}}))
        .await;
    let done = stack
        .wait_finished(std::slice::from_ref(&id), Duration::from_secs(20))
        .await;
    assert_eq!(
        done[&id]["result"]["choices"][0]["text"],
        json!(expected_echo("keep me", 2))
    );
    let record = eventually(
        Duration::from_secs(15),
        Duration::from_millis(200),
        || async {
            let (_, record) = stack.get_job(&id).await;
            match record["result_expired"] == json!(true) {
                true => Ok(record),
                false => Err(format!("kept past its retention: {record}")),
            }
        },
    )
    .await;
    assert_eq!(record["result"], Value::Null);
    assert_eq!(record["status"], "succeeded");
    assert_eq!(record["usage"]["completion_tokens"], 2);
}

/// The order that once left a job unfinished for ever, played exactly: an
/// attempt's node went quiet mid-run, the reclaim's `retrying` event is
/// recorded (attempt 2 begins), and only then does attempt 1's result land
/// on RESULTS (its node was cut off from NATS, not dead). That result is
/// the job's, whatever its attempt: the record ends with it, as RESULTS
/// keeps it; a second result is refused by RESULTS and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_result_that_lands_after_its_attempt_was_reclaimed_is_the_job_s() {
    use switchyard_runtime::attempts::Voucher;
    use switchyard_runtime::grants::Claim;
    use switchyard_schemas::{
        ErrorClass, EventKind, JobError, JobEvent, JobResult, SCHEMA_VERSION, Timeline, Usage,
        encode,
    };
    let mut stack = Stack::new(StackOptions::default());
    stack.start_broker();
    let id = stack.submit_http(&chat_body("reclaimed mid-run", 2)).await;
    let js = async_nats::jetstream::new(stack.nats.client().await);
    // The test plays node-a's part, with the proofs its grants give.
    let grants = stack.grants().await;
    let event = |kind| JobEvent {
        v: SCHEMA_VERSION,
        job_id: id.clone(),
        attempt: 1,
        at_ms: switchyard_schemas::now_ms(),
        kind,
        proof: Some(grants.prove(Claim::Running, &id, 1, "node-a")),
    };
    let publish = |subject: String, msg_id: String, payload: Vec<u8>| {
        let js = js.clone();
        async move {
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", msg_id.as_str());
            js.publish_with_headers(subject, headers, payload.into())
                .await
                .unwrap()
                .await
        }
    };
    for (n, kind) in [
        EventKind::Assigned {
            node: "node-a".into(),
        },
        EventKind::Running {
            node: "node-a".into(),
        },
        EventKind::Retrying {
            node: "node-a".into(),
            error: JobError::new(
                ErrorClass::EngineUnavailable,
                "node node-a stopped answering",
            ),
        },
    ]
    .into_iter()
    .enumerate()
    {
        let payload = encode(&event(kind)).unwrap();
        publish(format!("sy.events.{id}"), format!("{id}:1:{n}"), payload)
            .await
            .unwrap();
    }
    eventually(
        Duration::from_secs(10),
        Duration::from_millis(20),
        || async {
            let (_, job) = stack.get_job(&id).await;
            so(job["attempt"] == 2 && job["status"] == "queued", || {
                job.to_string()
            })
        },
    )
    .await;
    let result = |attempt, text: &str| {
        let mut r = JobResult {
            finished_at_ms: switchyard_schemas::now_ms(),
            node: Some(format!("node-{attempt}")),
            ..JobResult::succeeded(
                &id,
                attempt,
                Timeline::default(),
                json!({"choices": [{"text": text}]}),
                Usage::default(),
            )
        };
        Voucher::Platform(&grants).vouch(&mut r);
        r
    };
    // As agents publish results: the first one per job is kept.
    let publish_result = |r: JobResult| {
        let js = js.clone();
        async move {
            switchyard_runtime::attempts::publish_result(&js, &r)
                .await
                .unwrap()
        }
    };
    assert!(publish_result(result(1, "from attempt 1")).await);
    let second = publish_result(result(2, "from attempt 2")).await;
    assert!(!second, "RESULTS took a second result");
    let done = stack
        .wait_finished(std::slice::from_ref(&id), Duration::from_secs(10))
        .await;
    let job = &done[&id];
    assert_eq!(
        (
            job["status"].clone(),
            job["attempt"].clone(),
            job["node"].clone()
        ),
        (json!("succeeded"), json!(1), json!("node-1")),
        "{job}"
    );
    assert_eq!(
        job["result"]["choices"][0]["text"], "from attempt 1",
        "{job}"
    );
}

/// A job is queued while its record is written, so its events and result
/// can come before the record: from a broker whose write is slower than
/// the job, or one that crashed between the two (its durable submission is
/// admitted again later). They wait for the record and are then recorded
/// as if they had come after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_result_that_comes_before_its_job_s_record_is_recorded_once_the_record_is() {
    use switchyard_runtime::attempts::{Voucher, publish_result};
    use switchyard_runtime::grants::Claim;
    use switchyard_schemas::{
        EventKind, JobEvent, JobResult, SCHEMA_VERSION, Timeline, Usage, encode, now_ms,
    };
    let mut stack = Stack::new(StackOptions::default());
    stack.start_broker();
    let js = async_nats::jetstream::new(stack.nats.client().await);
    let grants = stack.grants().await;
    let id = "ahead-of-its-record".to_owned();
    let started = now_ms();
    let assigned = JobEvent {
        v: SCHEMA_VERSION,
        job_id: id.clone(),
        attempt: 1,
        at_ms: started,
        kind: EventKind::Assigned {
            node: "node-a".into(),
        },
        proof: Some(grants.prove(Claim::Running, &id, 1, "node-a")),
    };
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", format!("{id}:1:assigned").as_str());
    js.publish_with_headers(
        format!("sy.events.{id}"),
        headers,
        encode(&assigned).unwrap().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let timeline = Timeline {
        node: Some("node-a".into()),
        assigned_at_ms: Some(started),
        started_at_ms: Some(started),
    };
    let mut result = JobResult {
        finished_at_ms: now_ms(),
        node: Some("node-a".into()),
        ..JobResult::succeeded(
            &id,
            1,
            timeline,
            json!({"choices": [{"text": "ahead"}]}),
            Usage::default(),
        )
    };
    Voucher::Platform(&grants).vouch(&mut result);
    assert!(publish_result(&js, &result).await.unwrap());
    // Both reach the broker, find no record, and are to come again.
    stack
        .wait_metric(
            "broker",
            "switchyard_broker_unrecorded_messages_total",
            Duration::from_secs(10),
            |n| n >= 2.0,
        )
        .await;
    submit_nats(&js, &id, &chat_body("ahead", 2)).await;
    let done = stack
        .wait_finished(std::slice::from_ref(&id), Duration::from_secs(20))
        .await;
    let job = &done[&id];
    assert_eq!(
        (job["status"].clone(), job["node"].clone()),
        (json!("succeeded"), json!("node-a")),
        "{job}"
    );
    assert_eq!(job["result"]["choices"][0]["text"], "ahead", "{job}");
    let transitions: Vec<&str> = job["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["status"].as_str().unwrap())
        .collect();
    assert_eq!(transitions, ["queued", "assigned", "running", "succeeded"]);
}
