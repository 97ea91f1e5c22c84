//! Resuming the OpenAI front's stream: `GET /v1/chat/completions/{id}/stream`
//! (and `/v1/completions/{id}/stream`) replays a streamed job's chunks from
//! `TOKENS`, after the `Last-Event-ID` the client last read, then ends it
//! as the first stream would have. The broker that held the first stream
//! is told, so the job is not cancelled for its client having gone.

use std::time::Duration;

use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use axum::Router;
use axum::extract::{Extension, FromRef, Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::get;
use futures::StreamExt;
use futures::channel::mpsc;
use switchyard_core::auth::Caller;
use switchyard_core::calls::Calls;
use switchyard_core::watch::{Event, Watch};
use switchyard_runtime::grants::Grants;
use switchyard_schemas::{JobResult, StreamChunk, decode, subjects};
use tokio::time::Instant;

use crate::error::ApiError;
use crate::events::{EventsState, SETTLE, replay};
use crate::openai::{Feed, Relay};
use crate::reply::sse;
use crate::state::ApiState;

#[derive(Clone)]
struct ResumeState {
    events: EventsState,
    calls: Calls,
}

impl FromRef<ApiState> for ResumeState {
    fn from_ref(s: &ApiState) -> Self {
        ResumeState {
            events: EventsState::from_ref(s),
            calls: s.calls.clone(),
        }
    }
}

pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/v1/chat/completions/{id}/stream", get(chat))
        .route("/v1/completions/{id}/stream", get(completion))
}

/// Resumes a streamed chat completion.
#[utoipa::path(get, path = "/v1/chat/completions/{id}/stream", tag = "openai",
    params(("id" = String, Path, description = "The job's id, or the chunks' `chatcmpl-…` id"),
           ("Last-Event-ID" = Option<String>, Header, description = "Resume after this chunk (`a<attempt>.s<seq>`); from the start without it")),
    responses((status = 200, description = "The rest of the chunks as `text/event-stream`", content_type = "text/event-stream"),
              (status = 404, description = "`not_found`", body = Object)))]
async fn chat(
    State(s): State<ResumeState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    resume(s, &caller, &id, &headers, true).await
}

/// Resumes a streamed completion.
#[utoipa::path(get, path = "/v1/completions/{id}/stream", tag = "openai",
    params(("id" = String, Path, description = "The job's id, or the chunks' `cmpl-…` id"),
           ("Last-Event-ID" = Option<String>, Header, description = "Resume after this chunk (`a<attempt>.s<seq>`); from the start without it")),
    responses((status = 200, description = "The rest of the chunks as `text/event-stream`", content_type = "text/event-stream"),
              (status = 404, description = "`not_found`", body = Object)))]
async fn completion(
    State(s): State<ResumeState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    resume(s, &caller, &id, &headers, false).await
}

/// A chunk's event id, `a<attempt>.s<seq>`.
fn parse_after(headers: &HeaderMap) -> Result<Option<(u32, u32)>, ApiError> {
    let Some(last) = headers.get("last-event-id") else {
        return Ok(None);
    };
    let bad = || ApiError::BadLastEventId;
    let (attempt, seq) = last
        .to_str()
        .ok()
        .and_then(|l| l.strip_prefix('a')?.split_once(".s"))
        .ok_or_else(bad)?;
    Ok(Some((
        attempt.parse().map_err(|_| bad())?,
        seq.parse().map_err(|_| bad())?,
    )))
}

async fn resume(
    ResumeState { events: s, calls }: ResumeState,
    caller: &Caller,
    id: &str,
    headers: &HeaderMap,
    chat: bool,
) -> Result<Response, ApiError> {
    let after = parse_after(headers)?;
    let prefix = if chat { "chatcmpl-" } else { "cmpl-" };
    let id = id.strip_prefix(prefix).unwrap_or(id).to_owned();
    let record = s.records.job(caller, &id).await?;
    let share = s
        .streams
        .take(&record.tenant)
        .ok_or(ApiError::TooManyStreams)?;
    let unavailable = |e: &dyn std::fmt::Display| ApiError::Unavailable(e.to_string());
    calls.resume(&id).await.map_err(|e| unavailable(&e))?;
    // Listening first, then replaying: nothing falls in between.
    let watch = s
        .watcher
        .watch(&id, false)
        .await
        .map_err(|e| unavailable(&e))?;
    let (held, tokens) = replay(
        &s,
        subjects::TOKENS_STREAM,
        subjects::stream(&id),
        DeliverPolicy::All,
    )
    .await?;
    let result = match record.status.is_final() {
        true => watch.stored().await,
        false => None,
    };
    let relay = Relay {
        chat,
        id,
        model: record.model.clone(),
        created: record.created_at_ms / 1000,
        include_usage: false,
    };
    let mut feed = Stored {
        tokens,
        watch,
        result,
        grants: s.watcher.grants().clone(),
    };
    let (tx, rx) = mpsc::channel(64);
    // Runs inside the response: gone with the client.
    let pump = async move {
        let _held = (share, held);
        relay.run(&mut feed, tx, after).await;
    };
    Ok(sse(pump, rx))
}

/// A job's stored chunks, then its result.
struct Stored {
    tokens: pull::Ordered,
    watch: Watch,
    result: Option<JobResult>,
    grants: Grants,
}

impl Stored {
    fn chunk(&self, payload: &[u8]) -> Event {
        match decode::<StreamChunk>(payload) {
            Ok(c) if self.grants.vouches_chunk(&c) => Event::Chunk(c),
            _ => Event::Noise,
        }
    }
}

impl Feed for Stored {
    /// Chunks while they come; the result once it is known and no chunk
    /// has come for `SETTLE` (a chunk the replay has not reached yet is in
    /// the result anyway).
    async fn next(&mut self) -> Option<Event> {
        let forever = Instant::now() + Duration::from_secs(365 * 24 * 3600);
        loop {
            if self.result.is_some() {
                return match tokio::time::timeout(SETTLE, self.tokens.next()).await {
                    Ok(Some(Ok(msg))) => Some(self.chunk(&msg.payload)),
                    Ok(Some(Err(_))) => Some(Event::Noise),
                    _ => self.result.take().map(Event::Result),
                };
            }
            tokio::select! {
                msg = self.tokens.next() => match msg {
                    Some(Ok(msg)) => return Some(self.chunk(&msg.payload)),
                    // The ordered consumer recovers by itself.
                    Some(Err(e)) => tracing::warn!(error = %e, "job tokens replay interrupted"),
                    None => return None,
                },
                r = self.watch.result(forever) => match r {
                    Some(r) => self.result = Some(r),
                    // The connection to NATS is gone.
                    None => return None,
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_event_id_names_a_chunk() {
        let with = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert("last-event-id", v.parse().unwrap());
            parse_after(&h)
        };
        assert_eq!(parse_after(&HeaderMap::new()).unwrap(), None);
        assert_eq!(with("a1.s19").unwrap(), Some((1, 19)));
        assert!(with("e3.t4.a1").is_err());
        assert!(with("a1.sx").is_err());
    }
}
