//! `threadline dead-letters list|retry`: the events consumers set aside, and putting them back
//! into the event stream once their cause is fixed.
//!
//! A retry re-publishes the event to the subject it was first published on (the record's
//! headers say which), waits until the projector has dealt with it, and then removes the old
//! record: the event was applied, or it was set aside again under a new record with its new
//! reason. Until then the old record stays, so an interrupted retry loses nothing.

use super::{CommandError, Outcome};
use clap::Args;
use serde_json::json;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use threadline_nats::dead_letters::{self, DeadLetter};
use threadline_nats::{JetStreamLog, NatsSettings};
use threadline_ports::settings::parse_duration;
use threadline_ports::EventLog;

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

/// The first characters of the payload, on one line; where the payload is when the
/// record goes without it.
fn preview(letter: &DeadLetter, chars: usize) -> String {
    if let Some(size) = letter.payload_omitted {
        let at = letter
            .event_sequence
            .map_or_else(|| "?".to_owned(), |s| s.to_string());
        return format!("({size} bytes, in the event stream at sequence {at})");
    }
    let text = String::from_utf8_lossy(&letter.payload);
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

/// A set-aside event as `list --json` prints it.
fn to_json(letter: &DeadLetter) -> serde_json::Value {
    json!({
        "sequence": letter.sequence,
        "time": letter.time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "reason": letter.code,
        "detail": letter.reason,
        "subject": letter.subject,
        "event_sequence": letter.event_sequence,
        "payload": match letter.payload_omitted {
            Some(_) => serde_json::Value::Null,
            None => String::from_utf8_lossy(&letter.payload).into(),
        },
        "payload_bytes": letter.payload_omitted.unwrap_or(letter.payload.len() as u64),
        "payload_omitted": letter.payload_omitted.is_some(),
    })
}

/// `threadline dead-letters list`: prints the set-aside events.
pub async fn run_list(settings: &ListSettings) -> Outcome {
    let log = JetStreamLog::connect(&settings.nats).await?;
    let letters = dead_letters::list(&log, 0).await?;
    if settings.json {
        let all: Vec<_> = letters.iter().map(to_json).collect();
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
            preview(letter, 60)
        );
    }
    Ok(true)
}

/// `threadline dead-letters retry`: re-publishes the selected events and reports each one's
/// fate. `Ok(false)` when any is still set aside or was not dealt with in time.
pub async fn run_retry(settings: &RetrySettings) -> Outcome {
    let log = JetStreamLog::connect(&settings.nats).await?;
    let letters = dead_letters::list(&log, 0).await?;
    for wanted in &settings.sequences {
        if !letters.iter().any(|l| l.sequence == *wanted) {
            return Err(CommandError::Invalid(format!(
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
    let before = dead_letters::last_sequence(&log).await?;

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
        let payload = match dead_letters::original_payload(&log, letter).await? {
            Ok(payload) => payload,
            Err(why) => {
                println!("{}: not retried: {why}", letter.sequence);
                all_well = false;
                continue;
            }
        };
        let sequence = dead_letters::republish(&log, letter, payload).await?;
        republished.push((letter, sequence));
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
    let again: HashMap<u64, DeadLetter> = dead_letters::list(&log, before)
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
        dead_letters::remove(&log, letter.sequence).await?;
    }
    Ok(all_well)
}
