//! Cold models on nodes that start their own vLLM servers
//! (`kind: vllm_on_demand`): jobs for a model no node serves wait in the
//! queue while the dispatcher asks a node to start it; a start that fails
//! sends the ask to another node; an idle server is stopped.

use std::process::Command;
use std::time::Duration;

use crate::common::*;
use crate::engines::{KillOnDrop, LLAMA_MODELS, heartbeat_where, pids_with};
use serde_json::json;
use switchyard_schemas::now_ms;

/// A node that can start `tiny-llama` with `command`.
fn on_demand(slots: u32, port: u16, command: &str) -> String {
    format!(
        "
    kind: vllm_on_demand
    slots: {slots}
    unload_after: 3s
    start_timeout: 300s
    stop_timeout: 20s
    request_timeout: 60s
    models:
      tiny-llama:
        url: http://127.0.0.1:{port}
        command: {command}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cold_vllm_is_started_where_it_can_start_and_stopped_when_idle() {
    let script = repo_root().join("scripts/engines/vllm.sh");
    let installed = Command::new(&script).arg("install").status().unwrap();
    assert!(installed.success());
    let mut stack = Stack::new(StackOptions {
        extra_models: LLAMA_MODELS,
        agent_ack_wait: "10s",
        ..StackOptions::default()
    });
    stack.start_broker();
    stack.start_dispatcher();
    // node-a has more room, so it is asked first; its server cannot start.
    let broken = on_demand(4, free_port(), r#"[sh, -c, "exit 3"]"#);
    stack.start_agent_on("node-a", &broken);
    let port = free_port();
    let marker = format!("--port\0{port}\0");
    let _cleanup = KillOnDrop(marker.clone());
    let real = on_demand(
        2,
        port,
        &format!(r#"["{}", run, "{port}"]"#, script.display()),
    );
    stack.start_agent_on("node-b", &real);
    let client = stack.nats.client().await;
    let mut beats = client.subscribe("sy.heartbeat.node-b").await.unwrap();
    let hb = heartbeat_where(&mut beats, |hb| hb.ready).await;
    assert!(hb.models.is_empty(), "nothing runs before it is asked");
    assert_eq!(hb.loadable, ["tiny-llama"]);
    assert!(pids_with(&marker).is_empty());

    let submitted = std::time::Instant::now();
    let mut ids = Vec::new();
    for i in 0..3 {
        let body = json!({"model": "tiny-llama", "input": {
            "messages": [{"role": "user", "content": format!("hello {i}")}], "max_tokens": 4}});
        ids.push(stack.submit_http(&body).await);
    }
    let results = stack.wait_finished(&ids, Duration::from_secs(400)).await;
    eprintln!(
        "cold vLLM: three jobs served {} ms after the first was submitted",
        submitted.elapsed().as_millis()
    );
    for id in &ids {
        let r = &results[id];
        assert_eq!(r["status"], "succeeded", "{r}");
        assert_eq!(r["attempt"], 1, "never failed for being cold: {r}");
        assert_eq!(r["node"], "node-b", "{r}");
        assert!(r["usage"]["completion_tokens"].as_u64().unwrap() > 0, "{r}");
    }
    assert!(
        stack
            .metric(
                "node-a",
                "switchyard_agent_model_loads_total{outcome=\"failed\""
            )
            .await
            >= 1.0,
        "node-a was asked first and failed"
    );
    assert_eq!(
        stack
            .metric(
                "dispatcher",
                "switchyard_dispatcher_model_loads_total{outcome=\"loaded\""
            )
            .await,
        1.0
    );
    assert_eq!(pids_with(&marker).len(), 1, "one server for the model");

    // Idle for `unload_after`: the server is stopped, the model cold again.
    let done = now_ms();
    heartbeat_where(&mut beats, |hb| {
        hb.at_ms > done && hb.models.is_empty() && hb.loadable == ["tiny-llama"]
    })
    .await;
    eventually(
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async {
            let left = pids_with(&marker);
            so(left.is_empty(), || {
                format!("the idle server still runs: {left:?}")
            })
        },
    )
    .await;
    assert_eq!(
        stack
            .metric("node-b", "switchyard_agent_model_unloads_total")
            .await,
        1.0
    );
}
