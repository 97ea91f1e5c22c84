//! Metric names of the broker, in one place.

pub const SUBMISSIONS: &str = "switchyard_broker_submissions_total";
pub const REJECTIONS: &str = "switchyard_broker_rejections_total";
pub const SUBMIT_SECONDS: &str = "switchyard_broker_submit_seconds";
pub const FINISHED: &str = "switchyard_broker_jobs_finished_total";
pub const PROJECTED: &str = "switchyard_broker_projected_messages_total";
pub const FORGED: &str = "switchyard_broker_forged_messages_total";
pub const UNRECORDED: &str = "switchyard_broker_unrecorded_messages_total";
pub const REPUBLISHED: &str = "switchyard_broker_outbox_republished_total";
pub const EXPIRED: &str = "switchyard_broker_expired_waiting_total";
pub const CACHE: &str = "switchyard_broker_cache_lookups_total";
pub const PII: &str = "switchyard_broker_pii_entities_total";
pub const WEBHOOK_ATTEMPTS: &str = "switchyard_broker_webhook_attempts_total";
pub const USAGE_COST: &str = "switchyard_broker_usage_cost_microdollars_total";
pub const WEBHOOK_SECONDS: &str = "switchyard_broker_webhook_attempt_seconds";
pub const AUTH_REFUSED: &str = "switchyard_broker_auth_refused_total";
pub const ROLLOUT_EVENTS: &str = "switchyard_broker_rollout_events_total";

pub fn describe() {
    metrics::describe_counter!(
        ROLLOUT_EVENTS,
        "What happened to rollouts, by alias and event (started, advanced, completed, rolled_back)"
    );
    metrics::describe_counter!(
        SUBMISSIONS,
        "Jobs admitted into the queue, by source (http, nats, nats_request)"
    );
    metrics::describe_counter!(
        REJECTIONS,
        "Submissions refused at admission, by source and error code"
    );
    metrics::describe_histogram!(
        SUBMIT_SECONDS,
        metrics::Unit::Seconds,
        "Time to admit one job: validation, record, durable enqueue"
    );
    metrics::describe_counter!(FINISHED, "Jobs that reached a final status, by status");
    metrics::describe_counter!(
        CACHE,
        "Result cache lookups, by model and outcome (hit, miss, bypass)"
    );
    metrics::describe_counter!(
        PII,
        "Personal data found in requests, by type and action (masked, blocked)"
    );
    metrics::describe_counter!(
        USAGE_COST,
        "Cost of the usage recorded in the ledger at the models' prices, in millionths of a US dollar, by model"
    );
    metrics::describe_counter!(
        WEBHOOK_ATTEMPTS,
        "Webhook delivery attempts, by outcome (delivered, retry, failed, disabled)"
    );
    metrics::describe_histogram!(
        WEBHOOK_SECONDS,
        metrics::Unit::Seconds,
        "Time one webhook attempt took, connection included"
    );
    metrics::describe_counter!(
        AUTH_REFUSED,
        "Requests refused at the door, by code (unauthenticated, invalid_api_key, key_expired, key_revoked, forbidden)"
    );
    metrics::describe_counter!(
        PROJECTED,
        "Events, results and usage records written to the job store, by stream"
    );
    metrics::describe_counter!(
        FORGED,
        "Results, usage records and running events no assignment vouches for, dropped, by stream"
    );
    metrics::describe_counter!(
        UNRECORDED,
        "Events and results that came before their job's record, by stream and outcome (later: delivered again; dropped: the record never came)"
    );
    metrics::describe_counter!(
        REPUBLISHED,
        "Jobs published again because their first enqueue was not confirmed"
    );
    metrics::describe_counter!(
        EXPIRED,
        "Jobs ended expired by the broker because their deadline passed while they waited"
    );
}

/// Counts a request the key check refused.
pub fn auth_refused(code: &'static str) {
    metrics::counter!(AUTH_REFUSED, "code" => code).increment(1);
}
