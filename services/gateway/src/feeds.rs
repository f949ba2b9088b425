//! One feed per watched thread, shared by all of that thread's sockets in this process and
//! dropped when the last one closes. A feed shows only what the event stream stored: it
//! follows the thread's stored messages ([`ThreadMessages::subscribe`]), each with its stream
//! sequence and the thread's previous one, so a message published but not stored never
//! reaches a socket, and a missed one shows as a gap that the feed fills from the stream
//! before going on. The same happens when the NATS connection comes back. Each message is checked once and its payload bytes are shared by
//! every socket: serialise once, fan out shared bytes. A feed that starts learns the ids of
//! its thread's latest messages (headers only), so that it drops a repeat of a message stored
//! before it started, as `GET` does.

use crate::history::{self, id_stored_at, Shown, ShownIds, REMEMBERED_MESSAGES};
use axum::extract::ws::Utf8Bytes;
use futures::StreamExt;
use proto_events::Subjects;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use threadline_nats::coalesce::Coalesce;
use threadline_ports::{
    report, LiveMessage, LiveMessages, StoreError, StoredMessage, ThreadMessages,
};
use threadline_runtime::metrics::names;
use tokio::sync::{broadcast, watch, OnceCell, Semaphore};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How long a feed waits before trying again to fill a gap that it could not read.
const REPAIR_RETRY: Duration = Duration::from_secs(1);

/// How many messages a feed filling a gap reads at a time.
const CATCH_UP_BATCH: usize = 256;

/// How many messages' ids (headers only) a feed that starts reads at a time.
const IDS_BATCH: usize = 1000;

/// Longest a feed filling a gap waits, per message, for its slowest socket to make room in
/// the queue; past it, that socket falls behind and is closed as too slow (1013).
const REPAIR_PATIENCE: Duration = Duration::from_secs(2);

/// The most messages a socket that resumes is sent before its live ones; from further back
/// it is told to load the thread first (close code [`LOAD_THE_THREAD_FIRST`]).
pub const BACKLOG_MAX: usize = 1000;

/// The most bytes of payloads in one socket's backlog; past them, as past [`BACKLOG_MAX`].
pub const BACKLOG_MAX_BYTES: usize = 4 << 20;

/// The close code of a socket whose `since` is further back than the backlog a socket is
/// sent: load the thread with `GET`, then resume from the last message it lists.
pub const LOAD_THE_THREAD_FIRST: u16 = 4000;

/// The close code of a socket whose thread was erased (`threadline erase`): it is gone for
/// good, as an unknown thread (404) is; do not reconnect.
pub const THREAD_ERASED: u16 = 4404;

/// How many of the latest messages without a `Nats-Msg-Id` a resume reads whole to find its
/// `since` among them.
const UNNAMED_LOOKUPS: usize = 32;

/// How many sockets of this process look their `since` up in the stream, or feeds learn
/// their thread's latest ids, at once; the others wait their turn, so that resumes and
/// threads' first sockets cost the stream leader a bounded load.
const RESUMES_AT_ONCE: usize = 8;

/// Most distinct resumes (a `since` lookup or a backlog read) in flight per process; past it
/// a new one is refused (503) without a request.
const RESUMES_IN_FLIGHT: usize = 1_024;

/// Where a `since` id is in its thread.
#[derive(Debug, Clone, Copy)]
enum Found {
    At(u64),
    /// Not among the thread's latest messages, which are not all of the thread.
    TooFarBack,
    NotInThread,
}

/// Why a socket cannot watch a thread.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("message {0} is not in the thread")]
    UnknownSince(Uuid),
    /// The thread does not exist (any more: it was erased meanwhile).
    #[error("thread {0} does not exist")]
    UnknownThread(Uuid),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The live feeds of this gateway process.
pub struct Feeds {
    log: Arc<dyn ThreadMessages>,
    /// Frames a socket may fall behind before it is closed as too slow.
    queue: usize,
    feeds: Mutex<HashMap<Uuid, Feed>>,
    resumes: Semaphore,
    /// Resumes in flight, shared by the sockets that ask the same at the same time (a
    /// thread's visitors reconnecting after a gateway restart): where a `since` is, by thread
    /// and id, and a backlog, by thread and the sequences it runs between.
    lookups: Coalesce<(Uuid, Uuid), Found>,
    backlogs: Coalesce<(Uuid, u64, u64), Option<SharedBacklog>>,
}

