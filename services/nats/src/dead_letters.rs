//! The events consumers set aside on the dead-letter stream: reading their records, putting
//! an event back into the event stream, and removing a record once it is dealt with
//! (`threadline dead-letters list|retry`).

use crate::JetStreamLog;
use async_nats::jetstream::stream;
use async_nats::HeaderMap;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use proto_events::headers;
use threadline_ports::StoreError;

/// One set-aside event.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// Its sequence in the dead-letter stream.
    pub sequence: u64,
    pub time: DateTime<Utc>,
    /// The reason code: the last token of its subject.
    pub code: String,
    /// The reason in words.
    pub reason: String,
    /// The subject it was published on.
    pub subject: String,
    /// Its sequence in the event stream.
    pub event_sequence: Option<u64>,
    /// The payload, unless the record was too large to carry it (then empty).
    pub payload: Bytes,
    /// The payload's size when the record goes without it: the event is in the event stream
    /// at `event_sequence`.
    pub payload_omitted: Option<u64>,
}

impl DeadLetter {
    fn from_stored(message: async_nats::jetstream::message::StreamMessage) -> Self {
        let header = |name: &str| message.headers.get(name).map(|v| v.as_str().to_owned());
        let code = message
            .subject
            .rsplit('.')
            .next()
            .unwrap_or_default()
            .to_owned();
        Self {
            sequence: message.sequence,
            time: DateTime::from_timestamp(
                message.time.unix_timestamp(),
                message.time.nanosecond(),
            )
            .unwrap_or_default(),
            code,
            reason: header(headers::DEAD_LETTER_REASON).unwrap_or_default(),
            subject: header(headers::DEAD_LETTER_SUBJECT).unwrap_or_default(),
            event_sequence: header(headers::DEAD_LETTER_SEQUENCE).and_then(|s| s.parse().ok()),
            payload_omitted: header(headers::DEAD_LETTER_PAYLOAD_OMITTED)
                .and_then(|s| s.parse().ok()),
            payload: message.payload,
        }
    }
}

async fn dead_letter_stream(log: &JetStreamLog) -> Result<stream::Stream, StoreError> {
    log.jetstream()
        .get_stream(&log.settings().dead_letter_stream)
        .await
        .map_err(StoreError::nats)
}

/// The payload to re-publish: the record's own, or, when the record went without it, the
/// event's from the event stream. The inner error says why there is none.
pub async fn original_payload(
    log: &JetStreamLog,
    letter: &DeadLetter,
) -> Result<Result<Bytes, String>, StoreError> {
    if letter.payload_omitted.is_none() {
        return Ok(Ok(letter.payload.clone()));
    }
    let Some(sequence) = letter.event_sequence else {
        return Ok(Err(
            "the record has neither the payload nor its sequence".into()
        ));
    };
    let stream = log
        .jetstream()
        .get_stream(&log.settings().stream_name)
        .await
        .map_err(StoreError::nats)?;
    match stream.get_raw_message(sequence).await {
        Ok(message) if message.subject.as_str() == letter.subject => Ok(Ok(message.payload)),
        Ok(message) => Ok(Err(format!(
            "sequence {sequence} of {} holds another event (on {})",
            log.settings().stream_name,
            message.subject
        ))),
        Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => Ok(Err(format!(
            "its payload is no longer in {} (sequence {sequence})",
            log.settings().stream_name
        ))),
        Err(e) => Err(StoreError::nats(e)),
    }
}

/// Every set-aside event after dead-letter sequence `after`, oldest first.
pub async fn list(log: &JetStreamLog, after: u64) -> Result<Vec<DeadLetter>, StoreError> {
    let mut stream = dead_letter_stream(log).await?;
    let state = stream.info().await.map_err(StoreError::nats)?.state.clone();
    let mut out = Vec::new();
    if state.messages == 0 {
        return Ok(out);
    }
    for sequence in state.first_sequence.max(after + 1)..=state.last_sequence {
        match stream.get_raw_message(sequence).await {
            Ok(message) => out.push(DeadLetter::from_stored(message)),
            // Removed after a retry.
            Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => {}
            Err(e) => return Err(StoreError::nats(e)),
        }
    }
    Ok(out)
}

/// The dead-letter stream's last sequence: records made after it are newer.
pub async fn last_sequence(log: &JetStreamLog) -> Result<u64, StoreError> {
    let mut stream = dead_letter_stream(log).await?;
    Ok(stream
        .info()
        .await
        .map_err(StoreError::nats)?
        .state
        .last_sequence)
}

/// Publishes a set-aside event's `payload` again, to the subject it was first published on,
/// under an id of its own (the event's own one may still be in the stream's duplicate
/// window). Returns its new sequence in the event stream.
pub async fn republish(
    log: &JetStreamLog,
    letter: &DeadLetter,
    payload: Bytes,
) -> Result<u64, StoreError> {
    let mut headers = HeaderMap::new();
    headers.insert(
        headers::MSG_ID,
        format!(
            "retry-{}-{}",
            log.settings().dead_letter_stream,
            letter.sequence
        )
        .as_str(),
    );
    let ack = log
        .jetstream()
        .publish_with_headers(letter.subject.clone(), headers, payload)
        .await
        .map_err(StoreError::nats)?
        .await
        .map_err(StoreError::nats)?;
    Ok(ack.sequence)
}

/// Removes the record at dead-letter sequence `sequence`.
pub async fn remove(log: &JetStreamLog, sequence: u64) -> Result<(), StoreError> {
    dead_letter_stream(log)
        .await?
        .delete_message(sequence)
        .await
        .map_err(StoreError::nats)?;
    Ok(())
}
