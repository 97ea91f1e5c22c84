//! The broker: Switchyard's front door. It admits jobs from HTTP and NATS
//! clients into the durable queue, keeps a record of every job, and follows
//! the lifecycle events and results that the dispatcher and agents publish.
//!
//! This crate only assembles the broker's three layers, whose direction the
//! crate graph enforces: `switchyard-http` (the edge) uses
//! `switchyard-core` (the rules and services), which uses
//! `switchyard-store` (SQL).

mod server;

use std::sync::Arc;

pub use server::{BrokerError, run};
pub use switchyard_core::auth::Auth;
pub use switchyard_core::webhooks::check_tenants;
pub use switchyard_core::{BrokerConfig, admin, auth};
use switchyard_runtime::Tenants;

/// The key checker for a command run beside the broker (`switchyard keys`,
/// `switchyard tenants`): the same store and pepper.
pub async fn open_auth(cfg: &BrokerConfig, tenants: &Tenants) -> Result<Arc<Auth>, BrokerError> {
    let store = Arc::new(switchyard_store::SqlStore::open(&cfg.database_url).await?);
    let pepper = cfg.auth.pepper()?;
    Ok(Arc::new(Auth::new(pepper, store, tenants)))
}
