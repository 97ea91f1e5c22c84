//! One assignment on the engine: run it, then publish its usage and its
//! result, each confirmed, within the lease.

use super::*;
use switchyard_runtime::attempts::Voucher;
use switchyard_runtime::grants::{self, Claim};
use switchyard_schemas::Usage;

#[derive(Debug, thiserror::Error)]
pub(super) enum PublishFailed {
    #[error("publish: {0}")]
    Publish(#[from] jetstream::context::PublishError),
    #[error("encode: {0}")]
    Encode(#[from] switchyard_schemas::CodecError),
    #[error(transparent)]
    Settle(#[from] attempts::SettleError),
    #[error(transparent)]
    Large(#[from] large::LargeError),
}

/// Runs the job on the engine and publishes its result, confirmed by the
/// server, carrying the attempt's usage: once a result exists, so does its
/// usage record. An attempt without a result of its own reports its usage
/// on its own.
pub(super) async fn execute(
    node: &Node,
    msg: &jetstream::Message,
    a: &Assignment,
    mut lease: Lease,
) -> Result<Done, PublishFailed> {
    let job = &a.job;
    if !lease.held() {
        // Paused between delivery and start: the assignment may already be
        // running elsewhere.
        return Ok(fenced());
    }
    if job.expired_at(now_ms()) {
        // It waited in this node's queue past its deadline: it never runs.
        let timeline = Timeline {
            node: Some(node.id.clone()),
            assigned_at_ms: Some(a.assigned_at_ms),
            started_at_ms: None,
        };
        attempts::expire(&node.js, job, &timeline, Voucher::Node(&a.grant)).await?;
        metrics::counter!(m::JOBS, "outcome" => "expired").increment(1);
        return Ok(Done::Reported);
    }
    // Listened for before the cancellations are looked at: one is then
    // either found or reaches this token, whenever it comes.
    let abort = Abort::listen(node, &job.id);
    if node.cancelled(job).await {
        // Cancelled while it waited: its result is already stored.
        metrics::counter!(m::JOBS, "outcome" => "cancelled").increment(1);
        return Ok(Done::Reported);
    }
    let started = Instant::now();
    let started_at_ms = now_ms();
    // A job the engine answers at once reports its start with its result
    // (the result carries the time it started), and costs one message
    // less; a streamed one says it runs before its first token.
    let mut running_ack = match job.stream {
        true => Some(announce_running(node, a, started_at_ms).await),
        false => None,
    };
    let announce = tokio::time::sleep(ANNOUNCE_RUNNING_AFTER);
    tokio::pin!(announce);
    let chunks = job
        .stream
        .then(|| Chunks::start(&node.tasks, node.js.clone(), a));
    let serves =
        node.engine.models().contains(&job.model) || node.engine.loadable().contains(&job.model);
    let inference = if !serves {
        // Misrouted: running it would answer with another model.
        Err(EngineError {
            class: ErrorClass::UnknownModel,
            message: format!("model {:?} is not served on node {}", job.model, node.id),
        })
    } else {
        let infer = async {
            let run = node.engine.infer(
                &job.model,
                &job.input,
                job.priority,
                chunks.as_ref().map(Chunks::sink),
            );
            match job.timeout_ms {
                // Dropping the request at the limit cancels it at the engine.
                Some(ms) => tokio::time::timeout(Duration::from_millis(ms), run)
                    .await
                    .unwrap_or_else(|_| {
                        Err(EngineError {
                            class: ErrorClass::TimedOut,
                            message: format!("cancelled at its timeout of {ms} ms"),
                        })
                    }),
                None => run.await,
            }
        };
        tokio::pin!(infer);
        // Its first tick a period from now: an interval's immediate first
        // tick still waits for the timer's next millisecond, which was most
        // of a quick job's time on the node.
        let every = node.ack_wait / 3;
        let mut progress = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tokio::select! {
                biased;
                () = &mut announce, if running_ack.is_none() => {
                    running_ack = Some(announce_running(node, a, started_at_ms).await);
                }
                r = &mut infer => break r,
                () = abort.token.cancelled() => {
                    // Dropping the request cancels it at the engine.
                    break Err(EngineError {
                        class: ErrorClass::Cancelled,
                        message: "cancelled by request".into(),
                    });
                }
                _ = progress.tick() => {
                    // A lapsed lease is not renewed: the work may be elsewhere now.
                    if !lease.held() {
                        break Err(EngineError {
                            class: ErrorClass::Timeout,
                            message: "the assignment's lease lapsed".into(),
                        });
                    }
                    // Keeps a long job from being redelivered while it runs.
                    let _ = msg.ack_with(AckKind::Progress).await;
                    lease.renewed();
                }
            }
        }
    };
    let streamed = match chunks {
        Some(chunks) => {
            let finish_reason = match &inference {
                Ok(inf) if lease.held() => inf.output["choices"][0]["finish_reason"]
                    .as_str()
                    .unwrap_or("stop"),
                _ => "error",
            };
            chunks.finish(finish_reason).await
        }
        None => 0,
    };
    if !lease.held() {
        // Paused or cut off past the ack wait: the assignment was handed out
        // again, so this attempt's outcome must not be reported.
        warn!("lease lapsed while running; outcome discarded");
        return Ok(fenced());
    }
    let engine_time = started.elapsed();
    metrics::histogram!(m::ENGINE_SECONDS).record(engine_time.as_secs_f64());
    if let Some(ack) = running_ack {
        ack?.await?;
    }

    let timeline = Timeline {
        node: Some(node.id.clone()),
        assigned_at_ms: Some(a.assigned_at_ms),
        started_at_ms: Some(started_at_ms),
    };
    let retry_until = Instant::now() + node.ack_wait;
    let inf = match inference {
        Ok(inf) => {
            node.record_service_time(&a.job.model, engine_time);
            inf
        }
        Err(e) => {
            // The engine worked on it: what it did is reported, the tokens
            // counted from the stream (the engine's own count comes only
            // with an answer) and the engine time, for the ledger to charge
            // or count as waste.
            if serves {
                let partial = Usage {
                    prompt_tokens: 0,
                    completion_tokens: streamed,
                };
                let usage = usage_record(node, a, partial, engine_time);
                publish_usage(node, msg, &usage, retry_until).await?;
            }
            return settle_failure(node, a, e, timeline).await;
        }
    };
    let usage = usage_record(node, a, inf.usage, engine_time);
    let mut result = JobResult {
        usage_record: Some(usage),
        ..JobResult::succeeded(&job.id, job.attempt, timeline, inf.output, inf.usage)
    };
    // An output larger than a message goes to the object store first.
    large::spill(&node.large_results, &mut result, node.max_result_bytes).await?;
    Voucher::Node(&a.grant).vouch(&mut result);
    if !lease.held() {
        // Paused since the last look, with nothing between this look and
        // the publish for a pause to fall into but the send itself.
        warn!("lease lapsed before the result was sent; outcome discarded");
        return Ok(fenced());
    }
    let stored = until_confirmed(msg, retry_until, || {
        attempts::publish_result(&node.js, &result)
    })
    .await?;
    let outcome = if stored {
        let total_ms = (result.finished_at_ms - job.submitted_at_ms).max(0);
        metrics::histogram!(m::JOB_SECONDS).record(total_ms as f64 / 1000.0);
        "succeeded"
    } else {
        // Another attempt's result was stored first; the job has its one
        // result, and this attempt's usage is reported on its own.
        if let Some(usage) = &result.usage_record {
            publish_usage(node, msg, usage, retry_until).await?;
        }
        "duplicate"
    };
    metrics::counter!(m::JOBS, "outcome" => outcome).increment(1);
    Ok(Done::Reported)
}

/// A running job's entry in `Node::aborts`, where the cancellation watch
/// finds it; gone with the job's run.
struct Abort<'a> {
    node: &'a Node,
    id: &'a str,
    token: CancellationToken,
}

impl<'a> Abort<'a> {
    fn listen(node: &'a Node, id: &'a str) -> Abort<'a> {
        let token = CancellationToken::new();
        lock(&node.aborts).insert(id.to_owned(), token.clone());
        Abort { node, id, token }
    }
}

impl Drop for Abort<'_> {
    fn drop(&mut self) {
        lock(&self.node.aborts).remove(self.id);
    }
}

