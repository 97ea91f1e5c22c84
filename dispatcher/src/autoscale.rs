//! How many nodes each model needs, for autoscalers: KEDA reads
//! `switchyard_dispatcher_desired_replicas{model}` from the metrics, other
//! tools `sy.autoscale.<model>`.
//!
//! Little's law: a model that receives λ jobs a second, each holding a slot
//! for S seconds, keeps λ·S slots busy. The backlog B must also drain within
//! `drain_target` T: B·S/T slots more. Divided by the slots of one node at
//! the target utilisation, rounded up: the nodes wanted. A model with work
//! (queued or running) wants at least one node, so a pool scaled to zero
//! comes back when a job arrives; a model without work wants none.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_nats::jetstream::{Context, stream::Stream};
use serde::Deserialize;
use switchyard_runtime::{Issues, Registry, nats};
use switchyard_schemas::{
    AutoscaleSignal, Job, Priority, QueueDepth, SCHEMA_VERSION, decode, encode, now_ms, subjects,
};
use tracing::debug;

use crate::{Cluster, metrics as m};

/// The `dispatcher.autoscale` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AutoscaleConfig {
    /// How often the signal is computed and published.
    #[serde(with = "humantime_serde")]
    pub every: Duration,
    /// The backlog should be gone within this long.
    #[serde(with = "humantime_serde")]
    pub drain_target: Duration,
    /// The share of its slots a node should keep busy.
    pub target_utilization: f64,
    /// Slots of a node, for a model no node serves yet.
    pub slots_per_node: u32,
    /// Time a job holds a slot, for a model no node has timed yet.
    #[serde(with = "humantime_serde")]
    pub service_time: Duration,
    /// Arrivals are averaged over about this long.
    #[serde(with = "humantime_serde")]
    pub rate_window: Duration,
}

impl Default for AutoscaleConfig {
    fn default() -> Self {
        Self {
            every: Duration::from_secs(1),
            drain_target: Duration::from_secs(60),
            target_utilization: 0.8,
            slots_per_node: 8,
            service_time: Duration::from_secs(1),
            rate_window: Duration::from_secs(15),
        }
    }
}

impl AutoscaleConfig {
    pub fn validate(&self, issues: &mut Issues) {
        issues.check(
            self.target_utilization > 0.0 && self.target_utilization <= 1.0,
            "dispatcher.autoscale.target_utilization",
            self.target_utilization,
            "must be above 0 and at most 1",
        );
        issues.check(
            self.slots_per_node >= 1,
            "dispatcher.autoscale.slots_per_node",
            self.slots_per_node,
            "must be at least 1",
        );
        for (field, value) in [
            ("every", self.every),
            ("drain_target", self.drain_target),
            ("service_time", self.service_time),
            ("rate_window", self.rate_window),
        ] {
            issues.check(
                !value.is_zero(),
                &format!("dispatcher.autoscale.{field}"),
                value,
                "must be more than 0",
            );
        }
    }
}

/// What one model asks of the cluster now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Demand {
    /// Jobs arriving per second.
    pub arrivals_per_s: f64,
    /// Jobs waiting in the queue.
    pub queued: u64,
    /// Jobs on nodes.
    pub running: u32,
    /// Seconds a job holds a slot.
    pub service_s: f64,
    pub slots_per_node: u32,
}

/// The nodes `demand` needs.
pub fn desired_nodes(demand: &Demand, cfg: &AutoscaleConfig) -> u32 {
    // Fewer than one job expected over the window: no arrivals to speak of.
    let arriving = demand.arrivals_per_s * cfg.rate_window.as_secs_f64() >= 0.5;
    if demand.queued == 0 && demand.running == 0 && !arriving {
        return 0;
    }
    let busy = demand.arrivals_per_s * demand.service_s;
    let draining = demand.queued as f64 * demand.service_s / cfg.drain_target.as_secs_f64();
    let per_node = f64::from(demand.slots_per_node.max(1)) * cfg.target_utilization;
    let nodes = ((busy + draining) / per_node).ceil();
    // Saturates: a wild rate asks for the most an autoscaler can give.
    (nodes as u32).max(1)
}

