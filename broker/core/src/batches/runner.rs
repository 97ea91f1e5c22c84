//! Works batches forward. Each broker runs one runner; a batch is leased
//! while a runner works on it, so brokers sharing a database split the
//! batches between them and a batch whose broker died is taken up again
//! from the last line it recorded. Job ids are `<batch>-<line>`, so a line
//! submitted twice (a crash between submit and record) is one job.

use std::time::Duration;

use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use switchyard_schemas::{Priority, now_ms};
use tokio::io::AsyncWriteExt;
use tokio_util::codec::{FramedRead, LinesCodec, LinesCodecError};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use std::sync::Arc;

use switchyard_store::{
    BatchItem, BatchRecord, BatchStatus, BatchStore, BatchUpdate, FileRecord, JobRecord, Source,
    Status, StoreError,
};

use super::Files;
use crate::admission::{Admitter, NewId};
use crate::auth::Caller;
use crate::cancel::Canceller;
use crate::error::{Coded, ErrorCode};
use crate::openai_request::{self, Endpoint};

/// How long a runner holds a batch between renewals.
const LEASE: Duration = Duration::from_secs(60);
/// Lines submitted, then recorded, at a time.
const CHUNK: usize = 256;
/// Submissions in flight at once within a chunk.
const CONCURRENCY: usize = 16;
/// How long one batch reads its input while others wait for the runner.
const TURN: Duration = Duration::from_secs(2);
/// Items read at a time when writing output or cancelling.
const PAGE: u32 = 500;

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2)
}

/// What a runner works with.
pub struct BatchRunner {
    admitter: Admitter,
    canceller: Canceller,
    batch_store: Arc<dyn BatchStore>,
    files: Files,
    /// The longest line of an input file.
    max_line_bytes: usize,
    /// The HTTP status a failed job's error code answers with, for the
    /// output file's `status_code`: the edge's choice, handed in.
    status_of: fn(&str) -> u16,
}

/// The parts of a [`BatchRunner`].
pub struct RunnerParts {
    pub admitter: Admitter,
    pub canceller: Canceller,
    pub batch_store: Arc<dyn BatchStore>,
    pub files: Files,
    pub max_line_bytes: usize,
    pub status_of: fn(&str) -> u16,
}

impl BatchRunner {
    pub fn new(p: RunnerParts) -> BatchRunner {
        BatchRunner {
            admitter: p.admitter,
            canceller: p.canceller,
            batch_store: p.batch_store,
            files: p.files,
            max_line_bytes: p.max_line_bytes,
            status_of: p.status_of,
        }
    }
}

