//! The job as clients see it: over HTTP, in webhooks, in batch output.

use std::collections::BTreeMap;

use serde::Serialize;
use switchyard_schemas::{ErrorBody, Usage};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::JobRecord;

pub fn rfc3339(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Transition {
    status: &'static str,
    at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<String>,
}

/// A job as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct JobView {
    id: String,
    /// The model that serves it: for a job asked for by an alias, the
    /// version the alias gave it.
    model: String,
    /// The alias it was asked for by, if it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    alias: Option<String>,
    tenant: String,
    priority: String,
    status: &'static str,
    /// The trace its admission began (W3C trace id), when the broker
    /// exports traces.
    #[serde(skip_serializing_if = "Option::is_none")]
    trace_id: Option<String>,
    source: String,
    attempt: u32,
    node: Option<String>,
    metadata: BTreeMap<String, String>,
    created_at: String,
    /// Every transition so far, in order, with its time.
    transitions: Vec<Transition>,
    /// The engine's response, once the job succeeded.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    result: Option<serde_json::Value>,
    /// True once the result was dropped, `broker.result_retention` after
    /// the job ended.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    result_expired: bool,
    /// `{code, message}`, once the job failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    error: Option<ErrorBody>,
    /// `{prompt_tokens, completion_tokens}`, as the engine counted them.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    usage: Option<Usage>,
}

impl From<JobRecord> for JobView {
    fn from(r: JobRecord) -> Self {
        let at = |status, ms: Option<i64>, node: Option<&String>| {
            ms.map(|ms| Transition {
                status,
                at: rfc3339(ms),
                node: node.cloned(),
            })
        };
        let transitions = [
            at("queued", Some(r.created_at_ms), None),
            at("assigned", r.assigned_at_ms, r.node.as_ref()),
            at("running", r.started_at_ms, r.node.as_ref()),
            at(r.status.as_str(), r.finished_at_ms, None),
        ]
        .into_iter()
        .flatten()
        .collect();
        JobView {
            status: r.status.as_str(),
            created_at: rfc3339(r.created_at_ms),
            transitions,
            error: r.error.map(|(code, message)| ErrorBody { code, message }),
            result: r.output,
            result_expired: r.output_expired,
            usage: r.usage,
            id: r.id,
            model: r.model,
            alias: r.alias,
            trace_id: r.trace_id,
            tenant: r.tenant,
            priority: r.priority,
            source: r.source,
            attempt: r.attempt,
            node: r.node,
            metadata: r.metadata,
        }
    }
}
