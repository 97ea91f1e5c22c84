//! Queue policy against a real nats-server: bounded queues, and the backlog
//! held in JetStream rather than in any process.

// Tests fail by panicking; the no-panic lints are for the product code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use async_nats::HeaderMap;
use common::*;
use serde_json::{Value, json};

fn text(priority: &str, prompt: &str) -> Value {
    json!({"model": TEXT_MODEL, "priority": priority, "input": {"prompt": prompt}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_queue_answers_429_and_never_a_202_it_cannot_hold() {
    let mut stack = Stack::new(StackOptions {
        max_queued: 5,
        ..StackOptions::default()
    });
    stack.start_broker();
    stack.start_dispatcher();
    // No agent: nothing leaves the queue.
    let mut accepted = Vec::new();
    for i in 0..5 {
        accepted.push(
            stack
                .submit_http(&text("batch", &format!("fill {i}")))
                .await,
        );
    }
    let r = stack
        .http
        .post(stack.broker_url("/v1/jobs"))
        .json(&text("batch", "one too many"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "2");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "queue_full", "{body}");

    // The bound is per queue: another priority of the same model still has room.
    accepted.push(stack.submit_http(&text("critical", "other queue")).await);

    // NATS clients hear the same in the admit reply.
    let client = stack.nats.client().await;
    let reply = client
        .request(
            "sy.admit.batch",
            text("batch", "via nats").to_string().into(),
        )
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(v["error"]["code"], "queue_full", "{v}");

    // Once an agent drains the queue, every accepted job completes and the
    // queue takes work again.
    stack.start_agent("node-a");
    let done = stack
        .wait_finished(&accepted, Duration::from_secs(30))
        .await;
    assert!(done.values().all(|r| r["status"] == "succeeded"));
    stack.submit_http(&text("batch", "room again")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn durable_submissions_wait_while_their_queue_is_full_and_are_bounded_too() {
    let mut stack = Stack::new(StackOptions {
        max_queued: 3,
        ..StackOptions::default()
    });
    stack.start_broker();
    stack.start_dispatcher();
    let js = async_nats::jetstream::new(stack.nats.client().await);
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            stack
                .submit_http(&text("normal", &format!("fill {i}")))
                .await,
        );
    }
    let publish = |id: String| {
        let js = js.clone();
        async move {
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", id.as_str());
            js.publish_with_headers(
                "sy.submit.normal",
                headers,
                text("normal", &id).to_string().into(),
            )
            .await
            .unwrap()
            .await
        }
    };
    // JOBS is full: these are kept in SUBMIT and wait there, up to its bound.
    for i in 0..3 {
        let id = format!("waits-{i}");
        publish(id.clone()).await.expect("room in SUBMIT");
        ids.push(id);
    }
    let refused = publish("waits-3".into()).await;
    assert!(
        refused.is_err(),
        "the server refuses beyond the bound: {refused:?}"
    );
    assert_eq!(
        stack.get_job("waits-0").await.0,
        404,
        "not admitted while full"
    );

    stack.start_agent("node-a");
    let done = stack.wait_finished(&ids, Duration::from_secs(30)).await;
    assert!(
        done.values().all(|r| r["status"] == "succeeded"),
        "{done:?}"
    );
}
