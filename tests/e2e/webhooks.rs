//! Webhooks end to end: a job's events reach a receiver signed so that the
//! Standard Webhooks reference verifier accepts them, are retried until the
//! receiver takes them (through its downtime and a broker restart), stop at
//! a 410, and never reach an address the guard refuses.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::*;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::IntoResponse;
use serde_json::{Value, json};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// The second secret of a rotation: both sign every delivery.
const NEXT_SECRET: &str = "whsec_c2VjcmV0LXR3by1mb3Itcm90YXRpb24h";
/// Tenant `acme`'s own secret.
const ACME_SECRET: &str = "whsec_YWNtZS1vd24tc2lnbmluZy1zZWNyZXQh";

const BROKER_WEBHOOKS: &str = "  webhooks:
    secrets: [whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw, whsec_c2VjcmV0LXR3by1mb3Itcm90YXRpb24h]
    allow: [127.0.0.1/32]
    retry_schedule: [200ms, 200ms, 300ms, 500ms, 500ms, 500ms, 500ms, 500ms, 500ms, 500ms, 500ms, 500ms, 500ms, 500ms, 500ms, 500ms, 500ms, 500ms, 500ms, 500ms, 500ms, 500ms, 500ms, 500ms, 500ms, 500ms, 500ms, 500ms, 500ms, 500ms]
    poll_interval: 50ms";

const TENANTS: &str = "[{name: acme, webhook: {url: ACME_URL, events: [completed]},
  webhook_secrets: [whsec_YWNtZS1vd24tc2lnbmluZy1zZWNyZXQh]}]";

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    headers: HashMap<String, String>,
    body: String,
    answered: u16,
}

impl Seen {
    fn id(&self) -> &str {
        &self.headers["webhook-id"]
    }
}

#[derive(Default)]
struct Script {
    /// Answers to the attempts of the first event the receiver sees, in
    /// order (status, `Retry-After`); 200 once they run out.
    first_event: VecDeque<(u16, Option<u64>)>,
    /// Paths that always get this status.
    by_path: HashMap<String, u16>,
    seen: Vec<Seen>,
}

/// An HTTP receiver of webhooks on 127.0.0.1.
#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Script>>);

impl Receiver {
    /// Listens on `port` (0: any free one); the port it listens on.
    async fn serve(&self, port: u16) -> u16 {
        self.serve_on("127.0.0.1", port).await
    }

