//! Child processes of the harness: their output kept for a failing test to print, their
//! readiness read from their log lines, and their end by their own process id.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a service may take from spawn to its `listening on` line. A debug build on a
/// loaded two-core machine that creates its database and runs migrations needs some slack.
pub const SERVICE_START_TIMEOUT: Duration = Duration::from_secs(60);

/// The most lines kept per process; older ones are dropped first.
const MAX_LINES: usize = 20_000;

/// The output lines of one child process, shared with the thread that drains its pipes.
#[derive(Clone)]
pub struct Logs {
    name: String,
    lines: Arc<Mutex<VecDeque<String>>>,
}

impl Logs {
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            lines: Arc::default(),
        }
    }

    fn push(&self, line: String) {
        let mut lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        if lines.len() == MAX_LINES {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    /// Everything kept so far, one line each, headed by the process's name.
    pub fn dump(&self) -> String {
        let lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = format!("----- {} ({} lines) -----\n", self.name, lines.len());
        for line in lines.iter() {
            out.push_str(line);
            out.push('\n');
        }
        out
    }

    /// Whether any kept line contains `needle`.
    pub fn contains(&self, needle: &str) -> bool {
        let lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        lines.iter().any(|l| l.contains(needle))
    }
}

/// Drains `reader` line by line on a thread of its own into `logs`, so that the child's pipe
/// never fills, and also hands each line to the returned receiver for whoever waits for a
/// readiness line. The receiver may be dropped; the draining goes on until end of file.
pub fn drain(reader: impl Read + Send + 'static, logs: Logs) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(reader);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = strip_ansi(String::from_utf8_lossy(&buf).trim_end());
                    logs.push(line.clone());
                    let _ = tx.send(line);
                }
            }
        }
    });
    rx
}

/// Removes terminal colour sequences (`ESC [ ... letter`) from a log line.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Waits, until `deadline`, for a line for which `matches` returns a value.
/// Fails when the process closed its output (it exited) or the deadline passed.
pub fn wait_for_line<T>(
    lines: &mpsc::Receiver<String>,
    deadline: Instant,
    mut matches: impl FnMut(&str) -> Option<T>,
) -> Result<T, String> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("timed out".into());
        }
        match lines.recv_timeout(left) {
            Ok(line) => {
                if let Some(found) = matches(&line) {
                    return Ok(found);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => return Err("timed out".into()),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err("the process closed its output (exited?)".into())
            }
        }
    }
}

/// Reads the address out of a `... listening on 127.0.0.1:PORT ...` line; a port of 0 is
/// not an answer (the configured address, not the bound one).
pub fn listening_addr(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find("listening on ")? + "listening on ".len()..];
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '[' | ']')))
        .unwrap_or(rest.len());
    let addr: SocketAddr = rest[..end].trim_end_matches('.').parse().ok()?;
    (addr.port() != 0).then_some(addr)
}

/// Makes the child die with the harness: if the test binary itself is killed, no server is
/// left behind. (The signal follows the spawning thread; the harness spawns on the test's own
/// thread, which outlives the child.)
pub fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches only the calling (child) process.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Sends `signal` to the process `pid` (one of ours). A SIGSTOP returns once every thread of
/// the process has stopped.
pub fn signal(pid: u32, signal: libc::c_int) {
    // SAFETY: kill(2) with a pid we spawned and have not reaped yet.
    unsafe {
        libc::kill(pid as libc::pid_t, signal);
    }
    if signal == libc::SIGSTOP {
        wait_until_stopped(pid);
    }
}

