//! `threadline rebuild`: a new read model, folded from the first event of the stream beside
//! the serving one, then put in its place in one transaction.
//!
//! 1. The new tables are created in schema `threadline_rebuild`, shaped like the serving ones
//!    but without indexes; the events up to the stream's last sequence at the start are folded
//!    and loaded with `COPY`; then the indexes and keys are built.
//! 2. Catch-up: the events appended meanwhile are applied as the live projector applies them,
//!    until few are left.
//! 3. Switch-over, in one transaction: take the switch lock exclusively (every projector
//!    transaction holds it shared, so none is in flight and the next ones name the new
//!    tables), apply the events up to the stream's last sequence now, lock the serving tables,
//!    give the new tables the owner and the rights of the serving ones (each role keeps
//!    exactly what it may do), move the serving tables out of the way and the new ones into the serving schema. Operators keep
//!    querying `threads` and `messages`; the api's prepared statements are re-planned against
//!    the new tables by PostgreSQL. Each lock waits at most `--switch-wait`: a lock not granted
//!    by then (a reader's open transaction holds the tables, a projector transaction hangs)
//!    rolls the try back, so that nobody queues behind it, and the switch-over says so, catches
//!    up again and tries again after a pause.
//!
//! Interrupted at any point, the serving tables are untouched: until the switch-over commits,
//! only `threadline_rebuild` has been written, and a new run drops it and starts over.

use crate::batch::{self, ranges, Limits, WritePart};
use crate::copy::{self, CopyWriter};
use crate::progress::Progress;
use crate::replay::{self, Counts, EventReader, ReplayFold};
use crate::tables::{self, quote};
use crate::ProjectorError;
use clap::Args;
use sqlx::{Connection, PgConnection};
use std::ops::Range;
use std::time::{Duration, Instant};
use threadline_nats::{JetStreamLog, NatsSettings};
use threadline_ports::settings::parse_duration;
use threadline_ports::{AppliedMessage, AppliedThread, Cause, EventReplay, StoreError};
use threadline_postgres::read_model::CHANGED_CHANNEL;
use threadline_postgres::{apply_rows, DatabaseSettings, PgReadModel, SWITCH_LOCK};

/// Where the new read model is built.
pub const BUILD_SCHEMA: &str = "threadline_rebuild";
/// Where `--keep-old` keeps the replaced read model.
pub const RETIRED_SCHEMA: &str = "threadline_retired";
/// Held for the whole run, so two rebuilds never build at once.
const REBUILD_LOCK: i64 = 0x7468_7265_6164_6c72; // "threadlr"
/// The switch-over waits until at most this many events are left to apply under its lock.
const SWITCH_GAP: u64 = 2_000;
/// The shortest and the longest pause between two tries at the switch-over.
const MIN_SWITCH_PAUSE: Duration = Duration::from_millis(100);
const MAX_SWITCH_PAUSE: Duration = Duration::from_secs(30);
/// SQLSTATE lock_not_available: a lock not granted within `lock_timeout`.
const LOCK_NOT_AVAILABLE: &str = "55P03";
/// Events per statement while catching up.
const CATCH_UP_BATCH: usize = 5_000;
/// Most bytes of rows per statement while catching up.
const CATCH_UP_BYTES: usize = 8 << 20;

/// What `threadline rebuild` needs.
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

/// What a rebuild did.
#[derive(Debug, Clone)]
pub struct Summary {
    pub counts: Counts,
    /// The stream sequence through which the new read model was built at the switch-over.
    pub through: u64,
    /// Events loaded in bulk, before the catch-up.
    pub bulk_events: u64,
    /// From the start to the switch-over.
    pub elapsed: Duration,
    /// The bulk load alone (COPY and index build).
    pub bulk_elapsed: Duration,
}

