//! Benchmark of the websocket gateway: resident memory per idle socket, fan-out throughput and
//! latency from a message's timestamp to its frame. It starts its own nats-server (JetStream,
//! temporary store) and one `threadline gateway` process, publishes `ThreadCreated` and
//! `MessagePosted` events straight to JetStream as an outside publisher does (through the same
//! `JetStreamLog::append` the API uses), and holds the sockets itself. Run it with
//! `scripts/bench-gateway` (release build); `--help` lists the knobs.

mod servers;

use anyhow::{bail, Context};
use clap::Parser;
use futures::StreamExt;
use proto_events::{Event, MessageBody, MessagePosted, ThreadCreated, Timestamp, UserJson};
use servers::{free_port, NatsServer, Process};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use threadline_nats::{JetStreamLog, NatsSettings};
use threadline_ports::EventLog;
use threadline_runtime::settings::from_environment;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

/// Measures the gateway: idle memory, fan-out, latency. Needs `nats-server` on the PATH (or
/// in /usr/sbin) and a release build of `threadline` (scripts/bench-gateway builds it).
#[derive(Debug, Parser)]
struct Args {
    /// The `threadline` binary to run as the gateway.
    #[arg(long, default_value = "target/release/threadline")]
    threadline: PathBuf,
    /// Idle sockets to open for the memory figure.
    #[arg(long, default_value_t = 10_000)]
    idle_sockets: usize,
    /// Threads the idle sockets are spread over (one socket per thread by default: each
    /// visitor has a thread of their own).
    #[arg(long, default_value_t = 10_000)]
    idle_threads: usize,
    /// Threads of the fan-out run.
    #[arg(long, default_value_t = 10)]
    fanout_threads: usize,
    /// Sockets on each fan-out thread.
    #[arg(long, default_value_t = 1_000)]
    fanout_sockets: usize,
    /// Messages posted to each fan-out thread, as fast as the gateway delivers them.
    #[arg(long, default_value_t = 200)]
    fanout_messages: usize,
    /// Rounds of fan-out messages (one to every thread) the publisher may be ahead of the
    /// frames delivered; keep it well under the gateway's queue (`WS_CLIENT_QUEUE`, 64), or
    /// sockets fall behind and are closed as too slow (the run then counts fewer frames).
    #[arg(long, default_value_t = 16)]
    fanout_ahead: usize,
    /// Posts per second of the latency runs.
    #[arg(long, default_value_t = 1_000)]
    rate: u64,
    /// How long each latency run posts.
    #[arg(long, default_value = "10s", value_parser = threadline_ports::settings::parse_duration)]
    duration: Duration,
    /// Threads of the latency runs (posts go round-robin).
    #[arg(long, default_value_t = 100)]
    latency_threads: usize,
    /// Sockets per thread of the second latency run (rate × this = frames/s).
    #[arg(long, default_value_t = 20)]
    busy_sockets: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bench = Bench::start(&args).await?;
    println!("gateway benchmark (nats-server and `threadline gateway` on this machine)");

    let (per_socket, total) = bench.idle(args.idle_sockets, args.idle_threads).await?;
    println!(
        "idle: {} sockets on {} threads: +{:.1} MiB resident, {:.1} KiB per socket",
        args.idle_sockets,
        args.idle_threads,
        total as f64 / 1048576.0,
        per_socket as f64 / 1024.0
    );

    let (frames, elapsed) = bench
        .fanout(
            args.fanout_threads,
            args.fanout_sockets,
            args.fanout_messages,
            args.fanout_ahead,
        )
        .await?;
    println!(
        "fan-out: {} threads x {} sockets, {} messages each, at most {} rounds ahead: {frames} frames in {:.2} s = {:.0} frames/s",
        args.fanout_threads,
        args.fanout_sockets,
        args.fanout_messages,
        args.fanout_ahead,
        elapsed.as_secs_f64(),
        frames as f64 / elapsed.as_secs_f64()
    );

    for sockets in [1, args.busy_sockets] {
        let latencies = bench
            .latency(args.latency_threads, sockets, args.rate, args.duration)
            .await?;
        let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
        println!(
            "latency: {} posts/s over {} threads, {} socket(s) each ({} frames/s): {} frames, p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms",
            args.rate,
            args.latency_threads,
            sockets,
            args.rate * sockets as u64,
            latencies.len(),
            at(0.5) * 1e3,
            at(0.99) * 1e3,
            at(0.999) * 1e3
        );
    }
    Ok(())
}

