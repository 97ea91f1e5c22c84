//! The console in a real headless Chromium (tests/browser/console.py, with
//! Playwright): sign in, watch a queue fill, read a job's timeline with
//! every attempt, cancel a queued job and replay a dead letter from the
//! page, hostile job data shown as text, a tenant's key seeing only its
//! tenant, and no request leaving the broker's origin. Screenshots of each
//! page land in `$CARGO_TARGET_DIR/console-shots`.

use std::path::PathBuf;
use std::time::Duration;

use crate::auth::{admin_key, call, key};
use crate::common::*;
use reqwest::Method;
use serde_json::{Value, json};

const HOSTILE_PROMPT: &str =
    r#"<script>window.__xss=1</script> "><img src=x onerror="window.__xss=2">"#;

async fn submit_as(stack: &Stack, key: &str, body: Value) -> String {
    let r = stack
        .http
        .post(stack.broker_url("/v1/jobs"))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let body: Value = r.json().await.unwrap();
    body["id"].as_str().unwrap().to_owned()
}

/// The job as the admin reads it, once its status is one of `finals`.
async fn ended(stack: &Stack, admin: &str, id: &str, finals: &[&str]) -> Value {
    eventually(
        Duration::from_secs(60),
        Duration::from_millis(200),
        || async {
            let (_, job) = call(stack, Method::GET, &format!("/v1/jobs/{id}"), admin, None).await;
            let done = job["status"].as_str().is_some_and(|s| finals.contains(&s));
            if done { Ok(job) } else { Err(job.to_string()) }
        },
    )
    .await
}

