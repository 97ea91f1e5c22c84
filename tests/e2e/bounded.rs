//! Resources a client can hold are bounded: half-sent requests and idle
//! connections are closed, event streams end with their clients and are
//! capped per tenant, uploads are capped per tenant and overall and leave
//! nothing behind when refused, and the operational endpoints are not on
//! the API port.

use std::time::Duration;

use crate::common::*;
use serde_json::{Value, json};

/// Reads from `s` until the server closes it or `within` passes; whether it
/// closed, and what it sent.
async fn closed_within(s: &mut tokio::net::TcpStream, within: Duration) -> (bool, String) {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let read = tokio::time::timeout(within, s.read_to_end(&mut got)).await;
    (read.is_ok(), String::from_utf8_lossy(&got).into_owned())
}

/// Half-sent requests do not stay open: a connection that never finishes
/// its headers, one silent mid-body, one that sends nothing and one kept
/// alive and then silent are closed after the configured 2 s, and past `max_connections` a new connection is
/// closed at once; once the stalled ones are gone, clients are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn half_sent_requests_are_closed_and_connections_capped() {
    use tokio::io::AsyncWriteExt;
    let stack = Stack::running(
        StackOptions {
            broker_extra: "  http:\n    header_timeout: 2s\n    body_timeout: 2s\n    max_connections: 30",
            ..StackOptions::default()
        },
        &[],
    );
    let port = stack.broker_port;
    let connect = || tokio::net::TcpStream::connect(("127.0.0.1", port));
    let starts: [&[u8]; 4] = [
        b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nx-slow: ",
        b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 60000\r\n\r\n{\"model\": ",
        b"",
        // Kept alive after its answer, then silent.
        b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n",
    ];
    let mut stalled = Vec::new();
    for i in 0..30 {
        let mut s = connect().await.unwrap();
        s.write_all(starts[i % 4]).await.unwrap();
        stalled.push(s);
    }
    // The thirty-first is over the cap.
    let mut over = connect().await.unwrap();
    let (closed, _) = closed_within(&mut over, Duration::from_secs(1)).await;
    assert!(closed, "a connection past the cap stayed open");
    for (i, s) in stalled.iter_mut().enumerate() {
        let (closed, sent) = closed_within(s, Duration::from_secs(10)).await;
        assert!(closed, "stalled connection {i} stayed open");
        assert!(
            sent.is_empty()
                || sent.starts_with(["HTTP/1.1 4", "HTTP/1.1 200"][usize::from(i % 4 == 3)]),
            "{i}: {sent:?}"
        );
    }
    let (status, _) = stack.get_json("/v1/jobs").await;
    assert_eq!(status, 200);
}

/// A client of a job's events on a connection of its own, once it has
/// read the first event.
async fn listen(port: u16, id: &str) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let request = format!("GET /v1/jobs/{id}/events HTTP/1.1\r\nHost: x\r\n\r\n");
    s.write_all(request.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("event: queued") {
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&seen).starts_with("HTTP/1.1 200"));
    s
}

/// Consumers on the `EVENTS` and `TOKENS` streams, as the server counts
/// them: each open event stream replays both.
async fn event_consumers(js: &async_nats::jetstream::Context) -> usize {
    let mut count = 0;
    for name in ["EVENTS", "TOKENS"] {
        let mut stream = js.get_stream(name).await.unwrap();
        count += stream.info().await.unwrap().state.consumer_count;
    }
    count
}

