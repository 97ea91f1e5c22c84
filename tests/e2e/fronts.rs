//! The ways an HTTP client waits for its answer: the OpenAI-compatible
//! front, driven by the official `openai` Python SDK (unmodified,
//! `base_url` pointed at the broker), with the behaviour around it
//! (priority header, client disconnects, errors); and the jobs API's
//! `Prefer: wait` and long-poll.

use std::time::Duration;

use crate::common::*;
use serde_json::{Value, json};

const EXTRA_MODELS: &str = "
  - name: tiny-embed
    kind: embedding
  - name: tiny-cached
    kind: completion
    cache:
      ttl: 1m";

/// A stack whose one simulated agent serves the chat, completion and
/// embedding models, each token taking `per_token`.
fn stack(per_token: &str) -> Stack {
    let mut stack = Stack::new(StackOptions {
        extra_models: EXTRA_MODELS,
        ..StackOptions::default()
    });
    stack.start_broker();
    stack.start_dispatcher();
    let engine = format!(
        "
    kind: simulated
    models: [{CHAT_MODEL}, {TEXT_MODEL}, tiny-embed, tiny-cached]
    slots: 8
    base_latency: 2ms
    per_token_latency: {per_token}"
    );
    stack.start_agent_on("node-a", &engine);
    stack
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_official_openai_sdk_works_unmodified() {
    let stack = stack("1ms");
    let seen = sdk_script("openai_sdk.py", &[stack.broker_url("/v1")]);
    println!("openai SDK {}", seen["sdk_version"]);

    assert_eq!(
        seen["models"],
        json!(["tiny-cached", CHAT_MODEL, "tiny-embed", TEXT_MODEL])
    );
    assert_eq!(
        seen["chat"],
        json!({"content": expected_echo("alpha beta gamma", 5), "finish_reason": "length",
               "prompt_tokens": 3, "completion_tokens": 5})
    );
    // Streamed piece by piece, in OpenAI's chunk format, ending with usage.
    let streamed = &seen["chat_stream"];
    assert_eq!(
        streamed["content"],
        expected_echo("one two three", 7),
        "{seen}"
    );
    assert!(streamed["pieces"].as_u64().unwrap() >= 2, "{seen}");
    assert_eq!(streamed["roles"], json!(["assistant"]), "{seen}");
    assert_eq!(streamed["finish_reason"], "length", "{seen}");
    assert_eq!(streamed["completion_tokens"], 7, "{seen}");

    assert_eq!(
        seen["completion"],
        json!({"text": expected_echo("red green", 3), "usage": 5})
    );
    assert_eq!(seen["completion_stream"], expected_echo("red green", 4));
    assert_eq!(
        seen["embeddings"],
        json!({"count": 2, "dims": 8, "same_text_same_vector": true, "prompt_tokens": 2})
    );
    assert_eq!(
        seen["errors"],
        json!({
            "unknown_model": {"status": 422, "code": "unknown_model"},
            "wrong_endpoint": {"status": 422, "code": "invalid_request"},
            "bad_parameter": {"status": 422, "code": "invalid_request"},
        }),
    );
}

/// Sends `request` and drops it once a job not among those `gone` runs,
/// whenever that is (a client gone before its call began would leave
/// nothing to cancel); that job is then `gone` too.
async fn abandon(stack: &Stack, request: reqwest::RequestBuilder, gone: &mut Vec<String>) {
    let call = request.send();
    tokio::pin!(call);
    let running = eventually(
        Duration::from_secs(10),
        Duration::from_millis(20),
        || async {
            let (_, listed) = stack.get_json("/v1/jobs?limit=10&status=running").await;
            let new = listed["data"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|j| j["id"].as_str())
                .find(|id| !gone.iter().any(|g| g == id));
            new.map(str::to_owned)
                .ok_or_else(|| format!("no new job runs: {listed}"))
        },
    );
    let id = tokio::select! {
        answered = &mut call => panic!("answered before its client left: {answered:?}"),
        id = running => id,
    };
    gone.push(id);
}

/// Every front whose client waits for the answer cancels the job when the
/// client goes away: the jobs API with `Prefer: wait`, the OpenAI front
/// (waiting and streaming) and the KServe front. Each job ends
/// `cancelled`, and the engine is stopped before it finishes any of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_goes_away_cancels_its_job_at_every_front() {
    let mut stack = Stack::new(StackOptions {
        extra_models: "
  - name: tiny-identity
    kind: tensor",
        ..StackOptions::default()
    });
    // A stream's job waits this long for its client to resume it.
    stack.rewrite_config("broker:\n", "broker:\n  stream_resume_grace: 1s\n");
    stack.start_broker();
    stack.start_dispatcher();
    // 50 tokens (or tensor values) at 100 ms: each job runs for seconds.
    stack.start_agent_on(
        "node-a",
        &format!(
            "
    kind: simulated
    models: [{CHAT_MODEL}, tiny-identity]
    slots: 8
    base_latency: 2ms
    per_token_latency: 100ms"
        ),
    );
    let chat = json!({"model": CHAT_MODEL, "max_tokens": 50,
                      "messages": [{"role": "user", "content": "slow words here"}]});

    // The jobs API, waiting for the job.
    let mut gone = Vec::new();
    abandon(
        &stack,
        stack
            .http
            .post(stack.broker_url("/v1/jobs"))
            .header("prefer", "wait=60")
            .json(&json!({"model": CHAT_MODEL, "input": {
                "max_tokens": 50,
                "messages": [{"role": "user", "content": "slow words here"}],
            }})),
        &mut gone,
    )
    .await;
    // The OpenAI front, waiting.
    abandon(
        &stack,
        stack
            .http
            .post(stack.broker_url("/v1/chat/completions"))
            .json(&chat),
        &mut gone,
    )
    .await;
    // The KServe front.
    let tensor = json!({"inputs": [{"name": "x", "shape": [50], "datatype": "INT32",
                                    "data": (0..50).collect::<Vec<i32>>()}]});
    abandon(
        &stack,
        stack
            .http
            .post(stack.broker_url("/v2/models/tiny-identity/infer"))
            .json(&tensor),
        &mut gone,
    )
    .await;
    // The OpenAI front, streaming, whose reader stops reading.
    let mut streaming = chat.clone();
    streaming["stream"] = json!(true);
    let mut response = stack
        .http
        .post(stack.broker_url("/v1/chat/completions"))
        .json(&streaming)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let first = response.chunk().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: {"), "{first:?}");
    drop(response);

    // Every job, whatever front it came through, ends cancelled.
    let (_, listed) = stack.get_json("/v1/jobs?limit=10").await;
    let ids: Vec<String> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 4, "{listed}");
    stack
        .wait_finished_as(&ids, &["cancelled"], Duration::from_secs(10))
        .await;
    // The engine was stopped on each: none ran to its end, though each
    // would have by now.
    let stopped = "switchyard_agent_jobs_total{outcome=\"cancelled\"}";
    eventually(
        Duration::from_secs(10),
        Duration::from_millis(100),
        || async {
            let n = stack.metric("node-a", stopped).await;
            so(n >= 4.0, || format!("{n} of 4 jobs stopped on the engine"))
        },
    )
    .await;
    assert_eq!(stack.metric("node-a", stopped).await, 4.0);
    tokio::time::sleep(Duration::from_secs(6)).await;
    let succeeded = stack
        .metric(
            "node-a",
            "switchyard_agent_jobs_total{outcome=\"succeeded\"}",
        )
        .await;
    assert_eq!(succeeded, 0.0);
    for id in &ids {
        let (_, job) = stack.get_job(id).await;
        assert_eq!(job["status"], "cancelled", "{job}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_front_refuses_what_it_cannot_serve_with_stable_errors() {
    let stack = stack("1ms");
    let post = |path: &str, body: Value, priority: Option<&str>| {
        let mut request = stack.http.post(stack.broker_url(path)).json(&body);
        if let Some(p) = priority {
            request = request.header("x-switchyard-priority", p);
        }
        request.send()
    };
    let chat = json!({"model": CHAT_MODEL, "messages": [{"role": "user", "content": "x"}]});
    let cases = [
        (
            "/v1/chat/completions",
            chat.clone(),
            Some("urgent"),
            422,
            "invalid_request",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": []}),
            None,
            422,
            "invalid_request",
        ),
        (
            "/v1/chat/completions",
            json!({"model": CHAT_MODEL, "messages": [{"role": "user", "content": "x"}], "n": 2}),
            None,
            422,
            "invalid_request",
        ),
        (
            "/v1/chat/completions",
            json!({"model": CHAT_MODEL, "messages": [{"role": "user", "content": "x"}], "stream_options": {"include_usage": true}}),
            None,
            422,
            "invalid_request",
        ),
        (
            "/v1/completions",
            json!({"model": CHAT_MODEL, "prompt": "x"}),
            None,
            422,
            "invalid_request",
        ),
        (
            "/v1/embeddings",
            json!({"model": "tiny-embed", "input": "x", "encoding_format": "hex"}),
            None,
            422,
            "invalid_request",
        ),
    ];
    for (path, body, priority, status, code) in cases {
        let r = post(path, body.clone(), priority).await.unwrap();
        assert_eq!(r.status(), status, "{path} {body}");
        let err: Value = r.json().await.unwrap();
        assert_eq!(err["error"]["code"], code, "{path} {body}: {err}");
    }
    let bad_json = stack
        .http
        .post(stack.broker_url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(bad_json.status(), 400);

    // A good request with a priority is answered, and named by its job.
    let r = post("/v1/chat/completions", chat, Some("critical"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = r.headers()["x-switchyard-job-id"]
        .to_str()
        .unwrap()
        .to_owned();
    // The answer comes from the result itself; the job's record follows.
    let job = &stack
        .wait_finished(std::slice::from_ref(&id), Duration::from_secs(5))
        .await[&id];
    assert_eq!(job["priority"], "critical", "{job}");
    assert_eq!(job["status"], "succeeded", "{job}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_jobs_api_answers_when_the_job_is_done_if_asked_to_wait() {
    // 30 tokens at 100 ms: about 3 s.
    let stack = stack("100ms");
    let submit = |max_tokens: u32, wait: &str| {
        stack
            .http
            .post(stack.broker_url("/v1/jobs"))
            .header("prefer", format!("respond-async, wait={wait}"))
            .json(
                &json!({"model": TEXT_MODEL, "input": {"prompt": "a b", "max_tokens": max_tokens}}),
            )
            .send()
    };

    let quick = submit(2, "10").await.unwrap();
    assert_eq!(quick.status(), 200);
    assert_eq!(quick.headers()["preference-applied"], "wait=10");
    let job: Value = quick.json().await.unwrap();
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["result"]["choices"][0]["text"], "a b", "{job}");
    // The answer is the job's record, as a read of it shows it after.
    let (_, read) = stack.get_job(job["id"].as_str().unwrap()).await;
    assert_eq!(read, job);

    // Not done within the wait: accepted as usual, and goes on.
    let started = std::time::Instant::now();
    let slow = submit(30, "1").await.unwrap();
    assert_eq!(slow.status(), 202);
    assert!(started.elapsed() >= Duration::from_secs(1));
    let id = slow.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Long-poll: the answer comes when the job ends, not before.
    let (_, now) = stack.get_job(&id).await;
    assert_ne!(now["status"], "succeeded", "{now}");
    let (_, polled) = stack.get_json(&format!("/v1/jobs/{id}?wait=20")).await;
    assert_eq!(polled["status"], "succeeded", "{polled}");
    assert_eq!(
        polled["result"]["choices"][0]["text"],
        expected_echo("a b", 30)
    );

    let bad = stack
        .http
        .get(stack.broker_url(&format!("/v1/jobs/{id}?wait=soon")))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 422);
    let err: Value = bad.json().await.unwrap();
    assert_eq!(err["error"]["code"], "invalid_request", "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jobs_are_listed_newest_first_filtered_paged_and_counted() {
    let stack = stack("1ms");
    let mut text_ids = Vec::new();
    for i in 0..5 {
        let id = stack
            .submit_http(&json!({"model": TEXT_MODEL, "input": {"prompt": format!("t{i}")}}))
            .await;
        text_ids.push(id);
    }
    let mut all = text_ids.clone();
    for i in 0..2 {
        all.push(
            stack
                .submit_http(
                    &json!({"model": CHAT_MODEL, "priority": if i == 0 { "high" } else { "normal" },
                    "input": {"messages": [{"role": "user", "content": format!("c{i}")}]}}),
                )
                .await,
        );
    }
    stack.wait_finished(&all, Duration::from_secs(10)).await;
    let list = |query: String| {
        let http = stack.http.clone();
        let url = stack.broker_url(&format!("/v1/jobs?{query}"));
        async move {
            let r = http.get(url).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };

    let mut paged = Vec::new();
    let mut query = format!("model={TEXT_MODEL}&limit=2");
    loop {
        let (status, page) = list(query.clone()).await;
        assert_eq!(status, 200, "{page}");
        let data = page["data"].as_array().unwrap();
        assert!(data.len() <= 2);
        paged.extend(data.iter().map(|j| j["id"].as_str().unwrap().to_owned()));
        match page["next_cursor"].as_str() {
            Some(cursor) => query = format!("model={TEXT_MODEL}&limit=2&cursor={cursor}"),
            None => break,
        }
    }
    let newest_first: Vec<String> = text_ids.iter().rev().cloned().collect();
    assert_eq!(paged, newest_first, "every job once, newest first");

    let (_, chats) = list(format!("model={CHAT_MODEL}&status=succeeded")).await;
    assert_eq!(chats["data"].as_array().unwrap().len(), 2, "{chats}");
    assert_eq!(chats["data"][0]["status"], "succeeded");
    let (_, none) = list("status=failed".into()).await;
    assert_eq!(none["data"], json!([]));
    let (_, later) = list("since=2100-01-01T00:00:00Z".into()).await;
    assert_eq!(later["data"], json!([]));
    let (_, before) = list("until=2100-01-01T00:00:00Z&limit=200".into()).await;
    assert_eq!(before["data"].as_array().unwrap().len(), 7);
    let (_, high) = list("priority=high".into()).await;
    assert_eq!(high["data"].as_array().unwrap().len(), 1, "{high}");
    assert_eq!(high["data"][0]["id"], all[5].as_str(), "the first chat job");
    // A node's jobs: those whose latest attempt ran there.
    let node = before["data"][0]["node"].as_str().unwrap().to_owned();
    let (_, on_node) = list(format!("node={node}&model={TEXT_MODEL}&limit=200")).await;
    assert_eq!(on_node["data"].as_array().unwrap().len(), 5, "{on_node}");
    let (_, elsewhere) = list("node=nowhere".into()).await;
    assert_eq!(elsewhere["data"], json!([]));

    // How they ended, minute by minute: what the console's chart draws.
    let summary = |query: &'static str| {
        let http = stack.http.clone();
        let url = stack.broker_url(&format!("/v1/summary{query}"));
        async move {
            let r = http.get(url).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let (status, counted) = summary("").await;
    assert_eq!(status, 200, "{counted}");
    assert_eq!(counted["totals"], json!({"succeeded": 7}), "{counted}");
    let per_minute: u64 = counted["minutes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["succeeded"].as_u64().unwrap())
        .sum();
    assert_eq!(per_minute, 7, "{counted}");
    let (_, ahead) = summary("?since=2100-01-01T00:00:00Z").await;
    assert_eq!(ahead["totals"], json!({}), "{ahead}");
    for bad in ["?since=2000-01-01T00:00:00Z", "?since=soon", "?colour=red"] {
        let (status, err) = summary(bad).await;
        assert_eq!(status, 422, "{bad}: {err}");
        assert_eq!(err["error"]["code"], "invalid_request", "{bad}: {err}");
    }

    for bad in [
        "status=done",
        "priority=urgent",
        "limit=0",
        "limit=201",
        "cursor=xyz",
        "since=yesterday",
        "colour=red",
    ] {
        let (status, err) = list(bad.into()).await;
        assert_eq!(status, 422, "{bad}: {err}");
        assert_eq!(err["error"]["code"], "invalid_request", "{bad}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_s_events_stream_as_sse_and_resume_after_the_last_seen() {
    let stack = stack("50ms");
    let id = stack
        .submit_http(&json!({"model": TEXT_MODEL, "stream": true,
                             "input": {"prompt": "x y", "max_tokens": 6}}))
        .await;
    let path = format!("/v1/jobs/{id}/events");
    let events = sse(&stack, &path, None).await;
    let names: Vec<&str> = events.iter().map(|(_, e, _)| e.as_str()).collect();
    let lifecycle: Vec<&str> = names.iter().copied().filter(|n| *n != "token").collect();
    assert_eq!(
        lifecycle,
        ["queued", "assigned", "running", "succeeded"],
        "{events:?}"
    );
    let text = |events: &[(String, String, Value)]| -> String {
        events
            .iter()
            .filter(|(_, e, _)| e == "token")
            .map(|(_, _, d)| d["delta"].as_str().unwrap())
            .collect()
    };
    // Every token, those generated before the stream opened among them:
    // they are kept in `TOKENS`.
    assert_eq!(text(&events), expected_echo("x y", 6), "{events:?}");
    let (end_id, _, last) = events.last().unwrap();
    assert_eq!(end_id, "end");
    assert_eq!(
        last["result"]["choices"][0]["text"],
        expected_echo("x y", 6)
    );
    assert_eq!(last["usage"]["completion_tokens"], 6);

    // Reconnecting after `assigned` resumes with what came next: the
    // events and the tokens the client had not had.
    let at = events.iter().position(|(_, e, _)| e == "assigned").unwrap();
    let assigned = &events[at].0;
    assert!(assigned.starts_with('e'), "{assigned}");
    let resumed = sse(&stack, &path, Some(assigned)).await;
    let names: Vec<&str> = resumed
        .iter()
        .map(|(_, e, _)| e.as_str())
        .filter(|e| *e != "token")
        .collect();
    assert_eq!(names, ["running", "succeeded"], "{resumed:?}");
    let had = text(&events[..at]);
    assert_eq!(
        had + &text(&resumed),
        expected_echo("x y", 6),
        "{resumed:?}"
    );
    let after_end = sse(&stack, &path, Some("end")).await;
    let names: Vec<&str> = after_end.iter().map(|(_, e, _)| e.as_str()).collect();
    assert_eq!(names, ["succeeded"]);

    let missing = stack
        .http
        .get(stack.broker_url("/v1/jobs/no-such-job/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_repeated_request_is_answered_from_the_cache_without_a_job() {
    let stack = stack("1ms");
    let call = |body: Value, bypass: bool| {
        let mut request = stack
            .http
            .post(stack.broker_url("/v1/completions"))
            .json(&body);
        if bypass {
            request = request.header("x-switchyard-cache", "bypass");
        }
        async move {
            let r = request.send().await.unwrap();
            assert_eq!(r.status(), 200);
            let header = |name: &str| {
                r.headers()
                    .get(name)
                    .map(|v| v.to_str().unwrap().to_owned())
            };
            let (cache, job) = (header("x-switchyard-cache"), header("x-switchyard-job-id"));
            (cache, job, r.text().await.unwrap())
        }
    };
    let exact = json!({"model": "tiny-cached", "prompt": "p q", "max_tokens": 3, "temperature": 0});

    let (cache, job, first) = call(exact.clone(), false).await;
    assert_eq!(cache.as_deref(), Some("miss"));
    assert!(job.is_some(), "a miss runs a job");
    let (cache, job, again) = call(exact.clone(), false).await;
    assert_eq!(cache.as_deref(), Some("hit"));
    assert_eq!(job, None, "a hit runs nothing");
    assert_eq!(again, first);

    // Sampled text is not cached; a client may bypass the cache.
    let mut sampled = exact.clone();
    sampled["temperature"] = json!(0.7);
    let (cache, job, _) = call(sampled, false).await;
    assert_eq!((cache, job.is_some()), (None, true));
    let (cache, job, _) = call(exact.clone(), true).await;
    assert_eq!((cache.as_deref(), job.is_some()), (Some("bypass"), true));
    // Defaults count: max_tokens left out is another request.
    let mut other = exact.clone();
    other["max_tokens"] = json!(4);
    let (cache, _, _) = call(other, false).await;
    assert_eq!(cache.as_deref(), Some("miss"));

    // Tenants do not share: another tenant's same request is a miss.
    for (tenant, want) in [("t1", "miss"), ("t1", "hit"), ("t2", "miss")] {
        let body = json!({"model": "tiny-cached", "tenant": tenant,
            "input": {"prompt": "p r", "max_tokens": 3, "temperature": 0}});
        let r = stack
            .http
            .post(stack.broker_url("/v1/jobs"))
            .header("prefer", "wait=10")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["x-switchyard-cache"], want, "{tenant}");
    }

    // A hit can stream too.
    let mut streamed = exact.clone();
    streamed["stream"] = json!(true);
    let (cache, job, body) = call(streamed, false).await;
    assert_eq!((cache.as_deref(), job), (Some("hit"), None));
    let text: String = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| {
            serde_json::from_str::<Value>(d).unwrap()["choices"][0]["text"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(text, expected_echo("p q", 3));
    assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");

    let hits = stack
        .metric(
            "broker",
            "switchyard_broker_cache_lookups_total{model=\"tiny-cached\",outcome=\"hit\"}",
        )
        .await;
    assert_eq!(hits, 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_openapi_document_describes_what_the_server_does() {
    let stack = stack("1ms");
    let (_, doc) = stack.get_json("/openapi.json").await;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{doc}");
    let paths = doc["paths"].as_object().unwrap();
    for main in [
        "/v1/jobs",
        "/v1/jobs/{id}",
        "/v1/jobs/{id}/cancel",
        "/v1/jobs/{id}/events",
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/models",
        "/v2/models/{model}/infer",
    ] {
        assert!(paths.contains_key(main), "{main} is not described");
    }
    // Every operation, called with an unknown id or model and an empty
    // body, answers with one of the statuses the document gives it.
    let mut checked = 0;
    for (path, operations) in paths {
        let url = stack.broker_url(
            &path
                .replace("{id}", "no-such-job")
                .replace("{model}", "no-such-model")
                .replace("{name}", "no-such-tenant"),
        );
        for (method, operation) in operations.as_object().unwrap() {
            let request = match method.as_str() {
                "get" => stack.http.get(&url),
                "post" => stack.http.post(&url).json(&json!({})),
                "put" => stack.http.put(&url).json(&json!({})),
                "delete" => stack.http.delete(&url),
                other => panic!("{other} {path} is not expected"),
            };
            let status = request.send().await.unwrap().status().as_u16().to_string();
            let documented = operation["responses"].as_object().unwrap();
            assert!(
                documented.contains_key(&status),
                "{method} {path} answered {status}, documented: {:?}",
                documented.keys().collect::<Vec<_>>()
            );
            checked += 1;
        }
    }
    assert!(checked >= 16, "{checked}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_output_larger_than_a_nats_message_arrives_whole() {
    let mut stack = Stack::new(StackOptions {
        extra_models: "
  - name: tiny-huge
    kind: completion
    max_tokens: 100000",
        ..StackOptions::default()
    });
    stack.start_broker();
    stack.start_dispatcher();
    stack.start_simulated_agent("node-a", &format!("{TEXT_MODEL}, tiny-huge"));
    let client = stack.nats.client().await;
    let mut results = client.subscribe("sy.results.*").await.unwrap();
    client.flush().await.unwrap();
    // 10,000 words of 200 bytes: about 2 MB of output, over NATS' 1 MB.
    let word = "w".repeat(200);
    let prompt = format!("{word} {word}");
    let want = expected_echo(&prompt, 10_000);
    let id = stack
        .submit_http(
            &json!({"model": "tiny-huge", "input": {"prompt": prompt, "max_tokens": 10000}}),
        )
        .await;
    let done = stack
        .wait_finished(std::slice::from_ref(&id), Duration::from_secs(30))
        .await;
    assert_eq!(done[&id]["status"], "succeeded");
    assert_eq!(done[&id]["result"]["choices"][0]["text"], json!(want));

    // On NATS the result names where its output is.
    let msg = tokio::time::timeout(
        Duration::from_secs(5),
        futures::StreamExt::next(&mut results),
    )
    .await
    .unwrap()
    .unwrap();
    let result: switchyard_schemas::JobResult = switchyard_schemas::decode(&msg.payload).unwrap();
    assert_eq!(result.output_ref, Some(format!("{id}.1")));
    assert!(msg.payload.len() < 4096, "the message stays small");

    // A call that waits gets it whole too.
    let r = stack
        .http
        .post(stack.broker_url("/v1/completions"))
        .json(&json!({"model": "tiny-huge", "prompt": prompt, "max_tokens": 10000}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["choices"][0]["text"], json!(want));

    // An object a node's user puts in the stored output's place is not
    // taken for it: the result's proof covers the output's digest.
    let store = async_nats::jetstream::new(client.clone())
        .get_object_store("large-results")
        .await
        .unwrap();
    let tampered = serde_json::to_vec(&json!({"choices": [{"text": "tampered"}]})).unwrap();
    store
        .put(format!("{id}.1").as_str(), &mut tampered.as_slice())
        .await
        .unwrap();
    let events = sse(&stack, &format!("/v1/jobs/{id}/events"), None).await;
    let (_, _, last) = events.last().unwrap();
    assert_ne!(last["result"]["choices"][0]["text"], "tampered", "{last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_jobs_api_shares_the_cache_and_a_hit_is_a_finished_job() {
    let stack = stack("1ms");
    let body = json!({"model": "tiny-cached", "input": {"prompt": "c d", "max_tokens": 2, "temperature": 0}});
    let post = |wait: bool| {
        let mut request = stack.http.post(stack.broker_url("/v1/jobs")).json(&body);
        if wait {
            request = request.header("prefer", "wait=10");
        }
        async move {
            let r = request.send().await.unwrap();
            let cache = r
                .headers()
                .get("x-switchyard-cache")
                .map(|v| v.to_str().unwrap().to_owned());
            (r.status().as_u16(), cache, r.json::<Value>().await.unwrap())
        }
    };
    // A call that waits runs the job and fills the cache.
    let (status, cache, first) = post(true).await;
    assert_eq!((status, cache.as_deref()), (200, Some("miss")), "{first}");
    assert_eq!(
        first["result"]["choices"][0]["text"],
        json!(expected_echo("c d", 2))
    );

    // The same request again, without waiting: a job that is already done.
    let (status, cache, accepted) = post(false).await;
    assert_eq!((status, cache.as_deref()), (202, Some("hit")), "{accepted}");
    assert_eq!(accepted["status"], "succeeded");
    let id = accepted["id"].as_str().unwrap();
    assert_ne!(id, first["id"].as_str().unwrap(), "a job of its own");
    let (_, record) = stack.get_job(id).await;
    assert_eq!(record["status"], "succeeded");
    assert_eq!(record["result"], first["result"]);
    assert_eq!(record["node"], Value::Null, "it ran nowhere");
    let (status, cache, waited) = post(true).await;
    assert_eq!((status, cache.as_deref()), (200, Some("hit")));
    assert_eq!(waited["result"], first["result"]);
}
