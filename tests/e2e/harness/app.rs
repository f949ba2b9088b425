//! `spawn_app()`: a NATS server, a PostgreSQL cluster and threadline's services for one test,
//! run as a user runs them. [`options()`] chooses more: any number of replicas of any role,
//! any setting (environment variable) for all of them or for one, another NATS configuration.
//! Each service is named by its role and replica index (`("gateway", 1)`) and can be killed,
//! sent SIGTERM, paused, restarted on its own address, or joined by a new replica.
//!
//! By default everything runs with the least privilege we ship: the PostgreSQL roles of
//! `deploy/postgres/roles.sql` (the owner migrates and runs the operator commands, the api and
//! the projector run as their own roles, `threadline all` as the projector) and the NATS users
//! of `deploy/nats/auth.conf`. A test that needs more asks for it ([`Options::superuser`],
//! [`Options::open_nats`]) and says why.

use super::client::{Client, PROJECTION_TIMEOUT, REQUEST_TIMEOUT};
use super::client::{DEAD_LETTER_STREAM, STREAM, SUBJECT_PREFIX};
use super::ids::new_id;
use super::nats::{NatsServer, DEFAULT_CONFIG};
use super::postgres::{DeployRoles, Postgres, DEPLOY_DATABASE};
use super::process::{Logs, Service, SERVICE_START_TIMEOUT};
use super::wait::eventually;
use std::net::SocketAddr;
use std::ops::Deref;
use std::path::PathBuf;
use std::time::Duration;

/// The separate roles, in the order they start and are listed.
pub const ROLES: [&str; 3] = ["api", "projector", "gateway"];

/// What a test's system looks like; [`Options::start`] starts it.
#[must_use]
pub struct Options {
    all_in_one: bool,
    replicas: Vec<(&'static str, usize)>,
    env: Vec<(String, String)>,
    role_env: Vec<(String, String, String)>,
    nats_config: String,
    nats_includes: Vec<PathBuf>,
    nats_env: Vec<(String, String)>,
    nats_logins: Vec<(String, String)>,
    nats_users: bool,
    superuser: bool,
    nats_nodes: usize,
}

/// The NATS users of `deploy/nats/auth.conf`: threadline's roles, its operator commands and
/// the Slack integration.
pub const NATS_USERS: [&str; 5] = ["api", "projector", "gateway", "operator", "integration"];

/// The default system (one replica of each role, separate processes), to adjust.
pub fn options() -> Options {
    Options {
        all_in_one: false,
        replicas: ROLES.iter().map(|role| (*role, 1)).collect(),
        env: Vec::new(),
        role_env: Vec::new(),
        nats_config: DEFAULT_CONFIG.to_owned(),
        nats_includes: Vec::new(),
        nats_env: Vec::new(),
        nats_logins: Vec::new(),
        nats_users: true,
        superuser: false,
        nats_nodes: 1,
    }
}

/// Starts the system as separate processes: api, projector and gateway.
pub async fn spawn_app() -> App {
    options().start().await
}

/// Starts the system as one `threadline all` process.
pub async fn spawn_all() -> App {
    options().all_in_one().start().await
}

impl Options {
    /// `n` replicas of `role` (`api`, `projector`, `gateway`, or `all`); 0 starts none.
    pub fn replicas(mut self, role: &'static str, n: usize) -> Self {
        match self.replicas.iter_mut().find(|(r, _)| *r == role) {
            Some(entry) => entry.1 = n,
            None => self.replicas.push((role, n)),
        }
        self
    }

    /// One `threadline all` process instead of the separate roles. It connects to
    /// PostgreSQL as the projector's role, which has the rights of both; NATS runs without
    /// users ([`open_nats`](Self::open_nats)), since `deploy/nats/auth.conf` has none for a
    /// process that is the api, the projector and the gateway at once.
    pub fn all_in_one(mut self) -> Self {
        self.all_in_one = true;
        self.replicas = vec![("all", 1)];
        self.open_nats()
    }

    /// Every role and operator command connects to PostgreSQL as the superuser and creates
    /// and migrates its own database on start (`MIGRATE_ON_START`), as on a developer's
    /// machine, instead of the roles of `deploy/postgres/roles.sql`. Only for a test of that
    /// very path, or one that needs a right no shipped role has: say which in the test.
    pub fn superuser(mut self) -> Self {
        self.superuser = true;
        self
    }

