//! The NATS doors. `sy.submit.<priority>` is durable: the client's PubAck means
//! the submission is kept even with no broker running, and the broker admits
//! it later. `sy.admit.<priority>` is request/reply: the client learns in one
//! round-trip whether the job was queued.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::stream::Stream;
use async_nats::jetstream::{self, AckKind};
use futures::StreamExt;
use switchyard_schemas::{
    AdmitReply, CodecError, DEFAULT_TENANT, Encoding, ErrorBody, ErrorClass, JobError, JobResult,
    Priority, Submission, Timeline, decode_submission, encode_as, now_ms, subjects,
};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info_span, warn};

use crate::admission::{Admitter, NewId, Rejection, SubmitError};
use crate::error::{Coded, ErrorCode, client_body};
use crate::metrics as m;
use switchyard_runtime::attempts::{self, StoredResult, Voucher};
use switchyard_store::{RejectedJob, Source};

const MSG_ID: &str = "Nats-Msg-Id";
const CONTENT_TYPE: &str = "Content-Type";

/// What a NATS submission carries besides its body.
struct Envelope<'a> {
    subject: &'a str,
    headers: Option<&'a HeaderMap>,
}

impl Envelope<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        // A name given as &str is a "custom" header and never equals the
        // parsed standard one (Nats-Msg-Id is standard): parse it first.
        let name: async_nats::header::HeaderName = name.parse().ok()?;
        self.headers?.get(name).map(|v| v.as_str())
    }
}

/// Decoded and addressed, or refused with as much as is known of it.
struct Decoded {
    submission: Submission,
    priority: Priority,
    id: NewId,
    encoding: Encoding,
}

struct Refused {
    id: Option<String>,
    /// The subject's tenant, when it names one.
    tenant: Option<String>,
    model: String,
    priority: Priority,
    encoding: Encoding,
    rejection: Rejection,
}

/// Reads a submission; `fallback_id` names it when neither the message id
/// header nor the body does.
fn read(
    env: &Envelope<'_>,
    body: &[u8],
    fallback_id: impl FnOnce() -> NewId,
) -> Result<Decoded, Box<Refused>> {
    let header_id = env.header(MSG_ID).map(str::to_owned);
    let encoding = Encoding::detect(body, env.header(CONTENT_TYPE));
    let addressed = subjects::intake_of(env.subject);
    let subject_priority = addressed.map(|(p, _)| p);
    let subject_tenant = addressed.and_then(|(_, t)| t);
    let refuse = |id: Option<String>, model: String, rejection| {
        Box::new(Refused {
            id,
            tenant: subject_tenant.map(str::to_owned),
            model,
            priority: subject_priority.unwrap_or_default(),
            encoding,
            rejection,
        })
    };
    let (mut submission, encoding) =
        decode_submission(body, env.header(CONTENT_TYPE)).map_err(|e| {
            let message = match e {
                CodecError::UnsupportedVersion { .. } => e.to_string(),
                other => format!("submission could not be decoded: {other}"),
            };
            refuse(
                header_id.clone(),
                String::new(),
                Rejection::MalformedBody(message),
            )
        })?;
    let id = match (header_id, submission.id.clone()) {
        (Some(h), Some(b)) if h != b => {
            return Err(refuse(
                Some(h.clone()),
                submission.model,
                Rejection::InvalidRequest(format!(
                    "the {MSG_ID} header {h:?} and the body id {b:?} differ"
                )),
            ));
        }
        (Some(id), _) | (None, Some(id)) => NewId::given(id),
        (None, None) => fallback_id(),
    };
    let Some(priority) = subject_priority else {
        return Err(refuse(
            Some(id.into_string()),
            submission.model,
            Rejection::InvalidRequest(format!(
                "subject {} names no priority; use critical, high, normal or batch",
                env.subject
            )),
        ));
    };
    if let Some(p) = submission.priority.filter(|p| *p != priority) {
        return Err(refuse(
            Some(id.into_string()),
            submission.model,
            Rejection::InvalidRequest(format!(
                "priority {p} in the body differs from {priority} in the subject"
            )),
        ));
    }
    // A tenant's account can publish only to its own subjects, so the
    // subject's tenant is the submission's.
    if let Some(tenant) = subject_tenant {
        if submission.tenant.as_deref().is_some_and(|t| t != tenant) {
            return Err(refuse(
                Some(id.into_string()),
                submission.model,
                Rejection::InvalidRequest(format!(
                    "the body names another tenant than {tenant}, the subject's"
                )),
            ));
        }
        submission.tenant = Some(tenant.to_owned());
    }
    Ok(Decoded {
        submission,
        priority,
        id,
        encoding,
    })
}

