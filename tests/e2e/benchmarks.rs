//! Scheduling benchmarks against the real stack (nats-server, broker,
//! dispatcher, agents with simulated engines). They print figures for
//! `docs/benchmarks.md` and assert nothing about timing; run them with
//!
//! `cargo test --test e2e benchmarks:: -- --ignored --nocapture --test-threads 1`
//!
//! (the test profile builds the crates optimised; see `Cargo.toml`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::*;
use async_nats::HeaderMap;
use async_nats::jetstream::Context;
use futures::StreamExt;
use serde_json::json;
use switchyard_schemas::{JobResult, decode, now_ms};

/// Every result published, by job id, as a subscriber sees it.
#[derive(Clone, Default)]
struct Results(Arc<Mutex<HashMap<String, JobResult>>>);

impl Results {
    async fn watch(client: &async_nats::Client) -> Results {
        let results = Results::default();
        let mut sub = client.subscribe("sy.results.*").await.unwrap();
        client.flush().await.unwrap();
        let sink = results.clone();
        tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                if let Ok(r) = decode::<JobResult>(&msg.payload) {
                    sink.0.lock().unwrap().insert(r.job_id.clone(), r);
                }
            }
        });
        results
    }

    fn get(&self, id: &str) -> Option<JobResult> {
        self.0.lock().unwrap().get(id).cloned()
    }

    async fn wait_for(&self, ids: &[String], timeout: Duration) -> Vec<JobResult> {
        eventually(timeout, Duration::from_millis(20), || async {
            let done: Vec<JobResult> = ids.iter().filter_map(|id| self.get(id)).collect();
            match done.len() == ids.len() {
                true => Ok(done),
                false => Err(format!("{} of {} results", done.len(), ids.len())),
            }
        })
        .await
    }
}

/// A job submitted on `sy.submit.<priority>`, and when.
struct Sent {
    id: String,
    at_ms: i64,
}

async fn send(js: &Context, priority: &str, tenant: &'static str, n: usize) -> Sent {
    send_input(js, priority, tenant, n, |id| json!({"prompt": id})).await
}

