//! The shipped reverse proxy, `deploy/proxy/nginx.conf`, run by the distribution's nginx in
//! front of a test's roles; visitors that connect from an address of their own (anything in
//! 127/8, which Linux routes to the loopback interface); and a tap between nginx and an
//! upstream that records the forwarding header nginx sends.

use super::process::{die_with_parent, drain, find_program, stop_child, temp_dir, Logs};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Error;
use tokio_tungstenite::WebSocketStream;

/// The configuration docker-compose.yml gives its nginx.
pub const SHIPPED_CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/proxy/nginx.conf");

const START_TIMEOUT: Duration = Duration::from_secs(20);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// One nginx process serving the shipped configuration on a free port of 127.0.0.1, stopped
/// by its pid and its directory removed on drop; its error log and configuration are printed
/// if the test is failing.
pub struct Nginx {
    child: Option<Child>,
    addr: SocketAddr,
    dir: PathBuf,
    config: String,
    logs: Logs,
}

impl Nginx {
    /// Starts nginx with [`SHIPPED_CONFIG`], each of its upstreams (`api`, `gateway`) being
    /// the addresses given for it, and waits until it answers its own `/healthz`.
    pub async fn start(upstreams: &[(&str, Vec<SocketAddr>)]) -> Nginx {
        let shipped = std::fs::read_to_string(SHIPPED_CONFIG)
            .unwrap_or_else(|e| panic!("reading {SHIPPED_CONFIG}: {e}"));
        let program = find_program("nginx", &["/usr/sbin/nginx"]).expect(
            "nginx is not installed (not on PATH, nor /usr/sbin/nginx): scripts/test installs it",
        );
        let dir = temp_dir("nginx");
        // A free port is known only by binding it; another process may take it before nginx
        // does, so a refused bind is tried again on another.
        for _ in 0..5 {
            let port = StdListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("finding a free port")
                .port();
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            let config = rewrite(&shipped, addr, upstreams, &dir);
            let file = dir.join("nginx.conf");
            std::fs::write(&file, &config).expect("writing nginx.conf");
            let logs = Logs::new("nginx");
            let mut cmd = Command::new(&program);
            cmd.arg("-p")
                .arg(&dir)
                .arg("-c")
                .arg(&file)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            die_with_parent(&mut cmd);
            let mut child = cmd.spawn().expect("starting nginx");
            let _ = drain(child.stdout.take().expect("stdout"), logs.clone());
            let _ = drain(child.stderr.take().expect("stderr"), logs.clone());
            let mut nginx = Nginx {
                child: None,
                addr,
                dir: dir.clone(),
                config,
                logs,
            };
            let deadline = Instant::now() + START_TIMEOUT;
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    let taken = "Address already in use";
                    if nginx.error_log().contains(taken) || nginx.logs.contains(taken) {
                        break; // another port
                    }
                    panic!("nginx exited with {status}\n{}", nginx.report());
                }
                if healthy(addr).await {
                    nginx.child = Some(child);
                    return nginx;
                }
                if Instant::now() >= deadline {
                    stop_child(&mut child, libc::SIGKILL, Duration::ZERO);
                    panic!(
                        "nginx did not answer /healthz within {START_TIMEOUT:?}\n{}",
                        nginx.report()
                    );
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        panic!("nginx found no free port in 5 tries");
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its error log so far.
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }

    fn report(&self) -> String {
        format!(
            "----- nginx.conf as run -----\n{}\n----- nginx error.log -----\n{}\n{}",
            self.config,
            self.error_log(),
            self.logs.dump()
        )
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGTERM: nginx's fast shutdown.
            stop_child(&mut child, libc::SIGTERM, Duration::from_secs(5));
        }
        if std::thread::panicking() {
            eprintln!("{}", self.report());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The shipped configuration as a test runs it. Only what cannot stay is rewritten, every
/// other line is kept as it is (a directive the rewrite expects and does not find fails the
/// test, so the two cannot drift apart silently):
/// - `daemon off;` and `master_process off;` are added at the top: nginx stays in the
///   foreground as one process, the harness's child, which dies with the test binary (a
///   worker would outlive a killed master). The `worker_processes` line is kept; nginx
///   ignores it without a master. There is no `user` line to change: nginx runs as the
///   test's user.
/// - `pid`, `access_log`, `error_log` (its level kept), `client_body_temp_path` and
///   `proxy_temp_path` point into the test's directory; `fastcgi_temp_path`,
///   `uwsgi_temp_path` and `scgi_temp_path` are added there beside them, because nginx creates
///   those directories at start and their compiled-in places (/var/lib/nginx) belong to root.
/// - `listen 8000;` becomes `listen <listen>;` (a free port of 127.0.0.1);
/// - the `server` lines of each `upstream` block become one `server <address>;` line per
///   address `upstreams` gives for it.
pub fn rewrite(
    shipped: &str,
    listen: SocketAddr,
    upstreams: &[(&str, Vec<SocketAddr>)],
    dir: &Path,
) -> String {
    let at = |name: &str| dir.join(name).display().to_string();
    let mut out = vec![
        "# deploy/proxy/nginx.conf, rewritten by tests/e2e/harness/nginx.rs".to_owned(),
        "daemon off;".to_owned(),
        "master_process off;".to_owned(),
    ];
    let mut rewritten: BTreeMap<&str, usize> = BTreeMap::new();
    let mut found_upstreams = Vec::new();
    let mut upstream: Option<(String, bool)> = None; // inside `upstream NAME {`; servers written
    for line in shipped.lines() {
        let code = line.split('#').next().unwrap_or_default().trim();
        let indent = &line[..line.len() - line.trim_start().len()];
        let mut words = code.trim_end_matches(';').split_whitespace();
        let directive = words.next().unwrap_or_default();
        if directive == "upstream" && code.ends_with('{') {
            let name = words.next().unwrap_or_default().to_owned();
            found_upstreams.push(name.clone());
            upstream = Some((name, false));
            out.push(line.to_owned());
            continue;
        }
        if let Some((name, written)) = upstream.as_mut() {
            if code == "}" {
                assert!(
                    *written,
                    "upstream {name} of {SHIPPED_CONFIG} has no server"
                );
                upstream = None;
            } else if directive == "server" {
                if !*written {
                    let addresses = upstreams
                        .iter()
                        .find(|(n, _)| n == name)
                        .map(|(_, a)| a)
                        .unwrap_or_else(|| panic!("no addresses given for upstream {name}"));
                    assert!(!addresses.is_empty(), "no addresses for upstream {name}");
                    for address in addresses {
                        out.push(format!("{indent}server {address};"));
                    }
                    *written = true;
                }
                continue;
            }
            out.push(line.to_owned());
            continue;
        }
        let replacement = match directive {
            "listen" => Some(format!("listen {listen};")),
            "pid" => Some(format!("pid {};", at("nginx.pid"))),
            "access_log" => Some(format!("access_log {};", at("access.log"))),
            "error_log" => {
                let level = words.nth(1).map(|l| format!(" {l}")).unwrap_or_default();
                Some(format!("error_log {}{level};", at("error.log")))
            }
            "client_body_temp_path" => Some(format!("client_body_temp_path {};", at("body"))),
            "proxy_temp_path" => Some(format!(
                "proxy_temp_path {};\n{indent}fastcgi_temp_path {};\n{indent}uwsgi_temp_path {};\n{indent}scgi_temp_path {};",
                at("proxy"),
                at("fastcgi"),
                at("uwsgi"),
                at("scgi")
            )),
            _ => None,
        };
        match replacement {
            Some(new) => {
                *rewritten.entry(directive).or_default() += 1;
                out.push(format!("{indent}{new}"));
            }
            None => out.push(line.to_owned()),
        }
    }
    for directive in [
        "listen",
        "pid",
        "access_log",
        "error_log",
        "client_body_temp_path",
        "proxy_temp_path",
    ] {
        assert_eq!(
            rewritten.get(directive).copied().unwrap_or(0),
            1,
            "{SHIPPED_CONFIG} was expected to hold one `{directive}` line outside upstream blocks"
        );
    }
    let mut given: Vec<_> = upstreams.iter().map(|(n, _)| (*n).to_owned()).collect();
    given.sort();
    found_upstreams.sort();
    assert_eq!(found_upstreams, given, "the upstreams of {SHIPPED_CONFIG}");
    out.join("\n") + "\n"
}

/// Whether nginx at `addr` answers its own `GET /healthz` with 200 `ok`.
async fn healthy(addr: SocketAddr) -> bool {
    let attempt = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        stream
            .write_all(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await
            .ok()?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.ok()?;
        let answer = String::from_utf8_lossy(&answer);
        Some(answer.starts_with("HTTP/1.1 200") && answer.ends_with("\r\n\r\nok\n"))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), attempt).await,
        Ok(Some(true))
    )
}

/// The `n`th visitor address from 127.0.0.2 on: 0 → 127.0.0.2, 300 → 127.0.1.46.
pub fn visitor(n: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 0, 0, 2)) + n))
}

