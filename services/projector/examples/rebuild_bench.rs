//! Rebuild benchmark: fills a stream of its own with N events (default 1,000,000), rebuilds a
//! read model of its own from it, and prints the rebuild's events/s beside PostgreSQL `COPY`
//! of the same rows into tables of the same shape, in the same run, and the ratio. With
//! `--live`, it then lets the live projector replay the same stream into a fresh read model
//! (as a projector started on an empty database does) and prints its rate beside the others.
//!
//! ```sh
//! cargo run --release -p threadline-projector --example rebuild_bench -- --events 1000000 --live
//! ```
//!
//! It uses the NATS server at NATS_URL and the PostgreSQL server of DATABASE_URL, with the
//! stream `THREADLINE_BENCH` (subjects `bench.…`) and the databases `threadline_bench` and
//! `threadline_bench_live`, so it never touches a real read model. A stream that already holds
//! N events is reused.

use anyhow::Context;
use clap::Parser;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use proto_events::{new_id, UserJson};
use proto_events::{Event, MessageBody, MessagePosted, ThreadCreated, Timestamp};
use std::future::IntoFuture;
use std::sync::Arc;
use std::time::{Duration, Instant};
use threadline_nats::{JetStreamLog, NatsSettings};
use threadline_ports::EventLog;
use threadline_postgres::rebuild::{baseline, PgRebuild};
use threadline_postgres::{DatabaseSettings, PgReadModel};
use threadline_projector::rebuild::{self, Options};
use threadline_projector::Projector;
use threadline_runtime::settings::from_environment;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
struct Args {
    /// Events in the stream.
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Events per thread (one ThreadCreated, the rest MessagePosted).
    #[arg(long, default_value_t = 100)]
    per_thread: u64,
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// A PostgreSQL URL; its database name is replaced by `threadline_bench`.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/threadline"
    )]
    database_url: String,
    /// Also replay the stream with the live projector into a fresh read model (database
    /// `threadline_bench_live`, dropped first) and print its rate.
    #[arg(long)]
    live: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut nats: NatsSettings = from_environment()?;
    nats.nats_url = args.nats_url.as_str().into();
    nats.stream_name = "THREADLINE_BENCH".into();
    nats.subject_prefix = "bench".into();
    nats.dead_letter_stream = "THREADLINE_BENCH_DEAD_LETTERS".into();
    nats.projector_consumer = "threadline-bench-projector".into();
    nats.idempotency_bucket = "THREADLINE_BENCH_IDEMPOTENCY".into();
    nats.nats_timeout = Duration::from_secs(30);
    let Some((server, _)) = args.database_url.rsplit_once('/') else {
        anyhow::bail!("DATABASE_URL {:?} has no database name", args.database_url)
    };
    let mut database: DatabaseSettings = from_environment()?;
    database.database_url = format!("{server}/threadline_bench").into();
    database.database_max_connections = 4;
    database.database_timeout = Duration::from_secs(30);

    let log = JetStreamLog::connect(&nats).await?;
    fill(&log, args.events, args.per_thread.max(1)).await?;

    let options = Options {
        keep_old: false,
        switch_wait: std::time::Duration::from_secs(1),
    };
    let target = PgRebuild::open(&database).await?;
    let summary = rebuild::rebuild(&log, target, &options).await?;
    let seconds = summary.elapsed.as_secs_f64();
    let rate = summary.counts.events as f64 / seconds;
    println!(
        "rebuild: {} events ({} threads, {} messages) in {:.2} s = {:.0} events/s \
         (bulk load of {} events with index build: {:.2} s)",
        summary.counts.events,
        summary.counts.threads,
        summary.counts.messages,
        seconds,
        rate,
        summary.bulk_events,
        summary.bulk_elapsed.as_secs_f64()
    );

    let baseline::CopyBaseline {
        rows,
        copy,
        indexes,
    } = baseline::copy_baseline(&database).await?;
    let copy_rate = rows as f64 / copy.as_secs_f64();
    let with_indexes = rows as f64 / (copy + indexes).as_secs_f64();
    println!(
        "COPY of the same {rows} rows into tables of the same shape: {:.2} s = {copy_rate:.0} rows/s \
         (with the same indexes built after: {:.2} s = {with_indexes:.0} rows/s)",
        copy.as_secs_f64(),
        (copy + indexes).as_secs_f64()
    );
    println!(
        "ratio rebuild / COPY: {:.2} (against COPY with indexes: {:.2})",
        rate / copy_rate,
        rate / with_indexes
    );
    if args.live {
        let live = DatabaseSettings {
            database_url: format!("{server}/threadline_bench_live").into(),
            ..database
        };
        let (events, elapsed) = live_replay(log, &live).await?;
        let live_rate = events as f64 / elapsed.as_secs_f64();
        println!(
            "live projector: {events} events into a fresh read model in {:.2} s = {live_rate:.0} events/s; \
             ratio live / COPY: {:.2}, live / rebuild: {:.2}",
            elapsed.as_secs_f64(),
            live_rate / copy_rate,
            live_rate / rate
        );
    }
    Ok(())
}

