//! Where the API remembers the requests it answered under an `Idempotency-Key`.

use crate::StoreError;
use async_trait::async_trait;
use bytes::Bytes;

/// Picks records by their bytes (the API knows their layout; the store does not).
pub type RecordFilter<'a> = &'a (dyn Fn(&[u8]) -> bool + Send + Sync);

/// What the API needs from the idempotency store, and what erasing a thread removes from it.
#[async_trait]
pub trait IdempotencyStore: Send + Sync + 'static {
    /// Stores `record` under `key` unless the key holds a record already; that record if so.
    async fn claim(&self, key: &str, record: Bytes) -> Result<Option<Bytes>, StoreError>;

    /// The record under `key`, if the key holds one, claiming nothing.
    async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError>;
    /// The keys of the records that `wanted` picks, among every record the store holds now.
    /// Reads every record: its cost grows with the store, which its bound and window limit.
    async fn keys_of(&self, wanted: RecordFilter<'_>) -> Result<Vec<String>, StoreError>;

    /// Removes the records under `keys` for good: a later claim of one of them finds none.
    /// Removing a key that holds no record changes nothing.
    async fn remove(&self, keys: &[String]) -> Result<(), StoreError>;
}
