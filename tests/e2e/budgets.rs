//! Tenant budgets hold under concurrency: fifty submissions at once against
//! a budget that fits ten admit exactly ten, the rest get `402`, and a job
//! that ends without running gives its reservation back.

use std::time::Duration;

use crate::common::*;
use futures::StreamExt;
use serde_json::{Value, json};

/// $0.10 per 1k completion tokens: a job of 10 tokens is estimated at
/// $0.001, so a $0.01 budget fits ten.
pub(crate) const PRICED: &str = "
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

pub(crate) async fn post(stack: &Stack, body: Value) -> (u16, Value) {
    let r = stack
        .http
        .post(stack.broker_url("/v1/jobs"))
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json::<Value>().await.unwrap())
}

/// Priced by engine time ($1 a second) and by prompt tokens ($10 per 1k),
/// with jobs bounded at 2 s: each job reserves what it can cost at most,
/// engine time for all of its timeout and a token for every byte of its
/// prompt (a Korean or Chinese character is three bytes and can be three
/// tokens). 100 concurrent requests of Korean and Chinese text against a
/// $10 budget admit only what the budget can pay for whatever they turn
/// out to use, and what is spent stays within it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_cjk_requests_on_a_gpu_time_priced_model_stay_within_the_budget() {
    let mut stack = Stack::new(StackOptions {
        extra_models: "
  - name: tiny-gpu-priced
    kind: completion
    timeout: 2s
    price: {prompt_per_1k: 10.0, gpu_second: 1.0}",
        tenants: "[{name: capped, budget: {usd: 10.0, period: day}}]",
        ..StackOptions::default()
    });
    stack.start_broker();
    stack.start_dispatcher();
    stack.start_agent_on(
        "node-a",
        "
    kind: simulated
    models: [tiny-gpu-priced]
    slots: 32
    base_latency: 600ms
    per_token_latency: 0ms",
    );
    // Some 150 bytes of text: at most that many tokens, about $1.50 of
    // prompt; estimated at four bytes a token, a quarter of it.
    let prompt = "예산을 넘지 않게 지켜 주세요 预算不能超过上限 ".repeat(2);
    let answers: Vec<(u16, Value)> = futures::stream::iter(0..100)
        .map(|i| {
            post(
                &stack,
                json!({"model": "tiny-gpu-priced", "tenant": "capped",
                       "input": {"prompt": format!("{prompt}{i}"), "max_tokens": 4}}),
            )
        })
        .buffer_unordered(100)
        .collect()
        .await;
    let admitted: Vec<String> = answers
        .iter()
        .filter(|(s, _)| *s == 202)
        .map(|(_, b)| b["id"].as_str().unwrap().to_owned())
        .collect();
    let refused = answers.iter().filter(|(s, _)| *s == 402).count();
    assert_eq!(admitted.len() + refused, 100, "{answers:?}");
    // Each reserves $2 of engine time and about $1.50 of prompt, and gives
    // back what it did not use once it ends (about $0.75 is used): how many
    // get in depends on how many end while the others arrive. Reserving
    // the four-bytes-a-token estimate alone, some 25 would, and spend $15.
    assert!(
        !admitted.is_empty() && refused > 50,
        "{} admitted",
        admitted.len()
    );
    stack
        .wait_finished(&admitted, Duration::from_secs(30))
        .await;
    let (_, usage) = stack.get_json("/v1/usage?tenant=capped").await;
    let spent = usage["total_cost_usd"]
        .as_f64()
        .unwrap_or_else(|| panic!("{usage}"));
    println!("{} admitted, ${spent:.4} spent of $10", admitted.len());
    assert!(spent <= 10.0, "spent ${spent} of a $10 budget");
}
