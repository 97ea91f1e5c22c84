use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::node::{Heartbeat, LoadReply, LoadRequest};
use crate::{JobError, JobInput, Priority, SCHEMA_VERSION};

/// A message type with a schema version, checked on decode.
pub trait Versioned {
    fn version(&self) -> u16;
}

macro_rules! versioned {
    ($($t:ty),*) => {$(
        impl Versioned for $t {
            fn version(&self) -> u16 {
                self.v
            }
        }
    )*};
}
versioned!(
    AutoscaleSignal,
    RunningLimits,
    Submission,
    Job,
    Assignment,
    JobEvent,
    JobResult,
    UsageEvent,
    Heartbeat,
    LoadRequest,
    LoadReply,
    DeadLetter,
    StreamChunk
);

fn current_version() -> u16 {
    SCHEMA_VERSION
}

/// What a client sends to ask for a job, over HTTP or on `sy.submit.<priority>`.
/// `input` is checked against the model's declared kind at admission.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Submission {
    #[serde(default = "current_version")]
    pub v: u16,
    /// Client-chosen id (NATS only); it doubles as the message id for de-duplication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub model: String,
    /// Whose job it is: the unit of fair share inside a priority level.
    /// `default` when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// On NATS the subject names the priority; over HTTP this field does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
    pub input: serde_json::Value,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// Start by this time (Unix ms), or end `expired` without running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<i64>,
    /// Run for at most this long, or be cancelled and end `timed_out`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Publish the output as it is generated on `sy.stream.<job id>`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub stream: bool,
    /// Where to POST the job's lifecycle events (signed, retried).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookTarget>,
}

/// The metadata key naming the workflow run a job is a step of: the job
/// draws its budget reservation from the run's, where the run holds one.
pub const WORKFLOW_RUN: &str = "workflow_run";

/// A receiver of a job's lifecycle events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookTarget {
    pub url: String,
    /// The events to send; the job's final ones when not given.
    #[serde(default = "WebhookEvent::finals")]
    pub events: Vec<WebhookEvent>,
}

/// A lifecycle event a webhook can be sent for. The job's final status
/// decides which of the last four it gets (`timed_out` counts as `failed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookEvent {
    Queued,
    Started,
    Completed,
    Failed,
    Cancelled,
    Expired,
}

impl WebhookEvent {
    pub const ALL: [WebhookEvent; 6] = [
        WebhookEvent::Queued,
        WebhookEvent::Started,
        WebhookEvent::Completed,
        WebhookEvent::Failed,
        WebhookEvent::Cancelled,
        WebhookEvent::Expired,
    ];

    pub fn finals() -> Vec<WebhookEvent> {
        WebhookEvent::ALL[2..].to_vec()
    }

    pub fn as_str(self) -> &'static str {
        match self {
            WebhookEvent::Queued => "queued",
            WebhookEvent::Started => "started",
            WebhookEvent::Completed => "completed",
            WebhookEvent::Failed => "failed",
            WebhookEvent::Cancelled => "cancelled",
            WebhookEvent::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<WebhookEvent> {
        WebhookEvent::ALL.into_iter().find(|e| e.as_str() == s)
    }
}

fn is_false(b: &bool) -> bool {
    !b
}

/// An admitted job, as it waits in `sy.jobs.<priority>.<model>.<tenant>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub v: u16,
    pub id: String,
    /// The model that serves it (for an alias, the version it was given).
    pub model: String,
    /// The alias it was asked for by, if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    #[serde(default = "default_tenant")]
    pub tenant: String,
    pub priority: Priority,
    pub input: JobInput,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    pub submitted_at_ms: i64,
    /// 1 for the first run; a retry is published again with the next number.
    pub attempt: u32,
    /// Attempts allowed for retryable failures, from the model registry.
    #[serde(default = "one")]
    pub max_attempts: u32,
    /// Earlier attempts that failed with a retryable error, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<Failure>,
    /// Start by this time (Unix ms), or end `expired` without running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<i64>,
    /// Run for at most this long, or be cancelled and end `timed_out`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Publish the output as it is generated on `sy.stream.<job id>`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub stream: bool,
    /// Where its lifecycle events go: the submission's own webhook, or its
    /// tenant's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookTarget>,
    /// The public id of the API key that submitted it, whose own limits
    /// it counts against; the server's, never the client's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    /// The trace its admission began (W3C trace id, 32 hex digits), when
    /// the broker exports traces: what the console links the job to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// The admitting broker's seal on everything above but the attempt and
    /// its failures: a dispatcher places only jobs a broker admitted.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub seal: String,
}

