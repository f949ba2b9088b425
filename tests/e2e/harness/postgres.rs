//! A PostgreSQL cluster of one test's own, not the machine's shared one: `initdb` once per
//! test process into a template, then per test a copy of it served by `postgres` on a free
//! port (as pgtemp does). As root, it runs as the `postgres` system user, since PostgreSQL
//! refuses to run as root. Killed by its own pid and removed on drop. A test can pause
//! (SIGSTOP) the whole server, the postmaster and every backend, to play a database that hangs.

use super::ids::new_id;
use super::process::{die_with_parent, drain, find_program, signal, stop_child, temp_dir, Logs};
use sqlx::Connection;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The database `deploy/postgres/roles.sql` sets up.
pub const DEPLOY_DATABASE: &str = "threadline";

/// The `DATABASE_URL`s of the roles of `deploy/postgres/roles.sql`.
#[derive(Debug, Clone)]
pub struct DeployRoles {
    /// `threadline_owner`: owns the tables; `migrate`, `rebuild` and the other operator
    /// commands.
    pub owner: String,
    /// `threadline_api`: reads.
    pub api: String,
    /// `threadline_projector`: reads and writes rows (and runs `threadline all`).
    pub projector: String,
}

/// Where PostgreSQL's programs are and whom to run them as.
struct Install {
    bin: PathBuf,
    /// uid and gid of the `postgres` user when this process is root.
    run_as: Option<(u32, u32)>,
}

fn install() -> &'static Install {
    static INSTALL: OnceLock<Install> = OnceLock::new();
    INSTALL.get_or_init(|| {
        let bin = find_program("initdb", &[])
            .and_then(|p| p.canonicalize().ok())
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .filter(|dir| dir.join("postgres").is_file())
            .or_else(newest_versioned_bin)
            .expect(
                "PostgreSQL is not installed (no initdb on PATH nor /usr/lib/postgresql/*/bin)",
            );
        // SAFETY: geteuid has no preconditions.
        let run_as = (unsafe { libc::geteuid() } == 0).then(postgres_user);
        Install { bin, run_as }
    })
}

fn newest_versioned_bin() -> Option<PathBuf> {
    let mut bins: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    bins.sort();
    bins.pop().map(|(_, bin)| bin)
}

fn postgres_user() -> (u32, u32) {
    let name = c"postgres";
    // SAFETY: getpwnam with a valid C string; the result is read at once, before any other
    // call that could reuse its static buffer.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(
        !pw.is_null(),
        "running as root, and PostgreSQL refuses to run as root, but there is no `postgres` user to run it as"
    );
    // SAFETY: pw is non-null and points at a valid passwd entry.
    unsafe { ((*pw).pw_uid, (*pw).pw_gid) }
}

fn command(program: &str) -> Command {
    let install = install();
    let mut cmd = Command::new(install.bin.join(program));
    if let Some((uid, gid)) = install.run_as {
        cmd.uid(uid).gid(gid);
    }
    cmd.env("LC_ALL", "C").stdin(Stdio::null());
    cmd
}

fn give_to_postgres(path: &Path) {
    if let Some((uid, gid)) = install().run_as {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    }
}

/// The initdb'd data directory every test copies; made once per test process and removed
/// when the process exits.
fn template() -> &'static Path {
    static TEMPLATE: OnceLock<PathBuf> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let root = temp_dir("pg-template");
        give_to_postgres(&root);
        let data = root.join("data");
        let out = command("initdb")
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .current_dir(&root)
            .output()
            .expect("running initdb");
        assert!(
            out.status.success(),
            "initdb failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        TEMPLATE_ROOT.set(root).ok();
        // SAFETY: registers a plain extern "C" function.
        unsafe { libc::atexit(remove_template) };
        data
    })
}

static TEMPLATE_ROOT: OnceLock<PathBuf> = OnceLock::new();

extern "C" fn remove_template() {
    if let Some(root) = TEMPLATE_ROOT.get() {
        let _ = std::fs::remove_dir_all(root);
    }
}

