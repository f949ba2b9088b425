//! `threadline verify`: the serving read model compared with a fresh fold of the stream (the
//! projector's `verify` says how), and what differs, as lines or as JSON.

use clap::Args;
use std::time::Duration;
use threadline_nats::{JetStreamLog, NatsSettings};
use threadline_ports::settings::parse_duration;
use threadline_postgres::rebuild::PgVerify;
use threadline_postgres::DatabaseSettings;
use threadline_projector::verify;
use threadline_projector::ProjectorError;

/// `threadline verify`.
#[derive(Debug, Clone, Args)]
pub struct VerifySettings {
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// How long to wait for the live projector to apply the events being compared.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub wait: Duration,
    #[command(flatten)]
    pub nats: NatsSettings,
    #[command(flatten)]
    pub database: DatabaseSettings,
}

/// Prints what differs; `Ok(false)` if anything does.
pub async fn run(settings: &VerifySettings) -> Result<bool, ProjectorError> {
    let log = JetStreamLog::connect(&settings.nats).await?;
    let target = PgVerify::open(&settings.database).await?;
    let report = verify::verify(&log, target, settings.wait).await?;
    if settings.json {
        println!(
            "{}",
            serde_json::to_string(&report).map_err(|e| ProjectorError::Replay(e.to_string()))?
        );
    } else {
        for d in &report.differences {
            if d.fields.is_empty() {
                println!("{} {} {}", d.kind, d.id, d.problem);
            } else {
                println!(
                    "{} {} {} ({})",
                    d.kind,
                    d.id,
                    d.problem,
                    d.fields.join(", ")
                );
            }
        }
        println!(
            "verified {} events through sequence {} ({} threads, {} messages): {}",
            report.events,
            report.through,
            report.threads,
            report.messages,
            match report.differences.len() {
                0 => "the read model matches the event stream".to_owned(),
                n => format!("{n} differences"),
            }
        );
    }
    Ok(report.differences.is_empty())
}
