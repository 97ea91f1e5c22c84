//! Streamed output, a chunk at a time on `sy.stream.<id>`, stored in the
//! `TOKENS` stream so that a client that reconnects resumes where it left
//! off; those following live get each chunk as it is stored.

use std::collections::VecDeque;

use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::message::PublishMessage;

use super::*;
use switchyard_runtime::grants::{self, Claim};

/// Chunks published and not yet confirmed, at most: enough for the engine's
/// pace, without waiting a round trip per token.
const IN_FLIGHT: usize = 256;
/// Publishes of one chunk before it is given up (the whole output is still
/// in the job's result).
const TRIES: u32 = 3;

/// Publishes a streamed attempt's text on `sy.stream.<job id>`, in order,
/// as the engine produces it.
pub(super) struct Chunks {
    sink: TokenSink,
    forwarder: tokio::task::JoinHandle<u32>,
    js: Context,
    origin: Arc<Origin>,
}

/// What every chunk of one attempt says of where it comes from.
struct Origin {
    job_id: String,
    attempt: u32,
    node: String,
    /// Derived from the attempt's grant: readers keep only chunks of the
    /// node the attempt was assigned to.
    proof: String,
}

impl Chunks {
    pub(super) fn start(tasks: &TaskTracker, js: Context, a: &Assignment) -> Chunks {
        let origin = Arc::new(Origin {
            job_id: a.job.id.clone(),
            attempt: a.job.attempt,
            node: a.node.clone(),
            proof: grants::prove(&a.grant, Claim::Chunk),
        });
        let (sink, mut pieces) = tokio::sync::mpsc::unbounded_channel::<String>();
        let forwarder = {
            let (js, origin) = (js.clone(), origin.clone());
            tasks.spawn(async move {
                let mut seq = 0;
                let mut pending = VecDeque::new();
                while let Some(delta) = pieces.recv().await {
                    pending.extend(send(&js, &origin, seq, delta, None).await);
                    seq += 1;
                    if pending.len() >= IN_FLIGHT
                        && let Some(sent) = pending.pop_front()
                    {
                        confirm(&js, sent).await;
                    }
                }
                for sent in pending {
                    confirm(&js, sent).await;
                }
                seq
            })
        };
        Chunks {
            sink,
            forwarder,
            js,
            origin,
        }
    }

    pub(super) fn sink(&self) -> &TokenSink {
        &self.sink
    }

    /// Sends what is left, then the last chunk with `finish_reason`, each
    /// stored before this returns (and so before the result); how many
    /// pieces (each a token as engines stream them) were sent.
    pub(super) async fn finish(self, finish_reason: &str) -> u32 {
        drop(self.sink);
        let seq = self.forwarder.await.unwrap_or(0);
        let reason = Some(finish_reason.to_owned());
        if let Some(sent) = send(&self.js, &self.origin, seq, String::new(), reason).await {
            confirm(&self.js, sent).await;
        }
        seq
    }
}

/// A chunk on its way: what to publish again if the server does not
/// confirm it.
struct Sent {
    subject: String,
    msg_id: String,
    bytes: bytes::Bytes,
    ack: PublishAckFuture,
}

async fn send(
    js: &Context,
    origin: &Origin,
    seq: u32,
    delta: String,
    finish_reason: Option<String>,
) -> Option<Sent> {
    let chunk = StreamChunk {
        v: SCHEMA_VERSION,
        job_id: origin.job_id.clone(),
        attempt: origin.attempt,
        seq,
        delta,
        finish_reason,
        node: origin.node.clone(),
        proof: Some(origin.proof.clone()),
    };
    let bytes: bytes::Bytes = match encode(&chunk) {
        Ok(bytes) => bytes.into(),
        Err(e) => {
            warn!(error = %e, "stream chunk not encoded");
            return None;
        }
    };
    let subject = subjects::stream(&origin.job_id);
    // The same id for every try: the server keeps one copy.
    let msg_id = format!("{}:{}:{seq}", origin.job_id, origin.attempt);
    match publish(js, &subject, &msg_id, bytes.clone()).await {
        Ok(ack) => Some(Sent {
            subject,
            msg_id,
            bytes,
            ack,
        }),
        Err(e) => {
            warn!(error = %e, "stream chunk not sent");
            None
        }
    }
}

async fn publish(
    js: &Context,
    subject: &str,
    msg_id: &str,
    bytes: bytes::Bytes,
) -> Result<PublishAckFuture, async_nats::jetstream::context::PublishError> {
    let message = PublishMessage::build().payload(bytes).message_id(msg_id);
    js.send_publish(subject.to_owned(), message).await
}

/// Waits for the server to store `sent`, publishing it again if it says it
/// did not; a chunk still unconfirmed after that is left to the result.
async fn confirm(js: &Context, sent: Sent) {
    let mut ack = sent.ack;
    for tried in 1..=TRIES {
        match ack.await {
            Ok(_) => return,
            Err(e) if tried == TRIES => {
                warn!(error = %e, msg_id = %sent.msg_id, "stream chunk not stored");
                return;
            }
            Err(_) => match publish(js, &sent.subject, &sent.msg_id, sent.bytes.clone()).await {
                Ok(again) => ack = again,
                Err(e) => {
                    warn!(error = %e, msg_id = %sent.msg_id, "stream chunk not stored");
                    return;
                }
            },
        }
    }
}
