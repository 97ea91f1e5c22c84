//! A node's part played from a test: the platform's grants' key, read as a
//! broker reads it, to make the proofs a node would attach.

use super::Stack;
use switchyard_runtime::NatsConfig;
use switchyard_runtime::grants::Grants;

impl Stack {
    pub async fn grants(&self) -> Grants {
        let js = async_nats::jetstream::new(self.nats.client().await);
        Grants::load(&js, &NatsConfig::default())
            .await
            .expect("the grants' key")
    }
}
