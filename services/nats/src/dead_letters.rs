//! `threadline dead-letters list|retry`: the events consumers set aside, and putting them back
//! into the event stream once their cause is fixed.
//!
//! A retry re-publishes the event to the subject it was first published on (the record's
//! headers say which), waits until the projector has dealt with it, and then removes the old
//! record: the event was applied, or it was set aside again under a new record with its new
//! reason. Until then the old record stays, so an interrupted retry loses nothing.

use crate::{JetStreamLog, NatsSettings};
use async_nats::jetstream::stream;
use async_nats::HeaderMap;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use clap::Args;
use proto_events::headers;
use serde_json::json;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use threadline_ports::settings::parse_duration;
use threadline_ports::{EventLog, StoreError};

/// `threadline dead-letters list`.
#[derive(Debug, Clone, Args)]
pub struct ListSettings {
    /// Print JSON (an array of objects) instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub nats: NatsSettings,
}

/// `threadline dead-letters retry`.
#[derive(Debug, Clone, Args)]
pub struct RetrySettings {
    /// Retry only events set aside for this reason (the code `list` shows, e.g.
    /// `unknown_thread`).
    #[arg(long)]
    pub reason: Option<String>,
    /// How long to wait for the projector to deal with the re-published events.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub wait: Duration,
    /// Sequences in the dead-letter stream (as `list` shows them); none: every one that
    /// `--reason` selects, or all.
    pub sequences: Vec<u64>,
    #[command(flatten)]
    pub nats: NatsSettings,
}

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

    /// The first characters of the payload, on one line; where the payload is when the
    /// record goes without it.
    pub fn preview(&self, chars: usize) -> String {
        if let Some(size) = self.payload_omitted {
            let at = self
                .event_sequence
                .map_or_else(|| "?".to_owned(), |s| s.to_string());
            return format!("({size} bytes, in the event stream at sequence {at})");
        }
        let text = String::from_utf8_lossy(&self.payload);
        let mut out: String = text
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(chars)
            .collect();
        if text.chars().count() > chars {
            out.push('…');
        }
        out
    }

    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "sequence": self.sequence,
            "time": self.time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "reason": self.code,
            "detail": self.reason,
            "subject": self.subject,
            "event_sequence": self.event_sequence,
            "payload": match self.payload_omitted {
                Some(_) => serde_json::Value::Null,
                None => String::from_utf8_lossy(&self.payload).into(),
            },
            "payload_bytes": self.payload_omitted.unwrap_or(self.payload.len() as u64),
            "payload_omitted": self.payload_omitted.is_some(),
        })
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
async fn original_payload(
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

/// `threadline dead-letters list`: prints the set-aside events.
pub async fn run_list(settings: &ListSettings) -> Result<bool, StoreError> {
    let log = JetStreamLog::connect(&settings.nats).await?;
    let letters = list(&log, 0).await?;
    if settings.json {
        let all: Vec<_> = letters.iter().map(DeadLetter::to_json).collect();
        println!("{}", serde_json::Value::Array(all));
        return Ok(true);
    }
    if letters.is_empty() {
        println!("no events are set aside");
        return Ok(true);
    }
    println!(
        "{:>8}  {:<27}  {:<18}  {:>8}  {:<60}  PAYLOAD",
        "SEQ", "TIME", "REASON", "EVENT", "SUBJECT"
    );
    for letter in &letters {
        println!(
            "{:>8}  {:<27}  {:<18}  {:>8}  {:<60}  {}",
            letter.sequence,
            letter
                .time
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            letter.code,
            letter
                .event_sequence
                .map(|s| s.to_string())
                .unwrap_or_else(|| "-".into()),
            letter.subject,
            letter.preview(60)
        );
    }
    Ok(true)
}

/// `threadline dead-letters retry`: re-publishes the selected events and reports each one's
/// fate. `Ok(false)` when any is still set aside or was not dealt with in time.
pub async fn run_retry(settings: &RetrySettings) -> Result<bool, StoreError> {
    let log = JetStreamLog::connect(&settings.nats).await?;
    let letters = list(&log, 0).await?;
    for wanted in &settings.sequences {
        if !letters.iter().any(|l| l.sequence == *wanted) {
            return Err(StoreError::Invalid(format!(
                "no set-aside event has sequence {wanted} in {}",
                log.settings().dead_letter_stream
            )));
        }
    }
    let selected: Vec<&DeadLetter> = letters
        .iter()
        .filter(|l| settings.sequences.is_empty() || settings.sequences.contains(&l.sequence))
        .filter(|l| settings.reason.as_ref().map_or(true, |r| *r == l.code))
        .collect();
    if selected.is_empty() {
        println!("no set-aside event matches");
        return Ok(true);
    }
    let mut stream = dead_letter_stream(&log).await?;
    let before = stream
        .info()
        .await
        .map_err(StoreError::nats)?
        .state
        .last_sequence;

    let mut republished = Vec::new();
    let mut all_well = true;
    for letter in selected {
        if log.subjects().parse(&letter.subject).is_err() {
            println!(
                "{}: not retried: {:?} is not an event subject",
                letter.sequence, letter.subject
            );
            all_well = false;
            continue;
        }
        let payload = match original_payload(&log, letter).await? {
            Ok(payload) => payload,
            Err(why) => {
                println!("{}: not retried: {why}", letter.sequence);
                all_well = false;
                continue;
            }
        };
        let mut headers = HeaderMap::new();
        // Its own id: the event's own one may still be in the stream's duplicate window.
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
        republished.push((letter, ack.sequence));
    }
    let Some(last) = republished.iter().map(|(_, s)| *s).max() else {
        return Ok(all_well);
    };

    // The projector sets an event aside before it acknowledges it: once the acknowledgement
    // floor has passed the last re-published event, every new record is there.
    let started = Instant::now();
    loop {
        if log.applied_through(last).await? >= last {
            break;
        }
        if started.elapsed() >= settings.wait {
            println!(
                "the projector has not dealt with the re-published events within {:?} \
                 (is it running?); their records stay in {}",
                settings.wait,
                log.settings().dead_letter_stream
            );
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let again: HashMap<u64, DeadLetter> = list(&log, before)
        .await?
        .into_iter()
        .filter_map(|l| l.event_sequence.map(|s| (s, l)))
        .collect();
    for (letter, sequence) in republished {
        match again.get(&sequence) {
            Some(new) => {
                all_well = false;
                println!(
                    "{}: set aside again as {} ({}); now {}",
                    letter.sequence, new.code, new.reason, new.sequence
                );
            }
            None => println!("{}: applied (event sequence {sequence})", letter.sequence),
        }
        stream
            .delete_message(letter.sequence)
            .await
            .map_err(StoreError::nats)?;
    }
    Ok(all_well)
}
