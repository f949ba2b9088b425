//! `threadline events tail|publish`: the event stream as operators and integrators see it.
//!
//! `tail` prints events (sequence, subject, payload) as they are stored; `publish` appends a
//! well-formed event (an agent's reply, or a payload from a file) exactly as an outside
//! publisher would, after checking it as every consumer will.

use super::{CommandError, Outcome};
use clap::Args;
use futures::StreamExt;
use proto_events::{new_id, Event, EventKind, MessageBody, MessagePosted, Timestamp, UserJson};
use serde_json::json;
use std::path::PathBuf;
use std::time::Duration;
use threadline_nats::events::{tail, TailStart};
use threadline_nats::{JetStreamLog, NatsSettings};
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
pub async fn run_tail(settings: &TailSettings, shutdown: CancellationToken) -> Outcome {
    let log = JetStreamLog::connect(&settings.nats).await?;
    let start = match (settings.from_seq, settings.since) {
        (Some(sequence), _) => TailStart::Sequence(sequence),
        (None, Some(ago)) => TailStart::Since(ago),
        (None, None) => TailStart::New,
    };
    let mut events = tail(&log, start, settings.thread).await?;
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => return Ok(true),
            next = events.next() => next,
        };
        let Some(next) = next else {
            return Err(StoreError::nats("the event stream's consumer ended").into());
        };
        let event = next?;
        let sequence = event.sequence;
        let payload = String::from_utf8_lossy(&event.payload);
        if settings.json {
            let payload = serde_json::from_str::<serde_json::Value>(&payload)
                .unwrap_or_else(|_| serde_json::Value::String(payload.to_string()));
            println!(
                "{}",
                json!({"sequence": sequence, "subject": event.subject, "payload": payload})
            );
        } else {
            println!(
                "{sequence} {} {}",
                event.subject,
                payload.replace(['\n', '\r'], " ")
            );
        }
    }
}

/// Publishes one event and prints its sequence and payload.
pub async fn run_publish(settings: &PublishSettings) -> Outcome {
    let event = match (&settings.file, settings.thread, &settings.body) {
        (Some(path), _, _) => event_from_file(path)?,
        (None, Some(thread), Some(body)) => {
            let user = UserJson::from_json(&json!({ "name": settings.agent }).to_string())
                .map_err(|e| CommandError::Invalid(format!("--agent: {e}")))?;
            let body = MessageBody::new(body.clone())
                .map_err(|e| CommandError::Invalid(format!("the body: {e}")))?;
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
            return Err(CommandError::Invalid(
                "give a THREAD and a BODY, or --file".into(),
            ))
        }
    };
    let log = JetStreamLog::connect(&settings.nats).await?;
    if event.kind() == EventKind::MessagePosted && !log.thread_exists(event.thread()).await? {
        return Err(CommandError::Invalid(format!(
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
fn event_from_file(path: &PathBuf) -> Result<Event, CommandError> {
    let payload = std::fs::read(path)
        .map_err(|e| CommandError::Invalid(format!("cannot read {}: {e}", path.display())))?;
    let value: serde_json::Value = serde_json::from_slice(&payload)
        .map_err(|e| CommandError::Invalid(format!("{} is not JSON: {e}", path.display())))?;
    let (thread, kind) = match (value.get("thread"), value.get("id")) {
        (Some(thread), _) => (thread, EventKind::MessagePosted),
        (None, Some(id)) => (id, EventKind::ThreadCreated),
        (None, None) => {
            return Err(CommandError::Invalid(format!(
                "{} has neither `thread` (MessagePosted) nor `id` (ThreadCreated)",
                path.display()
            )))
        }
    };
    let thread = thread
        .as_str()
        .and_then(|t| Uuid::try_parse(t).ok())
        .ok_or_else(|| {
            CommandError::Invalid(format!("{}: {thread} is not a thread id", path.display()))
        })?;
    let subjects = proto_events::Subjects::default();
    Event::decode(
        &subjects,
        &subjects.event(thread, kind),
        None,
        None,
        &payload,
    )
    .map_err(|e| CommandError::Invalid(format!("{} is not a valid event: {e}", path.display())))
}
