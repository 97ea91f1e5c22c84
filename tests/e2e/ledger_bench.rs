//! Benchmark: submit latency with an empty ledger and with a million ledger
//! rows. Run against SQLite, or PostgreSQL with `SY_TEST_POSTGRES`:
//!
//! ```sh
//! cargo test --test e2e ledger_bench:: -- --ignored --nocapture
//! SY_TEST_POSTGRES=postgres://switchyard:switchyard@127.0.0.1:5432 \
//!   cargo test --test e2e ledger_bench:: -- --ignored --nocapture
//! ```

use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::json;

const ROWS: u64 = 1_000_000;
const SUBMITS: usize = 1_000;

/// Submit latencies (µs), sorted, of `SUBMITS` jobs one after another.
async fn submit_latencies(stack: &Stack, round: &str) -> Vec<u128> {
    let mut took = Vec::with_capacity(SUBMITS);
    for n in 0..SUBMITS {
        let body = json!({"model": TEXT_MODEL, "input": {"prompt": format!("{round} {n}")}});
        let start = Instant::now();
        let r = stack
            .http
            .post(stack.broker_url("/v1/jobs"))
            .json(&body)
            .send()
            .await
            .unwrap();
        took.push(start.elapsed().as_micros());
        assert_eq!(r.status(), 202);
    }
    took.sort_unstable();
    took
}

fn at(sorted: &[u128], p: f64) -> u128 {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// `g` from 1 to `rows`, as a row source in the stack's SQL dialect.
pub(crate) fn series(stack: &Stack, rows: u64) -> String {
    if stack.database_url.starts_with("postgres") {
        format!("generate_series(1, {rows}) AS g")
    } else {
        format!(
            "(WITH RECURSIVE s(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM s WHERE g < {rows}) SELECT g FROM s)"
        )
    }
}

/// Runs `statements` on the stack's store beside the broker, as a bulk load
/// would.
pub(crate) fn run_sql(stack: &Stack, statements: &[String]) {
    let out = if stack.database_url.starts_with("postgres") {
        let mut psql = Command::new("psql");
        psql.args([&stack.database_url, "-q", "-v", "ON_ERROR_STOP=1"]);
        for statement in statements {
            psql.args(["-c", statement]);
        }
        psql.output().unwrap()
    } else {
        let path = stack.dir.path().join("jobs.db");
        let script = "import sqlite3, sys\nc = sqlite3.connect(sys.argv[1], timeout=30)\nfor s in sys.argv[2:]:\n    c.execute(s)\n    c.commit()\n";
        Command::new("python3")
            .args(["-c", script, &path.display().to_string()])
            .args(statements)
            .output()
            .unwrap()
    };
    assert!(out.status.success(), "{out:?}");
}

/// Writes `ROWS` ledger rows straight into the store, as many as months of
/// billing would leave.
fn fill_ledger(stack: &Stack) {
    let mut statements = vec![format!(
        "INSERT INTO usage (job_id, attempt, node, model, prompt_tokens, completion_tokens,
            engine_ms, at, cost_micros, cache_hit)
         SELECT 'old-' || g, 1, 'node-a', 'tiny-text', 12, 20, 40,
            1700000000000 + g * 1000, 30, 0
         FROM {}",
        series(stack, ROWS)
    )];
    if stack.database_url.starts_with("postgres") {
        // Vacuumed and analysed, as autovacuum leaves a table that grew,
        // and checkpointed, so that writing the bulk insert out does not
        // slow the commits measured next.
        statements.extend(["VACUUM ANALYZE usage".into(), "CHECKPOINT".into()]);
    }
    run_sql(stack, &statements);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "benchmark: run with --ignored --nocapture"]
async fn submit_latency_with_a_million_ledger_rows() {
    let stack = Stack::running(StackOptions::default(), &["node-a"]);
    // Warm the broker's connections and caches first.
    submit_latencies(&stack, "warm-up").await;
    let empty = submit_latencies(&stack, "empty").await;
    let filled_at = Instant::now();
    fill_ledger(&stack);
    let fill = filled_at.elapsed();
    // Let the database finish writing the bulk insert out (PostgreSQL's
    // checkpoint and autovacuum) before measuring.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let full = submit_latencies(&stack, "full").await;
    let store = if stack.database_url.starts_with("postgres") {
        "PostgreSQL"
    } else {
        "SQLite"
    };
    println!("store: {store}; {ROWS} ledger rows written in {fill:?}");
    for (name, sorted) in [("empty ledger", &empty), ("1M ledger rows", &full)] {
        println!(
            "{name}: submit p50 {} µs, p99 {} µs ({SUBMITS} submits)",
            at(sorted, 0.5),
            at(sorted, 0.99)
        );
    }
    let (usage_status, _) = stack.get_json("/v1/usage").await;
    assert_eq!(usage_status, 200);
}