/// Event streams end with their clients: 40 clients that read the first
/// event of a job that never ends and go away leave no consumer behind; a
/// tenant holds at most `max_event_streams_per_tenant` (10 here) at once,
/// past which it gets `429`, while another tenant is served; and a client
/// that reconnects after the `queued` event is not sent it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn event_streams_end_with_their_clients_and_are_capped_per_tenant() {
    let stack = Stack::running(
        StackOptions {
            broker_extra: "  max_event_streams_per_tenant: 10",
            tenants: "[{name: watcher}, {name: other}]",
            ..StackOptions::default()
        },
        &[],
    );
    let js = async_nats::jetstream::new(stack.nats.client().await);
    let before = event_consumers(&js).await;
    // No node: the job stays queued, and its stream open.
    let job =
        |tenant: &str| json!({"model": TEXT_MODEL, "tenant": tenant, "input": {"prompt": "x"}});
    let id = stack.submit_http(&job("watcher")).await;
    let other = stack.submit_http(&job("other")).await;
    let open = |id: String, last: Option<&'static str>| {
        let mut request = stack
            .http
            .get(stack.broker_url(&format!("/v1/jobs/{id}/events")));
        if let Some(last) = last {
            request = request.header("last-event-id", last);
        }
        request.send()
    };
    for _ in 0..4 {
        // Each client reads the first event and then closes its connection,
        // as a browser tab that is shut does.
        let mut clients = Vec::new();
        for _ in 0..10 {
            clients.push(listen(stack.broker_port, &id).await);
        }
        let over = open(id.clone(), None).await.unwrap();
        assert_eq!(over.status(), 429, "the eleventh stream of a tenant");
        let theirs = listen(stack.broker_port, &other).await;
        drop((clients, theirs));
        // Gone with their clients, not with the job.
        eventually(
            Duration::from_secs(3),
            Duration::from_millis(100),
            || async {
                let now = event_consumers(&js).await;
                so(now == before, || {
                    format!("{now} consumers on EVENTS and TOKENS, {before} before")
                })
            },
        )
        .await;
    }
    // Resuming after `queued` does not send it again.
    let mut r = open(id.clone(), Some("queued")).await.unwrap();
    assert_eq!(r.status(), 200);
    let got = tokio::time::timeout(Duration::from_secs(1), r.chunk()).await;
    if let Ok(Ok(Some(chunk))) = got {
        assert!(
            !String::from_utf8_lossy(&chunk).contains("event: queued"),
            "{chunk:?}"
        );
    }
}

/// `POST /v1/files` of `content` with `key` (none when empty), with
/// `extra` form fields after the file: the status and the error code, if
/// any.
async fn upload(
    stack: &Stack,
    key: &str,
    content: Vec<u8>,
    extra: &[(&str, String)],
) -> (u16, String) {
    let mut form = reqwest::multipart::Form::new()
        .text("purpose", "batch")
        .part(
            "file",
            reqwest::multipart::Part::bytes(content).file_name("in.jsonl"),
        );
    for (name, value) in extra {
        form = form.text(name.to_string(), value.clone());
    }
    let mut request = stack.http.post(stack.broker_url("/v1/files"));
    if !key.is_empty() {
        request = request.bearer_auth(key);
    }
    let r = request.multipart(form).send().await.unwrap();
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    (
        status,
        body["error"]["code"].as_str().unwrap_or("").to_owned(),
    )
}

/// Objects in the files bucket, as the server counts them.
async fn stored_objects(js: &async_nats::jetstream::Context) -> usize {
    use futures::StreamExt as _;
    let store = js.get_object_store("files").await.unwrap();
    store.list().await.unwrap().count().await
}

/// Uploads cannot fill the disk: the files bucket has a cap (6,000 bytes
/// here, `507 storage_full`), each refused upload leaves nothing stored
/// (an extra form field, a truncated closing boundary, a `purpose` of a
/// mebibyte), and every form field is bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn uploads_are_capped_and_a_refused_one_leaves_nothing() {
    let mut stack = Stack::new(StackOptions::default());
    stack.launch_broker(
        "broker",
        &[("SWITCHYARD_NATS__MAX_FILE_STORE_BYTES", "6000".to_owned())],
    );
    let js = async_nats::jetstream::new(stack.nats.client().await);
    let line = |n: usize| format!("{}\n", "x".repeat(n - 1)).into_bytes();
    assert_eq!(upload(&stack, "", line(1500), &[]).await.0, 200);
    assert_eq!(stored_objects(&js).await, 1);

    // An extra field after the file.
    let (status, _) = upload(&stack, "", line(100), &[("extra", "x".into())]).await;
    assert_eq!(status, 422);
    // A closing boundary cut short.
    let body = b"--b\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jsonl\"\r\n\r\n{}\n\r\n--b".to_vec();
    let r = stack
        .http
        .post(stack.broker_url("/v1/files"))
        .header("content-type", "multipart/form-data; boundary=b")
        .body(body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error(), "{}", r.status());
    // A purpose of a mebibyte is refused without being read whole: the
    // answer may come while the client is still sending.
    let form = reqwest::multipart::Form::new().text("purpose", "p".repeat(1 << 20));
    let sent = stack
        .http
        .post(stack.broker_url("/v1/files"))
        .multipart(form)
        .send()
        .await;
    match sent {
        Ok(r) => assert_eq!(r.status().as_u16(), 422),
        Err(e) => assert!(e.is_request(), "{e}"),
    }
    assert_eq!(
        stored_objects(&js).await,
        1,
        "refused uploads left bytes behind"
    );

    // The bucket's cap: 1,000-byte files fit until it is reached (each
    // object's metadata, and the markers deleted ones leave, count too),
    // then `507`.
    let mut answers = Vec::new();
    for _ in 0..5 {
        answers.push(upload(&stack, "", line(1000), &[]).await);
    }
    let fitted = answers.iter().take_while(|a| a.0 == 200).count();
    assert!((1..5).contains(&fitted), "{answers:?}");
    assert!(
        answers[fitted..]
            .iter()
            .all(|a| (a.0, a.1.as_str()) == (507, "storage_full")),
        "{answers:?}"
    );
    assert_eq!(stored_objects(&js).await, 1 + fitted);
}

