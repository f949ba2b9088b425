//! Where the API remembers the requests it answered under an `Idempotency-Key`: a JetStream
//! key-value bucket, shared by every api replica, whose entries expire after the window.
//!
//! The store knows nothing of HTTP: a claim puts a record under a key unless one is there
//! already, and hands back the record that was there. Creating an entry is atomic in
//! JetStream (an expected last sequence of 0), so of two replicas racing for one key, one
//! wins and the other reads the winner's record.
//!
//! The bucket is bounded (IDEMPOTENCY_MAX_BYTES): anyone may send a key, so unique keys would
//! otherwise fill the JetStream store that the event stream needs too. When it is full, new
//! records are refused ([`StoreError::Full`]) until the oldest expire, and the records it
//! holds keep their promise; requests without a key never touch it.
//!
//! Erasing a thread removes its records (`threadline erase`): a record is found by reading
//! every record in the bucket (one consumer, the latest record of each key, in one pass) and
//! asking the caller which of them hold the thread's events, since only the API knows their
//! layout; its key's subject is then purged, on every replica of the bucket. A bucket's size
//! is bounded (IDEMPOTENCY_MAX_BYTES, IDEMPOTENCY_WINDOW), and so is the cost of that read:
//! cheaper than a second record per request naming its thread, which every POST would pay.

use crate::JetStreamLog;
use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::{kv, stream, ErrorCode};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use std::time::Duration;
use threadline_ports::settings::ByteSize;
use threadline_ports::{report, IdempotencyStore, RecordFilter, StoreError};

/// The idempotency store in a JetStream key-value bucket.
pub struct KvIdempotency {
    store: kv::Store,
    client: async_nats::Client,
    timeout: Duration,
    bucket: String,
    max_bytes: ByteSize,
}

impl KvIdempotency {
    /// Opens the bucket `bucket`, creating it with entries kept for `window` and at most
    /// `max_bytes` of them (`None`: no bound) if it is missing.
    pub async fn open(
        log: &JetStreamLog,
        bucket: &str,
        window: Duration,
        max_bytes: ByteSize,
    ) -> Result<Self, StoreError> {
        let jetstream = log.jetstream();
        // The bucket's stream, as async-nats' create_key_value would make it: that call first
        // reads the account's info, which async-nats 0.42 cannot parse from nats-server 2.9.
        // Replicated as the event stream is (STREAM_REPLICAS): a record lost with a server
        // would let a retry append its message twice. An existing bucket follows changes of
        // the replicas, the window and the bound. When full, new records are refused rather
        // than old ones deleted: a record deleted early would let its retry append twice.
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
                // Reads go to the stream's leader, never a direct get that any replica may
                // answer from behind: a retry must find the record its first attempt stored
                // (the rule existence lookups follow too, see `existence`).
                allow_direct: false,
                discard: stream::DiscardPolicy::New,
                num_replicas: log.settings().stream_replicas.into(),
                // -1 is no bound, as the server stores it: so that an unchanged bucket is not
                // updated on every start.
                max_bytes: max_bytes.map_or(-1, |b| i64::try_from(b).unwrap_or(i64::MAX)),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| StoreError::nats(format!("cannot create key-value bucket {bucket}: {e}")))?;
        Self::opened(log, bucket, max_bytes).await
    }

    /// Opens the bucket `bucket` as it is, changing nothing, for an operator's command;
    /// `None` if there is none (no api has made it: it holds no record).
    pub async fn existing(log: &JetStreamLog, bucket: &str) -> Result<Option<Self>, StoreError> {
        match log.jetstream().get_stream(format!("KV_{bucket}")).await {
            Ok(_) => Self::opened(log, bucket, None).await.map(Some),
            Err(e)
                if matches!(e.kind(), GetStreamErrorKind::JetStream(error)
                if error.error_code() == ErrorCode::STREAM_NOT_FOUND) =>
            {
                Ok(None)
            }
            Err(e) => Err(StoreError::nats(format!(
                "cannot open key-value bucket {bucket}: {e}"
            ))),
        }
    }

    async fn opened(
        log: &JetStreamLog,
        bucket: &str,
        max_bytes: ByteSize,
    ) -> Result<Self, StoreError> {
        let store =
            log.jetstream().get_key_value(bucket).await.map_err(|e| {
                StoreError::nats(format!("cannot open key-value bucket {bucket}: {e}"))
            })?;
        Ok(Self {
            store,
            client: log.client().clone(),
            timeout: log.settings().nats_timeout,
            bucket: bucket.to_owned(),
            max_bytes,
        })
    }

    /// The subject of a key's records.
    fn subject(&self, key: &str) -> String {
        format!("{}{key}", self.store.prefix)
    }
}