pub struct Postgres {
    child: Option<Child>,
    port: u16,
    root: PathBuf,
    paused: bool,
    pub logs: Logs,
}

impl Postgres {
    /// A fresh cluster on a free port, ready for connections.
    pub async fn start() -> Postgres {
        let template = template();
        let root = temp_dir("pg");
        let data = root.join("data");
        let status = Command::new("cp")
            .arg("-a")
            .arg(template)
            .arg(&data)
            .status()
            .expect("running cp");
        assert!(status.success(), "copying the template cluster failed");
        give_to_postgres(&root);
        let mut pg = Postgres {
            child: None,
            port: 0,
            root,
            paused: false,
            logs: Logs::new("postgres"),
        };
        // Another process may take the free port between our look and postgres's bind.
        for _ in 0..5 {
            pg.port = free_port();
            if pg.launch().await {
                return pg;
            }
        }
        panic!("postgres did not start\n{}", pg.logs.dump());
    }

    /// Starts postgres on `self.port`; false if it could not bind the port.
    async fn launch(&mut self) -> bool {
        let mut cmd = command("postgres");
        cmd.arg("-D")
            .arg(self.root.join("data"))
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-c", "listen_addresses=127.0.0.1", "-k"])
            .arg(&self.root)
            .args([
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=200",
                "-c",
                "shared_buffers=32MB",
            ])
            .current_dir(&self.root)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        die_with_parent(&mut cmd);
        let mut child = cmd.spawn().expect("starting postgres");
        let _ = drain(child.stdout.take().expect("stdout"), self.logs.clone());
        let _ = drain(child.stderr.take().expect("stderr"), self.logs.clone());
        let url = self.url("postgres");
        let deadline = Instant::now() + START_TIMEOUT;
        let data_dir = self.root.join("data");
        loop {
            // Another test's server may answer on this port (it took the port between our
            // look and our bind): only a server serving our own data directory is ours.
            if let Ok(mut conn) = sqlx::PgConnection::connect(&url).await {
                let serving: Result<String, _> =
                    sqlx::query_scalar("SELECT current_setting('data_directory')")
                        .fetch_one(&mut conn)
                        .await;
                let _ = conn.close().await;
                if serving.is_ok_and(|dir| Path::new(&dir) == data_dir) {
                    self.child = Some(child);
                    return true;
                }
            }
            if let Ok(Some(_)) = child.try_wait() {
                if self.logs.contains("could not bind")
                    || self.logs.contains("could not create any TCP/IP sockets")
                {
                    return false;
                }
                panic!("postgres exited while starting\n{}", self.logs.dump());
            }
            if Instant::now() > deadline {
                stop_child(&mut child, libc::SIGQUIT, Duration::from_secs(5));
                panic!(
                    "postgres did not accept connections within {START_TIMEOUT:?}\n{}",
                    self.logs.dump()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The URL of database `db` on this cluster, as superuser `postgres`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of database `db` as `role` with `password`.
    pub fn role_url(&self, role: &str, password: &str, db: &str) -> String {
        format!("postgres://{role}:{password}@127.0.0.1:{}/{db}", self.port)
    }

    /// Makes every role but the superuser `postgres` log in over TCP with its password,
    /// instead of the harness's `trust`: `md5` in pg_hba.conf, which asks for SCRAM of a role
    /// whose password is stored so (PostgreSQL's default, and the postgres image's). The
    /// server reloads its configuration at once; a connection opened in the same moment may
    /// still be let in by the old rules.
    pub async fn require_passwords(&self) {
        let admin = sqlx::PgPool::connect(&self.url("postgres"))
            .await
            .expect("connecting as the superuser");
        let hba: String = sqlx::query_scalar("SHOW hba_file")
            .fetch_one(&admin)
            .await
            .expect("SHOW hba_file");
        std::fs::write(
            &hba,
            "local all all trust\n\
             host all postgres 127.0.0.1/32 trust\n\
             host all all 127.0.0.1/32 md5\n",
        )
        .expect("writing pg_hba.conf");
        sqlx::query("SELECT pg_reload_conf()")
            .execute(&admin)
            .await
            .expect("reloading the configuration");
        admin.close().await;
    }

    /// Creates the database `threadline` and the roles of `deploy/postgres/roles.sql` (that
    /// very file, run by psql as an operator runs it), each with a fresh password; their URLs.
    pub async fn deploy_roles(&self) -> DeployRoles {
        let admin = sqlx::PgPool::connect(&self.url("postgres"))
            .await
            .expect("connecting as the superuser");
        sqlx::query(&format!("CREATE DATABASE {DEPLOY_DATABASE}"))
            .execute(&admin)
            .await
            .expect("creating the database");
        admin.close().await;
        let passwords =
            ["owner", "api", "projector"].map(|role| (role, format!("pw-{}", new_id())));
        let mut psql = Command::new(install().bin.join("psql"));
        // Passwords stored as MD5, so that a login costs one hash: SCRAM's 4096 rounds in the
        // tests' debug-built client take seconds for a pool under load, and what the tests
        // are about is each role's rights, not the hash. (roles_sh_… in shipped_roles logs in
        // with SCRAM, as a deployment does.)
        psql.env("PGOPTIONS", "-c password_encryption=md5");
        psql.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(self.url("postgres"));
        for (role, password) in &passwords {
            psql.arg("-v").arg(format!("{role}_password={password}"));
        }
        let roles = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/postgres/roles.sql");
        let output = psql
            .arg("-f")
            .arg(&roles)
            .stdin(Stdio::null())
            .output()
            .expect("running psql");
        assert!(
            output.status.success(),
            "deploy/postgres/roles.sql failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        self.require_passwords().await;
        let url = |role: &str| {
            let (_, password) = passwords.iter().find(|(r, _)| *r == role).expect("a role");
            self.role_url(&format!("threadline_{role}"), password, DEPLOY_DATABASE)
        };
        DeployRoles {
            owner: url("owner"),
            api: url("api"),
            projector: url("projector"),
        }
    }

    /// A fast shutdown (SIGINT), waited for; SIGKILL if it takes too long.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, libc::SIGINT, Duration::from_secs(30));
        }
    }

    /// SIGSTOP to the whole cluster: connections stay open and nothing answers.
    pub fn pause(&mut self) {
        let child = self.child.as_ref().expect("postgres is not running");
        signal_group(child.id(), libc::SIGSTOP);
        self.paused = true;
    }

    /// SIGCONT after [`pause`](Self::pause).
    pub fn resume(&mut self) {
        let child = self.child.as_ref().expect("postgres is not running");
        signal_group(child.id(), libc::SIGCONT);
        self.paused = false;
    }

    /// Starts the stopped cluster again on the same port.
    pub async fn start_again(&mut self) {
        assert!(self.child.is_none(), "postgres is still running");
        let mut tries = 0;
        while !self.launch().await {
            tries += 1;
            assert!(
                tries < 50,
                "postgres could not bind its port {} again\n{}",
                self.port,
                self.logs.dump()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if self.paused {
                signal_group(child.id(), libc::SIGCONT);
            }
            // Immediate shutdown: the postmaster takes its backends with it.
            stop_child(&mut child, libc::SIGQUIT, Duration::from_secs(10));
            signal_group(child.id(), libc::SIGKILL);
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Sends `sig` to the postmaster `pid` and to every process it forked. (Each backend is the
/// leader of a process group of its own, so a signal to the postmaster's group misses them.)
fn signal_group(pid: u32, sig: libc::c_int) {
    let children: Vec<u32> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let child: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // pid (comm) state ppid ...: comm may hold spaces, so read after its ')'.
            let parent: u32 = stat
                .rsplit(')')
                .next()?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            (parent == pid).then_some(child)
        })
        .collect();
    for process in std::iter::once(pid).chain(children) {
        signal(process, sig);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("finding a free port")
        .port()
}
