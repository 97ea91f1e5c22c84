//! The live model registry: the models, the aliases and their rollouts, in
//! one entry of a JetStream KV bucket that every broker, dispatcher and
//! agent watches. The entry's revision is the registry's; every change is a
//! compare-and-set on it, so two operators (or two brokers' rollout
//! controllers) never overwrite each other, and a change based on a stale
//! read is refused.

pub mod drive;
pub mod mlflow;
pub mod rollout;

use std::sync::Arc;

use async_nats::jetstream::kv::{self, CreateErrorKind, UpdateErrorKind};
use serde::{Deserialize, Serialize};
use serde_json::json;
use switchyard_runtime::{AliasSpec, ModelSpec, Registry};
use switchyard_schemas::subjects;
use switchyard_store::StoreError;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::metrics as m;
use crate::{Coded, ErrorCode};
use rollout::{Rollout, RolloutError, RolloutRequest};

/// What the registry's entry holds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Document {
    /// Empty in an entry written before models were live: the
    /// configuration's are put in it when a broker opens it.
    #[serde(default)]
    pub models: Vec<ModelSpec>,
    pub aliases: Vec<AliasSpec>,
    /// The latest rollout of each alias that has had one.
    #[serde(default)]
    pub rollouts: Vec<Rollout>,
}

impl Document {
    pub fn alias_mut(&mut self, name: &str) -> Result<&mut AliasSpec, ModelsError> {
        self.aliases
            .iter_mut()
            .find(|a| a.name == name)
            .ok_or_else(|| ModelsError::NoAlias(name.to_owned()))
    }

    /// Adds `spec`, or puts it in place of the model of its name.
    pub fn put_model(&mut self, spec: ModelSpec) {
        match self.models.iter_mut().find(|m| m.name == spec.name) {
            Some(held) => *held = spec,
            None => self.models.push(spec),
        }
    }

    /// Removes a model that no alias points at.
    pub fn remove_model(&mut self, name: &str) -> Result<(), ModelsError> {
        if !self.models.iter().any(|m| m.name == name) {
            return Err(ModelsError::NoModel(name.to_owned()));
        }
        if let Some(alias) = self
            .aliases
            .iter()
            .find(|a| a.targets.iter().any(|t| t.model == name))
        {
            return Err(ModelsError::InUse {
                model: name.to_owned(),
                why: format!("alias {:?} points at it", alias.name),
            });
        }
        self.models.retain(|m| m.name != name);
        Ok(())
    }

    /// The alias's rollout, if one is running.
    pub fn running(&mut self, alias: &str) -> Option<&mut Rollout> {
        self.rollouts
            .iter_mut()
            .find(|r| r.alias == alias && r.status == rollout::Status::Running)
    }

    /// Keeps `rollout` as its alias's latest.
    pub fn keep(&mut self, rollout: Rollout) {
        self.rollouts.retain(|r| r.alias != rollout.alias);
        self.rollouts.push(rollout);
    }

    /// Refused while a rollout of `alias` runs: it owns the alias's weights.
    pub fn refuse_if_rolling(&mut self, alias: &str) -> Result<(), ModelsError> {
        match self.running(alias) {
            Some(_) => Err(RolloutError::Running(alias.to_owned()).into()),
            None => Ok(()),
        }
    }

