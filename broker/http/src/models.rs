//! The admin API of the live model registry: the models, the aliases and
//! their weights, and rollouts from one version to another. Every change may name the
//! revision it was based on (`?revision=`; none: the latest) and answers
//! with the new one.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use switchyard_core::models::drive::{Standing, standing};
use switchyard_core::models::rollout::{Rollout, RolloutError, RolloutRequest, Status, Tripped};
use switchyard_core::models::{LiveRegistry, ModelsError};
use switchyard_runtime::ModelSpec;
use switchyard_runtime::aliases::{AliasSpec, Sticky, Target};
use switchyard_runtime::rollout_plan::Follow;
use switchyard_schemas::now_ms;
use switchyard_store::{JobStore, ListFilter, Status as JobStatus};

use crate::error::ApiError;
use crate::extract::{ApiJson, ApiQuery};
use crate::state::{ApiState, Records};

pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/v1/admin/models", get(read).put(replace_registry))
        .route(
            "/v1/admin/models/{name}",
            put(set_model).delete(remove_model),
        )
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

/// A rollout as the registry keeps it and, while it runs, the figures its
/// guards judge it by.
#[derive(Serialize)]
struct Shown<'a> {
    #[serde(flatten)]
    rollout: &'a Rollout,
    #[serde(skip_serializing_if = "Option::is_none")]
    figures: Option<Standing>,
}

/// The live registry: its models, aliases and rollouts, with the revision
/// they are at.
#[utoipa::path(get, path = "/v1/admin/models", tag = "admin",
    responses((status = 200, description = "`{revision, models, aliases, rollouts}`; a running rollout has `figures: {old, new}`, each version's `{jobs, failed, p95_engine_ms, mean_cost_micros}` over what its guards compare", body = Object)))]
async fn read(
    State(live): State<LiveRegistry>,
    State(records): State<Records>,
) -> Result<axum::Json<Value>, ApiError> {
    let (revision, doc) = live.read().await?;
    let now = now_ms();
    let mut rollouts = Vec::with_capacity(doc.rollouts.len());
    for rollout in &doc.rollouts {
        let figures = match rollout.status {
            Status::Running => Some(standing(records.store.as_ref(), rollout, now).await?),
            _ => None,
        };
        rollouts.push(Shown { rollout, figures });
    }
    Ok(axum::Json(json!({
        "revision": revision,
        "models": doc.models,
        "aliases": doc.aliases,
        "rollouts": rollouts,
    })))
}

/// Refused while any job of `model` is queued or running: removing it
/// would strand them. An alias's old version is drained by moving the
/// alias off it first.
async fn refuse_if_busy(store: &dyn JobStore, model: &str) -> Result<(), ApiError> {
    for status in [JobStatus::Queued, JobStatus::Assigned, JobStatus::Running] {
        let filter = ListFilter {
            status: Some(status),
            model: Some(model.to_owned()),
            ..ListFilter::default()
        };
        if let Some(job) = store
            .list(&filter, 1)
            .await
            .map_err(ModelsError::from)?
            .first()
        {
            return Err(ModelsError::InUse {
                model: model.to_owned(),
                why: format!("job {} is {}", job.id, status.as_str()),
            }
            .into());
        }
    }
    Ok(())
}

/// The whole registry: models and aliases.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Whole {
    models: Vec<ModelSpec>,
    aliases: Vec<AliasSpec>,
}

/// Replace the models and aliases at once, checked together (what
/// `switchyard apply` sends): one revision. A model with jobs queued or
/// running must stay, and an alias whose rollout runs must stay as it is.
#[utoipa::path(put, path = "/v1/admin/models", tag = "admin",
    params(("revision" = Option<u64>, Query, description = "The revision the change is based on")),
    request_body(content = Object, description = "`{models: [{name, kind, …}], aliases: [{name, targets, sticky?}]}`"),
    responses(
        (status = 200, description = "`{revision, models, aliases}`", body = Object),
        (status = 409, description = "`stale_revision`, `rollout_running`, or `model_in_use`", body = Object),
        (status = 422, description = "`invalid_request`", body = Object),
    ))]
