//! Coalescing: callers that ask the same question at the same time share one request to the
//! broker, so its load is bounded per process, not per client request.
//!
//! Each request runs as a task of its own, to its answer or to its timeout, whatever its
//! callers do: a caller that goes away (its client closed the connection, and the server
//! dropped the handler) takes nothing with it, neither the request's turn among the lookups a
//! process may send at once nor its place in the table. So the table holds a question for at
//! most the timeout, and never more than its capacity of questions at once.

use futures::future::{BoxFuture, FutureExt, Shared};
use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The answer to a question, shared by every caller that waited for it; the error as text.
pub type Answer<T> = Result<T, String>;

type Table<K, T> = Arc<Mutex<HashMap<K, Shared<BoxFuture<'static, Answer<T>>>>>>;

/// Requests in flight, by question. A caller that asks while the same question is in flight
/// waits for that request's answer instead of sending its own.
pub struct Coalesce<K, T> {
    in_flight: Table<K, T>,
    /// How long a request may take; past it, its answer is an error.
    timeout: Duration,
    /// The most questions in flight at once; past it, a new question is answered with an
    /// error at once, without a request.
    capacity: usize,
}

impl<K, T> Coalesce<K, T>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    T: Clone + Send + Sync + 'static,
{
    /// Requests that each take at most `timeout`, at most `capacity` questions at once.
    pub fn new(timeout: Duration, capacity: usize) -> Self {
        Self {
            in_flight: Arc::default(),
            timeout,
            capacity,
        }
    }

    /// The answer to `key`: from the request in flight for it, or from `ask()`, sent now. The
    /// request may have been sent before this call: use [`get_fresh`](Self::get_fresh) when
    /// the answer must reflect everything that happened before it.
    pub async fn get<F>(&self, key: K, ask: impl FnOnce() -> F) -> Answer<T>
    where
        F: Future<Output = Answer<T>> + Send + 'static,
    {
        self.join(key, ask).0.await
    }

    /// The answer to `key` from a request sent after this call began: a caller that finds a
    /// request in flight waits for it, then for the next one (shared too).
    pub async fn get_fresh<F>(&self, key: K, ask: impl Fn() -> F) -> Answer<T>
    where
        F: Future<Output = Answer<T>> + Send + 'static,
    {
        self.get_fresh_if(key, ask, |_| true).await
    }

    /// The answer to `key`, from a request sent after this call began if the answer of the
    /// request in flight is one that `needs_fresh` says may be out of date; otherwise that
    /// one. A caller that sends the request itself never asks twice.
    pub async fn get_fresh_if<F>(
        &self,
        key: K,
        ask: impl Fn() -> F,
        needs_fresh: impl Fn(&Answer<T>) -> bool,
    ) -> Answer<T>
    where
        F: Future<Output = Answer<T>> + Send + 'static,
    {
        let (request, sent_by_us) = self.join(key.clone(), &ask);
        let answer = request.await;
        if sent_by_us || !needs_fresh(&answer) {
            return answer;
        }
        self.join(key, ask).0.await
    }

    /// The request in flight for `key`, or a new one; whether it was not in flight.
    fn join<F>(
        &self,
        key: K,
        ask: impl FnOnce() -> F,
    ) -> (Shared<BoxFuture<'static, Answer<T>>>, bool)
    where
        F: Future<Output = Answer<T>> + Send + 'static,
    {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(shared) = in_flight.get(&key) {
            return (shared.clone(), false);
        }
        if in_flight.len() >= self.capacity {
            let busy = format!("{} lookups in flight already", in_flight.len());
            return (futures::future::ready(Err(busy)).boxed().shared(), true);
        }
        let leave = Leave {
            table: self.in_flight.clone(),
            key: Some(key.clone()),
        };
        let (request, timeout) = (ask(), self.timeout);
        // A task of its own: it runs whether or not anyone waits for it. The table is locked
        // until the request is in it, so the task cannot leave the table before it is there.
        let task = tokio::spawn(async move {
            let answer = tokio::time::timeout(timeout, request)
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")));
            // Later callers ask afresh: an answer is shared only while in flight.
            drop(leave);
            answer
        });
        let shared = async move {
            task.await
                .unwrap_or_else(|e| Err(format!("the request failed: {e}")))
        }
        .boxed()
        .shared();
        in_flight.insert(key, shared.clone());
        (shared, true)
    }

    /// How many distinct questions are in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }
}

/// A request's place in the table, given up when the request ends, however it ends (with an
/// answer, or with a panic).
struct Leave<K: Eq + Hash, T> {
    table: Table<K, T>,
    key: Option<K>,
}

impl<K: Eq + Hash, T> Drop for Leave<K, T> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.table
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::sync::Notify;

    const LONG: Duration = Duration::from_secs(60);

    fn coalesce<K>(timeout: Duration, capacity: usize) -> Arc<Coalesce<K, usize>>
    where
        K: Eq + Hash + Clone + Send + Sync + 'static,
    {
        Arc::new(Coalesce::new(timeout, capacity))
    }