    /// nats-server without users: every client may publish and subscribe anywhere, as on a
    /// developer's machine, instead of the users of `deploy/nats/auth.conf`. Only for a test
    /// that must do what no shipped user may (say which in the test).
    pub fn open_nats(mut self) -> Self {
        self.nats_users = false;
        self
    }

    /// Sets an environment variable of every service (it overrides the harness's own).
    pub fn env(mut self, key: &str, value: impl Into<String>) -> Self {
        self.env.push((key.to_owned(), value.into()));
        self
    }

    /// Sets an environment variable of every replica of `role` (`operator`: of the operator
    /// commands run against the app).
    pub fn role_env(mut self, role: &str, key: &str, value: impl Into<String>) -> Self {
        self.role_env
            .push((role.to_owned(), key.to_owned(), value.into()));
        self
    }

    /// Runs nats-server with the users and permissions of `deploy/nats/auth.conf` (that very
    /// file, included), each with a fresh password: the default. Every role, the operator
    /// commands and the test's own NATS client (as `operator`) connect as their own user, with
    /// their own inbox prefix; [`App::nats_login`] gives a client any user's login.
    pub fn deploy_nats_users(mut self) -> Self {
        self.nats_users = true;
        self
    }

    fn add_nats_users(mut self) -> Self {
        let auth = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/nats/auth.conf");
        self.nats_includes.push(auth);
        for user in NATS_USERS {
            // nats-server parses a variable's value as it would a literal: one that starts
            // with digits may be taken for a number or a date.
            let password = format!("pw-{}", new_id());
            self.nats_env.push((
                format!("THREADLINE_NATS_{}_PASSWORD", user.to_uppercase()),
                password.clone(),
            ));
            self.nats_logins.push((user.to_owned(), password.clone()));
            for (key, value) in [
                ("NATS_USER", user.to_owned()),
                ("NATS_PASSWORD", password),
                ("NATS_INBOX_PREFIX", format!("_INBOX_{user}")),
            ] {
                self = self.role_env(user, key, value);
            }
        }
        self
    }

    /// Runs NATS as a JetStream cluster of `nodes` servers ([`NatsServer::start_cluster`]):
    /// every service gets them all as a seed list in `NATS_URL`, and `STREAM_REPLICAS` of
    /// `nodes` (a test's own setting wins). [`App::nats_node`] reaches each node.
    pub fn nats_cluster(mut self, nodes: usize) -> Self {
        self.nats_nodes = nodes;
        self
    }

    /// Runs nats-server with `config` as its configuration file instead of the harness's
    /// (which raises `max_payload`); `""` gives nats-server's own defaults.
    pub fn nats_config(mut self, config: &str) -> Self {
        self.nats_config = config.to_owned();
        self
    }

