//! Taking work back from nodes that cannot run it: a lost node (silent past
//! `node_timeout`) or a draining one. Assignments it never started (never
//! delivered, or held for a slot and handed back) go back to the queue as a
//! new attempt with no failure charged; one it had started and then let
//! lapse past its ack wait counts as a failed attempt (the job may be what
//! brought the node down). Each assignment is acknowledged only
//! after its job is queued again.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::{AckKind, stream::Stream};
use futures::StreamExt;
use switchyard_runtime::attempts::{self, Voucher};
use switchyard_runtime::grants::Grants;
use switchyard_schemas::Timeline;
use switchyard_schemas::{Assignment, ErrorClass, Failure, JobError, decode, now_ms};
use tracing::{info, warn};

use crate::metrics as m;
use crate::pulls::Pulls;

const BATCH: usize = 256;

/// The work queues of nodes, opened once each.
pub struct Reclaimer {
    work: Stream,
    consumers: HashMap<String, PullConsumer>,
    /// To tell a result a node vouches for from a forged one.
    grants: Grants,
}

impl Reclaimer {
    pub fn new(work: Stream, grants: Grants) -> Self {
        Self {
            work,
            consumers: HashMap::new(),
            grants,
        }
    }

    /// Nodes that have a work queue, whether or not they are heard from.
    pub async fn known_nodes(&self) -> Vec<String> {
        let mut names = self.work.consumer_names();
        let mut nodes = Vec::new();
        while let Some(name) = names.next().await {
            match name {
                Ok(name) => {
                    if let Some(node) = name.strip_prefix("agent-") {
                        nodes.push(node.to_owned());
                    }
                }
                Err(e) => {
                    warn!(error = %e, "cannot list work queues");
                    break;
                }
            }
        }
        nodes
    }

    /// Moves what `node`'s queue holds back to the job queues; returns how
    /// many assignments were taken.
    pub(crate) async fn reclaim(
        &mut self,
        js: &async_nats::jetstream::Context,
        pulls: &mut Pulls,
        node: &str,
    ) -> usize {
        let consumer = match self.consumer(node).await {
            Some(c) => c,
            None => return 0,
        };
        let mut batch = match pulls.pull(&consumer, BATCH).await {
            Ok(b) => b,
            Err(e) => {
                warn!(%node, error = %e, "cannot read a lost node's work queue");
                return 0;
            }
        };
        let mut taken = 0;
        while let Some(Ok(msg)) = batch.next().await {
            let a: Assignment = match decode(&msg.payload) {
                Ok(a) => a,
                Err(e) => {
                    warn!(%node, error = %e, "undecodable assignment terminated");
                    let _ = msg.ack_with(AckKind::Term).await;
                    continue;
                }
            };
            let redelivered = msg.info().map(|i| i.delivered > 1).unwrap_or(true);
            let started = redelivered && !attempts::never_started(js, &a.job, node).await;
            let settled = if attempts::has_result(js, &self.grants, &a.job.id).await {
                // The attempt finished before its node went quiet: nothing
                // to run again.
                Ok("already_ended")
            } else if started {
                let failure = Failure {
                    attempt: a.job.attempt,
                    node: node.to_owned(),
                    at_ms: now_ms(),
                    error: JobError::new(
                        ErrorClass::EngineUnavailable,
                        format!("node {node} stopped answering during the attempt"),
                    ),
                };
                let timeline = Timeline {
                    node: Some(node.to_owned()),
                    assigned_at_ms: Some(a.assigned_at_ms),
                    started_at_ms: None,
                };
                attempts::fail(
                    js,
                    &a.job,
                    failure,
                    timeline,
                    Voucher::Platform(&self.grants),
                )
                .await
                .map(|s| s.as_str())
            } else {
                attempts::requeue_unstarted(js, &a.job, node)
                    .await
                    .map(|()| "requeued")
            };
            match settled {
                Ok(outcome) => {
                    info!(job_id = %a.job.id, %node, outcome, "assignment reclaimed");
                    metrics::counter!(m::RECLAIMED, "outcome" => outcome).increment(1);
                    let _ = msg.ack().await;
                    taken += 1;
                }
                Err(e) => {
                    // Still in the node's queue: tried again on the next pass.
                    warn!(job_id = %a.job.id, error = %e, "could not reclaim assignment");
                    let _ = msg
                        .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                        .await;
                }
            }
        }
        taken
    }

    async fn consumer(&mut self, node: &str) -> Option<PullConsumer> {
        if let Some(c) = self.consumers.get(node) {
            return Some(c.clone());
        }
        let c: PullConsumer = self
            .work
            .get_consumer(&format!("agent-{node}"))
            .await
            .ok()?;
        self.consumers.insert(node.to_owned(), c.clone());
        Some(c)
    }

    /// Forgets the handle of a node that left the view.
    pub fn forget(&mut self, node: &str) {
        self.consumers.remove(node);
    }
}
