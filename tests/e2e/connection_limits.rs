//! Connection limits on every listener, over raw TCP: connections past `MAX_CONNECTIONS` or
//! `MAX_CONNECTIONS_PER_IP` are closed at once, the others that send half a request (or
//! nothing) are closed by `HTTP_HEADER_TIMEOUT`, a kept-alive one by `HTTP_IDLE_TIMEOUT`, a
//! request whose body trickles in is answered 408 after `HTTP_REQUEST_TIMEOUT`, and behind a
//! trusted proxy each forwarded client has at most `MAX_CONNECTIONS_PER_IP` requests in flight.
//! Meanwhile a visitor from another address is served as usual.
//!
//! The attackers connect from 127.0.0.2 (all of 127.0.0.0/8 is this machine), the visitor and
//! the harness from 127.0.0.1.

use crate::harness::metrics::{sample, scrape};
use crate::harness::ws::Ws;
use crate::harness::*;
use serde_json::{json, Value};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;

const ATTACKER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const VISITOR: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// How long a connection closed "at once" may take to be seen closed here.
const AT_ONCE: Duration = Duration::from_secs(5);
/// How long a connection the server keeps is watched for staying open.
const STAYS_OPEN: Duration = Duration::from_millis(300);
/// Far above every timeout the tests set, for what a timeout must close.
const CLOSED_BY_TIMEOUT: Duration = Duration::from_secs(30);

/// A TCP connection from `source` to `addr`, sending `first` at once.
async fn connect_from(source: Ipv4Addr, addr: SocketAddr, first: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("a socket");
    socket
        .bind(SocketAddr::new(IpAddr::V4(source), 0))
        .expect("binding a loopback address");
    let mut stream = socket.connect(addr).await.expect("connecting");
    if !first.is_empty() {
        // A refused connection may be closed before this is sent: then the read sees it.
        let _ = stream.write_all(first.as_bytes()).await;
    }
    stream
}

/// Whether the server closes `stream` within `wait` (reading and dropping what it sends).
async fn closed_within(stream: &mut TcpStream, wait: Duration) -> bool {
    let mut buffer = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// How many of `streams` the server closes within `wait`, watched side by side.
async fn count_closed(streams: &mut [TcpStream], wait: Duration) -> usize {
    let watched = streams.iter_mut().map(|s| closed_within(s, wait));
    futures::future::join_all(watched)
        .await
        .into_iter()
        .filter(|closed| *closed)
        .count()
}

/// Sends `request` on `stream` and reads one response: its status and its body.
async fn exchange(stream: &mut TcpStream, request: &str) -> (u16, String) {
    stream
        .write_all(request.as_bytes())
        .await
        .expect("sending a request");
    read_response(stream).await
}

/// Reads one response with a `Content-Length` from `stream`: its status and its body.
async fn read_response(stream: &mut TcpStream) -> (u16, String) {
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    within("a response", REQUEST_TIMEOUT_HERE, async {
        loop {
            if let Some(end) = find(&received, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&received[..end]).to_ascii_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().expect("a content length"));
                if received.len() >= end + 4 + length {
                    let status = head[9..12].parse().expect("a status");
                    let body = String::from_utf8_lossy(&received[end + 4..end + 4 + length]);
                    return (status, body.into_owned());
                }
            }
            let n = stream.read(&mut buffer).await.expect("reading a response");
            assert!(n > 0, "the connection closed before a whole response");
            received.extend_from_slice(&buffer[..n]);
        }
    })
    .await
}

const REQUEST_TIMEOUT_HERE: Duration = Duration::from_secs(30);

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn get(path: &str, headers: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{headers}\r\n")
}

/// A visitor who posts and listens throughout: each round, a POST answered 201 and its frame
/// on the socket.
struct Visitor {
    stop: Arc<AtomicBool>,
    task: JoinHandle<usize>,
}

impl Visitor {
    async fn start(app: &App, thread: &str) -> Visitor {
        let client = app.client(0, 0);
        let mut socket = Ws::connect(&client.ws_url(thread))
            .await
            .expect("the visitor's socket");
        let thread = thread.to_owned();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let mut rounds = 0;
            while !stopped.load(Ordering::Relaxed) {
                let posted = client.say(&thread, &format!("round {rounds}")).await;
                assert_eq!(socket.next_text().await, posted.text, "round {rounds}");
                rounds += 1;
            }
            rounds
        });
        Visitor { stop, task }
    }

    /// Stops, and says how many rounds were served.
    async fn rounds(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        within("the visitor's last round", REQUEST_TIMEOUT_HERE, self.task)
            .await
            .expect("the visitor failed")
    }
}

