//! Model aliases: the stable names applications call. An alias points at
//! one model of the registry (a version of it, with its own engine name,
//! limits and price) or splits traffic between several by weight. The
//! split is decided once, at admission, and written on the job, so its
//! retries keep the version it was given.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{Issues, ModelKind, ModelSpec};
use crate::registry::{Registry, Snapshot};
use crate::rollout_plan::{Follow, check_plan, mlflow_alias};

/// An alias as the configuration declares it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AliasSpec {
    pub name: String,
    /// The models it sends its jobs to, with their shares.
    pub targets: Vec<Target>,
    /// What keeps related requests on one target.
    #[serde(default)]
    pub sticky: Sticky,
    /// An MLflow registry alias whose moves start rollouts of this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub follow: Option<Follow>,
}

/// One model an alias sends jobs to, and its share of them in percent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    pub model: String,
    pub weight: u32,
}

/// What decides an alias's target for a job.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sticky {
    /// Each job by its own id.
    #[default]
    Request,
    /// Every job of a tenant goes to the same target.
    Tenant,
    /// Every job of one end user (its `user` metadata, which the OpenAI
    /// front fills from the request's `user`) goes to the same target, so
    /// a conversation stays on one version; a job without one, by its id.
    User,
}

/// What a job offers to decide its target by.
#[derive(Debug, Clone, Copy)]
pub struct StickyKeys<'a> {
    pub job_id: &'a str,
    pub tenant: &'a str,
    pub user: Option<&'a str>,
}

/// A name resolved: the model that serves the job, and the alias it was
/// asked for by, if it was.
#[derive(Debug, Clone)]
pub struct Routed {
    pub spec: Arc<ModelSpec>,
    pub alias: Option<String>,
}

const MAX_TARGETS: usize = 10;
/// The OpenAI front's prefix for workflows called as models.
const RESERVED_PREFIX: &str = "workflow:";

impl Snapshot {
    /// Adds `specs`, each checked against the models; an alias with a
    /// problem is left out.
    pub(crate) fn add_aliases(&mut self, specs: &[AliasSpec], issues: &mut Issues) {
        for (i, spec) in specs.iter().enumerate() {
            let field = format!("aliases[{i}]");
            let before = issues.len();
            self.check_alias(spec, &field, issues);
            if issues.len() != before {
                continue;
            }
            self.alias_order.push(spec.name.clone());
            self.aliases.insert(spec.name.clone(), spec.clone());
        }
    }

    fn check_alias(&self, spec: &AliasSpec, field: &str, issues: &mut Issues) {
        let name = &spec.name;
        issues.check(
            !name.is_empty() && name.len() <= 128 && !name.starts_with(RESERVED_PREFIX),
            &format!("{field}.name"),
            name,
            "must be 1 to 128 bytes, not starting with workflow:",
        );
        if self.get(name).is_some() || self.aliases.contains_key(name) {
            issues.push(
                &format!("{field}.name"),
                name,
                "is a model's or another alias's name",
            );
        }
        issues.check(
            (1..=MAX_TARGETS).contains(&spec.targets.len()),
            &format!("{field}.targets"),
            spec.targets.len(),
            &format!("declare 1 to {MAX_TARGETS} targets"),
        );
        let total: u64 = spec.targets.iter().map(|t| u64::from(t.weight)).sum();
        if !spec.targets.is_empty() {
            issues.check(
                total == 100,
                &format!("{field}.targets"),
                total,
                "the weights must sum to 100",
            );
        }
        let mut kinds = Vec::new();
        for (j, target) in spec.targets.iter().enumerate() {
            match self.get(&target.model) {
                Some(model) => kinds.push(model.kind),
                None => issues.push(
                    &format!("{field}.targets[{j}].model"),
                    &target.model,
                    "no model of the registry has this name",
                ),
            }
        }
        kinds.dedup();
        issues.check(
            kinds.len() <= 1,
            &format!("{field}.targets"),
            &kinds,
            "the targets must all be of one kind",
        );
        if let Some(follow) = &spec.follow {
            issues.check(
                mlflow_alias(&follow.mlflow).is_some(),
                &format!("{field}.follow.mlflow"),
                &follow.mlflow,
                "must be models:/<registered model>@<alias>",
            );
            if let Err(reason) = check_plan(&follow.steps, follow.every, &follow.guards) {
                issues.push(&format!("{field}.follow"), "…", &reason);
            }
        }
    }
}

impl Registry {
    /// The model that serves a job asking for `name`: the model itself, or
    /// for an alias the target its weights give the job's key. The same key
    /// gets the same target while the weights stay.
    pub fn route(&self, name: &str, keys: StickyKeys<'_>) -> Option<Routed> {
        let now = self.now();
        if let Some(spec) = now.get(name) {
            return Some(Routed {
                spec: spec.clone(),
                alias: None,
            });
        }
        let alias = now.aliases.get(name)?;
        let key = match (alias.sticky, keys.user) {
            (Sticky::Tenant, _) => keys.tenant,
            (Sticky::User, Some(user)) => user,
            (Sticky::User, None) | (Sticky::Request, _) => keys.job_id,
        };
        let point = bucket(&alias.name, key);
        let mut upto = 0;
        let target = alias.targets.iter().find(|t| {
            upto += t.weight;
            point < upto
        })?;
        Some(Routed {
            spec: now.get(&target.model)?.clone(),
            alias: Some(alias.name.clone()),
        })
    }