/// A job id for a durable submission that named none, derived from the
/// message's place in the stream so that a redelivery gets the same id.
fn id_from_stream(published: time::OffsetDateTime, sequence: u64) -> String {
    let ms = u64::try_from(published.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
    let mut tail = [0u8; 10];
    tail[2..].copy_from_slice(&sequence.to_be_bytes());
    uuid::Builder::from_unix_timestamp_millis(ms, &tail)
        .into_uuid()
        .to_string()
}

/// Follows the durable intake stream until `shutdown`.
pub async fn follow_submissions(
    admitter: Admitter,
    consumer: PullConsumer,
    concurrency: usize,
    shutdown: CancellationToken,
) {
    let messages = match consumer.messages().await {
        Ok(m) => m,
        Err(e) => {
            warn!(error = %e, "cannot follow the submission stream");
            return;
        }
    };
    let handled = messages
        .take_until(shutdown.cancelled_owned())
        .for_each_concurrent(concurrency, |msg| {
            let admitter = admitter.clone();
            async move {
                match msg {
                    Ok(msg) => admit_durable(&admitter, msg).await,
                    Err(e) => warn!(error = %e, "submission stream read failed"),
                }
            }
        });
    handled.await;
}

/// Deliveries a durable submission gets while admission fails for a
/// passing cause (the store or the queue out of reach, a full queue);
/// then it ends failed with that cause, so that no message is redelivered
/// for ever and holds a place of the shared intake.
const MAX_DELIVERIES: i64 = 8;
/// The longest wait before a submission is delivered again.
const LONGEST_BACKOFF: Duration = Duration::from_secs(30);

/// What became of a durable submission.
enum Handled {
    /// Admitted, or ended failed where its client looks: acknowledged.
    Done,
    /// To be delivered again later.
    Again(String),
}

async fn admit_durable(admitter: &Admitter, msg: jetstream::Message) {
    let env = Envelope {
        subject: msg.subject.as_str(),
        headers: msg.headers.as_ref(),
    };
    let info = msg
        .info()
        .ok()
        .map(|i| (i.published, i.stream_sequence, i.delivered));
    let delivered = info.map_or(1, |(_, _, n)| n);
    let fallback = || match info {
        Some((published, seq, _)) => NewId::given(id_from_stream(published, seq)),
        None => NewId::draw(),
    };
    let handled = match read(&env, &msg.payload, fallback) {
        Ok(d) => {
            let span = info_span!("intake", job_id = %d.id.as_str(), model = %d.submission.model);
            let model = d.submission.model.clone();
            let tenant = d.submission.tenant.clone();
            let refuse = |e: &SubmitError| Refusal {
                id: d.id.as_str().to_owned(),
                tenant: tenant.clone(),
                model: model.clone(),
                priority: d.priority,
                ending: Ending::of(e),
            };
            match admitter
                .submit(d.submission, d.priority, d.id.clone(), Source::Nats, None)
                .instrument(span)
                .await
            {
                Ok(_) => Handled::Done,
                // Refused for what it is, for its tenant's limits, or for
                // an id another tenant's job holds: a redelivery would be
                // refused again, and would hold a place of the intake every
                // other tenant shares.
                Err(
                    e @ (SubmitError::Rejected(_)
                    | SubmitError::RateLimited { .. }
                    | SubmitError::IdTaken(_)),
                ) => record_refusal(admitter, refuse(&e)).await,
                Err(e) if delivered < MAX_DELIVERIES => Handled::Again(e.to_string()),
                Err(e) => record_refusal(admitter, refuse(&e)).await,
            }
        }
        Err(refused) => match refused.id {
            Some(id) => {
                let refusal = Refusal {
                    id,
                    tenant: refused.tenant,
                    model: refused.model,
                    priority: refused.priority,
                    ending: Ending::of(&SubmitError::Rejected(refused.rejection)),
                };
                record_refusal(admitter, refusal).await
            }
            None => {
                // Nothing names it, so there is nowhere to report to: log it and
                // drop it so it cannot block the stream.
                warn!(subject = %msg.subject, error = %refused.rejection, "anonymous undecodable submission dropped");
                metrics::counter!(m::REJECTIONS, "source" => "nats", "code" => refused.rejection.code().as_str()).increment(1);
                Handled::Done
            }
        },
    };
    let ack = match handled {
        Handled::Done => msg.ack().await,
        Handled::Again(reason) => {
            warn!(error = %reason, delivered, "submission not admitted now; it stays in the stream");
            msg.ack_with(AckKind::Nak(Some(backoff(delivered)))).await
        }
    };
    if let Err(e) = ack {
        warn!(error = %e, "intake ack failed; the submission will be redelivered");
    }
}
/// How long a submission waits before its `delivered`+1-th delivery: 1 s,
/// doubling, at most [`LONGEST_BACKOFF`].
fn backoff(delivered: i64) -> Duration {
    let doublings = u32::try_from(delivered.clamp(1, 16) - 1).unwrap_or(0);
    Duration::from_secs(1 << doublings).min(LONGEST_BACKOFF)
}

/// How a durable submission that will not run ends: its code, its class,
/// and a message that quotes none of its values.
struct Ending {
    code: ErrorCode,
    class: ErrorClass,
    message: String,
}

impl Ending {
    fn of(e: &SubmitError) -> Ending {
        let class = match e {
            SubmitError::Rejected(Rejection::UnknownModel(_)) => ErrorClass::UnknownModel,
            SubmitError::Rejected(_) => ErrorClass::InvalidInput,
            SubmitError::RateLimited { .. } | SubmitError::QueueFull { .. } => {
                ErrorClass::Overloaded
            }
            _ => ErrorClass::Internal,
        };
        Ending {
            code: e.code(),
            class,
            message: e.to_string(),
        }
    }
}

/// A durable submission that will not run.
struct Refusal {
    id: String,
    /// The subject's or the body's tenant.
    tenant: Option<String>,
    model: String,
    priority: Priority,
    ending: Ending,
}

/// What a store keeps of a client's text: no control characters (a NUL
/// is refused by PostgreSQL, and a message that can never be recorded
/// would be delivered for ever), at most 256 characters.
fn storable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .take(256)
        .collect()
}