    /// Starts the servers, sets the database up (the shipped roles and `threadline migrate`
    /// as the owner; as the superuser, nothing: the replicas race to create and migrate it),
    /// then every replica side by side, and waits until each one answers `/readyz` with 200.
    pub async fn start(mut self) -> App {
        if self.nats_users {
            self = self.add_nats_users();
        }
        let mut nodes = if self.nats_nodes > 1 {
            NatsServer::start_cluster(
                self.nats_nodes,
                &self.nats_config,
                &self.nats_includes,
                &self.nats_env,
            )
        } else {
            vec![NatsServer::start(
                &self.nats_config,
                &self.nats_includes,
                &self.nats_env,
            )]
        };
        let nats = nodes.remove(0);
        let nats_peers = nodes;
        let nats_url = std::iter::once(&nats)
            .chain(&nats_peers)
            .map(|n| n.url())
            .collect::<Vec<_>>()
            .join(",");
        let pg = Postgres::start().await;
        let (database_url, roles) = if self.superuser {
            // A database that does not exist yet: the services create it.
            let database = format!("threadline_{}", new_id().replace('-', ""));
            (pg.url(&database), None)
        } else {
            let roles = pg.deploy_roles().await;
            (pg.url(DEPLOY_DATABASE), Some(roles))
        };
        let read_your_writes = format!("{}s", PROJECTION_TIMEOUT.as_secs());
        let mut env: Vec<(String, String)> = [
            ("NATS_URL", nats_url.clone()),
            ("DATABASE_URL", database_url.clone()),
            ("LISTEN_ADDR", "127.0.0.1:0".to_owned()),
            ("STREAM_NAME", STREAM.to_owned()),
            ("SUBJECT_PREFIX", SUBJECT_PREFIX.to_owned()),
            ("DEAD_LETTER_STREAM", DEAD_LETTER_STREAM.to_owned()),
            // GETs wait for the projector as long as the tests do.
            ("READ_YOUR_WRITES_TIMEOUT", read_your_writes),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        if self.nats_nodes > 1 {
            set(&mut env, "STREAM_REPLICAS", &self.nats_nodes.to_string());
        }
        if let Some(roles) = &roles {
            // As docker-compose.yml and the k8s base run it: the owner migrates once, then
            // each role connects as its own.
            set(&mut env, "DATABASE_URL", &roles.owner);
            set(&mut env, "MIGRATE_ON_START", "false");
            migrate(&env).await;
            for (role, url) in [
                ("api", &roles.api),
                ("projector", &roles.projector),
                ("all", &roles.projector),
                ("operator", &roles.owner),
            ] {
                // First, so that a test's own setting wins.
                self.role_env
                    .insert(0, (role.to_owned(), "DATABASE_URL".to_owned(), url.clone()));
            }
        }
        for (key, value) in self.env {
            set(&mut env, &key, &value);
        }
        let placeholder: SocketAddr = "127.0.0.1:9".parse().expect("an address");
        let mut app = App {
            client: Client::new(placeholder, placeholder, nats_url.clone()),
            services: Vec::new(),
            nats,
            nats_peers,
            pg,
            database_url,
            env,
            role_env: self.role_env,
            nats_logins: self.nats_logins,
            roles,
            db: None,
        };
        app.client = app.with_login(app.client.clone());
        for (role, n) in &self.replicas {
            for _ in 0..*n {
                app.launch(role, &[]);
            }
        }
        for index in 0..app.services.len() {
            app.wait_ready_at(index).await;
        }
        let api = app.first_addr(&["api", "all"]);
        let gateway = app.first_addr(&["gateway", "all"]);
        if let (Some(api), Some(gateway)) = (api, gateway) {
            app.client = app.with_login(Client::new(api, gateway, nats_url));
        }
        app
    }
}

/// Runs `threadline migrate` with `env`, as a deployment does before the roles start.
async fn migrate(env: &[(String, String)]) {
    let out = super::operator::run_command_with(&["migrate"], env).await;
    out.expect(0);
}

/// Sets `key` in `env`, replacing an earlier value.
fn set(env: &mut Vec<(String, String)>, key: &str, value: &str) {
    env.retain(|(k, _)| k != key);
    env.push((key.to_owned(), value.to_owned()));
}

/// One replica of a role, across its restarts.
struct Replica {
    role: String,
    /// Its index among the replicas of its role.
    index: usize,
    env: Vec<(String, String)>,
    /// The process now; earlier ones are kept in `past` for their output.
    current: Service,
    past: Vec<Service>,
}

impl Replica {
    fn name(role: &str, index: usize, start: usize) -> String {
        match (index, start) {
            (0, 0) => role.to_owned(),
            (i, 0) => format!("{role}#{}", i + 1),
            (i, s) => format!("{role}#{} (start {})", i + 1, s + 1),
        }
    }
}

/// One test's whole system. Dropping it kills every process by its pid and removes their
/// directories; if the test is failing, every process's output is printed first. It derefs to
/// the [`Client`] of its first api and gateway replicas.
pub struct App {
    client: Client,
    services: Vec<Replica>,
    pub nats: NatsServer,
    /// The other nodes of a NATS cluster ([`Options::nats_cluster`]).
    nats_peers: Vec<NatsServer>,
    pub pg: Postgres,
    /// The read model's database as the superuser, for the test's own looks and changes
    /// ([`App::db`]); the roles connect as their own ([`App::roles`]).
    pub database_url: String,
    env: Vec<(String, String)>,
    role_env: Vec<(String, String, String)>,
    /// Each NATS user's password, if the server has users.
    nats_logins: Vec<(String, String)>,
    roles: Option<DeployRoles>,
    db: Option<sqlx::PgPool>,
}

impl Deref for App {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

impl App {
    // ----- clients -----

