//! ReadBatch: one call per part (`load`, each focus `get`, one `get_many`),
//! since a call here costs no round trip ([`chatstate_core::read_batch_by_calls`]).

use async_trait::async_trait;
use chatstate_core::{BatchRead, BatchReads, ReadBatch, Result, read_batch_by_calls};

use crate::FileStore;

#[async_trait]
impl ReadBatch for FileStore {
    async fn read_batch(&self, reads: &BatchReads) -> Result<BatchRead> {
        read_batch_by_calls(self, reads).await
    }
}