/// Replays the whole stream with the live projector, under its default settings, into a
/// fresh read model; returns the events and the time until the last one was acknowledged.
async fn live_replay(
    log: JetStreamLog,
    database: &DatabaseSettings,
) -> anyhow::Result<(u64, Duration)> {
    baseline::drop_database(database).await?;
    let read = Arc::new(PgReadModel::connect(database).await?);
    let settings = log.settings().clone();
    let stream = log.jetstream().get_stream(&settings.stream_name).await?;
    // A consumer left by an earlier run would resume where it stopped.
    let _ = stream.delete_consumer(&settings.projector_consumer).await;
    let info = stream.get_info().await?;
    let (events, last) = (info.state.messages, info.state.last_sequence);
    let defaults = ProjectorArgs::parse_from(["projector"]);
    let log = Arc::new(log);
    let projector = Projector::new(log.clone(), read, defaults.projector);
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let running = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { projector.run(shutdown).await }
    });
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let applied = log
            .applied_through(last)
            .await
            .map_err(|e| anyhow::anyhow!("the projector's consumer: {e}"))?;
        if applied >= last {
            break;
        }
        anyhow::ensure!(!running.is_finished(), "the projector stopped");
    }
    let elapsed = started.elapsed();
    shutdown.cancel();
    running.await?;
    stream.delete_consumer(&settings.projector_consumer).await?;
    Ok((events, elapsed))
}

/// The projector's own settings, as its command line reads them.
#[derive(Debug, Parser)]
struct ProjectorArgs {
    #[command(flatten)]
    projector: threadline_projector::ProjectorSettings,
}

/// Fills the stream with `events` events, unless it holds exactly that many already.
async fn fill(log: &JetStreamLog, events: u64, per_thread: u64) -> anyhow::Result<()> {
    let mut stream = log
        .jetstream()
        .get_stream(&log.settings().stream_name)
        .await?;
    if stream.info().await?.state.messages == events {
        println!("stream holds {events} events already");
        return Ok(());
    }
    stream.purge().await?;
    let threads: Vec<uuid::Uuid> = (0..events.div_ceil(per_thread)).map(|_| new_id()).collect();
    let started = Instant::now();
    let mut pending = FuturesUnordered::new();
    let user = UserJson::from_json(r#"{"name":"Visitor","email":"visitor@example.com"}"#)?;
    for i in 0..events {
        // Threads first, then their messages round-robin, as many visitors talking at once.
        let event = if (i as usize) < threads.len() {
            Event::ThreadCreated(ThreadCreated {
                id: threads[i as usize],
                user: user.clone(),
                timestamp: Timestamp::now(),
            })
        } else {
            Event::MessagePosted(MessagePosted {
                id: new_id(),
                user: user.clone(),
                timestamp: Timestamp::now(),
                body: MessageBody::new(format!("Hello, this is message number {i}."))?,
                send_by_user: i % 2 == 0,
                thread: threads[i as usize % threads.len()],
            })
        };
        let encoded = event.encode();
        let subject = log
            .subjects()
            .event(encoded.event().thread(), encoded.event().kind());
        pending.push(
            log.jetstream()
                .publish(subject, encoded.payload().clone())
                .await?
                .into_future(),
        );
        if pending.len() >= 4096 {
            pending.next().await.context("ack")??;
        }
    }
    while let Some(ack) = pending.next().await {
        ack?;
    }
    println!(
        "filled the stream with {events} events in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
