//! The model registry: the models and the aliases in force, shared by
//! every clone of a [`Registry`]. The configuration's are in force at
//! start; the live registry (a JetStream KV entry every component follows,
//! [`follow`]) replaces them, revision by revision, with no restart.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream::kv::{self, Operation};
use futures::StreamExt;
use serde::Deserialize;
use switchyard_schemas::subjects;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::aliases::AliasSpec;
use crate::config::{Issues, ModelSpec};

/// The revision of the live registry a process routes by; 0 until the
/// first is put in force.
pub const REVISION_METRIC: &str = "switchyard_registry_revision";

/// The registry at one revision (0: the configuration's).
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    pub(crate) models: HashMap<String, Arc<ModelSpec>>,
    pub(crate) order: Vec<String>,
    pub(crate) aliases: HashMap<String, AliasSpec>,
    pub(crate) alias_order: Vec<String>,
    pub(crate) revision: u64,
}

impl Snapshot {
    pub(crate) fn get(&self, name: &str) -> Option<&Arc<ModelSpec>> {
        self.models.get(name)
    }

    /// `specs` checked, each with its field; one with a problem is left out.
    fn with_models(specs: &[ModelSpec], issues: &mut Issues) -> Snapshot {
        let mut snapshot = Snapshot::default();
        let mut seen = std::collections::HashSet::new();
        issues.check(
            !specs.is_empty(),
            "models",
            "[]",
            "declare at least one model",
        );
        for (i, spec) in specs.iter().enumerate() {
            let field = format!("models[{i}]");
            let before = issues.len();
            check_model(spec, &field, issues);
            if !seen.insert(&spec.name) {
                issues.push(&format!("{field}.name"), &spec.name, "declared twice");
            }
            if issues.len() != before {
                continue;
            }
            snapshot.order.push(spec.name.clone());
            snapshot
                .models
                .insert(spec.name.clone(), Arc::new(spec.clone()));
        }
        snapshot
    }
}

fn check_model(spec: &ModelSpec, field: &str, issues: &mut Issues) {
    issues.check(
        !spec.name.is_empty() && spec.name.len() <= 128,
        &format!("{field}.name"),
        &spec.name,
        "must be 1 to 128 bytes",
    );
    issues.check(
        spec.default_max_tokens <= spec.max_tokens,
        &format!("{field}.default_max_tokens"),
        spec.default_max_tokens,
        "must not exceed max_tokens",
    );
    issues.check(
        (1..=10).contains(&spec.max_attempts),
        &format!("{field}.max_attempts"),
        spec.max_attempts,
        "must be between 1 and 10",
    );
    issues.check(
        (Duration::from_millis(1)..=Duration::from_secs(24 * 3600)).contains(&spec.timeout),
        &format!("{field}.timeout"),
        spec.timeout,
        "must be between 1 ms and 24 h",
    );
    issues.check(
        spec.max_tokens > 0,
        &format!("{field}.max_tokens"),
        spec.max_tokens,
        "must be positive",
    );
    issues.check(
        spec.price.is_none_or(|p| p.valid()),
        &format!("{field}.price"),
        spec.price,
        "prices must be finite and not negative",
    );
    if let Some(cache) = &spec.cache {
        issues.check(
            !cache.ttl.is_zero(),
            &format!("{field}.cache.ttl"),
            cache.ttl,
            "must be positive",
        );
    }
    if let Some(uri) = &spec.mlflow {
        issues.check(
            crate::rollout_plan::mlflow_version(uri).is_some(),
            &format!("{field}.mlflow"),
            uri,
            "must be models:/<registered model>/<version>",
        );
    }
}

/// The registry in force, shared by every clone.
#[derive(Debug, Clone, Default)]
pub struct Registry(Arc<RwLock<Arc<Snapshot>>>);

impl Registry {
    /// Builds the registry, reporting duplicates and invalid entries.
    pub fn new(specs: &[ModelSpec], issues: &mut Issues) -> Registry {
        Registry(Arc::new(RwLock::new(Arc::new(Snapshot::with_models(
            specs, issues,
        )))))
    }

    /// The registry with `specs`' aliases, each checked against its models;
    /// every problem is reported with its field.
    pub fn with_aliases(self, specs: &[AliasSpec], issues: &mut Issues) -> Registry {
        let now = self.now();
        let mut next = Snapshot {
            models: now.models.clone(),
            order: now.order.clone(),
            ..Snapshot::default()
        };
        next.add_aliases(specs, issues);
        self.set_newer(next, true);
        self
    }

    /// The problems `models` and `aliases` would have as the registry.
    pub fn check(models: &[ModelSpec], aliases: &[AliasSpec]) -> Issues {
        let mut issues = Issues::default();
        Snapshot::with_models(models, &mut issues).add_aliases(aliases, &mut issues);
        issues
    }

    /// Puts `models` and `aliases` in force as the live registry's
    /// `revision`, unless a later one is; an entry with a problem is left
    /// out. No models: those in force stay (an entry written before models
    /// were live). The problems, or None when a later revision stays.
    pub fn replace(
        &self,
        models: &[ModelSpec],
        aliases: &[AliasSpec],
        revision: u64,
    ) -> Option<Issues> {
        let mut issues = Issues::default();
        let mut next = if models.is_empty() {
            let now = self.now();
            Snapshot {
                models: now.models.clone(),
                order: now.order.clone(),
                ..Snapshot::default()
            }
        } else {
            Snapshot::with_models(models, &mut issues)
        };
        next.revision = revision;
        next.add_aliases(aliases, &mut issues);
        self.set_newer(next, false).then_some(issues)
    }

    /// The revision of the live registry in force.
    pub fn revision(&self) -> u64 {
        self.now().revision
    }

