//! Rate limits per client on the two POSTs (`RATE_LIMIT_THREADS`, `RATE_LIMIT_MESSAGES`),
//! written and answered as DRF's throttles are: a rate such as `10/min`, and past it 429 with
//! `Retry-After` and `{"detail": "Request was throttled. Expected available in N seconds."}`.
//!
//! A client is its [`ClientKey`] (an IPv4 address or an IPv6 /64). Each limit is a `governor`
//! GCRA limiter with one state per client: a client may send the rate's whole number of
//! requests at once, then one more each period / number (`10/min`: 10 at once, then one every
//! 6 s). DRF's `SimpleRateThrottle` counts a sliding window instead; both hold a client to the
//! rate over time, and the wait a refused client is told is the time until its next request
//! would pass.
//!
//! The counts are this process's own: with N api replicas behind a round-robin balancer, a
//! client gets up to N times the rate, so set it per replica.
//!
//! Memory is bounded twice: every [`HOUSEKEEPING`] the states that a fresh client's would
//! equal are dropped (governor's `retain_recent`), and a limit keeps at most
//! `RATE_LIMIT_MAX_CLIENTS` states. Past that (an attacker with many IPv6 /64s, each with its
//! own count, fills them within one period), a client that has no state of its own shares one
//! state with every other such client until room is made: the clients it already counts keep
//! their own rate, and the newcomers together get one client's rate.

use crate::error::ApiError;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::{DashMapStateStore, ShrinkableKeyedStateStore};
use governor::state::StateStore;
use governor::{Quota, RateLimiter};
use std::fmt;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use threadline_runtime::client::{Client, ClientKey};

/// How often each limit drops the states of clients that have been quiet long enough.
pub const HOUSEKEEPING: Duration = Duration::from_secs(30);

/// At most this often a limit that is full drops quiet clients' states at once, to make room.
const CLEAN_WHEN_FULL_EVERY: Duration = Duration::from_secs(1);

/// At most this often a full limit says so in the log.
const WARN_WHEN_FULL_EVERY: Duration = Duration::from_secs(60);

/// A rate as DRF writes one: `<requests>/<period>`, where only the period's first letter
/// counts (`s`, `m`, `h` or `d`: `10/min`, `10/minute` and `10/m` are the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub requests: NonZeroU32,
    pub period: Duration,
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}s", self.requests, self.period.as_secs())
    }
}

/// Parses a rate as DRF's `parse_rate` does: the number as Python's `int()` reads plain
/// digits (white space around it allowed), the period by its first letter. A rate of 0 is
/// refused: leave the setting unset for no limit.
pub fn parse_rate(text: &str) -> Result<Rate, String> {
    let shape = || format!("{text:?} is not a rate such as 10/min (N/s, N/m, N/h or N/d)");
    let mut parts = text.split('/');
    let (Some(number), Some(period), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(shape());
    };
    let number = number.trim();
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(shape());
    }
    let requests: u32 = number
        .parse()
        .map_err(|_| format!("{text:?}: at most {} requests per period", u32::MAX))?;
    let requests = NonZeroU32::new(requests)
        .ok_or_else(|| format!("{text:?}: leave the setting unset for no limit, not 0"))?;
    let seconds = match period.chars().next() {
        Some('s') => 1,
        Some('m') => 60,
        Some('h') => 3_600,
        Some('d') => 86_400,
        _ => return Err(shape()),
    };
    Ok(Rate {
        requests,
        period: Duration::from_secs(seconds),
    })
}

/// The whole seconds a client is told to wait: DRF's `math.ceil` of the wait.
pub fn whole_seconds(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

/// DRF's `Throttled` detail for a wait of `seconds` (already whole), with its singular form.
pub fn throttled_detail(seconds: u64) -> String {
    let unit = if seconds == 1 { "second" } else { "seconds" };
    format!("Request was throttled. Expected available in {seconds} {unit}.")
}

/// Where a limit keeps a client's state: its own, or the one shared by the clients that came
/// while the limit was full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Slot {
    Client(ClientKey),
    Overflow,
}

/// The states of one limit's clients: governor's `DashMap` store, with at most `max` slots
/// of clients (and the shared one).
struct ClientStates {
    map: Arc<DashMapStateStore<Slot>>,
    max: usize,
}

