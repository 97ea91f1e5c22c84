//! `GET /v1/jobs/{id}/events`: a job's lifecycle as server-sent events, and
//! its tokens as they are generated when it streams. Every event's id holds
//! where the client is in both `EVENTS` and `TOKENS`, so a client that
//! reconnects with `Last-Event-ID` misses no event and no token and gets
//! none twice (tokens are kept `nats.token_retention`); the last event holds
//! the whole result.

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
use switchyard_core::watch::Watcher;
use switchyard_schemas::{JobEvent, JobResult, Outcome, StreamChunk, decode, subjects};
use switchyard_store::Status;
use switchyard_store::view::rfc3339;
use tokio::time::Instant;

use crate::error::ApiError;
use crate::reply::sse;
use crate::state::{ApiState, Records};

/// What the events front reads: the records, the results and the
/// lifecycle stream.
#[derive(Clone)]
pub(crate) struct EventsState {
    pub records: Records,
    pub watcher: Watcher,
    js: Context,
    pub streams: Shares,
    gone: Gone,
}

/// Where the replay consumers of streams whose clients went away are sent
/// (stream, consumer) to be deleted: at once, rather than after the
/// server's 30 s of inactivity, so that clients that come and go leave
/// nothing behind.
#[derive(Clone)]
pub struct Gone(mpsc::UnboundedSender<(&'static str, String)>);

/// A replay consumer, deleted when dropped.
pub(crate) struct Replay {
    stream: &'static str,
    name: String,
    gone: Gone,
}

impl Drop for Replay {
    fn drop(&mut self) {
        let name = std::mem::take(&mut self.name);
        let _ = self.gone.0.unbounded_send((self.stream, name));
    }
}

/// The sender of [`Gone`] and the sweeper that deletes what it is sent,
/// until `shutdown`.
pub fn sweeper(
    js: Context,
    shutdown: tokio_util::sync::CancellationToken,
) -> (Gone, impl Future<Output = ()>) {
    let (tx, mut rx) = mpsc::unbounded::<(&'static str, String)>();
    let sweep = async move {
        loop {
            let (stream, name) = tokio::select! {
                () = shutdown.cancelled() => return,
                gone = rx.next() => match gone {
                    Some(gone) => gone,
                    None => return,
                },
            };
            if let Err(e) = js.delete_consumer_from_stream(&name, stream).await {
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
pub(crate) const SETTLE: Duration = Duration::from_millis(200);

/// Where a reconnecting client left off.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Resume {
    /// From the start, with the `queued` event.
    Start,
    /// After these sequences of the lifecycle and token streams.
    After(Position),
    /// It had the final event: only that again.
    End,
}

/// The last lifecycle event and token a client was sent: their sequences
/// in `EVENTS` and `TOKENS`, and the attempt that token was of (0: none
/// yet). Each event's id, `e<event>.t<token>.a<attempt>`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Position {
    event: u64,
    token: u64,
    attempt: u32,
}

impl Position {
    fn id(self) -> String {
        format!("e{}.t{}.a{}", self.event, self.token, self.attempt)
    }

    fn parse(id: &str) -> Option<Position> {
        let (event, rest) = id.strip_prefix('e')?.split_once(".t")?;
        let (token, attempt) = rest.split_once(".a")?;
        Some(Position {
            event: event.parse().ok()?,
            token: token.parse().ok()?,
            attempt: attempt.parse().ok()?,
        })
    }

    /// The events a token of `c` (at sequence `seq` in `TOKENS`) makes. A
    /// retried job's next attempt generates its text again from the start:
    /// the client is told so with a `restart` event before that attempt's
    /// first token, and a token of an attempt already left behind is not
    /// sent.
    fn relay(&mut self, seq: u64, c: &StreamChunk) -> Vec<SseEvent> {
        self.token = seq;
        let shown = self.attempt;
        if c.attempt < shown {
            return Vec::new();
        }
        self.attempt = c.attempt;
        let mut out = Vec::new();
        if shown != 0 && c.attempt > shown {
            let restart = json!({"attempt": c.attempt, "after_attempt": shown});
            out.push(
                SseEvent::default()
                    .id(self.id())
                    .event("restart")
                    .data(restart.to_string()),
            );
        }
        let token = json!({"attempt": c.attempt, "seq": c.seq, "delta": c.delta,
                           "finish_reason": c.finish_reason});
        out.push(
            SseEvent::default()
                .id(self.id())
                .event("token")
                .data(token.to_string()),
        );
        out
    }
}

fn resume(headers: &HeaderMap) -> Resume {
    let last = headers.get("last-event-id").and_then(|v| v.to_str().ok());
    match last {
        Some("end") => Resume::End,
        // The first event the server sent: everything after it.
        Some("queued") => Resume::After(Position::default()),
        Some(id) => Position::parse(id).map_or(Resume::Start, Resume::After),
        None => Resume::Start,
    }
}

/// Where a replay of `stream` starts, filtered to `subject`.
pub(crate) async fn replay(
    s: &EventsState,
    stream: &'static str,
    subject: String,
    deliver_policy: DeliverPolicy,
) -> Result<(Replay, pull::Ordered), ApiError> {
    let unavailable = |e: &dyn std::fmt::Display| ApiError::Unavailable(e.to_string());
    let consumer =
        s.js.get_stream(stream)
            .await
            .map_err(|e| unavailable(&e))?
            .create_consumer(pull::OrderedConfig {
                filter_subject: subject,
                deliver_policy,
                ..Default::default()
            })
            .await
            .map_err(|e| unavailable(&e))?;
    let held = Replay {
        stream,
        name: consumer.cached_info().name.clone(),
        gone: s.gone.clone(),
    };
    let messages = consumer.messages().await.map_err(|e| unavailable(&e))?;
    Ok((held, messages))
}

/// Where a replay starts to give what comes after `seen` (a sequence).
fn after(resume: Resume, seen: impl Fn(Position) -> u64) -> DeliverPolicy {
    match resume {
        Resume::Start => DeliverPolicy::All,
        Resume::After(p) => DeliverPolicy::ByStartSequence {
            start_sequence: seen(p) + 1,
        },
        Resume::End => DeliverPolicy::New,
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
    // Listening first, then replaying: nothing falls in between.
    let mut watch = s
        .watcher
        .watch(&id, false)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    let resume = resume(&headers);
    let (events_held, mut lifecycle) = replay(
        &s,
        subjects::EVENTS_STREAM,
        subjects::events(&id),
        after(resume, |p| p.event),
    )
    .await?;
    let (tokens_held, mut tokens) = replay(
        &s,
        subjects::TOKENS_STREAM,
        subjects::stream(&id),
        after(resume, |p| p.token),
    )
    .await?;
    let grants = s.watcher.grants().clone();
    let mut result = match record.status.is_final() {
        true => watch.stored().await,
        false => None,
    };

    let (mut tx, rx) = mpsc::channel(64);
    // Runs inside the response: gone with the client.
    let pump = async move {
        let _held = (share, events_held, tokens_held);
        let mut at = match resume {
            Resume::After(p) => p,
            Resume::Start | Resume::End => Position::default(),
        };
        if resume == Resume::Start {
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
        // Tokens are stored apart from the result and may come after it: a
        // streamed job's are relayed until its last one, or for `SETTLE`.
        let mut tokens_ended = false;
        loop {
            let next: Vec<SseEvent> = tokio::select! {
                msg = lifecycle.next() => match msg {
                    Some(Ok(msg)) => {
                        at.event = msg.info().map_or(at.event, |i| i.stream_sequence);
                        // A running event a node forged is not shown, even
                        // before the broker deletes it.
                        decode::<JobEvent>(&msg.payload)
                            .ok()
                            .filter(|e| grants.vouches_event(e))
                            .map(|e| lifecycle_event(at, &e))
                            .into_iter()
                            .collect()
                    }
                    // The ordered consumer recovers by itself.
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "job events replay interrupted");
                        Vec::new()
                    }
                    None => return,
                },
                msg = tokens.next(), if !tokens_ended => match msg {
                    Some(Ok(msg)) => {
                        let seq = msg.info().map_or(at.token, |i| i.stream_sequence);
                        match decode::<StreamChunk>(&msg.payload) {
                            Ok(c) if grants.vouches_chunk(&c) => {
                                let sent = at.relay(seq, &c);
                                // An attempt that failed ends its tokens
                                // with `error`; a retry's may follow.
                                tokens_ended = c.attempt == at.attempt
                                    && c.finish_reason.as_deref().is_some_and(|r| r != "error");
                                sent
                            }
                            // Skipped, and not replayed on a reconnect.
                            _ => {
                                at.token = seq;
                                Vec::new()
                            }
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "job tokens replay interrupted");
                        Vec::new()
                    }
                    None => return,
                },
                r = watch.result(forever), if result.is_none() => match r {
                    Some(r) => {
                        result = Some(r);
                        Vec::new()
                    }
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
            for event in next {
                if tx.send(event).await.is_err() {
                    return;
                }
            }
        }
    };
    Ok(sse(pump, rx))
}

/// `assigned`, `running`, `retrying` or `requeued`, with the attempt.
fn lifecycle_event(at: Position, e: &JobEvent) -> SseEvent {
    let mut data = serde_json::to_value(&e.kind).unwrap_or(Value::Null);
    let name = data["event"].as_str().unwrap_or("event").to_owned();
    if let Some(fields) = data.as_object_mut() {
        fields.remove("event");
        fields.insert("job_id".into(), e.job_id.clone().into());
        fields.insert("attempt".into(), e.attempt.into());
        fields.insert("at".into(), rfc3339(e.at_ms).into());
    }
    SseEvent::default()
        .id(at.id())
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
