//! Where the API remembers the requests it answered under an `Idempotency-Key`: a JetStream
//! key-value bucket, shared by every api replica, whose entries expire after the window.
//!
//! The store knows nothing of HTTP: a claim puts a record under a key unless one is there
//! already, and hands back the record that was there. Creating an entry is atomic in
//! JetStream (an expected last sequence of 0), so of two replicas racing for one key, one
//! wins and the other reads the winner's record.

use crate::{JetStreamLog, StoreError};
use async_nats::jetstream::{kv, stream};
use async_trait::async_trait;
use bytes::Bytes;
use std::time::Duration;

/// What the API needs from the idempotency store.
#[async_trait]
pub trait IdempotencyStore: Send + Sync + 'static {
    /// Stores `record` under `key` unless the key holds a record already; that record if so.
    async fn claim(&self, key: &str, record: Bytes) -> Result<Option<Bytes>, StoreError>;
}

/// The idempotency store in a JetStream key-value bucket.
pub struct KvIdempotency {
    store: kv::Store,
    timeout: Duration,
}

impl KvIdempotency {
    /// Opens the bucket `bucket`, creating it with entries kept for `window` if it is missing.
    pub async fn open(
        log: &JetStreamLog,
        bucket: &str,
        window: Duration,
    ) -> Result<Self, StoreError> {
        let jetstream = log.jetstream();
        // The bucket's stream, as async-nats' create_key_value would make it: that call first
        // reads the account's info, which async-nats 0.42 cannot parse from nats-server 2.9.
        // Replicated as the event stream is (STREAM_REPLICAS): a record lost with a server
        // would let a retry append its message twice. An existing bucket follows changes of
        // the replicas and of the window.
        crate::event_log::ensure_stream(
            jetstream,
            stream::Config {
                name: format!("KV_{bucket}"),
                description: Some("threadline: requests answered under an Idempotency-Key".into()),
                subjects: vec![format!("$KV.{bucket}.>")],
                max_messages_per_subject: 1,
                max_age: window,
                storage: stream::StorageType::File,
                allow_rollup: true,
                deny_delete: true,
                allow_direct: true,
                discard: stream::DiscardPolicy::New,
                num_replicas: log.settings().stream_replicas.into(),
                // No byte limit, as the server stores it: so that an unchanged bucket is not
                // updated on every start.
                max_bytes: -1,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| StoreError::nats(format!("cannot create key-value bucket {bucket}: {e}")))?;
        let store = jetstream
            .get_key_value(bucket)
            .await
            .map_err(|e| StoreError::nats(format!("cannot open key-value bucket {bucket}: {e}")))?;
        Ok(Self {
            store,
            timeout: log.settings().nats_timeout,
        })
    }
}

#[async_trait]
impl IdempotencyStore for KvIdempotency {
    async fn claim(&self, key: &str, record: Bytes) -> Result<Option<Bytes>, StoreError> {
        let attempt = async {
            match self.store.create(key, record).await {
                Ok(_) => Ok(None),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                    match self.store.get(key).await.map_err(StoreError::nats)? {
                        Some(existing) => Ok(Some(existing)),
                        // Expired between the two calls: the window is over for this key.
                        None => Err(StoreError::nats("idempotency record expired meanwhile")),
                    }
                }
                Err(e) => Err(StoreError::nats(e)),
            }
        };
        tokio::time::timeout(self.timeout, attempt)
            .await
            .unwrap_or_else(|_| Err(StoreError::nats("idempotency store timed out")))
    }
}
