//! The job queues the dispatcher drains, and their lanes: one JetStream
//! consumer per tenant with jobs queued, opened on first use and closed once
//! the tenant's backlog has drained.
//!
//! Every consumer of a work-queue stream costs the server on each
//! acknowledgement (it checks each consumer for interest) and on each new
//! consumer (it checks each for overlap), so lanes kept for idle tenants
//! make every job dearer as tenants come and go. Only the tenants with
//! jobs queued, or queued a moment ago, keep a lane.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::{self, Context};
use futures::{StreamExt, TryStreamExt};
use switchyard_runtime::Registry;
use switchyard_runtime::nats::{self, ConsumerSpec, NatsError};
use switchyard_schemas::{Priority, subjects};
use tracing::debug;

use crate::DispatcherConfig;
use crate::fair::FairShare;

/// A lane whose consumer no dispatcher closed (one stopped first) is removed
/// by the server after this long unused.
const LANE_IDLE_EXPIRY: Duration = Duration::from_secs(3600);

/// How long a lane stays open after its tenant's backlog drained: a tenant
/// that submits steadily keeps its lane between jobs, instead of a consumer
/// made and removed for each.
const DRAINED_LINGER: Duration = Duration::from_secs(2);

/// The most lanes one sweep closes, so that a burst of drained tenants
/// cannot hold up placement; the rest close in the sweeps after.
const CLOSES_PER_SWEEP: usize = 256;

/// One tenant's lane.
struct Lane {
    consumer: PullConsumer,
    /// Since when its tenant has had nothing queued, as last seen.
    drained_since: Option<Instant>,
}

/// One queue the dispatcher drains: the jobs of one model at one priority,
/// one lane (subject and consumer) per tenant, shared out by weight.
pub(crate) struct Queue {
    pub(crate) priority: Priority,
    pub(crate) model: String,
    /// `sy.jobs.<priority>.<model>`; a tenant's lane adds its name.
    pub(crate) prefix: String,
    lanes: HashMap<String, Lane>,
    pub(crate) fair: FairShare,
}

impl Queue {
    /// The queues of the registry's models at every priority, highest
    /// first; those of `held` that stay are kept with their lanes.
    pub(crate) fn all(registry: &Registry, mut held: Vec<Queue>) -> Vec<Queue> {
        let models = registry.models();
        let mut queues = Vec::new();
        for priority in Priority::ALL {
            for model in &models {
                let prefix = subjects::jobs_of_model(priority, &model.name);
                queues.push(match held.iter().position(|q| q.prefix == prefix) {
                    Some(i) => held.swap_remove(i),
                    None => Queue {
                        priority,
                        model: model.name.clone(),
                        prefix,
                        lanes: HashMap::new(),
                        fair: FairShare::default(),
                    },
                });
            }
        }
        queues
    }

    /// Tenants with a lane open.
    pub(crate) fn open_lanes(&self) -> impl Iterator<Item = &String> {
        self.lanes.keys()
    }

    /// Whether any lane is open.
    pub(crate) fn has_lanes(&self) -> bool {
        !self.lanes.is_empty()
    }

    /// How many lanes are open.
    pub(crate) fn lanes_open(&self) -> usize {
        self.lanes.len()
    }

    /// Forgets a lane whose consumer failed: it is opened again next time.
    pub(crate) fn forget(&mut self, tenant: &str) {
        self.lanes.remove(tenant);
    }

    fn durable(&self, tenant: &str) -> String {
        format!(
            "dispatch-{}-{}-{tenant}",
            self.priority,
            subjects::model_token(&self.model)
        )
    }

