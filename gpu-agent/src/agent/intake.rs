//! Taking work. Every assignment the dispatcher placed on this node is read
//! at once and held, unacknowledged, until a slot frees; the slot then goes
//! to the held assignment of highest priority, the earliest read within a
//! level. So batch work prefetched here never stands in front of a
//! critical job placed after it, and the prefetch still keeps every slot
//! busy between one job's end and the next assignment's arrival.
//!
//! The dispatcher may place a job on a full node that holds work of a lower
//! level (the heartbeat says what it holds, by level); the node then hands
//! the lowest it holds back to the job queues, uncharged, so that the job
//! starts at the next free slot instead of after a turn of the held work.

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::*;

/// What the dispatcher's settings (the `dispatcher:` section of the same
/// file) say of the work it places on a node.
#[derive(Debug, Clone, Copy)]
pub struct Placing {
    /// Assignments placed per slot beyond those running.
    pub prefetch_per_slot: u32,
    /// A job waiting longer than this since it was submitted is served
    /// ahead of higher levels.
    pub aging_bound: Duration,
}

/// What waits for a slot, highest priority first, in the order read within
/// a level.
pub(super) struct Held<T> {
    waiting: BTreeMap<(Priority, u64), T>,
    read: u64,
}

impl<T> Held<T> {
    fn new() -> Self {
        Self {
            waiting: BTreeMap::new(),
            read: 0,
        }
    }

    fn push(&mut self, priority: Priority, item: T) {
        self.read += 1;
        self.waiting.insert((priority, self.read), item);
    }

    /// The one to start next.
    fn pop(&mut self) -> Option<T> {
        self.waiting.pop_first().map(|(_, item)| item)
    }

    /// The one to start last: lowest level, read last.
    fn pop_last(&mut self) -> Option<T> {
        self.waiting.pop_last().map(|(_, item)| item)
    }

    /// How many wait at each level.
    fn levels(&self) -> BTreeMap<Priority, u32> {
        let mut levels = BTreeMap::new();
        for (priority, _) in self.waiting.keys() {
            *levels.entry(*priority).or_insert(0) += 1;
        }
        levels
    }

    fn len(&self) -> usize {
        self.waiting.len()
    }

    fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.waiting.values_mut()
    }

    fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        self.waiting.retain(|_, item| keep(item));
    }

    fn into_items(self) -> impl Iterator<Item = T> {
        self.waiting.into_values()
    }
}

/// A slot given to an assignment, counted as running in the heartbeats from
/// the moment it is taken until it is free again. Counted only once the job
/// started on the engine, the heartbeat sent as the slot was taken (what is
/// held changed) or as the job ended (before its acknowledgement) reported
/// the slot free while this node's own count still held it: the dispatcher
/// placed one more, and the node handed back the lowest it held.
struct Slot {
    node: Arc<Node>,
    permit: Option<OwnedSemaphorePermit>,
}