impl ClientStates {
    /// Whether a state for `key` would have to be made while the limit is full.
    fn full_for(map: &DashMapStateStore<Slot>, max: usize, key: ClientKey) -> bool {
        !map.contains_key(&Slot::Client(key)) && map.len() >= max
    }
}

impl StateStore for ClientStates {
    type Key = ClientKey;

    fn measure_and_replace<T, F, E>(&self, key: &ClientKey, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        // Checked apart from the insertion, so that concurrent newcomers may pass the bound by
        // their number; it is a bound on memory, not a promise.
        let slot = match Self::full_for(&self.map, self.max, *key) {
            true => Slot::Overflow,
            false => Slot::Client(*key),
        };
        self.map.measure_and_replace(&slot, f)
    }
}

impl ShrinkableKeyedStateStore<ClientKey> for ClientStates {
    fn retain_recent(&self, drop_below: Nanos) {
        self.map.retain_recent(drop_below);
    }

    fn shrink_to_fit(&self) {
        self.map.shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.map.len()
    }

    fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// One rate limit over every client of this process.
pub struct Throttle<C: Clock = DefaultClock> {
    rate: Rate,
    limiter: RateLimiter<ClientKey, ClientStates, C, NoOpMiddleware<C::Instant>>,
    map: Arc<DashMapStateStore<Slot>>,
    max_clients: usize,
    started: Instant,
    /// Milliseconds after `started` of the last cleaning to make room, and of the last
    /// warning that the limit is full.
    cleaned_at: AtomicU64,
    warned_at: AtomicU64,
}

impl Throttle {
    /// A limit of `rate` per client, keeping at most `max_clients` states.
    pub fn new(rate: Rate, max_clients: usize) -> Self {
        Throttle::with_clock(rate, max_clients, DefaultClock::default())
    }
}

impl<C: Clock> Throttle<C> {
    pub fn with_clock(rate: Rate, max_clients: usize, clock: C) -> Self {
        // `period / requests` is at least 1 ns for any u32 of requests in a period of 1 s or more.
        let quota = Quota::with_period(rate.period / rate.requests.get())
            .unwrap_or_else(|| Quota::per_second(rate.requests))
            .allow_burst(rate.requests);
        let map = Arc::new(DashMapStateStore::<Slot>::default());
        let states = ClientStates {
            map: map.clone(),
            max: max_clients.max(1),
        };
        Throttle {
            rate,
            limiter: RateLimiter::new(quota, states, clock),
            map,
            max_clients: max_clients.max(1),
            started: Instant::now(),
            cleaned_at: AtomicU64::new(0),
            warned_at: AtomicU64::new(0),
        }
    }

    /// Counts a request of `client`; how long it must wait if it is over the rate.
    pub fn check(&self, client: ClientKey) -> Result<(), Duration> {
        if ClientStates::full_for(&self.map, self.max_clients, client) {
            self.make_room(client);
        }
        self.limiter
            .check_key(&client)
            .map_err(|not_until| not_until.wait_time_from(self.limiter.clock().now()))
    }

    /// Drops quiet clients' states (at most every [`CLEAN_WHEN_FULL_EVERY`]); if the limit is
    /// still full, says so (at most every [`WARN_WHEN_FULL_EVERY`]).
    fn make_room(&self, client: ClientKey) {
        let now = self.started.elapsed().as_millis() as u64;
        if once_per(&self.cleaned_at, now, CLEAN_WHEN_FULL_EVERY) {
            self.limiter.retain_recent();
        }
        if ClientStates::full_for(&self.map, self.max_clients, client)
            && once_per(&self.warned_at, now, WARN_WHEN_FULL_EVERY)
        {
            tracing::warn!(
                rate = %self.rate,
                clients = self.max_clients,
                "a rate limit counts RATE_LIMIT_MAX_CLIENTS clients: clients it does not count \
                 yet share one count until some are quiet long enough"
            );
        }
    }

    /// Drops the states of clients that have been quiet long enough that a fresh state would
    /// equal theirs, and gives back the room when most of it is unused.
    pub fn housekeeping(&self) {
        self.limiter.retain_recent();
        if self.map.len() * 4 < self.map.capacity() {
            self.limiter.shrink_to_fit();
        }
    }

