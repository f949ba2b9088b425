//! The projector's durable pull consumer: the event log as a [`ProjectionSource`].

use crate::JetStreamLog;
use async_nats::jetstream::consumer::{self, pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::{AckKind, Message};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use proto_events::{headers, EventError, Subjects};
use std::time::{Duration, SystemTime};
use threadline_ports::{
    Backlog, Cause, Deliveries, Delivery, ProjectionSource, StoreError, StoredEvent,
};
use uuid::Uuid;

/// Room for the subject, the reply subject and the status line of a delivered message beside
/// its headers and payload (which `max_payload` bounds together).
const DELIVERY_OVERHEAD: usize = 8 << 10;

/// The `max_bytes` of a pull request for batches of `batch_bytes` (`usize::MAX`: no bound,
/// and then 0, which asks for none): never less than the largest message the server can
/// deliver, since a pull that a message does not fit in is answered `409 Message Size
/// Exceeds MaxBytes`, again and again, and that message would never come.
pub fn pull_max_bytes(batch_bytes: usize, max_payload: usize) -> usize {
    if batch_bytes >= i64::MAX as usize {
        return 0;
    }
    batch_bytes.max(max_payload.saturating_add(DELIVERY_OVERHEAD))
}

/// An event delivered by JetStream, acknowledged through its reply subject.
pub struct JetStreamDelivery(Message);

impl Delivery for JetStreamDelivery {
    fn event(&self) -> Option<StoredEvent> {
        stored_event(&self.0)
    }

    fn size(&self) -> usize {
        self.0.length
    }

    fn backlog(&self) -> Option<Backlog> {
        let info = self.0.info().ok()?;
        let stored_at = SystemTime::UNIX_EPOCH
            + Duration::from_nanos(u64::try_from(info.published.unix_timestamp_nanos()).ok()?);
        Some(Backlog {
            pending: info.pending,
            stored_at,
        })
    }
}

/// The event a JetStream message holds; `None` if it is not a message of a stream.
pub(crate) fn stored_event(message: &Message) -> Option<StoredEvent> {
    let info = message.info().ok()?;
    let header = |name: &str| {
        message
            .headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_owned())
    };
    Some(StoredEvent {
        subject: message.subject.to_string(),
        sequence: info.stream_sequence,
        event_header: header(headers::EVENT),
        version_header: header(headers::SCHEMA_VERSION),
        payload: message.payload.clone(),
    })
}

/// A consumer's step, with what it was doing when it failed.
#[derive(Debug, thiserror::Error)]
#[error("{what}")]
struct Step {
    what: &'static str,
    #[source]
    cause: Cause,
}

fn step<E: Into<Cause>>(what: &'static str) -> impl FnOnce(E) -> Step {
    move |e| Step {
        what,
        cause: e.into(),
    }
}

#[async_trait]
impl ProjectionSource for JetStreamLog {
    type Delivery = JetStreamDelivery;

    fn subjects(&self) -> &Subjects {
        JetStreamLog::subjects(self)
    }

    fn request_bytes(&self, batch_bytes: usize) -> usize {
        pull_max_bytes(batch_bytes, self.client().server_info().max_payload)
    }