/// Rebuilds the read model from the first event; see the module's documentation.
pub async fn rebuild(settings: &RebuildSettings) -> Result<Summary, ProjectorError> {
    let started = Instant::now();
    let log = JetStreamLog::connect(&settings.nats).await?;
    // Creates the database and the serving tables if this is a fresh one.
    PgReadModel::connect(&settings.database)
        .await?
        .pool()
        .close()
        .await;
    let mut conn = copy::bulk_connection(&settings.database).await?;
    let free: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(REBUILD_LOCK)
        .fetch_one(&mut conn)
        .await
        .map_err(ProjectorError::database)?;
    if !free {
        return Err(ProjectorError::Busy);
    }
    let serving = tables::serving_schema(&mut conn).await?;
    let indexes = tables::index_statements(&mut conn, BUILD_SCHEMA, &serving).await?;
    execute(
        &mut conn,
        &format!("DROP SCHEMA IF EXISTS {BUILD_SCHEMA} CASCADE; CREATE SCHEMA {BUILD_SCHEMA}"),
    )
    .await?;
    tables::create_like(&mut conn, BUILD_SCHEMA, &serving).await?;

    let (first, last) = replay::stream_bounds(&log).await?;
    let total = if last >= first { last - first + 1 } else { 0 };
    let progress = Progress::new("rebuild", total);
    tracing::info!(
        first,
        last,
        "rebuilding the read model from events {first}..={last}"
    );
    let mut reader = EventReader::open(&log, first).await?;
    let mut fold = ReplayFold::new();
    let writer = CopyWriter::start(conn, BUILD_SCHEMA);
    let mut conn = replay::load(&mut reader, &mut fold, writer, last, &progress).await?;
    let bulk_events = fold.counts.events;
    progress.phase("building indexes");
    for statement in &indexes {
        execute(&mut conn, statement).await?;
    }
    execute(
        &mut conn,
        &format!("ANALYZE {BUILD_SCHEMA}.threads, {BUILD_SCHEMA}.messages"),
    )
    .await?;
    let bulk_elapsed = started.elapsed();

    // From here on the new tables are written as the live projector writes the serving ones.
    execute(&mut conn, &format!("SET search_path = {BUILD_SCHEMA}")).await?;
    progress.phase("catching up");
    catch_up(&mut conn, &log, &mut reader, &mut fold, &progress).await?;

    progress.phase("switching over");
    let mut pause = settings.switch_wait.max(MIN_SWITCH_PAUSE);
    let through = loop {
        let mut tail = Tail::default();
        let switched = switch_over(
            &mut conn,
            &log,
            &mut reader,
            &mut fold,
            &progress,
            &mut tail,
            &serving,
            settings,
        )
        .await?;
        let holder = match switched {
            Switch::Done(through) => break through,
            Switch::GaveWay(holder) => holder,
        };
        progress.note(&format!(
            "switching over: {holder} for {:?}; gave way, trying again in {pause:?}",
            settings.switch_wait
        ));
        // The rows applied under the switch-over that gave way were rolled back with it.
        write_rows(&mut conn, &tail.threads).await?;
        write_rows(&mut conn, &tail.messages).await?;
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_SWITCH_PAUSE);
        catch_up(&mut conn, &log, &mut reader, &mut fold, &progress).await?;
    };
    progress.finish();
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(REBUILD_LOCK)
        .execute(&mut conn)
        .await
        .map_err(ProjectorError::database)?;
    let _ = conn.close().await;
    Ok(Summary {
        counts: fold.counts,
        through: reader.last_seq.max(through),
        bulk_events,
        elapsed: started.elapsed(),
        bulk_elapsed,
    })
}

/// Applies events to the new tables until at most `SWITCH_GAP` are left.
async fn catch_up(
    conn: &mut PgConnection,
    log: &impl EventReplay,
    reader: &mut EventReader,
    fold: &mut ReplayFold,
    progress: &Progress,
) -> Result<(), ProjectorError> {
    loop {
        let (_, last) = replay::stream_bounds(log).await?;
        if last <= reader.last_seq + SWITCH_GAP {
            return Ok(());
        }
        apply_through(conn, reader, fold, last, progress, None).await?;
    }
}

/// The rows written under the switch-over's transaction, to write again if it gives way.
#[derive(Default)]
struct Tail {
    threads: Vec<AppliedThread>,
    messages: Vec<AppliedMessage>,
}

