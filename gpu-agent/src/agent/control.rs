//! What the agent is told while it runs: cancellations to abort, and models
//! to load or unload.

use super::*;

/// Aborts running jobs as their cancellations arrive, and keeps what it
/// heard, beginning with what the bucket holds, for the jobs still to start.
pub(super) async fn watch_cancellations(node: Arc<Node>, stop: CancellationToken) {
    let mut watch = match node.cancellations.watch_with_history(">").await {
        Ok(w) => w,
        Err(e) => {
            warn!(error = %e, "cannot watch cancellations; running jobs cannot be cancelled");
            return;
        }
    };
    // An empty bucket gives the watch nothing to say it is current with.
    if matches!(node.cancellations.status().await, Ok(s) if s.values() == 0) {
        node.heard.current();
    }
    loop {
        let entry = tokio::select! {
            () = stop.cancelled() => return,
            entry = watch.next() => entry,
        };
        match entry {
            Some(Ok(entry)) => {
                // Heard before running jobs are looked at: a job starting
                // now is listed in `aborts` before it looks at what was heard.
                if entry.operation == kv::Operation::Put {
                    let put_at_ms = i64::try_from(entry.created.unix_timestamp_nanos() / 1_000_000)
                        .unwrap_or(0);
                    node.heard.heard(&entry.key, put_at_ms, now_ms());
                }
                if entry.delta == 0 {
                    node.heard.current();
                }
                if let Some(abort) = lock(&node.aborts).get(&entry.key) {
                    info!(job_id = %entry.key, "cancelling running job");
                    abort.cancel();
                }
            }
            Some(Err(e)) => {
                node.heard.lost();
                warn!(error = %e, "cancellation watch failed");
            }
            None => {
                node.heard.lost();
                return;
            }
        }
    }
}

/// Loads models at the dispatcher's request (`sy.load.<node>`), one at a
/// time, answering once each serves or failed.
pub(super) async fn serve_loads(node: Arc<Node>, stop: CancellationToken) {
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
