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
//! No event of an erased thread is folded: the threads erased when the rebuild starts are read
//! first, and a `ThreadErased` appended meanwhile deletes its thread's rows from the new
//! tables as the live projector deletes them from the serving ones.
//!
//! Interrupted at any point, the serving tables are untouched: until the switch-over commits,
//! only `threadline_rebuild` has been written, and a new run drops it and starts over.

use crate::batch::{self, ranges, Limits, WritePart};
use crate::bulk::BulkWriter;
use crate::progress::Progress;
use crate::replay::{self, Counts, EventReader, ReplayFold};
use crate::ProjectorError;
use std::ops::Range;
use std::time::{Duration, Instant};
use threadline_nats::JetStreamLog;
use threadline_ports::rebuild::{GaveWay, RebuildTarget, SwitchOver, WriteRows};
use threadline_ports::{AppliedMessage, AppliedThread, EventReplay, StoreError};
use uuid::Uuid;

/// The switch-over waits until at most this many events are left to apply under its lock.
const SWITCH_GAP: u64 = 2_000;
/// The shortest and the longest pause between two tries at the switch-over.
const MIN_SWITCH_PAUSE: Duration = Duration::from_millis(100);
const MAX_SWITCH_PAUSE: Duration = Duration::from_secs(30);
/// Events per statement while catching up.
const CATCH_UP_BATCH: usize = 5_000;
/// Most bytes of rows per statement while catching up.
const CATCH_UP_BYTES: usize = 8 << 20;

/// How a rebuild switches over.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Keep the replaced read model (in a schema of its own, dropped by the next rebuild)
    /// instead of dropping it.
    pub keep_old: bool,
    /// How long the switch-over waits for a lock before it gives way and tries again.
    pub switch_wait: Duration,
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

/// Rebuilds the read model from the first event of `log` into `target`, and puts it in place
/// of the serving one; see the module's documentation.
pub async fn rebuild<T: RebuildTarget>(
    log: &JetStreamLog,
    target: T,
    options: &Options,
) -> Result<Summary, ProjectorError> {
    let started = Instant::now();
    let (first, last) = replay::stream_bounds(log).await?;
    let total = if last >= first { last - first + 1 } else { 0 };
    let progress = Progress::new("rebuild", total);
    tracing::info!(
        first,
        last,
        "rebuilding the read model from events {first}..={last}"
    );
    // Every thread erased up to `last` at least: none of their events is loaded.
    let erased = log.erased_threads().await?;
    let mut reader = EventReader::open(log, first).await?;
    let mut fold = ReplayFold::with_erased(erased);
    let writer = BulkWriter::start(target);
    let mut target = replay::load(&mut reader, &mut fold, writer, last, &progress).await?;
    let bulk_events = fold.counts.events;
    progress.phase("building indexes");
    target.build_indexes().await?;
    target.erase(&fold.take_erased()).await?;
    let bulk_elapsed = started.elapsed();

    // From here on the new tables are written as the live projector writes the serving ones.
    progress.phase("catching up");
    catch_up(&mut target, log, &mut reader, &mut fold, &progress).await?;

    progress.phase("switching over");
    let mut pause = options.switch_wait.max(MIN_SWITCH_PAUSE);
    let through = loop {
        let mut tail = Tail::default();
        let switched = switch_over(
            &mut target,
            log,
            &mut reader,
            &mut fold,
            &progress,
            &mut tail,
            options,
        )
        .await?;
        let GaveWay(holder) = match switched {
            Ok(through) => break through,
            Err(gave_way) => gave_way,
        };
        progress.note(&format!(
            "switching over: {holder} for {:?}; gave way, trying again in {pause:?}",
            options.switch_wait
        ));
        // The rows applied under the switch-over that gave way were rolled back with it.
        write_rows(&mut target, &tail.threads).await?;
        write_rows(&mut target, &tail.messages).await?;
        target.erase(&tail.erased).await?;
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_SWITCH_PAUSE);
        catch_up(&mut target, log, &mut reader, &mut fold, &progress).await?;
    };
    progress.finish();
    target.close().await?;
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
    target: &mut impl WriteRows,
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
        apply_through(target, reader, fold, last, progress, None).await?;
    }
}

/// The rows written under the switch-over's transaction, and the threads erased, to write
/// and erase again if it gives way.
#[derive(Default)]
struct Tail {
    threads: Vec<AppliedThread>,
    messages: Vec<AppliedMessage>,
    erased: Vec<Uuid>,
}

