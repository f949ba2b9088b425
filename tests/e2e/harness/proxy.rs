//! A TCP proxy that a test controls, to cut one service's connection to a server (say, a
//! gateway's NATS connection) while every other connection stays up, or to lose one chosen
//! message on a connection that stays up: it reads the NATS server's side of the protocol.

use bytes::Bytes;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Forwards connections on its own port to `target` until cut.
pub struct Proxy {
    addr: SocketAddr,
    open: watch::Sender<bool>,
    losses: Arc<Mutex<Losses>>,
    connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

/// The messages a NATS proxy is to lose, and those it lost.
#[derive(Default)]
struct Losses {
    /// The subject of the next message to lose, if any.
    next: Option<String>,
    /// The payloads of the messages lost, headers left out.
    lost: Vec<Bytes>,
}

impl Proxy {
    /// A new gateway replica of `app` whose NATS connection goes through a proxy: the proxy,
    /// the replica's index and a client of that gateway.
    pub async fn gateway_behind(
        app: &mut super::app::App,
    ) -> (Proxy, usize, super::client::Client) {
        let proxy = Proxy::in_front_of(&app.nats.url()).await;
        let gateway = app
            .start_replica("gateway", &[("NATS_URL", &proxy.nats_url())])
            .await;
        let client = app.client(0, gateway);
        (proxy, gateway, client)
    }

    /// Listens on a free port of 127.0.0.1 and forwards every connection to the NATS server
    /// at a `nats://ip:port` URL (plain text, no TLS), reading what the server sends as NATS
    /// protocol, so that [`lose_next`](Self::lose_next) can leave a message out.
    pub async fn in_front_of(url: &str) -> Proxy {
        let target: SocketAddr = url
            .trim_start_matches("nats://")
            .parse()
            .unwrap_or_else(|e| panic!("{url} is not nats://ip:port: {e}"));
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let (open, _) = watch::channel(true);
        let losses = Arc::new(Mutex::new(Losses::default()));
        let connections = Arc::new(AtomicUsize::new(0));
        let watcher = open.clone();
        let (task_losses, accepted) = (losses.clone(), connections.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let mut open = watcher.subscribe();
                if !*open.borrow() {
                    continue; // refused: dropped at once
                }
                accepted.fetch_add(1, Ordering::SeqCst);
                let losses = task_losses.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    // What it forwards goes out at once, as it would without the proxy.
                    let _ = (client.set_nodelay(true), server.set_nodelay(true));
                    let (mut client, mut server) = (client, server);
                    let (mut from_client, to_client) = client.split();
                    let (from_server, mut to_server) = server.split();
                    tokio::select! {
                        _ = tokio::io::copy(&mut from_client, &mut to_server) => {}
                        _ = forward_nats(from_server, to_client, &losses) => {}
                        _ = open.wait_for(|open| !*open) => {}
                    }
                });
            }
        });
        Proxy {
            addr,
            open,
            losses,
            connections,
            task,
        }
    }

    /// The proxy as a NATS URL.
    pub fn nats_url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    /// Drops every forwarded connection and refuses new ones until [`restore`](Self::restore).
    pub fn cut(&self) {
        self.open.send_replace(false);
    }

    /// Forwards new connections again.
    pub fn restore(&self) {
        self.open.send_replace(true);
    }

    /// How many connections the proxy has forwarded so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Loses the next message that the server delivers on `subject` (to any subscriber
    /// behind this proxy), while the connection stays up.
    pub fn lose_next(&self, subject: &str) {
        self.losses.lock().unwrap().next = Some(subject.to_owned());
    }

    /// The payloads of the messages lost so far.
    pub fn lost(&self) -> Vec<Bytes> {
        self.losses.lock().unwrap().lost.clone()
    }
}

/// Copies what a NATS server sends to its client, operation by operation, leaving out the
/// message that `losses` names. A message is `MSG <subject> <sid> [reply] <bytes>` or
/// `HMSG <subject> <sid> [reply] <header bytes> <bytes>`, each followed by its payload and
/// CRLF; every other operation is one line.
async fn forward_nats(
    server: impl AsyncRead + Unpin,
    mut client: impl AsyncWrite + Unpin,
    losses: &Mutex<Losses>,
) -> std::io::Result<()> {
    let mut server = BufReader::with_capacity(64 * 1024, server);
    // What goes to the client, written once the server has sent nothing more for now.
    let mut out = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        if server.read_until(b'\n', &mut line).await? == 0 {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&line).into_owned();
        let fields: Vec<&str> = text.split_whitespace().collect();
        let sizes = match fields.first().map(|op| op.to_ascii_uppercase()).as_deref() {
            Some("MSG") if fields.len() >= 4 => Some((0, fields[fields.len() - 1])),
            Some("HMSG") if fields.len() >= 5 => Some((
                parse_size(fields[fields.len() - 2])?,
                fields[fields.len() - 1],
            )),
            _ => None,
        };
        match sizes {
            None => out.extend_from_slice(&line),
            Some((headers, size)) => {
                let size = parse_size(size)?;
                let mut payload = vec![0; size + 2];
                server.read_exact(&mut payload).await?;
                let mut losses = losses.lock().unwrap();
                if losses.next.as_deref() == Some(fields[1]) {
                    losses.next = None;
                    let body = Bytes::copy_from_slice(&payload[headers.min(size)..size]);
                    losses.lost.push(body);
                } else {
                    out.extend_from_slice(&line);
                    out.extend_from_slice(&payload);
                }
            }
        }
        if server.buffer().is_empty() && !out.is_empty() {
            client.write_all(&out).await?;
            out.clear();
        }
    }
}

fn parse_size(field: &str) -> std::io::Result<usize> {
    field.parse().map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not a NATS message size: {field}"),
        )
    })
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.open.send_replace(false);
        self.task.abort();
    }
}
