//! Reading ahead: the live projector's consumer is polled by a task of its own, so that pull
//! requests go out and events arrive while the previous batch is being written, and the
//! writer takes whatever has arrived, up to a batch, as soon as it is free.
//!
//! Polled only between batches (as it was before), the consumer sent its next pull request
//! only once a write had finished, so events arrived at the pace of the writes and batches
//! stayed small (80 events on average): a fresh projector replayed 1,000,000 events at about
//! 43,000 events/s; read ahead, at about 74,000 (`rebuild_bench --live`, same run).
//! Under light traffic nothing waits for a batch to fill: a lone event is written at once.
//!
//! What is read ahead is bounded by count and by bytes: an item holds its share of the byte
//! bound until the batch it went into is written (its [`Batch`] dropped), so the events
//! queued and in hand together stay within the bound, plus the one the reader waits to
//! queue. Nothing read ahead is acknowledged before it is written. When the projector stops,
//! [`ReadAhead::stop`] hands back everything read and not taken, with what the source holds
//! already received, so that the projector gives it back to the broker (a NAK): otherwise the
//! broker would hand those events to the next projector only after its acknowledgement wait
//! (`PROJECTOR_ACK_WAIT`), newer events first, and read-your-writes GETs would wait for them
//! meanwhile. Events read ahead are not kept (see `Projector::keeping`): if the batch before
//! them takes longer than the wait, the broker delivers them again, and applying an event
//! twice changes nothing.

use futures::{FutureExt, Stream, StreamExt};
use std::sync::Arc;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Errors in a row of the source that end the draining of what it holds on [`ReadAhead::stop`].
const DRAIN_ERRORS: usize = 8;

/// Items of a source, read ahead by a task of their own; see the module's documentation.
pub struct ReadAhead<T> {
    queued: mpsc::Receiver<(T, Option<OwnedSemaphorePermit>)>,
    /// The reader ends with the items it read and could not queue.
    reader: JoinHandle<Vec<T>>,
    stop: CancellationToken,
}

/// Items taken together; their share of the byte bound is given back when this is dropped.
pub struct Batch<T> {
    pub items: Vec<T>,
    _held: Vec<OwnedSemaphorePermit>,
}

impl<T: Send + 'static> ReadAhead<T> {
    /// Starts reading `source` ahead: at most `items` items queued, and at most `bytes` bytes
    /// (each item's size given by `size`) queued or in batches not yet dropped (`None`: no
    /// bound on bytes). An item larger than the bound waits until nothing else is held.
    /// Errors of the source are logged and passed over, as the consumer's are.
    pub fn start<S, E>(source: S, size: fn(&T) -> usize, items: usize, bytes: Option<usize>) -> Self
    where
        S: Stream<Item = Result<T, E>> + Send + Unpin + 'static,
        E: std::fmt::Display + Send,
    {
        let (queue, queued) = mpsc::channel(items.max(1));
        let bound = bytes.map(|b| b.clamp(1, u32::MAX as usize));
        let room = bound.map(|b| Arc::new(Semaphore::new(b)));
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let reader = tokio::spawn(async move {
            let mut source = source;
            let mut left = Vec::new();
            loop {
                let item = tokio::select! {
                    biased;
                    _ = stopped.cancelled() => break,
                    item = source.next() => item,
                };
                let item = match item {
                    Some(Ok(item)) => item,
                    Some(Err(e)) => {
                        tracing::warn!("consumer: {e}");
                        continue;
                    }
                    None => return left,
                };
                let held = match (&room, bound) {
                    (Some(room), Some(bound)) => {
                        let share = size(&item).clamp(1, bound) as u32;
                        tokio::select! {
                            biased;
                            _ = stopped.cancelled() => {
                                left.push(item);
                                break;
                            }
                            permit = room.clone().acquire_many_owned(share) => match permit {
                                Ok(permit) => Some(permit),
                                Err(_) => {
                                    left.push(item);
                                    break;
                                }
                            },
                        }
                    }
                    _ => None,
                };
                let place = tokio::select! {
                    biased;
                    _ = stopped.cancelled() => None,
                    place = queue.reserve() => place.ok(),
                };
                match place {
                    Some(place) => place.send((item, held)),
                    None => {
                        left.push(item);
                        break;
                    }
                }
            }
            // What the source has received already, without asking it for more.
            let mut errors = 0;
            while errors < DRAIN_ERRORS {
                match source.next().now_or_never() {
                    Some(Some(Ok(item))) => {
                        errors = 0;
                        left.push(item);
                    }
                    Some(Some(Err(_))) => errors += 1,
                    Some(None) | None => break,
                }
            }
            left
        });
        Self {
            queued,
            reader,
            stop,
        }
    }

    /// The items read ahead, at most `limit` of them, waiting for one if there is none;
    /// `None` once the source has ended and everything read was taken.
    pub async fn next_batch(&mut self, limit: usize) -> Option<Batch<T>> {
        let mut taken = Vec::with_capacity(limit.max(1));
        if self.queued.recv_many(&mut taken, limit.max(1)).await == 0 {
            return None;
        }
        let mut items = Vec::with_capacity(taken.len());
        let mut held = Vec::with_capacity(taken.len());
        for (item, permit) in taken {
            items.push(item);
            held.extend(permit);
        }
        Some(Batch { items, _held: held })
    }

    /// Stops reading and hands back, in order, every item read and not taken: those queued,
    /// then those the source had received already (the source is dropped afterwards).
    pub async fn stop(mut self) -> Vec<T> {
        self.stop.cancel();
        let left = (&mut self.reader).await.unwrap_or_default();
        self.queued.close();
        let mut items = Vec::new();
        while let Ok((item, _)) = self.queued.try_recv() {
            items.push(item);
        }
        items.extend(left);
        items
    }
}

