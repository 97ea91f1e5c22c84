//! Streamed output, relayed a chunk at a time on `sy.stream.<id>`.

use super::*;

/// Publishes a streamed attempt's text on `sy.stream.<job id>`, in order,
/// as the engine produces it.
pub(super) struct Chunks {
    sink: TokenSink,
    forwarder: tokio::task::JoinHandle<u32>,
    client: async_nats::Client,
    job_id: String,
    attempt: u32,
}

impl Chunks {
    pub(super) fn start(
        tasks: &TaskTracker,
        client: async_nats::Client,
        job_id: &str,
        attempt: u32,
    ) -> Chunks {
        let (sink, mut pieces) = tokio::sync::mpsc::unbounded_channel::<String>();
        let forwarder = {
            let (client, job_id) = (client.clone(), job_id.to_owned());
            tasks.spawn(async move {
                let mut seq = 0;
                while let Some(delta) = pieces.recv().await {
                    publish_chunk(&client, &job_id, attempt, seq, delta, None).await;
                    seq += 1;
                }
                seq
            })
        };
        Chunks {
            sink,
            forwarder,
            client,
            job_id: job_id.to_owned(),
            attempt,
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
        publish_chunk(
            &self.client,
            &self.job_id,
            self.attempt,
            seq,
            String::new(),
            reason,
        )
        .await;
        seq
    }
}

pub(super) async fn publish_chunk(
    client: &async_nats::Client,
    job_id: &str,
    attempt: u32,
    seq: u32,
    delta: String,
    finish_reason: Option<String>,
) {
    let chunk = StreamChunk {
        v: SCHEMA_VERSION,
        job_id: job_id.to_owned(),
        attempt,
        seq,
        delta,
        finish_reason,
    };
    // Best effort by design: the whole output is in the job's result.
    match encode(&chunk) {
        Ok(bytes) => {
            if let Err(e) = client.publish(subjects::stream(job_id), bytes.into()).await {
                warn!(error = %e, "stream chunk not sent");
            }
        }
        Err(e) => warn!(error = %e, "stream chunk not encoded"),
    }
}
