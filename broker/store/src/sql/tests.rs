use super::*;
use crate::ledger::{Charge, Ledger};
use crate::outbox::WebhookOutbox;
use crate::quotas::{Holds, Quotas, Reservation, Settlement, Take, TokenRate, TokenRates};
use crate::{Idempotency, Inserted, JobRecords, Source};
use switchyard_schemas::{
    ErrorClass, EventKind, Job, JobError, JobEvent, JobResult, Outcome, Priority, SCHEMA_VERSION,
    UsageEvent,
};

/// Tokens every test job is estimated at.
const ESTIMATE: u32 = 3;

/// A fresh store: SQLite in a new folder, or, with
/// `SY_TEST_POSTGRES` set to a server's URL, a new database there.
async fn store() -> (SqlStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = match std::env::var("SY_TEST_POSTGRES") {
        Ok(server) => format!(
            "{}/sy_unit_{}",
            server.trim_end_matches('/'),
            uuid::Uuid::now_v7().simple()
        ),
        Err(_) => format!("sqlite://{}/sub/jobs.db", dir.path().display()),
    };
    (SqlStore::open(&url).await.unwrap(), dir)
}

/// Records `job` as admitted from `source`, holding nothing.
async fn add(s: &SqlStore, job: &Job, source: Source) -> Inserted {
    s.insert(job, source, ESTIMATE, &Holds::default())
        .await
        .unwrap()
}

fn job(id: &str) -> Job {
    Job {
        priority: Priority::High,
        metadata: [("k".to_owned(), "v".to_owned())].into(),
        ..Job::fixture(id)
    }
}

fn event(id: &str, at: i64, kind: EventKind) -> JobEvent {
    JobEvent {
        v: SCHEMA_VERSION,
        job_id: id.into(),
        attempt: 1,
        at_ms: at,
        kind,
    }
}

fn result(id: &str, outcome: Outcome) -> JobResult {
    JobResult::fixture(id, outcome)
}

#[tokio::test]
async fn lifecycle_moves_forward_only_and_ignores_repeats() {
    let (s, _dir) = store().await;
    add(&s, &job("a"), Source::Http).await;
    add(&s, &job("a"), Source::Nats).await;
    let ok = result(
        "a",
        Outcome::Succeeded {
            output: serde_json::json!({"x": 1}),
            usage: Usage {
                prompt_tokens: 1,
                completion_tokens: 2,
            },
        },
    );
    // Out of order: the result lands before the events, and alone gives
    // the whole timeline.
    s.apply_results(std::slice::from_ref(&ok)).await.unwrap();
    let early = s.get("a").await.unwrap().unwrap();
    assert_eq!(
        (early.assigned_at_ms, early.started_at_ms),
        (Some(10), Some(20))
    );
    s.apply_events(&[
        event("a", 10, EventKind::Assigned { node: "n1".into() }),
        event("a", 20, EventKind::Running { node: "n1".into() }),
    ])
    .await
    .unwrap();
    let failed = result(
        "a",
        Outcome::Failed {
            error: JobError::new(ErrorClass::Timeout, "late"),
        },
    );
    s.apply_results(&[failed]).await.unwrap();

    let r = s.get("a").await.unwrap().unwrap();
    assert_eq!(r.status, Status::Succeeded, "first final result wins");
    assert_eq!(r.source, "http", "the first insert wins");
    assert_eq!(r.assigned_at_ms, Some(10));
    assert_eq!(r.started_at_ms, Some(20));
    assert_eq!(r.finished_at_ms, Some(50));
    assert_eq!(r.node.as_deref(), Some("n1"));
    assert_eq!(r.output, Some(serde_json::json!({"x": 1})));
    assert_eq!(r.metadata["k"], "v");
    assert_eq!(
        r.usage,
        Some(Usage {
            prompt_tokens: 1,
            completion_tokens: 2
        })
    );
    assert!(s.get("missing").await.unwrap().is_none());
}

