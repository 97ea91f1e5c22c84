//! The calls waiting for a job's record to show its end (the jobs API's
//! `Prefer: wait`, a `GET` that waits), woken as this broker's results
//! projection records their job and no other. Waking every waiting call
//! for every batch had each read its record again: at a thousand calls a
//! second that was a read per waiting call per batch, taking the store's
//! connections from the projection it waited on.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// Who waits for which job's record.
#[derive(Default)]
pub struct Recorded {
    waiting: Mutex<HashMap<String, Vec<Arc<Notify>>>>,
}

impl Recorded {
    /// Starts waiting for job `id`'s record: a recording from now on wakes
    /// the wait, even one that comes before it is awaited.
    pub fn wait(self: &Arc<Self>, id: &str) -> Waiting {
        let woken = Arc::new(Notify::new());
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

    /// Wakes the calls waiting for the jobs `ids`, just recorded.
    pub fn recorded<'a>(&self, ids: impl IntoIterator<Item = &'a str>) {
        let waiting = self.lock();
        if waiting.is_empty() {
            return;
        }
        for id in ids {
            for woken in waiting.get(id).into_iter().flatten() {
                woken.notify_one();
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Arc<Notify>>>> {
        // Nothing panics while holding it; a poisoned map is still whole.
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One call's wait for a job's record; it stops waiting when dropped.
pub struct Waiting {
    recorded: Arc<Recorded>,
    id: String,
    woken: Arc<Notify>,
}

impl Waiting {
    /// Returns once the job was recorded since the last return (or since
    /// the wait began).
    pub async fn woken(&self) {
        self.woken.notified().await;
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

    use super::*;

    #[test]
    fn a_wait_is_woken_by_its_own_job_only_even_before_it_is_awaited() {
        let recorded = Arc::new(Recorded::default());
        let a = recorded.wait("a");
        let also_a = recorded.wait("a");
        let b = recorded.wait("b");
        recorded.recorded(["a", "c"]);
        assert_eq!(a.woken().now_or_never(), Some(()));
        assert_eq!(also_a.woken().now_or_never(), Some(()));
        assert_eq!(b.woken().now_or_never(), None, "b was not recorded");
        // Each wake is taken once: the next wait is for the next recording.
        assert_eq!(a.woken().now_or_never(), None);
        recorded.recorded(["a"]);
        assert_eq!(a.woken().now_or_never(), Some(()));
    }

    #[test]
    fn a_dropped_wait_leaves_nothing_behind() {
        let recorded = Arc::new(Recorded::default());
        let a = recorded.wait("a");
        let also_a = recorded.wait("a");
        drop(a);
        recorded.recorded(["a"]);
        assert_eq!(also_a.woken().now_or_never(), Some(()));
        drop(also_a);
        assert!(recorded.lock().is_empty());
    }
}
