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
}
