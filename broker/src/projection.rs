//! Keeps the job store in step with the streams: lifecycle events, results and
//! usage are written in batches, one transaction each, and acknowledged only
//! after the commit. Every write is idempotent, so redelivery is harmless.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::{AckKind, Message};
use futures::StreamExt;
use serde::de::DeserializeOwned;
use switchyard_schemas::{Versioned, decode};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::metrics as m;
use switchyard_store::JobStore;

/// Follows one stream until `shutdown`, applying each batch with `apply`.
pub async fn follow<T, F, Fut, E>(
    stream_name: &'static str,
    consumer: PullConsumer,
    batch: usize,
    store: Arc<dyn JobStore>,
    apply: F,
    shutdown: CancellationToken,
) where
    T: DeserializeOwned + Versioned,
    F: Fn(Arc<dyn JobStore>, Vec<T>) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let messages = loop {
        match consumer
            .stream()
            .max_messages_per_batch(batch)
            .messages()
            .await
        {
            Ok(m) => break m,
            Err(e) => {
                warn!(stream = stream_name, error = %e, "cannot follow stream; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    };
    let mut chunks = messages.ready_chunks(batch);
    loop {
        let chunk = tokio::select! {
            () = shutdown.cancelled() => return,
            chunk = chunks.next() => match chunk {
                Some(chunk) => chunk,
                None => return,
            },
        };
        let mut items = Vec::with_capacity(chunk.len());
        let mut msgs: Vec<Message> = Vec::with_capacity(chunk.len());
        for msg in chunk {
            let msg = match msg {
                Ok(msg) => msg,
                Err(e) => {
                    warn!(stream = stream_name, error = %e, "stream read failed");
                    continue;
                }
            };
            match decode::<T>(&msg.payload) {
                Ok(item) => {
                    items.push(item);
                    msgs.push(msg);
                }
                Err(e) => {
                    // A forged or corrupt message must not block the ones after it.
                    warn!(stream = stream_name, subject = %msg.subject, error = %e, "undecodable message terminated");
                    let _ = msg.ack_with(AckKind::Term).await;
                }
            }
        }
        if items.is_empty() {
            continue;
        }
        let n = items.len();
        let kind = match apply(store.clone(), items).await {
            Ok(()) => {
                metrics::counter!(m::PROJECTED, "stream" => stream_name).increment(n as u64);
                AckKind::Ack
            }
            Err(e) => {
                warn!(stream = stream_name, error = %e, "store write failed; batch will be redelivered");
                AckKind::Nak(Some(Duration::from_secs(1)))
            }
        };
        futures::future::join_all(msgs.iter().map(|msg| msg.ack_with(kind))).await;
    }
}