fn shots_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| repo_root().join("target"), PathBuf::from);
    let dir = target.join("console-shots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_console_shows_queues_nodes_timelines_and_dead_letters_to_those_who_may_see_them() {
    let mut stack = Stack::new(StackOptions {
        slots: 2,
        base_latency: "400ms",
        ..crate::auth::options()
    });
    stack.start_broker();
    stack.start_dispatcher();
    stack.start_faulty_agent("node-a", "[{class: overloaded, prompt_contains: poison}]");
    let admin = admin_key(&stack);
    let (acme, _) = key(
        &stack,
        &admin,
        json!({"role": "submitter", "tenant": "acme"}),
    )
    .await;
    let (globex, _) = key(
        &stack,
        &admin,
        json!({"role": "submitter", "tenant": "globex"}),
    )
    .await;

    // A key the admin revokes from the tenants page.
    let (spare, spare_id) = key(
        &stack,
        &admin,
        json!({"role": "reader", "tenant": "acme", "name": "spare"}),
    )
    .await;

    let text =
        |prompt: &str| json!({"model": TEXT_MODEL, "input": {"prompt": prompt, "max_tokens": 16}});
    let dead = submit_as(&stack, &acme, text("poison, for now")).await;
    let done = submit_as(&stack, &acme, text("an acme job")).await;
    let mut hostile = text(HOSTILE_PROMPT);
    hostile["metadata"] = json!({
        "note": "<script>window.__xss=3</script>",
        "quote": "\"><img src=x onerror=window.__xss=4>",
    });
    let xss = submit_as(&stack, &globex, hostile).await;
    ended(&stack, &admin, &dead, &["failed"]).await;
    ended(&stack, &admin, &done, &["succeeded"]).await;
    ended(&stack, &admin, &xss, &["succeeded"]).await;
    // The page comes with a policy that lets only its own scripts run and
    // only its own origin be reached, and nothing of it may be framed.
    let page = stack
        .http
        .get(stack.broker_url("/console"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let header = |name: &str| {
        page.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let csp = header("content-security-policy");
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{csp}");
    }
    assert_eq!(header("x-frame-options"), "DENY");
    assert_eq!(header("x-content-type-options"), "nosniff");
    let missing = stack
        .http
        .get(stack.broker_url("/console/assets/nothing.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    let setup = json!({
        "url": stack.broker_url(""),
        "shots": shots_dir(),
        "admin_key": admin,
        "acme_key": acme,
        "globex_key": globex,
        "model": TEXT_MODEL,
        "load": 60,
        "nodes": 1,
        "dead_job": dead,
        "xss_job": xss,
        "tenant_job": done,
        "spare_key": spare_id,
    });
    let report = python_script("browser/console.py", &[setup.to_string()]);

    // What the page did, as the API sees it.
    let cancel = report["cancelled"].as_str().unwrap();
    ended(&stack, &admin, cancel, &["cancelled"]).await;
    let (_, replayed) = call(
        &stack,
        Method::GET,
        &format!("/v1/jobs/{dead}"),
        &admin,
        None,
    )
    .await;
    assert!(replayed["attempt"].as_u64() >= Some(4), "{replayed}");
    let (status, refused) = call(&stack, Method::GET, "/v1/jobs", &spare, None).await;
    assert_eq!(
        status, 401,
        "a key revoked on the page still works: {refused}"
    );
}

/// The workflow, model and usage views, with authentication off as the
/// demo runs: a failed run's graph with its compensations, a model step's
/// link to its job, a running rollout rolled back from the page, and the
/// charged usage.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_console_draws_runs_rolls_back_a_rollout_and_shows_usage() {
    use crate::workflows::{Api, PIPELINE, WEBHOOKS, stack_of, start_run};
    let api = Api::default();
    let options = StackOptions {
        workflows: PIPELINE,
        broker_extra: WEBHOOKS,
        extra_models: "\n  - name: chat-v2\n    kind: chat",
        aliases: "\n  - name: helper\n    targets: [{model: tiny-chat, weight: 100}]",
        ..StackOptions::default()
    };
    let stack = stack_of(&api, options).await;

    let (_, failed) = start_run(
        &stack,
        "book",
        json!({"input": {"release_fails": false}}),
        60,
    )
    .await;
    assert_eq!(failed["status"], "failed", "{failed:#}");
    let messages = json!({"input": {"messages": [{"role": "user", "content": "hi"}]}});
    let (_, answered) = start_run(&stack, "assistant", messages, 60).await;
    assert_eq!(answered["status"], "succeeded", "{answered:#}");
    // Jobs through the alias before the rollout: the old version's
    // baseline, which the page shows beside the new version's figures.
    let mut asked = Vec::new();
    for _ in 0..3 {
        let ask =
            json!({"model": "helper", "input": {"messages": [{"role": "user", "content": "hi"}]}});
        asked.push(stack.submit_http(&ask).await);
    }
    stack.wait_finished(&asked, Duration::from_secs(30)).await;
    // A rollout that holds its first step: too few jobs to judge.
    let (status, started) = crate::rollouts::send(
        &stack,
        Method::POST,
        "/v1/admin/aliases/helper/rollout",
        json!({"to": "chat-v2", "steps": [5, 100], "every": "1h", "guards": {"min_samples": 1000, "max_error_rate_increase": 0.05, "max_p95_latency_ratio": 3}}),
    )
    .await;
    assert_eq!(status, 201, "{started:#}");
    let (_, registry) = stack.get_json("/v1/admin/models").await;
    let figures = &registry["rollouts"][0]["figures"];
    assert_eq!(figures["old"]["jobs"], 3, "{registry:#}");
    assert_eq!(figures["new"]["jobs"], 0, "{registry:#}");

    let setup = json!({
        "url": stack.broker_url(""),
        "shots": shots_dir(),
        "failed_run": failed["id"],
        "model_run": answered["id"],
        "alias": "helper",
        "baseline_jobs": asked.len(),
        "charged_model": CHAT_MODEL,
    });
    let report = python_script("browser/console_runs.py", &[setup.to_string()]);

    // What the page did, as the API sees it.
    let (_, registry) = stack.get_json("/v1/admin/models").await;
    let rollout = &registry["rollouts"][0];
    assert_eq!(rollout["status"], "rolled_back", "{registry:#}");
    assert_eq!(
        rollout["rolled_back_by"]["guard"], "operator",
        "{registry:#}"
    );
    // The step's job is the run's effect: `<run>-ask-1`.
    let job = report["job"].as_str().unwrap();
    assert_eq!(
        job,
        format!("{}-ask-1", answered["id"].as_str().unwrap()),
        "{report}"
    );
}
