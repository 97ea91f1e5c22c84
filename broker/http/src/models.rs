//! The admin API of the live model registry: the aliases, their weights,
//! and rollouts from one version to another. Every change may name the
//! revision it was based on (`?revision=`; none: the latest) and answers
//! with the new one.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use serde::Deserialize;
use serde_json::{Value, json};
use switchyard_core::models::rollout::{RolloutError, RolloutRequest, Status, Tripped};
use switchyard_core::models::{LiveRegistry, ModelsError};
use switchyard_runtime::aliases::{AliasSpec, Sticky, Target};
use switchyard_runtime::rollout_plan::Follow;
use switchyard_schemas::now_ms;

use crate::error::ApiError;
use crate::extract::{ApiJson, ApiQuery};
use crate::state::ApiState;

pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/v1/admin/models", get(read))
        .route("/v1/admin/aliases", put(replace_aliases))
        .route(
            "/v1/admin/aliases/{name}",
            put(set_alias).delete(remove_alias),
        )
        .route("/v1/admin/aliases/{name}/rollout", post(start_rollout))
        .route("/v1/admin/aliases/{name}/rollback", post(roll_back))
}

/// The revision a change is based on; none: the latest.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Based {
    revision: Option<u64>,
}

/// The registry: its models, and the live aliases and rollouts with the
/// revision they are at.
#[utoipa::path(get, path = "/v1/admin/models", tag = "admin",
    responses((status = 200, description = "`{revision, models: [{name, kind}], aliases, rollouts}`", body = Object)))]
async fn read(State(live): State<LiveRegistry>) -> Result<axum::Json<Value>, ApiError> {
    let (revision, doc) = live.read().await?;
    let models: Vec<Value> = live
        .registry()
        .iter()
        .map(|m| json!({"name": m.name, "kind": m.kind}))
        .collect();
    Ok(axum::Json(json!({
        "revision": revision,
        "models": models,
        "aliases": doc.aliases,
        "rollouts": doc.rollouts,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AliasBody {
    targets: Vec<Target>,
    #[serde(default)]
    sticky: Sticky,
    follow: Option<Follow>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AliasSet {
    aliases: Vec<AliasSpec>,
}

/// Replace every alias at once, checked together (what `switchyard apply`
/// sends): one revision. An alias whose rollout runs must stay as it is.
#[utoipa::path(put, path = "/v1/admin/aliases", tag = "admin",
    params(("revision" = Option<u64>, Query, description = "The revision the change is based on")),
    request_body(content = Object, description = "`{aliases: [{name, targets, sticky?}]}`"),
    responses(
        (status = 200, description = "`{revision, aliases}`", body = Object),
        (status = 409, description = "`stale_revision`, or `rollout_running`", body = Object),
        (status = 422, description = "`invalid_request`", body = Object),
    ))]
async fn replace_aliases(
    State(live): State<LiveRegistry>,
    ApiQuery(q): ApiQuery<Based>,
    ApiJson(set): ApiJson<AliasSet>,
) -> Result<axum::Json<Value>, ApiError> {
    let (revision, ()) = live
        .edit(q.revision, |doc| {
            let held = doc.aliases.clone();
            let named =
                |list: &[AliasSpec], name: &str| list.iter().find(|a| a.name == name).cloned();
            for rollout in doc.rollouts.iter().filter(|r| r.status == Status::Running) {
                if named(&held, &rollout.alias) != named(&set.aliases, &rollout.alias) {
                    return Err(RolloutError::Running(rollout.alias.clone()).into());
                }
            }
            doc.aliases = set.aliases.clone();
            doc.rollouts
                .retain(|r| named(&set.aliases, &r.alias).is_some());
            Ok(())
        })
        .await?;
    Ok(axum::Json(
        json!({"revision": revision, "aliases": set.aliases}),
    ))
}

/// Make an alias or change its targets and weights.
#[utoipa::path(put, path = "/v1/admin/aliases/{name}", tag = "admin",
    params(("revision" = Option<u64>, Query, description = "The revision the change is based on")),
    request_body(content = Object, description = "`{targets: [{model, weight}], sticky?, follow?}`"),
    responses(
        (status = 200, description = "`{revision, alias}`", body = Object),
        (status = 409, description = "`stale_revision`, or `rollout_running`: a rollout owns the weights", body = Object),
        (status = 422, description = "`invalid_request`: unknown model, weights not summing to 100, kinds that differ", body = Object),
    ))]
async fn set_alias(
    State(live): State<LiveRegistry>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<Based>,
    ApiJson(body): ApiJson<AliasBody>,
) -> Result<axum::Json<Value>, ApiError> {
    let alias = AliasSpec {
        name: name.clone(),
        targets: body.targets,
        sticky: body.sticky,
        follow: body.follow,
    };
    let (revision, ()) = live
        .edit(q.revision, |doc| {
            doc.refuse_if_rolling(&name)?;
            match doc.alias_mut(&name) {
                Ok(held) => *held = alias.clone(),
                Err(_) => doc.aliases.push(alias.clone()),
            }
            Ok(())
        })
        .await?;
    Ok(axum::Json(json!({"revision": revision, "alias": alias})))
}

/// Remove an alias: requests naming it are refused `unknown_model` from
/// then on; its jobs already queued run on their versions.
#[utoipa::path(delete, path = "/v1/admin/aliases/{name}", tag = "admin",
    params(("revision" = Option<u64>, Query, description = "The revision the change is based on")),
    responses(
        (status = 200, description = "`{revision}`", body = Object),
        (status = 404, description = "`not_found`", body = Object),
        (status = 409, description = "`stale_revision` or `rollout_running`", body = Object),
    ))]
