//! The webhook deliveries the projections of events and results call for.

use super::*;

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
    s.mark_enqueued(&["a".into()], 1).await.unwrap();
    let done = result(
        "a",
        Outcome::Succeeded {
            output: serde_json::json!({}),
            usage: Usage::default(),
        },
    );
    // The streams are projected independently: the result first.
    s.apply_results(&[done], &[], &|_| false).await.unwrap();
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

#[tokio::test]
async fn a_result_that_says_its_job_started_sends_the_started_webhook_alone() {
    let (s, _dir) = store().await;
    let hooked = |id: &str| Job {
        webhook: Some(switchyard_schemas::WebhookTarget {
            url: "https://hooks.example.com/x".into(),
            events: vec![
                switchyard_schemas::WebhookEvent::Started,
                switchyard_schemas::WebhookEvent::Failed,
            ],
        }),
        ..job(id)
    };
    add(&s, &hooked("ran"), Source::Http).await;
    add(&s, &hooked("never"), Source::Http).await;
    add(&s, &job("plain"), Source::Http).await;
    s.mark_enqueued(&["ran".into(), "never".into(), "plain".into()], 1)
        .await
        .unwrap();
    let failed = |id: &str, started_at_ms| JobResult {
        started_at_ms,
        ..result(
            id,
            Outcome::Failed {
                error: JobError::new(ErrorClass::InvalidInput, "no"),
            },
        )
    };
    // No `running` event: the engine answered at once, or never started.
    s.apply_results(
        &[
            failed("ran", Some(20)),
            failed("never", None),
            failed("plain", Some(20)),
        ],
        &[],
        &|_| false,
    )
    .await
    .unwrap();
    let mut events: Vec<(String, String)> = s
        .claim_deliveries(i64::MAX / 2, i64::MAX / 2 + 1, 10, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|d| (d.job_id, d.event))
        .collect();
    events.sort();
    assert_eq!(
        events,
        [
            ("never".to_owned(), "failed".to_owned()),
            ("ran".to_owned(), "failed".to_owned()),
            ("ran".to_owned(), "started".to_owned()),
        ]
    );
}
