//! The API in this process: [`threadline_api::router`] behind the layers every served role
//! gets ([`threadline_runtime::server::finish`]: the JSON 404, request ids, tracing, metrics),
//! called with `tower::ServiceExt::oneshot` as axum's `examples/testing` does, over backends
//! that record every call and refuse all of them but the question whether a thread exists
//! ([`App::new`]), or that store what the API appends and claims ([`App::storing`]).

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{header, HeaderMap, Request, StatusCode};
use axum::Router;
use bytes::Bytes;
use proto_events::{EncodedEvent, Subjects};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use threadline_api::hot::HotThreads;
use threadline_api::{ApiSettings, AppState, Idempotency, Shared, Throttles};
use threadline_ports::{
    AppliedMessage, AppliedThread, EventLog, IdempotencyStore, ReadModel, RecordFilter, StoreError,
    ThreadRead, ThreadRows,
};
use threadline_runtime::HttpSettings;
use tokio::sync::broadcast;
use tower::ServiceExt;
use uuid::Uuid;

/// The one thread that exists.
pub const THREAD: &str = "4b0e1d4a-c9a6-11ee-8c90-0242ac120002";

/// The largest request body, as `MAX_BODY_BYTES` has it by default (2.5 MiB).
pub const MAX_BODY_BYTES: usize = 2_621_440;

/// A call the API made to one of its backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Append,
    ThreadExists(Uuid),
    ThreadLastSequence(Uuid),
    AppliedThrough(u64),
    AppliedEverything,
    ReadThread(Uuid),
    ApplyRows,
    EraseRows,
    CountRows(Uuid),
    ClaimKey,
    CountMessages(Uuid),
    GetKey,
    FindRecords,
    RemoveRecords,
}

/// The event log, the read model and the idempotency store at once: each call is recorded;
/// [`THREAD`] exists and no other thread does; every other call is refused with the error
/// `refusal` makes, which a client sees as a 503 (or a 413 for an event too large).
struct Backends {
    thread: Uuid,
    refusal: fn() -> StoreError,
    calls: Mutex<Vec<Call>>,
    /// Whether appends and claims are stored rather than refused.
    stores: bool,
    /// The events appended, by id (an event appended again is stored once), in order.
    events: Mutex<Vec<EncodedEvent>>,
    /// The idempotency records claimed, by key.
    records: Mutex<HashMap<String, Bytes>>,
}

impl Backends {
    fn record(&self, call: Call) {
        self.calls.lock().expect("calls").push(call);
    }

    fn stored_messages(&self, thread: Uuid) -> u64 {
        let events = self.events.lock().expect("events");
        events
            .iter()
            .filter(|e| {
                e.event().thread() == thread
                    && e.event().kind() == proto_events::EventKind::MessagePosted
            })
            .count() as u64
    }

    fn refuse<T>(&self, call: Call) -> Result<T, StoreError> {
        self.record(call);
        Err((self.refusal)())
    }
}

#[async_trait]
impl EventLog for Backends {
    async fn append(&self, event: &EncodedEvent) -> Result<u64, StoreError> {
        if !self.stores {
            return self.refuse(Call::Append);
        }
        self.record(Call::Append);
        let mut events = self.events.lock().expect("events");
        let id = event.event().id();
        let sequence = match events.iter().position(|e| e.event().id() == id) {
            Some(at) => at + 1,
            None => {
                events.push(event.clone());
                events.len()
            }
        };
        Ok(sequence as u64)
    }

    async fn thread_message_count(&self, thread: Uuid) -> Result<u64, StoreError> {
        self.record(Call::CountMessages(thread));
        Ok(self.stored_messages(thread))
    }

    async fn thread_exists(&self, thread: Uuid) -> Result<bool, StoreError> {
        self.record(Call::ThreadExists(thread));
        Ok(thread == self.thread)
    }

    async fn thread_last_sequence(&self, thread: Uuid) -> Result<Option<u64>, StoreError> {
        self.refuse(Call::ThreadLastSequence(thread))
    }

