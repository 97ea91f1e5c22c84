//! Pulls from the lanes and the nodes' work queues, their answers read on
//! one subscription for the life of the dispatcher.
//!
//! The client library's `fetch` subscribes to an inbox of its own for each
//! pull and drops it after: a SUB and an UNSUB for every pull, a pull for
//! every job at low rates. Each one changes the account's subscriptions,
//! which empties nats-server's cache of them, so the publishes after it are
//! matched afresh. Here every pull is answered under one standing
//! subscription, each on a subject of its own. The messages a pull brings
//! keep their own subjects, so they are told by their consumer, named in
//! their ack subject.
//!
//! One-shot pulls go one at a time. Beside them, one pull may stand on a
//! lane while every queue is empty: the server hands it the lane's next job
//! as soon as it stores it, without the doorbell's ring and a pull after
//! it.

use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::consumer::pull::BatchConfig;
use async_nats::jetstream::{self, AckKind};
use async_nats::{Client, StatusCode, Subscriber};
use futures::{FutureExt, StreamExt};
use tokio::time::Instant;

/// The longest the server may take to answer a one-shot pull. It answers
/// within milliseconds, even "nothing"; a pull that reached no consumer
/// leader (during an election) is never answered, and would hold the loop
/// for ever.
const PULL_ANSWER: Duration = Duration::from_secs(5);

/// How long a standing pull waits for a job before the server ends it.
const STANDING: Duration = Duration::from_secs(5);

/// How often the server tells a standing pull it still waits. A pull the
/// server lost (it restarted) is given up on after two beats missed, so
/// that the sweeps, which leave its lane to it, take the lane back.
const BEAT: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub(crate) enum PullError {
    #[error("cannot send a pull: {0}")]
    Send(String),
    #[error("the server did not answer a pull within {PULL_ANSWER:?}")]
    Unanswered,
    #[error("the server ended a pull: {0}")]
    Ended(String),
    #[error("the pulls' subscription closed")]
    Closed,
}

/// A lane: its queue's prefix (`sy.jobs.<priority>.<model>`) and tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Lane {
    pub(crate) prefix: String,
    pub(crate) tenant: String,
}

impl Lane {
    pub(crate) fn is(&self, prefix: &str, tenant: &str) -> bool {
        self.prefix == prefix && self.tenant == tenant
    }
}

/// Whose messages a pull brings, and where the server says it is over.
struct Asked {
    stream: String,
    consumer: String,
    reply: String,
}

impl Asked {
    fn brings(&self, msg: &jetstream::Message) -> bool {
        msg.info()
            .is_ok_and(|i| i.stream == self.stream && i.consumer == self.consumer)
    }
}

/// A pull of one job standing on `lane`.
struct Standing {
    lane: Lane,
    asked: Asked,
    /// When it is given up on, unless the server beats before.
    until: Instant,
}

/// The dispatcher's pulls, each answered on `<inbox>.<n>`.
pub(crate) struct Pulls {
    js: jetstream::Context,
    inbox: String,
    answers: Subscriber,
    sent: u64,
    standing: Option<Standing>,
    /// The job the standing pull brought, not yet placed.
    brought: Option<(Lane, jetstream::Message)>,
}

impl Pulls {
    pub(crate) async fn new(
        client: &Client,
        js: &jetstream::Context,
    ) -> Result<Pulls, async_nats::SubscribeError> {
        let inbox = client.new_inbox();
        let answers = client.subscribe(format!("{inbox}.*")).await?;
        Ok(Pulls {
            js: js.clone(),
            inbox,
            answers,
            sent: 0,
            standing: None,
            brought: None,
        })
    }

    async fn ask(&mut self, consumer: &PullConsumer, ask: BatchConfig) -> Result<Asked, PullError> {
        self.sent += 1;
        let reply = format!("{}.{}", self.inbox, self.sent);
        consumer
            .request_batch(ask, reply.clone().into())
            .await
            .map_err(|e| PullError::Send(e.to_string()))?;
        let info = consumer.cached_info();
        Ok(Asked {
            stream: info.stream_name.clone(),
            consumer: info.name.clone(),
            reply,
        })
    }

