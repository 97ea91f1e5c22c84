//! SIGTERM stops intake, lets running work finish, and exits cleanly.

use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_drains_running_jobs_then_every_component_exits_cleanly() {
    let mut stack = Stack::running(
        StackOptions {
            slots: 2,
            base_latency: "1500ms",
            ..StackOptions::default()
        },
        &["node-a"],
    );

    let mut ids = Vec::new();
    for i in 0..2 {
        let body = json!({"model": TEXT_MODEL, "input": {"prompt": format!("drain {i}")}});
        ids.push(stack.submit_http(&body).await);
    }
    eventually(
        Duration::from_secs(20),
        Duration::from_millis(20),
        || async {
            let mut running = 0;
            for id in &ids {
                if stack.get_job(id).await.1["status"] == "running" {
                    running += 1;
                }
            }
            so(running == ids.len(), || {
                format!("{running} of {} jobs running", ids.len())
            })
        },
    )
    .await;

    // The agent finishes what it runs before it exits: no redelivery needed.
    let status = stack.proc("node-a").terminate(Duration::from_secs(15));
    assert!(status.success(), "agent exit: {status}");
    for id in &ids {
        let (_, r) = stack.get_job(id).await;
        let finished = stack
            .wait_finished(std::slice::from_ref(id), Duration::from_secs(5))
            .await;
        assert_eq!(finished[id]["status"], "succeeded", "{r}");
        assert_eq!(finished[id]["attempt"], 1, "finished by the draining agent");
    }
    assert!(stack.log_of("node-a").contains("gpu-agent stopped"));

    for name in ["dispatcher", "broker"] {
        let status = stack.proc(name).terminate(Duration::from_secs(15));
        assert!(status.success(), "{name} exit: {status}");
    }
}

/// SIGTERM on a broker under load: readiness goes to 503 at once, while the
/// calls it is answering still finish with their results, and the process
/// exits within its drain bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_on_the_broker_turns_readiness_off_while_calls_in_flight_finish() {
    let mut stack = Stack::running(
        StackOptions {
            slots: 8,
            base_latency: "2500ms",
            broker_extra: "  drain_timeout: 8s",
            ..StackOptions::default()
        },
        &["node-a"],
    );
    let port = stack.port_of("broker");
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..6 {
        let request = stack
            .http
            .post(stack.broker_url("/v1/chat/completions"))
            .json(&json!({"model": CHAT_MODEL, "max_tokens": 2,
                          "messages": [{"role": "user", "content": format!("in flight {i}")}]}));
        calls.spawn(async move { request.send().await });
    }
    // Every call's job is on the engine: the calls are in flight.
    eventually(
        Duration::from_secs(20),
        Duration::from_millis(20),
        || async {
            let running = stack
                .metric("node-a", "switchyard_agent_running_jobs")
                .await;
            so(running >= 6.0, || {
                format!("{running} of the calls' jobs running")
            })
        },
    )
    .await;
    assert!(is_ready(port));

    let stopping = Instant::now();
    sigterm_the_broker(&mut stack).await;
    // Not ready, yet still answering probes and the calls it holds.
    let probe = stack
        .http
        .get(format!("http://127.0.0.1:{port}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(probe.status(), 503);
    while let Some(call) = calls.join_next().await {
        let response = call.unwrap().expect("answered during the drain");
        assert_eq!(response.status(), 200);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["choices"][0]["finish_reason"], "length", "{body}");
    }
    let status = stack.proc("broker").wait_exit(Duration::from_secs(20));
    assert!(status.success(), "broker exit: {status}");
    // The drain bound (8 s) twice at most, with room for a loaded machine.
    assert!(
        stopping.elapsed() < Duration::from_secs(20),
        "{:?}",
        stopping.elapsed()
    );
    assert!(stack.log_of("broker").contains("broker stopped"));
}