/// A TCP connection to `to` from the address `from` (any port).
pub async fn connect_from(from: IpAddr, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("a socket");
    socket
        .bind(SocketAddr::new(from, 0))
        .unwrap_or_else(|e| panic!("binding {from}: {e}"));
    socket
        .connect(to)
        .await
        .unwrap_or_else(|e| panic!("connecting from {from} to {to}: {e}"))
}

/// Opens a websocket on `path` of `to` from the address `from`, with extra request headers;
/// the refusal's status and body otherwise.
pub async fn websocket_from(
    from: IpAddr,
    to: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<WebSocketStream<TcpStream>, (u16, String)> {
    let mut request = format!("ws://{to}{path}")
        .into_client_request()
        .expect("a websocket URL");
    for (name, value) in headers {
        request.headers_mut().insert(
            http::HeaderName::from_bytes(name.as_bytes()).expect("a header name"),
            value.parse().expect("a header value"),
        );
    }
    let upgrade = async {
        let stream = connect_from(from, to).await;
        tokio_tungstenite::client_async(request, stream).await
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, upgrade).await {
        Err(_) => {
            panic!("no answer to the upgrade of {path} from {from} within {REQUEST_TIMEOUT:?}")
        }
        Ok(Ok((socket, _))) => Ok(socket),
        Ok(Err(Error::Http(response))) => Err((
            response.status().as_u16(),
            response
                .body()
                .as_deref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default(),
        )),
        Ok(Err(e)) => panic!("upgrading {path} from {from}: {e}"),
    }
}

/// POSTs `body` as JSON to `path` of `to` from the address `from`, with extra headers; the
/// status and the body.
pub async fn post_from(
    from: IpAddr,
    to: SocketAddr,
    path: &str,
    body: &serde_json::Value,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let client = reqwest::Client::builder()
        .local_address(from)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("an HTTP client");
    let mut request = client
        .post(format!("http://{to}{path}"))
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.to_string());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {path} from {from}: {e}"));
    let status = response.status().as_u16();
    let text = response
        .text()
        .await
        .unwrap_or_else(|e| panic!("reading the answer to POST {path}: {e}"));
    (status, text)
}