/// Keeps a refused durable submission where its client looks: a failed job
/// record and a failed result on `sy.results.<id>`. Delivered again later
/// when the store or NATS cannot take it now.
async fn record_refusal(admitter: &Admitter, refusal: Refusal) -> Handled {
    let Refusal {
        id,
        tenant,
        model,
        priority,
        ending,
    } = refusal;
    if !subjects::is_valid_id(&id) {
        warn!(error = %ending.message, "refused submission with an unusable id dropped");
        return Handled::Done;
    }
    let tenant = tenant.unwrap_or_else(|| DEFAULT_TENANT.to_owned());
    let rejected = RejectedJob {
        id: id.clone(),
        tenant: tenant.clone(),
        model: storable(&model),
        priority,
        source: Source::Nats,
        code: ending.code.as_str().into(),
        message: storable(&ending.message),
        at_ms: now_ms(),
    };
    let holder = match admitter.store().insert_rejected(&rejected).await {
        Ok(holder) => holder,
        Err(e) => return Handled::Again(e.to_string()),
    };
    if holder != tenant {
        // The store kept the refusal for this tenant alone; the other
        // tenant's job and its result are left as they are.
        warn!(job_id = %id, "refused submission: its id names another tenant's job");
        return Handled::Done;
    }
    let mut result = JobResult {
        finished_at_ms: rejected.at_ms,
        ..JobResult::failed(
            &id,
            0,
            Timeline::default(),
            JobError::new(ending.class, rejected.message),
        )
    };
    Voucher::Platform(admitter.grants()).vouch(&mut result);
    // A job has one result: an id that already has one keeps it.
    match attempts::publish_result(admitter.js(), &result).await {
        Ok(_) => Handled::Done,
        Err(e) => Handled::Again(e.to_string()),
    }
}

