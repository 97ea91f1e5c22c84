//! Store work admission hands on, to be done many at once: the records of
//! new jobs that hold nothing (no queue places, no budget), the marks of
//! jobs their queue confirmed, and the look-ups of ids clients chose. Each
//! submission still waits for its record to be committed; it shares the
//! commit with the others that arrived meanwhile. It does not wait for its
//! mark, which only tells the outbox not to publish the job again: one not
//! yet written when the broker dies costs a publish the server drops as a
//! duplicate.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use switchyard_schemas::{Job, now_ms};
use switchyard_store::quotas::Holds;
use switchyard_store::{Inserted, JobStore, Recording, Source, StoreError};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// Writes done together at most.
const BATCH: usize = 512;
/// Writes waiting at most; past it, admission waits for the writers.
const WAITING: usize = 8192;

/// A job to record, and whom to tell how it went.
struct Pending {
    job: Arc<Job>,
    source: Source,
    tokens_estimate: u32,
    answer: oneshot::Sender<Result<Inserted, StoreError>>,
}

/// An id to look up, and whom to tell whether a job has it.
struct Look {
    id: String,
    answer: oneshot::Sender<bool>,
}

/// Where admission hands its writes.
#[derive(Clone)]
pub(crate) struct Batched {
    records: mpsc::Sender<Pending>,
    marks: mpsc::Sender<String>,
    looks: mpsc::Sender<Look>,
    store: Arc<dyn JobStore>,
    /// The last record failed: jobs are recorded before they are queued
    /// until one is written again.
    failing: Arc<AtomicBool>,
}

/// The writers, and the look-ups: run them until every path that admits
/// has stopped.
pub struct Writers {
    records: mpsc::Receiver<Pending>,
    marks: mpsc::Receiver<String>,
    looks: mpsc::Receiver<Look>,
    store: Arc<dyn JobStore>,
}

impl Batched {
    pub(crate) fn new(store: Arc<dyn JobStore>) -> (Batched, Writers) {
        let (records, records_rx) = mpsc::channel(WAITING);
        let (marks, marks_rx) = mpsc::channel(WAITING);
        let (looks, looks_rx) = mpsc::channel(WAITING);
        let writers = Writers {
            records: records_rx,
            marks: marks_rx,
            looks: looks_rx,
            store: store.clone(),
        };
        let batched = Batched {
            records,
            marks,
            looks,
            store,
            failing: Arc::default(),
        };
        (batched, writers)
    }

    /// Records `job`, which holds nothing, once it is committed; the job
    /// back, and what `JobRecords::insert` would have answered.
    pub(crate) async fn record(
        &self,
        job: Job,
        source: Source,
        tokens_estimate: u32,
    ) -> (Job, Result<Inserted, StoreError>) {
        let job = Arc::new(job);
        let (answer, answered) = oneshot::channel();
        let pending = Pending {
            job: job.clone(),
            source,
            tokens_estimate,
            answer,
        };
        let answered = match self.records.send(pending).await {
            Ok(()) => answered.await.ok(),
            // The writer has stopped: the broker is stopping.
            Err(_) => None,
        };
        let job = Arc::unwrap_or_clone(job);
        let inserted = match answered {
            Some(inserted) => inserted,
            None => alone(&*self.store, &job, source, tokens_estimate).await,
        };
        self.failing.store(inserted.is_err(), Ordering::Relaxed);
        (job, inserted)
    }

