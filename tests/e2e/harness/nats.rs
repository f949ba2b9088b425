//! A real `nats-server` with JetStream for one test: a free port, its own store directory,
//! killed by its own pid and its directory removed on drop (as nats.rs's own harness does).
//! It can be killed, restarted on the same port with the same store, or paused (SIGSTOP) to
//! play a broker that hangs; its monitoring endpoint tells a test which subscriptions exist.

use super::process::{
    die_with_parent, drain, find_program, signal, stop_child, temp_dir, wait_for_line, Logs,
};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The configuration every test's server gets unless it asks for another: messages up to the
/// API's 2.5 MiB body limit must fit in one NATS message.
pub const DEFAULT_CONFIG: &str = "max_payload: 8MB\n";

/// The environment variable that names the nats-server binary the tests run (`scripts/test`
/// sets it to the current release it installs, then to the oldest supported one for the
/// compatibility subset).
pub const PROGRAM_VARIABLE: &str = "THREADLINE_NATS_SERVER";

/// The nats-server the tests run: [`PROGRAM_VARIABLE`] if set, else the one on PATH, else
/// the distribution's.
pub fn nats_server_program() -> PathBuf {
    if let Some(program) = std::env::var_os(PROGRAM_VARIABLE).filter(|p| !p.is_empty()) {
        let program = PathBuf::from(program);
        assert!(
            program.is_file(),
            "{PROGRAM_VARIABLE}={} is not a file",
            program.display()
        );
        return program;
    }
    find_program(
        "nats-server",
        &["/usr/sbin/nats-server", "/usr/bin/nats-server"],
    )
    .expect("nats-server is not installed (not on PATH, nor /usr/sbin/nats-server); scripts/test installs it")
}

pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    monitor_port: u16,
    dir: PathBuf,
    paused: bool,
    env: Vec<(String, String)>,
    pub logs: Logs,
}

impl NatsServer {
    /// Starts a server with `config` as its configuration file ([`DEFAULT_CONFIG`] for most
    /// tests; empty for nats-server's own defaults, such as its 1 MB `max_payload`) on a free
    /// port that it picks itself (`-p -1`).
    pub fn start_with_config(config: &str) -> NatsServer {
        NatsServer::start(config, &[], &[])
    }

    /// Starts a server with `config`, followed by an `include` of each file of `includes`
    /// (absolute paths: the files themselves are read, not copies), with `env` in its
    /// environment (where a configuration's `$VARIABLE`s are looked up).
    pub fn start(config: &str, includes: &[PathBuf], env: &[(String, String)]) -> NatsServer {
        let dir = temp_dir("nats");
        let mut text = config.to_owned();
        for file in includes {
            // nats-server resolves an include against the including file's directory.
            let up = "../".repeat(dir.components().count().saturating_sub(1));
            let target = file.strip_prefix("/").unwrap_or(file);
            text.push_str(&format!("\ninclude \"{up}{}\"\n", target.display()));
        }
        std::fs::write(dir.join("nats.conf"), text).expect("writing nats.conf");
        let mut server = NatsServer {
            child: None,
            port: 0,
            monitor_port: 0,
            dir,
            paused: false,
            env: env.to_vec(),
            logs: Logs::new("nats-server"),
        };
        server.launch();
        server
    }

