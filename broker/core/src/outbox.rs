//! Publishes again any job that was recorded but whose enqueue was never
//! confirmed (the broker died in between). The job id is the message id, so a
//! job that did reach the queue is dropped by the server as a duplicate.

use std::time::Duration;

use switchyard_schemas::now_ms;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::admission::Admitter;
use crate::metrics as m;

const BATCH: u32 = 500;

pub async fn run(
    admitter: Admitter,
    interval: Duration,
    grace: Duration,
    shutdown: CancellationToken,
) {
    loop {
        let cutoff = now_ms() - i64::try_from(grace.as_millis()).unwrap_or(i64::MAX);
        match admitter.store().unconfirmed(cutoff, BATCH).await {
            Ok(jobs) => {
                for job in jobs {
                    match admitter.enqueue(&job).await {
                        Ok(()) => {
                            info!(job_id = %job.id, "unconfirmed job enqueued again");
                            metrics::counter!(m::REPUBLISHED).increment(1);
                            admitter.confirmed(&job.id).await;
                        }
                        Err(e) => {
                            warn!(job_id = %job.id, error = %e, "outbox publish failed; will retry");
                            break;
                        }
                    }
                }
            }
            Err(e) => warn!(error = %e, "outbox scan failed"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}
