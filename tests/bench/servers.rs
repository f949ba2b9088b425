//! What the benchmarks under `tests/bench/` share: free ports, a temporary directory, child
//! processes that end with the benchmark, a nats-server with JetStream of their own, and
//! bounded waits for a server to answer.

use anyhow::{bail, Context};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to answer after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A fresh directory under the system's temporary directory, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(what: &str) -> anyhow::Result<TempDir> {
        let dir = std::env::temp_dir().join(format!("tl-bench-{}-{what}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(TempDir(dir))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A port nothing listens on right now.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A child process of the benchmark: killed by its own pid on drop, and by the kernel if the
/// benchmark itself dies first, so that no server outlives a run.
pub struct Process {
    name: String,
    child: Child,
}

impl Process {
    pub fn spawn(name: &str, command: &mut Command) -> anyhow::Result<Process> {
        // SAFETY: prctl is async-signal-safe and touches only the calling (child) process.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", command.get_program()))?;
        Ok(Process {
            name: name.to_owned(),
            child,
        })
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Fails if the process has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => bail!("{} exited ({status})", self.name),
            Err(e) => bail!("{}: {e}", self.name),
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A nats-server with JetStream on a free port, its store in a temporary directory.
pub struct NatsServer {
    pub url: String,
    _process: Process,
    _store: TempDir,
}

impl NatsServer {
    pub async fn start() -> anyhow::Result<NatsServer> {
        let store = TempDir::new("nats")?;
        let port = free_port()?;
        let program = [
            "nats-server",
            "/usr/sbin/nats-server",
            "/usr/bin/nats-server",
        ]
        .into_iter()
        .find(|p| Command::new(p).arg("--version").output().is_ok())
        .context("nats-server is not installed (Debian: apt-get install nats-server)")?;
        let mut process = Process::spawn(
            "nats-server",
            Command::new(program)
                .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
                .arg(store.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )?;
        wait_for("nats-server", || {
            process.check_running()?;
            Ok(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok())
        })
        .await?;
        Ok(NatsServer {
            url: format!("nats://127.0.0.1:{port}"),
            _process: process,
            _store: store,
        })
    }
}

/// Waits until `ready` says yes, failing at once on its error and after [`START_TIMEOUT`].
pub async fn wait_for(
    what: &str,
    mut ready: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    while !ready()? {
        if Instant::now() > deadline {
            bail!("{what} did not come up within {START_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Waits until `process` answers 200 on `<base>/readyz`.
pub async fn wait_ready(
    http: &reqwest::Client,
    base: &str,
    process: &mut Process,
) -> anyhow::Result<()> {
    let url = format!("{base}/readyz");
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        process.check_running()?;
        if matches!(http.get(&url).send().await, Ok(r) if r.status() == 200) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{} did not become ready within {START_TIMEOUT:?}",
                process.name
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
