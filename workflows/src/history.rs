//! A run's history, the one source of truth about it, and the state it
//! folds into. The history is appended to, never changed: replaying it
//! after a crash gives back the same state.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use switchyard_schemas::{Priority, WebhookTarget};

use crate::definition::{RetrySpec, StepErrorClass};
use crate::validate::Workflow;

/// What a run is, fixed when it starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunHeader {
    pub id: String,
    pub workflow: String,
    pub version: u32,
    pub tenant: String,
    pub priority: Priority,
    pub input: Value,
    /// Where the run's end is reported; the broker sends it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookTarget>,
    /// The API key that started the run (its public id): its own limits
    /// apply to the run's jobs, as to the jobs it submits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    /// The W3C `traceparent` of the span that started the run: every
    /// engine that drives it, before and after a crash, traces it in that
    /// one trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
    /// A client follows the run's answer as it is generated: the job of
    /// its answering step (`Workflow::answering`) streams its tokens.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stream: bool,
}

/// One entry of a run's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RunEvent {
    Started {
        run: RunHeader,
        at_ms: i64,
    },
    /// An attempt of a step with an effect was handed out, with its input
    /// as rendered. Its effect's id derives from the run, step and attempt.
    StepStarted {
        step: String,
        attempt: u32,
        input: Value,
        at_ms: i64,
    },
    StepSucceeded {
        step: String,
        attempt: u32,
        output: Value,
        at_ms: i64,
    },
    StepFailed {
        step: String,
        attempt: u32,
        class: StepErrorClass,
        message: String,
        at_ms: i64,
    },
    /// Its `when:` was false.
    StepSkipped {
        step: String,
        at_ms: i64,
    },
    CompensationStarted {
        step: String,
        attempt: u32,
        input: Value,
        at_ms: i64,
    },
    CompensationSucceeded {
        step: String,
        attempt: u32,
        at_ms: i64,
    },
    CompensationFailed {
        step: String,
        attempt: u32,
        class: StepErrorClass,
        message: String,
        at_ms: i64,
    },
    /// The run's `output:` template failed on its values: the run fails
    /// as when a step does.
    OutputFailed {
        message: String,
        at_ms: i64,
    },
    CancelRequested {
        at_ms: i64,
    },
    /// An operator replays a run that ended `failed_compensation`: each
    /// compensation that failed for good runs again, with its policy's
    /// attempts afresh, and the run ends anew.
    Replayed {
        at_ms: i64,
    },
    Finished {
        status: RunStatus,
        /// The run's output (succeeded), or why it failed.
        #[serde(default)]
        output: Option<Value>,
        #[serde(default)]
        error: Option<String>,
        at_ms: i64,
    },
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Succeeded,
    /// A step failed for good; the compensations of the steps that had
    /// succeeded all ran.
    Failed,
    /// Cancelled by request; compensations ran as for a failure.
    Cancelled,
    /// A compensation failed for good too: the run is dead-lettered, for
    /// an operator to finish by hand.
    FailedCompensation,
}

impl RunStatus {
    pub const ALL: [RunStatus; 4] = [
        RunStatus::Succeeded,
        RunStatus::Failed,
        RunStatus::Cancelled,
        RunStatus::FailedCompensation,
    ];

    pub fn parse(s: &str) -> Option<RunStatus> {
        RunStatus::ALL.into_iter().find(|r| r.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
            RunStatus::FailedCompensation => "failed_compensation",
        }
    }
}

/// Where a step is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Pending,
    Running,
    /// An attempt failed and another comes after its backoff.
    Retrying,
    Succeeded,
    Failed,
    Skipped,
    /// Its compensation runs.
    Compensating,
    /// Its compensation failed and another attempt comes after its backoff.
    CompensationRetrying,
    Compensated,
    CompensationFailed,
}

/// A failed attempt: its number, class, message and time.
struct Failure<'a>(u32, StepErrorClass, &'a str, i64);

/// A step as its history tells it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepState {
    pub status: StepStatus,
    /// The latest attempt handed out (0: none yet).
    pub attempt: u32,
    pub output: Option<Value>,
    pub error: Option<(StepErrorClass, String)>,
    /// When the latest attempt ended, for its backoff.
    pub ended_at_ms: Option<i64>,
    pub compensation_attempt: u32,
    /// The compensation attempts made before the latest replay: its
    /// retry policy counts from there.
    pub compensation_floor: u32,
}

impl StepState {
    fn new() -> StepState {
        StepState {
            status: StepStatus::Pending,
            attempt: 0,
            output: None,
            error: None,
            ended_at_ms: None,
            compensation_attempt: 0,
            compensation_floor: 0,
        }
    }

    /// Records a failed attempt of the step (or of its compensation) and
    /// returns whether it was the last one `retry` allows.
    fn failed(&mut self, retry: &RetrySpec, f: Failure<'_>, compensation: bool) -> bool {
        let Failure(attempt, class, message, at_ms) = f;
        let made = match compensation {
            true => attempt.saturating_sub(self.compensation_floor),
            false => attempt,
        };
        let last = made >= retry.max_attempts || !retry.on.contains(&class);
        self.status = match (compensation, last) {
            (false, true) => StepStatus::Failed,
            (false, false) => StepStatus::Retrying,
            (true, true) => StepStatus::CompensationFailed,
            (true, false) => StepStatus::CompensationRetrying,
        };
        match compensation {
            true => self.compensation_attempt = attempt,
            false => self.attempt = attempt,
        }
        self.error = Some((class, message.to_owned()));
        self.ended_at_ms = Some(at_ms);
        last
    }

    /// Ended in a way its dependants can go on from.
    pub fn lets_dependants_start(&self) -> bool {
        matches!(self.status, StepStatus::Succeeded | StepStatus::Skipped)
    }
}

