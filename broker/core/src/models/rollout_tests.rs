use super::*;
use switchyard_runtime::Sticky;

const MINUTE: i64 = 60_000;

fn guards() -> Guards {
    Guards {
        min_samples: 20,
        window: Duration::from_secs(300),
        max_error_rate_increase: Some(0.05),
        max_p95_latency_ratio: Some(1.5),
        max_cost_ratio: Some(1.2),
    }
}

fn alias(targets: &[(&str, u32)]) -> AliasSpec {
    AliasSpec {
        name: "chat".into(),
        targets: targets
            .iter()
            .map(|(m, w)| Target {
                model: (*m).into(),
                weight: *w,
            })
            .collect(),
        sticky: Sticky::Request,
        follow: None,
    }
}

fn request(steps: &[u32]) -> RolloutRequest {
    RolloutRequest {
        to: "v2".into(),
        steps: steps.to_vec(),
        every: Duration::from_secs(600),
        guards: guards(),
    }
}

fn figures(jobs: u64, failed: u64, p95: u64, cost: f64) -> Figures {
    Figures {
        jobs,
        failed,
        p95_engine_ms: Some(p95),
        mean_cost_micros: Some(cost),
    }
}

fn started(steps: &[u32]) -> (AliasSpec, Rollout) {
    let mut a = alias(&[("v1", 100)]);
    let r = request(steps).start(&mut a, 0).expect("starts");
    (a, r)
}

fn weights(targets: &[Target]) -> Vec<(&str, u32)> {
    targets
        .iter()
        .map(|t| (t.model.as_str(), t.weight))
        .collect()
}

#[test]
fn a_healthy_rollout_steps_up_each_period_and_completes_on_the_new_version() {
    let (a, mut r) = started(&[5, 50, 100]);
    assert_eq!(weights(&a.targets), [("v1", 95), ("v2", 5)]);
    let healthy = figures(100, 1, 100, 10.0);
    // Within the period it holds; after it, it moves on.
    assert_eq!(decide(&r, &healthy, &healthy, 9 * MINUTE), Verdict::Hold);
    let v = decide(&r, &healthy, &healthy, 10 * MINUTE);
    assert_eq!(v, Verdict::Advance);
    assert_eq!(weights(&r.apply(&v, 10 * MINUTE)), [("v1", 50), ("v2", 50)]);
    assert_eq!(decide(&r, &healthy, &healthy, 19 * MINUTE), Verdict::Hold);
    let v = decide(&r, &healthy, &healthy, 20 * MINUTE);
    assert_eq!(weights(&r.apply(&v, 20 * MINUTE)), [("v1", 0), ("v2", 100)]);
    let v = decide(&r, &healthy, &healthy, 30 * MINUTE);
    assert_eq!(v, Verdict::Complete);
    assert_eq!(weights(&r.apply(&v, 30 * MINUTE)), [("v2", 100)]);
    assert_eq!(
        (r.status, r.ended_at_ms),
        (Status::Completed, Some(30 * MINUTE))
    );
}

#[test]
fn each_guard_trips_on_its_own_figure_with_both_versions_figures_kept() {
    let (_, r) = started(&[5, 100]);
    let old = figures(200, 2, 100, 10.0);
    let cases = [
        (figures(40, 12, 100, 10.0), "error_rate", 0.01, 0.3),
        (figures(40, 0, 300, 10.0), "p95_latency", 100.0, 300.0),
        (figures(40, 0, 100, 13.0), "cost", 10.0, 13.0),
    ];
    for (new, guard, old_v, new_v) in cases {
        let Verdict::RollBack(t) = decide(&r, &old, &new, MINUTE) else {
            panic!("{guard} should trip");
        };
        assert_eq!(
            (t.guard.as_str(), t.old, t.new, t.old_jobs, t.new_jobs),
            (guard, old_v, new_v, 200, 40)
        );
    }
    // Within every limit: nothing trips.
    let fine = figures(40, 2, 140, 11.0);
    assert_eq!(decide(&r, &old, &fine, MINUTE), Verdict::Hold);
}

#[test]
fn without_its_samples_no_guard_decides_and_the_step_waits() {
    let (_, r) = started(&[5, 100]);
    let old = figures(200, 0, 100, 10.0);
    // Every job failed, but there are too few to judge: held, not
    // rolled back, and not advanced past its period either.
    let few = figures(19, 19, 900, 90.0);
    assert_eq!(decide(&r, &old, &few, MINUTE), Verdict::Hold);
    assert_eq!(decide(&r, &old, &few, 60 * MINUTE), Verdict::Hold);
    let no_baseline = figures(5, 0, 100, 10.0);
    assert_eq!(
        decide(&r, &no_baseline, &figures(40, 40, 100, 10.0), MINUTE),
        Verdict::Hold
    );
}

#[test]
fn a_rolled_back_rollout_gives_all_traffic_to_the_old_version() {
    let (_, mut r) = started(&[5, 25, 100]);
    let old = figures(200, 0, 100, 10.0);
    let v = decide(&r, &old, &figures(40, 20, 100, 10.0), MINUTE);
    assert_eq!(weights(&r.apply(&v, MINUTE)), [("v1", 100)]);
    assert_eq!(r.status, Status::RolledBack);
    assert_eq!(
        r.rolled_back_by.as_ref().map(|t| t.guard.as_str()),
        Some("error_rate")
    );
}

#[test]
fn a_rollout_that_cannot_be_judged_or_run_is_refused() {
    let bad_steps: [&[u32]; 5] = [&[], &[50, 25, 100], &[0, 100], &[5, 50], &[50, 50, 100]];
    for steps in bad_steps {
        let mut a = alias(&[("v1", 100)]);
        assert!(
            matches!(request(steps).start(&mut a, 0), Err(RolloutError::Invalid(m)) if m.contains("steps")),
            "{steps:?}"
        );
    }
    let mut no_samples = request(&[100]);
    no_samples.guards.min_samples = 0;
    let mut a = alias(&[("v1", 100)]);
    assert_eq!(
        no_samples.start(&mut a, 0),
        Err(RolloutError::Invalid(
            "guards.min_samples must be at least 1".into()
        ))
    );
    let mut split = alias(&[("v1", 50), ("v3", 50)]);
    assert!(request(&[100]).start(&mut split, 0).is_err());
    assert_eq!(weights(&split.targets), [("v1", 50), ("v3", 50)]);
    let mut same = alias(&[("v2", 100)]);
    assert!(request(&[100]).start(&mut same, 0).is_err());
    // Blue-green: one step, straight to the new version, the old one kept
    // at 0 until the step has held.
    let mut a = alias(&[("v1", 100)]);
    request(&[100]).start(&mut a, 0).expect("blue-green");
    assert_eq!(weights(&a.targets), [("v1", 0), ("v2", 100)]);
}
