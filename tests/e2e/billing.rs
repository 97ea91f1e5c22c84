//! Billing: 10,000 jobs, with the broker and an agent SIGKILLed while they
//! run so that usage events and assignments are delivered again; the ledger
//! still charges each completed job once, and its totals are the engine's
//! own token counts at the configured prices.

use std::time::Duration;

use crate::common::*;
use serde_json::{Value, json};

const PRICED: &str = "
  - name: tiny-priced
    kind: completion
    price: {prompt_per_1k: 1.0, completion_per_1k: 2.0}
    cache: {ttl: 1m}";

const JOBS: usize = 10_000;

/// Jobs listed with `status`, counted a page at a time.
async fn count(stack: &Stack, status: &str) -> usize {
    let mut n = 0;
    let mut cursor = String::new();
    loop {
        let (_, page) = stack
            .get_json(&format!("/v1/jobs?status={status}&limit=200{cursor}"))
            .await;
        n += page["data"].as_array().map_or(0, Vec::len);
        match page["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => return n,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_jobs_through_crashes_are_each_billed_once() {
    let mut stack = Stack::new(StackOptions {
        extra_models: PRICED,
        ..StackOptions::default()
    });
    stack.start_broker();
    stack.start_dispatcher();
    stack.start_simulated_agent("node-a", "tiny-priced");
    stack.start_simulated_agent("node-b", "tiny-priced");
    let js = async_nats::jetstream::new(stack.nats.client().await);
    // Prompts of 3 tokens; 1 to 4 completion tokens.
    let completion: usize = (0..JOBS).map(|i| 1 + i % 4).sum();
    let published = publish_acked(&js, JOBS, |i| {
        let body = json!({"model": "tiny-priced",
                          "input": {"prompt": format!("bill {i} now"), "max_tokens": 1 + i % 4}});
        (
            "sy.submit.normal".to_owned(),
            Some(format!("bill-{i}")),
            body.to_string().into_bytes(),
        )
    });
    // While they run: the broker dies mid-projection, then an agent mid-job.
    let chaos = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        stack.sigkill("broker");
        stack.start_broker();
        tokio::time::sleep(Duration::from_secs(2)).await;
        stack.sigkill("node-a");
        stack.start_simulated_agent("node-a", "tiny-priced");
    };
    tokio::join!(published, chaos);

    eventually(
        Duration::from_secs(180),
        Duration::from_millis(500),
        || async {
            let n = count(&stack, "succeeded").await;
            so(n >= JOBS, || format!("{n} of {JOBS} jobs completed"))
        },
    )
    .await;

    // The projection of usage may trail the results by a batch.
    let report = eventually(
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async {
            let (_, report) = stack.get_json("/v1/usage").await;
            let requests: u64 = report["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["requests"].as_u64().unwrap())
                .sum();
            match requests >= JOBS as u64 {
                true => Ok(report),
                false => Err(format!("ledger short: {report}")),
            }
        },
    )
    .await;
    let sum = |field: &str| -> u64 {
        report["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r[field].as_u64().unwrap())
            .sum()
    };
    assert_eq!(
        sum("requests"),
        JOBS as u64,
        "one charged line per completed job"
    );
    assert_eq!(sum("prompt_tokens"), 3 * JOBS as u64);
    assert_eq!(sum("completion_tokens"), completion as u64);
    let want_usd = (3 * JOBS) as f64 / 1000.0 + completion as f64 / 1000.0 * 2.0;
    let total = report["total_cost_usd"].as_f64().unwrap();
    assert!((total - want_usd).abs() < 1e-6, "{total} != {want_usd}");
    println!(
        "ledger: {} jobs charged, ${total:.6}; waste lines: {}",
        sum("requests"),
        report["waste"]
    );

    // A repeat answered from the cache is billed once, at the cache price
    // (zero here): one more line, no more cost.
    let body = json!({"model": "tiny-priced", "input": {"prompt": "bill 7 now", "max_tokens": 4, "temperature": 0}});
    let mut answered = Vec::new();
    for _ in 0..2 {
        let r = stack
            .http
            .post(stack.broker_url("/v1/jobs"))
            .header("prefer", "wait=10")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        answered.push(r.json::<Value>().await.unwrap()["id"].clone());
    }
    let (_, after) = stack.get_json("/v1/usage").await;
    let hits: u64 = after["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["cache_hits"].as_u64().unwrap())
        .sum();
    assert_eq!(hits, 1);
    // Each job's own ledger line, as its page in the console shows it.
    let job_usage = |id: &Value| format!("/v1/jobs/{}/usage", id.as_str().unwrap());
    let (status, first) = stack.get_json(&job_usage(&answered[0])).await;
    assert_eq!(status, 200, "{first}");
    let line = &first["data"][0];
    assert_eq!(
        (line["charged"].clone(), line["cache_hit"].clone()),
        (json!(true), json!(false)),
        "{first}"
    );
    let priced = line["prompt_tokens"].as_f64().unwrap() / 1000.0
        + line["completion_tokens"].as_f64().unwrap() / 1000.0 * 2.0;
    let cost = first["cost_usd"].as_f64().unwrap();
    assert!(priced > 0.0 && (cost - priced).abs() < 1e-9, "{first}");
    let (_, repeat) = stack.get_json(&job_usage(&answered[1])).await;
    assert_eq!(repeat["data"][0]["cache_hit"], true, "{repeat}");
    assert_eq!(repeat["cost_usd"], 0.0, "{repeat}");
    let (status, _) = stack.get_json("/v1/jobs/no-such-job/usage").await;
    assert_eq!(status, 404);

    let csv = stack.get_text("/v1/usage?format=csv").await;
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some(
            "day,model,tenant,requests,prompt_tokens,completion_tokens,engine_ms,cost_usd,cache_hits"
        )
    );
    let rows: Vec<Value> = lines.map(|l| json!(l)).collect();
    assert!(!rows.is_empty());
}

/// Tokens a streamed job generated before it was cancelled, or before its
/// own timeout stopped it, are counted and charged: the attempt reached the
/// engine, so its usage is in the ledger, never silently free. A job that
/// succeeds reports its usage in its result, one message for both.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streamed_tokens_of_a_job_stopped_early_are_charged() {
    use futures::StreamExt;
    let stack = Stack::running(
        StackOptions {
            per_token_latency: "100ms",
            ..StackOptions::default()
        },
        &["node-a"],
    );
    let client = stack.nats.client().await;
    let streamed = |id: String| {
        let client = client.clone();
        async move {
            let mut chunks = client.subscribe(format!("sy.stream.{id}")).await.unwrap();
            for _ in 0..3 {
                chunks.next().await.unwrap();
            }
        }
    };
    let job = |timeout: Option<u64>, max_tokens: u32| {
        let mut body = json!({"model": TEXT_MODEL, "stream": true,
                              "input": {"prompt": "a long answer", "max_tokens": max_tokens}});
        if let Some(ms) = timeout {
            body["timeout_ms"] = json!(ms);
        }
        body
    };
    let cancelled = stack.submit_http(&job(None, 60)).await;
    tokio::time::timeout(Duration::from_secs(20), streamed(cancelled.clone()))
        .await
        .expect("tokens stream");
    assert_eq!(stack.cancel_job(&cancelled).await, 200);
    let timed_out = stack.submit_http(&job(Some(1_000), 60)).await;
    let ended = stack
        .wait_finished_as(
            &[cancelled.clone(), timed_out.clone()],
            &["cancelled", "timed_out", "succeeded", "failed"],
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(ended[&cancelled]["status"], "cancelled");
    assert_eq!(ended[&timed_out]["status"], "timed_out");
    let succeeded = stack.submit_http(&job(None, 2)).await;
    let done = stack
        .wait_finished(std::slice::from_ref(&succeeded), Duration::from_secs(30))
        .await;
    assert_eq!(done[&succeeded]["status"], "succeeded");
    let usage = eventually(
        Duration::from_secs(10),
        Duration::from_millis(100),
        || async {
            let (_, usage) = stack.get_json("/v1/usage").await;
            let charged = &usage["data"];
            let rows = charged.as_array().map_or(0, Vec::len);
            let requests: u64 = charged
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| r["requests"].as_u64().unwrap_or(0))
                .sum();
            so(rows > 0 && requests == 3, || usage.to_string()).map(|()| usage)
        },
    )
    .await;
    let tokens: u64 = usage["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["completion_tokens"].as_u64().unwrap())
        .sum();
    // At least the three seen of the cancelled one, and the timed-out one's
    // second of tokens.
    assert!(tokens >= 6, "{usage}");
    assert!(
        usage["data"][0]["engine_ms"].as_u64().unwrap() > 0,
        "{usage}"
    );
    // Only the two stopped attempts, which have no result of their own,
    // reported their usage on its own.
    let billing = async_nats::jetstream::new(client)
        .get_stream("BILLING")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages;
    assert_eq!(billing, 2);
}
