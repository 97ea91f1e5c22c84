//! SIGTERM stops intake, lets running work finish, and exits cleanly.

// Tests fail by panicking; the no-panic lints are for the product code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::*;
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
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut running = 0;
        for id in &ids {
            if stack.get_job(id).await.1["status"] == "running" {
                running += 1;
            }
        }
        if running == ids.len() {
            break;
        }
        assert!(Instant::now() < deadline, "jobs never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

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
    let deadline = Instant::now() + Duration::from_secs(10);
    while ports.iter().any(|p| is_ready(*p)) {
        assert!(Instant::now() < deadline, "still ready without NATS");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Alive all the same: a restart would not help.
    let health = stack
        .http
        .get(stack.broker_url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);

    stack.nats.resume();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ports.iter().all(|p| is_ready(*p)) {
        assert!(
            Instant::now() < deadline,
            "not ready again after NATS came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let id = stack
        .submit_http(&json!({"model": TEXT_MODEL, "input": {"prompt": "after the outage"}}))
        .await;
    let done = stack
        .wait_finished(std::slice::from_ref(&id), Duration::from_secs(30))
        .await;
    assert_eq!(done[&id]["status"], "succeeded");
}
