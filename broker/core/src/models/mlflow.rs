//! Following an MLflow model registry: an alias with `follow:` names an
//! MLflow registered model's alias (`models:/summarizer@champion`); when
//! that alias moves to a version some model of our registry says it is
//! (its `mlflow: models:/summarizer/3`), a rollout to that model starts
//! with the follow's steps and guards. Every broker polls; the registry's
//! compare-and-set lets one start it.

use std::time::Duration;

use serde::Deserialize;
use switchyard_runtime::AliasSpec;
use switchyard_runtime::rollout_plan::{Follow, mlflow_alias};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::rollout::{RolloutRequest, Status};
use super::{LiveRegistry, ModelsError};

/// The `broker.mlflow:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MlflowConfig {
    /// The tracking server, `http://mlflow:5000`; a bearer token, if it
    /// needs one, from `MLFLOW_TRACKING_TOKEN`.
    pub tracking_uri: String,
    /// How often the followed aliases are read.
    #[serde(with = "humantime_serde", default = "default_poll")]
    pub poll_interval: Duration,
}

fn default_poll() -> Duration {
    Duration::from_secs(30)
}

#[derive(Debug, thiserror::Error)]
pub enum MlflowError {
    #[error("MLflow at {uri}: {reason}")]
    Unreachable { uri: String, reason: String },
}

/// Reads registered models' aliases from a tracking server.
struct Tracking {
    http: reqwest::Client,
    uri: String,
    token: Option<String>,
}

#[derive(Deserialize)]
struct AliasAnswer {
    model_version: ModelVersion,
}

#[derive(Deserialize)]
struct ModelVersion {
    version: String,
}

impl Tracking {
    /// The version `alias` of registered model `name` points at; None
    /// when the model or the alias does not exist.
    async fn version(&self, name: &str, alias: &str) -> Result<Option<String>, MlflowError> {
        let failed = |reason: String| MlflowError::Unreachable {
            uri: self.uri.clone(),
            reason,
        };
        let mut request = self
            .http
            .get(format!(
                "{}/api/2.0/mlflow/registered-models/alias",
                self.uri.trim_end_matches('/')
            ))
            .query(&[("name", name), ("alias", alias)]);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(|e| failed(e.to_string()))?;
        match response.status().as_u16() {
            200 => {
                let answer: AliasAnswer =
                    response.json().await.map_err(|e| failed(e.to_string()))?;
                Ok(Some(answer.model_version.version))
            }
            // MLflow answers an unknown model or alias 400
            // INVALID_PARAMETER_VALUE or 404 RESOURCE_DOES_NOT_EXIST.
            400 | 404 => Ok(None),
            status => Err(failed(format!("answered {status}"))),
        }
    }
}

/// Polls the followed aliases every `poll_interval` until shutdown.
pub async fn run(live: LiveRegistry, cfg: MlflowConfig, shutdown: CancellationToken) {
    let tracking = Tracking {
        http: reqwest::Client::new(),
        uri: cfg.tracking_uri,
        token: std::env::var("MLFLOW_TRACKING_TOKEN").ok(),
    };
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(cfg.poll_interval) => {}
        }
        let doc = match live.read().await {
            Ok((_, doc)) => doc,
            Err(e) => {
                warn!(error = %e, "cannot read the live registry to follow MLflow");
                continue;
            }
        };
        for alias in &doc.aliases {
            if let Some(follow) = &alias.follow
                && let Err(e) = follow_one(&live, &tracking, alias, follow).await
            {
                warn!(alias = %alias.name, mlflow = %follow.mlflow, error = %e,
                    "cannot follow the MLflow alias");
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum FollowError {
    #[error(transparent)]
    Mlflow(#[from] MlflowError),
    #[error(transparent)]
    Models(#[from] ModelsError),
    #[error("MLflow's alias points at {0}, which no model of the registry names in its mlflow:")]
    Unserved(String),
}

/// Starts a rollout of `alias` to the model MLflow's alias points at, if
/// it is not served already, being rolled out, or rolled back from.
async fn follow_one(
    live: &LiveRegistry,
    tracking: &Tracking,
    alias: &AliasSpec,
    follow: &Follow,
) -> Result<(), FollowError> {
    let Some((name, mlflow_name)) = mlflow_alias(&follow.mlflow) else {
        return Ok(());
    };
    let Some(version) = tracking.version(name, mlflow_name).await? else {
        return Ok(());
    };
    let source = format!("models:/{name}/{version}");
    let to = live
        .registry()
        .models()
        .iter()
        .find(|m| m.mlflow.as_deref() == Some(source.as_str()))
        .map(|m| m.name.clone())
        .ok_or(FollowError::Unserved(source))?;
    let started = live
        .change(None, |doc| {
            let held = doc.alias_mut(&alias.name)?;
            if held.follow.as_ref() != Some(follow)
                || held
                    .targets
                    .iter()
                    .any(|t| t.model == to && t.weight == 100)
            {
                return Ok(None);
            }
            let latest = doc.rollouts.iter().find(|r| r.alias == alias.name);
            // A version rolled back is not rolled out again on its own: an
            // operator does that, or MLflow's alias moves on.
            if latest.is_some_and(|r| {
                r.status == Status::Running || (r.to == to && r.status == Status::RolledBack)
            }) {
                return Ok(None);
            }
            let request = RolloutRequest {
                to: to.clone(),
                steps: follow.steps.clone(),
                every: follow.every,
                guards: follow.guards.clone(),
            };
            let rollout = doc.start_rollout(&alias.name, request)?;
            Ok(Some(rollout))
        })
        .await?;
    if let Some((revision, rollout)) = started {
        info!(alias = %alias.name, to = %rollout.to, mlflow = %follow.mlflow, version, revision,
            "MLflow's alias moved: rollout started");
        live.announce("started", revision, &rollout).await;
    }
    Ok(())
}
