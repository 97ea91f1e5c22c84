//! A hostile or careless tenant cannot take what it was not given, nor hold
//! up the others: a cached answer takes from the same limits as any
//! request, a job whose admission failed after it was recorded never runs,
//! a tenant flooding the durable intake over its limit does not delay
//! another's jobs, and a refusal keeps none of the request's values.

use std::time::Duration;

use crate::common::*;
use futures::StreamExt;
use serde_json::{Value, json};

const CACHED: &str = "
  - name: tiny-cached
    kind: completion
    cache:
      ttl: 1m";

/// A tenant at 5 requests a minute (and a burst of 5) asks the same
/// cacheable question 30 times: the answers from the cache count against
/// its limit like any request, so at most the first ten (plus what the
/// passing seconds allow) are answered and the rest are `429`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cache_hits_take_from_the_rate_limit_like_any_request() {
    let mut stack = Stack::new(StackOptions {
        extra_models: CACHED,
        tenants: "[{name: capped, limits: {requests_per_minute: 5, burst_requests: 5}}]",
        ..StackOptions::default()
    });
    stack.start_broker();
    stack.start_dispatcher();
    stack.start_simulated_agent("node-a", "tiny-cached");
    let ask = json!({"model": "tiny-cached", "tenant": "capped",
                     "input": {"prompt": "same question", "max_tokens": 3, "temperature": 0}});
    let started = std::time::Instant::now();
    let mut answers = Vec::new();
    for _ in 0..30 {
        let r = stack
            .http
            .post(stack.broker_url("/v1/jobs"))
            .header("prefer", "wait=10")
            .json(&ask)
            .send()
            .await
            .unwrap();
        let cache = r
            .headers()
            .get("x-switchyard-cache")
            .map(|v| v.to_str().unwrap().to_owned());
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap();
        answers.push((status, cache, body["error"]["code"].clone()));
    }
    let secs = started.elapsed().as_secs() as usize;
    let answered = answers.iter().filter(|a| a.0 == 200).count();
    assert!(
        (2..=10 + secs / 12).contains(&answered),
        "{answered} answered in {secs} s: {answers:?}"
    );
    assert_eq!(answers[1].1.as_deref(), Some("hit"), "{answers:?}");
    assert!(
        answers
            .iter()
            .filter(|a| a.0 != 200)
            .all(|a| a.0 == 429 && a.2 == "rate_limited"),
        "{answers:?}"
    );
}

/// The database fails the budget reservation of a job it has just
/// recorded: the client is answered 503, and the job is gone, never queued
/// by the outbox later and never run; once the database is well again, the
/// client's retry runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_refused_after_its_record_never_runs() {
    let stack = Stack::running(
        StackOptions {
            tenants: "[{name: thrifty, budget: {usd: 100, period: day}}]",
            ..StackOptions::default()
        },
        &["node-a"],
    );
    let job = json!({"model": TEXT_MODEL, "tenant": "thrifty",
                     "input": {"prompt": "once", "max_tokens": 2}});
    stack.refuse_inserts("reservations").await;
    let refused: Vec<(u16, Value)> = futures::stream::iter(0..5)
        .map(|_| stack.post_json("/v1/jobs", &job))
        .buffer_unordered(5)
        .collect()
        .await;
    assert!(
        refused
            .iter()
            .all(|(s, b)| *s == 503 && b["error"]["code"] == "store_unavailable"),
        "{refused:?}"
    );
    // Past the outbox's grace and a few of its rounds (2 s and 1 s here).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (_, listed) = stack.get_json("/v1/jobs?tenant=thrifty").await;
    assert_eq!(listed["data"], json!([]), "{listed}");
    stack.allow_inserts("reservations").await;
    let id = stack.submit_http(&job).await;
    let done = stack
        .wait_finished(std::slice::from_ref(&id), Duration::from_secs(30))
        .await;
    assert_eq!(done[&id]["status"], "succeeded");
    let (_, listed) = stack.get_json("/v1/jobs?tenant=thrifty").await;
    assert_eq!(listed["data"].as_array().map(Vec::len), Some(1), "{listed}");
}

