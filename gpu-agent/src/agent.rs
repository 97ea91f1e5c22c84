use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::object_store::ObjectStore;
use async_nats::jetstream::{self, AckKind, Context, kv};
use futures::StreamExt;
use switchyard_runtime::attempts;
use switchyard_runtime::large;
use switchyard_runtime::nats::{self, ConsumerSpec, NatsError};
use switchyard_runtime::ops::{self, ServeError};
use switchyard_runtime::telemetry::PrometheusHandle;
use switchyard_runtime::{NatsConfig, Readiness, Registry};
use switchyard_schemas::Timeline;
use switchyard_schemas::{
    Assignment, EngineLoad, ErrorClass, EventKind, Failure, GpuStats, Heartbeat, JobError,
    JobEvent, JobResult, LoadReply, LoadRequest, Outcome, SCHEMA_VERSION, StreamChunk, UsageEvent,
    decode, encode, now_ms, subjects,
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span, warn};

use crate::engine::{self, Engine, EngineError, TokenSink};
use crate::gpus::Gpus;
use crate::{AgentConfig, metrics as m, process};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Nats(#[from] NatsError),
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error("cannot read the work queue: {0}")]
    Fetch(String),
}

/// Room kept in a result message for everything but the output.
const RESULT_OVERHEAD: usize = 16 * 1024;

/// What every job task of this agent shares.
struct Node {
    id: String,
    js: Context,
    client: async_nats::Client,
    engine: Box<dyn Engine>,
    results: jetstream::stream::Stream,
    events: jetstream::stream::Stream,
    running: AtomicU32,
    /// Moving average of the engine's time per finished job, in ms; 0 until
    /// one finishes. Reported so that placement can weigh this node's speed.
    service_ms: AtomicU32,
    gpus: Gpus,
    /// The engine just failed a request as unavailable, or its process
    /// exited: check it now, with a real request.
    engine_suspect: Arc<AtomicBool>,
    /// Wakes the heartbeat loop: a slot freed up, the engine failed, or a
    /// model was loaded.
    wake_heartbeat: Notify,
    ack_wait: Duration,
    cancellations: kv::Store,
    /// Running jobs, so that a cancellation can reach them.
    aborts: Mutex<HashMap<String, CancellationToken>>,
    /// The largest output a result message can carry: the server's
    /// message limit less room for the result's other fields and headers.
    /// A larger one goes through `large_results`.
    max_result_bytes: usize,
    large_results: ObjectStore,
    /// The agent's tasks, which its shutdown waits for.
    tasks: TaskTracker,
}

impl Node {
    /// Folds one job's engine time into the moving average (weight 1/8:
    /// follows a change of load within a few dozen jobs).
    fn record_service_time(&self, took: Duration) {
        let ms = u32::try_from(took.as_millis()).unwrap_or(u32::MAX).max(1);
        let _ = self
            .service_ms
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |avg| {
                Some(if avg == 0 {
                    ms
                } else {
                    let avg = u64::from(avg);
                    u32::try_from((avg * 7 + u64::from(ms)) / 8).unwrap_or(u32::MAX)
                })
            });
    }
}

/// Runs the agent until `shutdown` is cancelled, then drains.
pub async fn run(
    cfg: AgentConfig,
    nats_cfg: NatsConfig,
    registry: Registry,
    metrics: PrometheusHandle,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    m::describe();
    let tasks = TaskTracker::new();
    // Ops stay up while draining, so probes and scrapes see the drain.
    let ops_stop = CancellationToken::new();
    let ready = ops::start(cfg.listen, metrics, &tasks, ops_stop.clone()).await?;

    // The engine runs until the jobs have drained, and is stopped last.
    let engine_suspect = Arc::new(AtomicBool::new(false));
    let engine_stop = CancellationToken::new();
    let supervisor = cfg.process.clone().map(|process| {
        tasks.spawn(process::supervise(
            process,
            engine_suspect.clone(),
            engine_stop.clone(),
        ))
    });
    let ran = match start(&cfg, &nats_cfg, &registry, &shutdown).await {
        Ok(Some(started)) => {
            serve(
                &cfg,
                &nats_cfg,
                started,
                engine_suspect,
                &ready,
                &tasks,
                &shutdown,
            )
            .await
        }
        // Stopped while waiting for the engine to list its models.
        Ok(None) => Ok(()),
        Err(e) => Err(e),
    };
    engine_stop.cancel();
    if let Some(supervisor) = supervisor {
        let _ = supervisor.await;
    }
    ops_stop.cancel();
    tasks.close();
    tasks.wait().await;
    info!("gpu-agent stopped");
    ran
}