/// Arrivals per model (by its subject token), as a rate that decays
/// exponentially over the window.
#[derive(Debug)]
pub struct Arrivals {
    window: Duration,
    counted: HashMap<String, u64>,
    rates: HashMap<String, f64>,
    since: Instant,
}

impl Arrivals {
    pub fn new(window: Duration, now: Instant) -> Self {
        Self {
            window,
            counted: HashMap::new(),
            rates: HashMap::new(),
            since: now,
        }
    }

    /// Counts a job published on `sy.jobs.<priority>.<model>.<tenant>`.
    pub fn arrived(&mut self, jobs_subject: &str) {
        if let Some((_, model)) = subjects::queue_of(jobs_subject) {
            *self.counted.entry(model.to_owned()).or_default() += 1;
        }
    }

    /// Folds what arrived since the last call into each model's rate.
    pub fn update(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.since).as_secs_f64();
        if dt <= 0.0 {
            return;
        }
        self.since = now;
        let weight = 1.0 - (-dt / self.window.as_secs_f64()).exp();
        let counted = std::mem::take(&mut self.counted);
        for (model, rate) in &mut self.rates {
            let now_rate = counted.get(model).copied().unwrap_or(0) as f64 / dt;
            *rate += weight * (now_rate - *rate);
        }
        for (model, n) in counted {
            self.rates
                .entry(model)
                .or_insert_with(|| weight * n as f64 / dt);
        }
    }

    pub fn rate(&self, model: &str) -> f64 {
        let token = subjects::model_token(model);
        self.rates.get(&token).copied().unwrap_or(0.0)
    }
}

