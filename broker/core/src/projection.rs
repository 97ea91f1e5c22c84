//! Keeps the job store in step with the streams: lifecycle events, results
//! (with the usage most carry) and usage reported on its own are written in
//! batches, one transaction each, and acknowledged only after the commit.
//! Every write is idempotent, so redelivery is harmless. A message about a
//! job with no record yet (queued as its record was written, by another
//! broker or before a crash) is delivered again later, until the record
//! comes or [`UNRECORDED_FOR`] has passed.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::object_store::ObjectStore;
use async_nats::jetstream::{AckKind, Message};
use futures::StreamExt;
use serde::de::DeserializeOwned;
use switchyard_runtime::Registry;
use switchyard_runtime::large::{self, LargeError};
use switchyard_schemas::{JobResult, Outcome, UsageEvent, Versioned, decode};
use switchyard_store::ledger::Charge;
use switchyard_store::quotas::Settlement;
use switchyard_store::{JobStore, Status, StoreError};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::billing;
use crate::budget::{self, Budgets};
use crate::limits::Limits;
use crate::metrics as m;
use crate::recorded::Recorded;

/// How long a message waits for its job's record before it is dropped:
/// the queues' duplicate window, past which the job's admission cannot be
/// in progress (a durable submission is admitted again well within it).
pub const UNRECORDED_FOR: Duration = Duration::from_secs(600);

/// Of a batch, the items not applied for want of their job's record, by
/// index: delivered again later.
pub type Unrecorded = Vec<usize>;

/// Follows one stream until `shutdown`, applying each batch with `apply`.
/// A message `vouched` refuses (a node's claim about work it was not
/// assigned) is counted, deleted from the stream and never applied.
pub async fn follow<T, V, F, Fut, E>(
    stream_name: &'static str,
    consumer: PullConsumer,
    batch: usize,
    store: Arc<dyn JobStore>,
    (vouched, apply): (V, F),
    shutdown: CancellationToken,
) where
    T: DeserializeOwned + Versioned,
    V: Fn(&T) -> bool,
    F: Fn(Arc<dyn JobStore>, Vec<T>) -> Fut,
    Fut: Future<Output = Result<Unrecorded, E>>,
    E: std::fmt::Display,
{
    let read = |msg: &Message| decode::<T>(&msg.payload).map_err(|e| e.to_string());
    follow_with(
        stream_name,
        consumer,
        batch,
        store,
        (read, vouched, apply),
        shutdown,
    )
    .await
}

