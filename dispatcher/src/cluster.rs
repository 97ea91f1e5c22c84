//! The dispatcher's view of the cluster: pure state, fed by heartbeats and
//! placement decisions, tested without NATS.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::time::{Duration, Instant};

use switchyard_schemas::{EngineLoad, Heartbeat, Priority};

use crate::placement::{Candidate, Policy};

/// How long a node counts as warm for a model it was given.
const WARM_FOR: Duration = Duration::from_secs(60);

/// One node as the dispatcher sees it.
#[derive(Debug, Clone)]
pub struct NodeView {
    pub id: String,
    pub models: BTreeSet<String>,
    /// Models it can load when asked.
    pub loadable: BTreeSet<String>,
    pub slots_total: u32,
    pub running: u32,
    pub queued: u32,
    /// What it holds for a slot, by level.
    pub held: BTreeMap<Priority, u32>,
    pub draining: bool,
    /// Its engine answers; a node whose engine does not gets no work, but
    /// keeps its queue (the engine may be back in a moment).
    pub ready: bool,
    pub service_ms: Option<u32>,
    /// Its time per job of each model it has finished one of.
    pub service_ms_by_model: BTreeMap<String, u32>,
    /// What its engine says of its own load.
    pub engine: EngineLoad,
    /// GPU memory free, summed over the GPUs NVML reports.
    pub gpu_memory_free: Option<u64>,
    pub last_seen: Instant,
    /// Assignments made since the last heartbeat, which it could not yet count.
    pub assigned_since_heartbeat: u32,
    /// The `WORK` sequence of the last assignment it says it has read, for
    /// a node that says.
    pub read_through: Option<u64>,
    /// This dispatcher's assignments stored in its work queue after that,
    /// and when: on their way, so counted by neither it nor its heartbeats.
    pub unread: BTreeMap<u64, Instant>,
    /// Of those, the ones placed over work it holds, which it hands back.
    pub displaced_since_heartbeat: u32,
    /// When each model was last placed here.
    pub last_placed: BTreeMap<String, Instant>,
}

impl NodeView {
    /// Assignments this node can take now.
    pub fn free(&self, prefetch_per_slot: u32) -> u32 {
        let limit = self
            .slots_total
            .saturating_mul(prefetch_per_slot.saturating_add(1));
        limit.saturating_sub(self.inflight())
    }

    /// Assignments of `level` it can take now: its free room, and one more
    /// for each assignment of a lower level it holds, which it hands back
    /// when one of `level` comes.
    pub fn room(&self, prefetch_per_slot: u32, level: Priority) -> u32 {
        self.free(prefetch_per_slot)
            .saturating_add(self.displaceable(level))
    }

    /// Held work of levels below `level`, less what was already placed over
    /// it since the last heartbeat.
    fn displaceable(&self, level: Priority) -> u32 {
        self.held
            .range((Bound::Excluded(level), Bound::Unbounded))
            .map(|(_, n)| *n)
            .fold(0, u32::saturating_add)
            .saturating_sub(self.displaced_since_heartbeat)
    }

    /// Assignments given to it that it has not finished.
    fn inflight(&self) -> u32 {
        let unread = u32::try_from(self.unread.len()).unwrap_or(u32::MAX);
        self.running
            .saturating_add(self.queued)
            .saturating_add(self.assigned_since_heartbeat)
            .saturating_add(unread)
    }

    fn healthy(&self, now: Instant, timeout: Duration) -> bool {
        !self.draining && now.saturating_duration_since(self.last_seen) <= timeout
    }

    /// A node known by name only: no models, no slots, until it reports.
    fn unheard(id: &str, now: Instant) -> Self {
        Self {
            id: id.to_owned(),
            models: BTreeSet::new(),
            loadable: BTreeSet::new(),
            slots_total: 0,
            running: 0,
            queued: 0,
            held: BTreeMap::new(),
            draining: false,
            ready: false,
            service_ms: None,
            service_ms_by_model: BTreeMap::new(),
            engine: EngineLoad::default(),
            gpu_memory_free: None,
            last_seen: now,
            assigned_since_heartbeat: 0,
            read_through: None,
            unread: BTreeMap::new(),
            displaced_since_heartbeat: 0,
            last_placed: BTreeMap::new(),
        }
    }
}

/// The healthy nodes serving one model, summed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ModelLoad {
    pub nodes: u32,
    pub slots: u32,
    pub running: u32,
    pub service_ms: Option<u32>,
}

pub struct Cluster {
    /// Nodes in arrival order; `index` and `serving` point into it.
    nodes: Vec<NodeView>,
    index: HashMap<String, usize>,
    /// For each model, the nodes that serve it: placement looks at these only.
    serving: HashMap<String, Vec<usize>>,
    node_timeout: Duration,
    prefetch_per_slot: u32,
    policy: Box<dyn Policy>,
}

impl Cluster {
    pub fn new(node_timeout: Duration, prefetch_per_slot: u32, policy: Box<dyn Policy>) -> Self {
        Self {
            nodes: Vec::new(),
            index: HashMap::new(),
            serving: HashMap::new(),
            node_timeout,
            prefetch_per_slot,
            policy,
        }
    }