/// A run folded from its history.
#[derive(Debug, Clone, PartialEq)]
pub struct RunState {
    pub header: RunHeader,
    pub steps: BTreeMap<String, StepState>,
    /// Steps in the order they succeeded: compensations run in reverse.
    pub succeeded: Vec<String>,
    pub cancel_requested: bool,
    /// The step failure that fails the run.
    pub failure: Option<String>,
    pub finished: Option<RunStatus>,
}

/// A history that does not start with `started`, or names a step its
/// workflow version does not have.
#[derive(Debug, thiserror::Error)]
#[error("run history: {0}")]
pub struct HistoryError(String);

fn unknown(step: &str) -> HistoryError {
    HistoryError(format!(
        "names step {step:?}, which the run's workflow version does not have (or not with a compensation)"
    ))
}

impl RunState {
    /// Folds a history, first event `Started`, into the run's state.
    pub fn replay(workflow: &Workflow, history: &[RunEvent]) -> Result<RunState, HistoryError> {
        let Some(RunEvent::Started { run, .. }) = history.first() else {
            return Err(HistoryError("does not begin with `started`".into()));
        };
        let mut state = RunState {
            header: run.clone(),
            steps: workflow
                .spec
                .steps
                .iter()
                .map(|step| (step.id.clone(), StepState::new()))
                .collect(),
            succeeded: Vec::new(),
            cancel_requested: false,
            failure: None,
            finished: None,
        };
        for event in &history[1..] {
            state.apply(workflow, event)?;
        }
        Ok(state)
    }

    fn step(&mut self, id: &str) -> Result<&mut StepState, HistoryError> {
        self.steps.get_mut(id).ok_or_else(|| unknown(id))
    }

    /// One more event; `workflow` tells whether a failed attempt is the
    /// step's last.
    pub fn apply(&mut self, workflow: &Workflow, event: &RunEvent) -> Result<(), HistoryError> {
        match event {
            RunEvent::Started { .. } => {
                return Err(HistoryError("`started` twice".into()));
            }
            RunEvent::StepStarted { step, attempt, .. } => {
                let s = self.step(step)?;
                s.status = StepStatus::Running;
                s.attempt = *attempt;
            }
            RunEvent::StepSucceeded {
                step,
                output,
                at_ms,
                ..
            } => {
                let s = self.step(step)?;
                s.status = StepStatus::Succeeded;
                s.output = Some(output.clone());
                s.ended_at_ms = Some(*at_ms);
                self.succeeded.push(step.clone());
            }
            RunEvent::StepFailed {
                step,
                attempt,
                class,
                message,
                at_ms,
            }
            | RunEvent::CompensationFailed {
                step,
                attempt,
                class,
                message,
                at_ms,
            } => {
                let compensation = matches!(event, RunEvent::CompensationFailed { .. });
                let spec = workflow.step(step).ok_or_else(|| unknown(step))?;
                let retry = match compensation {
                    false => &spec.retry,
                    true => &spec.compensate.as_ref().ok_or_else(|| unknown(step))?.retry,
                };
                let failure = Failure(*attempt, *class, message, *at_ms);
                let last = self.step(step)?.failed(retry, failure, compensation);
                // An attempt stopped because the run is cancelled ends the
                // run as cancelled, not failed.
                let stopped = *class == StepErrorClass::Cancelled && self.cancel_requested;
                if last && !compensation && !stopped && self.failure.is_none() {
                    self.failure = Some(format!(
                        "step {step:?} failed after {attempt} attempt(s): {}: {message}",
                        class.code()
                    ));
                }
            }
            RunEvent::StepSkipped { step, .. } => {
                self.step(step)?.status = StepStatus::Skipped;
            }
            RunEvent::CompensationStarted { step, attempt, .. } => {
                let s = self.step(step)?;
                s.status = StepStatus::Compensating;
                s.compensation_attempt = *attempt;
            }
            RunEvent::CompensationSucceeded { step, .. } => {
                self.step(step)?.status = StepStatus::Compensated;
            }
            RunEvent::OutputFailed { message, .. } => {
                self.failure
                    .get_or_insert_with(|| format!("the run's output: {message}"));
            }
            RunEvent::CancelRequested { .. } => self.cancel_requested = true,
            RunEvent::Replayed { at_ms } => {
                // Only a dead-lettered run is replayed; the fronts append
                // it right after its end, by a conditional append.
                if self.finished != Some(RunStatus::FailedCompensation) {
                    return Ok(());
                }
                self.finished = None;
                for s in self.steps.values_mut() {
                    if s.status == StepStatus::CompensationFailed {
                        s.status = StepStatus::CompensationRetrying;
                        s.compensation_floor = s.compensation_attempt;
                        s.ended_at_ms = Some(*at_ms);
                    }
                }
            }
            RunEvent::Finished { status, .. } => self.finished = Some(*status),
        }
        Ok(())
    }

    /// What templates read: the input, each step's output so far, the run.
    pub fn context(&self) -> Value {
        let steps: serde_json::Map<String, Value> = self
            .steps
            .iter()
            .filter(|(_, s)| s.output.is_some() || s.status == StepStatus::Skipped)
            .map(|(id, s)| {
                let output = s.output.clone().unwrap_or(Value::Null);
                let skipped = s.status == StepStatus::Skipped;
                (id.clone(), json!({"output": output, "skipped": skipped}))
            })
            .collect();
        let h = &self.header;
        json!({
            "input": h.input,
            "steps": steps,
            "run": {"id": h.id, "workflow": h.workflow, "version": h.version, "tenant": h.tenant},
        })
    }
}
