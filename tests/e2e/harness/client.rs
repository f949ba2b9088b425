//! A client of one test's threadline: typed helpers that speak HTTP to an api replica,
//! websocket to a gateway replica and NATS to the test's server, as a user's client would.

use super::wait::{eventually, within};
use super::ws::{Refused, Ws};
use async_nats::jetstream;
use bytes::Bytes;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::Duration;

/// How long a single HTTP request may take before the test fails: longer than the
/// `READ_YOUR_WRITES_TIMEOUT` the harness gives the services.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(90);
/// How long the read model may lag behind the log in a test; the services' GETs wait this
/// long for the projector too (`READ_YOUR_WRITES_TIMEOUT`).
pub const PROJECTION_TIMEOUT: Duration = Duration::from_secs(60);

pub const STREAM: &str = "THREADLINE";
pub const DEAD_LETTER_STREAM: &str = "THREADLINE_DEAD_LETTERS";
pub const SUBJECT_PREFIX: &str = "chat";
pub const PROJECTOR_CONSUMER: &str = "threadline-projector";

/// An HTTP answer: status, raw body text, and the body as JSON on demand.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub content_type: Option<String>,
    pub text: String,
}

impl HttpResponse {
    /// The body parsed as JSON (keys in order, numbers as written); panics if it is not JSON.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| {
            panic!(
                "{} answered a body that is not JSON ({e}): {:?}",
                self.status,
                self.text.chars().take(500).collect::<String>()
            )
        })
    }

    /// Asserts the status and returns the body as JSON.
    #[track_caller]
    pub fn expect(&self, status: u16) -> Value {
        assert_eq!(
            self.status,
            status,
            "unexpected status; body: {}",
            self.text.chars().take(1000).collect::<String>()
        );
        self.json()
    }
}

/// Speaks to one api replica and one gateway replica of a test's system, and to its NATS.
#[derive(Clone)]
pub struct Client {
    /// Where the HTTP API listens.
    pub api_addr: SocketAddr,
    /// Where the websocket gateway listens.
    pub ws_addr: SocketAddr,
    nats_url: String,
    /// The NATS user and password this client connects as, if the server wants users.
    nats_login: Option<(String, String)>,
    http: reqwest::Client,
}

impl Client {
    pub fn new(api_addr: SocketAddr, ws_addr: SocketAddr, nats_url: String) -> Client {
        Client {
            api_addr,
            ws_addr,
            nats_url,
            nats_login: None,
            http: http_client(usize::MAX),
        }
    }

    /// This client, connecting to NATS as `user` with `password` (and, as threadline's
    /// roles do, with the inbox prefix `_INBOX_<user>`, the only one the user may read).
    pub fn with_nats_login(mut self, user: &str, password: &str) -> Client {
        self.nats_login = Some((user.to_owned(), password.to_owned()));
        self
    }

    // ----- HTTP -----