    fn launch(&mut self) {
        let program = nats_server_program();
        let port = if self.port == 0 {
            "-1".to_owned()
        } else {
            self.port.to_string()
        };
        let mut cmd = Command::new(program);
        cmd.arg("-c")
            .arg(self.dir.join("nats.conf"))
            .args(["-a", "127.0.0.1", "-p", &port, "-m", "-1", "-js", "-sd"])
            .arg(self.dir.join("store"))
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        die_with_parent(&mut cmd);
        let mut child = cmd.spawn().expect("starting nats-server");
        let _ = drain(child.stdout.take().expect("stdout"), self.logs.clone());
        let lines = drain(child.stderr.take().expect("stderr"), self.logs.clone());
        let deadline = Instant::now() + START_TIMEOUT;
        let port_after = |prefix: &'static str| {
            move |line: &str| {
                let rest = line.split(prefix).nth(1)?;
                rest.trim().rsplit(':').next()?.parse::<u16>().ok()
            }
        };
        let found = wait_for_line(&lines, deadline, port_after("Starting http monitor on "))
            .and_then(|monitor| {
                wait_for_line(
                    &lines,
                    deadline,
                    port_after("Listening for client connections on "),
                )
                .map(|port| (port, monitor))
            })
            .and_then(|ports| {
                wait_for_line(&lines, deadline, |line| {
                    line.contains("Server is ready").then_some(())
                })
                .map(|()| ports)
            });
        match found {
            Ok((port, monitor_port)) => {
                self.port = port;
                self.monitor_port = monitor_port;
                self.child = Some(child);
                self.paused = false;
            }
            Err(why) => {
                stop_child(&mut child, libc::SIGKILL, Duration::ZERO);
                panic!(
                    "nats-server did not become ready: {why}\n{}",
                    self.logs.dump()
                );
            }
        }
    }

    /// Starts a JetStream cluster of `nodes` servers on loopback (client and route ports free),
    /// each with `config`, `includes` and `env` as [`start`](Self::start) takes them, a name
    /// (`n0`, `n1`, …, as stream infos name their leader), and each stored message written to
    /// disk before it is acknowledged (`sync_interval: always`, as the shipped configurations;
    /// nats-server 2.10 or newer). Each node can be killed and started again on its ports.
    pub fn start_cluster(
        nodes: usize,
        config: &str,
        includes: &[PathBuf],
        env: &[(String, String)],
    ) -> Vec<NatsServer> {
        let route_ports: Vec<u16> = (0..nodes)
            .map(|_| {
                std::net::TcpListener::bind("127.0.0.1:0")
                    .and_then(|l| l.local_addr())
                    .expect("a free port")
                    .port()
            })
            .collect();
        let routes: Vec<String> = route_ports
            .iter()
            .map(|port| format!("\"nats-route://127.0.0.1:{port}\""))
            .collect();
        (0..nodes)
            .map(|node| {
                let config = format!(
                    "{config}\nserver_name: n{node}\n\
                     jetstream {{\n  sync_interval: always\n}}\n\
                     cluster {{\n  name: threadline\n  listen: \"127.0.0.1:{}\"\n  routes: [{}]\n}}\n",
                    route_ports[node],
                    routes.join(", ")
                );
                NatsServer::start(&config, includes, env)
            })
            .collect()
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// SIGKILL by pid: the broker vanishes without a goodbye.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            if self.paused {
                signal(child.id(), libc::SIGCONT);
            }
            stop_child(&mut child, libc::SIGKILL, Duration::ZERO);
        }
    }

    /// Starts the server again on the same port with the same store.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "nats-server is still running");
        self.launch();
    }

    /// Kills the server and starts it again on the same port with the same store.
    pub fn restart(&mut self) {
        self.kill();
        self.start_again();
    }

    /// SIGSTOP: the server keeps its connections open but answers nothing, as a hung broker.
    pub fn pause(&mut self) {
        let child = self.child.as_ref().expect("nats-server is not running");
        signal(child.id(), libc::SIGSTOP);
        self.paused = true;
    }

    /// SIGCONT after [`pause`](Self::pause).
    pub fn resume(&mut self) {
        let child = self.child.as_ref().expect("nats-server is not running");
        signal(child.id(), libc::SIGCONT);
        self.paused = false;
    }

    /// How many JetStream API requests (stream and consumer info, message gets, ...) the
    /// server has answered so far, from its monitoring endpoint (`/jsz`).
    pub async fn jetstream_api_requests(&self) -> u64 {
        self.monitor("jsz").await["api"]["total"]
            .as_u64()
            .expect("/jsz reports api.total")
    }

    /// How many client subscriptions the server holds on exactly `subject`, from its
    /// monitoring endpoint (`/connz?subs=1`).
    pub async fn subscriptions_on(&self, subject: &str) -> usize {
        let body = self.monitor("connz?subs=1&limit=100000").await;
        body["connections"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|c| c["subscriptions_list"].as_array().into_iter().flatten())
            .filter(|s| s.as_str() == Some(subject))
            .count()
    }

    /// A page of the server's monitoring endpoint, as JSON.
    async fn monitor(&self, page: &str) -> serde_json::Value {
        let url = format!("http://127.0.0.1:{}/{page}", self.monitor_port);
        let bytes = match reqwest::get(&url).await.and_then(|r| r.error_for_status()) {
            Ok(response) => response.bytes().await,
            Err(e) => Err(e),
        }
        .unwrap_or_else(|e| panic!("asking nats-server's monitor {url}: {e}"));
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("nats-server's monitor answered no JSON: {e}"))
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
