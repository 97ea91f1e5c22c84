use std::sync::Arc;
use std::time::Duration;

use switchyard_runtime::grants::Grants;
use switchyard_runtime::nats::{self, ConsumerSpec, NatsError};
use switchyard_runtime::ops::{self, ServeError};
use switchyard_runtime::telemetry::PrometheusHandle;
use switchyard_runtime::{NatsConfig, Readiness, Registry, Tenants};
use switchyard_runtime::{http_server, large};
use switchyard_schemas::{JobEvent, JobResult, UsageEvent, subjects};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use axum::extract::State;
use switchyard_core::admission::{Admitter, Policies};
use switchyard_core::auth::Auth;
use switchyard_core::batches::{self, BatchRunner, RunnerParts};
use switchyard_core::budget::Budgets;
use switchyard_core::cache::{self, ResultCache};
use switchyard_core::calls::{CallParts, Calls};
use switchyard_core::cancel::{self, Canceller};
use switchyard_core::config::PepperError;
use switchyard_core::dead_letters::DeadLetters;
use switchyard_core::limits::{self, Limits};
use switchyard_core::models::{self, LiveRegistry, ModelsError};
use switchyard_core::pii::Pii;
use switchyard_core::projection::{self, Results};
use switchyard_core::recorded::Recorded;
use switchyard_core::shares::Shares;
use switchyard_core::watch::Watcher;
use switchyard_core::webhooks::{self, Webhooks};
use switchyard_core::{BrokerConfig, expiry, intake, metrics as m, outbox, retention};
use switchyard_http::{ApiState, Knobs, RunSources, TraceLink};
use switchyard_store::{AccessStore, BatchStore, JobStore, SqlStore, StoreError};

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
    Pepper(#[from] PepperError),
    #[error("workflow runs: {0}")]
    Runs(#[from] switchyard_workflows::runs::RunsError),
    #[error("model registry: {0}")]
    Models(#[from] ModelsError),
}

const CONSUMER_ACK_WAIT: Duration = Duration::from_secs(30);
/// How soon limits the admin API sets apply on every broker.
const LIMITS_REFRESH: Duration = Duration::from_secs(2);

/// Runs the broker until `shutdown` is cancelled, then drains in phases:
/// readiness goes to 503 first, calls in flight finish (within
/// `drain_timeout`), then the HTTP server and the intakes stop taking new
/// work (within `drain_timeout` again), and what is unacknowledged stays in
/// the streams.
pub async fn run(
    cfg: BrokerConfig,
    nats_cfg: NatsConfig,
    registry: Registry,
    tenants: Tenants,
    workflows: Arc<switchyard_workflows::Workflows>,
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
    // The ops port first: a supervisor that reads the log for the port
    // finds it on the first "listening on" line.
    let ops_listener = ops::bind(cfg.ops_listen).await?;
    let listener = ops::bind(cfg.listen).await?;
    let (client, js) = nats::connect(&nats_cfg, "broker").await?;
    nats::ensure_streams(&js, &nats_cfg).await?;
    let grants = Grants::load(&js, &nats_cfg).await?;

    let consumer = |stream, durable: &str, filter: &str, pending: usize| ConsumerSpec {
        stream,
        durable: durable.to_owned(),
        filter: filter.to_owned(),
        ack_wait: CONSUMER_ACK_WAIT,
        max_ack_pending: i64::try_from(pending).unwrap_or(i64::MAX),
        inactive_threshold: Duration::ZERO,
        state_in_memory: false,
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
    let live = LiveRegistry::open(
        nats::models(&js, &nats_cfg).await?,
        registry.clone(),
        client.clone(),
    )
    .await?;
    let budgets = Arc::new(Budgets::new(&tenants));
    let (admitter, writers) = Admitter::new(Policies {
        registry: registry.clone(),
        store: store.clone(),
        js: js.clone(),
        webhooks: webhooks.clone(),
        pii,
        budgets: budgets.clone(),
        grants: grants.clone(),
        limits: limits.clone(),
    });
    let ready = Readiness::default();
    let dead = nats::stream(&js, subjects::DEAD_STREAM).await?;
    let results_stream = nats::stream(&js, subjects::RESULTS_STREAM).await?;
    let canceller = Canceller::new(admitter.clone(), nats::cancellations(&js, &nats_cfg).await?);
    let cache = match cache::longest_ttl(&registry) {
        Some(ttl) => Some(ResultCache::new(
            nats::result_cache(&js, &nats_cfg, ttl).await?,
        )),
        None => None,
    };
    let large = large::store(&js, &nats_cfg).await?;
    let cancel_requests = client
        .queue_subscribe(subjects::CANCEL, "broker".into())
        .await?;
    let result_requests = client
        .queue_subscribe(subjects::RESULT_REQUESTS, "broker".into())
        .await?;
    let files = batches::Files::open(&js, &nats_cfg).await?;

    // Work (the intakes, projections and loops) and the HTTP server stop
    // on tokens of their own, after readiness has gone and calls in
    // flight have had their time.
    let work = CancellationToken::new();
    let http_stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    // Admission's batched writes go on until everything that admits has
    // stopped.
    let writers_stop = CancellationToken::new();
    let writing = TaskTracker::new();
    writing.spawn(writers.run(writers_stop.clone()));
    writing.close();
    // One token per HTTP request in flight.
    let inflight = TaskTracker::new();
    let (gone_streams, sweep) = switchyard_http::sweeper(js.clone(), work.clone());
    tasks.spawn(sweep);
    let recorded = Arc::new(Recorded::default());
    let calls = Calls::new(CallParts {
        admitter: admitter.clone(),
        canceller: canceller.clone(),
        watcher: Watcher::new(
            client.clone(),
            results_stream.clone(),
            large.clone(),
            grants.clone(),
        ),
        cache,
        tasks: tasks.clone(),
        sync_timeout: cfg.sync_timeout,
        resume_grace: cfg.stream_resume_grace,
        recorded: recorded.clone(),
    });
    // The run streams before the consumer that follows their histories.
    let runs = switchyard_workflows::runs::Runs::open(js.clone(), &nats_cfg).await?;
    let run_histories = nats::durable_consumer(
        &js,
        consumer(
            switchyard_workflows::journal::STREAM,
            "broker-runs",
            switchyard_workflows::journal::SUBJECTS,
            batch * 4,
        ),
    )
    .await?;
    let fleet = switchyard_core::fleet::Fleet::default();
    let state = ApiState {
        calls,
        canceller: canceller.clone(),
        store: store.clone(),
        readiness: ready.clone(),
        batch_store: batch_store.clone(),
        files: files.clone(),
        dead_letters: DeadLetters::new(admitter.clone(), dead, results_stream.clone()),
        auth,
        client_address_header: cfg
            .auth
            .client_address_header
            .as_deref()
            .and_then(|h| axum::http::HeaderName::try_from(h).ok()),
        tenants: Arc::new(tenants),
        event_streams: Shares::new(cfg.max_event_streams_per_tenant),
        gone_streams,
        knobs: Knobs {
            max_body_bytes: cfg.max_body_bytes,
            max_file_bytes: cfg.max_file_bytes,
            max_file_bytes_per_tenant: cfg.max_file_bytes_per_tenant,
            queue_full_retry_after: cfg.queue_full_retry_after.as_secs().max(1),
            idempotency_window_ms: i64::try_from(cfg.idempotency_window.as_millis())
                .unwrap_or(i64::MAX),
        },
        runs: runs.clone(),
        workflows: workflows.clone(),
        webhooks: webhooks.clone(),
        live: live.clone(),
        fleet: fleet.clone(),
        trace_link: TraceLink(cfg.trace_link.as_deref().map(Arc::from)),
    };
    // Probes and scrapes are answered until the very end, on a token of
    // their own.
    let ops_stop = CancellationToken::new();
    let ops_tasks = TaskTracker::new();
    ops_tasks.spawn(http_server::serve(
        ops_listener,
        ops::router(metrics, ready.clone()),
        ops_stop.clone(),
        cfg.http,
    ));
    ops_tasks.close();
    let router = switchyard_http::router(state).layer(axum::middleware::from_fn_with_state(
        inflight.clone(),
        in_flight,
    ));

    tasks.spawn(http_server::serve(
        listener,
        router,
        http_stop.clone(),
        cfg.http,
    ));
    tasks.spawn(limits::follow(
        limits.clone(),
        access,
        nats::limits(&js, &nats_cfg).await?,
        LIMITS_REFRESH,
        work.clone(),
    ));
    tasks.spawn(intake::follow_submissions(
        admitter.clone(),
        intake_consumer,
        cfg.intake_concurrency,
        work.clone(),
    ));
    tasks.spawn(expiry::run(
        admitter.clone(),
        canceller.clone(),
        cfg.expiry_interval,
        work.clone(),
    ));
    tasks.spawn(cancel::serve_requests(
        canceller.clone(),
        cancel_requests,
        work.clone(),
    ));
    tasks.spawn(intake::serve_results(
        admitter.clone(),
        results_stream,
        result_requests,
        cfg.intake_concurrency,
        work.clone(),
    ));
    tasks.spawn(intake::serve_requests(
        admitter.clone(),
        requests,
        cfg.intake_concurrency,
        work.clone(),
    ));
    tasks.spawn(projection::follow(
        subjects::EVENTS_STREAM,
        events,
        batch,
        store.clone(),
        (
            {
                let grants = grants.clone();
                move |e: &JobEvent| grants.vouches_event(e)
            },
            {
                let admitting = admitter.admitting().clone();
                move |s: Arc<dyn JobStore>, items: Vec<JobEvent>| {
                    let admitting = admitting.clone();
                    async move {
                        admitting
                            .written(items.iter().map(|e| e.job_id.as_str()))
                            .await;
                        s.apply_events(&items).await
                    }
                }
            },
        ),
        work.clone(),
    ));
    let recorder = Results {
        large,
        registry: registry.clone(),
        limits,
        budgets,
        recorded: recorded.clone(),
    };
    tasks.spawn(projection::follow(
        subjects::RESULTS_STREAM,
        results,
        batch,
        store.clone(),
        (
            {
                let grants = grants.clone();
                move |r: &JobResult| grants.vouches_result(r)
            },
            {
                let admitting = admitter.admitting().clone();
                move |s, items: Vec<JobResult>| {
                    let (recorder, admitting) = (recorder.clone(), admitting.clone());
                    async move {
                        admitting
                            .written(items.iter().map(|r| r.job_id.as_str()))
                            .await;
                        recorder.apply(s, items).await
                    }
                }
            },
        ),
        work.clone(),
    ));
    tasks.spawn(projection::follow(
        subjects::BILLING_STREAM,
        usage,
        batch,
        store.clone(),
        (
            move |u: &UsageEvent| grants.vouches_usage(u),
            move |s, items: Vec<UsageEvent>| {
                let registry = registry.clone();
                // The ledger keeps usage whether or not its job is recorded.
                async move {
                    projection::record_usage(s, &registry, items)
                        .await
                        .map(|()| Vec::new())
                }
            },
        ),
        work.clone(),
    ));
    tasks.spawn(batches::run(
        BatchRunner::new(RunnerParts {
            admitter: admitter.clone(),
            canceller,
            batch_store,
            files,
            max_line_bytes: cfg.max_body_bytes,
            status_of: switchyard_http::job_error_status,
        }),
        work.clone(),
    ));
    tasks.spawn(switchyard_http::follow_runs(
        run_histories,
        batch,
        store.clone(),
        RunSources { runs, workflows },
        work.clone(),
    ));
    tasks.spawn(live.clone().follow(work.clone()));
    tasks.spawn(fleet.follow(client.clone(), work.clone()));
    if let Some(mlflow) = cfg.mlflow.clone() {
        tasks.spawn(models::mlflow::run(live.clone(), mlflow, work.clone()));
    }
    tasks.spawn(models::drive::run(
        live,
        store.clone(),
        cfg.rollout_interval,
        work.clone(),
    ));
    tasks.spawn(retention::run(
        store.clone(),
        cfg.result_retention,
        work.clone(),
    ));
    tasks.spawn(webhooks::run(
        store,
        webhooks,
        cfg.webhooks.clone(),
        work.clone(),
    ));
    tasks.spawn(outbox::run(
        admitter,
        cfg.outbox_interval,
        cfg.outbox_grace,
        work.clone(),
    ));
    tasks.close();
    ready.watch(&client);
    ready.set(true);
    info!(listen = %cfg.listen, "broker ready");

    shutdown.cancelled().await;
    // Readiness first, so that balancers stop sending; the listener stays
    // open, and probes are answered 503, while calls in flight finish.
    ready.set(false);
    inflight.close();
    if tokio::time::timeout(cfg.drain_timeout, inflight.wait())
        .await
        .is_err()
    {
        warn!(
            timeout = ?cfg.drain_timeout,
            "calls still in flight at the end of the drain"
        );
    }
    http_stop.cancel();
    work.cancel();
    if tokio::time::timeout(cfg.drain_timeout, tasks.wait())
        .await
        .is_err()
    {
        warn!("work still running at the end of the drain: what is unacknowledged is redelivered");
    }
    writers_stop.cancel();
    writing.wait().await;
    let _ = client.flush().await;
    ops_stop.cancel();
    ops_tasks.wait().await;
    info!("broker stopped");
    Ok(())
}

/// Holds a token of `inflight` while a request is handled.
async fn in_flight(
    State(inflight): State<TaskTracker>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let _token = inflight.token();
    next.run(req).await
}