impl<T> Drop for ReadAhead<T> {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// A source of `n` items of 10 bytes each that counts how many were read from it.
    fn counted(n: usize) -> (impl Stream<Item = Result<usize, String>>, Arc<AtomicUsize>) {
        let read = Arc::new(AtomicUsize::new(0));
        let counter = read.clone();
        let source = futures::stream::iter(0..n).map(move |i| {
            counter.fetch_add(1, Ordering::SeqCst);
            Ok(i)
        });
        (source, read)
    }

    fn ten_bytes(_: &usize) -> usize {
        10
    }

    /// Lets the reader run as far as it can.
    async fn settle() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    #[tokio::test]
    async fn items_come_in_order_in_batches_of_at_most_the_limit() {
        let (source, _) = counted(10);
        let mut ahead = ReadAhead::start(Box::pin(source), ten_bytes, 100, None);
        settle().await;
        let mut batches = Vec::new();
        while let Some(batch) = ahead.next_batch(4).await {
            batches.push(batch.items);
        }
        assert_eq!(
            batches,
            vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7], vec![8, 9]]
        );
    }

    #[tokio::test]
    async fn what_is_queued_or_in_hand_stays_within_the_byte_bound() {
        let (source, read) = counted(100);
        let mut ahead = ReadAhead::start(Box::pin(source), ten_bytes, 100, Some(30));
        settle().await;
        // Three items hold the 30 bytes; the reader holds a fourth, waiting for room.
        assert_eq!(read.load(Ordering::SeqCst), 4);
        let batch = ahead.next_batch(2).await.expect("a batch");
        assert_eq!(batch.items, vec![0, 1]);
        settle().await;
        assert_eq!(
            read.load(Ordering::SeqCst),
            4,
            "a batch in hand still holds its bytes"
        );
        drop(batch);
        settle().await;
        assert_eq!(read.load(Ordering::SeqCst), 6);
        let batch = ahead.next_batch(10).await.expect("a batch");
        assert_eq!(batch.items, vec![2, 3, 4]);
    }

    #[tokio::test]
    async fn an_item_larger_than_the_bound_comes_alone_once_nothing_else_is_held() {
        let sizes = [5usize, 500, 5];
        let source = futures::stream::iter(sizes.map(Ok::<_, String>));
        let mut ahead = ReadAhead::start(source, |size| *size, 10, Some(100));
        let first = ahead.next_batch(10).await.expect("a batch");
        assert_eq!(first.items, vec![5]);
        settle().await;
        drop(first);
        let large = ahead.next_batch(10).await.expect("the large item");
        assert_eq!(large.items, vec![500]);
        drop(large);
        let last = ahead.next_batch(10).await.expect("the last item");
        assert_eq!(last.items, vec![5]);
        assert!(ahead.next_batch(10).await.is_none());
    }

    #[tokio::test]
    async fn stopping_hands_back_what_was_read_and_not_taken_in_order() {
        let (source, read) = counted(100);
        let mut ahead = ReadAhead::start(Box::pin(source), ten_bytes, 100, Some(30));
        settle().await;
        let batch = ahead.next_batch(2).await.expect("a batch");
        assert_eq!(batch.items, vec![0, 1]);
        // Queued: 2; waiting for room: 3; received by the source and not read yet: the rest.
        let left = ahead.stop().await;
        assert_eq!(left, (2..100).collect::<Vec<_>>());
        assert_eq!(read.load(Ordering::SeqCst), 100);
    }

    #[tokio::test]
    async fn stopping_does_not_wait_for_the_source() {
        let source =
            futures::stream::iter([Ok::<_, String>(1), Ok(2)]).chain(futures::stream::pending());
        let mut ahead = ReadAhead::start(Box::pin(source), |_: &i32| 1, 1, None);
        let first = ahead.next_batch(1).await.expect("a batch");
        assert_eq!(first.items, vec![1]);
        let left = tokio::time::timeout(Duration::from_secs(5), ahead.stop())
            .await
            .expect("stopped at once");
        assert_eq!(left, vec![2]);
    }

    #[tokio::test]
    async fn errors_of_the_source_are_passed_over() {
        let source = futures::stream::iter([Ok(1), Err("lost a heartbeat"), Ok(2)]);
        let mut ahead = ReadAhead::start(source, |_: &i32| 1, 10, Some(10));
        settle().await;
        let batch = ahead.next_batch(10).await.expect("a batch");
        assert_eq!(batch.items, vec![1, 2]);
    }
}
