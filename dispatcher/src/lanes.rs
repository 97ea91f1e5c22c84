//! The job queues the dispatcher drains, and their lanes: one JetStream
//! consumer per tenant with jobs queued, opened on first use and closed once
//! the tenant's backlog has drained, or once more lanes are open than
//! `dispatcher.max_lanes` and it was served longest ago.
//!
//! Every consumer of a work-queue stream costs the server on each
//! acknowledgement (it checks each consumer for interest) and on each new
//! consumer (it checks each for overlap), so lanes kept for idle tenants
//! make every job dearer as tenants come and go, and so do thousands of
//! backlogged tenants' lanes kept open at once. Only the tenants with jobs
//! queued, or queued a moment ago, keep a lane, and only so many of them.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use async_nats::jetstream::Context;
use async_nats::jetstream::consumer::PullConsumer;
use futures::StreamExt;
use switchyard_runtime::Registry;
use switchyard_runtime::nats::{self, ConsumerSpec, NatsError};
use switchyard_schemas::{Priority, subjects};
use tracing::debug;

use crate::DispatcherConfig;
use crate::backlog::Queued;
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
    /// When its tenant last had a turn.
    served_at: Instant,
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

    /// The tenant's lane, if it is open.
    pub(crate) fn open_lane(&self, tenant: &str) -> Option<&PullConsumer> {
        self.lanes.get(tenant).map(|lane| &lane.consumer)
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
            lane.served_at = Instant::now();
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
                served_at: Instant::now(),
            },
        );
        Ok(consumer)
    }

    /// Takes out the lanes of tenants that have had nothing queued for
    /// `DRAINED_LINGER`, given `queued`, the tenants with jobs queued now
    /// as the server counted them, at most `budget`. Only a lane with no
    /// message left in its subject goes, so no job waits on a consumer
    /// being removed; one that arrives meanwhile is delivered by the lane
    /// opened next. Returns the consumers to delete.
    fn take_drained(
        &mut self,
        queued: Option<&HashSet<String>>,
        now: Instant,
        budget: usize,
    ) -> Vec<String> {
        let mut drained = Vec::new();
        for (tenant, lane) in &mut self.lanes {
            if queued.is_some_and(|q| q.contains(tenant)) {
                lane.drained_since = None;
                continue;
            }
            let since = *lane.drained_since.get_or_insert(now);
            if drained.len() < budget && now.duration_since(since) >= DRAINED_LINGER {
                drained.push(tenant.clone());
            }
        }
        drained.iter().map(|t| self.take(t)).collect()
    }

    /// Takes out the tenant's lane; returns its consumer to delete.
    fn take(&mut self, tenant: &str) -> String {
        self.lanes.remove(tenant);
        self.durable(tenant)
    }
}

/// Closes lanes across `queues`, at most `CLOSES_PER_SWEEP` in all: those
/// of drained tenants, then, while more than `max_lanes` are open, those
/// served longest ago. A lane closed with jobs queued leaves them in the
/// stream, delivered by the lane its tenant's next turn opens. Called
/// between sweeps, when every job pulled has been acknowledged; one whose
/// acknowledgement the server had not yet applied when its lane went is
/// delivered again, and placed once (the assignment's message id is its
/// attempt).
pub(crate) async fn close_lanes(
    queues: &mut [Queue],
    js: &Context,
    backlog: &Queued,
    max_lanes: usize,
    now: Instant,
) {
    let mut closing = Vec::new();
    for q in queues.iter_mut().filter(|q| q.has_lanes()) {
        let queued = backlog.get(&q.prefix);
        closing.extend(q.take_drained(queued, now, CLOSES_PER_SWEEP - closing.len()));
        if closing.len() == CLOSES_PER_SWEEP {
            break;
        }
    }
    let open: usize = queues.iter().map(Queue::lanes_open).sum();
    let over = open
        .saturating_sub(max_lanes)
        .min(CLOSES_PER_SWEEP - closing.len());
    if over > 0 {
        let mut by_turn: Vec<(Instant, usize, String)> = queues
            .iter()
            .enumerate()
            .flat_map(|(i, q)| {
                q.lanes
                    .iter()
                    .map(move |(t, l)| (l.served_at, i, t.clone()))
            })
            .collect();
        by_turn.sort_unstable();
        for (_, i, tenant) in by_turn.into_iter().take(over) {
            closing.push(queues[i].take(&tenant));
        }
    }
    futures::stream::iter(closing)
        .for_each_concurrent(32, |durable| async move {
            // One another dispatcher closed first, or the server already
            // removed, needs nothing more.
            if let Err(e) = js
                .delete_consumer_from_stream(&durable, subjects::JOBS_STREAM)
                .await
            {
                debug!(error = %e, %durable, "lane not closed");
            }
        })
        .await;
}
