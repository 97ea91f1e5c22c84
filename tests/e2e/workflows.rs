//! Workflow run histories in a real JetStream: appended only after what
//! was read, so that two engines cannot both write a run's next step, and
//! read back whole by an engine that did not write them.

use std::time::Duration;

use serde_json::json;
use switchyard_schemas::Priority;
use switchyard_workflows::journal::{Journal, JournalError, Read};
use switchyard_workflows::{RunEvent, RunHeader, RunStatus};

use crate::common::*;

fn started(id: &str) -> RunEvent {
    RunEvent::Started {
        run: RunHeader {
            id: id.into(),
            workflow: "w".into(),
            version: 1,
            tenant: "acme".into(),
            priority: Priority::Normal,
            input: json!({"text": "hi"}),
        },
        at_ms: 1,
    }
}

async fn engine(nats: &Nats) -> Journal {
    let js = async_nats::jetstream::new(nats.client().await);
    Journal::open(js, 1, Duration::from_secs(3600))
        .await
        .expect("the WORKFLOWS stream")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_s_history_is_appended_only_after_what_was_read() {
    let nats = Nats::start();
    let a = engine(&nats).await;
    let empty = Read {
        events: Vec::new(),
        last: 0,
    };
    assert_eq!(a.read("run-1").await.unwrap(), empty);

    let first = [
        started("run-1"),
        RunEvent::StepSkipped {
            step: "s".into(),
            at_ms: 2,
        },
    ];
    let last = a.append("run-1", 0, 0, &first).await.unwrap();
    // Sent again after a lost acknowledgement: its events are found there.
    assert_eq!(a.append("run-1", 0, 0, &first).await.unwrap(), last);
    a.append("run-2", 0, 0, &[started("run-2")]).await.unwrap();

    // Two engines read the same history; the first to append wins and the
    // other is told, whatever each believes about owning the run.
    let b = engine(&nats).await;
    let seen_a = a.read("run-1").await.unwrap();
    let seen_b = b.read("run-1").await.unwrap();
    assert_eq!(seen_a, seen_b);
    assert_eq!(seen_a.events, first);
    assert_eq!(seen_a.last, last);
    let a_next = [RunEvent::CancelRequested { at_ms: 3 }];
    a.append("run-1", seen_a.last, 2, &a_next).await.unwrap();
    let b_next = [RunEvent::Finished {
        status: RunStatus::Succeeded,
        output: Some(json!("done")),
        error: None,
        at_ms: 3,
    }];
    let refused = b.append("run-1", seen_b.last, 2, &b_next).await;
    assert!(
        matches!(refused, Err(JournalError::Conflict(ref run)) if run == "run-1"),
        "{refused:?}"
    );
    let now = b.read("run-1").await.unwrap();
    assert_eq!(now.events.len(), 3);
    assert_eq!(now.events[2], a_next[0]);
    assert_eq!(a.read("run-2").await.unwrap().events, [started("run-2")]);
}
