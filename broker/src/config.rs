use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;
use switchyard_runtime::Issues;

/// The `broker:` section of the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    pub listen: SocketAddr,
    /// `sqlite://path` (created if missing).
    pub database_url: String,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Submissions handled at once from the NATS intake.
    pub intake_concurrency: usize,
    /// Most events or results written to the database in one transaction.
    pub projection_batch: usize,
    /// How often jobs recorded but never confirmed in the queue (a crash in
    /// between) are published again.
    #[serde(with = "humantime_serde")]
    pub outbox_interval: Duration,
    /// Age after which such a job counts as abandoned by its first publish.
    #[serde(with = "humantime_serde")]
    pub outbox_grace: Duration,
    /// How often jobs still waiting past their start deadline are looked for
    /// and ended `expired`.
    #[serde(with = "humantime_serde")]
    pub expiry_interval: Duration,
    /// `Retry-After` given with a 429 for a full queue.
    #[serde(with = "humantime_serde")]
    pub queue_full_retry_after: Duration,
    /// How long an `Idempotency-Key` returns the job it first made.
    #[serde(with = "humantime_serde")]
    pub idempotency_window: Duration,
    /// How long a call that waits for its job (the OpenAI-compatible
    /// endpoints, `Prefer: wait`) may wait before it is answered; the job
    /// goes on either way.
    #[serde(with = "humantime_serde")]
    pub sync_timeout: Duration,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            database_url: "sqlite://.data/switchyard.db".into(),
            max_body_bytes: 1024 * 1024,
            intake_concurrency: 256,
            projection_batch: 512,
            outbox_interval: Duration::from_secs(5),
            outbox_grace: Duration::from_secs(10),
            expiry_interval: Duration::from_secs(1),
            queue_full_retry_after: Duration::from_secs(2),
            idempotency_window: Duration::from_secs(24 * 3600),
            sync_timeout: Duration::from_secs(600),
        }
    }
}

impl BrokerConfig {
    pub fn validate(&self, issues: &mut Issues) {
        issues.check(
            self.database_url.starts_with("sqlite:"),
            "broker.database_url",
            &self.database_url,
            "must be a sqlite: URL (PostgreSQL arrives in a later release)",
        );
        issues.check(
            (1024..=64 * 1024 * 1024).contains(&self.max_body_bytes),
            "broker.max_body_bytes",
            self.max_body_bytes,
            "must be between 1 KiB and 64 MiB",
        );
        issues.check(
            (1..=10_000).contains(&self.intake_concurrency),
            "broker.intake_concurrency",
            self.intake_concurrency,
            "must be between 1 and 10000",
        );
        issues.check(
            (1..=10_000).contains(&self.projection_batch),
            "broker.projection_batch",
            self.projection_batch,
            "must be between 1 and 10000",
        );
        issues.check(
            !self.outbox_interval.is_zero(),
            "broker.outbox_interval",
            self.outbox_interval,
            "must be positive",
        );
        issues.check(
            !self.expiry_interval.is_zero(),
            "broker.expiry_interval",
            self.expiry_interval,
            "must be positive",
        );
    }
}
