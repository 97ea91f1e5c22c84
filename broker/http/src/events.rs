//! `GET /v1/jobs/{id}/events`: a job's lifecycle as server-sent events, and
//! its tokens as they are generated when it streams. Lifecycle events carry
//! ids (their sequence in `EVENTS`), so a client that reconnects with
//! `Last-Event-ID` misses none; tokens are best effort, and the last event
//! holds the whole result.

use std::time::Duration;

use async_nats::jetstream::Context;
use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use axum::Router;
use axum::extract::{Extension, FromRef, Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::response::sse::Event as SseEvent;
use axum::routing::get;
use futures::channel::mpsc;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use switchyard_core::auth::Caller;
use switchyard_core::shares::Shares;
use switchyard_core::watch::{Event, Watcher};
use switchyard_schemas::{JobEvent, JobResult, Outcome, decode, subjects};
use switchyard_store::Status;
use switchyard_store::view::rfc3339;
use tokio::time::Instant;

use crate::error::ApiError;
use crate::reply::sse;
use crate::state::{ApiState, Records};

/// What the events front reads: the records, the results and the
/// lifecycle stream.
#[derive(Clone)]
struct EventsState {
    records: Records,
    watcher: Watcher,
    js: Context,
    streams: Shares,
    gone: Gone,
}

/// Where the replay consumers of streams whose clients went away are sent
/// to be deleted: at once, rather than after the server's 30 s of
/// inactivity, so that clients that come and go leave nothing behind.
#[derive(Clone)]
pub struct Gone(mpsc::UnboundedSender<String>);

/// A replay consumer, deleted when dropped.
struct Replay {
    name: String,
    gone: Gone,
}

impl Drop for Replay {
    fn drop(&mut self) {
        let _ = self.gone.0.unbounded_send(std::mem::take(&mut self.name));
    }
}

/// The sender of [`Gone`] and the sweeper that deletes what it is sent,
/// until `shutdown`.
pub fn sweeper(
    js: Context,
    shutdown: tokio_util::sync::CancellationToken,
) -> (Gone, impl Future<Output = ()>) {
    let (tx, mut rx) = mpsc::unbounded::<String>();
    let sweep = async move {
        loop {
            let name = tokio::select! {
                () = shutdown.cancelled() => return,
                name = rx.next() => match name {
                    Some(name) => name,
                    None => return,
                },
            };
            if let Err(e) = js
                .delete_consumer_from_stream(&name, subjects::EVENTS_STREAM)
                .await
            {
                // The server deletes it after 30 s without a client anyway.
                tracing::debug!(consumer = %name, error = %e, "replay consumer not deleted");
            }
        }
    };
    (Gone(tx), sweep)
}

impl FromRef<ApiState> for EventsState {
    fn from_ref(s: &ApiState) -> Self {
        EventsState {
            records: Records::from_ref(s),
            watcher: s.calls.watcher().clone(),
            js: s.calls.admitter().js().clone(),
            streams: s.event_streams.clone(),
            gone: s.gone_streams.clone(),
        }
    }
}

pub fn router() -> Router<ApiState> {
    Router::new().route("/v1/jobs/{id}/events", get(events))
}

/// After the result, how long to wait for lifecycle events still on their
/// way, so that the final event comes last.
const SETTLE: Duration = Duration::from_millis(200);

/// Where a reconnecting client left off.
enum Resume {
    /// From the start, with the `queued` event.
    Start,
    /// After the lifecycle event with this sequence.
    After(u64),
    /// It had the final event: only that again.
    End,
}

fn resume(headers: &HeaderMap) -> Resume {
    let last = headers.get("last-event-id").and_then(|v| v.to_str().ok());
    match last {
        Some("end") => Resume::End,
        // The first event the server sent: every lifecycle event after it.
        Some("queued") => Resume::After(0),
        Some(id) => id
            .strip_prefix('e')
            .and_then(|seq| seq.parse().ok())
            .map_or(Resume::Start, Resume::After),
        None => Resume::Start,
    }
}

/// The job's lifecycle (and tokens) as server-sent events, until it ends.
#[utoipa::path(get, path = "/v1/jobs/{id}/events", tag = "jobs",
    params(("id" = String, Path),
           ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event")),
    responses((status = 200, description = "`text/event-stream`", content_type = "text/event-stream"),
              (status = 404, description = "`not_found`", body = Object)))]
