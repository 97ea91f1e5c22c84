//! Heartbeats: the engine's and the GPUs' state, sent every interval and
//! whenever a slot frees up.

use super::*;

/// What the heartbeats report of the engine and the GPUs. Asking costs HTTP
/// requests and driver calls, and heartbeats come as often as slots free
/// up, so the answers are reused for up to `heartbeat_interval` — except
/// right after the engine failed a request, when readiness is what matters.
#[derive(Default)]
pub(super) struct Probe {
    at: Option<Instant>,
    gpus: Vec<GpuStats>,
    load: EngineLoad,
    ready: bool,
    /// A real request succeeded since the engine last failed: until then
    /// readiness is a real request, after that the cheap probe.
    proven: bool,
}

/// Longest the engine's housekeeping, or a real request that proves it,
/// may hold up a heartbeat; cut short, either is tried again at the next.
pub(super) const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

impl Probe {
    async fn refresh(&mut self, node: &Arc<Node>, max_age: Duration) {
        let suspect = node.engine_suspect.swap(false, Ordering::SeqCst);
        if suspect {
            self.proven = false;
        }
        if !suspect && self.at.is_some_and(|at| at.elapsed() < max_age) {
            return;
        }
        let sampler = node.clone();
        self.gpus = tokio::task::spawn_blocking(move || sampler.gpus.sample())
            .await
            .unwrap_or_default();
        let _ = tokio::time::timeout(PROBE_TIMEOUT, node.engine.tend()).await;
        self.load = node.engine.load().await;
        if let Some(depth) = self.load.queue_depth {
            metrics::gauge!(m::ENGINE_QUEUE).set(f64::from(depth));
        }
        if let Some(usage) = self.load.kv_cache_usage {
            metrics::gauge!(m::ENGINE_KV_CACHE).set(f64::from(usage));
        }
        self.ready = if self.proven {
            node.engine.ready().await
        } else {
            tokio::time::timeout(PROBE_TIMEOUT, node.engine.prove())
                .await
                .unwrap_or(false)
        };
        self.proven = self.ready;
        self.at = Some(Instant::now());
    }
}

/// Publishes the node's capacity every `heartbeat_interval`, and sooner (at
/// most every `heartbeat_min_gap`) when a slot frees up. Once `draining` is
/// cancelled the heartbeats say so, and the dispatcher sends no more work.
pub(super) async fn heartbeats(
    node: Arc<Node>,
    consumer: PullConsumer,
    cfg: AgentConfig,
    readiness: Readiness,
    draining: CancellationToken,
    stop: CancellationToken,
) {
    let mut probe = Probe::default();
    loop {
        probe.refresh(&node, cfg.heartbeat_interval).await;
        let queued = match consumer.get_info().await {
            Ok(info) => u32::try_from(info.num_pending).unwrap_or(u32::MAX),
            Err(e) => {
                warn!(error = %e, "cannot read work queue depth");
                0
            }
        };
        let hb = Heartbeat {
            v: SCHEMA_VERSION,
            node: node.id.clone(),
            at_ms: now_ms(),
            models: node.engine.models(),
            loadable: node.engine.loadable(),
            slots_total: node.engine.slots(),
            running: node.running.load(Ordering::SeqCst),
            queued,
            draining: draining.is_cancelled(),
            service_ms: Some(node.service_ms.load(Ordering::Relaxed)).filter(|ms| *ms > 0),
            gpus: probe.gpus.clone(),
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
