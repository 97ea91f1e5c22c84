//! Subject and stream names: the addresses of the system. Clients in any language
//! rely on these; `docs/nats-api.md` documents them.

use crate::Priority;

/// Durable intake for NATS clients: `sy.submit.<priority>`.
pub const SUBMIT_STREAM: &str = "SUBMIT";
/// Admitted, schedulable jobs: `sy.jobs.<priority>.<model token>.<tenant>`.
pub const JOBS_STREAM: &str = "JOBS";
/// Assignments to one node: `sy.work.<node>`.
pub const WORK_STREAM: &str = "WORK";
/// Lifecycle events of a job: `sy.events.<job id>`.
pub const EVENTS_STREAM: &str = "EVENTS";
/// The last result of each job: `sy.results.<job id>`.
pub const RESULTS_STREAM: &str = "RESULTS";
/// Usage events for billing: `sy.usage.<job id>`.
pub const BILLING_STREAM: &str = "BILLING";
/// Jobs that exhausted their attempts: `sy.dead.<job id>`.
pub const DEAD_STREAM: &str = "DEAD";

pub const SUBMIT_ALL: &str = "sy.submit.*";
pub const JOBS_ALL: &str = "sy.jobs.*.*.*";
pub const WORK_ALL: &str = "sy.work.*";
pub const EVENTS_ALL: &str = "sy.events.*";
pub const RESULTS_ALL: &str = "sy.results.*";
pub const USAGE_ALL: &str = "sy.usage.*";
pub const DEAD_ALL: &str = "sy.dead.*";
/// JetStream KV bucket of cancelled job ids, watched by agents.
pub const CANCEL_BUCKET: &str = "cancelled";
/// JetStream KV bucket of cached results, keyed by request digest.
pub const CACHE_BUCKET: &str = "result-cache";
/// JetStream object store bucket of uploaded and generated files (batches).
pub const FILES_BUCKET: &str = "files";
/// JetStream object store bucket of outputs too large for a result message.
pub const LARGE_RESULTS_BUCKET: &str = "large-results";
/// Core NATS request/reply: cancel the job named in the body.
pub const CANCEL: &str = "sy.cancel";
/// Core NATS request/reply intake: `sy.admit.<priority>`.
pub const ADMIT_ALL: &str = "sy.admit.*";
/// Core NATS: streamed output, `sy.stream.<job id>` (best effort, not stored).
pub const STREAM_ALL: &str = "sy.stream.*";
/// Core NATS heartbeats: `sy.heartbeat.<node>` (state, not history: not stored).
pub const HEARTBEAT_ALL: &str = "sy.heartbeat.*";

pub fn submit(priority: Priority) -> String {
    format!("sy.submit.{priority}")
}

pub fn admit(priority: Priority) -> String {
    format!("sy.admit.{priority}")
}

/// One tenant's queue of one model at one priority.
pub fn jobs(priority: Priority, model: &str, tenant: &str) -> String {
    format!("{}.{tenant}", jobs_of_model(priority, model))
}

/// The common prefix of every tenant's queue of one model at one priority.
pub fn jobs_of_model(priority: Priority, model: &str) -> String {
    format!("sy.jobs.{priority}.{}", model_token(model))
}

pub fn work(node: &str) -> String {
    format!("sy.work.{node}")
}

pub fn events(job_id: &str) -> String {
    format!("sy.events.{job_id}")
}

pub fn results(job_id: &str) -> String {
    format!("sy.results.{job_id}")
}

pub fn usage(job_id: &str) -> String {
    format!("sy.usage.{job_id}")
}

pub fn dead(job_id: &str) -> String {
    format!("sy.dead.{job_id}")
}

/// Core NATS: a streamed job's output as it is generated.
pub fn stream(job_id: &str) -> String {
    format!("sy.stream.{job_id}")
}

pub fn heartbeat(node: &str) -> String {
    format!("sy.heartbeat.{node}")
}

/// Core NATS request/reply: asks a node to load a model.
pub fn load(node: &str) -> String {
    format!("sy.load.{node}")
}

/// The priority named by the last token of an intake subject
/// (`sy.submit.<p>` or `sy.admit.<p>`).
pub fn priority_of(subject: &str) -> Option<Priority> {
    subject.rsplit('.').next()?.parse().ok()
}

/// Model names such as `llama-3.1-8b` or `org/model` are not valid subject tokens
/// or consumer names as they are. Bytes outside `[A-Za-z0-9_-]` become `%XX`, which
/// is reversible and keeps distinct names distinct.
pub fn model_token(model: &str) -> String {
    let mut out = String::with_capacity(model.len());
    for b in model.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Whether `s` may be used as a job, node or tenant id: it becomes a subject
/// token, part of message ids and of consumer names, so it is kept to a safe,
/// bounded alphabet.
pub fn is_valid_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `Nats-Msg-Id` of a job in `JOBS`: the job id for its first attempt (so a
/// client's own id de-duplicates its submission), `<id>:<attempt>` after.
pub fn queued_msg_id(job_id: &str, attempt: u32) -> String {
    if attempt <= 1 {
        job_id.to_owned()
    } else {
        attempt_msg_id(job_id, attempt)
    }
}

/// `Nats-Msg-Id` of anything produced by one attempt of a job, so that a retried
/// publish of the same attempt is dropped by the server.
pub fn attempt_msg_id(job_id: &str, attempt: u32) -> String {
    format!("{job_id}:{attempt}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_tokens_are_safe_and_distinct() {
        assert_eq!(model_token("llama-3_8b"), "llama-3_8b");
        assert_eq!(model_token("llama-3.1"), "llama-3%2E1");
        assert_eq!(model_token("org/m"), "org%2Fm");
        assert_ne!(model_token("a.b"), model_token("a%2Eb"));
        assert_eq!(
            jobs(Priority::High, "x.y", "acme"),
            "sy.jobs.high.x%2Ey.acme",
            "a dot in a model name must not add a subject token"
        );
    }

    #[test]
    fn ids_are_bounded_to_subject_safe_characters() {
        assert!(is_valid_id("0192f3a4-job_1"));
        assert!(!is_valid_id(""));
        assert!(!is_valid_id("a.b"));
        assert!(!is_valid_id("a*"));
        assert!(!is_valid_id("a b"));
        assert!(!is_valid_id(&"x".repeat(65)));
    }

    #[test]
    fn priority_is_read_from_the_last_token() {
        assert_eq!(priority_of("sy.submit.batch"), Some(Priority::Batch));
        assert_eq!(priority_of("sy.admit.critical"), Some(Priority::Critical));
        assert_eq!(priority_of("sy.submit.urgent"), None);
    }
}
