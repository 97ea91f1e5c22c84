//! The cluster view's tests: placement, capacity and eligibility on
//! crafted heartbeats, and a property test over every policy.

use super::*;
use crate::placement::{PolicyKind, build};
use proptest::prelude::*;
use switchyard_schemas::{GpuStats, SCHEMA_VERSION};

fn hb(node: &str, models: &[&str], slots: u32, running: u32, queued: u32) -> Heartbeat {
    Heartbeat {
        v: SCHEMA_VERSION,
        node: node.into(),
        at_ms: 0,
        models: models.iter().map(|m| (*m).to_owned()).collect(),
        slots_total: slots,
        running,
        queued,
        held: Default::default(),
        read_through: None,
        draining: false,
        ready: true,
        service_ms: None,
        service_ms_by_model: Default::default(),
        gpus: Vec::new(),
        engine: switchyard_schemas::EngineLoad::default(),
        loadable: Vec::new(),
    }
}

/// A heartbeat of a node of two slots, idle, that has read its work queue
/// up to `read`.
fn read_to(read: Option<u64>) -> Heartbeat {
    Heartbeat {
        read_through: read,
        ..hb("a", &["m"], 2, 0, 0)
    }
}

/// Places a job for each of `seqs`, stored in the work queue at it.
fn place_stored(c: &mut Cluster, now: Instant, seqs: &[u64]) {
    for seq in seqs {
        let node = c.place(("m", Priority::Normal), now, &[]).unwrap();
        c.sent(&node, Some(*seq), now);
    }
}

#[test]
fn assignments_on_their_way_count_until_the_node_says_it_has_read_them() {
    let now = Instant::now();
    let mut c = Cluster::new(Duration::from_secs(5), 0, build(PolicyKind::LeastLoaded));
    c.observe(&read_to(Some(4)), now);
    place_stored(&mut c, now, &[5, 6]);
    assert_eq!(c.capacity_for("m", Priority::Normal, now), 0);
    // Sent before the node read them: its heartbeat says it is idle, and
    // both are still on their way, not room.
    c.observe(&read_to(Some(4)), now);
    assert_eq!(c.capacity_for("m", Priority::Normal, now), 0);
    assert_eq!(c.place(("m", Priority::Normal), now, &[]), None);
    // Read and finished: the room is back.
    c.observe(&read_to(Some(6)), now);
    assert_eq!(c.capacity_for("m", Priority::Normal, now), 2);
    // Running what it read, with one more on its way.
    place_stored(&mut c, now, &[7, 8]);
    c.observe(
        &Heartbeat {
            running: 1,
            ..read_to(Some(7))
        },
        now,
    );
    assert_eq!(c.capacity_for("m", Priority::Normal, now), 0);
}

#[test]
fn an_assignment_not_read_within_the_node_timeout_stops_counting() {
    let now = Instant::now();
    let mut c = Cluster::new(Duration::from_secs(5), 0, build(PolicyKind::LeastLoaded));
    c.observe(&read_to(Some(4)), now);
    place_stored(&mut c, now, &[5, 6]);
    // Its queue was reclaimed, or the agent restarted: never read.
    c.observe(&read_to(Some(0)), now + Duration::from_secs(4));
    assert_eq!(c.capacity_for("m", Priority::Normal, now), 0);
    let later = now + Duration::from_secs(6);
    c.observe(&read_to(Some(0)), later);
    assert_eq!(c.capacity_for("m", Priority::Normal, later), 2);
}

#[test]
fn an_assignment_never_stored_frees_its_room_at_once() {
    let now = Instant::now();
    let mut c = Cluster::new(Duration::from_secs(5), 0, build(PolicyKind::LeastLoaded));
    c.observe(&read_to(Some(0)), now);
    let node = c.place(("m", Priority::Normal), now, &[]).unwrap();
    assert_eq!(c.capacity_for("m", Priority::Normal, now), 1);
    c.sent(&node, None, now);
    assert_eq!(c.capacity_for("m", Priority::Normal, now), 2);
}

