//! `threadline verify`: folds the stream afresh and compares the result with the serving read
//! model, thread by thread and message by message.
//!
//! Safe on a live system: it first notes the stream's last sequence L, waits (bounded) until
//! the live projector has applied everything up to L, folds only events up to L into
//! temporary tables of its own session, and ignores serving rows that came from events after
//! L. Nothing it does is visible to anyone else.

use crate::copy::{self, CopyWriter};
use crate::progress::Progress;
use crate::replay::{self, Counts, EventReader, ReplayFold};
use crate::tables;
use crate::ProjectorError;
use clap::Args;
use serde::Serialize;
use std::time::{Duration, Instant};
use threadline_nats::{JetStreamLog, NatsSettings};
use threadline_ports::settings::parse_duration;
use threadline_ports::EventLog;
use threadline_postgres::{DatabaseSettings, PgReadModel};
use uuid::Uuid;

/// What `threadline verify` needs.
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

/// A row that the serving read model has wrong.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Difference {
    /// `thread` or `message`.
    pub kind: String,
    pub id: Uuid,
    /// `missing` (the stream has it, the read model not), `extra` (the other way round) or
    /// `different`.
    pub problem: String,
    /// The columns that differ, for `different`.
    pub fields: Vec<String>,
}

/// What `verify` found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Events up to this stream sequence were compared.
    pub through: u64,
    pub events: u64,
    pub threads: u64,
    pub messages: u64,
    pub differences: Vec<Difference>,
}

/// Compares the serving read model with a fresh fold of the stream.
pub async fn verify(settings: &VerifySettings) -> Result<Report, ProjectorError> {
    let log = JetStreamLog::connect(&settings.nats).await?;
    PgReadModel::connect(&settings.database)
        .await?
        .pool()
        .close()
        .await;
    let (first, through) = replay::stream_bounds(&log).await?;
    wait_for_projector(&log, through, settings.wait).await?;

    let mut conn = copy::bulk_connection(&settings.database).await?;
    let serving = tables::serving_schema(&mut conn).await?;
    tables::create_like(&mut conn, "pg_temp", &serving).await?;
    let total = if through >= first {
        through - first + 1
    } else {
        0
    };
    let progress = Progress::new("verify", total);
    let mut reader = EventReader::open(&log, first).await?;
    let mut fold = ReplayFold::new();
    let writer = CopyWriter::start(conn, "pg_temp");
    let mut conn = replay::load(&mut reader, &mut fold, writer, through, &progress).await?;
    progress.phase("comparing");
    sqlx::raw_sql("ANALYZE pg_temp.threads; ANALYZE pg_temp.messages")
        .execute(&mut conn)
        .await
        .map_err(ProjectorError::database)?;
    let differences = compare(&mut conn, &serving, through).await?;
    progress.finish();
    let Counts {
        events,
        threads,
        messages,
        ..
    } = fold.counts;
    Ok(Report {
        through,
        events,
        threads,
        messages,
        differences,
    })
}

/// Waits until the live projector's consumer has acknowledged every event up to `through`.
async fn wait_for_projector(
    log: &impl EventLog,
    through: u64,
    wait: Duration,
) -> Result<(), ProjectorError> {
    if through == 0 {
        return Ok(());
    }
    let started = Instant::now();
    loop {
        let applied = log.applied_through(through).await.unwrap_or(0);
        if applied >= through {
            return Ok(());
        }
        if started.elapsed() >= wait {
            return Err(ProjectorError::ProjectorBehind {
                applied,
                wanted: through,
                waited: wait,
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn compare(
    conn: &mut sqlx::PgConnection,
    serving: &str,
    through: u64,
) -> Result<Vec<Difference>, ProjectorError> {
    let serving = tables::quote(serving);
    let through = i64::try_from(through).unwrap_or(i64::MAX);
    let mut differences = Vec::new();
    // A row's key: a thread's id; a message's thread and id.
    for (kind, table, key, columns) in [
        (
            "thread",
            "threads",
            "f.id = s.id",
            &["user_json", "created_at", "stream_seq"][..],
        ),
        (
            "message",
            "messages",
            "f.thread_id = s.thread_id AND f.id = s.id",
            &[
                "user_json",
                "body",
                "send_by_user",
                "created_at",
                "stream_seq",
                "json",
            ][..],
        ),
    ] {
        // A message's stored JSON may be missing (a row written before the column, or by an
        // older projector): the API then renders it from the other columns.
        let differing = columns
            .iter()
            .map(|&c| match c {
                "json" => "CASE WHEN s.json IS NOT NULL AND f.json IS DISTINCT FROM s.json \
                           THEN 'json' END"
                    .to_owned(),
                c => format!("CASE WHEN f.{c} IS DISTINCT FROM s.{c} THEN '{c}' END"),
            })
            .collect::<Vec<_>>()
            .join(", ");
        let statement = format!(
            "SELECT id, problem, fields FROM ( \
               SELECT coalesce(f.id, s.id) AS id, \
                 CASE WHEN s.id IS NULL THEN 'missing' WHEN f.id IS NULL THEN 'extra' \
                      ELSE 'different' END AS problem, \
                 array_remove(ARRAY[{differing}]::text[], NULL) AS fields, \
                 s.stream_seq AS serving_seq \
               FROM pg_temp.{table} f FULL JOIN {serving}.{table} s ON {key} \
             ) d \
             WHERE problem = 'missing' \
                OR (problem = 'extra' AND serving_seq <= $1) \
                OR (problem = 'different' AND cardinality(fields) > 0) \
             ORDER BY problem, id"
        );
        let rows: Vec<(Uuid, String, Vec<String>)> = sqlx::query_as(&statement)
            .bind(through)
            .fetch_all(&mut *conn)
            .await
            .map_err(ProjectorError::database)?;
        differences.extend(rows.into_iter().map(|(id, problem, fields)| Difference {
            kind: kind.to_owned(),
            id,
            fields: if problem == "different" {
                fields
            } else {
                Vec::new()
            },
            problem,
        }));
    }
    Ok(differences)
}

/// `threadline verify`: prints what differs; `Ok(false)` if anything does.
pub async fn run(settings: &VerifySettings) -> Result<bool, ProjectorError> {
    let report = verify(settings).await?;
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
