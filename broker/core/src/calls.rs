//! Calls that wait: the one path every front takes when its client holds
//! the connection open for the answer (the jobs API with `Prefer: wait`,
//! the OpenAI and KServe fronts). The result cache is looked up first; a
//! miss is submitted with its result already being watched, so a quick
//! result is not missed; the answer is kept for repeats. A call dropped
//! before its end (the client went away) cancels its job, so no GPU works
//! for an answer nobody will read.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;
use switchyard_schemas::{Job, JobResult, Priority, Submission, subjects};
use switchyard_store::{JobRecord, Source, StoreError};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::admission::{Admitter, Answered, NewId, SubmitError};
use crate::cache::{Lookup, ResultCache};
use crate::cancel::Canceller;
use crate::error::{Coded, ErrorCode};
use crate::limits::KeyLimits;
use crate::recorded::Recorded;
use crate::watch::{Event, Watch, Watcher};

/// How long the record may lag behind the result it reflects (the
/// projection writes it a moment later).
const RECORD_SETTLE: Duration = Duration::from_secs(2);
/// The first and the longest pause between reads of a record another
/// broker's projection may write; this broker's own wakes the wait at once.
const REREAD: (Duration, Duration) = (Duration::from_millis(10), Duration::from_millis(160));

/// The synchronous-call service.
#[derive(Clone)]
pub struct Calls {
    admitter: Admitter,
    canceller: Canceller,
    watcher: Watcher,
    /// Where some model has `cache:` configured.
    cache: Option<ResultCache>,
    /// The cancellations of abandoned calls, which outlive their call.
    tasks: TaskTracker,
    /// The longest a call waits before its job is left to run on.
    sync_timeout: Duration,
    /// How long a streaming call's job outlives its client, for a resume.
    resume_grace: Duration,
    recorded: Arc<Recorded>,
}

/// The parts of [`Calls`].
pub struct CallParts {
    pub admitter: Admitter,
    pub canceller: Canceller,
    pub watcher: Watcher,
    pub cache: Option<ResultCache>,
    pub tasks: TaskTracker,
    pub sync_timeout: Duration,
    pub resume_grace: Duration,
    /// Woken as this broker records results (`projection::Results::recorded`).
    pub recorded: Arc<Recorded>,
}

/// One request to answer.
pub struct CallRequest {
    pub submission: Submission,
    pub priority: Priority,
    pub id: NewId,
    /// The caller's key, whose own limits apply.
    pub key: Option<KeyLimits>,
    /// The client asked not to be answered from the cache.
    pub bypass_cache: bool,
    /// Whether the call waits for the job (and so whether it is cancelled
    /// when the call is dropped).
    pub wait: bool,
    /// Whether the job's output is relayed as it is generated.
    pub stream: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error(transparent)]
    Submit(#[from] SubmitError),
    /// The result cannot be watched: NATS is out of reach.
    #[error("NATS: {0}")]
    Unavailable(String),
}

impl Coded for CallError {
    fn code(&self) -> ErrorCode {
        match self {
            CallError::Submit(e) => e.code(),
            CallError::Unavailable(_) => ErrorCode::BrokerUnavailable,
        }
    }
}

/// How a call began.
pub enum Begun {
    /// Answered from the cache: the job is on record as succeeded.
    Cached { job: Job, output: Value },
    /// Queued; with `call` when the request waits for it.
    Queued { job: Job, call: Option<Box<Call>> },
}

impl Calls {
    pub fn new(p: CallParts) -> Calls {
        Calls {
            admitter: p.admitter,
            canceller: p.canceller,
            watcher: p.watcher,
            cache: p.cache,
            tasks: p.tasks,
            sync_timeout: p.sync_timeout,
            resume_grace: p.resume_grace,
            recorded: p.recorded,
        }
    }

    /// The longest a call may wait.
    pub fn sync_timeout(&self) -> Duration {
        self.sync_timeout
    }

    pub fn admitter(&self) -> &Admitter {
        &self.admitter
    }

    pub fn watcher(&self) -> &Watcher {
        &self.watcher
    }

    /// Answers `req` from the cache, or queues its job; the second part
    /// says what the call did with the cache (`hit`, `miss`, `bypass`),
    /// where its model is cached.
    pub async fn begin(
        &self,
        req: CallRequest,
    ) -> Result<(Begun, Option<&'static str>), CallError> {
        let lookup = self.look_up(&req).await?;
        let (lookup, hit) = lookup;
        let state = lookup.state;
        if let Some(output) = hit {
            let job = self
                .admitter
                .record_answered(
                    Answered {
                        submission: req.submission,
                        priority: req.priority,
                        id: req.id.into_string(),
                        source: Source::Http,
                        key: req.key.as_ref(),
                    },
                    output.clone(),
                )
                .await?;
            return Ok((Begun::Cached { job, output }, state));
        }
        // Listening for a resume from the start: a client may reconnect
        // before this broker notices that it went away.
        let resumes = match req.wait && req.stream {
            true => Some(
                self.client()
                    .subscribe(subjects::resumed(req.id.as_str()))
                    .await
                    .map_err(|e| CallError::Unavailable(e.to_string()))?,
            ),
            false => None,
        };
        // Listening before the job is queued, so that a quick result is
        // not missed.
        let watch = match req.wait {
            true => Some(
                self.watcher
                    .watch(req.id.as_str(), req.stream)
                    .await
                    .map_err(|e| CallError::Unavailable(e.to_string()))?,
            ),
            false => None,
        };
        let job = self
            .admitter
            .submit(
                req.submission,
                req.priority,
                req.id,
                Source::Http,
                req.key.as_ref(),
            )
            .await?;
        let call = watch.map(|watch| {
            Box::new(Call {
                guard: CancelOnDrop {
                    armed: Some((self.canceller.clone(), self.tasks.clone())),
                    id: job.id.clone(),
                    resumes: resumes.map(|s| (s, self.resume_grace)),
                },
                watch,
                lookup,
                cache: self.cache.clone(),
                deadline: Instant::now() + self.sync_timeout,
            })
        });
        Ok((Begun::Queued { job, call }, state))
    }

