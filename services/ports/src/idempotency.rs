//! Where the API remembers the requests it answered under an `Idempotency-Key`.

use crate::StoreError;
use async_trait::async_trait;
use bytes::Bytes;

/// What the API needs from the idempotency store.
#[async_trait]
pub trait IdempotencyStore: Send + Sync + 'static {
    /// Stores `record` under `key` unless the key holds a record already; that record if so.
    async fn claim(&self, key: &str, record: Bytes) -> Result<Option<Bytes>, StoreError>;

    /// The record under `key`, if the key holds one, claiming nothing.
    async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError>;
}
