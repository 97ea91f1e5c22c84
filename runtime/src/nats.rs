//! The NATS connection and the streams every component relies on.

use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{self, DiscardPolicy, RetentionPolicy, StorageType};
use async_nats::jetstream::{self, Context};
use switchyard_schemas::subjects;

use crate::NatsConfig;

#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error("the NATS URL {url} is not valid: {reason}")]
    Url { url: String, reason: String },
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        url: String,
        source: async_nats::ConnectError,
    },
    #[error("cannot create or update stream {stream}: {source}")]
    Stream {
        stream: String,
        source: jetstream::context::CreateStreamError,
    },
    #[error("cannot create consumer {durable} on {stream}: {source}")]
    Consumer {
        stream: &'static str,
        durable: String,
        source: jetstream::stream::ConsumerError,
    },
    #[error("cannot create or update the cancellation bucket: {0}")]
    Bucket(String),
    #[error("cannot open stream {stream}: {source}")]
    GetStream {
        stream: &'static str,
        source: jetstream::context::GetStreamError,
    },
}

/// Connects with a name that shows in the server's monitoring, retrying the
/// first connection so that components may start before the server.
pub async fn connect(
    cfg: &NatsConfig,
    name: &str,
) -> Result<(async_nats::Client, Context), NatsError> {
    let mut options = async_nats::ConnectOptions::new();
    // A user in the URL (`nats://user:password@host`) is one of the NATS
    // accounts' (deploy/nats/accounts.conf); the client takes it apart.
    // A cluster is a comma-separated list of its servers' URLs.
    let servers = cfg
        .url
        .split(',')
        .map(|u| u.trim().parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| NatsError::Url {
            url: redacted(&cfg.url),
            reason: e.to_string(),
        })?;
    if let Some((user, password)) = servers
        .first()
        .and_then(|a| Some((a.username()?, a.password()?)))
    {
        options = options.user_and_password(user.to_owned(), password.to_owned());
    }
    let client = options
        .name(name)
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(5))
        .request_timeout(Some(cfg.request_timeout))
        .connect(servers)
        .await
        .map_err(|source| NatsError::Connect {
            url: redacted(&cfg.url),
            source,
        })?;
    let js = jetstream::ContextBuilder::new()
        .timeout(cfg.request_timeout)
        .build(client.clone());
    Ok((client, js))
}

/// The URL without the password it may hold, for logs and errors.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://…{}", &url[..scheme], &url[at..]),
        _ => url.to_owned(),
    }
}

/// The most lanes the job queues may hold: consumers on `JOBS`, one per
/// tenant, model and priority that queued a job within the last hour.
const JOBS_MAX_LANES: i32 = 100_000;

/// The intake's de-duplication window on the server: the least it takes.
const SUBMIT_DUPLICATE_WINDOW: Duration = Duration::from_millis(100);

