//! How the durable path's cost grows with the tenants it serves: the same
//! jobs spread over more and more tenants. Each (priority, model, tenant)
//! is a lane of the dispatcher's, a JetStream consumer on `JOBS`, so this
//! is also how it grows with lanes. And how placement holds up when many
//! jobs were queued before a node came, and with brokers and dispatchers
//! side by side.

use super::*;

/// Tenants the same jobs are spread over, one curve point each.
const TENANTS: [usize; 4] = [10, 100, 1_000, 10_000];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "minutes of load: how cost grows with tenants, for docs/benchmarks.md"]
async fn tenants_long_form() {
    tenants(&LONG, &TENANTS).await;
}

/// The durable path with `form.jobs` jobs spread over each number of
/// `counts` tenants in turn, a table row each.
pub(super) async fn tenants(form: &Form, counts: &[usize]) {
    println!(
        "\n| tenants | jobs/s | queue wait ms | CPU ms per job: broker / dispatcher / nats-server | RSS MiB at the end: broker / dispatcher / nats-server |"
    );
    println!("| --- | --- | --- | --- | --- |");
    for &tenants in counts {
        let measured = repeat(form.runs, || durable_path(form.jobs, tenants)).await;
        let of = |pick: &dyn Fn(&Durable) -> f64, digits| {
            spread(&measured.iter().map(pick).collect::<Vec<_>>(), digits)
        };
        let cpu = |process| of(&move |d: &Durable| named(&d.cpu, process), 3);
        let rss = |process| of(&move |d: &Durable| named(&d.rss, process), 0);
        // A run that did not finish within the bound says how far it got.
        let short = cut_short(measured.iter().map(|d| d.finished), form.jobs);
        println!(
            "| {tenants} | {}{short} | {} | {} / {} / {} | {} / {} / {} |",
            of(&|d| d.per_second, 0),
            of(&|d| named(&d.stages, QUEUE_WAIT), 1),
            cpu("broker"),
            cpu("dispatcher"),
            cpu("nats-server"),
            rss("broker"),
            rss("dispatcher"),
            rss("nats-server"),
        );
    }
}

/// Brokers and dispatchers run side by side: as many of each.
const REPLICAS: [usize; 2] = [1, 3];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a minute of load: how cost grows with brokers and dispatchers, for docs/benchmarks.md"]
async fn replicas_long_form() {
    replicas(&LONG, &REPLICAS).await;
}

/// The durable path with `form.jobs` jobs of 10 tenants published at once,
/// through each of `counts` brokers and as many dispatchers side by side,
/// a table row each. The brokers share the stack's store: SQLite, or
/// PostgreSQL with `SY_TEST_POSTGRES`.
pub(super) async fn replicas(form: &Form, counts: &[usize]) {
    let store = match std::env::var("SY_TEST_POSTGRES") {
        Ok(_) => "PostgreSQL",
        Err(_) => "SQLite",
    };
    println!(
        "\n| brokers and dispatchers ({store}) | jobs/s | CPU ms per job: brokers / dispatchers / nodes / nats-server | RSS MiB at the end: each broker / each dispatcher / nats-server |"
    );
    println!("| --- | --- | --- | --- |");
    for &n in counts {
        let measured = repeat(form.runs, || replicated(n, form.jobs)).await;
        // Summed over every process whose name starts with `kind`, or its
        // mean for memory.
        let total = |list: &[(&'static str, f64)], kind: &str| -> f64 {
            list.iter()
                .filter(|(name, _)| name.starts_with(kind))
                .map(|(_, v)| v)
                .sum()
        };
        let of = |pick: &dyn Fn(&Replicated) -> f64, digits| {
            spread(&measured.iter().map(pick).collect::<Vec<_>>(), digits)
        };
        let cpu = |kind: &'static str| of(&move |r: &Replicated| total(&r.burst.cpu, kind), 3);
        let rss = |kind: &'static str, each: usize| {
            of(&move |r: &Replicated| total(&r.rss, kind) / each as f64, 0)
        };
        let short = cut_short(measured.iter().map(|r| r.burst.finished), form.jobs);
        println!(
            "| {n} | {}{short} | {} / {} / {} / {} | {} / {} / {} |",
            of(&|r| r.burst.per_second, 0),
            cpu("broker"),
            cpu("dispatcher"),
            cpu("node"),
            cpu("nats-server"),
            rss("broker", n),
            rss("dispatcher", n),
            rss("nats-server", 1),
        );
    }
}

