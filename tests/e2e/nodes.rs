//! Nodes come and go: work on a lost node finishes elsewhere, a draining
//! node hands back what it has not started, and nothing is lost or run to
//! completion twice. What a node holds for its slots starts highest
//! priority first. A node whose engine hangs keeps its heartbeat and
//! says it is not ready.

use std::collections::HashMap;
use std::time::Duration;

use crate::common::*;
use futures::StreamExt;
use serde_json::{Value, json};
use switchyard_schemas::{Heartbeat, decode};

fn text(prompt: &str) -> Value {
    json!({"model": TEXT_MODEL, "input": {"prompt": prompt, "max_tokens": 4}})
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
    stack.wait_running("node-a").await;
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
        stack
            .metric("dispatcher", "switchyard_dispatcher_reclaimed_total")
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
    stack.wait_running("node-a").await;
    // Node-a also holds an assignment it has not started.
    eventually(
        Duration::from_secs(20),
        Duration::from_millis(20),
        || async {
            let held = stack
                .metric("node-a", "switchyard_agent_held_assignments")
                .await;
            so(held >= 1.0, || "node-a holds no work".into())
        },
    )
    .await;
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
    let requeued = stack
        .metric(
            "dispatcher",
            "switchyard_dispatcher_reclaimed_total{outcome=\"requeued\"}",
        )
        .await;
    assert!(requeued >= 1.0, "nothing was handed back");
    let charged = stack
        .metric(
            "dispatcher",
            "switchyard_dispatcher_reclaimed_total{outcome=\"retried\"}",
        )
        .await;
    assert_eq!(
        charged, 0.0,
        "work that never started was charged a failure"
    );
    assert!(records.values().all(|r| r["error"].is_null()));
}

