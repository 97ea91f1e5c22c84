use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::{self, Context};
use futures::{FutureExt, StreamExt, TryStreamExt};
use switchyard_runtime::grants::Grants;
use switchyard_runtime::nats::{self, ConsumerSpec, NatsError};
use switchyard_runtime::ops::{self, ServeError};
use switchyard_runtime::telemetry::PrometheusHandle;
use switchyard_runtime::{NatsConfig, Registry, Tenants};
use switchyard_schemas::{Heartbeat, Priority, decode, subjects};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::aging::{aged_lanes, sweep_order};
use crate::autoscale::{self, Arrivals};
use crate::batch::{Placed, dispatch_batch};
use crate::fair::FairShare;
use crate::loads::Loads;
use crate::placement;
use crate::reclaim::Reclaimer;
use crate::running::{self, Running};
use crate::{Cluster, DispatcherConfig, metrics as m};

#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error(transparent)]
    Nats(#[from] NatsError),
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error("cannot subscribe to heartbeats or the job queues: {0}")]
    Subscribe(#[from] async_nats::SubscribeError),
}

/// Consumers of tenants that queue nothing for this long are removed by the
/// server, so tenants that come and go leave nothing behind.
const LANE_IDLE_EXPIRY: Duration = Duration::from_secs(3600);

/// One queue the dispatcher drains: the jobs of one model at one priority,
/// one lane (subject and consumer) per tenant, shared out by weight.
pub(crate) struct Queue {
    pub(crate) priority: Priority,
    model: String,
    /// `sy.jobs.<priority>.<model>`; a tenant's lane adds its name.
    pub(crate) prefix: String,
    pub(crate) lanes: HashMap<String, PullConsumer>,
    fair: FairShare,
}

impl Queue {
    /// The queues of the registry's models at every priority, highest
    /// first; those of `held` that stay are kept with their lanes.
    fn all(registry: &Registry, mut held: Vec<Queue>) -> Vec<Queue> {
        let models = registry.models();
        let mut queues = Vec::new();
        for priority in Priority::ALL {
            for model in &models {
                let prefix = subjects::jobs_of_model(priority, &model.name);
                queues.push(match held.iter().position(|q| q.prefix == prefix) {
                    Some(i) => held.swap_remove(i),
                    None => Queue {
                        priority,
                        model: model.name.clone(),
                        prefix,
                        lanes: HashMap::new(),
                        fair: FairShare::default(),
                    },
                });
            }
        }
        queues
    }

    /// The tenant's lane, its consumer created on first use.
    async fn lane(
        &mut self,
        js: &Context,
        tenant: &str,
        cfg: &DispatcherConfig,
    ) -> Result<PullConsumer, NatsError> {
        if let Some(c) = self.lanes.get(tenant) {
            return Ok(c.clone());
        }
        let durable = format!(
            "dispatch-{}-{}-{tenant}",
            self.priority,
            subjects::model_token(&self.model)
        );
        let spec = || ConsumerSpec {
            stream: subjects::JOBS_STREAM,
            durable: durable.clone(),
            filter: subjects::jobs(self.priority, &self.model, tenant),
            ack_wait: cfg.ack_wait,
            max_ack_pending: i64::from(cfg.max_batch) * 4,
            inactive_threshold: LANE_IDLE_EXPIRY,
            // A server writing each lane's state to disk at every ack costs
            // a file write per job per lane: thousands of tenants' lanes
            // would cost more than their jobs. A job delivered twice is
            // placed once (the assignment's message id is its attempt).
            state_in_memory: true,
        };
        let consumer = match nats::durable_consumer(js, spec()).await {
            Ok(consumer) => consumer,
            Err(e) => {
                // A lane as an earlier release made it, or one left in a
                // bad state: made afresh, its jobs delivered again.
                debug!(error = %e, %tenant, "lane made afresh");
                let _ = js
                    .delete_consumer_from_stream(&durable, subjects::JOBS_STREAM)
                    .await;
                nats::durable_consumer(js, spec()).await?
            }
        };
        self.lanes.insert(tenant.to_owned(), consumer.clone());
        Ok(consumer)
    }
}

/// Tenants with jobs queued now, by queue prefix. One request answers for
/// every queue, so an idle dispatcher costs the same whatever the number of
/// models and tenants. `None` when the server could not say: then every
/// lane already known is tried.
async fn backlog(jobs: &jetstream::stream::Stream) -> Option<HashMap<String, Vec<String>>> {
    let counts = jobs.info_with_subjects(subjects::JOBS_ALL).await.ok()?;
    let counts: Vec<(String, usize)> = counts.try_collect().await.ok()?;
    let mut backlog: HashMap<String, Vec<String>> = HashMap::new();
    for (subject, n) in counts {
        if let (true, Some((prefix, tenant))) = (n > 0, subject.rsplit_once('.')) {
            backlog
                .entry(prefix.to_owned())
                .or_default()
                .push(tenant.to_owned());
        }
    }
    Some(backlog)
}