/// Sends the broker SIGTERM and waits for its readiness to go.
async fn sigterm_the_broker(stack: &mut Stack) {
    let port = stack.port_of("broker");
    stack
        .proc("broker")
        .signal(nix::sys::signal::Signal::SIGTERM);
    eventually(
        Duration::from_secs(2),
        Duration::from_millis(10),
        || async { so(!is_ready(port), || "still ready after SIGTERM".into()) },
    )
    .await;
}

/// A second signal ends a draining broker at once, its calls unanswered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_sigterm_exits_at_once() {
    let mut stack = Stack::running(
        StackOptions {
            base_latency: "60s",
            broker_extra: "  drain_timeout: 60s",
            ..StackOptions::default()
        },
        &["node-a"],
    );
    let call = stack
        .http
        .post(stack.broker_url("/v1/completions"))
        .json(&json!({"model": TEXT_MODEL, "prompt": "never answered", "max_tokens": 1}))
        .send();
    let mut call = std::pin::pin!(call);
    let running = eventually(
        Duration::from_secs(20),
        Duration::from_millis(20),
        || async {
            let running = stack
                .metric("node-a", "switchyard_agent_running_jobs")
                .await;
            so(running >= 1.0, || "the call's job is not running".into())
        },
    );
    tokio::select! {
        _ = &mut call => panic!("answered before its job ran"),
        () = running => {}
    }
    sigterm_the_broker(&mut stack).await;
    let second = Instant::now();
    let status = stack.proc("broker").terminate(Duration::from_secs(5));
    assert!(
        !status.success(),
        "a forced exit is not a clean one: {status}"
    );
    assert!(second.elapsed() < Duration::from_secs(5));
    assert!(call.await.is_err(), "the call was cut off");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_component_serves_health_and_named_metrics() {
    let stack = Stack::running(StackOptions::default(), &["node-a"]);
    let id = stack
        .submit_http(&json!({"model": TEXT_MODEL, "input": {"prompt": "metrics"}}))
        .await;
    stack.wait_finished(&[id], Duration::from_secs(20)).await;

    for (name, wanted) in [
        ("broker", "switchyard_broker_submissions_total"),
        ("dispatcher", "switchyard_dispatcher_assignments_total"),
        ("node-a", "switchyard_agent_jobs_total"),
    ] {
        let port = stack.port_of(name);
        for path in ["/healthz", "/readyz"] {
            let r = stack
                .http
                .get(format!("http://127.0.0.1:{port}{path}"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{name}{path}");
        }
        let text = stack.metrics_text(name).await;
        assert!(
            text.contains(wanted),
            "{name} /metrics lacks {wanted}:\n{text}"
        );
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            assert!(
                line.starts_with("switchyard_"),
                "{name}: unprefixed metric {line}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readiness_follows_the_nats_connection() {
    let mut stack = Stack::running(StackOptions::default(), &["node-a"]);
    let ports: Vec<u16> = ["broker", "dispatcher", "node-a"]
        .iter()
        .map(|n| stack.port_of(n))
        .collect();

    stack.nats.stop();
    eventually(
        Duration::from_secs(10),
        Duration::from_millis(50),
        || async {
            so(!ports.iter().any(|p| is_ready(*p)), || {
                "still ready without NATS".into()
            })
        },
    )
    .await;
    // Alive all the same: a restart would not help.
    let health = stack
        .http
        .get(format!("http://127.0.0.1:{}/healthz", ports[0]))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);

    stack.nats.resume();
    eventually(
        Duration::from_secs(20),
        Duration::from_millis(50),
        || async {
            so(ports.iter().all(|p| is_ready(*p)), || {
                "not ready again after NATS came back".into()
            })
        },
    )
    .await;
    let id = stack
        .submit_http(&json!({"model": TEXT_MODEL, "input": {"prompt": "after the outage"}}))
        .await;
    let done = stack
        .wait_finished(std::slice::from_ref(&id), Duration::from_secs(30))
        .await;
    assert_eq!(done[&id]["status"], "succeeded");
}