    /// Starts `request` on `alias` now, unless a rollout of it runs.
    pub fn start_rollout(
        &mut self,
        alias: &str,
        request: RolloutRequest,
    ) -> Result<Rollout, ModelsError> {
        self.refuse_if_rolling(alias)?;
        let rollout = request.start(self.alias_mut(alias)?, switchyard_schemas::now_ms())?;
        self.keep(rollout.clone());
        Ok(rollout)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ModelsError {
    #[error("the registry is at revision {current}, not {given}; read it again")]
    Stale { given: u64, current: u64 },
    #[error("{0}")]
    Invalid(String),
    #[error("no alias {0:?}")]
    NoAlias(String),
    #[error("no rollout of alias {0:?} is running")]
    NoRollout(String),
    #[error("no model {0:?}")]
    NoModel(String),
    #[error("model {model:?} is in use: {why}")]
    InUse { model: String, why: String },
    #[error(transparent)]
    Rollout(#[from] RolloutError),
    #[error("the live registry: {0}")]
    Unavailable(String),
    #[error("job store: {0}")]
    Store(#[from] StoreError),
}

impl Coded for ModelsError {
    fn code(&self) -> ErrorCode {
        match self {
            ModelsError::Stale { .. } => ErrorCode::StaleRevision,
            ModelsError::Invalid(_) | ModelsError::Rollout(RolloutError::Invalid(_)) => {
                ErrorCode::InvalidRequest
            }
            ModelsError::NoAlias(_) | ModelsError::NoRollout(_) | ModelsError::NoModel(_) => {
                ErrorCode::NotFound
            }
            ModelsError::InUse { .. } => ErrorCode::ModelInUse,
            ModelsError::Rollout(RolloutError::Running(_)) => ErrorCode::RolloutRunning,
            ModelsError::Unavailable(_) => ErrorCode::QueueUnavailable,
            ModelsError::Store(_) => ErrorCode::StoreUnavailable,
        }
    }
}

fn unavailable(e: impl std::fmt::Display) -> ModelsError {
    ModelsError::Unavailable(e.to_string())
}

/// How often a change is tried again when another lands first.
const CHANGE_TRIES: usize = 8;

/// The live registry, and the registry whose aliases it keeps in force.
#[derive(Clone)]
pub struct LiveRegistry {
    kv: kv::Store,
    registry: Arc<Registry>,
    client: async_nats::Client,
}

impl LiveRegistry {
    /// Opens the live registry, seeded with the configuration's models and
    /// aliases when it is new, and puts what it holds in force.
    pub async fn open(
        kv: kv::Store,
        registry: Arc<Registry>,
        client: async_nats::Client,
    ) -> Result<LiveRegistry, ModelsError> {
        let live = LiveRegistry {
            kv,
            registry,
            client,
        };
        let configured: Vec<ModelSpec> = live
            .registry
            .models()
            .iter()
            .map(|m| ModelSpec::clone(m))
            .collect();
        let seed = Document {
            models: configured.clone(),
            aliases: live.registry.aliases(),
            rollouts: Vec::new(),
        };
        match live.kv.create(subjects::MODELS_KEY, encode(&seed)?).await {
            Ok(revision) => info!(revision, "live registry seeded from the configuration"),
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {}
            Err(e) => return Err(unavailable(e)),
        }
        let added = live
            .change(None, |doc| {
                Ok(doc
                    .models
                    .is_empty()
                    .then(|| doc.models.clone_from(&configured)))
            })
            .await?;
        if let Some((revision, ())) = added {
            info!(
                revision,
                "the configuration's models put in the live registry"
            );
        }
        let (revision, doc) = live.read().await?;
        live.put_in_force(revision, &doc);
        Ok(live)
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The registry as it stands, with its revision.
    pub async fn read(&self) -> Result<(u64, Document), ModelsError> {
        let entry = self
            .kv
            .entry(subjects::MODELS_KEY)
            .await
            .map_err(unavailable)?
            .ok_or_else(|| unavailable("its entry is missing"))?;
        let doc = serde_json::from_slice(&entry.value).map_err(unavailable)?;
        Ok((entry.revision, doc))
    }

    /// Changes the registry by `edit` (None: nothing to change), checked
    /// against the models, as revision `expected`, or as the latest when
    /// none is given (tried again if another change lands first). The new
    /// revision and what `edit` gave.
    pub async fn change<T>(
        &self,
        expected: Option<u64>,
        mut edit: impl FnMut(&mut Document) -> Result<Option<T>, ModelsError>,
    ) -> Result<Option<(u64, T)>, ModelsError> {
        for _ in 0..CHANGE_TRIES {
            let (revision, mut doc) = self.read().await?;
            if let Some(given) = expected
                && given != revision
            {
                return Err(ModelsError::Stale {
                    given,
                    current: revision,
                });
            }
            let Some(out) = edit(&mut doc)? else {
                return Ok(None);
            };
            let issues = Registry::check(&doc.models, &doc.aliases);
            if !issues.is_empty() {
                return Err(ModelsError::Invalid(issues.to_string()));
            }
            match self
                .kv
                .update(subjects::MODELS_KEY, encode(&doc)?, revision)
                .await
            {
                Ok(new) => {
                    self.put_in_force(new, &doc);
                    return Ok(Some((new, out)));
                }
                Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => {
                    if let Some(given) = expected {
                        let current = self.read().await?.0;
                        return Err(ModelsError::Stale { given, current });
                    }
                }
                Err(e) => return Err(unavailable(e)),
            }
        }
        Err(unavailable("it changed under every try"))
    }

    /// Changes the registry by `edit`, which always changes it: the new
    /// revision and what `edit` gave (see [`LiveRegistry::change`]).
    pub async fn edit<T>(
        &self,
        expected: Option<u64>,
        mut edit: impl FnMut(&mut Document) -> Result<T, ModelsError>,
    ) -> Result<(u64, T), ModelsError> {
        let changed = self.change(expected, |doc| edit(doc).map(Some)).await?;
        changed.ok_or_else(|| unavailable("an edit made no change"))
    }

    /// Tells operators' tools what happened to a rollout.
    pub async fn announce(&self, event: &str, revision: u64, rollout: &Rollout) {
        metrics::counter!(m::ROLLOUT_EVENTS, "alias" => rollout.alias.clone(), "event" => event.to_owned())
            .increment(1);
        let body = json!({"type": event, "revision": revision, "rollout": rollout});
        if let Err(e) = self
            .client
            .publish(subjects::MODEL_EVENTS, body.to_string().into())
            .await
        {
            warn!(error = %e, event, "cannot publish a rollout's event");
        }
    }

    /// Follows the registry's entry until shutdown, putting each revision
    /// in force as it lands.
    pub async fn follow(self, shutdown: CancellationToken) {
        switchyard_runtime::registry::follow((*self.registry).clone(), self.kv, shutdown).await;
    }

    fn put_in_force(&self, revision: u64, doc: &Document) {
        self.registry
            .put_in_force(revision, &doc.models, &doc.aliases);
    }
}

fn encode(doc: &Document) -> Result<bytes::Bytes, ModelsError> {
    Ok(serde_json::to_vec(doc).map_err(unavailable)?.into())
}