/// Runs the dispatcher until `shutdown` is cancelled.
pub async fn run(
    cfg: DispatcherConfig,
    nats_cfg: NatsConfig,
    registry: Registry,
    tenants: Tenants,
    metrics: PrometheusHandle,
    shutdown: CancellationToken,
) -> Result<(), DispatchError> {
    m::describe();
    let tasks = TaskTracker::new();
    // The ops listener stops last, on a token of its own, so that probes
    // and scrapes see the drain.
    let ops_tasks = TaskTracker::new();
    let ops_stop = CancellationToken::new();
    let ready = ops::start(cfg.listen, metrics, &ops_tasks, ops_stop.clone()).await?;

    let (client, js) = nats::connect(&nats_cfg, "dispatcher").await?;
    nats::ensure_streams(&js, &nats_cfg).await?;
    let grants = Grants::load(&js, &nats_cfg).await?;
    tasks.spawn(switchyard_runtime::registry::follow(
        registry.clone(),
        nats::models(&js, &nats_cfg).await?,
        shutdown.clone(),
    ));
    // Models added or removed live open or close their queues.
    let mut queues = Queue::all(&registry, Vec::new());
    let mut queues_at = registry.revision();
    let jobs_stream = nats::stream(&js, subjects::JOBS_STREAM).await?;
    let mut cluster = Cluster::new(
        cfg.node_timeout,
        cfg.prefetch_per_slot,
        placement::build(cfg.placement),
    );
    let mut reclaimer = Reclaimer::new(
        nats::stream(&js, subjects::WORK_STREAM).await?,
        grants.clone(),
    );
    for node in reclaimer.known_nodes().await {
        cluster.seed(&node, Instant::now());
    }
    // Looking for lost nodes' work often enough to matter, rarely enough to
    // cost nothing.
    let reclaim_every = (cfg.node_timeout / 5).max(Duration::from_millis(100));
    let mut last_reclaim = Instant::now();
    let aging_check =
        (cfg.aging_bound / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut aged_at = Instant::now();
    let mut aged: Vec<(usize, String)> = Vec::new();
    let loads = Loads::new(
        client.clone(),
        cfg.model_load_timeout,
        tasks.clone(),
        shutdown.clone(),
    );
    let running = Arc::new(Running::new(tenants.max_running()));
    tasks.spawn(running::follow_bounds(
        running.clone(),
        nats::limits(&js, &nats_cfg).await?,
        shutdown.clone(),
    ));
    tasks.spawn(running::follow(
        running.clone(),
        client.clone(),
        nats::stream(&js, subjects::WORK_STREAM).await?,
        shutdown.clone(),
    ));
    let mut heartbeats = client.subscribe(subjects::HEARTBEAT_ALL).await?;
    let mut arrivals = Arrivals::new(cfg.autoscale.rate_window, Instant::now());
    let mut signalled_at = Instant::now();
    // Publishes to the job queues reach plain subscribers too: a doorbell
    // that wakes an idle dispatcher as soon as a job arrives, instead of at
    // its next poll.
    let mut doorbell = client.subscribe(subjects::JOBS_ALL).await?;
    ready.watch(&client);
    ready.set(true);
    info!(listen = %cfg.listen, queues = queues.len(), "dispatcher ready");

    let observe =
        |cluster: &mut Cluster, msg: async_nats::Message| match decode::<Heartbeat>(&msg.payload) {
            Ok(hb) => cluster.observe(&hb, Instant::now()),
            Err(e) => warn!(error = %e, subject = %msg.subject, "bad heartbeat ignored"),
        };

    'run: while !shutdown.is_cancelled() {
        while let Some(Some(msg)) = heartbeats.next().now_or_never() {
            observe(&mut cluster, msg);
        }
        while let Some(Some(msg)) = doorbell.next().now_or_never() {
            arrivals.arrived(&msg.subject);
        }
        if registry.revision() != queues_at {
            queues_at = registry.revision();
            queues = Queue::all(&registry, std::mem::take(&mut queues));
            // Kept by index: the old ones are wrong now.
            aged.clear();
            info!(
                revision = queues_at,
                queues = queues.len(),
                "queues follow the live registry"
            );
        }
        let now = Instant::now();
        for node in cluster.forget_stale(now) {
            info!(%node, "node forgotten after a long silence");
            reclaimer.forget(&node);
        }
        if now.duration_since(signalled_at) >= cfg.autoscale.every {
            signalled_at = now;
            autoscale::signal(
                &client,
                &jobs_stream,
                &cluster,
                &mut arrivals,
                &registry,
                &cfg.autoscale,
                now,
            )
            .await;
        }
        if now.duration_since(last_reclaim) >= reclaim_every {
            last_reclaim = now;
            for node in cluster.reclaimable(now) {
                reclaimer.reclaim(&js, &node).await;
            }
        }
        metrics::gauge!(m::NODES).set(cluster.healthy(now).count() as f64);
        metrics::gauge!(m::FREE_SLOTS).set(f64::from(cluster.free_total(now)));

        // Highest priority first; after any progress, start again from the top
        // so a higher level never waits behind a lower one.
        let mut progressed = false;
        // The top level also has the room of held work it may displace.
        let has_room = cluster.room_total(Priority::Critical, now) > 0;
        let backlog = if has_room {
            backlog(&jobs_stream).await
        } else {
            Some(HashMap::new())
        };
        // Only worth knowing when a job could be placed now.
        if has_room && now.duration_since(aged_at) >= aging_check {
            aged_at = now;
            aged = aged_lanes(&jobs_stream, &queues, backlog.as_ref(), cfg.aging_bound).await;
        }
        let aged_queues: Vec<usize> = aged.iter().map(|(i, _)| *i).collect();
        for i in sweep_order(queues.len(), &aged_queues) {
            let q = &mut queues[i];
            let waiting: Vec<String> = match &backlog {
                Some(b) => b.get(&q.prefix).cloned().unwrap_or_default(),
                None => q.lanes.keys().cloned().collect(),
            };
            let mut weighted: Vec<(&str, u32)> = waiting
                .iter()
                .filter(|t| running.tenant_room(t) != Some(0))
                .map(|t| (t.as_str(), tenants.weight(t)))
                .collect();
            // An aged lane jumps ahead one job at a time, so that only jobs
            // past the bound overtake higher levels.
            let aged_lane = aged.iter().find(|(j, _)| *j == i).map(|(_, t)| t.clone());
            // The queue's lanes are served in turn, by weight, until its
            // model's room is used: one look at the backlog serves them
            // all, however many tenants share the room.
            let mut placed = 0;
            while !weighted.is_empty() {
                let room = cluster.capacity_for(&q.model, q.priority, Instant::now());
                if room == 0 {
                    if placed == 0 {
                        loads.ask(&cluster, &q.model, Instant::now());
                    }
                    break;
                }
                let chosen = match &aged_lane {
                    Some(tenant) => Some((tenant.as_str(), 1)),
                    None => q.fair.next(&weighted, room.min(cfg.max_batch)),
                };
                let Some((tenant, share)) = chosen else {
                    break;
                };
                let tenant = tenant.to_owned();
                let max = match running.tenant_room(&tenant) {
                    Some(left) => share.min(left),
                    None => share,
                };
                // A tenant at its running bound takes no turn, and no lane is
                // opened for it.
                let lane = match max {
                    0 => None,
                    _ => match q.lane(&js, &tenant, &cfg).await {
                        Ok(lane) => Some(lane),
                        Err(e) => {
                            warn!(error = %e, %tenant, "cannot open a tenant's lane");
                            None
                        }
                    },
                };
                let got = match lane {
                    Some(lane) => dispatch_batch(
                        &js,
                        &grants,
                        &lane,
                        max.min(room),
                        &cfg,
                        &mut cluster,
                        &running,
                    )
                    .await
                    .unwrap_or_else(|e| {
                        // The lane's consumer may have expired: opened again next time.
                        q.lanes.remove(&tenant);
                        warn!(error = %e, priority = %q.priority, model = %q.model, %tenant, "pull failed");
                        Placed::default()
                    }),
                    None => Placed::default(),
                };
                let n = got.jobs;
                if n > 0 {
                    q.fair
                        .charge(&tenant, got.served(cfg.fair_share), tenants.weight(&tenant));
                    debug!(priority = %q.priority, model = %q.model, %tenant, n, "dispatched");
                    placed += n;
                }
                if aged_lane.is_some() {
                    break;
                }
                if n < max.max(1) {
                    // Drained, held back, or failing: its turn in this sweep is over.
                    weighted.retain(|(t, _)| *t != tenant);
                }
            }
            if placed > 0 {
                progressed = true;
                break;
            }
        }
        if !progressed {
            tokio::select! {
                () = shutdown.cancelled() => break 'run,
                msg = heartbeats.next() => match msg {
                    Some(msg) => observe(&mut cluster, msg),
                    None => break 'run,
                },
                Some(msg) = doorbell.next() => arrivals.arrived(&msg.subject),
                () = tokio::time::sleep(cfg.idle_poll) => {}
            }
        }
    }
    ready.set(false);
    info!("dispatcher stopping");
    tasks.close();
    if tokio::time::timeout(cfg.drain_timeout, tasks.wait())
        .await
        .is_err()
    {
        warn!(timeout = ?cfg.drain_timeout, "work still running at the end of the drain");
    }
    ops_stop.cancel();
    ops_tasks.close();
    ops_tasks.wait().await;
    info!("dispatcher stopped");
    Ok(())
}
