//! What the store spends per job on admission's write and on projecting
//! events and results, in batches as the broker writes them. A
//! measurement for docs/benchmarks.md, not a test:
//! `cargo test --release -p switchyard-store projection_cost -- --ignored --nocapture`.

use std::time::Instant;

use super::*;

/// Jobs written, and how many a batch holds.
const JOBS: usize = 10_000;
const BATCH: usize = 64;

/// This process's CPU time so far, in ms (user and system, from
/// `/proc/self/stat`, in ticks of 10 ms).
fn cpu_ms() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) * 10.0
}

#[tokio::test]
#[ignore = "a measurement for docs/benchmarks.md"]
async fn projection_cost_per_job() {
    let (s, _dir) = store().await;
    let ids: Vec<String> = (0..JOBS).map(|i| format!("job-{i:08}")).collect();
    let jobs: Vec<Job> = ids.iter().map(|id| job(id)).collect();
    let mut stages = Vec::new();
    let mut timed = |stage: &'static str, since: (Instant, f64)| {
        let per_job = |x: f64| x * 1000.0 / JOBS as f64;
        stages.push((
            stage,
            per_job(since.0.elapsed().as_secs_f64() * 1000.0),
            per_job(cpu_ms() - since.1),
        ));
        (Instant::now(), cpu_ms())
    };
    let mut since = (Instant::now(), cpu_ms());
    for chunk in jobs.chunks(BATCH) {
        let batch: Vec<Recording> = chunk
            .iter()
            .map(|job| Recording {
                job,
                source: Source::Nats,
                tokens_estimate: ESTIMATE,
            })
            .collect();
        s.insert_many(&batch).await.unwrap();
    }
    since = timed("admission: jobs recorded", since);
    for chunk in ids.chunks(BATCH) {
        let assigned: Vec<JobEvent> = chunk
            .iter()
            .map(|id| event(id, 5, EventKind::Assigned { node: "n1".into() }))
            .collect();
        s.apply_events(&assigned).await.unwrap();
    }
    since = timed("events: assigned", since);
    for chunk in ids.chunks(BATCH) {
        let results: Vec<JobResult> = chunk.iter().map(|id| succeeded(id, 1, 2)).collect();
        let charges: Vec<Charge> = chunk
            .iter()
            .map(|id| Charge {
                usage: UsageEvent::fixture(id, "n1"),
                cost_micros: 1,
                cache_hit: false,
            })
            .collect();
        s.apply_results(&results, &charges, &|_| false)
            .await
            .unwrap();
    }
    timed("results with their ledger lines", since);
    println!("\n| {JOBS} jobs, {BATCH} a batch | µs per job, wall | µs per job, CPU |");
    println!("| --- | --- | --- |");
    for (stage, wall, cpu) in stages {
        println!("| {stage} | {wall:.1} | {cpu:.1} |");
    }
}
