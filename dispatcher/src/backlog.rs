//! What the dispatcher knows of the job queues' backlog, which tenants have
//! jobs queued in each queue, and when to ask the server again.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use switchyard_runtime::nats;
use switchyard_schemas::subjects;

/// Tenants with jobs queued, by queue prefix (`sy.jobs.<priority>.<model>`).
pub(crate) type Queued = HashMap<String, HashSet<String>>;

/// When the queues need a look. Every heartbeat wakes the dispatcher, and a
/// look is a request to the server: a thousand idle nodes would make a
/// thousand a second. Queues found empty stay empty until a job is
/// published to them, which rings the doorbell, so they are not looked at
/// again until it rings, or `RECHECK` has passed in case a ring was lost.
pub(crate) struct Looks {
    /// When a look found every queue empty, with no ring before it.
    empty_at: Option<Instant>,
    /// The doorbell rang since the last look.
    rang: bool,
    /// How often queues found empty are looked at anyway.
    recheck: Duration,
}

/// Queues found empty are looked at again at least this often, however
/// quiet the doorbell: it is a plain subscription, which a slow reader can
/// lose messages on.
const RECHECK: Duration = Duration::from_secs(1);

impl Looks {
    pub(crate) fn new(idle_poll: Duration) -> Looks {
        Looks {
            empty_at: None,
            rang: false,
            recheck: RECHECK.max(idle_poll),
        }
    }

    /// A job was published to a queue.
    pub(crate) fn rang(&mut self) {
        self.rang = true;
        self.empty_at = None;
    }

    /// Whether the queues need a look now.
    pub(crate) fn due(&self, now: Instant) -> bool {
        self.empty_at
            .is_none_or(|at| now.duration_since(at) >= self.recheck)
    }

    /// What a look at `now` found. A ring heard before the look's answer
    /// may be for a job stored after the server answered: then the next
    /// look is not skipped.
    pub(crate) fn looked(&mut self, seen: Option<&Queued>, now: Instant) {
        let empty = seen.is_some_and(HashMap::is_empty);
        self.empty_at = (empty && !self.rang).then_some(now);
        self.rang = false;
    }
}

/// Tenants with jobs queued now, by queue prefix. One request answers for
/// every queue, so an idle dispatcher costs the same whatever the number of
/// models and tenants. `None` when the server could not say: then every
/// lane already known is tried.
pub(crate) async fn look(js: &jetstream::Context) -> Option<Queued> {
    let counts = nats::subject_counts(js, subjects::JOBS_STREAM, subjects::JOBS_ALL)
        .await
        .ok()?;
    let mut backlog = Queued::new();
    for (subject, n) in counts {
        if n > 0 {
            add(&mut backlog, &subject);
        }
    }
    Some(backlog)
}

/// Counts `subject`'s tenant as having jobs queued in its queue.
fn add(backlog: &mut Queued, subject: &str) {
    if let Some((prefix, tenant)) = subject.rsplit_once('.') {
        match backlog.get_mut(prefix) {
            Some(tenants) => {
                if !tenants.contains(tenant) {
                    tenants.insert(tenant.to_owned());
                }
            }
            None => {
                backlog.insert(prefix.to_owned(), HashSet::from([tenant.to_owned()]));
            }
        }
    }
}

/// A look's answer, kept up to date until the next one: the doorbell adds
/// the tenants whose jobs arrive, and a turn that finds a tenant's lane
/// empty takes it out. A look lists every subject holding jobs, so what it
/// costs the server grows with the tenants backlogged: with thousands of
/// them, one answer serves the sweeps of a few milliseconds, instead of
/// each sweep asking again. What the doorbell cannot tell is a job back in
/// its queue without a publish (put back with a delay, or delivered again
/// after its ack wait): the next look finds it.
pub(crate) struct Known {
    queued: Queued,
    /// The subjects the doorbell named since the look, each with the
    /// stream sequence of its last job: the server may have answered the
    /// next look before storing their jobs.
    rung: HashMap<String, u64>,
    /// The last job a standing pull took from each subject: its ring, when
    /// it comes after, names a job already taken.
    taken: HashMap<String, u64>,
    /// How long this answer serves.
    keep: Duration,
    looked_at: Instant,
}

/// How long a look's answer serves, per tenant backlogged in it: 10,000
/// tenants' answer is kept for 100 ms. The server sorts and encodes the
/// answer: 10,000 tenants' costs it milliseconds.
const KEEP_PER_TENANT: Duration = Duration::from_micros(10);

