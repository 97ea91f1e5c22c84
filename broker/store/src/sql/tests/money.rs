//! The usage ledger, rate limits, queue places and budget reservations.

use super::*;
use crate::runs::{RunEnd, RunRecords};
use sqlx::Row;

#[tokio::test]
async fn usage_is_recorded_once_per_attempt() {
    let (s, _dir) = store().await;
    let u = UsageEvent::fixture("a", "n");
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
async fn a_result_and_the_usage_it_carries_are_recorded_together_once() {
    let (s, _dir) = store().await;
    add(&s, &job("a"), Source::Nats).await;
    let ok = succeeded("a", 3, 4);
    let charge = Charge {
        usage: UsageEvent::fixture("a", "n1"),
        cost_micros: 7,
        cache_hit: false,
    };
    // A batch redelivered after its commit records nothing twice.
    let first = s
        .apply_results(
            std::slice::from_ref(&ok),
            std::slice::from_ref(&charge),
            &|_| false,
        )
        .await
        .unwrap()
        .new_charges;
    let again = s
        .apply_results(&[ok], &[charge], &|_| false)
        .await
        .unwrap()
        .new_charges;
    assert_eq!((first, again), (vec![0], vec![]));
    let lines: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM usage")
        .fetch_one(&s.pool)
        .await
        .unwrap();
    assert_eq!(lines, 1);
    let report = s.usage_report(&Default::default()).await.unwrap();
    assert_eq!(report.charged.len(), 1, "{report:?}");
    assert_eq!(report.charged[0].completion_tokens, 4);
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
            run: None,
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
async fn a_run_s_jobs_draw_on_its_reservation_and_its_end_gives_the_rest_back() {
    let (s, _dir) = store().await;
    let reservation = |micros, run: Option<&str>| Reservation {
        tenant: job("x").tenant,
        period_start_ms: 0,
        micros,
        limit_micros: 2_000,
        run: run.map(str::to_owned),
    };
    let budget = || async {
        let row = sqlx::query("SELECT reserved_micros, spent_micros FROM budgets")
            .fetch_one(&s.pool)
            .await
            .unwrap();
        let reserved: i64 = row.try_get("reserved_micros").unwrap();
        let spent: i64 = row.try_get("spent_micros").unwrap();
        (reserved, spent)
    };
    let insert = |id: &'static str, r: Reservation| {
        let s = &s;
        let holds = Holds {
            places: Vec::new(),
            reservation: Some(r),
        };
        async move {
            s.insert(&job(id), Source::Nats, ESTIMATE, &holds)
                .await
                .unwrap()
        }
    };
    let run = reservation(1_500, Some("r1"));
    assert_eq!(s.reserve_run(&run).await.unwrap(), None);
    // The same run again (its start repeated) holds it once.
    assert_eq!(s.reserve_run(&run).await.unwrap(), None);
    assert_eq!(budget().await, (1_500, 0));
    // A second run has no room left beside the first.
    let other = reservation(1_000, Some("r2"));
    assert_eq!(s.reserve_run(&other).await.unwrap(), Some(500));

    // Its jobs draw on the run's, not on what is left of the budget.
    assert_eq!(
        insert("a", reservation(1_000, Some("r1"))).await,
        Inserted::New
    );
    assert_eq!(budget().await, (1_500, 0));
    assert_eq!(
        insert("c", reservation(400, Some("r1"))).await,
        Inserted::New
    );
    // One the run's has no room left for reserves from the budget, as any
    // job does.
    assert_eq!(
        insert("e", reservation(200, Some("r1"))).await,
        Inserted::New
    );
    assert_eq!(budget().await, (1_700, 0));
    assert_eq!(
        insert("b", reservation(400, Some("r1"))).await,
        Inserted::OverBudget(300)
    );
    s.settle(&[Settlement {
        job_id: "a".into(),
        cost_micros: 300,
    }])
    .await
    .unwrap();
    assert_eq!(budget().await, (700, 300));

    // Its end gives back what no job drew; a job of a run that holds
    // nothing reserves from the budget as any job.
    s.apply_runs(
        &[],
        &[RunEnd {
            id: "r1".into(),
            status: "failed".into(),
            at_ms: 1,
            error: None,
        }],
    )
    .await
    .unwrap();
    assert_eq!(budget().await, (600, 300));
    assert_eq!(
        insert("d", reservation(1_000, Some("r1"))).await,
        Inserted::New
    );
    assert_eq!(budget().await, (1_600, 300));
}

#[tokio::test]
async fn a_batch_of_many_jobs_gives_each_record_its_own_events_result_and_charge() {
    let (s, _dir) = store().await;
    let ids: Vec<String> = (0..7).map(|i| format!("j{i}")).collect();
    for id in &ids {
        add(&s, &job(id), Source::Nats).await;
    }
    let node = |i: usize| format!("n{i}");
    let mut events: Vec<JobEvent> = (0..7)
        .map(|i| {
            event(
                &ids[i],
                100 + i as i64,
                EventKind::Assigned { node: node(i) },
            )
        })
        .collect();
    // Two events of one job in the batch, in their order.
    events.push(event(&ids[1], 150, EventKind::Running { node: node(1) }));
    s.apply_events(&events).await.unwrap();

    let results: Vec<JobResult> = [2usize, 4, 6]
        .iter()
        .map(|&i| JobResult {
            node: Some(node(i)),
            ..succeeded(&ids[i], i as u32, 10 * i as u32)
        })
        .collect();
    let charges: Vec<Charge> = [2usize, 4, 6, 4]
        .iter()
        .map(|&i| Charge {
            usage: UsageEvent::fixture(&ids[i], &node(i)),
            cost_micros: i as i64,
            cache_hit: false,
        })
        .collect();
    // The repeated charge (the fourth) is written once: not new.
    let new = s
        .apply_results(&results, &charges, &|_| false)
        .await
        .unwrap()
        .new_charges;
    assert_eq!(new, vec![0, 1, 2]);

    for (i, id) in ids.iter().enumerate() {
        let r = s.get(id).await.unwrap().unwrap();
        assert_eq!(r.node, Some(node(i)), "{id}");
        assert_eq!(r.assigned_at_ms, Some(100 + i as i64), "{id}");
        let want = match i {
            1 => Status::Running,
            2 | 4 | 6 => Status::Succeeded,
            _ => Status::Assigned,
        };
        assert_eq!(r.status, want, "{id}");
        let tokens = matches!(i, 2 | 4 | 6).then_some((i as u32, 10 * i as u32));
        assert_eq!(
            r.usage.map(|u| (u.prompt_tokens, u.completion_tokens)),
            tokens,
            "{id}"
        );
    }
    assert_eq!(
        s.get(&ids[1]).await.unwrap().unwrap().started_at_ms,
        Some(150)
    );
    let costs: Vec<(String, i64)> =
        sqlx::query("SELECT job_id, cost_micros FROM usage ORDER BY job_id")
            .fetch_all(&s.pool)
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get("job_id"), r.get("cost_micros")))
            .collect();
    assert_eq!(
        costs,
        vec![
            ("j2".to_owned(), 2),
            ("j4".to_owned(), 4),
            ("j6".to_owned(), 6)
        ]
    );
}
