//! The broker: Switchyard's front door. It admits jobs from HTTP and NATS
//! clients into the durable queue, keeps a record of every job, and follows
//! the lifecycle events and results that the dispatcher and agents publish.

pub mod admin;
mod admission;
mod api;
pub mod auth;
mod batches;
mod billing;
mod budget;
mod cache;
mod cancel;
mod config;
mod dead_letters;
mod events;
mod expiry;
mod intake;
mod kserve;
mod limits;
mod metrics;
mod openai;
mod openapi;
mod outbox;
mod pii;
mod projection;
mod retention;
mod server;
mod wait;
mod webhooks;

pub use admission::{Admitter, Rejection, SubmitError};
pub use config::BrokerConfig;
pub use server::{BrokerError, run};
pub use webhooks::check_tenants;