pub async fn run(s: BatchRunner, shutdown: CancellationToken) {
    loop {
        let now = now_ms();
        match s.batch_store.claim_batch(now, now + ms(LEASE)).await {
            Ok(Some(batch)) => {
                let id = batch.id.clone();
                // A step reads one chunk of a batch's lines at most; then
                // the batch worked on least recently has its turn, so one
                // large batch does not keep the others waiting.
                let pause = match step(&s, batch, &shutdown).await {
                    Ok(More::Now) => 0,
                    Ok(More::Later) => 500,
                    Err(e) => {
                        warn!(batch = %id, error = %e, "batch step failed; it is retried");
                        500
                    }
                };
                let _ = s.batch_store.renew_batch(&id, now_ms() + pause).await;
                continue;
            }
            Ok(None) => {}
            Err(e) => warn!(error = %e, "cannot read batches"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum StepError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("object store: {0}")]
    Files(String),
}

/// Whether a batch has more to do at once.
enum More {
    Now,
    Later,
}

async fn step(
    s: &BatchRunner,
    b: BatchRecord,
    shutdown: &CancellationToken,
) -> Result<More, StepError> {
    let now = now_ms();
    match b.status {
        BatchStatus::Validating => {
            let input = s.batch_store.get_file(&b.input_file_id).await?;
            let (to, update) = match input {
                Some(_) => (BatchStatus::InProgress, BatchUpdate::default()),
                None => (
                    BatchStatus::Failed,
                    BatchUpdate {
                        error: Some((
                            ErrorCode::InvalidFile.as_str().into(),
                            "the input file is gone".into(),
                        )),
                        ..BatchUpdate::default()
                    },
                ),
            };
            set(s, &b, &[BatchStatus::Validating], to, update).await?;
        }
        BatchStatus::InProgress if !b.input_done && now < b.expires_at_ms => {
            return read_input(s, &b, shutdown).await;
        }
        BatchStatus::InProgress => {
            let all_ended = b.counts.completed + b.counts.failed == b.counts.total;
            if now >= b.expires_at_ms {
                // Queued jobs expire at the window's end by their deadline;
                // the batch ends once they have.
                if all_ended || end_jobs(s, &b).await? {
                    finish(s, &b, BatchStatus::Expired).await?;
                }
            } else if all_ended {
                set(
                    s,
                    &b,
                    &[BatchStatus::InProgress],
                    BatchStatus::Finalizing,
                    BatchUpdate::default(),
                )
                .await?;
                finish(s, &b, BatchStatus::Completed).await?;
            }
        }
        BatchStatus::Finalizing => finish(s, &b, BatchStatus::Completed).await?,
        BatchStatus::Cancelling => {
            if end_jobs(s, &b).await? {
                finish(s, &b, BatchStatus::Cancelled).await?;
            }
        }
        BatchStatus::Completed
        | BatchStatus::Failed
        | BatchStatus::Cancelled
        | BatchStatus::Expired => {}
    }
    Ok(More::Later)
}

async fn set(
    s: &BatchRunner,
    b: &BatchRecord,
    from: &[BatchStatus],
    to: BatchStatus,
    update: BatchUpdate,
) -> Result<bool, StoreError> {
    let moved = s
        .batch_store
        .set_batch_status(&b.id, from, to, now_ms(), update)
        .await?;
    if moved {
        info!(batch = %b.id, status = to.as_str(), "batch");
    }
    Ok(moved)
}

/// One line of a batch input file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    custom_id: String,
    method: String,
    url: String,
    body: Value,
}

/// What became of one line.
enum Submitted {
    Item(BatchItem),
    /// The queue is full or unavailable: the line is read again later.
    NotNow,
}

/// Reads the input from the first line not yet recorded, submitting each
/// line as a job and recording a chunk at a time, until the file ends, the
/// queue or a limit pushes back, the batch is no longer in progress, or
/// shutdown (`More::Later`), or until another batch is waiting for the
/// runner (`More::Now`: it goes on after that one's turn).
async fn read_input(
    s: &BatchRunner,
    b: &BatchRecord,
    shutdown: &CancellationToken,
) -> Result<More, StepError> {
    let object = s
        .files
        .read(&b.input_file_id)
        .await
        .map_err(StepError::Files)?;
    let mut lines = FramedRead::new(object, LinesCodec::new_with_max_length(s.max_line_bytes))
        .skip(usize::try_from(b.lines_read).unwrap_or(usize::MAX))
        .ready_chunks(CHUNK);
    let mut line_no = b.lines_read;
    let endpoint = Endpoint::from_path(&b.endpoint).unwrap_or(Endpoint::Chat);
    let started = std::time::Instant::now();
    while let Some(chunk) = lines.next().await {
        if shutdown.is_cancelled() {
            return Ok(More::Later);
        }
        let numbered: Vec<(u64, Result<String, LinesCodecError>)> = chunk
            .into_iter()
            .enumerate()
            .map(|(i, l)| (line_no + i as u64, l))
            .collect();
        let outcomes: Vec<Submitted> = futures::stream::iter(numbered)
            .map(|(n, text)| submit_line(s, b, endpoint, n, text))
            .buffered(CONCURRENCY)
            .collect()
            .await;
        let mut items = Vec::with_capacity(outcomes.len());
        let mut stopped = false;
        for outcome in outcomes {
            match outcome {
                Submitted::Item(item) if !stopped => items.push(item),
                // Lines after one that could not go are read again too.
                _ => stopped = true,
            }
        }
        line_no += items.len() as u64;
        s.batch_store
            .add_batch_items(&b.id, &items, line_no, false)
            .await?;
        if stopped {
            return Ok(More::Later);
        }
        let live = s.batch_store.get_batch(&b.id).await?;
        if live.is_none_or(|l| l.status != BatchStatus::InProgress) {
            return Ok(More::Later);
        }
        // Reading on is cheaper than opening the file again past the lines
        // read, so the turn is given up only once it has lasted a while.
        if started.elapsed() >= TURN && s.batch_store.batch_waiting(now_ms()).await? {
            return Ok(More::Now);
        }
        s.batch_store
            .renew_batch(&b.id, now_ms() + ms(LEASE))
            .await?;
    }
    s.batch_store
        .add_batch_items(&b.id, &[], line_no, true)
        .await?;
    Ok(More::Later)
}

async fn submit_line(
    s: &BatchRunner,
    b: &BatchRecord,
    endpoint: Endpoint,
    n: u64,
    text: Result<String, LinesCodecError>,
) -> Submitted {
    let item = |custom_id: String, job_id: Option<String>, error: Option<(ErrorCode, String)>| {
        Submitted::Item(BatchItem {
            line: n,
            custom_id,
            job_id,
            error: error.map(|(code, message)| (code.as_str().to_owned(), message)),
        })
    };
    let text = match text {
        Ok(text) => text,
        Err(e) => {
            return item(
                String::new(),
                None,
                Some((ErrorCode::InvalidJson, e.to_string())),
            );
        }
    };
    let line: Line = match serde_json::from_str(&text) {
        Ok(line) => line,
        Err(e) => {
            let custom_id = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["custom_id"].as_str().map(str::to_owned))
                .unwrap_or_default();
            return item(
                custom_id,
                None,
                Some((ErrorCode::InvalidJson, format!("line {}: {e}", n + 1))),
            );
        }
    };
    if line.method != "POST" || line.url != b.endpoint {
        let message = format!(
            "this batch runs POST {}; the line asks for {} {}",
            b.endpoint, line.method, line.url
        );
        return item(line.custom_id, None, Some((ErrorCode::InvalidUrl, message)));
    }
    if line.custom_id.is_empty() || line.custom_id.len() > 512 {
        let message = "custom_id must be 1 to 512 bytes".to_owned();
        return item(
            line.custom_id,
            None,
            Some((ErrorCode::InvalidRequest, message)),
        );
    }
    let body = line.body.to_string();
    let caller = Caller::tenant(b.tenant.clone());
    let registry = s.admitter.registry();
    let parsed = match openai_request::parse(
        registry,
        &caller,
        body.as_bytes(),
        endpoint,
        Priority::Batch,
    ) {
        Ok(parsed) if parsed.stream => {
            let message = "stream is not available in a batch".to_owned();
            return item(
                line.custom_id,
                None,
                Some((ErrorCode::InvalidRequest, message)),
            );
        }
        Ok(parsed) => parsed,
        Err(e) => return item(line.custom_id, None, Some((e.code(), e.to_string()))),
    };
    let mut submission = parsed.submission;
    submission.deadline_ms = Some(b.expires_at_ms);
    submission.metadata.insert("batch_id".into(), b.id.clone());
    submission
        .metadata
        .insert("custom_id".into(), line.custom_id.clone());
    let job_id = format!("{}-{n}", b.id);
    // The lines take from the limits of the key that made the batch, as
    // its own requests would.
    let key = b.api_key.as_deref().map(|id| s.admitter.key_limits(id));
    let submitted = s
        .admitter
        .submit(
            submission,
            Priority::Batch,
            NewId::given(job_id.clone()),
            Source::Http,
            key.as_ref(),
        )
        .await;
    match submitted {
        Ok(_) => item(line.custom_id, Some(job_id), None),
        // Over a limit or a full queue, the line waits and is tried again:
        // a batch is paced by its tenant's and key's limits, never failed
        // by them.
        Err(e)
            if matches!(
                e.code(),
                ErrorCode::QueueFull
                    | ErrorCode::RateLimited
                    | ErrorCode::QueueUnavailable
                    | ErrorCode::StoreUnavailable
            ) =>
        {
            warn!(batch = %b.id, line = n, error = %e, "batch line not queued now; it is tried again");
            Submitted::NotNow
        }
        Err(e) => item(line.custom_id, None, Some((e.code(), e.to_string()))),
    }
}

