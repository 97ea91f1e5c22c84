//! The OpenAPI 3 description of the broker's HTTP API, generated from the
//! handlers' annotations and served at `/openapi.json`.

use axum::Router;
use axum::routing::get;
use utoipa::OpenApi;

use switchyard_store::view::JobView;

use crate::jobs::{self, input, list, summary};
use crate::state::ApiState;
use crate::workflows;
use crate::{
    admin, batches, dead_letters, events, files, fleet, kserve, models, openai, resume, usage,
    webhooks,
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Switchyard",
        description = "Queue-based inference broker: every request is a job in a durable, prioritised queue. Errors are `{\"error\": {\"code\", \"message\"}}` with a stable code (KServe routes: `{\"error\": \"…\", \"code\"}`). See docs/api.md."
    ),
    paths(
        jobs::submit,
        list::list_jobs,
        summary::summary,
        input::job_input,
        jobs::get_job,
        jobs::cancel_job,
        events::events,
        openai::chat,
        openai::completions,
        openai::embeddings,
        openai::models,
        resume::chat,
        resume::completion,
        kserve::live,
        kserve::ready,
        kserve::metadata,
        kserve::model_ready,
        kserve::infer,
        dead_letters::list,
        dead_letters::replay,
        webhooks::job_deliveries,
        webhooks::disabled,
        webhooks::enable,
        files::upload,
        files::list,
        files::retrieve,
        files::content,
        files::delete,
        batches::create,
        batches::list,
        batches::retrieve,
        batches::cancel,
        usage::usage,
        usage::job_usage,
        workflows::start,
        workflows::list::list_runs,
        workflows::get_run,
        workflows::cancel,
        workflows::events,
        workflows::replay,
        admin::create_tenant,
        admin::list_tenants,
        admin::set_limits,
        admin::create_key,
        admin::list_keys,
        admin::revoke_key,
        models::read,
        models::replace_registry,
        models::set_model,
        models::remove_model,
        models::replace_aliases,
        models::set_alias,
        models::remove_alias,
        models::start_rollout,
        models::roll_back,
        fleet::nodes,
        fleet::queues,
    ),
    components(schemas(JobView)),
    modifiers(&BearerKeys),
    security(("api_key" = [])),
    tags(
        (name = "jobs", description = "The jobs API"),
        (name = "openai", description = "OpenAI-compatible endpoints"),
        (name = "kserve", description = "KServe v2 (Triton) endpoints"),
        (name = "billing", description = "Usage and cost"),
        (name = "batches", description = "OpenAI's Files and Batch APIs"),
        (name = "webhooks", description = "Webhook deliveries and disabled receivers"),
        (name = "cluster", description = "GPU nodes and queues as the components last reported them (the operator role)"),
        (name = "workflows", description = "Workflow runs: start, read, cancel"),
        (name = "admin", description = "Tenants, API keys, dead letters, aliases and rollouts (the admin role)"),
    )
)]
struct ApiDoc;

/// API keys go in `Authorization: Bearer sy_…` (or `X-Api-Key`).
struct BearerKeys;

impl utoipa::Modify for BearerKeys {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("sy_<id>_<secret>")
                    .build(),
            ),
        );
    }
}

pub fn router() -> Router<ApiState> {
    Router::new().route(
        "/openapi.json",
        get(|| async { axum::Json(ApiDoc::openapi()) }),
    )
}