#[tokio::test]
async fn connections_past_the_per_address_limit_are_refused_and_the_rest_time_out() {
    const PER_IP: usize = 20;
    let app = options()
        .env("MAX_CONNECTIONS_PER_IP", PER_IP.to_string())
        .env("HTTP_HEADER_TIMEOUT", "3s")
        .start()
        .await;
    let thread = app.new_thread().await;
    let visitor = Visitor::start(&app, &thread).await;
    let attacks = [
        (
            app.api_addr,
            "POST /chat/message/ HTTP/1.1\r\nHost: x\r\n".to_owned(),
        ),
        (
            app.ws_addr,
            format!(
                "GET /ws/chat/{thread}/ HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n\
                 Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
            ),
        ),
    ];
    for (addr, half_request) in &attacks {
        // Half of them send half a request, the other half nothing at all.
        let mut streams = Vec::new();
        for i in 0..2 * PER_IP {
            let first = if i % 2 == 0 {
                half_request.as_str()
            } else {
                ""
            };
            streams.push(connect_from(ATTACKER, *addr, first).await);
        }
        let (kept, past) = streams.split_at_mut(PER_IP);
        assert_eq!(
            count_closed(kept, STAYS_OPEN).await,
            0,
            "{addr}: the first {PER_IP} connections are kept"
        );
        assert_eq!(
            count_closed(past, AT_ONCE).await,
            PER_IP,
            "{addr}: every connection past the limit is closed at once"
        );
        assert_eq!(
            count_closed(kept, CLOSED_BY_TIMEOUT).await,
            PER_IP,
            "{addr}: the header timeout closes the ones kept"
        );
        // Their places are free again.
        let mut next = connect_from(ATTACKER, *addr, &get("/healthz", "")).await;
        assert_eq!(read_response(&mut next).await.0, 200, "{addr}");
    }
    assert!(visitor.rounds().await > 0, "the visitor was served");

    for (role, addr) in [("api", app.api_addr), ("gateway", app.ws_addr)] {
        let metrics = scrape(&app, addr).await;
        let refused = sample(
            &metrics,
            "threadline_http_connections_refused_total",
            &[("reason", "max_connections_per_ip")],
        );
        assert_eq!(refused, Some(PER_IP as f64), "{role}");
        let timed_out = sample(
            &metrics,
            "threadline_http_connections_timed_out_total",
            &[("timeout", "header")],
        );
        assert!(
            timed_out.is_some_and(|n| n >= PER_IP as f64),
            "{role}: {timed_out:?}"
        );
    }
}

#[tokio::test]
async fn past_max_connections_a_connection_is_closed_at_once_until_others_go() {
    const MAX: usize = 4;
    let app = options()
        .role_env("gateway", "MAX_CONNECTIONS", MAX.to_string())
        .start()
        .await;
    let thread = app.new_thread().await;
    // Websockets count for as long as they are open. The harness may keep one connection of
    // its own to the gateway (its readiness check), so there is room for MAX or MAX - 1.
    let path = format!("/ws/chat/{thread}/");
    let mut sockets = Vec::new();
    let refusal = loop {
        match app.try_connect_ws(&path).await {
            Ok(socket) if sockets.len() < MAX => sockets.push(socket),
            Ok(_) => panic!("more than {MAX} connections were open"),
            Err(refused) => break refused,
        }
    };
    assert!(
        sockets.len() >= MAX - 1,
        "only {} sockets opened",
        sockets.len()
    );
    assert_eq!(
        refusal.status, None,
        "closed before any answer: {refusal:?}"
    );
    let mut raw = connect_from(VISITOR, app.ws_addr, &get("/healthz", "")).await;
    assert!(
        closed_within(&mut raw, AT_ONCE).await,
        "a connection past MAX_CONNECTIONS is closed at once"
    );

    // The open sockets still get their frames.
    let posted = app.say(&thread, "to the sockets that are in").await;
    for socket in &mut sockets {
        assert_eq!(socket.next_text().await, posted.text);
    }
    for socket in sockets {
        socket.close().await;
    }
    let mut socket = eventually("a new socket once the others closed", AT_ONCE, || {
        let path = path.clone();
        let app = &app;
        async move { app.try_connect_ws(&path).await.ok() }
    })
    .await;
    let posted = app.say(&thread, "to the new socket").await;
    assert_eq!(socket.next_text().await, posted.text);
    drop(socket);
    let metrics = eventually("a scrape once there is room", AT_ONCE, || async {
        let response = app
            .try_request_to(app.ws_addr, "GET", "/metrics", None, None)
            .await;
        response.ok().filter(|r| r.status == 200).map(|r| r.text)
    })
    .await;
    let refused = sample(
        &metrics,
        "threadline_http_connections_refused_total",
        &[("reason", "max_connections")],
    );
    assert!(refused.is_some_and(|n| n >= 2.0), "{refused:?}");
}

