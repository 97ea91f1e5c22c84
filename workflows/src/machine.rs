//! The run's state machine: from a run's state (its history folded) and the
//! time, what comes next. It is deterministic and does nothing itself, so
//! an engine that crashed rebuilds the state from the history and decides
//! the same again; the effects it hands out carry ids derived from the run,
//! the step and the attempt, so a repeated one is recognised downstream.

use serde_json::{Value, json};

use crate::definition::{Action, StepErrorClass, StepSpec};
use crate::history::{RunEvent, RunState, RunStatus, StepStatus};
use crate::template::{TemplateError, Templates};
use crate::validate::Workflow;

/// One thing the engine is to do for a run.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Append this event; nothing happens outside the history. A skip, a
    /// transform's output, a template that failed, the run's end.
    Record(RunEvent),
    /// Append `step_started`, then hand out the step's effect with `input`.
    Start {
        step: String,
        attempt: u32,
        input: Value,
    },
    /// Stop a running attempt: the run is failing or cancelled. Its result,
    /// if it still comes, is recorded like any other.
    Stop { step: String, attempt: u32 },
    /// Append `compensation_started`, then hand out the compensation.
    Compensate {
        step: String,
        attempt: u32,
        input: Value,
    },
    /// Nothing more is due before this time (a backoff).
    WakeAt(i64),
}

/// What comes next for `run`, a run of `workflow`, at `now_ms`. The engine
/// carries the decisions out, appends their events, and asks again until
/// only effects and wake-ups are left.
pub fn decide(
    workflow: &Workflow,
    run: &RunState,
    templates: &Templates,
    now_ms: i64,
) -> Vec<Decision> {
    if run.finished.is_some() {
        return Vec::new();
    }
    match run.failure.is_some() || run.cancel_requested {
        false => advance(workflow, run, templates, now_ms),
        true => unwind(workflow, run, templates, now_ms),
    }
}

/// Starts what is ready, in the workflow's order; finishes the run once
/// every step has succeeded or been skipped.
fn advance(
    workflow: &Workflow,
    run: &RunState,
    templates: &Templates,
    now_ms: i64,
) -> Vec<Decision> {
    let mut decisions = Vec::new();
    let mut wake: Option<i64> = None;
    let context = run.context();
    for &j in &workflow.order {
        let step = &workflow.spec.steps[j];
        let state = &run.steps[&step.id];
        match state.status {
            StepStatus::Pending => {
                let ready = step
                    .needs
                    .iter()
                    .all(|n| run.steps[n].lets_dependants_start());
                if !ready {
                    continue;
                }
                let at = format!("steps.{}.when", step.id);
                match step
                    .when
                    .as_deref()
                    .map(|w| templates.holds(w, &context, &at))
                {
                    Some(Ok(false)) => decisions.push(Decision::Record(RunEvent::StepSkipped {
                        step: step.id.clone(),
                        at_ms: now_ms,
                    })),
                    Some(Err(e)) => decisions.push(template_failed(step, 1, &e, now_ms)),
                    Some(Ok(true)) | None => {
                        decisions.push(start(step, 1, templates, &context, now_ms))
                    }
                }
            }
            StepStatus::Retrying => {
                let next = state.attempt + 1;
                let due = step.retry.due_ms(state.ended_at_ms.unwrap_or(now_ms), next);
                match due <= now_ms {
                    true => decisions.push(start(step, next, templates, &context, now_ms)),
                    false => wake = Some(wake.map_or(due, |w| w.min(due))),
                }
            }
            _ => {}
        }
    }
    let all_done = run.steps.values().all(|s| s.lets_dependants_start());
    if all_done {
        decisions.push(Decision::Record(finish_succeeded(
            workflow, run, templates, now_ms,
        )));
    }
    decisions.extend(wake.map(Decision::WakeAt));
    decisions
}

/// The run's end once every step is through, or its output's failure.
fn finish_succeeded(
    workflow: &Workflow,
    run: &RunState,
    templates: &Templates,
    now_ms: i64,
) -> RunEvent {
    let output = match &workflow.spec.output {
        Some(template) => templates.render(template, &run.context(), "output"),
        None => {
            let last = &workflow.spec.steps[workflow.spec.steps.len() - 1].id;
            Ok(run.steps[last].output.clone().unwrap_or(Value::Null))
        }
    };
    match output {
        Ok(output) => RunEvent::Finished {
            status: RunStatus::Succeeded,
            output: Some(output),
            error: None,
            at_ms: now_ms,
        },
        Err(e) => RunEvent::OutputFailed {
            message: e.to_string(),
            at_ms: now_ms,
        },
    }
}