async fn replace_registry(
    State(s): State<ApiState>,
    ApiQuery(q): ApiQuery<Based>,
    ApiJson(whole): ApiJson<Whole>,
) -> Result<axum::Json<Value>, ApiError> {
    let (_, held) = s.live.read().await?;
    for gone in held
        .models
        .iter()
        .filter(|m| !whole.models.iter().any(|w| w.name == m.name))
    {
        refuse_if_busy(s.store.as_ref(), &gone.name).await?;
    }
    let revision = replace(&s.live, q.revision, Some(&whole.models), &whole.aliases).await?;
    Ok(axum::Json(json!({
        "revision": revision,
        "models": whole.models,
        "aliases": whole.aliases,
    })))
}

/// Add a model, or change one: its limits, price, cache and PII policy.
/// Every broker, dispatcher and agent takes it up within seconds.
#[utoipa::path(put, path = "/v1/admin/models/{name}", tag = "admin",
    params(("revision" = Option<u64>, Query, description = "The revision the change is based on")),
    request_body(content = Object, description = "`{kind, max_tokens?, default_max_tokens?, max_input_bytes?, max_attempts?, timeout?, cache?, pii?, price?, mlflow?}`"),
    responses(
        (status = 200, description = "`{revision, model}`", body = Object),
        (status = 409, description = "`stale_revision`", body = Object),
        (status = 422, description = "`invalid_request`: a bad field, or a kind that differs from its aliases' other targets", body = Object),
    ))]
async fn set_model(
    State(live): State<LiveRegistry>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<Based>,
    ApiJson(mut body): ApiJson<Value>,
) -> Result<axum::Json<Value>, ApiError> {
    let Some(fields) = body.as_object_mut() else {
        return Err(ModelsError::Invalid("a model is a JSON object".into()).into());
    };
    match fields.get("name") {
        Some(given) if *given != json!(name) => {
            return Err(
                ModelsError::Invalid(format!("the body names {given}, the path {name:?}")).into(),
            );
        }
        _ => fields.insert("name".into(), json!(name)),
    };
    let spec: ModelSpec =
        serde_json::from_value(body).map_err(|e| ModelsError::Invalid(e.to_string()))?;
    let (revision, ()) = live
        .edit(q.revision, |doc| {
            doc.put_model(spec.clone());
            Ok(())
        })
        .await?;
    Ok(axum::Json(json!({"revision": revision, "model": spec})))
}

/// Remove a model: refused while an alias points at it or any of its jobs
/// is queued or running. Requests naming it are refused `unknown_model`
/// from then on.
#[utoipa::path(delete, path = "/v1/admin/models/{name}", tag = "admin",
    params(("revision" = Option<u64>, Query, description = "The revision the change is based on")),
    responses(
        (status = 200, description = "`{revision}`", body = Object),
        (status = 404, description = "`not_found`", body = Object),
        (status = 409, description = "`stale_revision`, or `model_in_use`", body = Object),
    ))]
async fn remove_model(
    State(s): State<ApiState>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<Based>,
) -> Result<axum::Json<Value>, ApiError> {
    refuse_if_busy(s.store.as_ref(), &name).await?;
    let (revision, ()) = s
        .live
        .edit(q.revision, |doc| doc.remove_model(&name))
        .await?;
    Ok(axum::Json(json!({ "revision": revision })))
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
    let revision = replace(&live, q.revision, None, &set.aliases).await?;
    Ok(axum::Json(
        json!({"revision": revision, "aliases": set.aliases}),
    ))
}

/// Puts `aliases`, and `models` when given, in place of the registry's as
/// one revision; an alias whose rollout runs must stay as it is.
async fn replace(
    live: &LiveRegistry,
    expected: Option<u64>,
    models: Option<&[ModelSpec]>,
    aliases: &[AliasSpec],
) -> Result<u64, ModelsError> {
    let (revision, ()) = live
        .edit(expected, |doc| {
            let named =
                |list: &[AliasSpec], name: &str| list.iter().find(|a| a.name == name).cloned();
            for rollout in doc.rollouts.iter().filter(|r| r.status == Status::Running) {
                if named(&doc.aliases, &rollout.alias) != named(aliases, &rollout.alias) {
                    return Err(RolloutError::Running(rollout.alias.clone()).into());
                }
            }
            if let Some(models) = models {
                doc.models = models.to_vec();
            }
            doc.aliases = aliases.to_vec();
            doc.rollouts.retain(|r| named(aliases, &r.alias).is_some());
            Ok(())
        })
        .await?;
    Ok(revision)
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
