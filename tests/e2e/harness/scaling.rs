//! How the durable path's cost grows with the tenants it serves: the same
//! jobs spread over more and more tenants. Each (priority, model, tenant)
//! is a lane of the dispatcher's, a JetStream consumer on `JOBS`, so this
//! is also how it grows with lanes.

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
        let short: Vec<String> = measured
            .iter()
            .filter(|d| d.finished < form.jobs)
            .map(|d| format!("{} of {} in {RUN_BOUND:?}", d.finished, form.jobs))
            .collect();
        let short = match short.is_empty() {
            true => String::new(),
            false => format!(" ({})", short.join(", ")),
        };
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
