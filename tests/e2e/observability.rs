//! The dashboard, the alert rules and the chart's autoscaling queries name
//! only real metrics: each name is in a running stack's `/metrics`, or,
//! for the few that appear only once their event happens (a GPU, a lost
//! node, a webhook), among the names the component declares.

use std::collections::BTreeSet;

use crate::common::*;
use serde_json::json;

/// Metrics a quiet stack on a machine without NVIDIA GPUs does not show.
const AFTER_THEIR_EVENT: &[&str] = &[
    "switchyard_agent_gpu_utilization_ratio",
    "switchyard_agent_gpu_memory_used_bytes",
    "switchyard_agent_gpu_memory_total_bytes",
    "switchyard_agent_gpu_temperature_celsius",
    "switchyard_agent_engine_exits_total",
    "switchyard_agent_engine_kv_cache_usage_ratio",
    "switchyard_broker_webhook_attempts_total",
    "switchyard_broker_auth_refused_total",
    "switchyard_broker_rejections_total",
    "switchyard_broker_forged_messages_total",
    "switchyard_dispatcher_reclaimed_total",
    "switchyard_dispatcher_held_total",
    "switchyard_dispatcher_rejected_total",
    "switchyard_broker_rollout_events_total",
];

/// Every `switchyard_…` name in `text`, histogram suffixes taken off.
fn names_in(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("switchyard_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        names.insert(base.to_owned());
        rest = &tail[end..];
    }
    names
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo_root().join(path)).expect(path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dashboards_alerts_and_autoscaling_name_only_real_metrics() {
    let referenced: BTreeSet<String> = [
        "deploy/grafana/switchyard.json",
        "deploy/prometheus/alerts.yaml",
        "deploy/helm/switchyard/templates/pools.yaml",
    ]
    .iter()
    .flat_map(|p| names_in(&read(p)))
    .collect();
    assert!(referenced.len() >= 25, "{referenced:?}");

    let stack = Stack::running(StackOptions::default(), &["node-a"]);
    let mut ids = Vec::new();
    for n in 0..5 {
        let body = json!({"model": TEXT_MODEL, "input": {"prompt": format!("hello {n}")}});
        ids.push(stack.submit_http(&body).await);
    }
    stack
        .wait_finished(&ids, std::time::Duration::from_secs(30))
        .await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut served = BTreeSet::new();
    // The usage projection and the autoscale signal come a moment later.
    while !referenced
        .iter()
        .all(|n| served.contains(n) || AFTER_THEIR_EVENT.contains(&n.as_str()))
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        served.clear();
        for component in ["broker", "dispatcher", "node-a"] {
            served.extend(names_in(&stack.metrics_text(component).await));
        }
    }
    let declared: BTreeSet<String> = [
        "broker/core/src/metrics.rs",
        "dispatcher/src/metrics.rs",
        "gpu-agent/src/metrics.rs",
    ]
    .iter()
    .flat_map(|p| names_in(&read(p)))
    .collect();
    let missing: Vec<&String> = referenced
        .iter()
        .filter(|n| {
            let after_event = AFTER_THEIR_EVENT.contains(&n.as_str()) && declared.contains(*n);
            !(served.contains(*n) || after_event)
        })
        .collect();
    assert!(missing.is_empty(), "named but never served: {missing:?}");
    // The autoscaling signal is there for the model the stack serves.
    let desired = stack
        .metric(
            "dispatcher",
            &format!("switchyard_dispatcher_desired_replicas{{model=\"{TEXT_MODEL}\"}}"),
        )
        .await;
    assert!(desired <= 1.0, "five jobs need at most one node: {desired}");
}
