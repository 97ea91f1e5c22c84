//! NATS-native tenants: a nats-server started with
//! `deploy/nats/accounts.conf` gives each tenant's user only its own submit
//! subjects and its own results. Two tenant users: each submits durably
//! and by request, reads its own results, and cannot submit as the other,
//! read the other's results or reach the platform's streams.

use std::time::Duration;

use crate::common::*;
use serde_json::{Value, json};
use switchyard_schemas::{JobResult, Outcome, decode};

fn submission(prompt: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"model": TEXT_MODEL, "input": {"prompt": prompt, "max_tokens": 3}}))
        .unwrap()
}

/// Asks for a job's result until it has one (or the broker says why not).
async fn result(client: &async_nats::Client, tenant: &str, id: &str) -> Result<JobResult, String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let reply = client
            .request(format!("sy.result.{tenant}.{id}"), "".into())
            .await
            .map_err(|e| format!("request: {e}"))?;
        let error = reply
            .headers
            .as_ref()
            .and_then(|h| h.get("Switchyard-Error"))
            .map(|v| v.to_string());
        match error.as_deref() {
            None => return Ok(decode(&reply.payload).unwrap()),
            Some("not_finished") if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Some(code) => return Err(code.to_owned()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tenant_users_reach_only_their_own_subjects() {
    let stack = Stack::running(
        StackOptions {
            tenants: "[{name: acme}, {name: globex}]",
            nats_accounts: true,
            ..StackOptions::default()
        },
        &["node-a"],
    );
    let acme = stack.nats.client_as("acme").await;
    let globex = stack.nats.client_as("globex").await;

    // A wrong password is refused by the server.
    let wrong = async_nats::ConnectOptions::with_user_and_password("acme".into(), "guess".into())
        .connect(format!("127.0.0.1:{}", stack.nats.port))
        .await;
    assert!(wrong.is_err());

    // Durable: the PubAck comes back through the account's import.
    let js = async_nats::jetstream::new(acme.clone());
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", "acme-durable-1");
    js.publish_with_headers("sy.submit.normal.acme", headers, submission("one").into())
        .await
        .expect("publish")
        .await
        .expect("the submission is stored");
    // The broker admits it from the stream in its own time.
    for _ in 0..100 {
        if stack.get_job("acme-durable-1").await.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let done = result(&acme, "acme", "acme-durable-1").await.unwrap();
    assert!(matches!(done.outcome, Outcome::Succeeded { .. }));
    let (_, record) = stack.get_job("acme-durable-1").await;
    assert_eq!(record["tenant"], "acme", "the tenant is the subject's");

    // Request/reply.
    let reply = globex
        .request("sy.admit.high.globex", submission("two").into())
        .await
        .unwrap();
    let admitted: Value = serde_json::from_slice(&reply.payload).unwrap();
    let globex_id = admitted["id"].as_str().expect("queued").to_owned();
    let done = result(&globex, "globex", &globex_id).await.unwrap();
    assert!(matches!(done.outcome, Outcome::Succeeded { .. }));
    let (_, record) = stack.get_job(&globex_id).await;
    assert_eq!(record["tenant"], "globex");

    // A body may not name another tenant.
    let mut forged: Value = serde_json::from_slice(&submission("three")).unwrap();
    forged["tenant"] = json!("globex");
    let reply = acme
        .request(
            "sy.admit.normal.acme",
            serde_json::to_vec(&forged).unwrap().into(),
        )
        .await
        .unwrap();
    let refused: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(refused["error"]["code"], "invalid_request", "{refused}");

    // Another tenant's subjects are not there for a tenant's user.
    for subject in [
        "sy.submit.normal.globex",
        "sy.admit.normal.globex",
        "sy.submit.normal",
        &format!("sy.result.globex.{globex_id}"),
    ] {
        let answer = acme
            .request(subject.to_owned(), submission("x").into())
            .await;
        assert!(answer.is_err(), "acme reached {subject}");
    }
    // Its account has no JetStream: the platform's streams are not its.
    let names = acme
        .request("$JS.API.STREAM.NAMES", "".into())
        .await
        .unwrap();
    let names = String::from_utf8_lossy(&names.payload);
    assert!(
        names.contains("error") && !names.contains("RESULTS"),
        "{names}"
    );
    // Asking through its own subject for another tenant's job: not found.
    assert_eq!(
        result(&acme, "acme", &globex_id).await.unwrap_err(),
        "not_found"
    );
    // A job id another tenant holds is not taken over.
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", globex_id.as_str());
    let reply = acme
        .request_with_headers(
            "sy.admit.normal.acme".to_owned(),
            headers,
            submission("steal").into(),
        )
        .await
        .unwrap();
    let refused: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(refused["error"]["code"], "id_taken", "{refused}");
    let (_, record) = stack.get_job(&globex_id).await;
    assert_eq!(record["tenant"], "globex");

    // Other tenants' results never reach a tenant's subscription.
    let mut snoop = acme.subscribe("sy.>").await.unwrap();
    let reply = globex
        .request("sy.admit.normal.globex", submission("four").into())
        .await
        .unwrap();
    let admitted: Value = serde_json::from_slice(&reply.payload).unwrap();
    result(&globex, "globex", admitted["id"].as_str().unwrap())
        .await
        .unwrap();
    let seen = tokio::time::timeout(
        Duration::from_millis(500),
        futures::StreamExt::next(&mut snoop),
    )
    .await;
    assert!(
        seen.is_err(),
        "acme saw a message of the platform: {seen:?}"
    );
}
