//! The HTTP benchmark (`scripts/bench`): threadline's API against two baselines, measured in
//! one run by `wrk` in a separate process at a fixed concurrency.
//!
//! It starts everything itself: a nats-server of its own (or `--nats-url`, with streams of
//! this run's own names, deleted at the end), a fresh PostgreSQL database on the local server
//! (or `--database-url`), `threadline api` and `threadline projector` (release build), and the
//! two baseline servers (`tests/bench/baseline.rs`). It creates the threads it reads through
//! the API, then measures each row: a warm-up, then `--duration` of load, reported by
//! `tests/bench/http.lua` (requests, latency percentiles, errors).

mod servers;

use anyhow::{bail, Context};
use async_nats::jetstream;
use clap::Parser;
use futures::{StreamExt, TryStreamExt};
use serde::Deserialize;
use servers::{free_port, NatsServer, Process};
use sqlx::Connection;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use threadline_ports::settings::parse_duration;
use uuid::Uuid;

/// The wrk script: POST bodies, and one result line per run.
const WRK_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/bench/http.lua");

/// The targets: the API's throughput as a share of its baseline's.
const GET_TARGET: f64 = 0.9;
const POST_TARGET: f64 = 0.7;

/// Measures threadline's HTTP API against two baselines in one run, and prints one table.
///
/// Rows: POST /chat/thread/, POST /chat/message/, GET /chat/thread/:id/ of a 10-message and of
/// a 1,000-message thread (served by `threadline api`, with `threadline projector` beside it;
/// each GET row twice: by an api that keeps threads in memory, the default, and by one started
/// with `HOT_THREADS_BYTES=0`, which reads every thread from PostgreSQL),
/// and the baselines on the same stack and the same number of tokio workers: a handler that
/// does one JetStream publish-with-ack of the body, and one that does one PostgreSQL query
/// reading the thread and its messages from threadline's tables. Each row: `--warmup` of load,
/// then `--duration` measured by wrk with `--connections` open connections (closed loop:
/// each connection sends its next request when the previous one is answered). Ratios:
/// GET of the 10-message thread / query baseline (target 0.9), for both apis, POST /chat/message/ / publish
/// baseline (target 0.7). During the POST rows the projector is paused (SIGSTOP; it folds on
/// the same CPUs, and runs apart in production) and it catches up before the next row.
///
/// Needs wrk (Debian: apt-get install wrk), nats-server unless --nats-url, and PostgreSQL at
/// --postgres-url unless --database-url. scripts/bench builds what it runs and runs it.
#[derive(Debug, Parser)]
#[command(name = "scripts/bench")]
struct Args {
    /// Open connections of the load generator in every row (wrk -c).
    #[arg(long, default_value_t = 64)]
    connections: u32,
    /// How long each row is measured (whole seconds).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Load before each row's measurement, not counted (whole seconds; 0 for none).
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    warmup: Duration,
    /// Threads of the load generator (wrk -t).
    #[arg(long, default_value_t = 2)]
    wrk_threads: u32,
    /// The load generator.
    #[arg(long, default_value = "wrk")]
    wrk: PathBuf,
    /// A NATS server (JetStream) to use instead of starting one; the run's streams get names
    /// of their own (TLBENCH_<pid>...) and are deleted at the end.
    #[arg(long)]
    nats_url: Option<String>,
    /// Replicas of the run's streams (`STREAM_REPLICAS` of the api, the projector and the
    /// publish baseline): 3 with a 3-node cluster's seed list as --nats-url.
    #[arg(long, default_value_t = 1)]
    stream_replicas: u8,
    /// A database to use instead of a fresh one; it is migrated and keeps the rows written.
    #[arg(long)]
    database_url: Option<String>,
    /// The PostgreSQL server on which a fresh database (threadline_bench_<pid>) is created,
    /// and dropped at the end, unless --database-url.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    postgres_url: String,
    /// Where the release `threadline` binary is (default: the release build beside this
    /// program); its `examples/` directory holds `http-baseline`.
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Print the results as one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Threads of 5 messages written straight into the read model before the reads, so that
    /// the tables and the planner's statistics are those of a live read model (with a
    /// handful of threads, PostgreSQL scans the whole table instead of the index, for the
    /// API and the baseline alike). They are not in the event stream: no row reads them.
    #[arg(long, default_value_t = 20_000)]
    other_threads: u32,
    /// Measure only the reads (the GET rows and the query baselines): a shorter run for
    /// profiling the read path.
    #[arg(long)]
    reads_only: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.duration.as_secs() == 0 || args.connections < args.wrk_threads {
        bail!("--duration must be at least 1s and --connections at least --wrk-threads");
    }
    check_wrk(&args.wrk)?;
    let bin_dir = match &args.bin_dir {
        Some(dir) => dir.clone(),
        None => std::env::current_exe()?
            .parent()
            .and_then(Path::parent)
            .context("no directory above this program's")?
            .to_path_buf(),
    };
    let run = std::process::id();
    let database = Database::prepare(&args, run).await?;
    let outcome = tokio::select! {
        outcome = bench(&args, &bin_dir, &database.url, run) => outcome,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    // The servers have stopped (dropped with the benchmark's future): clean up behind them.
    if let Err(e) = database.drop().await {
        eprintln!("could not drop the benchmark's database: {e:#}");
    }
    let report = outcome?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report.json(&args))?);
    } else {
        report.print(&args);
    }
    Ok(())
}

