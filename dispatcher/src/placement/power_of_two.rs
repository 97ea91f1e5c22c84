use super::{Candidate, Policy, least_loaded};

/// Samples two candidates and keeps the less loaded one.
pub struct PowerOfTwo {
    state: u64,
}

impl PowerOfTwo {
    pub fn seeded(seed: u64) -> Self {
        Self { state: seed | 1 }
    }

    /// xorshift64*: tiny, fast, and good enough to spread load.
    fn next(&mut self, bound: usize) -> usize {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        let x = self.state.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (x % bound as u64) as usize
    }
}

impl Policy for PowerOfTwo {
    fn select(&mut self, candidates: &[Candidate]) -> Option<usize> {
        match candidates.len() {
            0 => None,
            1 => Some(0),
            n => {
                let a = self.next(n);
                let b = (a + 1 + self.next(n - 1)) % n;
                least_loaded([a, b].into_iter().map(|i| (i, &candidates[i])))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_better_of_two_distinct_candidates() {
        let c = |free| Candidate {
            free,
            slots: 8,
            ..Candidate::default()
        };
        let candidates = [c(1), c(2), c(3), c(4)];
        let mut p = PowerOfTwo::seeded(42);
        let mut picked = [0u32; 4];
        for _ in 0..1000 {
            picked[p.select(&candidates).unwrap()] += 1;
        }
        // The emptiest node never loses a comparison, the fullest never wins one.
        assert_eq!(picked[0], 0);
        assert!(picked[3] > picked[2] && picked[2] > picked[1], "{picked:?}");
    }
}
