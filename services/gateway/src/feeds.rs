//! One NATS subscription per watched thread, shared by all of that thread's sockets in this
//! process and dropped when the last one closes. Each event is checked once and its payload
//! bytes are shared by every socket: serialise once, fan out shared bytes.

use axum::extract::ws::Utf8Bytes;
use futures::StreamExt;
use proto_events::{headers, Event, EventKind, Subjects};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use threadline_infra::metrics::names;
use threadline_infra::StoreError;
use tokio::sync::{broadcast, OnceCell};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How many recent message ids a feed remembers to drop duplicates (a publish retried by its
/// publisher reaches core subscribers twice; JetStream stores it once).
const RECENT_IDS: usize = 1024;

/// The live feeds of this gateway process.
pub struct Feeds {
    client: async_nats::Client,
    subjects: Subjects,
    /// Frames a socket may fall behind before it is closed as too slow.
    queue: usize,
    feeds: Mutex<HashMap<Uuid, Feed>>,
}

struct Feed {
    sender: broadcast::Sender<Utf8Bytes>,
    subscribed: Arc<OnceCell<()>>,
    stop: CancellationToken,
}

/// A socket's place on a thread's feed. Dropping it leaves the feed.
pub struct Watch {
    thread: Uuid,
    receiver: Option<broadcast::Receiver<Utf8Bytes>>,
    feeds: Arc<Feeds>,
}

impl Watch {
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
    pub fn new(client: async_nats::Client, subjects: Subjects, queue: usize) -> Arc<Self> {
        Arc::new(Self {
            client,
            subjects,
            queue: queue.max(1),
            feeds: Mutex::new(HashMap::new()),
        })
    }

    /// Joins a thread's feed, subscribing to its subject if this is the first socket on it.
    /// When this returns, the subscription is registered at the server: every message published
    /// afterwards reaches the returned watch.
    pub async fn watch(self: &Arc<Self>, thread: Uuid) -> Result<Watch, StoreError> {
        let (receiver, subscribed, sender, stop) = {
            let mut feeds = self.feeds.lock().unwrap_or_else(|e| e.into_inner());
            let feed = feeds.entry(thread).or_insert_with(|| Feed {
                sender: broadcast::channel(self.queue).0,
                subscribed: Arc::new(OnceCell::new()),
                stop: CancellationToken::new(),
            });
            let joined = (
                feed.sender.subscribe(),
                feed.subscribed.clone(),
                feed.sender.clone(),
                feed.stop.clone(),
            );
            metrics::gauge!(names::THREADS_WATCHED).set(feeds.len() as f64);
            joined
        };
        let watch = Watch {
            thread,
            receiver: Some(receiver),
            feeds: self.clone(),
        };
        subscribed
            .get_or_try_init(|| self.subscribe(thread, sender, stop))
            .await?;
        Ok(watch)
    }

    /// How many threads this process is subscribed to.
    pub fn watched_threads(&self) -> usize {
        self.feeds.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    async fn subscribe(
        &self,
        thread: Uuid,
        sender: broadcast::Sender<Utf8Bytes>,
        stop: CancellationToken,
    ) -> Result<(), StoreError> {
        let subject = self.subjects.message_posted(thread);
        let subscriber = self
            .client
            .subscribe(subject.clone())
            .await
            .map_err(StoreError::nats)?;
        // The server handles a connection's operations in order: once it has answered a
        // request sent after SUB, the subscription is in place.
        match self.client.request("_threadline.sync", "".into()).await {
            Ok(_) => {}
            Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => {}
            Err(e) => return Err(StoreError::nats(e)),
        }
        tracing::debug!(%thread, "subscribed");
        tokio::spawn(forward(subscriber, self.subjects.clone(), sender, stop));
        Ok(())
    }

    fn leave(&self, thread: Uuid) {
        let mut feeds = self.feeds.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(feed) = feeds.get(&thread) {
            if feed.sender.receiver_count() == 0 {
                feed.stop.cancel();
                feeds.remove(&thread);
                metrics::gauge!(names::THREADS_WATCHED).set(feeds.len() as f64);
                tracing::debug!(%thread, "unsubscribed");
            }
        }
    }
}

/// Forwards a thread's valid, not yet seen messages to its sockets until stopped.
async fn forward(
    mut subscriber: async_nats::Subscriber,
    subjects: Subjects,
    sender: broadcast::Sender<Utf8Bytes>,
    stop: CancellationToken,
) {
    let mut recent = RecentIds::default();
    loop {
        let message = tokio::select! {
            _ = stop.cancelled() => break,
            message = subscriber.next() => message,
        };
        let Some(message) = message else { break };
        if let Some(frame) = check(&subjects, &message, &mut recent) {
            // An error only means no socket is listening right now.
            let _ = sender.send(frame);
        }
    }
    // Dropping the subscriber unsubscribes.
}

/// The frame for a message, or `None` if it is invalid or a duplicate.
pub fn check(
    subjects: &Subjects,
    message: &async_nats::Message,
    recent: &mut RecentIds,
) -> Option<Utf8Bytes> {
    let header = |name: &str| {
        message
            .headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str())
    };
    let event = match Event::decode(
        subjects,
        message.subject.as_str(),
        header(headers::EVENT),
        header(headers::SCHEMA_VERSION),
        &message.payload,
    ) {
        Ok(event) if event.kind() == EventKind::MessagePosted => event,
        Ok(_) => return None,
        Err(e) => {
            tracing::warn!(subject = %message.subject, "not pushing an invalid event: {e}");
            return None;
        }
    };
    if !recent.insert(event.id()) {
        return None;
    }
    // A payload that decoded as JSON is valid UTF-8.
    Utf8Bytes::try_from(message.payload.clone()).ok()
}

/// The last few message ids a feed has pushed.
#[derive(Default)]
pub struct RecentIds {
    order: VecDeque<Uuid>,
    set: HashSet<Uuid>,
}

impl RecentIds {
    /// Remembers an id; false if it was already remembered.
    pub fn insert(&mut self, id: Uuid) -> bool {
        if !self.set.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > RECENT_IDS {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_ids_drop_duplicates_and_forget_old_ones() {
        let mut recent = RecentIds::default();
        assert!(recent.insert(Uuid::from_u128(1)));
        assert!(!recent.insert(Uuid::from_u128(1)));
        for i in 2..=(RECENT_IDS as u128 + 1) {
            assert!(recent.insert(Uuid::from_u128(i)));
        }
        assert!(
            recent.insert(Uuid::from_u128(1)),
            "the oldest id is forgotten"
        );
    }
}