/// How a try at the switch-over ended.
enum Switch {
    /// Switched over, with the new read model built through this stream sequence.
    Done(u64),
    /// A lock was not granted within `--switch-wait`, held by what this says: the try has
    /// rolled back, every lock it held or asked for is released, and the rows it wrote are in
    /// its `Tail`.
    GaveWay(&'static str),
}

/// One try at the switch-over, in one transaction (see the module's documentation).
///
/// Every lock waits at most `--switch-wait`, because a waiting lock stops others too: the
/// projector's transactions queue behind the switch lock, and every read of the serving
/// tables queues behind an ACCESS EXCLUSIVE lock that a reader's open transaction holds up.
#[allow(clippy::too_many_arguments)]
async fn switch_over(
    conn: &mut PgConnection,
    log: &impl EventReplay,
    reader: &mut EventReader,
    fold: &mut ReplayFold,
    progress: &Progress,
    tail: &mut Tail,
    serving: &str,
    settings: &RebuildSettings,
) -> Result<Switch, ProjectorError> {
    let mut tx = conn.begin().await.map_err(ProjectorError::database)?;
    let wait = settings.switch_wait.as_millis().max(1);
    execute(&mut tx, &format!("SET LOCAL lock_timeout = {wait}")).await?;
    let locked = sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(SWITCH_LOCK)
        .execute(&mut *tx)
        .await;
    if !granted(locked)? {
        tx.rollback().await.map_err(ProjectorError::database)?;
        return Ok(Switch::GaveWay(
            "a projector transaction held the switch lock",
        ));
    }
    // Every event the live projector has applied is in the stream by now.
    let (_, through) = replay::stream_bounds(log).await?;
    apply_through(&mut tx, reader, fold, through, progress, Some(tail)).await?;
    let serving_q = quote(serving);
    let tables = tables::TABLES
        .map(|t| format!("{serving_q}.{t}"))
        .join(", ");
    let held = "another session held the tables (a reader's open transaction, pg_dump)";
    let lock = format!("LOCK TABLE {tables} IN ACCESS EXCLUSIVE MODE");
    if !granted(sqlx::raw_sql(&lock).execute(&mut *tx).await)? {
        tx.rollback().await.map_err(ProjectorError::database)?;
        return Ok(Switch::GaveWay(held));
    }
    // Every role keeps exactly the rights it had on the tables being replaced.
    tables::copy_privileges(&mut tx, serving, BUILD_SCHEMA).await?;
    let switch = switch_statements(&serving_q, settings.keep_old);
    if !granted(sqlx::raw_sql(&switch).execute(&mut *tx).await)? {
        tx.rollback().await.map_err(ProjectorError::database)?;
        return Ok(Switch::GaveWay(held));
    }
    tx.commit().await.map_err(ProjectorError::database)?;
    Ok(Switch::Done(through))
}

/// The statements that move the serving tables out of the way and the new ones into their
/// place, run with both locked.
fn switch_statements(serving_q: &str, keep_old: bool) -> String {
    let mut switch =
        format!("DROP SCHEMA IF EXISTS {RETIRED_SCHEMA} CASCADE; CREATE SCHEMA {RETIRED_SCHEMA};");
    for table in tables::TABLES {
        switch.push_str(&format!(
            "ALTER TABLE {serving_q}.{table} SET SCHEMA {RETIRED_SCHEMA};\
             ALTER TABLE {BUILD_SCHEMA}.{table} SET SCHEMA {serving_q};"
        ));
    }
    switch.push_str(&format!("DROP SCHEMA {BUILD_SCHEMA};"));
    // Delivered at commit: API replicas drop the reads they keep in memory.
    switch.push_str(&format!("NOTIFY {CHANGED_CHANNEL};"));
    if !keep_old {
        switch.push_str(&format!("DROP SCHEMA {RETIRED_SCHEMA} CASCADE;"));
    }
    switch
}

/// Whether a statement got its locks: `false` if one was not granted within the
/// transaction's `lock_timeout`; other errors are errors.
fn granted<T>(result: Result<T, sqlx::Error>) -> Result<bool, ProjectorError> {
    match result {
        Ok(_) => Ok(true),
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some(LOCK_NOT_AVAILABLE) => {
            Ok(false)
        }
        Err(e) => Err(ProjectorError::database(e)),
    }
}

/// Applies the events up to `through` to the tables the connection's search path names;
/// keeps the rows written in `tail`, if given.
async fn apply_through(
    conn: &mut PgConnection,
    reader: &mut EventReader,
    fold: &mut ReplayFold,
    through: u64,
    progress: &Progress,
    mut tail: Option<&mut Tail>,
) -> Result<(), ProjectorError> {
    let mut threads = Vec::new();
    let mut messages = Vec::new();
    let mut events = 0;
    let mut bytes = 0;
    loop {
        let batch = reader.next_batch(through).await?;
        let done = batch.is_none();
        if let Some(batch) = batch {
            events += batch.len();
            let (t, m) = fold.fold(batch);
            bytes += t.iter().map(Row::bytes).sum::<usize>();
            bytes += m.iter().map(Row::bytes).sum::<usize>();
            threads.extend(t);
            messages.extend(m);
        }
        if done || events >= CATCH_UP_BATCH || bytes >= CATCH_UP_BYTES {
            fold.counts.refused += write_rows(conn, &threads).await?;
            fold.counts.refused += write_rows(conn, &messages).await?;
            progress.advance(events as u64, reader.last_seq);
            if let Some(tail) = tail.as_deref_mut() {
                tail.threads.append(&mut threads);
                tail.messages.append(&mut messages);
            }
            threads.clear();
            messages.clear();
            events = 0;
            bytes = 0;
        }
        if done {
            return Ok(());
        }
    }
}

/// Rows of one table, as `apply_rows` writes them.
trait Row {
    fn stream_seq(&self) -> u64;
    /// About how many bytes the row takes in a statement.
    fn bytes(&self) -> usize;
    fn apply<'a>(
        conn: &'a mut PgConnection,
        rows: &'a [Self],
    ) -> futures::future::BoxFuture<'a, Result<(), threadline_ports::StoreError>>
    where
        Self: Sized;
}

