//! What the components ask of nats-server, measured in requests: each is a
//! round trip on the path of a job, and an advisory the server publishes.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use futures::StreamExt;
use switchyard_runtime::nats;

use crate::common::*;

/// The subjects holding messages and their counts come in one request when
/// one page holds them, where the client library's paging asks once more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subject_counts_list_every_subject_with_messages_in_one_request() {
    let server = Nats::start();
    let client = server.client().await;
    let js = jetstream::new(client.clone());
    js.create_stream(stream::Config {
        name: "COUNTED".into(),
        subjects: vec!["counted.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    for subject in ["counted.a", "counted.a", "counted.b", "counted.c.x"] {
        js.publish(subject, "job".into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let mut requests = client
        .subscribe("$JS.API.STREAM.INFO.COUNTED")
        .await
        .unwrap();
    client.flush().await.unwrap();

    let mut counts = nats::subject_counts(&js, "COUNTED", "counted.*")
        .await
        .unwrap();
    counts.sort();
    assert_eq!(counts, [("counted.a".into(), 2), ("counted.b".into(), 1)]);
    let none = nats::subject_counts(&js, "COUNTED", "counted.none.*")
        .await
        .unwrap();
    assert!(none.is_empty());

    client.flush().await.unwrap();
    let mut asked = 0;
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(200), requests.next()).await
    {
        asked += 1;
    }
    assert_eq!(asked, 2, "one request for each of the two looks");
}

/// The dispatchers' doorbell: the job queues tell each job once it is
/// stored, on its queue's `sy.queued` subject and without the job, so a
/// pull sent when it rings finds the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_job_is_told_once_its_queue_has_stored_it() {
    use switchyard_schemas::subjects;

    let server = Nats::start();
    let client = server.client().await;
    let js = jetstream::new(client.clone());
    nats::ensure_streams(&js, &switchyard_runtime::NatsConfig::default())
        .await
        .unwrap();
    let mut doorbell = client.subscribe(subjects::QUEUED_ALL).await.unwrap();
    client.flush().await.unwrap();

    let queue = subjects::jobs(switchyard_schemas::Priority::High, "tiny.chat", "acme");
    js.publish(queue.clone(), vec![7u8; 300].into())
        .await
        .unwrap();
    let ring = tokio::time::timeout(Duration::from_secs(5), doorbell.next())
        .await
        .expect("the doorbell rings")
        .unwrap();
    assert_eq!(
        subjects::queue_of_queued(&ring.subject).as_deref(),
        Some(queue.as_str())
    );
    assert!(ring.payload.is_empty(), "a ring carries no job");
    let sequence: u64 = ring
        .headers
        .as_ref()
        .and_then(|h| h.get(async_nats::header::NATS_SEQUENCE))
        .expect("the stored job's sequence")
        .as_str()
        .parse()
        .unwrap();
    let jobs = js.get_stream(subjects::JOBS_STREAM).await.unwrap();
    let stored = jobs
        .get_raw_message(sequence)
        .await
        .expect("stored when told");
    assert_eq!(stored.subject.as_str(), queue);
}
