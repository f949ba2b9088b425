//! The slow-header attack, reproduced: one machine opens thousands of connections, sends half
//! a request's headers on each, then nothing. It starts its own nats-server and one
//! `threadline gateway` (every role serves HTTP through the same accept loop and limits), or
//! attacks `--target`, opens the connections from `--addresses` loopback addresses in turn
//! (127.0.0.2, 127.0.0.3, …), and reports how many were closed as soon as they opened, how many
//! are still open at each `--after`, and how long another client's `GET /healthz` takes
//! meanwhile. Run it with `scripts/bench-slow-headers`; `--help` lists the knobs.

mod servers;

use anyhow::Context;
use clap::Parser;
use servers::{free_port, NatsServer, Process};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use threadline_nats::{JetStreamLog, NatsSettings};
use threadline_runtime::settings::from_environment;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Half of an upgrade request's headers: what the attack sends on each connection.
const HALF_HEADER: &str =
    "GET /ws/chat/00000000-0000-0000-0000-000000000000/ HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n";

#[derive(Debug, Parser)]
struct Args {
    /// The `threadline` binary to run as the gateway.
    #[arg(long, default_value = "target/release/threadline")]
    threadline: PathBuf,
    /// Attack this server instead of starting one (e.g. an older build).
    #[arg(long)]
    target: Option<SocketAddr>,
    /// Settings of the gateway started, as KEY=VALUE (repeatable).
    #[arg(long = "env")]
    env: Vec<String>,
    /// Connections to open.
    #[arg(long, default_value_t = 3_000)]
    connections: usize,
    /// Loopback addresses they come from, in turn, from 127.0.0.2 on.
    #[arg(long, default_value_t = 3)]
    addresses: u8,
    /// Seconds after the connections opened at which the open ones are counted.
    #[arg(long, value_delimiter = ',', default_value = "5,11,15")]
    after: Vec<u64>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut started = None;
    let target = match args.target {
        Some(target) => target,
        None => {
            let nats = NatsServer::start().await?;
            // Creates the event stream, which a gateway waits for.
            let mut settings: NatsSettings = from_environment()?;
            settings.nats_url = nats.url.as_str().into();
            JetStreamLog::connect(&settings).await?;
            let port = free_port()?;
            let mut command = Command::new(&args.threadline);
            command
                .arg("gateway")
                .env("NATS_URL", &nats.url)
                .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null());
            for setting in &args.env {
                let (key, value) = setting
                    .split_once('=')
                    .with_context(|| format!("--env {setting}: not KEY=VALUE"))?;
                command.env(key, value);
            }
            let mut gateway = Process::spawn("threadline gateway", &mut command)?;
            let target = SocketAddr::from(([127, 0, 0, 1], port));
            servers::wait_ready(
                &reqwest::Client::new(),
                &format!("http://{target}"),
                &mut gateway,
            )
            .await?;
            started = Some((nats, gateway));
            target
        }
    };

    let pid = started.as_ref().map(|(_, gateway)| gateway.id());
    let opened = Instant::now();
    let closed: Arc<Mutex<Vec<Option<Duration>>>> =
        Arc::new(Mutex::new(vec![None; args.connections]));
    for i in 0..args.connections {
        let source = Ipv4Addr::new(
            127,
            0,
            0,
            2 + (i % usize::from(args.addresses.max(1))) as u8,
        );
        let mut stream = connect_from(source, target)
            .await
            .with_context(|| format!("connection {i} from {source}"))?;
        let connected = Instant::now();
        let closed = closed.clone();
        tokio::spawn(async move {
            let _ = stream.write_all(HALF_HEADER.as_bytes()).await;
            let mut buffer = [0u8; 1024];
            while matches!(stream.read(&mut buffer).await, Ok(n) if n > 0) {}
            closed.lock().expect("closed")[i] = Some(connected.elapsed());
        });
    }
    let took = opened.elapsed();
    println!(
        "{} connections from {} source addresses to {target}, each sending half a request's headers, \
         opened in {:.2} s",
        args.connections,
        args.addresses,
        took.as_secs_f64()
    );
    let mut after = args.after.clone();
    after.sort_unstable();
    let mut refused_reported = false;
    for seconds in after {
        tokio::time::sleep_until((opened + took + Duration::from_secs(seconds)).into()).await;
        let (at_once, open) = {
            let closed = closed.lock().expect("closed");
            let at_once = closed
                .iter()
                .filter(|c| c.is_some_and(|c| c < Duration::from_secs(1)))
                .count();
            (at_once, closed.iter().filter(|c| c.is_none()).count())
        };
        if !refused_reported {
            println!("closed within 1 s of opening: {at_once}");
            refused_reported = true;
        }
        let healthz = healthz(target).await;
        let files = pid
            .and_then(|pid| std::fs::read_dir(format!("/proc/{pid}/fd")).ok())
            .map_or_else(String::new, |fds| {
                format!("; files open in the gateway: {}", fds.count())
            });
        println!(
            "open after {seconds} s: {open}{files}; another client's GET /healthz meanwhile: \
             {healthz}"
        );
    }
    if let Some((_nats, mut gateway)) = started {
        gateway.check_running()?;
    }
    Ok(())
}

async fn connect_from(source: Ipv4Addr, target: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
    socket.connect(target).await
}

/// A `GET /healthz` from 127.0.0.1 on a connection of its own: its status line and time.
async fn healthz(target: SocketAddr) -> String {
    let started = Instant::now();
    let exchange = async {
        let mut stream = TcpStream::connect(target).await?;
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        std::io::Result::Ok(answer)
    };
    match tokio::time::timeout(Duration::from_secs(10), exchange).await {
        Err(_) => "no answer within 10 s".to_owned(),
        Ok(Err(e)) => format!("failed: {e}"),
        Ok(Ok(answer)) => {
            let text = String::from_utf8_lossy(&answer);
            let status = text.lines().next().unwrap_or("nothing").to_owned();
            format!(
                "{status} in {:.1} ms",
                started.elapsed().as_secs_f64() * 1e3
            )
        }
    }
}
