use std::cmp::Reverse;

use super::earliest_finish::expected_ms;
use super::{Candidate, Policy};

/// KV cache use from which a node counts as full: a request placed there
/// waits for memory, or makes the engine preempt one it runs.
const KV_FULL_PERMILLE: u16 = 900;

/// What the engines report, weighed on top of `earliest_finish`:
///
/// - a node whose KV cache is nearly full is chosen only when none other
///   has room in its cache (or does not say);
/// - the requests an engine holds waiting count as work ahead of the job,
///   beside the assignments in flight;
/// - a node not given the model lately pays half a job's time, for caches
///   (prefixes, compiled graphs) that are cold there;
/// - ties go to the emptier cache, then to the node with more GPU memory
///   free, then to the node with more room.
pub struct GpuAware;

impl Policy for GpuAware {
    fn select(&mut self, candidates: &[Candidate]) -> Option<usize> {
        let roomy = |c: &Candidate| c.kv_permille.is_none_or(|kv| kv < KV_FULL_PERMILLE);
        let any_roomy = candidates.iter().any(roomy);
        candidates
            .iter()
            .enumerate()
            .filter(|(_, c)| !any_roomy || roomy(c))
            .min_by_key(|(_, c)| {
                (
                    finish_ms(c),
                    c.kv_permille.unwrap_or(0),
                    Reverse(c.gpu_memory_free.unwrap_or(0)),
                    Reverse(c.free),
                )
            })
            .map(|(i, _)| i)
    }
}

fn finish_ms(c: &Candidate) -> u64 {
    let expected = expected_ms(c, c.engine_waiting);
    match (c.warm, c.service_ms) {
        (false, Some(ms)) => expected.saturating_add(u64::from(ms / 2)),
        _ => expected,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(inflight: u32, service_ms: u32, kv: Option<u16>) -> Candidate {
        Candidate {
            free: 8u32.saturating_sub(inflight).max(1),
            inflight,
            slots: 4,
            service_ms: Some(service_ms),
            warm: true,
            kv_permille: kv,
            ..Candidate::default()
        }
    }

    #[test]
    fn a_nearly_full_kv_cache_is_passed_over_while_another_node_has_room() {
        // Idle and fast, but its cache is full: the busier node is chosen.
        let full = node(0, 10, Some(950));
        let busy = node(6, 40, Some(300));
        assert_eq!(GpuAware.select(&[full, busy]), Some(1));
        // A node that does not report its cache is not passed over.
        let silent = node(6, 40, None);
        assert_eq!(GpuAware.select(&[full, silent]), Some(1));
        // When every cache is full, the earliest finish decides among them.
        let fuller = node(3, 40, Some(990));
        assert_eq!(GpuAware.select(&[fuller, full]), Some(1));
        // Earliest finish alone would take the full one.
        assert_eq!(super::super::EarliestFinish.select(&[full, busy]), Some(0));
    }

    #[test]
    fn the_engine_s_own_queue_is_work_ahead_and_a_warm_node_is_preferred() {
        // Same assignments, but one engine holds five requests waiting.
        let queued = Candidate {
            engine_waiting: 5,
            ..node(2, 20, Some(500))
        };
        let clear = node(2, 20, Some(500));
        assert_eq!(GpuAware.select(&[queued, clear]), Some(1));
        // A cold node needs to be clearly sooner to win.
        let cold = Candidate {
            warm: false,
            ..node(0, 20, Some(100))
        };
        let warm = node(0, 20, Some(100));
        assert_eq!(GpuAware.select(&[cold, warm]), Some(1));
        let warm_busy = node(4, 20, Some(100));
        assert_eq!(GpuAware.select(&[cold, warm_busy]), Some(0));
        // Equal finish: the emptier cache, then more GPU memory free.
        assert_eq!(
            GpuAware.select(&[node(0, 20, Some(700)), node(0, 20, Some(200))]),
            Some(1)
        );
        let gib = |n: u64| Candidate {
            gpu_memory_free: Some(n << 30),
            ..node(0, 20, Some(200))
        };
        assert_eq!(GpuAware.select(&[gib(4), gib(30), gib(12)]), Some(1));
        assert_eq!(GpuAware.select(&[]), None);
    }
}
