use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;
use switchyard_runtime::Issues;

/// The `dispatcher:` section of the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DispatcherConfig {
    pub listen: SocketAddr,
    /// A node whose last heartbeat is older than this is left out of placement.
    #[serde(with = "humantime_serde")]
    pub node_timeout: Duration,
    /// Assignments a node may hold waiting, per slot, beyond those it runs:
    /// enough to keep it busy between heartbeats, few enough that work does
    /// not pile up behind one node.
    pub prefetch_per_slot: u32,
    /// Most jobs taken from one queue in one pull.
    pub max_batch: u32,
    /// How long an idle dispatcher waits before looking at the queues again.
    #[serde(with = "humantime_serde")]
    pub idle_poll: Duration,
    /// How long a pulled job may wait for its assignment to be confirmed
    /// before NATS hands it out again.
    #[serde(with = "humantime_serde")]
    pub ack_wait: Duration,
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9100)),
            node_timeout: Duration::from_secs(5),
            prefetch_per_slot: 1,
            max_batch: 256,
            idle_poll: Duration::from_millis(20),
            ack_wait: Duration::from_secs(30),
        }
    }
}

impl DispatcherConfig {
    pub fn validate(&self, issues: &mut Issues) {
        issues.check(
            (1..=10_000).contains(&self.max_batch),
            "dispatcher.max_batch",
            self.max_batch,
            "must be between 1 and 10000",
        );
        issues.check(
            !self.idle_poll.is_zero(),
            "dispatcher.idle_poll",
            self.idle_poll,
            "must be positive",
        );
        issues.check(
            self.ack_wait >= Duration::from_secs(1),
            "dispatcher.ack_wait",
            self.ack_wait,
            "must be at least 1s",
        );
        issues.check(
            !self.node_timeout.is_zero(),
            "dispatcher.node_timeout",
            self.node_timeout,
            "must be positive",
        );
    }
}