#[async_trait]
impl IdempotencyStore for KvIdempotency {
    async fn claim(&self, key: &str, record: Bytes) -> Result<Option<Bytes>, StoreError> {
        // A record is its event and a line more; the event log refuses an event that leaves
        // less than APPEND_HEADROOM of the server's max_payload. Refused by the same margin,
        // a record is never left behind by an append that is then refused (at the price of
        // refusing the few events that would fit only without that line).
        let max = self.client.server_info().max_payload;
        if max > 0 && record.len() + APPEND_HEADROOM > max {
            return Err(StoreError::TooLarge {
                size: record.len(),
                max,
            });
        }
        let attempt = async {
            // An update expecting revision 0 is `create` without its fallback for deleted keys
            // (records are never deleted, only expired whole), and it keeps the server's
            // reason for a refusal, which `create` drops.
            match self.store.update(key, record, 0).await {
                Ok(_) => Ok(None),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    match self.store.get(key).await.map_err(StoreError::nats)? {
                        Some(existing) => Ok(Some(existing)),
                        // Expired between the two calls: the window is over for this key.
                        None => Err(StoreError::nats("idempotency record expired meanwhile")),
                    }
                }
                Err(e) if is_full(&e) => Err(StoreError::Full {
                    what: format!("the idempotency bucket {}", self.bucket),
                    cause: format!(
                        "it holds IDEMPOTENCY_MAX_BYTES ({} bytes) of records; requests with an \
                         Idempotency-Key are refused until the oldest expire (IDEMPOTENCY_WINDOW)",
                        self.max_bytes.unwrap_or_default()
                    )
                    .into(),
                }),
                Err(e) => Err(StoreError::nats(e)),
            }
        };
        tokio::time::timeout(self.timeout, attempt)
            .await
            .unwrap_or_else(|_| Err(StoreError::nats("idempotency store timed out")))
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        match tokio::time::timeout(self.timeout, self.store.get(key)).await {
            Ok(found) => found.map_err(StoreError::nats),
            Err(_) => Err(StoreError::nats("idempotency store timed out")),
        }
    }

    async fn keys_of(&self, wanted: RecordFilter<'_>) -> Result<Vec<String>, StoreError> {
        let consumer = self
            .store
            .stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: format!("{}>", self.store.prefix),
                deliver_policy: DeliverPolicy::LastPerSubject,
                ..Default::default()
            })
            .await
            .map_err(StoreError::nats)?;
        let mut keys = Vec::new();
        if consumer.cached_info().num_pending == 0 {
            return Ok(keys);
        }
        let mut records = consumer.messages().await.map_err(StoreError::nats)?;
        loop {
            let record = tokio::time::timeout(self.timeout, records.next())
                .await
                .map_err(|_| StoreError::nats("the idempotency bucket stopped answering"))?
                .ok_or_else(|| StoreError::nats("the idempotency bucket's consumer ended"))?
                .map_err(StoreError::nats)?;
            let pending = record.info().map_err(StoreError::nats)?.pending;
            // A purge or delete marker has no record.
            if !record.payload.is_empty() && wanted(&record.payload) {
                if let Some(key) = record.subject.strip_prefix(self.store.prefix.as_str()) {
                    keys.push(key.to_owned());
                }
            }
            if pending == 0 {
                return Ok(keys);
            }
        }
    }

    async fn remove(&self, keys: &[String]) -> Result<(), StoreError> {
        // A purge of the key's subject, not the bucket's delete (which the bucket denies) or
        // purge (which leaves a marker, and a claim of the key would then fail): nothing of
        // the key is left, on any replica.
        for key in keys {
            self.store
                .stream
                .purge()
                .filter(self.subject(key))
                .await
                .map_err(StoreError::nats)?;
        }
        Ok(())
    }
}

/// The room the event log keeps under the server's `max_payload` for an event's headers.
const APPEND_HEADROOM: usize = 512;

/// Whether the server refused a record because the bucket holds its most bytes (JetStream
/// answers a stream with `discard: new` that is full with "maximum bytes exceeded").
fn is_full(error: &kv::UpdateError) -> bool {
    report(error).contains("maximum bytes exceeded")
}
