//! `threadline erase`: a visitor's right to be forgotten. Removes one thread from everywhere
//! threadline keeps it, in an order that leaves whatever an interruption cuts short to the
//! next run to finish:
//!
//! 1. Appends the thread's `ThreadErased`, unless the log holds one already. From here on the
//!    thread does not exist for any part of threadline: every api replica forgets it (GET
//!    404, a message to it refused as to an unknown thread), every gateway closes its sockets
//!    and refuses new ones, and the projector deletes its rows and applies none of its events
//!    again, wherever they are in the stream.
//! 2. Removes its idempotency records, so that no client retry can append its events again. A
//!    retry that came before appended them after the erasure, where they count for nothing,
//!    and the next step removes them.
//! 3. Purges its events from the event stream (its `created` and `message` subjects, on every
//!    replica). Its `ThreadErased` stays: that it was erased is what keeps it so.
//! 4. Waits, up to a bound, until the projector has folded the erasure: by then whatever it
//!    set aside of the thread is set aside.
//! 5. Removes the records of the thread's set-aside events, and those events themselves
//!    where step 3 did not reach them (an id spelled otherwise, another thread's subject).
//! 6. Deletes its rows from the read model (the projector did, if it was running; this
//!    covers one that is behind or stopped).
//!
//! Every step is safe to repeat, and each finds what the steps before left: running erase
//! again finishes an interrupted run, and removes whatever was published for the thread
//! since (an agent's late reply: stored in the stream, though no role applies or shows it).

use serde::Serialize;
use std::time::{Duration, Instant};
use threadline_ports::{
    ErasableLog, EventLog, IdempotencyStore, ReadModel, RecordFilter, StoreError, ThreadRows,
};
use uuid::Uuid;

/// How an erase runs.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Find and count, remove nothing, append nothing.
    pub dry_run: bool,
    /// How long to wait for the projector to fold the erasure (step 4).
    pub wait: Duration,
}

/// What an erase removed, or on a dry run would remove.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Report {
    pub thread: Uuid,
    pub dry_run: bool,
    /// The stream sequence of the thread's `ThreadErased`: found, or appended by this run
    /// (`None` only on a dry run of a thread not erased yet).
    pub erased_at: Option<u64>,
    /// Whether the log held the thread's `ThreadErased` before this run.
    pub already_erased: bool,
    /// Events of the thread purged from the event stream.
    pub events: u64,
    /// Records of requests answered under an `Idempotency-Key` that hold its events.
    pub idempotency_records: u64,
    /// Records of its events set aside as invalid.
    pub set_aside: u64,
    /// Its rows in the read model, gone by the end (the projector may have deleted them
    /// first).
    pub thread_rows: u64,
    pub message_rows: u64,
    /// Whether the projector had folded the erasure within the wait (`None` on a dry run).
    pub projector_folded: Option<bool>,
}