    /// Takes in a heartbeat; it replaces what the node reports of itself.
    pub fn observe(&mut self, hb: &Heartbeat, now: Instant) {
        let models: BTreeSet<String> = hb.models.iter().cloned().collect();
        let slot = match self.index.get(&hb.node) {
            Some(&slot) => slot,
            None => {
                self.insert(NodeView::unheard(&hb.node, now));
                self.nodes.len() - 1
            }
        };
        let timeout = self.node_timeout;
        let node = &mut self.nodes[slot];
        let models_changed = node.models != models;
        node.models = models;
        node.loadable = hb.loadable.iter().cloned().collect();
        node.slots_total = hb.slots_total;
        node.running = hb.running;
        node.queued = hb.queued;
        node.held.clone_from(&hb.held);
        node.draining = hb.draining;
        node.ready = hb.ready;
        node.service_ms = hb.service_ms;
        node.service_ms_by_model.clone_from(&hb.service_ms_by_model);
        node.engine = hb.engine;
        node.gpu_memory_free = hb
            .gpus
            .iter()
            .filter_map(|g| Some(g.memory_total_bytes?.saturating_sub(g.memory_used_bytes?)))
            .reduce(u64::saturating_add);
        node.last_seen = now;
        node.assigned_since_heartbeat = 0;
        node.displaced_since_heartbeat = 0;
        node.read_through = hb.read_through;
        match hb.read_through {
            // One not read within the node timeout never will be: its queue
            // was reclaimed, or the agent restarted and counts it again.
            Some(read) => node
                .unread
                .retain(|seq, at| *seq > read && now.saturating_duration_since(*at) < timeout),
            None => node.unread.clear(),
        }
        if models_changed {
            self.reindex();
        }
    }

    /// Knows of a node before its first heartbeat (its work queue exists), so
    /// that if it never speaks it is found lost and its queue reclaimed.
    pub fn seed(&mut self, node: &str, now: Instant) {
        if !self.index.contains_key(node) {
            self.insert(NodeView::unheard(node, now));
        }
    }

    fn insert(&mut self, node: NodeView) {
        self.index.insert(node.id.clone(), self.nodes.len());
        self.nodes.push(node);
    }

