//! Aging: jobs of a lower level that have waited past the bound jump ahead
//! of higher levels, the lane holding the longest wait first; a job that has
//! not waited as long stays behind them.

use std::time::Duration;

use async_nats::jetstream;
use switchyard_schemas::{Job, Priority, decode, now_ms};

use crate::backlog::Queued;
use crate::lanes::Queue;

/// Lanes (queue index and tenant) whose oldest job has waited longer than
/// `bound` since it was submitted, longest wait first, at most one per queue.
/// The highest level never needs it. One look per queue, whatever the
/// number of its lanes: a queue's oldest job is the first in the stream of
/// any of its subjects, and it heads its own lane.
pub(crate) async fn aged_lanes(
    jobs: &jetstream::stream::Stream,
    queues: &[Queue],
    backlog: Option<&Queued>,
    bound: Duration,
) -> Vec<(usize, String)> {
    let now = now_ms();
    let mut aged: Vec<(usize, String, i64)> = Vec::new();
    for (i, q) in queues.iter().enumerate() {
        let queued = match backlog {
            Some(b) => b.get(&q.prefix).is_some_and(|t| !t.is_empty()),
            None => q.has_lanes(),
        };
        if q.priority == Priority::Critical || !queued {
            continue;
        }
        let any_lane = format!("{}.*", q.prefix);
        let Ok(first) = jobs.get_first_raw_message_by_subject(&any_lane, 1).await else {
            continue;
        };
        let (Ok(job), Some((_, tenant))) = (
            decode::<Job>(&first.payload),
            first.subject.rsplit_once('.'),
        ) else {
            continue;
        };
        if job.level_at(now, bound) == Priority::Critical {
            aged.push((i, tenant.to_owned(), now - job.submitted_at_ms));
        }
    }
    aged.sort_by_key(|(_, _, waited)| std::cmp::Reverse(*waited));
    aged.into_iter().map(|(i, t, _)| (i, t)).collect()
}

/// The order of one sweep: aged queues first, then every other queue in
/// priority order (the order `queues` is built in).
pub(crate) fn sweep_order(queues: usize, aged: &[usize]) -> Vec<usize> {
    aged.iter()
        .copied()
        .filter(|i| *i < queues)
        .chain((0..queues).filter(|i| !aged.contains(i)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aged_queues_go_first_then_priority_order() {
        assert_eq!(sweep_order(4, &[]), [0, 1, 2, 3]);
        assert_eq!(sweep_order(4, &[3, 2]), [3, 2, 0, 1]);
        assert_eq!(sweep_order(2, &[5]), [0, 1], "stale indexes are ignored");
    }
}