/// A connection to NATS and the engine, ready to take work.
struct Started {
    client: async_nats::Client,
    js: Context,
    engine: Box<dyn Engine>,
}

/// Connects to NATS and builds the engine; `None` when `shutdown` came first.
async fn start(
    cfg: &AgentConfig,
    nats_cfg: &NatsConfig,
    registry: &Registry,
    shutdown: &CancellationToken,
) -> Result<Option<Started>, AgentError> {
    let (client, js) = nats::connect(nats_cfg, &format!("gpu-agent {}", cfg.node_id)).await?;
    nats::ensure_streams(&js, nats_cfg).await?;
    Ok(engine::build(&cfg.engine, registry, shutdown)
        .await
        .map(|engine| Started { client, js, engine }))
}

/// Takes work until `shutdown`, then drains.
async fn serve(
    cfg: &AgentConfig,
    nats_cfg: &NatsConfig,
    Started { client, js, engine }: Started,
    engine_suspect: Arc<AtomicBool>,
    ready: &Readiness,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) -> Result<(), AgentError> {
    let slots = engine.slots();
    let consumer = nats::durable_consumer(
        &js,
        ConsumerSpec {
            stream: subjects::WORK_STREAM,
            durable: format!("agent-{}", cfg.node_id),
            filter: subjects::work(&cfg.node_id),
            ack_wait: cfg.ack_wait,
            // The server never hands this node more assignments than it has slots.
            max_ack_pending: i64::from(slots),
            // Kept while the node is away: the dispatcher reclaims its work.
            inactive_threshold: Duration::ZERO,
        },
    )
    .await?;
    let results = nats::stream(&js, subjects::RESULTS_STREAM).await?;
    let events = nats::stream(&js, subjects::EVENTS_STREAM).await?;
    let cancellations = nats::cancellations(&js, nats_cfg).await?;
    let max_result_bytes = client
        .server_info()
        .max_payload
        .saturating_sub(RESULT_OVERHEAD);
    let large_results = large::store(&js, nats_cfg).await?;
    let node = Arc::new(Node {
        id: cfg.node_id.clone(),
        js,
        client,
        engine,
        results,
        events,
        running: AtomicU32::new(0),
        service_ms: AtomicU32::new(0),
        gpus: Gpus::open(),
        engine_suspect,
        wake_heartbeat: Notify::new(),
        ack_wait: cfg.ack_wait,
        cancellations,
        aborts: Mutex::new(HashMap::new()),
        max_result_bytes,
        large_results,
        tasks: tasks.clone(),
    });
    metrics::gauge!(m::SLOTS).set(f64::from(slots));

    let stop_heartbeats = CancellationToken::new();
    tasks.spawn(heartbeats(
        node.clone(),
        consumer.clone(),
        cfg.clone(),
        ready.clone(),
        shutdown.clone(),
        stop_heartbeats.clone(),
    ));
    tasks.spawn(watch_cancellations(node.clone(), stop_heartbeats.clone()));
    tasks.spawn(serve_loads(node.clone(), stop_heartbeats.clone()));
    ready.watch(&node.client);
    ready.set(true);
    info!(node = %cfg.node_id, slots, listen = %cfg.listen, "gpu-agent ready");

    let jobs = TaskTracker::new();
    let abort = CancellationToken::new();
    let fetched = fetch_loop(&node, &consumer, slots, &jobs, &abort, shutdown).await;

    // Drain: no new work; running jobs get `drain_timeout` to finish, the rest
    // are left unacknowledged and NATS redelivers them.
    ready.set(false);
    jobs.close();
    if tokio::time::timeout(cfg.drain_timeout, jobs.wait())
        .await
        .is_err()
    {
        warn!(
            running = node.running.load(Ordering::SeqCst),
            "drain timed out: leaving running jobs to redelivery"
        );
        abort.cancel();
        jobs.wait().await;
    }
    stop_heartbeats.cancel();
    fetched
}