/// A backlog read once for every socket that resumes from the same place at the same time.
type SharedBacklog = Arc<[Utf8Bytes]>;

/// A message as a feed pushes it to its sockets: the shared bytes of its frame, and its
/// stream sequence (so that a socket that resumed ahead of the feed skips what it has seen).
#[derive(Debug, Clone)]
pub struct Frame {
    pub sequence: u64,
    pub text: Utf8Bytes,
}

struct Feed {
    shared: Arc<Shared>,
    ready: Arc<OnceCell<()>>,
    stop: CancellationToken,
    /// Fired when the thread is erased: its sockets close ([`Watch::erased`]).
    erased: CancellationToken,
}

/// What a feed's task and its sockets share. `sender` is used only under `state`'s lock, so
/// a socket that joins learns exactly which sequence its first live frame follows.
struct Shared {
    state: Mutex<State>,
    sender: broadcast::Sender<Frame>,
}

#[derive(Default)]
struct State {
    /// The last stream sequence of the thread's messages that this feed has handled.
    last: u64,
    /// The stream sequence of the thread's `ThreadCreated`: a message stored before it belongs
    /// to no thread (the projector sets it aside), so it is never shown nor remembered; a
    /// copy published again after the thread exists is a message of its own.
    created: u64,
    shown: ShownIds,
}

impl State {
    /// The message's id and frame if it may be shown: valid, and stored after its thread.
    fn check(&self, message: &StoredMessage, subjects: &Subjects) -> Option<Shown> {
        if message.sequence < self.created {
            return None;
        }
        history::check(message, subjects)
    }
}

/// A socket's place on a thread's feed: the frames it missed (when it resumed), then the live
/// ones. Dropping it leaves the feed.
pub struct Watch {
    thread: Uuid,
    backlog: Backlog,
    receiver: Option<broadcast::Receiver<Frame>>,
    erased: CancellationToken,
    feeds: Arc<Feeds>,
}

/// What a socket is sent before the live frames.
#[derive(Debug, PartialEq, Eq)]
pub enum Backlog {
    /// These frames, then the live ones stored after `skip_through`.
    Frames {
        frames: Vec<Utf8Bytes>,
        skip_through: u64,
    },
    /// More than [`BACKLOG_MAX`] messages (or [`BACKLOG_MAX_BYTES`]) follow the client's
    /// `since`: nothing; the socket closes with [`LOAD_THE_THREAD_FIRST`].
    TooLong,
}

impl Watch {
    /// What to send before the live frames (no frames without `since`).
    pub fn take_backlog(&mut self) -> Backlog {
        std::mem::replace(
            &mut self.backlog,
            Backlog::Frames {
                frames: Vec::new(),
                skip_through: 0,
            },
        )
    }

    /// Fires when the thread is erased: the socket closes with [`THREAD_ERASED`].
    pub fn erased(&self) -> CancellationToken {
        self.erased.clone()
    }

    pub fn receiver(&mut self) -> &mut broadcast::Receiver<Frame> {
        self.receiver
            .as_mut()
            .expect("the receiver lives until the watch is dropped")
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        drop(self.receiver.take());
        self.feeds.leave(self.thread);
    }
}

impl Feeds {
    pub fn new(log: Arc<dyn ThreadMessages>, queue: usize) -> Arc<Self> {
        // A resume's lookup and backlog read each end within one NATS_TIMEOUT, their turn
        // among the resumes included, whether or not its socket still waits.
        let timeout = log.request_timeout();
        Arc::new(Self {
            log,
            queue: queue.max(1),
            feeds: Mutex::new(HashMap::new()),
            resumes: Semaphore::new(RESUMES_AT_ONCE),
            lookups: Coalesce::new(timeout, RESUMES_IN_FLIGHT),
            backlogs: Coalesce::new(timeout, RESUMES_IN_FLIGHT),
        })
    }