    /// Whether the last record failed: a job queued beside a record that
    /// fails runs with none, and its results wait for one that never
    /// comes, so while the store fails no job is queued before its record.
    pub(crate) fn failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed)
    }

    /// Whether any job, of any tenant, is recorded as `id`: one read for
    /// the ids asked meanwhile.
    pub(crate) async fn recorded(&self, id: &str) -> Result<bool, StoreError> {
        let (answer, answered) = oneshot::channel();
        let look = Look {
            id: id.to_owned(),
            answer,
        };
        if self.looks.send(look).await.is_ok()
            && let Ok(found) = answered.await
        {
            return Ok(found);
        }
        // The reader has stopped, or its read failed: this one's own read
        // says why.
        let found = self.store.recorded(&[id]).await?;
        Ok(!found.is_empty())
    }

    /// Marks job `id` confirmed by its queue, soon.
    pub(crate) async fn mark(&self, id: &str) {
        if self.marks.send(id.to_owned()).await.is_err() {
            write_marks(&*self.store, vec![id.to_owned()]).await;
        }
    }
}

impl Writers {
    /// Writes as the writes come until `stop`, then those still waiting.
    pub async fn run(self, stop: CancellationToken) {
        let store = &*self.store;
        tokio::join!(
            drain(self.records, stop.clone(), |batch| write_records(
                store, batch
            )),
            drain(self.marks, stop.clone(), |ids| write_marks(store, ids)),
            drain(self.looks, stop, |looks| look_up(store, looks)),
        );
    }
}

async fn drain<T, F, Fut>(mut rx: mpsc::Receiver<T>, stop: CancellationToken, mut write: F)
where
    F: FnMut(Vec<T>) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        tokio::select! {
            biased;
            n = rx.recv_many(&mut batch, BATCH) => if n == 0 {
                return;
            },
            () = stop.cancelled() => break,
        }
        write(std::mem::take(&mut batch)).await;
    }
    rx.close();
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        write(std::mem::take(&mut batch)).await;
    }
}

async fn write_records(store: &dyn JobStore, batch: Vec<Pending>) {
    let recordings: Vec<Recording> = batch
        .iter()
        .map(|p| Recording {
            job: &p.job,
            source: p.source,
            tokens_estimate: p.tokens_estimate,
        })
        .collect();
    let together = store.insert_many(&recordings).await;
    drop(recordings);
    match together {
        Ok(found) => {
            for (p, inserted) in batch.into_iter().zip(found) {
                // The submission takes its job back once this is gone.
                drop(p.job);
                let _ = p.answer.send(Ok(inserted));
            }
        }
        Err(e) if e.is_unreachable() => {
            // Each alone would wait as long again for a connection, and the
            // submissions behind them longer still: all are told at once.
            warn!(jobs = batch.len(), error = %e, "jobs not recorded: the store is unreachable");
            let reason = e.to_string();
            for p in batch {
                drop(p.job);
                let _ = p.answer.send(Err(StoreError::Unreachable(reason.clone())));
            }
        }
        Err(e) => {
            // One at a time, so that what fails one job fails it alone.
            warn!(jobs = batch.len(), error = %e, "jobs not recorded together; recording each alone");
            for p in batch {
                let inserted = alone(store, &p.job, p.source, p.tokens_estimate).await;
                drop(p.job);
                let _ = p.answer.send(inserted);
            }
        }
    }
}

async fn alone(
    store: &dyn JobStore,
    job: &Job,
    source: Source,
    tokens_estimate: u32,
) -> Result<Inserted, StoreError> {
    store
        .insert(job, source, tokens_estimate, &Holds::default())
        .await
}

async fn look_up(store: &dyn JobStore, looks: Vec<Look>) {
    let ids: Vec<&str> = looks.iter().map(|l| l.id.as_str()).collect();
    match store.recorded(&ids).await {
        Ok(found) => {
            for look in looks {
                let _ = look.answer.send(found.contains(&look.id));
            }
        }
        // Unanswered, each submission reads alone and meets the error.
        Err(e) => warn!(ids = looks.len(), error = %e, "ids not looked up together"),
    }
}

async fn write_marks(store: &dyn JobStore, ids: Vec<String>) {
    if let Err(e) = store.mark_enqueued(&ids, now_ms()).await {
        warn!(jobs = ids.len(), error = %e, "could not mark jobs enqueued: the outbox publishes them again, and the server drops the repeats");
    }
}