/// The least time a look's answer serves. The doorbell keeps it up to date,
/// so a look only finds the jobs back in their queues without a publish;
/// asking each sweep cost the server two requests and an advisory per job
/// at low rates.
const KEEP_AT_LEAST: Duration = Duration::from_millis(20);

/// The longest an answer serves: a tenant's job that the doorbell missed
/// waits at most this long to be seen.
const KEEP_AT_MOST: Duration = Duration::from_millis(100);

impl Known {
    pub(crate) fn new(queued: Queued, now: Instant) -> Known {
        let tenants: usize = queued.values().map(HashSet::len).sum();
        let keep = KEEP_PER_TENANT.saturating_mul(u32::try_from(tenants).unwrap_or(u32::MAX));
        Known {
            queued,
            rung: HashMap::new(),
            taken: HashMap::new(),
            keep: keep.clamp(KEEP_AT_LEAST, KEEP_AT_MOST),
            looked_at: now,
        }
    }

    /// The answer of a look sent after `before`'s, with the tenants the
    /// doorbell named since `before`'s look and not found drained since:
    /// one whose job the server had not stored when it answered is not
    /// missed.
    pub(crate) fn renewed(queued: Queued, before: Option<Known>, now: Instant) -> Known {
        let mut known = Known::new(queued, now);
        for subject in before.into_iter().flat_map(|b| b.rung.into_keys()) {
            add(&mut known.queued, &subject);
        }
        known
    }

    /// Whether the answer still serves at `now`.
    pub(crate) fn fresh(&self, now: Instant) -> bool {
        now.duration_since(self.looked_at) < self.keep
    }

    pub(crate) fn queued(&self) -> &Queued {
        &self.queued
    }

