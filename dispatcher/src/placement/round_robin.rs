use super::{Candidate, Policy};

/// Each eligible node in turn, whatever its load: the baseline the other
/// policies are measured against (`docs/benchmarks.md`).
#[derive(Default)]
pub struct RoundRobin {
    turn: usize,
}

impl Policy for RoundRobin {
    fn select(&mut self, candidates: &[Candidate]) -> Option<usize> {
        if candidates.is_empty() {
            return None;
        }
        let chosen = self.turn % candidates.len();
        self.turn = self.turn.wrapping_add(1);
        Some(chosen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_each_candidate_in_turn_whatever_its_room() {
        let c = |free| Candidate {
            free,
            slots: 8,
            ..Candidate::default()
        };
        let nodes = [c(8), c(1), c(4)];
        let mut rr = RoundRobin::default();
        let picks: Vec<_> = (0..6).map(|_| rr.select(&nodes).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        assert_eq!(rr.select(&[]), None);
    }
}
