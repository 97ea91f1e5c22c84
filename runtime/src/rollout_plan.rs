//! How a rollout moves and what guards it, as an operator writes it: in a
//! rollout request, or in an alias that follows an MLflow registry alias.
//! The rollouts themselves are the broker's (`switchyard-core`'s
//! `models::rollout`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The steps a rollout takes when none are given: a canary, then halves.
pub fn default_steps() -> Vec<u32> {
    vec![5, 25, 50, 100]
}

pub fn default_every() -> Duration {
    Duration::from_secs(600)
}

fn default_window() -> Duration {
    Duration::from_secs(300)
}

const MAX_STEPS: usize = 20;

/// What must hold for a rollout to go on: the new version compared with the
/// old over `window`, once each has `min_samples` ended jobs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Guards {
    /// Ended jobs each version needs before any guard decides.
    pub min_samples: u64,
    /// How far back the new version's jobs count.
    #[serde(with = "humantime_serde", default = "default_window")]
    pub window: Duration,
    /// The most the new version's error rate may exceed the old's by
    /// (0.05: five points).
    #[serde(default)]
    pub max_error_rate_increase: Option<f64>,
    /// The most the new version's p95 engine time may be, as a multiple of
    /// the old's.
    #[serde(default)]
    pub max_p95_latency_ratio: Option<f64>,
    /// The most the new version's mean cost per job may be, as a multiple
    /// of the old's.
    #[serde(default)]
    pub max_cost_ratio: Option<f64>,
}

/// An alias that follows an MLflow registered model's alias: when that
/// alias moves to a version some model of the registry names (its
/// `mlflow:`), a rollout to that model starts with these steps and guards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Follow {
    /// `models:/<registered model>@<alias>`.
    pub mlflow: String,
    #[serde(default = "default_steps")]
    pub steps: Vec<u32>,
    #[serde(with = "humantime_serde", default = "default_every")]
    pub every: Duration,
    pub guards: Guards,
}

/// Why a plan cannot run, if it cannot: steps rising from 1 to 100, a
/// period from 1 s to 7 days, and guards that can decide.
pub fn check_plan(steps: &[u32], every: Duration, guards: &Guards) -> Result<(), String> {
    let rising = steps.windows(2).all(|w| w[0] < w[1]);
    if steps.is_empty()
        || steps.len() > MAX_STEPS
        || !rising
        || steps.first() == Some(&0)
        || steps.last() != Some(&100)
    {
        return Err(format!(
            "steps must rise from 1 to 100 in at most {MAX_STEPS} steps"
        ));
    }
    if !(Duration::from_secs(1)..=Duration::from_secs(7 * 86_400)).contains(&every) {
        return Err("every must be between 1 s and 7 days".into());
    }
    if guards.min_samples == 0 {
        return Err("guards.min_samples must be at least 1".into());
    }
    if guards.window < Duration::from_secs(1) {
        return Err("guards.window must be at least 1 s".into());
    }
    let ratios = [guards.max_p95_latency_ratio, guards.max_cost_ratio];
    if ratios
        .into_iter()
        .flatten()
        .any(|r| !(r.is_finite() && r > 0.0))
    {
        return Err("guards' ratios must be positive".into());
    }
    if guards
        .max_error_rate_increase
        .is_some_and(|d| !(0.0..=1.0).contains(&d))
    {
        return Err("guards.max_error_rate_increase must be between 0 and 1".into());
    }
    Ok(())
}

/// The registered model and alias of `models:/<name>@<alias>`.
pub fn mlflow_alias(uri: &str) -> Option<(&str, &str)> {
    let (name, alias) = uri.strip_prefix("models:/")?.split_once('@')?;
    (!name.is_empty() && !alias.is_empty() && !name.contains('/')).then_some((name, alias))
}

/// The registered model and version of `models:/<name>/<version>`.
pub fn mlflow_version(uri: &str) -> Option<(&str, &str)> {
    let (name, version) = uri.strip_prefix("models:/")?.rsplit_once('/')?;
    let numbered = !version.is_empty() && version.bytes().all(|b| b.is_ascii_digit());
    (!name.is_empty() && numbered).then_some((name, version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mlflow_uris_name_a_model_and_an_alias_or_a_version() {
        assert_eq!(
            mlflow_alias("models:/summarizer@champion"),
            Some(("summarizer", "champion"))
        );
        assert_eq!(
            mlflow_version("models:/summarizer/12"),
            Some(("summarizer", "12"))
        );
        for bad in [
            "summarizer@champion",
            "models:/@x",
            "models:/a/b@c",
            "models:/s@",
        ] {
            assert_eq!(mlflow_alias(bad), None, "{bad}");
        }
        for bad in [
            "models:/summarizer/latest",
            "models:/summarizer/",
            "models:/7",
        ] {
            assert_eq!(mlflow_version(bad), None, "{bad}");
        }
    }
}
