//! Cold models: when jobs wait for a model that no node serves, the
//! dispatcher asks a node that holds it (it lists the model as loadable) to
//! load it. The jobs wait in their queue meanwhile and are placed once a
//! heartbeat shows the model loaded.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use switchyard_schemas::{
    CodecError, LoadReply, LoadRequest, SCHEMA_VERSION, decode, encode, subjects,
};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::{Cluster, metrics as m};

/// After a load, the time its heartbeat takes to arrive; after a refusal,
/// the wait before the next node is asked.
const AFTER_LOADED: Duration = Duration::from_secs(2);
const AFTER_FAILED: Duration = Duration::from_secs(10);

pub struct Loads {
    client: async_nats::Client,
    timeout: Duration,
    /// When each model may be asked for again: one load at a time per model.
    not_before: Arc<Mutex<HashMap<String, Instant>>>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

#[derive(Debug, thiserror::Error)]
enum LoadFailed {
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("no answer: {0}")]
    Request(#[from] async_nats::RequestError),
    #[error("{0}")]
    Refused(String),
}

impl Loads {
    pub fn new(
        client: async_nats::Client,
        timeout: Duration,
        tasks: TaskTracker,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            client,
            timeout,
            not_before: Arc::default(),
            tasks,
            shutdown,
        }
    }

    /// Jobs for `model` wait and no node has room for them: if no node
    /// serves it at all, ask one that can load it.
    pub fn ask(&self, cluster: &Cluster, model: &str, now: Instant) {
        if cluster.serves(model, now) {
            return;
        }
        let mut not_before = self
            .not_before
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if not_before.get(model).is_some_and(|t| *t > now) {
            return;
        }
        let Some(node) = cluster.loader_for(model, now) else {
            return;
        };
        not_before.insert(model.to_owned(), now + self.timeout);
        drop(not_before);
        info!(%model, %node, "asking a node to load a model no node serves");
        let (client, timeout, shutdown) =
            (self.client.clone(), self.timeout, self.shutdown.clone());
        let not_before = self.not_before.clone();
        let model = model.to_owned();
        self.tasks.spawn(async move {
            let asked = request(&client, &node, &model, timeout);
            let outcome = tokio::select! {
                () = shutdown.cancelled() => return,
                r = asked => r,
            };
            let (label, again) = match outcome {
                Ok(()) => {
                    info!(%model, %node, "model loaded");
                    ("loaded", AFTER_LOADED)
                }
                Err(LoadFailed::Request(e))
                    if e.kind() == async_nats::RequestErrorKind::TimedOut =>
                {
                    warn!(%model, %node, "model load timed out");
                    ("timed_out", Duration::ZERO)
                }
                Err(e) => {
                    warn!(%model, %node, error = %e, "model load failed");
                    ("failed", AFTER_FAILED)
                }
            };
            metrics::counter!(m::MODEL_LOADS, "outcome" => label).increment(1);
            not_before
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(model, Instant::now() + again);
        });
    }
}

async fn request(
    client: &async_nats::Client,
    node: &str,
    model: &str,
    timeout: Duration,
) -> Result<(), LoadFailed> {
    let body = encode(&LoadRequest {
        v: SCHEMA_VERSION,
        model: model.to_owned(),
    })?;
    let request = async_nats::Request::new()
        .payload(body.into())
        .timeout(Some(timeout));
    let answer = client.send_request(subjects::load(node), request).await?;
    let reply: LoadReply = decode(&answer.payload)?;
    match reply.error {
        None => Ok(()),
        Some(e) => Err(LoadFailed::Refused(e)),
    }
}
