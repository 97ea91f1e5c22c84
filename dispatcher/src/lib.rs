//! The dispatcher: pulls admitted jobs, highest priority first, and assigns
//! each to a node that serves its model and has room, by publishing it to that
//! node's work queue. It pulls only as many jobs as the cluster has room for,
//! so the backlog stays in JetStream, not in memory.

mod aging;
mod autoscale;
mod backlog;
mod batch;
mod cluster;
mod config;
mod dispatch;
mod fair;
mod lanes;
mod loads;
mod metrics;
pub mod placement;
mod pulls;
mod reclaim;
mod running;

pub use autoscale::AutoscaleConfig;
pub use cluster::{Cluster, NodeView};
pub use config::DispatcherConfig;
pub use dispatch::{DispatchError, run};
