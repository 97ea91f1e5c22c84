use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::future::OptionFuture;
use futures::{FutureExt, StreamExt};
use switchyard_runtime::grants::Grants;
use switchyard_runtime::nats::{self, NatsError};
use switchyard_runtime::ops::{self, ServeError};
use switchyard_runtime::telemetry::PrometheusHandle;
use switchyard_runtime::{NatsConfig, Registry, Tenants};
use switchyard_schemas::{Heartbeat, Priority, decode, subjects};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::aging::{aged_lanes, sweep_order};
use crate::autoscale::{self, Arrivals};
use crate::backlog::{self, Known, Looks, Queued};
use crate::batch::{Assigner, Placed, Placing, Take, dispatch_batch};
use crate::fair::Turn;
use crate::lanes::{self, Queue};
use crate::loads::Loads;
use crate::placement;
use crate::pulls::{Lane, Pulls};
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

/// How often the loop forgets long-silent nodes and sets the gauges that
/// count across all nodes.
const KEEPING: Duration = Duration::from_millis(100);

/// The fewest jobs a tenant's turn offers when more tenants are backlogged
/// in a queue than `dispatcher.max_lanes`.
const MANY_TENANTS_TURN: u32 = 16;

/// The doorbell rang: the `JOBS` stream stored a job, and told so on
/// `sy.queued.…` with the job's sequence. It counts towards the model's
/// arrival rate, and its tenant is known to have jobs queued without
/// another look.
fn rang(
    told: &async_nats::Message,
    arrivals: &mut Arrivals,
    looks: &mut Looks,
    known: &mut Option<Known>,
) {
    let Some(subject) = subjects::queue_of_queued(&told.subject) else {
        return;
    };
    arrivals.arrived(&subject);
    looks.rang();
    let sequence = told
        .headers
        .as_ref()
        .and_then(|h| h.get(async_nats::header::NATS_SEQUENCE))
        .and_then(|s| s.as_str().parse().ok());
    if let Some(known) = known {
        known.arrived(&subject, sequence.unwrap_or(u64::MAX));
    }
}

/// What a look at the backlog found (`None`: the server could not say): the
/// lanes of tenants drained for long close, and what is known is renewed.
async fn looked(
    seen: Option<Queued>,
    known: &mut Option<Known>,
    looks: &mut Looks,
    queues: &mut [Queue],
    js: &jetstream::Context,
    cfg: &DispatcherConfig,
) {
    let now = Instant::now();
    if let Some(seen) = &seen {
        lanes::close_lanes(queues, js, seen, cfg.max_lanes as usize, now).await;
    }
    looks.looked(seen.as_ref(), now);
    *known = seen.map(|seen| Known::renewed(seen, known.take(), now));
}

/// Places the job a pull standing on `lane` brought; returns its stream
/// sequence when it was placed.
async fn place_brought(
    lane: &Lane,
    msg: async_nats::jetstream::Message,
    queues: &mut [Queue],
    assigner: &mut Assigner<'_>,
    (cfg, cluster, running): (&DispatcherConfig, &mut Cluster, &Running),
    tenants: &Tenants,
) -> Option<u64> {
    let sequence = msg.info().map(|i| i.stream_sequence).ok();
    let queue = queues.iter_mut().find(|q| q.prefix == lane.prefix);
    // Its model left the registry, or its tenant reached its running bound,
    // since the pull was left: the job waits in its lane for a sweep.
    let Some(q) = queue.filter(|_| running.tenant_room(&lane.tenant) != Some(0)) else {
        let _ = msg
            .ack_with(async_nats::jetstream::AckKind::Nak(None))
            .await;
        return None;
    };
    let mut placing = Placing::new(Take {
        max: 1,
        aged_past: None,
    });
    placing.offer(assigner, msg, cfg, cluster, running).await;
    assigner.confirm(cluster).await;
    let placed = placing.placed;
    if placed.jobs == 0 {
        return None;
    }
    let weight = tenants.weight(&lane.tenant);
    q.fair
        .charge(&lane.tenant, placed.served(cfg.fair_share), weight);
    sequence
}

