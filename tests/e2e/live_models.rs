//! Models added and removed through the admin API while a load runs: every
//! broker, the dispatcher and the agents take the change up within seconds
//! with no restart, the load loses no job, and a model is removed only
//! once no alias points at it and none of its jobs is queued or running.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::common::*;
use crate::rollouts::{code, send};

/// Submits a one-token chat job to tiny-chat every 30 ms until told to
/// stop; the ids.
fn load(stack: &Stack, stop: watch::Receiver<bool>) -> tokio::task::JoinHandle<Vec<String>> {
    let http = stack.http.clone();
    let url = stack.broker_url("/v1/jobs");
    tokio::spawn(async move {
        let mut ids = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_millis(30));
        for i in 0.. {
            tick.tick().await;
            if *stop.borrow() {
                break;
            }
            let body = json!({"model": CHAT_MODEL, "input": {"messages": [
                {"role": "user", "content": format!("load {i}")}], "max_tokens": 1}});
            let r = http.post(&url).json(&body).send().await.expect("submit");
            assert_eq!(r.status(), 202, "{:?}", r.text().await);
            let v: Value = r.json().await.expect("json");
            ids.push(v["id"].as_str().expect("id").to_owned());
        }
        ids
    })
}

fn chat(model: &str, words: &str, max_tokens: u32) -> Value {
    json!({"model": model, "input": {"messages": [{"role": "user", "content": words}], "max_tokens": max_tokens}})
}

fn listed(models: &Value) -> Vec<String> {
    models["data"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["id"].as_str().map(str::to_owned))
        .collect()
}

/// A job for fresh-chat must be refused `unknown_model`.
async fn unknown(stack: &Stack) {
    let job = chat("fresh-chat", "hi", 1);
    let (s, body) = send(stack, Method::POST, "/v1/jobs", job).await;
    assert_eq!((s, code(&body)), (422, "unknown_model"), "{body:#}");
}

/// Asks to remove fresh-chat, which must be refused `model_in_use`; why.
async fn removal_refused(stack: &Stack) -> String {
    let path = "/v1/admin/models/fresh-chat";
    let (s, body) = send(stack, Method::DELETE, path, Value::Null).await;
    assert_eq!((s, code(&body)), (409, "model_in_use"), "{body:#}");
    body["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_added_under_load_is_served_within_seconds_and_removed_only_once_drained() {
    let mut stack = Stack::new(StackOptions {
        // The agent's NATS user may follow the registry and nothing more.
        nats_accounts: true,
        ..StackOptions::default()
    });
    stack.start_broker();
    stack.start_dispatcher();
    // The engine serves a model the registry does not name yet: not
    // offered until it does. A token takes 20 ms.
    stack.start_agent_on(
        "node-a",
        "
    kind: simulated
    models: [tiny-chat, fresh-chat]
    slots: 16
    base_latency: 1ms
    per_token_latency: 20ms",
    );
    let pids: Vec<u32> = ["broker", "dispatcher", "node-a"]
        .iter()
        .map(|p| stack.pid_of(p))
        .collect();
    unknown(&stack).await;

    let (stop, stopped) = watch::channel(false);
    let submitting = load(&stack, stopped);
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Refused with its field; then added.
    let (s, body) = send(
        &stack,
        Method::PUT,
        "/v1/admin/models/fresh-chat",
        json!({"kind": "chat", "max_tokens": 0}),
    )
    .await;
    assert_eq!((s, code(&body)), (422, "invalid_request"), "{body:#}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("max_tokens")
    );
    let (s, body) = send(
        &stack,
        Method::PUT,
        "/v1/admin/models/fresh-chat",
        json!({"kind": "chat", "max_tokens": 512, "price": {"prompt_per_1k": 0.5}}),
    )
    .await;
    assert_eq!(s, 200, "{body:#}");
    let revision = body["revision"].as_u64().expect("revision");

    // Within seconds every component runs that revision and the OpenAI
    // front lists the model.
    eventually(
        Duration::from_secs(15),
        Duration::from_millis(100),
        || async {
            let mut at = Vec::new();
            for p in ["broker", "dispatcher", "node-a"] {
                at.push(stack.metric(p, "switchyard_registry_revision").await);
            }
            let (_, models) = stack.get_json("/v1/models").await;
            let ids = listed(&models);
            so(
                at.iter().all(|r| *r == revision as f64) && ids.contains(&"fresh-chat".to_owned()),
                || format!("revisions {at:?}, listed {ids:?}"),
            )
        },
    )
    .await;
    let mut fresh = Vec::new();
    for i in 0..10 {
        fresh.push(
            stack
                .submit_http(&chat("fresh-chat", &format!("new {i}"), 2))
                .await,
        );
    }
    let served = stack.wait_finished(&fresh, Duration::from_secs(30)).await;
    for job in served.values() {
        assert_eq!(job["status"], "succeeded", "{job:#}");
        assert_eq!(job["model"], "fresh-chat");
    }

    // Not removed while a job of it runs, nor while an alias points at it.
    let long = stack
        .submit_http(&chat("fresh-chat", "one two three", 150))
        .await;
    assert!(removal_refused(&stack).await.contains(&long));
    let alias = json!({"targets": [{"model": "fresh-chat", "weight": 100}]});
    let (s, _) = send(&stack, Method::PUT, "/v1/admin/aliases/fresh", alias).await;
    assert_eq!(s, 200);
    stack.wait_finished(&[long], Duration::from_secs(30)).await;
    assert!(removal_refused(&stack).await.contains("alias"));
    let (s, _) = send(
        &stack,
        Method::DELETE,
        "/v1/admin/aliases/fresh",
        Value::Null,
    )
    .await;
    assert_eq!(s, 200);
    // Applying the configuration file again would remove it: the
    // difference says so.
    let file = stack.dir.path().join("switchyard.yaml");
    let out = stack.cli(&["apply", "-f", file.to_str().expect("path"), "--dry-run"]);
    let shown: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        shown["diff"]["models"]["removed"],
        json!(["fresh-chat"]),
        "{shown:#}"
    );
    assert_eq!(shown["applied"], false);
    let (s, body) = send(
        &stack,
        Method::DELETE,
        "/v1/admin/models/fresh-chat",
        Value::Null,
    )
    .await;
    assert_eq!(s, 200, "{body:#}");
    unknown(&stack).await;

    // The load ran through every change: each of its jobs succeeded.
    stop.send(true).expect("stop the load");
    let ids = submitting.await.expect("load");
    assert!(ids.len() > 50, "{} jobs", ids.len());
    let done = stack.wait_finished(&ids, Duration::from_secs(60)).await;
    assert_eq!(done.len(), ids.len());
    assert!(done.values().all(|j| j["status"] == "succeeded"));
    // And nothing restarted.
    for (p, pid) in ["broker", "dispatcher", "node-a"].iter().zip(pids) {
        assert_eq!(stack.pid_of(p), pid, "{p} restarted");
        assert!(stack.proc(p).exited().is_none(), "{p} exited");
    }
}
