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

/// After a load, the time its heartbeat takes to arrive.
const AFTER_LOADED: Duration = Duration::from_secs(2);
/// A node that failed to load a model is not asked for it again for this
/// long; other nodes are asked meanwhile.
const AFTER_FAILED: Duration = Duration::from_secs(60);

pub struct Loads {
    client: async_nats::Client,
    timeout: Duration,
    asked: Arc<Mutex<Asked>>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

/// What was asked of whom.
#[derive(Default)]
struct Asked {
    /// When each model may be asked for again: one load at a time per model.
    not_before: HashMap<String, Instant>,
    /// Nodes that failed to load a model, until when they are not asked again.
    failed: HashMap<(String, String), Instant>,
}

impl Asked {
    fn done(&mut self, model: String, node: String, loaded: bool) {
        let now = Instant::now();
        if loaded {
            self.not_before.insert(model, now + AFTER_LOADED);
        } else {
            self.not_before.insert(model.clone(), now);
            self.failed.insert((model, node), now + AFTER_FAILED);
        }
    }
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
            asked: Arc::default(),
            tasks,
            shutdown,
        }
    }

    /// Jobs for `model` wait and no node has room for them: if no node
    /// serves it at all, ask one that can load it, other than those that
    /// just failed to.
    pub fn ask(&self, cluster: &Cluster, model: &str, now: Instant) {
        if cluster.serves(model, now) {
            return;
        }
        let mut asked = self.asked.lock().unwrap_or_else(PoisonError::into_inner);
        if asked.not_before.get(model).is_some_and(|t| *t > now) {
            return;
        }
        asked.failed.retain(|_, until| *until > now);
        let avoid: Vec<&str> = asked
            .failed
            .keys()
            .filter(|(m, _)| m == model)
            .map(|(_, node)| node.as_str())
            .collect();
        let Some(node) = cluster.loader_for(model, now, &avoid) else {
            return;
        };
        asked
            .not_before
            .insert(model.to_owned(), now + self.timeout);
        drop(asked);
        info!(%model, %node, "asking a node to load a model no node serves");
        let (client, timeout, shutdown) =
            (self.client.clone(), self.timeout, self.shutdown.clone());
        let asked = self.asked.clone();
        let model = model.to_owned();
        self.tasks.spawn(async move {
            let request = request(&client, &node, &model, timeout);
            let outcome = tokio::select! {
                () = shutdown.cancelled() => return,
                r = request => r,
            };
            let label = match outcome {
                Ok(()) => {
                    info!(%model, %node, "model loaded");
                    "loaded"
                }
                Err(LoadFailed::Request(e))
                    if e.kind() == async_nats::RequestErrorKind::TimedOut =>
                {
                    warn!(%model, %node, "model load timed out; asking another node");
                    "timed_out"
                }
                Err(e) => {
                    warn!(%model, %node, error = %e, "model load failed; asking another node");
                    "failed"
                }
            };
            metrics::counter!(m::MODEL_LOADS, "outcome" => label).increment(1);
            asked.lock().unwrap_or_else(PoisonError::into_inner).done(
                model,
                node,
                label == "loaded",
            );
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
