//! The end-to-end suite, one test binary: each module starts its own
//! nats-server (and PostgreSQL database, with `SY_TEST_POSTGRES`) and the
//! real `switchyard` binary for each component, and drives them as a client
//! would. One binary links once, so the suite builds fast.

// Tests fail by panicking, and their helper servers end with the test: the
// no-panic lints and the rule of tracked tasks are for the product code.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

mod common;

mod aliases;
mod auth;
mod autoscaling;
mod bad_input;
mod batch_limits;
mod batches;
mod benchmarks;
mod billing;
mod bounded;
mod budgets;
mod chaos;
mod cold_models;
mod console;
mod console_bench;
mod docs;
mod durable_path;
mod engines;
mod forgery;
mod fronts;
mod harness;
mod hostile;
mod ledger_bench;
mod limits;
mod live_models;
mod nats_accounts;
mod nats_api;
mod nodes;
mod observability;
mod pii;
mod rolling_restart;
mod rollouts;
mod scheduling;
mod shutdown;
mod streams;
mod tenants;
mod tracing;
mod webhooks;
mod workflow_runs;
mod workflows;
