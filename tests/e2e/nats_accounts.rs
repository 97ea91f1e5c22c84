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

    // Another tenant names a durable submission as acme named its own: the
    // server does not drop it as a duplicate (which would tell globex that
    // acme used the id), and globex reads the id_taken refusal where it
    // looks for its job, while acme's job keeps its result.
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", "acme-durable-1");
    let ack = async_nats::jetstream::new(globex.clone())
        .publish_with_headers("sy.submit.normal.globex", headers, submission("two").into())
        .await
        .expect("publish")
        .await
        .expect("the submission is stored");
    assert!(!ack.duplicate, "globex was told acme's id is in use");
    let mut refused = result(&globex, "globex", "acme-durable-1").await;
    for _ in 0..100 {
        if !matches!(&refused, Err(code) if code == "not_found") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        refused = result(&globex, "globex", "acme-durable-1").await;
    }
    assert_eq!(refused.unwrap_err(), "id_taken");
    let (_, record) = stack.get_job("acme-durable-1").await;
    assert_eq!(record["tenant"], "acme");
    assert_eq!(record["status"], "succeeded");
    let again = result(&acme, "acme", "acme-durable-1").await.unwrap();
    assert!(matches!(again.outcome, Outcome::Succeeded { .. }));

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

/// A node's agent runs with a user of its own: its work runs end to end
/// (streamed, cancelled, and through every allowed subject without a
/// permission refusal), and that user can neither read the grants' key nor
/// another node's work, change a stream, nor queue a job no broker sealed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_s_user_reaches_only_its_own_work() {
    let mut stack = Stack::running(
        StackOptions {
            nats_accounts: true,
            per_token_latency: "200ms",
            ..StackOptions::default()
        },
        &["node-a"],
    );
    let chat = |content: &str, tokens: u32, stream: bool| {
        json!({"model": CHAT_MODEL, "stream": stream, "input": {
            "messages": [{"role": "user", "content": content}], "max_tokens": tokens}})
    };
    let ids = vec![
        stack.submit_http(&chat("plain", 3, false)).await,
        stack.submit_http(&chat("streamed", 3, true)).await,
    ];
    let long = stack.submit_http(&chat("cancelled", 60, false)).await;
    stack.wait_running("node-a").await;
    assert_eq!(stack.cancel_job(&long).await, 200);
    let done = stack.wait_finished(&ids, Duration::from_secs(30)).await;
    for id in &ids {
        assert_eq!(done[id]["status"], "succeeded", "{}", done[id]);
    }
    let (_, cancelled) = stack.get_job(&long).await;
    assert_eq!(cancelled["status"], "cancelled");
    eventually(
        Duration::from_secs(10),
        Duration::from_millis(100),
        || async {
            let running = stack
                .metric("node-a", "switchyard_agent_running_jobs")
                .await;
            so(running == 0.0, || format!("node-a still runs {running}"))
        },
    )
    .await;

    // The node's user, asking for what it may not have: the server refuses
    // each request, so no answer comes.
    let node = async_nats::ConnectOptions::with_user_and_password(
        "agent-node-a".into(),
        "node-a-secret".into(),
    )
    .request_timeout(Some(Duration::from_millis(500)))
    .connect(format!("127.0.0.1:{}", stack.nats.port))
    .await
    .unwrap();
    let js = async_nats::jetstream::new(node.clone());
    assert!(
        js.get_key_value("secrets").await.is_err(),
        "read the secrets"
    );
    let key = node
        .request(
            "$JS.API.DIRECT.GET.KV_secrets.$KV.secrets.grants",
            "".into(),
        )
        .await;
    assert!(key.is_err(), "read the grants' key: {key:?}");
    assert!(js.delete_stream("RESULTS").await.is_err());
    let purged = node.request("$JS.API.STREAM.PURGE.JOBS", "".into()).await;
    assert!(purged.is_err(), "purged the queues: {purged:?}");
    let theirs = js
        .get_stream_no_info("WORK")
        .await
        .unwrap()
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some("agent-node-b".into()),
            filter_subject: "sy.work.node-b".into(),
            ..Default::default()
        })
        .await;
    assert!(theirs.is_err(), "took another node's work queue");

    // A job it makes up and queues is never placed.
    let platform = async_nats::jetstream::new(stack.nats.client().await);
    let made_up: switchyard_schemas::Job = serde_json::from_value(json!({
        "v": switchyard_schemas::SCHEMA_VERSION, "id": "made-up", "model": CHAT_MODEL,
        "tenant": "default", "priority": "normal", "submitted_at_ms": 1, "attempt": 1,
        "input": {"kind": "chat", "messages": [{"role": "user", "content": "free work"}]}
    }))
    .unwrap();
    js.publish(
        made_up.queue_subject(),
        switchyard_schemas::encode(&made_up).unwrap().into(),
    )
    .await
    .unwrap()
    .await
    .expect("a node may queue a retry");
    eventually(
        Duration::from_secs(10),
        Duration::from_millis(100),
        || async {
            let refused = stack
                .metric(
                    "dispatcher",
                    "switchyard_dispatcher_rejected_total{reason=\"unsealed\"}",
                )
                .await;
            so(refused == 1.0, || {
                format!("{refused} unsealed jobs refused")
            })
        },
    )
    .await;
    assert_eq!(
        stack.metric("node-a", "switchyard_agent_jobs_total").await,
        3.0
    );
    assert!(platform.get_stream("RESULTS").await.is_ok());

    // Everything the agent did was within its user's permissions.
    let log = std::fs::read_to_string(&stack.proc("node-a").log).unwrap();
    assert!(
        !log.to_lowercase().contains("permissions violation"),
        "{log}"
    );
}
