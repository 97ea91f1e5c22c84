//! Personal data in requests: found by `switchyard-pii` and, by the model's
//! and the tenant's policy, masked or refused at admission — before the job
//! is recorded, queued, cached or logged, so it is never stored raw.

use std::collections::HashMap;

use serde::Deserialize;
use switchyard_pii::{CustomPattern, Found, Kind, PiiError, Scanner};
use switchyard_runtime::{PiiPolicy, Registry, Tenants};
use switchyard_schemas::{Job, JobInput};

use crate::admission::Rejection;
use crate::metrics as m;

/// The `broker.pii:` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PiiConfig {
    /// For models that do not say.
    pub default: PiiPolicy,
    /// Patterns of your own, each a type of its own (`[EMPLOYEE_ID]`).
    pub custom: Vec<CustomPattern>,
}

/// The scanner and the policies that decide what it does.
pub struct Pii {
    scanner: Scanner,
    default: PiiPolicy,
    /// The models' own policies, live.
    registry: Registry,
    tenants: HashMap<String, PiiPolicy>,
}

impl Pii {
    pub fn new(cfg: &PiiConfig, registry: &Registry, tenants: &Tenants) -> Result<Pii, PiiError> {
        Ok(Pii {
            scanner: Scanner::new(&cfg.custom)?,
            default: cfg.default,
            registry: registry.clone(),
            tenants: tenants
                .iter()
                .filter_map(|t| Some((t.name.clone(), t.pii?)))
                .collect(),
        })
    }

    /// The stricter of the model's policy and the tenant's.
    fn policy(&self, job: &Job) -> PiiPolicy {
        let model = self
            .registry
            .get(&job.model)
            .and_then(|m| m.pii)
            .unwrap_or(self.default);
        let tenant = self.tenants.get(&job.tenant).copied().unwrap_or_default();
        model.max(tenant)
    }

    /// Masks the job's text (its input and metadata values) or refuses it.
    pub fn apply(&self, job: &mut Job) -> Result<(), Rejection> {
        let policy = self.policy(job);
        if policy == PiiPolicy::Off {
            return Ok(());
        }
        let mut found = Found::new();
        let mut scan = |text: &mut String| {
            let (masked, here) = self.scanner.mask(text);
            if !here.is_empty() {
                *text = masked;
                for (kind, n) in here {
                    *found.entry(kind).or_default() += n;
                }
            }
        };
        match &mut job.input {
            JobInput::Chat(chat) => chat.messages.iter_mut().for_each(|m| scan(&mut m.content)),
            JobInput::Completion(c) => scan(&mut c.prompt),
            JobInput::Embedding(e) => e.input.iter_mut().for_each(&mut scan),
            // Tensors are numbers; BYTES tensors are not read as text.
            JobInput::Tensor(_) => {}
        }
        job.metadata.values_mut().for_each(&mut scan);
        if found.is_empty() {
            return Ok(());
        }
        let action = match policy {
            PiiPolicy::Block => "blocked",
            _ => "masked",
        };
        for (kind, n) in &found {
            metrics::counter!(m::PII, "type" => kind.name().to_owned(), "action" => action)
                .increment(*n as u64);
        }
        if policy == PiiPolicy::Block {
            let kinds: Vec<&str> = found.keys().map(Kind::name).collect();
            return Err(Rejection::PiiFound(kinds.join(", ")));
        }
        Ok(())
    }
}
