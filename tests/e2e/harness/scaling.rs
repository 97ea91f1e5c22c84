//! How the durable path's cost grows with the tenants it serves: the same
//! jobs spread over more and more tenants. Each (priority, model, tenant)
//! is a lane of the dispatcher's, a JetStream consumer on `JOBS`, so this
//! is also how it grows with lanes. And how placement holds up when many
//! jobs were queued before a node came.

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
        let mut measured = Vec::new();
        for _ in 0..form.runs {
            measured.push(durable_path(form.jobs, tenants).await);
        }
        let of = |pick: &dyn Fn(&Durable) -> f64, digits| {
            spread(&measured.iter().map(pick).collect::<Vec<_>>(), digits)
        };
        let cpu = |process| of(&move |d: &Durable| named(&d.cpu, process), 3);
        let rss = |process| of(&move |d: &Durable| named(&d.rss, process), 0);
        // A run that did not finish within the bound says how far it got.
        let within = format!("{RUN_BOUND:?}");
        let short = how_far(measured.iter().map(|d| d.finished), form.jobs, &within);
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

/// Jobs queued before any node serves them, and runs of each: a run with a
/// million takes about ten minutes.
const BACKLOGS: [(usize, usize); 3] = [(10_000, 3), (100_000, 3), (1_000_000, 1)];

/// Tenants a backlog is spread over: each of their subjects, and the intake's
/// one, holds at most `nats.max_queued_per_queue` (100,000) jobs.
const BACKLOG_TENANTS: usize = 20;

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

/// For each of `backlogs` (jobs, runs): that many jobs queued while no node serves
/// their model, then one node (64 slots, an engine that answers at once)
/// comes up and drains them, a table row each.
pub(super) async fn backlog(backlogs: &[(usize, usize)]) {
    println!(
        "\n| jobs queued | admitted/s | node ready → first placement, ms | drained jobs/s | CPU ms per job while draining: broker / dispatcher / node / nats-server | RSS MiB with the backlog queued: broker / dispatcher / nats-server |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    for &(jobs, runs) in backlogs {
        let mut measured = Vec::new();
        for _ in 0..runs {
            measured.push(backlog_run(jobs).await);
        }
        let of = |pick: &dyn Fn(&Drained) -> f64, digits| {
            spread(&measured.iter().map(pick).collect::<Vec<_>>(), digits)
        };
        let cpu = |process| of(&move |d: &Drained| named(&d.cpu, process), 3);
        let rss = |process| of(&move |d: &Drained| named(&d.rss, process), 0);
        let short = how_far(measured.iter().map(|d| d.finished), jobs, "time");
        println!(
            "| {jobs} | {} | {} | {}{short} | {} / {} / {} / {} | {} / {} / {} |",
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

async fn backlog_run(jobs: usize) -> Drained {
    let mut stack = Stack::new(StackOptions {
        base_latency: "0ms",
        slots: 64,
        ..StackOptions::default()
    });
    stack.start_broker();
    stack.start_dispatcher();
    let js = jetstream::new(stack.nats.client().await);
    let start = Instant::now();
    let bodies: Vec<Vec<u8>> = (0..BACKLOG_TENANTS)
        .map(|t| {
            json!({"model": TEXT_MODEL, "tenant": format!("t{t}"),
                "input": {"prompt": "bench", "max_tokens": 1}})
            .to_string()
            .into_bytes()
        })
        .collect();
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
                bodies[(from + i) % BACKLOG_TENANTS].clone(),
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
    let finished = finished_by(&stack, jobs, deadline).await;
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