    /// A client of api replica `api` and gateway replica `gateway`.
    pub fn client(&self, api: usize, gateway: usize) -> Client {
        self.with_login(Client::new(
            self.addr("api", api),
            self.addr("gateway", gateway),
            self.nats_url(),
        ))
    }

    /// The NATS server's URL, or the cluster's seed list.
    pub fn nats_url(&self) -> String {
        std::iter::once(&self.nats)
            .chain(&self.nats_peers)
            .map(|n| n.url())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Node `index` of the NATS cluster (0 is [`App::nats`]).
    pub fn nats_node(&mut self, index: usize) -> &mut NatsServer {
        match index {
            0 => &mut self.nats,
            i => &mut self.nats_peers[i - 1],
        }
    }

    /// `client`, connecting to NATS as the `operator` user if the server has users.
    fn with_login(&self, client: Client) -> Client {
        match self.nats_login("operator") {
            Some((user, password)) => client.with_nats_login(&user, &password),
            None => client,
        }
    }

    /// The user name and password of a NATS user of `deploy/nats/auth.conf`, if the app's
    /// server has its users ([`Options::deploy_nats_users`]).
    pub fn nats_login(&self, user: &str) -> Option<(String, String)> {
        self.nats_logins
            .iter()
            .find(|(u, _)| u == user)
            .map(|(u, p)| (u.clone(), p.clone()))
    }

    /// The PostgreSQL roles the services run as, unless the app runs as the superuser
    /// ([`Options::superuser`]).
    pub fn roles(&self) -> Option<&DeployRoles> {
        self.roles.as_ref()
    }

    /// Every replica's name and address, in start order.
    pub fn service_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.services
            .iter()
            .filter_map(|r| Some((r.current.name.clone(), r.current.addr()?)))
            .collect()
    }

    /// Where replica `index` of `role` listens.
    pub fn addr(&self, role: &str, index: usize) -> SocketAddr {
        self.replica(role, index)
            .current
            .addr()
            .unwrap_or_else(|| panic!("{role} #{index} has not listened yet"))
    }

    fn first_addr(&self, roles: &[&str]) -> Option<SocketAddr> {
        self.services
            .iter()
            .find(|r| roles.contains(&r.role.as_str()))
            .and_then(|r| r.current.addr())
    }

    /// The environment every service of this app starts with.
    pub fn env(&self) -> &[(String, String)] {
        &self.env
    }

    /// The environment replicas of `role` start with (`operator`: operator commands).
    pub fn env_of(&self, role: &str) -> Vec<(String, String)> {
        let mut env = self.env.clone();
        for (_, key, value) in self.role_env.iter().filter(|(r, _, _)| r == role) {
            set(&mut env, key, value);
        }
        env
    }

    // ----- services -----

    fn position(&self, role: &str, index: usize) -> usize {
        self.services
            .iter()
            .position(|r| r.role == role && r.index == index)
            .unwrap_or_else(|| panic!("this app has no {role} replica #{index}"))
    }

    fn replica(&self, role: &str, index: usize) -> &Replica {
        &self.services[self.position(role, index)]
    }

    fn replica_mut(&mut self, role: &str, index: usize) -> &mut Replica {
        let position = self.position(role, index);
        &mut self.services[position]
    }

    /// How many replicas of `role` this app has started (running or not).
    pub fn replica_count(&self, role: &str) -> usize {
        self.services.iter().filter(|r| r.role == role).count()
    }

    /// Starts a new replica of `role` with the app's settings and `overrides`, without waiting
    /// for it to listen; its index.
    pub fn launch(&mut self, role: &str, overrides: &[(&str, &str)]) -> usize {
        let index = self.replica_count(role);
        let mut env = self.env_of(role);
        for (key, value) in overrides {
            set(&mut env, key, value);
        }
        let current = Service::launch(&Replica::name(role, index, 0), role, &env);
        self.services.push(Replica {
            role: role.to_owned(),
            index,
            env,
            current,
            past: Vec::new(),
        });
        index
    }

