use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
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
    JobEvent, JobResult, LoadReply, LoadRequest, Priority, SCHEMA_VERSION, StreamChunk, UsageEvent,
    decode, encode, now_ms, subjects,
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span, warn};

use crate::engine::{self, Engine, EngineError, TokenSink};
use crate::gpus::Gpus;
use crate::{AgentConfig, metrics as m, process};

mod chunks;
mod control;
mod execute;
mod heard;
mod heartbeat;
mod intake;
mod platform;

use chunks::Chunks;
use control::{serve_loads, watch_cancellations};
use execute::execute;
use heard::{Heard, Known};
use heartbeat::heartbeats;
pub use intake::Placing;
use intake::take_work;
use platform::Platform;

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
    /// The live registry: the engine's models it does not name are not
    /// offered.
    registry: Registry,
    results: jetstream::stream::Stream,
    events: jetstream::stream::Stream,
    running: AtomicU32,
    /// Assignments read and waiting for a slot, by level.
    held: Mutex<BTreeMap<Priority, u32>>,
    /// Assignments in this node's work queue not yet delivered to it, as
    /// the last delivery (or the last look at the queue) said.
    undelivered: AtomicU32,
    /// The `WORK` sequence of the last assignment read, once what is held
    /// counts it: the dispatcher counts its assignments after it as on
    /// their way.
    read_through: AtomicU64,
    /// Assignments the server delivers to this node before it waits for
    /// acknowledgements: while the node holds fewer, the server sends it
    /// every assignment placed.
    read_ahead: u32,
    /// Moving average of the engine's time per finished job, in ms; 0 until
    /// one finishes. Reported so that placement can weigh this node's speed.
    service_ms: AtomicU32,
    /// The same per model.
    service_ms_by_model: Mutex<BTreeMap<String, u32>>,
    gpus: Gpus,
    /// The engine just failed a request as unavailable, or its process
    /// exited: check it now, with a real request.
    engine_suspect: Arc<AtomicBool>,
    /// Wakes the heartbeat loop: a slot freed up, the engine's readiness
    /// changed, or a model was loaded.
    wake_heartbeat: Notify,
    /// Wakes the engine probe: a job found the engine unavailable.
    wake_probe: Notify,
    ack_wait: Duration,
    /// The dispatcher's: work waiting longer is served as the highest level.
    aging_bound: Duration,
    cancellations: kv::Store,
    /// The cancellations the watch on the bucket has delivered.
    heard: Heard,
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
    /// Of the engine's `models`, those the live registry names.
    fn offered(&self, mut models: Vec<String>) -> Vec<String> {
        models.retain(|m| self.registry.get(m).is_some());
        models
    }

    /// Whether `job` was cancelled: from what the watch has heard where
    /// that is sure, from the bucket otherwise.
    async fn cancelled(&self, job: &switchyard_schemas::Job) -> bool {
        match self.heard.knows(&job.id, job.submitted_at_ms, now_ms()) {
            Known::Cancelled => true,
            Known::NotCancelled => false,
            Known::Unsure => matches!(self.cancellations.get(job.id.as_str()).await, Ok(Some(_))),
        }
    }

    /// Folds one job's engine time into the node's moving average and its
    /// model's.
    fn record_service_time(&self, model: &str, took: Duration) {
        let ms = u32::try_from(took.as_millis()).unwrap_or(u32::MAX).max(1);
        let _ = self
            .service_ms
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |avg| {
                Some(moving_average(avg, ms))
            });
        let mut by_model = self
            .service_ms_by_model
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match by_model.get_mut(model) {
            Some(avg) => *avg = moving_average(*avg, ms),
            None => {
                by_model.insert(model.to_owned(), ms);
            }
        }
    }
}

/// `avg` (0: none yet) with `ms` folded in at weight 1/8: it follows a
/// change of load within a few dozen jobs.
fn moving_average(avg: u32, ms: u32) -> u32 {
    if avg == 0 {
        return ms;
    }
    u32::try_from((u64::from(avg) * 7 + u64::from(ms)) / 8).unwrap_or(u32::MAX)
}

/// Runs the agent until `shutdown` is cancelled, then drains. The node
/// holds as many assignments as the dispatcher places on it, as `placing`
/// says.
pub async fn run(
    cfg: AgentConfig,
    placing: Placing,
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
            let serving = (&cfg, placing);
            serve(serving, started, engine_suspect, &ready, &tasks, &shutdown).await
        }
        // Stopped while waiting for the platform's streams or for the
        // engine to list its models.
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
    platform: Platform,
    engine: Box<dyn Engine>,
    registry: Registry,
}

