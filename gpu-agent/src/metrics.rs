//! Metric names of the agent, in one place.

pub const JOBS: &str = "switchyard_agent_jobs_total";
pub const RUNNING: &str = "switchyard_agent_running_jobs";
pub const SLOTS: &str = "switchyard_agent_slots";
pub const HELD: &str = "switchyard_agent_held_assignments";
pub const ENGINE_SECONDS: &str = "switchyard_agent_engine_seconds";
pub const JOB_SECONDS: &str = "switchyard_agent_job_seconds";
pub const ENGINE_QUEUE: &str = "switchyard_agent_engine_queue_depth";
pub const ENGINE_KV_CACHE: &str = "switchyard_agent_engine_kv_cache_usage_ratio";
pub const HEARTBEATS: &str = "switchyard_agent_heartbeats_total";
pub const GPU_UTILIZATION: &str = "switchyard_agent_gpu_utilization_ratio";
pub const GPU_MEMORY_USED: &str = "switchyard_agent_gpu_memory_used_bytes";
pub const GPU_MEMORY_TOTAL: &str = "switchyard_agent_gpu_memory_total_bytes";
pub const GPU_TEMPERATURE: &str = "switchyard_agent_gpu_temperature_celsius";
pub const GPU_POWER: &str = "switchyard_agent_gpu_power_watts";
pub const MODEL_LOADS: &str = "switchyard_agent_model_loads_total";
pub const MODEL_UNLOADS: &str = "switchyard_agent_model_unloads_total";
pub const ENGINE_EXITS: &str = "switchyard_agent_engine_exits_total";

pub fn describe() {
    metrics::describe_histogram!(
        JOB_SECONDS,
        metrics::Unit::Seconds,
        "Time from admission to the result, for jobs that succeeded here"
    );
    metrics::describe_gauge!(
        ENGINE_QUEUE,
        "Requests the engine holds waiting, from its own metrics"
    );
    metrics::describe_gauge!(
        ENGINE_KV_CACHE,
        "Share of the engine's KV cache in use (vLLM)"
    );
    metrics::describe_counter!(
        JOBS,
        "Assignments finished by this agent, by outcome (succeeded, failed, duplicate, undecodable, handed_back: held, then displaced by a higher level)"
    );
    metrics::describe_gauge!(
        RUNNING,
        "Slots in use: assignments given a slot and not yet acknowledged"
    );
    metrics::describe_gauge!(SLOTS, "Concurrent assignments this node accepts");
    metrics::describe_gauge!(
        HELD,
        "Assignments read from the work queue and waiting for a slot; the highest priority starts first"
    );
    metrics::describe_histogram!(
        ENGINE_SECONDS,
        metrics::Unit::Seconds,
        "Time the engine took per assignment"
    );
    metrics::describe_counter!(HEARTBEATS, "Heartbeats published");
    metrics::describe_gauge!(
        GPU_UTILIZATION,
        "Share of the last NVML sample period a kernel ran, by GPU"
    );
    metrics::describe_gauge!(
        GPU_MEMORY_USED,
        metrics::Unit::Bytes,
        "GPU memory in use, by GPU"
    );
    metrics::describe_gauge!(
        GPU_MEMORY_TOTAL,
        metrics::Unit::Bytes,
        "GPU memory installed, by GPU"
    );
    metrics::describe_gauge!(
        GPU_TEMPERATURE,
        "GPU temperature in degrees Celsius, by GPU"
    );
    metrics::describe_gauge!(GPU_POWER, "GPU power draw in watts, by GPU");
    metrics::describe_counter!(
        MODEL_LOADS,
        "Models loaded at the dispatcher's request, by outcome (loaded, failed)"
    );
    metrics::describe_counter!(MODEL_UNLOADS, "Models unloaded after going idle");
    metrics::describe_counter!(
        ENGINE_EXITS,
        "Times the engine process the agent runs exited or failed to start; each is followed by a restart"
    );
}
