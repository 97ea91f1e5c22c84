//! The content of batch files: streamed into the NATS object store as it
//! arrives and streamed out again, so neither an upload nor a download is
//! ever held whole in memory; the job store keeps their catalogue.

use std::time::Duration;

use async_nats::jetstream::Context;
use async_nats::jetstream::object_store::{DeleteError, ObjectInfo, ObjectStore, PutError};
use async_nats::jetstream::stream::Stream;
use switchyard_runtime::NatsConfig;
use switchyard_runtime::nats::NatsError;
use switchyard_schemas::subjects::FILES_BUCKET;
use tokio::io::AsyncRead;
use tokio_util::io::StreamReader;

/// The object store of files, read a chunk at a time.
#[derive(Clone)]
pub struct Files {
    store: ObjectStore,
    /// The store's own stream, for reading chunks one by one.
    stream: Stream,
}

impl Files {
    pub async fn open(js: &Context, nats: &NatsConfig) -> Result<Files, NatsError> {
        let store = switchyard_runtime::nats::object_store(
            js,
            nats,
            FILES_BUCKET,
            Duration::ZERO,
            nats.max_file_store_bytes,
        )
        .await?;
        let stream = js
            .get_stream(format!("OBJ_{FILES_BUCKET}"))
            .await
            .map_err(|e| NatsError::Bucket(e.to_string()))?;
        Ok(Files { store, stream })
    }

    pub async fn put(
        &self,
        id: &str,
        data: &mut (impl AsyncRead + Unpin),
    ) -> Result<ObjectInfo, PutError> {
        self.store.put(id, data).await
    }

    pub async fn delete(&self, id: &str) -> Result<(), DeleteError> {
        self.store.delete(id).await
    }

    /// The file's content, one chunk in memory at a time. (The object
    /// store's own reader lets the server push the whole file into the
    /// client's buffers when the reader is slower than the network.)
    pub async fn read(&self, id: &str) -> Result<impl AsyncRead + Send + Unpin + use<>, String> {
        let info = self.store.info(id).await.map_err(|e| e.to_string())?;
        let subject = format!("$O.{FILES_BUCKET}.C.{}", info.nuid);
        let stream = self.stream.clone();
        let chunks = futures::stream::try_unfold((0usize, None::<u64>), move |(read, after)| {
            let stream = stream.clone();
            let subject = subject.clone();
            async move {
                if read == info.chunks {
                    return Ok::<_, std::io::Error>(None);
                }
                let message = stream
                    .direct_get_next_for_subject(subject, after.map(|s| s + 1))
                    .await
                    .map_err(std::io::Error::other)?;
                let sequence = message.sequence;
                Ok(Some((message.payload, (read + 1, Some(sequence)))))
            }
        });
        Ok(StreamReader::new(Box::pin(chunks)))
    }
}
