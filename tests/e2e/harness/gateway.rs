//! Websocket clients for the gateway's promises beyond the contract: resuming with `since`,
//! a client that reconnects by itself (the loop of docs/websocket-clients.md), upgrades with
//! chosen headers, raw frames, and the resident memory of the process behind a port.

use super::ws::FRAME_TIMEOUT;
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error, Message};
use tokio_tungstenite::{connect_async, MaybeTlsStream, WebSocketStream};

pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The subject the gateway listens on for `thread`'s stored messages.
pub fn stored_subject(thread: &str) -> String {
    format!("{}.stored.{thread}.message", super::client::SUBJECT_PREFIX)
}

/// The `id` of a message frame.
pub fn frame_id(frame: &str) -> String {
    let value: Value = serde_json::from_str(frame)
        .unwrap_or_else(|e| panic!("a frame that is not JSON ({e}): {frame}"));
    value["id"]
        .as_str()
        .unwrap_or_else(|| panic!("a frame without an id: {frame}"))
        .to_owned()
}

/// The URL of `thread`'s socket on `gateway`, resuming after `since` if given.
pub fn ws_url(gateway: SocketAddr, thread: &str, since: Option<&str>) -> String {
    match since {
        Some(id) => format!("ws://{gateway}/ws/chat/{thread}/?since={id}"),
        None => format!("ws://{gateway}/ws/chat/{thread}/"),
    }
}

/// Opens `url` with extra request headers; the refusal's status and body otherwise.
pub async fn connect_with(url: &str, headers: &[(&str, &str)]) -> Result<Socket, (u16, String)> {
    let mut request = url.into_client_request().expect("a websocket URL");
    for (name, value) in headers {
        request.headers_mut().insert(
            http::HeaderName::from_bytes(name.as_bytes()).expect("a header name"),
            value.parse().expect("a header value"),
        );
    }
    match tokio::time::timeout(FRAME_TIMEOUT, connect_async(request)).await {
        Err(_) => panic!("no answer to the upgrade of {url} within {FRAME_TIMEOUT:?}"),
        Ok(Ok((socket, _))) => Ok(socket),
        Ok(Err(Error::Http(response))) => Err((
            response.status().as_u16(),
            response
                .body()
                .as_deref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default(),
        )),
        Ok(Err(e)) => panic!("connecting to {url}: {e}"),
    }
}

/// A client that keeps one thread's socket open across closes and failures, as a browser
/// should: it reconnects with `since` set to the last message it got, trying the gateways in
/// turn with a short backoff, and records every message id it receives, in order.
pub struct ResumingClient {
    received: Arc<Mutex<Vec<String>>>,
    reconnects: Arc<Mutex<usize>>,
    task: JoinHandle<()>,
}

impl ResumingClient {
    /// Starts on `gateways[first]`, resuming after `since`.
    pub fn start(gateways: Vec<SocketAddr>, first: usize, thread: &str, since: &str) -> Self {
        let received = Arc::new(Mutex::new(Vec::new()));
        let reconnects = Arc::new(Mutex::new(0));
        let thread = thread.to_owned();
        let mut last = since.to_owned();
        let (ids, count) = (received.clone(), reconnects.clone());
        let task = tokio::spawn(async move {
            let mut turn = first;
            let mut backoff = Duration::from_millis(50);
            loop {
                let url = ws_url(gateways[turn % gateways.len()], &thread, Some(&last));
                turn += 1;
                let connected =
                    tokio::time::timeout(FRAME_TIMEOUT, connect_async(url.as_str())).await;
                let Ok(Ok((mut socket, _))) = connected else {
                    eprintln!("resuming client: {url}: {connected:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                };
                backoff = Duration::from_millis(50);
                while let Some(Ok(message)) = socket.next().await {
                    if let Message::Text(text) = message {
                        let id = frame_id(text.as_str());
                        ids.lock().unwrap().push(id.clone());
                        last = id;
                    }
                }
                *count.lock().unwrap() += 1;
            }
        });
        ResumingClient {
            received,
            reconnects,
            task,
        }
    }

    /// The ids received so far, in order.
    pub fn received(&self) -> Vec<String> {
        self.received.lock().unwrap().clone()
    }

    /// How many times the socket ended and the client reconnected.
    pub fn reconnects(&self) -> usize {
        *self.reconnects.lock().unwrap()
    }
}

impl Drop for ResumingClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads frames until the server closes: the close code, `None` if the connection ended
/// without one. Text frames before it are allowed.
pub async fn closed(socket: &mut Socket) -> Option<u16> {
    let deadline = tokio::time::Instant::now() + FRAME_TIMEOUT;
    loop {
        match tokio::time::timeout_at(deadline, socket.next()).await {
            Err(_) => panic!("the socket was not closed within {FRAME_TIMEOUT:?}"),
            Ok(Some(Ok(Message::Close(frame)))) => return frame.map(|f| u16::from(f.code)),
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(_)) | None) => return None,
        }
    }
}

