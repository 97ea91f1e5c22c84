//! The cluster as a broker sees it, for the console and for scripts: each
//! node's last heartbeat and each model's last autoscale signal, both from
//! core NATS. Nothing here is durable: it is the state the components
//! report every second, and a broker that starts knows it within one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::Serialize;
use switchyard_schemas::{AutoscaleSignal, Heartbeat, decode, subjects};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// A node unheard of for this long is shown lost: the dispatcher's default
/// `node_timeout`, after which it places nothing there.
pub const LOST_AFTER: Duration = Duration::from_secs(5);
/// A node or model unheard of for this long is forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(600);
/// Heartbeats are published only by agents the NATS permissions name, but
/// the view stays bounded whatever is published.
const MAX_NODES: usize = 10_000;
const MAX_MODELS: usize = 10_000;

/// What the console shows of a node.
#[derive(Debug, Clone, Serialize)]
pub struct NodeState {
    /// `ready`, `draining`, `unready` (its engine does not answer) or
    /// `lost` (no heartbeat for `LOST_AFTER`).
    pub state: &'static str,
    pub seen_ms_ago: u64,
    #[serde(flatten)]
    pub heartbeat: Heartbeat,
}

#[derive(Default)]
struct Seen {
    nodes: HashMap<String, (Heartbeat, Instant)>,
    models: HashMap<String, (AutoscaleSignal, Instant)>,
}

/// The last word of every node and model, shared by the handlers.
#[derive(Clone, Default)]
pub struct Fleet {
    seen: Arc<Mutex<Seen>>,
}

impl Fleet {
    /// Every node heard of in the last ten minutes, by name.
    pub fn nodes(&self, now: Instant) -> Vec<NodeState> {
        let Ok(seen) = self.seen.lock() else {
            return Vec::new();
        };
        let mut nodes: Vec<NodeState> = seen
            .nodes
            .values()
            .map(|(hb, at)| {
                let ago = now.saturating_duration_since(*at);
                NodeState {
                    state: match () {
                        () if ago > LOST_AFTER => "lost",
                        () if hb.draining => "draining",
                        () if !hb.ready => "unready",
                        () => "ready",
                    },
                    seen_ms_ago: u64::try_from(ago.as_millis()).unwrap_or(u64::MAX),
                    heartbeat: hb.clone(),
                }
            })
            .collect();
        nodes.sort_by(|a, b| a.heartbeat.node.cmp(&b.heartbeat.node));
        nodes
    }

    /// The last signal of every model a dispatcher spoke of, by model.
    pub fn queues(&self) -> Vec<AutoscaleSignal> {
        let Ok(seen) = self.seen.lock() else {
            return Vec::new();
        };
        let mut queues: Vec<AutoscaleSignal> =
            seen.models.values().map(|(s, _)| s.clone()).collect();
        queues.sort_by(|a, b| a.model.cmp(&b.model));
        queues
    }

    fn heard(&self, heartbeat: Heartbeat, now: Instant) {
        let Ok(mut seen) = self.seen.lock() else {
            return;
        };
        let full = seen.nodes.len() >= MAX_NODES;
        match seen.nodes.get_mut(&heartbeat.node) {
            Some(known) => *known = (heartbeat, now),
            None if !full => {
                seen.nodes.insert(heartbeat.node.clone(), (heartbeat, now));
            }
            None => debug!(node = %heartbeat.node, "node view full: heartbeat not kept"),
        }
    }

    fn signalled(&self, signal: AutoscaleSignal, now: Instant) {
        let Ok(mut seen) = self.seen.lock() else {
            return;
        };
        // Several dispatchers publish the same figures; the newest stands.
        let newer = seen
            .models
            .get(&signal.model)
            .is_none_or(|(old, _)| old.at_ms <= signal.at_ms);
        if newer && (seen.models.len() < MAX_MODELS || seen.models.contains_key(&signal.model)) {
            seen.models.insert(signal.model.clone(), (signal, now));
        }
    }

