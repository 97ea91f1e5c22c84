//! Benchmark: the reads behind the console's jobs list and a job's
//! timeline, with a million jobs in the store, timed over HTTP as the page
//! makes them. Run against SQLite, or PostgreSQL with `SY_TEST_POSTGRES`:
//!
//! ```sh
//! cargo test --release --test e2e console_bench:: -- --ignored --nocapture
//! SY_TEST_POSTGRES=postgres://switchyard:switchyard@127.0.0.1:5432 \
//!   cargo test --release --test e2e console_bench:: -- --ignored --nocapture
//! ```

use std::time::{Duration, Instant, UNIX_EPOCH};

use crate::common::*;
use crate::ledger_bench::{run_sql, series};

const JOBS: u64 = 1_000_000;
const SAMPLES: usize = 30;
/// The jobs were made over the last 30 days, one every 2.592 s.
const SPREAD_MS: u64 = 30 * 24 * 3600 * 1000;

/// Writes `JOBS` ended jobs straight into the store: two models, 20
/// tenants and one small one (a job in 10,000), 1 % failed, a tenth each
/// at high and batch priority, over eight nodes (each column independent
/// of the others, so that a filter on two matches their product).
fn fill_jobs(stack: &Stack, now_ms: u64) {
    let step = SPREAD_MS / JOBS;
    let first = now_ms - SPREAD_MS;
    let mut statements = vec![format!(
        "INSERT INTO jobs (id, model, priority, source, status, attempt, node, tenant,
            created_at, enqueued_at, assigned_at, started_at, finished_at,
            prompt_tokens, completion_tokens, error_code)
         SELECT 'old-' || g,
            CASE WHEN g % 2 = 0 THEN '{TEXT_MODEL}' ELSE '{CHAT_MODEL}' END,
            CASE (g / 3) % 10 WHEN 0 THEN 'high' WHEN 1 THEN 'batch' ELSE 'normal' END,
            'http',
            CASE WHEN g % 100 = 0 THEN 'failed' ELSE 'succeeded' END,
            1, 'node-' || (g % 8),
            CASE WHEN g % 10000 = 7 THEN 'small' ELSE 't' || (g % 20) END,
            t, t + 1, t + 3, t + 5, t + 400,
            12, 20,
            CASE WHEN g % 100 = 0 THEN 'overloaded' END
         FROM (SELECT g, {first} + CAST(g AS BIGINT) * {step} AS t FROM {}) AS made",
        series(stack, JOBS)
    )];
    statements.push(if stack.database_url.starts_with("postgres") {
        "VACUUM ANALYZE jobs".into()
    } else {
        "ANALYZE".into()
    });
    run_sql(stack, &statements);
}

/// Latencies (µs), sorted, of `SAMPLES` GETs of `path` one after another.
async fn latencies(stack: &Stack, path: &str) -> Vec<u128> {
    let mut took = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        let start = Instant::now();
        let r = stack.http.get(stack.broker_url(path)).send().await.unwrap();
        let status = r.status();
        let body = r.text().await.unwrap();
        took.push(start.elapsed().as_micros());
        assert_eq!(status, 200, "{path}: {body}");
    }
    took.sort_unstable();
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "benchmark: run with --ignored --nocapture"]
async fn the_console_s_reads_with_a_million_jobs() {
    let stack = Stack::running(StackOptions::default(), &["node-a"]);
    let now_ms = u64::try_from(switchyard_schemas::now_ms()).unwrap();
    let filled_at = Instant::now();
    fill_jobs(&stack, now_ms);
    let fill = filled_at.elapsed();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (_, small) = stack.get_json("/v1/jobs?tenant=small&limit=200").await;
    assert_eq!(small["data"].as_array().unwrap().len(), 100, "{small}");

    // Half way back: a page deep in the list, as "Older jobs" reaches it.
    let middle = humantime::format_rfc3339_millis(
        UNIX_EPOCH + Duration::from_millis(now_ms - SPREAD_MS / 2),
    );
    let day = humantime::format_rfc3339_millis(
        UNIX_EPOCH + Duration::from_millis(now_ms - 24 * 3600 * 1000),
    );
    let reads = [
        ("jobs, newest 50", "/v1/jobs?limit=50".to_owned()),
        (
            "jobs, 50 from 15 days ago",
            format!("/v1/jobs?limit=50&until={middle}"),
        ),
        (
            "failed jobs (1 %)",
            "/v1/jobs?status=failed&limit=50".into(),
        ),
        ("one tenant of 20", "/v1/jobs?tenant=t7&limit=50".into()),
        (
            "a small tenant (1 job in 10,000)",
            "/v1/jobs?tenant=small&limit=50".into(),
        ),
        (
            "high priority on one node",
            "/v1/jobs?priority=high&node=node-3&limit=50".into(),
        ),
        // No index serves a node: a filter that matches nothing reads
        // every job, unless a time range bounds it.
        (
            "a node that ran none of them",
            "/v1/jobs?node=node-9&limit=50".into(),
        ),
        (
            "the same, created in the last day",
            format!("/v1/jobs?node=node-9&limit=50&since={day}"),
        ),
        ("a job", "/v1/jobs/old-500000".into()),
        (
            "its webhook deliveries",
            "/v1/jobs/old-500000/webhooks".into(),
        ),
        ("jobs ended per minute, last hour", "/v1/summary".into()),
    ];
    let store = if stack.database_url.starts_with("postgres") {
        "PostgreSQL"
    } else {
        "SQLite"
    };
    println!("store: {store}; {JOBS} jobs written in {fill:?}; {SAMPLES} GETs each");
    for (name, path) in &reads {
        // The first read warms the page cache, as a console left open does.
        stack.get_json(path).await;
        let sorted = latencies(&stack, path).await;
        println!(
            "{name}: median {:.1} ms, slowest {:.1} ms",
            sorted[SAMPLES / 2] as f64 / 1000.0,
            sorted[SAMPLES - 1] as f64 / 1000.0
        );
    }
}