    /// The tenant's lane, its consumer created on first use.
    pub(crate) async fn lane(
        &mut self,
        js: &Context,
        tenant: &str,
        cfg: &DispatcherConfig,
    ) -> Result<PullConsumer, NatsError> {
        if let Some(lane) = self.lanes.get_mut(tenant) {
            lane.drained_since = None;
            return Ok(lane.consumer.clone());
        }
        let durable = self.durable(tenant);
        let spec = || ConsumerSpec {
            stream: subjects::JOBS_STREAM,
            durable: durable.clone(),
            filter: subjects::jobs(self.priority, &self.model, tenant),
            ack_wait: cfg.ack_wait,
            max_ack_pending: i64::from(cfg.max_batch) * 4,
            inactive_threshold: LANE_IDLE_EXPIRY,
            // A server writing each lane's state to disk at every ack costs
            // a file write per job per lane: thousands of tenants' lanes
            // would cost more than their jobs. A job delivered twice is
            // placed once (the assignment's message id is its attempt).
            state_in_memory: true,
        };
        let consumer = match nats::durable_consumer(js, spec()).await {
            Ok(consumer) => consumer,
            Err(e) => {
                // A lane as an earlier release made it, or one left in a
                // bad state: made afresh, its jobs delivered again.
                debug!(error = %e, %tenant, "lane made afresh");
                let _ = js
                    .delete_consumer_from_stream(&durable, subjects::JOBS_STREAM)
                    .await;
                nats::durable_consumer(js, spec()).await?
            }
        };
        self.lanes.insert(
            tenant.to_owned(),
            Lane {
                consumer: consumer.clone(),
                drained_since: None,
            },
        );
        Ok(consumer)
    }

    /// Closes the lanes of tenants that have had nothing queued for
    /// `DRAINED_LINGER`, given `queued`, the tenants with jobs queued now
    /// as the server counted them. Only a lane with no message left in its
    /// subject closes, so no job waits on a consumer being removed; one
    /// that arrives meanwhile is delivered by the lane opened next.
    /// Returns how many closed.
    pub(crate) async fn close_drained(
        &mut self,
        js: &Context,
        queued: &[String],
        now: Instant,
        budget: usize,
    ) -> usize {
        let queued: HashSet<&str> = queued.iter().map(String::as_str).collect();
        let mut drained = Vec::new();
        for (tenant, lane) in &mut self.lanes {
            if queued.contains(tenant.as_str()) {
                lane.drained_since = None;
                continue;
            }
            let since = *lane.drained_since.get_or_insert(now);
            if drained.len() < budget && now.duration_since(since) >= DRAINED_LINGER {
                drained.push(tenant.clone());
            }
        }
        for tenant in &drained {
            self.lanes.remove(tenant);
        }
        let durables: Vec<String> = drained.iter().map(|t| self.durable(t)).collect();
        futures::stream::iter(durables)
            .for_each_concurrent(32, |durable| async move {
                // One another dispatcher closed first, or the server already
                // removed, needs nothing more.
                if let Err(e) = js
                    .delete_consumer_from_stream(&durable, subjects::JOBS_STREAM)
                    .await
                {
                    debug!(error = %e, %durable, "drained lane not closed");
                }
            })
            .await;
        drained.len()
    }
}

/// Closes drained lanes across `queues`, at most `CLOSES_PER_SWEEP` in all.
pub(crate) async fn close_drained(
    queues: &mut [Queue],
    js: &Context,
    backlog: &HashMap<String, Vec<String>>,
    now: Instant,
) {
    let mut budget = CLOSES_PER_SWEEP;
    for q in queues.iter_mut().filter(|q| q.has_lanes()) {
        let queued = backlog.get(&q.prefix).map(Vec::as_slice).unwrap_or(&[]);
        budget -= q.close_drained(js, queued, now, budget).await;
        if budget == 0 {
            break;
        }
    }
}

/// When the queues need a look. Every heartbeat wakes the dispatcher, and a
/// look is a request to the server: a thousand idle nodes would make a
/// thousand a second. Queues found empty stay empty until a job is
/// published to them, which rings the doorbell, so they are not looked at
/// again until it rings, or `RECHECK` has passed in case a ring was lost.
pub(crate) struct Looks {
    /// When a look found every queue empty, with no ring before it.
    empty_at: Option<Instant>,
    /// The doorbell rang since the last look.
    rang: bool,
    /// How often queues found empty are looked at anyway.
    recheck: Duration,
}

/// Queues found empty are looked at again at least this often, however
/// quiet the doorbell: it is a plain subscription, which a slow reader can
/// lose messages on.
const RECHECK: Duration = Duration::from_secs(1);