fn check_wrk(wrk: &Path) -> anyhow::Result<()> {
    match Command::new(wrk).arg("--version").output() {
        Ok(_) => Ok(()),
        Err(e) => bail!(
            "cannot run the load generator {}: {e}\n\
             Install wrk: `sudo apt-get install wrk` (Debian, Ubuntu), `brew install wrk` \
             (macOS), or build it from https://github.com/wg/wrk and pass --wrk PATH.",
            wrk.display()
        ),
    }
}

/// The run's database: a fresh one, dropped at the end, or the one given.
struct Database {
    url: String,
    /// The server's URL and the name to drop, for a fresh database.
    fresh: Option<(String, String)>,
}

impl Database {
    async fn prepare(args: &Args, run: u32) -> anyhow::Result<Database> {
        if let Some(url) = &args.database_url {
            return Ok(Database {
                url: url.clone(),
                fresh: None,
            });
        }
        let name = format!("threadline_bench_{run}");
        let mut server = sqlx::PgConnection::connect(&args.postgres_url)
            .await
            .with_context(|| {
                format!(
                    "connecting to PostgreSQL at {} (give --postgres-url or --database-url)",
                    args.postgres_url
                )
            })?;
        sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut server)
            .await?;
        sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
            .execute(&mut server)
            .await
            .with_context(|| format!("creating the database {name}"))?;
        let mut url = reqwest::Url::parse(&args.postgres_url)?;
        url.set_path(&name);
        Ok(Database {
            url: url.to_string(),
            fresh: Some((args.postgres_url.clone(), name)),
        })
    }

    async fn drop(self) -> anyhow::Result<()> {
        if let Some((server, name)) = self.fresh {
            let mut server = sqlx::PgConnection::connect(&server).await?;
            sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&mut server)
                .await?;
        }
        Ok(())
    }
}

/// The names of one run's streams, subjects and consumer, for the API and for the publish
/// baseline, so that a shared NATS server keeps them apart from anything else.
struct Names {
    run: u32,
}

impl Names {
    fn stream(&self) -> String {
        format!("TLBENCH_{}", self.run)
    }

    fn consumer(&self) -> String {
        format!("tlbench-{}-projector", self.run)
    }

    /// Settings of `threadline api` and `threadline projector`.
    fn api(&self) -> Vec<(String, String)> {
        let stream = self.stream();
        vec![
            ("STREAM_NAME".into(), stream.clone()),
            ("SUBJECT_PREFIX".into(), format!("tlbench.{}", self.run)),
            (
                "DEAD_LETTER_STREAM".into(),
                format!("{stream}_DEAD_LETTERS"),
            ),
            ("IDEMPOTENCY_BUCKET".into(), format!("{stream}_IDEMPOTENCY")),
            ("PROJECTOR_CONSUMER".into(), self.consumer()),
        ]
    }