#[tokio::test]
async fn a_retry_starts_the_next_attempt_and_the_first_result_is_the_job_s() {
    let (s, _dir) = store().await;
    add(&s, &job("a"), Source::Http).await;
    let at = |attempt, at_ms, kind| JobEvent {
        attempt,
        ..event("a", at_ms, kind)
    };
    let busy = JobError::new(ErrorClass::Overloaded, "busy");
    s.apply_events(&[
        at(1, 10, EventKind::Assigned { node: "n1".into() }),
        at(1, 20, EventKind::Running { node: "n1".into() }),
        at(
            1,
            30,
            EventKind::Retrying {
                node: "n1".into(),
                error: busy,
            },
        ),
    ])
    .await
    .unwrap();
    let r = s.get("a").await.unwrap().unwrap();
    assert_eq!((r.status, r.attempt), (Status::Queued, 2));
    assert_eq!(
        (r.assigned_at_ms, r.started_at_ms, r.node),
        (None, None, None)
    );

    // A late event of attempt 1 does not move attempt 2 back.
    s.apply_events(&[
        at(2, 40, EventKind::Assigned { node: "n2".into() }),
        at(1, 25, EventKind::Running { node: "n1".into() }),
    ])
    .await
    .unwrap();
    let r = s.get("a").await.unwrap().unwrap();
    assert_eq!((r.status, r.attempt), (Status::Assigned, 2));
    assert_eq!(r.node.as_deref(), Some("n2"));
    assert_eq!((r.assigned_at_ms, r.started_at_ms), (Some(40), None));

    // Attempt 1's result, projected after attempt 2 began, is the job's
    // result all the same (RESULTS keeps the first result whatever its
    // attempt, and the record follows it); another result changes nothing.
    let first = JobResult {
        attempt: 1,
        node: Some("n1".into()),
        ..result(
            "a",
            Outcome::Succeeded {
                output: serde_json::json!({"from": 1}),
                usage: Usage::default(),
            },
        )
    };
    s.apply_results(&[first]).await.unwrap();
    let late = JobError::new(ErrorClass::Timeout, "late");
    let second = JobResult {
        attempt: 2,
        ..result("a", Outcome::Failed { error: late })
    };
    s.apply_results(&[second]).await.unwrap();
    let r = s.get("a").await.unwrap().unwrap();
    assert_eq!((r.status, r.attempt), (Status::Succeeded, 1));
    assert_eq!(r.node.as_deref(), Some("n1"));
}

#[tokio::test]
async fn insert_reports_existing_jobs_and_whether_they_were_queued() {
    let (s, _dir) = store().await;
    assert_eq!(add(&s, &job("a"), Source::Nats).await, Inserted::New);
    assert_eq!(
        add(&s, &job("a"), Source::Nats).await,
        Inserted::Existing { enqueued: false }
    );
    s.mark_enqueued("a", 5).await.unwrap();
    assert_eq!(
        add(&s, &job("a"), Source::Nats).await,
        Inserted::Existing { enqueued: true }
    );
}

#[tokio::test]
async fn an_idempotency_key_holds_one_job_within_its_window() {
    let (s, _dir) = store().await;
    assert_eq!(s.claim_key("k", "j1", 1_000, 0).await.unwrap(), "j1");
    assert_eq!(
        s.claim_key("k", "j2", 2_000, 500).await.unwrap(),
        "j1",
        "fresh: kept"
    );
    assert_eq!(
        s.claim_key("k", "j3", 3_000, 1_500).await.unwrap(),
        "j3",
        "expired: reused"
    );
    s.release_key("k", "j2").await.unwrap();
    assert_eq!(
        s.claim_key("k", "j4", 3_001, 0).await.unwrap(),
        "j3",
        "only the holder releases"
    );
    s.release_key("k", "j3").await.unwrap();
    assert_eq!(s.claim_key("k", "j5", 3_002, 0).await.unwrap(), "j5");
}

#[tokio::test]
async fn a_key_whose_job_was_never_recorded_is_taken_over_after_a_while() {
    let (s, _dir) = store().await;
    let later = 1_000 + jobs::ABANDONED_CLAIM_MS;
    assert_eq!(s.claim_key("lost", "j1", 1_000, 0).await.unwrap(), "j1");
    assert_eq!(
        s.claim_key("lost", "j2", later - 1, 0).await.unwrap(),
        "j1",
        "maybe still in flight: kept"
    );
    assert_eq!(
        s.claim_key("lost", "j3", later + 1, 0).await.unwrap(),
        "j3",
        "abandoned: taken over"
    );
    add(&s, &job("a"), Source::Http).await;
    assert_eq!(s.claim_key("kept", "a", 1_000, 0).await.unwrap(), "a");
    assert_eq!(
        s.claim_key("kept", "j4", later + 1, 0).await.unwrap(),
        "a",
        "its job exists: kept for the window"
    );
}

