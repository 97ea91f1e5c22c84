//! With `log.otlp_endpoint` set, one job is one trace across the broker,
//! the dispatcher and the agent: the context rides in NATS headers, and
//! each component's span is the child of the one before. A workflow run is
//! one trace too, its steps' jobs within it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::*;
use crate::workflow_runs::ASK;
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

/// An OTLP/HTTP receiver on 127.0.0.1: its address, and what it received.
async fn collector() -> (std::net::SocketAddr, Arc<Mutex<Vec<Value>>>) {
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
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (address, exports)
}

/// A stack whose components export their spans to `collector`.
fn traced(opts: StackOptions, collector: std::net::SocketAddr) -> Stack {
    let stack = Stack::new(opts);
    stack.rewrite_config(
        "dispatcher:\n",
        &format!("log:\n  otlp_endpoint: http://{collector}\ndispatcher:\n"),
    );
    stack
}

/// Every span received so far.
fn received(exports: &Mutex<Vec<Value>>) -> Vec<Span> {
    exports.lock().unwrap().iter().flat_map(spans_of).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_job_is_one_trace_from_intake_to_the_engine() {
    let (collector, exports) = collector().await;
    let options = StackOptions {
        broker_extra: "  trace_link: https://traces.example/trace/{trace_id}?from=switchyard",
        ..StackOptions::default()
    };
    let mut stack = traced(options, collector);
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
            let spans: Vec<Span> = received(&exports)
                .into_iter()
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

    // The job names its trace, and its page in the console links to it.
    let (_, job) = stack.get_job(&id).await;
    assert_eq!(job["trace_id"], admit.trace.as_str(), "{job:#}");
    let link = format!(
        "https://traces.example/trace/{}?from=switchyard",
        admit.trace
    );
    let setup = json!({"url": stack.broker_url(""), "job": id, "link": link});
    python_script("browser/console_trace.py", &[setup.to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_workflow_run_is_one_trace_with_its_steps_jobs_inside() {
    let (collector, exports) = collector().await;
    let mut stack = traced(
        StackOptions {
            workflows: ASK,
            ..StackOptions::default()
        },
        collector,
    );
    stack.start_broker();
    stack.start_dispatcher();
    stack.start_agent("node-a");
    stack.start_workflows("wf1", &[]);
    let run: Value = stack
        .http
        .post(stack.broker_url("/v1/workflows/ask/runs"))
        .header("prefer", "wait=30")
        .json(&json!({"input": {"text": "traced"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(run["status"], "succeeded", "{run:#}");
    let job = run["steps"][0]["attempts"][0]["effect_id"]
        .as_str()
        .unwrap()
        .to_owned();

    // From the broker's start through the engine's run and step to the
    // job's admission, dispatch and run: one trace, each span the child of
    // the one before.
    let names = [
        "workflow.start",
        "workflow.run",
        "workflow.step",
        "job.request",
        "job.admit",
        "job.dispatch",
        "job.run",
    ];
    let found = eventually(
        Duration::from_secs(30),
        Duration::from_millis(250),
        || async {
            let spans = received(&exports);
            let start = spans
                .iter()
                .find(|s| s.name == "workflow.start")
                .ok_or("no workflow.start yet")?;
            let trace: Vec<&Span> = spans.iter().filter(|s| s.trace == start.trace).collect();
            let found: Option<Vec<Span>> = names
                .iter()
                .map(|n| trace.iter().find(|s| s.name == *n).map(|s| (*s).clone()))
                .collect();
            found.ok_or_else(|| format!("spans of the run's trace so far: {trace:?}"))
        },
    )
    .await;
    let services: Vec<&str> = found.iter().map(|s| s.service.as_str()).collect();
    assert_eq!(
        services,
        [
            "switchyard-broker",
            "switchyard-workflows",
            "switchyard-workflows",
            "switchyard-broker",
            "switchyard-broker",
            "switchyard-dispatcher",
            "switchyard-agent"
        ]
    );
    for pair in found.windows(2) {
        assert_eq!(
            pair[1].parent, pair[0].id,
            "{} follows {}",
            pair[1].name, pair[0].name
        );
    }
    assert_eq!(found[4].job, job, "the step's job is the one traced");
}