async fn fetch_loop(
    node: &Arc<Node>,
    consumer: &PullConsumer,
    slots: u32,
    jobs: &TaskTracker,
    abort: &CancellationToken,
    shutdown: &CancellationToken,
) -> Result<(), AgentError> {
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(slots as usize)
        .expires(Duration::from_secs(5))
        .heartbeat(Duration::from_secs(2))
        .messages()
        .await
        .map_err(|e| AgentError::Fetch(e.to_string()))?;
    loop {
        let next = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            next = messages.next() => next,
        };
        match next {
            Some(Ok(msg)) => {
                // The server's ack wait runs from delivery, so ours does too.
                let lease = Lease::new(node.ack_wait);
                let node = node.clone();
                let abort = abort.clone();
                jobs.spawn(async move {
                    tokio::select! {
                        () = run_assignment(&node, msg, lease) => {}
                        () = abort.cancelled() => {}
                    }
                });
            }
            // Missed heartbeats or a reconnect: the stream recovers by itself.
            Some(Err(e)) => warn!(error = %e, "work queue read failed; retrying"),
            None => return Err(AgentError::Fetch("work queue stream ended".into())),
        }
    }
}

async fn run_assignment(node: &Node, msg: jetstream::Message, mut lease: Lease) {
    let delivered = msg.info().map(|i| i.delivered).unwrap_or(1);
    let assignment: Assignment = match decode(&msg.payload) {
        Ok(a) => a,
        Err(e) => {
            // Poison: redelivering it would only fail again.
            warn!(error = %e, "undecodable assignment terminated");
            metrics::counter!(m::JOBS, "outcome" => "undecodable").increment(1);
            let _ = msg.ack_with(AckKind::Term).await;
            return;
        }
    };
    let job = &assignment.job;
    let span = info_span!("job.run", job_id = %job.id, model = %job.model, node = %node.id, attempt = job.attempt);
    switchyard_runtime::trace::adopt(&span, msg.headers.as_ref());
    async {
        // A result this process published before a cut may still wait in
        // the client's buffer: sent first, so that the check below sees it
        // and the job is not run a second time.
        if delivered > 1 {
            let _ = tokio::time::timeout(node.ack_wait, node.client.flush()).await;
        }
        if delivered > 1 && already_reported(node, &job.id, job.attempt).await {
            info!("redelivered assignment already has its result");
            metrics::counter!(m::JOBS, "outcome" => "duplicate").increment(1);
            ack(&msg).await;
            return;
        }
        if waited(&msg) >= node.ack_wait / 2 {
            // The server may have delivered it long before this process read
            // it (paused in between), and taken it back past the ack wait:
            // the lease counts from reading, so the server is asked instead.
            let _ = msg.ack_with(AckKind::Progress).await;
            if superseded(node, &job.id, job.attempt).await {
                info!("assignment read after another attempt took over; dropped");
                fenced();
                ack(&msg).await;
                return;
            }
            lease.renewed();
        }
        node.running.fetch_add(1, Ordering::SeqCst);
        metrics::gauge!(m::RUNNING).increment(1.0);
        let outcome = execute(node, &msg, &assignment, lease).await;
        node.running.fetch_sub(1, Ordering::SeqCst);
        metrics::gauge!(m::RUNNING).decrement(1.0);
        node.wake_heartbeat.notify_one();
        match outcome {
            Ok(Done::Reported) => ack(&msg).await,
            Ok(Done::Fenced) => {}
            Err(e) => {
                // Nothing durable was lost: the assignment stays in the work
                // queue and comes back.
                warn!(error = %e, "could not publish the outcome; assignment will be redelivered");
                let _ = msg
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                    .await;
            }
        }
    }
    .instrument(span)
    .await
}