/// Serves `sy.admit.<priority>` requests until `shutdown`.
pub async fn serve_requests(
    admitter: Admitter,
    mut requests: async_nats::Subscriber,
    concurrency: usize,
    shutdown: CancellationToken,
) {
    let client = admitter.js().client();
    let served = (&mut requests)
        .take_until(shutdown.cancelled_owned())
        .for_each_concurrent(concurrency, |req| {
            let admitter = admitter.clone();
            let client = client.clone();
            async move {
                let Some(reply_to) = req.reply.clone() else {
                    warn!(subject = %req.subject, "admit request without a reply subject ignored");
                    return;
                };
                let env = Envelope {
                    subject: req.subject.as_str(),
                    headers: req.headers.as_ref(),
                };
                let key = match subjects::intake_of(env.subject) {
                    Some((_, None)) => env
                        .header(subjects::API_KEY_HEADER)
                        .map(|id| admitter.key_limits(id)),
                    _ => None,
                };
                // A request that carries a trace (a workflow's step) has
                // its job traced as that trace's child.
                let span = info_span!("job.request");
                switchyard_runtime::trace::adopt(&span, req.headers.as_ref());
                let (reply, encoding) = match read(&env, &req.payload, NewId::draw) {
                    Ok(d) => {
                        let encoding = d.encoding;
                        let submit = admitter.submit(
                            d.submission,
                            d.priority,
                            d.id,
                            Source::NatsRequest,
                            key.as_ref(),
                        );
                        let reply = match submit.instrument(span).await {
                            Ok(job) => AdmitReply::Accepted {
                                id: job.id,
                                status: "queued".into(),
                            },
                            Err(e) => AdmitReply::Rejected {
                                error: client_body(&e),
                            },
                        };
                        (reply, encoding)
                    }
                    Err(refused) => (
                        AdmitReply::Rejected {
                            error: client_body(&SubmitError::Rejected(refused.rejection)),
                        },
                        refused.encoding,
                    ),
                };
                match encode_as(&reply, encoding) {
                    Ok(bytes) => {
                        if let Err(e) = client.publish(reply_to, bytes.into()).await {
                            warn!(error = %e, "admit reply not sent");
                        }
                    }
                    Err(e) => warn!(error = %e, "admit reply not encoded"),
                }
            }
        });
    served.await;
    let _ = requests.unsubscribe().await;
}

/// Why a result request has no result: the code in its `Switchyard-Error`
/// header.
const RESULT_ERROR: &str = "Switchyard-Error";

