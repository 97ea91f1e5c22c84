//! A run as its API shows it: its status, and per step its state and each
//! attempt with its times, error and the id its effect carried (a model
//! step's job id).

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use crate::definition::Action;
use crate::history::{RunEvent, RunState};
use crate::validate::Workflow;

/// One attempt, as the history tells it.
#[derive(Debug, Default)]
struct AttemptView {
    attempt: u32,
    compensation: bool,
    effect_id: Option<String>,
    started_at_ms: Option<i64>,
    ended_at_ms: Option<i64>,
    outcome: &'static str,
    error: Option<Value>,
}

impl AttemptView {
    fn json(&self) -> Value {
        json!({
            "attempt": self.attempt,
            "compensation": self.compensation,
            "effect_id": self.effect_id,
            "started_at_ms": self.started_at_ms,
            "ended_at_ms": self.ended_at_ms,
            "outcome": self.outcome,
            "error": self.error,
        })
    }
}

/// The run's view, and the ids of its model steps' jobs (for their records
/// and costs). `None` for an empty history.
pub fn run_view(workflow: Option<&Workflow>, history: &[RunEvent]) -> Option<(Value, Vec<String>)> {
    let Some(RunEvent::Started { run, at_ms }) = history.first() else {
        return None;
    };
    let mut attempts: BTreeMap<String, Vec<AttemptView>> = BTreeMap::new();
    let mut finished = None;
    let mut replays = 0;
    for event in history {
        let (step, attempt, compensation) = match event {
            RunEvent::StepStarted { step, attempt, .. }
            | RunEvent::StepSucceeded { step, attempt, .. }
            | RunEvent::StepFailed { step, attempt, .. } => (step, *attempt, false),
            RunEvent::CompensationStarted { step, attempt, .. }
            | RunEvent::CompensationSucceeded { step, attempt, .. }
            | RunEvent::CompensationFailed { step, attempt, .. } => (step, *attempt, true),
            RunEvent::Finished {
                status,
                output,
                error,
                at_ms,
            } => {
                finished = Some((status, output, error, at_ms));
                continue;
            }
            RunEvent::Replayed { .. } => {
                finished = None;
                replays += 1;
                continue;
            }
            _ => continue,
        };
        let list = attempts.entry(step.clone()).or_default();
        let found = list
            .iter()
            .position(|a| a.attempt == attempt && a.compensation == compensation);
        let i = found.unwrap_or_else(|| {
            let effect = crate::engine::effect_id(&run.id, step, attempt, compensation);
            list.push(AttemptView {
                attempt,
                compensation,
                effect_id: Some(effect),
                outcome: "running",
                ..AttemptView::default()
            });
            list.len() - 1
        });
        let a = &mut list[i];
        match event {
            RunEvent::StepStarted { at_ms, .. } | RunEvent::CompensationStarted { at_ms, .. } => {
                a.started_at_ms = Some(*at_ms);
            }
            RunEvent::StepSucceeded { at_ms, .. }
            | RunEvent::CompensationSucceeded { at_ms, .. } => {
                a.ended_at_ms = Some(*at_ms);
                a.outcome = "succeeded";
            }
            RunEvent::StepFailed {
                class,
                message,
                at_ms,
                ..
            }
            | RunEvent::CompensationFailed {
                class,
                message,
                at_ms,
                ..
            } => {
                a.ended_at_ms = Some(*at_ms);
                a.outcome = "failed";
                a.error = Some(json!({"class": class.code(), "message": message}));
            }
            _ => {}
        }
    }
    let state = workflow.and_then(|w| RunState::replay(w, history).ok());
    let mut jobs = Vec::new();
    let steps: Vec<Value> = match (workflow, &state) {
        (Some(w), Some(state)) => w
            .spec
            .steps
            .iter()
            .map(|spec| {
                let s = &state.steps[&spec.id];
                let kind = spec.action().map_or("none", |a| a.kind());
                let list = attempts.remove(&spec.id).unwrap_or_default();
                let model = matches!(spec.action(), Ok(Action::Model(_)));
                let compensation_model = spec
                    .compensate
                    .as_ref()
                    .is_some_and(|c| matches!(c.action(), Ok(Action::Model(_))));
                for a in &list {
                    if (model && !a.compensation) || (compensation_model && a.compensation) {
                        jobs.extend(a.effect_id.clone());
                    }
                }
                json!({
                    "id": spec.id,
                    "kind": kind,
                    "needs": spec.needs,
                    "status": s.status,
                    "output": s.output,
                    "attempts": list.iter().map(AttemptView::json).collect::<Vec<_>>(),
                })
            })
            .collect(),
        _ => attempts
            .into_iter()
            .map(|(id, list)| {
                json!({"id": id, "attempts": list.iter().map(AttemptView::json).collect::<Vec<_>>()})
            })
            .collect(),
    };
    let cancel_requested = history
        .iter()
        .any(|e| matches!(e, RunEvent::CancelRequested { .. }));
    let mut view = Map::new();
    view.insert("id".into(), json!(run.id));
    view.insert("workflow".into(), json!(run.workflow));
    view.insert("version".into(), json!(run.version));
    view.insert("tenant".into(), json!(run.tenant));
    view.insert("priority".into(), json!(run.priority));
    view.insert("input".into(), run.input.clone());
    view.insert("started_at_ms".into(), json!(at_ms));
    view.insert("cancel_requested".into(), json!(cancel_requested));
    view.insert("replays".into(), json!(replays));
    match finished {
        Some((status, output, error, at_ms)) => {
            view.insert("status".into(), json!(status));
            view.insert("output".into(), json!(output));
            view.insert("error".into(), json!(error));
            view.insert("finished_at_ms".into(), json!(at_ms));
        }
        None => {
            view.insert("status".into(), json!("running"));
            let failing = state.as_ref().and_then(|s| s.failure.clone());
            view.insert("error".into(), json!(failing));
        }
    }
    view.insert("steps".into(), Value::Array(steps));
    Some((Value::Object(view), jobs))
}
