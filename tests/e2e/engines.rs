//! The agent against real engines through the whole stack: two vLLM servers
//! (CPU build, a tiny random Llama made locally by `scripts/engines/vllm.sh`,
//! which installs vLLM on first use), started once for the whole test; and a
//! real Triton (`scripts/engines/triton.sh`) serving a Python-backend model.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;
use futures::StreamExt;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};
use switchyard_schemas::{Heartbeat, StreamChunk, decode, now_ms};

pub(crate) const LLAMA_MODELS: &str = "
  - name: tiny-llama
    kind: chat
    max_tokens: 1024
    default_max_tokens: 16
    max_attempts: 3
  - name: tiny-llama-text
    kind: completion
    max_tokens: 1024
    default_max_tokens: 16
    max_attempts: 3
  - name: tiny-llama-generic
    kind: completion
    max_tokens: 64
    default_max_tokens: 16";

/// The agent's `engine:` block for `server`, a vLLM.
fn vllm_engine(server: &Server) -> String {
    format!(
        "
    kind: vllm
    url: {}
    models: [tiny-llama, tiny-llama-text]
    slots: 4
    request_timeout: 60s",
        server.url()
    )
}

/// The engine's own answer to the request a job made.
async fn direct(http: &reqwest::Client, vllm: &Server, path: &str, body: Value) -> Value {
    let r = http
        .post(format!("{}{path}", vllm.url()))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{path}: {}", r.status());
    r.json().await.unwrap()
}