/// The stream layout, derived from config alone so that every process computes
/// the same one.
pub fn stream_configs(cfg: &NatsConfig) -> Vec<stream::Config> {
    let base = |name: &str, subject: &str, retention| stream::Config {
        name: name.to_owned(),
        subjects: vec![subject.to_owned()],
        retention,
        storage: StorageType::File,
        num_replicas: cfg.replicas,
        duplicate_window: cfg.duplicate_window,
        ..Default::default()
    };
    // A queue at its bound refuses new messages rather than dropping old ones.
    let bounded = |name: &str, subject: &str| stream::Config {
        max_messages_per_subject: cfg.max_queued_per_queue,
        discard: DiscardPolicy::New,
        discard_new_per_subject: true,
        ..base(name, subject, RetentionPolicy::WorkQueue)
    };
    vec![
        stream::Config {
            // Tenants share this stream, so the server's de-duplication by
            // `Nats-Msg-Id` would drop one tenant's submission for another's
            // and tell it so. The broker de-duplicates by tenant and id when
            // it records the job; the server's window is the least it takes
            // (zero means its default of two minutes).
            duplicate_window: SUBMIT_DUPLICATE_WINDOW,
            ..bounded(subjects::SUBMIT_STREAM, subjects::SUBMIT_ALL)
        },
        stream::Config {
            // A lane (a consumer) per tenant, model and priority with jobs
            // queued in the last hour: far more than the server's default
            // of 1,000 consumers a stream, past which the other tenants'
            // jobs would never be placed.
            max_consumers: JOBS_MAX_LANES,
            // The dispatchers' doorbell, told by the stream once it has
            // stored a job: a plain subscriber to the queues hears of it as
            // the server receives it, and a pull sent then can find the lane
            // empty.
            republish: Some(stream::Republish {
                source: subjects::JOBS_ALL.to_owned(),
                destination: subjects::QUEUED_FROM_JOBS.to_owned(),
                headers_only: true,
            }),
            ..bounded(subjects::JOBS_STREAM, subjects::JOBS_ALL)
        },
        base(
            subjects::WORK_STREAM,
            subjects::WORK_ALL,
            RetentionPolicy::WorkQueue,
        ),
        stream::Config {
            max_age: cfg.event_retention,
            ..base(
                subjects::EVENTS_STREAM,
                subjects::EVENTS_ALL,
                RetentionPolicy::Limits,
            )
        },
        stream::Config {
            max_age: cfg.result_retention,
            // A job's subject holds its one result: clients read it
            // directly, and no later message (a node's forgery among them)
            // takes its place.
            max_messages_per_subject: 1,
            discard: DiscardPolicy::New,
            discard_new_per_subject: true,
            allow_direct: true,
            ..base(
                subjects::RESULTS_STREAM,
                subjects::RESULTS_ALL,
                RetentionPolicy::Limits,
            )
        },
        stream::Config {
            max_age: cfg.usage_retention,
            ..base(
                subjects::BILLING_STREAM,
                subjects::USAGE_ALL,
                RetentionPolicy::Limits,
            )
        },
        stream::Config {
            // Long enough for a client to reconnect and resume; a chunk
            // published again after a lost confirmation is kept once.
            max_age: cfg.token_retention,
            ..base(
                subjects::TOKENS_STREAM,
                subjects::STREAM_ALL,
                RetentionPolicy::Limits,
            )
        },
        stream::Config {
            max_age: cfg.dead_letter_retention,
            max_messages_per_subject: 1,
            allow_direct: true,
            ..base(
                subjects::DEAD_STREAM,
                subjects::DEAD_ALL,
                RetentionPolicy::Limits,
            )
        },
    ]
}

/// Creates the streams and the cancellation and limits buckets, or brings existing ones
/// to the configured settings.
pub async fn ensure_streams(js: &Context, cfg: &NatsConfig) -> Result<(), NatsError> {
    for config in stream_configs(cfg) {
        let stream = config.name.clone();
        js.create_or_update_stream(config)
            .await
            .map_err(|source| NatsError::Stream { stream, source })?;
    }
    cancellations(js, cfg).await?;
    limits(js, cfg).await?;
    Ok(())
}

/// The bucket of limits the brokers hand to the dispatchers; kept until
/// replaced.
pub async fn limits(js: &Context, cfg: &NatsConfig) -> Result<jetstream::kv::Store, NatsError> {
    kv_bucket(js, cfg, subjects::LIMITS_BUCKET, Duration::ZERO).await
}

/// The bucket of the live model registry; kept until replaced.
pub async fn models(js: &Context, cfg: &NatsConfig) -> Result<jetstream::kv::Store, NatsError> {
    kv_bucket(js, cfg, subjects::MODELS_BUCKET, Duration::ZERO).await
}

/// The bucket of cancelled job ids; a key lives as long as results do.
pub async fn cancellations(
    js: &Context,
    cfg: &NatsConfig,
) -> Result<jetstream::kv::Store, NatsError> {
    kv_bucket(js, cfg, subjects::CANCEL_BUCKET, cfg.result_retention).await
}

/// The JetStream KV bucket of cached results; entries live `max_age`.
pub async fn result_cache(
    js: &Context,
    cfg: &NatsConfig,
    max_age: Duration,
) -> Result<jetstream::kv::Store, NatsError> {
    kv_bucket(js, cfg, subjects::CACHE_BUCKET, max_age).await
}