/// A TCP relay between nginx and one upstream that records the value of every `header`
/// line of what nginx sends (request heads; a body that held such a line would be read as
/// one, which the tests' bodies do not). Stopped on drop.
pub struct HeaderTap {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl HeaderTap {
    /// Listens on a free port of 127.0.0.1 and relays every connection to `target`,
    /// recording each value of `header` (case-insensitive) sent towards it.
    pub async fn in_front_of(target: SocketAddr, header: &str) -> HeaderTap {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the tap");
        let addr = listener.local_addr().expect("the tap's address");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let prefix = format!("{}:", header.to_ascii_lowercase());
        let record = seen.clone();
        let task = tokio::spawn(async move {
            let mut relays = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let (record, prefix) = (record.clone(), prefix.clone());
                relays.spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (mut from_client, mut to_client) = client.into_split();
                    let (mut from_server, mut to_server) = server.into_split();
                    let upstream = async {
                        let mut line = Vec::new();
                        let mut buf = [0u8; 16 * 1024];
                        loop {
                            let n = match from_client.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            for &byte in &buf[..n] {
                                if byte == b'\n' {
                                    let text = String::from_utf8_lossy(&line).to_ascii_lowercase();
                                    if let Some(value) = text.trim_end().strip_prefix(&prefix) {
                                        record
                                            .lock()
                                            .unwrap_or_else(|e| e.into_inner())
                                            .push(value.trim().to_owned());
                                    }
                                    line.clear();
                                } else if line.len() < 8 * 1024 {
                                    line.push(byte);
                                }
                            }
                            if to_server.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = to_server.shutdown().await;
                    };
                    let downstream = async {
                        let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
                        let _ = to_client.shutdown().await;
                    };
                    tokio::join!(upstream, downstream);
                });
            }
        });
        HeaderTap { addr, seen, task }
    }

    /// Where nginx is to send what the upstream should get.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every value of the header seen so far, in order.
    pub fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for HeaderTap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether a line is one that [`rewrite`] replaces or adds.
    fn rewritten(line: &str) -> bool {
        let line = line.trim();
        let directive = line.split_whitespace().next().unwrap_or_default();
        line.starts_with("# deploy/proxy/nginx.conf, rewritten")
            || (directive == "server" && !line.ends_with('{'))
            || [
                "daemon",
                "master_process",
                "listen",
                "pid",
                "access_log",
                "error_log",
                "client_body_temp_path",
                "proxy_temp_path",
                "fastcgi_temp_path",
                "uwsgi_temp_path",
                "scgi_temp_path",
            ]
            .contains(&directive)
    }

    #[test]
    fn the_rewrite_keeps_every_other_line_of_the_shipped_config() {
        let shipped = std::fs::read_to_string(SHIPPED_CONFIG).expect("the shipped config");
        let listen: SocketAddr = "127.0.0.1:4000".parse().expect("an address");
        let (a, b): (SocketAddr, SocketAddr) = (
            "127.0.0.1:4001".parse().expect("an address"),
            "127.0.0.1:4002".parse().expect("an address"),
        );
        let out = rewrite(
            &shipped,
            listen,
            &[("api", vec![a]), ("gateway", vec![a, b])],
            Path::new("/run/t"),
        );
        let kept = |text: &str| {
            text.lines()
                .filter(|l| !rewritten(l))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        assert_eq!(kept(&out), kept(&shipped));
        for line in [
            "daemon off;",
            "master_process off;",
            "listen 127.0.0.1:4000;",
            "pid /run/t/nginx.pid;",
            "server 127.0.0.1:4001;",
            "server 127.0.0.1:4002;",
        ] {
            assert!(out.lines().any(|l| l.trim() == line), "{line} in\n{out}");
        }
        assert!(!out.contains("api-1"), "{out}");
        assert!(!out.contains("/tmp/"), "{out}");
    }
}