/// What one run with brokers and dispatchers side by side measured.
struct Replicated {
    burst: Burst,
    /// Process → resident memory at the end, MiB.
    rss: Vec<(&'static str, f64)>,
}

/// `jobs` of 10 tenants at once through `n` brokers and `n` dispatchers.
async fn replicated(n: usize, jobs: usize) -> Replicated {
    let stack = replicas_stack(n);
    let pids: Vec<(&'static str, u32)> = replica_names(n)
        .into_iter()
        .map(|p| (p, stack.pid_of(p)))
        .collect();
    let burst = burst(&stack, &pids, jobs, 10).await;
    let rss = pids
        .iter()
        .map(|(name, pid)| (*name, rss_kib(*pid) as f64 / 1024.0))
        .collect();
    Replicated { burst, rss }
}

/// Brokers side by side, and dispatchers: the first of each is the stack's own.
const BROKERS: [&str; 3] = ["broker", "broker-2", "broker-3"];
const DISPATCHERS: [&str; 3] = ["dispatcher", "dispatcher-2", "dispatcher-3"];

/// Process names of a stack with `n` brokers and `n` dispatchers.
fn replica_names(n: usize) -> Vec<&'static str> {
    let mut names: Vec<&'static str> = BROKERS[..n].to_vec();
    names.extend_from_slice(&DISPATCHERS[..n]);
    names.extend(["node-a", "node-b", "nats-server"]);
    names
}

/// `n` brokers and `n` dispatchers, with the durable path's two nodes.
fn replicas_stack(n: usize) -> Stack {
    let mut stack = instant_stack();
    for i in 1..n {
        stack.launch_broker(BROKERS[i], &[any_port("SWITCHYARD_BROKER__LISTEN")]);
        let listen = any_port("SWITCHYARD_DISPATCHER__LISTEN");
        stack.launch(DISPATCHERS[i], "dispatcher", 0, &[listen]);
    }
    stack.start_agent("node-a");
    stack.start_agent("node-b");
    stack
}

/// Jobs queued before any node serves them, the tenants they are spread
/// over, and runs of each: a run with a million takes ten to twenty minutes.
/// Each tenant's subject, and the intake's, holds at most
/// `nats.max_queued_per_queue` (100,000) jobs.
const BACKLOGS: [Backlog; 5] = [
    Backlog {
        jobs: 10_000,
        tenants: 20,
        runs: 3,
    },
    Backlog {
        jobs: 100_000,
        tenants: 20,
        runs: 3,
    },
    Backlog {
        jobs: 1_000_000,
        tenants: 20,
        runs: 1,
    },
    Backlog {
        jobs: 100_000,
        tenants: 10_000,
        runs: 3,
    },
    Backlog {
        jobs: 1_000_000,
        tenants: 10_000,
        runs: 1,
    },
];

/// One row of the backlog table.
pub(super) struct Backlog {
    pub(super) jobs: usize,
    pub(super) tenants: usize,
    pub(super) runs: usize,
}

/// Jobs published before the harness waits for the broker to admit them, so
/// that the intake stays under its bound.
const BACKLOG_CHUNK: usize = 50_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "minutes of load: how placement holds up under a backlog, for docs/benchmarks.md"]
async fn backlog_long_form() {
    backlog(&BACKLOGS).await;
}