    /// Settings of the publish baseline: a stream set up as the API's, under other names.
    fn baseline(&self) -> Vec<(String, String)> {
        let stream = format!("{}_BASELINE", self.stream());
        vec![
            ("STREAM_NAME".into(), stream.clone()),
            (
                "SUBJECT_PREFIX".into(),
                format!("tlbench.{}.baseline", self.run),
            ),
            (
                "DEAD_LETTER_STREAM".into(),
                format!("{stream}_DEAD_LETTERS"),
            ),
        ]
    }

    /// Every stream the run creates (the idempotency bucket is the stream KV_<bucket>).
    fn streams(&self) -> Vec<String> {
        let stream = self.stream();
        vec![
            format!("{stream}_BASELINE_DEAD_LETTERS"),
            format!("{stream}_BASELINE"),
            format!("KV_{stream}_IDEMPOTENCY"),
            format!("{stream}_DEAD_LETTERS"),
            stream,
        ]
    }
}

/// Deletes the run's streams from a NATS server it did not start.
struct SharedNats {
    jetstream: jetstream::Context,
    streams: Vec<String>,
}

impl Drop for SharedNats {
    fn drop(&mut self) {
        let jetstream = self.jetstream.clone();
        let streams = std::mem::take(&mut self.streams);
        // Dropped inside the runtime: finish the deletes on a thread of their own.
        let handle = tokio::runtime::Handle::current();
        let _ = std::thread::spawn(move || {
            handle.block_on(async {
                for stream in streams {
                    let _ = jetstream.delete_stream(&stream).await;
                }
            })
        })
        .join();
    }
}

/// One row's figures, as the wrk script prints them.
#[derive(Debug, Clone, Deserialize)]
struct Measured {
    requests: u64,
    duration_us: u64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    max_us: f64,
    non_2xx_3xx: u64,
    connect_errors: u64,
    read_errors: u64,
    write_errors: u64,
    timeouts: u64,
}

impl Measured {
    fn per_second(&self) -> f64 {
        self.requests as f64 / (self.duration_us.max(1) as f64 / 1e6)
    }

    fn socket_errors(&self) -> u64 {
        self.connect_errors + self.read_errors + self.write_errors + self.timeouts
    }
}

struct Report {
    started: chrono::DateTime<chrono::Utc>,
    version: String,
    workers: usize,
    rows: Vec<(&'static str, Measured)>,
}

const POST_THREAD: &str = "POST /chat/thread/";
const POST_MESSAGE: &str = "POST /chat/message/";
const GET_10: &str = "GET /chat/thread/:id/ (10 messages)";
const GET_1000: &str = "GET /chat/thread/:id/ (1,000 messages)";
const GET_10_UNKEPT: &str = "GET (10 messages), HOT_THREADS_BYTES=0";
const GET_1000_UNKEPT: &str = "GET (1,000 messages), HOT_THREADS_BYTES=0";
const PUBLISH: &str = "baseline: one JetStream publish-with-ack";
const QUERY_10: &str = "baseline: one PostgreSQL query (10 messages)";
const QUERY_1000: &str = "baseline: one PostgreSQL query (1,000 messages)";
const PRINTED: [&str; 9] = [
    POST_THREAD,
    POST_MESSAGE,
    GET_10,
    GET_10_UNKEPT,
    GET_1000,
    GET_1000_UNKEPT,
    PUBLISH,
    QUERY_10,
    QUERY_1000,
];

impl Report {
    fn row(&self, name: &str) -> Option<&Measured> {
        self.rows.iter().find(|(n, _)| *n == name).map(|(_, m)| m)
    }

    /// (what, measured ratio, target)
    fn ratios(&self) -> Vec<(&'static str, f64, f64)> {
        let ratio = |api: &str, baseline: &str| match (self.row(api), self.row(baseline)) {
            (Some(a), Some(b)) => a.per_second() / b.per_second().max(f64::MIN_POSITIVE),
            _ => f64::NAN,
        };
        vec![
            (
                "GET 10-message thread / query baseline",
                ratio(GET_10, QUERY_10),
                GET_TARGET,
            ),
            (
                "the same, HOT_THREADS_BYTES=0 / query baseline",
                ratio(GET_10_UNKEPT, QUERY_10),
                GET_TARGET,
            ),
            (
                "POST /chat/message/ / publish baseline",
                ratio(POST_MESSAGE, PUBLISH),
                POST_TARGET,
            ),
        ]
    }

