//! Admission: turning a client's submission into a queued job. Shared by the
//! HTTP API and both NATS intakes, so every door applies the same rules.

mod admitting;
mod batched;
mod refusals;
mod validate;

pub use admitting::Admitting;
pub use batched::Writers;
pub use refusals::{Rejection, SubmitError};

use std::sync::Arc;
use std::time::Instant;

use async_nats::jetstream::Context;
use switchyard_runtime::Registry;
use switchyard_runtime::grants::Grants;
use switchyard_runtime::nats;
use switchyard_schemas::{
    CodecError, Job, JobResult, Priority, SCHEMA_VERSION, Submission, Timeline, UsageEvent,
    WORKFLOW_RUN, encode, now_ms, subjects,
};
use tracing::{debug, warn};

use crate::billing;
use crate::budget::{self, Budgets};
use crate::error::Coded;
use crate::limits::{KeyLimits, Limits};
use crate::metrics as m;
use crate::pii::Pii;
use crate::webhooks::Webhooks;
use admitting::Held;
use batched::Batched;
use switchyard_store::quotas::{Holds, Settlement, run_reservation};
use switchyard_store::{Inserted, JobStore, Source, StoreError};

pub use validate::validate;

/// A new job's id, and whether some job may have it already.
#[derive(Debug, Clone)]
pub struct NewId {
    id: String,
    /// Drawn here at random: no job, recorded or queued, can have it.
    drawn: bool,
}

impl NewId {
    /// A random id (UUIDv7).
    pub fn draw() -> NewId {
        NewId {
            id: uuid::Uuid::now_v7().to_string(),
            drawn: true,
        }
    }

    /// An id the client chose, or made from its message: another job,
    /// even another tenant's, may have it.
    pub fn given(id: String) -> NewId {
        NewId { id, drawn: false }
    }

    pub fn as_str(&self) -> &str {
        &self.id
    }

    pub fn into_string(self) -> String {
        self.id
    }
}

/// Admits jobs: validates, records, and enqueues durably. A job counts as
/// queued only once JetStream has confirmed it.
#[derive(Clone)]
pub struct Admitter {
    registry: Arc<Registry>,
    store: Arc<dyn JobStore>,
    js: Context,
    webhooks: Arc<Webhooks>,
    pii: Arc<Pii>,
    budgets: Arc<Budgets>,
    limits: Arc<Limits>,
    grants: Grants,
    batched: Batched,
    admitting: Arc<Admitting>,
}

/// A request answered from the result cache.
pub struct Answered<'a> {
    pub submission: Submission,
    pub priority: Priority,
    pub id: String,
    pub source: Source,
    /// The caller's key, whose own limits apply.
    pub key: Option<&'a KeyLimits>,
}

/// What admission applies: the registry, the store, the queue, and the
/// tenants' policies.
pub struct Policies {
    pub registry: Arc<Registry>,
    pub store: Arc<dyn JobStore>,
    pub js: Context,
    pub webhooks: Arc<Webhooks>,
    pub pii: Arc<Pii>,
    pub budgets: Arc<Budgets>,
    pub limits: Arc<Limits>,
    pub grants: Grants,
}

