//! Sends due deliveries, records every attempt, and schedules the next one.
//! A delivery is leased while its attempt runs, so that brokers sharing one
//! database do not send it twice at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, RETRY_AFTER};
use switchyard_schemas::now_ms;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::Webhooks;
use super::sign::signature;
use crate::config::WebhookConfig;
use crate::metrics as m;
use crate::shares::Shares;
use switchyard_store::outbox::{Attempt, Delivery, Next, WebhookOutbox};

/// Longest wait a receiver's `Retry-After` can ask for.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// Runs until `shutdown`, then lets the attempts in flight finish.
pub async fn run(
    store: Arc<dyn WebhookOutbox>,
    webhooks: Arc<Webhooks>,
    cfg: WebhookConfig,
    shutdown: CancellationToken,
) {
    let builder = reqwest::Client::builder()
        .dns_resolver(Arc::new(webhooks.guard.clone()))
        .redirect(reqwest::redirect::Policy::none())
        .timeout(cfg.timeout)
        .user_agent(concat!("Switchyard-Webhooks/", env!("CARGO_PKG_VERSION")));
    // No proxy from the environment: only one configured here.
    let builder = match cfg.proxy.as_deref().map(reqwest::Proxy::all).transpose() {
        Ok(Some(proxy)) => builder.proxy(proxy),
        Ok(None) => builder.no_proxy(),
        Err(e) => {
            warn!(error = %e, "broker.webhooks.proxy is not a proxy URL; no webhook will be sent");
            return;
        }
    };
    let client = match builder.build() {
        Ok(client) => client,
        Err(e) => {
            warn!(error = %e, "cannot build the webhook client; no webhook will be sent");
            return;
        }
    };
    let cfg = Arc::new(cfg);
    let lease = i64::try_from((cfg.timeout * 2).as_millis()).unwrap_or(i64::MAX);
    let permits = Arc::new(Semaphore::new(cfg.concurrency));
    let shares = Shares::new(cfg.tenant_concurrency);
    let per_tenant = u32::try_from(cfg.tenant_concurrency).unwrap_or(u32::MAX);
    let mut running = JoinSet::new();
    loop {
        let free = permits.available_permits();
        if free > 0 {
            let now = now_ms();
            let limit = u32::try_from(free).unwrap_or(u32::MAX);
            match store
                .claim_deliveries(now, now + lease, limit, per_tenant)
                .await
            {
                Ok(due) => {
                    for delivery in due {
                        // A tenant at its share: its delivery is claimed
                        // again once the lease runs out.
                        let Some(share) = shares.take(&delivery.tenant) else {
                            continue;
                        };
                        let Ok(permit) = permits.clone().acquire_owned().await else {
                            break;
                        };
                        let attempt = attempt(
                            client.clone(),
                            store.clone(),
                            webhooks.clone(),
                            cfg.clone(),
                            delivery,
                        );
                        running.spawn(async move {
                            attempt.await;
                            drop((permit, share));
                        });
                    }
                }
                Err(e) => warn!(error = %e, "cannot read due webhook deliveries"),
            }
        }
        while running.try_join_next().is_some() {}
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(cfg.poll_interval) => {}
        }
    }
    while running.join_next().await.is_some() {}
}

/// What a receiver answered, or why it could not be asked.
type Answer = Result<(StatusCode, Option<Duration>), String>;

async fn attempt(
    client: reqwest::Client,
    store: Arc<dyn WebhookOutbox>,
    webhooks: Arc<Webhooks>,
    cfg: Arc<WebhookConfig>,
    delivery: Delivery,
) {
    let at_ms = now_ms();
    let started = Instant::now();
    let answer = send(&client, &webhooks, &delivery).await;
    let number = delivery.attempts + 1;
    let (next, outcome) = match &answer {
        Ok((status, _)) if status.is_success() => (Next::Delivered, "delivered"),
        Ok((StatusCode::GONE, _)) => (Next::Disabled, "disabled"),
        Ok((_, retry_after)) => retry(&cfg, &delivery, number, *retry_after),
        Err(_) => retry(&cfg, &delivery, number, None),
    };
    let record = Attempt {
        delivery_id: delivery.id.clone(),
        number,
        at_ms,
        duration_ms: i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX),
        status: answer.as_ref().ok().map(|(s, _)| s.as_u16()),
        error: answer.as_ref().err().cloned(),
    };
    metrics::counter!(m::WEBHOOK_ATTEMPTS, "outcome" => outcome).increment(1);
    metrics::histogram!(m::WEBHOOK_SECONDS).record(started.elapsed().as_secs_f64());
    match &answer {
        Ok((status, _)) => {
            debug!(webhook_id = %delivery.id, url = %delivery.url, status = status.as_u16(), outcome, "webhook attempt");
        }
        Err(e) => {
            debug!(webhook_id = %delivery.id, url = %delivery.url, error = %e, outcome, "webhook attempt");
        }
    }
    if let Err(e) = store.record_attempt(&record, next).await {
        // The lease runs out and the delivery is sent again: a repeat with
        // the same webhook-id, which receivers drop.
        warn!(webhook_id = %delivery.id, error = %e, "cannot record a webhook attempt");
    }
}

fn retry(
    cfg: &WebhookConfig,
    delivery: &Delivery,
    number: u32,
    retry_after: Option<Duration>,
) -> (Next, &'static str) {
    let Some(wait) = cfg.retry_schedule.get(number as usize - 1) else {
        return (Next::Failed, "failed");
    };
    // Up to a tenth more, the same for every try of one delivery, so that
    // the backlog of a receiver that comes back is spread out.
    let spread = delivery
        .id
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31) ^ u32::from(b))
        % 100;
    let wait = (*wait + *wait * spread / 1000).max(retry_after.unwrap_or_default());
    let at = now_ms() + i64::try_from(wait.as_millis()).unwrap_or(i64::MAX / 2);
    (Next::Retry { at_ms: at }, "retry")
}

async fn send(client: &reqwest::Client, webhooks: &Webhooks, delivery: &Delivery) -> Answer {
    // Addresses written in the URL are checked here; names are checked by
    // the client's resolver, which is the guard.
    let (url, _) = webhooks.guard.check_form(&delivery.url)?;
    let secrets = webhooks.secrets(&delivery.tenant);
    if secrets.is_empty() {
        return Err("no signing secret is configured".into());
    }
    let timestamp = now_ms() / 1000;
    let response = client
        .post(url)
        .header(CONTENT_TYPE, "application/json")
        .header("webhook-id", &delivery.id)
        .header("webhook-timestamp", timestamp.to_string())
        .header(
            "webhook-signature",
            signature(
                secrets,
                &delivery.id,
                timestamp,
                delivery.payload.as_bytes(),
            ),
        )
        .body(delivery.payload.clone())
        .send()
        .await
        .map_err(|e| chain(&e))?;
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|secs| Duration::from_secs(secs).min(MAX_RETRY_AFTER));
    Ok((response.status(), retry_after))
}

/// An error with its causes: reqwest's own message alone does not say
/// whether the connection was refused or timed out.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
