//! The broker's HTTP edge: one router over a file per front (the jobs API,
//! the OpenAI-compatible and KServe v2 fronts, job events, batches and
//! files, usage, webhooks, admin, the live model registry, dead letters,
//! workflow runs), the API description, the
//! key check, and the one place where an error becomes an HTTP status
//! (`error.rs`). Every front that waits for a job uses the core's one
//! call path.

mod admin;
mod auth;
mod batches;
mod console;
mod dead_letters;
mod error;
mod events;
mod extract;
mod files;
mod fleet;
mod jobs;
mod kserve;
mod models;
mod openai;
mod openapi;
mod reply;
mod resume;
mod state;
mod usage;
mod webhooks;
mod workflows;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Extension};

pub use error::{ApiError, job_error_status, status};
pub use events::{Gone, sweeper};
pub use state::{ApiState, Knobs, TraceLink};
pub use workflows::{ProjectRunsError, RunSources, follow_runs};

/// Every endpoint, behind the key check.
pub fn router(state: ApiState) -> Router {
    let door = auth::Door {
        auth: state.auth.clone(),
        client_address: state.client_address_header.clone(),
    };
    let knobs = state.knobs;
    Router::new()
        .merge(jobs::router())
        .merge(openai::router())
        .merge(resume::router())
        .merge(kserve::router())
        .merge(events::router())
        .merge(openapi::router())
        .merge(webhooks::router())
        .merge(usage::router())
        .merge(batches::router())
        .merge(files::router(knobs.max_file_bytes))
        .merge(admin::router())
        .merge(models::router())
        .merge(dead_letters::router())
        .merge(fleet::router())
        .merge(console::router())
        .merge(workflows::router())
        .layer(DefaultBodyLimit::max(knobs.max_body_bytes))
        .layer(Extension(extract::BodyLimit(knobs.max_body_bytes)))
        .with_state(state)
        .layer(axum::middleware::from_fn_with_state(door, auth::guard))
}