/// What one run with a backlog measured.
struct Drained {
    /// Jobs admitted (in `JOBS`) a second while no node served them.
    admitted_per_second: f64,
    /// From the node's readiness to the first placement on it.
    first_placement_ms: f64,
    /// Jobs finished a second from the node's readiness.
    drained_per_second: f64,
    finished: usize,
    /// Process → CPU ms per job while the backlog drained.
    cpu: Vec<(&'static str, f64)>,
    /// Process → resident memory with the backlog queued, MiB.
    rss: Vec<(&'static str, f64)>,
}

/// For each of `backlogs`: that many jobs of that many tenants queued while
/// no node serves their model, then one node (64 slots, an engine that answers at once)
/// comes up and drains them, a table row each.
pub(super) async fn backlog(backlogs: &[Backlog]) {
    println!(
        "\n| jobs queued | tenants | admitted/s | node ready → first placement, ms | drained jobs/s | CPU ms per job while draining: broker / dispatcher / node / nats-server | RSS MiB with the backlog queued: broker / dispatcher / nats-server |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for &Backlog {
        jobs,
        tenants,
        runs,
    } in backlogs
    {
        let measured = repeat(runs, || backlog_run(jobs, tenants)).await;
        let of = |pick: &dyn Fn(&Drained) -> f64, digits| {
            spread(&measured.iter().map(pick).collect::<Vec<_>>(), digits)
        };
        let cpu = |process| of(&move |d: &Drained| named(&d.cpu, process), 3);
        let rss = |process| of(&move |d: &Drained| named(&d.rss, process), 0);
        let short = how_far(measured.iter().map(|d| d.finished), jobs, "time");
        println!(
            "| {jobs} | {tenants} | {} | {} | {}{short} | {} / {} / {} / {} | {} / {} / {} |",
            of(&|d| d.admitted_per_second, 0),
            of(&|d| d.first_placement_ms, 1),
            of(&|d| d.drained_per_second, 0),
            cpu("broker"),
            cpu("dispatcher"),
            cpu("node-a"),
            cpu("nats-server"),
            rss("broker"),
            rss("dispatcher"),
            rss("nats-server"),
        );
    }
}

async fn backlog_run(jobs: usize, tenants: usize) -> Drained {
    let mut stack = instant_stack();
    let js = jetstream::new(stack.nats.client().await);
    let start = Instant::now();
    let bodies = tenant_bodies(tenants);
    let mut queue = js.get_stream("JOBS").await.expect("JOBS");
    // A million jobs take minutes to admit and to drain.
    let bound = RUN_BOUND.max(Duration::from_millis(jobs as u64));
    let deadline = start + bound;
    for from in (0..jobs).step_by(BACKLOG_CHUNK) {
        let n = BACKLOG_CHUNK.min(jobs - from);
        publish_acked(&js, n, |i| {
            (
                "sy.submit.normal".to_owned(),
                Some(format!("bench-{}", from + i)),
                bodies[(from + i) % tenants].clone(),
            )
        })
        .await;
        while queue.info().await.expect("JOBS info").state.messages < (from + n) as u64 {
            assert!(Instant::now() < deadline, "jobs admitted within {bound:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let admitted_per_second = jobs as f64 / start.elapsed().as_secs_f64();
    let queued = ["broker", "dispatcher", "nats-server"];
    let rss = queued
        .iter()
        .map(|p| (*p, rss_kib(stack.pid_of(p)) as f64 / 1024.0))
        .collect();
    let cpu_before: Vec<f64> = queued
        .iter()
        .map(|p| cpu_seconds(stack.pid_of(p)))
        .collect();

    stack.start_agent("node-a");
    let ready = Instant::now();
    while stack
        .metric("dispatcher", "switchyard_dispatcher_assignments_total")
        .await
        < 1.0
    {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let first_placement_ms = ready.elapsed().as_secs_f64() * 1000.0;
    let deadline = ready + bound;
    let finished = finished_by(&stack, &[("broker", 0)], jobs, deadline).await;
    let drained_per_second = finished as f64 / ready.elapsed().as_secs_f64();
    let per_job = |seconds: f64| seconds * 1000.0 / finished.max(1) as f64;
    let mut cpu: Vec<(&'static str, f64)> = queued
        .iter()
        .zip(cpu_before)
        .map(|(p, before)| (*p, per_job(cpu_seconds(stack.pid_of(p)) - before)))
        .collect();
    cpu.push(("node-a", per_job(cpu_seconds(stack.pid_of("node-a")))));
    Drained {
        admitted_per_second,
        first_placement_ms,
        drained_per_second,
        finished,
        cpu,
        rss,
    }
}