/// [`follow`], with messages read by `read`: for a stream whose messages
/// are not the wire format's, or say what they are about in their subject.
pub async fn follow_with<T, R, V, F, Fut, E>(
    stream_name: &'static str,
    consumer: PullConsumer,
    batch: usize,
    store: Arc<dyn JobStore>,
    (read, vouched, apply): (R, V, F),
    shutdown: CancellationToken,
) where
    R: Fn(&Message) -> Result<T, String>,
    V: Fn(&T) -> bool,
    F: Fn(Arc<dyn JobStore>, Vec<T>) -> Fut,
    Fut: Future<Output = Result<Unrecorded, E>>,
    E: std::fmt::Display,
{
    let messages = loop {
        match consumer
            .stream()
            .max_messages_per_batch(batch)
            .messages()
            .await
        {
            Ok(m) => break m,
            Err(e) => {
                warn!(stream = stream_name, error = %e, "cannot follow stream; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    };
    let mut chunks = messages.ready_chunks(batch);
    loop {
        let chunk = tokio::select! {
            () = shutdown.cancelled() => return,
            chunk = chunks.next() => match chunk {
                Some(chunk) => chunk,
                None => return,
            },
        };
        let mut items = Vec::with_capacity(chunk.len());
        let mut msgs: Vec<Message> = Vec::with_capacity(chunk.len());
        for msg in chunk {
            let msg = match msg {
                Ok(msg) => msg,
                Err(e) => {
                    warn!(stream = stream_name, error = %e, "stream read failed");
                    continue;
                }
            };
            match read(&msg) {
                Ok(item) if vouched(&item) => {
                    items.push(item);
                    msgs.push(msg);
                }
                Ok(_) => drop_forged(stream_name, msg).await,
                Err(e) => {
                    // A forged or corrupt message must not block the ones after it.
                    warn!(stream = stream_name, subject = %msg.subject, error = %e, "undecodable message terminated");
                    let _ = msg.ack_with(AckKind::Term).await;
                }
            }
        }
        if items.is_empty() {
            continue;
        }
        let n = items.len();
        let (kind, unrecorded) = match apply(store.clone(), items).await {
            Ok(unrecorded) => {
                let written = n - unrecorded.len();
                metrics::counter!(m::PROJECTED, "stream" => stream_name).increment(written as u64);
                (AckKind::Ack, unrecorded)
            }
            Err(e) => {
                warn!(stream = stream_name, error = %e, "store write failed; batch will be redelivered");
                (AckKind::Nak(Some(Duration::from_secs(1))), Vec::new())
            }
        };
        futures::future::join_all(msgs.iter().enumerate().map(|(i, msg)| {
            let kind = match unrecorded.contains(&i) {
                true => unrecorded_again(stream_name, msg),
                false => kind,
            };
            msg.ack_with(kind)
        }))
        .await;
    }
}

/// When a message about a job with no record yet comes again: after 50 ms,
/// doubling at each delivery up to 30 s, until [`UNRECORDED_FOR`] has
/// passed since it was published; then never.
fn unrecorded_again(stream_name: &'static str, msg: &Message) -> AckKind {
    let (delivered, age) = msg.info().map_or((1, Duration::ZERO), |info| {
        let published = SystemTime::from(info.published);
        let age = SystemTime::now()
            .duration_since(published)
            .unwrap_or_default();
        (info.delivered, age)
    });
    if age > UNRECORDED_FOR {
        warn!(stream = stream_name, subject = %msg.subject, "message dropped: its job was never recorded");
        metrics::counter!(m::UNRECORDED, "stream" => stream_name, "outcome" => "dropped")
            .increment(1);
        return AckKind::Term;
    }
    metrics::counter!(m::UNRECORDED, "stream" => stream_name, "outcome" => "later").increment(1);
    let doublings = u32::try_from(delivered.clamp(1, 16) - 1).unwrap_or(0);
    AckKind::Nak(Some(
        (Duration::from_millis(50) * (1 << doublings)).min(Duration::from_secs(30)),
    ))
}

/// Deletes a forged message, so that no reader of the stream meets it
/// again and a result some node forged first does not keep the real one
/// out.
async fn drop_forged(stream_name: &'static str, msg: Message) {
    warn!(stream = stream_name, subject = %msg.subject, "message no assignment vouches for dropped");
    metrics::counter!(m::FORGED, "stream" => stream_name).increment(1);
    if let Ok(info) = msg.info() {
        let seq = info.stream_sequence;
        match msg.context.get_stream_no_info(stream_name).await {
            Ok(stream) => {
                if let Err(e) = stream.delete_message(seq).await {
                    warn!(stream = stream_name, seq, error = %e, "forged message not deleted");
                }
            }
            Err(e) => warn!(stream = stream_name, error = %e, "forged message not deleted"),
        }
    }
    let _ = msg.ack_with(AckKind::Term).await;
}

/// Why a batch of results was not recorded (it is delivered again).
#[derive(Debug, thiserror::Error)]
pub enum ProjectError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Large(LargeError),
}

/// What recording results takes besides the store: outputs kept apart,
/// prices, and the limits and budgets a finished job frees.
#[derive(Clone)]
pub struct Results {
    pub large: ObjectStore,
    pub registry: Arc<Registry>,
    pub limits: Arc<Limits>,
    pub budgets: Arc<Budgets>,
    /// The calls waiting on their job's record, woken as it is recorded.
    pub recorded: Arc<Recorded>,
}

impl Results {
    /// Records a batch of results, then settles what the jobs held.
    pub async fn apply(
        &self,
        store: Arc<dyn JobStore>,
        mut items: Vec<JobResult>,
    ) -> Result<Unrecorded, ProjectError> {
        for r in &mut items {
            match large::resolve(&self.large, r).await {
                Ok(()) => {}
                // Kept no longer than results: recorded without it.
                Err(e @ LargeError::Gone(_)) => warn!(error = %e, "large output lost"),
                Err(e) => return Err(ProjectError::Large(e)),
            }
        }
        // The usage a result carries goes into the ledger in its
        // transaction; the rest comes on `BILLING`.
        let charges: Vec<Charge> = items
            .iter_mut()
            .filter_map(|r| r.usage_record.take())
            .map(|u| billing::charge(&self.registry, u, false))
            .collect();
        // The records come back with the write for the calls waiting on
        // them, and for budgets, which price each job as recorded.
        let budgets = self.budgets.any();
        let wanted = |id: &str| budgets || self.recorded.waits_for(id);
        let applied = store.apply_results(&items, &charges, &wanted).await?;
        count_costs(&charges, &applied.new_charges);
        let unrecorded = applied.unrecorded;
        let written: Vec<&JobResult> = (0..items.len())
            .filter(|i| !unrecorded.contains(i))
            .map(|i| &items[i])
            .collect();
        self.recorded
            .recorded(written.iter().map(|r| r.job_id.as_str()), &applied.records);
        // Only budgets and queued-job limits hold anything for a result to
        // settle.
        if budgets || self.limits.holds_places() {
            let mut jobs = Vec::with_capacity(written.len());
            for r in &written {
                let written = applied.records.iter().find(|j| j.id == r.job_id);
                let cost_micros = match (budgets, written) {
                    (false, _) => 0,
                    (true, Some(job)) => budget::job_cost(&self.registry, job),
                    // Its record had ended before: priced as it stands.
                    (true, None) => store
                        .get(&r.job_id)
                        .await?
                        .map_or(0, |job| budget::job_cost(&self.registry, &job)),
                };
                jobs.push(Settlement {
                    job_id: r.job_id.clone(),
                    cost_micros,
                });
            }
            store.settle(&jobs).await?;
        }
        if self.limits.counts_tokens() {
            let used: Vec<(String, u32)> = written
                .iter()
                .filter_map(|r| match &r.outcome {
                    Outcome::Succeeded { usage, .. } => Some((
                        r.job_id.clone(),
                        usage.prompt_tokens + usage.completion_tokens,
                    )),
                    Outcome::Failed { .. } => None,
                })
                .collect();
            store
                .correct_limits(&used, &self.limits.token_rates())
                .await?;
        }
        for r in &written {
            let status = Status::of(&r.outcome).as_str();
            metrics::counter!(m::FINISHED, "status" => status).increment(1);
        }
        Ok(unrecorded)
    }
}

/// Records usage events in the ledger, priced; an event seen again
/// records nothing and is counted once.
pub async fn record_usage(
    store: Arc<dyn JobStore>,
    registry: &Registry,
    items: Vec<UsageEvent>,
) -> Result<(), StoreError> {
    let charges: Vec<Charge> = items
        .into_iter()
        .map(|u| billing::charge(registry, u, false))
        .collect();
    let new = store.record_usage(&charges).await?;
    count_costs(&charges, &new);
    Ok(())
}

/// Counts the cost of the charges the ledger took for the first time.
fn count_costs(charges: &[Charge], new: &[usize]) {
    for &i in new {
        let c = &charges[i];
        metrics::counter!(m::USAGE_COST, "model" => c.usage.model.clone())
            .increment(u64::try_from(c.cost_micros).unwrap_or(0));
    }
}