async fn ack(msg: &jetstream::Message) {
    if let Err(e) = msg.double_ack().await {
        warn!(error = %e, "ack not confirmed; the assignment may be redelivered and will be recognised");
    }
}

/// How long ago the assignment was put in this node's queue.
fn waited(msg: &jetstream::Message) -> Duration {
    let queued_ms = msg
        .info()
        .map(|i| i64::try_from(i.published.unix_timestamp_nanos() / 1_000_000).unwrap_or(0))
        .unwrap_or_else(|_| now_ms());
    Duration::from_millis(u64::try_from(now_ms() - queued_ms).unwrap_or(0))
}

/// Whether the job has moved past this attempt: it has its result, or the
/// attempt was settled by another process (a reclaim) or followed by a
/// later one.
async fn superseded(node: &Node, job_id: &str, attempt: u32) -> bool {
    if already_reported(node, job_id, attempt).await {
        return true;
    }
    match node
        .events
        .get_last_raw_message_by_subject(&subjects::events(job_id))
        .await
    {
        Ok(msg) => decode::<JobEvent>(&msg.payload).is_ok_and(|e| {
            e.attempt > attempt
                || (e.attempt == attempt
                    && matches!(
                        e.kind,
                        EventKind::Retrying { .. } | EventKind::Requeued { .. }
                    ))
        }),
        Err(_) => false,
    }
}

/// Whether this attempt's result is already in the RESULTS stream (the agent
/// died after publishing it but before acknowledging the assignment).
async fn already_reported(node: &Node, job_id: &str, attempt: u32) -> bool {
    match node
        .results
        .direct_get_last_for_subject(subjects::results(job_id))
        .await
    {
        // This attempt's outcome, or any success (an earlier attempt that was
        // thought lost finished after all): either way the job is done.
        Ok(msg) => decode::<JobResult>(&msg.payload)
            .is_ok_and(|r| r.attempt >= attempt || matches!(r.outcome, Outcome::Succeeded { .. })),
        Err(_) => false,
    }
}

