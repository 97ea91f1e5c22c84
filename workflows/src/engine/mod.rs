//! The engine role (`switchyard workflows`): turns start requests from
//! NATS into runs (`intake.rs`), takes run tickets from `WFRUNS`, drives
//! each run by its state machine over its history, and
//! carries out what it decides. Several engines may run; each ticket is
//! held by one at a time, and one that dies loses its runs to the others
//! after a lease.

mod driver;
mod effects;
mod http_step;
mod intake;
mod metrics;
mod worker;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use futures::StreamExt;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use switchyard_runtime::grants::Grants;
use switchyard_runtime::guard::Guard;
use switchyard_runtime::nats::{self, ConsumerSpec, NatsError};
use switchyard_runtime::{Issues, NatsConfig, ops};
use switchyard_schemas::subjects;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use effects::effect_id;
pub use worker::{DONE_STREAM, TASKS_STREAM, consumer_name};

use crate::runs::{POKES_ALL, RUNS_STREAM, Runs, RunsError, TICKETS_ALL, Ticket};
use crate::template::Templates;
use crate::validate::Workflows;

/// The `workflow_engine:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// Ops endpoints: `/metrics`, `/healthz`, `/readyz`.
    pub listen: SocketAddr,
    /// How long a run stays with an engine that stopped renewing it before
    /// another engine takes it over.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// Most runs one engine drives at once.
    pub max_runs: u32,
    /// Longest an HTTP step's call may take when its step sets no `timeout`.
    #[serde(with = "humantime_serde")]
    pub http_timeout: Duration,
    /// Largest response body an HTTP step reads.
    pub max_response_bytes: usize,
    /// Networks (`10.0.0.0/8`) and host names HTTP steps may reach although
    /// they are internal.
    pub allow: Vec<String>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9110)),
            lease: Duration::from_secs(10),
            max_runs: 10_000,
            http_timeout: Duration::from_secs(30),
            max_response_bytes: 1024 * 1024,
            allow: Vec::new(),
        }
    }
}

