//! Metric names of the workflow engine, in one place.

use std::time::Duration;

use crate::history::RunEvent;

pub const RUNS: &str = "switchyard_workflow_runs_total";
pub const RUN_SECONDS: &str = "switchyard_workflow_run_seconds";
pub const STEP_SECONDS: &str = "switchyard_workflow_step_seconds";
pub const STEPS: &str = "switchyard_workflow_steps_total";
pub const COMPENSATIONS: &str = "switchyard_workflow_compensations_total";

pub fn describe() {
    metrics::describe_counter!(RUNS, "Runs that ended, by workflow and outcome");
    metrics::describe_histogram!(
        RUN_SECONDS,
        metrics::Unit::Seconds,
        "Time from a run's start to its end, by workflow"
    );
    metrics::describe_histogram!(
        STEP_SECONDS,
        metrics::Unit::Seconds,
        "Time one attempt's effect took, by kind (model, http)"
    );
    metrics::describe_counter!(
        STEPS,
        "Attempts that ended, by kind and outcome (succeeded, failed)"
    );
    metrics::describe_counter!(
        COMPENSATIONS,
        "Compensations that ended, by workflow and outcome"
    );
}

/// Counts what an appended event tells.
pub fn recorded(workflow: &str, started_at_ms: i64, event: &RunEvent) {
    let workflow = workflow.to_owned();
    match event {
        RunEvent::Finished { status, at_ms, .. } => {
            let outcome = serde_json::to_value(status)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            metrics::counter!(RUNS, "workflow" => workflow.clone(), "outcome" => outcome)
                .increment(1);
            let seconds = (at_ms - started_at_ms).max(0) as f64 / 1000.0;
            metrics::histogram!(RUN_SECONDS, "workflow" => workflow).record(seconds);
        }
        RunEvent::CompensationSucceeded { .. } => {
            metrics::counter!(COMPENSATIONS, "workflow" => workflow, "outcome" => "succeeded")
                .increment(1);
        }
        RunEvent::CompensationFailed { .. } => {
            metrics::counter!(COMPENSATIONS, "workflow" => workflow, "outcome" => "failed")
                .increment(1);
        }
        _ => {}
    }
}

/// Counts one attempt's effect.
pub fn effect_ended(kind: &'static str, took: Duration, succeeded: bool) {
    let outcome = if succeeded { "succeeded" } else { "failed" };
    metrics::counter!(STEPS, "kind" => kind, "outcome" => outcome).increment(1);
    metrics::histogram!(STEP_SECONDS, "kind" => kind).record(took.as_secs_f64());
}
