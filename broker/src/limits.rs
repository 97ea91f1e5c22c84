//! Rate limits per tenant: requests and tokens per minute, as GCRA (the
//! generic cell rate algorithm). Each limit is a theoretical arrival time
//! in the job store, taken by one conditional update, so every broker that
//! shares the database enforces the same limit. A request may come early
//! by the burst tolerance (a sixth of a minute's allowance by default): in
//! any minute a tenant gets at most its limit plus its burst.
//!
//! Tokens are estimated at admission (a token per four bytes of prompt
//! plus `max_tokens`) and corrected when the job's result brings the
//! engine's count.

use std::collections::HashMap;

use switchyard_runtime::{RateLimits, Tenants};

/// One limit to take from: its key, what this request costs of it, and
/// how early a request may come.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Take {
    pub key: String,
    /// Which limit, for the client: `requests_per_minute`, `tokens_per_minute`.
    pub limit: &'static str,
    pub cost_us: i64,
    pub tolerance_us: i64,
}

/// The limits of every tenant that has some.
#[derive(Debug, Default)]
pub struct Limits {
    tenants: HashMap<String, RateLimits>,
}

const MINUTE_US: i64 = 60_000_000;

impl Limits {
    pub fn new(tenants: &Tenants) -> Limits {
        Limits {
            tenants: tenants
                .iter()
                .filter_map(|t| Some((t.name.clone(), t.limits?)))
                .collect(),
        }
    }

    /// What a request of `tokens` takes from its tenant's limits.
    pub fn takes(&self, tenant: &str, tokens: u32) -> Vec<Take> {
        let Some(l) = self.tenants.get(tenant) else {
            return Vec::new();
        };
        let mut takes = Vec::new();
        if let Some(rpm) = l.requests_per_minute.filter(|r| *r > 0) {
            let interval = MINUTE_US / i64::from(rpm);
            let burst = l.burst_requests.unwrap_or(rpm / 6 + 1).max(1);
            takes.push(Take {
                key: format!("{tenant}:rpm"),
                limit: "requests_per_minute",
                cost_us: interval,
                tolerance_us: interval * i64::from(burst - 1),
            });
        }
        if let Some(tpm) = l.tokens_per_minute.filter(|t| *t > 0) {
            let per_token = MINUTE_US / i64::from(tpm);
            let burst = l.burst_tokens.unwrap_or(tpm / 6).max(tokens);
            takes.push(Take {
                key: format!("{tenant}:tpm"),
                limit: "tokens_per_minute",
                cost_us: per_token * i64::from(tokens),
                tolerance_us: per_token * i64::from(burst.saturating_sub(tokens)),
            });
        }
        takes
    }

    /// The most jobs a tenant may have admitted and not yet ended.
    pub fn max_queued(&self, tenant: &str) -> Option<u32> {
        self.tenants.get(tenant)?.max_queued_jobs
    }

    /// Whether some tenant has a `max_queued_jobs`, whose places finished
    /// jobs free.
    pub fn holds_places(&self) -> bool {
        self.tenants.values().any(|l| l.max_queued_jobs.is_some())
    }

    /// Whether some tenant has a token limit, which finished jobs correct.
    pub fn counts_tokens(&self) -> bool {
        self.tenants
            .values()
            .any(|l| l.tokens_per_minute.is_some_and(|t| t > 0))
    }

    /// The token limit of a tenant: its key and the time one token costs.
    pub fn token_rate(&self, tenant: &str) -> Option<(String, i64)> {
        let tpm = self
            .tenants
            .get(tenant)?
            .tokens_per_minute
            .filter(|t| *t > 0)?;
        Some((format!("{tenant}:tpm"), MINUTE_US / i64::from(tpm)))
    }
}