impl Slot {
    fn taken(node: &Arc<Node>, permit: OwnedSemaphorePermit) -> Slot {
        node.running.fetch_add(1, Ordering::SeqCst);
        metrics::gauge!(m::RUNNING).increment(1.0);
        Slot {
            node: node.clone(),
            permit: Some(permit),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        // Free here before it is free in the heartbeats, never after.
        drop(self.permit.take());
        self.node.running.fetch_sub(1, Ordering::SeqCst);
        metrics::gauge!(m::RUNNING).decrement(1.0);
        self.node.wake_heartbeat.notify_one();
    }
}

/// An assignment waiting for a slot, with this node's hold on it.
struct Waiting {
    msg: jetstream::Message,
    assignment: Assignment,
    lease: Lease,
}

/// Reads this node's work queue until `shutdown`, running what it reads as
/// slots free; `hold` is how many it may have, running or waiting, before
/// it hands back the lowest it holds. What is still held at `shutdown` is
/// handed back at once: it never started, and the dispatcher puts it back
/// in the job queues.
pub(super) async fn take_work(
    node: &Arc<Node>,
    consumer: &PullConsumer,
    (slots, hold): (u32, u32),
    jobs: &TaskTracker,
    abort: &CancellationToken,
    shutdown: &CancellationToken,
) -> Result<(), AgentError> {
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(hold as usize)
        .expires(Duration::from_secs(5))
        .heartbeat(Duration::from_secs(2))
        .messages()
        .await
        .map_err(|e| AgentError::Fetch(e.to_string()))?;
    let free = Arc::new(Semaphore::new(slots as usize));
    let mut held = Held::new();
    let mut renew = tokio::time::interval(node.ack_wait / 6);
    let mut read_through = 0;
    let ended = loop {
        tokio::select! {
            // What has arrived is read before a slot is given, so that the
            // slot goes to the highest level there is.
            biased;
            () = shutdown.cancelled() => break Ok(()),
            next = messages.next() => match next {
                Some(Ok(msg)) => {
                    // The server's ack wait runs from delivery, so ours does too.
                    let lease = Lease::new(node.ack_wait);
                    if let Ok(info) = msg.info() {
                        let undelivered = u32::try_from(info.pending).unwrap_or(u32::MAX);
                        node.undelivered.store(undelivered, Ordering::Relaxed);
                        read_through = read_through.max(info.stream_sequence);
                    }
                    if let Some(assignment) = decoded(&msg).await {
                        let job = &assignment.job;
                        let level = job.level_at(now_ms(), node.aging_bound);
                        held.push(level, Waiting { msg, assignment, lease });
                    }
                    let running = slots as usize - free.available_permits();
                    while running + held.len() > hold as usize {
                        let Some(lowest) = held.pop_last() else { break };
                        hand_back(node, lowest).await;
                    }
                }
                // Missed heartbeats or a reconnect: the stream recovers by itself.
                Some(Err(e)) => warn!(error = %e, "work queue read failed; retrying"),
                None => break Err(AgentError::Fetch("work queue stream ended".into())),
            },
            _ = renew.tick() => {
                // Lapsed (this process was paused): the server has it
                // again, and may have handed it to another attempt.
                held.retain(|w| w.lease.held());
                // Held behind higher levels past a third of the ack wait:
                // the server is told it is still in hand, so that it does
                // not hand it out again.
                for w in held.iter_mut().filter(|w| w.lease.due()) {
                    if w.msg.ack_with(AckKind::Progress).await.is_ok() {
                        w.lease.renewed();
                    }
                }
            }
            Ok(permit) = free.clone().acquire_owned(), if !held.is_empty() => {
                if let Some(Waiting { msg, assignment, lease }) = held.pop() {
                    let slot = Slot::taken(node, permit);
                    let node = node.clone();
                    let abort = abort.clone();
                    jobs.spawn(async move {
                        let _slot = slot;
                        tokio::select! {
                            () = run_assignment(&node, msg, assignment, lease) => {}
                            () = abort.cancelled() => {}
                        }
                    });
                }
            }
        }
        let levels = held.levels();
        let mut reported = lock(&node.held);
        if *reported != levels {
            // What it holds is where the dispatcher may place a higher level.
            *reported = levels;
            node.wake_heartbeat.notify_one();
        }
        drop(reported);
        // Only now that what is held counts it: a heartbeat that reads this
        // before what is held may count an assignment twice, never not at all.
        node.read_through.store(read_through, Ordering::SeqCst);
        metrics::gauge!(m::HELD).set(held.len() as f64);
    };
    for w in held.into_items() {
        let _ = w.msg.ack_with(AckKind::Nak(None)).await;
    }
    lock(&node.held).clear();
    metrics::gauge!(m::HELD).set(0.0);
    ended
}

/// Puts a held assignment's job back in the job queues as a new attempt,
/// charged nothing (it never started), then lets the assignment go.
async fn hand_back(node: &Node, w: Waiting) {
    let job = &w.assignment.job;
    match attempts::requeue_unstarted(&node.js, job, &node.id).await {
        Ok(()) => {
            info!(job_id = %job.id, priority = %job.priority, "held assignment handed back for a higher level");
            metrics::counter!(m::JOBS, "outcome" => "handed_back").increment(1);
            ack(&w.msg).await;
        }
        Err(e) => {
            // Still this node's: it comes back here and runs in its turn.
            warn!(job_id = %job.id, error = %e, "could not hand back a held assignment");
            let _ = w
                .msg
                .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                .await;
        }
    }
}

/// The assignment `msg` carries; one that cannot be read is terminated, as
/// redelivering it would only fail again.
async fn decoded(msg: &jetstream::Message) -> Option<Assignment> {
    match decode(&msg.payload) {
        Ok(a) => Some(a),
        Err(e) => {
            warn!(error = %e, "undecodable assignment terminated");
            metrics::counter!(m::JOBS, "outcome" => "undecodable").increment(1);
            let _ = msg.ack_with(AckKind::Term).await;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_highest_level_held_starts_first_and_each_level_in_the_order_read() {
        let mut held = Held::new();
        held.push(Priority::Batch, "batch 1");
        held.push(Priority::Batch, "batch 2");
        held.push(Priority::Normal, "normal");
        held.push(Priority::Critical, "critical 1");
        held.push(Priority::Batch, "batch 3");
        held.push(Priority::Critical, "critical 2");
        let order: Vec<_> = std::iter::from_fn(|| held.pop()).collect();
        assert_eq!(
            order,
            [
                "critical 1",
                "critical 2",
                "normal",
                "batch 1",
                "batch 2",
                "batch 3"
            ]
        );
        assert!(held.is_empty());
    }

    #[test]
    fn the_one_handed_back_is_the_lowest_level_read_last_and_levels_are_counted() {
        let mut held = Held::new();
        held.push(Priority::Normal, "normal");
        held.push(Priority::Batch, "batch 1");
        held.push(Priority::Critical, "critical");
        held.push(Priority::Batch, "batch 2");
        assert_eq!(
            held.levels(),
            BTreeMap::from([
                (Priority::Critical, 1),
                (Priority::Normal, 1),
                (Priority::Batch, 2)
            ])
        );
        assert_eq!(held.pop_last(), Some("batch 2"));
        assert_eq!(held.pop_last(), Some("batch 1"));
        assert_eq!(held.pop_last(), Some("normal"));
    }
}
