//! With `log.otlp_endpoint` set, one job is one trace across the broker,
//! the dispatcher and the agent: the context rides in NATS headers, and
//! each component's span is the child of the one before.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::*;
use axum::routing::post;
use serde_json::{Value, json};

/// A span as an OTLP/HTTP JSON export carries it.
#[derive(Debug, Clone)]
struct Span {
    service: String,
    name: String,
    trace: String,
    id: String,
    parent: String,
    job: String,
}

fn spans_of(export: &Value) -> Vec<Span> {
    let mut out = Vec::new();
    for rs in export["resourceSpans"].as_array().into_iter().flatten() {
        let attribute = |attrs: &Value, key: &str| {
            attrs
                .as_array()
                .into_iter()
                .flatten()
                .find(|a| a["key"] == key)
                .and_then(|a| a["value"]["stringValue"].as_str())
                .unwrap_or("")
                .to_owned()
        };
        let service = attribute(&rs["resource"]["attributes"], "service.name");
        for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
            for s in ss["spans"].as_array().into_iter().flatten() {
                out.push(Span {
                    service: service.clone(),
                    name: s["name"].as_str().unwrap_or("").to_owned(),
                    trace: s["traceId"].as_str().unwrap_or("").to_owned(),
                    id: s["spanId"].as_str().unwrap_or("").to_owned(),
                    parent: s["parentSpanId"].as_str().unwrap_or("").to_owned(),
                    job: attribute(&s["attributes"], "job_id"),
                });
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_job_is_one_trace_from_intake_to_the_engine() {
    let exports: Arc<Mutex<Vec<Value>>> = Arc::default();
    let collected = exports.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        post(move |axum::Json(body): axum::Json<Value>| {
            let collected = collected.clone();
            async move {
                collected.lock().unwrap().push(body);
                axum::Json(json!({}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let mut stack = Stack::new(StackOptions::default());
    stack.rewrite_config(
        "dispatcher:\n",
        &format!("log:\n  otlp_endpoint: http://{collector}\ndispatcher:\n"),
    );
    stack.start_broker();
    stack.start_dispatcher();
    stack.start_agent("node-a");
    let id = stack
        .submit_http(&json!({"model": TEXT_MODEL, "input": {"prompt": "traced"}}))
        .await;
    stack
        .wait_finished(std::slice::from_ref(&id), Duration::from_secs(20))
        .await;

    let names = ["job.admit", "job.dispatch", "job.run"];
    let found = eventually(
        Duration::from_secs(30),
        Duration::from_millis(250),
        || async {
            let spans: Vec<Span> = exports
                .lock()
                .unwrap()
                .iter()
                .flat_map(spans_of)
                .filter(|s| s.job == id)
                .collect();
            let found: Option<Vec<Span>> = names
                .iter()
                .map(|n| spans.iter().find(|s| s.name == *n).cloned())
                .collect();
            found.ok_or_else(|| format!("spans of {id} seen so far: {spans:?}"))
        },
    )
    .await;
    let [admit, dispatch, run] = [&found[0], &found[1], &found[2]];
    assert_eq!(
        [&admit.service, &dispatch.service, &run.service],
        [
            "switchyard-broker",
            "switchyard-dispatcher",
            "switchyard-agent"
        ]
    );
    assert!(!admit.trace.is_empty());
    assert_eq!(dispatch.trace, admit.trace, "one trace");
    assert_eq!(run.trace, admit.trace, "one trace");
    assert_eq!(
        dispatch.parent, admit.id,
        "the dispatch follows the admission"
    );
    assert_eq!(run.parent, dispatch.id, "the run follows the dispatch");
}
