//! The live model registry and rollouts: an alias's weights change through
//! the admin API with no restart and reach every broker; a rollout to a
//! version that fails or is slow is rolled back by its guard while a load
//! runs, with every job accounted for; a healthy one reaches 100 %.

use std::sync::Mutex;
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::common::*;

/// Versions of the chat model: v2 fails three jobs in ten, v3 is five
/// times slower, v4 is as good as the first.
const VERSIONS: &str = "
  - name: chat-v2
    kind: chat
  - name: chat-v3
    kind: chat
  - name: chat-v4
    kind: chat";

const ALIASES: &str = "
  - name: assistant
    targets: [{model: tiny-chat, weight: 100}]";

fn engine(models: &str, latency: &str, faults: &str) -> String {
    format!(
        "
    kind: simulated
    models: [{models}]
    slots: 16
    base_latency: {latency}
    per_token_latency: 0ms
    faults: {faults}"
    )
}

/// Submits to `assistant` every 40 ms until told to stop; the ids.
fn load(stack: &Stack, stop: watch::Receiver<bool>) -> tokio::task::JoinHandle<Vec<String>> {
    let http = stack.http.clone();
    let url = stack.broker_url("/v1/jobs");
    tokio::spawn(async move {
        let mut ids = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_millis(40));
        for i in 0.. {
            tick.tick().await;
            if *stop.borrow() {
                break;
            }
            let body = json!({"model": "assistant",
                "input": {"messages": [{"role": "user", "content": format!("question {i}")}], "max_tokens": 2}});
            let r = http.post(&url).json(&body).send().await.expect("submit");
            assert_eq!(r.status(), 202, "{:?}", r.text().await);
            let v: Value = r.json().await.expect("json");
            assert_eq!(v["alias"], "assistant", "the answer names the alias: {v}");
            ids.push(v["id"].as_str().expect("id").to_owned());
        }
        ids
    })
}

pub(crate) async fn send(
    stack: &Stack,
    method: reqwest::Method,
    path: &str,
    body: Value,
) -> (u16, Value) {
    let r = stack
        .http
        .request(method, stack.broker_url(path))
        .json(&body)
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

pub(crate) fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}