/// A node of one slot (and the default prefetch of one) runs a batch job
/// and holds another. A critical job submitted then is placed at once, over
/// the held batch job, which the node hands back uncharged: the critical
/// job runs next. Were it placed only when the node had room, or run in
/// the order placed, it would finish last.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_critical_job_takes_the_place_of_batch_work_a_full_node_holds() {
    let stack = Stack::running(
        StackOptions {
            slots: 1,
            base_latency: "300ms",
            ..StackOptions::default()
        },
        &["node-a"],
    );
    let counter = ResultCounter::start(&stack.nats.client().await).await;
    let at = |priority: &str, prompt: &str| json!({"model": TEXT_MODEL, "priority": priority, "input": {"prompt": prompt}});
    let mut ids = Vec::new();
    for i in 0..2 {
        ids.push(stack.submit_http(&at("batch", &format!("batch {i}"))).await);
    }
    eventually(
        Duration::from_secs(20),
        Duration::from_millis(10),
        || async {
            let held = stack
                .metric("node-a", "switchyard_agent_held_assignments")
                .await;
            so(held == 1.0, || format!("node-a holds {held}"))
        },
    )
    .await;
    let critical = stack.submit_http(&at("critical", "critical")).await;
    ids.push(critical.clone());
    let records = stack.wait_finished(&ids, Duration::from_secs(30)).await;
    let order = counter.order();
    assert_eq!(
        order,
        [ids[0].clone(), critical, ids[1].clone()],
        "batch {:?}",
        &ids[..2]
    );
    // The batch job handed back ran again later, charged no failure.
    let handed_back = &records[&ids[1]];
    assert_eq!(handed_back["status"], "succeeded", "{handed_back}");
    assert!(handed_back["error"].is_null(), "{handed_back}");
    assert_eq!(
        stack
            .metric(
                "node-a",
                "switchyard_agent_jobs_total{outcome=\"handed_back\"}"
            )
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_dispatchers_together_run_every_job_once_even_when_one_dies() {
    let mut stack = Stack::running(
        StackOptions {
            slots: 4,
            base_latency: "5ms",
            ..StackOptions::default()
        },
        &["node-a", "node-b"],
    );
    let listen = any_port("SWITCHYARD_DISPATCHER__LISTEN");
    stack.launch("dispatcher-2", "dispatcher", 0, &[listen]);
    let counter = ResultCounter::start(&stack.nats.client().await).await;
    let mut prompts = HashMap::new();
    for i in 0..300 {
        let prompt = format!("ha job {i}");
        prompts.insert(stack.submit_http(&text(&prompt)).await, prompt);
        if i == 150 {
            stack.sigkill("dispatcher");
        }
    }
    let ids: Vec<String> = prompts.keys().cloned().collect();
    let records = stack.wait_finished(&ids, Duration::from_secs(90)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_each_succeeded_once(&records, &prompts, &counter.snapshot());
    assert!(
        records.values().all(|r| r["attempt"] == 1),
        "no job needed a second attempt"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_agent_past_its_ack_wait_is_fenced_out_when_it_resumes() {
    let mut stack = Stack::running(
        StackOptions {
            slots: 2,
            base_latency: "2s",
            agent_ack_wait: "2s",
            ..StackOptions::default()
        },
        &["node-a", "node-b"],
    );
    let counter = ResultCounter::start(&stack.nats.client().await).await;
    let mut prompts = HashMap::new();
    for i in 0..6 {
        let prompt = format!("paused job {i}");
        prompts.insert(stack.submit_http(&text(&prompt)).await, prompt);
    }
    stack.wait_running("node-a").await;
    stack
        .proc("node-a")
        .signal(nix::sys::signal::Signal::SIGSTOP);

    // Its work is taken back and finished by node-b while it is stopped.
    let ids: Vec<String> = prompts.keys().cloned().collect();
    let records = stack.wait_finished(&ids, Duration::from_secs(60)).await;
    let taken_over: Vec<&String> = ids
        .iter()
        .filter(|id| records[*id]["attempt"].as_u64() > Some(1))
        .collect();
    assert!(!taken_over.is_empty(), "node-a held no work when stopped");

    // Resumed, node-a finishes its stale attempts but must not report them.
    stack
        .proc("node-a")
        .signal(nix::sys::signal::Signal::SIGCONT);
    eventually(
        Duration::from_secs(20),
        Duration::from_millis(50),
        || async {
            let fenced = stack
                .metric("node-a", "switchyard_agent_jobs_total{outcome=\"fenced\"}")
                .await;
            so(fenced >= 1.0, || {
                "node-a fenced none of its stale work".into()
            })
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_each_succeeded_once(&records, &prompts, &counter.snapshot());
    for id in taken_over {
        let (_, r) = stack.get_job(id).await;
        assert_eq!(r["node"], "node-b", "{r}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn earliest_finish_sends_work_to_the_node_that_is_faster() {
    let mut stack = Stack::new(StackOptions {
        placement: "earliest_finish",
        ..StackOptions::default()
    });
    stack.start_broker();
    stack.start_dispatcher();
    // The slow node has more room: a policy that looks only at room would
    // prefer it.
    let engine = |slots: u32, ms: &str| {
        [
            ("SWITCHYARD_AGENT__ENGINE__SLOTS", slots.to_string()),
            ("SWITCHYARD_AGENT__ENGINE__BASE_LATENCY", ms.to_owned()),
        ]
    };
    stack.start_agent_with("node-slow", &engine(4, "400ms"));
    stack.start_agent_with("node-fast", &engine(1, "10ms"));
    let client = stack.nats.client().await;
    let mut beats = client.subscribe("sy.heartbeat.node-fast").await.unwrap();

    // One job at a time, well within the fast node's capacity.
    let mut ids = Vec::new();
    for i in 0..30 {
        ids.push(stack.submit_http(&text(&format!("job {i}"))).await);
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    let records = stack.wait_finished(&ids, Duration::from_secs(60)).await;
    let on_fast = records
        .values()
        .filter(|r| r["node"] == "node-fast")
        .count();
    assert!(on_fast >= 25, "{on_fast} of 30 jobs ran on the fast node");

    // Its heartbeat reports the time per job that placement weighed, the
    // engine's own queue, and the GPUs NVML finds.
    let hb = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let msg = beats.next().await.unwrap();
            let hb: Heartbeat = decode(&msg.payload).unwrap();
            if hb.service_ms.is_some() {
                return hb;
            }
        }
    })
    .await
    .unwrap();
    let ms = hb.service_ms.unwrap();
    assert!((10..200).contains(&ms), "service_ms {ms}");
    assert_eq!(hb.engine.queue_depth, Some(0), "idle now: {hb:?}");
    assert!(
        !hb.gpus.is_empty() || stack.log_of("node-fast").contains("no NVIDIA driver"),
        "a node without GPUs says why: {hb:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gpu_aware_placement_passes_over_a_node_whose_kv_cache_is_nearly_full() {
    let mut stack = Stack::new(StackOptions {
        placement: "gpu_aware",
        ..StackOptions::default()
    });
    stack.start_broker();
    stack.start_dispatcher();
    // Alike but for their KV caches: one is nearly all held by other work.
    // A policy blind to the cache shares the jobs out evenly.
    let engine = |held: f64| {
        format!(
            "
    kind: simulated
    models: [{TEXT_MODEL}]
    slots: 4
    base_latency: 20ms
    per_token_latency: 1ms
    kv_cache: {{tokens: 10000, held: {held}}}"
        )
    };
    stack.start_agent_on("node-full", &engine(0.95));
    stack.start_agent_on("node-roomy", &engine(0.2));
    let mut ids = Vec::new();
    for i in 0..40 {
        ids.push(stack.submit_http(&text(&format!("job {i}"))).await);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let records = stack.wait_finished(&ids, Duration::from_secs(60)).await;
    let on_full = records
        .values()
        .filter(|r| r["node"] == "node-full")
        .count();
    assert!(on_full <= 4, "{on_full} of 40 jobs ran on the full node");
    assert!(records.values().all(|r| r["status"] == "succeeded"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_whose_engine_hangs_keeps_its_heartbeat_and_is_not_ready() {
    // An engine that accepts connections and never answers: every probe of
    // it waits for its timeout.
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let engine = format!(
        "
    kind: openai
    url: http://{}
    models: [{TEXT_MODEL}]
    slots: 1",
        hung.local_addr().unwrap()
    );
    let mut stack = Stack::new(StackOptions::default());
    stack.start_broker();
    let client = stack.nats.client().await;
    let mut beats = client.subscribe("sy.heartbeat.node-hung").await.unwrap();
    client.flush().await.unwrap();
    stack.start_agent_unready("node-hung", &engine);

    // The dispatcher takes a node for lost after `node_timeout` (3 s) with
    // no heartbeat: waiting on the engine must not hold them back.
    let mut at = Vec::new();
    while at.len() < 8 {
        let msg = tokio::time::timeout(Duration::from_secs(60), beats.next())
            .await
            .expect("a heartbeat")
            .unwrap();
        let hb: Heartbeat = decode(&msg.payload).unwrap();
        assert!(
            !hb.ready,
            "an engine that never answers is not ready: {hb:?}"
        );
        at.push(std::time::Instant::now());
    }
    let longest = at.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    assert!(
        longest < Duration::from_secs(3),
        "{longest:?} between two heartbeats while the engine hangs"
    );
    assert_eq!(stack.readyz("node-hung").await, 503);
    drop(hung);
}
