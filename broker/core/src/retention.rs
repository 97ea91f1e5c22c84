//! Drops what is kept only for a while: job outputs `broker.result_retention`
//! after the job ended, and the record of webhook events no longer pending
//! after the same time. Job records themselves stay.

use std::sync::Arc;
use std::time::Duration;

use switchyard_schemas::now_ms;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use switchyard_store::Retention;

const BATCH: u32 = 1000;

pub async fn run(store: Arc<dyn Retention>, retention: Duration, shutdown: CancellationToken) {
    let every = (retention / 4).clamp(Duration::from_millis(100), Duration::from_secs(60));
    let keep = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX / 2);
    loop {
        loop {
            match store.forget(now_ms() - keep, BATCH).await {
                // A full batch: there may be more.
                Ok(n) if n >= u64::from(BATCH) => continue,
                Ok(n) => {
                    if n > 0 {
                        debug!(rows = n, "outputs past their retention dropped");
                    }
                    break;
                }
                Err(e) => {
                    warn!(error = %e, "retention sweep failed; it is tried again");
                    break;
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}