/// A failing or cancelled run: stops what runs, then compensates the steps
/// that succeeded, latest first and one at a time, then ends.
fn unwind(
    workflow: &Workflow,
    run: &RunState,
    templates: &Templates,
    now_ms: i64,
) -> Vec<Decision> {
    let running: Vec<Decision> = run
        .steps
        .iter()
        .filter(|(_, s)| s.status == StepStatus::Running)
        .map(|(id, s)| Decision::Stop {
            step: id.clone(),
            attempt: s.attempt,
        })
        .collect();
    if !running.is_empty() {
        // A step still running may yet succeed, and then need undoing too.
        return running;
    }
    let context = run.context();
    for id in run.succeeded.iter().rev() {
        let Some(step) = workflow.step(id) else {
            continue;
        };
        let Some(compensate) = &step.compensate else {
            continue;
        };
        let state = &run.steps[id];
        let attempt = match state.status {
            StepStatus::Compensated => continue,
            StepStatus::Compensating => return Vec::new(),
            StepStatus::CompensationFailed => {
                return vec![Decision::Record(RunEvent::Finished {
                    status: RunStatus::FailedCompensation,
                    output: None,
                    error: Some(compensation_failed(id, state)),
                    at_ms: now_ms,
                })];
            }
            StepStatus::CompensationRetrying => {
                let next = state.compensation_attempt + 1;
                // The first attempt of a replay is due at once.
                let due = match next - state.compensation_floor {
                    1 => now_ms,
                    nth => compensate
                        .retry
                        .due_ms(state.ended_at_ms.unwrap_or(now_ms), nth),
                };
                if due > now_ms {
                    return vec![Decision::WakeAt(due)];
                }
                next
            }
            _ => 1,
        };
        let at = format!("steps.{id}.compensate");
        let input = match compensate.action() {
            Ok(action) => effect_input(action, templates, &context, &at),
            // Loading refuses such a compensation; a run reports it.
            Err(_) => Err(TemplateError {
                at,
                message: "declares no single action".into(),
            }),
        };
        return vec![match input {
            Ok(input) => Decision::Compensate {
                step: id.clone(),
                attempt,
                input,
            },
            Err(e) => Decision::Record(RunEvent::CompensationFailed {
                step: id.clone(),
                attempt,
                class: StepErrorClass::TemplateError,
                message: e.to_string(),
                at_ms: now_ms,
            }),
        }];
    }
    let status = match run.failure.is_some() {
        true => RunStatus::Failed,
        false => RunStatus::Cancelled,
    };
    vec![Decision::Record(RunEvent::Finished {
        status,
        output: None,
        error: run.failure.clone(),
        at_ms: now_ms,
    })]
}

fn compensation_failed(id: &str, state: &crate::history::StepState) -> String {
    let (class, message) = state
        .error
        .as_ref()
        .map(|(c, m)| (c.code(), m.as_str()))
        .unwrap_or(("internal", ""));
    format!(
        "the compensation of step {id:?} failed after {} attempt(s): {class}: {message}",
        state.compensation_attempt
    )
}

/// Attempt `attempt` of `step`: a transform's output is known at once;
/// the other kinds are handed out.
fn start(
    step: &StepSpec,
    attempt: u32,
    templates: &Templates,
    context: &Value,
    now_ms: i64,
) -> Decision {
    let at = format!("steps.{}", step.id);
    let Ok(action) = step.action() else {
        // Loading refuses such a step; a run fails it rather than wait on it.
        let e = TemplateError {
            at,
            message: "declares no single action".into(),
        };
        return template_failed(step, attempt, &e, now_ms);
    };
    match (action, effect_input(action, templates, context, &at)) {
        (Action::Transform(_), Ok(output)) => Decision::Record(RunEvent::StepSucceeded {
            step: step.id.clone(),
            attempt,
            output,
            at_ms: now_ms,
        }),
        (_, Ok(input)) => Decision::Start {
            step: step.id.clone(),
            attempt,
            input,
        },
        (_, Err(e)) => template_failed(step, attempt, &e, now_ms),
    }
}

fn template_failed(step: &StepSpec, attempt: u32, e: &TemplateError, now_ms: i64) -> Decision {
    Decision::Record(RunEvent::StepFailed {
        step: step.id.clone(),
        attempt,
        class: StepErrorClass::TemplateError,
        message: e.to_string(),
        at_ms: now_ms,
    })
}

/// What an action is handed out with, its templates rendered. An HTTP
/// step's headers are not: they may read secrets, which the history must
/// never hold, so the engine renders them as it sends.
fn effect_input(
    action: Action<'_>,
    templates: &Templates,
    context: &Value,
    at: &str,
) -> Result<Value, TemplateError> {
    Ok(match action {
        Action::Model(m) => json!({
            "model": m.name,
            "input": templates.render(&m.input, context, &format!("{at}.model.input"))?,
        }),
        Action::Http(h) => {
            let url = templates.render(
                &Value::String(h.url.clone()),
                context,
                &format!("{at}.http.url"),
            )?;
            let body = match &h.body {
                Some(body) => templates.render(body, context, &format!("{at}.http.body"))?,
                None => Value::Null,
            };
            json!({"method": h.method, "url": url, "body": body})
        }
        Action::Worker(w) => json!({
            "queue": w.queue,
            "input": templates.render(&w.input, context, &format!("{at}.worker.input"))?,
        }),
        Action::Transform(t) => templates.render(t, context, &format!("{at}.transform"))?,
    })
}