    async fn serve_on(&self, ip: &str, port: u16) -> u16 {
        let listener = tokio::net::TcpListener::bind((ip, port))
            .await
            .expect("receiver port");
        let port = listener.local_addr().expect("receiver address").port();
        let me = self.clone();
        let app =
            axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: String| {
                let me = me.clone();
                async move { me.answer(&uri, &headers, body) }
            });
        tokio::spawn(async move { axum::serve(listener, app).await });
        port
    }

    fn answer(&self, uri: &Uri, headers: &HeaderMap, body: String) -> axum::response::Response {
        let mut script = self.0.lock().unwrap();
        let id = headers
            .get("webhook-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let first = script.seen.first().is_none_or(|s| s.id() == id);
        let (status, retry_after) = match script.by_path.get(uri.path()) {
            Some(status) => (*status, None),
            None if first => script.first_event.pop_front().unwrap_or((200, None)),
            None => (200, None),
        };
        script.seen.push(Seen {
            path: uri.path().to_owned(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
                .collect(),
            body,
            answered: status,
        });
        let status = StatusCode::from_u16(status).unwrap();
        match retry_after {
            Some(secs) => (status, [("retry-after", secs.to_string())]).into_response(),
            None => status.into_response(),
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.0.lock().unwrap().seen.clone()
    }

    /// The ids accepted (2xx) so far.
    fn delivered(&self) -> HashSet<String> {
        self.seen()
            .iter()
            .filter(|s| (200..300).contains(&s.answered))
            .map(|s| s.id().to_owned())
            .collect()
    }

    async fn wait_delivered(&self, ids: &[String], timeout: Duration) {
        eventually(timeout, Duration::from_millis(50), || async {
            let got = self.delivered();
            so(ids.iter().all(|id| got.contains(id)), || {
                format!("webhooks {ids:?} not all delivered; got {got:?}")
            })
        })
        .await
    }
}

fn stack() -> Stack {
    Stack::new(StackOptions {
        broker_extra: BROKER_WEBHOOKS,
        tenants: TENANTS,
        ..StackOptions::default()
    })
}

/// The whole stack, tenant acme's default webhook going to `port`.
fn running(port: u16) -> Stack {
    let mut stack = stack();
    stack.rewrite_config("ACME_URL", &format!("http://127.0.0.1:{port}/acme"));
    stack.start_broker();
    stack.start_dispatcher();
    stack.start_agent("node-a");
    stack
}

fn job(url: &str, events: &[&str], tenant: &str) -> Value {
    json!({"model": TEXT_MODEL, "tenant": tenant, "input": {"prompt": "a b c", "max_tokens": 2},
           "webhook": {"url": url, "events": events}})
}

/// Checks requests with the reference verifier; its answer for each.
fn verify(stack: &Stack, checks: &[(&str, &Seen)]) -> Vec<Value> {
    let file = stack.dir.path().join("webhooks.json");
    let list: Vec<Value> = checks
        .iter()
        .map(|(secret, seen)| json!({"secret": secret, "headers": seen.headers, "body": seen.body}))
        .collect();
    std::fs::write(&file, serde_json::to_vec(&list).unwrap()).unwrap();
    let out = sdk_script("verify_webhooks.py", &[file.display().to_string()]);
    out.as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_are_signed_retried_and_accepted_by_the_reference_verifier() {
    let receiver = Receiver::default();
    // The first attempt fails, the second is told to come back in a second.
    receiver.0.lock().unwrap().first_event = [(500, None), (429, Some(1))].into();
    let port = receiver.serve(0).await;
    let stack = running(port);

    let hook = format!("http://127.0.0.1:{port}/hook");
    let own = stack
        .submit_http(&job(&hook, &["queued", "started", "completed"], "default"))
        .await;
    // No webhook of its own: tenant acme's default.
    let acme = stack
        .submit_http(&json!({"model": TEXT_MODEL, "tenant": "acme", "input": {"prompt": "x"}}))
        .await;
    let expected: Vec<String> = ["1_queued", "1_started", "1_completed"]
        .iter()
        .map(|e| format!("msg_{own}_{e}"))
        .chain([format!("msg_{acme}_1_completed")])
        .collect();
    receiver
        .wait_delivered(&expected, Duration::from_secs(30))
        .await;

    let seen = receiver.seen();
    let first = &seen[0];
    let tries: Vec<&Seen> = seen.iter().filter(|s| s.id() == first.id()).collect();
    let answers: Vec<u16> = tries.iter().map(|s| s.answered).collect();
    assert_eq!(answers, [500, 429, 200], "retried until delivered");
    assert!(
        tries.iter().all(|s| s.body == first.body),
        "a retry carries the same webhook-id and body"
    );

    // The reference verifier accepts every delivery with either secret of
    // the rotation, and acme's with acme's own secret only.
    let mine: Vec<&Seen> = seen.iter().filter(|s| s.path == "/hook").collect();
    let theirs = seen.iter().find(|s| s.path == "/acme").unwrap();
    let mut checks: Vec<(&str, &Seen)> = mine.iter().map(|s| (SECRET, *s)).collect();
    checks.extend(mine.iter().map(|s| (NEXT_SECRET, *s)));
    checks.push((ACME_SECRET, theirs));
    checks.push((SECRET, theirs));
    let verdicts = verify(&stack, &checks);
    let n = mine.len();
    for v in &verdicts[..2 * n + 1] {
        assert!(v.get("refused").is_none(), "verifier refused: {v}");
    }
    assert!(
        verdicts[2 * n + 1].get("refused").is_some(),
        "another tenant's secret must not verify acme's deliveries"
    );

    let completed = verdicts[..n]
        .iter()
        .find(|v| v["type"] == "job.completed")
        .unwrap();
    assert_eq!(completed["data"]["id"], json!(own));
    assert_eq!(completed["data"]["status"], "succeeded");
    assert_eq!(
        completed["data"]["result"]["choices"][0]["text"],
        json!(expected_echo("a b c", 2))
    );
    assert_eq!(verdicts[2 * n]["data"]["tenant"], "acme");

    // Every attempt is on record (once the last one's answer is).
    let first_job = serde_json::from_str::<Value>(&first.body).unwrap()["data"]["id"].clone();
    let first_record = eventually(
        Duration::from_secs(10),
        Duration::from_millis(50),
        || async {
            let path = format!("/v1/jobs/{}/webhooks", first_job.as_str().unwrap());
            let (status, listed) = stack.get_json(&path).await;
            assert_eq!(status, 200);
            let record = listed["data"]
                .as_array()
                .unwrap()
                .iter()
                .find(|d| d["webhook_id"] == json!(first.id()))
                .cloned()
                .unwrap();
            match record["state"] == "delivered" {
                true => Ok(record),
                false => Err(record.to_string()),
            }
        },
    )
    .await;
    let codes: Vec<&Value> = first_record["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| &a["status"])
        .collect();
    assert_eq!(codes, [&json!(500), &json!(429), &json!(200)]);
    let metrics = stack.metrics_text("broker").await;
    assert!(
        metrics.contains("switchyard_broker_webhook_attempts_total{outcome=\"retry\"} 2"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_receiver_down_through_a_broker_restart_gets_every_event_once_back() {
    let port = free_port();
    let mut stack = running(port);
    let hook = format!("http://127.0.0.1:{port}/hook");
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(
            stack
                .submit_http(&job(&hook, &["completed"], "default"))
                .await,
        );
    }
    stack.wait_finished(&ids, Duration::from_secs(20)).await;

    // Nothing listens yet: every event fails its first attempts.
    let listed = eventually(
        Duration::from_secs(20),
        Duration::from_millis(100),
        || async {
            let (_, listed) = stack
                .get_json(&format!("/v1/jobs/{}/webhooks", ids[4]))
                .await;
            let attempts = listed["data"][0]["attempts"].as_array().map_or(0, Vec::len);
            match attempts >= 2 {
                true => Ok(listed),
                false => Err(format!("no failed attempts: {listed}")),
            }
        },
    )
    .await;
    let error = listed["data"][0]["attempts"][0]["error"].as_str().unwrap();
    assert!(error.contains("refused"), "{error}");
    assert_eq!(listed["data"][0]["state"], "pending");

    // The broker dies; the receiver comes up; a new broker sends the rest.
    stack.sigkill("broker");
    let receiver = Receiver::default();
    receiver.serve(port).await;
    stack.start_broker();
    let expected: Vec<String> = ids
        .iter()
        .map(|id| format!("msg_{id}_1_completed"))
        .collect();
    receiver
        .wait_delivered(&expected, Duration::from_secs(30))
        .await;
    let seen = receiver.seen();
    assert!(
        seen.iter().all(|s| expected.contains(&s.id().to_owned())),
        "only the events asked for"
    );
    let checks: Vec<(&str, &Seen)> = seen.iter().map(|s| (SECRET, s)).collect();
    for v in verify(&stack, &checks) {
        assert_eq!(v["type"], "job.completed", "{v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_410_disables_the_endpoint_until_it_is_enabled_again() {
    let receiver = Receiver::default();
    receiver.0.lock().unwrap().by_path = [("/gone".to_owned(), 410)].into();
    let port = receiver.serve(0).await;
    let stack = running(port);

    let gone = format!("http://127.0.0.1:{port}/gone");
    let first = stack.submit_http(&job(&gone, &["queued"], "default")).await;
    eventually(
        Duration::from_secs(20),
        Duration::from_millis(50),
        || async {
            let (_, disabled) = stack.get_json("/v1/webhooks/disabled").await;
            so(disabled["data"][0]["url"] == json!(gone), || {
                format!("the 410 did not disable {gone}: {disabled}")
            })
        },
    )
    .await;
    let second = stack
        .submit_http(&job(&gone, &["completed"], "default"))
        .await;
    stack
        .wait_finished(std::slice::from_ref(&second), Duration::from_secs(20))
        .await;
    // Give the sender time to (wrongly) try the later event.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(receiver.seen().len(), 1, "one 410, then nothing more");
    let (_, listed) = stack.get_json(&format!("/v1/jobs/{second}/webhooks")).await;
    assert_eq!(listed["data"][0]["state"], "disabled");
    assert_eq!(listed["data"][0]["attempts"], json!([]));

    // The receiver is back; an operator enables it and the held events go.
    receiver.0.lock().unwrap().by_path.clear();
    let (status, enabled) = enable(&stack, &gone).await;
    assert_eq!(status, 200);
    assert_eq!(enabled["resumed"], 2, "{enabled}");
    receiver
        .wait_delivered(
            &[
                format!("msg_{first}_1_queued"),
                format!("msg_{second}_1_completed"),
            ],
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(enable(&stack, &gone).await.0, 404, "no longer disabled");
}

/// `POST /v1/webhooks/enable` for `url`: the status and the body.
async fn enable(stack: &Stack, url: &str) -> (u16, Value) {
    let r = stack
        .http
        .post(stack.broker_url("/v1/webhooks/enable"))
        .json(&json!({ "url": url }))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhooks_to_internal_addresses_are_refused_and_reach_nothing() {
    // A canary on a loopback address that the allowlist does not cover.
    let canary = Receiver::default();
    let port = canary.serve_on("127.0.0.2", 0).await;

    let mut stack = stack();
    stack.rewrite_config("ACME_URL", "http://127.0.0.1:9/acme");
    stack.start_broker();
    for url in [
        format!("http://127.0.0.2:{port}/x"),
        format!("http://[::1]:{port}/x"),
        format!("http://[::ffff:127.0.0.2]:{port}/x"),
        format!("http://2130706434:{port}/x"),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "http://10.0.0.1/x".to_owned(),
        "http://100.100.100.200/x".to_owned(),
        "http://[fd00:ec2::254]/x".to_owned(),
        format!("ftp://127.0.0.1:{port}/x"),
        format!("http://user:pw@127.0.0.1:{port}/x"),
    ] {
        let r = stack
            .http
            .post(stack.broker_url("/v1/jobs"))
            .json(&job(&url, &["queued"], "default"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 422, "{url}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "webhook_refused", "{url}: {body}");
    }
    // Every event type is known; an unknown one is a clear error.
    let r = stack
        .http
        .post(stack.broker_url("/v1/jobs"))
        .json(&job("http://127.0.0.1:9/x", &["finished"], "default"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(canary.seen().is_empty(), "the canary was reached");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelled_and_expired_jobs_send_their_events() {
    let receiver = Receiver::default();
    let port = receiver.serve(0).await;
    let mut stack = stack();
    stack.rewrite_config("ACME_URL", &format!("http://127.0.0.1:{port}/acme"));
    // No node: the jobs wait until they are cancelled or expire.
    stack.start_broker();
    stack.start_dispatcher();
    let hook = format!("http://127.0.0.1:{port}/hook");
    let cancelled = stack
        .submit_http(&job(&hook, &["cancelled", "expired"], "default"))
        .await;
    let mut late = job(&hook, &["expired"], "default");
    late["deadline_ms"] = json!(switchyard_schemas::now_ms() + 500);
    let expired = stack.submit_http(&late).await;
    let r = stack
        .http
        .post(stack.broker_url(&format!("/v1/jobs/{cancelled}/cancel")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let expected = [
        format!("msg_{cancelled}_1_cancelled"),
        format!("msg_{expired}_1_expired"),
    ];
    receiver
        .wait_delivered(&expected, Duration::from_secs(20))
        .await;
    let seen = receiver.seen();
    assert_eq!(seen.len(), 2, "one event each");
    let checks: Vec<(&str, &Seen)> = seen.iter().map(|s| (SECRET, s)).collect();
    let mut types: Vec<String> = verify(&stack, &checks)
        .iter()
        .map(|v| format!("{} {}", v["type"], v["data"]["status"]))
        .collect();
    types.sort();
    assert_eq!(
        types,
        [
            "\"job.cancelled\" \"cancelled\"",
            "\"job.expired\" \"expired\""
        ]
    );
}

/// One tenant's receiver takes connections and never answers, and that
/// tenant has twenty events due: it holds at most its share of the
/// delivery slots (2 of 4 here), so another tenant's event goes out while
/// the hung attempts wait out their 5 s timeout. The broker's environment
/// names the hung listener as its HTTP proxy, which webhooks do not use.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hung_receiver_holds_only_its_tenant_s_share_of_deliveries() {
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hung_port = hung.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = hung.accept().await {
            held.push(socket);
        }
    });
    let receiver = Receiver::default();
    let port = receiver.serve(0).await;
    let mut stack = Stack::new(StackOptions {
        broker_extra: "  webhooks:
    secrets: [whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw]
    allow: [127.0.0.1/32]
    timeout: 5s
    concurrency: 4
    tenant_concurrency: 2
    poll_interval: 50ms",
        tenants: "[{name: stuck}, {name: prompt}]",
        ..StackOptions::default()
    });
    let proxy = format!("http://127.0.0.1:{hung_port}");
    stack.launch_broker(
        "broker",
        &[("HTTP_PROXY", proxy.clone()), ("ALL_PROXY", proxy)],
    );
    stack.start_dispatcher();
    stack.start_agent("node-a");
    let hang_url = format!("http://127.0.0.1:{hung_port}/hang");
    let mut stuck = Vec::new();
    for _ in 0..20 {
        stuck.push(
            stack
                .submit_http(&job(&hang_url, &["completed"], "stuck"))
                .await,
        );
    }
    stack.wait_finished(&stuck, Duration::from_secs(20)).await;
    // The hung tenant's attempts are under way.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let url = format!("http://127.0.0.1:{port}/prompt");
    let id = stack
        .submit_http(&job(&url, &["completed"], "prompt"))
        .await;
    stack
        .wait_finished(std::slice::from_ref(&id), Duration::from_secs(10))
        .await;
    eventually(
        Duration::from_secs(4),
        Duration::from_millis(50),
        || async {
            let seen = receiver.seen();
            so(seen.iter().any(|s| s.answered == 200), || {
                format!("the other tenant's event has not arrived: {seen:?}")
            })
        },
    )
    .await;
}