    /// Any request to the API; `body` and `content_type` are sent exactly as given.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        content_type: Option<&str>,
    ) -> HttpResponse {
        self.request_to(self.api_addr, method, path, body, content_type)
            .await
    }

    /// Any request to any address of this app; panics if no answer comes.
    pub async fn request_to(
        &self,
        addr: SocketAddr,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        content_type: Option<&str>,
    ) -> HttpResponse {
        self.try_request_to(addr, method, path, body, content_type)
            .await
            .unwrap_or_else(|e| panic!("{method} {path} failed: {e:?}"))
    }

    /// Any request to any address of this app; the transport error if no answer came.
    pub async fn try_request_to(
        &self,
        addr: SocketAddr,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        content_type: Option<&str>,
    ) -> Result<HttpResponse, reqwest::Error> {
        send(&self.http, addr, method, path, body, content_type, &[]).await
    }

    /// As `try_request_to`, on a connection of its own that is not kept for later requests:
    /// for requests that may leave their connection broken (a body the server refuses
    /// before reading it).
    pub async fn try_request_alone(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        content_type: Option<&str>,
    ) -> Result<HttpResponse, reqwest::Error> {
        let client = http_client(0);
        send(
            &client,
            self.api_addr,
            method,
            path,
            body,
            content_type,
            &[],
        )
        .await
    }

    /// POSTs raw bytes with the given content type (none if `None`).
    pub async fn post_json(
        &self,
        path: &str,
        body: impl Into<Vec<u8>>,
        content_type: Option<&str>,
    ) -> HttpResponse {
        self.request("POST", path, Some(body.into()), content_type)
            .await
    }

    /// POSTs `body` as `application/json`.
    pub async fn post(&self, path: &str, body: &Value) -> HttpResponse {
        self.post_json(
            path,
            serde_json::to_vec(body).expect("JSON"),
            Some("application/json"),
        )
        .await
    }

    /// POSTs `body` as `application/json` under an `Idempotency-Key`; the transport error if
    /// no answer came.
    pub async fn post_with_key(
        &self,
        path: &str,
        body: &Value,
        key: &str,
    ) -> Result<HttpResponse, reqwest::Error> {
        send(
            &self.http,
            self.api_addr,
            "POST",
            path,
            Some(serde_json::to_vec(body).expect("JSON")),
            Some("application/json"),
            &[("Idempotency-Key", key)],
        )
        .await
    }

    pub async fn get(&self, path: &str) -> HttpResponse {
        self.request("GET", path, None, None).await
    }

    /// `POST /chat/thread/` with `{"user": user}`; asserts 201 and returns the thread.
    pub async fn create_thread(&self, user: Value) -> Value {
        self.post("/chat/thread/", &json!({ "user": user }))
            .await
            .expect(201)
    }

    /// A new thread of a visitor; returns its id.
    pub async fn new_thread(&self) -> String {
        let thread = self
            .create_thread(json!({"name": "Visitor", "email": "v@example.com"}))
            .await;
        thread["id"].as_str().expect("thread id").to_owned()
    }

    /// `POST /chat/message/` with exactly `fields`; the raw answer.
    pub async fn post_message(&self, fields: &Value) -> HttpResponse {
        self.post("/chat/message/", fields).await
    }

    /// Posts `body` to `thread` as the visitor; asserts 201 and returns the raw answer.
    pub async fn say(&self, thread: &str, body: &str) -> HttpResponse {
        let response = self
            .post_message(&json!({
                "user": {"name": "Visitor"},
                "thread": thread,
                "body": body,
                "send_by_user": true,
            }))
            .await;
        response.expect(201);
        response
    }

    /// `GET /chat/thread/<id>/`; asserts 200 and returns the thread.
    pub async fn get_thread(&self, id: &str) -> Value {
        self.get(&format!("/chat/thread/{id}/")).await.expect(200)
    }

    // ----- websocket -----

    pub fn ws_url(&self, thread: &str) -> String {
        format!("ws://{}/ws/chat/{thread}/", self.ws_addr)
    }

    /// Opens a websocket on `thread`; panics if it is refused.
    pub async fn connect_ws(&self, thread: &str) -> Ws {
        let url = self.ws_url(thread);
        Ws::connect(&url)
            .await
            .unwrap_or_else(|r| panic!("websocket {url} did not open: {r:?}"))
    }

    /// Opens `ws://<gateway><path>`, returning the refusal if there is one.
    pub async fn try_connect_ws(&self, path: &str) -> Result<Ws, Refused> {
        Ws::connect(&format!("ws://{}{path}", self.ws_addr)).await
    }

    // ----- NATS -----

    /// A fresh NATS client of this app's server.
    pub async fn nats(&self) -> async_nats::Client {
        self.try_nats(async_nats::ConnectOptions::new())
            .await
            .expect("connecting to nats-server")
    }

    /// A fresh NATS client of this app's server, with `options` and this client's login.
    pub async fn try_nats(
        &self,
        mut options: async_nats::ConnectOptions,
    ) -> Result<async_nats::Client, async_nats::ConnectError> {
        if let Some((user, password)) = &self.nats_login {
            options = options
                .user_and_password(user.clone(), password.clone())
                .custom_inbox_prefix(format!("_INBOX_{user}"));
        }
        within(
            "connecting to nats-server",
            REQUEST_TIMEOUT,
            // One server, or a cluster's seed list.
            options.connect(
                self.nats_url
                    .split(',')
                    .map(str::to_owned)
                    .collect::<Vec<String>>(),
            ),
        )
        .await
    }

    pub async fn jetstream(&self) -> jetstream::Context {
        jetstream::new(self.nats().await)
    }

    /// Publishes an event to JetStream as an outside publisher would, and waits for the ack.
    pub async fn publish_event(
        &self,
        subject: &str,
        headers: &[(&str, &str)],
        payload: impl Into<Bytes>,
    ) -> jetstream::publish::PublishAck {
        publish_event(&self.jetstream().await, subject, headers, payload.into()).await
    }

    /// The subject of `thread`'s MessagePosted events.
    pub fn message_subject(&self, thread: &str) -> String {
        format!("{SUBJECT_PREFIX}.thread.{thread}.message")
    }

    /// The subject of `thread`'s ThreadCreated events.
    pub fn created_subject(&self, thread: &str) -> String {
        format!("{SUBJECT_PREFIX}.thread.{thread}.created")
    }

    /// Waits until the projector has applied (acknowledged) every event up to `sequence`.
    pub async fn wait_applied(&self, sequence: u64) {
        let js = self.jetstream().await;
        eventually(
            &format!("the projector to apply events up to {sequence}"),
            Duration::from_secs(120),
            || async {
                let mut consumer: jetstream::consumer::PullConsumer = js
                    .get_consumer_from_stream(PROJECTOR_CONSUMER, STREAM)
                    .await
                    .ok()?;
                let info = consumer.info().await.ok()?;
                (info.ack_floor.stream_sequence >= sequence).then_some(())
            },
        )
        .await
    }

    /// Every event set aside so far.
    pub async fn dead_letters(&self) -> Vec<jetstream::message::StreamMessage> {
        let js = self.jetstream().await;
        let Ok(mut stream) = js.get_stream(DEAD_LETTER_STREAM).await else {
            return Vec::new();
        };
        let state = stream
            .info()
            .await
            .expect("dead-letter stream info")
            .state
            .clone();
        let mut out = Vec::new();
        if state.messages == 0 {
            return out;
        }
        for seq in state.first_sequence..=state.last_sequence {
            if let Ok(message) = stream.get_raw_message(seq).await {
                out.push(message);
            }
        }
        out
    }

    /// Waits until an event with `Threadline-Dead-Letter-Sequence: seq` is set aside.
    pub async fn dead_letter_of(&self, seq: u64) -> jetstream::message::StreamMessage {
        eventually(
            &format!("event {seq} to be set aside in {DEAD_LETTER_STREAM}"),
            PROJECTION_TIMEOUT,
            || async {
                self.dead_letters().await.into_iter().find(|m| {
                    header(m, "Threadline-Dead-Letter-Sequence").as_deref()
                        == Some(&seq.to_string())
                })
            },
        )
        .await
    }
}

