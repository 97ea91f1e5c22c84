//! Runs as a user looks for them afterwards: listed and filtered by
//! workflow and status (the runs left for an operator among them), a page
//! at a time, and a run's end sent to its webhook with the run as the API
//! shows it; and the key that started a run is the key of its jobs.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::auth::{admin_key, call, code, key, options};
use crate::budgets::{PRICED, post};
use crate::common::*;
use crate::workflows::{Api, Call, stack_with, start_run, step};

fn ids(page: &Value) -> Vec<String> {
    page["data"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| r["id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// A workflow of one model step.
pub(crate) const ASK: &str = "
  - name: ask
    steps:
      - id: ask
        model: {name: tiny-text, input: {prompt: '{{ input.text }}', max_tokens: 2}}";

/// The webhook calls the local API has had so far.
fn hooks(api: &Api) -> Vec<Call> {
    api.calls()
        .into_iter()
        .filter(|c| c.path.starts_with("/hooks/"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_are_listed_by_workflow_and_status_and_a_run_s_end_reaches_its_webhook() {
    let api = Api::default();
    let stack = stack_with(&api).await;

    let body = json!({
        "input": {"text": "  Hello Big World "},
        "webhook": {"url": api.url("/hooks/review")},
    });
    let (status, review) = start_run(&stack, "review", body, 60).await;
    assert_eq!((status, &review["status"]), (200, &json!("succeeded")));
    let body = json!({
        "input": {"release_fails": true},
        "webhook": {"url": api.url("/hooks/book"), "events": ["failed"]},
    });
    let (_, stuck) = start_run(&stack, "book", body, 60).await;
    assert_eq!(stuck["status"], "failed_compensation", "{stuck:#}");
    let body = json!({"input": {"release_fails": false}});
    let (_, failed) = start_run(&stack, "book", body, 60).await;
    assert_eq!(failed["status"], "failed", "{failed:#}");

    // A run's webhook hears of its end only, and only from an address the
    // guard lets through.
    let body = json!({"input": {}, "webhook": {"url": api.url("/hooks/x"), "events": ["started"]}});
    let (status, refused) = start_run(&stack, "book", body, 0).await;
    assert_eq!(status, 422, "{refused:#}");
    assert_eq!(refused["error"]["code"], "invalid_request", "{refused:#}");
    let body = json!({"input": {}, "webhook": {"url": "http://10.1.2.3/hooks"}});
    let (status, refused) = start_run(&stack, "book", body, 0).await;
    assert_eq!(
        refused["error"]["code"], "webhook_refused",
        "{status} {refused:#}"
    );

    // Each end reaches its webhook once, with the run as `GET` shows it:
    // its steps' jobs ended and its cost, whatever order the broker
    // recorded them in.
    let seen = eventually(
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            let seen = hooks(&api);
            so(seen.len() >= 2, || format!("{seen:#?}")).map(|()| seen)
        },
    )
    .await;
    let (_, review_now) = stack
        .get_json(&format!(
            "/v1/workflows/runs/{}",
            review["id"].as_str().unwrap()
        ))
        .await;
    let sent = seen
        .iter()
        .find(|c| c.path == "/hooks/review")
        .expect("review's end");
    assert_eq!(sent.method, "POST");
    assert_eq!(sent.body["type"], "run.completed", "{:#}", sent.body);
    assert_eq!(sent.body["data"]["id"], review["id"], "{:#}", sent.body);
    assert_eq!(sent.body["data"]["status"], "succeeded", "{:#}", sent.body);
    assert_eq!(
        sent.body["data"]["cost_usd"], review_now["cost_usd"],
        "{:#}",
        sent.body
    );
    for id in ["draft", "polish"] {
        let job = &step(&sent.body["data"], id)["attempts"][0]["job"];
        assert_eq!(job["status"], "succeeded", "{:#}", sent.body);
        assert_eq!(job["node"], "n1", "{:#}", sent.body);
    }
    let sent = seen
        .iter()
        .find(|c| c.path == "/hooks/book")
        .expect("book's end");
    assert_eq!(sent.body["type"], "run.failed", "{:#}", sent.body);
    assert_eq!(sent.body["data"]["id"], stuck["id"], "{:#}", sent.body);
    assert_eq!(
        sent.body["data"]["status"], "failed_compensation",
        "{:#}",
        sent.body
    );
    assert_eq!(seen.len(), 2, "{seen:#?}");

    // Listed newest first, by workflow and by status; the run left for an
    // operator is found by its status.
    let book = eventually(
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            let (_, page) = stack.get_json("/v1/workflows/runs?workflow=book").await;
            let statuses: Vec<Value> = page["data"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| r["status"].clone())
                .collect();
            so(
                statuses == [json!("failed"), json!("failed_compensation")],
                || format!("{page:#}"),
            )
            .map(|()| page)
        },
    )
    .await;
    assert_eq!(
        ids(&book),
        [&failed["id"], &stuck["id"]].map(|v| v.as_str().unwrap().to_owned())
    );
    let row = &book["data"][1];
    assert_eq!(row["workflow"], "book", "{book:#}");
    assert!(
        row["error"]
            .as_str()
            .unwrap_or_default()
            .contains("reserve"),
        "{book:#}"
    );
    assert!(
        row["finished_at_ms"].as_i64() >= row["started_at_ms"].as_i64(),
        "{book:#}"
    );
    let (_, left) = stack
        .get_json("/v1/workflows/runs?status=failed_compensation")
        .await;
    assert_eq!(ids(&left), [stuck["id"].as_str().unwrap()], "{left:#}");
    let (_, done) = stack.get_json("/v1/workflows/runs?status=succeeded").await;
    assert_eq!(ids(&done), [review["id"].as_str().unwrap()], "{done:#}");

    // A page at a time: every run once, newest first.
    let mut pages = Vec::new();
    let mut path = "/v1/workflows/runs?limit=1".to_owned();
    loop {
        let (status, page) = stack.get_json(&path).await;
        assert_eq!(status, 200, "{page:#}");
        pages.extend(ids(&page));
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/workflows/runs?limit=1&cursor={cursor}"),
            None => break,
        }
    }
    let all: Vec<String> = [&failed, &stuck, &review]
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .to_vec();
    assert_eq!(pages, all);
    let (status, bad) = stack.get_json("/v1/workflows/runs?status=lost").await;
    assert_eq!(
        (status, &bad["error"]["code"]),
        (422, &json!("invalid_request"))
    );

    replay_once_the_cause_is_fixed(&stack, &api, &stuck, &failed).await;
}

/// The run left for an operator, replayed once the service its
/// compensation calls is back: the compensation runs again and the run
/// ends `failed`, its webhook told of that end too.
async fn replay_once_the_cause_is_fixed(stack: &Stack, api: &Api, stuck: &Value, failed: &Value) {
    let replay = |id: &Value| {
        let path = format!(
            "/v1/admin/workflows/runs/{}/replay",
            id.as_str().unwrap_or_default()
        );
        async move { call(stack, Method::POST, &path, "", None).await }
    };
    // Only a run that ended `failed_compensation` is replayed.
    let (status, body) = replay(&failed["id"]).await;
    assert_eq!((status, code(&body)), (409, "not_failed"), "{body:#}");
    let (status, body) = replay(&json!("no-such-run")).await;
    assert_eq!((status, code(&body)), (404, "not_found"), "{body:#}");

    api.recover();
    let (status, body) = replay(&stuck["id"]).await;
    assert_eq!(
        (status, &body["status"]),
        (202, &json!("running")),
        "{body:#}"
    );
    let path = format!("/v1/workflows/runs/{}", stuck["id"].as_str().unwrap());
    let run = eventually(
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            let (_, run) = stack.get_json(&path).await;
            so(run["status"] == "failed", || format!("{run:#}")).map(|()| run)
        },
    )
    .await;
    assert_eq!(run["replays"], 1, "{run:#}");
    assert!(
        run["error"]
            .as_str()
            .unwrap_or_default()
            .contains("step \"ship\""),
        "the run's own failure stays its error: {run:#}"
    );
    let reserve = step(&run, "reserve");
    assert_eq!(reserve["status"], "compensated", "{run:#}");
    let undo: Vec<(Value, Value)> = reserve["attempts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["compensation"] == true)
        .map(|a| (a["attempt"].clone(), a["outcome"].clone()))
        .collect();
    assert_eq!(
        undo,
        [(1, "failed"), (2, "failed"), (3, "succeeded")].map(|(n, o)| (json!(n), json!(o))),
        "{run:#}"
    );
    // The charge was refunded before the run was left; not again.
    let refunds = api
        .calls()
        .iter()
        .filter(|c| c.path.starts_with("/refund/"))
        .count();
    assert_eq!(refunds, 2, "one for each run of `book`");

    let sent = eventually(
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            let book: Vec<Call> = hooks(api)
                .into_iter()
                .filter(|c| c.path == "/hooks/book")
                .collect();
            so(book.len() == 2, || format!("{book:#?}")).map(|()| book)
        },
    )
    .await;
    assert_eq!(sent[1].body["data"]["status"], "failed", "{:#?}", sent[1]);
    let (_, left) = stack
        .get_json("/v1/workflows/runs?status=failed_compensation")
        .await;
    assert_eq!(ids(&left), Vec::<String>::new(), "{left:#}");
    let (status, body) = replay(&stuck["id"]).await;
    assert_eq!((status, code(&body)), (409, "not_failed"), "{body:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_s_jobs_count_against_the_key_that_started_it() {
    let mut stack = Stack::new(StackOptions {
        workflows: ASK,
        ..options()
    });
    stack.start_broker();
    stack.start_dispatcher();
    stack.start_agent("n1");
    stack.start_workflows("wf1", &[]);
    let admin = admin_key(&stack);
    // One request at once, then one every 30 s.
    let spec = json!({"role": "submitter", "tenant": "acme", "limits": {"requests_per_minute": 2}});
    let (slow, _) = key(&stack, &admin, spec).await;
    let (free, _) = key(
        &stack,
        &admin,
        json!({"role": "submitter", "tenant": "acme"}),
    )
    .await;
    // The broker reads keys' limits every couple of seconds.
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let start = json!({"input": {"text": "hi"}});
    let (status, run) = call(
        &stack,
        Method::POST,
        "/v1/workflows/ask/runs",
        &slow,
        Some(&start),
    )
    .await;
    assert_eq!(status, 202, "{run:#}");
    let path = format!("/v1/workflows/runs/{}", run["id"].as_str().unwrap());
    let run = eventually(
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            let (_, run) = call(&stack, Method::GET, &path, &slow, None).await;
            so(run["status"] != "running", || format!("{run:#}")).map(|()| run)
        },
    )
    .await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert_eq!(run["tenant"], "acme", "{run:#}");

    // The run's job took the key's one request: the key is refused now,
    // the tenant's other key is not.
    let job = json!({"model": TEXT_MODEL, "input": {"prompt": "again"}});
    let (status, body) = call(&stack, Method::POST, "/v1/jobs", &slow, Some(&job)).await;
    assert_eq!((status, code(&body)), (429, "rate_limited"), "{body:#}");
    let (status, body) = call(&stack, Method::POST, "/v1/jobs", &free, Some(&job)).await;
    assert_eq!(status, 202, "{body:#}");
}

/// Two model steps of at most $0.001 each (10 tokens at $0.10 per 1k),
/// in runs that may spend $0.004.
const PRICED_RUNS: &str = "
  - name: priced
    max_cost_usd: 0.004
    steps:
      - id: first
        model: {name: tiny-priced, input: {prompt: '{{ input.text }}', max_tokens: 10}}
      - id: second
        needs: [first]
        model: {name: tiny-priced, input: {prompt: 'again', max_tokens: 10}}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_reserves_its_most_cost_at_its_start_and_its_steps_draw_on_it() {
    let mut stack = Stack::new(StackOptions {
        workflows: PRICED_RUNS,
        extra_models: PRICED,
        tenants: "[{name: capped, budget: {usd: 0.01, period: day}}]",
        ..StackOptions::default()
    });
    stack.start_broker();
    stack.start_dispatcher();
    stack.start_workflows("wf1", &[]);
    let run = json!({"tenant": "capped", "input": {"text": "hello"}});
    let job = json!({"model": "tiny-priced", "tenant": "capped",
                     "input": {"prompt": "p", "max_tokens": 10}});

    // No node yet: the run's first step waits, and the run holds $0.004.
    let (status, held) = start_run(&stack, "priced", run.clone(), 0).await;
    assert_eq!(status, 202, "{held:#}");
    let path = format!("/v1/workflows/runs/{}", held["id"].as_str().unwrap());
    eventually(
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            let (_, run) = stack.get_json(&path).await;
            let first = &step(&run, "first")["attempts"][0]["job"];
            so(first["status"] == "queued", || format!("{run:#}"))
        },
    )
    .await;
    // So $0.006 are left for jobs: six of $0.001, not nine.
    let mut admitted = Vec::new();
    loop {
        let (status, body) = post(&stack, job.clone()).await;
        if status != 202 {
            assert_eq!((status, code(&body)), (402, "budget_exceeded"), "{body:#}");
            break;
        }
        admitted.push(body["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(admitted.len(), 6);
    // And no room for another run's $0.004.
    let (status, refused) = start_run(&stack, "priced", run.clone(), 0).await;
    assert_eq!(
        (status, code(&refused)),
        (402, "budget_exceeded"),
        "{refused:#}"
    );

    // The budget is full, yet the run's second step draws on what the run
    // holds: the run completes.
    stack.start_simulated_agent("node-a", "tiny-priced");
    let done = eventually(
        Duration::from_secs(60),
        Duration::from_millis(200),
        || async {
            let (_, run) = stack.get_json(&path).await;
            so(run["status"] != "running", || format!("{run:#}")).map(|()| run)
        },
    )
    .await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    stack
        .wait_finished(&admitted, Duration::from_secs(60))
        .await;

    // Spent: eight jobs of $0.001. The run's end gave back the $0.002 its
    // steps did not draw: two more jobs fit, not a third.
    eventually(
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async {
            let (status, body) = post(&stack, job.clone()).await;
            so(status == 202, || format!("{status} {body:#}"))
        },
    )
    .await;
    assert_eq!(post(&stack, job.clone()).await.0, 202);
    let (status, body) = post(&stack, job).await;
    assert_eq!((status, code(&body)), (402, "budget_exceeded"), "{body:#}");
}
