use std::sync::Arc;
use std::time::Duration;

use switchyard_runtime::large::{self, LargeError};
use switchyard_runtime::nats::{self, ConsumerSpec, NatsError};
use switchyard_runtime::ops::{self, ServeError};
use switchyard_runtime::telemetry::PrometheusHandle;
use switchyard_runtime::{NatsConfig, Readiness, Registry, Tenants};
use switchyard_schemas::{JobEvent, JobResult, Outcome, UsageEvent, subjects};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::admission::Admitter;
use crate::auth::{self, Auth};
use crate::budget::{self, Budgets};
use crate::cache::{self, ResultCache};
use crate::limits::{self, Limits};
use crate::pii::Pii;
use crate::webhooks::{self, Webhooks};
use crate::{
    BrokerConfig, api, batches, billing, cancel, dead_letters, expiry, intake, metrics as m,
    outbox, projection, retention,
};
use switchyard_store::ledger::Charge;
use switchyard_store::quotas::Settlement;
use switchyard_store::{AccessStore, BatchStore, JobStore, SqlStore, Status, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error(transparent)]
    Nats(#[from] NatsError),
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error("job store: {0}")]
    Store(#[from] StoreError),
    #[error("personal data detection: {0}")]
    Pii(#[from] switchyard_pii::PiiError),
    #[error("cannot subscribe to admit requests: {0}")]
    Subscribe(#[from] async_nats::SubscribeError),
    #[error(transparent)]
    Pepper(#[from] crate::config::PepperError),
}

const CONSUMER_ACK_WAIT: Duration = Duration::from_secs(30);
/// How soon limits the admin API sets apply on every broker.
const LIMITS_REFRESH: Duration = Duration::from_secs(2);

/// Why a batch of results was not recorded (it is delivered again).
#[derive(Debug, thiserror::Error)]
enum ProjectError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Large(LargeError),
}

/// Runs the broker until `shutdown` is cancelled, then drains: readiness goes
/// first, the HTTP server finishes in-flight requests, the intakes stop taking
/// new messages, and what is unacknowledged stays in the streams.
pub async fn run(
    cfg: BrokerConfig,
    nats_cfg: NatsConfig,
    registry: Registry,
    tenants: Tenants,
    metrics: PrometheusHandle,
    shutdown: CancellationToken,
) -> Result<(), BrokerError> {
    m::describe();
    let sql = Arc::new(SqlStore::open(&cfg.database_url).await?);
    let store: Arc<dyn JobStore> = sql.clone();
    let batch_store: Arc<dyn BatchStore> = sql.clone();
    let access: Arc<dyn AccessStore> = sql;
    let auth = Arc::new(
        Auth::new(cfg.auth.pepper()?, access.clone(), &tenants)
            .limit_failures(cfg.auth.max_failures_per_minute),
    );
    if !auth.enabled() {
        warn!("authentication is off (no broker.auth.pepper): every caller is an admin");
    }
    let listener = ops::bind(cfg.listen).await?;
    let (client, js) = nats::connect(&nats_cfg, "broker").await?;
    nats::ensure_streams(&js, &nats_cfg).await?;

    let consumer = |stream, durable: &str, filter: &str, pending: usize| ConsumerSpec {
        stream,
        durable: durable.to_owned(),
        filter: filter.to_owned(),
        ack_wait: CONSUMER_ACK_WAIT,
        max_ack_pending: i64::try_from(pending).unwrap_or(i64::MAX),
        inactive_threshold: Duration::ZERO,
    };
    let batch = cfg.projection_batch;
    let intake_consumer = nats::durable_consumer(
        &js,
        consumer(
            subjects::SUBMIT_STREAM,
            "broker-intake",
            subjects::SUBMIT_ALL,
            cfg.intake_concurrency * 2,
        ),
    )
    .await?;
    let events = nats::durable_consumer(
        &js,
        consumer(
            subjects::EVENTS_STREAM,
            "broker-events",
            subjects::EVENTS_ALL,
            batch * 4,
        ),
    )
    .await?;
    let results = nats::durable_consumer(
        &js,
        consumer(
            subjects::RESULTS_STREAM,
            "broker-results",
            subjects::RESULTS_ALL,
            batch * 4,
        ),
    )
    .await?;
    let usage = nats::durable_consumer(
        &js,
        consumer(
            subjects::BILLING_STREAM,
            "broker-usage",
            subjects::USAGE_ALL,
            batch * 4,
        ),
    )
    .await?;
    let requests = client
        .queue_subscribe(subjects::ADMIT_ALL, "broker".into())
        .await?;

    let webhooks = Arc::new(Webhooks::new(&cfg, &tenants));
    let pii = Arc::new(Pii::new(&cfg.pii, &registry, &tenants)?);
    let limits = Arc::new(Limits::new(&tenants));
    let registry = Arc::new(registry);
    let prices = registry.clone();
    let settle_prices = registry.clone();
    let budgets = Arc::new(Budgets::new(&tenants));
    let admitter = Admitter {
        registry,
        store: store.clone(),
        js,
        webhooks: webhooks.clone(),
        pii,
        budgets: budgets.clone(),
        limits: limits.clone(),
    };
    let ready = Readiness::default();
    let dead = nats::stream(&admitter.js, subjects::DEAD_STREAM).await?;
    let results_stream = nats::stream(&admitter.js, subjects::RESULTS_STREAM).await?;
    let cancellations = nats::cancellations(&admitter.js, &nats_cfg).await?;
    let cache = match cache::longest_ttl(&admitter.registry) {
        Some(ttl) => Some(ResultCache::new(
            nats::result_cache(&admitter.js, &nats_cfg, ttl).await?,
        )),
        None => None,
    };
    let large = large::store(&admitter.js, &nats_cfg).await?;
    let cancel_requests = client
        .queue_subscribe(subjects::CANCEL, "broker".into())
        .await?;
    let result_requests = client
        .queue_subscribe(subjects::RESULT_REQUESTS, "broker".into())
        .await?;
    let parts = api::Parts {
        admitter: admitter.clone(),
        cancellations: cancellations.clone(),
        client: client.clone(),
        results: results_stream.clone(),
        readiness: ready.clone(),
        cache,
        files: batches::Files::open(&admitter.js, &nats_cfg).await?,
        large_results: large.clone(),
        batch_store,
        auth: auth.clone(),
        tenants: Arc::new(tenants),
    };
    let state = api::state(parts, &cfg);
    let router = api::router(state.clone())
        .merge(dead_letters::router(
            admitter.clone(),
            dead,
            results_stream.clone(),
        ))
        .layer(axum::middleware::from_fn_with_state(auth, auth::guard))
        .merge(ops::router(metrics, ready.clone()));

    let tasks = TaskTracker::new();
    tasks.spawn(limits::follow(
        limits.clone(),
        access,
        nats::limits(&admitter.js, &nats_cfg).await?,
        LIMITS_REFRESH,
        shutdown.clone(),
    ));
    tasks.spawn(ops::serve(listener, router, shutdown.clone()));
    tasks.spawn(intake::follow_submissions(
        admitter.clone(),
        intake_consumer,
        cfg.intake_concurrency,
        shutdown.clone(),
    ));
    tasks.spawn(expiry::run(
        admitter.clone(),
        cancellations.clone(),
        cfg.expiry_interval,
        shutdown.clone(),
    ));
    tasks.spawn(cancel::serve_requests(
        admitter.clone(),
        cancellations,
        cancel_requests,
        shutdown.clone(),
    ));
    tasks.spawn(intake::serve_results(
        admitter.clone(),
        results_stream.clone(),
        result_requests,
        cfg.intake_concurrency,
        shutdown.clone(),
    ));
    tasks.spawn(intake::serve_requests(
        admitter.clone(),
        requests,
        cfg.intake_concurrency,
        shutdown.clone(),
    ));
    tasks.spawn(projection::follow(
        subjects::EVENTS_STREAM,
        events,
        batch,
        store.clone(),
        |s, items: Vec<JobEvent>| async move { s.apply_events(&items).await },
        shutdown.clone(),
    ));
    tasks.spawn(projection::follow(
        subjects::RESULTS_STREAM,
        results,
        batch,
        store.clone(),
        move |s, mut items: Vec<JobResult>| {
            let large = large.clone();
            let prices = settle_prices.clone();
            let limits = limits.clone();
            let budgets = budgets.clone();
            async move {
                for r in &mut items {
                    match large::resolve(&large, r).await {
                        Ok(()) => {}
                        // Kept no longer than results: recorded without it.
                        Err(e @ LargeError::Gone(_)) => warn!(error = %e, "large output lost"),
                        Err(e) => return Err(ProjectError::Large(e)),
                    }
                }
                s.apply_results(&items).await?;
                // Only budgets and queued-job limits hold anything for a
                // result to settle.
                if budgets.any() || limits.holds_places() {
                    // After the record: the cost is read from the job as recorded.
                    let mut jobs = Vec::with_capacity(items.len());
                    for r in &items {
                        let cost_micros = match budgets.any() {
                            true => s
                                .get(&r.job_id)
                                .await?
                                .map_or(0, |job| budget::job_cost(&prices, &job)),
                            false => 0,
                        };
                        jobs.push(Settlement {
                            job_id: r.job_id.clone(),
                            cost_micros,
                        });
                    }
                    s.settle(&jobs).await?;
                }
                if limits.counts_tokens() {
                    let used: Vec<(String, u32)> = items
                        .iter()
                        .filter_map(|r| match &r.outcome {
                            Outcome::Succeeded { usage, .. } => Some((
                                r.job_id.clone(),
                                usage.prompt_tokens + usage.completion_tokens,
                            )),
                            Outcome::Failed { .. } => None,
                        })
                        .collect();
                    s.correct_limits(&used, &limits.token_rates()).await?;
                }
                for r in &items {
                    let status = Status::of(&r.outcome).as_str();
                    metrics::counter!(m::FINISHED, "status" => status).increment(1);
                }
                Ok(())
            }
        },
        shutdown.clone(),
    ));
    tasks.spawn(projection::follow(
        subjects::BILLING_STREAM,
        usage,
        batch,
        store.clone(),
        move |s, items: Vec<UsageEvent>| {
            let charges: Vec<Charge> = items
                .into_iter()
                .map(|u| billing::charge(&prices, u, false))
                .collect();
            async move {
                // Counted once: a usage event seen again records nothing.
                for i in s.record_usage(&charges).await? {
                    let c = &charges[i];
                    metrics::counter!(m::USAGE_COST, "model" => c.usage.model.clone())
                        .increment(u64::try_from(c.cost_micros).unwrap_or(0));
                }
                Ok::<_, StoreError>(())
            }
        },
        shutdown.clone(),
    ));
    tasks.spawn(batches::run(state, shutdown.clone()));
    tasks.spawn(retention::run(
        store.clone(),
        cfg.result_retention,
        shutdown.clone(),
    ));
    tasks.spawn(webhooks::run(
        store.clone(),
        webhooks,
        cfg.webhooks.clone(),
        shutdown.clone(),
    ));
    tasks.spawn(outbox::run(
        admitter,
        cfg.outbox_interval,
        cfg.outbox_grace,
        shutdown.clone(),
    ));
    tasks.close();
    ready.watch(&client);
    ready.set(true);
    info!(listen = %cfg.listen, "broker ready");

    shutdown.cancelled().await;
    ready.set(false);
    tasks.wait().await;
    let _ = client.flush().await;
    info!("broker stopped");
    Ok(())
}
