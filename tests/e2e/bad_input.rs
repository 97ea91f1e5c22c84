//! Bad input gets a clear, stable error and never stops other work: over HTTP
//! a status and `{"error": {"code", "message"}}`; on NATS a failed job record
//! and result, or an error reply.

use std::time::Duration;

use crate::common::*;
use async_nats::HeaderMap;
use serde_json::{Value, json};

async fn post_raw(stack: &Stack, body: impl Into<reqwest::Body>) -> (u16, Value) {
    let r = stack
        .http
        .post(stack.broker_url("/v1/jobs"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn chat(content: &str) -> Value {
    json!({"model": CHAT_MODEL, "input": {"messages": [{"role": "user", "content": content}]}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http_bad_inputs_get_their_status_and_code() {
    let mut stack = Stack::new(StackOptions::default());
    stack.start_broker();

    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "truncated JSON",
            r#"{"model": "#.into(),
            400,
            "malformed_body",
        ),
        ("not JSON", "model=tiny-chat".into(), 400, "malformed_body"),
        (
            "missing model",
            json!({"input": {}}).to_string(),
            422,
            "invalid_request",
        ),
        (
            "model of the wrong type",
            json!({"model": 5, "input": {}}).to_string(),
            422,
            "invalid_request",
        ),
        (
            "unknown model",
            json!({"model": "gpt-9", "input": {"prompt": "x"}}).to_string(),
            422,
            "unknown_model",
        ),
        (
            "input of the wrong shape",
            json!({"model": CHAT_MODEL, "input": {"prompt": "x"}}).to_string(),
            422,
            "invalid_request",
        ),
        (
            "bad priority",
            json!({"model": TEXT_MODEL, "priority": "urgent", "input": {"prompt": "x"}})
                .to_string(),
            422,
            "invalid_request",
        ),
        (
            "server field set by client",
            json!({"model": TEXT_MODEL, "input": {"prompt": "x"}, "status": "succeeded"})
                .to_string(),
            422,
            "invalid_request",
        ),
        (
            "client-chosen id over HTTP",
            json!({"id": "mine", "model": TEXT_MODEL, "input": {"prompt": "x"}}).to_string(),
            422,
            "invalid_request",
        ),
        (
            "max_tokens over the model limit",
            json!({"model": TEXT_MODEL, "input": {"prompt": "x", "max_tokens": 65}}).to_string(),
            422,
            "invalid_request",
        ),
        (
            "input over the model limit",
            chat(&"word ".repeat(2000)).to_string(),
            413,
            "input_too_large",
        ),
        (
            "body over the server limit",
            chat(&"x".repeat(70_000)).to_string(),
            413,
            "body_too_large",
        ),
    ];
    for (what, body, status, code) in cases {
        let (got, v) = post_raw(&stack, body).await;
        assert_eq!(got, status, "{what}: {v}");
        assert_eq!(v["error"]["code"], code, "{what}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{what}: a message explains it: {v}"
        );
    }
    let (got, v) = stack.get_job("no-such-job").await;
    assert_eq!((got, v["error"]["code"].as_str()), (404, Some("not_found")));

    // None of that harmed the broker: a good job is still accepted.
    stack.submit_http(&chat("still fine")).await;
}

async fn direct_result(js: &async_nats::jetstream::Context, id: &str) -> Value {
    let stream = js.get_stream("RESULTS").await.unwrap();
    let msg = stream
        .direct_get_last_for_subject(format!("sy.results.{id}"))
        .await
        .unwrap();
    let result: switchyard_schemas::JobResult = switchyard_schemas::decode(&msg.payload).unwrap();
    serde_json::to_value(result).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nats_bad_submissions_are_recorded_and_never_block_the_intake() {
    let stack = Stack::running(StackOptions::default(), &["node-a"]);
    let client = stack.nats.client().await;
    let js = async_nats::jetstream::new(client.clone());

    let publish = |subject: &'static str, id: Option<&'static str>, body: Vec<u8>| {
        let js = js.clone();
        async move {
            let mut headers = HeaderMap::new();
            if let Some(id) = id {
                headers.insert("Nats-Msg-Id", id);
            }
            js.publish_with_headers(subject, headers, body.into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
    };
    // Garbage with nothing to name it, then garbage and bad jobs that do have
    // ids, then a good job: the good one must still run.
    publish("sy.submit.normal", None, b"\xc1\x00garbage".to_vec()).await;
    publish(
        "sy.submit.normal",
        Some("bad-bytes"),
        b"\xc1\x00garbage".to_vec(),
    )
    .await;
    publish(
        "sy.submit.normal",
        Some("bad-model"),
        json!({"model": "gpt-9", "input": {"prompt": "x"}})
            .to_string()
            .into_bytes(),
    )
    .await;
    publish(
        "sy.submit.urgent",
        Some("bad-priority"),
        json!({"model": TEXT_MODEL, "input": {"prompt": "x"}})
            .to_string()
            .into_bytes(),
    )
    .await;
    let packed = switchyard_schemas::encode(&json!({
        "model": TEXT_MODEL,
        "input": {"prompt": "packed job", "max_tokens": 3},
    }))
    .unwrap();
    publish("sy.submit.high", Some("good-msgpack"), packed).await;

    let ids: Vec<String> = ["bad-bytes", "bad-model", "bad-priority", "good-msgpack"]
        .map(String::from)
        .to_vec();
    let records = stack.wait_finished(&ids, Duration::from_secs(30)).await;
    let code = |id: &str| records[id]["error"]["code"].as_str().map(str::to_owned);
    assert_eq!(code("bad-bytes").as_deref(), Some("malformed_body"));
    assert_eq!(code("bad-model").as_deref(), Some("unknown_model"));
    assert_eq!(code("bad-priority").as_deref(), Some("invalid_request"));
    let good = &records["good-msgpack"];
    assert_eq!(good["status"], "succeeded", "{good}");
    assert_eq!(good["priority"], "high");
    assert_eq!(good["result"]["choices"][0]["text"], "packed job packed");

    // A NATS client learns the same from the results stream.
    let r = direct_result(&js, "bad-model").await;
    assert_eq!(r["outcome"]["status"], "failed");
    assert_eq!(r["outcome"]["error"]["class"], "unknown_model");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nats_admit_requests_answer_in_the_callers_encoding() {
    let mut stack = Stack::new(StackOptions::default());
    stack.start_broker();
    let client = stack.nats.client().await;

    let ok = client
        .request(
            "sy.admit.high",
            json!({"model": TEXT_MODEL, "input": {"prompt": "x"}})
                .to_string()
                .into(),
        )
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&ok.payload).unwrap();
    assert_eq!(v["status"], "queued", "{v}");
    let (status, rec) = stack.get_job(v["id"].as_str().unwrap()).await;
    assert_eq!((status, rec["priority"].as_str()), (200, Some("high")));

    let bad = client
        .request(
            "sy.admit.normal",
            json!({"model": "gpt-9", "input": {}}).to_string().into(),
        )
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&bad.payload).unwrap();
    assert_eq!(v["error"]["code"], "unknown_model", "{v}");

    let packed =
        switchyard_schemas::encode(&json!({"model": CHAT_MODEL, "input": {"messages": []}}))
            .unwrap();
    let bad = client
        .request("sy.admit.normal", packed.into())
        .await
        .unwrap();
    let v: Value = rmp_serde_decode(&bad.payload);
    assert_eq!(v["error"]["code"], "invalid_request", "{v}");

    let garbage = client
        .request("sy.admit.normal", "\u{1}".into())
        .await
        .unwrap();
    let v: Value = rmp_serde_decode(&garbage.payload);
    assert_eq!(v["error"]["code"], "malformed_body", "{v}");
}

fn rmp_serde_decode(bytes: &[u8]) -> Value {
    let reply: switchyard_schemas::AdmitReply =
        rmp_serde::from_slice(bytes).expect("a MessagePack reply");
    serde_json::to_value(reply).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn garbage_on_internal_subjects_does_not_stop_the_pipeline() {
    let mut stack = Stack::running(StackOptions::default(), &["node-a"]);
    let client = stack.nats.client().await;
    let js = async_nats::jetstream::new(client.clone());

    let victim = stack.submit_http(&chat("first job")).await;
    stack
        .wait_finished(std::slice::from_ref(&victim), Duration::from_secs(20))
        .await;
    let garbage = b"\x92\xa4junk\xc3".to_vec();
    let valid_but_wrong = switchyard_schemas::encode(&json!({"v": 1, "hello": "world"})).unwrap();
    for subject in [
        format!("sy.jobs.normal.{CHAT_MODEL}.default"),
        "sy.work.node-a".to_owned(),
        format!("sy.events.{victim}"),
        format!("sy.results.{victim}"),
        "sy.usage.nobody".to_owned(),
    ] {
        for body in [&garbage, &valid_but_wrong] {
            let stored = js
                .publish(subject.clone(), body.clone().into())
                .await
                .unwrap()
                .await;
            // The finished job's subject holds its one result: RESULTS
            // refuses anything after it.
            assert_eq!(
                stored.is_ok(),
                !subject.starts_with("sy.results."),
                "{subject}: {stored:?}"
            );
        }
    }
    for body in [&garbage, &valid_but_wrong] {
        client
            .publish("sy.heartbeat.node-z", body.clone().into())
            .await
            .unwrap();
    }

    // Everything downstream of those subjects still works, and the finished
    // job's record was not disturbed by a forged result.
    let ids = vec![
        stack.submit_http(&chat("after the garbage one")).await,
        stack.submit_http(&chat("after the garbage two")).await,
    ];
    let done = stack.wait_finished(&ids, Duration::from_secs(30)).await;
    for id in &ids {
        assert_eq!(done[id]["status"], "succeeded", "{}", done[id]);
    }
    let (_, first) = stack.get_job(&victim).await;
    assert_eq!(first["status"], "succeeded");
    assert_eq!(
        first["result"]["choices"][0]["message"]["content"],
        expected_echo("first job", 8)
    );
    for name in ["broker", "dispatcher", "node-a"] {
        assert!(stack.proc(name).exited().is_none(), "{name} died");
    }
}

/// Sends raw bytes on a new connection; the status line of the answer, or
/// an empty string if the broker closed the connection without one.
async fn raw_status(port: u16, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    // The broker may answer and close before it has read everything.
    let _ = s.write_all(request).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    answer.lines().next().unwrap_or("").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_http_gets_4xx_in_bounded_memory_while_others_are_served() {
    use tokio::io::AsyncWriteExt;
    let mut stack = Stack::running(StackOptions::default(), &["node-a"]);
    let port = stack.broker_port;
    let pid = stack.pid_of("broker");
    let before = rss_kib(pid);

    // Bodies: nesting past the parser's depth, bytes that are not UTF-8.
    let deep = format!(
        r#"{{"model": "{TEXT_MODEL}", "input": {{"prompt": {}"x"{}}}}}"#,
        "[".repeat(20_000),
        "]".repeat(20_000)
    );
    let (status, v) = post_raw(&stack, deep).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (400, Some("malformed_body")),
        "{v}"
    );
    let mut invalid = format!(r#"{{"model": "{TEXT_MODEL}", "input": {{"prompt": ""#).into_bytes();
    invalid.extend_from_slice(b"\xff\xfe\xc3\x28");
    invalid.extend_from_slice(b"\"}}");
    let (status, v) = post_raw(&stack, invalid).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (400, Some("malformed_body")),
        "{v}"
    );

    // Headers: ten thousand of them, and one of a mebibyte.
    let mut flood = b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..10_000 {
        flood.extend_from_slice(format!("x-flood-{i}: {i}\r\n").as_bytes());
    }
    flood.extend_from_slice(b"\r\n");
    let line = raw_status(port, &flood).await;
    assert!(line.starts_with("HTTP/1.1 431"), "header flood: {line:?}");
    let mut huge = b"GET /v1/jobs HTTP/1.1\r\nHost: x\r\nx-huge: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 1 << 20));
    huge.extend_from_slice(b"\r\n\r\n");
    let line = raw_status(port, &huge).await;
    assert!(line.starts_with("HTTP/1.1 431"), "huge header: {line:?}");

    // Slow loris: 200 connections stall in their headers and 200 in their
    // bodies, and stay open while other clients go on.
    let mut stalled = Vec::new();
    for i in 0..400 {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let start: &[u8] = if i % 2 == 0 {
            b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nx-slow: "
        } else {
            b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 60000\r\n\r\n{\"model\": "
        };
        s.write_all(start).await.unwrap();
        stalled.push(s);
    }
    let mut ids = Vec::new();
    for i in 0..50 {
        ids.push(
            stack
                .submit_http(&chat(&format!("served beside the loris {i}")))
                .await,
        );
    }
    let done = stack.wait_finished(&ids, Duration::from_secs(60)).await;
    assert!(done.values().all(|r| r["status"] == "succeeded"));
    let grown = rss_kib(pid).saturating_sub(before);
    println!("broker resident memory grew by {grown} KiB");
    assert!(grown < 64 * 1024, "the broker grew by {grown} KiB");
    drop(stalled);
    assert!(stack.proc("broker").exited().is_none(), "the broker died");
}
