//! Starting, reading and cancelling runs from outside the engine: what the
//! API fronts do.
//!
//! A run is started by a ticket on `sy.wf.runs.<run id>` in the work-queue
//! stream `WFRUNS`: once its PubAck is back the run is kept, even if no
//! engine is running. The ticket stays until the run ends; the engine
//! holding it is the run's owner, and one that dies without acknowledging
//! it loses it to another after its lease (the consumer's ack wait).

use async_nats::jetstream::context::PublishError;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{self, RetentionPolicy, StorageType};
use async_nats::jetstream::{self, Context};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use switchyard_runtime::NatsConfig;

use crate::history::{RunEvent, RunHeader, RunStatus};
use crate::journal::{Journal, JournalError, Read};

pub const RUNS_STREAM: &str = "WFRUNS";
/// Runs started over NATS: kept here until an engine turns each into a run.
pub const START_STREAM: &str = "WFSTART";
pub const START_SUBJECT: &str = "sy.wf.start";
pub const TICKETS_ALL: &str = "sy.wf.runs.*";
/// Core NATS: tells the engine that owns a run that its history grew
/// (a cancellation); best effort, as the history is the truth.
pub const POKES_ALL: &str = "sy.wf.poke.*";

pub fn ticket_subject(run_id: &str) -> String {
    format!("sy.wf.runs.{run_id}")
}

pub fn poke_subject(run_id: &str) -> String {
    format!("sy.wf.poke.{run_id}")
}

/// The durable order to drive a run, with what it starts from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ticket {
    pub run: RunHeader,
    pub at_ms: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum RunsError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("cannot create or update a run stream: {0}")]
    Stream(#[from] jetstream::context::CreateStreamError),
    #[error("run {run}: the ticket was not kept: {source}")]
    Ticket { run: String, source: PublishError },
    #[error("run {0}: its history kept changing while it was cancelled")]
    Busy(String),
}

/// A run's id: from the caller's `Idempotency-Key` when it gives one, so
/// that the same request again names the same run; new otherwise.
pub fn run_id(tenant: &str, idempotency_key: Option<&str>) -> String {
    match idempotency_key {
        Some(key) => {
            let digest = Sha256::new()
                .chain_update(tenant)
                .chain_update([0])
                .chain_update(key)
                .finalize();
            hex::encode(&digest[..16])
        }
        None => uuid::Uuid::now_v7().simple().to_string(),
    }
}

/// What a cancellation found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancelled {
    /// Recorded now, or before.
    Requested,
    /// The run had ended.
    Finished,
    /// No such run.
    NotFound,
}

/// What a replay found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    /// Replayed now, or before and not ended since.
    Replayed,
    /// The run is running, or ended otherwise than `failed_compensation`.
    NotDeadLettered,
    NotFound,
}

/// The run streams, as a front uses them.
#[derive(Clone)]
pub struct Runs {
    js: Context,
    journal: Journal,
}

impl Runs {
    /// Makes the streams, or brings them to the configuration's settings.
    pub async fn open(js: Context, cfg: &NatsConfig) -> Result<Runs, RunsError> {
        for (name, subject) in [(RUNS_STREAM, TICKETS_ALL), (START_STREAM, START_SUBJECT)] {
            js.create_or_update_stream(stream::Config {
                name: name.into(),
                subjects: vec![subject.into()],
                retention: RetentionPolicy::WorkQueue,
                storage: StorageType::File,
                num_replicas: cfg.replicas,
                duplicate_window: cfg.duplicate_window,
                ..Default::default()
            })
            .await?;
        }
        let journal = Journal::open(js.clone(), cfg).await?;
        Ok(Runs { js, journal })
    }

    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// Told of each event appended to the run's history from now on.
    pub async fn watch(
        &self,
        run_id: &str,
    ) -> Result<async_nats::Subscriber, async_nats::SubscribeError> {
        self.js
            .client()
            .subscribe(crate::journal::subject(run_id))
            .await
    }

    /// Keeps the run's ticket, then writes its first event so that it can
    /// be read at once. A run started twice (the same idempotency key) is
    /// kept once: the ticket's message id is the run's, and the history's
    /// first event is written only where there is none.
    pub async fn start(&self, run: RunHeader, at_ms: i64) -> Result<(), RunsError> {
        let ticket = Ticket { run, at_ms };
        self.keep_ticket(&ticket, &ticket.run.id).await?;
        // The engine writes it from the ticket if this does not.
        let _ = self.begin(&ticket).await;
        Ok(())
    }

    /// Publishes a run's ticket and waits for it to be kept; `message_id`
    /// makes a ticket sent twice one.
    async fn keep_ticket(&self, ticket: &Ticket, message_id: &str) -> Result<(), RunsError> {
        let run = &ticket.run.id;
        let payload = serde_json::to_vec(ticket).map_err(|source| JournalError::Encode {
            run: run.clone(),
            source,
        })?;
        let failed = |source| RunsError::Ticket {
            run: run.clone(),
            source,
        };
        self.js
            .send_publish(
                ticket_subject(run),
                PublishMessage::build()
                    .payload(payload.into())
                    .message_id(message_id),
            )
            .await
            .map_err(failed)?
            .await
            .map_err(failed)?;
        Ok(())
    }

