//! A hostile or careless tenant cannot take what it was not given: a cached
//! answer takes from the same limits as any request, and a job whose
//! admission failed after it was recorded never runs.

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