async fn events(
    State(s): State<EventsState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let record = s.records.job(&caller, &id).await?;
    // Held while the stream is open; given back when it ends or the
    // client goes.
    let share = s
        .streams
        .take(&record.tenant)
        .ok_or(ApiError::TooManyStreams)?;
    let unavailable = |e: &dyn std::fmt::Display| ApiError::Unavailable(e.to_string());
    // Listening first, then replaying: nothing falls in between.
    let mut watch = s
        .watcher
        .watch(&id, true)
        .await
        .map_err(|e| unavailable(&e))?;
    let resume = resume(&headers);
    let deliver_policy = match resume {
        Resume::Start => DeliverPolicy::All,
        Resume::After(seq) => DeliverPolicy::ByStartSequence {
            start_sequence: seq + 1,
        },
        Resume::End => DeliverPolicy::New,
    };
    let replay =
        s.js.get_stream(subjects::EVENTS_STREAM)
            .await
            .map_err(|e| unavailable(&e))?
            .create_consumer(pull::OrderedConfig {
                filter_subject: subjects::events(&id),
                deliver_policy,
                ..Default::default()
            })
            .await
            .map_err(|e| unavailable(&e))?;
    let consumer = Replay {
        name: replay.cached_info().name.clone(),
        gone: s.gone.clone(),
    };
    let mut lifecycle = replay.messages().await.map_err(|e| unavailable(&e))?;
    let grants = s.watcher.grants().clone();
    let mut result = match record.status.is_final() {
        true => watch.stored().await,
        false => None,
    };

    let (mut tx, rx) = mpsc::channel(64);
    // Runs inside the response: gone with the client.
    let pump = async move {
        let _held = (share, consumer);
        if matches!(resume, Resume::Start) {
            let queued =
                json!({"job_id": id, "status": "queued", "at": rfc3339(record.created_at_ms)});
            let event = SseEvent::default()
                .id("queued")
                .event("queued")
                .data(queued.to_string());
            if tx.send(event).await.is_err() {
                return;
            }
        }
        // Open until the job ends; the client may leave at any time.
        let forever = Instant::now() + Duration::from_secs(365 * 24 * 3600);
        // Tokens travel apart from the result and may come after it: a
        // streamed job's are relayed until its last one, or for `SETTLE`.
        let mut tokens_ended = !watch.streams();
        loop {
            let next = tokio::select! {
                msg = lifecycle.next() => match msg {
                    Some(Ok(msg)) => {
                        let seq = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
                        // A running event a node forged is not shown, even
                        // before the broker deletes it.
                        decode::<JobEvent>(&msg.payload)
                            .ok()
                            .filter(|e| grants.vouches_event(e))
                            .map(|e| lifecycle_event(seq, &e))
                    }
                    // The ordered consumer recovers by itself.
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "job events replay interrupted");
                        None
                    }
                    None => return,
                },
                e = watch.next(forever), if result.is_none() || !tokens_ended => match e {
                    Some(Event::Chunk(c)) => {
                        tokens_ended = c.finish_reason.is_some();
                        let token = json!({"attempt": c.attempt, "seq": c.seq, "delta": c.delta,
                                           "finish_reason": c.finish_reason});
                        Some(SseEvent::default().event("token").data(token.to_string()))
                    }
                    Some(Event::Result(r)) => {
                        result.get_or_insert(r);
                        None
                    }
                    Some(Event::Noise) => None,
                    // The connection to NATS is gone.
                    None => return,
                },
                () = tokio::time::sleep(SETTLE), if result.is_some() => {
                    if let Some(r) = result.take() {
                        let _ = tx.send(final_event(&r)).await;
                    }
                    return;
                }
            };
            if let Some(event) = next
                && tx.send(event).await.is_err()
            {
                return;
            }
        }
    };
    Ok(sse(pump, rx))
}

/// `assigned`, `running`, `retrying` or `requeued`, with the attempt.
fn lifecycle_event(seq: u64, e: &JobEvent) -> SseEvent {
    let mut data = serde_json::to_value(&e.kind).unwrap_or(Value::Null);
    let name = data["event"].as_str().unwrap_or("event").to_owned();
    if let Some(fields) = data.as_object_mut() {
        fields.remove("event");
        fields.insert("job_id".into(), e.job_id.clone().into());
        fields.insert("attempt".into(), e.attempt.into());
        fields.insert("at".into(), rfc3339(e.at_ms).into());
    }
    SseEvent::default()
        .id(format!("e{seq}"))
        .event(name)
        .data(data.to_string())
}

/// The job's end, named by its final status, with its result or error.
fn final_event(r: &JobResult) -> SseEvent {
    let status = Status::of(&r.outcome).as_str();
    let mut data = json!({"job_id": r.job_id, "attempt": r.attempt, "status": status,
                          "at": rfc3339(r.finished_at_ms)});
    match &r.outcome {
        Outcome::Succeeded { output, usage } => {
            data["result"] = output.clone();
            data["usage"] = json!(usage);
        }
        Outcome::Failed { error } => {
            data["error"] = json!({"code": error.class.code(), "message": error.message});
        }
    }
    SseEvent::default()
        .id("end")
        .event(status)
        .data(data.to_string())
}
