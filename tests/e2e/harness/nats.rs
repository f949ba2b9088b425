//! A real `nats-server` with JetStream for one test: a free port, its own store directory,
//! killed by its own pid and its directory removed on drop (as nats.rs's own harness does).

use super::process::{
    die_with_parent, drain, find_program, stop_child, temp_dir, wait_for_line, Logs,
};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const START_TIMEOUT: Duration = Duration::from_secs(30);

pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    pub logs: Logs,
}

impl NatsServer {
    /// Starts a server on a free port that it picks itself (`-p -1`).
    pub fn start() -> NatsServer {
        let dir = temp_dir("nats");
        // Messages up to the API's 2.5 MiB body limit must fit in one NATS message.
        std::fs::write(dir.join("nats.conf"), "max_payload: 8MB\n").expect("writing nats.conf");
        let mut server = NatsServer {
            child: None,
            port: 0,
            dir,
            logs: Logs::new("nats-server"),
        };
        server.launch();
        server
    }

    fn launch(&mut self) {
        let program = find_program(
            "nats-server",
            &["/usr/sbin/nats-server", "/usr/bin/nats-server"],
        )
        .expect("nats-server is not installed (not on PATH, nor /usr/sbin/nats-server)");
        let port = if self.port == 0 {
            "-1".to_owned()
        } else {
            self.port.to_string()
        };
        let mut cmd = Command::new(program);
        cmd.arg("-c")
            .arg(self.dir.join("nats.conf"))
            .args(["-a", "127.0.0.1", "-p", &port, "-js", "-sd"])
            .arg(self.dir.join("store"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        die_with_parent(&mut cmd);
        let mut child = cmd.spawn().expect("starting nats-server");
        let _ = drain(child.stdout.take().expect("stdout"), self.logs.clone());
        let lines = drain(child.stderr.take().expect("stderr"), self.logs.clone());
        let deadline = Instant::now() + START_TIMEOUT;
        let found = wait_for_line(&lines, deadline, |line| {
            let rest = line.split("Listening for client connections on ").nth(1)?;
            rest.trim().rsplit(':').next()?.parse::<u16>().ok()
        })
        .and_then(|port| {
            wait_for_line(&lines, deadline, |line| {
                line.contains("Server is ready").then_some(())
            })
            .map(|()| port)
        });
        match found {
            Ok(port) => {
                self.port = port;
                self.child = Some(child);
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

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// SIGKILL by pid: the broker vanishes without a goodbye.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
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
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
