//! Cancelling a job. The job ends at once: its one result (`cancelled`) is
//! stored first, so no later outcome can replace it; then its id goes into
//! the cancellation bucket, which agents consult before starting a job and
//! watch to abort one that runs.

use async_nats::jetstream::kv;
use futures::StreamExt;
use serde_json::json;
use switchyard_runtime::attempts::{self, Voucher};
use switchyard_schemas::{ErrorBody, ErrorClass, JobError, JobResult, Timeline, now_ms, subjects};
use switchyard_store::{Status, StoreError};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::admission::Admitter;
use crate::error::{Coded, ErrorCode, client_body};

#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    #[error("no job with id {0:?}")]
    NotFound(String),
    #[error("job {id:?} is already {status}", status = .status.as_str())]
    Final { id: String, status: Status },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the queue is unavailable: {0}")]
    Unavailable(String),
}

impl Coded for CancelError {
    fn code(&self) -> ErrorCode {
        match self {
            CancelError::NotFound(_) => ErrorCode::NotFound,
            CancelError::Final { .. } => ErrorCode::NotCancellable,
            CancelError::Store(_) => ErrorCode::StoreUnavailable,
            CancelError::Unavailable(_) => ErrorCode::QueueUnavailable,
        }
    }
}

/// Ends jobs before they finish: by request, or at their start deadline.
#[derive(Clone)]
pub struct Canceller {
    admitter: Admitter,
    /// Ids of jobs ended early, which agents consult and watch.
    cancellations: kv::Store,
}

/// Why a job is ended before it finishes.
#[derive(Debug, Clone, Copy)]
pub enum Ending {
    /// By request: a running attempt is aborted.
    Cancelled,
    /// Its start deadline passed while it waited: only a job not yet
    /// running can expire.
    Expired,
}

impl Canceller {
    pub fn new(admitter: Admitter, cancellations: kv::Store) -> Canceller {
        Canceller {
            admitter,
            cancellations,
        }
    }

    /// Ends job `id` as cancelled, unless it has already ended.
    pub async fn cancel(&self, id: &str) -> Result<(), CancelError> {
        self.end(id, Ending::Cancelled).await
    }

    /// Ends job `id` at once, unless it has already ended (or, when
    /// expiring, started): its result is stored, and a running attempt is
    /// aborted.
    pub async fn end(&self, id: &str, ending: Ending) -> Result<(), CancelError> {
        let (admitter, cancellations) = (&self.admitter, &self.cancellations);
        let unavailable = |e: String| CancelError::Unavailable(e);
        let record = admitter
            .store()
            .get(id)
            .await?
            .ok_or_else(|| CancelError::NotFound(id.to_owned()))?;
        let (error, ends_running) = match ending {
            Ending::Cancelled => (
                JobError::new(ErrorClass::Cancelled, "cancelled by request"),
                true,
            ),
            Ending::Expired => (
                JobError::new(ErrorClass::Expired, "not started by its deadline"),
                false,
            ),
        };
        if record.status.is_final() || (record.status == Status::Running && !ends_running) {
            return Err(CancelError::Final {
                id: id.to_owned(),
                status: record.status,
            });
        }
        let timeline = Timeline {
            node: record.node,
            assigned_at_ms: record.assigned_at_ms,
            started_at_ms: record.started_at_ms,
        };
        let mut result = JobResult::failed(id, record.attempt, timeline, error);
        Voucher::Platform(admitter.grants()).vouch(&mut result);
        let stored = attempts::publish_result(admitter.js(), &result)
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        if !stored {
            // It finished a moment ago: that outcome stands.
            let status = admitter
                .store()
                .get(id)
                .await?
                .map_or(Status::Running, |r| r.status);
            return Err(CancelError::Final {
                id: id.to_owned(),
                status,
            });
        }
        // Only now tell the agents: the stored result is the broker's, so an
        // agent that aborts on this news cannot race it with its own.
        if let Err(e) = cancellations.put(id, now_ms().to_string().into()).await {
            warn!(job_id = %id, error = %e, "job cancelled, but a running attempt will not be aborted");
        }
        admitter
            .store()
            .apply_results(&[result], &[], &|_| false)
            .await?;
        info!(job_id = %id, "job ended before its time");
        Ok(())
    }
}

/// Serves `sy.cancel` requests (body: the job id) until `shutdown`.
pub async fn serve_requests(
    canceller: Canceller,
    mut requests: async_nats::Subscriber,
    shutdown: CancellationToken,
) {
    let client = canceller.admitter.js().client();
    let served = (&mut requests)
        .take_until(shutdown.cancelled_owned())
        .for_each_concurrent(64, |req| {
            let (canceller, client) = (canceller.clone(), client.clone());
            async move {
                let Some(reply_to) = req.reply.clone() else {
                    return;
                };
                let id = String::from_utf8_lossy(&req.payload).trim().to_owned();
                let reply = if !subjects::is_valid_id(&id) {
                    let error = ErrorBody {
                        code: ErrorCode::InvalidRequest.as_str().into(),
                        message: "the body must be a job id".into(),
                    };
                    json!({ "error": error })
                } else {
                    match canceller.cancel(&id).await {
                        Ok(()) => json!({"id": id, "status": "cancelled"}),
                        Err(e) => json!({"error": client_body(&e)}),
                    }
                };
                if let Err(e) = client.publish(reply_to, reply.to_string().into()).await {
                    warn!(error = %e, "cancel reply not sent");
                }
            }
        });
    served.await;
    let _ = requests.unsubscribe().await;
}