    fn print(&self, args: &Args) {
        println!(
            "threadline HTTP benchmark, {} ({}); wrk: {} connections, {} threads, {} s per row after {} s of warm-up; {} tokio workers in every server (tokio's default, one per CPU)",
            self.started.format("%Y-%m-%d %H:%M UTC"),
            self.version,
            args.connections,
            args.wrk_threads,
            args.duration.as_secs(),
            args.warmup.as_secs(),
            self.workers,
        );
        println!();
        println!(
            "| {:<48} | {:>9} | {:>9} | {:>9} | {:>9} | {:>7} | {:>6} |",
            "row", "req/s", "p50 ms", "p99 ms", "p99.9 ms", "non-2xx", "socket"
        );
        println!(
            "| {:-<48} | {:->9} | {:->9} | {:->9} | {:->9} | {:->7} | {:->6} |",
            "", "", "", "", "", "", ""
        );
        for name in PRINTED {
            if let Some(m) = self.row(name) {
                println!(
                    "| {:<48} | {:>9.0} | {:>9.2} | {:>9.2} | {:>9.2} | {:>7} | {:>6} |",
                    name,
                    m.per_second(),
                    m.p50_us / 1e3,
                    m.p99_us / 1e3,
                    m.p999_us / 1e3,
                    m.non_2xx_3xx,
                    m.socket_errors()
                );
            }
        }
        println!();
        println!(
            "| {:<48} | {:>9} | {:>9} |        |",
            "ratio", "measured", "target"
        );
        println!("| {:-<48} | {:->9} | {:->9} | ------ |", "", "", "");
        for (what, ratio, target) in self.ratios() {
            println!(
                "| {what:<48} | {ratio:>9.2} | {:>9} | {:<6} |",
                format!(">= {target}"),
                if ratio >= target { "met" } else { "missed" }
            );
        }
        println!();
        println!("non-2xx: responses with a status of 400 or more (as wrk counts them); socket: connect, read and write errors and timeouts (10 s).");
    }

