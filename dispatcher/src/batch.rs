//! One pull from a tenant's lane: each job checked (sealed, not expired,
//! not backing off, its key under its running bound), placed, and assigned
//! to its node's work queue; acknowledged only once the assignment is
//! stored.

use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::{self, AckKind, Context};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use switchyard_runtime::attempts;
use switchyard_runtime::attempts::Voucher;
use switchyard_runtime::grants::Grants;
use switchyard_runtime::nats;
use switchyard_schemas::Timeline;
use switchyard_schemas::{
    Assignment, CodecError, EventKind, Job, JobEvent, Priority, SCHEMA_VERSION, decode, encode,
    now_ms, subjects,
};
use tracing::{Instrument, warn};

use crate::config::FairBy;
use crate::pulls::{PullError, Pulls};
use crate::running::Running;
use crate::{Cluster, DispatcherConfig, metrics as m};

/// How long a job whose key is at its `max_running_jobs` waits before it
/// is offered again.
const KEY_AT_BOUND_DELAY: Duration = Duration::from_millis(250);

#[derive(Debug, thiserror::Error)]
pub(crate) enum BatchError {
    #[error(transparent)]
    Pull(#[from] PullError),
    #[error("publish: {0}")]
    Publish(#[from] jetstream::context::PublishError),
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("ack: {0}")]
    Ack(String),
}

/// How many jobs one pull may place, and which.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Take {
    pub(crate) max: u32,
    /// For an aged lane's turn ahead of higher levels: only jobs that have
    /// waited past this bound go; the first younger one, and the ones after
    /// it, go back to the lane in their order.
    pub(crate) aged_past: Option<Duration>,
}

/// Assignments placed and not yet confirmed: those of every lane a sweep
/// pulls go out together, so that a sweep over many tenants' lanes waits
/// for one round of PubAcks instead of one per lane.
pub(crate) struct Assigner<'a> {
    js: &'a Context,
    grants: &'a Grants,
    pending: Vec<BoxFuture<'a, Sent>>,
}

impl<'a> Assigner<'a> {
    pub(crate) fn new(js: &'a Context, grants: &'a Grants) -> Self {
        Self {
            js,
            grants,
            pending: Vec::new(),
        }
    }

    /// Publishes every assignment placed so far, each job acknowledged as
    /// its own PubAcks come, and tells `cluster` which were stored.
    pub(crate) async fn confirm(&mut self, cluster: &mut Cluster) {
        let pending = std::mem::take(&mut self.pending);
        let mut sent = futures::stream::iter(pending).buffer_unordered(1024);
        while let Some(Sent { node, stored_as }) = sent.next().await {
            cluster.sent(&node, stored_as, Instant::now());
        }
    }
}

/// Pulls jobs from one queue as `take` allows, places each, and leaves its
/// assignment to `assigner`. A job is acknowledged only once its assignment
/// is stored in the node's work queue.
pub(crate) async fn dispatch_batch<'a>(
    assigner: &mut Assigner<'a>,
    pulls: &mut Pulls,
    lane: &PullConsumer,
    take: Take,
    (cfg, cluster, running): (&DispatcherConfig, &mut Cluster, &Running),
) -> Result<Placed, BatchError> {
    let mut batch = pulls.pull(lane, take.max as usize).await?;
    let mut placing = Placing::new(take);
    while let Some(msg) = batch.next().await {
        placing.offer(assigner, msg?, cfg, cluster, running).await;
    }
    Ok(placing.placed)
}

/// The jobs of one lane offered one by one, each checked (sealed, not
/// expired, not backing off, its key under its running bound) and placed.
pub(crate) struct Placing {
    take: Take,
    /// A job not aged past `take.aged_past` came: it and those after it go
    /// back to the lane in their order.
    young: bool,
    pub(crate) placed: Placed,
}

impl Placing {
    pub(crate) fn new(take: Take) -> Placing {
        Placing {
            take,
            young: false,
            placed: Placed::default(),
        }
    }

