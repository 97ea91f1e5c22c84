//! Subject and stream names: the addresses of the system. Clients in any language
//! rely on these; `docs/nats-api.md` documents them.

use crate::Priority;

/// Durable intake for NATS clients: `sy.submit.<priority>`, or
/// `sy.submit.<priority>.<tenant>` for a tenant's own NATS account.
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
/// Streamed output, kept a short while: `sy.stream.<job id>`.
pub const TOKENS_STREAM: &str = "TOKENS";

pub const SUBMIT_ALL: &str = "sy.submit.>";
pub const JOBS_ALL: &str = "sy.jobs.*.*.*";
pub const WORK_ALL: &str = "sy.work.*";
pub const EVENTS_ALL: &str = "sy.events.*";
pub const RESULTS_ALL: &str = "sy.results.*";
pub const USAGE_ALL: &str = "sy.usage.*";
pub const DEAD_ALL: &str = "sy.dead.*";
/// A job stored in its queue, told by the `JOBS` stream itself once it has
/// stored it (a republish, headers only):
/// `sy.queued.<priority>.<model token>.<tenant>`. The dispatchers' doorbell:
/// a pull sent when it rings finds the job.
pub const QUEUED_ALL: &str = "sy.queued.*.*.*";
/// The republish's destination for each subject of `JOBS_ALL`.
pub const QUEUED_FROM_JOBS: &str = "sy.queued.{{wildcard(1)}}.{{wildcard(2)}}.{{wildcard(3)}}";

/// The queue subject (`sy.jobs.…`) of a job told stored on `subject`
/// (`sy.queued.…`).
pub fn queue_of_queued(subject: &str) -> Option<String> {
    subject
        .strip_prefix("sy.queued.")
        .map(|rest| format!("sy.jobs.{rest}"))
}
/// JetStream KV bucket of cancelled job ids, watched by agents.
pub const CANCEL_BUCKET: &str = "cancelled";
/// Every model's desired-nodes signal.
pub const AUTOSCALE_ALL: &str = "sy.autoscale.*";
/// The dispatchers' desired-nodes signal for one model (core NATS).
pub fn autoscale(model: &str) -> String {
    format!("sy.autoscale.{}", model_token(model))
}

/// JetStream KV bucket of limits the brokers hand to the dispatchers.
pub const LIMITS_BUCKET: &str = "limits";
/// Its key holding the `RunningLimits`.
pub const RUNNING_LIMITS_KEY: &str = "running";
/// JetStream KV bucket of the live model registry: its one key holds the
/// aliases and their rollouts, and its revision is the registry's.
pub const MODELS_BUCKET: &str = "models";
pub const MODELS_KEY: &str = "registry";
/// What happens to rollouts (started, advanced, completed, rolled back),
/// published for operators' tools.
pub const MODEL_EVENTS: &str = "sy.models.events";
/// JetStream KV bucket of the platform's secrets (the grants' key): brokers'
/// and dispatchers' users may read it, agents' may not.
pub const SECRETS_BUCKET: &str = "secrets";
/// JetStream KV bucket of cached results, keyed by request digest.
pub const CACHE_BUCKET: &str = "result-cache";
/// JetStream object store bucket of uploaded and generated files (batches).
pub const FILES_BUCKET: &str = "files";
/// JetStream object store bucket of outputs too large for a result message.
pub const LARGE_RESULTS_BUCKET: &str = "large-results";
/// Core NATS request/reply: cancel the job named in the body.
pub const CANCEL: &str = "sy.cancel";
/// Core NATS request/reply intake: `sy.admit.<priority>[.<tenant>]`.
pub const ADMIT_ALL: &str = "sy.admit.>";
/// Core NATS request/reply: a tenant's job's result,
/// `sy.result.<tenant>.<job id>`.
pub const RESULT_REQUESTS: &str = "sy.result.*.*";
/// Streamed output, `sy.stream.<job id>`: stored in `TOKENS` for
/// `nats.token_retention`, and seen live by core subscribers.
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

