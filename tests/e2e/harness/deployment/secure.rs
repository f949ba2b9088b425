//! Servers that insist on security, set up by the test itself: a certificate authority with a
//! server and a client certificate (rcgen), a `nats-server` that requires TLS, client
//! certificates and credentials (user/password, token, NKey, or an operator's creds file),
//! and a harness PostgreSQL
//! switched to accept TLS connections only.

use super::super::postgres::Postgres;
use super::super::process::{die_with_parent, drain, stop_child, temp_dir, wait_for_line, Logs};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use serde_json::json;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A CA and the certificates it signed, as PEM files in a directory of their own.
pub struct Pki {
    dir: PathBuf,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl Pki {
    /// A new CA; a server certificate for 127.0.0.1 and localhost; a client certificate.
    pub fn new() -> Pki {
        let dir = temp_dir("pki");
        let ca_key = KeyPair::generate().expect("a CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "threadline test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = ca_params.self_signed(&ca_key).expect("the CA certificate");

        let issue = |names: Vec<String>, usage: ExtendedKeyUsagePurpose| {
            let key = KeyPair::generate().expect("a key");
            let mut params = CertificateParams::new(names).expect("params");
            params
                .distinguished_name
                .push(DnType::CommonName, "threadline test");
            params.extended_key_usages = vec![usage];
            let cert = params.signed_by(&key, &ca, &ca_key).expect("signing");
            (cert.pem(), key.serialize_pem())
        };
        let (server_pem, server_key_pem) = issue(
            vec!["127.0.0.1".into(), "localhost".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client_pem, client_key_pem) =
            issue(vec!["client".into()], ExtendedKeyUsagePurpose::ClientAuth);
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).expect("writing a PEM file");
            path
        };
        Pki {
            ca: write("ca.pem", &ca.pem()),
            server_cert: write("server.pem", &server_pem),
            server_key: write("server.key", &server_key_pem),
            client_cert: write("client.pem", &client_pem),
            client_key: write("client.key", &client_key_pem),
            dir,
        }
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// How clients must authenticate to a [`SecureNats`].
pub enum NatsAuth {
    UserPassword(&'static str, &'static str),
    Token(&'static str),
    /// The user's public NKey (`U…`).
    NKey(String),
    /// Decentralised authentication: the server trusts an operator, preloads its account, and
    /// users log in with a creds file (a user JWT and its NKey seed).
    Operator(Operator),
}

/// An operator, one account with JetStream, and one user of it, as `nsc` would make them:
/// ed25519-NKey-signed JWTs (https://docs.nats.io/running-a-nats-service/configuration/securing_nats/jwt).
pub struct Operator {
    operator_jwt: String,
    account: String,
    account_jwt: String,
    system: String,
    system_jwt: String,
    dir: PathBuf,
    /// The user's creds file: its JWT and its seed.
    pub creds_file: PathBuf,
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Operator {
    pub fn new() -> Operator {
        let operator = nkeys::KeyPair::new_operator();
        let account = nkeys::KeyPair::new_account();
        let system = nkeys::KeyPair::new_account();
        let user = nkeys::KeyPair::new_user();
        let operator_jwt = jwt(
            &operator,
            &operator.public_key(),
            json!({"type": "operator", "version": 2}),
        );
        let account_jwt = jwt(
            &operator,
            &account.public_key(),
            json!({
                "limits": {
                    "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
                    "wildcards": true, "conn": -1, "leaf": -1,
                    "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1
                },
                "default_permissions": {"pub": {}, "sub": {}},
                "type": "account",
                "version": 2
            }),
        );
        // JetStream needs the server's system account.
        let system_jwt = jwt(
            &operator,
            &system.public_key(),
            json!({"type": "account", "version": 2}),
        );
        let user_jwt = jwt(
            &account,
            &user.public_key(),
            json!({
                "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1,
                "type": "user", "version": 2
            }),
        );
        let seed = user.seed().expect("the user's seed");
        let creds = format!(
            "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
             -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
        );
        let dir = temp_dir("operator");
        let creds_file = dir.join("user.creds");
        std::fs::write(&creds_file, creds).expect("writing the creds file");
        Operator {
            operator_jwt,
            account: account.public_key(),
            account_jwt,
            system: system.public_key(),
            system_jwt,
            dir,
            creds_file,
        }
    }
}

/// A JWT for `subject`, signed by `issuer`, with `nats` as its NATS claims.
fn jwt(issuer: &nkeys::KeyPair, subject: &str, nats: serde_json::Value) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    static SERIAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let header = URL_SAFE_NO_PAD.encode(r#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let serial = SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let claims = json!({
        "jti": format!("{subject}-{serial}"),
        "iat": chrono::Utc::now().timestamp(),
        "iss": issuer.public_key(),
        "name": "threadline test",
        "sub": subject,
        "nats": nats,
    });
    let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signed = format!("{header}.{claims}");
    let signature = issuer.sign(signed.as_bytes()).expect("signing a JWT");
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature))
}

/// A `nats-server` with JetStream that accepts TLS connections only, from clients with a
/// certificate of the test CA and the right credentials.
pub struct SecureNats {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    pub logs: Logs,
}

impl SecureNats {
    pub fn start(pki: &Pki, auth: &NatsAuth) -> SecureNats {
        let dir = temp_dir("nats-tls");
        let authorization = match auth {
            NatsAuth::UserPassword(user, password) => {
                format!("users = [ {{ user: \"{user}\", password: \"{password}\" }} ]")
            }
            NatsAuth::Token(token) => format!("token: \"{token}\""),
            NatsAuth::NKey(public) => format!("users = [ {{ nkey: \"{public}\" }} ]"),
            NatsAuth::Operator(_) => String::new(),
        };
        let authorization = match auth {
            // Operator mode has no authorization block: the trusted operator and its accounts.
            NatsAuth::Operator(operator) => format!(
                "operator: \"{}\"\nsystem_account: {}\nresolver: MEMORY\n\
                 resolver_preload: {{\n  {}: \"{}\"\n  {}: \"{}\"\n}}\n",
                operator.operator_jwt,
                operator.system,
                operator.account,
                operator.account_jwt,
                operator.system,
                operator.system_jwt
            ),
            _ => format!("authorization {{\n  {authorization}\n}}\n"),
        };
        let config = format!(
            "max_payload: 8MB\n\
             tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify: true\n  timeout: 5\n}}\n\
             {authorization}",
            pki.server_cert.display(),
            pki.server_key.display(),
            pki.ca.display(),
        );
        std::fs::write(dir.join("nats.conf"), config).expect("writing nats.conf");
        let program = super::super::nats::nats_server_program();
        let logs = Logs::new("nats-server (TLS)");
        let mut cmd = Command::new(program);
        cmd.arg("-c")
            .arg(dir.join("nats.conf"))
            .args(["-a", "127.0.0.1", "-p", "-1", "-js", "-sd"])
            .arg(dir.join("store"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        die_with_parent(&mut cmd);
        let mut child = cmd.spawn().expect("starting nats-server");
        let _ = drain(child.stdout.take().expect("stdout"), logs.clone());
        let lines = drain(child.stderr.take().expect("stderr"), logs.clone());
        let deadline = Instant::now() + START_TIMEOUT;
        let port = wait_for_line(&lines, deadline, |line| {
            let rest = line.split("Listening for client connections on ").nth(1)?;
            rest.trim().rsplit(':').next()?.parse::<u16>().ok()
        })
        .and_then(|port| {
            wait_for_line(&lines, deadline, |l| {
                l.contains("Server is ready").then_some(())
            })
            .map(|()| port)
        });
        match port {
            Ok(port) => SecureNats {
                child: Some(child),
                port,
                dir,
                logs,
            },
            Err(why) => {
                stop_child(&mut child, libc::SIGKILL, Duration::ZERO);
                panic!("nats-server (TLS) did not start: {why}\n{}", logs.dump());
            }
        }
    }

    pub fn url(&self) -> String {
        format!("tls://127.0.0.1:{}", self.port)
    }
}

impl Drop for SecureNats {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, libc::SIGKILL, Duration::ZERO);
        }
        if std::thread::panicking() {
            eprintln!("{}", self.logs.dump());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether a TLS-only PostgreSQL also wants a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCertificate {
    NotAsked,
    /// One signed by the test CA (`clientcert=verify-ca`).
    Required,
}

/// Switches a running harness PostgreSQL to TLS only: the server certificate of `pki`, and
/// pg_hba.conf rejecting every TCP connection that is not encrypted (and, if asked, every
/// one without a client certificate of the test CA). Returns the URL of database `db` with
/// `sslmode=verify-full` against the test CA, and the client certificate when it is required.
pub async fn require_tls(pg: &Postgres, pki: &Pki, db: &str, client: ClientCertificate) -> String {
    let admin = sqlx::PgPool::connect(&pg.url("postgres"))
        .await
        .expect("connecting as the superuser");
    let show = |setting: &'static str| {
        let admin = admin.clone();
        async move {
            sqlx::query_scalar::<_, String>(&format!("SHOW {setting}"))
                .fetch_one(&admin)
                .await
                .expect("SHOW")
        }
    };
    let data = PathBuf::from(show("data_directory").await);
    let hba = PathBuf::from(show("hba_file").await);
    let owner = std::fs::metadata(&data).expect("the data directory").uid();
    let place = |from: &Path, name: &str| {
        let to = data.join(name);
        std::fs::copy(from, &to).expect("copying a PEM file");
        std::os::unix::fs::chown(&to, Some(owner), None).expect("chown");
        std::fs::set_permissions(&to, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod");
        to
    };
    let cert = place(&pki.server_cert, "server.pem");
    let key = place(&pki.server_key, "server.key");
    let ca = place(&pki.ca, "ca.pem");
    let verify = match client {
        ClientCertificate::NotAsked => "",
        ClientCertificate::Required => " clientcert=verify-ca",
    };
    std::fs::write(
        &hba,
        format!(
            "local all all trust\n\
             hostssl all all 127.0.0.1/32 trust{verify}\n\
             hostnossl all all 127.0.0.1/32 reject\n"
        ),
    )
    .expect("writing pg_hba.conf");
    for statement in [
        format!("ALTER SYSTEM SET ssl_cert_file = '{}'", cert.display()),
        format!("ALTER SYSTEM SET ssl_key_file = '{}'", key.display()),
        format!("ALTER SYSTEM SET ssl_ca_file = '{}'", ca.display()),
        "ALTER SYSTEM SET ssl = on".to_owned(),
        "SELECT pg_reload_conf()".to_owned(),
    ] {
        sqlx::query(&statement)
            .execute(&admin)
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
    admin.close().await;
    let url = format!(
        "{}?sslmode=verify-full&sslrootcert={}",
        pg.url(db),
        pki.ca.display()
    );
    match client {
        ClientCertificate::NotAsked => url,
        ClientCertificate::Required => format!(
            "{url}&sslcert={}&sslkey={}",
            pki.client_cert.display(),
            pki.client_key.display()
        ),
    }
}

/// A `threadline <role>` that is not expected to become ready: its output, and its end by
/// pid on drop.
pub struct Attempt {
    child: Child,
    pub logs: Logs,
}

impl Attempt {
    pub fn start(role: &str, settings: &[(String, String)]) -> Attempt {
        let logs = Logs::new(format!("threadline {role} (attempt)"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_threadline"));
        cmd.arg(role)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .env("LISTEN_ADDR", "127.0.0.1:0")
            .envs(settings.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        die_with_parent(&mut cmd);
        let mut child = cmd.spawn().expect("starting threadline");
        let _ = drain(child.stdout.take().expect("stdout"), logs.clone());
        let _ = drain(child.stderr.take().expect("stderr"), logs.clone());
        Attempt { child, logs }
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        stop_child(&mut self.child, libc::SIGKILL, Duration::ZERO);
        if std::thread::panicking() {
            eprintln!("{}", self.logs.dump());
        }
    }
}