/// An HTTP client that follows no redirects, gives up after `REQUEST_TIMEOUT`, and keeps
/// at most `idle` idle connections per host.
fn http_client(idle: usize) -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(REQUEST_TIMEOUT)
        .pool_max_idle_per_host(idle)
        .build()
        .expect("building an HTTP client")
}

/// Sends one request and reads the whole answer.
async fn send(
    client: &reqwest::Client,
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
    content_type: Option<&str>,
    headers: &[(&str, &str)],
) -> Result<HttpResponse, reqwest::Error> {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("an HTTP method");
    let mut request = client.request(method, format!("http://{addr}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if let Some(ct) = content_type {
        request = request.header(reqwest::header::CONTENT_TYPE, ct);
    }
    if let Some(body) = body {
        request = request.body(body);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let bytes = response.bytes().await?;
    let text = String::from_utf8(bytes.to_vec())
        .unwrap_or_else(|_| panic!("the answer to {path} is not UTF-8"));
    Ok(HttpResponse {
        status,
        content_type,
        text,
    })
}

/// Publishes one event on a JetStream context and waits for the ack.
pub async fn publish_event(
    js: &jetstream::Context,
    subject: &str,
    headers: &[(&str, &str)],
    payload: Bytes,
) -> jetstream::publish::PublishAck {
    let mut map = async_nats::HeaderMap::new();
    for (name, value) in headers {
        map.insert(*name, *value);
    }
    within(
        &format!("publishing to {subject}"),
        REQUEST_TIMEOUT,
        async {
            js.publish_with_headers(subject.to_owned(), map, payload)
                .await
                .unwrap_or_else(|e| panic!("publishing to {subject}: {e}"))
                .await
                .unwrap_or_else(|e| panic!("JetStream ack for {subject}: {e}"))
        },
    )
    .await
}

/// A header of a stored message, as text.
pub fn header(message: &jetstream::message::StreamMessage, name: &str) -> Option<String> {
    message.headers.get(name).map(|v| v.as_str().to_owned())
}
