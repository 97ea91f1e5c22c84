//! Runs started over NATS: a platform client publishes a start request on
//! `sy.wf.start` (stream `WFSTART`, a work queue) with the run's id as its
//! `Nats-Msg-Id`; the PubAck means the request is kept, even if no engine
//! runs. An engine checks it as the HTTP API would and turns it into the
//! run's ticket; a request it refuses becomes a run that ended `failed`
//! with the reason, read where the run would be.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::{AckKind, Context};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::Value;
use switchyard_runtime::nats::{self, ConsumerSpec, NatsError};
use switchyard_schemas::{DEFAULT_TENANT, Priority, now_ms};
use tokio_util::sync::CancellationToken;

use super::Engine;
use crate::history::{RunEvent, RunHeader, RunStatus};
use crate::runs::{START_STREAM, START_SUBJECT};

/// A start request's body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StartRequest {
    workflow: String,
    input: Value,
    #[serde(default)]
    priority: Option<Priority>,
    #[serde(default)]
    tenant: Option<String>,
}

/// The engines' shared consumer of start requests (the stream is made
/// with the other run streams, by every front and engine).
pub(crate) async fn open(js: &Context) -> Result<PullConsumer, NatsError> {
    nats::durable_consumer(
        js,
        ConsumerSpec {
            stream: START_STREAM,
            durable: "workflows-intake".into(),
            filter: START_SUBJECT.into(),
            ack_wait: Duration::from_secs(30),
            max_ack_pending: 1000,
            inactive_threshold: Duration::ZERO,
            state_in_memory: false,
        },
    )
    .await
}

/// A token of the ids Switchyard gives out: 1–64 of `A-Z a-z 0-9 _ -`.
fn is_token(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The run a request starts, or why it is refused.
fn check(engine: &Engine, id: &str, body: &[u8]) -> Result<RunHeader, String> {
    let request: StartRequest = serde_json::from_slice(body).map_err(|e| {
        format!(
            "invalid_request: not a start request: {}",
            switchyard_schemas::redact::without_values(&e.to_string())
        )
    })?;
    let tenant = request.tenant.unwrap_or_else(|| DEFAULT_TENANT.to_owned());
    if !is_token(&tenant) {
        return Err("invalid_request: tenant must be 1 to 64 of A-Z a-z 0-9 _ -".into());
    }
    let workflow = engine
        .workflows
        .latest(&request.workflow)
        .ok_or_else(|| format!("not_found: no workflow {:?}", request.workflow))?;
    workflow
        .check_input(&request.input)
        .map_err(|e| format!("invalid_request: {e}"))?;
    Ok(RunHeader {
        id: id.to_owned(),
        workflow: request.workflow,
        version: workflow.spec.version,
        tenant,
        priority: request.priority.unwrap_or(Priority::Normal),
        input: request.input,
        webhook: None,
        api_key: None,
        trace: switchyard_runtime::trace::traceparent(),
        stream: false,
    })
}

/// Turns start requests into runs until `shutdown`.
pub(crate) async fn serve(
    engine: Arc<Engine>,
    consumer: PullConsumer,
    shutdown: CancellationToken,
) {
    let mut requests = match consumer.messages().await {
        Ok(requests) => requests,
        Err(e) => {
            tracing::error!(error = %e, "cannot read start requests");
            return;
        }
    };
    loop {
        let msg = tokio::select! {
            () = shutdown.cancelled() => return,
            msg = requests.next() => match msg {
                Some(Ok(msg)) => msg,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "reading start requests");
                    continue;
                }
                None => return,
            },
        };
        let named = msg
            .headers
            .as_ref()
            .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
            .map(|v| v.as_str().to_owned());
        let id = match (named, msg.info()) {
            (Some(id), _) if is_token(&id) => id,
            // No usable id: named by its place in the stream, as the jobs'
            // intake names a submission.
            (_, Ok(info)) => format!("wf-start-{}", info.stream_sequence),
            (_, Err(_)) => continue,
        };
        // The root of the run's trace, or a child of the publisher's.
        let span = tracing::info_span!("workflow.start", run_id = %id);
        switchyard_runtime::trace::adopt(&span, msg.headers.as_ref());
        let checked = span.in_scope(|| check(&engine, &id, &msg.payload));
        let kept = match checked {
            Ok(run) => engine
                .runs
                .start(run, now_ms())
                .await
                .map_err(|e| e.to_string()),
            Err(reason) => refuse(&engine, &id, reason).await,
        };
        let ack = match kept {
            Ok(()) => msg.double_ack().await,
            Err(e) => {
                tracing::warn!(run = id, error = %e, "a start request waits for the streams");
                msg.ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                    .await
            }
        };
        if let Err(e) = ack {
            tracing::warn!(run = id, error = %e, "answering a start request");
        }
    }
}

/// Records a refused request as a run that ended at once, keeping none of
/// its values, so that its client reads why where it would read the run.
async fn refuse(engine: &Engine, id: &str, reason: String) -> Result<(), String> {
    let at_ms = now_ms();
    let run = RunHeader {
        id: id.to_owned(),
        workflow: String::new(),
        version: 0,
        tenant: DEFAULT_TENANT.to_owned(),
        priority: Priority::Normal,
        input: Value::Null,
        webhook: None,
        api_key: None,
        trace: None,
        stream: false,
    };
    let events = [
        RunEvent::Started { run, at_ms },
        RunEvent::Finished {
            status: RunStatus::Failed,
            output: None,
            error: Some(reason),
            at_ms,
        },
    ];
    match engine.runs.journal().append(id, 0, 0, &events).await {
        // A run of that id exists: the request was a repeat.
        Ok(_) | Err(crate::journal::JournalError::Conflict(_)) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}
