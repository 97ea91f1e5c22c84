//! Nodes come and go: work on a lost node finishes elsewhere, a draining
//! node hands back what it has not started, and nothing is lost or run to
//! completion twice.

// Tests fail by panicking; the no-panic lints are for the product code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

fn text(prompt: &str) -> Value {
    json!({"model": TEXT_MODEL, "input": {"prompt": prompt, "max_tokens": 4}})
}

async fn gauge(stack: &Stack, name: &str, metric: &str) -> f64 {
    let text = stack.metrics_text(name).await;
    text.lines()
        .filter(|l| l.starts_with(metric))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn wait_running(stack: &Stack, node: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while gauge(stack, node, "switchyard_agent_running_jobs").await < 1.0 {
        assert!(Instant::now() < deadline, "{node} never ran a job");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn assert_each_succeeded_once(
    records: &HashMap<String, Value>,
    prompts: &HashMap<String, String>,
    results: &HashMap<String, u32>,
) {
    for (id, prompt) in prompts {
        let r = &records[id];
        assert_eq!(r["status"], "succeeded", "{r}");
        assert_eq!(
            r["result"]["choices"][0]["text"],
            expected_echo(prompt, 4),
            "{r}"
        );
        assert_eq!(
            results.get(id),
            Some(&1),
            "{id}: results {:?}",
            results.get(id)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn work_of_a_lost_node_finishes_elsewhere() {
    let mut stack = Stack::running(
        StackOptions {
            slots: 2,
            base_latency: "300ms",
            agent_ack_wait: "2s",
            ..StackOptions::default()
        },
        &["node-a", "node-b"],
    );
    let counter = ResultCounter::start(&stack.nats.client().await).await;
    let mut prompts = HashMap::new();
    for i in 0..30 {
        let prompt = format!("lost node job {i}");
        prompts.insert(stack.submit_http(&text(&prompt)).await, prompt);
    }
    wait_running(&stack, "node-a").await;
    // Killed and never restarted: its queued and running work must move.
    stack.sigkill("node-a");

    let ids: Vec<String> = prompts.keys().cloned().collect();
    let records = stack.wait_finished(&ids, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_each_succeeded_once(&records, &prompts, &counter.snapshot());
    let moved = records
        .values()
        .filter(|r| r["attempt"].as_u64() > Some(1))
        .count();
    assert!(moved > 0, "no job was taken back from node-a");
    assert!(
        records
            .values()
            .filter(|r| r["attempt"].as_u64() > Some(1))
            .all(|r| r["node"] == "node-b"),
        "reclaimed work ran on the surviving node"
    );
    assert!(
        gauge(
            &stack,
            "dispatcher",
            "switchyard_dispatcher_reclaimed_total"
        )
        .await
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_draining_node_finishes_what_it_runs_and_hands_back_the_rest() {
    let mut stack = Stack::running(
        StackOptions {
            slots: 1,
            base_latency: "1s",
            ..StackOptions::default()
        },
        &["node-a", "node-b"],
    );
    let counter = ResultCounter::start(&stack.nats.client().await).await;
    let mut prompts = HashMap::new();
    for i in 0..6 {
        let prompt = format!("drain job {i}");
        prompts.insert(stack.submit_http(&text(&prompt)).await, prompt);
    }
    wait_running(&stack, "node-a").await;
    let status = stack.proc("node-a").terminate(Duration::from_secs(20));
    assert!(status.success(), "node-a exit: {status}");

    let ids: Vec<String> = prompts.keys().cloned().collect();
    let records = stack.wait_finished(&ids, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_each_succeeded_once(&records, &prompts, &counter.snapshot());
    // The job node-a was running finished there, on its first attempt.
    assert!(
        records
            .values()
            .any(|r| r["node"] == "node-a" && r["attempt"] == 1),
        "node-a finished its running job before exiting"
    );
    // What it held but had not started went back without being charged a
    // failure, and ran on node-b.
    let requeued = gauge(
        &stack,
        "dispatcher",
        "switchyard_dispatcher_reclaimed_total{outcome=\"requeued\"}",
    )
    .await;
    assert!(requeued >= 1.0, "nothing was handed back");
    assert!(records.values().all(|r| r["error"].is_null()));
}
