//! The jobs each tenant and each API key has assigned and not yet ended,
//! for their `max_running_jobs`. While any bound is offered, every
//! dispatcher follows every assignment (the publishes to `sy.work.*` reach
//! plain subscribers too) and every end of an attempt (`retrying` and
//! `requeued` events, results), so it counts the other dispatchers'
//! assignments as well as its own; before a bound comes into force it reads
//! the assignments still waiting in `WORK`, so jobs placed while nothing
//! was counted count too. With no bound, nothing is followed: each job's
//! assignment, events and result would reach every dispatcher a second
//! time, for nothing. The bounds come from the brokers, through the
//! `limits` KV bucket, and until the bucket has them from the
//! configuration.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_nats::jetstream::kv;
use async_nats::jetstream::stream::Stream;
use futures::StreamExt;
use switchyard_schemas::{Assignment, EventKind, Job, JobEvent, RunningLimits, decode, subjects};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::metrics as m;

#[derive(Debug)]
pub struct Running {
    state: Mutex<State>,
    /// The bounds in force: none unless the jobs are being counted.
    bounds: RwLock<RunningLimits>,
    /// The bounds to apply: the brokers' once handed, the configuration's
    /// until then. `follow` puts them in force.
    offered: watch::Sender<RunningLimits>,
}

#[derive(Debug, Default)]
struct State {
    /// Whether assignments are counted: only while a bound is offered.
    counting: bool,
    /// Each counted job's holders: its tenant, and its key if it has one.
    holders_of: HashMap<String, Holders>,
    per_tenant: HashMap<String, u32>,
    per_key: HashMap<String, u32>,
}

#[derive(Debug)]
struct Holders {
    tenant: String,
    key: Option<String>,
}

fn count_up(counts: &mut HashMap<String, u32>, holder: &str) {
    *counts.entry(holder.to_owned()).or_default() += 1;
}

fn count_down(counts: &mut HashMap<String, u32>, holder: &str) {
    if let Some(n) = counts.get_mut(holder) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            counts.remove(holder);
        }
    }
}

/// Whether `limits` bound anyone.
fn bounded(limits: &RunningLimits) -> bool {
    !limits.tenants.is_empty() || !limits.keys.is_empty()
}

impl Running {
    /// With the configuration's bounds per tenant offered, which hold until
    /// the brokers hand theirs.
    pub fn new(configured: BTreeMap<String, u32>) -> Running {
        Running {
            state: Mutex::default(),
            bounds: RwLock::default(),
            offered: watch::Sender::new(RunningLimits {
                tenants: configured,
                ..RunningLimits::default()
            }),
        }
    }

    /// Counts a job as running for its tenant and key, if jobs are being
    /// counted; counting it again changes nothing.
    pub fn started(&self, job: &Job) {
        let Ok(mut s) = self.state.lock() else {
            return;
        };
        if !s.counting || s.holders_of.contains_key(&job.id) {
            return;
        }
        count_up(&mut s.per_tenant, &job.tenant);
        if let Some(key) = &job.api_key {
            count_up(&mut s.per_key, key);
        }
        let holders = Holders {
            tenant: job.tenant.clone(),
            key: job.api_key.clone(),
        };
        s.holders_of.insert(job.id.clone(), holders);
    }

    /// The job's attempt ended (a result, or a retry queued).
    pub fn ended(&self, job_id: &str) {
        let Ok(mut s) = self.state.lock() else {
            return;
        };
        let Some(h) = s.holders_of.remove(job_id) else {
            return;
        };
        count_down(&mut s.per_tenant, &h.tenant);
        if let Some(key) = &h.key {
            count_down(&mut s.per_key, key);
        }
    }

    fn count(&self, of: impl Fn(&State) -> Option<u32>) -> u32 {
        self.state.lock().ok().and_then(|s| of(&s)).unwrap_or(0)
    }

    /// Room a tenant has left under its bound; None: no bound.
    pub fn tenant_room(&self, tenant: &str) -> Option<u32> {
        let max = self.bounds.read().ok()?.tenants.get(tenant).copied()?;
        Some(max.saturating_sub(self.count(|s| s.per_tenant.get(tenant).copied())))
    }

    /// Room a key has left under its bound; None: no bound.
    pub fn key_room(&self, key: &str) -> Option<u32> {
        let max = self.bounds.read().ok()?.keys.get(key).copied()?;
        Some(max.saturating_sub(self.count(|s| s.per_key.get(key).copied())))
    }

    fn hand(&self, limits: RunningLimits) {
        self.offered.send_replace(limits);
    }

