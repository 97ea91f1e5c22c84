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
