//! A workflow as the configuration declares it: a name, a version, the
//! input's JSON Schema, and steps forming a DAG.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One version of a workflow: an entry of the configuration's `workflows:`
/// list. Several versions of one name may be declared; a new run takes the
/// highest, and a run keeps the version it started with.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowSpec {
    pub name: String,
    #[serde(default = "first_version")]
    pub version: u32,
    /// The JSON Schema a run's input must satisfy; any JSON object when absent.
    #[serde(default)]
    pub input_schema: Option<Value>,
    pub steps: Vec<StepSpec>,
    /// The run's output: a template over the input and the steps' outputs.
    /// The output of the last step declared when absent.
    #[serde(default)]
    pub output: Option<Value>,
    /// The most one run may spend, in US dollars. For a tenant with a
    /// budget, a run reserves it when it starts and its model steps' jobs
    /// draw their reservations from it; what is left is given back at its
    /// end.
    #[serde(default)]
    pub max_cost_usd: Option<f64>,
}

impl WorkflowSpec {
    /// `max_cost_usd` in millionths of a dollar.
    pub fn max_cost_micros(&self) -> Option<i64> {
        self.max_cost_usd.map(|usd| (usd * 1e6).round() as i64)
    }
}

fn first_version() -> u32 {
    1
}

/// One step. It does exactly one of `model`, `http`, `worker` or
/// `transform`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    pub id: String,
    /// Steps whose outputs this one needs; it starts once they have all
    /// ended (succeeded or skipped). Steps with nothing between them run in
    /// parallel.
    #[serde(default)]
    pub needs: Vec<String>,
    /// An expression over `input` and `steps`: the step runs only when it
    /// is true, and is skipped otherwise.
    #[serde(default)]
    pub when: Option<String>,
    #[serde(default)]
    pub retry: RetrySpec,
    /// Longest one attempt may take.
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// What undoes this step's effect if the run later fails.
    #[serde(default)]
    pub compensate: Option<CompensationSpec>,
    #[serde(default)]
    pub model: Option<ModelStep>,
    #[serde(default)]
    pub http: Option<HttpStep>,
    #[serde(default)]
    pub worker: Option<WorkerStep>,
    /// A template whose value is the step's output: pre- and
    /// post-processing with no process of its own.
    #[serde(default)]
    pub transform: Option<Value>,
}

/// A compensation: a step with an effect of its own, run when the run fails
/// after the step it belongs to succeeded.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompensationSpec {
    #[serde(default)]
    pub retry: RetrySpec,
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    #[serde(default)]
    pub model: Option<ModelStep>,
    #[serde(default)]
    pub http: Option<HttpStep>,
    #[serde(default)]
    pub worker: Option<WorkerStep>,
}

/// A Switchyard job on a registry model, at the run's priority and tenant.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelStep {
    /// The registry model.
    pub name: String,
    /// The job's input (as `input` of `POST /v1/jobs`), a template.
    pub input: Value,
}

/// A call to an external API, guarded like webhooks: no internal
/// addresses, bounded time. It carries an `Idempotency-Key` derived from
/// the run, the step and the attempt.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpStep {
    #[serde(default = "post")]
    pub method: String,
    /// A template.
    pub url: String,
    /// Templates; `secrets.<name>` reads a secret.
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    /// A template, sent as JSON.
    #[serde(default)]
    pub body: Option<Value>,
}

fn post() -> String {
    "POST".into()
}

/// A task for an external worker, in any language, on a task queue.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerStep {
    /// The task queue: a subject token.
    pub queue: String,
    /// The task's input, a template.
    #[serde(default)]
    pub input: Value,
}

/// How a failed attempt is tried again.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetrySpec {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// Wait before the second attempt, doubled for each one after.
    #[serde(with = "humantime_serde")]
    pub backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// The error classes worth another attempt.
    pub on: Vec<StepErrorClass>,
}

impl Default for RetrySpec {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            on: StepErrorClass::ALL
                .into_iter()
                .filter(|c| c.is_transient())
                .collect(),
        }
    }
}

impl RetrySpec {
    /// The wait before attempt `next` (2 or more).
    pub fn backoff_before(&self, next: u32) -> Duration {
        let doublings = next.saturating_sub(2).min(20);
        self.backoff
            .saturating_mul(1 << doublings)
            .min(self.max_backoff)
    }