/// A streamed job's output as it is generated.
pub fn stream(job_id: &str) -> String {
    format!("sy.stream.{job_id}")
}

/// Core NATS: a client resumed the stream of a call whose own client went
/// away; the broker holding the call keeps its job.
pub fn resumed(job_id: &str) -> String {
    format!("sy.resumed.{job_id}")
}

pub fn heartbeat(node: &str) -> String {
    format!("sy.heartbeat.{node}")
}

/// Core NATS request/reply: asks a node to load a model.
pub fn load(node: &str) -> String {
    format!("sy.load.{node}")
}

/// The priority and the model token (`model_token`) of a queue subject
/// `sy.jobs.<priority>.<model>.<tenant>`.
pub fn queue_of(subject: &str) -> Option<(Priority, &str)> {
    let mut tokens = subject.strip_prefix("sy.jobs.")?.split('.');
    let priority = tokens.next()?.parse().ok()?;
    let model = tokens.next()?;
    (tokens.next().is_some() && tokens.next().is_none()).then_some((priority, model))
}

/// The header of an admit request on the platform's own subject
/// (`sy.admit.<priority>`) that names the API key a job is submitted for
/// (the public id): a workflow run's model steps carry the key that started
/// the run, and that key's own limits apply to them. Read nowhere else: no
/// tenant's account reaches that subject.
pub const API_KEY_HEADER: &str = "Switchyard-Api-Key";

/// Where an intake subject sends a job: `sy.submit.<p>` and `sy.admit.<p>`
/// name a priority; `.<tenant>` after it names the tenant, which only that
/// tenant's NATS account can publish to. None when the priority is not one.
pub fn intake_of(subject: &str) -> Option<(Priority, Option<&str>)> {
    let mut tokens = subject.split('.').skip(2);
    let priority = tokens.next()?.parse().ok()?;
    let tenant = tokens.next();
    if tokens.next().is_some() || tenant.is_some_and(|t| !is_valid_id(t)) {
        return None;
    }
    Some((priority, tenant))
}

/// The tenant and the job of a result request `sy.result.<tenant>.<id>`.
pub fn result_request_of(subject: &str) -> Option<(&str, &str)> {
    let mut tokens = subject.strip_prefix("sy.result.")?.split('.');
    let (tenant, id) = (tokens.next()?, tokens.next()?);
    (tokens.next().is_none() && is_valid_id(tenant) && is_valid_id(id)).then_some((tenant, id))
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
    fn a_queue_subject_gives_its_priority_and_model_token() {
        let subject = jobs(Priority::Batch, "llama-3.1", "acme");
        assert_eq!(queue_of(&subject), Some((Priority::Batch, "llama-3%2E1")));
        assert_eq!(queue_of("sy.jobs.batch.m"), None, "no tenant");
        assert_eq!(queue_of("sy.jobs.urgent.m.t"), None, "no such priority");
        assert_eq!(queue_of("sy.work.m.t"), None);
    }

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
    fn intake_subjects_name_a_priority_and_maybe_a_tenant() {
        assert_eq!(intake_of("sy.submit.batch"), Some((Priority::Batch, None)));
        assert_eq!(
            intake_of("sy.admit.critical.acme"),
            Some((Priority::Critical, Some("acme")))
        );
        assert_eq!(intake_of("sy.submit.urgent"), None);
        assert_eq!(intake_of("sy.submit.normal.acme.more"), None);
        assert_eq!(intake_of("sy.submit.normal.a*"), None);
        assert_eq!(
            result_request_of("sy.result.acme.job-1"),
            Some(("acme", "job-1"))
        );
        assert_eq!(result_request_of("sy.result.acme"), None);
        assert_eq!(result_request_of("sy.result.acme.a.b"), None);
    }
}
