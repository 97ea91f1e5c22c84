//! `switchyard models …` and `switchyard apply -f`: the live model registry
//! through the broker's admin API (docs/models.md).

use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;
use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use switchyard_broker::BrokerConfig;
use switchyard_runtime::{AliasSpec, ModelSpec, Registry, config};

use super::{Api, print_answer};

#[derive(Subcommand)]
pub enum ModelsAction {
    /// Prints the models, the live aliases and rollouts, and the revision.
    List,
    /// Makes an alias or replaces its targets: `--target v1=90 --target v2=10`.
    SetAlias {
        name: String,
        /// `model=weight`, once per target; the weights sum to 100.
        #[arg(long = "target", required = true)]
        targets: Vec<String>,
        /// request, tenant or user.
        #[arg(long, default_value = "request")]
        sticky: String,
        /// The revision the change is based on; refused if it is not the latest.
        #[arg(long)]
        revision: Option<u64>,
    },
    /// Removes an alias.
    RemoveAlias {
        name: String,
        #[arg(long)]
        revision: Option<u64>,
    },
    /// Moves an alias to another version step by step, under guards.
    Rollout {
        alias: String,
        #[arg(long)]
        to: String,
        /// The new version's share at each step, in percent.
        #[arg(long, value_delimiter = ',', default_value = "5,25,50,100")]
        steps: Vec<u32>,
        /// How long each step holds.
        #[arg(long, default_value = "10m")]
        every: String,
        /// Ended jobs each version needs before a guard decides.
        #[arg(long)]
        min_samples: u64,
        #[arg(long, default_value = "5m")]
        window: String,
        #[arg(long)]
        max_error_rate_increase: Option<f64>,
        #[arg(long)]
        max_p95_latency_ratio: Option<f64>,
        #[arg(long)]
        max_cost_ratio: Option<f64>,
        #[arg(long)]
        revision: Option<u64>,
    },
    /// Sends a running rollout's traffic back to its old version.
    Rollback {
        alias: String,
        #[arg(long)]
        revision: Option<u64>,
    },
}