/// How long a job runs before its `running` event is published.
const ANNOUNCE_RUNNING_AFTER: Duration = Duration::from_millis(20);

/// Publishes the attempt's `running` event; its confirmation is awaited
/// before the outcome's.
async fn announce_running(
    node: &Node,
    a: &Assignment,
    started_at_ms: i64,
) -> Result<async_nats::jetstream::context::PublishAckFuture, PublishFailed> {
    let job = &a.job;
    let running = JobEvent {
        v: SCHEMA_VERSION,
        job_id: job.id.clone(),
        attempt: job.attempt,
        at_ms: started_at_ms,
        kind: EventKind::Running {
            node: node.id.clone(),
        },
        proof: Some(grants::prove(&a.grant, Claim::Running)),
    };
    let msg_id = subjects::attempt_msg_id(&job.id, job.attempt);
    Ok(nats::publish(
        &node.js,
        subjects::events(&job.id),
        &format!("{msg_id}:running"),
        encode(&running)?,
    )
    .await?)
}

/// What an attempt consumed, with the proof its grant gives.
fn usage_record(node: &Node, a: &Assignment, usage: Usage, engine_time: Duration) -> UsageEvent {
    let job = &a.job;
    UsageEvent {
        v: SCHEMA_VERSION,
        job_id: job.id.clone(),
        attempt: job.attempt,
        node: node.id.clone(),
        model: job.model.clone(),
        usage,
        engine_ms: u64::try_from(engine_time.as_millis()).unwrap_or(u64::MAX),
        at_ms: now_ms(),
        proof: Some(grants::prove(&a.grant, Claim::Usage)),
    }
}

