//! API keys, roles and tenants: every documented endpoint asks for a key
//! and the role it needs; a tenant's key sees only its tenant's jobs, files
//! and usage, and another tenant's job is a 404; the tenant is the key's,
//! never the client's; revoked and expired keys stop at once; the store
//! holds no usable secret; limits set per key and through the admin API
//! take effect.

use std::time::Duration;

use crate::common::*;
use reqwest::Method;
use serde_json::{Value, json};

pub(crate) fn options() -> StackOptions {
    StackOptions {
        tenants: "[{name: acme}, {name: globex}]",
        broker_extra: "  auth:\n    pepper: test-pepper-0123456789abcdef0123456789abcdef",
        ..StackOptions::default()
    }
}

/// Calls the broker with `key` (none when empty): the status and the JSON
/// body (null when there is none).
pub(crate) async fn call(
    stack: &Stack,
    method: Method,
    path: &str,
    key: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut request = stack.http.request(method, stack.broker_url(path));
    if !key.is_empty() {
        request = request.bearer_auth(key);
    }
    if let Some(body) = body {
        request = request.json(body);
    }
    let r = request.send().await.expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Makes a key through the admin API; its token.
pub(crate) async fn key(stack: &Stack, admin: &str, spec: Value) -> (String, String) {
    let (status, made) = call(stack, Method::POST, "/v1/admin/keys", admin, Some(&spec)).await;
    assert_eq!(status, 201, "{made}");
    (
        made["key"].as_str().unwrap().to_owned(),
        made["id"].as_str().unwrap().to_owned(),
    )
}

pub(crate) fn admin_key(stack: &Stack) -> String {
    let out = stack.cli(&["keys", "create", "--role", "admin", "--name", "root"]);
    assert!(out.status.success(), "{out:?}");
    let made: Value = serde_json::from_slice(&out.stdout).unwrap();
    made["key"].as_str().unwrap().to_owned()
}

fn job(prompt: &str) -> Value {
    json!({"model": TEXT_MODEL, "input": {"prompt": prompt}})
}

pub(crate) fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keys_carry_roles_and_tenants() {
    let stack = Stack::running(options(), &["node-a"]);
    let admin = admin_key(&stack);

    // No key, a malformed one, a well-formed one that does not exist.
    let (status, body) = call(&stack, Method::POST, "/v1/jobs", "", Some(&job("x"))).await;
    assert_eq!((status, code(&body)), (401, "unauthenticated"));
    for bad in [
        "nonsense",
        &format!("sy_{}_{}", "0".repeat(16), "0".repeat(64)),
    ] {
        let (status, body) = call(&stack, Method::GET, "/v1/jobs", bad, None).await;
        assert_eq!((status, code(&body)), (401, "invalid_api_key"), "{bad}");
    }
    // The right id with a wrong secret.
    let last = if admin.ends_with('0') { "1" } else { "0" };
    let forged = format!("{}{last}", &admin[..admin.len() - 1]);
    let (status, _) = call(&stack, Method::GET, "/v1/jobs", &forged, None).await;
    assert_eq!(status, 401, "a key with a wrong secret is refused");

    // Tenants: one more through the API, refused twice.
    let made = json!({"name": "initech", "limits": {"requests_per_minute": 600}});
    let (status, _) = call(
        &stack,
        Method::POST,
        "/v1/admin/tenants",
        &admin,
        Some(&made),
    )
    .await;
    assert_eq!(status, 201);
    let (status, body) = call(
        &stack,
        Method::POST,
        "/v1/admin/tenants",
        &admin,
        Some(&made),
    )
    .await;
    assert_eq!((status, code(&body)), (409, "already_exists"));
    let (_, tenants) = call(&stack, Method::GET, "/v1/admin/tenants", &admin, None).await;
    let names: Vec<&str> = tenants["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["acme", "globex", "initech"]);

    // A key needs a tenant that exists, and admin keys span tenants.
    for bad in [
        json!({"role": "submitter", "tenant": "nobody"}),
        json!({"role": "submitter"}),
        json!({"role": "admin", "tenant": "acme"}),
        json!({"role": "root", "tenant": "acme"}),
    ] {
        let (status, body) = call(&stack, Method::POST, "/v1/admin/keys", &admin, Some(&bad)).await;
        assert_eq!((status, code(&body)), (422, "invalid_request"), "{bad}");
    }
    let (acme, acme_id) = key(
        &stack,
        &admin,
        json!({"role": "submitter", "tenant": "acme"}),
    )
    .await;
    let (acme_reader, _) = key(&stack, &admin, json!({"role": "reader", "tenant": "acme"})).await;
    let (globex, _) = key(
        &stack,
        &admin,
        json!({"role": "submitter", "tenant": "globex"}),
    )
    .await;
    let (operator, _) = key(&stack, &admin, json!({"role": "operator"})).await;

    // The tenant is the key's; the client may not name one.
    let (status, queued) = call(&stack, Method::POST, "/v1/jobs", &acme, Some(&job("a"))).await;
    assert_eq!(status, 202, "{queued}");
    let id = queued["id"].as_str().unwrap().to_owned();
    let mut forged = job("b");
    forged["tenant"] = json!("globex");
    let (status, body) = call(&stack, Method::POST, "/v1/jobs", &acme, Some(&forged)).await;
    assert_eq!((status, code(&body)), (422, "invalid_request"));
    for field in ["status", "cost", "attempt", "node"] {
        let mut forged = job("c");
        forged[field] = json!("x");
        let (status, _) = call(&stack, Method::POST, "/v1/jobs", &acme, Some(&forged)).await;
        assert_eq!(status, 422, "{field} is the server's");
    }
    let (status, record) = call(&stack, Method::GET, &format!("/v1/jobs/{id}"), &acme, None).await;
    assert_eq!((status, record["tenant"].as_str()), (200, Some("acme")));

    // Another tenant's job is not found, whatever is asked of it.
    for (method, path) in [
        (Method::GET, format!("/v1/jobs/{id}")),
        (Method::GET, format!("/v1/jobs/{id}/events")),
        (Method::GET, format!("/v1/jobs/{id}/webhooks")),
        (Method::POST, format!("/v1/jobs/{id}/cancel")),
    ] {
        let (status, body) = call(&stack, method.clone(), &path, &globex, None).await;
        assert_eq!((status, code(&body)), (404, "not_found"), "{method} {path}");
    }
    let (_, listed) = call(&stack, Method::GET, "/v1/jobs", &globex, None).await;
    assert_eq!(
        listed["data"],
        json!([]),
        "globex lists none of acme's jobs"
    );
    let (status, _) = call(&stack, Method::GET, "/v1/jobs?tenant=acme", &globex, None).await;
    assert_eq!(status, 422);
    let (_, listed) = call(&stack, Method::GET, "/v1/jobs", &acme_reader, None).await;
    assert_eq!(listed["data"][0]["id"].as_str(), Some(id.as_str()));

    // Roles.
    let (status, _) = call(
        &stack,
        Method::GET,
        &format!("/v1/jobs/{id}"),
        &operator,
        None,
    )
    .await;
    assert_eq!(status, 200, "an operator reads every tenant's jobs");
    for (k, method, path) in [
        (&acme_reader, Method::POST, "/v1/jobs"),
        (&operator, Method::POST, "/v1/jobs"),
        (&acme, Method::GET, "/v1/admin/keys"),
        (&operator, Method::POST, "/v1/admin/tenants"),
        (&acme, Method::GET, "/v1/admin/dead-letters"),
    ] {
        let (status, body) = call(&stack, method.clone(), path, k, Some(&job("r"))).await;
        assert_eq!((status, code(&body)), (403, "forbidden"), "{method} {path}");
    }

    // Idempotency keys are the tenant's own.
    let mut ids = Vec::new();
    for k in [&acme, &globex] {
        let r = stack
            .http
            .post(stack.broker_url("/v1/jobs"))
            .bearer_auth(k)
            .header("idempotency-key", "same-key")
            .json(&job("i"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        ids.push(r.json::<Value>().await.unwrap()["id"].clone());
    }
    assert_ne!(ids[0], ids[1], "one tenant's key does not answer another's");

    // The OpenAI front takes the same keys and queues for the key's tenant.
    let r = stack
        .http
        .post(stack.broker_url("/v1/completions"))
        .bearer_auth(&globex)
        .json(&json!({"model": TEXT_MODEL, "prompt": "hi", "max_tokens": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let job_id = r.headers()["x-switchyard-job-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let (_, record) = call(
        &stack,
        Method::GET,
        &format!("/v1/jobs/{job_id}"),
        &admin,
        None,
    )
    .await;
    assert_eq!(record["tenant"], "globex");

    // Files belong to their tenant.
    let form = reqwest::multipart::Form::new()
        .text("purpose", "batch")
        .part(
            "file",
            reqwest::multipart::Part::bytes(b"{}\n".to_vec()).file_name("in.jsonl"),
        );
    let r = stack
        .http
        .post(stack.broker_url("/v1/files"))
        .bearer_auth(&acme)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let file = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _) = call(
        &stack,
        Method::GET,
        &format!("/v1/files/{file}"),
        &globex,
        None,
    )
    .await;
    assert_eq!(status, 404);
    let (_, files) = call(&stack, Method::GET, "/v1/files", &globex, None).await;
    assert_eq!(files["data"], json!([]));
    let batch =
        json!({"input_file_id": file, "endpoint": "/v1/completions", "completion_window": "24h"});
    let (status, _) = call(&stack, Method::POST, "/v1/batches", &globex, Some(&batch)).await;
    assert_eq!(status, 404, "another tenant's file cannot start a batch");

    // The dead-letter commands go through the API with an admin key.
    let out = stack.cli(&["dead-letters", "list"]);
    assert!(!out.status.success(), "no key, no dead letters");
    let out = stack.cli_env(&["dead-letters", "list"], &[("SWITCHYARD_API_KEY", &admin)]);
    assert!(out.status.success(), "{out:?}");

    // Revoked: refused at the next request.
    let out = stack.cli(&["keys", "revoke", &acme_id]);
    assert!(out.status.success(), "{out:?}");
    let (status, body) = call(&stack, Method::GET, "/v1/jobs", &acme, None).await;
    assert_eq!((status, code(&body)), (401, "key_revoked"));

    // Expired: refused once its time has passed.
    let soon = time_in(Duration::from_secs(2));
    let (short, _) = key(
        &stack,
        &admin,
        json!({"role": "reader", "tenant": "acme", "expires_at": soon}),
    )
    .await;
    let (status, _) = call(&stack, Method::GET, "/v1/jobs", &short, None).await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (status, body) = call(&stack, Method::GET, "/v1/jobs", &short, None).await;
    assert_eq!((status, code(&body)), (401, "key_expired"));

    // The listing never shows a secret, and the store holds none.
    let (_, keys) = call(&stack, Method::GET, "/v1/admin/keys", &admin, None).await;
    assert!(keys["data"].as_array().unwrap().len() >= 6);
    assert!(!keys.to_string().contains(&globex[20..]));
    let stored = stack.stored_bytes();
    let secret = &globex[20..];
    assert!(!stored.is_empty());
    assert!(
        !stored.windows(secret.len()).any(|w| w == secret.as_bytes()),
        "a key's secret is in the database"
    );
}

/// An RFC 3339 time `after` from now.
fn time_in(after: Duration) -> String {
    let at = std::time::SystemTime::now() + after;
    let secs = at.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let out = std::process::Command::new("date")
        .args(["-u", "-d", &format!("@{secs}"), "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Every operation the API describes asks for a key, and for the role its
/// kind of work needs: a reader may read, only a submitter write, only an
/// admin administer.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_documented_endpoint_checks_its_role() {
    let stack = Stack::running(options(), &[]);
    let admin = admin_key(&stack);
    let (reader, _) = key(&stack, &admin, json!({"role": "reader", "tenant": "acme"})).await;
    let (status, doc) = call(&stack, Method::GET, "/openapi.json", "", None).await;
    assert_eq!(status, 200, "the description is public");
    let public = ["/openapi.json", "/v2/health/live", "/v2/health/ready"];
    let mut checked = 0;
    for (path, ops) in doc["paths"].as_object().unwrap() {
        let concrete = path
            .replace("{id}", "nothing")
            .replace("{model}", TEXT_MODEL)
            .replace("{name}", "acme");
        for method in ops.as_object().unwrap().keys() {
            let method: Method = method.to_uppercase().parse().unwrap();
            let (status, body) = call(&stack, method.clone(), &concrete, "", None).await;
            if public.contains(&path.as_str()) {
                assert_ne!(status, 401, "{method} {path} is public");
                continue;
            }
            assert_eq!(
                (status, code(&body)),
                (401, "unauthenticated"),
                "{method} {path}"
            );
            let (status, body) = call(&stack, method.clone(), &concrete, &reader, None).await;
            let writes = method != Method::GET;
            // The cluster's nodes and queues span tenants: operators only.
            let administers = path.starts_with("/v1/admin/")
                || path.starts_with("/v1/webhooks/")
                || ["/v1/nodes", "/v1/queues"].contains(&path.as_str());
            if writes || administers {
                assert_eq!((status, code(&body)), (403, "forbidden"), "{method} {path}");
            } else {
                assert!(![401, 403].contains(&status), "{method} {path}: {status}");
            }
            checked += 1;
        }
    }
    assert!(checked >= 30, "only {checked} operations checked");
    let (operator, _) = key(&stack, &admin, json!({"role": "operator"})).await;
    for path in ["/v1/nodes", "/v1/queues"] {
        let (status, body) = call(&stack, Method::GET, path, &operator, None).await;
        assert_eq!(status, 200, "an operator reads {path}: {body}");
    }
}

/// A key's own limit holds besides its tenant's, and limits set through
/// the admin API apply within seconds and can be taken back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn key_and_admin_limits_apply() {
    let stack = Stack::running(options(), &["node-a"]);
    let admin = admin_key(&stack);
    let (slow, _) = key(
        &stack,
        &admin,
        json!({"role": "submitter", "tenant": "acme", "limits": {"requests_per_minute": 2}}),
    )
    .await;
    let (free, _) = key(
        &stack,
        &admin,
        json!({"role": "submitter", "tenant": "acme"}),
    )
    .await;
    let (status, _) = call(&stack, Method::POST, "/v1/jobs", &slow, Some(&job("1"))).await;
    assert_eq!(status, 202);
    let (status, body) = call(&stack, Method::POST, "/v1/jobs", &slow, Some(&job("2"))).await;
    assert_eq!((status, code(&body)), (429, "rate_limited"));
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("key_requests_per_minute")
    );
    let (status, _) = call(&stack, Method::POST, "/v1/jobs", &free, Some(&job("3"))).await;
    assert_eq!(status, 202, "the tenant's other key is not limited");

    let (globex, _) = key(
        &stack,
        &admin,
        json!({"role": "submitter", "tenant": "globex"}),
    )
    .await;
    let limits = json!({"requests_per_minute": 1, "burst_requests": 1});
    let (status, _) = call(
        &stack,
        Method::PUT,
        "/v1/admin/tenants/globex/limits",
        &admin,
        Some(&limits),
    )
    .await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut statuses = Vec::new();
    for n in 0..3 {
        let (status, _) = call(
            &stack,
            Method::POST,
            "/v1/jobs",
            &globex,
            Some(&job(&n.to_string())),
        )
        .await;
        statuses.push(status);
    }
    assert_eq!(statuses, [202, 429, 429], "one request a minute");
    let (status, _) = call(
        &stack,
        Method::PUT,
        "/v1/admin/tenants/globex/limits",
        &admin,
        Some(&Value::Null),
    )
    .await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (status, _) = call(&stack, Method::POST, "/v1/jobs", &globex, Some(&job("4"))).await;
    assert_eq!(status, 202, "back to the configuration's: no limit");
    let (status, _) = call(
        &stack,
        Method::PUT,
        "/v1/admin/tenants/nobody/limits",
        &admin,
        Some(&limits),
    )
    .await;
    assert_eq!(status, 404);
}

/// Polls until every job has ended, read with `key`; the jobs as read.
pub(crate) async fn wait_ended(stack: &Stack, key: &str, ids: &[String]) -> Vec<Value> {
    let mut ended = Vec::new();
    for id in ids {
        let job = eventually(
            Duration::from_secs(30),
            Duration::from_millis(100),
            || async {
                let (_, job) = call(stack, Method::GET, &format!("/v1/jobs/{id}"), key, None).await;
                match job["status"] == "succeeded" {
                    true => Ok(job),
                    false => Err(format!("not ended: {job}")),
                }
            },
        )
        .await;
        ended.push(job);
    }
    ended
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keys_and_the_admin_api_bound_queued_and_running_jobs() {
    let mut stack = Stack::new(StackOptions {
        base_latency: "300ms",
        ..options()
    });
    // No node yet: admitted jobs stay queued.
    stack.start_broker();
    stack.start_dispatcher();
    let admin = admin_key(&stack);
    let submitter = |limits: Value, tenant: &'static str| {
        let (stack, admin) = (&stack, &admin);
        async move {
            let spec = json!({"role": "submitter", "tenant": tenant, "limits": limits});
            key(stack, admin, spec).await.0
        }
    };
    let submit = |key: String, n: usize| {
        let stack = &stack;
        async move {
            let mut ids = Vec::new();
            for i in 0..n {
                let body = job(&format!("{key} {i}"));
                let (status, made) = call(stack, Method::POST, "/v1/jobs", &key, Some(&body)).await;
                assert_eq!(status, 202, "{made}");
                ids.push(made["id"].as_str().unwrap().to_owned());
            }
            ids
        }
    };

    let few = submitter(json!({"max_queued_jobs": 2}), "acme").await;
    let few_jobs = submit(few.clone(), 2).await;
    let (status, body) = call(&stack, Method::POST, "/v1/jobs", &few, Some(&job("3"))).await;
    assert_eq!((status, code(&body)), (429, "rate_limited"));
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("key_max_queued_jobs"), "{message}");

    let capped = submitter(json!({"max_running_jobs": 2}), "acme").await;
    let free = submitter(Value::Null, "acme").await;
    let globex = submitter(Value::Null, "globex").await;
    let (status, _) = call(
        &stack,
        Method::PUT,
        "/v1/admin/tenants/globex/limits",
        &admin,
        Some(&json!({"max_running_jobs": 1})),
    )
    .await;
    assert_eq!(status, 200);
    // The brokers hand the bounds to the dispatchers within 2 s.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let capped_jobs = submit(capped, 6).await;
    let free_jobs = submit(free.clone(), 6).await;
    let globex_jobs = submit(globex, 4).await;
    stack.start_agent("node-a");

    // The node has 16 slots: only the bounds hold these keys and tenants
    // back.
    let most = |jobs: Vec<Value>| most_at_once(&jobs.iter().collect::<Vec<_>>());
    assert_eq!(most(wait_ended(&stack, &admin, &capped_jobs).await), 2);
    assert_eq!(most(wait_ended(&stack, &admin, &globex_jobs).await), 1);
    assert!(
        most(wait_ended(&stack, &admin, &free_jobs).await) >= 4,
        "the tenant's other key is not held back"
    );
    // The bounded key's queued jobs ended: its places are free again.
    wait_ended(&stack, &admin, &few_jobs).await;
    eventually(
        Duration::from_secs(10),
        Duration::from_millis(100),
        || async {
            let (status, _) = call(&stack, Method::POST, "/v1/jobs", &few, Some(&job("4"))).await;
            so(status == 202, || format!("places not freed: {status}"))
        },
    )
    .await;
}

/// A thousand guesses at job ids, by two tenants, read nothing of the
/// other's: ids of its jobs, made-up ids and ids in other shapes all answer
/// `404 not_found`, on every route that takes a job id.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_guessed_job_ids_read_nothing_across_tenants() {
    let stack = Stack::running(options(), &["node-a"]);
    let admin = admin_key(&stack);
    let mut keys = Vec::new();
    let mut jobs: Vec<Vec<String>> = Vec::new();
    for tenant in ["acme", "globex"] {
        let (key, _) = key(
            &stack,
            &admin,
            json!({"role": "submitter", "tenant": tenant}),
        )
        .await;
        let mut ids = Vec::new();
        for n in 0..10 {
            let (status, made) = call(
                &stack,
                Method::POST,
                "/v1/jobs",
                &key,
                Some(&job(&format!("{tenant} {n}"))),
            )
            .await;
            assert_eq!(status, 202, "{made}");
            ids.push(made["id"].as_str().unwrap().to_owned());
        }
        keys.push(key);
        jobs.push(ids);
    }
    let mut guesses = 0;
    let mut cross_reads = Vec::new();
    for i in 0..500usize {
        for (me, other) in [(0, 1), (1, 0)] {
            let id = match i % 4 {
                // The other tenant's real jobs.
                0 => jobs[other][i / 4 % jobs[other].len()].clone(),
                1 => uuid::Uuid::now_v7().to_string(),
                2 => format!("{}-{i}", jobs[other][0]),
                _ => format!("job-{i:08x}"),
            };
            let path = match i % 3 {
                0 => format!("/v1/jobs/{id}"),
                1 => format!("/v1/jobs/{id}/webhooks"),
                _ => format!("/v1/jobs/{id}/events"),
            };
            let (status, body) = call(&stack, Method::GET, &path, &keys[me], None).await;
            guesses += 1;
            if status != 404 || code(&body) != "not_found" {
                cross_reads.push((path, status, body));
            }
        }
    }
    assert_eq!(guesses, 1000);
    assert!(
        cross_reads.is_empty(),
        "{} answered: {:?}",
        cross_reads.len(),
        cross_reads.first()
    );
    // Each tenant still reads its own.
    for (me, ids) in jobs.iter().enumerate() {
        for id in ids {
            let (status, _) = call(
                &stack,
                Method::GET,
                &format!("/v1/jobs/{id}"),
                &keys[me],
                None,
            )
            .await;
            assert_eq!(status, 200);
        }
    }
}

/// Guessing keys hits a limit without locking anyone else out behind the
/// ingress: wrong keys count against the client address the trusted proxy
/// reports and against the key id they name; past 20 in a minute, wrong
/// keys from that source are answered `429`, while a valid key is let in
/// from anywhere and another client's first wrong key is still a `401`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn guessing_keys_is_cut_off_after_twenty_wrong_ones() {
    let stack = Stack::running(
        StackOptions {
            broker_extra: "  auth:\n    pepper: test-pepper-0123456789abcdef0123456789abcdef\n    client_address_header: X-Forwarded-For",
            ..options()
        },
        &[],
    );
    let admin = admin_key(&stack);
    let (right, id) = key(&stack, &admin, json!({"role": "reader", "tenant": "acme"})).await;
    // Every request comes from this test's one TCP address, as through an
    // ingress; the proxy's header says who the client is.
    let from = |client: &str, token: &str| {
        stack
            .http
            .get(stack.broker_url("/v1/jobs"))
            .bearer_auth(token)
            .header("x-forwarded-for", format!("198.51.100.7, {client}"))
    };
    let answer = |r: reqwest::Response| async move {
        let status = r.status().as_u16();
        let wait = r
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned());
        let body: Value = r.json().await.unwrap_or(Value::Null);
        (status, code(&body).to_owned(), wait)
    };
    let mut statuses = Vec::new();
    for n in 0..25u64 {
        let guess = format!("sy_{n:016x}_{n:064x}");
        statuses.push(answer(from("10.0.0.1", &guess).send().await.unwrap()).await);
    }
    assert!(statuses[..20].iter().all(|s| s.0 == 401), "{statuses:?}");
    assert!(
        statuses[20..]
            .iter()
            .all(|s| (s.0, s.1.as_str()) == (429, "rate_limited")),
        "{statuses:?}"
    );
    let wait: u64 = statuses[24].2.as_deref().unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    // The guesser's own valid key, and everyone else, are let in.
    let mine = answer(from("10.0.0.1", &right).send().await.unwrap()).await;
    assert_eq!(mine.0, 200, "{mine:?}");
    let other = format!("sy_{:016x}_{:064x}", 999, 999);
    let theirs = answer(from("10.0.0.2", &other).send().await.unwrap()).await;
    assert_eq!(
        theirs.0, 401,
        "another client's first wrong key: {theirs:?}"
    );
    // Guesses at one key from many addresses are cut off at that key.
    let mut spread = Vec::new();
    for n in 0..25u64 {
        let guess = format!("sy_{id}_{n:064x}");
        spread.push(
            answer(from(&format!("10.1.0.{n}"), &guess).send().await.unwrap())
                .await
                .0,
        );
    }
    assert_eq!(
        spread.iter().filter(|s| **s == 401).count(),
        20,
        "{spread:?}"
    );
    assert!(spread[20..].iter().all(|s| *s == 429), "{spread:?}");
    let mine = answer(from("10.1.0.3", &right).send().await.unwrap()).await;
    assert_eq!(mine.0, 200, "the right key still works: {mine:?}");
    // Public routes stay open.
    let health = stack
        .http
        .get(stack.broker_url("/v2/health/live"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);
    assert!(
        stack
            .metric(
                "broker",
                "switchyard_broker_auth_refused_total{code=\"rate_limited\"}"
            )
            .await
            >= 10.0
    );
}
