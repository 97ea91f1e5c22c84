//! Fixtures for tests: a valid job and the results of its attempt, in one
//! place, so that a test names only what it is about.

use crate::{
    CompletionInput, Job, JobInput, JobResult, Outcome, Priority, SCHEMA_VERSION, Timeline, Usage,
    UsageEvent,
};

impl Job {
    /// A completion job `id` of model `m` for tenant `t`, at `normal`
    /// priority, on its first of three attempts, submitted at 1,000 ms.
    pub fn fixture(id: &str) -> Job {
        Job {
            v: SCHEMA_VERSION,
            id: id.to_owned(),
            model: "m".into(),
            alias: None,
            tenant: "t".into(),
            priority: Priority::Normal,
            input: JobInput::Completion(CompletionInput {
                prompt: "p".into(),
                max_tokens: Some(2),
                temperature: None,
                sampling: Default::default(),
            }),
            metadata: Default::default(),
            submitted_at_ms: 1_000,
            attempt: 1,
            max_attempts: 3,
            failures: vec![],
            deadline_ms: None,
            timeout_ms: None,
            stream: false,
            webhook: None,
            api_key: None,
            trace_id: None,
            seal: String::new(),
        }
    }
}

impl JobResult {
    /// The result of job `id`'s first attempt on node `n1`, assigned at
    /// 10 ms, started at 20 ms and finished at 50 ms.
    pub fn fixture(id: &str, outcome: Outcome) -> JobResult {
        let timeline = Timeline {
            node: Some("n1".into()),
            assigned_at_ms: Some(10),
            started_at_ms: Some(20),
        };
        JobResult {
            finished_at_ms: 50,
            ..JobResult::new(id, 1, timeline, outcome)
        }
    }
}

impl UsageEvent {
    /// Job `id`'s first attempt on `node`, of model `m`: 3 prompt and 4
    /// completion tokens in 5 ms of engine time, recorded at 6 ms.
    pub fn fixture(id: &str, node: &str) -> UsageEvent {
        UsageEvent {
            v: SCHEMA_VERSION,
            job_id: id.to_owned(),
            attempt: 1,
            node: node.to_owned(),
            model: "m".into(),
            usage: Usage {
                prompt_tokens: 3,
                completion_tokens: 4,
            },
            engine_ms: 5,
            at_ms: 6,
            proof: None,
        }
    }
}
