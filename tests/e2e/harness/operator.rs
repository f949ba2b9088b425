//! Operator commands (`threadline rebuild`, `verify`, `dead-letters`, `events`) run as an
//! operator runs them: the built binary, with the same settings as the app's services, its
//! output captured.

use super::app::App;
use super::process::die_with_parent;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// How long a command may run before the test fails.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);

/// What a finished command printed and how it exited.
#[derive(Debug)]
pub struct CommandOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CommandOutput {
    /// Asserts the exit code and returns standard output.
    #[track_caller]
    pub fn expect(&self, code: i32) -> &str {
        assert_eq!(
            self.status.code(),
            Some(code),
            "unexpected exit status {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
        &self.stdout
    }
}

/// The settings the app's services run with, as environment variables, and the operator's
/// own (its NATS user, if the server has users).
pub fn app_env(app: &App) -> Vec<(String, String)> {
    app.env_of("operator")
}

/// `threadline <args>` with `env`, standard output and error piped.
pub fn command(args: &[&str], env: &[(String, String)]) -> Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_threadline"));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("NO_COLOR", "1")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Ok(level) = std::env::var("E2E_RUST_LOG") {
        cmd.env("RUST_LOG", level);
    }
    die_with_parent(&mut cmd);
    let mut cmd = Command::from(cmd);
    cmd.kill_on_drop(true);
    cmd
}

/// Runs `threadline <args>` against the app's servers and waits for it to exit.
pub async fn run_command(app: &App, args: &[&str]) -> CommandOutput {
    run_command_with(args, &app_env(app)).await
}

/// Runs `threadline <args>` with `env` and waits (bounded) for it to exit.
pub async fn run_command_with(args: &[&str], env: &[(String, String)]) -> CommandOutput {
    let child = command(args, env)
        .spawn()
        .unwrap_or_else(|e| panic!("starting threadline {args:?}: {e}"));
    let output = tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("threadline {args:?} did not exit within {COMMAND_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("waiting for threadline {args:?}: {e}"));
    CommandOutput {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// The `dead-letters list --json` records of events published on `subject`.
pub async fn dead_letters_on(app: &App, subject: &str) -> Vec<serde_json::Value> {
    let out = run_command(app, &["dead-letters", "list", "--json"]).await;
    let all: serde_json::Value =
        serde_json::from_str(out.expect(0)).expect("dead-letters list --json");
    all.as_array()
        .expect("dead-letters list --json prints an array")
        .iter()
        .filter(|l| l["subject"] == subject)
        .cloned()
        .collect()
}

/// A command left running (`events tail`, a rebuild to be killed); killed on drop.
pub struct Running {
    pub child: Child,
    pub stdout: Lines<BufReader<ChildStdout>>,
}

impl Running {
    pub fn start(app: &App, args: &[&str]) -> Running {
        let mut child = command(args, &app_env(app))
            // Nobody reads its logs; a full pipe must not stop it.
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting threadline {args:?}: {e}"));
        let stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
        Running { child, stdout }
    }

    /// The next line of standard output, within `timeout`.
    pub async fn next_line(&mut self, timeout: Duration) -> String {
        tokio::time::timeout(timeout, self.stdout.next_line())
            .await
            .unwrap_or_else(|_| panic!("no output line within {timeout:?}"))
            .expect("reading standard output")
            .expect("the command ended its output")
    }

    /// SIGKILL by pid, and reap.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }
}
