//! Heartbeats: the engine's and the GPUs' state, sent every interval and
//! whenever a slot frees up.

use tokio::sync::watch;

use super::*;

/// What the heartbeats report of the engine and the GPUs.
#[derive(Clone, Default)]
pub(super) struct Probed {
    gpus: Vec<GpuStats>,
    load: EngineLoad,
    ready: bool,
}

/// Longest the engine's housekeeping, or a real request that proves it,
/// may take; cut short, either is tried again at the next probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Asks the engine and the GPUs how they are, every `interval` and at once
/// when a job found the engine unavailable, and hands the answer to the
/// heartbeats. Apart from them, so that an engine slow to answer (busy, or
/// down until a request times out) never delays the heartbeat that tells
/// the dispatcher this node is alive.
pub(super) async fn probe(
    node: Arc<Node>,
    interval: Duration,
    probed: watch::Sender<Probed>,
    stop: CancellationToken,
) {
    // A real request succeeded since the engine last failed: until then
    // readiness is a real request, after that the cheap probe.
    let mut proven = false;
    loop {
        if node.engine_suspect.swap(false, Ordering::SeqCst) {
            proven = false;
        }
        let sampler = node.clone();
        let gpus = tokio::task::spawn_blocking(move || sampler.gpus.sample())
            .await
            .unwrap_or_default();
        let _ = tokio::time::timeout(PROBE_TIMEOUT, node.engine.tend()).await;
        let load = node.engine.load().await;
        if let Some(depth) = load.queue_depth {
            metrics::gauge!(m::ENGINE_QUEUE).set(f64::from(depth));
        }
        if let Some(usage) = load.kv_cache_usage {
            metrics::gauge!(m::ENGINE_KV_CACHE).set(f64::from(usage));
        }
        let ready = if proven {
            node.engine.ready().await
        } else {
            tokio::time::timeout(PROBE_TIMEOUT, node.engine.prove())
                .await
                .unwrap_or(false)
        };
        proven = ready;
        let was = probed.send_replace(Probed { gpus, load, ready }).ready;
        if was != ready {
            match ready {
                true => info!("engine serves"),
                false => warn!("engine does not serve; no work is taken until it does"),
            }
            node.wake_heartbeat.notify_one();
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
            () = node.wake_probe.notified() => {}
        }
    }
}

/// Publishes the node's capacity every `heartbeat_interval`, and sooner (at
/// most every `heartbeat_min_gap`) when a slot frees up or the engine's
/// readiness changes. Once `draining` is cancelled the heartbeats say so,
/// and the dispatcher sends no more work.
pub(super) async fn heartbeats(
    node: Arc<Node>,
    consumer: PullConsumer,
    cfg: AgentConfig,
    readiness: Readiness,
    draining: CancellationToken,
    stop: CancellationToken,
) {
    let (probed, seen) = watch::channel(Probed::default());
    node.tasks.spawn(probe(
        node.clone(),
        cfg.heartbeat_interval,
        probed,
        stop.clone(),
    ));
    loop {
        let probe = seen.borrow().clone();
        // Before what is held and running, which count what was read up to it.
        let read_through = node.read_through.load(Ordering::SeqCst);
        let held = lock(&node.held).clone();
        let in_queue = undelivered(&node, &consumer, &held).await;
        let queued = held
            .values()
            .fold(in_queue, |sum, n| sum.saturating_add(*n));
        let hb = Heartbeat {
            v: SCHEMA_VERSION,
            node: node.id.clone(),
            at_ms: now_ms(),
            models: node.offered(node.engine.models()),
            loadable: node.offered(node.engine.loadable()),
            slots_total: node.engine.slots(),
            running: node.running.load(Ordering::SeqCst),
            queued,
            held,
            read_through: Some(read_through),
            draining: draining.is_cancelled(),
            service_ms: Some(node.service_ms.load(Ordering::Relaxed)).filter(|ms| *ms > 0),
            service_ms_by_model: node
                .service_ms_by_model
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
            gpus: probe.gpus,
            engine: probe.load,
            ready: probe.ready,
        };
        if !hb.draining {
            // `/readyz` follows the engine: no work for a node that cannot serve it.
            readiness.set(hb.ready);
        }
        match encode(&hb) {
            Ok(bytes) => {
                if let Err(e) = node
                    .client
                    .publish(subjects::heartbeat(&node.id), bytes.into())
                    .await
                {
                    warn!(error = %e, "heartbeat not sent");
                }
                metrics::counter!(m::HEARTBEATS).increment(1);
            }
            Err(e) => warn!(error = %e, "heartbeat not encoded"),
        }
        let sent = Instant::now();
        tokio::select! {
            () = stop.cancelled() => return,
            () = draining.cancelled(), if !hb.draining => {}
            () = tokio::time::sleep(cfg.heartbeat_interval) => {}
            () = node.wake_heartbeat.notified() => {
                let since = sent.elapsed();
                if since < cfg.heartbeat_min_gap {
                    tokio::time::sleep(cfg.heartbeat_min_gap - since).await;
                }
            }
        }
    }
}

/// Assignments in the node's work queue that it has not been given yet.
/// Asking the server is a request per heartbeat, which a thousand nodes
/// would make a thousand times a second; it is asked only when there may
/// be some: the last delivery said more were waiting, or the node holds
/// all the server gives it before acknowledgements. Otherwise the server
/// hands each assignment over as it is placed, and none waits.
async fn undelivered(node: &Node, consumer: &PullConsumer, held: &BTreeMap<Priority, u32>) -> u32 {
    let holding = held
        .values()
        .fold(node.running.load(Ordering::SeqCst), |sum, n| {
            sum.saturating_add(*n)
        });
    if node.undelivered.load(Ordering::Relaxed) == 0 && holding < node.read_ahead {
        return 0;
    }
    match consumer.get_info().await {
        Ok(info) => {
            let undelivered = u32::try_from(info.num_pending).unwrap_or(u32::MAX);
            node.undelivered.store(undelivered, Ordering::Relaxed);
            undelivered
        }
        Err(e) => {
            warn!(error = %e, "cannot read work queue depth");
            node.undelivered.load(Ordering::Relaxed)
        }
    }
}