    /// Counts the assignments from now on.
    fn count_from_now(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.counting = true;
        }
    }

    /// Puts `limits` in force; the jobs must be counted already.
    fn enforce(&self, limits: RunningLimits) {
        metrics::gauge!(m::RUNNING_BOUNDS).set((limits.tenants.len() + limits.keys.len()) as f64);
        if let Ok(mut bounds) = self.bounds.write() {
            *bounds = limits;
        }
    }

    /// No bound is in force any more: nothing is counted, and what was is
    /// forgotten.
    fn stop_counting(&self) {
        self.enforce(RunningLimits::default());
        if let Ok(mut s) = self.state.lock() {
            *s = State::default();
        }
    }
}

/// How long a dispatcher waits before watching the bounds again after the
/// watch failed.
const WATCH_AGAIN: Duration = Duration::from_secs(1);

/// Waits `WATCH_AGAIN` before trying again, or until `shutdown`.
async fn pause(shutdown: &CancellationToken) {
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = tokio::time::sleep(WATCH_AGAIN) => {}
    }
}

/// Follows the bounds the brokers put in the `limits` bucket until
/// `shutdown`.
pub async fn follow_bounds(running: Arc<Running>, bucket: kv::Store, shutdown: CancellationToken) {
    while !shutdown.is_cancelled() {
        let mut entries = match bucket
            .watch_with_history(subjects::RUNNING_LIMITS_KEY)
            .await
        {
            Ok(entries) => entries,
            Err(e) => {
                warn!(error = %e, "cannot watch the running-job limits; the last read stay");
                pause(&shutdown).await;
                continue;
            }
        };
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                entry = entries.next() => match entry {
                    Some(Ok(entry)) => match decode::<RunningLimits>(&entry.value) {
                        Ok(limits) => {
                            info!(tenants = limits.tenants.len(), keys = limits.keys.len(), "running-job limits handed by the brokers");
                            running.hand(limits);
                        }
                        Err(e) => warn!(error = %e, "unreadable running-job limits ignored"),
                    },
                    Some(Err(e)) => {
                        warn!(error = %e, "watch of the running-job limits failed");
                        break;
                    }
                    None => break,
                },
            }
        }
    }
}

/// Follows assignments and endings while a bound is offered, until
/// `shutdown`.
pub async fn follow(
    running: Arc<Running>,
    client: async_nats::Client,
    work: Stream,
    shutdown: CancellationToken,
) {
    let mut offered = running.offered.subscribe();
    // Shown from the start, not only once a bound has come and gone.
    metrics::gauge!(m::RUNNING_BOUNDS).set(0.0);
    while !shutdown.is_cancelled() {
        tokio::select! {
            () = shutdown.cancelled() => return,
            waited = offered.wait_for(bounded) => if waited.is_err() {
                return;
            },
        }
        // Subscribed before reading what is in WORK, so nothing falls between.
        let subscribed = async {
            Ok::<_, async_nats::SubscribeError>((
                client.subscribe(subjects::WORK_ALL).await?,
                client.subscribe(subjects::EVENTS_ALL).await?,
                client.subscribe(subjects::RESULTS_ALL).await?,
            ))
        };
        let subscriptions = match subscribed.await {
            Ok(subs) => subs,
            Err(e) => {
                warn!(error = %e, "cannot follow running jobs; max_running_jobs is not applied yet");
                pause(&shutdown).await;
                continue;
            }
        };
        running.count_from_now();
        read_waiting(&running, &work).await;
        let limits = offered.borrow_and_update().clone();
        // Unless taken back while `WORK` was read: nothing to apply then.
        if bounded(&limits) {
            running.enforce(limits);
            count(&running, subscriptions, &mut offered, &shutdown).await;
        }
        running.stop_counting();
    }
}

type Subscriptions = (
    async_nats::Subscriber,
    async_nats::Subscriber,
    async_nats::Subscriber,
);

/// Counts what the subscriptions tell until no bound is offered or
/// `shutdown`; the subscriptions end with it.
async fn count(
    running: &Running,
    (mut assignments, mut events, mut results): Subscriptions,
    offered: &mut watch::Receiver<RunningLimits>,
    shutdown: &CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = offered.changed() => {
                if changed.is_err() {
                    return;
                }
                let limits = offered.borrow_and_update().clone();
                if !bounded(&limits) {
                    info!("no running-job limits left; running jobs are not followed");
                    return;
                }
                running.enforce(limits);
            }
            Some(msg) = assignments.next() => {
                if let Ok(a) = decode::<Assignment>(&msg.payload) {
                    running.started(&a.job);
                }
            }
            Some(msg) = events.next() => {
                if let Ok(e) = decode::<JobEvent>(&msg.payload)
                    && matches!(e.kind, EventKind::Retrying { .. } | EventKind::Requeued { .. })
                {
                    running.ended(&e.job_id);
                }
            }
            Some(msg) = results.next() => {
                if let Some(id) = msg.subject.as_str().strip_prefix("sy.results.") {
                    running.ended(id);
                }
            }
        }
    }
}