    /// Starts a new replica of `role` and waits until it is ready; its index.
    pub async fn start_replica(&mut self, role: &str, overrides: &[(&str, &str)]) -> usize {
        let index = self.launch(role, overrides);
        self.wait_ready(role, index).await;
        index
    }

    /// Waits until replica `index` of `role` listens and answers `/readyz` with 200.
    pub async fn wait_ready(&mut self, role: &str, index: usize) -> SocketAddr {
        let position = self.position(role, index);
        self.wait_ready_at(position).await
    }

    async fn wait_ready_at(&mut self, position: usize) -> SocketAddr {
        let addr = self.services[position].current.wait_listening().await;
        let name = self.services[position].current.name.clone();
        let client = &self.client;
        eventually(
            &format!("threadline {name} to answer /readyz with 200"),
            SERVICE_START_TIMEOUT,
            || async move {
                let response = client.try_request_to(addr, "GET", "/readyz", None, None);
                matches!(response.await, Ok(r) if r.status == 200).then_some(())
            },
        )
        .await;
        addr
    }

    /// The output of replica `index` of `role` (its current process).
    pub fn logs(&self, role: &str, index: usize) -> &Logs {
        &self.replica(role, index).current.logs
    }

    /// Sends `sig` to replica `index` of `role` by its pid.
    pub fn signal(&mut self, role: &str, index: usize, sig: libc::c_int) {
        self.replica_mut(role, index).current.signal(sig);
    }

    /// SIGTERM: a graceful shutdown, as Kubernetes asks for one.
    pub fn terminate(&mut self, role: &str, index: usize) {
        self.signal(role, index, libc::SIGTERM);
    }

    /// SIGKILL by pid, reaped: the process vanishes without a goodbye.
    pub fn kill(&mut self, role: &str, index: usize) {
        self.replica_mut(role, index).current.kill();
    }

    /// SIGSTOP: the process holds its sockets and does nothing.
    pub fn pause(&mut self, role: &str, index: usize) {
        self.replica_mut(role, index).current.pause();
    }

    /// SIGCONT after [`pause`](Self::pause).
    pub fn resume(&mut self, role: &str, index: usize) {
        self.replica_mut(role, index).current.resume();
    }

    /// Waits, up to `timeout`, for replica `index` of `role` to exit; its exit status.
    pub async fn wait_exit(
        &mut self,
        role: &str,
        index: usize,
        timeout: Duration,
    ) -> std::process::ExitStatus {
        self.replica_mut(role, index)
            .current
            .wait_exit(timeout)
            .await
    }

    /// Starts replica `index` of `role` again (killing it first if it still runs), with its
    /// settings and on its address if it had one, and waits until it is ready.
    pub async fn restart(&mut self, role: &str, index: usize) -> SocketAddr {
        let position = self.position(role, index);
        let replica = &mut self.services[position];
        replica.current.kill();
        let mut env = replica.env.clone();
        if let Some(addr) = replica.current.addr() {
            set(&mut env, "LISTEN_ADDR", &addr.to_string());
        }
        let start = replica.past.len() + 1;
        let next = Service::launch(&Replica::name(role, index, start), role, &env);
        let old = std::mem::replace(&mut replica.current, next);
        replica.past.push(old);
        self.wait_ready_at(position).await
    }

    // ----- read model -----

    /// A pool on the read model's database (which the services created).
    pub async fn db(&mut self) -> sqlx::PgPool {
        if let Some(pool) = &self.db {
            return pool.clone();
        }
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(REQUEST_TIMEOUT)
            .connect(&self.database_url)
            .await
            .expect("connecting to the read model");
        self.db = Some(pool.clone());
        pool
    }
}

impl Drop for App {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut out = String::from("\n===== output of the failing test's processes =====\n");
            for replica in &self.services {
                for service in replica.past.iter().chain([&replica.current]) {
                    out.push_str(&service.logs.dump());
                }
            }
            out.push_str(&self.nats.logs.dump());
            for peer in &self.nats_peers {
                out.push_str(&peer.logs.dump());
            }
            out.push_str(&self.pg.logs.dump());
            eprintln!("{out}");
        }
        self.services.clear();
    }
}