/// Stops `node`'s engine with some of its jobs inside it. The agent's count
/// of running jobs also holds a job whose answer is back and whose result
/// it is reporting, and the tiny model answers within a fraction of a
/// second: the count is read again once the engine is stopped.
async fn stopped_with_jobs_inside(stack: &Stack, node: &str, engine: &Server) {
    loop {
        stack.wait_running(node).await;
        engine.signal(Signal::SIGSTOP);
        tokio::time::sleep(Duration::from_millis(500)).await;
        if stack.metric(node, "switchyard_agent_running_jobs").await >= 1.0 {
            return;
        }
        engine.signal(Signal::SIGCONT);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn vllm_serves_jobs_through_the_whole_stack() {
    let mut stack = Stack::new(StackOptions {
        extra_models: LLAMA_MODELS,
        agent_ack_wait: "10s",
        ..StackOptions::default()
    });
    let engines = Server::start("engines/vllm.sh", &[], 2, stack.dir.path());
    let (a, b) = (&engines[0], &engines[1]);
    stack.start_broker();
    stack.start_dispatcher();
    stack.start_agent_on("node-a", &vllm_engine(a));
    stack.start_agent_on("node-b", &vllm_engine(b));
    // The generic OpenAI-compatible adapter, on the same server as node-b,
    // alone in serving `tiny-llama-generic`. It is not told its models: it
    // asks the server.
    let generic = format!(
        "
    kind: openai
    url: {}
    slots: 2",
        b.url()
    );
    stack.start_agent_on("node-c", &generic);
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
        t["result"]["choices"][0]["text"], want_text["choices"][0]["text"],
        "{t}"
    );
    for (record, want) in [(c, &want_chat), (t, &want_text)] {
        assert_eq!(
            record["usage"]["prompt_tokens"], want["usage"]["prompt_tokens"],
            "{record}"
        );
        assert_eq!(
            record["usage"]["completion_tokens"], want["usage"]["completion_tokens"],
            "{record}"
        );
    }

    // Streamed: the pieces arrive on NATS in order as vLLM makes them, and
    // add up to the job's result, which is what the engine answers whole.
    let mut pieces = client.subscribe("sy.stream.*").await.unwrap();
    client.flush().await.unwrap();
    let streamed = stack
        .submit_http(&json!({"model": "tiny-llama", "stream": true, "input": {"messages": messages, "max_tokens": 16, "temperature": 0}}))
        .await;
    let chunks: Vec<StreamChunk> = tokio::time::timeout(Duration::from_secs(30), async {
        let mut chunks = Vec::new();
        loop {
            let msg = pieces.next().await.unwrap();
            let chunk: StreamChunk = decode(&msg.payload).unwrap();
            if chunk.job_id != streamed {
                continue;
            }
            let last = chunk.finish_reason.is_some();
            chunks.push(chunk);
            if last {
                return chunks;
            }
        }
    })
    .await
    .expect("the stream ends with a finish reason");
    assert!(chunks.len() > 2, "{chunks:?}");
    assert!(
        chunks.iter().enumerate().all(|(i, c)| c.seq as usize == i),
        "{chunks:?}"
    );
    assert_eq!(
        chunks.last().unwrap().finish_reason.as_deref(),
        Some("length")
    );
    let text: String = chunks.iter().map(|c| c.delta.as_str()).collect();
    assert_eq!(
        text, want_chat["choices"][0]["message"]["content"],
        "{want_chat}"
    );
    let r = &stack
        .wait_finished(std::slice::from_ref(&streamed), Duration::from_secs(30))
        .await[&streamed];
    assert_eq!(
        r["result"]["choices"][0]["message"]["content"],
        text.as_str(),
        "{r}"
    );
    assert_eq!(
        r["usage"]["completion_tokens"], want_chat["usage"]["completion_tokens"],
        "{r}"
    );
    assert_eq!(
        r["usage"]["prompt_tokens"], want_chat["usage"]["prompt_tokens"],
        "{r}"
    );

    // The generic adapter serves its model, with the engine's own usage.
    let plain = stack
        .submit_http(&json!({"model": "tiny-llama-generic", "input": {"prompt": "hello world, the model", "max_tokens": 16, "temperature": 0}}))
        .await;
    let r = &stack
        .wait_finished(std::slice::from_ref(&plain), Duration::from_secs(30))
        .await[&plain];
    assert_eq!(r["node"], "node-c", "{r}");
    assert!(
        stack.log_of("node-c").contains("models discovered"),
        "node-c found its models itself"
    );
    assert_eq!(
        r["result"]["choices"][0]["text"], want_text["choices"][0]["text"],
        "{r}"
    );
    assert_eq!(
        r["usage"]["completion_tokens"], want_text["usage"]["completion_tokens"],
        "{r}"
    );

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

    // The heartbeat carries vLLM's own queue and KV-cache gauges, and says
    // node-a's engine serves: the jobs below must find it taking work.
    let hb = tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            let msg = beats.next().await.unwrap();
            let hb: Heartbeat = decode(&msg.payload).unwrap();
            if hb.engine.kv_cache_usage.is_some() && hb.ready {
                return hb;
            }
        }
    })
    .await
    .expect("a heartbeat with vLLM's load, ready");
    assert!(hb.engine.queue_depth.is_some(), "{hb:?}");

    // An engine killed mid-request: its jobs are retried on the other node.
    // Three times as many jobs as node-a and node-b have slots, so that
    // node-a is still running some, whatever the placement, when its
    // engine dies.
    let mut long = Vec::new();
    for i in 0..24 {
        let prompt = format!("a long one {i}");
        long.push(
            stack
                .submit_http(&json!({"model": "tiny-llama-text", "input": {"prompt": prompt, "max_tokens": 240}}))
                .await,
        );
    }
    stopped_with_jobs_inside(&stack, "node-a", a).await;
    a.kill();
    // Bounded for a loaded machine: the rest of the suite shares its two cores.
    let done = stack.wait_finished(&long, Duration::from_secs(300)).await;
    for r in done.values() {
        assert_eq!(r["status"], "succeeded", "{r}");
    }
    let moved: Vec<&Value> = done.values().filter(|r| r["attempt"] == 2).collect();
    assert!(
        !moved.is_empty(),
        "node-a's engine died with nothing running"
    );
    for r in moved {
        assert_ne!(r["node"], "node-a", "{r}");
    }

    // node-a now reports its engine down: new work goes elsewhere, on the
    // first attempt, and node-a's readiness probe says so.
    assert_eq!(
        stack.readyz("node-a").await,
        503,
        "node-a's /readyz with its engine dead"
    );
    let mut after = Vec::new();
    for i in 0..4 {
        let prompt = format!("after the kill {i}");
        after.push(
            stack
                .submit_http(&json!({"model": "tiny-llama-text", "input": {"prompt": prompt}}))
                .await,
        );
    }
    let done = stack.wait_finished(&after, Duration::from_secs(60)).await;
    for r in done.values() {
        assert_ne!(r["node"], "node-a", "{r}");
        assert_eq!(r["attempt"], 1, "{r}");
    }
}