    async fn deliveries(
        &self,
        batch_size: usize,
        batch_bytes: usize,
        ack_wait: Duration,
    ) -> Result<Deliveries<JetStreamDelivery>, Cause> {
        let settings = self.settings();
        let stream = self
            .jetstream()
            .get_stream(&settings.stream_name)
            .await
            .map_err(step("cannot open the event stream"))?;
        let mut consumer = stream
            .get_or_create_consumer(
                &settings.projector_consumer,
                pull::Config {
                    durable_name: Some(settings.projector_consumer.clone()),
                    description: Some("threadline projector: folds events into PostgreSQL".into()),
                    ack_policy: AckPolicy::Explicit,
                    deliver_policy: DeliverPolicy::All,
                    ack_wait,
                    max_ack_pending: 20_000,
                    ..Default::default()
                },
            )
            .await
            .map_err(step("cannot create or open the projector's consumer"))?;
        let existing = &consumer.cached_info().config;
        if existing.ack_wait != ack_wait {
            // Made by an earlier version or with another PROJECTOR_ACK_WAIT: the wait is one
            // of the settings a durable consumer may change; the rest stays as it is.
            let was = existing.ack_wait;
            let config = consumer::Config {
                ack_wait,
                ..existing.clone()
            };
            stream.create_consumer(config).await.map_err(step(
                "cannot bring the projector's consumer to PROJECTOR_ACK_WAIT",
            ))?;
            consumer = stream
                .get_consumer(&settings.projector_consumer)
                .await
                .map_err(step("cannot open the projector's consumer"))?;
            tracing::info!(
                consumer = %settings.projector_consumer,
                "the projector's consumer now waits {ack_wait:?} for an acknowledgement (it waited {was:?})"
            );
        }
        let messages = consumer
            .stream()
            .max_messages_per_batch(batch_size)
            .max_bytes_per_batch(self.request_bytes(batch_bytes))
            .heartbeat(Duration::from_secs(5))
            .messages()
            .await
            .map_err(step("cannot start consuming"))?;
        Ok(messages
            .map(|m| m.map(JetStreamDelivery).map_err(Cause::from))
            .boxed())
    }

    async fn acknowledge(&self, deliveries: &[JetStreamDelivery]) {
        for delivery in deliveries {
            if let Err(e) = delivery.0.ack().await {
                tracing::warn!("acknowledging failed (the event will be applied again): {e}");
            }
        }
    }

    async fn keep(&self, deliveries: &[JetStreamDelivery]) {
        for delivery in deliveries {
            if let Err(e) = delivery.0.ack_with(AckKind::Progress).await {
                tracing::warn!("telling the broker an event is still being applied: {e}");
            }
        }
    }

    async fn hand_back(&self, deliveries: &[JetStreamDelivery], delay: Duration) -> usize {
        // Dropped, the consumer's message stream unsubscribes: its unsubscription is queued on
        // the connection (by a task of the client's own) before the NAKs, so that the server
        // does not deliver them again to this process's pull requests, where they would be
        // dropped and wait for the acknowledgement wait after all. The delay of each NAK
        // covers that task running late.
        tokio::task::yield_now().await;
        if let Err(e) = self.client().flush().await {
            tracing::warn!("handing back unapplied events: {e}");
        }
        let mut failed = 0usize;
        for delivery in deliveries {
            if delivery
                .0
                .ack_with(AckKind::Nak(Some(delay)))
                .await
                .is_err()
            {
                failed += 1;
            }
        }
        if let Err(e) = self.client().flush().await {
            tracing::warn!("handing back unapplied events: {e}");
        }
        failed
    }

    async fn thread_created_for(&self, thread: Uuid, from: u64) -> Result<Option<u64>, StoreError> {
        JetStreamLog::thread_created_for(self, thread, from).await
    }

    fn remember_thread(&self, thread: Uuid, sequence: u64) {
        JetStreamLog::remember_thread(self, thread, sequence)
    }

    fn erased(&self, thread: Uuid) -> bool {
        JetStreamLog::erased(self, thread)
    }

    fn remember_erasure(&self, thread: Uuid) {
        self.erasure_heard(thread)
    }

    async fn set_aside(
        &self,
        subject: &str,
        sequence: u64,
        payload: Bytes,
        reason: &EventError,
        by: &str,
    ) -> Result<bool, StoreError> {
        JetStreamLog::set_aside(self, subject, sequence, payload, reason, by).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pull_always_has_room_for_the_largest_message() {
        assert_eq!(pull_max_bytes(8 << 20, 1 << 20), 8 << 20);
        assert!(pull_max_bytes(3 << 20, 8_000_000) > 8_000_000);
        assert_eq!(pull_max_bytes(usize::MAX, 1 << 20), 0);
    }
}
