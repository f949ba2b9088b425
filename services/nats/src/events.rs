//! The event stream as operators and integrators see it: events as they are stored, from a
//! point in the stream on (`threadline events tail`).

use crate::JetStreamLog;
use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use std::time::Duration;
use threadline_ports::StoreError;
use uuid::Uuid;

/// Where a tail starts.
#[derive(Debug, Clone, Copy)]
pub enum TailStart {
    /// At this stream sequence.
    Sequence(u64),
    /// With the events stored this long ago.
    Since(Duration),
    /// With the events stored from now on.
    New,
}

/// One event as the stream stored it.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub sequence: u64,
    pub subject: String,
    pub payload: Bytes,
}

/// The events stored from `start` on, of one thread or of all, as they are stored; the stream
/// ends only if the broker ends the consumer.
pub async fn tail(
    log: &JetStreamLog,
    start: TailStart,
    thread: Option<Uuid>,
) -> Result<BoxStream<'static, Result<StoredEvent, StoreError>>, StoreError> {
    let deliver_policy = match start {
        TailStart::Sequence(start_sequence) => DeliverPolicy::ByStartSequence {
            start_sequence: start_sequence.max(1),
        },
        TailStart::Since(ago) => {
            let start = std::time::SystemTime::now()
                .checked_sub(ago)
                .unwrap_or(std::time::UNIX_EPOCH);
            DeliverPolicy::ByStartTime {
                start_time: time::OffsetDateTime::from(start),
            }
        }
        TailStart::New => DeliverPolicy::New,
    };
    // nats-server 2.9 takes one filter per consumer, and a thread's events are on three
    // subjects: one ordered consumer per subject, merged.
    let filters = match thread {
        Some(thread) => log.subjects().thread_subjects(thread).to_vec(),
        None => vec![String::new()],
    };
    let stream = log
        .jetstream()
        .get_stream(&log.settings().stream_name)
        .await
        .map_err(StoreError::nats)?;
    let mut feeds = Vec::new();
    for filter_subject in filters {
        let consumer = stream
            .create_consumer(pull::OrderedConfig {
                deliver_policy,
                filter_subject,
                ..Default::default()
            })
            .await
            .map_err(StoreError::nats)?;
        feeds.push(consumer.messages().await.map_err(StoreError::nats)?);
    }
    let events = futures::stream::select_all(feeds).map(|next| {
        let message = next.map_err(StoreError::nats)?;
        Ok(StoredEvent {
            sequence: message.info().map(|i| i.stream_sequence).unwrap_or(0),
            subject: message.subject.to_string(),
            payload: message.payload.clone(),
        })
    });
    Ok(events.boxed())
}
