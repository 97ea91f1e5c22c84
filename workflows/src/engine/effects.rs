//! What steps do outside the history: a model step is a Switchyard job, an
//! HTTP step a call to an external API (`http_step.rs`), a worker step a
//! task for an external worker (`worker.rs`). Each carries an id derived from
//! the run, the step and the attempt (the job's id, the call's
//! `Idempotency-Key`), so that an effect handed out again after a crash is
//! recognised downstream and not done, or billed, twice.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use switchyard_runtime::attempts::{StoredResult, read_result};
use switchyard_schemas::{
    AdmitReply, ErrorClass, JobResult, Outcome, WORKFLOW_RUN, now_ms, subjects,
};

use super::metrics as m;
use super::{Engine, http_step, worker};
use crate::definition::{Action, StepErrorClass, StepSpec};
use crate::history::{RunEvent, RunHeader, RunState, StepStatus};

/// One attempt of a step, or of its compensation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Attempt {
    pub step: String,
    pub attempt: u32,
    pub compensation: bool,
}

/// Most characters of an id: the jobs API's bound.
const MAX_ID: usize = 64;

pub(crate) type Failure = (StepErrorClass, String);

/// The id an attempt's effect carries (the job's id, the call's
/// `Idempotency-Key`): `<run>-<step>-<attempt>`, `c<attempt>` for a
/// compensation; a long step id is replaced by its digest.
pub fn effect_id(run: &str, step: &str, attempt: u32, compensation: bool) -> String {
    let n = match compensation {
        true => format!("c{attempt}"),
        false => attempt.to_string(),
    };
    let id = format!("{run}-{step}-{n}");
    if id.len() <= MAX_ID {
        return id;
    }
    let digest = Sha256::digest(step.as_bytes());
    format!("{run}-{}-{n}", &hex::encode(digest)[..16])
}

impl Attempt {
    pub fn step(step: String, attempt: u32) -> Attempt {
        Attempt {
            step,
            attempt,
            compensation: false,
        }
    }

    pub fn compensation(step: String, attempt: u32) -> Attempt {
        Attempt {
            step,
            attempt,
            compensation: true,
        }
    }

    pub fn effect_id(&self, run: &str) -> String {
        effect_id(run, &self.step, self.attempt, self.compensation)
    }

    /// The attempt an outcome event ends.
    pub fn of_outcome(event: &RunEvent) -> Option<Attempt> {
        match event {
            RunEvent::StepSucceeded { step, attempt, .. }
            | RunEvent::StepFailed { step, attempt, .. } => {
                Some(Attempt::step(step.clone(), *attempt))
            }
            RunEvent::CompensationSucceeded { step, attempt, .. }
            | RunEvent::CompensationFailed { step, attempt, .. } => {
                Some(Attempt::compensation(step.clone(), *attempt))
            }
            _ => None,
        }
    }

    /// Whether `state` shows this attempt handed out and not ended.
    pub fn is_running_in(&self, state: &RunState) -> bool {
        state
            .steps
            .get(&self.step)
            .is_some_and(|s| match self.compensation {
                false => s.status == StepStatus::Running && s.attempt == self.attempt,
                true => {
                    s.status == StepStatus::Compensating && s.compensation_attempt == self.attempt
                }
            })
    }

