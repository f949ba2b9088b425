//! `spawn_app()`: a NATS server, a PostgreSQL cluster and threadline's services for one test,
//! run as a user runs them, with typed helpers that speak HTTP, websocket and NATS.

use super::ids::new_id;
use super::nats::NatsServer;
use super::postgres::Postgres;
use super::process::{Service, Starting};
use super::wait::{eventually, within};
use super::ws::{Refused, Ws};
use async_nats::jetstream;
use bytes::Bytes;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::Duration;

/// How long a single HTTP request may take before the test fails.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the read model may lag behind the log in a test.
pub const PROJECTION_TIMEOUT: Duration = Duration::from_secs(60);

pub const STREAM: &str = "THREADLINE";
pub const DEAD_LETTER_STREAM: &str = "THREADLINE_DEAD_LETTERS";
pub const SUBJECT_PREFIX: &str = "chat";

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

/// How the services run.
enum Layout {
    /// `threadline api`, `threadline projector`, `threadline gateway`, one process each.
    Separate,
    /// `threadline all`.
    AllInOne,
}

/// One test's whole system. Dropping it kills every process by its pid and removes their
/// directories; if the test is failing, every process's output is printed first.
pub struct App {
    services: Vec<Service>,
    pub nats: NatsServer,
    pub pg: Postgres,
    /// Where the HTTP API listens.
    pub api_addr: SocketAddr,
    /// Where the websocket gateway listens.
    pub ws_addr: SocketAddr,
    pub database_url: String,
    env: Vec<(String, String)>,
    http: reqwest::Client,
    projector_starts: usize,
    db: Option<sqlx::PgPool>,
}

/// Starts the system as separate processes: api, projector and gateway.
pub async fn spawn_app() -> App {
    App::spawn(Layout::Separate).await
}

/// Starts the system as one `threadline all` process.
pub async fn spawn_all() -> App {
    App::spawn(Layout::AllInOne).await
}

impl App {
    async fn spawn(layout: Layout) -> App {
        let nats = NatsServer::start();
        let pg = Postgres::start().await;
        // A database that does not exist yet: the services create it.
        let database = format!("threadline_{}", new_id().replace('-', ""));
        let database_url = pg.url(&database);
        let env: Vec<(String, String)> = [
            ("NATS_URL", nats.url()),
            ("DATABASE_URL", database_url.clone()),
            ("LISTEN_ADDR", "127.0.0.1:0".to_owned()),
            ("STREAM_NAME", STREAM.to_owned()),
            ("SUBJECT_PREFIX", SUBJECT_PREFIX.to_owned()),
            ("DEAD_LETTER_STREAM", DEAD_LETTER_STREAM.to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let services = match layout {
            // Started side by side, as in production: they race to create the database.
            Layout::Separate => ["api", "projector", "gateway"]
                .iter()
                .map(|role| Starting::new(role, role, &env))
                .collect::<Vec<_>>()
                .into_iter()
                .map(Starting::wait)
                .collect::<Vec<_>>(),
            Layout::AllInOne => vec![Service::spawn("all", &env)],
        };
        let api_addr = services
            .iter()
            .find(|s| s.role == "api" || s.role == "all")
            .map(|s| s.addr)
            .expect("an api");
        let ws_addr = services
            .iter()
            .find(|s| s.role == "gateway" || s.role == "all")
            .map(|s| s.addr)
            .expect("a gateway");
        let http = http_client(usize::MAX);
        App {
            services,
            nats,
            pg,
            api_addr,
            ws_addr,
            database_url,
            env,
            http,
            projector_starts: 1,
            db: None,
        }
    }

    /// Every running service's role and address.
    pub fn service_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.services
            .iter()
            .map(|s| (s.role.clone(), s.addr))
            .collect()
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
        send(&self.http, addr, method, path, body, content_type).await
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
        send(&client, self.api_addr, method, path, body, content_type).await
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
        within(
            "connecting to nats-server",
            REQUEST_TIMEOUT,
            async_nats::connect(self.nats.url()),
        )
        .await
        .expect("connecting to nats-server")
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

    // ----- read model -----

    /// A pool on the read model's database (which the services created).
    pub async fn db(&mut self) -> sqlx::PgPool {
        if let Some(pool) = &self.db {
            return pool.clone();
        }
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(REQUEST_TIMEOUT)
            .connect(&self.database_url)
            .await
            .expect("connecting to the read model");
        self.db = Some(pool.clone());
        pool
    }

    // ----- processes -----

    fn projector_index(&self) -> Option<usize> {
        self.services.iter().position(|s| s.role == "projector")
    }

    fn service_mut(&mut self, role: &str) -> &mut Service {
        self.services
            .iter_mut()
            .find(|s| s.role == role)
            .unwrap_or_else(|| panic!("no running {role}"))
    }

    /// Sends `sig` to the `role` process by its pid.
    pub fn signal(&mut self, role: &str, sig: libc::c_int) {
        self.service_mut(role).signal(sig);
    }

    /// Waits, up to `timeout`, for the `role` process to exit; its exit status.
    pub async fn wait_exit(&mut self, role: &str, timeout: Duration) -> std::process::ExitStatus {
        let service = self.service_mut(role);
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = service.try_wait() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "threadline {role} did not exit within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILLs the projector by its pid.
    pub fn kill_projector(&mut self) {
        let index = self.projector_index().expect("a running projector");
        let projector = &mut self.services[index];
        projector.kill();
        // Keep it, and its output for a failing test, under a name no one looks up.
        projector.role = "projector (killed)".to_owned();
    }

    /// Starts a new projector process.
    pub fn start_projector(&mut self) {
        self.projector_starts += 1;
        let name = format!("projector#{}", self.projector_starts);
        self.services
            .push(Service::spawn_named(&name, "projector", &self.env));
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
) -> Result<HttpResponse, reqwest::Error> {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("an HTTP method");
    let mut request = client.request(method, format!("http://{addr}{path}"));
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

impl Drop for App {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut out = String::from("\n===== output of the failing test's processes =====\n");
            for service in &self.services {
                out.push_str(&service.logs.dump());
            }
            out.push_str(&self.nats.logs.dump());
            out.push_str(&self.pg.logs.dump());
            eprintln!("{out}");
        }
        self.services.clear();
    }
}