async fn remove_alias(
    State(live): State<LiveRegistry>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<Based>,
) -> Result<axum::Json<Value>, ApiError> {
    let (revision, ()) = live
        .edit(q.revision, |doc| {
            doc.alias_mut(&name)?;
            doc.refuse_if_rolling(&name)?;
            doc.aliases.retain(|a| a.name != name);
            doc.rollouts.retain(|r| r.alias != name);
            Ok(())
        })
        .await?;
    Ok(axum::Json(json!({ "revision": revision })))
}

/// Move an alias to another version step by step, under guards (one step
/// of 100: blue-green).
#[utoipa::path(post, path = "/v1/admin/aliases/{name}/rollout", tag = "admin",
    params(("revision" = Option<u64>, Query, description = "The revision the change is based on")),
    request_body(content = Object, description = "`{to, steps?, every?, guards: {min_samples, window?, max_error_rate_increase?, max_p95_latency_ratio?, max_cost_ratio?}}`"),
    responses(
        (status = 201, description = "`{revision, rollout}`", body = Object),
        (status = 404, description = "`not_found`: no such alias", body = Object),
        (status = 409, description = "`stale_revision`, or `rollout_running`", body = Object),
        (status = 422, description = "`invalid_request`", body = Object),
    ))]
async fn start_rollout(
    State(live): State<LiveRegistry>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<Based>,
    ApiJson(request): ApiJson<RolloutRequest>,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    let (revision, rollout) = live
        .edit(q.revision, |doc| doc.start_rollout(&name, request.clone()))
        .await?;
    live.announce("started", revision, &rollout).await;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({"revision": revision, "rollout": rollout})),
    ))
}

/// Send a running rollout's traffic back to its old version, at once.
#[utoipa::path(post, path = "/v1/admin/aliases/{name}/rollback", tag = "admin",
    params(("revision" = Option<u64>, Query, description = "The revision the change is based on")),
    responses(
        (status = 200, description = "`{revision, rollout}`", body = Object),
        (status = 404, description = "`not_found`: no rollout of it is running", body = Object),
        (status = 409, description = "`stale_revision`", body = Object),
    ))]
async fn roll_back(
    State(live): State<LiveRegistry>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<Based>,
) -> Result<axum::Json<Value>, ApiError> {
    let by_hand = switchyard_core::models::rollout::Verdict::RollBack(Tripped {
        guard: "operator".into(),
        old: 0.0,
        new: 0.0,
        limit: 0.0,
        old_jobs: 0,
        new_jobs: 0,
    });
    let (revision, rollout) = live
        .edit(q.revision, |doc| {
            let rollout = doc
                .running(&name)
                .ok_or_else(|| ModelsError::NoRollout(name.clone()))?;
            let targets = rollout.apply(&by_hand, now_ms());
            let rollout = rollout.clone();
            doc.alias_mut(&name)?.targets = targets;
            Ok(rollout)
        })
        .await?;
    live.announce("rolled_back", revision, &rollout).await;
    Ok(axum::Json(
        json!({"revision": revision, "rollout": rollout}),
    ))
}