/// A tenant's files together stay within its quota (3,000 bytes here):
/// past it an upload is `413 file_quota_exceeded` and leaves nothing,
/// another tenant is not held back, and deleting a file makes room.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenant_s_files_stay_within_its_quota() {
    let stack = Stack::running(
        StackOptions {
            tenants: "[{name: hoarder}, {name: modest}]",
            broker_extra: "  max_file_bytes_per_tenant: 3000
  auth:
    pepper: test-pepper-0123456789abcdef0123456789abcdef",
            ..StackOptions::default()
        },
        &[],
    );
    let out = stack.cli(&["keys", "create", "--role", "admin", "--name", "root"]);
    let admin: Value = serde_json::from_slice(&out.stdout).unwrap();
    let admin = admin["key"].as_str().unwrap().to_owned();
    let mut keys = Vec::new();
    for tenant in ["hoarder", "modest"] {
        let made = stack
            .http
            .post(stack.broker_url("/v1/admin/keys"))
            .bearer_auth(&admin)
            .json(&json!({"role": "submitter", "tenant": tenant}))
            .send()
            .await
            .unwrap();
        let made: Value = made.json().await.unwrap();
        keys.push(made["key"].as_str().unwrap().to_owned());
    }
    let js = async_nats::jetstream::new(stack.nats.client().await);
    let line = |n: usize| format!("{}\n", "x".repeat(n - 1)).into_bytes();
    let first = upload(&stack, &keys[0], line(2000), &[]).await;
    assert_eq!(first.0, 200, "{first:?}");
    let (status, code) = upload(&stack, &keys[0], line(2000), &[]).await;
    assert_eq!((status, code.as_str()), (413, "file_quota_exceeded"));
    assert_eq!(stored_objects(&js).await, 1);
    assert_eq!(upload(&stack, &keys[1], line(2000), &[]).await.0, 200);
}

/// `/metrics`, `/healthz` and `/readyz` are served on the ops port only: on
/// the API port they need a key like any route and then do not exist,
/// while the API's own public routes stay public.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn operational_endpoints_are_on_the_ops_port_only() {
    let stack = Stack::running(
        StackOptions {
            broker_extra: "  auth:\n    pepper: test-pepper-0123456789abcdef0123456789abcdef",
            ..StackOptions::default()
        },
        &[],
    );
    let out = stack.cli(&["keys", "create", "--role", "admin", "--name", "root"]);
    let admin: Value = serde_json::from_slice(&out.stdout).unwrap();
    let admin = admin["key"].as_str().unwrap();
    let ops = stack.port_of("broker");
    for path in ["/metrics", "/healthz", "/readyz"] {
        let anonymous = stack.http.get(stack.broker_url(path)).send().await.unwrap();
        assert_eq!(anonymous.status(), 401, "API {path} without a key");
        let keyed = stack
            .http
            .get(stack.broker_url(path))
            .bearer_auth(admin)
            .send()
            .await
            .unwrap();
        assert_eq!(keyed.status(), 404, "API {path} with a key");
        let r = stack
            .http
            .get(format!("http://127.0.0.1:{ops}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "ops {path}");
    }
    for path in ["/openapi.json", "/v2/health/live", "/v2/health/ready"] {
        let r = stack.http.get(stack.broker_url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
}