/// Connects to NATS and builds the engine; `None` when `shutdown` came first.
async fn start(
    cfg: &AgentConfig,
    nats_cfg: &NatsConfig,
    registry: &Registry,
    shutdown: &CancellationToken,
) -> Result<Option<Started>, AgentError> {
    let (client, js) = nats::connect(nats_cfg, &format!("gpu-agent {}", cfg.node_id)).await?;
    let Some(platform) = Platform::wait(&js, shutdown).await else {
        return Ok(None);
    };
    // The live registry in force before the engine is asked what it serves.
    if let Ok(Some(entry)) = platform.models.entry(subjects::MODELS_KEY).await {
        registry.put_in_force_bytes(entry.revision, &entry.value);
    }
    Ok(engine::build(&cfg.engine, registry, shutdown)
        .await
        .map(|engine| Started {
            client,
            js,
            platform,
            engine,
            registry: registry.clone(),
        }))
}

/// Takes work until `shutdown`, then drains.
async fn serve(
    (cfg, placing): (&AgentConfig, Placing),
    Started {
        client,
        js,
        platform,
        engine,
        registry,
    }: Started,
    engine_suspect: Arc<AtomicBool>,
    ready: &Readiness,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) -> Result<(), AgentError> {
    let slots = engine.slots();
    // What the dispatcher may place here: the slots and the prefetch; and
    // room for as many placed over held work, which is handed back.
    let prefetch = placing.prefetch_per_slot;
    let hold = slots.saturating_mul(prefetch.saturating_add(1));
    let read_ahead = hold.saturating_add(slots.saturating_mul(prefetch));
    let consumer = nats::durable_consumer(
        &js,
        ConsumerSpec {
            stream: subjects::WORK_STREAM,
            durable: format!("agent-{}", cfg.node_id),
            filter: subjects::work(&cfg.node_id),
            ack_wait: cfg.ack_wait,
            // All this node was given, so that it starts the highest
            // level first.
            max_ack_pending: i64::from(read_ahead),
            // Kept while the node is away: the dispatcher reclaims its work.
            inactive_threshold: Duration::ZERO,
            // What was delivered to this node must survive a restart of the
            // server: a job running here is not handed out again.
            state_in_memory: false,
        },
    )
    .await?;
    let max_result_bytes = client
        .server_info()
        .max_payload
        .saturating_sub(RESULT_OVERHEAD);
    let node = Arc::new(Node {
        id: cfg.node_id.clone(),
        js,
        client,
        engine,
        registry: registry.clone(),
        results: platform.results,
        events: platform.events,
        running: AtomicU32::new(0),
        held: Mutex::new(BTreeMap::new()),
        undelivered: AtomicU32::new(0),
        read_through: AtomicU64::new(0),
        read_ahead,
        service_ms: AtomicU32::new(0),
        service_ms_by_model: Mutex::new(BTreeMap::new()),
        gpus: Gpus::open(),
        engine_suspect,
        wake_heartbeat: Notify::new(),
        wake_probe: Notify::new(),
        ack_wait: cfg.ack_wait,
        aging_bound: placing.aging_bound,
        cancellations: platform.cancellations,
        heard: Heard::default(),
        aborts: Mutex::new(HashMap::new()),
        max_result_bytes,
        large_results: platform.large_results,
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
    tasks.spawn(switchyard_runtime::registry::follow(
        registry,
        platform.models,
        stop_heartbeats.clone(),
    ));
    tasks.spawn(serve_loads(node.clone(), stop_heartbeats.clone()));
    // Ready once the heartbeats say the engine serves.
    ready.watch(&node.client);
    info!(node = %cfg.node_id, slots, listen = %cfg.listen, "gpu-agent ready");

    let jobs = TaskTracker::new();
    let abort = CancellationToken::new();
    let fetched = take_work(&node, &consumer, (slots, hold), &jobs, &abort, shutdown).await;

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
    node.engine.stop().await;
    fetched
}

async fn run_assignment(
    node: &Node,
    msg: jetstream::Message,
    assignment: Assignment,
    mut lease: Lease,
) {
    let delivered = msg.info().map(|i| i.delivered).unwrap_or(1);
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
        // A job has one result, whatever attempt stored it: a redelivered
        // assignment, or a later attempt of a job whose earlier attempt
        // was thought lost but finished, is not run again.
        if (delivered > 1 || job.attempt > 1) && already_reported(node, &job.id).await {
            info!("assignment's job already has its result");
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
        match execute(node, &msg, &assignment, lease).await {
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
    if already_reported(node, job_id).await {
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

/// Whether the job's result is already in the RESULTS stream (this agent
/// died after publishing it but before acknowledging the assignment, or an
/// earlier attempt thought lost finished after all).
async fn already_reported(node: &Node, job_id: &str) -> bool {
    node.results
        .direct_get_last_for_subject(subjects::results(job_id))
        .await
        .is_ok()
}

/// The lock holds plain data, so a panic elsewhere leaves it usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
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

    /// A third of the way to lapsing: time to renew it.
    fn due(&self) -> bool {
        self.renewed_at.elapsed() >= self.valid_for / 3
    }

    fn renewed(&mut self) {
        self.renewed_at = Instant::now();
    }
}