    fn client(&self) -> async_nats::Client {
        self.admitter.js().client()
    }

    /// Tells the broker holding job `id`'s streaming call, whose client
    /// went away, that a client has resumed the stream: the job is kept.
    pub async fn resume(&self, id: &str) -> Result<(), CallError> {
        let client = self.client();
        let unavailable = |e: &dyn std::fmt::Display| CallError::Unavailable(e.to_string());
        client
            .publish(subjects::resumed(id), Default::default())
            .await
            .map_err(|e| unavailable(&e))?;
        client.flush().await.map_err(|e| unavailable(&e))
    }

    /// The cache's answer to a request, checked as admission would check it
    /// (so that an invalid request is refused, not looked up).
    async fn look_up(&self, req: &CallRequest) -> Result<(Lookup, Option<Value>), SubmitError> {
        let Some(cache) = &self.cache else {
            return Ok((Lookup::unused(), None));
        };
        let registry = self.admitter.registry();
        // A model without a cache is not looked up; an alias is resolved
        // to its version first.
        let model = registry.get(&req.submission.model);
        if model.is_some_and(|s| s.cache.is_none()) {
            return Ok((Lookup::unused(), None));
        }
        // Under the call's own id: an alias gives the lookup the version
        // it gives the job.
        let job = self.admitter.validate(
            req.submission.clone(),
            req.priority,
            req.id.as_str().to_owned(),
        )?;
        let spec = registry.get(&job.model).and_then(|s| s.cache.clone());
        Ok(cache.look_up(spec.as_ref(), &job, req.bypass_cache).await)
    }

    /// The job's record once it has ended, if its result comes within
    /// `wait` on `watch`. The record follows the result by a moment: this
    /// broker's projection hands it over as it writes it; one that another
    /// broker writes is read until it shows the end.
    pub async fn finished_record(
        &self,
        watch: &mut Watch,
        id: &str,
        wait: Duration,
    ) -> Result<Option<JobRecord>, StoreError> {
        // Waiting from before the result, so that a recording that comes
        // first is not missed.
        let waiting = self.recorded.wait(id);
        if watch.result(Instant::now() + wait).await.is_none() {
            return Ok(None);
        }
        let settle = Instant::now() + RECORD_SETTLE;
        let store = self.admitter.store();
        let mut reread = REREAD.0;
        loop {
            tokio::select! {
                written = waiting.woken() => if let Some(record) = written {
                    return Ok(Some(record));
                },
                () = tokio::time::sleep(reread) => reread = (reread * 2).min(REREAD.1),
            }
            let record = store.get(id).await?;
            if record.as_ref().is_some_and(|r| r.status.is_final()) || Instant::now() >= settle {
                return Ok(record);
            }
        }
    }
}

/// A call waiting for its job. Dropped before [`Call::end`], it cancels
/// the job: its client is gone.
pub struct Call {
    watch: Watch,
    guard: CancelOnDrop,
    lookup: Lookup,
    cache: Option<ResultCache>,
    /// `sync_timeout` after the call began.
    deadline: Instant,
}

impl Call {
    pub fn id(&self) -> &str {
        &self.guard.id
    }

    /// The job's result, or `None` once the call's time is up.
    pub async fn result(&mut self) -> Option<JobResult> {
        self.watch.result(self.deadline).await
    }

    /// The job's record once it has ended, if within `wait` (at most the
    /// call's own time).
    pub async fn finished_record(
        &mut self,
        calls: &Calls,
        wait: Duration,
    ) -> Result<Option<JobRecord>, StoreError> {
        let wait = wait.min(self.deadline.saturating_duration_since(Instant::now()));
        let id = self.guard.id.clone();
        calls.finished_record(&mut self.watch, &id, wait).await
    }

    /// The next piece of streamed output, or the result; `None` once the
    /// call's time is up.
    pub async fn next(&mut self) -> Option<Event> {
        self.watch.next(self.deadline).await
    }

    /// The call is over and its client answered (or told that the job goes
    /// on): the job is no longer cancelled with the call, and a succeeded
    /// `output` is kept for the requests that repeat this one.
    pub async fn end(mut self, output: Option<&Value>) {
        self.guard.armed = None;
        if let (Some(cache), Some(output)) = (&self.cache, output) {
            cache.store(&self.lookup, output).await;
        }
    }
}

/// Cancels the job when the call is dropped while still armed; a
/// streaming call's job only once no client has resumed its stream within
/// the grace.
struct CancelOnDrop {
    armed: Option<(Canceller, TaskTracker)>,
    id: String,
    resumes: Option<(async_nats::Subscriber, Duration)>,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        let Some((canceller, tasks)) = self.armed.take() else {
            return;
        };
        let id = std::mem::take(&mut self.id);
        let resumes = self.resumes.take();
        tasks.spawn(async move {
            if let Some((mut resumes, grace)) = resumes
                && let Ok(Some(_)) = tokio::time::timeout(grace, resumes.next()).await
            {
                tracing::info!(job_id = %id, "stream resumed by a client; job kept");
                return;
            }
            match canceller.cancel(&id).await {
                Ok(()) => tracing::info!(job_id = %id, "client went away; job cancelled"),
                // Finished meanwhile, most likely: nothing to undo.
                Err(e) => tracing::debug!(job_id = %id, error = %e, "not cancelled"),
            }
        });
    }
}
