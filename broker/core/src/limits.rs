//! Limits per tenant and per API key. Requests and tokens per minute are
//! GCRA (the generic cell rate algorithm): each limit is a theoretical
//! arrival time in the job store, taken by one conditional update, so every
//! broker that shares the database enforces the same limit. A request may
//! come early by the burst tolerance (a sixth of a minute's allowance by
//! default): in any minute a holder gets at most its limit plus its burst.
//!
//! Tokens are estimated at admission (a token per four bytes of prompt
//! plus `max_tokens`) and corrected when the job's result brings the
//! engine's count.
//!
//! `max_queued_jobs` is a count of places in the store, taken at admission
//! and freed by the job's end. `max_running_jobs` is the dispatchers' to
//! apply: the brokers hand them every bound through a KV bucket.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream::kv;
use switchyard_runtime::{RateLimits, Tenants};
use switchyard_schemas::{RunningLimits, SCHEMA_VERSION, decode, encode, subjects};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use switchyard_store::quotas::{Take, TokenRate, TokenRates, key_holder};
use switchyard_store::{AccessStore, KeyRecord, TenantRecord};

/// An API key's own limits, taken besides its tenant's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyLimits {
    pub id: String,
    /// Empty (all `None`) for a key without limits of its own.
    pub limits: RateLimits,
}

/// The limits of every tenant and key that has some: the configuration's
/// tenants, each replaced by the admin API's when it set some, and the
/// keys', as last read from the store.
#[derive(Debug, Default)]
pub struct Limits {
    configured: HashMap<String, RateLimits>,
    tenants: RwLock<HashMap<String, RateLimits>>,
    keys: RwLock<HashMap<String, RateLimits>>,
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
            keys: RwLock::default(),
        }
    }

    /// Takes in the limits the admin API set, which replace the
    /// configuration's for their tenants, and the limits of keys still in
    /// use.
    pub fn refresh(&self, stored: &[TenantRecord], keys: &[KeyRecord]) {
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
        let keys: HashMap<String, RateLimits> = keys
            .iter()
            .filter(|k| k.revoked_at_ms.is_none())
            .filter_map(|k| Some((k.id.clone(), k.limits?)))
            .collect();
        if let Ok(mut held) = self.keys.write() {
            *held = keys;
        }
    }

    /// The key `id` with its own limits as last read (none for a key
    /// without limits, or one revoked since).
    pub fn key(&self, id: &str) -> KeyLimits {
        KeyLimits {
            id: id.to_owned(),
            limits: self
                .keys
                .read()
                .ok()
                .and_then(|k| k.get(id).copied())
                .unwrap_or_default(),
        }
    }

    fn of(&self, tenant: &str) -> Option<RateLimits> {
        self.tenants.read().ok()?.get(tenant).copied()
    }

    fn any(&self, f: impl Fn(&RateLimits) -> bool) -> bool {
        let tenants = self.tenants.read().is_ok_and(|t| t.values().any(&f));
        tenants || self.keys.read().is_ok_and(|k| k.values().any(&f))
    }

    /// What a request of `tokens` takes from its tenant's limits and from
    /// its key's.
    pub fn takes(&self, tenant: &str, key: Option<&KeyLimits>, tokens: u32) -> Vec<Take> {
        let mut takes = Vec::new();
        if let Some(l) = self.of(tenant) {
            push_takes(&mut takes, tenant, &l, tokens, TENANT_LIMITS);
        }
        if let Some(k) = key {
            push_takes(
                &mut takes,
                &key_holder(&k.id),
                &k.limits,
                tokens,
                KEY_LIMITS,
            );
        }
        takes
    }

    /// The places a job must take among jobs admitted and not yet ended:
    /// its tenant's and its key's, each as (holder, most places, the
    /// limit's name for the client).
    pub fn places(
        &self,
        tenant: &str,
        key: Option<&KeyLimits>,
    ) -> Vec<(String, u32, &'static str)> {
        let tenant = self
            .of(tenant)
            .and_then(|l| l.max_queued_jobs)
            .map(|max| (tenant.to_owned(), max, "max_queued_jobs"));
        let key = key.and_then(|k| {
            let max = k.limits.max_queued_jobs?;
            Some((key_holder(&k.id), max, "key_max_queued_jobs"))
        });
        tenant.into_iter().chain(key).collect()
    }

    /// Whether some tenant or key has a `max_queued_jobs`, whose places
    /// finished jobs free.
    pub fn holds_places(&self) -> bool {
        self.any(|l| l.max_queued_jobs.is_some())
    }

    /// Whether some tenant or key has a token limit, which finished jobs
    /// correct.
    pub fn counts_tokens(&self) -> bool {
        self.any(|l| l.tokens_per_minute.is_some_and(|t| t > 0))
    }

    /// The token limit of every tenant and key (as `key:<id>`) that has
    /// one: its row and the time one token costs.
    pub fn token_rates(&self) -> TokenRates {
        let rate = |holder: String, limits: &RateLimits| {
            let tpm = limits.tokens_per_minute.filter(|t| *t > 0)?;
            let rate = TokenRate {
                limit_key: format!("{holder}:tpm"),
                us_per_token: MINUTE_US / i64::from(tpm),
            };
            Some((holder, rate))
        };
        let mut rates = TokenRates::new();
        if let Ok(tenants) = self.tenants.read() {
            rates.extend(tenants.iter().filter_map(|(t, l)| rate(t.clone(), l)));
        }
        if let Ok(keys) = self.keys.read() {
            rates.extend(keys.iter().filter_map(|(k, l)| rate(key_holder(k), l)));
        }
        rates
    }

    /// Every `max_running_jobs`, for the dispatchers.
    pub fn running(&self) -> RunningLimits {
        let bounds = |map: &HashMap<String, RateLimits>| {
            map.iter()
                .filter_map(|(name, l)| Some((name.clone(), l.max_running_jobs?)))
                .collect()
        };
        RunningLimits {
            v: SCHEMA_VERSION,
            tenants: self.tenants.read().map(|t| bounds(&t)).unwrap_or_default(),
            keys: self.keys.read().map(|k| bounds(&k)).unwrap_or_default(),
        }
    }
}

/// Reads the limits the admin API set every `every`, until shutdown, and
/// hands the bounds on running jobs to the dispatchers whenever they
/// change.
pub async fn follow(
    limits: Arc<Limits>,
    store: Arc<dyn AccessStore>,
    bucket: kv::Store,
    every: Duration,
    shutdown: CancellationToken,
) {
    loop {
        match tokio::try_join!(store.list_tenants(), store.list_keys(None)) {
            Ok((tenants, keys)) => limits.refresh(&tenants, &keys),
            Err(e) => {
                warn!(error = %e, "cannot read tenants' and keys' limits; the last read stay")
            }
        }
        publish_running(&limits.running(), &bucket).await;
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// Puts the bounds in the bucket unless it holds them already, so that
/// brokers sharing one configuration do not write in turn.
async fn publish_running(running: &RunningLimits, bucket: &kv::Store) {
    let held = match bucket.get(subjects::RUNNING_LIMITS_KEY).await {
        Ok(held) => held,
        Err(e) => {
            warn!(error = %e, "cannot read the running-job limits the dispatchers follow");
            return;
        }
    };
    if held.is_some_and(|b| decode::<RunningLimits>(&b).is_ok_and(|h| h == *running)) {
        return;
    }
    let put = match encode(running) {
        Ok(bytes) => bucket
            .put(subjects::RUNNING_LIMITS_KEY, bytes.into())
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = put {
        warn!(error = %e, "cannot hand the running-job limits to the dispatchers");
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