    async fn applied_through(&self, wanted: u64) -> Result<u64, StoreError> {
        self.refuse(Call::AppliedThrough(wanted))
    }

    async fn applied_everything(&self) -> Result<Option<u64>, StoreError> {
        self.refuse(Call::AppliedEverything)
    }

    fn erasures(&self) -> broadcast::Receiver<Uuid> {
        // No thread is ever erased here.
        broadcast::channel(1).1
    }
}

#[async_trait]
impl ReadModel for Backends {
    async fn thread(&self, id: Uuid) -> Result<Option<ThreadRead>, StoreError> {
        self.refuse(Call::ReadThread(id))
    }

    async fn apply(&self, _: &[AppliedThread], _: &[AppliedMessage]) -> Result<(), StoreError> {
        self.refuse(Call::ApplyRows)
    }

    async fn erase(&self, _: &[Uuid]) -> Result<ThreadRows, StoreError> {
        self.refuse(Call::EraseRows)
    }

    async fn rows_of(&self, thread: Uuid) -> Result<ThreadRows, StoreError> {
        self.refuse(Call::CountRows(thread))
    }
}

#[async_trait]
impl IdempotencyStore for Backends {
    async fn claim(&self, key: &str, record: Bytes) -> Result<Option<Bytes>, StoreError> {
        if !self.stores {
            return self.refuse(Call::ClaimKey);
        }
        self.record(Call::ClaimKey);
        let mut records = self.records.lock().expect("records");
        match records.get(key) {
            Some(earlier) => Ok(Some(earlier.clone())),
            None => {
                records.insert(key.to_owned(), record);
                Ok(None)
            }
        }
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        if !self.stores {
            return self.refuse(Call::GetKey);
        }
        self.record(Call::GetKey);
        Ok(self.records.lock().expect("records").get(key).cloned())
    }

    async fn keys_of(&self, _: RecordFilter<'_>) -> Result<Vec<String>, StoreError> {
        self.refuse(Call::FindRecords)
    }

    async fn remove(&self, _: &[String]) -> Result<(), StoreError> {
        self.refuse(Call::RemoveRecords)
    }
}

/// The API over recording backends; see the module's documentation.
pub struct App {
    router: Router,
    backends: Arc<Backends>,
}

/// What a backend answers that is not the API's to decide: the event log is down.
fn unavailable() -> StoreError {
    StoreError::nats("refused by the test's backends")
}

impl App {
    /// The API with its default settings, over backends that refuse all but the existence
    /// of [`THREAD`].
    pub fn new() -> App {
        App::refusing_with(unavailable)
    }

    /// As [`new`](Self::new), with backends that refuse with the error `refusal` makes.
    pub fn refusing_with(refusal: fn() -> StoreError) -> App {
        App::start(refusal, false, |_| {})
    }

    /// The API with the settings `configure` makes of the defaults, over backends that store
    /// what is appended and claimed (and refuse reads of the read model): [`THREAD`] holds
    /// the messages posted to it.
    pub fn storing(configure: impl FnOnce(&mut ApiSettings)) -> App {
        App::start(unavailable, true, configure)
    }