/// Runs a `models` command against the broker and prints its answer.
pub fn run(action: ModelsAction, broker: &BrokerConfig) -> ExitCode {
    let api = Api::new(broker);
    let based = |path: String, revision: Option<u64>| match revision {
        Some(r) => format!("{path}?revision={r}"),
        None => path,
    };
    let request = match action {
        ModelsAction::List => api.request(Method::GET, "/v1/admin/models"),
        ModelsAction::SetAlias {
            name,
            targets,
            sticky,
            revision,
        } => {
            let targets: Result<Vec<Value>, String> = targets.iter().map(|t| target(t)).collect();
            let targets = match targets {
                Ok(targets) => targets,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            api.request(
                Method::PUT,
                &based(format!("/v1/admin/aliases/{name}"), revision),
            )
            .json(&json!({"targets": targets, "sticky": sticky}))
        }
        ModelsAction::RemoveAlias { name, revision } => api.request(
            Method::DELETE,
            &based(format!("/v1/admin/aliases/{name}"), revision),
        ),
        ModelsAction::Rollout {
            alias,
            to,
            steps,
            every,
            min_samples,
            window,
            max_error_rate_increase,
            max_p95_latency_ratio,
            max_cost_ratio,
            revision,
        } => api
            .request(
                Method::POST,
                &based(format!("/v1/admin/aliases/{alias}/rollout"), revision),
            )
            .json(&json!({
                "to": to, "steps": steps, "every": every,
                "guards": {
                    "min_samples": min_samples, "window": window,
                    "max_error_rate_increase": max_error_rate_increase,
                    "max_p95_latency_ratio": max_p95_latency_ratio,
                    "max_cost_ratio": max_cost_ratio,
                },
            })),
        ModelsAction::Rollback { alias, revision } => api.request(
            Method::POST,
            &based(format!("/v1/admin/aliases/{alias}/rollback"), revision),
        ),
    };
    print_answer(api.send(request))
}

/// `model=weight` as the API takes a target.
fn target(text: &str) -> Result<Value, String> {
    let (model, weight) = text
        .split_once('=')
        .ok_or_else(|| format!("target {text:?} is not model=weight"))?;
    let weight: u32 = weight
        .parse()
        .map_err(|_| format!("target {text:?}: the weight is not a whole number"))?;
    Ok(json!({"model": model, "weight": weight}))
}

/// The part of a YAML file `apply` reads: its models and aliases (the
/// rest of a configuration file is left alone).
#[derive(Deserialize)]
struct RegistryFile {
    /// None: the live models stay as they are.
    #[serde(default)]
    models: Option<Vec<ModelSpec>>,
    #[serde(default)]
    aliases: Vec<AliasSpec>,
}

/// Makes the live models and aliases those of `file` (its aliases only,
/// when it has no `models:`): checked first, the difference printed, then
/// (unless `dry_run`) put in force as one revision based on the one the
/// difference was taken from.
pub fn apply(file: &Path, dry_run: bool, broker: &BrokerConfig) -> ExitCode {
    let wanted = match config::load::<RegistryFile>(Some(file)) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let api = Api::new(broker);
    print_answer(async {
        let (ok, live) = api
            .send(api.request(Method::GET, "/v1/admin/models"))
            .await?;
        if !ok {
            return Ok((false, live));
        }
        let decoded = |field: &str| live[field].clone();
        let held_models: Vec<ModelSpec> =
            serde_json::from_value(decoded("models")).map_err(|e| e.to_string())?;
        let held_aliases: Vec<AliasSpec> =
            serde_json::from_value(decoded("aliases")).map_err(|e| e.to_string())?;
        let revision = live["revision"].as_u64().unwrap_or(0);
        let models = wanted.models.clone().unwrap_or_else(|| held_models.clone());
        let issues = Registry::check(&models, &wanted.aliases);
        if !issues.is_empty() {
            let refusal =
                json!({"error": {"code": "invalid_request", "message": issues.to_string()}});
            return Ok((false, refusal));
        }
        let diff = json!({
            "models": difference(&held_models, &models, |m| &m.name),
            "aliases": difference(&held_aliases, &wanted.aliases, |a| &a.name),
        });
        let unchanged = diff
            .as_object()
            .into_iter()
            .flat_map(|d| d.values())
            .flat_map(|part| part.as_object().into_iter().flat_map(|p| p.values()))
            .all(|v| v.as_array().is_some_and(Vec::is_empty));
        if dry_run || unchanged {
            return Ok((
                true,
                json!({"revision": revision, "diff": diff, "applied": false}),
            ));
        }
        let put = api
            .request(
                Method::PUT,
                &format!("/v1/admin/models?revision={revision}"),
            )
            .json(&json!({"models": models, "aliases": wanted.aliases}));
        let (ok, answer) = api.send(put).await?;
        if !ok {
            return Ok((false, answer));
        }
        Ok((
            true,
            json!({"revision": answer["revision"], "diff": diff, "applied": true}),
        ))
    })
}

/// What applying `wanted` over `held` adds, changes and removes, entries
/// matched by `name`.
fn difference<T: Serialize + PartialEq>(
    held: &[T],
    wanted: &[T],
    name: impl Fn(&T) -> &String,
) -> serde_json::Map<String, Value> {
    fn find<'a, T>(list: &'a [T], key: &String, name: &impl Fn(&T) -> &String) -> Option<&'a T> {
        list.iter().find(|e| name(e) == key)
    }
    let mut added = Vec::new();
    let mut changed = Vec::new();
    for entry in wanted {
        match find(held, name(entry), &name) {
            None => added.push(json!(entry)),
            Some(before) if before != entry => {
                changed.push(json!({"name": name(entry), "from": before, "to": entry}));
            }
            Some(_) => {}
        }
    }
    let removed: Vec<Value> = held
        .iter()
        .filter(|e| find(wanted, name(e), &name).is_none())
        .map(|e| json!(name(e)))
        .collect();
    let mut diff = serde_json::Map::new();
    diff.insert("added".into(), added.into());
    diff.insert("changed".into(), changed.into());
    diff.insert("removed".into(), removed.into());
    diff
}