/// Serves `sy.result.<tenant>.<job id>` until `shutdown`: the job's result
/// as stored on `sy.results.<id>`, to its own tenant only (a tenant's NATS
/// account can ask only under its own name). Otherwise a JSON error body
/// with its code in the `Switchyard-Error` header: `not_found` (no job of
/// that tenant), `not_finished`, `result_expired`, `store_unavailable`.
pub async fn serve_results(
    admitter: Admitter,
    results: Stream,
    mut requests: async_nats::Subscriber,
    concurrency: usize,
    shutdown: CancellationToken,
) {
    let client = admitter.js().client();
    let served = (&mut requests)
        .take_until(shutdown.cancelled_owned())
        .for_each_concurrent(concurrency, |req| {
            let (admitter, results, client) = (&admitter, &results, &client);
            async move {
                let Some(reply_to) = req.reply.clone() else {
                    return;
                };
                let sent = match stored_result(admitter, results, req.subject.as_str()).await {
                    Ok(payload) => client.publish(reply_to, payload).await,
                    Err(code) => {
                        let code = code.as_str();
                        let mut headers = HeaderMap::new();
                        headers.insert(RESULT_ERROR, code);
                        let body = ErrorBody {
                            code: code.into(),
                            message: format!("no result to give: {code}"),
                        };
                        let json = serde_json::to_vec(&body).unwrap_or_default();
                        client
                            .publish_with_headers(reply_to, headers, json.into())
                            .await
                    }
                };
                if let Err(e) = sent {
                    warn!(error = %e, "result reply not sent");
                }
            }
        });
    served.await;
    let _ = requests.unsubscribe().await;
}

async fn stored_result(
    admitter: &Admitter,
    results: &Stream,
    subject: &str,
) -> Result<bytes::Bytes, ErrorCode> {
    let (tenant, id) = subjects::result_request_of(subject).ok_or(ErrorCode::NotFound)?;
    let store = admitter.store();
    let unavailable = |_| ErrorCode::StoreUnavailable;
    let Some(record) = store
        .get(id)
        .await
        .map_err(unavailable)?
        .filter(|r| r.tenant == tenant)
    else {
        let refused = store.id_refusal(tenant, id).await.map_err(unavailable)?;
        return Err(match refused {
            Some(_) => ErrorCode::IdTaken,
            None => ErrorCode::NotFound,
        });
    };
    if !record.status.is_final() {
        return Err(ErrorCode::NotFinished);
    }
    match attempts::read_result(results, admitter.grants(), id).await {
        StoredResult::Vouched(_, payload) => Ok(payload),
        StoredResult::None => Err(ErrorCode::ResultExpired),
        StoredResult::Forged => Err(ErrorCode::NotFinished),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_derived_ids_are_stable_and_distinct() {
        let t = time::OffsetDateTime::from_unix_timestamp(1_760_000_000).unwrap();
        assert_eq!(id_from_stream(t, 7), id_from_stream(t, 7));
        assert_ne!(id_from_stream(t, 7), id_from_stream(t, 8));
        assert!(subjects::is_valid_id(&id_from_stream(t, 7)));
    }

    #[test]
    fn ids_come_from_header_or_body_and_must_agree() {
        let mut headers = HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, "h1");
        let env = Envelope {
            subject: "sy.submit.batch",
            headers: Some(&headers),
        };
        let body = br#"{"model":"m","input":{}}"#;
        let d = read(&env, body, || NewId::given("fallback".into()))
            .unwrap_or_else(|_| panic!("valid"));
        assert_eq!(d.id.as_str(), "h1");
        assert_eq!(
            d.priority,
            Priority::Batch,
            "the subject names the priority"
        );
        assert_eq!(d.encoding, Encoding::Json);

        let clash = br#"{"id":"b1","model":"m","input":{}}"#;
        let refused = read(&env, clash, || NewId::given("fallback".into()))
            .err()
            .unwrap();
        assert_eq!(refused.rejection.code(), ErrorCode::InvalidRequest);
        assert_eq!(refused.id.as_deref(), Some("h1"));

        let bare = Envelope {
            subject: "sy.submit.high",
            headers: None,
        };
        let d = read(&bare, body, || NewId::given("fallback".into()))
            .unwrap_or_else(|_| panic!("valid"));
        assert_eq!(d.id.as_str(), "fallback");
        let refused = read(&bare, b"\xc1\xc1", || NewId::given("fallback".into()))
            .err()
            .unwrap();
        assert_eq!(refused.rejection.code(), ErrorCode::MalformedBody);
        assert_eq!(refused.id, None);
    }
}
