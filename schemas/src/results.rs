//! Making a job's result: where and when its attempt ran, and how it ended.

use crate::{JobError, JobResult, Outcome, SCHEMA_VERSION, Usage};

/// Where and when an attempt ran, for its result.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Timeline {
    pub node: Option<String>,
    pub assigned_at_ms: Option<i64>,
    pub started_at_ms: Option<i64>,
}

impl JobResult {
    /// The result of attempt `attempt` of job `job_id`, ending now.
    pub fn new(job_id: &str, attempt: u32, timeline: Timeline, outcome: Outcome) -> JobResult {
        JobResult {
            v: SCHEMA_VERSION,
            job_id: job_id.to_owned(),
            attempt,
            node: timeline.node,
            assigned_at_ms: timeline.assigned_at_ms,
            started_at_ms: timeline.started_at_ms,
            finished_at_ms: crate::now_ms(),
            outcome,
            output_ref: None,
            output_sha256: None,
            proof: None,
            usage_record: None,
        }
    }

    /// An attempt that succeeded with `output`.
    pub fn succeeded(
        job_id: &str,
        attempt: u32,
        timeline: Timeline,
        output: serde_json::Value,
        usage: Usage,
    ) -> JobResult {
        JobResult::new(
            job_id,
            attempt,
            timeline,
            Outcome::Succeeded { output, usage },
        )
    }

    /// An attempt that failed, or a job ended without one.
    pub fn failed(job_id: &str, attempt: u32, timeline: Timeline, error: JobError) -> JobResult {
        JobResult::new(job_id, attempt, timeline, Outcome::Failed { error })
    }
}