impl EngineConfig {
    pub fn validate(&self, issues: &mut Issues) {
        issues.check(
            self.lease >= Duration::from_secs(1),
            "workflow_engine.lease",
            humantime::format_duration(self.lease),
            "must be at least 1s",
        );
        issues.check(
            self.max_runs >= 1,
            "workflow_engine.max_runs",
            self.max_runs,
            "must be at least 1",
        );
        issues.check(
            !self.http_timeout.is_zero(),
            "workflow_engine.http_timeout",
            humantime::format_duration(self.http_timeout),
            "must be positive",
        );
        for entry in &self.allow {
            issues.check(
                switchyard_runtime::guard::AllowEntry::parse(entry).is_some(),
                "workflow_engine.allow",
                entry,
                "is neither a network, an address nor a host name",
            );
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Nats(#[from] NatsError),
    #[error(transparent)]
    Runs(#[from] RunsError),
    #[error(transparent)]
    Ops(#[from] switchyard_runtime::ops::ServeError),
    #[error("cannot subscribe: {0}")]
    Subscribe(#[from] async_nats::SubscribeError),
    #[error("cannot read tickets: {0}")]
    Tickets(String),
    #[error("cannot build the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    #[error("worker task queues: {0}")]
    Worker(#[from] worker::WorkerSetupError),
}

/// What every run's driver shares.
pub(crate) struct Engine {
    pub cfg: EngineConfig,
    pub workflows: Arc<Workflows>,
    pub templates: Templates,
    pub runs: Runs,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    /// Workers' answers.
    pub done: jetstream::stream::Stream,
    pub results: jetstream::stream::Stream,
    pub large: jetstream::object_store::ObjectStore,
    pub grants: Grants,
    pub http: reqwest::Client,
    pub guard: Guard,
    /// The runs this engine drives, told when their history grew.
    pub pokes: Mutex<HashMap<String, Arc<Notify>>>,
}

/// Runs the engine until `shutdown`; the runs it held are handed back at
/// once, for another engine (or this one restarted) to take.
pub async fn run(
    cfg: EngineConfig,
    nats_cfg: NatsConfig,
    workflows: Arc<Workflows>,
    metrics: PrometheusHandle,
    shutdown: CancellationToken,
) -> Result<(), EngineError> {
    metrics::describe();
    let ops_tasks = TaskTracker::new();
    let ops_stop = CancellationToken::new();
    let ready = ops::start(cfg.listen, metrics, &ops_tasks, ops_stop.clone()).await?;
    let (client, js) = nats::connect(&nats_cfg, "workflows").await?;
    nats::ensure_streams(&js, &nats_cfg).await?;
    let runs = Runs::open(js.clone(), &nats_cfg).await?;
    let guard = Guard::new(&cfg.allow);
    let http = reqwest::Client::builder()
        .dns_resolver(Arc::new(guard.clone()))
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(10))
        .build()?;
    let consumer = nats::durable_consumer(
        &js,
        ConsumerSpec {
            stream: RUNS_STREAM,
            durable: "workflows".into(),
            filter: TICKETS_ALL.into(),
            ack_wait: cfg.lease,
            max_ack_pending: i64::from(cfg.max_runs),
            inactive_threshold: Duration::ZERO,
            state_in_memory: false,
        },
    )
    .await?;
    let done = worker::open(&js, &nats_cfg, workflows.queues()).await?;
    let start_requests = intake::open(&js).await?;
    let engine = Arc::new(Engine {
        done,
        js: js.clone(),
        workflows,
        templates: Templates::default(),
        results: nats::stream(&js, subjects::RESULTS_STREAM).await?,
        large: switchyard_runtime::large::store(&js, &nats_cfg).await?,
        grants: Grants::load(&js, &nats_cfg).await?,
        runs,
        client: client.clone(),
        http,
        guard,
        pokes: Mutex::new(HashMap::new()),
        cfg,
    });
    let mut pokes = client.subscribe(POKES_ALL).await?;
    let mut tickets = consumer
        .messages()
        .await
        .map_err(|e| EngineError::Tickets(e.to_string()))?;
    ready.set(true);
    ready.watch(&client);
    tracing::info!("driving workflow runs");
    let drivers = TaskTracker::new();
    drivers.spawn(intake::serve(
        engine.clone(),
        start_requests,
        shutdown.clone(),
    ));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            Some(poke) = pokes.next() => {
                let run = poke.subject.as_str().rsplit('.').next().unwrap_or_default();
                let notify = engine.pokes.lock().ok().and_then(|p| p.get(run).cloned());
                if let Some(notify) = notify {
                    notify.notify_one();
                }
            }
            msg = tickets.next() => match msg {
                Some(Ok(msg)) => {
                    drivers.spawn(hold(engine.clone(), msg, shutdown.clone()));
                }
                Some(Err(e)) => tracing::warn!(error = %e, "reading run tickets"),
                None => return Err(EngineError::Tickets("the ticket consumer ended".into())),
            },
        }
    }
    ready.set(false);
    drivers.close();
    drivers.wait().await;
    ops_stop.cancel();
    ops_tasks.close();
    ops_tasks.wait().await;
    tracing::info!("stopped; unfinished runs were handed back");
    Ok(())
}

/// Drives one ticket's run while holding the ticket: renews its lease, and
/// acknowledges it once the run has ended (or hands it back on shutdown).
async fn hold(engine: Arc<Engine>, msg: jetstream::Message, shutdown: CancellationToken) {
    let ticket: Ticket = match serde_json::from_slice(&msg.payload) {
        Ok(ticket) => ticket,
        Err(e) => {
            tracing::error!(subject = %msg.subject, error = %e, "a run ticket that does not decode is dropped");
            let _ = msg.ack_with(AckKind::Term).await;
            return;
        }
    };
    let run = ticket.run.id.clone();
    let renew_every = engine.cfg.lease / 3;
    let notify = Arc::new(Notify::new());
    if let Ok(mut pokes) = engine.pokes.lock() {
        pokes.insert(run.clone(), notify.clone());
    }
    let driving = driver::drive(engine.clone(), ticket, notify, shutdown);
    tokio::pin!(driving);
    let mut renew =
        tokio::time::interval_at(tokio::time::Instant::now() + renew_every, renew_every);
    let ended = loop {
        tokio::select! {
            ended = &mut driving => break ended,
            _ = renew.tick() => {
                if let Err(e) = msg.ack_with(AckKind::Progress).await {
                    tracing::warn!(run, error = %e, "renewing the run's lease");
                }
            }
        }
    };
    if let Ok(mut pokes) = engine.pokes.lock() {
        pokes.remove(&run);
    }
    let ack = match ended {
        Ok(driver::Ended::Finished) => msg.double_ack().await.map_err(|e| e.to_string()),
        Ok(driver::Ended::HandedBack) => msg
            .ack_with(AckKind::Nak(None))
            .await
            .map_err(|e| e.to_string()),
        Err(e) => {
            // Another try after a pause, by whichever engine takes it: in a
            // rolling upgrade, one whose configuration has the run's
            // workflow version.
            let delivered = msg.info().map_or(1, |i| i.delivered);
            let pause = retry_pause(delivered);
            tracing::error!(run, error = %e, retry_in_s = pause.as_secs(), "driving the run failed; it is tried again");
            msg.ack_with(AckKind::Nak(Some(pause)))
                .await
                .map_err(|e| e.to_string())
        }
    };
    if let Err(e) = ack {
        tracing::warn!(run, error = %e, "answering the run's ticket");
    }
}

/// The pause before a ticket whose run could not be driven is tried again,
/// after its `delivered`-th delivery: a second, doubled each time, at most
/// a minute, so a run no engine can drive is not retried every second.
fn retry_pause(delivered: i64) -> Duration {
    let doublings = u32::try_from(delivered.saturating_sub(1))
        .unwrap_or(u32::MAX)
        .min(6);
    Duration::from_secs(1 << doublings).min(Duration::from_secs(60))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_that_cannot_be_driven_is_tried_again_ever_more_slowly_up_to_a_minute() {
        let pauses: Vec<u64> = [1, 2, 3, 4, 6, 7, 50, i64::MAX]
            .into_iter()
            .map(|d| retry_pause(d).as_secs())
            .collect();
        assert_eq!(pauses, [1, 2, 4, 8, 32, 60, 60, 60]);
    }
}
