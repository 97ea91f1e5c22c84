//! How the path's cost grows with the nodes it places on. The nodes are
//! real gpu-agents with the simulated engine, run as tasks of this process
//! (a thousand agent processes would not fit this machine). Each has its
//! own connection, heartbeats, work-queue consumer and watches, as a node
//! on a host of its own has, so nats-server and the dispatcher see what a
//! fleet of that size costs them. The slots stay about a thousand in all,
//! spread over more and more nodes.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Deserialize;
use switchyard_dispatcher::DispatcherConfig;
use switchyard_gpu_agent::{AgentConfig, Placing};
use switchyard_runtime::telemetry::PrometheusHandle;
use switchyard_runtime::{Issues, ModelSpec, NatsConfig, Registry};
use tokio_util::sync::CancellationToken;

use super::*;

/// Fleets measured: nodes, and the slots of each.
const FLEETS: [(usize, u32); 3] = [(10, 100), (100, 10), (1_000, 1)];

/// How often an idle node reports itself: the agent's default.
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);

/// How long the fleet is watched idle.
const IDLE: Duration = Duration::from_secs(5);

/// The fixed rate at which placement latency is measured, jobs/s.
const RATE: f64 = 200.0;

/// The longest a fleet may take to come up.
const FLEET_UP: Duration = Duration::from_secs(180);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "minutes of load: how cost grows with nodes, for docs/benchmarks.md"]
async fn nodes_long_form() {
    nodes(&LONG, &FLEETS).await;
}

/// The parts of the stack's configuration an agent needs.
#[derive(Deserialize)]
struct AgentFile {
    #[serde(default)]
    nats: NatsConfig,
    models: Vec<ModelSpec>,
    #[serde(default)]
    dispatcher: DispatcherConfig,
    agent: AgentConfig,
}

/// Agents run in this process, until `stop`.
struct Fleet {
    stop: CancellationToken,
    agents: JoinSet<()>,
}

impl Fleet {
    /// `n` agents named `sim-0000`…, each with the stack's simulated engine.
    fn start(stack: &Stack, n: usize) -> Fleet {
        // The process-wide recorder, installed once: every agent's
        // metrics go to it, as each node's go to its own.
        static METRICS: OnceLock<PrometheusHandle> = OnceLock::new();
        let metrics =
            METRICS.get_or_init(|| switchyard_runtime::telemetry::init_metrics().unwrap());
        let file: AgentFile = switchyard_runtime::config::load(Some(stack.config_path())).unwrap();
        let placing = Placing {
            prefetch_per_slot: file.dispatcher.prefetch_per_slot,
            aging_bound: file.dispatcher.aging_bound,
        };
        let stop = CancellationToken::new();
        let mut agents = JoinSet::new();
        for i in 0..n {
            let mut cfg = file.agent.clone();
            cfg.node_id = format!("sim-{i:04}");
            cfg.listen = ([127, 0, 0, 1], 0).into();
            cfg.heartbeat_interval = HEARTBEAT_INTERVAL;
            let registry = Registry::new(&file.models, &mut Issues::default());
            let run = switchyard_gpu_agent::run(
                cfg,
                placing,
                file.nats.clone(),
                registry,
                metrics.clone(),
                stop.clone(),
            );
            agents.spawn(async move { run.await.unwrap() });
        }
        Fleet { stop, agents }
    }

    async fn stop(mut self) {
        self.stop.cancel();
        while let Some(ended) = self.agents.join_next().await {
            ended.unwrap();
        }
    }
}

