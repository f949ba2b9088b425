//! A system started the way a deployment starts it: each role with its own settings (roles,
//! credentials, log format, TLS), one-shot commands such as `threadline migrate`, and
//! requests with headers of the test's choosing. Servers are the harness's own unless a test
//! brings its own (TLS, credentials; see `secure`).

pub mod secure;

use super::nats::NatsServer;
use super::postgres::Postgres;
use super::process::{Logs, Service};
use super::wait::within;
use serde_json::Value;
use std::net::SocketAddr;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// Settings as name-value pairs.
pub type Env = Vec<(String, String)>;

/// Turns `[("NAME", "value")]` into an [`Env`].
pub fn env(pairs: &[(&str, &str)]) -> Env {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The roles a test started, killed by pid on drop; their output printed if the test fails.
#[derive(Default)]
pub struct Roles {
    services: Vec<Service>,
}

impl Roles {
    /// Starts `threadline <role>` with exactly `settings` (plus a free port) and waits until
    /// it listens; its address.
    pub async fn spawn(&mut self, role: &str, settings: &Env) -> SocketAddr {
        let mut settings = settings.clone();
        settings.push(("LISTEN_ADDR".into(), "127.0.0.1:0".into()));
        let name = format!("{role}#{}", self.services.len() + 1);
        let mut service = Service::launch(&name, role, &settings);
        let addr = service.wait_listening().await;
        self.services.push(service);
        addr
    }

    /// The output of the role started as the `n`th (from 0).
    pub fn logs(&self, n: usize) -> &Logs {
        &self.services[n].logs
    }
}

impl Drop for Roles {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut out = String::from("\n===== output of the failing test's roles =====\n");
            for service in &self.services {
                out.push_str(&service.logs.dump());
            }
            eprintln!("{out}");
        }
    }
}

/// Creates threadline's streams with `settings`, as the api or the projector does when it
/// starts (here through `threadline dead-letters list`): a gateway only opens them, and
/// waits until they exist.
pub async fn create_streams(settings: &Env) {
    let output = run_threadline(&["dead-letters", "list"], settings).await;
    assert!(
        output.status.success(),
        "creating the streams failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Runs `threadline <args>` to its end with exactly `settings`; its output.
pub async fn run_threadline(args: &[&str], settings: &Env) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_threadline"));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .envs(settings.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null());
    let what = format!("threadline {}", args.join(" "));
    within(
        &what,
        COMMAND_TIMEOUT,
        tokio::task::spawn_blocking(move || cmd.output()),
    )
    .await
    .expect("joining the command's thread")
    .unwrap_or_else(|e| panic!("running {what}: {e}"))
}

/// The standard error of a finished command, as text.
pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A harness NATS server and PostgreSQL cluster of the test's own.
pub async fn servers() -> (NatsServer, Postgres) {
    (
        NatsServer::start_with_config(super::nats::DEFAULT_CONFIG),
        Postgres::start().await,
    )
}

/// An HTTP answer with its headers.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
}

impl Answer {
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("{} answered non-JSON ({e}): {}", self.status, self.text))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Sends `method path` to `addr` with `headers` and an optional JSON body.
pub async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> Answer {
    let client = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("an HTTP client");
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("an HTTP method");
    let mut request = client.request(method.clone(), format!("http://{addr}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(serde_json::to_vec(body).expect("JSON"));
    }
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {path} to {addr}: {e}"));
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap_or_default();
    Answer {
        status,
        headers,
        text,
    }
}

/// The JSON log lines a role wrote so far (lines that are not JSON are skipped).
pub fn json_lines(logs: &Logs) -> Vec<Value> {
    logs.dump()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(Value::is_object)
        .collect()
}
