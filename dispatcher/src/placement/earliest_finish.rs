use std::cmp::Reverse;

use super::{Candidate, Policy};

/// The node expected to finish the job soonest: its recent time per job
/// times the waves of work ahead of the job there (its in-flight assignments
/// and this one, over its slots). A node that has not finished a job yet is
/// given one job at a time, first, until it reports a time: it may be the
/// fastest or the slowest. Ties go to the node with more room.
pub struct EarliestFinish;

impl Policy for EarliestFinish {
    fn select(&mut self, candidates: &[Candidate]) -> Option<usize> {
        candidates
            .iter()
            .enumerate()
            .min_by_key(|(_, c)| (expected_ms(c, 0), Reverse(c.free)))
            .map(|(i, _)| i)
    }
}

/// When the job would finish on `c`, with `more` jobs ahead of it there
/// than its in-flight assignments.
pub(super) fn expected_ms(c: &Candidate, more: u32) -> u64 {
    let ahead = u64::from(c.inflight) + u64::from(more);
    let Some(ms) = c.service_ms else {
        return if ahead == 0 { 0 } else { u64::MAX };
    };
    let waves = (ahead + 1).div_ceil(u64::from(c.slots.max(1)));
    waves * u64::from(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(slots: u32, inflight: u32, service_ms: Option<u32>) -> Candidate {
        Candidate {
            free: (slots * 2).saturating_sub(inflight).max(1),
            inflight,
            slots,
            service_ms,
            ..Candidate::default()
        }
    }

    #[test]
    fn a_fast_node_wins_until_work_queued_there_outweighs_its_speed() {
        let slow_idle = c(16, 0, Some(320));
        assert_eq!(
            EarliestFinish.select(&[slow_idle, c(1, 0, Some(20))]),
            Some(1)
        );
        // Work ahead on one fast slot: 14 jobs make 300 ms, still sooner;
        // 15 make 320 ms, a tie that goes to the node with more room.
        assert_eq!(
            EarliestFinish.select(&[slow_idle, c(1, 14, Some(20))]),
            Some(1)
        );
        assert_eq!(
            EarliestFinish.select(&[slow_idle, c(1, 15, Some(20))]),
            Some(0)
        );
        assert_eq!(
            EarliestFinish.select(&[slow_idle, c(1, 16, Some(20))]),
            Some(0)
        );
        // Slots run in parallel: 31 ahead on 16 fast slots is two waves.
        assert_eq!(
            EarliestFinish.select(&[slow_idle, c(16, 31, Some(20))]),
            Some(1)
        );
    }

    #[test]
    fn a_node_without_a_time_is_tried_with_one_job_at_a_time() {
        assert_eq!(
            EarliestFinish.select(&[c(4, 0, Some(5)), c(4, 0, None)]),
            Some(1)
        );
        assert_eq!(
            EarliestFinish.select(&[c(4, 3, Some(500)), c(4, 1, None)]),
            Some(0)
        );
        assert_eq!(EarliestFinish.select(&[]), None);
    }
}
