//! A TCP proxy that a test controls, to cut one service's connection to a server (say, a
//! gateway's NATS connection) while every other connection stays up.

use std::net::SocketAddr;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Forwards connections on its own port to `target` until cut.
pub struct Proxy {
    addr: SocketAddr,
    open: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free port of 127.0.0.1 and forwards every connection to `target`.
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let (open, _) = watch::channel(true);
        let watcher = open.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let mut open = watcher.subscribe();
                if !*open.borrow() {
                    continue; // refused: dropped at once
                }
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (mut client, mut server) = (client, server);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = open.wait_for(|open| !*open) => {}
                    }
                });
            }
        });
        Proxy { addr, open, task }
    }

    /// Starts a proxy in front of a `nats://host:port` URL.
    pub async fn in_front_of(url: &str) -> Proxy {
        let target = url
            .trim_start_matches("nats://")
            .parse()
            .unwrap_or_else(|e| panic!("{url} is not nats://ip:port: {e}"));
        Proxy::start(target).await
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
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.open.send_replace(false);
        self.task.abort();
    }
}