/// One try at the switch-over, in one transaction (see the module's documentation): the
/// stream sequence the new read model is built through, or why the try gave way.
///
/// Every lock waits at most `--switch-wait`, because a waiting lock stops others too: the
/// projector's transactions queue behind the switch lock, and every read of the serving
/// tables queues behind an ACCESS EXCLUSIVE lock that a reader's open transaction holds up.
async fn switch_over<T: RebuildTarget>(
    target: &mut T,
    log: &impl EventReplay,
    reader: &mut EventReader,
    fold: &mut ReplayFold,
    progress: &Progress,
    tail: &mut Tail,
    options: &Options,
) -> Result<Result<u64, GaveWay>, ProjectorError> {
    let mut switch = match target.begin_switch(options.switch_wait).await? {
        Ok(switch) => switch,
        Err(gave_way) => return Ok(Err(gave_way)),
    };
    // Every event the live projector has applied is in the stream by now.
    let (_, through) = replay::stream_bounds(log).await?;
    apply_through(&mut switch, reader, fold, through, progress, Some(tail)).await?;
    Ok(switch.complete(options.keep_old).await?.map(|()| through))
}

/// Applies the events up to `through` to the new tables; keeps the rows written in `tail`,
/// if given.
async fn apply_through(
    target: &mut impl WriteRows,
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
            fold.counts.refused += write_rows(target, &threads).await?;
            fold.counts.refused += write_rows(target, &messages).await?;
            // After the rows: those written before the thread's erasure was met go too.
            let mut erased = fold.take_erased();
            target.erase(&erased).await?;
            progress.advance(events as u64, reader.last_seq);
            if let Some(tail) = tail.as_deref_mut() {
                tail.threads.append(&mut threads);
                tail.messages.append(&mut messages);
                tail.erased.append(&mut erased);
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

/// Rows of one table, as the live projector writes them.
trait Row: Sync {
    fn stream_seq(&self) -> u64;
    /// About how many bytes the row takes in a statement.
    fn bytes(&self) -> usize;
    fn write<'a>(
        target: &'a mut impl WriteRows,
        rows: &'a [Self],
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + 'a
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
    fn write<'a>(
        target: &'a mut impl WriteRows,
        rows: &'a [Self],
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + 'a {
        target.write(rows, &[])
    }
}

impl Row for AppliedMessage {
    fn stream_seq(&self) -> u64 {
        self.stream_seq
    }
    fn bytes(&self) -> usize {
        self.user.get().len() + self.body.as_str().len() + 96
    }
    fn write<'a>(
        target: &'a mut impl WriteRows,
        rows: &'a [Self],
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + 'a {
        target.write(&[], rows)
    }
}

/// Writes rows as the live projector does, in statements within the catch-up's bounds, each
/// in a transaction of its own (a savepoint within the switch-over's), splitting them where
/// the store refuses some; how many rows it refused, which are passed over (the live
/// projector set their events aside).
async fn write_rows<R: Row>(
    target: &mut impl WriteRows,
    rows: &[R],
) -> Result<u64, ProjectorError> {
    let limits = Limits {
        events: CATCH_UP_BATCH,
        bytes: CATCH_UP_BYTES,
    };
    let sizes: Vec<usize> = rows.iter().map(Row::bytes).collect();
    let mut refused = 0;
    for range in ranges(&sizes, limits) {
        refused += write_part(target, &rows[range]).await?;
    }
    Ok(refused)
}

/// Writes one statement's rows, splitting them where the store refuses some (see
/// [`batch::isolate`]); how many rows it refused, each logged and passed over.
async fn write_part<R: Row>(
    target: &mut impl WriteRows,
    rows: &[R],
) -> Result<u64, ProjectorError> {
    let refusals = batch::isolate(
        rows.len(),
        |e| matches!(e, StoreError::Refused { .. }),
        InTransaction { target, rows },
    )
    .await
    .map_err(|failed| ProjectorError::from(failed.error))?;
    for (at, refusal) in &refusals {
        if let StoreError::Refused { code, cause } = refusal {
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
struct InTransaction<'a, W, R> {
    target: &'a mut W,
    rows: &'a [R],
}

impl<W: WriteRows, R: Row> WritePart for InTransaction<'_, W, R> {
    type Error = StoreError;

    async fn write_part(&mut self, part: Range<usize>) -> Result<(), StoreError> {
        R::write(self.target, &self.rows[part]).await
    }
}