    /// Asks `consumer` for at most `max` messages, those it has now: the
    /// server answers at once, with nothing if it has nothing.
    pub(crate) async fn pull(
        &mut self,
        consumer: &PullConsumer,
        max: usize,
    ) -> Result<Pulled<'_>, PullError> {
        let ask = BatchConfig {
            batch: max,
            no_wait: true,
            ..Default::default()
        };
        let asked = self.ask(consumer, ask).await?;
        Ok(Pulled {
            pulls: self,
            asked,
            left: max,
        })
    }

    /// Leaves a pull of one job standing on `lane`, unless one stands
    /// already (and the server still beats for it) or has brought a job not
    /// yet placed.
    pub(crate) async fn stand(
        &mut self,
        lane: Lane,
        consumer: &PullConsumer,
    ) -> Result<(), PullError> {
        let now = Instant::now();
        if self.standing.as_ref().is_some_and(|s| now < s.until) || self.brought.is_some() {
            return Ok(());
        }
        let ask = BatchConfig {
            batch: 1,
            expires: Some(STANDING),
            idle_heartbeat: BEAT,
            ..Default::default()
        };
        let asked = self.ask(consumer, ask).await?;
        self.standing = Some(Standing {
            lane,
            asked,
            until: now + 2 * BEAT,
        });
        Ok(())
    }

    /// Whether a pull stands on the lane of `tenant` in the queue of
    /// `prefix`: its jobs come by it.
    pub(crate) fn stands_on(&self, prefix: &str, tenant: &str) -> bool {
        self.standing
            .as_ref()
            .is_some_and(|s| s.lane.is(prefix, tenant) && Instant::now() < s.until)
    }

    /// The job the standing pull brought, once it has come.
    pub(crate) fn brought(&mut self) -> Option<(Lane, jetstream::Message)> {
        self.brought.take()
    }

    /// The next answer, when one is waiting.
    pub(crate) fn ready(&mut self) -> Option<async_nats::Message> {
        self.answers.next().now_or_never().flatten()
    }

    /// The next answer. Cancel-safe: for the loop's wait.
    pub(crate) async fn answer(&mut self) -> Option<async_nats::Message> {
        self.answers.next().await
    }

    /// Takes `msg` when it belongs to no one-shot pull: what the standing
    /// pull brings or is told, or what comes for a pull given up on, which
    /// goes back to its queue now rather than after its ack wait.
    pub(crate) async fn sort(&mut self, msg: async_nats::Message) {
        if let Some(msg) = self.for_standing(msg)
            && msg.status.is_none()
        {
            let _ = self.message(msg).ack_with(AckKind::Nak(None)).await;
        }
    }

    /// For a dispatcher that stops: what the standing pull brought, and
    /// has not been placed, goes back to its queue now rather than after its
    /// ack wait.
    pub(crate) async fn give_back(&mut self) {
        // Unsubscribed first: the server drops the pull left standing, and
        // what it sent before comes through.
        if self.answers.drain().await.is_ok() {
            while let Ok(Some(msg)) = tokio::time::timeout(PULL_ANSWER, self.answers.next()).await {
                self.sort(msg).await;
            }
        }
        if let Some((_, msg)) = self.brought.take() {
            let _ = msg.ack_with(AckKind::Nak(None)).await;
        }
    }

    /// Takes `msg` if it is the standing pull's, else gives it back.
    fn for_standing(&mut self, msg: async_nats::Message) -> Option<async_nats::Message> {
        let Some(standing) = self.standing.take() else {
            return Some(msg);
        };
        match msg.status {
            None | Some(StatusCode::OK) => {
                let msg = self.message(msg);
                if standing.asked.brings(&msg) {
                    // A pull of one: over once it brings it.
                    self.brought = Some((standing.lane, msg));
                    return None;
                }
                self.standing = Some(standing);
                Some(msg.message)
            }
            Some(StatusCode::IDLE_HEARTBEAT) if msg.subject.as_str() == standing.asked.reply => {
                self.standing = Some(Standing {
                    until: Instant::now() + 2 * BEAT,
                    ..standing
                });
                None
            }
            // Ended by the server: expired, or its lane closed.
            Some(_) if msg.subject.as_str() == standing.asked.reply => None,
            Some(_) => {
                if Instant::now() < standing.until {
                    self.standing = Some(standing);
                }
                Some(msg)
            }
        }
    }

    fn message(&self, message: async_nats::Message) -> jetstream::Message {
        jetstream::Message {
            message,
            context: self.js.clone(),
        }
    }
}

/// One one-shot pull's answer, read message by message.
pub(crate) struct Pulled<'a> {
    pulls: &'a mut Pulls,
    asked: Asked,
    /// Messages the pull may still bring.
    left: usize,
}

impl Pulled<'_> {
    /// The pull's next message; `None` once it has brought all it will.
    pub(crate) async fn next(&mut self) -> Option<Result<jetstream::Message, PullError>> {
        let until = Instant::now() + PULL_ANSWER;
        while self.left > 0 {
            let msg = match tokio::time::timeout_at(until, self.pulls.answers.next()).await {
                Ok(Some(msg)) => msg,
                Ok(None) => return self.end(PullError::Closed),
                Err(_) => return self.end(PullError::Unanswered),
            };
            let Some(msg) = self.pulls.for_standing(msg) else {
                continue;
            };
            match msg.status {
                None | Some(StatusCode::OK) => {
                    let msg = self.pulls.message(msg);
                    if !self.asked.brings(&msg) {
                        // Brought by a pull given up on.
                        let _ = msg.ack_with(AckKind::Nak(None)).await;
                        continue;
                    }
                    self.left -= 1;
                    return Some(Ok(msg));
                }
                // What the server says of a pull given up on.
                Some(_) if msg.subject.as_str() != self.asked.reply => {}
                // "No messages", or nothing more of a pull that brought some.
                Some(StatusCode::NOT_FOUND | StatusCode::TIMEOUT) => self.left = 0,
                Some(StatusCode::IDLE_HEARTBEAT) => {}
                Some(status) => {
                    let why = msg.description.unwrap_or_else(|| status.to_string());
                    return self.end(PullError::Ended(why));
                }
            }
        }
        None
    }

    fn end(&mut self, e: PullError) -> Option<Result<jetstream::Message, PullError>> {
        self.left = 0;
        Some(Err(e))
    }
}
