//! Quotas: rate limits (GCRA, a theoretical arrival time per limit),
//! places among jobs not yet ended, and budget reservations. Each is one
//! conditional update, so brokers sharing a database enforce one limit.
//! The amounts and rates are the caller's: the store applies them.

use std::collections::HashMap;

use async_trait::async_trait;

use crate::StoreError;

/// One limit to take from: its key, what this request costs of it, and
/// how early a request may come.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Take {
    pub key: String,
    /// Which limit, for the client: `requests_per_minute`, `tokens_per_minute`.
    pub limit: &'static str,
    pub cost_us: i64,
    pub tolerance_us: i64,
}

/// A reservation to make: who, for which period, how much, up to what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub tenant: String,
    pub period_start_ms: i64,
    pub micros: i64,
    pub limit_micros: i64,
    /// The workflow run whose own reservation a job of it draws on first,
    /// if the run holds one (see [`Quotas::reserve_run`]).
    pub run: Option<String>,
}

/// The key of a workflow run's reservation, beside jobs' (whose ids have
/// no colon).
pub fn run_reservation(run_id: &str) -> String {
    format!("run:{run_id}")
}

/// What an admitted job holds until it ends: a place of each holder's
/// (a tenant, or `key:<id>`, with its most places for jobs not yet ended)
/// and a reservation of its tenant's budget. Taken with the job's record,
/// all or none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holds {
    pub places: Vec<(String, u32)>,
    pub reservation: Option<Reservation>,
}

impl Holds {
    /// Holds no place and no reservation: recording it undoes nothing else.
    pub fn is_empty(&self) -> bool {
        self.places.is_empty() && self.reservation.is_none()
    }
}

/// What a finished job spends of the budget it reserved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settlement {
    pub job_id: String,
    pub cost_micros: i64,
}

/// A holder's token limit: the key of its limit row and what a token costs
/// of it (µs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRate {
    pub limit_key: String,
    pub us_per_token: i64,
}

/// Token limits by holder (a tenant, or `key:<id>`).
pub type TokenRates = HashMap<String, TokenRate>;

/// The prefix that makes a key's holder of limits, beside tenants' (whose
/// names have no colon).
pub const KEY_HOLDER: &str = "key:";

/// The holder of a key's limits: `key:<id>`.
pub fn key_holder(id: &str) -> String {
    format!("{KEY_HOLDER}{id}")
}

#[async_trait]
pub trait Quotas: Send + Sync {
    /// Takes one request from each limit, all or none; when one has no
    /// room, which one and how long until it has (µs).
    async fn take(
        &self,
        takes: &[Take],
        now_us: i64,
    ) -> Result<Option<(&'static str, i64)>, StoreError>;
    /// Corrects token limits by what finished jobs really used (job id,
    /// tokens): each job's estimate is replaced once, in its tenant's limit
    /// and its key's, at the rates given.
    async fn correct_limits(
        &self,
        used: &[(String, u32)],
        rates: &TokenRates,
    ) -> Result<(), StoreError>;
    /// Ends the reservations of these jobs: each job's cost is spent and
    /// the rest given back, and its places among jobs not yet ended are
    /// freed. A job holding neither is skipped, so settling twice changes
    /// nothing.
    async fn settle(&self, jobs: &[Settlement]) -> Result<(), StoreError>;
    /// Reserves a workflow run's most cost for the whole run, as a job's
    /// is reserved (`r.run` is the run); `None` when reserved (or held
    /// already), otherwise what is left of the budget. Its jobs draw their
    /// own reservations from it, and its end gives the rest back
    /// ([`RunRecords::apply_runs`](crate::runs::RunRecords::apply_runs)),
    /// as settling `run:<id>` at no cost does.
    async fn reserve_run(&self, r: &Reservation) -> Result<Option<i64>, StoreError>;
}