    /// How many states the limit keeps.
    pub fn clients(&self) -> usize {
        self.limiter.len()
    }
}

/// Whether `at` (a time in milliseconds) may move to `now`: at most once per `every`.
fn once_per(at: &AtomicU64, now: u64, every: Duration) -> bool {
    let last = at.load(Ordering::Relaxed);
    let due = last == 0 || now.saturating_sub(last) >= every.as_millis() as u64;
    due && at
        .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
        .is_ok()
}

/// The API's rate limits: one per POST endpoint, each off unless its setting is given.
#[derive(Clone, Default)]
pub struct Throttles {
    threads: Option<Arc<Throttle>>,
    messages: Option<Arc<Throttle>>,
}

impl Throttles {
    /// The limits of the settings, each with its housekeeping task while a tokio runtime
    /// runs it (the task ends when the limit is dropped).
    pub fn new(threads: Option<Rate>, messages: Option<Rate>, max_clients: usize) -> Self {
        let start = |rate: Option<Rate>| {
            rate.map(|rate| {
                let throttle = Arc::new(Throttle::new(rate, max_clients));
                keep_house(Arc::downgrade(&throttle));
                throttle
            })
        };
        Throttles {
            threads: start(threads),
            messages: start(messages),
        }
    }

    /// The limits that `RATE_LIMIT_THREADS`, `RATE_LIMIT_MESSAGES` and
    /// `RATE_LIMIT_MAX_CLIENTS` set.
    pub fn from_settings(settings: &crate::ApiSettings) -> Self {
        Throttles::new(
            settings.rate_limit_threads,
            settings.rate_limit_messages,
            settings.rate_limit_max_clients as usize,
        )
    }

    /// Counts a `POST /chat/thread/` of `client` (a request without a known client counts as
    /// from 0.0.0.0, as `threadline_runtime::limits::admit` has it).
    pub fn thread_created(&self, client: Option<&Client>) -> Result<(), ApiError> {
        check(self.threads.as_deref(), client)
    }