fn one() -> u32 {
    1
}

fn default_tenant() -> String {
    crate::DEFAULT_TENANT.to_owned()
}

/// One failed attempt of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    pub attempt: u32,
    pub node: String,
    pub at_ms: i64,
    pub error: JobError,
}

impl Job {
    /// The queue the job waits in: its priority, model and tenant.
    pub fn queue_subject(&self) -> String {
        crate::subjects::jobs(self.priority, &self.model, &self.tenant)
    }

    /// The job as it goes back to the queue after `failure`.
    pub fn retry(&self, failure: Failure) -> Job {
        let mut next = self.clone();
        next.attempt = failure.attempt + 1;
        next.failures.push(failure);
        next
    }

    /// The job as it goes back to the queue without having run (its node was
    /// draining): a new attempt, with no failure charged to it.
    pub fn requeue(&self) -> Job {
        let mut next = self.clone();
        next.attempt += 1;
        next
    }

    /// Whether a retryable failure now leaves another attempt: attempts are
    /// charged by failures, so a job handed back unrun loses none.
    pub fn may_retry_after_failure(&self) -> bool {
        self.failures.len() + 1 < self.max_attempts as usize
    }

    /// The level the job is served at, at `now_ms`: its own, or the highest
    /// once it has waited past `aging_bound` since it was submitted. The
    /// dispatcher and the node age by this one rule, so that a job the
    /// dispatcher moved ahead is neither held behind higher levels on the
    /// node nor handed back for them.
    pub fn level_at(&self, now_ms: i64, aging_bound: Duration) -> Priority {
        let waited = u128::try_from(now_ms.saturating_sub(self.submitted_at_ms)).unwrap_or(0);
        if waited > aging_bound.as_millis() {
            Priority::Critical
        } else {
            self.priority
        }
    }

    /// Whether the job missed its start deadline at `now_ms`.
    pub fn expired_at(&self, now_ms: i64) -> bool {
        self.deadline_ms.is_some_and(|d| now_ms > d)
    }

    /// Nodes that failed this job, to be avoided when there is a choice.
    pub fn failed_nodes(&self) -> impl Iterator<Item = &str> {
        self.failures.iter().map(|f| f.node.as_str())
    }
}

/// A job placed on a node, as it waits in `sy.work.<node>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    pub v: u16,
    pub job: Job,
    pub node: String,
    pub assigned_at_ms: i64,
    /// The dispatcher's grant for this attempt on this node: the agent
    /// derives the proofs of its result, usage and running event from it,
    /// and never publishes it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub grant: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventKind {
    Assigned {
        node: String,
    },
    Running {
        node: String,
    },
    /// The attempt failed with a retryable error; attempt + 1 is queued.
    Retrying {
        node: String,
        error: JobError,
    },
    /// The attempt never ran (its node drained); attempt + 1 is queued.
    Requeued {
        node: String,
    },
    /// An event this version does not know (sent by a newer component): it
    /// changes nothing here, and the message is not refused for it.
    #[serde(other)]
    Unknown,
}

/// A lifecycle transition of a job, on `sy.events.<job id>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobEvent {
    pub v: u16,
    pub job_id: String,
    pub attempt: u32,
    pub at_ms: i64,
    pub kind: EventKind,
    /// For an event a node reports (`running`): proof that the node holds
    /// the attempt's grant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<String>,
}

/// Token counts as the engine reported them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    Succeeded {
        /// The engine's response body (OpenAI-style for LLMs).
        output: serde_json::Value,
        usage: Usage,
    },
    Failed {
        error: JobError,
    },
}

