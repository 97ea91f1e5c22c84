//! The benchmark harness: an open-loop load generator (each request has its
//! due time, and its latency counts from then, so a slow answer cannot hold
//! back the requests behind it) with HDR histograms, measuring on this
//! machine, with the same engine behind every path:
//!
//! 1. the bare pipeline's limit: publish → consume through three durable
//!    hops, then a usage record and a result, with no logic, and the
//!    server's CPU per job;
//! 2. the most jobs a second the durable path sustains end to end (the
//!    simulated engine, zero service time), where the time goes by stage,
//!    and the CPU each process spends; then the latency of both at fixed
//!    rates (`harness/pipeline.rs`);
//! 3. latency added over a direct engine call by the jobs API (sync wait)
//!    and the OpenAI-compatible front, at 25 %, 50 % and 75 % of the most
//!    the front sustains, and where a call through the front spends its
//!    time (`harness/front.rs`);
//! 4. where it is installed, the LiteLLM proxy beside them at a rate it
//!    sustains with one worker (15 requests/s);
//! 5. what a workflow run adds to the jobs it runs (`harness/workflows.rs`);
//! 6. what keeping streamed tokens costs (`harness/tokens.rs`);
//! 7. how cost grows with tenants, with a backlog (`harness/scaling.rs`)
//!    and with nodes (`harness/nodes.rs`).
//!
//! `cargo test --test e2e harness::smoke` runs every part for a moment (CI); the
//! figures of docs/benchmarks.md come from the long form, `scripts/bench`
//! (which installs LiteLLM first).

use std::collections::HashMap;
use std::future::Future;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use async_nats::jetstream::{self, consumer::PullConsumer, stream};
use axum::Json;
use axum::routing::{get, post};
use futures::StreamExt;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::task::JoinSet;

mod front;
mod nodes;
mod pipeline;
mod scaling;
mod tokens;
mod workflows;

/// How long each measurement runs.
#[derive(Clone, Copy)]
struct Form {
    /// Jobs through the raw hops and through the durable path.
    jobs: usize,
    /// Seconds of load at each rate.
    seconds: f64,
    /// Runs of each figure.
    runs: usize,
}

const SMOKE: Form = Form {
    jobs: 500,
    seconds: 1.0,
    runs: 1,
};

const LONG: Form = Form {
    jobs: 10_000,
    seconds: 5.0,
    runs: 3,
};

/// Latencies, in microseconds, and how many requests failed.
struct Measured {
    hist: Histogram<u64>,
    failed: usize,
}

impl Measured {
    fn ms(&self, quantile: f64) -> f64 {
        self.hist.value_at_quantile(quantile) as f64 / 1000.0
    }
}

/// Sends `per_second` requests a second for `seconds`, each at its due
/// time whatever the ones before it are doing; latency is from the due
/// time to the answer.
async fn open_loop<F, Fut>(per_second: f64, seconds: f64, send: F) -> Measured
where
    F: Fn() -> Fut,
    Fut: Future<Output = bool> + Send + 'static,
{
    // 1 µs to 10 min, three significant digits.
    let hist = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).unwrap(),
    ));
    let failed = Arc::new(Mutex::new(0usize));
    let mut due_times = due((per_second * seconds).round() as usize, per_second);
    let mut running = JoinSet::new();
    while let Some(due) = due_times.recv().await {
        let request = send();
        let (hist, failed) = (hist.clone(), failed.clone());
        running.spawn(async move {
            let ok = request.await;
            let us = u64::try_from(due.elapsed().as_micros()).unwrap_or(u64::MAX);
            hist.lock()
                .unwrap()
                .saturating_record(us.clamp(1, 600_000_000));
            if !ok {
                *failed.lock().unwrap() += 1;
            }
        });
    }
    while running.join_next().await.is_some() {}
    let hist = hist.lock().unwrap().clone();
    let failed = *failed.lock().unwrap();
    Measured { hist, failed }
}

/// The due times of `n` requests at `per_second` from now, each handed on
/// as it falls due. A thread sleeps to each: tokio's timer rounds a
/// deadline up to its next millisecond tick, which made every request
/// start a millisecond late at the median and added that to every latency
/// measured from the due time, the bare pipeline's as well as ours.
fn due(n: usize, per_second: f64) -> tokio::sync::mpsc::UnboundedReceiver<Instant> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        let start = Instant::now();
        for i in 0..n {
            let due = start + Duration::from_secs_f64(i as f64 / per_second);
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            if tx.send(due).is_err() {
                return;
            }
        }
    });
    rx
}

