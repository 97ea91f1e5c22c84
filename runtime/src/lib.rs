//! Plumbing that every Switchyard process shares: configuration loading and
//! validation, the NATS connection and stream set-up, the ops HTTP endpoints
//! (`/metrics`, `/healthz`, `/readyz`), logging, and shutdown on SIGTERM.

pub mod aliases;
pub mod attempts;
pub mod config;
pub mod grants;
pub mod guard;
pub mod http_server;
pub mod large;
pub mod nats;
pub mod ops;
pub mod registry;
pub mod rollout_plan;
pub mod shutdown;
pub mod telemetry;
pub mod tenants;
pub mod trace;

pub use aliases::{AliasSpec, Routed, Sticky, StickyKeys};
pub use config::{
    CacheSpec, ConfigError, Issues, ModelKind, ModelSpec, NatsConfig, PiiPolicy, Price,
};
pub use ops::Readiness;
pub use registry::Registry;
pub use tenants::{Budget, BudgetPeriod, RateLimits, TenantSpec, Tenants};
