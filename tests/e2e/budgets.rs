//! Tenant budgets hold under concurrency: fifty submissions at once against
//! a budget that fits ten admit exactly ten, the rest get `402`, and a job
//! that ends without running gives its reservation back.

use std::time::Duration;

use crate::common::*;
use futures::StreamExt;
use serde_json::{Value, json};

/// $0.10 per 1k completion tokens: a job of 10 tokens is estimated at
/// $0.001, so a $0.01 budget fits ten.
const PRICED: &str = "
  - name: tiny-priced
    kind: completion
    price: {completion_per_1k: 0.1}";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_submissions_against_a_budget_for_ten_admit_ten() {
    let mut stack = Stack::new(StackOptions {
        extra_models: PRICED,
        tenants: "[{name: capped, budget: {usd: 0.01, period: day}}]",
        ..StackOptions::default()
    });
    stack.start_broker();
    stack.start_dispatcher();
    let body = |i: usize| {
        json!({"model": "tiny-priced", "tenant": "capped",
               "input": {"prompt": format!("p{i}"), "max_tokens": 10}})
    };
    // No node yet: every admitted job holds its reservation.
    let answers: Vec<(u16, Value)> = futures::stream::iter(0..50)
        .map(|i| post(&stack, body(i)))
        .buffer_unordered(50)
        .collect()
        .await;
    let admitted: Vec<&Value> = answers
        .iter()
        .filter(|(s, _)| *s == 202)
        .map(|(_, b)| b)
        .collect();
    assert_eq!(admitted.len(), 10, "{answers:?}");
    let refused: Vec<&Value> = answers
        .iter()
        .filter(|(s, _)| *s == 402)
        .map(|(_, b)| b)
        .collect();
    assert_eq!(refused.len(), 40);
    assert_eq!(refused[0]["error"]["code"], "budget_exceeded");

    // A cancelled job never ran: its reservation comes back, and one more
    // job fits.
    let victim = admitted[0]["id"].as_str().unwrap();
    assert_eq!(stack.cancel_job(victim).await, 200);
    eventually(
        Duration::from_secs(10),
        Duration::from_millis(100),
        || async {
            let (status, _) = post(&stack, body(100)).await;
            assert!(matches!(status, 202 | 402), "{status}");
            so(status == 202, || {
                "the reservation was not given back".into()
            })
        },
    )
    .await;
    assert_eq!(post(&stack, body(101)).await.0, 402, "full again");

    // The jobs run and settle at their real cost (the simulated engine
    // gives all 10 tokens): the budget stays spent.
    stack.start_simulated_agent("node-a", "tiny-priced");
    let ids: Vec<String> = admitted[1..]
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_owned())
        .collect();
    stack.wait_finished(&ids, Duration::from_secs(30)).await;
    assert_eq!(post(&stack, body(102)).await.0, 402);
    // Other tenants are not limited by it.
    let mut free = body(103);
    free["tenant"] = json!("default");
    assert_eq!(post(&stack, free).await.0, 202);
}

async fn post(stack: &Stack, body: Value) -> (u16, Value) {
    let r = stack
        .http
        .post(stack.broker_url("/v1/jobs"))
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json::<Value>().await.unwrap())
}