/// Leaves a pull standing on `lane`, the last served, when its tenant and
/// its model have room for the job it would bring.
async fn stand(
    pulls: &mut Pulls,
    lane: &Lane,
    queues: &[Queue],
    cluster: &Cluster,
    running: &Running,
) {
    let Some(q) = queues.iter().find(|q| q.prefix == lane.prefix) else {
        return;
    };
    let Some(consumer) = q.open_lane(&lane.tenant) else {
        return;
    };
    if cluster.capacity_for(&q.model, q.priority, Instant::now()) == 0
        || running.tenant_room(&lane.tenant) == Some(0)
    {
        return;
    }
    if let Err(e) = pulls.stand(lane.clone(), consumer).await {
        warn!(error = %e, tenant = %lane.tenant, "cannot leave a pull standing on a lane");
    }
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
    let mut aged_at = Some(Instant::now());
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
    let mut pulls = Pulls::new(&client, &js).await?;
    // The lane that last had jobs placed: a pull stands on it while every
    // queue is empty.
    let mut last_served: Option<Lane> = None;
    let mut arrivals = Arrivals::new(cfg.autoscale.rate_window, Instant::now());
    let mut signalled_at = Instant::now();
    // A doorbell that wakes an idle dispatcher as soon as a job is stored,
    // instead of at its next poll.
    let mut doorbell = client.subscribe(subjects::QUEUED_ALL).await?;
    let mut looks = Looks::new(cfg.idle_poll);
    let mut known: Option<Known> = None;
    // A look at the backlog in flight, when the loop goes on meanwhile.
    let mut refresh: Option<JoinHandle<Option<Queued>>> = None;
    let mut kept_at: Option<Instant> = None;
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
            rang(&msg, &mut arrivals, &mut looks, &mut known);
        }
        while let Some(msg) = pulls.ready() {
            pulls.sort(msg).await;
        }
        if let Some((lane, msg)) = pulls.brought() {
            let placed = place_brought(
                &lane,
                msg,
                &mut queues,
                &mut Assigner::new(&js, &grants),
                (&cfg, &mut cluster, &running),
                &tenants,
            )
            .await;
            if let (Some(known), Some(sequence)) = (known.as_mut(), placed) {
                known.took(&format!("{}.{}", lane.prefix, lane.tenant), sequence);
            }
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
        // Every heartbeat wakes this loop: what looks at every node is done
        // at most every `KEEPING`, or a thousand nodes would make it a
        // million node visits a second.
        if kept_at.is_none_or(|at| now.duration_since(at) >= KEEPING) {
            kept_at = Some(now);
            for node in cluster.forget_stale(now) {
                info!(%node, "node forgotten after a long silence");
                reclaimer.forget(&node);
            }
            metrics::gauge!(m::NODES).set(cluster.healthy(now).count() as f64);
            metrics::gauge!(m::FREE_SLOTS).set(f64::from(cluster.free_total(now)));
            metrics::gauge!(m::LANES)
                .set(queues.iter().map(Queue::lanes_open).sum::<usize>() as f64);
        }
        if now.duration_since(signalled_at) >= cfg.autoscale.every {
            signalled_at = now;
            autoscale::signal(
                &js,
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
                reclaimer.reclaim(&js, &mut pulls, &node).await;
            }
        }

        // Highest priority first; after any progress, start again from the top
        // so a higher level never waits behind a lower one.
        let mut progressed = false;
        // The top level also has the room of held work it may displace.
        // Queues known to be empty need neither a look nor room.
        let has_room = looks.due(now) && cluster.room_total(Priority::Critical, now) > 0;
        if let Some(seen) = refresh.as_mut().and_then(|r| r.now_or_never()) {
            refresh = None;
            let seen = seen.ok().flatten();
            looked(seen, &mut known, &mut looks, &mut queues, &js, &cfg).await;
        }
        if has_room {
            match &known {
                // Nothing to go on: the sweep waits for the answer.
                None => {
                    let seen = backlog::look(&js).await;
                    looked(seen, &mut known, &mut looks, &mut queues, &js, &cfg).await;
                }
                // The doorbell keeps what is known up to date: the look that
                // renews it runs beside the sweeps, not ahead of them.
                Some(k) if !k.fresh(now) && refresh.is_none() => {
                    let js = js.clone();
                    refresh = Some(tasks.spawn(async move { backlog::look(&js).await }));
                }
                Some(_) => {}
            }
        }
        // Only worth knowing when a job could be placed now.
        if has_room && aged_at.is_none_or(|at| now.duration_since(at) >= aging_check) {
            aged_at = Some(now);
            let queued = known.as_ref().map(Known::queued);
            aged = aged_lanes(&jobs_stream, &queues, queued, cfg.aging_bound).await;
        }
        let aged_queues: Vec<usize> = aged.iter().map(|(i, _)| *i).collect();
        for i in sweep_order(queues.len(), &aged_queues) {
            let q = &mut queues[i];
            // Without room nothing is tried; when the server could not say
            // what is queued, every lane already open is.
            let waiting: Vec<String> = match (has_room, &known) {
                (false, _) => Vec::new(),
                (true, Some(known)) => known.tenants(&q.prefix),
                (true, None) => q.open_lanes().cloned().collect(),
            };
            let mut turns = q.fair.sweep(
                waiting
                    .iter()
                    .filter(|t| running.tenant_room(t) != Some(0))
                    .map(|t| (t.as_str(), tenants.weight(t))),
            );
            // With more tenants backlogged than lanes may stay open, most
            // turns open a lane: each then offers enough jobs to be worth it.
            let min_turn = match waiting.len() > cfg.max_lanes as usize {
                true => MANY_TENANTS_TURN,
                false => 1,
            };
            // An aged lane jumps ahead with the jobs that have waited past
            // the bound, and only those overtake higher levels.
            let aged_lane = aged.iter().find(|(j, _)| *j == i).map(|(_, t)| t.clone());
            // The queue's lanes are served in turn, by weight, until its
            // model's room is used: one look at the backlog serves them
            // all, however many tenants share the room.
            let mut placed = 0;
            let mut assigner = Assigner::new(&js, &grants);
            while !turns.is_empty() {
                let room = cluster.capacity_for(&q.model, q.priority, Instant::now());
                if room == 0 {
                    if placed == 0 {
                        loads.ask(&cluster, &q.model, Instant::now());
                    }
                    break;
                }
                let (turn, share) = match &aged_lane {
                    Some(tenant) => {
                        let weight = tenants.weight(tenant);
                        (Turn::of(tenant, weight), room.min(cfg.max_batch))
                    }
                    None => match q.fair.next(&mut turns, room.min(cfg.max_batch), min_turn) {
                        Some(chosen) => chosen,
                        None => break,
                    },
                };
                let tenant = turn.tenant.to_owned();
                let max = match running.tenant_room(&tenant) {
                    Some(left) => share.min(left),
                    None => share,
                };
                // A tenant at its running bound takes no turn, and no lane is
                // opened for it. A lane a pull stands on has its jobs brought.
                let stands = pulls.stands_on(&q.prefix, &tenant);
                let lane = match max {
                    _ if stands => None,
                    0 => None,
                    _ => match q.lane(&js, &tenant, &cfg).await {
                        Ok(lane) => Some(lane),
                        Err(e) => {
                            warn!(error = %e, %tenant, "cannot open a tenant's lane");
                            None
                        }
                    },
                };
                let asked = max.min(room);
                let got = match lane {
                    Some(lane) => dispatch_batch(
                        &mut assigner,
                        &mut pulls,
                        &lane,
                        Take {
                            max: asked,
                            aged_past: aged_lane.is_some().then_some(cfg.aging_bound),
                        },
                        (&cfg, &mut cluster, &running),
                    )
                    .await
                    .unwrap_or_else(|e| {
                        // The lane's consumer may have expired: opened again next time.
                        q.forget(&tenant);
                        warn!(error = %e, priority = %q.priority, model = %q.model, %tenant, "pull failed");
                        Placed::default()
                    }),
                    None => Placed::default(),
                };
                let n = got.jobs;
                if n > 0 {
                    q.fair
                        .charge(&tenant, got.served(cfg.fair_share), turn.weight);
                    debug!(priority = %q.priority, model = %q.model, %tenant, n, "dispatched");
                    placed += n;
                    if !last_served
                        .as_ref()
                        .is_some_and(|l| l.is(&q.prefix, &tenant))
                    {
                        last_served = Some(Lane {
                            prefix: q.prefix.clone(),
                            tenant: tenant.clone(),
                        });
                    }
                }
                if aged_lane.is_some() {
                    // Whose job has waited longest is asked again before the
                    // next turn ahead, so that aged tenants go oldest first.
                    aged_at = None;
                    break;
                }
                if n < asked.max(1) {
                    // Drained, held back, or failing: its turn in this sweep
                    // is over, and until a job of its arrives or the next
                    // look finds it still has some.
                    turns.done(turn);
                    // A tenant at its running bound was not asked: its jobs
                    // still wait.
                    if let Some(known) = known.as_mut().filter(|_| max > 0 && !stands) {
                        known.drained(&q.prefix, &tenant);
                    }
                } else {
                    q.fair.again(&mut turns, turn);
                }
            }
            assigner.confirm(&mut cluster).await;
            if placed > 0 {
                progressed = true;
                break;
            }
        }
        if !progressed {
            if let Some(lane) = last_served
                .as_ref()
                .filter(|_| known.as_ref().is_some_and(Known::is_empty))
            {
                stand(&mut pulls, lane, &queues, &cluster, &running).await;
            }
            tokio::select! {
                () = shutdown.cancelled() => break 'run,
                msg = heartbeats.next() => match msg {
                    Some(msg) => observe(&mut cluster, msg),
                    None => break 'run,
                },
                Some(msg) = doorbell.next() => {
                    rang(&msg, &mut arrivals, &mut looks, &mut known);
                }
                Some(msg) = pulls.answer() => pulls.sort(msg).await,
                Some(seen) = OptionFuture::from(refresh.as_mut()), if refresh.is_some() => {
                    refresh = None;
                    looked(seen.ok().flatten(), &mut known, &mut looks, &mut queues, &js, &cfg).await;
                }
                () = tokio::time::sleep(cfg.idle_poll) => {}
            }
        }
    }
    ready.set(false);
    info!("dispatcher stopping");
    pulls.give_back().await;
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