#[test]
fn a_node_that_does_not_say_what_it_read_counts_assignments_at_its_next_heartbeat() {
    let now = Instant::now();
    let mut c = Cluster::new(Duration::from_secs(5), 0, build(PolicyKind::LeastLoaded));
    c.observe(&read_to(None), now);
    place_stored(&mut c, now, &[1, 2]);
    assert_eq!(c.capacity_for("m", Priority::Normal, now), 0);
    c.observe(
        &Heartbeat {
            queued: 2,
            ..read_to(None)
        },
        now,
    );
    assert_eq!(c.capacity_for("m", Priority::Normal, now), 0);
    c.observe(&read_to(None), now);
    assert_eq!(c.capacity_for("m", Priority::Normal, now), 2);
}

#[test]
fn a_model_no_node_serves_is_loaded_where_there_is_most_room() {
    let now = Instant::now();
    let mut c = Cluster::new(Duration::from_secs(5), 0, build(PolicyKind::LeastLoaded));
    let cold = |node: &str, slots: u32, running: u32| Heartbeat {
        loadable: vec!["cold".into()],
        ..hb(node, &["hot"], slots, running, 0)
    };
    c.observe(&cold("a", 4, 3), now);
    c.observe(&cold("b", 4, 1), now);
    c.observe(&cold("c", 2, 2), now);
    c.observe(&hb("d", &["hot"], 8, 0, 0), now);
    assert!(!c.serves("cold", now));
    assert_eq!(
        c.capacity_for("cold", Priority::Normal, now),
        0,
        "nothing is placed before it loads"
    );
    assert_eq!(c.loader_for("cold", now, &[]).as_deref(), Some("b"));
    assert_eq!(
        c.loader_for("cold", now, &["b"]).as_deref(),
        Some("a"),
        "b failed to load it"
    );
    assert_eq!(c.loader_for("other", now, &[]), None);
    c.observe(&cold("b", 4, 4), now);
    assert_eq!(c.loader_for("cold", now, &[]).as_deref(), Some("a"));
    c.observe(&cold("a", 4, 4), now);
    assert_eq!(c.loader_for("cold", now, &[]), None, "no node with room");

    c.observe(&hb("b", &["hot", "cold"], 4, 4, 0), now);
    assert!(c.serves("cold", now), "loaded, even while busy");
    let later = now + Duration::from_secs(6);
    assert!(!c.serves("cold", later), "a silent node serves nothing");
}

#[test]
fn a_cold_model_is_loaded_where_most_gpu_memory_is_free() {
    let now = Instant::now();
    let mut c = Cluster::new(Duration::from_secs(5), 0, build(PolicyKind::LeastLoaded));
    let gib = 1 << 30;
    let cold = |node: &str, running: u32, used_gib: u64| Heartbeat {
        loadable: vec!["cold".into()],
        gpus: vec![GpuStats {
            memory_used_bytes: Some(used_gib * gib),
            memory_total_bytes: Some(80 * gib),
            ..GpuStats::default()
        }],
        ..hb(node, &["hot"], 4, running, 0)
    };
    // a has the most room in slots, c the most GPU memory free.
    c.observe(&cold("a", 0, 70), now);
    c.observe(&cold("b", 2, 40), now);
    c.observe(&cold("c", 3, 10), now);
    assert_eq!(c.loader_for("cold", now, &[]).as_deref(), Some("c"));
    assert_eq!(c.loader_for("cold", now, &["c"]).as_deref(), Some("b"));
    // Memory matters only where there is a slot to use it.
    c.observe(&cold("c", 4, 10), now);
    assert_eq!(c.loader_for("cold", now, &[]).as_deref(), Some("b"));
}

#[test]
fn a_node_whose_engine_is_down_gets_nothing_but_keeps_its_queue() {
    let now = Instant::now();
    let mut c = Cluster::new(Duration::from_secs(5), 0, build(PolicyKind::LeastLoaded));
    let down = Heartbeat {
        ready: false,
        ..hb("down", &["m"], 8, 0, 0)
    };
    c.observe(&down, now);
    c.observe(&hb("up", &["m"], 1, 0, 0), now);
    assert_eq!(c.capacity_for("m", Priority::Normal, now), 1);
    assert_eq!(c.free_total(now), 1);
    assert_eq!(
        c.place(("m", Priority::Normal), now, &[]).as_deref(),
        Some("up")
    );
    assert_eq!(c.place(("m", Priority::Normal), now, &[]), None);
    assert!(c.reclaimable(now).is_empty(), "its queue is not taken back");
    c.observe(&hb("down", &["m"], 8, 0, 0), now);
    assert_eq!(
        c.place(("m", Priority::Normal), now, &[]).as_deref(),
        Some("down")
    );
}

