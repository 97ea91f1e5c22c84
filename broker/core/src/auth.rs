//! API keys and roles. A key is `sy_<id>_<secret>`: the id finds the stored
//! key, and only an HMAC-SHA256 of the secret under the server's pepper is
//! stored, so a copy of the database holds no usable key. Every request is
//! checked against the store, so a revoked key stops working at its next
//! request on every broker that shares the store.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use switchyard_runtime::{RateLimits, Tenants};
use switchyard_schemas::Submission;

use crate::admission::Rejection;
use crate::error::{Coded, ErrorCode};
use crate::guesses::{Guesser, Guesses};
use crate::limits::KeyLimits;
use switchyard_store::{AccessStore, KeyRecord, StoreError};

/// What a key may do. An admin may do everything; an operator reads every
/// tenant's jobs and runs the webhook endpoints; a submitter submits and
/// reads its tenant's jobs; a reader only reads them and the usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Admin,
    Operator,
    Submitter,
    Reader,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "operator" => Some(Role::Operator),
            "submitter" => Some(Role::Submitter),
            "reader" => Some(Role::Reader),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Submitter => "submitter",
            Role::Reader => "reader",
        }
    }

    /// Whether this role may do what `need` may.
    pub fn grants(self, need: Role) -> bool {
        self == need
            || self == Role::Admin
            || (need == Role::Reader && matches!(self, Role::Operator | Role::Submitter))
    }

    /// Admins and operators work across tenants; the others belong to one.
    pub fn spans_tenants(self) -> bool {
        matches!(self, Role::Admin | Role::Operator)
    }
}

/// Who is calling, as its key says.
#[derive(Debug, Clone)]
pub struct Caller {
    pub role: Role,
    /// The one tenant the caller acts for; None for every tenant.
    pub tenant: Option<String>,
    /// The key that called, with its own limits; None with authentication
    /// off.
    pub key: Option<KeyLimits>,
}

impl Caller {
    /// A caller with authentication off: every tenant, every role.
    fn open() -> Caller {
        Caller {
            role: Role::Admin,
            tenant: None,
            key: None,
        }
    }

    /// A caller acting for one tenant on its own (a batch running its lines).
    pub fn tenant(tenant: String) -> Caller {
        Caller {
            role: Role::Submitter,
            tenant: Some(tenant),
            key: None,
        }
    }

    /// Whether the caller may see what belongs to `tenant`.
    pub fn sees(&self, tenant: &str) -> bool {
        self.tenant.as_deref().is_none_or(|t| t == tenant)
    }

    /// Puts the caller's tenant on a submission. The tenant is the
    /// server's to set: a tenant key's submission may not name one.
    pub fn stamp(&self, submission: &mut Submission) -> Result<(), Rejection> {
        let Some(tenant) = &self.tenant else {
            return Ok(());
        };
        if submission.tenant.is_some() {
            return Err(Rejection::InvalidRequest(
                "tenant is set by the server from the API key; leave it out".into(),
            ));
        }
        submission.tenant = Some(tenant.clone());
        Ok(())
    }

    /// The tenant filter of a listing: a tenant key lists only its own.
    pub fn tenant_filter(&self, asked: Option<String>) -> Result<Option<String>, Rejection> {
        match (&self.tenant, asked) {
            (None, asked) => Ok(asked),
            (Some(own), Some(asked)) if *own != asked => Err(Rejection::InvalidRequest(format!(
                "this key reads only tenant {own:?}"
            ))),
            (Some(own), _) => Ok(Some(own.clone())),
        }
    }
}

/// Why a request was not let in.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("an API key is required: Authorization: Bearer sy_…")]
    Missing,
    #[error("the API key is not valid")]
    Invalid,
    #[error("the API key has expired")]
    Expired,
    #[error("the API key has been revoked")]
    Revoked,
    #[error("this needs the {0} role")]
    Forbidden(&'static str),
    #[error("a write from the console needs the session's X-CSRF-Token header")]
    CsrfToken,
    #[error("too many wrong keys from this address or at this key; try again in {0} s")]
    TooManyFailures(u64),
    #[error("key store: {0}")]
    Store(#[from] StoreError),
}

impl Coded for AuthError {
    fn code(&self) -> ErrorCode {
        match self {
            AuthError::Missing => ErrorCode::Unauthenticated,
            AuthError::Invalid => ErrorCode::InvalidApiKey,
            AuthError::Expired => ErrorCode::KeyExpired,
            AuthError::Revoked => ErrorCode::KeyRevoked,
            AuthError::Forbidden(_) | AuthError::CsrfToken => ErrorCode::Forbidden,
            AuthError::TooManyFailures(_) => ErrorCode::RateLimited,
            AuthError::Store(_) => ErrorCode::StoreUnavailable,
        }
    }
}

/// A key as made: the record to store, and the token shown once.
pub struct NewKey {
    pub record: KeyRecord,
    pub token: String,
}

/// What a new key is for.
pub struct KeySpec {
    pub tenant: Option<String>,
    pub role: Role,
    pub name: String,
    pub limits: Option<RateLimits>,
    pub expires_at_ms: Option<i64>,
}

/// Why a key could not be made.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{0}")]
    Invalid(String),
    #[error("no randomness from the system: {0}")]
    Random(getrandom::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Checks keys against the store.
pub struct Auth {
    /// None: authentication is off and every caller is an admin.
    pepper: Option<Vec<u8>>,
    store: Arc<dyn AccessStore>,
    /// The configuration's tenants; the store's are read when needed.
    configured: HashSet<String>,
    guesses: Guesses,
}

const PREFIX: &str = "sy_";

fn random_hex(bytes: usize) -> Result<String, KeyError> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(KeyError::Random)?;
    Ok(hex::encode(buf))
}

/// The id and the secret of a token `sy_<id>_<secret>`.
fn split(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.strip_prefix(PREFIX)?.split_once('_')?;
    let hex_of = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex_of(id, ID_HEX) && hex_of(secret, SECRET_HEX)).then_some((id, secret))
}

