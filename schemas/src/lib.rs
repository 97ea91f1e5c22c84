//! Every message that crosses a process boundary in Switchyard, the subjects and
//! streams they travel on, and their encoding.
//!
//! Messages are MessagePack with named fields (`rmp_serde::to_vec_named`) so that
//! any language can read them and fields can be added without breaking readers.
//! Every top-level message carries [`SCHEMA_VERSION`] in its `v` field.

mod codec;
mod error;
#[cfg(any(test, feature = "test-util"))]
mod fixtures;
mod inputs;
mod messages;
mod node;
mod priority;
pub mod redact;
mod results;
pub mod subjects;

pub use codec::{CodecError, Encoding, decode, decode_submission, encode, encode_as};
pub use error::{ErrorClass, JobError};
pub use inputs::{
    ChatInput, ChatMessage, CompletionInput, EmbeddingInput, JobInput, SAMPLING_FIELDS, Sampling,
    Tensor, TensorInput,
};
pub use messages::{
    AdmitReply, Assignment, AutoscaleSignal, DeadLetter, ErrorBody, EventKind, Failure, Job,
    JobEvent, JobResult, Outcome, QueueDepth, RunningLimits, StreamChunk, Submission, Usage,
    UsageEvent, Versioned, WORKFLOW_RUN, WebhookEvent, WebhookTarget,
};
pub use node::{EngineLoad, GpuProcess, GpuStats, Heartbeat, LoadReply, LoadRequest};
pub use priority::{ParsePriorityError, Priority};
pub use results::Timeline;

/// Version of the wire format. Bumped on any change that an old reader could
/// misread; readers accept every version up to their own.
pub const SCHEMA_VERSION: u16 = 1;

/// The tenant of a job submitted without one.
pub const DEFAULT_TENANT: &str = "default";

/// Milliseconds since the Unix epoch, the one timestamp unit on the wire.
pub fn now_ms() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(now.as_millis()).unwrap_or(i64::MAX)
}