/// The final word on one attempt of a job, on `sy.results.<job id>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobResult {
    pub v: u16,
    pub job_id: String,
    pub attempt: u32,
    /// The node that ran it; none when the job failed before placement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The attempt's timeline, so that a result alone gives a complete record
    /// even when it is read before the lifecycle events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assigned_at_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: i64,
    pub outcome: Outcome,
    /// Set when the output was too large for a message: it is in the
    /// object store bucket `large-results` under this name, as JSON, and
    /// the outcome's `output` is null.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_ref: Option<String>,
    /// With `output_ref`: the SHA-256 of the stored JSON, which `proof`
    /// covers, so that an object put in its place is not taken for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_sha256: Option<String>,
    /// Proof that the attempt was assigned to `node` (see `Assignment::grant`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<String>,
    /// The attempt's usage, carried by the result that ends it so that one
    /// message reports both; an attempt whose result does not carry it
    /// reports it on `sy.usage.<job id>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_record: Option<UsageEvent>,
}

/// What one attempt consumed, for the ledger: on `sy.usage.<job id>`, or
/// in the attempt's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageEvent {
    pub v: u16,
    pub job_id: String,
    pub attempt: u32,
    pub node: String,
    pub model: String,
    pub usage: Usage,
    pub engine_ms: u64,
    pub at_ms: i64,
    /// Proof that the attempt was assigned to `node` (see `Assignment::grant`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<String>,
}

/// What one model asks of the cluster, on `sy.autoscale.<model>` every
/// `dispatcher.autoscale.every`, from each dispatcher.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AutoscaleSignal {
    pub v: u16,
    pub model: String,
    pub desired_nodes: u32,
    pub queued: u64,
    pub running: u32,
    pub arrivals_per_s: f64,
    pub service_ms: u32,
    pub at_ms: i64,
    /// Healthy nodes serving the model now, beside `desired_nodes`.
    #[serde(default)]
    pub live_nodes: u32,
    /// The queue per priority, highest first: what waits and for how long.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub priorities: Vec<QueueDepth>,
}

/// One priority's queue of a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueDepth {
    pub priority: Priority,
    pub queued: u64,
    /// How long its oldest job has waited, in ms; 0 with none waiting.
    pub oldest_ms: i64,
}

/// The bounds on jobs assigned and not yet ended, per tenant and per API
/// key, as the brokers know them (configuration and admin API together):
/// the value of `running` in the `limits` KV bucket, which dispatchers
/// follow.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningLimits {
    pub v: u16,
    #[serde(default)]
    pub tenants: BTreeMap<String, u32>,
    /// By key id.
    #[serde(default)]
    pub keys: BTreeMap<String, u32>,
}

/// A piece of a streamed job's output, on core NATS `sy.stream.<job id>`.
/// Best effort: a subscriber that misses chunks (a gap in `seq`) still has
/// the job's whole result on `RESULTS`. A retried job streams again under
/// its new `attempt`, from `seq` 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamChunk {
    pub v: u16,
    pub job_id: String,
    pub attempt: u32,
    /// 0, 1, 2, … within the attempt.
    pub seq: u32,
    /// Text generated since the previous chunk.
    pub delta: String,
    /// On the last chunk of the attempt: why generation stopped (the
    /// engine's `finish_reason`, or `error` when the attempt failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<String>,
    /// The node running the attempt.
    #[serde(default)]
    pub node: String,
    /// Proof that the attempt was assigned to `node` (see `Assignment::grant`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<String>,
}

/// A job that exhausted its attempts, on `sy.dead.<job id>`, kept for
/// inspection and replay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub v: u16,
    /// The job as last run; `failures` holds every attempt's error.
    pub job: Job,
    pub at_ms: i64,
}

/// The stable error body shared by HTTP responses and NATS replies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
}

/// Reply on `sy.admit.<priority>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AdmitReply {
    Accepted { id: String, status: String },
    Rejected { error: ErrorBody },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_waiting_past_the_aging_bound_is_served_as_the_highest_level() {
        let bound = Duration::from_secs(60);
        let mut job = Job::fixture("j");
        job.priority = Priority::Batch;
        job.submitted_at_ms = 1_000;
        assert_eq!(job.level_at(61_000, bound), Priority::Batch);
        assert_eq!(job.level_at(61_001, bound), Priority::Critical);
        // A clock behind the submitter's is no wait at all.
        assert_eq!(job.level_at(0, bound), Priority::Batch);
    }
}
