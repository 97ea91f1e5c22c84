//! Many tenants backlogged at once: the dispatcher keeps only so many of
//! their lanes (consumers on `JOBS`) open, and loses none of their jobs.

use std::time::Duration;

use crate::common::*;
use serde_json::json;

const TENANTS: usize = 60;
const JOBS_EACH: usize = 3;
const MAX_LANES: u64 = 4;

/// The server checks every consumer of `JOBS` on each acknowledgement: with
/// thousands of tenants backlogged, a lane each would make every job
/// dearer. Lanes past `dispatcher.max_lanes` close, those served longest
/// ago first, with their jobs still queued; the next turn opens them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lanes_past_the_bound_close_and_their_tenants_jobs_all_run() {
    let mut stack = Stack::new(StackOptions {
        slots: 4,
        base_latency: "20ms",
        ..StackOptions::default()
    });
    stack.start_broker();
    stack.start_dispatcher_with(&[("SWITCHYARD_DISPATCHER__MAX_LANES", MAX_LANES.to_string())]);
    let mut ids = Vec::new();
    for i in 0..JOBS_EACH {
        for t in 0..TENANTS {
            let body = json!({
                "model": TEXT_MODEL,
                "tenant": format!("tenant-{t:02}"),
                "input": {"prompt": format!("job {i}")},
            });
            ids.push(stack.submit_http(&body).await);
        }
    }

    let js = async_nats::jetstream::new(stack.nats.client().await);
    let mut jobs = js.get_stream("JOBS").await.unwrap();
    stack.start_agent("node-a");
    let mut most_open = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let info = jobs.info().await.unwrap();
        most_open = most_open.max(info.state.consumer_count);
        if info.state.messages == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} jobs still queued",
            info.state.messages
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let records = stack.wait_finished(&ids, Duration::from_secs(30)).await;
    let succeeded = records.values().filter(|r| r["status"] == "succeeded");
    assert_eq!(succeeded.count(), TENANTS * JOBS_EACH, "{records:?}");
    // A sweep may open a lane per placement it has room for (4 slots, and
    // as many held) before the lanes past the bound close: two sweeps'
    // worth is allowed for.
    assert!(
        most_open as u64 <= MAX_LANES + 16,
        "{most_open} lanes open at once with {TENANTS} tenants backlogged"
    );
}
