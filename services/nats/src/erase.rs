//! What `threadline erase` removes from NATS: a thread's events, purged from the event stream
//! by subject (a purge acts on every replica of the stream), and the records of its events
//! that were set aside, found by reading every record ([`ErasableLog`]).

use crate::dead_letters;
use crate::erasures::erased_thread;
use crate::existence::next_on_subject;
use crate::JetStreamLog;
use async_nats::jetstream::stream;
use async_trait::async_trait;
use futures::TryStreamExt;
use proto_events::headers;
use threadline_ports::{ErasableLog, StoreError};
use uuid::Uuid;

impl JetStreamLog {
    async fn event_stream(&self) -> Result<stream::Stream, StoreError> {
        self.jetstream()
            .get_stream(&self.settings().stream_name)
            .await
            .map_err(StoreError::nats)
    }
}

#[async_trait]
impl ErasableLog for JetStreamLog {
    async fn erased_at(&self, thread: Uuid) -> Result<Option<u64>, StoreError> {
        let subject = self.subjects().thread_erased(thread);
        let stream = &self.settings().stream_name;
        let mut from = 1;
        while let Some(stored) = next_on_subject(self.jetstream(), stream, &subject, from).await? {
            let erased = stored.message.as_ref().and_then(|m| {
                let header = |name: &str| m.headers.get(name).map(|v| v.as_str());
                erased_thread(
                    self.subjects(),
                    m.subject.as_str(),
                    header(headers::EVENT),
                    header(headers::SCHEMA_VERSION),
                    &m.payload,
                )
            });
            if erased == Some(thread) {
                return Ok(Some(stored.sequence));
            }
            from = stored.sequence + 1;
        }
        Ok(None)
    }

    async fn thread_events(&self, thread: Uuid) -> Result<u64, StoreError> {
        let stream = self.event_stream().await?;
        let mut events = 0;
        for subject in self.subjects().thread_contents(thread) {
            let counts: Vec<(String, usize)> = stream
                .info_with_subjects(&subject)
                .await
                .map_err(StoreError::nats)?
                .try_collect()
                .await
                .map_err(StoreError::nats)?;
            events += counts.iter().map(|(_, n)| *n as u64).sum::<u64>();
        }
        Ok(events)
    }

    async fn purge_thread(&self, thread: Uuid) -> Result<u64, StoreError> {
        let stream = self.event_stream().await?;
        let mut purged = 0;
        for subject in self.subjects().thread_contents(thread) {
            purged += stream
                .purge()
                .filter(subject)
                .await
                .map_err(StoreError::nats)?
                .purged;
        }
        Ok(purged)
    }

    async fn set_aside_of(&self, thread: Uuid) -> Result<Vec<u64>, StoreError> {
        let prefix = self.subjects().prefix();
        Ok(dead_letters::list(self, 0)
            .await?
            .iter()
            .filter(|letter| letter.names_thread(prefix, thread))
            .map(|letter| letter.sequence)
            .collect())
    }

    async fn remove_set_aside(&self, records: &[u64]) -> Result<(), StoreError> {
        let events = self.event_stream().await?;
        for &record in records {
            let Some(letter) = dead_letters::get(self, record).await? else {
                continue;
            };
            // The event itself, where a purge of the thread's subjects does not reach it (an
            // id spelled otherwise, another thread's subject); one it reached is gone already.
            if let Some(sequence) = letter.event_sequence {
                match events.get_raw_message(sequence).await {
                    Ok(event) if event.subject.as_str() == letter.subject => {
                        events
                            .delete_message(sequence)
                            .await
                            .map_err(StoreError::nats)?;
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => {}
                    Err(e) => return Err(StoreError::nats(e)),
                }
            }
            dead_letters::remove(self, record).await?;
        }
        Ok(())
    }
}