    fn forget(&self, now: Instant) {
        if let Ok(mut seen) = self.seen.lock() {
            let fresh = |at: &Instant| now.saturating_duration_since(*at) < FORGET_AFTER;
            seen.nodes.retain(|_, (_, at)| fresh(at));
            seen.models.retain(|_, (_, at)| fresh(at));
        }
    }

    /// Keeps the view until `shutdown`.
    pub async fn follow(self, client: async_nats::Client, shutdown: CancellationToken) {
        let subscribed = async {
            let heartbeats = client.subscribe(subjects::HEARTBEAT_ALL).await?;
            let signals = client.subscribe(subjects::AUTOSCALE_ALL).await?;
            Ok::<_, async_nats::SubscribeError>((heartbeats, signals))
        };
        let (mut heartbeats, mut signals) = match subscribed.await {
            Ok(subs) => subs,
            Err(e) => {
                warn!(error = %e, "node view not followed");
                return;
            }
        };
        let mut sweep = tokio::time::interval(FORGET_AFTER / 10);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = sweep.tick() => self.forget(Instant::now()),
                Some(msg) = heartbeats.next() => match decode::<Heartbeat>(&msg.payload) {
                    Ok(hb) if msg.subject.as_str() == subjects::heartbeat(&hb.node) => {
                        self.heard(hb, Instant::now());
                    }
                    Ok(_) => debug!(subject = %msg.subject, "heartbeat for another node ignored"),
                    Err(e) => debug!(error = %e, "heartbeat not read"),
                },
                Some(msg) = signals.next() => match decode::<AutoscaleSignal>(&msg.payload) {
                    Ok(signal) => self.signalled(signal, Instant::now()),
                    Err(e) => debug!(error = %e, "autoscale signal not read"),
                },
                else => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_schemas::SCHEMA_VERSION;

    fn heartbeat(node: &str, draining: bool, ready: bool) -> Heartbeat {
        Heartbeat {
            v: SCHEMA_VERSION,
            node: node.into(),
            at_ms: 0,
            models: vec!["m".into()],
            slots_total: 4,
            running: 1,
            queued: 0,
            held: Default::default(),
            read_through: None,
            draining,
            ready,
            service_ms: None,
            service_ms_by_model: Default::default(),
            gpus: Vec::new(),
            engine: Default::default(),
            loadable: Vec::new(),
        }
    }

    #[test]
    fn a_node_is_ready_draining_unready_or_lost_and_is_forgotten_in_the_end() {
        let fleet = Fleet::default();
        let t0 = Instant::now();
        fleet.heard(heartbeat("c", false, true), t0);
        fleet.heard(heartbeat("a", true, true), t0);
        fleet.heard(heartbeat("b", false, false), t0);
        let states = |at| {
            fleet
                .nodes(at)
                .into_iter()
                .map(|n| (n.heartbeat.node, n.state))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            states(t0),
            [
                ("a".into(), "draining"),
                ("b".into(), "unready"),
                ("c".into(), "ready")
            ]
        );
        let later = t0 + LOST_AFTER + Duration::from_secs(1);
        fleet.heard(heartbeat("c", false, true), later);
        assert_eq!(states(later)[0].1, "lost");
        assert_eq!(states(later)[2].1, "ready");
        fleet.forget(t0 + FORGET_AFTER + Duration::from_secs(1));
        assert_eq!(states(later).len(), 1);
    }

    #[test]
    fn an_older_signal_does_not_replace_a_newer_one() {
        let fleet = Fleet::default();
        let signal = |at_ms, queued| AutoscaleSignal {
            v: SCHEMA_VERSION,
            model: "m".into(),
            desired_nodes: 1,
            queued,
            running: 0,
            arrivals_per_s: 0.0,
            service_ms: 0,
            at_ms,
            live_nodes: 0,
            priorities: Vec::new(),
        };
        let now = Instant::now();
        fleet.signalled(signal(2, 7), now);
        fleet.signalled(signal(1, 3), now);
        assert_eq!(fleet.queues()[0].queued, 7);
        fleet.signalled(signal(3, 9), now);
        assert_eq!(fleet.queues()[0].queued, 9);
    }
}