#[test]
fn free_counts_slots_prefetch_and_unreported_assignments() {
    let now = Instant::now();
    let mut c = Cluster::new(Duration::from_secs(5), 1, build(PolicyKind::LeastLoaded));
    c.observe(&hb("a", &["m"], 4, 3, 2), now);
    // 4 slots × (1 + 1) = 8 in all, 5 taken.
    assert_eq!(c.capacity_for("m", Priority::Normal, now), 3);
    for _ in 0..3 {
        assert_eq!(
            c.place(("m", Priority::Normal), now, &[]).as_deref(),
            Some("a")
        );
    }
    assert_eq!(
        c.place(("m", Priority::Normal), now, &[]),
        None,
        "never beyond capacity"
    );
    // The next heartbeat counts them and replaces the estimate.
    c.observe(&hb("a", &["m"], 4, 4, 1), now);
    assert_eq!(c.capacity_for("m", Priority::Normal, now), 3);
}

#[test]
fn places_only_on_healthy_nodes_serving_the_model() {
    let now = Instant::now();
    let mut c = Cluster::new(Duration::from_secs(5), 0, build(PolicyKind::LeastLoaded));
    c.observe(&hb("other-model", &["x"], 8, 0, 0), now);
    let mut draining = hb("draining", &["m"], 8, 0, 0);
    draining.draining = true;
    c.observe(&draining, now);
    c.observe(&hb("silent", &["m"], 8, 0, 0), now);
    let later = now + Duration::from_secs(6);
    c.observe(&hb("ok", &["m"], 1, 0, 0), later);
    assert_eq!(c.capacity_for("m", Priority::Normal, later), 1);
    assert_eq!(
        c.place(("m", Priority::Normal), later, &[]).as_deref(),
        Some("ok")
    );
    assert_eq!(c.place(("m", Priority::Normal), later, &[]), None);
    assert_eq!(c.place(("nope", Priority::Normal), later, &[]), None);
}

#[test]
fn prefers_the_node_with_most_room() {
    let now = Instant::now();
    let mut c = Cluster::new(Duration::from_secs(5), 0, build(PolicyKind::LeastLoaded));
    c.observe(&hb("small", &["m"], 2, 0, 0), now);
    c.observe(&hb("big", &["m"], 8, 5, 0), now);
    // big has 3 free, small 2.
    assert_eq!(
        c.place(("m", Priority::Normal), now, &[]).as_deref(),
        Some("big")
    );
    // Now both have 2 free; the tie goes to the one running less.
    assert_eq!(
        c.place(("m", Priority::Normal), now, &[]).as_deref(),
        Some("small")
    );
    assert_eq!(
        c.place(("m", Priority::Normal), now, &[]).as_deref(),
        Some("big")
    );
    assert_eq!(c.free_total(now), 2);
}

#[test]
fn avoids_nodes_that_failed_the_job_while_others_have_room() {
    let now = Instant::now();
    let mut c = Cluster::new(Duration::from_secs(5), 0, build(PolicyKind::LeastLoaded));
    c.observe(&hb("bad", &["m"], 8, 0, 0), now);
    c.observe(&hb("good", &["m"], 1, 0, 0), now);
    assert_eq!(
        c.place(("m", Priority::Normal), now, &["bad"]).as_deref(),
        Some("good")
    );
    // No room left elsewhere: the failed node still beats waiting.
    assert_eq!(
        c.place(("m", Priority::Normal), now, &["bad"]).as_deref(),
        Some("bad")
    );
}

#[test]
fn lost_draining_and_never_heard_nodes_are_reclaimed() {
    let now = Instant::now();
    let mut c = Cluster::new(Duration::from_secs(5), 0, build(PolicyKind::LeastLoaded));
    c.observe(&hb("alive", &["m"], 1, 0, 0), now);
    let mut d = hb("draining", &["m"], 1, 0, 0);
    d.draining = true;
    c.observe(&d, now);
    c.seed("silent", now);
    c.seed("alive", now);
    assert_eq!(c.reclaimable(now), ["draining"]);
    assert_eq!(
        c.capacity_for("m", Priority::Normal, now),
        1,
        "a seeded node takes no work"
    );
    let later = now + Duration::from_secs(6);
    c.observe(&hb("alive", &["m"], 1, 0, 0), later);
    assert_eq!(c.reclaimable(later), ["draining", "silent"]);
}

