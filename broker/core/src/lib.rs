//! The broker's core: what happens to a job between the door and the
//! queue, and after. Admission (validation, limits, budgets, personal data,
//! webhooks), the synchronous-call path, cancellation and expiry, the NATS
//! intakes, the projection of the streams into the store, the outbox,
//! retention, the batch runner, webhook delivery, the live model registry
//! and its rollouts, and the closed set of
//! error codes. No HTTP types: the edge (`switchyard-http`) maps what this
//! crate says onto HTTP.

pub mod admin;
pub mod admission;
pub mod auth;
pub mod batches;
pub mod billing;
pub mod budget;
pub mod cache;
pub mod calls;
pub mod cancel;
pub mod config;
pub mod dead_letters;
pub mod error;
pub mod expiry;
pub mod fleet;
pub mod guesses;
pub mod intake;
pub mod limits;
pub mod metrics;
pub mod models;
pub mod openai_request;
pub mod outbox;
pub mod pii;
pub mod projection;
pub mod recorded;
pub mod retention;
pub mod shares;
pub mod watch;
pub mod webhooks;

pub use config::BrokerConfig;
pub use error::{Coded, ErrorCode};
