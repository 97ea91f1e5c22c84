//! Metric names of the agent, in one place.

pub const JOBS: &str = "switchyard_agent_jobs_total";
pub const RUNNING: &str = "switchyard_agent_running_jobs";
pub const SLOTS: &str = "switchyard_agent_slots";
pub const ENGINE_SECONDS: &str = "switchyard_agent_engine_seconds";
pub const HEARTBEATS: &str = "switchyard_agent_heartbeats_total";

pub fn describe() {
    metrics::describe_counter!(
        JOBS,
        "Assignments finished by this agent, by outcome (succeeded, failed, duplicate, undecodable)"
    );
    metrics::describe_gauge!(RUNNING, "Assignments running on the engine now");
    metrics::describe_gauge!(SLOTS, "Concurrent assignments this node accepts");
    metrics::describe_histogram!(
        ENGINE_SECONDS,
        metrics::Unit::Seconds,
        "Time the engine took per assignment"
    );
    metrics::describe_counter!(HEARTBEATS, "Heartbeats published");
}