/// A job whose input `input` makes of its id.
async fn send_input(
    js: &Context,
    priority: &str,
    tenant: &'static str,
    n: usize,
    input: impl Fn(&str) -> serde_json::Value,
) -> Sent {
    let id = format!("{tenant}-{priority}-{n}");
    let body = json!({"model": TEXT_MODEL, "tenant": tenant, "input": input(&id)});
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", id.as_str());
    let at_ms = now_ms();
    js.publish_with_headers(
        format!("sy.submit.{priority}"),
        headers,
        body.to_string().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    Sent { id, at_ms }
}

/// Sends `per_second` jobs a second for `seconds`, in ticks of 10 ms.
async fn paced(
    js: &Context,
    priority: &str,
    tenant: &'static str,
    per_second: usize,
    seconds: f64,
) -> Vec<Sent> {
    paced_with(
        js,
        priority,
        tenant,
        per_second,
        seconds,
        |id, _| json!({"prompt": id}),
    )
    .await
}

/// As `paced`, the nth job's input made by `input` of its id and n.
async fn paced_with(
    js: &Context,
    priority: &str,
    tenant: &'static str,
    per_second: usize,
    seconds: f64,
    input: impl Fn(&str, usize) -> serde_json::Value + Copy,
) -> Vec<Sent> {
    let ticks = (seconds * 100.0) as usize;
    let mut interval = tokio::time::interval(Duration::from_millis(10));
    let mut sent = Vec::new();
    for tick in 0..ticks {
        interval.tick().await;
        // Whole jobs due by the end of this tick.
        let due = (tick + 1) * per_second / 100;
        let mut pending = Vec::new();
        while sent.len() + pending.len() < due {
            let n = sent.len() + pending.len();
            pending.push(send_input(js, priority, tenant, n, move |id| input(id, n)));
        }
        sent.extend(futures::future::join_all(pending).await);
    }
    sent
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "benchmark: run with --ignored --nocapture"]
async fn priority_isolation_under_a_batch_flood() {
    for prefetch_per_slot in [1, 0] {
        priority_isolation(prefetch_per_slot).await;
    }
}

async fn priority_isolation(prefetch_per_slot: u32) {
    // One node, 8 slots of 100 ms: 80 jobs/s. Batch offered at 10x that.
    let stack = Stack::running(
        StackOptions {
            slots: 8,
            base_latency: "100ms",
            prefetch_per_slot,
            ..StackOptions::default()
        },
        &["node-a"],
    );
    let client = stack.nats.client().await;
    let results = Results::watch(&client).await;
    let js = async_nats::jetstream::new(client);
    let seconds = 6.0;
    let flood = {
        let js = js.clone();
        tokio::spawn(async move { paced(&js, "batch", "flood", 800, seconds).await })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let critical = paced(&js, "critical", "steady", 10, seconds - 1.0).await;
    let flood = flood.await.unwrap();
    let ids: Vec<String> = critical.iter().map(|s| s.id.clone()).collect();
    results.wait_for(&ids, Duration::from_secs(30)).await;
    let mut waits: Vec<i64> = critical
        .iter()
        .map(|s| results.get(&s.id).unwrap().started_at_ms.unwrap() - s.at_ms)
        .collect();
    waits.sort_unstable();
    let batch_done = flood
        .iter()
        .filter(|s| results.get(&s.id).is_some())
        .count();
    println!(
        "priority isolation, prefetch_per_slot {prefetch_per_slot}: {} critical jobs during a flood of {} batch jobs ({} served meanwhile); \
         critical queue wait (submit to start) p50 {} ms, p99 {} ms, max {} ms; service time 100 ms",
        critical.len(),
        flood.len(),
        batch_done,
        percentile(&waits, 0.5),
        percentile(&waits, 0.99),
        waits.last().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "benchmark: run with --ignored --nocapture"]
async fn fair_shares_at_ten_to_one_offered_load() {
    for (tenants, heavy_weight, light_weight) in [
        (
            "[{name: heavy, weight: 1}, {name: light, weight: 1}]",
            1.0,
            1.0,
        ),
        (
            "[{name: heavy, weight: 1}, {name: light, weight: 3}]",
            1.0,
            3.0,
        ),
    ] {
        // 4 slots of 100 ms: 40 jobs/s; heavy offers 400/s, light 40/s.
        let stack = Stack::running(
            StackOptions {
                slots: 4,
                base_latency: "100ms",
                tenants,
                ..StackOptions::default()
            },
            &["node-a"],
        );
        let client = stack.nats.client().await;
        let results = Results::watch(&client).await;
        let js = async_nats::jetstream::new(client);
        let start = now_ms();
        let heavy = {
            let js = js.clone();
            tokio::spawn(async move { paced(&js, "normal", "heavy", 400, 10.0).await })
        };
        let light = paced(&js, "normal", "light", 40, 10.0).await;
        let heavy = heavy.await.unwrap();
        // Count placements started once both have a backlog, until the end.
        let (from, to) = (start + 2_000, start + 10_000);
        let started_in = |sent: &[Sent]| {
            sent.iter()
                .filter_map(|s| results.get(&s.id)?.started_at_ms)
                .filter(|t| (from..to).contains(t))
                .count() as f64
        };
        let (h, l) = (started_in(&heavy), started_in(&light));
        let want = light_weight / (heavy_weight + light_weight);
        println!(
            "fairness, weights heavy:light = {heavy_weight}:{light_weight}, offered 400:40 jobs/s: \
             served heavy {h}, light {l}; light's share {:.1} % (weights say {:.1} %)",
            100.0 * l / (h + l),
            100.0 * want,
        );
    }
}

/// A broker and a dispatcher placing by `placement`.
fn placing_by(placement: &'static str) -> Stack {
    let mut stack = Stack::new(StackOptions {
        placement,
        ..StackOptions::default()
    });
    stack.start_broker();
    stack.start_dispatcher();
    stack
}

/// Eight unlike nodes: (slots, base latency). 45 slots, about 450 jobs/s.
const NODES: [(u32, &str); 8] = [
    (1, "20ms"),
    (2, "40ms"),
    (2, "80ms"),
    (4, "40ms"),
    (4, "160ms"),
    (8, "80ms"),
    (8, "160ms"),
    (16, "320ms"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "benchmark: run with --ignored --nocapture"]
async fn placement_policies_on_eight_unlike_nodes() {
    let slots: u32 = NODES.iter().map(|(s, _)| s).sum();
    for placement in [
        "least_loaded",
        "model_affinity",
        "power_of_two",
        "earliest_finish",
        "round_robin",
    ] {
        let mut stack = placing_by(placement);
        for (i, (node_slots, latency)) in NODES.iter().enumerate() {
            stack.start_agent_with(
                &format!("node-{i}"),
                &[
                    ("SWITCHYARD_AGENT__ENGINE__SLOTS", node_slots.to_string()),
                    (
                        "SWITCHYARD_AGENT__ENGINE__BASE_LATENCY",
                        (*latency).to_owned(),
                    ),
                ],
            );
        }
        // Let every node's first heartbeat arrive.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let client = stack.nats.client().await;
        let results = Results::watch(&client).await;
        let js = async_nats::jetstream::new(client);

        // Saturated: a backlog of 2,000 jobs.
        let backlog: Vec<Sent> = futures::stream::iter(0..2000)
            .map(|n| send(&js, "normal", "sat", n))
            .buffer_unordered(256)
            .collect()
            .await;
        let ids: Vec<String> = backlog.iter().map(|s| s.id.clone()).collect();
        let done = results.wait_for(&ids, Duration::from_secs(120)).await;
        let first = backlog.iter().map(|s| s.at_ms).min().unwrap();
        let last = done.iter().map(|r| r.finished_at_ms).max().unwrap();
        let busy: i64 = done
            .iter()
            .map(|r| r.finished_at_ms - r.started_at_ms.unwrap())
            .sum();
        let span = (last - first) as f64;
        let throughput = done.len() as f64 / (span / 1000.0);
        let utilisation = busy as f64 / (f64::from(slots) * span);

        // Partial load: 60 % of capacity for 6 s.
        let steady = paced(&js, "normal", "part", 270, 6.0).await;
        let ids: Vec<String> = steady.iter().map(|s| s.id.clone()).collect();
        results.wait_for(&ids, Duration::from_secs(60)).await;
        let mut latency: Vec<i64> = steady
            .iter()
            .map(|s| results.get(&s.id).unwrap().finished_at_ms - s.at_ms)
            .collect();
        latency.sort_unstable();
        let mean = latency.iter().sum::<i64>() as f64 / latency.len() as f64;
        println!(
            "placement {placement}: saturated {throughput:.0} jobs/s, slot utilisation {:.0} %; \
             at 60 % load, submit-to-result mean {mean:.0} ms, p50 {} ms, p99 {} ms",
            100.0 * utilisation,
            percentile(&latency, 0.5),
            percentile(&latency, 0.99),
        );
    }
}

/// One job in five is long: a prompt of 200 words and 64 tokens to
/// generate (264 tokens of KV cache), the others 1 word and 8 tokens.
fn mixed(id: &str, n: usize) -> serde_json::Value {
    match n % 5 {
        0 => json!({"prompt": format!("{id}{}", " word".repeat(200)), "max_tokens": 64}),
        _ => json!({"prompt": id, "max_tokens": 8}),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "benchmark: run with --ignored --nocapture"]
async fn placement_with_kv_caches_and_mixed_requests() {
    // Jobs a second: about half of what the nodes serve of this mix.
    const RATE: usize = 100;
    for placement in ["gpu_aware", "earliest_finish", "least_loaded"] {
        let mut stack = placing_by(placement);
        // The eight unlike nodes, each with a KV cache of 100 tokens a
        // slot: a long request holds the cache of two or three slots.
        for (i, (node_slots, latency)) in NODES.iter().enumerate() {
            let engine = format!(
                "
    kind: simulated
    models: [{TEXT_MODEL}]
    slots: {node_slots}
    base_latency: {latency}
    per_token_latency: 8ms
    kv_cache: {{tokens: {}}}",
                node_slots * 100
            );
            stack.start_agent_on(&format!("node-{i}"), &engine);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let client = stack.nats.client().await;
        let results = Results::watch(&client).await;
        let js = async_nats::jetstream::new(client);
        let sent = paced_with(&js, "normal", "mixed", RATE, 6.0, mixed).await;
        let ids: Vec<String> = sent.iter().map(|s| s.id.clone()).collect();
        results.wait_for(&ids, Duration::from_secs(120)).await;
        let first = sent.iter().map(|s| s.at_ms).min().unwrap();
        let last = ids
            .iter()
            .map(|id| results.get(id).unwrap().finished_at_ms)
            .max()
            .unwrap();
        let took = |long: bool| {
            let mut ms: Vec<i64> = sent
                .iter()
                .enumerate()
                .filter(|(n, _)| (n % 5 == 0) == long)
                .map(|(_, s)| results.get(&s.id).unwrap().finished_at_ms - s.at_ms)
                .collect();
            ms.sort_unstable();
            (percentile(&ms, 0.5), percentile(&ms, 0.99))
        };
        let ((short50, short99), (long50, long99)) = (took(false), took(true));
        println!(
            "kv placement {placement}: {} jobs at {RATE}/s in {:.1} s; submit to result, \
             short p50 {short50} ms p99 {short99} ms, long p50 {long50} ms p99 {long99} ms",
            sent.len(),
            (last - first) as f64 / 1000.0,
        );
    }
}
