//! The jobs each tenant has assigned and not yet ended, for its
//! `max_running_jobs`. Every dispatcher follows every assignment (the
//! publishes to `sy.work.*` reach plain subscribers too) and every end of an
//! attempt (`retrying` and `requeued` events, results), so it counts the
//! other dispatchers' assignments as well as its own; at start it reads the
//! assignments still waiting in `WORK`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_nats::jetstream::stream::Stream;
use futures::StreamExt;
use switchyard_schemas::{Assignment, EventKind, JobEvent, decode, subjects};
use tokio_util::sync::CancellationToken;
use tracing::warn;

#[derive(Debug, Default)]
pub struct Running {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Each counted job's tenant.
    tenant_of: HashMap<String, String>,
    per_tenant: HashMap<String, u32>,
}

impl Running {
    /// Counts a job as running for its tenant; counting it again changes
    /// nothing.
    pub fn started(&self, job_id: &str, tenant: &str) {
        let Ok(mut s) = self.state.lock() else {
            return;
        };
        if s.tenant_of.contains_key(job_id) {
            return;
        }
        s.tenant_of.insert(job_id.to_owned(), tenant.to_owned());
        *s.per_tenant.entry(tenant.to_owned()).or_default() += 1;
    }

    /// The job's attempt ended (a result, or a retry queued).
    pub fn ended(&self, job_id: &str) {
        let Ok(mut s) = self.state.lock() else {
            return;
        };
        let Some(tenant) = s.tenant_of.remove(job_id) else {
            return;
        };
        if let Some(n) = s.per_tenant.get_mut(&tenant) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                s.per_tenant.remove(&tenant);
            }
        }
    }

    pub fn count(&self, tenant: &str) -> u32 {
        self.state
            .lock()
            .ok()
            .and_then(|s| s.per_tenant.get(tenant).copied())
            .unwrap_or(0)
    }
}

/// Follows assignments and endings until `shutdown`.
pub async fn follow(
    running: Arc<Running>,
    client: async_nats::Client,
    work: Stream,
    shutdown: CancellationToken,
) {
    // Subscribed before reading what is in WORK, so nothing falls between.
    let subscribed = async {
        Ok::<_, async_nats::SubscribeError>((
            client.subscribe(subjects::WORK_ALL).await?,
            client.subscribe(subjects::EVENTS_ALL).await?,
            client.subscribe(subjects::RESULTS_ALL).await?,
        ))
    };
    let (mut assignments, mut events, mut results) = match subscribed.await {
        Ok(subs) => subs,
        Err(e) => {
            warn!(error = %e, "cannot follow running jobs; max_running_jobs is not applied");
            return;
        }
    };
    read_waiting(&running, &work).await;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            Some(msg) = assignments.next() => {
                if let Ok(a) = decode::<Assignment>(&msg.payload) {
                    running.started(&a.job.id, &a.job.tenant);
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
            else => return,
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
            running.started(&a.job.id, &a.job.tenant);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_counts_once_until_its_attempt_ends() {
        let r = Running::default();
        r.started("a", "t");
        r.started("a", "t");
        r.started("b", "t");
        r.started("c", "u");
        assert_eq!((r.count("t"), r.count("u")), (2, 1));
        r.ended("a");
        r.ended("a");
        r.ended("nobody");
        assert_eq!((r.count("t"), r.count("u")), (1, 1));
        r.ended("b");
        r.ended("c");
        assert_eq!((r.count("t"), r.count("u")), (0, 0));
    }
}
