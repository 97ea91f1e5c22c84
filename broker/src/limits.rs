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
use std::sync::{Arc, RwLock};
use std::time::Duration;

use switchyard_runtime::{RateLimits, Tenants};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::store::{AccessStore, TenantRecord};

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

/// An API key's own limits, taken besides its tenant's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyLimits {
    pub id: String,
    pub limits: RateLimits,
}

/// The limits of every tenant that has some: the configuration's, each
/// replaced by the admin API's when it set some.
#[derive(Debug, Default)]
pub struct Limits {
    configured: HashMap<String, RateLimits>,
    tenants: RwLock<HashMap<String, RateLimits>>,
}

const MINUTE_US: i64 = 60_000_000;

impl Limits {
    pub fn new(tenants: &Tenants) -> Limits {
        let configured: HashMap<String, RateLimits> = tenants
            .iter()
            .filter_map(|t| Some((t.name.clone(), t.limits?)))
            .collect();
        Limits {
            tenants: RwLock::new(configured.clone()),
            configured,
        }
    }

    /// Takes in the limits the admin API set, which replace the
    /// configuration's for their tenants.
    pub fn refresh(&self, stored: &[TenantRecord]) {
        let mut all = self.configured.clone();
        for t in stored {
            match t.limits {
                Some(l) => all.insert(t.name.clone(), l),
                None => all.remove(&t.name),
            };
        }
        if let Ok(mut tenants) = self.tenants.write() {
            *tenants = all;
        }
    }

    fn of(&self, tenant: &str) -> Option<RateLimits> {
        self.tenants.read().ok()?.get(tenant).copied()
    }

    fn any(&self, f: impl Fn(&RateLimits) -> bool) -> bool {
        self.tenants
            .read()
            .is_ok_and(|tenants| tenants.values().any(f))
    }

    /// What a request of `tokens` takes from its tenant's limits and from
    /// its key's.
    pub fn takes(&self, tenant: &str, key: Option<&KeyLimits>, tokens: u32) -> Vec<Take> {
        let mut takes = Vec::new();
        if let Some(l) = self.of(tenant) {
            push_takes(&mut takes, tenant, &l, tokens, TENANT_LIMITS);
        }
        if let Some(k) = key {
            let holder = format!("key:{}", k.id);
            push_takes(&mut takes, &holder, &k.limits, tokens, KEY_LIMITS);
        }
        takes
    }

    /// The most jobs a tenant may have admitted and not yet ended.
    pub fn max_queued(&self, tenant: &str) -> Option<u32> {
        self.of(tenant)?.max_queued_jobs
    }

    /// Whether some tenant has a `max_queued_jobs`, whose places finished
    /// jobs free.
    pub fn holds_places(&self) -> bool {
        self.any(|l| l.max_queued_jobs.is_some())
    }

    /// Whether some tenant has a token limit, which finished jobs correct.
    pub fn counts_tokens(&self) -> bool {
        self.any(|l| l.tokens_per_minute.is_some_and(|t| t > 0))
    }

    /// The token limit of a tenant: its key and the time one token costs.
    pub fn token_rate(&self, tenant: &str) -> Option<(String, i64)> {
        let tpm = self.of(tenant)?.tokens_per_minute.filter(|t| *t > 0)?;
        Some((format!("{tenant}:tpm"), MINUTE_US / i64::from(tpm)))
    }
}

/// Reads the limits the admin API set every `every`, until shutdown.
pub async fn follow(
    limits: Arc<Limits>,
    store: Arc<dyn AccessStore>,
    every: Duration,
    shutdown: CancellationToken,
) {
    loop {
        match store.list_tenants().await {
            Ok(stored) => limits.refresh(&stored),
            Err(e) => warn!(error = %e, "cannot read tenants' limits; the last read stay"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// The names a client is told, of a tenant's limits and of a key's.
const TENANT_LIMITS: [&str; 2] = ["requests_per_minute", "tokens_per_minute"];
const KEY_LIMITS: [&str; 2] = ["key_requests_per_minute", "key_tokens_per_minute"];

/// The takes of one holder's limits (a tenant, or `key:<id>`).
fn push_takes(
    takes: &mut Vec<Take>,
    holder: &str,
    l: &RateLimits,
    tokens: u32,
    [rpm_name, tpm_name]: [&'static str; 2],
) {
    if let Some(rpm) = l.requests_per_minute.filter(|r| *r > 0) {
        let interval = MINUTE_US / i64::from(rpm);
        let burst = l.burst_requests.unwrap_or(rpm / 6 + 1).max(1);
        takes.push(Take {
            key: format!("{holder}:rpm"),
            limit: rpm_name,
            cost_us: interval,
            tolerance_us: interval * i64::from(burst - 1),
        });
    }
    if let Some(tpm) = l.tokens_per_minute.filter(|t| *t > 0) {
        let per_token = MINUTE_US / i64::from(tpm);
        let burst = l.burst_tokens.unwrap_or(tpm / 6).max(tokens);
        takes.push(Take {
            key: format!("{holder}:tpm"),
            limit: tpm_name,
            cost_us: per_token * i64::from(tokens),
            tolerance_us: per_token * i64::from(burst.saturating_sub(tokens)),
        });
    }
}