/// Publishes a durable submission with its message id and waits for the
/// server's acknowledgement.
async fn publish(js: &async_nats::jetstream::Context, subject: &str, id: &str, body: Vec<u8>) {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", id);
    js.publish_with_headers(subject.to_owned(), headers, body.into())
        .await
        .expect("publish")
        .await
        .expect("puback");
}

/// A tenant at one request a minute floods the shared durable intake with
/// 1,000 submissions, and one more names a model with a NUL byte (which
/// PostgreSQL cannot store as text). The flood ends failed `rate_limited`
/// at once instead of being redelivered for ever, the poison message is
/// recorded as failed, and another tenant's job published after all of
/// them is admitted and runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flooding_tenant_does_not_hold_up_another_s_durable_submissions() {
    let stack = Stack::running(
        StackOptions {
            tenants: "[{name: flooder, limits: {requests_per_minute: 1, burst_requests: 1}}, {name: calm}]",
            ..StackOptions::default()
        },
        &["node-a"],
    );
    let js = async_nats::jetstream::new(stack.nats.client().await);
    let body = |prompt: &str| {
        json!({"model": TEXT_MODEL, "input": {"prompt": prompt, "max_tokens": 2}})
            .to_string()
            .into_bytes()
    };
    futures::stream::iter(0..1_000)
        .for_each_concurrent(64, |i| {
            let js = js.clone();
            let body = body(&format!("flood {i}"));
            async move { publish(&js, "sy.submit.normal.flooder", &format!("flood-{i}"), body).await }
        })
        .await;
    let poison = json!({"model": "tiny\u{0}model", "input": {"prompt": "x"}}).to_string();
    publish(
        &js,
        "sy.submit.normal.flooder",
        "poison",
        poison.into_bytes(),
    )
    .await;
    let published = std::time::Instant::now();
    publish(&js, "sy.submit.normal.calm", "calm-1", body("calm")).await;
    let done = stack
        .wait_finished(&["calm-1".to_owned()], Duration::from_secs(30))
        .await;
    println!(
        "the other tenant's job ended {:?} after it was published",
        published.elapsed()
    );
    assert_eq!(done["calm-1"]["status"], "succeeded", "{done:?}");
    let ended = stack
        .wait_finished(
            &["flood-999".to_owned(), "poison".to_owned()],
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(ended["flood-999"]["status"], "failed");
    assert_eq!(
        ended["flood-999"]["error"]["code"], "rate_limited",
        "{ended:?}"
    );
    assert_eq!(
        ended["poison"]["error"]["code"], "unknown_model",
        "{ended:?}"
    );
}

/// A submission refused for a mistyped field keeps none of the client's
/// values in its stored error: an e-mail address where a number or a
/// priority belongs is not readable through `GET /v1/jobs/{id}`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refusal_keeps_none_of_the_request_s_values() {
    let stack = Stack::running(StackOptions::default(), &[]);
    let js = async_nats::jetstream::new(stack.nats.client().await);
    let address = "ann.example@example.com";
    // Too long for a metadata key.
    let long_key = format!("{address}{}", "x".repeat(100));
    let cases = [
        (
            "in-input",
            json!({"model": TEXT_MODEL, "input": {"prompt": "x", "max_tokens": address}}),
        ),
        (
            "in-body",
            json!({"model": TEXT_MODEL, "input": {"prompt": "x"}, "deadline_ms": address}),
        ),
        (
            "in-metadata-key",
            json!({"model": TEXT_MODEL, "input": {"prompt": "x"}, "metadata": {long_key: ""}}),
        ),
    ];
    for (id, body) in &cases {
        publish(&js, "sy.submit.normal", id, body.to_string().into_bytes()).await;
    }
    let ids: Vec<String> = cases.iter().map(|(id, _)| (*id).to_owned()).collect();
    let ended = stack.wait_finished(&ids, Duration::from_secs(20)).await;
    for id in &ids {
        let job = &ended[id];
        assert_eq!(job["status"], "failed", "{job}");
        let message = job["error"]["message"].as_str().unwrap();
        assert!(!message.contains("example"), "{id}: {message}");
        assert!(!message.is_empty(), "{id}");
    }
    // The same holds for what the HTTP API answers.
    let (status, body) = stack
        .post_json(
            "/v1/jobs",
            &json!({"model": TEXT_MODEL, "input": {"prompt": "x", "max_tokens": address}}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(!body.to_string().contains("example"), "{body}");
}
