//! The cluster now, for operators and the console: the GPU nodes with
//! their last heartbeat, and each model's queues with the nodes it wants.

use std::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use serde_json::{Value, json};
use switchyard_core::fleet::{Fleet, LOST_AFTER};

pub fn router() -> Router<crate::state::ApiState> {
    Router::new()
        .route("/v1/nodes", get(nodes))
        .route("/v1/queues", get(queues))
}

/// Every GPU node heard from in the last ten minutes, by name.
#[utoipa::path(get, path = "/v1/nodes", tag = "cluster",
    responses((status = 200, description = "`{nodes: [{node, state, seen_ms_ago, models, loadable, slots_total, running, queued, draining, ready, service_ms, service_ms_by_model, gpus, engine}], lost_after_ms}`; `state` is `ready`, `draining`, `unready` or `lost`", body = Object)))]
async fn nodes(State(fleet): State<Fleet>) -> axum::Json<Value> {
    axum::Json(json!({
        "nodes": fleet.nodes(Instant::now()),
        "lost_after_ms": LOST_AFTER.as_millis() as u64,
    }))
}

/// Each model's queues as the dispatchers last reported them: jobs waiting
/// and the oldest wait per priority, arrivals, running jobs, and the nodes
/// it wants beside those that serve it.
#[utoipa::path(get, path = "/v1/queues", tag = "cluster",
    responses((status = 200, description = "`{queues: [{model, queued, running, arrivals_per_s, service_ms, desired_nodes, live_nodes, priorities: [{priority, queued, oldest_ms}], at_ms}]}`", body = Object)))]
async fn queues(State(fleet): State<Fleet>) -> axum::Json<Value> {
    axum::Json(json!({ "queues": fleet.queues() }))
}
