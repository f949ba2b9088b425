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
use uuid::Uuid;

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
    /// Whether the set-aside event belongs to `thread`: the thread token of its subject
    /// (after `<prefix>.thread.`) or the `thread` or `id` of its payload names the thread, in
    /// any spelling of its id (upper case, without hyphens: an event set aside as
    /// `bad_subject` may be spelled so).
    pub fn names_thread(&self, prefix: &str, thread: Uuid) -> bool {
        let names = |text: &str| Uuid::try_parse(text).is_ok_and(|id| id == thread);
        let in_subject = self
            .subject
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix(".thread."))
            .and_then(|rest| rest.split('.').next())
            .is_some_and(names);
        in_subject
            || serde_json::from_slice::<serde_json::Value>(&self.payload).is_ok_and(|payload| {
                ["thread", "id"].iter().any(|field| {
                    payload
                        .get(field)
                        .and_then(|v| v.as_str())
                        .is_some_and(names)
                })
            })
    }

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

/// The record at dead-letter sequence `sequence`, if it is there.
pub async fn get(log: &JetStreamLog, sequence: u64) -> Result<Option<DeadLetter>, StoreError> {
    match dead_letter_stream(log)
        .await?
        .get_raw_message(sequence)
        .await
    {
        Ok(message) => Ok(Some(DeadLetter::from_stored(message))),
        Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(StoreError::nats(e)),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    const THREAD: &str = "4b0e1d4a-c9a6-11ee-8c90-0242ac120002";

    fn letter(subject: &str, payload: &str) -> DeadLetter {
        DeadLetter {
            sequence: 1,
            time: DateTime::default(),
            code: "invalid_payload".into(),
            reason: String::new(),
            subject: subject.into(),
            event_sequence: Some(7),
            payload: Bytes::from(payload.to_owned()),
            payload_omitted: None,
        }
    }

    #[test]
    fn a_set_aside_event_names_its_thread_in_any_spelling() {
        let thread = Uuid::parse_str(THREAD).unwrap();
        let upper = THREAD.to_uppercase();
        let simple = THREAD.replace('-', "");
        let other = "5b0e1d4a-c9a6-11ee-8c90-0242ac120002";
        for (subject, payload) in [
            (
                format!("chat.thread.{THREAD}.message"),
                "garbage".to_owned(),
            ),
            (format!("chat.thread.{upper}.message"), "{}".to_owned()),
            (format!("chat.thread.{simple}.created"), String::new()),
            (
                format!("chat.thread.{other}.message"),
                format!(r#"{{"id":"{other}","thread":"{upper}"}}"#),
            ),
            (
                format!("chat.thread.{other}.created"),
                format!(r#"{{"id":"{THREAD}"}}"#),
            ),
        ] {
            assert!(
                letter(&subject, &payload).names_thread("chat", thread),
                "{subject} {payload}"
            );
        }
        for (subject, payload) in [
            (format!("chat.thread.{other}.message"), "garbage".to_owned()),
            (
                format!("other.thread.{THREAD}.message"),
                r#"{"thread":"x"}"#.to_owned(),
            ),
            (
                format!("chat.thread.{other}.message"),
                format!(r#"{{"body":"{THREAD}"}}"#),
            ),
        ] {
            assert!(
                !letter(&subject, &payload).names_thread("chat", thread),
                "{subject} {payload}"
            );
        }
    }
}
