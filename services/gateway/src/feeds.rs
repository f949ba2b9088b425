//! One feed per watched thread, shared by all of that thread's sockets in this process and
//! dropped when the last one closes. A feed shows only what the event stream stored: it
//! listens on the subject where the NATS server republishes each stored message with its
//! stream sequence and the thread's previous one (`Nats-Sequence`, `Nats-Last-Sequence`), so
//! a message published but not stored never reaches a socket, and a missed one shows as a gap
//! that the feed fills from the stream before going on. The same happens when the NATS
//! connection comes back. Each message is checked once and its payload bytes are shared by
//! every socket: serialise once, fan out shared bytes.

use crate::history::{stored_after, Shown, ShownIds, StoredMessage};
use axum::extract::ws::Utf8Bytes;
use futures::StreamExt;
use proto_events::Subjects;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use threadline_infra::metrics::names;
use threadline_infra::{JetStreamLog, StoreError};
use tokio::sync::{broadcast, watch, OnceCell};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How long a feed waits before trying again to fill a gap that it could not read.
const REPAIR_RETRY: Duration = Duration::from_secs(1);

/// Longest a feed filling a gap waits, per message, for its slowest socket to make room in
/// the queue; past it, that socket falls behind and is closed as too slow (1013).
const REPAIR_PATIENCE: Duration = Duration::from_secs(2);

/// Why a socket cannot watch a thread.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("message {0} is not among the thread's remembered messages")]
    UnknownSince(Uuid),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The live feeds of this gateway process.
pub struct Feeds {
    log: Arc<JetStreamLog>,
    /// Frames a socket may fall behind before it is closed as too slow.
    queue: usize,
    feeds: Mutex<HashMap<Uuid, Feed>>,
}

struct Feed {
    shared: Arc<Shared>,
    ready: Arc<OnceCell<()>>,
    stop: CancellationToken,
}

/// What a feed's task and its sockets share. `sender` is used only under `state`'s lock, so
/// a socket that joins learns exactly which sequence its first live frame follows.
struct Shared {
    state: Mutex<State>,
    sender: broadcast::Sender<Utf8Bytes>,
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
        message.check(subjects)
    }
}

/// A socket's place on a thread's feed: the frames it missed (when it resumed), then the live
/// ones. Dropping it leaves the feed.
pub struct Watch {
    thread: Uuid,
    backlog: Vec<Utf8Bytes>,
    receiver: Option<broadcast::Receiver<Utf8Bytes>>,
    feeds: Arc<Feeds>,
}

impl Watch {
    /// The frames to send before the live ones (empty without `since`).
    pub fn take_backlog(&mut self) -> Vec<Utf8Bytes> {
        std::mem::take(&mut self.backlog)
    }

