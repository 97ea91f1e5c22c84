//! Workflows: multi-step inference pipelines whose model steps are
//! Switchyard jobs (durable queue, priority, fair share, placement by
//! capacity, billing) and whose other steps call external APIs, hand tasks
//! to workers, or transform values.
//!
//! This crate holds what a definition is and what makes one valid: the YAML
//! shape ([`WorkflowSpec`]), the template and condition language
//! ([`Templates`], Jinja2 through MiniJinja), and the checks run by
//! `check-config` and at start ([`Workflows::new`]); and how a run moves:
//! its history ([`RunEvent`]), the state it folds into ([`RunState`]), and
//! the deterministic state machine that decides what comes next
//! ([`decide`]), and where histories are kept ([`journal`]: JetStream,
//! with an append that fails if anything was appended since it was read);
//! how runs are started, read and cancelled from outside ([`runs`]); and
//! the engine role that drives them ([`engine`]).

mod definition;
pub mod engine;
mod history;
pub mod journal;
mod machine;
pub mod runs;
mod template;
mod validate;
pub mod view;

pub use definition::{
    Action, CompensationSpec, HttpStep, ModelStep, RetrySpec, StepErrorClass, StepSpec, WorkerStep,
    WorkflowSpec,
};
pub use history::{HistoryError, RunEvent, RunHeader, RunState, RunStatus, StepState, StepStatus};
pub use machine::{Decision, decide};
pub use template::{TemplateError, Templates};
pub use validate::{InputError, Workflow, Workflows};

#[cfg(test)]
mod run_tests;
#[cfg(test)]
mod tests;