    /// When attempt `next` is due, the one before it having ended at
    /// `ended_at_ms`.
    pub fn due_ms(&self, ended_at_ms: i64, next: u32) -> i64 {
        let wait = i64::try_from(self.backoff_before(next).as_millis()).unwrap_or(i64::MAX);
        ended_at_ms.saturating_add(wait)
    }
}

/// Why a step's attempt failed: stable codes, shown in a run's record and
/// named in `retry.on`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepErrorClass {
    /// A template or `when:` failed on this run's values (a missing field,
    /// a type that does not fit).
    TemplateError,
    /// The model step's job was refused or failed on its input.
    InvalidInput,
    /// The model step's job failed after its own retries (engine down,
    /// overloaded, no answer in time, or a fault).
    JobFailed,
    /// The API answered with a status that says the request is wrong (4xx
    /// other than 408 and 429).
    HttpStatus,
    /// The API or the worker could not be reached, or answered that it
    /// cannot serve now (5xx, 408, 429).
    Unavailable,
    /// The attempt ran past the step's `timeout`.
    Timeout,
    /// The worker reported that the task failed.
    WorkerFailed,
    /// The run was failing or cancelled, and the attempt was stopped.
    Cancelled,
}

impl StepErrorClass {
    pub const ALL: [StepErrorClass; 8] = [
        StepErrorClass::TemplateError,
        StepErrorClass::InvalidInput,
        StepErrorClass::JobFailed,
        StepErrorClass::HttpStatus,
        StepErrorClass::Unavailable,
        StepErrorClass::Timeout,
        StepErrorClass::WorkerFailed,
        StepErrorClass::Cancelled,
    ];

    /// Stable code shown to clients.
    pub fn code(self) -> &'static str {
        match self {
            StepErrorClass::TemplateError => "template_error",
            StepErrorClass::InvalidInput => "invalid_input",
            StepErrorClass::JobFailed => "job_failed",
            StepErrorClass::HttpStatus => "http_status",
            StepErrorClass::Unavailable => "unavailable",
            StepErrorClass::Timeout => "timeout",
            StepErrorClass::WorkerFailed => "worker_failed",
            StepErrorClass::Cancelled => "cancelled",
        }
    }

    /// Whether another attempt may succeed where this one did not: the
    /// classes `retry.on` lists when a step does not say.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            StepErrorClass::Unavailable | StepErrorClass::Timeout | StepErrorClass::WorkerFailed
        )
    }
}

/// What a step (or a compensation) does.
#[derive(Debug, Clone, Copy)]
pub enum Action<'a> {
    Model(&'a ModelStep),
    Http(&'a HttpStep),
    Worker(&'a WorkerStep),
    Transform(&'a Value),
}

impl Action<'_> {
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Model(_) => "model",
            Action::Http(_) => "http",
            Action::Worker(_) => "worker",
            Action::Transform(_) => "transform",
        }
    }
}

/// The one action of the four a step declares, or what is wrong.
fn one_of<'a>(
    model: &'a Option<ModelStep>,
    http: &'a Option<HttpStep>,
    worker: &'a Option<WorkerStep>,
    transform: Option<&'a Value>,
) -> Result<Action<'a>, usize> {
    let all = [
        model.as_ref().map(Action::Model),
        http.as_ref().map(Action::Http),
        worker.as_ref().map(Action::Worker),
        transform.map(Action::Transform),
    ];
    let mut declared = all.into_iter().flatten();
    match (declared.next(), declared.count()) {
        (Some(action), 0) => Ok(action),
        (None, _) => Err(0),
        (Some(_), more) => Err(more + 1),
    }
}

impl StepSpec {
    /// The step's action; `Err(n)` when it declares `n` of them, not one.
    pub fn action(&self) -> Result<Action<'_>, usize> {
        one_of(
            &self.model,
            &self.http,
            &self.worker,
            self.transform.as_ref(),
        )
    }
}

impl CompensationSpec {
    /// The compensation's action; `Err(n)` when it declares `n`, not one.
    pub fn action(&self) -> Result<Action<'_>, usize> {
        one_of(&self.model, &self.http, &self.worker, None)
    }
}