    /// Places the job of `msg`, or puts it back, or drops it.
    pub(crate) async fn offer<'a>(
        &mut self,
        assigner: &mut Assigner<'a>,
        msg: jetstream::Message,
        cfg: &DispatcherConfig,
        cluster: &mut Cluster,
        running: &Running,
    ) {
        let (js, grants) = (assigner.js, assigner.grants);
        if self.young {
            let _ = msg.ack_with(AckKind::Nak(None)).await;
            return;
        }
        let job: Job = match decode(&msg.payload) {
            Ok(job) => job,
            Err(e) => {
                warn!(error = %e, "undecodable job terminated");
                metrics::counter!(m::REJECTED, "reason" => "undecodable").increment(1);
                let _ = msg.ack_with(AckKind::Term).await;
                return;
            }
        };
        if !grants.sealed(&job) || msg.subject.as_str() != job.queue_subject() {
            // Not as a broker admitted it, or not in its own queue: a node's
            // user can publish to the queues (to retry), but cannot make a
            // job or move one to another tenant's, model's or priority's.
            warn!(job_id = %job.id, subject = %msg.subject, "job without its broker's seal terminated");
            metrics::counter!(m::REJECTED, "reason" => "unsealed").increment(1);
            let _ = msg.ack_with(AckKind::Term).await;
            return;
        }
        // A lane's jobs wait in the order they came: once one has not
        // waited past the bound, none after it has either.
        self.young = self
            .take
            .aged_past
            .is_some_and(|bound| job.level_at(now_ms(), bound) != Priority::Critical);
        if self.young {
            let _ = msg.ack_with(AckKind::Nak(None)).await;
            return;
        }
        if job.expired_at(now_ms()) {
            // Not started by its deadline: it never runs.
            match attempts::expire(js, &job, &Timeline::default(), Voucher::Platform(grants)).await
            {
                Ok(()) => {
                    metrics::counter!(m::REJECTED, "reason" => "expired").increment(1);
                    let _ = msg.ack().await;
                }
                Err(e) => warn!(job_id = %job.id, error = %e, "could not expire job; will retry"),
            }
            return;
        }
        if let Some(delay) = cfg.retry_delay(&job, now_ms()) {
            // Backing off after a failure: the job waits in the queue, not here.
            let _ = msg.ack_with(AckKind::Nak(Some(delay))).await;
            return;
        }
        if job
            .api_key
            .as_deref()
            .is_some_and(|key| running.key_room(key) == Some(0))
        {
            // Its key has as many jobs running as it may: it waits in the
            // queue, and the jobs behind it are not held up.
            metrics::counter!(m::HELD, "limit" => "key_max_running_jobs").increment(1);
            let _ = msg.ack_with(AckKind::Nak(Some(KEY_AT_BOUND_DELAY))).await;
            return;
        }
        let avoid: Vec<&str> = job.failed_nodes().collect();
        let Some(node) = cluster.place((&job.model, job.priority), Instant::now(), &avoid) else {
            // Room vanished (a node went silent mid-batch): back to the queue.
            let _ = msg
                .ack_with(AckKind::Nak(Some(Duration::from_millis(100))))
                .await;
            return;
        };
        metrics::histogram!(m::QUEUE_WAIT)
            .record((now_ms() - job.submitted_at_ms).max(0) as f64 / 1000.0);
        metrics::counter!(m::ASSIGNMENTS, "priority" => job.priority.as_str()).increment(1);
        // Counted before the assignment's own echo comes back, so the next
        // round already sees it.
        running.started(&job);
        self.placed.tokens += u64::from(job.input.expected_tokens());
        let span = tracing::info_span!("job.dispatch", job_id = %job.id, node = %node);
        switchyard_runtime::trace::adopt(&span, msg.headers.as_ref());
        self.placed.jobs += 1;
        assigner
            .pending
            .push(assign(js, grants, msg, job, node).instrument(span).boxed());
    }
}

/// What one pull placed.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Placed {
    pub(crate) jobs: u32,
    /// Their expected tokens: prompts and `max_tokens`.
    tokens: u64,
}

impl Placed {
    /// What it counts for in the tenant's fair share.
    pub(crate) fn served(self, by: FairBy) -> f64 {
        match by {
            FairBy::Jobs => f64::from(self.jobs),
            FairBy::Tokens => self.tokens as f64,
        }
    }
}

/// An assignment sent: its node, and its `WORK` stream sequence once stored.
pub(crate) struct Sent {
    node: String,
    stored_as: Option<u64>,
}

/// Assigns `job` to `node`: what was stored is known even when a later
/// step fails, so that the node's count of work on its way stays right.
async fn assign(
    js: &Context,
    grants: &Grants,
    msg: jetstream::Message,
    job: Job,
    node: String,
) -> Sent {
    let mut stored_as = None;
    if let Err(e) = store_assignment(js, grants, msg, job, &node, &mut stored_as).await {
        // The job stays unacknowledged and comes back after ack_wait.
        warn!(error = %e, "assignment not confirmed");
    }
    Sent { node, stored_as }
}

async fn store_assignment(
    js: &Context,
    grants: &Grants,
    msg: jetstream::Message,
    job: Job,
    node: &str,
    stored_as: &mut Option<u64>,
) -> Result<(), BatchError> {
    let started = Instant::now();
    let msg_id = subjects::attempt_msg_id(&job.id, job.attempt);
    let event = JobEvent {
        v: SCHEMA_VERSION,
        job_id: job.id.clone(),
        attempt: job.attempt,
        at_ms: now_ms(),
        kind: EventKind::Assigned {
            node: node.to_owned(),
        },
        proof: None,
    };
    let event_subject = subjects::events(&job.id);
    let assignment = Assignment {
        v: SCHEMA_VERSION,
        grant: grants.grant(&job.id, job.attempt, node),
        node: node.to_owned(),
        assigned_at_ms: now_ms(),
        job,
    };
    // The event is sent before the assignment, on the same connection, so
    // the server has it in `EVENTS` before the node can read the work and
    // report it running: a job's events are stored in the order they
    // happened. Both PubAcks are awaited together.
    let event_ack = nats::publish(
        js,
        event_subject,
        &format!("{msg_id}:assigned"),
        encode(&event)?,
    )
    .await?;
    // The message id is the job's attempt: if this job is pulled again after a
    // crash, the second assignment is dropped by the server, wherever it goes.
    let work_ack = nats::publish(js, subjects::work(node), &msg_id, encode(&assignment)?).await?;
    *stored_as = Some(work_ack.await?.sequence);
    event_ack.await?;
    metrics::histogram!(m::DISPATCH_SECONDS).record(started.elapsed().as_secs_f64());
    msg.ack()
        .await
        .map_err(|e| BatchError::Ack(e.to_string()))?;
    Ok(())
}