/// Sends frames until the server stops taking them: the number sent.
pub async fn send_until_refused(
    socket: &mut Socket,
    mut frame: impl FnMut(usize) -> Message,
) -> usize {
    for n in 0.. {
        let sent = tokio::time::timeout(FRAME_TIMEOUT, socket.send(frame(n))).await;
        if !matches!(sent, Ok(Ok(()))) {
            return n;
        }
    }
    unreachable!()
}

/// The peak resident memory of the process listening on an address, sampled every 10 ms
/// from [`PeakResident::start`] until [`PeakResident::growth`].
pub struct PeakResident {
    before: u64,
    peak: std::sync::Arc<std::sync::atomic::AtomicU64>,
    sampling: std::sync::Arc<std::sync::atomic::AtomicBool>,
    sampler: tokio::task::JoinHandle<()>,
}

impl PeakResident {
    pub fn start(addr: SocketAddr) -> PeakResident {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let before = resident_bytes_of_listener(addr);
        let peak = std::sync::Arc::new(AtomicU64::new(before));
        let sampling = std::sync::Arc::new(AtomicBool::new(true));
        let sampler = tokio::spawn({
            let (peak, sampling) = (peak.clone(), sampling.clone());
            async move {
                while sampling.load(Ordering::Relaxed) {
                    peak.fetch_max(resident_bytes_of_listener(addr), Ordering::Relaxed);
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            }
        });
        PeakResident {
            before,
            peak,
            sampling,
            sampler,
        }
    }

    /// Stops sampling; how far above its first sample the peak went, in bytes.
    pub async fn growth(self) -> u64 {
        use std::sync::atomic::Ordering;
        self.sampling.store(false, Ordering::Relaxed);
        self.sampler.await.expect("memory sampler");
        self.peak
            .load(Ordering::Relaxed)
            .saturating_sub(self.before)
    }
}

/// Resident memory (VmRSS) in bytes of the process listening on `addr`'s port.
pub fn resident_bytes_of_listener(addr: SocketAddr) -> u64 {
    let port = format!("{:04X}", addr.port());
    let tcp = std::fs::read_to_string("/proc/net/tcp").expect("reading /proc/net/tcp");
    let inode = tcp
        .lines()
        .skip(1)
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 9 && f[1].ends_with(&format!(":{port}")) && f[3] == "0A")
        .map(|f| f[9].to_owned())
        .unwrap_or_else(|| panic!("nothing listens on port {}", addr.port()));
    let target = format!("socket:[{inode}]");
    for entry in std::fs::read_dir("/proc").expect("reading /proc").flatten() {
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let listens = fds
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.to_string_lossy() == target));
        if listens {
            let status = std::fs::read_to_string(entry.path().join("status")).unwrap_or_default();
            let kib: u64 = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .expect("VmRSS in /proc/<pid>/status");
            return kib * 1024;
        }
    }
    panic!("no process holds the listener on port {}", addr.port())
}
