//! The gpu-agent: one per GPU node. It pulls assignments from its own work
//! queue (never more than it has free slots), runs them on the local engine,
//! publishes usage and the result, and only then acknowledges the assignment.
//! It reports its capacity in heartbeats that the dispatcher places work by.

mod agent;
mod config;
pub mod engine;
mod gpus;
mod metrics;
mod process;

pub use agent::{AgentError, Placing, run};
pub use config::{AgentConfig, EngineConfig};