/// Creates or updates a KV bucket keeping one value per key for `max_age`.
async fn kv_bucket(
    js: &Context,
    cfg: &NatsConfig,
    bucket: &str,
    max_age: Duration,
) -> Result<jetstream::kv::Store, NatsError> {
    js.create_or_update_key_value(jetstream::kv::Config {
        bucket: bucket.to_owned(),
        history: 1,
        max_age,
        storage: StorageType::File,
        num_replicas: cfg.replicas,
        ..Default::default()
    })
    .await
    .map_err(|e| NatsError::Bucket(e.to_string()))
}

/// Opens (creating if needed) an object store bucket; objects older than
/// `max_age` (zero: none) are removed by the server, and past `max_bytes`
/// (-1: no bound) it refuses new ones.
pub async fn object_store(
    js: &Context,
    cfg: &NatsConfig,
    bucket: &str,
    max_age: Duration,
    max_bytes: i64,
) -> Result<jetstream::object_store::ObjectStore, NatsError> {
    if let Ok(store) = js.get_object_store(bucket).await {
        return Ok(store);
    }
    js.create_object_store(jetstream::object_store::Config {
        bucket: bucket.to_owned(),
        max_age,
        max_bytes,
        storage: StorageType::File,
        num_replicas: cfg.replicas,
        ..Default::default()
    })
    .await
    .map_err(|e| NatsError::Bucket(e.to_string()))
}

/// Settings of a durable pull consumer with explicit acks.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    pub stream: &'static str,
    pub durable: String,
    pub filter: String,
    pub ack_wait: Duration,
    /// Upper bound on delivered-but-unacknowledged messages: the consumer's
    /// share of in-flight work.
    pub max_ack_pending: i64,
    /// The server removes the consumer after this long without a pull;
    /// zero keeps it for ever.
    pub inactive_threshold: Duration,
    /// The server keeps the consumer's state (what is out for delivery,
    /// what was acknowledged) in memory rather than writing it to disk at
    /// every change. Only for a work-queue stream's consumer whose messages
    /// may be delivered twice: an acknowledged message is gone from the
    /// stream, so a restarted server forgets only what was out for
    /// delivery, and delivers it again.
    pub state_in_memory: bool,
}

/// Opens one of the streams of the layout.
pub async fn stream(
    js: &Context,
    name: &'static str,
) -> Result<jetstream::stream::Stream, NatsError> {
    js.get_stream(name)
        .await
        .map_err(|source| NatsError::GetStream {
            stream: name,
            source,
        })
}

/// Creates the durable consumer or updates it to `spec`.
pub async fn durable_consumer(js: &Context, spec: ConsumerSpec) -> Result<PullConsumer, NatsError> {
    stream(js, spec.stream)
        .await?
        .create_consumer(pull::Config {
            durable_name: Some(spec.durable.clone()),
            filter_subject: spec.filter,
            ack_policy: AckPolicy::Explicit,
            deliver_policy: DeliverPolicy::All,
            ack_wait: spec.ack_wait,
            max_ack_pending: spec.max_ack_pending,
            inactive_threshold: spec.inactive_threshold,
            memory_storage: spec.state_in_memory,
            ..Default::default()
        })
        .await
        .map_err(|source| NatsError::Consumer {
            stream: spec.stream,
            durable: spec.durable,
            source,
        })
}

/// Publishes with a `Nats-Msg-Id`, so that a retry of the same publish is
/// dropped by the server, and the current span's trace context. The
/// returned future resolves on the PubAck.
pub async fn publish(
    js: &Context,
    subject: String,
    msg_id: &str,
    payload: Vec<u8>,
) -> Result<PublishAckFuture, jetstream::context::PublishError> {
    let mut headers = async_nats::HeaderMap::new();
    crate::trace::inject(&mut headers);
    js.send_publish(
        subject,
        PublishMessage::build()
            .headers(headers)
            .payload(payload.into())
            .message_id(msg_id),
    )
    .await
}