/// The most answers a second `clients` callers get, each sending its next
/// request as its last is answered.
async fn saturate<F, Fut>(clients: usize, seconds: f64, send: F) -> f64
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = bool> + Send,
{
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let mut callers = JoinSet::new();
    for _ in 0..clients {
        let send = send.clone();
        callers.spawn(async move {
            let mut ok = 0usize;
            while Instant::now() < end {
                ok += usize::from(send().await);
            }
            ok
        });
    }
    let mut total = 0;
    while let Some(n) = callers.join_next().await {
        total += n.unwrap();
    }
    total as f64 / seconds
}

/// An OpenAI-compatible engine that answers at once: the same engine for
/// every path, so what differs is only what stands in front of it.
async fn instant_engine() -> u16 {
    let completion = |Json(body): Json<Value>| async move {
        Json(json!({
            "id": "cmpl-bench", "object": "text_completion", "created": 0,
            "model": body["model"],
            "choices": [{"index": 0, "text": " ok", "finish_reason": "length", "logprobs": null}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
        }))
    };
    let app = axum::Router::new()
        .route("/v1/completions", post(completion))
        .route(
            "/v1/models",
            get(|| async {
                Json(json!({"object": "list", "data": [{"id": TEXT_MODEL, "object": "model"}]}))
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// The figure named `name` in a list of them.
fn named(list: &[(&'static str, f64)], name: &str) -> f64 {
    list.iter()
        .find(|(n, _)| *n == name)
        .map(|(_, x)| *x)
        .unwrap()
}

/// `median (min–max)` of several runs.
fn spread(xs: &[f64], digits: usize) -> String {
    let lo = xs.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let m = median(xs.to_vec());
    if xs.len() == 1 {
        format!("{m:.digits$}")
    } else {
        format!("{m:.digits$} ({lo:.digits$}–{hi:.digits$})")
    }
}

/// The bare pipeline: jobs a second through three durable hops with no
/// logic, then a usage record and a result, as a job's are. A publisher,
/// two movers (pull, publish to the next stream, await its PubAck, ack)
/// and a last one that publishes usage then result (each awaited) and
/// acks, on one nats-server with the kinds of streams Switchyard uses (file
/// storage; work-queue retention for the hops, limits for usage and
/// results). With the server's CPU ms per job.
async fn raw_jetstream(nats: &Nats, jobs: usize) -> (f64, f64) {
    let js = jetstream::new(nats.client().await);
    bare_streams(&js).await;
    let cpu_before = cpu_seconds(nats.pid());
    let start = Instant::now();
    let hops = futures::future::join_all(BARE_HOPS.map(|(from, to)| hop(&js, from, to, jobs)));
    let publish = publish_acked(&js, jobs, |_| ("hop.H1".to_owned(), None, vec![7u8; 300]));
    tokio::join!(hops, publish);
    let per_second = jobs as f64 / start.elapsed().as_secs_f64();
    let cpu = (cpu_seconds(nats.pid()) - cpu_before) * 1000.0 / jobs as f64;
    (per_second, cpu)
}

/// The bare pipeline's hops: from a stream, to the streams each message
/// is published on in turn.
const BARE_HOPS: [(&str, &[&str]); 3] = [
    ("H1", &["H2"]),
    ("H2", &["H3"]),
    ("H3", &["USAGE", "RESULT"]),
];

/// Makes the bare pipeline's streams afresh.
async fn bare_streams(js: &jetstream::Context) {
    let streams = [
        ("H1", stream::RetentionPolicy::WorkQueue),
        ("H2", stream::RetentionPolicy::WorkQueue),
        ("H3", stream::RetentionPolicy::WorkQueue),
        ("USAGE", stream::RetentionPolicy::Limits),
        ("RESULT", stream::RetentionPolicy::Limits),
    ];
    for (name, retention) in streams {
        let _ = js.delete_stream(name).await;
        js.create_stream(stream::Config {
            name: name.into(),
            subjects: vec![format!("hop.{name}")],
            retention,
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .unwrap();
    }
}

/// One hop: pulls `jobs` messages from stream `from`, publishes each to
/// every stream of `to` in turn (awaiting each PubAck) and acknowledges it,
/// 256 at a time as the broker and dispatcher pipeline theirs.
async fn hop(js: &jetstream::Context, from: &str, to: &'static [&'static str], jobs: usize) {
    let consumer: PullConsumer = js
        .get_stream(from)
        .await
        .unwrap()
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some(format!("c-{from}")),
            max_ack_pending: 1024,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut pending = JoinSet::new();
    for _ in 0..jobs {
        let msg = messages.next().await.unwrap().unwrap();
        let (js, to) = (js.clone(), to.to_vec());
        pending.spawn(async move {
            for to in to {
                js.publish(format!("hop.{to}"), msg.payload.clone())
                    .await
                    .unwrap()
                    .await
                    .unwrap();
            }
            msg.ack().await.unwrap();
        });
        while pending.len() > 256 {
            pending.join_next().await;
        }
    }
    while pending.join_next().await.is_some() {}
}

/// CPU seconds a process has used.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    // utime and stime, the 14th and 15th fields (12th and 13th after the name).
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

/// The mean of a histogram metric in milliseconds, from its `_sum` and `_count`.
async fn mean_ms(stack: &Stack, component: &str, metric: &str) -> f64 {
    let sum = stack.metric(component, &format!("{metric}_sum")).await;
    let count = stack.metric(component, &format!("{metric}_count")).await;
    if count == 0.0 {
        0.0
    } else {
        sum / count * 1000.0
    }
}

/// The stage from admission until the dispatcher places the job.
const QUEUE_WAIT: &str = "queue wait (admitted → placed)";

/// The longest one run of the durable path may take.
const RUN_BOUND: Duration = Duration::from_secs(300);

/// What one run of the durable path measured.
struct Durable {
    /// Jobs finished within `RUN_BOUND`.
    finished: usize,
    per_second: f64,
    /// Stage → mean ms.
    stages: Vec<(&'static str, f64)>,
    /// Process → CPU ms per job.
    cpu: Vec<(&'static str, f64)>,
    /// Process → resident memory at the end, MiB.
    rss: Vec<(&'static str, f64)>,
}

/// Broker and dispatcher, with agents (started later) whose simulated
/// engines answer at once.
fn instant_stack() -> Stack {
    let mut stack = Stack::new(StackOptions {
        base_latency: "0ms",
        // A vLLM node runs tens to hundreds of sequences at once. With
        // few slots and an engine that answers at once, what is measured
        // is how often a node reports its freed slots (its heartbeat's
        // least gap), not the path.
        slots: 64,
        ..StackOptions::default()
    });
    stack.start_broker();
    stack.start_dispatcher();
    stack
}

/// The durable path's stack: broker, dispatcher and two agents with
/// simulated engines that answer at once.
fn durable_stack() -> Stack {
    let mut stack = instant_stack();
    stack.start_agent("node-a");
    stack.start_agent("node-b");
    stack
}

/// A job's body for each of `tenants` tenants (`t0`, `t1`, …).
fn tenant_bodies(tenants: usize) -> Vec<Vec<u8>> {
    (0..tenants)
        .map(|t| {
            json!({"model": TEXT_MODEL, "tenant": format!("t{t}"),
                "input": {"prompt": "bench", "max_tokens": 1}})
            .to_string()
            .into_bytes()
        })
        .collect()
}

/// Jobs the stack's brokers have finished, of those of `pids` whose name
/// starts with `broker`.
async fn finished_jobs(stack: &Stack, pids: &[(&'static str, u32)]) -> usize {
    let mut finished = 0.0;
    for (name, _) in pids.iter().filter(|(name, _)| name.starts_with("broker")) {
        finished += stack
            .metric(name, "switchyard_broker_jobs_finished_total")
            .await;
    }
    finished as usize
}

/// Jobs the brokers of `pids` have finished once all `jobs` are, or at
/// `deadline`.
async fn finished_by(
    stack: &Stack,
    pids: &[(&'static str, u32)],
    jobs: usize,
    deadline: Instant,
) -> usize {
    loop {
        let finished = finished_jobs(stack, pids).await;
        if finished >= jobs || Instant::now() > deadline {
            return finished;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `runs` measurements made by `run`, one after the other.
async fn repeat<T, Fut: Future<Output = T>>(runs: usize, mut run: impl FnMut() -> Fut) -> Vec<T> {
    let mut measured = Vec::with_capacity(runs);
    for _ in 0..runs {
        measured.push(run().await);
    }
    measured
}

/// What a table row adds for the runs cut short at `RUN_BOUND`.
fn cut_short(finished: impl Iterator<Item = usize>, jobs: usize) -> String {
    how_far(finished, jobs, &format!("{RUN_BOUND:?}"))
}

/// What a table row adds for the runs that finished fewer than `jobs`
/// (` (n of jobs in <within>, …)`), or nothing when all finished.
fn how_far(finished: impl Iterator<Item = usize>, jobs: usize, within: &str) -> String {
    let short: Vec<String> = finished
        .filter(|&n| n < jobs)
        .map(|n| format!("{n} of {jobs} in {within}"))
        .collect();
    match short.is_empty() {
        true => String::new(),
        false => format!(" ({})", short.join(", ")),
    }
}

/// What one burst of jobs measured.
struct Burst {
    /// Jobs finished within `RUN_BOUND`.
    finished: usize,
    per_second: f64,
    /// Process → CPU ms per job.
    cpu: Vec<(&'static str, f64)>,
}

/// `jobs` published to the durable intake of `stack` at once, in turn for
/// each of `tenants` tenants, until all have finished or `RUN_BOUND` has
/// passed; the CPU is that of each of `pids` (name, process id), and the
/// jobs finished are counted by those whose name starts with `broker`.
async fn burst(stack: &Stack, pids: &[(&'static str, u32)], jobs: usize, tenants: usize) -> Burst {
    let cpu_before: Vec<f64> = pids.iter().map(|(_, pid)| cpu_seconds(*pid)).collect();
    let finished_before = finished_jobs(stack, pids).await;
    let js = jetstream::new(stack.nats.client().await);
    let start = Instant::now();
    let bodies = tenant_bodies(tenants);
    let run = uuid::Uuid::now_v7().simple();
    publish_acked(&js, jobs, |i| {
        (
            "sy.submit.normal".to_owned(),
            Some(format!("bench-{run}-{i}")),
            bodies[i % tenants].clone(),
        )
    })
    .await;
    // Bounded: a run too slow to finish reports how far it got.
    let deadline = start + RUN_BOUND;
    let finished =
        finished_by(stack, pids, finished_before + jobs, deadline).await - finished_before;
    let per_second = finished as f64 / start.elapsed().as_secs_f64();
    let cpu = pids
        .iter()
        .zip(cpu_before)
        .map(|((name, pid), before)| {
            (
                *name,
                (cpu_seconds(*pid) - before) * 1000.0 / finished.max(1) as f64,
            )
        })
        .collect();
    Burst {
        finished,
        per_second,
        cpu,
    }
}

/// The most jobs a second the durable path sustains: `jobs` published to
/// the durable intake at once, in turn for each of `tenants` tenants,
/// simulated engines with no service time.
async fn durable_path(jobs: usize, tenants: usize) -> Durable {
    let stack = durable_stack();
    let procs = ["broker", "dispatcher", "node-a", "node-b", "nats-server"];
    let pids: Vec<(&'static str, u32)> = procs.iter().map(|p| (*p, stack.pid_of(p))).collect();
    let Burst {
        finished,
        per_second,
        cpu,
    } = burst(&stack, &pids, jobs, tenants).await;
    let rss = procs
        .iter()
        .map(|p| (*p, rss_kib(stack.pid_of(p)) as f64 / 1024.0))
        .collect();
    let stages = vec![
        (
            "admission (broker)",
            mean_ms(&stack, "broker", "switchyard_broker_submit_seconds").await,
        ),
        (
            QUEUE_WAIT,
            mean_ms(
                &stack,
                "dispatcher",
                "switchyard_dispatcher_queue_wait_seconds",
            )
            .await,
        ),
        (
            "dispatch (place → WORK confirmed)",
            mean_ms(
                &stack,
                "dispatcher",
                "switchyard_dispatcher_dispatch_seconds",
            )
            .await,
        ),
        (
            "engine",
            mean_ms(&stack, "node-a", "switchyard_agent_engine_seconds").await,
        ),
        (
            "total (admission → result)",
            mean_ms(&stack, "node-a", "switchyard_agent_job_seconds").await,
        ),
    ];
    Durable {
        finished,
        per_second,
        stages,
        cpu,
        rss,
    }
}

/// The p50s and the p99s of each run, in ms.
type Percentiles = (Vec<f64>, Vec<f64>);

/// A path a completion request can take to the engine.
#[derive(Clone)]
struct Path {
    name: &'static str,
    url: String,
    body: Value,
    headers: Vec<(&'static str, String)>,
}

impl Path {
    fn request(&self, http: &reqwest::Client) -> reqwest::RequestBuilder {
        let mut request = http.post(&self.url).json(&self.body);
        for (k, v) in &self.headers {
            request = request.header(*k, v);
        }
        request
    }

    fn send(&self, http: &reqwest::Client) -> impl Future<Output = bool> + Send + use<> {
        let request = self.request(http);
        async move {
            match request.send().await {
                Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                Err(_) => false,
            }
        }
    }
}

/// The proxy's master key (it refuses to start without one).
const LITELLM_KEY: &str = "sk-bench-7f3c9a2e4b1d8f6a5c0e9b2d";

/// A LiteLLM proxy in front of the engine, if LiteLLM is installed
/// (`SY_LITELLM`: its `litellm` command).
struct LiteLlm {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl LiteLlm {
    fn start(engine: u16) -> Option<LiteLlm> {
        let bin = std::env::var("SY_LITELLM").ok()?;
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("litellm.yaml");
        std::fs::write(
            &config,
            format!(
                "model_list:\n  - model_name: {TEXT_MODEL}\n    litellm_params:\n      model: text-completion-openai/{TEXT_MODEL}\n      api_base: http://127.0.0.1:{engine}/v1\n      api_key: none\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("litellm.log")).unwrap();
        let child = Command::new(bin)
            .arg("--config")
            .arg(&config)
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--num_workers",
                "1",
            ])
            .env("LITELLM_LOG", "ERROR")
            .env("LITELLM_MASTER_KEY", LITELLM_KEY)
            // No network here: the model price map is read from the package.
            .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("litellm");
        let deadline = Instant::now() + Duration::from_secs(120);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "LiteLLM never listened");
            std::thread::sleep(Duration::from_millis(200));
        }
        Some(LiteLlm {
            child,
            port,
            _dir: dir,
        })
    }
}

impl Drop for LiteLlm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The stack for the latency comparison: one agent driving the instant
/// engine over HTTP, as it would drive vLLM.
fn front_stack(engine: u16) -> Stack {
    let mut stack = Stack::new(StackOptions {
        prefetch_per_slot: 0,
        ..StackOptions::default()
    });
    stack.start_broker();
    stack.start_dispatcher();
    stack.start_agent_on(
        "node-a",
        &format!(
            "
    kind: openai
    url: http://127.0.0.1:{engine}
    models: [{TEXT_MODEL}]
    slots: 64"
        ),
    );
    stack
}

async fn run(form: Form) {
    durable(&form).await;
    latency(&form).await;
    workflows::workflows(&form).await;
    tokens::tokens(&form).await;
}

/// The raw JetStream limit, and the durable path beside it.
async fn durable(form: &Form) {
    // 1. The raw JetStream limit.
    let nats = Nats::start();
    let (mut raw, mut raw_cpu) = (Vec::new(), Vec::new());
    for _ in 0..form.runs {
        let (per_second, cpu) = raw_jetstream(&nats, form.jobs).await;
        raw.push(per_second);
        raw_cpu.push(cpu);
    }
    // Latency at fixed rates, the bare pipeline's and the durable path's.
    let mut latency: Vec<(Percentiles, Percentiles)> =
        vec![Default::default(); LATENCY_RATES.len()];
    // Each rate's runs' p50 and p99 of each hop, in ms.
    let mut hops: Vec<Vec<Vec<(f64, f64)>>> = vec![Vec::new(); LATENCY_RATES.len()];
    for _ in 0..form.runs {
        let bare = pipeline::bare(&nats, &LATENCY_RATES, form.seconds).await;
        let ours = pipeline::durable(&LATENCY_RATES, form.seconds).await;
        for (rate, runs) in LATENCY_RATES.iter().zip(&mut hops) {
            runs.push(pipeline::hops(*rate, form.seconds).await);
        }
        for (i, (b, o)) in bare.iter().zip(&ours).enumerate() {
            assert_eq!(b.failed + o.failed, 0, "failed at {}/s", LATENCY_RATES[i]);
            latency[i].0.0.push(b.ms(0.5));
            latency[i].0.1.push(b.ms(0.99));
            latency[i].1.0.push(o.ms(0.5));
            latency[i].1.1.push(o.ms(0.99));
        }
    }
    drop(nats);

    // 2. The durable path, and where its time goes.
    let mut runs = Vec::new();
    for _ in 0..form.runs {
        let run = durable_path(form.jobs, 1).await;
        assert_eq!(
            run.finished, form.jobs,
            "jobs finished within {RUN_BOUND:?}"
        );
        runs.push(run);
    }
    let durable: Vec<f64> = runs.iter().map(|r| r.per_second).collect();
    let ratio: Vec<f64> = durable.iter().zip(&raw).map(|(d, r)| d / r).collect();
    println!("\n| measure | jobs/s, median (min–max) of {} |", form.runs);
    println!("| --- | --- |");
    println!(
        "| bare JetStream: three durable hops, usage and result | {} |",
        spread(&raw, 0)
    );
    println!(
        "| Switchyard durable path, end to end | {} |",
        spread(&durable, 0)
    );
    println!("| Switchyard ÷ raw, per run | {} |", spread(&ratio, 2));
    println!("\n| stage | mean ms, median (min–max) |\n| --- | --- |");
    for (i, (stage, _)) in runs[0].stages.iter().enumerate() {
        let xs: Vec<f64> = runs.iter().map(|r| r.stages[i].1).collect();
        println!("| {stage} | {} |", spread(&xs, 2));
    }
    println!("\n| process | CPU ms per job, median (min–max) |\n| --- | --- |");
    for (i, (process, _)) in runs[0].cpu.iter().enumerate() {
        let xs: Vec<f64> = runs.iter().map(|r| r.cpu[i].1).collect();
        println!("| {process} | {} |", spread(&xs, 3));
    }
    println!("| nats-server, bare pipeline | {} |", spread(&raw_cpu, 3));
    println!("\n| path | rate | p50 ms | p99 ms |\n| --- | --- | --- | --- |");
    for (rate, ((b50, b99), (o50, o99))) in LATENCY_RATES.iter().zip(&latency) {
        println!(
            "| bare pipeline | {rate}/s | {} | {} |",
            spread(b50, 2),
            spread(b99, 2)
        );
        println!(
            "| durable path (NATS) | {rate}/s | {} | {} |",
            spread(o50, 2),
            spread(o99, 2)
        );
        let ratio =
            |o: &[f64], b: &[f64]| -> Vec<f64> { o.iter().zip(b).map(|(o, b)| o / b).collect() };
        println!(
            "| durable ÷ bare, per run | {rate}/s | {} | {} |",
            spread(&ratio(o50, b50), 2),
            spread(&ratio(o99, b99), 2)
        );
    }
    let names = pipeline::HOPS.map(|(name, _, _)| name);
    pipeline::print_hops("hop of a job", &names, &LATENCY_RATES, &hops);
}

/// The fixed rates, jobs a second, at which the durable path's latency is
/// measured beside the bare pipeline's.
const LATENCY_RATES: [f64; 2] = [200.0, 1000.0];

/// The rate LiteLLM's proxy sustains with one worker on this machine, at
/// which its added latency is set beside Switchyard's.
const LITELLM_RATE: f64 = 15.0;

/// A load at which paths are measured: its label and rate.
struct Load {
    label: String,
    rate: f64,
}

/// Measures every path at every load, `form.runs` times, and prints a row
/// for each: the p50 and p99, and what the path adds to the first one
/// (the direct call), taken within each run.
async fn compare(http: &reqwest::Client, paths: &[Path], loads: &[Load], form: &Form) {
    // p50, p99, added p50 and added p99 of each run, by (load, path).
    let mut runs: HashMap<(usize, usize), [Vec<f64>; 4]> = HashMap::new();
    for _ in 0..form.runs {
        for (l, load) in loads.iter().enumerate() {
            let mut direct = (0.0, 0.0);
            for (p, path) in paths.iter().enumerate() {
                let m = open_loop(load.rate, form.seconds, || path.send(http)).await;
                assert_eq!(
                    m.failed, 0,
                    "{} failed requests at {}",
                    path.name, load.label
                );
                let (p50, p99) = (m.ms(0.5), m.ms(0.99));
                if p == 0 {
                    direct = (p50, p99);
                }
                let row = runs.entry((l, p)).or_default();
                for (v, x) in row
                    .iter_mut()
                    .zip([p50, p99, p50 - direct.0, p99 - direct.1])
                {
                    v.push(x);
                }
            }
        }
    }
    println!(
        "\n| path | load | p50 ms | p99 ms | added p50 ms | added p99 ms |\n| --- | --- | --- | --- | --- | --- |"
    );
    for (l, load) in loads.iter().enumerate() {
        for (p, path) in paths.iter().enumerate() {
            let [p50, p99, added50, added99] = &runs[&(l, p)];
            println!(
                "| {} | {} | {} | {} | {} | {} |",
                path.name,
                load.label,
                spread(p50, 2),
                spread(p99, 2),
                spread(added50, 2),
                spread(added99, 2)
            );
        }
    }
}

/// Latency over a direct call, through each front, and LiteLLM beside
/// them at a rate it sustains.
async fn latency(form: &Form) {
    // 3. Added latency over a direct call, at fractions of the front's most.
    let engine = instant_engine().await;
    let stack = front_stack(engine);
    let litellm = LiteLlm::start(engine);
    let http = reqwest::Client::new();
    let completion = json!({"model": TEXT_MODEL, "prompt": "bench", "max_tokens": 1});
    let mut paths = vec![
        Path {
            name: "direct to the engine",
            url: format!("http://127.0.0.1:{engine}/v1/completions"),
            body: completion.clone(),
            headers: vec![],
        },
        Path {
            name: "Switchyard jobs API (sync wait)",
            url: stack.broker_url("/v1/jobs"),
            body: json!({"model": TEXT_MODEL, "input": {"prompt": "bench", "max_tokens": 1}}),
            headers: vec![("prefer", "wait=30".to_owned())],
        },
        Path {
            name: "Switchyard OpenAI front",
            url: stack.broker_url("/v1/completions"),
            body: completion.clone(),
            headers: vec![],
        },
    ];
    let front = paths[2].clone();
    if let Some(proxy) = &litellm {
        paths.push(Path {
            name: "LiteLLM proxy",
            url: format!("http://127.0.0.1:{}/v1/completions", proxy.port),
            body: completion.clone(),
            headers: vec![("authorization", format!("Bearer {LITELLM_KEY}"))],
        });
    }
    // Warm every path.
    for p in &paths {
        for _ in 0..20 {
            assert!(p.send(&http).await, "{} does not answer", p.name);
        }
    }
    let most = {
        let http = http.clone();
        saturate(64, form.seconds, move || front.send(&http)).await
    };
    println!("\nthe OpenAI front sustains {most:.0} requests/s (64 callers)");
    let shares = [25u32, 50, 75].map(|share| {
        let rate = most * f64::from(share) / 100.0;
        Load {
            label: format!("{share} % ({rate:.0}/s)"),
            rate,
        }
    });
    // LiteLLM cannot keep up with these: its row would be its queue.
    compare(&http, &paths[..3], &shares, form).await;
    // Where the front's time goes, at the rate LiteLLM sustains and at the
    // lowest share.
    let rates = [LITELLM_RATE, shares[0].rate.round()];
    let mut hops: Vec<Vec<Vec<(f64, f64)>>> = vec![Vec::new(); rates.len()];
    for _ in 0..form.runs {
        for (rate, runs) in rates.iter().zip(&mut hops) {
            runs.push(front::front_hops(&stack, &http, &paths[2], *rate, form.seconds).await);
        }
    }
    pipeline::print_hops(
        "hop of a call through the OpenAI front",
        &front::FRONT_HOPS,
        &rates,
        &hops,
    );
    // 4. Every path at a rate LiteLLM sustains: its added latency beside ours.
    if litellm.is_some() {
        let fair = Load {
            label: format!("{LITELLM_RATE:.0}/s"),
            rate: LITELLM_RATE,
        };
        compare(&http, &paths, &[fair], form).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn smoke() {
    run(SMOKE).await;
    scaling::tenants(&SMOKE, &[10]).await;
    nodes::nodes(&SMOKE, &[(3, 4)]).await;
    scaling::replicas(&SMOKE, &[2]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "the long form's durable half: a minute of load, to compare builds"]
async fn durable_long_form() {
    durable(&LONG).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "the long form's latency half: two minutes of load, to compare builds"]
async fn latency_long_form() {
    latency(&LONG).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "the long form's workflow part: a minute of load, to compare builds"]
async fn workflows_long_form() {
    workflows::workflows(&LONG).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "the long form: minutes of load; run it for docs/benchmarks.md"]
async fn long_form() {
    run(LONG).await;
}
