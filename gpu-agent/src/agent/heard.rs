//! The cancellations this node has heard of from its watch on the bucket.
//! A job about to run is checked against them here: asking the bucket was a
//! request to the server per job, and the largest part of a quick job's
//! time on the node after the engine's own.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use super::lock;

/// How long a cancellation heard is kept. A job submitted longer ago than
/// this, less `SKEW`, is asked about at the bucket.
const KEPT: Duration = Duration::from_secs(600);
/// Room for the clocks of the broker, which stamps a job's submission, and
/// of the server, which stamps a cancellation, against this node's.
const SKEW: Duration = Duration::from_secs(60);
/// The most ids kept, whatever came in ten minutes (a large batch
/// cancelled): past it the oldest go, and the jobs submitted before the
/// last of those was heard are asked about at the bucket.
const MOST: usize = 100_000;

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// What a look at the cancellations heard says of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Known {
    Cancelled,
    NotCancelled,
    /// The watch may not have heard it: ask the bucket.
    Unsure,
}

#[derive(Default)]
pub(super) struct Heard(Mutex<Inner>);

#[derive(Default)]
struct Inner {
    /// The watch has delivered everything the bucket held, and has not
    /// failed since.
    current: bool,
    ids: HashSet<String>,
    /// When each id was heard (ms), oldest first.
    order: VecDeque<(i64, String)>,
    /// When the last id forgotten for want of room was heard (ms).
    crowded_out_ms: Option<i64>,
}

impl Heard {
    /// Notes job `id` cancelled, put at `put_at_ms` and heard at `now_ms`.
    /// One put longer ago than is kept (the bucket's history, replayed as
    /// the watch begins) is not noted.
    pub(super) fn heard(&self, id: &str, put_at_ms: i64, now_ms: i64) {
        if now_ms.saturating_sub(put_at_ms) > ms(KEPT) {
            return;
        }
        let mut inner = lock(&self.0);
        while inner
            .order
            .front()
            .is_some_and(|(at, _)| now_ms.saturating_sub(*at) > ms(KEPT))
        {
            if let Some((_, old)) = inner.order.pop_front() {
                inner.ids.remove(&old);
            }
        }
        if inner.ids.insert(id.to_owned()) {
            inner.order.push_back((now_ms, id.to_owned()));
        }
        while inner.order.len() > MOST {
            if let Some((at, old)) = inner.order.pop_front() {
                inner.ids.remove(&old);
                inner.crowded_out_ms = Some(at);
            }
        }
    }

    /// The watch has delivered everything the bucket held.
    pub(super) fn current(&self) {
        lock(&self.0).current = true;
    }

    /// The watch failed or ended: it may miss cancellations until it says
    /// it is current again.
    pub(super) fn lost(&self) {
        lock(&self.0).current = false;
    }