    /// The input it was handed out with, as the history recorded it.
    pub fn input_in<'h>(&self, history: &'h [RunEvent]) -> Option<&'h Value> {
        history
            .iter()
            .rev()
            .find_map(|e| match (e, self.compensation) {
                (
                    RunEvent::StepStarted {
                        step,
                        attempt,
                        input,
                        ..
                    },
                    false,
                )
                | (
                    RunEvent::CompensationStarted {
                        step,
                        attempt,
                        input,
                        ..
                    },
                    true,
                ) if *step == self.step && *attempt == self.attempt => Some(input),
                _ => None,
            })
    }

    pub fn started(&self, input: Value, at_ms: i64) -> RunEvent {
        let (step, attempt) = (self.step.clone(), self.attempt);
        match self.compensation {
            false => RunEvent::StepStarted {
                step,
                attempt,
                input,
                at_ms,
            },
            true => RunEvent::CompensationStarted {
                step,
                attempt,
                input,
                at_ms,
            },
        }
    }

    pub fn failed(&self, class: StepErrorClass, message: String, at_ms: i64) -> RunEvent {
        let (step, attempt) = (self.step.clone(), self.attempt);
        match self.compensation {
            false => RunEvent::StepFailed {
                step,
                attempt,
                class,
                message,
                at_ms,
            },
            true => RunEvent::CompensationFailed {
                step,
                attempt,
                class,
                message,
                at_ms,
            },
        }
    }

    fn succeeded(&self, output: Value, at_ms: i64) -> RunEvent {
        let (step, attempt) = (self.step.clone(), self.attempt);
        match self.compensation {
            false => RunEvent::StepSucceeded {
                step,
                attempt,
                output,
                at_ms,
            },
            true => RunEvent::CompensationSucceeded {
                step,
                attempt,
                at_ms,
            },
        }
    }
}

/// Carries out one attempt (`streamed`: a model step whose tokens a client
/// follows); its outcome, as the event to append.
pub(crate) async fn carry_out(
    engine: std::sync::Arc<Engine>,
    run: RunHeader,
    step: StepSpec,
    (attempt, streamed): (Attempt, bool),
    input: Value,
    context: Value,
) -> RunEvent {
    let (action, timeout) = match (&step.compensate, attempt.compensation) {
        (Some(c), true) => (c.action(), c.timeout),
        _ => (step.action(), step.timeout),
    };
    let id = attempt.effect_id(&run.id);
    let kind = action.map_or("none", |a| a.kind());
    let begun = Instant::now();
    let work = async {
        match action {
            Ok(Action::Model(_)) => {
                let job = Job {
                    id: &id,
                    input: &input,
                    timeout,
                    streamed,
                };
                model(&engine, &run, job).await
            }
            Ok(Action::Http(h)) => http_step::http(&engine, h, &id, &input, context, timeout).await,
            Ok(Action::Worker(_)) => worker::task(&engine, &run, &attempt, &id, &input).await,
            _ => Err((
                StepErrorClass::TemplateError,
                "declares no action the engine can hand out".into(),
            )),
        }
    };
    let limit = timeout.unwrap_or(Duration::MAX);
    let result = match tokio::time::timeout(limit, work).await {
        Ok(result) => result,
        Err(_) => {
            if kind == "model" {
                cancel_job(&engine, &id).await;
            }
            Err((
                StepErrorClass::Timeout,
                format!(
                    "ran past its timeout of {}",
                    humantime::format_duration(limit)
                ),
            ))
        }
    };
    m::effect_ended(kind, begun.elapsed(), result.is_ok());
    match result {
        Ok(output) => attempt.succeeded(output, now_ms()),
        Err((class, message)) => attempt.failed(class, message, now_ms()),
    }
}

/// Asks the broker to cancel a job; its result still comes.
pub(crate) async fn cancel_job(engine: &Engine, job_id: &str) {
    let asked = engine
        .client
        .request(subjects::CANCEL, job_id.to_owned().into())
        .await;
    if let Err(e) = asked {
        tracing::warn!(job = job_id, error = %e, "cancelling a workflow's job");
    }
}

/// Waits between tries to queue a job: the broker may be restarting.
const ADMIT_TRIES: [u64; 6] = [0, 250, 500, 1000, 2000, 4000];

/// A model step's job: its id (the attempt's), the step's input as
/// rendered, its timeout, and whether it streams its tokens.
struct Job<'a> {
    id: &'a str,
    input: &'a Value,
    timeout: Option<Duration>,
    streamed: bool,
}