#[tokio::test]
async fn unconfirmed_jobs_are_found_until_marked() {
    let (s, _dir) = store().await;
    add(&s, &job("a"), Source::Http).await;
    add(&s, &job("b"), Source::Http).await;
    s.mark_enqueued("b", 5).await.unwrap();
    let found = s.unconfirmed(2_000, 10).await.unwrap();
    assert_eq!(found, vec![job("a")]);
    assert!(
        s.unconfirmed(500, 10).await.unwrap().is_empty(),
        "too young"
    );
    s.discard_unqueued("a").await.unwrap();
    s.discard_unqueued("b").await.unwrap();
    assert!(s.unconfirmed(2_000, 10).await.unwrap().is_empty());
    assert!(
        s.get("a").await.unwrap().is_none(),
        "refused by the queue: forgotten"
    );
    assert!(
        s.get("b").await.unwrap().is_some(),
        "queued jobs are never discarded"
    );
}

#[tokio::test]
async fn overdue_jobs_are_those_not_started_by_their_deadline() {
    let (s, _dir) = store().await;
    let with_deadline = |id: &str, ms| Job {
        deadline_ms: Some(ms),
        ..job(id)
    };
    for (id, deadline) in [
        ("late", 1_500),
        ("later", 1_800),
        ("in-time", 9_000),
        ("started", 1_500),
    ] {
        add(&s, &with_deadline(id, deadline), Source::Http).await;
    }
    add(&s, &job("no-deadline"), Source::Http).await;
    s.apply_events(&[event(
        "started",
        1_200,
        EventKind::Running { node: "n".into() },
    )])
    .await
    .unwrap();
    assert_eq!(s.overdue(2_000, 10).await.unwrap(), ["late", "later"]);
    assert_eq!(
        s.overdue(2_000, 1).await.unwrap(),
        ["late"],
        "soonest first"
    );
    assert!(s.overdue(1_000, 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn usage_is_recorded_once_per_attempt() {
    let (s, _dir) = store().await;
    let u = UsageEvent {
        v: SCHEMA_VERSION,
        job_id: "a".into(),
        attempt: 1,
        node: "n".into(),
        model: "m".into(),
        usage: Usage {
            prompt_tokens: 3,
            completion_tokens: 4,
        },
        engine_ms: 5,
        at_ms: 6,
    };
    let c = Charge {
        usage: u,
        cost_micros: 7,
        cache_hit: false,
    };
    s.record_usage(&[c.clone(), c.clone()]).await.unwrap();
    s.record_usage(&[c]).await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM usage")
        .fetch_one(&s.pool)
        .await
        .unwrap();
    assert_eq!(n, 1);
}

#[tokio::test]
async fn a_limit_admits_its_burst_then_one_per_interval_and_corrects_once() {
    let (s, _dir) = store().await;
    let take = |cost_us, tolerance_us| Take {
        key: "t:tpm".into(),
        limit: "tokens_per_minute",
        cost_us,
        tolerance_us,
    };
    // A burst of three (tolerance two intervals), then the fourth waits
    // one interval.
    for _ in 0..3 {
        assert_eq!(s.take(&[take(100, 200)], 1_000).await.unwrap(), None);
    }
    assert_eq!(
        s.take(&[take(100, 200)], 1_000).await.unwrap(),
        Some(("tokens_per_minute", 100))
    );
    assert_eq!(s.take(&[take(100, 200)], 1_100).await.unwrap(), None);

    // A job's real tokens replace its estimate in its tenant's limit and
    // its key's, once however often its result is seen.
    let key_take = Take {
        key: "key:k1:tpm".into(),
        ..take(100, 200)
    };
    assert_eq!(s.take(&[key_take], 1_000).await.unwrap(), None);
    let mut j = job("est");
    j.tenant = "t".into();
    j.api_key = Some("k1".into());
    add(&s, &j, Source::Http).await;
    let tat = |key: &'static str| {
        let pool = s.pool();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT tat FROM rate_limits WHERE key = $1")
                .bind(key)
                .fetch_one(pool)
                .await
                .unwrap()
        }
    };
    let before = (tat("t:tpm").await, tat("key:k1:tpm").await);
    // The key's tokens cost twice the tenant's.
    let rate = |limit_key: &str, us_per_token| TokenRate {
        limit_key: limit_key.into(),
        us_per_token,
    };
    let rates = TokenRates::from([
        ("t".to_owned(), rate("t:tpm", 1)),
        ("key:k1".to_owned(), rate("key:k1:tpm", 2)),
    ]);
    let estimate = i64::from(ESTIMATE);
    for _ in 0..2 {
        s.correct_limits(&[("est".into(), 8)], &rates)
            .await
            .unwrap();
    }
    assert_eq!(
        (tat("t:tpm").await, tat("key:k1:tpm").await),
        (before.0 + 8 - estimate, before.1 + 2 * (8 - estimate))
    );
}

#[tokio::test]
async fn a_job_is_recorded_with_its_places_and_reservation_or_not_at_all() {
    let (s, _dir) = store().await;
    let holds = |key_max| Holds {
        places: vec![("t".to_owned(), 3), ("key:k".to_owned(), key_max)],
        reservation: None,
    };
    let insert = |id: &'static str, holds: Holds| {
        let s = &s;
        async move {
            s.insert(&job(id), Source::Http, ESTIMATE, &holds)
                .await
                .unwrap()
        }
    };
    assert_eq!(insert("a", holds(1)).await, Inserted::New);
    // Taken again by the same job: it keeps its places.
    assert_eq!(
        insert("a", holds(1)).await,
        Inserted::Existing { enqueued: false }
    );
    // The key is full: neither the tenant's place nor the record is taken.
    assert_eq!(insert("b", holds(1)).await, Inserted::PlacesFull(1));
    assert!(s.get("b").await.unwrap().is_none());
    assert_eq!(insert("c", holds(2)).await, Inserted::New);
    assert_eq!(insert("d", holds(5)).await, Inserted::New);
    assert_eq!(insert("e", holds(5)).await, Inserted::PlacesFull(0));
    let freed = Settlement {
        job_id: "a".into(),
        cost_micros: 0,
    };
    s.settle(&[freed.clone(), freed]).await.unwrap();
    assert_eq!(insert("e", holds(5)).await, Inserted::New);
    assert_eq!(insert("f", holds(5)).await, Inserted::PlacesFull(0));
    // A budget with room for one job's reservation and not two.
    let budget = |id: &str| Holds {
        places: Vec::new(),
        reservation: Some(Reservation {
            tenant: job(id).tenant,
            period_start_ms: 0,
            micros: 600,
            limit_micros: 1_000,
        }),
    };
    assert_eq!(insert("g", budget("g")).await, Inserted::New);
    assert_eq!(insert("h", budget("h")).await, Inserted::OverBudget(400));
    assert!(s.get("h").await.unwrap().is_none());
    // Another tenant's id is refused whatever it would hold.
    let other = Job {
        tenant: "other".into(),
        ..job("g")
    };
    assert_eq!(add(&s, &other, Source::Http).await, Inserted::OtherTenant);
}

#[tokio::test]
async fn a_started_event_projected_after_the_result_still_sends_its_webhook() {
    let (s, _dir) = store().await;
    let hooked = Job {
        webhook: Some(switchyard_schemas::WebhookTarget {
            url: "https://hooks.example.com/x".into(),
            events: vec![
                switchyard_schemas::WebhookEvent::Started,
                switchyard_schemas::WebhookEvent::Completed,
            ],
        }),
        ..job("a")
    };
    add(&s, &hooked, Source::Http).await;
    s.mark_enqueued("a", 1).await.unwrap();
    let done = result(
        "a",
        Outcome::Succeeded {
            output: serde_json::json!({}),
            usage: Usage::default(),
        },
    );
    // The streams are projected independently: the result first.
    s.apply_results(&[done]).await.unwrap();
    s.apply_events(&[event("a", 20, EventKind::Running { node: "n1".into() })])
        .await
        .unwrap();
    let mut events: Vec<String> = s
        .claim_deliveries(i64::MAX / 2, i64::MAX / 2 + 1, 10, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.event)
        .collect();
    events.sort();
    assert_eq!(events, ["completed", "started"]);
}