#[test]
fn forgets_long_silent_nodes() {
    let now = Instant::now();
    let mut c = Cluster::new(Duration::from_secs(1), 0, build(PolicyKind::LeastLoaded));
    c.observe(&hb("a", &["m"], 1, 0, 0), now);
    assert!(c.forget_stale(now + Duration::from_secs(5)).is_empty());
    assert_eq!(c.forget_stale(now + Duration::from_secs(11)), ["a"]);
}

#[test]
fn model_affinity_keeps_a_model_on_its_warm_node() {
    let now = Instant::now();
    let mut c = Cluster::new(Duration::from_secs(5), 0, build(PolicyKind::ModelAffinity));
    c.observe(&hb("a", &["m", "x"], 4, 0, 0), now);
    c.observe(&hb("b", &["m", "x"], 8, 0, 0), now);
    assert_eq!(
        c.place(("m", Priority::Normal), now, &[]).as_deref(),
        Some("b")
    );
    assert_eq!(
        c.place(("x", Priority::Normal), now, &[]).as_deref(),
        Some("b")
    );
    // b is warm for m, and keeps it although a has as much room now.
    c.observe(&hb("b", &["m", "x"], 4, 0, 0), now);
    assert_eq!(
        c.place(("m", Priority::Normal), now, &[]).as_deref(),
        Some("b")
    );
}

#[test]
fn each_model_goes_to_the_node_that_runs_it_fastest() {
    let mut c = Cluster::new(Duration::from_secs(5), 0, build(PolicyKind::EarliestFinish));
    let now = Instant::now();
    // Alike as nodes; each is fast at one model and slow at the other.
    let timed = |node: &str, m0: u32, m1: u32| Heartbeat {
        service_ms: Some(100),
        service_ms_by_model: [("m0".to_owned(), m0), ("m1".to_owned(), m1)].into(),
        ..hb(node, &["m0", "m1"], 4, 0, 0)
    };
    c.observe(&timed("a", 10, 500), now);
    c.observe(&timed("b", 500, 10), now);
    assert_eq!(
        c.place(("m1", Priority::Normal), now, &[]).as_deref(),
        Some("b")
    );
    assert_eq!(
        c.place(("m0", Priority::Normal), now, &[]).as_deref(),
        Some("a")
    );
}

#[test]
fn gpu_aware_placement_reads_the_gpu_memory_nvml_reports() {
    let mut c = Cluster::new(Duration::from_secs(5), 0, build(PolicyKind::GpuAware));
    let now = Instant::now();
    let with_free = |node: &str, used_gib: u64| Heartbeat {
        gpus: (0..2)
            .map(|index| switchyard_schemas::GpuStats {
                index,
                name: "gpu".into(),
                utilization_pct: None,
                memory_used_bytes: Some(used_gib << 30),
                memory_total_bytes: Some(80 << 30),
                temperature_c: None,
                power_mw: None,
                processes: Vec::new(),
            })
            .collect(),
        ..hb(node, &["m0"], 4, 0, 0)
    };
    c.observe(&with_free("full", 70), now);
    c.observe(&with_free("roomy", 20), now);
    assert_eq!(
        c.place(("m0", Priority::Normal), now, &[]).as_deref(),
        Some("roomy")
    );
}

/// A random node: (models bitmask over m0..m2, slots, running, queued,
/// seconds since last heartbeat, draining).
fn node_strategy() -> impl Strategy<Value = (u8, u32, u32, u32, u64, bool)> {
    (0u8..8, 0u32..6, 0u32..8, 0u32..8, 0u64..10, any::<bool>())
}

