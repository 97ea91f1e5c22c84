//! One run, driven: its history read and folded, the state machine asked
//! what comes next, the events appended before their effects are handed
//! out, and the effects' outcomes appended as they come. After a crash
//! the same history gives the same state, and the effects still running
//! then are handed out again under the same ids.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use switchyard_schemas::now_ms;
use tokio::sync::Notify;
use tokio::task::{AbortHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::Engine;
use super::effects::{self, Attempt};
use super::metrics as m;
use crate::definition::{Action, StepErrorClass};
use crate::history::{HistoryError, RunEvent, RunState, StepStatus};
use crate::journal::{JournalError, Read};
use crate::machine::{Decision, decide};
use crate::runs::{RunsError, Ticket};
use crate::validate::Workflow;

/// How a driver stopped.
pub(crate) enum Ended {
    /// The run has ended: its ticket can go.
    Finished,
    /// The engine is stopping: the run goes to another engine.
    HandedBack,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum DriveError {
    #[error(transparent)]
    Runs(#[from] RunsError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    History(#[from] HistoryError),
    #[error("workflow {0:?} version {1} is not in this engine's configuration")]
    UnknownWorkflow(String, u32),
}

struct Driver {
    engine: Arc<Engine>,
    workflow: Arc<Workflow>,
    run_id: String,
    history: Vec<RunEvent>,
    last: u64,
    state: RunState,
    /// Effects handed out by this driver and not yet ended.
    running: HashMap<Attempt, AbortHandle>,
    outcomes: JoinSet<RunEvent>,
    /// Attempts told to stop.
    stopping: HashSet<Attempt>,
    /// This engine's part of the run's trace; each attempt is its child.
    span: tracing::Span,
}

pub(crate) async fn drive(
    engine: Arc<Engine>,
    ticket: Ticket,
    poked: Arc<Notify>,
    shutdown: CancellationToken,
) -> Result<Ended, DriveError> {
    let Read { events, last } = engine.runs.begin(&ticket).await?;
    let header = match events.first() {
        Some(RunEvent::Started { run, .. }) => run.clone(),
        _ => ticket.run.clone(),
    };
    let span =
        tracing::info_span!("workflow.run", run_id = %header.id, workflow = %header.workflow);
    switchyard_runtime::trace::adopt_traceparent(&span, header.trace.as_deref());
    let workflow = engine
        .workflows
        .get(&header.workflow, header.version)
        .cloned()
        .map(Arc::new)
        .ok_or(DriveError::UnknownWorkflow(header.workflow, header.version))?;
    let state = RunState::replay(&workflow, &events)?;
    let mut driver = Driver {
        engine,
        workflow,
        run_id: ticket.run.id,
        history: events,
        last,
        state,
        running: HashMap::new(),
        outcomes: JoinSet::new(),
        stopping: HashSet::new(),
        span: span.clone(),
    };
    let ended = driver.run(&poked, &shutdown).instrument(span).await;
    driver.outcomes.abort_all();
    ended
}

impl Driver {
    async fn run(
        &mut self,
        poked: &Notify,
        shutdown: &CancellationToken,
    ) -> Result<Ended, DriveError> {
        loop {
            if self.state.finished.is_some() {
                return Ok(Ended::Finished);
            }
            self.resume();
            let (events, effects, wake) = self.decisions().await;
            if !events.is_empty() {
                match self.append(events).await {
                    Ok(()) => {
                        for (attempt, input) in effects {
                            self.hand_out(attempt, input);
                        }
                    }
                    Err(DriveError::Journal(JournalError::Conflict(_))) => self.reread().await?,
                    Err(e) => return Err(e),
                }
                continue;
            }
            let wake =
                wake.map(|at| Duration::from_millis(u64::try_from(at - now_ms()).unwrap_or(0)));
            let sleep = tokio::time::sleep(wake.unwrap_or(Duration::from_secs(3600)));
            tokio::select! {
                () = shutdown.cancelled() => return Ok(Ended::HandedBack),
                () = poked.notified() => self.reread().await?,
                () = sleep => {}
                Some(outcome) = self.outcomes.join_next(), if !self.outcomes.is_empty() => {
                    let Ok(event) = outcome else { continue };
                    let Some(attempt) = Attempt::of_outcome(&event) else { continue };
                    self.running.remove(&attempt);
                    self.stopping.remove(&attempt);
                    // Another engine that drove the run too may have
                    // recorded this attempt's end already.
                    if !attempt.is_running_in(&self.state) {
                        continue;
                    }
                    match self.append(vec![event]).await {
                        Ok(()) => {}
                        Err(DriveError::Journal(JournalError::Conflict(_))) => self.reread().await?,
                        Err(e) => return Err(e),
                    }
                }
            }
        }
    }

    /// The events to append now, the effects to hand out once they are, and
    /// when to look again.
    async fn decisions(
        &mut self,
    ) -> (
        Vec<RunEvent>,
        Vec<(Attempt, serde_json::Value)>,
        Option<i64>,
    ) {
        let now = now_ms();
        let mut events = Vec::new();
        let mut effects = Vec::new();
        let mut wake = None;
        for decision in decide(&self.workflow, &self.state, &self.engine.templates, now) {
            let compensation = matches!(decision, Decision::Compensate { .. });
            match decision {
                Decision::Record(event) => events.push(event),
                Decision::Start {
                    step,
                    attempt,
                    input,
                }
                | Decision::Compensate {
                    step,
                    attempt,
                    input,
                } => {
                    let attempt = Attempt {
                        step,
                        attempt,
                        compensation,
                    };
                    events.push(attempt.started(input.clone(), now));
                    effects.push((attempt, input));
                }
                Decision::Stop { step, attempt } => {
                    let attempt = Attempt::step(step, attempt);
                    if let Some(event) = self.stop(attempt).await {
                        events.push(event);
                    }
                }
                Decision::WakeAt(at) => wake = Some(at),
            }
        }
        (events, effects, wake)
    }

    /// Stops a running attempt: a job is cancelled, and its result still
    /// comes; a call or task is abandoned, and recorded as stopped.
    async fn stop(&mut self, attempt: Attempt) -> Option<RunEvent> {
        if !self.stopping.insert(attempt.clone()) {
            return None;
        }
        if let Some(Ok(Action::Model(_))) = self.workflow.step(&attempt.step).map(|s| s.action()) {
            effects::cancel_job(&self.engine, &attempt.effect_id(&self.run_id)).await;
            return None;
        }
        if let Some(handle) = self.running.remove(&attempt) {
            handle.abort();
        }
        Some(attempt.failed(
            StepErrorClass::Cancelled,
            "stopped: the run is failing or cancelled".into(),
            now_ms(),
        ))
    }

    /// Hands out again what the history shows running and this driver did
    /// not hand out: after a crash, or a run taken over from another
    /// engine. The ids are the same, so a job is not queued twice.
    fn resume(&mut self) {
        let mut again = Vec::new();
        for (id, step) in &self.state.steps {
            let attempt = match step.status {
                StepStatus::Running => Attempt::step(id.clone(), step.attempt),
                StepStatus::Compensating => {
                    Attempt::compensation(id.clone(), step.compensation_attempt)
                }
                _ => continue,
            };
            if self.running.contains_key(&attempt) {
                continue;
            }
            if let Some(input) = attempt.input_in(&self.history) {
                again.push((attempt, input.clone()));
            }
        }
        for (attempt, input) in again {
            self.hand_out(attempt, input);
        }
    }

    fn hand_out(&mut self, attempt: Attempt, input: serde_json::Value) {
        let Some(step) = self.workflow.step(&attempt.step).cloned() else {
            return;
        };
        let context = self.state.context();
        let span = tracing::info_span!(parent: &self.span, "workflow.step",
            run_id = %self.run_id, step = %attempt.step, attempt = attempt.attempt,
            compensation = attempt.compensation);
        let streamed = self.state.header.stream
            && !attempt.compensation
            && self.workflow.answering.as_ref() == Some(&attempt.step);
        let handle = self.outcomes.spawn(
            effects::carry_out(
                self.engine.clone(),
                self.state.header.clone(),
                step,
                (attempt.clone(), streamed),
                input,
                context,
            )
            .instrument(span),
        );
        self.running.insert(attempt, handle);
    }

    async fn append(&mut self, events: Vec<RunEvent>) -> Result<(), DriveError> {
        let journal = self.engine.runs.journal();
        self.last = journal
            .append(&self.run_id, self.last, self.history.len(), &events)
            .await?;
        for event in events {
            self.state.apply(&self.workflow, &event)?;
            let started_at = match self.history.first() {
                Some(RunEvent::Started { at_ms, .. }) => *at_ms,
                _ => now_ms(),
            };
            m::recorded(&self.workflow.spec.name, started_at, &event);
            self.history.push(event);
        }
        Ok(())
    }

    /// Reads the history again: someone else appended to it (a
    /// cancellation, or another engine that believed it owned the run).
    async fn reread(&mut self) -> Result<(), DriveError> {
        let read = self.engine.runs.journal().read(&self.run_id).await?;
        self.state = RunState::replay(&self.workflow, &read.events)?;
        self.history = read.events;
        self.last = read.last;
        Ok(())
    }
}
