//! The live model registry: the aliases and their rollouts, in one entry
//! of a JetStream KV bucket that every broker watches. The entry's revision
//! is the registry's; every change is a compare-and-set on it, so two
//! operators (or two brokers' rollout controllers) never overwrite each
//! other, and a change based on a stale read is refused. The models
//! themselves stay as configured: an alias can only point at them.

pub mod drive;
pub mod mlflow;
pub mod rollout;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv::{self, CreateErrorKind, Operation, UpdateErrorKind};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use switchyard_runtime::{AliasSpec, Registry};
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
            ModelsError::NoAlias(_) | ModelsError::NoRollout(_) => ErrorCode::NotFound,
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
/// How long the watch waits before watching again after it broke.
const REWATCH: Duration = Duration::from_secs(1);

/// The live registry, and the registry whose aliases it keeps in force.
#[derive(Clone)]
pub struct LiveRegistry {
    kv: kv::Store,
    registry: Arc<Registry>,
    client: async_nats::Client,
}

impl LiveRegistry {
    /// Opens the live registry, seeded with the configuration's aliases
    /// when it is new, and puts what it holds in force.
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
        let seed = Document {
            aliases: live.registry.aliases(),
            rollouts: Vec::new(),
        };
        match live.kv.create(subjects::MODELS_KEY, encode(&seed)?).await {
            Ok(revision) => info!(revision, "live registry seeded from the configuration"),
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {}
            Err(e) => return Err(unavailable(e)),
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
            let issues = self.registry.check_aliases(&doc.aliases);
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
        loop {
            match self.kv.watch_with_history(subjects::MODELS_KEY).await {
                Ok(mut watch) => loop {
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        next = watch.next() => match next {
                            Some(Ok(entry)) if entry.operation == Operation::Put => {
                                match serde_json::from_slice::<Document>(&entry.value) {
                                    Ok(doc) => self.put_in_force(entry.revision, &doc),
                                    Err(e) => warn!(error = %e, revision = entry.revision,
                                        "a revision of the live registry does not decode; the last stays"),
                                }
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

    fn put_in_force(&self, revision: u64, doc: &Document) {
        if let Some(issues) = self.registry.replace_aliases(&doc.aliases, revision) {
            if !issues.is_empty() {
                warn!(revision, %issues, "aliases of the live registry left out");
            }
            metrics::gauge!(m::REGISTRY_REVISION).set(revision as f64);
        }
    }
}

fn encode(doc: &Document) -> Result<bytes::Bytes, ModelsError> {
    Ok(serde_json::to_vec(doc).map_err(unavailable)?.into())
}
