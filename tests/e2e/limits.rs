//! Rate limits per tenant hold across brokers: two brokers sharing one job
//! store admit no more than one tenant's burst between them, refuse the
//! rest with `429 rate_limited` and a `Retry-After`, and leave other
//! tenants alone; a tokens-per-minute limit counts estimated tokens.

use crate::common::*;
use futures::StreamExt;
use serde_json::{Value, json};

const TENANTS: &str = "[{name: metered, limits: {requests_per_minute: 60, burst_requests: 5}},
  {name: wordy, limits: {tokens_per_minute: 600, burst_tokens: 100}}]";

async fn post(stack: &Stack, port: u16, body: &Value) -> (u16, Option<String>, Value) {
    let r = stack
        .http
        .post(format!("http://127.0.0.1:{port}/v1/jobs"))
        .json(body)
        .send()
        .await
        .unwrap();
    let retry_after = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (r.status().as_u16(), retry_after, r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_brokers_share_a_tenant_s_rate_limit() {
    let mut stack = Stack::new(StackOptions {
        tenants: TENANTS,
        ..StackOptions::default()
    });
    stack.start_broker();
    let second = free_port();
    stack.launch_broker(
        "broker-2",
        &[("SWITCHYARD_BROKER__LISTEN", format!("127.0.0.1:{second}"))],
    );
    let ports = [stack.broker_port, second];
    let body =
        |tenant: &str| json!({"model": TEXT_MODEL, "tenant": tenant, "input": {"prompt": "x"}});

    // 40 at once, half to each broker: 60 a minute with a burst of 5 lets
    // 5 through now (and one more per second that passes).
    let started = std::time::Instant::now();
    let answers: Vec<(u16, Option<String>, Value)> = futures::stream::iter(0..40)
        .map(|i| {
            let body = body("metered");
            let stack = &stack;
            async move { post(stack, ports[i % 2], &body).await }
        })
        .buffer_unordered(40)
        .collect()
        .await;
    let secs = started.elapsed().as_secs();
    let admitted = answers.iter().filter(|a| a.0 == 202).count();
    assert!(
        (5..=5 + secs as usize).contains(&admitted),
        "{admitted} admitted in {secs} s: {answers:?}"
    );
    let refused: Vec<&(u16, Option<String>, Value)> =
        answers.iter().filter(|a| a.0 == 429).collect();
    assert_eq!(refused.len(), 40 - admitted);
    let (_, retry_after, error) = refused[0];
    assert_eq!(error["error"]["code"], "rate_limited");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.contains("requests_per_minute"), "{message}");
    assert!(retry_after.as_deref().unwrap().parse::<u64>().unwrap() >= 1);

    // Another tenant is not held back by it.
    assert_eq!(post(&stack, second, &body("default")).await.0, 202);

    // Tokens: 600 a minute, 100 at once; a job of 40-byte prompt and 40
    // tokens is estimated at 50, so two fit and a third does not.
    let wordy = json!({"model": TEXT_MODEL, "tenant": "wordy",
                       "input": {"prompt": "a".repeat(40), "max_tokens": 40}});
    assert_eq!(post(&stack, ports[0], &wordy).await.0, 202);
    assert_eq!(post(&stack, ports[1], &wordy).await.0, 202);
    let (status, _, error) = post(&stack, ports[0], &wordy).await;
    assert_eq!(status, 429);
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.contains("tokens_per_minute"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenant_holds_at_most_its_queued_jobs_and_an_ended_one_frees_a_place() {
    let mut stack = Stack::new(StackOptions {
        tenants: "[{name: small, limits: {max_queued_jobs: 3}}]",
        ..StackOptions::default()
    });
    // No node: admitted jobs stay queued.
    stack.start_broker();
    stack.start_dispatcher();
    let port = stack.broker_port;
    let body = json!({"model": TEXT_MODEL, "tenant": "small", "input": {"prompt": "x"}});
    let answers: Vec<(u16, Option<String>, Value)> = futures::stream::iter(0..6)
        .map(|_| post(&stack, port, &body))
        .buffer_unordered(6)
        .collect()
        .await;
    let admitted: Vec<&Value> = answers
        .iter()
        .filter(|a| a.0 == 202)
        .map(|a| &a.2)
        .collect();
    assert_eq!(admitted.len(), 3, "{answers:?}");
    let refused = answers.iter().find(|a| a.0 == 429).unwrap();
    assert!(
        refused.2["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_queued_jobs"),
        "{refused:?}"
    );

    // A cancelled job has ended: its place is free again, for one job.
    let victim = admitted[0]["id"].as_str().unwrap();
    assert_eq!(stack.cancel_job(victim).await, 200);
    eventually(
        std::time::Duration::from_secs(10),
        std::time::Duration::from_millis(100),
        || async {
            let status = post(&stack, port, &body).await.0;
            so(status == 202, || {
                format!("the place was not freed: {status}")
            })
        },
    )
    .await;
    assert_eq!(post(&stack, port, &body).await.0, 429, "full again");
    // The jobs run and end: every place is free.
    stack.start_simulated_agent("node-a", TEXT_MODEL);
    let ids: Vec<String> = admitted[1..]
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_owned())
        .collect();
    stack
        .wait_finished(&ids, std::time::Duration::from_secs(20))
        .await;
    for _ in 0..3 {
        eventually(
            std::time::Duration::from_secs(10),
            std::time::Duration::from_millis(100),
            || async {
                let status = post(&stack, port, &body).await.0;
                so(status == 202, || format!("places not freed: {status}"))
            },
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenant_runs_at_most_its_max_running_jobs_at_once() {
    let stack = Stack::running(
        StackOptions {
            tenants: "[{name: capped, limits: {max_running_jobs: 2}}]",
            base_latency: "300ms",
            ..StackOptions::default()
        },
        &["node-a"],
    );
    let mut capped = Vec::new();
    let mut free = Vec::new();
    for n in 0..6 {
        for (tenant, ids) in [("capped", &mut capped), ("free", &mut free)] {
            let body = json!({"model": TEXT_MODEL, "tenant": tenant, "input": {"prompt": format!("{tenant} {n}")}});
            ids.push(stack.submit_http(&body).await);
        }
    }
    let all: Vec<String> = capped.iter().chain(&free).cloned().collect();
    let done = stack
        .wait_finished(&all, std::time::Duration::from_secs(30))
        .await;
    let of = |ids: &[String]| -> Vec<&Value> { ids.iter().map(|id| &done[id]).collect() };
    assert!(of(&all).iter().all(|j| j["status"] == "succeeded"));
    // The node has 16 slots: only the limit holds the capped tenant back.
    assert_eq!(
        most_at_once(&of(&capped)),
        2,
        "capped at 2, and it used them"
    );
    assert!(
        most_at_once(&of(&free)) >= 4,
        "the other tenant is not held back"
    );
}

/// A bound on running jobs set while a tenant's jobs run counts them. With
/// no bound anywhere the dispatcher follows no running jobs; once one is
/// offered it reads the assignments still on the nodes before applying it,
/// so the jobs placed while nothing was counted hold their places.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_running_bound_set_while_jobs_run_counts_them() {
    use crate::auth::{admin_key, call, key, options, wait_ended};
    use reqwest::Method;
    const BOUNDS: &str = "switchyard_dispatcher_running_bounds";
    let stack = Stack::running(
        StackOptions {
            base_latency: "6s",
            ..options()
        },
        &["node-a"],
    );
    let admin = admin_key(&stack);
    let (submitter, _) = key(
        &stack,
        &admin,
        json!({"role": "submitter", "tenant": "acme"}),
    )
    .await;
    let submit = |n: usize| {
        let (stack, submitter) = (&stack, &submitter);
        async move {
            let body = json!({"model": TEXT_MODEL, "input": {"prompt": format!("long {n}")}});
            let (status, made) =
                call(stack, Method::POST, "/v1/jobs", submitter, Some(&body)).await;
            assert_eq!(status, 202, "{made}");
            made["id"].as_str().unwrap().to_owned()
        }
    };
    let mut first = Vec::new();
    for n in 0..3 {
        first.push(submit(n).await);
    }
    let ten_s = std::time::Duration::from_secs(10);
    let running = "switchyard_agent_running_jobs";
    stack
        .wait_metric("node-a", running, ten_s, |n| n >= 3.0)
        .await;
    let shown = stack.metrics_text("dispatcher").await;
    assert!(
        shown.lines().any(|l| l == format!("{BOUNDS} 0")),
        "no bound, nothing followed: {BOUNDS} reads 0"
    );

    let (status, _) = call(
        &stack,
        Method::PUT,
        "/v1/admin/tenants/acme/limits",
        &admin,
        Some(&json!({"max_running_jobs": 2})),
    )
    .await;
    assert_eq!(status, 200);
    stack
        .wait_metric("dispatcher", BOUNDS, ten_s, |n| n == 1.0)
        .await;
    let later = vec![submit(3).await, submit(4).await];

    let all: Vec<String> = first.iter().chain(&later).cloned().collect();
    let ended = wait_ended(&stack, &admin, &all).await;
    let at = |job: &Value, status: &str| {
        let steps = job["transitions"].as_array().unwrap();
        let step = steps.iter().find(|t| t["status"] == status).unwrap();
        seconds_of(step["at"].as_str().unwrap())
    };
    let first_ended = ended[..3]
        .iter()
        .map(|j| at(j, "succeeded"))
        .fold(f64::INFINITY, f64::min);
    assert!(
        ended[3..].iter().all(|j| at(j, "queued") < first_ended),
        "the later jobs came while the first ran"
    );
    assert_eq!(
        most_at_once(&ended.iter().collect::<Vec<_>>()),
        3,
        "the later jobs waited for the first to end"
    );
}