    /// Counts a `POST /chat/message/` of `client`.
    pub fn message_posted(&self, client: Option<&Client>) -> Result<(), ApiError> {
        check(self.messages.as_deref(), client)
    }
}

fn check(throttle: Option<&Throttle>, client: Option<&Client>) -> Result<(), ApiError> {
    let Some(throttle) = throttle else {
        return Ok(());
    };
    let key = client.map_or_else(
        || ClientKey::of(std::net::Ipv4Addr::UNSPECIFIED.into()),
        |c| c.key,
    );
    throttle.check(key).map_err(|wait| {
        tracing::debug!(client = %key, rate = %throttle.rate, ?wait, "throttled");
        ApiError::Throttled(wait)
    })
}

/// Runs [`Throttle::housekeeping`] every [`HOUSEKEEPING`] while the limit lives.
fn keep_house(throttle: Weak<Throttle>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        let mut every = tokio::time::interval(HOUSEKEEPING);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        every.tick().await;
        loop {
            every.tick().await;
            let Some(throttle) = throttle.upgrade() else {
                return;
            };
            throttle.housekeeping();
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;
    use std::net::IpAddr;

    fn rate(text: &str) -> Rate {
        parse_rate(text).unwrap_or_else(|e| panic!("{e}"))
    }

    fn key(address: &str) -> ClientKey {
        ClientKey::of(address.parse::<IpAddr>().expect("an address"))
    }

    #[test]
    fn rates_are_read_as_drf_reads_them() {
        let per_minute = Rate {
            requests: NonZeroU32::new(10).expect("not 0"),
            period: Duration::from_secs(60),
        };
        for text in ["10/min", "10/m", "10/minute", " 10 /mfoo"] {
            assert_eq!(rate(text), per_minute, "{text}");
        }
        assert_eq!(rate("1/s").period, Duration::from_secs(1));
        assert_eq!(rate("1/sec").period, Duration::from_secs(1));
        assert_eq!(rate("5/hour").period, Duration::from_secs(3_600));
        assert_eq!(rate("5/d").period, Duration::from_secs(86_400));
        for bad in [
            "", "10", "10/", "/min", "10/M", "10/x", "ten/min", "-1/min", "1.5/min", "10/min/x",
        ] {
            assert!(parse_rate(bad).is_err(), "{bad:?} was accepted");
        }
        let zero = parse_rate("0/min").unwrap_err();
        assert!(zero.contains("unset"), "{zero}");
    }

    #[test]
    fn the_wait_is_told_in_whole_seconds_rounded_up_with_drf_s_words() {
        assert_eq!(whole_seconds(Duration::from_millis(1)), 1);
        assert_eq!(whole_seconds(Duration::from_secs(1)), 1);
        assert_eq!(whole_seconds(Duration::from_millis(1_001)), 2);
        assert_eq!(whole_seconds(Duration::ZERO), 0);
        assert_eq!(
            throttled_detail(1),
            "Request was throttled. Expected available in 1 second."
        );
        assert_eq!(
            throttled_detail(30),
            "Request was throttled. Expected available in 30 seconds."
        );
        assert_eq!(
            throttled_detail(0),
            "Request was throttled. Expected available in 0 seconds."
        );
    }

    #[test]
    fn a_client_gets_its_rate_at_once_then_one_per_share_of_the_period() {
        let clock = FakeRelativeClock::default();
        let throttle = Throttle::with_clock(rate("2/min"), 100, clock.clone());
        let client = key("192.0.2.1");
        assert_eq!(throttle.check(client), Ok(()));
        assert_eq!(throttle.check(client), Ok(()));
        assert_eq!(throttle.check(client), Err(Duration::from_secs(30)));
        assert_eq!(throttle.check(key("192.0.2.2")), Ok(()), "another client");
        clock.advance(Duration::from_millis(29_500));
        assert_eq!(throttle.check(client), Err(Duration::from_millis(500)));
        clock.advance(Duration::from_millis(500));
        assert_eq!(throttle.check(client), Ok(()));
        assert_eq!(throttle.check(client), Err(Duration::from_secs(30)));
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64() {
        let throttle = Throttle::with_clock(rate("1/h"), 100, FakeRelativeClock::default());
        assert_eq!(throttle.check(key("2001:db8:0:1::1")), Ok(()));
        assert!(throttle.check(key("2001:db8:0:1::2")).is_err());
        assert_eq!(throttle.check(key("2001:db8:0:2::1")), Ok(()));
    }

    #[test]
    fn past_its_most_clients_a_limit_counts_newcomers_together() {
        let clock = FakeRelativeClock::default();
        let throttle = Throttle::with_clock(rate("1/min"), 2, clock.clone());
        assert_eq!(throttle.check(key("192.0.2.1")), Ok(()));
        assert_eq!(throttle.check(key("192.0.2.2")), Ok(()));
        // Full: two newcomers share one count; the clients it counts keep their own.
        assert_eq!(throttle.check(key("192.0.2.3")), Ok(()));
        assert!(throttle.check(key("192.0.2.4")).is_err());
        assert!(throttle.check(key("192.0.2.1")).is_err());
        assert!(throttle.clients() <= 3, "{} states", throttle.clients());
        // Once the counted clients have been quiet for long enough that a fresh state would
        // equal theirs (governor keeps one more share of the period for that), their states
        // are dropped and a newcomer gets a count of its own again.
        clock.advance(Duration::from_secs(59));
        throttle.housekeeping();
        assert_eq!(throttle.clients(), 3);
        clock.advance(Duration::from_secs(61));
        throttle.housekeeping();
        assert_eq!(throttle.clients(), 0);
        assert_eq!(throttle.check(key("192.0.2.4")), Ok(()));
        assert!(throttle.check(key("192.0.2.4")).is_err());
        assert_eq!(throttle.check(key("192.0.2.5")), Ok(()));
    }

    #[test]
    fn many_clients_keep_memory_bounded() {
        let throttle = Throttle::with_clock(rate("5/min"), 1_000, FakeRelativeClock::default());
        for n in 0..10_000u128 {
            let address = std::net::Ipv6Addr::from((0x2001_0db8u128 << 96) | (n << 64));
            let _ = throttle.check(ClientKey::of(address.into()));
        }
        assert!(throttle.clients() <= 1_001, "{} states", throttle.clients());
    }
}