    /// Writes a run's first event from its ticket, unless it has one; the
    /// history as it then is.
    pub async fn begin(&self, ticket: &Ticket) -> Result<Read, RunsError> {
        let id = &ticket.run.id;
        let read = self.journal.read(id).await?;
        if !read.events.is_empty() {
            return Ok(read);
        }
        let started = RunEvent::Started {
            run: ticket.run.clone(),
            at_ms: ticket.at_ms,
        };
        match self.journal.append(id, 0, 0, &[started]).await {
            Ok(_) | Err(JournalError::Conflict(_)) => Ok(self.journal.read(id).await?),
            Err(e) => Err(e.into()),
        }
    }

    /// Records a request to cancel the run, and tells its engine.
    pub async fn cancel(&self, run_id: &str, at_ms: i64) -> Result<Cancelled, RunsError> {
        let (answer, _) = self
            .append_unless(run_id, RunEvent::CancelRequested { at_ms }, |events| {
                let has = |f: fn(&RunEvent) -> bool| events.iter().any(f);
                let done = has(|e| matches!(e, RunEvent::Finished { .. }));
                let asked = has(|e| matches!(e, RunEvent::CancelRequested { .. }));
                match (events.is_empty(), done, asked) {
                    (true, _, _) => Some(Cancelled::NotFound),
                    (false, true, _) => Some(Cancelled::Finished),
                    (false, false, true) => Some(Cancelled::Requested),
                    (false, false, false) => None,
                }
            })
            .await?;
        if let Some(outcome) = answer {
            return Ok(outcome);
        }
        let poke = self.js.publish(poke_subject(run_id), "".into()).await;
        if let Err(e) = poke {
            tracing::warn!(run = run_id, error = %e, "the run's engine was not told of its cancellation: it finds it at its next step");
        }
        Ok(Cancelled::Requested)
    }

    /// Replays a run that ended `failed_compensation`: its failed
    /// compensations run again, driven by an engine as any run. A replay
    /// whose ticket was not kept is completed by asking again.
    pub async fn replay(&self, run_id: &str, at_ms: i64) -> Result<Replay, RunsError> {
        let (answer, mut events) = self
            .append_unless(run_id, RunEvent::Replayed { at_ms }, |events| {
                let Some(end) = events
                    .iter()
                    .rposition(|e| matches!(e, RunEvent::Finished { .. }))
                else {
                    return Some(match events.is_empty() {
                        true => Replay::NotFound,
                        false => Replay::NotDeadLettered,
                    });
                };
                if events[end..]
                    .iter()
                    .any(|e| matches!(e, RunEvent::Replayed { .. }))
                {
                    return Some(Replay::Replayed);
                }
                let dead = matches!(
                    events[end],
                    RunEvent::Finished {
                        status: RunStatus::FailedCompensation,
                        ..
                    }
                );
                (!dead).then_some(Replay::NotDeadLettered)
            })
            .await?;
        match answer {
            // Replayed before: its ticket is kept again, in case it was not.
            Some(Replay::Replayed) => {}
            Some(outcome) => return Ok(outcome),
            None => events.push(RunEvent::Replayed { at_ms }),
        }
        let Some(RunEvent::Started { run, .. }) = events.first() else {
            return Ok(Replay::NotFound);
        };
        let replays = events
            .iter()
            .filter(|e| matches!(e, RunEvent::Replayed { .. }))
            .count();
        let ticket = Ticket {
            run: run.clone(),
            at_ms,
        };
        self.keep_ticket(&ticket, &format!("{run_id}-replay-{replays}"))
            .await?;
        Ok(Replay::Replayed)
    }

    /// Appends `event` to the run's history unless `answered` finds the
    /// answer in the history as it is: that answer, if any, and the
    /// history as read (without `event`). Each round loses only to an
    /// engine that appended in between.
    async fn append_unless<T>(
        &self,
        run_id: &str,
        event: RunEvent,
        answered: impl Fn(&[RunEvent]) -> Option<T>,
    ) -> Result<(Option<T>, Vec<RunEvent>), RunsError> {
        for _ in 0..20 {
            let read = self.journal.read(run_id).await?;
            if let Some(answer) = answered(&read.events) {
                return Ok((Some(answer), read.events));
            }
            let event = [event.clone()];
            match self
                .journal
                .append(run_id, read.last, read.events.len(), &event)
                .await
            {
                Ok(_) => return Ok((None, read.events)),
                Err(JournalError::Conflict(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(RunsError::Busy(run_id.into()))
    }
}
