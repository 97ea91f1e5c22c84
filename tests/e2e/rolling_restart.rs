//! A rolling restart of every component under load loses nothing: while
//! clients submit at a steady rate (retrying with their idempotency key
//! when the broker is away), the broker, both dispatchers and both agents
//! are each stopped with SIGTERM and started again, one after another.
//! Every job a client was told was accepted ends `succeeded`, and a retried
//! submission is one job.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::common::*;
use serde_json::{Value, json};

/// Submits one job until it is accepted, with the same idempotency key
/// every time; its id.
async fn submit_until_accepted(http: &reqwest::Client, url: &str, key: &str) -> String {
    let body = json!({"model": TEXT_MODEL, "input": {"prompt": key}});
    eventually(
        Duration::from_secs(60),
        Duration::from_millis(100),
        || async {
            let sent = http
                .post(url)
                .header("Idempotency-Key", key)
                .json(&body)
                .send()
                .await;
            match sent {
                Ok(r) if r.status().as_u16() == 202 => {
                    let made: Value = r.json().await.unwrap();
                    Ok(made["id"].as_str().unwrap().to_owned())
                }
                other => Err(format!("{key} not accepted: {other:?}")),
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_restart_of_every_component_under_load_loses_no_job() {
    let mut stack = Stack::new(StackOptions {
        base_latency: "50ms",
        ..StackOptions::default()
    });
    stack.start_broker();
    stack.start_dispatcher();
    let second_env = [any_port("SWITCHYARD_DISPATCHER__LISTEN")];
    stack.launch("dispatcher-2", "dispatcher", 0, &second_env);
    stack.start_agent("node-a");
    stack.start_agent("node-b");

    // 20 clients, each submitting a job every 250 ms: 80 jobs a second.
    let stop = Arc::new(AtomicBool::new(false));
    let url = stack.broker_url("/v1/jobs");
    let clients: Vec<_> = (0..20)
        .map(|c| {
            let (http, url, stop) = (stack.http.clone(), url.clone(), stop.clone());
            tokio::spawn(async move {
                let mut ids = Vec::new();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    ids.push(submit_until_accepted(&http, &url, &format!("c{c}-{n}")).await);
                    n += 1;
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                ids
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_secs(2)).await;
    for name in ["broker", "dispatcher", "dispatcher-2", "node-a", "node-b"] {
        let status = stack.proc(name).terminate(Duration::from_secs(30));
        assert!(status.success(), "{name} exited with {status}");
        match name {
            "broker" => stack.start_broker(),
            "dispatcher" => stack.start_dispatcher(),
            "dispatcher-2" => {
                stack.launch(name, "dispatcher", 0, &second_env);
            }
            node => stack.start_agent(node),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let mut ids = Vec::new();
    for c in clients {
        ids.extend(c.await.unwrap());
    }

    let distinct: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(
        distinct.len(),
        ids.len(),
        "a retried submission made two jobs"
    );
    assert!(ids.len() >= 200, "only {} jobs submitted", ids.len());
    let done = stack.wait_finished(&ids, Duration::from_secs(90)).await;
    let failed: Vec<&Value> = done
        .values()
        .filter(|j| j["status"] != "succeeded")
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} not succeeded: {:?}",
        failed.len(),
        ids.len(),
        failed.first()
    );
}