    fn json(&self, args: &Args) -> serde_json::Value {
        let rows: Vec<_> = PRINTED
            .iter()
            .filter_map(|name| Some((name, self.row(name)?)))
            .map(|(name, m)| {
                serde_json::json!({
                    "row": name,
                    "requests": m.requests,
                    "seconds": m.duration_us as f64 / 1e6,
                    "requests_per_second": m.per_second(),
                    "p50_ms": m.p50_us / 1e3,
                    "p99_ms": m.p99_us / 1e3,
                    "p99_9_ms": m.p999_us / 1e3,
                    "max_ms": m.max_us / 1e3,
                    "non_2xx": m.non_2xx_3xx,
                    "socket_errors": m.socket_errors(),
                })
            })
            .collect();
        let ratios: Vec<_> = self
            .ratios()
            .into_iter()
            .map(|(what, ratio, target)| {
                serde_json::json!({ "ratio": what, "measured": ratio, "target": target, "met": ratio >= target })
            })
            .collect();
        serde_json::json!({
            "started": self.started.to_rfc3339(),
            "threadline": self.version,
            "connections": args.connections,
            "wrk_threads": args.wrk_threads,
            "seconds_per_row": args.duration.as_secs(),
            "warmup_seconds": args.warmup.as_secs(),
            "tokio_workers": self.workers,
            "rows": rows,
            "ratios": ratios,
        })
    }
}

/// The servers under test, and what the rows need to talk to them.
struct Servers {
    api: String,
    /// A second `threadline api` that keeps no thread in memory: GETs from the read model.
    api_unkept: String,
    publish: String,
    query: String,
    projector: Process,
    api_process: Process,
    baselines: Vec<Process>,
    jetstream: jetstream::Context,
    names: Names,
    _shared_nats: Option<SharedNats>,
    _nats: Option<NatsServer>,
}

async fn bench(
    args: &Args,
    bin_dir: &Path,
    database_url: &str,
    run: u32,
) -> anyhow::Result<Report> {
    let started = chrono::Utc::now();
    let threadline = bin_dir.join("threadline");
    let output = |command: &mut Command| {
        command
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let mut version = output(Command::new(&threadline).arg("--version"))
        .with_context(|| format!("running {}", threadline.display()))?;
    let commit = output(Command::new("git").args([
        "-C",
        env!("CARGO_MANIFEST_DIR"),
        "describe",
        "--always",
        "--dirty",
    ]));
    if let Some(commit) = commit.ok().filter(|c| !c.is_empty()) {
        version = format!("{version}, commit {commit}");
    }
    let mut servers = Servers::start(args, bin_dir, database_url, run).await?;
    let http = reqwest::Client::new();

    eprintln!("creating the threads to read: 10 and 1,000 messages, through the API");
    let short = create_thread(&http, &servers.api).await?;
    let long = create_thread(&http, &servers.api).await?;
    post_messages(&http, &servers.api, short, 10).await?;
    post_messages(&http, &servers.api, long, 1000).await?;
    let target = create_thread(&http, &servers.api).await?;
    fill_read_model(database_url, args.other_threads).await?;

    let (api, publish, query) = (
        servers.api.clone(),
        servers.publish.clone(),
        servers.query.clone(),
    );
    let mut rows = Vec::new();
    let unkept = servers.api_unkept.clone();
    for (name, base, thread, messages) in [
        (GET_10, &api, short, 10),
        (GET_10_UNKEPT, &unkept, short, 10),
        (QUERY_10, &query, short, 10),
        (GET_1000, &api, long, 1000),
        (GET_1000_UNKEPT, &unkept, long, 1000),
        (QUERY_1000, &query, long, 1000),
    ] {
        let url = format!("{base}/chat/thread/{thread}/");
        let shown = get_messages(&http, &url).await?;
        if shown != messages {
            bail!("{url} shows {shown} messages, not {messages}");
        }
        rows.push((name, measure(args, name, &url, None).await?));
        servers.check_running()?;
    }
    if args.reads_only {
        return Ok(Report {
            started,
            version,
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            rows,
        });
    }

    let message = serde_json::json!({
        "user": {"name": "bench"},
        "thread": target,
        "body": "A message of the benchmark, about as long as a visitor's question.",
        "send_by_user": true,
    })
    .to_string();
    let thread =
        serde_json::json!({"user": {"name": "bench", "email": "bench@example.com"}}).to_string();
    for (name, base, path, body) in [
        (POST_MESSAGE, &api, "/chat/message/", &message),
        (PUBLISH, &publish, "/chat/message/", &message),
        (POST_THREAD, &api, "/chat/thread/", &thread),
    ] {
        let url = format!("{base}{path}");
        post(&http, &url, body).await?;
        let to_api = base == &api;
        if to_api {
            signal(&servers.projector, libc::SIGSTOP);
        }
        let measured = measure(args, name, &url, Some(body)).await;
        if to_api {
            signal(&servers.projector, libc::SIGCONT);
            servers.projector_caught_up().await?;
        }
        rows.push((name, measured?));
        servers.check_running()?;
    }
    Ok(Report {
        started,
        version,
        workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
        rows,
    })
}

impl Servers {
    async fn start(
        args: &Args,
        bin_dir: &Path,
        database_url: &str,
        run: u32,
    ) -> anyhow::Result<Servers> {
        let names = Names { run };
        let (nats_url, nats) = match &args.nats_url {
            Some(url) => (url.clone(), None),
            None => {
                let nats = NatsServer::start().await?;
                (nats.url.clone(), Some(nats))
            }
        };
        // A seed list, as NATS_URL takes it.
        let seeds: Vec<&str> = nats_url.split(',').map(str::trim).collect();
        let client = async_nats::connect(seeds)
            .await
            .with_context(|| format!("connecting to NATS at {nats_url}"))?;
        let jetstream = jetstream::new(client);
        let shared_nats = args.nats_url.is_some().then(|| SharedNats {
            jetstream: jetstream.clone(),
            streams: names.streams(),
        });
        let logs = bin_dir.join("http-bench-logs");
        std::fs::create_dir_all(&logs)?;
        let common = [
            ("NATS_URL".to_owned(), nats_url.clone()),
            ("DATABASE_URL".to_owned(), database_url.to_owned()),
            (
                "STREAM_REPLICAS".to_owned(),
                args.stream_replicas.to_string(),
            ),
        ];
        let threadline = bin_dir.join("threadline");
        let baseline = bin_dir.join("examples").join("http-baseline");

        let start = |name: &str, program: &Path, args: &[&str], env: Vec<(String, String)>| {
            let port = free_port()?;
            let log = File::create(logs.join(format!("{name}.log")))?;
            let process = Process::spawn(
                name,
                Command::new(program)
                    .args(args)
                    .env_clear()
                    .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                    .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
                    .envs(common.iter().cloned().chain(env))
                    .stdout(log.try_clone()?)
                    .stderr(log),
            )?;
            anyhow::Ok((format!("http://127.0.0.1:{port}"), process))
        };
        let (api, mut api_process) = start("api", &threadline, &["api"], names.api())?;
        let unkept_env = names
            .api()
            .into_iter()
            .chain([("HOT_THREADS_BYTES".to_owned(), "0".to_owned())])
            .collect();
        let (api_unkept, mut api_unkept_process) =
            start("api-unkept", &threadline, &["api"], unkept_env)?;
        let (projector_url, mut projector) =
            start("projector", &threadline, &["projector"], names.api())?;
        let (publish, mut publish_process) = start(
            "publish-baseline",
            &baseline,
            &["publish"],
            names.baseline(),
        )?;
        let (query, mut query_process) = start(
            "query-baseline",
            &baseline,
            &["query"],
            vec![("MIGRATE_ON_START".into(), "false".into())],
        )?;
        let http = reqwest::Client::new();
        for (url, process) in [
            (&api, &mut api_process),
            (&api_unkept, &mut api_unkept_process),
            (&projector_url, &mut projector),
            (&publish, &mut publish_process),
        ] {
            servers::wait_ready(&http, url, process)
                .await
                .with_context(|| format!("its log: {}", logs.display()))?;
        }
        // The query baseline reads the tables that the api and the projector migrated.
        servers::wait_ready(&http, &query, &mut query_process)
            .await
            .with_context(|| format!("its log: {}", logs.display()))?;
        eprintln!("servers ready; their logs are in {}", logs.display());
        Ok(Servers {
            api,
            api_unkept,
            publish,
            query,
            projector,
            api_process,
            baselines: vec![publish_process, query_process, api_unkept_process],
            jetstream,
            names,
            _shared_nats: shared_nats,
            _nats: nats,
        })
    }

    fn check_running(&mut self) -> anyhow::Result<()> {
        self.api_process.check_running()?;
        self.projector.check_running()?;
        for baseline in &mut self.baselines {
            baseline.check_running()?;
        }
        Ok(())
    }

    /// Waits until the projector has applied every event in the stream.
    async fn projector_caught_up(&self) -> anyhow::Result<()> {
        let stream = self.jetstream.get_stream(self.names.stream()).await?;
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let info = stream.consumer_info(self.names.consumer()).await?;
            if info.num_pending == 0 && info.num_ack_pending == 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the projector did not catch up within 5 minutes ({} events left)",
                    info.num_pending
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Sends `signal` to one of the benchmark's own processes.
fn signal(process: &Process, signal: libc::c_int) {
    // SAFETY: kill(2) with the pid of a child that has not been reaped.
    unsafe {
        libc::kill(process.id() as libc::pid_t, signal);
    }
}

/// A warm-up, then the measured run.
async fn measure(
    args: &Args,
    name: &str,
    url: &str,
    body: Option<&str>,
) -> anyhow::Result<Measured> {
    eprintln!("{name}: {url}");
    if !args.warmup.is_zero() {
        wrk(args, url, body, args.warmup).await?;
    }
    wrk(args, url, body, args.duration).await
}

async fn wrk(
    args: &Args,
    url: &str,
    body: Option<&str>,
    duration: Duration,
) -> anyhow::Result<Measured> {
    let mut command = tokio::process::Command::new(&args.wrk);
    command
        .arg(format!("--threads={}", args.wrk_threads))
        .arg(format!("--connections={}", args.connections))
        .arg(format!("--duration={}s", duration.as_secs().max(1)))
        .arg("--timeout=10s")
        .arg(format!("--script={WRK_SCRIPT}"))
        .arg(url)
        .kill_on_drop(true);
    if let Some(body) = body {
        command.args(["--", "POST", body]);
    }
    let output = command.output().await.context("running wrk")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let result = stdout
        .lines()
        .find_map(|line| line.strip_prefix("bench-result "));
    match result {
        Some(json) if output.status.success() => {
            serde_json::from_str(json).with_context(|| format!("reading wrk's result {json}"))
        }
        _ => bail!(
            "wrk failed ({}):\n{stdout}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}

async fn post(http: &reqwest::Client, url: &str, body: &str) -> anyhow::Result<serde_json::Value> {
    let response = http
        .post(url)
        .header("Content-Type", "application/json")
        .body(body.to_owned())
        .send()
        .await?;
    let status = response.status();
    let bytes = response.bytes().await?;
    if status != reqwest::StatusCode::CREATED {
        bail!(
            "POST {url} answered {status}: {}",
            String::from_utf8_lossy(&bytes)
        );
    }
    Ok(serde_json::from_slice(&bytes)?)
}

/// Writes `threads` threads of 5 messages each straight into the read model, then has
/// PostgreSQL gather the tables' statistics (as autovacuum would).
async fn fill_read_model(database_url: &str, threads: u32) -> anyhow::Result<()> {
    if threads == 0 {
        return Ok(());
    }
    eprintln!("writing {threads} other threads of 5 messages into the read model");
    let mut db = sqlx::PgConnection::connect(database_url).await?;
    sqlx::raw_sql(&format!(
        r#"CREATE TEMP TABLE other AS
             SELECT gen_random_uuid() AS id, '{{"name":"visitor ' || g || '"}}' AS user_json,
                    now() AS created_at, 1000000000 + g * 10 AS stream_seq
             FROM generate_series(1, {threads}) g;
           INSERT INTO threads (id, user_json, created_at, stream_seq)
             SELECT id, user_json, created_at, stream_seq FROM other;
           INSERT INTO messages (id, thread_id, user_json, body, send_by_user, created_at,
                                 stream_seq, json)
             SELECT m.id, m.thread_id, m.user_json, 'A question of another visitor, number ' || n,
                    n % 2 = 1, m.created_at, m.stream_seq + n,
                    '{{"id":"' || m.id || '","user":' || m.user_json || ',"timestamp":"' ||
                    to_char(m.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') ||
                    '","body":"A question of another visitor, number ' || n ||
                    '","send_by_user":' || (n % 2 = 1) || '}}'
             FROM (SELECT gen_random_uuid() AS id, o.id AS thread_id, o.user_json, o.created_at,
                          o.stream_seq, n
                   FROM other o, generate_series(1, 5) n) m;
           ANALYZE threads;
           ANALYZE messages;"#
    ))
    .execute(&mut db)
    .await
    .context("writing other threads into the read model")?;
    Ok(())
}

async fn create_thread(http: &reqwest::Client, api: &str) -> anyhow::Result<Uuid> {
    let thread = post(
        http,
        &format!("{api}/chat/thread/"),
        r#"{"user": {"name": "bench"}}"#,
    )
    .await?;
    thread["id"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .with_context(|| format!("POST /chat/thread/ answered no id: {thread}"))
}

async fn post_messages(
    http: &reqwest::Client,
    api: &str,
    thread: Uuid,
    count: usize,
) -> anyhow::Result<()> {
    let url = format!("{api}/chat/message/");
    futures::stream::iter(0..count)
        .map(|i| {
            let body = serde_json::json!({
                "user": {"name": "bench"},
                "thread": thread,
                "body": format!("Message {i} of the benchmark's thread."),
                "send_by_user": i % 2 == 0,
            })
            .to_string();
            let url = &url;
            async move { post(http, url, &body).await }
        })
        .buffer_unordered(16)
        .try_for_each(|_| async { Ok(()) })
        .await
}

/// How many messages a GET of `url` shows.
async fn get_messages(http: &reqwest::Client, url: &str) -> anyhow::Result<usize> {
    let response = http.get(url).send().await?;
    let status = response.status();
    let bytes = response.bytes().await?;
    if status != reqwest::StatusCode::OK {
        bail!("GET {url} answered {status}");
    }
    let thread: serde_json::Value = serde_json::from_slice(&bytes)?;
    thread["messages"]
        .as_array()
        .map(Vec::len)
        .with_context(|| format!("GET {url} answered no messages"))
}