/// Why an erase could not run.
#[derive(Debug, thiserror::Error)]
pub enum EraseError {
    /// Nothing anywhere holds the thread: a mistyped id, most likely.
    #[error(
        "thread {0} does not exist: neither the event stream, the set-aside events, the \
         idempotency records nor the read model hold anything of it"
    )]
    UnknownThread(Uuid),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Erases `thread` (see the module's documentation). `records` is the idempotency store, if
/// there is one; `holds_thread` says which of its records hold the thread's events.
pub async fn erase<L, R, I>(
    log: &L,
    read: &R,
    records: Option<&I>,
    thread: Uuid,
    holds_thread: RecordFilter<'_>,
    options: Options,
) -> Result<Report, EraseError>
where
    L: EventLog + ErasableLog + ?Sized,
    R: ReadModel + ?Sized,
    I: IdempotencyStore + ?Sized,
{
    let erased_at = log.erased_at(thread).await?;
    let events = log.thread_events(thread).await?;
    let rows = read.rows_of(thread).await?;
    let mut report = Report {
        thread,
        dry_run: options.dry_run,
        erased_at,
        already_erased: erased_at.is_some(),
        events,
        idempotency_records: 0,
        set_aside: 0,
        thread_rows: rows.threads,
        message_rows: rows.messages,
        projector_folded: None,
    };
    let known = erased_at.is_some() || events > 0 || rows != ThreadRows::default();
    if options.dry_run || !known {
        let keys = match records {
            Some(records) => records.keys_of(holds_thread).await?,
            None => Vec::new(),
        };
        let set_aside = log.set_aside_of(thread).await?;
        if !known && keys.is_empty() && set_aside.is_empty() {
            return Err(EraseError::UnknownThread(thread));
        }
        report.idempotency_records = keys.len() as u64;
        report.set_aside = set_aside.len() as u64;
        if options.dry_run {
            return Ok(report);
        }
    }

    // 1. From here on the thread does not exist.
    let erased_at = match erased_at {
        Some(sequence) => sequence,
        None => {
            let erasure = proto_events::Event::ThreadErased(proto_events::ThreadErased {
                thread,
                timestamp: proto_events::Timestamp::now(),
            });
            log.append(&erasure.encode()).await?
        }
    };
    report.erased_at = Some(erased_at);
    tracing::info!(%thread, erased_at, "the thread is erased; removing what is left of it");

    // 2. No retry can bring its events back.
    if let Some(records) = records {
        let keys = records.keys_of(holds_thread).await?;
        records.remove(&keys).await?;
        report.idempotency_records = keys.len() as u64;
    }

    // 3. Its events.
    report.events = log.purge_thread(thread).await?;

    // 4. What the projector sets aside of it, it has set aside.
    report.projector_folded = Some(projector_folded(log, erased_at, options.wait).await);

    // 5. Its set-aside events.
    let set_aside = log.set_aside_of(thread).await?;
    log.remove_set_aside(&set_aside).await?;
    report.set_aside = set_aside.len() as u64;

    // 6. Its rows.
    read.erase(&[thread]).await?;
    Ok(report)
}

/// Waits until the projector has applied the event at `sequence`, up to `wait`; whether it
/// has.
async fn projector_folded<L: EventLog + ?Sized>(log: &L, sequence: u64, wait: Duration) -> bool {
    let started = Instant::now();
    loop {
        if log
            .applied_through(sequence)
            .await
            .is_ok_and(|applied| applied >= sequence)
        {
            return true;
        }
        if started.elapsed() >= wait {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use bytes::Bytes;
    use proto_events::{EncodedEvent, Event, EventKind};
    use std::collections::HashMap;
    use std::sync::Mutex;
    use threadline_ports::{AppliedMessage, AppliedThread, ThreadRead};
    use tokio::sync::broadcast;

    const THREAD: Uuid = Uuid::from_u128(1);
    const OTHER: Uuid = Uuid::from_u128(2);

    /// Everything the erase touches, in memory, with the calls that changed something in
    /// order.
    #[derive(Default)]
    struct World {
        /// (sequence, thread, kind) of every event in the stream.
        events: Vec<(u64, Uuid, EventKind)>,
        next: u64,
        /// Set-aside records: sequence and the thread they name.
        set_aside: Vec<(u64, Uuid)>,
        /// Idempotency records by key: the thread whose event each holds.
        records: HashMap<String, Uuid>,
        rows: HashMap<Uuid, ThreadRows>,
        projector_running: bool,
        changes: Vec<&'static str>,
    }

    struct Fake(Mutex<World>);

    impl Fake {
        fn world(&self) -> std::sync::MutexGuard<'_, World> {
            self.0.lock().unwrap()
        }
    }

    /// A thread with two messages, one of them set aside, one request answered under a key,
    /// beside another thread; the projector running.
    fn world() -> Fake {
        let mut world = World {
            next: 1,
            projector_running: true,
            ..World::default()
        };
        for (thread, kind) in [
            (THREAD, EventKind::ThreadCreated),
            (OTHER, EventKind::ThreadCreated),
            (THREAD, EventKind::MessagePosted),
            (THREAD, EventKind::MessagePosted),
        ] {
            world.events.push((world.next, thread, kind));
            world.next += 1;
        }
        world.set_aside = vec![(1, THREAD), (2, OTHER)];
        world.records.insert("a".into(), THREAD);
        world.records.insert("b".into(), OTHER);
        world.rows.insert(
            THREAD,
            ThreadRows {
                threads: 1,
                messages: 1,
            },
        );
        world.rows.insert(
            OTHER,
            ThreadRows {
                threads: 1,
                messages: 0,
            },
        );
        Fake(Mutex::new(world))
    }

    #[async_trait]
    impl EventLog for Fake {
        async fn append(&self, event: &EncodedEvent) -> Result<u64, StoreError> {
            let mut world = self.world();
            world.changes.push("append");
            let at = world.next;
            world.next += 1;
            world
                .events
                .push((at, event.event().thread(), event.event().kind()));
            Ok(at)
        }
        async fn thread_exists(&self, _: Uuid) -> Result<bool, StoreError> {
            unreachable!()
        }
        async fn thread_last_sequence(&self, _: Uuid) -> Result<Option<u64>, StoreError> {
            unreachable!()
        }
        async fn thread_message_count(&self, _: Uuid) -> Result<u64, StoreError> {
            unreachable!()
        }
        async fn applied_through(&self, wanted: u64) -> Result<u64, StoreError> {
            let world = self.world();
            Ok(if world.projector_running { wanted } else { 0 })
        }
        async fn applied_everything(&self) -> Result<Option<u64>, StoreError> {
            unreachable!()
        }
        fn erasures(&self) -> broadcast::Receiver<Uuid> {
            unreachable!()
        }
    }

    #[async_trait]
    impl ErasableLog for Fake {
        async fn erased_at(&self, thread: Uuid) -> Result<Option<u64>, StoreError> {
            Ok(self
                .world()
                .events
                .iter()
                .find(|(_, t, kind)| *t == thread && *kind == EventKind::ThreadErased)
                .map(|(at, _, _)| *at))
        }
        async fn thread_events(&self, thread: Uuid) -> Result<u64, StoreError> {
            Ok(self
                .world()
                .events
                .iter()
                .filter(|(_, t, kind)| *t == thread && *kind != EventKind::ThreadErased)
                .count() as u64)
        }
        async fn purge_thread(&self, thread: Uuid) -> Result<u64, StoreError> {
            let mut world = self.world();
            world.changes.push("purge");
            let before = world.events.len();
            world
                .events
                .retain(|(_, t, kind)| *t != thread || *kind == EventKind::ThreadErased);
            Ok((before - world.events.len()) as u64)
        }
        async fn set_aside_of(&self, thread: Uuid) -> Result<Vec<u64>, StoreError> {
            Ok(self
                .world()
                .set_aside
                .iter()
                .filter(|(_, t)| *t == thread)
                .map(|(at, _)| *at)
                .collect())
        }
        async fn remove_set_aside(&self, records: &[u64]) -> Result<(), StoreError> {
            let mut world = self.world();
            world.changes.push("remove set-aside");
            world.set_aside.retain(|(at, _)| !records.contains(at));
            Ok(())
        }
    }

    #[async_trait]
    impl ReadModel for Fake {
        async fn thread(&self, _: Uuid) -> Result<Option<ThreadRead>, StoreError> {
            unreachable!()
        }
        async fn apply(&self, _: &[AppliedThread], _: &[AppliedMessage]) -> Result<(), StoreError> {
            unreachable!()
        }
        async fn erase(&self, threads: &[Uuid]) -> Result<ThreadRows, StoreError> {
            let mut world = self.world();
            world.changes.push("delete rows");
            let mut gone = ThreadRows::default();
            for thread in threads {
                if let Some(rows) = world.rows.remove(thread) {
                    gone.threads += rows.threads;
                    gone.messages += rows.messages;
                }
            }
            Ok(gone)
        }
        async fn rows_of(&self, thread: Uuid) -> Result<ThreadRows, StoreError> {
            Ok(self.world().rows.get(&thread).copied().unwrap_or_default())
        }
    }

    #[async_trait]
    impl IdempotencyStore for Fake {
        async fn claim(&self, _: &str, _: Bytes) -> Result<Option<Bytes>, StoreError> {
            unreachable!()
        }
        async fn get(&self, _: &str) -> Result<Option<Bytes>, StoreError> {
            unreachable!()
        }
        async fn keys_of(&self, wanted: RecordFilter<'_>) -> Result<Vec<String>, StoreError> {
            let mut keys: Vec<String> = self
                .world()
                .records
                .iter()
                .filter(|(_, thread)| wanted(thread.as_bytes()))
                .map(|(key, _)| key.clone())
                .collect();
            keys.sort();
            Ok(keys)
        }
        async fn remove(&self, keys: &[String]) -> Result<(), StoreError> {
            let mut world = self.world();
            world.changes.push("remove records");
            for key in keys {
                world.records.remove(key);
            }
            Ok(())
        }
    }

    /// A record holds its thread's id, as bytes.
    fn of(thread: Uuid) -> impl Fn(&[u8]) -> bool + Send + Sync {
        move |record: &[u8]| record == thread.as_bytes()
    }

    fn options(dry_run: bool) -> Options {
        Options {
            dry_run,
            wait: Duration::from_millis(100),
        }
    }

    async fn run(fake: &Fake, thread: Uuid, dry_run: bool) -> Result<Report, EraseError> {
        erase(
            fake,
            fake,
            Some(fake),
            thread,
            &of(thread),
            options(dry_run),
        )
        .await
    }

    #[tokio::test]
    async fn an_erase_removes_everything_of_the_thread_in_order_and_nothing_else() {
        let fake = world();
        let report = run(&fake, THREAD, false).await.expect("erased");
        assert_eq!(
            report,
            Report {
                thread: THREAD,
                dry_run: false,
                erased_at: Some(5),
                already_erased: false,
                events: 3,
                idempotency_records: 1,
                set_aside: 1,
                thread_rows: 1,
                message_rows: 1,
                projector_folded: Some(true),
            }
        );
        let world = fake.world();
        assert_eq!(
            world.changes,
            [
                "append",
                "remove records",
                "purge",
                "remove set-aside",
                "delete rows"
            ],
            "the erasure first, the records before the events"
        );
        assert_eq!(
            world.events,
            [
                (2, OTHER, EventKind::ThreadCreated),
                (5, THREAD, EventKind::ThreadErased)
            ]
        );
        assert_eq!(world.set_aside, [(2, OTHER)]);
        assert_eq!(world.records.keys().collect::<Vec<_>>(), ["b"]);
        assert!(!world.rows.contains_key(&THREAD) && world.rows.contains_key(&OTHER));
    }

    #[tokio::test]
    async fn a_second_erase_appends_nothing_and_removes_what_came_since() {
        let fake = world();
        run(&fake, THREAD, false).await.expect("erased");
        // An agent's late reply, stored; and an invalid event of the thread, set aside.
        {
            let mut world = fake.world();
            let at = world.next;
            world.next += 1;
            world.events.push((at, THREAD, EventKind::MessagePosted));
            world.set_aside.push((3, THREAD));
            world.changes.clear();
        }
        let again = run(&fake, THREAD, false).await.expect("erased again");
        assert!(again.already_erased);
        assert_eq!(again.erased_at, Some(5));
        assert_eq!((again.events, again.set_aside), (1, 1));
        let world = fake.world();
        assert!(!world.changes.contains(&"append"));
        assert_eq!(world.events.len(), 2);
        assert_eq!(world.set_aside, [(2, OTHER)]);
    }

    #[tokio::test]
    async fn an_interrupted_erase_is_finished_by_the_next() {
        let fake = world();
        // Interrupted after step 1: only the erasure was appended.
        let erasure = Event::ThreadErased(proto_events::ThreadErased {
            thread: THREAD,
            timestamp: proto_events::Timestamp::now(),
        });
        fake.append(&erasure.encode()).await.expect("appended");
        let report = run(&fake, THREAD, false).await.expect("finished");
        assert!(report.already_erased);
        assert_eq!((report.events, report.idempotency_records), (3, 1));
        let world = fake.world();
        assert_eq!(world.events.len(), 2);
        assert!(!world.rows.contains_key(&THREAD));
    }

    #[tokio::test]
    async fn a_dry_run_counts_and_changes_nothing() {
        let fake = world();
        let report = run(&fake, THREAD, true).await.expect("counted");
        assert_eq!(
            (
                report.erased_at,
                report.events,
                report.idempotency_records,
                report.set_aside,
                report.thread_rows,
                report.message_rows,
                report.projector_folded
            ),
            (None, 3, 1, 1, 1, 1, None)
        );
        let world = fake.world();
        assert!(world.changes.is_empty(), "{:?}", world.changes);
        assert_eq!(world.events.len(), 4);
    }

    #[tokio::test]
    async fn an_id_nothing_holds_is_refused_and_nothing_is_appended() {
        let fake = world();
        let unknown = Uuid::from_u128(9);
        assert!(matches!(
            run(&fake, unknown, false).await,
            Err(EraseError::UnknownThread(id)) if id == unknown
        ));
        assert!(matches!(
            run(&fake, unknown, true).await,
            Err(EraseError::UnknownThread(_))
        ));
        assert!(fake.world().changes.is_empty());
    }

    #[tokio::test]
    async fn an_id_known_only_by_a_set_aside_event_is_erased() {
        let fake = world();
        let stray = Uuid::from_u128(9);
        fake.world().set_aside.push((3, stray));
        let report = run(&fake, stray, false).await.expect("erased");
        assert_eq!(report.set_aside, 1);
        assert!(fake.world().set_aside.iter().all(|(_, t)| *t != stray));
    }

    #[tokio::test]
    async fn a_projector_that_does_not_fold_the_erasure_in_time_is_reported() {
        let fake = world();
        fake.world().projector_running = false;
        let report = run(&fake, THREAD, false).await.expect("erased");
        assert_eq!(report.projector_folded, Some(false));
        assert!(
            !fake.world().rows.contains_key(&THREAD),
            "the rows go anyway"
        );
    }

    #[tokio::test]
    async fn without_an_idempotency_store_the_rest_is_erased() {
        let fake = world();
        let none: Option<&Fake> = None;
        let report = erase(&fake, &fake, none, THREAD, &of(THREAD), options(false))
            .await
            .expect("erased");
        assert_eq!(report.idempotency_records, 0);
        assert_eq!(fake.world().records.len(), 2);
    }
}
