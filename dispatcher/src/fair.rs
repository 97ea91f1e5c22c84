//! Weighted fair share among the tenants with jobs queued for one model at
//! one priority (stride scheduling). Each tenant has a *pass*: what it was
//! served (jobs, or their tokens: `dispatcher.fair_share`) divided by its
//! weight. The backlogged tenant with the smallest
//! pass goes next, so over time each one's share of the placements follows
//! its weight however many jobs it queues. A tenant that was idle comes back
//! at the current virtual time: it banks no credit while away.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};

#[derive(Debug, Default)]
pub struct FairShare {
    pass: HashMap<String, f64>,
    /// Virtual time: the pass of the tenant chosen last.
    now: f64,
    /// How many passes the table held after it last forgot those behind
    /// virtual time: it forgets again once it has doubled, so that a charge
    /// costs the same however many tenants pass by.
    kept: usize,
}

/// One tenant's place in a sweep's order of turns.
#[derive(Debug, Clone, Copy)]
pub struct Turn<'a> {
    pub tenant: &'a str,
    pub weight: u32,
    pass: f64,
}

impl<'a> Turn<'a> {
    /// A turn out of the sweep's order (an aged lane's), charged as any.
    pub fn of(tenant: &'a str, weight: u32) -> Turn<'a> {
        Turn {
            tenant,
            weight,
            pass: 0.0,
        }
    }
}

impl Ord for Turn<'_> {
    fn cmp(&self, other: &Self) -> Ordering {
        self.pass
            .total_cmp(&other.pass)
            .then_with(|| self.tenant.cmp(other.tenant))
    }
}

impl PartialOrd for Turn<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Turn<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Turn<'_> {}

/// The backlogged tenants of one sweep of a queue, least served per unit of
/// weight first: a turn costs the logarithm of their number, not a look at
/// each, so thousands of tenants' turns cost about what ten tenants' do.
#[derive(Debug)]
pub struct Turns<'a> {
    heap: BinaryHeap<Reverse<Turn<'a>>>,
    /// The weights of the tenants still in the sweep, the one whose turn
    /// it is included.
    total_weight: u64,
}

impl Turns<'_> {
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Ends `turn`'s tenant's part in this sweep: it drained, or was held
    /// back.
    pub fn done(&mut self, turn: Turn<'_>) {
        self.total_weight -= u64::from(turn.weight);
    }
}