#[tokio::test]
async fn an_idle_connection_is_closed_after_the_idle_timeout_and_a_trickled_body_gets_408() {
    let app = options()
        .env("HTTP_HEADER_TIMEOUT", "1s")
        .env("HTTP_IDLE_TIMEOUT", "3s")
        .env("HTTP_REQUEST_TIMEOUT", "2s")
        .start()
        .await;
    let thread = app.new_thread().await;

    // Kept alive after its request, it waits past the header timeout (idle is not a header),
    // then the idle timeout closes it.
    let mut idle = connect_from(ATTACKER, app.api_addr, "").await;
    let (status, _) = exchange(&mut idle, &get("/healthz", "")).await;
    assert_eq!(status, 200);
    assert!(
        !closed_within(&mut idle, Duration::from_millis(1500)).await,
        "closed by the header timeout while idle"
    );
    assert!(closed_within(&mut idle, CLOSED_BY_TIMEOUT).await);

    // A body that comes a byte at a time.
    let body = json!({"user": {"name": "V"}, "thread": thread, "body": "slowly"}).to_string();
    let head = format!(
        "POST /chat/message/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    let mut slow = connect_from(ATTACKER, app.api_addr, &head).await;
    let (mut reader, mut writer) = slow.split();
    let trickle = async {
        for byte in body.as_bytes() {
            if writer.write_all(&[*byte]).await.is_err() {
                // Closed by the server: the answer tells why.
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        panic!("the whole body was sent before any answer");
    };
    let answer = async {
        let mut received = Vec::new();
        let mut buffer = [0u8; 4096];
        loop {
            match reader.read(&mut buffer).await {
                Ok(0) | Err(_) => return received,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
    };
    let received = tokio::select! {
        received = answer => received,
        () = trickle => unreachable!(),
    };
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
    let body_at = text.find("\r\n\r\n").expect("a head") + 4;
    let answer: Value = serde_json::from_str(&text[body_at..]).expect("a JSON body");
    assert_eq!(answer, json!({"detail": "Request timed out."}));

    let metrics = scrape(&app, app.api_addr).await;
    for timeout in ["idle", "request"] {
        let n = sample(
            &metrics,
            "threadline_http_connections_timed_out_total",
            &[("timeout", timeout)],
        );
        assert!(n.is_some_and(|n| n >= 1.0), "{timeout}: {n:?}");
    }
}

#[tokio::test]
async fn behind_a_trusted_proxy_requests_in_flight_are_limited_per_forwarded_client() {
    const PER_IP: usize = 2;
    let app = options()
        .env("TRUSTED_PROXIES", "127.0.0.1")
        .env("MAX_CONNECTIONS_PER_IP", PER_IP.to_string())
        .start()
        .await;
    let thread = app.new_thread().await;
    let from = |client: &str| format!("X-Forwarded-For: {client}\r\n");

    // The proxy's connections carry many clients: not limited per address.
    let mut proxy = Vec::new();
    for _ in 0..3 * PER_IP {
        proxy.push(connect_from(VISITOR, app.api_addr, "").await);
    }
    for (i, stream) in proxy.iter_mut().enumerate() {
        let request = get("/healthz", &from(&format!("203.0.113.{i}")));
        assert_eq!(exchange(stream, &request).await.0, 200, "connection {i}");
    }

    // One forwarded client's requests whose bodies have not come yet: in flight.
    let body = json!({"user": {"name": "V"}, "thread": thread, "body": "held"}).to_string();
    let head = |client: &str| {
        format!(
            "POST /chat/message/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n{}\r\n",
            body.len(),
            from(client)
        )
    };
    let mut held = Vec::new();
    for stream in proxy.iter_mut().take(PER_IP) {
        stream
            .write_all(head("203.0.113.9").as_bytes())
            .await
            .expect("sending a head");
        held.push(stream);
    }
    let (status, answer) = eventually("the client's next request refused", AT_ONCE, || {
        let addr = app.api_addr;
        let request = get("/healthz", &from("203.0.113.9"));
        async move {
            let mut stream = connect_from(VISITOR, addr, "").await;
            Some(exchange(&mut stream, &request).await).filter(|(status, _)| *status == 429)
        }
    })
    .await;
    assert_eq!(status, 429);
    assert_eq!(
        serde_json::from_str::<Value>(&answer).expect("a JSON body"),
        json!({"detail": "Too many requests in progress from this address."})
    );
    // Another client behind the same proxy is served.
    let mut other = connect_from(VISITOR, app.api_addr, "").await;
    let request = get("/healthz", &from("203.0.113.10"));
    assert_eq!(exchange(&mut other, &request).await.0, 200);

    // Once one of its requests is answered, the client is served again.
    let first = held.remove(0);
    first.write_all(body.as_bytes()).await.expect("the body");
    assert_eq!(read_response(first).await.0, 201);
    eventually("the client served again", AT_ONCE, || {
        let addr = app.api_addr;
        let request = get("/healthz", &from("203.0.113.9"));
        async move {
            let mut stream = connect_from(VISITOR, addr, "").await;
            Some(exchange(&mut stream, &request).await).filter(|(status, _)| *status == 200)
        }
    })
    .await;
}
