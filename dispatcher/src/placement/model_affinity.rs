use super::{Candidate, Policy, least_loaded};

/// Keeps a model on the nodes that served it recently (warm weights and
/// caches), least loaded among them; falls back to least loaded overall.
pub struct ModelAffinity;

impl Policy for ModelAffinity {
    fn select(&mut self, candidates: &[Candidate]) -> Option<usize> {
        least_loaded(candidates.iter().enumerate().filter(|(_, c)| c.warm))
            .or_else(|| least_loaded(candidates.iter().enumerate()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(free: u32, warm: bool) -> Candidate {
        Candidate {
            free,
            slots: 8,
            warm,
            ..Candidate::default()
        }
    }

    #[test]
    fn warm_nodes_first_even_when_busier() {
        assert_eq!(ModelAffinity.select(&[c(8, false), c(1, true)]), Some(1));
        assert_eq!(ModelAffinity.select(&[c(1, true), c(3, true)]), Some(1));
        assert_eq!(ModelAffinity.select(&[c(1, false), c(3, false)]), Some(1));
    }
}
