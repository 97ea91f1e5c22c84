//! Metric names of the dispatcher, in one place.

pub const ASSIGNMENTS: &str = "switchyard_dispatcher_assignments_total";
pub const REJECTED: &str = "switchyard_dispatcher_rejected_total";
pub const HELD: &str = "switchyard_dispatcher_held_total";
pub const QUEUE_DEPTH: &str = "switchyard_dispatcher_queue_depth";
pub const QUEUE_OLDEST: &str = "switchyard_dispatcher_queue_oldest_seconds";
pub const DESIRED_REPLICAS: &str = "switchyard_dispatcher_desired_replicas";
pub const ARRIVAL_RATE: &str = "switchyard_dispatcher_arrival_rate";
pub const QUEUE_WAIT: &str = "switchyard_dispatcher_queue_wait_seconds";
pub const DISPATCH_SECONDS: &str = "switchyard_dispatcher_dispatch_seconds";
pub const NODES: &str = "switchyard_dispatcher_nodes";
pub const FREE_SLOTS: &str = "switchyard_dispatcher_free_slots";
pub const RECLAIMED: &str = "switchyard_dispatcher_reclaimed_total";
pub const MODEL_LOADS: &str = "switchyard_dispatcher_model_loads_total";
pub const LANES: &str = "switchyard_dispatcher_lanes";
pub const RUNNING_BOUNDS: &str = "switchyard_dispatcher_running_bounds";

pub fn describe() {
    metrics::describe_counter!(ASSIGNMENTS, "Jobs assigned to a node, by priority");
    metrics::describe_counter!(
        REJECTED,
        "Queued messages that could not be scheduled, by reason"
    );
    metrics::describe_gauge!(
        QUEUE_DEPTH,
        "Jobs waiting in the queue, by model and priority"
    );
    metrics::describe_gauge!(
        QUEUE_OLDEST,
        metrics::Unit::Seconds,
        "Age of the oldest waiting job, by model and priority"
    );
    metrics::describe_gauge!(
        DESIRED_REPLICAS,
        "Nodes each model needs for its arrivals and backlog (docs/autoscaling.md)"
    );
    metrics::describe_gauge!(ARRIVAL_RATE, "Jobs arriving per second, by model");
    metrics::describe_counter!(
        HELD,
        "Jobs put back in the queue because a bound on running jobs was reached, by limit"
    );
    metrics::describe_histogram!(
        DISPATCH_SECONDS,
        metrics::Unit::Seconds,
        "Time from placing a job to its assignment stored in the node's work queue"
    );
    metrics::describe_histogram!(
        QUEUE_WAIT,
        metrics::Unit::Seconds,
        "Time from admission to assignment"
    );
    metrics::describe_gauge!(NODES, "Nodes in the cluster view that can take work");
    metrics::describe_counter!(
        RECLAIMED,
        "Assignments taken back from lost or draining nodes, by what became of them"
    );
    metrics::describe_counter!(
        MODEL_LOADS,
        "Nodes asked to load a model no node served, by outcome (loaded, failed, timed_out)"
    );
    metrics::describe_gauge!(
        LANES,
        "Tenant lanes (consumers of the job queues) open: tenants with jobs queued or queued a moment ago"
    );
    metrics::describe_gauge!(
        RUNNING_BOUNDS,
        "Tenants and API keys whose max_running_jobs this dispatcher applies; 0 while none has one and running jobs are not followed"
    );
    metrics::describe_gauge!(
        FREE_SLOTS,
        "Assignments the cluster can take now, as the dispatcher sees it"
    );
}
