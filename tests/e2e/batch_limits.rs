//! A batch is one tenant's work like any other: its lines take from the
//! limits of the key that made it and wait when over them instead of
//! failing, and one large batch does not keep another batch waiting for
//! its broker's runner.

use std::time::Duration;

use crate::common::*;
use serde_json::{Value, json};

fn line(i: usize) -> String {
    json!({"custom_id": format!("r{i}"), "method": "POST", "url": "/v1/completions",
           "body": {"model": TEXT_MODEL, "prompt": format!("line {i}"), "max_tokens": 2}})
    .to_string()
}

/// Uploads `lines` and makes a batch of them with `key` (none when empty);
/// the batch's id.
async fn batch(stack: &Stack, key: &str, lines: impl Iterator<Item = String>) -> String {
    let content = lines.collect::<Vec<_>>().join("\n").into_bytes();
    let form = reqwest::multipart::Form::new()
        .text("purpose", "batch")
        .part(
            "file",
            reqwest::multipart::Part::bytes(content).file_name("in.jsonl"),
        );
    // The JSON answer to `r`, sent with the key.
    let answer = |r: reqwest::RequestBuilder| async move {
        let r = match key.is_empty() {
            true => r,
            false => r.bearer_auth(key),
        };
        r.send().await.unwrap().json::<Value>().await.unwrap()
    };
    let file = answer(
        stack
            .http
            .post(stack.broker_url("/v1/files"))
            .multipart(form),
    )
    .await;
    let made = answer(stack.http.post(stack.broker_url("/v1/batches")).json(
        &json!({"input_file_id": file["id"], "endpoint": "/v1/completions",
                "completion_window": "24h"}),
    ))
    .await;
    made["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{made}"))
        .to_owned()
}

/// A batch's `request_counts`, as its creator reads them.
async fn counts(stack: &Stack, key: &str, id: &str) -> Value {
    let mut r = stack
        .http
        .get(stack.broker_url(&format!("/v1/batches/{id}")));
    if !key.is_empty() {
        r = r.bearer_auth(key);
    }
    let b: Value = r.send().await.unwrap().json().await.unwrap();
    b["request_counts"].clone()
}

/// A key allowed three queued jobs, of a tenant allowed ten requests a
/// second with a burst of two, makes a batch of ten: the lines take the
/// key's places (at most three jobs queued while no node runs them) and
/// the tenant's rate, wait rather than fail, and all ten run once a node
/// comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_takes_its_key_s_limits_and_waits_rather_than_fails() {
    let mut stack = Stack::running(
        StackOptions {
            tenants: "[{name: acme, limits: {requests_per_minute: 600, burst_requests: 2}}]",
            broker_extra: "  auth:\n    pepper: test-pepper-0123456789abcdef0123456789abcdef",
            ..StackOptions::default()
        },
        &[],
    );
    let out = stack.cli(&["keys", "create", "--role", "admin", "--name", "root"]);
    let admin: Value = serde_json::from_slice(&out.stdout).unwrap();
    let made: Value = stack
        .http
        .post(stack.broker_url("/v1/admin/keys"))
        .bearer_auth(admin["key"].as_str().unwrap())
        .json(&json!({"role": "submitter", "tenant": "acme", "limits": {"max_queued_jobs": 3}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = made["key"].as_str().unwrap().to_owned();
    // The broker reads keys' limits every 2 s.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let id = batch(&stack, &key, (0..10).map(line)).await;
    // Lines are submitted a few at a time, so which three hold the places
    // is not known; that three jobs are queued, and no more, is.
    let queued = || async {
        let r = stack
            .http
            .get(stack.broker_url("/v1/jobs?status=queued&limit=100"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        let page: Value = r.json().await.unwrap();
        page["data"].as_array().map_or(0, Vec::len)
    };
    eventually(
        Duration::from_secs(10),
        Duration::from_millis(100),
        || async {
            let n = queued().await;
            so(n == 3, || format!("{n} jobs queued"))
        },
    )
    .await;
    // Held there, none failed, while the key's places are taken.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(queued().await, 3);
    assert_eq!(counts(&stack, &key, &id).await["failed"], 0);
    stack.start_agent("node-a");
    eventually(
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            let c = counts(&stack, &key, &id).await;
            so(
                c == json!({"total": 10, "completed": 10, "failed": 0}),
                || c.to_string(),
            )
        },
    )
    .await;
}

/// A batch of 60,000 lines is being read when a batch of three comes: the
/// small one has its lines read and queued while the large one is still
/// reading, not after it. (Large enough that reading it takes several of
/// the runner's turns of 2 s: admission takes thousands of lines a second.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_large_batch_does_not_keep_a_small_one_waiting() {
    let stack = Stack::running(StackOptions::default(), &[]);
    const LARGE: usize = 60_000;
    let large = batch(&stack, "", (0..LARGE).map(line)).await;
    eventually(
        Duration::from_secs(20),
        Duration::from_millis(20),
        || async {
            let c = counts(&stack, "", &large).await;
            so(c["total"].as_u64().unwrap_or(0) > 0, || {
                format!("large batch not read: {c}")
            })
        },
    )
    .await;
    let small = batch(&stack, "", (0..3).map(line)).await;
    eventually(
        Duration::from_secs(20),
        Duration::from_millis(50),
        || async {
            let c = counts(&stack, "", &small).await;
            so(c["total"] == 3, || format!("small batch: {c}"))
        },
    )
    .await;
    let read = counts(&stack, "", &large).await["total"].as_u64().unwrap();
    println!("the small batch was read when the large one had {read} lines read");
    assert!(
        read < LARGE as u64,
        "the small batch waited for all of the large one"
    );
}
