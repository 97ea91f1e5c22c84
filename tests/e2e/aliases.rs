//! Model aliases: applications call a stable name, and each job is served
//! by the version its alias gives it, by weight; the job's record keeps
//! both, one end user's jobs stay on one version, and the OpenAI front
//! lists and serves the alias as a model.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::*;

/// A second version of the chat model, served by the same engine.
const VERSIONS: &str = "
  - name: tiny-chat-v2
    kind: chat
    max_tokens: 64
    default_max_tokens: 8";

const ALIASES: &str = "
  - name: chat-default
    targets: [{model: tiny-chat, weight: 50}, {model: tiny-chat-v2, weight: 50}]
  - name: chat-per-user
    sticky: user
    targets: [{model: tiny-chat, weight: 50}, {model: tiny-chat-v2, weight: 50}]";

fn chat(model: &str, text: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 2})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alias_splits_its_jobs_between_versions_and_each_record_says_which() {
    let mut stack = Stack::new(StackOptions {
        extra_models: VERSIONS,
        aliases: ALIASES,
        ..StackOptions::default()
    });
    stack.start_broker();
    stack.start_dispatcher();
    stack.start_simulated_agent("node-a", "tiny-chat, tiny-chat-v2");

    let mut ids = Vec::new();
    for i in 0..40 {
        let body = json!({"model": "chat-default",
                          "input": {"messages": [{"role": "user", "content": format!("hi {i}")}]}});
        ids.push(stack.submit_http(&body).await);
    }
    let done = stack.wait_finished(&ids, Duration::from_secs(60)).await;
    let mut by_version: BTreeMap<String, usize> = BTreeMap::new();
    for job in done.values() {
        assert_eq!(job["status"], "succeeded", "{job:#}");
        assert_eq!(job["alias"], "chat-default", "{job:#}");
        *by_version
            .entry(job["model"].as_str().unwrap_or_default().to_owned())
            .or_default() += 1;
    }
    // Both versions served, and nothing else: each of 40 jobs had an even
    // chance of either.
    let versions: Vec<&String> = by_version.keys().collect();
    assert_eq!(versions, ["tiny-chat", "tiny-chat-v2"], "{by_version:?}");

    // Through the OpenAI front: the alias is a model, and one end user's
    // requests all go to one version.
    let (_, models) = stack.get_json("/v1/models").await;
    let listed: HashSet<&str> = models["data"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert!(
        listed.contains("chat-default") && listed.contains("tiny-chat-v2"),
        "{models:#}"
    );
    let mut served_ann = HashSet::new();
    for i in 0..6 {
        let mut body = chat("chat-per-user", &format!("question {i}"));
        body["user"] = json!("ann");
        let r = stack
            .http
            .post(stack.broker_url("/v1/chat/completions"))
            .json(&body)
            .send()
            .await
            .expect("chat");
        assert_eq!(r.status(), 200);
        let id = r.headers()["x-switchyard-job-id"]
            .to_str()
            .unwrap()
            .to_owned();
        let answer: Value = r.json().await.unwrap();
        assert_eq!(answer["object"], "chat.completion", "{answer:#}");
        let (_, job) = stack.get_job(&id).await;
        assert_eq!(job["alias"], "chat-per-user", "{job:#}");
        served_ann.insert(job["model"].as_str().unwrap_or_default().to_owned());
    }
    assert_eq!(served_ann.len(), 1, "{served_ann:?}");

    // An alias of one kind is refused where another kind is asked for.
    let r = stack
        .http
        .post(stack.broker_url("/v1/embeddings"))
        .json(&json!({"model": "chat-default", "input": ["x"]}))
        .send()
        .await
        .expect("embeddings");
    assert_eq!(r.status(), 422);
}