/// A model step: the job is queued under the attempt's id, at the run's
/// tenant and priority, and its result read where every result is kept.
async fn model(engine: &Engine, run: &RunHeader, job: Job<'_>) -> Result<Value, Failure> {
    let Job {
        id,
        input,
        timeout,
        streamed,
    } = job;
    let unavailable = |e: String| (StepErrorClass::Unavailable, e);
    // Subscribed before the job is queued: its result cannot come first.
    let mut told = engine
        .client
        .subscribe(subjects::results(id))
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let mut submission = json!({
        "id": id,
        "model": input["model"],
        "input": input["input"],
        "tenant": run.tenant,
        "metadata": {"workflow": run.workflow, WORKFLOW_RUN: run.id},
    });
    if streamed {
        submission["stream"] = json!(true);
    }
    if let Some(t) = timeout {
        submission["timeout_ms"] = json!(u64::try_from(t.as_millis()).unwrap_or(u64::MAX));
    }
    let body = serde_json::to_vec(&submission).map_err(|e| unavailable(e.to_string()))?;
    let mut refused = String::new();
    let mut queued = false;
    for wait in ADMIT_TRIES {
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let mut headers = async_nats::HeaderMap::new();
        if let Some(key) = &run.api_key {
            headers.insert(subjects::API_KEY_HEADER, key.as_str());
        }
        switchyard_runtime::trace::inject(&mut headers);
        let reply = engine
            .client
            .request_with_headers(subjects::admit(run.priority), headers, body.clone().into())
            .await;
        match reply.map(|r| serde_json::from_slice::<AdmitReply>(&r.payload)) {
            Ok(Ok(AdmitReply::Accepted { .. })) => {
                queued = true;
                break;
            }
            Ok(Ok(AdmitReply::Rejected { error })) => match error.code.as_str() {
                // Passing: the tenant's or key's limits, or a part down.
                "queue_full" | "rate_limited" | "queue_unavailable" | "store_unavailable" => {
                    refused = format!("{}: {}", error.code, error.message);
                }
                code => {
                    return Err((
                        StepErrorClass::InvalidInput,
                        format!("job {id} refused: {code}: {}", error.message),
                    ));
                }
            },
            Ok(Err(e)) => refused = format!("the broker's answer does not decode: {e}"),
            Err(e) => refused = format!("no broker answered: {e}"),
        }
    }
    if !queued {
        return Err(unavailable(format!("job {id} not queued: {refused}")));
    }
    loop {
        if let StoredResult::Vouched(result, _) =
            read_result(&engine.results, &engine.grants, id).await
        {
            return job_output(engine, *result).await;
        }
        // Told of a result (a subscriber hears it before the stream has
        // stored it, so the result told is taken when its grant vouches for
        // it), or looking again in a while: a result published while this
        // engine was not subscribed is only in the stream.
        tokio::select! {
            Some(msg) = told.next() => {
                if let Ok(result) = switchyard_schemas::decode::<JobResult>(&msg.payload)
                    && result.job_id == id
                    && engine.grants.vouches_result(&result)
                {
                    return job_output(engine, result).await;
                }
            }
            () = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

/// A job's result as a step's outcome.
async fn job_output(engine: &Engine, mut result: JobResult) -> Result<Value, Failure> {
    if let Err(e) = switchyard_runtime::large::resolve(&engine.large, &mut result).await {
        return Err((StepErrorClass::JobFailed, e.to_string()));
    }
    match result.outcome {
        Outcome::Succeeded { output, .. } => Ok(output),
        Outcome::Failed { error } => {
            let class = match error.class {
                ErrorClass::InvalidInput | ErrorClass::UnknownModel => StepErrorClass::InvalidInput,
                ErrorClass::Cancelled => StepErrorClass::Cancelled,
                ErrorClass::TimedOut => StepErrorClass::Timeout,
                _ => StepErrorClass::JobFailed,
            };
            let message = format!(
                "job {} failed: {}: {}",
                result.job_id,
                error.class.code(),
                error.message
            );
            Err((class, message))
        }
    }
}