    pub fn get(&self, name: &str) -> Option<Arc<ModelSpec>> {
        self.now().get(name).cloned()
    }

    /// The models, in declaration order.
    pub fn models(&self) -> Vec<Arc<ModelSpec>> {
        let now = self.now();
        now.order
            .iter()
            .filter_map(|n| now.models.get(n).cloned())
            .collect()
    }

    pub(crate) fn now(&self) -> Arc<Snapshot> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Sets `next` unless the snapshot in force is of a later revision (a
    /// watch can deliver a revision this process has already put in force
    /// itself); `always` for the configuration's, at start.
    fn set_newer(&self, next: Snapshot, always: bool) -> bool {
        let mut now = self.0.write().unwrap_or_else(|e| e.into_inner());
        let newer = always || next.revision > now.revision;
        if newer {
            *now = Arc::new(next);
        }
        newer
    }

    /// Puts a revision of the live registry in force, saying what was left
    /// out of it and reporting the revision now routed by.
    pub fn put_in_force(&self, revision: u64, models: &[ModelSpec], aliases: &[AliasSpec]) {
        if let Some(issues) = self.replace(models, aliases, revision) {
            if !issues.is_empty() {
                warn!(revision, %issues, "entries of the live registry left out");
            }
            metrics::gauge!(REVISION_METRIC).set(revision as f64);
        }
    }

    /// Puts a revision of the live registry's entry, as stored, in force;
    /// one that does not decode is said and left.
    pub fn put_in_force_bytes(&self, revision: u64, value: &[u8]) {
        match serde_json::from_slice::<Entry>(value) {
            Ok(e) => self.put_in_force(revision, &e.models, &e.aliases),
            Err(e) => warn!(error = %e, revision,
                "a revision of the live registry does not decode; the last stays"),
        }
    }
}

/// What every component reads of the live registry's entry (the broker
/// keeps rollouts in it too).
#[derive(Debug, Deserialize)]
struct Entry {
    #[serde(default)]
    models: Vec<ModelSpec>,
    #[serde(default)]
    aliases: Vec<AliasSpec>,
}

/// How long the watch waits before watching again after it broke.
const REWATCH: Duration = Duration::from_secs(1);

/// Follows the live registry's entry in `kv` until shutdown, putting each
/// revision in force in `registry` as it lands (the latest first).
pub async fn follow(registry: Registry, kv: kv::Store, shutdown: CancellationToken) {
    metrics::describe_gauge!(
        REVISION_METRIC,
        "Revision of the live model registry this process routes by"
    );
    loop {
        match kv.watch_with_history(subjects::MODELS_KEY).await {
            Ok(mut watch) => loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    next = watch.next() => match next {
                        Some(Ok(entry)) if entry.operation == Operation::Put => {
                            registry.put_in_force_bytes(entry.revision, &entry.value);
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => {
                            warn!(error = %e, "the live registry's watch broke");
                            break;
                        }
                        None => break,
                    },
                }
            },
            Err(e) => warn!(error = %e, "cannot watch the live registry"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(REWATCH) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aliases::{Sticky, StickyKeys, Target};
    use crate::config::tests::spec;

    #[test]
    fn registry_reports_every_problem_at_once() {
        let mut issues = Issues::default();
        let bad = ModelSpec {
            default_max_tokens: 99,
            ..spec("a")
        };
        Registry::new(&[bad, spec("a"), spec("")], &mut issues);
        let text = issues.to_string();
        assert_eq!(issues.len(), 3, "{text}");
        assert!(text.contains("default_max_tokens"), "{text}");
        assert!(text.contains("declared twice"), "{text}");
        assert!(text.contains("models[2].name"), "{text}");
    }

    #[test]
    fn registry_keeps_declaration_order() {
        let mut issues = Issues::default();
        let r = Registry::new(&[spec("b"), spec("a")], &mut issues);
        assert!(issues.into_result().is_ok());
        let names: Vec<String> = r.models().iter().map(|m| m.name.clone()).collect();
        assert_eq!(names, ["b", "a"]);
        assert!(r.get("a").is_some());
        assert!(r.get("c").is_none());
    }

    #[test]
    fn a_later_revision_replaces_models_and_aliases_in_every_clone_and_an_older_never_returns() {
        let mut issues = Issues::default();
        let registry = Registry::new(&[spec("a")], &mut issues);
        let clone = registry.clone();
        let to = |model: &str| AliasSpec {
            name: "chat".into(),
            targets: vec![Target {
                model: model.into(),
                weight: 100,
            }],
            sticky: Sticky::Request,
            follow: None,
        };
        let served = |r: &Registry| {
            let keys = StickyKeys {
                job_id: "j",
                tenant: "t",
                user: None,
            };
            r.route("chat", keys).map(|routed| routed.spec.name.clone())
        };
        let added = registry.replace(&[spec("a"), spec("b")], &[to("b")], 5);
        assert_eq!(added.map(|i| i.to_string()), Some(String::new()));
        assert_eq!(clone.revision(), 5);
        assert!(clone.get("b").is_some(), "a model added live is served");
        assert_eq!(served(&clone).as_deref(), Some("b"));
        assert!(registry.replace(&[spec("a")], &[], 4).is_none());
        assert!(clone.get("b").is_some(), "an older revision never returns");
        // An entry with no models keeps those in force; an alias to an
        // unknown model is left out and said.
        let left = registry.replace(&[], &[to("c")], 6).expect("newer");
        assert!(
            left.to_string().contains("no model of the registry"),
            "{left}"
        );
        assert!(clone.get("b").is_some());
        assert_eq!(served(&clone), None);
        assert_eq!(
            Registry::check(&[spec("a")], &[to("b")]).len(),
            1,
            "check: an alias to a model the change removes"
        );
    }
}
