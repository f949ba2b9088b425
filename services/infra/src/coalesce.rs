//! Coalescing: callers that ask the same question at the same time share one request to the
//! broker, so its load is bounded per process, not per client request.

use futures::future::{BoxFuture, FutureExt, Shared};
use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

/// Requests in flight, by question. A caller that asks while the same question is in flight
/// waits for that request's answer instead of sending its own.
pub struct Coalesce<K, V> {
    in_flight: Arc<Mutex<HashMap<K, Shared<BoxFuture<'static, V>>>>>,
}

impl<K, V> Default for Coalesce<K, V> {
    fn default() -> Self {
        Self {
            in_flight: Arc::default(),
        }
    }
}

impl<K, V> Coalesce<K, V>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// The answer to `key`: from the request in flight for it, or from `ask()`, sent now. The
    /// request may have been sent before this call: use [`get_fresh`](Self::get_fresh) when
    /// the answer must reflect everything that happened before it.
    pub async fn get<F>(&self, key: K, ask: impl FnOnce() -> F) -> V
    where
        F: Future<Output = V> + Send + 'static,
    {
        self.join(key, ask).0.await
    }

    /// The answer to `key` from a request sent after this call began: a caller that finds a
    /// request in flight waits for it, then for the next one (shared too).
    pub async fn get_fresh<F>(&self, key: K, ask: impl Fn() -> F) -> V
    where
        F: Future<Output = V> + Send + 'static,
    {
        let (request, sent_by_us) = self.join(key.clone(), &ask);
        let answer = request.await;
        if sent_by_us {
            return answer;
        }
        self.join(key, ask).0.await
    }

    /// The request in flight for `key`, or a new one; whether it is new.
    fn join<F>(&self, key: K, ask: impl FnOnce() -> F) -> (Shared<BoxFuture<'static, V>>, bool)
    where
        F: Future<Output = V> + Send + 'static,
    {
        {
            let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            match in_flight.get(&key) {
                Some(shared) => (shared.clone(), false),
                None => {
                    let table = self.in_flight.clone();
                    let done = key.clone();
                    let request = ask();
                    let shared = async move {
                        let answer = request.await;
                        // Later callers ask afresh: an answer is shared only while in flight.
                        table
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(&done);
                        answer
                    }
                    .boxed()
                    .shared();
                    in_flight.insert(key, shared.clone());
                    (shared, true)
                }
            }
        }
    }

    /// How many distinct questions are in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn concurrent_callers_share_one_request_and_later_ones_ask_again() {
        let coalesce: Arc<Coalesce<u32, usize>> = Arc::default();
        let asked = Arc::new(AtomicUsize::new(0));
        let ask = |asked: Arc<AtomicUsize>| {
            move || async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                asked.fetch_add(1, Ordering::SeqCst) + 1
            }
        };
        let callers: Vec<_> = (0..10)
            .map(|_| {
                let (coalesce, asked) = (coalesce.clone(), asked.clone());
                tokio::spawn(async move { coalesce.get(7, ask(asked)).await })
            })
            .collect();
        for caller in callers {
            assert_eq!(caller.await.unwrap(), 1, "every caller got the one answer");
        }
        assert_eq!(asked.load(Ordering::SeqCst), 1);
        assert_eq!(coalesce.in_flight(), 0);
        assert_eq!(coalesce.get(7, ask(asked.clone())).await, 2);
        assert_eq!(coalesce.get(8, ask(asked.clone())).await, 3);
    }

    #[tokio::test]
    async fn a_fresh_answer_comes_from_a_request_sent_after_the_call() {
        let coalesce: Arc<Coalesce<u32, usize>> = Arc::default();
        let asked = Arc::new(AtomicUsize::new(0));
        let ask = {
            let asked = asked.clone();
            move || {
                let asked = asked.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    asked.fetch_add(1, Ordering::SeqCst) + 1
                }
            }
        };
        let early = tokio::spawn({
            let (coalesce, ask) = (coalesce.clone(), ask.clone());
            async move { coalesce.get(1, ask).await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        // Joins the request in flight, which was sent before it: waits for the next one.
        assert_eq!(coalesce.get_fresh(1, ask.clone()).await, 2);
        assert_eq!(early.await.unwrap(), 1);
        // Alone, it sends its own request and takes that answer.
        assert_eq!(coalesce.get_fresh(1, ask).await, 3);
    }
}
