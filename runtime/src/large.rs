//! Outputs too large for a result message: the agent puts such an output in
//! the object store bucket `large-results` (kept as long as results) and
//! publishes the result with its name in `output_ref`; readers put it back
//! in place. A client reading `RESULTS` directly does the same.

use async_nats::jetstream::Context;
use async_nats::jetstream::object_store::{GetErrorKind, ObjectStore};
use sha2::{Digest, Sha256};
use switchyard_schemas::{JobResult, Outcome, encode, subjects};
use tokio::io::AsyncReadExt;

use crate::NatsConfig;
use crate::nats::NatsError;

#[derive(Debug, thiserror::Error)]
pub enum LargeError {
    #[error("cannot store a large output: {0}")]
    Put(String),
    #[error("cannot read large output {name}: {reason}")]
    Get { name: String, reason: String },
    /// It is gone: kept no longer than results are.
    #[error("large output {0} is no longer stored")]
    Gone(String),
}

/// Opens (creating if needed) the bucket; objects live as long as results.
pub async fn store(js: &Context, cfg: &NatsConfig) -> Result<ObjectStore, NatsError> {
    crate::nats::object_store(
        js,
        cfg,
        subjects::LARGE_RESULTS_BUCKET,
        cfg.result_retention,
        -1,
    )
    .await
}

/// Moves the output of `result` into the store when, encoded, it is larger
/// than `limit`.
pub async fn spill(
    store: &ObjectStore,
    result: &mut JobResult,
    limit: usize,
) -> Result<(), LargeError> {
    let Outcome::Succeeded { output, .. } = &mut result.outcome else {
        return Ok(());
    };
    if encode(&*output).map_or(usize::MAX, |b| b.len()) <= limit {
        return Ok(());
    }
    let json = serde_json::to_vec(&*output).map_err(|e| LargeError::Put(e.to_string()))?;
    let name = format!("{}.{}", result.job_id, result.attempt);
    store
        .put(name.as_str(), &mut json.as_slice())
        .await
        .map_err(|e| LargeError::Put(e.to_string()))?;
    *output = serde_json::Value::Null;
    result.output_ref = Some(name);
    result.output_sha256 = Some(hex::encode(Sha256::digest(&json)));
    Ok(())
}

/// Puts a stored output back in its result.
pub async fn resolve(store: &ObjectStore, result: &mut JobResult) -> Result<(), LargeError> {
    let Some(name) = result.output_ref.clone() else {
        return Ok(());
    };
    let failed = |reason: String| LargeError::Get {
        name: name.clone(),
        reason,
    };
    let mut object = match store.get(&name).await {
        Ok(object) => object,
        Err(e) if e.kind() == GetErrorKind::NotFound => return Err(LargeError::Gone(name)),
        Err(e) => return Err(failed(e.to_string())),
    };
    let mut json = Vec::new();
    object
        .read_to_end(&mut json)
        .await
        .map_err(|e| failed(e.to_string()))?;
    // The result's proof covers the digest, not the object: a node's user
    // can put objects in the bucket.
    if result.output_sha256.as_deref() != Some(hex::encode(Sha256::digest(&json)).as_str()) {
        return Err(failed(
            "the stored output is not the one its result names".into(),
        ));
    }
    let value = serde_json::from_slice(&json).map_err(|e| failed(e.to_string()))?;
    if let Outcome::Succeeded { output, .. } = &mut result.outcome {
        *output = value;
    }
    result.output_ref = None;
    Ok(())
}