    fn start(
        refusal: fn() -> StoreError,
        stores: bool,
        configure: impl FnOnce(&mut ApiSettings),
    ) -> App {
        let backends = Arc::new(Backends {
            thread: THREAD.parse().expect("a UUID"),
            refusal,
            calls: Mutex::new(Vec::new()),
            stores,
            events: Mutex::new(Vec::new()),
            records: Mutex::new(HashMap::new()),
        });
        let mut settings = ApiSettings {
            max_body_bytes: MAX_BODY_BYTES,
            read_your_writes_timeout: Duration::from_secs(3),
            idempotency_window: Duration::from_secs(24 * 3600),
            idempotency_max_bytes: Some(1 << 30),
            hot_threads_bytes: None,
            rate_limit_threads: None,
            rate_limit_messages: None,
            rate_limit_max_clients: 100_000,
            thread_max_messages: 0,
            agent_token: None,
            agent_token_file: None,
            demo: Default::default(),
        };
        configure(&mut settings);
        let state = AppState::from(Shared {
            log: backends.clone(),
            read: backends.clone(),
            idempotency: Idempotency::new(backends.clone(), Subjects::default()),
            append_timeout: Duration::from_secs(5),
            throttles: Throttles::from_settings(&settings),
            settings: Arc::new(settings),
            hot: HotThreads::off(),
        });
        let http = HttpSettings {
            shutdown_timeout: Duration::from_secs(10),
            cors_allowed_origins: Vec::new(),
            trusted_proxies: Vec::new(),
            forwarded_header: axum::http::HeaderName::from_static("x-forwarded-for"),
            admin_listen_addr: None,
            connections: Default::default(),
        };
        App {
            router: threadline_runtime::server::finish(threadline_api::router(state), &http),
            backends,
        }
    }

    /// Sends `request` through the router and reads the whole answer.
    pub async fn send(&self, request: Request<Body>) -> Answer {
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .unwrap_or_else(|never| match never {});
        let status = response.status();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("the response body");
        Answer {
            status,
            headers,
            body,
        }
    }

    /// POSTs `body` to `path` with the content type given (none if `None`) and its length
    /// declared, as an HTTP client sends it.
    pub async fn post_raw(
        &self,
        path: &str,
        body: impl Into<Bytes>,
        content_type: Option<&str>,
    ) -> Answer {
        let body = body.into();
        let mut request = Request::post(path).header(header::CONTENT_LENGTH, body.len());
        if let Some(content_type) = content_type {
            request = request.header(header::CONTENT_TYPE, content_type);
        }
        self.send(request.body(Body::from(body)).expect("a request"))
            .await
    }

    /// POSTs `body` to `path` as `application/json`.
    pub async fn post(&self, path: &str, body: &Value) -> Answer {
        self.post_with(path, body, &[]).await
    }

    /// POSTs `body` to `path` as `application/json`, with `headers` besides.
    pub async fn post_with(&self, path: &str, body: &Value, headers: &[(&str, &str)]) -> Answer {
        let bytes = serde_json::to_vec(body).expect("JSON");
        let mut request = Request::post(path)
            .header(header::CONTENT_LENGTH, bytes.len())
            .header(header::CONTENT_TYPE, "application/json");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        self.send(request.body(Body::from(bytes)).expect("a request"))
            .await
    }

    /// How many messages [`THREAD`] holds (with [`storing`](Self::storing) backends).
    pub fn messages_stored(&self) -> u64 {
        self.backends.stored_messages(self.backends.thread)
    }

    /// The calls made to the backends since the last time they were taken.
    pub fn take_calls(&self) -> Vec<Call> {
        std::mem::take(&mut *self.backends.calls.lock().expect("calls"))
    }

    /// Asserts that the requests since the last check asked the backends nothing but whether
    /// a thread exists: nothing was appended, no key claimed, nothing read. (A message's
    /// `thread` is looked up even when another field is wrong, so that an unknown thread is
    /// reported with the other errors, as DRF does.)
    pub fn assert_nothing_stored(&self, request: &str) {
        let calls = self.take_calls();
        assert!(
            calls.iter().all(|c| matches!(c, Call::ThreadExists(_))),
            "{request}: a refused request reached the backends: {calls:?}"
        );
    }

    /// Asserts that the requests since the last check made no call to any backend.
    pub fn assert_untouched(&self, request: &str) {
        let calls = self.take_calls();
        assert_eq!(
            calls,
            [],
            "{request}: a refused request reached the backends"
        );
    }
}

/// A response, read whole.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    /// The body as JSON, after asserting the status.
    pub fn expect(&self, status: u16) -> Value {
        assert_eq!(
            self.status.as_u16(),
            status,
            "unexpected status; body: {}",
            String::from_utf8_lossy(&self.body)
        );
        self.json()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}