/// Computes what each model asks of the cluster (queue depth and age per
/// priority, arrivals, the nodes it needs), exports it as metrics and
/// publishes it on `sy.autoscale.<model>`.
pub async fn signal(
    js: &Context,
    jobs: &Stream,
    cluster: &Cluster,
    arrivals: &mut Arrivals,
    registry: &Registry,
    cfg: &AutoscaleConfig,
    now: Instant,
) {
    arrivals.update(now);
    let counts = match nats::subject_counts(js, subjects::JOBS_STREAM, subjects::JOBS_ALL).await {
        Ok(counts) => counts,
        Err(e) => {
            debug!(error = %e, "queue depths unknown this round");
            return;
        }
    };
    let at_ms = now_ms();
    // (model token, priority) → (jobs waiting, oldest wait in ms)
    let mut queues: HashMap<(String, Priority), (u64, i64)> = HashMap::new();
    // The queues with jobs waiting, by the prefix their lanes share.
    let mut waiting: HashMap<String, (String, Priority)> = HashMap::new();
    for (subject, n) in counts {
        let (Some((priority, model)), Some((prefix, _))) =
            (subjects::queue_of(&subject), subject.rsplit_once('.'))
        else {
            continue;
        };
        queues.entry((model.to_owned(), priority)).or_default().0 += n;
        if n > 0 {
            waiting.insert(prefix.to_owned(), (model.to_owned(), priority));
        }
    }
    // One look per queue, however many tenants' lanes it has: its oldest
    // job is the first in the stream of any of them.
    for (prefix, queue) in waiting {
        if let Ok(first) = jobs
            .get_first_raw_message_by_subject(format!("{prefix}.*"), 1)
            .await
            && let Ok(job) = decode::<Job>(&first.payload)
            && let Some(q) = queues.get_mut(&queue)
        {
            q.1 = at_ms - job.submitted_at_ms;
        }
    }
    for spec in registry.models() {
        let model = spec.name.as_str();
        let token = subjects::model_token(model);
        let mut queued = 0;
        let mut priorities = Vec::with_capacity(Priority::ALL.len());
        for priority in Priority::ALL {
            let (depth, oldest_ms) = queues
                .get(&(token.clone(), priority))
                .copied()
                .unwrap_or_default();
            queued += depth;
            let labels = [
                ("model", model.to_owned()),
                ("priority", priority.as_str().to_owned()),
            ];
            metrics::gauge!(m::QUEUE_DEPTH, &labels).set(depth as f64);
            metrics::gauge!(m::QUEUE_OLDEST, &labels).set(oldest_ms.max(0) as f64 / 1000.0);
            priorities.push(QueueDepth {
                priority,
                queued: depth,
                oldest_ms: oldest_ms.max(0),
            });
        }
        let load = cluster.load_of(model, now);
        let service = load
            .service_ms
            .map_or(cfg.service_time, |ms| Duration::from_millis(u64::from(ms)));
        let demand = Demand {
            arrivals_per_s: arrivals.rate(model),
            queued,
            running: load.running,
            service_s: service.as_secs_f64(),
            slots_per_node: match load.nodes {
                0 => cfg.slots_per_node,
                n => (load.slots / n).max(1),
            },
        };
        let desired = desired_nodes(&demand, cfg);
        metrics::gauge!(m::DESIRED_REPLICAS, "model" => model.to_owned()).set(f64::from(desired));
        metrics::gauge!(m::ARRIVAL_RATE, "model" => model.to_owned()).set(demand.arrivals_per_s);
        let message = AutoscaleSignal {
            v: SCHEMA_VERSION,
            model: model.to_owned(),
            desired_nodes: desired,
            queued,
            running: load.running,
            arrivals_per_s: demand.arrivals_per_s,
            service_ms: u32::try_from(service.as_millis()).unwrap_or(u32::MAX),
            at_ms,
            live_nodes: load.nodes,
            priorities,
        };
        if let Ok(bytes) = encode(&message)
            && let Err(e) = js
                .client()
                .publish(subjects::autoscale(model), bytes.into())
                .await
        {
            debug!(error = %e, model, "autoscale signal not published");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demand(arrivals_per_s: f64, queued: u64, running: u32) -> Demand {
        Demand {
            arrivals_per_s,
            queued,
            running,
            service_s: 2.0,
            slots_per_node: 10,
        }
    }

    #[test]
    fn littles_law_plus_the_backlog_to_drain() {
        let cfg = AutoscaleConfig::default();
        // 20 jobs/s of 2 s each: 40 busy slots, at 8 per node (80 % of 10).
        assert_eq!(desired_nodes(&demand(20.0, 0, 40), &cfg), 5);
        // 240 queued to drain in 60 s: 8 more slots, one more node.
        assert_eq!(desired_nodes(&demand(20.0, 240, 40), &cfg), 6);
        // Work but no arrivals: one node, never zero.
        assert_eq!(desired_nodes(&demand(0.0, 1, 0), &cfg), 1);
        assert_eq!(desired_nodes(&demand(0.0, 0, 1), &cfg), 1);
        // Nothing to do: the pool may go to zero.
        assert_eq!(desired_nodes(&demand(0.0, 0, 0), &cfg), 0);
    }

    /// A load ramp up and down, second by second: the signal follows it
    /// within the rate window each way.
    #[test]
    fn the_signal_follows_a_ramp_up_and_down() {
        let cfg = AutoscaleConfig::default();
        let start = Instant::now();
        let mut arrivals = Arrivals::new(cfg.rate_window, start);
        let mut signal = Vec::new();
        // 0 → 40 jobs/s over 60 s, held 60 s, back to 0 over 60 s, then idle
        // for 2 minutes.
        let rate_at = |s: u64| match s {
            0..60 => s as f64 * 40.0 / 60.0,
            60..120 => 40.0,
            120..180 => (180 - s) as f64 * 40.0 / 60.0,
            _ => 0.0,
        };
        for s in 0..300u64 {
            for _ in 0..rate_at(s).round() as u64 {
                arrivals.arrived("sy.jobs.normal.m.t");
            }
            arrivals.update(start + Duration::from_secs(s + 1));
            let rate = arrivals.rate("m");
            let running = (rate * 2.0).round() as u32;
            signal.push(desired_nodes(&demand(rate, 0, running), &cfg));
        }
        // At the plateau: 40 jobs/s × 2 s = 80 slots, 10 nodes of 8.
        assert!((9..=10).contains(&signal[115]), "{:?}", &signal[100..120]);
        // Rising while the load rises, falling while it falls.
        assert!(signal[30] < signal[60] && signal[60] <= signal[115]);
        assert!(signal[150] < signal[115] && signal[175] < signal[150]);
        // Idle for two minutes: down to zero, once fewer than one job is
        // expected over the window.
        assert_eq!(signal[299], 0, "{:?}", &signal[180..]);
        // Never more than the plateau needs.
        assert!(signal.iter().all(|n| *n <= 10));
    }
}