    /// Joins a thread's feed, starting it if this is the first socket on it. Without `since`
    /// the watch gets every message stored from now on; with it, first every message stored
    /// after that one, then the live ones, with no gap and no repeat between them.
    pub async fn watch(
        self: &Arc<Self>,
        thread: Uuid,
        since: Option<Uuid>,
    ) -> Result<Watch, WatchError> {
        // A first receiver, taken under the lock, holds the feed open while it starts.
        let (shared, ready, stop, erased, receiver) = {
            let mut feeds = self.feeds.lock().unwrap_or_else(|e| e.into_inner());
            let feed = feeds.entry(thread).or_insert_with(|| Feed {
                shared: Arc::new(Shared {
                    state: Mutex::new(State::default()),
                    sender: broadcast::channel(self.queue).0,
                }),
                ready: Arc::new(OnceCell::new()),
                stop: CancellationToken::new(),
                erased: CancellationToken::new(),
            });
            let receiver = feed.shared.sender.subscribe();
            let joined = (
                feed.shared.clone(),
                feed.ready.clone(),
                feed.stop.clone(),
                feed.erased.clone(),
                receiver,
            );
            metrics::gauge!(names::THREADS_WATCHED).set(feeds.len() as f64);
            joined
        };
        let mut watch = Watch {
            thread,
            backlog: Backlog::Frames {
                frames: Vec::new(),
                skip_through: 0,
            },
            receiver: Some(receiver),
            erased,
            feeds: self.clone(),
        };
        ready
            .get_or_try_init(|| self.start(thread, shared.clone(), stop))
            .await?;
        let (joined_at, created, shown_at) = {
            let state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
            watch.receiver = Some(shared.sender.subscribe());
            let shown_at = since.and_then(|id| state.shown.sequence_of(id));
            (state.last, state.created, shown_at)
        };
        let Some(since) = since else {
            return Ok(watch);
        };
        // What the feed has shown it answers itself; anything else the stream does, which
        // holds every id of the thread, also those the feed has not seen yet.
        let since_at = match shown_at {
            Some(at) => Found::At(at),
            None => {
                let feeds = self.clone();
                let find = move || async move {
                    let _turn = feeds.resumes.acquire().await.map_err(|e| e.to_string())?;
                    let found = feeds.find(thread, since, created, joined_at).await;
                    found.map_err(|e| report(&e))
                };
                let found = self.lookups.get((thread, since), find).await;
                found.map_err(StoreError::nats)?
            }
        };
        watch.backlog = match since_at {
            Found::NotInThread => return Err(WatchError::UnknownSince(since)),
            Found::TooFarBack => Backlog::TooLong,
            // Ahead of the feed: its live frames up to `at` are skipped.
            Found::At(at) if at >= joined_at => Backlog::Frames {
                frames: Vec::new(),
                skip_through: at,
            },
            Found::At(at) => {
                let (feeds, shared) = (self.clone(), shared.clone());
                let read = move || async move {
                    let _turn = feeds.resumes.acquire().await.map_err(|e| e.to_string())?;
                    let frames = feeds.backlog(thread, &shared, at, joined_at).await;
                    frames.map(|f| f.map(Arc::from)).map_err(|e| report(&e))
                };
                let frames = self.backlogs.get((thread, at, joined_at), read).await;
                match frames.map_err(StoreError::nats)? {
                    Some(frames) => Backlog::Frames {
                        frames: frames.to_vec(),
                        skip_through: joined_at,
                    },
                    None => Backlog::TooLong,
                }
            }
        };
        Ok(watch)
    }

    /// Where the message `id` is stored in the thread (created at stream sequence `created`),
    /// looked up among the thread's latest ids (headers only): the last [`BACKLOG_MAX`] to
    /// twice as many messages ([`ThreadMessages::latest_from`]), then one read, and the latest
    /// few without a `Nats-Msg-Id` read whole. An id further back cannot have a backlog a
    /// socket is sent; whether it is in the thread at all is not worth reading the thread for.
    async fn find(
        &self,
        thread: Uuid,
        id: Uuid,
        created: u64,
        through: u64,
    ) -> Result<Found, StoreError> {
        let log = &self.log;
        let (least, most) = (BACKLOG_MAX as u64 + 1, 2 * (BACKLOG_MAX as u64 + 1));
        let (from, whole_thread) = log
            .latest_from(thread, created, through, least, most)
            .await?;
        let max = 3 * BACKLOG_MAX + 3;
        let latest = log.ids(thread, from, None, max, max).await?;
        let latest: Vec<_> = latest.into_iter().filter(|(at, _)| *at > created).collect();
        if let Some((at, _)) = latest.iter().find(|(_, named)| *named == Some(id)) {
            return Ok(Found::At(*at));
        }
        for at in unnamed(&latest) {
            if id_stored_at(&*self.log, thread, at).await? == Some(id) {
                return Ok(Found::At(at));
            }
        }
        Ok(if whole_thread {
            Found::NotInThread
        } else {
            Found::TooFarBack
        })
    }

