//! The streams and buckets an agent works with. Brokers and dispatchers
//! make them and bring them to the configured settings; an agent's NATS
//! user may use them but not make or change them, so the agent waits until
//! they are there.

use super::*;

pub(super) struct Platform {
    pub(super) results: jetstream::stream::Stream,
    pub(super) events: jetstream::stream::Stream,
    pub(super) cancellations: kv::Store,
    pub(super) large_results: ObjectStore,
    /// The live model registry, followed.
    pub(super) models: kv::Store,
}

/// How often an agent started before the platform looks again.
const LOOK_AGAIN: Duration = Duration::from_secs(1);

impl Platform {
    /// The platform's streams and buckets; `None` when `shutdown` comes
    /// before they are all there.
    pub(super) async fn wait(js: &Context, shutdown: &CancellationToken) -> Option<Platform> {
        loop {
            match Self::open(js).await {
                Ok(platform) => return Some(platform),
                Err(e) => {
                    info!(error = %e, "waiting for a broker or dispatcher to make the streams")
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return None,
                () = tokio::time::sleep(LOOK_AGAIN) => {}
            }
        }
    }

    async fn open(js: &Context) -> Result<Platform, String> {
        // The work queue too: the node's consumer is made on it next.
        nats::stream(js, subjects::WORK_STREAM)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Platform {
            results: nats::stream(js, subjects::RESULTS_STREAM)
                .await
                .map_err(|e| e.to_string())?,
            events: nats::stream(js, subjects::EVENTS_STREAM)
                .await
                .map_err(|e| e.to_string())?,
            cancellations: js
                .get_key_value(subjects::CANCEL_BUCKET)
                .await
                .map_err(|e| e.to_string())?,
            large_results: js
                .get_object_store(subjects::LARGE_RESULTS_BUCKET)
                .await
                .map_err(|e| e.to_string())?,
            models: js
                .get_key_value(subjects::MODELS_BUCKET)
                .await
                .map_err(|e| e.to_string())?,
        })
    }
}