impl Admitter {
    /// The admitter, and the writers of what it records, to run beside it
    /// (`Writers::run`).
    pub fn new(p: Policies) -> (Admitter, Writers) {
        let (batched, writers) = Batched::new(p.store.clone());
        let admitter = Admitter {
            registry: p.registry,
            store: p.store,
            js: p.js,
            webhooks: p.webhooks,
            pii: p.pii,
            budgets: p.budgets,
            limits: p.limits,
            grants: p.grants,
            batched,
            admitting: Arc::default(),
        };
        (admitter, writers)
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Reserves the most a workflow run of `tenant` may cost, for the whole
    /// run, if the tenant has a budget: its jobs draw on it, so a run that
    /// started is not refused half-way for want of budget. Refused as a
    /// job over budget is.
    pub async fn reserve_run(
        &self,
        tenant: &str,
        run_id: &str,
        micros: i64,
    ) -> Result<(), SubmitError> {
        let Some(r) = self
            .budgets
            .reservation(tenant, micros, now_ms(), Some(run_id))
        else {
            return Ok(());
        };
        match self.store.reserve_run(&r).await? {
            None => Ok(()),
            Some(left) => Err(Rejection::over_budget(tenant.to_owned(), left, micros).into()),
        }
    }

    /// Gives back what is left of a run's reservation (a run that was not
    /// kept after all).
    pub async fn release_run(&self, run_id: &str) -> Result<(), StoreError> {
        let rest = Settlement {
            job_id: run_reservation(run_id),
            cost_micros: 0,
        };
        self.store.settle(&[rest]).await
    }

    /// The jobs this broker is queuing while their records are written.
    pub fn admitting(&self) -> &Arc<Admitting> {
        &self.admitting
    }

    pub fn store(&self) -> &Arc<dyn JobStore> {
        &self.store
    }

    pub fn js(&self) -> &Context {
        &self.js
    }

    /// The grants' key: the broker vouches for the results it makes.
    pub fn grants(&self) -> &Grants {
        &self.grants
    }

    /// The key `id` with its own limits, for work submitted on its behalf
    /// later (a batch's lines).
    pub fn key_limits(&self, id: &str) -> KeyLimits {
        self.limits.key(id)
    }

    /// Checks a submission and builds its job, personal data masked.
    pub fn validate(
        &self,
        submission: Submission,
        priority: Priority,
        id: String,
    ) -> Result<Job, Rejection> {
        let mut job = validate(&self.registry, submission, priority, id)?;
        self.pii.apply(&mut job)?;
        Ok(job)
    }

    #[tracing::instrument(name = "job.admit", skip_all, fields(job_id = %id.as_str(), source = source.as_str()))]
    pub async fn submit(
        &self,
        submission: Submission,
        priority: Priority,
        id: NewId,
        source: Source,
        key: Option<&KeyLimits>,
    ) -> Result<Job, SubmitError> {
        let started = Instant::now();
        let reject = |r: &Rejection| {
            metrics::counter!(m::REJECTIONS, "source" => source.as_str(), "code" => r.code().as_str())
                .increment(1);
        };
        let drawn = id.drawn;
        let mut job = self
            .validate(submission, priority, id.into_string())
            .inspect_err(reject)?;
        job.api_key = key.map(|k| k.id.clone());
        self.webhooks.admit(&mut job).await.inspect_err(reject)?;
        // Last: nothing of the job changes after it but its attempts.
        job.seal = self.grants.seal(&job);
        self.take_rates(&job, key, source).await?;
        let places = self.limits.places(&job.tenant, key);
        let holds = Holds {
            places: places.iter().map(|(h, max, _)| (h.clone(), *max)).collect(),
            reservation: self.budgets.reservation(
                &job.tenant,
                budget::estimate(&self.registry, &job),
                now_ms(),
                job.metadata.get(WORKFLOW_RUN).map(String::as_str),
            ),
        };
        // Recorded with what the job holds, in one transaction, before the
        // queue's confirmation is answered: a crash before that leaves a
        // record the outbox publishes again, and a refusal leaves nothing.
        // A job that holds nothing shares its transaction with others.
        let tokens = job.input.expected_tokens();
        let (back, inserted, queued) = match holds.is_empty() {
            true => {
                self.record_holding_nothing(job, drawn, source, tokens)
                    .await?
            }
            false => {
                let inserted = self.store.insert(&job, source, tokens, &holds).await;
                (job, inserted, None)
            }
        };
        job = back;
        if let (Err(e), Some(Ok(()))) = (&inserted, &queued) {
            // Its client is told it was not queued; a durable submission is
            // delivered again and finds it queued already.
            warn!(job_id = %job.id, error = %e, "job queued, but its record failed");
        }
        match inserted? {
            Inserted::New | Inserted::Existing { enqueued: false } => {}
            // A repeat of a job already queued (a client retrying with its
            // own id, even past the server's de-duplication window): the
            // same job.
            Inserted::Existing { enqueued: true } => return Ok(job),
            Inserted::OtherTenant => {
                if queued.is_some() {
                    // Only two brokers admitting one new id for two tenants
                    // at once come here.
                    warn!(job_id = %job.id, "job queued under an id another tenant's record took as it was queued");
                }
                return Err(SubmitError::IdTaken(job.id));
            }
            Inserted::PlacesFull(full) => {
                metrics::counter!(m::REJECTIONS, "source" => source.as_str(), "code" => "rate_limited")
                    .increment(1);
                return Err(SubmitError::RateLimited {
                    tenant: job.tenant,
                    limit: places[full].2,
                    retry_after: 1,
                });
            }
            Inserted::OverBudget(left) => {
                let estimate = holds.reservation.map_or(0, |r| r.micros);
                let over = Rejection::over_budget(job.tenant, left, estimate);
                reject(&over);
                return Err(over.into());
            }
        }
        let queued = match queued {
            Some(queued) => queued,
            None => self.enqueue(&job).await,
        };
        match queued {
            Ok(()) => self.confirmed(&job.id).await,
            Err(EnqueueError::Unconfirmed(reason)) => {
                // The job may be in the queue already (only its confirmation
                // was lost): the record stays, unconfirmed, and the outbox
                // publishes it again under the same message id, which the
                // server drops if it has it. Discarding the record here would
                // leave a queued job with no record to project its result on.
                warn!(job_id = %job.id, %reason, "the queue did not confirm the job; the outbox will");
            }
            Err(refused) => {
                // The client is told the job was not queued, so no record of
                // it stays behind for the outbox to publish later.
                self.discard(&job.id).await;
                return Err(match refused {
                    EnqueueError::Full => SubmitError::QueueFull {
                        priority: job.priority,
                        model: job.model,
                    },
                    EnqueueError::Unconfirmed(reason) | EnqueueError::Unavailable(reason) => {
                        SubmitError::QueueUnavailable(reason)
                    }
                });
            }
        }
        debug!(job_id = %job.id, model = %job.model, priority = %job.priority, source = source.as_str(), "job queued");
        metrics::counter!(m::SUBMISSIONS, "source" => source.as_str()).increment(1);
        metrics::histogram!(m::SUBMIT_SECONDS).record(started.elapsed().as_secs_f64());
        Ok(job)
    }

    /// Records a job that holds nothing, and when no other job can have its
    /// id, queues it while the record is written: the job's way to its
    /// queue does not wait for the store. The queue's answer, when asked.
    async fn record_holding_nothing(
        &self,
        job: Job,
        drawn: bool,
        source: Source,
        tokens: u32,
    ) -> Result<RecordedAndQueued, SubmitError> {
        let Some(held) = self.free(&job.id, drawn).await? else {
            let (job, inserted) = self.batched.record(job, source, tokens).await;
            return Ok((job, inserted, None));
        };
        let queue = job.queue_subject();
        let msg_id = subjects::queued_msg_id(&job.id, job.attempt);
        let payload = encode(&job);
        let ((job, inserted), queued) = tokio::join!(
            self.batched.record(job, source, tokens),
            self.publish(queue, &msg_id, payload)
        );
        drop(held);
        Ok((job, inserted, Some(queued)))
    }

    /// A hold on job `id` while it is queued beside its record's write,
    /// when no other job has the id: none is recorded (a look-up, unless
    /// the id was drawn here). A submission of the same id in progress
    /// here is waited for, so that its record is found. None while the
    /// store fails its records.
    async fn free(&self, id: &str, drawn: bool) -> Result<Option<Held>, StoreError> {
        if self.batched.failing() {
            return Ok(None);
        }
        let held = loop {
            match self.admitting.hold(id) {
                Some(held) => break held,
                None => self.admitting.written(std::iter::once(id)).await,
            }
        };
        match drawn || !self.batched.recorded(id).await? {
            true => Ok(Some(held)),
            false => Ok(None),
        }
    }

    /// Forgets a job that was recorded but will not be queued, and gives
    /// back what it reserved of its tenant's budget.
    async fn discard(&self, id: &str) {
        if let Err(e) = self.store.discard_unqueued(id).await {
            warn!(job_id = %id, error = %e, "could not discard the unqueued job; the outbox will queue it");
            return;
        }
        let freed = Settlement {
            job_id: id.to_owned(),
            cost_micros: 0,
        };
        if let Err(e) = self.store.settle(&[freed]).await {
            warn!(job_id = %id, error = %e, "could not give back a budget reservation");
        }
    }

    /// Takes one request, and the job's estimated tokens, from its
    /// tenant's rate limits and its key's.
    async fn take_rates(
        &self,
        job: &Job,
        key: Option<&KeyLimits>,
        source: Source,
    ) -> Result<(), SubmitError> {
        let takes = self
            .limits
            .takes(&job.tenant, key, job.input.expected_tokens());
        if takes.is_empty() {
            return Ok(());
        }
        let Some((limit, wait_us)) = self.store.take(&takes, now_ms() * 1000).await? else {
            return Ok(());
        };
        metrics::counter!(m::REJECTIONS, "source" => source.as_str(), "code" => "rate_limited")
            .increment(1);
        Err(SubmitError::RateLimited {
            tenant: job.tenant.clone(),
            limit,
            retry_after: u64::try_from(wait_us)
                .unwrap_or(0)
                .div_ceil(1_000_000)
                .max(1),
        })
    }

    /// Records a job answered without running (a result cache hit): queued
    /// and succeeded at once, never put in a queue. It takes from the same
    /// rate limits as any request, and its price from the budget.
    pub async fn record_answered(
        &self,
        req: Answered<'_>,
        output: serde_json::Value,
    ) -> Result<Job, SubmitError> {
        let mut job = self.validate(req.submission, req.priority, req.id)?;
        job.api_key = req.key.map(|k| k.id.clone());
        self.webhooks.admit(&mut job).await?;
        self.take_rates(&job, req.key, req.source).await?;
        let now = now_ms();
        let usage = output
            .get("usage")
            .and_then(|u| serde_json::from_value(u.clone()).ok())
            .unwrap_or_default();
        // Billed at the cache-hit price, once: the key is (job, attempt).
        let charge = billing::charge(
            &self.registry,
            UsageEvent {
                v: SCHEMA_VERSION,
                job_id: job.id.clone(),
                attempt: job.attempt,
                node: "cache".into(),
                model: job.model.clone(),
                usage,
                engine_ms: 0,
                at_ms: now,
                proof: None,
            },
            true,
        );
        let holds = Holds {
            places: Vec::new(),
            reservation: self.budgets.reservation(
                &job.tenant,
                charge.cost_micros,
                now,
                job.metadata.get(WORKFLOW_RUN).map(String::as_str),
            ),
        };
        match self
            .store
            .insert(&job, req.source, job.input.expected_tokens(), &holds)
            .await?
        {
            Inserted::New => {}
            Inserted::OverBudget(left) => {
                return Err(Rejection::over_budget(job.tenant, left, charge.cost_micros).into());
            }
            // Each call has an id of its own: any other answer is another
            // job's id.
            _ => return Err(SubmitError::IdTaken(job.id)),
        }
        // Counted as confirmed: nothing is left for the outbox to queue.
        self.store.mark_enqueued(&[job.id.clone()], now).await?;
        let result = JobResult {
            finished_at_ms: now,
            ..JobResult::succeeded(&job.id, job.attempt, Timeline::default(), output, usage)
        };
        let spent = Settlement {
            job_id: job.id.clone(),
            cost_micros: charge.cost_micros,
        };
        self.store
            .apply_results(&[result], &[charge], &|_| false)
            .await?;
        self.store.settle(&[spent]).await?;
        metrics::counter!(m::SUBMISSIONS, "source" => req.source.as_str()).increment(1);
        Ok(job)
    }

    /// Records that the queue confirmed job `id`, soon and with others.
    pub async fn confirmed(&self, id: &str) {
        self.batched.mark(id).await;
    }

    /// Publishes the job to its queue and waits for the server's confirmation.
    /// The message id names the job and attempt, so a repeat is dropped.
    pub async fn enqueue(&self, job: &Job) -> Result<(), EnqueueError> {
        let msg_id = subjects::queued_msg_id(&job.id, job.attempt);
        self.publish(job.queue_subject(), &msg_id, encode(job))
            .await
    }

    async fn publish(
        &self,
        queue: String,
        msg_id: &str,
        payload: Result<Vec<u8>, CodecError>,
    ) -> Result<(), EnqueueError> {
        let payload = payload.map_err(|e| EnqueueError::Unavailable(e.to_string()))?;
        let classify = |e: async_nats::jetstream::context::PublishError| {
            if nats::is_limit_refusal(&e) {
                EnqueueError::Full
            } else if e.kind() == async_nats::jetstream::context::PublishErrorKind::TimedOut {
                EnqueueError::Unconfirmed(e.to_string())
            } else {
                EnqueueError::Unavailable(e.to_string())
            }
        };
        nats::publish(&self.js, queue, msg_id, payload)
            .await
            .map_err(classify)?
            .await
            .map_err(classify)?;
        Ok(())
    }
}

/// A job back from its record's write, what the write answered, and the
/// queue's answer when it was queued beside it.
type RecordedAndQueued = (
    Job,
    Result<Inserted, StoreError>,
    Option<Result<(), EnqueueError>>,
);

#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    #[error("the queue is full")]
    Full,
    /// Sent, but its acknowledgement did not come in time: it may be stored.
    #[error("{0}")]
    Unconfirmed(String),
    /// Not stored.
    #[error("{0}")]
    Unavailable(String),
}
