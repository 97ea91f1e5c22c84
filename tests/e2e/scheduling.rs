//! Queue policy against a real nats-server: bounded queues, and the backlog
//! held in JetStream rather than in any process.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::common::*;
use async_nats::HeaderMap;
use serde_json::{Value, json};

fn text(priority: &str, prompt: &str) -> Value {
    json!({"model": TEXT_MODEL, "priority": priority, "input": {"prompt": prompt}})
}

/// A broker and a dispatcher with room for `max_queued` jobs a queue, and
/// no agent: nothing leaves a queue until one is started.
fn without_agents(max_queued: u32) -> Stack {
    let mut stack = Stack::new(StackOptions {
        max_queued,
        ..StackOptions::default()
    });
    stack.start_broker();
    stack.start_dispatcher();
    stack
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_queue_answers_429_and_never_a_202_it_cannot_hold() {
    let mut stack = without_agents(5);
    let mut accepted = Vec::new();
    for i in 0..5 {
        accepted.push(
            stack
                .submit_http(&text("batch", &format!("fill {i}")))
                .await,
        );
    }
    let r = stack
        .http
        .post(stack.broker_url("/v1/jobs"))
        .json(&text("batch", "one too many"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "2");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "queue_full", "{body}");

    // The bound is per queue: another priority of the same model still has room.
    accepted.push(stack.submit_http(&text("critical", "other queue")).await);

    // NATS clients hear the same in the admit reply.
    let client = stack.nats.client().await;
    let reply = client
        .request(
            "sy.admit.batch",
            text("batch", "via nats").to_string().into(),
        )
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(v["error"]["code"], "queue_full", "{v}");

    // Once an agent drains the queue, every accepted job completes and the
    // queue takes work again.
    stack.start_agent("node-a");
    let done = stack
        .wait_finished(&accepted, Duration::from_secs(30))
        .await;
    assert!(done.values().all(|r| r["status"] == "succeeded"));
    stack.submit_http(&text("batch", "room again")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn durable_submissions_wait_while_their_queue_is_full_and_are_bounded_too() {
    let mut stack = without_agents(3);
    let js = async_nats::jetstream::new(stack.nats.client().await);
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            stack
                .submit_http(&text("normal", &format!("fill {i}")))
                .await,
        );
    }
    let publish = |id: String| {
        let js = js.clone();
        async move {
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", id.as_str());
            js.publish_with_headers(
                "sy.submit.normal",
                headers,
                text("normal", &id).to_string().into(),
            )
            .await
            .unwrap()
            .await
        }
    };
    // JOBS is full: these are kept in SUBMIT and wait there, up to its bound.
    for i in 0..3 {
        let id = format!("waits-{i}");
        publish(id.clone()).await.expect("room in SUBMIT");
        ids.push(id);
    }
    let refused = publish("waits-3".into()).await;
    assert!(
        refused.is_err(),
        "the server refuses beyond the bound: {refused:?}"
    );
    let mut jobs = js.get_stream("JOBS").await.unwrap();
    assert_eq!(
        jobs.info().await.unwrap().state.messages,
        3,
        "JOBS holds its bound"
    );

    stack.start_agent("node-a");
    let done = stack.wait_finished(&ids, Duration::from_secs(30)).await;
    assert!(
        done.values().all(|r| r["status"] == "succeeded"),
        "{done:?}"
    );
}

const FAULTS: &str = r#"[{class: overloaded, prompt_contains: poison}, {class: invalid_input, prompt_contains: fatal}]"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_poison_job_is_dead_lettered_after_its_attempts_and_others_are_unaffected() {
    let stack = Stack::running(
        StackOptions {
            faults: FAULTS,
            ..StackOptions::default()
        },
        &["node-a", "node-b"],
    );
    let poison = stack.submit_http(&text("normal", "a poison pill")).await;
    let fatal = stack.submit_http(&text("normal", "a fatal request")).await;
    let mut good = Vec::new();
    for i in 0..10 {
        good.push(
            stack
                .submit_http(&text("normal", &format!("good {i}")))
                .await,
        );
    }
    let mut all = good.clone();
    all.extend([poison.clone(), fatal.clone()]);
    let done = stack.wait_finished(&all, Duration::from_secs(30)).await;

    for id in &good {
        assert_eq!(done[id]["status"], "succeeded", "{}", done[id]);
        assert_eq!(done[id]["attempt"], 1);
    }
    // Retryable: three attempts (the model's default), then a final failure
    // with the last error, and a dead letter holding every attempt.
    let p = &done[&poison];
    assert_eq!(p["status"], "failed", "{p}");
    assert_eq!(p["attempt"], 3, "{p}");
    assert_eq!(p["error"]["code"], "overloaded", "{p}");
    assert!(
        p["error"]["message"]
            .as_str()
            .unwrap()
            .contains("after 3 attempts"),
        "{p}"
    );
    let js = async_nats::jetstream::new(stack.nats.client().await);
    let dead = js.get_stream("DEAD").await.unwrap();
    let letter = dead
        .direct_get_last_for_subject(format!("sy.dead.{poison}"))
        .await
        .unwrap();
    let letter: switchyard_schemas::DeadLetter =
        switchyard_schemas::decode(&letter.payload).unwrap();
    assert_eq!(letter.job.failures.len(), 3);
    let nodes: std::collections::HashSet<&str> = letter.job.failed_nodes().collect();
    assert_eq!(
        nodes.len(),
        2,
        "a retry prefers a node that has not failed it: {nodes:?}"
    );

    // Fatal: fails at once, never retried, not a dead letter.
    let f = &done[&fatal];
    assert_eq!(
        (f["status"].as_str(), f["attempt"].as_u64()),
        (Some("failed"), Some(1)),
        "{f}"
    );
    assert_eq!(f["error"]["code"], "invalid_input");
    assert!(
        dead.direct_get_last_for_subject(format!("sy.dead.{fatal}"))
            .await
            .is_err(),
        "fatal failures are not dead letters"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_failed_by_one_node_is_retried_on_another() {
    let mut stack = Stack::running(StackOptions::default(), &["node-b"]);
    stack.start_faulty_agent("node-a", "[{class: engine_unavailable}]");
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(stack.submit_http(&text("high", &format!("job {i}"))).await);
    }
    let done = stack.wait_finished(&ids, Duration::from_secs(30)).await;
    let mut retried = 0;
    for r in done.values() {
        assert_eq!(r["status"], "succeeded", "{r}");
        assert_eq!(r["node"], "node-b", "{r}");
        if r["attempt"] == 2 {
            retried += 1;
        }
    }
    assert!(retried > 0, "node-a took no job: the test proved nothing");
}

async fn post_with_key(stack: &Stack, key: &str, body: &Value) -> reqwest::Response {
    stack
        .http
        .post(stack.broker_url("/v1/jobs"))
        .header("idempotency-key", key)
        .json(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idempotency_key_makes_one_job_however_often_it_is_sent() {
    let stack = Stack::running(StackOptions::default(), &["node-a"]);
    let counter = ResultCounter::start(&stack.nats.client().await).await;
    let body = text("normal", "exactly once please");

    // Ten at once with one key: one job; each answer names it or says "in flight".
    let answers =
        futures::future::join_all((0..10).map(|_| post_with_key(&stack, "order-42", &body))).await;
    let mut ids = std::collections::HashSet::new();
    for r in answers {
        match r.status().as_u16() {
            202 => {
                let v: Value = r.json().await.unwrap();
                ids.insert(v["id"].as_str().unwrap().to_owned());
            }
            409 => {
                let v: Value = r.json().await.unwrap();
                assert_eq!(v["error"]["code"], "idempotency_conflict");
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(ids.len(), 1, "{ids:?}");
    let id = ids.into_iter().next().unwrap();
    stack
        .wait_finished(std::slice::from_ref(&id), Duration::from_secs(20))
        .await;

    // Later, the same key again: the same job, now finished, and no new run.
    let again = post_with_key(&stack, "order-42", &body).await;
    assert_eq!(again.status(), 202);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let v: Value = again.json().await.unwrap();
    assert_eq!(
        (v["id"].as_str(), v["status"].as_str()),
        (Some(id.as_str()), Some("succeeded"))
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let results = counter.snapshot();
    assert_eq!(results.len(), 1, "one job ran: {results:?}");

    // A refused request does not hold its key.
    let refused = post_with_key(&stack, "order-43", &json!({"model": "gpt-9", "input": {}})).await;
    assert_eq!(refused.status(), 422);
    let fixed = post_with_key(&stack, "order-43", &text("normal", "fixed")).await;
    assert_eq!(fixed.status(), 202);
    assert!(fixed.headers().get("idempotent-replayed").is_none());
    let bad_key = post_with_key(&stack, "", &body).await;
    assert_eq!(bad_key.status(), 422);
}

/// One key sent several times at once while the queue is full: the first
/// request records its job and is refused by the queue, which takes the
/// record back. A repeat that reads the record in between must not be told
/// `202` for a job that never reaches the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_sent_again_while_its_first_request_is_refused_is_never_accepted() {
    let stack = without_agents(1);
    let first = stack.submit_http(&text("batch", "fill")).await;
    let body = text("batch", "one too many");
    let mut answers: BTreeMap<(u16, String), usize> = BTreeMap::new();
    for key in 0..40 {
        let key = format!("full-{key}");
        let sent = futures::future::join_all((0..8).map(|_| post_with_key(&stack, &key, &body)));
        for r in sent.await {
            let status = r.status().as_u16();
            let v: Value = r.json().await.unwrap();
            let code = v["error"]["code"].as_str().unwrap_or_default().to_owned();
            *answers.entry((status, code)).or_default() += 1;
        }
    }
    assert!(
        answers.keys().all(|(status, code)| matches!(
            (status, code.as_str()),
            (429, "queue_full") | (409, "idempotency_conflict")
        )),
        "{answers:?}"
    );
    assert!(
        answers.contains_key(&(429, "queue_full".to_owned())),
        "{answers:?}"
    );
    let (_, listed) = stack.get_json("/v1/jobs").await;
    assert_eq!(listed["data"][0]["id"], first.as_str(), "{listed}");
    assert_eq!(listed["data"].as_array().map(Vec::len), Some(1), "{listed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_nats_client_id_sent_again_after_the_dedup_window_does_not_run_twice() {
    let stack = Stack::running(
        StackOptions {
            duplicate_window: "1s",
            ..StackOptions::default()
        },
        &["node-a"],
    );
    let counter = ResultCounter::start(&stack.nats.client().await).await;
    let js = async_nats::jetstream::new(stack.nats.client().await);
    let submit = || async {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", "client-7");
        js.publish_with_headers(
            "sy.submit.normal",
            headers,
            text("normal", "only once").to_string().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap()
    };
    submit().await;
    stack
        .wait_finished(&["client-7".to_owned()], Duration::from_secs(20))
        .await;
    // Past the server's window the publish is stored again...
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let ack = submit().await;
    assert!(!ack.duplicate, "the server no longer remembers the id");
    // ...and the broker, which does, takes it without queueing the job again.
    eventually(
        Duration::from_secs(10),
        Duration::from_millis(20),
        || async {
            let submit = js.get_stream("SUBMIT").await.unwrap();
            let waiting = submit.cached_info().state.messages;
            so(waiting == 0, || "the intake has not taken it".into())
        },
    )
    .await;
    let mut jobs = js.get_stream("JOBS").await.unwrap();
    assert_eq!(
        jobs.info().await.unwrap().state.messages,
        0,
        "not queued again"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(counter.snapshot().get("client-7"), Some(&1));
    assert_eq!(stack.get_job("client-7").await.1["attempt"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dead_letters_are_listed_and_replayed_from_the_cli() {
    let mut stack = Stack::new(StackOptions::default());
    stack.start_broker();
    stack.start_dispatcher();
    stack.start_faulty_agent("node-a", "[{class: overloaded, prompt_contains: poison}]");
    let id = stack.submit_http(&text("normal", "poison, for now")).await;
    let done = stack
        .wait_finished(std::slice::from_ref(&id), Duration::from_secs(30))
        .await;
    assert_eq!(done[&id]["status"], "failed");

    let out = stack.cli(&["dead-letters", "list"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let letters = listed["dead_letters"].as_array().unwrap();
    assert_eq!(letters.len(), 1, "{listed}");
    assert_eq!(letters[0]["job_id"], id.as_str());
    assert_eq!(letters[0]["attempts"], 3);
    assert_eq!(letters[0]["failures"][2]["error"]["class"], "overloaded");

    // The cause is fixed (a healthy node replaces the faulty one): replay.
    stack.sigkill("node-a");
    stack.start_agent("node-b");
    let out = stack.cli(&["dead-letters", "replay", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let replayed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(replayed["attempt"], 4, "{replayed}");
    let done = stack
        .wait_finished(std::slice::from_ref(&id), Duration::from_secs(30))
        .await;
    let r = &done[&id];
    assert_eq!(
        (r["status"].as_str(), r["attempt"].as_u64()),
        (Some("succeeded"), Some(4)),
        "{r}"
    );
    assert_eq!(r["node"], "node-b");
    assert!(r["error"].is_null());

    // Gone from the dead letters; a second replay finds nothing.
    let out = stack.cli(&["dead-letters", "list"]);
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        listed["dead_letters"].as_array().unwrap().len(),
        0,
        "{listed}"
    );
    let out = stack.cli(&["dead-letters", "replay", &id]);
    assert!(!out.status.success());
    let again: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(again["error"]["code"], "not_found");
}

/// A broker and a dispatcher for a node of one slot (started later), and a
/// counter of results in the order they come.
async fn one_slot(base_latency: &'static str, aging_bound: &'static str) -> (Stack, ResultCounter) {
    let mut stack = Stack::new(StackOptions {
        slots: 1,
        base_latency,
        aging_bound,
        ..StackOptions::default()
    });
    stack.start_broker();
    stack.start_dispatcher();
    let counter = ResultCounter::start(&stack.nats.client().await).await;
    (stack, counter)
}

/// Queues `n` jobs at `priority`, one after another; their ids.
async fn queue(stack: &Stack, priority: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(
            stack
                .submit_http(&text(priority, &format!("{priority} {i}")))
                .await,
        );
    }
    ids
}

/// Strict priority: thirty batch jobs are queued, then five critical ones,
/// and a node with one slot comes up. The critical jobs run first, ahead of
/// the batch jobs that came before them; served in arrival order they
/// would run last.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn critical_jobs_are_placed_ahead_of_a_batch_flood_queued_before_them() {
    let (mut stack, counter) = one_slot("20ms", "60s").await;
    let mut all = queue(&stack, "batch", 30).await;
    let critical = queue(&stack, "critical", 5).await;
    all.extend(critical.iter().cloned());
    stack.start_agent("node-a");
    stack.wait_finished(&all, Duration::from_secs(60)).await;
    let order = counter.order();
    let positions: Vec<usize> = critical
        .iter()
        .map(|id| order.iter().position(|o| o == id).unwrap())
        .collect();
    // The first placement may go out before every level is read; the rest
    // go by level.
    assert!(
        positions.iter().all(|p| *p < critical.len() + 1),
        "critical jobs finished at {positions:?} of {}",
        order.len()
    );
}

/// Aging: forty critical jobs are queued and then one batch job, on a node
/// with one slot (two seconds of critical work). Past the 400 ms aging
/// bound the batch job is served ahead of the critical jobs still queued;
/// by arrival order, or by strict priority alone, it would run last.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lower_level_job_is_served_once_it_waits_past_the_aging_bound() {
    let (mut stack, counter) = one_slot("50ms", "400ms").await;
    let critical = queue(&stack, "critical", 40).await;
    let old = stack.submit_http(&text("batch", "patient batch job")).await;
    stack.start_agent("node-a");
    let mut all = critical.clone();
    all.push(old.clone());
    stack.wait_finished(&all, Duration::from_secs(60)).await;
    let order = counter.order();
    let position = order.iter().position(|id| *id == old).unwrap();
    eprintln!(
        "the aged batch job finished {position}th of {}",
        order.len()
    );
    assert!(
        position < 30,
        "the aged batch job finished {position}th of {}",
        order.len()
    );
}

/// Only jobs past the aging bound overtake: a batch job waits past the 2 s
/// bound, then forty critical jobs (two seconds of work) and five more
/// batch jobs are queued, and a node with one slot comes up. The aged job
/// runs first; a younger batch job of its lane is placed ahead of critical
/// work only once it too has waited past the bound. Serving the aged lane
/// as a whole would send them to the node straight after it, to be held
/// behind the critical work and handed back (a second attempt).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_jobs_past_the_aging_bound_overtake_higher_levels() {
    const BOUND_MS: i64 = 2_000;
    let (mut stack, counter) = one_slot("50ms", "2s").await;
    let old = stack.submit_http(&text("batch", "patient batch job")).await;
    tokio::time::sleep(Duration::from_millis(BOUND_MS as u64 + 100)).await;
    let critical = queue(&stack, "critical", 40).await;
    let young = queue(&stack, "batch", 5).await;
    stack.start_agent("node-a");
    let all = [&[old.clone()][..], &critical, &young].concat();
    stack.wait_finished(&all, Duration::from_secs(60)).await;
    let order = counter.order();
    let position = order.iter().position(|id| *id == old).unwrap();
    assert!(position < 3, "the aged job finished {position}th");
    let placed = stack.placements(&all).await;
    let last_critical = critical
        .iter()
        .map(|id| placed[id].assigned_ms)
        .max()
        .unwrap();
    for id in &young {
        let p = &placed[id];
        let waited = p.assigned_ms - p.submitted_ms;
        assert_eq!(p.attempt, 1, "batch job {id} was placed before its turn");
        assert!(
            p.assigned_ms >= last_critical || waited > BOUND_MS,
            "batch job {id} placed {waited} ms after it came, ahead of critical work"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tenants_share_a_level_by_weight_however_much_each_one_queues() {
    let mut stack = Stack::new(StackOptions {
        slots: 1,
        base_latency: "20ms",
        tenants: "[{name: gold, weight: 3}]",
        ..StackOptions::default()
    });
    stack.start_broker();
    stack.start_dispatcher();
    let counter = ResultCounter::start(&stack.nats.client().await).await;
    let submit = |tenant: &'static str, i: usize| {
        let body = json!({
            "model": TEXT_MODEL,
            "tenant": tenant,
            "input": {"prompt": format!("{tenant} {i}")},
        });
        let stack = &stack;
        async move { stack.submit_http(&body).await }
    };
    // Queued in this order, first come first served would run every
    // flood job before any other tenant's.
    let mut tenant_of = std::collections::HashMap::new();
    for (tenant, n) in [("flood", 40), ("small", 6), ("gold", 30)] {
        for i in 0..n {
            tenant_of.insert(submit(tenant, i).await, tenant);
        }
    }
    let refused = stack
        .http
        .post(stack.broker_url("/v1/jobs"))
        .json(&json!({"model": TEXT_MODEL, "tenant": "a.b", "input": {"prompt": "x"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 422);
    let refused: Value = refused.json().await.unwrap();
    assert_eq!(refused["error"]["code"], "invalid_request", "{refused}");

    stack.start_agent("node-a");
    let ids: Vec<String> = tenant_of.keys().cloned().collect();
    let records = stack.wait_finished(&ids, Duration::from_secs(60)).await;
    assert!(records.values().all(|r| r["status"] == "succeeded"));
    let (_, one) = stack.get_job(&ids[0]).await;
    assert_eq!(one["tenant"], tenant_of[&ids[0]], "{one}");

    let order: Vec<&str> = counter.order().iter().map(|id| tenant_of[id]).collect();
    let first_30 = |t: &str| order[..30].iter().filter(|x| **x == t).count();
    eprintln!(
        "first 30 served: gold {}, flood {}, small {}",
        first_30("gold"),
        first_30("flood"),
        first_30("small")
    );
    // Weights 3:1:1 while all three are backlogged: 18:6:6 of the first 30.
    let last_small = order.iter().rposition(|t| *t == "small").unwrap();
    assert!(last_small < 34, "order: {order:?}");
    assert!((14..=21).contains(&first_30("gold")), "order: {order:?}");
    assert!(first_30("flood") <= 10, "order: {order:?}");

    // Drained tenants keep no consumer on the job queues, and one that
    // comes back gets its lane again.
    let js = async_nats::jetstream::new(stack.nats.client().await);
    eventually(Duration::from_secs(15), Duration::from_millis(200), || {
        let (js, stack) = (&js, &stack);
        async move {
            let mut jobs = js.get_stream("JOBS").await.unwrap();
            let consumers = jobs.info().await.unwrap().state.consumer_count;
            let lanes = stack
                .metric("dispatcher", "switchyard_dispatcher_lanes")
                .await;
            so(consumers == 0 && lanes == 0.0, || {
                format!("{consumers} consumers, {lanes} lanes open")
            })
        }
    })
    .await;
    let again = stack
        .submit_http(&json!({"model": TEXT_MODEL, "tenant": "small", "input": {"prompt": "again"}}))
        .await;
    let records = stack.wait_finished(&[again], Duration::from_secs(20)).await;
    assert!(records.values().all(|r| r["status"] == "succeeded"));
}

/// Shares are counted in tokens by default: a tenant whose prompts are
/// fifty times longer gets about one job placed for fifty of the other's,
/// the same share of the engine. Counted in jobs, they would alternate.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenant_of_long_prompts_gets_fewer_jobs_for_the_same_share_of_tokens() {
    let mut stack = Stack::new(StackOptions {
        slots: 1,
        base_latency: "10ms",
        ..StackOptions::default()
    });
    stack.start_broker();
    stack.start_dispatcher();
    let counter = ResultCounter::start(&stack.nats.client().await).await;
    let mut tenant_of = std::collections::HashMap::new();
    for i in 0..20 {
        // About 500 prompt tokens against about 2, and 8 to generate each.
        for (tenant, prompt) in [
            ("long", format!("{i}{}", " word".repeat(400))),
            ("short", format!("short {i}")),
        ] {
            let body = json!({"model": TEXT_MODEL, "tenant": tenant,
                "input": {"prompt": prompt, "max_tokens": 8}});
            tenant_of.insert(stack.submit_http(&body).await, tenant);
        }
    }
    stack.start_agent("node-a");
    let ids: Vec<String> = tenant_of.keys().cloned().collect();
    stack.wait_finished(&ids, Duration::from_secs(60)).await;
    let order: Vec<&str> = counter.order().iter().map(|id| tenant_of[id]).collect();
    let long_first = order[..21].iter().filter(|t| **t == "long").count();
    assert!(long_first <= 2, "order: {order:?}");
}

fn unix_ms() -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    i64::try_from(now.unwrap().as_millis()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_not_started_by_its_deadline_expires_and_one_past_its_timeout_is_cancelled() {
    let mut stack = Stack::new(StackOptions {
        slots: 1,
        base_latency: "1500ms",
        ..StackOptions::default()
    });
    stack.start_broker();
    stack.start_dispatcher();
    // No capacity yet: the job with a near deadline cannot start in time.
    let deadline = unix_ms() + 300;
    let late = stack
        .submit_http(
            &json!({"model": TEXT_MODEL, "deadline_ms": deadline, "input": {"prompt": "too late"}}),
        )
        .await;
    while unix_ms() <= deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stack.start_agent("node-a");
    let slow = stack
        .submit_http(
            &json!({"model": TEXT_MODEL, "timeout_ms": 200, "input": {"prompt": "too slow"}}),
        )
        .await;
    let fine = stack.submit_http(&text("normal", "in time")).await;
    let started = std::time::Instant::now();
    let done = stack
        .wait_finished_as(
            &[late.clone(), slow.clone(), fine.clone()],
            &["succeeded", "failed", "expired", "timed_out"],
            Duration::from_secs(30),
        )
        .await;

    let l = &done[&late];
    assert_eq!(l["status"], "expired", "{l}");
    assert_eq!(l["error"]["code"], "expired");
    let steps: Vec<&str> = l["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["status"].as_str().unwrap())
        .collect();
    assert_eq!(steps, ["queued", "expired"], "it never ran: {l}");

    let s = &done[&slow];
    assert_eq!(s["status"], "timed_out", "{s}");
    assert_eq!(
        (s["attempt"].as_u64(), s["error"]["code"].as_str()),
        (Some(1), Some("timed_out")),
        "never retried: {s}"
    );

    // The cancelled job freed its slot at once: the next one did not wait
    // out the 1.5 s it would have taken.
    assert_eq!(done[&fine]["status"], "succeeded");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_waiting_past_its_deadline_expires_then_even_with_no_node_to_take_it() {
    let mut stack = Stack::new(StackOptions::default());
    stack.start_broker();
    stack.start_dispatcher();
    let counter = ResultCounter::start(&stack.nats.client().await).await;
    let deadline = unix_ms() + 500;
    let id = stack
        .submit_http(
            &json!({"model": TEXT_MODEL, "deadline_ms": deadline, "input": {"prompt": "no room"}}),
        )
        .await;
    let patient = stack.submit_http(&text("normal", "no deadline")).await;
    // No node at all: the job ends at its deadline, not when one appears.
    let done = stack
        .wait_finished_as(
            std::slice::from_ref(&id),
            &["expired"],
            Duration::from_secs(10),
        )
        .await;
    let finished_at = done[&id]["transitions"][1]["at"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(done[&id]["error"]["code"], "expired", "{}", done[&id]);
    let (_, waiting) = stack.get_job(&patient).await;
    assert_eq!(waiting["status"], "queued", "{waiting}");

    // A node comes: the other job runs, the expired one never does.
    stack.start_agent("node-a");
    stack
        .wait_finished(std::slice::from_ref(&patient), Duration::from_secs(20))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, after) = stack.get_job(&id).await;
    assert_eq!(after["status"], "expired", "{after}");
    assert_eq!(after["transitions"].as_array().unwrap().len(), 2, "{after}");
    assert_eq!(after["transitions"][1]["at"], finished_at.as_str());
    assert_eq!(counter.snapshot().get(&id), Some(&1), "one result only");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancelled_job_never_runs_or_stops_running() {
    let mut stack = Stack::new(StackOptions {
        slots: 1,
        base_latency: "3s",
        ..StackOptions::default()
    });
    stack.start_broker();
    stack.start_dispatcher();
    let counter = ResultCounter::start(&stack.nats.client().await).await;
    let (http, base) = (stack.http.clone(), stack.broker_url(""));
    let cancel = |id: &str| {
        let url = format!("{base}/v1/jobs/{id}/cancel");
        let http = http.clone();
        async move {
            let r = http.post(url).send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap())
        }
    };

    // Queued: it ends at once and never runs, even once a node is there.
    let queued = stack.submit_http(&text("normal", "never mind")).await;
    let (status, body) = cancel(&queued).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("cancelled")),
        "{body}"
    );
    assert_eq!(stack.get_job(&queued).await.1["status"], "cancelled");
    stack.start_agent("node-a");
    // The node is given it, and drops it without the engine's running it.
    let (dropped, ran) = (
        "switchyard_agent_jobs_total{outcome=\"cancelled\"}",
        "switchyard_agent_engine_seconds_count",
    );
    let dropped_are = |want: f64| {
        let stack = &stack;
        eventually(
            Duration::from_secs(20),
            Duration::from_millis(20),
            move || async move {
                let n = stack.metric("node-a", dropped).await;
                so(n == want, || format!("{n} cancelled jobs dropped"))
            },
        )
    };
    dropped_are(1.0).await;
    assert_eq!(stack.metric("node-a", ran).await, 0.0);

    // Running: a NATS client cancels it, and the engine call is dropped.
    let running = stack.submit_http(&text("normal", "long one")).await;
    eventually(
        Duration::from_secs(20),
        Duration::from_millis(20),
        || async {
            let (_, job) = stack.get_job(&running).await;
            so(job["status"] == "running", || format!("not started: {job}"))
        },
    )
    .await;
    // Queued behind it on a node that is up: the node knows of the
    // cancellation from its watch by the time the slot frees.
    let behind = stack.submit_http(&text("normal", "behind")).await;
    assert_eq!(cancel(&behind).await.0, 200);
    let client = stack.nats.client().await;
    let reply = client
        .request("sy.cancel", running.clone().into())
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(v["status"], "cancelled", "{v}");

    // The one slot frees at once: the next job does not wait out the 3 s.
    let started = std::time::Instant::now();
    let next = stack.submit_http(&text("normal", "after")).await;
    stack
        .wait_finished(std::slice::from_ref(&next), Duration::from_secs(20))
        .await;
    assert!(
        started.elapsed() < Duration::from_millis(5500),
        "{:?}",
        started.elapsed()
    );

    // Dropped: the one queued before the node came, the one behind; stopped:
    // the running one. Only it and the last job ran on the engine.
    dropped_are(3.0).await;
    assert_eq!(stack.metric("node-a", ran).await, 2.0);
    for id in [&queued, &running, &behind] {
        let (_, r) = stack.get_job(id).await;
        assert_eq!(r["status"], "cancelled", "{r}");
        assert_eq!(r["error"]["code"], "cancelled");
        assert_eq!(counter.snapshot().get(id.as_str()), Some(&1), "one result");
    }
    let steps = stack.get_job(&queued).await.1["transitions"].clone();
    assert_eq!(
        steps.as_array().unwrap().len(),
        2,
        "queued then cancelled: {steps}"
    );

    // Nothing left to cancel: finished and unknown jobs.
    let (status, body) = cancel(&next).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("not_cancellable"))
    );
    let (status, _) = cancel("no-such-job").await;
    assert_eq!(status, 404);
}
