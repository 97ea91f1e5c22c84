//! Every internal message type decoded from the same bytes: whatever a
//! peer or an attacker puts on a subject, decoding answers Ok or Err.

#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_schemas::{
    Assignment, AutoscaleSignal, DeadLetter, Heartbeat, Job, JobEvent, JobResult, LoadReply,
    LoadRequest, RunningLimits, StreamChunk, Submission, UsageEvent, decode, encode,
};

/// Decodes `bytes` as `T`; a value that decodes encodes and decodes again
/// to itself.
fn round_trip<T>(bytes: &[u8])
where
    T: serde::de::DeserializeOwned + serde::Serialize + switchyard_schemas::Versioned + std::fmt::Debug,
{
    if let Ok(value) = decode::<T>(bytes) {
        let again = encode(&value).expect("a decoded value encodes");
        let back: T = decode(&again).expect("an encoded value decodes");
        assert_eq!(format!("{value:?}"), format!("{back:?}"));
    }
}

fuzz_target!(|bytes: &[u8]| {
    round_trip::<Submission>(bytes);
    round_trip::<Job>(bytes);
    round_trip::<Assignment>(bytes);
    round_trip::<JobEvent>(bytes);
    round_trip::<JobResult>(bytes);
    round_trip::<UsageEvent>(bytes);
    round_trip::<Heartbeat>(bytes);
    round_trip::<LoadRequest>(bytes);
    round_trip::<LoadReply>(bytes);
    round_trip::<DeadLetter>(bytes);
    round_trip::<StreamChunk>(bytes);
    round_trip::<AutoscaleSignal>(bytes);
    round_trip::<RunningLimits>(bytes);
});
