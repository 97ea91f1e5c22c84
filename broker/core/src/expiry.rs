//! Ends a job `expired` when its start deadline passes while it still waits,
//! even when no node has room to take it (the dispatcher, which also checks
//! deadlines, sees a job only once it can place it). The job ends the way a
//! cancelled one does: its one result first, then the cancellation bucket,
//! so the dispatcher and agents drop it when they reach it.

use std::time::Duration;

use switchyard_schemas::now_ms;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::admission::Admitter;
use crate::cancel::{CancelError, Canceller, Ending};
use crate::metrics as m;

const BATCH: u32 = 500;

pub async fn run(
    admitter: Admitter,
    canceller: Canceller,
    interval: Duration,
    shutdown: CancellationToken,
) {
    loop {
        match admitter.store().overdue(now_ms(), BATCH).await {
            Ok(ids) => {
                for id in ids {
                    match canceller.end(&id, Ending::Expired).await {
                        Ok(()) => metrics::counter!(m::EXPIRED).increment(1),
                        // It started or ended meanwhile: that stands.
                        Err(CancelError::Final { .. } | CancelError::NotFound(_)) => {}
                        Err(e) => {
                            warn!(job_id = %id, error = %e, "could not expire job; will retry")
                        }
                    }
                }
            }
            Err(e) => warn!(error = %e, "deadline scan failed"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}