    /// Rebuilds the indexes; only when nodes come, go, or change models.
    fn reindex(&mut self) {
        self.index = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.id.clone(), i))
            .collect();
        self.serving.clear();
        for (i, n) in self.nodes.iter().enumerate() {
            for m in &n.models {
                self.serving.entry(m.clone()).or_default().push(i);
            }
        }
    }

    /// Nodes whose queued work must go elsewhere: silent past the timeout
    /// (lost) or draining.
    pub fn reclaimable(&self, now: Instant) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| !n.healthy(now, self.node_timeout))
            .map(|n| n.id.clone())
            .collect()
    }

    /// What the healthy nodes serving `model` hold: their number, their
    /// slots, the jobs they run (a node serving several models counts all
    /// of its jobs), and their mean time per job where they measured one.
    pub fn load_of(&self, model: &str, now: Instant) -> ModelLoad {
        let mut load = ModelLoad::default();
        let (mut timed, mut service_total) = (0u64, 0u64);
        for &i in self.serving.get(model).into_iter().flatten() {
            let n = &self.nodes[i];
            if !n.healthy(now, self.node_timeout) {
                continue;
            }
            load.nodes += 1;
            load.slots = load.slots.saturating_add(n.slots_total);
            load.running = load.running.saturating_add(n.running);
            if let Some(ms) = n.service_ms {
                timed += 1;
                service_total += u64::from(ms);
            }
        }
        load.service_ms =
            (timed > 0).then(|| u32::try_from(service_total / timed).unwrap_or(u32::MAX));
        load
    }

    /// Nodes that can take work now.
    pub fn healthy(&self, now: Instant) -> impl Iterator<Item = &NodeView> {
        self.nodes
            .iter()
            .filter(move |n| n.healthy(now, self.node_timeout))
    }

    /// Healthy nodes serving `model` that have room for a job of `level`,
    /// by slot.
    fn eligible(
        &self,
        model: &str,
        level: Priority,
        now: Instant,
    ) -> impl Iterator<Item = usize> + '_ {
        let (prefetch, timeout) = (self.prefetch_per_slot, self.node_timeout);
        self.serving
            .get(model)
            .into_iter()
            .flatten()
            .copied()
            .filter(move |&i| {
                let n = &self.nodes[i];
                n.healthy(now, timeout) && n.ready && n.room(prefetch, level) > 0
            })
    }

    /// Assignments of `level` the cluster can take now for `model`.
    pub fn capacity_for(&self, model: &str, level: Priority, now: Instant) -> u32 {
        self.eligible(model, level, now)
            .map(|i| self.nodes[i].room(self.prefetch_per_slot, level))
            .fold(0, u32::saturating_add)
    }

    /// Whether a node that can take work serves `model`, room or not.
    pub fn serves(&self, model: &str, now: Instant) -> bool {
        self.serving.get(model).into_iter().flatten().any(|&i| {
            let n = &self.nodes[i];
            n.healthy(now, self.node_timeout) && n.ready
        })
    }

    /// The node to ask to load `model`: of those that can take work, list
    /// it as loadable and are not in `avoid` (they failed to load it), the
    /// one with the most GPU memory free (a model's weights and KV cache
    /// must fit), then the most room.
    pub fn loader_for(&self, model: &str, now: Instant, avoid: &[&str]) -> Option<String> {
        self.healthy(now)
            .filter(|n| n.ready && n.loadable.contains(model) && !avoid.contains(&n.id.as_str()))
            .map(|n| ((n.gpu_memory_free, n.free(self.prefetch_per_slot)), n))
            .filter(|((_, free), _)| *free > 0)
            .max_by(|(a, x), (b, y)| a.cmp(b).then_with(|| y.id.cmp(&x.id)))
            .map(|(_, n)| n.id.clone())
    }

    /// Assignments the cluster can take now, any model.
    pub fn free_total(&self, now: Instant) -> u32 {
        self.room_total(Priority::Batch, now)
    }

    /// Assignments of `level` the cluster can take now, any model: the free
    /// room, and the held work of lower levels.
    pub fn room_total(&self, level: Priority, now: Instant) -> u32 {
        self.healthy(now)
            .filter(|n| n.ready)
            .map(|n| n.room(self.prefetch_per_slot, level))
            .fold(0, u32::saturating_add)
    }

    /// Chooses a node for a job of `model` and `level` with the configured
    /// policy, among the healthy nodes serving it that have room, and counts
    /// the assignment against it. Nodes in `avoid` (they failed this job
    /// before) are offered to the policy only when no other node has room.
    pub fn place(
        &mut self,
        (model, level): (&str, Priority),
        now: Instant,
        avoid: &[&str],
    ) -> Option<String> {
        let eligible: Vec<usize> = self.eligible(model, level, now).collect();
        let preferred: Vec<usize> = if avoid.is_empty() {
            Vec::new()
        } else {
            eligible
                .iter()
                .copied()
                .filter(|&i| !avoid.contains(&self.nodes[i].id.as_str()))
                .collect()
        };
        let pool = if avoid.is_empty() || preferred.is_empty() {
            eligible
        } else {
            preferred
        };
        let candidates: Vec<Candidate> = pool
            .iter()
            .map(|&i| {
                let n = &self.nodes[i];
                Candidate {
                    free: n.room(self.prefetch_per_slot, level),
                    running: n.running,
                    inflight: n.inflight(),
                    slots: n.slots_total,
                    // The model's own time where the node has one.
                    service_ms: n.service_ms_by_model.get(model).copied().or(n.service_ms),
                    warm: n
                        .last_placed
                        .get(model)
                        .is_some_and(|at| now.saturating_duration_since(*at) < WARM_FOR),
                    engine_waiting: n.engine.queue_depth.unwrap_or(0),
                    kv_permille: n
                        .engine
                        .kv_cache_usage
                        .map(|share| (share.clamp(0.0, 1.0) * 1000.0).round() as u16),
                    gpu_memory_free: n.gpu_memory_free,
                }
            })
            .collect();
        let chosen = *pool.get(self.policy.select(&candidates)?)?;
        let node = &mut self.nodes[chosen];
        if node.free(self.prefetch_per_slot) == 0 {
            node.displaced_since_heartbeat += 1;
        }
        node.assigned_since_heartbeat += 1;
        match node.last_placed.get_mut(model) {
            Some(at) => *at = now,
            None => {
                node.last_placed.insert(model.to_owned(), now);
            }
        }
        Some(node.id.clone())
    }

    /// An assignment placed on `node` was stored in its work queue as
    /// `stored_as`, or not stored at all: counted from now on as on its way
    /// until the node says it has read that far. For a node that does not
    /// say (an earlier release) it stays counted until the next heartbeat.
    pub fn sent(&mut self, node: &str, stored_as: Option<u64>, now: Instant) {
        let Some(&i) = self.index.get(node) else {
            return;
        };
        let node = &mut self.nodes[i];
        let Some(read) = node.read_through else {
            return;
        };
        node.assigned_since_heartbeat = node.assigned_since_heartbeat.saturating_sub(1);
        if let Some(seq) = stored_as.filter(|seq| *seq > read) {
            node.unread.insert(seq, now);
        }
    }

    /// Drops nodes silent for much longer than the timeout, so that the view
    /// does not grow with every node that ever existed.
    pub fn forget_stale(&mut self, now: Instant) -> Vec<String> {
        let horizon = self.node_timeout * 10;
        let is_stale = |n: &NodeView| now.saturating_duration_since(n.last_seen) > horizon;
        if !self.nodes.iter().any(is_stale) {
            return Vec::new();
        }
        let (stale, kept): (Vec<NodeView>, Vec<NodeView>) = std::mem::take(&mut self.nodes)
            .into_iter()
            .partition(is_stale);
        self.nodes = kept;
        if !stale.is_empty() {
            self.reindex();
        }
        stale.into_iter().map(|n| n.id).collect()
    }
}

#[cfg(test)]
#[path = "cluster_tests.rs"]
mod tests;