/// Cancels every job of the batch that has not ended; true once all have.
async fn end_jobs(s: &BatchRunner, b: &BatchRecord) -> Result<bool, StepError> {
    let mut after = None;
    let mut all_ended = true;
    loop {
        let page = s.batch_store.batch_items(&b.id, after, PAGE).await?;
        let Some(last) = page.last() else {
            return Ok(all_ended);
        };
        after = Some(last.0.line);
        for (_, job) in &page {
            let Some(job) = job.as_ref().filter(|j| !j.status.is_final()) else {
                continue;
            };
            all_ended = false;
            if let Err(e) = s.canceller.cancel(&job.id).await {
                warn!(job_id = %job.id, error = %e, "cannot cancel a job of a batch");
            }
        }
    }
}

/// Writes the output and error files and ends the batch as `to`.
async fn finish(s: &BatchRunner, b: &BatchRecord, to: BatchStatus) -> Result<(), StepError> {
    let output = write_file(s, b, "output", output_line).await?;
    let errors = write_file(s, b, "errors", error_line).await?;
    let update = BatchUpdate {
        output_file_id: output.map(|f| f.id),
        error_file_id: errors.map(|f| f.id),
        error: None,
    };
    set(
        s,
        b,
        &[
            BatchStatus::InProgress,
            BatchStatus::Finalizing,
            BatchStatus::Cancelling,
        ],
        to,
        update,
    )
    .await?;
    Ok(())
}

