//! Workflows against a real JetStream, the simulated engine and a local
//! HTTP server standing in for an external API: run histories appended
//! only after what was read, whole runs through the engine role, and
//! compensations when a step fails for good.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use switchyard_runtime::NatsConfig;
use switchyard_schemas::Priority;
use switchyard_workflows::journal::{Journal, JournalError, Read};
use switchyard_workflows::{RunEvent, RunHeader, RunStatus};

use crate::common::*;

fn started(id: &str) -> RunEvent {
    RunEvent::Started {
        run: RunHeader {
            id: id.into(),
            workflow: "w".into(),
            version: 1,
            tenant: "acme".into(),
            priority: Priority::Normal,
            input: json!({"text": "hi"}),
            webhook: None,
            api_key: None,
            trace: None,
            stream: false,
        },
        at_ms: 1,
    }
}

async fn engine(nats: &Nats) -> Journal {
    let js = async_nats::jetstream::new(nats.client().await);
    Journal::open(js, &NatsConfig::default())
        .await
        .expect("the WORKFLOWS stream")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_s_history_is_appended_only_after_what_was_read() {
    let nats = Nats::start();
    let a = engine(&nats).await;
    let empty = Read {
        events: Vec::new(),
        last: 0,
    };
    assert_eq!(a.read("run-1").await.unwrap(), empty);

    let first = [
        started("run-1"),
        RunEvent::StepSkipped {
            step: "s".into(),
            at_ms: 2,
        },
    ];
    let last = a.append("run-1", 0, 0, &first).await.unwrap();
    // Sent again after a lost acknowledgement: its events are found there.
    assert_eq!(a.append("run-1", 0, 0, &first).await.unwrap(), last);
    a.append("run-2", 0, 0, &[started("run-2")]).await.unwrap();

    // Two engines read the same history; the first to append wins and the
    // other is told, whatever each believes about owning the run.
    let b = engine(&nats).await;
    let seen_a = a.read("run-1").await.unwrap();
    let seen_b = b.read("run-1").await.unwrap();
    assert_eq!(seen_a, seen_b);
    assert_eq!(seen_a.events, first);
    assert_eq!(seen_a.last, last);
    let a_next = [RunEvent::CancelRequested { at_ms: 3 }];
    a.append("run-1", seen_a.last, 2, &a_next).await.unwrap();
    let b_next = [RunEvent::Finished {
        status: RunStatus::Succeeded,
        output: Some(json!("done")),
        error: None,
        at_ms: 3,
    }];
    let refused = b.append("run-1", seen_b.last, 2, &b_next).await;
    assert!(
        matches!(refused, Err(JournalError::Conflict(ref run)) if run == "run-1"),
        "{refused:?}"
    );
    let now = b.read("run-1").await.unwrap();
    assert_eq!(now.events.len(), 3);
    assert_eq!(now.events[2], a_next[0]);
    assert_eq!(a.read("run-2").await.unwrap().events, [started("run-2")]);
}

/// An external API a workflow calls: it records each call, answers a
/// `POST` with an id that is the same for the same `Idempotency-Key` (as
/// an idempotent API does), and fails the paths it is told to.
#[derive(Clone, Default)]
pub(crate) struct Api(Arc<Mutex<ApiState>>);

#[derive(Default)]
struct ApiState {
    calls: Vec<Call>,
    ids: HashMap<String, String>,
    port: u16,
    /// The services behind `...unavailable...` paths are back.
    recovered: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct Call {
    pub(crate) method: String,
    pub(crate) path: String,
    key: String,
    authorization: String,
    pub(crate) body: Value,
}

impl Api {
    async fn serve(&self) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("API port");
        let port = listener.local_addr().expect("API address").port();
        self.0.lock().unwrap().port = port;
        let me = self.clone();
        let app = axum::Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: String| {
                let me = me.clone();
                async move { me.answer(method, &uri, &headers, &body) }
            },
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        port
    }

    fn answer(&self, method: Method, uri: &Uri, headers: &HeaderMap, body: &str) -> Response {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        let mut state = self.0.lock().unwrap();
        let key = header("idempotency-key");
        state.calls.push(Call {
            method: method.to_string(),
            path: uri.path().to_owned(),
            key: key.clone(),
            authorization: header("authorization"),
            body: serde_json::from_str(body).unwrap_or(Value::Null),
        });
        let path = uri.path();
        if path.contains("unavailable") && !state.recovered {
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
        if path.contains("refused") {
            return (StatusCode::BAD_REQUEST, Json(json!({"error": "no"}))).into_response();
        }
        let n = state.ids.len();
        let id = state
            .ids
            .entry(key)
            .or_insert_with(|| format!("p{n}"))
            .clone();
        Json(json!({"id": id, "path": path})).into_response()
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.0.lock().unwrap().port)
    }

    pub(crate) fn calls(&self) -> Vec<Call> {
        self.0.lock().unwrap().calls.clone()
    }

    /// Ends the outage of the `...unavailable...` paths.
    pub(crate) fn recover(&self) {
        self.0.lock().unwrap().recovered = true;
    }
}

pub(crate) const PIPELINE: &str = r#"
  - name: review
    input_schema:
      type: object
      required: [text]
      properties: {text: {type: string}}
    steps:
      - id: clean
        transform: "{{ input.text | trim | lower }}"
      - id: draft
        needs: [clean]
        model:
          name: tiny-chat
          input:
            messages: [{role: user, content: "{{ steps.clean.output }}"}]
            max_tokens: 4
      - id: publish
        needs: [draft]
        http:
          url: "http://127.0.0.1:API_PORT/posts"
          headers: {Authorization: "Bearer {{ secrets.cms_token }}"}
          body: {text: "{{ steps.draft.output.choices[0].message.content }}"}
      - id: polish
        needs: [publish]
        model:
          name: tiny-text
          input: {prompt: "post {{ steps.publish.output.id }}", max_tokens: 2}
      - id: shape
        needs: [polish, draft]
        transform:
          draft: "{{ steps.draft.output.choices[0].message.content }}"
          polished: "{{ steps.polish.output.choices[0].text }}"
  - name: book
    steps:
      - id: reserve
        http: {url: "http://127.0.0.1:API_PORT/reserve"}
        compensate:
          http:
            method: DELETE
            url: "http://127.0.0.1:API_PORT/release{{ '-unavailable' if input.release_fails else '' }}/{{ steps.reserve.output.id }}"
          retry: {max_attempts: 2, backoff: 100ms}
      - id: charge
        needs: [reserve]
        http: {url: "http://127.0.0.1:API_PORT/charge"}
        compensate:
          http: {method: DELETE, url: "http://127.0.0.1:API_PORT/refund/{{ steps.charge.output.id }}"}
      - id: ship
        needs: [charge]
        http: {url: "http://127.0.0.1:API_PORT/ship-refused"}
  - name: assistant
    input_schema: {type: object, required: [messages]}
    steps:
      - id: ask
        model:
          name: tiny-chat
          input: {messages: "{{ input.messages }}", max_tokens: 4}
      - id: answer
        needs: [ask]
        model:
          name: tiny-chat
          input:
            messages: [{role: user, content: "again {{ steps.ask.output.choices[0].message.content }}"}]
            max_tokens: 3
  - name: branches
    steps:
      - id: start
        transform: "{{ input.text | trim }}"
      - id: shout
        needs: [start]
        worker: {queue: shouting, input: {text: "{{ steps.start.output }}", fail: "{{ input.fail }}"}}
        retry: {max_attempts: 2, backoff: 100ms}
      - id: echo
        needs: [start]
        worker: {queue: shouting, input: {text: "{{ steps.start.output }} again", fail: false}}
      - id: whisper
        needs: [start]
        when: "input.whisper"
        transform: "{{ steps.start.output | lower }}"
      - id: join
        needs: [shout, echo, whisper]
        transform:
          shout: "{{ steps.shout.output.shout }}"
          echo: "{{ steps.echo.output.shout }}"
          whisper: "{{ steps.whisper.output }}"
"#;

const SECRET: &str = "s3cr3t-cms-token";

/// Runs' webhooks, to the local API.
pub(crate) const WEBHOOKS: &str = "  webhooks:
    secrets: [whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw]
    allow: [127.0.0.1/32]
    poll_interval: 50ms";

/// A stack with the workflows above, calling `api`, and one engine.
pub(crate) async fn stack_with(api: &Api) -> Stack {
    stack_of(
        api,
        StackOptions {
            workflows: PIPELINE,
            broker_extra: WEBHOOKS,
            ..StackOptions::default()
        },
    )
    .await
}

/// A stack of `opts` (which name the workflows) whose HTTP steps call `api`,
/// with a broker, a dispatcher, an agent and a workflow engine.
pub(crate) async fn stack_of(api: &Api, opts: StackOptions) -> Stack {
    let port = api.serve().await;
    let mut stack = Stack::new(opts);
    stack.rewrite_config("API_PORT", &port.to_string());
    stack.start_broker();
    stack.start_dispatcher();
    stack.start_agent("n1");
    stack.start_workflows("wf1", &[("WORKFLOW_SECRET_CMS_TOKEN", SECRET.into())]);
    stack
}

pub(crate) async fn start_run(
    stack: &Stack,
    workflow: &str,
    body: Value,
    wait: u32,
) -> (u16, Value) {
    let r = stack
        .http
        .post(stack.broker_url(&format!("/v1/workflows/{workflow}/runs")))
        .header("prefer", format!("wait={wait}"))
        .json(&body)
        .send()
        .await
        .expect("POST run");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn history_id(run: &Value) -> String {
    run["id"].as_str().unwrap_or_default().to_owned()
}

pub(crate) fn step<'a>(run: &'a Value, id: &str) -> &'a Value {
    run["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["id"] == id))
        .unwrap_or_else(|| panic!("no step {id} in {run:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_four_step_run_succeeds_and_its_record_shows_every_step() {
    let api = Api::default();
    let stack = stack_with(&api).await;

    let (status, run) = start_run(
        &stack,
        "review",
        json!({"input": {"text": "  Hello Big World "}}),
        60,
    )
    .await;
    assert_eq!(status, 200, "{run:#}");
    assert_eq!(run["status"], "succeeded", "{run:#}");
    let draft = expected_echo("hello big world", 4);
    assert_eq!(run["output"]["draft"], draft.as_str(), "{run:#}");
    let post = api
        .calls()
        .into_iter()
        .find(|c| c.path == "/posts")
        .expect("the API was called");
    let polished = expected_echo(&format!("post {}", "p0"), 2);
    assert_eq!(run["output"]["polished"], polished.as_str(), "{run:#}");

    // Every step, in order, with its kind, times, and for model steps the
    // job, its node and its usage.
    let kinds: Vec<(&str, &str)> = run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["id"].as_str().unwrap(), s["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("clean", "succeeded"),
            ("draft", "succeeded"),
            ("publish", "succeeded"),
            ("polish", "succeeded"),
            ("shape", "succeeded")
        ],
        "{run:#}"
    );
    for id in ["draft", "polish"] {
        let attempt = &step(&run, id)["attempts"][0];
        assert_eq!(attempt["job"]["node"], "n1", "{run:#}");
        assert_eq!(attempt["job"]["status"], "succeeded", "{run:#}");
        assert!(
            attempt["job"]["usage"]["completion_tokens"].as_u64() > Some(0),
            "{run:#}"
        );
        assert!(
            attempt["ended_at_ms"].as_i64() >= attempt["started_at_ms"].as_i64(),
            "{run:#}"
        );
        assert!(run["cost_usd"].is_number(), "{run:#}");
    }
    // The call carried the secret, read as it was sent, and an idempotency
    // key derived from the run, the step and the attempt.
    let publish = &step(&run, "publish")["attempts"][0];
    assert_eq!(post.key, publish["effect_id"].as_str().unwrap(), "{run:#}");
    assert_eq!(
        post.key,
        format!("{}-publish-1", run["id"].as_str().unwrap())
    );
    assert_eq!(post.authorization, format!("Bearer {SECRET}"));
    assert_eq!(post.body, json!({"text": draft}));
    let job = stack.get_job(publish["effect_id"].as_str().unwrap()).await;
    assert_eq!(job.0, 404, "an HTTP step is not a job");

    // The history holds the rendered inputs, never the secret.
    let js = async_nats::jetstream::new(stack.nats.client().await);
    let history = Journal::open(js, &NatsConfig::default())
        .await
        .unwrap()
        .read(run["id"].as_str().unwrap())
        .await
        .unwrap();
    let text = serde_json::to_string(&history.events).unwrap();
    assert!(!text.contains(SECRET), "{text}");

    // The same history as server-sent events, whole, then resumed.
    let path = format!("/v1/workflows/runs/{}/events", history_id(&run));
    let all = sse(&stack, &path, None).await;
    assert_eq!(all.len(), history.events.len(), "{all:?}");
    assert_eq!((all[0].0.as_str(), all[0].1.as_str()), ("0", "started"));
    assert_eq!(all.last().unwrap().1, "finished", "{all:?}");
    let resumed = sse(&stack, &path, Some("2")).await;
    assert_eq!(resumed, all[3..], "{resumed:?}");
    // The engine counts the run, and each attempt's effect by kind.
    let text = stack.metrics_text("wf1").await;
    for line in [
        "switchyard_workflow_runs_total{workflow=\"review\",outcome=\"succeeded\"} 1",
        "switchyard_workflow_steps_total{kind=\"model\",outcome=\"succeeded\"} 2",
        "switchyard_workflow_steps_total{kind=\"http\",outcome=\"succeeded\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
    }
    let (status, again) = stack
        .get_json(&format!(
            "/v1/workflows/runs/{}",
            run["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!((status, &again["status"]), (200, &json!("succeeded")));

    // Bad input is refused before anything is kept.
    let (status, refused) = start_run(&stack, "review", json!({"input": {"text": 5}}), 0).await;
    assert_eq!(status, 422, "{refused:#}");
    assert_eq!(refused["error"]["code"], "invalid_request", "{refused:#}");
    let message = refused["error"]["message"].as_str().unwrap();
    assert!(message.contains("/text"), "{message}");
    let (status, _) = start_run(&stack, "nope", json!({"input": {}}), 0).await;
    assert_eq!(status, 404);
    let (status, _) = stack.get_json("/v1/workflows/runs/nope").await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_failing_for_good_undoes_the_earlier_ones_latest_first() {
    let api = Api::default();
    let stack = stack_with(&api).await;

    let (status, run) = start_run(
        &stack,
        "book",
        json!({"input": {"release_fails": false}}),
        60,
    )
    .await;
    assert_eq!(status, 200, "{run:#}");
    assert_eq!(run["status"], "failed", "{run:#}");
    let error = run["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("\"ship\"") && error.contains("http_status"),
        "{run:#}"
    );
    let statuses: Vec<&str> = run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        ["compensated", "compensated", "failed"],
        "{run:#}"
    );
    // The refusal is not retried (`http_status` is not in the default
    // `retry.on`), and each compensation runs once, latest success first.
    let paths: Vec<(String, String)> = api
        .calls()
        .into_iter()
        .map(|c| (c.method, c.path))
        .collect();
    let expected = [
        ("POST", "/reserve"),
        ("POST", "/charge"),
        ("POST", "/ship-refused"),
        ("DELETE", "/refund/p1"),
        ("DELETE", "/release/p0"),
    ];
    assert_eq!(
        paths,
        expected.map(|(m, p)| (m.to_owned(), p.to_owned())),
        "{run:#}"
    );

    // A compensation that keeps failing is retried by its own policy, then
    // the run ends for an operator to finish by hand.
    let (status, run) = start_run(
        &stack,
        "book",
        json!({"input": {"release_fails": true}}),
        60,
    )
    .await;
    assert_eq!(status, 200, "{run:#}");
    assert_eq!(run["status"], "failed_compensation", "{run:#}");
    let reserve = step(&run, "reserve");
    assert_eq!(reserve["status"], "compensation_failed", "{run:#}");
    let undo: Vec<&Value> = reserve["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["compensation"] == true)
        .collect();
    assert_eq!(undo.len(), 2, "{run:#}");
    assert!(
        undo.iter().all(|a| a["error"]["class"] == "unavailable"),
        "{run:#}"
    );
    let error = run["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("compensation of step \"reserve\""),
        "{run:#}"
    );

    // A run cancelled while a step runs (a task no worker takes) stops it
    // and ends cancelled; an ended run cannot be cancelled again.
    let input = json!({"input": {"text": "wait", "whisper": false, "fail": false}});
    let (status, started) = start_run(&stack, "branches", input, 0).await;
    assert_eq!(status, 202, "{started:#}");
    let id = started["id"].as_str().unwrap();
    let cancel = || async {
        let url = stack.broker_url(&format!("/v1/workflows/runs/{id}/cancel"));
        let r = stack.http.post(url).send().await.unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    };
    eventually(
        Duration::from_secs(30),
        Duration::from_millis(50),
        || async {
            let (_, run) = stack.get_json(&format!("/v1/workflows/runs/{id}")).await;
            so(step(&run, "shout")["status"] == "running", || {
                format!("{run:#}")
            })
        },
    )
    .await;
    assert_eq!(cancel().await.0, 202);
    let run = wait_ended(&stack, &[id.to_owned()], Duration::from_secs(30))
        .await
        .remove(0);
    assert_eq!(run["status"], "cancelled", "{run:#}");
    assert!(run["cancel_requested"] == true, "{run:#}");
    let shout = &step(&run, "shout")["attempts"][0];
    assert_eq!(shout["error"]["class"], "cancelled", "{run:#}");
    let (status, refused) = cancel().await;
    assert_eq!(status, 409, "{refused:#}");
    assert_eq!(refused["error"]["code"], "not_cancellable", "{refused:#}");
}

/// Runs of `review` started at once; their ids.
async fn start_many(stack: &Stack, n: usize) -> Vec<String> {
    let starts = (0..n).map(|i| async move {
        let (status, body) = start_run(
            stack,
            "review",
            json!({"input": {"text": format!("Run {i} text")}}),
            0,
        )
        .await;
        assert_eq!(status, 202, "{body:#}");
        body["id"].as_str().unwrap().to_owned()
    });
    futures::future::join_all(starts).await
}

/// Reads each run until every one has ended (a run not found yet, as one
/// started over NATS before an engine took it, has not); the runs.
async fn wait_ended(stack: &Stack, ids: &[String], timeout: Duration) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut ended = HashMap::new();
    while ended.len() < ids.len() {
        for id in ids {
            if ended.contains_key(id) {
                continue;
            }
            let (_, run) = stack.get_json(&format!("/v1/workflows/runs/{id}")).await;
            if run["status"].is_string() && run["status"] != "running" {
                ended.insert(id.clone(), run);
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {} runs ended",
            ended.len(),
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    ids.iter().map(|id| ended.remove(id).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_survive_their_engines_sigkilled_again_and_again() {
    const RUNS: usize = 500;
    let api = Api::default();
    let port = api.serve().await;
    let mut stack = Stack::new(StackOptions {
        workflows: PIPELINE,
        base_latency: "150ms",
        ..StackOptions::default()
    });
    stack.rewrite_config("API_PORT", &port.to_string());
    stack.start_broker();
    stack.start_dispatcher();
    stack.start_agent("n1");
    let secret = [("WORKFLOW_SECRET_CMS_TOKEN", SECRET.to_owned())];
    stack.start_workflows("wf1", &secret);
    stack.start_workflows("wf2", &secret);

    let begun = std::time::Instant::now();
    let ids = start_many(&stack, RUNS).await;
    // Each engine killed while runs are at every step, the other one
    // taking its runs over after their lease, and the killed one back.
    let mut kills = 0;
    for round in 0..6 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let unfinished = api.calls().iter().filter(|c| c.path == "/posts").count() < RUNS;
        if !unfinished {
            break;
        }
        let victim = if round % 2 == 0 { "wf1" } else { "wf2" };
        stack.sigkill(victim);
        kills += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
        stack.start_workflows(victim, &secret);
    }
    assert!(
        kills >= 2,
        "the runs ended before an engine was killed twice"
    );

    let runs = wait_ended(&stack, &ids, Duration::from_secs(240)).await;
    eprintln!(
        "{RUNS} runs ended in {:.1} s, through {kills} engine kills",
        begun.elapsed().as_secs_f64()
    );
    let failed: Vec<&Value> = runs.iter().filter(|r| r["status"] != "succeeded").collect();
    assert!(
        failed.is_empty(),
        "{} runs did not succeed; the first: {:#}",
        failed.len(),
        failed[0]
    );

    // Every model step ran as one job, billed once: the ledger charges
    // exactly two jobs a run.
    let (_, usage) = stack.get_json("/v1/usage").await;
    let charged: u64 = usage["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(charged, 2 * RUNS as u64, "{usage:#}");
    for run in &runs {
        for id in ["draft", "polish", "publish"] {
            let attempts = step(run, id)["attempts"].as_array().unwrap().len();
            assert_eq!(attempts, 1, "{run:#}");
        }
    }
    // A call made again by an engine that took a run over carries the same
    // key, so the API does it once.
    let mut keys: HashMap<String, std::collections::HashSet<String>> = HashMap::new();
    for call in api.calls().into_iter().filter(|c| c.path == "/posts") {
        let run = call.key.split('-').next().unwrap().to_owned();
        keys.entry(run).or_default().insert(call.key);
    }
    assert_eq!(keys.len(), RUNS);
    assert!(keys.values().all(|k| k.len() == 1), "{keys:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn branches_run_side_by_side_a_false_when_skips_and_a_python_worker_serves_tasks() {
    let api = Api::default();
    let stack = stack_with(&api).await;
    let mut python = std::process::Command::new(python_bin());
    python
        .arg(repo_root().join("tests/sdk/workflow_worker.py"))
        .arg(stack.nats.url())
        .arg("shouting");
    let _worker = spawn("worker", python, stack.dir.path());

    let input = json!({"input": {"text": " Hi There ", "whisper": true, "fail": false}});
    let (status, run) = start_run(&stack, "branches", input, 60).await;
    assert_eq!(status, 200, "{run:#}");
    assert_eq!(
        run["output"],
        json!({"shout": "HI THERE", "echo": "HI THERE AGAIN", "whisper": "hi there"}),
        "{run:#}"
    );
    // The two worker steps need only `start`: both were handed out before
    // either ended.
    let (shout, echo) = (
        &step(&run, "shout")["attempts"][0],
        &step(&run, "echo")["attempts"][0],
    );
    assert!(
        shout["started_at_ms"].as_i64() <= echo["ended_at_ms"].as_i64(),
        "{run:#}"
    );
    assert!(
        echo["started_at_ms"].as_i64() <= shout["ended_at_ms"].as_i64(),
        "{run:#}"
    );

    let input = json!({"input": {"text": "quiet", "whisper": false, "fail": false}});
    let (_, run) = start_run(&stack, "branches", input, 60).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert_eq!(step(&run, "whisper")["status"], "skipped", "{run:#}");
    assert_eq!(run["output"]["whisper"], Value::Null, "{run:#}");

    // A task the worker fails is retried by the step's policy, then fails
    // the run with the worker's message.
    let input = json!({"input": {"text": "boom", "whisper": false, "fail": true}});
    let (_, run) = start_run(&stack, "branches", input, 60).await;
    assert_eq!(run["status"], "failed", "{run:#}");
    let attempts = step(&run, "shout")["attempts"].as_array().unwrap().clone();
    assert_eq!(attempts.len(), 2, "{run:#}");
    for a in &attempts {
        assert_eq!(a["error"]["class"], "worker_failed", "{run:#}");
        assert_eq!(a["error"]["message"], "asked to fail", "{run:#}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflow_answers_the_openai_sdk_as_a_model() {
    let api = Api::default();
    let stack = stack_with(&api).await;
    let base = stack.broker_url("/v1");
    let seen = tokio::task::spawn_blocking(move || {
        sdk_script(
            "openai_workflow.py",
            &[base, "assistant".into(), "book".into()],
        )
    })
    .await
    .unwrap();
    let first = expected_echo("alpha beta gamma", 4);
    let answer = expected_echo(&format!("again {first}"), 3);
    assert_eq!(seen["chat"]["content"], answer.as_str(), "{seen:#}");
    assert_eq!(seen["chat"]["model"], "workflow:assistant", "{seen:#}");
    // Both model steps' tokens: 4 and 3.
    assert_eq!(seen["chat"]["completion_tokens"], 7, "{seen:#}");
    assert_eq!(seen["stream"], answer.as_str(), "{seen:#}");
    // The last step's tokens as its job generated them, one chunk each,
    // not the answer in one piece once the run had ended.
    assert_eq!(seen["stream_pieces"], 3, "{seen:#}");
    let run = seen["chat"]["run_id"].as_str().expect("the run's id");
    let (status, record) = stack.get_json(&format!("/v1/workflows/runs/{run}")).await;
    assert_eq!(
        (status, &record["status"]),
        (200, &json!("succeeded")),
        "{record:#}"
    );
    assert_eq!(
        seen["failed"],
        json!({"status": 502, "code": "workflow_failed"}),
        "{seen:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_and_a_worker_run_under_their_own_nats_users() {
    let api = Api::default();
    let port = api.serve().await;
    let mut stack = Stack::new(StackOptions {
        workflows: PIPELINE,
        nats_accounts: true,
        ..StackOptions::default()
    });
    stack.rewrite_config("API_PORT", &port.to_string());
    stack.start_broker();
    stack.start_dispatcher();
    stack.start_agent("node-a");
    stack.start_workflows("wf1", &[]);
    let mut python = std::process::Command::new(python_bin());
    python
        .arg(repo_root().join("tests/sdk/workflow_worker.py"))
        .arg(stack.nats.url_as("worker"))
        .arg("shouting");
    let _worker = spawn("worker", python, stack.dir.path());

    let input = json!({"input": {"text": "accounts", "whisper": false, "fail": false}});
    let (status, run) = start_run(&stack, "branches", input, 60).await;
    assert_eq!(
        (status, &run["status"]),
        (200, &json!("succeeded")),
        "{run:#}"
    );
    assert_eq!(run["output"]["shout"], "ACCOUNTS", "{run:#}");

    // The worker's user answers tasks and nothing else: the platform's
    // streams are out of its reach.
    let worker = stack.nats.client_as("worker").await;
    let refused = worker
        .request("$JS.API.STREAM.INFO.RESULTS", "".into())
        .await;
    assert!(refused.is_err(), "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_started_over_nats_is_kept_at_its_puback_and_a_bad_one_is_refused_where_it_is_read() {
    let api = Api::default();
    let mut stack = Stack::new(StackOptions {
        workflows: PIPELINE,
        broker_extra: WEBHOOKS,
        ..StackOptions::default()
    });
    stack.rewrite_config("API_PORT", &api.serve().await.to_string());
    stack.start_broker();
    stack.start_dispatcher();
    stack.start_agent("n1");
    let js = async_nats::jetstream::new(stack.nats.client().await);
    let publish = |id: &'static str, body: Value| {
        let js = js.clone();
        async move {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", id);
            js.publish_with_headers("sy.wf.start", headers, body.to_string().into())
                .await
                .expect("published")
                .await
                .expect("kept")
        }
    };
    // Kept before any engine runs: the engine starts later and finds it.
    let ack = publish(
        "nats-run-1",
        json!({"workflow": "assistant", "tenant": "acme", "priority": "high",
               "input": {"messages": [{"role": "user", "content": "over nats"}]}}),
    )
    .await;
    assert_eq!(ack.stream, "WFSTART");
    publish(
        "nats-run-2",
        json!({"workflow": "review", "input": {"text": 5}}),
    )
    .await;
    publish("nats-run-3", json!({"workflow": "nope", "input": {}})).await;
    stack.start_workflows("wf1", &[]);

    let ids = ["nats-run-1", "nats-run-2", "nats-run-3"].map(String::from);
    let runs = wait_ended(&stack, &ids, Duration::from_secs(60)).await;
    assert_eq!(runs[0]["status"], "succeeded", "{:#}", runs[0]);
    assert_eq!(
        (&runs[0]["tenant"], &runs[0]["priority"]),
        (&json!("acme"), &json!("high"))
    );
    let answer = expected_echo(&format!("again {}", expected_echo("over nats", 4)), 3);
    assert_eq!(
        runs[0]["output"]["choices"][0]["message"]["content"],
        answer.as_str(),
        "{:#}",
        runs[0]
    );
    for (run, says) in [(&runs[1], "/text"), (&runs[2], "no workflow \"nope\"")] {
        assert_eq!(run["status"], "failed", "{run:#}");
        let error = run["error"].as_str().unwrap_or_default();
        assert!(error.contains(says), "{run:#}");
        assert_eq!(run["input"], Value::Null, "no value is kept: {run:#}");
    }
}
