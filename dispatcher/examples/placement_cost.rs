//! What one placement decision costs with 1,000 nodes in the cluster view,
//! for each policy. A measurement, not a test:
//!
//!     cargo run -p switchyard-dispatcher --example placement_cost
//!
//! Nodes serve 4 of 16 models, with 4–64 slots. Every 1,000 placements the
//! nodes report again (a heartbeat each), as they would between sweeps.

use std::time::{Duration, Instant};

use switchyard_dispatcher::Cluster;
use switchyard_dispatcher::placement::{PolicyKind, build};
use switchyard_schemas::{EngineLoad, Heartbeat, Priority, SCHEMA_VERSION};

const NODES: usize = 1_000;
const MODELS: usize = 16;
const PLACEMENTS: usize = 200_000;

fn heartbeats() -> Vec<Heartbeat> {
    (0..NODES)
        .map(|i| Heartbeat {
            v: SCHEMA_VERSION,
            node: format!("node-{i:04}"),
            at_ms: 0,
            models: (0..4)
                .map(|k| format!("model-{}", (i + k * 5) % MODELS))
                .collect(),
            slots_total: 4 + (i as u32 * 7) % 61,
            running: (i as u32 * 3) % 4,
            queued: 0,
            held: Default::default(),
            read_through: None,
            draining: false,
            ready: true,
            service_ms: Some(20 + (i as u32 * 13) % 300),
            service_ms_by_model: Default::default(),
            gpus: Vec::new(),
            engine: EngineLoad::default(),
            loadable: Vec::new(),
        })
        .collect()
}

fn main() {
    let beats = heartbeats();
    let models: Vec<String> = (0..MODELS).map(|m| format!("model-{m}")).collect();
    for kind in [
        PolicyKind::LeastLoaded,
        PolicyKind::ModelAffinity,
        PolicyKind::PowerOfTwo,
        PolicyKind::RoundRobin,
        PolicyKind::EarliestFinish,
    ] {
        let mut cluster = Cluster::new(Duration::from_secs(3600), 1, build(kind));
        let mut placing = Duration::ZERO;
        let mut placed = 0usize;
        for round in 0..PLACEMENTS / 1_000 {
            let now = Instant::now();
            for hb in &beats {
                cluster.observe(hb, now);
            }
            let start = Instant::now();
            for j in 0..1_000 {
                let model = &models[(round * 7 + j) % MODELS];
                if cluster.place((model, Priority::Normal), now, &[]).is_some() {
                    placed += 1;
                }
            }
            placing += start.elapsed();
        }
        println!(
            "{kind:?}: {:.2} µs per placement ({placed} of {PLACEMENTS} placed, {NODES} nodes)",
            placing.as_secs_f64() * 1e6 / PLACEMENTS as f64
        );
    }
}