/// Publishes the first message of `subject` (with a `Nats-Msg-Id`); the
/// server refuses it if the subject already holds one. `Ok(false)` then.
pub async fn publish_first(
    js: &Context,
    subject: String,
    msg_id: &str,
    payload: Vec<u8>,
) -> Result<bool, jetstream::context::PublishError> {
    let publish = PublishMessage::build()
        .payload(payload.into())
        .message_id(msg_id)
        .expected_last_subject_sequence(0);
    let ack = js.send_publish(subject, publish).await?.await;
    match ack {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether the server refused a publish because the stream is at a limit
/// (with `DiscardPolicy::New`): the queue is full, not broken.
pub fn is_limit_refusal(err: &jetstream::context::PublishError) -> bool {
    std::error::Error::source(err)
        .and_then(|source| source.downcast_ref::<jetstream::Error>())
        .is_some_and(|e| e.error_code() == jetstream::ErrorCode::STREAM_STORE_FAILED)
}

/// The subjects of `stream` matching `filter` that hold messages, with how
/// many each holds, in every page the server splits its answer into.
/// `Stream::info_with_subjects` asks once more past the last page, and its
/// empty answer doubled the cost of every look at the job queues.
pub async fn subject_counts(
    js: &Context,
    stream: &str,
    filter: &str,
) -> Result<Vec<(String, u64)>, stream::InfoError> {
    #[derive(serde::Deserialize)]
    struct Page {
        state: PageState,
        /// Subjects over all pages; absent when one page holds them all.
        #[serde(default)]
        total: usize,
    }
    #[derive(serde::Deserialize)]
    struct PageState {
        #[serde(default)]
        subjects: Option<std::collections::HashMap<String, u64>>,
    }
    let mut counts = Vec::new();
    loop {
        let request = serde_json::json!({"subjects_filter": filter, "offset": counts.len()});
        let page = match js
            .request(format!("STREAM.INFO.{stream}"), &request)
            .await?
        {
            jetstream::response::Response::Ok(page) => page,
            jetstream::response::Response::Err { error } => return Err(error.into()),
        };
        let Page { state, total } = page;
        let subjects = state.subjects.unwrap_or_default();
        let last = subjects.is_empty();
        counts.extend(subjects);
        if last || counts.len() >= total {
            return Ok(counts);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_queues_and_result_history_are_laid_out_as_documented() {
        let configs = stream_configs(&NatsConfig::default());
        let by_name = |n: &str| configs.iter().find(|c| c.name == n).unwrap();
        let jobs = by_name(subjects::JOBS_STREAM);
        assert_eq!(jobs.retention, RetentionPolicy::WorkQueue);
        let told = jobs.republish.as_ref().expect("the doorbell");
        assert!(told.headers_only, "a ring carries no job");
        assert_eq!(
            (told.source.as_str(), told.destination.as_str()),
            (subjects::JOBS_ALL, subjects::QUEUED_FROM_JOBS)
        );
        let results = by_name(subjects::RESULTS_STREAM);
        assert_eq!(results.max_messages_per_subject, 1);
        assert!(results.allow_direct);
        assert!(
            configs.iter().all(|c| c.storage == StorageType::File),
            "every stream is durable on disk"
        );
        assert_eq!(configs.len(), 8);
        // Streamed tokens are kept a short while, for clients that
        // reconnect: not as long as results.
        let tokens = by_name(subjects::TOKENS_STREAM);
        assert_eq!(tokens.retention, RetentionPolicy::Limits);
        assert_eq!(tokens.max_age, Duration::from_secs(15 * 60));
        for queue in [subjects::SUBMIT_STREAM, subjects::JOBS_STREAM] {
            let c = by_name(queue);
            assert_eq!(c.max_messages_per_subject, 100_000, "{queue} is bounded");
            assert_eq!(
                c.discard,
                DiscardPolicy::New,
                "{queue} refuses, never drops"
            );
            assert!(c.discard_new_per_subject);
        }
    }
}
