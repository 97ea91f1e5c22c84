//! What keeping streamed tokens costs. First at the messaging level, in
//! one run: chunks of a token's size published on core NATS to a live
//! subscriber, against the same chunks stored in `TOKENS` (the agent's
//! way: up to 256 awaiting their PubAck) with the same live subscriber.
//! Then through the whole stack: streaming jobs of 64 tokens on a
//! simulated engine that answers at once, each followed to its end by a
//! client of `GET /v1/jobs/{id}/events`, which reads the tokens back from
//! `TOKENS`; tokens a second, and each process's CPU per 1,000 tokens.

use std::collections::VecDeque;

use super::*;
use switchyard_schemas::{SCHEMA_VERSION, StreamChunk, encode};

/// Chunks per run of the messaging half.
const CHUNKS: usize = 200_000;
/// Chunks awaiting their PubAck at once, as the agent keeps them.
const IN_FLIGHT: usize = 256;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a minute of load: what stored tokens cost, for docs/benchmarks.md"]
async fn tokens_long_form() {
    tokens(&LONG).await;
}

pub(super) async fn tokens(form: &Form) {
    let chunks = (CHUNKS * form.jobs / LONG.jobs).max(1_000);
    let (mut live, mut stored) = (Vec::new(), Vec::new());
    for _ in 0..form.runs {
        let nats = Nats::start();
        live.push(chunks_through(&nats, chunks, false).await);
        stored.push(chunks_through(&nats, chunks, true).await);
    }
    println!(
        "\n| {chunks} chunks | chunks/s | nats-server CPU ms per 1,000 | publisher CPU ms per 1,000 |"
    );
    println!("| --- | --- | --- | --- |");
    for (name, runs) in [
        ("core NATS, live only", &live),
        ("stored in `TOKENS`", &stored),
    ] {
        let of = |pick: &dyn Fn(&Through) -> f64, digits| {
            spread(&runs.iter().map(pick).collect::<Vec<_>>(), digits)
        };
        println!(
            "| {name} | {} | {} | {} |",
            of(&|t| t.per_second, 0),
            of(&|t| t.server_ms, 3),
            of(&|t| t.client_ms, 3),
        );
    }

    let jobs = (form.jobs / 20).max(20);
    let mut through = Vec::new();
    for _ in 0..form.runs {
        through.push(streamed_jobs(jobs).await);
    }
    let of = |pick: &dyn Fn(&Streamed) -> f64, digits| {
        spread(&through.iter().map(pick).collect::<Vec<_>>(), digits)
    };
    let cpu = |process| of(&move |s: &Streamed| named(&s.cpu, process), 3);
    println!(
        "\n| {jobs} streamed jobs of 64 tokens, each followed | tokens/s | CPU ms per 1,000 tokens: broker / agent / nats-server |"
    );
    println!("| --- | --- | --- |");
    println!(
        "| through the stack | {} | {} / {} / {} |",
        of(&|s| s.per_second, 0),
        cpu("broker"),
        cpu("node-a"),
        cpu("nats-server"),
    );
}

/// One run of the messaging half.
struct Through {
    per_second: f64,
    server_ms: f64,
    client_ms: f64,
}

/// `n` chunks of one job published on `sy.stream.<id>` and read by a live
/// subscriber; with `store`, into `TOKENS` as the agent publishes them.
async fn chunks_through(nats: &Nats, n: usize, store: bool) -> Through {
    let client = nats.client().await;
    let js = jetstream::new(client.clone());
    let cfg = switchyard_runtime::NatsConfig::default();
    switchyard_runtime::nats::ensure_streams(&js, &cfg)
        .await
        .unwrap();
    let id = format!("bench-{}", uuid::Uuid::now_v7());
    let subject = format!("sy.stream.{id}");
    let mut sub = client.subscribe(subject.clone()).await.unwrap();
    client.flush().await.unwrap();
    let reader = tokio::spawn(async move {
        let mut got = 0;
        while got < n {
            sub.next().await.unwrap();
            got += 1;
        }
    });
    let (server, own) = (cpu_seconds(nats.pid()), cpu_seconds(std::process::id()));
    let start = Instant::now();
    let mut pending = VecDeque::new();
    for seq in 0..n {
        let chunk = StreamChunk {
            v: SCHEMA_VERSION,
            job_id: id.clone(),
            attempt: 1,
            seq: u32::try_from(seq).unwrap(),
            delta: " word".into(),
            finish_reason: None,
            node: "node-a".into(),
            proof: Some("0".repeat(64)),
        };
        let payload = encode(&chunk).unwrap();
        if !store {
            client
                .publish(subject.clone(), payload.into())
                .await
                .unwrap();
            continue;
        }
        let message = jetstream::message::PublishMessage::build()
            .payload(payload.into())
            .message_id(format!("{id}:1:{seq}"));
        pending.push_back(js.send_publish(subject.clone(), message).await.unwrap());
        if pending.len() >= IN_FLIGHT {
            pending.pop_front().unwrap().await.unwrap();
        }
    }
    for ack in pending {
        ack.await.unwrap();
    }
    reader.await.unwrap();
    let seconds = start.elapsed().as_secs_f64();
    let per_1000 = |before: f64, pid: u32| (cpu_seconds(pid) - before) * 1e6 / n as f64;
    Through {
        per_second: n as f64 / seconds,
        server_ms: per_1000(server, nats.pid()),
        // The publisher and the subscriber share this process.
        client_ms: per_1000(own, std::process::id()),
    }
}

/// One run through the stack.
struct Streamed {
    per_second: f64,
    cpu: Vec<(&'static str, f64)>,
}

/// `jobs` streamed jobs of 64 tokens, 16 at a time, each followed by a
/// client of its events to its end.
async fn streamed_jobs(jobs: usize) -> Streamed {
    let stack = Stack::running(
        StackOptions {
            base_latency: "0ms",
            ..StackOptions::default()
        },
        &["node-a"],
    );
    let processes = ["broker", "node-a", "nats-server"];
    let pid = |p: &str| match p {
        "nats-server" => stack.nats.pid(),
        p => stack.pid_of(p),
    };
    let before: Vec<f64> = processes.iter().map(|p| cpu_seconds(pid(p))).collect();
    let start = Instant::now();
    let tokens: usize = futures::stream::iter(0..jobs)
        .map(|_| follow(&stack))
        .buffer_unordered(16)
        .collect::<Vec<usize>>()
        .await
        .into_iter()
        .sum();
    let seconds = start.elapsed().as_secs_f64();
    assert_eq!(tokens, jobs * 65, "every token and each last chunk");
    let cpu = processes
        .iter()
        .zip(before)
        .map(|(p, b)| (*p, (cpu_seconds(pid(p)) - b) * 1e6 / tokens as f64))
        .collect();
    Streamed {
        per_second: tokens as f64 / seconds,
        cpu,
    }
}

/// Submits a streamed job and reads its events to the end: the tokens it
/// was sent.
async fn follow(stack: &Stack) -> usize {
    let id = stack
        .submit_http(&json!({"model": TEXT_MODEL, "stream": true,
                             "input": {"prompt": "a b c d", "max_tokens": 64}}))
        .await;
    let body = stack.get_text(&format!("/v1/jobs/{id}/events")).await;
    body.matches("event: token").count()
}