    /// The kind of a model or of an alias's models.
    pub fn kind_of(&self, name: &str) -> Option<ModelKind> {
        let now = self.now();
        match now.get(name) {
            Some(spec) => Some(spec.kind),
            None => {
                let alias = now.aliases.get(name)?;
                Some(now.get(&alias.targets.first()?.model)?.kind)
            }
        }
    }

    /// The aliases in force, in declaration order.
    pub fn aliases(&self) -> Vec<AliasSpec> {
        let now = self.now();
        now.alias_order
            .iter()
            .filter_map(|n| now.aliases.get(n).cloned())
            .collect()
    }
}

/// Where `key` falls in 0..100 for `alias`: uniform over keys, and
/// independent between aliases.
fn bucket(alias: &str, key: &str) -> u32 {
    let digest = Sha256::new()
        .chain_update(alias)
        .chain_update([0])
        .chain_update(key)
        .finalize();
    let mut first = [0; 8];
    first.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(first) % 100) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::spec;

    fn registry(aliases: &[AliasSpec]) -> (Registry, String) {
        let mut issues = Issues::default();
        let mut embed = spec("embed");
        embed.kind = ModelKind::Embedding;
        let registry = Registry::new(&[spec("chat-v1"), spec("chat-v2"), embed], &mut issues)
            .with_aliases(aliases, &mut issues);
        (registry, issues.to_string())
    }

    fn alias(name: &str, targets: &[(&str, u32)], sticky: Sticky) -> AliasSpec {
        AliasSpec {
            name: name.into(),
            targets: targets
                .iter()
                .map(|(model, weight)| Target {
                    model: (*model).into(),
                    weight: *weight,
                })
                .collect(),
            sticky,
            follow: None,
        }
    }

    fn keys<'a>(job_id: &'a str, tenant: &'a str, user: Option<&'a str>) -> StickyKeys<'a> {
        StickyKeys {
            job_id,
            tenant,
            user,
        }
    }

    #[test]
    fn an_alias_splits_jobs_by_weight_and_keeps_a_key_on_one_target() {
        let split = alias("chat", &[("chat-v1", 90), ("chat-v2", 10)], Sticky::Request);
        let by_user = alias(
            "chat-user",
            &[("chat-v1", 50), ("chat-v2", 50)],
            Sticky::User,
        );
        let (r, issues) = registry(&[split, by_user]);
        assert_eq!(issues, "");
        let served = |name: &str, k: StickyKeys<'_>| {
            let routed = r.route(name, k).expect("routed");
            (routed.spec.name.clone(), routed.alias)
        };
        let ids: Vec<String> = (0..2_000).map(|i| format!("job-{i}")).collect();
        let on_v2 = ids
            .iter()
            .filter(|id| served("chat", keys(id, "t", None)).0 == "chat-v2")
            .count();
        assert!(
            (120..=280).contains(&on_v2),
            "{on_v2} of 2,000 on a 10 % target"
        );
        assert_eq!(
            served("chat", keys("job-1", "t", None)),
            served("chat", keys("job-1", "other", None)),
            "one job, one target"
        );
        // One user's jobs stay on one target; users spread over both.
        let of_user = |user: &str| -> Vec<String> {
            ids.iter()
                .take(50)
                .map(|id| served("chat-user", keys(id, "t", Some(user))).0)
                .collect()
        };
        assert!(of_user("ann").windows(2).all(|w| w[0] == w[1]));
        let users: std::collections::HashSet<String> = (0..50)
            .map(|u| of_user(&format!("user-{u}"))[0].clone())
            .collect();
        assert_eq!(users.len(), 2);
        // A model is itself; an unknown name is nothing.
        assert_eq!(
            served("chat-v2", keys("j", "t", None)),
            ("chat-v2".into(), None)
        );
        assert!(r.route("nope", keys("j", "t", None)).is_none());
        assert_eq!(r.kind_of("chat"), Some(ModelKind::Chat));
    }

    #[test]
    fn every_bad_alias_is_refused_with_its_field() {
        let cases = [
            (
                alias("a", &[("chat-v1", 60), ("chat-v2", 30)], Sticky::Request),
                "aliases[0].targets = 90: the weights must sum to 100",
            ),
            (
                alias("a", &[("chat-v9", 100)], Sticky::Request),
                "aliases[0].targets[0].model = \"chat-v9\": no model of the registry has this name",
            ),
            (
                alias("a", &[("chat-v1", 50), ("embed", 50)], Sticky::Request),
                "the targets must all be of one kind",
            ),
            (
                alias("chat-v1", &[("chat-v2", 100)], Sticky::Request),
                "aliases[0].name = \"chat-v1\": is a model's or another alias's name",
            ),
            (
                alias("workflow:x", &[("chat-v2", 100)], Sticky::Request),
                "not starting with workflow:",
            ),
            (
                alias("a", &[], Sticky::Request),
                "aliases[0].targets = 0: declare 1 to 10 targets",
            ),
        ];
        for (bad, want) in cases {
            let (r, issues) = registry(std::slice::from_ref(&bad));
            assert!(issues.contains(want), "want: {want}\ngot: {issues}");
            assert!(
                r.route(&bad.name, keys("j", "t", None)).is_none() || r.get(&bad.name).is_some()
            );
        }
    }
}