/// The servers under test and a publisher.
struct Bench {
    gateway: SocketAddr,
    log: Arc<JetStreamLog>,
    gateway_process: Process,
    _nats: NatsServer,
}

impl Bench {
    async fn start(args: &Args) -> anyhow::Result<Bench> {
        let nats = NatsServer::start().await?;
        // The publisher makes the streams, as the api does; the gateway only waits for them.
        let mut settings: NatsSettings = from_environment()?;
        settings.nats_url = nats.url.as_str().into();
        settings.nats_timeout = Duration::from_secs(10);
        let log = Arc::new(JetStreamLog::connect(&settings).await?);
        let port = free_port()?;
        let mut gateway_process = Process::spawn(
            "threadline gateway",
            Command::new(&args.threadline)
                .arg("gateway")
                .env("NATS_URL", &nats.url)
                .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
                .env("WS_MAX_SOCKETS", "0")
                .env("WS_MAX_SOCKETS_PER_IP", "0")
                // Every socket of the benchmark comes from 127.0.0.1.
                .env("MAX_CONNECTIONS_PER_IP", "0")
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null()),
        )?;
        let gateway = SocketAddr::from(([127, 0, 0, 1], port));
        servers::wait_ready(
            &reqwest::Client::new(),
            &format!("http://{gateway}"),
            &mut gateway_process,
        )
        .await?;
        Ok(Bench {
            gateway,
            log,
            gateway_process,
            _nats: nats,
        })
    }

    fn resident_bytes(&self) -> anyhow::Result<u64> {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.gateway_process.id()))?;
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .context("no VmRSS")?;
        Ok(kib * 1024)
    }

    async fn new_threads(&self, n: usize) -> anyhow::Result<Vec<Uuid>> {
        let user = UserJson::from_json(r#"{"name":"bench"}"#)?;
        let mut threads = Vec::with_capacity(n);
        let mut pending = futures::stream::FuturesUnordered::new();
        for _ in 0..n {
            let id = proto_events::new_id();
            threads.push(id);
            let event = Event::ThreadCreated(ThreadCreated {
                id,
                user: user.clone(),
                timestamp: Timestamp::now(),
            })
            .encode();
            let log = self.log.clone();
            pending.push(async move { log.append(&event).await });
            if pending.len() >= 256 {
                pending.next().await.transpose()?;
            }
        }
        while let Some(done) = pending.next().await {
            done?;
        }
        Ok(threads)
    }

    async fn post(log: &JetStreamLog, thread: Uuid, body: &str) -> anyhow::Result<()> {
        let event = Event::MessagePosted(MessagePosted {
            id: proto_events::new_id(),
            user: UserJson::from_json(r#"{"name":"Agent"}"#)?,
            timestamp: Timestamp::now(),
            body: MessageBody::new(body.to_owned())?,
            send_by_user: false,
            thread,
        })
        .encode();
        log.append(&event).await?;
        Ok(())
    }

    /// Opens `per_thread` sockets on each thread; each calls `on_frame` with its text frames.
    async fn open(
        &self,
        threads: &[Uuid],
        per_thread: usize,
        on_frame: Arc<dyn Fn(&str) + Send + Sync>,
    ) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
        let config = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0);
        let mut sockets = Vec::new();
        for thread in threads {
            for _ in 0..per_thread {
                let url = format!("ws://{}/ws/chat/{thread}/", self.gateway);
                let (socket, _) =
                    tokio_tungstenite::connect_async_with_config(url, Some(config), true)
                        .await
                        .context("opening a socket")?;
                let on_frame = on_frame.clone();
                sockets.push(tokio::spawn(async move {
                    let (_sink, mut frames) = socket.split();
                    while let Some(Ok(message)) = frames.next().await {
                        if let Message::Text(text) = message {
                            on_frame(text.as_str());
                        }
                    }
                }));
            }
        }
        Ok(sockets)
    }

    /// Resident bytes per idle socket, and in total.
    async fn idle(&self, sockets: usize, threads: usize) -> anyhow::Result<(u64, u64)> {
        let threads = self.new_threads(threads.max(1)).await?;
        let before = self.settled_resident().await?;
        let per_thread = sockets.div_ceil(threads.len());
        let open = self.open(&threads, per_thread, Arc::new(|_| {})).await?;
        let after = self.settled_resident().await?;
        let grown = after.saturating_sub(before);
        let per_socket = grown / open.len() as u64;
        for socket in open {
            socket.abort();
        }
        Ok((per_socket, grown))
    }

    /// The resident size once it stops changing.
    async fn settled_resident(&self) -> anyhow::Result<u64> {
        let mut last = self.resident_bytes()?;
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let now = self.resident_bytes()?;
            if now.abs_diff(last) < 256 * 1024 {
                return Ok(now);
            }
            last = now;
        }
    }

    /// Frames delivered and the time from the first post to the last frame.
    async fn fanout(
        &self,
        threads: usize,
        per_thread: usize,
        messages: usize,
        ahead: usize,
    ) -> anyhow::Result<(u64, Duration)> {
        let threads = self.new_threads(threads).await?;
        let received = Arc::new(AtomicU64::new(0));
        let count = received.clone();
        let open = self
            .open(
                &threads,
                per_thread,
                Arc::new(move |_| {
                    count.fetch_add(1, Ordering::Relaxed);
                }),
            )
            .await?;
        let expected = (threads.len() * per_thread * messages) as u64;
        let round = (threads.len() * per_thread) as u64;
        let started = Instant::now();
        let mut pending = futures::stream::FuturesUnordered::new();
        for i in 0..messages {
            // As fast as the gateway delivers: a round (one message to every thread) goes out
            // once the frames of the round `ahead` before it have arrived, so that no socket
            // falls a whole queue behind and is closed as too slow.
            let delivered = (i.saturating_sub(ahead) as u64) * round;
            while received.load(Ordering::Relaxed) < delivered {
                if Instant::now() > started + Duration::from_secs(120) {
                    bail!(
                        "fan-out stalled: {} of {delivered} frames after 120 s",
                        received.load(Ordering::Relaxed)
                    );
                }
                // The posts in flight go on while the publisher waits.
                match pending.next().await {
                    Some(done) => done?,
                    None => tokio::time::sleep(Duration::from_millis(1)).await,
                }
            }
            for thread in &threads {
                let log = self.log.clone();
                let thread = *thread;
                pending
                    .push(async move { Bench::post(&log, thread, &format!("fan-out {i}")).await });
                if pending.len() >= 64 {
                    pending.next().await.transpose()?;
                }
            }
        }
        while let Some(done) = pending.next().await {
            done?;
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        while received.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let elapsed = started.elapsed();
        for socket in open {
            socket.abort();
        }
        Ok((received.load(Ordering::Relaxed), elapsed))
    }

    /// Seconds from each message's timestamp to its frame, sorted.
    async fn latency(
        &self,
        threads: usize,
        per_thread: usize,
        rate: u64,
        duration: Duration,
    ) -> anyhow::Result<Vec<f64>> {
        let threads = self.new_threads(threads).await?;
        let latencies = Arc::new(Mutex::new(Vec::new()));
        let record = latencies.clone();
        let open = self
            .open(
                &threads,
                per_thread,
                Arc::new(move |frame| {
                    let now = chrono::Utc::now();
                    let stamp = serde_json::from_str::<serde_json::Value>(frame)
                        .ok()
                        .and_then(|v| Timestamp::parse(v["timestamp"].as_str()?));
                    if let Some(stamp) = stamp {
                        let seconds = (now - stamp.as_datetime()).num_microseconds().unwrap_or(0)
                            as f64
                            / 1e6;
                        record
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(seconds);
                    }
                }),
            )
            .await?;
        let posts = rate * duration.as_secs().max(1);
        let mut ticker = tokio::time::interval(Duration::from_secs(1) / rate.max(1) as u32);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut posters = Vec::new();
        for i in 0..posts {
            ticker.tick().await;
            let log = self.log.clone();
            let thread = threads[i as usize % threads.len()];
            posters.push(tokio::spawn(async move {
                Bench::post(&log, thread, "latency").await
            }));
        }
        for poster in posters {
            poster.await??;
        }
        let expected = posts as usize * per_thread;
        let deadline = Instant::now() + Duration::from_secs(30);
        while latencies.lock().unwrap_or_else(|e| e.into_inner()).len() < expected
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for socket in open {
            socket.abort();
        }
        let mut latencies =
            std::mem::take(&mut *latencies.lock().unwrap_or_else(|e| e.into_inner()));
        if latencies.len() < expected {
            bail!("only {} of {expected} frames arrived", latencies.len());
        }
        latencies.sort_by(f64::total_cmp);
        Ok(latencies)
    }
}