/// kill(2) returns before the target has stopped: each of its threads stops on its own when
/// the kernel next gets to it, and on a loaded machine a broker's thread was seen to store one
/// more message after the SIGSTOP was sent. Waits (up to 5 s) until /proc shows every thread
/// stopped (or gone).
fn wait_until_stopped(pid: u32) {
    let stopped = |stat: &str| {
        // pid (comm) state ...: comm may hold spaces, so read after its ')'.
        let state = stat
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().next());
        matches!(state, Some("T" | "t" | "Z" | "X") | None)
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let Ok(threads) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return;
        };
        let all = threads.flatten().all(|thread| {
            std::fs::read_to_string(thread.path().join("stat")).map_or(true, |s| stopped(&s))
        });
        if all {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Sends `sig`, waits up to `grace` for the child to exit, then SIGKILLs it; reaps it.
pub fn stop_child(child: &mut Child, sig: libc::c_int, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    signal(child.id(), sig);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A fresh, empty directory for one server, removed by whoever owns it.
pub fn temp_dir(what: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    // Short paths: PostgreSQL puts its unix socket in here (at most 107 bytes).
    let dir = std::env::temp_dir().join(format!(
        "tl-e2e-{}-{}-{what}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    dir
}

/// The first executable called `name` on PATH or in one of `fallbacks`.
pub fn find_program(name: &str, fallbacks: &[&str]) -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .map(|dir| dir.join(name))
        .chain(fallbacks.iter().map(PathBuf::from))
        .find(|p| p.is_file())
}

/// One `threadline <role>` process: started at once, listening (and so with an address) once
/// [`wait_listening`](Service::wait_listening) has seen its `listening on` line. Killed by its
/// pid on drop; its output is kept for a failing test to print.
pub struct Service {
    /// `api`, `projector#2`: how logs and failures name it.
    pub name: String,
    pub logs: Logs,
    addr: Option<SocketAddr>,
    child: Child,
    lines: mpsc::Receiver<String>,
    paused: bool,
}

impl Service {
    /// Starts `threadline <role>` with exactly `env` (and PATH, logging variables) and returns
    /// at once; several can start side by side, as they do in production.
    pub fn launch(name: &str, role: &str, env: &[(String, String)]) -> Service {
        let logs = Logs::new(format!("threadline {name}"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_threadline"));
        cmd.arg(role)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("NO_COLOR", "1")
            .env(
                "RUST_BACKTRACE",
                std::env::var("RUST_BACKTRACE").unwrap_or_else(|_| "1".into()),
            )
            .env(
                "RUST_LOG",
                std::env::var("E2E_RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        die_with_parent(&mut cmd);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting threadline {role}: {e}"));
        let _ = drain(child.stdout.take().expect("stdout"), logs.clone());
        let lines = drain(child.stderr.take().expect("stderr"), logs.clone());
        Service {
            name: name.to_owned(),
            logs,
            addr: None,
            child,
            lines,
            paused: false,
        }
    }

    /// Waits for the `listening on` line and returns the bound address; panics, with the
    /// process's output, if the process exits or stays silent for `SERVICE_START_TIMEOUT`.
    /// Does not block the test's runtime meanwhile.
    pub async fn wait_listening(&mut self) -> SocketAddr {
        if let Some(addr) = self.addr {
            return addr;
        }
        let deadline = Instant::now() + SERVICE_START_TIMEOUT;
        loop {
            match self.lines.try_recv() {
                Ok(line) => {
                    if let Some(addr) = listening_addr(&line) {
                        self.addr = Some(addr);
                        return addr;
                    }
                    continue;
                }
                Err(mpsc::TryRecvError::Empty) => {}
                Err(mpsc::TryRecvError::Disconnected) => {
                    self.kill();
                    panic!(
                        "threadline {} exited before it logged `listening on`\n{}",
                        self.name,
                        self.logs.dump()
                    );
                }
            }
            if Instant::now() >= deadline {
                self.kill();
                panic!(
                    "threadline {} did not log `listening on 127.0.0.1:PORT` within {SERVICE_START_TIMEOUT:?}\n{}",
                    self.name,
                    self.logs.dump()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The address it listens on, once known.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    /// Sends `sig` to the process by its pid (unless it has been reaped).
    pub fn signal(&mut self, sig: libc::c_int) {
        if self.try_wait().is_none() {
            signal(self.child.id(), sig);
        }
    }

    /// SIGSTOP: the process keeps its sockets open and does nothing.
    pub fn pause(&mut self) {
        self.signal(libc::SIGSTOP);
        self.paused = true;
    }

    /// SIGCONT after [`pause`](Self::pause).
    pub fn resume(&mut self) {
        self.signal(libc::SIGCONT);
        self.paused = false;
    }

    /// The exit status, if the process has exited (reaping it).
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits, up to `timeout`, for the process to exit; its exit status.
    pub async fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "threadline {} did not exit within {timeout:?}\n{}",
                self.name,
                self.logs.dump()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL by pid, and reap.
    pub fn kill(&mut self) {
        if self.paused {
            signal(self.child.id(), libc::SIGCONT);
            self.paused = false;
        }
        stop_child(&mut self.child, libc::SIGKILL, Duration::ZERO);
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_bound_address_out_of_a_log_line() {
        let line = strip_ansi(
            "2026-11-24T03:22:40Z \u{1b}[32m INFO\u{1b}[0m threadline_api: listening on 127.0.0.1:40123",
        );
        assert_eq!(
            listening_addr(&line),
            Some("127.0.0.1:40123".parse().unwrap())
        );
        assert_eq!(
            listening_addr("listening on 127.0.0.1:5555 (api)"),
            Some("127.0.0.1:5555".parse().unwrap())
        );
        assert_eq!(listening_addr("listening on 127.0.0.1:0"), None);
        assert_eq!(listening_addr("starting"), None);
    }
}
