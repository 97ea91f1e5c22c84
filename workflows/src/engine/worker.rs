//! Worker steps: a task handed to an external worker, in any language,
//! over NATS (docs/nats-api.md). The task goes to `sy.wf.task.<queue>` in
//! the work-queue stream `WFTASKS`, which workers pull from the durable
//! consumer `wf-task-<queue>`; the worker publishes its answer on
//! `sy.wf.done.<task id>` (stream `WFDONE`) and only then acknowledges the
//! task, so a worker that dies in between is given the task again. A long
//! task keeps its lease by sending progress (`+WPI`).

use std::time::Duration;

use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{self, DiscardPolicy, RetentionPolicy, StorageType};
use async_nats::jetstream::{self, Context};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use switchyard_runtime::NatsConfig;
use switchyard_runtime::nats::{self, ConsumerSpec, NatsError};

use super::Engine;
use super::effects::{Attempt, Failure};
use crate::definition::StepErrorClass;
use crate::history::RunHeader;

pub const TASKS_STREAM: &str = "WFTASKS";
pub const DONE_STREAM: &str = "WFDONE";

/// How long a worker holds a task without acknowledging it or sending
/// progress before the task goes to another worker.
const TASK_LEASE: Duration = Duration::from_secs(30);

fn task_subject(queue: &str) -> String {
    format!("sy.wf.task.{queue}")
}

fn done_subject(task_id: &str) -> String {
    format!("sy.wf.done.{task_id}")
}

/// The durable consumer a queue's workers share.
pub fn consumer_name(queue: &str) -> String {
    format!("wf-task-{queue}")
}

/// A task, as a worker receives it.
#[derive(Debug, Serialize)]
struct Task<'a> {
    /// Derived from the run, the step and the attempt: the same task handed
    /// out again has the same id, for the worker to recognise.
    id: &'a str,
    run: &'a str,
    workflow: &'a str,
    tenant: &'a str,
    step: &'a str,
    attempt: u32,
    compensation: bool,
    input: &'a Value,
}

/// A worker's answer: its output, or why the task failed.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Done {
    #[serde(default)]
    output: Value,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerSetupError {
    #[error("cannot create or update stream {0}: {1}")]
    Stream(&'static str, jetstream::context::CreateStreamError),
    #[error(transparent)]
    Consumer(#[from] NatsError),
}

/// Makes the task and answer streams, and a consumer for each queue the
/// workflows name, so that workers only bind to it; the answers' stream.
pub(crate) async fn open(
    js: &Context,
    cfg: &NatsConfig,
    queues: impl IntoIterator<Item = String>,
) -> Result<stream::Stream, WorkerSetupError> {
    let make = |name: &'static str, subjects: &str, retention| stream::Config {
        name: name.into(),
        subjects: vec![subjects.into()],
        retention,
        storage: StorageType::File,
        num_replicas: cfg.replicas,
        duplicate_window: cfg.duplicate_window,
        ..Default::default()
    };
    js.create_or_update_stream(make(
        TASKS_STREAM,
        "sy.wf.task.*",
        RetentionPolicy::WorkQueue,
    ))
    .await
    .map_err(|e| WorkerSetupError::Stream(TASKS_STREAM, e))?;
    let done = stream::Config {
        max_age: cfg.result_retention,
        // One answer a task: a second is refused, not put in its place.
        max_messages_per_subject: 1,
        discard: DiscardPolicy::New,
        discard_new_per_subject: true,
        allow_direct: true,
        ..make(DONE_STREAM, "sy.wf.done.*", RetentionPolicy::Limits)
    };
    js.create_or_update_stream(done)
        .await
        .map_err(|e| WorkerSetupError::Stream(DONE_STREAM, e))?;
    for queue in queues {
        nats::durable_consumer(
            js,
            ConsumerSpec {
                stream: TASKS_STREAM,
                durable: consumer_name(&queue),
                filter: task_subject(&queue),
                ack_wait: TASK_LEASE,
                max_ack_pending: 10_000,
                inactive_threshold: Duration::ZERO,
                state_in_memory: false,
            },
        )
        .await?;
    }
    Ok(nats::stream(js, DONE_STREAM).await?)
}

/// Hands the task out, unless its answer is already there, and waits for
/// the answer.
pub(crate) async fn task(
    engine: &Engine,
    run: &RunHeader,
    attempt: &Attempt,
    id: &str,
    input: &Value,
) -> Result<Value, Failure> {
    let unavailable = |e: String| (StepErrorClass::Unavailable, e);
    let mut told = engine
        .client
        .subscribe(done_subject(id))
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    if let Some(done) = answer(engine, id).await {
        return done;
    }
    let task = Task {
        id,
        run: &run.id,
        workflow: &run.workflow,
        tenant: &run.tenant,
        step: &attempt.step,
        attempt: attempt.attempt,
        compensation: attempt.compensation,
        input: &input["input"],
    };
    let payload = serde_json::to_vec(&task).map_err(|e| unavailable(e.to_string()))?;
    let queue = input["queue"].as_str().unwrap_or_default();
    // Handed out again after a crash, within the server's duplicate
    // window, the same id is dropped; after it, the worker sees the id
    // again.
    let publish = PublishMessage::build()
        .payload(payload.into())
        .message_id(id);
    engine
        .js
        .send_publish(task_subject(queue), publish)
        .await
        .map_err(|e| unavailable(format!("the task was not kept: {e}")))?
        .await
        .map_err(|e| unavailable(format!("the task was not kept: {e}")))?;
    loop {
        // The answer told (heard before the stream has stored it), or the
        // stored one, looked for again in a while.
        let told = tokio::select! {
            msg = told.next() => msg.map(|m| m.payload),
            () = tokio::time::sleep(Duration::from_secs(5)) => None,
        };
        let done = match told {
            Some(payload) => Some(outcome(&payload)),
            None => answer(engine, id).await,
        };
        if let Some(done) = done {
            return done;
        }
    }
}

/// The worker's answer to the task, if there is one.
async fn answer(engine: &Engine, id: &str) -> Option<Result<Value, Failure>> {
    let msg = engine
        .done
        .direct_get_last_for_subject(done_subject(id))
        .await
        .ok()?;
    Some(outcome(&msg.payload))
}

/// A worker's answer as the step's outcome.
fn outcome(payload: &[u8]) -> Result<Value, Failure> {
    match serde_json::from_slice::<Done>(payload) {
        Ok(Done { error: Some(e), .. }) => Err((StepErrorClass::WorkerFailed, e)),
        Ok(Done { output, .. }) => Ok(output),
        Err(e) => Err((
            StepErrorClass::WorkerFailed,
            format!("the worker's answer is not {{\"output\"}} or {{\"error\"}}: {e}"),
        )),
    }
}