impl FairShare {
    /// The order of turns of one sweep among `backlogged` (tenant, weight)
    /// pairs.
    pub fn sweep<'a>(&self, backlogged: impl IntoIterator<Item = (&'a str, u32)>) -> Turns<'a> {
        let mut total_weight = 0;
        let heap = backlogged
            .into_iter()
            .map(|(tenant, weight)| {
                total_weight += u64::from(weight);
                Reverse(Turn {
                    tenant,
                    weight,
                    pass: self.pass_of(tenant),
                })
            })
            .collect();
        Turns { heap, total_weight }
    }

    /// Chooses, among the tenants of `turns`, the one to serve next and how
    /// many of `room` placements to give it: its weighted part of `room`,
    /// at least `min_turn` (or all of `room` when less), and at least one.
    /// A turn larger than its part is charged as such, so each tenant's
    /// share over time still follows its weight. The turn goes back with
    /// `again` or ends with `Turns::done`. `None` when no tenant is left.
    pub fn next<'a>(
        &mut self,
        turns: &mut Turns<'a>,
        room: u32,
        min_turn: u32,
    ) -> Option<(Turn<'a>, u32)> {
        let Reverse(turn) = turns.heap.pop()?;
        self.now = self.now.max(turn.pass);
        let share = (u64::from(room) * u64::from(turn.weight)).div_ceil(turns.total_weight.max(1));
        let share = u32::try_from(share).unwrap_or(room).max(min_turn);
        Some((turn, share.clamp(1, room.max(1))))
    }

    /// Puts `turn`'s tenant back in the sweep's order, at its pass as now
    /// charged.
    pub fn again<'a>(&self, turns: &mut Turns<'a>, turn: Turn<'a>) {
        turns.heap.push(Reverse(Turn {
            pass: self.pass_of(turn.tenant),
            ..turn
        }));
    }

    /// Records that `tenant` was given placements worth `served` (jobs, or
    /// their tokens).
    pub fn charge(&mut self, tenant: &str, served: f64, weight: u32) {
        let pass = self.pass_of(tenant) + served / f64::from(weight.max(1));
        self.pass.insert(tenant.to_owned(), pass);
        // A tenant at or behind virtual time is the same as one never seen,
        // so the table forgets them, once it has grown enough to be worth it.
        if self.pass.len() > 2 * self.kept + 64 {
            let now = self.now;
            self.pass.retain(|_, p| *p > now);
            self.kept = self.pass.len();
        }
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

    /// The first turn of a sweep among `backlogged`, and its share of `room`.
    fn first<'a>(
        fair: &mut FairShare,
        backlogged: &[(&'a str, u32)],
        room: u32,
        min_turn: u32,
    ) -> Option<(Turn<'a>, u32)> {
        let mut turns = fair.sweep(backlogged.iter().copied());
        fair.next(&mut turns, room, min_turn)
    }

    /// Serves one placement per round to whichever tenant `fair` picks among
    /// those backlogged in that round; returns the count per tenant.
    fn serve(
        fair: &mut FairShare,
        rounds: usize,
        backlogged: &[(&'static str, u32)],
    ) -> HashMap<&'static str, u32> {
        let mut served = HashMap::new();
        for _ in 0..rounds {
            let (turn, n) = first(fair, backlogged, 1, 1).unwrap();
            fair.charge(turn.tenant, f64::from(n), turn.weight);
            *served.entry(turn.tenant).or_default() += n;
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
        let (turn, _) = first(&mut fair, &[("old", 1), ("new", 1)], 1, 1).unwrap();
        assert_eq!(turn.tenant, "new");
    }

    #[test]
    fn room_is_split_by_weight_and_never_below_one() {
        let mut fair = FairShare::default();
        let mut share = |backlogged: &[(&'static str, u32)], room| {
            first(&mut fair, backlogged, room, 1).map(|(turn, n)| (turn.tenant, n))
        };
        assert_eq!(share(&[("a", 3), ("b", 1)], 8), Some(("a", 6)));
        assert_eq!(share(&[("a", 1), ("b", 1), ("c", 1)], 1), Some(("a", 1)));
        assert_eq!(share(&[("only", 5)], 7), Some(("only", 7)));
        assert_eq!(share(&[], 7), None);
    }

    #[test]
    fn a_turn_offers_at_least_the_minimum_and_is_charged_for_it() {
        let mut fair = FairShare::default();
        let many: Vec<String> = (0..1000).map(|i| format!("t{i:04}")).collect();
        let backlogged: Vec<(&str, u32)> = many.iter().map(|t| (t.as_str(), 1)).collect();
        // A thousand tenants in a room of 64: a part of one job each.
        let (turn, n) = first(&mut fair, &backlogged, 64, 1).unwrap();
        assert_eq!((turn.tenant, n), ("t0000", 1));
        let mut turns = fair.sweep(backlogged.iter().copied());
        let (turn, n) = fair.next(&mut turns, 64, 16).unwrap();
        assert_eq!((turn.tenant, n), ("t0000", 16));
        fair.charge(turn.tenant, f64::from(n), 1);
        fair.again(&mut turns, turn);
        // Charged for sixteen, it waits while the others have their turns.
        for _ in 0..999 {
            let (turn, n) = fair.next(&mut turns, 64, 16).unwrap();
            assert_ne!(turn.tenant, "t0000");
            fair.charge(turn.tenant, f64::from(n), 1);
            fair.again(&mut turns, turn);
        }
        let (turn, _) = fair.next(&mut turns, 64, 16).unwrap();
        assert_eq!(turn.tenant, "t0000");
        // Never more than the room.
        assert_eq!(fair.next(&mut turns, 4, 16).unwrap().1, 4);
    }

    #[test]
    fn a_tenant_done_leaves_the_room_to_the_others() {
        let mut fair = FairShare::default();
        let mut turns = fair.sweep([("a", 1), ("b", 1), ("c", 2)]);
        let (turn, n) = fair.next(&mut turns, 8, 1).unwrap();
        assert_eq!((turn.tenant, n), ("a", 2));
        turns.done(turn);
        // b's part is now of the weights left: 1 of 3.
        let (turn, n) = fair.next(&mut turns, 9, 1).unwrap();
        assert_eq!((turn.tenant, n), ("b", 3));
        turns.done(turn);
        let (turn, n) = fair.next(&mut turns, 9, 1).unwrap();
        assert_eq!((turn.tenant, n), ("c", 9));
        turns.done(turn);
        assert!(turns.is_empty());
        assert!(fair.next(&mut turns, 9, 1).is_none());
    }

    #[test]
    fn tenants_that_passed_by_are_forgotten() {
        let mut fair = FairShare::default();
        // One steady tenant, and a thousand that each queue two jobs once.
        for i in 0..1000 {
            let passing = format!("t{i}");
            for _ in 0..4 {
                let backlog = [("steady", 1), (passing.as_str(), 1)];
                let (turn, n) = first(&mut fair, &backlog, 1, 1).unwrap();
                fair.charge(turn.tenant, f64::from(n), 1);
            }
        }
        assert!(fair.pass.len() <= 200, "{} tenants kept", fair.pass.len());
    }

    #[test]
    fn charged_by_tokens_a_tenant_of_long_prompts_gets_fewer_jobs_for_the_same_share() {
        let mut fair = FairShare::default();
        let tokens = |t: &str| if t == "long" { 2_000.0 } else { 100.0 };
        let mut served: HashMap<&str, u32> = HashMap::new();
        for _ in 0..210 {
            let (turn, n) = first(&mut fair, &[("long", 1), ("short", 1)], 1, 1).unwrap();
            fair.charge(turn.tenant, f64::from(n) * tokens(turn.tenant), 1);
            *served.entry(turn.tenant).or_default() += n;
        }
        // Equal tokens: 20 short jobs for each long one.
        assert_eq!(served["long"], 10);
        assert_eq!(served["short"], 200);
    }
}
