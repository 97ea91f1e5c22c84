//! Webhooks: a job's lifecycle events POSTed to a receiver, signed per the
//! Standard Webhooks specification. The store writes a delivery row in the
//! same transaction that records the event, so a delivery is as durable as
//! the job record; `deliver` sends due rows and retries them on a schedule.

mod deliver;
mod sign;

use std::collections::HashMap;

use switchyard_runtime::{Issues, Tenants};
use switchyard_schemas::{Job, WebhookTarget};

use crate::BrokerConfig;
use crate::admission::Rejection;

pub use deliver::run;
pub use sign::Secret;
pub use switchyard_runtime::guard::{AllowEntry, Guard};

/// Who gets which events, and with which secrets they are signed.
#[derive(Debug, Default)]
pub struct Webhooks {
    guard: Guard,
    secrets: Vec<Secret>,
    tenants: HashMap<String, Tenant>,
}

#[derive(Debug, Default)]
struct Tenant {
    default: Option<WebhookTarget>,
    secrets: Vec<Secret>,
}

fn parse_all(secrets: &[String]) -> Vec<Secret> {
    secrets
        .iter()
        .filter_map(|s| Secret::parse(s).ok())
        .collect()
}

impl Webhooks {
    pub fn new(cfg: &BrokerConfig, tenants: &Tenants) -> Webhooks {
        Webhooks {
            guard: Guard::new(&cfg.webhooks.allow),
            secrets: parse_all(&cfg.webhooks.secrets),
            tenants: tenants
                .iter()
                .map(|t| {
                    let tenant = Tenant {
                        default: t.webhook.clone(),
                        secrets: parse_all(&t.webhook_secrets),
                    };
                    (t.name.clone(), tenant)
                })
                .collect(),
        }
    }

    /// The secrets that sign a tenant's deliveries.
    fn secrets(&self, tenant: &str) -> &[Secret] {
        match self.tenants.get(tenant) {
            Some(t) if !t.secrets.is_empty() => &t.secrets,
            _ => &self.secrets,
        }
    }

    /// Gives a job its webhook (its own, or its tenant's default) and checks
    /// that the receiver may be reached and the delivery signed.
    pub async fn admit(&self, job: &mut Job) -> Result<(), Rejection> {
        job.webhook = self.target(&job.tenant, job.webhook.take()).await?;
        Ok(())
    }

    /// The webhook a job or run of `tenant` reports to: its own, else the
    /// tenant's default; refused if it may not be used.
    pub async fn target(
        &self,
        tenant: &str,
        own: Option<WebhookTarget>,
    ) -> Result<Option<WebhookTarget>, Rejection> {
        let Some(mut target) =
            own.or_else(|| self.tenants.get(tenant).and_then(|t| t.default.clone()))
        else {
            return Ok(None);
        };
        if target.events.is_empty() {
            return Err(Rejection::InvalidRequest(
                "webhook.events must name at least one event".into(),
            ));
        }
        let mut seen = Vec::with_capacity(target.events.len());
        target.events.retain(|e| {
            let new = !seen.contains(e);
            seen.push(*e);
            new
        });
        if self.secrets(tenant).is_empty() {
            return Err(Rejection::WebhookRefused(
                "webhooks are not enabled here: no signing secret is configured".into(),
            ));
        }
        self.guard
            .check(&target.url)
            .await
            .map_err(|e| Rejection::WebhookRefused(format!("webhook.url {e}")))?;
        Ok(Some(target))
    }
}

/// Checks the tenants' webhook settings for the broker.
pub fn check_tenants(cfg: &BrokerConfig, tenants: &Tenants, issues: &mut Issues) {
    let guard = Guard::new(&cfg.webhooks.allow);
    for t in tenants.iter() {
        for secret in &t.webhook_secrets {
            if let Err(e) = Secret::parse(secret) {
                issues.push(
                    &format!("tenants.{}.webhook_secrets", t.name),
                    "(hidden)",
                    &e,
                );
            }
        }
        if let Some(target) = &t.webhook
            && let Err(e) = guard.check_form(&target.url)
        {
            issues.push(&format!("tenants.{}.webhook.url", t.name), &target.url, &e);
        }
    }
}
