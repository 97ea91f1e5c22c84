//! Waiting for a job's result, for clients that wait on the HTTP call. The
//! subscription is taken before the job is queued, so a fast result is not
//! missed; the stored result is read now and then too, in case a plain
//! NATS message was lost in a reconnect.

use std::time::Duration;

use async_nats::jetstream::object_store::ObjectStore;
use async_nats::jetstream::stream::Stream;
use futures::StreamExt;
use switchyard_runtime::attempts::{self, StoredResult};
use switchyard_runtime::grants::Grants;
use switchyard_runtime::large::{self, LargeError};
use switchyard_schemas::{JobResult, StreamChunk, decode, subjects};
use tokio::time::Instant;
use tracing::warn;

/// How often the stored result is read while waiting.
const RECHECK: Duration = Duration::from_secs(2);

/// Starts watches: what a watch reads from.
#[derive(Clone)]
pub struct Watcher {
    client: async_nats::Client,
    /// The `RESULTS` stream, where a result is stored.
    results: Stream,
    /// Outputs too large for a result message.
    large: ObjectStore,
    /// A result no assignment vouches for is not the job's.
    grants: Grants,
}

impl Watcher {
    pub fn new(
        client: async_nats::Client,
        results: Stream,
        large: ObjectStore,
        grants: Grants,
    ) -> Watcher {
        Watcher {
            client,
            results,
            large,
            grants,
        }
    }

    /// The key that tells what a node says of its own work from a forgery.
    pub fn grants(&self) -> &Grants {
        &self.grants
    }

    /// Starts listening for job `id`; with `stream`, for its chunks too.
    pub async fn watch(&self, id: &str, stream: bool) -> Result<Watch, async_nats::SubscribeError> {
        let results = self.client.subscribe(subjects::results(id)).await?;
        let chunks = match stream {
            true => Some(self.client.subscribe(subjects::stream(id)).await?),
            false => None,
        };
        Ok(Watch {
            results,
            chunks,
            stored: Stored {
                id: id.to_owned(),
                stream: self.results.clone(),
                grants: self.grants.clone(),
            },
            large: self.large.clone(),
        })
    }
}

/// One job's result, and optionally its streamed output, being awaited.
pub struct Watch {
    results: async_nats::Subscriber,
    chunks: Option<async_nats::Subscriber>,
    stored: Stored,
    large: ObjectStore,
}

/// Where a job's result is stored.
struct Stored {
    id: String,
    stream: Stream,
    /// A result no assignment vouches for is not the job's.
    grants: Grants,
}

impl Stored {
    /// The stored result, if an assignment vouches for it.
    async fn read(&self) -> Option<JobResult> {
        match attempts::read_result(&self.stream, &self.grants, &self.id).await {
            StoredResult::Vouched(result, _) => Some(*result),
            StoredResult::None | StoredResult::Forged => None,
        }
    }
}

impl Watch {
    /// The job's result, or `None` if it has none by `deadline`.
    pub async fn result(&mut self, deadline: Instant) -> Option<JobResult> {
        let result = first_result(&mut self.results, &self.stored, deadline).await;
        whole(&self.large, result).await
    }

    /// The job's result if it is stored already.
    pub async fn stored(&self) -> Option<JobResult> {
        whole(&self.large, self.stored.read().await).await
    }

    /// Whether it follows the job's streamed output.
    pub fn streams(&self) -> bool {
        self.chunks.is_some()
    }

    /// The next piece of streamed output, or the result if it comes first.
    pub async fn next(&mut self, deadline: Instant) -> Option<Event> {
        let Some(chunks) = &mut self.chunks else {
            return self.result(deadline).await.map(Event::Result);
        };
        // The node sends its chunks before its result, and they come in
        // that order: the chunks waiting are taken first, so none is left
        // behind when the result arrives with them.
        tokio::select! {
            biased;
            Some(msg) = chunks.next() => match decode::<StreamChunk>(&msg.payload) {
                Ok(chunk) if self.stored.grants.vouches_chunk(&chunk) => Some(Event::Chunk(chunk)),
                _ => Some(Event::Noise),
            },
            result = first_result(&mut self.results, &self.stored, deadline) => {
                whole(&self.large, result).await.map(Event::Result)
            }
        }
    }
}

/// The first result an assignment vouches for.
async fn first_result(
    results: &mut async_nats::Subscriber,
    stored: &Stored,
    deadline: Instant,
) -> Option<JobResult> {
    loop {
        let recheck = (Instant::now() + RECHECK).min(deadline);
        tokio::select! {
        msg = results.next() => match msg.map(|m| decode::<JobResult>(&m.payload)) {
            Some(Ok(result)) if stored.grants.vouches_result(&result) => return Some(result),
            Some(_) => continue,
            None => return None,
        },
        () = tokio::time::sleep_until(recheck) => {
            if let Some(result) = stored.read().await {
                    return Some(result);
                }
                if recheck >= deadline {
                    return None;
                }
            }
        }
    }
}

/// The result with an output stored apart put back in place. One that can
/// no longer be read is answered as a failure of the job's record.
async fn whole(large: &ObjectStore, result: Option<JobResult>) -> Option<JobResult> {
    let mut result = result?;
    if let Err(e) = large::resolve(large, &mut result).await {
        warn!(job_id = %result.job_id, error = %e, "cannot read a large output");
        result.outcome = switchyard_schemas::Outcome::Failed {
            error: switchyard_schemas::JobError::new(
                switchyard_schemas::ErrorClass::Internal,
                match e {
                    LargeError::Gone(_) => "the output is no longer kept",
                    _ => "the output could not be read; try GET /v1/jobs/{id}",
                },
            ),
        };
    }
    Some(result)
}

/// What a streaming watch sees next.
pub enum Event {
    Chunk(StreamChunk),
    Result(JobResult),
    /// A message that could not be read, or that no assignment vouches
    /// for; ignored.
    Noise,
}
