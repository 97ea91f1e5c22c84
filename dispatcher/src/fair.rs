//! Weighted fair share among the tenants with jobs queued for one model at
//! one priority (stride scheduling). Each tenant has a *pass*: what it was
//! served (jobs, or their tokens: `dispatcher.fair_share`) divided by its
//! weight. The backlogged tenant with the smallest
//! pass goes next, so over time each one's share of the placements follows
//! its weight however many jobs it queues. A tenant that was idle comes back
//! at the current virtual time: it banks no credit while away.

use std::collections::HashMap;

#[derive(Debug, Default)]
pub struct FairShare {
    pass: HashMap<String, f64>,
    /// Virtual time: the pass of the tenant chosen last.
    now: f64,
}

impl FairShare {
    /// Chooses, among `backlogged` (tenant, weight) pairs, the tenant to serve
    /// next and how many of `room` placements to give it: its weighted part
    /// of `room`, at least one. `None` when no tenant is backlogged.
    pub fn next<'a>(&mut self, backlogged: &[(&'a str, u32)], room: u32) -> Option<(&'a str, u32)> {
        let (tenant, weight) = backlogged.iter().copied().min_by(|a, b| {
            self.pass_of(a.0)
                .total_cmp(&self.pass_of(b.0))
                .then_with(|| a.0.cmp(b.0))
        })?;
        self.now = self.pass_of(tenant);
        let total: u64 = backlogged.iter().map(|(_, w)| u64::from(*w)).sum();
        let share = (u64::from(room) * u64::from(weight)).div_ceil(total.max(1));
        let share = u32::try_from(share).unwrap_or(room);
        Some((tenant, share.clamp(1, room.max(1))))
    }

    /// Records that `tenant` was given placements worth `served` (jobs, or
    /// their tokens).
    pub fn charge(&mut self, tenant: &str, served: f64, weight: u32) {
        let pass = self.pass_of(tenant) + served / f64::from(weight.max(1));
        self.pass.insert(tenant.to_owned(), pass);
        // A tenant at or behind virtual time is the same as one never seen,
        // so the table holds only tenants ahead of it.
        let now = self.now;
        self.pass.retain(|_, p| *p > now);
    }

    fn pass_of(&self, tenant: &str) -> f64 {
        self.pass
            .get(tenant)
            .copied()
            .unwrap_or(self.now)
            .max(self.now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serves one placement per round to whichever tenant `fair` picks among
    /// those backlogged in that round; returns the count per tenant.
    fn serve(
        fair: &mut FairShare,
        rounds: usize,
        backlogged: &[(&'static str, u32)],
    ) -> HashMap<&'static str, u32> {
        let mut served = HashMap::new();
        for _ in 0..rounds {
            let (tenant, n) = fair.next(backlogged, 1).unwrap();
            let weight = backlogged.iter().find(|(t, _)| *t == tenant).unwrap().1;
            fair.charge(tenant, f64::from(n), weight);
            *served.entry(tenant).or_default() += n;
        }
        served
    }

    #[test]
    fn equal_weights_share_equally_whatever_each_one_queues() {
        let mut fair = FairShare::default();
        // Both backlogged: how much each has queued does not enter into it.
        let served = serve(&mut fair, 100, &[("flood", 1), ("small", 1)]);
        assert_eq!(served["flood"], 50);
        assert_eq!(served["small"], 50);
    }

    #[test]
    fn shares_follow_weights() {
        let mut fair = FairShare::default();
        let served = serve(&mut fair, 400, &[("gold", 3), ("bronze", 1)]);
        assert_eq!(served["gold"], 300);
        assert_eq!(served["bronze"], 100);
    }

    #[test]
    fn a_tenant_back_from_idle_banks_no_credit() {
        let mut fair = FairShare::default();
        serve(&mut fair, 20, &[("a", 1), ("b", 1)]);
        // b goes idle while a is served alone for a long time.
        serve(&mut fair, 200, &[("a", 1)]);
        // Back, b gets its half, not the 200 placements it missed.
        let served = serve(&mut fair, 20, &[("a", 1), ("b", 1)]);
        assert_eq!(served["a"], 10);
        assert_eq!(served["b"], 10);
    }

    #[test]
    fn a_newcomer_is_served_at_once() {
        let mut fair = FairShare::default();
        serve(&mut fair, 500, &[("old", 1)]);
        let (first, _) = fair.next(&[("old", 1), ("new", 1)], 1).unwrap();
        assert_eq!(first, "new");
    }

    #[test]
    fn room_is_split_by_weight_and_never_below_one() {
        let mut fair = FairShare::default();
        assert_eq!(fair.next(&[("a", 3), ("b", 1)], 8), Some(("a", 6)));
        assert_eq!(
            fair.next(&[("a", 1), ("b", 1), ("c", 1)], 1),
            Some(("a", 1))
        );
        assert_eq!(fair.next(&[("only", 5)], 7), Some(("only", 7)));
        assert_eq!(fair.next(&[], 7), None);
    }

    #[test]
    fn tenants_that_passed_by_are_forgotten() {
        let mut fair = FairShare::default();
        // One steady tenant, and a thousand that each queue two jobs once.
        for i in 0..1000 {
            let passing = format!("t{i}");
            for _ in 0..4 {
                let backlog = [("steady", 1), (passing.as_str(), 1)];
                let (t, n) = fair.next(&backlog, 1).unwrap();
                fair.charge(t, f64::from(n), 1);
            }
        }
        assert!(fair.pass.len() <= 3, "{} tenants kept", fair.pass.len());
    }

    #[test]
    fn charged_by_tokens_a_tenant_of_long_prompts_gets_fewer_jobs_for_the_same_share() {
        let mut fair = FairShare::default();
        let tokens = |t: &str| if t == "long" { 2_000.0 } else { 100.0 };
        let mut served: HashMap<&str, u32> = HashMap::new();
        for _ in 0..210 {
            let (t, n) = fair.next(&[("long", 1), ("short", 1)], 1).unwrap();
            fair.charge(t, f64::from(n) * tokens(t), 1);
            *served.entry(t).or_default() += n;
        }
        // Equal tokens: 20 short jobs for each long one.
        assert_eq!(served["long"], 10);
        assert_eq!(served["short"], 200);
    }
}