/// The alias's targets as (model, weight).
fn weights(registry: &Value) -> Vec<(String, u64)> {
    let alias = registry["aliases"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["name"] == "assistant")
        .cloned()
        .unwrap_or(Value::Null);
    alias["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            (
                t["model"].as_str().unwrap_or_default().to_owned(),
                t["weight"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// Waits until the alias's rollout has `status`; the rollout.
async fn rollout_ended(stack: &Stack, status: &str) -> Value {
    let seen = Mutex::new(Value::Null);
    eventually(
        Duration::from_secs(60),
        Duration::from_millis(200),
        || async {
            let (_, registry) = stack.get_json("/v1/admin/models").await;
            let rollout = registry["rollouts"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|r| r["alias"] == "assistant")
                .cloned()
                .unwrap_or(Value::Null);
            let done = rollout["status"] == status;
            *seen.lock().unwrap() = rollout.clone();
            so(done, || format!("rollout: {rollout:#}"))
        },
    )
    .await;
    seen.into_inner().unwrap()
}

/// Runs a load through a rollout of `assistant` to `to` until it ends
/// `status`; the rollout, and every job the load submitted, finished.
async fn roll_out(stack: &Stack, to: &str, guards: Value, status: &str) -> (Value, Vec<Value>) {
    let (stop, stopped) = watch::channel(false);
    let submitting = load(stack, stopped);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (s, started) = send(
        stack,
        reqwest::Method::POST,
        "/v1/admin/aliases/assistant/rollout",
        json!({"to": to, "steps": [50, 100], "every": "3s", "guards": guards}),
    )
    .await;
    assert_eq!(s, 201, "{started:#}");
    let rollout = rollout_ended(stack, status).await;
    // A moment more of load on the weights the rollout left.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.send(true).expect("stop the load");
    let ids = submitting.await.expect("load");
    let done = stack.wait_finished(&ids, Duration::from_secs(60)).await;
    (rollout, done.into_values().collect())
}

fn served_by(jobs: &[Value], model: &str) -> usize {
    jobs.iter().filter(|j| j["model"] == model).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollouts_move_an_alias_under_guards_and_roll_back_a_bad_version_with_no_job_lost() {
    let mut stack = Stack::new(StackOptions {
        extra_models: VERSIONS,
        aliases: ALIASES,
        broker_extra: "  rollout_interval: 200ms",
        ..StackOptions::default()
    });
    stack.start_broker();
    let second = free_port();
    stack.launch_broker(
        "broker-2",
        &[("SWITCHYARD_BROKER__LISTEN", format!("127.0.0.1:{second}"))],
    );
    stack.start_dispatcher();
    stack.start_agent_on("node-a", &engine("tiny-chat, chat-v4", "20ms", "[]"));
    stack.start_agent_on(
        "node-b",
        &engine("chat-v2", "20ms", "[{class: internal, rate: 0.3}]"),
    );
    stack.start_agent_on("node-c", &engine("chat-v3", "100ms", "[]"));
    let nats = stack.nats.client().await;
    let mut events = nats.subscribe("sy.models.events").await.expect("subscribe");

    // The registry is seeded from the configuration, at a revision.
    let (s, registry) = stack.get_json("/v1/admin/models").await;
    assert_eq!(s, 200, "{registry:#}");
    assert_eq!(weights(&registry), [("tiny-chat".to_owned(), 100)]);
    let seeded = registry["revision"].as_u64().expect("revision");

    // A change is checked, and one based on a stale revision refused.
    let split = json!({"targets": [{"model": "tiny-chat", "weight": 60}, {"model": "chat-v4", "weight": 30}]});
    let (s, body) = send(
        &stack,
        reqwest::Method::PUT,
        "/v1/admin/aliases/canary",
        split,
    )
    .await;
    assert_eq!((s, code(&body)), (422, "invalid_request"), "{body:#}");
    let pair = json!({"targets": [{"model": "tiny-chat", "weight": 50}, {"model": "chat-v4", "weight": 50}]});
    let path = format!("/v1/admin/aliases/canary?revision={}", seeded + 7);
    let (s, body) = send(&stack, reqwest::Method::PUT, &path, pair.clone()).await;
    assert_eq!((s, code(&body)), (409, "stale_revision"), "{body:#}");
    let path = format!("/v1/admin/aliases/canary?revision={seeded}");
    let (s, body) = send(&stack, reqwest::Method::PUT, &path, pair.clone()).await;
    assert_eq!(s, 200, "{body:#}");
    let revision = body["revision"].as_u64().expect("revision");
    assert!(revision > seeded);
    let (s, body) = send(&stack, reqwest::Method::PUT, &path, pair).await;
    assert_eq!((s, code(&body)), (409, "stale_revision"), "{body:#}");

    // The other broker routes by it within seconds, with no restart.
    let other = |path: &str| format!("http://127.0.0.1:{second}{path}");
    eventually(
        Duration::from_secs(10),
        Duration::from_millis(100),
        || async {
            let listed: Value = stack
                .http
                .get(other("/v1/models"))
                .send()
                .await
                .expect("models")
                .json()
                .await
                .expect("json");
            let ids: Vec<&str> = listed["data"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|m| m["id"].as_str())
                .collect();
            let at = stack
                .metric("broker-2", "switchyard_registry_revision")
                .await;
            so(ids.contains(&"canary") && at == revision as f64, || {
                format!("{ids:?} at revision {at}")
            })
        },
    )
    .await;
    let r = stack
        .http
        .post(other("/v1/jobs"))
        .json(
            &json!({"model": "canary", "input": {"messages": [{"role": "user", "content": "hi"}]}}),
        )
        .send()
        .await
        .expect("submit");
    assert_eq!(r.status(), 202);
    let (s, _) = send(
        &stack,
        reqwest::Method::DELETE,
        "/v1/admin/aliases/canary",
        Value::Null,
    )
    .await;
    assert_eq!(s, 200);

    // A version that fails 30 % of its jobs: rolled back on the error
    // rate, the old version given all traffic again, and every job of the
    // load ended; the only failures are the bad version's.
    let (rollout, jobs) = roll_out(
        &stack,
        "chat-v2",
        json!({"min_samples": 15, "window": "30s", "max_error_rate_increase": 0.1}),
        "rolled_back",
    )
    .await;
    let tripped = &rollout["rolled_back_by"];
    assert_eq!(tripped["guard"], "error_rate", "{rollout:#}");
    assert!(tripped["new"].as_f64().unwrap_or(0.0) > 0.15, "{rollout:#}");
    assert_eq!(tripped["old"], 0.0, "{rollout:#}");
    let (_, registry) = stack.get_json("/v1/admin/models").await;
    assert_eq!(weights(&registry), [("tiny-chat".to_owned(), 100)]);
    assert!(
        served_by(&jobs, "chat-v2") >= 15,
        "the new version took traffic"
    );
    for job in &jobs {
        let failed = job["status"] == "failed";
        assert!(
            !failed || (job["model"] == "chat-v2" && job["error"]["code"] == "internal_error"),
            "{job:#}"
        );
        assert_eq!(job["alias"], "assistant");
    }
    // New jobs go to the old version only.
    let mut after = Vec::new();
    for i in 0..20 {
        let body = json!({"model": "assistant", "input": {"messages": [{"role": "user", "content": format!("after {i}")}]}});
        after.push(stack.submit_http(&body).await);
    }
    let after = stack.wait_finished(&after, Duration::from_secs(30)).await;
    assert!(after.values().all(|j| j["model"] == "tiny-chat"));

    // A version five times slower: rolled back on the latency guard.
    let (rollout, jobs) = roll_out(
        &stack,
        "chat-v3",
        json!({"min_samples": 15, "max_p95_latency_ratio": 2.0}),
        "rolled_back",
    )
    .await;
    assert_eq!(
        rollout["rolled_back_by"]["guard"], "p95_latency",
        "{rollout:#}"
    );
    assert!(jobs.iter().all(|j| j["status"] == "succeeded"));

    // A healthy version: 50 %, then 100 %, then the alias is all its own.
    let (rollout, jobs) = roll_out(
        &stack,
        "chat-v4",
        json!({"min_samples": 15, "max_error_rate_increase": 0.05, "max_p95_latency_ratio": 3.0}),
        "completed",
    )
    .await;
    assert!(rollout["rolled_back_by"].is_null(), "{rollout:#}");
    let (_, registry) = stack.get_json("/v1/admin/models").await;
    assert_eq!(weights(&registry), [("chat-v4".to_owned(), 100)]);
    assert!(jobs.iter().all(|j| j["status"] == "succeeded"));
    assert!(served_by(&jobs, "chat-v4") > 0 && served_by(&jobs, "tiny-chat") > 0);
    // The versions rolled back are retired: their jobs have all ended
    // and no alias points at them, so they can be removed.
    for retired in ["chat-v2", "chat-v3"] {
        let path = format!("/v1/admin/models/{retired}");
        let (s, body) = send(&stack, reqwest::Method::DELETE, &path, Value::Null).await;
        assert_eq!(s, 200, "{body:#}");
    }
    let (_, registry) = stack.get_json("/v1/admin/models").await;
    let names: Vec<&str> = registry["models"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["name"].as_str())
        .collect();
    assert_eq!(names, ["tiny-chat", "tiny-text", "chat-v4"], "{registry:#}");

    // The command line: under a load, the weights flip back and forth
    // with no job failed or lost; then a file is applied, its difference
    // shown first.
    let (stop, stopped) = watch::channel(false);
    let submitting = load(&stack, stopped);
    let flips: [&[&str]; 4] = [
        &["tiny-chat=100"],
        &["chat-v4=100"],
        &["tiny-chat=30", "chat-v4=70"],
        &["chat-v4=100"],
    ];
    for targets in flips {
        let mut args = vec!["models", "set-alias", "assistant"];
        for t in targets {
            args.extend(["--target", t]);
        }
        let out = stack.cli(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    stop.send(true).expect("stop the load");
    let ids = submitting.await.expect("load");
    let flipped = stack.wait_finished(&ids, Duration::from_secs(60)).await;
    assert!(flipped.values().all(|j| j["status"] == "succeeded"));
    assert!(served_by(&flipped.into_values().collect::<Vec<_>>(), "tiny-chat") > 0);
    let file = stack.dir.path().join("aliases.yaml");
    std::fs::write(
        &file,
        "aliases:\n  - name: assistant\n    targets: [{model: tiny-chat, weight: 100}]\n  - name: summarizer\n    targets: [{model: chat-v4, weight: 100}]\n",
    )
    .expect("write");
    let file = file.to_str().expect("path");
    let out = stack.cli(&["apply", "-f", file, "--dry-run"]);
    let shown: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(shown["applied"], false, "{shown:#}");
    let aliases = &shown["diff"]["aliases"];
    assert_eq!(aliases["added"][0]["name"], "summarizer", "{shown:#}");
    assert_eq!(aliases["changed"][0]["name"], "assistant", "{shown:#}");
    assert_eq!(
        shown["diff"]["models"]["removed"],
        json!([]),
        "a file without models leaves them: {shown:#}"
    );
    let (_, registry) = stack.get_json("/v1/admin/models").await;
    assert_eq!(
        weights(&registry),
        [("chat-v4".to_owned(), 100)],
        "a dry run changes nothing"
    );
    let out = stack.cli(&["apply", "-f", file]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, registry) = stack.get_json("/v1/admin/models").await;
    assert_eq!(weights(&registry), [("tiny-chat".to_owned(), 100)]);
    assert_eq!(registry["aliases"][1]["name"], "summarizer", "{registry:#}");
    // A file with a problem is refused before anything is sent.
    std::fs::write(
        stack.dir.path().join("bad.yaml"),
        "aliases:\n  - name: x\n    targets: [{model: nope, weight: 100}]\n",
    )
    .expect("write");
    let bad = stack.dir.path().join("bad.yaml");
    let out = stack.cli(&["apply", "-f", bad.to_str().expect("path")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("no model of the registry"));

    // Each rollout's moves were published, in order.
    let mut seen = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(500), events.next()).await {
        let e: Value = serde_json::from_slice(&m.payload).expect("event");
        seen.push(format!("{} {}", e["type"], e["rollout"]["to"]));
    }
    let seen: Vec<String> = seen.iter().map(|s| s.replace('"', "")).collect();
    assert_eq!(
        seen,
        [
            "started chat-v2",
            "rolled_back chat-v2",
            "started chat-v3",
            "rolled_back chat-v3",
            "started chat-v4",
            "advanced chat-v4",
            "completed chat-v4"
        ]
    );
}

/// Two versions that are MLflow's `summarizer` versions 1 and 2, and an
/// alias that follows MLflow's `champion`.
const MLFLOW_VERSIONS: &str = "
  - name: summarizer-v1
    kind: chat
    mlflow: models:/summarizer/1
  - name: summarizer-v2
    kind: chat
    mlflow: models:/summarizer/2";

const FOLLOWING: &str = "
  - name: assistant
    targets: [{model: summarizer-v1, weight: 100}]
    follow:
      mlflow: models:/summarizer@champion
      steps: [50, 100]
      every: 2s
      guards: {min_samples: 10, max_error_rate_increase: 0.1}";

/// MLflow's REST API: `POST` `body` to `path`.
async fn mlflow(http: &reqwest::Client, server: &Server, path: &str, body: Value) {
    let r = http
        .post(format!("{}/api/2.0/mlflow/{path}", server.url()))
        .json(&body)
        .send()
        .await
        .expect("MLflow");
    assert!(r.status().is_success(), "{path}: {:?}", r.text().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_an_mlflow_registry_alias_rolls_the_alias_that_follows_it_out() {
    let mut stack = Stack::new(StackOptions {
        extra_models: MLFLOW_VERSIONS,
        aliases: FOLLOWING,
        broker_extra: "  rollout_interval: 200ms",
        ..StackOptions::default()
    });
    let server = Server::start("integrations/mlflow.sh", &[], 1, stack.dir.path()).remove(0);
    let http = stack.http.clone();
    mlflow(
        &http,
        &server,
        "registered-models/create",
        json!({"name": "summarizer"}),
    )
    .await;
    for v in 1..=2 {
        let source = format!("s3://models/summarizer/{v}");
        mlflow(
            &http,
            &server,
            "model-versions/create",
            json!({"name": "summarizer", "source": source}),
        )
        .await;
    }
    let champion =
        |version: &str| json!({"name": "summarizer", "alias": "champion", "version": version});
    mlflow(&http, &server, "registered-models/alias", champion("1")).await;
    stack.launch_broker(
        "broker",
        &[
            ("SWITCHYARD_BROKER__MLFLOW__TRACKING_URI", server.url()),
            (
                "SWITCHYARD_BROKER__MLFLOW__POLL_INTERVAL",
                "300ms".to_owned(),
            ),
        ],
    );
    stack.start_dispatcher();
    stack.start_agent_on(
        "node-a",
        &engine("summarizer-v1, summarizer-v2", "5ms", "[]"),
    );

    let (stop, stopped) = watch::channel(false);
    let submitting = load(&stack, stopped);
    // MLflow's champion is the version served: nothing moves.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, registry) = stack.get_json("/v1/admin/models").await;
    assert_eq!(registry["rollouts"], json!([]), "{registry:#}");
    assert_eq!(weights(&registry), [("summarizer-v1".to_owned(), 100)]);

    // The champion moves to version 2: a rollout to the model that is
    // version 2 starts with the follow's steps and guards, and completes.
    mlflow(&http, &server, "registered-models/alias", champion("2")).await;
    let rollout = rollout_ended(&stack, "completed").await;
    assert_eq!(
        (&rollout["from"], &rollout["to"], &rollout["steps"]),
        (
            &json!("summarizer-v1"),
            &json!("summarizer-v2"),
            &json!([50, 100])
        ),
        "{rollout:#}"
    );
    stop.send(true).expect("stop the load");
    let ids = submitting.await.expect("load");
    let jobs: Vec<Value> = stack
        .wait_finished(&ids, Duration::from_secs(60))
        .await
        .into_values()
        .collect();
    assert!(jobs.iter().all(|j| j["status"] == "succeeded"));
    assert!(served_by(&jobs, "summarizer-v1") > 0 && served_by(&jobs, "summarizer-v2") > 0);
    let (_, registry) = stack.get_json("/v1/admin/models").await;
    assert_eq!(weights(&registry), [("summarizer-v2".to_owned(), 100)]);
}