impl Row for AppliedThread {
    fn stream_seq(&self) -> u64 {
        self.stream_seq
    }
    fn bytes(&self) -> usize {
        self.user.get().len() + 64
    }
    fn apply<'a>(
        conn: &'a mut PgConnection,
        rows: &'a [Self],
    ) -> futures::future::BoxFuture<'a, Result<(), threadline_ports::StoreError>> {
        Box::pin(apply_rows(conn, rows, &[]))
    }
}

impl Row for AppliedMessage {
    fn stream_seq(&self) -> u64 {
        self.stream_seq
    }
    fn bytes(&self) -> usize {
        self.user.get().len() + self.body.as_str().len() + 96
    }
    fn apply<'a>(
        conn: &'a mut PgConnection,
        rows: &'a [Self],
    ) -> futures::future::BoxFuture<'a, Result<(), threadline_ports::StoreError>> {
        Box::pin(apply_rows(conn, &[], rows))
    }
}

/// Writes rows as the live projector does, in statements within the catch-up's bounds, each
/// in a transaction of its own (a savepoint within the switch-over's), splitting them where
/// PostgreSQL refuses some; how many rows it refused, which are passed over (the live
/// projector set their events aside).
async fn write_rows<R: Row>(conn: &mut PgConnection, rows: &[R]) -> Result<u64, ProjectorError> {
    let limits = Limits {
        events: CATCH_UP_BATCH,
        bytes: CATCH_UP_BYTES,
    };
    let sizes: Vec<usize> = rows.iter().map(Row::bytes).collect();
    let mut refused = 0;
    for range in ranges(&sizes, limits) {
        refused += write_part(conn, &rows[range]).await?;
    }
    Ok(refused)
}

/// Writes one statement's rows, splitting them where PostgreSQL refuses some (see
/// [`batch::isolate`]); how many rows it refused, each logged and passed over.
async fn write_part<R: Row>(conn: &mut PgConnection, rows: &[R]) -> Result<u64, ProjectorError> {
    let refusals = batch::isolate(
        rows.len(),
        |e| matches!(e, NotWritten::Refused { .. }),
        InTransaction { conn, rows },
    )
    .await
    .map_err(|failed| ProjectorError::from(failed.error))?;
    for (at, refusal) in &refusals {
        if let NotWritten::Refused { code, cause } = refusal {
            tracing::warn!(
                sequence = rows[*at].stream_seq(),
                "passing over a row PostgreSQL refuses ({code}: {cause}); \
                 the live projector set its event aside"
            );
        }
    }
    Ok(refusals.len() as u64)
}

/// Rows written a part at a time, each part in a transaction of its own (a savepoint within
/// the switch-over's).
struct InTransaction<'a, R> {
    conn: &'a mut PgConnection,
    rows: &'a [R],
}

/// Why a part of the rows was not written.
enum NotWritten {
    /// PostgreSQL refused a row of it: the transaction is rolled back, the part to be split.
    Refused { code: String, cause: Cause },
    /// Anything else: the rebuild stops.
    Failed(ProjectorError),
}

impl From<NotWritten> for ProjectorError {
    fn from(error: NotWritten) -> Self {
        match error {
            NotWritten::Refused { code, cause } => StoreError::Refused { code, cause }.into(),
            NotWritten::Failed(e) => e,
        }
    }
}

impl<R: Row> WritePart for InTransaction<'_, R> {
    type Error = NotWritten;

    async fn write_part(&mut self, part: Range<usize>) -> Result<(), NotWritten> {
        let failed = |e| NotWritten::Failed(ProjectorError::database(e));
        let mut tx = self.conn.begin().await.map_err(failed)?;
        match R::apply(&mut tx, &self.rows[part]).await {
            Ok(()) => tx.commit().await.map_err(failed),
            Err(StoreError::Refused { code, cause }) => {
                tx.rollback().await.map_err(failed)?;
                Err(NotWritten::Refused { code, cause })
            }
            Err(e) => Err(NotWritten::Failed(e.into())),
        }
    }
}

async fn execute(conn: &mut PgConnection, statements: &str) -> Result<(), ProjectorError> {
    sqlx::raw_sql(statements)
        .execute(conn)
        .await
        .map(|_| ())
        .map_err(ProjectorError::database)
}

/// `threadline rebuild`: rebuilds and prints a summary.
pub async fn run(settings: &RebuildSettings) -> Result<bool, ProjectorError> {
    let summary = rebuild(settings).await?;
    let seconds = summary.elapsed.as_secs_f64().max(1e-9);
    println!(
        "rebuilt the read model from {} events through sequence {} in {:.1} s ({:.0} events/s): \
         {} threads, {} messages, {} events passed over (invalid or repeated){}; the previous read model was {}",
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
