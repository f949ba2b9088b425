//! A steady load of `POST /chat/message/` on one thread from a few concurrent clients, for
//! tests that stop, restart or break parts of the system under traffic. It records which
//! messages were accepted (201) and tolerates anything else (refused connections, 503s).

use super::client::Client;
use super::wait::eventually;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

pub struct Load {
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
    posters: Vec<JoinHandle<Vec<Value>>>,
}

impl Load {
    /// Starts `concurrency` clients posting to `thread` through `client`, one request at a
    /// time each, as fast as they are answered, until [`stop`](Self::stop).
    pub fn start(client: &Client, thread: &str, concurrency: usize) -> Load {
        Self::spawn(client, thread, concurrency, None)
    }

    /// Starts posting to `thread` at `per_second` messages a second (from a few clients, so
    /// that one slow answer does not hold the others back) until [`stop`](Self::stop).
    pub fn paced(client: &Client, thread: &str, per_second: u32) -> Load {
        const POSTERS: u32 = 4;
        let every = Duration::from_secs(1) * POSTERS / per_second.max(1);
        Self::spawn(client, thread, POSTERS as usize, Some(every))
    }

    /// `concurrency` posters, each posting once per `every` if given, else back to back.
    fn spawn(client: &Client, thread: &str, concurrency: usize, every: Option<Duration>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let posters = (0..concurrency)
            .map(|poster| {
                let (client, thread) = (client.clone(), thread.to_owned());
                let (stop, accepted) = (stop.clone(), accepted.clone());
                tokio::spawn(async move {
                    let mut ids = Vec::new();
                    let mut n = 0;
                    // Staggered, so that the posters take turns rather than post together.
                    let mut pace = every.map(|every| {
                        let first = tokio::time::Instant::now()
                            + every * poster as u32 / concurrency as u32;
                        let mut pace = tokio::time::interval_at(first, every);
                        pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                        pace
                    });
                    while !stop.load(Ordering::Relaxed) {
                        if let Some(pace) = pace.as_mut() {
                            pace.tick().await;
                        }
                        n += 1;
                        let body = json!({
                            "user": {"poster": poster},
                            "thread": thread,
                            "body": format!("load {poster}.{n}"),
                        });
                        let sent = client
                            .try_request_to(
                                client.api_addr,
                                "POST",
                                "/chat/message/",
                                Some(body.to_string().into_bytes()),
                                Some("application/json"),
                            )
                            .await;
                        match sent {
                            Ok(r) if r.status == 201 => {
                                ids.push(r.json()["id"].clone());
                                accepted.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(r) => assert!(
                                r.status == 503,
                                "POST under load answered {}: {}",
                                r.status,
                                r.text
                            ),
                            // The api is restarting: try again shortly.
                            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                        }
                    }
                    ids
                })
            })
            .collect();
        Load {
            stop,
            accepted,
            posters,
        }
    }

    /// How many messages have been accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Waits until `more` messages beyond those accepted so far have been accepted.
    pub async fn wait_for_more(&self, more: usize, timeout: Duration) {
        let target = self.accepted() + more;
        eventually(
            &format!("{more} more messages accepted under load"),
            timeout,
            || async { (self.accepted() >= target).then_some(()) },
        )
        .await;
    }

    /// Stops the posters; the ids of every accepted message.
    pub async fn stop(self) -> Vec<Value> {
        self.stop.store(true, Ordering::Relaxed);
        let mut ids = Vec::new();
        for poster in self.posters {
            ids.extend(poster.await.expect("a poster panicked"));
        }
        ids
    }
}
