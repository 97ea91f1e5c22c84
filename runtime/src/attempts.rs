//! How an attempt that did not succeed is settled, in one place for the agent
//! (engine errors) and the dispatcher (lost and draining nodes): the next
//! attempt goes back to the queue, or the job ends failed, with a dead letter
//! first when it failed every attempt it had. Every publish is confirmed
//! before the caller acknowledges the message it is settling.

use async_nats::jetstream::Context;
use async_nats::jetstream::context::PublishError;
use async_nats::jetstream::stream::Stream;
use switchyard_schemas::{
    CodecError, DeadLetter, ErrorClass, EventKind, Failure, Job, JobError, JobEvent, JobResult,
    SCHEMA_VERSION, Timeline, encode, subjects,
};

use crate::grants::{Claim, Grants, prove};
use crate::nats;

/// Who vouches for a result an attempt's settling publishes.
#[derive(Debug, Clone, Copy)]
pub enum Voucher<'a> {
    /// A broker or a dispatcher: it holds the grants' key.
    Platform(&'a Grants),
    /// The node the attempt was assigned to: it holds the attempt's grant.
    Node(&'a str),
}

impl Voucher<'_> {
    /// Sets the result's proof; last, once its output is where it stays.
    pub fn vouch(&self, result: &mut JobResult) {
        let claim = Claim::Result(result.output_sha256.as_deref());
        result.proof = Some(match self {
            Voucher::Platform(grants) => grants.prove(
                claim,
                &result.job_id,
                result.attempt,
                result.node.as_deref().unwrap_or_default(),
            ),
            Voucher::Node(grant) => prove(grant, claim),
        });
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SettleError {
    #[error("publish: {0}")]
    Publish(#[from] PublishError),
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// What became of the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    Requeued,
    Failed,
    DeadLettered,
}

impl Settled {
    pub fn as_str(self) -> &'static str {
        match self {
            Settled::Requeued => "retried",
            Settled::Failed => "failed",
            Settled::DeadLettered => "dead_lettered",
        }
    }
}

/// Settles an attempt that failed with `failure`.
pub async fn fail(
    js: &Context,
    job: &Job,
    failure: Failure,
    timeline: Timeline,
    voucher: Voucher<'_>,
) -> Result<Settled, SettleError> {
    let class = failure.error.class;
    if !class.is_retryable() {
        finish(js, job, failure.error, &timeline, voucher).await?;
        return Ok(Settled::Failed);
    }
    if job.may_retry_after_failure() {
        let kind = EventKind::Retrying {
            node: failure.node.clone(),
            error: failure.error.clone(),
        };
        queue_next(js, job, job.retry(failure), kind).await?;
        return Ok(Settled::Requeued);
    }
    let error = JobError::new(
        class,
        format!(
            "failed after {} attempts; last error: {}",
            job.failures.len() + 1,
            failure.error.message
        ),
    );
    let dead = DeadLetter {
        v: SCHEMA_VERSION,
        at_ms: failure.at_ms,
        job: job.retry(failure),
    };
    let msg_id = subjects::attempt_msg_id(&job.id, job.attempt);
    nats::publish(js, subjects::dead(&job.id), &msg_id, encode(&dead)?)
        .await?
        .await?;
    finish(js, job, error, &timeline, voucher).await?;
    Ok(Settled::DeadLettered)
}

/// Ends the job with `error`, whatever attempts it has left (a fatal error,
/// a missed deadline, its own timeout).
pub async fn finish(
    js: &Context,
    job: &Job,
    error: JobError,
    timeline: &Timeline,
    voucher: Voucher<'_>,
) -> Result<(), SettleError> {
    let mut result = JobResult::failed(&job.id, job.attempt, timeline.clone(), error);
    voucher.vouch(&mut result);
    publish_result(js, &result).await?;
    Ok(())
}

/// Ends a job that was not started by its deadline, unless it has ended
/// already: the broker ends jobs that wait past their deadline, and a second
/// result, though refused by the stream, would still reach plain NATS
/// subscribers of `sy.results.*`.
pub async fn expire(
    js: &Context,
    job: &Job,
    timeline: &Timeline,
    voucher: Voucher<'_>,
) -> Result<(), SettleError> {
    // A result stored already, even one no node vouches for, keeps this
    // one out: the server takes one per job.
    if let Ok(results) = js.get_stream_no_info(subjects::RESULTS_STREAM).await
        && results
            .direct_get_last_for_subject(subjects::results(&job.id))
            .await
            .is_ok()
    {
        return Ok(());
    }
    let error = JobError::new(ErrorClass::Expired, "not started by its deadline");
    finish(js, job, error, timeline, voucher).await
}

/// What RESULTS holds for a job.
pub enum StoredResult {
    /// Nothing: not finished, or kept no longer.
    None,
    /// Its result, as decoded and as stored.
    Vouched(Box<JobResult>, bytes::Bytes),
    /// A result no assignment vouches for, which the broker deletes as soon
    /// as it meets it; the job's own follows.
    Forged,
}

/// Reads the job's result from RESULTS, from whatever attempt, and checks
/// that its node or the platform vouches for it.
pub async fn read_result<I>(results: &Stream<I>, grants: &Grants, job_id: &str) -> StoredResult {
    let Ok(msg) = results
        .direct_get_last_for_subject(subjects::results(job_id))
        .await
    else {
        return StoredResult::None;
    };
    match switchyard_schemas::decode::<JobResult>(&msg.payload) {
        Ok(r) if grants.vouches_result(&r) => StoredResult::Vouched(Box::new(r), msg.payload),
        _ => StoredResult::Forged,
    }
}

/// Whether the job has a result on RESULTS, from whatever attempt, that its
/// node or the platform vouches for.
pub async fn has_result(js: &Context, grants: &Grants, job_id: &str) -> bool {
    match js.get_stream_no_info(subjects::RESULTS_STREAM).await {
        Ok(results) => matches!(
            read_result(&results, grants, job_id).await,
            StoredResult::Vouched(..)
        ),
        Err(_) => false,
    }
}

/// Whether `job`'s attempt on `node` is known not to have started: the last
/// thing recorded of the job is still that attempt's assignment. A node
/// holds work it has not started (waiting for a slot), and what it holds
/// comes back to the dispatcher as delivered before, like work it ran.
/// A start is recorded with the `running` event, sent at once for a
/// streamed job and after a few milliseconds for another; one that ends
/// sooner has its result.
pub async fn never_started(js: &Context, job: &Job, node: &str) -> bool {
    let Ok(events) = js.get_stream_no_info(subjects::EVENTS_STREAM).await else {
        return false;
    };
    match events
        .get_last_raw_message_by_subject(&subjects::events(&job.id))
        .await
    {
        Ok(msg) => switchyard_schemas::decode::<JobEvent>(&msg.payload).is_ok_and(|e| {
            e.attempt == job.attempt
                && matches!(&e.kind, EventKind::Assigned { node: n } if n == node)
        }),
        Err(_) => false,
    }
}

/// Puts back a job whose attempt never ran (its node is draining), charging
/// it no failure.
pub async fn requeue_unstarted(js: &Context, job: &Job, node: &str) -> Result<(), SettleError> {
    let kind = EventKind::Requeued {
        node: node.to_owned(),
    };
    queue_next(js, job, job.requeue(), kind).await
}

/// Publishes a job's result and waits for the server. A job has one result:
/// if another attempt already stored one, the server refuses this one and
/// `false` is returned.
pub async fn publish_result(js: &Context, result: &JobResult) -> Result<bool, SettleError> {
    let msg_id = subjects::attempt_msg_id(&result.job_id, result.attempt);
    let subject = subjects::results(&result.job_id);
    Ok(nats::publish_first(js, subject, &msg_id, encode(result)?).await?)
}

/// Queues `next` (the following attempt of `job`) and records why, both
/// confirmed. The message id is the new attempt's, so a repeat is dropped.
async fn queue_next(
    js: &Context,
    job: &Job,
    next: Job,
    kind: EventKind,
) -> Result<(), SettleError> {
    let event = JobEvent {
        v: SCHEMA_VERSION,
        job_id: job.id.clone(),
        attempt: job.attempt,
        at_ms: switchyard_schemas::now_ms(),
        kind,
        proof: None,
    };
    let queued = nats::publish(
        js,
        next.queue_subject(),
        &subjects::queued_msg_id(&job.id, next.attempt),
        encode(&next)?,
    )
    .await?;
    let recorded = nats::publish(
        js,
        subjects::events(&job.id),
        &format!(
            "{}:requeued",
            subjects::attempt_msg_id(&job.id, job.attempt)
        ),
        encode(&event)?,
    )
    .await?;
    queued.await?;
    recorded.await?;
    Ok(())
}
