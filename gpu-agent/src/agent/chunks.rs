//! Streamed output, relayed a chunk at a time on `sy.stream.<id>`.

use super::*;
use switchyard_runtime::grants::{self, Claim};

/// Publishes a streamed attempt's text on `sy.stream.<job id>`, in order,
/// as the engine produces it.
pub(super) struct Chunks {
    sink: TokenSink,
    forwarder: tokio::task::JoinHandle<u32>,
    client: async_nats::Client,
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
    pub(super) fn start(tasks: &TaskTracker, client: async_nats::Client, a: &Assignment) -> Chunks {
        let origin = Arc::new(Origin {
            job_id: a.job.id.clone(),
            attempt: a.job.attempt,
            node: a.node.clone(),
            proof: grants::prove(&a.grant, Claim::Chunk),
        });
        let (sink, mut pieces) = tokio::sync::mpsc::unbounded_channel::<String>();
        let forwarder = {
            let (client, origin) = (client.clone(), origin.clone());
            tasks.spawn(async move {
                let mut seq = 0;
                while let Some(delta) = pieces.recv().await {
                    publish_chunk(&client, &origin, seq, delta, None).await;
                    seq += 1;
                }
                seq
            })
        };
        Chunks {
            sink,
            forwarder,
            client,
            origin,
        }
    }

    pub(super) fn sink(&self) -> &TokenSink {
        &self.sink
    }

    /// Sends what is left, then the last chunk with `finish_reason`; how
    /// many pieces (each a token as engines stream them) were sent.
    pub(super) async fn finish(self, finish_reason: &str) -> u32 {
        drop(self.sink);
        let seq = self.forwarder.await.unwrap_or(0);
        let reason = Some(finish_reason.to_owned());
        publish_chunk(&self.client, &self.origin, seq, String::new(), reason).await;
        seq
    }
}

async fn publish_chunk(
    client: &async_nats::Client,
    origin: &Origin,
    seq: u32,
    delta: String,
    finish_reason: Option<String>,
) {
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
    // Best effort by design: the whole output is in the job's result.
    match encode(&chunk) {
        Ok(bytes) => {
            let subject = subjects::stream(&origin.job_id);
            if let Err(e) = client.publish(subject, bytes.into()).await {
                warn!(error = %e, "stream chunk not sent");
            }
        }
        Err(e) => warn!(error = %e, "stream chunk not encoded"),
    }
}
