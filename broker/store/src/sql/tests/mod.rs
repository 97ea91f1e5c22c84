use super::*;
use crate::ledger::{Charge, Ledger};
use crate::outbox::WebhookOutbox;
use crate::quotas::{Holds, Quotas, Reservation, Settlement, Take, TokenRate, TokenRates};
use crate::{Idempotency, Inserted, JobRecords, Recording, RejectedJob, Source, Status};
use switchyard_schemas::{
    ErrorClass, EventKind, Job, JobError, JobEvent, JobResult, Outcome, Priority, SCHEMA_VERSION,
    UsageEvent,
};

mod cost;
mod early;
mod money;
mod webhooks;

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
        proof: None,
    }
}

fn result(id: &str, outcome: Outcome) -> JobResult {
    JobResult::fixture(id, outcome)
}

/// Job `id`'s succeeded result, with the engine's token counts.
fn succeeded(id: &str, prompt_tokens: u32, completion_tokens: u32) -> JobResult {
    result(
        id,
        Outcome::Succeeded {
            output: serde_json::json!({"x": 1}),
            usage: Usage {
                prompt_tokens,
                completion_tokens,
            },
        },
    )
}

#[tokio::test]
async fn lifecycle_moves_forward_only_and_ignores_repeats() {
    let (s, _dir) = store().await;
    add(&s, &job("a"), Source::Http).await;
    add(&s, &job("a"), Source::Nats).await;
    let ok = succeeded("a", 1, 2);
    // Out of order: the result lands before the events, and alone gives
    // the whole timeline.
    s.apply_results(std::slice::from_ref(&ok), &[], &|_| false)
        .await
        .unwrap();
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
    s.apply_results(&[failed], &[], &|_| false).await.unwrap();

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
async fn results_give_back_the_records_asked_for_as_a_read_would_show_them() {
    let (s, _dir) = store().await;
    for id in ["a", "b", "c"] {
        add(&s, &job(id), Source::Http).await;
    }
    s.mark_enqueued(&["a".into(), "b".into(), "c".into()], 5)
        .await
        .unwrap();
    s.apply_events(&[event("a", 7, EventKind::Assigned { node: "n1".into() })])
        .await
        .unwrap();
    // `c` ended before: its record is not written again, so not given back.
    s.apply_results(&[succeeded("c", 1, 1)], &[], &|_| false)
        .await
        .unwrap();
    let applied = s
        .apply_results(
            &[
                succeeded("a", 3, 4),
                succeeded("b", 3, 4),
                succeeded("c", 9, 9),
            ],
            &[],
            &|id| id != "b",
        )
        .await
        .unwrap();
    let a = s.get("a").await.unwrap().unwrap();
    assert_eq!(applied.records, vec![a.clone()]);
    assert_eq!((a.status, a.enqueued_at_ms), (Status::Succeeded, Some(5)));
    assert_eq!(a.assigned_at_ms, Some(7), "the event's time is kept");
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
    s.apply_results(&[first], &[], &|_| false).await.unwrap();
    let late = JobError::new(ErrorClass::Timeout, "late");
    let second = JobResult {
        attempt: 2,
        ..result("a", Outcome::Failed { error: late })
    };
    s.apply_results(&[second], &[], &|_| false).await.unwrap();
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
    s.mark_enqueued(&["a".into()], 5).await.unwrap();
    assert_eq!(
        add(&s, &job("a"), Source::Nats).await,
        Inserted::Existing { enqueued: true }
    );
}

#[tokio::test]
async fn jobs_recorded_together_each_get_what_insert_would_answer() {
    let (s, _dir) = store().await;
    add(&s, &job("queued"), Source::Nats).await;
    s.mark_enqueued(&["queued".into()], 5).await.unwrap();
    let theirs = Job {
        tenant: "globex".into(),
        ..job("queued")
    };
    let (fresh, repeat, queued) = (job("fresh"), job("fresh"), job("queued"));
    let together = [&fresh, &repeat, &queued, &theirs].map(|job| Recording {
        job,
        source: Source::Nats,
        tokens_estimate: ESTIMATE,
    });
    assert_eq!(
        s.insert_many(&together).await.unwrap(),
        vec![
            Inserted::New,
            Inserted::Existing { enqueued: false },
            Inserted::Existing { enqueued: true },
            Inserted::OtherTenant,
        ]
    );
    let r = s.get("fresh").await.unwrap().unwrap();
    assert_eq!((r.tenant.as_str(), r.enqueued_at_ms), ("t", None));
    assert_eq!(s.get("queued").await.unwrap().unwrap().tenant, "t");

    // One alone is written without a transaction around it: the same answers.
    let alone = job("alone");
    for (job, answer) in [
        (&alone, Inserted::New),
        (&fresh, Inserted::Existing { enqueued: false }),
        (&queued, Inserted::Existing { enqueued: true }),
        (&theirs, Inserted::OtherTenant),
    ] {
        let one = [Recording {
            job,
            source: Source::Nats,
            tokens_estimate: ESTIMATE,
        }];
        assert_eq!(
            s.insert_many(&one).await.unwrap(),
            vec![answer],
            "{}",
            job.id
        );
    }
    assert_eq!(s.get("alone").await.unwrap().unwrap().tenant, "t");
    assert_eq!(s.get("queued").await.unwrap().unwrap().tenant, "t");

    // Marked many at once; a mark already there stays.
    add(&s, &job("other"), Source::Http).await;
    s.mark_enqueued(&["fresh".into(), "other".into(), "queued".into()], 9)
        .await
        .unwrap();
    for (id, at) in [("fresh", 9), ("other", 9), ("queued", 5)] {
        let r = s.get(id).await.unwrap().unwrap();
        assert_eq!(r.enqueued_at_ms, Some(at), "{id}");
    }
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
    let later = 1_000 + idempotency::ABANDONED_CLAIM_MS;
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
    s.mark_enqueued(&["b".into()], 5).await.unwrap();
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
async fn a_refusal_for_another_tenant_s_id_is_kept_for_its_tenant_alone() {
    let (s, _dir) = store().await;
    add(&s, &job("shared"), Source::Nats).await;
    let refused = RejectedJob {
        id: "shared".into(),
        tenant: "other".into(),
        model: "m".into(),
        priority: Priority::Normal,
        source: Source::Nats,
        code: "id_taken".into(),
        message: "taken".into(),
        at_ms: 5,
    };
    assert_eq!(s.insert_rejected(&refused).await.unwrap(), "t");
    let record = s.get("shared").await.unwrap().unwrap();
    assert_eq!(
        (record.tenant.as_str(), record.status),
        ("t", Status::Queued),
        "the holder's job is left as it is"
    );
    assert_eq!(
        s.id_refusal("other", "shared").await.unwrap(),
        Some(("id_taken".to_owned(), "taken".to_owned()))
    );
    assert_eq!(s.id_refusal("t", "shared").await.unwrap(), None);
}

#[tokio::test]
async fn on_sqlite_a_writer_waits_for_the_turn_of_the_one_before_it() {
    if std::env::var("SY_TEST_POSTGRES").is_ok() {
        // PostgreSQL locks rows: its writers take no turns.
        return;
    }
    let (s, _dir) = store().await;
    let first = s
        .turn(Writer::Background)
        .await
        .expect("SQLite writers take turns");
    let ids = ["j1".to_owned()];
    let second = s.mark_enqueued(&ids, 1);
    tokio::pin!(second);
    let waited = tokio::time::timeout(std::time::Duration::from_millis(50), &mut second).await;
    assert!(waited.is_err(), "wrote while another writer held the turn");
    drop(first);
    second.await.unwrap();
}

#[tokio::test]
async fn on_sqlite_a_request_writes_ahead_of_background_writers_that_asked_first() {
    if std::env::var("SY_TEST_POSTGRES").is_ok() {
        return;
    }
    let (s, _dir) = store().await;
    let holder = s.turn(Writer::Background).await;
    let (one, two) = (["m1".to_owned()], ["m2".to_owned()]);
    let first = job("admitted");
    let recording = [Recording {
        job: &first,
        source: Source::Http,
        tokens_estimate: ESTIMATE,
    }];
    let order = std::sync::Mutex::new(Vec::new());
    let noted = |name| order.lock().unwrap().push(name);
    let mark_one = async {
        s.mark_enqueued(&one, 1).await.unwrap();
        noted("mark 1");
    };
    let mark_two = async {
        s.mark_enqueued(&two, 1).await.unwrap();
        noted("mark 2");
    };
    let record = async {
        s.insert_many(&recording).await.unwrap();
        noted("record");
    };
    tokio::pin!(mark_one, mark_two, record);
    // In line in this order: a background writer, another, then a
    // request's write.
    let wait = std::time::Duration::from_millis(20);
    assert!(tokio::time::timeout(wait, &mut mark_one).await.is_err());
    assert!(tokio::time::timeout(wait, &mut mark_two).await.is_err());
    assert!(tokio::time::timeout(wait, &mut record).await.is_err());
    drop(holder);
    tokio::join!(mark_one, mark_two, record);
    let done = order.lock().unwrap().clone();
    // The one background writer already asking goes first; the request's
    // write then goes ahead of the background writer behind it.
    assert_eq!(done, ["mark 1", "record", "mark 2"]);
}
