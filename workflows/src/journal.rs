//! Run histories in JetStream: one subject a run (`sy.wf.history.<run
//! id>`) in the stream `WORKFLOWS`. An append names the run's last event it
//! read, and the server refuses it if anything was appended since: two
//! engines can never both write what a run does next, whichever of them
//! believes it owns the run.

use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{self, DirectGetErrorKind, RetentionPolicy, StorageType};
use async_nats::jetstream::{self, Context};
use switchyard_runtime::NatsConfig;

use crate::history::RunEvent;

pub const STREAM: &str = "WORKFLOWS";
pub const SUBJECTS: &str = "sy.wf.history.*";

/// The subject of a run's history.
pub fn subject(run_id: &str) -> String {
    format!("sy.wf.history.{run_id}")
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Someone appended to the run since it was read: read it again.
    #[error("run {0}: another engine appended to its history first")]
    Conflict(String),
    #[error("run {run}: append: {source}")]
    Append { run: String, source: PublishError },
    #[error("cannot create or update stream {STREAM}: {0}")]
    Stream(#[from] jetstream::context::CreateStreamError),
    #[error("cannot open stream {STREAM}: {0}")]
    Open(#[from] jetstream::context::GetStreamError),
    #[error("run {run}: read: {message}")]
    Read { run: String, message: String },
    #[error("run {run}: an event does not encode: {source}")]
    Encode {
        run: String,
        source: serde_json::Error,
    },
    #[error("run {run}: event {sequence} does not decode: {source}")]
    Decode {
        run: String,
        sequence: u64,
        source: serde_json::Error,
    },
}

/// Where run histories are kept, as one engine writes them.
#[derive(Clone)]
pub struct Journal {
    js: Context,
    stream: stream::Stream,
    /// This writer's own, in each of its events' message ids: an append
    /// it repeats finds its own events, never another writer's.
    writer: String,
}

/// A run's history as read, with the stream sequence of its last event (0
/// for none): what the next append names.
#[derive(Debug, Clone, PartialEq)]
pub struct Read {
    pub events: Vec<RunEvent>,
    pub last: u64,
}

impl Journal {
    /// Makes the stream, or brings it to these settings. Each event is kept
    /// for `nats.workflow_retention` after it was appended: set it well
    /// beyond the longest run, or an old run's history loses its first
    /// events.
    pub async fn open(js: Context, cfg: &NatsConfig) -> Result<Journal, JournalError> {
        js.create_or_update_stream(stream::Config {
            name: STREAM.into(),
            subjects: vec![SUBJECTS.into()],
            retention: RetentionPolicy::Limits,
            storage: StorageType::File,
            num_replicas: cfg.replicas,
            max_age: cfg.workflow_retention,
            allow_direct: true,
            ..Default::default()
        })
        .await?;
        let stream = js.get_stream(STREAM).await?;
        let writer = uuid::Uuid::now_v7().simple().to_string();
        Ok(Journal { js, stream, writer })
    }

    /// Appends `events` after the event at stream sequence `last` (0: the
    /// run is new), at positions `from`, `from + 1`, … of its history;
    /// returns the sequence of the last one. An append repeated after a
    /// lost acknowledgement finds its own events already there and goes on
    /// after them.
    pub async fn append(
        &self,
        run_id: &str,
        last: u64,
        from: usize,
        events: &[RunEvent],
    ) -> Result<u64, JournalError> {
        let mut last = last;
        let mut i = 0;
        while let Some(event) = events.get(i) {
            let payload = serde_json::to_vec(event).map_err(|source| JournalError::Encode {
                run: run_id.into(),
                source,
            })?;
            let publish = PublishMessage::build()
                .payload(payload.into())
                .message_id(self.message_id(run_id, from + i))
                .expected_last_subject_sequence(last);
            let append = |source| JournalError::Append {
                run: run_id.into(),
                source,
            };
            let ack = self
                .js
                .send_publish(subject(run_id), publish)
                .await
                .map_err(append)?
                .await;
            (last, i) = match ack {
                Ok(ack) => (ack.sequence, i + 1),
                Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                    match self.own_latest(run_id, from + i..from + events.len()).await {
                        Some((sequence, position)) => (sequence, position - from + 1),
                        None => return Err(JournalError::Conflict(run_id.into())),
                    }
                }
                Err(e) => return Err(append(e)),
            };
        }
        Ok(last)
    }

    fn message_id(&self, run_id: &str, position: usize) -> String {
        format!("{run_id}:{position}:{}", self.writer)
    }

    /// The run's latest event, if this writer appended it at one of
    /// `positions`: its sequence and position.
    async fn own_latest(
        &self,
        run_id: &str,
        positions: std::ops::Range<usize>,
    ) -> Option<(u64, usize)> {
        let latest = self
            .stream
            .get_last_raw_message_by_subject(&subject(run_id))
            .await
            .ok()?;
        let id = latest.headers.get(async_nats::header::NATS_MESSAGE_ID)?;
        positions
            .into_iter()
            .find(|p| id.as_str() == self.message_id(run_id, *p))
            .map(|p| (latest.sequence, p))
    }

    /// The run's whole history, in order: one direct get an event, so that
    /// reading makes no consumer on the server.
    pub async fn read(&self, run_id: &str) -> Result<Read, JournalError> {
        let subject = subject(run_id);
        let mut read = Read {
            events: Vec::new(),
            last: 0,
        };
        loop {
            let next = self
                .stream
                .direct_get_next_for_subject(&subject, Some(read.last + 1))
                .await;
            let msg = match next {
                Ok(msg) => msg,
                Err(e) if e.kind() == DirectGetErrorKind::NotFound => return Ok(read),
                Err(e) => {
                    return Err(JournalError::Read {
                        run: run_id.into(),
                        message: e.to_string(),
                    });
                }
            };
            let event =
                serde_json::from_slice(&msg.payload).map_err(|source| JournalError::Decode {
                    run: run_id.into(),
                    sequence: msg.sequence,
                    source,
                })?;
            read.events.push(event);
            read.last = msg.sequence;
        }
    }
}