    pub fn receiver(&mut self) -> &mut broadcast::Receiver<Utf8Bytes> {
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
    pub fn new(log: Arc<JetStreamLog>, queue: usize) -> Arc<Self> {
        Arc::new(Self {
            log,
            queue: queue.max(1),
            feeds: Mutex::new(HashMap::new()),
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
        let (shared, ready, stop, receiver) = {
            let mut feeds = self.feeds.lock().unwrap_or_else(|e| e.into_inner());
            let feed = feeds.entry(thread).or_insert_with(|| Feed {
                shared: Arc::new(Shared {
                    state: Mutex::new(State::default()),
                    sender: broadcast::channel(self.queue).0,
                }),
                ready: Arc::new(OnceCell::new()),
                stop: CancellationToken::new(),
            });
            let receiver = feed.shared.sender.subscribe();
            let joined = (
                feed.shared.clone(),
                feed.ready.clone(),
                feed.stop.clone(),
                receiver,
            );
            metrics::gauge!(names::THREADS_WATCHED).set(feeds.len() as f64);
            joined
        };
        let mut watch = Watch {
            thread,
            backlog: Vec::new(),
            receiver: Some(receiver),
            feeds: self.clone(),
        };
        ready
            .get_or_try_init(|| self.start(thread, shared.clone(), stop))
            .await?;
        let (joined_at, since_sequence) = {
            let state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
            watch.receiver = Some(shared.sender.subscribe());
            let since_sequence = match since {
                Some(id) => Some(
                    state
                        .shown
                        .sequence_of(id)
                        .ok_or(WatchError::UnknownSince(id))?,
                ),
                None => None,
            };
            (state.last, since_sequence)
        };
        if let Some(after) = since_sequence {
            watch.backlog = self.backlog(thread, &shared, after, joined_at).await?;
        }
        Ok(watch)
    }

    /// How many threads this process is watching.
    pub fn watched_threads(&self) -> usize {
        self.feeds.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// The frames stored after `after` up to `through` (where the socket's live frames start),
    /// without repeats.
    async fn backlog(
        &self,
        thread: Uuid,
        shared: &Shared,
        after: u64,
        through: u64,
    ) -> Result<Vec<Utf8Bytes>, StoreError> {
        if after >= through {
            return Ok(Vec::new());
        }
        let subject = self.log.subjects().message_posted(thread);
        let stored = stored_after(
            self.log.jetstream(),
            &self.log.settings().stream_name,
            &subject,
            after,
            Some(through),
        )
        .await?;
        let state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut in_backlog = HashSet::new();
        Ok(stored
            .iter()
            .filter_map(|message| {
                let shown = state.check(message, self.log.subjects())?;
                (state.shown.is_first(shown.id, message.sequence) && in_backlog.insert(shown.id))
                    .then_some(shown.frame)
            })
            .collect())
    }

    /// Subscribes to the thread's stored messages, then reads what the stream already holds
    /// (so the feed knows every id and sequence up to now), then hands over to a task that
    /// follows the live ones. The server handles a connection's operations in order, so the
    /// subscription is in place before the stream is read: nothing falls between the two.
    async fn start(
        &self,
        thread: Uuid,
        shared: Arc<Shared>,
        stop: CancellationToken,
    ) -> Result<(), StoreError> {
        let subscriber = self
            .log
            .client()
            .subscribe(self.log.subjects().stored_messages(thread))
            .await
            .map_err(StoreError::nats)?;
        let created = self
            .log
            .thread_created_at(thread)
            .await?
            .ok_or_else(|| StoreError::nats(format!("thread {thread} has no ThreadCreated")))?;
        shared
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .created = created;
        let mut follower = Follower {
            thread,
            queue: self.queue,
            subject: self.log.subjects().message_posted(thread),
            subjects: self.log.subjects().clone(),
            log: self.log.clone(),
            shared,
        };
        follower.learn_history().await?;
        tracing::debug!(%thread, "watching");
        let connections = self.log.connections();
        tokio::spawn(follower.run(subscriber, connections, stop));
        Ok(())
    }

    fn leave(&self, thread: Uuid) {
        let mut feeds = self.feeds.lock().unwrap_or_else(|e| e.into_inner());
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

/// The task behind a feed: follows the thread's stored messages in stream order.
struct Follower {
    thread: Uuid,
    /// The sockets' queue length: a gap is filled no faster than the slowest socket reads.
    queue: usize,
    /// The thread's message subject in the event stream.
    subject: String,
    subjects: Subjects,
    log: Arc<JetStreamLog>,
    shared: Arc<Shared>,
}

impl Follower {
    async fn run(
        mut self,
        mut subscriber: async_nats::Subscriber,
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
    async fn follow(&mut self, message: async_nats::Message) -> Result<(), StoreError> {
        use async_nats::header::{self, HeaderName};
        let header = |name: HeaderName| {
            message
                .headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_owned())
        };
        let sequence = header(header::NATS_SEQUENCE).and_then(|v| v.parse::<u64>().ok());
        let previous = header(header::NATS_LAST_SEQUENCE).and_then(|v| v.parse::<u64>().ok());
        let (Some(sequence), Some(previous), Some(subject)) =
            (sequence, previous, header(header::NATS_SUBJECT))
        else {
            tracing::warn!(subject = %message.subject, "ignoring a message that the stream did not republish");
            return Ok(());
        };
        let last = self.last();
        if sequence <= last {
            return Ok(());
        }
        if previous > last {
            tracing::info!(thread = %self.thread, last, previous, "filling a gap from the stream");
            Box::pin(self.catch_up(Some(sequence - 1))).await?;
        }
        self.show(&StoredMessage {
            sequence,
            subject,
            headers: message.headers,
            payload: message.payload,
        });
        Ok(())
    }

    /// Reads what the stream holds of the thread, before any socket watches it: its message
    /// ids and last sequence, sent to no one.
    async fn learn_history(&mut self) -> Result<(), StoreError> {
        let stored = stored_after(
            self.log.jetstream(),
            &self.log.settings().stream_name,
            &self.subject,
            0,
            None,
        )
        .await?;
        let mut state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        for message in &stored {
            if let Some(shown) = state.check(message, &self.subjects) {
                state.shown.insert(shown.id, message.sequence);
            }
            state.last = state.last.max(message.sequence);
        }
        Ok(())
    }

    /// Reads and shows what the stream stored after the last handled sequence, up to
    /// `through` (everything if `None`).
    async fn catch_up(&mut self, through: Option<u64>) -> Result<(), StoreError> {
        let stored = stored_after(
            self.log.jetstream(),
            &self.log.settings().stream_name,
            &self.subject,
            self.last(),
            through,
        )
        .await
        .inspect_err(
            |e| tracing::warn!(thread = %self.thread, "cannot read the stream yet: {e}"),
        )?;
        let room = (self.queue / 2).max(1);
        for message in &stored {
            let patience = tokio::time::Instant::now() + REPAIR_PATIENCE;
            while self.shared.sender.len() >= room && tokio::time::Instant::now() < patience {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            self.show(message);
        }
        Ok(())
    }

    fn last(&self) -> u64 {
        self.shared
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last
    }

    /// Sends a stored message to the thread's sockets unless it is invalid or a repeat.
    fn show(&self, message: &StoredMessage) {
        let mut state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        if message.sequence <= state.last {
            return;
        }
        state.last = message.sequence;
        let checked = state.check(message, &self.subjects);
        if let Some(shown) = checked {
            if state.shown.insert(shown.id, message.sequence) {
                // An error only means no socket is listening right now.
                let _ = self.shared.sender.send(shown.frame);
            }
        }
    }
}