#[derive(Debug, thiserror::Error)]
enum PublishFailed {
    #[error("publish: {0}")]
    Publish(#[from] jetstream::context::PublishError),
    #[error("encode: {0}")]
    Encode(#[from] switchyard_schemas::CodecError),
    #[error(transparent)]
    Settle(#[from] attempts::SettleError),
    #[error(transparent)]
    Large(#[from] large::LargeError),
}

/// Runs the job on the engine and publishes its usage and then its result, each
/// confirmed by the server. Usage goes first: once a result exists, so does
/// its usage record.
async fn execute(
    node: &Node,
    msg: &jetstream::Message,
    a: &Assignment,
    mut lease: Lease,
) -> Result<Done, PublishFailed> {
    let job = &a.job;
    if !lease.held() {
        // Paused between delivery and start: the assignment may already be
        // running elsewhere.
        return Ok(fenced());
    }
    if job.expired_at(now_ms()) {
        // It waited in this node's queue past its deadline: it never runs.
        let timeline = Timeline {
            node: Some(node.id.clone()),
            assigned_at_ms: Some(a.assigned_at_ms),
            started_at_ms: None,
        };
        attempts::expire(&node.js, job, &timeline).await?;
        metrics::counter!(m::JOBS, "outcome" => "expired").increment(1);
        return Ok(Done::Reported);
    }
    if matches!(node.cancellations.get(job.id.as_str()).await, Ok(Some(_))) {
        // Cancelled while it waited: its result is already stored.
        metrics::counter!(m::JOBS, "outcome" => "cancelled").increment(1);
        return Ok(Done::Reported);
    }
    let msg_id = subjects::attempt_msg_id(&job.id, job.attempt);
    let running = JobEvent {
        v: SCHEMA_VERSION,
        job_id: job.id.clone(),
        attempt: job.attempt,
        at_ms: now_ms(),
        kind: EventKind::Running {
            node: node.id.clone(),
        },
    };
    let running_ack = nats::publish(
        &node.js,
        subjects::events(&job.id),
        &format!("{msg_id}:running"),
        encode(&running)?,
    )
    .await?;

    let started = Instant::now();
    let started_at_ms = now_ms();
    let chunks = job
        .stream
        .then(|| Chunks::start(&node.tasks, node.client.clone(), &job.id, job.attempt));
    let serves =
        node.engine.models().contains(&job.model) || node.engine.loadable().contains(&job.model);
    let inference = if !serves {
        // Misrouted: running it would answer with another model.
        Err(EngineError {
            class: ErrorClass::UnknownModel,
            message: format!("model {:?} is not served on node {}", job.model, node.id),
        })
    } else {
        let infer = async {
            let run = node
                .engine
                .infer(&job.model, &job.input, chunks.as_ref().map(Chunks::sink));
            match job.timeout_ms {
                // Dropping the request at the limit cancels it at the engine.
                Some(ms) => tokio::time::timeout(Duration::from_millis(ms), run)
                    .await
                    .unwrap_or_else(|_| {
                        Err(EngineError {
                            class: ErrorClass::TimedOut,
                            message: format!("cancelled at its timeout of {ms} ms"),
                        })
                    }),
                None => run.await,
            }
        };
        tokio::pin!(infer);
        let abort = CancellationToken::new();
        lock(&node.aborts).insert(job.id.clone(), abort.clone());
        let mut progress = tokio::time::interval(node.ack_wait / 3);
        progress.tick().await;
        let outcome = loop {
            tokio::select! {
                r = &mut infer => break r,
                () = abort.cancelled() => {
                    // Dropping the request cancels it at the engine.
                    break Err(EngineError {
                        class: ErrorClass::Cancelled,
                        message: "cancelled by request".into(),
                    });
                }
                _ = progress.tick() => {
                    // A lapsed lease is not renewed: the work may be elsewhere now.
                    if !lease.held() {
                        break Err(EngineError {
                            class: ErrorClass::Timeout,
                            message: "the assignment's lease lapsed".into(),
                        });
                    }
                    // Keeps a long job from being redelivered while it runs.
                    let _ = msg.ack_with(AckKind::Progress).await;
                    lease.renewed();
                }
            }
        };
        lock(&node.aborts).remove(&job.id);
        outcome
    };
    if let Some(chunks) = chunks {
        let finish_reason = match &inference {
            Ok(inf) if lease.held() => inf.output["choices"][0]["finish_reason"]
                .as_str()
                .unwrap_or("stop"),
            _ => "error",
        };
        chunks.finish(finish_reason).await;
    }
    if !lease.held() {
        // Paused or cut off past the ack wait: the assignment was handed out
        // again, so this attempt's outcome must not be reported.
        warn!("lease lapsed while running; outcome discarded");
        return Ok(fenced());
    }
    let engine_time = started.elapsed();
    metrics::histogram!(m::ENGINE_SECONDS).record(engine_time.as_secs_f64());
    running_ack.await?;

    let timeline = Timeline {
        node: Some(node.id.clone()),
        assigned_at_ms: Some(a.assigned_at_ms),
        started_at_ms: Some(started_at_ms),
    };
    let inf = match inference {
        Ok(inf) => {
            node.record_service_time(engine_time);
            inf
        }
        Err(e) if e.class == ErrorClass::Cancelled => {
            // The broker stored the job's result when it cancelled it.
            metrics::counter!(m::JOBS, "outcome" => "cancelled").increment(1);
            return Ok(Done::Reported);
        }
        Err(e) => {
            warn!(class = ?e.class, error = %e.message, "engine failed the job");
            if e.class == ErrorClass::EngineUnavailable {
                // Report at once if the engine is down, so no more work comes.
                node.engine_suspect.store(true, Ordering::SeqCst);
                node.wake_heartbeat.notify_one();
            }
            let failure = Failure {
                attempt: job.attempt,
                node: node.id.clone(),
                at_ms: now_ms(),
                error: JobError::new(e.class, e.message),
            };
            let settled = attempts::fail(&node.js, job, failure, timeline).await?;
            metrics::counter!(m::JOBS, "outcome" => settled.as_str()).increment(1);
            return Ok(Done::Reported);
        }
    };
    let usage = UsageEvent {
        v: SCHEMA_VERSION,
        job_id: job.id.clone(),
        attempt: job.attempt,
        node: node.id.clone(),
        model: job.model.clone(),
        usage: inf.usage,
        engine_ms: u64::try_from(engine_time.as_millis()).unwrap_or(u64::MAX),
        at_ms: now_ms(),
    };
    let usage = encode(&usage)?;
    let retry_until = Instant::now() + node.ack_wait;
    until_confirmed(msg, retry_until, || async {
        nats::publish(&node.js, subjects::usage(&job.id), &msg_id, usage.clone())
            .await?
            .await
    })
    .await?;
    let mut result = JobResult::succeeded(&job.id, job.attempt, timeline, inf.output, inf.usage);
    // An output larger than a message goes to the object store first.
    large::spill(&node.large_results, &mut result, node.max_result_bytes).await?;
    let stored = until_confirmed(msg, retry_until, || {
        attempts::publish_result(&node.js, &result)
    })
    .await?;
    let outcome = if stored {
        let total_ms = (result.finished_at_ms - job.submitted_at_ms).max(0);
        metrics::histogram!(m::JOB_SECONDS).record(total_ms as f64 / 1000.0);
        "succeeded"
    } else {
        // Another attempt's result was stored first; the job has its one result.
        "duplicate"
    };
    metrics::counter!(m::JOBS, "outcome" => outcome).increment(1);
    Ok(Done::Reported)
}

/// Runs `publish` until the server confirms it or `until` passes. Each try
/// sends the same message with the same id, so a repeat of one that did
/// land is dropped; running the job again to report it would run the engine
/// twice, and could give another answer.
async fn until_confirmed<T, E, F, Fut>(
    msg: &jetstream::Message,
    until: Instant,
    mut publish: F,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    loop {
        match publish().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() < until => {
                warn!(error = %e, "publish not confirmed; sending it again");
                let _ = msg.ack_with(AckKind::Progress).await;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Aborts running jobs as their cancellations arrive.
async fn watch_cancellations(node: Arc<Node>, stop: CancellationToken) {
    let mut watch = match node.cancellations.watch_all().await {
        Ok(w) => w,
        Err(e) => {
            warn!(error = %e, "cannot watch cancellations; running jobs cannot be cancelled");
            return;
        }
    };
    loop {
        let entry = tokio::select! {
            () = stop.cancelled() => return,
            entry = watch.next() => entry,
        };
        match entry {
            Some(Ok(entry)) => {
                if let Some(abort) = lock(&node.aborts).get(&entry.key) {
                    info!(job_id = %entry.key, "cancelling running job");
                    abort.cancel();
                }
            }
            Some(Err(e)) => warn!(error = %e, "cancellation watch failed"),
            None => return,
        }
    }
}

/// Loads models at the dispatcher's request (`sy.load.<node>`), one at a
/// time, answering once each serves or failed.
async fn serve_loads(node: Arc<Node>, stop: CancellationToken) {
    let mut requests = match node.client.subscribe(subjects::load(&node.id)).await {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot take load requests; models load only when a job needs one");
            return;
        }
    };
    loop {
        let msg = tokio::select! {
            () = stop.cancelled() => return,
            msg = requests.next() => match msg {
                Some(msg) => msg,
                None => return,
            },
        };
        let (model, error) = match decode::<LoadRequest>(&msg.payload) {
            Ok(request) => {
                info!(model = %request.model, "load requested");
                let loaded = tokio::select! {
                    () = stop.cancelled() => return,
                    r = node.engine.load_model(&request.model) => r,
                };
                let outcome = if loaded.is_ok() { "loaded" } else { "failed" };
                metrics::counter!(m::MODEL_LOADS, "outcome" => outcome).increment(1);
                // The dispatcher places the model's jobs once a heartbeat lists it.
                node.wake_heartbeat.notify_one();
                (request.model, loaded.err().map(|e| e.message))
            }
            Err(e) => (
                String::new(),
                Some(format!("undecodable load request: {e}")),
            ),
        };
        if let Some(error) = &error {
            warn!(%model, %error, "model not loaded");
        }
        let reply = LoadReply {
            v: SCHEMA_VERSION,
            model,
            error,
        };
        if let (Some(to), Ok(bytes)) = (msg.reply, encode(&reply))
            && let Err(e) = node.client.publish(to, bytes.into()).await
        {
            warn!(error = %e, "load reply not sent");
        }
    }
}

/// The lock holds plain data, so a panic elsewhere leaves it usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Publishes a streamed attempt's text on `sy.stream.<job id>`, in order,
/// as the engine produces it.
struct Chunks {
    sink: TokenSink,
    forwarder: tokio::task::JoinHandle<u32>,
    client: async_nats::Client,
    job_id: String,
    attempt: u32,
}

impl Chunks {
    fn start(
        tasks: &TaskTracker,
        client: async_nats::Client,
        job_id: &str,
        attempt: u32,
    ) -> Chunks {
        let (sink, mut pieces) = tokio::sync::mpsc::unbounded_channel::<String>();
        let forwarder = {
            let (client, job_id) = (client.clone(), job_id.to_owned());
            tasks.spawn(async move {
                let mut seq = 0;
                while let Some(delta) = pieces.recv().await {
                    publish_chunk(&client, &job_id, attempt, seq, delta, None).await;
                    seq += 1;
                }
                seq
            })
        };
        Chunks {
            sink,
            forwarder,
            client,
            job_id: job_id.to_owned(),
            attempt,
        }
    }

    fn sink(&self) -> &TokenSink {
        &self.sink
    }

    /// Sends what is left, then the last chunk with `finish_reason`.
    async fn finish(self, finish_reason: &str) {
        drop(self.sink);
        let seq = self.forwarder.await.unwrap_or(0);
        let reason = Some(finish_reason.to_owned());
        publish_chunk(
            &self.client,
            &self.job_id,
            self.attempt,
            seq,
            String::new(),
            reason,
        )
        .await;
    }
}

async fn publish_chunk(
    client: &async_nats::Client,
    job_id: &str,
    attempt: u32,
    seq: u32,
    delta: String,
    finish_reason: Option<String>,
) {
    let chunk = StreamChunk {
        v: SCHEMA_VERSION,
        job_id: job_id.to_owned(),
        attempt,
        seq,
        delta,
        finish_reason,
    };
    // Best effort by design: the whole output is in the job's result.
    match encode(&chunk) {
        Ok(bytes) => {
            if let Err(e) = client.publish(subjects::stream(job_id), bytes.into()).await {
                warn!(error = %e, "stream chunk not sent");
            }
        }
        Err(e) => warn!(error = %e, "stream chunk not encoded"),
    }
}

fn fenced() -> Done {
    metrics::counter!(m::JOBS, "outcome" => "fenced").increment(1);
    Done::Fenced
}

/// What became of an assignment this agent ran.
enum Done {
    /// Its outcome is stored: acknowledge it.
    Reported,
    /// Its lease lapsed: it belongs to another attempt now; leave it.
    Fenced,
}

/// This agent's hold on an assignment: NATS hands it out again once
/// `ack_wait` passes without an acknowledgement. Measured on the monotonic
/// clock, which runs on while the process is stopped, so a paused agent
/// finds its lease lapsed when it resumes.
struct Lease {
    renewed_at: Instant,
    /// A margin under `ack_wait`: the server's clock started before ours.
    valid_for: Duration,
}

impl Lease {
    fn new(ack_wait: Duration) -> Self {
        Self {
            renewed_at: Instant::now(),
            valid_for: ack_wait - ack_wait / 10,
        }
    }

    fn held(&self) -> bool {
        self.renewed_at.elapsed() < self.valid_for
    }

    fn renewed(&mut self) {
        self.renewed_at = Instant::now();
    }
}

/// What the heartbeats report of the engine and the GPUs. Asking costs HTTP
/// requests and driver calls, and heartbeats come as often as slots free
/// up, so the answers are reused for up to `heartbeat_interval` — except
/// right after the engine failed a request, when readiness is what matters.
#[derive(Default)]
struct Probe {
    at: Option<Instant>,
    gpus: Vec<GpuStats>,
    load: EngineLoad,
    ready: bool,
    /// A real request succeeded since the engine last failed: until then
    /// readiness is a real request, after that the cheap probe.
    proven: bool,
}

/// Longest the engine's housekeeping, or a real request that proves it,
/// may hold up a heartbeat; cut short, either is tried again at the next.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

impl Probe {
    async fn refresh(&mut self, node: &Arc<Node>, max_age: Duration) {
        let suspect = node.engine_suspect.swap(false, Ordering::SeqCst);
        if suspect {
            self.proven = false;
        }
        if !suspect && self.at.is_some_and(|at| at.elapsed() < max_age) {
            return;
        }
        let sampler = node.clone();
        self.gpus = tokio::task::spawn_blocking(move || sampler.gpus.sample())
            .await
            .unwrap_or_default();
        let _ = tokio::time::timeout(PROBE_TIMEOUT, node.engine.tend()).await;
        self.load = node.engine.load().await;
        if let Some(depth) = self.load.queue_depth {
            metrics::gauge!(m::ENGINE_QUEUE).set(f64::from(depth));
        }
        if let Some(usage) = self.load.kv_cache_usage {
            metrics::gauge!(m::ENGINE_KV_CACHE).set(f64::from(usage));
        }
        self.ready = if self.proven {
            node.engine.ready().await
        } else {
            tokio::time::timeout(PROBE_TIMEOUT, node.engine.prove())
                .await
                .unwrap_or(false)
        };
        self.proven = self.ready;
        self.at = Some(Instant::now());
    }
}

/// Publishes the node's capacity every `heartbeat_interval`, and sooner (at
/// most every `heartbeat_min_gap`) when a slot frees up. Once `draining` is
/// cancelled the heartbeats say so, and the dispatcher sends no more work.
async fn heartbeats(
    node: Arc<Node>,
    consumer: PullConsumer,
    cfg: AgentConfig,
    readiness: Readiness,
    draining: CancellationToken,
    stop: CancellationToken,
) {
    let mut probe = Probe::default();
    loop {
        probe.refresh(&node, cfg.heartbeat_interval).await;
        let queued = match consumer.get_info().await {
            Ok(info) => u32::try_from(info.num_pending).unwrap_or(u32::MAX),
            Err(e) => {
                warn!(error = %e, "cannot read work queue depth");
                0
            }
        };
        let hb = Heartbeat {
            v: SCHEMA_VERSION,
            node: node.id.clone(),
            at_ms: now_ms(),
            models: node.engine.models(),
            loadable: node.engine.loadable(),
            slots_total: node.engine.slots(),
            running: node.running.load(Ordering::SeqCst),
            queued,
            draining: draining.is_cancelled(),
            service_ms: Some(node.service_ms.load(Ordering::Relaxed)).filter(|ms| *ms > 0),
            gpus: probe.gpus.clone(),
            engine: probe.load,
            ready: probe.ready,
        };
        if !hb.draining {
            // `/readyz` follows the engine: no work for a node that cannot serve it.
            readiness.set(hb.ready);
        }
        match encode(&hb) {
            Ok(bytes) => {
                if let Err(e) = node
                    .client
                    .publish(subjects::heartbeat(&node.id), bytes.into())
                    .await
                {
                    warn!(error = %e, "heartbeat not sent");
                }
                metrics::counter!(m::HEARTBEATS).increment(1);
            }
            Err(e) => warn!(error = %e, "heartbeat not encoded"),
        }
        let sent = Instant::now();
        tokio::select! {
            () = stop.cancelled() => return,
            () = draining.cancelled(), if !hb.draining => {}
            () = tokio::time::sleep(cfg.heartbeat_interval) => {}
            () = node.wake_heartbeat.notified() => {
                let since = sent.elapsed();
                if since < cfg.heartbeat_min_gap {
                    tokio::time::sleep(cfg.heartbeat_min_gap - since).await;
                }
            }
        }
    }
}