fn request_id(item: &BatchItem, b_id: &str) -> String {
    item.job_id
        .clone()
        .unwrap_or_else(|| format!("{b_id}-{}", item.line))
}

fn output_line(
    _: &BatchRunner,
    _: &BatchRecord,
    item: &BatchItem,
    job: Option<&JobRecord>,
) -> Option<Value> {
    let job = job.filter(|j| j.status == Status::Succeeded)?;
    Some(json!({
        "id": format!("batch_req_{}", job.id),
        "custom_id": item.custom_id,
        "response": {"status_code": 200, "request_id": job.id, "body": job.output},
        "error": null,
    }))
}

fn error_line(
    s: &BatchRunner,
    b: &BatchRecord,
    item: &BatchItem,
    job: Option<&JobRecord>,
) -> Option<Value> {
    let id = format!("batch_req_{}", request_id(item, &b.id));
    if let Some((code, message)) = &item.error {
        return Some(json!({
            "id": id, "custom_id": item.custom_id, "response": null,
            "error": {"code": code, "message": message},
        }));
    }
    let job = job.filter(|j| j.status.is_final() && j.status != Status::Succeeded)?;
    let (code, message) = job.error.clone().unwrap_or_default();
    let status = (s.status_of)(&code);
    Some(json!({
        "id": id,
        "custom_id": item.custom_id,
        "response": {"status_code": status, "request_id": job.id,
                     "body": {"error": {"code": code, "message": message}}},
        "error": null,
    }))
}

/// Streams the lines `pick` gives into a new file; none when it gives none.
async fn write_file(
    s: &BatchRunner,
    b: &BatchRecord,
    kind: &str,
    pick: fn(&BatchRunner, &BatchRecord, &BatchItem, Option<&JobRecord>) -> Option<Value>,
) -> Result<Option<FileRecord>, StepError> {
    let id = format!("file-{}", uuid::Uuid::now_v7().simple());
    let (mut writer, mut reader) = tokio::io::duplex(64 * 1024);
    let produce = async move {
        let mut after = None;
        let mut written = 0u64;
        loop {
            let page = s.batch_store.batch_items(&b.id, after, PAGE).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.0.line);
            for (item, job) in &page {
                if let Some(line) = pick(s, b, item, job.as_ref()) {
                    let mut text = line.to_string();
                    text.push('\n');
                    // The reader only goes away when the put failed, which
                    // is reported below.
                    if writer.write_all(text.as_bytes()).await.is_err() {
                        return Ok(written);
                    }
                    written += 1;
                }
            }
        }
        let _ = writer.shutdown().await;
        Ok::<u64, StoreError>(written)
    };
    let (written, put) = tokio::join!(produce, s.files.put(id.as_str(), &mut reader));
    let written = written?;
    let info = put.map_err(|e| StepError::Files(e.to_string()))?;
    if written == 0 {
        let _ = s.files.delete(&id).await;
        return Ok(None);
    }
    let file = FileRecord {
        id,
        tenant: b.tenant.clone(),
        filename: format!("{}_{kind}.jsonl", b.id),
        purpose: "batch_output".into(),
        bytes: i64::try_from(info.size).unwrap_or(i64::MAX),
        created_at_ms: now_ms(),
    };
    s.batch_store.insert_file(&file).await?;
    Ok(Some(file))
}