const ID_HEX: usize = 16;
const SECRET_HEX: usize = 64;

impl Auth {
    pub fn new(pepper: Option<Vec<u8>>, store: Arc<dyn AccessStore>, tenants: &Tenants) -> Auth {
        Auth {
            pepper,
            store,
            configured: tenants.iter().map(|t| t.name.clone()).collect(),
            guesses: Guesses::default(),
        }
    }

    /// Refuses wrong keys from a source (a client address, a key id) for
    /// the rest of a minute in which it presented `max` of them; 0 never
    /// does. A valid key is let in whatever its source.
    pub fn limit_failures(mut self, max: u32) -> Auth {
        self.guesses = Guesses::new(max);
        self
    }

    pub fn enabled(&self) -> bool {
        self.pepper.is_some()
    }

    fn mac(&self, secret: &str) -> Option<Hmac<Sha256>> {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.pepper.as_deref()?).ok()?;
        mac.update(secret.as_bytes());
        Some(mac)
    }

    /// What a wrong `token` from `addr` is counted against.
    pub fn guessers(&self, addr: Option<IpAddr>, token: Option<&str>) -> Vec<Guesser> {
        if !self.enabled() || !self.guesses.limited() {
            return Vec::new();
        }
        let key = token
            .and_then(|t| t.strip_prefix(PREFIX)?.split_once('_'))
            .map(|(id, _)| id)
            .filter(|id| id.len() == ID_HEX && id.bytes().all(|b| b.is_ascii_hexdigit()))
            .map(|id| Guesser::Key(id.to_ascii_lowercase()));
        addr.map(Guesser::Address).into_iter().chain(key).collect()
    }

    /// Seconds until `from` may guess again, if any of it guessed too often.
    pub fn blocked(&self, from: &[Guesser], now: Instant) -> Option<u64> {
        self.guesses.blocked(from, now)
    }

    /// Counts a wrong key against `from`.
    pub fn failed(&self, from: &[Guesser], now: Instant) {
        self.guesses.failed(from, now);
    }

    /// Who the key presented (the token, if any) says is calling.
    pub async fn caller(&self, token: Option<&str>, now_ms: i64) -> Result<Caller, AuthError> {
        if !self.enabled() {
            return Ok(Caller::open());
        }
        let token = token.ok_or(AuthError::Missing)?;
        let (id, secret) = split(token).ok_or(AuthError::Invalid)?;
        let key = self.store.get_key(id).await?.ok_or(AuthError::Invalid)?;
        // Constant-time: the comparison takes as long wherever it differs.
        let mac = self.mac(secret).ok_or(AuthError::Invalid)?;
        mac.verify_slice(&key.digest)
            .map_err(|_| AuthError::Invalid)?;
        if key.revoked_at_ms.is_some() {
            return Err(AuthError::Revoked);
        }
        if key.expires_at_ms.is_some_and(|at| at <= now_ms) {
            return Err(AuthError::Expired);
        }
        let role = Role::parse(&key.role).ok_or(AuthError::Invalid)?;
        Ok(Caller {
            role,
            key: Some(KeyLimits {
                id: key.id.clone(),
                limits: key.limits.unwrap_or_default(),
            }),
            tenant: key.tenant,
        })
    }

    /// Whether the tenant is in the configuration or was made by an admin.
    pub async fn tenant_exists(&self, name: &str) -> Result<bool, StoreError> {
        if self.configured.contains(name) {
            return Ok(true);
        }
        Ok(self
            .store
            .list_tenants()
            .await?
            .iter()
            .any(|t| t.name == name))
    }

    /// Makes a key and stores its digest; the token is returned only here.
    pub async fn mint(&self, spec: KeySpec, now_ms: i64) -> Result<NewKey, KeyError> {
        let pepper_missing = || KeyError::Invalid("authentication is off: no pepper".into());
        if !self.enabled() {
            return Err(pepper_missing());
        }
        match (&spec.tenant, spec.role.spans_tenants()) {
            (Some(_), true) => {
                return Err(KeyError::Invalid(format!(
                    "a {} key spans tenants; give no tenant",
                    spec.role.as_str()
                )));
            }
            (None, false) => {
                return Err(KeyError::Invalid(format!(
                    "a {} key belongs to a tenant; give one",
                    spec.role.as_str()
                )));
            }
            (Some(t), false) if !self.tenant_exists(t).await? => {
                return Err(KeyError::Invalid(format!("no tenant {t:?}")));
            }
            _ => {}
        }
        if spec.expires_at_ms.is_some_and(|at| at <= now_ms) {
            return Err(KeyError::Invalid("expires_at is in the past".into()));
        }
        let id = random_hex(ID_HEX / 2)?;
        let secret = random_hex(SECRET_HEX / 2)?;
        let digest = self
            .mac(&secret)
            .ok_or_else(pepper_missing)?
            .finalize()
            .into_bytes()
            .to_vec();
        let record = KeyRecord {
            id: id.clone(),
            tenant: spec.tenant,
            role: spec.role.as_str().to_owned(),
            name: spec.name,
            digest,
            limits: spec.limits,
            created_at_ms: now_ms,
            expires_at_ms: spec.expires_at_ms,
            revoked_at_ms: None,
        };
        self.store.insert_key(&record).await?;
        Ok(NewKey {
            token: format!("{PREFIX}{id}_{secret}"),
            record,
        })
    }

    pub fn store(&self) -> &Arc<dyn AccessStore> {
        &self.store
    }
}
