//! `threadline events tail|publish`: the event stream as operators and integrators see it.
//!
//! `tail` prints events (sequence, subject, payload) as they are stored; `publish` appends a
//! well-formed event (an agent's reply, or a payload from a file) exactly as an outside
//! publisher would, after checking it as every consumer will.

use crate::{JetStreamLog, NatsSettings};
use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use clap::Args;
use futures::StreamExt;
use proto_events::{new_id, Event, EventKind, MessageBody, MessagePosted, Timestamp, UserJson};
use serde_json::json;
use std::path::PathBuf;
use std::time::Duration;
use threadline_ports::settings::parse_duration;
use threadline_ports::{EventLog, StoreError};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// `threadline events tail`.
#[derive(Debug, Clone, Args)]
pub struct TailSettings {
    /// Only the events of this thread.
    #[arg(long)]
    pub thread: Option<Uuid>,
    /// Start at this stream sequence (default: only events stored from now on).
    #[arg(long, conflicts_with = "since")]
    pub from_seq: Option<u64>,
    /// Start with the events stored this long ago (250ms, 5s, 2m).
    #[arg(long, value_parser = parse_duration)]
    pub since: Option<Duration>,
    /// One JSON object per line instead of `SEQUENCE SUBJECT PAYLOAD`.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub nats: NatsSettings,
}

/// `threadline events publish`.
#[derive(Debug, Clone, Args)]
pub struct PublishSettings {
    /// The thread an agent's reply goes to.
    #[arg(required_unless_present = "file", conflicts_with = "file")]
    pub thread: Option<Uuid>,
    /// The text of the agent's reply.
    #[arg(required_unless_present = "file")]
    pub body: Option<String>,
    /// The agent's name, shown as the reply's `user`.
    #[arg(long, default_value = "Support agent")]
    pub agent: String,
    /// Publish this file's payload instead: a `MessagePosted` (it has a `thread` field) or
    /// a `ThreadCreated` event's JSON, as proto-events/PUBLISHING.md describes.
    #[arg(long)]
    pub file: Option<PathBuf>,
    #[command(flatten)]
    pub nats: NatsSettings,
}

/// Prints events as they are stored, until `shutdown` fires.
pub async fn run_tail(
    settings: &TailSettings,
    shutdown: CancellationToken,
) -> Result<bool, StoreError> {
    let log = JetStreamLog::connect(&settings.nats).await?;
    let deliver_policy = match (settings.from_seq, settings.since) {
        (Some(start_sequence), _) => DeliverPolicy::ByStartSequence {
            start_sequence: start_sequence.max(1),
        },
        (None, Some(ago)) => {
            let start = std::time::SystemTime::now()
                .checked_sub(ago)
                .unwrap_or(std::time::UNIX_EPOCH);
            DeliverPolicy::ByStartTime {
                start_time: time::OffsetDateTime::from(start),
            }
        }
        (None, None) => DeliverPolicy::New,
    };
    // nats-server 2.9 takes one filter per consumer, and a thread's events are on two
    // subjects: one ordered consumer per subject, merged.
    let filters = match settings.thread {
        Some(thread) => vec![
            log.subjects().thread_created(thread),
            log.subjects().message_posted(thread),
        ],
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
    let mut messages = futures::stream::select_all(feeds);
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => return Ok(true),
            next = messages.next() => next,
        };
        let Some(next) = next else {
            return Err(StoreError::nats("the event stream's consumer ended"));
        };
        let message = next.map_err(StoreError::nats)?;
        let sequence = message.info().map(|i| i.stream_sequence).unwrap_or(0);
        let payload = String::from_utf8_lossy(&message.payload);
        if settings.json {
            let payload = serde_json::from_str::<serde_json::Value>(&payload)
                .unwrap_or_else(|_| serde_json::Value::String(payload.to_string()));
            println!(
                "{}",
                json!({"sequence": sequence, "subject": message.subject.as_str(), "payload": payload})
            );
        } else {
            println!(
                "{sequence} {} {}",
                message.subject,
                payload.replace(['\n', '\r'], " ")
            );
        }
    }
}

/// Publishes one event and prints its sequence and payload.
pub async fn run_publish(settings: &PublishSettings) -> Result<bool, StoreError> {
    let event = match (&settings.file, settings.thread, &settings.body) {
        (Some(path), _, _) => event_from_file(path)?,
        (None, Some(thread), Some(body)) => {
            let user = UserJson::from_json(&json!({ "name": settings.agent }).to_string())
                .map_err(|e| StoreError::Invalid(format!("--agent: {e}")))?;
            let body = MessageBody::new(body.clone())
                .map_err(|e| StoreError::Invalid(format!("the body: {e}")))?;
            Event::MessagePosted(MessagePosted {
                id: new_id(),
                user,
                timestamp: Timestamp::now(),
                body,
                send_by_user: false,
                thread,
            })
        }
        _ => {
            return Err(StoreError::Invalid(
                "give a THREAD and a BODY, or --file".into(),
            ))
        }
    };
    let log = JetStreamLog::connect(&settings.nats).await?;
    if event.kind() == EventKind::MessagePosted && !log.thread_exists(event.thread()).await? {
        return Err(StoreError::Invalid(format!(
            "thread {} does not exist",
            event.thread()
        )));
    }
    let encoded = event.encode();
    let sequence = log.append(&encoded).await?;
    println!(
        "{sequence} {} {}",
        log.subjects()
            .event(encoded.event().thread(), encoded.event().kind()),
        String::from_utf8_lossy(encoded.payload())
    );
    Ok(true)
}

/// Reads an event's payload from a file and checks it as consumers will.
fn event_from_file(path: &PathBuf) -> Result<Event, StoreError> {
    let payload = std::fs::read(path)
        .map_err(|e| StoreError::Invalid(format!("cannot read {}: {e}", path.display())))?;
    let value: serde_json::Value = serde_json::from_slice(&payload)
        .map_err(|e| StoreError::Invalid(format!("{} is not JSON: {e}", path.display())))?;
    let (thread, kind) = match (value.get("thread"), value.get("id")) {
        (Some(thread), _) => (thread, EventKind::MessagePosted),
        (None, Some(id)) => (id, EventKind::ThreadCreated),
        (None, None) => {
            return Err(StoreError::Invalid(format!(
                "{} has neither `thread` (MessagePosted) nor `id` (ThreadCreated)",
                path.display()
            )))
        }
    };
    let thread = thread
        .as_str()
        .and_then(|t| Uuid::try_parse(t).ok())
        .ok_or_else(|| {
            StoreError::Invalid(format!("{}: {thread} is not a thread id", path.display()))
        })?;
    let subjects = proto_events::Subjects::default();
    Event::decode(
        &subjects,
        &subjects.event(thread, kind),
        None,
        None,
        &payload,
    )
    .map_err(|e| StoreError::Invalid(format!("{} is not a valid event: {e}", path.display())))
}