/// The most messages of `WORK` read at start; past it, the rest are
/// counted as their attempts end.
const READ_AT_START: u64 = 100_000;

/// Counts the assignments still in `WORK`: jobs a node holds or runs. A
/// work-queue stream takes no second consumer over an agent's subjects, so
/// its messages are read by sequence.
async fn read_waiting(running: &Running, work: &Stream) {
    let state = match work.get_info().await {
        Ok(info) => info.state,
        Err(e) => {
            warn!(error = %e, "cannot read WORK; running jobs are counted from now on");
            return;
        }
    };
    if state.messages == 0 {
        return;
    }
    let last = state
        .last_sequence
        .min(state.first_sequence.saturating_add(READ_AT_START));
    for seq in state.first_sequence..=last {
        // A sequence already acknowledged is gone: nothing to count.
        if let Ok(msg) = work.get_raw_message(seq).await
            && let Ok(a) = decode::<Assignment>(&msg.payload)
        {
            running.started(&a.job);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str, tenant: &str, key: Option<&str>) -> Job {
        Job {
            id: id.to_owned(),
            tenant: tenant.to_owned(),
            api_key: key.map(str::to_owned),
            ..crate::config::tests::job_with_failures(&[])
        }
    }

    fn counting(limits: RunningLimits) -> Running {
        let r = Running::new(BTreeMap::new());
        r.count_from_now();
        r.enforce(limits);
        r
    }

    #[test]
    fn a_job_counts_once_until_its_attempt_ends() {
        let r = counting(RunningLimits {
            tenants: [("t".to_owned(), 3), ("u".to_owned(), 3)].into(),
            keys: [("k".to_owned(), 2)].into(),
            ..RunningLimits::default()
        });
        r.started(&job("a", "t", Some("k")));
        r.started(&job("a", "t", Some("k")));
        r.started(&job("b", "t", None));
        r.started(&job("c", "u", Some("k")));
        let rooms = |r: &Running| (r.tenant_room("t"), r.tenant_room("u"), r.key_room("k"));
        assert_eq!(rooms(&r), (Some(1), Some(2), Some(0)));
        assert_eq!((r.tenant_room("v"), r.key_room("other")), (None, None));
        r.ended("a");
        r.ended("a");
        r.ended("nobody");
        assert_eq!(rooms(&r), (Some(2), Some(2), Some(1)));
        r.ended("b");
        r.ended("c");
        assert_eq!(rooms(&r), (Some(3), Some(3), Some(2)));
    }

    #[test]
    fn nothing_is_counted_or_kept_while_no_bound_is_in_force() {
        let limits = RunningLimits {
            tenants: [("t".to_owned(), 2)].into(),
            ..RunningLimits::default()
        };
        let r = Running::new(BTreeMap::new());
        // Never ended while nothing follows the results: kept, it would
        // hold a place for ever.
        r.started(&job("a", "t", None));
        r.count_from_now();
        r.enforce(limits.clone());
        assert_eq!(r.tenant_room("t"), Some(2));
        r.started(&job("b", "t", None));
        assert_eq!(r.tenant_room("t"), Some(1));
        r.stop_counting();
        assert_eq!(r.tenant_room("t"), None, "no bound in force");
        r.started(&job("c", "t", None));
        r.count_from_now();
        r.enforce(limits);
        assert_eq!(r.tenant_room("t"), Some(2), "what was counted is forgotten");
    }

    #[test]
    fn the_configured_bounds_are_offered_until_the_brokers_hand_theirs() {
        let r = Running::new([("t".to_owned(), 1), ("u".to_owned(), 5)].into());
        assert!(bounded(&r.offered.borrow()));
        assert_eq!(r.tenant_room("t"), None, "in force once counted");
        // The brokers' view replaces the configuration's whole: a tenant it
        // leaves out has no bound.
        r.hand(RunningLimits {
            tenants: [("t".to_owned(), 4)].into(),
            ..RunningLimits::default()
        });
        assert_eq!(
            r.offered.borrow().tenants,
            BTreeMap::from([("t".to_owned(), 4)])
        );
        r.hand(RunningLimits::default());
        assert!(!bounded(&r.offered.borrow()), "nothing to follow");
    }
}