/// Messages seen on a subject, counted as they come.
struct Counter {
    seen: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Counter {
    async fn on(client: &async_nats::Client, subject: &'static str) -> Counter {
        let mut sub = client.subscribe(subject).await.unwrap();
        client.flush().await.unwrap();
        let seen = Arc::new(AtomicU64::new(0));
        let counting = seen.clone();
        let task = tokio::spawn(async move {
            while sub.next().await.is_some() {
                counting.fetch_add(1, Ordering::Relaxed);
            }
        });
        Counter { seen, task }
    }

    fn now(&self) -> u64 {
        self.seen.load(Ordering::Relaxed)
    }
}

impl Drop for Counter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What one run with a fleet measured.
struct FleetRun {
    /// From the agents' start until the dispatcher counted them all.
    up_s: f64,
    /// Process → CPU ms per second with the fleet idle.
    idle_cpu: Vec<(&'static str, f64)>,
    /// Heartbeats a second with the fleet idle.
    idle_heartbeats: f64,
    /// Submission → result at `RATE`, ms.
    p50_ms: f64,
    p99_ms: f64,
    /// The dispatcher's mean queue wait (admitted → placed) at `RATE`, ms.
    placed_ms: f64,
    burst: Burst,
    /// Heartbeats a second during the burst.
    burst_heartbeats: f64,
    /// Process → resident memory at the end, MiB.
    rss: Vec<(&'static str, f64)>,
}

/// For each of `fleets` (nodes, slots each), `form.runs` runs, a table row
/// each: the fleet idle, then jobs at `RATE`, then `form.jobs` at once.
pub(super) async fn nodes(form: &Form, fleets: &[(usize, u32)]) {
    println!(
        "\n| nodes × slots | up in, s | idle: heartbeats/s | idle CPU ms/s: dispatcher / nats-server / nodes | at {RATE}/s: p50 / p99 ms | at {RATE}/s: queue wait ms | burst jobs/s | burst CPU ms per job: broker / dispatcher / nats-server / nodes | burst heartbeats/s | RSS MiB: dispatcher / nats-server / nodes |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for &(n, slots) in fleets {
        let measured = repeat(form.runs, || fleet_run(form, n, slots)).await;
        let of = |pick: &dyn Fn(&FleetRun) -> f64, digits| {
            spread(&measured.iter().map(pick).collect::<Vec<_>>(), digits)
        };
        let idle = |process| of(&move |r: &FleetRun| named(&r.idle_cpu, process), 1);
        let cpu = |process| of(&move |r: &FleetRun| named(&r.burst.cpu, process), 3);
        let rss = |process| of(&move |r: &FleetRun| named(&r.rss, process), 0);
        let short = cut_short(measured.iter().map(|r| r.burst.finished), form.jobs);
        println!(
            "| {n} × {slots} | {} | {} | {} / {} / {} | {} / {} | {} | {}{short} | {} / {} / {} / {} | {} | {} / {} / {} |",
            of(&|r| r.up_s, 1),
            of(&|r| r.idle_heartbeats, 0),
            idle("dispatcher"),
            idle("nats-server"),
            idle("nodes"),
            of(&|r| r.p50_ms, 2),
            of(&|r| r.p99_ms, 2),
            of(&|r| r.placed_ms, 2),
            of(&|r| r.burst.per_second, 0),
            cpu("broker"),
            cpu("dispatcher"),
            cpu("nats-server"),
            cpu("nodes"),
            of(&|r| r.burst_heartbeats, 0),
            rss("dispatcher"),
            rss("nats-server"),
            rss("nodes"),
        );
    }
}

/// A histogram metric's `_sum` and `_count`.
async fn sum_count(stack: &Stack, component: &str, metric: &str) -> (f64, f64) {
    (
        stack.metric(component, &format!("{metric}_sum")).await,
        stack.metric(component, &format!("{metric}_count")).await,
    )
}

async fn fleet_run(form: &Form, n: usize, slots: u32) -> FleetRun {
    let mut stack = Stack::new(StackOptions {
        base_latency: "0ms",
        slots,
        ..StackOptions::default()
    });
    stack.start_broker();
    stack.start_dispatcher();
    let client = stack.nats.client().await;
    let heartbeats = Counter::on(&client, "sy.heartbeat.*").await;
    let pids = [
        ("broker", stack.pid_of("broker")),
        ("dispatcher", stack.pid_of("dispatcher")),
        ("nats-server", stack.pid_of("nats-server")),
        // The agents, and the load this harness makes.
        ("nodes", std::process::id()),
    ];
    let cpu_now = || pids.map(|(_, pid)| cpu_seconds(pid));

    let start = Instant::now();
    let fleet = Fleet::start(&stack, n);
    while stack
        .metric("dispatcher", "switchyard_dispatcher_nodes")
        .await
        < n as f64
    {
        assert!(
            start.elapsed() < FLEET_UP,
            "{n} nodes up within {FLEET_UP:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let up_s = start.elapsed().as_secs_f64();
    // The agents' start-up is over before the idle fleet is watched.
    tokio::time::sleep(HEARTBEAT_INTERVAL * 2).await;

    let (cpu_before, beats_before) = (cpu_now(), heartbeats.now());
    tokio::time::sleep(IDLE).await;
    let idle_cpu = pids
        .iter()
        .zip(cpu_now().iter().zip(cpu_before))
        .map(|((name, _), (after, before))| (*name, (after - before) * 1000.0 / IDLE.as_secs_f64()))
        .collect();
    let idle_heartbeats = (heartbeats.now() - beats_before) as f64 / IDLE.as_secs_f64();

    let wait = "switchyard_dispatcher_queue_wait_seconds";
    let (sum_before, count_before) = sum_count(&stack, "dispatcher", wait).await;
    let at_rate = pipeline::durable_on(&stack, &[RATE], form.seconds).await;
    let (sum_after, count_after) = sum_count(&stack, "dispatcher", wait).await;
    let placed_ms = (sum_after - sum_before) / (count_after - count_before).max(1.0) * 1000.0;

    let beats_before = heartbeats.now();
    let burst_start = Instant::now();
    let burst = burst(&stack, &pids, form.jobs, 1).await;
    let burst_heartbeats =
        (heartbeats.now() - beats_before) as f64 / burst_start.elapsed().as_secs_f64();
    let rss = pids
        .iter()
        .filter(|(name, _)| *name != "broker")
        .map(|(name, pid)| (*name, rss_kib(*pid) as f64 / 1024.0))
        .collect();
    fleet.stop().await;
    FleetRun {
        up_s,
        idle_cpu,
        idle_heartbeats,
        p50_ms: at_rate[0].ms(0.5),
        p99_ms: at_rate[0].ms(0.99),
        placed_ms,
        burst,
        burst_heartbeats,
        rss,
    }
}
