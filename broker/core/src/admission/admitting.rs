//! The jobs this broker is queuing while their records are written. A job
//! whose id no other job can have goes to its queue at once, beside its
//! record's write, so what its streams say of it (its assignment, its
//! result) can come before the record. The projections wait here for the
//! records of the jobs they are about to write, rather than find none.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// The ids being admitted, each by one submission at a time.
#[derive(Default)]
pub struct Admitting {
    ids: Mutex<HashSet<String>>,
    written: Notify,
}

/// A submission's hold on its job's id, until its record is written (or
/// failed): dropping it lets the projections go on.
pub(crate) struct Held {
    admitting: Arc<Admitting>,
    id: String,
}

impl Admitting {
    /// Holds `id` for one submission; none when another holds it (the same
    /// id submitted twice at once), whose record this one must then find:
    /// it waits (`written`) and tries again.
    pub(crate) fn hold(self: &Arc<Self>, id: &str) -> Option<Held> {
        self.lock().insert(id.to_owned()).then(|| Held {
            admitting: self.clone(),
            id: id.to_owned(),
        })
    }

    /// Returns once no job of `ids` is held: each is recorded, or its
    /// admission failed.
    pub async fn written<'a, I>(&self, ids: I)
    where
        I: Iterator<Item = &'a str> + Clone,
    {
        loop {
            // Listening before looking, so that a release in between wakes.
            let released = self.written.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            {
                let held = self.lock();
                if held.is_empty() || !ids.clone().any(|id| held.contains(id)) {
                    return;
                }
            }
            released.await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        // Nothing panics while holding it; a poisoned set is still whole.
        self.ids.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.admitting.lock().remove(&self.id);
        self.admitting.written.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;

    use super::*;

    #[test]
    fn an_id_is_held_by_one_submission_at_a_time() {
        let admitting = Arc::new(Admitting::default());
        let held = admitting.hold("a").expect("free");
        assert!(admitting.hold("a").is_none(), "held twice");
        drop(held);
        assert!(admitting.hold("a").is_some(), "released");
    }

    #[test]
    fn the_projections_wait_for_the_jobs_held_and_no_other() {
        let admitting = Arc::new(Admitting::default());
        let a = admitting.hold("a").unwrap();
        let b = admitting.hold("b").unwrap();
        assert!(
            admitting
                .written(["c"].into_iter())
                .now_or_never()
                .is_some(),
            "c is not being admitted"
        );
        let mut waiting = Box::pin(admitting.written(["a", "c"].into_iter()));
        assert!(waiting.as_mut().now_or_never().is_none(), "a is held");
        drop(b);
        assert!(waiting.as_mut().now_or_never().is_none(), "a is still held");
        drop(a);
        assert!(waiting.now_or_never().is_some(), "a is written");
    }
}