/// The latency Switchyard adds to a 16-token completion: the same request
/// sent straight to vLLM and through the stack (HTTP submit to the result on
/// NATS), alternately, 100 times each.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "benchmark: run with --ignored --nocapture"]
async fn latency_added_to_a_16_token_completion() {
    let mut stack = Stack::new(StackOptions {
        extra_models: LLAMA_MODELS,
        prefetch_per_slot: 0,
        ..StackOptions::default()
    });
    let engines = Server::start("engines/vllm.sh", &[], 1, stack.dir.path());
    let vllm = &engines[0];
    stack.start_broker();
    stack.start_dispatcher();
    stack.start_agent_on("node-a", &vllm_engine(vllm));
    let client = stack.nats.client().await;
    let mut results = client.subscribe("sy.results.*").await.unwrap();
    client.flush().await.unwrap();
    let prompt = "hello world, the model";
    let body =
        json!({"model": "tiny-llama-text", "prompt": prompt, "max_tokens": 16, "temperature": 0});
    let job = json!({"model": "tiny-llama-text", "input": {"prompt": prompt, "max_tokens": 16, "temperature": 0}});
    // Warm both paths.
    for _ in 0..5 {
        direct(&stack.http, vllm, "/v1/completions", body.clone()).await;
        stack.submit_http(&job).await;
        results.next().await.unwrap();
    }
    let (mut straight, mut brokered) = (Vec::new(), Vec::new());
    for _ in 0..100 {
        let t = Instant::now();
        direct(&stack.http, vllm, "/v1/completions", body.clone()).await;
        straight.push(t.elapsed().as_secs_f64() * 1000.0);
        let t = Instant::now();
        let id = stack.submit_http(&job).await;
        loop {
            let msg = results.next().await.unwrap();
            if msg.subject.as_str().ends_with(id.as_str()) {
                break;
            }
        }
        brokered.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (d, b) = (median(&mut straight), median(&mut brokered));
    println!(
        "16-token completion, 100 sequential each: direct to vLLM median {d:.1} ms, \
         through Switchyard median {b:.1} ms: {:.1} ms added",
        b - d
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn vllm_embeds_texts_through_the_whole_stack() {
    let mut stack = Stack::new(StackOptions {
        extra_models: "
  - name: tiny-embed
    kind: embedding",
        ..StackOptions::default()
    });
    let vllm = Server::start("engines/vllm.sh", &["embed"], 1, stack.dir.path()).remove(0);
    stack.start_broker();
    stack.start_dispatcher();
    let engine = format!(
        "
    kind: vllm
    url: {}
    models: [tiny-embed]
    slots: 2",
        vllm.url()
    );
    stack.start_agent_on("node-e", &engine);

    let texts = json!(["the quick brown fox", "jumps over the lazy dog", "x"]);
    let id = stack
        .submit_http(&json!({"model": "tiny-embed", "input": {"input": texts}}))
        .await;
    let one = stack
        .submit_http(&json!({"model": "tiny-embed", "input": {"input": "the quick brown fox"}}))
        .await;
    let done = stack
        .wait_finished(&[id.clone(), one.clone()], Duration::from_secs(60))
        .await;
    let want = direct(
        &stack.http,
        &vllm,
        "/v1/embeddings",
        json!({"model": "tiny-embed", "input": texts}),
    )
    .await;
    let r = &done[&id];
    assert_eq!(r["status"], "succeeded", "{r}");
    let data = r["result"]["data"].as_array().unwrap();
    assert_eq!(data.len(), 3, "one embedding per text, in order: {r}");
    for (i, (got, want)) in data
        .iter()
        .zip(want["data"].as_array().unwrap())
        .enumerate()
    {
        assert_eq!(got["index"], i, "{r}");
        let (got, want) = (
            got["embedding"].as_array().unwrap(),
            want["embedding"].as_array().unwrap(),
        );
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert!(
                (g.as_f64().unwrap() - w.as_f64().unwrap()).abs() < 1e-5,
                "text {i}"
            );
        }
    }
    assert_eq!(
        r["usage"]["prompt_tokens"], want["usage"]["prompt_tokens"],
        "{r}"
    );
    assert_eq!(r["usage"]["completion_tokens"], 0, "{r}");
    // One text is a list of one: the same vector as the first of three.
    let r = &done[&one];
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(r["result"]["data"].as_array().unwrap().len(), 1, "{r}");
    let first = |v: &Value| v["embedding"].as_array().unwrap()[0].as_f64().unwrap();
    assert!(
        (first(&r["result"]["data"][0]) - first(&data[0])).abs() < 1e-5,
        "{r}"
    );

    // Embeddings do not stream: refused at the door.
    let refused = stack
        .http
        .post(stack.broker_url("/v1/jobs"))
        .json(&json!({"model": "tiny-embed", "stream": true, "input": {"input": "x"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 422);
}

const TENSOR_MODELS: &str = "
  - name: tiny-linear
    kind: tensor
  - name: tiny-linear-b
    kind: tensor";

/// A real Triton, and a stack whose agent `node-t` drives it with the
/// `engine:` block that `engine` writes for it.
fn triton_stack(engine: impl Fn(&Server) -> String) -> (Stack, Server) {
    let mut stack = Stack::new(StackOptions {
        extra_models: TENSOR_MODELS,
        ..StackOptions::default()
    });
    let triton = Server::start("engines/triton.sh", &[], 1, stack.dir.path()).remove(0);
    stack.start_broker();
    stack.start_dispatcher();
    stack.start_agent_on("node-t", &engine(&triton));
    (stack, triton)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn triton_serves_tensor_jobs_through_the_whole_stack() {
    let (stack, triton) = triton_stack(|triton| {
        format!(
            "
    kind: triton
    url: {}
    metrics_url: http://127.0.0.1:{}/metrics
    models: [tiny-linear]
    slots: 4",
            triton.url(),
            triton.port + 2
        )
    });
    let triton = &triton;
    let client = stack.nats.client().await;
    let mut beats = client.subscribe("sy.heartbeat.node-t").await.unwrap();

    // The outputs are Triton's own answer to the same tensors.
    let inputs = json!([{"name": "INPUT0", "shape": [2, 4], "datatype": "FP32",
                         "data": [0.1, 0.2, 0.3, 0.4, 1.5, -0.3, -1.0, 2.0]}]);
    let id = stack
        .submit_http(&json!({"model": "tiny-linear", "input": {"inputs": inputs}}))
        .await;
    let r = &stack
        .wait_finished(std::slice::from_ref(&id), Duration::from_secs(30))
        .await[&id];
    let want = direct(
        &stack.http,
        triton,
        "/v2/models/tiny-linear/infer",
        json!({"inputs": inputs}),
    )
    .await;
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(r["result"]["outputs"], want["outputs"], "{r}");
    assert_eq!(r["result"]["outputs"][0]["shape"], json!([2, 3]));

    // Data that does not fill its shape is refused at the door; a shape the
    // model does not take fails at once with Triton's reason.
    let refused = stack
        .http
        .post(stack.broker_url("/v1/jobs"))
        .json(&json!({"model": "tiny-linear", "input": {"inputs": [{"name": "INPUT0", "shape": [2, 4], "datatype": "FP32", "data": [1.0]}]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 422);
    let wrong = stack
        .submit_http(&json!({"model": "tiny-linear", "input": {"inputs": [{"name": "INPUT0", "shape": [1, 3], "datatype": "FP32", "data": [1.0, 2.0, 3.0]}]}}))
        .await;
    let r = &stack
        .wait_finished(std::slice::from_ref(&wrong), Duration::from_secs(30))
        .await[&wrong];
    assert_eq!(r["status"], "failed", "{r}");
    assert_eq!(r["error"]["code"], "invalid_input", "{r}");
    assert_eq!(r["attempt"], 1, "{r}");
    let reason = r["error"]["message"].as_str().unwrap();
    assert!(reason.contains("unexpected shape"), "{reason}");

    // The heartbeat carries Triton's queue, read from its metrics.
    let hb = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let msg = beats.next().await.unwrap();
            let hb: Heartbeat = decode(&msg.payload).unwrap();
            if hb.engine.queue_depth.is_some() {
                return hb;
            }
        }
    })
    .await
    .expect("a heartbeat with Triton's queue");
    assert!(hb.ready, "{hb:?}");
}

/// The first heartbeat on `beats` that `want` accepts, within 30 s.
pub(crate) async fn heartbeat_where(
    beats: &mut async_nats::Subscriber,
    want: impl Fn(&Heartbeat) -> bool,
) -> Heartbeat {
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let hb: Heartbeat = decode(&beats.next().await.unwrap().payload).unwrap();
            if want(&hb) {
                return hb;
            }
        }
    })
    .await
    .expect("a heartbeat that shows it")
}

async fn triton_has_loaded(http: &reqwest::Client, triton: &Server, model: &str) -> bool {
    let url = format!("{}/v2/models/{model}/ready", triton.url());
    http.get(url)
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn triton_loads_a_cold_model_for_its_jobs_and_unloads_it_when_idle() {
    let (stack, triton) = triton_stack(|triton| {
        format!(
            "
    kind: triton
    url: {}
    models: [tiny-linear]
    on_demand: true
    unload_after: 2s
    slots: 2",
            triton.url()
        )
    });
    let triton = &triton;
    let client = stack.nats.client().await;
    let mut beats = client.subscribe("sy.heartbeat.node-t").await.unwrap();
    let hb = heartbeat_where(&mut beats, |hb| !hb.loadable.is_empty()).await;
    assert_eq!(hb.models, ["tiny-linear"]);
    assert_eq!(hb.loadable, ["tiny-linear-b"]);
    assert!(!triton_has_loaded(&stack.http, triton, "tiny-linear-b").await);

    let inputs = json!([{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32",
                         "data": [0.5, -1.0, 2.0, 0.25]}]);
    // The cold model is the warm one plus 10.
    let warm = direct(
        &stack.http,
        triton,
        "/v2/models/tiny-linear/infer",
        json!({"inputs": inputs}),
    )
    .await;
    let want: Vec<f64> = warm["outputs"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|y| y.as_f64().unwrap() + 10.0)
        .collect();
    // Twice: loaded for the first job, unloaded once idle, loaded again.
    for round in 1..=2 {
        let id = stack
            .submit_http(&json!({"model": "tiny-linear-b", "input": {"inputs": inputs}}))
            .await;
        let r = &stack
            .wait_finished(std::slice::from_ref(&id), Duration::from_secs(60))
            .await[&id];
        assert_eq!(r["status"], "succeeded", "round {round}: {r}");
        assert_eq!(r["attempt"], 1, "round {round}: {r}");
        let got = r["result"]["outputs"][0]["data"].as_array().unwrap();
        assert_eq!(got.len(), want.len(), "{r}");
        for (g, w) in got.iter().zip(&want) {
            assert!((g.as_f64().unwrap() - w).abs() < 1e-4, "round {round}: {r}");
        }
        let done = now_ms();
        heartbeat_where(&mut beats, |hb| {
            hb.at_ms > done && hb.loadable == ["tiny-linear-b"] && hb.models == ["tiny-linear"]
        })
        .await;
        assert!(
            !triton_has_loaded(&stack.http, triton, "tiny-linear-b").await,
            "round {round}: unloaded once idle"
        );
    }
    assert!(triton_has_loaded(&stack.http, triton, "tiny-linear").await);
}

/// Pids of the processes whose command line has `marker`.
pub(crate) fn pids_with(marker: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(marker) && pid != std::process::id() as i32 {
            pids.push(pid);
        }
    }
    pids
}

/// Kills what is left of the processes with `marker` when the test ends,
/// however it ends.
pub(crate) struct KillOnDrop(pub(crate) String);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for pid in pids_with(&self.0) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_agent_runs_triton_itself_and_restarts_it_when_it_dies() {
    let script = repo_root().join("scripts/engines/triton.sh");
    assert!(
        Command::new(&script)
            .arg("install")
            .status()
            .unwrap()
            .success()
    );
    let mut stack = Stack::new(StackOptions {
        extra_models: TENSOR_MODELS,
        ..StackOptions::default()
    });
    stack.start_broker();
    stack.start_dispatcher();
    let port = free_port();
    let marker = format!("--http-port={port}");
    let _cleanup = KillOnDrop(marker.clone());
    let engine = format!(
        r#"
    kind: triton
    url: http://127.0.0.1:{port}
    models: [tiny-linear]
    slots: 2
  process:
    command: ["{}", run, "{port}"]
    restart_backoff: 500ms
    stop_timeout: 10s"#,
        script.display()
    );
    stack.start_agent_on("node-s", &engine);
    let client = stack.nats.client().await;
    let mut beats = client.subscribe("sy.heartbeat.node-s").await.unwrap();
    let job = json!({"model": "tiny-linear", "input": {"inputs": [
        {"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "data": [1.0, 2.0, 3.0, 4.0]}]}});

    // Ready once a real inference works, not merely once Triton answers.
    heartbeat_where(&mut beats, |hb| hb.ready).await;
    let first = stack.submit_http(&job).await;
    let r = &stack
        .wait_finished(std::slice::from_ref(&first), Duration::from_secs(30))
        .await[&first];
    assert_eq!(r["status"], "succeeded", "{r}");

    let pids = pids_with(&marker);
    assert_eq!(pids.len(), 1, "one Triton: {pids:?}");
    kill(Pid::from_raw(pids[0]), Signal::SIGKILL).unwrap();
    heartbeat_where(&mut beats, |hb| !hb.ready).await;
    // Queued while Triton is down: it runs once the restarted one serves.
    let second = stack.submit_http(&job).await;
    heartbeat_where(&mut beats, |hb| hb.ready).await;
    let r = &stack
        .wait_finished(std::slice::from_ref(&second), Duration::from_secs(30))
        .await[&second];
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(r["attempt"], 1, "never sent to a dead engine: {r}");
    let restarted = pids_with(&marker);
    assert_eq!(restarted.len(), 1, "{restarted:?}");
    assert_ne!(restarted, pids);
    assert_eq!(
        stack
            .metric("node-s", "switchyard_agent_engine_exits_total")
            .await,
        1.0
    );

    // SIGTERM: the agent drains, then stops its engine.
    stack.proc("node-s").terminate(Duration::from_secs(20));
    assert!(
        pids_with(&marker).is_empty(),
        "Triton stopped with the agent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tritonclient_gets_the_same_answers_from_switchyard_as_from_triton() {
    let (stack, triton) = triton_stack(|triton| {
        format!(
            "
    kind: triton
    url: {}
    models: [tiny-linear]
    slots: 2",
            triton.url()
        )
    });
    let seen = sdk_script(
        "tritonclient_sdk.py",
        &[
            format!("127.0.0.1:{}", triton.port),
            format!("127.0.0.1:{}", stack.broker_port),
        ],
    );
    // Binary and JSON inputs, the request id, health, readiness, and the
    // shape error, as Triton answers them.
    assert_eq!(seen["switchyard"], seen["triton"], "{seen}");
    assert_eq!(seen["triton"]["binary_True"]["id"], "req-7", "{seen}");
    assert_eq!(
        seen["triton"]["wrong_shape"],
        json!({"status": "400", "unexpected_shape": true}),
        "{seen}"
    );
}