proptest! {
    #[test]
    fn no_policy_places_on_an_unfit_node_or_beyond_capacity(
        nodes in prop::collection::vec(node_strategy(), 0..12),
        prefetch in 0u32..3,
        model in 0usize..3,
        avoid_mask in any::<u16>(),
        kv in prop::collection::vec(prop::option::of(0.0f32..=1.0), 12),
        policy in prop::sample::select(vec![
            PolicyKind::LeastLoaded,
            PolicyKind::ModelAffinity,
            PolicyKind::PowerOfTwo,
            PolicyKind::RoundRobin,
            PolicyKind::EarliestFinish,
            PolicyKind::GpuAware,
        ]),
    ) {
        let start = Instant::now();
        let now = start + Duration::from_secs(10);
        let timeout = Duration::from_secs(5);
        let mut c = Cluster::new(timeout, prefetch, build(policy));
        let models = ["m0", "m1", "m2"];
        let mut room = std::collections::HashMap::new();
        for (i, (mask, slots, running, queued, age, draining)) in nodes.iter().enumerate() {
            let id = format!("n{i}");
            let serves: Vec<&str> = (0..3).filter(|b| mask & (1 << b) != 0).map(|b| models[b]).collect();
            let mut h = hb(&id, &serves, *slots, *running, *queued);
            h.draining = *draining;
            h.engine.kv_cache_usage = kv[i];
            h.engine.queue_depth = Some(*queued % 3);
            c.observe(&h, now - Duration::from_secs(*age));
            let fit = !draining && *age <= 5 && serves.contains(&models[model]);
            let free = (slots * (prefetch + 1)).saturating_sub(running + queued);
            room.insert(id, if fit { free } else { 0 });
        }
        let capacity: u32 = room.values().sum();
        prop_assert_eq!(c.capacity_for(models[model], Priority::Normal, now), capacity);
        let avoid: Vec<String> = (0..nodes.len()).filter(|i| avoid_mask & (1 << i) != 0).map(|i| format!("n{i}")).collect();
        let avoid: Vec<&str> = avoid.iter().map(String::as_str).collect();
        let mut placed = 0;
        while let Some(id) = c.place((models[model], Priority::Normal), now, &avoid) {
            let left = room.get_mut(&id).expect("a known node");
            prop_assert!(*left > 0, "placed on {} with no room left, or unfit", id);
            *left -= 1;
            if avoid.contains(&id.as_str()) {
                let others: u32 = room.iter().filter(|(n, _)| !avoid.contains(&n.as_str())).map(|(_, r)| *r).sum();
                prop_assert_eq!(others, 0, "an avoided node was chosen while others had room");
            }
            placed += 1;
            prop_assert!(placed <= capacity);
        }
        prop_assert_eq!(placed, capacity, "every free slot is usable");
    }
}

#[test]
fn a_full_node_takes_a_higher_level_for_each_lower_one_it_holds() {
    let now = Instant::now();
    let mut c = Cluster::new(Duration::from_secs(5), 1, build(PolicyKind::LeastLoaded));
    // Two slots and a prefetch of one: full, with two running and two held.
    let mut full = hb("a", &["m"], 2, 2, 2);
    full.held = BTreeMap::from([(Priority::Normal, 1), (Priority::Batch, 1)]);
    c.observe(&full, now);
    assert_eq!(c.free_total(now), 0);
    assert_eq!(c.capacity_for("m", Priority::Batch, now), 0);
    assert_eq!(c.capacity_for("m", Priority::Normal, now), 1);
    assert_eq!(c.capacity_for("m", Priority::Critical, now), 2);
    assert_eq!(c.room_total(Priority::Critical, now), 2);
    assert_eq!(c.place(("m", Priority::Batch), now, &[]), None);
    assert_eq!(
        c.place(("m", Priority::Critical), now, &[]).as_deref(),
        Some("a")
    );
    // The batch job it held is being handed back: a normal one finds
    // nothing lower left to take the place of, a critical one the normal.
    assert_eq!(c.place(("m", Priority::Normal), now, &[]), None);
    assert_eq!(
        c.place(("m", Priority::Critical), now, &[]).as_deref(),
        Some("a")
    );
    assert_eq!(c.place(("m", Priority::Critical), now, &[]), None);
    // The next heartbeat says what it holds now.
    let mut after = hb("a", &["m"], 2, 2, 2);
    after.held = BTreeMap::from([(Priority::Critical, 2)]);
    c.observe(&after, now);
    assert_eq!(c.capacity_for("m", Priority::Critical, now), 0);
}
