//! The agent against real engines through the whole stack: two vLLM servers
//! (CPU build, a tiny random Llama made locally by `scripts/engines/vllm.sh`,
//! which installs vLLM on first use), started once for the whole test.

// Tests fail by panicking; the no-panic lints are for the product code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};
use switchyard_schemas::{Heartbeat, decode};

const LLAMA_MODELS: &str = "
  - name: tiny-llama
    kind: chat
    max_tokens: 1024
    default_max_tokens: 16
    max_attempts: 3
  - name: tiny-llama-text
    kind: completion
    max_tokens: 1024
    default_max_tokens: 16
    max_attempts: 3";

/// One vLLM server, its process group killed on drop.
struct Vllm {
    port: u16,
    pid: i32,
}

impl Vllm {
    /// Starts `n` servers side by side; returns once each answers a real
    /// completion.
    fn start(n: usize, logs: &std::path::Path) -> Vec<Vllm> {
        let script = repo_root().join("scripts/engines/vllm.sh");
        let install = Command::new(&script).arg("install").status().unwrap();
        assert!(install.success(), "vLLM install failed");
        let starting: Vec<_> = (0..n)
            .map(|i| {
                let port = free_port();
                let log = logs.join(format!("vllm-{i}.log"));
                let child = Command::new(&script)
                    .args(["start", &port.to_string(), log.to_str().unwrap()])
                    .stdout(std::process::Stdio::piped())
                    .spawn()
                    .unwrap();
                (port, child)
            })
            .collect();
        starting
            .into_iter()
            .map(|(port, child)| {
                let out = child.wait_with_output().unwrap();
                assert!(out.status.success(), "vLLM on :{port} did not start");
                let pid = String::from_utf8(out.stdout)
                    .unwrap()
                    .trim()
                    .parse()
                    .unwrap();
                Vllm { port, pid }
            })
            .collect()
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The agent's `engine:` block for this server.
    fn engine(&self) -> String {
        format!(
            "
    kind: vllm
    url: {}
    models: [tiny-llama, tiny-llama-text]
    slots: 4
    request_timeout: 60s",
            self.url()
        )
    }

    fn kill(&self) {
        let _ = kill(Pid::from_raw(-self.pid), Signal::SIGKILL);
    }
}

impl Drop for Vllm {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The engine's own answer to the request a job made.
async fn direct(http: &reqwest::Client, vllm: &Vllm, path: &str, body: Value) -> Value {
    let r = http
        .post(format!("{}{path}", vllm.url()))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{path}: {}", r.status());
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn vllm_serves_jobs_through_the_whole_stack() {
    let mut stack = Stack::new(StackOptions {
        extra_models: LLAMA_MODELS,
        agent_ack_wait: "10s",
        ..StackOptions::default()
    });
    let engines = Vllm::start(2, stack.dir.path());
    let (a, b) = (&engines[0], &engines[1]);
    stack.start_broker();
    stack.start_dispatcher();
    stack.start_agent_on("node-a", &a.engine());
    stack.start_agent_on("node-b", &b.engine());
    let client = stack.nats.client().await;
    let mut beats = client.subscribe("sy.heartbeat.node-a").await.unwrap();

    // Chat and completion: the result and the usage are what the engine
    // itself answers to the same request (temperature 0 is deterministic).
    let messages = json!([{"role": "user", "content": "hi there"}]);
    let chat = stack
        .submit_http(&json!({"model": "tiny-llama", "input": {"messages": messages, "max_tokens": 16, "temperature": 0}}))
        .await;
    let text = stack
        .submit_http(&json!({"model": "tiny-llama-text", "input": {"prompt": "hello world, the model", "max_tokens": 16, "temperature": 0}}))
        .await;
    let done = stack
        .wait_finished(&[chat.clone(), text.clone()], Duration::from_secs(60))
        .await;
    let want_chat = direct(
        &stack.http,
        a,
        "/v1/chat/completions",
        json!({"model": "tiny-llama", "messages": messages, "max_tokens": 16, "temperature": 0}),
    )
    .await;
    let want_text = direct(
        &stack.http,
        b,
        "/v1/completions",
        json!({"model": "tiny-llama-text", "prompt": "hello world, the model", "max_tokens": 16, "temperature": 0}),
    )
    .await;
    let c = &done[&chat];
    assert_eq!(c["status"], "succeeded", "{c}");
    assert_eq!(
        c["result"]["choices"][0]["message"]["content"],
        want_chat["choices"][0]["message"]["content"],
        "{c}"
    );
    let t = &done[&text];
    assert_eq!(t["status"], "succeeded", "{t}");
    assert_eq!(
        t["result"]["choices"][0]["text"],
        want_text["choices"][0]["text"]
    );
    for (record, want) in [(c, &want_chat), (t, &want_text)] {
        assert_eq!(
            record["usage"]["prompt_tokens"],
            want["usage"]["prompt_tokens"]
        );
        assert_eq!(
            record["usage"]["completion_tokens"],
            want["usage"]["completion_tokens"]
        );
    }

    // Input the engine refuses fails at once, with the engine's reason.
    let too_long = stack
        .submit_http(
            &json!({"model": "tiny-llama-text", "input": {"prompt": "x", "max_tokens": 300}}),
        )
        .await;
    let r = &stack
        .wait_finished(std::slice::from_ref(&too_long), Duration::from_secs(30))
        .await[&too_long];
    assert_eq!(r["status"], "failed", "{r}");
    assert_eq!(r["error"]["code"], "invalid_input", "{r}");
    assert_eq!(r["attempt"], 1, "a fatal error is not retried: {r}");
    let reason = r["error"]["message"].as_str().unwrap();
    assert!(reason.contains("max_model_len"), "{reason}");

    // The heartbeat carries vLLM's own queue and KV-cache gauges.
    let hb = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let msg = beats.next().await.unwrap();
            let hb: Heartbeat = decode(&msg.payload).unwrap();
            if hb.engine.kv_cache_usage.is_some() {
                return hb;
            }
        }
    })
    .await
    .expect("a heartbeat with vLLM's load");
    assert!(hb.engine.queue_depth.is_some(), "{hb:?}");

    // An engine killed mid-request: the job is retried on the other node.
    let long = stack
        .submit_http(&json!({"model": "tiny-llama-text", "input": {"prompt": "a long one", "max_tokens": 200, "temperature": 0}}))
        .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let node = loop {
        let (_, r) = stack.get_job(&long).await;
        if r["status"] == "running" {
            break r["node"].as_str().unwrap().to_owned();
        }
        assert!(Instant::now() < deadline, "never started: {r}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (victim, survivor) = if node == "node-a" {
        (a, "node-b")
    } else {
        (b, "node-a")
    };
    victim.kill();
    let r = &stack
        .wait_finished(std::slice::from_ref(&long), Duration::from_secs(60))
        .await[&long];
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(r["attempt"], 2, "{r}");
    assert_eq!(r["node"], survivor, "{r}");
}
