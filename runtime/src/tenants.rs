//! The `tenants:` section: each tenant's weight, limits, budget, webhook and
//! personal-data policy, checked with the rest of the configuration.

use std::collections::HashMap;

use serde::Deserialize;
use switchyard_schemas::{WebhookTarget, subjects};

use crate::config::{Issues, PiiPolicy};

/// One tenant's entry: its share of the GPUs inside a priority level,
/// relative to the other tenants with work queued at that level, and where
/// its jobs' events go when a job names no webhook of its own.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantSpec {
    pub name: String,
    #[serde(default = "default_weight")]
    pub weight: u32,
    #[serde(default)]
    pub webhook: Option<WebhookTarget>,
    /// `whsec_` secrets that sign this tenant's webhooks instead of the
    /// broker's; each one signs while several are listed (rotation).
    #[serde(default)]
    pub webhook_secrets: Vec<String>,
    /// A stricter personal-data policy for this tenant's requests than the
    /// model's own; the stricter of the two applies.
    #[serde(default)]
    pub pii: Option<PiiPolicy>,
    /// Most the tenant may spend per period, in US dollars, at the models'
    /// prices; none when not given.
    #[serde(default)]
    pub budget: Option<Budget>,
    /// Rate limits on the tenant's submissions; none when not given.
    #[serde(default)]
    pub limits: Option<RateLimits>,
}

/// A tenant's rate limits, enforced as GCRA across every broker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimits {
    pub requests_per_minute: Option<u32>,
    /// Tokens estimated at submission (prompt and `max_tokens`), corrected
    /// by the engine's count when the job ends.
    pub tokens_per_minute: Option<u32>,
    /// Requests that may come at once; a sixth of a minute's allowance
    /// (plus one) when not given.
    pub burst_requests: Option<u32>,
    /// Tokens that may come at once; a sixth of a minute's when not given.
    pub burst_tokens: Option<u32>,
    /// Jobs admitted and not yet ended (queued or running) at most.
    pub max_queued_jobs: Option<u32>,
    /// Jobs assigned to nodes and not yet ended at most; the dispatchers
    /// hold the rest in the queue.
    pub max_running_jobs: Option<u32>,
}

/// A spending limit.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    pub usd: f64,
    #[serde(default)]
    pub period: BudgetPeriod,
}

/// The calendar period (UTC) a budget renews over.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetPeriod {
    Day,
    #[default]
    Month,
}

fn default_weight() -> u32 {
    1
}

/// The declared tenants by name. A tenant that is not declared has weight
/// 1 and no default webhook.
#[derive(Debug, Clone, Default)]
pub struct Tenants {
    specs: HashMap<String, TenantSpec>,
}

impl Tenants {
    /// Builds the table, reporting duplicates and invalid entries.
    pub fn new(specs: &[TenantSpec], issues: &mut Issues) -> Tenants {
        let mut table = HashMap::new();
        for (i, spec) in specs.iter().enumerate() {
            let field = format!("tenants[{i}]");
            issues.check(
                subjects::is_valid_id(&spec.name),
                &format!("{field}.name"),
                &spec.name,
                "must be 1 to 64 of A-Z a-z 0-9 _ -",
            );
            issues.check(
                (1..=1000).contains(&spec.weight),
                &format!("{field}.weight"),
                spec.weight,
                "must be between 1 and 1000",
            );
            issues.check(
                spec.budget
                    .is_none_or(|b| b.usd.is_finite() && b.usd >= 0.0),
                &format!("{field}.budget.usd"),
                spec.budget.map(|b| b.usd),
                "must be a dollar amount, 0 or more",
            );
            if table.insert(spec.name.clone(), spec.clone()).is_some() {
                issues.push(&format!("{field}.name"), &spec.name, "declared twice");
            }
        }
        Tenants { specs: table }
    }

    pub fn weight(&self, tenant: &str) -> u32 {
        self.specs
            .get(tenant)
            .map_or_else(default_weight, |t| t.weight)
    }

    pub fn get(&self, tenant: &str) -> Option<&TenantSpec> {
        self.specs.get(tenant)
    }

    /// The most jobs each tenant that has a bound may have on nodes at
    /// once.
    pub fn max_running(&self) -> std::collections::BTreeMap<String, u32> {
        self.specs
            .values()
            .filter_map(|t| Some((t.name.clone(), t.limits?.max_running_jobs?)))
            .collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = &TenantSpec> {
        self.specs.values()
    }
}