    /// Whether job `id`, submitted at `submitted_at_ms`, was cancelled, as
    /// far as the watch can tell at `now_ms`. A cancellation comes after
    /// its job's submission, so within `KEPT` of it the watch has heard it,
    /// live or in what the bucket held when it began, and still keeps it
    /// unless it was crowded out.
    pub(super) fn knows(&self, id: &str, submitted_at_ms: i64, now_ms: i64) -> Known {
        let inner = lock(&self.0);
        let too_old = now_ms.saturating_sub(submitted_at_ms) > ms(KEPT - SKEW);
        let crowded_out = inner
            .crowded_out_ms
            .is_some_and(|at| submitted_at_ms <= at.saturating_add(ms(SKEW)));
        if !inner.current || too_old || crowded_out {
            return Known::Unsure;
        }
        match inner.ids.contains(id) {
            true => Known::Cancelled,
            false => Known::NotCancelled,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW_MS: i64 = 1_800_000_000_000;

    #[test]
    fn nothing_is_known_until_the_watch_is_current() {
        let heard = Heard::default();
        heard.heard("a", NOW_MS, NOW_MS);
        assert_eq!(heard.knows("a", NOW_MS, NOW_MS), Known::Unsure);
        assert_eq!(heard.knows("b", NOW_MS, NOW_MS), Known::Unsure);
        heard.current();
        assert_eq!(heard.knows("a", NOW_MS, NOW_MS), Known::Cancelled);
        assert_eq!(heard.knows("b", NOW_MS, NOW_MS), Known::NotCancelled);
    }

    #[test]
    fn a_failed_watch_is_unsure_until_current_again() {
        let heard = Heard::default();
        heard.heard("a", NOW_MS, NOW_MS);
        heard.current();
        heard.lost();
        assert_eq!(heard.knows("a", NOW_MS, NOW_MS), Known::Unsure);
        assert_eq!(heard.knows("b", NOW_MS, NOW_MS), Known::Unsure);
        heard.heard("b", NOW_MS, NOW_MS);
        heard.current();
        assert_eq!(heard.knows("a", NOW_MS, NOW_MS), Known::Cancelled);
        assert_eq!(heard.knows("b", NOW_MS, NOW_MS), Known::Cancelled);
    }

    #[test]
    fn jobs_older_than_what_is_kept_are_asked_about() {
        let heard = Heard::default();
        heard.heard("a", NOW_MS, NOW_MS);
        heard.current();
        let old = NOW_MS - ms(KEPT - SKEW) - 1;
        assert_eq!(heard.knows("a", old, NOW_MS), Known::Unsure);
        assert_eq!(heard.knows("b", old, NOW_MS), Known::Unsure);
        assert_eq!(heard.knows("b", old + 1, NOW_MS), Known::NotCancelled);
    }

    #[test]
    fn cancellations_are_forgotten_after_they_are_kept() {
        let heard = Heard::default();
        heard.current();
        heard.heard("a", NOW_MS, NOW_MS);
        heard.heard("b", NOW_MS + ms(KEPT), NOW_MS + ms(KEPT));
        let later = NOW_MS + ms(KEPT) + 1;
        assert_eq!(heard.knows("a", later, later), Known::Cancelled);
        heard.heard("c", later, later);
        assert_eq!(heard.knows("a", later, later), Known::NotCancelled);
        assert_eq!(heard.knows("b", later, later), Known::Cancelled);
        assert_eq!(lock(&heard.0).order.len(), 2);
    }

    #[test]
    fn a_put_older_than_what_is_kept_is_not_noted() {
        let heard = Heard::default();
        heard.current();
        heard.heard("old", NOW_MS - ms(KEPT) - 1, NOW_MS);
        heard.heard("recent", NOW_MS - ms(KEPT), NOW_MS);
        assert_eq!(heard.knows("old", NOW_MS, NOW_MS), Known::NotCancelled);
        assert_eq!(heard.knows("recent", NOW_MS, NOW_MS), Known::Cancelled);
    }

    #[test]
    fn past_the_most_kept_the_oldest_go_and_jobs_before_them_are_asked_about() {
        let heard = Heard::default();
        heard.current();
        heard.heard("first", NOW_MS, NOW_MS);
        for i in 0..MOST {
            heard.heard(&i.to_string(), NOW_MS + 1, NOW_MS + 1);
        }
        assert_eq!(lock(&heard.0).ids.len(), MOST);
        let now = NOW_MS + 2;
        // Its cancellation may have been the one crowded out.
        assert_eq!(heard.knows("first", NOW_MS, now), Known::Unsure);
        assert_eq!(heard.knows("0", NOW_MS, now), Known::Unsure);
        // Submitted after it was heard (and the clocks' room): still sure.
        let after = NOW_MS + ms(SKEW) + 1;
        assert_eq!(heard.knows("0", after, after), Known::Cancelled);
        assert_eq!(heard.knows("first", after, after), Known::NotCancelled);
    }
}