    /// The ids of the thread's latest messages stored after `created` up to `through`, oldest
    /// first, with their stream sequences: the last [`REMEMBERED_MESSAGES`] (the window of
    /// repeats a feed drops), read with headers only, [`IDS_BATCH`] at a time; each id from
    /// its `Nats-Msg-Id`, and the latest [`UNNAMED_LOOKUPS`] messages without one read whole.
    /// A few requests to find where they begin, then one per batch, whatever the thread's
    /// length.
    async fn latest_ids(
        &self,
        thread: Uuid,
        created: u64,
        through: u64,
    ) -> Result<Vec<(u64, Uuid)>, StoreError> {
        if through <= created {
            return Ok(Vec::new());
        }
        let log = &self.log;
        let least = REMEMBERED_MESSAGES as u64;
        let (from, _) = log
            .latest_from(thread, created, through, least, least + least / 4)
            .await?;
        let mut latest = log
            .ids(thread, from, Some(through), IDS_BATCH, usize::MAX)
            .await?;
        latest.retain(|(at, _)| *at > created);
        let keep_from = latest.len().saturating_sub(REMEMBERED_MESSAGES);
        latest.drain(..keep_from);
        for at in unnamed(&latest) {
            let id = id_stored_at(&*self.log, thread, at).await?;
            if let Some(entry) = latest.iter_mut().find(|(stored, _)| *stored == at) {
                entry.1 = id;
            }
        }
        Ok(latest
            .into_iter()
            .filter_map(|(at, id)| Some((at, id?)))
            .collect())
    }