    /// A request that counts itself, and answers how many were sent so far.
    fn counted(asked: &Arc<AtomicUsize>) -> impl Fn() -> BoxFuture<'static, Answer<usize>> {
        let asked = asked.clone();
        move || {
            let asked = asked.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok(asked.fetch_add(1, Ordering::SeqCst) + 1)
            }
            .boxed()
        }
    }

    /// Waits until `done` holds; fails after a few seconds.
    async fn until(what: &str, done: impl Fn() -> bool) {
        tokio::time::timeout(Duration::from_secs(5), async {
            while !done() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_request_and_later_ones_ask_again() {
        let coalesce = coalesce(LONG, 100);
        let asked = Arc::new(AtomicUsize::new(0));
        let callers: Vec<_> = (0..10)
            .map(|_| {
                let (coalesce, ask) = (coalesce.clone(), counted(&asked));
                tokio::spawn(async move { coalesce.get(7, ask).await })
            })
            .collect();
        for caller in callers {
            assert_eq!(
                caller.await.unwrap(),
                Ok(1),
                "every caller got the one answer"
            );
        }
        assert_eq!(asked.load(Ordering::SeqCst), 1);
        assert_eq!(coalesce.in_flight(), 0);
        assert_eq!(coalesce.get(7, counted(&asked)).await, Ok(2));
        assert_eq!(coalesce.get(8, counted(&asked)).await, Ok(3));
    }

    #[tokio::test]
    async fn a_fresh_answer_comes_from_a_request_sent_after_the_call() {
        let coalesce = coalesce(LONG, 100);
        let asked = Arc::new(AtomicUsize::new(0));
        let early = tokio::spawn({
            let (coalesce, ask) = (coalesce.clone(), counted(&asked));
            async move { coalesce.get(1, ask).await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        // Joins the request in flight, which was sent before it: waits for the next one.
        assert_eq!(coalesce.get_fresh(1, counted(&asked)).await, Ok(2));
        assert_eq!(early.await.unwrap(), Ok(1));
        // Alone, it sends its own request and takes that answer.
        assert_eq!(coalesce.get_fresh(1, counted(&asked)).await, Ok(3));
    }

    #[tokio::test]
    async fn a_caller_that_sent_the_request_itself_does_not_ask_again() {
        let coalesce = coalesce(LONG, 100);
        let asked = Arc::new(AtomicUsize::new(0));
        let stale = |_: &Answer<usize>| true;
        assert_eq!(
            coalesce.get_fresh_if(1, counted(&asked), stale).await,
            Ok(1)
        );
        // One that found a request in flight asks again only for an answer that needs it.
        let early = tokio::spawn({
            let (coalesce, ask) = (coalesce.clone(), counted(&asked));
            async move { coalesce.get(1, ask).await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        let good = |answer: &Answer<usize>| answer != &Ok(2);
        assert_eq!(coalesce.get_fresh_if(1, counted(&asked), good).await, Ok(2));
        assert_eq!(early.await.unwrap(), Ok(2));
        assert_eq!(asked.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_request_whose_callers_all_went_away_still_runs_to_its_answer() {
        let coalesce = coalesce(LONG, 100);
        let (started, answered) = (Arc::new(Notify::new()), Arc::new(AtomicUsize::new(0)));
        let go_on = Arc::new(Notify::new());
        let ask = {
            let (started, answered, go_on) = (started.clone(), answered.clone(), go_on.clone());
            move || async move {
                started.notify_one();
                go_on.notified().await;
                Ok(answered.fetch_add(1, Ordering::SeqCst) + 1)
            }
        };
        let caller = tokio::spawn({
            let coalesce = coalesce.clone();
            async move { coalesce.get(1, ask).await }
        });
        started.notified().await;
        caller.abort();
        let _ = caller.await;
        // The answer comes after its only caller has gone, and nobody asks about 1 again.
        go_on.notify_one();
        until(
            "the request to run to its answer and leave the table",
            || coalesce.in_flight() == 0 && answered.load(Ordering::SeqCst) == 1,
        )
        .await;
    }

    #[tokio::test]
    async fn a_request_without_an_answer_ends_at_its_timeout() {
        let coalesce = coalesce(Duration::from_millis(50), 100);
        let never = || std::future::pending::<Answer<usize>>();
        let answer = tokio::time::timeout(Duration::from_secs(5), coalesce.get(1, never))
            .await
            .expect("an answer within the timeout");
        assert!(answer.unwrap_err().contains("no answer within"));
        assert_eq!(coalesce.in_flight(), 0);
        // Nobody waits for this one: it leaves the table at its timeout all the same.
        let _ = futures::poll!(Box::pin(coalesce.get(3, never)));
        until("the requests to time out", || coalesce.in_flight() == 0).await;
    }

    #[tokio::test]
    async fn past_its_capacity_a_new_question_is_refused_without_a_request() {
        let coalesce = coalesce(Duration::from_millis(200), 2);
        let asked = Arc::new(AtomicUsize::new(0));
        let slow = {
            let asked = asked.clone();
            move || {
                asked.fetch_add(1, Ordering::SeqCst);
                std::future::pending::<Answer<usize>>()
            }
        };
        for key in [1, 2] {
            let _ = futures::poll!(Box::pin(coalesce.get(key, slow.clone())));
        }
        assert_eq!(coalesce.in_flight(), 2);
        let refused = coalesce.get(3, slow.clone()).await;
        assert!(refused.unwrap_err().contains("in flight already"));
        assert_eq!(asked.load(Ordering::SeqCst), 2);
        until("the requests to time out", || coalesce.in_flight() == 0).await;
        let _ = futures::poll!(Box::pin(coalesce.get(3, slow)));
        assert_eq!(asked.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_request_that_panics_leaves_the_table() {
        let coalesce = coalesce(LONG, 100);
        let panics = || async { panic!("a request that panics") };
        let answer: Answer<usize> = coalesce.get(1, panics).await;
        assert!(answer.unwrap_err().contains("the request failed"));
        assert_eq!(coalesce.in_flight(), 0);
        assert_eq!(coalesce.get(1, || async { Ok(5) }).await, Ok(5));
    }
}
