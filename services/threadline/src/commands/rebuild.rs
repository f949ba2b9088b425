//! `threadline rebuild`: a new read model folded from the first event beside the serving one,
//! then put in its place in one transaction (the projector's `rebuild` says how), and a
//! summary of what it did.

use clap::Args;
use std::time::Duration;
use threadline_nats::{JetStreamLog, NatsSettings};
use threadline_ports::settings::parse_duration;
use threadline_postgres::rebuild::{PgRebuild, RETIRED_SCHEMA};
use threadline_postgres::DatabaseSettings;
use threadline_projector::rebuild::{self, Options};
use threadline_projector::ProjectorError;

/// `threadline rebuild`.
#[derive(Debug, Clone, Args)]
pub struct RebuildSettings {
    /// Keep the replaced read model in schema `threadline_retired` (dropped by the next
    /// rebuild) instead of dropping it.
    #[arg(long)]
    pub keep_old: bool,
    /// How long the switch-over waits for a lock (the projector's transactions to end, a
    /// reader of the serving tables to end its transaction) before it gives way and tries
    /// again: reads of the serving tables and the projector wait at most this long for it.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub switch_wait: Duration,
    #[command(flatten)]
    pub nats: NatsSettings,
    #[command(flatten)]
    pub database: DatabaseSettings,
}

/// Rebuilds and prints a summary.
pub async fn run(settings: &RebuildSettings) -> Result<bool, ProjectorError> {
    let log = JetStreamLog::connect(&settings.nats).await?;
    let target = PgRebuild::open(&settings.database).await?;
    let options = Options {
        keep_old: settings.keep_old,
        switch_wait: settings.switch_wait,
    };
    let summary = rebuild::rebuild(&log, target, &options).await?;
    let seconds = summary.elapsed.as_secs_f64().max(1e-9);
    println!(
        "rebuilt the read model from {} events through sequence {} in {:.1} s ({:.0} events/s): \
         {} threads, {} messages, {} events passed over (invalid, repeated or of an erased thread){}; the previous read model was {}",
        summary.counts.events,
        summary.through,
        seconds,
        summary.counts.events as f64 / seconds,
        summary.counts.threads,
        summary.counts.messages,
        summary.counts.skipped,
        match summary.counts.refused {
            0 => String::new(),
            n => format!(", {n} rows refused by PostgreSQL and passed over"),
        },
        if settings.keep_old {
            format!("kept in schema {RETIRED_SCHEMA}")
        } else {
            "dropped".to_owned()
        }
    );
    Ok(true)
}