    /// How many threads this process is watching.
    pub fn watched_threads(&self) -> usize {
        self.feeds.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// The threads this process is watching.
    pub fn watched(&self) -> Vec<Uuid> {
        let feeds = self.feeds.lock().unwrap_or_else(|e| e.into_inner());
        feeds.keys().copied().collect()
    }

    /// Ends the feed of an erased thread: its sockets close with [`THREAD_ERASED`], its task
    /// stops, and a socket that opens on the thread afterwards starts a feed of its own,
    /// which finds no thread.
    pub fn erase(&self, thread: Uuid) {
        let mut feeds = self.feeds.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(feed) = feeds.remove(&thread) {
            feed.erased.cancel();
            feed.stop.cancel();
            metrics::gauge!(names::THREADS_WATCHED).set(feeds.len() as f64);
            tracing::info!(%thread, "closing the sockets of an erased thread");
        }
    }

    /// The frames stored after `after` up to `through` (where the socket's live frames start),
    /// without repeats; `None` if they are more than [`BACKLOG_MAX`] or [`BACKLOG_MAX_BYTES`].
    /// Read first with headers only (their count and size), then with payloads.
    async fn backlog(
        &self,
        thread: Uuid,
        shared: &Shared,
        after: u64,
        through: u64,
    ) -> Result<Option<Vec<Utf8Bytes>>, StoreError> {
        if after >= through {
            return Ok(Some(Vec::new()));
        }
        let sizes = self
            .log
            .sizes(thread, after + 1, Some(through), BACKLOG_MAX + 1)
            .await?;
        let bytes: usize = sizes.iter().sum();
        if sizes.len() > BACKLOG_MAX || bytes > BACKLOG_MAX_BYTES {
            return Ok(None);
        }
        let stored = self
            .log
            .messages(thread, after + 1, Some(through), BACKLOG_MAX)
            .await?;
        let (shown, unchecked) = {
            let state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
            let shown: Vec<_> = stored
                .iter()
                .filter_map(|m| Some((m.sequence, state.check(m, self.log.subjects())?)))
                .collect();
            let unchecked: Vec<_> = shown
                .iter()
                .filter_map(|(at, m)| Some((m.id, state.shown.unchecked(m.id, *at)?)))
                .collect();
            (shown, unchecked)
        };
        let unchecked: HashSet<_> = unchecked.into_iter().collect();
        // A copy of an id that the feed knows from `Nats-Msg-Id` alone: its first copy is
        // read whole before this one is taken for a repeat.
        for (id, first) in unchecked {
            let found = id_stored_at(&*self.log, thread, first).await?;
            let mut state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
            state.shown.checked(id, first, found);
        }
        let mut state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut in_backlog = HashSet::new();
        Ok(Some(
            shown
                .into_iter()
                .filter_map(|(at, shown)| {
                    if !state.shown.is_first(shown.id, at) || !in_backlog.insert(shown.id) {
                        return None;
                    }
                    // The first copy of an id whose learned copy turned out to be another
                    // message: a later copy is its repeat.
                    if state.shown.sequence_of(shown.id).is_none() {
                        state.shown.insert(shown.id, at);
                    }
                    Some(shown.frame)
                })
                .collect(),
        ))
    }

    /// Subscribes to the thread's stored messages, then asks the stream for the thread's last
    /// sequence (one request: the feed shows what follows it) and learns the ids of the
    /// thread's latest messages up to it ([`latest_ids`](Self::latest_ids), a few requests
    /// whatever the thread's length: the feed drops a repeat of any of them), then hands over
    /// to a task that follows the live ones. The server handles a connection's operations in
    /// order, so the subscription is in place before the stream is read: nothing falls
    /// between the two. Sockets that open on the thread meanwhile wait for this one start.
    async fn start(
        &self,
        thread: Uuid,
        shared: Arc<Shared>,
        stop: CancellationToken,
    ) -> Result<(), WatchError> {
        let subscriber = self.log.subscribe(thread).await?;
        let created = self
            .log
            .thread_created_at(thread)
            .await?
            .ok_or(WatchError::UnknownThread(thread))?;
        shared
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .created = created;
        let mut follower = Follower {
            thread,
            queue: self.queue,
            subjects: self.log.subjects().clone(),
            log: self.log.clone(),
            shared,
        };
        follower.learn_last().await?;
        let last = follower.last();
        let latest = {
            let _turn = self.resumes.acquire().await.map_err(StoreError::nats)?;
            self.latest_ids(thread, created, last).await?
        };
        let learned = latest.len();
        {
            let mut state = follower
                .shared
                .state
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            for (at, id) in latest {
                state.shown.learn(id, at);
            }
        }
        tracing::debug!(%thread, learned, "watching");
        let connections = self.log.connections();
        tokio::spawn(follower.run(subscriber, connections, stop));
        Ok(())
    }

    fn leave(&self, thread: Uuid) {
        let mut feeds = self.feeds.lock().unwrap_or_else(|e| e.into_inner());
        // A feed ended by an erasure is gone from the map already: this finds none, or a newer
        // feed of the same thread, which it leaves alone while sockets watch it.
        if let Some(feed) = feeds.get(&thread) {
            if feed.shared.sender.receiver_count() == 0 {
                feed.stop.cancel();
                feeds.remove(&thread);
                metrics::gauge!(names::THREADS_WATCHED).set(feeds.len() as f64);
                tracing::debug!(%thread, "no longer watching");
            }
        }
    }
}

/// The stream sequences of the latest [`UNNAMED_LOOKUPS`] messages without a `Nats-Msg-Id`
/// among `latest` (oldest first), newest first.
fn unnamed(latest: &[(u64, Option<Uuid>)]) -> Vec<u64> {
    let unnamed = latest.iter().rev().filter(|(_, id)| id.is_none());
    unnamed.take(UNNAMED_LOOKUPS).map(|(at, _)| *at).collect()
}

/// The task behind a feed: follows the thread's stored messages in stream order.
struct Follower {
    thread: Uuid,
    /// The sockets' queue length: a gap is filled no faster than the slowest socket reads.
    queue: usize,
    subjects: Subjects,
    log: Arc<dyn ThreadMessages>,
    shared: Arc<Shared>,
}

impl Follower {
    async fn run(
        mut self,
        mut subscriber: LiveMessages,
        mut connections: watch::Receiver<u64>,
        stop: CancellationToken,
    ) {
        connections.mark_unchanged();
        let mut gap = false;
        // Reading the stream (`catch_up`) is rare and its future large: it is boxed where it
        // is awaited, so that the task each watched thread keeps stays small.
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                message = subscriber.next() => {
                    let Some(message) = message else { break };
                    gap = self.follow(message).await.is_err();
                }
                changed = connections.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    tracing::info!(thread = %self.thread, "NATS connection back: reading what the stream stored meanwhile");
                    gap = Box::pin(self.catch_up(None)).await.is_err();
                }
                _ = tokio::time::sleep(REPAIR_RETRY), if gap => {
                    gap = Box::pin(self.catch_up(None)).await.is_err();
                }
            }
        }
        // Dropping the subscriber unsubscribes.
    }

    /// Handles one republished message; fills the gap first if the thread's previous
    /// sequence is one this feed has not handled.
    async fn follow(&mut self, live: LiveMessage) -> Result<(), StoreError> {
        let (sequence, previous) = (live.message.sequence, live.previous);
        let last = self.last();
        if sequence <= last {
            return Ok(());
        }
        if previous > last {
            tracing::info!(thread = %self.thread, last, previous, "filling a gap from the stream");
            Box::pin(self.catch_up(Some(sequence - 1))).await?;
        }
        self.check_and_show(&live.message).await
    }

    /// Asks the stream for the thread's last sequence, before any socket watches it: the
    /// feed shows what is stored after it.
    async fn learn_last(&mut self) -> Result<(), StoreError> {
        let last = self.log.last_sequence(self.thread).await?;
        let mut state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        state.last = state.last.max(last);
        Ok(())
    }

    /// Reads and shows what the stream stored after the last handled sequence, up to
    /// `through` (everything if `None`): [`CATCH_UP_BATCH`] messages at a time, each batch
    /// read through one consumer (two requests), so that a long gap costs bounded memory and
    /// few requests.
    async fn catch_up(&mut self, through: Option<u64>) -> Result<(), StoreError> {
        let room = (self.queue / 2).max(1);
        loop {
            let from = self.last() + 1;
            if through.is_some_and(|through| from > through) {
                return Ok(());
            }
            let stored = self
                .log
                .messages(self.thread, from, through, CATCH_UP_BATCH)
                .await
            .inspect_err(
                |e| tracing::warn!(thread = %self.thread, "cannot read the stream yet: {}", report(e)),
            )?;
            for message in &stored {
                let patience = tokio::time::Instant::now() + REPAIR_PATIENCE;
                while self.shared.sender.len() >= room && tokio::time::Instant::now() < patience {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                self.check_and_show(message).await?;
            }
            if stored.len() < CATCH_UP_BATCH {
                return Ok(());
            }
        }
    }

    fn last(&self) -> u64 {
        self.shared
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last
    }

    /// Shows a stored message, after reading whole the first copy of its id if the feed
    /// knows that copy from its `Nats-Msg-Id` alone (once per such id).
    async fn check_and_show(&self, message: &StoredMessage) -> Result<(), StoreError> {
        if let Some((id, first)) = self.show(message) {
            let found = id_stored_at(&*self.log, self.thread, first).await?;
            let mut state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
            state.shown.checked(id, first, found);
            drop(state);
            self.show(message);
        }
        Ok(())
    }

    /// Sends a stored message to the thread's sockets unless it is invalid or a repeat. If it
    /// would repeat a copy that the feed knows from its `Nats-Msg-Id` alone, it is left for
    /// [`check_and_show`](Self::check_and_show): the id and that copy's sequence.
    fn show(&self, message: &StoredMessage) -> Option<(Uuid, u64)> {
        let mut state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        if message.sequence <= state.last {
            return None;
        }
        let checked = state.check(message, &self.subjects);
        if let Some(first) = checked
            .as_ref()
            .and_then(|shown| Some((shown.id, state.shown.unchecked(shown.id, message.sequence)?)))
        {
            return Some(first);
        }
        state.last = message.sequence;
        if let Some(shown) = checked {
            if state.shown.insert(shown.id, message.sequence) {
                // An error only means no socket is listening right now.
                let _ = self.shared.sender.send(Frame {
                    sequence: message.sequence,
                    text: shown.frame,
                });
            }
        }
        None
    }
}
