//! The desired-nodes signal follows a load ramp through a running stack:
//! none before the load, more nodes than the one simulated node at the
//! peak (its backlog grows), none again once the load is gone and served.

use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::json;

async fn desired(stack: &Stack) -> f64 {
    let metric = format!("switchyard_dispatcher_desired_replicas{{model=\"{TEXT_MODEL}\"}}");
    stack.metric("dispatcher", &metric).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_desired_nodes_follow_a_load_ramp_up_and_down() {
    // One node of 4 slots at 400 ms a job serves 10 jobs a second.
    let mut stack = Stack::new(StackOptions {
        slots: 4,
        base_latency: "400ms",
        ..StackOptions::default()
    });
    stack.rewrite_config(
        "dispatcher:\n",
        "dispatcher:\n  autoscale: {rate_window: 2s, drain_target: 5s, target_utilization: 1.0}\n",
    );
    stack.start_broker();
    stack.start_dispatcher();
    stack.start_agent("node-a");
    // The first tick comes a second after start.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(desired(&stack).await, 0.0, "no load, no nodes");

    // 2 → 20 jobs a second over 6 s, 20 for 4 s, back to 2 over 6 s.
    let rate_at = |s: u64| match s {
        0..6 => 2 + s * 3,
        6..10 => 20,
        _ => 20 - (s - 10) * 3,
    };
    let mut ids = Vec::new();
    let mut signal = Vec::new();
    let start = Instant::now();
    for s in 0..16u64 {
        let rate = rate_at(s);
        for i in 0..rate {
            let body = json!({"model": TEXT_MODEL, "input": {"prompt": format!("{s}.{i}")}});
            ids.push(stack.submit_http(&body).await);
            let next =
                start + Duration::from_secs(s) + Duration::from_millis(1000 * (i + 1) / rate);
            tokio::time::sleep_until(next.into()).await;
        }
        signal.push(desired(&stack).await);
    }
    stack.wait_finished(&ids, Duration::from_secs(60)).await;
    let seen = std::sync::Mutex::new(signal);
    eventually(Duration::from_secs(20), Duration::from_secs(1), || async {
        let now = desired(&stack).await;
        let mut signal = seen.lock().unwrap();
        signal.push(now);
        so(now == 0.0, || format!("the signal stays up: {signal:?}"))
    })
    .await;
    let signal = seen.into_inner().unwrap();
    let peak = signal.iter().copied().fold(0.0, f64::max);
    assert!(
        peak >= 2.0,
        "20 jobs a second need more than one node: {signal:?}"
    );
    assert!(signal[0] <= 1.0, "a light load needs one node: {signal:?}");
    let at_peak = signal.iter().position(|n| *n == peak).unwrap();
    assert!(
        (5..16).contains(&at_peak),
        "the peak comes with the load's: {signal:?}"
    );
}

/// What KEDA reads: the desired nodes for `model`, as the chart's
/// ScaledObject queries them (`max` over the dispatchers).
async fn desired_for(stack: &Stack, model: &str) -> f64 {
    let text = stack.metrics_text("dispatcher").await;
    let series = format!("switchyard_dispatcher_desired_replicas{{model=\"{model}\"}}");
    text.lines()
        .filter_map(|l| l.strip_prefix(&series)?.trim().parse::<f64>().ok())
        .fold(0.0, f64::max)
}

/// Polls `desired_for` until `want` holds; when it did.
async fn signal_until(stack: &Stack, want: impl Fn(f64) -> bool, within: Duration) -> Instant {
    eventually(within, Duration::from_millis(20), || async {
        let now = desired_for(stack, TEXT_MODEL).await;
        so(want(now), || format!("desired nodes {now}"))
    })
    .await;
    Instant::now()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pool_scaled_to_zero_comes_up_for_queued_jobs_and_goes_back_to_zero() {
    let mut stack = Stack::new(StackOptions {
        slots: 4,
        base_latency: "50ms",
        ..StackOptions::default()
    });
    stack.rewrite_config(
        "dispatcher:\n",
        "dispatcher:\n  autoscale: {every: 250ms, rate_window: 2s}\n",
    );
    stack.start_broker();
    stack.start_dispatcher();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        desired_for(&stack, TEXT_MODEL).await,
        0.0,
        "no work, no nodes"
    );

    // No node serves the model: the jobs wait in the queue.
    let submitted = Instant::now();
    let mut ids = Vec::new();
    for i in 0..8 {
        let body = json!({"model": TEXT_MODEL, "input": {"prompt": format!("cold {i}")}});
        ids.push(stack.submit_http(&body).await);
    }
    // The scaler, standing in for KEDA: the signal rises, it starts a node.
    let signalled = signal_until(&stack, |n| n >= 1.0, Duration::from_secs(10)).await - submitted;
    for id in &ids {
        let (_, job) = stack.get_job(id).await;
        assert_eq!(job["status"], "queued", "waits for a node: {job}");
    }
    stack.start_agent("node-a");
    let node_ready = submitted.elapsed();
    let first = eventually(
        Duration::from_secs(30),
        Duration::from_millis(10),
        || async {
            for id in &ids {
                let (_, job) = stack.get_job(id).await;
                if job["status"] == "succeeded" {
                    return Ok(submitted.elapsed());
                }
            }
            Err("no result yet".to_owned())
        },
    )
    .await;
    let results = stack.wait_finished(&ids, Duration::from_secs(30)).await;
    let served = Instant::now();
    for r in results.values() {
        assert_eq!(r["status"], "succeeded", "{r}");
        assert_eq!(r["attempt"], 1, "queued, never failed: {r}");
    }

    // Idle: the signal falls to 0, and the scaler stops the node.
    let idle = signal_until(&stack, |n| n == 0.0, Duration::from_secs(30)).await - served;
    let exit = stack.proc("node-a").terminate(Duration::from_secs(20));
    assert!(exit.success(), "the node drains and stops: {exit:?}");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(desired_for(&stack, TEXT_MODEL).await, 0.0, "stays at zero");
    eprintln!(
        "scale from zero: signal {} ms, node ready {} ms, first result {} ms after the first \
         job; back to zero {} ms after the last result",
        signalled.as_millis(),
        node_ready.as_millis(),
        first.as_millis(),
        idle.as_millis()
    );
}
