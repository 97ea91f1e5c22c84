//! Dead letters: jobs that failed every attempt they had. Operators list
//! them and replay one once its cause is fixed. A replay is a new attempt
//! with a fresh attempt budget: the record is reopened (and will be queued
//! again by the outbox if the broker dies here), the job is queued, and only
//! then is the dead letter removed.

use async_nats::jetstream::stream::Stream;
use serde::Serialize;
use switchyard_runtime::nats;
use switchyard_schemas::{DeadLetter, Failure, Job, decode, now_ms, subjects};
use switchyard_store::StoreError;

use crate::admission::Admitter;
use crate::error::{Coded, ErrorCode};

#[derive(Clone)]
pub struct DeadLetters {
    admitter: Admitter,
    dead: Stream,
    results: Stream,
}

/// A dead letter as operators see it.
#[derive(Debug, Serialize)]
pub struct DeadView {
    job_id: String,
    model: String,
    priority: String,
    attempts: usize,
    dead_at_ms: i64,
    failures: Vec<Failure>,
}

#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error("no dead letter for job {0:?}")]
    NotFound(String),
    #[error("job {0:?} is not failed, so it cannot be replayed")]
    NotFailed(String),
    #[error("the queue is unavailable: {0}")]
    Unavailable(String),
    #[error("job store: {0}")]
    Store(#[from] StoreError),
}

impl Coded for DeadLetterError {
    fn code(&self) -> ErrorCode {
        match self {
            DeadLetterError::NotFound(_) => ErrorCode::NotFound,
            DeadLetterError::NotFailed(_) => ErrorCode::NotFailed,
            DeadLetterError::Unavailable(_) => ErrorCode::QueueUnavailable,
            DeadLetterError::Store(_) => ErrorCode::StoreUnavailable,
        }
    }
}

impl DeadLetters {
    pub fn new(admitter: Admitter, dead: Stream, results: Stream) -> DeadLetters {
        DeadLetters {
            admitter,
            dead,
            results,
        }
    }

    /// At most `limit` dead letters, oldest first.
    pub async fn list(&self, limit: usize) -> Result<Vec<DeadView>, DeadLetterError> {
        let unavailable = |e: &dyn std::fmt::Display| DeadLetterError::Unavailable(e.to_string());
        let subjects = nats::subject_counts(
            self.admitter.js(),
            subjects::DEAD_STREAM,
            subjects::DEAD_ALL,
        )
        .await
        .map_err(|e| unavailable(&e))?;
        let mut letters = Vec::new();
        for (subject, _) in subjects.into_iter().take(limit) {
            if let Ok(msg) = self.dead.direct_get_last_for_subject(subject).await
                && let Ok(letter) = decode::<DeadLetter>(&msg.payload)
            {
                letters.push(DeadView {
                    job_id: letter.job.id,
                    model: letter.job.model,
                    priority: letter.job.priority.as_str().to_owned(),
                    attempts: letter.job.failures.len(),
                    dead_at_ms: letter.at_ms,
                    failures: letter.job.failures,
                });
            }
        }
        letters.sort_by_key(|l| l.dead_at_ms);
        Ok(letters)
    }

    /// Queues dead job `id` again, as its next attempt with a fresh budget.
    pub async fn replay(&self, id: &str) -> Result<Job, DeadLetterError> {
        let not_found = || DeadLetterError::NotFound(id.to_owned());
        if !subjects::is_valid_id(id) {
            return Err(not_found());
        }
        let msg = self
            .dead
            .direct_get_last_for_subject(subjects::dead(id))
            .await
            .map_err(|_| not_found())?;
        let letter: DeadLetter = decode(&msg.payload).map_err(|_| not_found())?;
        // A node's user can publish dead letters too: only a job a broker
        // admitted is run again.
        let grants = self.admitter.grants();
        if !grants.sealed(&letter.job) {
            return Err(not_found());
        }
        // The next attempt number, with a fresh budget of failures.
        let mut job = letter.job;
        job.failures.clear();
        job.submitted_at_ms = now_ms();
        job.seal = grants.seal(&job);
        let store = self.admitter.store();
        if !store.reopen(&job).await? {
            return Err(DeadLetterError::NotFailed(id.to_owned()));
        }
        let unavailable = |e: &dyn std::fmt::Display| DeadLetterError::Unavailable(e.to_string());
        // A job has one stored result: the old failure makes way for the new one.
        self.results
            .purge()
            .filter(subjects::results(&job.id))
            .await
            .map_err(|e| unavailable(&e))?;
        self.admitter
            .enqueue(&job)
            .await
            .map_err(|e| unavailable(&e))?;
        self.admitter.confirmed(&job.id).await;
        if let Err(e) = self.dead.purge().filter(subjects::dead(&job.id)).await {
            tracing::warn!(job_id = %job.id, error = %e, "replayed, but the dead letter stays");
        }
        tracing::info!(job_id = %job.id, attempt = job.attempt, "dead letter replayed");
        Ok(job)
    }
}
