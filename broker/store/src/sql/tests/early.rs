//! What the streams say of a job before its record is written: a job is
//! queued while its record is written, so its events and result can come
//! first. They are not applied, nor their charges written, until it is.

use std::collections::HashSet;

use super::*;

fn charge(id: &str) -> Charge {
    Charge {
        usage: UsageEvent::fixture(id, "n1"),
        cost_micros: 7,
        cache_hit: false,
    }
}

#[tokio::test]
async fn events_and_results_of_a_job_not_yet_recorded_are_named_and_not_applied() {
    let (s, _dir) = store().await;
    add(&s, &job("here"), Source::Nats).await;
    add(&s, &job("ended"), Source::Nats).await;
    s.apply_results(&[succeeded("ended", 1, 1)], &[], &|_| false)
        .await
        .unwrap();
    let assigned = |id| event(id, 7, EventKind::Assigned { node: "n1".into() });
    let early = s
        .apply_events(&[assigned("here"), assigned("later"), assigned("ended")])
        .await
        .unwrap();
    assert_eq!(early, vec![1], "only the job with no record at all");
    let results = [
        succeeded("later", 3, 4),
        succeeded("here", 3, 4),
        succeeded("ended", 9, 9),
    ];
    let charges = [charge("here"), charge("later")];
    let applied = s
        .apply_results(&results, &charges, &|_| true)
        .await
        .unwrap();
    assert_eq!(applied.unrecorded, vec![0]);
    assert_eq!(
        applied.new_charges,
        vec![0],
        "the unrecorded job's charge waits too"
    );
    let ids: Vec<&str> = applied.records.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["here"]);

    // Once its record is written, the same messages, delivered again, apply.
    add(&s, &job("later"), Source::Nats).await;
    let early = s.apply_events(&[assigned("later")]).await.unwrap();
    assert!(early.is_empty());
    let applied = s
        .apply_results(&results[..1], &charges[1..], &|_| false)
        .await
        .unwrap();
    assert!(applied.unrecorded.is_empty());
    assert_eq!(applied.new_charges, vec![0]);
    let later = s.get("later").await.unwrap().unwrap();
    assert_eq!(
        (later.status, later.assigned_at_ms),
        (Status::Succeeded, Some(7))
    );
    let lines: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM usage")
        .fetch_one(&s.pool)
        .await
        .unwrap();
    assert_eq!(lines, 2);
}

#[tokio::test]
async fn a_job_is_known_by_its_id_whoever_its_tenant() {
    let (s, _dir) = store().await;
    let theirs = Job {
        tenant: "other".into(),
        ..job("theirs")
    };
    add(&s, &theirs, Source::Http).await;
    let found = s.recorded(&["theirs", "nobody's"]).await.unwrap();
    assert_eq!(found, HashSet::from(["theirs".to_owned()]));
}