    /// The tenants with jobs queued in the queue of `prefix`.
    pub(crate) fn tenants(&self, prefix: &str) -> Vec<String> {
        self.queued
            .get(prefix)
            .map(|t| t.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Whether no queue is known to hold a job.
    pub(crate) fn is_empty(&self) -> bool {
        self.queued.values().all(HashSet::is_empty)
    }

    /// A job was stored on `subject` (`sy.jobs.<priority>.<model>.<tenant>`)
    /// as the stream's `sequence`.
    pub(crate) fn arrived(&mut self, subject: &str, sequence: u64) {
        if self.taken.get(subject).is_some_and(|t| *t >= sequence) {
            return;
        }
        add(&mut self.queued, subject);
        match self.rung.get_mut(subject) {
            Some(last) => *last = (*last).max(sequence),
            None => {
                self.rung.insert(subject.to_owned(), sequence);
            }
        }
    }

    /// A standing pull took the job stored on `subject` as `sequence`:
    /// when no later one was rung, the lane holds nothing the doorbell
    /// told of.
    pub(crate) fn took(&mut self, subject: &str, sequence: u64) {
        match self.taken.get_mut(subject) {
            Some(last) => *last = (*last).max(sequence),
            None => {
                self.taken.insert(subject.to_owned(), sequence);
            }
        }
        if self.rung.get(subject).is_some_and(|r| *r <= sequence) {
            self.rung.remove(subject);
            if let Some((prefix, tenant)) = subject.rsplit_once('.')
                && let Some(tenants) = self.queued.get_mut(prefix)
            {
                tenants.remove(tenant);
            }
        }
    }

    /// A turn found `tenant`'s lane in the queue of `prefix` empty.
    pub(crate) fn drained(&mut self, prefix: &str, tenant: &str) {
        if let Some(tenants) = self.queued.get_mut(prefix) {
            tenants.remove(tenant);
        }
        // Its rung jobs were taken: the next answer need not bring it back,
        // or every tenant served between two looks would be asked again.
        if !self.rung.is_empty() {
            self.rung.remove(&format!("{prefix}.{tenant}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queued(tenants: &[&str]) -> Queued {
        HashMap::from([(
            "sy.jobs.normal.m".to_owned(),
            tenants.iter().map(|t| (*t).to_owned()).collect(),
        )])
    }

    #[test]
    fn an_answer_is_kept_up_to_date_by_arrivals_and_drained_lanes() {
        let start = Instant::now();
        let mut known = Known::new(queued(&["t1"]), start);
        known.arrived("sy.jobs.normal.m.t2", 1);
        known.arrived("sy.jobs.batch.m.t3", 1);
        known.drained("sy.jobs.normal.m", "t1");
        assert_eq!(known.tenants("sy.jobs.normal.m"), ["t2"]);
        assert_eq!(known.tenants("sy.jobs.batch.m"), ["t3"]);
        assert!(known.tenants("sy.jobs.critical.m").is_empty());
    }

    #[test]
    fn a_renewed_answer_keeps_the_tenants_rung_since_the_last_look() {
        let start = Instant::now();
        let mut before = Known::new(queued(&["t1"]), start);
        before.arrived("sy.jobs.normal.m.t2", 1);
        // The look was answered before t2's job was stored.
        let renewed = Known::renewed(queued(&["t1"]), Some(before), start);
        let mut tenants = renewed.tenants("sy.jobs.normal.m");
        tenants.sort();
        assert_eq!(tenants, ["t1", "t2"]);
        let next = Known::renewed(queued(&["t1"]), Some(renewed), start);
        assert_eq!(next.tenants("sy.jobs.normal.m"), ["t1"], "named once only");
        let mut served = Known::new(queued(&[]), start);
        served.arrived("sy.jobs.normal.m.t3", 1);
        served.drained("sy.jobs.normal.m", "t3");
        let after = Known::renewed(queued(&[]), Some(served), start);
        assert!(
            after.tenants("sy.jobs.normal.m").is_empty(),
            "a tenant served since its ring is not brought back"
        );
    }

    #[test]
    fn a_job_a_standing_pull_took_is_not_pulled_again_whichever_comes_first() {
        let start = Instant::now();
        let mut known = Known::new(queued(&[]), start);
        // Its ring, then the job.
        known.arrived("sy.jobs.normal.m.t1", 7);
        assert_eq!(known.tenants("sy.jobs.normal.m"), ["t1"]);
        known.took("sy.jobs.normal.m.t1", 7);
        assert!(known.is_empty());
        // The job, then its ring.
        known.took("sy.jobs.normal.m.t1", 8);
        known.arrived("sy.jobs.normal.m.t1", 8);
        assert!(known.is_empty());
        // A job rung after the one taken still waits.
        known.arrived("sy.jobs.normal.m.t1", 10);
        known.took("sy.jobs.normal.m.t1", 9);
        assert_eq!(known.tenants("sy.jobs.normal.m"), ["t1"]);
    }

    #[test]
    fn an_answer_serves_longer_the_more_tenants_it_lists() {
        let start = Instant::now();
        let few = Known::new(queued(&["t1", "t2"]), start);
        assert!(few.fresh(start + Duration::from_millis(1)));
        assert!(!few.fresh(start + KEEP_AT_LEAST), "asked again");
        let names: Vec<String> = (0..10_000).map(|i| format!("t{i}")).collect();
        let many: Vec<&str> = names.iter().map(String::as_str).collect();
        let many = Known::new(queued(&many), start);
        assert!(many.fresh(start + Duration::from_millis(50)));
        assert!(
            !many.fresh(start + KEEP_AT_MOST),
            "never kept past the most"
        );
    }

    #[test]
    fn queues_found_empty_are_looked_at_again_only_once_the_doorbell_rings() {
        let start = Instant::now();
        let mut looks = Looks::new(Duration::from_millis(20));
        assert!(looks.due(start), "the first look is never skipped");
        looks.looked(Some(&HashMap::new()), start);
        let soon = start + Duration::from_millis(100);
        assert!(!looks.due(soon), "empty, and nothing published since");
        looks.rang();
        assert!(looks.due(soon), "a job was published");
    }

    #[test]
    fn queues_with_jobs_or_unknown_are_looked_at_every_time() {
        let start = Instant::now();
        let soon = start + Duration::from_millis(1);
        let mut looks = Looks::new(Duration::from_millis(20));
        looks.looked(Some(&queued(&["t1"])), start);
        assert!(looks.due(soon), "jobs wait");
        looks.looked(None, start);
        assert!(looks.due(soon), "the server could not say");
    }

    #[test]
    fn a_ring_heard_before_an_empty_look_keeps_the_next_look() {
        // The doorbell hears of a job as the server receives it; the look
        // can be answered before the stream has stored it.
        let start = Instant::now();
        let mut looks = Looks::new(Duration::from_millis(20));
        looks.looked(Some(&HashMap::new()), start);
        looks.rang();
        looks.looked(Some(&HashMap::new()), start);
        assert!(looks.due(start + Duration::from_millis(1)));
        looks.looked(Some(&HashMap::new()), start);
        assert!(!looks.due(start + Duration::from_millis(1)));
    }

    #[test]
    fn queues_found_empty_are_looked_at_anyway_after_the_recheck() {
        let start = Instant::now();
        let mut looks = Looks::new(Duration::from_millis(20));
        looks.looked(Some(&HashMap::new()), start);
        assert!(!looks.due(start + RECHECK - Duration::from_millis(1)));
        assert!(
            looks.due(start + RECHECK),
            "a lost ring costs at most the recheck"
        );
    }
}