impl Looks {
    pub(crate) fn new(idle_poll: Duration) -> Looks {
        Looks {
            empty_at: None,
            rang: false,
            recheck: RECHECK.max(idle_poll),
        }
    }

    /// A job was published to a queue.
    pub(crate) fn rang(&mut self) {
        self.rang = true;
        self.empty_at = None;
    }

    /// Whether the queues need a look now.
    pub(crate) fn due(&self, now: Instant) -> bool {
        self.empty_at
            .is_none_or(|at| now.duration_since(at) >= self.recheck)
    }

    /// What a look at `now` found. A ring heard before the look may be for
    /// a job the server had not stored yet when it answered (the doorbell
    /// is told as the job is received, the stream stores it after): then
    /// the next look is not skipped.
    pub(crate) fn looked(&mut self, seen: Option<&HashMap<String, Vec<String>>>, now: Instant) {
        let empty = seen.is_some_and(HashMap::is_empty);
        self.empty_at = (empty && !self.rang).then_some(now);
        self.rang = false;
    }
}

/// Tenants with jobs queued now, by queue prefix. One request answers for
/// every queue, so an idle dispatcher costs the same whatever the number of
/// models and tenants. `None` when the server could not say: then every
/// lane already known is tried.
pub(crate) async fn backlog(
    jobs: &jetstream::stream::Stream,
) -> Option<HashMap<String, Vec<String>>> {
    let counts = jobs.info_with_subjects(subjects::JOBS_ALL).await.ok()?;
    let counts: Vec<(String, usize)> = counts.try_collect().await.ok()?;
    let mut backlog: HashMap<String, Vec<String>> = HashMap::new();
    for (subject, n) in counts {
        if let (true, Some((prefix, tenant))) = (n > 0, subject.rsplit_once('.')) {
            backlog
                .entry(prefix.to_owned())
                .or_default()
                .push(tenant.to_owned());
        }
    }
    Some(backlog)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queued(tenants: &[&str]) -> HashMap<String, Vec<String>> {
        HashMap::from([(
            "sy.jobs.normal.m".to_owned(),
            tenants.iter().map(|t| (*t).to_owned()).collect(),
        )])
    }

    #[test]
    fn queues_found_empty_are_looked_at_again_only_once_the_doorbell_rings() {
        let start = Instant::now();
        let mut looks = Looks::new(Duration::from_millis(20));
        assert!(looks.due(start), "the first look is never skipped");
        looks.looked(Some(&HashMap::new()), start);
        let soon = start + Duration::from_millis(100);
        assert!(!looks.due(soon), "empty, and nothing published since");
        looks.rang();
        assert!(looks.due(soon), "a job was published");
    }

    #[test]
    fn queues_with_jobs_or_unknown_are_looked_at_every_time() {
        let start = Instant::now();
        let soon = start + Duration::from_millis(1);
        let mut looks = Looks::new(Duration::from_millis(20));
        looks.looked(Some(&queued(&["t1"])), start);
        assert!(looks.due(soon), "jobs wait");
        looks.looked(None, start);
        assert!(looks.due(soon), "the server could not say");
    }

    #[test]
    fn a_ring_heard_before_an_empty_look_keeps_the_next_look() {
        // The doorbell hears of a job as the server receives it; the look
        // can be answered before the stream has stored it.
        let start = Instant::now();
        let mut looks = Looks::new(Duration::from_millis(20));
        looks.looked(Some(&HashMap::new()), start);
        looks.rang();
        looks.looked(Some(&HashMap::new()), start);
        assert!(looks.due(start + Duration::from_millis(1)));
        looks.looked(Some(&HashMap::new()), start);
        assert!(!looks.due(start + Duration::from_millis(1)));
    }

    #[test]
    fn queues_found_empty_are_looked_at_anyway_after_the_recheck() {
        let start = Instant::now();
        let mut looks = Looks::new(Duration::from_millis(20));
        looks.looked(Some(&HashMap::new()), start);
        assert!(!looks.due(start + RECHECK - Duration::from_millis(1)));
        assert!(
            looks.due(start + RECHECK),
            "a lost ring costs at most the recheck"
        );
    }
}
