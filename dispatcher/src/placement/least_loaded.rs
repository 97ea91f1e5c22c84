use super::{Candidate, Policy, least_loaded};

/// The node with the most room; ties go to the one running fewest jobs.
pub struct LeastLoaded;

impl Policy for LeastLoaded {
    fn select(&mut self, candidates: &[Candidate]) -> Option<usize> {
        least_loaded(candidates.iter().enumerate())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(free: u32, running: u32) -> Candidate {
        Candidate {
            free,
            running,
            slots: 8,
            ..Candidate::default()
        }
    }

    #[test]
    fn most_room_then_fewest_running() {
        assert_eq!(LeastLoaded.select(&[c(1, 0), c(3, 5), c(2, 0)]), Some(1));
        assert_eq!(LeastLoaded.select(&[c(2, 4), c(2, 1)]), Some(1));
        assert_eq!(LeastLoaded.select(&[]), None);
    }
}
