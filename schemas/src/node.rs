//! What a node reports of itself and is asked to do: heartbeats with its
//! engine's load and its GPUs, and requests to load a model.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Priority;

fn yes() -> bool {
    true
}

/// A node's capacity, on `sy.heartbeat.<node>`, sent periodically and whenever
/// a slot frees up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub v: u16,
    pub node: String,
    pub at_ms: i64,
    pub models: Vec<String>,
    pub slots_total: u32,
    /// Assignments being run now.
    pub running: u32,
    /// Assignments given to this node and not started: in its work queue
    /// or held for a slot.
    pub queued: u32,
    /// Of those, the ones it holds (read, waiting for a slot), by level. A
    /// job of a higher level may be placed on a full node that holds work
    /// of a lower one: the node hands one of those back.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub held: BTreeMap<Priority, u32>,
    /// The `WORK` stream sequence of the last assignment it has read: those
    /// after it are on their way, and not in `running` or `queued` unless
    /// its work queue's count was asked for. Absent from nodes of earlier
    /// releases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_through: Option<u64>,
    /// A draining node takes no new work.
    pub draining: bool,
    /// Its engine answers. A node whose engine does not is given no work
    /// until it does.
    #[serde(default = "yes")]
    pub ready: bool,
    /// Recent time the engine took per job (a moving average over the jobs
    /// it finished), once it has finished one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_ms: Option<u32>,
    /// The same per model, for each model it has finished a job of: one
    /// node runs unlike models at unlike speeds.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub service_ms_by_model: BTreeMap<String, u32>,
    /// The node's GPUs, from NVML; empty where there is no NVIDIA driver.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<GpuStats>,
    /// The engine's own account of its load, where its metrics give one.
    #[serde(default, skip_serializing_if = "EngineLoad::is_unknown")]
    pub engine: EngineLoad,
    /// Models the engine holds but has not loaded: the dispatcher may ask
    /// this node to load one (`sy.load.<node>`) when no node serves it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub loadable: Vec<String>,
}

/// Asks a node to load a model it lists as loadable, on `sy.load.<node>`
/// (core NATS request/reply). Answered once the model serves, or failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadRequest {
    pub v: u16,
    pub model: String,
}

/// A node's answer to a [`LoadRequest`]: `error` is absent when the model
/// now serves there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadReply {
    pub v: u16,
    pub model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One GPU as NVML reports it. A reading the driver refuses is left out.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GpuStats {
    pub index: u32,
    pub name: String,
    /// Share of the last sample period a kernel was running, 0–100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utilization_pct: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_used_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_total_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature_c: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_mw: Option<u32>,
    /// Compute processes holding the GPU (the engine, or something else
    /// that should not be there).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<GpuProcess>,
}

/// A process using a GPU, as NVML lists it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GpuProcess {
    pub pid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
}

/// An engine's load in its own terms.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct EngineLoad {
    /// Requests the engine holds waiting for a batch slot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_depth: Option<u32>,
    /// Share of its KV cache in use, 0–1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_cache_usage: Option<f32>,
}

impl EngineLoad {
    pub fn is_unknown(&self) -> bool {
        self.queue_depth.is_none() && self.kv_cache_usage.is_none()
    }
}
