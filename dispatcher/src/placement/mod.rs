//! Placement policies: given the nodes that can take a job (healthy, serving
//! its model, with room), pick one. Small and pure, one file each, chosen by
//! `dispatcher.placement`.

mod earliest_finish;
mod gpu_aware;
mod least_loaded;
mod model_affinity;
mod power_of_two;
mod round_robin;

use serde::Deserialize;

pub use earliest_finish::EarliestFinish;
pub use gpu_aware::GpuAware;
pub use least_loaded::LeastLoaded;
pub use model_affinity::ModelAffinity;
pub use power_of_two::PowerOfTwo;
pub use round_robin::RoundRobin;

/// What a policy sees of one eligible node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Candidate {
    /// Assignments it can take now (always at least 1).
    pub free: u32,
    pub running: u32,
    /// Assignments given to it and not finished: running or waiting there.
    pub inflight: u32,
    pub slots: u32,
    /// Its recent time per job; `None` until it has finished one.
    pub service_ms: Option<u32>,
    /// It was given this model recently: its caches are likely warm.
    pub warm: bool,
    /// Requests its engine holds waiting for room (vLLM's
    /// `num_requests_waiting`); 0 when it does not say.
    pub engine_waiting: u32,
    /// Its engine's KV cache in use, in thousandths; `None` when it does
    /// not say.
    pub kv_permille: Option<u16>,
    /// GPU memory free on it, summed over its GPUs; `None` where NVML
    /// reports none.
    pub gpu_memory_free: Option<u64>,
}

pub trait Policy: Send {
    /// The index of the chosen candidate; `None` only when there are none.
    fn select(&mut self, candidates: &[Candidate]) -> Option<usize>;
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyKind {
    /// The node with the most room; ties to the one running least.
    LeastLoaded,
    /// A node warm for the model if one has room; otherwise least loaded.
    ModelAffinity,
    /// The better of two nodes picked at random: near least-loaded placement
    /// without every dispatcher herding onto the same node.
    PowerOfTwo,
    /// Each node with room in turn, blind to load: a baseline.
    RoundRobin,
    /// The node expected to finish the job soonest, from its measured time
    /// per job and the work ahead of it: for nodes of unlike speed.
    #[default]
    EarliestFinish,
    /// As `earliest_finish`, also weighing what the engine reports: its own
    /// waiting queue as work ahead, a node whose KV cache is nearly full
    /// only when no other has room, and a warm node over a cold one.
    GpuAware,
}

pub fn build(kind: PolicyKind) -> Box<dyn Policy> {
    match kind {
        PolicyKind::LeastLoaded => Box::new(LeastLoaded),
        PolicyKind::ModelAffinity => Box::new(ModelAffinity),
        PolicyKind::PowerOfTwo => Box::new(PowerOfTwo::seeded(seed())),
        PolicyKind::RoundRobin => Box::new(RoundRobin::default()),
        PolicyKind::EarliestFinish => Box::new(EarliestFinish),
        PolicyKind::GpuAware => Box::new(GpuAware),
    }
}

fn seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    (nanos as u64) | 1
}

/// Index of the least loaded candidate: most room, then fewest running.
pub(crate) fn least_loaded<'a>(
    candidates: impl Iterator<Item = (usize, &'a Candidate)>,
) -> Option<usize> {
    candidates
        .max_by_key(|(_, c)| (c.free, std::cmp::Reverse(c.running)))
        .map(|(i, _)| i)
}
