//! The calls waiting for a job's record to show its end (the jobs API's
//! `Prefer: wait`, a `GET` that waits), woken as this broker's results
//! projection records their job and no other, and handed the record as
//! the projection's write gave it back. Reading it instead took the
//! store's connections from the projection it waited on: at a thousand
//! calls a second the reads queued behind the writes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use switchyard_store::JobRecord;
use tokio::sync::Notify;

/// Who waits for which job's record.
#[derive(Default)]
pub struct Recorded {
    waiting: Mutex<HashMap<String, Vec<Arc<Woken>>>>,
}

/// One wait's wake, with the record when the projection gave it back.
#[derive(Default)]
struct Woken {
    notify: Notify,
    record: Mutex<Option<JobRecord>>,
}

impl Recorded {
    /// Starts waiting for job `id`'s record: a recording from now on wakes
    /// the wait, even one that comes before it is awaited.
    pub fn wait(self: &Arc<Self>, id: &str) -> Waiting {
        let woken = Arc::new(Woken::default());
        self.lock()
            .entry(id.to_owned())
            .or_default()
            .push(woken.clone());
        Waiting {
            recorded: self.clone(),
            id: id.to_owned(),
            woken,
        }
    }

    /// Whether a call waits for job `id`'s record.
    pub fn waits_for(&self, id: &str) -> bool {
        self.lock().contains_key(id)
    }

    /// Wakes the calls waiting for the jobs `ids`, just recorded, with
    /// those of `records` (as written) that are theirs.
    pub fn recorded<'a>(&self, ids: impl IntoIterator<Item = &'a str>, records: &[JobRecord]) {
        let waiting = self.lock();
        if waiting.is_empty() {
            return;
        }
        for id in ids {
            for woken in waiting.get(id).into_iter().flatten() {
                *lock(&woken.record) = records.iter().find(|r| r.id == id).cloned();
                woken.notify.notify_one();
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Arc<Woken>>>> {
        lock(&self.waiting)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Nothing panics while holding it; a poisoned value is still whole.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One call's wait for a job's record; it stops waiting when dropped.
pub struct Waiting {
    recorded: Arc<Recorded>,
    id: String,
    woken: Arc<Woken>,
}

impl Waiting {
    /// Returns once the job was recorded since the last return (or since
    /// the wait began), with its record when the write gave it back.
    pub async fn woken(&self) -> Option<JobRecord> {
        self.woken.notify.notified().await;
        lock(&self.woken.record).take()
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let mut waiting = self.recorded.lock();
        if let Some(list) = waiting.get_mut(&self.id) {
            list.retain(|w| !Arc::ptr_eq(w, &self.woken));
            if list.is_empty() {
                waiting.remove(&self.id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;
    use switchyard_store::Status;

    use super::*;

    fn record(id: &str) -> JobRecord {
        JobRecord {
            id: id.to_owned(),
            model: "m".into(),
            alias: None,
            trace_id: None,
            tenant: "t".into(),
            priority: "normal".into(),
            source: "http".into(),
            status: Status::Succeeded,
            attempt: 1,
            node: Some("n1".into()),
            metadata: Default::default(),
            created_at_ms: 1,
            enqueued_at_ms: Some(2),
            assigned_at_ms: Some(3),
            started_at_ms: Some(4),
            finished_at_ms: Some(5),
            output: None,
            tokens_estimate: None,
            output_expired: false,
            error: None,
            usage: None,
        }
    }

    #[test]
    fn a_wait_is_woken_by_its_own_job_only_even_before_it_is_awaited() {
        let recorded = Arc::new(Recorded::default());
        let a = recorded.wait("a");
        let also_a = recorded.wait("a");
        let b = recorded.wait("b");
        assert!(recorded.waits_for("a") && !recorded.waits_for("c"));
        // `a`'s write gave its record back; `c`'s is no one's.
        recorded.recorded(["a", "c"], &[record("c"), record("a")]);
        assert_eq!(a.woken().now_or_never(), Some(Some(record("a"))));
        assert_eq!(also_a.woken().now_or_never(), Some(Some(record("a"))));
        assert_eq!(b.woken().now_or_never(), None, "b was not recorded");
        // Each wake is taken once: the next wait is for the next recording.
        assert_eq!(a.woken().now_or_never(), None);
        // Recorded without its record given back (it had ended before):
        // woken to read it.
        recorded.recorded(["a"], &[]);
        assert_eq!(a.woken().now_or_never(), Some(None));
    }

    #[test]
    fn a_dropped_wait_leaves_nothing_behind() {
        let recorded = Arc::new(Recorded::default());
        let a = recorded.wait("a");
        let also_a = recorded.wait("a");
        drop(a);
        recorded.recorded(["a"], &[]);
        assert_eq!(also_a.woken().now_or_never(), Some(None));
        drop(also_a);
        assert!(!recorded.waits_for("a"));
    }
}
