use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;
use switchyard_runtime::Issues;

use crate::autoscale::AutoscaleConfig;
use crate::placement::PolicyKind;

/// What the weighted fair share among a queue's tenants counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FairBy {
    /// Tokens: each job's prompt (a token per four bytes) and its
    /// `max_tokens`, what its GPU time grows with. A tenant sending long
    /// prompts gets fewer jobs placed than one sending short ones, for
    /// the same share of the engines.
    #[default]
    Tokens,
    /// Jobs, whatever their size.
    Jobs,
}

/// The `dispatcher:` section of the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DispatcherConfig {
    pub listen: SocketAddr,
    /// How a node is chosen among those that can take a job.
    pub placement: PolicyKind,
    /// What tenants' shares of a queue are counted in.
    pub fair_share: FairBy,
    /// A node whose last heartbeat is older than this is left out of placement.
    #[serde(with = "humantime_serde")]
    pub node_timeout: Duration,
    /// Assignments a node may hold waiting, per slot, beyond those it runs:
    /// enough to keep it busy between heartbeats, few enough that work does
    /// not pile up behind one node. The agent reads as many (it takes this
    /// setting from the same file) and starts the highest level first.
    pub prefetch_per_slot: u32,
    /// Most jobs taken from one queue in one pull.
    pub max_batch: u32,
    /// Most tenants' lanes (JetStream consumers on `JOBS`) kept open at
    /// once, across all queues. The server checks every consumer of the
    /// stream on each acknowledgement, so with thousands of tenants
    /// backlogged the lanes served longest ago close, and open again on
    /// their tenant's next turn.
    pub max_lanes: u32,
    /// How long an idle dispatcher waits before looking at the queues again.
    #[serde(with = "humantime_serde")]
    pub idle_poll: Duration,
    /// How long a pulled job may wait for its assignment to be confirmed
    /// before NATS hands it out again.
    #[serde(with = "humantime_serde")]
    pub ack_wait: Duration,
    /// Wait before the first retry of a failed job; doubles with each
    /// further failure, up to `retry_backoff_max`.
    #[serde(with = "humantime_serde")]
    pub retry_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_backoff_max: Duration,
    /// A job waiting longer than this is served before higher levels, so
    /// that no level starves.
    #[serde(with = "humantime_serde")]
    pub aging_bound: Duration,
    /// How long a node asked to load a model may take before another is
    /// asked.
    #[serde(with = "humantime_serde")]
    pub model_load_timeout: Duration,
    /// On SIGTERM, readiness goes to 503 at once and placement stops; the
    /// dispatcher's other work gets this long to end before it exits.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// The desired-nodes signal for autoscalers.
    pub autoscale: AutoscaleConfig,
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9100)),
            placement: PolicyKind::default(),
            fair_share: FairBy::default(),
            node_timeout: Duration::from_secs(5),
            prefetch_per_slot: 1,
            max_batch: 256,
            max_lanes: 128,
            idle_poll: Duration::from_millis(20),
            ack_wait: Duration::from_secs(30),
            retry_backoff: Duration::from_secs(1),
            retry_backoff_max: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(30),
            aging_bound: Duration::from_secs(60),
            model_load_timeout: Duration::from_secs(600),
            autoscale: AutoscaleConfig::default(),
        }
    }
}

impl DispatcherConfig {
    pub fn validate(&self, issues: &mut Issues) {
        self.autoscale.validate(issues);
        issues.check(
            (1..=10_000).contains(&self.max_batch),
            "dispatcher.max_batch",
            self.max_batch,
            "must be between 1 and 10000",
        );
        issues.check(
            (1..=100_000).contains(&self.max_lanes),
            "dispatcher.max_lanes",
            self.max_lanes,
            "must be between 1 and 100000",
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
            self.retry_backoff <= self.retry_backoff_max,
            "dispatcher.retry_backoff",
            self.retry_backoff,
            "must not exceed dispatcher.retry_backoff_max",
        );
        issues.check(
            !self.aging_bound.is_zero(),
            "dispatcher.aging_bound",
            self.aging_bound,
            "must be positive",
        );
        issues.check(
            !self.node_timeout.is_zero(),
            "dispatcher.node_timeout",
            self.node_timeout,
            "must be positive",
        );
        issues.check(
            !self.model_load_timeout.is_zero(),
            "dispatcher.model_load_timeout",
            self.model_load_timeout,
            "must be positive",
        );
    }
}

impl DispatcherConfig {
    /// How long `job` must still wait before its next attempt may run:
    /// `retry_backoff × 2^(failures − 1)` after its last failure, capped.
    pub fn retry_delay(&self, job: &switchyard_schemas::Job, now_ms: i64) -> Option<Duration> {
        let last = job.failures.last()?;
        let doublings = u32::try_from(job.failures.len() - 1)
            .unwrap_or(u32::MAX)
            .min(20);
        let backoff = self
            .retry_backoff
            .saturating_mul(1 << doublings)
            .min(self.retry_backoff_max);
        let elapsed = Duration::from_millis(u64::try_from(now_ms - last.at_ms).unwrap_or(0));
        backoff.checked_sub(elapsed).filter(|d| !d.is_zero())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use switchyard_schemas::{ErrorClass, Failure, Job, JobError};

    pub(crate) fn job_with_failures(at: &[i64]) -> Job {
        Job {
            id: "j".into(),
            submitted_at_ms: 0,
            attempt: u32::try_from(at.len()).unwrap() + 1,
            max_attempts: 10,
            failures: at
                .iter()
                .enumerate()
                .map(|(i, at_ms)| Failure {
                    attempt: u32::try_from(i).unwrap() + 1,
                    node: "n".into(),
                    at_ms: *at_ms,
                    error: JobError::new(ErrorClass::Overloaded, "busy"),
                })
                .collect(),
            ..Job::fixture("j")
        }
    }

    #[test]
    fn retry_backoff_doubles_and_is_capped() {
        let cfg = DispatcherConfig {
            retry_backoff: Duration::from_millis(100),
            retry_backoff_max: Duration::from_millis(350),
            ..DispatcherConfig::default()
        };
        assert_eq!(
            cfg.retry_delay(&job_with_failures(&[]), 0),
            None,
            "first attempts wait for nothing"
        );
        let once = job_with_failures(&[1_000]);
        assert_eq!(
            cfg.retry_delay(&once, 1_030),
            Some(Duration::from_millis(70))
        );
        assert_eq!(cfg.retry_delay(&once, 1_100), None);
        let twice = job_with_failures(&[0, 1_000]);
        assert_eq!(
            cfg.retry_delay(&twice, 1_000),
            Some(Duration::from_millis(200))
        );
        let many = job_with_failures(&[0, 0, 0, 0, 1_000]);
        assert_eq!(
            cfg.retry_delay(&many, 1_000),
            Some(Duration::from_millis(350))
        );
    }
}