/// Publishes an attempt's usage on its own, confirmed, before its outcome:
/// once a result exists, so does its usage record.
async fn publish_usage(
    node: &Node,
    msg: &jetstream::Message,
    usage: &UsageEvent,
    until: Instant,
) -> Result<(), PublishFailed> {
    let payload = encode(usage)?;
    let msg_id = subjects::attempt_msg_id(&usage.job_id, usage.attempt);
    until_confirmed(msg, until, || async {
        nats::publish(
            &node.js,
            subjects::usage(&usage.job_id),
            &msg_id,
            payload.clone(),
        )
        .await?
        .await
    })
    .await?;
    Ok(())
}

/// Settles an attempt the engine did not finish: cancelled (the broker
/// stored the job's result when it cancelled it), or failed.
async fn settle_failure(
    node: &Node,
    a: &Assignment,
    e: EngineError,
    timeline: Timeline,
) -> Result<Done, PublishFailed> {
    let job = &a.job;
    if e.class == ErrorClass::Cancelled {
        metrics::counter!(m::JOBS, "outcome" => "cancelled").increment(1);
        return Ok(Done::Reported);
    }
    warn!(class = ?e.class, error = %e.message, "engine failed the job");
    if e.class == ErrorClass::EngineUnavailable {
        // Check the engine at once: if it is down, the next heartbeat says
        // so and no more work comes.
        node.engine_suspect.store(true, Ordering::SeqCst);
        node.wake_probe.notify_one();
    }
    let failure = Failure {
        attempt: job.attempt,
        node: node.id.clone(),
        at_ms: now_ms(),
        error: JobError::new(e.class, e.message),
    };
    let settled = attempts::fail(&node.js, job, failure, timeline, Voucher::Node(&a.grant)).await?;
    metrics::counter!(m::JOBS, "outcome" => settled.as_str()).increment(1);
    Ok(Done::Reported)
}

/// Runs `publish` until the server confirms it or `until` passes. Each try
/// sends the same message with the same id, so a repeat of one that did
/// land is dropped; running the job again to report it would run the engine
/// twice, and could give another answer.
pub(super) async fn until_confirmed<T, E, F, Fut>(
    msg: &jetstream::Message,
    until: Instant,
    mut publish: F,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    loop {
        match publish().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() < until => {
                warn!(error = %e, "publish not confirmed; sending it again");
                let _ = msg.ack_with(AckKind::Progress).await;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => return Err(e),
        }
    }
}
